//! The control plane's other share: how long the agent takes to put a spec into the kernel.
//! On a node with `pods` pods attached (CNI ADD through `vnetd-cni`) and an inbound NSG of
//! 1000 rules on their subnet:
//!
//! - **start to ready**: the agent started on that spec, from the process's spawn to `/readyz`
//!   answering 200 (the programs attached, the API socket bound); once on a fresh node (no
//!   pods, nothing pinned) and once restarted with the pods to restore and the pins to adopt;
//!   between the two, the pods' CNI ADDs (the first one's time against the others' median;
//!   the subnet's NSG classifiers and their standbys are written at the agent's start, which
//!   has the NSG in its spec, not by the first ADD);
//! - **reload applying it**: the spec file replaced (written beside, renamed over, as editors
//!   and kubelet do) by one that adds the 1000-rule NSG, until every pod's `ENDPOINTS` entry
//!   in the kernel points at the new classifier;
//! - **one-rule change**: one rule's port changed, until every pod's entry points at the new
//!   classifier generation (a reload writes the new classifier into the classifier's other id,
//!   then switches the endpoints to it: the switch is when the new rules are live).
//!
//! Both reloads are timed from the rename to the last endpoint switched, read by polling the
//! pinned `ENDPOINTS` map (one lookup per pod per pass, 0.2 ms apart), so they
//! include the agent's file watch, as a user editing the spec sees it. Each starts once the
//! agent has finished the reload before (its status counts it): what the agent does after a
//! switch (a new classifier's standby and counters) is not charged to the next edit.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{HashMap, Map, MapData};
use serde_json::{Value, json};
use vnetd_common::{ABI_VERSION, Endpoint, maps};
use vnetd_lab::{
    LogMode, NODE_METRICS_ADDR, Node, PodNs, http_get,
    vnetd::{Agent, cni_call, lab_spec},
};

use super::{cni, nsg};

/// Rules in the NSG of the spec that is applied.
pub(super) const RULES: u32 = 1000;

/// Between two passes over the pods' `ENDPOINTS` entries.
const POLL_PAUSE: Duration = Duration::from_micros(200);

/// How long a reload or a start may take before the bench gives up on it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The pods' (ip, classifier ids) as the kernel has them: the subnet's inbound and outbound
/// NSG classifier of each endpoint.
type Classifiers = Vec<(Ipv4Addr, [u32; 2])>;

/// The kernel's `ENDPOINTS` of a node, opened from its pin.
struct Endpoints {
    map: HashMap<MapData, [u8; 4], Endpoint>,
}

impl Endpoints {
    fn open(node: &Node) -> Result<Endpoints> {
        let pin = node
            .bpffs_dir
            .join(format!("abi-v{ABI_VERSION}"))
            .join("maps")
            .join(maps::ENDPOINTS);
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let map = HashMap::try_from(Map::from_map_data(data)?)
            .with_context(|| format!("{} as a hash of Endpoint", pin.display()))?;
        Ok(Endpoints { map })
    }

    /// The classifiers of `ips` now (`None` for a pod without an entry).
    fn classifiers(&self, ips: &[Ipv4Addr]) -> Vec<Option<[u32; 2]>> {
        ips.iter()
            .map(|ip| {
                self.map
                    .get(&ip.octets(), 0)
                    .ok()
                    .map(|e| [e.nsg_in_subnet, e.nsg_out_subnet])
            })
            .collect()
    }

