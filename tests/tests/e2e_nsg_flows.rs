//! End to end: Network Security Groups decide flows, not packets (issue 9). Outbound rules
//! see the pod before SNAT; the replies of an allowed flow pass whatever the inbound rules say;
//! a rule added by a live reload applies to new connections while established ones flow; and
//! the platform's addresses (168.63.129.16, 169.254.169.254) are not subject to NSGs. Checked
//! with real connections, the way a user would. Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use vnetd_lab::{
    ALLOWED_WAIT, EchoServer, EchoStream, INTERNET_HOST_IP, Lab, allowed, internet_host, refused,
    serial, tcp_echo, tcp_roundtrip, udp_echo,
    vnetd::{
        Agent, NsgRule, add_pod, expect_nsg_hits, hit_counts, lab_spec, node_cidr, node_with_pods,
        nsg_hits, with_nsg, with_public_group_ports,
    },
};

/// The Public group `web`'s address (the edge routes it to node-1).
const WEB_PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

/// An outbound deny of TCP port 25 (before SNAT: it sees the pod) drops a pod's SMTP to the
/// internet host, while TCP 80 and UDP 25 (the rule is TCP only) pass through SNAT as ever.
#[test]
fn outbound_smtp_is_denied_while_other_traffic_passes() -> Result<()> {
    let _serial = serial();
    let spec = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        &[NsgRule::deny_out("deny-smtp-out", 100).tcp().ports(["25"])],
    );
    let (lab, node, agent, pods) = node_with_pods(&spec, 1)?;
    let pod = &pods[0];
    let smtp = EchoServer::tcp(lab.internet(), 25)?;
    let web = EchoServer::tcp(lab.internet(), 80)?;
    let denied_before = agent.drops("nsg_denied")?;
    // Replies are no decisions: the inbound rules count nothing.
    let expected = hit_counts(&[
        ("deny-smtp-out", 1),
        ("AllowInternetOutBound", 2),
        ("AllowVnetOutBound", 0),
        ("DenyAllOutBound", 0),
        ("AllowVnetInBound", 0),
        ("AllowAzureLoadBalancerInBound", 0),
        ("DenyAllInBound", 0),
    ]);
    let hits_before = nsg_hits(&agent, "apps-nsg", &expected)?;

    let smtp_try = refused(pod, internet_host(25), "SMTP out");
    let web_try = allowed(pod, internet_host(80), "HTTP out");
    let udp = udp_echo(pod, lab.internet(), INTERNET_HOST_IP, 25, ALLOWED_WAIT)
        .context("UDP to port 25: the rule is TCP only");
    web_try?;
    assert!(
        web.seen().iter().all(|c| *c.peer.ip() == node.ip),
        "HTTP left with the node's address: {:?}",
        web.seen()
    );
    assert_eq!(*udp?.server_peer.ip(), node.ip);
    smtp_try?;
    assert!(
        smtp.seen().is_empty(),
        "nothing reached the SMTP server: {:?}",
        smtp.seen()
    );
    assert_eq!(
        agent.drops("nsg_denied")? - denied_before,
        1,
        "the one SMTP SYN was dropped as nsg_denied"
    );
    expect_nsg_hits(&agent, "apps-nsg", &expected, &hits_before)
}

