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
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::bench_cni::{self, CNI_DIR, ref_plugins_conf};
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use vnetd_lab::{
    Lab, Node, Ns, tcp_echo_ok,
    vnetd::{Agent, add_pod, bin, lab_spec},
};

/// The reference network: what `bridge` is told (host-local keeps its leases in the node's
const IPERF_PORT: &str = "5201";

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
    report["control_plane"] = match bench_cni::run(pods) {
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
        md += &bench_cni::markdown(&report["control_plane"]);
        std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    }
    println!(
        "\n   report (with the control plane): {} and {}",
        out_path.display(),
        md_path.display()
    );
    Ok(())
}

/// The notes of a report: only what this run measured or this machine reports (the CPU count,
/// the UDP loss and send rate, the retransmissions), besides how the metrics are taken.
fn notes(env: &Value, r: &Results) -> Vec<String> {
    let detail = |dp: Dp, kind: &str, key: &str| -> Vec<f64> {
        r.runs
            .iter()
            .filter(|run| run["dataplane"] == dp.key() && run["kind"] == kind)
            .filter(|run| run["valid"] == true)
            .filter_map(|run| run["details"][key].as_f64())
            .collect()
    };
    let range = |values: Vec<f64>| -> String {
        if values.is_empty() {
            return "no valid run".into();
        }
        let (lo, hi) = min_max(&values);
        if lo == hi {
            fmt_num(lo)
        } else {
            format!("{}-{}", fmt_num(lo), fmt_num(hi))
        }
    };
    let total = |dp: Dp, key: &str| -> f64 { detail(dp, "bulk", key).iter().sum() };
    let cpus = &env["cpus"];
    let mut notes = vec![
        format!(
            "One machine with {cpus} CPU(s) (as the kernel reports them), shared with whatever \
             else runs: numbers are noisy; compare the ratios of the same run, not absolute \
             values across runs."
        ),
        format!(
            "TCP bulk with one stream runs sender and receiver on the same {cpus} CPU(s): it \
             measures the whole stack, the dataplane's per-packet cost is a small part of it."
        ),
        format!(
            "TCP bulk retransmitted segments over all runs: vnetd {} ({} reported duplicate by \
             the receiver, DSACK: reordered, not lost), reference {} ({} DSACK).",
            fmt_num(total(Dp::Vnetd, "sender_retrans_segs")),
            fmt_num(total(Dp::Vnetd, "sender_dsack_recv_segs")),
            fmt_num(total(Dp::Reference, "sender_retrans_segs")),
            fmt_num(total(Dp::Reference, "sender_dsack_recv_segs")),
        ),
        format!(
            "UDP 64 B is iperf3's receiver rate with -b 0, bound by one sender thread's \
             syscalls (the forwarding runs in the sender's softirq): it compares the socket \
             stacks more than the dataplanes. In this run the senders sent {} kpps (vnetd) and \
             {} kpps (reference), and the receivers lost {}% and {}%.",
            range(detail(Dp::Vnetd, "udp", "sent_kpps")),
            range(detail(Dp::Reference, "udp", "sent_kpps")),
            range(detail(Dp::Vnetd, "udp", "lost_percent")),
            range(detail(Dp::Reference, "udp", "lost_percent")),
        ),
        "TCP_RR is one connection, 1-byte request and response, Nagle off, in-process \
         sockets; latency is the mean round trip (1 / rate)."
            .to_string(),
    ];
    if r.invalid > 0 {
        notes.push(format!(
            "{} run(s) INVALID and left out of the figures: the dataplane's evidence counter \
             (vnetd: pod_to_pod; reference: FORWARD -> CNI-FORWARD) did not move during them.",
            r.invalid
        ));
    }
    notes
}

