//! Map names, defined once: the eBPF side declares its maps with them and the agent opens
//! and pins exactly these. Capacities beside them.

pub const TRAFFIC: &str = "TRAFFIC";
pub const DROPS: &str = "DROPS";
pub const NODE: &str = "NODE";
pub const ENDPOINTS: &str = "ENDPOINTS";
pub const ROUTES: &str = "ROUTES";
/// Connection tracking: both directions of every translated flow (LRU hash).
pub const FLOWS: &str = "FLOWS";
pub const CONNTRACK_STATS: &str = "CONNTRACK_STATS";
pub const NO_MASQUERADE: &str = "NO_MASQUERADE";
pub const PUBLIC_IPS: &str = "PUBLIC_IPS";
pub const PUBLIC_PORTS: &str = "PUBLIC_PORTS";

/// Capacities: 250 pods per node (plus headroom), 400 routes per table.
pub const ENDPOINTS_MAX: u32 = 512;
pub const ROUTES_MAX: u32 = 16384;
/// Flow entries (two per flow): 131072 flows, 64 MiB at most with the kernel's overhead.
pub const FLOWS_MAX: u32 = 262_144;
/// Prefixes never masqueraded: the address space, connected spaces, `nonMasqueradeCidrs`.
pub const NO_MASQUERADE_MAX: u32 = 1024;
/// Public groups on one node, and their exposed (protocol, port) pairs.
pub const PUBLIC_IPS_MAX: u32 = 256;
pub const PUBLIC_PORTS_MAX: u32 = 4096;

/// Every map the programs declare; the agent pins all of them.
pub const ALL: &[&str] = &[
    TRAFFIC,
    DROPS,
    NODE,
    ENDPOINTS,
    ROUTES,
    FLOWS,
    CONNTRACK_STATS,
    NO_MASQUERADE,
    PUBLIC_IPS,
    PUBLIC_PORTS,
];
