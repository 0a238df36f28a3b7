//! NSG rule hits by rule name. The kernel counts per (classifier id, rule index) in NSG_HITS;
//! users know rules by NSG and name. A reload that changes an NSG moves its endpoints to the
//! classifier's other id and resets the counters of the one that served (or deletes it, with
//! the NSG), so the agent carries what the retired generations counted, by name, in memory: a
//! rule's count does not go back at a reload. (A restarted agent starts from what the pinned
//! NSG_HITS holds: the classifiers it keeps.)
use std::collections::BTreeMap;

use vnetd_common::NsgRuleKey;

use crate::{
    api::proto::NsgRuleHits,
    compile::Classifier,
    dataplane::maps::nsg::table_name,
    spec::{Access, Direction},
};

/// A rule as the metrics name it: `vnetd_nsg_rule_hits_total{nsg,rule,direction,access}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleName {
    pub nsg: String,
    /// The rule's name; the defaults by their Azure names (`AllowVnetInBound`, ...).
    pub rule: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `allow` or `deny`.
    pub access: &'static str,
}

/// The rule names of the classifiers installed now: kernel id -> names by rule index.
pub type LiveRules = BTreeMap<u32, Vec<RuleName>>;

/// The names of `classifiers`' rules under their kernel ids (`ids`: kernel id by table name;
/// a classifier without an id is not installed and left out).
pub fn live_rules<'a>(
    classifiers: impl IntoIterator<Item = &'a Classifier>,
    ids: &BTreeMap<String, u32>,
) -> LiveRules {
    classifiers
        .into_iter()
        .filter_map(|c| Some((*ids.get(&table_name(c))?, rule_names(c))))
        .collect()
}

/// A classifier's rules by index, named.
pub fn rule_names(classifier: &Classifier) -> Vec<RuleName> {
    let direction = match classifier.direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    };
    classifier
        .rules
        .iter()
        .map(|rule| RuleName {
            nsg: classifier.nsg_name.clone(),
            rule: rule.name.clone(),
            direction,
            access: match rule.access {
                Access::Allow => "allow",
                Access::Deny => "deny",
            },
        })
        .collect()
}

/// The names of the live classifiers' rules and what deleted generations counted.
#[derive(Clone, Debug, Default)]
pub struct HitLedger {
    live: LiveRules,
    carried: BTreeMap<RuleName, u64>,
}

impl HitLedger {
    /// After a switch to the classifiers `live`: what the classifiers that are no longer live
    /// counted (`hits`, read just before they were deleted) is carried under their rules' names.
    pub fn switched(&mut self, live: LiveRules, hits: &BTreeMap<NsgRuleKey, u64>) {
        for (key, n) in hits {
            if live.contains_key(&key.classifier) {
                continue;
            }
            let name = self
                .live
                .get(&key.classifier)
                .and_then(|rules| rules.get(key.rule as usize));
            if let Some(name) = name {
                *self.carried.entry(name.clone()).or_default() += n;
            }
        }
        self.live = live;
    }

    /// The rule names of the classifiers installed now.
    pub fn live(&self) -> &LiveRules {
        &self.live
    }

