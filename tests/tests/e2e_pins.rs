//! End to end: the pins an agent leaves on bpffs, across an ABI upgrade and through teardown.
//! An older ABI is made the way an upgrade finds it: a node's dataplane, attached and pinned by
//! a killed agent, whose directory is renamed `abi-v0` (its links stay attached to the uplink's
//! XDP and TCX hooks and to the pods' veths). Needs root.
use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
};
use vnetd_common::ABI_VERSION;
use vnetd_lab::{
    Lab, Node, serial,
    vnetd::{Agent, Pod, add_pod, lab_with_agent},
};

fn abi_dir(node: &Node, version: u32) -> std::path::PathBuf {
    node.bpffs_dir.join(format!("abi-v{version}"))
}

/// The id of the XDP program attached to `ifname` in `node`, if any.
fn xdp_program(node: &Node, ifname: &str) -> Result<Option<u64>> {
    let links = node.ip_json(["-d", "link", "show", "dev", ifname])?;
    Ok(links[0]["xdp"]["prog"]["id"].as_u64())
}

/// The ids of the TCX ingress programs on `ifname` in `node`.
fn tcx_ingress_programs(node: &Node, ifname: &str) -> Result<Vec<u32>> {
    let ifname = ifname.to_string();
    node.in_ns(move || {
        let (_, programs) = SchedClassifier::query_tcx(&ifname, TcAttachType::Ingress)
            .with_context(|| format!("querying TCX ingress of {ifname}"))?;
        Ok(programs.iter().map(|p| p.id()).collect())
    })
}

/// The links pinned under an ABI directory: pin name (`<program>@<ifname>`) -> link id.
fn pinned_links(abi: &Path) -> Result<BTreeMap<String, u32>> {
    let mut links = BTreeMap::new();
    for entry in std::fs::read_dir(abi.join("links"))? {
        let entry = entry?;
        let link = FdLink::from(PinnedLink::from_pin(entry.path())?);
        links.insert(
            entry.file_name().to_string_lossy().into_owned(),
            link.info()?.id(),
        );
    }
    Ok(links)
}

/// Ids of the BPF links that exist on the machine now.
fn live_links() -> Result<Vec<u32>> {
    aya::programs::loaded_links().map(|l| Ok(l?.id())).collect()
}

/// A node whose killed agent left its dataplane (two pods attached) pinned as ABI v0.
struct OldAbi {
    lab: Lab,
    node: Node,
    agent: Agent,
    pods: [Pod; 2],
    /// The old links by pin name, and their program ids on the uplink.
    links: BTreeMap<String, u32>,
    xdp: u64,
    uplink_tcx: Vec<u32>,
}

fn node_left_by_an_older_abi() -> Result<OldAbi> {
    let (lab, node, mut agent) = lab_with_agent()?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    assert_eq!(a.ping_count(b.ip, 1)?, 1, "pod to pod before the upgrade");
    agent.kill()?;

    let old = abi_dir(&node, 0);
    std::fs::rename(abi_dir(&node, ABI_VERSION), &old).context("renaming the ABI directory")?;
    let links = pinned_links(&old)?;
    let uplink = &node.uplink;
    assert!(
        links.contains_key(&format!("uplink_xdp@{uplink}")),
        "{links:?}"
    );
    assert_eq!(
        links
            .keys()
            .filter(|k| k.starts_with("pod_ingress@"))
            .count(),
        2,
        "{links:?}"
    );
    let xdp = xdp_program(&node, uplink)?.context("the old XDP program is attached")?;
    let uplink_tcx = tcx_ingress_programs(&node, uplink)?;
    assert_eq!(uplink_tcx.len(), 1, "the old TC program is attached");
    Ok(OldAbi {
        lab,
        node,
        agent,
        pods: [a, b],
        links,
        xdp,
        uplink_tcx,
    })
}

