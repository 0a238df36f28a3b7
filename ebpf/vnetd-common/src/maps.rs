//! Map names, defined once: the eBPF side declares its maps with them and the agent opens
//! and pins exactly these. Capacities beside them.

pub const TRAFFIC: &str = "TRAFFIC";
pub const DROPS: &str = "DROPS";
pub const NODE: &str = "NODE";
pub const ENDPOINTS: &str = "ENDPOINTS";
pub const ROUTES: &str = "ROUTES";

/// Capacities: 250 pods per node (plus headroom), 400 routes per table.
pub const ENDPOINTS_MAX: u32 = 512;
pub const ROUTES_MAX: u32 = 16384;

/// Every map the programs declare; the agent pins all of them.
pub const ALL: &[&str] = &[TRAFFIC, DROPS, NODE, ENDPOINTS, ROUTES];
