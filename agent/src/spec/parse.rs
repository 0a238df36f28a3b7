//! The schema walk: from the document tree to the typed [`Spec`], reporting every unknown
//! field, missing field, wrong type and malformed value with its path, not just the first.
//!
//! Each `*_from` function reads one object of the schema. It returns `None` when something in
//! it was wrong (the problem is already recorded), and it keeps walking the other fields so
//! that their problems are recorded too.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

use super::Problem;
use super::model::*;
use super::suggest::{closest, did_you_mean};
use super::value::Value;

/// The fields one kind of object may have.
struct Schema {
    /// Fields the model uses.
    fields: &'static [&'static str],
    /// ACI fields that are accepted and dropped: the dataplane has no use for them.
    ignored: &'static [&'static str],
    /// Accept and drop every other field (a container's image, resources, command, ...).
    ignore_unknown: bool,
    /// Unknown fields that deserve an explanation rather than a bare "unknown field".
    hints: &'static [(&'static str, &'static str)],
}

impl Schema {
    const fn fields(fields: &'static [&'static str]) -> Schema {
        Schema {
            fields,
            ignored: &[],
            ignore_unknown: false,
            hints: &[],
        }
    }
}

const ROOT: Schema = Schema::fields(&[
    "apiVersion",
    "virtualNetwork",
    "networkSecurityGroups",
    "routeTables",
    "nodes",
    "outboundNat",
    "containerGroups",
    "networkProfile",
]);
const VIRTUAL_NETWORK: Schema = Schema {
    hints: &[(
        "addressPrefixes",
        "write the prefixes directly under addressSpace: addressSpace: [10.0.0.0/16]",
    )],
    ..Schema::fields(&["name", "addressSpace", "connectedAddressSpaces", "subnets"])
};
const SUBNET: Schema = Schema {
    hints: &[(
        "delegations",
        "write delegation: Microsoft.ContainerInstance/containerGroups",
    )],
    ..Schema::fields(&[
        "name",
        "addressPrefix",
        "delegation",
        "networkSecurityGroup",
        "routeTable",
    ])
};
const NETWORK_SECURITY_GROUP: Schema = Schema::fields(&["name", "securityRules"]);
const SECURITY_RULE: Schema = Schema {
    hints: &[
        (
            "properties",
            "write the rule's fields directly under the rule, without ARM's properties",
        ),
        (
            "sourceApplicationSecurityGroups",
            "application security groups are not supported",
        ),
        (
            "destinationApplicationSecurityGroups",
            "application security groups are not supported",
        ),
    ],
    ..Schema::fields(&[
        "name",
        "description",
        "priority",
        "direction",
        "access",
        "protocol",
        "sourceAddressPrefix",
        "sourceAddressPrefixes",
        "sourcePortRange",
        "sourcePortRanges",
        "destinationAddressPrefix",
        "destinationAddressPrefixes",
        "destinationPortRange",
        "destinationPortRanges",
    ])
};
const ROUTE_TABLE: Schema = Schema {
    // BGP route propagation has no meaning without a gateway; accepted for ARM copies.
    ignored: &["disableBgpRoutePropagation"],
    ..Schema::fields(&["name", "routes"])
};
const ROUTE: Schema = Schema {
    hints: &[(
        "properties",
        "write the route's fields directly under the route, without ARM's properties",
    )],
    ..Schema::fields(&["name", "addressPrefix", "nextHopType", "nextHopIpAddress"])
};
const NODE: Schema = Schema::fields(&[
    "name",
    "interface",
    "primaryIpAddress",
    "secondaryIpAddresses",
    "maxPods",
]);
const NETWORK_PROFILE: Schema = Schema {
    hints: &[
        (
            "serviceCidrs",
            "give the one IPv4 range in serviceCidr (vnetd is IPv4 only)",
        ),
        (
            "podCidr",
            "pods get addresses of the virtual network (as with Azure CNI), not from a pod CIDR",
        ),
        (
            "podCidrs",
            "pods get addresses of the virtual network (as with Azure CNI), not from a pod CIDR",
        ),
        (
            "properties",
            "write serviceCidr and dnsServiceIP directly under networkProfile",
        ),
    ],
    ..Schema::fields(&["serviceCidr", "dnsServiceIP"])
};
const OUTBOUND_NAT: Schema =
    Schema::fields(&["nonMasqueradeCidrs", "portRange", "idleTimeoutInMinutes"]);