/// An agent started over an older ABI's pins detaches and removes them (links first: the
/// uplink's XDP slot must be free), attaches its own programs and serves the pods it restored.
#[test]
fn an_agent_over_an_older_abi_replaces_its_programs_and_pins() -> Result<()> {
    let _serial = serial();
    let OldAbi {
        lab: _lab,
        node,
        mut agent,
        pods: [a, b],
        links,
        xdp,
        uplink_tcx,
    } = node_left_by_an_older_abi()?;
    let uplink = &node.uplink;

    agent.spawn(vnetd_lab::LogMode::Files)?;
    assert!(!abi_dir(&node, 0).exists(), "the older ABI's pins are gone");
    let now = pinned_links(&abi_dir(&node, ABI_VERSION))?;
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        links.keys().collect::<Vec<_>>(),
        "the same hooks, pinned under this ABI"
    );
    let live = live_links()?;
    for (name, id) in &links {
        assert!(!live.contains(id), "the old link {name} ({id}) is released");
    }
    let new_xdp = xdp_program(&node, uplink)?.context("an XDP program is attached")?;
    assert_ne!(new_xdp, xdp, "the agent's own XDP program, not the old one");
    let new_tcx = tcx_ingress_programs(&node, uplink)?;
    assert_eq!(
        new_tcx.len(),
        1,
        "one TC program on the uplink: {new_tcx:?}"
    );
    assert_ne!(new_tcx, uplink_tcx, "the agent's own TC program");
    for name in links.keys().filter_map(|k| k.strip_prefix("pod_ingress@")) {
        assert_eq!(
            tcx_ingress_programs(&node, name)?.len(),
            1,
            "one TC program on the pod veth {name}"
        );
    }

    let before = agent.traffic("pod_to_pod")?;
    assert_eq!(a.ping_count(b.ip, 3)?, 3, "pod to pod after the upgrade");
    assert!(
        agent.traffic("pod_to_pod")? >= before + 6,
        "through the new programs"
    );
    Ok(())
}

/// `vnetd teardown` detaches every ABI's programs (XDP and TCX on the uplink, TCX on the pod
/// veths) and removes their pins, also when something else still holds a link open.
#[test]
fn teardown_detaches_every_abis_programs() -> Result<()> {
    let _serial = serial();
    let OldAbi {
        lab: _lab,
        node,
        agent: _agent,
        pods: [a, _b],
        links,
        ..
    } = node_left_by_an_older_abi()?;
    let uplink = &node.uplink;
    // The same links pinned under this ABI too: both directories must go for them to go.
    let current = abi_dir(&node, ABI_VERSION).join("links");
    std::fs::create_dir_all(&current)?;
    for name in links.keys() {
        let link = FdLink::from(PinnedLink::from_pin(
            abi_dir(&node, 0).join("links").join(name),
        )?);
        link.pin(current.join(name))?;
    }
    // A holder the pins know nothing about (bpftool, a crashed agent's child...).
    let held_name = format!("uplink_ingress@{uplink}");
    let held = FdLink::from(PinnedLink::from_pin(current.join(&held_name))?);

    node.run_ok([
        vnetd_lab::vnetd::bin("vnetd").to_str().unwrap(),
        "teardown",
        "--node",
        "node-1",
        "--state-dir",
        node.state_dir.to_str().unwrap(),
        "--bpffs",
        node.bpffs_dir.to_str().unwrap(),
    ])?;
    let left: Vec<_> = std::fs::read_dir(&node.bpffs_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no pins of any ABI left: {left:?}");
    assert_eq!(
        xdp_program(&node, uplink)?,
        None,
        "XDP detached from the uplink"
    );
    assert_eq!(
        tcx_ingress_programs(&node, uplink)?,
        Vec::<u32>::new(),
        "TCX detached from the uplink, though a holder keeps the link"
    );
    let live = live_links()?;
    for (name, id) in links.iter().filter(|(name, _)| **name != held_name) {
        assert!(!live.contains(id), "link {name} ({id}) is gone");
    }
    drop(held);
    assert!(
        a.ip(["link", "show", "eth0"]).is_err(),
        "the pod's interface is gone"
    );
    Ok(())
}
