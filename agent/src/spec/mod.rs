//! The control spec: Azure's resource model (VNet, subnets, NSGs, route tables, container
//! groups) plus vnetd's node and outbound-NAT settings.
//!
//! Reading a spec has two stages, and each reports every problem it finds, as
//! `<path>: <message>` lines (`networkSecurityGroups[0].securityRules[2].priority: 50 is
//! outside 100..=4096`):
//!
//! 1. [`parse_str`]: YAML or JSON to the typed [`Spec`]. Problems: syntax, unknown fields (with
//!    "did you mean"), missing fields, wrong types, malformed values (prefixes, port ranges,
//!    keywords), singular and plural forms both given.
//! 2. [`validate`]: limits and relations (priority ranges and uniqueness, overlaps,
//!    references, pools, container-group ports and addresses).
//!
//! The second stage needs the typed model, so a spec with parse problems reports those first;
//! once they are fixed, the validation problems follow, all at once.
//!
//! Field names and spellings follow Azure: camelCase fields, keyword values (`Inbound`, `Tcp`,
//! `VirtualNetwork`, ...) in any case, as ARM accepts them. The ACI fields of a container group
//! that the dataplane does not use (image, resources, volumes, restartPolicy, ...) are accepted
//! and dropped; unknown fields anywhere else are errors.
//!
//! Where the contract is silent, the checks do what Azure does:
//! * Resource names (subnets, NSGs, rules, route tables, routes) follow Azure's naming rule and
//!   compare case-insensitively, for uniqueness and for references; node names are host names
//!   (case-sensitive); container group and container names follow ACI (lowercase).
//! * Service tags and `*` are only accepted in the singular `...AddressPrefix` field (Azure
//!   refuses them in `...AddressPrefixes`).
//! * Azure's reserved addresses are refused: the first four and the last address of a subnet
//!   (for primary IPs, pools, appliances), 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16,
//!   168.63.129.16, 224.0.0.0/4 and 255.255.255.255 in address spaces; subnets are /29 or larger.
//! * A route table holds one route per prefix; a `VirtualAppliance` next hop is not in a
//!   delegated subnet.
//! * A Public group needs its public `ip` (outside the VNet); a `dnsNameLabel` needs a Public
//!   group and is unique per location (compared as Azure does: case and spaces ignored).
//! * `maxPods` defaults to 30 (Azure CNI's default); "more pods than maxPods" counts the groups
//!   whose private `ip` lies in the node's pool. The 65,536-address limit counts the nodes'
//!   primary and pool addresses.
//! * `outboundNat.portRange` stays within 1024-65535.
//! * `networkProfile.serviceCidr` (AKS's name) is a /12 to /30 outside the virtual network, its
//!   connected spaces and Azure's reserved ranges, and holds no Public group's address;
//!   `dnsServiceIP` needs it and lies inside it, neither its network, broadcast nor first
//!   address (Kubernetes gives that one to the API server's Service).

mod fast_yaml;
mod model;
mod parse;
mod suggest;
mod validate;
mod value;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod timing;

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

pub use model::*;
pub use validate::{
    IDLE_TIMEOUT_RANGE, MAX_PODS_RANGE, MAX_PREFIXES_PER_NSG, MAX_ROUTES_PER_TABLE,
    MAX_RULES_PER_NSG, MAX_SERVICE_PREFIX_LEN, MAX_SUBNET_PREFIX_LEN, MAX_VNET_ADDRESSES,
    MIN_SERVICE_PREFIX_LEN, MIN_SNAT_PORT, PRIORITY_RANGE, aci_name_problem, azure_name_problem,
    is_dns_label, is_reserved_in_subnet, is_valid_ifname, overlaps, validate,
};

/// One thing wrong with a spec: where (a path such as `nodes[0].maxPods`, or `line 3, column 5`
/// for a syntax error) and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    /// Control characters (a newline in a name, say) are escaped: a problem is one line.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: one_line(path.into()),
            message: one_line(message.into()),
        }
    }
}

fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Problems as one block of text, one per line (for logs and `anyhow` errors).
pub struct Problems<'a>(pub &'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Parses a spec (YAML, or JSON when the text starts with `{`) into the typed model. Checks
/// the shape and the syntax of values; [`validate`] checks the rest.
pub fn parse_str(text: &str) -> Result<Spec, Vec<Problem>> {
    let root = value::parse_document(text).map_err(|problem| vec![problem])?;
    parse::spec_from_value(&root)
}

/// Reads, parses and validates a spec file: `Ok` only for a spec without problems.
pub fn load_file(path: &Path) -> Result<Spec, Vec<Problem>> {
    check_read(path, std::fs::read_to_string(path))
}

/// [`load_file`] for a file already read (`read`: what reading `path` returned).
pub fn check_read(path: &Path, read: std::io::Result<String>) -> Result<Spec, Vec<Problem>> {
    let text = read.map_err(|error| {
        vec![Problem::new(
            path.display().to_string(),
            format!("cannot read: {error}"),
        )]
    })?;
    check_str(&text)
}

/// Parses and validates a spec's text: `Ok` only for a spec without problems. When the parse
/// found problems but could still build the model (an unknown keyword, say), the validation
/// problems follow the parse problems, except those inside an object that had a parse problem
/// (they would judge a stand-in value, not what the author wrote).
pub fn check_str(text: &str) -> Result<Spec, Vec<Problem>> {
    let root = value::parse_document(text).map_err(|problem| vec![problem])?;
    let (spec, mut problems) = parse::spec_and_problems(&root);
    let Some(spec) = spec else {
        return Err(problems);
    };
    let unreliable: Vec<&str> = problems.iter().map(|p| parent_path(&p.path)).collect();
    let validation: Vec<Problem> = validate(&spec)
        .into_iter()
        .filter(|v| !unreliable.iter().any(|object| is_within(&v.path, object)))
        .collect();
    problems.extend(validation);
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

/// The object a problem's path points into: `a.b[0].c` -> `a.b[0]`; a top-level path (or the
/// document itself) -> `` (everything).
fn parent_path(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(at) => &path[..at],
        None => "",
    }
}

fn is_within(path: &str, object: &str) -> bool {
    object.is_empty()
        || path
            .strip_prefix(object)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The body of `vnetd validate FILE`: prints `FILE: valid` and returns success, or prints one
/// `<path>: <message>` line per problem and returns failure (exit code 1).
pub fn cli_validate(path: &Path) -> ExitCode {
    match load_file(path) {
        Ok(_) => {
            println!("{}: valid", path.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            println!("{}", Problems(&problems));
            ExitCode::FAILURE
        }
    }
}

/// A `Spec` deserializes through the same schema walk as [`parse_str`], so that
/// `serde_json::from_value::<Spec>(...)` accepts exactly what a spec file may say. The
/// problems become one error message, one per line.
impl<'de> serde::Deserialize<'de> for Spec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let root = <value::Value as serde::Deserialize>::deserialize(deserializer)?;
        parse::spec_from_value(&root)
            .map_err(|problems| serde::de::Error::custom(Problems(&problems)))
    }
}
