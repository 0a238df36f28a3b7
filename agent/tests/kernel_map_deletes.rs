//! Deleting a map entry that is not there succeeds: the agent deletes what its records say,
//! and an entry already gone (never written, deleted before a restart, removed behind the
//! agent's back) must not fail a CNI DEL or a reload. The kernel answers such a delete with
//! ENOENT, which aya reports as a system call error, not as `KeyNotFound`. Needs root
//! (CAP_BPF).
use std::net::Ipv4Addr;

use vnetd::dataplane::Dataplane;
use vnetd_common::{Flow, FlowKey};

#[test]
fn removing_an_endpoint_that_has_no_entry_succeeds() {
    let mut dp = Dataplane::load_unpinned().expect("programs load");
    let ip = Ipv4Addr::new(10, 0, 2, 77);
    dp.remove_endpoint(ip)
        .expect("an endpoint without an ENDPOINTS entry is removed");
    assert!(!dp.endpoints().unwrap().contains_key(&ip));
}

#[test]
fn removing_a_flow_entry_that_is_gone_reports_it_gone() {
    let dp = Dataplane::load_unpinned().expect("programs load");
    let mut maps = dp.conntrack_maps().unwrap();
    let key = FlowKey {
        src_ip: [10, 0, 2, 10],
        dst_ip: [10, 0, 2, 11],
        src_port: 40000u16.to_be(),
        dst_port: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    maps.insert(&key, &Flow::default()).unwrap();
    assert!(maps.remove(&key).unwrap(), "the entry was there");
    assert!(!maps.remove(&key).unwrap(), "the entry is gone");
}
