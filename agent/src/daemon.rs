//! `vnetd run`: the agent. Owns the dataplane, the node's IPAM and its endpoints, and serves
//! the API. Requests are handled one at a time (a pod ADD is a few netlink calls and map
//! writes; serialising them keeps IPAM and the maps trivially consistent).
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use tracing::{info, warn};
use vnetd_common::NodeConfig;

use crate::{
    api::proto::{
        AddRequest, AddResult, ApiError, Attachment, CheckRequest, Request, Response, StatusReport,
    },
    dataplane::Dataplane,
    endpoints::{self, Endpoint, EndpointStore},
    ipam::Ipam,
    netlink::{self, POD_GATEWAY, PodInterfaceError, PodInterfaceSpec},
    plan::NodePlan,
};

const POD_MTU: u32 = 1500;

pub struct Agent {
    plan: NodePlan,
    dataplane: Dataplane,
    ipam: Ipam,
    store: EndpointStore,
    endpoints: BTreeMap<Attachment, Endpoint>,
    /// Spec reloads applied and refused.
    reloads: (u64, u64),
}

impl Agent {
    /// Loads (or adopts) the dataplane, attaches the uplink, and restores the endpoints a
    /// previous agent recorded: reattached if their interface is still there, released if not.
    pub async fn start(plan: NodePlan, bpffs: &Path, state_dir: &Path) -> Result<Self> {
        let mut dataplane = Dataplane::load_pinned(bpffs)?;
        let (uplink_ifindex, uplink_mac) = netlink::link_by_name(&plan.uplink)
            .await?
            .with_context(|| format!("uplink {} does not exist in this namespace", plan.uplink))?;
        dataplane.set_node(NodeConfig {
            uplink_ifindex,
            primary_ip: plan.primary_ip.octets(),
            uplink_mac,
            _pad: [0; 2],
        })?;
        dataplane.sync_routes(&plan.routes)?;
        let generic_xdp = netlink::is_veth_link(&plan.uplink).await?;
        dataplane.attach_uplink(&plan.uplink, generic_xdp)?;
        info!(uplink = %plan.uplink, routes = plan.routes.len(), "uplink programs attached");
        match recorded_node(state_dir)? {
            Some(node) if node != plan.node => anyhow::bail!(
                "{} holds the state of node {node}: give node {} its own --state-dir",
                state_dir.display(),
                plan.node
            ),
            Some(_) => {}
            None => std::fs::write(state_dir.join("node"), &plan.node)?,
        }
        let ipam = Ipam::open(state_dir)?;
        let store = EndpointStore::open(state_dir)?;
        let mut agent = Self {
            plan,
            dataplane,
            ipam,
            store,
            endpoints: BTreeMap::new(),
            reloads: (0, 0),
        };
        agent.restore().await?;
        Ok(agent)
    }

    /// Applies a new plan (a changed spec) by writing only the differences. Endpoints whose
    /// subnet changed route table get their entry rewritten; established traffic is untouched.
    pub fn reload(&mut self, plan: NodePlan) -> Result<()> {
        if plan.uplink != self.plan.uplink || plan.primary_ip != self.plan.primary_ip {
            anyhow::bail!("changing a running node's uplink or primary IP needs a restart");
        }
        // New routes first, then the endpoints whose subnet changed table, then the stale
        // routes: a packet always finds a route from the old or the new configuration.
        self.dataplane.upsert_routes(&plan.routes)?;
        let old = std::mem::replace(&mut self.plan, plan);
        let table =
            |plan: &NodePlan, subnet: &str| plan.subnet(subnet).map_or(0, |s| s.route_table);
        let moved: Vec<Endpoint> = self
            .endpoints
            .values()
            .filter(|ep| table(&old, &ep.subnet) != table(&self.plan, &ep.subnet))
            .cloned()
            .collect();
        for ep in &moved {
            self.write_endpoint(ep)?;
        }
        self.dataplane.prune_routes(&self.plan.routes)
    }

