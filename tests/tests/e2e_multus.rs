//! End to end: a pod with two vnetd interfaces, as Multus attaches them: `eth0` on network
//! `vnetd` (subnet apps), then `net1` on network `vnetd-data` (subnet data, its conflist routing
//! only 10.0.4.0/24 through it): a second CNI ADD for the same container id and namespace. Each
//! interface is its own endpoint (address, anti-spoofing), the default route stays on eth0, and
//! DEL or GC of one network never touches the other's interface. Needs root.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use vnetd_lab::{
    CniCall, Lab, Node, POD_GATEWAY, PodNs,
    frames::{parse_mac, send_raw, udp_frame},
    serial, tcp_echo, tcp_echo_ok,
    vnetd::{Agent, Pod, add_pod, bin, lab_spec, node_cidr},
};

/// The first network: `vnetd_lab::vnetd::cni_config`'s name.
const NET_A: &str = "vnetd";
/// The second network, on its own subnet.
const NET_B: &str = "vnetd-data";
const DATA_PREFIX: &str = "10.0.4.0/24";

/// The lab's spec with a third subnet, `data` (10.0.4.0/24), and a pool there for node-1.
fn multus_spec() -> String {
    let spec = lab_spec()
        .replacen(
            "    - name: apps\n",
            "    - name: data\n      addressPrefix: 10.0.4.0/24\n    - name: apps\n",
            1,
        )
        .replacen(
            "\"10.0.2.10-10.0.2.49\"]",
            "\"10.0.2.10-10.0.2.49\", \"10.0.4.10-10.0.4.29\"]",
            1,
        );
    assert_eq!(spec.matches("10.0.4.").count(), 3, "{spec}");
    spec
}

