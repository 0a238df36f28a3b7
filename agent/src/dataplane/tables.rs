//! Generation-numbered tables: a map holds several tables side by side, each under an id that
//! is part of every entry's key (ROUTES: (route table id, prefix); the NSG classifiers next).
//! Users of a table (ENDPOINTS.route_table) hold its id.
//!
//! Ids are stable: a table keeps its id, by name, across reloads and restarts (recorded in
//! `<state-dir>/tables.json`), so inserting a table in the spec renumbers nothing. A table whose
//! content changes is never rewritten in place while it is in use: the new content is written
//! under another id, its users are switched to it, and only then is the old id let go. A packet
//! therefore sees the old table or the new one, never a mix; a failure before the switch is
//! complete points the users back at the old ids, so the running configuration really stays.
//!
//! Which other id depends on the kind's [`Slots`]: a fresh id, the old one deleted after the
//! switch (route tables); or the table's standby id, which holds the generation before the one
//! in use, so that only the difference between the two is written, and the id that served
//! becomes the standby after the switch (NSG classifiers: a one-rule change writes a few
//! entries instead of thousands).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    marker::PhantomData,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Where one kind of table lives in the kernel, by id.
pub trait TableStore<T> {
    /// A digest of a table's content that is stable across builds and restarts.
    fn fingerprint(table: &T) -> u64;
    /// The ids that hold entries now.
    fn present_ids(&mut self) -> Result<BTreeSet<u32>>;
    /// Makes each id hold exactly its table (new entries first, then stale ones).
    fn write(&mut self, tables: &[(u32, &T)]) -> Result<()>;
    /// Removes every entry of `ids`.
    fn remove(&mut self, ids: &BTreeSet<u32>) -> Result<()>;
    /// `ids` stopped serving and are kept as standbys ([`Slots::Standby`]): the store resets
    /// what the programs wrote under them (NSG hit counters), so that they start from nothing
    /// when they serve again.
    fn retire(&mut self, _ids: &BTreeSet<u32>) -> Result<()> {
        Ok(())
    }
}

/// Where a changed table is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slots {
    /// Whole under a fresh id; the old id is deleted after the switch.
    Fresh,
    /// Into the table's standby id (two ids per table, A/B): the store writes the difference
    /// between what the standby holds (the generation before the one in use) and the new
    /// content; after the switch the old id is the standby. A table's first change takes a
    /// fresh id, as [`Slots::Fresh`] does.
    Standby,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    id: u32,
    fingerprint: u64,
    /// The table's other id ([`Slots::Standby`]): no user points at it; it holds an earlier
    /// generation of the table (what exactly, the store knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    standby: Option<u32>,
}

/// The ids of one kind of table, by table name. Id 0 is never handed out (it means "none").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableIds {
    /// The next id to try: ids grow with every table written, so an id is not reused while
    /// anything may still refer to it.
    next: u32,
    tables: BTreeMap<String, Slot>,
}

/// The ids after a switch, and which of them must be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// Every wanted table's id.
    pub ids: BTreeMap<String, u32>,
    /// The ids newly taken for new or changed tables (deleted again if the switch fails).
    pub fresh: BTreeSet<u32>,
    /// The ids whose content the switch changes: the fresh ones and the standbys written into.
    pub written: BTreeSet<u32>,
    record: TableIds,
}

impl TableIds {
    pub fn id(&self, name: &str) -> Option<u32> {
        self.tables.get(name).map(|s| s.id)
    }

    pub fn ids(&self) -> BTreeMap<String, u32> {
        self.tables
            .iter()
            .map(|(name, s)| (name.clone(), s.id))
            .collect()
    }

