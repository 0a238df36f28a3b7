//! Connection tracking: the flow table both directions of a translated flow are found in.
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use vnetd_common::{ConntrackStat, Flow, FlowKey, maps::FLOWS_MAX};

#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(FLOWS_MAX, 0);

#[map(name = "CONNTRACK_STATS")]
pub static CONNTRACK_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(ConntrackStat::COUNT, 0);
