//! NSG rule hits as a user reads them: from `/metrics` and from `vnetd status --json`, and the
//! check that they moved by what a test expects.
use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use serde_json::Value;

use super::Agent;
use crate::wait_for;

/// The hits of `nsg`'s rule `rule` in Prometheus text: the sum of every
/// `vnetd_nsg_rule_hits_total` series whose labels `nsg` and `rule` are these.
pub fn nsg_rule_hits_in_metrics(text: &str, nsg: &str, rule: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("vnetd_nsg_rule_hits_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let has = |key: &str, want: &str| {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .any(|(k, v)| k.trim() == key && v.trim().trim_matches('"') == want)
        };
        if has("nsg", nsg) && has("rule", rule) {
            let n = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())? as u64;
            *found.get_or_insert(0) += n;
        }
    }
    found
}

/// The hits of `nsg`'s rule `rule` in a `vnetd status --json` report. The report's layout of
/// NSG hits is the agent's to choose, so this accepts any that keeps the names as strings: a
/// row (array or object) holding the rule's name and a count, with the NSG's name in that row
/// or in one that contains it (as a value or a key); or an object keyed by rule names with
/// counts, inside one naming the NSG. Of a row's numbers it takes a field named `hits`, else
/// its only one (an array row: its last). Sums the rows found; `None` when there is none.
pub fn nsg_rule_hits_in_status(status: &Value, nsg: &str, rule: &str) -> Option<u64> {
    fn walk(v: &Value, nsg: &str, rule: &str, nsg_above: bool, found: &mut Option<u64>) {
        // (key, child): an array's children have no key.
        let children: Vec<(Option<&str>, &Value)> = match v {
            Value::Array(a) => a.iter().map(|c| (None, c)).collect(),
            Value::Object(o) => o.iter().map(|(k, c)| (Some(k.as_str()), c)).collect(),
            _ => return,
        };
        let nsg_here = nsg_above || children.iter().any(|(_, c)| c.as_str() == Some(nsg));
        let names_rule = children
            .iter()
            .any(|(k, c)| c.as_str() == Some(rule) || *k == Some(rule));
        if nsg_here && names_rule {
            let count = match v {
                Value::Object(o) => o
                    .get(rule)
                    .and_then(Value::as_u64)
                    .or_else(|| o.get("hits").and_then(Value::as_u64))
                    .or_else(|| {
                        let nums: Vec<u64> = o.values().filter_map(Value::as_u64).collect();
                        (nums.len() == 1).then(|| nums[0])
                    }),
                _ => children.iter().rev().find_map(|(_, c)| c.as_u64()),
            };
            if let Some(n) = count {
                *found.get_or_insert(0) += n;
                return;
            }
        }
        for (k, c) in children {
            walk(c, nsg, rule, nsg_here || k == Some(nsg), found);
        }
    }
    let mut found = None;
    walk(status, nsg, rule, false, &mut found);
    found
}

/// The hits of the rules named in `rules`' keys of `nsg` on `agent`, from `/metrics` and from
/// `vnetd status --json` (absent = 0).
pub fn nsg_hits(
    agent: &Agent,
    nsg: &str,
    rules: &BTreeMap<String, u64>,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let metrics = agent.metrics()?;
    let status = agent.status()?;
    Ok(rules
        .keys()
        .map(|r| {
            (
                nsg_rule_hits_in_metrics(&metrics, nsg, r).unwrap_or(0),
                nsg_rule_hits_in_status(&status, nsg, r).unwrap_or(0),
            )
        })
        .unzip())
}

/// Expected hits by rule name.
pub fn hit_counts(rules: &[(&str, u64)]) -> BTreeMap<String, u64> {
    rules.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

/// Waits (the metrics are refreshed every second) until `agent`'s hits of `nsg`'s rules have
/// grown from `before` by exactly `expected`, in `/metrics` and in the status alike; an error
/// shows every rule's growth in both.
pub fn expect_nsg_hits(
    agent: &Agent,
    nsg: &str,
    expected: &BTreeMap<String, u64>,
    before: &(Vec<u64>, Vec<u64>),
) -> Result<()> {
    let want: Vec<u64> = expected.values().copied().collect();
    let grown = |now: &[u64], then: &[u64]| -> Vec<u64> {
        now.iter()
            .zip(then)
            .map(|(n, t)| n.saturating_sub(*t))
            .collect()
    };
    let mut last = (Vec::new(), Vec::new());
    let ok = wait_for(Duration::from_secs(5), || {
        match nsg_hits(agent, nsg, expected) {
            Ok(now) => {
                last = (grown(&now.0, &before.0), grown(&now.1, &before.1));
                last.0 == want && last.1 == want
            }
            Err(_) => false,
        }
    });
    if !ok {
        let rows: Vec<String> = expected
            .iter()
            .enumerate()
            .map(|(i, (rule, n))| {
                format!(
                    "  {rule}: expected +{n}, /metrics +{}, status +{}",
                    last.0.get(i).copied().unwrap_or_default(),
                    last.1.get(i).copied().unwrap_or_default()
                )
            })
            .collect();
        anyhow::bail!(
            "the hits of {nsg} on {} did not move as expected:\n{}",
            agent.node.role,
            rows.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsg_hits_are_read_from_metrics_and_status() {
        let text = "# TYPE vnetd_nsg_rule_hits counter\n\
            vnetd_nsg_rule_hits_total{nsg=\"apps-nsg\",rule=\"deny-x\",direction=\"Inbound\",access=\"Deny\"} 3\n\
            vnetd_nsg_rule_hits_total{nsg=\"other\",rule=\"deny-x\",direction=\"Inbound\",access=\"Deny\"} 5\n";
        assert_eq!(
            nsg_rule_hits_in_metrics(text, "apps-nsg", "deny-x"),
            Some(3)
        );
        assert_eq!(nsg_rule_hits_in_metrics(text, "apps-nsg", "deny-y"), None);
        let rows = serde_json::json!({"node": "node-1", "nsg_hits": [
            ["apps-nsg", "deny-x", "Inbound", "Deny", 3],
            ["other", "deny-x", "Inbound", "Deny", 5],
        ]});
        assert_eq!(
            nsg_rule_hits_in_status(&rows, "apps-nsg", "deny-x"),
            Some(3)
        );
        let objects = serde_json::json!({"nsg_hits": [
            {"nsg": "apps-nsg", "rule": "deny-x", "direction": "Inbound", "access": "Deny", "hits": 3},
            {"nsg": "other", "rule": "deny-x", "direction": "Inbound", "access": "Deny", "hits": 5},
        ]});
        assert_eq!(
            nsg_rule_hits_in_status(&objects, "apps-nsg", "deny-x"),
            Some(3)
        );
        let nested = serde_json::json!({"nsgs": [
            {"name": "apps-nsg", "rules": [{"name": "deny-x", "hits": 3}, {"name": "y", "hits": 1}]},
            {"name": "other", "rules": [{"name": "deny-x", "hits": 5}]},
        ]});
        assert_eq!(
            nsg_rule_hits_in_status(&nested, "apps-nsg", "deny-x"),
            Some(3)
        );
        let keyed =
            serde_json::json!({"nsg_hits": {"apps-nsg": {"deny-x": 3}, "other": {"deny-x": 5}}});
        assert_eq!(
            nsg_rule_hits_in_status(&keyed, "apps-nsg", "deny-x"),
            Some(3)
        );
        assert_eq!(nsg_rule_hits_in_status(&keyed, "apps-nsg", "nope"), None);
    }
}
