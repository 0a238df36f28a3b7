//! `cargo xtask bench`: vnetd against the dataplane it replaces, in the same run, on the same
//! machine: pod to pod on one node, and pod to the internet through the node's address.
//!
//! - **vnetd**: a lab node running the agent, two pods attached through `vnetd-cni`
//!   (TC ingress on the sending pod's host veth, `bpf_redirect_peer` into the other pod; to the
//!   internet, SNAT to the node's address in the same program and `bpf_redirect_neigh` out of
//!   the uplink, replies translated back on the uplink and redirected into the pod).
//! - **reference**: another lab node without vnetd, two pods attached by Debian's reference CNI
//!   plugins as a conflist chain: `bridge` (host-local IPAM, a Linux bridge `cni0`, gateway and
//!   masquerade: `ipMasq` is an iptables `MASQUERADE` rule per pod) then `firewall` (iptables
//!   backend). Bridge netfilter stays as the host has it.
//!
//! Pod to the internet goes from the same client pods to a server in the lab's `internet`
//! namespace (198.51.100.10), through the lab's fabric and edge router, which both paths share.
//! Before measuring, the bench checks that the server sees each node's own address (the
//! dataplane translated); a dataplane that does not is not measured on that path, and the
//! report says why.
//!
//! Each metric is measured on both, one run at a time, alternating (the dataplane that goes
//! first alternates per repetition), and reported as median [min-max] with the ratio of the
//! medians. A table goes to stdout, a JSON report to `target/bench/report.json` and the
//! README's table, naming that report, beside it (`report.md`). A run during which the
//! dataplane's evidence counter did not move is marked invalid and left out of the figures.
//! Nothing is asserted: speed is never a test verdict.
//!
//! Beside those: new connections per second pod to pod with an NSG of 1, 10, 100 and 1000
//! rules on both dataplanes ([`nsg`]); the 64-byte packet rate at the dataplane, an XDP
//! live-frames generator against vnetd, the reference and a bare `bpf_redirect_peer`
//! forwarder ([`pktrate`], the generator is `xtask/pktgen`); the BPF_PROG_RUN costs, the NSG's
//! first packet by rule count among them; where the bulk runs' retransmissions come from
//! ([`retrans`]). `--scenario NAME` runs one ([`SCENARIOS`]); SVG plots go beside the report
//! ([`plots`]).
//!
//! This module runs the bench; [`measure`] takes the measurements (iperf3, TCP_RR, new
//! connections per second, the counters that prove the path, BPF_PROG_RUN), [`internet`] sets
//! up and checks the pod-to-internet path, [`report`] turns them into the table, the JSON and
//! the README's markdown, and [`cni`] and [`apply`] are the control plane's share (CNI ADD/DEL
//! latency; the agent's start, reload and one-rule change with 250 pods and 1000 rules).

mod apply;
mod cni;
mod flowsetup;
mod internet;
mod measure;
mod nsg;
mod pktrate;
mod plots;
mod report;
mod retrans;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use cni::{CNI_DIR, ref_plugins_conf};
use measure::{
    NSG_RULE_COUNTS, flow_log_ring_key, forward_to_cni_packets, masquerade_packets, measure,
    nsg_established_key, nsg_first_packet_key, progrun_bench,
};
use report::{
    environment, first_line, fmt_num, markdown, notes, package_version, print_table, summary_json,
};
use serde_json::{Value, json};
use vnetd_lab::{
    INTERNET_HOST_IP, Lab, Node, Ns, POD_GATEWAY, tcp_echo_ok,
    vnetd::{Agent, add_pod, bin, lab_spec},
};

pub struct Options {
    /// One repetition, short runs: a smoke test of the bench itself.
    pub quick: bool,
    /// Repetitions (default 3, or 1 with `quick`).
    pub reps: Option<u32>,
    /// Where the JSON report goes (default `target/bench/report.json`).
    pub out: Option<PathBuf>,
    /// Only these scenarios ([`SCENARIOS`]); empty: all.
    pub scenarios: Vec<String>,
    /// Pods the control plane's CNI benchmark attaches and detaches (default 100, 25 with
    /// `quick`).
    pub cni_pods: Option<usize>,
    /// Client threads making new connections at once (default [`CONNECT_CLIENTS`]).
    pub connect_clients: Option<usize>,
}

/// Client threads of the new-connection runs, by default.
pub const CONNECT_CLIENTS: usize = 8;

impl Options {
    fn connect_clients(&self) -> usize {
        self.connect_clients.unwrap_or(CONNECT_CLIENTS).max(1)
    }
    fn cni_pods(&self) -> usize {
        self.cni_pods.unwrap_or(if self.quick { 25 } else { 100 })
    }
}

/// Pods on the node of the spec-apply benchmark (the 250, a node's most).
const SPEC_APPLY_PODS: usize = cni::MAX_PODS;

/// The control plane: CNI ADD/DEL latency of `opts.cni_pods()` pods on both dataplanes, then
/// vnetd's spec apply (start, reload, one-rule change) with [`SPEC_APPLY_PODS`] pods and an
/// NSG of [`apply::RULES`] rules, under `spec_apply`.
fn control_plane(opts: &Options) -> Result<Value> {
    let pods = opts.cni_pods();
    step(&format!(
        "control plane: CNI ADD then DEL of {pods} pods, vnetd-cni against bridge + firewall"
    ));
    let mut report = cni::run(pods)?;
    let changes = if opts.quick { 5 } else { 20 };
    step(&format!(
        "control plane: vnetd applying a spec with {SPEC_APPLY_PODS} pods and an NSG of {} \
         rules (start to ready, a reload adding it, {changes} one-rule changes)",
        apply::RULES
    ));
    report["spec_apply"] = match apply::run(SPEC_APPLY_PODS, changes) {
        Ok(v) => v,
        Err(e) => {
            println!("   failed: {e:#}");
            json!({ "error": format!("{e:#}") })
        }
    };
    Ok(report)
}

/// The control plane's tables for `report.md`.
fn control_plane_markdown(report: &Value) -> String {
    let mut md = cni::markdown(report);
    if report["spec_apply"]["pods"].is_number() {
        md += &apply::markdown(&report["spec_apply"]);
    }
    md
}

/// The scenarios `--scenario NAME` selects, with what each measures.
pub const SCENARIOS: [(&str, &str); 9] = [
    (
        "progrun",
        "BPF_PROG_RUN: pod_ingress, SNAT, NSG first packet by rule count",
    ),
    (
        "pod_to_pod",
        "pod to pod on one node: TCP bulk, TCP_RR, UDP 64 B",
    ),
    (
        "cross_node",
        "pod to pod across two nodes through the fabric: TCP bulk, TCP_RR, UDP 64 B (reference: \
         a bridge subnet per node and a static route to the other's, as kubenet)",
    ),
    (
        "pod_to_internet",
        "pod to the internet host through SNAT / MASQUERADE",
    ),
    (
        "nsg",
        "new connections/s pod to pod with an NSG of 1, 10, 100, 1000 rules",
    ),
    (
        "packet_rate",
        "64 B packet rate pod to pod, XDP live-frames generator: vnetd, reference, bare forwarder; \
         vnetd and reference again with an NSG of 1000 rules in the path",
    ),
    (
        "flow_setup",
        "new flows/s at the dataplane pod to pod, XDP live-frames generator sending TCP SYNs of \
         new tuples: vnetd and reference with an NSG of 1 and of 1000 rules",
    ),
    (
        "retrans",
        "TCP bulk pod to pod with sender and receiver unpinned, on two CPUs, on one: \
         retransmissions, DSACKs, out-of-order segments",
    ),
    (
        "control_plane",
        "CNI ADD and DEL latency, vnetd-cni against bridge + firewall; vnetd's spec apply \
         (start to ready, reload, one-rule change) with 250 pods and 1000 rules",
    ),
];

/// Fails naming the scenarios there are if `names` holds one that is not.
pub fn check_scenarios(names: &[String]) -> Result<()> {
    Selection::new(names).map(drop)
}

/// The scenarios a run measures.
struct Selection(Vec<String>);

