use super::*;

fn wanted(tables: &[(&str, u64)]) -> BTreeMap<String, u64> {
    tables.iter().map(|(n, f)| (n.to_string(), *f)).collect()
}

fn first(tables: &[(&str, u64)]) -> TableIds {
    TableIds::default()
        .next_generation(&wanted(tables), &BTreeSet::new(), Slots::Fresh)
        .unwrap()
        .record
}

#[test]
fn ids_start_at_one_and_every_new_table_is_fresh() {
    let g = TableIds::default()
        .next_generation(
            &wanted(&[("(system)", 1), ("apps", 2)]),
            &BTreeSet::new(),
            Slots::Fresh,
        )
        .unwrap();
    assert_eq!(
        g.ids.values().copied().collect::<BTreeSet<_>>(),
        [1, 2].into()
    );
    assert_eq!(g.fresh, [1, 2].into());
}

#[test]
fn inserting_a_table_in_front_keeps_the_other_ids() {
    let before = first(&[("apps", 10), ("db", 20)]);
    let g = before
        .next_generation(
            &wanted(&[("aaa-first", 5), ("apps", 10), ("db", 20)]),
            &BTreeSet::new(),
            Slots::Fresh,
        )
        .unwrap();
    assert_eq!(g.ids["apps"], before.id("apps").unwrap());
    assert_eq!(g.ids["db"], before.id("db").unwrap());
    assert_eq!(g.fresh, [g.ids["aaa-first"]].into());
    assert!(!before.ids().values().any(|id| *id == g.ids["aaa-first"]));
}

#[test]
fn a_changed_table_gets_a_new_id_never_one_in_use_or_taken() {
    let before = first(&[("apps", 10), ("db", 20)]);
    let taken: BTreeSet<u32> = [3, 4].into();
    let g = before
        .next_generation(&wanted(&[("apps", 11), ("db", 20)]), &taken, Slots::Fresh)
        .unwrap();
    let new = g.ids["apps"];
    assert_ne!(new, before.id("apps").unwrap());
    assert!(!taken.contains(&new) && new != before.id("db").unwrap() && new != 0);
    assert_eq!(g.fresh, [new].into());
    assert_eq!(g.ids["db"], before.id("db").unwrap());
    // Changed back: again a new id (the old one may still be being deleted).
    let back = g
        .record
        .next_generation(
            &wanted(&[("apps", 10), ("db", 20)]),
            &BTreeSet::new(),
            Slots::Fresh,
        )
        .unwrap();
    assert!(![before.id("apps").unwrap(), new].contains(&back.ids["apps"]));
}

