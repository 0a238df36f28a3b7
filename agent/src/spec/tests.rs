//! Parse and validation tests: one small defect per test, asserting the exact path and a
//! fragment of the message.

use super::*;

const CONTRACT: &str = include_str!("../../../examples/contract.yaml");
const MINIMAL: &str = include_str!("../../../examples/minimal.yaml");
const ACI_JSON: &str = include_str!("../../../examples/aci.json");

fn contract() -> Spec {
    parse_str(CONTRACT).unwrap_or_else(|problems| panic!("{}", Problems(&problems)))
}

/// The contract example with one textual edit.
fn edited(old: &str, new: &str) -> String {
    assert!(
        CONTRACT.contains(old),
        "the contract example has no {old:?}"
    );
    CONTRACT.replacen(old, new, 1)
}

fn parse_problems(text: &str) -> Vec<Problem> {
    match parse_str(text) {
        Ok(spec) => panic!("parsed, expected problems: {spec:#?}"),
        Err(problems) => problems,
    }
}

/// Validation problems of the contract example after `edit`.
fn problems_after(edit: impl FnOnce(&mut Spec)) -> Vec<Problem> {
    let mut spec = contract();
    edit(&mut spec);
    validate(&spec)
}

#[track_caller]
fn assert_problem(problems: &[Problem], path: &str, fragment: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.path == path && p.message.contains(fragment)),
        "expected `{path}: ...{fragment}...` among:\n{}",
        Problems(problems)
    );
}

#[track_caller]
fn assert_only_problem(problems: &[Problem], path: &str, fragment: &str) {
    assert_problem(problems, path, fragment);
    assert_eq!(
        problems.len(),
        1,
        "expected one problem, got:\n{}",
        Problems(problems)
    );
}

fn rule_mut(spec: &mut Spec, nsg: usize, rule: usize) -> &mut SecurityRule {
    &mut spec.network_security_groups[nsg].security_rules[rule]
}

// The examples.

#[test]
fn examples_are_valid() {
    for (name, text) in [
        ("contract", CONTRACT),
        ("minimal", MINIMAL),
        ("aci.json", ACI_JSON),
    ] {
        let spec = parse_str(text).unwrap_or_else(|p| panic!("{name}:\n{}", Problems(&p)));
        let problems = validate(&spec);
        assert!(problems.is_empty(), "{name}:\n{}", Problems(&problems));
    }
}

#[test]
fn every_example_file_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            load_file(&path).unwrap_or_else(|p| panic!("{}:\n{}", path.display(), Problems(&p)));
            seen += 1;
        }
    }
    assert!(seen >= 3);
}

#[test]
fn contract_example_reads_as_written() {
    let spec = contract();
    assert_eq!(spec.api_version, "vnetd/v1");
    let vnet = &spec.virtual_network;
    assert_eq!(vnet.address_space, vec!["10.0.0.0/16".parse().unwrap()]);
    assert_eq!(vnet.connected_address_spaces.len(), 2);
    assert_eq!(
        vnet.subnets[1].delegation,
        Some(Delegation::ContainerInstance)
    );
    assert_eq!(vnet.subnets[1].route_table.as_deref(), Some("via-firewall"));
    let rule = &spec.network_security_groups[0].security_rules[0];
    assert_eq!(
        rule.source_address_prefixes,
        vec![AddressPrefix::Tag(ServiceTag::Internet)]
    );
    assert_eq!(
        rule.destination_port_ranges,
        vec![
            PortRange::single(80),
            PortRange {
                first: 8000,
                last: 8080
            }
        ]
    );
    assert_eq!(rule.protocol, Protocol::Tcp);
    let node = &spec.nodes[0];
    assert_eq!(node.secondary_ip_addresses.len(), 2);
    assert_eq!(node.max_pods, 30);
    assert_eq!(
        spec.outbound_nat.port_range,
        PortRange {
            first: 32768,
            last: 65535
        }
    );
    assert_eq!(
        spec.outbound_nat.non_masquerade_cidrs,
        vec!["172.16.0.0/12".parse().unwrap()]
    );
    let api = &spec.container_groups[0].properties;
    assert_eq!(api.os_type, Some(OsType::Linux));
    assert_eq!(
        api.containers[1].properties.ports,
        vec![Port {
            protocol: TransportProtocol::Tcp,
            port: 2020
        }]
    );
    let web = spec.container_groups[1]
        .properties
        .ip_address
        .as_ref()
        .unwrap();
    assert_eq!(web.kind, IpAddressType::Public);
    assert_eq!(web.dns_name_label.as_deref(), Some("web"));
}

#[test]
fn serialized_spec_reads_back_the_same() {
    for text in [CONTRACT, MINIMAL, ACI_JSON] {
        let spec = parse_str(text).unwrap();
        let json = serde_json::to_string_pretty(&spec).unwrap();
        let again = parse_str(&json).unwrap_or_else(|p| panic!("{json}\n{}", Problems(&p)));
        assert_eq!(spec, again);
        let via_serde: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(spec, via_serde);
    }
}

#[test]
fn load_file_reports_unreadable_files() {
    let problems = load_file(std::path::Path::new("/nonexistent/spec.yaml")).unwrap_err();
    assert_only_problem(&problems, "/nonexistent/spec.yaml", "cannot read");
}

#[test]
fn problem_displays_as_path_colon_message() {
    let problem = Problem::new("nodes[0].maxPods", "5 is outside 10..=250");
    assert_eq!(
        problem.to_string(),
        "nodes[0].maxPods: 5 is outside 10..=250"
    );
}

// Parsing.

#[test]
fn unknown_field_suggests_the_close_one() {
    // The field it was taken for is not reported missing on top.
    let problems = parse_problems(&edited("primaryIpAddress:", "primaryIpAdress:"));
    assert_eq!(
        problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec!["nodes[0].primaryIpAdress: unknown field, did you mean primaryIpAddress?"]
    );
}

#[test]
fn unknown_field_without_a_close_one_lists_the_known() {
    let problems = parse_problems(&edited("    maxPods: 30", "    maxPods: 30\n    zone: 1"));
    assert_only_problem(
        &problems,
        "nodes[0].zone",
        "unknown field (known: name, interface",
    );
}

