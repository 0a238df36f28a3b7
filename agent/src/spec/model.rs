//! The typed model of the control spec: what a spec *says*, after parsing, before the
//! cross-field checks of [`super::validate`].
//!
//! Field names follow Azure's resource model (serialised in camelCase). Values whose syntax can
//! be wrong (prefixes, port ranges, enums) are typed here; the parser reports a wrong value with
//! its path instead of building the model. Limits and relations between fields (priority range,
//! overlaps, references) are not encoded in the types: [`super::validate`] checks them, so a
//! `Spec` built in code gets the same checks as one read from a file.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Serialize, Serializer};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "vnetd/v1";

/// The delegation that marks a subnet as reserved for container groups.
pub const CONTAINER_INSTANCE_DELEGATION: &str = "Microsoft.ContainerInstance/containerGroups";

/// The address Azure's `AzureLoadBalancer` service tag stands for (the platform's health probes).
pub const AZURE_LOAD_BALANCER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

/// A value that is not in the syntax its field expects; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// The whole control spec.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub api_version: String,
    pub virtual_network: VirtualNetwork,
    pub network_security_groups: Vec<NetworkSecurityGroup>,
    pub route_tables: Vec<RouteTable>,
    pub nodes: Vec<Node>,
    pub outbound_nat: OutboundNat,
    pub container_groups: Vec<ContainerGroup>,
    /// The Kubernetes cluster around the nodes, if any (AKS's `networkProfile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_profile: Option<NetworkProfile>,
}

impl Spec {
    /// Index of the subnet named `name`. Azure resource names compare case-insensitively.
    pub fn subnet_index(&self, name: &str) -> Option<usize> {
        self.virtual_network
            .subnets
            .iter()
            .position(|s| s.name.eq_ignore_ascii_case(name))
    }

    pub fn subnet(&self, name: &str) -> Option<&Subnet> {
        self.subnet_index(name)
            .map(|i| &self.virtual_network.subnets[i])
    }

    pub fn network_security_group_index(&self, name: &str) -> Option<usize> {
        self.network_security_groups
            .iter()
            .position(|n| n.name.eq_ignore_ascii_case(name))
    }

    pub fn route_table_index(&self, name: &str) -> Option<usize> {
        self.route_tables
            .iter()
            .position(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// The node named `name` (node names are Linux host names: case-sensitive).
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The `VirtualNetwork` service tag: the address space and the connected spaces.
    pub fn vnet_prefixes(&self) -> Vec<Ipv4Net> {
        let vnet = &self.virtual_network;
        vnet.address_space
            .iter()
            .chain(&vnet.connected_address_spaces)
            .copied()
            .collect()
    }
}

/// The one virtual network a spec describes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualNetwork {
    pub name: String,
    pub address_space: Vec<Ipv4Net>,
    /// Peered VNets and on-premises ranges (VPN / ExpressRoute): inside the `VirtualNetwork`
    /// service tag, reached through the uplink, never masqueraded.
    pub connected_address_spaces: Vec<Ipv4Net>,
    pub subnets: Vec<Subnet>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnet {
    pub name: String,
    pub address_prefix: Ipv4Net,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,
    /// The name of a network security group of the spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_security_group: Option<String>,
    /// The name of a route table of the spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_table: Option<String>,
}

impl Subnet {
    pub fn is_delegated(&self) -> bool {
        self.delegation.is_some()
    }
}

/// A subnet delegation. vnetd knows one: the subnet holds container groups only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delegation {
    ContainerInstance,
}

impl Delegation {
    pub const NAMES: &'static [(&'static str, Delegation)] =
        &[(CONTAINER_INSTANCE_DELEGATION, Delegation::ContainerInstance)];
}

impl fmt::Display for Delegation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delegation::ContainerInstance => f.write_str(CONTAINER_INSTANCE_DELEGATION),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSecurityGroup {
    pub name: String,
    pub security_rules: Vec<SecurityRule>,
}

