//! BPF_PROG_RUN tests: the programs, loaded into the kernel, run on crafted packets; we check
//! verdicts, rewritten bytes and counters. Needs root (CAP_BPF). The maps are private to each
//! test (nothing pinned), so the tests are independent.
mod support;

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::programs::TcAttachType;
use ipnet::Ipv4Net;
use support::*;
use vnetd::dataplane::Dataplane;
use vnetd_common::{DropReason, ENDPOINT_VNET_DIRECT, NextHop, Path, Route, maps, programs};

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
        r.verdict, TC_PASS_ON,
        "the node's own traffic goes on to the next program and its stack"
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

    let mut last_hop = udp(FABRIC_MAC, [10, 0, 2, 50], POD_A);
    set_ttl(&mut last_hop, 1);
    assert_eq!(
        run(&mut dp, programs::UPLINK_TC_INGRESS, &last_hop).verdict,
        TC_ACT_SHOT,
        "uplink to pod: expired"
    );
    assert_eq!(drops(&dp, DropReason::TtlExceeded), 1);
    assert_eq!(traffic(&dp, Path::UplinkToPod), 1, "only the first frame");
    let to_node = {
        let mut f = udp(MAC_A, POD_A, NODE_IP);
        f[22] = 1;
        f
    };
    assert_eq!(
        run(&mut dp, programs::POD_TC_INGRESS, &to_node).verdict,
        TC_PASS_ON,
        "the node itself is not a hop away"
    );
}

#[test]
fn pod_traffic_follows_its_route_table() {
    let mut dp = dataplane();
    let to = |dp: &mut Dataplane, dst: [u8; 4]| {
        run(dp, programs::POD_TC_INGRESS, &udp(MAC_A, POD_A, dst)).verdict
    };
    assert_eq!(to(&mut dp, NODE_IP), TC_PASS_ON, "to its node");
    assert_eq!(traffic(&dp, Path::PodToHost), 1);
    // Each next hop is counted under its own path: a swapped next hop shows.
    let cases = [
        (
            [10, 0, 2, 50],
            Path::PodToVnet,
            "VnetLocal: out of the uplink",
        ),
        ([10, 1, 3, 4], Path::PodToGateway, "VirtualNetworkGateway"),
        ([192, 0, 2, 1], Path::PodToAppliance, "VirtualAppliance"),
        ([198, 51, 100, 10], Path::PodToInternet, "Internet"),
    ];
    for (dst, path, what) in cases {
        assert_eq!(to(&mut dp, dst), TC_ACT_REDIRECT, "{what}");
        assert_eq!(traffic(&dp, path), 1, "{what} counted as {}", path.name());
    }
    for path in [Path::PodToPod, Path::UplinkToPod, Path::IcmpError] {
        assert_eq!(traffic(&dp, path), 0, "{}", path.name());
    }
    assert_eq!(to(&mut dp, [10, 99, 1, 1]), TC_ACT_SHOT, "None");
    assert_eq!(drops(&dp, DropReason::RouteNone), 1);
}

#[test]
fn a_pod_whose_table_is_missing_has_no_route() {
    let mut dp = dataplane();
    dp.put_endpoint(
        std::net::Ipv4Addr::from(POD_A),
        vnetd_common::Endpoint {
            route_table: 7,
            ..pod_a_endpoint()
        },
    )
    .unwrap();
    let r = run(&mut dp, programs::POD_TC_INGRESS, &udp(MAC_A, POD_A, POD_B));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, DropReason::NoRoute), 1);
    assert_eq!(
        traffic(&dp, Path::PodToPod),
        0,
        "not even to a pod on this node"
    );
}

