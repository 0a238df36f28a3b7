//! BPF_PROG_RUN tests of NSG classification: random rule sets compiled by the agent and written
//! into the NSG maps by `dataplane::maps::nsg` (generation-numbered ids, as a reload does), then
//! random packets through `pod_ingress`, whose verdict (dropped as `nsg_denied` or not) and
//! deciding rule (the hit counter that moved) must be the reference evaluator's. The classifier
//! is direction-agnostic in the kernel, so each direction's classifier is tried by naming it as
//! the sending endpoint's outbound NSG. Needs root (CAP_BPF).
mod support;

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Mutex};

use ipnet::Ipv4Net;
use proptest::prelude::*;
use support::*;
use vnetd::{
    compile::{
        NsgTables, ServiceTags,
        nsg::compile_nsgs,
        prefix::complement,
        reference::{Packet, evaluate_nsg},
    },
    dataplane::{
        Dataplane,
        maps::nsg::switch_nsgs,
        tables::{Slots, VersionedTables},
    },
    spec::{
        AZURE_LOAD_BALANCER, Access, AddressPrefix, Direction, NetworkSecurityGroup, PortRange,
        Protocol, SecurityRule, ServiceTag, VirtualNetwork,
    },
};
use vnetd_common::{DropReason, Endpoint, NextHop, NsgRuleKey, Route};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

/// The dataplane and the NSG ids the property test's cases share (loading the programs once).
struct Fixture {
    dp: Dataplane,
    versions: VersionedTables,
    _state: StateDir,
}

static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

/// The same with two ids per classifier ([`Slots::Standby`]), as the agent keeps them.
static STANDBY_FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

fn tags(vnet: &VirtualNetwork) -> ServiceTags {
    let virtual_network: Vec<Ipv4Net> = vnet
        .address_space
        .iter()
        .chain(&vnet.connected_address_spaces)
        .copied()
        .collect();
    ServiceTags {
        internet: complement(&virtual_network),
        virtual_network,
    }
}

/// Writes `nsg`'s classifiers and returns their kernel ids by direction.
fn install(
    fx: &mut Fixture,
    vnet: &VirtualNetwork,
    nsg: &NetworkSecurityGroup,
) -> (NsgTables, BTreeMap<Direction, u32>) {
    let tables = compile_nsgs(std::slice::from_ref(nsg), &tags(vnet)).expect("compiles");
    let mut kernel = BTreeMap::new();
    switch_nsgs(
        &mut fx.versions,
        &mut fx.dp,
        &tables,
        |_, ids| {
            kernel = ids.clone();
            Ok(())
        },
        |_| Ok(()),
    )
    .expect("the classifiers are written");
    let by_direction = [Direction::Inbound, Direction::Outbound]
        .into_iter()
        .map(|d| (d, kernel[&NsgTables::classifier_id(1, d)]))
        .collect();
    (tables, by_direction)
}

/// Ethernet + IPv4 from `src` (as pod A's MAC) to `dst` with an L4 header of `protocol`.
fn frame(p: &Packet) -> Vec<u8> {
    let mut l4 = Vec::new();
    match p.protocol {
        TCP => {
            l4.extend_from_slice(&p.src_port.to_be_bytes());
            l4.extend_from_slice(&p.dst_port.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        }
        UDP => {
            l4.extend_from_slice(&p.src_port.to_be_bytes());
            l4.extend_from_slice(&p.dst_port.to_be_bytes());
            l4.extend_from_slice(&[0, 12, 0, 0]);
        }
        // An echo request whose identifier is the "source port": NSG rules must not see it.
        ICMP => {
            l4.extend_from_slice(&[8, 0, 0, 0]);
            l4.extend_from_slice(&p.src_port.to_be_bytes());
            l4.extend_from_slice(&[0, 1]);
        }
        _ => l4.extend_from_slice(&[0; 8]),
    }
    l4.extend_from_slice(b"nsg!");
    let mut f = eth(HOST_A, MAC_A, 0x0800);
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, p.protocol, 0, 0]);
    f.extend_from_slice(&p.src.octets());
    f.extend_from_slice(&p.dst.octets());
    let check = !ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&l4);
    f
}

/// The senders' route table: everything is in the VNet, so no route (None, the internet's
/// translation) decides a packet before its NSG does.
const ORACLE_TABLE: u32 = 7;

fn oracle_dataplane() -> Dataplane {
    let mut dp = dataplane();
    let everywhere = (ORACLE_TABLE, "0.0.0.0/0".parse::<Ipv4Net>().unwrap());
    let vnet = Route {
        next_hop: NextHop::VnetLocal as u32,
        next_hop_ip: [0; 4],
    };
    dp.upsert_routes(&BTreeMap::from([(everywhere, vnet)]))
        .unwrap();
    dp
}

