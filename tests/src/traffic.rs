//! Traffic between namespaces with in-process sockets: no external tools, milliseconds per
//! check, and the far end reports which addresses it saw (how tests prove SNAT and the
//! public-address translation).
//!
//! A socket stays in the namespace it was created in, wherever it is used afterwards: the
//! helpers create sockets on a short-lived thread inside the namespace ([`Ns::tcp_listen`],
//! [`Ns::tcp_connect`], [`Ns::udp_bind`]) and then use them from ordinary threads. No thread
//! is left inside a namespace.

use crate::ns::Ns;
use anyhow::{Context, Result, anyhow, bail, ensure};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The time limit of [`tcp_echo_ok`] and [`udp_ok`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// What one echo exchange showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoReport {
    /// The client socket's own address (before any translation).
    pub client_local: SocketAddrV4,
    /// Who the server saw the client as (after SNAT: the node's primary or public address
    /// and the allocated port).
    pub server_peer: SocketAddrV4,
    /// The address the server received on (after DNAT: the pod's private address). `None`
    /// for UDP (the server listens on 0.0.0.0 and does not ask for packet info).
    pub server_local: Option<SocketAddrV4>,
    /// Where the client's answer came from (UDP: the reply's source; TCP: the connected peer).
    pub reply_from: SocketAddrV4,
    /// Round trip of the echo (TCP: after the handshake).
    pub rtt: Duration,
}

/// One client the echo server saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The client's address as seen by the server.
    pub peer: SocketAddrV4,
    /// The server's local address of the connection (TCP only).
    pub local: Option<SocketAddrV4>,
}

/// A background echo server on `0.0.0.0:<port>` in a namespace: TCP echoes every connection
/// (each on its own thread) until the client closes, UDP echoes every datagram to its sender.
/// Records who it saw. Stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    port: u16,
    ns: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

/// The lab is IPv4: sockets bound to 0.0.0.0 report IPv4 addresses (a v4-mapped v6 one would
/// be unwrapped).
fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => SocketAddrV4::new(
            a.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            a.port(),
        ),
    }
}

/// A non-blocking TCP listener in `ns` on `port` (0: any free port) and its port.
fn listen(ns: &Ns, port: u16) -> Result<(TcpListener, u16)> {
    let listener = ns.tcp_listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    Ok((listener, port))
}

/// Accepts connections until `stop`, recording each client, and serves each with `conn` on a
/// thread of its own.
fn accept_each(
    listener: TcpListener,
    stop: &Arc<AtomicBool>,
    seen: &Mutex<Vec<Seen>>,
    conn: fn(TcpStream, &AtomicBool),
) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                    peer: v4(peer),
                    local: stream.local_addr().ok().map(v4),
                });
                let stop = stop.clone();
                conns.push(std::thread::spawn(move || conn(stream, &stop)));
            }
            Err(_) => nonblocking_pause(),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

fn nonblocking_pause() {
    std::thread::sleep(Duration::from_millis(2));
}

impl EchoServer {
    /// A TCP echo server in `ns` on `port` (0: any free port, see [`EchoServer::port`]).
    pub fn tcp(ns: &Ns, port: u16) -> Result<EchoServer> {
        let (listener, port) = listen(ns, port)?;
        Self::spawn(ns, port, "echo-tcp", move |stop, seen| {
            accept_each(listener, &stop, &seen, echo_tcp_conn)
        })
    }

    /// A TCP echo server in `ns` on `port` for thousands of connections at once: one thread
    /// serves every connection (non-blocking sockets and `poll`) instead of a thread each, so
    /// the test process stays within its thread and memory budget.
    pub fn tcp_many(ns: &Ns, port: u16) -> Result<EchoServer> {
        let (listener, port) = listen(ns, port)?;
        Self::spawn(ns, port, "echo-many", move |stop, seen| {
            serve_many(listener, &stop, &seen)
        })
    }

