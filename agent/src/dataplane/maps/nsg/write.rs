//! Writing classifiers into the NSG maps: a classifier id made to hold exactly a
//! [`ClassifierEntries`] (only its difference to what the id holds is written), or emptied;
//! and the [`TableStore`] the generation switch ([`crate::dataplane::tables`]) drives.
use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, LpmTrie, PerCpuHashMap, lpm_trie::Key};
use vnetd_common::{NsgAddrKey, NsgPortKey, NsgProtoKey, NsgRule, NsgRuleKey, RuleBitmap, maps};

use super::{
    entries::{ClassifierEntries, LpmEntries, fingerprint},
    present::{LPM_TABLES, Present},
};
use crate::dataplane::{Dataplane, maps::batch, tables::TableStore};

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

/// What makes `old` into `new`, both in key order: the entries of `new` that `old` lacks or
/// holds differently, and the keys of `old` that `new` lacks. One walk of both, where a lookup
/// of each key in the other map took a quarter of a one-rule change's switch (a 1000-rule
/// classifier holds about 4000 entries).
fn diff<'a, K: Ord + Copy, V: PartialEq + Copy + 'a>(
    old: impl IntoIterator<Item = (K, &'a V)>,
    new: impl IntoIterator<Item = (K, &'a V)>,
) -> (Vec<(K, V)>, Vec<K>) {
    let (mut writes, mut stale) = (Vec::new(), Vec::new());
    let mut old = old.into_iter().peekable();
    for (key, value) in new {
        while let Some((gone, _)) = old.next_if(|(k, _)| *k < key) {
            stale.push(gone);
        }
        match old.next_if(|(k, _)| *k == key) {
            Some((_, held)) if held == value => {}
            _ => writes.push((key, *value)),
        }
    }
    stale.extend(old.map(|(k, _)| k));
    (writes, stale)
}

impl Dataplane {
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
            let (writes, stale) = diff(
                old.iter().map(|(k, r)| (*k, r)),
                new.iter().map(|(k, r)| (*k, r)),
            );
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
                let what = context(&s.entry(&writes).0);
                anyhow::Error::from(s.error).context(what)
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
            let class = s.entry(&writes).0;
            anyhow::Error::from(s.error).context(format!(
                "writing NSG_PROTO[classifier {id}, protocol {class}] (capacity {})",
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

        let rule_key = |rule: u32| NsgRuleKey {
            classifier: id,
            rule,
        };
        let (writes, stale) = diff(
            present
                .rules
                .get(&id)
                .into_iter()
                .flat_map(|r| r.iter().map(|(index, rule)| (*index, rule))),
            (0..).zip(&table.rules),
        );
        let stale: Vec<NsgRuleKey> = stale.into_iter().map(rule_key).collect();
        let count = table.rules.len() as u32;
        changed |= !writes.is_empty() || !stale.is_empty();
        let map = self.map(maps::NSG_RULES)?;
        HashMap::<_, NsgRuleKey, NsgRule>::try_from(map)?;
        let keys: Vec<NsgRuleKey> = writes.iter().map(|(index, _)| rule_key(*index)).collect();
        let values: Vec<NsgRule> = writes.iter().map(|(_, rule)| *rule).collect();
        batch::update(map, &keys, &values).map_err(|s| {
            let rule = s.entry(&writes).0;
            anyhow::Error::from(s.error).context(format!(
                "writing NSG_RULES[classifier {id}, rule {rule}] (capacity {})",
                maps::NSG_RULES_MAX
            ))
        })?;
        batch::delete(map, &stale)
            .map_err(|s| anyhow::Error::from(s.error).context("removing an entry of NSG_RULES"))?;

        // The counters of the rules that are gone, and a zero one for each rule without.
        let stale_hits: Vec<NsgRuleKey> = present
            .hits
            .range(rule_key(count)..=rule_key(u32::MAX))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::diff;

    proptest! {
        /// The walk finds what a lookup of every key in the other map finds.
        #[test]
        fn diff_is_what_lookups_find(
            old in prop::collection::btree_map(0u16..64, 0u8..4, 0..40),
            new in prop::collection::btree_map(0u16..64, 0u8..4, 0..40),
        ) {
            let (writes, stale) = diff(
                old.iter().map(|(k, v)| (*k, v)),
                new.iter().map(|(k, v)| (*k, v)),
            );
            let want_writes: Vec<(u16, u8)> = new
                .iter()
                .filter(|(k, v)| old.get(k) != Some(v))
                .map(|(k, v)| (*k, *v))
                .collect();
            let want_stale: Vec<u16> = old.keys().filter(|k| !new.contains_key(k)).copied().collect();
            prop_assert_eq!(writes, want_writes);
            prop_assert_eq!(stale, want_stale);
        }
    }

    #[test]
    fn diff_of_equal_maps_is_empty() {
        let map: BTreeMap<u32, u64> = (0..100).map(|k| (k, u64::from(k) * 7)).collect();
        let (writes, stale) = diff(
            map.iter().map(|(k, v)| (*k, v)),
            map.iter().map(|(k, v)| (*k, v)),
        );
        assert!(writes.is_empty() && stale.is_empty());
    }
}
