//! `vnetd run`: the agent. Owns the dataplane, the node's IPAM and its endpoints, and serves
//! the API. Requests are handled one at a time (a pod ADD is a few netlink calls and map
//! writes; serialising them keeps IPAM and the maps trivially consistent).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use tracing::{debug, info, warn};
use vnetd_common::{DropReason, Endpoint as AbiEndpoint, NodeConfig, NsgRuleKey};

use crate::{
    api::proto::{
        AddRequest, AddResult, Attachment, CheckRequest, CniError, EndpointStatus, Request,
        Response, StatusReport,
    },
    compile::{nat, nsg::NsgTables},
    dataplane::{
        Dataplane,
        maps::{
            self, ConntrackMaps, FlowEventRing, GroupPorts,
            nat::PublicTables,
            nsg::{self, EndpointNsgs},
            routes::{self, RouteEntries},
        },
        tables::{self, Slots, VersionedTables},
    },
    endpoints::{self, Endpoint, EndpointStore},
    flowlog::{FlowLog, FlowsReport},
    gc::Conntrack,
    host_stack,
    ipam::Ipam,
    netlink::{self, NodeLink, POD_GATEWAY, PodInterfaceError, PodInterfaceSpec},
    nsg_hits::{self, HitLedger},
    plan::NodePlan,
    spec::{Direction, PortRange},
};

pub struct Agent {
    plan: NodePlan,
    /// The dataplane ids of the route tables, stable by name across reloads and restarts.
    route_tables: VersionedTables,
    /// The dataplane ids of the NSG classifiers (one per NSG and direction), likewise.
    nsg_tables: VersionedTables,
    /// NSG rule hits by name, over the classifier generations of this agent's life.
    nsg_hits: HitLedger,
    dataplane: Dataplane,
    ipam: Ipam,
    store: EndpointStore,
    endpoints: BTreeMap<Attachment, Endpoint>,
    /// The ifindex the uplink programs are attached to; `None` while the uplink is gone.
    uplink_ifindex: Option<u32>,
    /// Spec reloads applied and refused.
    reloads: (u64, u64),
    /// The conntrack collector's totals and timeouts.
    conntrack: Arc<Conntrack>,
    /// Flow-log records, and the rule names they are written with.
    flow_log: Arc<FlowLog>,
}

impl Agent {
    /// Loads (or adopts) the dataplane, attaches the uplink, and restores the endpoints a
    /// previous agent recorded: reattached if their interface is still there, released if not.
    pub async fn start(plan: NodePlan, bpffs: &Path, state_dir: &Path) -> Result<Self> {
        let mut dataplane = Dataplane::load_pinned(bpffs)?;
        let uplink = uplink_link(&plan).await?;
        dataplane.set_node(node_config(&plan, &uplink))?;
        dataplane.attach_uplink(&plan.uplink, uplink.veth)?;
        info!(uplink = %plan.uplink, "uplink programs attached");
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
        let mut route_tables = VersionedTables::open(state_dir, ROUTE_TABLES)?;
        let mut nsg_tables = VersionedTables::open_with(state_dir, NSG_TABLES, Slots::Standby)?;
        let recorded: Vec<Endpoint> = store.load_all()?.into_values().collect();
        // Endpoints a previous agent wrote follow their tables, by name, to their ids now; the
        // restore below rewrites them from their records anyway.
        let by_id = |t: &VersionedTables| -> BTreeMap<u32, String> {
            let ids = t.ids();
            ids.standbys()
                .into_iter()
                .chain(ids.ids())
                .map(|(name, id)| (id, name))
                .collect()
        };
        let (route_names, nsg_names) = (by_id(&route_tables), by_id(&nsg_tables));
        let before = dataplane.endpoints()?;
        // A standby is written into at the next change: never one an endpoint points at.
        let serving: BTreeSet<u32> = before
            .values()
            .flat_map(|ep| {
                [
                    ep.nsg_in_subnet,
                    ep.nsg_in_group,
                    ep.nsg_out_subnet,
                    ep.nsg_out_group,
                ]
            })
            .collect();
        nsg_tables.drop_serving_standbys(&serving);
        // A classifier is written into while no endpoint points at it; a record that lags
        // behind must not make the agent rewrite one in use.
        nsg_tables.check_fingerprints(&dataplane.nsg_fingerprints()?);
        let mut tables = Tables {
            routes: &mut route_tables,
            nsgs: &mut nsg_tables,
        };
        let hits = tables
            .switch(&mut dataplane, &plan, &recorded, |dp, ids| {
                let mut moved = before.clone();
                for ep in moved.values_mut() {
                    follow(&mut ep.route_table, &route_names, ids.routes);
                    for id in [
                        &mut ep.nsg_in_subnet,
                        &mut ep.nsg_in_group,
                        &mut ep.nsg_out_subnet,
                        &mut ep.nsg_out_group,
                    ] {
                        follow(id, &nsg_names, ids.nsgs);
                    }
                }
                dp.sync_endpoints(&moved)
            })
            .context("installing the route tables and NSGs")?;
        let mut nsg_hits = HitLedger::default();
        nsg_hits.switched(live_rules(&plan, &recorded, &nsg_tables), &hits);
        info!(
            route_tables = route_tables.ids().ids().len(),
            nsg_classifiers = nsg_tables.ids().ids().len(),
            "route tables and NSGs installed"
        );
        let plan_idle_timeout = plan.compiled().idle_timeout;
        let mut agent = Self {
            plan,
            route_tables,
            nsg_tables,
            nsg_hits,
            dataplane,
            ipam,
            store,
            endpoints: BTreeMap::new(),
            uplink_ifindex: Some(uplink.ifindex),
            reloads: (0, 0),
            conntrack: Conntrack::new(plan_idle_timeout),
            flow_log: FlowLog::new(),
        };
        agent.flow_log.set_rules(agent.nsg_hits.live().clone());
        agent.restore().await?;
        agent.sync_nat()?;
        agent.check_host_stack();
        Ok(agent)
    }

