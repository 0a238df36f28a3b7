//! Route tables (`ROUTES`): longest prefix match on (table, destination).

/// `ROUTES` key: (route table, destination), longest prefix first. `prefix_len` of the LPM key
/// counts the 32 table bits too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteKey {
    pub table: [u8; 4],
    pub dst: [u8; 4],
}

impl RouteKey {
    pub const TABLE_BITS: u32 = 32;
}

/// Azure's next-hop types.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    VnetLocal = 1,
    Internet = 2,
    None = 3,
    VirtualAppliance = 4,
    VirtualNetworkGateway = 5,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// A [`NextHop`] value.
    pub next_hop: u32,
    /// For `VirtualAppliance`: the appliance's address, network byte order.
    pub next_hop_ip: [u8; 4],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::RouteKey {}
    unsafe impl aya::Pod for super::Route {}
}
