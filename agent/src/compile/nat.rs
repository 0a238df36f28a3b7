//! Outbound NAT and public addresses, compiled for one node: the destinations never
//! masqueraded, the SNAT port range and idle timeout, and the Public groups this node serves.
//!
//! A Public group without a pinned private address may run on any node with a pool in its
//! subnet, so "placed on this node" means "attached here": [`public_mappings`] takes the
//! attached groups' private addresses (the endpoints) besides the compiled candidates.
use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use ipnet::Ipv4Net;

use super::{CompiledGroup, LINK_LOCAL};
use crate::spec::{IpAddressType, PortRange, Spec, TransportProtocol};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// The destinations a pod's traffic keeps its own address to: the address space, the
/// connected spaces, `outboundNat.nonMasqueradeCidrs` and 169.254.0.0/16, in that order, with
/// host bits cleared, duplicates and prefixes inside another one dropped (the LPM answers the
/// same for them; fewer entries in NO_MASQUERADE).
pub fn no_masquerade(spec: &Spec) -> Vec<Ipv4Net> {
    let candidates: Vec<Ipv4Net> = spec
        .vnet_prefixes()
        .into_iter()
        .chain(spec.outbound_nat.non_masquerade_cidrs.iter().copied())
        .chain([LINK_LOCAL])
        .map(|net| net.trunc())
        .collect();
    let mut kept: Vec<Ipv4Net> = Vec::new();
    for (i, net) in candidates.iter().enumerate() {
        // Covered by another candidate: a strictly shorter one, or an equal one listed earlier.
        let covered = candidates.iter().enumerate().any(|(j, other)| {
            other.contains(net)
                && (other.prefix_len() < net.prefix_len() || (other == net && j < i))
        });
        if !covered {
            kept.push(*net);
        }
    }
    kept
}

/// `outboundNat.portRange`: the source ports SNAT allocates.
pub fn snat_ports(spec: &Spec) -> PortRange {
    spec.outbound_nat.port_range
}

/// `outboundNat.idleTimeoutInMinutes`: how long an idle established TCP or UDP flow lives.
pub fn idle_timeout(spec: &Spec) -> Duration {
    Duration::from_secs(u64::from(spec.outbound_nat.idle_timeout_in_minutes) * 60)
}

/// A Public group served by this node: its public address, translated 1:1 to its private one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicMapping {
    pub group: String,
    pub public_ip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
    /// The exposed (IP protocol number, port) pairs, sorted; inbound traffic to any other is
    /// dropped.
    pub ports: Vec<(u8, u16)>,
}

/// The Public groups among `groups` (this node's candidates) that are attached here, by
/// public address. `attached` gives the private address of an attached group by name.
pub fn public_mappings(
    groups: &[CompiledGroup],
    attached: impl Fn(&str) -> Option<Ipv4Addr>,
) -> BTreeMap<Ipv4Addr, PublicMapping> {
    groups
        .iter()
        .filter(|g| g.address_type == IpAddressType::Public)
        .filter_map(|g| {
            let public_ip = g.public_ip?;
            let private_ip = attached(&g.name)?;
            let ports = exposed_ports(g);
            Some((
                public_ip,
                PublicMapping {
                    group: g.name.clone(),
                    public_ip,
                    private_ip,
                    ports,
                },
            ))
        })
        .collect()
}

