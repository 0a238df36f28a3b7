//! FLOWS and CONNTRACK_STATS: the flow table the programs fill and the agent's garbage
//! collector empties ([`crate::gc`]), and the programs' conntrack counters.
use std::collections::HashMap as StdHashMap;

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use vnetd_common::{ConntrackStat, Flow, FlowKey, maps};

use super::removed;
use crate::dataplane::Dataplane;

/// A handle of its own on FLOWS and CONNTRACK_STATS (other fds on the same maps): the garbage
/// collector walks the table on a blocking thread without holding the agent.
pub struct ConntrackMaps {
    flows: HashMap<MapData, FlowKey, Flow>,
    stats: PerCpuArray<MapData, u64>,
}

impl ConntrackMaps {
    /// Every entry of FLOWS. The walk is bounded: an LRU map the programs evict from while it
    /// is walked may restart the walk from the first key (the key it continued from is gone),
    /// so keys may repeat and the walk stops after twice the capacity.
    pub fn flows(&self) -> Result<StdHashMap<FlowKey, Flow>> {
        let mut out = StdHashMap::new();
        for entry in self.flows.iter().take(2 * maps::FLOWS_MAX as usize) {
            match entry {
                Ok((key, flow)) => {
                    out.insert(key, flow);
                }
                // Evicted or deleted between the key and its lookup.
                Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("reading FLOWS"),
            }
        }
        Ok(out)
    }

    pub fn get(&self, key: &FlowKey) -> Result<Option<Flow>> {
        match self.flows.get(key, 0) {
            Ok(flow) => Ok(Some(flow)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading FLOWS[{key:?}]")),
        }
    }

    /// Deletes `key`; false if it was not there (evicted, or deleted by the programs).
    pub fn remove(&mut self, key: &FlowKey) -> Result<bool> {
        removed(self.flows.remove(key)).with_context(|| format!("deleting FLOWS[{key:?}]"))
    }

    /// Writes an entry (the programs create flows; tests make them here).
    pub fn insert(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
        self.flows
            .insert(key, flow, 0)
            .with_context(|| format!("writing FLOWS[{key:?}]"))
    }

    /// The programs' conntrack counters, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(ConntrackStat, u64)>> {
        conntrack_stats(&self.stats)
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
    /// New fds on FLOWS and CONNTRACK_STATS, for the garbage collector.
    pub fn conntrack_maps(&self) -> Result<ConntrackMaps> {
        let reopen = |name: &str| -> Result<MapData> {
            let id = match self.map(name)? {
                Map::LruHashMap(data) | Map::PerCpuArray(data) => data.info()?.id(),
                _ => bail!("{name} is not the kind of map the ABI declares"),
            };
            MapData::from_id(id).with_context(|| format!("opening {name} by id {id}"))
        };
        Ok(ConntrackMaps {
            flows: HashMap::try_from(Map::LruHashMap(reopen(maps::FLOWS)?))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(reopen(maps::CONNTRACK_STATS)?))?,
        })
    }

    /// The programs' conntrack counters, summed over CPUs.
    pub fn conntrack_stats(&self) -> Result<Vec<(ConntrackStat, u64)>> {
        conntrack_stats(&PerCpuArray::try_from(self.map(maps::CONNTRACK_STATS)?)?)
    }
}
