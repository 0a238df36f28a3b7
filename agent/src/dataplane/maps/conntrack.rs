//! NEW_FLOWS, FLOWS and CONNTRACK_STATS: the flow tables the programs fill (new flows in
//! NEW_FLOWS, assured ones moved to FLOWS) and the agent's garbage collector empties
//! ([`crate::gc`]), and the programs' conntrack counters; ENDPOINT_ASSURED, the assured flows
//! each pod holds, which the collector recounts.
use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use vnetd_common::{ConntrackStat, Flow, FlowKey, maps};

use super::removed;
use crate::dataplane::Dataplane;

/// A handle of its own on the flow tables and CONNTRACK_STATS (other fds on the same maps):
/// the garbage collector walks the tables on a blocking thread without holding the agent.
pub struct ConntrackMaps {
    new_flows: HashMap<MapData, FlowKey, Flow>,
    flows: HashMap<MapData, FlowKey, Flow>,
    stats: PerCpuArray<MapData, u64>,
    endpoint_assured: HashMap<MapData, [u8; 4], u64>,
}

impl ConntrackMaps {
    /// Every flow entry, new or assured. An entry the programs move from NEW_FLOWS to FLOWS
    /// during the walk may be read from both: FLOWS's copy wins. The walk of NEW_FLOWS is
    /// bounded: an LRU map the programs evict from while it is walked may restart the walk
    /// from the first key (the key it continued from is gone), so keys may repeat and the walk
    /// stops after twice the capacity.
    pub fn flows(&self) -> Result<StdHashMap<FlowKey, Flow>> {
        let mut out = StdHashMap::new();
        for (map, name, capacity) in [
            (&self.new_flows, maps::NEW_FLOWS, maps::NEW_FLOWS_MAX),
            (&self.flows, maps::FLOWS, maps::FLOWS_MAX),
        ] {
            for entry in map.iter().take(2 * capacity as usize) {
                match entry {
                    Ok((key, flow)) => {
                        out.insert(key, flow);
                    }
                    // Evicted, moved or deleted between the key and its lookup.
                    Err(MapError::KeyNotFound) => {}
                    Err(err) => return Err(err).with_context(|| format!("reading {name}")),
                }
            }
        }
        Ok(out)
    }

    /// The entry of `key`, assured or new.
    pub fn get(&self, key: &FlowKey) -> Result<Option<Flow>> {
        for (map, name) in [
            (&self.flows, maps::FLOWS),
            (&self.new_flows, maps::NEW_FLOWS),
        ] {
            match map.get(key, 0) {
                Ok(flow) => return Ok(Some(flow)),
                Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).with_context(|| format!("reading {name}[{key:?}]")),
            }
        }
        Ok(None)
    }

    /// Deletes `key` from both tables; false if neither had it (evicted, or deleted by the
    /// programs).
    pub fn remove(&mut self, key: &FlowKey) -> Result<bool> {
        let assured = removed(self.flows.remove(key))
            .with_context(|| format!("deleting {}[{key:?}]", maps::FLOWS))?;
        let new = removed(self.new_flows.remove(key))
            .with_context(|| format!("deleting {}[{key:?}]", maps::NEW_FLOWS))?;
        Ok(assured || new)
    }

    /// Writes an entry into NEW_FLOWS, where the programs create flows (tests make them here).
    pub fn insert(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
        self.new_flows
            .insert(key, flow, 0)
            .with_context(|| format!("writing {}[{key:?}]", maps::NEW_FLOWS))
    }

    /// The programs' conntrack counters, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(ConntrackStat, u64)>> {
        conntrack_stats(&self.stats)
    }

    /// The assured flows each pod holds, as the programs count them (ENDPOINT_ASSURED).
    pub fn assured_by_endpoint(&self) -> Result<BTreeMap<Ipv4Addr, u64>> {
        self.endpoint_assured
            .iter()
            .map(|entry| {
                let (ip, n) =
                    entry.with_context(|| format!("reading {}", maps::ENDPOINT_ASSURED))?;
                Ok((Ipv4Addr::from(ip), n))
            })
            .collect()
    }

    /// Writes the counts `counted` (every pod holding assured flows) into ENDPOINT_ASSURED and
    /// removes the pods that hold none. A flow the programs assure meanwhile is missing from the
    /// count until the next pass.
    pub fn set_assured_by_endpoint(&mut self, counted: &BTreeMap<Ipv4Addr, u64>) -> Result<()> {
        let name = maps::ENDPOINT_ASSURED;
        let written = self.assured_by_endpoint()?;
        for ip in written.keys().filter(|ip| !counted.contains_key(ip)) {
            removed(self.endpoint_assured.remove(&ip.octets()))
                .with_context(|| format!("deleting {name}[{ip}]"))?;
        }
        for (ip, n) in counted.iter().filter(|(ip, n)| written.get(ip) != Some(n)) {
            self.endpoint_assured
                .insert(ip.octets(), n, 0)
                .with_context(|| format!("writing {name}[{ip}] = {n}"))?;
        }
        Ok(())
    }
}

fn conntrack_stats<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> Result<Vec<(ConntrackStat, u64)>> {
    ConntrackStat::ALL
        .iter()
        .map(|stat| {
            let per_cpu = map
                .get(&(*stat as u32), 0)
                .with_context(|| format!("reading CONNTRACK_STATS[{}]", stat.name()))?;
            Ok((*stat, per_cpu.iter().sum()))
        })
        .collect()
}

impl Dataplane {
    /// New fds on the flow tables and CONNTRACK_STATS, for the garbage collector.
    pub fn conntrack_maps(&self) -> Result<ConntrackMaps> {
        let reopen = |name: &str| -> Result<MapData> {
            let id = match self.map(name)? {
                Map::LruHashMap(data) | Map::HashMap(data) | Map::PerCpuArray(data) => {
                    data.info()?.id()
                }
                _ => bail!("{name} is not the kind of map the ABI declares"),
            };
            MapData::from_id(id).with_context(|| format!("opening {name} by id {id}"))
        };
        Ok(ConntrackMaps {
            new_flows: HashMap::try_from(Map::LruHashMap(reopen(maps::NEW_FLOWS)?))?,
            flows: HashMap::try_from(Map::HashMap(reopen(maps::FLOWS)?))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(reopen(maps::CONNTRACK_STATS)?))?,
            endpoint_assured: HashMap::try_from(Map::HashMap(reopen(maps::ENDPOINT_ASSURED)?))?,
        })
    }

    /// The programs' conntrack counters, summed over CPUs.
    pub fn conntrack_stats(&self) -> Result<Vec<(ConntrackStat, u64)>> {
        conntrack_stats(&PerCpuArray::try_from(self.map(maps::CONNTRACK_STATS)?)?)
    }
}