/// One NSG rule. The singular and plural forms of the file (`sourceAddressPrefix` /
/// `sourceAddressPrefixes`, ...) both land in the plural fields here; an empty list means the
/// file gave neither, which [`super::validate`] reports.
#[derive(Clone, Debug, PartialEq)]
pub struct SecurityRule {
    pub name: String,
    pub description: Option<String>,
    pub priority: u32,
    pub direction: Direction,
    pub access: Access,
    pub protocol: Protocol,
    pub source_address_prefixes: Vec<AddressPrefix>,
    pub source_port_ranges: Vec<PortRange>,
    pub destination_address_prefixes: Vec<AddressPrefix>,
    pub destination_port_ranges: Vec<PortRange>,
}

impl Serialize for SecurityRule {
    /// Writes a rule back in the form the parser reads: one value in the singular field,
    /// several in the plural one (Azure accepts service tags only in the singular).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        fn one_or_many<M: SerializeMap, T: Serialize>(
            map: &mut M,
            singular: &str,
            plural: &str,
            values: &[T],
        ) -> Result<(), M::Error> {
            match values {
                [] => Ok(()),
                [one] => map.serialize_entry(singular, one),
                many => map.serialize_entry(plural, many),
            }
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &self.name)?;
        if let Some(description) = &self.description {
            map.serialize_entry("description", description)?;
        }
        map.serialize_entry("priority", &self.priority)?;
        map.serialize_entry("direction", &self.direction)?;
        map.serialize_entry("access", &self.access)?;
        map.serialize_entry("protocol", &self.protocol)?;
        let fields = [
            ("sourceAddressPrefix", "sourceAddressPrefixes"),
            ("destinationAddressPrefix", "destinationAddressPrefixes"),
        ];
        for ((singular, plural), values) in fields.iter().zip([
            &self.source_address_prefixes,
            &self.destination_address_prefixes,
        ]) {
            one_or_many(&mut map, singular, plural, values)?;
        }
        let fields = [
            ("sourcePortRange", "sourcePortRanges"),
            ("destinationPortRange", "destinationPortRanges"),
        ];
        for ((singular, plural), values) in fields
            .iter()
            .zip([&self.source_port_ranges, &self.destination_port_ranges])
        {
            one_or_many(&mut map, singular, plural, values)?;
        }
        map.end()
    }
}

/// Implements the enum boilerplate shared by the spec's keyword enums: the accepted spellings
/// (matched case-insensitively, as Azure does), Display with the canonical spelling, Serialize.
macro_rules! keyword_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Canonical spellings, in the order they are listed in error messages.
            pub const NAMES: &'static [(&'static str, $name)] = &[$(($text, $name::$variant)),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

keyword_enum!(Direction {
    Inbound = "Inbound",
    Outbound = "Outbound",
});

keyword_enum!(Access {
    Allow = "Allow",
    Deny = "Deny",
});

keyword_enum!(
    /// An NSG rule's protocol. `Any` is written `*`.
    Protocol {
        Tcp = "Tcp",
        Udp = "Udp",
        Icmp = "Icmp",
        Esp = "Esp",
        Ah = "Ah",
        Any = "*",
    }
);

keyword_enum!(
    /// The service tags an NSG rule may name.
    ServiceTag {
        VirtualNetwork = "VirtualNetwork",
        Internet = "Internet",
        AzureLoadBalancer = "AzureLoadBalancer",
    }
);

keyword_enum!(NextHopType {
    VirtualAppliance = "VirtualAppliance",
    VnetLocal = "VnetLocal",
    Internet = "Internet",
    None = "None",
    VirtualNetworkGateway = "VirtualNetworkGateway",
});

keyword_enum!(OsType {
    Linux = "Linux",
    Windows = "Windows",
});

keyword_enum!(IpAddressType {
    Private = "Private",
    Public = "Public",
});

keyword_enum!(
    /// The protocol of a container-group or container port (ACI spells them in capitals).
    TransportProtocol {
        Tcp = "TCP",
        Udp = "UDP",
    }
);

impl Serialize for Delegation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An NSG rule's address condition: `*`, an address or CIDR, or a service tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressPrefix {
    Any,
    Prefix(Ipv4Net),
    Tag(ServiceTag),
}

impl fmt::Display for AddressPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressPrefix::Any => f.write_str("*"),
            AddressPrefix::Prefix(net) if net.prefix_len() == 32 => write!(f, "{}", net.addr()),
            AddressPrefix::Prefix(net) => write!(f, "{net}"),
            AddressPrefix::Tag(tag) => write!(f, "{tag}"),
        }
    }
}