#[test]
fn arm_properties_wrapper_gets_a_hint() {
    let problems = parse_problems(&edited(
        "      - name: deny-smtp-out\n",
        "      - name: deny-smtp-out\n        properties: {}\n",
    ));
    assert_only_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[1].properties",
        "without ARM's properties",
    );
}

#[test]
fn aci_fields_the_dataplane_does_not_use_are_accepted() {
    let text = edited(
        "      osType: Linux\n      subnetIds: [{ id: aci }]",
        "      osType: Linux\n      restartPolicy: Always\n      sku: Standard\n      volumes: [{ name: v, emptyDir: {} }]\n      imageRegistryCredentials: [{ server: r, username: u }]\n      subnetIds: [{ id: aci, name: aci }]",
    )
    .replacen(
        "properties: { image: api, ports: [{ port: 8080 }] }",
        "properties: { image: api, command: [run], environmentVariables: [{ name: A, value: b }], resources: { requests: { cpu: 1, memoryInGB: 1.5 } }, ports: [{ port: 8080, protocol: TCP }] }",
        1,
    )
    .replacen("  - name: api ", "  - type: Microsoft.ContainerInstance/containerGroups\n    tags: { team: x }\n    name: api ", 1);
    let spec = parse_str(&text).unwrap_or_else(|p| panic!("{}", Problems(&p)));
    assert!(validate(&spec).is_empty());
    assert_eq!(spec, contract());
}

#[test]
fn missing_and_mistyped_fields() {
    let problems = parse_problems(&edited("        priority: 200\n", "").replacen(
        "priority: 100",
        "priority: \"100\"",
        1,
    ));
    assert_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[0].priority",
        "expected an integer, found the string \"100\"",
    );
    assert_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[1].priority",
        "missing",
    );
    let problems = parse_problems(&edited(
        "addressSpace: [10.0.0.0/16]",
        "addressSpace: 10.0.0.0/16",
    ));
    assert_only_problem(
        &problems,
        "virtualNetwork.addressSpace",
        "expected a list, found the string \"10.0.0.0/16\"",
    );
    let problems = parse_problems(&edited("name: prod-vnet", "name: 42"));
    assert_only_problem(
        &problems,
        "virtualNetwork.name",
        "expected a string, found the integer 42 (quote it)",
    );
}

#[test]
fn keywords_outside_their_sets() {
    let text = edited("direction: Inbound", "direction: Inbund")
        .replacen("access: Deny", "access: Block", 1)
        .replacen("protocol: Tcp", "protocol: Gre", 1)
        .replacen("nextHopType: VirtualAppliance", "nextHopType: Appliance", 1);
    let problems = parse_problems(&text);
    let rules = "networkSecurityGroups[0].securityRules";
    assert_problem(
        &problems,
        &format!("{rules}[0].direction"),
        "\"Inbund\" is not one of Inbound or Outbound, did you mean Inbound?",
    );
    assert_problem(
        &problems,
        &format!("{rules}[1].access"),
        "\"Block\" is not one of Allow or Deny",
    );
    assert_problem(
        &problems,
        &format!("{rules}[0].protocol"),
        "\"Gre\" is not one of Tcp, Udp, Icmp, Esp, Ah or *",
    );
    assert_problem(
        &problems,
        "routeTables[0].routes[0].nextHopType",
        "\"Appliance\" is not one of VirtualAppliance",
    );
    assert_eq!(problems.len(), 4, "{}", Problems(&problems));
}

/// An unknown keyword does not hide the rest: the other values are still validated (issue 7,
/// item 12: a bad `nextHopType` used to hide every validation problem in the file).
#[test]
fn an_unknown_keyword_does_not_hide_validation_problems() {
    let text = edited("nextHopType: VirtualAppliance", "nextHopType: Appliance").replacen(
        "maxPods: 30",
        "maxPods: 500",
        1,
    );
    let problems = check_str(&text).unwrap_err();
    assert_problem(
        &problems,
        "routeTables[0].routes[0].nextHopType",
        "\"Appliance\" is not one of",
    );
    assert_problem(&problems, "nodes[0].maxPods", "500 is outside 10..=250");
    // The route with the unknown keyword is not validated with a stand-in value: no problem
    // about its nextHopIpAddress, which is right for the type it meant.
    assert_eq!(problems.len(), 2, "{}", Problems(&problems));
}

/// A problem within an object that did not parse is not reported twice, and the parse
/// problems come first.
#[test]
fn keyword_problems_come_before_validation_problems() {
    let text = edited("direction: Inbound", "direction: Sideways").replacen(
        "maxPods: 30",
        "maxPods: 5",
        1,
    );
    let problems = check_str(&text).unwrap_err();
    assert_eq!(problems.len(), 2, "{}", Problems(&problems));
    assert!(
        problems[0].path.ends_with(".direction"),
        "{}",
        Problems(&problems)
    );
    assert_eq!(problems[1].path, "nodes[0].maxPods");
}

#[test]
fn keywords_are_case_insensitive_as_in_azure() {
    let text = edited("direction: Inbound", "direction: inbound").replacen(
        "protocol: Tcp",
        "protocol: TCP",
        1,
    );
    assert_eq!(parse_str(&text).unwrap(), contract());
}

#[test]
fn address_prefixes() {
    let rule = "networkSecurityGroups[1].securityRules[0]";
    for (bad, fragment) in [
        (
            "10.0.2.1/23",
            "10.0.2.1/23 has host bits set: did you mean 10.0.2.0/23?",
        ),
        ("10.0.2.0/33", "is not an IPv4 address or CIDR"),
        (
            "VirtualNetwrok",
            "is not \"*\", an IPv4 address, a CIDR or a service tag",
        ),
        ("fd00::/8", "IPv6 is not supported"),
    ] {
        let problems = parse_problems(&edited(
            "sourceAddressPrefixes: [10.0.2.0/23]",
            &format!("sourceAddressPrefixes: [\"{bad}\"]"),
        ));
        assert_only_problem(
            &problems,
            &format!("{rule}.sourceAddressPrefixes[0]"),
            fragment,
        );
    }
    // A bare address is a /32.
    let spec = parse_str(&edited(
        "sourceAddressPrefixes: [10.0.2.0/23]",
        "sourceAddressPrefix: 10.0.2.7",
    ))
    .unwrap();
    assert_eq!(
        spec.network_security_groups[1].security_rules[0].source_address_prefixes,
        vec![AddressPrefix::Prefix("10.0.2.7/32".parse().unwrap())]
    );
}

