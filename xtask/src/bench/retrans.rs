//! Where the bulk runs' retransmissions come from (issue 11): one TCP stream pod to pod on
//! both dataplanes, with the iperf3 client (the sender) and server placed three ways:
//!
//! - `unpinned`: as the bulk runs are, the scheduler moves them between the CPUs;
//! - `split`: sender on CPU 0, receiver on CPU 1;
//! - `split_gro`: as `split`, with GRO on the pods' host-side veths (their NAPI ring);
//! - `split_rps`: as `split`, with RPS over every CPU on the pods' veths (both ends);
//! - `one_cpu`: both on CPU 0.
//!
//! A pod's `veth` has no queue of its own: what a pod sends is handed to the backlog of the CPU
//! the sender runs on (`netif_rx`), and each CPU's backlog is processed by that CPU's softirq.
//! When the sender moves to the other CPU while segments are still queued on the first, the
//! two backlogs deliver at once and later segments can overtake earlier ones; the receiver
//! sees a hole, sends SACKs, and the sender retransmits what was only late (the receiver
//! reports those as duplicates: DSACK). TCP sends from two CPUs even with the sender pinned:
//! the sending process's, and the one that processes the ACKs (in its softirq). On one CPU
//! nothing can overtake; with RPS a flow's packets go to one CPU's backlog whichever CPU sent
//! them; GRO on the host-side veth would queue them in its NAPI ring, but a veth takes TCP
//! from a TSO-capable peer that way only for UDP-forwarding setups (`veth_skb_is_eligible_for_gro`),
//! so it is expected to change little.
//!
//! Per run, the sender's and the receiver's TCP counters (`/proc/net/snmp`, `netstat`) and
//! every CPU's packets processed (`/proc/net/softnet_stat`), as deltas.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use serde_json::{Value, json};

use vnetd_lab::Ns;

use super::{
    DATAPLANES, Pair, Results, Scenario,
    measure::{iperf3_on, tcp_stats},
    pktrate, step,
    testbed::Testbed,
};

/// Where the sender and the receiver run.
#[derive(Clone, Copy)]
pub(super) struct Placement {
    pub(super) key: &'static str,
    pub(super) client_cpu: Option<usize>,
    pub(super) server_cpu: Option<usize>,
    /// GRO turned on for the run on both pods' host-side veths (a veth whose GRO is on takes
    /// what its peer sends through its NAPI ring, whichever CPU sent it).
    pub(super) host_gro: bool,
    /// RPS over every CPU for the run on the veths that take what a pod or the node sends
    /// (the pods' host-side veths and their `eth0`s): a flow's packets are queued to the
    /// backlog of the CPU its hash picks, whichever CPU sent them.
    pub(super) rps: bool,
}

pub(super) const PLACEMENTS: [Placement; 5] = [
    Placement {
        key: "unpinned",
        client_cpu: None,
        server_cpu: None,
        host_gro: false,
        rps: false,
    },
    Placement {
        key: "split",
        client_cpu: Some(0),
        server_cpu: Some(1),
        host_gro: false,
        rps: false,
    },
    Placement {
        key: "split_gro",
        client_cpu: Some(0),
        server_cpu: Some(1),
        host_gro: true,
        rps: false,
    },
    Placement {
        key: "split_rps",
        client_cpu: Some(0),
        server_cpu: Some(1),
        host_gro: false,
        rps: true,
    },
    Placement {
        key: "one_cpu",
        client_cpu: Some(0),
        server_cpu: Some(0),
        host_gro: false,
        rps: false,
    },
];

/// The sender's counters reported (deltas over the run).
const SENDER: [&str; 10] = [
    "Tcp:RetransSegs",
    "TcpExt:TCPDSACKRecvSegs",
    // Recoveries undone because the receiver reported the retransmission a duplicate: the
    // congestion window is restored.
    "TcpExt:TCPDSACKUndo",
    // Retransmissions skipped because the original was still queued in this host.
    "TcpExt:TCPSpuriousRtxHostQueues",
    "TcpExt:TCPSACKReorder",
    "TcpExt:TCPTSReorder",
    "TcpExt:TCPFastRetrans",
    "TcpExt:TCPLossProbes",
    "TcpExt:TCPTimeouts",
    "TcpExt:TCPSpuriousRTOs",
];

/// The receiver's counters reported (deltas over the run).
const RECEIVER: [&str; 4] = [
    "TcpExt:TCPOFOQueue",
    "TcpExt:TCPDSACKOldSent",
    "TcpExt:TCPDSACKOfoSent",
    "TcpExt:TCPRcvQDrop",
];

/// Packets processed per CPU so far (`/proc/net/softnet_stat`'s first column, hex; the file is
/// the machine's, not a namespace's).
fn softnet_processed() -> Result<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat")
        .context("reading /proc/net/softnet_stat")?;
    text.lines()
        .map(|l| {
            let first = l.split_whitespace().next().unwrap_or_default();
            u64::from_str_radix(first, 16).map_err(|e| anyhow!("softnet_stat line {l:?}: {e}"))
        })
        .collect()
}