#[test]
fn ids_are_stable_across_restarts_through_the_state_dir() {
    let dir = std::env::temp_dir().join(format!("vnetd-tables-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let cleanup = Cleanup(dir.clone());
    let routes = VersionedTables::open(&dir, "routes").unwrap();
    assert_eq!(routes.ids, TableIds::default(), "nothing recorded yet");
    let g = routes
        .ids
        .next_generation(
            &wanted(&[("apps", 10), ("db", 20)]),
            &BTreeSet::new(),
            Slots::Fresh,
        )
        .unwrap();
    routes.save(&g.record).unwrap();
    // Another kind in the same file is kept beside it.
    let nsg = VersionedTables::open(&dir, "nsg").unwrap();
    nsg.save(&first(&[("web", 1)])).unwrap();

    let reopened = VersionedTables::open(&dir, "routes").unwrap();
    assert_eq!(reopened.ids, g.record);
    let again = reopened
        .ids
        .next_generation(
            &wanted(&[("apps", 10), ("db", 20)]),
            &BTreeSet::new(),
            Slots::Fresh,
        )
        .unwrap();
    assert_eq!(again.ids, g.ids);
    assert!(again.fresh.is_empty(), "an unchanged spec writes nothing");
    assert_eq!(
        VersionedTables::open(&dir, "nsg").unwrap().id("web"),
        Some(1)
    );

    fs::write(dir.join("tables.json"), "{ not json").unwrap();
    let err = VersionedTables::open(&dir, "routes").unwrap_err();
    assert!(
        format!("{err:#}").contains("tables.json is not a table id record"),
        "{err:#}"
    );
    drop(cleanup);
}

/// Two slots per table: a table's first change takes a fresh id, every later one its standby,
/// which is the id it served from before; a change and its reversal alternate between the two
/// ids, and the unchanged tables keep theirs (and their standbys).
#[test]
fn a_changed_table_alternates_between_its_two_slots() {
    let next = |ids: &TableIds, tables: &[(&str, u64)]| {
        ids.next_generation(&wanted(tables), &BTreeSet::new(), Slots::Standby)
            .unwrap()
    };
    let start = next(&TableIds::default(), &[("apps", 10), ("db", 20)]);
    assert!(start.record.standbys().is_empty());
    let (a, db) = (start.ids["apps"], start.ids["db"]);

    let first = next(&start.record, &[("apps", 11), ("db", 20)]);
    let b = first.ids["apps"];
    assert!(![a, db, 0].contains(&b));
    assert_eq!(
        (first.fresh.clone(), first.written.clone()),
        ([b].into(), [b].into())
    );
    assert_eq!(
        first.record.standbys(),
        BTreeMap::from([("apps".into(), a)])
    );
    assert_eq!(first.ids["db"], db);

    let mut record = first.record;
    for (i, fingerprint) in [10, 11, 12, 12, 13].into_iter().enumerate() {
        let g = next(&record, &[("apps", fingerprint), ("db", 20)]);
        let (live, standby) = (record.id("apps").unwrap(), record.standbys()["apps"]);
        if fingerprint == record.tables["apps"].fingerprint {
            assert_eq!(g.ids["apps"], live, "change {i}: unchanged, same id");
            assert!(g.written.is_empty());
            assert_eq!(g.record.standbys()["apps"], standby);
        } else {
            assert_eq!(g.ids["apps"], standby, "change {i}: into the standby");
            assert_eq!(g.written, [standby].into());
            assert!(g.fresh.is_empty(), "change {i}: no fresh id");
            assert_eq!(
                g.record.standbys()["apps"],
                live,
                "change {i}: the old id waits"
            );
        }
        assert_eq!(g.ids["db"], db);
        assert!(!g.record.standbys().contains_key("db"));
        assert_eq!(
            g.record.held(),
            [a, b, db].into(),
            "change {i}: two ids for apps, one for db"
        );
        record = g.record;
    }

    // A table that goes away takes both its ids with it.
    let gone = next(&record, &[("db", 20)]);
    assert_eq!(gone.record.held(), [db].into());
}

/// A standby an endpoint points at (an agent stopped between a switch and its record) is
/// forgotten, never written into: the table's next change takes a fresh id.
#[test]
fn a_standby_in_use_is_never_written_into() {
    let dir = std::env::temp_dir().join(format!("vnetd-tables-ab-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let cleanup = Cleanup(dir.clone());
    let tables = VersionedTables::open_with(&dir, "nsgs", Slots::Standby).unwrap();
    let next = |ids: &TableIds, f: u64| {
        ids.next_generation(&wanted(&[("web", f)]), &BTreeSet::new(), Slots::Standby)
            .unwrap()
    };
    let one = next(&tables.ids, 1);
    let two = next(&one.record, 2);
    let (a, b) = (one.ids["web"], two.ids["web"]);
    tables.save(&two.record).unwrap();
    let mut reopened = VersionedTables::open_with(&dir, "nsgs", Slots::Standby).unwrap();
    assert_eq!(reopened.ids, two.record, "the standby is recorded");
    reopened.drop_serving_standbys(&[b].into());
    assert_eq!(reopened.ids, two.record, "the standby serves nothing: kept");
    reopened.drop_serving_standbys(&[a, b].into());
    assert!(reopened.ids.standbys().is_empty());
    let three = next(&reopened.ids, 3);
    assert!(![a, b].contains(&three.ids["web"]), "a fresh id");
    assert_eq!(three.fresh, [three.ids["web"]].into());

    // An agent that keeps no standbys forgets them (they are deleted as stale).
    let fresh = VersionedTables::open(&dir, "nsgs").unwrap();
    assert!(fresh.ids.standbys().is_empty());
    assert_eq!(fresh.id("web"), Some(b));
    drop(cleanup);
}

/// Tables in memory: id -> content (a number, its own fingerprint), and the ids each `write`
/// call wrote content into. With `full`, a write stores its first table and fails.
#[derive(Default)]
struct MemStore {
    ids: BTreeMap<u32, u64>,
    writes: Vec<BTreeSet<u32>>,
    full: bool,
}

impl TableStore<u64> for MemStore {
    fn fingerprint(table: &u64) -> u64 {
        *table
    }
    fn present_ids(&mut self) -> Result<BTreeSet<u32>> {
        Ok(self.ids.keys().copied().collect())
    }
    fn write(&mut self, tables: &[(u32, &u64)]) -> Result<()> {
        if self.full {
            if let Some((id, t)) = tables.first() {
                self.ids.insert(*id, **t);
            }
            bail!("full");
        }
        let changed = tables
            .iter()
            .filter(|(id, t)| self.ids.insert(*id, **t) != Some(**t))
            .map(|(id, _)| *id)
            .collect();
        self.writes.push(changed);
        Ok(())
    }
    fn remove(&mut self, ids: &BTreeSet<u32>) -> Result<()> {
        self.ids.retain(|id, _| !ids.contains(id));
        Ok(())
    }
}

/// A table just added gets its standby after the switch, holding the same content: its first
/// change is written into the standby (what differs), not whole under a fresh id.
#[test]
fn a_new_table_gets_its_standby_after_the_switch() {
    let dir = std::env::temp_dir().join(format!("vnetd-tables-prep-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let cleanup = Cleanup(dir.clone());
    let mut tables = VersionedTables::open_with(&dir, "nsgs", Slots::Standby).unwrap();
    let mut store = MemStore::default();
    let tables_of = |web| BTreeMap::from([("web".to_string(), web)]);
    let switch = |tables: &mut VersionedTables, store: &mut MemStore, web| {
        tables
            .switch(store, &tables_of(web), |_, _| Ok(()), |_| Ok(()))
            .unwrap()
    };

    switch(&mut tables, &mut store, 1);
    let live = tables.id("web").unwrap();
    // No room: what was written is taken back, nothing is recorded, the table stays without.
    store.full = true;
    let recorded = fs::read_to_string(dir.join("tables.json")).unwrap();
    assert!(tables.prepare_standbys(&mut store, &tables_of(1)).is_err());
    assert_eq!(store.ids, BTreeMap::from([(live, 1)]));
    assert!(tables.ids.standbys().is_empty());
    assert_eq!(
        fs::read_to_string(dir.join("tables.json")).unwrap(),
        recorded
    );
    store.full = false;

    let standbys = tables.prepare_standbys(&mut store, &tables_of(1)).unwrap();
    let standby = tables.ids.standbys()["web"];
    assert_eq!(standbys, [standby].into());
    assert_ne!(standby, live);
    assert_eq!(store.ids, BTreeMap::from([(live, 1), (standby, 1)]));
    let reopened = VersionedTables::open_with(&dir, "nsgs", Slots::Standby).unwrap();
    assert_eq!(reopened.ids, tables.ids, "the standby is recorded");
    assert!(
        tables
            .prepare_standbys(&mut store, &tables_of(1))
            .unwrap()
            .is_empty(),
        "one standby per table"
    );

    // The first change goes into the standby, which becomes the live id; the old live id is
    // the standby now, and nothing else is held.
    store.writes.clear();
    switch(&mut tables, &mut store, 2);
    assert_eq!(tables.id("web"), Some(standby));
    assert_eq!(tables.ids.standbys()["web"], live);
    assert_eq!(store.writes, vec![BTreeSet::from([standby])]);
    assert_eq!(store.ids, BTreeMap::from([(live, 1), (standby, 2)]));

    // Kinds that take fresh ids keep no standbys.
    let mut routes = VersionedTables::open(&dir, "routes").unwrap();
    let mut route_store = MemStore::default();
    switch(&mut routes, &mut route_store, 3);
    assert!(
        routes
            .prepare_standbys(&mut route_store, &tables_of(3))
            .unwrap()
            .is_empty()
    );
    drop(cleanup);
}

#[test]
fn fingerprints_are_stable() {
    // Stable across builds: the record written by one agent is read by the next.
    let mut f = Fingerprint::default();
    f.write(b"a");
    assert_eq!(f.finish(), 0xaf63_dc4c_8601_ec8c);
    f.write_words(&[1]);
    assert_eq!(f.finish(), 0xfefd_6afa_b795_e47b);
}

#[test]
fn a_fingerprint_tells_any_one_changed_word() {
    // Every bit of every word of a 16-word bitmap, and pairs of words changed in the same bit
    // (where a plain multiply per word cancels the top bit).
    let words = [0x0123_4567_89ab_cdef_u64; 16];
    let of = |words: &[u64]| {
        let mut f = Fingerprint::default();
        f.write(b"d");
        f.write_words(words);
        f.finish()
    };
    let base = of(&words);
    let mut seen = std::collections::BTreeSet::from([base]);
    for i in 0..words.len() {
        for bit in 0..64 {
            let mut one = words;
            one[i] ^= 1 << bit;
            assert!(seen.insert(of(&one)), "word {i} bit {bit}");
            for j in i + 1..words.len() {
                let mut two = one;
                two[j] ^= 1 << bit;
                assert_ne!(of(&two), base, "words {i} and {j}, bit {bit}");
            }
        }
    }
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
