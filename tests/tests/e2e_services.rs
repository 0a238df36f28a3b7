//! End to end: Kubernetes Services keep working on vnetd nodes (issue 12). kube-proxy (iptables
//! mode) implements Services in each node's own stack; the test writes the rules kube-proxy
//! would (nat table: `KUBE-SERVICES` DNAT chains, `KUBE-NODEPORTS`, `KUBE-MARK-MASQ` and
//! `KUBE-POSTROUTING`'s MASQUERADE; filter table: `KUBE-FORWARD`, which drops conntrack
//! INVALID) into both lab nodes, with the spec's `networkProfile.serviceCidr` covering the
//! ClusterIPs. A pod's packet to a ClusterIP must reach that stack instead of leaving by the
//! uplink, and the replies of a DNATed connection must come back through it to be un-DNATed.
//!
//! What is asserted is what a user checks: the connection works, the client's peer is the
//! address it dialled (the ClusterIP or the node's NodePort: a TCP handshake answered from
//! the backend's own address would not complete), and the backend sees whom kube-proxy says it
//! sees (the client pod for a ClusterIP, the node for a NodePort or a hairpin, both
//! masqueraded). The nodes filter reverse paths strictly (`rp_filter=1`, as many distributions
//! ship), which the pods' /32 routes through their veths must satisfy. Needs root and
//! `iptables` (installed by `cargo xtask setup`).
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use vnetd_common::{ABI_VERSION, NodeConfig, maps};
use vnetd_lab::{
    EchoServer, Lab, Node, Ns, serial, tcp_roundtrip, udp_roundtrip,
    vnetd::{Agent, NsgRule, Pod, add_pod, lab_spec, node_cidr, with_nsg},
};

/// The cluster's service range (`networkProfile.serviceCidr`) and its DNS Service.
const SERVICE_CIDR: &str = "10.96.0.0/16";
const DNS_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A Service whose one endpoint is a pod on node-2.
const REMOTE_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// A Service whose one endpoint is a pod on node-1.
const LOCAL_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const REMOTE_NODE_PORT: u16 = 30080;
const LOCAL_NODE_PORT: u16 = 30081;
const DNS_PORT: u16 = 53;
const DNS_TARGET_PORT: u16 = 5353;
const TIMEOUT: Duration = Duration::from_secs(3);

/// One Service as kube-proxy programs it: its ClusterIP and port, its one endpoint, and a
/// NodePort if it has one.
struct Service {
    /// kube-proxy's chain suffix (a hash of the name there).
    chain: &'static str,
    protocol: &'static str,
    cluster_ip: Ipv4Addr,
    port: u16,
    endpoint: SocketAddrV4,
    node_port: Option<u16>,
}

