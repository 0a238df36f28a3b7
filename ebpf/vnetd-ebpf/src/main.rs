//! vnetd's eBPF programs, one entry per hook. Each entry is a short pipeline over the modules,
//! one concern per file: parse, endpoint (and anti-spoofing), arp, route, forward, counters.
#![no_std]
#![no_main]

mod arp;
mod counters;
mod endpoint;
mod forward;
mod l3;
mod node;
mod parse;
mod route;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use network_types::{arp::ArpHdr, eth::EthHdr};
use vnetd_common::{DropReason, NextHop, POD_GATEWAY, Path};

use crate::{
    counters::{count_drop, count_traffic},
    parse::{ETH_P_ARP, ETH_P_IPV4, Packet},
};

/// The node's uplink (XDP): answers ARP for the node's pods (they are the NIC's secondary
/// addresses) and drops malformed frames; everything else goes on to the stack and TC.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    let pkt = Packet::from_xdp(&ctx);
    let Some(eth) = pkt.eth() else {
        count_drop(DropReason::Malformed);
        return xdp_action::XDP_DROP;
    };
    count_traffic(Path::UplinkIn, pkt.len());
    if eth.ether_type != ETH_P_ARP {
        return xdp_action::XDP_PASS;
    }
    if pkt.ptr_at::<ArpHdr>(EthHdr::LEN).is_none() {
        count_drop(DropReason::Malformed);
        return xdp_action::XDP_DROP;
    }
    let (Some(arp), Some(node)) = (pkt.arp(), node::config()) else {
        return xdp_action::XDP_PASS;
    };
    if !arp::is_request(arp) || endpoint::lookup(&arp.tpa).is_none() {
        return xdp_action::XDP_PASS;
    }
    arp::make_reply(eth, arp, &node.uplink_mac);
    count_traffic(Path::ArpReply, pkt.len());
    xdp_action::XDP_TX
}

/// The node's uplink (TC ingress): traffic for a local pod goes straight into its namespace.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    let pkt = Packet::from_tc(&ctx);
    let Some(eth) = pkt.eth() else {
        return TC_ACT_OK;
    };
    if eth.ether_type != ETH_P_IPV4 {
        return TC_ACT_OK;
    }
    let Some(ip) = pkt.ipv4() else {
        count_drop(DropReason::Malformed);
        return TC_ACT_SHOT;
    };
    let Some(ep) = endpoint::lookup(&ip.dst_addr) else {
        return TC_ACT_OK;
    };
    if !l3::forward_hop(ip) {
        count_drop(DropReason::TtlExceeded);
        return TC_ACT_SHOT;
    }
    forward::to_local_pod(eth, ep, Path::UplinkToPod, pkt.len())
}

/// Everything a pod sends (TC ingress on its host-side veth).
#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    let pkt = Packet::from_tc(&ctx);
    let len = pkt.len();
    count_traffic(Path::PodOut, len);
    let Some(eth) = pkt.eth() else {
        count_drop(DropReason::Malformed);
        return TC_ACT_SHOT;
    };
    // SAFETY: reading the skb's ifindex field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match eth.ether_type {
        ETH_P_IPV4 => pod_ipv4(&pkt, ifindex, len),
        ETH_P_ARP => pod_arp(&pkt, ifindex, len),
        _ => {
            count_drop(DropReason::Unsupported);
            TC_ACT_SHOT
        }
    }
}

/// A pod's ARP: requests for its gateway are answered with its host veth's MAC; anything else
/// (its replies to the node) passes if it speaks for the pod's own address.
#[inline(always)]
fn pod_arp(pkt: &Packet, ifindex: u32, len: usize) -> i32 {
    let (Some(eth), Some(arp)) = (pkt.eth(), pkt.arp()) else {
        count_drop(DropReason::Malformed);
        return TC_ACT_SHOT;
    };
    let Some(ep) = endpoint::verified_source(ifindex, &arp.spa, &arp.sha) else {
        count_drop(DropReason::Spoofed);
        return TC_ACT_SHOT;
    };
    if arp::is_request(arp) && arp.tpa == POD_GATEWAY {
        let host_mac = ep.host_mac;
        arp::make_reply(eth, arp, &host_mac);
        return forward::bounce(ifindex, len);
    }
    TC_ACT_OK
}

#[inline(always)]
fn pod_ipv4(pkt: &Packet, ifindex: u32, len: usize) -> i32 {
    let (Some(eth), Some(ip)) = (pkt.eth(), pkt.ipv4()) else {
        count_drop(DropReason::Malformed);
        return TC_ACT_SHOT;
    };
    let Some(src) = endpoint::verified_source(ifindex, &ip.src_addr, &eth.src_addr) else {
        count_drop(DropReason::Spoofed);
        return TC_ACT_SHOT;
    };
    let Some(node) = node::config() else {
        count_drop(DropReason::NoRoute);
        return TC_ACT_SHOT;
    };
    if ip.dst_addr == node.primary_ip {
        count_traffic(Path::PodToHost, len);
        return TC_ACT_OK;
    }
    // Every other destination is routed: through the pod's gateway, one hop.
    if !l3::forward_hop(ip) {
        count_drop(DropReason::TtlExceeded);
        return TC_ACT_SHOT;
    }
    if let Some(dst) = endpoint::lookup(&ip.dst_addr) {
        return forward::to_local_pod(eth, dst, Path::PodToPod, len);
    }
    let Some(route) = route::lookup(src.route_table, &ip.dst_addr) else {
        count_drop(DropReason::NoRoute);
        return TC_ACT_SHOT;
    };
    match route.next_hop {
        x if x == NextHop::None as u32 => {
            count_drop(DropReason::RouteNone);
            TC_ACT_SHOT
        }
        x if x == NextHop::VirtualAppliance as u32 => {
            forward::to_uplink(node.uplink_ifindex, Some(route.next_hop_ip), len)
        }
        x if x == NextHop::Internet as u32 => forward::to_uplink(node.uplink_ifindex, None, len),
        _ => forward::to_uplink(node.uplink_ifindex, Some(ip.dst_addr), len),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
