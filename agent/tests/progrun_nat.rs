//! BPF_PROG_RUN tests of connection tracking and address translation: SNAT of pods' traffic to
//! the internet and its replies, public addresses in front of a group, the node's own ports,
//! ICMP errors through the NAT, port exhaustion. Each test checks the verdict, the rewritten
//! bytes and that every checksum verifies after the rewrite. Needs root (CAP_BPF).
mod support;

use aya::maps::{HashMap, LpmTrie, lpm_trie::Key};
use support::{packets::*, *};
use vnetd::dataplane::Dataplane;
use vnetd_common::{
    DropReason, Endpoint, Flow, FlowKey, NodeConfig, Path, PublicAddress, PublicPortKey, maps,
    programs,
};

const INTERNET: [u8; 4] = [198, 51, 100, 10];
const EDGE: [u8; 4] = [10, 0, 0, 1];
const PUBLIC_B: [u8; 4] = [203, 0, 113, 20];

/// The fixture's dataplane with `min..=max` as the SNAT range and node-1's no-masquerade set
/// (the VNet, the connected space, 172.16/12, link-local); pod B is a Public group at
/// 203.0.113.20 exposing TCP 80.
fn nat_dataplane(min: u16, max: u16) -> Dataplane {
    let mut dp = dataplane();
    dp.put_endpoint(
        POD_B.into(),
        Endpoint {
            host_ifindex: TEST_IFINDEX,
            route_table: 1,
            pod_mac: MAC_B,
            host_mac: HOST_B,
            public_ip: PUBLIC_B,
            nsg_in_subnet: 0,
            nsg_in_group: 0,
            nsg_out_subnet: 0,
            nsg_out_group: 0,
            flags: 0,
        },
    )
    .unwrap();
    dp.set_node(NodeConfig {
        snat_port_min: min,
        snat_port_max: max,
        ..node_config()
    })
    .unwrap();
    {
        let mut trie: LpmTrie<_, [u8; 4], u32> =
            LpmTrie::try_from(dp.raw_map_mut(maps::NO_MASQUERADE).unwrap()).unwrap();
        for (ip, len) in [
            ([10, 0, 0, 0], 16),
            ([10, 1, 0, 0], 16),
            ([172, 16, 0, 0], 12),
            ([169, 254, 0, 0], 16),
        ] {
            trie.insert(&Key::new(len, ip), 1, 0).unwrap();
        }
    }
    {
        let mut ips: HashMap<_, [u8; 4], PublicAddress> =
            HashMap::try_from(dp.raw_map_mut(maps::PUBLIC_IPS).unwrap()).unwrap();
        ips.insert(PUBLIC_B, PublicAddress { private_ip: POD_B }, 0)
            .unwrap();
    }
    let mut ports: HashMap<_, PublicPortKey, u32> =
        HashMap::try_from(dp.raw_map_mut(maps::PUBLIC_PORTS).unwrap()).unwrap();
    let key = PublicPortKey {
        public_ip: PUBLIC_B,
        port: 80u16.to_be(),
        proto: TCP,
        _pad: 0,
    };
    ports.insert(key, 1, 0).unwrap();
    dp
}

fn flows(dp: &mut Dataplane) -> Vec<(FlowKey, Flow)> {
    dp.conntrack_maps()
        .unwrap()
        .flows()
        .unwrap()
        .into_iter()
        .collect()
}

fn to_pod_a(dp: &mut Dataplane, f: &[u8]) -> Run {
    run_on(dp, programs::POD_TC_INGRESS, f, TEST_IFINDEX)
}

fn at_uplink(dp: &mut Dataplane, f: &[u8]) -> Run {
    run(dp, programs::UPLINK_TC_INGRESS, f)
}

