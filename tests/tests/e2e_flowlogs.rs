//! End to end: flow logs (issue 10). After known traffic between two pods of `apps` on one node
//! (an allowed TCP connection, a denied one, a UDP exchange), `vnetd flows --json` shows each
//! flow's B record with its tuple, decision and the deciding rule by name, and the allowed
//! flows' E records (once the collector expires them) with counts that match what was sent.
//! Needs root.
//!
//! The agent's collector runs every 300 ms and expires every flow after 1.5 s idle
//! (`VNETD_GC_INTERVAL_MS`, `VNETD_GC_TIMEOUT_MS`: test-only), so E records come in seconds.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use vnetd_lab::{
    EchoServer, Lab, serial,
    vnetd::{Agent, NsgRule, add_pod, bin, lab_spec, node_cidr, with_nsg},
    wait_for,
};

const WEB_PORT: u16 = 8080;
const DB_PORT: u16 = 5432;
const DNS_PORT: u16 = 5353;
/// Bytes a frame adds to a UDP payload as the programs count it (Ethernet, IPv4, UDP).
const UDP_FRAME_OVERHEAD: u64 = 14 + 20 + 8;

/// `vnetd flows --json` of `agent`: one record per line.
fn flows(agent: &Agent) -> Result<Vec<Value>> {
    let out = std::process::Command::new(bin("vnetd"))
        .args(["flows", "--json", "--api-socket"])
        .arg(&agent.node.api_socket)
        .output()
        .context("running vnetd flows")?;
    if !out.status.success() {
        bail!("vnetd flows: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout)?
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("a record line {line:?}")))
        .collect()
}

/// The records of the flow to `dst:dport` over `proto` (`T` or `U`), in state `state`.
fn of<'a>(
    records: &'a [Value],
    dst: Ipv4Addr,
    dport: u16,
    proto: &str,
    state: &str,
) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            r["dst_ip"] == dst.to_string()
                && r["dst_port"] == dport
                && r["protocol"] == proto
                && r["state"] == state
        })
        .collect()
}

fn field(r: &Value, name: &str) -> u64 {
    r[name].as_u64().unwrap_or(u64::MAX)
}

/// (direction, decision, nsg, rule) of a record.
fn decided(r: &Value) -> (String, String, String, String) {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    (s("direction"), s("decision"), s("nsg"), s("rule"))
}

fn expect(direction: &str, decision: &str, rule: &str) -> (String, String, String, String) {
    (
        direction.into(),
        decision.into(),
        "apps-nsg".into(),
        rule.into(),
    )
}

