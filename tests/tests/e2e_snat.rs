//! End to end: pods reaching the lab's `internet` namespace through SNAT to the node's primary
//! address (issue 8). The edge has no route to pod addresses, so a conversation with the
//! internet host works only if the dataplane translated it both ways, and the far end's servers
//! report which address and port they saw. Needs root.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use vnetd_lab::{
    Capture, EchoServer, EchoStream, INTERNET_HOST_IP, Lab, LogMode, internet_host,
    raise_open_files_limit, serial, sink_transfer, tcp_echo, tcp_roundtrip, udp_echo,
    vnetd::{Agent, Pod, add_pod, lab_spec, node_cidr, node_with_pods, with_outbound_nat},
};

/// The default `outboundNat.portRange`.
const DEFAULT_SNAT_PORTS: std::ops::RangeInclusive<u16> = 32768..=65535;

/// Nothing the internet side captured carried the pod's own address.
fn assert_pod_address_hidden(capture: &Capture, pod: &Pod) {
    assert!(
        !capture
            .lines()
            .iter()
            .any(|l| l.contains(&pod.ip.to_string())),
        "the pod's own address never reached the internet: {:?}",
        capture.lines()
    );
}

/// TCP, UDP and ping from a pod to the internet host: each works, and the internet side sees
/// the node's primary address (with a port from the default range), never the pod's.
#[test]
fn pods_reach_the_internet_with_the_node_address() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent, pods) = node_with_pods(&lab_spec(), 1)?;
    let pod = &pods[0];

    let tcp = tcp_echo(
        pod,
        lab.internet(),
        INTERNET_HOST_IP,
        7101,
        Duration::from_secs(5),
    )
    .context("TCP from a pod to the internet host")?;
    assert_eq!(*tcp.client_local.ip(), pod.ip, "{tcp:?}");
    assert_eq!(
        *tcp.server_peer.ip(),
        node.ip,
        "the server sees the node: {tcp:?}"
    );
    assert!(
        DEFAULT_SNAT_PORTS.contains(&tcp.server_peer.port()),
        "{tcp:?}"
    );
    assert_eq!(tcp.reply_from, "198.51.100.10:7101".parse()?, "{tcp:?}");

    let udp = udp_echo(
        pod,
        lab.internet(),
        INTERNET_HOST_IP,
        7102,
        Duration::from_secs(5),
    )
    .context("UDP from a pod to the internet host")?;
    assert_eq!(
        *udp.server_peer.ip(),
        node.ip,
        "the server sees the node: {udp:?}"
    );
    assert!(
        DEFAULT_SNAT_PORTS.contains(&udp.server_peer.port()),
        "{udp:?}"
    );
    assert_eq!(
        udp.reply_from,
        "198.51.100.10:7102".parse()?,
        "the reply comes from the server's address: {udp:?}"
    );

    let capture = lab.internet().capture("eth0", "icmp")?;
    assert_eq!(pod.ping_count(INTERNET_HOST_IP, 3)?, 3, "ping from a pod");
    assert!(
        capture.wait_for(
            &format!("{} > {INTERNET_HOST_IP}: ICMP echo request", node.ip),
            Duration::from_secs(2)
        ),
        "the internet host saw the node's address: {:?}",
        capture.lines()
    );
    assert_pod_address_hidden(&capture, pod);
    assert!(agent.traffic("pod_to_internet")? >= 3);
    assert!(agent.traffic("internet_to_pod")? >= 3);
    assert_eq!(agent.drops("snat_ports_exhausted")?, 0);
    Ok(())
}

