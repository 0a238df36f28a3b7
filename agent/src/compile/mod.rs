//! Compilation: a pure function from a valid spec to the tables the dataplane needs, as plain
//! Rust data (the dataplane turns them into BPF map entries).
//!
//! Ids are small integers in spec order: subnet `i` of `virtualNetwork.subnets` has id `i + 1`,
//! NSG `k` has id `k + 1` (0 = none), route table `t` has id `t + 1` (0 = system routes only).
//! NSG classifier ids are given by [`NsgTables::classifier_id`].
//! These ids are references inside one compiled spec. The dataplane writes route tables under
//! its own ids, stable by name across reloads ([`crate::dataplane::tables`]), keyed by
//! [`CompiledRouteTable::key`].
//!
//! Decisions (see the module docs of [`nsg`] and [`routes`] for the details):
//! * NSGs apply per subnet. ACI has no field for a group's own NSG, so there is none here;
//!   the contract's "group NSG" would slot in as a second classifier id per group.
//! * Service tags: `VirtualNetwork` = address space + connected spaces, `Internet` = its
//!   complement, `AzureLoadBalancer` = 168.63.129.16/32.
//! * Packets without ports (ICMP, ESP, AH, ...) match only rules whose port ranges are `*`.
//! * No `None` system routes for private ranges outside the address space.

pub mod nat;
pub mod nsg;
pub mod prefix;
pub mod reference;
pub mod routes;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use ipnet::Ipv4Net;

pub use nsg::{
    AddrEntry, Classifier, MAX_CLASSIFIER_RULES, NsgTables, PortEntry, ProtoClass, ProtoEntry,
    RULE_WORDS, RuleBitmap, RuleIndex, RuleMeta, ServiceTags,
};
pub use prefix::PortPrefix;
pub use routes::{CompiledRouteTable, NextHop, RouteEntry, RouteOrigin};

use crate::spec::{AddressRange, Direction, IpAddressType, Port, PortRange, Problems, Spec};

/// Link-local addresses (the pods' gateway 169.254.1.1, metadata services) are never
/// masqueraded.
pub const LINK_LOCAL: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16);

/// Everything the dataplane of one node needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub node: NodeConfig,
    /// By id: `subnets[i].id == i + 1`.
    pub subnets: Vec<CompiledSubnet>,
    /// The `VirtualNetwork` service tag: address space, then connected spaces.
    pub vnet_prefixes: Vec<Ipv4Net>,
    /// The `Internet` service tag: the complement of `vnet_prefixes`.
    pub internet_prefixes: Vec<Ipv4Net>,
    /// Destinations never SNATed: VNet, connected spaces, `nonMasqueradeCidrs`, 169.254.0.0/16.
    pub no_masquerade: Vec<Ipv4Net>,
    pub snat_port_range: PortRange,
    /// Idle flows expire after this long.
    pub idle_timeout: Duration,
    /// The Kubernetes cluster's service range (`networkProfile.serviceCidr`): pods' traffic to
    /// it goes to the node's stack (kube-proxy). `None`: no Services.
    pub service_cidr: Option<Ipv4Net>,
    /// The groups that may run on this node (see [`CompiledGroup`]).
    pub container_groups: Vec<CompiledGroup>,
    /// By id: `routes[0]` is the system table, `routes[t]` the spec's route table `t - 1`.
    pub routes: Vec<CompiledRouteTable>,
    pub nsgs: NsgTables,
}

impl Compiled {
    pub fn subnet(&self, id: u32) -> Option<&CompiledSubnet> {
        self.subnets.get(usize::try_from(id).ok()?.checked_sub(1)?)
    }

    /// The subnet containing `addr`.
    pub fn subnet_of(&self, addr: Ipv4Addr) -> Option<&CompiledSubnet> {
        self.subnets.iter().find(|s| s.prefix.contains(&addr))
    }

