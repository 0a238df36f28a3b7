//! Pod-interface plumbing for CNI ADD/DEL/CHECK, over rtnetlink.
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

use std::{
    fs::File,
    future::Future,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        neighbour::NeighbourState,
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope},
    },
};

/// The pods' default gateway (Azure CNI transparent mode). Nothing owns this address: the pod
/// reaches it through a permanent neighbour entry pointing at the host veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

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
    /// MTU of both ends.
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

/// Verifies that what [`create_pod_interface`] made is all still there. The error lists every
/// missing piece, e.g. `pod interface check failed: eth0 in /run/netns/p is not up; no default
/// route via 169.254.1.1 dev eth0 in /run/netns/p`.
pub async fn check_pod_interface(spec: &PodInterfaceSpec) -> anyhow::Result<()> {
    validate_spec(spec)?;
    let mut problems = Vec::new();

    let node = Rtnl::connect()?;
    let host_ifindex = match get_link(&node.handle, &spec.host_ifname).await? {
        None => {
            problems.push(format!("host veth {} does not exist", spec.host_ifname));
            None
        }
        Some(host) => {
            if !is_veth(&host) {
                problems.push(format!("{} is not a veth", spec.host_ifname));
            }
            if !is_up(&host) {
                problems.push(format!("host veth {} is not up", spec.host_ifname));
            }
            let index = host.header.index;
            let routes = ipv4_routes(&node.handle).await?;
            if !routes.iter().any(|r| {
                is_main(r)
                    && r.header.destination_prefix_length == 32
                    && route_dst(r) == Some(spec.ip)
                    && route_oif(r) == Some(index)
            }) {
                problems.push(format!(
                    "no route {}/32 dev {} in the node namespace",
                    spec.ip, spec.host_ifname
                ));
            }
            Some(index)
        }
    };

    let (ifname, ip) = (spec.ifname.clone(), spec.ip);
    let pod_problems = in_netns(&spec.netns, move |h| async move {
        check_pod_side(&h, &ifname, ip, host_ifindex).await
    })
    .await
    .map_err(anyhow::Error::from)?;
    let netns = spec.netns.display();
    problems.extend(pod_problems.into_iter().map(|p| format!("{p} in {netns}")));

    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "pod interface check failed: {}",
            problems.join("; ")
        ))
    }
}

/// Runs inside the pod namespace; returns what is missing there.
async fn check_pod_side(
    h: &Handle,
    ifname: &str,
    ip: Ipv4Addr,
    host_ifindex: Option<u32>,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let Some(pod) = get_link(h, ifname).await? else {
        problems.push(format!("{ifname} does not exist"));
        return Ok(problems);
    };
    let index = pod.header.index;
    if !is_up(&pod) {
        problems.push(format!("{ifname} is not up"));
    }
    // A veth reports its peer's ifindex (in the peer's namespace) as IFLA_LINK.
    if let Some(host_ifindex) = host_ifindex {
        let peer = pod.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(i) => Some(*i),
            _ => None,
        });
        if !is_veth(&pod) || peer != Some(host_ifindex) {
            problems.push(format!("{ifname} is not the peer of the host veth"));
        }
    }

    let addrs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .context("listing addresses in the pod namespace")?;
    if !addrs.iter().any(|a| {
        a.header.prefix_len == 32
            && a.attributes
                .iter()
                .any(|at| matches!(at, AddressAttribute::Local(IpAddr::V4(x)) if *x == ip))
    }) {
        problems.push(format!("{ifname} does not have {ip}/32"));
    }

    let routes = ipv4_routes(h).await?;
    if !routes.iter().any(|r| {
        is_main(r)
            && r.header.destination_prefix_length == 0
            && route_gateway(r) == Some(POD_GATEWAY)
            && route_oif(r) == Some(index)
    }) {
        problems.push(format!("no default route via {POD_GATEWAY} dev {ifname}"));
    }
    Ok(problems)
}

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

/// An rtnetlink connection bound to the namespace of the thread that created it. The
/// connection task is aborted on drop, so each call leaves nothing running behind.
struct Rtnl {
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

/// Runs `f` with an rtnetlink handle inside the network namespace at `netns`.
///
/// `f` runs on a new OS thread that `setns`es into the namespace, builds a current-thread
/// tokio runtime and opens its socket there, so the socket belongs to the pod's namespace; the
/// thread ends with the call, taking its namespace membership with it. The calling task just
/// awaits a oneshot channel: it neither blocks its runtime nor changes namespace.
pub async fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T, PodInterfaceError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    in_netns_file(open_netns(netns)?, f).await
}