#[test]
fn pod_tcp_to_the_internet_leaves_with_the_node_address_and_replies_come_back() {
    let mut dp = nat_dataplane(32768, 65535);
    let syn = from_pod_a(INTERNET, TCP, tcp(40000, 80, SYN));
    let out = to_pod_a(&mut dp, &syn);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(ip_src(&out.out), NODE_IP);
    assert_eq!(sport(&out.out), 40000, "a free source port is kept");
    assert_eq!((ip_dst(&out.out), dport(&out.out)), (INTERNET, 80));
    assert_eq!(out.out[22], 63, "one routed hop");
    assert_checksums(&out.out);
    assert_eq!(flows(&mut dp).len(), 2, "both directions are tracked");
    assert_eq!(traffic(&dp, Path::PodToInternet), 1);

    let synack = from_fabric(INTERNET, NODE_IP, TCP, tcp(80, 40000, SYN | ACK));
    let back = at_uplink(&mut dp, &synack);
    assert_eq!(back.verdict, TC_ACT_REDIRECT, "delivered into the pod");
    assert_eq!((ip_dst(&back.out), dport(&back.out)), (POD_A, 40000));
    assert_eq!((ip_src(&back.out), sport(&back.out)), (INTERNET, 80));
    assert_eq!(
        &back.out[0..12],
        &[MAC_A, HOST_A].concat()[..],
        "pod's MACs"
    );
    assert_eq!(back.out[22], 63);
    assert_checksums(&back.out);
    assert_eq!(traffic(&dp, Path::InternetToPod), 1);

    // The node's own traffic (no flow) is the node's.
    let other = from_fabric(INTERNET, NODE_IP, TCP, tcp(80, 40001, SYN | ACK));
    assert_eq!(at_uplink(&mut dp, &other).verdict, TC_PASS_ON);
}

#[test]
fn udp_is_translated_and_a_zero_checksum_stays_zero() {
    let mut dp = nat_dataplane(32768, 65535);
    for zero in [false, true] {
        let sport_a = if zero { 50001 } else { 50000 };
        let f = from_pod_a(INTERNET, UDP, udp_segment(sport_a, 53, zero));
        let out = to_pod_a(&mut dp, &f);
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        assert_eq!((ip_src(&out.out), sport(&out.out)), (NODE_IP, sport_a));
        assert_checksums(&out.out);
        assert_eq!(
            out.out[40..42] == [0, 0],
            zero,
            "zero checksum stays zero (zero={zero})"
        );

        let reply = from_fabric(INTERNET, NODE_IP, UDP, udp_segment(53, sport_a, zero));
        let back = at_uplink(&mut dp, &reply);
        assert_eq!(back.verdict, TC_ACT_REDIRECT);
        assert_eq!((ip_dst(&back.out), dport(&back.out)), (POD_A, sport_a));
        assert_checksums(&back.out);
        assert_eq!(back.out[40..42] == [0, 0], zero);
    }
}

#[test]
fn ping_is_translated_by_its_identifier() {
    let mut dp = nat_dataplane(32768, 65535);
    // Identifier 0x1234 is outside the range: it gets one inside.
    let out = to_pod_a(&mut dp, &from_pod_a(INTERNET, ICMP, echo(8, 0x1234)));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(ip_src(&out.out), NODE_IP);
    let id = u16::from_be_bytes([out.out[38], out.out[39]]);
    assert!(id >= 32768, "identifier {id} from the range");
    assert_checksums(&out.out);

    let back = at_uplink(&mut dp, &from_fabric(INTERNET, NODE_IP, ICMP, echo(0, id)));
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    assert_eq!(ip_dst(&back.out), POD_A);
    assert_eq!(u16::from_be_bytes([back.out[38], back.out[39]]), 0x1234);
    assert_checksums(&back.out);
}

