//! CNI CHECK: is everything [`super::create_pod_interface`] made still there?

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::LinkAttribute,
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
        rule::RuleMessage,
    },
};

use super::{
    DEFAULT_ROUTE, POD_GATEWAY, PodInterfaceSpec, Rtnl, get_link, in_netns, is_up, is_veth,
    veth::{is_source_rule, validate_spec},
};

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

    let (ifname, ip, max_mtu) = (spec.ifname.clone(), spec.ip, spec.mtu);
    let routes = spec.routes.clone().unwrap_or_else(|| vec![DEFAULT_ROUTE]);
    let pod_problems = in_netns(&spec.netns, move |h| async move {
        check_pod_side(&h, &ifname, ip, max_mtu, host_ifindex, &routes).await
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
    max_mtu: u32,
    host_ifindex: Option<u32>,
    wanted_routes: &[Ipv4Net],
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
    let mtu = pod.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    if let Some(mtu) = mtu.filter(|m| *m > max_mtu) {
        problems.push(format!(
            "{ifname} has MTU {mtu}, more than the uplink's {max_mtu}"
        ));
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
    for dst in wanted_routes {
        if !routes.iter().any(|r| {
            is_main(r)
                && r.header.destination_prefix_length == dst.prefix_len()
                && route_dst(r).unwrap_or(Ipv4Addr::UNSPECIFIED) == dst.addr()
                && route_gateway(r) == Some(POD_GATEWAY)
                && route_oif(r) == Some(index)
        }) {
            let dst = if *dst == DEFAULT_ROUTE {
                "default".to_string()
            } else {
                dst.to_string()
            };
            problems.push(format!("no {dst} route via {POD_GATEWAY} dev {ifname}"));
        }
    }
    let rules: Vec<RuleMessage> = h
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .context("listing the pod's rules")?;
    if !rules.iter().any(|rule| is_source_rule(rule, ip)) {
        problems.push(format!("no rule from {ip} to {ifname}'s table"));
    }
    Ok(problems)
}

/// All IPv4 routes of all tables (the dump is not filtered by the kernel without strict
/// checking, hence [`is_main`]).
pub(super) async fn ipv4_routes(h: &Handle) -> anyhow::Result<Vec<RouteMessage>> {
    h.route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .context("listing routes")
}

pub(super) fn is_main(r: &RouteMessage) -> bool {
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

pub(super) fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}