const CONTAINER_GROUP: Schema = Schema {
    // The rest of an ARM resource around a container group.
    ignored: &[
        "type",
        "apiVersion",
        "id",
        "tags",
        "identity",
        "zones",
        "dependsOn",
    ],
    ..Schema::fields(&["name", "location", "properties"])
};
const CONTAINER_GROUP_PROPERTIES: Schema = Schema {
    ignored: &[
        "restartPolicy",
        "volumes",
        "imageRegistryCredentials",
        "sku",
        "diagnostics",
        "dnsConfig",
        "encryptionProperties",
        "initContainers",
        "extensions",
        "priority",
        "confidentialComputeProperties",
        "containerGroupProfile",
        "provisioningState",
        "instanceView",
    ],
    ..Schema::fields(&["osType", "subnetIds", "ipAddress", "containers"])
};
const SUBNET_ID: Schema = Schema {
    ignored: &["name"],
    ..Schema::fields(&["id"])
};
const IP_ADDRESS: Schema = Schema {
    ignored: &[
        "fqdn",
        "autoGeneratedDomainNameLabelScope",
        "dnsNameLabelReusePolicy",
    ],
    ..Schema::fields(&["type", "ip", "ports", "dnsNameLabel"])
};
const PORT: Schema = Schema::fields(&["protocol", "port"]);
const CONTAINER: Schema = Schema::fields(&["name", "properties"]);
const CONTAINER_PROPERTIES: Schema = Schema {
    ignore_unknown: true,
    ..Schema::fields(&["ports"])
};

/// Reads a document tree into a [`Spec`], or returns every problem found on the way.
pub(crate) fn spec_from_value(root: &Value) -> Result<Spec, Vec<Problem>> {
    match spec_and_problems(root) {
        (Some(spec), problems) if problems.is_empty() => Ok(spec),
        (_, problems) => Err(problems),
    }
}

/// Reads a document tree as far as it goes: the problems found, and a [`Spec`] whenever every
/// object could be built. An unknown keyword is recorded as a problem and read as its set's
/// first value, so that the rest of the spec can still be validated (see
/// [`super::check_str`], which does not validate the objects that had problems).
pub(crate) fn spec_and_problems(root: &Value) -> (Option<Spec>, Vec<Problem>) {
    let mut walker = Walker {
        problems: Vec::new(),
        suggested: HashSet::new(),
    };
    let spec = walker.spec(root);
    if spec.is_none() && walker.problems.is_empty() {
        // Every `None` is recorded first; this is a guard, not an expected path.
        walker.report("", "could not be read");
    }
    (spec, walker.problems)
}

/// An object that passed the field-name check.
struct Fields<'v> {
    path: String,
    entries: &'v [(String, Value)],
}

