//! Map names, defined once: the eBPF side declares its maps with them and the agent opens
//! and pins exactly these. Capacities beside them.

pub const TRAFFIC: &str = "TRAFFIC";
pub const DROPS: &str = "DROPS";
pub const NODE: &str = "NODE";
pub const ENDPOINTS: &str = "ENDPOINTS";
/// A counter the agent moves on after every write to `ENDPOINTS` (one u64, mmapable, so the
/// agent stores it atomically), and each CPU's copies of the entries it looked up under it.
pub const ENDPOINTS_GENERATION: &str = "ENDPOINTS_GENERATION";
pub const ENDPOINT_CACHE: &str = "ENDPOINT_CACHE";
pub const ROUTES: &str = "ROUTES";
/// Connection tracking: both directions of every tracked flow, new ones in `NEW_FLOWS` (an LRU
/// hash: a flood evicts its own flows), assured ones in `FLOWS` (a hash nothing evicts).
pub const NEW_FLOWS: &str = "NEW_FLOWS";
pub const FLOWS: &str = "FLOWS";
pub const CONNTRACK_STATS: &str = "CONNTRACK_STATS";
/// Assured flows each pod of this node holds, by its address (see
/// [`ASSURED_FLOWS_PER_ENDPOINT`]).
pub const ENDPOINT_ASSURED: &str = "ENDPOINT_ASSURED";
/// Fragmented datagrams on translated paths: the flow of each one's first fragment (LRU hash).
pub const FRAGMENTS: &str = "FRAGMENTS";
pub const NO_MASQUERADE: &str = "NO_MASQUERADE";
pub const PUBLIC_IPS: &str = "PUBLIC_IPS";
pub const PUBLIC_PORTS: &str = "PUBLIC_PORTS";
/// Container groups' exposed (address, protocol, port) triples.
pub const GROUP_PORTS: &str = "GROUP_PORTS";
/// NSG classifiers: per field, (classifier, value) -> the bitmap of the rules it satisfies.
pub const NSG_SRC_ADDR: &str = "NSG_SRC_ADDR";
pub const NSG_DST_ADDR: &str = "NSG_DST_ADDR";
pub const NSG_SRC_PORT: &str = "NSG_SRC_PORT";
pub const NSG_DST_PORT: &str = "NSG_DST_PORT";
pub const NSG_PROTO: &str = "NSG_PROTO";
/// classifier -> the rules whose port ranges are both `*` (the port condition of a packet
/// without ports).
pub const NSG_PORTLESS: &str = "NSG_PORTLESS";
/// (classifier, rule) -> access and priority.
pub const NSG_RULES: &str = "NSG_RULES";
/// (classifier, rule) -> packets it decided, per CPU.
pub const NSG_HITS: &str = "NSG_HITS";
/// Flow-log events (a ring buffer of `FlowEvent`s) and the records it had no room for (per CPU).
pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
pub const FLOW_EVENTS_LOST: &str = "FLOW_EVENTS_LOST";
/// The ICMP errors each CPU may still send (a token bucket per CPU).
pub const ICMP_ERROR_BUDGET: &str = "ICMP_ERROR_BUDGET";

/// Capacities: 250 pods per node (plus headroom), 400 routes per table.
pub const ENDPOINTS_MAX: u32 = 512;
pub const ROUTES_MAX: u32 = 16384;
/// Flow entries (two per flow), in each of the two tables: 131072 new flows and as many
/// assured ones, about 36 MiB per table with the kernel's overhead (preallocated).
pub const FLOWS_MAX: u32 = 262_144;
pub const NEW_FLOWS_MAX: u32 = FLOWS_MAX;
/// Assured flows one pod may hold: an eighth of `FLOWS`, so no one pod (nor seven) fills the
/// table that keeps every pod's established connections through a flood. Its flows beyond
/// this stay new: they pass, and only a flood of new flows can evict them.
pub const ASSURED_FLOWS_PER_ENDPOINT: u64 = FLOWS_MAX as u64 / 2 / 8;
/// Fragmented datagrams in flight through the NAT (an entry is needed only until the
/// datagram's last fragment has passed).
pub const FRAGMENTS_MAX: u32 = 8192;
/// Prefixes never masqueraded: the address space, connected spaces, `nonMasqueradeCidrs`.
pub const NO_MASQUERADE_MAX: u32 = 1024;
/// Public groups on one node, and their exposed (protocol, port) pairs.
pub const PUBLIC_IPS_MAX: u32 = 256;
pub const PUBLIC_PORTS_MAX: u32 = 4096;
/// Container groups' exposed ports on one node.
pub const GROUP_PORTS_MAX: u32 = 4096;
/// Classifier slots (two per NSG, two generations of each during a reload): 64 NSGs.
pub const NSG_CLASSIFIERS_MAX: u32 = 256;
/// Address prefixes over all classifiers: an NSG has at most 4000 source and 4000 destination
/// prefixes (plus the service tags' and the /0), so 8 NSGs' worth, twice during a reload. The
/// LPM tries allocate per entry (`BPF_F_NO_PREALLOC`): the capacity is a ceiling, not memory.
pub const NSG_ADDR_MAX: u32 = 65_536;
/// Port blocks over all classifiers (a range is at most 30 blocks; shared blocks count once).
pub const NSG_PORT_MAX: u32 = 65_536;
/// One entry per protocol class (6) per classifier.
pub const NSG_PROTO_MAX: u32 = NSG_CLASSIFIERS_MAX * 8;
/// Rules over all classifiers: 16 classifiers of 1000 rules (and the defaults), twice.
pub const NSG_RULES_MAX: u32 = 32_768;
/// The flow-log ring's size in bytes: about 14500 records (64 bytes and an 8-byte header each),
/// several seconds of new connections at a busy node's rate between two reads.
pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;

/// Every map the programs declare; the agent pins all of them.
pub const ALL: &[&str] = &[
    TRAFFIC,
    DROPS,
    NODE,
    ENDPOINTS,
    ENDPOINTS_GENERATION,
    ENDPOINT_CACHE,
    ROUTES,
    NEW_FLOWS,
    FLOWS,
    CONNTRACK_STATS,
    ENDPOINT_ASSURED,
    FRAGMENTS,
    NO_MASQUERADE,
    PUBLIC_IPS,
    PUBLIC_PORTS,
    GROUP_PORTS,
    NSG_SRC_ADDR,
    NSG_DST_ADDR,
    NSG_SRC_PORT,
    NSG_DST_PORT,
    NSG_PROTO,
    NSG_PORTLESS,
    NSG_RULES,
    NSG_HITS,
    FLOW_EVENTS,
    FLOW_EVENTS_LOST,
    ICMP_ERROR_BUDGET,
];
