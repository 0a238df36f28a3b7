//! CNI ADD and DEL: the pod's veth pair with its addresses, routes and gateway neighbour.
//!
//! A pod may have several vnetd interfaces (Multus: `eth0` on one network, `net1` on another).
//! Each has its own /32, a link route for the gateway and a permanent neighbour entry for it;
//! the main table's routes through an interface are what its network configuration asks for
//! (`routes`), and without that, the default route if the pod has none yet (the first
//! interface takes it, the others add none). So that replies and traffic from an interface's
//! address leave by that interface (anything else is spoofing to the dataplane), each one also
//! has a table of its own (the gateway on link and a default route through it) chosen by a
//! rule `from <ip>/32`.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, IpVersion, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        link::{InfoData, InfoVeth, LinkAttribute},
        neighbour::NeighbourState,
        route::RouteScope,
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

use super::{
    DEFAULT_ROUTE, POD_GATEWAY, Rtnl, SOURCE_RULE_PRIORITY, SOURCE_TABLE_BASE,
    check::{ipv4_routes, is_main, route_oif},
    get_link, in_netns, is_veth, link_mac,
    netns::{clone_fd, in_netns_file, open_netns},
    nl_errno, source_table, validate_ifname,
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
    /// The destinations routed through this interface (via the gateway) in the pod's main
    /// table: the network configuration's `routes`. `None`: the default route if the pod has
    /// no default route yet, else nothing. For CHECK, the routes ADD made.
    pub routes: Option<Vec<Ipv4Net>>,
}

/// What ADD created: both ends' ifindex (each in its own namespace) and MAC, and the routes
/// through the interface in the pod's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_ifindex: u32,
    pub pod_mac: [u8; 6],
    pub routes: Vec<Ipv4Net>,
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

    let (ifname, ip, wanted) = (spec.ifname.clone(), spec.ip, spec.routes.clone());
    let (pod_ifindex, pod_mac, routes) = in_netns_file(ns, move |h| async move {
        configure_pod_side(&h, &ifname, ip, host_mac, wanted).await
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
        routes,
    })
}

/// Runs inside the pod namespace: lo and `ifname` up, address, the gateway on link, the main
/// table's routes (see the module documentation), the interface's own table and its rule, the
/// gateway neighbour. Returns the pod end's ifindex and MAC and the main table's routes.
async fn configure_pod_side(
    h: &Handle,
    ifname: &str,
    ip: Ipv4Addr,
    host_mac: [u8; 6],
    wanted: Option<Vec<Ipv4Net>>,
) -> anyhow::Result<(u32, [u8; 6], Vec<Ipv4Net>)> {
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

    let existing_default = main_default_route(h).await?;
    let routes = match wanted {
        Some(routes) => routes,
        None if existing_default.is_some() => Vec::new(),
        None => vec![DEFAULT_ROUTE],
    };
    let takes_default = routes.contains(&DEFAULT_ROUTE);
    if let (true, Some(other)) = (takes_default, existing_default) {
        let other = link_name(h, other).await;
        anyhow::bail!(
            "the pod already has a default route (dev {other}): {ifname}'s network \
             configuration must not route 0.0.0.0/0 as well (list its destinations in `routes`)"
        );
    }
    // The main table holds one route per prefix and metric: the interface with the default
    // route has the gateway at metric 0 (as a pod with one interface always had), every other
    // one at a metric of its own, its ifindex.
    let metric = if takes_default { 0 } else { index };
    let gateway = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(POD_GATEWAY, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .priority(metric)
        .build();
    h.route()
        .add(gateway)
        .execute()
        .await
        .with_context(|| format!("adding route {POD_GATEWAY} dev {ifname} scope link"))?;
    for dst in &routes {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .gateway(POD_GATEWAY)
            .output_interface(index)
            .pref_source(ip)
            .build();
        h.route().add(route).execute().await.with_context(|| {
            format!(
                "adding route {dst} via {POD_GATEWAY} dev {ifname} (another interface of the \
                 pod may route it already)"
            )
        })?;
    }

    let table = source_table(index);
    let own_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(POD_GATEWAY, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .table_id(table)
        .build();
    let own_default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(POD_GATEWAY)
        .output_interface(index)
        .table_id(table)
        .build();
    for route in [own_gateway, own_default] {
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding {ifname}'s routes to table {table}"))?;
    }
    // A rule left by an earlier owner of the address in this pod points elsewhere: replaced.
    delete_source_rules(h, ip).await?;
    h.rule()
        .add()
        .v4()
        .source_prefix(ip, 32)
        .table_id(table)
        .priority(SOURCE_RULE_PRIORITY)
        .action(RuleAction::ToTable)
        .execute()
        .await
        .with_context(|| format!("adding rule from {ip} lookup {table}"))?;

    h.neighbours()
        .add(index, IpAddr::V4(POD_GATEWAY))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding neighbour {POD_GATEWAY} dev {ifname}"))?;
    Ok((index, link_mac(&pod), routes))
}

/// The name of link `index`, or its number if it has none we can read.
async fn link_name(h: &Handle, index: u32) -> String {
    let link = h.link().get().match_index(index).execute().try_next().await;
    link.ok()
        .flatten()
        .and_then(|link| {
            link.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            })
        })
        .unwrap_or_else(|| format!("ifindex {index}"))
}

