//! This node's view of the compiled spec: its uplink, its pools, the subnets and container
//! groups it may attach, and the route tables its subnets use. It holds the [`Compiled`]
//! model itself: the dataplane converts the compiled tables to map entries
//! ([`crate::dataplane::maps`]), nothing is restated here.
use std::{collections::BTreeSet, net::Ipv4Addr, ops::RangeInclusive};

use anyhow::{Result, bail};
use ipnet::Ipv4Net;
use vnetd_common::maps;

use crate::compile::{Classifier, Compiled, CompiledRouteTable};

#[derive(Clone, Debug)]
pub struct NodePlan {
    pub node: String,
    pub uplink: String,
    pub primary_ip: Ipv4Addr,
    pub max_pods: u32,
    pub subnets: Vec<SubnetPlan>,
    pub container_groups: Vec<GroupPlan>,
    compiled: Compiled,
}

#[derive(Clone, Debug)]
pub struct SubnetPlan {
    pub name: String,
    pub prefix: Ipv4Net,
    /// This node's pool inside the subnet.
    pub pool: Vec<RangeInclusive<Ipv4Addr>>,
    /// Delegated to container groups: plain pods may not use it.
    pub delegated: bool,
    /// The compiled id of the route table its endpoints use (0 = system routes only): an
    /// index into [`Compiled::routes`], not what the dataplane writes.
    pub route_table: u32,
    /// The compiled ids of its NSG's classifiers (0 = no NSG), indices into
    /// [`Compiled::nsgs`], not what the dataplane writes.
    pub inbound_classifier: u32,
    pub outbound_classifier: u32,
}

#[derive(Clone, Debug)]
pub struct GroupPlan {
    pub name: String,
    pub subnet: String,
    pub ip: Option<Ipv4Addr>,
}

