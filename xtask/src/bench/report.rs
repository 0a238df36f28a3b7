//! The bench's report: the summary of each metric, the table on stdout, the notes, the
//! README's markdown and the environment the numbers come from.

use std::{path::Path, process::Command};

use super::{
    Dp, METRICS, Metric, Results, Scenario,
    pktrate::Series,
    progrun::{ProgrunFigure, SnatProgrun},
    step,
};
use serde_json::{Value, json};

/// The median; NaN when there is no sample (no valid run).
pub(super) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

pub(super) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

pub(super) fn fmt_num(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub(super) fn cell(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    if v.is_empty() {
        "-".into()
    } else if v.len() == 1 {
        fmt_num(v[0])
    } else {
        format!("{} [{}-{}]", fmt_num(median(v)), fmt_num(lo), fmt_num(hi))
    }
}

/// The ratio of the medians as the table shows it ("-" without samples on either side).
pub(super) fn ratio(r: &Results, m: Metric) -> String {
    let x = median(r.get(Dp::Vnetd, m)) / median(r.get(Dp::Reference, m));
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

/// Samples with their median and spread (serde_json writes the NaN of no sample as null).
pub(super) fn summary_of(v: &[f64]) -> Value {
    let (lo, hi) = min_max(v);
    let m = median(v);
    json!({
        "samples": v, "median": m, "min": lo, "max": hi,
        "spread_percent_of_median": (hi - lo) / m * 100.0,
    })
}

/// The vnetd-only BPF_PROG_RUN rows (NSG cost against rule count), after the main table.
pub(super) fn print_progrun_table(figures: &[ProgrunFigure]) {
    if figures.is_empty() {
        return;
    }
    println!("\n   BPF_PROG_RUN, vnetd only (median [min-max] over the repetitions):");
    for f in figures {
        println!("   {:<86} | {}", f.label, cell(&f.samples));
    }
}

pub(super) fn summary_json(r: &Results, m: Metric) -> Value {
    // serde_json writes NaN and infinities as null: a metric without samples has no figures.
    let side = |dp: Dp| summary_of(r.get(dp, m));
    json!({
        "metric": m.key(),
        "label": m.label(),
        "scenario": m.scenario.key(),
        "higher_is_better": m.higher_is_better(),
        "vnetd": side(Dp::Vnetd),
        "reference": side(Dp::Reference),
        "ratio_vnetd_over_reference": median(r.get(Dp::Vnetd, m)) / median(r.get(Dp::Reference, m)),
    })
}

pub(super) fn print_table(r: &Results, env: &Value, nf_call: &str, reps: u32, notes: &[String]) {
    if !METRICS.into_iter().any(|m| r.shown(m)) {
        for n in notes {
            println!("   note: {n}");
        }
        return;
    }
    step(
        "results: pod to pod on one node, pod to internet via the node's address (median [min-max])",
    );
    println!(
        "   {} | kernel {} | {} vCPU ({}) | load average {} | {} repetition(s)",
        env["date"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["cpu_model"].as_str().unwrap_or("?"),
        env["loadavg"].as_str().unwrap_or("?"),
        reps
    );
    println!(
        "   reference: bridge + host-local + firewall (iptables), bridge-nf-call-iptables={nf_call}; \
         to internet: vnetd's SNAT against the bridge plugin's iptables MASQUERADE\n"
    );
    let w = [66, 26, 26, 10];
    println!(
        "   {:<w0$} | {:<w1$} | {:<w2$} | {:>w3$}",
        "metric",
        "vnetd",
        "bridge+iptables",
        "vnetd/ref",
        w0 = w[0],
        w1 = w[1],
        w2 = w[2],
        w3 = w[3]
    );
    println!(
        "   {}-|-{}-|-{}-|-{}",
        "-".repeat(w[0]),
        "-".repeat(w[1]),
        "-".repeat(w[2]),
        "-".repeat(w[3])
    );
    for m in METRICS.into_iter().filter(|&m| r.shown(m)) {
        let (v, b) = (r.get(Dp::Vnetd, m), r.get(Dp::Reference, m));
        println!(
            "   {:<w0$} | {:<w1$} | {:<w2$} | {:>w3$}",
            m.label(),
            side_cell(r, Dp::Vnetd, m, v),
            side_cell(r, Dp::Reference, m, b),
            ratio(r, m),
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    }
    println!();
    for n in notes {
        println!("   note: {n}");
    }
}

/// A dataplane's cell: its figures, or "not measured" when its path did not work.
fn side_cell(r: &Results, dp: Dp, m: Metric, v: &[f64]) -> String {
    if v.is_empty() && r.unavailable(m.scenario, dp).is_some() {
        "not measured".into()
    } else {
        cell(v)
    }
}

pub(super) fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

pub(super) fn package_version(pkg: &str) -> String {
    first_line(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg]))
}

/// Where and when: for the report and the table's header.
pub(super) fn environment() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let git = first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"]));
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    json!({
        "date": first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string()).unwrap_or_default(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "iperf3": first_line(Command::new("iperf3").arg("--version")),
        // What else ran: the machine is shared, and its load explains a noisy run.
        "loadavg": std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        "git": if dirty { format!("{git}-dirty") } else { git },
    })
}

/// The notes of a report: only what this run measured or this machine reports (the CPU count,
/// the UDP loss and send rate, the retransmissions), besides how the metrics are taken.
pub(super) fn notes(env: &Value, r: &Results) -> Vec<String> {
    let detail = |dp: Dp, scenario: Scenario, kind: &str, key: &str| -> Vec<f64> {
        r.runs
            .iter()
            .filter(|run| run["dataplane"] == dp.key() && run["kind"] == kind)
            .filter(|run| run["scenario"] == scenario.key())
            .filter(|run| run["valid"] == true)
            .filter_map(|run| run["details"][key].as_f64())
            .collect()
    };
    let range = |values: Vec<f64>| -> String {
        if values.is_empty() {
            return "no valid run".into();
        }
        let (lo, hi) = min_max(&values);
        if lo == hi {
            fmt_num(lo)
        } else {
            format!("{}-{}", fmt_num(lo), fmt_num(hi))
        }
    };
    // Counts: whole numbers (and 0, not the -0 of an empty float sum).
    let total = |dp: Dp, scenario: Scenario, kind: &str, key: &str| -> String {
        let sum: f64 = detail(dp, scenario, kind, key).iter().sum();
        format!("{:.0}", sum + 0.0)
    };
    let retrans = |scenario: Scenario| -> String {
        format!(
            "vnetd {} ({} reported duplicate by the receiver, DSACK: reordered, not lost), \
             reference {} ({} DSACK)",
            total(Dp::Vnetd, scenario, "bulk", "sender_retrans_segs"),
            total(Dp::Vnetd, scenario, "bulk", "sender_dsack_recv_segs"),
            total(Dp::Reference, scenario, "bulk", "sender_retrans_segs"),
            total(Dp::Reference, scenario, "bulk", "sender_dsack_recv_segs"),
        )
    };
    // The client threads of the new-connection runs (the same in every run).
    let clients = || {
        r.runs
            .iter()
            .find_map(|run| run["details"]["clients"].as_u64())
            .map_or("?".into(), |n| n.to_string())
    };
    let cpus = &env["cpus"];
    let p2p = Scenario::PodToPod;
    let inet = Scenario::PodToInternet;
    let ran = |scenario: &str, kind: &str| {
        r.runs
            .iter()
            .any(|run| run["scenario"] == scenario && run["kind"] == kind)
    };
    let mut notes = vec![format!(
        "One machine with {cpus} CPU(s) (as the kernel reports them), shared with whatever \
             else runs: numbers are noisy; compare the ratios of the same run, not absolute \
             values across runs."
    )];
    if ran("pod_to_pod", "bulk") || ran("pod_to_internet", "bulk") {
        notes.push(format!(
            "TCP bulk with one stream runs sender and receiver on the same {cpus} CPU(s): it \
             measures the whole stack, the dataplane's per-packet cost is a small part of it."
        ));
        notes.push(format!(
            "TCP bulk retransmitted segments over all runs, pod to pod: {}; to the internet: {} \
             (the pods' veths reorder when TCP sends from two CPUs: `--scenario retrans`).",
            retrans(p2p),
            retrans(inet),
        ));
    }
    if ran("pod_to_pod", "udp") {
        notes.push(format!(
            "UDP 64 B is iperf3's receiver rate with -b 0, bound by one sender thread's \
             syscalls (the forwarding runs in the sender's softirq): it compares the socket \
             stacks more than the dataplanes. In this run the senders sent {} kpps (vnetd) and \
             {} kpps (reference), and the receivers lost {}% and {}%.",
            range(detail(Dp::Vnetd, p2p, "udp", "sent_kpps")),
            range(detail(Dp::Reference, p2p, "udp", "sent_kpps")),
            range(detail(Dp::Vnetd, p2p, "udp", "lost_percent")),
            range(detail(Dp::Reference, p2p, "udp", "lost_percent")),
        ));
    }
    if ran("pod_to_pod", "rr") || ran("pod_to_internet", "rr") {
        notes.push(
            "TCP_RR is one connection, 1-byte request and response, Nagle off, in-process \
             sockets; latency is the mean round trip (1 / rate)."
                .to_string(),
        );
    }
    if r.runs
        .iter()
        .any(|run| run["scenario"] == "pod_to_internet")
    {
        notes.push(
            "To the internet: from the same client pods to the lab's internet host, through the \
         lab's fabric bridge and edge router (kernel forwarding, shared by both paths), so the \
         ratios are diluted by that common part. vnetd translates in its TC programs (SNAT to \
         the node's address, flow tables); the reference node forwards through iptables \
         (filter FORWARD, nat POSTROUTING MASQUERADE) and its conntrack."
                .to_string(),
        );
    }
    if ran("pod_to_internet", "connect") {
        notes.push(format!(
            "New connections: {clients} client threads in the client pod at once, each one \
             connection after the other, for the run's duration or 10,000 connections in all, \
             whichever comes first (connect, 1 byte each way, the client closes first; each \
             leaves an ephemeral port of the client pod in TIME_WAIT for 60 s), served by as \
             many server threads; completed vnetd {}, reference {}; failed vnetd {}, \
             reference {} (errors per run in the JSON report).",
            total(Dp::Vnetd, inet, "connect", "completed"),
            total(Dp::Reference, inet, "connect", "completed"),
            total(Dp::Vnetd, inet, "connect", "failed"),
            total(Dp::Reference, inet, "connect", "failed"),
            clients = clients(),
        ));
    }
    if ran("pod_to_pod_nsg", "connect") {
        let sum = |dp: Dp, key: &str| -> String {
            let n: f64 = r
                .runs
                .iter()
                .filter(|run| run["dataplane"] == dp.key() && run["scenario"] == "pod_to_pod_nsg")
                .filter_map(|run| run["details"][key].as_f64())
                .sum();
            format!("{:.0}", n + 0.0)
        };
        notes.push(format!(
            "NSG of N rules: new connections pod to pod ({clients} client threads at once for \
             the run's duration or 10,000 in all, 1 byte each way), a client pod per rule count, to the same server pod on port {port}. The same \
             N rules on both sides, in the same order: N - 1 denies the traffic does not match \
             (TCP to a /32 of 172.16.0.0/12, a port each), the allow of port {port} last. vnetd: \
             an inbound NSG on the server's subnet (a spec reload per rule count); reference: \
             an iptables chain {chain} jumped to from the top of FORWARD, walked by every \
             packet (replies too: no conntrack shortcut). vnetd's figures include NSG \
             classification only in builds that enforce NSGs (issue 9). Completed vnetd {}, \
             reference {}; failed vnetd {}, reference {}.",
            sum(Dp::Vnetd, "completed"),
            sum(Dp::Reference, "completed"),
            sum(Dp::Vnetd, "failed"),
            sum(Dp::Reference, "failed"),
            port = super::nsg::PORT,
            chain = super::nsg::CHAIN,
            clients = clients(),
        ));
    }
    for (scenario, dp, why) in &r.unavailable {
        notes.push(format!(
            "{} NOT MEASURED {}: {why}",
            dp.key(),
            scenario.key().replace('_', " ")
        ));
    }
    if r.invalid > 0 {
        notes.push(format!(
            "{} run(s) INVALID and left out of the figures: one of the dataplane's evidence \
             counters (vnetd: pod_to_pod, or pod_to_internet and internet_to_pod; reference: \
             FORWARD -> CNI-FORWARD, or MASQUERADE) did not move during them.",
            r.invalid
        ));
    }
    notes
}

/// The BPF_PROG_RUN rows of the README's table (vnetd only).
pub(super) struct ProgrunRows<'a> {
    pub(super) ns: Option<f64>,
    pub(super) snat: Option<&'a SnatProgrun>,
    pub(super) figures: &'a [ProgrunFigure],
}

