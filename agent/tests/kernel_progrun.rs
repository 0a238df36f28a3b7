//! BPF_PROG_RUN tests: the programs, loaded into the kernel, run on crafted packets; we check
//! verdicts, rewritten bytes and counters. Needs root (CAP_BPF). The maps are private to each
//! test (nothing pinned), so the tests are independent.
mod support;

use std::collections::BTreeMap;

use aya::programs::{TestRun as _, TestRunOptions};
use ipnet::Ipv4Net;
use support::*;
use vnetd::dataplane::Dataplane;
use vnetd_common::{DropReason, NextHop, Path, Route, programs};

struct Run {
    verdict: u32,
    out: Vec<u8>,
}

fn run(dp: &mut Dataplane, program: &str, data: &[u8]) -> Run {
    let mut out = vec![0u8; data.len() + 256];
    let result = {
        let opts = TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            ..Default::default()
        };
        if program == programs::UPLINK_XDP {
            dp.xdp(program).unwrap().test_run(opts)
        } else {
            dp.classifier(program).unwrap().test_run(opts)
        }
    }
    .unwrap_or_else(|e| panic!("BPF_PROG_RUN of {program} on {} bytes: {e}", data.len()));
    out.truncate(result.data_size_out as usize);
    Run {
        verdict: result.return_value,
        out,
    }
}

fn traffic(dp: &Dataplane, path: Path) -> u64 {
    dp.traffic()
        .unwrap()
        .into_iter()
        .find(|(p, _)| *p == path)
        .unwrap()
        .1
        .packets
}

fn drops(dp: &Dataplane, reason: DropReason) -> u64 {
    dp.drops()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .unwrap()
        .1
}

#[test]
fn uplink_answers_arp_for_its_pods_in_place() {
    let mut dp = dataplane();
    let asker_ip = [10, 0, 0, 5];
    let r = run(
        &mut dp,
        programs::UPLINK_XDP,
        &arp_request(FABRIC_MAC, asker_ip, POD_B),
    );
    assert_eq!(r.verdict, XDP_TX);
    assert_eq!(&r.out[0..6], &FABRIC_MAC, "to the asker");
    assert_eq!(&r.out[6..12], &UPLINK_MAC, "from the uplink");
    assert_eq!(&r.out[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&r.out[22..28], &UPLINK_MAC, "pod B is at the uplink's MAC");
    assert_eq!(&r.out[28..32], &POD_B);
    assert_eq!(&r.out[32..38], &FABRIC_MAC);
    assert_eq!(&r.out[38..42], &asker_ip);
    assert_eq!(traffic(&dp, Path::ArpReply), 1);
}

#[test]
fn uplink_passes_arp_for_others_and_drops_runts() {
    let mut dp = dataplane();
    let r = run(
        &mut dp,
        programs::UPLINK_XDP,
        &arp_request(FABRIC_MAC, [10, 0, 0, 5], NODE_IP),
    );
    assert_eq!(
        r.verdict, XDP_PASS,
        "the node's own address is the kernel's to answer"
    );
    // The kernel refuses to run XDP on less than an Ethernet header: truncate the ARP instead.
    let runt = arp_request(FABRIC_MAC, [10, 0, 0, 5], POD_A);
    let r = run(&mut dp, programs::UPLINK_XDP, &runt[..20]);
    assert_eq!(
        r.verdict, XDP_DROP,
        "a truncated ARP is never answered nor passed"
    );
    assert_eq!(drops(&dp, DropReason::Malformed), 1);
    assert_eq!(traffic(&dp, Path::UplinkIn), 2);
}

#[test]
fn uplink_tc_delivers_into_a_local_pod() {
    let mut dp = dataplane();
    let r = run(
        &mut dp,
        programs::UPLINK_TC_INGRESS,
        &udp(FABRIC_MAC, [10, 0, 2, 50], POD_A),
    );
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(&r.out[0..6], &MAC_A, "to the pod's MAC");
    assert_eq!(&r.out[6..12], &HOST_A, "from its gateway (host veth)");
    assert_eq!(traffic(&dp, Path::UplinkToPod), 1);
    let r = run(
        &mut dp,
        programs::UPLINK_TC_INGRESS,
        &udp(FABRIC_MAC, [10, 0, 2, 50], NODE_IP),
    );
    assert_eq!(
        r.verdict, TC_ACT_OK,
        "the node's own traffic goes to its stack"
    );
}

#[test]
fn pod_to_pod_is_redirected_with_rewritten_macs() {
    let mut dp = dataplane();
    let sent = udp(MAC_A, POD_A, POD_B);
    let r = run(&mut dp, programs::POD_TC_INGRESS, &sent);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(&r.out[0..6], &MAC_B);
    assert_eq!(&r.out[6..12], &HOST_B);
    assert_forwarded(&sent, &r.out);
    assert_eq!(traffic(&dp, Path::PodToPod), 1);
}

#[test]
fn routed_packets_lose_one_ttl_and_expire() {
    let mut dp = dataplane();
    let sent = udp(FABRIC_MAC, [10, 0, 2, 50], POD_A);
    let r = run(&mut dp, programs::UPLINK_TC_INGRESS, &sent);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_forwarded(&sent, &r.out);
    // TTL 0xff -> 0xfe exercises the checksum's end-around carry differently than 64 -> 63.
    let mut sent = udp(MAC_A, POD_A, [10, 0, 2, 50]);
    set_ttl(&mut sent, 0xff);
    let r = run(&mut dp, programs::POD_TC_INGRESS, &sent);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_forwarded(&sent, &r.out);

    let mut last_hop = udp(MAC_A, POD_A, POD_B);
    last_hop[22] = 1;
    assert_eq!(
        run(&mut dp, programs::POD_TC_INGRESS, &last_hop).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, DropReason::TtlExceeded), 1);
    let to_node = {
        let mut f = udp(MAC_A, POD_A, NODE_IP);
        f[22] = 1;
        f
    };
    assert_eq!(
        run(&mut dp, programs::POD_TC_INGRESS, &to_node).verdict,
        TC_ACT_OK,
        "the node itself is not a hop away"
    );
}

