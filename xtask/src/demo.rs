//! `cargo xtask demo`: a lab of two nodes, their agents, pods created through the CNI plugin,
//! and the dataplane shown working with real traffic. Everything lives in the lab's
//! namespaces and is torn down on exit or Ctrl-C.
use std::{net::Ipv4Addr, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use vnetd_lab::{
    Lab, LogMode, tcp_echo_ok, udp_ok,
    vnetd::{Agent, Pod, add_pod, bin, lab_spec, ping_from_forged},
};

pub fn run(_root: &Path, wait: bool) -> Result<()> {
    vnetd_lab::ensure_bpffs()?;
    // Ctrl-C: tear the lab down (processes, namespaces, pins) and exit.
    vnetd_lab::cleanup_on_signal()?;
    let lab = Lab::new()?;
    step(&format!(
        "lab {}: fabric bridge, edge router (10.0.0.1), internet host",
        lab.id()
    ));
    let n1 = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let n2 = lab.add_node("node-2", "10.0.0.5/24".parse()?)?;
    let nva = lab.add_appliance("nva", "10.0.0.100/24".parse()?)?;
    println!(
        "   node-1 10.0.0.4, node-2 10.0.0.5, appliance nva 10.0.0.100 (namespaces {}*)",
        lab.prefix()
    );

    step("agents: `vnetd run --spec examples/lab.yaml --node node-N` in each node's namespace");
    let mut agent1 = Agent::start(&n1, &lab_spec())?;
    let _agent2 = Agent::start(&n2, &lab_spec())?;

    step("pods through the CNI plugin (vnetd-cni ADD, subnet apps; group `api` in subnet aci)");
    let a = add_pod(
        &lab,
        &n1,
        "pod-a",
        Some("apps"),
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-a",
    )?;
    let b = add_pod(&lab, &n1, "pod-b", Some("apps"), "")?;
    let c = add_pod(&lab, &n2, "pod-c", Some("apps"), "")?;
    let api = add_pod(&lab, &n1, "api", None, "VNETD_CONTAINER_GROUP=api")?;
    for (pod, node) in [
        (&a, "node-1"),
        (&b, "node-1"),
        (&c, "node-2"),
        (&api, "node-1 (container group api)"),
    ] {
        println!("   {:<6} {:<15} on {node}", pod.role, pod.ip);
    }

    step("pod to pod on one node (veth to veth with bpf_redirect_peer)");
    show_ping(&a, b.ip)?;
    tcp_echo_ok(&a, &b, b.ip, 7001)?;
    println!("   TCP echo pod-a -> pod-b: ok");
    step("pod to pod across nodes, no overlay (node-2 answers ARP for its pod on the fabric)");
    show_ping(&a, c.ip)?;
    udp_ok(&c, &a, a.ip, 7002)?;
    println!("   UDP echo pod-c -> pod-a: ok");
    step("pod to the container group `api` at its declared address");
    show_ping(&c, api.ip)?;
    step("pod to its node, node to its pod");
    show_ping(&a, n1.ip)?;
    println!("   node-1 -> pod-b: {}/2 answered", n1.ping_count(b.ip, 2)?);

    step("user-defined routes of subnet apps: 192.0.2.0/24 via the appliance, 10.99.0.0/16 None");
    let capture = nva.capture("eth0", "icmp")?;
    let _ = a.ping_count("192.0.2.1".parse()?, 1)?;
    let seen = capture.wait_for("> 192.0.2.1", Duration::from_secs(2));
    println!("   the appliance saw pod-a's packet to 192.0.2.1: {seen}");
    println!(
        "   pod-a -> 10.99.0.1: {}/2 answered (route None: dropped and counted)",
        a.ping_count("10.99.0.1".parse()?, 2)?
    );

    step("anti-spoofing: pod-b sends from another address");
    let answered = ping_from_forged(&b, "10.0.2.77".parse()?, a.ip)?;
    println!("   pings from a forged source: {answered}/2 answered (dropped and counted)");

    step("the agent dies (SIGKILL): the dataplane keeps forwarding from its pins");
    agent1.kill()?;
    show_ping(&a, c.ip)?;
    agent1.spawn(LogMode::Files)?;
    println!(
        "   restarted agent adopted {} endpoints",
        agent1.status()?["endpoints"].as_array().map_or(0, Vec::len)
    );

    step("vnetd status (node-1)");
    let status = Command::new(bin("vnetd"))
        .args(["status", "--api-socket"])
        .arg(&n1.api_socket)
        .output()
        .context("vnetd status")?;
    print!("{}", String::from_utf8_lossy(&status.stdout));

    if wait {
        step(&format!(
            "the lab stays up: try `nsenter --net=/run/netns/{} ping {}`; Ctrl-C tears it down",
            a.name, c.ip
        ));
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    step("tearing down");
    drop((a, b, c, api));
    lab.teardown()?;
    println!("   done: no namespace, link, pin or process of the demo is left");
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn show_ping(from: &Pod, to: Ipv4Addr) -> Result<()> {
    let answered = from.ping_count(to, 3)?;
    println!("   {} -> {to}: {answered}/3 answered", from.role);
    Ok(())
}