    /// Applies a new plan (a changed spec). A new uplink gets the programs before the old one
    /// loses them. A changed route table is written whole under a new id, the endpoints are
    /// switched to it, then the old one is deleted: a packet sees the old or the new table,
    /// never a mix. On any error before the switch completes, what was written is deleted and
    /// the endpoints stay on the old tables: the running configuration really stays.
    pub async fn reload(&mut self, plan: NodePlan) -> Result<()> {
        self.check_subnets_in_use(&plan)?;
        if plan.uplink != self.plan.uplink || plan.primary_ip != self.plan.primary_ip {
            self.move_uplink(&plan).await?;
        } else if node_settings(&plan) != node_settings(&self.plan) {
            let link = uplink_link(&plan).await?;
            self.dataplane.set_node(node_config(&plan, &link))?;
        }
        let endpoints: Vec<Endpoint> = self.endpoints.values().cloned().collect();
        let before = self.dataplane.endpoints_written()?;
        let mut tables = Tables {
            routes: &mut self.route_tables,
            nsgs: &mut self.nsg_tables,
        };
        let hits = tables.switch(&mut self.dataplane, &plan, &endpoints, |dp, ids| {
            for ep in &endpoints {
                let entry = entry_for(&plan, ids, ep)?;
                if before.get(&ep.ip) != Some(&entry) {
                    dp.put_endpoint(ep.ip, entry)?;
                }
            }
            Ok(())
        })?;
        self.nsg_hits
            .switched(live_rules(&plan, &endpoints, &self.nsg_tables), &hits);
        self.flow_log.set_rules(self.nsg_hits.live().clone());
        self.plan = plan;
        self.conntrack
            .set_idle_timeout(self.plan.compiled().idle_timeout);
        self.sync_nat()?;
        self.check_host_stack();
        Ok(())
    }

    /// With a service range, warns when the node's stack does not forward on the uplink or the
    /// pods' veths (see [`host_stack`]): kube-proxy's Services would then fail silently.
    fn check_host_stack(&self) {
        let Some(services) = self.plan.compiled().service_cidr else {
            return;
        };
        let names = host_stack::forwarding_interfaces(
            &self.plan.uplink,
            self.endpoints.values().map(|ep| ep.host_ifname.as_str()),
        );
        let states: Vec<(&str, Option<bool>)> = names
            .into_iter()
            .map(|name| (name, host_stack::forwarding(name)))
            .collect();
        if let Some(warning) = host_stack::forwarding_warning(&states) {
            warn!(%services, "{warning}");
        }
    }

    /// What the conntrack collector needs: its own handles on the flow table and the shared
    /// totals. Only a started agent has them (the dataplane adopted or loaded whole), so the
    /// collector never runs on a half-restored state.
    pub fn conntrack_collector(&self) -> Result<(ConntrackMaps, Arc<Conntrack>)> {
        Ok((self.dataplane.conntrack_maps()?, self.conntrack.clone()))
    }

    /// The programs' log (aya-log), to forward; `None` once taken.
    pub fn take_kernel_log(&mut self) -> Option<crate::dataplane::KernelLog> {
        self.dataplane.take_kernel_log()
    }

    /// What the flow-log reader needs: its own fd on the ring, and the log.
    pub fn flow_log_reader(&self) -> Result<(FlowEventRing, Arc<FlowLog>)> {
        Ok((self.dataplane.flow_event_ring()?, self.flow_log.clone()))
    }

    /// The flow log (the collector writes its C and E records).
    pub fn flow_log(&self) -> Arc<FlowLog> {
        self.flow_log.clone()
    }

