//! Driving vnetd in a lab: start a node's agent, attach pods through the CNI plugin, read the
//! agent's status. Used by the end-to-end tests and the demo. By concern: `spec` (the lab's
//! spec and the edits tests make to it), `agent` (a node's running agent and what it reports),
//! `pods` (pods attached through the CNI plugin), `nsg_hits` (NSG rule hits, read from the
//! metrics and the status); here the binaries and the usual starting points.
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{Lab, Node};

mod agent;
mod nsg_hits;
mod pods;
mod spec;

pub use agent::{Agent, Paused};
pub use nsg_hits::{
    expect_nsg_hits, hit_counts, nsg_hits, nsg_rule_hits_in_metrics, nsg_rule_hits_in_status,
};
pub use pods::{Pod, add_pod, cni_call, cni_config, ping_from_forged};
pub use spec::{
    NsgRule, lab_spec, with_nsg, with_outbound_nat, with_public_group, with_public_group_ports,
};

/// Where the built binaries are: `$VNETD_BIN_DIR`, else `<workspace>/target/release`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("VNETD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace")
                .join("target/release")
        });
    dir.join(name)
}

/// What `vnetd validate` says of `spec`: `None` when the binary is not built (a test then
/// checks the text alone), else `Ok` or the validator's output.
pub fn validate(spec: &str) -> Option<Result<(), String>> {
    let vnetd = bin("vnetd");
    if !vnetd.exists() {
        return None;
    }
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vnetd-spec-{}-{n}.yaml", std::process::id()));
    std::fs::write(&path, spec).expect("writing a spec to validate");
    let out = std::process::Command::new(&vnetd)
        .arg("validate")
        .arg(&path)
        .output()
        .expect("running vnetd validate");
    let _ = std::fs::remove_file(&path);
    Some(match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    })
}

/// `ip/24` on the lab's fabric, the way the lab's nodes are addressed (`node_cidr("10.0.0.4")`).
pub fn node_cidr(ip: &str) -> ipnet::Ipv4Net {
    format!("{ip}/24").parse().expect("a node address")
}

/// Where most end-to-end tests start: a lab whose node-1 (10.0.0.4) runs an agent on the lab's
/// spec (`examples/lab.yaml`).
pub fn lab_with_agent() -> Result<(Lab, Node, Agent)> {
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, &lab_spec())?;
    Ok((lab, node, agent))
}

/// A lab whose node-1 (10.0.0.4) runs an agent on `spec`, with `pods` pods in `apps`
/// (`pod-0`, ...).
pub fn node_with_pods(spec: &str, pods: usize) -> Result<(Lab, Node, Agent, Vec<Pod>)> {
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, spec)?;
    let pods = (0..pods)
        .map(|i| add_pod(&lab, &node, &format!("pod-{i}"), Some("apps"), ""))
        .collect::<Result<Vec<_>>>()?;
    Ok((lab, node, agent, pods))
}
