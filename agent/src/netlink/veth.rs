//! CNI ADD and DEL: the pod's veth pair with its addresses, routes and gateway neighbour.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::PathBuf,
};

use anyhow::{Context, anyhow};
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        link::{InfoData, InfoVeth},
        neighbour::NeighbourState,
        route::RouteScope,
    },
};

use super::{
    POD_GATEWAY, Rtnl, get_link, is_veth, link_mac,
    netns::{clone_fd, in_netns_file, open_netns},
    nl_errno, validate_ifname,
};

/// What CNI ADD asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceSpec {
    /// CNI_NETNS: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
    /// CNI_IFNAME, e.g. `eth0`, created inside `netns`.
    pub ifname: String,
    /// The host-side veth, in the current (node) namespace; at most 15 bytes.
    pub host_ifname: String,
    /// The pod's address, configured as a /32.
    pub ip: Ipv4Addr,
    /// MTU of both ends; for CHECK, the most they may have (the uplink's).
    pub mtu: u32,
}

/// What ADD created: both ends' ifindex (each in its own namespace) and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodInterface {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_ifindex: u32,
    pub pod_mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum PodInterfaceError {
    /// An interface with the wanted name is already there; the string says which and where.
    /// Nothing was created or changed.
    #[error("interface {0} already exists")]
    AlreadyExists(String),
    /// The netns path does not exist (the container is gone, or CNI_NETNS is wrong).
    #[error("network namespace {} not found", .0.display())]
    NetnsNotFound(PathBuf),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Creates the pod's veth pair and addresses/routes (see the module documentation).
///
/// The peer is created directly inside the pod namespace under its final name (the veth's
/// `IFLA_NET_NS_FD` on the peer, as `ip link add H type veth peer name eth0 netns N`), so there
/// is no temporary name that could clash and no window where the pod end sits in the node
/// namespace. On any failure after the pair exists, the host end is deleted, which takes the
/// peer and everything configured on it along. The work runs as its own task, so a caller that
/// gives up half-way (a dropped future) still gets either a complete interface or none.
pub async fn create_pod_interface(
    spec: &PodInterfaceSpec,
) -> Result<PodInterface, PodInterfaceError> {
    validate_spec(spec)?;
    let spec = spec.clone();
    tokio::spawn(async move { create_inner(&spec).await })
        .await
        .map_err(|e| anyhow!("the pod interface task failed: {e}"))?
}

async fn create_inner(spec: &PodInterfaceSpec) -> Result<PodInterface, PodInterfaceError> {
    let ns = open_netns(&spec.netns)?;
    let node = Rtnl::connect()?;

    // Refuse name clashes before creating anything, so that an AlreadyExists leaves the
    // existing interfaces alone (the cleanup below must only ever remove what this call made).
    if get_link(&node.handle, &spec.host_ifname).await?.is_some() {
        return Err(PodInterfaceError::AlreadyExists(format!(
            "{} (host side, node namespace)",
            spec.host_ifname
        )));
    }
    let ifname = spec.ifname.clone();
    let pod_has_ifname = in_netns_file(clone_fd(&ns)?, move |h| async move {
        Ok(get_link(&h, &ifname).await?.is_some())
    })
    .await?;
    if pod_has_ifname {
        return Err(already_in_pod(spec));
    }

    let peer = LinkUnspec::new_with_name(&spec.ifname)
        .mtu(spec.mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(&spec.host_ifname, &spec.ifname)
        .mtu(spec.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    if let Err(e) = node.handle.link().add(veth).execute().await {
        // EEXIST here means someone took one of the names since the checks above.
        if nl_errno(&e) == Some(libc::EEXIST) {
            return Err(PodInterfaceError::AlreadyExists(format!(
                "{} (node namespace) or {} (in {})",
                spec.host_ifname,
                spec.ifname,
                spec.netns.display()
            )));
        }
        return Err(anyhow!(e)
            .context(format!(
                "creating veth {} with peer {} in {}",
                spec.host_ifname,
                spec.ifname,
                spec.netns.display()
            ))
            .into());
    }

    match configure(&node.handle, ns, spec).await {
        Ok(created) => Ok(created),
        Err(e) => {
            if let Err(cleanup) = delete_host_link(&node.handle, &spec.host_ifname).await {
                tracing::warn!(
                    host_ifname = %spec.host_ifname,
                    "removing a half-created pod interface failed: {cleanup:#}"
                );
            }
            Err(e.into())
        }
    }
}

/// Everything after the veth pair exists: any error here makes the caller delete the pair.
async fn configure(
    node: &Handle,
    ns: File,
    spec: &PodInterfaceSpec,
) -> anyhow::Result<PodInterface> {
    let host = get_link(node, &spec.host_ifname)
        .await?
        .with_context(|| format!("the new host veth {} vanished", spec.host_ifname))?;
    let host_ifindex = host.header.index;
    let host_mac = link_mac(&host);

    let (ifname, ip) = (spec.ifname.clone(), spec.ip);
    let (pod_ifindex, pod_mac) = in_netns_file(ns, move |h| async move {
        configure_pod_side(&h, &ifname, ip, host_mac).await
    })
    .await?;

    // Host side last: up it goes once the pod end is ready, then the route that makes the pod
    // reachable from the node. `replace` because a route for this /32 may be left from an
    // earlier owner of the address that did not go through its veth (a veth's own routes die
    // with it); the new pod is the address's owner now.
    node.link()
        .set(LinkUnspec::new_with_index(host_ifindex).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {} up", spec.host_ifname))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(spec.ip, 32)
        .output_interface(host_ifindex)
        .scope(RouteScope::Link)
        .build();
    node.route()
        .add(route)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding route {}/32 dev {}", spec.ip, spec.host_ifname))?;

    Ok(PodInterface {
        host_ifindex,
        host_mac,
        pod_ifindex,
        pod_mac,
    })
}

/// Runs inside the pod namespace: lo and `ifname` up, address, gateway route, default route,
/// gateway neighbour. Returns the pod end's ifindex and MAC.
async fn configure_pod_side(
    h: &Handle,
    ifname: &str,
    ip: Ipv4Addr,
    host_mac: [u8; 6],
) -> anyhow::Result<(u32, [u8; 6])> {
    let pod = get_link(h, ifname)
        .await?
        .with_context(|| format!("{ifname} did not appear in the pod namespace"))?;
    let index = pod.header.index;

    // A fresh namespace has lo down, and a pod without loopback breaks localhost between the
    // containers of a group.
    if let Some(lo) = get_link(h, "lo").await? {
        h.link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .context("setting lo up in the pod namespace")?;
    }
    // Up before the routes: the kernel refuses routes through a down device.
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {ifname} up"))?;
    h.address()
        .add(index, IpAddr::V4(ip), 32)
        .execute()
        .await
        .with_context(|| format!("adding {ip}/32 to {ifname}"))?;
    let gateway = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(POD_GATEWAY, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    h.route()
        .add(gateway)
        .execute()
        .await
        .with_context(|| format!("adding route {POD_GATEWAY} dev {ifname} scope link"))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(POD_GATEWAY)
        .output_interface(index)
        .build();
    h.route()
        .add(default)
        .execute()
        .await
        .with_context(|| format!("adding default route via {POD_GATEWAY} dev {ifname}"))?;
    h.neighbours()
        .add(index, IpAddr::V4(POD_GATEWAY))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding neighbour {POD_GATEWAY} dev {ifname}"))?;
    Ok((index, link_mac(&pod)))
}

/// Deletes the host-side veth, which deletes its peer in the pod namespace (with the pod's
/// addresses and routes) and the node's `ip/32` route through it (the kernel flushes a
/// device's routes when the device goes). Already gone is success: CNI DEL is idempotent.
pub async fn delete_pod_interface(host_ifname: &str) -> anyhow::Result<()> {
    validate_ifname(host_ifname, "host interface name")?;
    let node = Rtnl::connect()?;
    delete_host_link(&node.handle, host_ifname).await
}

async fn delete_host_link(h: &Handle, host_ifname: &str) -> anyhow::Result<()> {
    let Some(link) = get_link(h, host_ifname).await? else {
        return Ok(());
    };
    // A wrong name must not take down the node's uplink or anything else that is not a pod's.
    if !is_veth(&link) {
        anyhow::bail!("refusing to delete {host_ifname}: it is not a veth");
    }
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        // Went away between the lookup and the delete (the pod namespace was destroyed).
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!("deleting {host_ifname}"))),
    }
}

pub(super) fn already_in_pod(spec: &PodInterfaceSpec) -> PodInterfaceError {
    PodInterfaceError::AlreadyExists(format!("{} in {}", spec.ifname, spec.netns.display()))
}

pub(super) fn validate_spec(spec: &PodInterfaceSpec) -> anyhow::Result<()> {
    validate_ifname(&spec.ifname, "pod interface name")?;
    validate_ifname(&spec.host_ifname, "host interface name")?;
    // 68 is IPv4's minimum MTU; 65535 is the largest a veth takes.
    if !(68..=65535).contains(&spec.mtu) {
        anyhow::bail!("MTU {} is outside 68..=65535", spec.mtu);
    }
    if spec.ip.is_unspecified() || spec.ip.is_loopback() || spec.ip.is_multicast() {
        anyhow::bail!("{} cannot be a pod address", spec.ip);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_validation() {
        let ok = PodInterfaceSpec {
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            host_ifname: "vh1".into(),
            ip: Ipv4Addr::new(10, 0, 1, 10),
            mtu: 1500,
        };
        assert!(validate_spec(&ok).is_ok());
        assert!(
            validate_spec(&PodInterfaceSpec {
                mtu: 0,
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            validate_spec(&PodInterfaceSpec {
                ip: Ipv4Addr::UNSPECIFIED,
                ..ok.clone()
            })
            .is_err()
        );
    }
}