    /// Makes NO_MASQUERADE, PUBLIC_IPS, PUBLIC_PORTS and GROUP_PORTS follow the plan and the
    /// attached groups (a Public group is served by the node it is attached on).
    fn sync_nat(&mut self) -> Result<()> {
        let exposed = group_ports(&self.plan, self.endpoints.values());
        self.dataplane
            .sync_group_ports(&exposed)
            .context("writing the container groups' exposed ports")?;
        let compiled = self.plan.compiled();
        self.dataplane
            .sync_no_masquerade(&compiled.no_masquerade)
            .context("writing NO_MASQUERADE")?;
        let mappings = nat::public_mappings(&compiled.container_groups, |group| {
            self.endpoints
                .values()
                .find(|ep| ep.container_group.as_deref() == Some(group))
                .map(|ep| ep.ip)
        });
        self.dataplane
            .sync_public(&PublicTables::of(&mappings))
            .context("writing the public addresses")
    }

    /// Refuses a plan without a subnet that endpoints still use: as in Azure, where a subnet in
    /// use cannot be deleted (InUseSubnetCannotBeDeleted), its pods would be left without a
    /// route table.
    fn check_subnets_in_use(&self, plan: &NodePlan) -> Result<()> {
        let mut orphans: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ep in self.endpoints.values() {
            if plan.subnet(&ep.subnet).is_none() {
                orphans
                    .entry(&ep.subnet)
                    .or_default()
                    .push(ep.ip.to_string());
            }
        }
        if orphans.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = orphans
            .iter()
            .map(|(subnet, ips)| format!("subnet {subnet:?} is in use by {}", ips.join(", ")))
            .collect();
        anyhow::bail!(
            "{}: delete those endpoints (CNI DEL) before removing the subnet",
            list.join("; ")
        )
    }

    /// Points the dataplane at `plan`'s uplink and primary IP. The new uplink gets the programs
    /// before the old one loses them, so the node is never without; a new uplink that cannot
    /// be attached leaves the old one as it was.
    async fn move_uplink(&mut self, plan: &NodePlan) -> Result<()> {
        let link = uplink_link(plan).await?;
        if let Err(err) = self.dataplane.attach_uplink(&link.name, link.veth) {
            if plan.uplink != self.plan.uplink {
                let _ = self.dataplane.detach_uplink(&link.name);
            }
            return Err(err);
        }
        self.dataplane.set_node(node_config(plan, &link))?;
        self.uplink_ifindex = Some(link.ifindex);
        if plan.uplink != self.plan.uplink {
            self.dataplane.detach_uplink(&self.plan.uplink)?;
            info!(from = %self.plan.uplink, to = %plan.uplink, "uplink moved");
        }
        Ok(())
    }

