//! This node's view of the compiled spec: its uplink, its pools, the subnets and container
//! groups it may attach, and the route tables its subnets use. It holds the [`Compiled`]
//! model itself: the dataplane converts the compiled tables to map entries
//! ([`crate::dataplane::maps`]), nothing is restated here.
use std::{net::Ipv4Addr, ops::RangeInclusive};

use ipnet::Ipv4Net;

use crate::compile::{Compiled, CompiledRouteTable};

#[derive(Clone, Debug)]
pub struct NodePlan {
    pub node: String,
    pub uplink: String,
    pub primary_ip: Ipv4Addr,
    pub max_pods: u32,
    pub subnets: Vec<SubnetPlan>,
    pub container_groups: Vec<GroupPlan>,
    compiled: Compiled,
}

#[derive(Clone, Debug)]
pub struct SubnetPlan {
    pub name: String,
    pub prefix: Ipv4Net,
    /// This node's pool inside the subnet.
    pub pool: Vec<RangeInclusive<Ipv4Addr>>,
    /// Delegated to container groups: plain pods may not use it.
    pub delegated: bool,
    /// The compiled id of the route table its endpoints use (0 = system routes only): an
    /// index into [`Compiled::routes`], not what the dataplane writes.
    pub route_table: u32,
}

#[derive(Clone, Debug)]
pub struct GroupPlan {
    pub name: String,
    pub subnet: String,
    pub ip: Option<Ipv4Addr>,
}

impl NodePlan {
    pub fn subnet(&self, name: &str) -> Option<&SubnetPlan> {
        self.subnets.iter().find(|s| s.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&GroupPlan> {
        self.container_groups.iter().find(|g| g.name == name)
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The route table of `subnet`'s endpoints.
    pub fn route_table_of(&self, subnet: &str) -> Option<&CompiledRouteTable> {
        self.compiled.route_table(self.subnet(subnet)?.route_table)
    }

    /// The route tables the dataplane holds for this node.
    pub fn route_tables(&self) -> impl Iterator<Item = &CompiledRouteTable> {
        self.compiled.routes.iter()
    }
}

impl NodePlan {
    /// This node's part of a compiled spec.
    pub fn from_compiled(c: Compiled) -> Self {
        let subnets = c
            .subnets
            .iter()
            .map(|s| SubnetPlan {
                name: s.name.clone(),
                prefix: s.prefix,
                pool: c
                    .node
                    .pool_in(s.id)
                    .iter()
                    .map(|r| r.first..=r.last)
                    .collect(),
                delegated: s.delegated,
                route_table: s.route_table_id,
            })
            .collect();
        let container_groups = c
            .container_groups
            .iter()
            .filter_map(|g| {
                Some(GroupPlan {
                    name: g.name.clone(),
                    subnet: c.subnet(g.subnet_id)?.name.clone(),
                    ip: g.private_ip,
                })
            })
            .collect();
        Self {
            node: c.node.name.clone(),
            uplink: c.node.interface.clone(),
            primary_ip: c.node.primary_ip,
            max_pods: c.node.max_pods,
            subnets,
            container_groups,
            compiled: c,
        }
    }

    /// Parses, validates and compiles `spec` for `node`.
    pub fn from_spec(spec: &crate::spec::Spec, node: &str) -> anyhow::Result<Self> {
        Ok(Self::from_compiled(crate::compile::compile(spec, node)?))
    }
}
