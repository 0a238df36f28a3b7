//! Address translation. Pods' connections out of the VNet leave with the node's address (or
//! their Public group's) and a port allocated here; replies are translated back. Inbound
//! connections to a Public group's address are translated to its private address. The node's
//! own connections from ports in the SNAT range are tracked beside the pods' (and moved to
//! another port if a pod flow held theirs), so the two never share a tuple on the wire.
use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use network_types::ip::Ipv4Hdr;
use vnetd_common::{
    ConntrackStat, Direction, DropReason, Endpoint, Flow, FlowKey, FlowKind, NoMasqueradeKey,
    NodeConfig, PublicAddress, PublicPortKey, Rewrite,
    maps::{NO_MASQUERADE_MAX, PUBLIC_IPS_MAX, PUBLIC_PORTS_MAX},
};

use crate::{
    conntrack::{self, CreateError},
    csum::{self, End},
    endpoint, flowlog, fragment, nsg,
    parse::{
        Fragment, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4,
        Packet,
    },
};

#[map(name = "NO_MASQUERADE")]
static NO_MASQUERADE: LpmTrie<NoMasqueradeKey, u32> =
    LpmTrie::with_max_entries(NO_MASQUERADE_MAX, 1 /* BPF_F_NO_PREALLOC */);

#[map(name = "PUBLIC_IPS")]
static PUBLIC_IPS: HashMap<[u8; 4], PublicAddress> = HashMap::with_max_entries(PUBLIC_IPS_MAX, 0);

#[map(name = "PUBLIC_PORTS")]
static PUBLIC_PORTS: HashMap<PublicPortKey, u32> = HashMap::with_max_entries(PUBLIC_PORTS_MAX, 0);

/// Port candidates tried for a new flow before it is refused.
const PROBES: u32 = 32;

/// Traffic to `dst` keeps the pod's address (the VNet, connected spaces, `nonMasqueradeCidrs`,
/// link-local).
#[inline(always)]
pub fn keeps_pod_address(dst: &[u8; 4]) -> bool {
    NO_MASQUERADE.get(Key::new(32, *dst)).is_some()
}

/// A Public group's address hosted on this node.
#[inline(always)]
pub fn is_public(ip: &[u8; 4]) -> bool {
    // SAFETY: the value is not read.
    unsafe { PUBLIC_IPS.get(ip) }.is_some()
}

/// What a flow key can be made of: TCP, UDP and ICMP echo, whole datagrams or their first
/// fragment (the later ones follow it: [`later_fragment_flow`]).
#[inline(always)]
pub fn trackable(ip: &Ipv4, echo_type: u8) -> Result<(), DropReason> {
    if ip.fragment == Fragment::Later {
        return Err(DropReason::NatFragment);
    }
    match ip.hdr.proto {
        IPPROTO_TCP | IPPROTO_UDP => Ok(()),
        IPPROTO_ICMP if ip.icmp_type == echo_type => Ok(()),
        _ => Err(DropReason::Unsupported),
    }
}

/// A pod's new flow to the internet (`ep` sent its first packet, `key`): masqueraded to its
/// Public group's address, or the node's. Returns its entry, and whether this call created it
/// (not another CPU's packet of the same flow).
#[inline(always)]
pub fn create_pod_snat(
    key: &FlowKey,
    ep: &Endpoint,
    node: &NodeConfig,
) -> Result<(&'static mut Flow, bool), DropReason> {
    let nat_ip = if ep.public_ip != [0; 4] {
        ep.public_ip
    } else {
        node.primary_ip
    };
    create_snat(key, nat_ip, node, FlowKind::PodSnat)
}

/// What became of a packet to the node's or a public address that [`inbound`] looked at.
pub enum Inbound {
    /// The node's own: on to its stack (translated back if its port had been remapped).
    ToNode,
    /// Translated, for the local pod at this address.
    ToPod([u8; 4], FlowKind),
}

