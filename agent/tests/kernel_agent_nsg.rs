//! The agent writes the NSG classifiers and container groups' exposed ports into a real, pinned
//! dataplane and points every endpoint at them: at start, at CNI ADD, across a reload that
//! changes a rule (new ids, the old classifier deleted), a reload whose NSG write fails (refused,
//! nothing changed) and a restart (ids kept). Needs root (CAP_BPF, CAP_NET_ADMIN) and a bpffs
//! on /sys/fs/bpf.
//!
//! The agent runs on a thread that unshares a network namespace of its own as its "node" (its
//! uplink is a veth there; the namespace goes with the thread). The pods' namespaces are
//! `ip netns add vnkn<pid>-<tag>`, the pins `/sys/fs/bpf/vnkn<pid>`, the state
//! `/tmp/vnkn<pid>`: all removed by guards, also on failure.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use aya::maps::{HashMap, LpmTrie, Map, MapData, PerCpuHashMap};
use vnetd::{
    api::proto::{AddRequest, Attachment, Request, Response},
    daemon::Agent,
    dataplane::{self, PinLayout},
    plan::NodePlan,
    spec::parse_str,
};
use vnetd_common::{
    ENDPOINT_EXPOSED_PORTS_ONLY, Endpoint, GroupPortKey, NsgAddrKey, NsgRule, NsgRuleKey,
    RuleBitmap, maps, programs,
};

const SPEC: &str = r#"
apiVersion: vnetd/v1
virtualNetwork:
  name: vnet
  addressSpace: [10.0.0.0/16]
  subnets:
    - name: nodes
      addressPrefix: 10.0.0.0/24
    - name: aci
      addressPrefix: 10.0.1.0/24
      delegation: Microsoft.ContainerInstance/containerGroups
      networkSecurityGroup: aci-nsg
    - name: apps
      addressPrefix: 10.0.2.0/24
      networkSecurityGroup: apps-nsg
networkSecurityGroups:
  - name: apps-nsg
    securityRules:
      - name: allow-web
        priority: 100
        direction: Inbound
        access: Allow
        protocol: Tcp
        sourceAddressPrefix: "*"
        sourcePortRange: "*"
        destinationAddressPrefix: "*"
        destinationPortRange: "WEB_PORT"
      - name: deny-smtp-out
        priority: 200
        direction: Outbound
        access: Deny
        protocol: Tcp
        sourceAddressPrefix: "*"
        sourcePortRange: "*"
        destinationAddressPrefix: "*"
        destinationPortRange: "25"
  - name: aci-nsg
    securityRules: []
nodes:
  - name: node-1
    interface: up0
    primaryIpAddress: 10.0.0.4
    secondaryIpAddresses: ["10.0.1.10-10.0.1.20", "10.0.2.10-10.0.2.20"]
containerGroups:
  - name: api
    properties:
      osType: Linux
      subnetIds: [{ id: aci }]
      ipAddress:
        type: Private
        ip: 10.0.1.10
        ports: GROUP_PORTS
      containers:
        - name: api
          properties: { image: api, ports: [{ port: 8080 }, { port: 53, protocol: UDP }] }
"#;

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 10);
const GROUP_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const TCP: u8 = 6;
const UDP: u8 = 17;

fn plan(web_port: u16, group_ports: &str) -> NodePlan {
    let text = SPEC
        .replace("WEB_PORT", &web_port.to_string())
        .replace("GROUP_PORTS", group_ports);
    let spec = parse_str(&text).expect("the test spec parses");
    NodePlan::from_spec(&spec, "node-1").expect("the test spec is valid")
}

const BOTH_PORTS: &str = "[{ protocol: TCP, port: 8080 }, { protocol: UDP, port: 53 }]";
const TCP_ONLY: &str = "[{ protocol: TCP, port: 8080 }]";

/// Everything the test creates outside its own namespace: removed on drop, also on panic.
struct Scratch {
    bpffs: PathBuf,
    state: PathBuf,
    pod_netns: Vec<String>,
}

impl Scratch {
    fn new() -> Self {
        let pid = std::process::id();
        let scratch = Scratch {
            bpffs: PathBuf::from(format!("/sys/fs/bpf/vnkn{pid}")),
            state: PathBuf::from(format!("/tmp/vnkn{pid}")),
            pod_netns: ["pod", "grp"].map(|tag| format!("vnkn{pid}-{tag}")).into(),
        };
        for dir in [&scratch.bpffs, &scratch.state] {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
        }
        for name in &scratch.pod_netns {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(std::process::Stdio::null())
                .status();
            let status = Command::new("ip")
                .args(["netns", "add", name])
                .status()
                .unwrap();
            assert!(status.success(), "ip netns add {name}");
        }
        scratch
    }

