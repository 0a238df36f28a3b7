//! End to end: a Public container group (issue 8): its public address answered on the node,
//! translated 1:1 to its private address for the ports it exposes (the client's address kept),
//! everything else dropped and counted, and its own outbound traffic leaving with the public
//! address. The edge routes the public address to the node (`Lab::host_public_ip`) and has no
//! route to the group's private address. Needs root.
use std::{io::ErrorKind, net::Ipv4Addr, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use vnetd_lab::{
    EchoServer, INTERNET_HOST_IP, Lab, serial, tcp_echo, udp_echo, udp_roundtrip,
    vnetd::{Agent, Pod, add_pod, lab_spec, node_cidr, with_public_group},
};

const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const EXPOSED_PORT: u16 = 8080;

/// Node-1 running an agent whose spec adds the Public group `web` (203.0.113.20, TCP 8080),
/// the group attached through the CNI plugin, and the edge routing its public address to
/// node-1.
fn public_group() -> Result<(Lab, Agent, Pod)> {
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let spec = with_public_group(&lab_spec(), "web", PUBLIC_IP, EXPOSED_PORT);
    let agent = Agent::start(&node, &spec)?;
    let web = add_pod(&lab, &node, "web", None, "VNETD_CONTAINER_GROUP=web")?;
    assert!(
        "10.0.2.0/23"
            .parse::<vnetd_lab::ipnet::Ipv4Net>()?
            .contains(&web.ip),
        "a Public group gets a private address in its subnet: {}",
        web.ip
    );
    lab.host_public_ip(&node, PUBLIC_IP)?;
    Ok((lab, agent, web))
}

/// The internet host reaches the group on its exposed port at the public address; the group
/// sees the client's own address, on its private address; the answer comes from the public
/// address.
#[test]
fn a_public_group_is_reachable_on_its_exposed_port_with_the_client_address() -> Result<()> {
    let _serial = serial();
    let (lab, agent, web) = public_group()?;
    let report = tcp_echo(
        lab.internet(),
        &web,
        PUBLIC_IP,
        EXPOSED_PORT,
        Duration::from_secs(5),
    )
    .context("from the internet to the group's public address")?;
    assert_eq!(
        *report.server_peer.ip(),
        INTERNET_HOST_IP,
        "the group sees the client: {report:?}"
    );
    assert_eq!(
        report.server_local.map(|a| *a.ip()),
        Some(web.ip),
        "translated to the private address: {report:?}"
    );
    assert_eq!(
        report.reply_from,
        "203.0.113.20:8080".parse()?,
        "the answer comes from the public address: {report:?}"
    );
    assert!(agent.traffic("public_to_pod")? >= 3);
    assert_eq!(agent.drops("public_port_closed")?, 0);
    Ok(())
}

/// Another TCP port and the exposed port over UDP (the protocol is part of what is exposed)
/// get no answer at all, even with a server listening in the group, and are counted.
#[test]
fn a_public_group_is_closed_on_other_ports() -> Result<()> {
    let _serial = serial();
    let (lab, agent, web) = public_group()?;
    let server = EchoServer::tcp(&web, 8081)?;
    let refused = lab
        .internet()
        .tcp_connect(SocketAddr::from((PUBLIC_IP, 8081)), Duration::from_secs(2))
        .expect_err("port 8081 is not exposed");
    let kind = refused
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert_eq!(
        kind,
        Some(ErrorKind::TimedOut),
        "dropped, not reset: {refused:#}"
    );
    assert!(server.seen().is_empty(), "nothing reached the group");
    let tcp_drops = agent.drops("public_port_closed")?;
    assert!(tcp_drops >= 1, "the SYNs were counted");

    let udp_server = EchoServer::udp(&web, EXPOSED_PORT)?;
    let udp = udp_roundtrip(
        lab.internet(),
        SocketAddr::from((PUBLIC_IP, EXPOSED_PORT)),
        Duration::from_millis(900),
    );
    assert!(udp.is_err(), "UDP {EXPOSED_PORT} is not exposed: {udp:?}");
    assert!(udp_server.seen().is_empty(), "nothing reached the group");
    assert!(agent.drops("public_port_closed")? > tcp_drops);
    Ok(())
}

/// The group's own connections to the internet leave with its public address, not the node's.
#[test]
fn a_public_group_goes_out_with_its_public_address() -> Result<()> {
    let _serial = serial();
    let (lab, _agent, web) = public_group()?;
    let tcp = tcp_echo(
        &web,
        lab.internet(),
        INTERNET_HOST_IP,
        7701,
        Duration::from_secs(5),
    )
    .context("TCP from the group to the internet host")?;
    assert_eq!(*tcp.server_peer.ip(), PUBLIC_IP, "{tcp:?}");
    let udp = udp_echo(
        &web,
        lab.internet(),
        INTERNET_HOST_IP,
        7702,
        Duration::from_secs(5),
    )
    .context("UDP from the group to the internet host")?;
    assert_eq!(*udp.server_peer.ip(), PUBLIC_IP, "{udp:?}");
    assert_eq!(
        web.ping_count(INTERNET_HOST_IP, 2)?,
        2,
        "ping from the group"
    );
    Ok(())
}
