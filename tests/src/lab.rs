//! The lab: builds the topology, owns its namespaces, tears everything down.

use crate::ns::{Ns, check_ifname};
use crate::process;
use crate::sweep::{self, FAMILY};
use crate::{
    BPFFS_ROOT, EDGE_INTERNET_IP, GATEWAY, INTERNET_HOST_IP, LAB_DIR_ROOT, POD_GATEWAY, UPLINK,
    VNET_SPACE,
};
use anyhow::{Context, Result, anyhow, ensure};
use ipnet::Ipv4Net;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Set this environment variable to keep each lab's directory (logs) after teardown; a later
/// sweep removes it once the process is gone.
pub const KEEP_LOGS_ENV: &str = "VNETD_LAB_KEEP_LOGS";

/// The bridge in the fabric namespace.
const BRIDGE: &str = "br0";
/// The edge's link to the internet namespace.
const EDGE_INTERNET_LINK: &str = "eth1";
/// Where an agent in a node listens for metrics (each node namespace has its own loopback, so
/// every node can use the same address).
pub const NODE_METRICS_ADDR: &str = "127.0.0.1:9464";

/// A deterministic, locally administered MAC: `02:<kind>:<the four bytes of ip>`. Kinds: 00
/// fabric members (nodes, appliances, the edge), 01 veth pods' eth0, 02 their host side.
fn mac_for(kind: u8, ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!(
        "02:{kind:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        o[0], o[1], o[2], o[3]
    )
}

/// Sysctls every lab namespace gets, before any link exists in it (so the `default` values
/// reach every interface created later):
/// - IPv6 off: no router solicitations, DAD or MLD reports on the fabric to disturb packet
///   counts and captures (the dataplane is IPv4). A test that needs IPv6 turns it back on.
/// - rp_filter off: inherited from the root namespace otherwise, so results would depend on
///   the machine; and a packet that escaped translation should still arrive where a test can
///   see it, not vanish at the edge.
/// - No ICMP redirects: appliances and nodes forward out of the interface they received on;
///   a redirect would teach the sender to bypass them.
const BASE_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/conf/default/send_redirects", "0"),
    ("net/ipv4/conf/all/accept_redirects", "0"),
    ("net/ipv4/conf/default/accept_redirects", "0"),
];

/// A node: a namespace standing for a VM on the virtual network.
///
/// Its uplink `eth0` is a veth into the fabric holding the primary IP; default route via the
/// VNet gateway (10.0.0.1); `ip_forward=1`. Dereferences to its [`Ns`] (`node.run_ok(..)`,
/// `node.name`, `node.path`).
#[derive(Clone, Debug)]
pub struct Node {
    pub ns: Ns,
    /// The uplink's name in the node (`eth0`).
    pub uplink: String,
    /// The primary IP address (the SNAT source).
    pub ip: Ipv4Addr,
    /// The primary IP with its prefix, as given.
    pub cidr: Ipv4Net,
    /// The uplink's MAC (`02:00:<ip bytes>`).
    pub mac: String,
    /// The uplink's peer: a port of the fabric's bridge.
    pub fabric_port: String,
    /// A directory of this node's own, removed with the lab: put specs here.
    pub dir: PathBuf,
    /// A per-node agent API socket path (`<dir>/vnetd.sock`).
    pub api_socket: PathBuf,
    /// A per-node agent state dir (`<dir>/state`, not created).
    pub state_dir: PathBuf,
    /// A per-node bpffs pin dir (`/sys/fs/bpf/vnl<pid>x<n>/<node>`, not created; removed with
    /// the lab).
    pub bpffs_dir: PathBuf,
}

impl Deref for Node {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.ns
    }
}

impl Node {
    /// The arguments after the `vnetd` binary for an agent of this node with its own socket,
    /// state dir, pin dir and (node-local) metrics address:
    /// `run --spec SPEC --node NAME --api-socket .. --state-dir .. --bpffs .. --metrics-addr ..`.
    /// Start it with `node.spawn_with(node.command([vnetd].into_iter().chain(args)), ..)`.
    pub fn agent_args(&self, spec: &Path) -> Vec<OsString> {
        vec![
            "run".into(),
            "--spec".into(),
            spec.into(),
            "--node".into(),
            self.role.clone().into(),
            "--api-socket".into(),
            self.api_socket.clone().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--bpffs".into(),
            self.bpffs_dir.clone().into(),
            "--metrics-addr".into(),
            NODE_METRICS_ADDR.into(),
        ]
    }