/// A packet from the uplink to the node's primary address or a public address: the reply of a
/// tracked flow, a new connection to a public address's exposed port, or the node's own.
/// `before_rewrite` runs once the packet is known to go to a pod, before any byte changes
/// (the routed hop's TTL).
#[inline(always)]
pub fn inbound(
    ctx: &TcContext,
    pkt: &Packet,
    ip: &mut Ipv4,
    to_node: bool,
    before_rewrite: impl FnOnce(&mut Ipv4Hdr) -> Result<(), DropReason>,
) -> Result<Inbound, DropReason> {
    if ip.is_icmp_error() {
        return icmp_error_inbound(ctx, pkt, ip, to_node, before_rewrite);
    }
    if ip.fragment == Fragment::Later {
        return later_fragment_inbound(ctx, pkt, ip, to_node, before_rewrite);
    }
    match (to_node, trackable(ip, ICMP_ECHO_REPLY)) {
        (_, Ok(())) => {}
        // The node's own (fragments included: its stack reassembles what is its own).
        (true, Err(_)) => return Ok(Inbound::ToNode),
        (false, Err(DropReason::Unsupported)) => return Err(DropReason::PublicPortClosed),
        (false, Err(reason)) => return Err(reason),
    }
    let key = conntrack::key_of(ip);
    let flow = match conntrack::lookup(&key) {
        Some(flow) => flow,
        None if to_node => return Ok(Inbound::ToNode),
        None => create_public_inbound(&key, ip)?,
    };
    let flow = conntrack::seen(&key, flow, ip.tcp_flags, pkt.len());
    let target = if flow.kind == FlowKind::Host as u8 {
        Inbound::ToNode
    } else {
        before_rewrite(&mut *ip.hdr)?;
        Inbound::ToPod(flow.nat_ip, kind_of(flow))
    };
    apply(ctx, ip, &key, flow)?;
    Ok(target)
}

/// The node's own packet from `primary_ip`, leaving by the uplink: tracked if its source port
/// is in the SNAT range, and moved to its flow's port if that differs. Never dropped: what
/// cannot be tracked leaves as it is. True if the port was remapped.
#[inline(always)]
pub fn host_outbound(ctx: &TcContext, ip: &Ipv4, node: &NodeConfig, len: usize) -> bool {
    if trackable(ip, ICMP_ECHO_REQUEST).is_err() {
        return false;
    }
    let port = u16::from_be(ip.src_port);
    if port < node.snat_port_min || port > node.snat_port_max {
        return false;
    }
    let key = conntrack::key_of(ip);
    let flow = match conntrack::lookup(&key) {
        Some(flow) => flow,
        None => match create_snat(&key, node.primary_ip, node, FlowKind::Host) {
            Ok((flow, _)) => flow,
            Err(_) => return false,
        },
    };
    let flow = conntrack::seen(&key, flow, ip.tcp_flags, len);
    flow.nat_port != key.src_port && apply(ctx, ip, &key, flow).is_ok()
}

#[inline(always)]
fn kind_of(flow: &Flow) -> FlowKind {
    if flow.kind == FlowKind::PublicInbound as u8 {
        FlowKind::PublicInbound
    } else {
        FlowKind::PodSnat
    }
}

/// Rewrites the packet (`key` is its tuple) as its flow entry says. A first fragment also
/// leaves its flow for the later fragments of its datagram.
#[inline(always)]
pub fn apply(ctx: &TcContext, ip: &Ipv4, key: &FlowKey, flow: &Flow) -> Result<(), DropReason> {
    let (end, addr, port) = if flow.rewrite == Rewrite::Source as u8 {
        (End::Source, key.src_ip, key.src_port)
    } else if flow.rewrite == Rewrite::Destination as u8 {
        (End::Destination, key.dst_ip, key.dst_port)
    } else {
        return Ok(());
    };
    csum::rewrite(
        ctx,
        key.proto,
        ip.l4_offset,
        end,
        (addr, flow.nat_ip),
        (port, flow.nat_port),
    )?;
    fragment::remember(ctx, key);
    Ok(())
}

/// The flow of a later fragment (`hdr`): the one its datagram's first fragment was
/// translated by, if that passed lately (see [`fragment`]). Counted on the flow.
#[inline(always)]
fn later_fragment_flow(hdr: &Ipv4Hdr, len: usize) -> Option<&'static mut Flow> {
    let flow = conntrack::lookup(&fragment::flow_of(hdr)?)?;
    conntrack::seen_fragment(flow, len);
    Some(flow)
}

