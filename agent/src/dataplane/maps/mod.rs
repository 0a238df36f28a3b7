//! The dataplane's maps, one module per table: each converts what the agent holds to the ABI
//! types of `vnetd-common` and writes it, syncing by difference (new entries first, then the
//! stale ones) so that a lookup never misses an entry that exists before and after.
mod batch;
mod conntrack;
mod counters;
mod endpoints;
mod flowlog;
pub mod nat;
mod node;
pub mod nsg;
pub mod routes;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, LpmTrie, Map, MapError};
use vnetd_common::{
    Endpoint, GroupPortKey, NoMasqueradeKey, PublicAddress, PublicPortKey, Route, RouteKey,
};

pub use conntrack::ConntrackMaps;
pub use endpoints::{EndpointRoutes, EndpointsGeneration, GroupPorts, abi_endpoint};
pub use flowlog::FlowEventRing;
/// The maps' names and capacities, as the ABI defines them.
pub use vnetd_common::maps::*;

use super::Dataplane;

impl Dataplane {
    /// Entries and capacity of the tables that fill up: (map, entries, capacity).
    pub fn occupancy(&self) -> Result<Vec<(String, u64, u64)>> {
        let endpoints: HashMap<_, [u8; 4], Endpoint> = HashMap::try_from(self.map(ENDPOINTS)?)?;
        let routes: LpmTrie<_, RouteKey, Route> = LpmTrie::try_from(self.map(ROUTES)?)?;
        let no_masquerade: LpmTrie<_, NoMasqueradeKey, u32> =
            LpmTrie::try_from(self.map(NO_MASQUERADE)?)?;
        let public_ips: HashMap<_, [u8; 4], PublicAddress> =
            HashMap::try_from(self.map(PUBLIC_IPS)?)?;
        let public_ports: HashMap<_, PublicPortKey, u32> =
            HashMap::try_from(self.map(PUBLIC_PORTS)?)?;
        let group_ports: HashMap<_, GroupPortKey, u32> = HashMap::try_from(self.map(GROUP_PORTS)?)?;
        // The NSG maps are large and the agent knows what it wrote there: counted from that.
        let nsg = self.mirror.nsgs.as_ref().map(nsg::Present::occupancy);
        let nsg = nsg
            .into_iter()
            .flatten()
            .map(|(map, n, cap)| (map.to_lowercase(), n, cap));
        Ok(vec![
            (
                ENDPOINTS.to_lowercase(),
                endpoints.keys().count() as u64,
                u64::from(ENDPOINTS_MAX),
            ),
            (
                ROUTES.to_lowercase(),
                routes.keys().count() as u64,
                u64::from(ROUTES_MAX),
            ),
            (
                NO_MASQUERADE.to_lowercase(),
                no_masquerade.keys().count() as u64,
                u64::from(NO_MASQUERADE_MAX),
            ),
            (
                PUBLIC_IPS.to_lowercase(),
                public_ips.keys().count() as u64,
                u64::from(PUBLIC_IPS_MAX),
            ),
            (
                PUBLIC_PORTS.to_lowercase(),
                public_ports.keys().count() as u64,
                u64::from(PUBLIC_PORTS_MAX),
            ),
            (
                GROUP_PORTS.to_lowercase(),
                group_ports.keys().count() as u64,
                u64::from(GROUP_PORTS_MAX),
            ),
        ]
        .into_iter()
        .chain(nsg)
        .collect())
    }

    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("no map {name}"))
    }

    /// A map by its ABI name, for tests that write and read ABI entries themselves
    /// (BPF_PROG_RUN fixtures).
    pub fn raw_map_mut(&mut self, name: &str) -> Result<&mut Map> {
        // What is written behind the agent's back is read back before the next diff.
        self.mirror = super::Mirror::default();
        self.map_mut(name)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name}"))
    }
}

/// Whether a delete removed an entry: `Ok(false)` if the key was not there. The kernel answers
/// the delete of a missing key with ENOENT, which aya reports as a system call error (its
/// `KeyNotFound` comes from lookups); the agent deletes what its records say, and an entry
/// already gone is not a failure.
pub(super) fn removed(result: Result<(), MapError>) -> Result<bool, MapError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}
