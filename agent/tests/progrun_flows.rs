//! BPF_PROG_RUN tests of the flow stage (`ebpf/vnetd-ebpf/src/flow.rs`): NSGs decided once per
//! flow at the right place (the receiver's inbound rules at the sender's veth for a pod on the
//! same node, at `pod_egress` for the node's own traffic), replies of allowed flows passing
//! without rules, a container group's unexposed ports, and Kubernetes Services' traffic handed
//! to the node's stack. Needs root (CAP_BPF).
mod support;

use std::time::Duration;
use support::{packets::*, *};

use vnetd::{
    compile::{ServiceTags, nsg::NsgTables, nsg::compile_nsgs, prefix::complement},
    dataplane::{Dataplane, maps::nsg, tables::TableStore},
    gc,
    spec::{
        Access, AddressPrefix, Direction, NetworkSecurityGroup, PortRange, Protocol, SecurityRule,
    },
};
use vnetd_common::{
    DropReason, ENDPOINT_EXPOSED_PORTS_ONLY, FLOW_ASSURED, FLOW_OWNER_ANSWERER, FLOW_OWNER_OPENER,
    FLOW_SEEN_REPLY, FlowKind, GroupPortKey, NodeConfig, Path, maps, programs,
};

const POD_B_INBOUND: u32 = 11;
const POD_B_OUTBOUND: u32 = 12;

/// Pod B's subnet NSG: inbound TCP 80 allowed, everything else inbound denied; outbound the
/// defaults.
fn b_with_web_only_nsg(dp: &mut Dataplane) {
    let rule = |name: &str, priority, access, protocol, port: Option<u16>| SecurityRule {
        name: name.into(),
        description: None,
        priority,
        direction: Direction::Inbound,
        access,
        protocol,
        source_address_prefixes: vec![AddressPrefix::Any],
        source_port_ranges: vec![PortRange::ANY],
        destination_address_prefixes: vec![AddressPrefix::Any],
        destination_port_ranges: vec![port.map_or(PortRange::ANY, PortRange::single)],
    };
    let group = NetworkSecurityGroup {
        name: "b-nsg".into(),
        security_rules: vec![
            rule("allow-web", 100, Access::Allow, Protocol::Tcp, Some(80)),
            rule("deny-all-in", 200, Access::Deny, Protocol::Any, None),
        ],
    };
    let vnet = vec!["10.0.0.0/16".parse().unwrap()];
    let tags = ServiceTags {
        internet: complement(&vnet),
        virtual_network: vnet,
    };
    let tables = compile_nsgs(&[group], &tags).unwrap();
    let inbound = tables
        .classifier(NsgTables::classifier_id(1, Direction::Inbound))
        .unwrap();
    let outbound = tables
        .classifier(NsgTables::classifier_id(1, Direction::Outbound))
        .unwrap();
    TableStore::write(
        dp,
        &[
            (POD_B_INBOUND, &nsg::entries(inbound)),
            (POD_B_OUTBOUND, &nsg::entries(outbound)),
        ],
    )
    .unwrap();
    let mut b = dp.endpoints().unwrap()[&POD_B.into()];
    b.nsg_in_subnet = POD_B_INBOUND;
    b.nsg_out_subnet = POD_B_OUTBOUND;
    dp.put_endpoint(POD_B.into(), b).unwrap();
}

fn from_pod_b(dst: [u8; 4], proto: u8, l4: Vec<u8>) -> Vec<u8> {
    frame((HOST_B, MAC_B), POD_B, dst, proto, l4)
}

fn pod_sends(dp: &mut Dataplane, f: &[u8]) -> Run {
    run_on(dp, programs::POD_TC_INGRESS, f, TEST_IFINDEX)
}

