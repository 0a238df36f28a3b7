//! The measurements: iperf3 (TCP bulk, UDP 64 B), TCP_RR and new connections per second over
//! in-process sockets, the counters that prove each run took the measured path, and the
//! BPF_PROG_RUN microbenchmark.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Durations, Kind, Pair, Quantity};
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use vnetd_lab::{Node, Ns};

/// The port of the one-off iperf3 server in the server pod.
const IPERF_PORT: &str = "5201";

/// What one run measured.
pub(super) struct Run {
    pub(super) values: Vec<(Quantity, f64)>,
    pub(super) details: Value,
    /// TCP_RR: every round trip, in microseconds (for the latency distribution's plot).
    pub(super) latencies_us: Vec<f64>,
}

pub(super) fn measure(kind: Kind, pair: &Pair, d: Durations) -> Result<Run> {
    match kind {
        Kind::Bulk => {
            let before = tcp_counters(&pair.client)?;
            let j = iperf3(pair, &["-t", &d.bulk.to_string()], d.bulk)?;
            let after = tcp_counters(&pair.client)?;
            let recv = &j["end"]["sum_received"];
            let bps = recv["bits_per_second"]
                .as_f64()
                .ok_or_else(|| anyhow!("no end.sum_received in iperf3's output"))?;
            let delta = |i: usize| after[i].saturating_sub(before[i]);
            Ok(Run {
                values: vec![(Quantity::TcpBulk, bps / 1e9)],
                details: json!({
                    "retransmits": j["end"]["sum_sent"]["retransmits"],
                    "sender_retrans_segs": delta(0),
                    "sender_dsack_recv_segs": delta(1),
                    "sender_sack_reorder": delta(2),
                    "cpu_utilization_percent": j["end"]["cpu_utilization_percent"],
                }),
                latencies_us: Vec::new(),
            })
        }
        Kind::Rr => {
            let (n, elapsed, mut latencies_us) = tcp_rr(pair, d.rr)?;
            let tps = n as f64 / elapsed.as_secs_f64();
            latencies_us.sort_by(f64::total_cmp);
            let pct = |p: f64| percentile(&latencies_us, p);
            Ok(Run {
                values: vec![
                    (Quantity::TcpRr, tps),
                    (
                        Quantity::TcpRrLatency,
                        elapsed.as_secs_f64() * 1e6 / n as f64,
                    ),
                ],
                details: json!({
                    "transactions": n,
                    "seconds": elapsed.as_secs_f64(),
                    "latency_us": {
                        "p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0),
                        "p99_9": pct(99.9), "max": pct(100.0),
                    },
                }),
                latencies_us,
            })
        }
        Kind::Udp => {
            let j = iperf3(
                pair,
                &["-u", "-l", "64", "-b", "0", "-t", &d.udp.to_string()],
                d.udp,
            )?;
            let recv = &j["end"]["sum_received"];
            let sent = &j["end"]["sum_sent"];
            let f = |v: &Value, k: &str| {
                v[k].as_f64()
                    .ok_or_else(|| anyhow!("no {k} in iperf3's UDP summary {v}"))
            };
            let received = f(recv, "packets")? - f(recv, "lost_packets")?;
            let secs = f(recv, "seconds")?;
            ensure!(secs > 0.0, "iperf3 reported a run of 0 s");
            Ok(Run {
                values: vec![(Quantity::UdpRx, received / secs / 1e3)],
                details: json!({
                    "sent_kpps": f(sent, "packets")? / f(sent, "seconds")?.max(1e-9) / 1e3,
                    "lost_percent": recv["lost_percent"],
                    "cpu_utilization_percent": j["end"]["cpu_utilization_percent"],
                }),
                latencies_us: Vec::new(),
            })
        }
        Kind::Connect => {
            let c = connect_rate(pair, d.connect, d.connect_clients)?;
            let secs = c.elapsed.as_secs_f64();
            Ok(Run {
                values: vec![(Quantity::ConnRate, c.completed as f64 / secs)],
                details: json!({
                    "clients": c.clients,
                    "completed": c.completed,
                    "failed": c.failed,
                    "errors": c.errors,
                    "server_served": c.served,
                    "client_time_wait_before": c.time_wait_before,
                    "seconds": secs,
                }),
                latencies_us: Vec::new(),
            })
        }
    }
}

