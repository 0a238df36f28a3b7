//! The lab's fixed part: the fabric (a bridge), the edge router and the internet host, and the
//! edge's routes to public and extra internet addresses.

use super::{Lab, Node, mac_for};
use crate::ns::{Ns, check_ifname};
use crate::{EDGE_INTERNET_IP, GATEWAY, INTERNET_HOST_IP, UPLINK};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;

/// The bridge in the fabric namespace.
const BRIDGE: &str = "br0";
/// The edge's link to the internet namespace.
const EDGE_INTERNET_LINK: &str = "eth1";

impl Lab {
    pub(super) fn build_base(&self) -> Result<()> {
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

    /// A veth from the member's `eth0` (with `mac`) to a new port of the fabric's bridge.
    /// `ip` runs inside the fabric namespace and puts the peer straight into the member's:
    /// neither end ever exists in the root namespace.
    pub(super) fn connect_to_fabric(&self, member: &Ns, mac: &str) -> Result<String> {
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
}
