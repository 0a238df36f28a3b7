//! From the plan to what the kernel holds: the NODE, ENDPOINTS and GROUP_PORTS entries and the
//! route tables, and the names behind the tables' ids. Pure: no dataplane, no netlink, so what
//! an entry holds is tested here without a kernel.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use vnetd_common::{Endpoint as AbiEndpoint, NodeConfig};

use crate::{
    compile::nat,
    dataplane::{
        maps::{
            self, GroupPorts,
            nsg::{self, EndpointNsgs},
            routes::{self, RouteEntries},
        },
        tables::VersionedTables,
    },
    endpoints::Endpoint,
    netlink::NodeLink,
    nsg_hits,
    plan::NodePlan,
    spec::PortRange,
};

pub(super) fn node_config(plan: &NodePlan, uplink: &NodeLink) -> NodeConfig {
    let service = plan.compiled().service_cidr;
    NodeConfig {
        uplink_ifindex: uplink.ifindex,
        primary_ip: plan.primary_ip.octets(),
        uplink_mac: uplink.mac,
        snat_port_min: plan.compiled().snat_port_range.first,
        snat_port_max: plan.compiled().snat_port_range.last,
        _pad: [0; 2],
        service_net: service.map_or([0; 4], |net| net.network().octets()),
        service_mask: service.map_or([0; 4], |net| net.netmask().octets()),
    }
}

/// What `NODE` holds from the spec (besides the uplink and the primary address): a reload
/// that changes any of it rewrites the entry.
pub(super) fn node_settings(plan: &NodePlan) -> (PortRange, Option<Ipv4Net>) {
    let compiled = plan.compiled();
    (compiled.snat_port_range, compiled.service_cidr)
}

/// The public address of `ep`'s group, if it is a Public group of `plan`.
fn group_public_ip(plan: &NodePlan, ep: &Endpoint) -> Option<Ipv4Addr> {
    let group = ep.container_group.as_deref()?;
    nat::public_ip_of(&plan.compiled().container_groups, group)
}

/// The route tables to install, by name: those of the node's subnets, and those of subnets
/// where endpoints still are (a reload may have taken the node's pool away from under them).
pub(super) fn wanted_route_tables(
    plan: &NodePlan,
    endpoints: &[Endpoint],
) -> BTreeMap<String, RouteEntries> {
    plan.route_tables()
        .chain(
            endpoints
                .iter()
                .filter_map(|ep| plan.route_table_of(&ep.subnet)),
        )
        .map(|t| (t.key(), routes::entries(t)))
        .collect()
}

/// The dataplane id of `subnet`'s route table (0, no table, for a subnet not in the spec:
/// its endpoints' routed traffic is dropped as `no_route`), and whether it routes the VNet
/// locally.
fn endpoint_routes(
    plan: &NodePlan,
    ids: &BTreeMap<String, u32>,
    subnet: &str,
) -> maps::EndpointRoutes {
    plan.route_table_of(subnet)
        .and_then(|t| {
            ids.get(&t.key()).map(|&table| maps::EndpointRoutes {
                table,
                vnet_direct: t.vnet_direct,
            })
        })
        .unwrap_or_default()
}

/// The ids of the tables in use, by name, during a switch: the new generation's.
pub struct TableIdsByName<'a> {
    pub routes: &'a BTreeMap<String, u32>,
    pub nsgs: &'a BTreeMap<String, u32>,
}

/// Moves a table id of a previous generation to the id its table (by name) has now.
pub(super) fn follow(id: &mut u32, names: &BTreeMap<u32, String>, now: &BTreeMap<String, u32>) {
    if let Some(new) = names.get(id).and_then(|name| now.get(name)) {
        *id = *new;
    }
}

