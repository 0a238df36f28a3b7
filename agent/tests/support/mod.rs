//! Fixtures shared by the BPF_PROG_RUN tests and the microbenchmark: two pods on "the test
//! veth", node-1's settings, route tables, and crafted frames.
#![allow(dead_code, reason = "each test file uses its own part of the fixture")]

pub mod agent_node;
pub mod packets;

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use ipnet::Ipv4Net;
use vnetd::dataplane::Dataplane;
use vnetd_common::{DropReason, Endpoint, NextHop, NodeConfig, Path, Route, programs};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
/// `TC_ACT_UNSPEC` (-1) as BPF_PROG_RUN reports it: "not vnetd's", on to the next TCX program
/// and the stack.
pub const TC_PASS_ON: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// In BPF_PROG_RUN a TC program's skb comes from the loopback device: the "host veth" of the
/// test's pods is therefore ifindex 1.
pub const TEST_IFINDEX: u32 = 1;

pub const POD_A: [u8; 4] = [10, 0, 2, 10];
pub const POD_B: [u8; 4] = [10, 0, 2, 11];
pub const MAC_A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0a];
pub const HOST_A: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0b];
pub const HOST_B: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0b];
/// Pod C: a virtual appliance running as a pod on this node.
pub const POD_C: [u8; 4] = [10, 0, 2, 12];
pub const MAC_C: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0c];
pub const HOST_C: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0c];
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 10, 0, 0, 4];
pub const NODE_IP: [u8; 4] = [10, 0, 0, 4];
pub const FABRIC_MAC: [u8; 6] = [0x02, 0, 10, 0, 0, 5];

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Sets the IPv4 TTL of a frame made by [`udp`] and recomputes the header checksum.
pub fn set_ttl(frame: &mut [u8], ttl: u8) {
    frame[22] = ttl;
    frame[24..26].copy_from_slice(&[0, 0]);
    let check = !ones_complement_sum(&frame[14..34]);
    frame[24..26].copy_from_slice(&check.to_be_bytes());
}