/// The interface of the pod's default route in the main table, if it has one.
async fn main_default_route(h: &Handle) -> anyhow::Result<Option<u32>> {
    Ok(ipv4_routes(h)
        .await?
        .iter()
        .find(|r| is_main(r) && r.header.destination_prefix_length == 0)
        .map(|r| route_oif(r).unwrap_or(0)))
}

/// The rules vnetd made for `ip` (`from ip/32` at [`SOURCE_RULE_PRIORITY`], into a table of
/// its range), whoever's interface they served.
async fn source_rules(h: &Handle, ip: Ipv4Addr) -> anyhow::Result<Vec<RuleMessage>> {
    let rules: Vec<RuleMessage> = h
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .context("listing the pod's rules")?;
    Ok(rules
        .into_iter()
        .filter(|rule| is_source_rule(rule, ip))
        .collect())
}

pub(super) fn is_source_rule(rule: &RuleMessage, ip: Ipv4Addr) -> bool {
    let attr = |f: fn(&RuleAttribute) -> Option<u32>| rule.attributes.iter().find_map(f);
    let source = rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(IpAddr::V4(src)) => Some(*src),
        _ => None,
    });
    let table = attr(|a| match a {
        RuleAttribute::Table(t) => Some(*t),
        _ => None,
    })
    .unwrap_or(u32::from(rule.header.table));
    let priority = attr(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    rule.header.src_len == 32
        && source == Some(ip)
        && priority == Some(SOURCE_RULE_PRIORITY)
        && table > SOURCE_TABLE_BASE
}

async fn delete_source_rules(h: &Handle, ip: Ipv4Addr) -> anyhow::Result<()> {
    for rule in source_rules(h, ip).await? {
        match h.rule().del(rule).execute().await {
            Ok(()) => {}
            Err(e) if nl_errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => return Err(anyhow!(e).context(format!("deleting the rule from {ip}"))),
        }
    }
    Ok(())
}

/// Deletes the rule that sends traffic from `ip` to its interface's table, in the pod
/// namespace `netns` (DEL of one interface of a pod that keeps its others). A namespace that is
/// gone took the rule along: success.
pub async fn delete_pod_source_rule(netns: &Path, ip: Ipv4Addr) -> anyhow::Result<()> {
    match in_netns(
        netns,
        move |h| async move { delete_source_rules(&h, ip).await },
    )
    .await
    {
        Ok(()) | Err(PodInterfaceError::NetnsNotFound(_)) => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!(
            "removing the rule from {ip} in {}",
            netns.display()
        ))),
    }
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
            routes: None,
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
