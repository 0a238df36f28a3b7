//! The ABI between vnetd's eBPF programs and its agent: map names, keys, values and counter
//! indices. Everything here is `#[repr(C)]` and plain data. Changing a layout means bumping
//! [`ABI_VERSION`]: it is part of the pin path, so an agent never reuses a pinned map whose
//! layout it does not know.
#![no_std]

/// Part of every pin path (`<bpffs>/abi-v<N>/...`).
pub const ABI_VERSION: u32 = 1;

/// Packets and bytes, counted per CPU and summed by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Where a packet was seen and sent on: the index into the `TRAFFIC` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Every frame the uplink's XDP program sees.
    UplinkIn = 0,
    /// Every frame a pod sends (TC ingress on its host-side veth).
    PodOut = 1,
    /// Pod to a pod on the same node, veth to veth.
    PodToPod = 2,
    /// Pod to the node's own stack.
    PodToHost = 3,
    /// Pod out through the uplink (the rest of the VNet, an appliance, the internet).
    PodToUplink = 4,
    /// From the uplink straight into a local pod.
    UplinkToPod = 5,
    /// ARP requests answered by the dataplane (pods' gateway, proxy ARP on the uplink).
    ArpReply = 6,
}

impl Path {
    pub const COUNT: u32 = 7;
    pub const ALL: [Path; Self::COUNT as usize] = [
        Path::UplinkIn,
        Path::PodOut,
        Path::PodToPod,
        Path::PodToHost,
        Path::PodToUplink,
        Path::UplinkToPod,
        Path::ArpReply,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Path::UplinkIn => "uplink_in",
            Path::PodOut => "pod_out",
            Path::PodToPod => "pod_to_pod",
            Path::PodToHost => "pod_to_host",
            Path::PodToUplink => "pod_to_uplink",
            Path::UplinkToPod => "uplink_to_pod",
            Path::ArpReply => "arp_reply",
        }
    }
}

/// Why a packet was dropped: the index into the `DROPS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Truncated or inconsistent headers.
    Malformed = 0,
    /// A pod sent from an address or MAC that is not its own.
    Spoofed = 1,
    /// A route with next hop `None`.
    RouteNone = 2,
    /// No route at all (the node's tables are not loaded yet).
    NoRoute = 3,
    /// A protocol the dataplane does not carry for pods (IPv6, other ethertypes, IP options...).
    Unsupported = 4,
    /// The kernel refused the redirect (interface gone, no neighbour...).
    RedirectFailed = 5,
    /// A routed packet whose TTL ran out.
    TtlExceeded = 6,
}

impl DropReason {
    pub const COUNT: u32 = 7;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Malformed,
        DropReason::Spoofed,
        DropReason::RouteNone,
        DropReason::NoRoute,
        DropReason::Unsupported,
        DropReason::RedirectFailed,
        DropReason::TtlExceeded,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Spoofed => "spoofed",
            DropReason::RouteNone => "route_none",
            DropReason::NoRoute => "no_route",
            DropReason::Unsupported => "unsupported",
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::TtlExceeded => "ttl_exceeded",
        }
    }
}

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
    pub _pad: [u8; 2],
}

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
}

/// `ROUTES` key: (route table, destination), longest prefix first. `prefix_len` of the LPM key
/// counts the 32 table bits too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteKey {
    pub table: [u8; 4],
    pub dst: [u8; 4],
}

impl RouteKey {
    pub const TABLE_BITS: u32 = 32;
}

/// Azure's next-hop types.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    VnetLocal = 1,
    Internet = 2,
    None = 3,
    VirtualAppliance = 4,
    VirtualNetworkGateway = 5,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// A [`NextHop`] value.
    pub next_hop: u32,
    /// For `VirtualAppliance`: the appliance's address, network byte order.
    pub next_hop_ip: [u8; 4],
}

/// Map names, shared so the agent opens exactly what the programs declare.
pub mod maps {
    pub const TRAFFIC: &str = "TRAFFIC";
    pub const DROPS: &str = "DROPS";
    pub const NODE: &str = "NODE";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const ROUTES: &str = "ROUTES";

    /// Capacities: 250 pods per node (plus headroom), 400 routes per table.
    pub const ENDPOINTS_MAX: u32 = 512;
    pub const ROUTES_MAX: u32 = 16384;
}

/// Program names (the entry functions' names).
pub mod programs {
    /// XDP on the uplink: proxy ARP, early drops.
    pub const UPLINK_XDP: &str = "uplink_xdp";
    /// TC ingress on the uplink: delivery into local pods.
    pub const UPLINK_TC_INGRESS: &str = "uplink_ingress";
    /// TC ingress on a pod's host-side veth: everything the pod sends.
    pub const POD_TC_INGRESS: &str = "pod_ingress";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::RouteKey {}
    unsafe impl aya::Pod for super::Route {}
}
