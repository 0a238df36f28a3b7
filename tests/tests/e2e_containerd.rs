//! End to end with a real container runtime: Debian's containerd started privately in a lab
//! node (see `vnetd_lab::containerd`), an offline busybox image, and containers attached with
//! `ctr run --cni` (go-cni and libcni, the path containerd's CRI plugin takes). Needs root,
//! containerd and busybox-static (`cargo xtask setup` installs them).
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use vnetd_lab::{
    Lab, Node,
    containerd::{BUSYBOX_IMAGE, BUSYBOX_INDEX, Containerd},
    http_get, serial,
    vnetd::{Agent, add_pod, lab_spec, node_cidr},
    wait_for,
};

/// How long the agent may take to notice a vanished namespace and clean up.
const NOTICE: Duration = Duration::from_secs(10);

/// The conflist the runtime reads: containerd 1.6/1.7's libcni takes results up to 1.0.0.
fn conflist(node: &Node) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "vnetd",
        "plugins": [{
            "type": "vnetd-cni",
            "agentSocket": node.api_socket,
            "subnet": "apps",
        }],
    })
}

/// A containerd on `node` with the busybox image imported.
fn runtime(lab: &Lab, node: &Node) -> Result<Containerd> {
    let ctr = Containerd::start(node, lab.id(), &conflist(node))?;
    ctr.import_busybox()?;
    Ok(ctr)
}

fn endpoints(agent: &Agent) -> Result<Vec<Value>> {
    Ok(agent.status()?["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The agent's endpoint of container `cni_id` (go-cni's container id).
fn endpoint_of(agent: &Agent, cni_id: &str) -> Result<Value> {
    let all = endpoints(agent)?;
    all.iter()
        .find(|e| e["container_id"] == cni_id)
        .cloned()
        .with_context(|| format!("no endpoint of {cni_id} in {all:#?}"))
}

fn ip_of(endpoint: &Value) -> Result<Ipv4Addr> {
    endpoint["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no ip in {endpoint}"))
}

/// The `vnd*` links (pod host veths) in the node.
fn pod_veths(node: &Node) -> Result<Vec<String>> {
    let links = node.ip_json(["link", "show"])?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("vnd"))
        .map(str::to_owned)
        .collect())
}

/// Nothing of the container with address `ip` is left in the agent or the node: no endpoint,
/// no endpoint record, no `vnd*` veth, no route to the address.
fn assert_nothing_left(agent: &Agent, node: &Node, ip: Ipv4Addr) -> Result<()> {
    let eps = endpoints(agent)?;
    ensure!(eps.is_empty(), "endpoints left: {eps:#?}");
    let veths = pod_veths(node)?;
    ensure!(veths.is_empty(), "veths left in {}: {veths:?}", node.role);
    let records = node.state_dir.join("endpoints");
    let left: Vec<_> = std::fs::read_dir(&records)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "endpoint records left: {left:?}");
    let routes = node.ip(["-4", "route", "show"])?;
    ensure!(
        !routes.contains(&ip.to_string()),
        "a route to {ip} is left in {}: {routes}",
        node.role
    );
    Ok(())
}

/// A container serving HTTP (busybox httpd), attached by containerd, answers a pod on another
/// node: the request crosses node-2's agent, the fabric and node-1's agent.
#[test]
fn containerd_container_serves_a_pod_on_another_node() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let node2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    let agent1 = Agent::start(&node1, &lab_spec())?;
    let _agent2 = Agent::start(&node2, &lab_spec())?;
    let ctr = runtime(&lab, &node1)?;

    ctr.ctr_ok([
        "run",
        "-d",
        "--cni",
        BUSYBOX_IMAGE,
        "web",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])?;
    ctr.wait_task("web", Duration::from_secs(10))?;
    let ep = endpoint_of(&agent1, &ctr.cni_container_id("web"))?;
    let ip = ip_of(&ep)?;
    assert_eq!(ep["ifname"], "eth0", "{ep}");
    // The container sees the address the agent gave it.
    let addr = ctr.exec("web", "addr", &["ip", "-4", "addr", "show", "eth0"])?;
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(addr.contains(&format!("{ip}/32")), "{addr}");

    let client = add_pod(&lab, &node2, "client", Some("apps"), "")?;
    let mut got = None;
    let answered = wait_for(Duration::from_secs(10), || {
        got = http_get(
            &client,
            SocketAddr::from((ip, 80)),
            "/index.html",
            Duration::from_secs(2),
        )
        .ok();
        got.is_some()
    });
    assert!(answered, "no HTTP answer from the container at {ip}");
    let (code, body) = got.expect("answered");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(BUSYBOX_INDEX.trim()), "{body}");
    // And the other way: the container reaches the pod on node-2.
    let ping = ctr.exec(
        "web",
        "ping",
        &["ping", "-c", "1", "-W", "2", &client.ip.to_string()],
    )?;
    assert!(
        ping.status.success(),
        "the container does not reach {}: {}",
        client.ip,
        String::from_utf8_lossy(&ping.stdout)
    );
    Ok(())
}