    /// The command that runs `call`'s plugin inside this node's namespace, with the CNI
    /// environment set (the network configuration goes to its stdin). [`Node::cni`] runs it with
    /// a timeout; a benchmark may run it with a blocking wait, which measures without polling.
    pub fn cni_command(&self, call: &CniCall) -> std::process::Command {
        let mut cmd = self.command([&call.plugin]);
        for var in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ] {
            cmd.env_remove(var);
        }
        let mut set = |k: &str, v: &str| {
            if !v.is_empty() {
                cmd.env(k, v);
            }
        };
        set("CNI_COMMAND", &call.command);
        set("CNI_CONTAINERID", &call.container_id);
        set("CNI_NETNS", &call.netns.to_string_lossy());
        set("CNI_IFNAME", &call.ifname);
        set("CNI_ARGS", &call.args);
        let cni_path = call.cni_path.clone().unwrap_or_else(|| {
            call.plugin
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        set("CNI_PATH", &cni_path);
        for (k, v) in &call.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a CNI plugin inside this node's namespace (see [`CniCall`]).
    pub fn cni(&self, call: &CniCall) -> Result<CniOutput> {
        let cmd = self.cni_command(call);
        let what = format!(
            "CNI {} ({}) in netns {} for {}",
            call.command,
            call.plugin.display(),
            self.name,
            call.container_id
        );
        let out = process::run_command(
            cmd,
            Some(call.config.as_bytes()),
            call.timeout.unwrap_or(Duration::from_secs(60)),
            &what,
        )?;
        use std::os::unix::process::ExitStatusExt;
        let exit = out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Ok(CniOutput {
            exit,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A network virtual appliance: a namespace on the fabric with `ip_forward=1` and a default
/// route via the gateway, the next hop of `VirtualAppliance` routes. Capture on it
/// ([`Ns::capture`]) or read its uplink's counters ([`Ns::link_stats`]) to see traffic arrive.
#[derive(Clone, Debug)]
pub struct Appliance {
    pub ns: Ns,
    pub uplink: String,
    pub ip: Ipv4Addr,
    pub cidr: Ipv4Net,
    pub mac: String,
    pub fabric_port: String,
}

impl Deref for Appliance {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.ns
    }
}

/// A pod's namespace (lo up, nothing else: the CNI plugin makes its interface). Pass
/// `pod.path` as `CNI_NETNS`.
#[derive(Clone, Debug)]
pub struct PodNs {
    pub ns: Ns,
}

impl Deref for PodNs {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.ns
    }
}

/// A pod wired by the lab instead of the CNI plugin (see [`Lab::add_veth_pod`]).
#[derive(Clone, Debug)]
pub struct VethPod {
    pub pod: PodNs,
    /// The node's namespace name.
    pub node: String,
    pub ip: Ipv4Addr,
    /// The host-side veth in the node (`vh<n>`).
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    /// The pod-side interface (`eth0`).
    pub pod_ifname: String,
    pub pod_ifindex: u32,
    pub pod_mac: String,
}

impl Deref for VethPod {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.pod.ns
    }
}

/// One CNI plugin invocation: the CNI environment variables, the network config on stdin.
/// Empty strings leave their variable unset (VERSION needs only the command).
#[derive(Clone, Debug, Default)]
pub struct CniCall {
    /// ADD, DEL, CHECK, VERSION, STATUS or GC.
    pub command: String,
    pub plugin: PathBuf,
    pub container_id: String,
    /// The pod's namespace path (`/run/netns/..`).
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS`, e.g. `K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0`.
    pub args: String,
    /// The network configuration JSON (stdin).
    pub config: String,
    /// `CNI_PATH`; default: the plugin's directory.
    pub cni_path: Option<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// Killed after this (default 60 s).
    pub timeout: Option<Duration>,
}

/// What a CNI plugin returned.
#[derive(Clone, Debug)]
pub struct CniOutput {
    /// The exit code (128 + signal if killed).
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    /// stdout parsed as JSON (the CNI result or error).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("CNI output is not JSON: {:?}", self.stdout))
    }
}

#[derive(Default)]
struct State {
    /// Every namespace created, in order of creation.
    namespaces: Vec<String>,
    roles: HashSet<String>,
    /// Addresses in use and the member (role) that holds them.
    addresses: HashMap<Ipv4Addr, String>,
    ports: u32,
    veths: u32,
    nodes: Vec<Node>,
    appliances: Vec<Appliance>,
    public_ips: Vec<(Ipv4Addr, String)>,
    internet_ips: Vec<Ipv4Addr>,
    torn_down: bool,
}

/// A virtual network in namespaces (see the crate docs for the topology).
///
/// [`Lab::new`] builds the fabric, the edge and the internet host; add nodes, appliances and
/// pods with `&self` methods (the lab is `Sync`: share it with threads). Dropping it, or
/// [`Lab::teardown`], removes everything it made, processes first, then namespaces; the lab's
/// files are kept when the drop happens during a panic (their path is printed), for the
/// post-mortem, and swept by a later run.
pub struct Lab {
    id: String,
    prefix: String,
    dir: PathBuf,
    bpffs: PathBuf,
    fabric: Ns,
    edge: Ns,
    internet: Ns,
    state: Mutex<State>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab").field("id", &self.id).finish()
    }
}

impl Lab {
    /// Sweeps leftovers of dead processes' labs, then builds a new lab: `fabric` (bridge
    /// `br0`), `edge` (10.0.0.1 on the fabric, 198.51.100.1 towards the internet) and
    /// `internet` (198.51.100.10). About 50 ms.
    pub fn new() -> Result<Lab> {
        match sweep::sweep_stale() {
            Ok(r) if !r.is_empty() => eprintln!("vnetd-lab: swept leftovers of dead labs: {r}"),
            Ok(_) => {}
            Err(e) => eprintln!("vnetd-lab: sweeping leftovers: {e:#}"),
        }
        let id = format!(
            "{FAMILY}{}x{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let prefix = format!("{id}-");
        let dir = Path::new(LAB_DIR_ROOT).join(&id);
        let logs = dir.join("logs");
        let ns = |role: &str| Ns::new(format!("{prefix}{role}"), role.to_string(), logs.clone());
        let lab = Lab {
            fabric: ns("fabric"),
            edge: ns("edge"),
            internet: ns("internet"),
            bpffs: Path::new(BPFFS_ROOT).join(&id),
            dir,
            prefix,
            id,
            state: Mutex::new(State::default()),
        };
        // From here on, an error drops `lab`, which removes what was made.
        std::fs::create_dir_all(lab.dir.join("logs"))
            .with_context(|| format!("creating {}", lab.dir.display()))?;
        // Who owns the lab, for sweeps that must tell a reused pid from its first owner.
        let me = sweep::start_time(std::process::id()).unwrap_or(0);
        let owner = sweep::owner_file(&lab.id);
        std::fs::write(&owner, me.to_string())
            .with_context(|| format!("writing {}", owner.display()))?;
        lab.build_base()
            .with_context(|| format!("building lab {}", lab.id))?;
        Ok(lab)
    }

    fn build_base(&self) -> Result<()> {
        let fabric = self.create_ns("fabric")?;
        fabric.ip([
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        fabric.ip(["link", "set", BRIDGE, "up"])?;
        // br_netfilter (loaded on Kubernetes-like machines) would send bridged frames through
        // iptables: the fabric is a switch, nothing more. Per-namespace on newer kernels; best
        // effort (the module may be absent, then there is nothing to turn off).
        for k in ["iptables", "ip6tables", "arptables"] {
            let _ = fabric.sysctl(&format!("net.bridge.bridge-nf-call-{k}"), "0");
        }

        let edge = self.create_ns("edge")?;
        self.connect_to_fabric(&edge, &mac_for(0, GATEWAY))?;
        edge.ip(["addr", "add", &format!("{GATEWAY}/32"), "dev", UPLINK])?;
        edge.ip(["link", "set", UPLINK, "up"])?;
        edge.sysctl("net.ipv4.ip_forward", "1")?;

        let internet = self.create_ns("internet")?;
        edge.ip([
            "link",
            "add",
            EDGE_INTERNET_LINK,
            "type",
            "veth",
            "peer",
            "name",
            UPLINK,
            "netns",
            &internet.name,
        ])?;
        edge.ip([
            "addr",
            "add",
            &format!("{EDGE_INTERNET_IP}/24"),
            "dev",
            EDGE_INTERNET_LINK,
        ])?;
        edge.ip(["link", "set", EDGE_INTERNET_LINK, "up"])?;
        internet.ip([
            "addr",
            "add",
            &format!("{INTERNET_HOST_IP}/24"),
            "dev",
            UPLINK,
        ])?;
        internet.ip(["link", "set", UPLINK, "up"])?;
        internet.ip([
            "route",
            "add",
            "default",
            "via",
            &EDGE_INTERNET_IP.to_string(),
        ])?;
        let mut st = self.lock();
        st.addresses.insert(GATEWAY, "edge".into());
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `vnl<pid>x<n>`: this lab's id; its namespaces are `<id>-<role>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `vnl<pid>x<n>-`: the prefix of every namespace of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's directory (`/tmp/vnetd-lab/<id>`): logs, node dirs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lab's bpffs directory (`/sys/fs/bpf/<id>`), parent of the nodes' pin dirs.
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs
    }

    /// The fabric namespace (bridge `br0`, ports `fp<n>-<member>`).
    pub fn fabric(&self) -> &Ns {
        &self.fabric
    }

    /// The edge router: `eth0` 10.0.0.1/32 on the fabric, `eth1` 198.51.100.1/24.
    pub fn edge(&self) -> &Ns {
        &self.edge
    }

    /// The internet host: `eth0` 198.51.100.10/24 ([`crate::INTERNET_HOST_IP`]).
    pub fn internet(&self) -> &Ns {
        &self.internet
    }

    /// The nodes added so far.
    pub fn nodes(&self) -> Vec<Node> {
        self.lock().nodes.clone()
    }

    /// A node by role name.
    pub fn node(&self, role: &str) -> Option<Node> {
        self.lock().nodes.iter().find(|n| n.role == role).cloned()
    }

    /// The appliances added so far.
    pub fn appliances(&self) -> Vec<Appliance> {
        self.lock().appliances.clone()
    }

    /// The namespace names of this lab, in order of creation.
    pub fn namespaces(&self) -> Vec<String> {
        self.lock().namespaces.clone()
    }

    /// Creates `<prefix><role>`, registered for teardown before it exists, with lo up and
    /// [`BASE_SYSCTLS`].
    fn create_ns(&self, role: &str) -> Result<Ns> {
        ensure!(
            !role.is_empty()
                && role.len() <= 32
                && role
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
            "{role:?}: a lab member name is 1-32 characters of [A-Za-z0-9._-]"
        );
        let ns = Ns::new(
            format!("{}{role}", self.prefix),
            role.to_string(),
            self.dir.join("logs"),
        );
        {
            let mut st = self.lock();
            ensure!(!st.torn_down, "lab {} is torn down", self.id);
            ensure!(
                st.roles.insert(role.to_string()),
                "lab {} already has a member named {role:?}",
                self.id
            );
            st.namespaces.push(ns.name.clone());
        }
        if ns.exists() {
            // Our id, a name this lab has not made: left by an earlier process with our pid
            // that recorded no owner. Ours now.
            eprintln!("vnetd-lab: removing stale netns {}", ns.name);
            sweep::delete_netns(&ns.name)?;
        }
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &ns.name])
            .output()
            .with_context(|| format!("running ip netns add {}", ns.name))?;
        ensure!(
            out.status.success(),
            "ip netns add {} failed: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        ns.in_ns(|| {
            for (key, value) in BASE_SYSCTLS {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {value} to {}", path.display()))?;
            }
            Ok(())
        })
        .with_context(|| format!("setting sysctls in netns {}", ns.name))?;
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth from the member's `eth0` (with `mac`) to a new port of the fabric's bridge.
    /// `ip` runs inside the fabric namespace and puts the peer straight into the member's:
    /// neither end ever exists in the root namespace.
    fn connect_to_fabric(&self, member: &Ns, mac: &str) -> Result<String> {
        let n = {
            let mut st = self.lock();
            st.ports += 1;
            st.ports - 1
        };
        let mut port = format!("fp{n}-{}", member.role);
        port.truncate(15);
        check_ifname(&port)?;
        self.fabric.ip([
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            UPLINK,
            "address",
            mac,
            "netns",
            &member.name,
        ])?;
        self.fabric
            .ip(["link", "set", &port, "master", BRIDGE, "up"])?;
        Ok(port)
    }