#[test]
fn same_node_traffic_follows_the_source_subnets_route_table() {
    let mut dp = dataplane();
    let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
    let mut routes = dp.routes().unwrap();
    routes.insert(
        (1, net("10.0.2.11/32")),
        Route {
            next_hop: NextHop::None as u32,
            next_hop_ip: [0; 4],
        },
    );
    dp.sync_routes(&routes).unwrap();
    let r = run(&mut dp, programs::POD_TC_INGRESS, &udp(MAC_A, POD_A, POD_B));
    assert_eq!(r.verdict, TC_ACT_SHOT, "a None route covers pod B");
    assert_eq!(drops(&dp, DropReason::RouteNone), 1);
    assert_eq!(traffic(&dp, Path::PodToPod), 0);

    // Through an appliance that is a pod on this node: delivered into the appliance.
    routes.insert(
        (1, net("10.0.2.11/32")),
        Route {
            next_hop: NextHop::VirtualAppliance as u32,
            next_hop_ip: POD_C,
        },
    );
    dp.sync_routes(&routes).unwrap();
    let sent = udp(MAC_A, POD_A, POD_B);
    let r = run(&mut dp, programs::POD_TC_INGRESS, &sent);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(&r.out[0..6], &MAC_C, "to the appliance pod's MAC");
    assert_eq!(&r.out[6..12], &HOST_C, "from its gateway");
    assert_forwarded(&sent, &r.out);
    assert_eq!(traffic(&dp, Path::PodToAppliance), 1);
    assert_eq!(traffic(&dp, Path::PodToPod), 0);

    // Through an appliance elsewhere in the VNet: out of the uplink, not into pod B.
    routes.insert(
        (1, net("10.0.2.11/32")),
        Route {
            next_hop: NextHop::VirtualAppliance as u32,
            next_hop_ip: [10, 0, 0, 100],
        },
    );
    dp.sync_routes(&routes).unwrap();
    let r = run(&mut dp, programs::POD_TC_INGRESS, &udp(MAC_A, POD_A, POD_B));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(&r.out[0..6], &HOST_A, "MACs left to the neighbour lookup");
    assert_eq!(traffic(&dp, Path::PodToAppliance), 2);
    assert_eq!(traffic(&dp, Path::PodToPod), 0);
}

/// A pod whose route table routes the whole VNet locally (the agent's `vnet_direct`) reaches a
/// pod of this node without a route lookup; anything else it sends is still routed by its
/// table. Shown with a table that has no VNet route at all: only the flag can deliver.
#[test]
fn a_table_routing_the_vnet_locally_delivers_to_local_pods_without_a_lookup() {
    let mut dp = dataplane();
    let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
    let only_none = BTreeMap::from([(
        (1, net("0.0.0.0/0")),
        Route {
            next_hop: NextHop::None as u32,
            next_hop_ip: [0; 4],
        },
    )]);
    dp.sync_routes(&only_none).unwrap();
    let pod_a = |flags| vnetd_common::Endpoint {
        flags,
        ..pod_a_endpoint()
    };
    let to = |dp: &mut Dataplane, dst: [u8; 4]| {
        run(dp, programs::POD_TC_INGRESS, &udp(MAC_A, POD_A, dst))
    };

    assert_eq!(
        to(&mut dp, POD_B).verdict,
        TC_ACT_SHOT,
        "without the flag: routed, by None"
    );
    assert_eq!(drops(&dp, DropReason::RouteNone), 1);

    dp.put_endpoint(std::net::Ipv4Addr::from(POD_A), pod_a(ENDPOINT_VNET_DIRECT))
        .unwrap();
    let sent = udp(MAC_A, POD_A, POD_B);
    let r = run(&mut dp, programs::POD_TC_INGRESS, &sent);
    assert_eq!(
        r.verdict, TC_ACT_REDIRECT,
        "with the flag: straight to pod B"
    );
    assert_eq!(&r.out[0..6], &MAC_B, "to pod B's MAC");
    assert_forwarded(&sent, &r.out);
    assert_eq!(traffic(&dp, Path::PodToPod), 1);
    assert_eq!(
        to(&mut dp, [10, 0, 2, 50]).verdict,
        TC_ACT_SHOT,
        "an address of no local pod is still routed by the table"
    );
    assert_eq!(drops(&dp, DropReason::RouteNone), 2);
}

