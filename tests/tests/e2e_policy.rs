//! End to end: what the dataplane refuses (spoofed sources, `None` routes), where it steers
//! (a `VirtualAppliance` route), and how it lives through its agent (SIGKILL with a stream
//! running, live spec edits, invalid edits refused). Needs root.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Result, ensure};
use vnetd_lab::{
    Lab, Node, serial,
    vnetd::{Agent, Pod, add_pod, lab_spec, lab_with_agent, ping_from_forged},
    wait_for,
};

/// Sends exactly `count` echo requests (200 ms apart, 1 s to answer each) and returns how many
/// were answered. [`vnetd_lab::Ns::ping_count`] keeps sending until its deadline while
/// unanswered: no good for exact drop counts.
fn ping_exactly(ns: &vnetd_lab::Ns, dst: Ipv4Addr, count: u32) -> Result<usize> {
    let out = ns.run([
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        &dst.to_string(),
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains(&format!("{count} packets transmitted")),
        "ping sent other than {count} requests: {stdout}"
    );
    Ok(stdout.lines().filter(|l| l.contains("bytes from")).count())
}

fn two_pods(lab: &Lab, node: &Node) -> Result<(Pod, Pod)> {
    Ok((
        add_pod(lab, node, "pod-a", Some("apps"), "")?,
        add_pod(lab, node, "pod-b", Some("apps"), "")?,
    ))
}

/// A pod may send only from its own address, its own MAC and its own interface. Three forgeries
/// from pod-a towards pod-b, each exactly counted and each checked at the receiver (a reply to
/// a forged source could never come back anyway, so "no answer" would prove nothing): another
/// local pod's (pod-c's) address; pod-c's address *and* MAC together, which only the interface
/// check can catch; its own address from a foreign MAC.
#[test]
fn spoofed_sources_are_dropped_counted_and_never_arrive() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let (a, b) = two_pods(&lab, &node)?;
    let c = add_pod(&lab, &node, "pod-c", Some("apps"), "")?;
    assert_eq!(a.ping_count(b.ip, 1)?, 1);
    let a_mac = a.link_info("eth0")?.mac;
    let c_mac = c.link_info("eth0")?.mac;
    assert_ne!(a_mac, c_mac);
    // A MAC change flushes the pod's neighbours, its permanent gateway entry too: put it back,
    // so that the pod sends the IP packets under test rather than ARP requests.
    let gateway = vnetd_lab::POD_GATEWAY.to_string();
    let gateway_mac = a
        .ip(["neigh", "show", &gateway, "dev", "eth0"])?
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
        .expect("the pod has a neighbour entry for its gateway");
    let set_mac = |mac: &str| -> Result<()> {
        a.ip(["link", "set", "eth0", "address", mac])?;
        a.ip([
            "neigh",
            "replace",
            &gateway,
            "lladdr",
            &gateway_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        Ok(())
    };

    // Every echo request that reaches pod-b, from here on.
    let arrivals = b.capture("eth0", "icmp[icmptype] == icmp-echo")?;
    let spoofed = || agent.drops("spoofed");

    let before = spoofed()?;
    assert_eq!(ping_from_forged(&a, c.ip, b.ip)?, 0);
    assert_eq!(
        spoofed()?,
        before + 2,
        "both pings with another pod's address counted"
    );

    let before = spoofed()?;
    set_mac(&c_mac)?;
    let answered = ping_from_forged(&a, c.ip, b.ip);
    set_mac(&a_mac)?;
    assert_eq!(answered?, 0);
    assert_eq!(
        spoofed()?,
        before + 2,
        "both pings with another pod's address and MAC counted"
    );

    let before = spoofed()?;
    set_mac("02:de:ad:be:ef:01")?;
    let answered = ping_exactly(&a, b.ip, 2);
    set_mac(&a_mac)?;
    assert_eq!(answered?, 0, "a pod with a forged MAC reaches nothing");
    assert_eq!(
        spoofed()?,
        before + 2,
        "both pings from a forged MAC counted"
    );

    // The genuine senders get through, and the capture sees them: it was live all along, so
    // exactly one request from each address means none of the forged ones arrived.
    assert_eq!(c.ping_count(b.ip, 1)?, 1);
    assert_eq!(a.ping_count(b.ip, 1)?, 1, "pod-a with its own MAC again");
    let from = |ip: Ipv4Addr| format!("{ip} > {}: ICMP echo request", b.ip);
    assert!(
        arrivals.wait_for(&from(a.ip), Duration::from_secs(3)),
        "{:?}",
        arrivals.lines()
    );
    let lines = arrivals.stop()?;
    let count = |ip| lines.iter().filter(|l| l.contains(&from(ip))).count();
    assert_eq!(
        (count(c.ip), count(a.ip)),
        (1, 1),
        "only the genuine requests reached pod-b: {lines:?}"
    );
    assert_eq!(spoofed()?, before + 2, "the genuine ones were not counted");
    Ok(())
}

#[test]
fn none_route_drops_and_appliance_route_reaches_the_appliance() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let nva = lab.add_appliance("nva", "10.0.0.100/24".parse()?)?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;

    assert_eq!(a.ping_count("10.99.0.1".parse()?, 2)?, 0);
    assert!(
        agent.drops("route_none")? >= 2,
        "the None route's drops are counted"
    );

    // 192.0.2.0/24 goes through the appliance: it sees the pod's packets arrive, addressed to
    // the far destination (the appliance is the next hop, not the destination).
    let capture = nva.capture("eth0", "icmp")?;
    let _ = a.ping_count("192.0.2.1".parse()?, 2)?;
    assert!(
        capture.wait_for(&format!("{} > 192.0.2.1", a.ip), Duration::from_secs(3)),
        "the appliance saw the pod's traffic: {:?}",
        capture.lines()
    );
    Ok(())
}

/// Pods of one node reach each other without a route lookup only while their subnet's table
/// routes the whole VNet locally: a route covering part of it (here a `None` route for one
/// pod) applies to same-node traffic from the reload on, and removing it restores delivery.
#[test]
fn a_route_inside_the_vnet_applies_to_pods_of_the_same_node_across_reloads() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    ensure!(a.ping_count(b.ip, 2)? == 2, "pod-a reaches pod-b");

    let cut = format!(
        "      - name: cut-off-b\n        addressPrefix: {}/32\n        nextHopType: None\n",
        b.ip
    );
    let with_route = lab_spec().replace(
        "      - name: blackhole\n",
        &format!("{cut}      - name: blackhole\n"),
    );
    ensure!(
        with_route.contains("cut-off-b"),
        "the edit applies to examples/lab.yaml"
    );
    agent.write_spec(&with_route)?;
    ensure!(
        agent.wait_for_status("reloads_ok", 1),
        "reloaded: {}",
        agent.log()
    );
    let dropped = agent.drops("route_none")?;
    assert_eq!(
        a.ping_count(b.ip, 2)?,
        0,
        "the None route applies to a pod of the same node"
    );
    assert!(
        agent.drops("route_none")? >= dropped + 2,
        "dropped by the route"
    );

    agent.write_spec(&lab_spec())?;
    ensure!(
        agent.wait_for_status("reloads_ok", 2),
        "reloaded: {}",
        agent.log()
    );
    assert_eq!(
        a.ping_count(b.ip, 2)?,
        2,
        "without the route, delivered again"
    );
    Ok(())
}

