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
use support::{
    HOST_B, MAC_A, MAC_B, NODE_IP, POD_A, POD_B, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_PASS_ON,
    TEST_IFINDEX, UPLINK_MAC, dataplane, dataplane_with_host_b, packets, route_the_vnet_directly,
    set_ttl, skb_ctx_on, udp,
};
use vnetd_common::{Path, programs};

/// Runs per BPF_PROG_RUN call: fewer than the 254 a TTL-255 frame can be forwarded.
const BATCH: u32 = 200;

/// Batches between two drains of the flow-log ring: 40 x 200 records of 72 bytes, about half
/// the ring.
const DRAIN_EVERY: u32 = 40;

/// Runs per benchmark: `VNETD_BENCH_PROGRUN_RUNS` (the bench's `--quick` lowers it), else
/// 1,000,000.
fn runs() -> u32 {
    std::env::var("VNETD_BENCH_PROGRUN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// The service tags of the fixture's VNet, 10.0.0.0/16.
fn fixture_tags() -> vnetd::compile::ServiceTags {
    let vnet = vec!["10.0.0.0/16".parse().unwrap()];
    vnetd::compile::ServiceTags {
        internet: vnetd::compile::prefix::complement(&vnet),
        virtual_network: vnet,
    }
}

/// Reads what the flow-log ring holds: the records taken.
fn drain(ring: &mut vnetd::dataplane::maps::FlowEventRing) -> u64 {
    std::iter::from_fn(|| ring.next_event()).count() as u64
}

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
    let runs = runs();
    let calls = runs.div_ceil(BATCH).max(1);
    // Pod B's host-veth MAC is pod A's MAC: see the module's comment.
    let mut dp = dataplane_with_host_b(MAC_A);
    let frame = frame();
    let mut out = vec![0u8; frame.len() + 256];
    // First with a route lookup per packet (a table with a route inside the VNet), then as the
    // agent sets up a subnet whose table routes the VNet locally (the common case): the
    // `pod_ingress` figure.
    for (program, direct) in [("pod_ingress_route_lookup", false), ("pod_ingress", true)] {
        if direct {
            route_the_vnet_directly(&mut dp, &[POD_A]);
        }
        let before = forwarded(&dp);
        let mut total_ns = 0u64;
        let wall = Instant::now();
        for _ in 0..calls {
            total_ns += redirect_batch(&mut dp, &frame, &mut out);
        }
        let wall = wall.elapsed();
        let done = u64::from(calls) * u64::from(BATCH);
        assert_eq!(
            forwarded(&dp) - before,
            done,
            "every run took the pod-to-pod path"
        );
        println!(
            "vnetd-bench program={program} runs={done} ns_per_run={:.1} wall_ns_per_run={:.1}",
            total_ns as f64 / done as f64,
            wall.as_nanos() as f64 / done as f64
        );
    }
}

/// What the node's stack sends into a pod (`pod_egress` on its host veth: the node's own
/// traffic, and Services kube-proxy translated): a UDP frame from the node to pod B, which has
/// no NSG, on a node without Services: finding the pod is most of the work.
#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it"]
fn pod_egress_node_to_pod() {
    let runs = runs();
    let calls = runs.div_ceil(BATCH).max(1);
    let mut dp = dataplane();
    let mut frame = packets::frame(
        (HOST_B, UPLINK_MAC),
        NODE_IP,
        POD_B,
        packets::UDP,
        packets::udp_segment(40000, 53, false),
    );
    frame.resize(64, 0);
    let ctx = skb_ctx_on(TEST_IFINDEX);
    let mut out = vec![0u8; frame.len() + 256];
    let mut total_ns = 0u64;
    for _ in 0..calls {
        let r = dp
            .classifier(programs::POD_TC_EGRESS)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: BATCH,
                ..Default::default()
            })
            .expect("BPF_PROG_RUN of pod_egress");
        assert_eq!(
            r.return_value,
            TC_PASS_ON,
            "drops: {:?}",
            dp.drops().unwrap()
        );
        total_ns += r.duration.as_nanos() as u64 * u64::from(BATCH);
    }
    let done = u64::from(calls) * u64::from(BATCH);
    let host_to_pod = dp.traffic().unwrap();
    let host_to_pod = host_to_pod.iter().find(|(p, _)| *p == Path::HostToPod);
    assert_eq!(
        host_to_pod.unwrap().1.packets,
        done,
        "every run was counted"
    );
    println!(
        "vnetd-bench program=pod_egress_node_to_pod runs={done} ns_per_run={:.1}",
        total_ns as f64 / done as f64
    );
}

/// Packets counted on the pod-to-pod path.
fn forwarded(dp: &vnetd::dataplane::Dataplane) -> u64 {
    dp.traffic()
        .unwrap()
        .into_iter()
        .find(|(p, _)| *p == Path::PodToPod)
        .unwrap()
        .1
        .packets
}