/// A CNI call for `pod` on `network` (subnet `subnet`), interface `ifname`; `extra` is merged
/// into the network configuration.
fn call(
    command: &str,
    node: &Node,
    pod: &PodNs,
    (network, subnet): (&str, &str),
    ifname: &str,
    extra: Value,
) -> CniCall {
    let mut config = json!({
        "cniVersion": "1.1.0",
        "name": network,
        "type": "vnetd-cni",
        "agentSocket": node.api_socket,
        "subnet": subnet,
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    CniCall {
        command: command.into(),
        plugin: bin("vnetd-cni"),
        container_id: format!("ctr-{}", pod.role),
        netns: pod.path.clone(),
        ifname: ifname.into(),
        config: config.to_string(),
        ..Default::default()
    }
}

/// Network B's conflist: only the data subnet is routed through net1.
fn data_routes() -> Value {
    json!({ "routes": [{ "dst": DATA_PREFIX }] })
}

fn address_of(result: &Value) -> Result<Ipv4Addr> {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in the CNI result {result}"))
}

/// Runs an ADD and returns its result.
fn add(node: &Node, call: &CniCall) -> Result<Value> {
    let out = node.cni(call)?;
    if out.exit != 0 {
        bail!(
            "CNI ADD of {} on {} failed ({}): {} {}",
            call.ifname,
            call.container_id,
            out.exit,
            out.stdout,
            out.stderr
        );
    }
    out.json()
}

/// A pod on both networks.
struct MultiPod {
    ns: PodNs,
    container_id: String,
    eth0: Ipv4Addr,
    net1: Ipv4Addr,
    eth0_result: Value,
    net1_result: Value,
}

/// A lab with node-1's agent on [`multus_spec`], a pod `peer` on network A (apps), a pod
/// `data-peer` on network B only (its eth0 in data), and the pod `multi` on both.
struct Multus {
    lab: Lab,
    node: Node,
    agent: Agent,
    peer: Pod,
    data_peer: (PodNs, Ipv4Addr),
    multi: MultiPod,
}

fn multus_lab() -> Result<Multus> {
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, &multus_spec())?;
    let peer = add_pod(&lab, &node, "peer", Some("apps"), "")?;
    let data_ns = lab.add_pod_netns("data-peer")?;
    let data_ip = address_of(&add(
        &node,
        &call("ADD", &node, &data_ns, (NET_B, "data"), "eth0", json!({})),
    )?)?;

    let ns = lab.add_pod_netns("multi")?;
    let eth0_result = add(
        &node,
        &call("ADD", &node, &ns, (NET_A, "apps"), "eth0", json!({})),
    )?;
    let eth0 = address_of(&eth0_result)?;
    let second = call("ADD", &node, &ns, (NET_B, "data"), "net1", data_routes());
    let net1_result = add(&node, &second)?;
    let net1 = address_of(&net1_result)?;
    Ok(Multus {
        lab,
        node,
        agent,
        peer,
        data_peer: (data_ns, data_ip),
        multi: MultiPod {
            ns,
            container_id: second.container_id,
            eth0,
            net1,
            eth0_result,
            net1_result,
        },
    })
}

/// The pod's IPv4 routes of the main table as `ip -j` gives them.
fn main_routes(ns: &PodNs) -> Result<Vec<Value>> {
    let routes = ns.ip_json(["-4", "route", "show", "table", "main"])?;
    Ok(routes.as_array().cloned().unwrap_or_default())
}

fn default_routes(ns: &PodNs) -> Result<Vec<Value>> {
    Ok(main_routes(ns)?
        .into_iter()
        .filter(|r| r["dst"] == "default")
        .collect())
}

/// The endpoints the agent reports for `container_id`: (network, ifname, ip).
fn endpoints_of(agent: &Agent, container_id: &str) -> Result<Vec<(String, String, String)>> {
    let status = agent.status()?;
    let mut out: Vec<_> = status["endpoints"]
        .as_array()
        .context("no endpoints in the status")?
        .iter()
        .filter(|e| e["container_id"] == container_id)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("network"), s("ifname"), s("ip"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The second ADD (net1 on another network and subnet) succeeds; the pod keeps one default
/// route, on eth0; net1 has its address, a link route for the gateway and the conflist's route;
/// both addresses answer another pod (on the node and on another node), each from its own
/// interface; CHECK passes for each; net1 cannot send with eth0's address.
#[test]
fn a_second_interface_is_its_own_endpoint_and_keeps_the_default_route_on_eth0() -> Result<()> {
    let _serial = serial();
    let Multus {
        lab,
        node,
        agent,
        peer,
        data_peer: (data_ns, data_ip),
        multi,
    } = multus_lab()?;
    let pod = &multi.ns;
    ensure!(
        DATA_PREFIX
            .parse::<vnetd_lab::ipnet::Ipv4Net>()?
            .contains(&multi.net1),
        "net1's address {} is in the data subnet",
        multi.net1
    );
    assert_eq!(
        endpoints_of(&agent, &multi.container_id)?,
        vec![
            (NET_A.into(), "eth0".into(), multi.eth0.to_string()),
            (NET_B.into(), "net1".into(), multi.net1.to_string()),
        ]
    );

    // Routes: one default (eth0's); net1 gets the gateway on link and only what its conflist
    // says. The CNI result says the same.
    let defaults = default_routes(pod)?;
    assert_eq!(defaults.len(), 1, "{defaults:?}");
    assert_eq!(defaults[0]["dev"], "eth0", "{defaults:?}");
    assert_eq!(defaults[0]["gateway"], POD_GATEWAY.to_string());
    let net1_routes: Vec<Value> = main_routes(pod)?
        .into_iter()
        .filter(|r| r["dev"] == "net1")
        .collect();
    assert!(
        net1_routes
            .iter()
            .any(|r| r["dst"] == POD_GATEWAY.to_string() && r["scope"] == "link"),
        "a link route for the gateway on net1: {net1_routes:?}"
    );
    assert!(
        net1_routes
            .iter()
            .any(|r| r["dst"] == DATA_PREFIX && r["gateway"] == POD_GATEWAY.to_string()),
        "the conflist's route via net1: {net1_routes:?}"
    );
    assert_eq!(
        net1_routes.len(),
        2,
        "nothing else on net1: {net1_routes:?}"
    );
    assert_eq!(
        multi.net1_result["routes"],
        json!([{ "dst": DATA_PREFIX, "gw": POD_GATEWAY.to_string() }]),
        "{}",
        multi.net1_result
    );
    assert_eq!(multi.net1_result["interfaces"][1]["name"], "net1");
    // CHECK of each interface against its own result: net1 without a default route is right.
    for (network, ifname, result) in [
        ((NET_A, "apps"), "eth0", &multi.eth0_result),
        ((NET_B, "data"), "net1", &multi.net1_result),
    ] {
        let out = node.cni(&call(
            "CHECK",
            &node,
            pod,
            network,
            ifname,
            json!({ "prevResult": result }),
        ))?;
        assert_eq!(out.exit, 0, "CHECK {ifname}: {} {}", out.stdout, out.stderr);
    }

    // Both addresses answer a pod of network A; each reply leaves by its own interface (a reply
    // from net1's address through eth0 would be dropped as spoofed).
    assert_eq!(peer.ping_count(multi.eth0, 2)?, 2, "eth0's address");
    assert_eq!(peer.ping_count(multi.net1, 2)?, 2, "net1's address");
    tcp_echo_ok(&peer, pod, multi.net1, 5301)?;
    tcp_echo_ok(&peer, pod, multi.eth0, 5302)?;
    // The data subnet is reached through net1, from net1's address; the rest through eth0.
    let report = tcp_echo(pod, &data_ns, data_ip, 5303, Duration::from_secs(3))?;
    assert_eq!(*report.client_local.ip(), multi.net1, "{report:?}");
    let report = tcp_echo(pod, &peer, peer.ip, 5304, Duration::from_secs(3))?;
    assert_eq!(*report.client_local.ip(), multi.eth0, "{report:?}");
    assert_eq!(
        agent.drops("spoofed")?,
        0,
        "no reply left by the wrong interface"
    );

    // From a pod on another node too: node-1 answers ARP for both addresses on the fabric.
    let node2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    let _agent2 = Agent::start(&node2, &multus_spec())?;
    let remote = add_pod(&lab, &node2, "remote", Some("apps"), "")?;
    assert_eq!(
        remote.ping_count(multi.eth0, 2)?,
        2,
        "eth0's address across nodes"
    );
    assert_eq!(
        remote.ping_count(multi.net1, 2)?,
        2,
        "net1's address across nodes"
    );
    tcp_echo_ok(&remote, pod, multi.net1, 5305)?;

    // net1 sending with eth0's address is dropped and counted.
    let net1_host = host_ifname(&agent, &multi.container_id, "net1")?;
    let gateway_mac = parse_mac(&agent.node.link_info(&net1_host)?.mac)?;
    let net1_mac = parse_mac(&pod.link_info("net1")?.mac)?;
    let forged = udp_frame(
        (gateway_mac, net1_mac),
        None,
        (multi.eth0, peer.ip),
        7001,
        b"spoof",
    );
    let arrivals = peer.capture("eth0", "udp port 7001")?;
    let before = agent.drops("spoofed")?;
    pod.in_ns(|| send_raw(nix::net::if_::if_nametoindex("net1")?, &forged))?;
    assert!(
        vnetd_lab::wait_for(Duration::from_secs(3), || agent
            .drops("spoofed")
            .is_ok_and(|n| n == before + 1)),
        "net1 with eth0's address counted as spoofed"
    );
    let genuine = udp_frame(
        (gateway_mac, net1_mac),
        None,
        (multi.net1, peer.ip),
        7001,
        b"genuine",
    );
    pod.in_ns(|| send_raw(nix::net::if_::if_nametoindex("net1")?, &genuine))?;
    assert!(
        arrivals.wait_for(
            &format!("{}.40000 > {}.7001", multi.net1, peer.ip),
            Duration::from_secs(3)
        ),
        "{:?}",
        arrivals.lines()
    );
    let lines = arrivals.stop()?;
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&format!("{}.40000", multi.eth0))),
        "the forged frame never arrived: {lines:?}"
    );
    Ok(())
}

