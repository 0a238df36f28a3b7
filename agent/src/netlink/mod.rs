//! Node and pod interface plumbing over rtnetlink: pod veths for CNI ADD/DEL ([`veth`]), their
//! check for CHECK ([`check`]), running work inside a pod's namespace ([`netns`]) and the node's
//! links: lookups and the watch for links that come and go ([`links`]).
//!
//! A pod gets a veth pair: the host side stays in the node's network namespace (the namespace
//! of the thread that calls in here: the agent runs under `nsenter --net`, so that is the lab
//! node or the real node), the peer lives in the pod's namespace as `CNI_IFNAME`. The layout is
//! Azure CNI's transparent mode: the pod has its address as a /32, a link-scope route to
//! 169.254.1.1, a default route via 169.254.1.1 and a permanent neighbour entry mapping
//! 169.254.1.1 to the host veth's MAC (so the pod never depends on anyone answering ARP for
//! the gateway); the node has `ip/32 dev <host veth>`.
//!
//! "The node namespace" is that of the calling runtime's threads (ADD runs as a spawned task,
//! so on a multi-threaded runtime any worker may open the node-side socket); the agent's whole
//! process is in the node namespace, so they agree.
//!
//! A netlink socket talks to the network namespace its creating thread was in when it was
//! created, for its whole life. Work inside a pod's namespace therefore runs on a dedicated,
//! short-lived OS thread that `setns`es into the namespace and opens its own socket there
//! ([`in_netns`]); the agent's runtime threads never change namespace. Nothing here reads
//! /sys/class/net: under `nsenter --net` sysfs still shows another namespace.

mod check;
pub mod links;
mod netns;
mod veth;

#[cfg(test)]
mod kernel_tests;

use std::net::Ipv4Addr;

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle,
    packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};

pub use check::check_pod_interface;
pub use links::{NodeLink, is_veth_link, link_by_name, node_link, node_links};
pub use netns::in_netns;
pub use veth::{
    PodInterface, PodInterfaceError, PodInterfaceSpec, create_pod_interface, delete_pod_interface,
    delete_pod_source_rule,
};

/// The pods' default gateway (Azure CNI transparent mode), as the dataplane defines it. Nothing
/// owns this address: the pod reaches it through a permanent neighbour entry pointing at the
/// host veth.
pub const POD_GATEWAY: Ipv4Addr = {
    let [a, b, c, d] = vnetd_common::POD_GATEWAY;
    Ipv4Addr::new(a, b, c, d)
};

/// 0.0.0.0/0, as a pod interface's `routes` name the default route.
pub const DEFAULT_ROUTE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

/// The priority of the rule `from <pod ip>/32 lookup <its interface's table>`: before the main
/// table (32766), after the local one (0).
pub const SOURCE_RULE_PRIORITY: u32 = 1000;
/// A pod interface's own table is this plus its ifindex in the pod (unique there while the
/// interface lives; the kernel does not reuse ifindexes soon).
pub const SOURCE_TABLE_BASE: u32 = 1000;

pub(super) fn source_table(pod_ifindex: u32) -> u32 {
    SOURCE_TABLE_BASE.saturating_add(pod_ifindex)
}

/// An rtnetlink connection bound to the namespace of the thread that created it. The
/// connection task is aborted on drop, so each call leaves nothing running behind.
pub(super) struct Rtnl {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Rtnl {
    fn connect() -> anyhow::Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        Ok(Self {
            handle,
            task: tokio::spawn(conn),
        })
    }
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Looks a link up by name; `None` when the kernel says there is no such device.
pub(super) async fn get_link(h: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("looking up link {name}"))),
    }
}

pub(super) fn link_mac(link: &LinkMessage) -> [u8; 6] {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or([0; 6])
}

pub(super) fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

pub(super) fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

/// The errno of a netlink error reply (positive), if that is what `e` is.
pub(super) fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// The kernel's rules for interface names (`dev_valid_name`), checked here so that a bad name
/// gets a clear message instead of a bare EINVAL or ERANGE from netlink.
pub(super) fn validate_ifname(name: &str, what: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > 15 {
        anyhow::bail!("{what} {name:?} must be 1 to 15 bytes long");
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        anyhow::bail!("{what} {name:?} is not a valid interface name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert!(validate_ifname("eth0", "x").is_ok());
        assert!(validate_ifname("vh0123456789abc", "x").is_ok());
        assert!(validate_ifname("vh0123456789abcd", "x").is_err());
        assert!(validate_ifname("", "x").is_err());
        assert!(validate_ifname("a/b", "x").is_err());
        assert!(validate_ifname("a b", "x").is_err());
        assert!(validate_ifname("a:1", "x").is_err());
        assert!(validate_ifname("..", "x").is_err());
    }
}