    pub fn route_table(&self, id: u32) -> Option<&CompiledRouteTable> {
        self.routes.get(usize::try_from(id).ok()?)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    /// The uplink into the virtual network.
    pub interface: String,
    /// SNAT source for traffic leaving the VNet.
    pub primary_ip: Ipv4Addr,
    /// The subnet of `primary_ip`.
    pub primary_subnet_id: u32,
    /// The pod address pool, per subnet (subnet order), ranges sorted.
    pub pool: Vec<SubnetPool>,
    pub max_pods: u32,
}

impl NodeConfig {
    /// The pool ranges in `subnet_id`.
    pub fn pool_in(&self, subnet_id: u32) -> &[AddressRange] {
        self.pool
            .iter()
            .find(|p| p.subnet_id == subnet_id)
            .map_or(&[], |p| &p.ranges)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetPool {
    pub subnet_id: u32,
    pub ranges: Vec<AddressRange>,
}

impl SubnetPool {
    pub fn size(&self) -> u64 {
        self.ranges.iter().map(AddressRange::len).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledSubnet {
    pub id: u32,
    pub name: String,
    pub prefix: Ipv4Net,
    /// 0 = no NSG.
    pub nsg_id: u32,
    /// Classifier ids of the subnet's NSG (0 = no NSG: everything allowed).
    pub inbound_classifier: u32,
    pub outbound_classifier: u32,
    /// 0 = system routes only.
    pub route_table_id: u32,
    /// Delegated to container groups: holds nothing else.
    pub delegated: bool,
}

/// A container group that may run on this node: one pinned (by a private `ip`) to this node's
/// pool, or one without a pinned address whose subnet this node has a pool in. Groups pinned
/// to another node's pool are left out. A listed group is a candidate: the dataplane gives it
/// an address (and answers ARP for its public address) when it is attached on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledGroup {
    pub name: String,
    pub subnet_id: u32,
    pub address_type: IpAddressType,
    /// The pool address the group asked for; `None` = allocate one.
    pub private_ip: Option<Ipv4Addr>,
    /// A Public group's public address, translated 1:1 to its private one.
    pub public_ip: Option<Ipv4Addr>,
    /// The only ports reachable from outside the group.
    pub ports: Vec<Port>,
    pub dns_name_label: Option<String>,
    pub location: Option<String>,
}

/// Compiles `spec` for the node named `node`. Validates first: the dataplane never sees a
/// spec with problems.
pub fn compile(spec: &Spec, node: &str) -> anyhow::Result<Compiled> {
    let problems = crate::spec::validate(spec);
    if !problems.is_empty() {
        return Err(anyhow!("the spec has problems:\n{}", Problems(&problems)));
    }
    compile_valid(spec, node)
}

/// [`compile`] without the validation, for a spec known to be valid. On an invalid spec it
/// does not panic; the tables then follow the spec literally (dangling references mean
/// "none").
pub fn compile_valid(spec: &Spec, node_name: &str) -> anyhow::Result<Compiled> {
    let node = spec.node(node_name).with_context(|| {
        let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        format!(
            "no node named {node_name:?} in the spec (nodes: {})",
            names.join(", ")
        )
    })?;
    let vnet = &spec.virtual_network;
    let id = |index: usize| u32::try_from(index + 1).unwrap_or(u32::MAX);

    let subnets: Vec<CompiledSubnet> = vnet
        .subnets
        .iter()
        .enumerate()
        .map(|(i, subnet)| {
            let nsg_id = subnet
                .network_security_group
                .as_deref()
                .and_then(|name| spec.network_security_group_index(name))
                .map_or(0, id);
            let classifier = |direction| {
                if nsg_id == 0 {
                    0
                } else {
                    NsgTables::classifier_id(nsg_id, direction)
                }
            };
            CompiledSubnet {
                id: id(i),
                name: subnet.name.clone(),
                prefix: subnet.address_prefix,
                nsg_id,
                inbound_classifier: classifier(Direction::Inbound),
                outbound_classifier: classifier(Direction::Outbound),
                route_table_id: subnet
                    .route_table
                    .as_deref()
                    .and_then(|name| spec.route_table_index(name))
                    .map_or(0, id),
                delegated: subnet.is_delegated(),
            }
        })
        .collect();
    let subnet_id_of = |addr: Ipv4Addr| {
        subnets
            .iter()
            .find(|s| s.prefix.contains(&addr))
            .map(|s| s.id)
    };

    let mut pool: Vec<SubnetPool> = Vec::new();
    for subnet in &subnets {
        let mut ranges: Vec<AddressRange> = node
            .secondary_ip_addresses
            .iter()
            .filter(|range| !range.is_reversed() && range.is_inside(&subnet.prefix))
            .copied()
            .collect();
        ranges.sort();
        if !ranges.is_empty() {
            pool.push(SubnetPool {
                subnet_id: subnet.id,
                ranges,
            });
        }
    }
    let node_config = NodeConfig {
        name: node.name.clone(),
        interface: node.interface.clone(),
        primary_ip: node.primary_ip_address,
        primary_subnet_id: subnet_id_of(node.primary_ip_address).unwrap_or(0),
        pool,
        max_pods: node.max_pods,
    };

    let vnet_prefixes = spec.vnet_prefixes();
    let internet_prefixes = prefix::complement(&vnet_prefixes);
    let no_masquerade = nat::no_masquerade(spec);

    let container_groups = spec
        .container_groups
        .iter()
        .filter_map(|group| {
            let props = &group.properties;
            let subnet_id = props
                .subnet_ids
                .first()
                .and_then(|s| spec.subnet_index(&s.id))
                .map(id)?;
            let address = props.ip_address.as_ref();
            let address_type = props.address_type();
            let private_ip = address
                .and_then(|a| a.ip)
                .filter(|_| address_type == IpAddressType::Private);
            let public_ip = address
                .and_then(|a| a.ip)
                .filter(|_| address_type == IpAddressType::Public);
            let runs_here = match private_ip {
                Some(ip) => node.secondary_ip_addresses.iter().any(|r| r.contains(ip)),
                None => !node_config.pool_in(subnet_id).is_empty(),
            };
            runs_here.then(|| CompiledGroup {
                name: group.name.clone(),
                subnet_id,
                address_type,
                private_ip,
                public_ip,
                ports: address.map(|a| a.ports.clone()).unwrap_or_default(),
                dns_name_label: address.and_then(|a| a.dns_name_label.clone()),
                location: group.location.clone(),
            })
        })
        .collect();

    let tags = ServiceTags {
        virtual_network: vnet_prefixes.clone(),
        internet: internet_prefixes.clone(),
    };
    Ok(Compiled {
        node: node_config,
        subnets,
        vnet_prefixes,
        internet_prefixes,
        no_masquerade,
        snat_port_range: nat::snat_ports(spec),
        idle_timeout: nat::idle_timeout(spec),
        service_cidr: spec.network_profile.as_ref().and_then(|p| p.service_cidr),
        container_groups,
        routes: routes::compile_route_tables(vnet, &spec.route_tables),
        nsgs: nsg::compile_nsgs(&spec.network_security_groups, &tags)?,
    })
}
