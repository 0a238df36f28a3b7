//! The NSG rules' hit counters (`NSG_HITS`, per CPU): read summed, created for a fresh
//! classifier after its switch, reset when a classifier stops serving.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use aya::maps::{MapError, PerCpuHashMap, PerCpuValues};
use vnetd_common::{NsgRuleKey, maps};

use super::present::Present;
use crate::dataplane::{Dataplane, maps::batch};

/// Creates a map entry only if its key has none.
const BPF_NOEXIST: u64 = 1;

impl Dataplane {
    /// Packets each rule decided, summed over CPUs: (classifier id, rule index) -> count
    /// (read in batches: the agent keeps a counter per rule of every classifier and standby).
    pub fn nsg_hits(&self) -> Result<BTreeMap<NsgRuleKey, u64>> {
        let map = self.map(maps::NSG_HITS)?;
        // The types checked against the map's sizes, as aya does.
        PerCpuHashMap::<_, NsgRuleKey, u64>::try_from(map)?;
        let all: Vec<(NsgRuleKey, Vec<u64>)> =
            batch::lookup_all(map, possible_cpus()?).context("reading NSG_HITS")?;
        Ok(all
            .into_iter()
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect())
    }

    /// Packets each rule of the classifiers `ids` decided, summed over CPUs: what a switch
    /// carries by name before it resets or deletes those classifiers' counters (NSG_HITS read
    /// in batches).
    pub fn nsg_hits_of(&self, ids: &BTreeSet<u32>) -> Result<BTreeMap<NsgRuleKey, u64>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut hits = self.nsg_hits()?;
        hits.retain(|key, _| ids.contains(&key.classifier));
        Ok(hits)
    }

    /// Creates a zero counter (on every CPU) in NSG_HITS for each rule of the classifiers
    /// `live` that has none: after a switch, off its path (a classifier's first generation and
    /// the standby just prepared for it; standbys that served keep theirs). `BPF_NOEXIST`: a counter the program created on a rule's first
    /// hit keeps its count.
    pub fn create_nsg_counters(&mut self, live: &BTreeSet<u32>) -> Result<()> {
        let mut present = self.take_nsgs()?;
        let missing: Vec<NsgRuleKey> = present
            .rules
            .iter()
            .filter(|(id, _)| live.contains(id))
            .flat_map(|(id, rules)| {
                rules.keys().map(|rule| NsgRuleKey {
                    classifier: *id,
                    rule: *rule,
                })
            })
            .filter(|key| !present.hits.contains(key))
            .collect();
        if missing.is_empty() {
            self.mirror.nsgs = Some(present);
            return Ok(());
        }
        let cpus = possible_cpus()?;
        let mut hits: PerCpuHashMap<_, NsgRuleKey, u64> =
            PerCpuHashMap::try_from(self.map_mut(maps::NSG_HITS)?)?;
        for key in missing {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).context("per-CPU zeros")?;
            match hits.insert(key, zeros, BPF_NOEXIST) {
                Ok(()) => {}
                Err(MapError::SyscallError(err))
                    if err.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!(
                            "writing NSG_HITS[classifier {}, rule {}] (capacity {})",
                            key.classifier,
                            key.rule,
                            maps::NSG_RULES_MAX
                        )
                    });
                }
            }
            present.hits.insert(key);
        }
        self.mirror.nsgs = Some(present);
        Ok(())
    }

    /// Sets the counters `keys` to zero on every CPU (creating those that are missing), in
    /// batches: for classifiers no endpoint points at (so no program creates them meanwhile).
    pub(super) fn zero_nsg_counters(
        &self,
        keys: &[NsgRuleKey],
        present: &mut Present,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let cpus = possible_cpus()?;
        let map = self.map(maps::NSG_HITS)?;
        PerCpuHashMap::<_, NsgRuleKey, u64>::try_from(map)?;
        let zeros = vec![0u64; keys.len() * cpus];
        batch::update(map, keys, &zeros).map_err(|stopped| {
            let key = stopped.entry(keys);
            anyhow::Error::from(stopped.error).context(format!(
                "writing NSG_HITS[classifier {}, rule {}] (capacity {})",
                key.classifier,
                key.rule,
                maps::NSG_RULES_MAX
            ))
        })?;
        present.hits.extend(keys.iter().copied());
        Ok(())
    }
}

/// The CPUs a per-CPU map has a value for.
fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus()
        .map_err(|(what, err)| anyhow::Error::from(err).context(format!("counting CPUs ({what})")))
}