/// The nat and filter rules kube-proxy 1.3x (iptables mode, `masqueradeAll: false`, no
/// `clusterCIDR`) writes for `services`, as `iptables-restore --noflush` input.
fn kube_proxy_rules(services: &[Service]) -> String {
    let mut nat = vec![
        "*nat".to_string(),
        ":KUBE-SERVICES - [0:0]".into(),
        ":KUBE-NODEPORTS - [0:0]".into(),
        ":KUBE-POSTROUTING - [0:0]".into(),
        ":KUBE-MARK-MASQ - [0:0]".into(),
    ];
    for s in services {
        nat.push(format!(":KUBE-SVC-{} - [0:0]", s.chain));
        nat.push(format!(":KUBE-SEP-{} - [0:0]", s.chain));
        if s.node_port.is_some() {
            nat.push(format!(":KUBE-EXT-{} - [0:0]", s.chain));
        }
    }
    nat.extend([
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".into(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into(),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".into(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    ]);
    for s in services {
        let (chain, proto, ip, port, ep) = (s.chain, s.protocol, s.cluster_ip, s.port, s.endpoint);
        nat.push(format!(
            "-A KUBE-SERVICES -d {ip}/32 -p {proto} -m {proto} --dport {port} -j KUBE-SVC-{chain}"
        ));
        nat.push(format!("-A KUBE-SVC-{chain} -j KUBE-SEP-{chain}"));
        // Hairpin: the endpoint reaching itself through its Service is masqueraded, or its
        // reply would go straight to itself and never be un-DNATed.
        nat.push(format!(
            "-A KUBE-SEP-{chain} -s {}/32 -j KUBE-MARK-MASQ",
            ep.ip()
        ));
        nat.push(format!(
            "-A KUBE-SEP-{chain} -p {proto} -m {proto} -j DNAT --to-destination {ep}"
        ));
        if let Some(node_port) = s.node_port {
            nat.push(format!(
                "-A KUBE-NODEPORTS -p {proto} -m {proto} --dport {node_port} -j KUBE-EXT-{chain}"
            ));
            // externalTrafficPolicy: Cluster: the backend may be on another node, so the
            // reply must come back through this one: masqueraded.
            nat.push(format!("-A KUBE-EXT-{chain} -j KUBE-MARK-MASQ"));
            nat.push(format!("-A KUBE-EXT-{chain} -j KUBE-SVC-{chain}"));
        }
    }
    nat.push(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into(),
    );
    nat.push("COMMIT".into());
    let filter = [
        "*filter",
        ":KUBE-FORWARD - [0:0]",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT",
        "-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
    ];
    let mut rules = nat.join("\n");
    rules.push('\n');
    rules.push_str(&filter.join("\n"));
    rules.push('\n');
    rules
}

/// Writes `rules` into `node`'s tables, as kube-proxy's `iptables-restore --noflush` does.
fn install_rules(node: &Node, rules: &str) -> Result<()> {
    let out = node.run_input(
        ["iptables-restore", "--noflush"],
        rules.as_bytes(),
        Duration::from_secs(10),
    )?;
    ensure!(
        out.status.success(),
        "iptables-restore in {}: {}\n{rules}",
        node.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The lab's spec with the cluster's service range.
fn spec_with_services() -> String {
    format!(
        "{}\nnetworkProfile:\n  serviceCidr: {SERVICE_CIDR}\n  dnsServiceIP: {DNS_SERVICE_IP}\n",
        lab_spec().trim_end()
    )
}

/// Two nodes running agents on [`spec_with_services`], strict reverse-path filtering, and
/// kube-proxy's rules on both; pods `client` and `backend-1` on node-1, `backend-2` on node-2,
/// each an endpoint of one Service (`backend-2` also of the cluster DNS).
struct Cluster {
    lab: Lab,
    node1: Node,
    agents: [Agent; 2],
    client: Pod,
    backend1: Pod,
    backend2: Pod,
}

fn cluster() -> Result<Cluster> {
    let lab = Lab::new()?;
    let node1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let node2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    for node in [&node1, &node2] {
        node.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
    }
    let spec = spec_with_services();
    let agents = [Agent::start(&node1, &spec)?, Agent::start(&node2, &spec)?];
    let client = add_pod(&lab, &node1, "client", Some("apps"), "")?;
    let backend1 = add_pod(&lab, &node1, "backend-1", Some("apps"), "")?;
    let backend2 = add_pod(&lab, &node2, "backend-2", Some("apps"), "")?;
    let services = [
        Service {
            chain: "REMOTE",
            protocol: "tcp",
            cluster_ip: REMOTE_SERVICE,
            port: SERVICE_PORT,
            endpoint: SocketAddrV4::new(backend2.ip, TARGET_PORT),
            node_port: Some(REMOTE_NODE_PORT),
        },
        Service {
            chain: "LOCAL",
            protocol: "tcp",
            cluster_ip: LOCAL_SERVICE,
            port: SERVICE_PORT,
            endpoint: SocketAddrV4::new(backend1.ip, TARGET_PORT),
            node_port: Some(LOCAL_NODE_PORT),
        },
        Service {
            chain: "DNS",
            protocol: "udp",
            cluster_ip: DNS_SERVICE_IP,
            port: DNS_PORT,
            endpoint: SocketAddrV4::new(backend2.ip, DNS_TARGET_PORT),
            node_port: None,
        },
    ];
    let rules = kube_proxy_rules(&services);
    for node in [&node1, &node2] {
        install_rules(node, &rules)?;
    }
    Ok(Cluster {
        lab,
        node1,
        agents,
        client,
        backend1,
        backend2,
    })
}

/// What one TCP connection through a Service showed.
#[derive(Debug)]
struct Connection {
    /// The client's peer: the address it dialled if the replies were translated back.
    peer: SocketAddrV4,
    /// Whom the backend saw.
    backend_saw: SocketAddrV4,
}

/// Connects from `client` to `dialled`, served by an echo server on [`TARGET_PORT`] in
/// `backend`, and echoes once.
fn connect_through(client: &Ns, dialled: SocketAddrV4, backend: &Ns) -> Result<Connection> {
    let what = || {
        format!(
            "tcp from netns {} to {dialled} (backend in netns {} on port {TARGET_PORT})",
            client.name, backend.name
        )
    };
    let server = EchoServer::tcp(backend, TARGET_PORT).with_context(what)?;
    let peer = (|| -> Result<SocketAddrV4> {
        let mut stream = client.tcp_connect(SocketAddr::V4(dialled), TIMEOUT)?;
        tcp_roundtrip(
            &mut stream,
            format!("through {dialled}").as_bytes(),
            TIMEOUT,
        )?;
        match stream.peer_addr()? {
            SocketAddr::V4(peer) => Ok(peer),
            other => anyhow::bail!("an IPv6 peer {other}"),
        }
    })()
    .with_context(what)?;
    let seen = server.seen();
    let first = seen
        .first()
        .with_context(|| format!("{}: the backend saw no connection", what()))?;
    Ok(Connection {
        peer,
        backend_saw: first.peer,
    })
}

/// A ClusterIP DNATed to a pod on another node: node-1's stack translates, the packets cross
/// the fabric with the pods' own addresses, and the replies come back through node-1's stack.
#[test]
fn a_cluster_ip_reaches_a_pod_on_another_node() -> Result<()> {
    let _serial = serial();
    let c = cluster()?;
    cluster_ip_reaches(&c, REMOTE_SERVICE, &c.backend2)?;
    assert!(
        c.agents[0].traffic("pod_to_service")? > 0,
        "node-1 counted its pod's packets to the Service"
    );
    Ok(())
}

/// A ClusterIP DNATed to a pod on the same node: the stack sends the translated packets into
/// the backend's veth, and the backend's replies must go back through the stack (not straight
/// into the client, which would see the backend's address).
#[test]
fn a_cluster_ip_reaches_a_pod_on_the_same_node() -> Result<()> {
    let _serial = serial();
    let c = cluster()?;
    cluster_ip_reaches(&c, LOCAL_SERVICE, &c.backend1)
}

/// The client pod connects to `service`'s ClusterIP and reaches `backend`: it sees the
/// ClusterIP as its peer, and the backend sees the client's own address (kube-proxy does not
/// masquerade a pod's ClusterIP traffic).
fn cluster_ip_reaches(c: &Cluster, service: Ipv4Addr, backend: &Pod) -> Result<()> {
    let dialled = SocketAddrV4::new(service, SERVICE_PORT);
    let conn = connect_through(&c.client, dialled, backend)?;
    assert_eq!(conn.peer, dialled, "the client's peer is the ClusterIP");
    assert_eq!(
        *conn.backend_saw.ip(),
        c.client.ip,
        "no masquerade for a pod's ClusterIP traffic: {conn:?}"
    );
    Ok(())
}

/// A Service's connection is decided by the client's outbound NSG rules as a direct one to the
/// backend would be: they see the backend's address and port (after kube-proxy's
/// translation), for a backend on the same node and on another node alike.
#[test]
fn the_clients_outbound_rules_decide_its_service_connections() -> Result<()> {
    let _serial = serial();
    let c = cluster()?;
    let deny_to = |name: &str, priority: u16, backend: &Pod| {
        NsgRule::deny_out(name, priority)
            .tcp()
            .to([format!("{}/32", backend.ip)])
            .ports([TARGET_PORT])
    };
    let apply = |rules: &[NsgRule], reloads: u64| -> Result<()> {
        let spec = with_nsg(&spec_with_services(), "client-out", &["apps"], rules);
        for agent in &c.agents {
            agent.write_spec(&spec)?;
            ensure!(
                agent.wait_for_status("reloads_ok", reloads),
                "reloaded: {}",
                agent.log()
            );
        }
        Ok(())
    };

    apply(&[deny_to("deny-backend-1", 200, &c.backend1)], 1)?;
    let local = SocketAddrV4::new(LOCAL_SERVICE, SERVICE_PORT);
    assert!(
        connect_through(&c.client, local, &c.backend1.ns).is_err(),
        "the client's rule refuses its Service connection to a backend on its node"
    );
    cluster_ip_reaches(&c, REMOTE_SERVICE, &c.backend2)
        .context("a backend the rule does not name is reached")?;

    apply(
        &[
            deny_to("deny-backend-1", 200, &c.backend1),
            deny_to("deny-backend-2", 210, &c.backend2),
        ],
        2,
    )?;
    let remote = SocketAddrV4::new(REMOTE_SERVICE, SERVICE_PORT);
    assert!(
        connect_through(&c.client, remote, &c.backend2.ns).is_err(),
        "the client's rule refuses its Service connection to a backend on another node"
    );
    assert!(
        c.agents[0].drops("nsg_denied")? > 0,
        "counted where the client runs"
    );
    Ok(())
}

/// The cluster DNS over UDP: the answer comes from the DNS Service's ClusterIP (a resolver
/// drops an answer from any other address), not from the backend pod.
#[test]
fn the_cluster_dns_answers_from_its_cluster_ip() -> Result<()> {
    let _serial = serial();
    let c = cluster()?;
    let server = EchoServer::udp(&c.backend2, DNS_TARGET_PORT)?;
    let dns = SocketAddrV4::new(DNS_SERVICE_IP, DNS_PORT);
    let (_, reply_from, _) = udp_roundtrip(&c.client, SocketAddr::V4(dns), TIMEOUT)
        .with_context(|| format!("a query to the cluster DNS {dns}"))?;
    assert_eq!(reply_from, dns, "the answer comes from the DNS ClusterIP");
    assert_eq!(
        server.seen().first().map(|s| *s.peer.ip()),
        Some(c.client.ip)
    );
    Ok(())
}

/// A NodePort of node-1 reached from the internet, its backend on node-2: node-1 DNATs and
/// masquerades, so the backend sees node-1 and answers through it.
#[test]
fn a_node_port_reaches_a_pod_on_another_node() -> Result<()> {
    let _serial = serial();
    let c = cluster()?;
    node_port_reaches(&c, REMOTE_NODE_PORT, &c.backend2)
}

/// A NodePort of node-1 reached from the internet, its backend on node-1 itself.
#[test]
fn a_node_port_reaches_a_pod_on_the_same_node() -> Result<()> {
    let _serial = serial();
    let c = cluster()?;
    node_port_reaches(&c, LOCAL_NODE_PORT, &c.backend1)
}

/// The internet host connects to node-1's NodePort `port` and reaches `backend`: it sees the
/// NodePort as its peer, and the backend sees node-1 (kube-proxy masquerades NodePort traffic).
fn node_port_reaches(c: &Cluster, port: u16, backend: &Pod) -> Result<()> {
    let dialled = SocketAddrV4::new(c.node1.ip, port);
    let conn = connect_through(c.lab.internet(), dialled, backend)?;
    assert_eq!(
        conn.peer, dialled,
        "the client's peer is the node's NodePort"
    );
    assert_eq!(
        *conn.backend_saw.ip(),
        c.node1.ip,
        "masqueraded to node-1: {conn:?}"
    );
    Ok(())
}

/// A pod reaching itself through its own Service (hairpin): kube-proxy masquerades it, so the
/// pod's answer to itself goes back through the stack; both ends are the same pod.
#[test]
fn a_pod_reaches_itself_through_its_own_service() -> Result<()> {
    let _serial = serial();
    let c = cluster()?;
    let dialled = SocketAddrV4::new(LOCAL_SERVICE, SERVICE_PORT);
    let conn = connect_through(&c.backend1, dialled, &c.backend1)?;
    assert_eq!(conn.peer, dialled, "the client's peer is the ClusterIP");
    assert_eq!(
        *conn.backend_saw.ip(),
        c.node1.ip,
        "masqueraded to the node (the pod's veth has no address of its own): {conn:?}"
    );
    Ok(())
}

/// kube-proxy needs the node to forward (Kubernetes requires `net.ipv4.ip_forward=1`); that is
/// the node's setting, so an agent with a service range on a node that does not forward says
/// so, naming the interfaces, rather than changing it.
#[test]
fn an_agent_warns_when_the_node_does_not_forward() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    node.sysctl("net.ipv4.ip_forward", "0")?;
    let agent = Agent::start(&node, &spec_with_services())?;
    let warned = vnetd_lab::wait_for(Duration::from_secs(5), || {
        agent.log().contains(
            "net.ipv4.conf.eth0.forwarding, net.ipv4.conf.default.forwarding = 0: the node's stack will not forward Service traffic",
        )
    });
    assert!(warned, "{}", agent.log());
    Ok(())
}

/// The node's `NODE` entry, read from its pin as the programs see it.
fn node_entry(node: &Node) -> Result<NodeConfig> {
    let path = node
        .bpffs_dir
        .join(format!("abi-v{ABI_VERSION}"))
        .join("maps")
        .join(maps::NODE);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let array: aya::maps::Array<_, NodeConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data))?;
    Ok(array.get(&0, 0)?)
}

