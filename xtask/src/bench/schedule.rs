//! The schedule of paired runs ([`super::SCHEDULE`]): iperf3 bulk, TCP_RR, UDP and new
//! connections per scenario, one run at a time, both dataplanes alternating, each run checked
//! by its dataplane's evidence counters.

use std::time::Instant;

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    DATAPLANES, Dp, Kind, Metric, Results, Scenario, measure::measure, nsg, report::fmt_num, step,
    testbed::Testbed,
};

/// Runs the selected schedule, `tb.reps` times, into `results`; `started` is when the
/// measuring began (the runs' progress shows the time since). Returns every round trip of the
/// valid pod-to-pod TCP_RR runs, per dataplane (for the plot).
pub(super) fn run(tb: &Testbed, results: &mut Results, started: Instant) -> Result<[Vec<f64>; 2]> {
    let (sel, reps, durations) = (&tb.sel, tb.reps, tb.durations);
    let (agent, base_spec, rnode) = (&tb.agent, &tb.base_spec, &tb.rnode);
    step(&format!(
        "measuring: {reps} repetition(s), bulk {} s, TCP_RR {} s, UDP {} s, new connections {} s \
         from {} parallel clients per run, one run at a time",
        durations.bulk,
        durations.rr.as_secs_f64(),
        durations.udp,
        durations.connect.as_secs_f64(),
        durations.connect_clients,
    ));
    // The rules per NSG in place on both dataplanes (none: no NSG).
    let mut nsg_applied: Option<u32> = None;
    // Every round trip of the valid pod-to-pod TCP_RR runs, per dataplane (for the plot).
    let mut rr_latencies: [Vec<f64>; 2] = Default::default();
    let total_runs = reps as usize * sel.schedule().len() * DATAPLANES.len();
    let mut run_no = 0;
    for rep in 0..reps {
        let order = if rep % 2 == 0 {
            [Dp::Vnetd, Dp::Reference]
        } else {
            [Dp::Reference, Dp::Vnetd]
        };
        for (scenario, kind) in sel.schedule() {
            if scenario.nsg_rules() != nsg_applied {
                let t = Instant::now();
                nsg::apply(agent, base_spec, rnode, scenario.nsg_rules())
                    .context("changing the NSG")?;
                nsg_applied = scenario.nsg_rules();
                println!(
                    "   NSG of {} rule(s) on both dataplanes (applied in {:.2} s)",
                    nsg_applied.map_or("no".into(), |n| n.to_string()),
                    t.elapsed().as_secs_f64()
                );
            }
            for dp in order {
                if results.unavailable(scenario, dp).is_some() {
                    continue;
                }
                let pair = tb.pair(scenario, dp);
                let before = tb.evidence(scenario, dp)?;
                let run = measure(kind, pair, durations).with_context(|| {
                    format!(
                        "{} {} run {} for {}",
                        scenario.key(),
                        kind.key(),
                        rep + 1,
                        dp.key()
                    )
                })?;
                let after = tb.evidence(scenario, dp)?;
                let valid = before.iter().zip(&after).all(|(b, a)| a > b);
                if valid && scenario == Scenario::PodToPod && kind == Kind::Rr {
                    rr_latencies[dp as usize].extend_from_slice(&run.latencies_us);
                }
                run_no += 1;
                print!(
                    "   [{run_no}/{total_runs} {:>4.0} s] rep {} {:<9} {:<15} {:<7}",
                    started.elapsed().as_secs_f64(),
                    rep + 1,
                    dp.key(),
                    match scenario.nsg_rules() {
                        Some(n) => format!("nsg {n} rules"),
                        None => scenario.key().to_string(),
                    },
                    kind.key()
                );
                for (quantity, value) in &run.values {
                    let metric = Metric {
                        scenario,
                        quantity: *quantity,
                    };
                    if valid {
                        results.add(dp, metric, *value);
                    }
                    print!("  {} {}", quantity.key(), fmt_num(*value));
                }
                if !valid {
                    results.invalid += 1;
                    let still: Vec<_> = scenario
                        .evidence(dp)
                        .iter()
                        .zip(before.iter().zip(&after))
                        .filter(|(_, (b, a))| a <= b)
                        .map(|(name, _)| *name)
                        .collect();
                    print!("  INVALID: {} did not move", still.join(", "));
                }
                if let Some(r) = run.details.get("sender_retrans_segs") {
                    print!(
                        "  (retransmitted segments {r}, of which reported duplicate {})",
                        run.details["sender_dsack_recv_segs"]
                    );
                }
                if let Some(f) = run.details.get("failed")
                    && f.as_u64() != Some(0)
                {
                    print!("  (FAILED connections {f}: {})", run.details["errors"]);
                }
                println!();
                results.runs.push(json!({
                    "rep": rep + 1,
                    "dataplane": dp.key(),
                    "scenario": scenario.key(),
                    "nsg_rules": scenario.nsg_rules(),
                    "kind": kind.key(),
                    "values": run.values.iter()
                        .map(|(q, v)| (Metric { scenario, quantity: *q }.key(), json!(v)))
                        .collect::<serde_json::Map<_, _>>(),
                    "details": run.details,
                    "evidence": scenario.evidence(dp).iter().zip(before.iter().zip(&after))
                        .map(|(name, (b, a))| json!({
                            "counter": name, "before": b, "after": a,
                            "packets": a.saturating_sub(*b),
                        }))
                        .collect::<Vec<_>>(),
                    "valid": valid,
                }));
            }
        }
    }
    if nsg_applied.is_some() {
        nsg::apply(agent, base_spec, rnode, None).context("removing the NSG")?;
    }

    Ok(rr_latencies)
}
