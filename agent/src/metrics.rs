//! Prometheus metrics at `http://<--metrics-addr>/metrics`, names prefixed `vnetd_`.
//!
//! A scrape never waits for the agent's lock (a CNI call may hold it while it creates an
//! interface): it renders the latest [`StatusFeed`] snapshot, which the agent publishes after
//! every change the API makes and every [`REFRESH_PERIOD`] (the dataplane's counters, reloads).
//! The same server answers kubelet's probes (`/healthz`, `/readyz`: [`crate::health`]).
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    net::TcpListener,
    sync::{Mutex, watch},
};
use tracing::warn;

use crate::{
    api::proto::{ConntrackReport, SnatReport, StatusReport},
    daemon::Agent,
    health::Health,
};

type Labels = Vec<(&'static str, String)>;

/// How often the snapshot is refreshed from the dataplane's maps.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(1);

/// The latest status report of the agent (or why it could not be read), and when it was read.
#[derive(Clone)]
pub struct StatusFeed(Arc<watch::Sender<Snapshot>>);

struct Snapshot {
    at: Instant,
    report: Result<StatusReport, String>,
}

impl StatusFeed {
    pub fn new(agent: &Agent) -> Self {
        let feed = Self::starting();
        feed.publish(agent);
        feed
    }

    /// A feed before the agent exists (the probes answer while the dataplane is loaded).
    pub fn starting() -> Self {
        Self(Arc::new(
            watch::channel(Snapshot {
                at: Instant::now(),
                report: Err("the agent is starting".into()),
            })
            .0,
        ))
    }

    /// Reads the agent's status now (the caller holds the agent).
    pub fn publish(&self, agent: &Agent) {
        // The previous snapshot, replaced: nobody needs it.
        let _previous = self.0.send_replace(Snapshot {
            at: Instant::now(),
            report: agent.status_report().map_err(|e| format!("{e:#}")),
        });
    }

    pub fn latest(&self) -> Result<StatusReport, String> {
        self.0.borrow().report.clone()
    }

    /// How long ago the latest snapshot was read.
    pub fn age(&self) -> Duration {
        self.0.borrow().at.elapsed()
    }

    /// Publishes every [`REFRESH_PERIOD`]; waits for the lock here, never in a scrape.
    pub async fn refresh(self, agent: Arc<Mutex<Agent>>) -> Result<()> {
        let mut tick = tokio::time::interval(REFRESH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let agent = agent.lock().await;
            self.publish(&agent);
        }
    }
}

/// Binds the metrics and probes address (before the dataplane is touched: a taken port stops
/// the agent before it changes anything).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics on {addr}"))
}

pub async fn serve(listener: TcpListener, feed: StatusFeed, health: Health) -> Result<()> {
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .context("accepting on the metrics address")?;
        let (feed, health) = (feed.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (feed, health) = (feed.clone(), health.clone());
                async move { Ok::<_, Infallible>(respond(&req, &feed, &health)) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!("metrics connection: {err}");
            }
        });
    }
}

fn respond(
    req: &Request<hyper::body::Incoming>,
    feed: &StatusFeed,
    health: &Health,
) -> Response<Full<Bytes>> {
    let probe = match req.uri().path() {
        "/metrics" => None,
        "/healthz" => Some(health.liveness(feed)),
        "/readyz" => Some(health.readiness(feed)),
        _ => return text(404, "see /metrics, /healthz, /readyz\n".into()),
    };
    if let Some(answer) = probe {
        return Response::builder()
            .status(answer.status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(answer.body)))
            .expect("a static response");
    }
    match feed
        .latest()
        .and_then(|r| render(&r).map_err(|e| e.to_string()))
    {
        Ok(body) => text(200, body),
        Err(err) => text(500, format!("reading the dataplane: {err}\n")),
    }
}

fn text(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .expect("a static response")
}

