//! Compilation tests: the contract example compiled by hand, then property tests holding the
//! compiled NSG classifiers and route tables to the reference evaluators on random rule sets
//! and packets.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use proptest::prelude::*;

use super::nsg::{compile_classifier, default_rules};
use super::reference::{self, Packet};
use super::*;
use crate::spec::{
    AZURE_LOAD_BALANCER, Access, AddressPrefix, NetworkSecurityGroup, NextHopType, PortRange,
    Protocol, Route, RouteTable, SecurityRule, ServiceTag, Spec, VirtualNetwork, parse_str,
};

const CONTRACT: &str = include_str!("../../../examples/contract.yaml");

fn contract() -> Spec {
    parse_str(CONTRACT).expect("the contract example parses")
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

#[test]
fn contract_example_compiles() {
    let compiled = compile(&contract(), "node-1").unwrap();
    let node = &compiled.node;
    assert_eq!(
        (node.name.as_str(), node.interface.as_str()),
        ("node-1", "eth0")
    );
    assert_eq!(
        (node.primary_ip, node.primary_subnet_id, node.max_pods),
        (ip("10.0.0.4"), 1, 30)
    );
    assert_eq!(node.pool.len(), 2);
    assert_eq!(node.pool_in(2), ["10.0.1.10-10.0.1.40".parse().unwrap()]);
    assert_eq!(node.pool_in(3), ["10.0.2.10-10.0.2.250".parse().unwrap()]);
    assert_eq!(node.pool[0].size(), 31);

    let names: Vec<(u32, &str, u32, u32, u32, u32, bool)> = compiled
        .subnets
        .iter()
        .map(|s| {
            (
                s.id,
                s.name.as_str(),
                s.nsg_id,
                s.inbound_classifier,
                s.outbound_classifier,
                s.route_table_id,
                s.delegated,
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            (1, "nodes", 0, 0, 0, 0, false),
            (2, "aci", 2, 3, 4, 1, true),
            (3, "apps", 1, 1, 2, 0, false)
        ]
    );
    assert_eq!(compiled.subnet_of(ip("10.0.2.200")).unwrap().name, "apps");

    assert_eq!(
        compiled.vnet_prefixes,
        [
            net("10.0.0.0/16"),
            net("10.1.0.0/16"),
            net("192.168.50.0/24")
        ]
    );
    assert_eq!(
        compiled.no_masquerade,
        [
            net("10.0.0.0/16"),
            net("10.1.0.0/16"),
            net("192.168.50.0/24"),
            net("172.16.0.0/12"),
            net("169.254.0.0/16")
        ]
    );
    assert!(prefix::in_any(&compiled.internet_prefixes, ip("8.8.8.8")));
    assert!(!prefix::in_any(
        &compiled.internet_prefixes,
        ip("192.168.50.9")
    ));
    assert_eq!(
        compiled.snat_port_range,
        PortRange {
            first: 32768,
            last: 65535
        }
    );
    assert_eq!(compiled.idle_timeout, Duration::from_secs(240));

    let groups: Vec<(&str, u32, Option<Ipv4Addr>, Option<Ipv4Addr>)> = compiled
        .container_groups
        .iter()
        .map(|g| (g.name.as_str(), g.subnet_id, g.private_ip, g.public_ip))
        .collect();
    assert_eq!(
        groups,
        [
            ("api", 2, Some(ip("10.0.1.10")), None),
            ("web", 3, None, Some(ip("203.0.113.20")))
        ]
    );
    assert_eq!(
        compiled.container_groups[1].dns_name_label.as_deref(),
        Some("web")
    );
}

#[test]
fn contract_routes() {
    let compiled = compile(&contract(), "node-1").unwrap();
    assert_eq!(compiled.routes.len(), 2);
    let system = compiled.route_table(0).unwrap();
    let hop = |table: &CompiledRouteTable, dst| {
        let entry = table.lookup(ip(dst)).unwrap();
        (entry.prefix, entry.next_hop.kind, entry.next_hop.ip)
    };
    assert_eq!(system.entries.len(), 4);
    assert_eq!(
        hop(system, "10.0.2.5"),
        (net("10.0.0.0/16"), NextHopType::VnetLocal, None)
    );
    assert_eq!(
        hop(system, "10.1.2.3"),
        (net("10.1.0.0/16"), NextHopType::VirtualNetworkGateway, None)
    );
    assert_eq!(
        hop(system, "192.168.50.1"),
        (
            net("192.168.50.0/24"),
            NextHopType::VirtualNetworkGateway,
            None
        )
    );
    assert_eq!(
        hop(system, "1.1.1.1"),
        (net("0.0.0.0/0"), NextHopType::Internet, None)
    );
    // No `None` routes for private ranges outside the address space.
    assert_eq!(hop(system, "10.200.0.1").1, NextHopType::Internet);

    let firewall = compiled.route_table(1).unwrap();
    assert_eq!(firewall.name.as_deref(), Some("via-firewall"));
    assert_eq!(
        firewall.entries.len(),
        4,
        "the UDR replaced the system 0.0.0.0/0"
    );
    assert_eq!(
        hop(firewall, "1.1.1.1"),
        (
            net("0.0.0.0/0"),
            NextHopType::VirtualAppliance,
            Some(ip("10.0.0.100"))
        )
    );
    assert_eq!(
        firewall.lookup(ip("1.1.1.1")).unwrap().origin,
        RouteOrigin::User("default-via-nva".into())
    );
    assert_eq!(hop(firewall, "10.0.2.5").1, NextHopType::VnetLocal);
}

/// A table routes the VNet locally unless a route overrides part of its address space (or all
/// of it); routes outside it, or less specific, do not matter.
#[test]
fn route_tables_route_the_vnet_locally_unless_a_route_overrides_it() {
    let vnet = contract().virtual_network;
    let route = |prefix: &str, kind| Route {
        name: format!("r-{prefix}"),
        address_prefix: net(prefix),
        next_hop_type: kind,
        next_hop_ip_address: (kind == NextHopType::VirtualAppliance).then(|| ip("10.0.3.4")),
    };
    let direct = |routes: Vec<Route>| {
        let table = RouteTable {
            name: "t".into(),
            routes,
        };
        let compiled = routes::compile_route_tables(&vnet, std::slice::from_ref(&table));
        assert!(
            compiled[0].vnet_direct,
            "system routes alone route the VNet locally"
        );
        compiled[1].vnet_direct
    };
    use NextHopType::{Internet, VirtualAppliance, VnetLocal};
    assert!(direct(vec![]));
    assert!(direct(vec![route("0.0.0.0/0", VirtualAppliance)]));
    assert!(direct(vec![route("10.0.0.0/8", VirtualAppliance)]));
    assert!(direct(vec![route("192.168.7.0/24", VirtualAppliance)]));
    assert!(direct(vec![route("10.0.2.0/24", VnetLocal)]));
    assert!(!direct(vec![route("10.0.2.0/24", VirtualAppliance)]));
    assert!(!direct(vec![route("10.0.2.7/32", NextHopType::None)]));
    assert!(!direct(vec![route("10.0.0.0/16", VirtualAppliance)]));
    assert!(!direct(vec![route("10.0.0.0/16", Internet)]));
}

#[test]
fn contract_nsgs() {
    let compiled = compile(&contract(), "node-1").unwrap();
    let nsgs = &compiled.nsgs;
    assert_eq!(nsgs.classifiers.len(), 4);
    let verdict = |classifier, src, dst, proto, sport, dport| {
        let rule = nsgs
            .lookup(classifier, ip(src), ip(dst), proto, sport, dport)
            .unwrap();
        let meta = nsgs.rule(classifier, rule).unwrap();
        (meta.name.clone(), meta.access)
    };
    let allow = |name: &str| (name.to_string(), Access::Allow);
    let deny = |name: &str| (name.to_string(), Access::Deny);
    // apps-nsg inbound (classifier 1).
    assert_eq!(
        verdict(1, "8.8.8.8", "10.0.2.10", TCP, 40000, 80),
        allow("allow-web-from-internet")
    );
    assert_eq!(
        verdict(1, "8.8.8.8", "10.0.2.10", TCP, 40000, 8080),
        allow("allow-web-from-internet")
    );
    assert_eq!(
        verdict(1, "8.8.8.8", "10.0.2.10", TCP, 40000, 8081),
        deny("DenyAllInBound")
    );
    assert_eq!(
        verdict(1, "8.8.8.8", "10.0.2.10", UDP, 40000, 80),
        deny("DenyAllInBound")
    );
    assert_eq!(
        verdict(1, "8.8.8.8", "10.0.2.10", ICMP, 0, 0),
        deny("DenyAllInBound")
    );
    assert_eq!(
        verdict(1, "10.0.0.4", "10.0.2.10", TCP, 40000, 22),
        allow("AllowVnetInBound")
    );
    assert_eq!(
        verdict(1, "192.168.50.7", "10.0.2.10", ICMP, 0, 0),
        allow("AllowVnetInBound")
    );
    assert_eq!(
        verdict(1, "168.63.129.16", "10.0.2.10", TCP, 40000, 22),
        allow("AllowAzureLoadBalancerInBound")
    );
    // apps-nsg outbound (classifier 2).
    assert_eq!(
        verdict(2, "10.0.2.10", "1.2.3.4", TCP, 40000, 25),
        deny("deny-smtp-out")
    );
    assert_eq!(
        verdict(2, "10.0.2.10", "10.0.1.10", TCP, 40000, 25),
        deny("deny-smtp-out")
    );
    assert_eq!(
        verdict(2, "10.0.2.10", "1.2.3.4", TCP, 40000, 443),
        allow("AllowInternetOutBound")
    );
    assert_eq!(
        verdict(2, "10.0.2.10", "10.0.1.10", UDP, 40000, 53),
        allow("AllowVnetOutBound")
    );
    // aci-nsg inbound (classifier 3).
    assert_eq!(
        verdict(3, "10.0.2.5", "10.0.1.10", TCP, 40000, 8080),
        allow("api-from-apps-only")
    );
    assert_eq!(
        verdict(3, "10.0.0.4", "10.0.1.10", TCP, 40000, 8080),
        deny("deny-rest-of-vnet")
    );
    assert_eq!(
        verdict(3, "10.0.2.5", "10.0.1.10", ICMP, 0, 0),
        deny("deny-rest-of-vnet")
    );
    assert_eq!(
        verdict(3, "8.8.8.8", "10.0.1.10", TCP, 40000, 8080),
        deny("DenyAllInBound")
    );
    // Unknown classifier ids.
    assert_eq!(
        nsgs.lookup(0, ip("1.1.1.1"), ip("1.1.1.1"), TCP, 1, 1),
        None
    );
    assert_eq!(
        nsgs.lookup(5, ip("1.1.1.1"), ip("1.1.1.1"), TCP, 1, 1),
        None
    );

    let aci_in = nsgs.classifier(3).unwrap();
    assert_eq!(
        (aci_in.nsg_id, aci_in.nsg_name.as_str(), aci_in.direction),
        (2, "aci-nsg", Direction::Inbound)
    );
    let rules: Vec<(&str, u32, bool)> = aci_in
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.priority, r.is_default))
        .collect();
    assert_eq!(
        rules,
        [
            ("api-from-apps-only", 100, false),
            ("deny-rest-of-vnet", 4000, false),
            ("AllowVnetInBound", 65000, true),
            ("AllowAzureLoadBalancerInBound", 65001, true),
            ("DenyAllInBound", 65500, true),
        ]
    );
    // Closed tables always hold the /0 entries and one entry per protocol class.
    assert!(aci_in.src_addr.iter().any(|e| e.prefix.prefix_len() == 0));
    assert!(aci_in.dst_port.iter().any(|e| e.prefix == PortPrefix::ANY));
    assert_eq!(aci_in.proto.len(), ProtoClass::ALL.len());
}