#[test]
fn service_tags_only_in_the_singular_form() {
    let problems = parse_problems(&edited(
        "sourceAddressPrefixes: [10.0.2.0/23]",
        "sourceAddressPrefixes: [10.0.2.0/23, VirtualNetwork]",
    ));
    assert_only_problem(
        &problems,
        "networkSecurityGroups[1].securityRules[0].sourceAddressPrefixes[1]",
        "VirtualNetwork is only allowed alone, in sourceAddressPrefix",
    );
}

#[test]
fn port_ranges() {
    let rule = "networkSecurityGroups[0].securityRules[1]";
    for (bad, fragment) in [
        (
            "\"80, 443\"",
            "\"80, 443\" is not a port range: give several ports as a list",
        ),
        ("\"443-80\"", "\"443-80\" is reversed: write 80-443"),
        ("\"65536\"", "port 65536 is above 65535"),
        ("70000", "port 70000 is outside 0..=65535"),
        ("\"80-\"", "expected \"*\", N or N-M"),
        ("\"any\"", "expected \"*\", N or N-M"),
    ] {
        let problems = parse_problems(&edited(
            "destinationPortRange: \"25\"",
            &format!("destinationPortRange: {bad}"),
        ));
        assert_only_problem(&problems, &format!("{rule}.destinationPortRange"), fragment);
    }
    let spec = parse_str(&edited(
        "destinationPortRange: \"25\"",
        "destinationPortRange: 25",
    ))
    .unwrap();
    assert_eq!(spec, contract());
}

#[test]
fn common_yaml_slips_get_a_hint() {
    let problems = parse_problems(&edited("sourcePortRange: \"*\"", "sourcePortRange: *"));
    assert_eq!(problems.len(), 1);
    assert!(problems[0].path.starts_with("line 26, "), "{}", problems[0]);
    assert!(
        problems[0]
            .message
            .ends_with("(a bare * starts a YAML alias: write \"*\")")
    );
    let problems = parse_problems(&edited(
        "sourceAddressPrefix: Internet",
        "sourceAddressPrefix: [Internet, 192.0.2.0/24]",
    ));
    assert_only_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[0].sourceAddressPrefix",
        "expected one value, found a list (a list goes in sourceAddressPrefixes)",
    );
}

#[test]
fn singular_and_plural_both_given() {
    let problems = parse_problems(&edited(
        "destinationPortRange: \"25\"",
        "destinationPortRange: \"25\"\n        destinationPortRanges: [\"26\"]",
    ));
    assert_only_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[1].destinationPortRanges",
        "destinationPortRange is also given",
    );
}

#[test]
fn repeated_keys_are_refused() {
    let problems = parse_problems(&edited(
        "    maxPods: 30",
        "    maxPods: 30\n    maxPods: 40",
    ));
    assert_only_problem(&problems, "nodes[0].maxPods", "given more than once");
    let problems = parse_problems(r#"{"apiVersion": "vnetd/v1", "apiVersion": "vnetd/v1"}"#);
    assert_problem(&problems, "apiVersion", "given more than once");
}

#[test]
fn syntax_errors_have_a_position() {
    let problems = parse_problems("apiVersion: vnetd/v1\nvirtualNetwork: [\n");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].path.starts_with("line "), "{}", problems[0]);
    let problems = parse_problems("{\"apiVersion\": \"vnetd/v1\",\n }");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "line 2, column 2");
    assert!(
        !problems[0].message.contains(" at line "),
        "{}",
        problems[0]
    );
    let problems = parse_problems("- a\n- b\n");
    assert_only_problem(&problems, "(document)", "expected a mapping, found a list");
    let problems = parse_problems("# nothing\n");
    assert_only_problem(&problems, "(document)", "the document is empty");
}

#[test]
fn parse_reports_every_problem_at_once() {
    let text = edited("primaryIpAddress:", "primaryIpAdress:")
        .replacen("direction: Outbound", "direction: Out", 1)
        .replacen(
            "addressPrefix: 10.0.1.0/24",
            "addressPrefix: 10.0.1.1/24",
            1,
        )
        .replacen("osType: Linux", "osType: Linux\n      cpu: 2", 1);
    let problems = parse_problems(&text);
    assert_eq!(problems.len(), 4, "{}", Problems(&problems));
}

// Validation: the API version and the network.

#[test]
fn api_version() {
    let problems = problems_after(|s| s.api_version = "vnetd/v2".into());
    assert_only_problem(
        &problems,
        "apiVersion",
        "\"vnetd/v2\" is not supported, expected vnetd/v1",
    );
}

#[test]
fn overlapping_address_spaces() {
    let problems = problems_after(|s| {
        s.virtual_network
            .address_space
            .push("10.0.128.0/17".parse().unwrap());
        s.virtual_network
            .connected_address_spaces
            .push("10.1.2.0/24".parse().unwrap());
    });
    assert_problem(
        &problems,
        "virtualNetwork.addressSpace[1]",
        "10.0.128.0/17 overlaps virtualNetwork.addressSpace[0] (10.0.0.0/16)",
    );
    assert_problem(
        &problems,
        "virtualNetwork.connectedAddressSpaces[2]",
        "10.1.2.0/24 overlaps virtualNetwork.connectedAddressSpaces[0] (10.1.0.0/16)",
    );
    assert_eq!(problems.len(), 2, "{}", Problems(&problems));
}

#[test]
fn reserved_address_spaces() {
    let problems = problems_after(|s| {
        s.virtual_network
            .connected_address_spaces
            .push("169.254.0.0/16".parse().unwrap())
    });
    assert_only_problem(
        &problems,
        "virtualNetwork.connectedAddressSpaces[2]",
        "(link-local), which Azure reserves",
    );
}

