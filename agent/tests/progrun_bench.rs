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
use std::{net::Ipv4Addr, time::Instant};

use aya::programs::{TestRun as _, TestRunOptions};
use ipnet::Ipv4Net;
use vnetd::dataplane::Dataplane;
use vnetd_common::{Endpoint, NextHop, NodeConfig, Path, Route, programs};

const TC_ACT_REDIRECT: u32 = 7;
/// In BPF_PROG_RUN a TC program's skb comes from the loopback device (ifindex 1).
const TEST_IFINDEX: u32 = 1;
/// Runs per BPF_PROG_RUN call: fewer than the 254 a TTL-255 frame can be forwarded.
const BATCH: u32 = 200;

const POD_A: [u8; 4] = [10, 0, 2, 10];
const POD_B: [u8; 4] = [10, 0, 2, 11];
const MAC_A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0a];
const HOST_A: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0b];
/// Pod A's MAC: see the module's comment.
const HOST_B: [u8; 6] = MAC_A;

/// A 64-byte frame from pod A to pod B: Ethernet, IPv4 (TTL 255, valid checksum), UDP.
fn frame() -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&HOST_A);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let payload = 64 - 14 - 20 - 8;
    let total = (20 + 8 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 255, 17, 0, 0]);
    f.extend_from_slice(&POD_A);
    f.extend_from_slice(&POD_B);
    f.extend_from_slice(&[0x30, 0x39, 0x13, 0x89]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(64, 0);
    let mut sum: u32 = f[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f
}

/// The programs with pods A and B on "the test veth" and the VNet local.
fn dataplane() -> Dataplane {
    let mut dp = Dataplane::load_unpinned().expect("programs load and verify");
    dp.set_node(NodeConfig {
        uplink_ifindex: TEST_IFINDEX,
        primary_ip: [10, 0, 0, 4],
        uplink_mac: [0x02, 0, 10, 0, 0, 4],
        _pad: [0; 2],
    })
    .unwrap();
    for (ip, pod_mac, host_mac) in [(POD_A, MAC_A, HOST_A), (POD_B, MAC_B, HOST_B)] {
        dp.put_endpoint(
            Ipv4Addr::from(ip),
            Endpoint {
                host_ifindex: TEST_IFINDEX,
                route_table: 1,
                pod_mac,
                host_mac,
            },
        )
        .unwrap();
    }
    let route = |hop: NextHop| Route {
        next_hop: hop as u32,
        next_hop_ip: [0; 4],
    };
    let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
    dp.sync_routes(
        &[
            ((1, net("10.0.0.0/16")), route(NextHop::VnetLocal)),
            ((1, net("0.0.0.0/0")), route(NextHop::Internet)),
        ]
        .into(),
    )
    .unwrap();
    dp
}

#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it"]
fn pod_ingress_pod_to_pod() {
    let runs: u32 = std::env::var("VNETD_BENCH_PROGRUN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let calls = runs.div_ceil(BATCH).max(1);
    let mut dp = dataplane();
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