#[test]
fn compile_refuses_unknown_nodes_and_invalid_specs() {
    let error = compile(&contract(), "node-9").unwrap_err().to_string();
    assert!(
        error.contains("no node named \"node-9\" in the spec (nodes: node-1)"),
        "{error}"
    );
    let mut spec = contract();
    spec.nodes[0].max_pods = 1;
    let error = compile(&spec, "node-1").unwrap_err().to_string();
    assert!(
        error.contains("nodes[0].maxPods: 1 is outside 10..=250"),
        "{error}"
    );
}

#[test]
fn groups_pinned_to_another_node_are_left_out() {
    let mut spec = contract();
    let mut node = spec.nodes[0].clone();
    node.name = "node-2".into();
    node.primary_ip_address = ip("10.0.0.5");
    node.secondary_ip_addresses = vec![
        "10.0.1.41-10.0.1.60".parse().unwrap(),
        "10.0.2.251-10.0.2.254".parse().unwrap(),
    ];
    spec.nodes.push(node);
    let compiled = compile(&spec, "node-2").unwrap();
    let names: Vec<&str> = compiled
        .container_groups
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(names, ["web"], "api is pinned to node-1's pool");
    assert_eq!(compiled.node.primary_subnet_id, 1);
}

#[test]
fn extreme_values_neither_panic_nor_pass() {
    let mut spec = contract();
    spec.virtual_network
        .address_space
        .push(net("255.255.255.255/32"));
    spec.virtual_network.subnets[0].address_prefix = net("255.255.255.255/32");
    spec.virtual_network.subnets[1].route_table = Some("missing".into());
    spec.nodes[0].primary_ip_address = ip("255.255.255.255");
    spec.nodes[0]
        .secondary_ip_addresses
        .push("255.255.255.255-0.0.0.0".parse().unwrap());
    spec.nodes[0]
        .secondary_ip_addresses
        .push("0.0.0.0/0".parse().unwrap());
    spec.nodes[0].max_pods = u32::MAX;
    spec.outbound_nat.port_range = PortRange {
        first: 65535,
        last: 0,
    };
    spec.outbound_nat.idle_timeout_in_minutes = u32::MAX;
    let rule = &mut spec.network_security_groups[0].security_rules[0];
    rule.priority = u32::MAX;
    rule.source_port_ranges = vec![PortRange { first: 9, last: 1 }];
    rule.destination_address_prefixes.clear();
    assert!(!crate::spec::validate(&spec).is_empty());
    assert!(compile(&spec, "node-1").is_err());
    let compiled = compile_valid(&spec, "node-1").unwrap();
    assert_eq!(
        compiled.subnet(2).unwrap().route_table_id,
        0,
        "a dangling reference is none"
    );
    // The rule with an impossible port range and no destination matches nothing.
    let first = compiled
        .nsgs
        .lookup(1, ip("8.8.8.8"), ip("10.0.2.9"), TCP, 5, 80)
        .unwrap();
    assert_eq!(compiled.nsgs.rule(1, first).unwrap().name, "DenyAllInBound");
}