/// The README's results table, with where it comes from.
fn markdown(
    r: &Results,
    env: &Value,
    reps: u32,
    quick: bool,
    progrun_ns: Option<f64>,
    report: &Path,
) -> String {
    let mut md = format!(
        "From `{}` ({}, kernel {}, {} CPU(s) {}, git {}, {} repetition(s){}; {} invalid \
         run(s)):\n\n| metric | vnetd | bridge + iptables | vnetd / reference |\n|---|---|---|---|\n",
        report.display(),
        env["date"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["cpu_model"].as_str().unwrap_or("?"),
        env["git"].as_str().unwrap_or("?"),
        reps,
        if quick { ", --quick" } else { "" },
        r.invalid,
    );
    for m in METRICS {
        let (v, b) = (r.get(Dp::Vnetd, m), r.get(Dp::Reference, m));
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} |\n",
            m.label(),
            cell(v),
            cell(b),
            median(v) / median(b)
        ));
    }
    if let Some(ns) = progrun_ns {
        md.push_str(&format!(
            "| BPF_PROG_RUN `pod_ingress`, ns per run | {} | | |\n",
            fmt_num(ns)
        ));
    }
    md
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
    let result = bench_cni::ref_chain(node, &pod, name, "ADD", None)?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in the reference CNI result {result}"))?;
    Ok((pod.ns, ip))
}

/// The packet counter of the rule in `node`'s filter FORWARD chain that jumps to the firewall
/// plugin's `CNI-FORWARD` chain (`iptables-save -c`: `[packets:bytes] -A FORWARD ...`).
fn forward_to_cni_packets(node: &Node) -> Result<u64> {
    let dump = node.run_ok(["iptables-save", "-c", "-t", "filter"])?;
    dump.lines()
        .filter(|l| l.contains("-A FORWARD") && l.contains("-j CNI-FORWARD"))
        .map(|l| {
            l.strip_prefix('[')
                .and_then(|r| r.split_once(':'))
                .and_then(|(p, _)| p.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("cannot read the counter of {l:?}"))
        })
        .sum()
}