/// The host-side veth the agent made for (container, ifname).
fn host_ifname(agent: &Agent, container_id: &str, ifname: &str) -> Result<String> {
    let status = agent.status()?;
    status["endpoints"]
        .as_array()
        .and_then(|eps| {
            eps.iter()
                .find(|e| e["container_id"] == container_id && e["ifname"] == ifname)
        })
        .and_then(|e| e["host_ifname"].as_str())
        .map(str::to_string)
        .with_context(|| format!("no endpoint {container_id}/{ifname} in {status}"))
}

/// DEL of net1 (network B) removes net1, its address and endpoint, and nothing of eth0; the
/// address goes back to the pool and a new ADD of net1 works again. Then DEL of eth0 leaves
/// net1 working; net1's host veth deleted behind the agent's back takes its rule along.
#[test]
fn del_of_one_network_removes_only_its_interface() -> Result<()> {
    let _serial = serial();
    let Multus {
        lab: _lab,
        node,
        agent,
        peer,
        multi,
        ..
    } = multus_lab()?;
    let pod = &multi.ns;
    let del_net1 = call("DEL", &node, pod, (NET_B, "data"), "net1", data_routes());
    let out = node.cni(&del_net1)?;
    assert_eq!(out.exit, 0, "{} {}", out.stdout, out.stderr);

    assert!(pod.ip(["link", "show", "net1"]).is_err(), "net1 is gone");
    let rules = pod.ip(["-4", "rule", "show"])?;
    assert!(
        !rules.contains(&multi.net1.to_string()),
        "no rule left for net1's address: {rules}"
    );
    assert_eq!(
        endpoints_of(&agent, &multi.container_id)?,
        vec![(NET_A.into(), "eth0".into(), multi.eth0.to_string())]
    );
    assert_eq!(
        default_routes(pod)?.len(),
        1,
        "eth0 keeps the default route"
    );
    assert_eq!(peer.ping_count(multi.eth0, 2)?, 2, "eth0 still works");
    assert_eq!(node.cni(&del_net1)?.exit, 0, "DEL is idempotent");

    let again = address_of(&add(
        &node,
        &call("ADD", &node, pod, (NET_B, "data"), "net1", data_routes()),
    )?)?;
    assert_eq!(again, multi.net1, "DEL returned net1's address to the pool");
    assert_eq!(peer.ping_count(again, 2)?, 2, "net1 again");

    // The other way round: eth0 goes, net1 stays (the pod has no default route then).
    let del_eth0 = call("DEL", &node, pod, (NET_A, "apps"), "eth0", json!({}));
    assert_eq!(node.cni(&del_eth0)?.exit, 0);
    assert!(pod.ip(["link", "show", "eth0"]).is_err(), "eth0 is gone");
    assert_eq!(
        endpoints_of(&agent, &multi.container_id)?,
        vec![(NET_B.into(), "net1".into(), multi.net1.to_string())]
    );
    assert_eq!(peer.ping_count(multi.net1, 2)?, 2, "net1 still works");
    assert_eq!(agent.drops("spoofed")?, 0);

    // net1's host veth deleted behind the agent's back: the endpoint and its rule go too.
    let host = host_ifname(&agent, &multi.container_id, "net1")?;
    node.ip(["link", "del", &host])?;
    assert!(
        vnetd_lab::wait_for(Duration::from_secs(5), || endpoints_of(
            &agent,
            &multi.container_id
        )
        .is_ok_and(|eps| eps.is_empty())),
        "the vanished interface's endpoint is released"
    );
    let rules = pod.ip(["-4", "rule", "show"])?;
    assert!(
        !rules.contains(&multi.net1.to_string()),
        "no rule left for net1's address: {rules}"
    );
    Ok(())
}

