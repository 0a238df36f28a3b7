//! `vnetd run`: the agent. Owns the dataplane, the node's IPAM and its endpoints, and serves
//! the API. Requests are handled one at a time (a pod ADD is a few netlink calls and map
//! writes; serialising them keeps IPAM and the maps trivially consistent).
//!
//! This file holds the agent's life: start, reload, restore, the link watch's reconcile, and
//! an endpoint's programming and forgetting (shared with ADD and DEL). The API's requests are in
//! `requests.rs`, the status report in `status.rs`, the pure plan -> kernel entry functions in
//! `entries.rs`, and the reload's table switch in `table_switch.rs`.
mod entries;
mod requests;
mod status;
mod table_switch;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use tracing::{info, warn};

pub use self::entries::TableIdsByName;
use self::{
    entries::{entry_for, follow, group_ports, live_rules, node_config, node_settings},
    table_switch::Tables,
};
use crate::{
    api::proto::Attachment,
    compile::nat,
    dataplane::{
        Dataplane,
        maps::{ConntrackMaps, FlowEventRing, nat::PublicTables},
        tables::{Slots, VersionedTables},
    },
    endpoints::{self, Endpoint, EndpointStore},
    flowlog::FlowLog,
    gc::Conntrack,
    host_stack,
    ipam::Ipam,
    netlink::{self, NodeLink},
    nsg_hits::HitLedger,
    plan::NodePlan,
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
    /// never a mix. The NAT tables (exposed ports, NO_MASQUERADE, public addresses) are written
    /// before the switch, as they are what may not fit. On any error, what was written is
    /// undone: the NAT tables follow the running plan again, the endpoints stay on the old
    /// tables, and the uplink and node settings go back: the running configuration really
    /// stays.
    pub async fn reload(&mut self, plan: NodePlan) -> Result<()> {
        self.check_in_use(&plan)?;
        let moves = plan.uplink != self.plan.uplink || plan.primary_ip != self.plan.primary_ip;
        let resets = !moves && node_settings(&plan) != node_settings(&self.plan);
        if moves {
            self.move_uplink(&self.plan.uplink.clone(), &plan).await?;
        } else if resets {
            self.write_node_settings(&plan).await?;
        }
        if let Err(err) = self.switch_to(&plan) {
            let running = self.plan.clone();
            let undone = if moves {
                self.move_uplink(&plan.uplink, &running).await
            } else if resets {
                self.write_node_settings(&running).await
            } else {
                Ok(())
            };
            if let Err(undo) = undone {
                warn!("undoing a refused reload: the node's settings stay the new ones: {undo:#}");
            }
            return Err(err);
        }
        self.plan = plan;
        self.conntrack
            .set_idle_timeout(self.plan.compiled().idle_timeout);
        self.check_host_stack();
        Ok(())
    }

    /// The NAT tables and the endpoints' tables made to follow `plan`; on an error the NAT
    /// tables follow the running plan again (the table switch undoes itself).
    fn switch_to(&mut self, plan: &NodePlan) -> Result<()> {
        let endpoints: Vec<Endpoint> = self.endpoints.values().cloned().collect();
        let before = self.dataplane.endpoints_written()?;
        if let Err(err) = sync_nat(&mut self.dataplane, plan, &self.endpoints) {
            self.undo_nat();
            return Err(err);
        }
        let mut tables = Tables {
            routes: &mut self.route_tables,
            nsgs: &mut self.nsg_tables,
        };
        let switched = tables.switch(&mut self.dataplane, plan, &endpoints, |dp, ids| {
            let mut changed = Vec::new();
            for ep in &endpoints {
                let entry = entry_for(plan, ids, ep)?;
                if before.get(&ep.ip) != Some(&entry) {
                    changed.push((ep.ip, entry));
                }
            }
            dp.put_endpoints(&changed)
        });
        let hits = match switched {
            Ok(hits) => hits,
            Err(err) => {
                self.undo_nat();
                return Err(err);
            }
        };
        self.nsg_hits
            .switched(live_rules(plan, &endpoints, &self.nsg_tables), &hits);
        self.flow_log.set_rules(self.nsg_hits.live().clone());
        Ok(())
    }

    /// After a refused reload: the NAT tables as the running plan has them.
    fn undo_nat(&mut self) {
        if let Err(undo) = self.sync_nat() {
            warn!("undoing a refused reload's NAT tables failed: {undo:#}");
        }
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

    /// [`sync_nat`] for the running plan.
    fn sync_nat(&mut self) -> Result<()> {
        sync_nat(&mut self.dataplane, &self.plan, &self.endpoints)
    }

    /// Refuses a plan without a subnet that endpoints still use: as in Azure, where a subnet in
    /// use cannot be deleted (InUseSubnetCannotBeDeleted), its pods would be left without a
    /// route table. So too a plan without an attached container group, or with one placed
    /// elsewhere (another subnet, another address): its endpoint would stay attached to nothing
    /// (flagged as a group's, with no exposed port).
    fn check_in_use(&self, plan: &NodePlan) -> Result<()> {
        let mut subnets: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut groups = Vec::new();
        for ep in self.endpoints.values() {
            if plan.subnet(&ep.subnet).is_none() {
                subnets
                    .entry(&ep.subnet)
                    .or_default()
                    .push(ep.ip.to_string());
            }
            let Some(name) = ep.container_group.as_deref() else {
                continue;
            };
            let placed = plan.group(name).is_some_and(|group| {
                group.subnet == ep.subnet && group.ip.is_none_or(|ip| ip == ep.ip)
            });
            if !placed {
                groups.push(format!(
                    "container group {name:?} is attached as {} in subnet {:?}",
                    ep.ip, ep.subnet
                ));
            }
        }
        let mut problems = Vec::new();
        if !subnets.is_empty() {
            let list: Vec<String> = subnets
                .iter()
                .map(|(subnet, ips)| format!("subnet {subnet:?} is in use by {}", ips.join(", ")))
                .collect();
            problems.push(format!(
                "{}: delete those endpoints (CNI DEL) before removing the subnet",
                list.join("; ")
            ));
        }
        if !groups.is_empty() {
            problems.push(format!(
                "{}: delete its endpoint (CNI DEL) before removing the group or changing its \
                 subnet or address",
                groups.join("; ")
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!("{}", problems.join("; "))
    }

    /// Writes `plan`'s node settings (the uplink unchanged).
    async fn write_node_settings(&mut self, plan: &NodePlan) -> Result<()> {
        let link = uplink_link(plan).await?;
        self.dataplane.set_node(node_config(plan, &link))
    }

    /// Points the dataplane at `plan`'s uplink and primary IP, from the uplink `from`. The new
    /// uplink gets the programs before the old one loses them, so the node is never without; a
    /// new uplink that cannot be attached leaves the old one as it was.
    async fn move_uplink(&mut self, from: &str, plan: &NodePlan) -> Result<()> {
        let link = uplink_link(plan).await?;
        if let Err(err) = self.dataplane.attach_uplink(&link.name, link.veth) {
            if plan.uplink != from {
                let _ = self.dataplane.detach_uplink(&link.name);
            }
            return Err(err);
        }
        self.dataplane.set_node(node_config(plan, &link))?;
        self.uplink_ifindex = Some(link.ifindex);
        if plan.uplink != from {
            self.dataplane.detach_uplink(from)?;
            info!(%from, to = %plan.uplink, "uplink moved");
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
}

/// The plan's uplink as it is now.
async fn uplink_link(plan: &NodePlan) -> Result<NodeLink> {
    netlink::node_link(&plan.uplink)
        .await?
        .with_context(|| format!("uplink {} does not exist in this namespace", plan.uplink))
}

/// The kind of table under which route-table ids are recorded in `<state-dir>/tables.json`.
const ROUTE_TABLES: &str = "routes";

/// The kind of table under which NSG classifier ids are recorded in `<state-dir>/tables.json`.
const NSG_TABLES: &str = "nsgs";

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

/// Makes NO_MASQUERADE, PUBLIC_IPS, PUBLIC_PORTS and GROUP_PORTS follow `plan` and the attached
/// groups (a Public group is served by the node it is attached on).
fn sync_nat(
    dataplane: &mut Dataplane,
    plan: &NodePlan,
    endpoints: &BTreeMap<Attachment, Endpoint>,
) -> Result<()> {
    let exposed = group_ports(plan, endpoints.values());
    dataplane
        .sync_group_ports(&exposed)
        .context("writing the container groups' exposed ports")?;
    let compiled = plan.compiled();
    dataplane
        .sync_no_masquerade(&compiled.no_masquerade)
        .context("writing NO_MASQUERADE")?;
    let mappings = nat::public_mappings(&compiled.container_groups, |group| {
        endpoints
            .values()
            .find(|ep| ep.container_group.as_deref() == Some(group))
            .map(|ep| ep.ip)
    });
    dataplane
        .sync_public(&PublicTables::of(&mappings))
        .context("writing the public addresses")
}
