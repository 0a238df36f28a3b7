//! NSG cost against rule count, end to end (issue 9's bench part, issue 11's curve): new
//! connections per second pod to pod while the server pod's subnet has an NSG of N rules,
//! vnetd against the same rules as iptables rules in the reference node's FORWARD path.
//!
//! The N rules are the same on both sides, in the same order: N - 1 that the test's traffic
//! does not match (each a deny of TCP to a /32 of 172.16.0.0/12 and a port of its own, so the
//! tables grow with the rules and a walk must look at each), then the one that allows the
//! test's port, last. vnetd gets them as an inbound NSG on subnet `apps` (priorities 100 up,
//! a spec reload); the reference as a chain [`CHAIN`] jumped to from the top of FORWARD (which
//! bridged pod-to-pod frames reach through bridge netfilter), the allow as its last rule.
//! The reference's rules are not stateful: every packet of a connection walks them, replies
//! included (they fall through the chain to the firewall plugin's rules), as iptables NSG
//! translations without a conntrack shortcut do.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use vnetd_lab::{Node, vnetd::Agent};

use super::measure::NSG_RULE_COUNTS;

/// The port the NSG's last rule allows and the connection server listens on.
pub(super) const PORT: u16 = 7100;
/// The reference node's chain of the NSG's rules.
pub(super) const CHAIN: &str = "VNB-NSG";
/// The NSG's name in vnetd's spec.
const NSG_NAME: &str = "bench-nsg";

/// The rule counts the connection rate is measured at (the BPF_PROG_RUN benchmark's).
pub(super) const RULE_COUNTS: [u32; 4] = NSG_RULE_COUNTS;

/// A rule the test's traffic does not match: TCP to `172.16.x.y/32`, port `1000 + i`.
fn unmatched(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(0xac10_0000 + i),
        1000 + u16::try_from(i).expect("at most 1000 rules"),
    )
}

/// `spec` (the lab's) with an inbound NSG of `rules` rules on subnet `apps`, the last one
/// allowing TCP to [`PORT`].
pub(super) fn spec_with_nsg(spec: &str, rules: u32) -> Result<String> {
    ensure!(
        (1..=1000).contains(&rules),
        "an NSG has 1 to 1000 rules, not {rules}"
    );
    let apps = "    - name: apps\n      addressPrefix: 10.0.2.0/23\n";
    let at = spec
        .find(apps)
        .map(|i| i + apps.len())
        .context("the lab's spec has no subnet apps with prefix 10.0.2.0/23")?;
    ensure!(
        !spec.contains("\nnetworkSecurityGroups:"),
        "the lab's spec already has networkSecurityGroups"
    );
    let mut out = format!(
        "{}      networkSecurityGroup: {NSG_NAME}\n{}",
        &spec[..at],
        &spec[at..]
    );
    out = out.trim_end().to_string();
    out.push_str(&format!(
        "\nnetworkSecurityGroups:\n  - name: {NSG_NAME}\n    securityRules:\n"
    ));
    let rule = |name: String, priority: u32, access: &str, dst: String, port: u16| {
        format!(
            "      - {{ name: {name}, priority: {priority}, direction: Inbound, access: {access}, \
             protocol: Tcp, sourceAddressPrefix: \"*\", sourcePortRange: \"*\", \
             destinationAddressPrefix: \"{dst}\", destinationPortRange: \"{port}\" }}\n"
        )
    };
    for i in 0..rules - 1 {
        let (dst, port) = unmatched(i);
        out.push_str(&rule(
            format!("deny-{i}"),
            100 + i,
            "Deny",
            format!("{dst}/32"),
            port,
        ));
    }
    out.push_str(&rule(
        "allow-bench".into(),
        100 + rules - 1,
        "Allow",
        "*".into(),
        PORT,
    ));
    Ok(out)
}

/// The `iptables-restore --noflush` input that fills [`CHAIN`] with the same `rules` rules.
pub(super) fn iptables_rules(rules: u32) -> String {
    let mut out = format!("*filter\n:{CHAIN} - [0:0]\n");
    for i in 0..rules.saturating_sub(1) {
        let (dst, port) = unmatched(i);
        out.push_str(&format!(
            "-A {CHAIN} -p tcp -d {dst}/32 --dport {port} -j DROP\n"
        ));
    }
    out.push_str(&format!(
        "-A {CHAIN} -p tcp --dport {PORT} -j ACCEPT\nCOMMIT\n"
    ));
    out
}

