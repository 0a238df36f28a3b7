//! What this node's agent needs from the compiled spec: its uplink, its pools, the subnets and
//! container groups it may attach. Built from `compile::Compiled`.
use std::{collections::BTreeMap, net::Ipv4Addr, ops::RangeInclusive};

use ipnet::Ipv4Net;
use vnetd_common::{NextHop, Route};

use crate::{
    compile::{Compiled, RouteEntry},
    spec::NextHopType,
};

#[derive(Clone, Debug)]
pub struct NodePlan {
    pub node: String,
    pub uplink: String,
    pub primary_ip: Ipv4Addr,
    pub max_pods: u32,
    pub subnets: Vec<SubnetPlan>,
    pub container_groups: Vec<GroupPlan>,
    /// (route table id, prefix) -> next hop; table 0 holds the system routes.
    pub routes: BTreeMap<(u32, Ipv4Net), Route>,
}

#[derive(Clone, Debug)]
pub struct SubnetPlan {
    pub name: String,
    pub prefix: Ipv4Net,
    /// This node's pool inside the subnet.
    pub pool: Vec<RangeInclusive<Ipv4Addr>>,
    /// Delegated to container groups: plain pods may not use it.
    pub delegated: bool,
    /// The route table its endpoints use (0 = system routes only).
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
}

impl NodePlan {
    /// This node's part of a compiled spec.
    pub fn from_compiled(c: &Compiled) -> Self {
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
        let routes = c
            .routes
            .iter()
            .flat_map(|table| {
                table
                    .entries
                    .iter()
                    .map(move |e| ((table.id, e.prefix), route_entry(e)))
            })
            .collect();
        Self {
            node: c.node.name.clone(),
            uplink: c.node.interface.clone(),
            primary_ip: c.node.primary_ip,
            max_pods: c.node.max_pods,
            subnets,
            container_groups,
            routes,
        }
    }

    /// Parses, validates and compiles `spec` for `node`.
    pub fn from_spec(spec: &crate::spec::Spec, node: &str) -> anyhow::Result<Self> {
        Ok(Self::from_compiled(&crate::compile::compile(spec, node)?))
    }
}

fn route_entry(e: &RouteEntry) -> Route {
    let next_hop = match e.next_hop.kind {
        NextHopType::VnetLocal => NextHop::VnetLocal,
        NextHopType::Internet => NextHop::Internet,
        NextHopType::None => NextHop::None,
        NextHopType::VirtualAppliance => NextHop::VirtualAppliance,
        NextHopType::VirtualNetworkGateway => NextHop::VirtualNetworkGateway,
    };
    Route {
        next_hop: next_hop as u32,
        next_hop_ip: e.next_hop.ip.map_or([0; 4], |ip| ip.octets()),
    }
}
