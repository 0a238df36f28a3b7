//! Route-table switches against the real ROUTES and ENDPOINTS maps (private maps, nothing
//! pinned; needs root): tables keep their ids by name, a changed table is written under a new
//! id before the endpoints switch to it, and a switch failing half way leaves the running
//! tables and endpoints as they were.
mod support;

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use support::{StateDir, pod_endpoint};
use vnetd::dataplane::{Dataplane, maps::routes::RouteEntries, tables::VersionedTables};
use vnetd_common::{Endpoint, NextHop, Route, maps::ROUTES_MAX};

const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 10);

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn route(hop: NextHop, ip: [u8; 4]) -> Route {
    Route {
        next_hop: hop as u32,
        next_hop_ip: ip,
    }
}

fn apps_v1() -> RouteEntries {
    BTreeMap::from([
        (net("0.0.0.0/0"), route(NextHop::Internet, [0; 4])),
        (net("10.0.0.0/16"), route(NextHop::VnetLocal, [0; 4])),
        (
            net("192.0.2.0/24"),
            route(NextHop::VirtualAppliance, [10, 0, 0, 100]),
        ),
    ])
}

fn system() -> RouteEntries {
    BTreeMap::from([
        (net("0.0.0.0/0"), route(NextHop::Internet, [0; 4])),
        (net("10.0.0.0/16"), route(NextHop::VnetLocal, [0; 4])),
    ])
}

fn endpoint(route_table: u32) -> Endpoint {
    Endpoint {
        route_table,
        ..pod_endpoint(7, [2, 0xaa, 0, 0, 0, 10], [2, 0xbb, 0, 0, 0, 10])
    }
}

/// Switches to `wanted`, pointing the pod at its subnet's table `apps`, as the agent does.
fn switch(
    dp: &mut Dataplane,
    tables: &mut VersionedTables,
    wanted: &BTreeMap<String, RouteEntries>,
) -> anyhow::Result<()> {
    let before = dp.endpoints()?;
    tables.switch(
        dp,
        wanted,
        |dp, ids| dp.put_endpoint(POD, endpoint(ids["apps"])),
        |dp| dp.sync_endpoints(&before),
    )
}

/// ROUTES as tables: id -> entries.
fn tables_in(dp: &mut Dataplane) -> BTreeMap<u32, RouteEntries> {
    let mut out: BTreeMap<u32, RouteEntries> = BTreeMap::new();
    for ((id, net), r) in dp.routes().unwrap() {
        out.entry(id).or_default().insert(net, r);
    }
    out
}

/// Fills ROUTES to capacity with /32 entries of a table nobody uses.
fn fill_routes(dp: &mut Dataplane, table: u32) {
    let used = dp.routes().unwrap().len() as u32;
    let filler: BTreeMap<(u32, Ipv4Net), Route> = (0..ROUTES_MAX - used)
        .map(|i| {
            let dst = Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + i), 32).unwrap();
            ((table, dst), route(NextHop::None, [0; 4]))
        })
        .collect();
    dp.upsert_routes(&filler).unwrap();
}

fn running(dp: &mut Dataplane) -> (BTreeMap<u32, RouteEntries>, Endpoint) {
    let mut tables = tables_in(dp);
    tables.remove(&999);
    (tables, dp.endpoints().unwrap()[&POD])
}