#[test]
fn known_traffic_shows_b_and_e_records_with_tuples_rules_and_counts() -> Result<()> {
    let _serial = serial();
    let spec = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        &[
            NsgRule::allow_in("allow-web-in", 100)
                .tcp()
                .ports([WEB_PORT]),
            NsgRule::deny_in("deny-db-in", 110).tcp().ports([DB_PORT]),
            NsgRule::allow_in("allow-dns-in", 120)
                .udp()
                .ports([DNS_PORT]),
        ],
    );
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start_with_env(
        &node,
        &spec,
        vec![
            ("VNETD_GC_INTERVAL_MS".into(), "300".into()),
            ("VNETD_GC_TIMEOUT_MS".into(), "1500".into()),
        ],
    )?;
    let client = add_pod(&lab, &node, "client", Some("apps"), "")?;
    let server = add_pod(&lab, &node, "server", Some("apps"), "")?;

    // An allowed TCP connection: 1000 bytes echoed, then closed by both ends.
    let _web = EchoServer::tcp(&server, WEB_PORT)?;
    let web_dst = SocketAddr::from((server.ip, WEB_PORT));
    let payload = vec![b'w'; 1000];
    {
        let mut stream = client.tcp_connect(web_dst, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(&payload)?;
        let mut echoed = vec![0u8; payload.len()];
        stream.read_exact(&mut echoed).context("the web echo")?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest)?;
    }

    // A denied TCP connection: its one SYN is dropped, the connect times out.
    let _db = EchoServer::tcp(&server, DB_PORT)?;
    let db = client.tcp_connect(
        SocketAddr::from((server.ip, DB_PORT)),
        Duration::from_millis(800),
    );
    ensure!(db.is_err(), "the database port must be refused");

    // A UDP exchange: 5 datagrams of 100 bytes, each echoed.
    let _dns = EchoServer::udp(&server, DNS_PORT)?;
    let (datagrams, size) = (5u64, 100usize);
    let udp_client = {
        let sock = client.udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        let dst = SocketAddr::from((server.ip, DNS_PORT));
        let mut buf = [0u8; 2048];
        for i in 0..datagrams {
            sock.send_to(&vec![b'0' + i as u8; size], dst)?;
            let (n, _) = sock.recv_from(&mut buf).context("a UDP echo")?;
            ensure!(n == size, "echoed {n} bytes of {size}");
        }
        sock.local_addr()?.port()
    };

    // The allowed flows end (idle past the test timeout) and get their E records.
    let mut records = Vec::new();
    let ended = wait_for(Duration::from_secs(20), || {
        records = flows(&agent).unwrap_or_default();
        !of(&records, server.ip, WEB_PORT, "T", "E").is_empty()
            && !of(&records, server.ip, DNS_PORT, "U", "E").is_empty()
    });
    let dump = || {
        records
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    ensure!(
        ended,
        "no E records for both flows within 20 s:\n{}",
        dump()
    );

    // TCP allowed: B at the client's outbound NSG and the server's inbound one.
    let web_b = of(&records, server.ip, WEB_PORT, "T", "B");
    let mut sides: Vec<_> = web_b.iter().map(|r| decided(r)).collect();
    sides.sort();
    assert_eq!(
        sides,
        [
            expect("I", "A", "allow-web-in"),
            expect("O", "A", "AllowVnetOutBound")
        ],
        "{}",
        dump()
    );
    for r in &web_b {
        assert_eq!(r["src_ip"], client.ip.to_string());
        assert_eq!(field(r, "packets_out"), 0, "a B record has no counts");
    }
    let web_e = of(&records, server.ip, WEB_PORT, "T", "E");
    assert_eq!(web_e.len(), 2, "one E per deciding NSG: {}", dump());
    for r in &web_e {
        assert_eq!(r["src_ip"], client.ip.to_string());
        assert_eq!(r["src_port"], web_b[0]["src_port"]);
        // SYN, the data, its ACKs, FIN: at least 3 packets each way, the payload both ways.
        assert!(field(r, "packets_out") >= 3, "{r}");
        assert!(field(r, "packets_in") >= 3, "{r}");
        assert!(
            field(r, "bytes_out") >= payload.len() as u64 + 3 * 54,
            "{r}"
        );
        assert!(field(r, "bytes_in") >= payload.len() as u64 + 3 * 54, "{r}");
        assert!(field(r, "bytes_out") < 20_000, "{r}");
    }

    // TCP denied: one B record, denied by the server's inbound rule; no flow, so no E.
    let db_b = of(&records, server.ip, DB_PORT, "T", "B");
    assert_eq!(
        db_b.iter().map(|r| decided(r)).collect::<Vec<_>>(),
        [expect("I", "D", "deny-db-in")],
        "{}",
        dump()
    );
    assert_eq!(db_b[0]["src_ip"], client.ip.to_string());
    assert!(of(&records, server.ip, DB_PORT, "T", "E").is_empty());

    // UDP: B and E with exact counts.
    let dns_b = of(&records, server.ip, DNS_PORT, "U", "B");
    let mut sides: Vec<_> = dns_b.iter().map(|r| decided(r)).collect();
    sides.sort();
    assert_eq!(
        sides,
        [
            expect("I", "A", "allow-dns-in"),
            expect("O", "A", "AllowVnetOutBound")
        ],
        "{}",
        dump()
    );
    let dns_e = of(&records, server.ip, DNS_PORT, "U", "E");
    let frame = size as u64 + UDP_FRAME_OVERHEAD;
    for r in &dns_e {
        assert_eq!(r["src_port"], udp_client, "{r}");
        assert_eq!(
            (
                field(r, "packets_out"),
                field(r, "bytes_out"),
                field(r, "packets_in"),
                field(r, "bytes_in")
            ),
            (datagrams, datagrams * frame, datagrams, datagrams * frame),
            "{r}"
        );
    }

    // Nothing was lost, and the metric says so.
    let metrics = agent.metrics()?;
    assert!(
        metrics
            .lines()
            .any(|l| l == "vnetd_flow_records_lost_total 0"),
        "{metrics}"
    );
    Ok(())
}

