//! A microbenchmark, not a test (ignored unless asked for): the cost of `pod_ingress` on a
//! pod-to-pod frame, measured with BPF_PROG_RUN. `cargo xtask bench` runs it with
//! `cargo test --release -p vnetd --test progrun_bench -- --ignored --nocapture` and reads
//! the `vnetd-bench ...` line. Needs root (CAP_BPF).
//!
//! BPF_PROG_RUN runs the program `repeat` times on the *same* skb, so every run sees what the
//! previous one left:
//! - the TTL: a frame sent with TTL 255 is forwarded (not expired) for 254 runs, so the
//!   benchmark runs batches of [`BATCH`] and averages the kernel's per-run time (measured in
//!   the kernel, without the syscall) over all batches;
//! - the rewritten MACs: the program gives the frame pod B's host-veth MAC as its source, which
//!   the next run's anti-spoofing would refuse as pod A's; so here pod B's host-veth MAC *is*
//!   pod A's MAC, and every run takes the same forwarding path (checked with the counters).
mod support;

use std::time::Instant;

use aya::programs::{TestRun as _, TestRunOptions};
use support::{MAC_A, POD_A, POD_B, TC_ACT_REDIRECT, dataplane_with_host_b, set_ttl, udp};
use vnetd_common::{Path, programs};

/// Runs per BPF_PROG_RUN call: fewer than the 254 a TTL-255 frame can be forwarded.
const BATCH: u32 = 200;

/// A 64-byte frame from pod A to pod B: Ethernet, IPv4 (TTL 255, valid checksum), UDP.
fn frame() -> Vec<u8> {
    let mut f = udp(MAC_A, POD_A, POD_B);
    f.resize(64, 0);
    set_ttl(&mut f, 255);
    f
}

#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it"]
fn pod_ingress_pod_to_pod() {
    let runs: u32 = std::env::var("VNETD_BENCH_PROGRUN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let calls = runs.div_ceil(BATCH).max(1);
    // Pod B's host-veth MAC is pod A's MAC: see the module's comment.
    let mut dp = dataplane_with_host_b(MAC_A);
    let frame = frame();
    let mut out = vec![0u8; frame.len() + 256];
    let mut total_ns = 0u64;
    let wall = Instant::now();
    for _ in 0..calls {
        let r = dp
            .classifier(programs::POD_TC_INGRESS)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat: BATCH,
                ..Default::default()
            })
            .expect("BPF_PROG_RUN of pod_ingress");
        if r.return_value != TC_ACT_REDIRECT {
            panic!(
                "pod_ingress returned {} instead of redirect; drops: {:?}",
                r.return_value,
                dp.drops().unwrap()
            );
        }
        total_ns += r.duration.as_nanos() as u64 * u64::from(BATCH);
    }
    let wall = wall.elapsed();
    let done = u64::from(calls) * u64::from(BATCH);
    let forwarded = dp
        .traffic()
        .unwrap()
        .into_iter()
        .find(|(p, _)| *p == Path::PodToPod)
        .unwrap()
        .1
        .packets;
    assert_eq!(forwarded, done, "every run took the pod-to-pod path");
    println!(
        "vnetd-bench program=pod_ingress runs={done} ns_per_run={:.1} wall_ns_per_run={:.1}",
        total_ns as f64 / done as f64,
        wall.as_nanos() as f64 / done as f64
    );
}