impl Selection {
    fn new(names: &[String]) -> Result<Selection> {
        for n in names {
            ensure!(
                SCENARIOS.iter().any(|(s, _)| s == n),
                "--scenario {n}: no such scenario; there are {}",
                SCENARIOS
                    .iter()
                    .map(|(s, what)| format!("{s} ({what})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Selection(names.to_vec()))
    }
    fn has(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n == name)
    }
    fn has_scenario(&self, s: Scenario) -> bool {
        self.has(match s {
            Scenario::PodToPod => "pod_to_pod",
            Scenario::CrossNode => "cross_node",
            Scenario::PodToInternet => "pod_to_internet",
            Scenario::NsgPodToPod(_) => "nsg",
        })
    }
    /// The runs of one repetition, in order; each is run on both dataplanes, one after the
    /// other. The NSG's runs come last, so the NSG is put on only once per repetition.
    fn schedule(&self) -> Vec<(Scenario, Kind)> {
        SCHEDULE
            .into_iter()
            .chain(nsg::RULE_COUNTS.map(|n| (Scenario::NsgPodToPod(n), Kind::Connect)))
            .filter(|(s, _)| self.has_scenario(*s))
            .collect()
    }
    fn needs_lab(&self) -> bool {
        [
            "pod_to_pod",
            "cross_node",
            "pod_to_internet",
            "nsg",
            "packet_rate",
            "flow_setup",
            "retrans",
        ]
        .iter()
        .any(|s| self.has(s))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dp {
    Vnetd,
    Reference,
}

const DATAPLANES: [Dp; 2] = [Dp::Vnetd, Dp::Reference];

impl Dp {
    fn key(self) -> &'static str {
        match self {
            Dp::Vnetd => "vnetd",
            Dp::Reference => "reference",
        }
    }
}

/// Where the client pod's traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// To another pod on the same node.
    PodToPod,
    /// To a pod on another node, across the lab's fabric.
    CrossNode,
    /// To the internet host, leaving with the node's address (vnetd's SNAT, the reference's
    /// MASQUERADE).
    PodToInternet,
    /// To another pod on the same node, whose subnet has an NSG of this many rules (the
    /// reference: as many iptables rules in its FORWARD path); see [`nsg`].
    NsgPodToPod(u32),
}

impl Scenario {
    fn key(self) -> &'static str {
        match self {
            Scenario::PodToPod => "pod_to_pod",
            Scenario::CrossNode => "cross_node",
            Scenario::PodToInternet => "pod_to_internet",
            Scenario::NsgPodToPod(_) => "pod_to_pod_nsg",
        }
    }

    /// The rules per NSG this scenario runs with.
    fn nsg_rules(self) -> Option<u32> {
        match self {
            Scenario::NsgPodToPod(n) => Some(n),
            _ => None,
        }
    }

    /// The counters that move only when `dp` carries this scenario's packets; a run during
    /// which one of them did not move measured something else.
    fn evidence(self, dp: Dp) -> &'static [&'static str] {
        match (self, dp) {
            (Scenario::PodToPod, Dp::Vnetd) => &["vnetd pod_to_pod"],
            (Scenario::PodToPod, Dp::Reference) => &["reference FORWARD -> CNI-FORWARD rule"],
            (Scenario::CrossNode, Dp::Vnetd) => &["vnetd pod_to_vnet"],
            (Scenario::CrossNode, Dp::Reference) => &["reference FORWARD -> CNI-FORWARD rule"],
            // Both directions: the replies must come back through the translation too.
            (Scenario::PodToInternet, Dp::Vnetd) => {
                &["vnetd pod_to_internet", "vnetd internet_to_pod"]
            }
            // The nat table sees a connection's first packet only: one per connection.
            (Scenario::PodToInternet, Dp::Reference) => &["reference MASQUERADE rules"],
            (Scenario::NsgPodToPod(_), Dp::Vnetd) => &["vnetd pod_to_pod"],
            (Scenario::NsgPodToPod(_), Dp::Reference) => &["reference VNB-NSG allow rule"],
        }
    }
}

/// What one run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// iperf3, one TCP stream.
    Bulk,
    /// TCP_RR: 1-byte ping-pong on one connection.
    Rr,
    /// iperf3, 64-byte UDP datagrams.
    Udp,
    /// New connections: connect, 1-byte request and response, close; one after the other.
    Connect,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Bulk => "bulk",
            Kind::Rr => "rr",
            Kind::Udp => "udp",
            Kind::Connect => "connect",
        }
    }
}

/// The runs of one repetition without an NSG, in order (see [`Selection::schedule`]).
const SCHEDULE: [(Scenario, Kind); 9] = [
    (Scenario::PodToPod, Kind::Bulk),
    (Scenario::PodToPod, Kind::Rr),
    (Scenario::PodToPod, Kind::Udp),
    (Scenario::CrossNode, Kind::Bulk),
    (Scenario::CrossNode, Kind::Rr),
    (Scenario::CrossNode, Kind::Udp),
    (Scenario::PodToInternet, Kind::Bulk),
    (Scenario::PodToInternet, Kind::Rr),
    (Scenario::PodToInternet, Kind::Connect),
];

/// A client and a server of one dataplane in one scenario.
struct Pair {
    client: Ns,
    server: Ns,
    server_ip: Ipv4Addr,
    /// The port the server of TCP_RR and new connections listens on (0: any).
    port: u16,
}

/// How long each kind of run lasts.
#[derive(Clone, Copy)]
struct Durations {
    bulk: u32,
    rr: Duration,
    udp: u32,
    connect: Duration,
    /// Client threads making new connections at once (issue 11: many parallel clients).
    connect_clients: usize,
}

/// What a run measures, whatever the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quantity {
    TcpBulk,
    TcpRr,
    TcpRrLatency,
    UdpRx,
    ConnRate,
}

/// A row of the report: a quantity in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Metric {
    scenario: Scenario,
    quantity: Quantity,
}

const fn metric(scenario: Scenario, quantity: Quantity) -> Metric {
    Metric { scenario, quantity }
}

/// The report's rows. A run's quantity with no row here (the latency of TCP_RR to the
/// internet, 1 / its rate) stays in the run's JSON only.
const METRICS: [Metric; 15] = [
    metric(Scenario::PodToPod, Quantity::TcpBulk),
    metric(Scenario::PodToPod, Quantity::TcpRr),
    metric(Scenario::PodToPod, Quantity::TcpRrLatency),
    metric(Scenario::PodToPod, Quantity::UdpRx),
    metric(Scenario::CrossNode, Quantity::TcpBulk),
    metric(Scenario::CrossNode, Quantity::TcpRr),
    metric(Scenario::CrossNode, Quantity::TcpRrLatency),
    metric(Scenario::CrossNode, Quantity::UdpRx),
    metric(Scenario::PodToInternet, Quantity::TcpBulk),
    metric(Scenario::PodToInternet, Quantity::TcpRr),
    metric(Scenario::PodToInternet, Quantity::ConnRate),
    metric(
        Scenario::NsgPodToPod(nsg::RULE_COUNTS[0]),
        Quantity::ConnRate,
    ),
    metric(
        Scenario::NsgPodToPod(nsg::RULE_COUNTS[1]),
        Quantity::ConnRate,
    ),
    metric(
        Scenario::NsgPodToPod(nsg::RULE_COUNTS[2]),
        Quantity::ConnRate,
    ),
    metric(
        Scenario::NsgPodToPod(nsg::RULE_COUNTS[3]),
        Quantity::ConnRate,
    ),
];

impl Quantity {
    fn key(self) -> &'static str {
        match self {
            Quantity::TcpBulk => "tcp_bulk_gbps",
            Quantity::TcpRr => "tcp_rr_tps",
            Quantity::TcpRrLatency => "tcp_rr_mean_latency_us",
            Quantity::UdpRx => "udp_64b_rx_kpps",
            Quantity::ConnRate => "tcp_connections_per_s",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Quantity::TcpBulk => "TCP bulk, Gbit/s",
            Quantity::TcpRr => "TCP_RR 1 B, transactions/s",
            Quantity::TcpRrLatency => "TCP_RR mean latency, us (lower is better)",
            Quantity::UdpRx => "UDP 64 B receiver, kpps (syscall-bound)",
            Quantity::ConnRate => {
                "new TCP connections/s (parallel clients; connect, 1 B each way, close)"
            }
        }
    }
}

impl Metric {
    /// Pod to pod keeps the keys of earlier reports; pod to internet's start with `internet_`,
    /// the NSG's with `nsg_<rules>_rules_`.
    fn key(self) -> String {
        match self.scenario {
            Scenario::PodToPod => self.quantity.key().to_string(),
            Scenario::CrossNode => format!("cross_node_{}", self.quantity.key()),
            Scenario::PodToInternet => format!("internet_{}", self.quantity.key()),
            Scenario::NsgPodToPod(n) => format!("nsg_{n}_rules_{}", self.quantity.key()),
        }
    }
    fn label(self) -> String {
        match self.scenario {
            Scenario::PodToPod => self.quantity.label().to_string(),
            Scenario::CrossNode => format!("across nodes: {}", self.quantity.label()),
            Scenario::PodToInternet => format!("to internet: {}", self.quantity.label()),
            Scenario::NsgPodToPod(n) => {
                format!("NSG of {n} rule(s): new TCP connections/s pod to pod, parallel clients")
            }
        }
    }
    fn higher_is_better(self) -> bool {
        self.quantity != Quantity::TcpRrLatency
    }
    fn index(self) -> Option<usize> {
        METRICS.iter().position(|m| *m == self)
    }
}