impl<'v> Fields<'v> {
    /// The first value given for `key`. An explicit null counts as absent, so that `ip:` with
    /// nothing after it means the same as no `ip` at all.
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.entries
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
            .filter(|value| **value != Value::Null)
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

/// `path.key`; a key that is not a plain name (spaces, newlines, punctuation) is quoted,
/// `path["a key"]`, so that a problem stays one readable line.
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 100
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$' | '@'));
    match (plain, path.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{path}.{key}"),
        (false, _) => {
            let shown: String = key.chars().take(100).collect();
            let ellipsis = if key.chars().count() > 100 { "..." } else { "" };
            format!("{path}[{shown:?}{ellipsis}]")
        }
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Where a value is: a path, or its parent's path and its key or index. Spelled out
/// ([`join`], [`index`]) only for a problem, so that reading a valid spec formats no paths
/// (a spec of 1000 NSG rules has 10,000 of them).
#[derive(Clone, Copy)]
enum Loc<'a> {
    At(&'a str),
    Field(&'a str, &'a str),
    Item(&'a str, usize),
}

impl Loc<'_> {
    fn path(self) -> String {
        match self {
            Loc::At(path) => path.to_string(),
            Loc::Field(path, key) => join(path, key),
            Loc::Item(path, i) => index(path, i),
        }
    }
}

/// A leaf reader: the value at a location, or `None` after recording why not.
type Read<T> = fn(&mut Walker, &Value, Loc) -> Option<T>;

struct Walker {
    problems: Vec<Problem>,
    /// Paths of fields an unknown field was taken for ("did you mean"): their absence is not
    /// reported again as "missing".
    suggested: HashSet<String>,
}

impl Walker {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        let path = if path.is_empty() { "(document)" } else { path };
        self.problems.push(Problem::new(path, message));
    }

    fn report_at(&mut self, at: Loc, message: impl Into<String>) {
        self.report(&at.path(), message);
    }

    /// Checks that `value` is a mapping whose field names `schema` knows, reporting each
    /// unknown or repeated field.
    fn fields<'v>(&mut self, value: &'v Value, at: Loc, schema: &Schema) -> Option<Fields<'v>> {
        let path = at.path();
        let Value::Map(entries) = value else {
            self.report(
                &path,
                format!("expected a mapping, found {}", value.describe()),
            );
            return None;
        };
        for (i, (key, _)) in entries.iter().enumerate() {
            let known =
                schema.fields.contains(&key.as_str()) || schema.ignored.contains(&key.as_str());
            if !known && schema.ignore_unknown {
                continue;
            }
            // A handful of fields: a scan is cheaper than a set.
            if entries[..i].iter().any(|(earlier, _)| earlier == key) {
                self.report(&join(&path, key), "given more than once");
                continue;
            }
            if known {
                continue;
            }
            let message = match schema.hints.iter().find(|(name, _)| name == key) {
                Some((_, hint)) => format!("unknown field: {hint}"),
                None => {
                    let candidates = schema.fields.iter().chain(schema.ignored).copied();
                    match closest(key, candidates) {
                        Some(field) => {
                            self.suggested.insert(join(&path, field));
                            format!("unknown field, did you mean {field}?")
                        }
                        None => format!("unknown field (known: {})", schema.fields.join(", ")),
                    }
                }
            };
            self.report(&join(&path, key), message);
        }
        Some(Fields { path, entries })
    }

    fn required<T>(&mut self, fields: &Fields, key: &str, read: Read<T>) -> Option<T> {
        match fields.get(key) {
            Some(value) => read(self, value, Loc::Field(&fields.path, key)),
            None => {
                let path = fields.path(key);
                if !self.suggested.contains(&path) {
                    self.report(&path, "missing");
                }
                None
            }
        }
    }

    /// `Some(None)`: absent; `None`: present but wrong (recorded).
    fn optional<T>(&mut self, fields: &Fields, key: &str, read: Read<T>) -> Option<Option<T>> {
        match fields.get(key) {
            Some(value) => read(self, value, Loc::Field(&fields.path, key)).map(Some),
            None => Some(None),
        }
    }

    /// A list field; absent means empty.
    fn list<T>(&mut self, fields: &Fields, key: &str, read: Read<T>) -> Option<Vec<T>> {
        match fields.get(key) {
            Some(value) => self.items(value, Loc::Field(&fields.path, key), read),
            None => Some(Vec::new()),
        }
    }

    fn items<T>(&mut self, value: &Value, at: Loc, read: Read<T>) -> Option<Vec<T>> {
        let Value::Seq(items) = value else {
            self.report_at(at, format!("expected a list, found {}", value.describe()));
            return None;
        };
        let path = at.path();
        let read: Vec<Option<T>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| read(self, item, Loc::Item(&path, i)))
            .collect();
        read.into_iter().collect()
    }

    /// Azure's singular/plural pair (`sourceAddressPrefix` / `sourceAddressPrefixes`): one
    /// value or a list of them, not both. Neither gives an empty list.
    fn one_or_many<T>(
        &mut self,
        fields: &Fields,
        singular: &str,
        plural: &str,
        read: Read<T>,
    ) -> Option<Vec<T>> {
        match (fields.get(singular), fields.get(plural)) {
            (Some(_), Some(_)) => {
                self.report(
                    &fields.path(plural),
                    format!("{singular} is also given: use one of {singular} and {plural}"),
                );
                None
            }
            (Some(Value::Seq(_)), None) => {
                self.report(
                    &fields.path(singular),
                    format!("expected one value, found a list (a list goes in {plural})"),
                );
                None
            }
            (Some(one), None) => {
                read(self, one, Loc::Field(&fields.path, singular)).map(|one| vec![one])
            }
            (None, Some(many)) => self.items(many, Loc::Field(&fields.path, plural), read),
            (None, None) => Some(Vec::new()),
        }
    }

    fn spec(&mut self, root: &Value) -> Option<Spec> {
        if *root == Value::Null {
            self.report("", "the document is empty");
            return None;
        }
        let fields = self.fields(root, Loc::At(""), &ROOT)?;
        let api_version = self.required(&fields, "apiVersion", string);
        let virtual_network = self.required(&fields, "virtualNetwork", virtual_network_from);
        let network_security_groups = self.list(
            &fields,
            "networkSecurityGroups",
            network_security_group_from,
        );
        let route_tables = self.list(&fields, "routeTables", route_table_from);
        let nodes = self.list(&fields, "nodes", node_from);
        let outbound_nat = self.optional(&fields, "outboundNat", outbound_nat_from);
        let container_groups = self.list(&fields, "containerGroups", container_group_from);
        let network_profile = self.optional(&fields, "networkProfile", network_profile_from);
        Some(Spec {
            api_version: api_version?,
            virtual_network: virtual_network?,
            network_security_groups: network_security_groups?,
            route_tables: route_tables?,
            nodes: nodes?,
            outbound_nat: outbound_nat?.unwrap_or_default(),
            container_groups: container_groups?,
            network_profile: network_profile?,
        })
    }
}

