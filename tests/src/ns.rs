//! A handle on one network namespace: run commands in it, spawn processes, make sockets.

use crate::process::{self, Bg, Capture, LogMode};
use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long [`Ns::run`] lets a command run before killing it: a test must fail, not hang.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A network namespace, by name (`/run/netns/<name>`).
///
/// A plain handle (cloneable, no guard): the [`crate::Lab`] that created it deletes it. Commands
/// run with `nsenter --net=<path>`, which changes only the network namespace: /sys, /sys/fs/bpf
/// and the file system stay the root namespace's (so `/sys/class/net` shows the root
/// namespace's links; read interfaces with [`Ns::link_info`], which asks netlink via `ip`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ns {
    /// The namespace's name, `vnl<pid>x<n>-<role>` for a lab's.
    pub name: String,
    /// `/run/netns/<name>`, for `nsenter --net=`, `CNI_NETNS` and `setns`.
    pub path: PathBuf,
    /// The short name the lab was given (`node-1`, `edge`, `pod-a`).
    pub role: String,
    log_dir: PathBuf,
}

/// An interface as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub ifindex: u32,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub mtu: u32,
    /// Administratively up (the UP flag).
    pub up: bool,
    /// `UP`, `DOWN`, `LOWERLAYERDOWN`, `UNKNOWN`...
    pub operstate: String,
}

/// An interface's counters (`ip -s link`, the kernel's 64-bit stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

fn to_os<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect()
}

/// Moves the calling thread into the network namespace at `path`. Only this thread moves
/// (setns is per thread); it stays there until it exits.
pub(crate) fn enter_netns(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {}", path.display()))
}

