//! The conntrack collector on a real FLOWS (an unpinned dataplane, nothing attached): entries
//! with old and fresh timestamps go in, one pass runs, and what is left is checked. Needs root
//! (CAP_BPF).
use std::{collections::BTreeMap, time::Duration};

use vnetd::{
    dataplane::Dataplane,
    gc::{self, GcReason, Timeouts},
};
use vnetd_common::{Direction, Flow, FlowKey, FlowKind, TCP_ACK, TCP_RST, TCP_SYN};

const S: u64 = 1_000_000_000;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const EST: u8 = TCP_SYN | TCP_ACK;

fn key(n: u8, proto: u8, reply: bool) -> FlowKey {
    let (pod, remote) = ([10, 0, 2, n], [192, 0, 2, n]);
    let (pod_port, remote_port) = (40000u16 + u16::from(n), 443u16);
    if reply {
        FlowKey {
            src_ip: remote,
            dst_ip: [10, 0, 0, 4],
            src_port: remote_port.to_be(),
            dst_port: pod_port.to_be(),
            proto,
            _pad: [0; 3],
        }
    } else {
        FlowKey {
            src_ip: pod,
            dst_ip: remote,
            src_port: pod_port.to_be(),
            dst_port: remote_port.to_be(),
            proto,
            _pad: [0; 3],
        }
    }
}

/// A flow's two entries: (key, entry) for the Original and the Reply direction, both last
/// seen `idle_s` seconds before `now`, created an hour before.
fn flow(n: u8, proto: u8, flags: (u8, u8), idle_s: u64, now: u64) -> [(FlowKey, Flow); 2] {
    let entry = |reply: bool, flags: u8| Flow {
        created_ns: now.saturating_sub(3600 * S),
        last_seen_ns: now.saturating_sub(idle_s * S),
        sibling: key(n, proto, !reply),
        kind: FlowKind::PodSnat as u8,
        direction: if reply {
            Direction::Reply as u8
        } else {
            Direction::Original as u8
        },
        tcp_flags_seen: flags,
        ..Flow::default()
    };
    [
        (key(n, proto, false), entry(false, flags.0)),
        (key(n, proto, true), entry(true, flags.1)),
    ]
}

#[test]
fn one_pass_expires_idle_flows_and_orphans_and_keeps_the_rest() {
    let dp = Dataplane::load_unpinned().expect("programs load");
    let mut maps = dp.conntrack_maps().expect("a handle on FLOWS");
    // The pass is given its clock: an hour ahead of the real one, so "an hour ago" exists on a
    // machine just booted.
    let now = gc::monotonic_ns() + 3600 * S;
    let [fresh_tcp_o, fresh_tcp_r] = flow(1, TCP, (EST, EST), 10, now);
    let [idle_tcp_o, idle_tcp_r] = flow(2, TCP, (EST, EST), 300, now);
    let [udp_o, udp_r] = flow(3, UDP, (0, 0), 100, now);
    let [icmp_o, icmp_r] = flow(4, ICMP, (0, 0), 40, now);
    let [reset_o, reset_r] = flow(5, TCP, (EST, EST | TCP_RST), 20, now);
    // Orphans: one Original and one Reply whose siblings the LRU took.
    let [orphan_o, _] = flow(6, TCP, (EST, EST), 1, now);
    let [_, orphan_r] = flow(7, UDP, (0, 0), 1, now);
    // A Reply entry just inserted, its Original not yet: left alone.
    let [_, (young_key, mut young)] = flow(8, TCP, (TCP_SYN, 0), 0, now);
    young.created_ns = now;
    let all = [
        fresh_tcp_o,
        fresh_tcp_r,
        idle_tcp_o,
        idle_tcp_r,
        udp_o,
        udp_r,
        icmp_o,
        icmp_r,
        reset_o,
        reset_r,
        orphan_o,
        orphan_r,
        (young_key, young),
    ];
    for (k, f) in &all {
        maps.insert(k, f).unwrap();
    }

    let timeouts = Timeouts::new(Duration::from_secs(240));
    let pass = gc::gc_pass(&mut maps, now, &timeouts).unwrap();
    assert_eq!(pass.seen, all.len() as u64);
    assert_eq!(
        pass.deleted,
        BTreeMap::from([
            (GcReason::TcpEstablished, 2),
            (GcReason::TcpClosed, 2),
            (GcReason::Icmp, 2),
            (GcReason::Orphan, 2),
        ])
    );
    let left: Vec<FlowKey> = {
        let mut keys: Vec<FlowKey> = maps.flows().unwrap().into_keys().collect();
        keys.sort_by_key(|k| (k.src_ip, k.dst_ip, k.proto));
        keys
    };
    let mut expected = vec![fresh_tcp_o.0, fresh_tcp_r.0, udp_o.0, udp_r.0, young_key];
    expected.sort_by_key(|k| (k.src_ip, k.dst_ip, k.proto));
    assert_eq!(left, expected);
    assert_eq!(pass.live, BTreeMap::from([("pod_snat", 5)]));

    // Nothing more to do a moment later.
    let again = gc::gc_pass(&mut maps, now, &timeouts).unwrap();
    assert!(again.deleted.is_empty(), "{:?}", again.deleted);
    assert_eq!(again.live_total(), 5);
}

/// The programs' counters are read summed over CPUs, one per ConntrackStat, by name.
#[test]
fn conntrack_counters_are_read_by_name() {
    let dp = Dataplane::load_unpinned().expect("programs load");
    let stats = dp.conntrack_stats().unwrap();
    let names: Vec<&str> = stats.iter().map(|(s, _)| s.name()).collect();
    assert_eq!(
        names,
        [
            "entries_created",
            "port_probes",
            "insert_races",
            "host_ports_remapped",
            "flows_assured",
            "assured_table_full",
            "assured_quota_exceeded",
        ]
    );
    assert!(stats.iter().all(|(_, n)| *n == 0), "{stats:?}");
    let maps = dp.conntrack_maps().unwrap();
    assert_eq!(
        maps.stats().unwrap(),
        stats,
        "the collector's handle reads the same map"
    );
}
