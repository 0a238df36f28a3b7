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
//!
//! How NSGs follow flows (outbound rules before SNAT, replies, live reloads, the platform's
//! addresses) is `e2e_nsg_flows.rs`; a container group's exposed ports, `e2e_group_ports.rs`.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

use anyhow::{Context as _, Result};
use vnetd_lab::{
    ALLOWED_WAIT, DENIED_WAIT, EchoServer, INTERNET_HOST_IP, Lab, Node, Ns, Outcome, Seen, attempt,
    refused, serial,
    vnetd::{
        Agent, NsgRule, Pod, add_pod, expect_nsg_hits, lab_spec, node_cidr, node_with_pods,
        nsg_hits, with_nsg, with_public_group_ports,
    },
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

    let before1 = nsg_hits(&m.agent1, "apps-nsg", &on_node1)?;
    let before2 = nsg_hits(&m.agent2, "apps-nsg", &on_node2)?;
    m.run()?;
    let node1 = expect_nsg_hits(&m.agent1, "apps-nsg", &on_node1, &before1);
    let node2 = expect_nsg_hits(&m.agent2, "apps-nsg", &on_node2, &before2);
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

/// What the exact counts above rest on: a refused attempt (given [`DENIED_WAIT`]) sends one
/// SYN. Checked without any NSG, through the lab's `None` route (10.99.0.0/16 in `apps`),
/// whose drops are counted one per packet: three attempts at once, three drops.
#[test]
fn a_refused_attempt_is_one_syn() -> Result<()> {
    let _serial = serial();
    let (_lab, _node, agent, pods) = node_with_pods(&lab_spec(), 1)?;
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