#[test]
fn rule_bitmap_operations() {
    let mut bitmap = RuleBitmap::EMPTY;
    assert!(bitmap.is_empty());
    assert_eq!(bitmap.lowest(), None);
    bitmap.insert(1023);
    bitmap.insert(64);
    assert_eq!(bitmap.lowest(), Some(64));
    assert!(bitmap.contains(1023) && !bitmap.contains(63) && !bitmap.contains(5000));
    let mut other = RuleBitmap::EMPTY;
    other.insert(1023);
    assert_eq!(bitmap.intersection(&other).lowest(), Some(1023));
    other.union_with(&bitmap);
    assert_eq!(other, bitmap);
    assert_eq!(format!("{bitmap:?}"), "{64, 1023}");
}

/// The contract example with `vnet`'s address spaces and `nsgs` in place of its own, compiled
/// for node-1 by the production path (`compile_valid`: the spec need not be valid, the tables
/// follow it literally), so that service tags and classifiers are built as the agent builds them.
fn compile_with(vnet: &VirtualNetwork, nsgs: Vec<NetworkSecurityGroup>) -> Compiled {
    static CONTRACT_SPEC: std::sync::OnceLock<Spec> = std::sync::OnceLock::new();
    let mut spec = CONTRACT_SPEC.get_or_init(contract).clone();
    spec.virtual_network.address_space = vnet.address_space.clone();
    spec.virtual_network.connected_address_spaces = vnet.connected_address_spaces.clone();
    spec.network_security_groups = nsgs;
    compile_valid(&spec, "node-1").expect("compiles")
}