/// With an inbound rule denying everything, a pod's own connections still work: the replies of
/// an allowed outbound flow pass without any inbound rule (TCP and UDP through SNAT to the
/// internet host, ICMP echo, TCP to a container group on the same node), while a new connection
/// towards the pod, from that group or from the node, is dropped.
#[test]
fn replies_of_allowed_outbound_flows_pass_an_nsg_denying_all_inbound() -> Result<()> {
    let _serial = serial();
    let spec = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        &[NsgRule::deny_in("deny-all-in", 100)],
    );
    let (lab, node, agent, pods) = node_with_pods(&spec, 1)?;
    let pod = &pods[0];
    // The lab's Private group `api` (10.0.1.10, TCP 8080) in `aci`, which has no NSG.
    let api = add_pod(&lab, &node, "api", None, "VNETD_CONTAINER_GROUP=api")?;
    // The two refused SYNs are the only inbound decisions: no reply is classified.
    let expected = hit_counts(&[
        ("deny-all-in", 2),
        ("AllowVnetInBound", 0),
        ("AllowAzureLoadBalancerInBound", 0),
        ("DenyAllInBound", 0),
    ]);
    let hits_before = nsg_hits(&agent, "apps-nsg", &expected)?;

    let tcp = tcp_echo(pod, lab.internet(), INTERNET_HOST_IP, 80, ALLOWED_WAIT)
        .context("TCP out to the internet host and its replies back in")?;
    assert_eq!(*tcp.server_peer.ip(), node.ip, "{tcp:?}");
    udp_echo(pod, lab.internet(), INTERNET_HOST_IP, 53, ALLOWED_WAIT)
        .context("UDP out to the internet host and its replies back in")?;
    assert_eq!(
        pod.ping_count(INTERNET_HOST_IP, 2)?,
        2,
        "echo replies come back in"
    );
    tcp_echo(pod, &api, api.ip, 8080, ALLOWED_WAIT)
        .context("TCP to a group on the same node and its replies back in")?;

    let _server = EchoServer::tcp(pod, 9000)?;
    let into_pod = SocketAddr::from((pod.ip, 9000));
    refused(
        &api,
        into_pod,
        "a new connection from the group into the pod",
    )?;
    refused(
        &node,
        into_pod,
        "a new connection from the node into the pod",
    )?;
    expect_nsg_hits(&agent, "apps-nsg", &expected, &hits_before)
}

/// A deny rule added by a live reload applies to new connections only: streams established
/// before it (from a pod on the same node and from one on the other node) keep echoing after
/// the reload, while new connections to the same port, from those pods and from the node, are
/// dropped. The hit counts carry over the reload.
#[test]
fn a_deny_added_live_blocks_new_connections_while_established_streams_flow() -> Result<()> {
    const PORT: u16 = 9100;
    let _serial = serial();
    let allow = NsgRule::allow_in("allow-echo", 200)
        .tcp()
        .ports([PORT.to_string()]);
    let spec_before = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        std::slice::from_ref(&allow),
    );
    let spec_after = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        &[
            NsgRule::deny_in("deny-echo", 100)
                .tcp()
                .ports([PORT.to_string()]),
            allow,
        ],
    );
    let lab = Lab::new()?;
    let node1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let node2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    let agent1 = Agent::start(&node1, &spec_before)?;
    let agent2 = Agent::start(&node2, &spec_before)?;
    let server = add_pod(&lab, &node1, "server", Some("apps"), "")?;
    let near = add_pod(&lab, &node1, "near", Some("apps"), "")?;
    let far = add_pod(&lab, &node2, "far", Some("apps"), "")?;
    // Decided on node-1 (the server's): the two streams before the reload, the three refused
    // SYNs after it. The reload keeps allow-echo's count (no reset, no second decision for
    // the streams).
    let expected = hit_counts(&[("allow-echo", 2), ("deny-echo", 3)]);
    let hits_at_start = nsg_hits(&agent1, "apps-nsg", &expected)?;
    let echo = EchoServer::tcp(&server, PORT)?;
    let dst = SocketAddr::from((server.ip, PORT));
    let streams = [
        EchoStream::start(&near, dst)?,
        EchoStream::start(&far, dst)?,
    ];
    for s in &streams {
        s.advances(0, 10_000, Duration::from_secs(5))?;
    }

    agent1.write_spec(&spec_after)?;
    agent2.write_spec(&spec_after)?;
    for agent in [&agent1, &agent2] {
        ensure!(
            agent.wait_for_status("reloads_ok", 1),
            "{} did not apply the edit: {}",
            agent.node.role,
            agent.log()
        );
    }
    let at_reload: Vec<u64> = streams.iter().map(EchoStream::bytes).collect();

    let new_ones = [
        refused(&near, dst, "a new connection from the near pod"),
        refused(&far, dst, "a new connection from the far pod"),
        refused(&node1, dst, "a new connection from the node"),
    ];
    for (s, from) in streams.iter().zip(&at_reload) {
        s.advances(*from, 10_000, Duration::from_secs(5))
            .context("the established stream after the reload")?;
    }
    std::thread::sleep(Duration::from_secs(1));
    for s in &streams {
        s.advances(s.bytes(), 10_000, Duration::from_secs(5))
            .context("the established stream a second later")?;
    }
    for r in new_ones {
        r?;
    }
    expect_nsg_hits(&agent1, "apps-nsg", &expected, &hits_at_start)?;
    assert_eq!(
        echo.seen().len(),
        2,
        "only the two streams ever reached the server: {:?}",
        echo.seen()
    );
    for s in streams {
        s.check()?;
        s.stop();
    }
    Ok(())
}

