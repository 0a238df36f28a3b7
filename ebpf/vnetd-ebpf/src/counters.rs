//! Traffic counters: packets and bytes by path, per CPU. The agent sums the CPUs.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use vnetd_common::{Path, Traffic};

#[map(name = "TRAFFIC")]
static TRAFFIC: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(Path::COUNT, 0);

#[inline(always)]
pub fn count_traffic(path: Path, bytes: usize) {
    if let Some(slot) = TRAFFIC.get_ptr_mut(path as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes as u64;
        }
    }
}
