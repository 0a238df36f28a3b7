//! What the NSG maps hold, by classifier id ([`Present`]): read from the kernel once, then
//! kept in the dataplane's mirror and updated with every write, so a change is diffed without
//! reading the maps again.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, LpmTrie, MapError, PerCpuHashMap};
use vnetd_common::{NsgAddrKey, NsgPortKey, NsgProtoKey, NsgRule, NsgRuleKey, RuleBitmap, maps};

use super::entries::{ClassifierEntries, LpmEntries, fingerprint};
use crate::dataplane::Dataplane;

/// Everything the NSG maps hold, by classifier id.
#[derive(Debug, Default)]
pub struct Present {
    pub(super) src_addr: BTreeMap<u32, LpmEntries>,
    pub(super) dst_addr: BTreeMap<u32, LpmEntries>,
    pub(super) src_port: BTreeMap<u32, LpmEntries>,
    pub(super) dst_port: BTreeMap<u32, LpmEntries>,
    pub(super) proto: BTreeMap<u32, BTreeMap<u8, RuleBitmap>>,
    pub(super) portless: BTreeMap<u32, RuleBitmap>,
    pub(super) rules: BTreeMap<u32, BTreeMap<u32, NsgRule>>,
    pub(super) hits: BTreeSet<NsgRuleKey>,
}

