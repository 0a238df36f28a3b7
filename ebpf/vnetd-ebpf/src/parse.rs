//! Bounds-checked access to packet headers, shared by the XDP and TC entry points (both see
//! the packet as `[data, data_end)`), and the skb metadata the programs use, read in one place.
//! Every accessor fails on a short or inconsistent packet, so a malformed frame can only be
//! dropped or passed to the kernel, never forwarded by mistake.
use core::mem;

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr};

/// The linear packet bytes a program may read and write (`[data, data_end)`), the packet's
/// whole length (they differ in TC, where an skb's payload may sit in pages beyond the linear
/// part), and the metadata of the skb it came in.
#[derive(Clone, Copy)]
pub struct Packet {
    pub data: usize,
    pub data_end: usize,
    pub wire_len: usize,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    /// An 802.1Q tag taken out of the frame into the skb (hardware-accelerated VLAN): the
    /// frame looks untagged, but it is not.
    pub vlan_tagged: bool,
}

/// EtherType values as they appear in the frame (network byte order).
pub const ETH_P_IPV4: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Where a packet stands in its datagram: fragments after the first carry no L4 header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    None,
    /// The first fragment: it has the L4 header.
    First,
    /// A later fragment: no L4 header, only the IP id ties it to its flow.
    Later,
}

/// An IPv4 packet's header and what the next stages key flows on.
pub struct Ipv4 {
    pub hdr: &'static mut Ipv4Hdr,
    /// Offset of the L4 header (the IP header's length honoured, options included).
    pub l4_offset: usize,
    pub fragment: Fragment,
    /// The flow's ports (network byte order) where the packet carries them: TCP and UDP ports;
    /// for an ICMP echo the identifier, as the requester's port (`src_port` in a request,
    /// `dst_port` in a reply). Otherwise 0.
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP: the flags byte (`vnetd_common::TCP_*`); else 0.
    pub tcp_flags: u8,
    /// ICMP: the message type; else 0xff.
    pub icmp_type: u8,
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// `icmp_type` of a packet that is not ICMP.
pub const NOT_ICMP: u8 = 0xff;

impl Ipv4 {
    /// An ICMP error (destination unreachable, time exceeded, parameter problem): it quotes
    /// the packet it is about.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        matches!(
            self.icmp_type,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    }
}

impl Packet {
    #[inline(always)]
    pub fn from_xdp(ctx: &XdpContext) -> Self {
        let (data, data_end) = (ctx.data(), ctx.data_end());
        Self {
            data,
            data_end,
            wire_len: data_end - data,
            // SAFETY: reading the xdp_md the program was given.
            ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
            vlan_tagged: false,
        }
    }

    #[inline(always)]
    pub fn from_tc(ctx: &TcContext) -> Self {
        let skb = ctx.skb.skb;
        Self {
            data: ctx.data(),
            data_end: ctx.data_end(),
            wire_len: ctx.len() as usize,
            // SAFETY: reading fields of the __sk_buff the program was given.
            ifindex: unsafe { (*skb).ifindex },
            // SAFETY: as above.
            vlan_tagged: unsafe { (*skb).vlan_present } != 0,
        }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.wire_len
    }

    /// A pointer to a `T` at `offset`, or `None` if the packet is too short.
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Option<*mut T> {
        let start = self.data + offset;
        if start + mem::size_of::<T>() > self.data_end {
            return None;
        }
        Some(start as *mut T)
    }

    #[inline(always)]
    pub fn eth(&self) -> Option<&'static mut EthHdr> {
        // SAFETY: bounds checked by ptr_at; the verifier re-checks.
        self.ptr_at::<EthHdr>(0).map(|p| unsafe { &mut *p })
    }

    /// The ARP header after the Ethernet header, if it is IPv4-over-Ethernet ARP.
    #[inline(always)]
    pub fn arp(&self) -> Option<&'static mut ArpHdr> {
        // SAFETY: bounds checked by ptr_at.
        let arp = unsafe { &mut *self.ptr_at::<ArpHdr>(EthHdr::LEN)? };
        (arp.htype() == 1 && arp.ptype() == 0x0800 && arp.hlen == 6 && arp.plen == 4).then_some(arp)
    }

    /// The IPv4 packet of an untagged IPv4 frame, or `None` for any other frame (what the
    /// egress hooks hand on untouched).
    #[inline(always)]
    pub fn ipv4_frame(&self) -> Option<Ipv4> {
        self.eth().filter(|eth| eth.ether_type == ETH_P_IPV4)?;
        self.ipv4()
    }

    /// The IPv4 header after the Ethernet header, if it is consistent with the frame, with the
    /// flow fields the next stages need.
    #[inline(always)]
    pub fn ipv4(&self) -> Option<Ipv4> {
        // SAFETY: bounds checked by ptr_at.
        let hdr = unsafe { &mut *self.ptr_at::<Ipv4Hdr>(EthHdr::LEN)? };
        let ihl = hdr.ihl() as usize;
        let tot_len = hdr.tot_len() as usize;
        // A total length of 0 is how BIG TCP marks an aggregate over 64 KiB: the skb's length
        // is the truth then.
        let big_tcp = tot_len == 0 && self.len() > EthHdr::LEN + 0xffff;
        let consistent = big_tcp || (EthHdr::LEN + tot_len <= self.len() && tot_len >= ihl);
        if hdr.version() != 4 || ihl < Ipv4Hdr::LEN || !consistent {
            return None;
        }
        let more_fragments = hdr.frag_flags() & 0b001 != 0;
        let fragment = match (hdr.frag_offset(), more_fragments) {
            (0, false) => Fragment::None,
            (0, true) => Fragment::First,
            _ => Fragment::Later,
        };
        let l4_offset = EthHdr::LEN + ihl;
        let (mut src_port, mut dst_port, mut tcp_flags, mut icmp_type) = (0, 0, 0, NOT_ICMP);
        if fragment != Fragment::Later {
            match hdr.proto {
                IPPROTO_TCP => {
                    // SAFETY: bounds checked by ptr_at.
                    let tcp = unsafe { &*self.ptr_at::<[u8; 14]>(l4_offset)? };
                    src_port = u16::from_ne_bytes([tcp[0], tcp[1]]);
                    dst_port = u16::from_ne_bytes([tcp[2], tcp[3]]);
                    tcp_flags = tcp[13];
                }
                IPPROTO_UDP => {
                    // SAFETY: bounds checked by ptr_at.
                    let ports = unsafe { &*self.ptr_at::<[u16; 2]>(l4_offset)? };
                    (src_port, dst_port) = (ports[0], ports[1]);
                }
                IPPROTO_ICMP => {
                    // SAFETY: bounds checked by ptr_at.
                    let icmp = unsafe { &*self.ptr_at::<[u8; 8]>(l4_offset)? };
                    icmp_type = icmp[0];
                    let id = u16::from_ne_bytes([icmp[4], icmp[5]]);
                    match icmp_type {
                        ICMP_ECHO_REQUEST => src_port = id,
                        ICMP_ECHO_REPLY => dst_port = id,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Some(Ipv4 {
            hdr,
            l4_offset,
            fragment,
            src_port,
            dst_port,
            tcp_flags,
            icmp_type,
        })
    }
}