async fn in_netns_file<T, F, Fut>(ns: File, f: F) -> Result<T, PodInterfaceError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vnetd-netns".into())
        .spawn(move || {
            // The receiver is gone only if the caller was dropped; nobody wants the result.
            let _ = tx.send(run_in_netns(ns, f));
        })
        .context("starting a thread for the pod namespace")?;
    let result = rx
        .await
        .map_err(|_| anyhow!("the pod namespace thread panicked"))?;
    Ok(result?)
}

fn run_in_netns<T, F, Fut>(ns: File, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
        nix::errno::Errno::EINVAL => anyhow!("the netns file is not a network namespace"),
        e => anyhow!(e).context("entering the pod's network namespace"),
    })?;
    drop(ns);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the pod namespace thread's runtime")?;
    rt.block_on(async move {
        let rtnl = Rtnl::connect()?;
        f(rtnl.handle.clone()).await
    })
}

/// Opens without blocking and refuses what is not a pod's network namespace (a FIFO, the
/// agent's own): see [`crate::api::netns`].
fn open_netns(path: &Path) -> Result<File, PodInterfaceError> {
    match crate::api::netns::open(path) {
        Ok(f) => Ok(f),
        Err(crate::api::netns::NetnsError::NotFound(path)) => {
            Err(PodInterfaceError::NetnsNotFound(path))
        }
        Err(e) => Err(anyhow!(e).into()),
    }
}

fn clone_fd(f: &File) -> anyhow::Result<File> {
    f.try_clone()
        .context("duplicating the netns file descriptor")
}

fn already_in_pod(spec: &PodInterfaceSpec) -> PodInterfaceError {
    PodInterfaceError::AlreadyExists(format!("{} in {}", spec.ifname, spec.netns.display()))
}

/// Looks a link up by name; `None` when the kernel says there is no such device.
async fn get_link(h: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("looking up link {name}"))),
    }
}

/// All IPv4 routes of all tables (the dump is not filtered by the kernel without strict
/// checking, hence [`is_main`]).
async fn ipv4_routes(h: &Handle) -> anyhow::Result<Vec<RouteMessage>> {
    h.route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .context("listing routes")
}

fn is_main(r: &RouteMessage) -> bool {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

fn route_dst(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(x)) => Some(*x),
        _ => None,
    })
}

fn route_gateway(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(x)) => Some(*x),
        _ => None,
    })
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn link_mac(link: &LinkMessage) -> [u8; 6] {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or([0; 6])
}

fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

