//! Random NSGs, VNets and packets for the property tests that hold NSG classification to the
//! reference evaluator: in userspace (`compile/tests.rs`, the compiled tables) and in the kernel
//! (`agent/tests/progrun_nsg.rs`, the loaded program). Both include this file by path; it names
//! the spec's types through `super`, where each includer imports them.
use std::{collections::HashSet, net::Ipv4Addr};

use ipnet::Ipv4Net;
use proptest::prelude::*;

use super::{
    AZURE_LOAD_BALANCER, Access, AddressPrefix, Direction, NetworkSecurityGroup, Packet, PortRange,
    Protocol, SecurityRule, ServiceTag, VirtualNetwork,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
/// The instance metadata address: exempt from NSGs in the dataplane, so packets go there too.
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Addresses cluster around a few anchors so that random prefixes overlap and nest, and so that
/// random packets land inside them, on their edges and outside.
const ANCHORS: [u32; 9] = [
    0x0a00_0000, // 10.0.0.0
    0x0a00_0100, // 10.0.1.0
    0x0a00_0200, // 10.0.2.0
    0x0a01_0000, // 10.1.0.0
    0xc0a8_3200, // 192.168.50.0
    0xac10_0000, // 172.16.0.0
    0x0808_0800, // 8.8.8.0
    0xa83f_8110, // 168.63.129.16
    0x0000_0000,
];

/// The most rules an NSG may have (validation's limit, as Azure's).
pub const MAX_NSG_RULES: usize = 1000;

pub fn address() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        4 => (prop::sample::select(&ANCHORS[..]), prop::sample::select(&[0u32, 0xff, 0xffff, 0xff_ffff][..]), any::<u32>())
            .prop_map(|(anchor, mask, noise)| Ipv4Addr::from(anchor ^ (noise & mask))),
        1 => any::<u32>().prop_map(Ipv4Addr::from),
        1 => Just(AZURE_LOAD_BALANCER),
        1 => Just(Ipv4Addr::BROADCAST),
    ]
}

pub fn prefix(lengths: &'static [u8]) -> impl Strategy<Value = Ipv4Net> {
    (address(), prop::sample::select(lengths))
        .prop_map(|(addr, len)| Ipv4Net::new(addr, len).unwrap().trunc())
}

pub const RULE_PREFIX_LENGTHS: &[u8] = &[0, 1, 7, 8, 12, 15, 16, 20, 24, 25, 28, 31, 32];

pub fn address_prefix() -> impl Strategy<Value = AddressPrefix> {
    prop_oneof![
        1 => Just(AddressPrefix::Any),
        1 => Just(AddressPrefix::Tag(ServiceTag::VirtualNetwork)),
        1 => Just(AddressPrefix::Tag(ServiceTag::Internet)),
        1 => Just(AddressPrefix::Tag(ServiceTag::AzureLoadBalancer)),
        6 => prefix(RULE_PREFIX_LENGTHS).prop_map(AddressPrefix::Prefix),
    ]
}

pub const INTERESTING_PORTS: [u16; 14] = [
    0, 1, 22, 25, 53, 80, 443, 1023, 1024, 8000, 8080, 32767, 32768, 65535,
];

pub fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(&INTERESTING_PORTS[..]),
        1 => (prop::sample::select(&INTERESTING_PORTS[..]), -2i32..=2)
            .prop_map(|(port, delta)| (i32::from(port) + delta).clamp(0, 65535) as u16),
        1 => any::<u16>(),
    ]
}

pub fn port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        1 => Just(PortRange::ANY),
        2 => port().prop_map(PortRange::single),
        3 => (port(), port()).prop_map(|(a, b)| PortRange { first: a.min(b), last: a.max(b) }),
    ]
}

pub fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(
        &[
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
            Protocol::Esp,
            Protocol::Ah,
            Protocol::Any,
        ][..],
    )
}

