//! A private containerd in a lab node: a real container runtime driving the CNI plugin through
//! `ctr run --cni` (go-cni, the path containerd's CRI plugin takes).
//!
//! [`Containerd::start`] runs Debian's containerd (1.6 or 1.7; `cargo xtask setup` installs it)
//! with its own config, root, state and sockets under `<node dir>/containerd`, inside the node's
//! network namespace (where the agent and the plugin run) and inside a private mount namespace
//! held by a small process of the lab. `ctr` 1.6 reads the CNI configuration from
//! `/etc/cni/net.d` and the plugins from `/opt/cni/bin` (no flags change that) and libcni caches
//! results in `/var/lib/cni`; containerd and its shims write to `/run/containerd`. In the private
//! mount namespace the test's own directories are bound over those paths (a path that does not
//! exist on the machine is made inside an overlay of its parent whose upper layer is the test's
//! directory), so nothing outside the test changes. Every `ctr` runs in the same namespaces.
//!
//! The image is built offline ([`Containerd::import_busybox`]): a one-layer OCI archive of
//! `/bin/busybox` (busybox-static) and its applet links, imported with `ctr images import`.
//!
//! Dropping the handle kills every task it started, containerd, its shims and the mount
//! namespace's holder, removes the cgroups runc made, and deletes the directory: also when the
//! test failed.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::vnetd::bin;
use crate::{Bg, LogMode, Node, wait_for};

/// The image [`Containerd::import_busybox`] makes.
pub const BUSYBOX_IMAGE: &str = "vnetd.test/busybox:latest";
/// What the image's web root (`/www/index.html`) holds.
pub const BUSYBOX_INDEX: &str = "hello from a containerd container\n";
/// The busybox applets the image links: a shell, a web server and client, `ip`, `ping`, and the rest.
const APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "ip", "sleep", "cat", "ls", "echo", "ping",
];

/// Host paths the runtime writes or reads that the test replaces with its own directories,
/// and the name of that directory under [`Containerd::dir`].
const PRIVATE_PATHS: &[(&str, &str)] = &[
    ("/etc/cni/net.d", "net.d"),
    ("/opt/cni/bin", "cni-bin"),
    ("/var/lib/cni", "cni-cache"),
    ("/run/containerd", "run"),
];

