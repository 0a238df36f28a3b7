//! The node's uplink. XDP answers ARP for the node's pods (they are the NIC's secondary
//! addresses) and drops only what is malformed and certainly not for the node's stack; TC
//! ingress sends traffic for a local pod straight into its namespace. Everything else passes
//! untouched: the uplink is the node's too.
use aya_ebpf::{
    bindings::xdp_action,
    programs::{TcContext, XdpContext},
};
use network_types::{arp::ArpHdr, eth::EthHdr};
use vnetd_common::{DropReason, Path};

use crate::{
    arp,
    counters::count_traffic,
    drop, endpoint, forward, l3, node,
    parse::{ETH_P_ARP, ETH_P_IPV4, Packet},
};

#[inline(always)]
pub fn xdp(ctx: &XdpContext) -> u32 {
    drop::xdp(try_xdp(ctx))
}

#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> Result<u32, DropReason> {
    let pkt = Packet::from_xdp(ctx);
    let eth = pkt.eth().ok_or(DropReason::Malformed)?;
    count_traffic(Path::UplinkIn, pkt.len());
    if eth.ether_type != ETH_P_ARP {
        return Ok(xdp_action::XDP_PASS);
    }
    if pkt.ptr_at::<ArpHdr>(EthHdr::LEN).is_none() {
        // A truncated ARP is of no use to anyone, the kernel included.
        return Err(DropReason::Malformed);
    }
    let (Some(arp), Some(node)) = (pkt.arp(), node::config()) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if !arp::is_request(arp) || endpoint::lookup(&arp.tpa).is_none() {
        return Ok(xdp_action::XDP_PASS);
    }
    arp::make_reply(eth, arp, &node.uplink_mac);
    count_traffic(Path::ArpReply, pkt.len());
    Ok(xdp_action::XDP_TX)
}

#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    drop::tc(try_ingress(ctx))
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    let pkt = Packet::from_tc(ctx);
    if pkt.vlan_tagged {
        // Only untagged frames are the VNet's.
        return Ok(forward::PASS_ON);
    }
    let Some(eth) = pkt.eth().filter(|eth| eth.ether_type == ETH_P_IPV4) else {
        return Ok(forward::PASS_ON);
    };
    // What vnetd cannot parse is the kernel's to judge (it drops what is really malformed).
    let Some(ip) = pkt.ipv4() else {
        return Ok(forward::PASS_ON);
    };
    let Some(ep) = endpoint::lookup(&ip.hdr.dst_addr) else {
        return Ok(forward::PASS_ON);
    };
    if !l3::forward_hop(ip.hdr) {
        return Err(DropReason::TtlExceeded);
    }
    forward::to_local_pod(eth, ep, Path::UplinkToPod, pkt.len())
}

#[inline(always)]
pub fn egress(_ctx: &TcContext) -> i32 {
    // The node's own flows are tracked here once connection tracking lands (issue 8).
    forward::PASS_ON
}