#[test]
fn subnets_outside_overlapping_or_too_small() {
    let problems = problems_after(|s| {
        let subnets = &mut s.virtual_network.subnets;
        subnets[2].address_prefix = "10.0.1.128/25".parse().unwrap();
        let mut extra = subnets[0].clone();
        extra.name = "outside".into();
        extra.address_prefix = "10.5.0.0/24".parse().unwrap();
        subnets.push(extra);
        let mut tiny = subnets[0].clone();
        tiny.name = "tiny".into();
        tiny.address_prefix = "10.0.9.0/30".parse().unwrap();
        subnets.push(tiny);
    });
    assert_problem(
        &problems,
        "virtualNetwork.subnets[2].addressPrefix",
        "10.0.1.128/25 overlaps virtualNetwork.subnets[1] (aci, 10.0.1.0/24)",
    );
    assert_problem(
        &problems,
        "virtualNetwork.subnets[3].addressPrefix",
        "10.5.0.0/24 is outside the address space (10.0.0.0/16)",
    );
    assert_problem(
        &problems,
        "virtualNetwork.subnets[4].addressPrefix",
        "Azure's smallest subnet is a /29",
    );
}

#[test]
fn references_to_missing_names() {
    let problems = problems_after(|s| {
        s.virtual_network.subnets[1].network_security_group = Some("aci-ns".into());
        s.virtual_network.subnets[1].route_table = Some("elsewhere".into());
        s.container_groups[0].properties.subnet_ids[0].id = "acii".into();
    });
    assert_problem(
        &problems,
        "virtualNetwork.subnets[1].networkSecurityGroup",
        "no network security group named \"aci-ns\", did you mean aci-nsg?",
    );
    assert_problem(
        &problems,
        "virtualNetwork.subnets[1].routeTable",
        "no route table named \"elsewhere\"",
    );
    assert_problem(
        &problems,
        "containerGroups[0].properties.subnetIds[0].id",
        "no subnet named \"acii\", did you mean aci?",
    );
}

#[test]
fn references_ignore_case_like_azure() {
    let problems = problems_after(|s| {
        s.virtual_network.subnets[1].network_security_group = Some("ACI-NSG".into())
    });
    assert!(problems.is_empty(), "{}", Problems(&problems));
}

#[test]
fn duplicate_names() {
    let problems = problems_after(|s| {
        s.virtual_network.subnets[2].name = "ACI".into();
        s.network_security_groups[1].name = "apps-nsg".into();
        rule_mut(s, 0, 1).name = "allow-web-from-internet".into();
        let table = s.route_tables[0].clone();
        s.route_tables.push(table);
        let node = s.nodes[0].clone();
        s.nodes.push(node);
        s.container_groups[1].name = "api".into();
        s.container_groups[1].properties.containers[0].name = "nginx".into();
        let container = s.container_groups[1].properties.containers[0].clone();
        s.container_groups[1].properties.containers.push(Container {
            properties: ContainerProperties { ports: vec![] },
            ..container
        });
    });
    assert_problem(
        &problems,
        "virtualNetwork.subnets[2].name",
        "\"ACI\" is already the name of virtualNetwork.subnets[1]",
    );
    assert_problem(
        &problems,
        "networkSecurityGroups[1].name",
        "is already the name of networkSecurityGroups[0]",
    );
    assert_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[1].name",
        "is already the name of networkSecurityGroups[0].securityRules[0]",
    );
    assert_problem(
        &problems,
        "routeTables[1].name",
        "is already the name of routeTables[0]",
    );
    assert_problem(
        &problems,
        "nodes[1].name",
        "is already the name of nodes[0]",
    );
    assert_problem(
        &problems,
        "containerGroups[1].name",
        "is already the name of containerGroups[0]",
    );
    assert_problem(
        &problems,
        "containerGroups[1].properties.containers[1].name",
        "is already the name of containerGroups[1].properties.containers[0]",
    );
}

// Validation: NSGs.

#[test]
fn priority_outside_range() {
    let problems = problems_after(|s| rule_mut(s, 0, 1).priority = 50);
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].to_string(),
        "networkSecurityGroups[0].securityRules[1].priority: 50 is outside 100..=4096"
    );
    let problems = parse_problems(&edited("priority: 4000", "priority: 99999999999"));
    assert_only_problem(
        &problems,
        "networkSecurityGroups[1].securityRules[1].priority",
        "99999999999 is outside 100..=4096",
    );
}

#[test]
fn duplicate_priority_names_both_rules() {
    let problems = problems_after(|s| {
        rule_mut(s, 1, 1).priority = 100;
        // Same priority in the other direction is fine.
        rule_mut(s, 0, 1).priority = 100;
    });
    assert_only_problem(
        &problems,
        "networkSecurityGroups[1].securityRules[1].priority",
        "rule \"deny-rest-of-vnet\" and rule \"api-from-apps-only\" (securityRules[0]) both have Inbound priority 100",
    );
}

#[test]
fn missing_source_or_destination() {
    let problems = problems_after(|s| {
        rule_mut(s, 0, 0).source_address_prefixes.clear();
        rule_mut(s, 0, 1).destination_port_ranges.clear();
    });
    assert_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[0].sourceAddressPrefix",
        "missing: give sourceAddressPrefix or sourceAddressPrefixes",
    );
    assert_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[1].destinationPortRange",
        "missing: give destinationPortRange or destinationPortRanges",
    );
    assert_eq!(problems.len(), 2);
    let problems = parse_problems(&edited(
        "destinationPortRange: \"25\"",
        "destinationPortRang: \"25\"",
    ));
    assert_only_problem(
        &problems,
        "networkSecurityGroups[0].securityRules[1].destinationPortRang",
        "unknown field, did you mean destinationPortRange?",
    );
}

