//! The pods of this node, by address; and anti-spoofing: a pod may send only from its own
//! address and MAC, through its own veth. A packet's two lookups (its source, its destination)
//! go through a per-CPU cache: a hash lookup of `ENDPOINTS` took about 15 ns of a packet's 100
//! live, a cache hit a few.
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use vnetd_common::{
    CachedEndpoint, ENDPOINT_CACHE_SLOTS, ENDPOINT_EXPOSED_PORTS_ONLY, Endpoint, GroupPortKey,
    maps::{ENDPOINTS_MAX, GROUP_PORTS_MAX},
};

use crate::parse::{IPPROTO_TCP, IPPROTO_UDP, Ipv4};

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<[u8; 4], Endpoint> = HashMap::with_max_entries(ENDPOINTS_MAX, 0);

#[map(name = "ENDPOINTS_GENERATION")]
static ENDPOINTS_GENERATION: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "ENDPOINT_CACHE")]
static ENDPOINT_CACHE: PerCpuArray<CachedEndpoint> =
    PerCpuArray::with_max_entries(Role::COUNT * ENDPOINT_CACHE_SLOTS, 0);

#[map(name = "GROUP_PORTS")]
static GROUP_PORTS: HashMap<GroupPortKey, u32> = HashMap::with_max_entries(GROUP_PORTS_MAX, 0);

#[inline(always)]
pub fn lookup(ip: &[u8; 4]) -> Option<&'static Endpoint> {
    // SAFETY: the value is only read; a concurrent update by the agent replaces it whole.
    unsafe { ENDPOINTS.get(ip) }
}

/// The endpoint that `ifindex` belongs to, if `ip` and `mac` are really its own.
#[inline(always)]
pub fn verified_source(ifindex: u32, ip: &[u8; 4], mac: &[u8; 6]) -> Option<&'static Endpoint> {
    lookup(ip).filter(|ep| ep.host_ifindex == ifindex && ep.pod_mac == *mac)
}

/// [`verified_source`] through this CPU's cache: the source of a packet a pod sends.
#[inline(always)]
pub fn cached_source(ifindex: u32, ip: &[u8; 4], mac: &[u8; 6]) -> Option<&'static Endpoint> {
    cached(ip, Role::Source).filter(|ep| ep.host_ifindex == ifindex && ep.pod_mac == *mac)
}

/// [`lookup`] through this CPU's cache: the destination of a packet a pod sends, of one from
/// the uplink, or of one the node's stack sends into a pod.
#[inline(always)]
pub fn cached_destination(ip: &[u8; 4]) -> Option<&'static Endpoint> {
    cached(ip, Role::Destination)
}

/// Which half of the cache a lookup uses, so that a packet's source and destination never take
/// each other's slot.
#[derive(Clone, Copy)]
enum Role {
    Source = 0,
    Destination = 1,
}

impl Role {
    const COUNT: u32 = 2;
}

/// `ENDPOINTS[ip]` as of the current generation, from this CPU's slot for `ip` in `role` when
/// the slot holds it, else looked up and kept there (an address that is no endpoint too).
///
/// The returned reference points into the slot: it is valid until this CPU's next lookup in
/// the same role, so a program looks up at most one address per role. Only this CPU's programs
/// write its slots, and a program runs to its end before the next one starts on it.
///
/// It never points into `ENDPOINTS` (with the copies off, each lookup takes a copy): a pointer
/// that may be from either of two maps doubles the verifier's paths after it, which once took
/// `pod_ingress` to 92% of the verifier's budget.
///
/// The generation is read before `ENDPOINTS`: an entry the agent replaces after that read is
/// kept under the old generation, which the agent moves on from right after its write. (A
/// volatile read before a helper call stays before it in the program; the CPU keeps the order
/// on x86-64, and elsewhere the agent turns the copies off: `EndpointsGeneration`.)
#[inline(always)]
fn cached(ip: &[u8; 4], role: Role) -> Option<&'static Endpoint> {
    // SAFETY: an aligned u64 in the map's one slot; the agent stores it atomically.
    let generation = match ENDPOINTS_GENERATION.get_ptr(0) {
        Some(word) => unsafe { core::ptr::read_volatile(word) },
        None => 0,
    };
    let index = role as u32 * ENDPOINT_CACHE_SLOTS
        + ((u32::from(ip[2]) << 3) ^ u32::from(ip[3])) % ENDPOINT_CACHE_SLOTS;
    // The index is below the map's size: the lookup cannot fail.
    let slot = ENDPOINT_CACHE.get_ptr_mut(index)?;
    // SAFETY: this CPU's own slot, written only by programs on this CPU (see above).
    let slot = unsafe { &mut *slot };
    // Generation 0 (not numbered yet, or copies off): every slot starts at 0, so a copy is
    // taken on every lookup and used for this one only.
    if generation == 0 || slot.generation != generation || slot.ip != *ip {
        slot.endpoint = lookup(ip).copied().unwrap_or_default();
        slot.ip = *ip;
        slot.generation = generation;
    }
    (slot.endpoint.host_ifindex != 0).then_some(&slot.endpoint)
}

/// A packet from outside `ep`'s group may reach it: any packet for a pod; for a container group
/// only TCP and UDP to an exposed port (and ICMP, which has no ports).
#[inline(always)]
pub fn reachable(ep: &Endpoint, ip: &Ipv4) -> bool {
    if ep.flags & ENDPOINT_EXPOSED_PORTS_ONLY == 0 {
        return true;
    }
    if !matches!(ip.hdr.proto, IPPROTO_TCP | IPPROTO_UDP) {
        return true;
    }
    let key = GroupPortKey {
        ip: ip.hdr.dst_addr,
        port: ip.dst_port,
        proto: ip.hdr.proto,
        _pad: 0,
    };
    // SAFETY: the value is not read.
    unsafe { GROUP_PORTS.get(key) }.is_some()
}
