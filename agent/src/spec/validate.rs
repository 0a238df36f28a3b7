//! The checks that relate fields to each other or to Azure's limits. Each check reports with
//! the path of the field at fault and, for conflicts, names the other party too.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Problem;
use super::model::*;
use super::suggest::did_you_mean;

/// Azure's limits (Azure networking limits page), as the contract quotes them.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u32> = 100..=4096;
pub const MAX_RULES_PER_NSG: usize = 1000;
pub const MAX_PREFIXES_PER_NSG: usize = 4000;
pub const MAX_ROUTES_PER_TABLE: usize = 400;
pub const MAX_PODS_RANGE: std::ops::RangeInclusive<u32> = 10..=250;
pub const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 4..=120;
pub const MAX_VNET_ADDRESSES: u64 = 65_536;
/// Azure's smallest IPv4 subnet.
pub const MAX_SUBNET_PREFIX_LEN: u8 = 29;
/// SNAT ports stay clear of the well-known ports the node itself may serve.
pub const MIN_SNAT_PORT: u16 = 1024;
const MAX_DESCRIPTION_LEN: usize = 140;

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

fn reserved_range(net: &Ipv4Net) -> Option<(Ipv4Net, &'static str)> {
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

/// Every problem of `spec`, in document order of the checks (network, NSGs, route tables,
/// nodes, outbound NAT, container groups).
pub fn validate(spec: &Spec) -> Vec<Problem> {
    let mut checker = Checker {
        spec,
        problems: Vec::new(),
    };
    checker.api_version();
    checker.virtual_network();
    checker.network_security_groups();
    checker.route_tables();
    checker.nodes();
    checker.outbound_nat();
    checker.container_groups();
    checker.problems
}

struct Checker<'s> {
    spec: &'s Spec,
    problems: Vec<Problem>,
}

/// How names of one kind are compared for uniqueness.
#[derive(Clone, Copy)]
enum Case {
    /// Azure resource names.
    Insensitive,
    /// Linux host names, container names.
    Sensitive,
}