    fn claim_address(&self, ip: Ipv4Addr, owner: &str) -> Result<()> {
        let mut st = self.lock();
        if let Some(holder) = st.addresses.get(&ip) {
            anyhow::bail!("{ip} is already used by {holder} in lab {}", self.id);
        }
        st.addresses.insert(ip, owner.to_string());
        Ok(())
    }

    /// A fabric member (node or appliance): namespace, uplink with `cidr`, default route via
    /// the gateway, forwarding on, and the edge's /32 route back to it.
    fn add_member(&self, role: &str, cidr: Ipv4Net) -> Result<(Ns, String, String)> {
        let ip = cidr.addr();
        self.claim_address(ip, role)?;
        let ns = self.create_ns(role)?;
        let mac = mac_for(0, ip);
        let port = self.wire_uplink(&ns, cidr, &mac)?;
        self.edge
            .ip(["route", "add", &format!("{ip}/32"), "dev", UPLINK])?;
        Ok((ns, mac, port))
    }

    /// A member's uplink: a new fabric port, `cidr` on the member's `eth0`, up, default route
    /// via the gateway and the on-link VNet route. Returns the fabric port's name.
    fn wire_uplink(&self, ns: &Ns, cidr: Ipv4Net, mac: &str) -> Result<String> {
        let port = self.connect_to_fabric(ns, mac)?;
        ns.ip(["addr", "add", &cidr.to_string(), "dev", UPLINK])?;
        ns.ip(["link", "set", UPLINK, "up"])?;
        // onlink: works whatever the member's prefix (the gateway need not be inside it).
        ns.ip([
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
            "dev",
            UPLINK,
            "onlink",
        ])?;
        // Azure's fabric delivers any VNet address to whoever holds it (nodes answer ARP for
        // their pods); on the lab's L2 fabric that is an on-link route for the VNet's space.
        ns.ip(["route", "add", VNET_SPACE, "dev", UPLINK, "scope", "link"])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(port)
    }

