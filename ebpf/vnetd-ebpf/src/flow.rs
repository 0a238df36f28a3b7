//! The flow stage of every way into or out of a pod. A packet of a known flow goes on as its
//! entry says, for one lookup: untouched, translated (SNAT, a Public group's reply), or to the
//! node's stack (a Service kube-proxy translated). A new flow's first packet is decided here:
//! the exposed ports of a container group at the receiving end, then the NSGs of the pods at
//! either end (outbound rules of the sender, inbound rules of the receiver; each end's rules are
//! applied on its own node, or at the sender's side when both are on this node, since
//! `bpf_redirect_peer` skips the receiver's hooks). Only allowed flows get entries, so replies
//! and later packets pass without rules and a rule change applies to new flows only.
//!
//! Pods without NSGs or port restrictions on a node without Services skip the table: their
//! packets cost what stateless forwarding costs.
use aya_ebpf::programs::TcContext;
use vnetd_common::{
    DropReason, ENDPOINT_EXPOSED_PORTS_ONLY, Endpoint, FlowKind, NodeConfig, Rewrite,
};

use crate::{
    conntrack, endpoint,
    flowlog::{self, Ends},
    nat,
    nsg::{self, Mark, Tuple},
    parse::{
        Fragment, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4,
    },
};

/// Where a packet the flow stage let through goes.
pub enum Verdict {
    /// On along its route, untouched.
    Forward,
    /// Translated for the internet: out of the uplink.
    Internet,
    /// A flow the node's stack translated (a Service): to the stack.
    Stack,
}

/// Packets to or from `ep` need the flow table: it has NSGs, or exposes only some ports.
#[inline(always)]
pub fn tracked(ep: &Endpoint) -> bool {
    ep.nsg_in_subnet | ep.nsg_in_group | ep.nsg_out_subnet | ep.nsg_out_group != 0
        || ep.flags & ENDPOINT_EXPOSED_PORTS_ONLY != 0
}

/// A packet `src` sent, to the local pod `dst` (its next hop), to the internet (`internet`:
/// the node's default route), or elsewhere.
#[inline(always)]
pub fn pod_sent(
    ctx: &TcContext,
    ip: &Ipv4,
    src: &Endpoint,
    dst: Option<&Endpoint>,
    internet: bool,
    node: &NodeConfig,
    len: usize,
) -> Result<Verdict, DropReason> {
    let track = tracked(src) || dst.is_some_and(tracked);
    if !(track || internet || node.has_services()) {
        return Ok(Verdict::Forward);
    }
    // What goes to the internet is masqueraded unless its destination keeps the pod's
    // address; only TCP, UDP and ICMP echo requests, whole, can be (else this says why not).
    let untranslatable = if internet {
        nat::trackable(ip, ICMP_ECHO_REQUEST).err()
    } else {
        None
    };
    if !has_flow_key(ip) {
        if internet && ip.fragment == Fragment::Later && !nat::keeps_pod_address(&ip.hdr.dst_addr) {
            nat::later_fragment_outbound(ctx, ip.hdr, len)?;
            return Ok(Verdict::Internet);
        }
        stateless(ip, Some(src), dst)?;
        return match untranslatable {
            Some(reason) if !nat::keeps_pod_address(&ip.hdr.dst_addr) => Err(reason),
            _ => Ok(Verdict::Forward),
        };
    }
    let key = conntrack::key_of(ip);
    if let Some(flow) = conntrack::lookup(&key) {
        let flow = conntrack::seen(&key, flow, ip.tcp_flags, len);
        if flow.kind == FlowKind::HostStack as u8 {
            return Ok(Verdict::Stack);
        }
        if internet && flow.rewrite != Rewrite::None as u8 {
            if let Some(reason) = untranslatable {
                return Err(reason);
            }
            nat::apply(ctx, ip, &key, flow)?;
            return Ok(Verdict::Internet);
        }
        return Ok(Verdict::Forward);
    }
    // A new flow: decided by the NSGs before any translation (outbound rules see the pod's
    // address).
    let t = Tuple::of(ip);
    let out = nsg::outbound(src, &t)?;
    let into = match dst {
        Some(dst) => receive(ip, dst, &t)?,
        None => Mark::NONE,
    };
    if internet && !nat::keeps_pod_address(&key.dst_ip) {
        if let Some(reason) = untranslatable {
            return Err(reason);
        }
        let (flow, created) = nat::create_pod_snat(&key, src, node)?;
        conntrack::stamp(flow, out);
        if created {
            let ends = Ends {
                outbound: Some(&out),
                inbound: Some(&into),
            };
            flowlog::allowed(&key, FlowKind::PodSnat, ends);
        }
        let flow = conntrack::seen(&key, flow, ip.tcp_flags, len);
        nat::apply(ctx, ip, &key, flow)?;
        return Ok(Verdict::Internet);
    }
    if track && conntrack::create_untranslated(&key, FlowKind::Nsg, (out, into), ip.tcp_flags, len)?
    {
        let ends = Ends {
            outbound: Some(&out),
            inbound: Some(&into),
        };
        flowlog::allowed(&key, FlowKind::Nsg, ends);
    }
    Ok(Verdict::Forward)
}

