//! The NSG classifier maps (`NSG_SRC_ADDR`, `NSG_DST_ADDR`, `NSG_SRC_PORT`, `NSG_DST_PORT`,
//! `NSG_PROTO`, `NSG_PORTLESS`, `NSG_RULES`, and the counters `NSG_HITS`): a compiled
//! [`Classifier`] becomes one [`ClassifierEntries`] here. Which id a classifier is written under
//! is the business of [`crate::dataplane::tables`]: the agent keeps two ids per classifier
//! ([`Slots::Standby`](crate::dataplane::tables::Slots::Standby)); a changed classifier is written into the one no endpoint points at
//! (only its difference to what that id holds), the endpoints are switched to it, and the
//! other id waits for the next change, its hit counters reset. A packet is classified by the
//! old rules or the new ones, never a mix. Entries are written in batches ([`batch`]).
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, LpmTrie, MapError, PerCpuHashMap, PerCpuValues, lpm_trie::Key};
use vnetd_common::{
    NsgAccess, NsgAddrKey, NsgPortKey, NsgProtoKey, NsgRule, NsgRuleKey, RuleBitmap, maps,
};

use super::batch;
use crate::{
    compile::{self, Classifier, NsgTables},
    dataplane::{
        Dataplane,
        tables::{Fingerprint, TableStore, VersionedTables},
    },
    spec::Access,
};

/// An LPM table's entries of one classifier: (prefix length, value) -> rules. The value is an
/// IPv4 address or a port, host byte order.
pub type LpmEntries = BTreeMap<(u8, u32), RuleBitmap>;

/// One classifier as the kernel holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassifierEntries {
    pub src_addr: LpmEntries,
    pub dst_addr: LpmEntries,
    pub src_port: LpmEntries,
    pub dst_port: LpmEntries,
    /// Protocol class key (`ProtoClass::key`) -> rules.
    pub proto: BTreeMap<u8, RuleBitmap>,
    pub portless: RuleBitmap,
    /// By rule index.
    pub rules: Vec<NsgRule>,
}

fn bitmap(rules: &compile::RuleBitmap) -> RuleBitmap {
    RuleBitmap { words: rules.0 }
}

/// The kernel's entries of a compiled classifier.
pub fn entries(classifier: &Classifier) -> ClassifierEntries {
    let addrs = |entries: &[compile::AddrEntry]| {
        entries
            .iter()
            .map(|e| {
                let key = (e.prefix.prefix_len(), u32::from(e.prefix.network()));
                (key, bitmap(&e.rules))
            })
            .collect()
    };
    let ports = |entries: &[compile::PortEntry]| {
        entries
            .iter()
            .map(|e| ((e.prefix.len, u32::from(e.prefix.port)), bitmap(&e.rules)))
            .collect()
    };
    ClassifierEntries {
        src_addr: addrs(&classifier.src_addr),
        dst_addr: addrs(&classifier.dst_addr),
        src_port: ports(&classifier.src_port),
        dst_port: ports(&classifier.dst_port),
        proto: classifier
            .proto
            .iter()
            .map(|e| (e.class.key(), bitmap(&e.rules)))
            .collect(),
        portless: bitmap(&classifier.portless),
        rules: classifier
            .rules
            .iter()
            .map(|rule| NsgRule {
                priority: rule.priority,
                access: match rule.access {
                    Access::Allow => NsgAccess::Allow as u8,
                    Access::Deny => NsgAccess::Deny as u8,
                },
                _pad: [0; 3],
            })
            .collect(),
    }
}

/// The name a classifier's id is recorded under: its NSG and direction (NSG names compare
/// case-insensitively, so the name is lower-cased).
pub fn table_name(classifier: &Classifier) -> String {
    format!(
        "{}/{}",
        classifier.nsg_name.to_lowercase(),
        classifier.direction
    )
}