/// The shell that prepares the private mount namespace, then holds it. `$1` is the test's
/// directory; the pairs `host path, directory name` follow.
const HOLDER_SH: &str = r#"set -e
dir=$1; shift
while [ $# -gt 0 ]; do
  target=$1; src=$dir/$2; shift 2
  if [ ! -d "$target" ]; then
    # The nearest existing ancestor gets an overlay whose upper layer is ours: the missing
    # directories are made there, never on the machine.
    anc=$(dirname "$target")
    while [ ! -d "$anc" ]; do anc=$(dirname "$anc"); done
    key=$(echo "$anc" | tr / _)
    if ! grep -q " $anc overlay " /proc/self/mounts; then
      mkdir -p "$dir/overlay/$key/upper" "$dir/overlay/$key/work"
      mount -t overlay overlay -o "lowerdir=$anc,upperdir=$dir/overlay/$key/upper,workdir=$dir/overlay/$key/work" "$anc"
    fi
    mkdir -p "$target"
  fi
  mount --bind "$src" "$target"
done
echo ready
exec sleep infinity
"#;

/// A containerd of a test (see the module docs).
pub struct Containerd {
    node: Node,
    dir: PathBuf,
    /// containerd's namespace for the test's containers: the lab's id, unique.
    namespace: String,
    socket: PathBuf,
    holder: Option<Bg>,
    daemon: Option<Bg>,
    /// The holder's mount namespace (device, inode): every process in it is ours.
    mount_ns: (u64, u64),
    /// Task pids seen, killed on drop (a task lives in namespaces of its own).
    tasks: Mutex<HashSet<i32>>,
    /// The cgroup trees runc makes for the namespace, removed on drop.
    cgroup_dirs: Vec<PathBuf>,
}

impl Containerd {
    /// Starts a containerd in `node`'s network namespace with the CNI configuration `conflist`
    /// (written as `/etc/cni/net.d/10-vnetd.conflist` of the private mount namespace) and the
    /// plugin `vnetd-cni` from the built binaries in `/opt/cni/bin`. Waits until it serves.
    pub fn start(node: &Node, namespace: &str, conflist: &serde_json::Value) -> Result<Containerd> {
        for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "runc"] {
            ensure!(
                which(tool).is_some(),
                "{tool} is not installed: run `cargo xtask setup` (it installs containerd)"
            );
        }
        let dir = node.dir.join("containerd");
        let _ = std::fs::remove_dir_all(&dir);
        let mut ctr = Containerd {
            node: node.clone(),
            socket: dir.join("containerd.sock"),
            dir: dir.clone(),
            namespace: namespace.to_string(),
            holder: None,
            daemon: None,
            mount_ns: (0, 0),
            tasks: Mutex::new(HashSet::new()),
            cgroup_dirs: cgroup_dirs(namespace),
        };
        // From here on, an error drops `ctr`, which removes what was made.
        for (_, name) in PRIVATE_PATHS {
            std::fs::create_dir_all(dir.join(name))
                .with_context(|| format!("creating {}", dir.join(name).display()))?;
        }
        std::fs::write(
            dir.join("net.d/10-vnetd.conflist"),
            serde_json::to_string_pretty(conflist)?,
        )?;
        let plugin = bin("vnetd-cni");
        ensure!(
            plugin.is_file(),
            "{} is missing: run `cargo build --release` first",
            plugin.display()
        );
        std::fs::copy(&plugin, dir.join("cni-bin/vnetd-cni"))
            .with_context(|| format!("copying {} for the runtime", plugin.display()))?;
        std::fs::write(dir.join("config.toml"), config_toml(&dir))?;

        let mut args: Vec<String> = vec![
            "unshare".into(),
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            HOLDER_SH.into(),
            "sh".into(),
            dir.to_string_lossy().into_owned(),
        ];
        for (target, name) in PRIVATE_PATHS {
            args.push((*target).into());
            args.push((*name).into());
        }
        let holder = node.spawn(&args)?;
        let ready = wait_for(Duration::from_secs(10), || {
            holder.stdout().contains("ready") || !holder.is_running()
        });
        ensure!(
            ready && holder.is_running(),
            "preparing containerd's mount namespace failed: {}",
            holder.stderr()
        );
        // The holder is `sleep` by now (exec), in the private mount namespace.
        let meta = std::fs::metadata(format!("/proc/{}/ns/mnt", holder.pid()))
            .context("reading the holder's mount namespace")?;
        ctr.mount_ns = (meta.dev(), meta.ino());
        ctr.holder = Some(holder);

        let mut cmd = ctr.command(["containerd", "--config"]);
        cmd.arg(dir.join("config.toml"));
        // containerd's temporary mounts (unpacking layers) go under the test's directory.
        cmd.env("TMPDIR", dir.join("tmp"));
        std::fs::create_dir_all(dir.join("tmp"))?;
        let daemon = node.spawn_with(cmd, LogMode::Files)?;
        let up = wait_for(Duration::from_secs(20), || {
            !daemon.is_running() || ctr.ctr(["version"]).is_ok_and(|o| o.status.success())
        });
        ensure!(
            up && daemon.is_running(),
            "containerd did not come up:\n{}",
            daemon.stderr()
        );
        ctr.daemon = Some(daemon);
        Ok(ctr)
    }

    /// The directory of this containerd (config, root, state, sockets, the private paths).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's namespace of the test's containers.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The container id go-cni gives the plugin for container `id`: `<namespace>-<id>`.
    pub fn cni_container_id(&self, id: &str) -> String {
        format!("{}-{id}", self.namespace)
    }

    /// A command in the node's network namespace and the private mount namespace.
    fn command<I, S>(&self, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let pid = self
            .holder
            .as_ref()
            .map(Bg::pid)
            .expect("the mount namespace is held");
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg(format!("--net={}", self.node.path.display()))
            .arg("--")
            .args(args);
        cmd
    }

    fn ctr_command<I, S>(&self, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.command(["ctr", "--address"]);
        cmd.arg(&self.socket)
            .args(["--namespace", &self.namespace])
            .args(args);
        cmd
    }

    /// `ctr <args>` against this containerd; its output whatever the exit.
    pub fn ctr<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.node
            .run_command(self.ctr_command(args), Duration::from_secs(60))
    }

    /// `ctr <args>`, which must succeed; returns stdout.
    pub fn ctr_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.ctr(&args)?;
        ensure!(
            out.status.success(),
            "ctr {:?} failed ({}): stdout: {} stderr: {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr <args>` in the background (a container run without `-d`: ctr waits for the task,
    /// then removes its network with CNI DEL).
    pub fn ctr_spawn<I, S>(&self, args: I) -> Result<Bg>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.node.spawn_with(self.ctr_command(args), LogMode::Files)
    }

    /// Builds the busybox image (see the module docs) and imports it as [`BUSYBOX_IMAGE`].
    pub fn import_busybox(&self) -> Result<()> {
        let archive = build_busybox_archive(&self.dir.join("image"))?;
        self.ctr_ok(["images".as_ref(), "import".as_ref(), archive.as_os_str()])
            .context("importing the busybox image")?;
        Ok(())
    }

    /// The pid of container `id`'s task (remembered, to be killed on drop).
    pub fn task_pid(&self, id: &str) -> Result<i32> {
        Ok(self.task(id)?.0)
    }

    /// The pid and status (`CREATED`, `RUNNING`, ...) of container `id`'s task.
    fn task(&self, id: &str) -> Result<(i32, String)> {
        let out = self.ctr_ok(["tasks", "ls"])?;
        let (pid, status) = out
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&id))
            .and_then(|f| Some((f.get(1)?.parse::<i32>().ok()?, f.get(2)?.to_string())))
            .with_context(|| format!("no task {id} in `ctr tasks ls`: {out}"))?;
        self.lock_tasks().insert(pid);
        Ok((pid, status))
    }

    /// Waits until container `id` has a running task; returns its pid. Running, not only
    /// created: `ctr run --cni` creates the task (it has a pid), then sets the network up
    /// (the CNI ADD), then starts it.
    pub fn wait_task(&self, id: &str, timeout: Duration) -> Result<i32> {
        let mut last = None;
        wait_for(timeout, || {
            last = self.task(id).ok();
            last.as_ref().is_some_and(|(_, status)| status == "RUNNING")
        });
        match last {
            Some((pid, status)) if status == "RUNNING" => Ok(pid),
            Some((_, status)) => bail!("the task of container {id} is {status} after {timeout:?}"),
            None => bail!("container {id} has no task after {timeout:?}"),
        }
    }

    /// `ctr tasks exec` of `args` in container `id`: the output whatever the exit.
    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Result<Output> {
        let mut all = vec!["tasks", "exec", "--exec-id", exec_id, id];
        all.extend_from_slice(args);
        self.ctr(all)
    }

    /// Kills container `id`'s task and deletes task and container, the way a user does it
    /// with ctr: no CNI DEL (ctr removes a network only after a task it waited for).
    pub fn remove(&self, id: &str) -> Result<()> {
        let _ = self.ctr(["tasks", "kill", "--signal", "SIGKILL", id]);
        let deleted = wait_for(Duration::from_secs(10), || {
            self.ctr(["tasks", "delete", id])
                .is_ok_and(|o| o.status.success())
        });
        ensure!(deleted, "the task of {id} was not deleted");
        self.ctr_ok(["containers", "delete", id])?;
        Ok(())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pids of processes in the private mount namespace (containerd, shims, the holder).
    fn mount_ns_pids(&self) -> Vec<i32> {
        let own = std::process::id() as i32;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != own)
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                    .is_ok_and(|m| (m.dev(), m.ino()) == self.mount_ns)
            })
            .collect()
    }

    /// Removes everything (see the module docs); run by `Drop`.
    fn cleanup(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.daemon.as_ref().is_some_and(Bg::is_running)
            && let Ok(out) = self.ctr(["tasks", "ls"])
        {
            for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
                let mut f = line.split_whitespace();
                if let (Some(id), Some(pid)) = (f.next(), f.next()) {
                    if let Ok(pid) = pid.parse() {
                        self.lock_tasks().insert(pid);
                    }
                    let _ = self.ctr(["tasks", "delete", "--force", id]);
                }
            }
        }
        // A task's init is its pid namespace's init: killing it kills the container.
        for pid in self.lock_tasks().drain() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(daemon) = self.daemon.take() {
            let _ = daemon.kill();
        }
        if self.mount_ns != (0, 0) {
            for pid in self.mount_ns_pids() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if !wait_for(Duration::from_secs(5), || self.mount_ns_pids().is_empty()) {
                errors.push(format!(
                    "processes left in containerd's mount namespace: {:?}",
                    self.mount_ns_pids()
                ));
            }
        }
        if let Some(holder) = self.holder.take() {
            let _ = holder.kill();
        }
        for cg in &self.cgroup_dirs {
            remove_cgroup_tree(cg);
        }
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            errors.push(format!("removing {}: {e}", self.dir.display()));
        }
        errors
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for e in self.cleanup() {
            eprintln!("vnetd-lab: containerd cleanup: {e}");
        }
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// containerd's config: everything it keeps under `dir`, the CRI plugin off (ctr drives CNI
/// itself; CRI would look for its own CNI configuration).
fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = "{d}/debug.sock"
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
    )
}

