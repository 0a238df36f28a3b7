//! End to end: what the dataplane refuses (spoofed sources, `None` routes), where it steers
//! (a `VirtualAppliance` route), and how it lives through its agent (SIGKILL with a stream
//! running, live spec edits, invalid edits refused). Needs root.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Result, ensure};
use vnetd_lab::{
    Lab, Node, serial,
    vnetd::{Agent, Pod, add_pod, lab_spec, ping_from_forged},
    wait_for,
};

fn lab_with_node() -> Result<(Lab, Node, Agent)> {
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let agent = Agent::start(&node, &lab_spec())?;
    Ok((lab, node, agent))
}

fn two_pods(lab: &Lab, node: &Node) -> Result<(Pod, Pod)> {
    Ok((
        add_pod(lab, node, "pod-a", Some("apps"), "")?,
        add_pod(lab, node, "pod-b", Some("apps"), "")?,
    ))
}

#[test]
fn spoofed_source_address_and_mac_are_dropped_and_counted() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_node()?;
    let (a, b) = two_pods(&lab, &node)?;
    assert_eq!(a.ping_count(b.ip, 1)?, 1);

    // Another pod's address as source.
    assert_eq!(ping_from_forged(&a, "10.0.2.77".parse()?, b.ip)?, 0);
    assert!(agent.drops("spoofed")? >= 2, "spoofed source counted");

    // Its own address from another MAC.
    let before = agent.drops("spoofed")?;
    a.ip(["link", "set", "eth0", "address", "02:de:ad:be:ef:01"])?;
    assert_eq!(
        a.ping_count(b.ip, 2)?,
        0,
        "a pod with a forged MAC reaches nothing"
    );
    assert!(agent.drops("spoofed")? >= before + 2);
    Ok(())
}

#[test]
fn none_route_drops_and_appliance_route_reaches_the_appliance() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_node()?;
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

/// A spec edit is applied live (a new route drops what passed); an invalid edit is refused and
/// the running configuration stays.
#[test]
fn spec_edits_apply_live_and_invalid_edits_are_refused() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_node()?;
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
        wait_for(Duration::from_secs(10), || agent
            .status()
            .map(|s| s["reloads_ok"] == 1)
            .unwrap_or(false)),
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
        wait_for(Duration::from_secs(10), || agent
            .status()
            .map(|s| s["reloads_failed"] == 1)
            .unwrap_or(false)),
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
    let (lab, node, agent) = lab_with_node()?;
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
            wait_for(Duration::from_secs(10), || agent
                .status()
                .map(|s| s["reloads_ok"] == i as u64 + 1)
                .unwrap_or(false)),
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
    let (lab, node, agent) = lab_with_node()?;
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

    let _server = c.spawn(["iperf3", "-s", "-1", "-p", "5301"])?;
    std::thread::sleep(Duration::from_millis(300));
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
    std::thread::sleep(Duration::from_secs(2));
    agent1.kill()?;
    std::thread::sleep(Duration::from_secs(1));
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

/// IPAM is durable: the agent is killed while pods are being added concurrently; after its
/// restart (and the runtime's DEL of every failed ADD, as CNI prescribes), every pod can be
/// added, no address is held twice and none is leaked.
#[test]
fn agent_killed_during_adds_never_duplicates_or_leaks_an_address() -> Result<()> {
    use vnetd_lab::vnetd::cni_call;
    let _serial = serial();
    let (lab, node, mut agent) = lab_with_node()?;
    let pods: Vec<_> = (0..6)
        .map(|i| lab.add_pod_netns(&format!("pod-{i}")))
        .collect::<Result<_>>()?;
    let outcomes: Vec<i32> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| {
                let node = &node;
                s.spawn(move || {
                    node.cni(&cni_call("ADD", node, pod, Some("apps"), ""))
                        .map(|o| o.exit)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(60));
        agent.kill().expect("kill the agent");
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").unwrap_or(-1))
            .collect()
    });
    agent.spawn(vnetd_lab::LogMode::Files)?;
    for (pod, exit) in pods.iter().zip(&outcomes) {
        if *exit != 0 {
            let del = cni_call("DEL", &node, pod, Some("apps"), "");
            assert_eq!(node.cni(&del)?.exit, 0, "DEL after a failed ADD");
            let add = node.cni(&cni_call("ADD", &node, pod, Some("apps"), ""))?;
            assert_eq!(
                add.exit, 0,
                "ADD retried after the restart: {} {}",
                add.stdout, add.stderr
            );
        }
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
    eprintln!("ADD exits around the kill: {outcomes:?}");
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
