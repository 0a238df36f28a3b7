//! Serves the API socket: a root-only Unix socket, one JSON request and response per line.
//!
//! The socket is created with mode 0600 (under a umask, so it never exists with a wider mode),
//! and every client's credentials are checked (SO_PEERCRED): only uid 0 is served, whatever
//! the socket's mode says. What a client can make the agent hold is bounded: a request line of
//! [`MAX_REQUEST_BYTES`], [`MAX_CONNECTIONS`] connections, [`IDLE_TIMEOUT`] of silence (or of
//! not reading the answer) per connection. Requests are checked here, before they wait for
//! the agent's lock: names by CNI's rules, `CNI_NETNS` opened without blocking and refused
//! unless it is a pod's network namespace.
use std::{io, os::unix::fs::FileTypeExt as _, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixListener, UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{Mutex, Semaphore},
    time::timeout,
};
use tracing::{debug, warn};

use super::{
    netns::{self, NetnsError},
    proto::{CniError, Request, Response},
};
use crate::{daemon::Agent, metrics::StatusFeed};

/// The longest request line accepted. An ADD is a few hundred bytes; GC lists attachments
/// (about 100 bytes each), so this leaves room for several hundred.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Connections served at once; more are answered "try again later" and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection may stay silent before its next request, or take to read an answer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `socket` with mode 0600. A stale socket (nobody accepting) is replaced; one that a
/// running agent serves is not, nor is anything that is not a socket.
pub fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    remove_stale(socket)?;
    // bind() creates the socket file with the process's umask applied: with 0177 it is born
    // 0600, so no client can connect in a window before a chmod. The umask is process-wide;
    // the agent creates no other file while it starts.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    listener.with_context(|| format!("binding {}", socket.display()))
}

/// Fails if a running agent serves `socket` or something else than a socket is there;
/// removes a stale socket. The agent checks this before it touches the dataplane, and again
/// when it binds.
pub fn remove_stale(socket: &Path) -> Result<()> {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() => bail!(
            "{} exists and is not a socket: refusing to replace it",
            socket.display()
        ),
        Ok(_) => match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => bail!(
                "{} is served by a running agent: stop it, or give this agent its own \
                 --api-socket",
                socket.display()
            ),
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(socket)
                    .with_context(|| format!("removing the stale socket {}", socket.display()))?;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("probing {}", socket.display()));
            }
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("inspecting {}", socket.display())),
    }
    Ok(())
}

pub async fn serve(
    listener: UnixListener,
    agent: Arc<Mutex<Agent>>,
    status: StatusFeed,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .context("accepting on the API socket")?;
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(err) => {
                warn!("API connection without peer credentials: {err}");
                continue;
            }
        };
        if cred.uid() != 0 {
            warn!(
                uid = cred.uid(),
                gid = cred.gid(),
                pid = ?cred.pid(),
                "refused an API client: only uid 0 may use the API"
            );
            let refusal = CniError::new(
                CniError::PERMISSION_DENIED,
                format!(
                    "permission denied: the vnetd API serves uid 0 only (the client is uid {})",
                    cred.uid()
                ),
            );
            tokio::spawn(answer_and_close(stream, refusal));
            continue;
        }
        // Taken here, in accept order, so that the limit holds exactly.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!("refused an API client: {MAX_CONNECTIONS} connections are open");
            let busy = CniError::new(
                CniError::TRY_AGAIN_LATER,
                format!("the agent has {MAX_CONNECTIONS} API connections open: try again later"),
            );
            tokio::spawn(answer_and_close(stream, busy));
            continue;
        };
        let (agent, status) = (agent.clone(), status.clone());
        tokio::spawn(async move {
            if let Err(err) = connection(stream, agent, status).await {
                warn!("API connection: {err:#}");
            }
            drop(slot);
        });
    }
}