/// Every sample of every metric for both dataplanes, and the raw runs for the report.
#[derive(Default)]
struct Results {
    samples: [[Vec<f64>; 2]; METRICS.len()],
    runs: Vec<Value>,
    /// Runs whose evidence counter did not move (their samples are not in `samples`).
    invalid: u32,
    /// The scenarios a dataplane was not measured on, and why (its path did not work).
    unavailable: Vec<(Scenario, Dp, String)>,
}

impl Results {
    /// Adds a sample of a listed metric; other quantities are only in the runs' JSON.
    fn add(&mut self, dp: Dp, metric: Metric, value: f64) {
        if let Some(i) = metric.index() {
            self.samples[i][dp as usize].push(value);
        }
    }
    fn get(&self, dp: Dp, metric: Metric) -> &[f64] {
        metric
            .index()
            .map_or(&[][..], |i| &self.samples[i][dp as usize])
    }
    /// Whether the report shows `m`'s row: measured, or its scenario was meant to be.
    fn shown(&self, m: Metric) -> bool {
        DATAPLANES
            .iter()
            .any(|&dp| !self.get(dp, m).is_empty() || self.unavailable(m.scenario, dp).is_some())
            || self.runs.iter().any(|run| {
                run["scenario"] == m.scenario.key()
                    && run["nsg_rules"].as_u64() == m.scenario.nsg_rules().map(u64::from)
            })
    }
    fn unavailable(&self, scenario: Scenario, dp: Dp) -> Option<&str> {
        self.unavailable
            .iter()
            .find(|(s, d, _)| *s == scenario && *d == dp)
            .map(|(_, _, why)| why.as_str())
    }
}