#[test]
fn a_table_inserted_in_front_renumbers_nothing_and_a_changed_one_moves_to_a_new_id() {
    let state = StateDir::new("route-tables-insert");
    let mut dp = Dataplane::load_unpinned().expect("programs load and verify");
    let mut tables = VersionedTables::open(state.path(), "routes").unwrap();
    let mut wanted = BTreeMap::from([
        ("(system)".to_string(), system()),
        ("apps".into(), apps_v1()),
    ]);
    switch(&mut dp, &mut tables, &wanted).unwrap();
    let apps = tables.id("apps").unwrap();
    assert_eq!(dp.endpoints().unwrap()[&POD].route_table, apps);

    // A table named to sort (and sit in the spec) before the others: nothing renumbered,
    // nothing rewritten.
    wanted.insert(
        "aaa".into(),
        BTreeMap::from([(net("0.0.0.0/0"), route(NextHop::None, [0; 4]))]),
    );
    switch(&mut dp, &mut tables, &wanted).unwrap();
    assert_eq!(tables.id("apps"), Some(apps));
    assert_eq!(tables_in(&mut dp)[&apps], apps_v1());

    // A changed table: a new id, the pod on it, the old id gone.
    let mut apps_v2 = apps_v1();
    apps_v2.insert(net("192.0.2.0/24"), route(NextHop::None, [0; 4]));
    wanted.insert("apps".into(), apps_v2.clone());
    switch(&mut dp, &mut tables, &wanted).unwrap();
    let new = tables.id("apps").unwrap();
    assert_ne!(new, apps);
    assert_eq!(dp.endpoints().unwrap()[&POD].route_table, new);
    let present = tables_in(&mut dp);
    assert_eq!(present[&new], apps_v2);
    assert!(!present.contains_key(&apps), "the old table is deleted");
    assert_eq!(present.len(), 3);

    // A restarted agent (same state dir, same maps) keeps every id and writes nothing new.
    let mut reopened = VersionedTables::open(state.path(), "routes").unwrap();
    assert_eq!(reopened.ids(), tables.ids());
    switch(&mut dp, &mut reopened, &wanted).unwrap();
    assert_eq!(reopened.ids(), tables.ids());
    assert_eq!(tables_in(&mut dp), present);
}

#[test]
fn a_switch_failing_half_way_leaves_the_running_tables_and_endpoints() {
    let state = StateDir::new("route-tables-full");
    let mut dp = Dataplane::load_unpinned().expect("programs load and verify");
    let mut tables = VersionedTables::open(state.path(), "routes").unwrap();
    let v1 = BTreeMap::from([
        ("(system)".to_string(), system()),
        ("apps".into(), apps_v1()),
    ]);
    switch(&mut dp, &mut tables, &v1).unwrap();
    let ids = tables.ids().clone();
    let before = running(&mut dp);
    fill_routes(&mut dp, 999);

    // The appliance route becomes None and a route is added: ROUTES has no room for it.
    let mut apps_v2 = apps_v1();
    apps_v2.insert(net("192.0.2.0/24"), route(NextHop::None, [0; 4]));
    apps_v2.insert(net("198.51.100.0/24"), route(NextHop::None, [0; 4]));
    let mut v2 = v1.clone();
    v2.insert("apps".into(), apps_v2);
    let err = switch(&mut dp, &mut tables, &v2).expect_err("ROUTES is full");
    assert!(format!("{err:#}").contains("ROUTES_MAX = 16384"), "{err:#}");

    assert_eq!(
        running(&mut dp),
        before,
        "the running tables and the pod's entry stay"
    );
    assert_eq!(tables.ids(), &ids, "the ids stay");
    let recorded = VersionedTables::open(state.path(), "routes").unwrap();
    assert_eq!(recorded.ids(), &ids, "the record stays");
}

#[test]
fn a_switch_failing_after_the_endpoints_moved_points_them_back() {
    let state = StateDir::new("route-tables-record");
    let mut dp = Dataplane::load_unpinned().expect("programs load and verify");
    let mut tables = VersionedTables::open(state.path(), "routes").unwrap();
    let v1 = BTreeMap::from([
        ("(system)".to_string(), system()),
        ("apps".into(), apps_v1()),
    ]);
    switch(&mut dp, &mut tables, &v1).unwrap();
    let before = running(&mut dp);

    // The record cannot be written (its temporary file's name is taken by a directory):
    // the pod was already switched to the new table when that fails.
    std::fs::create_dir(state.path().join("tables.json.tmp")).unwrap();
    let mut v2 = v1.clone();
    v2.insert("apps".into(), system());
    let err = switch(&mut dp, &mut tables, &v2).expect_err("the record cannot be written");
    assert!(
        format!("{err:#}").contains("recording table ids"),
        "{err:#}"
    );
    assert_eq!(
        running(&mut dp),
        before,
        "the pod is back on its table, the new one gone"
    );
}
