//! Rewriting addresses and ports in place, with the kernel's checksum helpers: the L4
//! checksum takes address changes as pseudo-header changes (so a pod's partially offloaded
//! checksum stays right) and a UDP checksum of zero stays zero. Every helper here invalidates
//! packet pointers: callers re-read the headers they need afterwards.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use network_types::eth::EthHdr;
use vnetd_common::DropReason;

use crate::parse::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

const IP_CSUM: usize = EthHdr::LEN + 10;
const IP_SRC: usize = EthHdr::LEN + 12;
const IP_DST: usize = EthHdr::LEN + 16;

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Where a packet's L4 checksum sits and the helper flags it needs.
#[inline(always)]
fn l4_checksum(proto: u8, l4_offset: usize) -> Result<(usize, u64), DropReason> {
    match proto {
        IPPROTO_TCP => Ok((l4_offset + 16, 0)),
        IPPROTO_UDP => Ok((l4_offset + 6, BPF_F_MARK_MANGLED_0 as u64)),
        IPPROTO_ICMP => Ok((l4_offset + 2, 0)),
        _ => Err(DropReason::Unsupported),
    }
}

/// Rewrites one end's address (`from` -> `to`) and port (`from_port` -> `to_port`; the
/// identifier of an ICMP echo), all in network byte order.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    proto: u8,
    l4_offset: usize,
    end: End,
    (from, to): ([u8; 4], [u8; 4]),
    (from_port, to_port): (u16, u16),
) -> Result<(), DropReason> {
    let (csum, flags) = l4_checksum(proto, l4_offset)?;
    let bad = |_| DropReason::Malformed;
    if from != to {
        let (old, new) = (
            u32::from_ne_bytes(from) as u64,
            u32::from_ne_bytes(to) as u64,
        );
        // ICMP's checksum has no pseudo-header.
        if proto != IPPROTO_ICMP {
            ctx.l4_csum_replace(csum, old, new, flags | BPF_F_PSEUDO_HDR as u64 | 4)
                .map_err(bad)?;
        }
        ctx.l3_csum_replace(IP_CSUM, old, new, 4).map_err(bad)?;
        let at = if end == End::Source { IP_SRC } else { IP_DST };
        ctx.store(at, &to, 0).map_err(bad)?;
    }
    if from_port != to_port {
        let at = match (proto, end) {
            (IPPROTO_ICMP, _) => l4_offset + 4,
            (_, End::Source) => l4_offset,
            (_, End::Destination) => l4_offset + 2,
        };
        ctx.l4_csum_replace(csum, from_port as u64, to_port as u64, flags | 2)
            .map_err(bad)?;
        ctx.store(at, &to_port, 0).map_err(bad)?;
    }
    Ok(())
}

/// Rewrites one end's address where the L4 checksum does not cover it: the outer
/// destination of an ICMP error (its checksum has no pseudo-header), a later fragment (its
/// datagram's L4 checksum was updated in the first fragment). Only the IP header's checksum
/// changes.
#[inline(always)]
pub fn rewrite_ip(ctx: &TcContext, end: End, from: [u8; 4], to: [u8; 4]) -> Result<(), DropReason> {
    let (old, new) = (
        u32::from_ne_bytes(from) as u64,
        u32::from_ne_bytes(to) as u64,
    );
    ctx.l3_csum_replace(IP_CSUM, old, new, 4)
        .map_err(|_| DropReason::Malformed)?;
    let at = if end == End::Source { IP_SRC } else { IP_DST };
    ctx.store(at, &to, 0).map_err(|_| DropReason::Malformed)
}

/// Inside an ICMP error's quote (whose checksum, at `icmp_csum`, covers it): replaces the
/// bytes at `at` (`size` 2 or 4, network byte order in `from`/`to`).
#[inline(always)]
pub fn quote_store(
    ctx: &TcContext,
    icmp_csum: usize,
    at: usize,
    from: u32,
    to: u32,
    size: u64,
) -> Result<(), DropReason> {
    let bad = |_| DropReason::Malformed;
    ctx.l4_csum_replace(icmp_csum, from as u64, to as u64, size)
        .map_err(bad)?;
    if size == 4 {
        ctx.store(at, &to, 0).map_err(bad)
    } else {
        ctx.store(at, &(to as u16), 0).map_err(bad)
    }
}

/// Inside an ICMP error's quote: updates the checksum field at `field` (the quoted IP
/// header's, or the quoted TCP/UDP/ICMP header's) for a change of `from` -> `to`, and the ICMP
/// checksum for the field's own change. `pseudo`: the field covers the change only through the
/// pseudo-header (skip the update of a zero UDP checksum).
#[inline(always)]
pub fn quote_checksum(
    ctx: &TcContext,
    icmp_csum: usize,
    field: usize,
    from: u32,
    to: u32,
    size: u64,
    zero_means_none: bool,
) -> Result<(), DropReason> {
    let bad = |_| DropReason::Malformed;
    let old: u16 = ctx.load(field).map_err(bad)?;
    if zero_means_none && old == 0 {
        return Ok(());
    }
    // A plain replace of a 16-bit sum anywhere in the packet; it leaves skb->csum alone (the
    // ICMP checksum's update below keeps the whole message's sum).
    ctx.l3_csum_replace(field, from as u64, to as u64, size)
        .map_err(bad)?;
    let new: u16 = ctx.load(field).map_err(bad)?;
    ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 2)
        .map_err(bad)
}
