//! New flows per second at the dataplane (issue 11's connection-rate targets, measured where
//! the dataplane does its work): the packet-rate scenario's XDP live-frames generator sends TCP
//! SYNs, each of a tuple not seen before (source ports in turn, the destination port moving on
//! after each round), from one pod to another while the receiving pod's subnet has an NSG of
//! [`RULES`] rules, counted and dropped at the receiving pod. Every frame is a new flow: vnetd
//! classifies it against the NSG and inserts its two flow entries (and a flow-log record); the
//! reference creates a conntrack entry and walks the same rules as iptables rules in FORWARD.
//! The frames' ports are ones no rule names, so every rule is looked at and the default rule
//! (vnetd: Azure's AllowVnetInBound; the reference: FORWARD's accept of the pod's traffic)
//! lets them through.
//!
//! The tables fill within the first second of a run (vnetd: [`vnetd_common::maps::NEW_FLOWS_MAX`]
//! entries, two per flow; the reference: `nf_conntrack_max`), so what is measured is the
//! sustained rate with each new flow taking the place of an old one (vnetd's LRU eviction, the
//! reference's early drop of unanswered entries), as under a flood of new connections. The
//! connection-rate scenarios (`nsg`, `pod_to_internet`) measure whole connections through both
//! pods' socket stacks, which bound them on this machine.

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use vnetd_lab::{INTERNET_HOST_IP, Node, vnetd::Agent};

use super::{
    measure::{forward_to_cni_packets, masquerade_packets},
    nsg,
    pktrate::{self, Traffic},
    report::{cell, median, summary_of},
    step,
    testbed::Testbed,
};

/// The NSG sizes measured.
pub(super) const RULES: [u32; 2] = [1, 1000];

/// TCP SYNs from 16,384 source ports of the ephemeral range (Linux's starts at 32768; so
/// does vnetd's default SNAT range, which keeps a flow's own port when it is free) to 50,000
/// destination ports from 10,000: 800 million tuples, none repeated in a run (the NSG's rules
/// name ports 1000-1998 and 7100). Half the SNAT range per destination: the translated
/// flows never run out of ports.
pub(super) const TRAFFIC: Traffic = Traffic {
    tcp_syn: true,
    sport: 32_768,
    sports: 16_384,
    dport: 10_000,
    dports: 50_000,
};

/// The dataplanes, in the order of [`pktrate::Path`]s given to [`measure`].
const PLANES: [&str; 2] = ["vnetd", "reference"];

/// Where a run's SYNs go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// To the other pod, past the NSG of its subnet.
    PodToPod,
    /// To the internet host, translated to the node's address.
    Internet,
}

/// Received SYNs per second (thousands), per dataplane ([`PLANES`]): pod to pod per NSG size
/// ([`RULES`]), and to the internet (with the NSG of one rule).
#[derive(Default)]
pub(super) struct Samples {
    pod_to_pod: [[Vec<f64>; 2]; RULES.len()],
    internet: [Vec<f64>; 2],
}

