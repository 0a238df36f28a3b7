//! Reference evaluators: Azure's NSG and route semantics written the obvious way, straight
//! from the spec, sharing no code with the compiled tables. The property tests hold the
//! compiled lookups to these.
//!
//! What it does share with the implementation, deliberately small: the spec's types
//! (`crate::spec`), `PortRange::contains` and `PortRange::is_any` (a range's bounds), the
//! `AZURE_LOAD_BALANCER` address, and `ipnet`'s `Ipv4Net::contains`. It has its own
//! `VirtualNetwork`/`Internet` tag test (`in_virtual_network`) and its own default rules; the
//! property tests build the implementation's side (service tags, classifiers) through the
//! production `compile_valid`, not through helpers of their own.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::spec::{
    AZURE_LOAD_BALANCER, Access, AddressPrefix, Direction, NetworkSecurityGroup, NextHopType,
    Protocol, RouteTable, SecurityRule, ServiceTag, VirtualNetwork,
};

/// The header fields an NSG looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Ignored unless the protocol is TCP or UDP.
    pub src_port: u16,
    pub dst_port: u16,
}

/// The rule that decided a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub rule: String,
    pub priority: u32,
    pub access: Access,
}

/// Azure's NSG evaluation: the rules of the direction by priority, the first match decides;
/// if none matches, the default rules decide.
pub fn evaluate_nsg(
    nsg: &NetworkSecurityGroup,
    direction: Direction,
    vnet: &VirtualNetwork,
    packet: &Packet,
) -> Decision {
    let mut rules: Vec<&SecurityRule> = nsg
        .security_rules
        .iter()
        .filter(|r| r.direction == direction)
        .collect();
    rules.sort_by_key(|r| r.priority);
    for rule in rules {
        if rule_matches(rule, vnet, packet) {
            return Decision {
                rule: rule.name.clone(),
                priority: rule.priority,
                access: rule.access,
            };
        }
    }
    let in_vnet = |addr| in_virtual_network(vnet, addr);
    let decision = |rule: &str, priority, access| Decision {
        rule: rule.to_string(),
        priority,
        access,
    };
    match direction {
        Direction::Inbound if in_vnet(packet.src) && in_vnet(packet.dst) => {
            decision("AllowVnetInBound", 65000, Access::Allow)
        }
        Direction::Inbound if packet.src == AZURE_LOAD_BALANCER => {
            decision("AllowAzureLoadBalancerInBound", 65001, Access::Allow)
        }
        Direction::Inbound => decision("DenyAllInBound", 65500, Access::Deny),
        Direction::Outbound if in_vnet(packet.src) && in_vnet(packet.dst) => {
            decision("AllowVnetOutBound", 65000, Access::Allow)
        }
        Direction::Outbound if !in_vnet(packet.dst) => {
            decision("AllowInternetOutBound", 65001, Access::Allow)
        }
        Direction::Outbound => decision("DenyAllOutBound", 65500, Access::Deny),
    }
}

fn in_virtual_network(vnet: &VirtualNetwork, addr: Ipv4Addr) -> bool {
    vnet.address_space
        .iter()
        .chain(&vnet.connected_address_spaces)
        .any(|net| net.contains(&addr))
}

pub fn rule_matches(rule: &SecurityRule, vnet: &VirtualNetwork, packet: &Packet) -> bool {
    let protocol = match rule.protocol {
        Protocol::Any => true,
        Protocol::Tcp => packet.protocol == 6,
        Protocol::Udp => packet.protocol == 17,
        Protocol::Icmp => packet.protocol == 1,
        Protocol::Esp => packet.protocol == 50,
        Protocol::Ah => packet.protocol == 51,
    };
    let address = |prefixes: &[AddressPrefix], addr: Ipv4Addr| {
        prefixes.iter().any(|prefix| match prefix {
            AddressPrefix::Any => true,
            AddressPrefix::Prefix(net) => net.contains(&addr),
            AddressPrefix::Tag(ServiceTag::VirtualNetwork) => in_virtual_network(vnet, addr),
            AddressPrefix::Tag(ServiceTag::Internet) => !in_virtual_network(vnet, addr),
            AddressPrefix::Tag(ServiceTag::AzureLoadBalancer) => addr == AZURE_LOAD_BALANCER,
        })
    };
    let has_ports = matches!(packet.protocol, 6 | 17);
    let ports = |ranges: &[crate::spec::PortRange], port: u16| {
        if has_ports {
            ranges.iter().any(|range| range.contains(port))
        } else {
            // No ports in the packet: only a `*` port condition holds.
            ranges.iter().any(|range| range.is_any())
        }
    };
    protocol
        && address(&rule.source_address_prefixes, packet.src)
        && address(&rule.destination_address_prefixes, packet.dst)
        && ports(&rule.source_port_ranges, packet.src_port)
        && ports(&rule.destination_port_ranges, packet.dst_port)
}

/// The route Azure picks for `dst` in a subnet using `table` (or none): the longest prefix
/// among the system routes and the user routes; a user route beats a system route of the
/// same prefix. Returns the prefix, next hop type and appliance address.
pub fn next_hop(
    vnet: &VirtualNetwork,
    table: Option<&RouteTable>,
    dst: Ipv4Addr,
) -> (Ipv4Net, NextHopType, Option<Ipv4Addr>) {
    let mut best: (Ipv4Net, NextHopType, Option<Ipv4Addr>) =
        (Ipv4Net::default(), NextHopType::Internet, None);
    for net in &vnet.address_space {
        if net.contains(&dst) && net.prefix_len() > best.0.prefix_len() {
            best = (*net, NextHopType::VnetLocal, None);
        }
    }
    for net in &vnet.connected_address_spaces {
        if net.contains(&dst) && net.prefix_len() > best.0.prefix_len() {
            best = (*net, NextHopType::VirtualNetworkGateway, None);
        }
    }
    let routes = table.map(|t| t.routes.as_slice()).unwrap_or_default();
    for route in routes {
        // `>=`: a user route wins a tie with a system route.
        if route.address_prefix.contains(&dst)
            && route.address_prefix.prefix_len() >= best.0.prefix_len()
        {
            best = (
                route.address_prefix,
                route.next_hop_type,
                route.next_hop_ip_address,
            );
        }
    }
    best
}
