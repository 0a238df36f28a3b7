//! `cargo xtask demo`: a lab of two nodes, their agents, pods created through the CNI plugin,
//! and the dataplane shown working with real traffic. Everything lives in the lab's
//! namespaces and is torn down on exit or Ctrl-C.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use vnetd_lab::{
    EchoReport, INTERNET_HOST_IP, Lab, LogMode, Ns, tcp_echo, tcp_echo_ok, udp_echo, udp_ok,
    vnetd::{
        Agent, NsgRule, Pod, add_pod, bin, lab_spec, nsg_rule_hits_in_metrics, ping_from_forged,
        with_nsg, with_public_group,
    },
};

/// The demo's Public container group: `web`, its public address and the port it exposes
/// (added to `examples/lab.yaml`'s groups for the demo).
const PUBLIC_GROUP: &str = "web";
const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const PUBLIC_PORT: u16 = 8080;

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

    step(&format!(
        "agents: `vnetd run --spec examples/lab.yaml --node node-N` in each node's namespace \
         (plus a Public group `{PUBLIC_GROUP}`: {PUBLIC_IP}, TCP {PUBLIC_PORT})"
    ));
    let spec = with_public_group(&lab_spec(), PUBLIC_GROUP, PUBLIC_IP, PUBLIC_PORT);
    let mut agent1 = Agent::start(&n1, &spec)?;
    let _agent2 = Agent::start(&n2, &spec)?;

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

    step("to the internet: SNAT to node-1's address (the edge has no route back to pods)");
    show(
        "   pod-a -> internet host, TCP",
        tcp_echo(
            &a,
            lab.internet(),
            INTERNET_HOST_IP,
            7003,
            Duration::from_secs(3),
        )
        .map(|r| left_as(a.ip, &r)),
    );
    show(
        "   pod-a -> internet host, UDP",
        udp_echo(
            &a,
            lab.internet(),
            INTERNET_HOST_IP,
            7004,
            Duration::from_secs(3),
        )
        .map(|r| left_as(a.ip, &r)),
    );
    show_ping(&a, INTERNET_HOST_IP)?;

    step(&format!(
        "a Public container group: `{PUBLIC_GROUP}` behind {PUBLIC_IP} (the edge routes it to node-1)"
    ));
    let web = add_pod(
        &lab,
        &n1,
        PUBLIC_GROUP,
        None,
        &format!("VNETD_CONTAINER_GROUP={PUBLIC_GROUP}"),
    )?;
    lab.host_public_ip(&n1, PUBLIC_IP)?;
    println!(
        "   {PUBLIC_GROUP} has the private address {} in subnet apps",
        web.ip
    );
    show(
        &format!("   internet host -> {PUBLIC_IP}:{PUBLIC_PORT}"),
        tcp_echo(
            lab.internet(),
            &web,
            PUBLIC_IP,
            PUBLIC_PORT,
            Duration::from_secs(3),
        )
        .map(|r| {
            let at = r.server_local.map_or("?".to_string(), |a| a.to_string());
            format!("served at {at}, which saw the client {}", r.server_peer)
        }),
    );
    show(
        &format!(
            "   internet host -> {PUBLIC_IP}:{} (not exposed)",
            PUBLIC_PORT + 1
        ),
        closed_port(
            lab.internet(),
            SocketAddr::from((PUBLIC_IP, PUBLIC_PORT + 1)),
            "public_port_closed",
        ),
    );
    show(
        &format!("   {PUBLIC_GROUP} -> internet host, TCP"),
        tcp_echo(
            &web,
            lab.internet(),
            INTERNET_HOST_IP,
            7005,
            Duration::from_secs(3),
        )
        .map(|r| left_as(web.ip, &r)),
    );

    step(
        "NSGs, applied live: a reload gives subnet apps `apps-nsg` (deny-smtp-out: TCP 25 out; \
         deny-from-pod-c: anything in from pod-c)",
    );
    let nsg_spec = with_nsg(
        &spec,
        "apps-nsg",
        &["apps"],
        &[
            NsgRule::deny_out("deny-smtp-out", 100).tcp().ports(["25"]),
            NsgRule::deny_in("deny-from-pod-c", 110).from([format!("{}/32", c.ip)]),
        ],
    );
    // `vnetd flows --follow` on node-1 while the NSG traffic runs: its records are shown after.
    let mut flows = Command::new(bin("vnetd"))
        .args(["flows", "--follow", "--api-socket"])
        .arg(&n1.api_socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("vnetd flows --follow")?;
    agent1.write_spec(&nsg_spec)?;
    _agent2.write_spec(&nsg_spec)?;
    for agent in [&agent1, &_agent2] {
        anyhow::ensure!(
            agent.wait_for_status("reloads_ok", 1),
            "the NSG reload was applied: {}",
            agent.log()
        );
    }
    let _smtp = vnetd_lab::EchoServer::tcp(lab.internet(), 25)?;
    show(
        "   pod-a -> internet host, TCP 25",
        closed_port(
            &a,
            SocketAddr::from((INTERNET_HOST_IP, 25)),
            "deny-smtp-out",
        ),
    );
    show(
        "   pod-a -> internet host, TCP 7003",
        tcp_echo(
            &a,
            lab.internet(),
            INTERNET_HOST_IP,
            7003,
            Duration::from_secs(3),
        )
        .map(|r| format!("allowed by AllowInternetOutBound, {}", left_as(a.ip, &r))),
    );
    show_ping(&c, a.ip)?;
    show_ping(&b, a.ip)?;
    // The metrics are a snapshot the agent refreshes every second.
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = agent1.metrics()?;
    for rule in [
        "deny-smtp-out",
        "deny-from-pod-c",
        "AllowInternetOutBound",
        "AllowVnetInBound",
        "AllowVnetOutBound",
    ] {
        let hits = nsg_rule_hits_in_metrics(&metrics, "apps-nsg", rule).unwrap_or(0);
        println!("   node-1 apps-nsg {rule:<22} {hits} hits");
    }
    let _ = flows.kill();
    let records = flows.wait_with_output().context("vnetd flows --follow")?;
    println!(
        "   `vnetd flows --follow` on node-1 meanwhile (NSG flow-log v2 tuples and the rule; \
         repeats folded):"
    );
    let records = String::from_utf8_lossy(&records.stdout);
    let mut folded: Vec<(&str, usize)> = Vec::new();
    for line in records.lines() {
        // The same tuple again (each request of a denied ping) differs only in its time.
        let tuple = |l: &str| l.split_once(',').map(|(_, rest)| rest.to_string());
        match folded.last_mut() {
            Some((last, n)) if tuple(last) == tuple(line) => *n += 1,
            _ => folded.push((line, 1)),
        }
    }
    for (line, n) in folded {
        let times = if n > 1 {
            format!("  (x{n})")
        } else {
            String::new()
        };
        println!("     {line}{times}");
    }

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
    drop((a, b, c, api, web));
    lab.teardown()?;
    println!("   done: no namespace, link, pin or process of the demo is left");
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}

