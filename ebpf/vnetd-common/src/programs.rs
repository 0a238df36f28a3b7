//! Program names (the eBPF entry functions' names).

/// XDP on the uplink: proxy ARP, early drops.
pub const UPLINK_XDP: &str = "uplink_xdp";
/// TC ingress on the uplink: delivery into local pods.
pub const UPLINK_TC_INGRESS: &str = "uplink_ingress";
/// TC ingress on a pod's host-side veth: everything the pod sends.
pub const POD_TC_INGRESS: &str = "pod_ingress";
