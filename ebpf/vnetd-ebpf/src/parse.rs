//! Bounds-checked access to packet headers, shared by the XDP and TC entry points (both see
//! the packet as `[data, data_end)`). Every accessor fails on a short packet, so a malformed
//! frame can only be dropped, never forwarded by mistake.
use core::mem;

use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr};

/// The linear packet bytes a program may read and write (`[data, data_end)`), and the
/// packet's whole length on the wire. They differ in TC, where an skb's payload may sit in
/// pages beyond the linear part.
#[derive(Clone, Copy)]
pub struct Packet {
    pub data: usize,
    pub data_end: usize,
    pub wire_len: usize,
}

/// EtherType values as they appear in the frame (network byte order).
pub const ETH_P_IPV4: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

impl Packet {
    #[inline(always)]
    pub fn from_xdp(ctx: &aya_ebpf::programs::XdpContext) -> Self {
        let (data, data_end) = (ctx.data(), ctx.data_end());
        Self {
            data,
            data_end,
            wire_len: data_end - data,
        }
    }

    #[inline(always)]
    pub fn from_tc(ctx: &aya_ebpf::programs::TcContext) -> Self {
        Self {
            data: ctx.data(),
            data_end: ctx.data_end(),
            wire_len: ctx.len() as usize,
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

    /// The IPv4 header after the Ethernet header, if it is consistent with the frame.
    #[inline(always)]
    pub fn ipv4(&self) -> Option<&'static mut Ipv4Hdr> {
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &mut *self.ptr_at::<Ipv4Hdr>(EthHdr::LEN)? };
        let ok = ip.version() == 4
            && ip.ihl() >= Ipv4Hdr::LEN as u8
            && EthHdr::LEN + ip.tot_len() as usize <= self.len()
            && ip.tot_len() as usize >= ip.ihl() as usize;
        ok.then_some(ip)
    }
}
