//! Hot reload: re-apply the spec when its file changes. Editors and `mv` replace the file
//! rather than write it, so the watch is on the directory. Kubernetes updates a ConfigMap volume
//! without touching the spec's own name: `spec.yaml` is a symlink to `..data/spec.yaml`, and
//! kubelet writes the new version into a new directory and renames a new `..data` symlink over
//! the old one. So any change in the directory makes the watch read the spec again, and
//! compare its content with the last version read: a change applies it, an unchanged spec is
//! left alone (the ConfigMap's other keys, the agent's own files). An event that names the
//! spec itself always applies it, as before: writing the same spec again retries it.
//!
//! A change is applied as soon as the file is complete: a rename into the directory (editors,
//! `mv`, kubelet's `..data` swap) or the close of a write to the spec itself. A write still in progress (created, truncated,
//! written) is given [`SETTLE`] without events before the spec is read, as before. Events that
//! arrive while a spec is applied coalesce into one more apply, at most one per
//! [`MIN_INTERVAL`], which reads the last version written.
use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
};
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, error, info, warn};

use crate::{daemon::Agent, plan::NodePlan, spec};

/// How long a write in progress (no rename or close seen yet) is left without events before
/// the spec is read anyway.
const SETTLE: Duration = Duration::from_millis(200);

/// The shortest time from one apply's start to the next: a burst of complete writes is applied
/// at once, then coalesced into at most one apply per interval. Shorter than the apply of a
/// one-rule change to a large spec, so that a change right after another waits for nothing
/// but that apply.
const MIN_INTERVAL: Duration = Duration::from_millis(5);

/// What a directory event says about the spec.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Touched {
    /// Something else in the directory changed (a ConfigMap's `..data` swap, say): the spec's
    /// content may have changed behind the same name.
    Directory,
    /// The spec's own name was written, replaced or removed.
    Spec,
}

/// One directory event, as the watch weighs it.
#[derive(Clone, Copy)]
struct Seen {
    touched: Touched,
    /// A rename or the close of a write: what it names is complete. Anything else (a file
    /// created, truncated, written) may be a write still in progress.
    complete: bool,
}

/// The events since the last apply.
struct Burst {
    touched: Touched,
    /// Whether the latest event left its file complete.
    complete: bool,
}

impl Burst {
    fn new(first: Seen) -> Self {
        Self {
            touched: first.touched,
            complete: first.complete,
        }
    }

    fn add(&mut self, seen: Seen) {
        self.touched = self.touched.max(seen.touched);
        self.complete = seen.complete;
    }

    fn drain(&mut self, rx: &mut mpsc::UnboundedReceiver<Seen>) {
        while let Ok(more) = rx.try_recv() {
            self.add(more);
        }
    }
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
    let path = spec_path.clone();
    watch_with(spec_path, started_from, move |text| {
        let (path, node, agent) = (path.clone(), node.clone(), agent.clone());
        async move { apply(&path, text, &node, &agent).await }
    })
    .await
}

/// The watch of [`watch`], calling `apply` with every version to apply (the spec's text as
/// the watch read it to compare it with the last: one read per change).
async fn watch_with<F, Fut>(
    spec_path: PathBuf,
    started_from: Option<String>,
    mut apply: F,
) -> Result<()>
where
    F: FnMut(io::Result<String>) -> Fut,
    Fut: Future<Output = ()>,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let name = spec_path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let touched = if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            Touched::Spec
        } else {
            Touched::Directory
        };
        let complete = match event.kind {
            // A rename within the directory comes as From, To and Both: Both repeats the
            // other two, and From alone is half of it (the To follows, or SETTLE passes when
            // a file moved out).
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => return,
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => false,
            EventKind::Modify(ModifyKind::Name(_)) => true,
            // The spec written in place is complete when closed; another file closed after a
            // write is most often a temporary one about to be renamed over the spec.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => touched == Touched::Spec,
            // Other access events include the agent's own reads of the spec: reacting to them
            // would read again and again.
            EventKind::Access(_) => return,
            _ => false,
        };
        let _ = tx.send(Seen { touched, complete });
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
    if last_read.is_some() {
        let now = read(&spec_path);
        if now.as_ref().ok() != last_read.as_ref() {
            info!(spec = %spec_path.display(), "the spec changed while the agent started");
            last_read = now.as_ref().ok().cloned();
            apply(now).await;
        }
    }
    let mut last_apply: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut burst = Burst::new(first);
        burst.drain(&mut rx);
        // A write in progress: wait for its close or rename, or for the directory to be quiet.
        while !burst.complete {
            match tokio::time::timeout(SETTLE, rx.recv()).await {
                Ok(Some(more)) => burst.add(more),
                Ok(None) => return Ok(()),
                Err(_elapsed) => break,
            }
        }
        if let Some(last) = last_apply {
            tokio::time::sleep_until((last + MIN_INTERVAL).into()).await;
            burst.drain(&mut rx);
        }
        let now = read(&spec_path);
        let changed = now.as_ref().ok() != last_read.as_ref();
        last_read = now.as_ref().ok().cloned();
        if burst.touched == Touched::Spec || changed {
            debug!(spec = %spec_path.display(), "applying the spec");
            last_apply = Some(Instant::now());
            apply(now).await;
        } else {
            debug!(dir = %dir.display(), "a change beside the spec; the spec is unchanged");
        }
    }
    Ok(())
}