    fn netns(&self, index: usize) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.pod_netns[index]))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = dataplane::teardown(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.state);
        for name in &self.pod_netns {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn pinned_map(bpffs: &Path, name: &str) -> Map {
    let data = MapData::from_pin(PinLayout::new(bpffs).map(name))
        .unwrap_or_else(|e| panic!("opening pinned {name}: {e}"));
    Map::from_map_data(data).unwrap()
}

fn endpoints(bpffs: &Path) -> BTreeMap<Ipv4Addr, Endpoint> {
    let map: HashMap<_, [u8; 4], Endpoint> =
        HashMap::try_from(pinned_map(bpffs, maps::ENDPOINTS)).unwrap();
    map.iter()
        .map(|e| e.map(|(ip, ep)| (Ipv4Addr::from(ip), ep)))
        .collect::<Result<_, _>>()
        .unwrap()
}

fn group_ports(bpffs: &Path) -> BTreeSet<(Ipv4Addr, u8, u16)> {
    let map: HashMap<_, GroupPortKey, u32> =
        HashMap::try_from(pinned_map(bpffs, maps::GROUP_PORTS)).unwrap();
    map.keys()
        .map(|k| k.map(|k| (Ipv4Addr::from(k.ip), k.proto, u16::from_be(k.port))))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The classifier ids with entries in NSG_RULES, NSG_PORTLESS, NSG_SRC_ADDR and NSG_HITS,
/// map by map.
fn classifier_ids(bpffs: &Path) -> [BTreeSet<u32>; 4] {
    let rules: HashMap<_, NsgRuleKey, NsgRule> =
        HashMap::try_from(pinned_map(bpffs, maps::NSG_RULES)).unwrap();
    let portless: HashMap<_, u32, RuleBitmap> =
        HashMap::try_from(pinned_map(bpffs, maps::NSG_PORTLESS)).unwrap();
    let src: LpmTrie<_, NsgAddrKey, RuleBitmap> =
        LpmTrie::try_from(pinned_map(bpffs, maps::NSG_SRC_ADDR)).unwrap();
    let hits: PerCpuHashMap<_, NsgRuleKey, u64> =
        PerCpuHashMap::try_from(pinned_map(bpffs, maps::NSG_HITS)).unwrap();
    [
        rules.keys().map(|k| k.unwrap().classifier).collect(),
        portless.keys().map(Result::unwrap).collect(),
        src.keys()
            .map(|k| u32::from_be_bytes(k.unwrap().data().classifier))
            .collect(),
        hits.keys().map(|k| k.unwrap().classifier).collect(),
    ]
}

fn add(scratch: &Scratch, netns: usize, id: &str, group: Option<&str>) -> Request {
    Request::Add(AddRequest {
        attachment: Attachment {
            network: "vnetd".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
        },
        netns: scratch.netns(netns),
        subnet: group.is_none().then(|| "apps".into()),
        container_group: group.map(Into::into),
        k8s_namespace: None,
        k8s_pod: None,
        mtu: None,
        routes: None,
    })
}

async fn added(agent: &mut Agent, request: Request) -> Ipv4Addr {
    match agent.handle(request).await {
        Response::Added(result) => result.ip,
        other => panic!("ADD answered {other:?}"),
    }
}

#[test]
fn endpoints_follow_their_nsgs_and_groups_their_exposed_ports() {
    let scratch = Scratch::new();
    let result = std::thread::scope(|threads| {
        threads
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET)");
                let status = Command::new("ip")
                    .args(["link", "add", "up0", "type", "veth", "peer", "name", "up1"])
                    .status()
                    .unwrap();
                assert!(status.success(), "ip link add up0");
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(scenario(&scratch));
            })
            .join()
    });
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(scratch: &Scratch) {
    let bpffs = &scratch.bpffs;
    let mut agent = Agent::start(plan(80, BOTH_PORTS), bpffs, &scratch.state)
        .await
        .expect("the agent starts");
    assert_eq!(
        added(&mut agent, add(scratch, 0, "pod1", None)).await,
        POD_IP
    );
    assert_eq!(
        added(&mut agent, add(scratch, 1, "grp1", Some("api"))).await,
        GROUP_IP
    );

    // Start and ADD: the pod points at apps-nsg, the group at aci-nsg, both directions.
    let first = endpoints(bpffs);
    let (pod, group) = (first[&POD_IP], first[&GROUP_IP]);
    for (what, ep) in [("pod", pod), ("group", group)] {
        assert!(
            ep.nsg_in_subnet != 0 && ep.nsg_out_subnet != 0,
            "the {what} carries its subnet's classifiers: {ep:?}"
        );
        assert_eq!((ep.nsg_in_group, ep.nsg_out_group), (0, 0), "{what}");
    }
    let ids = |ep: &Endpoint| [ep.nsg_in_subnet, ep.nsg_out_subnet];
    let installed: BTreeSet<u32> = ids(&pod).into_iter().chain(ids(&group)).collect();
    assert_eq!(installed.len(), 4, "four classifiers: {pod:?} {group:?}");
    for present in classifier_ids(bpffs) {
        assert_eq!(present, installed, "every NSG map holds exactly them");
    }
    assert_eq!(pod.flags, 0, "a pod is reachable on any port");
    assert_eq!(group.flags, ENDPOINT_EXPOSED_PORTS_ONLY);
    assert_eq!(
        group_ports(bpffs),
        BTreeSet::from([(GROUP_IP, TCP, 8080), (GROUP_IP, UDP, 53)])
    );
    let status = agent.status_report().unwrap();
    let pod_veth = &status
        .endpoints
        .iter()
        .find(|e| e.ip == POD_IP)
        .unwrap()
        .host_ifname;
    for program in [programs::POD_TC_INGRESS, programs::POD_TC_EGRESS] {
        assert!(
            status.links.contains(&(program.into(), pod_veth.clone())),
            "{program} on {pod_veth}: {:?}",
            status.links
        );
    }
    let names: BTreeSet<(String, String)> = status
        .nsg_rule_hits
        .iter()
        .map(|h| (h.nsg.clone(), h.rule.clone()))
        .collect();
    for (nsg, rule) in [
        ("apps-nsg", "allow-web"),
        ("apps-nsg", "deny-smtp-out"),
        ("apps-nsg", "DenyAllInBound"),
        ("aci-nsg", "AllowVnetOutBound"),
    ] {
        assert!(
            names.contains(&(nsg.into(), rule.into())),
            "{nsg}/{rule} in {names:?}"
        );
    }

    // A reload whose NSG write fails (NSG_PORTLESS is full) is refused; nothing changes.
    let filler: Vec<u32> = (0..maps::NSG_CLASSIFIERS_MAX - installed.len() as u32)
        .map(|i| 1_000_000 + i)
        .collect();
    {
        let mut portless: HashMap<_, u32, RuleBitmap> =
            HashMap::try_from(pinned_map(bpffs, maps::NSG_PORTLESS)).unwrap();
        for id in &filler {
            portless.insert(id, RuleBitmap::default(), 0).unwrap();
        }
    }
    let tables_before = std::fs::read_to_string(scratch.state.join("tables.json")).unwrap();
    let err = agent
        .reload(plan(8080, TCP_ONLY))
        .await
        .expect_err("a reload whose NSG tables do not fit is refused");
    assert!(format!("{err:#}").contains("NSG"), "{err:#}");
    assert_eq!(endpoints(bpffs), first, "the endpoints stay on the old ids");
    let [rules, portless, src, hits] = classifier_ids(bpffs);
    for present in [rules, src, hits] {
        assert_eq!(
            present, installed,
            "the new classifier's entries are removed"
        );
    }
    assert_eq!(portless.len(), maps::NSG_CLASSIFIERS_MAX as usize);
    assert_eq!(
        std::fs::read_to_string(scratch.state.join("tables.json")).unwrap(),
        tables_before,
        "the recorded ids stay"
    );
    {
        let mut portless: HashMap<_, u32, RuleBitmap> =
            HashMap::try_from(pinned_map(bpffs, maps::NSG_PORTLESS)).unwrap();
        for id in &filler {
            portless.remove(id).unwrap();
        }
    }

    // The same reload with room: apps-nsg's inbound rules changed, so the pod's inbound
    // classifier has a new id and the old one's entries are gone; the rest keep their ids.
    agent
        .reload(plan(8080, TCP_ONLY))
        .await
        .expect("the reload applies");
    let second = endpoints(bpffs);
    let (pod2, group2) = (second[&POD_IP], second[&GROUP_IP]);
    assert_ne!(pod2.nsg_in_subnet, pod.nsg_in_subnet, "a new inbound id");
    assert_ne!(pod2.nsg_in_subnet, 0);
    assert_eq!(
        pod2.nsg_out_subnet, pod.nsg_out_subnet,
        "outbound unchanged"
    );
    assert_eq!(ids(&group2), ids(&group), "aci-nsg unchanged");
    for present in classifier_ids(bpffs) {
        assert!(
            !present.contains(&pod.nsg_in_subnet),
            "the old classifier {} is deleted: {present:?}",
            pod.nsg_in_subnet
        );
        assert!(present.contains(&pod2.nsg_in_subnet));
        assert_eq!(present.len(), 4, "{present:?}");
    }
    assert_eq!(
        group_ports(bpffs),
        BTreeSet::from([(GROUP_IP, TCP, 8080)]),
        "the port the reload closed is gone"
    );

    // A restart adopts the pins: the same ids, the same entries.
    drop(agent);
    let mut agent = Agent::start(plan(8080, TCP_ONLY), bpffs, &scratch.state)
        .await
        .expect("the agent restarts");
    assert_eq!(endpoints(bpffs), second, "a restart keeps the ids");
    assert_eq!(group_ports(bpffs), BTreeSet::from([(GROUP_IP, TCP, 8080)]));

    // DEL of the group: its entry and exposed ports go.
    let del = Request::Del(Attachment {
        network: "vnetd".into(),
        container_id: "grp1".into(),
        ifname: "eth0".into(),
    });
    assert!(matches!(agent.handle(del).await, Response::Done));
    assert!(!endpoints(bpffs).contains_key(&GROUP_IP));
    assert!(group_ports(bpffs).is_empty(), "{:?}", group_ports(bpffs));
}
