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
    /// `ENDPOINT_*` bits.
    pub flags: u32,
}

/// One CPU's copy of an `ENDPOINTS` entry, in `ENDPOINT_CACHE`: valid while `generation`
/// equals `ENDPOINTS_GENERATION`, which the agent moves on after every write to `ENDPOINTS`.
/// `endpoint.host_ifindex == 0`: `ip` is not an endpoint (every endpoint has a veth).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedEndpoint {
    pub generation: u64,
    pub ip: [u8; 4],
    pub _pad: u32,
    pub endpoint: Endpoint,
}

/// `ENDPOINT_CACHE` slots per role (a packet's source, its destination) on each CPU: an address
/// has one slot per role, picked by its last two bytes.
pub const ENDPOINT_CACHE_SLOTS: u32 = 256;

/// A container group: from outside the group only the (protocol, port) pairs in `GROUP_PORTS`
/// are reachable over TCP and UDP, whatever the NSGs allow (`ipAddress.ports`).
pub const ENDPOINT_EXPOSED_PORTS_ONLY: u32 = 1;

/// The endpoint's route table routes the whole VNet address space to the VNet (`VnetLocal`: no
/// route overrides any part of it), so a packet it sends to a pod of this node goes straight
/// there, without the longest-prefix match that would find the same. The agent sets it from
/// the compiled table; without it every packet is routed by lookup.
pub const ENDPOINT_VNET_DIRECT: u32 = 2;

/// An exposed port of a container group: `GROUP_PORTS[key]` = 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupPortKey {
    /// The group's private address, network byte order.
    pub ip: [u8; 4],
    /// Network byte order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::GroupPortKey {}
    unsafe impl aya::Pod for super::CachedEndpoint {}
}