/// The programs keep per-CPU copies of the endpoints a pod's packet is from and to: the next
/// packet after the agent changes, removes or adds an endpoint must see the change, on the CPU
/// that holds the copies.
#[test]
fn the_next_packet_sees_an_endpoint_changed_removed_or_added() {
    pin_to_cpu(0);
    for vnet_direct in [false, true] {
        let mut dp = dataplane();
        if vnet_direct {
            route_the_vnet_directly(&mut dp, &[POD_A]);
        }
        let a_to = |dp: &mut Dataplane, dst: [u8; 4]| {
            run(dp, programs::POD_TC_INGRESS, &udp(MAC_A, POD_A, dst))
        };
        // The pod MAC a packet from pod A to pod B's address was redirected to, if any.
        let a_to_b_delivered_to = |dp: &mut Dataplane| {
            let r = a_to(dp, POD_B);
            (r.verdict == TC_ACT_REDIRECT).then(|| <[u8; 6]>::try_from(&r.out[0..6]).unwrap())
        };
        let case = if vnet_direct {
            "VNet routed directly"
        } else {
            "routed by lookup"
        };
        assert_eq!(a_to_b_delivered_to(&mut dp), Some(MAC_B), "{case}");

        // Pod B's entry changes (a new MAC stands for any field).
        let new_mac = [0x02, 0xaa, 0, 0, 0, 0xbb];
        let ip_b = Ipv4Addr::from(POD_B);
        dp.put_endpoint(ip_b, pod_endpoint(TEST_IFINDEX, new_mac, HOST_B))
            .unwrap();
        assert_eq!(a_to_b_delivered_to(&mut dp), Some(new_mac), "{case}");

        // Pod B is deleted: its address is routed like any other of the VNet, out of the uplink.
        dp.remove_endpoint(ip_b).unwrap();
        let r = a_to(&mut dp, POD_B);
        assert_ne!(&r.out[0..6], &new_mac[..], "{case}: not to the deleted pod");
        assert_eq!(traffic(&dp, Path::PodToVnet), 1, "{case}");

        // An address that was nobody's becomes a pod's.
        dp.put_endpoint(ip_b, pod_endpoint(TEST_IFINDEX, MAC_B, HOST_B))
            .unwrap();
        assert_eq!(a_to_b_delivered_to(&mut dp), Some(MAC_B), "{case}");

        // Pod A is deleted: what it sends is refused; back, it is forwarded again.
        let ip_a = Ipv4Addr::from(POD_A);
        let entry_a = dp.endpoints_written().unwrap()[&ip_a];
        dp.remove_endpoint(ip_a).unwrap();
        assert_eq!(a_to(&mut dp, POD_B).verdict, TC_ACT_SHOT, "{case}");
        assert_eq!(drops(&dp, DropReason::Spoofed), 1, "{case}");
        dp.put_endpoint(ip_a, entry_a).unwrap();
        assert_eq!(a_to(&mut dp, POD_B).verdict, TC_ACT_REDIRECT, "{case}");
        assert_eq!(traffic(&dp, Path::PodToPod), 4, "{case}");
    }
}

/// With the endpoint copies off (generation 0: an agent built for a CPU that may reorder the
/// programs' two reads, see `COPIES_ORDERED`), every lookup reads `ENDPOINTS` afresh.
#[test]
fn with_the_endpoint_copies_off_every_packet_reads_the_table() {
    pin_to_cpu(0);
    let mut dp = dataplane();
    let copies_off = |dp: &mut Dataplane| {
        let map = dp.raw_map_mut(maps::ENDPOINTS_GENERATION).unwrap();
        let mut generation: aya::maps::Array<_, u64> = aya::maps::Array::try_from(map).unwrap();
        generation.set(0, 0, 0).unwrap();
    };
    let a_to_b = |dp: &mut Dataplane| run(dp, programs::POD_TC_INGRESS, &udp(MAC_A, POD_A, POD_B));
    copies_off(&mut dp);
    for _ in 0..2 {
        let r = a_to_b(&mut dp);
        assert_eq!((r.verdict, &r.out[0..6]), (TC_ACT_REDIRECT, &MAC_B[..]));
    }
    let new_mac = [0x02, 0xaa, 0, 0, 0, 0xbb];
    let ip_b = Ipv4Addr::from(POD_B);
    dp.put_endpoint(ip_b, pod_endpoint(TEST_IFINDEX, new_mac, HOST_B))
        .unwrap();
    copies_off(&mut dp);
    let r = a_to_b(&mut dp);
    assert_eq!((r.verdict, &r.out[0..6]), (TC_ACT_REDIRECT, &new_mac[..]));
    dp.remove_endpoint(ip_b).unwrap();
    copies_off(&mut dp);
    let r = a_to_b(&mut dp);
    assert_ne!(&r.out[0..6], &new_mac[..], "not to the deleted pod");
    assert_eq!(traffic(&dp, Path::PodToVnet), 1);
}