fn deltas(names: &[&str], before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Value {
    names
        .iter()
        .map(|n| {
            let d = match (before.get(*n), after.get(*n)) {
                (Some(b), Some(a)) => json!(a.saturating_sub(*b)),
                _ => Value::Null,
            };
            (n.split(':').nth(1).unwrap_or(n).to_string(), d)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The node side of a pair: its namespace and the client's and server's host-side veths.
pub(super) struct HostSide {
    pub(super) node: Ns,
    pub(super) veths: [String; 2],
}

/// One bulk run of `secs` seconds on `pair` with `placement`: throughput and the counters.
pub(super) fn run(pair: &Pair, host: &HostSide, placement: Placement, secs: u32) -> Result<Value> {
    let mut restore = Vec::new();
    if placement.host_gro {
        for dev in &host.veths {
            if !pktrate::gro(&host.node, dev)? {
                pktrate::set_gro(&host.node, dev, true)?;
                restore.push(dev.clone());
            }
        }
    }
    let rps_devs: Vec<(&Ns, &str)> = [
        (&host.node, host.veths[0].as_str()),
        (&host.node, host.veths[1].as_str()),
        (&pair.client, "eth0"),
        (&pair.server, "eth0"),
    ]
    .into_iter()
    .filter(|_| placement.rps)
    .collect();
    let all_cpus = format!(
        "{:x}",
        (1u64
            << std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(63))
            - 1
    );
    let mut measured = Ok(Value::Null);
    for (ns, dev) in &rps_devs {
        if let Err(e) = set_rps(ns, dev, &all_cpus) {
            measured = Err(e);
        }
    }
    if measured.is_ok() {
        measured = measure_one(pair, placement, secs);
    }
    for (ns, dev) in &rps_devs {
        set_rps(ns, dev, "0")?;
    }
    for dev in &restore {
        pktrate::set_gro(&host.node, dev, false)?;
    }
    measured
}

/// Sets `dev`'s receive packet steering CPU mask (hex; "0": off) in `ns`. Through `ip netns
/// exec`, which mounts the namespace's own /sys (nsenter would show the root namespace's).
fn set_rps(ns: &Ns, dev: &str, mask: &str) -> Result<()> {
    let path = format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c"])
        .arg(format!("echo {mask} > {path}"))
        .output()
        .context("running ip netns exec")?;
    anyhow::ensure!(
        out.status.success(),
        "writing {mask} to {path} in netns {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn measure_one(pair: &Pair, placement: Placement, secs: u32) -> Result<Value> {
    let (s0, r0, cpu0) = (
        tcp_stats(&pair.client)?,
        tcp_stats(&pair.server)?,
        softnet_processed()?,
    );
    let j = iperf3_on(
        pair,
        &["-t", &secs.to_string()],
        secs,
        placement.client_cpu,
        placement.server_cpu,
    )?;
    let (s1, r1, cpu1) = (
        tcp_stats(&pair.client)?,
        tcp_stats(&pair.server)?,
        softnet_processed()?,
    );
    let gbps = j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("no end.sum_received in iperf3's output"))?
        / 1e9;
    let sent_bytes = j["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(f64::NAN);
    let sender = deltas(&SENDER, &s0, &s1);
    let retrans = sender["RetransSegs"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "placement": placement.key,
        "client_cpu": placement.client_cpu,
        "server_cpu": placement.server_cpu,
        "host_veth_gro_on": placement.host_gro,
        "rps_all_cpus": placement.rps,
        "gbps": gbps,
        // Segments of a 1448-byte MSS (the lab's 1500 MTU with timestamps).
        "retransmitted_per_million_segments": retrans / (sent_bytes / 1448.0) * 1e6,
        "sender": sender,
        "receiver": deltas(&RECEIVER, &r0, &r1),
        "softnet_processed_per_cpu": cpu0.iter().zip(&cpu1)
            .map(|(b, a)| a.wrapping_sub(*b) & 0xffff_ffff)
            .collect::<Vec<_>>(),
        "sender_cpu_percent": j["end"]["cpu_utilization_percent"]["host_total"],
        "receiver_cpu_percent": j["end"]["cpu_utilization_percent"]["remote_total"],
    }))
}

/// The report's lines: per dataplane and placement, the median retransmissions per million
/// segments, DSACKs and the receiver's out-of-order segments over the runs.
pub(super) fn markdown(runs: &[Value]) -> String {
    let mut md = String::from(
        "\nTCP bulk pod to pod, retransmissions by where the sender and receiver run (sums \
         over the runs; per million segments: median):\n\n\
         | dataplane | placement | Gbit/s (median) | retransmitted per 1M segments | \
         retransmitted | of which DSACK (not lost) | receiver out-of-order |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for dp in ["vnetd", "reference"] {
        for p in PLACEMENTS {
            let these: Vec<&Value> = runs
                .iter()
                .filter(|r| r["dataplane"] == dp && r["placement"] == p.key)
                .collect();
            if these.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Value) -> Option<f64>| {
                let v: Vec<f64> = these.iter().filter_map(|r| f(r)).collect();
                super::report::median(&v)
            };
            let sum = |f: &dyn Fn(&Value) -> Option<f64>| -> f64 {
                these.iter().filter_map(|r| f(r)).sum::<f64>() + 0.0
            };
            md += &format!(
                "| {dp} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                p.key,
                med(&|r| r["gbps"].as_f64()),
                med(&|r| r["retransmitted_per_million_segments"].as_f64()),
                sum(&|r| r["sender"]["RetransSegs"].as_f64()),
                sum(&|r| r["sender"]["TCPDSACKRecvSegs"].as_f64()),
                sum(&|r| r["receiver"]["TCPOFOQueue"].as_f64()),
            );
        }
    }
    let sum = |dp: &str, key: Option<&str>, f: &dyn Fn(&Value) -> Option<f64>| -> f64 {
        runs.iter()
            .filter(|r| r["dataplane"] == dp && key.is_none_or(|k| r["placement"] == k))
            .filter_map(f)
            .sum::<f64>()
            + 0.0
    };
    let total = |dp: &str, key: &str, f: &dyn Fn(&Value) -> Option<f64>| -> String {
        format!("{:.0}", sum(dp, Some(key), f))
    };
    let retrans = |r: &Value| r["sender"]["RetransSegs"].as_f64();
    let timeouts = |r: &Value| r["sender"]["TCPTimeouts"].as_f64();
    md += &format!(
        "\nIn this run, segments retransmitted with sender and receiver on one CPU: vnetd {}, \
         reference {}; on two CPUs with RPS on the pods' veths: vnetd {}, reference {}; on two \
         CPUs as they are: vnetd {}, reference {}. Retransmission timeouts over all runs: vnetd \
         {}, reference {}. A veth hands what it is given to the backlog of the CPU that sends \
         (netif_rx); TCP sends from the CPU of the sending process and from the CPU that \
         processes the ACKs, so a flow's segments can sit in two CPUs' backlogs at once and \
         overtake each other. The receiver reports the retransmissions as duplicates (DSACK) \
         and the sender undoes its recovery.\n",
        total("vnetd", "one_cpu", &retrans),
        total("reference", "one_cpu", &retrans),
        total("vnetd", "split_rps", &retrans),
        total("reference", "split_rps", &retrans),
        total("vnetd", "split", &retrans),
        total("reference", "split", &retrans),
        sum("vnetd", None, &timeouts),
        sum("reference", None, &timeouts),
    );
    md
}

/// The retransmission runs: every placement on both dataplanes, pod to pod, as many
/// repetitions as asked for; prints the valid runs' table. A run whose path's counter did not
/// move counts in `results.invalid`.
pub(super) fn measure(tb: &Testbed, results: &mut Results) -> Result<Vec<Value>> {
    let (sel, reps, durations) = (&tb.sel, tb.reps, tb.durations);
    let (node, rnode) = (&tb.node, &tb.rnode);
    let (va, vb, ra, rb) = (&tb.va, &tb.vb, &tb.ra, &tb.rb);
    let pod_to_pod = &tb.pod_to_pod;
    let mut retrans_runs = Vec::new();
    // A diagnosis more than a figure: one repetition in a run of every scenario, all of them
    // when it is asked for by name.
    let retrans_reps = if sel.0.is_empty() { 1 } else { reps };
    step(&format!(
        "retransmissions: TCP bulk pod to pod, {} s per run, the iperf3 client (sender) and \
         server placed {}; {retrans_reps} repetition(s)",
        durations.bulk,
        PLACEMENTS
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
        HostSide {
            node: node.ns.clone(),
            veths: [pktrate::host_veth(node, va)?, pktrate::host_veth(node, vb)?],
        },
        HostSide {
            node: rnode.ns.clone(),
            veths: [
                pktrate::host_veth(rnode, ra)?,
                pktrate::host_veth(rnode, rb)?,
            ],
        },
    ];
    for rep in 0..retrans_reps {
        for placement in PLACEMENTS {
            for dp in DATAPLANES {
                let before = tb.evidence(Scenario::PodToPod, dp)?;
                let mut run = run(
                    &pod_to_pod[dp as usize],
                    &hosts[dp as usize],
                    placement,
                    durations.bulk,
                )
                .with_context(|| {
                    format!("retrans {} run {} for {}", placement.key, rep + 1, dp.key())
                })?;
                let valid = tb
                    .evidence(Scenario::PodToPod, dp)?
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
    let valid_retrans = valid(&retrans_runs);
    if !valid_retrans.is_empty() {
        println!("{}", markdown(&valid_retrans));
    }
    Ok(retrans_runs)
}

/// The runs whose path's counter moved.
pub(super) fn valid(runs: &[Value]) -> Vec<Value> {
    runs.iter()
        .filter(|r| r["valid"] == true)
        .cloned()
        .collect()
}