    /// Brings the endpoints and the uplink in line with the node's links (the link watch calls
    /// this): an endpoint whose host veth is gone, or is another link by that name now, is
    /// removed (dataplane entry, program pin, address, record); an uplink that came back as a
    /// new link gets the programs again.
    pub async fn reconcile_links(&mut self) -> Result<()> {
        let links = netlink::node_links().await?;
        let vanished: Vec<Attachment> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| {
                links.get(&ep.host_ifname).map(|l| l.ifindex) != Some(ep.host_ifindex)
            })
            .map(|(att, _)| att.clone())
            .collect();
        for att in vanished {
            if let Some(ep) = self.endpoints.remove(&att) {
                warn!(ip = %ep.ip, host_ifname = %ep.host_ifname, "endpoint's interface vanished: releasing it");
                if let Err(err) = netlink::delete_pod_source_rule(&ep.netns, ep.ip).await {
                    warn!(ip = %ep.ip, "{err:#}");
                }
                self.forget(&ep)?;
                if ep.container_group.is_some() {
                    self.sync_nat()?;
                }
            }
        }
        match links.get(&self.plan.uplink) {
            Some(link) if self.uplink_ifindex != Some(link.ifindex) => {
                self.dataplane.attach_uplink(&link.name, link.veth)?;
                self.dataplane.set_node(node_config(&self.plan, link))?;
                self.uplink_ifindex = Some(link.ifindex);
                info!(uplink = %link.name, ifindex = link.ifindex, "uplink re-attached");
            }
            None if self.uplink_ifindex.is_some() => {
                warn!(uplink = %self.plan.uplink, "the uplink is gone: waiting for it to come back");
                self.uplink_ifindex = None;
            }
            _ => {}
        }
        Ok(())
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
        for (ip, owner) in self.ipam.allocations().clone() {
            if !owners.contains_key(&owner) {
                warn!(%ip, ?owner, "releasing an address from an unfinished ADD");
                self.ipam.release(ip, &owner)?;
            }
        }
        for ip in self.dataplane.endpoint_ips()? {
            if !self.endpoints.values().any(|ep| ep.ip == ip) {
                self.dataplane.remove_endpoint(ip)?;
            }
        }
        // Pod veths and program pins without a record: an ADD that died before recording, or
        // a record lost. (One agent per node namespace: every `vnd*` veth here is this one's.)
        let known: BTreeSet<String> = self
            .endpoints
            .values()
            .map(|ep| ep.host_ifname.clone())
            .collect();
        for link in netlink::node_links().await?.values() {
            if link.veth
                && link.name.starts_with(endpoints::HOST_IFNAME_PREFIX)
                && !known.contains(&link.name)
            {
                warn!(host_ifname = %link.name, "deleting a pod veth that has no endpoint record");
                netlink::delete_pod_interface(&link.name).await?;
            }
        }
        let pod_programs = Dataplane::POD_PROGRAMS.map(|(program, _)| program);
        for (program, ifname) in self.dataplane.links()? {
            if pod_programs.contains(&program.as_str()) && !known.contains(&ifname) {
                self.dataplane.detach_pod(&ifname)?;
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

    /// Records the endpoint and programs the dataplane for it: a group's exposed ports first,
    /// then its entry (with its NSGs), then the programs on its veth.
    fn program(&mut self, ep: &Endpoint) -> Result<()> {
        self.store.save(ep)?;
        self.dataplane
            .put_group_ports(&group_ports(&self.plan, [ep]))
            .context("writing the container group's exposed ports")?;
        self.write_endpoint(ep)?;
        self.dataplane.attach_pod(&ep.host_ifname)
    }

    fn write_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        let (routes, nsgs) = (self.route_tables.ids().ids(), self.nsg_tables.ids().ids());
        let ids = TableIdsByName {
            routes: &routes,
            nsgs: &nsgs,
        };
        let entry = entry_for(&self.plan, &ids, ep)?;
        self.dataplane.put_endpoint(ep.ip, entry)
    }

    /// Removes an endpoint's record, address and program pin (not its interface).
    fn forget(&mut self, ep: &Endpoint) -> Result<()> {
        self.dataplane.remove_endpoint(ep.ip)?;
        self.dataplane.detach_pod(&ep.host_ifname)?;
        self.ipam.release(ep.ip, &ep.owner())?;
        self.store.remove(&ep.attachment)
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

    pub fn status_report(&self) -> Result<StatusReport> {
        let conntrack = self.conntrack.report(self.dataplane.conntrack_stats()?);
        let mut maps = self.dataplane.occupancy()?;
        // FLOWS is too large to count every second: its count is the collector's.
        maps.push((
            maps::FLOWS.to_lowercase(),
            conntrack.entries.iter().map(|(_, n)| n).sum(),
            conntrack.capacity,
        ));
        let drops = self.dataplane.drops()?;
        let range = self.plan.compiled().snat_port_range;
        let snat = self.conntrack.snat_report(
            (range.first, range.last),
            self.plan.primary_ip,
            drops
                .iter()
                .find(|(reason, _)| *reason == DropReason::SnatPortsExhausted)
                .map_or(0, |(_, n)| *n),
        );
        Ok(StatusReport {
            node: self.plan.node.clone(),
            uplink: self.plan.uplink.clone(),
            endpoints: self
                .endpoints
                .values()
                .map(|ep| endpoint_status(&self.plan, ep))
                .collect(),
            links: self.dataplane.links()?,
            traffic: self
                .dataplane
                .traffic()?
                .into_iter()
                .map(|(path, t)| (path.name().to_string(), t.packets, t.bytes))
                .collect(),
            drops: drops
                .into_iter()
                .map(|(reason, n)| (reason.name().to_string(), n))
                .collect(),
            maps,
            reloads_ok: self.reloads.0,
            reloads_failed: self.reloads.1,
            conntrack: Box::new(conntrack),
            nsg_rule_hits: self.nsg_hits.totals(&self.dataplane.nsg_hits()?),
            flow_records_lost: self.dataplane.flow_records_lost()?,
            snat: Box::new(snat),
        })
    }
}

/// What `vnetd status` shows of `ep`: its record, with its subnet's NSG and a Public group's
/// address and name from the spec in force.
fn endpoint_status(plan: &NodePlan, ep: &Endpoint) -> EndpointStatus {
    let compiled = plan.compiled();
    let mut status = ep.status();
    status.nsg = compiled
        .subnets
        .iter()
        .find(|s| s.name == ep.subnet && s.nsg_id != 0)
        .and_then(|s| {
            let inbound = NsgTables::classifier_id(s.nsg_id, Direction::Inbound);
            compiled
                .nsgs
                .classifier(inbound)
                .map(|c| c.nsg_name.clone())
        });
    let group = ep
        .container_group
        .as_deref()
        .and_then(|name| compiled.container_groups.iter().find(|g| g.name == name));
    if let Some(group) = group {
        status.public_ip = group.public_ip;
        status.fqdn = match (&group.dns_name_label, &group.location) {
            (Some(label), Some(location)) => Some(format!("{label}.{location}.azurecontainer.io")),
            _ => None,
        };
    }
    status
}

/// The plan's uplink as it is now.
async fn uplink_link(plan: &NodePlan) -> Result<NodeLink> {
    netlink::node_link(&plan.uplink)
        .await?
        .with_context(|| format!("uplink {} does not exist in this namespace", plan.uplink))
}

fn node_config(plan: &NodePlan, uplink: &NodeLink) -> NodeConfig {
    let service = plan.compiled().service_cidr;
    NodeConfig {
        uplink_ifindex: uplink.ifindex,
        primary_ip: plan.primary_ip.octets(),
        uplink_mac: uplink.mac,
        snat_port_min: plan.compiled().snat_port_range.first,
        snat_port_max: plan.compiled().snat_port_range.last,
        _pad: [0; 2],
        service_net: service.map_or([0; 4], |net| net.network().octets()),
        service_mask: service.map_or([0; 4], |net| net.netmask().octets()),
    }
}

/// What `NODE` holds from the spec (besides the uplink and the primary address): a reload
/// that changes any of it rewrites the entry.
fn node_settings(plan: &NodePlan) -> (PortRange, Option<Ipv4Net>) {
    let compiled = plan.compiled();
    (compiled.snat_port_range, compiled.service_cidr)
}

/// The public address of `ep`'s group, if it is a Public group of `plan`.
fn group_public_ip(plan: &NodePlan, ep: &Endpoint) -> Option<Ipv4Addr> {
    let group = ep.container_group.as_deref()?;
    nat::public_ip_of(&plan.compiled().container_groups, group)
}

/// The kind of table under which route-table ids are recorded in `<state-dir>/tables.json`.
const ROUTE_TABLES: &str = "routes";

/// The route tables to install, by name: those of the node's subnets, and those of subnets
/// where endpoints still are (a reload may have taken the node's pool away from under them).
fn wanted_route_tables(plan: &NodePlan, endpoints: &[Endpoint]) -> BTreeMap<String, RouteEntries> {
    plan.route_tables()
        .chain(
            endpoints
                .iter()
                .filter_map(|ep| plan.route_table_of(&ep.subnet)),
        )
        .map(|t| (t.key(), routes::entries(t)))
        .collect()
}

/// The dataplane id of `subnet`'s route table (0, no table, for a subnet not in the spec:
/// its endpoints' routed traffic is dropped as `no_route`), and whether it routes the VNet
/// locally.
fn endpoint_routes(
    plan: &NodePlan,
    ids: &BTreeMap<String, u32>,
    subnet: &str,
) -> maps::EndpointRoutes {
    plan.route_table_of(subnet)
        .and_then(|t| {
            ids.get(&t.key()).map(|&table| maps::EndpointRoutes {
                table,
                vnet_direct: t.vnet_direct,
            })
        })
        .unwrap_or_default()
}

/// The kind of table under which NSG classifier ids are recorded in `<state-dir>/tables.json`.
const NSG_TABLES: &str = "nsgs";

/// The ids of the tables in use, by name, during a switch: the new generation's.
pub struct TableIdsByName<'a> {
    pub routes: &'a BTreeMap<String, u32>,
    pub nsgs: &'a BTreeMap<String, u32>,
}

/// The route tables and NSG classifiers, switched together: a reload points every endpoint at
/// its new route table and new classifiers in one rewrite of its entry.
struct Tables<'a> {
    routes: &'a mut VersionedTables,
    nsgs: &'a mut VersionedTables,
}