/// The kernel's verifier walks every path of a program, up to a million instructions in all
/// (`BPF_COMPLEXITY_LIMIT_INSNS`), and refuses the program past that. Each program stays within
/// 60% of it, so the next stage added to a packet path has room. (A pointer that may come from
/// either of two maps doubles every path after it: the endpoint cache's fallback to `ENDPOINTS`
/// once took `pod_ingress` to 919,391, 92% of the budget.)
#[test]
fn every_program_leaves_the_verifier_room_for_another_stage() {
    const BUDGET: u32 = 1_000_000;
    let mut dp = dataplane();
    let mut verified = BTreeMap::new();
    for program in [
        programs::POD_TC_INGRESS,
        programs::POD_TC_EGRESS,
        programs::UPLINK_TC_INGRESS,
        programs::UPLINK_TC_EGRESS,
    ] {
        let info = dp.classifier(program).unwrap().info().unwrap();
        verified.insert(program, info.verified_instruction_count());
    }
    let info = dp.xdp(programs::UPLINK_XDP).unwrap().info().unwrap();
    verified.insert(programs::UPLINK_XDP, info.verified_instruction_count());
    for (program, n) in &verified {
        let n = n.unwrap_or_else(|| panic!("{program}: the kernel reports no verified count"));
        assert!(
            n <= BUDGET / 10 * 6,
            "{program}: the verifier walked {n} instructions, over 60% of its {BUDGET}: {verified:?}"
        );
    }
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
    let mut short_udp = udp(MAC_A, POD_A, POD_B);
    short_udp.truncate(34 + 2); // the UDP header cut after the source port
    short_udp[16..18].copy_from_slice(&22u16.to_be_bytes());
    let vlan_in_frame = eth(HOST_A, MAC_A, 0x8100)
        .into_iter()
        .chain([0, 100, 0x08, 0x00])
        .chain(udp(MAC_A, POD_A, POD_B).into_iter().skip(14))
        .collect::<Vec<_>>();
    let lldp = eth(HOST_A, MAC_A, 0x88cc)
        .into_iter()
        .chain([0u8; 32])
        .collect::<Vec<_>>();
    let cases = [
        (&bad_ihl, DropReason::Malformed),
        (&truncated, DropReason::Malformed),
        (&short_udp, DropReason::Malformed),
        (&ipv6, DropReason::Ipv6),
        (&vlan_in_frame, DropReason::VlanTagged),
        (&lldp, DropReason::Unsupported),
    ];
    for (frame, _) in &cases {
        assert_eq!(
            run(&mut dp, programs::POD_TC_INGRESS, frame).verdict,
            TC_ACT_SHOT
        );
    }
    for reason in DropReason::ALL {
        let expected = cases.iter().filter(|(_, r)| *r == reason).count() as u64;
        assert_eq!(drops(&dp, reason), expected, "{}", reason.name());
    }
}

#[test]
fn pod_arp_probes_are_dropped_quietly_and_arp_must_match_the_frame() {
    let mut dp = dataplane();
    // Duplicate address detection: "who has 10.0.2.10? tell 0.0.0.0".
    let probe = arp_request(MAC_A, [0; 4], POD_A);
    assert_eq!(
        run(&mut dp, programs::POD_TC_INGRESS, &probe).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, DropReason::ArpProbe), 1);
    // The ARP speaks for pod A, the frame comes from pod B's MAC.
    let mut forged = arp_request(MAC_A, POD_A, [169, 254, 1, 1]);
    forged[6..12].copy_from_slice(&MAC_B);
    assert_eq!(
        run(&mut dp, programs::POD_TC_INGRESS, &forged).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, DropReason::Spoofed), 1);
    assert_eq!(drops(&dp, DropReason::Unsupported), 0);
    assert_eq!(traffic(&dp, Path::ArpReply), 0);
}

#[test]
fn a_pod_must_send_through_its_own_veth() {
    let (veth_a, veth_b) = private_netns_with_veth_pair();
    let mut dp = dataplane_on(veth_a, veth_b, HOST_B);
    let from_a = udp(MAC_A, POD_A, POD_B);
    let r = run_on(&mut dp, programs::POD_TC_INGRESS, &from_a, veth_a);
    assert_eq!(r.verdict, TC_ACT_REDIRECT, "pod A through its own veth");
    // Pod A's address and MAC together, but sent through pod B's veth: pod B forging pod A.
    let r = run_on(&mut dp, programs::POD_TC_INGRESS, &from_a, veth_b);
    assert_eq!(r.verdict, TC_ACT_SHOT);
    let arp = arp_request(MAC_A, POD_A, [169, 254, 1, 1]);
    let r = run_on(&mut dp, programs::POD_TC_INGRESS, &arp, veth_b);
    assert_eq!(r.verdict, TC_ACT_SHOT, "nor its ARP");
    assert_eq!(drops(&dp, DropReason::Spoofed), 2);
    assert_eq!(traffic(&dp, Path::PodToPod), 1);
}