    /// Sets the MTU of a node's uplink and of its fabric port: the node sits on a network with
    /// that MTU (the bridge forwards nothing larger to or from it).
    pub fn set_uplink_mtu(&self, node: &Node, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        self.fabric
            .ip(["link", "set", &node.fabric_port, "mtu", &mtu])
            .and_then(|_| node.ip(["link", "set", &node.uplink, "mtu", &mtu]))
            .with_context(|| format!("setting the uplink MTU of {} to {mtu}", node.role))?;
        Ok(())
    }

    /// Deletes a node's uplink (its fabric port goes with it, and any program attached to it)
    /// and wires a new one as [`Lab::add_node`] did: same name, MAC, address and routes, a new
    /// fabric port, a new ifindex. Returns the node as it is now (its `fabric_port` changed).
    pub fn recreate_uplink(&self, node: &Node) -> Result<Node> {
        let port = node
            .ip(["link", "del", "dev", &node.uplink])
            .and_then(|_| self.wire_uplink(&node.ns, node.cidr, &node.mac))
            .with_context(|| format!("re-creating the uplink of {}", node.role))?;
        let mut st = self.lock();
        let stored = st
            .nodes
            .iter_mut()
            .find(|n| n.name == node.name)
            .with_context(|| format!("{} is not a node of lab {}", node.role, self.id))?;
        stored.fabric_port = port;
        Ok(stored.clone())
    }