fn virtual_network_from(w: &mut Walker, value: &Value, path: Loc) -> Option<VirtualNetwork> {
    let fields = w.fields(value, path, &VIRTUAL_NETWORK)?;
    let name = w.required(&fields, "name", string);
    let address_space = w.list(&fields, "addressSpace", prefix);
    let connected_address_spaces = w.list(&fields, "connectedAddressSpaces", prefix);
    let subnets = w.list(&fields, "subnets", subnet_from);
    Some(VirtualNetwork {
        name: name?,
        address_space: address_space?,
        connected_address_spaces: connected_address_spaces?,
        subnets: subnets?,
    })
}

fn subnet_from(w: &mut Walker, value: &Value, path: Loc) -> Option<Subnet> {
    let fields = w.fields(value, path, &SUBNET)?;
    let name = w.required(&fields, "name", string);
    let address_prefix = w.required(&fields, "addressPrefix", prefix);
    let delegation = w.optional(&fields, "delegation", |w, v, p| {
        keyword_in(w, v, p, Delegation::NAMES)
    });
    let network_security_group = w.optional(&fields, "networkSecurityGroup", string);
    let route_table = w.optional(&fields, "routeTable", string);
    Some(Subnet {
        name: name?,
        address_prefix: address_prefix?,
        delegation: delegation?,
        network_security_group: network_security_group?,
        route_table: route_table?,
    })
}

fn network_security_group_from(
    w: &mut Walker,
    value: &Value,
    path: Loc,
) -> Option<NetworkSecurityGroup> {
    let fields = w.fields(value, path, &NETWORK_SECURITY_GROUP)?;
    let name = w.required(&fields, "name", string);
    let security_rules = w.list(&fields, "securityRules", security_rule_from);
    Some(NetworkSecurityGroup {
        name: name?,
        security_rules: security_rules?,
    })
}