/// Only the control plane's scenario (`--control-plane-only`): CNI ADD/DEL latency.
pub fn run_control_plane(root: &Path, opts: Options) -> Result<()> {
    check_tools()?;
    vnetd_lab::ensure_bpffs()?;
    vnetd_lab::cleanup_on_signal()?;
    let report = json!({
        "environment": report::environment(),
        "control_plane": control_plane(&opts)?,
    });
    let out = opts
        .out
        .unwrap_or_else(|| target_dir(root).join("bench/control-plane.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\n   report: {}", out.display());
    Ok(())
}

pub fn run(root: &Path, opts: Options) -> Result<()> {
    check_tools()?;
    let reps = opts.reps.unwrap_or(if opts.quick { 1 } else { 3 }).max(1);
    let durations = if opts.quick {
        Durations {
            bulk: 2,
            rr: Duration::from_secs(1),
            udp: 2,
            connect: Duration::from_secs(1),
            connect_clients: opts.connect_clients(),
        }
    } else {
        Durations {
            bulk: 5,
            rr: Duration::from_secs(3),
            udp: 5,
            // Or 10,000 connections, whichever comes first (ephemeral ports in TIME_WAIT: see
            // measure::CONNECT_MAX).
            connect: Duration::from_secs(1),
            connect_clients: opts.connect_clients(),
        }
    };
    let out_path = opts
        .out
        .clone()
        .unwrap_or_else(|| target_dir(root).join("bench/report.json"));
    let sel = Selection::new(&opts.scenarios)?;

    // The microbenchmark first: it may compile, and it must not share the CPUs with the lab.
    let runs = if opts.quick { 100_000 } else { 1_000_000 };
    if sel.has("progrun") {
        step(&format!(
            "BPF_PROG_RUN, {reps} repetition(s): pod_ingress on a 64-byte pod-to-pod frame, {runs} \
         runs; one run per call on the same frame and on a packet of an established flow \
         through SNAT; a first packet classified by an NSG of 1, 10, 100 and 1000 rules \
         (agent/tests/progrun_bench.rs)"
        ));
    }
    let mut progrun_reps = Vec::new();
    let mut progrun = Err(anyhow::anyhow!("not run"));
    for rep in (0..reps).filter(|_| sel.has("progrun")) {
        let this = progrun_bench(runs);
        match &this {
            Ok(v) => print_progrun(rep + 1, v),
            Err(e) => println!("   rep {}: skipped: {e:#}", rep + 1),
        }
        if let Ok(v) = &this {
            progrun_reps.push(v.clone());
        }
        if rep == 0 || progrun.is_err() {
            progrun = this;
        }
    }
    let progrun_figures = ProgrunFigure::all(&progrun_reps);
    if !sel.needs_lab() {
        return finish_without_lab(
            &out_path,
            &opts,
            &sel,
            &progrun,
            &progrun_reps,
            &progrun_figures,
        );
    }

    vnetd_lab::ensure_bpffs()?;
    vnetd_lab::cleanup_on_signal()?;
    let lab = Lab::new()?;
    step(&format!("lab {} (namespaces {}*)", lab.id(), lab.prefix()));

    // vnetd: the agent on node-1 (the name examples/lab.yaml declares), two pods in `apps`.
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let agent = Agent::start(&node, &lab_spec()).context("starting the vnetd agent")?;
    let va = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let vb = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    println!(
        "   vnetd:           node-1, pods {} -> {} (vnetd-cni, TC + bpf_redirect_peer)",
        va.ip, vb.ip
    );

    // The reference: bridge + host-local + firewall(iptables) on node `ref`.
    let rnode = lab.add_node("ref", "10.0.0.9/24".parse()?)?;
    let (ra, ra_ip) = ref_pod(&lab, &rnode, "ref-a")?;
    let (rb, rb_ip) = ref_pod(&lab, &rnode, "ref-b")?;
    let nf_call = rnode
        .sysctl_get("net.bridge.bridge-nf-call-iptables")
        .unwrap_or_else(|_| "absent (br_netfilter not loaded)".into());
    let ref_rules = rnode
        .run_ok(["iptables-save"])
        .map(|s| s.lines().filter(|l| l.starts_with("-A")).count())
        .unwrap_or(0);
    println!(
        "   bridge+iptables: node ref, pods {ra_ip} -> {rb_ip} (bridge cni0 + firewall), \
         bridge-nf-call-iptables={nf_call}, {ref_rules} iptables rules in the node"
    );

    let pod_to_pod = [
        Pair {
            client: va.ns.ns.clone(),
            server: vb.ns.ns.clone(),
            server_ip: vb.ip,
            port: 0,
        },
        Pair {
            client: ra.clone(),
            server: rb.clone(),
            server_ip: rb_ip,
            port: 0,
        },
    ];
    for (dp, pair) in DATAPLANES.into_iter().zip(&pod_to_pod) {
        tcp_echo_ok(&pair.client, &pair.server, pair.server_ip, 7000)
            .with_context(|| format!("{} pod to pod does not work", dp.key()))?;
    }
    // Across nodes: a pod on a second node of each dataplane, from the same client pods.
    let (cross_node, _far) = if sel.has("cross_node") {
        let far = cross_node_pods(&lab, &rnode)?;
        let pairs = [
            Pair {
                client: va.ns.ns.clone(),
                server: far.vnetd.ns.ns.clone(),
                server_ip: far.vnetd.ip,
                port: 0,
            },
            Pair {
                client: ra.clone(),
                server: far.reference.clone(),
                server_ip: far.reference_ip,
                port: 0,
            },
        ];
        for (dp, pair) in DATAPLANES.into_iter().zip(&pairs) {
            tcp_echo_ok(&pair.client, &pair.server, pair.server_ip, 7000)
                .with_context(|| format!("{} pod to pod across nodes does not work", dp.key()))?;
        }
        println!(
            "   across nodes:    vnetd {} -> {} (node-2), reference {ra_ip} -> {} (node ref-2, \
             static routes between the nodes' pod subnets, no masquerade between them)",
            va.ip, far.vnetd.ip, far.reference_ip
        );
        (pairs.into_iter().collect::<Vec<_>>(), Some(far))
    } else {
        (Vec::new(), None)
    };
    // To the internet host from the same client pods.
    let pod_to_internet = pod_to_pod.each_ref().map(|p| Pair {
        client: p.client.clone(),
        server: lab.internet().clone(),
        server_ip: INTERNET_HOST_IP,
        port: 0,
    });
    // With an NSG: a client pod per rule count on each side (each run's connections hold
    // its ephemeral ports in TIME_WAIT for 60 s; see measure::CONNECT_MAX), to the same
    // server pods, on the port the NSG's last rule allows.
    let base_spec = lab_spec();
    let mut nsg_pairs: Vec<[Pair; 2]> = Vec::new();
    let mut nsg_pods = Vec::new();
    if sel.has("nsg") {
        for n in nsg::RULE_COUNTS {
            let vc = add_pod(&lab, &node, &format!("nsg-c{n}"), Some("apps"), "")?;
            let (rc, _) = ref_pod(&lab, &rnode, &format!("ref-nsg-c{n}"))?;
            for c in [&vc.ns.ns, &rc] {
                // Room for three repetitions of CONNECT_MAX connections in TIME_WAIT.
                c.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
            }
            nsg_pairs.push([
                Pair {
                    client: vc.ns.ns.clone(),
                    server: vb.ns.ns.clone(),
                    server_ip: vb.ip,
                    port: nsg::PORT,
                },
                Pair {
                    client: rc,
                    server: rb.clone(),
                    server_ip: rb_ip,
                    port: nsg::PORT,
                },
            ]);
            nsg_pods.push(vc);
        }
        println!(
            "   NSG runs: a client pod per rule count on each node ({} on vnetd's) to the same \
             server pods, port {}; vnetd: an inbound NSG on subnet apps (spec reload), \
             reference: iptables chain {} jumped to from the top of FORWARD",
            nsg_pods
                .iter()
                .map(|p| p.ip.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            nsg::PORT,
            nsg::CHAIN,
        );
    }
    let mut results = Results::default();
    let mut internet_sources = serde_json::Map::new();
    for ((dp, pair), node_ip) in DATAPLANES
        .into_iter()
        .zip(&pod_to_internet)
        .zip([node.ip, rnode.ip])
        .filter(|_| sel.has("pod_to_internet"))
    {
        match internet::check_translated(pair, node_ip) {
            Ok(seen) => {
                println!(
                    "   {:<16} pod {} -> internet {INTERNET_HOST_IP}: the server sees {seen}",
                    format!("{}:", dp.key()),
                    pair.client.name
                );
                internet_sources.insert(dp.key().into(), json!(seen.to_string()));
            }
            Err(e) => {
                let why = format!("{e:#}");
                println!("   {}: pod to internet NOT MEASURED: {why}", dp.key());
                internet_sources.insert(dp.key().into(), json!({ "error": why }));
                results.unavailable.push((Scenario::PodToInternet, dp, why));
            }
        }
    }
    let pairs = |scenario: Scenario, dp: Dp| match scenario {
        Scenario::PodToPod => &pod_to_pod[dp as usize],
        Scenario::CrossNode => &cross_node[dp as usize],
        Scenario::PodToInternet => &pod_to_internet[dp as usize],
        Scenario::NsgPodToPod(n) => {
            let i = nsg::RULE_COUNTS
                .iter()
                .position(|&r| r == n)
                .expect("a measured rule count");
            &nsg_pairs[i][dp as usize]
        }
    };

    step(&format!(
        "measuring: {reps} repetition(s), bulk {} s, TCP_RR {} s, UDP {} s, new connections {} s \
         from {} parallel clients per run, one run at a time",
        durations.bulk,
        durations.rr.as_secs_f64(),
        durations.udp,
        durations.connect.as_secs_f64(),
        durations.connect_clients,
    ));
    // Proof that each run took the measured path: vnetd's path counters, and the reference
    // node's iptables counters (pod to pod: the packets its FORWARD chain sent to the firewall
    // plugin's chain, which bridged frames reach only through bridge netfilter; to the
    // internet: its MASQUERADE rules). A run during which one of its dataplane's counters did
    // not move measured something else: it is marked invalid and left out.
    let evidence = |scenario: Scenario, dp: Dp| -> Result<Vec<u64>> {
        Ok(match (scenario, dp) {
            (Scenario::PodToPod, Dp::Vnetd) => vec![agent.traffic("pod_to_pod")?],
            (Scenario::PodToPod, Dp::Reference) => vec![forward_to_cni_packets(&rnode)?],
            (Scenario::CrossNode, Dp::Vnetd) => vec![agent.traffic("pod_to_vnet")?],
            (Scenario::CrossNode, Dp::Reference) => vec![forward_to_cni_packets(&rnode)?],
            (Scenario::PodToInternet, Dp::Vnetd) => vec![
                agent.traffic("pod_to_internet")?,
                agent.traffic("internet_to_pod")?,
            ],
            (Scenario::PodToInternet, Dp::Reference) => vec![masquerade_packets(&rnode)?],
            (Scenario::NsgPodToPod(_), Dp::Vnetd) => vec![agent.traffic("pod_to_pod")?],
            (Scenario::NsgPodToPod(_), Dp::Reference) => vec![nsg::allow_packets(&rnode)?],
        })
    };
    let started = Instant::now();
    // The rules per NSG in place on both dataplanes (none: no NSG).
    let mut nsg_applied: Option<u32> = None;
    // Every round trip of the valid pod-to-pod TCP_RR runs, per dataplane (for the plot).
    let mut rr_latencies: [Vec<f64>; 2] = Default::default();
    let total_runs = reps as usize * sel.schedule().len() * DATAPLANES.len();
    let mut run_no = 0;
    for rep in 0..reps {
        let order = if rep % 2 == 0 {
            [Dp::Vnetd, Dp::Reference]
        } else {
            [Dp::Reference, Dp::Vnetd]
        };
        for (scenario, kind) in sel.schedule() {
            if scenario.nsg_rules() != nsg_applied {
                let t = Instant::now();
                nsg::apply(&agent, &base_spec, &rnode, scenario.nsg_rules())
                    .context("changing the NSG")?;
                nsg_applied = scenario.nsg_rules();
                println!(
                    "   NSG of {} rule(s) on both dataplanes (applied in {:.2} s)",
                    nsg_applied.map_or("no".into(), |n| n.to_string()),
                    t.elapsed().as_secs_f64()
                );
            }
            for dp in order {
                if results.unavailable(scenario, dp).is_some() {
                    continue;
                }
                let pair = pairs(scenario, dp);
                let before = evidence(scenario, dp)?;
                let run = measure(kind, pair, durations).with_context(|| {
                    format!(
                        "{} {} run {} for {}",
                        scenario.key(),
                        kind.key(),
                        rep + 1,
                        dp.key()
                    )
                })?;
                let after = evidence(scenario, dp)?;
                let valid = before.iter().zip(&after).all(|(b, a)| a > b);
                if valid && scenario == Scenario::PodToPod && kind == Kind::Rr {
                    rr_latencies[dp as usize].extend_from_slice(&run.latencies_us);
                }
                run_no += 1;
                print!(
                    "   [{run_no}/{total_runs} {:>4.0} s] rep {} {:<9} {:<15} {:<7}",
                    started.elapsed().as_secs_f64(),
                    rep + 1,
                    dp.key(),
                    match scenario.nsg_rules() {
                        Some(n) => format!("nsg {n} rules"),
                        None => scenario.key().to_string(),
                    },
                    kind.key()
                );
                for (quantity, value) in &run.values {
                    let metric = Metric {
                        scenario,
                        quantity: *quantity,
                    };
                    if valid {
                        results.add(dp, metric, *value);
                    }
                    print!("  {} {}", quantity.key(), fmt_num(*value));
                }
                if !valid {
                    results.invalid += 1;
                    let still: Vec<_> = scenario
                        .evidence(dp)
                        .iter()
                        .zip(before.iter().zip(&after))
                        .filter(|(_, (b, a))| a <= b)
                        .map(|(name, _)| *name)
                        .collect();
                    print!("  INVALID: {} did not move", still.join(", "));
                }
                if let Some(r) = run.details.get("sender_retrans_segs") {
                    print!(
                        "  (retransmitted segments {r}, of which reported duplicate {})",
                        run.details["sender_dsack_recv_segs"]
                    );
                }
                if let Some(f) = run.details.get("failed")
                    && f.as_u64() != Some(0)
                {
                    print!("  (FAILED connections {f}: {})", run.details["errors"]);
                }
                println!();
                results.runs.push(json!({
                    "rep": rep + 1,
                    "dataplane": dp.key(),
                    "scenario": scenario.key(),
                    "nsg_rules": scenario.nsg_rules(),
                    "kind": kind.key(),
                    "values": run.values.iter()
                        .map(|(q, v)| (Metric { scenario, quantity: *q }.key(), json!(v)))
                        .collect::<serde_json::Map<_, _>>(),
                    "details": run.details,
                    "evidence": scenario.evidence(dp).iter().zip(before.iter().zip(&after))
                        .map(|(name, (b, a))| json!({
                            "counter": name, "before": b, "after": a,
                            "packets": a.saturating_sub(*b),
                        }))
                        .collect::<Vec<_>>(),
                    "valid": valid,
                }));
            }
        }
    }
    if nsg_applied.is_some() {
        nsg::apply(&agent, &base_spec, &rnode, None).context("removing the NSG")?;
    }

    let mut retrans_runs = Vec::new();
    // A diagnosis more than a figure: one repetition in a run of every scenario, all of them
    // when it is asked for by name.
    let retrans_reps = if sel.0.is_empty() { 1 } else { reps };
    if sel.has("retrans") {
        step(&format!(
            "retransmissions: TCP bulk pod to pod, {} s per run, the iperf3 client (sender) and \
             server placed {}; {retrans_reps} repetition(s)",
            durations.bulk,
            retrans::PLACEMENTS
                .iter()
                .map(|p| format!(
                    "{} ({})",
                    p.key,
                    match (p.client_cpu, p.server_cpu) {
                        (Some(c), Some(s)) => format!(
                            "CPU {c} -> CPU {s}{}{}",
                            if p.host_gro {
                                ", GRO on the host-side veths"
                            } else {
                                ""
                            },
                            if p.rps {
                                ", RPS on the pods' veths"
                            } else {
                                ""
                            }
                        ),
                        _ => "by the scheduler".into(),
                    }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let hosts = [
            retrans::HostSide {
                node: node.ns.clone(),
                veths: [
                    pktrate::host_veth(&node, &va)?,
                    pktrate::host_veth(&node, &vb)?,
                ],
            },
            retrans::HostSide {
                node: rnode.ns.clone(),
                veths: [
                    pktrate::host_veth(&rnode, &ra)?,
                    pktrate::host_veth(&rnode, &rb)?,
                ],
            },
        ];
        for rep in 0..retrans_reps {
            for placement in retrans::PLACEMENTS {
                for dp in DATAPLANES {
                    let before = evidence(Scenario::PodToPod, dp)?;
                    let mut run = retrans::run(
                        &pod_to_pod[dp as usize],
                        &hosts[dp as usize],
                        placement,
                        durations.bulk,
                    )
                    .with_context(|| {
                        format!("retrans {} run {} for {}", placement.key, rep + 1, dp.key())
                    })?;
                    let valid = evidence(Scenario::PodToPod, dp)?
                        .iter()
                        .zip(&before)
                        .all(|(a, b)| a > b);
                    println!(
                        "   rep {} {:<9} {:<8} {:>6.2} Gbit/s  retransmitted {} (DSACK {}, \
                         per 1M segments {:.0})  receiver out-of-order {}  softnet per CPU {}{}",
                        rep + 1,
                        dp.key(),
                        placement.key,
                        run["gbps"].as_f64().unwrap_or(f64::NAN),
                        run["sender"]["RetransSegs"],
                        run["sender"]["TCPDSACKRecvSegs"],
                        run["retransmitted_per_million_segments"]
                            .as_f64()
                            .unwrap_or(f64::NAN),
                        run["receiver"]["TCPOFOQueue"],
                        run["softnet_processed_per_cpu"],
                        if valid {
                            ""
                        } else {
                            "  INVALID: the path's counter did not move"
                        },
                    );
                    run["rep"] = json!(rep + 1);
                    run["dataplane"] = json!(dp.key());
                    run["valid"] = json!(valid);
                    if !valid {
                        results.invalid += 1;
                    }
                    retrans_runs.push(run);
                }
            }
        }
    }
    let valid_retrans: Vec<Value> = retrans_runs
        .iter()
        .filter(|r| r["valid"] == true)
        .cloned()
        .collect();
    if !valid_retrans.is_empty() {
        println!("{}", retrans::markdown(&valid_retrans));
    }

    let mut rate_samples: pktrate::Samples = Default::default();
    let mut rate_runs = Vec::new();
    let mut bare_pods = Vec::new();
    let mut flow_setup = None;
    let mut flow_setup_md = None;
    if sel.has("packet_rate") || sel.has("flow_setup") {
        let secs = if opts.quick { 2.0 } else { 5.0 };
        let ba = lab.add_veth_pod(&rnode, "bare-a", Ipv4Addr::new(10, 0, 3, 200))?;
        let bb = lab.add_veth_pod(&rnode, "bare-b", Ipv4Addr::new(10, 0, 3, 201))?;
        let paths = [
            pktrate::Path {
                plane: "vnetd",
                tx: va.ns.ns.clone(),
                rx: vb.ns.ns.clone(),
                node: node.ns.clone(),
                src_ip: va.ip,
                dst_ip: vb.ip,
                dst_mac: pktrate::neighbour_mac(&va, POD_GATEWAY, vb.ip)?,
                tx_host_veth: pktrate::host_veth(&node, &va)?,
                bare_to: None,
            },
            pktrate::Path {
                plane: "reference",
                tx: ra.clone(),
                rx: rb.clone(),
                node: rnode.ns.clone(),
                src_ip: ra_ip,
                dst_ip: rb_ip,
                dst_mac: pktrate::neighbour_mac(&ra, rb_ip, rb_ip)?,
                tx_host_veth: pktrate::host_veth(&rnode, &ra)?,
                bare_to: None,
            },
            pktrate::Path {
                plane: "bare",
                tx: ba.pod.ns.clone(),
                rx: bb.pod.ns.clone(),
                node: rnode.ns.clone(),
                src_ip: ba.ip,
                dst_ip: bb.ip,
                dst_mac: bb.pod_mac.clone(),
                tx_host_veth: ba.host_ifname.clone(),
                bare_to: Some(bb.host_ifname.clone()),
            },
        ];
        let phases = if sel.has("packet_rate") {
            step(&format!(
                "packet rate: {} B UDP frames, {} source ports, XDP live-frames generator pinned \
                 to CPU {} on the sending pod's eth0, counted and dropped at the receiving pod's \
                 eth0 (TC); {reps} repetition(s) of {secs} s per dataplane, the order rotating",
                pktrate::FRAME_LEN,
                pktrate::SOURCE_PORTS,
                pktrate::CPU,
            ));
            &pktrate::Series::PHASES[..]
        } else {
            &[]
        };
        for &(nsg_rules, series) in phases {
            if nsg_rules.is_some() {
                let t = Instant::now();
                nsg::apply(&agent, &base_spec, &rnode, nsg_rules).context("adding the NSG")?;
                println!(
                    "   NSG of {} rules on the receiving pod's subnet, both dataplanes (applied in \
                     {:.2} s)",
                    pktrate::NSG_RULES,
                    t.elapsed().as_secs_f64()
                );
            }
            for rep in 0..reps as usize {
                for k in 0..series.len() {
                    let s = series[(rep + k) % series.len()];
                    let path = &paths[s.path()];
                    let evidence = || -> Result<u64> {
                        match s.path() {
                            0 => agent.traffic("pod_to_pod"),
                            1 => forward_to_cni_packets(&rnode),
                            _ => Ok(0),
                        }
                    };
                    let before = evidence()?;
                    // A generator that cannot run here (a kernel without live frames, say)
                    // leaves this scenario out of the report, not the others.
                    let mut run = match pktrate::run(path, secs, &pktrate::UDP_FLOWS) {
                        Ok(run) => run,
                        Err(e) => {
                            let why = format!("{e:#}");
                            println!("   rep {} {:<13} NOT MEASURED: {why}", rep + 1, s.key());
                            rate_runs.push(json!({
                                "rep": rep + 1, "dataplane": path.plane, "series": s.key(),
                                "error": why,
                            }));
                            continue;
                        }
                    };
                    let after = evidence()?;
                    let mpps = run["received_mpps"].as_f64().unwrap_or(f64::NAN);
                    // The bare forwarder has no counter of its own: the drop counter is its
                    // proof.
                    let valid = s == pktrate::Series::Bare || after > before;
                    print!(
                        "   rep {} {:<13} {:.3} Mpps received ({:.3} Mpps sent)",
                        rep + 1,
                        s.key(),
                        mpps,
                        run["sent_mpps"].as_f64().unwrap_or(f64::NAN)
                    );
                    if valid {
                        rate_samples[s as usize].push(mpps);
                    } else {
                        results.invalid += 1;
                        print!("  INVALID: the dataplane's counter did not move");
                    }
                    println!();
                    run["rep"] = json!(rep + 1);
                    run["dataplane"] = json!(path.plane);
                    run["series"] = json!(s.key());
                    run["nsg_rules"] = json!(nsg_rules);
                    run["evidence"] = json!({ "before": before, "after": after });
                    run["valid"] = json!(valid);
                    rate_runs.push(run);
                }
            }
            if nsg_rules.is_some() {
                nsg::apply(&agent, &base_spec, &rnode, None).context("removing the NSG")?;
            }
        }
        if sel.has("flow_setup") {
            step(&format!(
                "new flows per second: TCP SYNs of new tuples, the packet-rate generator on CPU \
                 {}, vnetd and the reference with an NSG of {:?} rules; {reps} repetition(s) of \
                 {secs} s per dataplane",
                pktrate::CPU,
                flowsetup::RULES
            ));
            // The same pods' SYNs to the internet host, through SNAT (the reference:
            // MASQUERADE).
            let internet = |p: &pktrate::Path| -> Result<pktrate::Path> {
                Ok(pktrate::Path {
                    plane: p.plane,
                    tx: p.tx.clone(),
                    rx: lab.internet().clone(),
                    node: p.node.clone(),
                    src_ip: p.src_ip,
                    dst_ip: INTERNET_HOST_IP,
                    dst_mac: pktrate::gateway_mac(&p.tx, INTERNET_HOST_IP)?,
                    tx_host_veth: p.tx_host_veth.clone(),
                    bare_to: None,
                })
            };
            let to_internet = [internet(&paths[0])?, internet(&paths[1])?];
            let (samples, runs) = flowsetup::measure(
                &paths[..2],
                &to_internet,
                &agent,
                &base_spec,
                &rnode,
                reps,
                secs,
                &mut results.invalid,
            )
            .context("measuring new flows per second")?;
            flow_setup = Some(samples.summary(runs));
            println!("{}", samples.markdown());
            flow_setup_md = Some(samples.markdown());
        }
        bare_pods.push(ba);
        bare_pods.push(bb);
    }
    let packet_rate = (!rate_runs.is_empty()).then(|| pktrate::summary(&rate_samples, &rate_runs));
    let rate_paired = pktrate::paired(&rate_runs);
    let measuring = started.elapsed();

    let vnetd_packets = evidence(Scenario::PodToPod, Dp::Vnetd)?[0];
    let ref_fw_packets = evidence(Scenario::PodToPod, Dp::Reference)?[0];
    let vnetd_internet = evidence(Scenario::PodToInternet, Dp::Vnetd)?;
    let ref_masquerade_packets = evidence(Scenario::PodToInternet, Dp::Reference)?[0];
    println!(
        "\n   packets seen: vnetd pod_to_pod {vnetd_packets}, pod_to_internet {}, \
         internet_to_pod {}; reference node's FORWARD -> CNI-FORWARD rule {ref_fw_packets}, \
         MASQUERADE rules {ref_masquerade_packets}; {} invalid run(s)",
        vnetd_internet[0], vnetd_internet[1], results.invalid
    );

    let env = environment();
    let ref_config = json!({
        "plugins": ref_plugins_conf(&rnode),
        "package": package_version("containernetworking-plugins"),
        "bridge_nf_call_iptables": nf_call,
        "iptables": first_line(Command::new("iptables").arg("--version")),
        "iptables_rules_in_node": ref_rules,
        "forward_to_cni_forward_packets": ref_fw_packets,
        "masquerade_packets": ref_masquerade_packets,
    });
    let notes = notes(&env, &results);
    print_table(&results, &env, &nf_call, reps, &notes);
    if packet_rate.is_some() {
        report::print_packet_rate(&rate_samples, &rate_paired);
    }
    report::print_progrun_table(&progrun_figures);
    let progrun_ns = progrun.as_ref().ok().and_then(|v| v["ns_per_run"].as_f64());
    let progrun_snat = progrun.as_ref().ok().and_then(SnatProgrun::of);
    if let Some(ns) = progrun_ns {
        println!(
            "   BPF_PROG_RUN pod_ingress (vnetd only): {} ns per run",
            fmt_num(ns)
        );
    }
    if let Some(snat) = &progrun_snat {
        println!(
            "   BPF_PROG_RUN pod_ingress, SNAT of an established flow (vnetd only): {} ns per \
             run, one run per call (pod to pod the same way: {} ns)",
            fmt_num(snat.ns),
            fmt_num(snat.pod_to_pod_ns)
        );
    }
    let mut report = json!({
        "environment": env,
        "quick": opts.quick,
        "repetitions": reps,
        "durations_s": {
            "tcp_bulk": durations.bulk, "tcp_rr": durations.rr.as_secs_f64(), "udp": durations.udp,
            "connect": durations.connect.as_secs_f64(),
        },
        "connect_clients": durations.connect_clients,
        "measuring_s": measuring.as_secs_f64(),
        "scenario": "pod to pod on one node, 2 pods per node namespace; pod to the internet \
                     host through the node's address (the lab's fabric and edge router in \
                     between); pod to pod with an NSG of N rules on the server's subnet (the \
                     reference: the same rules in an iptables chain jumped to from FORWARD); \
                     one run at a time, dataplanes alternated per run",
        "scenarios": sel.0,
        "internet_server": INTERNET_HOST_IP.to_string(),
        "internet_source_seen": internet_sources,
        "unavailable": results.unavailable.iter()
            .map(|(s, dp, why)| json!({ "scenario": s.key(), "dataplane": dp.key(), "why": why }))
            .collect::<Vec<_>>(),
        "vnetd": {
            "node": "node-1", "node_ip": node.ip.to_string(),
            "client": va.ip.to_string(), "server": vb.ip.to_string(),
            "pod_to_pod_packets": vnetd_packets,
            "pod_to_internet_packets": vnetd_internet[0],
            "internet_to_pod_packets": vnetd_internet[1],
        },
        "reference": {
            "node": "ref", "node_ip": rnode.ip.to_string(),
            "client": ra_ip.to_string(), "server": rb_ip.to_string(),
            "config": ref_config,
        },
        "metrics": METRICS.iter().map(|&m| summary_json(&results, m)).collect::<Vec<_>>(),
        "runs": results.runs,
        "progrun": match &progrun {
            Ok(v) => v.clone(),
            Err(e) => json!({ "error": format!("{e:#}") }),
        },
        "progrun_repetitions": progrun_reps,
        "progrun_figures": progrun_figures.iter()
            .map(|f| (f.key.clone(), report::summary_of(&f.samples)))
            .collect::<serde_json::Map<_, _>>(),
        "packet_rate": packet_rate,
        "flow_setup": flow_setup,
        "retransmissions": (!retrans_runs.is_empty()).then(|| json!({
            "what": "TCP bulk pod to pod (iperf3, one stream) with the sender (client) and \
                     receiver (server) unpinned, on CPUs 0 and 1, and both on CPU 0; counter \
                     deltas of both ends and packets processed per CPU",
            "runs": retrans_runs,
        })),
        "invalid_runs": results.invalid,
        "notes": notes,
    });
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let plots = draw_plots(&out_path, &results, &progrun_figures, &rr_latencies);
    report["plots"] = json!(
        plots
            .iter()
            .map(|(p, what)| json!({ "file": p.file_name().map(|f| f.to_string_lossy()), "what": what }))
            .collect::<Vec<_>>()
    );
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out_path.display()))?;
    let md_path = out_path.with_extension("md");
    std::fs::write(
        &md_path,
        markdown(
            &results,
            &env,
            reps,
            opts.quick,
            report::ProgrunRows {
                ns: progrun_ns,
                snat: progrun_snat.as_ref(),
                figures: &progrun_figures,
            },
            packet_rate.as_ref().map(|_| (&rate_samples, &rate_paired)),
            &out_path,
        ),
    )
    .with_context(|| format!("writing {}", md_path.display()))?;
    if let Some(table) = &flow_setup_md {
        let mut md = std::fs::read_to_string(&md_path)?;
        md += table;
        std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    }
    if !valid_retrans.is_empty() {
        let mut md = std::fs::read_to_string(&md_path)?;
        md += &retrans::markdown(&valid_retrans);
        std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    }
    if !plots.is_empty() {
        let mut md = std::fs::read_to_string(&md_path)?;
        md.push('\n');
        for (p, what) in &plots {
            if let Some(f) = p.file_name() {
                md += &format!("![{what}]({})\n", f.to_string_lossy());
            }
        }
        std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    }
    println!(
        "\n   report: {} (table for the README: {}){}",
        out_path.display(),
        md_path.display(),
        plots
            .iter()
            .map(|(p, _)| format!("\n   plot: {}", p.display()))
            .collect::<String>()
    );

    step("tearing down");
    drop((va, vb, nsg_pods, bare_pods, agent));
    lab.teardown()?;
    println!("   done: the lab's namespaces, processes and iptables rules are gone");

    if !sel.has("control_plane") {
        return Ok(());
    }
    report["control_plane"] = match control_plane(&opts) {
        Ok(v) => v,
        Err(e) => {
            println!("   failed: {e:#}");
            json!({ "error": format!("{e:#}") })
        }
    };
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out_path.display()))?;
    if report["control_plane"]["pods"].is_number() {
        let mut md = std::fs::read_to_string(&md_path)?;
        md += &control_plane_markdown(&report["control_plane"]);
        std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    }
    println!(
        "\n   report (with the control plane): {} and {}",
        out_path.display(),
        md_path.display()
    );
    Ok(())
}

/// The SVG plots beside the report at `out` (`<stem>-<name>.svg`) for what this run measured:
/// new connections per second against the NSG's rule count, the BPF_PROG_RUN first-packet
/// cost against it, the pod-to-pod TCP_RR latency distribution. Returns (file, what); a plot
/// that fails is reported and left out.
fn draw_plots(
    out: &Path,
    results: &Results,
    progrun: &[ProgrunFigure],
    rr: &[Vec<f64>; 2],
) -> Vec<(PathBuf, String)> {
    let stem = out
        .file_stem()
        .map_or("report".into(), |s| s.to_string_lossy().into_owned());
    let file = |name: &str| out.with_file_name(format!("{stem}-{name}.svg"));
    let mut done = Vec::new();
    let mut keep = |path: PathBuf, what: &str, r: Result<()>| match r {
        Ok(()) => done.push((path, what.to_string())),
        Err(e) => println!("   plot {} not drawn: {e:#}", path.display()),
    };
    let nsg_rate = |dp: Dp| plots::Curve {
        label: match dp {
            Dp::Vnetd => "vnetd",
            Dp::Reference => "bridge + iptables (rules in FORWARD)",
        },
        points: nsg::RULE_COUNTS
            .iter()
            .map(|&n| {
                let m = Metric {
                    scenario: Scenario::NsgPodToPod(n),
                    quantity: Quantity::ConnRate,
                };
                (f64::from(n), results.get(dp, m))
            })
            .collect(),
    };
    let curves = DATAPLANES.map(nsg_rate);
    if curves
        .iter()
        .any(|c| c.points.iter().any(|(_, v)| !v.is_empty()))
    {
        let (path, what) = (
            file("nsg-connections"),
            "New TCP connections per second pod to pod against rules per NSG",
        );
        let r = plots::against_rules(&path, what, "connections/s", &curves);
        keep(path, what, r);
    }
    let first_packet: Vec<(f64, &[f64])> = nsg::RULE_COUNTS
        .iter()
        .filter_map(|&n| {
            let key = format!("nsg_first_packet_ns_rules_{n}");
            let f = progrun.iter().find(|f| f.key == key)?;
            Some((f64::from(n), &f.samples[..]))
        })
        .collect();
    if !first_packet.is_empty() {
        let (path, what) = (
            file("nsg-first-packet"),
            "vnetd pod_ingress, NSG first packet (BPF_PROG_RUN) against rules per NSG",
        );
        let r = plots::against_rules(
            &path,
            what,
            "ns per packet",
            &[plots::Curve {
                label: "vnetd",
                points: first_packet,
            }],
        );
        keep(path, what, r);
    }
    if rr.iter().any(|v| !v.is_empty()) {
        let mut sorted = rr.clone();
        for v in &mut sorted {
            v.sort_by(f64::total_cmp);
        }
        let (path, what) = (
            file("tcp-rr-latency"),
            "TCP_RR round trips pod to pod, 1 byte each way: latency distribution",
        );
        let r = plots::latency_distribution(
            &path,
            what,
            &[("vnetd", &sorted[0]), ("bridge + iptables", &sorted[1])],
        );
        keep(path, what, r);
    }
    done
}

/// The report of a run that needs no lab (only BPF_PROG_RUN and the control plane).
fn finish_without_lab(
    out_path: &Path,
    opts: &Options,
    sel: &Selection,
    progrun: &Result<Value>,
    progrun_reps: &[Value],
    progrun_figures: &[ProgrunFigure],
) -> Result<()> {
    report::print_progrun_table(progrun_figures);
    let mut report = json!({
        "environment": environment(),
        "quick": opts.quick,
        "scenarios": sel.0,
        "progrun": match progrun {
            Ok(v) => v.clone(),
            Err(e) => json!({ "error": format!("{e:#}") }),
        },
        "progrun_repetitions": progrun_reps,
        "progrun_figures": progrun_figures.iter()
            .map(|f| (f.key.clone(), report::summary_of(&f.samples)))
            .collect::<serde_json::Map<_, _>>(),
    });
    if sel.has("control_plane") {
        vnetd_lab::ensure_bpffs()?;
        vnetd_lab::cleanup_on_signal()?;
        report["control_plane"] = control_plane(opts)?;
    }
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out_path.display()))?;
    println!("\n   report: {}", out_path.display());
    if report["control_plane"]["pods"].is_number() {
        let md_path = out_path.with_extension("md");
        std::fs::write(&md_path, control_plane_markdown(&report["control_plane"]))
            .with_context(|| format!("writing {}", md_path.display()))?;
        println!("   control plane's tables: {}", md_path.display());
    }
    Ok(())
}