/// Measures vnetd (`paths[0]`, `internet[0]`) and the reference (`paths[1]`, `internet[1]`)
/// with an NSG of each of [`RULES`] rules (to the internet: with the first), `reps` runs of
/// `secs` seconds each, the order alternating; removes the NSG after. Returns the samples and
/// the runs' JSON; runs whose dataplane's counters did not move enough are counted in
/// `invalid` and left out of the samples.
#[allow(clippy::too_many_arguments)]
pub(super) fn measure(
    paths: &[pktrate::Path],
    internet: &[pktrate::Path],
    agent: &Agent,
    base_spec: &str,
    rnode: &Node,
    reps: u32,
    secs: f64,
    invalid: &mut u32,
) -> Result<(Samples, Vec<Value>)> {
    let mut samples = Samples::default();
    let mut runs = Vec::new();
    for (r, rules) in RULES.into_iter().enumerate() {
        nsg::apply(agent, base_spec, rnode, Some(rules))?;
        println!("   NSG of {rules} rule(s) on the receiving pod's subnet, both dataplanes");
        let ways: &[Way] = if r == 0 {
            &[Way::PodToPod, Way::Internet]
        } else {
            &[Way::PodToPod]
        };
        for rep in 0..reps as usize {
            for (k, &way) in (0..PLANES.len()).flat_map(|k| ways.iter().map(move |w| (k, w))) {
                let plane = (rep + k) % PLANES.len();
                let (path, to) = match way {
                    Way::PodToPod => (&paths[plane], "pod"),
                    Way::Internet => (&internet[plane], "internet"),
                };
                // vnetd: flow entries the programs created; the reference: packets FORWARD
                // passed on to the CNI plugins' chain (after the NSG's chain), or connections
                // MASQUERADE translated.
                let evidence = || -> Result<u64> {
                    match (plane, way) {
                        (0, _) => entries_created(agent),
                        (_, Way::PodToPod) => forward_to_cni_packets(rnode),
                        (_, Way::Internet) => masquerade_packets(rnode),
                    }
                };
                let before = evidence()?;
                let drops_before = drops(agent)?;
                let mut run = match pktrate::run(path, secs, &TRAFFIC) {
                    Ok(run) => run,
                    Err(e) => {
                        let why = format!("{e:#}");
                        println!(
                            "   rep {} {:<10} to {to}: NOT MEASURED: {why}",
                            rep + 1,
                            PLANES[plane]
                        );
                        runs.push(json!({
                            "rep": rep + 1, "dataplane": PLANES[plane], "nsg_rules": rules,
                            "to": to, "error": why,
                        }));
                        continue;
                    }
                };
                let after = evidence()?;
                // vnetd's drops by reason during the run (any plane's run: none expected
                // during the reference's).
                let dropped: serde_json::Map<String, Value> = drops(agent)?
                    .into_iter()
                    .filter_map(|(reason, n)| {
                        let d = n - drops_before.get(&reason).copied().unwrap_or(0);
                        (d > 0).then(|| (reason, json!(d)))
                    })
                    .collect();
                let received = run["received"].as_u64().unwrap_or(0);
                let kfps = 1000.0 * run["received_mpps"].as_f64().unwrap_or(f64::NAN);
                // Each SYN received must have been a flow of its own: vnetd created two
                // entries for it (the generator's warm-up frames add more).
                let valid = match plane {
                    0 => after - before >= 2 * received,
                    _ => after - before >= received,
                } && received > 0;
                print!(
                    "   rep {} {:<10} to {to:<8} {} rule(s): {:.1} k new flows/s received ({:.1} \
                     k sent)",
                    rep + 1,
                    PLANES[plane],
                    rules,
                    kfps,
                    1000.0 * run["sent_mpps"].as_f64().unwrap_or(f64::NAN)
                );
                if valid {
                    match way {
                        Way::PodToPod => samples.pod_to_pod[r][plane].push(kfps),
                        Way::Internet => samples.internet[plane].push(kfps),
                    }
                } else {
                    *invalid += 1;
                    print!(
                        "  INVALID: the dataplane's counter moved by {}",
                        after - before
                    );
                }
                if !dropped.is_empty() {
                    print!("  vnetd dropped {}", Value::Object(dropped.clone()));
                }
                println!();
                run["rep"] = json!(rep + 1);
                run["dataplane"] = json!(PLANES[plane]);
                run["nsg_rules"] = json!(rules);
                run["to"] = json!(to);
                run["evidence"] = json!({ "before": before, "after": after });
                run["vnetd_drops"] = Value::Object(dropped);
                run["valid"] = json!(valid);
                runs.push(run);
            }
        }
    }
    nsg::apply(agent, base_spec, rnode, None)?;
    Ok((samples, runs))
}