/// Ethernet + IPv4 (TTL 64, valid header checksum) + UDP with a few bytes of payload.
pub fn udp(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = eth(HOST_A, src_mac, 0x0800);
    let total = 20 + 8 + 4;
    f.extend_from_slice(&[0x45, 0, 0, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    let check = !ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f
}

pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A forwarded IPv4 header: TTL one less than `sent`'s, checksum still valid, the rest equal.
pub fn assert_forwarded(sent: &[u8], out: &[u8]) {
    assert_eq!(out[22], sent[22] - 1, "TTL decremented");
    assert_eq!(
        ones_complement_sum(&out[14..34]),
        0xffff,
        "header checksum valid"
    );
    assert_eq!(&out[26..], &sent[26..], "addresses and payload untouched");
}

pub fn arp_request(src_mac: [u8; 6], src: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = eth([0xff; 6], src_mac, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// A dataplane with node-1's settings, pods A, B and C on "the test veth", and routes in table
/// 1: the VNet local, the connected space 10.1/16 through the gateway, 10.99/16 None,
/// 192.0.2/24 via the appliance 10.0.0.100, the rest Internet.
pub fn dataplane() -> Dataplane {
    dataplane_with_host_b(HOST_B)
}

/// [`dataplane`] with pod B's host-veth MAC chosen by the caller.
pub fn dataplane_with_host_b(host_b: [u8; 6]) -> Dataplane {
    dataplane_on(TEST_IFINDEX, TEST_IFINDEX, host_b)
}

/// A pod's ENDPOINTS entry as the fixture writes it: route table 1, no NSG, no flags. Tests
/// change a field with struct update syntax.
pub fn pod_endpoint(host_ifindex: u32, pod_mac: [u8; 6], host_mac: [u8; 6]) -> Endpoint {
    Endpoint {
        host_ifindex,
        route_table: 1,
        pod_mac,
        host_mac,
        public_ip: [0; 4],
        nsg_in_subnet: 0,
        nsg_in_group: 0,
        nsg_out_subnet: 0,
        nsg_out_group: 0,
        flags: 0,
    }
}

/// Pod A's entry in the fixture (on the test veth).
pub fn pod_a_endpoint() -> Endpoint {
    pod_endpoint(TEST_IFINDEX, MAC_A, HOST_A)
}

/// node-1's settings in the fixture: its uplink on the test veth, SNAT ports 32768-65535, no
/// Services. Tests change a field with struct update syntax.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        uplink_ifindex: TEST_IFINDEX,
        primary_ip: NODE_IP,
        uplink_mac: UPLINK_MAC,
        snat_port_min: 32768,
        snat_port_max: 65535,
        _pad: [0; 2],
        service_net: [0; 4],
        service_mask: [0; 4],
    }
}

/// [`dataplane`] with pod A's and pod B's host veths at the given interfaces.
pub fn dataplane_on(ifindex_a: u32, ifindex_b: u32, host_b: [u8; 6]) -> Dataplane {
    let mut dp = Dataplane::load_unpinned().expect("programs load and verify");
    dp.set_node(node_config()).unwrap();
    for (ip, pod_mac, host_mac, host_ifindex) in [
        (POD_A, MAC_A, HOST_A, ifindex_a),
        (POD_B, MAC_B, host_b, ifindex_b),
        (POD_C, MAC_C, HOST_C, TEST_IFINDEX),
    ] {
        dp.put_endpoint(
            Ipv4Addr::from(ip),
            pod_endpoint(host_ifindex, pod_mac, host_mac),
        )
        .unwrap();
    }
    let route = |hop: NextHop, ip: [u8; 4]| Route {
        next_hop: hop as u32,
        next_hop_ip: ip,
    };
    let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
    let routes = BTreeMap::from([
        ((1, net("10.0.0.0/16")), route(NextHop::VnetLocal, [0; 4])),
        (
            (1, net("10.1.0.0/16")),
            route(NextHop::VirtualNetworkGateway, [0; 4]),
        ),
        ((1, net("0.0.0.0/0")), route(NextHop::Internet, [0; 4])),
        ((1, net("10.99.0.0/16")), route(NextHop::None, [0; 4])),
        (
            (1, net("192.0.2.0/24")),
            route(NextHop::VirtualAppliance, [10, 0, 0, 100]),
        ),
        ((0, net("0.0.0.0/0")), route(NextHop::None, [0; 4])),
    ]);
    dp.sync_routes(&routes).unwrap();
    dp
}

/// Sets `ENDPOINT_VNET_DIRECT` on the endpoints at `ips`, as the agent does for a subnet whose
/// route table routes the whole VNet locally (the fixture's table 1 does: no route overrides
/// part of 10.0.0.0/16).
pub fn route_the_vnet_directly(dp: &mut Dataplane, ips: &[[u8; 4]]) {
    let written = dp.endpoints_written().unwrap();
    for ip in ips {
        let ip = Ipv4Addr::from(*ip);
        let mut ep = written[&ip];
        ep.flags |= vnetd_common::ENDPOINT_VNET_DIRECT;
        dp.put_endpoint(ip, ep).unwrap();
    }
}

/// A state directory of its own (`<tmp>/vnetd-test-<tag>-<pid>`), removed when dropped, also
/// when the test fails.
pub struct StateDir(std::path::PathBuf);

impl StateDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vnetd-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a state dir");
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Moves the calling thread into a network namespace of its own (gone with the thread: no name,
/// nothing to clean up) holding a veth pair, and returns the pair's ifindexes. BPF_PROG_RUN
/// looks a `ctx_in` ifindex up in the caller's namespace.
pub fn private_netns_with_veth_pair() -> (u32, u32) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let status = std::process::Command::new("ip")
        .args(["link", "add", "pa", "type", "veth", "peer", "name", "pb"])
        .status()
        .expect("running ip");
    assert!(status.success(), "ip link add failed");
    let index = |name: &str| nix::net::if_::if_nametoindex(name).expect("the veth exists");
    (index("pa"), index("pb"))
}

/// A `struct __sk_buff` for BPF_PROG_RUN's `ctx_in` with only `ifindex` set (the interface the
/// packet arrives on); every other field must stay zero.
pub fn skb_ctx_on(ifindex: u32) -> Vec<u8> {
    const IFINDEX_OFFSET: usize = 40; // offsetof(struct __sk_buff, ifindex)
    let mut ctx = vec![0u8; IFINDEX_OFFSET + 4];
    ctx[IFINDEX_OFFSET..].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// What a BPF_PROG_RUN returned: the verdict and the packet as the program left it.
pub struct Run {
    pub verdict: u32,
    pub out: Vec<u8>,
}

/// Runs the calling thread on `cpu` only (BPF_PROG_RUN runs the program on the caller's CPU:
/// per-CPU state is then one CPU's).
pub fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

pub fn run(dp: &mut Dataplane, program: &str, data: &[u8]) -> Run {
    run_with_ctx(dp, program, data, None)
}

/// Runs a TC program on `data` as if it arrived on interface `ifindex`.
pub fn run_on(dp: &mut Dataplane, program: &str, data: &[u8], ifindex: u32) -> Run {
    run_with_ctx(dp, program, data, Some(&skb_ctx_on(ifindex)))
}

pub fn run_with_ctx(dp: &mut Dataplane, program: &str, data: &[u8], ctx: Option<&[u8]>) -> Run {
    let mut out = vec![0u8; data.len() + 256];
    let result = {
        let opts = TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ..Default::default()
        };
        if program == programs::UPLINK_XDP {
            dp.xdp(program).unwrap().test_run(opts)
        } else {
            dp.classifier(program).unwrap().test_run(opts)
        }
    }
    .unwrap_or_else(|e| panic!("BPF_PROG_RUN of {program} on {} bytes: {e}", data.len()));
    out.truncate(result.data_size_out as usize);
    Run {
        verdict: result.return_value,
        out,
    }
}

pub fn traffic(dp: &Dataplane, path: Path) -> u64 {
    dp.traffic()
        .unwrap()
        .into_iter()
        .find(|(p, _)| *p == path)
        .unwrap()
        .1
        .packets
}

pub fn drops(dp: &Dataplane, reason: DropReason) -> u64 {
    dp.drops()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .unwrap()
        .1
}