impl Present {
    /// Entries in each NSG map, with its capacity: (map, entries, capacity).
    pub fn occupancy(&self) -> [(&'static str, u64, u64); 8] {
        let lpm = |m: &BTreeMap<u32, LpmEntries>| m.values().map(|e| e.len() as u64).sum::<u64>();
        let nested = self.proto.values().map(|p| p.len() as u64).sum();
        let rules = self.rules.values().map(|r| r.len() as u64).sum();
        [
            (
                maps::NSG_SRC_ADDR,
                lpm(&self.src_addr),
                maps::NSG_ADDR_MAX.into(),
            ),
            (
                maps::NSG_DST_ADDR,
                lpm(&self.dst_addr),
                maps::NSG_ADDR_MAX.into(),
            ),
            (
                maps::NSG_SRC_PORT,
                lpm(&self.src_port),
                maps::NSG_PORT_MAX.into(),
            ),
            (
                maps::NSG_DST_PORT,
                lpm(&self.dst_port),
                maps::NSG_PORT_MAX.into(),
            ),
            (maps::NSG_PROTO, nested, maps::NSG_PROTO_MAX.into()),
            (
                maps::NSG_PORTLESS,
                self.portless.len() as u64,
                maps::NSG_CLASSIFIERS_MAX.into(),
            ),
            (maps::NSG_RULES, rules, maps::NSG_RULES_MAX.into()),
            (
                maps::NSG_HITS,
                self.hits.len() as u64,
                maps::NSG_RULES_MAX.into(),
            ),
        ]
    }

    /// Notes that classifier `id` now holds exactly `table` (its counters beyond its rules
    /// deleted).
    pub(super) fn wrote(&mut self, id: u32, table: &ClassifierEntries) {
        for field in [
            Field::SrcAddr,
            Field::DstAddr,
            Field::SrcPort,
            Field::DstPort,
        ] {
            let entries = field.of(table);
            let out = field.present_mut(self);
            if entries.is_empty() {
                out.remove(&id);
            } else {
                out.insert(id, entries.clone());
            }
        }
        if table.proto.is_empty() {
            self.proto.remove(&id);
        } else {
            self.proto.insert(id, table.proto.clone());
        }
        self.portless.insert(id, table.portless);
        if table.rules.is_empty() {
            self.rules.remove(&id);
        } else {
            let rules = (0..).zip(table.rules.iter().copied()).collect();
            self.rules.insert(id, rules);
        }
        let count = table.rules.len() as u32;
        self.hits.retain(|k| k.classifier != id || k.rule < count);
    }

    /// Notes that the classifiers `ids` hold nothing any more.
    pub(super) fn removed(&mut self, ids: &BTreeSet<u32>) {
        for field in [
            Field::SrcAddr,
            Field::DstAddr,
            Field::SrcPort,
            Field::DstPort,
        ] {
            field.present_mut(self).retain(|id, _| !ids.contains(id));
        }
        self.proto.retain(|id, _| !ids.contains(id));
        self.portless.retain(|id, _| !ids.contains(id));
        self.rules.retain(|id, _| !ids.contains(id));
        self.hits.retain(|k| !ids.contains(&k.classifier));
    }

    /// What classifier `id` holds.
    pub(super) fn classifier(&self, id: u32) -> ClassifierEntries {
        ClassifierEntries {
            src_addr: self.src_addr.get(&id).cloned().unwrap_or_default(),
            dst_addr: self.dst_addr.get(&id).cloned().unwrap_or_default(),
            src_port: self.src_port.get(&id).cloned().unwrap_or_default(),
            dst_port: self.dst_port.get(&id).cloned().unwrap_or_default(),
            proto: self.proto.get(&id).cloned().unwrap_or_default(),
            portless: self.portless.get(&id).copied().unwrap_or_default(),
            rules: self
                .rules
                .get(&id)
                .map(|rules| rules.values().copied().collect())
                .unwrap_or_default(),
        }
    }

    pub(super) fn ids(&self) -> BTreeSet<u32> {
        let mut ids = BTreeSet::new();
        for lpm in [
            &self.src_addr,
            &self.dst_addr,
            &self.src_port,
            &self.dst_port,
        ] {
            ids.extend(lpm.keys());
        }
        ids.extend(self.proto.keys());
        ids.extend(self.portless.keys());
        ids.extend(self.rules.keys());
        ids.extend(self.hits.iter().map(|k| k.classifier));
        ids
    }
}

/// The four LPM tables: (map name, which field of the entries, key width in bits).
pub(super) const LPM_TABLES: [(&str, Field, u32); 4] = [
    (maps::NSG_SRC_ADDR, Field::SrcAddr, 32),
    (maps::NSG_DST_ADDR, Field::DstAddr, 32),
    (maps::NSG_SRC_PORT, Field::SrcPort, 16),
    (maps::NSG_DST_PORT, Field::DstPort, 16),
];

#[derive(Clone, Copy)]
pub(super) enum Field {
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
}

impl Field {
    pub(super) fn of(self, table: &ClassifierEntries) -> &LpmEntries {
        match self {
            Field::SrcAddr => &table.src_addr,
            Field::DstAddr => &table.dst_addr,
            Field::SrcPort => &table.src_port,
            Field::DstPort => &table.dst_port,
        }
    }

    pub(super) fn present(self, present: &Present) -> &BTreeMap<u32, LpmEntries> {
        match self {
            Field::SrcAddr => &present.src_addr,
            Field::DstAddr => &present.dst_addr,
            Field::SrcPort => &present.src_port,
            Field::DstPort => &present.dst_port,
        }
    }

    pub(super) fn present_mut(self, present: &mut Present) -> &mut BTreeMap<u32, LpmEntries> {
        match self {
            Field::SrcAddr => &mut present.src_addr,
            Field::DstAddr => &mut present.dst_addr,
            Field::SrcPort => &mut present.src_port,
            Field::DstPort => &mut present.dst_port,
        }
    }
}

impl Dataplane {
    /// What the NSG maps hold, taken out of the mirror (read from the kernel if it is not
    /// known): put back after a successful change, left out after a failed one.
    pub(super) fn take_nsgs(&mut self) -> Result<Present> {
        match self.mirror.nsgs.take() {
            Some(present) => Ok(present),
            None => self.nsg_present(),
        }
    }