/// A container group: the second container joins the first one's network namespace. They talk
/// on localhost, and the group is one endpoint with one address.
#[test]
fn containerd_group_shares_one_network_namespace() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, &lab_spec())?;
    let ctr = runtime(&lab, &node)?;

    ctr.ctr_ok([
        "run",
        "-d",
        "--cni",
        BUSYBOX_IMAGE,
        "grp-web",
        "httpd",
        "-f",
        "-p",
        "127.0.0.1:8080",
        "-h",
        "/www",
    ])?;
    let pid = ctr.wait_task("grp-web", Duration::from_secs(10))?;
    let netns = format!("network:/proc/{pid}/ns/net");
    ctr.ctr_ok([
        "run",
        "-d",
        "--with-ns",
        &netns,
        BUSYBOX_IMAGE,
        "grp-side",
        "sleep",
        "3600",
    ])?;
    ctr.wait_task("grp-side", Duration::from_secs(10))?;

    let eps = endpoints(&agent)?;
    assert_eq!(eps.len(), 1, "one endpoint for the group: {eps:#?}");
    let ip = ip_of(&eps[0])?;
    for id in ["grp-web", "grp-side"] {
        let out = ctr.exec(id, "addr", &["ip", "-4", "-o", "addr", "show"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let addrs: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(" lo "))
            .filter_map(|l| l.split_whitespace().nth(3))
            .collect();
        assert_eq!(addrs, [format!("{ip}/32")], "{id}: {text}");
    }
    // The side container reaches the web container on localhost only.
    let mut body = String::new();
    let mut last = String::new();
    let talked = wait_for(Duration::from_secs(10), || {
        ctr.exec(
            "grp-side",
            "get",
            // No `-T`: this busybox's wget crashes with a timeout set (1.35, Debian 12).
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
        )
        .is_ok_and(|o| {
            body = String::from_utf8_lossy(&o.stdout).into_owned();
            last = format!("{o:?}");
            o.status.success()
        })
    });
    assert!(
        talked,
        "the group's containers do not talk on localhost: {last}"
    );
    assert_eq!(body, BUSYBOX_INDEX);
    let pod = add_pod(&lab, &node, "outsider", Some("apps"), "")?;
    assert!(
        http_get(
            &pod,
            SocketAddr::from((ip, 8080)),
            "/",
            Duration::from_secs(1)
        )
        .is_err(),
        "the localhost-only server is reachable from outside the group"
    );
    assert_eq!(pod.ping_count(ip, 1)?, 1, "the group's address answers");

    ctr.remove("grp-side")?;
    ctr.remove("grp-web")?;
    // The group had no DEL either (ctr removes no network of a detached task): the namespace
    // went with its last process.
    let group = ctr.cni_container_id("grp-web");
    let gone = wait_for(NOTICE, || {
        endpoints(&agent).is_ok_and(|e| e.iter().all(|e| e["container_id"] != group))
    });
    assert!(
        gone,
        "the group's endpoint is left: {:#?}",
        endpoints(&agent)?
    );
    assert_eq!(endpoints(&agent)?.len(), 1, "the outsider pod stays");
    Ok(())
}

/// Deleting containers leaves nothing behind, with CNI DEL (`ctr run --rm` removes the network
/// when the task it waits for ends) and without (`ctr tasks kill/delete`: the runtime never
/// calls DEL, the namespace simply disappears; the agent's link watch cleans up). The node has
/// one address for pods: each container gets it only if the one before gave it back.
#[test]
fn containerd_deleted_containers_leave_nothing_behind() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let one = lab_spec().replace("\"10.0.2.10-10.0.2.49\"", "\"10.0.2.10-10.0.2.10\"");
    assert_ne!(one, lab_spec());
    let agent = Agent::start(&node, &one)?;
    let ctr = runtime(&lab, &node)?;
    let only: Ipv4Addr = "10.0.2.10".parse()?;

    // With DEL: ctr waits for the task, then removes its network and the container. The test
    // holds the container's namespace open, so that only the DEL can remove the endpoint (the
    // link watch would, once the namespace is gone).
    let mut run = ctr.ctr_spawn([
        "run",
        "--rm",
        "--cni",
        BUSYBOX_IMAGE,
        "with-del",
        "sleep",
        "3600",
    ])?;
    let pid = ctr.wait_task("with-del", Duration::from_secs(10))?;
    let held = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .context("holding the container's network namespace")?;
    let cni_id = ctr.cni_container_id("with-del");
    let ep = endpoint_of(&agent, &cni_id)?;
    assert_eq!(ip_of(&ep)?, only);
    ctr.ctr_ok(["tasks", "kill", "--signal", "SIGKILL", "with-del"])?;
    let status = run
        .wait_timeout(Duration::from_secs(30))?
        .context("ctr run did not return after its task was killed")?;
    // ctr exits with its task's status: 128 + SIGKILL.
    assert_eq!(
        status.code(),
        Some(137),
        "ctr run: {status}: {}",
        run.stderr()
    );
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("endpoint deleted") && l.contains(&cni_id)),
        "no CNI DEL of {cni_id} reached the agent:\n{log}"
    );
    assert!(!log.contains("vanished"), "{log}");
    assert_nothing_left(&agent, &node, only)?;
    drop(held);
    let listed = ctr.ctr_ok(["containers", "ls", "-q"])?;
    assert!(listed.trim().is_empty(), "`ctr run --rm` left {listed}");

    // Without DEL: the task is killed and deleted, the namespace goes with it.
    for round in 0..2 {
        let id = format!("no-del-{round}");
        ctr.ctr_ok(["run", "-d", "--cni", BUSYBOX_IMAGE, &id, "sleep", "3600"])?;
        ctr.wait_task(&id, Duration::from_secs(10))?;
        let ep = endpoint_of(&agent, &ctr.cni_container_id(&id))?;
        assert_eq!(ip_of(&ep)?, only, "the address came back");
        ctr.remove(&id)?;
        let gone = wait_for(NOTICE, || endpoints(&agent).is_ok_and(|e| e.is_empty()));
        assert!(
            gone,
            "the endpoint of a vanished namespace is still listed: {:#?}",
            endpoints(&agent)?
        );
        assert_nothing_left(&agent, &node, only)?;
        let vanished = agent.log().matches("vanished").count();
        assert_eq!(vanished, round + 1, "the link watch released it, no DEL");
    }
    Ok(())
}