    /// The ids of standby tables, by table name.
    pub fn standbys(&self) -> BTreeMap<String, u32> {
        self.tables
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.standby?)))
            .collect()
    }

    /// Every id this record holds: in use and standby.
    fn held(&self) -> BTreeSet<u32> {
        self.tables
            .values()
            .flat_map(|s| std::iter::once(s.id).chain(s.standby))
            .collect()
    }

    /// The record without its standbys (what is left after they are deleted).
    fn without_standbys(&self) -> TableIds {
        let mut ids = self.clone();
        for slot in ids.tables.values_mut() {
            slot.standby = None;
        }
        ids
    }

    /// The ids for the tables `wanted` (name -> fingerprint): an unchanged table keeps its id,
    /// a new one gets a fresh id, a changed one its standby id ([`Slots::Standby`], when it has
    /// one) or a fresh id; fresh ids are never in `taken` or held now.
    pub fn next_generation(
        &self,
        wanted: &BTreeMap<String, u64>,
        taken: &BTreeSet<u32>,
        slots: Slots,
    ) -> Result<Generation> {
        let held = self.held();
        let mut next = self.next.max(1);
        let mut record = TableIds::default();
        let mut fresh = BTreeSet::new();
        let mut written = BTreeSet::new();
        for (name, &fingerprint) in wanted {
            let slot = match self.tables.get(name) {
                Some(slot) if slot.fingerprint == fingerprint => *slot,
                before => {
                    let standby = before.and_then(|s| s.standby);
                    let id = match (slots, standby) {
                        (Slots::Standby, Some(standby)) => standby,
                        _ => {
                            let id = take_fresh_id(&mut next, taken, &held)?;
                            fresh.insert(id);
                            id
                        }
                    };
                    written.insert(id);
                    Slot {
                        id,
                        fingerprint,
                        standby: match slots {
                            Slots::Standby => before.map(|s| s.id),
                            Slots::Fresh => None,
                        },
                    }
                }
            };
            record.tables.insert(name.clone(), slot);
        }
        record.next = next;
        Ok(Generation {
            ids: record.ids(),
            fresh,
            written,
            record,
        })
    }
}

/// The first id from `*next` on that is neither `taken` (present in the store) nor `held`
/// (recorded); `*next` moves past it.
fn take_fresh_id(next: &mut u32, taken: &BTreeSet<u32>, held: &BTreeSet<u32>) -> Result<u32> {
    while taken.contains(next) || held.contains(next) {
        *next = next_id(*next)?;
    }
    let id = *next;
    *next = next_id(id)?;
    Ok(id)
}

fn next_id(id: u32) -> Result<u32> {
    match id.checked_add(1) {
        Some(next) => Ok(next),
        None => bail!(
            "table ids are exhausted (u32::MAX); remove tables.json from the state dir and restart"
        ),
    }
}

/// The fingerprint of a table whose content is not known: it matches no table's.
const UNKNOWN_FINGERPRINT: u64 = 0;

/// One kind of table and its ids, recorded under `<state-dir>/tables.json`.
#[derive(Debug)]
pub struct VersionedTables {
    path: PathBuf,
    kind: String,
    slots: Slots,
    ids: TableIds,
}

impl VersionedTables {
    /// The recorded ids of `kind` in `state_dir` (none if nothing was recorded); a changed
    /// table goes to a fresh id ([`Slots::Fresh`]).
    pub fn open(state_dir: &Path, kind: &str) -> Result<Self> {
        Self::open_with(state_dir, kind, Slots::Fresh)
    }

    /// [`Self::open`] with the given [`Slots`]. Standbys recorded by an agent that kept them
    /// are deleted at the next switch of an agent that does not.
    pub fn open_with(state_dir: &Path, kind: &str, slots: Slots) -> Result<Self> {
        let path = state_dir.join("tables.json");
        let mut ids = read_record(&path)?.remove(kind).unwrap_or_default();
        if slots == Slots::Fresh {
            ids = ids.without_standbys();
        }
        Ok(Self {
            path,
            kind: kind.to_string(),
            slots,
            ids,
        })
    }

    /// Forgets the standby of every table whose standby id is in `serving` (ids users point
    /// at): a standby must never be written while in use. Only an agent that stopped between
    /// a switch and its record leaves that; the table then takes a fresh id at its next change,
    /// and the forgotten id is deleted with the other stale ones once nothing uses it.
    pub fn drop_serving_standbys(&mut self, serving: &BTreeSet<u32>) {
        for (name, slot) in &mut self.ids.tables {
            if let Some(standby) = slot.standby.filter(|id| serving.contains(id)) {
                warn!(kind = %self.kind, table = %name, standby, "a standby id is in use; the table takes a fresh id at its next change");
                slot.standby = None;
            }
        }
    }