/// Prints what a traffic check showed, or that it failed (the demo goes on: it shows, the
/// tests judge).
fn show(what: &str, outcome: Result<String>) {
    match outcome {
        Ok(shown) => println!("{what}: {shown}"),
        Err(e) => println!("{what}: FAILED: {e:#}"),
    }
}

/// "<pod ip>:<port> left as <what the server saw>" (a UDP client is bound to 0.0.0.0: its
/// address is the pod's).
fn left_as(pod_ip: Ipv4Addr, r: &EchoReport) -> String {
    format!(
        "{}:{} left as {}",
        pod_ip,
        r.client_local.port(),
        r.server_peer
    )
}

/// A connection attempt to a port that must not answer: Ok if it timed out (dropped, counted
/// as `reason`).
fn closed_port(from: &Ns, to: SocketAddr, reason: &str) -> Result<String> {
    match from.tcp_connect(to, Duration::from_secs(1)) {
        Ok(_) => anyhow::bail!("it answered"),
        Err(e) => {
            let timed_out = e
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::TimedOut);
            anyhow::ensure!(timed_out, "refused with an answer, not dropped: {e:#}");
            Ok(format!("no answer (dropped and counted: {reason})"))
        }
    }
}

fn show_ping(from: &Pod, to: Ipv4Addr) -> Result<()> {
    let answered = from.ping_count(to, 3)?;
    println!("   {} -> {to}: {answered}/3 answered", from.role);
    Ok(())
}