fn security_rule_from(w: &mut Walker, value: &Value, path: Loc) -> Option<SecurityRule> {
    let fields = w.fields(value, path, &SECURITY_RULE)?;
    let name = w.required(&fields, "name", string);
    let description = w.optional(&fields, "description", string);
    let priority = w.required(&fields, "priority", |w, v, p| {
        let n = integer(w, v, p)?;
        u32::try_from(n).ok().or_else(|| {
            w.report_at(p, format!("{n} is outside 100..=4096"));
            None
        })
    });
    let direction = w.required(&fields, "direction", |w, v, p| {
        keyword_in(w, v, p, Direction::NAMES)
    });
    let access = w.required(&fields, "access", |w, v, p| {
        keyword_in(w, v, p, Access::NAMES)
    });
    let protocol = w.required(&fields, "protocol", |w, v, p| {
        keyword_in(w, v, p, Protocol::NAMES)
    });
    let source_address_prefixes = w.one_or_many(
        &fields,
        "sourceAddressPrefix",
        "sourceAddressPrefixes",
        address_prefix,
    );
    let source_port_ranges =
        w.one_or_many(&fields, "sourcePortRange", "sourcePortRanges", port_range);
    let destination_address_prefixes = w.one_or_many(
        &fields,
        "destinationAddressPrefix",
        "destinationAddressPrefixes",
        address_prefix,
    );
    let destination_port_ranges = w.one_or_many(
        &fields,
        "destinationPortRange",
        "destinationPortRanges",
        port_range,
    );
    // Azure refuses `*` and service tags in the plural field; they go in the singular one.
    for plural in ["sourceAddressPrefixes", "destinationAddressPrefixes"] {
        if let Some(Value::Seq(items)) = fields.get(plural) {
            for (i, item) in items.iter().enumerate() {
                if let Value::Str(text) = item
                    && let Ok(prefix @ (AddressPrefix::Any | AddressPrefix::Tag(_))) =
                        text.parse::<AddressPrefix>()
                {
                    let singular = plural.trim_end_matches("es");
                    w.report(
                        &index(&fields.path(plural), i),
                        format!(
                            "{prefix} is only allowed alone, in {singular} (Azure refuses \"*\" and service tags in {plural})"
                        ),
                    );
                }
            }
        }
    }
    Some(SecurityRule {
        name: name?,
        description: description?,
        priority: priority?,
        direction: direction?,
        access: access?,
        protocol: protocol?,
        source_address_prefixes: source_address_prefixes?,
        source_port_ranges: source_port_ranges?,
        destination_address_prefixes: destination_address_prefixes?,
        destination_port_ranges: destination_port_ranges?,
    })
}

fn route_table_from(w: &mut Walker, value: &Value, path: Loc) -> Option<RouteTable> {
    let fields = w.fields(value, path, &ROUTE_TABLE)?;
    let name = w.required(&fields, "name", string);
    let routes = w.list(&fields, "routes", route_from);
    Some(RouteTable {
        name: name?,
        routes: routes?,
    })
}

fn route_from(w: &mut Walker, value: &Value, path: Loc) -> Option<Route> {
    let fields = w.fields(value, path, &ROUTE)?;
    let name = w.required(&fields, "name", string);
    let address_prefix = w.required(&fields, "addressPrefix", prefix);
    let next_hop_type = w.required(&fields, "nextHopType", |w, v, p| {
        keyword_in(w, v, p, NextHopType::NAMES)
    });
    let next_hop_ip_address = w.optional(&fields, "nextHopIpAddress", address);
    Some(Route {
        name: name?,
        address_prefix: address_prefix?,
        next_hop_type: next_hop_type?,
        next_hop_ip_address: next_hop_ip_address?,
    })
}

fn node_from(w: &mut Walker, value: &Value, path: Loc) -> Option<Node> {
    let fields = w.fields(value, path, &NODE)?;
    let name = w.required(&fields, "name", string);
    let interface = w.required(&fields, "interface", string);
    let primary_ip_address = w.required(&fields, "primaryIpAddress", address);
    let secondary_ip_addresses = w.list(&fields, "secondaryIpAddresses", parsed::<AddressRange>);
    let max_pods = w.optional(&fields, "maxPods", |w, v, p| count(w, v, p, "10..=250"));
    Some(Node {
        name: name?,
        interface: interface?,
        primary_ip_address: primary_ip_address?,
        secondary_ip_addresses: secondary_ip_addresses?,
        max_pods: max_pods?.unwrap_or(Node::DEFAULT_MAX_PODS),
    })
}

