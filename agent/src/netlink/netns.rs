//! Work inside a pod's network namespace, on a thread of its own.

use std::{fs::File, future::Future, path::Path};

use anyhow::{Context, anyhow};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

use super::{PodInterfaceError, Rtnl};

/// Runs `f` with an rtnetlink handle inside the network namespace at `netns`.
///
/// `f` runs on a new OS thread that `setns`es into the namespace, builds a current-thread
/// tokio runtime and opens its socket there, so the socket belongs to the pod's namespace; the
/// thread ends with the call, taking its namespace membership with it. The calling task just
/// awaits a oneshot channel: it neither blocks its runtime nor changes namespace.
pub async fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T, PodInterfaceError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    in_netns_file(open_netns(netns)?, f).await
}

pub(super) async fn in_netns_file<T, F, Fut>(ns: File, f: F) -> Result<T, PodInterfaceError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vnetd-netns".into())
        .spawn(move || {
            // The receiver is gone only if the caller was dropped; nobody wants the result.
            let _ = tx.send(run_in_netns(ns, f));
        })
        .context("starting a thread for the pod namespace")?;
    let result = rx
        .await
        .map_err(|_| anyhow!("the pod namespace thread panicked"))?;
    Ok(result?)
}

pub(super) fn run_in_netns<T, F, Fut>(ns: File, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
        nix::errno::Errno::EINVAL => anyhow!("the netns file is not a network namespace"),
        e => anyhow!(e).context("entering the pod's network namespace"),
    })?;
    drop(ns);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the pod namespace thread's runtime")?;
    rt.block_on(async move {
        let rtnl = Rtnl::connect()?;
        f(rtnl.handle.clone()).await
    })
}

/// Opens without blocking and refuses what is not a pod's network namespace (a FIFO, the
/// agent's own): see [`crate::api::netns`].
pub(super) fn open_netns(path: &Path) -> Result<File, PodInterfaceError> {
    match crate::api::netns::open(path) {
        Ok(f) => Ok(f),
        Err(crate::api::netns::NetnsError::NotFound(path)) => {
            Err(PodInterfaceError::NetnsNotFound(path))
        }
        Err(e) => Err(anyhow!(e).into()),
    }
}

pub(super) fn clone_fd(f: &File) -> anyhow::Result<File> {
    f.try_clone()
        .context("duplicating the netns file descriptor")
}
