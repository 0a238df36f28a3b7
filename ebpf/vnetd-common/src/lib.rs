//! The ABI between vnetd's eBPF programs and its agent: map names, keys, values and counter
//! indices. Everything here is `#[repr(C)]` and plain data. A layout change changes the
//! fingerprint in [`abi`], whose test then asks for a new [`ABI_VERSION`]: the version is part
//! of the pin path, so an agent never reuses a pinned map whose layout it does not know.
#![no_std]

pub mod abi;
mod conntrack;
mod counters;
mod endpoint;
mod flowlog;
mod icmp;
pub mod maps;
mod nat;
mod node;
mod nsg;
pub mod programs;
mod route;

pub use abi::ABI_VERSION;
pub use conntrack::{
    ConntrackStat, Direction, FLOW_ASSURED, FLOW_OWNER_ANSWERER, FLOW_OWNER_OPENER,
    FLOW_SEEN_REPLY, Flow, FlowKey, FlowKind, FragmentKey, FragmentedDatagram, Rewrite, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN, TcpState,
};
pub use counters::{DropReason, Path, Traffic};
pub use endpoint::{
    CachedEndpoint, ENDPOINT_CACHE_SLOTS, ENDPOINT_EXPOSED_PORTS_ONLY, ENDPOINT_VNET_DIRECT,
    Endpoint, GroupPortKey,
};
pub use flowlog::{FLOW_INBOUND, FLOW_OUTBOUND, FlowDecision, FlowEvent, FlowEventVerdict};
pub use icmp::{ICMP_ERROR_BURST, ICMP_ERRORS_PER_SEC, IcmpErrorBudget};
pub use nat::{NoMasqueradeKey, PublicAddress, PublicPortKey};
pub use node::{NodeConfig, POD_GATEWAY};
pub use nsg::{
    NO_RULE, NsgAccess, NsgAddrKey, NsgPortKey, NsgProtoKey, NsgRule, NsgRuleKey, NsgVerdict,
    RULE_WORDS, RuleBitmap,
};
pub use route::{NextHop, Route, RouteKey};
