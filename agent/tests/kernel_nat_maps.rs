//! NO_MASQUERADE, PUBLIC_IPS and PUBLIC_PORTS written by difference into a real (unpinned)
//! dataplane: what is wanted is there afterwards, what is no longer wanted is gone. Needs root
//! (CAP_BPF).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use vnetd::{
    compile::nat::{IPPROTO_TCP, IPPROTO_UDP, PublicMapping},
    dataplane::{Dataplane, maps::nat::PublicTables},
};

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

#[test]
fn no_masquerade_follows_the_wanted_prefixes() {
    let mut dp = Dataplane::load_unpinned().expect("programs load");
    let first = [
        net("10.0.0.0/16"),
        net("169.254.0.0/16"),
        net("172.16.0.0/12"),
    ];
    dp.sync_no_masquerade(&first).unwrap();
    assert_eq!(dp.no_masquerade().unwrap(), BTreeSet::from(first));
    let second = [
        net("10.0.0.0/16"),
        net("169.254.0.0/16"),
        net("100.64.0.0/10"),
    ];
    dp.sync_no_masquerade(&second).unwrap();
    assert_eq!(dp.no_masquerade().unwrap(), BTreeSet::from(second));
    let occupancy = dp.occupancy().unwrap();
    assert!(
        occupancy.contains(&("no_masquerade".into(), 3, 1024)),
        "{occupancy:?}"
    );
    dp.sync_no_masquerade(&[]).unwrap();
    assert!(dp.no_masquerade().unwrap().is_empty());
}

#[test]
fn public_tables_follow_the_attached_groups() {
    let mut dp = Dataplane::load_unpinned().expect("programs load");
    let mapping = |public: &str, private: &str, ports: &[(u8, u16)]| {
        (
            ip(public),
            PublicMapping {
                group: public.into(),
                public_ip: ip(public),
                private_ip: ip(private),
                ports: ports.to_vec(),
            },
        )
    };
    let web = mapping(
        "203.0.113.20",
        "10.0.2.10",
        &[(IPPROTO_TCP, 80), (IPPROTO_TCP, 443)],
    );
    let dns = mapping("203.0.113.53", "10.0.2.11", &[(IPPROTO_UDP, 53)]);
    let both = PublicTables::of(&BTreeMap::from([web.clone(), dns.clone()]));
    dp.sync_public(&both).unwrap();
    assert_eq!(dp.public_tables().unwrap(), both);
    assert!(
        both.ports.contains(&(ip("203.0.113.53"), IPPROTO_UDP, 53)),
        "{both:?}"
    );

    // web moves to another private address and closes 443; dns is detached.
    let moved = mapping("203.0.113.20", "10.0.2.12", &[(IPPROTO_TCP, 80)]);
    let after = PublicTables::of(&BTreeMap::from([moved]));
    dp.sync_public(&after).unwrap();
    assert_eq!(dp.public_tables().unwrap(), after);
    let occupancy: BTreeMap<String, (u64, u64)> = dp
        .occupancy()
        .unwrap()
        .into_iter()
        .map(|(map, n, max)| (map, (n, max)))
        .collect();
    assert_eq!(occupancy["public_ips"], (1, 256));
    assert_eq!(occupancy["public_ports"], (1, 4096));

    dp.sync_public(&PublicTables::default()).unwrap();
    assert_eq!(dp.public_tables().unwrap(), PublicTables::default());
}
