//! The node's links: lookups by name.

use super::{Rtnl, get_link, is_veth, link_mac, validate_ifname};

/// The ifindex and MAC of a link in the current namespace, `None` if there is none by that
/// name. The MAC is all zeros for a link without an Ethernet address (tun, wireguard).
pub async fn link_by_name(name: &str) -> anyhow::Result<Option<(u32, [u8; 6])>> {
    validate_ifname(name, "interface name")?;
    let node = Rtnl::connect()?;
    Ok(get_link(&node.handle, name)
        .await?
        .map(|link| (link.header.index, link_mac(&link))))
}

/// True if the link `name` in the current namespace is a veth. The agent runs XDP in generic
/// mode on a veth uplink: native XDP_TX on a veth only reaches a peer with NAPI (an XDP program
/// or GRO), which a fabric's bridge port does not have.
pub async fn is_veth_link(name: &str) -> anyhow::Result<bool> {
    validate_ifname(name, "interface name")?;
    let node = Rtnl::connect()?;
    Ok(get_link(&node.handle, name)
        .await?
        .is_some_and(|link| is_veth(&link)))
}