/// What the node's stack sends into pod B (`pod_egress` on its host veth); `forwarded`: the
/// stack routed it from another interface.
fn stack_sends(dp: &mut Dataplane, f: &[u8], forwarded: bool) -> Run {
    const INGRESS_IFINDEX_OFFSET: usize = 36; // offsetof(struct __sk_buff, ingress_ifindex)
    let mut ctx = skb_ctx_on(TEST_IFINDEX);
    if forwarded {
        ctx[INGRESS_IFINDEX_OFFSET..INGRESS_IFINDEX_OFFSET + 4]
            .copy_from_slice(&TEST_IFINDEX.to_ne_bytes());
    }
    run_with_ctx(dp, programs::POD_TC_EGRESS, f, Some(&ctx))
}

/// The flow's entry for the direction `f` travels, if there is one.
fn entry(dp: &Dataplane, f: &[u8]) -> Option<vnetd_common::Flow> {
    let key = vnetd_common::FlowKey {
        src_ip: ip_src(f),
        dst_ip: ip_dst(f),
        src_port: sport(f).to_be(),
        dst_port: dport(f).to_be(),
        proto: f[23],
        _pad: [0; 3],
    };
    dp.conntrack_maps().unwrap().get(&key).unwrap()
}

fn flow_kind(dp: &Dataplane, f: &[u8]) -> Option<u8> {
    entry(dp, f).map(|flow| flow.kind)
}

fn status(dp: &Dataplane, f: &[u8]) -> Option<u8> {
    entry(dp, f).map(|flow| flow.status)
}

#[test]
fn a_same_node_flow_is_decided_by_the_receivers_inbound_rules_and_its_replies_pass() {
    let mut dp = dataplane();
    b_with_web_only_nsg(&mut dp);

    let syn = from_pod_a(POD_B, TCP, tcp(40000, 80, SYN));
    assert_eq!(pod_sends(&mut dp, &syn).verdict, TC_ACT_REDIRECT);
    assert_eq!(flow_kind(&dp, &syn), Some(FlowKind::Nsg as u8));
    // B's answer passes its own veth without rules: its flow's reply entry is found.
    let syn_ack = from_pod_b(POD_A, TCP, tcp(80, 40000, SYN | ACK));
    assert_eq!(pod_sends(&mut dp, &syn_ack).verdict, TC_ACT_REDIRECT);

    let denied = drops(&dp, DropReason::NsgDenied);
    let other = from_pod_a(POD_B, TCP, tcp(40001, 81, SYN));
    assert_eq!(pod_sends(&mut dp, &other).verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, DropReason::NsgDenied), denied + 1);
    assert_eq!(flow_kind(&dp, &other), None, "a denied flow gets no entry");

    // B's own connection out: its outbound defaults allow it; A's answer comes back although
    // B's inbound rules deny everything but TCP 80.
    let out = from_pod_b(POD_A, UDP, udp_segment(5000, 53, false));
    assert_eq!(pod_sends(&mut dp, &out).verdict, TC_ACT_REDIRECT);
    let answer = from_pod_a(POD_B, UDP, udp_segment(53, 5000, false));
    assert_eq!(pod_sends(&mut dp, &answer).verdict, TC_ACT_REDIRECT);
    assert_eq!(drops(&dp, DropReason::NsgDenied), denied + 1);
}

#[test]
fn the_nodes_own_traffic_into_a_pod_meets_its_inbound_rules_at_pod_egress() {
    let mut dp = dataplane();
    b_with_web_only_nsg(&mut dp);
    let to_node = |l4| frame((HOST_B, UPLINK_MAC), NODE_IP, POD_B, TCP, l4);

    assert_eq!(
        stack_sends(&mut dp, &to_node(tcp(41000, 22, SYN)), false).verdict,
        TC_ACT_SHOT
    );
    let web = to_node(tcp(41001, 80, SYN));
    assert_eq!(stack_sends(&mut dp, &web, false).verdict, TC_PASS_ON);
    assert_eq!(flow_kind(&dp, &web), Some(FlowKind::Nsg as u8));
    // B's reply to the node is its stack's, with no rule asked.
    let reply = from_pod_b(NODE_IP, TCP, tcp(80, 41001, SYN | ACK));
    assert_eq!(pod_sends(&mut dp, &reply).verdict, TC_PASS_ON);
    assert!(traffic(&dp, Path::HostToPod) >= 2);
}

