//! `cargo xtask bench`: vnetd against the dataplane it replaces, in the same run, on the same
//! machine, pod to pod on one node.
//!
//! - **vnetd**: a lab node running the agent, two pods attached through `vnetd-cni`
//!   (TC ingress on the sending pod's host veth, `bpf_redirect_peer` into the other pod).
//! - **reference**: another lab node without vnetd, two pods attached by Debian's reference CNI
//!   plugins as a conflist chain: `bridge` (host-local IPAM, a Linux bridge `cni0`, gateway and
//!   masquerade) then `firewall` (iptables backend). Bridge netfilter stays as the host has it.
//!
//! Each metric is measured on both, one run at a time, alternating (the dataplane that goes
//! first alternates per repetition), and reported as median [min-max] with the ratio of the
//! medians. A table goes to stdout, a JSON report to `target/bench/report.json` and the
//! README's table, naming that report, beside it (`report.md`). A run during which the
//! dataplane's evidence counter did not move is marked invalid and left out of the figures.
//! Nothing is asserted: speed is never a test verdict.
//!
//! This module runs the bench; [`measure`] takes the measurements (iperf3, TCP_RR, the
//! counters that prove the path, BPF_PROG_RUN), [`report`] turns them into the table, the JSON
//! and the README's markdown, and [`cni`] is the control plane's share (CNI ADD/DEL latency).

mod cni;
mod measure;
mod report;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use cni::{CNI_DIR, ref_plugins_conf};
use measure::{forward_to_cni_packets, measure, progrun_bench};
use report::{
    environment, first_line, fmt_num, markdown, notes, package_version, print_table, summary_json,
};
use serde_json::{Value, json};
use vnetd_lab::{
    Lab, Node, Ns, tcp_echo_ok,
    vnetd::{Agent, add_pod, bin, lab_spec},
};

pub struct Options {
    /// One repetition, short runs: a smoke test of the bench itself.
    pub quick: bool,
    /// Repetitions (default 3, or 1 with `quick`).
    pub reps: Option<u32>,
    /// Where the JSON report goes (default `target/bench/report.json`).
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dp {
    Vnetd,
    Reference,
}

impl Dp {
    fn key(self) -> &'static str {
        match self {
            Dp::Vnetd => "vnetd",
            Dp::Reference => "reference",
        }
    }

    /// The counter that moves only when this dataplane forwards the pods' packets.
    fn evidence(self) -> &'static str {
        match self {
            Dp::Vnetd => "vnetd pod_to_pod counter",
            Dp::Reference => "reference FORWARD -> CNI-FORWARD rule counter",
        }
    }
}

/// A client pod and a server pod of one dataplane.
struct Pair {
    client: Ns,
    server: Ns,
    server_ip: Ipv4Addr,
}

/// How long each kind of run lasts.
#[derive(Clone, Copy)]
struct Durations {
    bulk: u32,
    rr: Duration,
    udp: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    TcpBulk,
    TcpRr,
    TcpRrLatency,
    UdpRx,
}

const METRICS: [Metric; 4] = [
    Metric::TcpBulk,
    Metric::TcpRr,
    Metric::TcpRrLatency,
    Metric::UdpRx,
];

impl Metric {
    fn key(self) -> &'static str {
        match self {
            Metric::TcpBulk => "tcp_bulk_gbps",
            Metric::TcpRr => "tcp_rr_tps",
            Metric::TcpRrLatency => "tcp_rr_mean_latency_us",
            Metric::UdpRx => "udp_64b_rx_kpps",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Metric::TcpBulk => "TCP bulk, Gbit/s",
            Metric::TcpRr => "TCP_RR 1 B, transactions/s",
            Metric::TcpRrLatency => "TCP_RR mean latency, us (lower is better)",
            Metric::UdpRx => "UDP 64 B receiver, kpps (syscall-bound)",
        }
    }
    fn higher_is_better(self) -> bool {
        self != Metric::TcpRrLatency
    }
    fn index(self) -> usize {
        METRICS.iter().position(|m| *m == self).expect("listed")
    }
}

/// Every sample of every metric for both dataplanes, and the raw runs for the report.
#[derive(Default)]
struct Results {
    samples: [[Vec<f64>; 2]; 4],
    runs: Vec<Value>,
    /// Runs whose evidence counter did not move (their samples are not in `samples`).
    invalid: u32,
}