#[test]
fn pod_traffic_follows_its_route_table() {
    let mut dp = dataplane();
    let to = |dp: &mut Dataplane, dst: [u8; 4]| {
        run(dp, programs::POD_TC_INGRESS, &udp(MAC_A, POD_A, dst)).verdict
    };
    assert_eq!(to(&mut dp, NODE_IP), TC_ACT_OK, "to its node");
    assert_eq!(traffic(&dp, Path::PodToHost), 1);
    assert_eq!(
        to(&mut dp, [10, 0, 2, 50]),
        TC_ACT_REDIRECT,
        "VnetLocal: out of the uplink"
    );
    assert_eq!(
        to(&mut dp, [192, 0, 2, 1]),
        TC_ACT_REDIRECT,
        "VirtualAppliance"
    );
    assert_eq!(to(&mut dp, [198, 51, 100, 10]), TC_ACT_REDIRECT, "Internet");
    assert_eq!(traffic(&dp, Path::PodToUplink), 3);
    assert_eq!(to(&mut dp, [10, 99, 1, 1]), TC_ACT_SHOT, "None");
    assert_eq!(drops(&dp, DropReason::RouteNone), 1);
}

#[test]
fn spoofed_pod_traffic_is_dropped_and_counted() {
    let mut dp = dataplane();
    let cases = [
        udp(MAC_A, [10, 0, 2, 99], POD_B), // an address that is nobody's
        udp(MAC_A, POD_B, POD_A),          // another pod's address
        udp(MAC_B, POD_A, POD_B),          // its address, another MAC
        arp_request(MAC_A, POD_B, [169, 254, 1, 1]),
    ];
    for frame in &cases {
        assert_eq!(
            run(&mut dp, programs::POD_TC_INGRESS, frame).verdict,
            TC_ACT_SHOT
        );
    }
    assert_eq!(drops(&dp, DropReason::Spoofed), cases.len() as u64);
    assert_eq!(traffic(&dp, Path::PodToPod), 0);
}

#[test]
fn pod_arp_for_its_gateway_is_answered_with_the_host_veth_mac() {
    let mut dp = dataplane();
    let r = run(
        &mut dp,
        programs::POD_TC_INGRESS,
        &arp_request(MAC_A, POD_A, [169, 254, 1, 1]),
    );
    assert_eq!(r.verdict, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!(&r.out[0..6], &MAC_A);
    assert_eq!(&r.out[22..28], &HOST_A, "169.254.1.1 is at the host veth");
    assert_eq!(&r.out[28..32], &[169, 254, 1, 1]);
    assert_eq!(traffic(&dp, Path::ArpReply), 1);
}

#[test]
fn malformed_and_unsupported_pod_frames_are_dropped() {
    let mut dp = dataplane();
    let mut bad_ihl = udp(MAC_A, POD_A, POD_B);
    bad_ihl[14] = 0x44; // IHL 4: shorter than an IPv4 header
    let mut truncated = udp(MAC_A, POD_A, POD_B);
    truncated[17] = 200; // total length beyond the frame
    let ipv6 = eth(HOST_A, MAC_A, 0x86dd)
        .into_iter()
        .chain([0u8; 40])
        .collect::<Vec<_>>();
    for frame in [&bad_ihl, &truncated] {
        assert_eq!(
            run(&mut dp, programs::POD_TC_INGRESS, frame).verdict,
            TC_ACT_SHOT
        );
    }
    assert_eq!(drops(&dp, DropReason::Malformed), 2);
    assert_eq!(
        run(&mut dp, programs::POD_TC_INGRESS, &ipv6).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, DropReason::Unsupported), 1);
}

/// Syncing a new set of routes leaves the map holding exactly that set: unchanged routes stay,
/// changed ones take their new value, new ones appear, stale ones (another table's too) go.
#[test]
fn route_sync_leaves_exactly_the_synced_routes() {
    let mut dp = dataplane();
    let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
    let route = |hop: NextHop, ip: [u8; 4]| Route {
        next_hop: hop as u32,
        next_hop_ip: ip,
    };
    let before = dp.routes().unwrap();
    assert_eq!(before.len(), 5, "the fixture's routes: {before:?}");
    let routes = BTreeMap::from([
        // Unchanged.
        ((1, net("0.0.0.0/0")), route(NextHop::Internet, [0; 4])),
        ((1, net("10.0.0.0/16")), route(NextHop::VnetLocal, [0; 4])),
        // Another appliance.
        (
            (1, net("192.0.2.0/24")),
            route(NextHop::VirtualAppliance, [10, 0, 0, 101]),
        ),
        // New, in a new table.
        ((2, net("0.0.0.0/0")), route(NextHop::None, [0; 4])),
    ]);
    assert_ne!(before, routes);
    dp.sync_routes(&routes).unwrap();
    assert_eq!(
        dp.routes().unwrap(),
        routes,
        "the map holds exactly the synced routes"
    );
    // The None route is gone: 10.99/16 now takes the default route.
    let r = run(
        &mut dp,
        programs::POD_TC_INGRESS,
        &udp(MAC_A, POD_A, [10, 99, 1, 1]),
    );
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(drops(&dp, DropReason::RouteNone), 0);
    // Syncing the same set again changes nothing.
    dp.sync_routes(&routes).unwrap();
    assert_eq!(dp.routes().unwrap(), routes);
}