/// `pod_egress` finds the pod through this CPU's endpoint cache (pinned to CPU 0, so every run
/// sees the same cache): the node's next packet meets an NSG added to the pod, or taken away.
#[test]
fn the_nodes_next_packet_into_a_pod_meets_its_changed_endpoint() {
    pin_to_cpu(0);
    let mut dp = dataplane();
    let ssh = |sport| {
        let f = frame(
            (HOST_B, UPLINK_MAC),
            NODE_IP,
            POD_B,
            TCP,
            tcp(sport, 22, SYN),
        );
        move |dp: &mut Dataplane| stack_sends(dp, &f, false).verdict
    };
    assert_eq!(ssh(41000)(&mut dp), TC_PASS_ON, "no NSG yet");
    b_with_web_only_nsg(&mut dp);
    assert_eq!(ssh(41001)(&mut dp), TC_ACT_SHOT, "the NSG just given to B");
    let mut b = dp.endpoints().unwrap()[&POD_B.into()];
    b.nsg_in_subnet = 0;
    dp.put_endpoint(POD_B.into(), b).unwrap();
    assert_eq!(ssh(41002)(&mut dp), TC_PASS_ON, "B's NSG taken away");
    assert_eq!(drops(&dp, DropReason::NsgDenied), 1);
}

#[test]
fn a_container_groups_unexposed_ports_are_refused_before_its_nsg() {
    let mut dp = dataplane();
    let mut b = dp.endpoints().unwrap()[&POD_B.into()];
    b.flags = ENDPOINT_EXPOSED_PORTS_ONLY;
    dp.put_endpoint(POD_B.into(), b).unwrap();
    {
        let mut ports: aya::maps::HashMap<_, GroupPortKey, u32> =
            aya::maps::HashMap::try_from(dp.raw_map_mut(maps::GROUP_PORTS).unwrap()).unwrap();
        let key = GroupPortKey {
            ip: POD_B,
            port: 8080u16.to_be(),
            proto: TCP,
            _pad: 0,
        };
        ports.insert(key, 1, 0).unwrap();
    }
    let closed = from_pod_a(POD_B, TCP, tcp(40000, 2020, SYN));
    assert_eq!(pod_sends(&mut dp, &closed).verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, DropReason::PortNotExposed), 1);
    let open = from_pod_a(POD_B, TCP, tcp(40000, 8080, SYN));
    assert_eq!(pod_sends(&mut dp, &open).verdict, TC_ACT_REDIRECT);
    // The group's own connection: the answer to its (unexposed) port comes back.
    let out = from_pod_b(POD_A, TCP, tcp(45000, 80, SYN));
    assert_eq!(pod_sends(&mut dp, &out).verdict, TC_ACT_REDIRECT);
    let answer = from_pod_a(POD_B, TCP, tcp(80, 45000, SYN | ACK));
    assert_eq!(pod_sends(&mut dp, &answer).verdict, TC_ACT_REDIRECT);
    assert_eq!(drops(&dp, DropReason::PortNotExposed), 1);
}