/// Packets a status report counts as dropped for `reason`.
fn drops(status: &Value, reason: &str) -> u64 {
    status["drops"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r[0] == reason))
        .and_then(|r| r[1].as_u64())
        .unwrap_or(0)
}

/// Records `FLOW_EVENTS` holds at most: each is a [`vnetd_common::FlowEvent`] behind the
/// ring's 8-byte header.
fn ring_records() -> usize {
    vnetd_common::maps::FLOW_EVENTS_BYTES as usize / (size_of::<vnetd_common::FlowEvent>() + 8)
}

/// A UDP receiver in its own thread: records which datagram numbers (a big-endian u32 each)
/// arrived on `sock`, until stopped.
struct Receiver {
    got: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<bool>>,
}

impl Receiver {
    fn start(sock: UdpSocket, expected: usize) -> Result<Receiver> {
        // Room for every datagram even if the thread falls behind (root may exceed rmem_max).
        let size: libc::c_int = 64 << 20;
        // SAFETY: setsockopt on an open socket with a c_int the call reads for its duration.
        let ret = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            ret == 0,
            "SO_RCVBUFFORCE: {}",
            std::io::Error::last_os_error()
        );
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (got, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (got, stop) = (got.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = vec![false; expected];
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = sock.recv(&mut buf) else { continue };
                    if n == 4 {
                        let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        if let Some(slot) = seen.get_mut(i).filter(|s| !**s) {
                            *slot = true;
                            got.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                seen
            })
        };
        Ok(Receiver { got, stop, thread })
    }

    fn got(&self) -> usize {
        self.got.load(Ordering::Relaxed)
    }

    /// Stops the thread; the numbers that did not arrive.
    fn missing(self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.join().expect("the receiver thread panicked");
        seen.iter()
            .enumerate()
            .filter(|(_, s)| !**s)
            .map(|(i, _)| i)
            .collect()
    }
}