impl Results {
    fn add(&mut self, dp: Dp, metric: Metric, value: f64) {
        self.samples[metric.index()][dp as usize].push(value);
    }
    fn get(&self, dp: Dp, metric: Metric) -> &[f64] {
        &self.samples[metric.index()][dp as usize]
    }
}

/// Only the control plane's scenario (`--control-plane-only`): CNI ADD/DEL latency.
pub fn run_control_plane(root: &Path, opts: Options) -> Result<()> {
    check_tools()?;
    vnetd_lab::ensure_bpffs()?;
    vnetd_lab::cleanup_on_signal()?;
    let pods = if opts.quick { 25 } else { 250 };
    step(&format!(
        "control plane: CNI ADD then DEL of {pods} pods, vnetd-cni against bridge + firewall"
    ));
    let report = json!({ "environment": report::environment(), "control_plane": cni::run(pods)? });
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
        }
    } else {
        Durations {
            bulk: 5,
            rr: Duration::from_secs(3),
            udp: 5,
        }
    };
    let out_path = opts
        .out
        .unwrap_or_else(|| target_dir(root).join("bench/report.json"));

    // The microbenchmark first: it may compile, and it must not share the CPUs with the lab.
    let runs = if opts.quick { 100_000 } else { 1_000_000 };
    step(&format!(
        "BPF_PROG_RUN: pod_ingress on a 64-byte pod-to-pod frame, {runs} runs \
         (agent/tests/progrun_bench.rs)"
    ));
    let progrun = progrun_bench(runs);
    match &progrun {
        Ok(v) => println!(
            "   {} ns per run (kernel-timed; wall clock incl. syscalls {} ns)",
            fmt_num(v["ns_per_run"].as_f64().unwrap_or(f64::NAN)),
            fmt_num(v["wall_ns_per_run"].as_f64().unwrap_or(f64::NAN)),
        ),
        Err(e) => println!("   skipped: {e:#}"),
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

    let pairs = [
        Pair {
            client: va.ns.ns.clone(),
            server: vb.ns.ns.clone(),
            server_ip: vb.ip,
        },
        Pair {
            client: ra.clone(),
            server: rb.clone(),
            server_ip: rb_ip,
        },
    ];
    for (dp, pair) in [Dp::Vnetd, Dp::Reference].into_iter().zip(&pairs) {
        tcp_echo_ok(&pair.client, &pair.server, pair.server_ip, 7000)
            .with_context(|| format!("{} pod to pod does not work", dp.key()))?;
    }

    step(&format!(
        "measuring: {reps} repetition(s), bulk {} s, TCP_RR {} s, UDP {} s per run, one run at a time",
        durations.bulk,
        durations.rr.as_secs_f64(),
        durations.udp
    ));
    // Proof that each run took the measured path: vnetd's pod-to-pod counter, and the packets
    // the reference node's iptables FORWARD chain sent to the firewall plugin's chain (bridged
    // frames reach it only through bridge netfilter). A run during which its dataplane's
    // counter did not move measured something else: it is marked invalid and left out.
    let evidence = |dp: Dp| -> Result<u64> {
        match dp {
            Dp::Vnetd => agent.traffic("pod_to_pod"),
            Dp::Reference => forward_to_cni_packets(&rnode),
        }
    };
    let started = Instant::now();
    let mut results = Results::default();
    for rep in 0..reps {
        let order = if rep % 2 == 0 {
            [Dp::Vnetd, Dp::Reference]
        } else {
            [Dp::Reference, Dp::Vnetd]
        };
        for kind in ["bulk", "rr", "udp"] {
            for dp in order {
                let pair = &pairs[dp as usize];
                let before = evidence(dp)?;
                let run = measure(kind, pair, durations)
                    .with_context(|| format!("{kind} run {} for {}", rep + 1, dp.key()))?;
                let after = evidence(dp)?;
                let valid = after > before;
                print!("   rep {} {:<9} {:<5}", rep + 1, dp.key(), kind);
                for (metric, value) in &run.values {
                    if valid {
                        results.add(dp, *metric, *value);
                    }
                    print!("  {} {}", metric.key(), fmt_num(*value));
                }
                if !valid {
                    results.invalid += 1;
                    print!("  INVALID: {} did not move", dp.evidence());
                }
                if let Some(r) = run.details.get("sender_retrans_segs") {
                    print!(
                        "  (retransmitted segments {r}, of which reported duplicate {})",
                        run.details["sender_dsack_recv_segs"]
                    );
                }
                println!();
                results.runs.push(json!({
                    "rep": rep + 1,
                    "dataplane": dp.key(),
                    "kind": kind,
                    "values": run.values.iter().map(|(m, v)| (m.key().to_string(), json!(v)))
                        .collect::<serde_json::Map<_, _>>(),
                    "details": run.details,
                    "evidence": {
                        "counter": dp.evidence(), "before": before, "after": after,
                        "packets": after.saturating_sub(before),
                    },
                    "valid": valid,
                }));
            }
        }
    }
    let measuring = started.elapsed();

    let vnetd_packets = evidence(Dp::Vnetd)?;
    let ref_fw_packets = evidence(Dp::Reference)?;
    println!(
        "\n   packets seen: vnetd pod_to_pod counter {vnetd_packets}; reference node's \
         FORWARD -> CNI-FORWARD rule {ref_fw_packets}; {} invalid run(s)",
        results.invalid
    );

    let env = environment();
    let ref_config = json!({
        "plugins": ref_plugins_conf(&rnode.dir),
        "package": package_version("containernetworking-plugins"),
        "bridge_nf_call_iptables": nf_call,
        "iptables": first_line(Command::new("iptables").arg("--version")),
        "iptables_rules_in_node": ref_rules,
        "forward_to_cni_forward_packets": ref_fw_packets,
    });
    let notes = notes(&env, &results);
    print_table(&results, &env, &nf_call, reps, &notes);
    let progrun_ns = progrun.as_ref().ok().and_then(|v| v["ns_per_run"].as_f64());
    if let Some(ns) = progrun_ns {
        println!(
            "   BPF_PROG_RUN pod_ingress (vnetd only): {} ns per run",
            fmt_num(ns)
        );
    }
    let mut report = json!({
        "environment": env,
        "quick": opts.quick,
        "repetitions": reps,
        "durations_s": { "tcp_bulk": durations.bulk, "tcp_rr": durations.rr.as_secs_f64(), "udp": durations.udp },
        "measuring_s": measuring.as_secs_f64(),
        "scenario": "pod to pod on one node, 2 pods per node namespace, one run at a time, \
                     dataplanes alternated per run",
        "vnetd": {
            "node": "node-1", "client": va.ip.to_string(), "server": vb.ip.to_string(),
            "pod_to_pod_packets": vnetd_packets,
        },
        "reference": {
            "node": "ref", "client": ra_ip.to_string(), "server": rb_ip.to_string(),
            "config": ref_config,
        },
        "metrics": METRICS.iter().map(|&m| summary_json(&results, m)).collect::<Vec<_>>(),
        "runs": results.runs,
        "progrun": match &progrun {
            Ok(v) => v.clone(),
            Err(e) => json!({ "error": format!("{e:#}") }),
        },
        "invalid_runs": results.invalid,
        "notes": notes,
    });
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out_path.display()))?;
    let md_path = out_path.with_extension("md");
    std::fs::write(
        &md_path,
        markdown(&results, &env, reps, opts.quick, progrun_ns, &out_path),
    )
    .with_context(|| format!("writing {}", md_path.display()))?;
    println!(
        "\n   report: {} (table for the README: {})",
        out_path.display(),
        md_path.display()
    );

    step("tearing down");
    drop((va, vb, agent));
    lab.teardown()?;
    println!("   done: the lab's namespaces, processes and iptables rules are gone");

    let pods = if opts.quick { 25 } else { 250 };
    step(&format!(
        "control plane: CNI ADD then DEL of {pods} pods, vnetd-cni against bridge + firewall"
    ));
    report["control_plane"] = match cni::run(pods) {
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
        md += &cni::markdown(&report["control_plane"]);
        std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    }
    println!(
        "\n   report (with the control plane): {} and {}",
        out_path.display(),
        md_path.display()
    );
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}

/// Fails early, pointing at `cargo xtask setup`, if a tool the bench runs is missing.
fn check_tools() -> Result<()> {
    for tool in ["iperf3", "iptables", "iptables-save", "nsenter", "ip"] {
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
    for b in ["vnetd", "vnetd-cni"] {
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