#[test]
fn an_icmp_error_about_a_translated_tcp_flow_reaches_the_pod_translated() {
    let mut dp = nat_dataplane(32768, 65535);
    // Pod A's flow from port 1000 (outside the range: it gets a port from the range).
    let out = to_pod_a(&mut dp, &from_pod_a(INTERNET, TCP, tcp(1000, 80, SYN)));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let nat_port = sport(&out.out);
    assert_ne!(nat_port, 1000);

    // The edge's "fragmentation needed" quotes the packet as it went out: IP header and the
    // whole TCP header (a real router quotes as much as fits).
    let quoted_ip = out.out[14..34].to_vec();
    let quoted_tcp = out.out[34..54].to_vec();
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc]; // MTU 1500
    icmp.extend_from_slice(&quoted_ip);
    icmp.extend_from_slice(&quoted_tcp);
    let err = from_fabric(EDGE, NODE_IP, ICMP, icmp);
    let back = at_uplink(&mut dp, &err);
    assert_eq!(back.verdict, TC_ACT_REDIRECT, "delivered into the pod");
    let f = &back.out;
    assert_eq!(ip_dst(f), POD_A);
    assert_checksums(f);
    let inner = &f[42..];
    assert_eq!(&inner[12..16], &POD_A, "quoted source is the pod again");
    assert_eq!(
        u16::from_be_bytes([inner[20], inner[21]]),
        1000,
        "quoted port too"
    );
    assert_eq!(
        ones_complement_sum(&inner[..20]),
        0xffff,
        "quoted IP checksum"
    );
    // The quoted TCP header's checksum covered the data after it; the quote here has none, so
    // check the incremental update against the original: adjusting the pod's original
    // segment's checksum by the same change gives the quoted one.
    let original = from_pod_a(INTERNET, TCP, tcp(1000, 80, SYN));
    assert_eq!(
        &inner[20 + 16..20 + 18],
        &original[34 + 16..34 + 18],
        "quoted TCP checksum"
    );

    // An error about no known flow, to a public address, is dropped and counted.
    let mut stray = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    stray.extend_from_slice(&quoted_ip);
    stray.extend_from_slice(&quoted_tcp[..8]);
    stray[8 + 12..8 + 16].copy_from_slice(&PUBLIC_B);
    let r = at_uplink(&mut dp, &from_fabric(EDGE, PUBLIC_B, ICMP, stray));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, DropReason::IcmpNoFlow), 1);
}

#[test]
fn when_no_port_is_free_the_new_flow_is_dropped_and_old_ones_keep_working() {
    let mut dp = nat_dataplane(40000, 40003);
    for p in 0..4 {
        let r = to_pod_a(&mut dp, &from_pod_a(INTERNET, TCP, tcp(1000 + p, 80, SYN)));
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "flow {p}");
        assert!((40000..=40003).contains(&sport(&r.out)));
    }
    let r = to_pod_a(&mut dp, &from_pod_a(INTERNET, TCP, tcp(2000, 80, SYN)));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, DropReason::SnatPortsExhausted), 1);
    // Old flows are untouched, and another destination has all four ports again.
    let r = to_pod_a(&mut dp, &from_pod_a(INTERNET, TCP, tcp(1000, 80, ACK)));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let r = to_pod_a(&mut dp, &from_pod_a(INTERNET, TCP, tcp(2000, 443, SYN)));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
}

#[test]
fn traffic_to_no_masquerade_destinations_keeps_the_pod_address() {
    let mut dp = nat_dataplane(32768, 65535);
    let f = from_pod_a([172, 16, 5, 5], TCP, tcp(40000, 80, SYN));
    let r = to_pod_a(&mut dp, &f);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(ip_src(&r.out), POD_A);
    assert!(flows(&mut dp).is_empty(), "nothing to track");
}

/// A UDP datagram with `payload` bytes of data (its checksum computed by [`frame`]).
fn udp_datagram(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    u.extend_from_slice(&[0xff, 0xff]);
    u.extend((0..payload).map(|i| i as u8));
    u
}

/// The IPv4 datagram in `f` as two fragments with id `id`, as a sender's stack cuts it: the
/// first with the L4 header and `split` bytes of L4 (a multiple of 8), the second the rest.
fn fragmented(f: &[u8], id: u16, split: usize) -> [Vec<u8>; 2] {
    let part = |l4: &[u8], flags_and_offset: u16| {
        let mut p = f[..34].to_vec();
        p[16..18].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p[18..20].copy_from_slice(&id.to_be_bytes());
        p[20..22].copy_from_slice(&flags_and_offset.to_be_bytes());
        set_ip_checksum(&mut p);
        p.extend_from_slice(l4);
        p
    };
    const MORE_FRAGMENTS: u16 = 0x2000;
    [
        part(&f[34..34 + split], MORE_FRAGMENTS),
        part(&f[34 + split..], (split / 8) as u16),
    ]
}