impl FromStr for AddressPrefix {
    type Err = InvalidValue;

    /// `*`, a service tag (any case), an IPv4 address, or a CIDR without host bits.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "*" {
            return Ok(AddressPrefix::Any);
        }
        if let Some(tag) = keyword(ServiceTag::NAMES, text) {
            return Ok(AddressPrefix::Tag(tag));
        }
        parse_prefix(text)
            .map(AddressPrefix::Prefix)
            .map_err(|problem| {
                if text.chars().any(|c| c.is_ascii_alphabetic()) && !text.contains(':') {
                    InvalidValue(format!(
                        "{text:?} is not \"*\", an IPv4 address, a CIDR or a service tag ({})",
                        names(ServiceTag::NAMES)
                    ))
                } else {
                    problem
                }
            })
    }
}

impl Serialize for AddressPrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An inclusive range of ports; `*` is 0-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn is_any(&self) -> bool {
        *self == PortRange::ANY
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            f.write_str("*")
        } else if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = InvalidValue;

    /// `*`, `N` or `N-M` with N <= M <= 65535. A list in one string (`"80, 443"`) is refused
    /// with a pointer to the plural field, as Azure does.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "*" {
            return Ok(PortRange::ANY);
        }
        if text.contains(',') {
            return Err(InvalidValue(format!(
                "{text:?} is not a port range: give several ports as a list, e.g. [\"80\", \"443\"] in the ...PortRanges field"
            )));
        }
        let port = |part: &str| -> Result<u16, InvalidValue> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidValue(format!(
                    "{text:?} is not a port range: expected \"*\", N or N-M with 0 <= N <= M <= 65535"
                )));
            }
            part.parse::<u16>()
                .map_err(|_| InvalidValue(format!("{text:?}: port {part} is above 65535")))
        };
        let range = match text.split_once('-') {
            None => PortRange::single(port(text)?),
            Some((first, last)) => PortRange {
                first: port(first)?,
                last: port(last)?,
            },
        };
        if range.first > range.last {
            return Err(InvalidValue(format!(
                "{text:?} is reversed: write {}-{}",
                range.last, range.first
            )));
        }
        Ok(range)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    pub name: String,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub name: String,
    pub address_prefix: Ipv4Net,
    pub next_hop_type: NextHopType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_hop_ip_address: Option<Ipv4Addr>,
}

/// A Linux node running vnetd: its uplink and the pod address pool (the NIC's secondary
/// addresses, as Azure CNI assigns them).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    pub interface: String,
    pub primary_ip_address: Ipv4Addr,
    pub secondary_ip_addresses: Vec<AddressRange>,
    pub max_pods: u32,
}

impl Node {
    /// Azure CNI's default when `maxPods` is not given.
    pub const DEFAULT_MAX_PODS: u32 = 30;
}

