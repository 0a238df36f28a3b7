//! Azure's address rules that several parts of the spec share: reserved ranges, overlaps, the
//! addresses Azure keeps in every subnet.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::spec::model::*;

/// Ranges Azure refuses in a virtual network's address space (plus 0.0.0.0/8, which no host
/// can use as a source).
const RESERVED_RANGES: &[(Ipv4Net, &str)] = &[
    (
        Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
        "\"this network\"",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
        "loopback",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
        "link-local",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(168, 63, 129, 16), 32),
        "Azure's platform address",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
        "multicast",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(255, 255, 255, 255), 32),
        "broadcast",
    ),
];

pub(super) fn reserved_range(net: &Ipv4Net) -> Option<(Ipv4Net, &'static str)> {
    RESERVED_RANGES
        .iter()
        .find(|(reserved, _)| overlaps(net, reserved))
        .copied()
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Azure reserves the first four addresses of every subnet (network, gateway, two for DNS)
/// and the last (broadcast).
pub fn is_reserved_in_subnet(subnet: &Ipv4Net, addr: Ipv4Addr) -> bool {
    let offset = u32::from(addr).wrapping_sub(u32::from(subnet.network()));
    subnet.contains(&addr) && (offset < 4 || addr == subnet.broadcast())
}

pub(super) fn delegated_message(ip: Ipv4Addr, subnet: &Subnet) -> String {
    format!(
        "{ip} is in subnet {}, which is delegated to {} and holds container groups only",
        subnet.name, CONTAINER_INSTANCE_DELEGATION
    )
}

pub(super) fn subnet_reserved_message(ip: Ipv4Addr, subnet: &Subnet) -> String {
    format!(
        "{ip}, which Azure reserves in subnet {} ({}: the first four addresses and the last)",
        subnet.name, subnet.address_prefix
    )
}