/// Datagrams larger than the MTU through the NAT: a 4000-byte UDP echo and 3000-byte pings
/// travel in fragments both ways; the later fragments (no ports) follow their first to the
/// flow, so they leave with the node's address and come back to the pod, which reassembles
/// them. The internet host sees the node, never the pod.
#[test]
fn datagrams_larger_than_the_mtu_pass_the_nat_in_fragments() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent, pods) = node_with_pods(&lab_spec(), 1)?;
    let pod = &pods[0];
    let server = EchoServer::udp(lab.internet(), 7121)?;
    let capture = lab.internet().capture("eth0", "ip[6:2] & 0x1fff != 0")?;
    vnetd_lab::udp_roundtrip_sized(pod, internet_host(7121), 4000, Duration::from_secs(5))
        .context("a 4000-byte UDP echo from a pod to the internet host")?;
    assert_eq!(
        *server.seen()[0].peer.ip(),
        node.ip,
        "the server saw the node"
    );
    assert_eq!(
        pod.ping_count_sized(INTERNET_HOST_IP, 3, 3000)?,
        3,
        "3000-byte pings through the NAT"
    );
    assert!(
        capture.wait_for(&format!("{} >", node.ip), Duration::from_secs(2)),
        "later fragments reached the internet from the node's address: {:?}",
        capture.lines()
    );
    assert_pod_address_hidden(&capture, pod);
    assert_eq!(agent.drops("nat_fragment")?, 0);
    Ok(())
}

/// `nonMasqueradeCidrs` keeps the pod's own address: the internet host sees the pod (and,
/// the edge having no route back to pods, cannot answer).
#[test]
fn non_masquerade_destinations_keep_the_pod_address() -> Result<()> {
    let _serial = serial();
    let spec = with_outbound_nat(&lab_spec(), &["nonMasqueradeCidrs: [198.51.100.0/24]"]);
    let (lab, _node, _agent, pods) = node_with_pods(&spec, 1)?;
    let pod = &pods[0];
    let server = EchoServer::udp(lab.internet(), 7111)?;
    let sent = vnetd_lab::udp_roundtrip(pod, internet_host(7111), Duration::from_millis(600));
    assert!(sent.is_err(), "no translation, so no way back: {sent:?}");
    assert!(server.wait_seen(1, Duration::from_secs(2)));
    assert_eq!(
        *server.seen()[0].peer.ip(),
        pod.ip,
        "the server saw the pod's own address"
    );
    Ok(())
}