#[test]
fn services_traffic_goes_to_the_nodes_stack_and_so_do_its_replies() {
    let mut dp = dataplane();
    dp.set_node(NodeConfig {
        service_net: [10, 96, 0, 0],
        service_mask: [255, 255, 0, 0],
        ..node_config()
    })
    .unwrap();

    // To a ClusterIP: to the stack, untracked (kube-proxy's conntrack has it).
    let to_service = from_pod_a([10, 96, 0, 10], UDP, udp_segment(5353, 53, false));
    assert_eq!(pod_sends(&mut dp, &to_service).verdict, TC_PASS_ON);
    assert_eq!(traffic(&dp, Path::PodToService), 1);
    // The stack, having DNATed it to pod B, forwards it into B's veth: the flow is the stack's.
    let dnatted = frame(
        (HOST_B, UPLINK_MAC),
        POD_A,
        POD_B,
        UDP,
        udp_segment(5353, 5353, false),
    );
    assert_eq!(stack_sends(&mut dp, &dnatted, true).verdict, TC_PASS_ON);
    assert_eq!(flow_kind(&dp, &dnatted), Some(FlowKind::HostStack as u8));
    // B's answer goes back to the stack (to be un-DNATed), not straight into pod A.
    let answer = from_pod_b(POD_A, UDP, udp_segment(5353, 5353, false));
    assert_eq!(pod_sends(&mut dp, &answer).verdict, TC_PASS_ON);
    assert_eq!(traffic(&dp, Path::PodToService), 2);
    // Pod-to-pod traffic that is no Service's is still delivered straight.
    let direct = from_pod_b(POD_A, UDP, udp_segment(6000, 7000, false));
    assert_eq!(pod_sends(&mut dp, &direct).verdict, TC_ACT_REDIRECT);
}

/// A full table degrades new flows, never old ones: a flood of new flows, half again as many
/// as FLOWS holds, evicts flood flows, while flows that kept sending through it keep both their
/// entries (the same ones: their counts run on) and every packet of them passes. Two such
/// flows: a connection that talks both ways, and a one-way stream whose receiver stays silent,
/// whose reply entry nothing looks up unless the dataplane does (the LRU evicts first what
/// nothing looked up).
#[test]
fn a_flood_of_new_flows_evicts_new_flows_and_keeps_the_flows_in_use() {
    let mut dp = dataplane();
    b_with_web_only_nsg(&mut dp);
    let request = from_pod_a(POD_B, TCP, tcp(40000, 80, ACK));
    let answer = from_pod_b(POD_A, TCP, tcp(80, 40000, ACK));
    let stream = from_pod_a(POD_B, TCP, tcp(40001, 80, ACK));
    let stream_reply = from_pod_b(POD_A, TCP, tcp(80, 40001, ACK));
    for old in [&request, &stream] {
        let mut syn = old.clone();
        syn[47] = SYN;
        assert_eq!(pod_sends(&mut dp, &syn).verdict, TC_ACT_REDIRECT);
    }

    let mut sent = 1u64;
    let flood = flood_of_new_flows(&mut dp, |dp, _, i| {
        if i % 512 == 0 {
            for f in [&request, &answer, &stream] {
                assert_eq!(pod_sends(dp, f).verdict, TC_ACT_REDIRECT, "flood flow {i}");
            }
            sent += 1;
        }
    });
    let entry_of = |f: &[u8], what: &str| entry(&dp, f).unwrap_or_else(|| panic!("{what}"));
    assert_eq!(entry_of(&request, "connection, original").packets, sent);
    assert_eq!(entry_of(&answer, "connection, reply").packets, sent - 1);
    assert_eq!(entry_of(&stream, "stream, original").packets, sent);
    assert_eq!(entry_of(&stream_reply, "stream, reply").packets, 0);
    assert!(
        entry(&dp, &flood).is_some(),
        "the newest flow got its entries"
    );
    let mut flood = flood;
    flood[34..38].copy_from_slice(&[4, 0, 0x27, 0x10]); // the first flood flow: 1024 -> 10000
    assert!(
        entry(&dp, &flood).is_none(),
        "the table was full: the oldest flood flow made room"
    );
}

