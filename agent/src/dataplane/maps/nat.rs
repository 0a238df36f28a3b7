//! NO_MASQUERADE, PUBLIC_IPS and PUBLIC_PORTS: the destinations never masqueraded and the
//! Public groups' addresses this node serves. Synced by difference, new entries first, then
//! the stale ones: a reload never leaves a moment where an address that exists before and
//! after is missing.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, LpmTrie, MapData, lpm_trie::Key};
use ipnet::Ipv4Net;
use vnetd_common::{NoMasqueradeKey, PublicAddress, PublicPortKey, maps};

use super::removed;
use crate::{compile::nat::PublicMapping, dataplane::Dataplane};

/// PUBLIC_IPS and PUBLIC_PORTS as the kernel holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublicTables {
    pub addresses: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// (public ip, IP protocol, port in host byte order).
    pub ports: BTreeSet<(Ipv4Addr, u8, u16)>,
}

impl PublicTables {
    pub fn of(mappings: &BTreeMap<Ipv4Addr, PublicMapping>) -> Self {
        let mut tables = Self::default();
        for (public_ip, m) in mappings {
            tables.addresses.insert(*public_ip, m.private_ip);
            for (proto, port) in &m.ports {
                tables.ports.insert((*public_ip, *proto, *port));
            }
        }
        tables
    }
}

fn port_key(&(ip, proto, port): &(Ipv4Addr, u8, u16)) -> PublicPortKey {
    PublicPortKey {
        public_ip: ip.octets(),
        port: port.to_be(),
        proto,
        _pad: 0,
    }
}

fn lpm_key(net: &Ipv4Net) -> Key<NoMasqueradeKey> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

impl Dataplane {
    /// Makes NO_MASQUERADE hold exactly `prefixes`.
    pub fn sync_no_masquerade(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        let wanted: BTreeSet<Ipv4Net> = prefixes.iter().map(Ipv4Net::trunc).collect();
        let present = self.no_masquerade()?;
        let mut map = self.no_masquerade_map()?;
        for net in wanted.difference(&present) {
            map.insert(&lpm_key(net), 1, 0).with_context(|| {
                format!(
                    "writing NO_MASQUERADE[{net}] (it holds at most NO_MASQUERADE_MAX = {})",
                    maps::NO_MASQUERADE_MAX
                )
            })?;
        }
        for net in present.difference(&wanted) {
            removed(map.remove(&lpm_key(net)))
                .with_context(|| format!("removing NO_MASQUERADE[{net}]"))?;
        }
        Ok(())
    }

    /// The prefixes in NO_MASQUERADE.
    pub fn no_masquerade(&mut self) -> Result<BTreeSet<Ipv4Net>> {
        let map = self.no_masquerade_map()?;
        map.keys()
            .map(|key| {
                let key = key.context("reading NO_MASQUERADE")?;
                Ok(Ipv4Net::new(
                    Ipv4Addr::from(key.data()),
                    key.prefix_len() as u8,
                )?)
            })
            .collect()
    }

    /// Makes PUBLIC_IPS and PUBLIC_PORTS hold exactly `wanted`: new and changed addresses,
    /// then new ports, then stale ports, then stale addresses.
    pub fn sync_public(&mut self, wanted: &PublicTables) -> Result<()> {
        let present = self.public_tables()?;
        {
            let mut ips = self.public_ips_map()?;
            for (public_ip, private_ip) in &wanted.addresses {
                if present.addresses.get(public_ip) != Some(private_ip) {
                    let value = PublicAddress {
                        private_ip: private_ip.octets(),
                    };
                    ips.insert(public_ip.octets(), value, 0).with_context(|| {
                        format!(
                            "writing PUBLIC_IPS[{public_ip}] (it holds at most PUBLIC_IPS_MAX = \
                             {})",
                            maps::PUBLIC_IPS_MAX
                        )
                    })?;
                }
            }
        }
        let mut ports = self.public_ports_map()?;
        for entry in wanted.ports.difference(&present.ports) {
            ports.insert(port_key(entry), 1, 0).with_context(|| {
                format!(
                    "writing PUBLIC_PORTS[{entry:?}] (it holds at most PUBLIC_PORTS_MAX = {})",
                    maps::PUBLIC_PORTS_MAX
                )
            })?;
        }
        for entry in present.ports.difference(&wanted.ports) {
            removed(ports.remove(&port_key(entry)))
                .with_context(|| format!("removing PUBLIC_PORTS[{entry:?}]"))?;
        }
        let mut ips = self.public_ips_map()?;
        for public_ip in present
            .addresses
            .keys()
            .filter(|ip| !wanted.addresses.contains_key(ip))
        {
            removed(ips.remove(&public_ip.octets()))
                .with_context(|| format!("removing PUBLIC_IPS[{public_ip}]"))?;
        }
        Ok(())
    }

    /// What PUBLIC_IPS and PUBLIC_PORTS hold.
    pub fn public_tables(&mut self) -> Result<PublicTables> {
        let mut tables = PublicTables::default();
        for entry in self.public_ips_map()?.iter() {
            let (public_ip, address) = entry.context("reading PUBLIC_IPS")?;
            tables.addresses.insert(
                Ipv4Addr::from(public_ip),
                Ipv4Addr::from(address.private_ip),
            );
        }
        for key in self.public_ports_map()?.keys() {
            let key = key.context("reading PUBLIC_PORTS")?;
            tables.ports.insert((
                Ipv4Addr::from(key.public_ip),
                key.proto,
                u16::from_be(key.port),
            ));
        }
        Ok(tables)
    }

    fn no_masquerade_map(&mut self) -> Result<LpmTrie<&mut MapData, NoMasqueradeKey, u32>> {
        Ok(LpmTrie::try_from(self.map_mut(maps::NO_MASQUERADE)?)?)
    }

    fn public_ips_map(&mut self) -> Result<HashMap<&mut MapData, [u8; 4], PublicAddress>> {
        Ok(HashMap::try_from(self.map_mut(maps::PUBLIC_IPS)?)?)
    }

    fn public_ports_map(&mut self) -> Result<HashMap<&mut MapData, PublicPortKey, u32>> {
        Ok(HashMap::try_from(self.map_mut(maps::PUBLIC_PORTS)?)?)
    }
}