/// 3,000 connections from three pods held open at once to one internet server: all connect
/// and echo their own data, and the server sees 3,000 distinct source ports, all on the node's
/// address.
#[test]
fn three_thousand_connections_get_distinct_ports() -> Result<()> {
    const PER_POD: usize = 1000;
    const PODS: usize = 3;
    let _serial = serial();
    // Both ends live in this process: 6,000 sockets and some to spare.
    let limit = raise_open_files_limit(16384)?;
    ensure!(
        limit >= 7000,
        "the open-files limit is {limit}: 6,000 sockets need more"
    );
    let (lab, node, agent, pods) = node_with_pods(&lab_spec(), PODS)?;
    let server = EchoServer::tcp_many(lab.internet(), 7201)?;

    let conns: Vec<Vec<TcpStream>> = std::thread::scope(|s| {
        let workers: Vec<_> = pods
            .iter()
            .map(|pod| {
                s.spawn(|| {
                    pod.tcp_connect_many(internet_host(7201), PER_POD, Duration::from_secs(5))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a connecting thread panicked"))
            .collect::<Result<_>>()
    })?;
    assert!(
        server.wait_seen(PODS * PER_POD, Duration::from_secs(30)),
        "the server accepted {} of {} connections",
        server.seen().len(),
        PODS * PER_POD
    );

    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(p, streams)| {
                s.spawn(move || -> Result<()> {
                    for (i, mut stream) in streams.into_iter().enumerate() {
                        let payload = format!("pod {p} connection {i}");
                        tcp_roundtrip(&mut stream, payload.as_bytes(), Duration::from_secs(5))
                            .with_context(|| format!("echo on pod-{p}'s connection {i}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("an echoing thread panicked")?;
        }
        Ok(())
    })?;

    let seen = server.seen();
    assert_eq!(seen.len(), PODS * PER_POD);
    let not_node: Vec<_> = seen.iter().filter(|c| *c.peer.ip() != node.ip).collect();
    assert!(
        not_node.is_empty(),
        "every connection arrives from the node's address: {not_node:?}"
    );
    let ports: HashSet<u16> = seen.iter().map(|c| c.peer.port()).collect();
    assert_eq!(ports.len(), PODS * PER_POD, "distinct SNAT ports");
    assert!(ports.iter().all(|p| DEFAULT_SNAT_PORTS.contains(p)));
    assert_eq!(agent.drops("snat_ports_exhausted")?, 0);
    assert_eq!(agent.drops("flow_insert_failed")?, 0);
    Ok(())
}

/// With `portRange` of 16 ports, 16 connections to one server port take them all: a 17th is
/// refused (dropped, never answered) and counted, while the 16 keep working.
#[test]
fn the_seventeenth_connection_over_sixteen_ports_is_refused_and_counted() -> Result<()> {
    let _serial = serial();
    let spec = with_outbound_nat(&lab_spec(), &["portRange: \"40000-40015\""]);
    let (lab, node, agent, pods) = node_with_pods(&spec, 2)?;
    let server = EchoServer::tcp(lab.internet(), 7301)?;
    let held = (0..16)
        .map(|i| {
            pods[i % 2]
                .tcp_connect(internet_host(7301), Duration::from_secs(3))
                .with_context(|| format!("connection {} of 16", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    assert!(server.wait_seen(16, Duration::from_secs(5)));
    let ports: HashSet<u16> = server.seen().iter().map(|c| c.peer.port()).collect();
    assert_eq!(
        ports,
        (40000..=40015).collect(),
        "the 16 connections hold the 16 ports of the range"
    );
    assert!(server.seen().iter().all(|c| *c.peer.ip() == node.ip));
    assert_eq!(agent.drops("snat_ports_exhausted")?, 0);

    for pod in &pods {
        let refused = pod.tcp_connect(internet_host(7301), Duration::from_secs(2));
        assert!(refused.is_err(), "no port left for {}", pod.role);
    }
    assert!(
        agent.drops("snat_ports_exhausted")? >= 2,
        "both refused SYNs were counted"
    );
    assert_eq!(server.seen().len(), 16, "nothing new reached the server");

    for (i, mut stream) in held.into_iter().enumerate() {
        tcp_roundtrip(
            &mut stream,
            format!("held connection {i}").as_bytes(),
            Duration::from_secs(3),
        )
        .with_context(|| format!("held connection {i} after the refusals"))?;
    }
    Ok(())
}

/// The node's own connections share its address and the SNAT range with the pods: each side
/// takes ports the other holds, and everything keeps working with its own data. The node's
/// ephemeral ports are narrowed to the SNAT range so that every node connection is one the
/// dataplane must track.
#[test]
fn node_connections_and_pod_flows_share_the_port_range() -> Result<()> {
    const RANGE: std::ops::RangeInclusive<u16> = 40000..=40063;
    let _serial = serial();
    let spec = with_outbound_nat(&lab_spec(), &["portRange: \"40000-40063\""]);
    let (lab, node, agent, pods) = node_with_pods(&spec, 2)?;
    node.sysctl("net.ipv4.ip_local_port_range", "40000 40063")?;
    let server = EchoServer::tcp(lab.internet(), 7401)?;
    let dst = internet_host(7401);
    let timeout = Duration::from_secs(3);
    let last_seen_port = |n: usize| -> Result<u16> {
        ensure!(
            server.wait_seen(n, Duration::from_secs(3)),
            "the server saw {} connections, not {n}",
            server.seen().len()
        );
        Ok(server.seen()[n - 1].peer.port())
    };
    let mut conns: Vec<(String, TcpStream)> = Vec::new();

    // The node first, from ports its kernel picks: the dataplane keeps them (no clash).
    let mut node_ports = Vec::new();
    for stream in node.tcp_connect_many(dst, 8, timeout)? {
        let port = stream.local_addr()?.port();
        assert!(RANGE.contains(&port), "{port}");
        node_ports.push(port);
        conns.push((format!("node port {port}"), stream));
    }
    assert!(server.wait_seen(8, timeout));
    let seen: HashSet<u16> = server.seen().iter().map(|c| c.peer.port()).collect();
    assert_eq!(seen, node_ports.iter().copied().collect());

    // Pods asking for exactly the node's ports (a pod's own port is tried first when it is in
    // the range): each pod flow must be given another one.
    for &port in &node_ports {
        let stream = pods[0]
            .tcp_connect_from(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                dst,
                timeout,
            )
            .with_context(|| format!("a pod connection from the node's port {port}"))?;
        let got = last_seen_port(conns.len() + 1)?;
        assert!(
            got != port && RANGE.contains(&got),
            "the pod flow from port {port} was given {got}"
        );
        conns.push((format!("pod-0 port {port}"), stream));
    }

    // Pod flows first, then node sockets on the very ports those flows hold on the wire: the
    // node's connections are remapped.
    let mut pod_nat_ports = Vec::new();
    for stream in pods[1].tcp_connect_many(dst, 8, timeout)? {
        let got = last_seen_port(conns.len() + 1)?;
        assert!(RANGE.contains(&got), "{got}");
        pod_nat_ports.push(got);
        conns.push(("pod-1".to_string(), stream));
    }
    for &port in &pod_nat_ports {
        let stream = node
            .tcp_connect_from(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                dst,
                timeout,
            )
            .with_context(|| format!("a node connection from port {port}, held by a pod flow"))?;
        let got = last_seen_port(conns.len() + 1)?;
        assert!(
            got != port && RANGE.contains(&got),
            "the node's connection from port {port} left as {got}"
        );
        conns.push((format!("node port {port}"), stream));
    }

    for (i, (what, stream)) in conns.iter_mut().enumerate() {
        tcp_roundtrip(stream, format!("{what} #{i}").as_bytes(), timeout)
            .with_context(|| format!("echo on {what}"))?;
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 32);
    assert!(seen.iter().all(|c| *c.peer.ip() == node.ip), "{seen:?}");
    let ports: HashSet<u16> = seen.iter().map(|c| c.peer.port()).collect();
    assert_eq!(ports.len(), 32, "distinct ports on the wire: {seen:?}");
    assert!(
        agent.traffic("host_nat")? >= 8,
        "the remapped node connections were counted"
    );
    Ok(())
}

/// Path MTU discovery through SNAT: the edge's link to the internet carries 1200 bytes; the
/// edge answers a pod's full-size segments with ICMP fragmentation-needed (to the node's
/// address), the dataplane translates it through its inner header back to the pod, the pod's
/// TCP lowers its MTU and the transfer completes intact.
#[test]
fn fragmentation_needed_reaches_the_pod_and_its_tcp_adapts() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent, pods) = node_with_pods(&lab_spec(), 1)?;
    let pod = &pods[0];
    // Only the edge's side: the internet host keeps announcing a 1460-byte MSS, so the pod's
    // segments are too large for the link unless path MTU discovery works.
    lab.edge().ip(["link", "set", "eth1", "mtu", "1200"])?;
    let server = EchoServer::tcp_sink(lab.internet(), 7501)?;
    let capture = pod.capture("eth0", "icmp")?;

    let mut stream = pod.tcp_connect(internet_host(7501), Duration::from_secs(3))?;
    sink_transfer(&mut stream, 4 << 20, Duration::from_secs(30))
        .context("4 MiB from the pod to the internet host over a 1200-byte link")?;

    assert!(
        capture.wait_for("need to frag (mtu 1200)", Duration::from_secs(2)),
        "the pod received the edge's fragmentation-needed: {:?}",
        capture.lines()
    );
    // From the pod's address: its traffic uses the per-interface table its source rule picks
    // (see the README's CNI section), where the learnt MTU is kept.
    let route = pod.ip([
        "route",
        "get",
        &INTERNET_HOST_IP.to_string(),
        "from",
        &pod.ip.to_string(),
    ])?;
    assert!(
        route.contains("mtu 1200"),
        "the pod's route cache learnt the path MTU: {route}"
    );
    assert_eq!(*server.seen()[0].peer.ip(), node.ip);
    assert_eq!(agent.drops("icmp_no_flow")?, 0);
    Ok(())
}

/// Traceroute through the NAT: a pod's ping whose TTL runs out at the edge (the second hop,
/// after the pod's gateway) is answered with time exceeded to the node's address; the dataplane
/// finds the flow through the quoted header and the pod sees the edge as the hop.
#[test]
fn time_exceeded_beyond_the_node_reaches_the_pod() -> Result<()> {
    let _serial = serial();
    let (_lab, _node, agent, pods) = node_with_pods(&lab_spec(), 1)?;
    let stdout = pods[0].ping_with_ttl(INTERNET_HOST_IP, 2)?;
    assert!(
        stdout.contains(&format!("From {}", vnetd_lab::GATEWAY))
            && stdout.contains("Time to live exceeded"),
        "the edge is the second hop: {stdout}"
    );
    assert_eq!(agent.drops("icmp_no_flow")?, 0);
    assert_eq!(
        pods[0].ping_count(INTERNET_HOST_IP, 1)?,
        1,
        "with TTL to spare it passes"
    );
    Ok(())
}

/// SNATed TCP streams keep flowing while the agent is dead (SIGKILL) and after a new agent
/// adopted the pinned flow table: the same connections, no new ones.
#[test]
fn snat_streams_survive_agent_sigkill_and_restart() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    // The flow table's garbage collection every half second (the default is seconds): the
    // restarted agent passes over the adopted table several times while the streams run, and
    // must leave live flows alone.
    let mut agent = Agent::start_with_env(
        &node,
        &lab_spec(),
        vec![("VNETD_GC_INTERVAL_MS".into(), "500".into())],
    )?;
    let pods = (0..3)
        .map(|i| add_pod(&lab, &node, &format!("pod-{i}"), Some("apps"), ""))
        .collect::<Result<Vec<_>>>()?;
    let server = EchoServer::tcp(lab.internet(), 7601)?;
    let streams = pods
        .iter()
        .map(|pod| EchoStream::start(pod, internet_host(7601)))
        .collect::<Result<Vec<_>>>()?;
    let all_advance = |what: &str| -> Result<()> {
        let before: Vec<u64> = streams.iter().map(EchoStream::bytes).collect();
        let advanced = vnetd_lab::wait_for(Duration::from_secs(5), || {
            streams
                .iter()
                .zip(&before)
                .all(|(s, b)| s.bytes() > *b + 1000)
        });
        for s in &streams {
            s.check()?;
        }
        ensure!(
            advanced,
            "{what}: not every stream moved: {before:?} -> {:?}",
            streams.iter().map(EchoStream::bytes).collect::<Vec<_>>()
        );
        Ok(())
    };
    all_advance("with the agent running")?;

    agent.kill()?;
    all_advance("with the agent dead")?;
    std::thread::sleep(Duration::from_secs(1));
    all_advance("with the agent dead for a second")?;
    agent.spawn(LogMode::Files)?;
    all_advance("after the restart")?;
    // Several of the new agent's passes over the adopted table.
    std::thread::sleep(Duration::from_secs(2));
    all_advance("a while after the restart")?;

    for s in &streams {
        s.check()?;
    }
    for s in streams {
        s.stop();
    }
    assert_eq!(
        server.seen().len(),
        3,
        "the same three connections all along"
    );
    assert!(server.seen().iter().all(|c| *c.peer.ip() == node.ip));
    let fresh = tcp_echo(
        &pods[0],
        lab.internet(),
        INTERNET_HOST_IP,
        7602,
        Duration::from_secs(3),
    )
    .context("a new connection through the restarted agent")?;
    assert_eq!(*fresh.server_peer.ip(), node.ip);
    assert_eq!(
        agent.status()?["endpoints"].as_array().map(Vec::len),
        Some(3)
    );
    Ok(())
}

/// The value of the series `series` (its name and labels as rendered) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// SNAT port occupancy in `status --json` and `/metrics` (issue 10). With `portRange` of 16
/// ports, 16 connections to one server port and 5 to another hold 21 ports; the busiest
/// destination holds all 16 of its own, which is the range's span (each destination's
/// capacity). A 17th connection to it is refused and counted as an allocation failure, while
/// the other destination still takes new flows.
#[test]
fn snat_port_occupancy_is_reported_per_destination_against_the_range() -> Result<()> {
    const BUSY: u16 = 7701;
    const QUIET: u16 = 7702;
    let _serial = serial();
    let spec = with_outbound_nat(&lab_spec(), &["portRange: \"40000-40015\""]);
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    // The collector counts the ports: every 200 ms here, not every 5 s.
    let agent = Agent::start_with_env(
        &node,
        &spec,
        vec![("VNETD_GC_INTERVAL_MS".into(), "200".into())],
    )?;
    let pod = add_pod(&lab, &node, "pod-0", Some("apps"), "")?;
    let busy = EchoServer::tcp(lab.internet(), BUSY)?;
    let quiet = EchoServer::tcp(lab.internet(), QUIET)?;
    let timeout = Duration::from_secs(3);
    let mut held = Vec::new();
    for (port, n) in [(BUSY, 16), (QUIET, 5)] {
        for i in 0..n {
            held.push(
                pod.tcp_connect(internet_host(port), timeout)
                    .with_context(|| format!("connection {} of {n} to port {port}", i + 1))?,
            );
        }
    }
    ensure!(busy.wait_seen(16, timeout) && quiet.wait_seen(5, timeout));

    let node_ip = node.ip.to_string();
    let snat_in_status = |min_in_use: u64, min_failures: u64| -> Result<serde_json::Value> {
        let mut snat = serde_json::Value::Null;
        let counted = vnetd_lab::wait_for(Duration::from_secs(10), || {
            snat = agent
                .status()
                .map(|s| s["snat"].clone())
                .unwrap_or_default();
            snat["ports_in_use"].as_u64() >= Some(min_in_use)
                && snat["allocation_failures"].as_u64() >= Some(min_failures)
        });
        ensure!(
            counted,
            "status never showed {min_in_use} ports in use and {min_failures} failures: {snat}"
        );
        Ok(snat)
    };
    let in_use_series = format!("vnetd_snat_ports_in_use{{nat_ip=\"{node_ip}\"}}");
    let metrics_show = |in_use: u64, busiest: u64, failures: u64| -> Result<()> {
        let mut text = String::new();
        // The metrics are a snapshot refreshed every second.
        let shown = vnetd_lab::wait_for(Duration::from_secs(10), || {
            text = agent.metrics().unwrap_or_default();
            metric(&text, &in_use_series) >= Some(in_use)
                && metric(&text, "vnetd_snat_busiest_destination_ports_in_use") == Some(busiest)
                && metric(&text, "vnetd_snat_ports_per_destination") == Some(16)
                && metric(&text, "vnetd_snat_allocation_failures_total") >= Some(failures)
        });
        let snat: Vec<&str> = text.lines().filter(|l| l.contains("snat")).collect();
        ensure!(
            shown,
            "/metrics never showed {in_use} ports in use, the busiest destination at {busiest} \
             and {failures} failures:\n{}",
            snat.join("\n")
        );
        Ok(())
    };

    let snat = snat_in_status(21, 0)?;
    assert_eq!(snat["port_range"], serde_json::json!([40000, 40015]));
    assert_eq!(snat["ports_per_destination"], 16, "{snat}");
    let by_node = snat["ports_in_use_by_nat_ip"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r[0] == node_ip.as_str()))
        .and_then(|r| r[1].as_u64());
    assert!(by_node >= Some(21), "{snat}");
    let busiest = &snat["busiest_destination"];
    assert_eq!(busiest["nat_ip"], node_ip.as_str(), "{snat}");
    assert_eq!(busiest["remote_ip"], INTERNET_HOST_IP.to_string(), "{snat}");
    assert_eq!(busiest["remote_port"], BUSY, "{snat}");
    assert_eq!(busiest["protocol"], "tcp", "{snat}");
    assert_eq!(busiest["ports_in_use"], 16, "{snat}");
    assert_eq!(snat["allocation_failures"], 0, "{snat}");
    metrics_show(21, 16, 0)?;

    // The busy destination has no port left; the quiet one has its own.
    let refused = pod.tcp_connect(internet_host(BUSY), Duration::from_secs(2));
    assert!(refused.is_err(), "no port left towards port {BUSY}");
    assert_eq!(busy.seen().len(), 16, "nothing new reached the busy server");
    held.push(
        pod.tcp_connect(internet_host(QUIET), timeout)
            .context("a sixth connection to the other destination")?,
    );
    let snat = snat_in_status(22, 1)?;
    assert_eq!(snat["busiest_destination"]["ports_in_use"], 16, "{snat}");
    assert_eq!(
        snat["allocation_failures"].as_u64(),
        Some(agent.drops("snat_ports_exhausted")?),
        "the failures are the drops: {snat}"
    );
    metrics_show(22, 16, 1)?;
    drop(held);
    Ok(())
}