    /// Adds a node: namespace `<prefix><name>`, uplink `eth0` on the fabric holding `cidr`'s
    /// address (e.g. `"10.0.0.4/24".parse()?`), default via 10.0.0.1, `ip_forward=1`, and an
    /// edge route for its primary IP (only that: its pods' addresses get none).
    pub fn add_node(&self, name: &str, cidr: Ipv4Net) -> Result<Node> {
        let (ns, mac, fabric_port) = self
            .add_member(name, cidr)
            .with_context(|| format!("adding node {name} ({cidr}) to lab {}", self.id))?;
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let node = Node {
            uplink: UPLINK.to_string(),
            ip: cidr.addr(),
            cidr,
            mac,
            fabric_port,
            api_socket: dir.join("vnetd.sock"),
            state_dir: dir.join("state"),
            bpffs_dir: self.bpffs.join(name),
            dir,
            ns,
        };
        self.lock().nodes.push(node.clone());
        Ok(node)
    }

    /// Adds a network virtual appliance at `cidr` (e.g. `"10.0.0.100/24".parse()?`):
    /// forwarding on, default via 10.0.0.1, ICMP redirects off.
    pub fn add_appliance(&self, name: &str, cidr: Ipv4Net) -> Result<Appliance> {
        let (ns, mac, fabric_port) = self
            .add_member(name, cidr)
            .with_context(|| format!("adding appliance {name} ({cidr}) to lab {}", self.id))?;
        let a = Appliance {
            ns,
            uplink: UPLINK.to_string(),
            ip: cidr.addr(),
            cidr,
            mac,
            fabric_port,
        };
        self.lock().appliances.push(a.clone());
        Ok(a)
    }

