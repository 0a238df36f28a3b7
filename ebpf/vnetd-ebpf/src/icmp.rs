//! ICMP errors the dataplane sends as a router would: "time exceeded" for a packet whose TTL
//! ran out at the pod's gateway, so traceroute from a pod shows the hop (169.254.1.1).
//!
//! The packet is rewritten in place into the error (its own IP header and first 8 payload
//! bytes quoted, as RFC 792 asks) and sent back to the pod that sent it.
use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_skb_change_tail},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use vnetd_common::{DropReason, Path};

use crate::{
    drop, forward,
    parse::{Fragment, ICMP_TIME_EXCEEDED, IPPROTO_ICMP, Ipv4},
};

/// The quote: the offending packet's IP header (without options) and 8 bytes of its payload.
const QUOTE_LEN: usize = Ipv4Hdr::LEN + 8;
const ERROR_LEN: usize = Ipv4Hdr::LEN + 8 + QUOTE_LEN;

/// The error's IP header, ICMP header and quote, laid out as on the wire; 4-byte aligned and a
/// multiple of 4 long for `bpf_csum_diff`.
#[repr(C, align(4))]
struct IcmpError {
    ip: [u8; Ipv4Hdr::LEN],
    icmp: [u8; 8],
    quote: [u8; QUOTE_LEN],
}

/// Answers the packet in `ctx` (from the pod behind `ifindex`, whose TTL ran out here) with a
/// time exceeded from `gateway`, and drops it (counted). Errors about errors, later fragments
/// and packets with IP options get no answer, only the count.
#[inline(always)]
pub fn time_exceeded_to_pod(
    ctx: &TcContext,
    ip: &Ipv4,
    ifindex: u32,
    gateway: [u8; 4],
    (pod_mac, gateway_mac): ([u8; 6], [u8; 6]),
) -> Result<i32, DropReason> {
    let sender = ip.hdr.src_addr;
    if ip.fragment == Fragment::Later
        || ip.l4_offset != EthHdr::LEN + Ipv4Hdr::LEN
        || ctx.len() < (EthHdr::LEN + QUOTE_LEN) as u32
    {
        return Err(DropReason::TtlExceeded);
    }
    let mut err = IcmpError {
        ip: [0; Ipv4Hdr::LEN],
        icmp: [ICMP_TIME_EXCEEDED, 0, 0, 0, 0, 0, 0, 0],
        quote: [0; QUOTE_LEN],
    };
    ctx.load_bytes(EthHdr::LEN, &mut err.quote)
        .map_err(|_| DropReason::TtlExceeded)?;
    if ip.hdr.proto == IPPROTO_ICMP && is_icmp_error(err.quote[Ipv4Hdr::LEN]) {
        return Err(DropReason::TtlExceeded);
    }
    let total = (ERROR_LEN as u16).to_be_bytes();
    err.ip = [
        0x45,
        0,
        total[0],
        total[1],
        0,
        0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        0,
        0,
        gateway[0],
        gateway[1],
        gateway[2],
        gateway[3],
        sender[0],
        sender[1],
        sender[2],
        sender[3],
    ];
    // SAFETY: the buffers are on the stack, 4-byte aligned, and their sizes are passed.
    let icmp_sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            err.icmp.as_mut_ptr().cast(),
            (8 + QUOTE_LEN) as u32,
            0,
        )
    };
    err.icmp[2..4].copy_from_slice(&fold(icmp_sum).to_ne_bytes());
    // SAFETY: as above.
    let ip_sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            err.ip.as_mut_ptr().cast(),
            Ipv4Hdr::LEN as u32,
            0,
        )
    };
    err.ip[10..12].copy_from_slice(&fold(ip_sum).to_ne_bytes());

    // SAFETY: the program's own skb; a new length and no flags.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (EthHdr::LEN + ERROR_LEN) as u32, 0) } != 0 {
        return Err(DropReason::TtlExceeded);
    }
    let mut eth = [0u8; EthHdr::LEN];
    eth[0..6].copy_from_slice(&pod_mac);
    eth[6..12].copy_from_slice(&gateway_mac);
    eth[12..14].copy_from_slice(&[0x08, 0x00]);
    ctx.store(0, &eth, 0).map_err(|_| DropReason::TtlExceeded)?;
    ctx.store(EthHdr::LEN, &err, 0)
        .map_err(|_| DropReason::TtlExceeded)?;
    drop::count(DropReason::TtlExceeded);
    forward::bounce(ifindex, Path::IcmpError, EthHdr::LEN + ERROR_LEN)
}

/// ICMP types that report errors (never answered with another error, RFC 1122).
#[inline(always)]
fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// The one's complement of a 32-bit partial sum folded to 16 bits, in memory order.
#[inline(always)]
fn fold(sum: i64) -> u16 {
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}
