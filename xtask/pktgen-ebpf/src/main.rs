//! The packet-rate scenario's programs (`cargo xtask bench --scenario packet_rate`), apart from
//! vnetd's own: they measure vnetd and the dataplanes it is compared with.
//!
//! - `pktgen` (XDP, run with BPF_PROG_RUN in live-frames mode on the sending pod's `eth0`):
//!   writes the frame's headers from [`TEMPLATE`] on every run (live-frames pages are recycled
//!   carrying whatever the dataplane rewrote: MACs, TTL, addresses), gives it the next ports of
//!   the template's ranges (source ports in turn; the destination port moves on after each
//!   round of them), and transmits it (XDP_TX: out of `eth0`, into the pod's host-side veth
//!   and the dataplane under test). UDP frames go without a checksum; TCP SYNs (new flows,
//!   one per frame) get theirs, so a stateful firewall takes them as valid.
//! - `count_drop` (TC ingress on the receiving pod's `eth0`): counts and drops, so the
//!   receiver's socket stack is not what is measured.
//! - `bare_forward` (TC ingress on the sending pod's host-side veth): only
//!   `bpf_redirect_peer` to [`PEER`], the limit of this kernel and machine.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    helpers::generated::bpf_redirect_peer,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};

/// Ethernet, IPv4 without options, TCP without options (UDP's 8 bytes and 12 of zeros):
/// what `pktgen` rewrites.
const HEADERS: usize = 54;
// `copy_headers` writes 4-byte words and then the last two bytes.
const _: () = assert!(HEADERS % 4 == 2);
/// The layer-4 source and destination ports' offsets in the frame.
const SPORT: usize = 34;
const DPORT: usize = 36;
/// The TCP checksum's offset.
const TCP_CSUM: usize = 50;

/// The generated frame's headers and its ports, written by userspace before a run (the
/// userspace side has the same layout: `vnetd-pktgen`'s `template`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Template {
    pub headers: [u8; HEADERS],
    /// Source ports `sport_first .. sport_first + sport_count` in turn (host order).
    pub sport_first: u16,
    pub sport_count: u16,
    /// Destination ports `dport_first .. dport_first + dport_count`, the next after each round
    /// of source ports.
    pub dport_first: u16,
    pub dport_count: u16,
    /// TCP: the one's-complement sum of the pseudo-header and the TCP header with both ports
    /// and the checksum zero (the ports are added per frame). 0 for UDP (no checksum).
    pub tcp_sum: u32,
}

#[map]
static TEMPLATE: Array<Template> = Array::with_max_entries(1, 0);

/// Frames generated on this CPU (picks the next source port).
#[map]
static SEQUENCE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Frames `count_drop` saw.
#[map]
static RECEIVED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The ifindex `bare_forward` redirects to (the receiving pod's host-side veth).
#[map]
static PEER: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
pub fn pktgen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + HEADERS > end {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(t), Some(seq)) = (TEMPLATE.get(0), SEQUENCE.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `start + HEADERS <= end` was checked; the map values are valid for their types.
    unsafe {
        copy_headers(start as *mut u8, &t.headers);
        let frame = &mut *(start as *mut [u8; HEADERS]);
        let n = *seq;
        *seq = n.wrapping_add(1);
        let sports = u32::from(t.sport_count).max(1);
        let dports = u32::from(t.dport_count).max(1);
        let sport = t.sport_first.wrapping_add((n % sports) as u16);
        let dport = t.dport_first.wrapping_add((n / sports % dports) as u16);
        frame[SPORT..SPORT + 2].copy_from_slice(&sport.to_be_bytes());
        frame[DPORT..DPORT + 2].copy_from_slice(&dport.to_be_bytes());
        if t.tcp_sum != 0 {
            let csum = !fold(t.tcp_sum + u32::from(sport) + u32::from(dport));
            frame[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&csum.to_be_bytes());
        }
    }
    xdp_action::XDP_TX
}

/// Writes the template's headers into the frame at `dst` in 4-byte words. (`*frame = headers`
/// compiles to a call of compiler-builtins' byte-by-byte `memmove`, which took 6.6% of the
/// generator's CPU in a `perf` profile of the bare forwarder's runs.)
///
/// # Safety
/// `dst` must be valid for `HEADERS` bytes and 4-byte aligned: live-frames data starts after
/// the page's 256 bytes of headroom.
#[inline(always)]
unsafe fn copy_headers(dst: *mut u8, headers: &[u8; HEADERS]) {
    // The template's field is at offset 0 of a 4-aligned `#[repr(C)]` value.
    let (src, dst) = (headers.as_ptr() as *const u32, dst as *mut u32);
    for i in 0..HEADERS / 4 {
        // SAFETY: within both buffers, both aligned (see above).
        unsafe { dst.add(i).write(src.add(i).read()) };
    }
    let tail = HEADERS / 4 * 4;
    // SAFETY: the last two bytes, 2-aligned.
    unsafe {
        (dst as *mut u8)
            .add(tail)
            .cast::<u16>()
            .write((headers.as_ptr().add(tail)).cast::<u16>().read())
    };
}

/// A one's-complement sum folded to 16 bits.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

#[classifier]
pub fn count_drop(_ctx: TcContext) -> i32 {
    if let Some(n) = RECEIVED.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *n += 1 };
    }
    TC_ACT_SHOT
}

#[classifier]
pub fn bare_forward(_ctx: TcContext) -> i32 {
    match PEER.get(0) {
        // SAFETY: a helper call with plain integer arguments.
        Some(&ifindex) => unsafe { bpf_redirect_peer(ifindex, 0) as i32 },
        None => TC_ACT_SHOT,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