    /// Forgets the recorded fingerprint of every table whose id does not hold what the record
    /// says (`held`: the fingerprint of what the store holds under each id): such a table
    /// counts as changed at the next switch and is written under another id, never rewritten
    /// in place. The record may lag behind the store: an agent that stopped before its last
    /// records reached the disk, standbys written into since.
    pub fn check_fingerprints(&mut self, held: &BTreeMap<u32, u64>) {
        for (name, slot) in &mut self.ids.tables {
            if held.get(&slot.id) != Some(&slot.fingerprint) {
                warn!(kind = %self.kind, table = %name, id = slot.id, "the table's id does not hold what was recorded; it is written anew at the next switch");
                slot.fingerprint = UNKNOWN_FINGERPRINT;
            }
        }
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.ids.id(name)
    }

    pub fn ids(&self) -> &TableIds {
        &self.ids
    }

    /// Makes `store` hold `wanted` (name -> table): writes new and changed tables under their
    /// new ids (see [`Slots`]), calls `repoint` with every table's id (it points each user at
    /// its table), records the ids, then retires or deletes the ids no table uses any more. If
    /// anything up to the record fails, `undo` points the users back, the fresh ids are
    /// deleted and the error is returned: the tables in use hold what they held before (a
    /// standby written into stays a standby). Failing to delete stale content only warns (it
    /// is garbage that the next switch removes).
    pub fn switch<T, S: TableStore<T>>(
        &mut self,
        store: &mut S,
        wanted: &BTreeMap<String, T>,
        repoint: impl FnOnce(&mut S, &BTreeMap<String, u32>) -> Result<()>,
        undo: impl FnOnce(&mut S) -> Result<()>,
    ) -> Result<()> {
        let staged = match self.stage(store, wanted) {
            Ok(staged) => staged,
            Err(err) => {
                if let Err(undo) = undo(store) {
                    warn!("undoing a table switch: pointing users back failed: {undo:#}");
                }
                return Err(err);
            }
        };
        let applied =
            repoint(store, staged.ids()).and_then(|()| record(&[(&*self, staged.recording())]));
        if let Err(err) = applied {
            if let Err(undo) = undo(store) {
                warn!("undoing a table switch: pointing users back failed: {undo:#}");
            }
            self.unstage(store, staged);
            return Err(err);
        }
        self.finish(store, staged);
        Ok(())
    }

    /// The first half of a switch, for users that switch several kinds of table together:
    /// writes new and changed tables of `wanted` under their new ids (nothing points at them
    /// yet). On failure what was written under fresh ids is deleted. Continue with [`record`],
    /// then [`Self::finish`] (or [`Self::unstage`] if anything failed).
    ///
    /// Standbys are a cache: if the write fails while any are kept (the maps may be full of
    /// them), they are deleted and the write is tried once more, every changed table whole
    /// under a fresh id.
    pub fn stage<T, S: TableStore<T>>(
        &mut self,
        store: &mut S,
        wanted: &BTreeMap<String, T>,
    ) -> Result<Staged<T>> {
        let fingerprints: BTreeMap<String, u64> = wanted
            .iter()
            .map(|(name, table)| (name.clone(), S::fingerprint(table)))
            .collect();
        match self.try_stage(store, wanted, &fingerprints) {
            Ok(staged) => Ok(staged),
            Err(err) if self.ids.tables.values().any(|s| s.standby.is_some()) => {
                let standbys: BTreeSet<u32> = self.ids.standbys().into_values().collect();
                let count = standbys.len();
                warn!(kind = %self.kind, "writing the new tables failed beside {count} standby table(s); deleting them and writing again: {err:#}");
                store
                    .remove(&standbys)
                    .context("deleting the standby tables")?;
                self.ids = self.ids.without_standbys();
                self.try_stage(store, wanted, &fingerprints)
            }
            Err(err) => Err(err),
        }
    }

