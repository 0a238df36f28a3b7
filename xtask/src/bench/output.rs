//! The bench's report: the evidence counters' totals, the tables on stdout, the JSON report,
//! the README's markdown beside it and the SVG plots.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use vnetd_lab::INTERNET_HOST_IP;

use super::{
    DATAPLANES, Dp, METRICS, Metric, Quantity, Results, Scenario,
    cni::ref_plugins_conf,
    nsg, pktrate, plots,
    progrun::{Progrun, ProgrunFigure, SnatProgrun},
    report,
    report::{
        environment, first_line, fmt_num, markdown, notes, package_version, print_table,
        summary_json,
    },
    retrans,
    testbed::Testbed,
};

/// What the scenarios measured beside `Results`.
pub(super) struct Measurements<'a> {
    /// How long the measuring took (the schedule, retransmissions, packet rate, flow setup).
    pub(super) measuring: Duration,
    pub(super) progrun: &'a Progrun,
    /// Every round trip of the valid pod-to-pod TCP_RR runs, per dataplane.
    pub(super) rr_latencies: &'a [Vec<f64>; 2],
    pub(super) retrans_runs: &'a [Value],
    pub(super) rates: &'a pktrate::Measured,
}

/// Prints the evidence counters' totals and the tables, writes the JSON report to `out_path`,
/// the markdown beside it and the plots. Returns the report and the markdown's path (the
/// control plane is added to both after the lab is gone).
pub(super) fn write(
    tb: &Testbed,
    results: &Results,
    m: Measurements<'_>,
    out_path: &Path,
) -> Result<(Value, PathBuf)> {
    let (sel, reps, durations) = (&tb.sel, tb.reps, tb.durations);
    let (node, rnode, nf_call, ref_rules) = (&tb.node, &tb.rnode, &tb.nf_call, tb.ref_rules);
    let (va, vb, ra_ip, rb_ip) = (&tb.va, &tb.vb, tb.ra_ip, tb.rb_ip);
    let Measurements {
        measuring,
        progrun,
        rr_latencies,
        retrans_runs,
        rates,
    } = m;
    let (progrun_fields, progrun, progrun_figures) =
        (progrun.report_fields(), &progrun.first, &progrun.figures);
    let packet_rate =
        (!rates.runs.is_empty()).then(|| pktrate::summary(&rates.samples, &rates.runs));
    let rate_paired = pktrate::paired(&rates.runs);
    let valid_retrans = retrans::valid(retrans_runs);

    let vnetd_packets = tb.evidence(Scenario::PodToPod, Dp::Vnetd)?[0];
    let ref_fw_packets = tb.evidence(Scenario::PodToPod, Dp::Reference)?[0];
    let vnetd_internet = tb.evidence(Scenario::PodToInternet, Dp::Vnetd)?;
    let ref_masquerade_packets = tb.evidence(Scenario::PodToInternet, Dp::Reference)?[0];
    println!(
        "\n   packets seen: vnetd pod_to_pod {vnetd_packets}, pod_to_internet {}, \
         internet_to_pod {}; reference node's FORWARD -> CNI-FORWARD rule {ref_fw_packets}, \
         MASQUERADE rules {ref_masquerade_packets}; {} invalid run(s)",
        vnetd_internet[0], vnetd_internet[1], results.invalid
    );

    let env = environment();
    let ref_config = json!({
        "plugins": ref_plugins_conf(rnode),
        "package": package_version("containernetworking-plugins"),
        "bridge_nf_call_iptables": nf_call,
        "iptables": first_line(Command::new("iptables").arg("--version")),
        "iptables_rules_in_node": ref_rules,
        "forward_to_cni_forward_packets": ref_fw_packets,
        "masquerade_packets": ref_masquerade_packets,
    });
    let notes = notes(&env, results);
    print_table(results, &env, nf_call, reps, &notes);
    if packet_rate.is_some() {
        report::print_packet_rate(&rates.samples, &rate_paired);
    }
    report::print_progrun_table(progrun_figures);
    let progrun_ns = progrun.as_ref().ok().and_then(|v| v["ns_per_run"].as_f64());
    let progrun_snat = progrun.as_ref().ok().and_then(SnatProgrun::of);
    if let Some(ns) = progrun_ns {
        println!(
            "   BPF_PROG_RUN pod_ingress (vnetd only): {} ns per run",
            fmt_num(ns)
        );
    }
    if let Some(snat) = &progrun_snat {
        println!(
            "   BPF_PROG_RUN pod_ingress, SNAT of an established flow (vnetd only): {} ns per \
             run, one run per call (pod to pod the same way: {} ns)",
            fmt_num(snat.ns),
            fmt_num(snat.pod_to_pod_ns)
        );
    }
    let mut report = json!({
        "environment": env,
        "quick": tb.quick,
        "repetitions": reps,
        "durations_s": {
            "tcp_bulk": durations.bulk, "tcp_rr": durations.rr.as_secs_f64(), "udp": durations.udp,
            "connect": durations.connect.as_secs_f64(),
        },
        "connect_clients": durations.connect_clients,
        "measuring_s": measuring.as_secs_f64(),
        "scenario": "pod to pod on one node, 2 pods per node namespace; pod to the internet \
                     host through the node's address (the lab's fabric and edge router in \
                     between); pod to pod with an NSG of N rules on the server's subnet (the \
                     reference: the same rules in an iptables chain jumped to from FORWARD); \
                     one run at a time, dataplanes alternated per run",
        "scenarios": sel.0,
        "internet_server": INTERNET_HOST_IP.to_string(),
        "internet_source_seen": tb.internet_sources,
        "unavailable": results.unavailable.iter()
            .map(|(s, dp, why)| json!({ "scenario": s.key(), "dataplane": dp.key(), "why": why }))
            .collect::<Vec<_>>(),
        "vnetd": {
            "node": "node-1", "node_ip": node.ip.to_string(),
            "client": va.ip.to_string(), "server": vb.ip.to_string(),
            "pod_to_pod_packets": vnetd_packets,
            "pod_to_internet_packets": vnetd_internet[0],
            "internet_to_pod_packets": vnetd_internet[1],
        },
        "reference": {
            "node": "ref", "node_ip": rnode.ip.to_string(),
            "client": ra_ip.to_string(), "server": rb_ip.to_string(),
            "config": ref_config,
        },
        "metrics": METRICS.iter().map(|&m| summary_json(results, m)).collect::<Vec<_>>(),
        "runs": results.runs,
        "packet_rate": packet_rate,
        "flow_setup": rates.flow_setup.as_ref().map(|(summary, _)| summary),
        "retransmissions": (!retrans_runs.is_empty()).then(|| json!({
            "what": "TCP bulk pod to pod (iperf3, one stream) with the sender (client) and \
                     receiver (server) unpinned, on CPUs 0 and 1, and both on CPU 0; counter \
                     deltas of both ends and packets processed per CPU",
            "runs": retrans_runs,
        })),
        "invalid_runs": results.invalid,
        "notes": notes,
    });
    if let Some(fields) = report.as_object_mut() {
        fields.extend(progrun_fields);
    }
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let plots = draw_plots(out_path, results, progrun_figures, rr_latencies);
    report["plots"] = json!(
        plots
            .iter()
            .map(|(p, what)| json!({ "file": p.file_name().map(|f| f.to_string_lossy()), "what": what }))
            .collect::<Vec<_>>()
    );
    std::fs::write(out_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out_path.display()))?;
    let md_path = out_path.with_extension("md");
    let mut md = markdown(
        results,
        &env,
        reps,
        tb.quick,
        report::ProgrunRows {
            ns: progrun_ns,
            snat: progrun_snat.as_ref(),
            figures: progrun_figures,
        },
        packet_rate.as_ref().map(|_| (&rates.samples, &rate_paired)),
        out_path,
    );
    if let Some((_, table)) = &rates.flow_setup {
        md += table;
    }
    if !valid_retrans.is_empty() {
        md += &retrans::markdown(&valid_retrans);
    }
    if !plots.is_empty() {
        md.push('\n');
        for (p, what) in &plots {
            if let Some(f) = p.file_name() {
                md += &format!("![{what}]({})\n", f.to_string_lossy());
            }
        }
    }
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    println!(
        "\n   report: {} (table for the README: {}){}",
        out_path.display(),
        md_path.display(),
        plots
            .iter()
            .map(|(p, _)| format!("\n   plot: {}", p.display()))
            .collect::<String>()
    );

    Ok((report, md_path))
}