/// The ENDPOINTS entry of `ep` under `plan`, pointing at the tables `ids`.
pub(super) fn entry_for(
    plan: &NodePlan,
    ids: &TableIdsByName,
    ep: &Endpoint,
) -> Result<AbiEndpoint> {
    Ok(maps::abi_endpoint(
        ep,
        endpoint_routes(plan, ids.routes, &ep.subnet),
        group_public_ip(plan, ep),
        endpoint_nsgs(plan, ids.nsgs, &ep.subnet)
            .with_context(|| format!("the NSGs of endpoint {}", ep.ip))?,
    ))
}

/// The kernel classifier ids of an endpoint in `subnet`: its subnet's NSG, both directions.
/// The group fields stay 0: ACI has no field for a container group's own NSG, so the spec has
/// none (the contract's "group NSG" would go there). A subnet not in the spec has none.
fn endpoint_nsgs(
    plan: &NodePlan,
    ids: &BTreeMap<String, u32>,
    subnet: &str,
) -> Result<EndpointNsgs> {
    let Some(subnet) = plan.subnet(subnet) else {
        return Ok(EndpointNsgs::default());
    };
    let nsgs = &plan.compiled().nsgs;
    Ok(EndpointNsgs {
        in_subnet: nsg::kernel_id(nsgs, ids, subnet.inbound_classifier)?,
        in_group: 0,
        out_subnet: nsg::kernel_id(nsgs, ids, subnet.outbound_classifier)?,
        out_group: 0,
    })
}

/// The rule names of the classifiers installed for `plan` and `endpoints`, by kernel id.
pub(super) fn live_rules(
    plan: &NodePlan,
    endpoints: &[Endpoint],
    nsg_tables: &VersionedTables,
) -> nsg_hits::LiveRules {
    let classifiers = plan.classifiers(endpoints.iter().map(|e| &*e.subnet));
    nsg_hits::live_rules(classifiers, &nsg_tables.ids().ids())
}

