//! The agent's API: one JSON request per line on the Unix socket, one JSON response line back.
//! The CNI plugin and the `status` command are its clients.
use std::{net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A pod's attachment, as CNI names it: (network name, container id, interface name). A pod
/// attached to two networks (Multus: eth0 on one, net1 on another) has one per network, and
/// GC for one network lists only that network's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// The network configuration's `name`. Empty in the records of agents that did not key
    /// attachments by network (see [`Attachment::is_legacy`]).
    #[serde(default)]
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    /// Recorded before attachments were keyed by network: it matches a request for the same
    /// container and interface on any network, and GC collects it only when it is named.
    pub fn is_legacy(&self) -> bool {
        self.network.is_empty()
    }

    /// Whether this (recorded) attachment is the one `requested` names.
    pub fn answers(&self, requested: &Attachment) -> bool {
        self.container_id == requested.container_id
            && self.ifname == requested.ifname
            && (self.network == requested.network || self.is_legacy())
    }

    /// CNI's rules for the three names; the agent checks them on every request, whatever the
    /// plugin did.
    pub fn check(&self) -> Result<(), CniError> {
        let problem = container_id_problem(&self.container_id)
            .or_else(|| ifname_problem(&self.ifname))
            .or_else(|| {
                (!self.network.is_empty())
                    .then(|| network_name_problem(&self.network))
                    .flatten()
            });
        match problem {
            Some(problem) => Err(CniError::new(CniError::INVALID_ENVIRONMENT, problem)),
            None => Ok(()),
        }
    }
}

/// CNI's rule for container ids and network names: an alphanumeric, then alphanumerics,
/// `_`, `.` or `-`.
fn is_cni_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// What is wrong with a container id, if anything (the message names `CNI_CONTAINERID`).
pub fn container_id_problem(id: &str) -> Option<String> {
    (!is_cni_name(id)).then(|| {
        format!(
            "CNI_CONTAINERID {id:?} is not a valid container id (an alphanumeric, then \
             alphanumerics, '_', '.' or '-')"
        )
    })
}

/// What is wrong with a network name, if anything.
pub fn network_name_problem(name: &str) -> Option<String> {
    (!is_cni_name(name)).then(|| {
        format!(
            "network name {name:?} is not valid (an alphanumeric, then alphanumerics, '_', '.' \
             or '-')"
        )
    })
}

