//! ENDPOINTS: this node's pods and container groups by address; GROUP_PORTS: the ports
//! container groups expose.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    num::NonZeroUsize,
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use vnetd_common::{
    ENDPOINT_EXPOSED_PORTS_ONLY, ENDPOINT_VNET_DIRECT, Endpoint, GroupPortKey, maps,
};

use super::{batch, nsg::EndpointNsgs, removed};
use crate::{dataplane::Dataplane, endpoints};

/// The route table an endpoint's packets are routed by: its kernel id, and whether it routes
/// the whole VNet locally (the compiled table's `vnet_direct`).
#[derive(Clone, Copy, Debug, Default)]
pub struct EndpointRoutes {
    pub table: u32,
    pub vnet_direct: bool,
}

/// The ABI entry of a recorded endpoint whose subnet uses the route table `routes` and the NSG
/// classifiers `nsgs` (kernel ids); `public_ip` is its Public group's address (its outbound
/// traffic to the internet leaves with it). A container group is reachable from outside only
/// on the ports GROUP_PORTS holds for it.
pub fn abi_endpoint(
    ep: &endpoints::Endpoint,
    routes: EndpointRoutes,
    public_ip: Option<Ipv4Addr>,
    nsgs: EndpointNsgs,
) -> Endpoint {
    let mut flags = 0;
    if ep.container_group.is_some() {
        flags |= ENDPOINT_EXPOSED_PORTS_ONLY;
    }
    if routes.vnet_direct {
        flags |= ENDPOINT_VNET_DIRECT;
    }
    Endpoint {
        host_ifindex: ep.host_ifindex,
        route_table: routes.table,
        pod_mac: ep.pod_mac,
        host_mac: ep.host_mac,
        public_ip: public_ip.map_or([0; 4], |ip| ip.octets()),
        nsg_in_subnet: nsgs.in_subnet,
        nsg_in_group: nsgs.in_group,
        nsg_out_subnet: nsgs.out_subnet,
        nsg_out_group: nsgs.out_group,
        flags,
    }
}

/// GROUP_PORTS as the kernel holds it: (group's private address, IP protocol, port in host
/// byte order).
pub type GroupPorts = BTreeSet<(Ipv4Addr, u8, u16)>;

fn group_port_key(&(ip, proto, port): &(Ipv4Addr, u8, u16)) -> GroupPortKey {
    GroupPortKey {
        ip: ip.octets(),
        port: port.to_be(),
        proto,
        _pad: 0,
    }
}

/// `ENDPOINTS_GENERATION`, mapped into the agent: the programs keep per-CPU copies of the
/// `ENDPOINTS` entries they look up, each valid while the generation it was looked up under is
/// current. The agent moves the generation on after every write to `ENDPOINTS`, with an atomic
/// store through the mapping (a system call's update of an array copies bytes, and a program
/// could read half of the old value and half of the new).
///
/// A program reads the generation, then looks the entry up: the two loads must stay in that
/// order, or a program could take the entry from before the agent's write and the generation
/// from after it, and keep a stale copy as current. x86-64 never reorders two loads; a weakly
/// ordered CPU (arm64) can, unless the first is a load-acquire, which the programs' BPF target
/// does not emit. There the agent leaves the generation at 0, which turns the copies off:
/// every lookup goes to `ENDPOINTS`, as before the cache.
pub struct EndpointsGeneration {
    word: NonNull<AtomicU64>,
    len: NonZeroUsize,
}

/// Whether the programs' copies may be used on this architecture (see [`EndpointsGeneration`]).
const COPIES_ORDERED: bool = cfg!(target_arch = "x86_64");

// SAFETY: the mapping is shared memory reached only through the atomic.
unsafe impl Send for EndpointsGeneration {}
unsafe impl Sync for EndpointsGeneration {}

