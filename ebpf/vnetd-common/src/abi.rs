//! The ABI version, derived from what the pinned maps' contents depend on.
//!
//! [`FINGERPRINT`] hashes the size, alignment and field offsets (and field sizes) of every
//! `#[repr(C)]` type the maps hold, the maps' names and capacities, and the indices and values
//! both sides agree on (counter indices, next-hop codes). [`RECORDED`] says which ABI version
//! each fingerprint is; [`ABI_VERSION`] is the last entry's. The test below fails when the
//! fingerprint is not the last one recorded, so a layout cannot change without a new version,
//! and a new version puts the pins in a new directory (`<bpffs>/abi-v<N>`): the agent then
//! removes the old ABI's pins and starts afresh instead of adopting maps it cannot read.
//!
//! Map types and flags live in the eBPF crate's map declarations, not here; the agent compares
//! them (with key and value sizes and capacities) against every pinned map before adopting it.

use core::mem::{align_of, offset_of, size_of};

use crate::{
    CachedEndpoint, ConntrackStat, Direction, DropReason, ENDPOINT_CACHE_SLOTS,
    ENDPOINT_EXPOSED_PORTS_ONLY, ENDPOINT_VNET_DIRECT, Endpoint, FLOW_ASSURED, FLOW_INBOUND,
    FLOW_OUTBOUND, FLOW_OWNER_ANSWERER, FLOW_OWNER_OPENER, FLOW_SEEN_REPLY, Flow, FlowDecision,
    FlowEvent, FlowEventVerdict, FlowKey, FlowKind, FragmentKey, FragmentedDatagram, GroupPortKey,
    ICMP_ERROR_BURST, ICMP_ERRORS_PER_SEC, IcmpErrorBudget, NO_RULE, NextHop, NodeConfig,
    NsgAccess, NsgAddrKey, NsgPortKey, NsgProtoKey, NsgRule, NsgRuleKey, NsgVerdict, Path,
    PublicAddress, PublicPortKey, RULE_WORDS, Rewrite, Route, RouteKey, RuleBitmap, Traffic, maps,
};

/// Every layout the ABI has had, oldest first: (ABI version, fingerprint).
///
/// When `fingerprint_is_recorded` fails, append the line it prints (the next version with the
/// new fingerprint). Never edit an existing line: a version names one layout forever, and an
/// agent that finds pins of another version removes them.
#[rustfmt::skip]
pub const RECORDED: &[(u32, u64)] = &[
    (1, 0x4a49_2cb4_e629_3932),
    (2, 0xaf98_788e_fb11_9259),
    (3, 0x6955_5748_7391_9887),
    (4, 0x50a9_6180_9d6d_e329),
    (5, 0x9116_8028_4a52_b3af),
    (6, 0x6399_1f6e_dfbc_c587),
    (7, 0xed37_a564_d45d_244d),
    (8, 0x97ce_30a2_a444_647d),
    (9, 0x633a_24b6_43db_34b6),
    (10, 0x515d_58b7_2978_04a3),
    (11, 0x8301_26d8_7aba_5eb2),
    (12, 0x5dc8_7b22_8dd6_ab5d),
];

/// Part of every pin path (`<bpffs>/abi-v<N>/...`).
pub const ABI_VERSION: u32 = RECORDED[RECORDED.len() - 1].0;

/// The fingerprint of this build's ABI.
pub const FINGERPRINT: u64 = fingerprint();

/// FNV-1a, 64-bit: a stable hash computable in a `const fn`.
struct Hasher(u64);

impl Hasher {
    const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    const fn bytes(self, bytes: &[u8]) -> Self {
        let mut h = self.0;
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        // Length-delimit, so ("ab", "c") and ("a", "bc") differ.
        Self(h).word_raw(bytes.len() as u64)
    }

