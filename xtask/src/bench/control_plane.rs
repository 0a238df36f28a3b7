//! The control plane's scenario: CNI ADD/DEL latency on both dataplanes ([`super::cni`]), then
//! vnetd's spec apply ([`super::apply`]); run after the lab is gone, or alone
//! (`--control-plane-only`).

use anyhow::Result;
use serde_json::{Value, json};

use super::{Options, apply, cni, step};

/// Pods on the node of the spec-apply benchmark (the 250, a node's most).
const SPEC_APPLY_PODS: usize = cni::MAX_PODS;

/// The control plane: CNI ADD/DEL latency of `opts.cni_pods()` pods on both dataplanes, then
/// vnetd's spec apply (start, reload, one-rule change) with [`SPEC_APPLY_PODS`] pods and an
/// NSG of [`apply::RULES`] rules, under `spec_apply`.
pub(super) fn control_plane(opts: &Options) -> Result<Value> {
    let pods = opts.cni_pods();
    step(&format!(
        "control plane: CNI ADD then DEL of {pods} pods, vnetd-cni against bridge + firewall"
    ));
    let mut report = cni::run(pods)?;
    let changes = if opts.quick { 5 } else { 20 };
    step(&format!(
        "control plane: vnetd applying a spec with {SPEC_APPLY_PODS} pods and an NSG of {} \
         rules (start to ready, a reload adding it, {changes} one-rule changes)",
        apply::RULES
    ));
    report["spec_apply"] = match apply::run(SPEC_APPLY_PODS, changes) {
        Ok(v) => v,
        Err(e) => {
            println!("   failed: {e:#}");
            json!({ "error": format!("{e:#}") })
        }
    };
    Ok(report)
}

/// The control plane's tables for `report.md`.
pub(super) fn control_plane_markdown(report: &Value) -> String {
    let mut md = cni::markdown(report);
    if report["spec_apply"]["pods"].is_number() {
        md += &apply::markdown(&report["spec_apply"]);
    }
    md
}