/// A flow-log reader that is away never slows or blocks the dataplane (issue 10). With the
/// agent stopped (SIGSTOP: its dataplane runs on, nobody reads the ring), a client pod sends
/// one UDP datagram from each of thousands of source ports through `apps-nsg`, each a new
/// flow and so a flow-log record: more records than the ring holds. Every allowed datagram
/// arrives, every denied one is refused; once the agent is continued, the records the ring
/// had no room for are counted in `status --json` and `/metrics`. (How fast the program runs
/// with a full ring is measured, not asserted: agent/tests/progrun_bench.rs.)
#[test]
fn with_the_reader_stopped_every_flow_passes_and_the_lost_records_are_counted() -> Result<()> {
    const ALLOWED_PORT: u16 = 6000;
    const DENIED_PORT: u16 = 6001;
    /// The client's first source port; each datagram has one of its own.
    const FIRST_PORT: u16 = 10000;
    let ring = ring_records();
    let (allowed, denied) = (ring + 4000, 1000);
    let _serial = serial();
    let spec = with_nsg(
        &lab_spec(),
        "apps-nsg",
        &["apps"],
        &[
            NsgRule::allow_in("allow-bulk-in", 100)
                .udp()
                .ports([ALLOWED_PORT]),
            NsgRule::deny_in("deny-bulk-in", 110)
                .udp()
                .ports([DENIED_PORT]),
        ],
    );
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, &spec)?;
    let client = add_pod(&lab, &node, "client", Some("apps"), "")?;
    let server = add_pod(&lab, &node, "server", Some("apps"), "")?;
    let receiver = Receiver::start(
        server.udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, ALLOWED_PORT)))?,
        allowed,
    )?;
    let refused = Receiver::start(
        server.udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, DENIED_PORT)))?,
        denied,
    )?;
    let status = agent.status()?;
    let lost_before = status["flow_records_lost"]
        .as_u64()
        .context("flow_records_lost")?;
    let denied_before = drops(&status, "nsg_denied");

    let paused = agent.pause()?;
    let (server_ip, got) = (server.ip, receiver.got.clone());
    let sent = client.in_ns(move || {
        // Datagram `n` to `dport`, from the `k`-th source port: a new flow each.
        let send = |k: usize, n: usize, dport: u16| -> Result<()> {
            let sport = FIRST_PORT + u16::try_from(k)?;
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, sport))
                .with_context(|| format!("binding source port {sport}"))?;
            sock.send_to(&u32::try_from(n)?.to_be_bytes(), (server_ip, dport))
                .with_context(|| format!("sending from port {sport}"))?;
            Ok(())
        };
        // Paced by the receiver, so that a datagram can only go missing in the dataplane (once
        // one is missing, the rest go unpaced: the test fails anyway, without waiting).
        let mut paced = true;
        for i in 0..allowed {
            send(i, i, ALLOWED_PORT)?;
            if paced && i % 500 == 499 {
                paced = wait_for(Duration::from_secs(2), || got.load(Ordering::Relaxed) > i);
            }
        }
        for j in 0..denied {
            send(allowed + j, j, DENIED_PORT)?;
        }
        Ok(allowed + denied)
    })?;
    ensure!(
        wait_for(Duration::from_secs(5), || receiver.got() == allowed),
        "{} of {allowed} allowed datagrams arrived",
        receiver.got()
    );
    // The denied ones had as long as the allowed ones took to arrive.
    std::thread::sleep(Duration::from_millis(300));
    drop(paused);

    let missing = receiver.missing();
    assert!(
        missing.is_empty(),
        "{} allowed datagrams went missing with the reader stopped, the first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        refused.missing().len(),
        denied,
        "every denied datagram was refused"
    );
    // The ring held at most `ring` records of the `sent` new flows and refusals.
    let must_lose = (sent - ring) as u64;
    let mut status = Value::Null;
    let counted = wait_for(Duration::from_secs(10), || {
        status = agent.status().unwrap_or_default();
        status["flow_records_lost"].as_u64() >= Some(lost_before + must_lose)
    });
    ensure!(
        counted,
        "flow_records_lost did not move by {must_lose} from {lost_before}: {}",
        status["flow_records_lost"]
    );
    assert!(
        drops(&status, "nsg_denied") >= denied_before + denied as u64,
        "the denied datagrams were dropped by the NSG: {}",
        status["drops"]
    );
    let lost = status["flow_records_lost"].as_u64().unwrap_or_default();
    let mut metrics = String::new();
    let exported = wait_for(Duration::from_secs(10), || {
        metrics = agent.metrics().unwrap_or_default();
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix("vnetd_flow_records_lost_total "))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .any(|v| v as u64 >= lost)
    });
    ensure!(
        exported,
        "vnetd_flow_records_lost_total never reached {lost}: {:?}",
        metrics
            .lines()
            .filter(|l| l.contains("flow_records_lost"))
            .collect::<Vec<_>>()
    );
    Ok(())
}
