//! How long a flow may stay idle, by protocol and TCP state, and the verdict on one flow: a
//! pure function of its two entries, the clock and the timeouts.
use std::time::Duration;

use vnetd_common::{Flow, FlowKey, TcpState};

pub(super) const IPPROTO_ICMP: u8 = 1;
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;

/// How long a flow may stay idle, by what it is (nat-design.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_closed: Duration,
    pub udp: Duration,
    pub icmp: Duration,
    /// Any other protocol (none is translated today).
    pub other: Duration,
}

impl Timeouts {
    /// The timeouts for `outboundNat.idleTimeoutInMinutes` = `idle`.
    pub fn new(idle: Duration) -> Self {
        Self {
            tcp_syn: Duration::from_secs(60),
            tcp_established: idle,
            tcp_closing: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp: idle,
            icmp: Duration::from_secs(30),
            other: idle,
        }
    }

    /// Every state's timeout `d` (tests: flows expire in seconds, not minutes).
    pub fn uniform(d: Duration) -> Self {
        Self {
            tcp_syn: d,
            tcp_established: d,
            tcp_closing: d,
            tcp_closed: d,
            udp: d,
            icmp: d,
            other: d,
        }
    }

    fn of(&self, class: GcReason) -> Duration {
        match class {
            GcReason::TcpSynSent | GcReason::TcpSynReceived => self.tcp_syn,
            GcReason::TcpEstablished => self.tcp_established,
            GcReason::TcpClosing => self.tcp_closing,
            GcReason::TcpClosed => self.tcp_closed,
            GcReason::Udp => self.udp,
            GcReason::Icmp => self.icmp,
            GcReason::Other | GcReason::Orphan => self.other,
        }
    }
}

/// Why the collector deleted an entry: the state whose timeout expired, or orphaned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GcReason {
    TcpSynSent,
    TcpSynReceived,
    TcpEstablished,
    TcpClosing,
    TcpClosed,
    Udp,
    Icmp,
    Other,
    /// Its sibling was gone (evicted by the LRU).
    Orphan,
}

impl GcReason {
    pub const ALL: [GcReason; 9] = [
        GcReason::TcpSynSent,
        GcReason::TcpSynReceived,
        GcReason::TcpEstablished,
        GcReason::TcpClosing,
        GcReason::TcpClosed,
        GcReason::Udp,
        GcReason::Icmp,
        GcReason::Other,
        GcReason::Orphan,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            GcReason::TcpSynSent => "tcp_syn_sent",
            GcReason::TcpSynReceived => "tcp_syn_received",
            GcReason::TcpEstablished => "tcp_established",
            GcReason::TcpClosing => "tcp_closing",
            GcReason::TcpClosed => "tcp_closed",
            GcReason::Udp => "udp",
            GcReason::Icmp => "icmp",
            GcReason::Other => "other",
            GcReason::Orphan => "orphan",
        }
    }
}

/// What the collector does with a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Idle longer than its state's timeout: delete both entries.
    Expired(GcReason),
    /// Its sibling is gone: delete this entry.
    Orphan,
}

/// An entry without its sibling is left alone this long after its creation: the programs
/// insert the Reply entry a moment before the Original one, and a walk may fall in between.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Which timeout applies to a flow of protocol `proto` whose directions sent these TCP flags.
pub fn class(proto: u8, original_flags: u8, reply_flags: u8) -> GcReason {
    match proto {
        IPPROTO_TCP => match TcpState::of(original_flags, reply_flags) {
            TcpState::SynSent => GcReason::TcpSynSent,
            TcpState::SynReceived => GcReason::TcpSynReceived,
            TcpState::Established => GcReason::TcpEstablished,
            TcpState::Closing => GcReason::TcpClosing,
            TcpState::Closed => GcReason::TcpClosed,
        },
        IPPROTO_UDP => GcReason::Udp,
        IPPROTO_ICMP => GcReason::Icmp,
        _ => GcReason::Other,
    }
}

/// The fate of the flow whose Original entry is `original` (keyed `key`) and whose Reply entry
/// is `reply` (`None`: gone), at CLOCK_MONOTONIC `now_ns`. A flow expires when both directions
/// have been idle longer than its state's timeout.
pub fn verdict(
    key: &FlowKey,
    original: &Flow,
    reply: Option<&Flow>,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Verdict {
    let Some(reply) = reply else {
        return orphan_verdict(original, now_ns);
    };
    let class = class(key.proto, original.tcp_flags_seen, reply.tcp_flags_seen);
    let last_seen = original.last_seen_ns.max(reply.last_seen_ns);
    let idle = Duration::from_nanos(now_ns.saturating_sub(last_seen));
    if idle > timeouts.of(class) {
        Verdict::Expired(class)
    } else {
        Verdict::Keep
    }
}

/// An entry whose sibling is gone: an orphan once past [`ORPHAN_GRACE`].
pub fn orphan_verdict(entry: &Flow, now_ns: u64) -> Verdict {
    if Duration::from_nanos(now_ns.saturating_sub(entry.created_ns)) > ORPHAN_GRACE {
        Verdict::Orphan
    } else {
        Verdict::Keep
    }
}