/// The spec's (and Linux's) rule for interface names.
pub fn ifname_problem(name: &str) -> Option<String> {
    (!crate::spec::is_valid_ifname(name)).then(|| {
        format!(
            "CNI_IFNAME {name:?} is not a valid interface name (1 to 15 bytes, not . or .., no \
             '/', ':' or whitespace)"
        )
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// CNI ADD: allocate an address, create the pod's interface, program the dataplane.
    Add(AddRequest),
    /// CNI DEL: undo ADD; idempotent.
    Del(Attachment),
    /// CNI CHECK: verify what ADD made is still there.
    Check(CheckRequest),
    /// CNI GC: release every attachment of `network` not in `valid`.
    Gc {
        #[serde(default)]
        network: String,
        valid: Vec<Attachment>,
    },
    /// CNI STATUS: is the agent ready to ADD (and is the pool not empty)?
    Ready { subnet: Option<String> },
    /// `vnetd status`.
    Status,
    /// `vnetd flows`: the buffered flow-log records after `after` (a record's `seq`), all of
    /// them without it.
    Flows {
        #[serde(default)]
        after: Option<u64>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddRequest {
    #[serde(flatten)]
    pub attachment: Attachment,
    /// `CNI_NETNS`, a path such as /run/netns/NAME or /proc/PID/ns/net.
    pub netns: PathBuf,
    /// The conflist's `subnet`: which subnet's pool to allocate from.
    pub subnet: Option<String>,
    /// `VNETD_CONTAINER_GROUP` from `CNI_ARGS`: attach this declared container group.
    pub container_group: Option<String>,
    pub k8s_namespace: Option<String>,
    pub k8s_pod: Option<String>,
    /// The conflist's `mtu`: the pod's MTU, at most the uplink's; absent = the uplink's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The conflist's `routes`: the destinations routed through this interface. Absent: the
    /// default route if the pod has none yet (its first interface), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Ipv4Net>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckRequest {
    #[serde(flatten)]
    pub attachment: Attachment,
    pub netns: PathBuf,
}

/// What ADD made: enough for the plugin to write the CNI result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    pub host_ifname: String,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// The pods' default gateway, 169.254.1.1 (as Azure CNI's transparent mode).
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// The destinations routed through the interface via `gateway` in the pod's main table.
    /// An agent that does not send them made the default route.
    #[serde(default = "default_route_only")]
    pub routes: Vec<Ipv4Net>,
}

/// What every pod interface got before interfaces had their own `routes`: the default route.
pub fn default_route_only() -> Vec<Ipv4Net> {
    vec![Ipv4Net::default()]
}

/// A CNI error: a code, a message and details, as the spec's error object carries them.
///
/// One type for both sides: the agent answers a request with it and the plugin prints it
/// unchanged (plus `cniVersion`), so a code means the same in the agent's API and in the
/// plugin's output. It lives here, with the protocol, because the plugin (`crate::cni`) already
/// depends on the protocol and the agent does not depend on the plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// The spec's well-known codes (< 100) or vnetd's own (>= 100); see the constants.
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    // The spec's well-known codes.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (1.1.0): the plugin cannot service ADD requests (the agent is not ready, or the
    /// pool is empty).
    pub const NOT_AVAILABLE: u32 = 50;
    // vnetd's plugin-specific codes (>= 100).
    /// The pool of the requested subnet is exhausted.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The interface already exists in the pod's namespace.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// The client is not allowed to use the API (not uid 0).
    pub const PERMISSION_DENIED: u32 = 102;
    /// The dataplane or the kernel refused an operation.
    pub const INTERNAL: u32 = 999;

    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// An unexpected failure: its top-level message, with the whole chain as details.
    pub fn internal(err: &anyhow::Error) -> Self {
        Self::new(Self::INTERNAL, err.to_string()).with_details(format!("{err:#}"))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Added(AddResult),
    Done,
    Status(StatusReport),
    Flows(crate::flowlog::FlowsReport),
    Error(CniError),
}

/// What `vnetd status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: String,
    pub uplink: String,
    pub endpoints: Vec<EndpointStatus>,
    /// Attached programs: (program, interface).
    pub links: Vec<(String, String)>,
    /// (path, packets, bytes)
    pub traffic: Vec<(String, u64, u64)>,
    /// (reason, packets)
    pub drops: Vec<(String, u64)>,
    /// (map, entries, capacity)
    pub maps: Vec<(String, u64, u64)>,
    /// Spec reloads applied and refused since the agent started.
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Connection tracking (absent from an agent before it). Boxed: it would make every
    /// [`Response`] as large as a status report.
    #[serde(default)]
    pub conntrack: Box<ConntrackReport>,
    /// Packets each NSG rule decided, summed over reloads (absent from an agent before it).
    #[serde(default)]
    pub nsg_rule_hits: Vec<NsgRuleHits>,
    /// Flow-log records the programs could not write (the ring was full).
    #[serde(default)]
    pub flow_records_lost: u64,
    /// SNAT ports held against the range (absent from an agent before it). Boxed as
    /// [`StatusReport::conntrack`] is.
    #[serde(default)]
    pub snat: Box<SnatReport>,
}

/// The SNAT ports masqueraded flows hold. A port is unique per reply tuple, i.e. per (NAT
/// address, remote address, remote port, protocol), as Azure's SNAT ports are per destination:
/// the range is each destination's capacity, and what runs out first is the busiest
/// destination's ports. Counted by the conntrack collector (as of its last pass).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatReport {
    /// `outboundNat.portRange`: [first, last].
    pub port_range: (u16, u16),
    /// The range's span: how many flows one destination can take.
    pub ports_per_destination: u64,
    /// Ports held in all, by pods' flows and the node's own connections from the range.
    pub ports_in_use: u64,
    /// (NAT address, ports held); the node's primary address always listed.
    pub ports_in_use_by_nat_ip: Vec<(Ipv4Addr, u64)>,
    /// The destination with the most ports held; `None` when no port is.
    pub busiest_destination: Option<SnatDestination>,
    /// New flows refused for want of a free port (`drops` `snat_ports_exhausted`).
    pub allocation_failures: u64,
}

/// A destination's share of the SNAT ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatDestination {
    pub nat_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    /// The remote port (an ICMP echo's identifier).
    pub remote_port: u16,
    /// `tcp`, `udp`, `icmp` or the protocol's number.
    pub protocol: String,
    pub ports_in_use: u64,
}