    /// Everything the NSG maps hold, read from the kernel.
    pub(super) fn nsg_present(&self) -> Result<Present> {
        let mut present = Present::default();
        for (name, field, width) in LPM_TABLES {
            let out = match field {
                Field::SrcAddr => &mut present.src_addr,
                Field::DstAddr => &mut present.dst_addr,
                Field::SrcPort => &mut present.src_port,
                Field::DstPort => &mut present.dst_port,
            };
            let read = |entry: Result<(u32, u8, u32, RuleBitmap), MapError>| {
                entry.with_context(|| format!("reading {name}"))
            };
            let entries: Vec<(u32, u8, u32, RuleBitmap)> = if width == 32 {
                let map: LpmTrie<_, NsgAddrKey, RuleBitmap> = LpmTrie::try_from(self.map(name)?)?;
                map.iter()
                    .map(|entry| {
                        entry.map(|(key, rules)| {
                            let data = key.data();
                            let len = (key.prefix_len() - NsgAddrKey::CLASSIFIER_BITS) as u8;
                            let id = u32::from_be_bytes(data.classifier);
                            (id, len, u32::from_be_bytes(data.addr), rules)
                        })
                    })
                    .map(read)
                    .collect::<Result<_>>()?
            } else {
                let map: LpmTrie<_, NsgPortKey, RuleBitmap> = LpmTrie::try_from(self.map(name)?)?;
                map.iter()
                    .map(|entry| {
                        entry.map(|(key, rules)| {
                            let data = key.data();
                            let len = (key.prefix_len() - NsgAddrKey::CLASSIFIER_BITS) as u8;
                            let id = u32::from_be_bytes(data.classifier);
                            let port = u32::from(u16::from_be_bytes(data.port));
                            (id, len, port, rules)
                        })
                    })
                    .map(read)
                    .collect::<Result<_>>()?
            };
            for (id, len, value, rules) in entries {
                out.entry(id).or_default().insert((len, value), rules);
            }
        }
        let proto: HashMap<_, NsgProtoKey, RuleBitmap> =
            HashMap::try_from(self.map(maps::NSG_PROTO)?)?;
        for entry in proto.iter() {
            let (key, rules) = entry.context("reading NSG_PROTO")?;
            present
                .proto
                .entry(key.classifier)
                .or_default()
                .insert(key.proto, rules);
        }
        let portless: HashMap<_, u32, RuleBitmap> =
            HashMap::try_from(self.map(maps::NSG_PORTLESS)?)?;
        for entry in portless.iter() {
            let (id, rules) = entry.context("reading NSG_PORTLESS")?;
            present.portless.insert(id, rules);
        }
        let rules: HashMap<_, NsgRuleKey, NsgRule> = HashMap::try_from(self.map(maps::NSG_RULES)?)?;
        for entry in rules.iter() {
            let (key, rule) = entry.context("reading NSG_RULES")?;
            present
                .rules
                .entry(key.classifier)
                .or_default()
                .insert(key.rule, rule);
        }
        let hits: PerCpuHashMap<_, NsgRuleKey, u64> =
            PerCpuHashMap::try_from(self.map(maps::NSG_HITS)?)?;
        for key in hits.keys() {
            present.hits.insert(key.context("reading NSG_HITS")?);
        }
        Ok(present)
    }

    /// The fingerprint ([`fingerprint`]) of what the NSG maps hold under each classifier id.
    pub fn nsg_fingerprints(&mut self) -> Result<BTreeMap<u32, u64>> {
        let present = self.take_nsgs()?;
        let fingerprints = present
            .ids()
            .into_iter()
            .map(|id| (id, fingerprint(&present.classifier(id))))
            .collect();
        self.mirror.nsgs = Some(present);
        Ok(fingerprints)
    }

    /// The classifier ids that have entries in any NSG map, read from the kernel.
    pub fn nsg_classifier_ids(&self) -> Result<BTreeSet<u32>> {
        Ok(self.nsg_present()?.ids())
    }
}