/// The sender of `p`: an endpoint at its source address whose outbound NSG is `classifier`.
fn sender(dp: &mut Dataplane, src: Ipv4Addr, classifier: u32) {
    dp.put_endpoint(
        src,
        Endpoint {
            host_ifindex: TEST_IFINDEX,
            route_table: ORACLE_TABLE,
            pod_mac: MAC_A,
            host_mac: HOST_A,
            public_ip: [0; 4],
            nsg_in_subnet: 0,
            nsg_in_group: 0,
            nsg_out_subnet: classifier,
            nsg_out_group: 0,
            flags: 0,
        },
    )
    .unwrap();
}

/// Empties FLOWS: the oracle checks first packets, which an allowed flow's entries would skip.
fn forget_flows(dp: &Dataplane) {
    let mut flows = dp.conntrack_maps().unwrap();
    for key in flows.flows().unwrap().into_keys() {
        flows.remove(&key).unwrap();
    }
}

/// Runs `packets` through pod_ingress against `nsg` (both directions' classifiers) and checks
/// each verdict and, per classifier, every rule's hit count against the reference.
fn check_against_reference(
    fx: &mut Fixture,
    vnet: &VirtualNetwork,
    nsg: &NetworkSecurityGroup,
    packets: &[Packet],
) -> Result<(), TestCaseError> {
    let (tables, ids) = install(fx, vnet, nsg);
    for direction in [Direction::Inbound, Direction::Outbound] {
        let id = ids[&direction];
        let classifier = tables
            .classifier(NsgTables::classifier_id(1, direction))
            .unwrap();
        let mut expected_hits: BTreeMap<u32, u64> = BTreeMap::new();
        for p in packets {
            sender(&mut fx.dp, p.src, id);
            let denied_before = drops(&fx.dp, DropReason::NsgDenied);
            let run = run(
                &mut fx.dp,
                vnetd_common::programs::POD_TC_INGRESS,
                &frame(p),
            );
            let denied = drops(&fx.dp, DropReason::NsgDenied) - denied_before;
            // ENDPOINTS holds 512: each packet's sender goes with it. And each packet is the
            // first of its flow: an allowed one's entries go too.
            fx.dp.remove_endpoint(p.src).unwrap();
            forget_flows(&fx.dp);
            let exempt = p.dst == AZURE_LOAD_BALANCER || p.dst == METADATA;
            if exempt {
                prop_assert_eq!(denied, 0, "{:?} {:?}: exempt, yet denied", direction, p);
                continue;
            }
            let decided = evaluate_nsg(nsg, direction, vnet, p);
            let rule = classifier
                .rules
                .iter()
                .position(|r| r.name == decided.rule && r.priority == decided.priority)
                .expect("the reference's rule is in the classifier");
            *expected_hits.entry(rule as u32).or_default() += 1;
            prop_assert_eq!(
                denied,
                u64::from(decided.access == Access::Deny),
                "{:?} {:?}: reference says {:?} (verdict {})",
                direction,
                p,
                decided,
                run.verdict
            );
            if decided.access == Access::Deny {
                prop_assert_eq!(run.verdict, TC_ACT_SHOT);
            }
        }
        let hits: BTreeMap<u32, u64> = fx
            .dp
            .nsg_hits()
            .unwrap()
            .into_iter()
            .filter(|(key, n)| key.classifier == id && *n > 0)
            .map(|(key, n)| (key.rule, n))
            .collect();
        prop_assert_eq!(
            hits,
            expected_hits,
            "{:?}: hits by rule index (kernel, reference)",
            direction
        );
    }
    Ok(())
}

#[path = "../src/compile/strategies.rs"]
mod strategies;
use strategies::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        rng_algorithm: prop::test_runner::RngAlgorithm::XorShift,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// pod_ingress decides every packet as the reference evaluator does, and counts the hit on
    /// the rule the reference names.
    #[test]
    fn pod_ingress_agrees_with_reference(
        vnet in vnet_strategy(),
        nsg in nsg_strategy(),
        packets in prop::collection::vec(packet(), 12),
    ) {
        let mut guard = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
        let fx = guard.get_or_insert_with(|| {
            let state = StateDir::new("progrun-nsg-oracle");
            Fixture {
                dp: oracle_dataplane(),
                versions: VersionedTables::open(state.path(), "nsg").unwrap(),
                _state: state,
            }
        });
        check_against_reference(fx, &vnet, &nsg, &packets)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 100,
        rng_algorithm: prop::test_runner::RngAlgorithm::XorShift,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// With two ids per classifier, every case a reload of a random NSG written into the ids
    /// that do not serve (only the difference to the case before the last), pod_ingress decides
    /// every packet as the reference evaluator does and counts each hit once, from zero, on the
    /// rule the reference names: whatever the reused id held, nothing of it is left.
    #[test]
    fn pod_ingress_agrees_with_reference_across_standby_switches(
        vnet in vnet_strategy(),
        nsg in nsg_strategy(),
        packets in prop::collection::vec(packet(), 12),
    ) {
        let mut guard = STANDBY_FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
        let fx = guard.get_or_insert_with(|| {
            let state = StateDir::new("progrun-nsg-standby");
            Fixture {
                dp: oracle_dataplane(),
                versions: VersionedTables::open_with(state.path(), "nsg", Slots::Standby).unwrap(),
                _state: state,
            }
        });
        check_against_reference(fx, &vnet, &nsg, &packets)?;
        let present = fx.dp.nsg_classifier_ids().unwrap();
        prop_assert!(present.len() <= 4, "two ids per direction at most: {:?}", present);
    }
}

