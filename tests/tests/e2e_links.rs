//! End to end: links that come and go behind the agent's back (a pod's host veth deleted, the
//! uplink re-created, a spec that moves the uplink) and the pods' MTU. Needs root.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;
use vnetd_lab::{
    Lab, Node, Ns, serial,
    vnetd::{Agent, Pod, add_pod, cni_call, lab_spec, lab_with_agent, node_cidr},
    wait_for,
};

/// How long the agent may take to notice a link event and act on it.
const NOTICE: Duration = Duration::from_secs(10);

/// The host-side veth of a pod, from its CNI result.
fn host_ifname(pod: &Pod) -> Result<String> {
    pod.result["interfaces"][0]["name"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no host interface in {}", pod.result))
}

fn endpoint_ips(status: &Value) -> Vec<String> {
    status["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["ip"].as_str().map(str::to_owned))
        .collect()
}

/// (program, interface) pairs from `vnetd status --json`.
fn links(status: &Value) -> Vec<(String, String)> {
    status["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l[0].as_str()?.to_owned(), l[1].as_str()?.to_owned())))
        .collect()
}

fn map_entries(status: &Value, map: &str) -> Option<u64> {
    status["maps"]
        .as_array()?
        .iter()
        .find(|m| m[0] == map)
        .and_then(|m| m[1].as_u64())
}

fn has_xdp(ns: &Ns, ifname: &str) -> Result<bool> {
    Ok(ns
        .ip(["-d", "link", "show", "dev", ifname])?
        .contains("xdp"))
}

/// A pod's host veth deleted with `ip link del`: the agent drops the endpoint (ENDPOINTS entry,
/// program pin, record) and hands its address out again, without a CNI DEL.
#[test]
fn deleted_pod_veth_releases_the_endpoint() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    // Two addresses: a third pod gets one only if the vanished pod's address came back.
    let small = lab_spec().replace("\"10.0.2.10-10.0.2.49\"", "\"10.0.2.10-10.0.2.11\"");
    assert_ne!(small, lab_spec());
    let agent = Agent::start(&node, &small)?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    let a_host = host_ifname(&a)?;
    assert_eq!(a.ping_count(b.ip, 1)?, 1);

    node.ip(["link", "del", "dev", &a_host])?;
    let gone = wait_for(NOTICE, || {
        agent
            .status()
            .is_ok_and(|s| !endpoint_ips(&s).contains(&a.ip.to_string()))
    });
    let status = agent.status()?;
    assert!(
        gone,
        "the endpoint of a deleted veth is still listed: {status}"
    );
    assert_eq!(endpoint_ips(&status), [b.ip.to_string()]);
    assert_eq!(map_entries(&status, "endpoints"), Some(1), "{status}");
    assert!(
        !links(&status).iter().any(|(_, ifname)| *ifname == a_host),
        "{status}"
    );
    assert!(
        !node
            .state_dir
            .join(format!("endpoints/{a_host}.json"))
            .exists(),
        "the endpoint's record is removed"
    );

    let c = add_pod(&lab, &node, "pod-c", Some("apps"), "")?;
    assert_eq!(c.ip, a.ip, "the vanished pod's address is handed out again");
    assert_eq!(c.ping_count(b.ip, 1)?, 1, "the new pod works");
    Ok(())
}

/// An agent that starts next to `vnd*` veths it has no record of (their ADD died half-way, or
/// their record was lost) deletes them; other links are not its business.
#[test]
fn restart_sweeps_pod_veths_without_a_record() -> Result<()> {
    let _serial = serial();
    let (lab, node, mut agent) = lab_with_agent()?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let a_host = host_ifname(&a)?;
    agent.kill()?;

    node.ip([
        "link",
        "add",
        "vnd0123456789a",
        "type",
        "veth",
        "peer",
        "name",
        "vndpeer0",
    ])?;
    node.ip([
        "link", "add", "keepme0", "type", "veth", "peer", "name", "keepme1",
    ])?;
    agent.spawn(vnetd_lab::LogMode::Files)?;

    let names: Vec<String> = node
        .ip_json(["link", "show"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    assert!(!names.iter().any(|n| n == "vnd0123456789a"), "{names:?}");
    assert!(!names.iter().any(|n| n == "vndpeer0"), "{names:?}");
    assert!(names.iter().any(|n| n == "keepme0"), "{names:?}");
    assert!(names.contains(&a_host), "a recorded pod stays: {names:?}");
    assert_eq!(endpoint_ips(&agent.status()?), [a.ip.to_string()]);
    Ok(())
}

/// The uplink deleted and re-created (a driver reload, a hot-plugged NIC): the agent attaches
/// its programs to the new link and traffic flows again without a restart.
#[test]
fn recreated_uplink_is_reattached() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let n1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let n2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    let agent = Agent::start(&n1, &lab_spec())?;
    let a = add_pod(&lab, &n1, "pod-a", Some("apps"), "")?;
    assert_eq!(a.ping_count(n2.ip, 2)?, 2, "before");
    let old = n1.link_info("eth0")?.ifindex;

    let n1 = lab.recreate_uplink(&n1)?;
    assert_ne!(n1.link_info("eth0")?.ifindex, old, "a new link");
    // node-2 must ask again who has the pod's address: only the dataplane answers that.
    n2.ip(["neigh", "flush", "all"])?;
    let attached = wait_for(NOTICE, || has_xdp(&n1, "eth0").unwrap_or(false));
    assert!(
        attached,
        "no XDP program on the new uplink:\n{}",
        agent.log()
    );
    let before = agent.traffic("uplink_in")?;
    let flows = wait_for(NOTICE, || a.ping_count(n2.ip, 1).unwrap_or(0) == 1);
    assert!(
        flows,
        "pod to node-2 after the uplink came back:\n{}",
        agent.log()
    );
    assert_eq!(a.ping_count(n2.ip, 3)?, 3);
    assert!(
        agent.traffic("uplink_in")? > before,
        "through the new XDP link"
    );
    let status = agent.status()?;
    assert!(
        links(&status).contains(&("uplink_xdp".into(), "eth0".into())),
        "{status}"
    );
    Ok(())
}

/// The uplink re-created while the agent is down: the next agent finds defunct pinned links,
/// replaces them instead of failing to start, and traffic flows.
#[test]
fn uplink_recreated_while_the_agent_is_down() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let n1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let n2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    let mut agent = Agent::start(&n1, &lab_spec())?;
    let a = add_pod(&lab, &n1, "pod-a", Some("apps"), "")?;
    assert_eq!(a.ping_count(n2.ip, 1)?, 1, "before");
    agent.kill()?;

    let n1 = lab.recreate_uplink(&n1)?;
    n2.ip(["neigh", "flush", "all"])?;
    agent.spawn(vnetd_lab::LogMode::Files)?;
    assert!(has_xdp(&n1, "eth0")?, "{}", agent.log());
    assert_eq!(a.ping_count(n2.ip, 2)?, 2, "after:\n{}", agent.log());
    assert_eq!(endpoint_ips(&agent.status()?), [a.ip.to_string()]);
    Ok(())
}

/// A spec reload that names another uplink detaches the programs from the old one and attaches
/// them to the new one; moving back restores traffic.
#[test]
fn reload_moves_the_uplink() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let n1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let n2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    // A second link in node-1 to move to (a veth pair: this kernel has no dummy driver).
    n1.ip([
        "link", "add", "up2", "type", "veth", "peer", "name", "up2peer",
    ])?;
    n1.ip(["link", "set", "up2", "up"])?;
    n1.ip(["link", "set", "up2peer", "up"])?;
    let agent = Agent::start(&n1, &lab_spec())?;
    let a = add_pod(&lab, &n1, "pod-a", Some("apps"), "")?;
    assert_eq!(a.ping_count(n2.ip, 1)?, 1);

    let node1_uplink = "    interface: eth0\n    primaryIpAddress: 10.0.0.4";
    assert!(lab_spec().contains(node1_uplink));
    let moved = lab_spec().replace(
        node1_uplink,
        "    interface: up2\n    primaryIpAddress: 10.0.0.4",
    );
    agent.write_spec(&moved)?;
    let on_up2 = wait_for(NOTICE, || {
        agent.status().is_ok_and(|s| s["uplink"] == "up2")
    });
    let status = agent.status()?;
    assert!(
        on_up2,
        "reload to up2 not applied: {status}\n{}",
        agent.log()
    );
    let l = links(&status);
    assert!(l.contains(&("uplink_xdp".into(), "up2".into())), "{l:?}");
    assert!(!l.iter().any(|(_, i)| i == "eth0"), "{l:?}");
    assert!(has_xdp(&n1, "up2")?);
    assert!(!has_xdp(&n1, "eth0")?, "the old uplink is detached");

    // An uplink that does not exist: refused, the running one stays.
    agent.write_spec(&lab_spec().replace(
        node1_uplink,
        "    interface: nope0\n    primaryIpAddress: 10.0.0.4",
    ))?;
    let refused = wait_for(NOTICE, || {
        agent.status().is_ok_and(|s| s["reloads_failed"] == 1)
    });
    assert!(refused, "{}", agent.log());
    assert!(
        agent.log().contains("uplink nope0 does not exist"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.status()?["uplink"], "up2");
    assert!(has_xdp(&n1, "up2")?);

    agent.write_spec(&lab_spec())?;
    let back = wait_for(NOTICE, || {
        agent.status().is_ok_and(|s| s["uplink"] == "eth0")
    });
    assert!(back, "reload back to eth0 not applied:\n{}", agent.log());
    assert!(has_xdp(&n1, "eth0")?);
    assert!(!has_xdp(&n1, "up2")?);
    n2.ip(["neigh", "flush", "all"])?;
    assert_eq!(a.ping_count(n2.ip, 2)?, 2, "traffic on eth0 again");
    Ok(())
}

/// The pod ping `size` bytes of payload to `dst` with "don't fragment": (answered, output).
fn ping_df(pod: &Ns, dst: Ipv4Addr, size: u32) -> Result<(bool, String)> {
    let out = pod.run([
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        &size.to_string(),
        &dst.to_string(),
    ])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn mtu_of(node: &Node, pod: &Pod) -> Result<(u32, u32)> {
    Ok((
        pod.link_info("eth0")?.mtu,
        node.link_info(&host_ifname(pod)?)?.mtu,
    ))
}

/// Pods get the uplink's MTU (or the conflist's `mtu`, never more than the uplink's): with a
/// 1400-byte uplink a full-size packet is refused in the pod with "message too long" instead of
/// vanishing on the way.
#[test]
fn pod_mtu_follows_the_uplink() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let n1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let n2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    lab.set_uplink_mtu(&n1, 1400)?;
    let _agent = Agent::start(&n1, &lab_spec())?;
    let a = add_pod(&lab, &n1, "pod-a", Some("apps"), "")?;
    assert_eq!(mtu_of(&n1, &a)?, (1400, 1400));
    assert_eq!(a.result["interfaces"][1]["mtu"], 1400, "{}", a.result);

    let (ok, out) = ping_df(&a, n2.ip, 1372)?;
    assert!(ok, "1400-byte packets pass: {out}");
    let (ok, out) = ping_df(&a, n2.ip, 1472)?;
    assert!(
        !ok,
        "1500-byte packets cannot pass a 1400-byte uplink: {out}"
    );
    assert!(
        out.to_lowercase().contains("message too long"),
        "refused in the pod, not lost on the way: {out}"
    );

    // The conflist's mtu, when smaller, wins.
    let b_ns = lab.add_pod_netns("pod-b")?;
    let mut call = cni_call("ADD", &n1, &b_ns, Some("apps"), "");
    let mut conf: Value = serde_json::from_str(&call.config)?;
    conf["mtu"] = 1300.into();
    call.config = conf.to_string();
    let out = n1.cni(&call)?;
    assert_eq!(out.exit, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(b_ns.link_info("eth0")?.mtu, 1300);
    assert_eq!(out.json()?["interfaces"][1]["mtu"], 1300);

    // Larger than the uplink's: refused with a clear error; nothing made, no address held.
    let c_ns = lab.add_pod_netns("pod-c")?;
    let mut call = cni_call("ADD", &n1, &c_ns, Some("apps"), "");
    conf["mtu"] = 9000.into();
    call.config = conf.to_string();
    let out = n1.cni(&call)?;
    assert_eq!(out.exit, 1, "{} {}", out.stdout, out.stderr);
    let err = out.json()?;
    assert_eq!(err["code"], 7, "{err}");
    let msg = err["msg"].as_str().unwrap_or_default();
    for part in ["9000", "1400", "eth0"] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    assert!(c_ns.link_info("eth0").is_err(), "no interface made");
    let d = add_pod(&lab, &n1, "pod-d", Some("apps"), "")?;
    assert_eq!(
        d.ip,
        "10.0.2.12".parse::<Ipv4Addr>()?,
        "the refused ADD held no address"
    );
    Ok(())
}
