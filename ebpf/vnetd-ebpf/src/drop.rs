//! The one exit for packets the dataplane refuses: every entry point's `try_` pipeline returns
//! `Err(DropReason)`, and the reason is counted here, per CPU (the agent sums the CPUs).
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    macros::map,
    maps::PerCpuArray,
};
use vnetd_common::DropReason;

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// A TC program's verdict: its action, or a counted drop.
#[inline(always)]
pub fn tc(result: Result<i32, DropReason>) -> i32 {
    result.unwrap_or_else(|reason| {
        count(reason);
        TC_ACT_SHOT
    })
}

/// An XDP program's verdict: its action, or a counted drop.
#[inline(always)]
pub fn xdp(result: Result<u32, DropReason>) -> u32 {
    result.unwrap_or_else(|reason| {
        count(reason);
        xdp_action::XDP_DROP
    })
}

/// Counts a drop whose packet is answered rather than silently discarded (an ICMP error sent
/// in its place).
#[inline(always)]
pub fn count(reason: DropReason) {
    if let Some(slot) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 }
    }
}