/// Runs the ignored BPF_PROG_RUN benchmark of the agent's tests (through cargo, which builds
/// it if needed) and returns the numbers of its `vnetd-bench key=value ...` line.
fn progrun_bench(runs: u32) -> Result<Value> {
    let mut cmd = crate::cargo();
    cmd.current_dir(crate::workspace_root())
        .env("VNETD_BENCH_PROGRUN_RUNS", runs.to_string())
        .args([
            "test",
            "--release",
            "--quiet",
            "-p",
            "vnetd",
            "--test",
            "progrun_bench",
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stderr(std::process::Stdio::inherit());
    let out = cmd.output().context("running cargo test (progrun_bench)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "the BPF_PROG_RUN benchmark failed ({}): {}",
        out.status,
        stdout.trim()
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("vnetd-bench "))
        .ok_or_else(|| anyhow!("no `vnetd-bench` line in: {}", stdout.trim()))?;
    let mut v = serde_json::Map::new();
    for kv in line.split_whitespace().skip(1) {
        if let Some((k, val)) = kv.split_once('=') {
            let val = val.parse::<f64>().map_or_else(|_| json!(val), |x| json!(x));
            v.insert(k.to_string(), val);
        }
    }
    ensure!(
        v.get("ns_per_run").is_some_and(Value::is_number),
        "no ns_per_run in {line:?}"
    );
    Ok(Value::Object(v))
}

/// What one run measured.
struct Run {
    values: Vec<(Metric, f64)>,
    details: Value,
}

fn measure(kind: &str, pair: &Pair, d: Durations) -> Result<Run> {
    match kind {
        "bulk" => {
            let before = tcp_counters(&pair.client)?;
            let j = iperf3(pair, &["-t", &d.bulk.to_string()], d.bulk)?;
            let after = tcp_counters(&pair.client)?;
            let recv = &j["end"]["sum_received"];
            let bps = recv["bits_per_second"]
                .as_f64()
                .ok_or_else(|| anyhow!("no end.sum_received in iperf3's output"))?;
            let delta = |i: usize| after[i].saturating_sub(before[i]);
            Ok(Run {
                values: vec![(Metric::TcpBulk, bps / 1e9)],
                details: json!({
                    "retransmits": j["end"]["sum_sent"]["retransmits"],
                    "sender_retrans_segs": delta(0),
                    "sender_dsack_recv_segs": delta(1),
                    "sender_sack_reorder": delta(2),
                    "cpu_utilization_percent": j["end"]["cpu_utilization_percent"],
                }),
            })
        }
        "rr" => {
            let (n, elapsed) = tcp_rr(pair, d.rr)?;
            let tps = n as f64 / elapsed.as_secs_f64();
            Ok(Run {
                values: vec![
                    (Metric::TcpRr, tps),
                    (Metric::TcpRrLatency, elapsed.as_secs_f64() * 1e6 / n as f64),
                ],
                details: json!({ "transactions": n, "seconds": elapsed.as_secs_f64() }),
            })
        }
        "udp" => {
            let j = iperf3(
                pair,
                &["-u", "-l", "64", "-b", "0", "-t", &d.udp.to_string()],
                d.udp,
            )?;
            let recv = &j["end"]["sum_received"];
            let sent = &j["end"]["sum_sent"];
            let f = |v: &Value, k: &str| {
                v[k].as_f64()
                    .ok_or_else(|| anyhow!("no {k} in iperf3's UDP summary {v}"))
            };
            let received = f(recv, "packets")? - f(recv, "lost_packets")?;
            let secs = f(recv, "seconds")?;
            ensure!(secs > 0.0, "iperf3 reported a run of 0 s");
            Ok(Run {
                values: vec![(Metric::UdpRx, received / secs / 1e3)],
                details: json!({
                    "sent_kpps": f(sent, "packets")? / f(sent, "seconds")?.max(1e-9) / 1e3,
                    "lost_percent": recv["lost_percent"],
                    "cpu_utilization_percent": j["end"]["cpu_utilization_percent"],
                }),
            })
        }
        _ => unreachable!("unknown run kind {kind}"),
    }
}

/// The sender's view of retransmissions in `ns`: `[RetransSegs, TCPDSACKRecvSegs,
/// TCPSACKReorder]`. A retransmitted segment the receiver reports as a duplicate (DSACK) was
/// not lost: it was retransmitted because segments arrived out of order.
fn tcp_counters(ns: &Ns) -> Result<[u64; 3]> {
    // /proc/thread-self: /proc/net (= /proc/self/net) shows the main thread's namespace.
    let (snmp, netstat) = ns.in_ns(|| {
        let read = |f: &str| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                .with_context(|| format!("reading /proc/thread-self/net/{f}"))
        };
        Ok((read("snmp")?, read("netstat")?))
    })?;
    let field = |text: &str, group: &str, name: &str| -> Result<u64> {
        let mut rows = text
            .lines()
            .filter(|l| l.starts_with(&format!("{group}: ")));
        let (names, values) = (rows.next(), rows.next());
        names
            .zip(values)
            .and_then(|(n, v)| {
                let i = n.split_whitespace().position(|k| k == name)?;
                v.split_whitespace().nth(i)?.parse().ok()
            })
            .ok_or_else(|| anyhow!("no {group} {name} counter in netns {}", ns.name))
    };
    Ok([
        field(&snmp, "Tcp", "RetransSegs")?,
        field(&netstat, "TcpExt", "TCPDSACKRecvSegs")?,
        field(&netstat, "TcpExt", "TCPSACKReorder")?,
    ])
}

/// One iperf3 run: a one-off server in the server pod, the client (JSON output) in the client
/// pod. Returns the client's JSON.
fn iperf3(pair: &Pair, args: &[&str], secs: u32) -> Result<Value> {
    let server = pair
        .server
        .spawn(["iperf3", "-s", "-1", "-p", IPERF_PORT, "--forceflush"])?;
    server
        .wait_for_output("Server listening", Duration::from_secs(10))
        .context("waiting for the iperf3 server")?;
    let ip = pair.server_ip.to_string();
    let mut cmd = vec!["iperf3", "-c", &ip, "-p", IPERF_PORT, "-J"];
    cmd.extend_from_slice(args);
    let out = pair
        .client
        .run_timeout(&cmd, Duration::from_secs(u64::from(secs) + 20))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "iperf3 client output is not JSON (exit {}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(e) = j.get("error") {
        bail!(
            "iperf3 client failed: {e}; server: {} {}",
            server.stdout().trim(),
            server.stderr().trim()
        );
    }
    // The one-off server exits after the test; Drop kills it if it lingers.
    let mut server = server;
    let _ = server.wait_timeout(Duration::from_secs(3));
    Ok(j)
}