/// Puts an NSG of `rules` rules (or none) on both dataplanes: vnetd by a spec reload (waited
/// for), the reference by refilling [`CHAIN`] and jumping to it from the top of FORWARD.
pub(super) fn apply(
    agent: &Agent,
    base_spec: &str,
    rnode: &Node,
    rules: Option<u32>,
) -> Result<()> {
    let before = agent.status()?;
    let (ok, failed) = (
        before["reloads_ok"].as_u64().unwrap_or(0),
        before["reloads_failed"].as_u64().unwrap_or(0),
    );
    let spec = match rules {
        Some(n) => spec_with_nsg(base_spec, n)?,
        None => base_spec.to_string(),
    };
    agent.write_spec(&spec)?;
    let applied = vnetd_lab::wait_for(Duration::from_secs(30), || {
        agent.status().is_ok_and(|s| {
            s["reloads_ok"].as_u64() > Some(ok) || s["reloads_failed"].as_u64() > Some(failed)
        })
    });
    let after = agent.status()?;
    if !applied || after["reloads_failed"].as_u64() > Some(failed) {
        bail!(
            "vnetd did not apply the spec with an NSG of {rules:?} rules (reloads ok {} failed \
             {}):\n{}",
            after["reloads_ok"],
            after["reloads_failed"],
            agent
                .log()
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    let jump = ["iptables", "-w", "-C", "FORWARD", "-j", CHAIN];
    let jumping = rnode.run(jump)?.status.success();
    match rules {
        Some(n) => {
            if rnode
                .run(["iptables", "-w", "-L", CHAIN, "-n"])?
                .status
                .success()
            {
                rnode.run_ok(["iptables", "-w", "-F", CHAIN])?;
            }
            let out = rnode.run_input(
                ["iptables-restore", "-w", "--noflush"],
                iptables_rules(n).as_bytes(),
                Duration::from_secs(60),
            )?;
            ensure!(
                out.status.success(),
                "iptables-restore of {n} rules into {CHAIN} on node {}: {}",
                rnode.role,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if !jumping {
                rnode.run_ok(["iptables", "-w", "-I", "FORWARD", "1", "-j", CHAIN])?;
            }
        }
        None => {
            if jumping {
                rnode.run_ok(["iptables", "-w", "-D", "FORWARD", "-j", CHAIN])?;
                rnode.run_ok(["iptables", "-w", "-F", CHAIN])?;
                rnode.run_ok(["iptables", "-w", "-X", CHAIN])?;
            }
        }
    }
    Ok(())
}

/// The packets the allow rule of [`CHAIN`] accepted on `node`.
pub(super) fn allow_packets(node: &Node) -> Result<u64> {
    let dump = node.run_ok(["iptables-save", "-c", "-t", "filter"])?;
    let rule = format!("-A {CHAIN} -p tcp -m tcp --dport {PORT} -j ACCEPT");
    dump.lines()
        .filter(|l| l.ends_with(&rule))
        .map(super::measure::rule_packets)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vnetd_lab::vnetd::{lab_spec, validate};

    /// The NSG specs are ones the agent accepts (`vnetd validate`, when the binary is built),
    /// with the allow rule last.
    #[test]
    fn nsg_specs_validate() {
        for n in RULE_COUNTS {
            let spec = spec_with_nsg(&lab_spec(), n).unwrap();
            assert_eq!(spec.matches("direction: Inbound").count(), n as usize);
            let last = spec.lines().rev().find(|l| l.contains("priority")).unwrap();
            assert!(
                last.contains("Allow") && last.contains(&format!("priority: {}", 99 + n)),
                "{last}"
            );
            match validate(&spec) {
                None => eprintln!("vnetd not built: checking the text only"),
                Some(Err(problem)) => panic!("{n} rules: {problem}"),
                Some(Ok(())) => {}
            }
        }
        assert!(spec_with_nsg(&lab_spec(), 1001).is_err());
    }

    /// The reference's chain holds the same rules in the same order, the allow last.
    #[test]
    fn iptables_rules_mirror_the_nsg() {
        let r = iptables_rules(3);
        let rules: Vec<&str> = r.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(
            rules,
            [
                "-A VNB-NSG -p tcp -d 172.16.0.0/32 --dport 1000 -j DROP",
                "-A VNB-NSG -p tcp -d 172.16.0.1/32 --dport 1001 -j DROP",
                "-A VNB-NSG -p tcp --dport 7100 -j ACCEPT",
            ]
        );
        let spec = spec_with_nsg(&lab_spec(), 3).unwrap();
        assert!(spec.contains(
            "destinationAddressPrefix: \"172.16.0.1/32\", destinationPortRange: \"1001\""
        ));
        assert_eq!(
            iptables_rules(1000)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count(),
            1000
        );
    }
}