impl EndpointsGeneration {
    /// Maps `map` (the mmapable one-slot array) and numbers it afresh: past every number it
    /// held and every one an earlier map at this pin held this boot (the nanoseconds since
    /// boot, which a counter moved on once per write never catches up with), so that no copy
    /// kept under an old number, by whichever agent, is current again.
    pub fn open(map: &Map) -> Result<Self> {
        let Map::Array(data) = map else {
            anyhow::bail!("{} is not an array", maps::ENDPOINTS_GENERATION);
        };
        let len = NonZeroUsize::new(page_size()).context("the page size is 0")?;
        // SAFETY: a new shared mapping of the map's value area; nothing else in this process
        // aliases it.
        let area = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                data.fd().as_fd(),
                0,
            )
        }
        .with_context(|| format!("mapping {} into memory", maps::ENDPOINTS_GENERATION))?;
        let generation = Self {
            word: area.cast(),
            len,
        };
        if !COPIES_ORDERED {
            generation.word().store(0, Ordering::Release);
            return Ok(generation);
        }
        let since_boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .context("reading CLOCK_BOOTTIME")?;
        let since_boot =
            u64::try_from(std::time::Duration::from(since_boot).as_nanos()).unwrap_or(u64::MAX);
        generation
            .word()
            .fetch_max(since_boot.max(generation.current() + 1), Ordering::Release);
        Ok(generation)
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping lives as long as `self`; the value is 8-byte aligned (page start).
        unsafe { self.word.as_ref() }
    }

    pub fn current(&self) -> u64 {
        self.word().load(Ordering::Acquire)
    }

    /// After a write to `ENDPOINTS`: the copies taken before it are stale.
    fn advance(&self) {
        if COPIES_ORDERED {
            self.word().fetch_add(1, Ordering::Release);
        }
    }
}

impl Drop for EndpointsGeneration {
    fn drop(&mut self) {
        // SAFETY: the mapping `open` made, not used after this.
        let _ = unsafe { munmap(self.word.cast(), self.len.get()) };
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as usize)
}

impl Dataplane {
    pub fn put_endpoint(&mut self, ip: Ipv4Addr, ep: Endpoint) -> Result<()> {
        self.put_endpoints(&[(ip, ep)])
    }

    /// Writes `entries` in one system call (a reload repoints every pod of a subnet: one
    /// call each took half a millisecond for 250 pods), each entry replaced whole, in order.
    pub fn put_endpoints(&mut self, entries: &[(Ipv4Addr, Endpoint)]) -> Result<()> {
        let keys: Vec<[u8; 4]> = entries.iter().map(|(ip, _)| ip.octets()).collect();
        let values: Vec<Endpoint> = entries.iter().map(|(_, ep)| *ep).collect();
        let map = self.map(maps::ENDPOINTS)?;
        HashMap::<_, [u8; 4], Endpoint>::try_from(map)?;
        let written = batch::update(map, &keys, &values);
        self.endpoints_generation.advance();
        match (&written, self.mirror.endpoints.as_mut()) {
            (Ok(()), Some(mirror)) => mirror.extend(entries.iter().copied()),
            (Err(_), _) => self.mirror.endpoints = None,
            (Ok(()), None) => {}
        }
        written.map_err(|s| {
            let ip = s.entry(entries).0;
            anyhow::Error::from(s.error).context(format!("writing ENDPOINTS[{ip}]"))
        })
    }

    /// The generation the programs' endpoint copies must carry to be used.
    pub fn endpoints_generation(&self) -> u64 {
        self.endpoints_generation.current()
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        let result = removed(self.endpoints_map()?.remove(&ip.octets()));
        self.endpoints_generation.advance();
        match result {
            Ok(_) => {
                if let Some(mirror) = self.mirror.endpoints.as_mut() {
                    mirror.remove(&ip);
                }
                Ok(())
            }
            Err(err) => {
                self.mirror.endpoints = None;
                Err(err).with_context(|| format!("removing ENDPOINTS[{ip}]"))
            }
        }
    }