impl Tables<'_> {
    /// Writes the route tables and NSG classifiers `plan` needs (for its subnets and those of
    /// `endpoints`), new and changed ones under ids no endpoint points at (fresh ids for route
    /// tables; a classifier's standby id, which only needs the difference written);
    /// `repoint` points ENDPOINTS at them; the ids are recorded; only then are the old ones
    /// let go (deleted, or kept as the classifiers' standbys with their counters reset), so a
    /// packet sees the old tables or the new ones, never a mix. If anything up to the record
    /// fails, ENDPOINTS is put back as it was, the fresh ids are deleted and the error
    /// returned: the running configuration stays. Returns the NSG hit counters of the
    /// classifiers that stopped serving, as they were just before they were let go (what they
    /// counted is carried by name).
    fn switch(
        &mut self,
        dp: &mut Dataplane,
        plan: &NodePlan,
        endpoints: &[Endpoint],
        repoint: impl FnOnce(&mut Dataplane, &TableIdsByName) -> Result<()>,
    ) -> Result<BTreeMap<NsgRuleKey, u64>> {
        let t = std::time::Instant::now();
        let lap = |what: &str| {
            debug!(
                step = what,
                ms = t.elapsed().as_secs_f64() * 1e3,
                "table switch"
            )
        };
        let routes_wanted = wanted_route_tables(plan, endpoints);
        let nsgs_wanted = nsg::wanted(plan.classifiers(endpoints.iter().map(|e| &*e.subnet)));
        let before = dp.endpoints_written()?;
        lap("wanted");
        let routes = self
            .routes
            .stage(dp, &routes_wanted)
            .context("writing the route tables")?;
        lap("route tables staged");
        let nsgs = match self.nsgs.stage(dp, &nsgs_wanted) {
            Ok(staged) => staged,
            Err(err) => {
                self.routes.unstage(dp, routes);
                return Err(err.context("writing the NSG tables"));
            }
        };
        lap("NSG classifiers staged");
        let ids = TableIdsByName {
            routes: routes.ids(),
            nsgs: nsgs.ids(),
        };
        let applied = repoint(dp, &ids).and_then(|()| {
            lap("endpoints switched");
            let recorded = tables::record(&[
                (&*self.routes, routes.recording()),
                (&*self.nsgs, nsgs.recording()),
            ]);
            lap("recorded");
            recorded
        });
        if let Err(err) = applied {
            if let Err(undo) = dp.sync_endpoints(&before) {
                warn!("undoing a table switch: pointing the endpoints back failed: {undo:#}");
            }
            self.nsgs.unstage(dp, nsgs);
            self.routes.unstage(dp, routes);
            return Err(err);
        }
        let retiring = self.nsgs.retiring(&nsgs);
        let hits = dp.nsg_hits_of(&retiring).unwrap_or_else(|err| {
            warn!("reading NSG_HITS before retiring old classifiers: {err:#}");
            BTreeMap::new()
        });
        lap("hits read");
        self.routes.finish(dp, routes);
        self.nsgs.finish(dp, nsgs);
        let live: BTreeSet<u32> = self.nsgs.ids().ids().into_values().collect();
        if let Err(err) = dp.create_nsg_counters(&live) {
            warn!(
                "creating the new rules' hit counters (the programs create them on a hit): {err:#}"
            );
        }
        lap("old tables retired or deleted");
        Ok(hits)
    }
}

