//! Nodes and their pools: names, interfaces, primary addresses, pool ranges, maxPods.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::addresses::{delegated_message, is_reserved_in_subnet, subnet_reserved_message};
use super::names::{host_name_problem, interface_name_problem};
use super::{Case, Checker};
use crate::spec::model::*;

/// Azure's limits (Azure networking limits page), as the contract quotes them.
pub const MAX_PODS_RANGE: std::ops::RangeInclusive<u32> = 10..=250;
pub const MAX_VNET_ADDRESSES: u64 = 65_536;

impl<'s> Checker<'s> {
    pub(super) fn nodes(&mut self) {
        let nodes = &self.spec.nodes;
        if nodes.is_empty() {
            self.report("nodes", "missing: give at least one node");
        }
        self.unique_names(
            nodes.iter().map(|n| n.name.as_str()),
            |i| format!("nodes[{i}].name"),
            Case::Sensitive,
        );
        let mut primaries: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut total_addresses: u64 = 0;
        for (i, node) in nodes.iter().enumerate() {
            let path = format!("nodes[{i}]");
            if let Some(message) = host_name_problem(&node.name) {
                self.report(format!("{path}.name"), message);
            }
            if let Some(message) = interface_name_problem(&node.interface) {
                self.report(format!("{path}.interface"), message);
            }
            if !MAX_PODS_RANGE.contains(&node.max_pods) {
                self.report(
                    format!("{path}.maxPods"),
                    format!("{} is outside 10..=250", node.max_pods),
                );
            }
            let ip = node.primary_ip_address;
            let ip_path = format!("{path}.primaryIpAddress");
            match self.subnet_of(ip) {
                None => self.report(&ip_path, format!("{ip} is in no subnet")),
                Some(subnet) if subnet.is_delegated() => {
                    self.report(&ip_path, delegated_message(ip, subnet))
                }
                Some(subnet) if is_reserved_in_subnet(&subnet.address_prefix, ip) => {
                    self.report(&ip_path, subnet_reserved_message(ip, subnet))
                }
                Some(_) => {}
            }
            match primaries.get(&ip) {
                Some(&k) => self.report(
                    &ip_path,
                    format!(
                        "{ip} is also the primaryIpAddress of nodes[{k}] ({})",
                        nodes[k].name
                    ),
                ),
                None => {
                    primaries.insert(ip, i);
                }
            }
            total_addresses += 1;
            for (j, range) in node.secondary_ip_addresses.iter().enumerate() {
                total_addresses += range.len();
                self.pool_range(i, j, range);
            }
        }
        if total_addresses > MAX_VNET_ADDRESSES {
            self.report(
                "nodes",
                format!(
                    "the nodes' primary and pool addresses number {total_addresses}, more than the {MAX_VNET_ADDRESSES} a virtual network allows"
                ),
            );
        }
        // More groups pinned (by a private `ip`) to a node's pool than the node runs pods.
        let mut pinned = vec![0u32; nodes.len()];
        for group in &self.spec.container_groups {
            let props = &group.properties;
            if let (IpAddressType::Private, Some(ip)) = (
                props.address_type(),
                props.ip_address.as_ref().and_then(|a| a.ip),
            ) && let Some(i) = nodes
                .iter()
                .position(|n| n.secondary_ip_addresses.iter().any(|r| r.contains(ip)))
            {
                pinned[i] += 1;
            }
        }
        for (i, (node, count)) in nodes.iter().zip(pinned).enumerate() {
            if count > node.max_pods {
                self.report(
                    format!("nodes[{i}].maxPods"),
                    format!(
                        "{count} container groups have an ip in this node's pool, more than its maxPods ({})",
                        node.max_pods
                    ),
                );
            }
        }
    }

    fn pool_range(&mut self, i: usize, j: usize, range: &AddressRange) {
        let nodes = &self.spec.nodes;
        let path = format!("nodes[{i}].secondaryIpAddresses[{j}]");
        if range.is_reversed() {
            self.report(
                path,
                format!("{range} is reversed: write {}-{}", range.last, range.first),
            );
            return;
        }
        let subnets = &self.spec.virtual_network.subnets;
        match subnets.iter().find(|s| range.is_inside(&s.address_prefix)) {
            None => match self
                .subnet_of(range.first)
                .or_else(|| self.subnet_of(range.last))
            {
                Some(subnet) => self.report(
                    &path,
                    format!(
                        "{range} crosses the edge of subnet {} ({})",
                        subnet.name, subnet.address_prefix
                    ),
                ),
                None => self.report(&path, format!("{range} is in no subnet")),
            },
            Some(subnet) => {
                let net = subnet.address_prefix;
                let first_four = (0..4)
                    .filter_map(|k| u32::from(net.network()).checked_add(k).map(Ipv4Addr::from));
                if let Some(reserved) = first_four
                    .chain([net.broadcast()])
                    .find(|addr| range.contains(*addr))
                {
                    self.report(
                        &path,
                        format!(
                            "{range} includes {}",
                            subnet_reserved_message(reserved, subnet)
                        ),
                    );
                }
            }
        }
        for (k, other) in nodes.iter().enumerate() {
            if range.contains(other.primary_ip_address) {
                let whose = if k == i {
                    "this node's".to_string()
                } else {
                    format!("nodes[{k}] ({})", other.name)
                };
                self.report(
                    &path,
                    format!(
                        "{range} includes {whose} primaryIpAddress {}",
                        other.primary_ip_address
                    ),
                );
            }
        }
        // Overlaps with pool ranges listed before this one.
        for (k, other) in nodes[..=i].iter().enumerate() {
            let earlier = if k == i {
                &other.secondary_ip_addresses[..j]
            } else {
                &other.secondary_ip_addresses[..]
            };
            if let Some((m, overlapping)) =
                earlier.iter().enumerate().find(|(_, r)| r.overlaps(range))
            {
                let whose = if k == i {
                    format!("secondaryIpAddresses[{m}] of the same node")
                } else {
                    format!(
                        "nodes[{k}].secondaryIpAddresses[{m}] ({}'s pool)",
                        other.name
                    )
                };
                self.report(&path, format!("{range} overlaps {overlapping}, {whose}"));
            }
        }
    }
}
