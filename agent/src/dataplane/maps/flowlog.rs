//! FLOW_EVENTS and FLOW_EVENTS_LOST: the flow-log events the programs write (see
//! [`crate::flowlog`]) and the records the ring had no room for.
use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use vnetd_common::{FlowEvent, maps};

use crate::dataplane::Dataplane;

/// A handle of its own on FLOW_EVENTS (another fd on the same ring): the agent's reader task
/// consumes it without holding the agent.
pub struct FlowEventRing {
    ring: RingBuf<MapData>,
}

impl FlowEventRing {
    /// The next event, if one is waiting. A record of another size (never written by these
    /// programs) is skipped.
    pub fn next_event(&mut self) -> Option<FlowEvent> {
        loop {
            let item = self.ring.next()?;
            if item.len() == size_of::<FlowEvent>() {
                // SAFETY: FlowEvent is plain data of exactly this size; read unaligned.
                return Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
    }
}

/// The ring's fd, for readiness (the programs wake it once enough is waiting).
impl std::os::fd::AsRawFd for FlowEventRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

impl Dataplane {
    /// A new fd on FLOW_EVENTS, for the flow-log reader.
    pub fn flow_event_ring(&self) -> Result<FlowEventRing> {
        let id = match self.map(maps::FLOW_EVENTS)? {
            Map::RingBuf(data) => data.info()?.id(),
            _ => bail!(
                "{} is not the ring buffer the ABI declares",
                maps::FLOW_EVENTS
            ),
        };
        let data = MapData::from_id(id)
            .with_context(|| format!("opening {} by id {id}", maps::FLOW_EVENTS))?;
        Ok(FlowEventRing {
            ring: RingBuf::try_from(Map::RingBuf(data))?,
        })
    }

    /// The flow-log records the programs could not write (the ring was full), summed over CPUs.
    pub fn flow_records_lost(&self) -> Result<u64> {
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(maps::FLOW_EVENTS_LOST)?)?;
        let per_cpu = lost
            .get(&0, 0)
            .with_context(|| format!("reading {}", maps::FLOW_EVENTS_LOST))?;
        Ok(per_cpu.iter().sum())
    }
}
