//! One pass of the collector over the flow tables: what it deleted, what it left, and the
//! NSG-decided flows it saw (for the flow log).
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;
use vnetd_common::{
    Direction, FLOW_ASSURED, FLOW_OWNER_ANSWERER, FLOW_OWNER_OPENER, Flow, FlowKey, FlowKind,
};

use super::{GcReason, SnatUsage, Timeouts, Verdict, orphan_verdict, snat_usage, verdict};
use crate::{
    dataplane::maps::ConntrackMaps,
    flowlog::{Counts, FlowSample},
};

/// What one pass did and saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPass {
    /// Entries deleted, by reason (an expired flow counts its two entries).
    pub deleted: BTreeMap<GcReason, u64>,
    /// Entries in the flow tables when the pass began.
    pub seen: u64,
    /// Entries left, by kind.
    pub live: BTreeMap<&'static str, u64>,
    /// Of the entries left, those of assured flows (in FLOWS, where nothing evicts them).
    pub assured: u64,
    /// The assured flows left, by the pod each counts against (written to ENDPOINT_ASSURED,
    /// where the programs hold each pod to its share).
    pub assured_by_endpoint: BTreeMap<Ipv4Addr, u64>,
    /// The flows an NSG decided, with their counts (kept or expired in this pass): the flow
    /// log's C and E records.
    pub samples: Vec<FlowSample>,
    /// The SNAT ports the entries left hold.
    pub snat: SnatUsage,
}

impl GcPass {
    pub fn live_total(&self) -> u64 {
        self.live.values().sum()
    }

    /// Entries expired by their timeout (not orphans).
    pub fn expired(&self) -> u64 {
        self.deleted
            .iter()
            .filter(|(reason, _)| **reason != GcReason::Orphan)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The kinds of flow, as metrics and status name them (`vnetd_conntrack_entries{kind}`).
pub const KINDS: [FlowKind; 5] = [
    FlowKind::PodSnat,
    FlowKind::Host,
    FlowKind::PublicInbound,
    FlowKind::Nsg,
    FlowKind::HostStack,
];

/// The name of a flow's kind. Every kind expires by its protocol and TCP state alone (see
/// [`verdict`]): an NSG-only flow or one the node's stack translated lives as long as a
/// translated one would.
pub fn kind_name(kind: u8) -> &'static str {
    match KINDS.into_iter().find(|k| *k as u8 == kind) {
        Some(FlowKind::PodSnat) => "pod_snat",
        Some(FlowKind::Host) => "host",
        Some(FlowKind::PublicInbound) => "public_inbound",
        Some(FlowKind::Nsg) => "nsg",
        Some(FlowKind::HostStack) => "host_stack",
        None => "unknown",
    }
}

/// One pass over the flow tables at `now_ns`.
pub fn gc_pass(maps: &mut ConntrackMaps, now_ns: u64, timeouts: &Timeouts) -> Result<GcPass> {
    let flows = maps.flows()?;
    let mut pass = GcPass {
        seen: flows.len() as u64,
        ..GcPass::default()
    };
    let mut gone: std::collections::HashSet<FlowKey> = std::collections::HashSet::new();
    let sibling = |maps: &ConntrackMaps, key: &FlowKey| -> Result<Option<Flow>> {
        // The walk's copy may predate the sibling's insertion: ask the map again.
        match flows.get(key) {
            Some(flow) => Ok(Some(*flow)),
            None => maps.get(key),
        }
    };
    for (key, flow) in &flows {
        if gone.contains(key) {
            continue;
        }
        let verdict = if flow.direction == Direction::Original as u8 {
            let reply = sibling(maps, &flow.sibling)?;
            let verdict = verdict(key, flow, reply.as_ref(), now_ns, timeouts);
            if let Some(reply) = reply.filter(|reply| nsg_decided(flow, reply)) {
                pass.samples.push(FlowSample {
                    key: *key,
                    counts: Counts::of(flow, &reply),
                    ended: matches!(verdict, Verdict::Expired(_)),
                });
            }
            verdict
        } else if sibling(maps, &flow.sibling)?.is_none() {
            orphan_verdict(flow, now_ns)
        } else {
            // Judged with its Original entry.
            Verdict::Keep
        };
        match verdict {
            Verdict::Keep => {}
            Verdict::Expired(reason) => {
                for k in [*key, flow.sibling] {
                    if maps.remove(&k)? {
                        *pass.deleted.entry(reason).or_default() += 1;
                    }
                    gone.insert(k);
                }
            }
            Verdict::Orphan => {
                if maps.remove(key)? {
                    *pass.deleted.entry(GcReason::Orphan).or_default() += 1;
                }
                gone.insert(*key);
            }
        }
    }
    let left: Vec<(&FlowKey, &Flow)> = flows
        .iter()
        .filter(|(key, _)| !gone.contains(*key))
        .collect();
    for (_, flow) in &left {
        *pass.live.entry(kind_name(flow.kind)).or_default() += 1;
    }
    pass.assured = left
        .iter()
        .filter(|(_, flow)| flow.status & FLOW_ASSURED != 0)
        .count() as u64;
    for (key, flow) in &left {
        if let Some(owner) = owner(key, flow) {
            *pass.assured_by_endpoint.entry(owner).or_default() += 1;
        }
    }
    maps.set_assured_by_endpoint(&pass.assured_by_endpoint)?;
    pass.snat = snat_usage(left);
    Ok(pass)
}

/// The pod an assured flow counts against, from its Original entry (the flow's other entry
/// gives none, so each flow counts once): as the programs chose when they assured it.
fn owner(key: &FlowKey, flow: &Flow) -> Option<Ipv4Addr> {
    if flow.direction != Direction::Original as u8 || flow.status & FLOW_ASSURED == 0 {
        return None;
    }
    if flow.status & FLOW_OWNER_OPENER != 0 {
        Some(key.src_ip.into())
    } else if flow.status & FLOW_OWNER_ANSWERER != 0 {
        Some(flow.sibling.src_ip.into())
    } else {
        None
    }
}

/// Whether an NSG decided the flow of these two entries (its flow-log records follow it).
fn nsg_decided(original: &Flow, reply: &Flow) -> bool {
    let unclassified = vnetd_common::NsgVerdict::Unclassified as u8;
    original.nsg_verdict != unclassified || reply.nsg_verdict != unclassified
}