/// The datagram the receiver reassembles from two fragments: the first's headers, both
/// payloads.
fn reassembled(first: &[u8], later: &[u8]) -> Vec<u8> {
    let mut f = first.to_vec();
    f.extend_from_slice(&later[34..]);
    let total = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[20..22].copy_from_slice(&[0, 0]);
    set_ip_checksum(&mut f);
    f
}

fn set_ip_checksum(f: &mut [u8]) {
    f[24..26].copy_from_slice(&[0, 0]);
    let c = !ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// A fragmented datagram through the NAT, both ways: the first fragment (with the ports) is
/// translated as its flow says and leads the later ones (no ports, the same IP id) to the
/// same flow, so they get the same address. The receiver's reassembly sees a datagram whose
/// checksum verifies.
#[test]
fn a_fragmented_datagram_is_translated_both_ways() {
    let mut dp = nat_dataplane(32768, 65535);
    let datagram = from_pod_a(INTERNET, UDP, udp_datagram(40000, 53, 64));
    let [first, later] = fragmented(&datagram, 0x1234, 32);
    let out_first = to_pod_a(&mut dp, &first);
    assert_eq!(out_first.verdict, TC_ACT_REDIRECT, "the first fragment");
    assert_eq!(
        (ip_src(&out_first.out), sport(&out_first.out)),
        (NODE_IP, 40000)
    );
    let out_later = to_pod_a(&mut dp, &later);
    assert_eq!(out_later.verdict, TC_ACT_REDIRECT, "the later fragment");
    assert_eq!(ip_src(&out_later.out), NODE_IP, "translated as its first");
    assert_eq!(ip_dst(&out_later.out), INTERNET);
    assert_eq!(&out_later.out[18..22], &later[18..22], "id and offset kept");
    assert_eq!(out_later.out[22], 63, "one routed hop");
    assert_eq!(&out_later.out[34..], &later[34..], "payload untouched");
    assert_eq!(
        ones_complement_sum(&out_later.out[14..34]),
        0xffff,
        "IP checksum"
    );
    assert_checksums(&reassembled(&out_first.out, &out_later.out));
    assert_eq!(traffic(&dp, Path::PodToInternet), 2);

    let reply = from_fabric(INTERNET, NODE_IP, UDP, udp_datagram(53, 40000, 64));
    let [first, later] = fragmented(&reply, 0x4321, 40);
    let back_first = at_uplink(&mut dp, &first);
    assert_eq!(
        back_first.verdict, TC_ACT_REDIRECT,
        "the reply's first fragment"
    );
    assert_eq!(
        (ip_dst(&back_first.out), dport(&back_first.out)),
        (POD_A, 40000)
    );
    let back_later = at_uplink(&mut dp, &later);
    assert_eq!(
        back_later.verdict, TC_ACT_REDIRECT,
        "the reply's later fragment"
    );
    assert_eq!(ip_dst(&back_later.out), POD_A);
    assert_eq!(
        &back_later.out[0..12],
        &[MAC_A, HOST_A].concat()[..],
        "pod's MACs"
    );
    assert_eq!(
        &back_later.out[18..22],
        &later[18..22],
        "id and offset kept"
    );
    assert_eq!(back_later.out[22], 63);
    assert_eq!(
        ones_complement_sum(&back_later.out[14..34]),
        0xffff,
        "IP checksum"
    );
    assert_checksums(&reassembled(&back_first.out, &back_later.out));
    assert_eq!(traffic(&dp, Path::InternetToPod), 2);
    assert_eq!(drops(&dp, DropReason::NatFragment), 0);
}

/// A Public group's flow in fragments (TCP whose sender allows fragmentation): the client's
/// later fragment reaches the group's private address, the group's leaves with the public one.
#[test]
fn a_public_groups_fragments_follow_their_flow_both_ways() {
    let mut dp = nat_dataplane(32768, 65535);
    let syn = from_fabric(INTERNET, PUBLIC_B, TCP, tcp(5555, 80, SYN));
    assert_eq!(at_uplink(&mut dp, &syn).verdict, TC_ACT_REDIRECT);
    let mut segment = tcp(5555, 80, ACK);
    segment.extend(0..64u8);
    let [first, later] = fragmented(&from_fabric(INTERNET, PUBLIC_B, TCP, segment), 7, 24);
    let in_first = at_uplink(&mut dp, &first);
    assert_eq!(in_first.verdict, TC_ACT_REDIRECT);
    assert_eq!((ip_dst(&in_first.out), dport(&in_first.out)), (POD_B, 80));
    let in_later = at_uplink(&mut dp, &later);
    assert_eq!(
        in_later.verdict, TC_ACT_REDIRECT,
        "the client's later fragment"
    );
    assert_eq!(ip_dst(&in_later.out), POD_B);
    assert_eq!(&in_later.out[0..6], &MAC_B);
    assert_checksums(&reassembled(&in_first.out, &in_later.out));
    assert_eq!(traffic(&dp, Path::PublicToPod), 3);

    let mut segment = tcp(80, 5555, ACK);
    segment.extend(0..64u8);
    let reply = frame((HOST_B, MAC_B), POD_B, INTERNET, TCP, segment);
    let [first, later] = fragmented(&reply, 9, 24);
    let out_first = run_on(&mut dp, programs::POD_TC_INGRESS, &first, TEST_IFINDEX);
    let out_later = run_on(&mut dp, programs::POD_TC_INGRESS, &later, TEST_IFINDEX);
    assert_eq!(
        out_later.verdict, TC_ACT_REDIRECT,
        "the group's later fragment"
    );
    assert_eq!(ip_src(&out_later.out), PUBLIC_B);
    assert_checksums(&reassembled(&out_first.out, &out_later.out));
    assert_eq!(drops(&dp, DropReason::NatFragment), 0);
}

/// A later fragment whose first fragment was not seen (lost, or overtaken) has no flow to
/// follow: from a pod to the internet it is dropped and counted; to the node's address it is
/// the node's stack's (its reassembly decides).
#[test]
fn a_later_fragment_without_its_first_is_dropped_and_counted() {
    let mut dp = nat_dataplane(32768, 65535);
    let datagram = from_pod_a(INTERNET, UDP, udp_datagram(40000, 53, 64));
    let [_, later] = fragmented(&datagram, 0x1234, 32);
    assert_eq!(to_pod_a(&mut dp, &later).verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, DropReason::NatFragment), 1);
    assert!(flows(&mut dp).is_empty());

    let reply = from_fabric(INTERNET, NODE_IP, UDP, udp_datagram(53, 40000, 64));
    let [_, later] = fragmented(&reply, 0x4321, 40);
    assert_eq!(at_uplink(&mut dp, &later).verdict, TC_PASS_ON);
}

