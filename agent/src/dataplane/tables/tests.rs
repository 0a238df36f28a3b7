use super::*;

fn wanted(tables: &[(&str, u64)]) -> BTreeMap<String, u64> {
    tables.iter().map(|(n, f)| (n.to_string(), *f)).collect()
}

fn first(tables: &[(&str, u64)]) -> TableIds {
    TableIds::default()
        .next_generation(&wanted(tables), &BTreeSet::new())
        .unwrap()
        .record
}

#[test]
fn ids_start_at_one_and_every_new_table_is_fresh() {
    let g = TableIds::default()
        .next_generation(&wanted(&[("(system)", 1), ("apps", 2)]), &BTreeSet::new())
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
        .next_generation(&wanted(&[("apps", 11), ("db", 20)]), &taken)
        .unwrap();
    let new = g.ids["apps"];
    assert_ne!(new, before.id("apps").unwrap());
    assert!(!taken.contains(&new) && new != before.id("db").unwrap() && new != 0);
    assert_eq!(g.fresh, [new].into());
    assert_eq!(g.ids["db"], before.id("db").unwrap());
    // Changed back: again a new id (the old one may still be being deleted).
    let back = g
        .record
        .next_generation(&wanted(&[("apps", 10), ("db", 20)]), &BTreeSet::new())
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
        .next_generation(&wanted(&[("apps", 10), ("db", 20)]), &BTreeSet::new())
        .unwrap();
    routes.save(&g.record).unwrap();
    // Another kind in the same file is kept beside it.
    let nsg = VersionedTables::open(&dir, "nsg").unwrap();
    nsg.save(&first(&[("web", 1)])).unwrap();

    let reopened = VersionedTables::open(&dir, "routes").unwrap();
    assert_eq!(reopened.ids, g.record);
    let again = reopened
        .ids
        .next_generation(&wanted(&[("apps", 10), ("db", 20)]), &BTreeSet::new())
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

#[test]
fn fingerprints_are_fnv1a() {
    // Stable across builds: the record written by one agent is read by the next.
    let mut f = Fingerprint::default();
    f.write(b"a");
    assert_eq!(f.finish(), 0xaf63_dc4c_8601_ec8c);
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