/// The errno of a netlink error reply (positive), if that is what `e` is.
fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// The kernel's rules for interface names (`dev_valid_name`), checked here so that a bad name
/// gets a clear message instead of a bare EINVAL or ERANGE from netlink.
fn validate_ifname(name: &str, what: &str) -> anyhow::Result<()> {
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

fn validate_spec(spec: &PodInterfaceSpec) -> anyhow::Result<()> {
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

/// Root-only tests against the kernel. Each test runs on a thread that first unshares a fresh
/// network namespace as its "node" (so nothing is ever created in the real root namespace; the
/// namespace disappears with the thread) and creates its pod namespaces with `ip netns add
/// vnltest<pid>-<tag>`, removed by a guard, also on panic.
#[cfg(test)]
mod kernel_tests {
    use std::process::Command;

    use nix::sched::unshare;
    use serde_json::Value;

    use super::*;

    /// Runs `body` on a thread in a fresh network namespace with only `lo`, on a current-thread
    /// runtime, so every "node" socket and child process is in that namespace.
    fn in_fresh_node_ns<F, Fut>(body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let result = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) (needs root)");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body());
        })
        .join();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// A pod namespace, deleted on drop.
    struct PodNs {
        name: String,
    }

    impl PodNs {
        fn new(tag: &str) -> Self {
            sweep_dead();
            let name = format!("vnltest{}-{tag}", std::process::id());
            run("ip", &["netns", "add", &name]);
            PodNs { name }
        }

        fn path(&self) -> PathBuf {
            PathBuf::from(format!("/run/netns/{}", self.name))
        }

        fn ip_json(&self, args: &[&str]) -> Value {
            let mut full = vec!["-n", &self.name, "-j"];
            full.extend_from_slice(args);
            serde_json::from_str(&run("ip", &full)).unwrap()
        }
    }

    impl Drop for PodNs {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    /// Removes pod namespaces of test processes that died without cleaning up (SIGKILL).
    fn sweep_dead() {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("vnltest")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }

    /// A process sitting in a pod namespace, killed on drop.
    struct NsHolder(std::process::Child);

    impl NsHolder {
        fn new(pod: &PodNs) -> Self {
            use std::os::unix::fs::MetadataExt;
            let child = Command::new("ip")
                .args(["netns", "exec", &pod.name, "sleep", "60"])
                .spawn()
                .unwrap();
            let holder = NsHolder(child);
            // `ip netns exec` enters the namespace and then execs sleep in the same process;
            // wait until it has, or the path would still name the node namespace.
            let want = std::fs::metadata(pod.path()).unwrap().ino();
            for _ in 0..200 {
                if std::fs::metadata(holder.netns_path()).map(|m| m.ino()).ok() == Some(want) {
                    return holder;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("the holder process never entered {}", pod.name);
        }

        fn netns_path(&self) -> PathBuf {
            PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
        }
    }

    impl Drop for NsHolder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn spec(pod: &PodNs, host: &str, ip: [u8; 4]) -> PodInterfaceSpec {
        PodInterfaceSpec {
            netns: pod.path(),
            ifname: "eth0".into(),
            host_ifname: host.into(),
            ip: ip.into(),
            mtu: 1400,
        }
    }

    fn mac_string(mac: [u8; 6]) -> String {
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Asserts the node namespace is the fresh one: the test must not be looking at (or
    /// changing) the machine's real links.
    async fn assert_fresh_node_ns() {
        let links = run("ip", &["-j", "link"]);
        let links: Value = serde_json::from_str(&links).unwrap();
        let names: Vec<_> = links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["lo"], "not in a fresh node namespace");
    }

    #[test]
    fn kernel_create_check_delete() {
        in_fresh_node_ns(|| async {
            assert_fresh_node_ns().await;
            let pod = PodNs::new("cycle");
            let spec = spec(&pod, "vhtest0", [10, 0, 1, 10]);

            let made = create_pod_interface(&spec).await.unwrap();
            assert_eq!(
                link_by_name("vhtest0").await.unwrap(),
                Some((made.host_ifindex, made.host_mac))
            );
            assert_ne!(made.pod_mac, [0; 6]);

            // Pod side: the address, up, MTU, routes, neighbour, lo up.
            let links = pod.ip_json(&["link", "show", "dev", "eth0"]);
            let eth0 = &links[0];
            assert_eq!(eth0["ifindex"].as_u64(), Some(made.pod_ifindex.into()));
            assert_eq!(eth0["address"].as_str(), Some(&*mac_string(made.pod_mac)));
            assert_eq!(eth0["mtu"].as_u64(), Some(1400));
            assert!(eth0["flags"].as_array().unwrap().contains(&"UP".into()));
            let lo = pod.ip_json(&["link", "show", "dev", "lo"]);
            assert!(lo[0]["flags"].as_array().unwrap().contains(&"UP".into()));
            let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
            let infos = addrs[0]["addr_info"].as_array().unwrap();
            assert_eq!(infos.len(), 1, "{addrs}");
            assert_eq!(infos[0]["local"].as_str(), Some("10.0.1.10"));
            assert_eq!(infos[0]["prefixlen"].as_u64(), Some(32));
            let routes = pod.ip_json(&["-4", "route", "show"]);
            let routes = routes.as_array().unwrap();
            assert!(
                routes.iter().any(|r| r["dst"] == "default"
                    && r["gateway"] == "169.254.1.1"
                    && r["dev"] == "eth0"),
                "{routes:?}"
            );
            assert!(
                routes.iter().any(|r| r["dst"] == "169.254.1.1"
                    && r["dev"] == "eth0"
                    && r["scope"] == "link"),
                "{routes:?}"
            );
            let neigh = pod.ip_json(&["neigh", "show", "dev", "eth0"]);
            let gw = &neigh[0];
            assert_eq!(gw["dst"].as_str(), Some("169.254.1.1"));
            assert_eq!(gw["lladdr"].as_str(), Some(&*mac_string(made.host_mac)));
            assert!(
                gw["state"]
                    .as_array()
                    .unwrap()
                    .contains(&"PERMANENT".into())
            );

            // Node side: host veth up with the MTU, and the /32 route to the pod.
            let host: Value =
                serde_json::from_str(&run("ip", &["-j", "link", "show", "vhtest0"])).unwrap();
            assert_eq!(host[0]["mtu"].as_u64(), Some(1400));
            assert!(host[0]["flags"].as_array().unwrap().contains(&"UP".into()));
            let node_routes: Value =
                serde_json::from_str(&run("ip", &["-j", "-4", "route", "show"])).unwrap();
            assert!(
                node_routes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["dst"] == "10.0.1.10"
                        && r["dev"] == "vhtest0"
                        && r["scope"] == "link"),
                "{node_routes}"
            );
            // The plumbing works: the node (given an address, as a real node has on its
            // uplink) reaches the pod through the /32 route, and the pod answers through its
            // default route and the gateway's neighbour entry.
            run("ip", &["link", "set", "lo", "up"]);
            run("ip", &["addr", "add", "10.0.0.4/32", "dev", "lo"]);
            run("ping", &["-c", "1", "-W", "2", "10.0.1.10"]);

            check_pod_interface(&spec).await.unwrap();

            // Same host name again: AlreadyExists, and the first pod is untouched.
            match create_pod_interface(&spec).await {
                Err(PodInterfaceError::AlreadyExists(what)) => assert!(what.contains("vhtest0")),
                other => panic!("expected AlreadyExists, got {other:?}"),
            }
            // A new host name but eth0 already in the pod: AlreadyExists, nothing left behind.
            let clash = PodInterfaceSpec {
                host_ifname: "vhtest1".into(),
                ..spec.clone()
            };
            match create_pod_interface(&clash).await {
                Err(PodInterfaceError::AlreadyExists(what)) => assert!(what.contains("eth0")),
                other => panic!("expected AlreadyExists, got {other:?}"),
            }
            assert_eq!(link_by_name("vhtest1").await.unwrap(), None);
            check_pod_interface(&spec).await.unwrap();

            delete_pod_interface("vhtest0").await.unwrap();
            assert_eq!(link_by_name("vhtest0").await.unwrap(), None);
            let pod_links = pod.ip_json(&["link"]);
            assert!(
                pod_links
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["ifname"] != "eth0"),
                "{pod_links}"
            );
            let node_routes = run("ip", &["-4", "route", "show"]);
            assert!(!node_routes.contains("10.0.1.10"), "{node_routes}");
            delete_pod_interface("vhtest0").await.unwrap();

            let err = check_pod_interface(&spec).await.unwrap_err().to_string();
            assert!(err.contains("host veth vhtest0 does not exist"), "{err}");
            assert!(err.contains("eth0 does not exist"), "{err}");

            // The name is free again: a re-ADD after DEL works.
            create_pod_interface(&spec).await.unwrap();
            check_pod_interface(&spec).await.unwrap();
            delete_pod_interface("vhtest0").await.unwrap();
        });
    }

    #[test]
    fn kernel_check_names_what_is_missing() {
        in_fresh_node_ns(|| async {
            let pod = PodNs::new("check");
            let spec = spec(&pod, "vhcheck", [10, 0, 2, 20]);
            create_pod_interface(&spec).await.unwrap();

            run("ip", &["-n", &pod.name, "route", "del", "default"]);
            let err = check_pod_interface(&spec).await.unwrap_err().to_string();
            assert!(
                err.contains("no default route via 169.254.1.1 dev eth0"),
                "{err}"
            );
            assert!(err.contains(&pod.name), "{err}");

            run("ip", &["-n", &pod.name, "addr", "flush", "dev", "eth0"]);
            run("ip", &["-n", &pod.name, "link", "set", "eth0", "down"]);
            run("ip", &["link", "set", "vhcheck", "down"]);
            let err = check_pod_interface(&spec).await.unwrap_err().to_string();
            for missing in [
                "host veth vhcheck is not up",
                "eth0 is not up",
                "eth0 does not have 10.0.2.20/32",
                "no default route",
            ] {
                assert!(err.contains(missing), "{missing}: {err}");
            }
            // The node route went with the host veth going down.
            assert!(err.contains("no route 10.0.2.20/32 dev vhcheck"), "{err}");

            let other = PodInterfaceSpec {
                ip: Ipv4Addr::new(10, 0, 2, 21),
                ..spec.clone()
            };
            run("ip", &["link", "set", "vhcheck", "up"]);
            let err = check_pod_interface(&other).await.unwrap_err().to_string();
            assert!(err.contains("no route 10.0.2.21/32"), "{err}");

            delete_pod_interface("vhcheck").await.unwrap();
        });
    }

    #[test]
    fn kernel_failure_midway_leaves_nothing() {
        in_fresh_node_ns(|| async {
            let pod = PodNs::new("midway");
            // A default route already in the pod makes ADD fail after the veth pair exists.
            let n = pod.name.as_str();
            // (A veth pair inside the pod: this kernel has no dummy driver.)
            let add = [
                "-n", n, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
            ];
            run("ip", &add);
            run("ip", &["-n", n, "link", "set", "d0", "up"]);
            run("ip", &["-n", n, "route", "add", "default", "dev", "d0"]);
            let spec = spec(&pod, "vhmidway", [10, 0, 1, 30]);
            let err = match create_pod_interface(&spec).await {
                Err(PodInterfaceError::Other(e)) => format!("{e:#}"),
                other => panic!("expected an error, got {other:?}"),
            };
            assert!(err.contains("default route via 169.254.1.1"), "{err}");
            assert_eq!(link_by_name("vhmidway").await.unwrap(), None);
            assert_fresh_node_ns().await;
            let pod_links = pod.ip_json(&["link"]);
            let names: Vec<_> = pod_links
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["ifname"].as_str().unwrap())
                .collect();
            assert!(!names.contains(&"eth0"), "{names:?}");
        });
    }

    #[test]
    fn kernel_missing_netns_creates_nothing() {
        in_fresh_node_ns(|| async {
            let spec = PodInterfaceSpec {
                netns: format!("/run/netns/vnltest{}-absent", std::process::id()).into(),
                ifname: "eth0".into(),
                host_ifname: "vhmissing".into(),
                ip: Ipv4Addr::new(10, 0, 1, 11),
                mtu: 1500,
            };
            match create_pod_interface(&spec).await {
                Err(PodInterfaceError::NetnsNotFound(p)) => assert_eq!(p, spec.netns),
                other => panic!("expected NetnsNotFound, got {other:?}"),
            }
            assert_eq!(link_by_name("vhmissing").await.unwrap(), None);
            assert_fresh_node_ns().await;
            // Not a namespace file at all: a clear error, nothing created.
            let not_ns = PodInterfaceSpec {
                netns: "/proc/self/status".into(),
                ..spec.clone()
            };
            let err = create_pod_interface(&not_ns).await.unwrap_err();
            assert!(err.to_string().contains("not a network namespace"), "{err}");
            assert_fresh_node_ns().await;
            assert!(check_pod_interface(&spec).await.is_err());
        });
    }

    #[test]
    fn kernel_concurrent_pods_and_link_lookup() {
        in_fresh_node_ns(|| async {
            let (a, b) = (PodNs::new("a"), PodNs::new("b"));
            // Pod b is addressed as a container runtime without named namespaces does it:
            // /proc/PID/ns/net of a process inside it.
            let holder = NsHolder::new(&b);
            let sa = spec(&a, "vha", [10, 0, 1, 20]);
            let sb = PodInterfaceSpec {
                netns: holder.netns_path(),
                ..spec(&b, "vhb", [10, 0, 1, 21])
            };
            let (ra, rb) = futures::join!(create_pod_interface(&sa), create_pod_interface(&sb));
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert_ne!(ra.host_ifindex, rb.host_ifindex);
            check_pod_interface(&sa).await.unwrap();
            check_pod_interface(&sb).await.unwrap();
            // Each pod has exactly its own address.
            for (pod, ip) in [(&a, "10.0.1.20"), (&b, "10.0.1.21")] {
                let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
                assert_eq!(addrs[0]["addr_info"][0]["local"].as_str(), Some(ip));
            }

            assert_eq!(link_by_name("lo").await.unwrap(), Some((1, [0; 6])));
            assert_eq!(link_by_name("nope0").await.unwrap(), None);
            assert!(link_by_name("much-too-long-name").await.is_err());
            // Deleting something that is not a veth is refused.
            assert!(delete_pod_interface("lo").await.is_err());

            delete_pod_interface("vha").await.unwrap();
            delete_pod_interface("vhb").await.unwrap();
            assert_fresh_node_ns().await;
        });
    }
}