/// A connection that has been answered is an old flow: a flood of new flows, half again as many
/// as the table holds, does not take its entries while it is idle. Its next packets pass, on the
/// same entries: also the answer that B's inbound rules deny unless it is a reply.
#[test]
fn a_flood_of_new_flows_keeps_idle_connections() {
    let mut dp = dataplane();
    b_with_web_only_nsg(&mut dp);
    // B connects out to A; A's side comes back against B's deny-all-in, as the reply it is.
    let handshake = [
        from_pod_b(POD_A, TCP, tcp(40002, 5432, SYN)),
        from_pod_a(POD_B, TCP, tcp(5432, 40002, SYN | ACK)),
        from_pod_b(POD_A, TCP, tcp(40002, 5432, ACK)),
    ];
    for f in &handshake {
        assert_eq!(pod_sends(&mut dp, f).verdict, TC_ACT_REDIRECT);
    }

    // A storm of short connections: each flood flow is answered, so the table holds nothing
    // nobody looked up.
    let mut flood_answer = from_pod_a(POD_B, UDP, udp_segment(1, 1, true));
    flood_of_new_flows(&mut dp, |dp, flood, _| {
        flood_answer[34..36].copy_from_slice(&flood[36..38]);
        flood_answer[36..38].copy_from_slice(&flood[34..36]);
        assert_eq!(pod_sends(dp, &flood_answer).verdict, TC_ACT_REDIRECT);
    });

    let denied = drops(&dp, DropReason::NsgDenied);
    let answer = from_pod_a(POD_B, TCP, tcp(5432, 40002, ACK));
    assert_eq!(
        pod_sends(&mut dp, &answer).verdict,
        TC_ACT_REDIRECT,
        "the idle connection's answer after the flood"
    );
    assert_eq!(drops(&dp, DropReason::NsgDenied), denied);
    let request = &handshake[2];
    assert_eq!(pod_sends(&mut dp, request).verdict, TC_ACT_REDIRECT);
    let packets = |f: &[u8]| entry(&dp, f).map(|flow| flow.packets);
    assert_eq!(
        packets(request),
        Some(3),
        "the connection's own entries, counting on"
    );
    assert_eq!(packets(&answer), Some(2));
    let events = conntrack_events(&dp);
    assert_eq!(
        events["flows_assured"], 1,
        "only the connection was assured"
    );
    assert_eq!(events["assured_table_full"], 0);

    // Assured is not forever: the collector expires it like any flow, and then A's packet is
    // a new flow that B's inbound rules deny.
    let mut maps = dp.conntrack_maps().unwrap();
    let later = gc::monotonic_ns() + 3_600_000_000_000;
    gc::gc_pass(
        &mut maps,
        later,
        &gc::Timeouts::new(Duration::from_secs(60)),
    )
    .unwrap();
    assert_eq!(entry(&dp, request), None, "expired");
    assert_eq!(pod_sends(&mut dp, &answer).verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, DropReason::NsgDenied), denied + 1);
}

/// A UDP exchange between the pod at `client` (on pod B's veth, with B's MAC) and pod A, the
/// `i`-th of a series (its ports from `i`): the client's request, A's answer, the client's
/// second request, which assures the flow. Returns the request and the answer.
fn exchange(dp: &mut Dataplane, client: [u8; 4], i: u32) -> (Vec<u8>, Vec<u8>) {
    let (sport, dport) = (1024 + (i % 60_000) as u16, 10_000 + (i / 60_000) as u16);
    let request = frame(
        (HOST_B, MAC_B),
        client,
        POD_A,
        UDP,
        udp_segment(sport, dport, true),
    );
    let answer = from_pod_a(client, UDP, udp_segment(dport, sport, true));
    for f in [&request, &answer, &request] {
        assert_eq!(pod_sends(dp, f).verdict, TC_ACT_REDIRECT, "exchange {i}");
    }
    (request, answer)
}

/// Pods of B's kind (B's veth, MAC, and NSG, so their flows are tracked) at 10.0.3.0, ...
fn pods_like_b(dp: &mut Dataplane, n: u8) -> Vec<[u8; 4]> {
    let b = dp.endpoints().unwrap()[&POD_B.into()];
    (0..n)
        .map(|i| {
            let ip = [10, 0, 3, i];
            dp.put_endpoint(ip.into(), b).unwrap();
            ip
        })
        .collect()
}

