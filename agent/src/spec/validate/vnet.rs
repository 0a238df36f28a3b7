//! The virtual network: its name, address spaces and subnets, and the subnets' references
//! to security groups and route tables.

use ipnet::Ipv4Net;

use super::addresses::{overlaps, reserved_range};
use super::{Case, Checker};
use crate::spec::suggest::did_you_mean;

/// Azure's smallest IPv4 subnet.
pub const MAX_SUBNET_PREFIX_LEN: u8 = 29;

impl<'s> Checker<'s> {
    pub(super) fn virtual_network(&mut self) {
        let vnet = &self.spec.virtual_network;
        // Azure: 2-64 characters for a virtual network.
        if vnet.name.len() < 2 {
            self.report(
                "virtualNetwork.name",
                format!("{:?} is too short: use 2-64 characters", vnet.name),
            );
        } else {
            self.azure_name("virtualNetwork.name", &vnet.name, 64);
        }
        if vnet.address_space.is_empty() {
            self.report(
                "virtualNetwork.addressSpace",
                "missing: give at least one prefix",
            );
        }
        // Address space and connected spaces: no overlaps among all of them, nothing reserved.
        let spaces: Vec<(String, Ipv4Net)> = vnet
            .address_space
            .iter()
            .enumerate()
            .map(|(i, net)| (format!("virtualNetwork.addressSpace[{i}]"), *net))
            .chain(
                vnet.connected_address_spaces
                    .iter()
                    .enumerate()
                    .map(|(i, net)| (format!("virtualNetwork.connectedAddressSpaces[{i}]"), *net)),
            )
            .collect();
        for (i, (path, net)) in spaces.iter().enumerate() {
            if let Some((reserved, what)) = reserved_range(net) {
                self.report(
                    path,
                    format!("{net} overlaps {reserved} ({what}), which Azure reserves"),
                );
            }
            if let Some((other_path, other)) =
                spaces[..i].iter().find(|(_, other)| overlaps(net, other))
            {
                self.report(path, format!("{net} overlaps {other_path} ({other})"));
            }
        }
        if vnet.subnets.is_empty() {
            self.report(
                "virtualNetwork.subnets",
                "missing: give at least one subnet",
            );
        }
        self.unique_names(
            vnet.subnets.iter().map(|s| s.name.as_str()),
            |i| format!("virtualNetwork.subnets[{i}].name"),
            Case::Insensitive,
        );
        for (i, subnet) in vnet.subnets.iter().enumerate() {
            let path = format!("virtualNetwork.subnets[{i}]");
            self.azure_name(&format!("{path}.name"), &subnet.name, 80);
            let prefix = subnet.address_prefix;
            let prefix_path = format!("{path}.addressPrefix");
            if !vnet
                .address_space
                .iter()
                .any(|space| space.contains(&prefix))
            {
                let spaces: Vec<String> =
                    vnet.address_space.iter().map(Ipv4Net::to_string).collect();
                self.report(
                    &prefix_path,
                    format!(
                        "{prefix} is outside the address space ({})",
                        spaces.join(", ")
                    ),
                );
            }
            if prefix.prefix_len() > MAX_SUBNET_PREFIX_LEN {
                self.report(
                    &prefix_path,
                    format!("{prefix} is too small: Azure's smallest subnet is a /{MAX_SUBNET_PREFIX_LEN}"),
                );
            }
            if let Some((j, other)) = vnet.subnets[..i]
                .iter()
                .enumerate()
                .find(|(_, other)| overlaps(&prefix, &other.address_prefix))
            {
                self.report(
                    &prefix_path,
                    format!(
                        "{prefix} overlaps virtualNetwork.subnets[{j}] ({}, {})",
                        other.name, other.address_prefix
                    ),
                );
            }
            if let Some(nsg) = &subnet.network_security_group
                && self.spec.network_security_group_index(nsg).is_none()
            {
                let names = self
                    .spec
                    .network_security_groups
                    .iter()
                    .map(|n| n.name.as_str());
                let hint = did_you_mean(nsg, names);
                self.report(
                    format!("{path}.networkSecurityGroup"),
                    format!("no network security group named {nsg:?}{hint}"),
                );
            }
            if let Some(table) = &subnet.route_table
                && self.spec.route_table_index(table).is_none()
            {
                let names = self.spec.route_tables.iter().map(|t| t.name.as_str());
                let hint = did_you_mean(table, names);
                self.report(
                    format!("{path}.routeTable"),
                    format!("no route table named {table:?}{hint}"),
                );
            }
        }
    }
}