/// The service tags for `vnet`, as [`compile_valid`] computes them.
fn tags_for(vnet: &VirtualNetwork) -> ServiceTags {
    let compiled = compile_with(vnet, vec![]);
    ServiceTags {
        virtual_network: compiled.vnet_prefixes,
        internet: compiled.internet_prefixes,
    }
}

fn vnet(address_space: Vec<Ipv4Net>, connected: Vec<Ipv4Net>) -> VirtualNetwork {
    VirtualNetwork {
        name: "v".into(),
        address_space,
        connected_address_spaces: connected,
        subnets: vec![],
    }
}

#[test]
fn a_full_nsg_spans_all_bitmap_words() {
    let template = contract().network_security_groups[0].security_rules[0].clone();
    let rules: Vec<SecurityRule> = (0..1000u16)
        .map(|i| SecurityRule {
            name: format!("r{i}"),
            priority: 100 + u32::from(i),
            direction: Direction::Inbound,
            source_address_prefixes: vec![AddressPrefix::Any],
            destination_port_ranges: vec![PortRange::single(1000 + i)],
            ..template.clone()
        })
        .collect();
    let nsg = NetworkSecurityGroup {
        name: "big".into(),
        security_rules: rules,
    };
    let vnet = vnet(vec![net("10.0.0.0/16")], vec![]);
    let classifier = compile_classifier(1, 1, &nsg, Direction::Inbound, &tags_for(&vnet)).unwrap();
    assert_eq!(classifier.rules.len(), 1003);
    let lookup = |dport| classifier.lookup(ip("8.8.8.8"), ip("10.0.0.9"), TCP, 5000, dport);
    assert_eq!(lookup(1999), Some(999));
    assert_eq!(lookup(1000), Some(0));
    assert_eq!(lookup(2000), Some(1002), "DenyAllInBound is the last bit");
    assert_eq!(classifier.rules[1002].name, "DenyAllInBound");

    let mut too_many = nsg.clone();
    too_many
        .security_rules
        .extend(too_many.security_rules.clone().into_iter().take(22));
    let error =
        compile_classifier(1, 1, &too_many, Direction::Inbound, &tags_for(&vnet)).unwrap_err();
    assert!(error.to_string().contains("1025 Inbound rules"), "{error}");
}

