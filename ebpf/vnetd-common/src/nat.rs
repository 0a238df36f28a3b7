//! Address translation settings: the destinations never masqueraded (`NO_MASQUERADE`) and the
//! Public groups' addresses hosted on this node (`PUBLIC_IPS`, `PUBLIC_PORTS`). The SNAT port
//! range is part of [`crate::NodeConfig`].

/// `NO_MASQUERADE` key: an LPM trie over destinations (the VNet's address space, connected
/// spaces, `nonMasqueradeCidrs`, 169.254.0.0/16). Value: 1.
pub type NoMasqueradeKey = [u8; 4];

/// A Public group's address hosted on this node: `PUBLIC_IPS[public ip]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublicAddress {
    /// The group's private address (an `ENDPOINTS` key), network byte order.
    pub private_ip: [u8; 4],
}

/// An exposed port of a public address: `PUBLIC_PORTS[key]` = 1. Inbound traffic to any other
/// (address, protocol, port) is dropped and counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PublicPortKey {
    pub public_ip: [u8; 4],
    /// Network byte order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::PublicAddress {}
    unsafe impl aya::Pod for super::PublicPortKey {}
}
