//! The NSG classifier maps (`NSG_SRC_ADDR`, `NSG_DST_ADDR`, `NSG_SRC_PORT`, `NSG_DST_PORT`,
//! `NSG_PROTO`, `NSG_PORTLESS`, `NSG_RULES`, and the counters `NSG_HITS`): a compiled
//! [`Classifier`] becomes one [`ClassifierEntries`] here. Which id a classifier is written under
//! is the business of [`crate::dataplane::tables`]: a changed classifier is written whole under
//! a fresh id, the endpoints are switched to it, then the old id's entries are deleted, so a
//! packet is classified by the old rules or the new ones, never a mix.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, LpmTrie, MapError, PerCpuHashMap, PerCpuValues, lpm_trie::Key};
use vnetd_common::{
    NsgAccess, NsgAddrKey, NsgPortKey, NsgProtoKey, NsgRule, NsgRuleKey, RuleBitmap, maps,
};

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
    /// Notes that classifier `id` now holds `table` (written over what it held).
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
        // Protocol classes and rules are written over, not pruned: an id is only rewritten with
        // the content it had, so the kernel keeps what it held beside the new entries.
        if !table.proto.is_empty() {
            self.proto.entry(id).or_default().extend(&table.proto);
        }
        self.portless.insert(id, table.portless);
        let rules = self.rules.entry(id).or_default();
        for (index, rule) in table.rules.iter().enumerate() {
            rules.insert(index as u32, *rule);
        }
        if rules.is_empty() {
            self.rules.remove(&id);
        }
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

