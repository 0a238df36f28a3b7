//! The lab every scenario of the bench shares: vnetd's node with its agent and two pods, the
//! reference's node with two bridge pods, and, as the selection asks, the far pods across
//! nodes, the NSG runs' client pods and the check of the path to the internet.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use serde_json::json;
use vnetd_lab::{
    INTERNET_HOST_IP, Lab, Node, Ns, tcp_echo_ok,
    vnetd::{Agent, Pod, add_pod, lab_spec},
};

use super::{
    DATAPLANES, Dp, Durations, Pair, Results, Scenario, Selection, cni, internet,
    measure::{forward_to_cni_packets, masquerade_packets},
    nsg, step,
};

/// What the scenarios share: the selection and its repetitions, the lab, its nodes, the agent,
/// the pods and the client/server pairs of each scenario. Its pods live as long as it does.
pub(super) struct Testbed {
    pub(super) sel: Selection,
    pub(super) reps: u32,
    pub(super) durations: Durations,
    /// Short runs (`--quick`).
    pub(super) quick: bool,
    /// vnetd's node (`node-1`), its agent and its two pods.
    pub(super) node: Node,
    pub(super) agent: Agent,
    pub(super) va: Pod,
    pub(super) vb: Pod,
    /// The reference's node (`ref`) and its two pods.
    pub(super) rnode: Node,
    pub(super) ra: Ns,
    pub(super) ra_ip: Ipv4Addr,
    pub(super) rb: Ns,
    pub(super) rb_ip: Ipv4Addr,
    /// The reference node's `bridge-nf-call-iptables`, and its iptables rules.
    pub(super) nf_call: String,
    pub(super) ref_rules: usize,
    pub(super) pod_to_pod: [Pair; 2],
    /// Empty unless `cross_node` is selected.
    pub(super) cross_node: Vec<Pair>,
    _far: Option<FarPods>,
    pub(super) pod_to_internet: [Pair; 2],
    pub(super) base_spec: String,
    /// Per rule count of [`nsg::RULE_COUNTS`], empty unless `nsg` is selected.
    pub(super) nsg_pairs: Vec<[Pair; 2]>,
    pub(super) nsg_pods: Vec<Pod>,
    /// The address the internet server sees per dataplane, or why it could not be checked.
    pub(super) internet_sources: serde_json::Map<String, serde_json::Value>,
    /// Last: fields drop in order, and on an early return the agents and pods above go before
    /// the lab that holds their namespaces (as they did when they were `run`'s locals).
    pub(super) lab: Lab,
}