impl Ns {
    pub(crate) fn new(name: String, role: String, log_dir: PathBuf) -> Ns {
        Ns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
            role,
            log_dir,
        }
    }

    /// A handle on an existing namespace (for example one the CNI plugin or a demo made);
    /// background logs go to the system temp dir.
    pub fn open(name: &str) -> Ns {
        Ns::new(
            name.to_string(),
            name.to_string(),
            std::env::temp_dir().join("vnetd-lab-logs"),
        )
    }

    /// Whether `/run/netns/<name>` exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Where [`LogMode::Files`] puts logs of processes spawned here.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// A `Command` running `args` in this namespace (`nsenter --net=<path> -- args...`), to
    /// customise (env, cwd) and pass to [`Ns::spawn_with`].
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut net = OsString::from("--net=");
        net.push(&self.path);
        let mut cmd = Command::new("nsenter");
        cmd.arg(net).arg("--").args(args);
        cmd
    }

    fn describe(&self, cmd: &Command) -> String {
        let mut v = vec![cmd.get_program().to_os_string()];
        v.extend(cmd.get_args().map(OsStr::to_os_string));
        // Show what runs, not the nsenter wrapper.
        let shown = match v.iter().position(|a| a == "--") {
            Some(i) if v[0] == "nsenter" => v[i + 1..].to_vec(),
            _ => v,
        };
        format!("`{}` in netns {}", process::render(&shown), self.name)
    }

    /// Runs `args` here and returns its output whatever the exit status; an error only if it
    /// cannot start or runs longer than [`DEFAULT_RUN_TIMEOUT`].
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_timeout(args, DEFAULT_RUN_TIMEOUT)
    }

    /// [`Ns::run`] with a time limit of your choice.
    pub fn run_timeout<I, S>(&self, args: I, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cmd = self.command(to_os(args));
        let what = self.describe(&cmd);
        process::run_command(cmd, None, timeout, &what)
    }

    /// Runs `args` here with `input` on stdin.
    pub fn run_input<I, S>(&self, args: I, input: &[u8], timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cmd = self.command(to_os(args));
        let what = self.describe(&cmd);
        process::run_command(cmd, Some(input), timeout, &what)
    }

    /// Runs a prepared [`Ns::command`] to completion (stdin empty).
    pub fn run_command(&self, cmd: Command, timeout: Duration) -> Result<Output> {
        let what = self.describe(&cmd);
        process::run_command(cmd, None, timeout, &what)
    }

    /// Runs `args` here; a non-zero exit is an error carrying the command, stdout and stderr.
    /// Returns stdout.
    pub fn run_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cmd = self.command(to_os(args));
        let what = self.describe(&cmd);
        let out = process::run_command(cmd, None, DEFAULT_RUN_TIMEOUT, &what)?;
        process::check_output(out, &what)
    }

    /// `ip -n <name> args...`; a failure is an error naming the namespace and the command.
    /// Returns stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args = to_os(args);
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(&args);
        let what = format!("`ip {}` in netns {}", process::render(&args), self.name);
        let out = process::run_command(cmd, None, Duration::from_secs(30), &what)?;
        process::check_output(out, &what)
    }

    /// `ip -n <name> -j args...`, parsed.
    pub fn ip_json<I, S>(&self, args: I) -> Result<Value>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args = to_os(args);
        let mut full = vec![OsString::from("-j")];
        full.extend(args.iter().cloned());
        let out = self.ip(&full)?;
        serde_json::from_str(&out).with_context(|| {
            format!(
                "parsing the JSON of `ip -j {}` in netns {}",
                process::render(&args),
                self.name
            )
        })
    }

    /// Starts `args` here in the background, output to log files ([`LogMode::Files`]).
    pub fn spawn<I, S>(&self, args: I) -> Result<Bg>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn_with(self.command(to_os(args)), LogMode::Files)
    }

    /// Starts a prepared [`Ns::command`] in the background with output handled as `mode`.
    pub fn spawn_with(&self, cmd: Command, mode: LogMode) -> Result<Bg> {
        let what = self.describe(&cmd);
        let program = cmd
            .get_args()
            .skip_while(|a| *a != "--")
            .nth(1)
            .map(|p| {
                Path::new(p)
                    .file_name()
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_else(|| "cmd".into());
        let label = format!("{}-{}", self.role, program);
        let enters = cmd.get_program() == "nsenter";
        let bg = Bg::spawn(cmd, &self.name, &label, mode, &self.log_dir, &what)?;
        if enters {
            // Return once it is inside: then it shows in `pids()`, and a teardown scanning
            // the namespace finds it.
            let target = std::fs::metadata(&self.path)
                .with_context(|| format!("stat {}", self.path.display()))?;
            let proc_ns = PathBuf::from(format!("/proc/{}/ns/net", bg.pid()));
            crate::wait_for(Duration::from_secs(5), || {
                std::fs::metadata(&proc_ns)
                    .map(|m| m.dev() == target.dev() && m.ino() == target.ino())
                    .unwrap_or(false)
                    || !bg.is_running()
            });
        }
        Ok(bg)
    }

    /// Starts `tcpdump` on `ifname` here with a pcap `filter` ("" for everything) and waits
    /// until it listens.
    pub fn capture(&self, ifname: &str, filter: &str) -> Result<Capture> {
        let mut args = vec![
            "tcpdump",
            "-i",
            ifname,
            "-n",
            "-e",
            "-l",
            "--immediate-mode",
        ];
        if !filter.is_empty() {
            args.push(filter);
        }
        let bg = self.spawn(&args)?;
        Capture::new(bg).with_context(|| format!("capturing on {ifname} in netns {}", self.name))
    }

    /// Pings `ip` `count` times (200 ms apart, 1 s to answer) and returns how many answered;
    /// 0 also when ping cannot even send (no route).
    pub fn ping_count(&self, ip: Ipv4Addr, count: u32) -> Result<u32> {
        self.ping_count_sized(ip, count, 56)
    }

    /// [`Ns::ping_count`] with `size` bytes of ICMP data (ping's `-s`): above the MTU, each
    /// request and reply travels in fragments.
    pub fn ping_count_sized(&self, ip: Ipv4Addr, count: u32, size: u32) -> Result<u32> {
        let count = count.max(1);
        let deadline = (count as u64 * 200).div_ceil(1000) + 2;
        let out = self.run(&[
            "ping".to_string(),
            "-n".into(),
            "-q".into(),
            "-c".into(),
            count.to_string(),
            "-i".into(),
            "0.2".into(),
            "-W".into(),
            "1".into(),
            "-s".into(),
            size.to_string(),
            "-w".into(),
            deadline.to_string(),
            ip.to_string(),
        ])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            if line.contains("packets transmitted") {
                let received = line
                    .split(',')
                    .nth(1)
                    .and_then(|f| f.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow!("cannot parse ping's summary {line:?}"))?;
                return Ok(received);
            }
        }
        Ok(0)
    }

    /// One ping of `ip` sent with TTL `ttl` (waiting 2 s for an answer): ping's output, where
    /// a hop that found the TTL run out shows as `From <hop> ... Time to live exceeded`.
    pub fn ping_with_ttl(&self, ip: Ipv4Addr, ttl: u8) -> Result<String> {
        let out = self.run([
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            "-t",
            &ttl.to_string(),
            &ip.to_string(),
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// True if at least one of `count` pings to `ip` is answered ("reachable"). Use
    /// [`Ns::ping_count`] to require every answer.
    pub fn ping(&self, ip: Ipv4Addr, count: u32) -> bool {
        self.ping_count(ip, count).map(|n| n > 0).unwrap_or(false)
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward`, ...). Done in-process from a
    /// thread inside the namespace: `/proc/sys/net` shows the reading thread's namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.in_ns(|| {
            std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
        })
        .with_context(|| format!("sysctl {key}={value} in netns {}", self.name))
    }

    /// Reads a sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.in_ns(|| {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("reading {}", path.display()))
        })
        .with_context(|| format!("sysctl {key} in netns {}", self.name))
    }

    /// Index, MAC, MTU and state of `ifname`, from netlink (not /sys, which shows the root
    /// namespace under nsenter).
    pub fn link_info(&self, ifname: &str) -> Result<LinkInfo> {
        let v = self.ip_json(["link", "show", "dev", ifname])?;
        let l = v
            .get(0)
            .ok_or_else(|| anyhow!("no link {ifname} in netns {}", self.name))?;
        let get_u = |k: &str| l.get(k).and_then(Value::as_u64);
        let get_s = |k: &str| l.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(LinkInfo {
            name: get_s("ifname"),
            ifindex: get_u("ifindex")
                .ok_or_else(|| anyhow!("no ifindex for {ifname} in netns {}", self.name))?
                as u32,
            mac: get_s("address"),
            mtu: get_u("mtu").unwrap_or(0) as u32,
            up: l
                .get("flags")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            operstate: get_s("operstate"),
        })
    }

    /// The counters of `ifname`.
    pub fn link_stats(&self, ifname: &str) -> Result<LinkStats> {
        let v = self.ip_json(["-s", "link", "show", "dev", ifname])?;
        let s = v
            .get(0)
            .and_then(|l| l.get("stats64"))
            .ok_or_else(|| anyhow!("no stats for {ifname} in netns {}", self.name))?;
        let n = |dir: &str, k: &str| {
            s.get(dir)
                .and_then(|d| d.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Ok(LinkStats {
            rx_packets: n("rx", "packets"),
            rx_bytes: n("rx", "bytes"),
            rx_errors: n("rx", "errors"),
            rx_dropped: n("rx", "dropped"),
            tx_packets: n("tx", "packets"),
            tx_bytes: n("tx", "bytes"),
            tx_errors: n("tx", "errors"),
            tx_dropped: n("tx", "dropped"),
        })
    }

    /// The processes whose (main thread's) network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        pids_in_netns(&self.path)
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. Only that thread
    /// enters the namespace; it exits when `f` returns. Sockets `f` creates stay in this
    /// namespace wherever they are used afterwards.
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = &self.path;
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name(format!("netns-{}", self.role))
                .spawn_scoped(s, move || -> Result<T> {
                    enter_netns(path)?;
                    f()
                })
                .context("spawning a thread")?;
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs `f` on a long-lived thread inside this namespace. While the thread runs it holds
    /// the namespace alive (deleting the name does not free it): make sure it ends.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<Result<T>>> {
        let path = self.path.clone();
        std::thread::Builder::new()
            .name(format!("netns-{}", self.role))
            .spawn(move || -> Result<T> {
                enter_netns(&path)?;
                Ok(f())
            })
            .context("spawning a thread")
    }

    /// A TCP listener bound to `addr` in this namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.in_ns(|| TcpListener::bind(addr).with_context(|| format!("binding tcp {addr}")))
            .with_context(|| format!("in netns {}", self.name))
    }

    /// A TCP connection to `addr` made from this namespace (the handshake included).
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.in_ns(|| {
            TcpStream::connect_timeout(&addr, timeout)
                .with_context(|| format!("connecting to tcp {addr}"))
        })
        .with_context(|| format!("from netns {}", self.name))
    }

    /// A TCP connection to `dst` from the local address `local` (a chosen source port), made
    /// from this namespace. `SO_REUSEADDR` is set, so a port another connection uses can be
    /// taken for a different destination, as the kernel allows.
    pub fn tcp_connect_from(
        &self,
        local: SocketAddr,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream> {
        self.in_ns(|| {
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .context("creating a tcp socket")?;
            sock.set_reuse_address(true)?;
            sock.bind(&local.into())
                .with_context(|| format!("binding tcp {local}"))?;
            sock.connect_timeout(&dst.into(), timeout)
                .with_context(|| format!("connecting to tcp {dst} from {local}"))?;
            Ok(TcpStream::from(sock))
        })
        .with_context(|| format!("from netns {}", self.name))
    }

    /// `n` TCP connections to `addr` made from this namespace, one after another on one thread
    /// (thousands cost no thread each); all of them or an error naming the first that failed.
    pub fn tcp_connect_many(
        &self,
        addr: SocketAddr,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<TcpStream>> {
        self.in_ns(|| {
            (0..n)
                .map(|i| {
                    TcpStream::connect_timeout(&addr, timeout)
                        .with_context(|| format!("connection {} of {n} to tcp {addr}", i + 1))
                })
                .collect()
        })
        .with_context(|| format!("from netns {}", self.name))
    }

    /// A UDP socket bound to `addr` in this namespace.
    pub fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.in_ns(|| UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}")))
            .with_context(|| format!("in netns {}", self.name))
    }
}

/// The processes whose network namespace is the one bound at `path` (what `ip netns pids`
/// does: compare the nsfs inode of `/proc/<pid>/ns/net`).
pub(crate) fn pids_in_netns(path: &Path) -> Result<Vec<i32>> {
    let target = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // Exited processes (zombies) have no namespace any more and fail here.
        if let Ok(m) = std::fs::metadata(entry.path().join("ns/net"))
            && m.dev() == target.dev()
            && m.ino() == target.ino()
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Checks an interface name: at most 15 bytes, no `/`, `:` or whitespace.
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        bail!("{name:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)");
    }
    Ok(())
}
