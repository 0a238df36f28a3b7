//! A blocking client of the agent's socket (the CNI plugin is a short-lived process; the
//! `status` command too): write one request line, read one response line.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::proto::{Request, Response};

/// Sends `request` and waits up to `timeout` for the response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    if let Err(err) = stream.write_all(&line) {
        // The agent may have answered and hung up before reading (a refusal): read why.
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(err).context("sending the request");
        }
    }
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("reading the agent's response")?;
    serde_json::from_str(&reply).with_context(|| format!("malformed response {reply:?}"))
}
