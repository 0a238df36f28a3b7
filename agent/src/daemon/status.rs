//! What `vnetd status` reports: the agent's endpoints, links, counters and maps, read from the
//! dataplane and named from the spec in force.
use anyhow::Result;
use vnetd_common::DropReason;

use super::Agent;
use crate::{
    api::proto::{EndpointStatus, StatusReport},
    compile::nsg::NsgTables,
    dataplane::maps,
    endpoints::Endpoint,
    plan::NodePlan,
    spec::Direction,
};

impl Agent {
    pub fn status_report(&self) -> Result<StatusReport> {
        let conntrack = self.conntrack.report(self.dataplane.conntrack_stats()?);
        let mut maps = self.dataplane.occupancy()?;
        // The flow tables are too large to count every second: their counts are the
        // collector's.
        let entries: u64 = conntrack.entries.iter().map(|(_, n)| n).sum();
        maps.push((
            maps::NEW_FLOWS.to_lowercase(),
            entries.saturating_sub(conntrack.assured),
            conntrack.new_capacity,
        ));
        maps.push((
            maps::FLOWS.to_lowercase(),
            conntrack.assured,
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
