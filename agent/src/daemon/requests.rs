//! The API's requests, one at a time: the CNI commands (ADD, DEL, CHECK, GC, STATUS) and the
//! CLI's status and flows. A newcomer changing what a pod ADD or DEL does starts here.
use std::{net::Ipv4Addr, path::PathBuf};

use tracing::{info, warn};

use super::Agent;
use crate::{
    api::proto::{AddRequest, AddResult, Attachment, CheckRequest, CniError, Request, Response},
    endpoints::{self, Endpoint},
    flowlog::FlowsReport,
    netlink::{self, POD_GATEWAY, PodInterfaceError, PodInterfaceSpec},
};

impl Agent {
    pub async fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Add(req) => self.add(req).await.map(Response::Added),
            Request::Del(att) => self.del(&att).await.map(|()| Response::Done),
            Request::Check(req) => self.check(&req).await.map(|()| Response::Done),
            Request::Gc { network, valid } => {
                self.gc(&network, &valid).await.map(|()| Response::Done)
            }
            Request::Ready { subnet } => self.ready(subnet.as_deref()).map(|()| Response::Done),
            Request::Status => self
                .status_report()
                .map(Response::Status)
                .map_err(|e| CniError::internal(&e)),
            Request::Flows { after } => self
                .dataplane
                .flow_records_lost()
                .map(|lost| {
                    Response::Flows(FlowsReport {
                        records: self.flow_log.since(after),
                        lost,
                    })
                })
                .map_err(|e| CniError::internal(&e)),
        };
        result.unwrap_or_else(Response::Error)
    }

    async fn add(&mut self, req: AddRequest) -> Result<AddResult, CniError> {
        let att = req.attachment.clone();
        if self.recorded(&att).is_some() {
            return Err(CniError::new(
                CniError::INTERFACE_EXISTS,
                format!("{:?} already has {:?}", att.container_id, att.ifname),
            ));
        }
        if self.endpoints.len() >= self.plan.max_pods as usize {
            return Err(CniError::new(
                CniError::TRY_AGAIN_LATER,
                format!(
                    "node {} has maxPods {} endpoints",
                    self.plan.node, self.plan.max_pods
                ),
            ));
        }
        let (subnet, requested_ip) = self.placement(&req)?;
        let mtu = self.pod_mtu(req.mtu).await?;
        let owner = endpoints::owner(&att);
        let ip = self.allocate(&subnet, requested_ip, &owner)?;
        pause_for_tests_after_ipam(ip).await;
        let host_ifname = endpoints::host_ifname(&att);
        let spec = PodInterfaceSpec {
            netns: req.netns.clone(),
            ifname: att.ifname.clone(),
            host_ifname: host_ifname.clone(),
            ip,
            mtu,
            routes: req.routes.clone(),
        };
        let iface = match netlink::create_pod_interface(&spec).await {
            Ok(iface) => iface,
            Err(err) => {
                let _ = self.ipam.release(ip, &owner);
                return Err(match err {
                    PodInterfaceError::AlreadyExists(msg) => {
                        CniError::new(CniError::INTERFACE_EXISTS, msg)
                    }
                    other => CniError::internal(&anyhow::Error::from(other)),
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
            routes: iface.routes.clone(),
        };
        if let Err(err) = self.program(&ep) {
            let _ = netlink::delete_pod_interface(&host_ifname).await;
            let _ = self.forget(&ep);
            if ep.container_group.is_some() {
                let _ = self.sync_nat();
            }
            return Err(CniError::internal(&err));
        }
        info!(%ip, network = ?att.network, container_id = ?att.container_id, %host_ifname, "endpoint added");
        let group = ep.container_group.is_some();
        self.endpoints.insert(att, ep);
        if group && let Err(err) = self.sync_nat() {
            // The endpoint stays (DEL removes it); its public address is retried with the next
            // change.
            warn!("serving the group's public address: {err:#}");
        }
        Ok(AddResult {
            host_ifname,
            host_mac: iface.host_mac,
            pod_mac: iface.pod_mac,
            ip,
            gateway: POD_GATEWAY,
            mtu,
            routes: iface.routes,
        })
    }

    /// The pod's MTU: the network configuration's `mtu` if given, else the uplink's. Never more
    /// than the uplink's: a veth silently drops what exceeds its peer's MTU, so a pod sending
    /// larger packets than the uplink carries would see them vanish; a larger `mtu` is refused.
    async fn pod_mtu(&self, requested: Option<u32>) -> Result<u32, CniError> {
        let uplink = netlink::node_link(&self.plan.uplink)
            .await
            .map_err(|e| CniError::internal(&e))?
            .ok_or_else(|| {
                CniError::new(
                    CniError::TRY_AGAIN_LATER,
                    format!(
                        "uplink {} of node {} is gone",
                        self.plan.uplink, self.plan.node
                    ),
                )
            })?;
        match requested {
            Some(mtu) if mtu > uplink.mtu => Err(CniError::new(
                CniError::INVALID_CONFIG,
                format!(
                    "mtu {mtu} in the network configuration is larger than the MTU {} of uplink \
                     {} on node {}: pods cannot send packets larger than the uplink carries",
                    uplink.mtu, uplink.name, self.plan.node
                ),
            )),
            Some(mtu) => Ok(mtu),
            None => Ok(uplink.mtu),
        }
    }

    /// Which subnet (and address, for a container group that names one) a request gets.
    fn placement(&self, req: &AddRequest) -> Result<(String, Option<Ipv4Addr>), CniError> {
        let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
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
        &mut self,
        subnet: &str,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr, CniError> {
        let pool = &self
            .plan
            .subnet(subnet)
            .ok_or_else(|| {
                CniError::new(CniError::INVALID_CONFIG, format!("no subnet {subnet:?}"))
            })?
            .pool;
        let internal = |e: anyhow::Error| CniError::internal(&e);
        match requested {
            Some(ip) if self.ipam.reserve(ip, owner).map_err(internal)? => Ok(ip),
            Some(ip) => Err(CniError::new(
                CniError::TRY_AGAIN_LATER,
                format!("address {ip} is held by another endpoint"),
            )),
            None => self
                .ipam
                .allocate(pool, owner)
                .map_err(internal)?
                .ok_or_else(|| {
                    CniError::new(
                        CniError::POOL_EXHAUSTED,
                        format!(
                            "the pool of subnet {subnet:?} on node {} is exhausted",
                            self.plan.node
                        ),
                    )
                }),
        }
    }

    /// The recorded attachment that `requested` names (itself, or a legacy record of the same
    /// container and interface).
    fn recorded(&self, requested: &Attachment) -> Option<Attachment> {
        if self.endpoints.contains_key(requested) {
            return Some(requested.clone());
        }
        self.endpoints
            .keys()
            .find(|a| a.answers(requested))
            .cloned()
    }

    async fn del(&mut self, att: &Attachment) -> Result<(), CniError> {
        let internal = |e: anyhow::Error| CniError::internal(&e);
        let recorded = self.recorded(att);
        // The pod may keep other interfaces: the rule that sent this address's traffic here
        // goes with it (the interface takes its routes along, not the rule).
        if let Some(ep) = recorded.as_ref().and_then(|key| self.endpoints.get(key))
            && let Err(err) = netlink::delete_pod_source_rule(&ep.netns, ep.ip).await
        {
            warn!(ip = %ep.ip, "{err:#}");
        }
        // The interface name is derived, so DEL works even for an endpoint never recorded.
        let host_ifname = recorded
            .as_ref()
            .and_then(|key| self.endpoints.get(key))
            .map_or_else(|| endpoints::host_ifname(att), |ep| ep.host_ifname.clone());
        netlink::delete_pod_interface(&host_ifname)
            .await
            .map_err(internal)?;
        if let Some(ep) = recorded.and_then(|key| self.endpoints.remove(&key)) {
            self.forget(&ep).map_err(internal)?;
            if ep.container_group.is_some() {
                self.sync_nat().map_err(internal)?;
            }
            info!(ip = %ep.ip, network = ?att.network, container_id = ?att.container_id, "endpoint deleted");
        }
        Ok(())
    }

    async fn check(&mut self, req: &CheckRequest) -> Result<(), CniError> {
        let ep = self
            .recorded(&req.attachment)
            .and_then(|key| self.endpoints.get(&key))
            .ok_or_else(|| {
                CniError::new(
                    CniError::INVALID_CONFIG,
                    format!(
                        "no endpoint for container {:?} interface {:?} on network {:?}",
                        req.attachment.container_id, req.attachment.ifname, req.attachment.network
                    ),
                )
            })?;
        let spec = PodInterfaceSpec {
            netns: req.netns.clone(),
            ifname: ep.attachment.ifname.clone(),
            host_ifname: ep.host_ifname.clone(),
            ip: ep.ip,
            // The pod's MTU may be smaller (the conflist's); CHECK verifies it is not larger.
            mtu: self.pod_mtu(None).await?,
            routes: Some(ep.routes.clone()),
        };
        netlink::check_pod_interface(&spec)
            .await
            .map_err(|e| CniError::internal(&e))
    }

    async fn gc(&mut self, network: &str, valid: &[Attachment]) -> Result<(), CniError> {
        if network.is_empty() {
            // A plugin older than this agent: without the network, GC cannot tell its
            // attachments from another network's.
            return Err(CniError::new(
                CniError::INVALID_CONFIG,
                "GC needs the network's name: update vnetd-cni to the agent's version",
            ));
        }
        for att in endpoints::stale_for_gc(self.endpoints.keys(), network, valid) {
            info!(network = ?att.network, container_id = ?att.container_id, ifname = ?att.ifname, "GC: releasing a stale attachment");
            self.del(&att).await?;
        }
        Ok(())
    }

    fn ready(&self, subnet: Option<&str>) -> Result<(), CniError> {
        let pools: Vec<_> = match subnet {
            Some(name) => self.plan.subnet(name).into_iter().collect(),
            None => self.plan.subnets.iter().collect(),
        };
        let free: u64 = pools.iter().map(|s| self.ipam.free_in(&s.pool)).sum();
        if free == 0 {
            return Err(CniError::new(
                CniError::NOT_AVAILABLE,
                format!("no free address in the pool of node {}", self.plan.node),
            ));
        }
        Ok(())
    }
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
