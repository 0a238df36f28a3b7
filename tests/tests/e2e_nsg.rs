//! End to end: Network Security Groups enforced by the dataplane (issue 9), checked the way a
//! user would: which connections get through, which are dropped (a refused connect times out,
//! as in Azure: no reset), and the hit counts of the deciding rules, by name, in
//! `vnetd status --json` and `/metrics`. Needs root.
//!
//! The sources of inbound traffic are the four ways into a pod: a pod on the same node, a pod
//! on another node (through the uplink), the node itself, and the `internet` namespace through
//! a Public group's address (the rules see the private address and the client's own).
//!
//! A connect that must be refused is given [`DENIED_WAIT`], less than TCP's initial
//! retransmission timeout (1 s): exactly one SYN is sent, so one attempt is one decision and
//! hit counts are exact.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use vnetd_lab::{
    ALLOWED_WAIT, DENIED_WAIT, EchoServer, EchoStream, INTERNET_HOST_IP, Lab, Node, Ns, Outcome,
    Seen, allowed, attempt, refused, serial, tcp_echo, tcp_roundtrip, udp_echo,
    vnetd::{
        Agent, NsgRule, Pod, add_pod, lab_spec, node_cidr, nsg_rule_hits_in_metrics,
        nsg_rule_hits_in_status, with_nsg, with_public_group_ports,
    },
    wait_for,
};

/// The Public group `web`'s address (the edge routes it to node-1).
const WEB_PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// The node pools' addresses in subnet `apps` (`examples/lab.yaml`).
const NODE1_APPS_POOL: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(10, 0, 2, 10), Ipv4Addr::new(10, 0, 2, 49));
const NODE2_APPS_POOL: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(10, 0, 2, 50), Ipv4Addr::new(10, 0, 2, 89));

/// The fewest prefixes covering exactly `first..=last`: a node's pool as NSG source prefixes,
/// whatever address the pool gives a pod.
fn range_prefixes((first, last): (Ipv4Addr, Ipv4Addr)) -> Vec<String> {
    vnetd_lab::ipnet::Ipv4Subnets::new(first, last, 0)
        .map(|p| p.to_string())
        .collect()
}

/// The four ways into a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// A pod in `apps` on the same node as the destination.
    NearPod,
    /// A pod in `apps` on the other node: through both uplinks.
    FarPod,
    /// The destination's node itself (its own stack, from its primary address).
    Node,
    /// The internet host, through the Public group's address.
    Internet,
}

const SOURCES: [Source; 4] = [
    Source::NearPod,
    Source::FarPod,
    Source::Node,
    Source::Internet,
];