fn network_profile_from(w: &mut Walker, value: &Value, path: Loc) -> Option<NetworkProfile> {
    let fields = w.fields(value, path, &NETWORK_PROFILE)?;
    let service_cidr = w.optional(&fields, "serviceCidr", prefix);
    let dns_service_ip = w.optional(&fields, "dnsServiceIP", address);
    Some(NetworkProfile {
        service_cidr: service_cidr?,
        dns_service_ip: dns_service_ip?,
    })
}

fn outbound_nat_from(w: &mut Walker, value: &Value, path: Loc) -> Option<OutboundNat> {
    let fields = w.fields(value, path, &OUTBOUND_NAT)?;
    let non_masquerade_cidrs = w.list(&fields, "nonMasqueradeCidrs", prefix);
    let port_range = w.optional(&fields, "portRange", port_range);
    let idle_timeout = w.optional(&fields, "idleTimeoutInMinutes", |w, v, p| {
        count(w, v, p, "4..=120")
    });
    Some(OutboundNat {
        non_masquerade_cidrs: non_masquerade_cidrs?,
        port_range: port_range?.unwrap_or(OutboundNat::DEFAULT_PORT_RANGE),
        idle_timeout_in_minutes: idle_timeout?.unwrap_or(OutboundNat::DEFAULT_IDLE_TIMEOUT_MINUTES),
    })
}

fn container_group_from(w: &mut Walker, value: &Value, path: Loc) -> Option<ContainerGroup> {
    let fields = w.fields(value, path, &CONTAINER_GROUP)?;
    let name = w.required(&fields, "name", string);
    let location = w.optional(&fields, "location", string);
    let properties = w.required(&fields, "properties", container_group_properties_from);
    Some(ContainerGroup {
        name: name?,
        location: location?,
        properties: properties?,
    })
}

fn container_group_properties_from(
    w: &mut Walker,
    value: &Value,
    path: Loc,
) -> Option<ContainerGroupProperties> {
    let fields = w.fields(value, path, &CONTAINER_GROUP_PROPERTIES)?;
    let os_type = w.optional(&fields, "osType", |w, v, p| {
        keyword_in(w, v, p, OsType::NAMES)
    });
    let subnet_ids = w.list(&fields, "subnetIds", |w, v, p| {
        let fields = w.fields(v, p, &SUBNET_ID)?;
        let id = w.required(&fields, "id", string)?;
        Some(SubnetId { id })
    });
    let ip_address = w.optional(&fields, "ipAddress", ip_address_from);
    let containers = w.list(&fields, "containers", container_from);
    Some(ContainerGroupProperties {
        os_type: os_type?,
        subnet_ids: subnet_ids?,
        ip_address: ip_address?,
        containers: containers?,
    })
}

fn ip_address_from(w: &mut Walker, value: &Value, path: Loc) -> Option<IpAddress> {
    let fields = w.fields(value, path, &IP_ADDRESS)?;
    let kind = w.required(&fields, "type", |w, v, p| {
        keyword_in(w, v, p, IpAddressType::NAMES)
    });
    let ip = w.optional(&fields, "ip", address);
    let ports = w.list(&fields, "ports", port_from);
    let dns_name_label = w.optional(&fields, "dnsNameLabel", string);
    Some(IpAddress {
        kind: kind?,
        ip: ip?,
        ports: ports?,
        dns_name_label: dns_name_label?,
    })
}

fn port_from(w: &mut Walker, value: &Value, path: Loc) -> Option<Port> {
    let fields = w.fields(value, path, &PORT)?;
    // ACI's default protocol is TCP.
    let protocol = w.optional(&fields, "protocol", |w, v, p| {
        keyword_in(w, v, p, TransportProtocol::NAMES)
    });
    let port = w.required(&fields, "port", |w, v, p| {
        let n = integer(w, v, p)?;
        u16::try_from(n).ok().or_else(|| {
            w.report_at(p, format!("{n} is outside 1..=65535"));
            None
        })
    });
    Some(Port {
        protocol: protocol?.unwrap_or(TransportProtocol::Tcp),
        port: port?,
    })
}

