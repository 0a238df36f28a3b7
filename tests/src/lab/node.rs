//! Nodes (namespaces standing for VMs) and the uplinks that join fabric members to the bridge.

use super::{Lab, mac_for};
use crate::ns::Ns;
use crate::{GATEWAY, UPLINK, VNET_SPACE};
use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// Where an agent in a node listens for metrics (each node namespace has its own loopback, so
/// every node can use the same address).
pub const NODE_METRICS_ADDR: &str = "127.0.0.1:9464";

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
}

impl Lab {
    /// A fabric member (node or appliance): namespace, uplink with `cidr`, default route via
    /// the gateway, forwarding on, and the edge's /32 route back to it.
    pub(super) fn add_member(&self, role: &str, cidr: Ipv4Net) -> Result<(Ns, String, String)> {
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
}
