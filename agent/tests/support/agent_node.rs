//! A node for tests of the agent itself: its spec (a VNet with a pods' subnet under an NSG and
//! a container group's delegated subnet), the agent's pins, state and pods' namespaces
//! (removed on drop, also on failure), the pinned maps read back, CNI ADDs, and a thread that
//! unshares a network namespace of its own as the node (its uplink `up0`, a veth). Needs root.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use aya::maps::{HashMap, Map, MapData};
use vnetd::{
    api::proto::{AddRequest, Attachment, Request, Response},
    daemon::Agent,
    dataplane::{self, PinLayout},
    plan::NodePlan,
    spec::parse_str,
};
use vnetd_common::{Endpoint, GroupPortKey, maps};

pub const SPEC: &str = r#"
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

pub const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 10);
pub const GROUP_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

pub fn plan(web_port: u16, group_ports: &str) -> NodePlan {
    let text = SPEC
        .replace("WEB_PORT", &web_port.to_string())
        .replace("GROUP_PORTS", group_ports);
    let spec = parse_str(&text).expect("the test spec parses");
    NodePlan::from_spec(&spec, "node-1").expect("the test spec is valid")
}

pub const BOTH_PORTS: &str = "[{ protocol: TCP, port: 8080 }, { protocol: UDP, port: 53 }]";
pub const TCP_ONLY: &str = "[{ protocol: TCP, port: 8080 }]";

/// Everything the test creates outside its own namespace: removed on drop, also on panic.
pub struct Scratch {
    pub bpffs: PathBuf,
    pub state: PathBuf,
    pub pod_netns: Vec<String>,
}

impl Scratch {
    /// `test`: a tag of the test's own, so tests running side by side never share a name.
    pub fn new(test: &str) -> Self {
        let prefix = format!("vnkn{}{test}", std::process::id());
        let scratch = Scratch {
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
            state: PathBuf::from(format!("/tmp/{prefix}")),
            pod_netns: ["pod", "grp"].map(|tag| format!("{prefix}-{tag}")).into(),
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

    pub fn netns(&self, index: usize) -> PathBuf {
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

pub fn pinned_map(bpffs: &Path, name: &str) -> Map {
    let data = MapData::from_pin(PinLayout::new(bpffs).map(name))
        .unwrap_or_else(|e| panic!("opening pinned {name}: {e}"));
    Map::from_map_data(data).unwrap()
}

pub fn endpoints(bpffs: &Path) -> BTreeMap<Ipv4Addr, Endpoint> {
    let map: HashMap<_, [u8; 4], Endpoint> =
        HashMap::try_from(pinned_map(bpffs, maps::ENDPOINTS)).unwrap();
    map.iter()
        .map(|e| e.map(|(ip, ep)| (Ipv4Addr::from(ip), ep)))
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn group_ports(bpffs: &Path) -> BTreeSet<(Ipv4Addr, u8, u16)> {
    let map: HashMap<_, GroupPortKey, u32> =
        HashMap::try_from(pinned_map(bpffs, maps::GROUP_PORTS)).unwrap();
    map.keys()
        .map(|k| k.map(|k| (Ipv4Addr::from(k.ip), k.proto, u16::from_be(k.port))))
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn add(scratch: &Scratch, netns: usize, id: &str, group: Option<&str>) -> Request {
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

pub async fn added(agent: &mut Agent, request: Request) -> Ipv4Addr {
    match agent.handle(request).await {
        Response::Added(result) => result.ip,
        other => panic!("ADD answered {other:?}"),
    }
}

/// Runs `scenario` on a thread in a network namespace of its own, the node, with its uplink
/// `up0` (a veth).
pub fn on_a_node<F: std::future::Future<Output = ()>>(scenario: impl FnOnce() -> F + Send) {
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
                    .block_on(scenario());
            })
            .join()
    });
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