/// The spec's text through any symlinks (an error: `apply` reports it).
fn read(spec_path: &Path) -> io::Result<String> {
    std::fs::read_to_string(spec_path)
}

/// Applies `text`, what reading `spec_path` returned. (The timing starts after the read: it
/// measures the agent's work on a spec it has.)
async fn apply(spec_path: &Path, text: io::Result<String>, node: &str, agent: &Arc<Mutex<Agent>>) {
    let started = Instant::now();
    let loaded = spec::check_read(spec_path, text);
    let parsed = started.elapsed();
    let plan = match loaded {
        Ok(spec) => NodePlan::from_valid_spec(&spec, node),
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
    let planned = started.elapsed();
    // The agent is taken in the order the versions were read (the lock is fair), then the
    // reload runs on a task of its own: the watch reads and parses the next version while this
    // one finishes (its record and counters come after the switch), on another CPU.
    let mut agent = agent.clone().lock_owned().await;
    let locked = started.elapsed();
    tokio::spawn(async move {
        let applied = match plan {
            Ok(plan) => agent.reload(plan).await,
            Err(err) => Err(err),
        };
        let took = |d: Duration| d.as_secs_f64() * 1e3;
        match applied {
            Ok(()) => {
                info!(
                    parse_ms = took(parsed),
                    plan_ms = took(planned - parsed),
                    wait_ms = took(locked - planned),
                    apply_ms = took(started.elapsed() - locked),
                    "spec reloaded"
                );
                agent.count_reload(true);
            }
            Err(err) => {
                error!("spec reload refused: {err:#}; the running configuration stays");
                agent.count_reload(false);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        sync::{Arc, Mutex as StdMutex},
    };

    use super::*;

    /// A directory of its own under the temp dir, removed on drop (also when a test fails).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("vnetd-reload-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs the watch on `spec` with an apply that records the spec's text (and takes a few
    /// milliseconds, as a real one does, so events queue up behind it).
    fn watching(spec: &Path) -> (tokio::task::JoinHandle<()>, Arc<StdMutex<Vec<String>>>) {
        let applied = Arc::new(StdMutex::new(Vec::new()));
        let (path, seen) = (spec.to_path_buf(), applied.clone());
        let started_from = read(spec).ok();
        let task = tokio::spawn(async move {
            let _ = watch_with(path, started_from, move |text: io::Result<String>| {
                let seen = seen.clone();
                async move {
                    let text = text.unwrap_or_default();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    seen.lock().unwrap().push(text);
                }
            })
            .await;
        });
        (task, applied)
    }

    /// Waits (up to 10 s) until the last applied text is `want`.
    async fn until_applied(applied: &StdMutex<Vec<String>>, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while applied.lock().unwrap().last().map(String::as_str) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "{want:?} never applied; applied: {:?}",
                applied.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn replace(spec: &Path, text: &str) {
        let tmp = spec.with_extension("next");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, spec).unwrap();
    }

    /// A burst of replaced versions ends with the last one applied, and only whole versions
    /// are ever applied.
    #[tokio::test]
    async fn a_burst_of_replacements_applies_the_last() {
        let dir = Scratch::new("burst");
        let spec = dir.0.join("spec.yaml");
        std::fs::write(&spec, "version 0\n").unwrap();
        let (task, applied) = watching(&spec);
        // Let the watch start before the burst.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let versions: Vec<String> = (1..=30).map(|i| format!("version {i}\n")).collect();
        for text in &versions {
            replace(&spec, text);
        }
        until_applied(&applied, "version 30\n").await;
        // Nothing older is applied after the last.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let applied = applied.lock().unwrap().clone();
        task.abort();
        assert_eq!(applied.last().map(String::as_str), Some("version 30\n"));
        for text in &applied {
            assert!(
                versions.contains(text),
                "a partial version applied: {text:?}"
            );
        }
    }

    /// A spec written beside and renamed over is applied once: the temporary file's events
    /// and the rename's (From, To, Both) are one change.
    #[tokio::test]
    async fn a_replacement_is_applied_once() {
        let dir = Scratch::new("once");
        let spec = dir.0.join("spec.yaml");
        std::fs::write(&spec, "old\n").unwrap();
        let (task, applied) = watching(&spec);
        tokio::time::sleep(Duration::from_millis(100)).await;
        replace(&spec, "new\n");
        until_applied(&applied, "new\n").await;
        // Longer than SETTLE: a second apply from the same change would have come by now.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let applied = applied.lock().unwrap().clone();
        task.abort();
        assert_eq!(applied, vec!["new\n".to_string()]);
    }

    /// A spec written in place is applied once its write is closed, not while it is written.
    #[tokio::test]
    async fn a_write_in_place_is_applied_when_closed() {
        let dir = Scratch::new("in-place");
        let spec = dir.0.join("spec.yaml");
        std::fs::write(&spec, "old\n").unwrap();
        let (task, applied) = watching(&spec);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut file = std::fs::File::create(&spec).unwrap();
        file.write_all(b"first half, ").unwrap();
        file.flush().unwrap();
        // Shorter than SETTLE: the watch waits for the close.
        std::thread::sleep(Duration::from_millis(30));
        file.write_all(b"second half\n").unwrap();
        drop(file);
        until_applied(&applied, "first half, second half\n").await;
        let applied = applied.lock().unwrap().clone();
        task.abort();
        assert_eq!(applied, vec!["first half, second half\n".to_string()]);
    }
}