impl<'s> Checker<'s> {
    fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// Reports each name that repeats an earlier one, pointing at the first.
    fn unique_names<'a>(&mut self, names: impl IntoIterator<Item = (String, &'a str)>, case: Case) {
        let mut first: HashMap<String, String> = HashMap::new();
        for (path, name) in names {
            let key = match case {
                Case::Insensitive => name.to_ascii_lowercase(),
                Case::Sensitive => name.to_string(),
            };
            match first.get(&key) {
                Some(earlier) => {
                    let earlier = earlier.trim_end_matches(".name");
                    self.report(path, format!("{name:?} is already the name of {earlier}"))
                }
                None => {
                    first.insert(key, path);
                }
            }
        }
    }

    fn azure_name(&mut self, path: &str, name: &str, max: usize) {
        if let Some(message) = azure_name_problem(name, max) {
            self.report(path, message);
        }
    }

    fn api_version(&mut self) {
        if self.spec.api_version != API_VERSION {
            self.report(
                "apiVersion",
                format!(
                    "{:?} is not supported, expected {API_VERSION}",
                    self.spec.api_version
                ),
            );
        }
    }

    fn virtual_network(&mut self) {
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
            vnet.subnets
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("virtualNetwork.subnets[{i}].name"), s.name.as_str())),
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

    fn network_security_groups(&mut self) {
        let nsgs = &self.spec.network_security_groups;
        self.unique_names(
            nsgs.iter()
                .enumerate()
                .map(|(i, n)| (format!("networkSecurityGroups[{i}].name"), n.name.as_str())),
            Case::Insensitive,
        );
        for (i, nsg) in nsgs.iter().enumerate() {
            let path = format!("networkSecurityGroups[{i}]");
            self.azure_name(&format!("{path}.name"), &nsg.name, 80);
            let rules = &nsg.security_rules;
            if rules.len() > MAX_RULES_PER_NSG {
                self.report(
                    format!("{path}.securityRules"),
                    format!(
                        "{} rules, more than the {MAX_RULES_PER_NSG} Azure allows",
                        rules.len()
                    ),
                );
            }
            // Azure counts addresses and ranges, not service tags or `*`.
            let explicit = |prefixes: &[AddressPrefix]| {
                prefixes
                    .iter()
                    .filter(|p| matches!(p, AddressPrefix::Prefix(_)))
                    .count()
            };
            let sources: usize = rules
                .iter()
                .map(|r| explicit(&r.source_address_prefixes))
                .sum();
            let destinations: usize = rules
                .iter()
                .map(|r| explicit(&r.destination_address_prefixes))
                .sum();
            for (count, side) in [(sources, "source"), (destinations, "destination")] {
                if count > MAX_PREFIXES_PER_NSG {
                    self.report(
                        format!("{path}.securityRules"),
                        format!(
                            "{count} {side} address prefixes, more than the {MAX_PREFIXES_PER_NSG} Azure allows in one network security group"
                        ),
                    );
                }
            }
            self.unique_names(
                rules
                    .iter()
                    .enumerate()
                    .map(|(j, r)| (format!("{path}.securityRules[{j}].name"), r.name.as_str())),
                Case::Insensitive,
            );
            let mut priorities: HashMap<(Direction, u32), usize> = HashMap::new();
            for (j, rule) in rules.iter().enumerate() {
                let rule_path = format!("{path}.securityRules[{j}]");
                self.azure_name(&format!("{rule_path}.name"), &rule.name, 80);
                if let Some(description) = &rule.description
                    && description.chars().count() > MAX_DESCRIPTION_LEN
                {
                    self.report(
                        format!("{rule_path}.description"),
                        format!("longer than the {MAX_DESCRIPTION_LEN} characters Azure allows"),
                    );
                }
                if !PRIORITY_RANGE.contains(&rule.priority) {
                    self.report(
                        format!("{rule_path}.priority"),
                        format!("{} is outside 100..=4096", rule.priority),
                    );
                } else if let Some(&k) = priorities.get(&(rule.direction, rule.priority)) {
                    let other = &rules[k];
                    self.report(
                        format!("{rule_path}.priority"),
                        format!(
                            "rule {:?} and rule {:?} (securityRules[{k}]) both have {} priority {}: priorities must be unique per direction",
                            rule.name, other.name, rule.direction, rule.priority
                        ),
                    );
                } else {
                    priorities.insert((rule.direction, rule.priority), j);
                }
                let sides = [
                    (
                        rule.source_address_prefixes.is_empty(),
                        "sourceAddressPrefix",
                    ),
                    (rule.source_port_ranges.is_empty(), "sourcePortRange"),
                    (
                        rule.destination_address_prefixes.is_empty(),
                        "destinationAddressPrefix",
                    ),
                    (
                        rule.destination_port_ranges.is_empty(),
                        "destinationPortRange",
                    ),
                ];
                for (missing, field) in sides {
                    if missing {
                        let plural = if field.ends_with("Prefix") { "es" } else { "s" };
                        self.report(
                            format!("{rule_path}.{field}"),
                            format!("missing: give {field} or {field}{plural} (\"*\" for any)"),
                        );
                    }
                }
            }
        }
    }

    fn route_tables(&mut self) {
        let tables = &self.spec.route_tables;
        self.unique_names(
            tables
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("routeTables[{i}].name"), t.name.as_str())),
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
                table
                    .routes
                    .iter()
                    .enumerate()
                    .map(|(j, r)| (format!("{path}.routes[{j}].name"), r.name.as_str())),
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

    fn subnet_of(&self, addr: Ipv4Addr) -> Option<&'s Subnet> {
        self.spec
            .virtual_network
            .subnets
            .iter()
            .find(|s| s.address_prefix.contains(&addr))
    }

    fn nodes(&mut self) {
        let nodes = &self.spec.nodes;
        if nodes.is_empty() {
            self.report("nodes", "missing: give at least one node");
        }
        self.unique_names(
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("nodes[{i}].name"), n.name.as_str())),
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

    fn outbound_nat(&mut self) {
        let nat = &self.spec.outbound_nat;
        if nat.port_range.first < MIN_SNAT_PORT {
            self.report(
                "outboundNat.portRange",
                format!("{} reaches below {MIN_SNAT_PORT}: SNAT ports must lie in {MIN_SNAT_PORT}-65535", nat.port_range),
            );
        }
        if !IDLE_TIMEOUT_RANGE.contains(&nat.idle_timeout_in_minutes) {
            self.report(
                "outboundNat.idleTimeoutInMinutes",
                format!("{} is outside 4..=120", nat.idle_timeout_in_minutes),
            );
        }
    }

    fn container_groups(&mut self) {
        let groups = &self.spec.container_groups;
        self.unique_names(
            groups
                .iter()
                .enumerate()
                .map(|(i, g)| (format!("containerGroups[{i}].name"), g.name.as_str())),
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
            props.containers.iter().enumerate().map(|(c, container)| {
                (
                    format!("{path}.containers[{c}].name"),
                    container.name.as_str(),
                )
            }),
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

fn delegated_message(ip: Ipv4Addr, subnet: &Subnet) -> String {
    format!(
        "{ip} is in subnet {}, which is delegated to {} and holds container groups only",
        subnet.name, CONTAINER_INSTANCE_DELEGATION
    )
}

fn subnet_reserved_message(ip: Ipv4Addr, subnet: &Subnet) -> String {
    format!(
        "{ip}, which Azure reserves in subnet {} ({}: the first four addresses and the last)",
        subnet.name, subnet.address_prefix
    )
}

/// Azure's rule for resource names (NSGs, rules, route tables, routes, subnets): 1 to `max`
/// characters, letters, digits, underscores, periods and hyphens, starting with a letter or
/// digit, ending with a letter, digit or underscore.
pub fn azure_name_problem(name: &str, max: usize) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(allowed)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    (!ok).then(|| {
        let shown: String = name.chars().take(90).collect();
        let ellipsis = if name.chars().count() > 90 { "..." } else { "" };
        format!(
            "{shown:?}{ellipsis} is not a valid name: use 1-{max} letters, digits, underscores, periods and hyphens, starting with a letter or digit and ending with a letter, digit or underscore"
        )
    })
}

/// ACI's rule for container group and container names: 1-63 lowercase letters, digits and
/// hyphens, not starting or ending with a hyphen.
pub fn aci_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    (!ok).then(|| {
        format!("{name:?} is not a valid name: use 1-63 lowercase letters, digits and hyphens, not starting or ending with a hyphen")
    })
}

/// Node names become host names and directory names: 1-63 letters, digits, hyphens,
/// underscores and periods, starting with a letter or digit.
fn host_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| {
        format!("{name:?} is not a valid node name: use 1-63 letters, digits, hyphens, underscores and periods, starting with a letter or digit")
    })
}

/// Linux interface names: 1-15 bytes (IFNAMSIZ - 1), no `/`, `:` or white space, not `.` or
/// `..`.
fn interface_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
        && name != "."
        && name != "..";
    (!ok).then(|| {
        format!("{name:?} is not a Linux interface name: 1-15 characters, no '/', ':' or spaces")
    })
}

/// RFC 1123 label: 1-63 letters, digits and hyphens, starting and ending with a letter or digit.
pub fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}