/// Rewrites a later fragment (`hdr`) as its flow's entry says: the address only (the ports,
/// and the datagram's L4 checksum, are in the first fragment).
#[inline(always)]
fn apply_to_later_fragment(ctx: &TcContext, hdr: &Ipv4Hdr, flow: &Flow) -> Result<(), DropReason> {
    let (end, from) = if flow.rewrite == Rewrite::Source as u8 {
        (End::Source, hdr.src_addr)
    } else if flow.rewrite == Rewrite::Destination as u8 {
        (End::Destination, hdr.dst_addr)
    } else {
        return Ok(());
    };
    if from == flow.nat_ip {
        return Ok(());
    }
    csum::rewrite_ip(ctx, end, from, flow.nat_ip)
}

/// A pod's later fragment to the internet: translated as its datagram's first fragment was
/// (whose flow the NSGs decided). Out of line: rare, and inlined it would grow `pod_ingress`'s
/// stack frame past what the verifier allows with the functions it calls.
#[inline(never)]
pub fn later_fragment_outbound(
    ctx: &TcContext,
    hdr: &Ipv4Hdr,
    len: usize,
) -> Result<(), DropReason> {
    let flow = later_fragment_flow(hdr, len).ok_or(DropReason::NatFragment)?;
    apply_to_later_fragment(ctx, hdr, flow)
}

/// A later fragment from the uplink to the node's or a public address: translated as its
/// first fragment was. Without a flow to follow it is the node's (its stack reassembles what
/// is its own), or dropped at a public address.
#[inline(always)]
fn later_fragment_inbound(
    ctx: &TcContext,
    pkt: &Packet,
    ip: &mut Ipv4,
    to_node: bool,
    before_rewrite: impl FnOnce(&mut Ipv4Hdr) -> Result<(), DropReason>,
) -> Result<Inbound, DropReason> {
    let flow = match later_fragment_flow(ip.hdr, pkt.len()) {
        Some(flow) if flow.kind != FlowKind::Host as u8 => flow,
        _ if to_node => return Ok(Inbound::ToNode),
        _ => return Err(DropReason::NatFragment),
    };
    before_rewrite(&mut *ip.hdr)?;
    apply_to_later_fragment(ctx, ip.hdr, flow)?;
    Ok(Inbound::ToPod(flow.nat_ip, kind_of(flow)))
}

/// A new masqueraded flow (a pod's, or the node's own): a source port in the range (the
/// flow's own if it is free), the reply entry inserted first so a port is only taken by one
/// flow, then the original; both or neither. Returns the entry, and whether this call created
/// it.
#[inline(always)]
fn create_snat(
    key: &FlowKey,
    nat_ip: [u8; 4],
    node: &NodeConfig,
    kind: FlowKind,
) -> Result<(&'static mut Flow, bool), DropReason> {
    let reply = conntrack::new_flow(
        *key,
        key.src_ip,
        key.src_port,
        Rewrite::Destination as u8,
        kind as u8,
        Direction::Reply as u8,
    );
    let reply_key = allocate_port(key, nat_ip, node, &reply)?;
    if kind == FlowKind::Host && reply_key.dst_port != key.src_port {
        conntrack::count(ConntrackStat::HostPortsRemapped, 1);
    }
    let original = conntrack::new_flow(
        reply_key,
        nat_ip,
        reply_key.dst_port,
        Rewrite::Source as u8,
        kind as u8,
        Direction::Original as u8,
    );
    conntrack::insert_original(key, &original, &reply_key)
}

/// Finds a free port for the reply entry `reply` of the flow `key` masqueraded to `nat_ip`,
/// and inserts the entry: the flow's own source port first if it is in the range, else a
/// random one, then the next ones, [`PROBES`] at most. Returns the reply entry's key.
#[inline(always)]
fn allocate_port(
    key: &FlowKey,
    nat_ip: [u8; 4],
    node: &NodeConfig,
    reply: &Flow,
) -> Result<FlowKey, DropReason> {
    let (min, max) = (node.snat_port_min as u32, node.snat_port_max as u32);
    if min == 0 || max < min {
        return Err(DropReason::SnatPortsExhausted);
    }
    // Non-zero by construction; the type says so, so no division check (a panic path the
    // verifier refuses) is emitted.
    let span = core::num::NonZeroU32::new(max - min + 1).ok_or(DropReason::SnatPortsExhausted)?;
    let own = u16::from_be(key.src_port) as u32;
    let start = if own >= min && own <= max {
        own - min
    } else {
        // SAFETY: a plain helper call.
        (unsafe { bpf_get_prandom_u32() }) % span
    };
    let mut reply_key = conntrack::reversed(key);
    reply_key.dst_ip = nat_ip;
    let mut i = 0;
    while i < PROBES && i < span.get() {
        let port = min + (start + i) % span;
        reply_key.dst_port = (port as u16).to_be();
        match conntrack::insert_new(&reply_key, reply) {
            Ok(()) => {
                if i > 0 {
                    conntrack::count(ConntrackStat::PortProbes, i as u64);
                }
                return Ok(reply_key);
            }
            Err(CreateError::Exists) => i += 1,
            Err(CreateError::Failed) => return Err(DropReason::FlowInsertFailed),
        }
    }
    conntrack::count(ConntrackStat::PortProbes, i as u64);
    Err(DropReason::SnatPortsExhausted)
}