/// The cgroup directories runc makes for containers of containerd namespace `ns` (its default
/// cgroups path is `/<namespace>/<id>`, in every hierarchy).
fn cgroup_dirs(ns: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(ns)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            dirs.push(e.path().join(ns));
        }
    }
    dirs
}

/// Kills the processes of a cgroup tree, then removes it (rmdir, deepest first: a cgroup holds
/// no files of its own). Returns the pids killed.
fn remove_cgroup_tree(dir: &Path) -> Vec<i32> {
    let mut killed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                killed.extend(remove_cgroup_tree(&e.path()));
            }
        }
    }
    let procs = || {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .collect::<Vec<_>>()
    };
    for pid in procs() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        killed.push(pid);
    }
    // A killed process leaves the cgroup busy for a moment after it left cgroup.procs.
    wait_for(Duration::from_secs(5), || {
        procs().is_empty() && (std::fs::remove_dir(dir).is_ok() || !dir.exists())
    });
    killed
}

/// What containerd runtimes of dead labs left (see [`crate::sweep_stale`]): a test process
/// killed with SIGKILL cannot stop its containers. Their shims die with the lab's node
/// namespace, but a container runs in namespaces of its own; runc put it in the cgroup
/// `<hierarchy>/<lab id>/<container>` (the containerd namespace is the lab's id), so the
/// sweep kills what is in those cgroups and removes them. Returns the pids killed.
pub(crate) fn sweep_cgroups(select: impl Fn(&str) -> bool) -> Vec<i32> {
    let root = Path::new("/sys/fs/cgroup");
    let mut tops = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        tops.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    let mut killed = Vec::new();
    for top in tops {
        let Ok(entries) = std::fs::read_dir(&top) else {
            continue;
        };
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str()
                && select(name)
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                killed.extend(remove_cgroup_tree(&e.path()));
            }
        }
    }
    killed
}