/// A delete of an entry that is not there succeeds: the agent deletes what it believes is
/// there (its mirror, a classifier's rule indices), and the kernel answers ENOENT for what is
/// not.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
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

    /// Packets each rule decided, summed over CPUs: (classifier id, rule index) -> count.
    pub fn nsg_hits(&self) -> Result<BTreeMap<NsgRuleKey, u64>> {
        let hits: PerCpuHashMap<_, NsgRuleKey, u64> =
            PerCpuHashMap::try_from(self.map(maps::NSG_HITS)?)?;
        hits.iter()
            .map(|entry| {
                let (key, per_cpu) = entry.context("reading NSG_HITS")?;
                Ok((key, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Packets each rule of the classifiers other than `live` decided, summed over CPUs: what
    /// a switch carries by name before it deletes those classifiers (a lookup per counter the
    /// agent created, rather than reading every counter back).
    pub fn nsg_hits_except(&mut self, live: &BTreeSet<u32>) -> Result<BTreeMap<NsgRuleKey, u64>> {
        let present = self.take_nsgs()?;
        let keys: Vec<NsgRuleKey> = present
            .hits
            .iter()
            .filter(|k| !live.contains(&k.classifier))
            .copied()
            .collect();
        self.mirror.nsgs = Some(present);
        let hits: PerCpuHashMap<_, NsgRuleKey, u64> =
            PerCpuHashMap::try_from(self.map(maps::NSG_HITS)?)?;
        let mut out = BTreeMap::new();
        for key in keys {
            match hits.get(&key, 0) {
                Ok(per_cpu) => {
                    out.insert(key, per_cpu.iter().sum());
                }
                Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("reading NSG_HITS"),
            }
        }
        Ok(out)
    }

    /// The classifier ids that have entries in any NSG map, read from the kernel.
    pub fn nsg_classifier_ids(&self) -> Result<BTreeSet<u32>> {
        Ok(self.nsg_present()?.ids())
    }

    /// Creates a zero counter (on every CPU) in NSG_HITS for each installed rule that has
    /// none. `BPF_NOEXIST`: a counter the program created on a rule's first hit keeps its count.
    pub fn create_nsg_counters(&mut self) -> Result<()> {
        let mut present = self.take_nsgs()?;
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| {
            anyhow::Error::from(err).context(format!("counting CPUs ({what})"))
        })?;
        let missing: Vec<NsgRuleKey> = present
            .rules
            .iter()
            .flat_map(|(id, rules)| {
                rules.keys().map(|rule| NsgRuleKey {
                    classifier: *id,
                    rule: *rule,
                })
            })
            .filter(|key| !present.hits.contains(key))
            .collect();
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

    fn write_classifier(
        &mut self,
        id: u32,
        table: &ClassifierEntries,
        present: &Present,
    ) -> Result<()> {
        let none = LpmEntries::new();
        for (name, field, width) in LPM_TABLES {
            let old = field.present(present).get(&id).unwrap_or(&none);
            let new = field.of(table);
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
            if width == 32 {
                let mut map: LpmTrie<_, NsgAddrKey, RuleBitmap> =
                    LpmTrie::try_from(self.map_mut(name)?)?;
                for (k, rules) in new.iter().filter(|(k, r)| old.get(k) != Some(r)) {
                    map.insert(&addr_key(id, *k), rules, 0)
                        .with_context(|| context(k))?;
                }
                for k in old.keys().filter(|k| !new.contains_key(k)) {
                    ignore_missing(map.remove(&addr_key(id, *k)))
                        .with_context(|| format!("removing an entry of {name}"))?;
                }
            } else {
                let mut map: LpmTrie<_, NsgPortKey, RuleBitmap> =
                    LpmTrie::try_from(self.map_mut(name)?)?;
                for (k, rules) in new.iter().filter(|(k, r)| old.get(k) != Some(r)) {
                    map.insert(&port_key(id, *k), rules, 0)
                        .with_context(|| context(k))?;
                }
                for k in old.keys().filter(|k| !new.contains_key(k)) {
                    ignore_missing(map.remove(&port_key(id, *k)))
                        .with_context(|| format!("removing an entry of {name}"))?;
                }
            }
        }

        let old_proto = present.proto.get(&id);
        let mut proto: HashMap<_, NsgProtoKey, RuleBitmap> =
            HashMap::try_from(self.map_mut(maps::NSG_PROTO)?)?;
        for (class, rules) in &table.proto {
            if old_proto.and_then(|p| p.get(class)) != Some(rules) {
                let key = NsgProtoKey {
                    classifier: id,
                    proto: *class,
                    _pad: [0; 3],
                };
                proto.insert(key, rules, 0).with_context(|| {
                    format!(
                        "writing NSG_PROTO[classifier {id}, protocol {class}] (capacity {})",
                        maps::NSG_PROTO_MAX
                    )
                })?;
            }
        }
        if present.portless.get(&id) != Some(&table.portless) {
            let mut portless: HashMap<_, u32, RuleBitmap> =
                HashMap::try_from(self.map_mut(maps::NSG_PORTLESS)?)?;
            portless.insert(id, table.portless, 0).with_context(|| {
                format!(
                    "writing NSG_PORTLESS[classifier {id}] (capacity {})",
                    maps::NSG_CLASSIFIERS_MAX
                )
            })?;
        }

        // The hit counters are not written here: the program creates a rule's counter on its
        // first hit, and the agent creates the others after the switch
        // ([`Dataplane::create_nsg_counters`]), off the path of a reload.
        let old_rules = present.rules.get(&id);
        let mut rules: HashMap<_, NsgRuleKey, NsgRule> =
            HashMap::try_from(self.map_mut(maps::NSG_RULES)?)?;
        for (index, rule) in table.rules.iter().enumerate() {
            let index = index as u32;
            if old_rules.and_then(|r| r.get(&index)) != Some(rule) {
                let key = NsgRuleKey {
                    classifier: id,
                    rule: index,
                };
                rules.insert(key, rule, 0).with_context(|| {
                    format!(
                        "writing NSG_RULES[classifier {id}, rule {index}] (capacity {})",
                        maps::NSG_RULES_MAX
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Removes every NSG map entry of the classifiers `ids` (their hit counters included).
    fn remove_classifiers(&mut self, ids: &BTreeSet<u32>, present: &Present) -> Result<()> {
        for (name, field, width) in LPM_TABLES {
            for (id, entries) in field
                .present(present)
                .range(..)
                .filter(|(id, _)| ids.contains(id))
            {
                if width == 32 {
                    let mut map: LpmTrie<_, NsgAddrKey, RuleBitmap> =
                        LpmTrie::try_from(self.map_mut(name)?)?;
                    for k in entries.keys() {
                        ignore_missing(map.remove(&addr_key(*id, *k)))
                            .with_context(|| format!("removing classifier {id} from {name}"))?;
                    }
                } else {
                    let mut map: LpmTrie<_, NsgPortKey, RuleBitmap> =
                        LpmTrie::try_from(self.map_mut(name)?)?;
                    for k in entries.keys() {
                        ignore_missing(map.remove(&port_key(*id, *k)))
                            .with_context(|| format!("removing classifier {id} from {name}"))?;
                    }
                }
            }
        }
        let mut proto: HashMap<_, NsgProtoKey, RuleBitmap> =
            HashMap::try_from(self.map_mut(maps::NSG_PROTO)?)?;
        for (id, classes) in present.proto.iter().filter(|(id, _)| ids.contains(id)) {
            for class in classes.keys() {
                let key = NsgProtoKey {
                    classifier: *id,
                    proto: *class,
                    _pad: [0; 3],
                };
                ignore_missing(proto.remove(&key))
                    .with_context(|| format!("removing classifier {id} from NSG_PROTO"))?;
            }
        }
        let mut portless: HashMap<_, u32, RuleBitmap> =
            HashMap::try_from(self.map_mut(maps::NSG_PORTLESS)?)?;
        for id in present.portless.keys().filter(|id| ids.contains(id)) {
            ignore_missing(portless.remove(id))
                .with_context(|| format!("removing classifier {id} from NSG_PORTLESS"))?;
        }
        let mut rules: HashMap<_, NsgRuleKey, NsgRule> =
            HashMap::try_from(self.map_mut(maps::NSG_RULES)?)?;
        for (id, indices) in present.rules.iter().filter(|(id, _)| ids.contains(id)) {
            for rule in indices.keys() {
                let key = NsgRuleKey {
                    classifier: *id,
                    rule: *rule,
                };
                ignore_missing(rules.remove(&key))
                    .with_context(|| format!("removing classifier {id} from NSG_RULES"))?;
            }
        }
        // By rule index too: a program may have created a counter in the race with a switch.
        let by_rule = present
            .rules
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .flat_map(|(id, indices)| {
                indices.keys().map(|rule| NsgRuleKey {
                    classifier: *id,
                    rule: *rule,
                })
            });
        let counters: BTreeSet<NsgRuleKey> = present
            .hits
            .iter()
            .filter(|k| ids.contains(&k.classifier))
            .copied()
            .chain(by_rule)
            .collect();
        let mut hits: PerCpuHashMap<_, NsgRuleKey, u64> =
            PerCpuHashMap::try_from(self.map_mut(maps::NSG_HITS)?)?;
        for key in &counters {
            ignore_missing(hits.remove(key))
                .with_context(|| format!("removing classifier {} from NSG_HITS", key.classifier))?;
        }
        Ok(())
    }
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
            self.write_classifier(*id, table, &present)?;
            present.wrote(*id, table);
        }
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
/// stable by NSG name and direction); stale classifiers are deleted after it. On failure
/// `undo` runs, the fresh ids are deleted and nothing else changed (see
/// [`VersionedTables::switch`]).
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
    if let Err(err) = dp.create_nsg_counters() {
        tracing::warn!(
            "creating the new rules' hit counters (the programs create them on a hit): {err:#}"
        );
    }
    Ok(())
}