/// A new connection to a public address: only to an exposed (protocol, port), translated to
/// the group's private address, the port kept.
#[inline(always)]
fn create_public_inbound(key: &FlowKey, ip: &Ipv4) -> Result<&'static mut Flow, DropReason> {
    // SAFETY: the value is copied out at once.
    let public = unsafe { PUBLIC_IPS.get(key.dst_ip) }
        .copied()
        .ok_or(DropReason::PublicPortClosed)?;
    let port = PublicPortKey {
        public_ip: key.dst_ip,
        port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: the value is not read.
    if unsafe { PUBLIC_PORTS.get(port) }.is_none() {
        return Err(DropReason::PublicPortClosed);
    }
    // The group's inbound rules see its private address and the client's.
    let group = endpoint::lookup(&public.private_ip).ok_or(DropReason::NoRoute)?;
    let mark = nsg::inbound(group, &nsg::Tuple::to(ip, public.private_ip))?;
    let mut reply_key = conntrack::reversed(key);
    reply_key.src_ip = public.private_ip;
    let reply = conntrack::new_flow(
        *key,
        key.dst_ip,
        key.dst_port,
        Rewrite::Source as u8,
        FlowKind::PublicInbound as u8,
        Direction::Reply as u8,
    );
    match conntrack::insert_new(&reply_key, &reply) {
        Ok(()) => {}
        // Another CPU is creating this flow: use its entries if they are complete.
        Err(CreateError::Exists) => {
            conntrack::count(ConntrackStat::InsertRaces, 1);
            return conntrack::lookup(key).ok_or(DropReason::FlowInsertFailed);
        }
        Err(CreateError::Failed) => return Err(DropReason::FlowInsertFailed),
    }
    let mut original = conntrack::new_flow(
        reply_key,
        public.private_ip,
        key.dst_port,
        Rewrite::Destination as u8,
        FlowKind::PublicInbound as u8,
        Direction::Original as u8,
    );
    conntrack::stamp(&mut original, mark);
    let (flow, created) = conntrack::insert_original(key, &original, &reply_key)?;
    if !created {
        // Another CPU's packet of this flow created it, and logs it.
        return Ok(flow);
    }
    // Logged as the client sent it (to the public address): the flow's key, which the agent
    // follows for its later records.
    let ends = flowlog::Ends {
        outbound: None,
        inbound: Some(&mark),
    };
    flowlog::allowed(key, FlowKind::PublicInbound, ends);
    Ok(flow)
}

/// An ICMP error (destination unreachable, fragmentation needed, time exceeded) about a packet
/// of a translated flow: found through the quoted header, and translated with it, so path-MTU
/// discovery and traceroute work through the NAT. The quoted packet went out translated; it
/// is put back as the pod (or the node's socket) sent it, checksums included.
#[inline(always)]
fn icmp_error_inbound(
    ctx: &TcContext,
    pkt: &Packet,
    ip: &mut Ipv4,
    to_node: bool,
    before_rewrite: impl FnOnce(&mut Ipv4Hdr) -> Result<(), DropReason>,
) -> Result<Inbound, DropReason> {
    let unknown = if to_node {
        Ok(Inbound::ToNode)
    } else {
        Err(DropReason::IcmpNoFlow)
    };
    let Some(quote) = Quote::read(pkt, ip.l4_offset) else {
        return unknown;
    };
    // The quoted packet's reply would carry the reversed tuple: that entry translates it back.
    let key = conntrack::reversed(&quote.key);
    let Some(flow) = conntrack::lookup(&key) else {
        return unknown;
    };
    if flow.rewrite != Rewrite::Destination as u8 {
        return unknown;
    }
    let (nat_ip, nat_port) = (flow.nat_ip, flow.nat_port);
    let target = if flow.kind == FlowKind::Host as u8 {
        if nat_port == quote.key.src_port {
            return Ok(Inbound::ToNode);
        }
        Inbound::ToNode
    } else {
        before_rewrite(&mut *ip.hdr)?;
        Inbound::ToPod(nat_ip, kind_of(flow))
    };
    // Read before the rewrites below invalidate the header pointers.
    let outer_dst = ip.hdr.dst_addr;
    quote.translate_source(ctx, ip.l4_offset, nat_ip, nat_port)?;
    if outer_dst != nat_ip {
        csum::rewrite_ip(ctx, End::Destination, outer_dst, nat_ip)?;
    }
    Ok(target)
}

