//! The NSG classifier maps (`NSG_SRC_ADDR`, `NSG_DST_ADDR`, `NSG_SRC_PORT`, `NSG_DST_PORT`,
//! `NSG_PROTO`, `NSG_PORTLESS`, `NSG_RULES`, and the counters `NSG_HITS`), in the order a
//! change flows through them:
//!
//! - `entries`: a compiled [`Classifier`](crate::compile::Classifier) becomes one
//!   [`ClassifierEntries`] (pure, no kernel).
//! - `present`: what the maps hold, by classifier id (read from the kernel once, then kept
//!   in the dataplane's mirror).
//! - `write`: a classifier id made to hold exactly a [`ClassifierEntries`] (only the
//!   difference written), or emptied; the [`TableStore`](crate::dataplane::tables::TableStore)
//!   the generation switch drives.
//! - `hits`: the rules' per-CPU hit counters.
//! - `switch`: the endpoints' classifier ids, and the switch of a spec's classifiers.
//!
//! Which id a classifier is written under is the business of [`crate::dataplane::tables`]: the
//! agent keeps two ids per classifier
//! ([`Slots::Standby`](crate::dataplane::tables::Slots::Standby)); a changed classifier is
//! written into the one no endpoint points at (only its difference to what that id holds), the
//! endpoints are switched to it, and the other id waits for the next change, its hit counters
//! reset. A packet is classified by the old rules or the new ones, never a mix. Entries are
//! written in batches (`maps::batch`).
mod entries;
mod hits;
mod present;
mod switch;
mod write;

pub use entries::{ClassifierEntries, LpmEntries, entries, fingerprint, table_name, wanted};
pub use present::Present;
pub use switch::{EndpointNsgs, kernel_id, switch_nsgs};
