//! The reload's switch of route tables and NSG classifiers: the new generation is written
//! beside the old, the endpoints are pointed at it in one rewrite, and only then is the old one
//! let go, so a packet never sees a mix.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use tracing::{debug, warn};
use vnetd_common::NsgRuleKey;

use super::entries::{TableIdsByName, wanted_route_tables};
use crate::{
    dataplane::{
        Dataplane,
        maps::nsg,
        tables::{self, VersionedTables},
    },
    endpoints::Endpoint,
    plan::NodePlan,
};

/// The route tables and NSG classifiers, switched together: a reload points every endpoint at
/// its new route table and new classifiers in one rewrite of its entry.
pub(super) struct Tables<'a> {
    pub(super) routes: &'a mut VersionedTables,
    pub(super) nsgs: &'a mut VersionedTables,
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
    pub(super) fn switch(
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
        lap("old tables retired or deleted");
        // A classifier new in this generation gets its standby now, with counters: its first
        // change is then a few entries written, as every later one is.
        let mut counted: BTreeSet<u32> = self.nsgs.ids().ids().into_values().collect();
        match self.nsgs.prepare_standbys(dp, &nsgs_wanted) {
            Ok(standbys) => counted.extend(standbys),
            Err(err) => warn!("{err:#} (the classifiers' next change writes them whole)"),
        }
        lap("standbys prepared");
        if let Err(err) = dp.create_nsg_counters(&counted) {
            warn!(
                "creating the new rules' hit counters (the programs create them on a hit): {err:#}"
            );
        }
        lap("counters created");
        Ok(hits)
    }
}
