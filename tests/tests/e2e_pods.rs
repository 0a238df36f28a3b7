//! End to end: pods attached through the CNI plugin on lab nodes, talking through the eBPF
//! dataplane (same node, across nodes, to the node), with what must not pass dropped and
//! counted. Needs root.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
use vnetd_lab::{
    Lab, serial, tcp_echo_ok, udp_ok,
    vnetd::{Agent, add_pod, cni_call, lab_spec, lab_with_agent, node_cidr},
};

/// One node, two pods: the first slice through every layer. Packets went through the XDP
/// program on the uplink and the TC program on the pods' veths (their counters moved).
#[test]
fn pods_on_one_node_talk_through_both_programs() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(
        &lab,
        &node,
        "pod-b",
        Some("apps"),
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=b",
    )?;
    assert_eq!(
        a.ip,
        "10.0.2.10".parse::<Ipv4Addr>()?,
        "first address of node-1's apps pool"
    );
    assert_ne!(a.ip, b.ip);

    assert_eq!(a.ping_count(b.ip, 3)?, 3, "pod to pod on one node");
    tcp_echo_ok(&a, &b, b.ip, 5001)?;
    udp_ok(&b, &a, a.ip, 5002)?;
    assert!(agent.traffic("pod_to_pod")? >= 6);
    assert!(agent.traffic("pod_out")? >= 6);

    assert_eq!(a.ping_count(node.ip, 2)?, 2, "pod to its node");
    assert_eq!(node.ping_count(b.ip, 2)?, 2, "node to its pod");
    assert!(agent.traffic("pod_to_host")? >= 2);
    // The fabric's own chatter and the gateway's pings cross the uplink's XDP program.
    assert_eq!(node.ping_count(vnetd_lab::GATEWAY, 1)?, 1);
    assert!(agent.traffic("uplink_in")? >= 1);

    let status = agent.status()?;
    let endpoints = status["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert!(
        endpoints
            .iter()
            .any(|e| e["k8s_pod"] == "b" && e["k8s_namespace"] == "default")
    );
    let links: Vec<String> = status["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        links.iter().filter(|p| *p == "pod_ingress").count(),
        2,
        "{links:?}"
    );
    assert!(links.contains(&"uplink_xdp".to_string()), "{links:?}");
    assert_eq!(agent.drops("spoofed")?, 0);

    let (code, metrics) = vnetd_lab::http_get(
        &node,
        vnetd_lab::NODE_METRICS_ADDR.parse()?,
        "/metrics",
        Duration::from_secs(5),
    )?;
    assert_eq!(code, 200, "{metrics}");
    for line in [
        "vnetd_endpoints 2",
        "vnetd_map_entries{map=\"endpoints\"} 2",
        "vnetd_spec_reloads_total{result=\"failed\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains("vnetd_forwarded_packets_total{path=\"pod_to_pod\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vnetd_drops_total{reason=\"spoofed\"} 0"),
        "{metrics}"
    );
    Ok(())
}

/// Two nodes: pods reach pods on the other node with their own addresses (no overlay): the
/// sending node resolves the remote pod on the fabric and the remote node answers ARP for it.
#[test]
fn pods_talk_across_nodes_without_overlay() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let n1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let n2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    let agent1 = Agent::start(&n1, &lab_spec())?;
    let agent2 = Agent::start(&n2, &lab_spec())?;
    let a = add_pod(&lab, &n1, "pod-a", Some("apps"), "")?;
    let c = add_pod(&lab, &n2, "pod-c", Some("apps"), "")?;
    assert_eq!(
        c.ip,
        "10.0.2.50".parse::<Ipv4Addr>()?,
        "first address of node-2's apps pool"
    );

    let capture = lab
        .fabric()
        .capture("br0", &format!("icmp and host {}", c.ip))?;
    assert_eq!(a.ping_count(c.ip, 3)?, 3, "pod to pod across nodes");
    assert!(
        capture.wait_for(&format!("{} > {}", a.ip, c.ip), Duration::from_secs(2)),
        "the fabric carries the pods' own addresses: {:?}",
        capture.lines()
    );
    tcp_echo_ok(&a, &c, c.ip, 5101)?;
    udp_ok(&c, &a, a.ip, 5102)?;
    assert!(agent1.traffic("pod_to_vnet")? >= 3);
    assert!(agent2.traffic("uplink_to_pod")? >= 3);
    assert!(
        agent2.traffic("arp_reply")? >= 1,
        "node-2 answered ARP for its pod"
    );

    assert_eq!(a.ping_count(n2.ip, 2)?, 2, "pod to the other node");
    Ok(())
}