/// A stable digest of a classifier's entries.
pub fn fingerprint(table: &ClassifierEntries) -> u64 {
    let mut digest = Fingerprint::default();
    let bits = |digest: &mut Fingerprint, rules: &RuleBitmap| {
        for word in rules.words {
            digest.write(&word.to_le_bytes());
        }
    };
    for (tag, lpm) in [
        (b's', &table.src_addr),
        (b'd', &table.dst_addr),
        (b'p', &table.src_port),
        (b'q', &table.dst_port),
    ] {
        digest.write(&[tag]);
        for ((len, value), rules) in lpm {
            digest.write(&[*len]);
            digest.write(&value.to_le_bytes());
            bits(&mut digest, rules);
        }
    }
    digest.write(b"c");
    for (class, rules) in &table.proto {
        digest.write(&[*class]);
        bits(&mut digest, rules);
    }
    digest.write(b"n");
    bits(&mut digest, &table.portless);
    digest.write(b"r");
    for rule in &table.rules {
        digest.write(&rule.priority.to_le_bytes());
        digest.write(&[rule.access]);
    }
    digest.finish()
}

/// Everything the NSG maps hold, by classifier id.
#[derive(Debug, Default)]
pub struct Present {
    src_addr: BTreeMap<u32, LpmEntries>,
    dst_addr: BTreeMap<u32, LpmEntries>,
    src_port: BTreeMap<u32, LpmEntries>,
    dst_port: BTreeMap<u32, LpmEntries>,
    proto: BTreeMap<u32, BTreeMap<u8, RuleBitmap>>,
    portless: BTreeMap<u32, RuleBitmap>,
    rules: BTreeMap<u32, BTreeMap<u32, NsgRule>>,
    hits: BTreeSet<NsgRuleKey>,
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
    fn wrote(&mut self, id: u32, table: &ClassifierEntries) {
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
    fn removed(&mut self, ids: &BTreeSet<u32>) {
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
    fn classifier(&self, id: u32) -> ClassifierEntries {
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

    fn ids(&self) -> BTreeSet<u32> {
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

/// Creates a map entry only if its key has none.
const BPF_NOEXIST: u64 = 1;

/// The four LPM tables: (map name, which field of the entries, key width in bits).
const LPM_TABLES: [(&str, Field, u32); 4] = [
    (maps::NSG_SRC_ADDR, Field::SrcAddr, 32),
    (maps::NSG_DST_ADDR, Field::DstAddr, 32),
    (maps::NSG_SRC_PORT, Field::SrcPort, 16),
    (maps::NSG_DST_PORT, Field::DstPort, 16),
];

#[derive(Clone, Copy)]
enum Field {
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
}

impl Field {
    fn of(self, table: &ClassifierEntries) -> &LpmEntries {
        match self {
            Field::SrcAddr => &table.src_addr,
            Field::DstAddr => &table.dst_addr,
            Field::SrcPort => &table.src_port,
            Field::DstPort => &table.dst_port,
        }
    }

    fn present(self, present: &Present) -> &BTreeMap<u32, LpmEntries> {
        match self {
            Field::SrcAddr => &present.src_addr,
            Field::DstAddr => &present.dst_addr,
            Field::SrcPort => &present.src_port,
            Field::DstPort => &present.dst_port,
        }
    }

    fn present_mut(self, present: &mut Present) -> &mut BTreeMap<u32, LpmEntries> {
        match self {
            Field::SrcAddr => &mut present.src_addr,
            Field::DstAddr => &mut present.dst_addr,
            Field::SrcPort => &mut present.src_port,
            Field::DstPort => &mut present.dst_port,
        }
    }
}

fn addr_key(id: u32, (len, value): (u8, u32)) -> Key<NsgAddrKey> {
    Key::new(
        NsgAddrKey::CLASSIFIER_BITS + u32::from(len),
        NsgAddrKey {
            classifier: id.to_be_bytes(),
            addr: value.to_be_bytes(),
        },
    )
}

fn port_key(id: u32, (len, value): (u8, u32)) -> Key<NsgPortKey> {
    Key::new(
        NsgAddrKey::CLASSIFIER_BITS + u32::from(len),
        NsgPortKey {
            classifier: id.to_be_bytes(),
            port: (value as u16).to_be_bytes(),
        },
    )
}

impl Dataplane {
    /// What the NSG maps hold, taken out of the mirror (read from the kernel if it is not
    /// known): put back after a successful change, left out after a failed one.
    fn take_nsgs(&mut self) -> Result<Present> {
        match self.mirror.nsgs.take() {
            Some(present) => Ok(present),
            None => self.nsg_present(),
        }
    }

    /// Everything the NSG maps hold, read from the kernel.
    fn nsg_present(&self) -> Result<Present> {
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

    /// Creates a zero counter (on every CPU) in NSG_HITS for each rule of the classifiers
    /// `live` that has none: after a switch, off its path (a classifier's first generation;
    /// standbys keep theirs). `BPF_NOEXIST`: a counter the program created on a rule's first
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
    fn zero_nsg_counters(&self, keys: &[NsgRuleKey], present: &mut Present) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let cpus = possible_cpus()?;
        let map = self.map(maps::NSG_HITS)?;
        PerCpuHashMap::<_, NsgRuleKey, u64>::try_from(map)?;
        let zeros = vec![0u64; keys.len() * cpus];
        batch::update(map, keys, &zeros).map_err(|stopped| {
            let key = at(keys, stopped.index);
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

    /// Makes classifier `id` hold exactly `table`, writing only what differs from what it
    /// holds (`present`): new and changed entries first, then the stale ones, the counters of
    /// rules that are gone included. Its counters are not created here: a per-CPU counter
    /// costs tens of microseconds to create, so a fresh classifier's are created after the
    /// switch ([`Dataplane::create_nsg_counters`]); a standby keeps its own, reset when it
    /// retired. Returns whether anything was written.
    fn write_classifier(
        &mut self,
        id: u32,
        table: &ClassifierEntries,
        present: &mut Present,
    ) -> Result<bool> {
        let none = LpmEntries::new();
        let mut changed = false;
        for (name, field, width) in LPM_TABLES {
            let old = field.present(present).get(&id).unwrap_or(&none);
            let new = field.of(table);
            let writes: Vec<((u8, u32), RuleBitmap)> = new
                .iter()
                .filter(|(k, r)| old.get(k) != Some(r))
                .map(|(k, r)| (*k, *r))
                .collect();
            let stale: Vec<(u8, u32)> = old
                .keys()
                .filter(|k| !new.contains_key(k))
                .copied()
                .collect();
            changed |= !writes.is_empty() || !stale.is_empty();
            let context = |k: &(u8, u32)| {
                let value = if width == 32 {
                    std::net::Ipv4Addr::from(k.1).to_string()
                } else {
                    k.1.to_string()
                };
                format!(
                    "writing {name}[classifier {id}, {value}/{}] (capacity {})",
                    k.0,
                    if width == 32 {
                        maps::NSG_ADDR_MAX
                    } else {
                        maps::NSG_PORT_MAX
                    }
                )
            };
            let values: Vec<RuleBitmap> = writes.iter().map(|(_, r)| *r).collect();
            let map = self.map(name)?;
            let (written, removed) = if width == 32 {
                LpmTrie::<_, NsgAddrKey, RuleBitmap>::try_from(map)?;
                let keys: Vec<Key<NsgAddrKey>> =
                    writes.iter().map(|(k, _)| addr_key(id, *k)).collect();
                let stale: Vec<Key<NsgAddrKey>> = stale.iter().map(|k| addr_key(id, *k)).collect();
                (
                    batch::update(map, &keys, &values),
                    batch::delete(map, &stale),
                )
            } else {
                LpmTrie::<_, NsgPortKey, RuleBitmap>::try_from(map)?;
                let keys: Vec<Key<NsgPortKey>> =
                    writes.iter().map(|(k, _)| port_key(id, *k)).collect();
                let stale: Vec<Key<NsgPortKey>> = stale.iter().map(|k| port_key(id, *k)).collect();
                (
                    batch::update(map, &keys, &values),
                    batch::delete(map, &stale),
                )
            };
            written.map_err(|s| {
                anyhow::Error::from(s.error).context(context(&at(&writes, s.index).0))
            })?;
            removed.map_err(|s| {
                anyhow::Error::from(s.error).context(format!("removing an entry of {name}"))
            })?;
        }

        let old_proto = present.proto.get(&id);
        let proto_key = |class: u8| NsgProtoKey {
            classifier: id,
            proto: class,
            _pad: [0; 3],
        };
        let writes: Vec<(u8, RuleBitmap)> = table
            .proto
            .iter()
            .filter(|(class, rules)| old_proto.and_then(|p| p.get(class)) != Some(rules))
            .map(|(class, rules)| (*class, *rules))
            .collect();
        let stale: Vec<NsgProtoKey> = old_proto
            .into_iter()
            .flat_map(|p| p.keys())
            .filter(|class| !table.proto.contains_key(class))
            .map(|class| proto_key(*class))
            .collect();
        changed |= !writes.is_empty() || !stale.is_empty();
        let map = self.map(maps::NSG_PROTO)?;
        HashMap::<_, NsgProtoKey, RuleBitmap>::try_from(map)?;
        let keys: Vec<NsgProtoKey> = writes.iter().map(|(class, _)| proto_key(*class)).collect();
        let values: Vec<RuleBitmap> = writes.iter().map(|(_, rules)| *rules).collect();
        batch::update(map, &keys, &values).map_err(|s| {
            anyhow::Error::from(s.error).context(format!(
                "writing NSG_PROTO[classifier {id}, protocol {}] (capacity {})",
                at(&writes, s.index).0,
                maps::NSG_PROTO_MAX
            ))
        })?;
        batch::delete(map, &stale)
            .map_err(|s| anyhow::Error::from(s.error).context("removing an entry of NSG_PROTO"))?;

        if present.portless.get(&id) != Some(&table.portless) {
            changed = true;
            let mut portless: HashMap<_, u32, RuleBitmap> =
                HashMap::try_from(self.map_mut(maps::NSG_PORTLESS)?)?;
            portless.insert(id, table.portless, 0).with_context(|| {
                format!(
                    "writing NSG_PORTLESS[classifier {id}] (capacity {})",
                    maps::NSG_CLASSIFIERS_MAX
                )
            })?;
        }

        let old_rules = present.rules.get(&id);
        let rule_key = |rule: u32| NsgRuleKey {
            classifier: id,
            rule,
        };
        let writes: Vec<(u32, NsgRule)> = (0..)
            .zip(table.rules.iter().copied())
            .filter(|(index, rule)| old_rules.and_then(|r| r.get(index)) != Some(rule))
            .collect();
        let count = table.rules.len() as u32;
        let stale: Vec<NsgRuleKey> = old_rules
            .into_iter()
            .flat_map(|r| r.keys())
            .filter(|index| **index >= count)
            .map(|index| rule_key(*index))
            .collect();
        changed |= !writes.is_empty() || !stale.is_empty();
        let map = self.map(maps::NSG_RULES)?;
        HashMap::<_, NsgRuleKey, NsgRule>::try_from(map)?;
        let keys: Vec<NsgRuleKey> = writes.iter().map(|(index, _)| rule_key(*index)).collect();
        let values: Vec<NsgRule> = writes.iter().map(|(_, rule)| *rule).collect();
        batch::update(map, &keys, &values).map_err(|s| {
            anyhow::Error::from(s.error).context(format!(
                "writing NSG_RULES[classifier {id}, rule {}] (capacity {})",
                at(&writes, s.index).0,
                maps::NSG_RULES_MAX
            ))
        })?;
        batch::delete(map, &stale)
            .map_err(|s| anyhow::Error::from(s.error).context("removing an entry of NSG_RULES"))?;

        // The counters of the rules that are gone, and a zero one for each rule without.
        let stale_hits: Vec<NsgRuleKey> = present
            .hits
            .iter()
            .filter(|k| k.classifier == id && k.rule >= count)
            .copied()
            .collect();
        changed |= !stale_hits.is_empty();
        let map = self.map(maps::NSG_HITS)?;
        batch::delete(map, &stale_hits)
            .map_err(|s| anyhow::Error::from(s.error).context("removing an entry of NSG_HITS"))?;
        Ok(changed)
    }

    /// Removes every NSG map entry of the classifiers `ids` (their hit counters included).
    fn remove_classifiers(&mut self, ids: &BTreeSet<u32>, present: &Present) -> Result<()> {
        let removing = |what: &'static str| {
            move |s: batch::Stopped| {
                anyhow::Error::from(s.error)
                    .context(format!("removing classifiers {ids:?} from {what}"))
            }
        };
        for (name, field, width) in LPM_TABLES {
            let entries = field
                .present(present)
                .iter()
                .filter(|(id, _)| ids.contains(id))
                .flat_map(|(id, entries)| entries.keys().map(move |k| (*id, *k)));
            let map = self.map(name)?;
            if width == 32 {
                LpmTrie::<_, NsgAddrKey, RuleBitmap>::try_from(map)?;
                let keys: Vec<Key<NsgAddrKey>> = entries.map(|(id, k)| addr_key(id, k)).collect();
                batch::delete(map, &keys).map_err(removing(name))?;
            } else {
                LpmTrie::<_, NsgPortKey, RuleBitmap>::try_from(map)?;
                let keys: Vec<Key<NsgPortKey>> = entries.map(|(id, k)| port_key(id, k)).collect();
                batch::delete(map, &keys).map_err(removing(name))?;
            }
        }
        let keys: Vec<NsgProtoKey> = present
            .proto
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .flat_map(|(id, classes)| {
                classes.keys().map(|class| NsgProtoKey {
                    classifier: *id,
                    proto: *class,
                    _pad: [0; 3],
                })
            })
            .collect();
        let map = self.map(maps::NSG_PROTO)?;
        HashMap::<_, NsgProtoKey, RuleBitmap>::try_from(map)?;
        batch::delete(map, &keys).map_err(removing("NSG_PROTO"))?;
        let keys: Vec<u32> = present
            .portless
            .keys()
            .filter(|id| ids.contains(id))
            .copied()
            .collect();
        let map = self.map(maps::NSG_PORTLESS)?;
        HashMap::<_, u32, RuleBitmap>::try_from(map)?;
        batch::delete(map, &keys).map_err(removing("NSG_PORTLESS"))?;
        let rules: Vec<NsgRuleKey> = present
            .rules
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .flat_map(|(id, indices)| {
                indices.keys().map(|rule| NsgRuleKey {
                    classifier: *id,
                    rule: *rule,
                })
            })
            .collect();
        let map = self.map(maps::NSG_RULES)?;
        HashMap::<_, NsgRuleKey, NsgRule>::try_from(map)?;
        batch::delete(map, &rules).map_err(removing("NSG_RULES"))?;
        // By rule index too: a program may have created a counter in the race with a switch.
        let counters: Vec<NsgRuleKey> = present
            .hits
            .iter()
            .filter(|k| ids.contains(&k.classifier))
            .copied()
            .chain(rules)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let map = self.map(maps::NSG_HITS)?;
        PerCpuHashMap::<_, NsgRuleKey, u64>::try_from(map)?;
        batch::delete(map, &counters).map_err(removing("NSG_HITS"))?;
        Ok(())
    }
}

/// The entry a batch stopped at (the last one if the kernel's count ran past it).
fn at<T>(entries: &[T], index: usize) -> &T {
    &entries[index.min(entries.len().saturating_sub(1))]
}

/// The CPUs a per-CPU map has a value for.
fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus()
        .map_err(|(what, err)| anyhow::Error::from(err).context(format!("counting CPUs ({what})")))
}

/// NSG classifiers under generation-numbered ids (see [`crate::dataplane::tables`]).
impl TableStore<ClassifierEntries> for Dataplane {
    fn fingerprint(table: &ClassifierEntries) -> u64 {
        fingerprint(table)
    }

    fn present_ids(&mut self) -> Result<BTreeSet<u32>> {
        let present = self.take_nsgs()?;
        let ids = present.ids();
        self.mirror.nsgs = Some(present);
        Ok(ids)
    }

    fn write(&mut self, tables: &[(u32, &ClassifierEntries)]) -> Result<()> {
        let mut present = self.take_nsgs()?;
        for (id, table) in tables {
            if self.write_classifier(*id, table, &mut present)? {
                present.wrote(*id, table);
            }
        }
        self.mirror.nsgs = Some(present);
        Ok(())
    }

    /// The counters of the classifiers that stopped serving start again from zero: when a
    /// classifier serves again (a later generation written into it), its rules count from
    /// nothing. What they counted was read before ([`Dataplane::nsg_hits_of`]).
    fn retire(&mut self, ids: &BTreeSet<u32>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut present = self.take_nsgs()?;
        let keys: Vec<NsgRuleKey> = present
            .rules
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .flat_map(|(id, rules)| {
                rules.keys().map(|rule| NsgRuleKey {
                    classifier: *id,
                    rule: *rule,
                })
            })
            .collect();
        self.zero_nsg_counters(&keys, &mut present)?;
        self.mirror.nsgs = Some(present);
        Ok(())
    }

    fn remove(&mut self, ids: &BTreeSet<u32>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut present = self.take_nsgs()?;
        self.remove_classifiers(ids, &present)?;
        present.removed(ids);
        self.mirror.nsgs = Some(present);
        Ok(())
    }
}

/// The NSG maps' content for `classifiers`, by the name each is recorded under.
pub fn wanted<'a>(
    classifiers: impl IntoIterator<Item = &'a Classifier>,
) -> BTreeMap<String, ClassifierEntries> {
    classifiers
        .into_iter()
        .map(|c| (table_name(c), entries(c)))
        .collect()
}

/// The kernel classifier ids an endpoint's entry carries (0 = no NSG there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointNsgs {
    pub in_subnet: u32,
    pub in_group: u32,
    pub out_subnet: u32,
    pub out_group: u32,
}

/// The kernel id of compiled classifier `compiled` of `nsgs` (0 for 0), given the kernel ids
/// by table name. A classifier that is not installed is an error, never 0: 0 would let
/// everything pass.
pub fn kernel_id(nsgs: &NsgTables, ids: &BTreeMap<String, u32>, compiled: u32) -> Result<u32> {
    if compiled == 0 {
        return Ok(0);
    }
    let classifier = nsgs
        .classifier(compiled)
        .with_context(|| format!("no compiled NSG classifier {compiled}"))?;
    let name = table_name(classifier);
    ids.get(&name).copied().with_context(|| {
        format!(
            "the {} rules of NSG {} are not installed in the dataplane",
            classifier.direction, classifier.nsg_name
        )
    })
}

/// Makes the NSG maps hold the classifiers of `nsgs`, each under its generation-numbered id
/// (unchanged classifiers keep theirs), then calls `repoint` with the kernel id of every
/// compiled classifier id (the compiled ids are positions in this spec, the kernel's are
/// stable by NSG name and direction); the ids that stopped serving are retired or deleted
/// after it. On failure `undo` runs, the fresh ids are deleted and the classifiers in use are
/// unchanged (see [`VersionedTables::switch`]).
pub fn switch_nsgs(
    versions: &mut VersionedTables,
    dp: &mut Dataplane,
    nsgs: &NsgTables,
    repoint: impl FnOnce(&mut Dataplane, &BTreeMap<u32, u32>) -> Result<()>,
    undo: impl FnOnce(&mut Dataplane) -> Result<()>,
) -> Result<()> {
    let wanted: BTreeMap<String, ClassifierEntries> = nsgs
        .classifiers
        .iter()
        .map(|c| (table_name(c), entries(c)))
        .collect();
    let compiled_ids: Vec<(u32, String)> = nsgs
        .classifiers
        .iter()
        .map(|c| (c.id, table_name(c)))
        .collect();
    versions.switch(
        dp,
        &wanted,
        |dp, ids| {
            let kernel_ids = compiled_ids
                .iter()
                .map(|(compiled, name)| (*compiled, ids[name]))
                .collect();
            repoint(dp, &kernel_ids)
        },
        undo,
    )?;
    let live = versions.ids().ids().into_values().collect();
    if let Err(err) = dp.create_nsg_counters(&live) {
        tracing::warn!(
            "creating the new rules' hit counters (the programs create them on a hit): {err:#}"
        );
    }
    Ok(())
}
