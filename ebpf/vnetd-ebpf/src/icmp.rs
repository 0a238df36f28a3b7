//! ICMP errors the dataplane sends as a router would: "time exceeded" for a packet whose TTL
//! ran out at the pod's gateway, so traceroute from a pod shows the hop (169.254.1.1).
//!
//! The packet is rewritten in place into the error (its own IP header and first 8 payload
//! bytes quoted, as RFC 792 asks) and sent back to the pod that sent it. Errors are rate
//! limited per CPU as the kernel limits its own (see [`IcmpErrorBudget`]).
use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_ktime_get_coarse_ns, bpf_skb_change_tail},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use vnetd_common::{DropReason, ICMP_ERROR_BURST, ICMP_ERRORS_PER_SEC, IcmpErrorBudget, Path};

use crate::{
    drop, forward,
    parse::{Fragment, ICMP_TIME_EXCEEDED, IPPROTO_ICMP, Ipv4},
};

#[map(name = "ICMP_ERROR_BUDGET")]
static ICMP_ERROR_BUDGET: PerCpuArray<IcmpErrorBudget> = PerCpuArray::with_max_entries(1, 0);

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
/// and packets with IP options get no answer, only the count; nor do packets over this CPU's
/// error budget (counted apart).
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
    if !take_from_budget() {
        return Err(DropReason::TimeExceededRateLimited);
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

/// Takes one error from this CPU's budget (a token bucket: [`ICMP_ERRORS_PER_SEC`] tokens a
/// second, at most [`ICMP_ERROR_BURST`] kept): false if it is spent. Per CPU, so two CPUs never
/// write one bucket. Out of line: its few registers stay out of the caller's stack frame.
#[inline(never)]
fn take_from_budget() -> bool {
    const NS_PER_TOKEN: u64 = 1_000_000_000 / ICMP_ERRORS_PER_SEC;
    let Some(budget) = ICMP_ERROR_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; nothing else on this CPU runs the program meanwhile.
    let budget = unsafe { &mut *budget };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The first call (`refilled_ns` 0) earns a full burst.
    let earned = now.wrapping_sub(budget.refilled_ns) / NS_PER_TOKEN;
    if budget.tokens + earned >= ICMP_ERROR_BURST {
        budget.tokens = ICMP_ERROR_BURST;
        budget.refilled_ns = now;
    } else {
        budget.tokens += earned;
        // The fraction of a token already earned is kept for the next call.
        budget.refilled_ns += earned * NS_PER_TOKEN;
    }
    if budget.tokens == 0 {
        return false;
    }
    budget.tokens -= 1;
    true
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