/// An inclusive range of IPv4 addresses, written `A-B`, `A`, or as a CIDR. `first > last` is
/// representable so that [`super::validate`] can report a reversed range with its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddressRange {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.first <= addr && addr <= self.last
    }

    pub fn is_reversed(&self) -> bool {
        self.first > self.last
    }

    /// Number of addresses (0 for a reversed range).
    pub fn len(&self) -> u64 {
        if self.is_reversed() {
            0
        } else {
            u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn overlaps(&self, other: &AddressRange) -> bool {
        !self.is_reversed()
            && !other.is_reversed()
            && self.first <= other.last
            && other.first <= self.last
    }

    /// Whether the whole range lies in `net`.
    pub fn is_inside(&self, net: &Ipv4Net) -> bool {
        net.contains(&self.first) && net.contains(&self.last)
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for AddressRange {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let addr = |part: &str| -> Result<Ipv4Addr, InvalidValue> {
            part.parse().map_err(|_| {
                InvalidValue(format!(
                    "{text:?} is not an address range: expected A.B.C.D, A.B.C.D-E.F.G.H or a CIDR"
                ))
            })
        };
        if text.contains('/') {
            let net = parse_prefix(text)?;
            return Ok(AddressRange {
                first: net.network(),
                last: net.broadcast(),
            });
        }
        match text.split_once('-') {
            None => {
                let one = addr(text)?;
                Ok(AddressRange {
                    first: one,
                    last: one,
                })
            }
            Some((first, last)) => Ok(AddressRange {
                first: addr(first)?,
                last: addr(last)?,
            }),
        }
    }
}

impl Serialize for AddressRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Source NAT for traffic that leaves the virtual network.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundNat {
    pub non_masquerade_cidrs: Vec<Ipv4Net>,
    pub port_range: PortRange,
    pub idle_timeout_in_minutes: u32,
}

impl OutboundNat {
    pub const DEFAULT_PORT_RANGE: PortRange = PortRange {
        first: 32768,
        last: 65535,
    };
    /// Azure NAT gateway's default idle timeout.
    pub const DEFAULT_IDLE_TIMEOUT_MINUTES: u32 = 4;
}

impl Default for OutboundNat {
    fn default() -> Self {
        OutboundNat {
            non_masquerade_cidrs: Vec::new(),
            port_range: Self::DEFAULT_PORT_RANGE,
            idle_timeout_in_minutes: Self::DEFAULT_IDLE_TIMEOUT_MINUTES,
        }
    }
}

/// The Kubernetes cluster's service ranges, under AKS's names (`networkProfile` of a managed
/// cluster). Pods' traffic to `serviceCidr`, and the replies of those connections, go through
/// the node's own stack, where kube-proxy implements Services.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkProfile {
    /// The range ClusterIPs are allocated from (kube-apiserver's `--service-cluster-ip-range`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<Ipv4Net>,
    /// The cluster DNS Service's ClusterIP (kubelet's `--cluster-dns`), inside `serviceCidr`.
    #[serde(rename = "dnsServiceIP", skip_serializing_if = "Option::is_none")]
    pub dns_service_ip: Option<Ipv4Addr>,
}

/// The networking part of an Azure Container Instances container group. The fields the
/// dataplane has no use for (image, resources, volumes, ...) are accepted by the parser and
/// dropped.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroup {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub properties: ContainerGroupProperties,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroupProperties {
    /// Required, as in ACI; `None` only so that its absence is reported by validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_type: Option<OsType>,
    pub subnet_ids: Vec<SubnetId>,
    /// `None`: a private group with no port reachable from outside.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddress>,
    pub containers: Vec<Container>,
}

impl ContainerGroupProperties {
    /// The group's address type; a group without `ipAddress` is private.
    pub fn address_type(&self) -> IpAddressType {
        self.ip_address
            .as_ref()
            .map_or(IpAddressType::Private, |ip| ip.kind)
    }
}

/// A reference to a subnet; `id` is the subnet's name (ACI uses a resource id there).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubnetId {
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAddress {
    #[serde(rename = "type")]
    pub kind: IpAddressType,
    /// Private group: the pool address it asks for (omitted = allocated).
    /// Public group: its public address, translated 1:1 to the private one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The only ports reachable from outside the group.
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name_label: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Port {
    pub protocol: TransportProtocol,
    pub port: u16,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.protocol, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Container {
    pub name: String,
    pub properties: ContainerProperties,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerProperties {
    pub ports: Vec<Port>,
}

/// Parses an IPv4 CIDR (or a bare address, as /32) and refuses host bits, with the fix.
pub fn parse_prefix(text: &str) -> Result<Ipv4Net, InvalidValue> {
    if text.contains(':') {
        return Err(InvalidValue(format!(
            "{text:?}: IPv6 is not supported, vnetd is IPv4 only"
        )));
    }
    let net = match text.parse::<Ipv4Net>() {
        Ok(net) => net,
        Err(_) => match text.parse::<Ipv4Addr>() {
            Ok(addr) => Ipv4Net::from(addr),
            Err(_) => {
                return Err(InvalidValue(format!(
                    "{text:?} is not an IPv4 address or CIDR (A.B.C.D/N)"
                )));
            }
        },
    };
    if net.addr() != net.network() {
        return Err(InvalidValue(format!(
            "{text} has host bits set: did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

/// Looks `text` up among keyword spellings, ignoring case as Azure does.
pub fn keyword<T: Copy>(names: &[(&str, T)], text: &str) -> Option<T> {
    names
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|&(_, value)| value)
}

/// "A, B or C" for error messages.
pub(crate) fn names<T>(names: &[(&str, T)]) -> String {
    let names: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}
