//! This node's settings, written once by the agent.
use aya_ebpf::{macros::map, maps::Array};
use vnetd_common::NodeConfig;

#[map(name = "NODE")]
static NODE: Array<NodeConfig> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn config() -> Option<&'static NodeConfig> {
    NODE.get(0).filter(|n| n.uplink_ifindex != 0)
}