    /// Adds an empty pod namespace (lo up), for the CNI plugin to wire.
    pub fn add_pod_netns(&self, name: &str) -> Result<PodNs> {
        let ns = self
            .create_ns(name)
            .with_context(|| format!("adding pod netns {name} to lab {}", self.id))?;
        Ok(PodNs { ns })
    }

    /// Adds a pod wired by the lab, without the CNI plugin, the way the dataplane expects:
    /// a veth `vh<n>` (host side, in the node, up, route `<ip>/32 dev vh<n>`) to the pod's
    /// `eth0` (`<ip>/32`, MTU 1500, default via 169.254.1.1 onlink). No static neighbour: the
    /// dataplane answers ARP for 169.254.1.1; without it the pod reaches nothing.
    pub fn add_veth_pod(&self, node: &Node, name: &str, ip: Ipv4Addr) -> Result<VethPod> {
        self.add_veth_pod_inner(node, name, ip)
            .with_context(|| format!("adding veth pod {name} ({ip}) on {}", node.role))
    }

    fn add_veth_pod_inner(&self, node: &Node, name: &str, ip: Ipv4Addr) -> Result<VethPod> {
        self.claim_address(ip, name)?;
        let pod = self.add_pod_netns(name)?;
        let n = {
            let mut st = self.lock();
            st.veths += 1;
            st.veths - 1
        };
        let host = format!("vh{n}");
        check_ifname(&host)?;
        let (host_mac, pod_mac) = (mac_for(2, ip), mac_for(1, ip));
        node.ip([
            "link", "add", &host, "address", &host_mac, "mtu", "1500", "type", "veth", "peer",
            "name", UPLINK, "address", &pod_mac, "mtu", "1500", "netns", &pod.name,
        ])?;
        pod.ip(["addr", "add", &format!("{ip}/32"), "dev", UPLINK])?;
        pod.ip(["link", "set", UPLINK, "up"])?;
        pod.ip([
            "route",
            "add",
            "default",
            "via",
            &POD_GATEWAY.to_string(),
            "dev",
            UPLINK,
            "onlink",
        ])?;
        node.ip(["link", "set", &host, "up"])?;
        node.ip(["route", "add", &format!("{ip}/32"), "dev", &host])?;
        let h = node.link_info(&host)?;
        let p = pod.link_info(UPLINK)?;
        Ok(VethPod {
            node: node.name.clone(),
            ip,
            host_ifname: host,
            host_ifindex: h.ifindex,
            host_mac: h.mac,
            pod_ifname: UPLINK.to_string(),
            pod_ifindex: p.ifindex,
            pod_mac: p.mac,
            pod,
        })
    }