/// A packet from the uplink for the local pod `ep`, untranslated (from elsewhere in the VNet).
#[inline(always)]
pub fn from_uplink(
    ip: &Ipv4,
    ep: &Endpoint,
    node: &NodeConfig,
    len: usize,
) -> Result<Verdict, DropReason> {
    let track = tracked(ep);
    if !(track || node.has_services()) {
        return Ok(Verdict::Forward);
    }
    if !has_flow_key(ip) {
        stateless(ip, None, Some(ep))?;
        return Ok(Verdict::Forward);
    }
    let key = conntrack::key_of(ip);
    if let Some(flow) = conntrack::lookup(&key) {
        let flow = conntrack::seen(&key, flow, ip.tcp_flags, len);
        if flow.kind == FlowKind::HostStack as u8 {
            return Ok(Verdict::Stack);
        }
        return Ok(Verdict::Forward);
    }
    let into = receive(ip, ep, &Tuple::of(ip))?;
    let marks = (into, Mark::NONE);
    if track && conntrack::create_untranslated(&key, FlowKind::Nsg, marks, ip.tcp_flags, len)? {
        let ends = Ends {
            outbound: None,
            inbound: Some(&into),
        };
        flowlog::allowed(&key, FlowKind::Nsg, ends);
    }
    Ok(Verdict::Forward)
}

/// A packet the node's stack sends into the local pod `ep`: the node's own (`forwarded`
/// false), or one it forwarded, which on a node with Services is one kube-proxy translated: its
/// flow is kept as the stack's, so the pod's replies go back through the stack.
#[inline(always)]
pub fn from_stack(
    ip: &Ipv4,
    ep: &Endpoint,
    node: &NodeConfig,
    forwarded: bool,
    len: usize,
) -> Result<(), DropReason> {
    let service = forwarded && node.has_services();
    let track = tracked(ep);
    if !(track || service) {
        return Ok(());
    }
    if !has_flow_key(ip) {
        return stateless(ip, None, Some(ep));
    }
    let key = conntrack::key_of(ip);
    if let Some(flow) = conntrack::lookup(&key) {
        conntrack::seen(&key, flow, ip.tcp_flags, len);
        return Ok(());
    }
    if service && node.is_service(&key.src_ip) {
        // The reply of the pod's own connection to a Service, translated back by the stack.
        return Ok(());
    }
    let t = Tuple::of(ip);
    // A Service's connection from a pod of this node (translated by the stack to this
    // backend): the client's outbound rules decide it too, as they would a direct one.
    let client = if service {
        endpoint::lookup(&key.src_ip)
    } else {
        None
    };
    let out = match client {
        Some(client) => nsg::outbound(client, &t)?,
        None => Mark::NONE,
    };
    let into = receive(ip, ep, &t)?;
    let kind = if service {
        FlowKind::HostStack
    } else {
        FlowKind::Nsg
    };
    if conntrack::create_untranslated(&key, kind, (out, into), ip.tcp_flags, len)? {
        let ends = Ends {
            outbound: client.map(|_| &out),
            inbound: Some(&into),
        };
        flowlog::allowed(&key, kind, ends);
    }
    Ok(())
}

/// A packet of the local pod `client` that the node's stack forwarded out of the uplink (on a
/// node with Services: a connection kube-proxy translated to a pod elsewhere): decided by the
/// client's outbound rules (as a direct connection to the backend would be), and kept as the
/// stack's, so its replies from the uplink go back through the stack.
#[inline(always)]
pub fn stack_forwarded(ip: &Ipv4, client: &Endpoint, len: usize) -> Result<(), DropReason> {
    if !has_flow_key(ip) {
        return stateless(ip, Some(client), None);
    }
    let key = conntrack::key_of(ip);
    if let Some(flow) = conntrack::lookup(&key) {
        conntrack::seen(&key, flow, ip.tcp_flags, len);
        return Ok(());
    }
    let out = nsg::outbound(client, &Tuple::of(ip))?;
    let marks = (out, Mark::NONE);
    if conntrack::create_untranslated(&key, FlowKind::HostStack, marks, ip.tcp_flags, len)? {
        let ends = Ends {
            outbound: Some(&out),
            inbound: None,
        };
        flowlog::allowed(&key, FlowKind::HostStack, ends);
    }
    Ok(())
}

/// What decides whether the receiving pod `ep` takes a new flow: its exposed ports, then its
/// inbound NSGs.
#[inline(always)]
fn receive(ip: &Ipv4, ep: &Endpoint, t: &Tuple) -> Result<Mark, DropReason> {
    if !endpoint::reachable(ep, ip) {
        flowlog::denied(t, true, None, DropReason::PortNotExposed);
        return Err(DropReason::PortNotExposed);
    }
    nsg::inbound(ep, t)
}

/// What has no flow key (later fragments, ICMP errors, protocols other than TCP, UDP and ICMP
/// echo) is decided packet by packet.
#[inline(always)]
fn stateless(ip: &Ipv4, src: Option<&Endpoint>, dst: Option<&Endpoint>) -> Result<(), DropReason> {
    let t = Tuple::of(ip);
    if let Some(src) = src {
        nsg::outbound(src, &t)?;
    }
    if let Some(dst) = dst {
        receive(ip, dst, &t)?;
    }
    Ok(())
}

/// TCP, UDP and ICMP echo, whole or a first fragment: what a flow entry can be keyed on.
#[inline(always)]
fn has_flow_key(ip: &Ipv4) -> bool {
    if ip.fragment == Fragment::Later {
        return false;
    }
    match ip.hdr.proto {
        IPPROTO_TCP | IPPROTO_UDP => true,
        IPPROTO_ICMP => matches!(ip.icmp_type, ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY),
        _ => false,
    }
}
