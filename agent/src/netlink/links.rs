//! The node's links: lookups, and the watch that tells the agent when links come and go (a
//! pod's veth deleted behind its back, the uplink re-created).

use std::{collections::BTreeMap, future::Future, time::Duration};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
};
use tracing::warn;

use super::{Rtnl, get_link, is_veth, link_mac, validate_ifname};

/// A link of the node's namespace, as the agent needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLink {
    pub name: String,
    pub ifindex: u32,
    /// All zeros for a link without an Ethernet address (tun, wireguard).
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The agent runs XDP in generic mode on a veth uplink: native XDP_TX on a veth only
    /// reaches a peer with NAPI (an XDP program or GRO), which a fabric's bridge port lacks.
    pub veth: bool,
}

impl NodeLink {
    fn from_message(link: &LinkMessage) -> Option<Self> {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })?;
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(0);
        Some(Self {
            name,
            ifindex: link.header.index,
            mac: link_mac(link),
            mtu,
            veth: is_veth(link),
        })
    }
}

/// The link `name` of the current namespace, `None` if there is none by that name.
pub async fn node_link(name: &str) -> anyhow::Result<Option<NodeLink>> {
    validate_ifname(name, "interface name")?;
    let node = Rtnl::connect()?;
    Ok(get_link(&node.handle, name)
        .await?
        .as_ref()
        .and_then(NodeLink::from_message))
}

/// Every link of the current namespace, by name (one dump).
pub async fn node_links() -> anyhow::Result<BTreeMap<String, NodeLink>> {
    let node = Rtnl::connect()?;
    let links: Vec<LinkMessage> = node
        .handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing the node's links")?;
    Ok(links
        .iter()
        .filter_map(NodeLink::from_message)
        .map(|l| (l.name.clone(), l))
        .collect())
}

/// The ifindex and MAC of a link in the current namespace, `None` if there is none by that
/// name. The MAC is all zeros for a link without an Ethernet address (tun, wireguard).
pub async fn link_by_name(name: &str) -> anyhow::Result<Option<(u32, [u8; 6])>> {
    Ok(node_link(name).await?.map(|l| (l.ifindex, l.mac)))
}

/// True if the link `name` in the current namespace is a veth (see [`NodeLink::veth`]).
pub async fn is_veth_link(name: &str) -> anyhow::Result<bool> {
    Ok(node_link(name).await?.is_some_and(|l| l.veth))
}

/// Events of one burst (an `ip link del` of a veth is a handful) are answered with one call.
const SETTLE: Duration = Duration::from_millis(100);
/// A multicast socket drops events when its buffer overflows (ENOBUFS): a periodic call
/// catches whatever was lost.
const RESYNC: Duration = Duration::from_secs(30);

/// Calls `on_change` whenever links of the current namespace appear, change or go (once per
/// burst of RTNLGRP_LINK events), once at the start (for what happened before the
/// subscription) and every [`RESYNC`]. `on_change` compares the links with what it expects
/// itself, so a lost event costs only time. Runs until the task is dropped; a closed socket
/// is reopened.
pub async fn watch<F, Fut>(mut on_change: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let (conn, _handle, mut events) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                .context("subscribing to link events (rtnetlink)")?;
        let conn = AbortOnDrop(tokio::spawn(conn));
        on_change().await;
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some((message, _)) if is_link_event(&message.payload) => {
                        tokio::time::sleep(SETTLE).await;
                        while events.try_recv().is_ok() {}
                        on_change().await;
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = resync.tick() => on_change().await,
            }
        }
        drop(conn);
        warn!("the link event socket closed: reopening it");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn is_link_event(payload: &NetlinkPayload<RouteNetlinkMessage>) -> bool {
    matches!(
        payload,
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_)
        )
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
