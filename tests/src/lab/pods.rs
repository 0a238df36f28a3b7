//! Pods: empty namespaces for the CNI plugin to wire, and veth pods the lab wires itself.

use super::{Lab, Node, mac_for};
use crate::ns::{Ns, check_ifname};
use crate::{POD_GATEWAY, UPLINK};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::ops::Deref;

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

impl Lab {
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
}
