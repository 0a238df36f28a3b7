//! The pods of this node, by address; and anti-spoofing: a pod may send only from its own
//! address and MAC, through its own veth.
use aya_ebpf::{macros::map, maps::HashMap};
use vnetd_common::{Endpoint, maps::ENDPOINTS_MAX};

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<[u8; 4], Endpoint> = HashMap::with_max_entries(ENDPOINTS_MAX, 0);

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