    async fn restore(&mut self) -> Result<()> {
        for (attachment, mut ep) in self.store.load_all()? {
            if let Some((ifindex, _)) = netlink::link_by_name(&ep.host_ifname).await? {
                ep.host_ifindex = ifindex;
                self.program(&ep)?;
                info!(ip = %ep.ip, host_ifname = %ep.host_ifname, "endpoint adopted");
                self.endpoints.insert(attachment, ep);
            } else {
                warn!(ip = %ep.ip, host_ifname = %ep.host_ifname, "endpoint's interface is gone: releasing it");
                self.forget(&ep)?;
            }
        }
        // An address recorded without an endpoint is from an ADD that never completed.
        let owners: BTreeMap<String, ()> =
            self.endpoints.values().map(|ep| (ep.owner(), ())).collect();
        for (ip, owner) in self.ipam.allocations()? {
            if !owners.contains_key(&owner) {
                warn!(%ip, %owner, "releasing an address from an unfinished ADD");
                self.ipam.release(ip, &owner)?;
            }
        }
        for ip in self.dataplane.endpoint_ips()? {
            if !self.endpoints.values().any(|ep| ep.ip == ip) {
                self.dataplane.remove_endpoint(ip)?;
            }
        }
        Ok(())
    }

    pub fn count_reload(&mut self, ok: bool) {
        if ok {
            self.reloads.0 += 1;
        } else {
            self.reloads.1 += 1;
        }
    }

    pub fn node(&self) -> &str {
        &self.plan.node
    }