impl Testbed {
    /// Builds the lab; a dataplane whose path to the internet does not work goes to
    /// `results.unavailable`.
    pub(super) fn set_up(
        sel: Selection,
        reps: u32,
        durations: Durations,
        quick: bool,
        results: &mut Results,
    ) -> Result<Testbed> {
        vnetd_lab::ensure_bpffs()?;
        vnetd_lab::cleanup_on_signal()?;
        let lab = Lab::new()?;
        step(&format!("lab {} (namespaces {}*)", lab.id(), lab.prefix()));

        // vnetd: the agent on node-1 (the name examples/lab.yaml declares), two pods in `apps`.
        let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
        let agent = Agent::start(&node, &lab_spec()).context("starting the vnetd agent")?;
        let va = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
        let vb = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
        println!(
            "   vnetd:           node-1, pods {} -> {} (vnetd-cni, TC + bpf_redirect_peer)",
            va.ip, vb.ip
        );

        // The reference: bridge + host-local + firewall(iptables) on node `ref`.
        let rnode = lab.add_node("ref", "10.0.0.9/24".parse()?)?;
        let (ra, ra_ip) = ref_pod(&lab, &rnode, "ref-a")?;
        let (rb, rb_ip) = ref_pod(&lab, &rnode, "ref-b")?;
        let nf_call = rnode
            .sysctl_get("net.bridge.bridge-nf-call-iptables")
            .unwrap_or_else(|_| "absent (br_netfilter not loaded)".into());
        let ref_rules = rnode
            .run_ok(["iptables-save"])
            .map(|s| s.lines().filter(|l| l.starts_with("-A")).count())
            .unwrap_or(0);
        println!(
            "   bridge+iptables: node ref, pods {ra_ip} -> {rb_ip} (bridge cni0 + firewall), \
             bridge-nf-call-iptables={nf_call}, {ref_rules} iptables rules in the node"
        );

        let pod_to_pod = [
            Pair {
                client: va.ns.ns.clone(),
                server: vb.ns.ns.clone(),
                server_ip: vb.ip,
                port: 0,
            },
            Pair {
                client: ra.clone(),
                server: rb.clone(),
                server_ip: rb_ip,
                port: 0,
            },
        ];
        for (dp, pair) in DATAPLANES.into_iter().zip(&pod_to_pod) {
            tcp_echo_ok(&pair.client, &pair.server, pair.server_ip, 7000)
                .with_context(|| format!("{} pod to pod does not work", dp.key()))?;
        }
        // Across nodes: a pod on a second node of each dataplane, from the same client pods.
        let (cross_node, _far) = if sel.has("cross_node") {
            let far = cross_node_pods(&lab, &rnode)?;
            let pairs = [
                Pair {
                    client: va.ns.ns.clone(),
                    server: far.vnetd.ns.ns.clone(),
                    server_ip: far.vnetd.ip,
                    port: 0,
                },
                Pair {
                    client: ra.clone(),
                    server: far.reference.clone(),
                    server_ip: far.reference_ip,
                    port: 0,
                },
            ];
            for (dp, pair) in DATAPLANES.into_iter().zip(&pairs) {
                tcp_echo_ok(&pair.client, &pair.server, pair.server_ip, 7000).with_context(
                    || format!("{} pod to pod across nodes does not work", dp.key()),
                )?;
            }
            println!(
                "   across nodes:    vnetd {} -> {} (node-2), reference {ra_ip} -> {} (node ref-2, \
                 static routes between the nodes' pod subnets, no masquerade between them)",
                va.ip, far.vnetd.ip, far.reference_ip
            );
            (pairs.into_iter().collect::<Vec<_>>(), Some(far))
        } else {
            (Vec::new(), None)
        };
        // To the internet host from the same client pods.
        let pod_to_internet = pod_to_pod.each_ref().map(|p| Pair {
            client: p.client.clone(),
            server: lab.internet().clone(),
            server_ip: INTERNET_HOST_IP,
            port: 0,
        });
        // With an NSG: a client pod per rule count on each side (each run's connections hold
        // its ephemeral ports in TIME_WAIT for 60 s; see measure::CONNECT_MAX), to the same
        // server pods, on the port the NSG's last rule allows.
        let base_spec = lab_spec();
        let mut nsg_pairs: Vec<[Pair; 2]> = Vec::new();
        let mut nsg_pods = Vec::new();
        if sel.has("nsg") {
            for n in nsg::RULE_COUNTS {
                let vc = add_pod(&lab, &node, &format!("nsg-c{n}"), Some("apps"), "")?;
                let (rc, _) = ref_pod(&lab, &rnode, &format!("ref-nsg-c{n}"))?;
                for c in [&vc.ns.ns, &rc] {
                    // Room for three repetitions of CONNECT_MAX connections in TIME_WAIT.
                    c.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
                }
                nsg_pairs.push([
                    Pair {
                        client: vc.ns.ns.clone(),
                        server: vb.ns.ns.clone(),
                        server_ip: vb.ip,
                        port: nsg::PORT,
                    },
                    Pair {
                        client: rc,
                        server: rb.clone(),
                        server_ip: rb_ip,
                        port: nsg::PORT,
                    },
                ]);
                nsg_pods.push(vc);
            }
            println!(
                "   NSG runs: a client pod per rule count on each node ({} on vnetd's) to the same \
                 server pods, port {}; vnetd: an inbound NSG on subnet apps (spec reload), \
                 reference: iptables chain {} jumped to from the top of FORWARD",
                nsg_pods
                    .iter()
                    .map(|p| p.ip.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                nsg::PORT,
                nsg::CHAIN,
            );
        }
        let mut internet_sources = serde_json::Map::new();
        for ((dp, pair), node_ip) in DATAPLANES
            .into_iter()
            .zip(&pod_to_internet)
            .zip([node.ip, rnode.ip])
            .filter(|_| sel.has("pod_to_internet"))
        {
            match internet::check_translated(pair, node_ip) {
                Ok(seen) => {
                    println!(
                        "   {:<16} pod {} -> internet {INTERNET_HOST_IP}: the server sees {seen}",
                        format!("{}:", dp.key()),
                        pair.client.name
                    );
                    internet_sources.insert(dp.key().into(), json!(seen.to_string()));
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    println!("   {}: pod to internet NOT MEASURED: {why}", dp.key());
                    internet_sources.insert(dp.key().into(), json!({ "error": why }));
                    results.unavailable.push((Scenario::PodToInternet, dp, why));
                }
            }
        }
        Ok(Testbed {
            sel,
            reps,
            durations,
            quick,
            node,
            agent,
            va,
            vb,
            rnode,
            ra,
            ra_ip,
            rb,
            rb_ip,
            nf_call,
            ref_rules,
            pod_to_pod,
            cross_node,
            _far,
            pod_to_internet,
            base_spec,
            nsg_pairs,
            nsg_pods,
            internet_sources,
            lab,
        })
    }

    /// The client and server of `dp` in `scenario`.
    pub(super) fn pair(&self, scenario: Scenario, dp: Dp) -> &Pair {
        match scenario {
            Scenario::PodToPod => &self.pod_to_pod[dp as usize],
            Scenario::CrossNode => &self.cross_node[dp as usize],
            Scenario::PodToInternet => &self.pod_to_internet[dp as usize],
            Scenario::NsgPodToPod(n) => {
                let i = nsg::RULE_COUNTS
                    .iter()
                    .position(|&r| r == n)
                    .expect("a measured rule count");
                &self.nsg_pairs[i][dp as usize]
            }
        }
    }

    // Proof that each run took the measured path: vnetd's path counters, and the reference
    // node's iptables counters (pod to pod: the packets its FORWARD chain sent to the firewall
    // plugin's chain, which bridged frames reach only through bridge netfilter; to the
    // internet: its MASQUERADE rules). A run during which one of its dataplane's counters did
    // not move measured something else: it is marked invalid and left out.
    pub(super) fn evidence(&self, scenario: Scenario, dp: Dp) -> Result<Vec<u64>> {
        Ok(match (scenario, dp) {
            (Scenario::PodToPod, Dp::Vnetd) => vec![self.agent.traffic("pod_to_pod")?],
            (Scenario::PodToPod, Dp::Reference) => vec![forward_to_cni_packets(&self.rnode)?],
            (Scenario::CrossNode, Dp::Vnetd) => vec![self.agent.traffic("pod_to_vnet")?],
            (Scenario::CrossNode, Dp::Reference) => vec![forward_to_cni_packets(&self.rnode)?],
            (Scenario::PodToInternet, Dp::Vnetd) => vec![
                self.agent.traffic("pod_to_internet")?,
                self.agent.traffic("internet_to_pod")?,
            ],
            (Scenario::PodToInternet, Dp::Reference) => vec![masquerade_packets(&self.rnode)?],
            (Scenario::NsgPodToPod(_), Dp::Vnetd) => vec![self.agent.traffic("pod_to_pod")?],
            (Scenario::NsgPodToPod(_), Dp::Reference) => vec![nsg::allow_packets(&self.rnode)?],
        })
    }
}

/// The far ends of the cross-node scenario, kept alive for the run.
struct FarPods {
    _node: Node,
    _agent: Agent,
    vnetd: vnetd_lab::vnetd::Pod,
    _reference_node: Node,
    reference: Ns,
    reference_ip: Ipv4Addr,
}

/// vnetd's node-2 (its agent, a pod in `apps`) and the reference's node `ref-2` (a bridge pod
/// in [`cni::REF_SUBNET_2`]), each node with a static route to the other reference node's pod
/// subnet and no masquerade inside the reference's pod range (kubenet's layout).
fn cross_node_pods(lab: &Lab, rnode: &Node) -> Result<FarPods> {
    let node = lab.add_node("node-2", "10.0.0.5/24".parse()?)?;
    let agent = Agent::start(&node, &lab_spec()).context("starting the vnetd agent on node-2")?;
    let vnetd = add_pod(lab, &node, "pod-far", Some("apps"), "")?;
    let rnode2 = lab.add_node("ref-2", "10.0.0.10/24".parse()?)?;
    let (reference, reference_ip) = ref_pod(lab, &rnode2, "ref-far")?;
    for (node, to, via) in [
        (&rnode.ns, cni::REF_SUBNET_2, rnode2.ip),
        (&rnode2.ns, cni::REF_SUBNET, rnode.ip),
    ] {
        node.run_ok(["ip", "route", "replace", to, "via", &via.to_string()])?;
        node.run_ok([
            "iptables",
            "-w",
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "-s",
            cni::REF_CLUSTER_RANGE,
            "-d",
            cni::REF_CLUSTER_RANGE,
            "-j",
            "RETURN",
        ])?;
    }
    Ok(FarPods {
        _node: node,
        _agent: agent,
        vnetd,
        _reference_node: rnode2,
        reference,
        reference_ip,
    })
}

/// A pod namespace on the reference node, attached by running the conflist's chain as a
/// runtime does. Returns the namespace and the pod's address.
fn ref_pod(lab: &Lab, node: &Node, name: &str) -> Result<(Ns, Ipv4Addr)> {
    let pod = lab.add_pod_netns(name)?;
    let result = cni::ref_chain(node, &pod, name, "ADD", None)?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in the reference CNI result {result}"))?;
    Ok((pod.ns, ip))
}