/// Answers a client that will not be served, then lets it finish sending its request (a
/// little of it, briefly) before closing, so that its write does not fail before it reads why.
async fn answer_and_close(stream: UnixStream, err: CniError) {
    let (read, mut write) = stream.into_split();
    let _ = timeout(IDLE_TIMEOUT, send(&mut write, &Response::Error(err))).await;
    let mut reader = BufReader::new(read);
    let _ = timeout(Duration::from_secs(1), read_line(&mut reader)).await;
}

async fn send(write: &mut OwnedWriteHalf, response: &Response) -> Result<()> {
    let mut out = serde_json::to_vec(response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// A request line as read (`None` stands for the end of the stream).
enum Line {
    Request(Vec<u8>),
    TooLarge,
}

async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> Result<Option<Line>> {
    let mut line = Vec::new();
    // One byte more than allowed, to tell a line of exactly the limit from a longer one.
    let limit = MAX_REQUEST_BYTES as u64 + 1;
    let n = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST_BYTES {
        return Ok(Some(Line::TooLarge));
    }
    Ok(Some(Line::Request(line)))
}

async fn connection(
    stream: UnixStream,
    agent: Arc<Mutex<Agent>>,
    status: StatusFeed,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = match timeout(IDLE_TIMEOUT, read_line(&mut reader)).await {
            Err(_) => {
                debug!("closing an API connection idle for {IDLE_TIMEOUT:?}");
                return Ok(());
            }
            Ok(line) => line?,
        };
        let response = match line {
            None => return Ok(()),
            Some(Line::TooLarge) => {
                warn!("refused an API request larger than {MAX_REQUEST_BYTES} bytes");
                let err = CniError::new(
                    CniError::INVALID_CONFIG,
                    format!("the request is larger than {MAX_REQUEST_BYTES} bytes"),
                );
                // The rest of the line is not read: the connection ends here.
                let _ = timeout(IDLE_TIMEOUT, send(&mut write, &Response::Error(err))).await;
                return Ok(());
            }
            Some(Line::Request(line)) => respond(&line, &agent, &status).await,
        };
        timeout(IDLE_TIMEOUT, send(&mut write, &response))
            .await
            .context("the client did not read its answer")??;
    }
}

async fn respond(line: &[u8], agent: &Mutex<Agent>, status: &StatusFeed) -> Response {
    let request = match serde_json::from_slice::<Request>(line) {
        Ok(request) => request,
        Err(err) => {
            return Response::Error(CniError::new(
                CniError::INVALID_CONFIG,
                format!("malformed API request: {err}"),
            ));
        }
    };
    debug!(?request, "API request");
    if let Err(err) = check(&request) {
        warn!(?request, error = %err, "refused an API request");
        return Response::Error(err);
    }
    let changes = matches!(
        request,
        Request::Add(_) | Request::Del(_) | Request::Gc { .. }
    );
    let mut agent = agent.lock().await;
    let response = agent.handle(request).await;
    if changes {
        status.publish(&agent);
    }
    response
}

/// What the agent refuses whatever its state: names outside CNI's rules, and a `CNI_NETNS`
/// that is not a pod's network namespace.
fn check(request: &Request) -> Result<(), CniError> {
    match request {
        Request::Add(req) => {
            req.attachment.check()?;
            check_netns(&req.netns)
        }
        Request::Check(req) => {
            req.attachment.check()?;
            check_netns(&req.netns)
        }
        Request::Del(attachment) => attachment.check(),
        Request::Gc { network, valid } => {
            if let Some(problem) = super::proto::network_name_problem(network) {
                return Err(CniError::new(CniError::INVALID_CONFIG, problem));
            }
            valid.iter().try_for_each(|attachment| attachment.check())
        }
        Request::Ready { .. } | Request::Status | Request::Flows { .. } => Ok(()),
    }
}

fn check_netns(path: &Path) -> Result<(), CniError> {
    match netns::open(path) {
        Ok(_) => Ok(()),
        Err(err @ (NetnsError::Refused { .. } | NetnsError::NotFound(_))) => Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            err.to_string(),
        )),
        Err(err) => Err(CniError::internal(&anyhow::Error::from(err))),
    }
}