    /// Makes `ip` a public address hosted by `node`: the edge routes `<ip>/32` via the node's
    /// primary IP (replacing an earlier route, so a public IP can move). The internet reaches
    /// it through the edge; the node's dataplane answers ARP for it and translates.
    pub fn host_public_ip(&self, node: &Node, ip: Ipv4Addr) -> Result<()> {
        self.edge
            .ip([
                "route",
                "replace",
                &format!("{ip}/32"),
                "via",
                &node.ip.to_string(),
                "dev",
                UPLINK,
            ])
            .with_context(|| format!("hosting public ip {ip} on {}", node.role))?;
        let mut st = self.lock();
        st.public_ips.retain(|(p, _)| *p != ip);
        st.public_ips.push((ip, node.role.clone()));
        Ok(())
    }

    /// Removes the edge's route for a public address.
    pub fn unhost_public_ip(&self, ip: Ipv4Addr) -> Result<()> {
        self.edge
            .ip(["route", "del", &format!("{ip}/32")])
            .with_context(|| format!("removing public ip {ip}"))?;
        self.lock().public_ips.retain(|(p, _)| *p != ip);
        Ok(())
    }

    /// Adds another internet address (on the internet namespace's lo, routed by the edge),
    /// for tests that need several destinations outside the VNet (e.g. per-destination SNAT
    /// or route tests).
    pub fn add_internet_ip(&self, ip: Ipv4Addr) -> Result<()> {
        self.claim_address(ip, "internet")?;
        self.internet
            .ip(["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        self.edge.ip([
            "route",
            "replace",
            &format!("{ip}/32"),
            "via",
            &INTERNET_HOST_IP.to_string(),
            "dev",
            EDGE_INTERNET_LINK,
        ])?;
        self.lock().internet_ips.push(ip);
        Ok(())
    }

    /// Runs a CNI plugin in `node`'s namespace: `(exit code, stdout)`. See [`Node::cni`] and
    /// [`CniCall`] for stderr, extra env and time limits.
    #[allow(clippy::too_many_arguments)]
    pub fn cni(
        &self,
        node: &Node,
        cmd: &str,
        plugin: &Path,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        args: &str,
        config_json: &str,
    ) -> Result<(i32, String)> {
        let out = node.cni(&CniCall {
            command: cmd.to_string(),
            plugin: plugin.to_path_buf(),
            container_id: container_id.to_string(),
            netns: netns.to_path_buf(),
            ifname: ifname.to_string(),
            args: args.to_string(),
            config: config_json.to_string(),
            ..CniCall::default()
        })?;
        Ok((out.exit, out.stdout))
    }

    /// Deletes one namespace of this lab now (a pod going away, a node failing), killing its
    /// processes; its addresses become free again and the edge forgets a member's route. A
    /// veth pod's host side goes with it (deleting one end of a veth deletes the pair).
    pub fn remove_ns(&self, ns: &Ns) -> Result<()> {
        ensure!(
            ns.name.starts_with(&self.prefix) && self.lock().namespaces.contains(&ns.name),
            "{} is not a namespace of lab {}",
            ns.name,
            self.id
        );
        // Deleting the namespace frees its links asynchronously (in a kernel work queue):
        // delete them first, synchronously, so the peer (a pod's host veth, a member's fabric
        // port) is gone when this returns, as it would be after a CNI DEL.
        if let Ok(links) = ns.ip_json(["link", "show"]) {
            for l in links.as_array().into_iter().flatten() {
                if let Some(name) = l.get("ifname").and_then(Value::as_str)
                    && name != "lo"
                {
                    // Already gone with its peer: fine.
                    let _ = ns.ip(["link", "del", "dev", name]);
                }
            }
        }
        sweep::delete_netns(&ns.name)?;
        let member_ip = {
            let mut st = self.lock();
            st.namespaces.retain(|n| *n != ns.name);
            st.roles.remove(&ns.role);
            st.addresses.retain(|_, owner| *owner != ns.role);
            let ip = st
                .nodes
                .iter()
                .map(|n| (&n.ns, n.ip))
                .chain(st.appliances.iter().map(|a| (&a.ns, a.ip)))
                .find(|(n, _)| n.name == ns.name)
                .map(|(_, ip)| ip);
            st.nodes.retain(|n| n.name != ns.name);
            st.appliances.retain(|n| n.name != ns.name);
            ip
        };
        if let Some(ip) = member_ip {
            self.edge
                .ip(["route", "del", &format!("{ip}/32"), "dev", UPLINK])
                .with_context(|| format!("removing the edge's route to {}", ns.role))?;
        }
        Ok(())
    }