#[test]
fn an_expired_pod_packet_is_answered_with_time_exceeded_from_the_gateway() {
    let mut dp = dataplane();
    let mut sent = udp(MAC_A, POD_A, [10, 0, 2, 50]);
    set_ttl(&mut sent, 1);
    let r = run(&mut dp, programs::POD_TC_INGRESS, &sent);
    assert_eq!(r.verdict, TC_ACT_REDIRECT, "sent back to the pod");
    let out = &r.out;
    assert_eq!(out.len(), 14 + 20 + 8 + 28, "IP + ICMP + quote");
    assert_eq!(&out[0..6], &MAC_A, "to the pod");
    assert_eq!(&out[6..12], &HOST_A, "from its gateway's MAC");
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    assert_eq!(out[14], 0x45);
    assert_eq!(&out[16..18], &56u16.to_be_bytes(), "total length");
    assert_eq!(out[23], 1, "ICMP");
    assert_eq!(&out[26..30], &[169, 254, 1, 1], "from the pod's gateway");
    assert_eq!(&out[30..34], &POD_A, "to the sender");
    assert_eq!(ones_complement_sum(&out[14..34]), 0xffff, "IP checksum");
    assert_eq!(&out[34..36], &[11, 0], "time exceeded in transit");
    assert_eq!(ones_complement_sum(&out[34..]), 0xffff, "ICMP checksum");
    assert_eq!(
        &out[42..],
        &sent[14..42],
        "quotes the IP header and 8 bytes"
    );
    assert_eq!(drops(&dp, DropReason::TtlExceeded), 1);
    assert_eq!(traffic(&dp, Path::IcmpError), 1);
    assert_eq!(traffic(&dp, Path::PodToVnet), 0);

    // An ICMP error is never answered with another.
    let mut error = r.out.clone();
    error[6..12].copy_from_slice(&MAC_A);
    error[26..30].copy_from_slice(&POD_A);
    error[30..34].copy_from_slice(&[10, 0, 2, 50]);
    set_ttl(&mut error, 1);
    let r = run(&mut dp, programs::POD_TC_INGRESS, &error);
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, DropReason::TtlExceeded), 2);
    assert_eq!(traffic(&dp, Path::IcmpError), 1);
}

/// Time-exceeded answers are rate limited as the kernel limits its own ICMP errors
/// (`icmp_msgs_per_sec` 1000, `icmp_msgs_burst` 50), per CPU: a pod that floods expired
/// packets gets a burst of answers, then one a millisecond; the rest are dropped unanswered,
/// and counted apart.
#[test]
fn time_exceeded_answers_are_rate_limited() {
    pin_to_cpu(0);
    let mut dp = dataplane();
    let mut sent = udp(MAC_A, POD_A, [10, 0, 2, 50]);
    set_ttl(&mut sent, 1);
    const SENT: u64 = 400;
    let start = std::time::Instant::now();
    let answered = (0..SENT)
        .filter(|_| run(&mut dp, programs::POD_TC_INGRESS, &sent).verdict == TC_ACT_REDIRECT)
        .count() as u64;
    let elapsed_ms = start.elapsed().as_millis() as u64;
    // The budget's clock is the coarse one: allow a few ticks (4 ms at HZ=250) of refill more.
    assert!(
        (50..=50 + elapsed_ms + 12).contains(&answered),
        "{answered} of {SENT} expired packets answered in {elapsed_ms} ms: a burst of 50, \
         then one a millisecond"
    );
    assert!(answered < SENT, "the flood is not answered whole");
    assert_eq!(traffic(&dp, Path::IcmpError), answered);
    assert_eq!(drops(&dp, DropReason::TtlExceeded), answered);
    assert_eq!(
        drops(&dp, DropReason::TimeExceededRateLimited),
        SENT - answered
    );
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(
        run(&mut dp, programs::POD_TC_INGRESS, &sent).verdict,
        TC_ACT_REDIRECT,
        "answered again after a pause"
    );
}

