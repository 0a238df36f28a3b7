//! What the node's own stack must do for Kubernetes Services, and whether it does.
//!
//! With `networkProfile.serviceCidr`, the dataplane hands a pod's packets to a ClusterIP, and
//! the replies of connections kube-proxy translated, to the node's stack. kube-proxy's DNAT
//! then makes the stack *forward* them: from a pod's veth out of the uplink or into another
//! veth (a ClusterIP), from the uplink into a veth or back out (a NodePort), and from the
//! uplink into a veth again for the replies. The rest is there already:
//!
//! * Each pod has a /32 route through its host veth (created with the veth), so the stack
//!   reaches the pod after un-NAT, and strict reverse-path filtering (`rp_filter=1`) accepts a
//!   pod's packets on its own veth: nothing to loosen.
//! * The node answers ARP for 169.254.1.1 on the veth and the pod answers for its address, so
//!   the stack delivers into the pod as it does for the node's own traffic.
//!
//! What remains is IPv4 forwarding, which Linux checks on the interface a packet arrived on.
//! Kubernetes requires `net.ipv4.ip_forward=1` on its nodes (kubeadm refuses to join a node
//! without it) and kube-proxy relies on it; it sets `all`, `default` (inherited by every veth
//! created later) and each interface. It is the node's setting, not vnetd's: the agent does not
//! turn the node into a router behind the operator's back (nor could it in the DaemonSet,
//! where /proc/sys is read-only), it checks and warns, naming the interfaces that do not
//! forward.

use std::path::Path;

/// The interfaces whose IPv4 forwarding matters for Services: the uplink, `default` (what the
/// next pod's veth inherits) and the pods' host veths.
pub fn forwarding_interfaces<'a>(
    uplink: &'a str,
    veths: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut names = vec![uplink, "default"];
    names.extend(veths);
    names
}

/// `net.ipv4.conf.<ifname>.forwarding` in the current network namespace; `None` if it cannot
/// be read (the interface is gone).
pub fn forwarding(ifname: &str) -> Option<bool> {
    let path = Path::new("/proc/sys/net/ipv4/conf")
        .join(ifname)
        .join("forwarding");
    let value = std::fs::read_to_string(path).ok()?;
    Some(value.trim() != "0")
}

/// The warning for a node with Services whose stack does not forward on some of `states`
/// (interface, forwarding), or `None` when every readable one forwards.
pub fn forwarding_warning(states: &[(&str, Option<bool>)]) -> Option<String> {
    let off: Vec<&str> = states
        .iter()
        .filter(|(_, on)| *on == Some(false))
        .map(|(name, _)| *name)
        .collect();
    if off.is_empty() {
        return None;
    }
    let keys: Vec<String> = off
        .iter()
        .map(|name| format!("net.ipv4.conf.{name}.forwarding"))
        .collect();
    Some(format!(
        "{} = 0: the node's stack will not forward Service traffic (kube-proxy's ClusterIPs and \
         NodePorts) between pods and the network; Kubernetes nodes need net.ipv4.ip_forward=1",
        keys.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_forwards_gets_no_warning() {
        assert_eq!(
            forwarding_warning(&[("eth0", Some(true)), ("default", Some(true))]),
            None
        );
        // A veth that vanished since is not the node's problem.
        assert_eq!(forwarding_warning(&[("vnd1", None)]), None);
    }

    #[test]
    fn the_warning_names_each_interface_that_does_not_forward() {
        let warning = forwarding_warning(&[
            ("eth0", Some(false)),
            ("default", Some(true)),
            ("vnd1", Some(false)),
        ])
        .unwrap();
        assert!(
            warning.starts_with(
                "net.ipv4.conf.eth0.forwarding, net.ipv4.conf.vnd1.forwarding = 0: the node's stack"
            ),
            "{warning}"
        );
        assert!(warning.contains("net.ipv4.ip_forward=1"), "{warning}");
    }

    #[test]
    fn uplink_default_then_veths() {
        assert_eq!(
            forwarding_interfaces("eth0", ["vnd1", "vnd2"]),
            ["eth0", "default", "vnd1", "vnd2"]
        );
    }
}