    /// A TCP server in `ns` on `port` that reads each connection to its end and then answers
    /// with what arrived, as [`SinkReceipt`] bytes (count and hash), and closes. Unlike an
    /// echo it sends (almost) nothing back: for bulk transfers in one direction, where only the
    /// sender's path is under test (path MTU). Records its clients as the echo servers do.
    pub fn tcp_sink(ns: &Ns, port: u16) -> Result<EchoServer> {
        let (listener, port) = listen(ns, port)?;
        Self::spawn(ns, port, "sink-tcp", move |stop, seen| {
            accept_each(listener, &stop, &seen, sink_tcp_conn)
        })
    }

    /// A UDP echo server in `ns` on `port` (0: any free port).
    pub fn udp(ns: &Ns, port: u16) -> Result<EchoServer> {
        let sock = ns.udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        let port = sock.local_addr()?.port();
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        Self::spawn(ns, port, "echo-udp", move |stop, seen| {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    {
                        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                        if !s.iter().any(|x| x.peer == v4(peer)) {
                            s.push(Seen {
                                peer: v4(peer),
                                local: None,
                            });
                        }
                    }
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        })
    }

    /// Runs `serve` on a thread of its own (named `<what>-<port>`) with the server's stop flag
    /// and its record of clients.
    fn spawn(
        ns: &Ns,
        port: u16,
        what: &str,
        serve: impl FnOnce(Arc<AtomicBool>, Arc<Mutex<Vec<Seen>>>) + Send + 'static,
    ) -> Result<EchoServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{what}-{port}"))
            .spawn(move || serve(stop2, seen2))
            .with_context(|| format!("spawning the {what} server thread"))?;
        Ok(EchoServer {
            port,
            ns: ns.name.clone(),
            stop,
            seen,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The clients seen so far, in order (UDP: each source address once).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until at least `n` clients were seen.
    pub fn wait_seen(&self, n: usize, timeout: Duration) -> bool {
        crate::wait_for(timeout, || self.seen().len() >= n)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("vnetd-lab: echo server in {} panicked", self.ns);
        }
    }
}

fn echo_tcp_conn(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// The loop of [`EchoServer::tcp_many`]: accepts and echoes on non-blocking sockets, waiting
/// in `poll` (50 ms at most, to notice `stop`).
fn serve_many(listener: TcpListener, stop: &AtomicBool, seen: &Mutex<Vec<Seen>>) {
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(conns.iter().map(AsRawFd::as_raw_fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if ready <= 0 {
            continue;
        }
        let readable: Vec<bool> = fds[1..].iter().map(|p| p.revents != 0).collect();
        let mut keep = readable.iter();
        conns.retain_mut(|stream| {
            if !keep.next().copied().unwrap_or(false) {
                return true;
            }
            match stream.read(&mut buf) {
                Ok(0) => false,
                Ok(n) => write_all_nonblocking(stream, &buf[..n]).is_ok(),
                Err(e) => e.kind() == ErrorKind::WouldBlock,
            }
        });
        if fds[0].revents != 0 {
            while let Ok((stream, peer)) = listener.accept() {
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                    peer: v4(peer),
                    local: stream.local_addr().ok().map(v4),
                });
                if stream.set_nonblocking(true).is_ok() {
                    conns.push(stream);
                }
            }
        }
    }
}

/// `write_all` on a non-blocking socket: the echoes are small, so a full send buffer is rare
/// and short; waiting for it in place keeps the loop simple.
fn write_all_nonblocking(stream: &mut TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a [`EchoServer::tcp_sink`] received on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkReceipt {
    pub bytes: u64,
    /// FNV-1a over the bytes, so a corrupted or reordered stream does not pass.
    pub hash: u64,
}

impl SinkReceipt {
    const LEN: usize = 16;

    fn of(data: &[u8]) -> SinkReceipt {
        let mut r = SinkReceipt {
            bytes: 0,
            hash: FNV_OFFSET,
        };
        r.add(data);
        r
    }

    fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for b in data {
            self.hash = (self.hash ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
        }
    }

    fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.bytes.to_be_bytes());
        out[8..].copy_from_slice(&self.hash.to_be_bytes());
        out
    }

