//! The SNAT ports masqueraded flows hold, counted from their reply entries.
use std::collections::{BTreeMap, HashMap};

use vnetd_common::{Direction, Flow, FlowKey, FlowKind};

use super::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// Where a SNAT port is unique: the reply tuple less the port, i.e. the NAT address and the
/// destination (remote address, remote port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnatDestinationKey {
    pub nat_ip: [u8; 4],
    pub remote_ip: [u8; 4],
    /// Host byte order.
    pub remote_port: u16,
    pub proto: u8,
}

/// The SNAT ports some flow entries hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnatUsage {
    /// Ports held per NAT address.
    pub by_nat_ip: BTreeMap<[u8; 4], u64>,
    /// The destination holding the most ports, and how many (ties: the lowest key).
    pub busiest: Option<(SnatDestinationKey, u64)>,
}

impl SnatUsage {
    pub fn total(&self) -> u64 {
        self.by_nat_ip.values().sum()
    }
}

/// The SNAT ports `entries` hold: one per Reply entry of a masqueraded flow, a pod's
/// ([`FlowKind::PodSnat`]) or the node's own from a port in the range ([`FlowKind::Host`]).
/// Such an entry is keyed (remote address and port) -> (NAT address, the port): the port
/// allocator makes that key unique, so ports are counted per destination.
pub fn snat_usage<'a>(entries: impl IntoIterator<Item = (&'a FlowKey, &'a Flow)>) -> SnatUsage {
    let masqueraded = [FlowKind::PodSnat as u8, FlowKind::Host as u8];
    let mut by_destination: HashMap<SnatDestinationKey, u64> = HashMap::new();
    for (key, flow) in entries {
        if flow.direction != Direction::Reply as u8 || !masqueraded.contains(&flow.kind) {
            continue;
        }
        let destination = SnatDestinationKey {
            nat_ip: key.dst_ip,
            remote_ip: key.src_ip,
            remote_port: u16::from_be(key.src_port),
            proto: key.proto,
        };
        *by_destination.entry(destination).or_default() += 1;
    }
    let mut usage = SnatUsage::default();
    for (destination, n) in &by_destination {
        *usage.by_nat_ip.entry(destination.nat_ip).or_default() += n;
    }
    usage.busiest = by_destination
        .into_iter()
        .max_by(|(ka, a), (kb, b)| a.cmp(b).then(kb.cmp(ka)));
    usage
}

pub(super) fn protocol_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        other => other.to_string(),
    }
}
