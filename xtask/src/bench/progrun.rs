//! The BPF_PROG_RUN microbenchmark's share of the bench: its repetitions
//! (`agent/tests/progrun_bench.rs`, run first, before the lab), each printed as it comes, and
//! the vnetd-only figures the report shows over them.

use anyhow::Result;
use serde_json::Value;

use super::{
    Selection,
    measure::{
        NSG_RULE_COUNTS, flow_log_ring_key, nsg_established_key, nsg_first_packet_key,
        progrun_bench,
    },
    report::fmt_num,
    step,
};

/// The BPF_PROG_RUN microbenchmark's repetitions.
pub(super) struct Progrun {
    /// The first repetition that ran, or why none did.
    pub(super) first: Result<Value>,
    /// Every repetition that ran.
    pub(super) reps: Vec<Value>,
    pub(super) figures: Vec<ProgrunFigure>,
}

impl Progrun {
    /// Its fields of the report's JSON: `progrun`, `progrun_repetitions`, `progrun_figures`.
    pub(super) fn report_fields(&self) -> serde_json::Map<String, Value> {
        let figures = self
            .figures
            .iter()
            .map(|f| (f.key.clone(), super::report::summary_of(&f.samples)))
            .collect::<serde_json::Map<_, _>>();
        serde_json::Map::from_iter([
            (
                "progrun".to_string(),
                match &self.first {
                    Ok(v) => v.clone(),
                    Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                },
            ),
            (
                "progrun_repetitions".to_string(),
                Value::from(self.reps.clone()),
            ),
            ("progrun_figures".to_string(), Value::Object(figures)),
        ])
    }

    /// Runs it `reps` times if `progrun` is selected, printing each repetition.
    pub(super) fn measure(sel: &Selection, reps: u32, quick: bool) -> Progrun {
        let runs = if quick { 100_000 } else { 1_000_000 };
        if sel.has("progrun") {
            step(&format!(
                "BPF_PROG_RUN, {reps} repetition(s): pod_ingress on a 64-byte pod-to-pod frame, {runs} \
             runs; one run per call on the same frame and on a packet of an established flow \
             through SNAT; a first packet classified by an NSG of 1, 10, 100 and 1000 rules \
             (agent/tests/progrun_bench.rs)"
            ));
        }
        let mut progrun_reps = Vec::new();
        let mut progrun = Err(anyhow::anyhow!("not run"));
        for rep in (0..reps).filter(|_| sel.has("progrun")) {
            let this = progrun_bench(runs);
            match &this {
                Ok(v) => print_progrun(rep + 1, v),
                Err(e) => println!("   rep {}: skipped: {e:#}", rep + 1),
            }
            if let Ok(v) = &this {
                progrun_reps.push(v.clone());
            }
            if rep == 0 || progrun.is_err() {
                progrun = this;
            }
        }
        let progrun_figures = ProgrunFigure::all(&progrun_reps);
        Progrun {
            first: progrun,
            reps: progrun_reps,
            figures: progrun_figures,
        }
    }
}

/// One repetition's BPF_PROG_RUN figures, as they come.
fn print_progrun(rep: u32, v: &Value) {
    println!(
        "   rep {rep}: pod_ingress {} ns per run (kernel-timed; wall clock incl. syscalls {} ns)",
        fmt_num(v["ns_per_run"].as_f64().unwrap_or(f64::NAN)),
        fmt_num(v["wall_ns_per_run"].as_f64().unwrap_or(f64::NAN)),
    );
    if let Some(snat) = SnatProgrun::of(v) {
        println!(
            "   rep {rep}: SNAT, a UDP packet of an established flow to the internet: {} ns per \
             run, one run per call (pod to pod measured the same way: {} ns)",
            fmt_num(snat.ns),
            fmt_num(snat.pod_to_pod_ns),
        );
    }
    let nsg: Vec<String> = NSG_RULE_COUNTS
        .iter()
        .filter_map(|&n| {
            let ns = v[nsg_first_packet_key(n)]["ns_per_run"].as_f64()?;
            Some(format!("{n}: {}", fmt_num(ns)))
        })
        .collect();
    if !nsg.is_empty() {
        println!(
            "   rep {rep}: NSG first packet, ns per run by rules per NSG: {} (1000 / 1: {})",
            nsg.join(", "),
            v["nsg_first_packet_ratio_1000_over_1"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.2}")),
        );
    }
    let ring = |full| v[flow_log_ring_key(full)]["ns_per_run"].as_f64();
    if let (Some(drained), Some(full)) = (ring(false), ring(true)) {
        println!(
            "   rep {rep}: NSG-denied first packet (a flow-log record every run): ring drained {} \
             ns per run, ring full (no reader, counted lost) {} ns",
            fmt_num(drained),
            fmt_num(full),
        );
    }
}

