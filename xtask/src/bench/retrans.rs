//! Where the bulk runs' retransmissions come from (issue 11): one TCP stream pod to pod on
//! both dataplanes, with the iperf3 client (the sender) and server placed three ways:
//!
//! - `unpinned`: as the bulk runs are, the scheduler moves them between the CPUs;
//! - `split`: sender on CPU 0, receiver on CPU 1;
//! - `one_cpu`: both on CPU 0.
//!
//! A pod's `veth` has no queue of its own: what a pod sends is handed to the backlog of the CPU
//! the sender runs on (`netif_rx`), and each CPU's backlog is processed by that CPU's softirq.
//! When the sender moves to the other CPU while segments are still queued on the first, the
//! two backlogs deliver at once and later segments can overtake earlier ones; the receiver
//! sees a hole, sends SACKs, and the sender retransmits what was only late (the receiver
//! reports those as duplicates: DSACK). Pinning tells that apart from a dataplane that
//! reorders by itself: on one CPU, or with each side on its own CPU, nothing should be
//! reordered.
//!
//! Per run, the sender's and the receiver's TCP counters (`/proc/net/snmp`, `netstat`) and
//! every CPU's packets processed (`/proc/net/softnet_stat`), as deltas.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use serde_json::{Value, json};

use super::{
    Pair,
    measure::{iperf3_on, tcp_stats},
};

/// Where the sender and the receiver run.
#[derive(Clone, Copy)]
pub(super) struct Placement {
    pub(super) key: &'static str,
    pub(super) client_cpu: Option<usize>,
    pub(super) server_cpu: Option<usize>,
}

pub(super) const PLACEMENTS: [Placement; 3] = [
    Placement {
        key: "unpinned",
        client_cpu: None,
        server_cpu: None,
    },
    Placement {
        key: "split",
        client_cpu: Some(0),
        server_cpu: Some(1),
    },
    Placement {
        key: "one_cpu",
        client_cpu: Some(0),
        server_cpu: Some(0),
    },
];

/// The sender's counters reported (deltas over the run).
const SENDER: [&str; 8] = [
    "Tcp:RetransSegs",
    "TcpExt:TCPDSACKRecvSegs",
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

/// One bulk run of `secs` seconds on `pair` with `placement`: throughput and the counters.
pub(super) fn run(pair: &Pair, placement: Placement, secs: u32) -> Result<Value> {
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
    md
}
