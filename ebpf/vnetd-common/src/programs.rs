//! Program names (the eBPF entry functions' names).

/// XDP on the uplink: proxy ARP, early drops.
pub const UPLINK_XDP: &str = "uplink_xdp";
/// TC ingress on the uplink: delivery into local pods.
pub const UPLINK_TC_INGRESS: &str = "uplink_ingress";
/// TC ingress on a pod's host-side veth: everything the pod sends.
pub const POD_TC_INGRESS: &str = "pod_ingress";
/// TC egress on the uplink: the node's own connections from ports in the SNAT range are
/// tracked (and remapped if a pod flow holds their port).
pub const UPLINK_TC_EGRESS: &str = "uplink_egress";
/// TC egress on a pod's host-side veth: what the node's stack sends into the pod (the node's own
/// traffic, Services kube-proxy translated): the pod's inbound NSGs, exposed ports.
pub const POD_TC_EGRESS: &str = "pod_egress";