/// Moves a table id of a previous generation to the id its table (by name) has now.
fn follow(id: &mut u32, names: &BTreeMap<u32, String>, now: &BTreeMap<String, u32>) {
    if let Some(new) = names.get(id).and_then(|name| now.get(name)) {
        *id = *new;
    }
}

/// The ENDPOINTS entry of `ep` under `plan`, pointing at the tables `ids`.
fn entry_for(plan: &NodePlan, ids: &TableIdsByName, ep: &Endpoint) -> Result<AbiEndpoint> {
    Ok(maps::abi_endpoint(
        ep,
        endpoint_routes(plan, ids.routes, &ep.subnet),
        group_public_ip(plan, ep),
        endpoint_nsgs(plan, ids.nsgs, &ep.subnet)
            .with_context(|| format!("the NSGs of endpoint {}", ep.ip))?,
    ))
}

/// The kernel classifier ids of an endpoint in `subnet`: its subnet's NSG, both directions.
/// The group fields stay 0: ACI has no field for a container group's own NSG, so the spec has
/// none (the contract's "group NSG" would go there). A subnet not in the spec has none.
fn endpoint_nsgs(
    plan: &NodePlan,
    ids: &BTreeMap<String, u32>,
    subnet: &str,
) -> Result<EndpointNsgs> {
    let Some(subnet) = plan.subnet(subnet) else {
        return Ok(EndpointNsgs::default());
    };
    let nsgs = &plan.compiled().nsgs;
    Ok(EndpointNsgs {
        in_subnet: nsg::kernel_id(nsgs, ids, subnet.inbound_classifier)?,
        in_group: 0,
        out_subnet: nsg::kernel_id(nsgs, ids, subnet.outbound_classifier)?,
        out_group: 0,
    })
}

/// The rule names of the classifiers installed for `plan` and `endpoints`, by kernel id.
fn live_rules(
    plan: &NodePlan,
    endpoints: &[Endpoint],
    nsg_tables: &VersionedTables,
) -> nsg_hits::LiveRules {
    let classifiers = plan.classifiers(endpoints.iter().map(|e| &*e.subnet));
    nsg_hits::live_rules(classifiers, &nsg_tables.ids().ids())
}

