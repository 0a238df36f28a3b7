//! Network security groups and their rules: names, priorities, prefixes, Azure's limits.

use std::collections::HashMap;

use super::names::azure_name_problem;
use super::{Case, Checker};
use crate::spec::model::*;

/// Azure's limits (Azure networking limits page), as the contract quotes them.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u32> = 100..=4096;
pub const MAX_RULES_PER_NSG: usize = 1000;
pub const MAX_PREFIXES_PER_NSG: usize = 4000;
const MAX_DESCRIPTION_LEN: usize = 140;

impl<'s> Checker<'s> {
    pub(super) fn network_security_groups(&mut self) {
        let nsgs = &self.spec.network_security_groups;
        self.unique_names(
            nsgs.iter().map(|n| n.name.as_str()),
            |i| format!("networkSecurityGroups[{i}].name"),
            Case::Insensitive,
        );
        for (i, nsg) in nsgs.iter().enumerate() {
            let path = format!("networkSecurityGroups[{i}]");
            self.azure_name(&format!("{path}.name"), &nsg.name, 80);
            let rules = &nsg.security_rules;
            if rules.len() > MAX_RULES_PER_NSG {
                self.report(
                    format!("{path}.securityRules"),
                    format!(
                        "{} rules, more than the {MAX_RULES_PER_NSG} Azure allows",
                        rules.len()
                    ),
                );
            }
            // Azure counts addresses and ranges, not service tags or `*`.
            let explicit = |prefixes: &[AddressPrefix]| {
                prefixes
                    .iter()
                    .filter(|p| matches!(p, AddressPrefix::Prefix(_)))
                    .count()
            };
            let sources: usize = rules
                .iter()
                .map(|r| explicit(&r.source_address_prefixes))
                .sum();
            let destinations: usize = rules
                .iter()
                .map(|r| explicit(&r.destination_address_prefixes))
                .sum();
            for (count, side) in [(sources, "source"), (destinations, "destination")] {
                if count > MAX_PREFIXES_PER_NSG {
                    self.report(
                        format!("{path}.securityRules"),
                        format!(
                            "{count} {side} address prefixes, more than the {MAX_PREFIXES_PER_NSG} Azure allows in one network security group"
                        ),
                    );
                }
            }
            self.unique_names(
                rules.iter().map(|r| r.name.as_str()),
                |j| format!("{path}.securityRules[{j}].name"),
                Case::Insensitive,
            );
            let mut priorities: HashMap<(Direction, u32), usize> = HashMap::new();
            for (j, rule) in rules.iter().enumerate() {
                // Spelled out only for a problem: most rules have none.
                let rule_path = || format!("{path}.securityRules[{j}]");
                if let Some(message) = azure_name_problem(&rule.name, 80) {
                    self.report(format!("{}.name", rule_path()), message);
                }
                if let Some(description) = &rule.description
                    && description.chars().count() > MAX_DESCRIPTION_LEN
                {
                    self.report(
                        format!("{}.description", rule_path()),
                        format!("longer than the {MAX_DESCRIPTION_LEN} characters Azure allows"),
                    );
                }
                if !PRIORITY_RANGE.contains(&rule.priority) {
                    self.report(
                        format!("{}.priority", rule_path()),
                        format!("{} is outside 100..=4096", rule.priority),
                    );
                } else if let Some(&k) = priorities.get(&(rule.direction, rule.priority)) {
                    let other = &rules[k];
                    self.report(
                        format!("{}.priority", rule_path()),
                        format!(
                            "rule {:?} and rule {:?} (securityRules[{k}]) both have {} priority {}: priorities must be unique per direction",
                            rule.name, other.name, rule.direction, rule.priority
                        ),
                    );
                } else {
                    priorities.insert((rule.direction, rule.priority), j);
                }
                let sides = [
                    (
                        rule.source_address_prefixes.is_empty(),
                        "sourceAddressPrefix",
                    ),
                    (rule.source_port_ranges.is_empty(), "sourcePortRange"),
                    (
                        rule.destination_address_prefixes.is_empty(),
                        "destinationAddressPrefix",
                    ),
                    (
                        rule.destination_port_ranges.is_empty(),
                        "destinationPortRange",
                    ),
                ];
                for (missing, field) in sides {
                    if missing {
                        let plural = if field.ends_with("Prefix") { "es" } else { "s" };
                        self.report(
                            format!("{}.{field}", rule_path()),
                            format!("missing: give {field} or {field}{plural} (\"*\" for any)"),
                        );
                    }
                }
            }
        }
    }
}
