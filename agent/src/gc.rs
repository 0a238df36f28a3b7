//! Conntrack garbage collection: the programs create flow entries, the agent expires them.
//! Every [`interval`] the collector walks FLOWS; each Original entry is judged with its
//! sibling (the Reply entry) by [`verdict`], a pure function of the two entries, the clock and
//! the [`Timeouts`]; an expired flow loses both entries, an entry whose sibling is gone (the
//! LRU evicted it) is deleted as an orphan.
//!
//! LRU evictions are counted, not guessed: since the collector started, entries created minus
//! entries the collector expired minus entries alive now is what the LRU took (never
//! negative, never decreasing). Orphans are not subtracted: the flow they belonged to was
//! broken by an eviction, and both of its entries count as evicted.
//!
//! The same walk counts the SNAT ports masqueraded flows hold ([`snat_usage`]).
//!
//! The collector starts only once the agent has adopted or loaded the dataplane (it is
//! spawned after [`crate::daemon::Agent::start`]), so it never deletes from a half-restored
//! state.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tracing::{debug, warn};
use vnetd_common::{ConntrackStat, Direction, Flow, FlowKey, FlowKind, TcpState};

use crate::{
    api::proto::{ConntrackReport, SnatDestination, SnatReport},
    dataplane::maps::ConntrackMaps,
    flowlog::{Counts, FlowLog, FlowSample},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// How long a flow may stay idle, by what it is (nat-design.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_closed: Duration,
    pub udp: Duration,
    pub icmp: Duration,
    /// Any other protocol (none is translated today).
    pub other: Duration,
}

impl Timeouts {
    /// The timeouts for `outboundNat.idleTimeoutInMinutes` = `idle`.
    pub fn new(idle: Duration) -> Self {
        Self {
            tcp_syn: Duration::from_secs(60),
            tcp_established: idle,
            tcp_closing: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp: idle,
            icmp: Duration::from_secs(30),
            other: idle,
        }
    }

    /// Every state's timeout `d` (tests: flows expire in seconds, not minutes).
    pub fn uniform(d: Duration) -> Self {
        Self {
            tcp_syn: d,
            tcp_established: d,
            tcp_closing: d,
            tcp_closed: d,
            udp: d,
            icmp: d,
            other: d,
        }
    }

    fn of(&self, class: GcReason) -> Duration {
        match class {
            GcReason::TcpSynSent | GcReason::TcpSynReceived => self.tcp_syn,
            GcReason::TcpEstablished => self.tcp_established,
            GcReason::TcpClosing => self.tcp_closing,
            GcReason::TcpClosed => self.tcp_closed,
            GcReason::Udp => self.udp,
            GcReason::Icmp => self.icmp,
            GcReason::Other | GcReason::Orphan => self.other,
        }
    }
}

/// Why the collector deleted an entry: the state whose timeout expired, or orphaned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GcReason {
    TcpSynSent,
    TcpSynReceived,
    TcpEstablished,
    TcpClosing,
    TcpClosed,
    Udp,
    Icmp,
    Other,
    /// Its sibling was gone (evicted by the LRU).
    Orphan,
}

impl GcReason {
    pub const ALL: [GcReason; 9] = [
        GcReason::TcpSynSent,
        GcReason::TcpSynReceived,
        GcReason::TcpEstablished,
        GcReason::TcpClosing,
        GcReason::TcpClosed,
        GcReason::Udp,
        GcReason::Icmp,
        GcReason::Other,
        GcReason::Orphan,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            GcReason::TcpSynSent => "tcp_syn_sent",
            GcReason::TcpSynReceived => "tcp_syn_received",
            GcReason::TcpEstablished => "tcp_established",
            GcReason::TcpClosing => "tcp_closing",
            GcReason::TcpClosed => "tcp_closed",
            GcReason::Udp => "udp",
            GcReason::Icmp => "icmp",
            GcReason::Other => "other",
            GcReason::Orphan => "orphan",
        }
    }
}

/// What the collector does with a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Idle longer than its state's timeout: delete both entries.
    Expired(GcReason),
    /// Its sibling is gone: delete this entry.
    Orphan,
}