    const fn word_raw(self, w: u64) -> Self {
        let b = w.to_le_bytes();
        let mut h = self.0;
        let mut i = 0;
        while i < b.len() {
            h ^= b[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        Self(h)
    }

    const fn word(self, w: usize) -> Self {
        self.word_raw(w as u64)
    }

    /// A type: its name, size and alignment.
    const fn layout<T>(self, name: &str) -> Self {
        self.bytes(name.as_bytes())
            .word(size_of::<T>())
            .word(align_of::<T>())
    }
}

/// The size of the field a raw pointer points to (the field's type is never named).
const fn pointee_size<T>(_: *const T) -> usize {
    size_of::<T>()
}

/// Hashes a field: its name, offset and size.
macro_rules! field {
    ($h:expr, $ty:ty, $field:ident) => {{
        let value = core::mem::MaybeUninit::<$ty>::uninit();
        // SAFETY: only the field's address is taken (no read, no reference to uninit data).
        let size = pointee_size(unsafe { &raw const (*value.as_ptr()).$field });
        $h.bytes(stringify!($field).as_bytes())
            .word(offset_of!($ty, $field))
            .word(size)
    }};
}

const fn fingerprint() -> u64 {
    let h = Hasher::new();

    let h = h.layout::<Traffic>("Traffic");
    let h = field!(h, Traffic, packets);
    let h = field!(h, Traffic, bytes);

    let h = h.layout::<Endpoint>("Endpoint");
    let h = field!(h, Endpoint, host_ifindex);
    let h = field!(h, Endpoint, route_table);
    let h = field!(h, Endpoint, pod_mac);
    let h = field!(h, Endpoint, host_mac);
    let h = field!(h, Endpoint, public_ip);
    let h = field!(h, Endpoint, nsg_in_subnet);
    let h = field!(h, Endpoint, nsg_in_group);
    let h = field!(h, Endpoint, nsg_out_subnet);
    let h = field!(h, Endpoint, nsg_out_group);
    let h = field!(h, Endpoint, flags);
    let h = h.word(ENDPOINT_EXPOSED_PORTS_ONLY as usize);
    let h = h.word(ENDPOINT_VNET_DIRECT as usize);
    let h = h.layout::<CachedEndpoint>("CachedEndpoint");
    let h = field!(h, CachedEndpoint, generation);
    let h = field!(h, CachedEndpoint, ip);
    let h = field!(h, CachedEndpoint, endpoint);
    let h = h.word(ENDPOINT_CACHE_SLOTS as usize);
    let h = h.layout::<GroupPortKey>("GroupPortKey");
    let h = field!(h, GroupPortKey, ip);
    let h = field!(h, GroupPortKey, port);
    let h = field!(h, GroupPortKey, proto);

    let h = h.layout::<NodeConfig>("NodeConfig");
    let h = field!(h, NodeConfig, uplink_ifindex);
    let h = field!(h, NodeConfig, primary_ip);
    let h = field!(h, NodeConfig, uplink_mac);
    let h = field!(h, NodeConfig, snat_port_min);
    let h = field!(h, NodeConfig, snat_port_max);
    let h = field!(h, NodeConfig, _pad);
    let h = field!(h, NodeConfig, service_net);
    let h = field!(h, NodeConfig, service_mask);

    let h = h.layout::<FlowKey>("FlowKey");
    let h = field!(h, FlowKey, src_ip);
    let h = field!(h, FlowKey, dst_ip);
    let h = field!(h, FlowKey, src_port);
    let h = field!(h, FlowKey, dst_port);
    let h = field!(h, FlowKey, proto);

    let h = h.layout::<Flow>("Flow");
    let h = field!(h, Flow, created_ns);
    let h = field!(h, Flow, last_seen_ns);
    let h = field!(h, Flow, packets);
    let h = field!(h, Flow, bytes);
    let h = field!(h, Flow, sibling);
    let h = field!(h, Flow, nat_ip);
    let h = field!(h, Flow, nat_port);
    let h = field!(h, Flow, rewrite);
    let h = field!(h, Flow, kind);
    let h = field!(h, Flow, direction);
    let h = field!(h, Flow, tcp_flags_seen);
    let h = field!(h, Flow, nsg_verdict);
    let h = field!(h, Flow, status);
    let h = h
        .word(FLOW_SEEN_REPLY as usize)
        .word(FLOW_ASSURED as usize)
        .word(FLOW_OWNER_OPENER as usize)
        .word(FLOW_OWNER_ANSWERER as usize)
        .word(maps::ASSURED_FLOWS_PER_ENDPOINT as usize);
    let h = field!(h, Flow, nsg_rule_subnet);
    let h = field!(h, Flow, nsg_rule_group);

    let h = h.layout::<FragmentKey>("FragmentKey");
    let h = field!(h, FragmentKey, src_ip);
    let h = field!(h, FragmentKey, dst_ip);
    let h = field!(h, FragmentKey, id);
    let h = field!(h, FragmentKey, proto);
    let h = h.layout::<FragmentedDatagram>("FragmentedDatagram");
    let h = field!(h, FragmentedDatagram, flow);
    let h = field!(h, FragmentedDatagram, first_seen_ns);

    let h = h.layout::<FlowDecision>("FlowDecision");
    let h = field!(h, FlowDecision, classifier_subnet);
    let h = field!(h, FlowDecision, classifier_group);
    let h = field!(h, FlowDecision, rule_subnet);
    let h = field!(h, FlowDecision, rule_group);
    let h = field!(h, FlowDecision, verdict);
    let h = h.layout::<FlowEvent>("FlowEvent");
    let h = field!(h, FlowEvent, time_ns);
    let h = field!(h, FlowEvent, key);
    let h = field!(h, FlowEvent, decisions);
    let h = field!(h, FlowEvent, kind);
    let h = field!(h, FlowEvent, verdict);
    let h = field!(h, FlowEvent, reason);
    let h = h.word(FLOW_OUTBOUND).word(FLOW_INBOUND);
    let h = h.word(FlowEventVerdict::Allowed as usize);
    let h = h.word(FlowEventVerdict::Denied as usize);

    let h = h.layout::<RuleBitmap>("RuleBitmap");
    let h = field!(h, RuleBitmap, words);
    let h = h.word(RULE_WORDS);
    let h = h.layout::<NsgAddrKey>("NsgAddrKey");
    let h = field!(h, NsgAddrKey, classifier);
    let h = field!(h, NsgAddrKey, addr);
    let h = h.word(NsgAddrKey::CLASSIFIER_BITS as usize);
    let h = h.layout::<NsgPortKey>("NsgPortKey");
    let h = field!(h, NsgPortKey, classifier);
    let h = field!(h, NsgPortKey, port);
    let h = h.layout::<NsgProtoKey>("NsgProtoKey");
    let h = field!(h, NsgProtoKey, classifier);
    let h = field!(h, NsgProtoKey, proto);
    let h = h.layout::<NsgRuleKey>("NsgRuleKey");
    let h = field!(h, NsgRuleKey, classifier);
    let h = field!(h, NsgRuleKey, rule);
    let h = h.layout::<NsgRule>("NsgRule");
    let h = field!(h, NsgRule, priority);
    let h = field!(h, NsgRule, access);
    // NSG_PORTLESS is keyed by the classifier id.
    let h = h.layout::<u32>("nsg portless key");

    let h = h.layout::<PublicAddress>("PublicAddress");
    let h = field!(h, PublicAddress, private_ip);
    let h = h.layout::<PublicPortKey>("PublicPortKey");
    let h = field!(h, PublicPortKey, public_ip);
    let h = field!(h, PublicPortKey, port);
    let h = field!(h, PublicPortKey, proto);

    let h = h.layout::<RouteKey>("RouteKey");
    let h = field!(h, RouteKey, table);
    let h = field!(h, RouteKey, dst);
    let h = h.word(RouteKey::TABLE_BITS as usize);

    let h = h.layout::<Route>("Route");
    let h = field!(h, Route, next_hop);
    let h = field!(h, Route, next_hop_ip);

    let h = h.layout::<IcmpErrorBudget>("IcmpErrorBudget");
    let h = field!(h, IcmpErrorBudget, tokens);
    let h = field!(h, IcmpErrorBudget, refilled_ns);
    let h = h
        .word(ICMP_ERRORS_PER_SEC as usize)
        .word(ICMP_ERROR_BURST as usize);

    // ENDPOINTS and ENDPOINT_ASSURED are keyed by the IPv4 address; ENDPOINT_ASSURED holds a
    // count of flows.
    let h = h.layout::<[u8; 4]>("endpoint key");
    let mut h = h.layout::<u64>("assured flows of an endpoint");

    // Map names are pin file names; capacities are the maps' max entries.
    let mut i = 0;
    while i < maps::ALL.len() {
        h = h.bytes(maps::ALL[i].as_bytes());
        i += 1;
    }
    let mut h = h
        .word(maps::ENDPOINTS_MAX as usize)
        .word(maps::ROUTES_MAX as usize)
        .word(maps::NEW_FLOWS_MAX as usize)
        .word(maps::FLOWS_MAX as usize)
        .word(maps::FRAGMENTS_MAX as usize)
        .word(maps::NO_MASQUERADE_MAX as usize)
        .word(maps::PUBLIC_IPS_MAX as usize)
        .word(maps::PUBLIC_PORTS_MAX as usize)
        .word(maps::GROUP_PORTS_MAX as usize)
        .word(maps::NSG_CLASSIFIERS_MAX as usize)
        .word(maps::NSG_ADDR_MAX as usize)
        .word(maps::NSG_PORT_MAX as usize)
        .word(maps::NSG_PROTO_MAX as usize)
        .word(maps::NSG_RULES_MAX as usize)
        .word(maps::FLOW_EVENTS_BYTES as usize);

    // Counter indices: the TRAFFIC and DROPS arrays are as long as these lists.
    h = h.word(Path::COUNT as usize);
    let mut i = 0;
    while i < Path::ALL.len() {
        h = h.word(Path::ALL[i] as usize);
        i += 1;
    }
    h = h.word(DropReason::COUNT as usize);
    let mut i = 0;
    while i < DropReason::ALL.len() {
        h = h.word(DropReason::ALL[i] as usize);
        i += 1;
    }

    h = h.word(ConntrackStat::COUNT as usize);
    let mut i = 0;
    while i < ConntrackStat::ALL.len() {
        h = h.word(ConntrackStat::ALL[i] as usize);
        i += 1;
    }
    // Flow entry codes.
    let codes = [
        Rewrite::None as u8,
        Rewrite::Source as u8,
        Rewrite::Destination as u8,
        FlowKind::PodSnat as u8,
        FlowKind::Host as u8,
        FlowKind::PublicInbound as u8,
        FlowKind::Nsg as u8,
        FlowKind::HostStack as u8,
        Direction::Original as u8,
        Direction::Reply as u8,
        NsgAccess::Allow as u8,
        NsgAccess::Deny as u8,
        NsgVerdict::Unclassified as u8,
        NsgVerdict::Allow as u8,
        NsgVerdict::Deny as u8,
    ];
    h = h.word(NO_RULE as usize);
    let mut i = 0;
    while i < codes.len() {
        h = h.word(codes[i] as usize);
        i += 1;
    }

    // Next-hop codes as stored in ROUTES.
    let next_hops = [
        NextHop::VnetLocal,
        NextHop::Internet,
        NextHop::None,
        NextHop::VirtualAppliance,
        NextHop::VirtualNetworkGateway,
    ];
    let mut i = 0;
    while i < next_hops.len() {
        h = h.word(next_hops[i] as usize);
        i += 1;
    }
    h.0
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use super::*;

    #[test]
    fn fingerprint_is_recorded() {
        let (version, recorded) = RECORDED[RECORDED.len() - 1];
        assert!(
            recorded == FINGERPRINT,
            "\nThe ABI shared by the eBPF programs and the agent changed (a #[repr(C)] type, a map \
             name or capacity, a counter index or a next-hop code): its fingerprint is \
             {FINGERPRINT:#018x}, but ABI version {version} was recorded as {recorded:#018x}.\n\
             Append this line to RECORDED in ebpf/vnetd-common/src/abi.rs:\n\n    ({}, {}),\n\n\
             (the pins then move to abi-v{} and an upgraded agent removes abi-v{version}'s).\n",
            version + 1,
            hex(FINGERPRINT),
            version + 1,
        );
    }

    #[test]
    fn recorded_versions_increase_and_fingerprints_are_distinct() {
        for pair in RECORDED.windows(2) {
            assert!(pair[0].0 < pair[1].0, "versions must increase: {pair:?}");
        }
        for (i, a) in RECORDED.iter().enumerate() {
            for b in &RECORDED[i + 1..] {
                assert_ne!(a.1, b.1, "one layout recorded twice: {a:?} {b:?}");
            }
        }
    }

    /// `0x0123_4567_89ab_cdef`, as rustfmt leaves it.
    fn hex(v: u64) -> std::string::String {
        let s = format!("{v:016x}");
        format!("0x{}_{}_{}_{}", &s[0..4], &s[4..8], &s[8..12], &s[12..16])
    }

    #[test]
    fn fingerprint_sees_a_field_move() {
        #[allow(dead_code)]
        #[repr(C)]
        struct A {
            x: u32,
            y: [u8; 4],
        }
        #[allow(dead_code)]
        #[repr(C)]
        struct B {
            y: [u8; 4],
            x: u32,
        }
        let a = field!(Hasher::new().layout::<A>("T"), A, x);
        let b = field!(Hasher::new().layout::<B>("T"), B, x);
        assert_ne!(a.0, b.0);
    }
}