impl NodePlan {
    pub fn subnet(&self, name: &str) -> Option<&SubnetPlan> {
        self.subnets.iter().find(|s| s.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&GroupPlan> {
        self.container_groups.iter().find(|g| g.name == name)
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The route table of `subnet`'s endpoints.
    pub fn route_table_of(&self, subnet: &str) -> Option<&CompiledRouteTable> {
        self.compiled.route_table(self.subnet(subnet)?.route_table)
    }

    /// The route tables the dataplane holds for this node: those of the subnets it has a
    /// pool in (only their endpoints look routes up), each once.
    pub fn route_tables(&self) -> impl Iterator<Item = &CompiledRouteTable> {
        let used: BTreeSet<u32> = self
            .subnets
            .iter()
            .filter(|s| !s.pool.is_empty())
            .map(|s| s.route_table)
            .collect();
        used.into_iter()
            .filter_map(|id| self.compiled.route_table(id))
    }

    /// The NSG classifiers the dataplane holds for this node: those of the subnets it has a
    /// pool in (new endpoints go there) and of `endpoint_subnets` (where endpoints are: a reload
    /// may have taken the pool away from under them), each once, in compiled-id order.
    pub fn classifiers<'a>(
        &'a self,
        endpoint_subnets: impl IntoIterator<Item = &'a str>,
    ) -> Vec<&'a Classifier> {
        let mut used: BTreeSet<u32> = BTreeSet::new();
        let pooled = self.subnets.iter().filter(|s| !s.pool.is_empty());
        let occupied = endpoint_subnets
            .into_iter()
            .filter_map(|name| self.subnet(name));
        for subnet in pooled.chain(occupied) {
            used.extend([subnet.inbound_classifier, subnet.outbound_classifier]);
        }
        used.into_iter()
            .filter_map(|id| self.compiled.nsgs.classifier(id))
            .collect()
    }

    /// Refuses a plan whose tables do not fit the maps, naming the limit.
    fn check_capacity(&self) -> Result<()> {
        if self.max_pods > maps::ENDPOINTS_MAX {
            bail!(
                "node {}: maxPods {} is more than ENDPOINTS holds (ENDPOINTS_MAX = {})",
                self.node,
                self.max_pods,
                maps::ENDPOINTS_MAX
            );
        }
        let no_masquerade = self.compiled.no_masquerade.len();
        if no_masquerade > maps::NO_MASQUERADE_MAX as usize {
            bail!(
                "node {}: {no_masquerade} prefixes are never masqueraded (address space, \
                 connected spaces, nonMasqueradeCidrs, 169.254.0.0/16); NO_MASQUERADE holds \
                 NO_MASQUERADE_MAX = {}",
                self.node,
                maps::NO_MASQUERADE_MAX
            );
        }
        self.check_nsg_capacity()?;
        let tables: Vec<(String, usize)> = self
            .route_tables()
            .map(|t| (t.key(), t.entries.len()))
            .collect();
        let routes: usize = tables.iter().map(|(_, n)| n).sum();
        if routes > ROUTE_BUDGET as usize {
            let list: Vec<String> = tables
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            bail!(
                "node {}: the route tables of its subnets hold {routes} routes ({}); ROUTES holds \
                 ROUTES_MAX = {} entries and a reload writes a changed table beside the one in \
                 use, so one node's tables may hold at most {ROUTE_BUDGET}",
                self.node,
                list.join(", "),
                maps::ROUTES_MAX
            );
        }
        Ok(())
    }
}

impl NodePlan {
    /// Refuses a plan whose NSG classifiers do not fit in half of each NSG map (a reload writes
    /// a changed classifier beside the one in use), naming the map and its limit.
    fn check_nsg_capacity(&self) -> Result<()> {
        let classifiers = self.classifiers(std::iter::empty());
        let sum = |field: fn(&Classifier) -> usize| -> usize {
            classifiers.iter().map(|&c| field(c)).sum()
        };
        let needs: [(&str, usize, &str, u32); 6] = [
            (
                "classifiers",
                classifiers.len(),
                "NSG_CLASSIFIERS_MAX",
                maps::NSG_CLASSIFIERS_MAX,
            ),
            (
                "rules",
                sum(|c| c.rules.len()),
                "NSG_RULES_MAX",
                maps::NSG_RULES_MAX,
            ),
            (
                "source prefixes",
                sum(|c| c.src_addr.len()),
                "NSG_ADDR_MAX",
                maps::NSG_ADDR_MAX,
            ),
            (
                "destination prefixes",
                sum(|c| c.dst_addr.len()),
                "NSG_ADDR_MAX",
                maps::NSG_ADDR_MAX,
            ),
            (
                "source port blocks",
                sum(|c| c.src_port.len()),
                "NSG_PORT_MAX",
                maps::NSG_PORT_MAX,
            ),
            (
                "destination port blocks",
                sum(|c| c.dst_port.len()),
                "NSG_PORT_MAX",
                maps::NSG_PORT_MAX,
            ),
        ];
        for (what, used, limit, max) in needs {
            if used > max as usize / 2 {
                let nsgs: BTreeSet<&str> =
                    classifiers.iter().map(|c| c.nsg_name.as_str()).collect();
                bail!(
                    "node {}: the NSGs of its subnets ({}) need {used} {what}; the dataplane \
                     holds {limit} = {max} and a reload writes a changed NSG beside the one in \
                     use, so one node's NSGs may need at most {}",
                    self.node,
                    nsgs.into_iter().collect::<Vec<_>>().join(", "),
                    max / 2
                );
            }
        }
        Ok(())
    }
}

/// The routes one node's tables may hold: half of ROUTES, so that a reload changing every
/// table still has room to write the new tables beside the running ones.
pub const ROUTE_BUDGET: u32 = maps::ROUTES_MAX / 2;

impl NodePlan {
    /// This node's part of a compiled spec; refused if its tables do not fit the maps.
    pub fn from_compiled(c: Compiled) -> Result<Self> {
        let subnets = c
            .subnets
            .iter()
            .map(|s| SubnetPlan {
                name: s.name.clone(),
                prefix: s.prefix,
                pool: c
                    .node
                    .pool_in(s.id)
                    .iter()
                    .map(|r| r.first..=r.last)
                    .collect(),
                delegated: s.delegated,
                route_table: s.route_table_id,
                inbound_classifier: s.inbound_classifier,
                outbound_classifier: s.outbound_classifier,
            })
            .collect();
        let container_groups = c
            .container_groups
            .iter()
            .filter_map(|g| {
                Some(GroupPlan {
                    name: g.name.clone(),
                    subnet: c.subnet(g.subnet_id)?.name.clone(),
                    ip: g.private_ip,
                })
            })
            .collect();
        let plan = Self {
            node: c.node.name.clone(),
            uplink: c.node.interface.clone(),
            primary_ip: c.node.primary_ip,
            max_pods: c.node.max_pods,
            subnets,
            container_groups,
            compiled: c,
        };
        plan.check_capacity()?;
        Ok(plan)
    }

