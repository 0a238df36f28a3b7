//! The classifier ids endpoints carry, and the switch of a spec's classifiers to their new
//! generation-numbered ids.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use super::entries::{ClassifierEntries, entries, table_name};
use crate::{
    compile::NsgTables,
    dataplane::{Dataplane, tables::VersionedTables},
};

/// The kernel classifier ids an endpoint's entry carries (0 = no NSG there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointNsgs {
    pub in_subnet: u32,
    pub in_group: u32,
    pub out_subnet: u32,
    pub out_group: u32,
}

/// The kernel id of compiled classifier `compiled` of `nsgs` (0 for 0), given the kernel ids
/// by table name. A classifier that is not installed is an error, never 0: 0 would let
/// everything pass.
pub fn kernel_id(nsgs: &NsgTables, ids: &BTreeMap<String, u32>, compiled: u32) -> Result<u32> {
    if compiled == 0 {
        return Ok(0);
    }
    let classifier = nsgs
        .classifier(compiled)
        .with_context(|| format!("no compiled NSG classifier {compiled}"))?;
    let name = table_name(classifier);
    ids.get(&name).copied().with_context(|| {
        format!(
            "the {} rules of NSG {} are not installed in the dataplane",
            classifier.direction, classifier.nsg_name
        )
    })
}

/// Makes the NSG maps hold the classifiers of `nsgs`, each under its generation-numbered id
/// (unchanged classifiers keep theirs), then calls `repoint` with the kernel id of every
/// compiled classifier id (the compiled ids are positions in this spec, the kernel's are
/// stable by NSG name and direction); the ids that stopped serving are retired or deleted
/// after it. On failure `undo` runs, the fresh ids are deleted and the classifiers in use are
/// unchanged (see [`VersionedTables::switch`]).
pub fn switch_nsgs(
    versions: &mut VersionedTables,
    dp: &mut Dataplane,
    nsgs: &NsgTables,
    repoint: impl FnOnce(&mut Dataplane, &BTreeMap<u32, u32>) -> Result<()>,
    undo: impl FnOnce(&mut Dataplane) -> Result<()>,
) -> Result<()> {
    let wanted: BTreeMap<String, ClassifierEntries> = nsgs
        .classifiers
        .iter()
        .map(|c| (table_name(c), entries(c)))
        .collect();
    let compiled_ids: Vec<(u32, String)> = nsgs
        .classifiers
        .iter()
        .map(|c| (c.id, table_name(c)))
        .collect();
    versions.switch(
        dp,
        &wanted,
        |dp, ids| {
            let kernel_ids = compiled_ids
                .iter()
                .map(|(compiled, name)| (*compiled, ids[name]))
                .collect();
            repoint(dp, &kernel_ids)
        },
        undo,
    )?;
    let live = versions.ids().ids().into_values().collect();
    if let Err(err) = dp.create_nsg_counters(&live) {
        tracing::warn!(
            "creating the new rules' hit counters (the programs create them on a hit): {err:#}"
        );
    }
    Ok(())
}
