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
//! This module holds the scenarios, the selection, the schedule's types and [`run`], the
//! pipeline: [`progrun`] first, then the lab every scenario shares ([`testbed`]), the paired
//! runs of the schedule ([`schedule`]), [`retrans`], [`pktrate`] with [`flowsetup`] on its
//! paths, the report ([`output`]), the teardown, and the control plane ([`control_plane`]).
//! [`measure`] takes the measurements (iperf3, TCP_RR, new connections per second, the
//! counters that prove the path, BPF_PROG_RUN), [`internet`] sets up and checks the
//! pod-to-internet path, [`report`] turns them into the table, the JSON and the README's
//! markdown, and [`cni`] and [`apply`] are the control plane's share (CNI ADD/DEL latency; the
//! agent's start, reload and one-rule change with 250 pods and 1000 rules).

mod apply;
mod cni;
mod control_plane;
mod flowsetup;
mod internet;
mod measure;
mod nsg;
mod output;
mod pktrate;
mod plots;
mod progrun;
mod report;
mod retrans;
mod schedule;
mod testbed;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use cni::CNI_DIR;
use control_plane::{control_plane, control_plane_markdown};
use progrun::Progrun;
use report::environment;
use serde_json::{Value, json};
use testbed::Testbed;
use vnetd_lab::{Ns, vnetd::bin};

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
    let progrun = Progrun::measure(&sel, reps, opts.quick);
    if !sel.needs_lab() {
        return finish_without_lab(&out_path, &opts, &sel, &progrun);
    }

    let mut results = Results::default();
    let tb = Testbed::set_up(sel, reps, durations, opts.quick, &mut results)?;

    let started = Instant::now();
    let rr_latencies = schedule::run(&tb, &mut results, started)?;
    let retrans_runs = if tb.sel.has("retrans") {
        retrans::measure(&tb, &mut results)?
    } else {
        Vec::new()
    };
    let rates = if tb.sel.has("packet_rate") || tb.sel.has("flow_setup") {
        pktrate::measure(&tb, &mut results)?
    } else {
        pktrate::Measured::default()
    };
    let measuring = started.elapsed();

    let (mut report, md_path) = output::write(
        &tb,
        &results,
        output::Measurements {
            measuring,
            progrun: &progrun,
            rr_latencies: &rr_latencies,
            retrans_runs: &retrans_runs,
            rates: &rates,
        },
        &out_path,
    )?;

    step("tearing down");
    drop((tb.va, tb.vb, tb.nsg_pods, rates.bare_pods, tb.agent));
    tb.lab.teardown()?;
    println!("   done: the lab's namespaces, processes and iptables rules are gone");

    if !tb.sel.has("control_plane") {
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

/// The report of a run that needs no lab (only BPF_PROG_RUN and the control plane).
fn finish_without_lab(
    out_path: &Path,
    opts: &Options,
    sel: &Selection,
    progrun: &Progrun,
) -> Result<()> {
    report::print_progrun_table(&progrun.figures);
    let mut report = json!({
        "environment": environment(),
        "quick": opts.quick,
        "scenarios": sel.0,
    });
    if let Some(fields) = report.as_object_mut() {
        fields.extend(progrun.report_fields());
    }
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
