//! Connection tracking (`NEW_FLOWS`, `FLOWS`): one entry per direction of a flow, each keyed by
//! the 5-tuple its packets carry where they are looked up, so either direction finds its entry
//! with one lookup and knows how to rewrite itself. The two entries of a flow point at each
//! other (`sibling`): the agent's garbage collector deletes both together, and the TCP state of
//! a flow is read from both (each direction records the flags it has seen).
//!
//! A flow starts in `NEW_FLOWS`, an LRU table a flood of new flows may churn, and moves to
//! `FLOWS` once it is assured ([`FLOW_ASSURED`], netfilter's word): answered and then used
//! again by its opener (a TCP handshake's last ACK), 64 packets one way, or alive for a
//! second. `FLOWS` never evicts: only the garbage collector's timeouts remove its flows. A
//! full table so degrades new flows (they stay evictable) and never old ones.

/// A packet's 5-tuple as it is on the wire at the hook that looks it up. Addresses and ports in
/// network byte order. ICMP echo: the identifier is the port of the side that chose it (the
/// requester): `src_port` for requests, `dst_port` for replies; the other port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// One direction of a tracked flow: `NEW_FLOWS[key]` or `FLOWS[key]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) when the flow was created.
    pub created_ns: u64,
    /// When a packet of this direction was last seen (refreshed at most about once a second,
    /// so established traffic does not write the entry on every packet).
    pub last_seen_ns: u64,
    /// Packets and bytes of this direction (for flow logs).
    pub packets: u64,
    pub bytes: u64,
    /// The key of the other direction's entry.
    pub sibling: FlowKey,
    /// What this direction's packets are rewritten to (network byte order): the source for
    /// [`Rewrite::Source`], the destination for [`Rewrite::Destination`].
    pub nat_ip: [u8; 4],
    pub nat_port: u16,
    /// A [`Rewrite`] value.
    pub rewrite: u8,
    /// A [`FlowKind`] value.
    pub kind: u8,
    /// A [`Direction`] value.
    pub direction: u8,
    /// The TCP flags (`TCP_*`) this direction has sent, or-ed together.
    pub tcp_flags_seen: u8,
    /// An [`crate::NsgVerdict`]: what the NSGs decided on the flow's first packet.
    pub nsg_verdict: u8,
    /// [`FLOW_SEEN_REPLY`] and [`FLOW_ASSURED`] bits.
    pub status: u8,
    /// The deciding rule (its bit in the classifier) of the subnet's and of the group's NSG,
    /// [`crate::NO_RULE`] if that NSG did not decide.
    pub nsg_rule_subnet: u16,
    pub nsg_rule_group: u16,
}

/// [`Flow::status`] of the original direction's entry: the reply direction has sent a packet.
pub const FLOW_SEEN_REPLY: u8 = 1;
/// [`Flow::status`]: the flow is in `FLOWS`, where nothing evicts it (both entries carry it).
pub const FLOW_ASSURED: u8 = 2;
/// [`Flow::status`] of an assured flow: it counts against the quota of the pod that opened it
/// (the original direction's source), or of the pod that answered it (the reply direction's
/// source: an inbound connection). Neither: no pod of this node is an end (the node's own).
/// See [`crate::maps::ASSURED_FLOWS_PER_ENDPOINT`].
pub const FLOW_OWNER_OPENER: u8 = 4;
pub const FLOW_OWNER_ANSWERER: u8 = 8;

/// A fragmented datagram as each of its fragments names it: addresses, protocol and IP id (as
/// on the wire). The key of `FRAGMENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub id: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// `FRAGMENTS[key]`: the flow whose entry translated the datagram's first fragment (the one
/// with the ports), so its later fragments, which carry no ports, follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentedDatagram {
    /// The key the first fragment's flow entry was looked up by.
    pub flow: FlowKey,
    /// `bpf_ktime_get_coarse_ns` when the first fragment passed.
    pub first_seen_ns: u64,
}

/// Which address and port of a packet a flow entry rewrites.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    None = 0,
    Source = 1,
    Destination = 2,
}

/// Who a flow belongs to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// A pod's connection out of the VNet, masqueraded to the node's (or its group's public)
    /// address.
    PodSnat = 1,
    /// The node's own connection from a port in the SNAT range: tracked so pods are never
    /// given its (port, remote address, remote port), and remapped if a pod flow had it first.
    Host = 2,
    /// An inbound connection to a Public group's address, translated to its private address.
    PublicInbound = 3,
    /// A flow tracked only for its NSG verdict (nothing rewritten): its replies pass without
    /// rules, and a rule change leaves it alone.
    Nsg = 4,
    /// A flow the node's stack translated (kube-proxy's Services): its packets are handed to
    /// the stack, so replies are translated back there instead of delivered straight.
    HostStack = 5,
}

