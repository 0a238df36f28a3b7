//! NODE: this node's uplink and primary address (one entry).
use anyhow::{Context as _, Result};
use aya::maps::Array;
use vnetd_common::{NodeConfig, maps};

use crate::dataplane::Dataplane;

impl Dataplane {
    pub fn set_node(&mut self, config: NodeConfig) -> Result<()> {
        let mut map: Array<_, NodeConfig> = Array::try_from(self.map_mut(maps::NODE)?)?;
        map.set(0, config, 0).context("writing NODE")?;
        Ok(())
    }
}