/// An entry without its sibling is left alone this long after its creation: the programs
/// insert the Reply entry a moment before the Original one, and a walk may fall in between.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Which timeout applies to a flow of protocol `proto` whose directions sent these TCP flags.
pub fn class(proto: u8, original_flags: u8, reply_flags: u8) -> GcReason {
    match proto {
        IPPROTO_TCP => match TcpState::of(original_flags, reply_flags) {
            TcpState::SynSent => GcReason::TcpSynSent,
            TcpState::SynReceived => GcReason::TcpSynReceived,
            TcpState::Established => GcReason::TcpEstablished,
            TcpState::Closing => GcReason::TcpClosing,
            TcpState::Closed => GcReason::TcpClosed,
        },
        IPPROTO_UDP => GcReason::Udp,
        IPPROTO_ICMP => GcReason::Icmp,
        _ => GcReason::Other,
    }
}

/// The fate of the flow whose Original entry is `original` (keyed `key`) and whose Reply entry
/// is `reply` (`None`: gone), at CLOCK_MONOTONIC `now_ns`. A flow expires when both directions
/// have been idle longer than its state's timeout.
pub fn verdict(
    key: &FlowKey,
    original: &Flow,
    reply: Option<&Flow>,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Verdict {
    let Some(reply) = reply else {
        return orphan_verdict(original, now_ns);
    };
    let class = class(key.proto, original.tcp_flags_seen, reply.tcp_flags_seen);
    let last_seen = original.last_seen_ns.max(reply.last_seen_ns);
    let idle = Duration::from_nanos(now_ns.saturating_sub(last_seen));
    if idle > timeouts.of(class) {
        Verdict::Expired(class)
    } else {
        Verdict::Keep
    }
}

/// An entry whose sibling is gone: an orphan once past [`ORPHAN_GRACE`].
pub fn orphan_verdict(entry: &Flow, now_ns: u64) -> Verdict {
    if Duration::from_nanos(now_ns.saturating_sub(entry.created_ns)) > ORPHAN_GRACE {
        Verdict::Orphan
    } else {
        Verdict::Keep
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`, which the
/// dataplane stamps flows with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, alive for the call.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    assert_eq!(ret, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE) cannot fail");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one pass did and saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPass {
    /// Entries deleted, by reason (an expired flow counts its two entries).
    pub deleted: BTreeMap<GcReason, u64>,
    /// Entries in the flow tables when the pass began.
    pub seen: u64,
    /// Entries left, by kind.
    pub live: BTreeMap<&'static str, u64>,
    /// Of the entries left, those of assured flows (in FLOWS, where nothing evicts them).
    pub assured: u64,
    /// The flows an NSG decided, with their counts (kept or expired in this pass): the flow
    /// log's C and E records.
    pub samples: Vec<FlowSample>,
    /// The SNAT ports the entries left hold.
    pub snat: SnatUsage,
}

impl GcPass {
    pub fn live_total(&self) -> u64 {
        self.live.values().sum()
    }

    /// Entries expired by their timeout (not orphans).
    pub fn expired(&self) -> u64 {
        self.deleted
            .iter()
            .filter(|(reason, _)| **reason != GcReason::Orphan)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The kinds of flow, as metrics and status name them (`vnetd_conntrack_entries{kind}`).
pub const KINDS: [FlowKind; 5] = [
    FlowKind::PodSnat,
    FlowKind::Host,
    FlowKind::PublicInbound,
    FlowKind::Nsg,
    FlowKind::HostStack,
];

/// The name of a flow's kind. Every kind expires by its protocol and TCP state alone (see
/// [`verdict`]): an NSG-only flow or one the node's stack translated lives as long as a
/// translated one would.
pub fn kind_name(kind: u8) -> &'static str {
    match KINDS.into_iter().find(|k| *k as u8 == kind) {
        Some(FlowKind::PodSnat) => "pod_snat",
        Some(FlowKind::Host) => "host",
        Some(FlowKind::PublicInbound) => "public_inbound",
        Some(FlowKind::Nsg) => "nsg",
        Some(FlowKind::HostStack) => "host_stack",
        None => "unknown",
    }
}

/// Where a SNAT port is unique: the reply tuple less the port, i.e. the NAT address and the
/// destination (remote address, remote port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnatDestinationKey {
    pub nat_ip: [u8; 4],
    pub remote_ip: [u8; 4],
    /// Host byte order.
    pub remote_port: u16,
    pub proto: u8,
}

/// The SNAT ports some flow entries hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnatUsage {
    /// Ports held per NAT address.
    pub by_nat_ip: BTreeMap<[u8; 4], u64>,
    /// The destination holding the most ports, and how many (ties: the lowest key).
    pub busiest: Option<(SnatDestinationKey, u64)>,
}

impl SnatUsage {
    pub fn total(&self) -> u64 {
        self.by_nat_ip.values().sum()
    }
}

/// The SNAT ports `entries` hold: one per Reply entry of a masqueraded flow, a pod's
/// ([`FlowKind::PodSnat`]) or the node's own from a port in the range ([`FlowKind::Host`]).
/// Such an entry is keyed (remote address and port) -> (NAT address, the port): the port
/// allocator makes that key unique, so ports are counted per destination.
pub fn snat_usage<'a>(entries: impl IntoIterator<Item = (&'a FlowKey, &'a Flow)>) -> SnatUsage {
    let masqueraded = [FlowKind::PodSnat as u8, FlowKind::Host as u8];
    let mut by_destination: HashMap<SnatDestinationKey, u64> = HashMap::new();
    for (key, flow) in entries {
        if flow.direction != Direction::Reply as u8 || !masqueraded.contains(&flow.kind) {
            continue;
        }
        let destination = SnatDestinationKey {
            nat_ip: key.dst_ip,
            remote_ip: key.src_ip,
            remote_port: u16::from_be(key.src_port),
            proto: key.proto,
        };
        *by_destination.entry(destination).or_default() += 1;
    }
    let mut usage = SnatUsage::default();
    for (destination, n) in &by_destination {
        *usage.by_nat_ip.entry(destination.nat_ip).or_default() += n;
    }
    usage.busiest = by_destination
        .into_iter()
        .max_by(|(ka, a), (kb, b)| a.cmp(b).then(kb.cmp(ka)));
    usage
}

fn protocol_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        other => other.to_string(),
    }
}

/// One pass over the flow tables at `now_ns`.
pub fn gc_pass(maps: &mut ConntrackMaps, now_ns: u64, timeouts: &Timeouts) -> Result<GcPass> {
    let flows = maps.flows()?;
    let mut pass = GcPass {
        seen: flows.len() as u64,
        ..GcPass::default()
    };
    let mut gone: std::collections::HashSet<FlowKey> = std::collections::HashSet::new();
    let sibling = |maps: &ConntrackMaps, key: &FlowKey| -> Result<Option<Flow>> {
        // The walk's copy may predate the sibling's insertion: ask the map again.
        match flows.get(key) {
            Some(flow) => Ok(Some(*flow)),
            None => maps.get(key),
        }
    };
    for (key, flow) in &flows {
        if gone.contains(key) {
            continue;
        }
        let verdict = if flow.direction == Direction::Original as u8 {
            let reply = sibling(maps, &flow.sibling)?;
            let verdict = verdict(key, flow, reply.as_ref(), now_ns, timeouts);
            if let Some(reply) = reply.filter(|reply| nsg_decided(flow, reply)) {
                pass.samples.push(FlowSample {
                    key: *key,
                    counts: Counts::of(flow, &reply),
                    ended: matches!(verdict, Verdict::Expired(_)),
                });
            }
            verdict
        } else if sibling(maps, &flow.sibling)?.is_none() {
            orphan_verdict(flow, now_ns)
        } else {
            // Judged with its Original entry.
            Verdict::Keep
        };
        match verdict {
            Verdict::Keep => {}
            Verdict::Expired(reason) => {
                for k in [*key, flow.sibling] {
                    if maps.remove(&k)? {
                        *pass.deleted.entry(reason).or_default() += 1;
                    }
                    gone.insert(k);
                }
            }
            Verdict::Orphan => {
                if maps.remove(key)? {
                    *pass.deleted.entry(GcReason::Orphan).or_default() += 1;
                }
                gone.insert(*key);
            }
        }
    }
    let left: Vec<(&FlowKey, &Flow)> = flows
        .iter()
        .filter(|(key, _)| !gone.contains(*key))
        .collect();
    for (_, flow) in &left {
        *pass.live.entry(kind_name(flow.kind)).or_default() += 1;
    }
    pass.assured = left
        .iter()
        .filter(|(_, flow)| flow.status & vnetd_common::FLOW_ASSURED != 0)
        .count() as u64;
    pass.snat = snat_usage(left);
    Ok(pass)
}

/// Whether an NSG decided the flow of these two entries (its flow-log records follow it).
fn nsg_decided(original: &Flow, reply: &Flow) -> bool {
    let unclassified = vnetd_common::NsgVerdict::Unclassified as u8;
    original.nsg_verdict != unclassified || reply.nsg_verdict != unclassified
}

/// The collector's totals and settings, shared by the collector task (writes) and the agent
/// (reads them into the status report; sets the timeouts on reload).
#[derive(Debug)]
pub struct Conntrack(Mutex<Shared>);

#[derive(Debug)]
struct Shared {
    timeouts: Timeouts,
    passes: u64,
    deleted: BTreeMap<GcReason, u64>,
    live: BTreeMap<&'static str, u64>,
    assured: u64,
    /// Entries created minus entries alive, when the first pass began: what happened before
    /// this agent (its predecessors' deletions and evictions) is not counted again.
    baseline: Option<i128>,
    evictions: u64,
    snat: SnatUsage,
}

impl Conntrack {
    pub fn new(idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Shared {
            timeouts: Timeouts::new(idle_timeout),
            passes: 0,
            deleted: BTreeMap::new(),
            live: BTreeMap::new(),
            assured: 0,
            baseline: None,
            evictions: 0,
            snat: SnatUsage::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_idle_timeout(&self, idle: Duration) {
        self.lock().timeouts = Timeouts::new(idle);
    }

    pub fn timeouts(&self) -> Timeouts {
        self.lock().timeouts
    }

    /// Adds a pass, given the programs' `entries_created` read just before it began.
    pub fn record(&self, created_before: u64, pass: &GcPass) {
        let mut s = self.lock();
        s.passes += 1;
        for (reason, n) in &pass.deleted {
            *s.deleted.entry(*reason).or_default() += n;
        }
        s.live = pass.live.clone();
        s.assured = pass.assured;
        s.snat = pass.snat.clone();
        let created = i128::from(created_before);
        let baseline = *s.baseline.get_or_insert(created - i128::from(pass.seen));
        let expired: u64 = s
            .deleted
            .iter()
            .filter(|(reason, _)| **reason != GcReason::Orphan)
            .map(|(_, n)| n)
            .sum();
        let evicted = created - baseline - i128::from(expired) - i128::from(pass.live_total());
        // Entries created during the walk are live but not in `created_before`: the estimate
        // may dip; the counter never goes back.
        s.evictions = s.evictions.max(u64::try_from(evicted).unwrap_or(0));
    }

    /// The report's conntrack part; `stats` are the programs' counters.
    pub fn report(&self, stats: Vec<(ConntrackStat, u64)>) -> ConntrackReport {
        let s = self.lock();
        ConntrackReport {
            entries: KINDS
                .iter()
                .map(|kind| kind_name(*kind as u8))
                .map(|kind| (kind.to_string(), s.live.get(kind).copied().unwrap_or(0)))
                .collect(),
            assured: s.assured,
            capacity: u64::from(vnetd_common::maps::FLOWS_MAX),
            new_capacity: u64::from(vnetd_common::maps::NEW_FLOWS_MAX),
            evictions: s.evictions,
            events: stats
                .into_iter()
                .map(|(stat, n)| (stat.name().to_string(), n))
                .collect(),
            gc_deleted: GcReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), s.deleted.get(r).copied().unwrap_or(0)))
                .collect(),
            gc_passes: s.passes,
        }
    }
}

impl Conntrack {
    /// The report's SNAT part: the ports held as of the last pass, against `range`
    /// (`outboundNat.portRange`, inclusive); `primary_ip` is listed even when it holds none;
    /// `failures` are the programs' `snat_ports_exhausted` drops.
    pub fn snat_report(
        &self,
        range: (u16, u16),
        primary_ip: Ipv4Addr,
        failures: u64,
    ) -> SnatReport {
        let s = self.lock();
        let (first, last) = range;
        let mut by_nat_ip = s.snat.by_nat_ip.clone();
        by_nat_ip.entry(primary_ip.octets()).or_default();
        SnatReport {
            port_range: range,
            ports_per_destination: if first == 0 || last < first {
                0
            } else {
                u64::from(last - first) + 1
            },
            ports_in_use: s.snat.total(),
            ports_in_use_by_nat_ip: by_nat_ip
                .into_iter()
                .map(|(ip, n)| (Ipv4Addr::from(ip), n))
                .collect(),
            busiest_destination: s.snat.busiest.map(|(d, n)| SnatDestination {
                nat_ip: d.nat_ip.into(),
                remote_ip: d.remote_ip.into(),
                remote_port: d.remote_port,
                protocol: protocol_name(d.proto),
                ports_in_use: n,
            }),
            allocation_failures: failures,
        }
    }
}

/// The pass interval: `VNETD_GC_INTERVAL_MS` (for tests), else 5 s.
pub fn interval() -> Result<Duration> {
    match std::env::var("VNETD_GC_INTERVAL_MS") {
        Ok(ms) => {
            let ms: u64 = ms
                .parse()
                .with_context(|| format!("VNETD_GC_INTERVAL_MS={ms:?} is not a number of ms"))?;
            Ok(Duration::from_millis(ms.max(1)))
        }
        Err(_) => Ok(Duration::from_secs(5)),
    }
}

/// `VNETD_GC_TIMEOUT_MS` (for tests: every flow expires after this idle time, so the flow
/// log's E records come in seconds), else `None`.
pub fn timeout_override() -> Result<Option<Duration>> {
    match std::env::var("VNETD_GC_TIMEOUT_MS") {
        Ok(ms) => {
            let ms: u64 = ms
                .parse()
                .with_context(|| format!("VNETD_GC_TIMEOUT_MS={ms:?} is not a number of ms"))?;
            Ok(Some(Duration::from_millis(ms)))
        }
        Err(_) => Ok(None),
    }
}

/// Runs a pass every `every`, forever, handing the flow log what it saw. A failed pass is
/// logged and retried at the next tick.
pub async fn run(
    maps: ConntrackMaps,
    shared: Arc<Conntrack>,
    every: Duration,
    flow_log: Arc<FlowLog>,
) -> Result<()> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut maps = Some(maps);
    let timeout_override = timeout_override()?.map(Timeouts::uniform);
    loop {
        tick.tick().await;
        let mut owned = maps.take().context("the collector's maps")?;
        let shared_now = shared.clone();
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = (|| {
                let created = created(&owned)?;
                let timeouts = timeout_override.unwrap_or_else(|| shared_now.timeouts());
                let pass = gc_pass(&mut owned, monotonic_ns(), &timeouts)?;
                Ok::<_, anyhow::Error>((created, pass))
            })();
            (owned, result)
        })
        .await
        .context("the conntrack collector's thread")?;
        maps = Some(back);
        match result {
            Ok((created, pass)) => {
                if !pass.deleted.is_empty() {
                    debug!(deleted = ?pass.deleted, live = pass.live_total(), "conntrack GC pass");
                }
                shared.record(created, &pass);
                flow_log.samples(&pass.samples);
            }
            Err(err) => warn!("conntrack GC pass: {err:#}"),
        }
    }
}

fn created(maps: &ConntrackMaps) -> Result<u64> {
    Ok(maps
        .stats()?
        .into_iter()
        .find(|(stat, _)| *stat == ConntrackStat::EntriesCreated)
        .map_or(0, |(_, n)| n))
}

#[cfg(test)]
mod tests {
    use vnetd_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

    use super::*;

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 100_000 * S;

    fn key(proto: u8) -> FlowKey {
        FlowKey {
            src_ip: [10, 0, 2, 10],
            dst_ip: [192, 0, 2, 1],
            src_port: 40000u16.to_be(),
            dst_port: 443u16.to_be(),
            proto,
            _pad: [0; 3],
        }
    }

    fn flow(direction: Direction, flags: u8, idle_s: u64) -> Flow {
        Flow {
            created_ns: NOW - 10_000 * S,
            last_seen_ns: NOW - idle_s * S,
            direction: direction as u8,
            tcp_flags_seen: flags,
            kind: FlowKind::PodSnat as u8,
            ..Flow::default()
        }
    }

    fn judge(proto: u8, original: (u8, u64), reply: (u8, u64)) -> Verdict {
        let t = Timeouts::new(Duration::from_secs(240));
        verdict(
            &key(proto),
            &flow(Direction::Original, original.0, original.1),
            Some(&flow(Direction::Reply, reply.0, reply.1)),
            NOW,
            &t,
        )
    }

    const EST: u8 = TCP_SYN | TCP_ACK;

    #[test]
    fn established_tcp_lives_for_the_idle_timeout() {
        assert_eq!(judge(IPPROTO_TCP, (EST, 239), (EST, 239)), Verdict::Keep);
        assert_eq!(
            judge(IPPROTO_TCP, (EST, 241), (EST, 241)),
            Verdict::Expired(GcReason::TcpEstablished)
        );
        // One direction still talking keeps the flow.
        assert_eq!(judge(IPPROTO_TCP, (EST, 5000), (EST, 1)), Verdict::Keep);
    }

    #[test]
    fn half_open_tcp_expires_after_60_seconds() {
        assert_eq!(judge(IPPROTO_TCP, (TCP_SYN, 59), (0, 59)), Verdict::Keep);
        assert_eq!(
            judge(IPPROTO_TCP, (TCP_SYN, 61), (0, 61)),
            Verdict::Expired(GcReason::TcpSynSent)
        );
        assert_eq!(
            judge(IPPROTO_TCP, (TCP_SYN, 61), (EST, 61)),
            Verdict::Expired(GcReason::TcpSynReceived)
        );
    }

    #[test]
    fn closing_and_closed_tcp_expire_after_120_and_10_seconds() {
        let fin = EST | TCP_FIN;
        assert_eq!(judge(IPPROTO_TCP, (fin, 119), (EST, 119)), Verdict::Keep);
        assert_eq!(
            judge(IPPROTO_TCP, (fin, 121), (EST, 121)),
            Verdict::Expired(GcReason::TcpClosing)
        );
        assert_eq!(judge(IPPROTO_TCP, (fin, 9), (fin, 9)), Verdict::Keep);
        assert_eq!(
            judge(IPPROTO_TCP, (fin, 11), (fin, 11)),
            Verdict::Expired(GcReason::TcpClosed)
        );
        assert_eq!(
            judge(IPPROTO_TCP, (EST, 11), (EST | TCP_RST, 11)),
            Verdict::Expired(GcReason::TcpClosed)
        );
    }

    #[test]
    fn udp_follows_the_idle_timeout_and_icmp_30_seconds() {
        assert_eq!(judge(IPPROTO_UDP, (0, 239), (0, 300)), Verdict::Keep);
        assert_eq!(
            judge(IPPROTO_UDP, (0, 241), (0, 300)),
            Verdict::Expired(GcReason::Udp)
        );
        assert_eq!(judge(IPPROTO_ICMP, (0, 29), (0, 29)), Verdict::Keep);
        assert_eq!(
            judge(IPPROTO_ICMP, (0, 31), (0, 31)),
            Verdict::Expired(GcReason::Icmp)
        );
    }

    #[test]
    fn the_idle_timeout_follows_the_spec() {
        let t = Timeouts::new(Duration::from_secs(30 * 60));
        let v = |idle_s| {
            verdict(
                &key(IPPROTO_TCP),
                &flow(Direction::Original, EST, idle_s),
                Some(&flow(Direction::Reply, EST, idle_s)),
                NOW,
                &t,
            )
        };
        assert_eq!(v(1799), Verdict::Keep);
        assert_eq!(v(1801), Verdict::Expired(GcReason::TcpEstablished));
    }

    #[test]
    fn a_flow_without_its_sibling_is_an_orphan_after_the_grace() {
        let t = Timeouts::new(Duration::from_secs(240));
        let mut young = flow(Direction::Original, TCP_SYN, 0);
        young.created_ns = NOW - S;
        assert_eq!(
            verdict(&key(IPPROTO_TCP), &young, None, NOW, &t),
            Verdict::Keep,
            "the programs may be between the two inserts"
        );
        let old = flow(Direction::Original, EST, 0);
        assert_eq!(
            verdict(&key(IPPROTO_TCP), &old, None, NOW, &t),
            Verdict::Orphan
        );
    }

    /// NSG-only flows and flows the node's stack translated expire by the same per-protocol
    /// timeouts as translated ones, and are reported under their own kind.
    #[test]
    fn nsg_and_host_stack_flows_expire_like_the_others_and_are_counted_by_kind() {
        let t = Timeouts::new(Duration::from_secs(240));
        for kind in [FlowKind::Nsg, FlowKind::HostStack] {
            let judge = |proto, flags, idle_s| {
                let mut original = flow(Direction::Original, flags, idle_s);
                // A SYN not answered yet: the reply direction has sent nothing.
                let reply_flags = if flags == TCP_SYN { 0 } else { flags };
                let mut reply = flow(Direction::Reply, reply_flags, idle_s);
                original.kind = kind as u8;
                reply.kind = kind as u8;
                verdict(&key(proto), &original, Some(&reply), NOW, &t)
            };
            assert_eq!(judge(IPPROTO_TCP, EST, 239), Verdict::Keep, "{kind:?}");
            assert_eq!(
                judge(IPPROTO_TCP, EST, 241),
                Verdict::Expired(GcReason::TcpEstablished),
                "{kind:?}"
            );
            assert_eq!(
                judge(IPPROTO_TCP, TCP_SYN, 61),
                Verdict::Expired(GcReason::TcpSynSent)
            );
            assert_eq!(judge(IPPROTO_UDP, 0, 241), Verdict::Expired(GcReason::Udp));
            assert_eq!(judge(IPPROTO_ICMP, 0, 29), Verdict::Keep);
            assert_eq!(judge(IPPROTO_ICMP, 0, 31), Verdict::Expired(GcReason::Icmp));
        }
        assert_eq!(kind_name(FlowKind::Nsg as u8), "nsg");
        assert_eq!(kind_name(FlowKind::HostStack as u8), "host_stack");
        assert_eq!(kind_name(200), "unknown");

        let shared = Conntrack::new(Duration::from_secs(240));
        let pass = GcPass {
            deleted: BTreeMap::new(),
            seen: 8,
            live: BTreeMap::from([("nsg", 6), ("host_stack", 2)]),
            ..GcPass::default()
        };
        shared.record(8, &pass);
        let entries: BTreeMap<String, u64> = shared.report(vec![]).entries.into_iter().collect();
        assert_eq!(entries["nsg"], 6);
        assert_eq!(entries["host_stack"], 2);
        assert_eq!(entries["pod_snat"], 0);
    }

    #[test]
    fn a_clock_behind_the_entries_keeps_them() {
        let mut f = flow(Direction::Original, EST, 0);
        f.last_seen_ns = NOW + S;
        f.created_ns = NOW + S;
        let t = Timeouts::new(Duration::from_secs(240));
        assert_eq!(
            verdict(&key(IPPROTO_TCP), &f, Some(&f), NOW, &t),
            Verdict::Keep
        );
        assert_eq!(orphan_verdict(&f, NOW), Verdict::Keep);
    }

    #[test]
    fn evictions_are_created_minus_expired_minus_live_since_the_first_pass() {
        let shared = Conntrack::new(Duration::from_secs(240));
        // First pass: 100 created before this agent, 10 entries in the table, 2 orphans deleted.
        let first = GcPass {
            deleted: BTreeMap::from([(GcReason::Orphan, 2)]),
            seen: 10,
            live: BTreeMap::from([("pod_snat", 8)]),
            ..GcPass::default()
        };
        shared.record(100, &first);
        assert_eq!(shared.report(vec![]).evictions, 2, "the orphans' entries");
        // 50 more created; 20 expired; 30 live: 10 + 50 - 20 - 30 = 10 gone, 2 of them the
        // orphans already counted, so 8 evicted since, 10 in all.
        let second = GcPass {
            deleted: BTreeMap::from([(GcReason::TcpEstablished, 20)]),
            seen: 50,
            live: BTreeMap::from([("pod_snat", 20), ("host", 10)]),
            ..GcPass::default()
        };
        shared.record(150, &second);
        let report = shared.report(vec![]);
        assert_eq!(report.evictions, 10);
        assert_eq!(
            report.entries,
            [
                ("pod_snat".to_string(), 20),
                ("host".to_string(), 10),
                ("public_inbound".to_string(), 0),
                ("nsg".to_string(), 0),
                ("host_stack".to_string(), 0),
            ]
        );
        // A pass that sees entries created after its counter read never lowers the count.
        let racing = GcPass {
            deleted: BTreeMap::new(),
            seen: 40,
            live: BTreeMap::from([("pod_snat", 40)]),
            ..GcPass::default()
        };
        shared.record(150, &racing);
        assert_eq!(shared.report(vec![]).evictions, 10);
        let deleted: BTreeMap<String, u64> = shared.report(vec![]).gc_deleted.into_iter().collect();
        assert_eq!(deleted["orphan"], 2);
        assert_eq!(deleted["tcp_established"], 20);
        assert_eq!(shared.report(vec![]).gc_passes, 3);
    }

    /// A Reply entry of a flow from `remote:rport` back to `nat:port` (the key the port
    /// allocator makes unique), of kind `kind`.
    fn reply_entry(
        nat: [u8; 4],
        port: u16,
        remote: [u8; 4],
        rport: u16,
        proto: u8,
        kind: FlowKind,
    ) -> (FlowKey, Flow) {
        let key = FlowKey {
            src_ip: remote,
            dst_ip: nat,
            src_port: rport.to_be(),
            dst_port: port.to_be(),
            proto,
            _pad: [0; 3],
        };
        let mut entry = flow(Direction::Reply, 0, 0);
        entry.kind = kind as u8;
        (key, entry)
    }

    const NODE: [u8; 4] = [10, 0, 0, 4];
    const PUBLIC: [u8; 4] = [20, 1, 2, 3];
    const WEB: [u8; 4] = [198, 51, 100, 10];

    /// Ports are counted per destination (NAT address, remote address and port, protocol),
    /// from the Reply entries of masqueraded flows only: pods' and the node's own.
    #[test]
    fn snat_ports_are_counted_per_destination_from_masqueraded_reply_entries() {
        let mut entries = Vec::new();
        // Five pod flows and two of the node's own to WEB:443/tcp through the node's address.
        for port in 40000..40005 {
            entries.push(reply_entry(
                NODE,
                port,
                WEB,
                443,
                IPPROTO_TCP,
                FlowKind::PodSnat,
            ));
        }
        for port in 40005..40007 {
            entries.push(reply_entry(
                NODE,
                port,
                WEB,
                443,
                IPPROTO_TCP,
                FlowKind::Host,
            ));
        }
        // Other destinations: another port, another protocol, another NAT address.
        for port in 40000..40003 {
            entries.push(reply_entry(
                NODE,
                port,
                WEB,
                80,
                IPPROTO_TCP,
                FlowKind::PodSnat,
            ));
        }
        entries.push(reply_entry(
            NODE,
            40000,
            WEB,
            443,
            IPPROTO_UDP,
            FlowKind::PodSnat,
        ));
        for port in 40000..40004 {
            entries.push(reply_entry(
                PUBLIC,
                port,
                WEB,
                443,
                IPPROTO_TCP,
                FlowKind::PodSnat,
            ));
        }
        // Not SNAT ports: an Original entry, flows nothing masqueraded.
        let (key, mut original) =
            reply_entry(NODE, 40010, WEB, 443, IPPROTO_TCP, FlowKind::PodSnat);
        original.direction = Direction::Original as u8;
        entries.push((key, original));
        for kind in [FlowKind::Nsg, FlowKind::HostStack, FlowKind::PublicInbound] {
            entries.push(reply_entry(NODE, 40020, WEB, 443, IPPROTO_TCP, kind));
        }

        let usage = snat_usage(entries.iter().map(|(k, f)| (k, f)));
        assert_eq!(usage.by_nat_ip, BTreeMap::from([(NODE, 11), (PUBLIC, 4)]));
        assert_eq!(usage.total(), 15);
        assert_eq!(
            usage.busiest,
            Some((
                SnatDestinationKey {
                    nat_ip: NODE,
                    remote_ip: WEB,
                    remote_port: 443,
                    proto: IPPROTO_TCP
                },
                7
            ))
        );
        assert_eq!(snat_usage(std::iter::empty()), SnatUsage::default());
    }

    /// The report lists the node's address even when idle, the range's span as each
    /// destination's capacity, the busiest destination by name, and the failures given.
    #[test]
    fn the_snat_report_sets_the_busiest_destination_against_the_range() {
        let shared = Conntrack::new(Duration::from_secs(240));
        let idle = shared.snat_report((40000, 40015), Ipv4Addr::from(NODE), 0);
        assert_eq!(idle.ports_per_destination, 16);
        assert_eq!(idle.ports_in_use, 0);
        assert_eq!(idle.ports_in_use_by_nat_ip, [(Ipv4Addr::from(NODE), 0)]);
        assert_eq!(idle.busiest_destination, None);

        let entries: Vec<_> = (40000..40016)
            .map(|port| reply_entry(PUBLIC, port, WEB, 53, IPPROTO_UDP, FlowKind::PodSnat))
            .collect();
        let pass = GcPass {
            seen: 32,
            snat: snat_usage(entries.iter().map(|(k, f)| (k, f))),
            ..GcPass::default()
        };
        shared.record(32, &pass);
        let full = shared.snat_report((40000, 40015), Ipv4Addr::from(NODE), 3);
        assert_eq!(full.ports_in_use, 16);
        assert_eq!(
            full.ports_in_use_by_nat_ip,
            [(Ipv4Addr::from(NODE), 0), (Ipv4Addr::from(PUBLIC), 16)]
        );
        assert_eq!(
            full.busiest_destination,
            Some(SnatDestination {
                nat_ip: PUBLIC.into(),
                remote_ip: WEB.into(),
                remote_port: 53,
                protocol: "udp".into(),
                ports_in_use: 16,
            })
        );
        assert_eq!(full.allocation_failures, 3);
        assert_eq!(full.port_range, (40000, 40015));
        assert_eq!(
            shared
                .snat_report((32768, 65535), Ipv4Addr::from(NODE), 0)
                .ports_per_destination,
            32768
        );
        assert_eq!(
            shared
                .snat_report((0, 0), Ipv4Addr::from(NODE), 0)
                .ports_per_destination,
            0,
            "no range, no port"
        );
    }
}