/// vnetd's drop counters by reason, from the agent's status.
fn drops(agent: &Agent) -> Result<std::collections::BTreeMap<String, u64>> {
    let status = agent.status()?;
    Ok(status["drops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d[0].as_str()?.to_string(), d[1].as_u64()?)))
        .collect())
}

/// The programs' count of flow entries created (two per flow), from the agent's status.
fn entries_created(agent: &Agent) -> Result<u64> {
    let status = agent.status()?;
    let events = status["conntrack"]["events"].as_array().cloned();
    Ok(events
        .unwrap_or_default()
        .iter()
        .find(|e| e[0] == "entries_created")
        .and_then(|e| e[1].as_u64())
        .unwrap_or(0))
}

impl Samples {
    fn ratio(v: &[Vec<f64>; 2]) -> f64 {
        median(&v[0]) / median(&v[1])
    }

    /// The report's JSON section.
    pub(super) fn summary(&self, runs: Vec<Value>) -> Value {
        let by_rules: Vec<Value> = RULES
            .iter()
            .zip(&self.pod_to_pod)
            .map(|(rules, v)| {
                json!({
                    "nsg_rules": rules,
                    "vnetd": summary_of(&v[0]),
                    "reference": summary_of(&v[1]),
                    "ratio_vnetd_over_reference": Self::ratio(v),
                })
            })
            .collect();
        json!({
            "unit": "thousand new flows per second received (TCP SYNs, each a new tuple, counted \
                     and dropped at the receiver)",
            "generator_cpu": pktrate::CPU,
            "source_ports": TRAFFIC.sports,
            "destination_ports": TRAFFIC.dports,
            "pod_to_pod_by_nsg_rules": by_rules,
            "to_internet": {
                "nsg_rules": RULES[0],
                "vnetd": summary_of(&self.internet[0]),
                "reference": summary_of(&self.internet[1]),
                "ratio_vnetd_over_reference": Self::ratio(&self.internet),
            },
            "runs": runs,
        })
    }

    /// The report's table (Markdown).
    pub(super) fn markdown(&self) -> String {
        let mut md = String::from(
            "\nNew flows per second at the dataplane (TCP SYNs of new tuples from the XDP \
             live-frames generator on CPU 0, counted and dropped at the receiver; the flow \
             tables full, each new flow replacing an old one; thousands of flows/s, median \
             [spread]):\n\n| path | vnetd | bridge + iptables | vnetd / reference |\n\
             |---|---|---|---|\n",
        );
        let row = |what: String, v: &[Vec<f64>; 2]| {
            format!(
                "| {what} | {} | {} | {:.2} |\n",
                cell(&v[0]),
                cell(&v[1]),
                Self::ratio(v)
            )
        };
        for (rules, v) in RULES.iter().zip(&self.pod_to_pod) {
            md += &row(
                format!("pod to pod, NSG of {rules} rule(s) on the receiver's subnet"),
                v,
            );
        }
        md += &row(
            format!(
                "pod to the internet through SNAT (reference: MASQUERADE), NSG of {} rule(s)",
                RULES[0]
            ),
            &self.internet,
        );
        md
    }
}

/// New flows per second in the bench's lab, from the packet-rate scenario's paths of vnetd
/// (`paths[0]`) and the reference (`paths[1]`), pod to pod and to the internet host. Returns
/// the report's summary and its markdown table; invalid runs are counted in `invalid`.
pub(super) fn measure_in_lab(
    tb: &Testbed,
    paths: &[pktrate::Path],
    secs: f64,
    invalid: &mut u32,
) -> Result<(Value, String)> {
    let (lab, agent, base_spec, rnode, reps) =
        (&tb.lab, &tb.agent, &tb.base_spec, &tb.rnode, tb.reps);
    step(&format!(
        "new flows per second: TCP SYNs of new tuples, the packet-rate generator on CPU \
         {}, vnetd and the reference with an NSG of {:?} rules; {reps} repetition(s) of \
         {secs} s per dataplane",
        pktrate::CPU,
        RULES
    ));
    // The same pods' SYNs to the internet host, through SNAT (the reference:
    // MASQUERADE).
    let internet = |p: &pktrate::Path| -> Result<pktrate::Path> {
        Ok(pktrate::Path {
            plane: p.plane,
            tx: p.tx.clone(),
            rx: lab.internet().clone(),
            node: p.node.clone(),
            src_ip: p.src_ip,
            dst_ip: INTERNET_HOST_IP,
            dst_mac: pktrate::gateway_mac(&p.tx, INTERNET_HOST_IP)?,
            tx_host_veth: p.tx_host_veth.clone(),
            bare_to: None,
        })
    };
    let to_internet = [internet(&paths[0])?, internet(&paths[1])?];
    let (samples, runs) = measure(
        &paths[..2],
        &to_internet,
        agent,
        base_spec,
        rnode,
        reps,
        secs,
        invalid,
    )
    .context("measuring new flows per second")?;
    let summary = samples.summary(runs);
    println!("{}", samples.markdown());
    Ok((summary, samples.markdown()))
}
