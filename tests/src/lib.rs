//! The vnetd lab: an Azure virtual network built from Linux network namespaces, for the
//! end-to-end tests, the demo (`cargo xtask demo`) and the benchmarks.
//!
//! # Topology
//!
//! ```text
//!                 internet  eth0 198.51.100.10/24, default via 198.51.100.1
//!                    |      (+ any address added with Lab::add_internet_ip, on lo)
//!                    |
//!                    | eth1 198.51.100.1/24
//!                  edge     ip_forward=1, the VNet gateway: eth0 10.0.0.1/32
//!                    | eth0 routes: <member ip>/32 dev eth0 for every node and appliance,
//!                    |              <public ip>/32 via <node ip> for Lab::host_public_ip
//!                    |
//!   fabric:  br0 (Linux bridge: the VNet's switching; bridge netfilter off)
//!             |  ports fp<n>-<member>
//!     +-------+--------------+----------------+
//!     | eth0                 | eth0           | eth0
//!   node-1 10.0.0.4/24     node-2 ...       nva 10.0.0.100/24 (appliance, ip_forward=1)
//!     |   default via 10.0.0.1 onlink, ip_forward=1
//!     | vh<n> (host side)       <- Lab::add_veth_pod, or the CNI plugin via Lab::cni
//!   pod-a eth0 <ip>/32, default via 169.254.1.1 dev eth0 onlink
//! ```
//!
//! The edge deliberately has **no route to pod addresses** (its fabric address is a /32 and it
//! only knows the members' primary addresses and the hosted public addresses): a packet from
//! a pod that reaches the internet host un-translated cannot be answered, and the internet
//! namespace cannot reach `10.0.1.0/24` or `10.0.2.0/23` at all. Tests prove SNAT and the
//! public-address translation with exactly that: a conversation with the internet host works
//! only if the dataplane translated it, and [`EchoReport::server_peer`] shows which address the
//! far end saw.
//!
//! # Hygiene
//!
//! Everything a lab creates lives in its own namespaces, named `vnl<pid>x<n>-<member>`
//! (see [`Lab::prefix`]); no link is ever created in the root namespace (veth pairs are
//! created by `ip` running *inside* a lab namespace, with the peer placed directly in another
//! lab namespace) and the root namespace's addresses and routes are never touched. Interface
//! names inside lab namespaces need no prefix: they exist only in namespaces the lab owns and
//! disappear with them.
//!
//! Teardown ([`Lab::teardown`], also run by `Drop`, so also when a test panics) kills every
//! process in the lab's namespaces, deletes the namespaces (which deletes their veths) and
//! removes the lab's files. [`Lab::new`] first sweeps what labs of dead processes left behind
//! (a process killed with SIGKILL cannot clean up); the pid in the prefix tells whose it is,
//! so labs of live processes (concurrent test binaries) are left alone. [`sweep_all`] removes
//! every lab (for `cargo xtask` cleanup), [`cleanup_on_signal`] tears down on Ctrl-C.
//!
//! # Running commands and traffic
//!
//! [`Ns`] runs commands with `nsenter --net=/run/netns/NAME` (never `ip netns exec`, which
//! remounts /sys and hides /sys/fs/bpf from the agent), spawns background processes ([`Bg`],
//! killed with their process group on drop), captures packets ([`Capture`]) and creates
//! sockets inside the namespace ([`Ns::tcp_connect`], [`Ns::udp_bind`]): a socket belongs to
//! the namespace it was created in for its whole life, so the lab creates it on a short-lived
//! thread that entered the namespace and hands it back to the caller's thread. The
//! [`traffic`] helpers build echo tests on that; for the SNAT tests also thousands of
//! connections at once ([`Ns::tcp_connect_many`], [`EchoServer::tcp_many`]), a chosen source
//! port ([`Ns::tcp_connect_from`]) and one-way bulk transfers ([`EchoServer::tcp_sink`]).

