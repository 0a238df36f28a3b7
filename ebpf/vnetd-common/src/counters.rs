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
    /// Pod to the rest of the VNet (next hop `VnetLocal`), out of the uplink.
    PodToVnet = 4,
    /// From the uplink straight into a local pod.
    UplinkToPod = 5,
    /// ARP requests answered by the dataplane (pods' gateway, proxy ARP on the uplink).
    ArpReply = 6,
    /// Pod to a connected space (next hop `VirtualNetworkGateway`), out of the uplink.
    PodToGateway = 7,
    /// Pod to a `VirtualAppliance` next hop (out of the uplink, or into the local pod that is
    /// the appliance).
    PodToAppliance = 8,
    /// Pod to the internet (next hop `Internet`: the node's own default route).
    PodToInternet = 9,
    /// ICMP errors the dataplane sent in place of a packet it could not forward (time
    /// exceeded).
    IcmpError = 10,
    /// Replies of SNAT flows, translated back and delivered into their pod.
    InternetToPod = 11,
    /// Inbound traffic to a Public group's address, translated to its private address.
    PublicToPod = 12,
    /// The node's own traffic whose port was remapped (a pod flow held its port first).
    HostNat = 13,
    /// What the node's stack sent into a pod (TC egress on its host-side veth).
    HostToPod = 14,
    /// Pod to the cluster's service range, or a packet of a flow the node's stack translated:
    /// handed to the node's stack (kube-proxy).
    PodToService = 15,
}

impl Path {
    pub const COUNT: u32 = 16;
    pub const ALL: [Path; Self::COUNT as usize] = [
        Path::UplinkIn,
        Path::PodOut,
        Path::PodToPod,
        Path::PodToHost,
        Path::PodToVnet,
        Path::UplinkToPod,
        Path::ArpReply,
        Path::PodToGateway,
        Path::PodToAppliance,
        Path::PodToInternet,
        Path::IcmpError,
        Path::InternetToPod,
        Path::PublicToPod,
        Path::HostNat,
        Path::HostToPod,
        Path::PodToService,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Path::UplinkIn => "uplink_in",
            Path::PodOut => "pod_out",
            Path::PodToPod => "pod_to_pod",
            Path::PodToHost => "pod_to_host",
            Path::PodToVnet => "pod_to_vnet",
            Path::UplinkToPod => "uplink_to_pod",
            Path::ArpReply => "arp_reply",
            Path::PodToGateway => "pod_to_gateway",
            Path::PodToAppliance => "pod_to_appliance",
            Path::PodToInternet => "pod_to_internet",
            Path::IcmpError => "icmp_error",
            Path::InternetToPod => "internet_to_pod",
            Path::PublicToPod => "public_to_pod",
            Path::HostNat => "host_nat",
            Path::HostToPod => "host_to_pod",
            Path::PodToService => "pod_to_service",
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
    /// An ethertype the dataplane does not carry for pods (IPv6 aside).
    Unsupported = 4,
    /// The redirect helper refused the packet. Failures after the program (no neighbour for
    /// the next hop, the target interface gone) are the kernel's: they show in the interfaces'
    /// drop counters, not here.
    RedirectFailed = 5,
    /// A routed packet whose TTL ran out (answered with ICMP time exceeded, unless it was an
    /// error itself, a later fragment or had IP options).
    TtlExceeded = 6,
    /// A pod sent a frame with an 802.1Q tag (in the frame or in the skb's metadata).
    VlanTagged = 7,
    /// A pod sent IPv6 (pods have IPv4 only; their kernels' neighbour discovery and MLD are
    /// expected noise, kept apart from `unsupported`).
    Ipv6 = 8,
    /// A pod's ARP probe (sender 0.0.0.0, duplicate address detection): never answered, so the
    /// pod keeps its address.
    ArpProbe = 9,
    /// A new flow out of the VNet found no free SNAT port (established flows are untouched).
    SnatPortsExhausted = 10,
    /// A later fragment on a translated path whose first fragment (the one with the ports)
    /// was not seen: it has no flow to follow (vnetd does not reassemble).
    NatFragment = 11,
    /// Inbound to a public address on a port (or protocol) the group does not expose.
    PublicPortClosed = 12,
    /// The flow table refused a new entry (not a port clash: the kernel said no).
    FlowInsertFailed = 13,
    /// An ICMP error about a flow vnetd does not know, to a translated address.
    IcmpNoFlow = 14,
    /// A network security group's rule denied the packet.
    NsgDenied = 15,
    /// TCP or UDP to a container group's port that `ipAddress.ports` does not expose.
    PortNotExposed = 16,
    /// A routed packet whose TTL ran out while the time-exceeded answers were over their rate
    /// (per CPU, 1000 a second in bursts of 50: the kernel's own ICMP limits): dropped
    /// unanswered.
    TimeExceededRateLimited = 17,
}

impl DropReason {
    pub const COUNT: u32 = 18;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Malformed,
        DropReason::Spoofed,
        DropReason::RouteNone,
        DropReason::NoRoute,
        DropReason::Unsupported,
        DropReason::RedirectFailed,
        DropReason::TtlExceeded,
        DropReason::VlanTagged,
        DropReason::Ipv6,
        DropReason::ArpProbe,
        DropReason::SnatPortsExhausted,
        DropReason::NatFragment,
        DropReason::PublicPortClosed,
        DropReason::FlowInsertFailed,
        DropReason::IcmpNoFlow,
        DropReason::NsgDenied,
        DropReason::PortNotExposed,
        DropReason::TimeExceededRateLimited,
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
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::Ipv6 => "ipv6",
            DropReason::ArpProbe => "arp_probe",
            DropReason::SnatPortsExhausted => "snat_ports_exhausted",
            DropReason::NatFragment => "nat_fragment",
            DropReason::PublicPortClosed => "public_port_closed",
            DropReason::FlowInsertFailed => "flow_insert_failed",
            DropReason::IcmpNoFlow => "icmp_no_flow",
            DropReason::NsgDenied => "nsg_denied",
            DropReason::PortNotExposed => "port_not_exposed",
            DropReason::TimeExceededRateLimited => "time_exceeded_rate_limited",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::Traffic {}
}