/// One NSG rule's hits: `vnetd_nsg_rule_hits_total{nsg,rule,direction,access}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsgRuleHits {
    pub nsg: String,
    /// The rule's name; the default rules by their Azure names (`DenyAllInBound`, ...).
    pub rule: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// `allow` or `deny`.
    pub access: String,
    pub hits: u64,
}

/// The flow table: what is in it, what the programs counted, what the collector deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackReport {
    /// (kind, entries) as of the collector's last pass, new and assured flows; two entries
    /// per flow.
    pub entries: Vec<(String, u64)>,
    /// Of those, the entries of assured flows (in FLOWS, which never evicts).
    pub assured: u64,
    /// FLOWS_MAX: the assured flows' entries.
    pub capacity: u64,
    /// NEW_FLOWS_MAX: the new flows' entries, an LRU.
    pub new_capacity: u64,
    /// ASSURED_FLOWS_PER_ENDPOINT: the assured flows one pod may hold (its flows beyond that
    /// stay new).
    #[serde(default)]
    pub endpoint_share: u64,
    /// (pod address, assured flows) of every pod holding any, as of the collector's last pass.
    #[serde(default)]
    pub assured_by_endpoint: Vec<(Ipv4Addr, u64)>,
    /// Entries of new flows the LRU evicted since the agent started (see [`crate::gc`]).
    pub evictions: u64,
    /// The programs' counters: (event, count).
    pub events: Vec<(String, u64)>,
    /// Entries the collector deleted: (reason, count).
    pub gc_deleted: Vec<(String, u64)>,
    pub gc_passes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointStatus {
    #[serde(flatten)]
    pub attachment: Attachment,
    pub ip: Ipv4Addr,
    pub host_ifname: String,
    pub container_group: Option<String>,
    pub k8s_namespace: Option<String>,
    pub k8s_pod: Option<String>,
    /// The pod's MAC (`02:..`). The fields from here on are absent from agents before them.
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub subnet: String,
    /// The subnet's NSG.
    #[serde(default)]
    pub nsg: Option<String>,
    /// A Public group's address and its name (`label.location.azurecontainer.io`, ACI's).
    #[serde(default)]
    pub public_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub fqdn: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin of one release may talk to the agent of another: an error's line must not
    /// change.
    #[test]
    fn error_answers_keep_their_wire_format() {
        let with_details = Response::Error(CniError {
            code: CniError::POOL_EXHAUSTED,
            msg: "subnet apps has no free address".into(),
            details: "10.0.2.0/23".into(),
        });
        assert_eq!(
            serde_json::to_string(&with_details).unwrap(),
            r#"{"error":{"code":100,"msg":"subnet apps has no free address","details":"10.0.2.0/23"}}"#
        );
        let bare = Response::Error(CniError::new(CniError::TRY_AGAIN_LATER, "busy"));
        let line = r#"{"error":{"code":11,"msg":"busy"}}"#;
        assert_eq!(serde_json::to_string(&bare).unwrap(), line);
        let Response::Error(read) = serde_json::from_str(line).unwrap() else {
            panic!("{line} is not an error answer");
        };
        assert_eq!(read, CniError::new(11, "busy"));
    }
}