/// One repetition's BPF_PROG_RUN figures, as they come.
fn print_progrun(rep: u32, v: &Value) {
    println!(
        "   rep {rep}: pod_ingress {} ns per run (kernel-timed; wall clock incl. syscalls {} ns)",
        fmt_num(v["ns_per_run"].as_f64().unwrap_or(f64::NAN)),
        fmt_num(v["wall_ns_per_run"].as_f64().unwrap_or(f64::NAN)),
    );
    if let Some(snat) = SnatProgrun::of(v) {
        println!(
            "   rep {rep}: SNAT, a UDP packet of an established flow to the internet: {} ns per \
             run, one run per call (pod to pod measured the same way: {} ns)",
            fmt_num(snat.ns),
            fmt_num(snat.pod_to_pod_ns),
        );
    }
    let nsg: Vec<String> = NSG_RULE_COUNTS
        .iter()
        .filter_map(|&n| {
            let ns = v[nsg_first_packet_key(n)]["ns_per_run"].as_f64()?;
            Some(format!("{n}: {}", fmt_num(ns)))
        })
        .collect();
    if !nsg.is_empty() {
        println!(
            "   rep {rep}: NSG first packet, ns per run by rules per NSG: {} (1000 / 1: {})",
            nsg.join(", "),
            v["nsg_first_packet_ratio_1000_over_1"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.2}")),
        );
    }
    let ring = |full| v[flow_log_ring_key(full)]["ns_per_run"].as_f64();
    if let (Some(drained), Some(full)) = (ring(false), ring(true)) {
        println!(
            "   rep {rep}: NSG-denied first packet (a flow-log record every run): ring drained {} \
             ns per run, ring full (no reader, counted lost) {} ns",
            fmt_num(drained),
            fmt_num(full),
        );
    }
}