/// The README's results table, with where it comes from.
pub(super) fn markdown(
    r: &Results,
    env: &Value,
    reps: u32,
    quick: bool,
    progrun: ProgrunRows<'_>,
    packet_rate: Option<(&super::pktrate::Samples, &super::pktrate::Paired)>,
    report: &Path,
) -> String {
    let mut md = format!(
        "From `{}` ({}, kernel {}, {} CPU(s) {}, load average {} after the run, git {}, {} \
         repetition(s){}; {} invalid run(s)):\n\n| metric | vnetd | bridge + iptables | vnetd / \
         reference |\n|---|---|---|---|\n",
        report.display(),
        env["date"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["cpu_model"].as_str().unwrap_or("?"),
        env["loadavg"].as_str().unwrap_or("?"),
        env["git"].as_str().unwrap_or("?"),
        reps,
        if quick { ", --quick" } else { "" },
        r.invalid,
    );
    for m in METRICS.into_iter().filter(|&m| r.shown(m)) {
        let (v, b) = (r.get(Dp::Vnetd, m), r.get(Dp::Reference, m));
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            m.label(),
            side_cell(r, Dp::Vnetd, m, v),
            side_cell(r, Dp::Reference, m, b),
            ratio(r, m),
        ));
    }
    if let Some(ns) = progrun.ns {
        md.push_str(&format!(
            "| BPF_PROG_RUN `pod_ingress`, ns per run | {} | | |\n",
            fmt_num(ns)
        ));
    }
    if let Some(snat) = progrun.snat {
        md.push_str(&format!(
            "| BPF_PROG_RUN `pod_ingress`, SNAT of an established UDP flow, ns per run (one run \
             per call; pod to pod measured the same way: {}) | {} | | |\n",
            fmt_num(snat.pod_to_pod_ns),
            fmt_num(snat.ns)
        ));
    }
    for f in progrun.figures {
        md.push_str(&format!("| {} | {} | | |\n", f.label, cell(&f.samples)));
    }
    for row in packet_rate
        .map(|(rate, paired)| packet_rate_rows(rate, paired))
        .into_iter()
        .flatten()
    {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.label, row.vnetd, row.reference, row.ratios
        ));
    }
    md
}

