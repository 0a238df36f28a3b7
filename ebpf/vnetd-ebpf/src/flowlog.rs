//! Flow-log events: a record in `FLOW_EVENTS` when a flow is created (allowed) and when a
//! flow's first packet is refused (denied); the agent turns them into flow-log records. Only
//! new and refused flows come here, never an established flow's packets. A full ring is
//! counted in `FLOW_EVENTS_LOST` and never waited for.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use vnetd_common::{
    DropReason, FlowDecision, FlowEvent, FlowEventVerdict, FlowKey, FlowKind, NO_RULE, NsgVerdict,
    maps::FLOW_EVENTS_BYTES,
};

use crate::nsg::{Mark, Tuple};

#[map(name = "FLOW_EVENTS")]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENTS_BYTES, 0);

#[map(name = "FLOW_EVENTS_LOST")]
static FLOW_EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The reader is woken only once this much is waiting: a wake-up is an interrupt and a
/// scheduling of the agent's task, too dear per record; the agent also reads on a timer.
const WAKEUP_BYTES: u64 = FLOW_EVENTS_BYTES as u64 / 16;

/// The sending end's outbound and the receiving end's inbound decisions, as they are recorded;
/// `None` where no NSG decided (not `&Mark::NONE`: a constant whose address is taken is put in
/// `.rodata`, a map the agent would have to load beside its pinned ones).
pub struct Ends<'a> {
    pub outbound: Option<&'a Mark>,
    pub inbound: Option<&'a Mark>,
}

/// A flow was created: `key` is its original direction's tuple.
#[inline(always)]
pub fn allowed(key: &FlowKey, kind: FlowKind, ends: Ends) {
    record(
        key,
        ends.outbound,
        ends.inbound,
        tag(kind as u8, FlowEventVerdict::Allowed, 0),
    );
}

/// A flow's first packet (tuple `t`) was refused by the NSG decision `mark` of one end
/// (`inbound`: the receiver's), or by `reason`.
#[inline(always)]
pub fn denied(t: &Tuple, inbound: bool, mark: Option<&Mark>, reason: DropReason) {
    let key = FlowKey {
        src_ip: t.src,
        dst_ip: t.dst,
        src_port: t.src_port,
        dst_port: t.dst_port,
        proto: t.proto,
        _pad: [0; 3],
    };
    let (outbound, inbound) = if inbound { (None, mark) } else { (mark, None) };
    let tag = tag(0, FlowEventVerdict::Denied, reason as u8);
    record(&key, outbound, inbound, tag);
}

/// An event's kind, verdict and reason in one argument (a BPF-to-BPF call takes at most five,
/// in registers).
#[inline(always)]
fn tag(kind: u8, verdict: FlowEventVerdict, reason: u8) -> u32 {
    u32::from(kind) | (verdict as u32) << 8 | u32::from(reason) << 16
}

/// A function of its own (a BPF-to-BPF call): the callers' programs stay small.
#[inline(never)]
fn record(key: &FlowKey, outbound: Option<&Mark>, inbound: Option<&Mark>, tag: u32) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        if let Some(lost) = FLOW_EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *lost += 1 }
        }
        return;
    };
    entry.write(FlowEvent {
        // SAFETY: a plain helper call.
        time_ns: unsafe { bpf_ktime_get_coarse_ns() },
        key: *key,
        decisions: [decision(outbound), decision(inbound)],
        kind: tag as u8,
        verdict: (tag >> 8) as u8,
        reason: (tag >> 16) as u8,
        _pad: [0; 5],
    });
    let flags = if FLOW_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        0
    } else {
        BPF_RB_NO_WAKEUP as u64
    };
    entry.submit(flags);
}

#[inline(always)]
fn decision(mark: Option<&Mark>) -> FlowDecision {
    let Some(mark) = mark else {
        return FlowDecision {
            classifier_subnet: 0,
            classifier_group: 0,
            rule_subnet: NO_RULE,
            rule_group: NO_RULE,
            verdict: NsgVerdict::Unclassified as u8,
            _pad: [0; 3],
        };
    };
    FlowDecision {
        classifier_subnet: mark.classifier_subnet,
        classifier_group: mark.classifier_group,
        rule_subnet: mark.rule_subnet,
        rule_group: mark.rule_group,
        verdict: mark.verdict,
        _pad: [0; 3],
    }
}
