//! Connection tracking: the flow tables where both directions of a flow are found with one
//! lookup each. An entry knows how to rewrite its own packets and where its sibling (the other
//! direction) is; the agent's garbage collector expires both together.
//!
//! New flows go into `NEW_FLOWS`, an LRU hash: a flood of new flows evicts new flows. A flow
//! that proves itself (answered, then used again by its opener; 64 packets one way; or alive
//! after a second) moves to `FLOWS`, a hash nothing evicts, so an idle connection outlives any
//! flood. Lookups try `FLOWS` first: an established packet pays one lookup, as with a single
//! table. A pod holds at most its share of `FLOWS` (`ENDPOINT_ASSURED` counts each pod's), so
//! no one pod can fill it for all the others: its flows beyond that stay new.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use vnetd_common::{
    ConntrackStat, Direction, DropReason, FLOW_ASSURED, FLOW_OWNER_ANSWERER, FLOW_OWNER_OPENER,
    FLOW_SEEN_REPLY, Flow, FlowKey, FlowKind, NO_RULE, NsgVerdict, Rewrite, TCP_ACK, TCP_FIN,
    TCP_RST, TCP_SYN,
    maps::{ASSURED_FLOWS_PER_ENDPOINT, ENDPOINTS_MAX, FLOWS_MAX, NEW_FLOWS_MAX},
};

use crate::{endpoint, nsg::Mark, parse::Ipv4};

#[map(name = "NEW_FLOWS")]
static NEW_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(NEW_FLOWS_MAX, 0);

#[map(name = "FLOWS")]
static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(FLOWS_MAX, 0);

/// The assured flows each pod of this node holds. The programs add the flows they assure; the
/// agent's collector, which alone removes assured flows, writes the true counts at each pass.
#[map(name = "ENDPOINT_ASSURED")]
static ENDPOINT_ASSURED: HashMap<[u8; 4], u64> = HashMap::with_max_entries(ENDPOINTS_MAX, 0);

#[map(name = "CONNTRACK_STATS")]
static CONNTRACK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ConntrackStat::COUNT, 0);

/// How often an established flow's `last_seen_ns` is written: often enough for idle timeouts
/// counted in minutes, rarely enough that a busy flow does not write its entry per packet. A
/// new flow still sending after this long is assured.
const REFRESH_NS: u64 = 1_000_000_000;

/// A direction of a new flow that has sent this many packets (or a multiple) is in use: its
/// flow is assured, so its packets pay one lookup, not two. If `FLOWS` is full, the attempt at
/// least looks at the other direction's entry, which keeps it from the LRU: a busy one-way
/// stream keeps its reply entry through a flood. Often enough to cost nothing per packet.
const BUSY_PACKETS: u64 = 64;

// Flow times are CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`): a tick's precision is
// plenty for timeouts of seconds and minutes, and it costs a fraction of reading the clock
// source on every packet (measured: about 35 ns per packet on the established path).

const EEXIST: i32 = 17;

/// The 5-tuple `ip` is tracked by, as it is on the wire.
#[inline(always)]
pub fn key_of(ip: &Ipv4) -> FlowKey {
    FlowKey {
        src_ip: ip.hdr.src_addr,
        dst_ip: ip.hdr.dst_addr,
        src_port: ip.src_port,
        dst_port: ip.dst_port,
        proto: ip.hdr.proto,
        _pad: [0; 3],
    }
}

/// The key of the packets going the other way.
#[inline(always)]
pub fn reversed(key: &FlowKey) -> FlowKey {
    FlowKey {
        src_ip: key.dst_ip,
        dst_ip: key.src_ip,
        src_port: key.dst_port,
        dst_port: key.src_port,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// The entry of `key`, assured or new.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<&'static mut Flow> {
    // SAFETY: the pointer is to a map value; the entry outlives the program run (RCU).
    FLOWS
        .get_ptr_mut(key)
        .or_else(|| NEW_FLOWS.get_ptr_mut(key))
        .map(|p| unsafe { &mut *p })
}

/// Records a packet of `len` bytes with `tcp_flags` on `flow`, the entry of `key`. A SYN on a
/// flow whose TCP connection has ended is the tuple reused: both directions start over.
/// Returns the flow's entry, which has moved if this packet assured the flow.
#[inline(always)]
pub fn seen(
    key: &FlowKey,
    flow: &'static mut Flow,
    tcp_flags: u8,
    len: usize,
) -> &'static mut Flow {
    let (now, refresh) = counted(flow, len);
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && flow.tcp_flags_seen & (TCP_FIN | TCP_RST) != 0
    {
        flow.tcp_flags_seen = 0;
        flow.last_seen_ns = now;
        if let Some(sibling) = lookup(&flow.sibling) {
            sibling.tcp_flags_seen = 0;
        }
    }
    if flow.tcp_flags_seen | tcp_flags != flow.tcp_flags_seen {
        flow.tcp_flags_seen |= tcp_flags;
    }
    if flow.status & FLOW_ASSURED != 0 {
        return flow;
    }
    seen_new(key, flow, refresh)
}