/// Renders a status report as OpenMetrics text.
pub fn render(r: &StatusReport) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("vnetd");
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    for (path, p, b) in &r.traffic {
        packets
            .get_or_create(&vec![("path", path.clone())])
            .inc_by(*p);
        bytes
            .get_or_create(&vec![("path", path.clone())])
            .inc_by(*b);
    }
    registry.register(
        "forwarded_packets",
        "Packets seen and sent on, by path",
        packets,
    );
    registry.register("forwarded_bytes", "Bytes seen and sent on, by path", bytes);
    let drops = Family::<Labels, Counter>::default();
    for (reason, n) in &r.drops {
        drops
            .get_or_create(&vec![("reason", reason.clone())])
            .inc_by(*n);
    }
    registry.register("drops", "Packets dropped, by reason", drops);
    let endpoints = Gauge::<i64>::default();
    endpoints.set(r.endpoints.len() as i64);
    registry.register(
        "endpoints",
        "Pods and container groups attached on this node",
        endpoints,
    );
    let (entries, capacity) = (
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
    );
    for (map, used, max) in &r.maps {
        entries
            .get_or_create(&vec![("map", map.clone())])
            .set(*used as i64);
        capacity
            .get_or_create(&vec![("map", map.clone())])
            .set(*max as i64);
    }
    registry.register("map_entries", "Entries in a dataplane table", entries);
    registry.register("map_capacity", "Capacity of a dataplane table", capacity);
    let reloads = Family::<Labels, Counter>::default();
    reloads
        .get_or_create(&vec![("result", "ok".into())])
        .inc_by(r.reloads_ok);
    reloads
        .get_or_create(&vec![("result", "failed".into())])
        .inc_by(r.reloads_failed);
    registry.register(
        "spec_reloads",
        "Spec reloads applied (ok) and refused (failed)",
        reloads,
    );
    register_conntrack(&mut registry, &r.conntrack);
    register_snat(&mut registry, &r.snat);
    let nsg_hits = Family::<Labels, Counter>::default();
    for h in &r.nsg_rule_hits {
        nsg_hits
            .get_or_create(&vec![
                ("nsg", h.nsg.clone()),
                ("rule", h.rule.clone()),
                ("direction", h.direction.clone()),
                ("access", h.access.clone()),
            ])
            .inc_by(h.hits);
    }
    registry.register(
        "nsg_rule_hits",
        "Packets each NSG rule decided (default rules by their Azure names), summed over \
         reloads",
        nsg_hits,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(r.flow_records_lost);
    registry.register(
        "flow_records_lost",
        "Flow-log records the dataplane could not write (its ring was full): never waited for",
        lost,
    );
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

fn register_conntrack(registry: &mut Registry, c: &ConntrackReport) {
    let entries = Family::<Labels, Gauge>::default();
    for (kind, n) in &c.entries {
        entries
            .get_or_create(&vec![("kind", kind.clone())])
            .set(*n as i64);
    }
    registry.register(
        "conntrack_entries",
        "Flow table entries (two per flow) by kind, as of the collector's last pass",
        entries,
    );
    let assured = Gauge::<i64>::default();
    assured.set(c.assured as i64);
    registry.register(
        "conntrack_assured_entries",
        "Of the flow entries, those of assured flows (answered, or alive for a second), which \
         nothing evicts",
        assured,
    );
    let capacity = Family::<Labels, Gauge>::default();
    for (table, n) in [("new", c.new_capacity), ("assured", c.capacity)] {
        capacity
            .get_or_create(&vec![("table", table.to_string())])
            .set(n as i64);
    }
    registry.register(
        "conntrack_capacity",
        "Entries each flow table holds: new flows (an LRU: a flood evicts its oldest) and \
         assured flows (never evicted: new flows stay new when it is full)",
        capacity,
    );
    let evictions = Counter::<u64>::default();
    evictions.inc_by(c.evictions);
    registry.register(
        "conntrack_evictions",
        "Entries of new flows the LRU evicted (created - expired by the collector - live) \
         since the agent started",
        evictions,
    );
    let events = Family::<Labels, Counter>::default();
    for (event, n) in &c.events {
        events
            .get_or_create(&vec![("event", event.clone())])
            .inc_by(*n);
    }
    registry.register(
        "conntrack_events",
        "The dataplane's conntrack events (entries created, port probes, insert races, host \
         ports remapped)",
        events,
    );
    let deleted = Family::<Labels, Counter>::default();
    for (reason, n) in &c.gc_deleted {
        deleted
            .get_or_create(&vec![("reason", reason.clone())])
            .inc_by(*n);
    }
    registry.register(
        "conntrack_gc_deleted",
        "Flow entries the collector deleted, by the timeout that expired or orphan",
        deleted,
    );
}

fn register_snat(registry: &mut Registry, s: &SnatReport) {
    let in_use = Family::<Labels, Gauge>::default();
    for (nat_ip, n) in &s.ports_in_use_by_nat_ip {
        in_use
            .get_or_create(&vec![("nat_ip", nat_ip.to_string())])
            .set(*n as i64);
    }
    registry.register(
        "snat_ports_in_use",
        "SNAT ports held by masqueraded flows (pods' and the node's own), by NAT address, as of \
         the collector's last pass",
        in_use,
    );
    let per_destination = Gauge::<i64>::default();
    per_destination.set(s.ports_per_destination as i64);
    registry.register(
        "snat_ports_per_destination",
        "SNAT ports one destination (NAT address, remote address, remote port, protocol) can \
         take: the span of outboundNat.portRange",
        per_destination,
    );
    let busiest = Gauge::<i64>::default();
    busiest.set(
        s.busiest_destination
            .as_ref()
            .map_or(0, |d| d.ports_in_use as i64),
    );
    registry.register(
        "snat_busiest_destination_ports_in_use",
        "SNAT ports held towards the busiest destination: it runs out when this reaches \
         vnetd_snat_ports_per_destination",
        busiest,
    );
    let failures = Counter::<u64>::default();
    failures.inc_by(s.allocation_failures);
    registry.register(
        "snat_allocation_failures",
        "New masqueraded flows refused for want of a free SNAT port (drops \
         snat_ports_exhausted)",
        failures,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{NsgRuleHits, SnatDestination};

    #[test]
    fn nsg_rule_hits_are_exported_by_name() {
        let hit = |rule: &str, direction: &str, access: &str, hits| NsgRuleHits {
            nsg: "apps-nsg".into(),
            rule: rule.into(),
            direction: direction.into(),
            access: access.into(),
            hits,
        };
        let report = StatusReport {
            nsg_rule_hits: vec![
                hit("allow-web-from-internet", "inbound", "allow", 15),
                hit("DenyAllInBound", "inbound", "deny", 2),
            ],
            ..StatusReport::default()
        };
        let text = render(&report).unwrap();
        for line in [
            "vnetd_nsg_rule_hits_total{nsg=\"apps-nsg\",rule=\"allow-web-from-internet\",direction=\"inbound\",access=\"allow\"} 15",
            "vnetd_nsg_rule_hits_total{nsg=\"apps-nsg\",rule=\"DenyAllInBound\",direction=\"inbound\",access=\"deny\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }

    #[test]
    fn conntrack_is_exported() {
        let report = StatusReport {
            conntrack: Box::new(ConntrackReport {
                entries: vec![
                    ("pod_snat".into(), 6),
                    ("host".into(), 2),
                    ("nsg".into(), 4),
                    ("host_stack".into(), 0),
                ],
                assured: 8,
                capacity: 262_144,
                new_capacity: 131_072,
                endpoint_share: 16_384,
                assured_by_endpoint: vec![("10.0.2.10".parse().unwrap(), 4)],
                evictions: 3,
                events: vec![("entries_created".into(), 11), ("port_probes".into(), 4)],
                gc_deleted: vec![("tcp_established".into(), 2), ("orphan".into(), 1)],
                gc_passes: 7,
            }),
            ..StatusReport::default()
        };
        let text = render(&report).unwrap();
        for line in [
            "vnetd_conntrack_entries{kind=\"pod_snat\"} 6",
            "vnetd_conntrack_entries{kind=\"host\"} 2",
            "vnetd_conntrack_entries{kind=\"nsg\"} 4",
            "vnetd_conntrack_entries{kind=\"host_stack\"} 0",
            "vnetd_conntrack_assured_entries 8",
            "vnetd_conntrack_capacity{table=\"new\"} 131072",
            "vnetd_conntrack_capacity{table=\"assured\"} 262144",
            "vnetd_conntrack_evictions_total 3",
            "vnetd_conntrack_events_total{event=\"entries_created\"} 11",
            "vnetd_conntrack_events_total{event=\"port_probes\"} 4",
            "vnetd_conntrack_gc_deleted_total{reason=\"tcp_established\"} 2",
            "vnetd_conntrack_gc_deleted_total{reason=\"orphan\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }

    #[test]
    fn snat_occupancy_is_exported() {
        let report = StatusReport {
            snat: Box::new(SnatReport {
                port_range: (40000, 40015),
                ports_per_destination: 16,
                ports_in_use: 21,
                ports_in_use_by_nat_ip: vec![
                    ("10.0.0.4".parse().unwrap(), 17),
                    ("20.1.2.3".parse().unwrap(), 4),
                ],
                busiest_destination: Some(SnatDestination {
                    nat_ip: "10.0.0.4".parse().unwrap(),
                    remote_ip: "198.51.100.10".parse().unwrap(),
                    remote_port: 443,
                    protocol: "tcp".into(),
                    ports_in_use: 16,
                }),
                allocation_failures: 2,
            }),
            ..StatusReport::default()
        };
        let text = render(&report).unwrap();
        for line in [
            "vnetd_snat_ports_in_use{nat_ip=\"10.0.0.4\"} 17",
            "vnetd_snat_ports_in_use{nat_ip=\"20.1.2.3\"} 4",
            "vnetd_snat_ports_per_destination 16",
            "vnetd_snat_busiest_destination_ports_in_use 16",
            "vnetd_snat_allocation_failures_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        let idle = render(&StatusReport::default()).unwrap();
        assert!(
            idle.lines()
                .any(|l| l == "vnetd_snat_busiest_destination_ports_in_use 0"),
            "{idle}"
        );
    }
}
