//! Pods attached through the CNI plugin, as a container runtime would, and a pod's forged
//! traffic.
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::bin;
use crate::{CniCall, Lab, Node, Ns, PodNs};

/// A pod attached through the CNI plugin.
pub struct Pod {
    pub ns: PodNs,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub node: Node,
    pub result: Value,
}

impl std::ops::Deref for Pod {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.ns
    }
}

/// Pings `dst` twice from `pod` with the forged source address `forged` (added to its eth0
/// for the duration), as a pod trying to spoof would; returns how many pings were answered.
pub fn ping_from_forged(pod: &Ns, forged: Ipv4Addr, dst: Ipv4Addr) -> Result<u32> {
    let cidr = format!("{forged}/32");
    pod.ip(["addr", "add", &cidr, "dev", "eth0"])?;
    let out = pod.run([
        "ping",
        "-n",
        "-c",
        "2",
        "-W",
        "1",
        "-I",
        &forged.to_string(),
        &dst.to_string(),
    ]);
    pod.ip(["addr", "del", &cidr, "dev", "eth0"])?;
    let stdout = String::from_utf8_lossy(&out?.stdout).into_owned();
    Ok(stdout.lines().filter(|l| l.contains("bytes from")).count() as u32)
}

/// The network config the CNI plugin gets on stdin for `agent` and `subnet`.
pub fn cni_config(node: &Node, subnet: Option<&str>) -> String {
    let mut conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "vnetd",
        "type": "vnetd-cni",
        "agentSocket": node.api_socket,
    });
    if let Some(subnet) = subnet {
        conf["subnet"] = subnet.into();
    }
    conf.to_string()
}

/// A CNI call of `command` for a pod namespace.
pub fn cni_call(
    command: &str,
    node: &Node,
    pod: &PodNs,
    subnet: Option<&str>,
    args: &str,
) -> CniCall {
    CniCall {
        command: command.into(),
        plugin: bin("vnetd-cni"),
        container_id: format!("ctr-{}", pod.role),
        netns: pod.path.clone(),
        ifname: "eth0".into(),
        args: args.into(),
        config: cni_config(node, subnet),
        ..Default::default()
    }
}

/// Creates a pod namespace and attaches it with CNI ADD in `subnet` (or as the container group
/// named in `args`), returning it with its address.
pub fn add_pod(
    lab: &Lab,
    node: &Node,
    name: &str,
    subnet: Option<&str>,
    args: &str,
) -> Result<Pod> {
    let ns = lab.add_pod_netns(name)?;
    let call = cni_call("ADD", node, &ns, subnet, args);
    let out = node.cni(&call)?;
    if out.exit != 0 {
        bail!(
            "CNI ADD of {name} failed ({}): {} {}",
            out.exit,
            out.stdout,
            out.stderr
        );
    }
    let result = out.json()?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in the CNI result {result}"))?;
    Ok(Pod {
        ns,
        ip,
        container_id: call.container_id,
        node: node.clone(),
        result,
    })
}