#[test]
fn rule_names() {
    let problems = problems_after(|s| {
        rule_mut(s, 0, 0).name = "x".repeat(81);
        rule_mut(s, 0, 1).name = "deny smtp".into();
        rule_mut(s, 1, 0).name = "-leading".into();
        rule_mut(s, 1, 1).name = "trailing.".into();
    });
    for j in [0, 1] {
        assert_problem(
            &problems,
            &format!("networkSecurityGroups[0].securityRules[{j}].name"),
            "is not a valid name: use 1-80 letters",
        );
        assert_problem(
            &problems,
            &format!("networkSecurityGroups[1].securityRules[{j}].name"),
            "is not a valid name",
        );
    }
    assert_eq!(problems.len(), 4);
    assert!(azure_name_problem("ok_name-1.x_", 80).is_none());
    assert!(azure_name_problem(&"x".repeat(80), 80).is_none());
}

#[test]
fn too_many_rules() {
    let problems = problems_after(|s| {
        let template = s.network_security_groups[0].security_rules[0].clone();
        s.network_security_groups[0].security_rules = (0..1001)
            .map(|i| SecurityRule {
                name: format!("r{i}"),
                priority: 100 + i,
                direction: if i % 2 == 0 {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                ..template.clone()
            })
            .collect();
    });
    assert_only_problem(
        &problems,
        "networkSecurityGroups[0].securityRules",
        "1001 rules, more than the 1000 Azure allows",
    );
}

#[test]
fn too_many_prefixes() {
    let problems = problems_after(|s| {
        let rule = rule_mut(s, 0, 0);
        rule.source_address_prefixes = (0..4001u32)
            .map(|i| {
                AddressPrefix::Prefix(Ipv4Net::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)))
            })
            .collect();
    });
    assert_only_problem(
        &problems,
        "networkSecurityGroups[0].securityRules",
        "4001 source address prefixes, more than the 4000",
    );
}

// Validation: routes.

#[test]
fn next_hop_address_rules() {
    let problems = problems_after(|s| {
        let routes = &mut s.route_tables[0].routes;
        routes[0].next_hop_ip_address = None;
        routes.push(Route {
            name: "blackhole".into(),
            address_prefix: "10.9.0.0/16".parse().unwrap(),
            next_hop_type: NextHopType::None,
            next_hop_ip_address: Some("10.0.0.100".parse().unwrap()),
        });
        routes.push(Route {
            name: "same-prefix".into(),
            address_prefix: "10.9.0.0/16".parse().unwrap(),
            next_hop_type: NextHopType::Internet,
            next_hop_ip_address: None,
        });
        routes.push(Route {
            name: "into-aci".into(),
            address_prefix: "10.8.0.0/16".parse().unwrap(),
            next_hop_type: NextHopType::VirtualAppliance,
            next_hop_ip_address: Some("10.0.1.50".parse().unwrap()),
        });
    });
    let routes = "routeTables[0].routes";
    assert_problem(
        &problems,
        &format!("{routes}[0].nextHopIpAddress"),
        "missing: required when nextHopType is VirtualAppliance",
    );
    assert_problem(
        &problems,
        &format!("{routes}[1].nextHopIpAddress"),
        "only allowed when nextHopType is VirtualAppliance (it is None)",
    );
    assert_problem(
        &problems,
        &format!("{routes}[2].addressPrefix"),
        "10.9.0.0/16 is also the prefix of route \"blackhole\" (routes[1])",
    );
    assert_problem(
        &problems,
        &format!("{routes}[3].nextHopIpAddress"),
        "is in subnet aci, which is delegated",
    );
    assert_eq!(problems.len(), 4, "{}", Problems(&problems));
}

#[test]
fn too_many_routes_and_bad_prefixes() {
    let problems = problems_after(|s| {
        let template = s.route_tables[0].routes[0].clone();
        s.route_tables[0].routes = (0..401u32)
            .map(|i| Route {
                name: format!("r{i}"),
                address_prefix: Ipv4Net::new(std::net::Ipv4Addr::from(0x0b00_0000 + (i << 8)), 24)
                    .unwrap(),
                ..template.clone()
            })
            .collect();
    });
    assert_only_problem(
        &problems,
        "routeTables[0].routes",
        "401 routes, more than the 400 Azure allows",
    );
    let problems = parse_problems(&edited(
        "addressPrefix: 0.0.0.0/0",
        "addressPrefix: 0.0.0.1/0",
    ));
    assert_only_problem(
        &problems,
        "routeTables[0].routes[0].addressPrefix",
        "has host bits set: did you mean 0.0.0.0/0?",
    );
}

// Validation: nodes.

#[test]
fn primary_ip_checks() {
    let problems = problems_after(|s| {
        let node = s.nodes[0].clone();
        s.nodes[0].primary_ip_address = "10.0.9.4".parse().unwrap();
        s.nodes.push(Node {
            name: "node-2".into(),
            primary_ip_address: "10.0.1.5".parse().unwrap(),
            secondary_ip_addresses: vec![],
            ..node.clone()
        });
        s.nodes.push(Node {
            name: "node-3".into(),
            primary_ip_address: "10.0.0.1".parse().unwrap(),
            secondary_ip_addresses: vec![],
            ..node.clone()
        });
        s.nodes.push(Node {
            name: "node-4".into(),
            primary_ip_address: "10.0.2.20".parse().unwrap(),
            secondary_ip_addresses: vec![],
            ..node
        });
    });
    assert_problem(
        &problems,
        "nodes[0].primaryIpAddress",
        "10.0.9.4 is in no subnet",
    );
    assert_problem(
        &problems,
        "nodes[1].primaryIpAddress",
        "10.0.1.5 is in subnet aci, which is delegated to Microsoft.ContainerInstance/containerGroups and holds container groups only",
    );
    assert_problem(
        &problems,
        "nodes[2].primaryIpAddress",
        "10.0.0.1, which Azure reserves in subnet nodes",
    );
    assert_problem(
        &problems,
        "nodes[0].secondaryIpAddresses[1]",
        "includes nodes[3] (node-4) primaryIpAddress 10.0.2.20",
    );
}