#[test]
fn the_uplink_passes_what_is_not_vnetds_untouched() {
    let mut dp = dataplane();
    let mut zero_len = udp(FABRIC_MAC, [10, 0, 0, 5], NODE_IP);
    zero_len[16..18].copy_from_slice(&[0, 0]); // tot_len 0, not a BIG TCP aggregate
    let mut bad_ihl = udp(FABRIC_MAC, [10, 0, 0, 5], POD_A);
    bad_ihl[14] = 0x44;
    let ipv6 = eth(UPLINK_MAC, FABRIC_MAC, 0x86dd)
        .into_iter()
        .chain([0x60u8].into_iter().chain([0u8; 39]))
        .collect::<Vec<_>>();
    let arp = arp_request(FABRIC_MAC, [10, 0, 0, 5], NODE_IP);
    let vlan = eth(UPLINK_MAC, FABRIC_MAC, 0x8100)
        .into_iter()
        .chain([0, 100, 0x08, 0x00])
        .chain(udp(FABRIC_MAC, [10, 0, 0, 5], POD_A).into_iter().skip(14))
        .collect::<Vec<_>>();
    for (frame, what) in [
        (&zero_len, "tot_len 0"),
        (&bad_ihl, "a header vnetd cannot parse, even to a pod"),
        (&ipv6, "IPv6"),
        (&arp, "ARP"),
        (&vlan, "a tagged frame"),
    ] {
        let r = run(&mut dp, programs::UPLINK_TC_INGRESS, frame);
        assert_eq!(r.verdict, TC_PASS_ON, "{what}");
        assert_eq!(&r.out, frame, "{what}: untouched");
    }
    for reason in DropReason::ALL {
        assert_eq!(drops(&dp, reason), 0, "{}", reason.name());
    }
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
    assert_eq!(before.len(), 6, "the fixture's routes: {before:?}");
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

/// What vnetd leaves alone on the uplink goes on to the TCX programs attached after its own
/// (TC_ACT_UNSPEC; TC_ACT_OK would end the chain). A second dataplane's `pod_ingress`, which
/// counts every frame it sees, stands in for "someone else's program".
#[test]
fn the_uplink_hands_what_is_not_vnetds_on_to_later_tcx_programs() {
    let (_uplink, peer) = private_netns_with_veth_pair();
    for dev in ["pa", "pb"] {
        let ok = std::process::Command::new("ip")
            .args(["link", "set", dev, "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip link set {dev} up");
    }
    let mut vnetd = dataplane();
    let mut other = dataplane();
    vnetd
        .classifier(programs::UPLINK_TC_INGRESS)
        .unwrap()
        .attach("pa", TcAttachType::Ingress)
        .unwrap();
    other
        .classifier(programs::POD_TC_INGRESS)
        .unwrap()
        .attach("pa", TcAttachType::Ingress)
        .unwrap();
    // Something for the node (not a pod) sent from the peer into the uplink. The program after
    // vnetd's (pod_ingress) refuses it as spoofed: that count is this frame's alone (the peer's
    // own IPv6 chatter as it comes up is counted elsewhere).
    vnetd_lab::frames::send_raw(peer, &udp(FABRIC_MAC, [10, 0, 0, 5], NODE_IP)).unwrap();
    assert!(
        wait_until(|| drops(&other, DropReason::Spoofed) == 1),
        "the program after vnetd's saw the frame"
    );
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// The map names are defined once (`vnetd_common::maps`); the eBPF side must declare exactly
/// those, or the agent would pin and sync maps the programs do not use.
#[test]
fn the_programs_declare_exactly_the_maps_the_agent_pins() {
    let ebpf = aya::Ebpf::load(vnetd::dataplane::EBPF_OBJECT).expect("the object loads");
    // aya-log's own maps (its ring and the read-only data of its records) are made afresh
    // with every load and read by the agent that loaded them: never pinned.
    let mut declared: Vec<&str> = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|name| *name != "AYA_LOGS" && !name.starts_with(".rodata"))
        .collect();
    declared.sort_unstable();
    let mut shared = vnetd_common::maps::ALL.to_vec();
    shared.sort_unstable();
    assert_eq!(declared, shared);
}
