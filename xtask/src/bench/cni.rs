//! The control plane's share of `cargo xtask bench`: how long a pod waits for its network.
//! CNI ADD, then DEL, of N pods on one node, one plugin process at a time as a runtime calls
//! them: `vnetd-cni` (the agent allocates, creates the veth, programs the maps) against the
//! reference chain (`bridge` with `host-local`, then `firewall` with iptables), alternating pod
//! by pod so both see the same machine. The point is the curve: the last ADD should cost what
//! the first does.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use vnetd_lab::{
    CniCall, Lab, Node, PodNs,
    vnetd::{Agent, cni_call, lab_spec},
};

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const CNI_DIR: &str = "/usr/lib/cni";
/// The reference pods' subnet on node `ref` (host-local hands out up to 253 addresses).
pub const REF_SUBNET: &str = "10.244.0.0/24";
/// The reference pods' subnet on node `ref-2`, the far end of the cross-node scenario (as
/// kubenet lays a cluster out: a subnet per node, a static route to each other node's).
pub const REF_SUBNET_2: &str = "10.244.1.0/24";
/// The pods' range of the reference cluster: not masqueraded between nodes.
pub const REF_CLUSTER_RANGE: &str = "10.244.0.0/16";

/// The pods' subnet of the reference node `node` (by the lab's name: `ref` or `ref-2`).
pub fn ref_subnet(node: &Node) -> &'static str {
    if node.dir.file_name().is_some_and(|n| n == "ref-2") {
        REF_SUBNET_2
    } else {
        REF_SUBNET
    }
}

/// The reference conflist's plugins, in order. The pods get a default route via the bridge
/// (as vnetd's pods have one via their gateway), so they reach the internet host through the
/// node's MASQUERADE.
pub fn ref_plugins_conf(node: &Node) -> Value {
    json!([
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "subnet": ref_subnet(node),
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": node.dir.join("cni-ipam"),
            },
        },
        { "type": "firewall", "backend": "iptables" },
    ])
}