    fn from_bytes(b: [u8; Self::LEN]) -> SinkReceipt {
        SinkReceipt {
            bytes: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            hash: u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn sink_tcp_conn(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut receipt = SinkReceipt::of(&[]);
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => {
                let _ = stream.write_all(&receipt.to_bytes());
                return;
            }
            Ok(n) => receipt.add(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Sends `len` bytes of a pattern on `stream` to an [`EchoServer::tcp_sink`], closes the
/// sending side and checks the receipt: every byte arrived, in order. Fails if that does not
/// happen within `timeout`.
pub fn sink_transfer(stream: &mut TcpStream, len: usize, timeout: Duration) -> Result<()> {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    stream
        .write_all(&data)
        .with_context(|| format!("sending {len} bytes"))?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .context("closing the sending side")?;
    let mut receipt = [0u8; SinkReceipt::LEN];
    stream
        .read_exact(&mut receipt)
        .with_context(|| format!("reading the sink's receipt within {timeout:?}"))?;
    let got = SinkReceipt::from_bytes(receipt);
    let sent = SinkReceipt::of(&data);
    ensure!(got == sent, "the sink received {got:?}, {sent:?} was sent");
    Ok(())
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn payload(kind: &str, dst: SocketAddr) -> Vec<u8> {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "vnetd-lab {kind} echo to {dst} #{} {t} {}",
        NONCE.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
    .into_bytes()
}

/// Sends `payload` on an open connection and reads the same bytes back (from an
/// [`EchoServer`]); returns the round trip. For tests that keep a connection across a change
/// (an NSG edit must not break established flows).
pub fn tcp_roundtrip(
    stream: &mut TcpStream,
    payload: &[u8],
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(payload).context("sending")?;
    let mut back = vec![0u8; payload.len()];
    stream
        .read_exact(&mut back)
        .with_context(|| format!("reading the echo within {timeout:?}"))?;
    ensure!(back == payload, "the echo differs from what was sent");
    Ok(start.elapsed())
}

/// A TCP connection from a namespace to an [`EchoServer`], echoing numbered messages without
/// pause on its own thread and counting the bytes that came back; the first error stops it and
/// is kept. For tests that change something under running traffic (an agent killed and
/// restarted, a spec reloaded) and check that an established connection lives through it.
/// Dropping it stops the thread without waiting for it.
pub struct EchoStream {
    echoed: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    what: String,
}

impl EchoStream {
    /// Connects from `client` to `dst` (3 s to connect) and starts echoing.
    pub fn start(client: &Ns, dst: SocketAddr) -> Result<EchoStream> {
        let mut conn = client.tcp_connect(dst, Duration::from_secs(3))?;
        let what = format!("the stream from {} to {dst}", client.role);
        let (echoed, error, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(Mutex::new(None)),
            Arc::new(AtomicBool::new(false)),
        );
        let (echoed2, error2, stop2) = (echoed.clone(), error.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let msg = format!("message {n:>10} {}", "x".repeat(200));
                match tcp_roundtrip(&mut conn, msg.as_bytes(), Duration::from_secs(5)) {
                    Ok(_) => echoed2.fetch_add(msg.len() as u64, Ordering::Relaxed),
                    Err(e) => {
                        *error2.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("message {n}: {e:#}"));
                        return;
                    }
                };
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Ok(EchoStream {
            echoed,
            error,
            stop,
            thread: Some(thread),
            what,
        })
    }

    /// The bytes echoed back so far.
    pub fn bytes(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// The error that stopped the stream, if one did.
    pub fn check(&self) -> Result<()> {
        match &*self.error.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => bail!("{} broke: {e}", self.what),
            None => Ok(()),
        }
    }

    /// Waits up to `timeout` for more than `more` bytes beyond `from` to come back; an error
    /// names the stream, how far it got, and why it stopped if it did.
    pub fn advances(&self, from: u64, more: u64, timeout: Duration) -> Result<()> {
        let advanced = crate::wait_for(timeout, || self.bytes() > from + more);
        self.check()?;
        ensure!(
            advanced,
            "{}: {} bytes echoed after {timeout:?}, no more than {from} + {more}",
            self.what,
            self.bytes()
        );
        Ok(())
    }

    /// Stops the stream and waits for its thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EchoStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One TCP echo from `client` to `ip:port`, served by a fresh [`EchoServer`] in `server`.
/// Fails if the connection or the echo does not complete within `timeout`.
pub fn tcp_echo(
    client: &Ns,
    server: &Ns,
    ip: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<EchoReport> {
    let dst = SocketAddr::from((ip, port));
    let what = || {
        format!(
            "tcp echo from netns {} to {dst} (server in netns {})",
            client.name, server.name
        )
    };
    let srv = EchoServer::tcp(server, port).with_context(what)?;
    let deadline = Instant::now() + timeout;
    let (client_local, reply_from, rtt) = (|| -> Result<_> {
        let mut stream = client.tcp_connect(dst, timeout)?;
        let local = v4(stream.local_addr()?);
        let peer = v4(stream.peer_addr()?);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let rtt = tcp_roundtrip(&mut stream, &payload("tcp", dst), left)?;
        Ok((local, peer, rtt))
    })()
    .with_context(what)?;
    let seen = srv.seen();
    let first = seen
        .first()
        .ok_or_else(|| anyhow!("{}: the server saw no connection", what()))?;
    Ok(EchoReport {
        client_local,
        server_peer: first.peer,
        server_local: first.local,
        reply_from,
        rtt,
    })
}

/// [`tcp_echo`] with [`DEFAULT_TIMEOUT`], for "this must work" checks (and `is_err()` for
/// "this must not").
pub fn tcp_echo_ok(client: &Ns, server: &Ns, ip: Ipv4Addr, port: u16) -> Result<()> {
    tcp_echo(client, server, ip, port, DEFAULT_TIMEOUT).map(|_| ())
}

/// Sends a datagram from `client` to an echo server at `dst` and waits for the echo, sending
/// up to three times within `timeout` (a first packet may be lost while a neighbour resolves).
/// Returns (client local address, reply source, round trip).
pub fn udp_roundtrip(
    client: &Ns,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<(SocketAddrV4, SocketAddrV4, Duration)> {
    udp_roundtrip_sized(client, dst, 0, timeout)
}

/// [`udp_roundtrip`] with a datagram of at least `size` bytes (padded): larger than the path's
/// MTU, it leaves the client in fragments, and so does its echo.
pub fn udp_roundtrip_sized(
    client: &Ns,
    dst: SocketAddr,
    size: usize,
    timeout: Duration,
) -> Result<(SocketAddrV4, SocketAddrV4, Duration)> {
    let sock = client.udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    let mut msg = payload("udp", dst);
    let pad = size.saturating_sub(msg.len());
    msg.extend((0..pad).map(|i| b'a' + (i % 26) as u8));
    let per_try = (timeout / 3).max(Duration::from_millis(50));
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let start = Instant::now();
        sock.send_to(&msg, dst)
            .with_context(|| format!("sending a datagram to {dst}"))?;
        let try_end = (start + per_try).min(deadline);
        loop {
            let left = try_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if buf[..n] == msg[..] => {
                    return Ok((v4(sock.local_addr()?), v4(from), start.elapsed()));
                }
                // Something else (a late echo of an earlier try): keep waiting.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                // ICMP unreachable shows up as ECONNREFUSED etc. on some paths: a real failure.
                Err(e) => {
                    return Err(e).with_context(|| format!("waiting for the echo from {dst}"));
                }
            }
        }
    }
    bail!("no udp echo from {dst} within {timeout:?}")
}

/// One UDP echo from `client` to `ip:port`, served by a fresh [`EchoServer`] in `server`.
pub fn udp_echo(
    client: &Ns,
    server: &Ns,
    ip: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<EchoReport> {
    let dst = SocketAddr::from((ip, port));
    let what = || {
        format!(
            "udp echo from netns {} to {dst} (server in netns {})",
            client.name, server.name
        )
    };
    let srv = EchoServer::udp(server, port).with_context(what)?;
    let (client_local, reply_from, rtt) = udp_roundtrip(client, dst, timeout).with_context(what)?;
    let seen = srv.seen();
    let first = seen
        .first()
        .ok_or_else(|| anyhow!("{}: the server saw no datagram", what()))?;
    Ok(EchoReport {
        client_local,
        server_peer: first.peer,
        server_local: None,
        reply_from,
        rtt,
    })
}

/// [`udp_echo`] with [`DEFAULT_TIMEOUT`].
pub fn udp_ok(client: &Ns, server: &Ns, ip: Ipv4Addr, port: u16) -> Result<()> {
    udp_echo(client, server, ip, port, DEFAULT_TIMEOUT).map(|_| ())
}

/// A plain HTTP/1.0 GET from inside `ns` (the agent's metrics listen on the node's own
/// loopback): returns the status code and the body.
pub fn http_get(ns: &Ns, addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let what = || format!("GET http://{addr}{path} from netns {}", ns.name);
    let mut stream = ns.tcp_connect(addr, timeout).with_context(what)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(what)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(what)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{}: no HTTP status in {:?}", what(), head))?;
    Ok((status, body.to_string()))
}

/// What a connect that must be refused is given: under TCP's initial retransmission timeout
/// (1 s), so exactly one SYN is sent and one attempt is one decision of the dataplane.
pub const DENIED_WAIT: Duration = Duration::from_millis(800);
/// What a connection that must work is given (connect and one echo each).
pub const ALLOWED_WAIT: Duration = Duration::from_secs(3);

/// How a connection attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and echoed.
    Echoed,
    /// Connected, but the echo failed.
    ConnectedNoEcho(String),
    /// The connect timed out: the SYN was dropped.
    TimedOut,
    /// The connect failed otherwise (reset, unreachable).
    Failed(String),
}

/// A TCP connection from `client` to `dst` and one echo on it, `wait` to connect.
pub fn attempt(client: &Ns, dst: SocketAddr, wait: Duration) -> Outcome {
    match client.tcp_connect(dst, wait) {
        Ok(mut stream) => {
            match tcp_roundtrip(&mut stream, format!("to {dst}").as_bytes(), ALLOWED_WAIT) {
                Ok(_) => Outcome::Echoed,
                Err(e) => Outcome::ConnectedNoEcho(format!("{e:#}")),
            }
        }
        Err(e) if timed_out(&e) => Outcome::TimedOut,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// Whether `e` is (or was caused by) a timeout.
pub fn timed_out(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == ErrorKind::TimedOut)
}

/// Checks that a connection from `client` to `dst` is refused as an NSG refuses it: dropped,
/// so the connect times out (within [`DENIED_WAIT`]): how an NSG or a closed port refuses it, with no reset.
pub fn refused(client: &Ns, dst: SocketAddr, what: &str) -> Result<()> {
    match client.tcp_connect(dst, DENIED_WAIT) {
        Err(e) if timed_out(&e) => Ok(()),
        Ok(_) => anyhow::bail!("{what}: {dst} must be dropped, it connected"),
        Err(e) => anyhow::bail!("{what}: {dst} must be dropped (a timeout), got {e:#}"),
    }
}

/// Checks that a connection from `client` to `dst` connects and echoes.
pub fn allowed(client: &Ns, dst: SocketAddr, what: &str) -> Result<()> {
    match attempt(client, dst, ALLOWED_WAIT) {
        Outcome::Echoed => Ok(()),
        other => anyhow::bail!("{what}: {dst} must connect and echo, got {other:?}"),
    }
}