/// The cost of each stage on the path to the internet, one BPF_PROG_RUN per packet (the SNAT
/// rewrite changes the source the next run's anti-spoofing checks, so runs cannot repeat on
/// one skb): the same pod-to-pod frame as above, and a pod's UDP packet of an established,
/// masqueraded flow (route, conntrack lookup, rewrite with the checksum helpers). Both measured
/// the same way in the same run, so their difference is the NAT stage's cost.
#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it"]
fn pod_ingress_snat_established() {
    let runs = runs().clamp(1000, 200_000);
    let mut dp = dataplane_with_host_b(MAC_A);
    route_the_vnet_directly(&mut dp, &[POD_A]);
    let mut internet = udp(MAC_A, POD_A, [198, 51, 100, 10]);
    internet.resize(64, 0);
    let frames = [
        ("pod_ingress_single", frame(), Path::PodToPod),
        (
            "pod_ingress_snat_established",
            internet,
            Path::PodToInternet,
        ),
    ];
    let mut out = vec![0u8; 64 + 256];
    for (name, frame, path) in frames {
        let mut total_ns = 0u64;
        // The first run creates the flow; it is not counted.
        for i in 0..=runs {
            let r = dp
                .classifier(programs::POD_TC_INGRESS)
                .unwrap()
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&support::skb_ctx_on(support::TEST_IFINDEX)),
                    ..Default::default()
                })
                .expect("BPF_PROG_RUN of pod_ingress");
            assert_eq!(
                r.return_value,
                TC_ACT_REDIRECT,
                "{name}: {:?}",
                dp.drops().unwrap()
            );
            if i > 0 {
                total_ns += r.duration.as_nanos() as u64;
            }
        }
        let taken = dp
            .traffic()
            .unwrap()
            .into_iter()
            .find(|(p, _)| *p == path)
            .unwrap()
            .1
            .packets;
        assert!(taken > u64::from(runs), "{name} took its path");
        println!(
            "vnetd-bench program={name} runs={runs} ns_per_run={:.1}",
            total_ns as f64 / f64::from(runs)
        );
    }
}