    /// Removes everything: kills the processes in every lab namespace, deletes the namespaces
    /// (newest first; their links go with them), the bpffs dir and the lab dir (kept when
    /// called during a panic). Idempotent; also run by `Drop`. Afterwards nothing can be added.
    pub fn teardown(&self) -> Result<()> {
        let names = {
            let mut st = self.lock();
            if st.torn_down {
                return Ok(());
            }
            st.torn_down = true;
            std::mem::take(&mut st.namespaces)
        };
        let mut errors = Vec::new();
        // Processes first, in every namespace, so none reacts to its links vanishing: those
        // this process started (also any still on their way in), then whatever is inside.
        process::kill_registered(|ns| names.iter().any(|n| n == ns));
        let own = std::process::id() as i32;
        for name in &names {
            let path = Path::new("/run/netns").join(name);
            if let Ok(pids) = crate::ns::pids_in_netns(&path) {
                for pid in pids.into_iter().filter(|&p| p != own) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        for name in names.iter().rev() {
            if let Err(e) = sweep::delete_netns(name) {
                errors.push(format!("{e:#}"));
            }
        }
        if self.bpffs.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.bpffs)
        {
            errors.push(format!("removing {}: {e}", self.bpffs.display()));
        }
        let keep = if std::thread::panicking() {
            Some("during a panic")
        } else if !errors.is_empty() {
            Some("with errors")
        } else if std::env::var_os(KEEP_LOGS_ENV).is_some() {
            Some(KEEP_LOGS_ENV)
        } else {
            None
        };
        if let Some(why) = keep {
            eprintln!(
                "vnetd-lab: lab {} torn down {why}; logs kept in {}",
                self.id,
                self.dir.display()
            );
        } else if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            errors.push(format!("removing {}: {e}", self.dir.display()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "tearing down lab {}: {}",
                self.id,
                errors.join("; ")
            ))
        }
    }

    /// A human-readable summary of the lab (for the demo and failure messages).
    pub fn describe(&self) -> String {
        let st = self.lock();
        let mut s = format!(
            "lab {} (namespaces {}*)\n  edge: eth0 {GATEWAY}/32 on the fabric, eth1 {EDGE_INTERNET_IP}/24\n  internet host: {INTERNET_HOST_IP}",
            self.id, self.prefix
        );
        for ip in &st.internet_ips {
            s.push_str(&format!(", {ip}"));
        }
        for n in &st.nodes {
            s.push_str(&format!(
                "\n  node {}: {} {} ({}), netns {}",
                n.role, n.uplink, n.cidr, n.mac, n.name
            ));
        }
        for a in &st.appliances {
            s.push_str(&format!(
                "\n  appliance {}: {} {} ({}), netns {}",
                a.role, a.uplink, a.cidr, a.mac, a.name
            ));
        }
        for (ip, node) in &st.public_ips {
            s.push_str(&format!("\n  public ip {ip} -> {node}"));
        }
        s
    }
}

impl fmt::Display for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("vnetd-lab: {e:#}");
        }
    }
}

/// The lab is shared with threads (traffic helpers, a demo's signal handling).
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Lab>();
    is_send_sync::<Node>();
};

#[cfg(test)]
mod tests {
    use super::mac_for;
    use std::net::Ipv4Addr;

    #[test]
    fn macs() {
        assert_eq!(mac_for(0, Ipv4Addr::new(10, 0, 0, 4)), "02:00:0a:00:00:04");
        assert_eq!(
            mac_for(1, Ipv4Addr::new(10, 0, 1, 200)),
            "02:01:0a:00:01:c8"
        );
    }
}
