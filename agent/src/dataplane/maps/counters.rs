//! TRAFFIC and DROPS: per-CPU counters, read and summed (the programs write them).
use anyhow::Result;
use aya::maps::PerCpuArray;
use vnetd_common::{DropReason, Path as TrafficPath, Traffic, maps};

use crate::dataplane::Dataplane;

impl Dataplane {
    /// Traffic by path, summed over CPUs.
    pub fn traffic(&self) -> Result<Vec<(TrafficPath, Traffic)>> {
        let map: PerCpuArray<_, Traffic> = PerCpuArray::try_from(self.map(maps::TRAFFIC)?)?;
        TrafficPath::ALL
            .iter()
            .map(|path| {
                let per_cpu = map.get(&(*path as u32), 0)?;
                let sum = per_cpu.iter().fold(Traffic::default(), |acc, t| Traffic {
                    packets: acc.packets + t.packets,
                    bytes: acc.bytes + t.bytes,
                });
                Ok((*path, sum))
            })
            .collect()
    }

    /// Drops by reason, summed over CPUs.
    pub fn drops(&self) -> Result<Vec<(DropReason, u64)>> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(maps::DROPS)?)?;
        DropReason::ALL
            .iter()
            .map(|reason| Ok((*reason, map.get(&(*reason as u32), 0)?.iter().sum())))
            .collect()
    }
}