/// Records a later fragment (`len` bytes) on its datagram's flow: counted and refreshed, no
/// more: its first fragment, which has the ports and flags, went through [`seen`]. (And
/// [`seen`]'s out-of-line part, called from `later_fragment_outbound`, would nest one call
/// deeper than `pod_ingress`'s stack allows.)
#[inline(always)]
pub fn seen_fragment(flow: &mut Flow, len: usize) {
    counted(flow, len);
}

/// Counts a packet of `len` bytes on `flow` and refreshes its `last_seen_ns` if that is older
/// than [`REFRESH_NS`]. Returns the clock and whether it refreshed.
#[inline(always)]
fn counted(flow: &mut Flow, len: usize) -> (u64, bool) {
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let refresh = now.wrapping_sub(flow.last_seen_ns) > REFRESH_NS;
    if refresh {
        flow.last_seen_ns = now;
    }
    // Plain adds: a flow's packets are mostly on one CPU (RSS, one socket), and these sums are
    // for flow logs, where a rare lost update under contention costs less than a locked add
    // on every packet.
    flow.packets += 1;
    flow.bytes += len as u64;
    (now, refresh)
}

/// The rest of [`seen`] for a flow in `NEW_FLOWS`: its first answer is noted on the opener's
/// entry, and the opener's next packet assures it; so does a direction's 64th packet, or any
/// packet a second on (a one-way stream). Out of line: a new flow's few packets take this
/// path, established ones never do.
#[inline(never)]
fn seen_new(key: &FlowKey, flow: &'static mut Flow, refresh: bool) -> &'static mut Flow {
    let original = flow.direction == Direction::Original as u8;
    let answered = original && flow.status & FLOW_SEEN_REPLY != 0;
    if !original && flow.packets == 1 {
        if let Some(opener) = new_entry(&flow.sibling) {
            opener.status |= FLOW_SEEN_REPLY;
        }
    } else if (refresh || answered || flow.packets.is_multiple_of(BUSY_PACKETS))
        && let Some(assured) = assure(key, flow)
    {
        return assured;
    }
    flow
}

/// The entry of `key` in `NEW_FLOWS`.
#[inline(always)]
fn new_entry(key: &FlowKey) -> Option<&'static mut Flow> {
    // SAFETY: a map value, as in `lookup`.
    NEW_FLOWS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// Moves the flow whose entry `flow` (of `key`) is from `NEW_FLOWS` to `FLOWS`: both entries,
/// as they are. Returns the entry's place in `FLOWS`, or `None` if the flow stays new: `FLOWS`
/// is full (counted), or the other entry is gone (an orphan the garbage collector removes).
#[inline(always)]
fn assure(key: &FlowKey, flow: &mut Flow) -> Option<&'static mut Flow> {
    // Only looked-up entries count as used for the LRU: this look also keeps a silent
    // direction's entry (a one-way stream's, the quiet end of a transfer) while FLOWS is full.
    let sibling = new_entry(&flow.sibling)?;
    if sibling.sibling != *key {
        // The other entry was evicted and its key reused by another flow.
        return None;
    }
    // A copy: `flow`'s memory is not to be read once its entry is deleted.
    let sibling_key = &{ flow.sibling };
    let (original, reply) = if flow.direction == Direction::Original as u8 {
        (key, sibling_key)
    } else {
        (sibling_key, key)
    };
    let owner = Owner::of(original, reply);
    if owner.at_quota() {
        // Tried again at the flow's next 64th packet or refresh, as when FLOWS is full.
        flow.status &= !FLOW_SEEN_REPLY;
        count(ConntrackStat::AssuredQuotaExceeded, 1);
        return None;
    }
    flow.status |= FLOW_ASSURED | owner.status;
    sibling.status |= FLOW_ASSURED | owner.status;
    let moved = |k: &FlowKey, f: &Flow| match FLOWS.insert(k, f, BPF_NOEXIST as u64) {
        // EEXIST: another CPU assured the flow first.
        Ok(()) => true,
        Err(e) => e == -EEXIST,
    };
    if !moved(sibling_key, sibling) || !moved(key, flow) {
        let _ = FLOWS.remove(sibling_key);
        // Tried again at the flow's next 64th packet or refresh, not at its next packet.
        let moved_bits = FLOW_ASSURED | FLOW_OWNER_OPENER | FLOW_OWNER_ANSWERER;
        flow.status &= !(moved_bits | FLOW_SEEN_REPLY);
        sibling.status &= !moved_bits;
        count(ConntrackStat::AssuredTableFull, 1);
        return None;
    }
    let _ = NEW_FLOWS.remove(key);
    let _ = NEW_FLOWS.remove(sibling_key);
    owner.charge();
    count(ConntrackStat::FlowsAssured, 1);
    // SAFETY: a map value, as in `lookup`.
    FLOWS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// The pod of this node an assured flow counts against: its opener, else (an inbound
/// connection) the pod that answered; none for the node's own flows.
struct Owner {
    /// `FLOW_OWNER_OPENER`, `FLOW_OWNER_ANSWERER` or 0.
    status: u8,
    ip: [u8; 4],
}

impl Owner {
    #[inline(always)]
    fn of(original: &FlowKey, reply: &FlowKey) -> Owner {
        let (status, ip) = if endpoint::lookup(&original.src_ip).is_some() {
            (FLOW_OWNER_OPENER, original.src_ip)
        } else if endpoint::lookup(&reply.src_ip).is_some() {
            (FLOW_OWNER_ANSWERER, reply.src_ip)
        } else {
            (0, [0; 4])
        };
        Owner { status, ip }
    }

    /// The pod holds its share of `FLOWS` already.
    #[inline(always)]
    fn at_quota(&self) -> bool {
        // SAFETY: the value is only read; the agent replaces it whole.
        self.status != 0
            && unsafe { ENDPOINT_ASSURED.get(self.ip) }
                .is_some_and(|n| *n >= ASSURED_FLOWS_PER_ENDPOINT)
    }

    /// Counts one more assured flow against the pod.
    #[inline(always)]
    fn charge(&self) {
        if self.status == 0 {
            return;
        }
        // A plain add, as the flows' own counts: two CPUs assuring two flows of one pod at the
        // same instant may count one, and the collector's next pass writes the true count.
        match ENDPOINT_ASSURED.get_ptr_mut(self.ip) {
            // SAFETY: a map value.
            Some(n) => unsafe { *n += 1 },
            None => {
                let _ = ENDPOINT_ASSURED.insert(self.ip, 1, BPF_NOEXIST as u64);
            }
        }
    }
}

/// Why a flow could not be created.
pub enum CreateError {
    /// The key is taken (another flow, or another CPU created this one first).
    Exists,
    /// The kernel refused the entry.
    Failed,
}

/// Inserts `flow` into `NEW_FLOWS` under `key` if neither table holds the key. Not counted: a
/// flow's entries are counted once both are in (see [`ConntrackStat::EntriesCreated`]), so one
/// taken back is no eviction.
#[inline(always)]
pub fn insert_new(key: &FlowKey, flow: &Flow) -> Result<(), CreateError> {
    if FLOWS.get_ptr(key).is_some() {
        return Err(CreateError::Exists);
    }
    insert_new_unchecked(key, flow)
}

/// [`insert_new`] for a key just looked up in both tables and not found.
#[inline(always)]
fn insert_new_unchecked(key: &FlowKey, flow: &Flow) -> Result<(), CreateError> {
    match NEW_FLOWS.insert(key, flow, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => Err(CreateError::Exists),
        Err(e) => {
            // Rare (the kernel out of memory for the entry): worth a line in the agent's log
            // at debug level. The macro's context argument is unused by aya-log-ebpf 0.2.
            // One argument: the record is built on the stack, which the callers nearly fill.
            aya_log_ebpf::debug!(&(), "flow insert failed: error {}", e);
            Err(CreateError::Failed)
        }
    }
}

/// Inserts a new flow's original entry after its reply entry (`reply_key`), undoing the reply
/// if the original cannot be inserted. Another CPU that created the same flow first wins.
/// Returns the flow's entry, and whether this call created it (the creator logs the flow).
#[inline(always)]
pub fn insert_original(
    key: &FlowKey,
    original: &Flow,
    reply_key: &FlowKey,
) -> Result<(&'static mut Flow, bool), DropReason> {
    let created = insert_original_only(key, original, reply_key).is_ok();
    let flow = if created { new_entry(key) } else { lookup(key) };
    let flow = flow.ok_or(DropReason::FlowInsertFailed)?;
    Ok((flow, created))
}

/// [`insert_original`] without the lookup of the entry after: `Ok` if `original` is in,
/// `Err` if it is not (another CPU's flow won the key: look it up, or the kernel refused).
#[inline(always)]
fn insert_original_only(
    key: &FlowKey,
    original: &Flow,
    reply_key: &FlowKey,
) -> Result<(), CreateError> {
    match insert_new_unchecked(key, original) {
        Ok(()) => {
            count(ConntrackStat::EntriesCreated, 2);
            Ok(())
        }
        Err(err) => {
            remove(reply_key);
            if let CreateError::Exists = err {
                count(ConntrackStat::InsertRaces, 1);
            }
            Err(err)
        }
    }
}

/// A new flow nothing is rewritten in (`FlowKind::Nsg`, `FlowKind::HostStack`), its first
/// packet (`tcp_flags`, `len` bytes) already counted: both entries, the reply's first;
/// `original` and `reply` are what each end's NSGs decided. True if this call created the
/// flow; false if another CPU's packet of the same flow did (and logs it).
///
/// The new entries are written whole and not looked up after: a flow's first packet costs
/// two inserts, and an entry nothing has looked up yet stays unreferenced for the LRU, which
/// evicts such entries (flows that never got a second packet) first when the table is full.
#[inline(always)]
pub fn create_untranslated(
    key: &FlowKey,
    kind: FlowKind,
    (original, reply): (Mark, Mark),
    tcp_flags: u8,
    len: usize,
) -> Result<bool, DropReason> {
    let reply_key = reversed(key);
    let mut entry = new_flow(
        *key,
        [0; 4],
        0,
        Rewrite::None as u8,
        kind as u8,
        Direction::Reply as u8,
    );
    stamp(&mut entry, reply);
    // The packet that lost the race was decided like the winner's: it passes, counted on the
    // flow if the winner's entries are in (its original may still be on its way).
    let race = |key: &FlowKey| {
        if let Some(flow) = lookup(key) {
            seen(key, flow, tcp_flags, len);
        }
        Ok(false)
    };
    match insert_new(&reply_key, &entry) {
        Ok(()) => {}
        // Another CPU is creating this flow (or the tuple's reverse is a flow of its own).
        Err(CreateError::Exists) => {
            count(ConntrackStat::InsertRaces, 1);
            return race(key);
        }
        Err(CreateError::Failed) => return Err(DropReason::FlowInsertFailed),
    }
    let mut entry = new_flow(
        reply_key,
        [0; 4],
        0,
        Rewrite::None as u8,
        kind as u8,
        Direction::Original as u8,
    );
    stamp(&mut entry, original);
    entry.packets = 1;
    entry.bytes = len as u64;
    entry.tcp_flags_seen = tcp_flags;
    match insert_original_only(key, &entry, &reply_key) {
        Ok(()) => Ok(true),
        Err(CreateError::Exists) => race(key),
        Err(CreateError::Failed) => Err(DropReason::FlowInsertFailed),
    }
}

/// Records what the NSGs decided on the flow's first packet.
#[inline(always)]
pub fn stamp(flow: &mut Flow, mark: Mark) {
    flow.nsg_verdict = mark.verdict;
    flow.nsg_rule_subnet = mark.rule_subnet;
    flow.nsg_rule_group = mark.rule_group;
}

/// Takes back a new flow's entry (one whose sibling could not be inserted).
#[inline(always)]
pub fn remove(key: &FlowKey) {
    let _ = NEW_FLOWS.remove(key);
}

/// A new flow's entry for one direction.
#[inline(always)]
pub fn new_flow(
    sibling: FlowKey,
    nat_ip: [u8; 4],
    nat_port: u16,
    rewrite: u8,
    kind: u8,
    direction: u8,
) -> Flow {
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    Flow {
        created_ns: now,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
        sibling,
        nat_ip,
        nat_port,
        rewrite,
        kind,
        direction,
        tcp_flags_seen: 0,
        nsg_verdict: NsgVerdict::Unclassified as u8,
        status: 0,
        nsg_rule_subnet: NO_RULE,
        nsg_rule_group: NO_RULE,
    }
}

#[inline(always)]
pub fn count(stat: ConntrackStat, n: u64) {
    if let Some(slot) = CONNTRACK_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += n }
    }
}