/// The NSG stage's cost against the number of rules. A flow's first packet is classified; an
/// allowed flow then has entries and its later packets are not. Runs repeat on one skb, so:
/// - the first-packet cost is measured on a flow the NSG *denies* (no entry is made, every run
///   is classified), decided by the last of N rules (the classifier's worst case: the AND
///   scans every word of the bitmaps up to it);
/// - the established-flow cost on a flow the default rules allow (its first run makes the
///   entries, every later run finds them).
///
/// A denied first packet writes a flow-log record: the ring is drained between batches, as the
/// agent reads it (a full ring skips the record and is cheaper; see the next benchmark).
#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it"]
fn pod_ingress_with_nsg_rules() {
    use vnetd::{
        compile::nsg::compile_nsgs,
        dataplane::{Dataplane, maps::nsg, tables::TableStore},
        spec::{
            Access, AddressPrefix, Direction, NetworkSecurityGroup, PortRange, Protocol,
            SecurityRule,
        },
    };
    let runs = runs();
    let calls = runs.div_ceil(BATCH).max(1);
    let tags = fixture_tags();
    let mut dp = dataplane_with_host_b(MAC_A);
    route_the_vnet_directly(&mut dp, &[POD_A]);
    let mut ring = dp.flow_event_ring().unwrap();
    // UDP to pod B's port 53: denied by the last rule. Ports 54 and up: allowed by the
    // defaults (one port per rule count: each is a new flow).
    let denied = frame();
    let mut allowed = frame();
    allowed[37] = 54;
    let mut out = vec![0u8; denied.len() + 256];
    let rule = |i: u32, last: bool| SecurityRule {
        name: format!("r{i}"),
        description: None,
        priority: 100 + i,
        direction: Direction::Outbound,
        access: Access::Deny,
        protocol: if last { Protocol::Udp } else { Protocol::Tcp },
        source_address_prefixes: vec![AddressPrefix::Any],
        source_port_ranges: vec![PortRange::ANY],
        destination_address_prefixes: vec![AddressPrefix::Prefix(
            std::net::Ipv4Addr::from(if last {
                u32::from_be_bytes(POD_B)
            } else {
                0xac10_0000 + i
            })
            .into(),
        )],
        destination_port_ranges: vec![PortRange::single(if last { 53 } else { 1000 + i as u16 })],
    };
    let no_nsg = batches(&mut dp, &allowed, &mut out, calls, TC_ACT_REDIRECT);
    println!(
        "vnetd-bench program=pod_ingress_nsg nsg_rules=0 classified=false runs={} ns_per_run={:.1}",
        calls * BATCH,
        no_nsg
    );
    for (id, rules) in [(1u32, 1u32), (2, 10), (3, 100), (4, 1000)] {
        let group = NetworkSecurityGroup {
            name: format!("bench-{rules}"),
            security_rules: (0..rules).map(|i| rule(i, i + 1 == rules)).collect(),
        };
        let tables = compile_nsgs(&[group], &tags).unwrap();
        let outbound = tables.classifier(2).unwrap();
        TableStore::write(&mut dp, &[(id, &nsg::entries(outbound))]).unwrap();
        let mut ep = dp.endpoints().unwrap()[&POD_A.into()];
        ep.nsg_out_subnet = id;
        dp.put_endpoint(POD_A.into(), ep).unwrap();
        let hits_before = hits(&dp, id);
        // A reader keeps up (as the agent does): each denied first packet writes its record.
        let mut first_ns = 0u64;
        for call in 0..calls {
            first_ns += batch(&mut dp, &denied, &mut out, TC_ACT_SHOT);
            if call % DRAIN_EVERY == DRAIN_EVERY - 1 {
                drain(&mut ring);
            }
        }
        drain(&mut ring);
        let first = first_ns as f64 / (f64::from(calls) * f64::from(BATCH));
        let done = u64::from(calls) * u64::from(BATCH);
        assert_eq!(
            hits(&dp, id) - hits_before,
            done,
            "every run was classified"
        );
        println!(
            "vnetd-bench program=pod_ingress_nsg nsg_rules={rules} classified=true runs={done} ns_per_run={first:.1}"
        );
        allowed[37] = 54 + id as u8;
        // The flow's later packets before it is answered (still in NEW_FLOWS: FLOWS is looked
        // up first, in vain), then, once pod B has answered and A sent again, assured (in
        // FLOWS): an established flow's packets.
        let unassured = batches(&mut dp, &allowed, &mut out, calls, TC_ACT_REDIRECT);
        println!(
            "vnetd-bench program=pod_ingress_nsg_unassured nsg_rules={rules} runs={done} ns_per_run={unassured:.1}"
        );
        let mut answer = udp(MAC_B, POD_B, POD_A);
        answer.resize(64, 0);
        set_ttl(&mut answer, 255);
        answer[34..36].copy_from_slice(&allowed[36..38]);
        answer[36..38].copy_from_slice(&allowed[34..36]);
        batch_of(&mut dp, &answer, &mut out, 1, TC_ACT_REDIRECT);
        let established = batches(&mut dp, &allowed, &mut out, calls, TC_ACT_REDIRECT);
        assert_eq!(
            hits(&dp, id) - hits_before - done,
            1,
            "only the allowed flow's first packet was classified"
        );
        println!(
            "vnetd-bench program=pod_ingress_nsg_established nsg_rules={rules} runs={done} ns_per_run={established:.1}"
        );
    }

    fn hits(dp: &Dataplane, id: u32) -> u64 {
        dp.nsg_hits()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.classifier == id)
            .map(|(_, n)| n)
            .sum()
    }
}

