//! Hot reload: re-apply the spec when its file changes. Editors and `mv` replace the file
//! rather than write it, so the watch is on the directory, filtered to the file's name.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{Mutex, mpsc};
use tracing::{error, info, warn};

use crate::{daemon::Agent, plan::NodePlan, spec};

/// Watches `spec_path` and applies every valid new version to `agent`; an invalid one is
/// refused with its problems logged, and the running configuration stays.
pub async fn watch(spec_path: PathBuf, node: String, agent: Arc<Mutex<Agent>>) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let name = spec_path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Access events include the agent's own reads of the spec: reacting to them would
        // reload again and again.
        if let Ok(event) = event
            && !event.kind.is_access()
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
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
    while rx.recv().await.is_some() {
        // Let a burst of events (write, rename, chmod) settle into one reload.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        apply(&spec_path, &node, &agent).await;
    }
    Ok(())
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
