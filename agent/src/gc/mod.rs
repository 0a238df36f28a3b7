//! Conntrack garbage collection: the programs create flow entries, the agent expires them.
//! Every [`interval`] the collector walks both flow tables (new flows' and assured ones');
//! each Original entry is judged with its sibling (the Reply entry) by [`verdict`], a pure
//! function of the two entries, the clock and the [`Timeouts`]; an expired flow loses both
//! entries, an entry whose sibling is gone (the LRU of new flows evicted it) is deleted as an
//! orphan.
//!
//! LRU evictions are counted, not guessed: since the collector started, entries created minus
//! entries the collector expired minus entries alive now is what the LRU took (never
//! negative, never decreasing). Orphans are not subtracted: the flow they belonged to was
//! broken by an eviction, and both of its entries count as evicted.
//!
//! The same walk counts the SNAT ports masqueraded flows hold ([`snat_usage`]).
//!
//! The collector starts only once the agent has adopted or loaded the dataplane (it is
//! spawned after [`crate::daemon::Agent::start`]), so it never deletes from a half-restored
//! state.
//!
//! By step: [`expiry`] (how long a flow may stay idle, and the verdict on one), [`pass`] (a
//! walk of the tables), [`snat`] (the SNAT ports the walk saw held), [`totals`] (the totals
//! across passes that status and metrics report); here, the task that runs the passes.
mod expiry;
mod pass;
mod snat;
#[cfg(test)]
mod tests;
mod totals;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tracing::{debug, warn};
use vnetd_common::ConntrackStat;

pub use self::{expiry::*, pass::*, snat::*, totals::*};
use crate::{dataplane::maps::ConntrackMaps, flowlog::FlowLog};

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`, which the
/// dataplane stamps flows with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, alive for the call.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    assert_eq!(ret, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE) cannot fail");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The pass interval: `VNETD_GC_INTERVAL_MS` (for tests), else 5 s.
pub fn interval() -> Result<Duration> {
    match std::env::var("VNETD_GC_INTERVAL_MS") {
        Ok(ms) => {
            let ms: u64 = ms
                .parse()
                .with_context(|| format!("VNETD_GC_INTERVAL_MS={ms:?} is not a number of ms"))?;
            Ok(Duration::from_millis(ms.max(1)))
        }
        Err(_) => Ok(Duration::from_secs(5)),
    }
}

/// `VNETD_GC_TIMEOUT_MS` (for tests: every flow expires after this idle time, so the flow
/// log's E records come in seconds), else `None`.
pub fn timeout_override() -> Result<Option<Duration>> {
    match std::env::var("VNETD_GC_TIMEOUT_MS") {
        Ok(ms) => {
            let ms: u64 = ms
                .parse()
                .with_context(|| format!("VNETD_GC_TIMEOUT_MS={ms:?} is not a number of ms"))?;
            Ok(Some(Duration::from_millis(ms)))
        }
        Err(_) => Ok(None),
    }
}

/// Runs a pass every `every`, forever, handing the flow log what it saw. A failed pass is
/// logged and retried at the next tick.
pub async fn run(
    maps: ConntrackMaps,
    shared: Arc<Conntrack>,
    every: Duration,
    flow_log: Arc<FlowLog>,
) -> Result<()> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut maps = Some(maps);
    let timeout_override = timeout_override()?.map(Timeouts::uniform);
    loop {
        tick.tick().await;
        let mut owned = maps.take().context("the collector's maps")?;
        let shared_now = shared.clone();
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = (|| {
                let created = created(&owned)?;
                let timeouts = timeout_override.unwrap_or_else(|| shared_now.timeouts());
                let pass = gc_pass(&mut owned, monotonic_ns(), &timeouts)?;
                Ok::<_, anyhow::Error>((created, pass))
            })();
            (owned, result)
        })
        .await
        .context("the conntrack collector's thread")?;
        maps = Some(back);
        match result {
            Ok((created, pass)) => {
                if !pass.deleted.is_empty() {
                    debug!(deleted = ?pass.deleted, live = pass.live_total(), "conntrack GC pass");
                }
                shared.record(created, &pass);
                flow_log.samples(&pass.samples);
            }
            Err(err) => warn!("conntrack GC pass: {err:#}"),
        }
    }
}

fn created(maps: &ConntrackMaps) -> Result<u64> {
    Ok(maps
        .stats()?
        .into_iter()
        .find(|(stat, _)| *stat == ConntrackStat::EntriesCreated)
        .map_or(0, |(_, n)| n))
}