/// Which direction of its flow an entry is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The direction of the packet that opened the flow.
    Original = 0,
    Reply = 1,
}

/// TCP header flags as in the header's 13th byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP flow's state, read from the flags each direction has sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    SynSent,
    SynReceived,
    Established,
    /// One side has sent FIN.
    Closing,
    /// Both sides sent FIN, or either sent RST.
    Closed,
}

impl TcpState {
    /// The state of a TCP flow whose original direction has sent `original` flags and whose
    /// reply direction has sent `reply` flags.
    pub const fn of(original: u8, reply: u8) -> TcpState {
        let both = original | reply;
        if both & TCP_RST != 0 || (original & reply & TCP_FIN) != 0 {
            TcpState::Closed
        } else if both & TCP_FIN != 0 {
            TcpState::Closing
        } else if reply & TCP_SYN != 0 && original & TCP_ACK != 0 {
            TcpState::Established
        } else if reply & TCP_SYN != 0 {
            TcpState::SynReceived
        } else if original & TCP_SYN == 0 && reply & TCP_ACK != 0 {
            // Picked up mid-stream (e.g. adopted after a restart without the handshake).
            TcpState::Established
        } else {
            TcpState::SynSent
        }
    }
}

/// Conntrack events, the index into the `CONNTRACK_STATS` per-CPU array (the agent sums the
/// CPUs). With the garbage collector's deletions and the live count they make LRU evictions
/// visible: entries created − deleted − live = evicted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConntrackStat {
    /// Flow entries inserted: two per flow, counted once both are in.
    EntriesCreated = 0,
    /// SNAT port candidates tried beyond the first (probing under load).
    PortProbes = 1,
    /// Two CPUs created the same flow at once; one of them backed off and used the other's.
    InsertRaces = 2,
    /// The node's own connections that had to move to another port because a pod flow held
    /// theirs.
    HostPortsRemapped = 3,
    /// Flows moved from `NEW_FLOWS` to `FLOWS` (assured).
    FlowsAssured = 4,
    /// Flows that would have been assured but `FLOWS` was full: they stay in `NEW_FLOWS`.
    AssuredTableFull = 5,
    /// Flows that would have been assured but their pod holds its share of `FLOWS` already:
    /// they stay in `NEW_FLOWS`.
    AssuredQuotaExceeded = 6,
}

impl ConntrackStat {
    pub const COUNT: u32 = 7;
    pub const ALL: [ConntrackStat; Self::COUNT as usize] = [
        ConntrackStat::EntriesCreated,
        ConntrackStat::PortProbes,
        ConntrackStat::InsertRaces,
        ConntrackStat::HostPortsRemapped,
        ConntrackStat::FlowsAssured,
        ConntrackStat::AssuredTableFull,
        ConntrackStat::AssuredQuotaExceeded,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ConntrackStat::EntriesCreated => "entries_created",
            ConntrackStat::PortProbes => "port_probes",
            ConntrackStat::InsertRaces => "insert_races",
            ConntrackStat::HostPortsRemapped => "host_ports_remapped",
            ConntrackStat::FlowsAssured => "flows_assured",
            ConntrackStat::AssuredTableFull => "assured_table_full",
            ConntrackStat::AssuredQuotaExceeded => "assured_quota_exceeded",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentedDatagram {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_states_follow_the_handshake_and_teardown() {
        assert_eq!(TcpState::of(TCP_SYN, 0), TcpState::SynSent);
        assert_eq!(
            TcpState::of(TCP_SYN, TCP_SYN | TCP_ACK),
            TcpState::SynReceived
        );
        assert_eq!(
            TcpState::of(TCP_SYN | TCP_ACK, TCP_SYN | TCP_ACK),
            TcpState::Established
        );
        assert_eq!(
            TcpState::of(TCP_SYN | TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK),
            TcpState::Closing
        );
        assert_eq!(
            TcpState::of(TCP_SYN | TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK | TCP_FIN),
            TcpState::Closed
        );
        assert_eq!(TcpState::of(TCP_SYN, TCP_RST | TCP_ACK), TcpState::Closed);
        assert_eq!(TcpState::of(TCP_ACK, TCP_ACK), TcpState::Established);
    }

    #[test]
    fn flow_entries_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 16);
        assert_eq!(core::mem::size_of::<Flow>(), 64);
    }
}