/// A vnetd-only figure of the BPF_PROG_RUN benchmark, over the repetitions: a row of the
/// report and a key of the JSON.
pub(crate) struct ProgrunFigure {
    pub(crate) key: String,
    pub(crate) label: String,
    pub(crate) samples: Vec<f64>,
}

impl ProgrunFigure {
    /// The NSG figures (issue 9): the first packet's cost at each rule count, the ratio of
    /// 1000 rules to one, and an established flow's cost when the benchmark measures it.
    fn all(reps: &[Value]) -> Vec<ProgrunFigure> {
        let samples = |f: &dyn Fn(&Value) -> Option<f64>| reps.iter().filter_map(f).collect();
        let mut figures = vec![ProgrunFigure {
            key: "route_lookup_ns".into(),
            label: "BPF_PROG_RUN `pod_ingress`, pod to pod with a route lookup per packet (a \
                    table with a route inside the VNet; without one, as above, the destination \
                    pod is found directly), ns per run"
                .into(),
            samples: samples(&|v| v["pod_ingress_route_lookup"]["ns_per_run"].as_f64()),
        }];
        figures.push(ProgrunFigure {
            key: "nsg_none_ns".into(),
            label: "BPF_PROG_RUN `pod_ingress`, the NSG benchmark's frame without an NSG, ns \
                    per run (the baseline)"
                .into(),
            samples: samples(&|v| v[nsg_first_packet_key(0)]["ns_per_run"].as_f64()),
        });
        figures.extend(NSG_RULE_COUNTS.iter().map(|&n| ProgrunFigure {
            key: format!("nsg_first_packet_ns_rules_{n}"),
            label: format!(
                "BPF_PROG_RUN `pod_ingress`, NSG first packet, {n} rule(s) per NSG, ns per run"
            ),
            samples: samples(&|v| v[nsg_first_packet_key(n)]["ns_per_run"].as_f64()),
        }));
        figures.push(ProgrunFigure {
            key: "nsg_first_packet_ratio_1000_over_1".into(),
            label: "NSG first packet, 1000 rules / 1 rule (target at most 1.5)".into(),
            samples: samples(&|v| v["nsg_first_packet_ratio_1000_over_1"].as_f64()),
        });
        // The lead adds this line to progrun_bench; with or without a rule count.
        for n in std::iter::once(None).chain(NSG_RULE_COUNTS.map(Some)) {
            let key = nsg_established_key(n);
            let found: Vec<f64> = samples(&|v| v[&key]["ns_per_run"].as_f64());
            if !found.is_empty() {
                figures.push(ProgrunFigure {
                    key: match n {
                        Some(n) => format!("nsg_established_ns_rules_{n}"),
                        None => "nsg_established_ns".into(),
                    },
                    label: match n {
                        Some(n) => format!(
                            "BPF_PROG_RUN `pod_ingress`, NSG established flow, {n} rule(s) per \
                             NSG, ns per run"
                        ),
                        None => {
                            "BPF_PROG_RUN `pod_ingress`, NSG established flow, ns per run".into()
                        }
                    },
                    samples: found,
                });
            }
        }
        // Issue 10: a reader that is away never slows the dataplane.
        for (full, key, state) in [
            (
                false,
                "flow_log_ring_drained_ns",
                "ring drained by a reader",
            ),
            (
                true,
                "flow_log_ring_full_ns",
                "ring full (no reader: the record is counted lost)",
            ),
        ] {
            figures.push(ProgrunFigure {
                key: key.into(),
                label: format!(
                    "BPF_PROG_RUN `pod_ingress`, NSG-denied first packet (a flow-log record per \
                     run), {state}, ns per run"
                ),
                samples: samples(&|v| v[flow_log_ring_key(full)]["ns_per_run"].as_f64()),
            });
        }
        figures.retain(|f| !f.samples.is_empty());
        figures
    }
}

