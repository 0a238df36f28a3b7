//! vnetd's eBPF programs: one entry per hook, each a pipeline in its own file (`uplink`, `pod`)
//! over modules of one concern each: parse, endpoint (anti-spoofing, container groups' exposed
//! ports), arp, route, l3, icmp, flow (the stateful stage: a known flow's packet goes on as its
//! entry says, a new flow is decided), conntrack (the flow table), nsg (the security groups'
//! classifier), nat (SNAT, public addresses, the node's own ports), csum (rewrites with the
//! kernel's checksum helpers), forward, counters (traffic) and drop (the one exit that counts
//! why a packet was refused).
#![no_std]
#![no_main]

mod arp;
mod conntrack;
mod counters;
mod csum;
mod drop;
mod endpoint;
mod flow;
mod flowlog;
mod forward;
mod fragment;
mod icmp;
mod l3;
mod nat;
mod node;
mod nsg;
mod parse;
mod pod;
mod route;
mod uplink;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// The node's uplink (XDP): proxy ARP for the node's pods, early drops.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    uplink::xdp(&ctx)
}

/// The node's uplink (TC ingress): traffic for a local pod goes straight into its namespace.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    uplink::ingress(&ctx)
}

/// The node's uplink (TC egress): the node's own connections from ports in the SNAT range.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    uplink::egress(&ctx)
}

/// Everything a pod sends (TC ingress on its host-side veth).
#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    pod::ingress(&ctx)
}

/// What the node's stack sends into a pod (TC egress on its host-side veth).
#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    pod::egress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