    pub async fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Add(req) => self.add(req).await.map(Response::Added),
            Request::Del(att) => self.del(&att).await.map(|()| Response::Done),
            Request::Check(req) => self.check(&req).await.map(|()| Response::Done),
            Request::Gc { valid } => self.gc(&valid).await.map(|()| Response::Done),
            Request::Ready { subnet } => self.ready(subnet.as_deref()).map(|()| Response::Done),
            Request::Status => self
                .status_report()
                .map(Response::Status)
                .map_err(|e| ApiError::internal(&e)),
        };
        result.unwrap_or_else(Response::Error)
    }

    async fn add(&mut self, req: AddRequest) -> Result<AddResult, ApiError> {
        let att = req.attachment.clone();
        if self.endpoints.contains_key(&att) {
            return Err(ApiError::new(
                ApiError::INTERFACE_EXISTS,
                format!("{} already has {}", att.container_id, att.ifname),
            ));
        }
        if self.endpoints.len() >= self.plan.max_pods as usize {
            return Err(ApiError::new(
                ApiError::TRY_AGAIN_LATER,
                format!(
                    "node {} has maxPods {} endpoints",
                    self.plan.node, self.plan.max_pods
                ),
            ));
        }
        let (subnet, requested_ip) = self.placement(&req)?;
        let owner = endpoints::owner(&att);
        let ip = self.allocate(&subnet, requested_ip, &owner)?;
        pause_for_tests_after_ipam(ip).await;
        let host_ifname = endpoints::host_ifname(&att);
        let spec = PodInterfaceSpec {
            netns: req.netns.clone(),
            ifname: att.ifname.clone(),
            host_ifname: host_ifname.clone(),
            ip,
            mtu: POD_MTU,
        };
        let iface = match netlink::create_pod_interface(&spec).await {
            Ok(iface) => iface,
            Err(err) => {
                let _ = self.ipam.release(ip, &owner);
                return Err(match err {
                    PodInterfaceError::AlreadyExists(msg) => {
                        ApiError::new(ApiError::INTERFACE_EXISTS, msg)
                    }
                    other => ApiError::internal(&anyhow::Error::from(other)),
                });
            }
        };
        let ep = Endpoint {
            attachment: att.clone(),
            netns: req.netns,
            ip,
            subnet,
            host_ifname: host_ifname.clone(),
            host_ifindex: iface.host_ifindex,
            host_mac: iface.host_mac,
            pod_mac: iface.pod_mac,
            container_group: req.container_group,
            k8s_namespace: req.k8s_namespace,
            k8s_pod: req.k8s_pod,
        };
        if let Err(err) = self.program(&ep) {
            let _ = netlink::delete_pod_interface(&host_ifname).await;
            let _ = self.forget(&ep);
            return Err(ApiError::internal(&err));
        }
        info!(%ip, container_id = %att.container_id, %host_ifname, "endpoint added");
        self.endpoints.insert(att, ep);
        Ok(AddResult {
            host_ifname,
            host_mac: iface.host_mac,
            pod_mac: iface.pod_mac,
            ip,
            gateway: POD_GATEWAY,
            mtu: POD_MTU,
        })
    }

    /// Which subnet (and address, for a container group that names one) a request gets.
    fn placement(&self, req: &AddRequest) -> Result<(String, Option<Ipv4Addr>), ApiError> {
        let invalid = |msg: String| ApiError::new(ApiError::INVALID_CONFIG, msg);
        if let Some(name) = &req.container_group {
            let group = self
                .plan
                .group(name)
                .ok_or_else(|| invalid(format!("container group {name:?} is not in the spec")))?;
            if self
                .endpoints
                .values()
                .any(|ep| ep.container_group.as_deref() == Some(name))
            {
                return Err(invalid(format!(
                    "container group {name:?} is already attached"
                )));
            }
            return Ok((group.subnet.clone(), group.ip));
        }
        let name = req.subnet.as_deref().ok_or_else(|| {
            invalid(
                "the network config names no `subnet` and CNI_ARGS no VNETD_CONTAINER_GROUP".into(),
            )
        })?;
        let subnet = self
            .plan
            .subnet(name)
            .ok_or_else(|| invalid(format!("subnet {name:?} is not in the spec")))?;
        if subnet.delegated {
            return Err(invalid(format!(
                "subnet {name:?} is delegated to container groups: pass VNETD_CONTAINER_GROUP"
            )));
        }
        Ok((subnet.name.clone(), None))
    }

    fn allocate(
        &self,
        subnet: &str,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr, ApiError> {
        let pool = &self
            .plan
            .subnet(subnet)
            .ok_or_else(|| {
                ApiError::new(ApiError::INVALID_CONFIG, format!("no subnet {subnet:?}"))
            })?
            .pool;
        let internal = |e: anyhow::Error| ApiError::internal(&e);
        match requested {
            Some(ip) if self.ipam.reserve(ip, owner).map_err(internal)? => Ok(ip),
            Some(ip) => Err(ApiError::new(
                ApiError::TRY_AGAIN_LATER,
                format!("address {ip} is held by another endpoint"),
            )),
            None => self
                .ipam
                .allocate(pool, owner)
                .map_err(internal)?
                .ok_or_else(|| {
                    ApiError::new(
                        ApiError::POOL_EXHAUSTED,
                        format!(
                            "the pool of subnet {subnet:?} on node {} is exhausted",
                            self.plan.node
                        ),
                    )
                }),
        }
    }

    /// Records the endpoint and programs the dataplane for it.
    fn program(&mut self, ep: &Endpoint) -> Result<()> {
        self.store.save(ep)?;
        self.write_endpoint(ep)?;
        self.dataplane.attach_pod(&ep.host_ifname)
    }

    fn write_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        let host_ifindex = ep.host_ifindex;
        let route_table = self.plan.subnet(&ep.subnet).map_or(0, |s| s.route_table);
        self.dataplane.put_endpoint(
            ep.ip,
            vnetd_common::Endpoint {
                host_ifindex,
                route_table,
                pod_mac: ep.pod_mac,
                host_mac: ep.host_mac,
            },
        )
    }

    /// Removes an endpoint's record, address and program pin (not its interface).
    fn forget(&mut self, ep: &Endpoint) -> Result<()> {
        self.dataplane.remove_endpoint(ep.ip)?;
        self.dataplane.detach_pod(&ep.host_ifname)?;
        self.ipam.release(ep.ip, &ep.owner())?;
        self.store.remove(&ep.attachment)
    }

    async fn del(&mut self, att: &Attachment) -> Result<(), ApiError> {
        let internal = |e: anyhow::Error| ApiError::internal(&e);
        // The interface name is derived, so DEL works even for an endpoint never recorded.
        netlink::delete_pod_interface(&endpoints::host_ifname(att))
            .await
            .map_err(internal)?;
        if let Some(ep) = self.endpoints.remove(att) {
            self.forget(&ep).map_err(internal)?;
            info!(ip = %ep.ip, container_id = %att.container_id, "endpoint deleted");
        }
        Ok(())
    }

    async fn check(&mut self, req: &CheckRequest) -> Result<(), ApiError> {
        let ep = self.endpoints.get(&req.attachment).ok_or_else(|| {
            ApiError::new(
                ApiError::INVALID_CONFIG,
                format!(
                    "no endpoint {}/{}",
                    req.attachment.container_id, req.attachment.ifname
                ),
            )
        })?;
        let spec = PodInterfaceSpec {
            netns: req.netns.clone(),
            ifname: ep.attachment.ifname.clone(),
            host_ifname: ep.host_ifname.clone(),
            ip: ep.ip,
            mtu: POD_MTU,
        };
        netlink::check_pod_interface(&spec)
            .await
            .map_err(|e| ApiError::internal(&e))
    }

    async fn gc(&mut self, valid: &[Attachment]) -> Result<(), ApiError> {
        let stale: Vec<Attachment> = self
            .endpoints
            .keys()
            .filter(|a| !valid.contains(a))
            .cloned()
            .collect();
        for att in stale {
            info!(container_id = %att.container_id, "GC: releasing a stale attachment");
            self.del(&att).await?;
        }
        Ok(())
    }

    fn ready(&self, subnet: Option<&str>) -> Result<(), ApiError> {
        let pools: Vec<_> = match subnet {
            Some(name) => self.plan.subnet(name).into_iter().collect(),
            None => self.plan.subnets.iter().collect(),
        };
        let free: u64 = pools
            .iter()
            .map(|s| self.ipam.free_in(&s.pool).unwrap_or(0))
            .sum();
        if free == 0 {
            return Err(ApiError::new(
                ApiError::NOT_READY,
                format!("no free address in the pool of node {}", self.plan.node),
            ));
        }
        Ok(())
    }

    pub fn status_report(&self) -> Result<StatusReport> {
        Ok(StatusReport {
            node: self.plan.node.clone(),
            uplink: self.plan.uplink.clone(),
            endpoints: self.endpoints.values().map(Endpoint::status).collect(),
            links: self.dataplane.links()?,
            traffic: self
                .dataplane
                .traffic()?
                .into_iter()
                .map(|(path, t)| (path.name().to_string(), t.packets, t.bytes))
                .collect(),
            drops: self
                .dataplane
                .drops()?
                .into_iter()
                .map(|(reason, n)| (reason.name().to_string(), n))
                .collect(),
            maps: self.dataplane.occupancy()?,
            reloads_ok: self.reloads.0,
            reloads_failed: self.reloads.1,
        })
    }
}