#[test]
fn a_public_address_serves_its_exposed_port_only_and_replies_leave_with_it() {
    let mut dp = nat_dataplane(32768, 65535);
    let syn = from_fabric(INTERNET, PUBLIC_B, TCP, tcp(5555, 80, SYN));
    let r = at_uplink(&mut dp, &syn);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!((ip_dst(&r.out), dport(&r.out)), (POD_B, 80));
    assert_eq!(
        (ip_src(&r.out), sport(&r.out)),
        (INTERNET, 5555),
        "client kept"
    );
    assert_eq!(&r.out[0..6], &MAC_B);
    assert_checksums(&r.out);
    assert_eq!(traffic(&dp, Path::PublicToPod), 1);

    // Pod B answers from its private address: it leaves with the public one.
    let reply = frame(
        (HOST_B, MAC_B),
        POD_B,
        INTERNET,
        TCP,
        tcp(80, 5555, SYN | ACK),
    );
    let out = run_on(&mut dp, programs::POD_TC_INGRESS, &reply, TEST_IFINDEX);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!((ip_src(&out.out), sport(&out.out)), (PUBLIC_B, 80));
    assert_checksums(&out.out);

    // Another port, or UDP on the exposed one: dropped and counted.
    for f in [
        from_fabric(INTERNET, PUBLIC_B, TCP, tcp(5555, 81, SYN)),
        from_fabric(INTERNET, PUBLIC_B, UDP, udp_segment(5555, 80, false)),
    ] {
        assert_eq!(at_uplink(&mut dp, &f).verdict, TC_ACT_SHOT);
    }
    assert_eq!(drops(&dp, DropReason::PublicPortClosed), 2);

    // Its own connections to the internet leave with the public address too.
    let own = frame((HOST_B, MAC_B), POD_B, INTERNET, TCP, tcp(41000, 443, SYN));
    let out = run_on(&mut dp, programs::POD_TC_INGRESS, &own, TEST_IFINDEX);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(ip_src(&out.out), PUBLIC_B);
    assert_checksums(&out.out);

    // ARP for the public address is answered on the uplink.
    let arp = arp_request(FABRIC_MAC, EDGE, PUBLIC_B);
    assert_eq!(run(&mut dp, programs::UPLINK_XDP, &arp).verdict, XDP_TX);
}