    /// Polls until no pod of `before` has its classifiers of then, and every one has an inbound
    /// classifier (an NSG in force); returns the time since `since` and the passes made.
    fn wait_switched(&self, before: &Classifiers, since: Instant) -> Result<(Duration, u64)> {
        let ips: Vec<Ipv4Addr> = before.iter().map(|(ip, _)| *ip).collect();
        let mut passes = 0;
        loop {
            passes += 1;
            let now = self.classifiers(&ips);
            let done = now
                .iter()
                .zip(before)
                .all(|(now, (_, was))| now.is_some_and(|c| c != *was && c[0] != 0));
            if done {
                return Ok((since.elapsed(), passes));
            }
            // A pass takes a lookup per pod; the pause leaves the CPUs to the agent (2 CPUs
            // here), at a resolution of a fraction of a millisecond.
            std::thread::sleep(POLL_PAUSE);
            ensure!(
                since.elapsed() < APPLY_TIMEOUT,
                "after {APPLY_TIMEOUT:?}, pods still on their old classifiers: {:?}",
                now.iter()
                    .zip(before)
                    .filter(|(now, (_, was))| now.is_none_or(|c| c == *was || c[0] == 0))
                    .map(|(_, (ip, _))| ip)
                    .take(5)
                    .collect::<Vec<_>>()
            );
        }
    }

    fn snapshot(&self, ips: &[Ipv4Addr]) -> Result<Classifiers> {
        ips.iter()
            .zip(self.classifiers(ips))
            .map(|(ip, c)| {
                c.map(|c| (*ip, c))
                    .with_context(|| format!("pod {ip} has no ENDPOINTS entry"))
            })
            .collect()
    }
}

/// The spec with an NSG of [`RULES`] rules whose first rule allows port `deny0_port`: two
/// values give two specs a rule apart.
fn spec_variant(base: &str, deny0_port: u16) -> Result<String> {
    let spec = nsg::spec_with_nsg(base, RULES)?;
    let rule = "destinationAddressPrefix: \"172.16.0.0/32\", destinationPortRange: \"1000\"";
    ensure!(spec.contains(rule), "the NSG's first rule changed: {rule}");
    Ok(spec.replace(
        rule,
        &format!(
            "destinationAddressPrefix: \"172.16.0.0/32\", destinationPortRange: \"{deny0_port}\""
        ),
    ))
}