/// The system route 0.0.0.0/0 (`Internet`) sends a pod's packet out of the uplink to the
/// node's own default gateway (the lab's edge), which forwards it to the internet host,
/// masqueraded to the node's address (e2e_snat.rs tests the translation itself: replies,
/// ports, TCP, ping).
#[test]
fn internet_route_reaches_the_internet_host_through_the_node_gateway() -> Result<()> {
    use std::net::{SocketAddr, SocketAddrV4};
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let receiver = lab
        .internet()
        .udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5401)))?;
    receiver.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sender = a.udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    let target = SocketAddr::from((vnetd_lab::INTERNET_HOST_IP, 5401));
    let out_before = agent.traffic("pod_to_internet")?;
    let payload = format!("vnetd internet route {}", std::process::id());
    let mut buf = [0u8; 256];
    let mut arrived = None;
    // A few tries: the first may wait for the node to resolve its gateway's MAC.
    for _ in 0..10 {
        sender.send_to(payload.as_bytes(), target)?;
        match receiver.recv_from(&mut buf) {
            Ok((n, from)) if buf[..n] == *payload.as_bytes() => {
                arrived = Some(from);
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(
        arrived,
        Some(SocketAddr::V4(SocketAddrV4::new(
            node.ip,
            sender.local_addr()?.port()
        ))),
        "the internet host received the pod's datagram, from the node's address (its own \
         port kept: free in the SNAT range)"
    );
    assert!(agent.traffic("pod_to_internet")? > out_before);
    assert_eq!(agent.drops("redirect_failed")?, 0);
    Ok(())
}

/// A reload that points the pods' subnet at another route table moves the running endpoints
/// to it: 192.0.2.0/24 went through the appliance, and the new table sends it to `None`.
#[test]
fn reload_moves_endpoints_to_another_route_table() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let nva = lab.add_appliance("nva", "10.0.0.100/24".parse()?)?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    let capture = nva.capture("eth0", "icmp")?;
    let _ = a.ping_count("192.0.2.1".parse()?, 1)?;
    ensure!(
        capture.wait_for(&format!("{} > 192.0.2.1", a.ip), Duration::from_secs(3)),
        "the first table sends 192.0.2.0/24 to the appliance: {:?}",
        capture.lines()
    );

    let quarantine = "  - name: quarantine\n    routes:\n      - name: partner-dropped\n        addressPrefix: 192.0.2.0/24\n        nextHopType: None\n";
    let moved = lab_spec()
        .replace("routeTable: apps-routes", "routeTable: quarantine")
        .replace("routeTables:\n", &format!("routeTables:\n{quarantine}"));
    ensure!(
        moved.contains("routeTable: quarantine") && moved.contains("- name: quarantine"),
        "the edit applies to examples/lab.yaml"
    );
    agent.write_spec(&moved)?;
    assert!(
        agent.wait_for_status("reloads_ok", 1),
        "the edit was applied: {}",
        agent.log()
    );
    let seen_before = capture.count(&format!("{} > 192.0.2.1", a.ip));
    let drops = agent.drops("route_none")?;
    assert_eq!(ping_exactly(&a, "192.0.2.1".parse()?, 2)?, 0);
    assert_eq!(
        agent.drops("route_none")?,
        drops + 2,
        "the pod's packets now meet the new table's None route"
    );
    assert_eq!(
        a.ping_count(b.ip, 1)?,
        1,
        "the new table still has VnetLocal"
    );
    let lines = capture.stop()?;
    let seen_after = lines
        .iter()
        .filter(|l| l.contains(&format!("{} > 192.0.2.1", a.ip)))
        .count();
    assert_eq!(
        seen_after, seen_before,
        "nothing more reached the appliance: {lines:?}"
    );
    Ok(())
}

/// A spec edit is applied live (a new route drops what passed); an invalid edit is refused and
/// the running configuration stays.
#[test]
fn spec_edits_apply_live_and_invalid_edits_are_refused() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let nva = lab.add_appliance("nva", "10.0.0.100/24".parse()?)?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let capture = nva.capture("eth0", "icmp")?;
    let _ = a.ping_count("192.0.2.1".parse()?, 1)?;
    ensure!(
        capture.wait_for("> 192.0.2.1", Duration::from_secs(3)),
        "appliance route works first"
    );

    let blackholed = lab_spec().replace(
        "nextHopType: VirtualAppliance\n        nextHopIpAddress: 10.0.0.100",
        "nextHopType: None",
    );
    assert_ne!(blackholed, lab_spec());
    let drops = agent.drops("route_none")?;
    agent.write_spec(&blackholed)?;
    assert!(
        agent.wait_for_status("reloads_ok", 1),
        "the edit was applied: {}",
        agent.log()
    );
    assert_eq!(a.ping_count("192.0.2.1".parse()?, 2)?, 0);
    assert!(
        agent.drops("route_none")? >= drops + 2,
        "the new None route drops"
    );

    // An invalid edit: refused, logged with its path, the running spec stays.
    agent.write_spec(&blackholed.replace("maxPods: 30", "maxPods: 5"))?;
    assert!(
        agent.wait_for_status("reloads_failed", 1),
        "the invalid edit was refused"
    );
    assert!(
        agent.log().contains("maxPods"),
        "the problem is logged: {}",
        agent.log()
    );
    let drops = agent.drops("route_none")?;
    assert_eq!(a.ping_count("192.0.2.1".parse()?, 1)?, 0);
    assert!(
        agent.drops("route_none")? > drops,
        "still the edited, valid configuration"
    );
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    assert_eq!(a.ping_count(b.ip, 1)?, 1, "the agent still serves");
    Ok(())
}

