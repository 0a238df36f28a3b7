//! The pods of this node, by address; and anti-spoofing: a pod may send only from its own
//! address and MAC, through its own veth.
use aya_ebpf::{macros::map, maps::HashMap};
use vnetd_common::{
    ENDPOINT_EXPOSED_PORTS_ONLY, Endpoint, GroupPortKey,
    maps::{ENDPOINTS_MAX, GROUP_PORTS_MAX},
};

use crate::parse::{IPPROTO_TCP, IPPROTO_UDP, Ipv4};

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<[u8; 4], Endpoint> = HashMap::with_max_entries(ENDPOINTS_MAX, 0);

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