#[test]
fn pool_range_checks() {
    let problems = problems_after(|s| {
        let pool = &mut s.nodes[0].secondary_ip_addresses;
        pool.push("10.0.2.50-10.0.2.40".parse().unwrap());
        pool.push("10.0.9.1-10.0.9.9".parse().unwrap());
        pool.push("10.0.1.250-10.0.2.20".parse().unwrap());
        pool.push("10.0.0.0/28".parse().unwrap());
        pool.push("10.0.1.20-10.0.1.21".parse().unwrap());
        let mut other = s.nodes[0].clone();
        other.name = "node-2".into();
        other.primary_ip_address = "10.0.0.5".parse().unwrap();
        other.secondary_ip_addresses = vec!["10.0.2.100-10.0.2.110".parse().unwrap()];
        s.nodes.push(other);
    });
    let pool = "nodes[0].secondaryIpAddresses";
    assert_problem(
        &problems,
        &format!("{pool}[2]"),
        "10.0.2.50-10.0.2.40 is reversed: write 10.0.2.40-10.0.2.50",
    );
    assert_problem(
        &problems,
        &format!("{pool}[3]"),
        "10.0.9.1-10.0.9.9 is in no subnet",
    );
    assert_problem(
        &problems,
        &format!("{pool}[4]"),
        "crosses the edge of subnet aci (10.0.1.0/24)",
    );
    assert_problem(
        &problems,
        &format!("{pool}[5]"),
        "includes 10.0.0.0, which Azure reserves in subnet nodes",
    );
    assert_problem(
        &problems,
        &format!("{pool}[5]"),
        "includes this node's primaryIpAddress 10.0.0.4",
    );
    assert_problem(
        &problems,
        &format!("{pool}[6]"),
        "overlaps 10.0.1.10-10.0.1.40, secondaryIpAddresses[0] of the same node",
    );
    assert_problem(
        &problems,
        "nodes[1].secondaryIpAddresses[0]",
        "overlaps 10.0.2.10-10.0.2.250, nodes[0].secondaryIpAddresses[1] (node-1's pool)",
    );
}

#[test]
fn max_pods_range_and_pinned_groups() {
    let problems = problems_after(|s| s.nodes[0].max_pods = 5);
    assert_only_problem(&problems, "nodes[0].maxPods", "5 is outside 10..=250");
    let problems = problems_after(|s| {
        s.nodes[0].max_pods = 10;
        let template = s.container_groups[0].clone();
        for i in 0..10u8 {
            let mut group = template.clone();
            group.name = format!("extra-{i}");
            group.properties.ip_address.as_mut().unwrap().ip =
                Some(std::net::Ipv4Addr::new(10, 0, 1, 20 + i));
            s.container_groups.push(group);
        }
    });
    assert_only_problem(
        &problems,
        "nodes[0].maxPods",
        "11 container groups have an ip in this node's pool, more than its maxPods (10)",
    );
}

#[test]
fn node_and_interface_names() {
    let problems = problems_after(|s| {
        s.nodes[0].name = "node 1".into();
        s.nodes[0].interface = "an-interface-name-too-long".into();
    });
    assert_problem(&problems, "nodes[0].name", "is not a valid node name");
    assert_problem(
        &problems,
        "nodes[0].interface",
        "is not a Linux interface name",
    );
}

#[test]
fn outbound_nat_ranges() {
    let problems = problems_after(|s| {
        s.outbound_nat.port_range = PortRange {
            first: 100,
            last: 200,
        };
        s.outbound_nat.idle_timeout_in_minutes = 121;
    });
    assert_problem(
        &problems,
        "outboundNat.portRange",
        "100-200 reaches below 1024",
    );
    assert_problem(
        &problems,
        "outboundNat.idleTimeoutInMinutes",
        "121 is outside 4..=120",
    );
}

// The Kubernetes network profile.

/// The contract example with a `networkProfile` of these YAML lines.
fn with_network_profile(lines: &str) -> String {
    format!("{}\nnetworkProfile:\n{lines}", CONTRACT.trim_end())
}

fn profile(service_cidr: Option<&str>, dns_service_ip: Option<&str>) -> Option<NetworkProfile> {
    Some(NetworkProfile {
        service_cidr: service_cidr.map(|c| c.parse().unwrap()),
        dns_service_ip: dns_service_ip.map(|ip| ip.parse().unwrap()),
    })
}

#[test]
fn network_profile_reads_aks_names() {
    let text = with_network_profile("  serviceCidr: 10.96.0.0/16\n  dnsServiceIP: 10.96.0.10\n");
    let spec = check_str(&text).unwrap_or_else(|p| panic!("{}", Problems(&p)));
    assert_eq!(
        spec.network_profile,
        profile(Some("10.96.0.0/16"), Some("10.96.0.10"))
    );
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["networkProfile"]["serviceCidr"], "10.96.0.0/16");
    assert_eq!(json["networkProfile"]["dnsServiceIP"], "10.96.0.10");
    assert_eq!(parse_str(&json.to_string()).unwrap(), spec);
    assert_eq!(contract().network_profile, None, "optional");
    let empty = check_str(&with_network_profile("  {}\n")).unwrap();
    assert_eq!(empty.network_profile, Some(NetworkProfile::default()));
}

#[test]
fn network_profile_field_problems_name_the_field() {
    let problems = parse_problems(&with_network_profile(
        "  serviceCidr: 10.96.0.1/16\n  dnsServiceIp: 10.96.0.10\n  podCidr: 10.244.0.0/16\n",
    ));
    assert_problem(
        &problems,
        "networkProfile.serviceCidr",
        "10.96.0.1/16 has host bits set: did you mean 10.96.0.0/16?",
    );
    assert_problem(
        &problems,
        "networkProfile.dnsServiceIp",
        "did you mean dnsServiceIP?",
    );
    assert_problem(&problems, "networkProfile.podCidr", "not from a pod CIDR");
    let problems = parse_problems(&with_network_profile(
        "  serviceCidr: 10.96.0.0/16\n  dnsServiceIP: ten\n  serviceCidrs: [10.96.0.0/16]\n",
    ));
    assert_problem(
        &problems,
        "networkProfile.dnsServiceIP",
        "\"ten\" is not an IPv4 address",
    );
    assert_problem(
        &problems,
        "networkProfile.serviceCidrs",
        "give the one IPv4 range in serviceCidr",
    );
    let problems = parse_problems(&with_network_profile("  serviceCidr: fd00::/108\n"));
    assert_only_problem(
        &problems,
        "networkProfile.serviceCidr",
        "IPv6 is not supported",
    );
}

