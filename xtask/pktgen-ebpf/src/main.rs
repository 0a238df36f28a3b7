//! The packet-rate scenario's programs (`cargo xtask bench --scenario packet_rate`), apart from
//! vnetd's own: they measure vnetd and the dataplanes it is compared with.
//!
//! - `pktgen` (XDP, run with BPF_PROG_RUN in live-frames mode on the sending pod's `eth0`):
//!   writes the frame's headers from [`TEMPLATE`] on every run (live-frames pages are recycled
//!   carrying whatever the dataplane rewrote: MACs, TTL, addresses), gives it the next source
//!   port of the template's range, and transmits it (XDP_TX: out of `eth0`, into the pod's
//!   host-side veth and the dataplane under test).
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

/// Ethernet, IPv4 without options, UDP: what `pktgen` rewrites.
const HEADERS: usize = 42;
/// The UDP source port's offset in the frame.
const SPORT: usize = 34;

/// The generated frame's headers and its source ports, written by userspace before a run.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Template {
    pub headers: [u8; HEADERS],
    /// Source ports `sport_first .. sport_first + sport_count` in turn (host order).
    pub sport_first: u16,
    pub sport_count: u16,
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
        let frame = &mut *(start as *mut [u8; HEADERS]);
        *frame = t.headers;
        let n = *seq;
        *seq = n.wrapping_add(1);
        let count = u32::from(t.sport_count).max(1);
        let port = t.sport_first.wrapping_add((n % count) as u16);
        frame[SPORT..SPORT + 2].copy_from_slice(&port.to_be_bytes());
    }
    xdp_action::XDP_TX
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