/// GROUP_PORTS for the container groups among `endpoints`: each group's exposed ports at its
/// private address. A group the plan no longer declares exposes nothing.
pub(super) fn group_ports<'a>(
    plan: &NodePlan,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> GroupPorts {
    let groups = &plan.compiled().container_groups;
    let mut ports = GroupPorts::new();
    for ep in endpoints {
        let Some(name) = ep.container_group.as_deref() else {
            continue;
        };
        if let Some(group) = groups.iter().find(|g| g.name == name) {
            ports.extend(
                nat::exposed_ports(group)
                    .into_iter()
                    .map(|(proto, port)| (ep.ip, proto, port)),
            );
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::proto::Attachment,
        spec::{PortRange, parse_str},
    };

    const CONTRACT: &str = include_str!("../../../examples/contract.yaml");

    fn plan(port_range: PortRange) -> NodePlan {
        let mut spec = parse_str(CONTRACT).expect("the contract example parses");
        spec.outbound_nat.port_range = port_range;
        NodePlan::from_spec(&spec, "node-1").unwrap()
    }

    fn endpoint(ip: [u8; 4], group: Option<&str>) -> Endpoint {
        Endpoint {
            attachment: Attachment {
                network: "vnetd".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
            netns: "/run/netns/p".into(),
            ip: Ipv4Addr::from(ip),
            subnet: "apps".into(),
            host_ifname: "vnd0".into(),
            host_ifindex: 7,
            host_mac: [2, 0, 0, 0, 0, 1],
            pod_mac: [2, 0, 0, 0, 0, 2],
            container_group: group.map(Into::into),
            k8s_namespace: None,
            k8s_pod: None,
            routes: crate::api::proto::default_route_only(),
        }
    }

    #[test]
    fn nat_node_config_carries_the_spec_port_range() {
        let uplink = NodeLink {
            name: "eth0".into(),
            ifindex: 2,
            mac: [2, 0, 10, 0, 0, 4],
            mtu: 1500,
            veth: true,
        };
        let range = PortRange {
            first: 40000,
            last: 40015,
        };
        let config = node_config(&plan(range), &uplink);
        assert_eq!((config.snat_port_min, config.snat_port_max), (40000, 40015));
        assert_eq!(config.primary_ip, [10, 0, 0, 4]);
    }

    fn lab_uplink() -> NodeLink {
        NodeLink {
            name: "eth0".into(),
            ifindex: 2,
            mac: [2, 0, 10, 0, 0, 4],
            mtu: 1500,
            veth: true,
        }
    }

    fn plan_with_services(service_cidr: Option<&str>) -> NodePlan {
        let mut spec = parse_str(CONTRACT).expect("the contract example parses");
        spec.network_profile = service_cidr.map(|cidr| crate::spec::NetworkProfile {
            service_cidr: Some(cidr.parse().unwrap()),
            dns_service_ip: None,
        });
        NodePlan::from_spec(&spec, "node-1").unwrap()
    }

    #[test]
    fn node_config_carries_the_service_range() {
        let config = node_config(&plan_with_services(Some("10.96.0.0/12")), &lab_uplink());
        assert_eq!(config.service_net, [10, 96, 0, 0]);
        assert_eq!(config.service_mask, [255, 240, 0, 0]);
        assert!(config.has_services());
        assert!(config.is_service(&[10, 111, 255, 1]));
        assert!(!config.is_service(&[10, 112, 0, 1]));
        assert!(
            !config.is_service(&[10, 0, 2, 10]),
            "a pod is not a Service"
        );

        let none = node_config(&plan_with_services(None), &lab_uplink());
        assert_eq!((none.service_net, none.service_mask), ([0; 4], [0; 4]));
        assert!(!none.has_services());
        assert!(!none.is_service(&[10, 96, 0, 1]));
    }

    #[test]
    fn a_reload_that_changes_the_service_range_rewrites_the_node_entry() {
        let before = plan_with_services(None);
        let with = plan_with_services(Some("10.96.0.0/16"));
        let moved = plan_with_services(Some("10.97.0.0/16"));
        assert_ne!(node_settings(&before), node_settings(&with), "added");
        assert_ne!(node_settings(&with), node_settings(&moved), "changed");
        assert_ne!(node_settings(&with), node_settings(&before), "removed");
        assert_eq!(
            node_settings(&with),
            node_settings(&plan_with_services(Some("10.96.0.0/16")))
        );
    }

    #[test]
    fn nat_a_public_groups_endpoint_carries_its_public_address() {
        let plan = plan(crate::spec::OutboundNat::DEFAULT_PORT_RANGE);
        let web = endpoint([10, 0, 2, 10], Some("web"));
        let api = endpoint([10, 0, 1, 10], Some("api"));
        let pod = endpoint([10, 0, 2, 11], None);
        let none = EndpointNsgs::default();
        let routes = maps::EndpointRoutes {
            table: 3,
            vnet_direct: true,
        };
        assert_eq!(
            maps::abi_endpoint(&web, routes, group_public_ip(&plan, &web), none).public_ip,
            [203, 0, 113, 20]
        );
        assert_eq!(
            maps::abi_endpoint(&api, routes, group_public_ip(&plan, &api), none).public_ip,
            [0; 4],
            "a Private group has none"
        );
        assert_eq!(group_public_ip(&plan, &pod), None);
    }

    /// Kernel ids as a dataplane could have handed them out: NSG `k`'s inbound classifier
    /// `10k + 1`, its outbound `10k + 2`, by the name each is recorded under.
    fn kernel_ids(plan: &NodePlan) -> BTreeMap<String, u32> {
        plan.compiled()
            .nsgs
            .classifiers
            .iter()
            .map(|c| {
                let direction = u32::from(c.direction == crate::spec::Direction::Outbound);
                (nsg::table_name(c), 10 * c.nsg_id + 1 + direction)
            })
            .collect()
    }

    /// compile -> kernel ids per endpoint: an endpoint carries its subnet's NSG, both
    /// directions, under the ids the dataplane gave those classifiers; a subnet without an NSG
    /// carries none; a classifier the dataplane does not hold is an error, never "none".
    #[test]
    fn nsg_endpoints_carry_their_subnets_classifiers_by_kernel_id() {
        let plan = plan(crate::spec::OutboundNat::DEFAULT_PORT_RANGE);
        let installed: Vec<String> = plan
            .classifiers(std::iter::empty())
            .into_iter()
            .map(|c| format!("{} {}", c.nsg_name, c.direction))
            .collect();
        assert_eq!(
            installed,
            [
                "apps-nsg Inbound",
                "apps-nsg Outbound",
                "aci-nsg Inbound",
                "aci-nsg Outbound"
            ],
            "node-1 has pools in apps and aci: both subnets' NSGs, both directions"
        );
        let ids = kernel_ids(&plan);
        let apps = endpoint_nsgs(&plan, &ids, "apps").unwrap();
        assert_eq!(
            apps,
            EndpointNsgs {
                in_subnet: 11,
                in_group: 0,
                out_subnet: 12,
                out_group: 0
            }
        );
        let aci = endpoint_nsgs(&plan, &ids, "aci").unwrap();
        assert_eq!((aci.in_subnet, aci.out_subnet), (21, 22));
        assert_eq!(
            endpoint_nsgs(&plan, &ids, "nodes").unwrap(),
            EndpointNsgs::default(),
            "a subnet without an NSG"
        );

        let tables = TableIdsByName {
            routes: &BTreeMap::new(),
            nsgs: &ids,
        };
        let mut api = endpoint([10, 0, 1, 10], Some("api"));
        api.subnet = "aci".into();
        let api = entry_for(&plan, &tables, &api).unwrap();
        assert_eq!((api.nsg_in_subnet, api.nsg_out_subnet), (21, 22));
        assert_eq!((api.nsg_in_group, api.nsg_out_group), (0, 0));
        assert_eq!(api.flags, vnetd_common::ENDPOINT_EXPOSED_PORTS_ONLY);
        let pod = entry_for(&plan, &tables, &endpoint([10, 0, 2, 11], None)).unwrap();
        assert_eq!((pod.nsg_in_subnet, pod.nsg_out_subnet), (11, 12));
        assert_eq!(pod.flags, 0, "a pod is reachable on every port");

        let mut missing = ids.clone();
        missing.retain(|name, _| !name.starts_with("apps-nsg"));
        let err = entry_for(
            &plan,
            &tables_with(&missing),
            &endpoint([10, 0, 2, 11], None),
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("10.0.2.11") && err.contains("apps-nsg"),
            "{err}"
        );
    }

    fn tables_with(nsgs: &BTreeMap<String, u32>) -> TableIdsByName<'_> {
        static NO_ROUTES: BTreeMap<String, u32> = BTreeMap::new();
        TableIdsByName {
            routes: &NO_ROUTES,
            nsgs,
        }
    }

    /// GROUP_PORTS: each attached group's `ipAddress.ports` at its private address; pods and
    /// groups the spec does not declare (any more) expose nothing.
    #[test]
    fn group_ports_are_the_groups_exposed_ports_at_their_private_address() {
        let plan = plan(crate::spec::OutboundNat::DEFAULT_PORT_RANGE);
        let api = endpoint([10, 0, 1, 10], Some("api"));
        let web = endpoint([10, 0, 2, 10], Some("web"));
        let pod = endpoint([10, 0, 2, 11], None);
        let gone = endpoint([10, 0, 2, 12], Some("gone"));
        let ports = group_ports(&plan, [&api, &web, &pod, &gone]);
        assert_eq!(
            ports,
            GroupPorts::from([
                (Ipv4Addr::new(10, 0, 1, 10), nat::IPPROTO_TCP, 8080),
                (Ipv4Addr::new(10, 0, 2, 10), nat::IPPROTO_TCP, 80),
            ])
        );
    }
}
