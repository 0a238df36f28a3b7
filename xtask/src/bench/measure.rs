//! The measurements: iperf3 (TCP bulk, UDP 64 B), TCP_RR over in-process sockets, the
//! counters that prove each run took the measured path, and the BPF_PROG_RUN microbenchmark.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use super::{Durations, Metric, Pair};
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use vnetd_lab::{Node, Ns};

/// The port of the one-off iperf3 server in the server pod.
const IPERF_PORT: &str = "5201";

/// What one run measured.
pub(super) struct Run {
    pub(super) values: Vec<(Metric, f64)>,
    pub(super) details: Value,
}

pub(super) fn measure(kind: &str, pair: &Pair, d: Durations) -> Result<Run> {
    match kind {
        "bulk" => {
            let before = tcp_counters(&pair.client)?;
            let j = iperf3(pair, &["-t", &d.bulk.to_string()], d.bulk)?;
            let after = tcp_counters(&pair.client)?;
            let recv = &j["end"]["sum_received"];
            let bps = recv["bits_per_second"]
                .as_f64()
                .ok_or_else(|| anyhow!("no end.sum_received in iperf3's output"))?;
            let delta = |i: usize| after[i].saturating_sub(before[i]);
            Ok(Run {
                values: vec![(Metric::TcpBulk, bps / 1e9)],
                details: json!({
                    "retransmits": j["end"]["sum_sent"]["retransmits"],
                    "sender_retrans_segs": delta(0),
                    "sender_dsack_recv_segs": delta(1),
                    "sender_sack_reorder": delta(2),
                    "cpu_utilization_percent": j["end"]["cpu_utilization_percent"],
                }),
            })
        }
        "rr" => {
            let (n, elapsed) = tcp_rr(pair, d.rr)?;
            let tps = n as f64 / elapsed.as_secs_f64();
            Ok(Run {
                values: vec![
                    (Metric::TcpRr, tps),
                    (Metric::TcpRrLatency, elapsed.as_secs_f64() * 1e6 / n as f64),
                ],
                details: json!({ "transactions": n, "seconds": elapsed.as_secs_f64() }),
            })
        }
        "udp" => {
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
                values: vec![(Metric::UdpRx, received / secs / 1e3)],
                details: json!({
                    "sent_kpps": f(sent, "packets")? / f(sent, "seconds")?.max(1e-9) / 1e3,
                    "lost_percent": recv["lost_percent"],
                    "cpu_utilization_percent": j["end"]["cpu_utilization_percent"],
                }),
            })
        }
        _ => unreachable!("unknown run kind {kind}"),
    }
}

/// The sender's view of retransmissions in `ns`: `[RetransSegs, TCPDSACKRecvSegs,
/// TCPSACKReorder]`. A retransmitted segment the receiver reports as a duplicate (DSACK) was
/// not lost: it was retransmitted because segments arrived out of order.
fn tcp_counters(ns: &Ns) -> Result<[u64; 3]> {
    // /proc/thread-self: /proc/net (= /proc/self/net) shows the main thread's namespace.
    let (snmp, netstat) = ns.in_ns(|| {
        let read = |f: &str| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                .with_context(|| format!("reading /proc/thread-self/net/{f}"))
        };
        Ok((read("snmp")?, read("netstat")?))
    })?;
    let field = |text: &str, group: &str, name: &str| -> Result<u64> {
        let mut rows = text
            .lines()
            .filter(|l| l.starts_with(&format!("{group}: ")));
        let (names, values) = (rows.next(), rows.next());
        names
            .zip(values)
            .and_then(|(n, v)| {
                let i = n.split_whitespace().position(|k| k == name)?;
                v.split_whitespace().nth(i)?.parse().ok()
            })
            .ok_or_else(|| anyhow!("no {group} {name} counter in netns {}", ns.name))
    };
    Ok([
        field(&snmp, "Tcp", "RetransSegs")?,
        field(&netstat, "TcpExt", "TCPDSACKRecvSegs")?,
        field(&netstat, "TcpExt", "TCPSACKReorder")?,
    ])
}

/// One iperf3 run: a one-off server in the server pod, the client (JSON output) in the client
/// pod. Returns the client's JSON.
fn iperf3(pair: &Pair, args: &[&str], secs: u32) -> Result<Value> {
    let server = pair
        .server
        .spawn(["iperf3", "-s", "-1", "-p", IPERF_PORT, "--forceflush"])?;
    server
        .wait_for_output("Server listening", Duration::from_secs(10))
        .context("waiting for the iperf3 server")?;
    let ip = pair.server_ip.to_string();
    let mut cmd = vec!["iperf3", "-c", &ip, "-p", IPERF_PORT, "-J"];
    cmd.extend_from_slice(args);
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

/// TCP request/response: one connection, 1 byte each way, as many round trips as fit in
/// `dur`. Returns (transactions, elapsed).
fn tcp_rr(pair: &Pair, dur: Duration) -> Result<(u64, Duration)> {
    let listener = pair
        .server
        .tcp_listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    let port = listener.local_addr()?.port();
    // Non-blocking accept with a deadline: the thread must end even if the client never comes.
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || -> Result<u64> {
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
    let client = (|| -> Result<(u64, Duration)> {
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
        while start.elapsed() < dur {
            ping(&mut c)?;
            n += 1;
        }
        Ok((n, start.elapsed()))
    })();
    let served = server
        .join()
        .map_err(|_| anyhow!("the TCP_RR server thread panicked"))?;
    let (n, elapsed) = client?;
    let served = served?;
    ensure!(
        served == n + 200,
        "the server answered {served} requests, the client counted {}",
        n + 200
    );
    ensure!(n > 0, "no transaction completed");
    Ok((n, elapsed))
}

/// The packet counter of the rule in `node`'s filter FORWARD chain that jumps to the firewall
/// plugin's `CNI-FORWARD` chain (`iptables-save -c`: `[packets:bytes] -A FORWARD ...`).
pub(super) fn forward_to_cni_packets(node: &Node) -> Result<u64> {
    let dump = node.run_ok(["iptables-save", "-c", "-t", "filter"])?;
    dump.lines()
        .filter(|l| l.contains("-A FORWARD") && l.contains("-j CNI-FORWARD"))
        .map(|l| {
            l.strip_prefix('[')
                .and_then(|r| r.split_once(':'))
                .and_then(|(p, _)| p.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("cannot read the counter of {l:?}"))
        })
        .sum()
}

/// Runs the ignored BPF_PROG_RUN benchmark of the agent's tests (through cargo, which builds
/// it if needed) and returns the numbers of its `vnetd-bench key=value ...` line.
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
    let line = stdout
        .lines()
        .find(|l| l.starts_with("vnetd-bench "))
        .ok_or_else(|| anyhow!("no `vnetd-bench` line in: {}", stdout.trim()))?;
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
    Ok(Value::Object(v))
}