#[test]
fn service_cidr_lies_outside_the_vnet() {
    let problems = problems_after(|s| s.network_profile = profile(Some("10.0.128.0/17"), None));
    assert_only_problem(
        &problems,
        "networkProfile.serviceCidr",
        "10.0.128.0/17 overlaps virtualNetwork.addressSpace[0] (10.0.0.0/16): the service range must lie outside",
    );
    let problems = problems_after(|s| s.network_profile = profile(Some("192.168.0.0/16"), None));
    assert_only_problem(
        &problems,
        "networkProfile.serviceCidr",
        "overlaps virtualNetwork.connectedAddressSpaces[1] (192.168.50.0/24)",
    );
    let problems = problems_after(|s| s.network_profile = profile(Some("169.254.0.0/20"), None));
    assert_only_problem(
        &problems,
        "networkProfile.serviceCidr",
        "overlaps 169.254.0.0/16 (link-local)",
    );
    // A subnet outside the address space is its own problem; the service range still names it.
    let problems = problems_after(|s| {
        s.virtual_network.subnets[0].address_prefix = "10.96.1.0/24".parse().unwrap();
        s.network_profile = profile(Some("10.96.0.0/16"), None);
    });
    assert_problem(
        &problems,
        "networkProfile.serviceCidr",
        "overlaps virtualNetwork.subnets[0]",
    );
}

#[test]
fn service_cidr_size_follows_kubernetes() {
    let problems = problems_after(|s| s.network_profile = profile(Some("96.0.0.0/11"), None));
    assert_only_problem(
        &problems,
        "networkProfile.serviceCidr",
        "96.0.0.0/11 is too large: Kubernetes allows at most a /12",
    );
    let problems = problems_after(|s| s.network_profile = profile(Some("10.96.0.0/31"), None));
    assert_only_problem(&problems, "networkProfile.serviceCidr", "is too small");
    for ok in ["10.96.0.0/12", "10.96.0.0/30"] {
        let problems = problems_after(|s| s.network_profile = profile(Some(ok), None));
        assert!(problems.is_empty(), "{ok}: {}", Problems(&problems));
    }
}

#[test]
fn a_public_address_is_not_a_cluster_ip() {
    let problems = problems_after(|s| s.network_profile = profile(Some("203.0.113.0/24"), None));
    assert_only_problem(
        &problems,
        "containerGroups[1].properties.ipAddress.ip",
        "203.0.113.20 is inside networkProfile.serviceCidr (203.0.113.0/24)",
    );
}

#[test]
fn dns_service_ip_is_a_cluster_ip_of_the_service_range() {
    let cases = [
        (
            "10.97.0.10",
            "10.97.0.10 is outside networkProfile.serviceCidr (10.96.0.0/16)",
        ),
        (
            "10.96.0.0",
            "10.96.0.0 is the network address of networkProfile.serviceCidr",
        ),
        ("10.96.255.255", "10.96.255.255 is the broadcast address"),
        (
            "10.96.0.1",
            "10.96.0.1 is the first address of networkProfile.serviceCidr (10.96.0.0/16), which Kubernetes gives the API server's Service (kubernetes.default): use another, e.g. 10.96.0.10",
        ),
    ];
    for (ip, message) in cases {
        let problems =
            problems_after(|s| s.network_profile = profile(Some("10.96.0.0/16"), Some(ip)));
        assert_only_problem(&problems, "networkProfile.dnsServiceIP", message);
    }
    let problems =
        problems_after(|s| s.network_profile = profile(Some("10.96.0.0/30"), Some("10.96.0.1")));
    assert_only_problem(&problems, "networkProfile.dnsServiceIP", "e.g. 10.96.0.2");
    let problems = problems_after(|s| s.network_profile = profile(None, Some("10.96.0.10")));
    assert_only_problem(
        &problems,
        "networkProfile.dnsServiceIP",
        "10.96.0.10 needs networkProfile.serviceCidr",
    );
    let problems =
        problems_after(|s| s.network_profile = profile(Some("10.96.0.0/16"), Some("10.96.0.10")));
    assert!(problems.is_empty(), "{}", Problems(&problems));
}

// Validation: container groups.

#[test]
fn exposed_port_must_be_declared() {
    let problems = problems_after(|s| {
        let ports = &mut s.container_groups[0]
            .properties
            .ip_address
            .as_mut()
            .unwrap()
            .ports;
        ports.push(Port {
            protocol: TransportProtocol::Tcp,
            port: 8081,
        });
        ports.push(Port {
            protocol: TransportProtocol::Udp,
            port: 8080,
        });
    });
    assert_problem(
        &problems,
        "containerGroups[0].properties.ipAddress.ports[1]",
        "TCP 8081 is not declared by any container",
    );
    assert_problem(
        &problems,
        "containerGroups[0].properties.ipAddress.ports[2]",
        "UDP 8080 is not declared by any container",
    );
    assert_eq!(problems.len(), 2);
}

#[test]
fn port_declared_by_two_containers() {
    let problems = problems_after(|s| {
        s.container_groups[0].properties.containers[1]
            .properties
            .ports[0]
            .port = 8080
    });
    assert_only_problem(
        &problems,
        "containerGroups[0].properties.containers[1].properties.ports[0]",
        "TCP 8080 is also declared by container \"api\" (containers[0])",
    );
}

#[test]
fn public_group_in_delegated_subnet() {
    let problems = problems_after(|s| {
        let address = s.container_groups[0]
            .properties
            .ip_address
            .as_mut()
            .unwrap();
        address.kind = IpAddressType::Public;
        address.ip = Some("203.0.113.21".parse().unwrap());
    });
    assert_only_problem(
        &problems,
        "containerGroups[0].properties.ipAddress.type",
        "a Public group cannot be in subnet aci, which is delegated",
    );
}

