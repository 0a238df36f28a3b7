//! ENDPOINTS: this node's pods and container groups by address.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData, MapError};
use vnetd_common::{Endpoint, maps};

use crate::{dataplane::Dataplane, endpoints};

/// The ABI entry of a recorded endpoint whose subnet uses the route table `route_table`;
/// `public_ip` is its Public group's address (its outbound traffic to the internet leaves
/// with it).
pub fn abi_endpoint(
    ep: &endpoints::Endpoint,
    route_table: u32,
    public_ip: Option<Ipv4Addr>,
) -> Endpoint {
    Endpoint {
        host_ifindex: ep.host_ifindex,
        route_table,
        pod_mac: ep.pod_mac,
        host_mac: ep.host_mac,
        public_ip: public_ip.map_or([0; 4], |ip| ip.octets()),
        nsg_in_subnet: 0,
        nsg_in_group: 0,
        nsg_out_subnet: 0,
        nsg_out_group: 0,
        flags: 0,
    }
}

impl Dataplane {
    pub fn put_endpoint(&mut self, ip: Ipv4Addr, ep: Endpoint) -> Result<()> {
        self.endpoints_map()?
            .insert(ip.octets(), ep, 0)
            .with_context(|| format!("writing ENDPOINTS[{ip}]"))
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        match self.endpoints_map()?.remove(&ip.octets()) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing ENDPOINTS[{ip}]")),
        }
    }

    /// The entries in ENDPOINTS.
    pub fn endpoints(&self) -> Result<BTreeMap<Ipv4Addr, Endpoint>> {
        let map: HashMap<_, [u8; 4], Endpoint> = HashMap::try_from(self.map(maps::ENDPOINTS)?)?;
        map.iter()
            .map(|entry| {
                let (ip, ep) = entry.context("reading ENDPOINTS")?;
                Ok((Ipv4Addr::from(ip), ep))
            })
            .collect()
    }

    /// The addresses in ENDPOINTS (a restarted agent compares them with its records).
    pub fn endpoint_ips(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self.endpoints()?.into_keys().collect())
    }

    /// Makes ENDPOINTS hold exactly `wanted`: new and changed entries first, then removals.
    pub fn sync_endpoints(&mut self, wanted: &BTreeMap<Ipv4Addr, Endpoint>) -> Result<()> {
        let present = self.endpoints()?;
        for (ip, ep) in wanted {
            if present.get(ip) != Some(ep) {
                self.put_endpoint(*ip, *ep)?;
            }
        }
        for ip in present.keys().filter(|ip| !wanted.contains_key(ip)) {
            self.remove_endpoint(*ip)?;
        }
        Ok(())
    }

    fn endpoints_map(&mut self) -> Result<HashMap<&mut MapData, [u8; 4], Endpoint>> {
        Ok(HashMap::try_from(self.map_mut(maps::ENDPOINTS)?)?)
    }
}