#[test]
fn the_nodes_own_connections_and_pods_never_share_a_port_to_the_same_server() {
    let mut dp = nat_dataplane(40000, 40009);
    // A pod flow takes 40000 to the server first ...
    let r = to_pod_a(&mut dp, &from_pod_a(INTERNET, TCP, tcp(40000, 80, SYN)));
    assert_eq!(sport(&r.out), 40000);
    // ... then the node's socket picks 40000 to the same server: it is moved.
    let node_syn = frame(
        (FABRIC_MAC, UPLINK_MAC),
        NODE_IP,
        INTERNET,
        TCP,
        tcp(40000, 80, SYN),
    );
    let out = run(&mut dp, programs::UPLINK_TC_EGRESS, &node_syn);
    assert_eq!(out.verdict, TC_PASS_ON, "the node's packet goes on");
    let moved = sport(&out.out);
    assert_ne!(moved, 40000);
    assert!((40000..=40009).contains(&moved));
    assert_checksums(&out.out);
    assert_eq!(traffic(&dp, Path::HostNat), 1);
    // Its reply is put back on the node's port and handed to the node's stack.
    let reply = from_fabric(INTERNET, NODE_IP, TCP, tcp(80, moved, SYN | ACK));
    let back = at_uplink(&mut dp, &reply);
    assert_eq!(back.verdict, TC_PASS_ON);
    assert_eq!(dport(&back.out), 40000);
    assert_checksums(&back.out);
    // The pod's reply still reaches the pod.
    let pod_reply = from_fabric(INTERNET, NODE_IP, TCP, tcp(80, 40000, SYN | ACK));
    let back = at_uplink(&mut dp, &pod_reply);
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    assert_eq!(ip_dst(&back.out), POD_A);

    // The other way round: the node holds 40005 first, a pod asking for it gets another.
    let node_syn = frame(
        (FABRIC_MAC, UPLINK_MAC),
        NODE_IP,
        INTERNET,
        TCP,
        tcp(40005, 80, SYN),
    );
    let out = run(&mut dp, programs::UPLINK_TC_EGRESS, &node_syn);
    assert_eq!(sport(&out.out), 40005, "a free port is kept");
    let r = to_pod_a(&mut dp, &from_pod_a(INTERNET, TCP, tcp(40005, 80, SYN)));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_ne!(sport(&r.out), 40005);

    // The node's ports outside the range are not tracked.
    let before = flows(&mut dp).len();
    let ssh = frame(
        (FABRIC_MAC, UPLINK_MAC),
        NODE_IP,
        INTERNET,
        TCP,
        tcp(22, 5000, ACK),
    );
    assert_eq!(
        run(&mut dp, programs::UPLINK_TC_EGRESS, &ssh).verdict,
        TC_PASS_ON
    );
    assert_eq!(flows(&mut dp).len(), before);
}