/// A vnetd-only figure of the BPF_PROG_RUN benchmark, over the repetitions: a row of the
/// report and a key of the JSON.
pub(crate) struct ProgrunFigure {
    pub(crate) key: String,
    pub(crate) label: String,
    pub(crate) samples: Vec<f64>,
}

impl ProgrunFigure {
    /// The NSG figures (issue 9): the first packet's cost at each rule count, the ratio of
    /// 1000 rules to one, and an established flow's cost when the benchmark measures it.
    pub(super) fn all(reps: &[Value]) -> Vec<ProgrunFigure> {
        let samples = |f: &dyn Fn(&Value) -> Option<f64>| reps.iter().filter_map(f).collect();
        let mut figures = vec![ProgrunFigure {
            key: "route_lookup_ns".into(),
            label: "BPF_PROG_RUN `pod_ingress`, pod to pod with a route lookup per packet (a \
                    table with a route inside the VNet; without one, as above, the destination \
                    pod is found directly), ns per run"
                .into(),
            samples: samples(&|v| v["pod_ingress_route_lookup"]["ns_per_run"].as_f64()),
        }];
        figures.push(ProgrunFigure {
            key: "nsg_none_ns".into(),
            label: "BPF_PROG_RUN `pod_ingress`, the NSG benchmark's frame without an NSG, ns \
                    per run (the baseline)"
                .into(),
            samples: samples(&|v| v[nsg_first_packet_key(0)]["ns_per_run"].as_f64()),
        });
        figures.extend(NSG_RULE_COUNTS.iter().map(|&n| ProgrunFigure {
            key: format!("nsg_first_packet_ns_rules_{n}"),
            label: format!(
                "BPF_PROG_RUN `pod_ingress`, NSG first packet, {n} rule(s) per NSG, ns per run"
            ),
            samples: samples(&|v| v[nsg_first_packet_key(n)]["ns_per_run"].as_f64()),
        }));
        figures.push(ProgrunFigure {
            key: "nsg_first_packet_ratio_1000_over_1".into(),
            label: "NSG first packet, 1000 rules / 1 rule (target at most 1.5)".into(),
            samples: samples(&|v| v["nsg_first_packet_ratio_1000_over_1"].as_f64()),
        });
        // The lead adds this line to progrun_bench; with or without a rule count.
        for n in std::iter::once(None).chain(NSG_RULE_COUNTS.map(Some)) {
            let key = nsg_established_key(n);
            let found: Vec<f64> = samples(&|v| v[&key]["ns_per_run"].as_f64());
            if !found.is_empty() {
                figures.push(ProgrunFigure {
                    key: match n {
                        Some(n) => format!("nsg_established_ns_rules_{n}"),
                        None => "nsg_established_ns".into(),
                    },
                    label: match n {
                        Some(n) => format!(
                            "BPF_PROG_RUN `pod_ingress`, NSG established flow, {n} rule(s) per \
                             NSG, ns per run"
                        ),
                        None => {
                            "BPF_PROG_RUN `pod_ingress`, NSG established flow, ns per run".into()
                        }
                    },
                    samples: found,
                });
            }
        }
        // Issue 10: a reader that is away never slows the dataplane.
        for (full, key, state) in [
            (
                false,
                "flow_log_ring_drained_ns",
                "ring drained by a reader",
            ),
            (
                true,
                "flow_log_ring_full_ns",
                "ring full (no reader: the record is counted lost)",
            ),
        ] {
            figures.push(ProgrunFigure {
                key: key.into(),
                label: format!(
                    "BPF_PROG_RUN `pod_ingress`, NSG-denied first packet (a flow-log record per \
                     run), {state}, ns per run"
                ),
                samples: samples(&|v| v[flow_log_ring_key(full)]["ns_per_run"].as_f64()),
            });
        }
        figures.push(ProgrunFigure {
            key: "host_to_pod_ns".into(),
            label: "BPF_PROG_RUN `pod_egress`, the node's stack sending into a pod without an \
                    NSG (the pod found through the endpoint cache), ns per run"
                .into(),
            samples: samples(&|v| v["pod_egress_node_to_pod"]["ns_per_run"].as_f64()),
        });
        figures.retain(|f| !f.samples.is_empty());
        figures
    }
}