#[test]
fn default_rules_are_azures() {
    let names = |direction| -> Vec<(String, u32, Access)> {
        default_rules(direction)
            .into_iter()
            .map(|r| (r.name, r.priority, r.access))
            .collect()
    };
    assert_eq!(
        names(Direction::Inbound),
        [
            ("AllowVnetInBound".to_string(), 65000, Access::Allow),
            (
                "AllowAzureLoadBalancerInBound".to_string(),
                65001,
                Access::Allow
            ),
            ("DenyAllInBound".to_string(), 65500, Access::Deny),
        ]
    );
    assert_eq!(
        names(Direction::Outbound),
        [
            ("AllowVnetOutBound".to_string(), 65000, Access::Allow),
            ("AllowInternetOutBound".to_string(), 65001, Access::Allow),
            ("DenyAllOutBound".to_string(), 65500, Access::Deny),
        ]
    );
}

// Property tests.

#[path = "strategies.rs"]
mod strategies;
use strategies::*;

proptest! {
    // XorShift: the default ChaCha generator dominates the run time in debug builds.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        rng_algorithm: prop::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// The compiled classifier picks the same rule as the reference evaluator, and the AND of
    /// its lookups is exactly the set of rules the packet matches.
    #[test]
    fn classifier_agrees_with_reference(
        vnet in vnet_strategy(),
        nsg in nsg_strategy(),
        packets in prop::collection::vec(packet(), 16),
    ) {
        let compiled = compile_with(&vnet, vec![nsg.clone()]);
        for direction in [Direction::Inbound, Direction::Outbound] {
            let id = NsgTables::classifier_id(1, direction);
            let classifier = compiled.nsgs.classifiers.iter().find(|c| c.id == id).expect("compiled");
            let mut ordered: Vec<SecurityRule> =
                nsg.security_rules.iter().filter(|r| r.direction == direction).cloned().collect();
            ordered.sort_by_key(|r| r.priority);
            ordered.extend(default_rules(direction));
            prop_assert_eq!(classifier.rules.len(), ordered.len());
            for p in &packets {
                let index = classifier.lookup(p.src, p.dst, p.protocol, p.src_port, p.dst_port);
                let decided = reference::evaluate_nsg(&nsg, direction, &vnet, p);
                let rule = &classifier.rules[index.expect("DenyAll always matches")];
                prop_assert_eq!(
                    (&rule.name, rule.priority, rule.access),
                    (&decided.rule, decided.priority, decided.access),
                    "{:?} {:?}", direction, p
                );
                let matched = classifier.matching_rules(p.src, p.dst, p.protocol, p.src_port, p.dst_port).unwrap();
                for (i, rule) in ordered.iter().enumerate() {
                    prop_assert_eq!(matched.contains(i), reference::rule_matches(rule, &vnet, p), "rule {} {:?} {:?}", i, rule, p);
                }
            }
        }
    }

    /// Compiled route tables pick the route the reference picks.
    #[test]
    fn routes_agree_with_reference(
        vnet in vnet_strategy(),
        udrs in prop::collection::vec(
            (prefix(RULE_PREFIX_LENGTHS), prop::sample::select(&[
                NextHopType::VirtualAppliance, NextHopType::VnetLocal, NextHopType::Internet,
                NextHopType::None, NextHopType::VirtualNetworkGateway,
            ][..]), address()),
            0..=12,
        ),
        destinations in prop::collection::vec(address(), 16),
    ) {
        let mut seen = std::collections::HashSet::new();
        let routes: Vec<Route> = udrs
            .into_iter()
            .filter(|(prefix, _, _)| seen.insert(*prefix))
            .enumerate()
            .map(|(i, (address_prefix, next_hop_type, hop))| Route {
                name: format!("u{i}"),
                address_prefix,
                next_hop_type,
                next_hop_ip_address: (next_hop_type == NextHopType::VirtualAppliance).then_some(hop),
            })
            .collect();
        let table = RouteTable { name: "t".into(), routes };
        let compiled = routes::compile_route_tables(&vnet, std::slice::from_ref(&table));
        let any = destinations[0];
        for dst in destinations {
            for (id, table) in [(0, None), (1, Some(&table))] {
                let entry = compiled[id].lookup(dst).expect("0.0.0.0/0 always matches");
                let expected = reference::next_hop(&vnet, table, dst);
                prop_assert_eq!((entry.prefix, entry.next_hop.kind, entry.next_hop.ip), expected, "table {} dst {}", id, dst);
                // A table said to route the VNet locally does so for every address of it
                // (the dataplane then delivers to a local pod without a lookup).
                if compiled[id].vnet_direct && vnet.address_space.iter().any(|s| s.contains(&dst)) {
                    prop_assert_eq!(expected.1, NextHopType::VnetLocal, "table {} dst {}", id, dst);
                }
            }
            for space in &vnet.address_space {
                // Probes inside the address space, where random ones rarely fall.
                for probe in [space.network(), space.broadcast(), any] {
                    let dst = Ipv4Addr::from(
                        u32::from(space.network()) | (u32::from(probe) & !u32::from(space.netmask())),
                    );
                    let expected = reference::next_hop(&vnet, Some(&table), dst);
                    if compiled[1].vnet_direct {
                        prop_assert_eq!(expected.1, NextHopType::VnetLocal, "dst {}", dst);
                    }
                }
            }
        }
    }

    /// `Internet` is exactly the complement of `VirtualNetwork`, with no overlaps.
    #[test]
    fn internet_is_the_complement(vnet in vnet_strategy(), probes in prop::collection::vec(address(), 32)) {
        let tags = tags_for(&vnet);
        for addr in probes {
            let inside = tags.virtual_network.iter().filter(|n| n.contains(&addr)).count();
            let outside = tags.internet.iter().filter(|n| n.contains(&addr)).count();
            prop_assert_eq!(inside + outside, 1, "{}", addr);
        }
    }
}