/// A group's `ipAddress.ports` as (IP protocol number, port), sorted, each once: the only
/// ports reachable from outside the group.
pub fn exposed_ports(group: &CompiledGroup) -> Vec<(u8, u16)> {
    let mut ports: Vec<(u8, u16)> = group
        .ports
        .iter()
        .map(|p| {
            let proto = match p.protocol {
                TransportProtocol::Tcp => IPPROTO_TCP,
                TransportProtocol::Udp => IPPROTO_UDP,
            };
            (proto, p.port)
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The public address of group `name`, if it is a Public group among `groups`.
pub fn public_ip_of(groups: &[CompiledGroup], name: &str) -> Option<Ipv4Addr> {
    groups
        .iter()
        .find(|g| g.name == name && g.address_type == IpAddressType::Public)
        .and_then(|g| g.public_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Port, parse_str};

    const CONTRACT: &str = include_str!("../../../examples/contract.yaml");

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn spec() -> Spec {
        parse_str(CONTRACT).expect("the contract example parses")
    }

    #[test]
    fn nat_no_masquerade_is_the_vnet_connected_spaces_cidrs_and_link_local() {
        assert_eq!(
            no_masquerade(&spec()),
            [
                net("10.0.0.0/16"),
                net("10.1.0.0/16"),
                net("192.168.50.0/24"),
                net("172.16.0.0/12"),
                net("169.254.0.0/16")
            ]
        );
    }

    #[test]
    fn nat_no_masquerade_drops_duplicates_and_covered_prefixes() {
        let mut spec = spec();
        spec.outbound_nat.non_masquerade_cidrs = vec![
            net("10.0.5.0/24"),   // inside the address space
            net("172.16.0.0/12"), // listed twice
            net("172.16.0.0/12"),
            net("172.20.1.7/16"),  // host bits set, inside 172.16/12
            net("169.254.0.0/16"), // link-local is always there
            net("192.168.0.0/16"), // covers the connected space 192.168.50/24
            net("100.64.0.0/10"),
        ];
        assert_eq!(
            no_masquerade(&spec),
            [
                net("10.0.0.0/16"),
                net("10.1.0.0/16"),
                net("172.16.0.0/12"),
                net("169.254.0.0/16"),
                net("192.168.0.0/16"),
                net("100.64.0.0/10"),
            ]
        );
    }

    #[test]
    fn nat_port_range_and_idle_timeout_follow_the_spec_and_its_defaults() {
        let mut spec = spec();
        assert_eq!(
            snat_ports(&spec),
            PortRange {
                first: 32768,
                last: 65535
            }
        );
        assert_eq!(idle_timeout(&spec), Duration::from_secs(240));
        spec.outbound_nat.port_range = PortRange {
            first: 40000,
            last: 40015,
        };
        spec.outbound_nat.idle_timeout_in_minutes = 30;
        assert_eq!(
            snat_ports(&spec),
            PortRange {
                first: 40000,
                last: 40015
            }
        );
        assert_eq!(idle_timeout(&spec), Duration::from_secs(1800));
    }

    #[test]
    fn nat_public_groups_are_served_where_they_are_attached() {
        let compiled = crate::compile::compile(&spec(), "node-1").unwrap();
        let groups = &compiled.container_groups;
        // Nothing attached: no public address is served.
        assert!(public_mappings(groups, |_| None).is_empty());
        // "web" (Public, 203.0.113.20) attached at 10.0.2.10; "api" (Private) attached too.
        let attached = |name: &str| match name {
            "web" => Some(ip("10.0.2.10")),
            "api" => Some(ip("10.0.1.10")),
            _ => None,
        };
        let mappings = public_mappings(groups, attached);
        assert_eq!(mappings.len(), 1, "{mappings:?}");
        let web = &mappings[&ip("203.0.113.20")];
        assert_eq!(web.group, "web");
        assert_eq!(web.private_ip, ip("10.0.2.10"));
        let declared: Vec<(u8, u16)> = groups
            .iter()
            .find(|g| g.name == "web")
            .unwrap()
            .ports
            .iter()
            .map(|p: &Port| {
                let proto = if p.protocol == TransportProtocol::Tcp {
                    IPPROTO_TCP
                } else {
                    IPPROTO_UDP
                };
                (proto, p.port)
            })
            .collect();
        assert!(
            !declared.is_empty(),
            "the contract's web group exposes ports"
        );
        for port in &declared {
            assert!(web.ports.contains(port), "{port:?} exposed");
        }
        assert_eq!(public_ip_of(groups, "web"), Some(ip("203.0.113.20")));
        assert_eq!(public_ip_of(groups, "api"), None);
    }

    #[test]
    fn nat_public_ports_keep_the_protocol() {
        let group = CompiledGroup {
            name: "g".into(),
            subnet_id: 1,
            address_type: IpAddressType::Public,
            private_ip: None,
            public_ip: Some(ip("198.51.100.7")),
            ports: vec![
                Port {
                    protocol: TransportProtocol::Udp,
                    port: 53,
                },
                Port {
                    protocol: TransportProtocol::Tcp,
                    port: 53,
                },
                Port {
                    protocol: TransportProtocol::Tcp,
                    port: 80,
                },
            ],
            dns_name_label: None,
            location: None,
        };
        let mappings = public_mappings(&[group], |_| Some(ip("10.0.2.20")));
        assert_eq!(
            mappings[&ip("198.51.100.7")].ports,
            [(IPPROTO_TCP, 53), (IPPROTO_TCP, 80), (IPPROTO_UDP, 53)]
        );
    }
}
