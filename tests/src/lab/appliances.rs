//! Network virtual appliances: the next hops of `VirtualAppliance` routes.

use super::Lab;
use crate::UPLINK;
use crate::ns::Ns;
use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::ops::Deref;

/// A network virtual appliance: a namespace on the fabric with `ip_forward=1` and a default
/// route via the gateway, the next hop of `VirtualAppliance` routes. Capture on it
/// ([`Ns::capture`]) or read its uplink's counters ([`Ns::link_stats`]) to see traffic arrive.
#[derive(Clone, Debug)]
pub struct Appliance {
    pub ns: Ns,
    pub uplink: String,
    pub ip: Ipv4Addr,
    pub cidr: Ipv4Net,
    pub mac: String,
    pub fabric_port: String,
}

impl Deref for Appliance {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.ns
    }
}

impl Lab {
    /// Adds a network virtual appliance at `cidr` (e.g. `"10.0.0.100/24".parse()?`):
    /// forwarding on, default via 10.0.0.1, ICMP redirects off.
    pub fn add_appliance(&self, name: &str, cidr: Ipv4Net) -> Result<Appliance> {
        let (ns, mac, fabric_port) = self
            .add_member(name, cidr)
            .with_context(|| format!("adding appliance {name} ({cidr}) to lab {}", self.id))?;
        let a = Appliance {
            ns,
            uplink: UPLINK.to_string(),
            ip: cidr.addr(),
            cidr,
            mac,
            fabric_port,
        };
        self.lock().appliances.push(a.clone());
        Ok(a)
    }
}
