//! User-defined and system routes: longest prefix match per route table, and the next hop a
//! route picks. Every packet a pod sends is routed by its subnet's table, also when the
//! destination is a pod on this node (Azure applies the source subnet's routes to every packet).
use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use vnetd_common::{
    DropReason, ENDPOINT_VNET_DIRECT, Endpoint, NextHop, Path, Route, RouteKey, maps::ROUTES_MAX,
};

use crate::endpoint;

#[map(name = "ROUTES")]
static ROUTES: LpmTrie<RouteKey, Route> =
    LpmTrie::with_max_entries(ROUTES_MAX, 1 /* BPF_F_NO_PREALLOC */);

/// Where a packet `src` sends to `dst` goes. When `src`'s table routes the whole VNet to the
/// VNet (`ENDPOINT_VNET_DIRECT`), a destination that is a pod of this node is that pod, as the
/// longest-prefix match would find; skipping the match saves the costliest lookup of the
/// pod-to-pod path.
#[inline(always)]
pub fn hop(src: &Endpoint, dst: &[u8; 4]) -> Result<Hop, DropReason> {
    if src.flags & ENDPOINT_VNET_DIRECT == 0 {
        let local_dst = || endpoint::cached_destination(dst);
        return next_hop(lookup(src.route_table, dst)?, dst, local_dst);
    }
    match endpoint::cached_destination(dst) {
        Some(ep) => Ok(Hop::LocalPod(ep, Path::PodToPod)),
        None => next_hop(lookup(src.route_table, dst)?, dst, || None),
    }
}

#[inline(always)]
fn lookup(table: u32, dst: &[u8; 4]) -> Result<&'static Route, DropReason> {
    let key = Key::new(
        RouteKey::TABLE_BITS + 32,
        RouteKey {
            table: table.to_be_bytes(),
            dst: *dst,
        },
    );
    ROUTES.get(&key).ok_or(DropReason::NoRoute)
}

/// Where a routed packet goes, and under which path it is counted.
pub enum Hop {
    /// Into a pod on this node: the destination itself, or the appliance the route names.
    LocalPod(&'static Endpoint, Path),
    /// Out of the uplink to this on-link address.
    Uplink([u8; 4], Path),
    /// Out of the uplink wherever the node's own routing table sends the destination.
    NodeDefault(Path),
}

/// The hop `route` picks for `dst` (`local_dst`: the pod of this node at `dst`, if any). A
/// local pod is delivered to directly only when it is the hop itself: the destination of a VNet
/// route, or the appliance of a `VirtualAppliance` route.
#[inline(always)]
fn next_hop(
    route: &Route,
    dst: &[u8; 4],
    local_dst: impl FnOnce() -> Option<&'static Endpoint>,
) -> Result<Hop, DropReason> {
    match route.next_hop {
        x if x == NextHop::VnetLocal as u32 => Ok(match local_dst() {
            Some(ep) => Hop::LocalPod(ep, Path::PodToPod),
            None => Hop::Uplink(*dst, Path::PodToVnet),
        }),
        x if x == NextHop::VirtualAppliance as u32 => {
            Ok(match endpoint::lookup(&route.next_hop_ip) {
                Some(appliance) => Hop::LocalPod(appliance, Path::PodToAppliance),
                None => Hop::Uplink(route.next_hop_ip, Path::PodToAppliance),
            })
        }
        x if x == NextHop::VirtualNetworkGateway as u32 => {
            Ok(Hop::Uplink(*dst, Path::PodToGateway))
        }
        x if x == NextHop::Internet as u32 => Ok(Hop::NodeDefault(Path::PodToInternet)),
        x if x == NextHop::None as u32 => Err(DropReason::RouteNone),
        _ => Err(DropReason::NoRoute),
    }
}