/// The BPF_PROG_RUN figure of the SNAT path: a packet of an established flow, one run per
/// call (a translated frame would not pass the next run's anti-spoofing), beside the pod-to-pod
/// frame measured the same way.
pub(super) struct SnatProgrun {
    pub(super) ns: f64,
    pub(super) pod_to_pod_ns: f64,
}

impl SnatProgrun {
    pub(super) fn of(progrun: &Value) -> Option<SnatProgrun> {
        Some(SnatProgrun {
            ns: progrun["pod_ingress_snat_established"]["ns_per_run"].as_f64()?,
            pod_to_pod_ns: progrun["pod_ingress_single"]["ns_per_run"].as_f64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{super::measure, ProgrunFigure};

    /// The report's BPF_PROG_RUN rows: the baseline, each rule count, the ratio, and the
    /// established flow once the benchmark prints it; medians over the repetitions.
    #[test]
    fn progrun_figures_by_rule_count() {
        let one = measure::parse_progrun(measure::tests::STDOUT).unwrap();
        let established = measure::parse_progrun(&format!(
            "{}vnetd-bench program=pod_ingress_nsg_established runs=1000 ns_per_run=95.5\n",
            measure::tests::STDOUT
        ))
        .unwrap();
        let figures = ProgrunFigure::all(&[one.clone(), established]);
        let keys: Vec<&str> = figures.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "nsg_none_ns",
                "nsg_first_packet_ns_rules_1",
                "nsg_first_packet_ns_rules_10",
                "nsg_first_packet_ns_rules_100",
                "nsg_first_packet_ns_rules_1000",
                "nsg_first_packet_ratio_1000_over_1",
                "nsg_established_ns",
            ]
        );
        assert_eq!(figures[4].samples, [130.0, 130.0]);
        assert_eq!(figures[6].samples, [95.5]);
        assert!(ProgrunFigure::all(&[]).is_empty());
    }

    /// The flow-log ring's rows follow the NSG rows when the benchmark prints them.
    #[test]
    fn progrun_figures_of_the_flow_log_ring() {
        let v = measure::parse_progrun(&format!(
            "{}vnetd-bench program=pod_ingress_nsg_denied_ring_drained runs=1000 ns_per_run=120.5\n\
             vnetd-bench program=pod_ingress_nsg_denied_ring_full runs=1000 ns_per_run=101.5 \
             lost=1000\n",
            measure::tests::STDOUT
        ))
        .unwrap();
        let figures = ProgrunFigure::all(&[v]);
        let ring: Vec<(&str, &[f64])> = figures
            .iter()
            .filter(|f| f.key.starts_with("flow_log_ring"))
            .map(|f| (f.key.as_str(), &f.samples[..]))
            .collect();
        assert_eq!(
            ring,
            [
                ("flow_log_ring_drained_ns", &[120.5][..]),
                ("flow_log_ring_full_ns", &[101.5][..])
            ]
        );
    }
}
