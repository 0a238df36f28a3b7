//! Traffic and drop counters: per-CPU arrays indexed by [`Path`] and [`DropReason`]; the agent
//! sums the CPUs.

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

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::Traffic {}
}
