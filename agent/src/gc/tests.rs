//! The collector's pure parts: verdicts, totals, SNAT counts.
use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use vnetd_common::{Direction, Flow, FlowKey, FlowKind, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use super::*;
use crate::api::proto::SnatDestination;

const S: u64 = 1_000_000_000;
const NOW: u64 = 100_000 * S;

fn key(proto: u8) -> FlowKey {
    FlowKey {
        src_ip: [10, 0, 2, 10],
        dst_ip: [192, 0, 2, 1],
        src_port: 40000u16.to_be(),
        dst_port: 443u16.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn flow(direction: Direction, flags: u8, idle_s: u64) -> Flow {
    Flow {
        created_ns: NOW - 10_000 * S,
        last_seen_ns: NOW - idle_s * S,
        direction: direction as u8,
        tcp_flags_seen: flags,
        kind: FlowKind::PodSnat as u8,
        ..Flow::default()
    }
}

fn judge(proto: u8, original: (u8, u64), reply: (u8, u64)) -> Verdict {
    let t = Timeouts::new(Duration::from_secs(240));
    verdict(
        &key(proto),
        &flow(Direction::Original, original.0, original.1),
        Some(&flow(Direction::Reply, reply.0, reply.1)),
        NOW,
        &t,
    )
}

const EST: u8 = TCP_SYN | TCP_ACK;

#[test]
fn established_tcp_lives_for_the_idle_timeout() {
    assert_eq!(judge(IPPROTO_TCP, (EST, 239), (EST, 239)), Verdict::Keep);
    assert_eq!(
        judge(IPPROTO_TCP, (EST, 241), (EST, 241)),
        Verdict::Expired(GcReason::TcpEstablished)
    );
    // One direction still talking keeps the flow.
    assert_eq!(judge(IPPROTO_TCP, (EST, 5000), (EST, 1)), Verdict::Keep);
}

#[test]
fn half_open_tcp_expires_after_60_seconds() {
    assert_eq!(judge(IPPROTO_TCP, (TCP_SYN, 59), (0, 59)), Verdict::Keep);
    assert_eq!(
        judge(IPPROTO_TCP, (TCP_SYN, 61), (0, 61)),
        Verdict::Expired(GcReason::TcpSynSent)
    );
    assert_eq!(
        judge(IPPROTO_TCP, (TCP_SYN, 61), (EST, 61)),
        Verdict::Expired(GcReason::TcpSynReceived)
    );
}

#[test]
fn closing_and_closed_tcp_expire_after_120_and_10_seconds() {
    let fin = EST | TCP_FIN;
    assert_eq!(judge(IPPROTO_TCP, (fin, 119), (EST, 119)), Verdict::Keep);
    assert_eq!(
        judge(IPPROTO_TCP, (fin, 121), (EST, 121)),
        Verdict::Expired(GcReason::TcpClosing)
    );
    assert_eq!(judge(IPPROTO_TCP, (fin, 9), (fin, 9)), Verdict::Keep);
    assert_eq!(
        judge(IPPROTO_TCP, (fin, 11), (fin, 11)),
        Verdict::Expired(GcReason::TcpClosed)
    );
    assert_eq!(
        judge(IPPROTO_TCP, (EST, 11), (EST | TCP_RST, 11)),
        Verdict::Expired(GcReason::TcpClosed)
    );
}

#[test]
fn udp_follows_the_idle_timeout_and_icmp_30_seconds() {
    assert_eq!(judge(IPPROTO_UDP, (0, 239), (0, 300)), Verdict::Keep);
    assert_eq!(
        judge(IPPROTO_UDP, (0, 241), (0, 300)),
        Verdict::Expired(GcReason::Udp)
    );
    assert_eq!(judge(IPPROTO_ICMP, (0, 29), (0, 29)), Verdict::Keep);
    assert_eq!(
        judge(IPPROTO_ICMP, (0, 31), (0, 31)),
        Verdict::Expired(GcReason::Icmp)
    );
}

#[test]
fn the_idle_timeout_follows_the_spec() {
    let t = Timeouts::new(Duration::from_secs(30 * 60));
    let v = |idle_s| {
        verdict(
            &key(IPPROTO_TCP),
            &flow(Direction::Original, EST, idle_s),
            Some(&flow(Direction::Reply, EST, idle_s)),
            NOW,
            &t,
        )
    };
    assert_eq!(v(1799), Verdict::Keep);
    assert_eq!(v(1801), Verdict::Expired(GcReason::TcpEstablished));
}

#[test]
fn a_flow_without_its_sibling_is_an_orphan_after_the_grace() {
    let t = Timeouts::new(Duration::from_secs(240));
    let mut young = flow(Direction::Original, TCP_SYN, 0);
    young.created_ns = NOW - S;
    assert_eq!(
        verdict(&key(IPPROTO_TCP), &young, None, NOW, &t),
        Verdict::Keep,
        "the programs may be between the two inserts"
    );
    let old = flow(Direction::Original, EST, 0);
    assert_eq!(
        verdict(&key(IPPROTO_TCP), &old, None, NOW, &t),
        Verdict::Orphan
    );
}

/// NSG-only flows and flows the node's stack translated expire by the same per-protocol
/// timeouts as translated ones, and are reported under their own kind.
#[test]
fn nsg_and_host_stack_flows_expire_like_the_others_and_are_counted_by_kind() {
    let t = Timeouts::new(Duration::from_secs(240));
    for kind in [FlowKind::Nsg, FlowKind::HostStack] {
        let judge = |proto, flags, idle_s| {
            let mut original = flow(Direction::Original, flags, idle_s);
            // A SYN not answered yet: the reply direction has sent nothing.
            let reply_flags = if flags == TCP_SYN { 0 } else { flags };
            let mut reply = flow(Direction::Reply, reply_flags, idle_s);
            original.kind = kind as u8;
            reply.kind = kind as u8;
            verdict(&key(proto), &original, Some(&reply), NOW, &t)
        };
        assert_eq!(judge(IPPROTO_TCP, EST, 239), Verdict::Keep, "{kind:?}");
        assert_eq!(
            judge(IPPROTO_TCP, EST, 241),
            Verdict::Expired(GcReason::TcpEstablished),
            "{kind:?}"
        );
        assert_eq!(
            judge(IPPROTO_TCP, TCP_SYN, 61),
            Verdict::Expired(GcReason::TcpSynSent)
        );
        assert_eq!(judge(IPPROTO_UDP, 0, 241), Verdict::Expired(GcReason::Udp));
        assert_eq!(judge(IPPROTO_ICMP, 0, 29), Verdict::Keep);
        assert_eq!(judge(IPPROTO_ICMP, 0, 31), Verdict::Expired(GcReason::Icmp));
    }
    assert_eq!(kind_name(FlowKind::Nsg as u8), "nsg");
    assert_eq!(kind_name(FlowKind::HostStack as u8), "host_stack");
    assert_eq!(kind_name(200), "unknown");

    let shared = Conntrack::new(Duration::from_secs(240));
    let pass = GcPass {
        deleted: BTreeMap::new(),
        seen: 8,
        live: BTreeMap::from([("nsg", 6), ("host_stack", 2)]),
        ..GcPass::default()
    };
    shared.record(8, &pass);
    let entries: BTreeMap<String, u64> = shared.report(vec![]).entries.into_iter().collect();
    assert_eq!(entries["nsg"], 6);
    assert_eq!(entries["host_stack"], 2);
    assert_eq!(entries["pod_snat"], 0);
}

#[test]
fn a_clock_behind_the_entries_keeps_them() {
    let mut f = flow(Direction::Original, EST, 0);
    f.last_seen_ns = NOW + S;
    f.created_ns = NOW + S;
    let t = Timeouts::new(Duration::from_secs(240));
    assert_eq!(
        verdict(&key(IPPROTO_TCP), &f, Some(&f), NOW, &t),
        Verdict::Keep
    );
    assert_eq!(orphan_verdict(&f, NOW), Verdict::Keep);
}

#[test]
fn evictions_are_created_minus_expired_minus_live_since_the_first_pass() {
    let shared = Conntrack::new(Duration::from_secs(240));
    // First pass: 100 created before this agent, 10 entries in the table, 2 orphans deleted.
    let first = GcPass {
        deleted: BTreeMap::from([(GcReason::Orphan, 2)]),
        seen: 10,
        live: BTreeMap::from([("pod_snat", 8)]),
        ..GcPass::default()
    };
    shared.record(100, &first);
    assert_eq!(shared.report(vec![]).evictions, 2, "the orphans' entries");
    // 50 more created; 20 expired; 30 live: 10 + 50 - 20 - 30 = 10 gone, 2 of them the
    // orphans already counted, so 8 evicted since, 10 in all.
    let second = GcPass {
        deleted: BTreeMap::from([(GcReason::TcpEstablished, 20)]),
        seen: 50,
        live: BTreeMap::from([("pod_snat", 20), ("host", 10)]),
        ..GcPass::default()
    };
    shared.record(150, &second);
    let report = shared.report(vec![]);
    assert_eq!(report.evictions, 10);
    assert_eq!(
        report.entries,
        [
            ("pod_snat".to_string(), 20),
            ("host".to_string(), 10),
            ("public_inbound".to_string(), 0),
            ("nsg".to_string(), 0),
            ("host_stack".to_string(), 0),
        ]
    );
    // A pass that sees entries created after its counter read never lowers the count.
    let racing = GcPass {
        deleted: BTreeMap::new(),
        seen: 40,
        live: BTreeMap::from([("pod_snat", 40)]),
        ..GcPass::default()
    };
    shared.record(150, &racing);
    assert_eq!(shared.report(vec![]).evictions, 10);
    let deleted: BTreeMap<String, u64> = shared.report(vec![]).gc_deleted.into_iter().collect();
    assert_eq!(deleted["orphan"], 2);
    assert_eq!(deleted["tcp_established"], 20);
    assert_eq!(shared.report(vec![]).gc_passes, 3);
}

/// A Reply entry of a flow from `remote:rport` back to `nat:port` (the key the port
/// allocator makes unique), of kind `kind`.
fn reply_entry(
    nat: [u8; 4],
    port: u16,
    remote: [u8; 4],
    rport: u16,
    proto: u8,
    kind: FlowKind,
) -> (FlowKey, Flow) {
    let key = FlowKey {
        src_ip: remote,
        dst_ip: nat,
        src_port: rport.to_be(),
        dst_port: port.to_be(),
        proto,
        _pad: [0; 3],
    };
    let mut entry = flow(Direction::Reply, 0, 0);
    entry.kind = kind as u8;
    (key, entry)
}

const NODE: [u8; 4] = [10, 0, 0, 4];
const PUBLIC: [u8; 4] = [20, 1, 2, 3];
const WEB: [u8; 4] = [198, 51, 100, 10];

/// Ports are counted per destination (NAT address, remote address and port, protocol),
/// from the Reply entries of masqueraded flows only: pods' and the node's own.
#[test]
fn snat_ports_are_counted_per_destination_from_masqueraded_reply_entries() {
    let mut entries = Vec::new();
    // Five pod flows and two of the node's own to WEB:443/tcp through the node's address.
    for port in 40000..40005 {
        entries.push(reply_entry(
            NODE,
            port,
            WEB,
            443,
            IPPROTO_TCP,
            FlowKind::PodSnat,
        ));
    }
    for port in 40005..40007 {
        entries.push(reply_entry(
            NODE,
            port,
            WEB,
            443,
            IPPROTO_TCP,
            FlowKind::Host,
        ));
    }
    // Other destinations: another port, another protocol, another NAT address.
    for port in 40000..40003 {
        entries.push(reply_entry(
            NODE,
            port,
            WEB,
            80,
            IPPROTO_TCP,
            FlowKind::PodSnat,
        ));
    }
    entries.push(reply_entry(
        NODE,
        40000,
        WEB,
        443,
        IPPROTO_UDP,
        FlowKind::PodSnat,
    ));
    for port in 40000..40004 {
        entries.push(reply_entry(
            PUBLIC,
            port,
            WEB,
            443,
            IPPROTO_TCP,
            FlowKind::PodSnat,
        ));
    }
    // Not SNAT ports: an Original entry, flows nothing masqueraded.
    let (key, mut original) = reply_entry(NODE, 40010, WEB, 443, IPPROTO_TCP, FlowKind::PodSnat);
    original.direction = Direction::Original as u8;
    entries.push((key, original));
    for kind in [FlowKind::Nsg, FlowKind::HostStack, FlowKind::PublicInbound] {
        entries.push(reply_entry(NODE, 40020, WEB, 443, IPPROTO_TCP, kind));
    }

    let usage = snat_usage(entries.iter().map(|(k, f)| (k, f)));
    assert_eq!(usage.by_nat_ip, BTreeMap::from([(NODE, 11), (PUBLIC, 4)]));
    assert_eq!(usage.total(), 15);
    assert_eq!(
        usage.busiest,
        Some((
            SnatDestinationKey {
                nat_ip: NODE,
                remote_ip: WEB,
                remote_port: 443,
                proto: IPPROTO_TCP
            },
            7
        ))
    );
    assert_eq!(snat_usage(std::iter::empty()), SnatUsage::default());
}

/// The report lists the node's address even when idle, the range's span as each
/// destination's capacity, the busiest destination by name, and the failures given.
#[test]
fn the_snat_report_sets_the_busiest_destination_against_the_range() {
    let shared = Conntrack::new(Duration::from_secs(240));
    let idle = shared.snat_report((40000, 40015), Ipv4Addr::from(NODE), 0);
    assert_eq!(idle.ports_per_destination, 16);
    assert_eq!(idle.ports_in_use, 0);
    assert_eq!(idle.ports_in_use_by_nat_ip, [(Ipv4Addr::from(NODE), 0)]);
    assert_eq!(idle.busiest_destination, None);

    let entries: Vec<_> = (40000..40016)
        .map(|port| reply_entry(PUBLIC, port, WEB, 53, IPPROTO_UDP, FlowKind::PodSnat))
        .collect();
    let pass = GcPass {
        seen: 32,
        snat: snat_usage(entries.iter().map(|(k, f)| (k, f))),
        ..GcPass::default()
    };
    shared.record(32, &pass);
    let full = shared.snat_report((40000, 40015), Ipv4Addr::from(NODE), 3);
    assert_eq!(full.ports_in_use, 16);
    assert_eq!(
        full.ports_in_use_by_nat_ip,
        [(Ipv4Addr::from(NODE), 0), (Ipv4Addr::from(PUBLIC), 16)]
    );
    assert_eq!(
        full.busiest_destination,
        Some(SnatDestination {
            nat_ip: PUBLIC.into(),
            remote_ip: WEB.into(),
            remote_port: 53,
            protocol: "udp".into(),
            ports_in_use: 16,
        })
    );
    assert_eq!(full.allocation_failures, 3);
    assert_eq!(full.port_range, (40000, 40015));
    assert_eq!(
        shared
            .snat_report((32768, 65535), Ipv4Addr::from(NODE), 0)
            .ports_per_destination,
        32768
    );
    assert_eq!(
        shared
            .snat_report((0, 0), Ipv4Addr::from(NODE), 0)
            .ports_per_destination,
        0,
        "no range, no port"
    );
}
