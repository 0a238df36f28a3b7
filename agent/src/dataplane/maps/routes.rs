//! ROUTES: the route tables, longest prefix match on (table id, destination). A compiled table
//! becomes one [`RouteEntries`] here; which id it is written under is the business of
//! [`crate::dataplane::tables`].
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result};
use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use ipnet::Ipv4Net;
use vnetd_common::{NextHop, Route, RouteKey, maps};

use super::removed;
use crate::{
    compile::{CompiledRouteTable, RouteEntry},
    dataplane::{Dataplane, tables::TableStore},
    spec::NextHopType,
};

/// One route table as the kernel holds it: prefix -> next hop.
pub type RouteEntries = BTreeMap<Ipv4Net, Route>;

/// The ABI entries of a compiled route table.
pub fn entries(table: &CompiledRouteTable) -> RouteEntries {
    table
        .entries
        .iter()
        .map(|e| (e.prefix, abi_route(e)))
        .collect()
}

pub fn abi_route(e: &RouteEntry) -> Route {
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

/// A stable digest of a table's entries (what [`crate::dataplane::tables::TableIds`] compares
/// to tell a changed table from an unchanged one across restarts).
pub fn fingerprint(entries: &RouteEntries) -> u64 {
    let mut digest = crate::dataplane::tables::Fingerprint::default();
    for (net, route) in entries {
        digest.write(&net.network().octets());
        digest.write(&[net.prefix_len()]);
        digest.write(&route.next_hop.to_le_bytes());
        digest.write(&route.next_hop_ip);
    }
    digest.finish()
}

/// ROUTES as this agent holds it: (table id, prefix) -> route.
pub type Present = BTreeMap<(u32, Ipv4Net), Route>;

impl Dataplane {
    /// Makes ROUTES hold exactly `routes` ((table, prefix) -> route), writing only differences:
    /// new and changed entries first, then removals, so a lookup never misses a route that
    /// exists before and after.
    pub fn sync_routes(&mut self, routes: &BTreeMap<(u32, Ipv4Net), Route>) -> Result<()> {
        self.upsert_routes(routes)?;
        self.prune_routes(routes)
    }

    /// Writes the entries of `routes` that are new or changed.
    pub fn upsert_routes(&mut self, routes: &BTreeMap<(u32, Ipv4Net), Route>) -> Result<()> {
        let mut present = self.take_routes()?;
        let mut map = self.routes_map()?;
        for (k, route) in routes {
            if present.get(k) != Some(route) {
                map.insert(&route_key(k), route, 0).with_context(|| {
                    format!(
                        "writing route {k:?} (ROUTES holds at most {} entries)",
                        maps::ROUTES_MAX
                    )
                })?;
                present.insert(*k, *route);
            }
        }
        self.mirror.routes = Some(present);
        Ok(())
    }

    /// Removes the entries that are not in `routes`.
    pub fn prune_routes(&mut self, routes: &BTreeMap<(u32, Ipv4Net), Route>) -> Result<()> {
        let mut present = self.take_routes()?;
        let stale: Vec<(u32, Ipv4Net)> = present
            .keys()
            .filter(|k| !routes.contains_key(k))
            .copied()
            .collect();
        let mut map = self.routes_map()?;
        for k in stale {
            removed(map.remove(&route_key(&k))).with_context(|| format!("removing route {k:?}"))?;
            present.remove(&k);
        }
        self.mirror.routes = Some(present);
        Ok(())
    }

    /// The routes in ROUTES, read from the kernel.
    pub fn routes(&mut self) -> Result<BTreeMap<(u32, Ipv4Net), Route>> {
        let map = self.routes_map()?;
        let mut present = BTreeMap::new();
        for key in map.keys() {
            let key = key.context("reading ROUTES")?;
            let data = key.data();
            let plen = key.prefix_len() - RouteKey::TABLE_BITS;
            let net = Ipv4Net::new(Ipv4Addr::from(data.dst), plen as u8)?;
            present.insert((u32::from_be_bytes(data.table), net), map.get(&key, 0)?);
        }
        Ok(present)
    }

    /// What ROUTES holds, taken out of the mirror (read from the kernel if it is not known):
    /// put back after a successful change, left out after a failed one.
    fn take_routes(&mut self) -> Result<Present> {
        match self.mirror.routes.take() {
            Some(present) => Ok(present),
            None => self.routes(),
        }
    }

    fn routes_map(&mut self) -> Result<LpmTrie<&mut MapData, RouteKey, Route>> {
        Ok(LpmTrie::try_from(self.map_mut(maps::ROUTES)?)?)
    }
}

/// Route tables under generation-numbered ids (see [`crate::dataplane::tables`]).
impl TableStore<RouteEntries> for Dataplane {
    fn fingerprint(table: &RouteEntries) -> u64 {
        fingerprint(table)
    }

    fn present_ids(&mut self) -> Result<BTreeSet<u32>> {
        let present = self.take_routes()?;
        let ids = present.keys().map(|(table, _)| *table).collect();
        self.mirror.routes = Some(present);
        Ok(ids)
    }

    fn write(&mut self, tables: &[(u32, &RouteEntries)]) -> Result<()> {
        let mut present = self.take_routes()?;
        let mut map = self.routes_map()?;
        for (id, entries) in tables {
            for (net, route) in *entries {
                let k = (*id, *net);
                if present.get(&k) != Some(route) {
                    map.insert(&route_key(&k), route, 0).with_context(|| {
                        format!(
                            "writing route {net} of route table {id}: ROUTES holds at most \
                             ROUTES_MAX = {} entries",
                            maps::ROUTES_MAX
                        )
                    })?;
                    present.insert(k, *route);
                }
            }
        }
        let wanted: BTreeMap<u32, &RouteEntries> = tables.iter().copied().collect();
        let stale: Vec<(u32, Ipv4Net)> = present
            .keys()
            .filter(|(id, net)| {
                wanted
                    .get(id)
                    .is_some_and(|entries| !entries.contains_key(net))
            })
            .copied()
            .collect();
        for k @ (id, net) in stale {
            removed(map.remove(&route_key(&k)))
                .with_context(|| format!("removing route {net} of route table {id}"))?;
            present.remove(&k);
        }
        self.mirror.routes = Some(present);
        Ok(())
    }

    fn remove(&mut self, ids: &BTreeSet<u32>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut present = self.take_routes()?;
        let stale: Vec<(u32, Ipv4Net)> = present
            .keys()
            .filter(|(id, _)| ids.contains(id))
            .copied()
            .collect();
        let mut map = self.routes_map()?;
        for k @ (id, net) in stale {
            removed(map.remove(&route_key(&k)))
                .with_context(|| format!("removing route {net} of route table {id}"))?;
            present.remove(&k);
        }
        self.mirror.routes = Some(present);
        Ok(())
    }
}

fn route_key((table, net): &(u32, Ipv4Net)) -> Key<RouteKey> {
    Key::new(
        RouteKey::TABLE_BITS + u32::from(net.prefix_len()),
        RouteKey {
            table: table.to_be_bytes(),
            dst: net.network().octets(),
        },
    )
}
