//! Flow-log events (`FLOW_EVENTS`, a BPF ring buffer): one record when a flow is created
//! (allowed) and one for every packet an NSG or a container group's exposed ports refuse as a
//! flow's first packet (denied). Only new and denied flows write here: an established flow's
//! packets never touch the ring. A record the ring has no room for is counted in
//! `FLOW_EVENTS_LOST` (per CPU), never waited for.

/// What the NSGs of one end decided: the deciding rule (its bit in the classifier) and the
/// classifier's kernel id of the subnet's and of the group's NSG; [`crate::NO_RULE`] and 0 where
/// that NSG did not decide.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowDecision {
    pub classifier_subnet: u32,
    pub classifier_group: u32,
    pub rule_subnet: u16,
    pub rule_group: u16,
    /// An [`crate::NsgVerdict`]: `Unclassified` when no NSG of this end applied.
    pub verdict: u8,
    pub _pad: [u8; 3],
}

/// One record of `FLOW_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE), as flow entries are stamped.
    pub time_ns: u64,
    /// The packet's 5-tuple as the NSGs saw it (a public address's packet with the private
    /// address it is translated to). Ports are 0 where the rules see none (ICMP, later
    /// fragments).
    pub key: crate::FlowKey,
    /// [`FLOW_OUTBOUND`]: the sender's outbound NSGs; [`FLOW_INBOUND`]: the receiver's inbound
    /// NSGs.
    pub decisions: [FlowDecision; 2],
    /// A [`crate::FlowKind`] value for an allowed flow, 0 for a denied packet.
    pub kind: u8,
    /// [`FlowEventVerdict`].
    pub verdict: u8,
    /// For a denied packet, the [`crate::DropReason`] (`NsgDenied` or `PortNotExposed`).
    pub reason: u8,
    pub _pad: [u8; 5],
}

/// Index of the sender's outbound decision in [`FlowEvent::decisions`].
pub const FLOW_OUTBOUND: usize = 0;
/// Index of the receiver's inbound decision.
pub const FLOW_INBOUND: usize = 1;

/// Whether a flow-log event is a created flow or a refused packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEventVerdict {
    Allowed = 1,
    Denied = 2,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::FlowDecision {}
    unsafe impl aya::Pod for super::FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_events_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<FlowDecision>(), 16);
        assert_eq!(core::mem::size_of::<FlowEvent>(), 64);
    }
}