/// The service range reaches the programs (`NODE`) at start, and a spec edit that adds, moves
/// or removes it is applied by the running agent.
#[test]
fn the_service_range_follows_the_spec() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, &spec_with_services())?;
    let range = |n: &NodeConfig| (n.service_net, n.service_mask);
    assert_eq!(
        range(&node_entry(&node)?),
        ([10, 96, 0, 0], [255, 255, 0, 0])
    );

    let moved = spec_with_services().replace(
        &format!("serviceCidr: {SERVICE_CIDR}"),
        "serviceCidr: 10.100.0.0/20",
    );
    let moved = moved.replace(
        &format!("dnsServiceIP: {DNS_SERVICE_IP}"),
        "dnsServiceIP: 10.100.0.10",
    );
    agent.write_spec(&moved)?;
    assert!(agent.wait_for_status("reloads_ok", 1), "{}", agent.log());
    assert_eq!(
        range(&node_entry(&node)?),
        ([10, 100, 0, 0], [255, 255, 240, 0])
    );

    agent.write_spec(&lab_spec())?;
    assert!(agent.wait_for_status("reloads_ok", 2), "{}", agent.log());
    let entry = node_entry(&node)?;
    assert_eq!(range(&entry), ([0; 4], [0; 4]), "no service range");
    assert_eq!(
        entry.primary_ip,
        [10, 0, 0, 4],
        "the rest of the entry stays"
    );
    Ok(())
}
