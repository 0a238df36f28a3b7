//! Fragments through the NAT. Only a datagram's first fragment carries the ports its flow is
//! keyed on: it records its flow under what every fragment of the datagram carries
//! (addresses, protocol, IP id), and the later fragments follow it to the same flow and the
//! same translation. vnetd does not reassemble: a later fragment that overtook its first, or
//! whose first was lost, has no flow to follow.
use aya_ebpf::{
    helpers::generated::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap, programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use vnetd_common::{FlowKey, FragmentKey, FragmentedDatagram, maps::FRAGMENTS_MAX};

#[map(name = "FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentedDatagram> =
    LruHashMap::with_max_entries(FRAGMENTS_MAX, 0);

/// How long after its first fragment a datagram's later ones are taken as its: a datagram's
/// fragments leave their sender back to back, and the IP id (16 bits per pair of addresses
/// and protocol) comes round again soon on a busy pair, where an older record would send a
/// fragment to the wrong flow.
const FOLLOW_NS: u64 = 2_000_000_000;

/// If the packet in `ctx` is a first fragment: its datagram belongs to the flow looked up by
/// `flow` (whose addresses and protocol are the datagram's). A table that refuses the record
/// costs the datagram's later fragments, not this one.
///
/// A function of its own that reads the packet anew, called after the translation: inlined
/// at every translation, what it needs would be kept across the rewrite and grow the
/// programs' stack frames (the verifier allows 512 bytes for a program and the functions it
/// calls).
#[inline(never)]
pub fn remember(ctx: &TcContext, flow: &FlowKey) {
    // The IP header's id, flags and fragment offset. Read with the helper: a packet pointer
    // made here reaches this function from the compiler as the packet's start and end, which
    // the verifier refuses.
    let Ok([id0, id1, flags, offset]) = ctx.load::<[u8; 4]>(EthHdr::LEN + 4) else {
        return;
    };
    let more_fragments = flags & 0x20 != 0;
    if !more_fragments || flags & 0x1f != 0 || offset != 0 {
        return;
    }
    let key = FragmentKey {
        src_ip: flow.src_ip,
        dst_ip: flow.dst_ip,
        id: [id0, id1],
        proto: flow.proto,
        _pad: 0,
    };
    let datagram = FragmentedDatagram {
        flow: *flow,
        // SAFETY: a plain helper call.
        first_seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    let _ = FRAGMENTS.insert(key, datagram, 0);
}

/// The flow whose first fragment came just before this later fragment (`hdr`) of its
/// datagram.
#[inline(always)]
pub fn flow_of(hdr: &Ipv4Hdr) -> Option<FlowKey> {
    let key = FragmentKey {
        src_ip: hdr.src_addr,
        dst_ip: hdr.dst_addr,
        id: hdr.id,
        proto: hdr.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let datagram = unsafe { FRAGMENTS.get(key) }.copied()?;
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    (now.wrapping_sub(datagram.first_seen_ns) <= FOLLOW_NS).then_some(datagram.flow)
}