/// FLOWS full: a new flow that would be assured stays new (counted), its packets still pass,
/// and the assured flows keep their entries.
#[test]
fn with_the_assured_table_full_new_flows_stay_new_and_pass() {
    let mut dp = dataplane();
    b_with_web_only_nsg(&mut dp);
    // Eight pods' UDP exchanges with A, each pod up to its share: as many as FLOWS holds.
    let share = maps::ASSURED_FLOWS_PER_ENDPOINT as u32;
    let pods = pods_like_b(&mut dp, 8);
    assert_eq!(u64::from(share) * 8 * 2, u64::from(maps::FLOWS_MAX));
    let (first, _) = exchange(&mut dp, pods[0], 0);
    for (n, pod) in pods.iter().enumerate() {
        for i in u32::from(n == 0)..share {
            exchange(&mut dp, *pod, i);
        }
    }
    let events = conntrack_events(&dp);
    assert_eq!(events["flows_assured"], u64::from(8 * share));
    assert_eq!(events["assured_table_full"], 0);
    assert_eq!(events["assured_quota_exceeded"], 0);

    // B holds no assured flow, but there is no room.
    let (request, answer) = exchange(&mut dp, POD_B, 0);
    let events = conntrack_events(&dp);
    assert_eq!(events["flows_assured"], u64::from(8 * share), "no room");
    assert_eq!(events["assured_table_full"], 1);
    // Still new; it tries again a second on, not at each packet.
    assert_eq!(status(&dp, &request), Some(0));
    assert_eq!(status(&dp, &answer), Some(0));
    assert_eq!(pod_sends(&mut dp, &answer).verdict, TC_ACT_REDIRECT);
    assert_eq!(
        status(&dp, &first),
        Some(FLOW_ASSURED | FLOW_SEEN_REPLY | FLOW_OWNER_OPENER)
    );
    assert_eq!(entry(&dp, &first).map(|flow| flow.packets), Some(2));
}

