//! Container groups: names, subnet, containers and their ports, private and public
//! addresses, DNS name labels.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::addresses::reserved_range;
use super::names::{aci_name_problem, is_dns_label};
use super::{Case, Checker};
use crate::spec::model::*;
use crate::spec::suggest::did_you_mean;

impl<'s> Checker<'s> {
    pub(super) fn container_groups(&mut self) {
        let groups = &self.spec.container_groups;
        self.unique_names(
            groups.iter().map(|g| g.name.as_str()),
            |i| format!("containerGroups[{i}].name"),
            Case::Sensitive,
        );
        let mut private_ips: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut public_ips: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut dns_labels: HashMap<(String, String), usize> = HashMap::new();
        for (i, group) in groups.iter().enumerate() {
            let path = format!("containerGroups[{i}]");
            if let Some(message) = aci_name_problem(&group.name) {
                self.report(format!("{path}.name"), message);
            }
            let props = &group.properties;
            let path = format!("{path}.properties");
            match props.os_type {
                None => self.report(format!("{path}.osType"), "missing: ACI requires it (Linux)"),
                Some(OsType::Windows) => self.report(
                    format!("{path}.osType"),
                    "Windows containers cannot run on a vnetd node, which is Linux",
                ),
                Some(OsType::Linux) => {}
            }
            let subnet = self.group_subnet(&path, props);
            self.group_containers(&path, props);
            let Some(address) = &props.ip_address else {
                continue;
            };
            let address_path = format!("{path}.ipAddress");
            self.exposed_ports(&address_path, props, address);
            match address.kind {
                IpAddressType::Public => {
                    if let Some(subnet) = subnet.filter(|s| s.is_delegated()) {
                        self.report(
                            format!("{address_path}.type"),
                            format!(
                                "a Public group cannot be in subnet {}, which is delegated to {}",
                                subnet.name, CONTAINER_INSTANCE_DELEGATION
                            ),
                        );
                    }
                    match address.ip {
                        None => self.report(
                            format!("{address_path}.ip"),
                            "missing: a Public group needs its public address",
                        ),
                        Some(ip) => {
                            self.public_ip(&format!("{address_path}.ip"), ip);
                            self.first_use(
                                &mut public_ips,
                                ip,
                                i,
                                &format!("{address_path}.ip"),
                                "public ip",
                            );
                        }
                    }
                }
                IpAddressType::Private => {
                    if address.dns_name_label.is_some() {
                        self.report(
                            format!("{address_path}.dnsNameLabel"),
                            "only a Public group has a DNS name",
                        );
                    }
                    if let Some(ip) = address.ip {
                        let ip_path = format!("{address_path}.ip");
                        self.private_ip(&ip_path, ip, subnet);
                        self.first_use(&mut private_ips, ip, i, &ip_path, "ip");
                    }
                }
            }
            if let Some(label) = &address.dns_name_label {
                let label_path = format!("{address_path}.dnsNameLabel");
                if !is_dns_label(label) {
                    self.report(
                        &label_path,
                        format!("{label:?} is not a DNS label: use 1-63 letters, digits and hyphens, starting and ending with a letter or digit"),
                    );
                }
                // Azure spells a location in any case and with or without spaces.
                let location = group
                    .location
                    .as_deref()
                    .unwrap_or_default()
                    .to_ascii_lowercase()
                    .replace(' ', "");
                let key = (location, label.to_ascii_lowercase());
                match dns_labels.get(&key) {
                    Some(&k) => self.report(
                        &label_path,
                        format!(
                            "{label:?} is already used in {} by containerGroups[{k}] ({})",
                            group.location.as_deref().unwrap_or("the same location"),
                            groups[k].name
                        ),
                    ),
                    None => {
                        dns_labels.insert(key, i);
                    }
                }
            }
        }
    }

    /// Records the first group using an address, reports later ones.
    fn first_use(
        &mut self,
        seen: &mut HashMap<Ipv4Addr, usize>,
        ip: Ipv4Addr,
        i: usize,
        path: &str,
        what: &str,
    ) {
        match seen.get(&ip) {
            Some(&k) => {
                let name = &self.spec.container_groups[k].name;
                self.report(
                    path,
                    format!("{ip} is also the {what} of containerGroups[{k}] ({name})"),
                );
            }
            None => {
                seen.insert(ip, i);
            }
        }
    }

