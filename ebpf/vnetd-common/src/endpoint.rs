//! The pods and container groups of this node, by address (`ENDPOINTS`).

/// A pod or container group on this node: `ENDPOINTS[ip]` (ip in network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The host-side veth.
    pub host_ifindex: u32,
    /// Which route table the endpoint's subnet uses (0 = system routes only).
    pub route_table: u32,
    pub pod_mac: [u8; 6],
    /// The host-side veth's MAC: what the pod resolves 169.254.1.1 to.
    pub host_mac: [u8; 6],
    /// A Public group's public address, network byte order: its traffic to the internet
    /// leaves with it. `[0; 4]`: masquerade to the node's primary address.
    pub public_ip: [u8; 4],
    /// NSG classifier ids that apply to the endpoint's traffic (0 = none). Outbound: the
    /// group's NSG, then the subnet's; inbound: the subnet's, then the group's. Both must allow.
    pub nsg_in_subnet: u32,
    pub nsg_in_group: u32,
    pub nsg_out_subnet: u32,
    pub nsg_out_group: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::Endpoint {}
}