    /// The entries in ENDPOINTS, read from the kernel.
    pub fn endpoints(&self) -> Result<BTreeMap<Ipv4Addr, Endpoint>> {
        let map: HashMap<_, [u8; 4], Endpoint> = HashMap::try_from(self.map(maps::ENDPOINTS)?)?;
        map.iter()
            .map(|entry| {
                let (ip, ep) = entry.context("reading ENDPOINTS")?;
                Ok((Ipv4Addr::from(ip), ep))
            })
            .collect()
    }

    /// The entries in ENDPOINTS as this agent wrote them (read from the kernel the first time
    /// and after a failed write).
    pub fn endpoints_written(&mut self) -> Result<BTreeMap<Ipv4Addr, Endpoint>> {
        if self.mirror.endpoints.is_none() {
            self.mirror.endpoints = Some(self.endpoints()?);
        }
        Ok(self.mirror.endpoints.clone().unwrap_or_default())
    }

    /// The addresses in ENDPOINTS (a restarted agent compares them with its records).
    pub fn endpoint_ips(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self.endpoints()?.into_keys().collect())
    }

    /// Makes ENDPOINTS hold exactly `wanted`: new and changed entries first, then removals.
    pub fn sync_endpoints(&mut self, wanted: &BTreeMap<Ipv4Addr, Endpoint>) -> Result<()> {
        let present = self.endpoints_written()?;
        let changed: Vec<(Ipv4Addr, Endpoint)> = wanted
            .iter()
            .filter(|(ip, ep)| present.get(ip) != Some(ep))
            .map(|(ip, ep)| (*ip, *ep))
            .collect();
        self.put_endpoints(&changed)?;
        for ip in present.keys().filter(|ip| !wanted.contains_key(ip)) {
            self.remove_endpoint(*ip)?;
        }
        Ok(())
    }

    /// Adds `entries` to GROUP_PORTS (a group's ports before its endpoint entry, so it is never
    /// reachable without them).
    pub fn put_group_ports(&mut self, entries: &GroupPorts) -> Result<()> {
        let mut map = self.group_ports_map()?;
        for entry in entries {
            map.insert(group_port_key(entry), 1, 0).with_context(|| {
                format!(
                    "writing GROUP_PORTS[{entry:?}] (it holds at most GROUP_PORTS_MAX = {})",
                    maps::GROUP_PORTS_MAX
                )
            })?;
        }
        Ok(())
    }

    /// Makes GROUP_PORTS hold exactly `wanted`: new entries first, then the stale ones.
    pub fn sync_group_ports(&mut self, wanted: &GroupPorts) -> Result<()> {
        let present = self.group_ports()?;
        self.put_group_ports(&wanted.difference(&present).copied().collect())?;
        let mut map = self.group_ports_map()?;
        for entry in present.difference(wanted) {
            removed(map.remove(&group_port_key(entry)))
                .with_context(|| format!("removing GROUP_PORTS[{entry:?}]"))?;
        }
        Ok(())
    }

    /// What GROUP_PORTS holds.
    pub fn group_ports(&mut self) -> Result<GroupPorts> {
        self.group_ports_map()?
            .keys()
            .map(|key| {
                let key = key.context("reading GROUP_PORTS")?;
                Ok((Ipv4Addr::from(key.ip), key.proto, u16::from_be(key.port)))
            })
            .collect()
    }

    fn group_ports_map(&mut self) -> Result<HashMap<&mut MapData, GroupPortKey, u32>> {
        Ok(HashMap::try_from(self.map_mut(maps::GROUP_PORTS)?)?)
    }

    fn endpoints_map(&mut self) -> Result<HashMap<&mut MapData, [u8; 4], Endpoint>> {
        Ok(HashMap::try_from(self.map_mut(maps::ENDPOINTS)?)?)
    }
}