    /// The group's one subnet, if it names one that exists.
    fn group_subnet(&mut self, path: &str, props: &ContainerGroupProperties) -> Option<&'s Subnet> {
        match props.subnet_ids.len() {
            0 => {
                self.report(
                    format!("{path}.subnetIds"),
                    "missing: a group takes its address from a subnet, e.g. subnetIds: [{ id: aci }]",
                );
                return None;
            }
            1 => {}
            n => self.report(
                format!("{path}.subnetIds"),
                format!("{n} subnets: a group is in exactly one"),
            ),
        }
        let mut found = None;
        for (k, subnet_id) in props.subnet_ids.iter().enumerate() {
            match self.spec.subnet(&subnet_id.id) {
                Some(subnet) => {
                    if found.is_none() {
                        found = Some(subnet);
                    }
                }
                None => {
                    let names = self
                        .spec
                        .virtual_network
                        .subnets
                        .iter()
                        .map(|s| s.name.as_str());
                    let hint = did_you_mean(&subnet_id.id, names);
                    self.report(
                        format!("{path}.subnetIds[{k}].id"),
                        format!("no subnet named {:?}{hint}", subnet_id.id),
                    );
                }
            }
        }
        found
    }

    fn group_containers(&mut self, path: &str, props: &ContainerGroupProperties) {
        if props.containers.is_empty() {
            self.report(
                format!("{path}.containers"),
                "missing: a group needs at least one container",
            );
        }
        self.unique_names(
            props.containers.iter().map(|c| c.name.as_str()),
            |c| format!("{path}.containers[{c}].name"),
            Case::Sensitive,
        );
        // One network namespace: a port belongs to one container.
        let mut declared: HashMap<Port, usize> = HashMap::new();
        for (c, container) in props.containers.iter().enumerate() {
            let container_path = format!("{path}.containers[{c}]");
            if let Some(message) = aci_name_problem(&container.name) {
                self.report(format!("{container_path}.name"), message);
            }
            for (k, port) in container.properties.ports.iter().enumerate() {
                let port_path = format!("{container_path}.properties.ports[{k}]");
                if port.port == 0 {
                    self.report(format!("{port_path}.port"), "0 is outside 1..=65535");
                    continue;
                }
                match declared.get(port) {
                    Some(&other) => {
                        let owner = &props.containers[other].name;
                        self.report(
                            port_path,
                            format!(
                                "{port} is also declared by container {owner:?} (containers[{other}]): the containers of a group share one port space"
                            ),
                        );
                    }
                    None => {
                        declared.insert(*port, c);
                    }
                }
            }
        }
    }

    fn exposed_ports(
        &mut self,
        address_path: &str,
        props: &ContainerGroupProperties,
        address: &IpAddress,
    ) {
        let mut exposed: HashMap<Port, usize> = HashMap::new();
        for (k, port) in address.ports.iter().enumerate() {
            let port_path = format!("{address_path}.ports[{k}]");
            if port.port == 0 {
                self.report(format!("{port_path}.port"), "0 is outside 1..=65535");
                continue;
            }
            if let Some(&other) = exposed.get(port) {
                self.report(
                    port_path,
                    format!("{port} is already exposed by ports[{other}]"),
                );
                continue;
            }
            exposed.insert(*port, k);
            let declared = props
                .containers
                .iter()
                .any(|c| c.properties.ports.contains(port));
            if !declared {
                self.report(
                    port_path,
                    format!("{port} is not declared by any container"),
                );
            }
        }
    }

    fn public_ip(&mut self, path: &str, ip: Ipv4Addr) {
        let host = Ipv4Net::from(ip);
        if let Some((reserved, what)) = reserved_range(&host) {
            self.report(
                path,
                format!("{ip} is in {reserved} ({what}), not a public address"),
            );
        } else if let Some(net) = self
            .spec
            .vnet_prefixes()
            .into_iter()
            .find(|net| net.contains(&ip))
        {
            self.report(
                path,
                format!(
                    "{ip} is inside the virtual network ({net}): a public address lies outside it"
                ),
            );
        }
    }

    fn private_ip(&mut self, path: &str, ip: Ipv4Addr, subnet: Option<&Subnet>) {
        if let Some(subnet) = subnet
            && !subnet.address_prefix.contains(&ip)
        {
            self.report(
                path,
                format!(
                    "{ip} is outside subnet {} ({})",
                    subnet.name, subnet.address_prefix
                ),
            );
            return;
        }
        let pooled = self.spec.nodes.iter().any(|node| {
            node.secondary_ip_addresses
                .iter()
                .any(|range| range.contains(ip))
        });
        if !pooled {
            self.report(
                path,
                format!("{ip} is in no node's pool (secondaryIpAddresses)"),
            );
        }
    }
}