/// What a flow-log reader that is away costs the dataplane: nothing waits for it. The first
/// packet of a flow an NSG denies (UDP to pod B's port 53, denied by the only rule of pod A's
/// outbound NSG) writes a record to FLOW_EVENTS on every run; measured as
/// [`pod_ingress_pod_to_pod`] is, with the ring drained (a reader keeping up: emptied every
/// `DRAIN_EVERY` batches, between timed runs, so the ring also passes the wake-up threshold)
/// and with the ring full (no reader: each record is counted in FLOW_EVENTS_LOST instead), in
/// alternating rounds.
#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it"]
fn pod_ingress_denied_flow_log_ring_drained_and_full() {
    use vnetd::{
        compile::nsg::compile_nsgs,
        dataplane::{maps::nsg, tables::TableStore},
        spec::{
            Access, AddressPrefix, Direction, NetworkSecurityGroup, PortRange, Protocol,
            SecurityRule,
        },
    };
    /// Rounds of the two states, alternating.
    const ROUNDS: u32 = 10;
    let runs = runs();
    let calls = runs.div_ceil(BATCH).max(1);
    let tags = fixture_tags();
    let mut dp = dataplane_with_host_b(MAC_A);
    let deny_dns = NetworkSecurityGroup {
        name: "bench-deny".into(),
        security_rules: vec![SecurityRule {
            name: "deny-dns-out".into(),
            description: None,
            priority: 100,
            direction: Direction::Outbound,
            access: Access::Deny,
            protocol: Protocol::Udp,
            source_address_prefixes: vec![AddressPrefix::Any],
            source_port_ranges: vec![PortRange::ANY],
            destination_address_prefixes: vec![AddressPrefix::Prefix(
                std::net::Ipv4Addr::from(POD_B).into(),
            )],
            destination_port_ranges: vec![PortRange::single(53)],
        }],
    };
    let tables = compile_nsgs(&[deny_dns], &tags).unwrap();
    TableStore::write(
        &mut dp,
        &[(1, &nsg::entries(tables.classifier(2).unwrap()))],
    )
    .unwrap();
    let mut ep = dp.endpoints().unwrap()[&POD_A.into()];
    ep.nsg_out_subnet = 1;
    dp.put_endpoint(POD_A.into(), ep).unwrap();
    let denied = frame();
    let mut out = vec![0u8; denied.len() + 256];
    let mut ring = dp.flow_event_ring().unwrap();
    drain(&mut ring);

    // The two states alternate in ROUNDS rounds, so that neither has the machine's quieter
    // moments or the caches' warm-up to itself.
    let per_round = calls.div_ceil(ROUNDS).max(DRAIN_EVERY);
    let done = u64::from(per_round) * u64::from(ROUNDS) * u64::from(BATCH);
    let room = u64::from(vnetd_common::maps::FLOW_EVENTS_BYTES) / u64::from(BATCH);
    let (mut drained_ns, mut full_ns, mut records, mut lost) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..ROUNDS {
        let lost_before = dp.flow_records_lost().unwrap();
        for call in 0..per_round {
            drained_ns += batch(&mut dp, &denied, &mut out, TC_ACT_SHOT);
            if call % DRAIN_EVERY == DRAIN_EVERY - 1 {
                records += drain(&mut ring);
            }
        }
        records += drain(&mut ring);
        assert_eq!(dp.flow_records_lost().unwrap(), lost_before, "none lost");

        // Fill the ring (untimed): runs until one record is lost.
        for _ in 0..room {
            if dp.flow_records_lost().unwrap() > lost_before {
                break;
            }
            batch(&mut dp, &denied, &mut out, TC_ACT_SHOT);
        }
        let lost_before = dp.flow_records_lost().unwrap();
        for _ in 0..per_round {
            full_ns += batch(&mut dp, &denied, &mut out, TC_ACT_SHOT);
        }
        lost += dp.flow_records_lost().unwrap() - lost_before;
        drain(&mut ring);
    }
    assert_eq!(records, done, "a record every run, all taken by the reader");
    assert_eq!(
        lost, done,
        "with the ring full every run's record was lost, none waited for"
    );
    println!(
        "vnetd-bench program=pod_ingress_nsg_denied_ring_drained runs={done} ns_per_run={:.1}",
        drained_ns as f64 / done as f64
    );
    println!(
        "vnetd-bench program=pod_ingress_nsg_denied_ring_full runs={done} ns_per_run={:.1} lost={lost}",
        full_ns as f64 / done as f64
    );
}

/// `calls` batches of `frame` through `pod_ingress`, each run ending in `verdict`: the mean
/// kernel-timed nanoseconds per run.
fn batches(
    dp: &mut vnetd::dataplane::Dataplane,
    frame: &[u8],
    out: &mut [u8],
    calls: u32,
    verdict: u32,
) -> f64 {
    let mut total_ns = 0u64;
    for _ in 0..calls {
        total_ns += batch(dp, frame, out, verdict);
    }
    total_ns as f64 / (f64::from(calls) * f64::from(BATCH))
}

/// One BPF_PROG_RUN of `pod_ingress` on `frame`, [`BATCH`] times on one skb: the kernel-timed
/// nanoseconds of the whole batch. Every run must redirect (else the drops are shown).
fn redirect_batch(dp: &mut vnetd::dataplane::Dataplane, frame: &[u8], out: &mut [u8]) -> u64 {
    batch(dp, frame, out, TC_ACT_REDIRECT)
}

/// One BPF_PROG_RUN of `pod_ingress` on `frame`, [`BATCH`] times on one skb, whose verdict
/// must be `verdict` (else the drops are shown): the kernel-timed nanoseconds of the batch.
fn batch(dp: &mut vnetd::dataplane::Dataplane, frame: &[u8], out: &mut [u8], verdict: u32) -> u64 {
    batch_of(dp, frame, out, BATCH, verdict)
}

/// [`batch`] of `repeat` runs.
fn batch_of(
    dp: &mut vnetd::dataplane::Dataplane,
    frame: &[u8],
    out: &mut [u8],
    repeat: u32,
    verdict: u32,
) -> u64 {
    let r = dp
        .classifier(programs::POD_TC_INGRESS)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_RUN of pod_ingress");
    assert_eq!(
        r.return_value,
        verdict,
        "pod_ingress's verdict; drops: {:?}",
        dp.drops().unwrap()
    );
    r.duration.as_nanos() as u64 * u64::from(repeat)
}