    fn try_stage<T, S: TableStore<T>>(
        &self,
        store: &mut S,
        wanted: &BTreeMap<String, T>,
        fingerprints: &BTreeMap<String, u64>,
    ) -> Result<Staged<T>> {
        let taken = store.present_ids()?;
        let generation = self.ids.next_generation(fingerprints, &taken, self.slots)?;
        // Unchanged tables are written too: a diff that writes nothing when the store holds
        // them, and restores them when it does not (maps that were recreated).
        let tables: Vec<(u32, &T)> = wanted
            .iter()
            .map(|(name, table)| (generation.ids[name], table))
            .collect();
        let staged = Staged {
            kind: self.kind.clone(),
            generation,
            table: PhantomData,
        };
        if let Err(err) = store.write(&tables) {
            self.unstage(store, staged);
            return Err(err);
        }
        Ok(staged)
    }

    /// Abandons a staged switch: deletes its fresh ids (the users must point back first). A
    /// standby written into stays a standby (it serves nothing; the store knows what it holds).
    pub fn unstage<T, S: TableStore<T>>(&self, store: &mut S, staged: Staged<T>) {
        if let Err(undo) = store.remove(&staged.generation.fresh) {
            warn!(kind = %self.kind, "undoing a table switch: removing the new tables failed: {undo:#}");
        }
    }

    /// The ids in use now that `staged` stops using (to read what they counted before
    /// [`Self::finish`]).
    pub fn retiring<T>(&self, staged: &Staged<T>) -> BTreeSet<u32> {
        let live: BTreeSet<u32> = staged.ids().values().copied().collect();
        self.ids
            .tables
            .values()
            .map(|s| s.id)
            .filter(|id| !live.contains(id))
            .collect()
    }

    /// Completes a staged switch whose ids are recorded ([`record`]) and in use: the ids that
    /// stopped serving and are kept as standbys are retired ([`TableStore::retire`]), what no
    /// table holds any more is deleted. Failing to only warns (the next switch retries).
    pub fn finish<T, S: TableStore<T>>(&mut self, store: &mut S, staged: Staged<T>) {
        let retiring = self.retiring(&staged);
        self.ids = staged.generation.record;
        let held = self.ids.held();
        let standby: BTreeSet<u32> = retiring.intersection(&held).copied().collect();
        if let Err(err) = store.retire(&standby) {
            warn!(kind = %self.kind, "resetting the retired tables failed: {err:#}");
        }
        let stale = store
            .present_ids()
            .map(|present| present.difference(&held).copied().collect());
        if let Err(err) = stale.and_then(|stale| store.remove(&stale)) {
            warn!(kind = %self.kind, "removing stale tables failed (retried at the next switch): {err:#}");
        }
    }

    /// Gives every table of `wanted` that has no standby ([`Slots::Standby`]; a table just
    /// added, or changed for the first time) one now, under a fresh id, holding what the table
    /// holds: so its first change writes only the difference, as every later one does, and
    /// not the whole table under a fresh id (and its counters after). Called after a switch,
    /// off its path: nothing points at a standby. Records the ids and returns the new
    /// standbys. On failure what was written is deleted and the tables stay without.
    pub fn prepare_standbys<T, S: TableStore<T>>(
        &mut self,
        store: &mut S,
        wanted: &BTreeMap<String, T>,
    ) -> Result<BTreeSet<u32>> {
        if self.slots != Slots::Standby {
            return Ok(BTreeSet::new());
        }
        let taken = store.present_ids()?;
        let held = self.ids.held();
        let mut ids = self.ids.clone();
        let mut next = ids.next.max(1);
        let mut writes = Vec::new();
        for (name, slot) in &mut ids.tables {
            let Some(table) = wanted.get(name) else {
                continue;
            };
            if slot.standby.is_some() || slot.fingerprint != S::fingerprint(table) {
                continue;
            }
            let id = take_fresh_id(&mut next, &taken, &held)?;
            slot.standby = Some(id);
            writes.push((id, table));
        }
        if writes.is_empty() {
            return Ok(BTreeSet::new());
        }
        ids.next = next;
        let standbys: BTreeSet<u32> = writes.iter().map(|(id, _)| *id).collect();
        let written = store
            .write(&writes)
            .and_then(|()| write_record(&self.path, &[(self.kind.as_str(), &ids)]));
        if let Err(err) = written {
            if let Err(undo) = store.remove(&standbys) {
                warn!(kind = %self.kind, "removing the standby tables not recorded failed (removed at the next switch): {undo:#}");
            }
            return Err(err.context("preparing standby tables"));
        }
        self.ids = ids;
        Ok(standbys)
    }