/// The BPF_PROG_RUN figure of the SNAT path: a packet of an established flow, one run per
/// call (a translated frame would not pass the next run's anti-spoofing), beside the pod-to-pod
/// frame measured the same way.
struct SnatProgrun {
    ns: f64,
    pod_to_pod_ns: f64,
}

impl SnatProgrun {
    fn of(progrun: &Value) -> Option<SnatProgrun> {
        Some(SnatProgrun {
            ns: progrun["pod_ingress_snat_established"]["ns_per_run"].as_f64()?,
            pod_to_pod_ns: progrun["pod_ingress_single"]["ns_per_run"].as_f64()?,
        })
    }
}

fn step(what: &str) {
    println!("\n== {what}");
}

/// Fails early, pointing at `cargo xtask setup`, if a tool the bench runs is missing.
fn check_tools() -> Result<()> {
    for tool in [
        "iperf3",
        "iptables",
        "iptables-save",
        "iptables-restore",
        "nsenter",
        "ip",
        "ethtool",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        ensure!(found, "{tool} is not installed: run `cargo xtask setup`");
    }
    for plugin in ["bridge", "host-local", "firewall"] {
        let p = Path::new(CNI_DIR).join(plugin);
        ensure!(
            p.is_file(),
            "the reference CNI plugin {} is missing (package containernetworking-plugins): \
             run `cargo xtask setup`",
            p.display()
        );
    }
    for b in ["vnetd", "vnetd-cni", "vnetd-pktgen"] {
        ensure!(
            bin(b).is_file(),
            "{} is not built: run `cargo xtask build`",
            bin(b).display()
        );
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// A pod namespace on the reference node, attached by running the conflist's chain as a
/// runtime does. Returns the namespace and the pod's address.
/// The far ends of the cross-node scenario, kept alive for the run.
struct FarPods {
    _node: Node,
    _agent: Agent,
    vnetd: vnetd_lab::vnetd::Pod,
    _reference_node: Node,
    reference: Ns,
    reference_ip: Ipv4Addr,
}

/// vnetd's node-2 (its agent, a pod in `apps`) and the reference's node `ref-2` (a bridge pod
/// in [`cni::REF_SUBNET_2`]), each node with a static route to the other reference node's pod
/// subnet and no masquerade inside the reference's pod range (kubenet's layout).
fn cross_node_pods(lab: &Lab, rnode: &Node) -> Result<FarPods> {
    let node = lab.add_node("node-2", "10.0.0.5/24".parse()?)?;
    let agent = Agent::start(&node, &lab_spec()).context("starting the vnetd agent on node-2")?;
    let vnetd = add_pod(lab, &node, "pod-far", Some("apps"), "")?;
    let rnode2 = lab.add_node("ref-2", "10.0.0.10/24".parse()?)?;
    let (reference, reference_ip) = ref_pod(lab, &rnode2, "ref-far")?;
    for (node, to, via) in [
        (&rnode.ns, cni::REF_SUBNET_2, rnode2.ip),
        (&rnode2.ns, cni::REF_SUBNET, rnode.ip),
    ] {
        node.run_ok(["ip", "route", "replace", to, "via", &via.to_string()])?;
        node.run_ok([
            "iptables",
            "-w",
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "-s",
            cni::REF_CLUSTER_RANGE,
            "-d",
            cni::REF_CLUSTER_RANGE,
            "-j",
            "RETURN",
        ])?;
    }
    Ok(FarPods {
        _node: node,
        _agent: agent,
        vnetd,
        _reference_node: rnode2,
        reference,
        reference_ip,
    })
}

fn ref_pod(lab: &Lab, node: &Node, name: &str) -> Result<(Ns, Ipv4Addr)> {
    let pod = lab.add_pod_netns(name)?;
    let result = cni::ref_chain(node, &pod, name, "ADD", None)?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in the reference CNI result {result}"))?;
    Ok((pod.ns, ip))
}

#[cfg(test)]
mod tests {
    use super::{ProgrunFigure, measure};

    /// The report's BPF_PROG_RUN rows: the baseline, each rule count, the ratio, and the
    /// established flow once the benchmark prints it; medians over the repetitions.
    #[test]
    fn progrun_figures_by_rule_count() {
        let one = measure::parse_progrun(measure::tests::STDOUT).unwrap();
        let established = measure::parse_progrun(&format!(
            "{}vnetd-bench program=pod_ingress_nsg_established runs=1000 ns_per_run=95.5\n",
            measure::tests::STDOUT
        ))
        .unwrap();
        let figures = ProgrunFigure::all(&[one.clone(), established]);
        let keys: Vec<&str> = figures.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "nsg_none_ns",
                "nsg_first_packet_ns_rules_1",
                "nsg_first_packet_ns_rules_10",
                "nsg_first_packet_ns_rules_100",
                "nsg_first_packet_ns_rules_1000",
                "nsg_first_packet_ratio_1000_over_1",
                "nsg_established_ns",
            ]
        );
        assert_eq!(figures[4].samples, [130.0, 130.0]);
        assert_eq!(figures[6].samples, [95.5]);
        assert!(ProgrunFigure::all(&[]).is_empty());
    }

    /// The flow-log ring's rows follow the NSG rows when the benchmark prints them.
    #[test]
    fn progrun_figures_of_the_flow_log_ring() {
        let v = measure::parse_progrun(&format!(
            "{}vnetd-bench program=pod_ingress_nsg_denied_ring_drained runs=1000 ns_per_run=120.5\n\
             vnetd-bench program=pod_ingress_nsg_denied_ring_full runs=1000 ns_per_run=101.5 \
             lost=1000\n",
            measure::tests::STDOUT
        ))
        .unwrap();
        let figures = ProgrunFigure::all(&[v]);
        let ring: Vec<(&str, &[f64])> = figures
            .iter()
            .filter(|f| f.key.starts_with("flow_log_ring"))
            .map(|f| (f.key.as_str(), &f.samples[..]))
            .collect();
        assert_eq!(
            ring,
            [
                ("flow_log_ring_drained_ns", &[120.5][..]),
                ("flow_log_ring_full_ns", &[101.5][..])
            ]
        );
    }
}
