//! Everything a pod sends (TC ingress on its host-side veth): anti-spoofing, the route of the
//! pod's subnet, one routed hop, the flow stage (NSGs, masquerading for the internet, Services'
//! replies to the node's stack), and delivery to a local pod or out of the uplink. And what the
//! node's stack sends into a pod (TC egress): the pod's side of the flow stage.
use aya_ebpf::programs::TcContext;
use network_types::eth::EthHdr;
use vnetd_common::{DropReason, POD_GATEWAY, Path};

use crate::{
    arp,
    counters::count_traffic,
    drop, endpoint,
    flow::{self, Verdict},
    forward, icmp, l3, node,
    parse::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, Packet},
    route::{self, Hop},
};

#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    drop::tc(try_ingress(ctx))
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    let pkt = Packet::from_tc(ctx);
    count_traffic(Path::PodOut, pkt.len());
    if pkt.vlan_tagged {
        return Err(DropReason::VlanTagged);
    }
    let eth = pkt.eth().ok_or(DropReason::Malformed)?;
    match eth.ether_type {
        ETH_P_IPV4 => ipv4(ctx, &pkt, eth),
        ETH_P_ARP => arp(&pkt, eth),
        ETH_P_IPV6 => Err(DropReason::Ipv6),
        ETH_P_8021Q | ETH_P_8021AD => Err(DropReason::VlanTagged),
        _ => Err(DropReason::Unsupported),
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, pkt: &Packet, eth: &mut EthHdr) -> Result<i32, DropReason> {
    let ip = pkt.ipv4().ok_or(DropReason::Malformed)?;
    let src = endpoint::cached_source(pkt.ifindex, &ip.hdr.src_addr, &eth.src_addr)
        .ok_or(DropReason::Spoofed)?;
    let node = node::config().ok_or(DropReason::NoRoute)?;
    if node.is_service(&ip.hdr.dst_addr) {
        // kube-proxy's Services live in the node's stack (and so do their replies' way back).
        return to_stack(Path::PodToService, pkt.len());
    }
    if ip.hdr.dst_addr == node.primary_ip {
        // The pod's own node is not a hop: its stack answers.
        flow::pod_sent(ctx, &ip, src, None, false, node, pkt.len())?;
        return to_stack(Path::PodToHost, pkt.len());
    }
    let hop = route::hop(src, &ip.hdr.dst_addr)?;
    if !l3::forward_hop(ip.hdr) {
        let macs = (src.pod_mac, src.host_mac);
        return icmp::time_exceeded_to_pod(ctx, &ip, pkt.ifindex, POD_GATEWAY, macs);
    }
    let (dst, internet) = match hop {
        Hop::LocalPod(ep, _) => (Some(ep), false),
        Hop::NodeDefault(_) => (None, true),
        Hop::Uplink(..) => (None, false),
    };
    match flow::pod_sent(ctx, &ip, src, dst, internet, node, pkt.len())? {
        Verdict::Forward => forward::to_hop(eth, hop, node, pkt.len()),
        Verdict::Internet => forward::to_internet(node, pkt.len()),
        Verdict::Stack => to_stack(Path::PodToService, pkt.len()),
    }
}

#[inline(always)]
fn to_stack(path: Path, len: usize) -> Result<i32, DropReason> {
    count_traffic(path, len);
    Ok(forward::PASS_ON)
}

/// A pod's ARP: requests for its gateway are answered with its host veth's MAC; anything else
/// (its replies to the node) passes if it speaks for the pod's own address and MAC.
#[inline(always)]
fn arp(pkt: &Packet, eth: &mut EthHdr) -> Result<i32, DropReason> {
    let arp = pkt.arp().ok_or(DropReason::Malformed)?;
    if arp.spa == [0; 4] {
        return Err(DropReason::ArpProbe);
    }
    if eth.src_addr != arp.sha {
        return Err(DropReason::Spoofed);
    }
    let ep =
        endpoint::verified_source(pkt.ifindex, &arp.spa, &arp.sha).ok_or(DropReason::Spoofed)?;
    if arp::is_request(arp) && arp.tpa == POD_GATEWAY {
        let host_mac = ep.host_mac;
        arp::make_reply(eth, arp, &host_mac);
        return forward::bounce(pkt.ifindex, Path::ArpReply, pkt.len());
    }
    Ok(forward::PASS_ON)
}

/// What the node's stack sends into a pod: the node's own traffic, and Services kube-proxy
/// translated. (Packets vnetd delivers itself are redirected to the pod's side and never pass
/// here.)
#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    drop::tc(try_egress(ctx))
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, DropReason> {
    let pkt = Packet::from_tc(ctx);
    count_traffic(Path::HostToPod, pkt.len());
    let (Some(ip), Some(node)) = (pkt.ipv4_frame(), node::config()) else {
        return Ok(forward::PASS_ON);
    };
    let Some(ep) =
        endpoint::cached_destination(&ip.hdr.dst_addr).filter(|ep| ep.host_ifindex == pkt.ifindex)
    else {
        return Ok(forward::PASS_ON);
    };
    // SAFETY: reading a field of the __sk_buff the program was given.
    let forwarded = unsafe { (*ctx.skb.skb).ingress_ifindex } != 0;
    flow::from_stack(&ip, ep, node, forwarded, pkt.len())?;
    Ok(forward::PASS_ON)
}