/// `vnetd teardown` removes what the agent made: pod interfaces, links (programs detach),
/// pinned maps, state. It refuses another node's state.
#[test]
fn teardown_removes_the_node_dataplane() -> Result<()> {
    let _serial = serial();
    let (lab, node, mut agent) = lab_with_agent()?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    assert!(
        node.bpffs_dir
            .join(format!("abi-v{}/links", vnetd_common::ABI_VERSION))
            .read_dir()?
            .count()
            >= 3
    );
    agent.kill()?;

    let teardown = |name: &str| {
        node.run_ok([
            vnetd_lab::vnetd::bin("vnetd").to_str().unwrap(),
            "teardown",
            "--node",
            name,
            "--state-dir",
            node.state_dir.to_str().unwrap(),
            "--bpffs",
            node.bpffs_dir.to_str().unwrap(),
        ])
    };
    assert!(
        teardown("node-2").is_err(),
        "another node's state is refused"
    );
    teardown("node-1")?;
    assert!(
        !node
            .bpffs_dir
            .join(format!("abi-v{}", vnetd_common::ABI_VERSION))
            .exists(),
        "pins removed"
    );
    assert!(!node.state_dir.exists(), "state removed");
    let xdp = node.ip(["-d", "link", "show", "eth0"])?;
    assert!(!xdp.contains("xdp"), "XDP detached from the uplink: {xdp}");
    assert!(
        a.ip(["link", "show", "eth0"]).is_err(),
        "the pod's interface is gone"
    );
    Ok(())
}

/// The CNI verbs against a real agent: a full pool gives a clear error and STATUS says not
/// ready (code 50); ADD of an existing attachment fails; CHECK verifies; GC releases what is
/// not in the valid list; DEL is idempotent and returns the address.
#[test]
fn cni_pool_exhaustion_status_gc_and_del() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let small = lab_spec().replace("\"10.0.2.10-10.0.2.49\"", "\"10.0.2.10-10.0.2.11\"");
    assert_ne!(small, lab_spec());
    let agent = Agent::start(&node, &small)?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;

    let status = |subnet: &str| node.cni(&cni_call("STATUS", &node, &a.ns, Some(subnet), ""));
    let full = add_pod(&lab, &node, "pod-c", Some("apps"), "")
        .err()
        .expect("the pool is full");
    assert!(format!("{full:#}").contains("exhausted"), "{full:#}");
    let out = status("apps")?;
    assert_eq!(out.exit, 1);
    assert_eq!(out.json()?["code"], 50, "{}", out.stdout);
    assert_eq!(
        status("aci")?.exit,
        0,
        "the other subnet still has addresses"
    );

    let again = node.cni(&cni_call("ADD", &node, &a.ns, Some("apps"), ""))?;
    assert_ne!(again.exit, 0, "ADD of an existing attachment fails");
    let mut check = cni_call("CHECK", &node, &a.ns, Some("apps"), "");
    let mut conf: serde_json::Value = serde_json::from_str(&check.config)?;
    conf["prevResult"] = a.result.clone();
    check.config = conf.to_string();
    assert_eq!(node.cni(&check)?.exit, 0, "CHECK of what ADD made");

    // GC with only pod-a valid releases pod-b (interface, address, endpoint).
    let mut gc = cni_call("GC", &node, &a.ns, Some("apps"), "");
    let mut conf: serde_json::Value = serde_json::from_str(&gc.config)?;
    conf["cni.dev/valid-attachments"] =
        serde_json::json!([{ "containerID": a.container_id, "ifname": "eth0" }]);
    gc.config = conf.to_string();
    assert_eq!(node.cni(&gc)?.exit, 0);
    assert!(
        b.ip(["link", "show", "eth0"]).is_err(),
        "pod-b's interface was collected"
    );
    assert_eq!(
        agent.status()?["endpoints"].as_array().map(Vec::len),
        Some(1)
    );

    let del = cni_call("DEL", &node, &a.ns, Some("apps"), "");
    assert_eq!(node.cni(&del)?.exit, 0);
    assert_eq!(node.cni(&del)?.exit, 0, "DEL is idempotent");
    assert_eq!(
        agent.status()?["endpoints"].as_array().map(Vec::len),
        Some(0)
    );
    let c = add_pod(&lab, &node, "pod-d", Some("apps"), "")?;
    assert_eq!(
        c.ip,
        "10.0.2.10".parse::<Ipv4Addr>()?,
        "DEL returned the address to the pool"
    );
    Ok(())
}