/// Runs the reference chain's `command` for `pod` as a runtime does: ADD in order with each
/// result passed on as `prevResult`, DEL in reverse order with the ADD's result. Returns the
/// last plugin's result (ADD) or `Null`.
pub fn ref_chain(
    node: &Node,
    pod: &PodNs,
    id: &str,
    command: &str,
    prev: Option<&Value>,
) -> Result<Value> {
    let mut plugins: Vec<Value> = ref_plugins_conf(node).as_array().expect("a list").clone();
    if command == "DEL" {
        plugins.reverse();
    }
    let mut prev = prev.cloned();
    for mut conf in plugins {
        conf["cniVersion"] = "1.0.0".into();
        conf["name"] = "refnet".into();
        if let Some(prev) = &prev {
            conf["prevResult"] = prev.clone();
        }
        let ty = conf["type"].as_str().unwrap_or_default().to_string();
        let out = cni(
            node,
            &CniCall {
                command: command.into(),
                plugin: Path::new(CNI_DIR).join(&ty),
                container_id: format!("ref-{id}"),
                netns: pod.path.clone(),
                ifname: "eth0".into(),
                config: conf.to_string(),
                cni_path: Some(CNI_DIR.into()),
                ..CniCall::default()
            },
        )?;
        if out.exit != 0 {
            bail!(
                "reference plugin {ty} {command} for {id} failed ({}): {} {}",
                out.exit,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        if command == "ADD" {
            prev = Some(out.json()?);
        }
    }
    Ok(if command == "ADD" {
        prev.unwrap_or(Value::Null)
    } else {
        Value::Null
    })
}

/// What a plugin returned.
pub struct PluginOutput {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOutput {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("a plugin's output is not JSON: {}", self.stdout.trim()))
    }
}

/// Runs a CNI plugin call to completion with a blocking wait: the time it takes is the
/// plugin's, not a polling interval's (the lab's `Node::cni` polls with back-off).
pub fn cni(node: &Node, call: &CniCall) -> Result<PluginOutput> {
    use std::{io::Write as _, os::unix::process::ExitStatusExt as _, process::Stdio};
    let mut child = node
        .cni_command(call)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", call.plugin.display()))?;
    let mut stdin = child.stdin.take().context("piped stdin")?;
    // A plugin that does not read its configuration closes the pipe: not our error.
    let _ = stdin.write_all(call.config.as_bytes());
    drop(stdin);
    let out = child.wait_with_output()?;
    Ok(PluginOutput {
        exit: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The most pods a node may have (the spec's `maxPods` limit) and host-local's /24 holds.
pub const MAX_PODS: usize = 250;

/// The lab's spec with node-1's pool and `maxPods` made room for `pods` pods in `apps`
/// (examples/lab.yaml gives it 40 addresses there and maxPods 30).
pub(super) fn spec_with_room_for(base: &str, pods: usize) -> Result<String> {
    ensure!(
        pods <= MAX_PODS,
        "a node has at most {MAX_PODS} pods, not {pods}"
    );
    let spec = base.replace(
        "secondaryIpAddresses: [\"10.0.1.10-10.0.1.19\", \"10.0.2.10-10.0.2.49\"]\n    maxPods: 30",
        &format!(
            "secondaryIpAddresses: [\"10.0.1.10-10.0.1.19\", \"10.0.2.10-10.0.2.49\", \
             \"10.0.2.90-10.0.3.250\"]\n    maxPods: {}",
            pods.max(30)
        ),
    );
    ensure!(
        spec != base,
        "examples/lab.yaml's node-1 changed: update bench::cni's pool edit"
    );
    Ok(spec)
}

/// ADD and DEL latencies of one dataplane's plugin, in call order.
#[derive(Default)]
struct Latencies {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// Attaches and detaches `pods` pods with each plugin; prints a table, returns the figures.
pub fn run(pods: usize) -> Result<Value> {
    ensure!(
        (1..=MAX_PODS).contains(&pods),
        "the CNI benchmark attaches 1 to {MAX_PODS} pods (a node's maxPods), not {pods}"
    );
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let spec = spec_with_room_for(&lab_spec(), pods)?;
    let _agent = Agent::start(&node, &spec).context("starting the vnetd agent")?;
    let rnode = lab.add_node("ref", "10.0.0.9/24".parse()?)?;

    let (mut vnetd, mut reference) = (Latencies::default(), Latencies::default());
    let mut attached = Vec::with_capacity(pods);
    for i in 0..pods {
        let vpod = lab.add_pod_netns(&format!("cv{i}"))?;
        let rpod = lab.add_pod_netns(&format!("cr{i}"))?;
        let t = Instant::now();
        let out = cni(&node, &cni_call("ADD", &node, &vpod, Some("apps"), ""))?;
        vnetd.add.push(t.elapsed());
        ensure!(
            out.exit == 0,
            "vnetd-cni ADD of pod {i}: {} {}",
            out.stdout,
            out.stderr
        );
        let t = Instant::now();
        let result = ref_chain(&rnode, &rpod, &i.to_string(), "ADD", None)?;
        reference.add.push(t.elapsed());
        attached.push((vpod, rpod, result));
    }
    for (i, (vpod, rpod, result)) in attached.iter().enumerate() {
        let t = Instant::now();
        let out = cni(&node, &cni_call("DEL", &node, vpod, Some("apps"), ""))?;
        vnetd.del.push(t.elapsed());
        ensure!(
            out.exit == 0,
            "vnetd-cni DEL of pod {i}: {} {}",
            out.stdout,
            out.stderr
        );
        let t = Instant::now();
        ref_chain(&rnode, rpod, &i.to_string(), "DEL", Some(result))?;
        reference.del.push(t.elapsed());
    }

    println!("\nCNI latency, {pods} pods on one node, one plugin process at a time (ms):\n");
    println!(
        "| {:<28} | {:>8} | {:>8} | {:>14} | {:>14} |",
        "", "p50", "p99", "first 25 p50", "last 25 p50"
    );
    println!("|{}|", ["-"; 5].map(|_| "----------").join("|"));
    let mut report = json!({ "pods": pods });
    for (name, l) in [("vnetd", &vnetd), ("bridge+iptables", &reference)] {
        for (op, v) in [("ADD", &l.add), ("DEL", &l.del)] {
            let s = Summary::of(v);
            println!(
                "| {:<28} | {:>8.1} | {:>8.1} | {:>14.1} | {:>14.1} |",
                format!("{name} {op}"),
                s.p50,
                s.p99,
                s.first_p50,
                s.last_p50
            );
            report[name][op.to_lowercase()] = s.json(v);
        }
    }
    let ratio = |op: &str| {
        report["vnetd"][op]["p99_ms"].as_f64().unwrap_or(f64::NAN)
            / report["bridge+iptables"][op]["p99_ms"]
                .as_f64()
                .unwrap_or(f64::NAN)
    };
    let (add, del) = (ratio("add"), ratio("del"));
    report["p99_ratio_vnetd_over_reference"] = json!({ "add": add, "del": del });
    println!("\n   p99 vnetd / reference: ADD {add:.2}, DEL {del:.2}");
    Ok(report)
}

struct Summary {
    p50: f64,
    p99: f64,
    first_p50: f64,
    last_p50: f64,
}

impl Summary {
    fn of(v: &[Duration]) -> Self {
        let window = v.len().min(25);
        Self {
            p50: percentile(v, 50.0),
            p99: percentile(v, 99.0),
            first_p50: percentile(&v[..window], 50.0),
            last_p50: percentile(&v[v.len() - window..], 50.0),
        }
    }

    fn json(&self, v: &[Duration]) -> Value {
        json!({
            "p50_ms": self.p50,
            "p99_ms": self.p99,
            "first_25_p50_ms": self.first_p50,
            "last_25_p50_ms": self.last_p50,
            "all_ms": v.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        })
    }
}

/// Nearest-rank percentile in milliseconds.
fn percentile(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * ms.len() as f64).ceil() as usize;
    ms[rank.clamp(1, ms.len()) - 1]
}

/// The control plane's table for `report.md`, from the figures [`run`] returned.
pub fn markdown(report: &Value) -> String {
    let mut md = format!(
        "\nCNI latency, {} pods on one node, one plugin process at a time (ms; p99 ratio \
         vnetd / reference: ADD {:.2}, DEL {:.2}):\n\n\
         | call | p50 | p99 | first 25, p50 | last 25, p50 |\n|---|---|---|---|---|\n",
        report["pods"],
        report["p99_ratio_vnetd_over_reference"]["add"]
            .as_f64()
            .unwrap_or(f64::NAN),
        report["p99_ratio_vnetd_over_reference"]["del"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    for name in ["vnetd", "bridge+iptables"] {
        for op in ["add", "del"] {
            let s = &report[name][op];
            let ms = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
            md += &format!(
                "| {name} {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                op.to_uppercase(),
                ms("p50_ms"),
                ms("p99_ms"),
                ms("first_25_p50_ms"),
                ms("last_25_p50_ms")
            );
        }
    }
    md
}