    #[cfg(test)]
    fn save(&self, ids: &TableIds) -> Result<()> {
        write_record(&self.path, &[(self.kind.as_str(), ids)])
    }
}

/// A switch under way ([`VersionedTables::stage`]): the tables are written, not yet in use.
#[must_use = "a staged switch is recorded and finished, or unstaged"]
#[derive(Debug)]
pub struct Staged<T> {
    kind: String,
    generation: Generation,
    table: PhantomData<fn() -> T>,
}

impl<T> Staged<T> {
    pub fn recording(&self) -> Recording<'_> {
        Recording {
            kind: &self.kind,
            ids: &self.generation.record,
        }
    }

    /// Every wanted table's id in the new generation.
    pub fn ids(&self) -> &BTreeMap<String, u32> {
        &self.generation.ids
    }
}

/// What [`record`] writes of a staged switch (of any kind of table).
#[derive(Clone, Copy, Debug)]
pub struct Recording<'a> {
    kind: &'a str,
    ids: &'a TableIds,
}

/// Records the ids of staged switches of several kinds in one write of `tables.json` (all of
/// them or none: the file is replaced by a rename). Every kind must live in the same state dir.
pub fn record(switches: &[(&VersionedTables, Recording<'_>)]) -> Result<()> {
    let Some((first, _)) = switches.first() else {
        return Ok(());
    };
    // Nothing moved (a reload that changed no table): the record stands.
    if switches
        .iter()
        .all(|(tables, staged)| tables.ids == *staged.ids)
    {
        return Ok(());
    }
    if let Some((other, _)) = switches.iter().find(|(t, _)| t.path != first.path) {
        bail!(
            "table kinds {} and {} are recorded in different files",
            first.kind,
            other.kind
        );
    }
    let kinds: Vec<(&str, &TableIds)> = switches
        .iter()
        .map(|(_, staged)| (staged.kind, staged.ids))
        .collect();
    write_record(&first.path, &kinds)
}

fn write_record(path: &Path, kinds: &[(&str, &TableIds)]) -> Result<()> {
    let mut record = read_record(path)?;
    for (kind, ids) in kinds {
        record.insert((*kind).to_string(), (*ids).clone());
    }
    let text = serde_json::to_string_pretty(&record)?;
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        // The content is on disk before it replaces the record: the record is never torn. The
        // rename itself may be lost in a crash (the directory is not synced: a reload would
        // wait for a second flush): a record that lags behind is safe, a restarted agent
        // checks it against what the maps hold (`check_fingerprints`, `drop_serving_standbys`).
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    };
    write().with_context(|| format!("recording table ids in {}", path.display()))
}

fn read_record(path: &Path) -> Result<BTreeMap<String, TableIds>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a table id record", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// FNV-1a, 64 bits, over bytes; over 64-bit words (the NSG tables' rule bitmaps, most of what a
/// classifier holds), a step per word instead of eight: an xor, a multiply by an odd constant
/// and an xor-shift, each one-to-one, so a table that differs from another in one byte or one
/// word always gets another fingerprint (unlike a plain multiply per word, where the top bits
/// of two words can cancel). Stable across builds (unlike `DefaultHasher`), enough to tell a
/// changed table from an unchanged one (the tables are the agent's own, not an adversary's).
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// A word at once: byte-by-byte FNV over a classifier's bitmaps took a tenth of a one-rule
    /// reload's CPU time.
    pub fn write_words(&mut self, words: &[u64]) {
        for word in words {
            self.0 = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.0 ^= self.0 >> 29;
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests;
