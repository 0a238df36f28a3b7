//! Outbound NAT: the SNAT port range and the idle timeout.

use super::Checker;

/// Azure's limit (Azure networking limits page), as the contract quotes it.
pub const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 4..=120;
/// SNAT ports stay clear of the well-known ports the node itself may serve.
pub const MIN_SNAT_PORT: u16 = 1024;

impl<'s> Checker<'s> {
    pub(super) fn outbound_nat(&mut self) {
        let nat = &self.spec.outbound_nat;
        if nat.port_range.first < MIN_SNAT_PORT {
            self.report(
                "outboundNat.portRange",
                format!("{} reaches below {MIN_SNAT_PORT}: SNAT ports must lie in {MIN_SNAT_PORT}-65535", nat.port_range),
            );
        }
        if !IDLE_TIMEOUT_RANGE.contains(&nat.idle_timeout_in_minutes) {
            self.report(
                "outboundNat.idleTimeoutInMinutes",
                format!("{} is outside 4..=120", nat.idle_timeout_in_minutes),
            );
        }
    }
}