/// A packet-rate row of the tables: a label, vnetd's and the reference's cells, the ratios.
struct PacketRateRow {
    label: String,
    vnetd: String,
    reference: String,
    ratios: String,
}

/// The packet-rate rows: vnetd against the reference; the bare forwarder with vnetd's share of
/// it; the same with the NSG in the path.
fn packet_rate_rows(
    rate: &super::pktrate::Samples,
    paired: &super::pktrate::Paired,
) -> [PacketRateRow; 3] {
    use super::pktrate::{CPU, FRAME_LEN, NSG_RULES};
    let r = |s: Series| &rate[s as usize];
    let ratio = |a, b| ratio_of(r(a), r(b));
    let per_rep = |v: &[f64]| match v.len() {
        0 => String::new(),
        _ => format!(
            "; per repetition against the bare run beside it: {}",
            cell(v)
        ),
    };
    [
        PacketRateRow {
            label: format!(
                "{FRAME_LEN} B packet rate pod to pod, Mpps (XDP live-frames generator on CPU \
                 {CPU}, counted by a drop at the receiver)"
            ),
            vnetd: cell(r(Series::Vnetd)),
            reference: cell(r(Series::Reference)),
            ratios: ratio(Series::Vnetd, Series::Reference),
        },
        PacketRateRow {
            label: "the same through a bare `bpf_redirect_peer` forwarder, Mpps (the limit)".into(),
            vnetd: cell(r(Series::Bare)),
            reference: String::new(),
            ratios: format!(
                "vnetd / bare: {}{}",
                ratio(Series::Vnetd, Series::Bare),
                per_rep(&paired[0])
            ),
        },
        PacketRateRow {
            label: format!(
                "the same with an inbound NSG of {NSG_RULES} rules on the receiving pod's subnet, \
                 Mpps (vnetd: conntrack on every packet, each new flow classified; reference: \
                 the rules in FORWARD)"
            ),
            vnetd: cell(r(Series::VnetdNsg)),
            reference: cell(r(Series::ReferenceNsg)),
            ratios: format!(
                "{} (vnetd / bare: {}{})",
                ratio(Series::VnetdNsg, Series::ReferenceNsg),
                ratio(Series::VnetdNsg, Series::Bare),
                per_rep(&paired[1])
            ),
        },
    ]
}

/// The ratio of two sample sets' medians, as the tables show it.
fn ratio_of(a: &[f64], b: &[f64]) -> String {
    let x = median(a) / median(b);
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

/// The packet-rate rows, after the main table.
pub(super) fn print_packet_rate(rate: &super::pktrate::Samples, paired: &super::pktrate::Paired) {
    for row in packet_rate_rows(rate, paired) {
        let reference = match row.reference.as_str() {
            "" => String::new(),
            cell => format!(" | bridge+iptables {cell}"),
        };
        println!(
            "\n   {}:\n     {}{reference} | {}",
            row.label, row.vnetd, row.ratios
        );
    }
}
