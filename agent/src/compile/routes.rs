//! Route tables: Azure's system routes merged with each table's user-defined routes, as
//! longest-prefix-match entries.
//!
//! System routes (what Azure puts in every subnet's effective routes):
//! * each address-space prefix -> `VnetLocal`;
//! * each connected address space -> `VirtualNetworkGateway` (peerings and VPN/ExpressRoute
//!   are both reached through the uplink here);
//! * 0.0.0.0/0 -> `Internet`.
//!
//! Azure also adds `None` routes for 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and
//! 100.64.0.0/10 where they lie outside the address space. vnetd does NOT: networks around a
//! vnetd node (a lab's appliance and edge, an on-premises range not declared as connected)
//! commonly use private addresses, and dropping them by default would surprise more than it
//! protects. A user who wants that behaviour writes the `None` routes in a route table.
//!
//! A user route with the same prefix as a system route replaces it (Azure: user routes win
//! over system routes of equal prefix); otherwise the longest prefix decides.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::spec::{NextHopType, RouteTable, VirtualNetwork};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub kind: NextHopType,
    /// The appliance, for `VirtualAppliance` only.
    pub ip: Option<Ipv4Addr>,
}

/// Where an entry comes from (for `vnetd status` and debugging).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteOrigin {
    System,
    /// A user-defined route, by name.
    User(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub prefix: Ipv4Net,
    pub next_hop: NextHop,
    pub origin: RouteOrigin,
}

/// The key of the system routes' table (see [`CompiledRouteTable::key`]).
pub const SYSTEM_TABLE: &str = "(system)";

/// The effective routes of the subnets using one route table (id 0: subnets without one,
/// system routes only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRouteTable {
    pub id: u32,
    /// The spec's route table name; `None` for table 0.
    pub name: Option<String>,
    /// Longest prefix first; one entry per prefix.
    pub entries: Vec<RouteEntry>,
    /// Every address of the VNet's address space is routed to the VNet (`VnetLocal`): no route
    /// overrides any part of it. Then a pod's packet to a pod of the same node can be delivered
    /// without a lookup (the dataplane's `ENDPOINT_VNET_DIRECT`).
    pub vnet_direct: bool,
}

impl CompiledRouteTable {
    /// What names the table across reloads (its dataplane id is recorded by this name):
    /// the spec's name, case-folded as Azure compares names; `(system)` for table 0, a name
    /// no spec table can have.
    pub fn key(&self) -> String {
        self.name
            .as_deref()
            .map_or_else(|| SYSTEM_TABLE.to_string(), str::to_lowercase)
    }

    /// Longest-prefix match, as the eBPF side's LPM map does. Always `Some` for a compiled
    /// table, which has a 0.0.0.0/0 entry.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&RouteEntry> {
        self.entries
            .iter()
            .filter(|e| e.prefix.contains(&dst))
            .max_by_key(|e| e.prefix.prefix_len())
    }
}

pub fn system_routes(vnet: &VirtualNetwork) -> Vec<RouteEntry> {
    let route = |prefix, kind| RouteEntry {
        prefix,
        next_hop: NextHop { kind, ip: None },
        origin: RouteOrigin::System,
    };
    let mut routes: Vec<RouteEntry> = vnet
        .address_space
        .iter()
        .map(|&net| route(net, NextHopType::VnetLocal))
        .collect();
    routes.extend(
        vnet.connected_address_spaces
            .iter()
            .map(|&net| route(net, NextHopType::VirtualNetworkGateway)),
    );
    routes.push(route(Ipv4Net::default(), NextHopType::Internet));
    routes
}

/// Table 0 (system routes) followed by one table per spec route table, ids in spec order.
pub fn compile_route_tables(
    vnet: &VirtualNetwork,
    tables: &[RouteTable],
) -> Vec<CompiledRouteTable> {
    let system = system_routes(vnet);
    let space = &vnet.address_space;
    let mut compiled = vec![merge(0, None, &system, None, space)];
    for (i, table) in tables.iter().enumerate() {
        let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
        compiled.push(merge(
            id,
            Some(table.name.clone()),
            &system,
            Some(table),
            space,
        ));
    }
    compiled
}

/// Whether `entries` route every address of `address_space` to the VNet: for each of its
/// prefixes, every entry inside it (itself included) and the most specific entry containing it
/// are `VnetLocal`, so whatever address of it a lookup asks for, it finds a `VnetLocal` entry.
fn routes_vnet_locally(entries: &[RouteEntry], address_space: &[Ipv4Net]) -> bool {
    let local = |e: &RouteEntry| e.next_hop.kind == NextHopType::VnetLocal;
    !address_space.is_empty()
        && address_space.iter().all(|space| {
            let inside = entries.iter().filter(|e| space.contains(&e.prefix));
            let covering = entries
                .iter()
                .filter(|e| e.prefix.contains(space))
                .max_by_key(|e| e.prefix.prefix_len());
            inside.clone().all(local) && covering.is_some_and(local)
        })
}

fn merge(
    id: u32,
    name: Option<String>,
    system: &[RouteEntry],
    table: Option<&RouteTable>,
    address_space: &[Ipv4Net],
) -> CompiledRouteTable {
    // Keyed by prefix. Among system routes of one prefix (only on a spec validation refuses)
    // the first wins; a user route replaces a system route, and the last user route of a
    // prefix wins.
    let mut by_prefix: BTreeMap<(std::cmp::Reverse<u8>, Ipv4Addr), RouteEntry> = BTreeMap::new();
    let key = |net: &Ipv4Net| (std::cmp::Reverse(net.prefix_len()), net.network());
    for entry in system {
        by_prefix
            .entry(key(&entry.prefix))
            .or_insert_with(|| entry.clone());
    }
    for route in table.map(|t| t.routes.as_slice()).unwrap_or_default() {
        let entry = RouteEntry {
            prefix: route.address_prefix,
            next_hop: NextHop {
                kind: route.next_hop_type,
                ip: route.next_hop_ip_address,
            },
            origin: RouteOrigin::User(route.name.clone()),
        };
        by_prefix.insert(key(&route.address_prefix), entry);
    }
    let entries: Vec<RouteEntry> = by_prefix.into_values().collect();
    CompiledRouteTable {
        id,
        name,
        vnet_direct: routes_vnet_locally(&entries, address_space),
        entries,
    }
}