/// An address handed out again reaches its new pod, both ways, right after the ADD: the
/// programs keep per-CPU copies of the endpoints they forwarded for, and the old pod's copies
/// (another veth, another MAC) must not outlive its DEL on any CPU.
#[test]
fn an_address_handed_out_again_belongs_to_its_new_pod_at_once() -> Result<()> {
    let _serial = serial();
    let (lab, node, _agent) = lab_with_agent()?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    // Both CPUs forward for both pods, each way (the pings' replies come back on either).
    assert_eq!(a.ping_count(b.ip, 4)?, 4);
    assert_eq!(b.ping_count(a.ip, 4)?, 4);
    tcp_echo_ok(&a, &b, b.ip, 5001)?;

    let del = cni_call("DEL", &node, &b.ns, Some("apps"), "");
    assert_eq!(node.cni(&del)?.exit, 0);
    let c = add_pod(&lab, &node, "pod-c", Some("apps"), "")?;
    assert_eq!(c.ip, b.ip, "the lowest free address: pod-b's");
    assert_eq!(a.ping_count(c.ip, 3)?, 3, "to the new pod");
    assert_eq!(c.ping_count(a.ip, 3)?, 3, "from the new pod");
    udp_ok(&a, &c, c.ip, 5002)?;
    Ok(())
}

/// A declared container group attached through `VNETD_CONTAINER_GROUP` (no `subnet` in the
/// network config) gets its declared address in its delegated subnet and is reachable there;
/// it attaches once, and the delegated subnet takes nothing but declared groups.
#[test]
fn declared_container_group_gets_its_address_in_the_delegated_subnet() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let api = add_pod(&lab, &node, "api", None, "VNETD_CONTAINER_GROUP=api")?;
    assert_eq!(
        api.ip,
        "10.0.1.10".parse::<Ipv4Addr>()?,
        "the group's declared address (examples/lab.yaml, subnet aci)"
    );
    let addr = api.ip(["-4", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(
        addr.contains("10.0.1.10/32"),
        "the address is on the group's interface: {addr}"
    );
    let status = agent.status()?;
    assert!(
        status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["container_group"] == "api" && e["ip"] == "10.0.1.10"),
        "{status}"
    );

    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    assert_eq!(a.ping_count(api.ip, 2)?, 2, "an apps pod reaches the group");
    tcp_echo_ok(&a, &api, api.ip, 8080)?;
    assert_eq!(node.ping_count(api.ip, 1)?, 1, "its node reaches the group");

    let again = lab.add_pod_netns("api-again")?;
    let out = node.cni(&cni_call(
        "ADD",
        &node,
        &again,
        None,
        "VNETD_CONTAINER_GROUP=api",
    ))?;
    assert_eq!(out.exit, 1, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()?["code"], 7, "{}", out.stdout);
    assert!(out.stdout.contains("already attached"), "{}", out.stdout);
    let out = node.cni(&cni_call("ADD", &node, &again, Some("aci"), ""))?;
    assert_eq!(out.json()?["code"], 7, "{}", out.stdout);
    assert!(
        out.stdout.contains("VNETD_CONTAINER_GROUP"),
        "the delegated subnet asks for a group: {}",
        out.stdout
    );
    Ok(())
}

/// The node's `maxPods` holds at run time: the ADD beyond it fails with CNI code 11 ("try
/// again later") naming the limit, though the pool has addresses left; after a DEL it fits.
#[test]
fn adds_beyond_max_pods_fail_until_a_pod_leaves() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    // 10 is the smallest maxPods the spec accepts; the apps pool has 40 addresses.
    let spec = lab_spec().replacen("maxPods: 30", "maxPods: 10", 1);
    assert_ne!(spec, lab_spec());
    let agent = Agent::start(&node, &spec)?;
    let pods: Vec<_> = (0..10)
        .map(|i| add_pod(&lab, &node, &format!("pod-{i}"), Some("apps"), ""))
        .collect::<Result<_>>()?;
    let extra = lab.add_pod_netns("pod-extra")?;
    let out = node.cni(&cni_call("ADD", &node, &extra, Some("apps"), ""))?;
    assert_eq!(out.exit, 1, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json()?["code"], 11, "{}", out.stdout);
    assert!(out.stdout.contains("maxPods 10"), "{}", out.stdout);
    assert!(
        extra.ip(["link", "show", "eth0"]).is_err(),
        "the refused pod got no interface"
    );
    assert_eq!(
        agent.status()?["endpoints"].as_array().map(Vec::len),
        Some(10)
    );

    let del = cni_call("DEL", &node, &pods[3].ns, Some("apps"), "");
    assert_eq!(node.cni(&del)?.exit, 0);
    let out = node.cni(&cni_call("ADD", &node, &extra, Some("apps"), ""))?;
    assert_eq!(out.exit, 0, "room again after a DEL: {}", out.stdout);
    Ok(())
}