/// A reload switches classifiers by id: an unchanged NSG keeps its ids, a changed one is written
/// under fresh ids and the old ids' entries (counters included) are gone; nothing else remains.
#[test]
fn a_changed_nsg_moves_to_fresh_ids_and_the_old_ones_are_removed() {
    let state = StateDir::new("progrun-nsg-switch");
    let mut fx = Fixture {
        dp: oracle_dataplane(),
        versions: VersionedTables::open(state.path(), "nsg").unwrap(),
        _state: state,
    };
    let vnet = VirtualNetwork {
        name: "v".into(),
        address_space: vec!["10.0.0.0/16".parse().unwrap()],
        connected_address_spaces: vec![],
        subnets: vec![],
    };
    let deny_smtp = |priority| NetworkSecurityGroup {
        name: "apps-nsg".into(),
        security_rules: vec![SecurityRule {
            name: "deny-smtp-out".into(),
            description: None,
            priority,
            direction: Direction::Outbound,
            access: Access::Deny,
            protocol: Protocol::Tcp,
            source_address_prefixes: vec![AddressPrefix::Any],
            source_port_ranges: vec![PortRange::ANY],
            destination_address_prefixes: vec![AddressPrefix::Any],
            destination_port_ranges: vec![PortRange::single(25)],
        }],
    };
    let (_, first) = install(&mut fx, &vnet, &deny_smtp(200));
    let (_, again) = install(&mut fx, &vnet, &deny_smtp(200));
    assert_eq!(first, again, "an unchanged NSG keeps its ids");
    let (_, changed) = install(&mut fx, &vnet, &deny_smtp(300));
    assert_eq!(changed[&Direction::Inbound], first[&Direction::Inbound]);
    assert_ne!(changed[&Direction::Outbound], first[&Direction::Outbound]);
    let present = fx.dp.nsg_classifier_ids().unwrap();
    assert_eq!(
        present,
        changed.values().copied().collect(),
        "only the live classifiers have entries"
    );

    // The live outbound classifier denies SMTP from pod A and counts it on rule 0.
    let out = changed[&Direction::Outbound];
    sender(&mut fx.dp, Ipv4Addr::from(POD_A), out);
    let smtp = Packet {
        src: POD_A.into(),
        dst: "8.8.8.8".parse().unwrap(),
        protocol: TCP,
        src_port: 40000,
        dst_port: 25,
    };
    let web = Packet {
        dst_port: 443,
        ..smtp
    };
    assert_eq!(
        run(
            &mut fx.dp,
            vnetd_common::programs::POD_TC_INGRESS,
            &frame(&smtp)
        )
        .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&fx.dp, DropReason::NsgDenied), 1);
    assert_ne!(
        run(
            &mut fx.dp,
            vnetd_common::programs::POD_TC_INGRESS,
            &frame(&web)
        )
        .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&fx.dp, DropReason::NsgDenied), 1);
    let hits = fx.dp.nsg_hits().unwrap();
    let hit = |rule| {
        hits.get(&NsgRuleKey {
            classifier: out,
            rule,
        })
        .copied()
    };
    // Rule 0: deny-smtp-out; 1..=3: AllowVnetOutBound, AllowInternetOutBound, DenyAllOutBound.
    assert_eq!(
        (hit(0), hit(1), hit(2), hit(3)),
        (Some(1), Some(0), Some(1), Some(0))
    );

    // An endpoint without classifier ids is not classified at all.
    sender(&mut fx.dp, Ipv4Addr::from(POD_A), 0);
    assert_ne!(
        run(
            &mut fx.dp,
            vnetd_common::programs::POD_TC_INGRESS,
            &frame(&smtp)
        )
        .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&fx.dp, DropReason::NsgDenied), 1);
    assert_eq!(fx.dp.nsg_hits().unwrap(), hits);
}