    /// Parses, validates and compiles `spec` for `node`.
    pub fn from_spec(spec: &crate::spec::Spec, node: &str) -> Result<Self> {
        Self::from_compiled(crate::compile::compile(spec, node)?)
    }

    /// [`Self::from_spec`] for a spec already validated (`spec::load_file` and
    /// `spec::check_str` return only valid ones): the validation is not done twice.
    pub fn from_valid_spec(spec: &crate::spec::Spec, node: &str) -> Result<Self> {
        Self::from_compiled(crate::compile::compile_valid(spec, node)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_str;

    /// A spec with `tables` subnets, each with its own table of 400 routes (Azure's maximum);
    /// node-1 has a pool in each, node-2 in the first two only.
    fn many_tables(tables: usize) -> String {
        let mut spec = String::from(
            "apiVersion: vnetd/v1\nvirtualNetwork:\n  name: vnet\n  addressSpace: [10.0.0.0/8]\n  subnets:\n    - name: nodes\n      addressPrefix: 10.0.0.0/24\n",
        );
        for i in 1..=tables {
            spec += &format!(
                "    - name: s{i}\n      addressPrefix: 10.{i}.0.0/24\n      routeTable: t{i}\n"
            );
        }
        spec += "routeTables:\n";
        for i in 1..=tables {
            spec += &format!("  - name: t{i}\n    routes:\n");
            for r in 0..400 {
                spec += &format!(
                    "      - {{ name: r{r}, addressPrefix: 192.168.{}.{}/32, nextHopType: None }}\n",
                    r / 256,
                    r % 256
                );
            }
        }
        let pool = |subnets: std::ops::RangeInclusive<usize>, host: u8| {
            subnets
                .map(|i| format!("\"10.{i}.0.{host}-10.{i}.0.{host}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        spec += &format!(
            "nodes:\n  - {{ name: node-1, interface: eth0, primaryIpAddress: 10.0.0.4, secondaryIpAddresses: [{}] }}\n  - {{ name: node-2, interface: eth0, primaryIpAddress: 10.0.0.5, secondaryIpAddresses: [{}] }}\n",
            pool(1..=tables, 10),
            pool(1..=2.min(tables), 20)
        );
        spec
    }

    #[test]
    fn a_node_gets_only_the_tables_of_its_subnets() {
        let spec = parse_str(&many_tables(30)).expect("valid spec");
        let plan = NodePlan::from_spec(&spec, "node-2").expect("two tables fit");
        let names: Vec<String> = plan.route_tables().map(|t| t.key()).collect();
        assert_eq!(names, ["t1", "t2"]);
        assert_eq!(
            plan.route_table_of("s1").map(|t| t.entries.len()),
            Some(402),
            "400 user routes and the two system routes"
        );
    }

    #[test]
    fn a_node_whose_tables_overflow_routes_is_refused_with_the_limit_named() {
        let spec = parse_str(&many_tables(20)).expect("valid spec");
        NodePlan::from_spec(&spec, "node-1").expect("20 tables of 402 routes fit in 8192");
        let spec = parse_str(&many_tables(21)).expect("valid spec");
        let Err(err) = NodePlan::from_spec(&spec, "node-1") else {
            panic!("21 tables of 402 routes do not fit in 8192");
        };
        let err = err.to_string();
        assert!(err.contains("node node-1"), "{err}");
        assert!(err.contains("8442 routes"), "{err}");
        assert!(err.contains("ROUTES_MAX = 16384"), "{err}");
        assert!(err.contains("at most 8192"), "{err}");
    }

    /// `subnets` subnets with a pool on node-1, each with an NSG of its own.
    fn many_nsgs(subnets: usize) -> String {
        let mut spec = String::from(
            "apiVersion: vnetd/v1\nvirtualNetwork:\n  name: vnet\n  addressSpace: [10.0.0.0/8]\n  subnets:\n    - name: nodes\n      addressPrefix: 10.0.0.0/24\n",
        );
        for i in 1..=subnets {
            spec += &format!(
                "    - name: s{i}\n      addressPrefix: 10.{i}.0.0/24\n      networkSecurityGroup: n{i}\n"
            );
        }
        spec += "networkSecurityGroups:\n";
        for i in 1..=subnets {
            spec += &format!("  - name: n{i}\n    securityRules: []\n");
        }
        let pool: Vec<String> = (1..=subnets)
            .map(|i| format!("\"10.{i}.0.10-10.{i}.0.10\""))
            .collect();
        spec += &format!(
            "nodes:\n  - {{ name: node-1, interface: eth0, primaryIpAddress: 10.0.0.4, secondaryIpAddresses: [{}] }}\n",
            pool.join(", ")
        );
        spec
    }

    #[test]
    fn a_node_whose_nsgs_overflow_the_classifier_slots_is_refused_with_the_limit_named() {
        let spec = parse_str(&many_nsgs(64)).expect("valid spec");
        let plan = NodePlan::from_spec(&spec, "node-1").expect("64 NSGs, 128 classifiers fit");
        assert_eq!(plan.classifiers(std::iter::empty()).len(), 128);
        let spec = parse_str(&many_nsgs(65)).expect("valid spec");
        let Err(err) = NodePlan::from_spec(&spec, "node-1") else {
            panic!("65 NSGs, 130 classifiers, do not fit in half of NSG_CLASSIFIERS_MAX");
        };
        let err = err.to_string();
        assert!(err.contains("node node-1"), "{err}");
        assert!(err.contains("need 130 classifiers"), "{err}");
        assert!(err.contains("NSG_CLASSIFIERS_MAX = 256"), "{err}");
        assert!(err.contains("at most 128"), "{err}");
    }

    /// Only the NSGs of subnets the node has a pool in, or endpoints in, are installed.
    #[test]
    fn a_node_installs_only_the_nsgs_of_its_subnets() {
        let spec = parse_str(&many_nsgs(3)).expect("valid spec");
        let mut compiled = crate::compile::compile(&spec, "node-1").unwrap();
        compiled.node.pool.retain(|p| p.subnet_id == 2);
        let plan = NodePlan::from_compiled(compiled).unwrap();
        let names = |extra: &[&str]| -> Vec<String> {
            plan.classifiers(extra.iter().copied())
                .iter()
                .map(|c| format!("{} {}", c.nsg_name, c.direction))
                .collect()
        };
        assert_eq!(names(&[]), ["n1 Inbound", "n1 Outbound"]);
        assert_eq!(
            names(&["s3", "nowhere"]),
            ["n1 Inbound", "n1 Outbound", "n3 Inbound", "n3 Outbound"]
        );
    }

    #[test]
    fn a_node_with_more_pods_than_endpoints_holds_is_refused() {
        let spec = parse_str(&many_tables(1)).expect("valid spec");
        let mut compiled = crate::compile::compile(&spec, "node-1").unwrap();
        compiled.node.max_pods = maps::ENDPOINTS_MAX + 1;
        let Err(err) = NodePlan::from_compiled(compiled) else {
            panic!("513 pods do not fit in ENDPOINTS");
        };
        let err = err.to_string();
        assert!(err.contains("ENDPOINTS_MAX = 512"), "{err}");
        assert!(err.contains("maxPods 513"), "{err}");
    }
}