/// The `vnetd run` options that locate the agent's state.
#[derive(Clone, Debug)]
pub struct Paths {
    pub spec: PathBuf,
    pub api_socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
}

/// The node whose state `state_dir` holds (written when an agent starts on it).
pub fn recorded_node(state_dir: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(state_dir.join("node")) {
        Ok(name) => Ok(Some(name.trim().to_string())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).context("reading the state's node name"),
    }
}

pub fn ensure_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

/// Test-only pause point: with `VNETD_TEST_PAUSE_AFTER_IPAM=<file>` set, an ADD writes its
/// address to `<file>` once the IPAM record is durable and then waits while the file exists,
/// so an end-to-end test can kill the agent inside an ADD for certain (not after a guessed
/// sleep). Unset in production: one environment lookup per ADD.
async fn pause_for_tests_after_ipam(ip: Ipv4Addr) {
    let Some(marker) = std::env::var_os("VNETD_TEST_PAUSE_AFTER_IPAM") else {
        return;
    };
    let marker = PathBuf::from(marker);
    if let Err(e) = std::fs::write(&marker, ip.to_string()) {
        warn!(marker = %marker.display(), "test pause point: {e}");
        return;
    }
    warn!(%ip, marker = %marker.display(), "test pause point: ADD paused after the IPAM record");
    while marker.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