/// Azure's platform address (wire server, health probes).
const PLATFORM_IP: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Traffic between a pod and 168.63.129.16 or 169.254.169.254 is not subject to NSGs. The lab
/// hosts both addresses on the internet namespace (addresses on its loopback and edge routes:
/// nothing outside the lab's namespaces; in Azure the host answers them, here they sit beyond
/// the node). With rules denying everything both ways, a pod still reaches both (168.63.129.16
/// through SNAT) while the internet host stays refused, and a connection from 168.63.129.16 to a
/// Public group's address reaches the group while one from the internet host does not.
#[test]
fn the_platform_address_is_exempt_from_nsgs() -> Result<()> {
    const PORT: u16 = 8080;
    let _serial = serial();
    let spec = with_nsg(
        &with_public_group_ports(&lab_spec(), "web", WEB_PUBLIC_IP, &[PORT]),
        "apps-nsg",
        &["apps"],
        &[
            NsgRule::deny_in("deny-all-in", 100),
            NsgRule::deny_out("deny-all-out", 100),
        ],
    );
    let (lab, node, _agent, pods) = node_with_pods(&spec, 1)?;
    let pod = &pods[0];
    let web = add_pod(&lab, &node, "web", None, "VNETD_CONTAINER_GROUP=web")?;
    lab.host_public_ip(&node, WEB_PUBLIC_IP)?;
    lab.add_internet_ip(PLATFORM_IP)?;
    let _platform = EchoServer::tcp(lab.internet(), 80)?;

    let to_internet = refused(pod, internet_host(80), "the pod to the internet host");
    allowed(
        pod,
        SocketAddr::from((PLATFORM_IP, 80)),
        "the pod to the platform address",
    )?;

    let _group_server = EchoServer::tcp(&web, PORT)?;
    let public = SocketAddr::from((WEB_PUBLIC_IP, PORT));
    let from_internet = refused(
        lab.internet(),
        public,
        "the internet host to the group's public address",
    );
    let mut probe = lab
        .internet()
        .tcp_connect_from(SocketAddr::from((PLATFORM_IP, 0)), public, ALLOWED_WAIT)
        .context("from the platform address to the group's public address")?;
    tcp_roundtrip(&mut probe, b"probe", ALLOWED_WAIT)
        .context("an echo from the platform address through the group's public address")?;
    // The controls last: without them the exemptions prove nothing, but they are what fails
    // while NSGs are not enforced.
    // The metadata address is never masqueraded: the pod's own address goes out, and the
    // edge is given a route back to this one pod (it has none to pods otherwise).
    lab.add_internet_ip(METADATA_IP)?;
    lab.edge().ip([
        "route",
        "add",
        &format!("{}/32", pod.ip),
        "via",
        &node.ip.to_string(),
    ])?;
    let metadata = EchoServer::tcp(lab.internet(), 81)?;
    allowed(
        pod,
        SocketAddr::from((METADATA_IP, 81)),
        "the pod to the metadata address",
    )?;
    assert_eq!(*metadata.seen()[0].peer.ip(), pod.ip, "not masqueraded");
    to_internet?;
    from_internet?;
    Ok(())
}
