//! Serves the API socket: a root-only Unix socket, one JSON request and response per line.
use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};
use tracing::{debug, warn};

use super::proto::{ApiError, Request, Response};
use crate::daemon::Agent;

/// Binds `socket` (replacing a stale one) with mode 0600.
pub fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, agent: Arc<Mutex<Agent>>) -> Result<()> {
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .context("accepting on the API socket")?;
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(err) = connection(stream, agent).await {
                warn!("API connection: {err:#}");
            }
        });
    }
}

async fn connection(stream: UnixStream, agent: Arc<Mutex<Agent>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                debug!(?request, "API request");
                agent.lock().await.handle(request).await
            }
            Err(err) => Response::Error(ApiError::new(
                ApiError::INVALID_CONFIG,
                format!("malformed API request: {err}"),
            )),
        };
        let mut out = serde_json::to_vec(&response)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}
