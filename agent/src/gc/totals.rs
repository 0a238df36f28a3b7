//! The collector's totals across passes (deletions, live entries, evictions, SNAT ports) and
//! its settings, which the agent's status and metrics report.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use vnetd_common::ConntrackStat;

use super::{GcPass, GcReason, KINDS, SnatUsage, Timeouts, kind_name, snat::protocol_name};
use crate::api::proto::{ConntrackReport, SnatDestination, SnatReport};

/// The collector's totals and settings, shared by the collector task (writes) and the agent
/// (reads them into the status report; sets the timeouts on reload).
#[derive(Debug)]
pub struct Conntrack(Mutex<Shared>);

#[derive(Debug)]
struct Shared {
    timeouts: Timeouts,
    passes: u64,
    deleted: BTreeMap<GcReason, u64>,
    live: BTreeMap<&'static str, u64>,
    assured: u64,
    assured_by_endpoint: BTreeMap<Ipv4Addr, u64>,
    /// Entries created minus entries alive, when the first pass began: what happened before
    /// this agent (its predecessors' deletions and evictions) is not counted again.
    baseline: Option<i128>,
    evictions: u64,
    snat: SnatUsage,
}

impl Conntrack {
    pub fn new(idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Shared {
            timeouts: Timeouts::new(idle_timeout),
            passes: 0,
            deleted: BTreeMap::new(),
            live: BTreeMap::new(),
            assured: 0,
            assured_by_endpoint: BTreeMap::new(),
            baseline: None,
            evictions: 0,
            snat: SnatUsage::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_idle_timeout(&self, idle: Duration) {
        self.lock().timeouts = Timeouts::new(idle);
    }

    pub fn timeouts(&self) -> Timeouts {
        self.lock().timeouts
    }

    /// Adds a pass, given the programs' `entries_created` read just before it began.
    pub fn record(&self, created_before: u64, pass: &GcPass) {
        let mut s = self.lock();
        s.passes += 1;
        for (reason, n) in &pass.deleted {
            *s.deleted.entry(*reason).or_default() += n;
        }
        s.live = pass.live.clone();
        s.assured = pass.assured;
        s.assured_by_endpoint = pass.assured_by_endpoint.clone();
        s.snat = pass.snat.clone();
        let created = i128::from(created_before);
        let baseline = *s.baseline.get_or_insert(created - i128::from(pass.seen));
        let expired: u64 = s
            .deleted
            .iter()
            .filter(|(reason, _)| **reason != GcReason::Orphan)
            .map(|(_, n)| n)
            .sum();
        let evicted = created - baseline - i128::from(expired) - i128::from(pass.live_total());
        // Entries created during the walk are live but not in `created_before`: the estimate
        // may dip; the counter never goes back.
        s.evictions = s.evictions.max(u64::try_from(evicted).unwrap_or(0));
    }

    /// The report's conntrack part; `stats` are the programs' counters.
    pub fn report(&self, stats: Vec<(ConntrackStat, u64)>) -> ConntrackReport {
        let s = self.lock();
        ConntrackReport {
            entries: KINDS
                .iter()
                .map(|kind| kind_name(*kind as u8))
                .map(|kind| (kind.to_string(), s.live.get(kind).copied().unwrap_or(0)))
                .collect(),
            assured: s.assured,
            capacity: u64::from(vnetd_common::maps::FLOWS_MAX),
            new_capacity: u64::from(vnetd_common::maps::NEW_FLOWS_MAX),
            endpoint_share: vnetd_common::maps::ASSURED_FLOWS_PER_ENDPOINT,
            assured_by_endpoint: s.assured_by_endpoint.clone().into_iter().collect(),
            evictions: s.evictions,
            events: stats
                .into_iter()
                .map(|(stat, n)| (stat.name().to_string(), n))
                .collect(),
            gc_deleted: GcReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), s.deleted.get(r).copied().unwrap_or(0)))
                .collect(),
            gc_passes: s.passes,
        }
    }
}

impl Conntrack {
    /// The report's SNAT part: the ports held as of the last pass, against `range`
    /// (`outboundNat.portRange`, inclusive); `primary_ip` is listed even when it holds none;
    /// `failures` are the programs' `snat_ports_exhausted` drops.
    pub fn snat_report(
        &self,
        range: (u16, u16),
        primary_ip: Ipv4Addr,
        failures: u64,
    ) -> SnatReport {
        let s = self.lock();
        let (first, last) = range;
        let mut by_nat_ip = s.snat.by_nat_ip.clone();
        by_nat_ip.entry(primary_ip.octets()).or_default();
        SnatReport {
            port_range: range,
            ports_per_destination: if first == 0 || last < first {
                0
            } else {
                u64::from(last - first) + 1
            },
            ports_in_use: s.snat.total(),
            ports_in_use_by_nat_ip: by_nat_ip
                .into_iter()
                .map(|(ip, n)| (Ipv4Addr::from(ip), n))
                .collect(),
            busiest_destination: s.snat.busiest.map(|(d, n)| SnatDestination {
                nat_ip: d.nat_ip.into(),
                remote_ip: d.remote_ip.into(),
                remote_port: d.remote_port,
                protocol: protocol_name(d.proto),
                ports_in_use: n,
            }),
            allocation_failures: failures,
        }
    }
}
