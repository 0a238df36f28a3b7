//! The ABI between vnetd's eBPF programs and its agent: map names, keys, values and counter
//! indices. Everything here is `#[repr(C)]` and plain data. Changing a layout means bumping
//! [`ABI_VERSION`]: it is part of the pin path, so an agent never reuses a pinned map whose
//! layout it does not know.
#![no_std]

/// Part of every pin path (`<bpffs>/abi-v<N>/...`).
pub const ABI_VERSION: u32 = 1;

mod counters;
mod endpoint;
pub mod maps;
mod node;
pub mod programs;
mod route;

pub use counters::{DropReason, Path, Traffic};
pub use endpoint::Endpoint;
pub use node::{NodeConfig, POD_GATEWAY};
pub use route::{NextHop, Route, RouteKey};
