//! This node's settings (the single entry of `NODE`) and the pods' gateway.

/// The pods' default gateway (Azure CNI's transparent mode), network byte order.
pub const POD_GATEWAY: [u8; 4] = [169, 254, 1, 1];

/// This node: the single entry of the `NODE` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub uplink_ifindex: u32,
    /// The node's primary address (SNAT source), network byte order.
    pub primary_ip: [u8; 4],
    pub uplink_mac: [u8; 6],
    /// `outboundNat.portRange` (host byte order, inclusive): the source ports SNAT allocates,
    /// and the node's own ports that are tracked so pods never share them.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub _pad: [u8; 2],
    /// The cluster's service range (`networkProfile.serviceCidr`), network byte order: pods'
    /// traffic to it goes to the node's stack (kube-proxy), and flows the stack translated are
    /// tracked so their replies go back through it. A zero mask: no service range.
    pub service_net: [u8; 4],
    pub service_mask: [u8; 4],
}

impl NodeConfig {
    /// `ip` is in the cluster's service range.
    #[inline(always)]
    pub fn is_service(&self, ip: &[u8; 4]) -> bool {
        let (net, mask) = (
            u32::from_ne_bytes(self.service_net),
            u32::from_ne_bytes(self.service_mask),
        );
        mask != 0 && u32::from_ne_bytes(*ip) & mask == net
    }

    /// The node runs Kubernetes Services (a service range is configured).
    #[inline(always)]
    pub fn has_services(&self) -> bool {
        self.service_mask != [0; 4]
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::NodeConfig {}
}