/// TCP request/response: one connection, 1 byte each way, as many round trips as fit in
/// `dur`. Returns (transactions, elapsed).
fn tcp_rr(pair: &Pair, dur: Duration) -> Result<(u64, Duration)> {
    let listener = pair
        .server
        .tcp_listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    let port = listener.local_addr()?.port();
    // Non-blocking accept with a deadline: the thread must end even if the client never comes.
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(Instant::now() < deadline, "no connection within 10 s");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).context("accepting"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut b = [0u8; 1];
        let mut n = 0;
        loop {
            match s.read(&mut b).context("server read")? {
                0 => return Ok(n),
                _ => {
                    s.write_all(&b).context("server write")?;
                    n += 1;
                }
            }
        }
    });
    let client = (|| -> Result<(u64, Duration)> {
        let mut c: TcpStream = pair.client.tcp_connect(
            SocketAddr::from((pair.server_ip, port)),
            Duration::from_secs(3),
        )?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = [0u8; 1];
        let mut ping = |c: &mut TcpStream| -> Result<()> {
            c.write_all(&[1]).context("client write")?;
            c.read_exact(&mut b).context("client read")
        };
        for _ in 0..200 {
            ping(&mut c)?; // warm-up
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            ping(&mut c)?;
            n += 1;
        }
        Ok((n, start.elapsed()))
    })();
    let served = server
        .join()
        .map_err(|_| anyhow!("the TCP_RR server thread panicked"))?;
    let (n, elapsed) = client?;
    let served = served?;
    ensure!(
        served == n + 200,
        "the server answered {served} requests, the client counted {}",
        n + 200
    );
    ensure!(n > 0, "no transaction completed");
    Ok((n, elapsed))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn fmt_num(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    if v.len() == 1 {
        fmt_num(v[0])
    } else {
        format!("{} [{}-{}]", fmt_num(median(v)), fmt_num(lo), fmt_num(hi))
    }
}

fn summary_json(r: &Results, m: Metric) -> Value {
    let side = |dp: Dp| {
        let v = r.get(dp, m);
        let (lo, hi) = min_max(v);
        json!({ "samples": v, "median": median(v), "min": lo, "max": hi })
    };
    json!({
        "metric": m.key(),
        "label": m.label(),
        "higher_is_better": m.higher_is_better(),
        "vnetd": side(Dp::Vnetd),
        "reference": side(Dp::Reference),
        "ratio_vnetd_over_reference": median(r.get(Dp::Vnetd, m)) / median(r.get(Dp::Reference, m)),
    })
}

fn print_table(r: &Results, env: &Value, nf_call: &str, reps: u32, notes: &[String]) {
    step("results: pod to pod, same node (median [min-max])");
    println!(
        "   {} | kernel {} | {} vCPU ({}) | {} repetition(s)",
        env["date"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["cpu_model"].as_str().unwrap_or("?"),
        reps
    );
    println!(
        "   reference: bridge + host-local + firewall (iptables), bridge-nf-call-iptables={nf_call}\n"
    );
    let w = [42, 26, 26, 10];
    println!(
        "   {:<w0$} | {:<w1$} | {:<w2$} | {:>w3$}",
        "metric",
        "vnetd",
        "bridge+iptables",
        "vnetd/ref",
        w0 = w[0],
        w1 = w[1],
        w2 = w[2],
        w3 = w[3]
    );
    println!(
        "   {}-|-{}-|-{}-|-{}",
        "-".repeat(w[0]),
        "-".repeat(w[1]),
        "-".repeat(w[2]),
        "-".repeat(w[3])
    );
    for m in METRICS {
        let (v, b) = (r.get(Dp::Vnetd, m), r.get(Dp::Reference, m));
        println!(
            "   {:<w0$} | {:<w1$} | {:<w2$} | {:>w3$.2}",
            m.label(),
            cell(v),
            cell(b),
            median(v) / median(b),
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    }
    println!();
    for n in notes {
        println!("   note: {n}");
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn package_version(pkg: &str) -> String {
    first_line(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg]))
}

/// Where and when: for the report and the table's header.
fn environment() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let git = first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"]));
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    json!({
        "date": first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string()).unwrap_or_default(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "iperf3": first_line(Command::new("iperf3").arg("--version")),
        "git": if dirty { format!("{git}-dirty") } else { git },
    })
}