/// The packet an ICMP error quotes: its IP header and first 8 payload bytes.
struct Quote {
    /// The quoted packet's tuple, as it went out.
    key: FlowKey,
    ip_offset: usize,
    l4_offset: usize,
}

impl Quote {
    #[inline(always)]
    fn read(pkt: &Packet, icmp_offset: usize) -> Option<Quote> {
        let ip_offset = icmp_offset + 8;
        // SAFETY: bounds checked by ptr_at.
        let hdr = unsafe { &*pkt.ptr_at::<Ipv4Hdr>(ip_offset)? };
        let ihl = hdr.ihl() as usize;
        if hdr.version() != 4 || ihl < Ipv4Hdr::LEN {
            return None;
        }
        let l4_offset = ip_offset + ihl;
        // SAFETY: bounds checked by ptr_at.
        let l4 = unsafe { &*pkt.ptr_at::<[u8; 8]>(l4_offset)? };
        let (src_port, dst_port) = match hdr.proto {
            IPPROTO_TCP | IPPROTO_UDP => (
                u16::from_ne_bytes([l4[0], l4[1]]),
                u16::from_ne_bytes([l4[2], l4[3]]),
            ),
            IPPROTO_ICMP if l4[0] == ICMP_ECHO_REQUEST => (u16::from_ne_bytes([l4[4], l4[5]]), 0),
            _ => return None,
        };
        Some(Quote {
            key: FlowKey {
                src_ip: hdr.src_addr,
                dst_ip: hdr.dst_addr,
                src_port,
                dst_port,
                proto: hdr.proto,
                _pad: [0; 3],
            },
            ip_offset,
            l4_offset,
        })
    }

    /// Puts the quoted packet's source back to `ip`:`port`, with the quoted IP checksum, the
    /// quoted L4 checksum where the quote holds it, and the ICMP checksum over it all.
    #[inline(always)]
    fn translate_source(
        &self,
        ctx: &TcContext,
        icmp_offset: usize,
        ip: [u8; 4],
        port: u16,
    ) -> Result<(), DropReason> {
        let icmp_csum = icmp_offset + 2;
        let (from_ip, to_ip) = (u32::from_ne_bytes(self.key.src_ip), u32::from_ne_bytes(ip));
        let (from_port, to_port) = (self.key.src_port as u32, port as u32);
        let (l4_csum, zero_means_none, port_at, pseudo) = match self.key.proto {
            IPPROTO_TCP => (self.l4_offset + 16, false, self.l4_offset, true),
            IPPROTO_UDP => (self.l4_offset + 6, true, self.l4_offset, true),
            _ => (self.l4_offset + 2, false, self.l4_offset + 4, false),
        };
        if from_ip != to_ip {
            csum::quote_checksum(
                ctx,
                icmp_csum,
                self.ip_offset + 10,
                from_ip,
                to_ip,
                4,
                false,
            )?;
            if pseudo && l4_csum + 2 <= ctx.len() as usize {
                csum::quote_checksum(ctx, icmp_csum, l4_csum, from_ip, to_ip, 4, zero_means_none)?;
            }
            csum::quote_store(ctx, icmp_csum, self.ip_offset + 12, from_ip, to_ip, 4)?;
        }
        if from_port != to_port {
            if l4_csum + 2 <= ctx.len() as usize {
                csum::quote_checksum(
                    ctx,
                    icmp_csum,
                    l4_csum,
                    from_port,
                    to_port,
                    2,
                    zero_means_none,
                )?;
            }
            csum::quote_store(ctx, icmp_csum, port_at, from_port, to_port, 2)?;
        }
        Ok(())
    }
}