/// The OCI platform architecture of this machine.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// Stores `blob` (a file) in the layout's `blobs/sha256/`; returns (digest, size).
fn add_blob(layout: &Path, blob: &Path) -> Result<(String, u64)> {
    let out = run_tool(
        std::process::Command::new("sha256sum").arg(blob),
        "sha256sum",
    )?;
    let hex = String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")?;
    let size = std::fs::metadata(blob)?.len();
    std::fs::rename(blob, layout.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), size))
}

fn add_json_blob(layout: &Path, value: &serde_json::Value) -> Result<(String, u64)> {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    add_blob(layout, &tmp)
}

/// Builds `<dir>/busybox.tar`: an OCI image layout archive with one uncompressed layer holding
/// `/bin/busybox`, links for [`APPLETS`] and `/www/index.html`; `PATH=/bin`. Returns its path.
pub fn build_busybox_archive(dir: &Path) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.is_file(),
        "/bin/busybox is missing: run `cargo xtask setup` (it installs busybox-static)"
    );
    let static_check = run_tool(std::process::Command::new("file").arg(busybox), "file");
    if let Ok(desc) = static_check {
        let desc = String::from_utf8_lossy(&desc);
        ensure!(
            !desc.contains("dynamically linked"),
            "/bin/busybox is dynamically linked ({}): the image needs busybox-static",
            desc.trim()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    let rootfs = dir.join("rootfs");
    let layout = dir.join("layout");
    for d in ["bin", "www", "tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    std::fs::copy(busybox, rootfs.join("bin/busybox")).context("copying /bin/busybox")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    std::fs::write(rootfs.join("www/index.html"), BUSYBOX_INDEX)?;

    let layer = dir.join("layer.tar");
    run_tool(
        std::process::Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .args(["bin", "www", "tmp", "etc", "proc", "sys", "dev"]),
        "tar (the image layer)",
    )?;
    let (layer_digest, layer_size) = add_blob(&layout, &layer)?;
    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let (config_digest, config_size) = add_json_blob(&layout, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = add_json_blob(&layout, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": BUSYBOX_IMAGE,
                "org.opencontainers.image.ref.name": "latest",
            },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = dir.join("busybox.tar");
    run_tool(
        std::process::Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
        "tar (the image archive)",
    )?;
    if !archive.is_file() {
        bail!("{} was not written", archive.display());
    }
    Ok(archive)
}
