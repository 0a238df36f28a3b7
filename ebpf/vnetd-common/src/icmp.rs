//! The rate of the ICMP errors the dataplane sends (`ICMP_ERROR_BUDGET`): a token bucket per
//! CPU with the kernel's own limits for its ICMP errors (`net.ipv4.icmp_msgs_per_sec` 1000,
//! `net.ipv4.icmp_msgs_burst` 50), so a pod that floods expired packets cannot make the node
//! answer every one of them.

/// Errors one CPU may send a second.
pub const ICMP_ERRORS_PER_SEC: u64 = 1000;
/// Errors one CPU may send at once after a quiet spell.
pub const ICMP_ERROR_BURST: u64 = 50;

/// One CPU's budget: `ICMP_ERROR_BUDGET[0]` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcmpErrorBudget {
    /// Errors this CPU may send now.
    pub tokens: u64,
    /// `bpf_ktime_get_coarse_ns` up to which tokens have been added.
    pub refilled_ns: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::IcmpErrorBudget {}
}