/// The SVG plots beside the report at `out` (`<stem>-<name>.svg`) for what this run measured:
/// new connections per second against the NSG's rule count, the BPF_PROG_RUN first-packet
/// cost against it, the pod-to-pod TCP_RR latency distribution. Returns (file, what); a plot
/// that fails is reported and left out.
fn draw_plots(
    out: &Path,
    results: &Results,
    progrun: &[ProgrunFigure],
    rr: &[Vec<f64>; 2],
) -> Vec<(PathBuf, String)> {
    let stem = out
        .file_stem()
        .map_or("report".into(), |s| s.to_string_lossy().into_owned());
    let file = |name: &str| out.with_file_name(format!("{stem}-{name}.svg"));
    let mut done = Vec::new();
    let mut keep = |path: PathBuf, what: &str, r: Result<()>| match r {
        Ok(()) => done.push((path, what.to_string())),
        Err(e) => println!("   plot {} not drawn: {e:#}", path.display()),
    };
    let nsg_rate = |dp: Dp| plots::Curve {
        label: match dp {
            Dp::Vnetd => "vnetd",
            Dp::Reference => "bridge + iptables (rules in FORWARD)",
        },
        points: nsg::RULE_COUNTS
            .iter()
            .map(|&n| {
                let m = Metric {
                    scenario: Scenario::NsgPodToPod(n),
                    quantity: Quantity::ConnRate,
                };
                (f64::from(n), results.get(dp, m))
            })
            .collect(),
    };
    let curves = DATAPLANES.map(nsg_rate);
    if curves
        .iter()
        .any(|c| c.points.iter().any(|(_, v)| !v.is_empty()))
    {
        let (path, what) = (
            file("nsg-connections"),
            "New TCP connections per second pod to pod against rules per NSG",
        );
        let r = plots::against_rules(&path, what, "connections/s", &curves);
        keep(path, what, r);
    }
    let first_packet: Vec<(f64, &[f64])> = nsg::RULE_COUNTS
        .iter()
        .filter_map(|&n| {
            let key = format!("nsg_first_packet_ns_rules_{n}");
            let f = progrun.iter().find(|f| f.key == key)?;
            Some((f64::from(n), &f.samples[..]))
        })
        .collect();
    if !first_packet.is_empty() {
        let (path, what) = (
            file("nsg-first-packet"),
            "vnetd pod_ingress, NSG first packet (BPF_PROG_RUN) against rules per NSG",
        );
        let r = plots::against_rules(
            &path,
            what,
            "ns per packet",
            &[plots::Curve {
                label: "vnetd",
                points: first_packet,
            }],
        );
        keep(path, what, r);
    }
    if rr.iter().any(|v| !v.is_empty()) {
        let mut sorted = rr.clone();
        for v in &mut sorted {
            v.sort_by(f64::total_cmp);
        }
        let (path, what) = (
            file("tcp-rr-latency"),
            "TCP_RR round trips pod to pod, 1 byte each way: latency distribution",
        );
        let r = plots::latency_distribution(
            &path,
            what,
            &[("vnetd", &sorted[0]), ("bridge + iptables", &sorted[1])],
        );
        keep(path, what, r);
    }
    done
}