/// The sender's view of retransmissions in `ns`: `[RetransSegs, TCPDSACKRecvSegs,
/// TCPSACKReorder]`. A retransmitted segment the receiver reports as a duplicate (DSACK) was
/// not lost: it was retransmitted because segments arrived out of order.
fn tcp_counters(ns: &Ns) -> Result<[u64; 3]> {
    let c = tcp_stats(ns)?;
    let get = |k: &str| {
        c.get(k)
            .copied()
            .ok_or_else(|| anyhow!("no {k} counter in netns {}", ns.name))
    };
    Ok([
        get("Tcp:RetransSegs")?,
        get("TcpExt:TCPDSACKRecvSegs")?,
        get("TcpExt:TCPSACKReorder")?,
    ])
}

/// Every `Tcp` and `TcpExt` counter of `ns` (`/proc/net/snmp` and `netstat`), keyed
/// `Group:Name`.
pub(super) fn tcp_stats(ns: &Ns) -> Result<BTreeMap<String, u64>> {
    // /proc/thread-self: /proc/net (= /proc/self/net) shows the main thread's namespace.
    let (snmp, netstat) = ns.in_ns(|| {
        let read = |f: &str| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                .with_context(|| format!("reading /proc/thread-self/net/{f}"))
        };
        Ok((read("snmp")?, read("netstat")?))
    })?;
    Ok(parse_tcp_stats(&[&snmp, &netstat]))
}

/// The `Tcp` and `TcpExt` counters of `/proc/net/snmp`-style texts (a line of names, then a
/// line of values, per group).
fn parse_tcp_stats(texts: &[&str]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for text in texts {
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((group, names)), Some((_, values))) =
                (names.split_once(": "), values.split_once(": "))
            else {
                continue;
            };
            if group != "Tcp" && group != "TcpExt" {
                continue;
            }
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if let Ok(v) = v.parse() {
                    out.insert(format!("{group}:{n}"), v);
                }
            }
        }
    }
    out
}

/// One iperf3 run: a one-off server in the server pod, the client (JSON output) in the client
/// pod. Returns the client's JSON.
fn iperf3(pair: &Pair, args: &[&str], secs: u32) -> Result<Value> {
    iperf3_on(pair, args, secs, None, None)
}

/// [`iperf3`] with the client and the server each pinned to a CPU (`taskset -c`), or not.
pub(super) fn iperf3_on(
    pair: &Pair,
    args: &[&str],
    secs: u32,
    client_cpu: Option<usize>,
    server_cpu: Option<usize>,
) -> Result<Value> {
    let pinned = |cpu: Option<usize>, cmd: &[&str]| -> Vec<String> {
        cpu.map(|c| vec!["taskset".to_string(), "-c".into(), c.to_string()])
            .unwrap_or_default()
            .into_iter()
            .chain(cmd.iter().map(|s| s.to_string()))
            .collect()
    };
    let server = pair.server.spawn(pinned(
        server_cpu,
        &["iperf3", "-s", "-1", "-p", IPERF_PORT, "--forceflush"],
    ))?;
    server
        .wait_for_output("Server listening", Duration::from_secs(10))
        .context("waiting for the iperf3 server")?;
    let ip = pair.server_ip.to_string();
    let mut cmd = vec!["iperf3", "-c", &ip, "-p", IPERF_PORT, "-J"];
    cmd.extend_from_slice(args);
    let cmd = pinned(client_cpu, &cmd);
    let out = pair
        .client
        .run_timeout(&cmd, Duration::from_secs(u64::from(secs) + 20))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "iperf3 client output is not JSON (exit {}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(e) = j.get("error") {
        bail!(
            "iperf3 client failed: {e}; server: {} {}",
            server.stdout().trim(),
            server.stderr().trim()
        );
    }
    // The one-off server exits after the test; Drop kills it if it lingers.
    let mut server = server;
    let _ = server.wait_timeout(Duration::from_secs(3));
    Ok(j)
}