/// Reloads that insert a route table in front of the one in use (which renumbered it when ids
/// were positions), change the table in use (written under a new id, the pod switched to it)
/// and take both back: a 100-per-second ping from the pod through its table loses nothing.
#[test]
fn route_table_reloads_keep_traffic_flowing_with_no_loss() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let nva = lab.add_appliance("nva", "10.0.0.100/24".parse()?)?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    ensure!(
        a.ping_count(nva.ip, 1)? == 1,
        "the pod reaches the appliance"
    );

    // A table before apps-routes, used by another subnet of this node, blackholing the VNet:
    // a pod that saw it instead of its own table would lose the ping.
    let inserted = lab_spec()
        .replace(
            "      delegation: Microsoft.ContainerInstance/containerGroups\n",
            "      delegation: Microsoft.ContainerInstance/containerGroups\n      routeTable: aci-routes\n",
        )
        .replace(
            "routeTables:\n",
            "routeTables:\n  - name: aci-routes\n    routes:\n      - name: vnet-blackhole\n        addressPrefix: 10.0.0.0/16\n        nextHopType: None\n",
        );
    let changed = inserted.replace(
        "  - name: apps-routes\n    routes:\n",
        "  - name: apps-routes\n    routes:\n      - name: documentation\n        addressPrefix: 203.0.113.0/24\n        nextHopType: None\n",
    );
    ensure!(
        inserted != lab_spec() && changed != inserted,
        "the edits apply to lab.yaml"
    );
    let table_id = |name: &str| -> Result<u64> {
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            node.state_dir.join("tables.json"),
        )?)?;
        record["routes"]["tables"][name]["id"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no id for {name} in {record}"))
    };
    let first_id = table_id("apps-routes")?;

    let ping = a.spawn([
        "ping",
        "-n",
        "-q",
        "-c",
        "1000",
        "-i",
        "0.01",
        "-W",
        "1",
        &nva.ip.to_string(),
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    let mut ids = Vec::new();
    for (i, spec) in [&inserted, &changed, &lab_spec()].into_iter().enumerate() {
        agent.write_spec(spec)?;
        assert!(
            agent.wait_for_status("reloads_ok", i as u64 + 1),
            "reload {} applied: {}",
            i + 1,
            agent.log()
        );
        ids.push(table_id("apps-routes")?);
    }
    assert!(ping.is_running(), "the reloads happened while the ping ran");
    assert_eq!(ids[0], first_id, "inserting a table renumbers nothing");
    assert!(
        ids[1] != ids[0] && ids[2] != ids[1],
        "a changed table gets a new id: {first_id} -> {ids:?}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || !ping.is_running()),
        "ping finished"
    );
    let summary = ping.stdout();
    assert!(
        summary.contains("1000 packets transmitted, 1000 received"),
        "no ping lost across the reloads: {summary}"
    );
    Ok(())
}

/// lab.yaml with `tables` more subnets with a pool on both nodes, each with its own route table of
/// 400 routes (Azure's maximum per table).
fn with_route_tables(tables: usize) -> String {
    let mut subnets = String::new();
    let mut route_tables = String::from("routeTables:\n");
    let (mut pool1, mut pool2) = (String::new(), String::new());
    for i in 1..=tables {
        subnets += &format!(
            "    - name: extra{i}\n      addressPrefix: 10.0.{}.0/24\n      routeTable: extra{i}-routes\n",
            100 + i
        );
        route_tables += &format!("  - name: extra{i}-routes\n    routes:\n");
        for r in 0..400 {
            route_tables += &format!(
                "      - {{ name: r{r}, addressPrefix: 192.168.{}.{}/32, nextHopType: None }}\n",
                r / 256,
                r % 256
            );
        }
        pool1 += &format!(", \"10.0.{0}.10-10.0.{0}.12\"", 100 + i);
        pool2 += &format!(", \"10.0.{0}.20-10.0.{0}.22\"", 100 + i);
    }
    let spec = lab_spec()
        .replace("routeTables:\n", &(subnets + &route_tables))
        .replace(
            "\"10.0.2.10-10.0.2.49\"]",
            &format!("\"10.0.2.10-10.0.2.49\"{pool1}]"),
        )
        .replace(
            "\"10.0.2.50-10.0.2.89\"]",
            &format!("\"10.0.2.50-10.0.2.89\"{pool2}]"),
        );
    assert!(spec.contains("10.0.101.10") && spec.contains("10.0.101.20"));
    spec
}

/// Route tables beyond what ROUTES can hold (beside a reload's new tables) are refused with
/// the limit named: at start (the agent exits) and on reload (the running tables stay).
#[test]
fn route_tables_over_capacity_are_refused_at_start_and_on_reload() -> Result<()> {
    use vnetd_lab::vnetd::bin;
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let nva = lab.add_appliance("nva", "10.0.0.100/24".parse()?)?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    ensure!(
        a.ping_count(nva.ip, 1)? == 1,
        "the pod reaches the appliance"
    );

    agent.write_spec(&with_route_tables(21))?;
    assert!(
        wait_for(Duration::from_secs(20), || agent
            .status()
            .map(|s| s["reloads_failed"] == 1)
            .unwrap_or(false)),
        "the reload was refused: {}",
        agent.log()
    );
    assert!(
        agent.log().contains("ROUTES_MAX = 16384"),
        "the limit is named: {}",
        agent.log()
    );
    assert_eq!(a.ping_count(nva.ip, 2)?, 2, "the running tables stay");

    // 20 such tables fit: applied.
    agent.write_spec(&with_route_tables(20))?;
    assert!(
        wait_for(Duration::from_secs(20), || agent
            .status()
            .map(|s| s["reloads_ok"] == 1)
            .unwrap_or(false)),
        "the reload within capacity was applied: {}",
        agent.log()
    );
    assert_eq!(a.ping_count(nva.ip, 2)?, 2);

    let node2 = lab.add_node("node-2", "10.0.0.5/24".parse()?)?;
    let path = node2.dir.join("over.yaml");
    std::fs::write(&path, with_route_tables(21))?;
    let mut args = vec![bin("vnetd").into_os_string()];
    args.extend(node2.agent_args(&path));
    let out = node2.run(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ROUTES_MAX = 16384"), "{stderr}");
    Ok(())
}

/// SIGKILL the agent while a TCP stream runs between pods on two nodes: the stream does not
/// notice; the restarted agent adopts the pinned dataplane and serves again.
#[test]
fn agent_killed_mid_stream_leaves_traffic_flowing_and_is_adopted() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let n1 = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let n2 = lab.add_node("node-2", "10.0.0.5/24".parse()?)?;
    let mut agent1 = Agent::start(&n1, &lab_spec())?;
    let _agent2 = Agent::start(&n2, &lab_spec())?;
    let a = add_pod(&lab, &n1, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &n1, "pod-b", Some("apps"), "")?;
    let c = add_pod(&lab, &n2, "pod-c", Some("apps"), "")?;

    let server = c.spawn(["iperf3", "-s", "-1", "-p", "5301", "--forceflush"])?;
    server.wait_for_output("Server listening", Duration::from_secs(10))?;
    let client = a.spawn([
        "iperf3",
        "-c",
        &c.ip.to_string(),
        "-p",
        "5301",
        "-t",
        "6",
        "-i",
        "1",
        "-J",
    ])?;
    // Kill the agent once the stream is running, then let it run on without one.
    let received = || c.link_stats("eth0").map(|s| s.rx_bytes).unwrap_or(0);
    assert!(
        wait_for(Duration::from_secs(5), || received() > 50_000_000),
        "the stream started"
    );
    agent1.kill()?;
    let at_kill = received();
    assert!(
        wait_for(Duration::from_secs(5), || received() > at_kill + 50_000_000),
        "the stream goes on with no agent"
    );
    assert_eq!(
        a.ping_count(b.ip, 2)?,
        2,
        "same-node traffic flows with no agent"
    );
    agent1.spawn(vnetd_lab::LogMode::Files)?;
    assert!(
        wait_for(Duration::from_secs(15), || !client.is_running()),
        "iperf3 finished"
    );
    let report: serde_json::Value = serde_json::from_str(&client.stdout())?;
    let intervals = report["intervals"].as_array().map(Vec::len).unwrap_or(0);
    let stalled = report["intervals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["sum"]["bytes"].as_u64() == Some(0))
        .count();
    assert!(report["error"].is_null(), "iperf3: {}", report["error"]);
    assert!(intervals >= 6, "the stream ran its 6 seconds: {report}");
    assert_eq!(stalled, 0, "no second of the stream stalled: {report}");

    let status = agent1.status()?;
    assert_eq!(
        status["endpoints"].as_array().map(Vec::len),
        Some(2),
        "endpoints restored"
    );
    assert!(
        agent1.log().contains("endpoint adopted"),
        "{}",
        agent1.log()
    );
    let d = add_pod(&lab, &n1, "pod-d", Some("apps"), "")?;
    assert_ne!(d.ip, a.ip);
    assert_ne!(d.ip, b.ip);
    assert_eq!(
        d.ping_count(c.ip, 1)?,
        1,
        "the restarted agent serves new pods"
    );
    Ok(())
}

/// IPAM is durable: the agent is killed inside an ADD, for certain (its test-only pause point
/// holds the ADD after the address is recorded, while other ADDs queue behind it); after its
/// restart (and the runtime's DEL of every failed ADD, as CNI prescribes), every pod can be
/// added, no address is held twice and none is leaked.
#[test]
fn agent_killed_during_adds_never_duplicates_or_leaks_an_address() -> Result<()> {
    use vnetd_lab::vnetd::cni_call;
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let paused = node.dir.join("add-paused-after-ipam");
    let mut agent = Agent::start(&node, &lab_spec())?;
    let pods: Vec<_> = (0..6)
        .map(|i| lab.add_pod_netns(&format!("pod-{i}")))
        .collect::<Result<_>>()?;
    // Two pods attached before the crash, to be adopted after it.
    for pod in &pods[..2] {
        assert_eq!(
            node.cni(&cni_call("ADD", &node, pod, Some("apps"), ""))?
                .exit,
            0
        );
    }
    agent.kill()?;
    agent.env = vec![(
        "VNETD_TEST_PAUSE_AFTER_IPAM".into(),
        paused.display().to_string(),
    )];
    agent.spawn(vnetd_lab::LogMode::Files)?;

    let (outcomes, paused_ip): (Vec<i32>, String) = std::thread::scope(|s| {
        let handles: Vec<_> = pods[2..]
            .iter()
            .map(|pod| {
                let node = &node;
                s.spawn(move || {
                    node.cni(&cni_call("ADD", node, pod, Some("apps"), ""))
                        .map(|o| o.exit)
                })
            })
            .collect();
        let inside = wait_for(Duration::from_secs(20), || paused.exists());
        agent.kill().expect("kill the agent");
        let outcomes = handles
            .into_iter()
            .map(|h| h.join().expect("thread").unwrap_or(-1))
            .collect();
        assert!(inside, "an ADD reached the pause point");
        (
            outcomes,
            std::fs::read_to_string(&paused).unwrap_or_default(),
        )
    });
    assert!(
        outcomes.iter().all(|&exit| exit != 0),
        "every ADD queued behind the paused one failed with the agent: {outcomes:?}"
    );
    agent.env.clear();
    std::fs::remove_file(&paused)?;
    agent.spawn(vnetd_lab::LogMode::Files)?;
    let log = agent.log();
    assert!(
        log.contains("releasing an address from an unfinished ADD") && log.contains(&paused_ip),
        "the restarted agent released the interrupted ADD's address {paused_ip}: {log}"
    );
    assert_eq!(
        log.matches("endpoint adopted").count(),
        2,
        "the two completed ADDs were adopted: {log}"
    );
    for pod in &pods[2..] {
        let del = cni_call("DEL", &node, pod, Some("apps"), "");
        assert_eq!(node.cni(&del)?.exit, 0, "DEL after a failed ADD");
        let add = node.cni(&cni_call("ADD", &node, pod, Some("apps"), ""))?;
        assert_eq!(
            add.exit, 0,
            "ADD retried after the restart: {} {}",
            add.stdout, add.stderr
        );
    }
    let status = agent.status()?;
    let mut ips: Vec<String> = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ip"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    let n = ips.len();
    ips.dedup();
    assert_eq!(
        (n, ips.len()),
        (6, 6),
        "six endpoints with six distinct addresses: {ips:?}"
    );
    let recorded = std::fs::read_dir(node.state_dir.join("ipam"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Ipv4Addr>().ok())
        .count();
    assert_eq!(
        recorded, 6,
        "IPAM holds exactly the endpoints' addresses (none leaked)"
    );
    let first: Ipv4Addr = ips[0].parse()?;
    let last: Ipv4Addr = ips[5].parse()?;
    assert_eq!(
        pods[0].ping_count(first, 1)? + pods[0].ping_count(last, 1)?,
        2
    );
    Ok(())
}

/// Bad start-up input stops the agent with a message naming the problem, and leaves nothing
/// attached.
#[test]
fn agent_refuses_an_invalid_spec_or_a_non_bpf_pin_dir() -> Result<()> {
    use vnetd_lab::vnetd::bin;
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let start = |spec: &str, bpffs: &std::path::Path| -> Result<std::process::Output> {
        let path = node.dir.join("start.yaml");
        std::fs::write(&path, spec)?;
        let mut args = vec![bin("vnetd").into_os_string()];
        args.extend(node.agent_args(&path));
        let bpffs_at = args.iter().position(|a| a == "--bpffs").unwrap() + 1;
        args[bpffs_at] = bpffs.into();
        node.run(args)
    };
    let bad = lab_spec().replace("maxPods: 30", "maxPods: 500");
    let out = start(&bad, &node.bpffs_dir)?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nodes[0].maxPods"), "{stderr}");
    assert!(stderr.contains("not a valid spec"), "{stderr}");

    let out = start(&lab_spec(), &node.dir.join("not-bpffs"))?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not on a bpf filesystem"), "{stderr}");
    assert!(
        !node.ip(["-d", "link", "show", "eth0"])?.contains("xdp"),
        "nothing attached"
    );
    Ok(())
}

/// A subnet's NSG is enforced from the agent's start: a deny-all inbound rule refuses a pod's
/// ping to another pod of the subnet (counted as `nsg_denied`), and nothing warns that NSGs are
/// not enforced (earlier versions did). e2e_nsg.rs covers the rules in depth.
#[test]
fn a_subnet_nsg_is_enforced_from_the_start() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let nsg = "networkSecurityGroups:\n  - name: apps-nsg\n    securityRules:\n      - name: deny-all-in\n        priority: 100\n        direction: Inbound\n        access: Deny\n        protocol: \"*\"\n        sourceAddressPrefix: \"*\"\n        sourcePortRange: \"*\"\n        destinationAddressPrefix: \"*\"\n        destinationPortRange: \"*\"\nrouteTables:\n";
    let spec = lab_spec()
        .replace(
            "      routeTable: apps-routes",
            "      networkSecurityGroup: apps-nsg\n      routeTable: apps-routes",
        )
        .replace("routeTables:\n", nsg);
    ensure!(spec.contains("deny-all-in") && spec.contains("networkSecurityGroup: apps-nsg"));
    let agent = Agent::start(&node, &spec)?;
    let (a, b) = two_pods(&lab, &node)?;
    assert!(
        !agent.log().contains("not yet enforced"),
        "no stale warning: {}",
        agent.log()
    );
    assert_eq!(a.ping_count(b.ip, 1)?, 0, "the deny-all rule is enforced");
    assert!(agent.drops("nsg_denied")? >= 1, "and counted");
    Ok(())
}

/// A reload that removes a subnet still holding endpoints is refused (Azure: a subnet in use
/// cannot be deleted), naming the subnet and its endpoints; the pods keep their routes.
#[test]
fn a_reload_removing_a_subnet_in_use_is_refused() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let (a, b) = two_pods(&lab, &node)?;
    // The same VNet without `apps`: its subnet, its route table's use, the nodes' pools in it.
    let without_apps = lab_spec()
        .replace(
            "    - name: apps\n      addressPrefix: 10.0.2.0/23\n      routeTable: apps-routes\n",
            "",
        )
        .replace(", \"10.0.2.10-10.0.2.49\"", "")
        .replace(", \"10.0.2.50-10.0.2.89\"", "");
    ensure!(
        !without_apps.contains("- name: apps\n") && !without_apps.contains("10.0.2."),
        "examples/lab.yaml changed: update this test's edit"
    );
    agent.write_spec(&without_apps)?;
    assert!(
        agent.wait_for_status("reloads_failed", 1),
        "the edit was refused: {}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains("apps") && log.contains(&a.ip.to_string()) && log.contains("in use"),
        "the refusal names the subnet and its endpoints: {log}"
    );
    assert_eq!(a.ping_count(b.ip, 2)?, 2, "the pods keep their routes");
    assert_eq!(agent.drops("no_route")?, 0);
    Ok(())
}
