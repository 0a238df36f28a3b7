//! vnetd: the agent. The modules follow the data flow:
//! spec (parse, validate) -> compile (spec to table entries, pure) -> dataplane (load, attach,
//! pin, write maps) -> api (CNI socket, status, metrics).

pub mod api;
pub mod cni;
pub mod compile;
pub mod daemon;
pub mod dataplane;
pub mod endpoints;
pub mod flowlog;
pub mod gc;
pub mod health;
pub mod host_stack;
pub mod ipam;
pub mod metrics;
pub mod netlink;
pub mod nsg_hits;
pub mod plan;
pub mod reload;
pub mod spec;

/// The unit tests allocate as the agent does (`main.rs`), so the timing harness of
/// `spec::timing` measures what a reload costs in the agent.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
