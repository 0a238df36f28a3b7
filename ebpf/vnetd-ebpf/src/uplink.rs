//! The node's uplink. XDP answers ARP for the node's pods (they are the NIC's secondary
//! addresses) and drops only what is malformed and certainly not for the node's stack; TC
//! ingress sends traffic for a local pod straight into its namespace. Everything else passes
//! untouched: the uplink is the node's too.
use aya_ebpf::{
    bindings::xdp_action,
    programs::{TcContext, XdpContext},
};
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr};
use vnetd_common::{DropReason, FlowKind, Path};

use crate::{
    arp,
    counters::count_traffic,
    drop, endpoint,
    flow::{self, Verdict},
    forward, l3,
    nat::{self, Inbound},
    node,
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
    let ours = endpoint::lookup(&arp.tpa).is_some() || nat::is_public(&arp.tpa);
    if !arp::is_request(arp) || !ours {
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
    let Some(mut ip) = pkt.ipv4() else {
        return Ok(forward::PASS_ON);
    };
    let Some(node) = node::config() else {
        return Ok(forward::PASS_ON);
    };
    if let Some(ep) = endpoint::cached_destination(&ip.hdr.dst_addr) {
        return match flow::from_uplink(&ip, ep, node, pkt.len())? {
            // A reply of a Service connection: kube-proxy's conntrack translates it back.
            Verdict::Stack => Ok(forward::PASS_ON),
            _ if !l3::forward_hop(ip.hdr) => Err(DropReason::TtlExceeded),
            _ => forward::to_local_pod(eth, ep, Path::UplinkToPod, pkt.len()),
        };
    }
    let to_node = ip.hdr.dst_addr == node.primary_ip;
    if !to_node && !nat::is_public(&ip.hdr.dst_addr) {
        return Ok(forward::PASS_ON);
    }
    let routed_hop = |hdr: &mut Ipv4Hdr| {
        l3::forward_hop(hdr)
            .then_some(())
            .ok_or(DropReason::TtlExceeded)
    };
    match nat::inbound(ctx, &pkt, &mut ip, to_node, routed_hop)? {
        Inbound::ToNode => Ok(forward::PASS_ON),
        Inbound::ToPod(pod_ip, kind) => {
            let ep = endpoint::lookup(&pod_ip).ok_or(DropReason::NoRoute)?;
            // The translation moved the packet's bytes: its headers are read anew.
            let eth = Packet::from_tc(ctx).eth().ok_or(DropReason::Malformed)?;
            let path = match kind {
                FlowKind::PublicInbound => Path::PublicToPod,
                _ => Path::InternetToPod,
            };
            forward::to_local_pod(eth, ep, path, pkt.len())
        }
    }
}

#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    drop::tc(try_egress(ctx))
}

/// The node's own packets: those from the primary address and a port in the SNAT range are
/// tracked, so pods never get their tuple. And on a node with Services, pods' packets the
/// node's stack forwarded (kube-proxy translated them): decided by the sending pod's outbound
/// NSG rules and tracked so their replies come back through the stack. Only what those rules
/// deny is dropped here.
#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading a field of the __sk_buff the program was given.
    let forwarded = unsafe { (*ctx.skb.skb).ingress_ifindex } != 0;
    let pkt = Packet::from_tc(ctx);
    let (Some(ip), Some(node)) = (pkt.ipv4_frame(), node::config()) else {
        return Ok(forward::PASS_ON);
    };
    if forwarded {
        let client = match node.has_services() {
            true => endpoint::lookup(&ip.hdr.src_addr),
            false => None,
        };
        // Only the NSG's refusal drops: a flow table that cannot take the flow costs the
        // Service's replies, not this packet.
        if let Some(Err(DropReason::NsgDenied)) =
            client.map(|client| flow::stack_forwarded(&ip, client, pkt.len()))
        {
            return Err(DropReason::NsgDenied);
        }
    } else if ip.hdr.src_addr == node.primary_ip && nat::host_outbound(ctx, &ip, node, pkt.len()) {
        count_traffic(Path::HostNat, pkt.len());
    }
    Ok(forward::PASS_ON)
}
