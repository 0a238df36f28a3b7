//! Hot reload: re-apply the spec when its file changes. Editors and `mv` replace the file
//! rather than write it, so the watch is on the directory. Kubernetes updates a ConfigMap volume
//! without touching the spec's own name: `spec.yaml` is a symlink to `..data/spec.yaml`, and
//! kubelet writes the new version into a new directory and renames a new `..data` symlink over
//! the old one. So any change in the directory makes the watch read the spec again, and
//! compare its content with the last version read: a change applies it, an unchanged spec is
//! left alone (the ConfigMap's other keys, the agent's own files). An event that names the
//! spec itself always applies it, as before: writing the same spec again retries it.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, error, info, warn};

use crate::{daemon::Agent, plan::NodePlan, spec};

/// What a directory event says about the spec.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Touched {
    /// Something else in the directory changed (a ConfigMap's `..data` swap, say): the spec's
    /// content may have changed behind the same name.
    Directory,
    /// The spec's own name was written, replaced or removed.
    Spec,
}

/// Watches `spec_path` and applies every valid new version to `agent`; an invalid one is
/// refused with its problems logged, and the running configuration stays. `started_from` is
/// the text the agent started with: a change between that read and the watch is not missed.
pub async fn watch(
    spec_path: PathBuf,
    node: String,
    agent: Arc<Mutex<Agent>>,
    started_from: Option<String>,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let name = spec_path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Access events include the agent's own reads of the spec: reacting to them would
        // read again and again.
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            let touched = if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
                Touched::Spec
            } else {
                Touched::Directory
            };
            let _ = tx.send(touched);
        }
    })
    .context("creating the spec file watcher")?;
    let dir = spec_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let mut last_read = started_from;
    if last_read.is_some() && read(&spec_path) != last_read {
        info!(spec = %spec_path.display(), "the spec changed while the agent started");
        last_read = read(&spec_path);
        apply(&spec_path, &node, &agent).await;
    }
    while let Some(first) = rx.recv().await {
        // Let a burst of events (write, rename, chmod; a ConfigMap's new directory, symlink
        // and rename) settle into one reload.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut touched = first;
        while let Ok(more) = rx.try_recv() {
            touched = touched.max(more);
        }
        let now = read(&spec_path);
        let changed = now != last_read;
        last_read = now;
        if touched == Touched::Spec || changed {
            apply(&spec_path, &node, &agent).await;
        } else {
            debug!(dir = %dir.display(), "a change beside the spec; the spec is unchanged");
        }
    }
    Ok(())
}

/// The spec's text through any symlinks, `None` when it cannot be read (then `apply` reports
/// why).
fn read(spec_path: &Path) -> Option<String> {
    std::fs::read_to_string(spec_path).ok()
}

async fn apply(spec_path: &Path, node: &str, agent: &Mutex<Agent>) {
    let plan = match spec::load_file(spec_path) {
        Ok(spec) => NodePlan::from_spec(&spec, node),
        Err(problems) => {
            for p in &problems {
                warn!("{p}");
            }
            error!(
                problems = problems.len(),
                "spec reload refused: {} is invalid; the running configuration stays",
                spec_path.display()
            );
            agent.lock().await.count_reload(false);
            return;
        }
    };
    let mut agent = agent.lock().await;
    let applied = match plan {
        Ok(plan) => agent.reload(plan).await,
        Err(err) => Err(err),
    };
    match applied {
        Ok(()) => {
            info!("spec reloaded");
            agent.count_reload(true);
        }
        Err(err) => {
            error!("spec reload refused: {err:#}; the running configuration stays");
            agent.count_reload(false);
        }
    }
}
