//! This node's settings (the single entry of `NODE`) and the pods' gateway.

/// The pods' default gateway (Azure CNI's transparent mode), network byte order.
pub const POD_GATEWAY: [u8; 4] = [169, 254, 1, 1];

/// This node: the single entry of the `NODE` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub uplink_ifindex: u32,
    /// The node's primary address (SNAT source), network byte order.
    pub primary_ip: [u8; 4],
    pub uplink_mac: [u8; 6],
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::NodeConfig {}
}
