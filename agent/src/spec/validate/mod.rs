//! The checks that relate fields to each other or to Azure's limits. Each check reports with
//! the path of the field at fault and, for conflicts, names the other party too.
//!
//! One file per part of the spec, in the order [`validate`] runs them: [`vnet`] (address
//! spaces, subnets), [`nsg`] (security groups and rules), [`routes`] (route tables),
//! [`nodes`] (nodes and their pools), [`nat`] (outbound NAT), [`groups`] (container groups),
//! [`kubernetes`] (the cluster's service range).
//! The rules they share: [`addresses`] (reserved ranges, overlaps) and [`names`] (naming
//! rules). Each part is an `impl Checker` block; this file holds the entry point and the
//! helpers that collect problems.

mod addresses;
mod groups;
mod kubernetes;
mod names;
mod nat;
mod nodes;
mod nsg;
mod routes;
mod vnet;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::Problem;
use super::model::*;

pub use addresses::{is_reserved_in_subnet, overlaps};
pub use kubernetes::{MAX_SERVICE_PREFIX_LEN, MIN_SERVICE_PREFIX_LEN};
pub use names::{aci_name_problem, azure_name_problem, is_dns_label, is_valid_ifname};
pub use nat::{IDLE_TIMEOUT_RANGE, MIN_SNAT_PORT};
pub use nodes::{MAX_PODS_RANGE, MAX_VNET_ADDRESSES};
pub use nsg::{MAX_PREFIXES_PER_NSG, MAX_RULES_PER_NSG, PRIORITY_RANGE};
pub use routes::MAX_ROUTES_PER_TABLE;
pub use vnet::MAX_SUBNET_PREFIX_LEN;

/// Every problem of `spec`, in document order of the checks (network, NSGs, route tables,
/// nodes, outbound NAT, container groups, the Kubernetes network profile).
pub fn validate(spec: &Spec) -> Vec<Problem> {
    let mut checker = Checker {
        spec,
        problems: Vec::new(),
    };
    checker.api_version();
    checker.virtual_network();
    checker.network_security_groups();
    checker.route_tables();
    checker.nodes();
    checker.outbound_nat();
    checker.container_groups();
    checker.network_profile();
    checker.problems
}

struct Checker<'s> {
    spec: &'s Spec,
    problems: Vec<Problem>,
}

/// How names of one kind are compared for uniqueness.
#[derive(Clone, Copy)]
enum Case {
    /// Azure resource names.
    Insensitive,
    /// Linux host names, container names.
    Sensitive,
}

impl<'s> Checker<'s> {
    fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// Reports each name that repeats an earlier one, pointing at the first; `path_of` spells
    /// out the path of the name at an index, only for a problem (a spec of 1000 NSG rules would
    /// format 1000 paths on every reload).
    fn unique_names<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        path_of: impl Fn(usize) -> String,
        case: Case,
    ) {
        let mut first: HashMap<String, usize> = HashMap::new();
        for (i, name) in names.into_iter().enumerate() {
            let key = match case {
                Case::Insensitive => name.to_ascii_lowercase(),
                Case::Sensitive => name.to_string(),
            };
            match first.get(&key) {
                Some(&earlier) => {
                    let earlier = path_of(earlier);
                    let earlier = earlier.trim_end_matches(".name");
                    self.report(
                        path_of(i),
                        format!("{name:?} is already the name of {earlier}"),
                    )
                }
                None => {
                    first.insert(key, i);
                }
            }
        }
    }

    fn azure_name(&mut self, path: &str, name: &str, max: usize) {
        if let Some(message) = azure_name_problem(name, max) {
            self.report(path, message);
        }
    }

    fn api_version(&mut self) {
        if self.spec.api_version != API_VERSION {
            self.report(
                "apiVersion",
                format!(
                    "{:?} is not supported, expected {API_VERSION}",
                    self.spec.api_version
                ),
            );
        }
    }

    fn subnet_of(&self, addr: Ipv4Addr) -> Option<&'s Subnet> {
        self.spec
            .virtual_network
            .subnets
            .iter()
            .find(|s| s.address_prefix.contains(&addr))
    }
}
