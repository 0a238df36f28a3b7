//! Removing labs: one namespace at a time, leftovers of dead processes, everything, and on
//! Ctrl-C.

use crate::ns::pids_in_netns;
use crate::{BPFFS_ROOT, LAB_DIR_ROOT};
use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// Every lab name (namespace, lab dir, bpffs dir) starts with this.
pub(crate) const FAMILY: &str = "vnl";

/// `vnl<pid>x<n>` or `vnl<pid>x<n>-...` -> `(pid, n)`.
pub(crate) fn owner_of(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix(FAMILY)?;
    let (pid, rest) = rest.split_once('x')?;
    let n_end = rest.find('-').unwrap_or(rest.len());
    let (n, tail) = rest.split_at(n_end);
    if pid.is_empty()
        || n.is_empty()
        || !pid.bytes().all(|b| b.is_ascii_digit())
        || !n.bytes().all(|b| b.is_ascii_digit())
        || !(tail.is_empty() || tail.starts_with('-'))
    {
        return None;
    }
    Some((pid.parse().ok()?, n.parse().ok()?))
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`): with the
/// pid it identifies a process even when pids are reused (a CI container starts the test
/// binary with the same pid every run).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The file in a lab's dir recording its owner's start time.
pub(crate) fn owner_file(lab_id: &str) -> PathBuf {
    Path::new(LAB_DIR_ROOT).join(lab_id).join("owner")
}

/// Whether the process that made lab `vnl<pid>x<n>` is gone: no such pid, or a pid whose
/// start time differs from the one the lab recorded (the pid was reused). Without a record
/// a live pid counts as the owner (conservative: never sweep a live lab).
fn owner_gone(pid: u32, n: u32) -> bool {
    let Some(now) = start_time(pid) else {
        return true;
    };
    let recorded = std::fs::read_to_string(owner_file(&format!("{FAMILY}{pid}x{n}")))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    recorded.is_some_and(|r| r != now)
}

/// What a sweep removed.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Lab and bpffs directories removed.
    pub paths: Vec<PathBuf>,
    /// Processes killed (they were inside swept namespaces).
    pub killed: Vec<i32>,
}

impl SweepReport {
    /// Nothing was there to remove.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.paths.is_empty() && self.killed.is_empty()
    }
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} namespace(s), {} dir(s), {} process(es)",
            self.namespaces.len(),
            self.paths.len(),
            self.killed.len()
        )
    }
}

/// Kills every process in the namespace, then deletes it (which deletes its links). Returns
/// the pids killed. A thread of this process inside the namespace cannot be killed: it is
/// reported (it keeps the namespace alive, unnamed, until it exits).
pub(crate) fn delete_netns(name: &str) -> Result<Vec<i32>> {
    let path = Path::new("/run/netns").join(name);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let own = std::process::id() as i32;
    let pids: Vec<i32> = pids_in_netns(&path)?
        .into_iter()
        .filter(|&p| p != own)
        .collect();
    for &pid in &pids {
        // Gone meanwhile is fine.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if !pids.is_empty() {
        let gone = crate::wait_for(Duration::from_secs(5), || {
            pids_in_netns(&path)
                .map(|v| v.iter().all(|&p| p == own))
                .unwrap_or(true)
        });
        if !gone {
            eprintln!("vnetd-lab: processes in netns {name} survive SIGKILL; deleting it anyway");
        }
    }
    let out = Command::new("ip")
        .args(["netns", "delete", name])
        .output()
        .with_context(|| format!("running ip netns delete {name}"))?;
    if !out.status.success() && path.exists() {
        bail!(
            "ip netns delete {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(pids)
}

fn sweep(select: impl Fn(u32, u32) -> bool) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let mut errors = Vec::new();
    let mut names: Vec<String> = match std::fs::read_dir("/run/netns") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    // Pods (created last) first does not matter for correctness; reverse order mirrors teardown.
    for name in names.iter().rev() {
        let Some((pid, n)) = owner_of(name) else {
            continue;
        };
        if !select(pid, n) {
            continue;
        }
        match delete_netns(name) {
            Ok(killed) => {
                report.killed.extend(killed);
                report.namespaces.push(name.clone());
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // Containers of a lab's containerd (crate::containerd), named by the lab's id.
    report
        .killed
        .extend(crate::containerd::sweep_cgroups(|name| {
            !name.contains('-') && owner_of(name).is_some_and(|(pid, n)| select(pid, n))
        }));
    for root in [LAB_DIR_ROOT, BPFFS_ROOT] {
        let Ok(rd) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Whole-lab directories only: `vnl<pid>x<n>`, no suffix.
            match owner_of(name) {
                Some((pid, n)) if !name.contains('-') && select(pid, n) => {}
                _ => continue,
            }
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => report.paths.push(path),
                Err(e) => errors.push(format!("removing {}: {e}", path.display())),
            }
        }
    }
    if !errors.is_empty() {
        bail!(
            "sweep removed {report} but failed on: {}",
            errors.join("; ")
        );
    }
    Ok(report)
}

/// Removes what labs of processes that no longer exist left behind (namespaces with their
/// processes, lab dirs, bpffs pin dirs). [`crate::Lab::new`] runs this; labs of live processes
/// are left alone. A lab whose pid now belongs to another process (compared by start time)
/// counts as dead, also when that process is this one.
pub fn sweep_stale() -> Result<SweepReport> {
    sweep(owner_gone)
}

/// Removes every lab on the machine, including those of running processes (for
/// `cargo xtask` cleanup: do not run it while another lab is in use).
pub fn sweep_all() -> Result<SweepReport> {
    sweep(|_, _| true)
}

/// Removes every lab this process created (what a Ctrl-C handler calls before exiting).
pub fn sweep_current_process() -> Result<SweepReport> {
    // Background processes this process started, also those not yet inside their namespace.
    crate::process::kill_registered(|ns| ns.starts_with(FAMILY));
    let own = std::process::id();
    sweep(|pid, _| pid == own)
}

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
static SIGNAL_INSTALL: Once = Once::new();

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) on a pipe is async-signal-safe; the buffer is a local byte.
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove every lab of this process
/// ([`sweep_current_process`]) and exit with 128 + the signal number.
///
/// For programs that do not handle signals themselves (a demo that does, for example with
/// tokio, should call [`crate::Lab::teardown`] or [`sweep_current_process`] itself instead;
/// this replaces earlier handlers). Without it, Ctrl-C ends the process without running
/// destructors, and what the lab made waits for the next [`sweep_stale`]. The handler only
/// writes to a pipe; a dedicated thread does the work. Installing twice is a no-op.
pub fn cleanup_on_signal() -> Result<()> {
    let mut result = Ok(());
    SIGNAL_INSTALL.call_once(|| result = install_signal_cleanup());
    result
}

fn install_signal_cleanup() -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the signal pipe");
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    let read_fd = fds[0];
    std::thread::Builder::new()
        .name("vnetd-lab-signals".into())
        .spawn(move || {
            let mut b = 0u8;
            // SAFETY: reading one byte into a local from the pipe we own.
            let n = unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) };
            if n == 1 {
                eprintln!("vnetd-lab: signal {b}: removing this process's labs");
                match sweep_current_process() {
                    Ok(r) => eprintln!("vnetd-lab: removed {r}"),
                    Err(e) => eprintln!("vnetd-lab: {e:#}"),
                }
                std::process::exit(128 + b as i32);
            }
        })
        .context("spawning the signal thread")?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("installing a handler for signal {sig}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::owner_of;

    #[test]
    fn owners() {
        assert_eq!(owner_of("vnl123x4-node-1"), Some((123, 4)));
        assert_eq!(owner_of("vnl123x4"), Some((123, 4)));
        assert_eq!(owner_of("vnl123x"), None);
        assert_eq!(owner_of("vnlx4-a"), None);
        assert_eq!(owner_of("vnl12ax4-a"), None);
        assert_eq!(owner_of("vnl12x4a"), None);
        assert_eq!(owner_of("other"), None);
    }
}