/// GROUP_PORTS for the container groups among `endpoints`: each group's exposed ports at its
/// private address. A group the plan no longer declares exposes nothing.
fn group_ports<'a>(
    plan: &NodePlan,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> GroupPorts {
    let groups = &plan.compiled().container_groups;
    let mut ports = GroupPorts::new();
    for ep in endpoints {
        let Some(name) = ep.container_group.as_deref() else {
            continue;
        };
        if let Some(group) = groups.iter().find(|g| g.name == name) {
            ports.extend(
                nat::exposed_ports(group)
                    .into_iter()
                    .map(|(proto, port)| (ep.ip, proto, port)),
            );
        }
    }
    ports
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::proto::Attachment,
        spec::{PortRange, parse_str},
    };

    const CONTRACT: &str = include_str!("../../examples/contract.yaml");

    fn plan(port_range: PortRange) -> NodePlan {
        let mut spec = parse_str(CONTRACT).expect("the contract example parses");
        spec.outbound_nat.port_range = port_range;
        NodePlan::from_spec(&spec, "node-1").unwrap()
    }

    fn endpoint(ip: [u8; 4], group: Option<&str>) -> Endpoint {
        Endpoint {
            attachment: Attachment {
                network: "vnetd".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
            netns: "/run/netns/p".into(),
            ip: Ipv4Addr::from(ip),
            subnet: "apps".into(),
            host_ifname: "vnd0".into(),
            host_ifindex: 7,
            host_mac: [2, 0, 0, 0, 0, 1],
            pod_mac: [2, 0, 0, 0, 0, 2],
            container_group: group.map(Into::into),
            k8s_namespace: None,
            k8s_pod: None,
            routes: crate::api::proto::default_route_only(),
        }
    }

    #[test]
    fn nat_node_config_carries_the_spec_port_range() {
        let uplink = NodeLink {
            name: "eth0".into(),
            ifindex: 2,
            mac: [2, 0, 10, 0, 0, 4],
            mtu: 1500,
            veth: true,
        };
        let range = PortRange {
            first: 40000,
            last: 40015,
        };
        let config = node_config(&plan(range), &uplink);
        assert_eq!((config.snat_port_min, config.snat_port_max), (40000, 40015));
        assert_eq!(config.primary_ip, [10, 0, 0, 4]);
    }

    fn lab_uplink() -> NodeLink {
        NodeLink {
            name: "eth0".into(),
            ifindex: 2,
            mac: [2, 0, 10, 0, 0, 4],
            mtu: 1500,
            veth: true,
        }
    }

    fn plan_with_services(service_cidr: Option<&str>) -> NodePlan {
        let mut spec = parse_str(CONTRACT).expect("the contract example parses");
        spec.network_profile = service_cidr.map(|cidr| crate::spec::NetworkProfile {
            service_cidr: Some(cidr.parse().unwrap()),
            dns_service_ip: None,
        });
        NodePlan::from_spec(&spec, "node-1").unwrap()
    }

    #[test]
    fn node_config_carries_the_service_range() {
        let config = node_config(&plan_with_services(Some("10.96.0.0/12")), &lab_uplink());
        assert_eq!(config.service_net, [10, 96, 0, 0]);
        assert_eq!(config.service_mask, [255, 240, 0, 0]);
        assert!(config.has_services());
        assert!(config.is_service(&[10, 111, 255, 1]));
        assert!(!config.is_service(&[10, 112, 0, 1]));
        assert!(
            !config.is_service(&[10, 0, 2, 10]),
            "a pod is not a Service"
        );

        let none = node_config(&plan_with_services(None), &lab_uplink());
        assert_eq!((none.service_net, none.service_mask), ([0; 4], [0; 4]));
        assert!(!none.has_services());
        assert!(!none.is_service(&[10, 96, 0, 1]));
    }

    #[test]
    fn a_reload_that_changes_the_service_range_rewrites_the_node_entry() {
        let before = plan_with_services(None);
        let with = plan_with_services(Some("10.96.0.0/16"));
        let moved = plan_with_services(Some("10.97.0.0/16"));
        assert_ne!(node_settings(&before), node_settings(&with), "added");
        assert_ne!(node_settings(&with), node_settings(&moved), "changed");
        assert_ne!(node_settings(&with), node_settings(&before), "removed");
        assert_eq!(
            node_settings(&with),
            node_settings(&plan_with_services(Some("10.96.0.0/16")))
        );
    }

    #[test]
    fn nat_a_public_groups_endpoint_carries_its_public_address() {
        let plan = plan(crate::spec::OutboundNat::DEFAULT_PORT_RANGE);
        let web = endpoint([10, 0, 2, 10], Some("web"));
        let api = endpoint([10, 0, 1, 10], Some("api"));
        let pod = endpoint([10, 0, 2, 11], None);
        let none = EndpointNsgs::default();
        let routes = maps::EndpointRoutes {
            table: 3,
            vnet_direct: true,
        };
        assert_eq!(
            maps::abi_endpoint(&web, routes, group_public_ip(&plan, &web), none).public_ip,
            [203, 0, 113, 20]
        );
        assert_eq!(
            maps::abi_endpoint(&api, routes, group_public_ip(&plan, &api), none).public_ip,
            [0; 4],
            "a Private group has none"
        );
        assert_eq!(group_public_ip(&plan, &pod), None);
    }

    /// Kernel ids as a dataplane could have handed them out: NSG `k`'s inbound classifier
    /// `10k + 1`, its outbound `10k + 2`, by the name each is recorded under.
    fn kernel_ids(plan: &NodePlan) -> BTreeMap<String, u32> {
        plan.compiled()
            .nsgs
            .classifiers
            .iter()
            .map(|c| {
                let direction = u32::from(c.direction == crate::spec::Direction::Outbound);
                (nsg::table_name(c), 10 * c.nsg_id + 1 + direction)
            })
            .collect()
    }

    /// compile -> kernel ids per endpoint: an endpoint carries its subnet's NSG, both
    /// directions, under the ids the dataplane gave those classifiers; a subnet without an NSG
    /// carries none; a classifier the dataplane does not hold is an error, never "none".
    #[test]
    fn nsg_endpoints_carry_their_subnets_classifiers_by_kernel_id() {
        let plan = plan(crate::spec::OutboundNat::DEFAULT_PORT_RANGE);
        let installed: Vec<String> = plan
            .classifiers(std::iter::empty())
            .into_iter()
            .map(|c| format!("{} {}", c.nsg_name, c.direction))
            .collect();
        assert_eq!(
            installed,
            [
                "apps-nsg Inbound",
                "apps-nsg Outbound",
                "aci-nsg Inbound",
                "aci-nsg Outbound"
            ],
            "node-1 has pools in apps and aci: both subnets' NSGs, both directions"
        );
        let ids = kernel_ids(&plan);
        let apps = endpoint_nsgs(&plan, &ids, "apps").unwrap();
        assert_eq!(
            apps,
            EndpointNsgs {
                in_subnet: 11,
                in_group: 0,
                out_subnet: 12,
                out_group: 0
            }
        );
        let aci = endpoint_nsgs(&plan, &ids, "aci").unwrap();
        assert_eq!((aci.in_subnet, aci.out_subnet), (21, 22));
        assert_eq!(
            endpoint_nsgs(&plan, &ids, "nodes").unwrap(),
            EndpointNsgs::default(),
            "a subnet without an NSG"
        );

        let tables = TableIdsByName {
            routes: &BTreeMap::new(),
            nsgs: &ids,
        };
        let mut api = endpoint([10, 0, 1, 10], Some("api"));
        api.subnet = "aci".into();
        let api = entry_for(&plan, &tables, &api).unwrap();
        assert_eq!((api.nsg_in_subnet, api.nsg_out_subnet), (21, 22));
        assert_eq!((api.nsg_in_group, api.nsg_out_group), (0, 0));
        assert_eq!(api.flags, vnetd_common::ENDPOINT_EXPOSED_PORTS_ONLY);
        let pod = entry_for(&plan, &tables, &endpoint([10, 0, 2, 11], None)).unwrap();
        assert_eq!((pod.nsg_in_subnet, pod.nsg_out_subnet), (11, 12));
        assert_eq!(pod.flags, 0, "a pod is reachable on every port");

        let mut missing = ids.clone();
        missing.retain(|name, _| !name.starts_with("apps-nsg"));
        let err = entry_for(
            &plan,
            &tables_with(&missing),
            &endpoint([10, 0, 2, 11], None),
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("10.0.2.11") && err.contains("apps-nsg"),
            "{err}"
        );
    }

    fn tables_with(nsgs: &BTreeMap<String, u32>) -> TableIdsByName<'_> {
        static NO_ROUTES: BTreeMap<String, u32> = BTreeMap::new();
        TableIdsByName {
            routes: &NO_ROUTES,
            nsgs,
        }
    }

    /// GROUP_PORTS: each attached group's `ipAddress.ports` at its private address; pods and
    /// groups the spec does not declare (any more) expose nothing.
    #[test]
    fn group_ports_are_the_groups_exposed_ports_at_their_private_address() {
        let plan = plan(crate::spec::OutboundNat::DEFAULT_PORT_RANGE);
        let api = endpoint([10, 0, 1, 10], Some("api"));
        let web = endpoint([10, 0, 2, 10], Some("web"));
        let pod = endpoint([10, 0, 2, 11], None);
        let gone = endpoint([10, 0, 2, 12], Some("gone"));
        let ports = group_ports(&plan, [&api, &web, &pod, &gone]);
        assert_eq!(
            ports,
            GroupPorts::from([
                (Ipv4Addr::new(10, 0, 1, 10), nat::IPPROTO_TCP, 8080),
                (Ipv4Addr::new(10, 0, 2, 10), nat::IPPROTO_TCP, 80),
            ])
        );
    }
}
