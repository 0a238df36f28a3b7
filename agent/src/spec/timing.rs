//! A timing harness for the CPU side of a one-rule reload on the control-plane bench's spec
//! (`cargo xtask bench --scenario control_plane`: the lab's spec, 250 pods' room and an inbound
//! NSG of 1000 rules). Ignored: it measures, asserts nothing about speed.
//! `cargo test --release -p vnetd --lib spec::timing -- --ignored --nocapture`
//! The unit tests allocate with mimalloc, as the agent does.

use std::time::Instant;

use super::*;

const LAB: &str = include_str!("../../../examples/lab.yaml");

/// The bench's spec (`xtask/src/bench/apply.rs`, `nsg.rs`): an NSG of `rules` rules on subnet
/// apps whose first rule denies port `first_port`.
pub(crate) fn bench_spec(rules: u32, first_port: u16) -> String {
    let apps = "    - name: apps\n      addressPrefix: 10.0.2.0/23\n";
    let at = LAB.find(apps).unwrap() + apps.len();
    let mut out = format!(
        "{}      networkSecurityGroup: bench-nsg\n{}",
        &LAB[..at],
        &LAB[at..]
    );
    out = out.replace(
        "secondaryIpAddresses: [\"10.0.1.10-10.0.1.19\", \"10.0.2.10-10.0.2.49\"]\n    maxPods: 30",
        "secondaryIpAddresses: [\"10.0.1.10-10.0.1.19\", \"10.0.2.10-10.0.2.49\", \"10.0.2.90-10.0.3.250\"]\n    maxPods: 250",
    );
    out = out.trim_end().to_string();
    out.push_str("\nnetworkSecurityGroups:\n  - name: bench-nsg\n    securityRules:\n");
    let rule = |name: String, priority: u32, access: &str, dst: String, port: u16| {
        format!(
            "      - {{ name: {name}, priority: {priority}, direction: Inbound, access: {access}, \
             protocol: Tcp, sourceAddressPrefix: \"*\", sourcePortRange: \"*\", \
             destinationAddressPrefix: \"{dst}\", destinationPortRange: \"{port}\" }}\n"
        )
    };
    for i in 0..rules - 1 {
        let dst = std::net::Ipv4Addr::from(0xac10_0000 + i);
        let port = if i == 0 { first_port } else { 1000 + i as u16 };
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
        7100,
    ));
    out
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[test]
#[ignore = "a timing harness, run by hand"]
fn one_rule_reload_cpu_steps() {
    let text = bench_spec(1000, 999);
    println!("spec: {} bytes, {} lines", text.len(), text.lines().count());
    let mut rows: Vec<[f64; 8]> = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let _ =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lab.yaml"));
        let read = ms(t);
        let t = Instant::now();
        let reference = value::saphyr_document(&text).unwrap();
        let saphyr = ms(t);
        let t = Instant::now();
        let root = value::parse_document(&text).unwrap();
        let yaml = ms(t);
        assert!(root == reference);
        let t = Instant::now();
        let (spec, problems) = parse::spec_and_problems(&root);
        let walk = ms(t);
        assert!(problems.is_empty());
        let spec = spec.unwrap();
        let t = Instant::now();
        assert!(validate(&spec).is_empty());
        let valid = ms(t);
        let t = Instant::now();
        let compiled = crate::compile::compile_valid(&spec, "node-1").unwrap();
        let compile = ms(t);
        let t = Instant::now();
        let plan = crate::plan::NodePlan::from_compiled(compiled).unwrap();
        let capacity = ms(t);
        let t = Instant::now();
        let wanted = crate::dataplane::maps::nsg::wanted(plan.classifiers(["apps"]));
        let fps: Vec<u64> = wanted
            .values()
            .map(crate::dataplane::maps::nsg::fingerprint)
            .collect();
        let entries = ms(t);
        assert_eq!(fps.len(), 2);
        rows.push([read, saphyr, yaml, walk, valid, compile, capacity, entries]);
    }
    let names = [
        "read (small)",
        "serde-saphyr",
        "yaml (fast)",
        "walk",
        "validate",
        "compile",
        "plan+capacity",
        "entries+fp",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "{name:>14}: median {:.2} ms [min {:.2} max {:.2}]",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
}

/// The agent's CPU work of a one-rule reload in a loop, for a profiler (`perf record` on the
/// test binary): parse, validate, compile, plan, the NSG entries and their fingerprints.
/// `LOOPS` sets the iterations (200).
#[test]
#[ignore = "a profiling loop, run by hand"]
fn one_rule_reload_cpu_loop() {
    let text = bench_spec(1000, 999);
    let n: usize = std::env::var("LOOPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let t = Instant::now();
    for _ in 0..n {
        let spec = check_str(&text).unwrap();
        let compiled = crate::compile::compile_valid(&spec, "node-1").unwrap();
        let plan = crate::plan::NodePlan::from_compiled(compiled).unwrap();
        let wanted = crate::dataplane::maps::nsg::wanted(plan.classifiers(["apps"]));
        let fps: Vec<u64> = wanted
            .values()
            .map(crate::dataplane::maps::nsg::fingerprint)
            .collect();
        assert_eq!(fps.len(), 2);
    }
    println!("per iteration {:.2} ms", ms(t) / n as f64);
}
