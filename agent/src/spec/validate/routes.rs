//! Route tables and their routes: names, one route per prefix, next hops.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::addresses::{
    delegated_message, is_reserved_in_subnet, reserved_range, subnet_reserved_message,
};
use super::{Case, Checker};
use crate::spec::model::*;

/// Azure's limit (Azure networking limits page), as the contract quotes it.
pub const MAX_ROUTES_PER_TABLE: usize = 400;

impl<'s> Checker<'s> {
    pub(super) fn route_tables(&mut self) {
        let tables = &self.spec.route_tables;
        self.unique_names(
            tables.iter().map(|t| t.name.as_str()),
            |i| format!("routeTables[{i}].name"),
            Case::Insensitive,
        );
        for (i, table) in tables.iter().enumerate() {
            let path = format!("routeTables[{i}]");
            self.azure_name(&format!("{path}.name"), &table.name, 80);
            if table.routes.len() > MAX_ROUTES_PER_TABLE {
                self.report(
                    format!("{path}.routes"),
                    format!(
                        "{} routes, more than the {MAX_ROUTES_PER_TABLE} Azure allows",
                        table.routes.len()
                    ),
                );
            }
            self.unique_names(
                table.routes.iter().map(|r| r.name.as_str()),
                |j| format!("{path}.routes[{j}].name"),
                Case::Insensitive,
            );
            let mut prefixes: HashMap<Ipv4Net, usize> = HashMap::new();
            for (j, route) in table.routes.iter().enumerate() {
                let route_path = format!("{path}.routes[{j}]");
                self.azure_name(&format!("{route_path}.name"), &route.name, 80);
                match prefixes.get(&route.address_prefix) {
                    Some(&k) => self.report(
                        format!("{route_path}.addressPrefix"),
                        format!(
                            "{} is also the prefix of route {:?} (routes[{k}]): a table holds one route per prefix",
                            route.address_prefix, table.routes[k].name
                        ),
                    ),
                    None => {
                        prefixes.insert(route.address_prefix, j);
                    }
                }
                match (route.next_hop_type, route.next_hop_ip_address) {
                    (NextHopType::VirtualAppliance, None) => self.report(
                        format!("{route_path}.nextHopIpAddress"),
                        "missing: required when nextHopType is VirtualAppliance",
                    ),
                    (NextHopType::VirtualAppliance, Some(ip)) => {
                        self.appliance_address(&route_path, ip)
                    }
                    (other, Some(_)) => self.report(
                        format!("{route_path}.nextHopIpAddress"),
                        format!(
                            "only allowed when nextHopType is VirtualAppliance (it is {other})"
                        ),
                    ),
                    (_, None) => {}
                }
            }
        }
    }

    /// A virtual appliance is a host in the network: not a reserved address, and not in a
    /// subnet delegated to container groups.
    fn appliance_address(&mut self, route_path: &str, ip: Ipv4Addr) {
        let path = format!("{route_path}.nextHopIpAddress");
        if let Some((reserved, what)) = reserved_range(&Ipv4Net::from(ip)) {
            self.report(path, format!("{ip} is in {reserved} ({what})"));
            return;
        }
        if let Some(subnet) = self.subnet_of(ip) {
            if subnet.is_delegated() {
                self.report(path, delegated_message(ip, subnet));
            } else if is_reserved_in_subnet(&subnet.address_prefix, ip) {
                self.report(path, subnet_reserved_message(ip, subnet));
            }
        }
    }
}
