//! Microbenchmarks, not tests (ignored unless asked for): the cost of `pod_ingress` on a
//! pod-to-pod frame and on a segment of an established connection through SNAT, measured with
//! BPF_PROG_RUN. `cargo xtask bench` runs them with
//! `cargo test --release -p vnetd --test progrun_bench -- --ignored --nocapture` and reads
//! their `vnetd-bench program=...` lines. Needs root (CAP_BPF).
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
use support::{
    FABRIC_MAC, HOST_A, MAC_A, NODE_IP, POD_A, POD_B, TC_ACT_REDIRECT, TEST_IFINDEX, UPLINK_MAC,
    dataplane, dataplane_with_host_b, eth, ones_complement_sum, run, run_on, set_ttl, skb_ctx_on,
    traffic, udp,
};
use vnetd::dataplane::Dataplane;
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

/// The lab's internet host (TEST-NET-2).
const INTERNET: [u8; 4] = [198, 51, 100, 10];
const TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Pod A's connection to the internet host: its port, and the server's.
const POD_PORT: u16 = 40000;
const SERVER_PORT: u16 = 80;

/// A 64-byte TCP segment (10 bytes of data) with valid IPv4 and TCP checksums; `macs` are
/// (destination, source).
fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(30);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(b"0123456789");
    let mut pseudo = Vec::from(src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, TCP]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let check = !ones_complement_sum(&pseudo);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());

    let mut f = eth(macs.0, macs.1, 0x0800);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, TCP, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let check = !ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

/// The kernel-timed nanoseconds of `runs` BPF_PROG_RUN calls of `pod_ingress` on `frame`, one
/// run per call (a fresh copy of the frame each time), every one redirected.
fn pod_ingress_one_per_call(dp: &mut Dataplane, frame: &[u8], runs: u32) -> u64 {
    let ctx = skb_ctx_on(TEST_IFINDEX);
    let mut out = vec![0u8; frame.len() + 256];
    let mut total_ns = 0u64;
    for _ in 0..runs {
        let r = dp
            .classifier(programs::POD_TC_INGRESS)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_RUN of pod_ingress");
        assert_eq!(
            r.return_value,
            TC_ACT_REDIRECT,
            "pod_ingress did not redirect; drops: {:?}",
            dp.drops().unwrap()
        );
        total_ns += r.duration.as_nanos() as u64;
    }
    total_ns
}

/// `pod_ingress` on a segment of an established TCP connection from pod A to the internet:
/// the FLOWS lookup and the SNAT rewrite (address, port, both checksums) before the redirect
/// out of the uplink. The flow is made by the dataplane itself (a SYN out, the SYN-ACK back on
/// the uplink). A translated frame no longer passes the pod's anti-spoofing, so each run gets
/// a fresh copy: one run per BPF_PROG_RUN call, kernel-timed. The pod-to-pod frame is measured
/// the same way beside it, for a like-for-like comparison (the batched figure above amortises
/// the per-call timer).
#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it"]
fn pod_ingress_snat_established() {
    let runs: u32 = std::env::var("VNETD_BENCH_PROGRUN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let mut dp = dataplane();
    let from_pod = |flags| {
        tcp_frame(
            (HOST_A, MAC_A),
            (POD_A, POD_PORT),
            (INTERNET, SERVER_PORT),
            flags,
        )
    };

    let syn = run_on(
        &mut dp,
        programs::POD_TC_INGRESS,
        &from_pod(TCP_SYN),
        TEST_IFINDEX,
    );
    assert_eq!(syn.verdict, TC_ACT_REDIRECT, "the SYN leaves");
    assert_eq!(&syn.out[26..30], &NODE_IP, "with the node's address");
    let nat_port = u16::from_be_bytes([syn.out[34], syn.out[35]]);
    let synack = tcp_frame(
        (UPLINK_MAC, FABRIC_MAC),
        (INTERNET, SERVER_PORT),
        (NODE_IP, nat_port),
        TCP_SYN | TCP_ACK,
    );
    let back = run(&mut dp, programs::UPLINK_TC_INGRESS, &synack);
    assert_eq!(back.verdict, TC_ACT_REDIRECT, "the SYN-ACK reaches the pod");

    let segment = from_pod(TCP_ACK);
    let before = traffic(&dp, Path::PodToInternet);
    let wall = Instant::now();
    let snat_ns = pod_ingress_one_per_call(&mut dp, &segment, runs);
    let wall = wall.elapsed();
    assert_eq!(
        traffic(&dp, Path::PodToInternet) - before,
        u64::from(runs),
        "every run took the SNAT path"
    );

    let mut pod_to_pod = udp(MAC_A, POD_A, POD_B);
    pod_to_pod.resize(64, 0);
    let pod_to_pod_ns = pod_ingress_one_per_call(&mut dp, &pod_to_pod, runs);
    println!(
        "vnetd-bench program=pod_ingress_snat runs={runs} ns_per_run={:.1} \
         wall_ns_per_run={:.1} pod_to_pod_one_per_call_ns_per_run={:.1}",
        snat_ns as f64 / f64::from(runs),
        wall.as_nanos() as f64 / f64::from(runs),
        pod_to_pod_ns as f64 / f64::from(runs),
    );
}