    /// Every rule's hits: the live counters (`hits`, NSG_HITS now) plus what was carried, one
    /// line per name; live rules appear with 0 too.
    pub fn totals(&self, hits: &BTreeMap<NsgRuleKey, u64>) -> Vec<NsgRuleHits> {
        let mut totals = self.carried.clone();
        for (id, rules) in &self.live {
            for (index, name) in rules.iter().enumerate() {
                let key = NsgRuleKey {
                    classifier: *id,
                    rule: index as u32,
                };
                *totals.entry(name.clone()).or_default() += hits.get(&key).copied().unwrap_or(0);
            }
        }
        totals
            .into_iter()
            .map(|(name, hits)| NsgRuleHits {
                nsg: name.nsg,
                rule: name.rule,
                direction: name.direction.to_string(),
                access: name.access.to_string(),
                hits,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, spec::parse_str};

    const CONTRACT: &str = include_str!("../../examples/contract.yaml");

    fn classifiers(spec: &str) -> compile::NsgTables {
        let spec = parse_str(spec).expect("the spec parses");
        compile::compile(&spec, "node-1").unwrap().nsgs
    }

    fn key(classifier: u32, rule: u32) -> NsgRuleKey {
        NsgRuleKey { classifier, rule }
    }

    fn total(totals: &[NsgRuleHits], nsg: &str, rule: &str) -> Option<u64> {
        totals
            .iter()
            .find(|t| t.nsg == nsg && t.rule == rule)
            .map(|t| t.hits)
    }

    #[test]
    fn rules_are_named_with_the_defaults_by_their_azure_names() {
        let nsgs = classifiers(CONTRACT);
        let apps_in = nsgs.classifier(1).unwrap();
        let names = rule_names(apps_in);
        let line = |n: &RuleName| format!("{} {} {} {}", n.nsg, n.rule, n.direction, n.access);
        assert_eq!(
            names.iter().map(line).collect::<Vec<_>>(),
            [
                "apps-nsg allow-web-from-internet inbound allow",
                "apps-nsg AllowVnetInBound inbound allow",
                "apps-nsg AllowAzureLoadBalancerInBound inbound allow",
                "apps-nsg DenyAllInBound inbound deny",
            ]
        );
        let out = rule_names(nsgs.classifier(2).unwrap());
        assert_eq!(out[0].rule, "deny-smtp-out");
        assert_eq!((out[0].direction, out[0].access), ("outbound", "deny"));
        assert_eq!(
            out.iter().map(|n| n.rule.as_str()).collect::<Vec<_>>()[1..],
            [
                "AllowVnetOutBound",
                "AllowInternetOutBound",
                "DenyAllOutBound"
            ]
        );
    }

    #[test]
    fn live_rules_are_keyed_by_kernel_id_and_uninstalled_classifiers_left_out() {
        let nsgs = classifiers(CONTRACT);
        let apps_in = nsgs.classifier(1).unwrap();
        let aci_in = nsgs.classifier(3).unwrap();
        let ids = BTreeMap::from([(table_name(apps_in), 17)]);
        let live = live_rules([apps_in, aci_in], &ids);
        assert_eq!(live.keys().copied().collect::<Vec<_>>(), [17]);
        assert_eq!(live[&17][0].rule, "allow-web-from-internet");
    }

    /// A reload moves a changed NSG to a new kernel id: the old generation's counts are
    /// carried by name and summed with the new one's, so no rule's count goes back; a rule
    /// that is gone keeps its last count; an unchanged classifier (same id) is not carried
    /// twice.
    #[test]
    fn counts_are_summed_over_generations_by_rule_name() {
        let nsgs = classifiers(CONTRACT);
        let apps_in = nsgs.classifier(1).unwrap();
        let apps_out = nsgs.classifier(2).unwrap();
        let mut ledger = HitLedger::default();
        ledger.switched(
            BTreeMap::from([(5, rule_names(apps_in)), (6, rule_names(apps_out))]),
            &BTreeMap::new(),
        );
        let now = BTreeMap::from([(key(5, 0), 10), (key(5, 3), 2), (key(6, 0), 4)]);
        let t = ledger.totals(&now);
        assert_eq!(total(&t, "apps-nsg", "allow-web-from-internet"), Some(10));
        assert_eq!(total(&t, "apps-nsg", "DenyAllInBound"), Some(2));
        assert_eq!(total(&t, "apps-nsg", "AllowVnetInBound"), Some(0));
        assert_eq!(total(&t, "apps-nsg", "deny-smtp-out"), Some(4));

        // The inbound rules change (a rule before the first one): new id 9, rule indices move.
        let mut changed = rule_names(apps_in);
        changed.insert(
            0,
            RuleName {
                rule: "deny-probe".into(),
                ..changed[0].clone()
            },
        );
        changed[0].access = "deny";
        // Read just before id 5 was deleted: it counted 2 more meanwhile.
        let before_delete = BTreeMap::from([(key(5, 0), 12), (key(5, 3), 2), (key(6, 0), 4)]);
        ledger.switched(
            BTreeMap::from([(9, changed), (6, rule_names(apps_out))]),
            &before_delete,
        );
        let now = BTreeMap::from([(key(9, 1), 3), (key(9, 0), 1), (key(6, 0), 5)]);
        let t = ledger.totals(&now);
        assert_eq!(total(&t, "apps-nsg", "allow-web-from-internet"), Some(15));
        assert_eq!(total(&t, "apps-nsg", "deny-probe"), Some(1));
        assert_eq!(total(&t, "apps-nsg", "DenyAllInBound"), Some(2));
        assert_eq!(
            total(&t, "apps-nsg", "deny-smtp-out"),
            Some(5),
            "the unchanged outbound classifier kept its id and its counter"
        );

        // The NSG goes away entirely: its rules keep their last counts.
        ledger.switched(BTreeMap::new(), &now);
        let t = ledger.totals(&BTreeMap::new());
        assert_eq!(total(&t, "apps-nsg", "allow-web-from-internet"), Some(15));
        assert_eq!(total(&t, "apps-nsg", "deny-smtp-out"), Some(5));
        assert!(t.iter().all(|l| l.nsg == "apps-nsg"));
    }
}