/// The `p`th percentile (0 to 100) of `sorted` (nearest rank; NaN when empty).
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The CPUs of TCP_RR's client and server threads. Pinned apart: left to the scheduler, the
/// two sometimes share a CPU, where a round trip costs a tenth of one between CPUs, and the
/// runs' medians then say where the threads ran rather than what the dataplane costs.
pub(super) const RR_CLIENT_CPU: usize = 0;
pub(super) const RR_SERVER_CPU: usize = 1;

/// Pins the calling thread to `cpu`.
fn pin_this_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for cpu < 1024.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        rc == 0,
        "pinning a thread to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// TCP request/response: one connection, 1 byte each way, as many round trips as fit in
/// `dur`, the client's thread on [`RR_CLIENT_CPU`] and the server's on [`RR_SERVER_CPU`].
/// Returns (transactions, elapsed, each round trip in microseconds).
fn tcp_rr(pair: &Pair, dur: Duration) -> Result<(u64, Duration, Vec<f64>)> {
    let listener = pair
        .server
        .tcp_listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, pair.port)))?;
    let port = listener.local_addr()?.port();
    // Non-blocking accept with a deadline: the thread must end even if the client never comes.
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || -> Result<u64> {
        pin_this_thread(RR_SERVER_CPU)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(Instant::now() < deadline, "no connection within 10 s");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).context("accepting"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut b = [0u8; 1];
        let mut n = 0;
        loop {
            match s.read(&mut b).context("server read")? {
                0 => return Ok(n),
                _ => {
                    s.write_all(&b).context("server write")?;
                    n += 1;
                }
            }
        }
    });
    let client = std::thread::scope(|scope| {
        scope
            .spawn(|| rr_client(pair, port, dur))
            .join()
            .map_err(|_| anyhow!("the TCP_RR client thread panicked"))?
    });
    let served = server
        .join()
        .map_err(|_| anyhow!("the TCP_RR server thread panicked"))?;
    let (n, elapsed, latencies) = client?;
    let served = served?;
    ensure!(
        served == n + 200,
        "the server answered {served} requests, the client counted {}",
        n + 200
    );
    ensure!(n > 0, "no transaction completed");
    Ok((n, elapsed, latencies))
}

/// TCP_RR's client, on its own pinned thread: 200 round trips to warm up, then as many as fit
/// in `dur`.
fn rr_client(pair: &Pair, port: u16, dur: Duration) -> Result<(u64, Duration, Vec<f64>)> {
    pin_this_thread(RR_CLIENT_CPU)?;
    let mut c: TcpStream = pair.client.tcp_connect(
        SocketAddr::from((pair.server_ip, port)),
        Duration::from_secs(3),
    )?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut b = [0u8; 1];
    let mut ping = |c: &mut TcpStream| -> Result<()> {
        c.write_all(&[1]).context("client write")?;
        c.read_exact(&mut b).context("client read")
    };
    for _ in 0..200 {
        ping(&mut c)?; // warm-up
    }
    let start = Instant::now();
    let mut n = 0u64;
    let mut latencies = Vec::new();
    while start.elapsed() < dur {
        let t = Instant::now();
        ping(&mut c)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
        n += 1;
    }
    Ok((n, start.elapsed(), latencies))
}

/// What a run of new connections did.
struct ConnectRun {
    /// Connections that completed their request and response.
    completed: u64,
    /// Connections that failed (connect, send or receive), by error.
    failed: u64,
    errors: BTreeMap<String, u64>,
    /// Connections the server answered.
    served: u64,
    /// The client namespace's sockets in TIME_WAIT before the run (each holds an ephemeral
    /// port: too many and connect fails with "cannot assign requested address").
    time_wait_before: u64,
    elapsed: Duration,
    /// Client threads that made connections at once.
    clients: usize,
}