/// Spawns `agent` and returns the time until its `/readyz` answers 200.
fn start_to_ready(agent: &mut Agent) -> Result<Duration> {
    let addr = NODE_METRICS_ADDR.parse()?;
    let t = Instant::now();
    agent.spawn_unwaited(LogMode::Files)?;
    loop {
        if let Ok((200, _)) = http_get(&agent.node, addr, "/readyz", Duration::from_secs(1)) {
            return Ok(t.elapsed());
        }
        if !agent.is_running() {
            bail!("the agent exited while starting:\n{}", agent.log());
        }
        ensure!(
            t.elapsed() < APPLY_TIMEOUT,
            "the agent was not ready within {APPLY_TIMEOUT:?}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Replaces `agent`'s spec with `spec` (written beside, renamed over) and returns the time
/// from the rename until every pod of `before` is on a new classifier. Returns once the agent
/// has finished the reload (its status counts it), work it does after the switch included:
/// so each change is timed from an idle agent, as a user's edit, seconds apart, finds it, not
/// queued behind the tail of the one before.
fn reload(agent: &Agent, ep: &Endpoints, before: &Classifiers, spec: &str) -> Result<Duration> {
    let counted = reloads_counted(agent)?;
    let tmp = agent.spec.with_extension("next");
    std::fs::write(&tmp, spec).with_context(|| format!("writing {}", tmp.display()))?;
    let t = Instant::now();
    std::fs::rename(&tmp, &agent.spec).with_context(|| format!("renaming {}", tmp.display()))?;
    let (took, _passes) = ep.wait_switched(before, t).with_context(|| {
        let log = agent.log();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        format!("the agent's last lines: {}", tail.join(" | "))
    })?;
    wait_counted(agent, counted)?;
    Ok(took)
}

/// The reloads the agent has finished, applied or refused (`vnetd status`).
fn reloads_counted(agent: &Agent) -> Result<u64> {
    let s = agent.status()?;
    Ok(s["reloads_ok"].as_u64().unwrap_or(0) + s["reloads_failed"].as_u64().unwrap_or(0))
}

/// Waits until the agent has finished more reloads than `counted`.
fn wait_counted(agent: &Agent, counted: u64) -> Result<()> {
    ensure!(
        vnetd_lab::wait_for(APPLY_TIMEOUT, || reloads_counted(agent)
            .is_ok_and(|n| n > counted)),
        "the agent did not finish the reload (reloads counted: {counted})"
    );
    Ok(())
}

/// Measures start, reload and one-rule change on a fresh lab; `changes` one-rule changes.
pub(super) fn run(pods: usize, changes: usize) -> Result<Value> {
    let lab = vnetd_lab::Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let base = cni::spec_with_room_for(&lab_spec(), pods)?;
    let nsg_spec = spec_variant(&base, 1000)?;
    let spec_path: PathBuf = node.dir.join("spec.yaml");
    std::fs::write(&spec_path, &nsg_spec)
        .with_context(|| format!("writing {}", spec_path.display()))?;
    let mut agent = Agent::with_args(
        &node,
        spec_path.clone(),
        node.agent_args(&spec_path),
        Vec::new(),
    );
    let fresh = start_to_ready(&mut agent).context("starting on a fresh node")?;
    println!(
        "   start to ready, fresh node, NSG of {RULES} rules, no pods: {:.1} ms",
        ms(fresh)
    );

    // The pods, through the plugin as a runtime attaches them.
    let t = Instant::now();
    let mut attached: Vec<(PodNs, Ipv4Addr)> = Vec::with_capacity(pods);
    let mut adds = Vec::with_capacity(pods);
    for i in 0..pods {
        let pod = lab.add_pod_netns(&format!("sp{i}"))?;
        let add = Instant::now();
        let out = cni::cni(&node, &cni_call("ADD", &node, &pod, Some("apps"), ""))?;
        adds.push(ms(add.elapsed()));
        ensure!(
            out.exit == 0,
            "vnetd-cni ADD of pod {i}: {} {}",
            out.stdout,
            out.stderr
        );
        let ip = out.json()?["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address in the result of pod {i}: {}", out.stdout))?;
        attached.push((pod, ip));
    }
    let ips: Vec<Ipv4Addr> = attached.iter().map(|(_, ip)| *ip).collect();
    // The first ADD against the others (the NSG's classifiers were written at the start).
    let first_add = adds.first().copied().unwrap_or(f64::NAN);
    let mut others = adds.get(1..).unwrap_or_default().to_vec();
    others.sort_by(f64::total_cmp);
    let others_p50 = super::measure::percentile(&others, 50.0);
    println!(
        "   {pods} pods attached in {:.1} s; the first ADD {first_add:.1} ms, \
         the others' p50 {others_p50:.1} ms",
        t.elapsed().as_secs_f64()
    );

    agent.terminate()?;
    agent.wait_exit(Duration::from_secs(30))?;
    let restart = start_to_ready(&mut agent).context("restarting with the pods")?;
    println!(
        "   start to ready, restart with {pods} pods to restore and the pins to adopt: {:.1} ms",
        ms(restart)
    );

    let ep = Endpoints::open(&node)?;
    // Off, then on again by a reload: the spec without the NSG, then with it.
    let without = ep.snapshot(&ips)?;
    let counted = reloads_counted(&agent)?;
    agent.write_spec(&base)?;
    ensure!(
        vnetd_lab::wait_for(APPLY_TIMEOUT, || ep
            .snapshot(&ips)
            .is_ok_and(|now| now.iter().all(|(_, c)| c[0] == 0))),
        "the NSG was not removed from the pods (before: {:?})",
        &without[..without.len().min(3)]
    );
    wait_counted(&agent, counted)?;
    let before = ep.snapshot(&ips)?;
    let full = reload(&agent, &ep, &before, &nsg_spec).context("reload adding the NSG")?;
    println!(
        "   reload adding an NSG of {RULES} rules to {pods} pods, file rename to every pod \
         switched in the kernel: {:.1} ms",
        ms(full)
    );

    let mut one_rule = Vec::with_capacity(changes);
    for i in 0..changes {
        let before = ep.snapshot(&ips)?;
        let port = if i % 2 == 0 { 999 } else { 1000 };
        let spec = spec_variant(&base, port)?;
        one_rule.push(
            reload(&agent, &ep, &before, &spec)
                .with_context(|| format!("one-rule change {} of {changes}", i + 1))?,
        );
    }
    let sorted = |v: &[Duration]| {
        let mut ms: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let changes_ms = sorted(&one_rule);
    let pct = |p: f64| super::measure::percentile(&changes_ms, p);
    println!(
        "   one-rule change, file rename to every pod switched in the kernel ({changes} \
         changes): p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms (target < 10 ms)",
        pct(50.0),
        pct(99.0),
        pct(0.0),
        pct(100.0)
    );

    // The agent's own account of each reload (its timings at RUST_LOG=vnetd=debug), kept when
    // asked for: the lab and its logs go at teardown.
    if let Some(path) = std::env::var_os("VNETD_BENCH_AGENT_LOG") {
        std::fs::write(&path, agent.log())
            .with_context(|| format!("writing the agent's log to {}", path.display()))?;
        let spec = PathBuf::from(path).with_extension("spec.yaml");
        std::fs::write(&spec, &nsg_spec)
            .with_context(|| format!("writing the NSG spec to {}", spec.display()))?;
    }
    agent.terminate()?;
    agent.wait_exit(Duration::from_secs(30))?;
    drop(attached);
    lab.teardown()?;
    Ok(json!({
        "pods": pods,
        "nsg_rules": RULES,
        "measured_by": "spawn to /readyz 200 (start); rename of the spec file to the last pod's \
                        ENDPOINTS entry in the kernel pointing at the new classifier, by polling \
                        the pinned map (reloads)",
        "first_add_ms": first_add,
        "other_adds_p50_ms": others_p50,
        "start_to_ready_fresh_ms": ms(fresh),
        "start_to_ready_restart_ms": ms(restart),
        "reload_add_nsg_ms": ms(full),
        "one_rule_change_ms": {
            "p50": pct(50.0), "p99": pct(99.0), "min": pct(0.0), "max": pct(100.0),
            "all": changes_ms,
            "in_order": one_rule.iter().map(|d| ms(*d)).collect::<Vec<f64>>(),
        },
        "one_rule_change_target_ms": 10,
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The control plane's spec-apply table for `report.md`, from what [`run`] returned.
pub(super) fn markdown(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    let c = &r["one_rule_change_ms"];
    format!(
        "\nSpec apply, {} pods and an NSG of {} rules on one node (ms; {}):\n\n\
         | what | ms |\n|---|---|\n\
         | agent start to ready, fresh node (no pods) | {} |\n\
         | agent start to ready, restart ({} pods restored, pins adopted) | {} |\n\
         | reload adding the NSG, file rename to every pod switched | {} |\n\
         | one-rule change, p50 (target < 10) | {} |\n\
         | one-rule change, p99 | {} |\n\
         \nThe reloads include the agent's file watch (it applies a spec renamed into place at \
         once; agent/src/reload.rs) and its parse of the spec.\n",
        r["pods"],
        r["nsg_rules"],
        r["measured_by"].as_str().unwrap_or_default(),
        f(&r["start_to_ready_fresh_ms"]),
        r["pods"],
        f(&r["start_to_ready_restart_ms"]),
        f(&r["reload_add_nsg_ms"]),
        f(&c["p50"]),
        f(&c["p99"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two one-rule variants differ in exactly one line, the NSG's first rule.
    #[test]
    fn one_rule_variants_differ_in_one_rule() {
        let base = lab_spec();
        let (a, b) = (
            spec_variant(&base, 999).unwrap(),
            spec_variant(&base, 1000).unwrap(),
        );
        let diff: Vec<(&str, &str)> = a.lines().zip(b.lines()).filter(|(x, y)| x != y).collect();
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert!(diff[0].0.contains("name: deny-0,"), "{}", diff[0].0);
        assert_eq!(a.lines().count(), b.lines().count());
    }
}