/// One TCP port of the Public group `web`, the inbound rules of `apps-nsg` about it, and what
/// each source (in [`SOURCES`]' order) must get: allowed or not, by which rule.
struct PortCase {
    port: u16,
    what: &'static str,
    rules: Vec<NsgRule>,
    expect: [(bool, &'static str); 4],
}

/// The inbound matrix: by port, by prefix (the nodes' pools, the node's and the internet
/// host's addresses; singular and plural forms) and by service tag, each allowing and denying,
/// and a port no rule names (the default rules decide). Every source is allowed by some rule
/// of each kind and denied by another.
fn inbound_cases(node_ip: Ipv4Addr) -> Vec<PortCase> {
    let near = range_prefixes(NODE1_APPS_POOL);
    let far = range_prefixes(NODE2_APPS_POOL);
    let node = format!("{node_ip}/32");
    let internet = INTERNET_HOST_IP.to_string();
    let near_and_internet: Vec<String> = near.iter().cloned().chain([internet]).collect();
    let far_and_node: Vec<String> = far.iter().cloned().chain([node]).collect();
    let port = |p: u16| [p.to_string()];
    vec![
        PortCase {
            port: 8001,
            what: "allowed by port",
            rules: vec![NsgRule::allow_in("allow-8001", 100).tcp().ports(port(8001))],
            expect: [(true, "allow-8001"); 4],
        },
        PortCase {
            port: 8002,
            what: "denied by port (the VNet's default allow comes later)",
            rules: vec![NsgRule::deny_in("deny-8002", 110).tcp().ports(port(8002))],
            expect: [(false, "deny-8002"); 4],
        },
        PortCase {
            port: 8003,
            what: "allowed by prefix: the near pod and the internet host",
            rules: vec![
                NsgRule::allow_in("allow-8003-near-internet", 120)
                    .tcp()
                    .from(&near_and_internet)
                    .ports(port(8003)),
                NsgRule::deny_in("deny-8003-rest", 130)
                    .tcp()
                    .ports(port(8003)),
            ],
            expect: [
                (true, "allow-8003-near-internet"),
                (false, "deny-8003-rest"),
                (false, "deny-8003-rest"),
                (true, "allow-8003-near-internet"),
            ],
        },
        PortCase {
            port: 8004,
            what: "allowed by prefix: the far pod and the node",
            rules: vec![
                NsgRule::allow_in("allow-8004-far-node", 140)
                    .tcp()
                    .from(&far_and_node)
                    .ports(port(8004)),
                NsgRule::deny_in("deny-8004-rest", 150)
                    .tcp()
                    .ports(port(8004)),
            ],
            expect: [
                (false, "deny-8004-rest"),
                (true, "allow-8004-far-node"),
                (true, "allow-8004-far-node"),
                (false, "deny-8004-rest"),
            ],
        },
        PortCase {
            port: 8005,
            what: "denied by prefix: the near pod and the internet host",
            rules: vec![
                NsgRule::deny_in("deny-8005-near-internet", 160)
                    .tcp()
                    .from(&near_and_internet)
                    .ports(port(8005)),
                NsgRule::allow_in("allow-8005-rest", 170)
                    .tcp()
                    .ports(port(8005)),
            ],
            expect: [
                (false, "deny-8005-near-internet"),
                (true, "allow-8005-rest"),
                (true, "allow-8005-rest"),
                (false, "deny-8005-near-internet"),
            ],
        },
        PortCase {
            port: 8006,
            what: "denied by prefix: the far pod and the node",
            rules: vec![
                NsgRule::deny_in("deny-8006-far-node", 180)
                    .tcp()
                    .from(&far_and_node)
                    .ports(port(8006)),
                NsgRule::allow_in("allow-8006-rest", 190)
                    .tcp()
                    .ports(port(8006)),
            ],
            expect: [
                (true, "allow-8006-rest"),
                (false, "deny-8006-far-node"),
                (false, "deny-8006-far-node"),
                (true, "allow-8006-rest"),
            ],
        },
        PortCase {
            port: 8007,
            what: "denied by the VirtualNetwork tag, allowed by the Internet tag",
            rules: vec![
                NsgRule::deny_in("deny-8007-vnet", 200)
                    .tcp()
                    .from(["VirtualNetwork"])
                    .ports(port(8007)),
                NsgRule::allow_in("allow-8007-internet", 210)
                    .tcp()
                    .from(["Internet"])
                    .ports(port(8007)),
            ],
            expect: [
                (false, "deny-8007-vnet"),
                (false, "deny-8007-vnet"),
                (false, "deny-8007-vnet"),
                (true, "allow-8007-internet"),
            ],
        },
        PortCase {
            port: 8008,
            what: "denied by the Internet tag, allowed by the VirtualNetwork tag",
            rules: vec![
                NsgRule::deny_in("deny-8008-internet", 220)
                    .tcp()
                    .from(["Internet"])
                    .ports(port(8008)),
                NsgRule::allow_in("allow-8008-vnet", 230)
                    .tcp()
                    .from(["VirtualNetwork"])
                    .ports(port(8008)),
            ],
            expect: [
                (true, "allow-8008-vnet"),
                (true, "allow-8008-vnet"),
                (true, "allow-8008-vnet"),
                (false, "deny-8008-internet"),
            ],
        },
        PortCase {
            port: 8009,
            what: "no rule names it: the default rules decide",
            rules: vec![],
            expect: [
                (true, "AllowVnetInBound"),
                (true, "AllowVnetInBound"),
                (true, "AllowVnetInBound"),
                (false, "DenyAllInBound"),
            ],
        },
    ]
}

/// Two nodes running agents on a spec whose subnet `apps` has the NSG `apps-nsg` of `cases`;
/// on node-1 the Public group `web` (exposing every case's port, its public address routed to
/// node-1) and the pod `near`, on node-2 the pod `far`, all in `apps`.
struct Matrix {
    lab: Lab,
    node1: Node,
    agent1: Agent,
    agent2: Agent,
    web: Pod,
    near: Pod,
    far: Pod,
    cases: Vec<PortCase>,
}

impl Matrix {
    fn new() -> Result<Matrix> {
        let lab = Lab::new()?;
        let node1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
        let node2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
        let cases = inbound_cases(node1.ip);
        let ports: Vec<u16> = cases.iter().map(|c| c.port).collect();
        let rules: Vec<NsgRule> = cases.iter().flat_map(|c| c.rules.clone()).collect();
        let spec = with_nsg(
            &with_public_group_ports(&lab_spec(), "web", WEB_PUBLIC_IP, &ports),
            "apps-nsg",
            &["apps"],
            &rules,
        );
        let agent1 = Agent::start(&node1, &spec)?;
        let agent2 = Agent::start(&node2, &spec)?;
        let web = add_pod(&lab, &node1, "web", None, "VNETD_CONTAINER_GROUP=web")?;
        let near = add_pod(&lab, &node1, "near", Some("apps"), "")?;
        let far = add_pod(&lab, &node2, "far", Some("apps"), "")?;
        lab.host_public_ip(&node1, WEB_PUBLIC_IP)?;
        Ok(Matrix {
            lab,
            node1,
            agent1,
            agent2,
            web,
            near,
            far,
            cases,
        })
    }

    /// Where `source` connects from, and the address it connects to for `web`.
    fn client(&self, source: Source) -> (&Ns, Ipv4Addr) {
        match source {
            Source::NearPod => (&self.near, self.web.ip),
            Source::FarPod => (&self.far, self.web.ip),
            Source::Node => (&self.node1, self.web.ip),
            Source::Internet => (self.lab.internet(), WEB_PUBLIC_IP),
        }
    }

    /// The address `web` sees `source` connect from.
    fn seen_as(&self, source: Source) -> Ipv4Addr {
        match source {
            Source::NearPod => self.near.ip,
            Source::FarPod => self.far.ip,
            Source::Node => self.node1.ip,
            Source::Internet => INTERNET_HOST_IP,
        }
    }

    /// Every source tries every port at once (echo servers on all of `web`'s ports).
    fn run(&self) -> Result<MatrixRun> {
        let servers = self
            .cases
            .iter()
            .map(|c| Ok((c.port, EchoServer::tcp(&self.web, c.port)?)))
            .collect::<Result<Vec<_>>>()?;
        let outcomes = std::thread::scope(|s| {
            let attempts: Vec<_> = self
                .cases
                .iter()
                .flat_map(|c| {
                    SOURCES
                        .iter()
                        .zip(c.expect)
                        .map(move |(s, e)| (c.port, *s, e))
                })
                .map(|(port, source, (allow, _))| {
                    s.spawn(move || {
                        let (client, ip) = self.client(source);
                        let wait = if allow { ALLOWED_WAIT } else { DENIED_WAIT };
                        let got = attempt(client, SocketAddr::from((ip, port)), wait);
                        ((port, source), got)
                    })
                })
                .collect();
            attempts
                .into_iter()
                .map(|a| a.join().expect("an attempt's thread panicked"))
                .collect::<BTreeMap<_, _>>()
        });
        let seen = servers.iter().map(|(p, s)| (*p, s.seen())).collect();
        Ok(MatrixRun { outcomes, seen })
    }
}

/// What [`Matrix::run`] saw.
struct MatrixRun {
    /// What each attempt got, by (port, source).
    outcomes: BTreeMap<(u16, Source), Outcome>,
    /// Whom each port's server saw.
    seen: BTreeMap<u16, Vec<Seen>>,
}

/// Inbound rules decide by port, by prefix and by service tag, allowing and denying, for each
/// of the four ways into a pod; a port no rule names falls to the default rules (the VNet in,
/// the internet out). A denied connection is dropped (the connect times out, nothing reaches
/// the server) and counted as `nsg_denied`; an allowed one echoes, and the server sees the
/// client's own address (the rules see it too: the prefix rules name it).
#[test]
fn inbound_rules_decide_by_port_prefix_and_service_tag_from_every_way_in() -> Result<()> {
    let _serial = serial();
    let m = Matrix::new()?;
    let denied_before = m.agent1.drops("nsg_denied")?;
    let MatrixRun { outcomes, seen } = m.run()?;

    let mut wrong = Vec::new();
    let mut denied = 0;
    for case in &m.cases {
        let saw: Vec<Ipv4Addr> = seen[&case.port].iter().map(|c| *c.peer.ip()).collect();
        for (source, (allow, rule)) in SOURCES.iter().zip(case.expect) {
            let got = &outcomes[&(case.port, *source)];
            let arrived = saw.contains(&m.seen_as(*source));
            let ok = if allow {
                *got == Outcome::Echoed && arrived
            } else {
                *got == Outcome::TimedOut && !arrived
            };
            denied += usize::from(!allow);
            if !ok {
                wrong.push(format!(
                    "  port {} ({}) from {source:?}: expected {} by {rule}, got {got:?}, \
                     {} the server",
                    case.port,
                    case.what,
                    if allow { "allowed" } else { "dropped" },
                    if arrived { "reached" } else { "did not reach" },
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} attempts went the wrong way:\n{}",
        wrong.len(),
        outcomes.len(),
        wrong.join("\n")
    );
    // Every denied attempt is one SYN, dropped on node-1 (where the destination lives: the far
    // pod's too, on its way in from the uplink).
    let denied_now = m.agent1.drops("nsg_denied")? - denied_before;
    assert_eq!(
        denied_now, denied as u64,
        "one nsg_denied drop per refused SYN"
    );
    Ok(())
}

/// The hits of the rules named in `rules`' keys of `nsg` on `agent`, from `/metrics` and from
/// `vnetd status --json` (absent = 0).
fn hits(agent: &Agent, nsg: &str, rules: &BTreeMap<String, u64>) -> Result<(Vec<u64>, Vec<u64>)> {
    let metrics = agent.metrics()?;
    let status = agent.status()?;
    Ok(rules
        .keys()
        .map(|r| {
            (
                nsg_rule_hits_in_metrics(&metrics, nsg, r).unwrap_or(0),
                nsg_rule_hits_in_status(&status, nsg, r).unwrap_or(0),
            )
        })
        .unzip())
}

/// Expected hits by rule name.
fn counts(rules: &[(&str, u64)]) -> BTreeMap<String, u64> {
    rules.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

/// Waits (the metrics are refreshed every second) until `agent`'s hits of `nsg`'s rules have
/// grown from `before` by exactly `expected`, in `/metrics` and in the status alike; an error
/// shows every rule's growth in both.
fn expect_hits(
    agent: &Agent,
    nsg: &str,
    expected: &BTreeMap<String, u64>,
    before: &(Vec<u64>, Vec<u64>),
) -> Result<()> {
    let want: Vec<u64> = expected.values().copied().collect();
    let grown = |now: &[u64], then: &[u64]| -> Vec<u64> {
        now.iter()
            .zip(then)
            .map(|(n, t)| n.saturating_sub(*t))
            .collect()
    };
    let mut last = (Vec::new(), Vec::new());
    let ok = wait_for(Duration::from_secs(5), || {
        match hits(agent, nsg, expected) {
            Ok(now) => {
                last = (grown(&now.0, &before.0), grown(&now.1, &before.1));
                last.0 == want && last.1 == want
            }
            Err(_) => false,
        }
    });
    if !ok {
        let rows: Vec<String> = expected
            .iter()
            .enumerate()
            .map(|(i, (rule, n))| {
                format!(
                    "  {rule}: expected +{n}, /metrics +{}, status +{}",
                    last.0.get(i).copied().unwrap_or_default(),
                    last.1.get(i).copied().unwrap_or_default()
                )
            })
            .collect();
        anyhow::bail!(
            "the hits of {nsg} on {} did not move as expected:\n{}",
            agent.node.role,
            rows.join("\n")
        );
    }
    Ok(())
}

/// Every decision counts one hit for the rule that made it, by name, default rules included,
/// in `/metrics` (`vnetd_nsg_rule_hits_total{nsg,rule,direction,access}`) and in
/// `vnetd status --json` alike, on the node that decided: the inbound matrix's attempts on
/// node-1 (the destination's node: one hit per attempt, a refused one being one SYN), the near
/// pod's connections out by `AllowVnetOutBound` on node-1 and the far pod's on node-2; replies
/// count nothing.
#[test]
fn hit_counters_move_by_one_per_decision_for_the_deciding_rule() -> Result<()> {
    let _serial = serial();
    let m = Matrix::new()?;
    // Every rule of the NSG, expected to stay where it is unless it decides something.
    let mut on_node1: BTreeMap<String, u64> = m
        .cases
        .iter()
        .flat_map(|c| c.rules.iter().map(|r| r.name.clone()))
        .chain(
            [
                "AllowVnetInBound",
                "AllowAzureLoadBalancerInBound",
                "DenyAllInBound",
                "AllowVnetOutBound",
                "AllowInternetOutBound",
                "DenyAllOutBound",
            ]
            .map(String::from),
        )
        .map(|r| (r, 0))
        .collect();
    let mut on_node2 = on_node1.clone();
    for case in &m.cases {
        for (_, rule) in case.expect {
            *on_node1.entry(rule.to_string()).or_default() += 1;
        }
    }
    // One connection per port from each pod, out through its own node.
    let per_pod = m.cases.len() as u64;
    on_node1.insert("AllowVnetOutBound".into(), per_pod);
    on_node2.insert("AllowVnetOutBound".into(), per_pod);

    let before1 = hits(&m.agent1, "apps-nsg", &on_node1)?;
    let before2 = hits(&m.agent2, "apps-nsg", &on_node2)?;
    m.run()?;
    let node1 = expect_hits(&m.agent1, "apps-nsg", &on_node1, &before1);
    let node2 = expect_hits(&m.agent2, "apps-nsg", &on_node2, &before2);
    node1?;
    node2?;
    // The NSG tables' occupancy against their capacity, in the status.
    let status = m.agent1.status()?;
    let table = |name: &str| {
        status["maps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t[0] == name)
            .map(|t| (t[1].as_u64().unwrap_or(0), t[2].as_u64().unwrap_or(0)))
    };
    let (rules, capacity) = table("nsg_rules").context("no nsg_rules in the status' maps")?;
    assert!(
        rules >= on_node1.len() as u64 && capacity == u64::from(vnetd_common::maps::NSG_RULES_MAX),
        "nsg_rules: {rules} of {capacity} for the {} rules of both directions",
        on_node1.len()
    );
    assert!(
        table("nsg_src_addr").is_some_and(|(n, _)| n > 0),
        "{}",
        status["maps"]
    );
    Ok(())
}

/// One node running an agent on `spec`, with `pods` pods in `apps` (`pod-0`, ...).
fn one_node(spec: &str, pods: usize) -> Result<(Lab, Node, Agent, Vec<Pod>)> {
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, spec)?;
    let pods = (0..pods)
        .map(|i| add_pod(&lab, &node, &format!("pod-{i}"), Some("apps"), ""))
        .collect::<Result<Vec<_>>>()?;
    Ok((lab, node, agent, pods))
}

/// What the exact counts above rest on: a refused attempt (given [`DENIED_WAIT`]) sends one
/// SYN. Checked without any NSG, through the lab's `None` route (10.99.0.0/16 in `apps`),
/// whose drops are counted one per packet: three attempts at once, three drops.
#[test]
fn a_refused_attempt_is_one_syn() -> Result<()> {
    let _serial = serial();
    let (_lab, _node, agent, pods) = one_node(&lab_spec(), 1)?;
    let before = agent.drops("route_none")?;
    let blackhole = SocketAddr::from((Ipv4Addr::new(10, 99, 0, 1), 80));
    std::thread::scope(|s| {
        let tries: Vec<_> = (0..3)
            .map(|_| s.spawn(|| refused(&pods[0], blackhole, "into the None route")))
            .collect();
        tries
            .into_iter()
            .try_for_each(|t| t.join().expect("an attempt's thread panicked"))
    })?;
    assert_eq!(
        agent.drops("route_none")? - before,
        3,
        "one SYN per attempt"
    );
    Ok(())
}

fn internet(port: u16) -> SocketAddr {
    SocketAddr::from((INTERNET_HOST_IP, port))
}

/// An outbound deny of TCP port 25 (before SNAT: it sees the pod) drops a pod's SMTP to the
/// internet host, while TCP 80 and UDP 25 (the rule is TCP only) pass through SNAT as ever.
#[test]
fn outbound_smtp_is_denied_while_other_traffic_passes() -> Result<()> {
    let _serial = serial();
    let spec = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        &[NsgRule::deny_out("deny-smtp-out", 100).tcp().ports(["25"])],
    );
    let (lab, node, agent, pods) = one_node(&spec, 1)?;
    let pod = &pods[0];
    let smtp = EchoServer::tcp(lab.internet(), 25)?;
    let web = EchoServer::tcp(lab.internet(), 80)?;
    let denied_before = agent.drops("nsg_denied")?;
    // Replies are no decisions: the inbound rules count nothing.
    let expected = counts(&[
        ("deny-smtp-out", 1),
        ("AllowInternetOutBound", 2),
        ("AllowVnetOutBound", 0),
        ("DenyAllOutBound", 0),
        ("AllowVnetInBound", 0),
        ("AllowAzureLoadBalancerInBound", 0),
        ("DenyAllInBound", 0),
    ]);
    let hits_before = hits(&agent, "apps-nsg", &expected)?;

    let smtp_try = refused(pod, internet(25), "SMTP out");
    let web_try = allowed(pod, internet(80), "HTTP out");
    let udp = udp_echo(pod, lab.internet(), INTERNET_HOST_IP, 25, ALLOWED_WAIT)
        .context("UDP to port 25: the rule is TCP only");
    web_try?;
    assert!(
        web.seen().iter().all(|c| *c.peer.ip() == node.ip),
        "HTTP left with the node's address: {:?}",
        web.seen()
    );
    assert_eq!(*udp?.server_peer.ip(), node.ip);
    smtp_try?;
    assert!(
        smtp.seen().is_empty(),
        "nothing reached the SMTP server: {:?}",
        smtp.seen()
    );
    assert_eq!(
        agent.drops("nsg_denied")? - denied_before,
        1,
        "the one SMTP SYN was dropped as nsg_denied"
    );
    expect_hits(&agent, "apps-nsg", &expected, &hits_before)
}

/// With an inbound rule denying everything, a pod's own connections still work: the replies of
/// an allowed outbound flow pass without any inbound rule (TCP and UDP through SNAT to the
/// internet host, ICMP echo, TCP to a container group on the same node), while a new connection
/// towards the pod, from that group or from the node, is dropped.
#[test]
fn replies_of_allowed_outbound_flows_pass_an_nsg_denying_all_inbound() -> Result<()> {
    let _serial = serial();
    let spec = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        &[NsgRule::deny_in("deny-all-in", 100)],
    );
    let (lab, node, agent, pods) = one_node(&spec, 1)?;
    let pod = &pods[0];
    // The lab's Private group `api` (10.0.1.10, TCP 8080) in `aci`, which has no NSG.
    let api = add_pod(&lab, &node, "api", None, "VNETD_CONTAINER_GROUP=api")?;
    // The two refused SYNs are the only inbound decisions: no reply is classified.
    let expected = counts(&[
        ("deny-all-in", 2),
        ("AllowVnetInBound", 0),
        ("AllowAzureLoadBalancerInBound", 0),
        ("DenyAllInBound", 0),
    ]);
    let hits_before = hits(&agent, "apps-nsg", &expected)?;

    let tcp = tcp_echo(pod, lab.internet(), INTERNET_HOST_IP, 80, ALLOWED_WAIT)
        .context("TCP out to the internet host and its replies back in")?;
    assert_eq!(*tcp.server_peer.ip(), node.ip, "{tcp:?}");
    udp_echo(pod, lab.internet(), INTERNET_HOST_IP, 53, ALLOWED_WAIT)
        .context("UDP out to the internet host and its replies back in")?;
    assert_eq!(
        pod.ping_count(INTERNET_HOST_IP, 2)?,
        2,
        "echo replies come back in"
    );
    tcp_echo(pod, &api, api.ip, 8080, ALLOWED_WAIT)
        .context("TCP to a group on the same node and its replies back in")?;

    let _server = EchoServer::tcp(pod, 9000)?;
    let into_pod = SocketAddr::from((pod.ip, 9000));
    refused(
        &api,
        into_pod,
        "a new connection from the group into the pod",
    )?;
    refused(
        &node,
        into_pod,
        "a new connection from the node into the pod",
    )?;
    expect_hits(&agent, "apps-nsg", &expected, &hits_before)
}

/// A deny rule added by a live reload applies to new connections only: streams established
/// before it (from a pod on the same node and from one on the other node) keep echoing after
/// the reload, while new connections to the same port, from those pods and from the node, are
/// dropped. The hit counts carry over the reload.
#[test]
fn a_deny_added_live_blocks_new_connections_while_established_streams_flow() -> Result<()> {
    const PORT: u16 = 9100;
    let _serial = serial();
    let allow = NsgRule::allow_in("allow-echo", 200)
        .tcp()
        .ports([PORT.to_string()]);
    let spec_before = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        std::slice::from_ref(&allow),
    );
    let spec_after = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        &[
            NsgRule::deny_in("deny-echo", 100)
                .tcp()
                .ports([PORT.to_string()]),
            allow,
        ],
    );
    let lab = Lab::new()?;
    let node1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let node2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    let agent1 = Agent::start(&node1, &spec_before)?;
    let agent2 = Agent::start(&node2, &spec_before)?;
    let server = add_pod(&lab, &node1, "server", Some("apps"), "")?;
    let near = add_pod(&lab, &node1, "near", Some("apps"), "")?;
    let far = add_pod(&lab, &node2, "far", Some("apps"), "")?;
    // Decided on node-1 (the server's): the two streams before the reload, the three refused
    // SYNs after it. The reload keeps allow-echo's count (no reset, no second decision for
    // the streams).
    let expected = counts(&[("allow-echo", 2), ("deny-echo", 3)]);
    let hits_at_start = hits(&agent1, "apps-nsg", &expected)?;
    let echo = EchoServer::tcp(&server, PORT)?;
    let dst = SocketAddr::from((server.ip, PORT));
    let streams = [
        EchoStream::start(&near, dst)?,
        EchoStream::start(&far, dst)?,
    ];
    for s in &streams {
        s.advances(0, 10_000, Duration::from_secs(5))?;
    }

    agent1.write_spec(&spec_after)?;
    agent2.write_spec(&spec_after)?;
    for agent in [&agent1, &agent2] {
        ensure!(
            agent.wait_for_status("reloads_ok", 1),
            "{} did not apply the edit: {}",
            agent.node.role,
            agent.log()
        );
    }
    let at_reload: Vec<u64> = streams.iter().map(EchoStream::bytes).collect();

    let new_ones = [
        refused(&near, dst, "a new connection from the near pod"),
        refused(&far, dst, "a new connection from the far pod"),
        refused(&node1, dst, "a new connection from the node"),
    ];
    for (s, from) in streams.iter().zip(&at_reload) {
        s.advances(*from, 10_000, Duration::from_secs(5))
            .context("the established stream after the reload")?;
    }
    std::thread::sleep(Duration::from_secs(1));
    for s in &streams {
        s.advances(s.bytes(), 10_000, Duration::from_secs(5))
            .context("the established stream a second later")?;
    }
    for r in new_ones {
        r?;
    }
    expect_hits(&agent1, "apps-nsg", &expected, &hits_at_start)?;
    assert_eq!(
        echo.seen().len(),
        2,
        "only the two streams ever reached the server: {:?}",
        echo.seen()
    );
    for s in streams {
        s.check()?;
        s.stop();
    }
    Ok(())
}

/// Azure's platform address (wire server, health probes).
const PLATFORM_IP: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Traffic between a pod and 168.63.129.16 or 169.254.169.254 is not subject to NSGs. The lab
/// hosts both addresses on the internet namespace (addresses on its loopback and edge routes:
/// nothing outside the lab's namespaces; in Azure the host answers them, here they sit beyond
/// the node). With rules denying everything both ways, a pod still reaches both (168.63.129.16
/// through SNAT) while the internet host stays refused, and a connection from 168.63.129.16 to a
/// Public group's address reaches the group while one from the internet host does not.
#[test]
fn the_platform_address_is_exempt_from_nsgs() -> Result<()> {
    const PORT: u16 = 8080;
    let _serial = serial();
    let spec = with_nsg(
        &with_public_group_ports(&lab_spec(), "web", WEB_PUBLIC_IP, &[PORT]),
        "apps-nsg",
        &["apps"],
        &[
            NsgRule::deny_in("deny-all-in", 100),
            NsgRule::deny_out("deny-all-out", 100),
        ],
    );
    let (lab, node, _agent, pods) = one_node(&spec, 1)?;
    let pod = &pods[0];
    let web = add_pod(&lab, &node, "web", None, "VNETD_CONTAINER_GROUP=web")?;
    lab.host_public_ip(&node, WEB_PUBLIC_IP)?;
    lab.add_internet_ip(PLATFORM_IP)?;
    let _platform = EchoServer::tcp(lab.internet(), 80)?;

    let to_internet = refused(pod, internet(80), "the pod to the internet host");
    allowed(
        pod,
        SocketAddr::from((PLATFORM_IP, 80)),
        "the pod to the platform address",
    )?;

    let _group_server = EchoServer::tcp(&web, PORT)?;
    let public = SocketAddr::from((WEB_PUBLIC_IP, PORT));
    let from_internet = refused(
        lab.internet(),
        public,
        "the internet host to the group's public address",
    );
    let mut probe = lab
        .internet()
        .tcp_connect_from(SocketAddr::from((PLATFORM_IP, 0)), public, ALLOWED_WAIT)
        .context("from the platform address to the group's public address")?;
    tcp_roundtrip(&mut probe, b"probe", ALLOWED_WAIT)
        .context("an echo from the platform address through the group's public address")?;
    // The controls last: without them the exemptions prove nothing, but they are what fails
    // while NSGs are not enforced.
    // The metadata address is never masqueraded: the pod's own address goes out, and the
    // edge is given a route back to this one pod (it has none to pods otherwise).
    lab.add_internet_ip(METADATA_IP)?;
    lab.edge().ip([
        "route",
        "add",
        &format!("{}/32", pod.ip),
        "via",
        &node.ip.to_string(),
    ])?;
    let metadata = EchoServer::tcp(lab.internet(), 81)?;
    allowed(
        pod,
        SocketAddr::from((METADATA_IP, 81)),
        "the pod to the metadata address",
    )?;
    assert_eq!(*metadata.seen()[0].peer.ip(), pod.ip, "not masqueraded");
    to_internet?;
    from_internet?;
    Ok(())
}