/// How long a connection may take to open or to answer before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many connections per run: a client pod has 28,232 ephemeral ports
/// (32768-60999) and each connection holds one in TIME_WAIT for 60 s, longer than a repetition
/// of the bench; two runs' worth must fit, or the next run's connect fails for want of a port.
const CONNECT_MAX: u64 = 10_000;
/// Connections before the measured ones (neighbours resolved, code paths warm): they must all
/// work, or the run fails.
const CONNECT_WARM_UP: u32 = 20;

/// New connections from `clients` client threads at once, each one after the other, for
/// `dur` (or [`CONNECT_MAX`] of them in all): connect, send 1 byte, read the 1-byte answer,
/// close (the client closes first, so the TIME_WAIT is the client's, as with a real client).
/// The client threads run inside the client's namespace; as many server threads share the
/// listener, each serving one connection at a time, so no client waits for another's.
fn connect_rate(pair: &Pair, dur: Duration, clients: usize) -> Result<ConnectRun> {
    let clients = clients.max(1);
    let listener = pair
        .server
        .tcp_listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, pair.port)))?;
    let addr = SocketAddr::from((pair.server_ip, listener.local_addr()?.port()));
    // accept() honours SO_RCVTIMEO: the server wakes up to see that the client is done.
    set_receive_timeout(&listener, Duration::from_millis(100))?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = (0..clients)
        .map(|_| {
            let listener = listener.try_clone().context("sharing the listener")?;
            let stop = stop.clone();
            Ok(std::thread::spawn(move || -> Result<u64> {
                let mut served = 0;
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        // A broken one is the client's failure to count, not the server's.
                        Ok((s, _)) => served += u64::from(answer_once(s).is_ok()),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => return Err(e).context("accepting"),
                    }
                }
                Ok(served)
            }))
        })
        .collect::<Result<Vec<_>>>();
    let one = move || -> std::io::Result<()> {
        let mut c = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        c.write_all(&[1])?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
    };
    let client = servers
        .as_ref()
        .map_err(|e| anyhow!("{e:#}"))
        .and_then(|_| {
            let time_wait_before = pair.client.in_ns(|| {
                let tw = time_wait_sockets()?;
                for i in 0..CONNECT_WARM_UP {
                    one().with_context(|| format!("warm-up connection {} to {addr}", i + 1))?;
                }
                Ok(tw)
            })?;
            // Each connection takes a number first, so the run stops at CONNECT_MAX in all.
            let issued = AtomicU64::new(0);
            let start = Instant::now();
            let per_client = std::thread::scope(|s| {
                let threads: Vec<_> = (0..clients)
                    .map(|_| {
                        s.spawn(|| {
                            pair.client.in_ns(|| {
                                let (mut completed, mut failed) = (0u64, 0u64);
                                let mut errors = BTreeMap::<String, u64>::new();
                                while start.elapsed() < dur
                                    && issued.fetch_add(1, Ordering::Relaxed) < CONNECT_MAX
                                {
                                    match one() {
                                        Ok(()) => completed += 1,
                                        Err(e) => {
                                            failed += 1;
                                            *errors.entry(e.to_string()).or_default() += 1;
                                        }
                                    }
                                }
                                Ok((completed, failed, errors))
                            })
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| {
                        t.join()
                            .map_err(|_| anyhow!("a connection client thread panicked"))?
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            let elapsed = start.elapsed();
            let (mut completed, mut failed) = (0, 0);
            let mut errors = BTreeMap::<String, u64>::new();
            for (c, f, e) in per_client {
                completed += c;
                failed += f;
                for (k, n) in e {
                    *errors.entry(k).or_default() += n;
                }
            }
            Ok((completed, failed, errors, elapsed, time_wait_before))
        });
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for server in servers? {
        served += server
            .join()
            .map_err(|_| anyhow!("a connection server thread panicked"))??;
    }
    let (completed, failed, errors, elapsed, time_wait_before) =
        client.with_context(|| format!("new connections from netns {}", pair.client.name))?;
    ensure!(completed > 0, "no connection completed: {errors:?}");
    Ok(ConnectRun {
        completed,
        failed,
        errors,
        served: served.saturating_sub(u64::from(CONNECT_WARM_UP)),
        elapsed,
        time_wait_before,
        clients,
    })
}

/// The TCP sockets in TIME_WAIT in the calling thread's namespace (`tw` of
/// `/proc/thread-self/net/sockstat`: /proc/net shows the main thread's namespace).
fn time_wait_sockets() -> Result<u64> {
    let path = "/proc/thread-self/net/sockstat";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("TCP: "))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.chunks(2)
                .find(|kv| kv[0] == "tw")
                .and_then(|kv| kv.get(1)?.parse().ok())
        })
        .ok_or_else(|| anyhow!("no TCP tw count in {path}: {text}"))
}

/// The server's side of one connection: read the request, answer it, wait for the client to
/// close.
fn answer_once(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    s.write_all(&b)?;
    while s.read(&mut b)? > 0 {}
    Ok(())
}

fn set_receive_timeout(listener: &TcpListener, t: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "setting SO_RCVTIMEO on the connection server's listener: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The packets counted by the MASQUERADE rules of `node`'s nat table (the bridge plugin's
/// `ipMasq` adds one per pod). The nat table sees only a connection's first packet, so this
/// counts the connections masqueraded.
pub(super) fn masquerade_packets(node: &Node) -> Result<u64> {
    let dump = node.run_ok(["iptables-save", "-c", "-t", "nat"])?;
    let rules: Vec<&str> = dump
        .lines()
        .filter(|l| l.contains(" -j MASQUERADE"))
        .collect();
    ensure!(
        !rules.is_empty(),
        "no MASQUERADE rule in the nat table of node {} (is the bridge plugin's ipMasq on?)",
        node.role
    );
    rules.into_iter().map(rule_packets).sum()
}

/// The packet count of an `iptables-save -c` rule line (`[packets:bytes] -A ...`).
pub(super) fn rule_packets(line: &str) -> Result<u64> {
    line.strip_prefix('[')
        .and_then(|r| r.split_once(':'))
        .and_then(|(p, _)| p.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("cannot read the counter of {line:?}"))
}

/// The packet counter of the rule in `node`'s filter FORWARD chain that jumps to the firewall
/// plugin's `CNI-FORWARD` chain (`iptables-save -c`: `[packets:bytes] -A FORWARD ...`).
pub(super) fn forward_to_cni_packets(node: &Node) -> Result<u64> {
    let dump = node.run_ok(["iptables-save", "-c", "-t", "filter"])?;
    dump.lines()
        .filter(|l| l.contains("-A FORWARD") && l.contains("-j CNI-FORWARD"))
        .map(rule_packets)
        .sum()
}

/// Runs the ignored BPF_PROG_RUN benchmarks of the agent's tests (through cargo, which builds
/// them if needed) and returns the numbers of their `vnetd-bench program=NAME key=value ...`
/// lines: `pod_ingress`'s at the top level, every other program's under its name.
pub(super) fn progrun_bench(runs: u32) -> Result<Value> {
    let mut cmd = crate::cargo();
    cmd.current_dir(crate::workspace_root())
        .env("VNETD_BENCH_PROGRUN_RUNS", runs.to_string())
        .args([
            "test",
            "--release",
            "--quiet",
            "-p",
            "vnetd",
            "--test",
            "progrun_bench",
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stderr(std::process::Stdio::inherit());
    let out = cmd.output().context("running cargo test (progrun_bench)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "the BPF_PROG_RUN benchmark failed ({}): {}",
        out.status,
        stdout.trim()
    );
    parse_progrun(&stdout)
}

/// The numbers of the `vnetd-bench program=NAME key=value ...` lines of `stdout`:
/// `pod_ingress`'s at the top level, every other program's under its name.
pub(super) fn parse_progrun(stdout: &str) -> Result<Value> {
    let mut report = serde_json::Map::new();
    let mut others = Vec::new();
    // A line may follow another test's progress dot on the same line.
    for line in stdout
        .lines()
        .filter_map(|l| l.find("vnetd-bench ").map(|i| &l[i..]))
    {
        let mut v = serde_json::Map::new();
        for kv in line.split_whitespace().skip(1) {
            if let Some((k, val)) = kv.split_once('=') {
                let val = val.parse::<f64>().map_or_else(|_| json!(val), |x| json!(x));
                v.insert(k.to_string(), val);
            }
        }
        ensure!(
            v.get("ns_per_run").is_some_and(Value::is_number),
            "no ns_per_run in {line:?}"
        );
        // A program measured at several NSG sizes prints a line per size: one figure each.
        let rules = v.get("nsg_rules").and_then(Value::as_f64).map(|n| n as u64);
        match (v.get("program").and_then(Value::as_str), rules) {
            (Some("pod_ingress"), None) => report.extend(v),
            (Some(name), None) => others.push((name.to_string(), Value::Object(v))),
            (Some(name), Some(n)) => others.push((format!("{name}_rules_{n}"), Value::Object(v))),
            (None, _) => bail!("no program in {line:?}"),
        }
    }
    ensure!(
        report.contains_key("ns_per_run"),
        "no `vnetd-bench program=pod_ingress` line in: {}",
        stdout.trim()
    );
    report.extend(others);
    let ns = |key: &str| report.get(key).and_then(|v| v["ns_per_run"].as_f64());
    if let (Some(one), Some(thousand)) = (
        ns(&nsg_first_packet_key(1)),
        ns(&nsg_first_packet_key(1000)),
    ) {
        report.insert(
            "nsg_first_packet_ratio_1000_over_1".into(),
            json!(thousand / one),
        );
    }
    Ok(Value::Object(report))
}

/// The rule counts per NSG the BPF_PROG_RUN benchmark measures a first packet at.
pub(super) const NSG_RULE_COUNTS: [u32; 4] = [1, 10, 100, 1000];

/// Where [`progrun_bench`]'s report keeps the first-packet cost with `rules` rules.
pub(super) fn nsg_first_packet_key(rules: u32) -> String {
    format!("pod_ingress_nsg_rules_{rules}")
}

/// Where [`progrun_bench`]'s report keeps an established flow's cost with `rules` rules
/// (the benchmark's `pod_ingress_nsg_established` line; `None`: printed without a rule count).
pub(super) fn nsg_established_key(rules: Option<u32>) -> String {
    match rules {
        Some(n) => format!("pod_ingress_nsg_established_rules_{n}"),
        None => "pod_ingress_nsg_established".into(),
    }
}

/// Where [`progrun_bench`]'s report keeps an NSG-denied first packet's cost (a flow-log record
/// every run) with the ring drained by a reader (`full` false) or full (no reader: the record
/// is counted lost).
pub(super) fn flow_log_ring_key(full: bool) -> &'static str {
    if full {
        "pod_ingress_nsg_denied_ring_full"
    } else {
        "pod_ingress_nsg_denied_ring_drained"
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::parse_progrun;

    /// What `cargo test --test progrun_bench -- --nocapture` prints (a line may follow a
    /// progress dot).
    pub(in crate::bench) const STDOUT: &str = "\nrunning 3 tests
vnetd-bench program=pod_ingress runs=1000000 ns_per_run=88.1 wall_ns_per_run=120.5
test pod_ingress_pod_to_pod ... ok
vnetd-bench program=pod_ingress_single runs=1000 ns_per_run=144.4
vnetd-bench program=pod_ingress_snat_established runs=1000 ns_per_run=191.0
vnetd-bench program=pod_ingress_nsg nsg_rules=0 classified=false runs=1000000 ns_per_run=90.0
vnetd-bench program=pod_ingress_nsg nsg_rules=1 classified=true runs=1000000 ns_per_run=100.0
vnetd-bench program=pod_ingress_nsg nsg_rules=10 classified=true runs=1000000 ns_per_run=101.0
vnetd-bench program=pod_ingress_nsg nsg_rules=100 classified=true runs=1000000 ns_per_run=104.0
.vnetd-bench program=pod_ingress_nsg nsg_rules=1000 classified=true runs=1000000 ns_per_run=130.0
";

    /// Tcp and TcpExt counters by name, other groups left out.
    #[test]
    fn tcp_stats_by_group_and_name() {
        let snmp = "Ip: Forwarding InReceives\nIp: 1 5\nTcp: RtoAlgorithm RetransSegs\nTcp: 1 42\n";
        let netstat = "TcpExt: SyncookiesSent TCPDSACKRecvSegs TCPOFOQueue\n\
                       TcpExt: 0 7 9\nIpExt: InNoRoutes\nIpExt: 3\n";
        let c = super::parse_tcp_stats(&[snmp, netstat]);
        assert_eq!(c["Tcp:RetransSegs"], 42);
        assert_eq!(c["TcpExt:TCPDSACKRecvSegs"], 7);
        assert_eq!(c["TcpExt:TCPOFOQueue"], 9);
        assert!(!c.contains_key("Ip:InReceives") && !c.contains_key("IpExt:InNoRoutes"));
    }

    /// Each rule count of the NSG benchmark is a figure of its own, not the last one seen.
    #[test]
    fn progrun_keeps_each_nsg_rule_count() {
        let v = parse_progrun(STDOUT).unwrap();
        assert_eq!(v["ns_per_run"], 88.1);
        assert_eq!(v["pod_ingress_snat_established"]["ns_per_run"], 191.0);
        for (rules, ns) in [
            (0, 90.0),
            (1, 100.0),
            (10, 101.0),
            (100, 104.0),
            (1000, 130.0),
        ] {
            assert_eq!(
                v[format!("pod_ingress_nsg_rules_{rules}")]["ns_per_run"],
                ns,
                "{rules} rules in {v:#}"
            );
        }
        assert_eq!(v["nsg_first_packet_ratio_1000_over_1"], 1.3);
        assert!(v.get("nsg_established_ns_per_run").is_none());
    }

    /// The flow-log ring's two lines are figures of their own.
    #[test]
    fn progrun_reads_the_flow_log_ring_costs() {
        let stdout = format!(
            "{STDOUT}vnetd-bench program=pod_ingress_nsg_denied_ring_drained runs=1000 ns_per_run=120.5\n\
             vnetd-bench program=pod_ingress_nsg_denied_ring_full runs=1000 ns_per_run=101.5 lost=1000\n"
        );
        let v = parse_progrun(&stdout).unwrap();
        assert_eq!(
            v[super::flow_log_ring_key(false)]["ns_per_run"],
            120.5,
            "{v:#}"
        );
        assert_eq!(v[super::flow_log_ring_key(true)]["ns_per_run"], 101.5);
        assert_eq!(v[super::flow_log_ring_key(true)]["lost"], 1000.0);
    }

    /// The established-flow line, when the benchmark prints it, is read too.
    #[test]
    fn progrun_reads_the_established_flow_cost() {
        let stdout = format!(
            "{STDOUT}vnetd-bench program=pod_ingress_nsg_established nsg_rules=1000 runs=1000 ns_per_run=95.5\n"
        );
        let v = parse_progrun(&stdout).unwrap();
        assert_eq!(
            v["pod_ingress_nsg_established_rules_1000"]["ns_per_run"],
            95.5
        );
    }
}