/// GC of network A with only `peer` valid collects multi's eth0 and leaves its net1 (network
/// B) alone; GC of network B with an empty list then collects net1, and not `peer`.
#[test]
fn gc_of_one_network_keeps_the_other_networks_interfaces() -> Result<()> {
    let _serial = serial();
    let Multus {
        lab: _lab,
        node,
        agent,
        peer,
        data_peer: (data_ns, _),
        multi,
        ..
    } = multus_lab()?;
    let pod = &multi.ns;
    let gc = |network: (&str, &str), valid: Value| -> Result<()> {
        let call = call(
            "GC",
            &node,
            pod,
            network,
            "",
            json!({ "cni.dev/valid-attachments": valid }),
        );
        let out = node.cni(&call)?;
        ensure!(
            out.exit == 0,
            "GC of {}: {} {}",
            network.0,
            out.stdout,
            out.stderr
        );
        Ok(())
    };

    gc(
        (NET_A, "apps"),
        json!([{ "containerID": peer.container_id, "ifname": "eth0" }]),
    )?;
    assert!(pod.ip(["link", "show", "eth0"]).is_err(), "eth0 collected");
    assert_eq!(
        endpoints_of(&agent, &multi.container_id)?,
        vec![(NET_B.into(), "net1".into(), multi.net1.to_string())]
    );
    assert_eq!(
        peer.ping_count(multi.net1, 2)?,
        2,
        "net1 untouched by GC of A"
    );

    gc(
        (NET_B, "data"),
        json!([{ "containerID": format!("ctr-{}", data_ns.role), "ifname": "eth0" }]),
    )?;
    assert!(pod.ip(["link", "show", "net1"]).is_err(), "net1 collected");
    assert!(endpoints_of(&agent, &multi.container_id)?.is_empty());
    assert_eq!(
        endpoints_of(&agent, &peer.container_id)?.len(),
        1,
        "GC of B leaves A's pods"
    );
    assert!(
        data_ns.ip(["link", "show", "eth0"]).is_ok(),
        "B's valid pod stays"
    );
    assert_eq!(peer.ping_count(node.ip, 1)?, 1);
    Ok(())
}