#[test]
fn public_addresses() {
    let problems = problems_after(|s| {
        let template = s.container_groups[1].clone();
        s.container_groups[1]
            .properties
            .ip_address
            .as_mut()
            .unwrap()
            .ip = None;
        for (i, ip) in ["10.0.2.77", "127.0.0.1", "203.0.113.20", "203.0.113.20"]
            .iter()
            .enumerate()
        {
            let mut group = template.clone();
            group.name = format!("web-{i}");
            let address = group.properties.ip_address.as_mut().unwrap();
            address.ip = Some(ip.parse().unwrap());
            address.dns_name_label = None;
            s.container_groups.push(group);
        }
    });
    assert_problem(
        &problems,
        "containerGroups[1].properties.ipAddress.ip",
        "missing: a Public group needs its public address",
    );
    assert_problem(
        &problems,
        "containerGroups[2].properties.ipAddress.ip",
        "10.0.2.77 is inside the virtual network (10.0.0.0/16)",
    );
    assert_problem(
        &problems,
        "containerGroups[3].properties.ipAddress.ip",
        "(loopback), not a public address",
    );
    assert_problem(
        &problems,
        "containerGroups[5].properties.ipAddress.ip",
        "203.0.113.20 is also the public ip of containerGroups[4] (web-2)",
    );
    assert_eq!(problems.len(), 4, "{}", Problems(&problems));
}

#[test]
fn delegated_subnet_holds_container_groups_only() {
    let problems = problems_after(|s| s.nodes[0].primary_ip_address = "10.0.1.8".parse().unwrap());
    assert_only_problem(
        &problems,
        "nodes[0].primaryIpAddress",
        "delegated to Microsoft.ContainerInstance/containerGroups and holds container groups only",
    );
}

#[test]
fn private_ip_outside_subnet_or_pool() {
    let set_ip = |s: &mut Spec, ip: &str| {
        s.container_groups[0]
            .properties
            .ip_address
            .as_mut()
            .unwrap()
            .ip = Some(ip.parse().unwrap());
    };
    let problems = problems_after(|s| set_ip(s, "10.0.2.20"));
    assert_only_problem(
        &problems,
        "containerGroups[0].properties.ipAddress.ip",
        "10.0.2.20 is outside subnet aci (10.0.1.0/24)",
    );
    let problems = problems_after(|s| set_ip(s, "10.0.1.50"));
    assert_only_problem(
        &problems,
        "containerGroups[0].properties.ipAddress.ip",
        "10.0.1.50 is in no node's pool",
    );
    let problems = problems_after(|s| {
        let mut twin = s.container_groups[0].clone();
        twin.name = "twin".into();
        s.container_groups.push(twin);
    });
    assert_only_problem(
        &problems,
        "containerGroups[2].properties.ipAddress.ip",
        "10.0.1.10 is also the ip of containerGroups[0] (api)",
    );
}

#[test]
fn dns_name_labels() {
    let problems = problems_after(|s| {
        let mut twin = s.container_groups[1].clone();
        twin.name = "web-2".into();
        twin.location = Some("West Europe".into());
        twin.properties.ip_address.as_mut().unwrap().ip = Some("203.0.113.30".parse().unwrap());
        s.container_groups.push(twin);
        let mut bad = s.container_groups[1].clone();
        bad.name = "web-3".into();
        let address = bad.properties.ip_address.as_mut().unwrap();
        address.ip = Some("203.0.113.31".parse().unwrap());
        address.dns_name_label = Some("Web_3".into());
        s.container_groups.push(bad);
        s.container_groups[0]
            .properties
            .ip_address
            .as_mut()
            .unwrap()
            .dns_name_label = Some("api".into());
    });
    assert_problem(
        &problems,
        "containerGroups[2].properties.ipAddress.dnsNameLabel",
        "\"web\" is already used in West Europe by containerGroups[1] (web)",
    );
    assert_problem(
        &problems,
        "containerGroups[3].properties.ipAddress.dnsNameLabel",
        "\"Web_3\" is not a DNS label",
    );
    assert_problem(
        &problems,
        "containerGroups[0].properties.ipAddress.dnsNameLabel",
        "only a Public group has a DNS name",
    );
    assert_eq!(problems.len(), 3, "{}", Problems(&problems));
}

#[test]
fn os_type_subnet_and_containers_required() {
    let problems = problems_after(|s| {
        let props = &mut s.container_groups[0].properties;
        props.os_type = None;
        s.container_groups[1].properties.os_type = Some(OsType::Windows);
        s.container_groups[1].properties.subnet_ids.clear();
    });
    assert_problem(&problems, "containerGroups[0].properties.osType", "missing");
    assert_problem(
        &problems,
        "containerGroups[1].properties.osType",
        "Windows containers cannot run",
    );
    assert_problem(
        &problems,
        "containerGroups[1].properties.subnetIds",
        "missing",
    );
    let problems = problems_after(|s| s.container_groups[1].properties.containers.clear());
    assert_problem(
        &problems,
        "containerGroups[1].properties.containers",
        "at least one container",
    );
    assert_problem(
        &problems,
        "containerGroups[1].properties.ipAddress.ports[0]",
        "TCP 80 is not declared",
    );
}

#[test]
fn group_and_container_names() {
    let problems = problems_after(|s| {
        s.container_groups[0].name = "API".into();
        s.container_groups[0].properties.containers[0].name = "-api".into();
    });
    assert_problem(
        &problems,
        "containerGroups[0].name",
        "is not a valid name: use 1-63 lowercase",
    );
    assert_problem(
        &problems,
        "containerGroups[0].properties.containers[0].name",
        "is not a valid name",
    );
}

#[test]
fn validation_reports_every_problem_at_once() {
    let problems = problems_after(|s| {
        rule_mut(s, 0, 1).priority = 50;
        s.nodes[0].max_pods = 300;
        s.virtual_network.subnets[1].route_table = Some("nope".into());
        s.container_groups[1].properties.os_type = None;
    });
    assert_eq!(problems.len(), 4, "{}", Problems(&problems));
}

use ipnet::Ipv4Net;