/// One pod cannot fill FLOWS for the others: its assured flows stop at its share (its flows
/// beyond it stay new, and pass), while other pods' flows, opened or answered, are still
/// assured. The collector's pass writes the true counts, and as flows expire the pod's flows
/// are assured again.
#[test]
fn one_pod_holds_at_most_its_share_of_the_assured_flows() {
    let mut dp = dataplane();
    b_with_web_only_nsg(&mut dp);
    let share = maps::ASSURED_FLOWS_PER_ENDPOINT;
    for i in 0..share as u32 {
        exchange(&mut dp, POD_B, i);
    }
    let (request, answer) = exchange(&mut dp, POD_B, share as u32);
    let events = conntrack_events(&dp);
    assert_eq!(events["flows_assured"], share);
    assert_eq!(events["assured_quota_exceeded"], 1);
    assert_eq!(events["assured_table_full"], 0);
    assert_eq!(
        status(&dp, &request),
        Some(0),
        "B's flow beyond its share stays new"
    );
    assert_eq!(pod_sends(&mut dp, &answer).verdict, TC_ACT_REDIRECT);

    // A's connection to B's web port counts against A, its opener.
    let web = [
        from_pod_a(POD_B, TCP, tcp(40000, 80, SYN)),
        from_pod_b(POD_A, TCP, tcp(80, 40000, SYN | ACK)),
        from_pod_a(POD_B, TCP, tcp(40000, 80, ACK)),
    ];
    for f in &web {
        assert_eq!(pod_sends(&mut dp, f).verdict, TC_ACT_REDIRECT);
    }
    assert_eq!(
        status(&dp, &web[2]),
        Some(FLOW_ASSURED | FLOW_SEEN_REPLY | FLOW_OWNER_OPENER)
    );
    // The node's connection to pod C's web port counts against C, which answered it (the
    // node is no pod).
    let c = pods_like_b(&mut dp, 1)[0];
    let node_to_c = |l4| frame((HOST_B, UPLINK_MAC), NODE_IP, c, TCP, l4);
    let c_answers = frame((HOST_B, MAC_B), c, NODE_IP, TCP, tcp(80, 41000, SYN | ACK));
    assert_eq!(
        stack_sends(&mut dp, &node_to_c(tcp(41000, 80, SYN)), false).verdict,
        TC_PASS_ON
    );
    assert_eq!(pod_sends(&mut dp, &c_answers).verdict, TC_PASS_ON);
    let node_acks = node_to_c(tcp(41000, 80, ACK));
    assert_eq!(stack_sends(&mut dp, &node_acks, false).verdict, TC_PASS_ON);
    assert_eq!(
        status(&dp, &node_acks),
        Some(FLOW_ASSURED | FLOW_SEEN_REPLY | FLOW_OWNER_ANSWERER)
    );
    assert_eq!(conntrack_events(&dp)["flows_assured"], share + 2);

    let mut maps = dp.conntrack_maps().unwrap();
    let counts = |maps: &vnetd::dataplane::maps::ConntrackMaps| {
        let by_pod = maps.assured_by_endpoint().unwrap();
        [POD_B, POD_A, c].map(|ip| by_pod.get(&ip.into()).copied())
    };
    assert_eq!(
        counts(&maps),
        [Some(share), Some(1), Some(1)],
        "as the programs counted"
    );
    // The collector's recount agrees, and writes what is left after expiry: B's flows are
    // UDP, gone after their idle timeout; the two TCP connections are established, kept.
    let timeouts = gc::Timeouts {
        tcp_established: Duration::from_secs(3600),
        ..gc::Timeouts::new(Duration::from_secs(60))
    };
    let pass = gc::gc_pass(&mut maps, gc::monotonic_ns(), &timeouts).unwrap();
    assert_eq!(pass.assured_by_endpoint.len(), 3);
    assert_eq!(counts(&maps), [Some(share), Some(1), Some(1)]);
    let later = gc::monotonic_ns() + 120_000_000_000;
    gc::gc_pass(&mut maps, later, &timeouts).unwrap();
    assert_eq!(counts(&maps), [None, Some(1), Some(1)], "B's flows expired");
    exchange(&mut dp, POD_B, 0);
    assert_eq!(conntrack_events(&dp)["flows_assured"], share + 3);
    assert_eq!(counts(&maps), [Some(1), Some(1), Some(1)]);
}

fn conntrack_events(dp: &Dataplane) -> std::collections::HashMap<&'static str, u64> {
    let stats = dp.conntrack_stats().unwrap();
    stats
        .into_iter()
        .map(|(stat, n)| (stat.name(), n))
        .collect()
}

/// Sends new flows from B to A, three quarters of FLOWS_MAX of them (two entries each: half
/// again as many entries as the table holds), calling `between(dp, frame, i)` after the `i`-th. B's
/// outbound rules are the defaults and A has no NSG, so every one gets its entries. Returns the
/// last flood frame.
fn flood_of_new_flows(
    dp: &mut Dataplane,
    mut between: impl FnMut(&mut Dataplane, &[u8], u32),
) -> Vec<u8> {
    let mut flood = from_pod_b(POD_A, UDP, udp_segment(1, 1, true));
    for i in 0..3 * maps::FLOWS_MAX / 4 {
        let (sport, dport) = (1024 + (i % 60_000) as u16, 10_000 + (i / 60_000) as u16);
        flood[34..36].copy_from_slice(&sport.to_be_bytes());
        flood[36..38].copy_from_slice(&dport.to_be_bytes());
        assert_eq!(pod_sends(dp, &flood).verdict, TC_ACT_REDIRECT);
        between(dp, &flood, i);
    }
    flood
}