fn container_from(w: &mut Walker, value: &Value, path: Loc) -> Option<Container> {
    let fields = w.fields(value, path, &CONTAINER)?;
    let name = w.required(&fields, "name", string);
    let properties = w.optional(&fields, "properties", |w, v, p| {
        let fields = w.fields(v, p, &CONTAINER_PROPERTIES)?;
        let ports = w.list(&fields, "ports", port_from)?;
        Some(ContainerProperties { ports })
    });
    Some(Container {
        name: name?,
        properties: properties?.unwrap_or(ContainerProperties { ports: Vec::new() }),
    })
}

// Leaf readers.

fn string(w: &mut Walker, value: &Value, path: Loc) -> Option<String> {
    match value {
        Value::Str(text) => Some(text.clone()),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            w.report_at(
                path,
                format!("expected a string, found {} (quote it)", value.describe()),
            );
            None
        }
        _ => {
            w.report_at(
                path,
                format!("expected a string, found {}", value.describe()),
            );
            None
        }
    }
}

fn integer(w: &mut Walker, value: &Value, path: Loc) -> Option<i128> {
    match value {
        Value::Int(n) => Some(*n),
        _ => {
            w.report_at(
                path,
                format!("expected an integer, found {}", value.describe()),
            );
            None
        }
    }
}

/// A count whose allowed range is checked by validation; a value that does not even fit the
/// type gets the same message here.
fn count(w: &mut Walker, value: &Value, path: Loc, range: &str) -> Option<u32> {
    let n = integer(w, value, path)?;
    u32::try_from(n).ok().or_else(|| {
        w.report_at(path, format!("{n} is outside {range}"));
        None
    })
}

fn parsed<T: FromStr<Err = InvalidValue>>(w: &mut Walker, value: &Value, path: Loc) -> Option<T> {
    let text = string(w, value, path)?;
    text.parse()
        .map_err(|InvalidValue(message)| w.report_at(path, message))
        .ok()
}

fn prefix(w: &mut Walker, value: &Value, path: Loc) -> Option<Ipv4Net> {
    let text = string(w, value, path)?;
    parse_prefix(&text)
        .map_err(|InvalidValue(message)| w.report_at(path, message))
        .ok()
}

fn address(w: &mut Walker, value: &Value, path: Loc) -> Option<Ipv4Addr> {
    let text = string(w, value, path)?;
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            w.report_at(path, format!("{text:?} is not an IPv4 address"));
            None
        }
    }
}

fn address_prefix(w: &mut Walker, value: &Value, path: Loc) -> Option<AddressPrefix> {
    parsed(w, value, path)
}

/// A port range; a bare YAML integer (`destinationPortRange: 80`) is accepted as `"80"`.
fn port_range(w: &mut Walker, value: &Value, path: Loc) -> Option<PortRange> {
    match value {
        Value::Int(n) => match u16::try_from(*n) {
            Ok(port) => Some(PortRange::single(port)),
            Err(_) => {
                w.report_at(path, format!("port {n} is outside 0..=65535"));
                None
            }
        },
        _ => parsed(w, value, path),
    }
}

fn keyword_in<T: Copy>(
    w: &mut Walker,
    value: &Value,
    path: Loc,
    names: &[(&'static str, T)],
) -> Option<T> {
    let text = string(w, value, path)?;
    if let Some(found) = keyword(names, &text) {
        return Some(found);
    }
    let suggestion = did_you_mean(&text, names.iter().map(|(name, _)| *name));
    let expected = super::model::names(names);
    w.report_at(
        path,
        format!("{text:?} is not one of {expected}{suggestion}"),
    );
    // A stand-in, so that the objects around this one can still be built and validated; the
    // problem recorded above keeps the spec from being accepted.
    names.first().map(|(_, standin)| *standin)
}
