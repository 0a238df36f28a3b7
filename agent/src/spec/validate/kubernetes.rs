//! The Kubernetes cluster's service ranges (`networkProfile`): where ClusterIPs live, so that
//! the dataplane can hand pods' traffic to them to the node's stack (kube-proxy).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Checker;
use super::addresses::{overlaps, reserved_range};
use crate::spec::model::IpAddressType;

/// kube-apiserver refuses a service range of more than 20 host bits (`--service-cluster-ip-range`
/// "is too large"); AKS asks for /12 or smaller too.
pub const MIN_SERVICE_PREFIX_LEN: u8 = 12;
/// A /30 is the smallest range with an address beside the API server's Service.
pub const MAX_SERVICE_PREFIX_LEN: u8 = 30;

impl<'s> Checker<'s> {
    pub(super) fn network_profile(&mut self) {
        let Some(profile) = &self.spec.network_profile else {
            return;
        };
        let cidr_path = "networkProfile.serviceCidr";
        if let Some(cidr) = profile.service_cidr {
            self.service_cidr(cidr_path, cidr);
        }
        let Some(dns) = profile.dns_service_ip else {
            return;
        };
        let dns_path = "networkProfile.dnsServiceIP";
        let Some(cidr) = profile.service_cidr else {
            self.report(
                dns_path,
                format!(
                    "{dns} needs {cidr_path}: the cluster DNS address is a ClusterIP of that range"
                ),
            );
            return;
        };
        if let Some(problem) = dns_service_ip_problem(cidr, dns) {
            self.report(dns_path, problem);
        }
    }

    fn service_cidr(&mut self, path: &str, cidr: Ipv4Net) {
        if cidr.prefix_len() < MIN_SERVICE_PREFIX_LEN {
            self.report(
                path,
                format!(
                    "{cidr} is too large: Kubernetes allows at most a /{MIN_SERVICE_PREFIX_LEN} for IPv4 Services"
                ),
            );
        }
        if cidr.prefix_len() > MAX_SERVICE_PREFIX_LEN {
            self.report(
                path,
                format!(
                    "{cidr} is too small: a service range is a /{MAX_SERVICE_PREFIX_LEN} or larger (its first address is the API server's Service)"
                ),
            );
        }
        if let Some((reserved, what)) = reserved_range(&cidr) {
            self.report(
                path,
                format!("{cidr} overlaps {reserved} ({what}), which cannot hold Services"),
            );
        }
        // The service range is the node's own (kube-proxy's): an address of the VNet inside it
        // would be taken from the network and given to the node's stack.
        let vnet = &self.spec.virtual_network;
        let spaces = vnet
            .address_space
            .iter()
            .enumerate()
            .map(|(i, net)| (format!("virtualNetwork.addressSpace[{i}]"), *net))
            .chain(
                vnet.connected_address_spaces
                    .iter()
                    .enumerate()
                    .map(|(i, net)| (format!("virtualNetwork.connectedAddressSpaces[{i}]"), *net)),
            );
        let mut clashes: Vec<(String, Ipv4Net)> =
            spaces.filter(|(_, net)| overlaps(&cidr, net)).collect();
        // Subnets lie in the address space (checked apart): named only when no space is.
        if clashes.is_empty() {
            clashes = vnet
                .subnets
                .iter()
                .enumerate()
                .filter(|(_, s)| overlaps(&cidr, &s.address_prefix))
                .map(|(i, s)| {
                    (
                        format!("virtualNetwork.subnets[{i}] ({})", s.name),
                        s.address_prefix,
                    )
                })
                .collect();
        }
        for (other_path, other) in clashes {
            self.report(
                path,
                format!(
                    "{cidr} overlaps {other_path} ({other}): the service range must lie outside the virtual network"
                ),
            );
        }
        for (i, group) in self.spec.container_groups.iter().enumerate() {
            let Some(address) = &group.properties.ip_address else {
                continue;
            };
            if let (IpAddressType::Public, Some(ip)) = (address.kind, address.ip)
                && cidr.contains(&ip)
            {
                self.report(
                    format!("containerGroups[{i}].properties.ipAddress.ip"),
                    format!("{ip} is inside {path} ({cidr}): pods would reach the node's Services there, not the group"),
                );
            }
        }
    }
}

/// What is wrong with `dns` as the cluster DNS Service's address in the service range `cidr`.
fn dns_service_ip_problem(cidr: Ipv4Net, dns: Ipv4Addr) -> Option<String> {
    let first = u32::from(cidr.network()).checked_add(1).map(Ipv4Addr::from);
    if !cidr.contains(&dns) {
        Some(format!(
            "{dns} is outside networkProfile.serviceCidr ({cidr}): the cluster DNS address is a ClusterIP of that range"
        ))
    } else if dns == cidr.network() {
        Some(format!(
            "{dns} is the network address of networkProfile.serviceCidr ({cidr}), never a ClusterIP"
        ))
    } else if dns == cidr.broadcast() {
        Some(format!(
            "{dns} is the broadcast address of networkProfile.serviceCidr ({cidr}), never a ClusterIP"
        ))
    } else if Some(dns) == first {
        Some(format!(
            "{dns} is the first address of networkProfile.serviceCidr ({cidr}), which Kubernetes gives the API server's Service (kubernetes.default): use another, e.g. {}",
            suggested_dns_ip(cidr)
        ))
    } else {
        None
    }
}

/// AKS's choice: the tenth address of the range (10.0.0.10 in 10.0.0.0/16), or the second for a
/// range too small for that.
fn suggested_dns_ip(cidr: Ipv4Net) -> Ipv4Addr {
    let at = |offset: u32| Ipv4Addr::from(u32::from(cidr.network()) + offset);
    if cidr.contains(&at(10)) && at(10) != cidr.broadcast() {
        at(10)
    } else {
        at(2)
    }
}