/// A rule without name and priority; one to three prefixes and ranges (the plural forms).
pub fn rule_body() -> impl Strategy<Value = SecurityRule> {
    (
        prop::sample::select(&[Direction::Inbound, Direction::Outbound][..]),
        prop::sample::select(&[Access::Allow, Access::Deny][..]),
        protocol(),
        prop::collection::vec(address_prefix(), 1..=3),
        prop::collection::vec(port_range(), 1..=3),
        prop::collection::vec(address_prefix(), 1..=3),
        prop::collection::vec(port_range(), 1..=3),
    )
        .prop_map(
            |(direction, access, protocol, src, sports, dst, dports)| SecurityRule {
                name: String::new(),
                description: None,
                priority: 0,
                direction,
                access,
                protocol,
                source_address_prefixes: src,
                source_port_ranges: sports,
                destination_address_prefixes: dst,
                destination_port_ranges: dports,
            },
        )
}

/// Priorities drawn with the range's ends weighted in.
pub fn priority() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 100u32..=4096,
        1 => prop::sample::select(&[100u32, 101, 4095, 4096][..]),
    ]
}

/// Mostly small NSGs; one in twenty near Azure's 1000-rule limit, so every bitmap word is used.
pub fn nsg_strategy() -> impl Strategy<Value = NetworkSecurityGroup> {
    let small = prop::collection::vec((rule_body(), priority()), 0..=24)
        .prop_map(|rules| (rules, None))
        .boxed();
    let large = (
        prop::collection::vec(
            (rule_body(), priority()),
            MAX_NSG_RULES - 40..=MAX_NSG_RULES,
        ),
        prop::option::of(prop::sample::select(
            &[Direction::Inbound, Direction::Outbound][..],
        )),
    )
        .boxed();
    prop_oneof![19 => small, 1 => large].prop_map(|(rules, one_direction)| {
        let mut taken = HashSet::new();
        let security_rules = rules
            .into_iter()
            .enumerate()
            .map(|(i, (rule, mut priority))| {
                while !taken.insert(priority) {
                    priority = if priority == 4096 { 100 } else { priority + 1 };
                }
                SecurityRule {
                    name: format!("r{i}"),
                    priority,
                    direction: one_direction.unwrap_or(rule.direction),
                    ..rule
                }
            })
            .collect();
        NetworkSecurityGroup {
            name: "random".into(),
            security_rules,
        }
    })
}

pub fn vnet_strategy() -> impl Strategy<Value = VirtualNetwork> {
    const LENGTHS: &[u8] = &[8, 12, 16, 20, 24, 28];
    (
        prop::collection::vec(prefix(LENGTHS), 1..=3),
        prop::collection::vec(prefix(LENGTHS), 0..=2),
    )
        .prop_map(|(space, connected)| {
            let mut taken: Vec<Ipv4Net> = Vec::new();
            let mut keep = |nets: Vec<Ipv4Net>| -> Vec<Ipv4Net> {
                nets.into_iter()
                    .filter(|n| {
                        let free = !taken.iter().any(|t| t.contains(n) || n.contains(t));
                        if free {
                            taken.push(*n);
                        }
                        free
                    })
                    .collect()
            };
            let address_space = keep(space);
            let connected_address_spaces = keep(connected);
            VirtualNetwork {
                name: "v".into(),
                address_space,
                connected_address_spaces,
                subnets: vec![],
            }
        })
}

pub fn packet() -> impl Strategy<Value = Packet> {
    let protocol = prop_oneof![
        3 => Just(TCP),
        2 => Just(UDP),
        1 => Just(ICMP),
        1 => prop::sample::select(&[50u8, 51, 0, 47, 132][..]),
        1 => any::<u8>(),
    ];
    let dst = prop_oneof![8 => address(), 1 => Just(METADATA)];
    (address(), dst, protocol, port(), port()).prop_map(
        |(src, dst, protocol, src_port, dst_port)| Packet {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        },
    )
}