pub mod containerd;
pub mod frames;
mod lab;
mod ns;
mod process;
mod sweep;
pub mod traffic;
pub mod vnetd;

pub use ipnet;
pub use lab::{
    Appliance, CniCall, CniOutput, KEEP_LOGS_ENV, Lab, NODE_METRICS_ADDR, Node, PodNs, VethPod,
};
/// For [`Bg::signal`].
pub use nix::sys::signal::Signal;
pub use ns::{DEFAULT_RUN_TIMEOUT, LinkInfo, LinkStats, Ns};
pub use process::{Bg, Capture, LogMode};
pub use sweep::{SweepReport, cleanup_on_signal, sweep_all, sweep_current_process, sweep_stale};
pub use traffic::{
    ALLOWED_WAIT, DEFAULT_TIMEOUT, DENIED_WAIT, EchoReport, EchoServer, EchoStream, Outcome, Seen,
    SinkReceipt, allowed, attempt, http_get, refused, sink_transfer, tcp_echo, tcp_echo_ok,
    tcp_roundtrip, timed_out, udp_echo, udp_ok, udp_roundtrip, udp_roundtrip_sized,
};

use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The lab's virtual network address space (`examples/lab.yaml`): on-link for every member.
pub const VNET_SPACE: &str = "10.0.0.0/16";
/// The VNet gateway: the edge's address on the fabric (Azure's `x.x.x.1`).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The edge's address towards the internet namespace.
pub const EDGE_INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The internet host: the `internet` namespace's address (TEST-NET-2, never routed for real).
pub const INTERNET_HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

/// The lab's internet host at `port`.
pub fn internet_host(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from((INTERNET_HOST_IP, port))
}
/// The pods' default gateway (as in Azure CNI's transparent mode); answered by the dataplane.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The name of every member's uplink (the veth into the fabric) and of a veth pod's interface.
pub const UPLINK: &str = "eth0";
/// Where labs keep their files (logs, agent sockets, state dirs): `<LAB_DIR_ROOT>/vnl<pid>x<n>/`.
pub const LAB_DIR_ROOT: &str = "/tmp/vnetd-lab";
/// Where labs put the agents' bpffs pin directories: `<BPFFS_ROOT>/vnl<pid>x<n>/<node>`.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises lab tests within one test binary: hold the guard for the whole test.
///
/// Labs do not collide (each has its own prefix), but tests that measure, count packets or
/// compare the root namespace's links must not share the machine with another lab. Cargo runs
/// test binaries one after another, so a process-wide lock is enough. A panicking holder does
/// not poison it for the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `f` until it returns true or `timeout` passes; returns the last result. Polls often at
/// first (1 ms) and backs off to 50 ms, so a fast condition costs little and a slow one little
/// CPU.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Raises this process's soft limit of open files to `want` (capped at the hard limit) and
/// returns the new soft limit. Tests that hold thousands of connections (both ends live in
/// the test process) need more than the usual 1024.
pub fn raise_open_files_limit(want: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        anyhow::ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0,
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
        let target = want.min(lim.rlim_max);
        if lim.rlim_cur < target {
            lim.rlim_cur = target;
            anyhow::ensure!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0,
                "setrlimit(RLIMIT_NOFILE, {target}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(lim.rlim_cur)
}

/// Mounts a bpf filesystem on /sys/fs/bpf unless one is there already. The agent needs it for
/// its pins; the lab does not call this by itself because it changes the machine (the demo and
/// `cargo xtask` do, saying so).
pub fn ensure_bpffs() -> anyhow::Result<bool> {
    use anyhow::Context;
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_src, dst, fstype) = (f.next(), f.next(), f.next());
        dst == Some(BPFFS_ROOT) && fstype == Some("bpf")
    });
    if mounted {
        return Ok(false);
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS_ROOT])
        .output()
        .context("running mount -t bpf bpf /sys/fs/bpf")?;
    anyhow::ensure!(
        out.status.success(),
        "mount -t bpf bpf {BPFFS_ROOT} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(true)
}
