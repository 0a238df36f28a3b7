//! Sending a packet on: straight into a local pod's namespace, or out of the uplink with the
//! kernel resolving the next hop's MAC.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
};
use network_types::eth::EthHdr;
use vnetd_common::{DropReason, Endpoint, NodeConfig, Path};

use crate::{counters::count_traffic, route::Hop};

const AF_INET: u32 = 2;

/// Sends a routed packet to the hop its route picked.
#[inline(always)]
pub fn to_hop(
    eth: &mut EthHdr,
    hop: Hop,
    node: &NodeConfig,
    len: usize,
) -> Result<i32, DropReason> {
    match hop {
        Hop::LocalPod(ep, path) => to_local_pod(eth, ep, path, len),
        Hop::Uplink(next_hop, path) => to_uplink(node.uplink_ifindex, Some(next_hop), path, len),
        Hop::NodeDefault(path) => to_uplink(node.uplink_ifindex, None, path, len),
    }
}

/// Out of the uplink wherever the node's routing table sends `dst` (a masqueraded packet to
/// the internet).
#[inline(always)]
pub fn to_internet(node: &NodeConfig, len: usize) -> Result<i32, DropReason> {
    to_uplink(node.uplink_ifindex, None, Path::PodToInternet, len)
}

/// Delivers into a local pod: its veth's peer, skipping the host's backlog queue. The frame
/// looks as if the pod's gateway (its host veth) had routed it.
#[inline(always)]
pub fn to_local_pod(
    eth: &mut EthHdr,
    ep: &Endpoint,
    path: Path,
    len: usize,
) -> Result<i32, DropReason> {
    // Read into locals the compiler cannot fold away: copied straight from the map value into
    // the packet, or through plain locals, the compiler cannot rule out an overlap and calls
    // a byte-by-byte memmove (a BPF-to-BPF call per MAC).
    // SAFETY: reads of two fields of a map value.
    let (host_mac, pod_mac) = unsafe {
        (
            core::ptr::read_volatile(&ep.host_mac),
            core::ptr::read_volatile(&ep.pod_mac),
        )
    };
    eth.src_addr = host_mac;
    eth.dst_addr = pod_mac;
    // SAFETY: a plain helper call.
    let rc = unsafe { bpf_redirect_peer(ep.host_ifindex, 0) };
    redirected(rc, path, len)
}

/// Out of the uplink to `next_hop` (an on-link address on the fabric), or with `None` to
/// wherever the node's own routing table sends the destination (its default gateway for the
/// internet).
#[inline(always)]
fn to_uplink(
    uplink_ifindex: u32,
    next_hop: Option<[u8; 4]>,
    path: Path,
    len: usize,
) -> Result<i32, DropReason> {
    let rc = match next_hop {
        Some(ip) => {
            let mut nh = bpf_redir_neigh {
                nh_family: AF_INET,
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                    ipv4_nh: u32::from_ne_bytes(ip),
                },
            };
            // SAFETY: `nh` outlives the call; its size is passed.
            unsafe {
                bpf_redirect_neigh(
                    uplink_ifindex,
                    &mut nh,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            }
        }
        // SAFETY: a NULL next hop asks the kernel for a FIB lookup.
        None => unsafe { bpf_redirect_neigh(uplink_ifindex, core::ptr::null_mut(), 0, 0) },
    };
    redirected(rc, path, len)
}

/// Back out of the interface the frame came in on, to the pod that sent it (an ARP reply, an
/// ICMP error).
#[inline(always)]
pub fn bounce(ifindex: u32, path: Path, len: usize) -> Result<i32, DropReason> {
    // SAFETY: a plain helper call; flags 0 = egress.
    let rc = unsafe { bpf_redirect(ifindex, 0) };
    redirected(rc, path, len)
}

#[inline(always)]
fn redirected(rc: i64, path: Path, len: usize) -> Result<i32, DropReason> {
    if rc != TC_ACT_REDIRECT as i64 {
        return Err(DropReason::RedirectFailed);
    }
    count_traffic(path, len);
    Ok(TC_ACT_REDIRECT)
}

/// A packet that is not vnetd's to forward: on to the next TC program, then the kernel's stack
/// (`TC_ACT_UNSPEC`; `TC_ACT_OK` would skip the TCX programs attached after vnetd's).
pub const PASS_ON: i32 = -1;
