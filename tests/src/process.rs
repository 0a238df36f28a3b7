//! Running commands with a time limit, background processes that die with their guard, and
//! packet captures.

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Renders a command line for error messages.
pub(crate) fn render(args: &[OsString]) -> String {
    args.iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains(char::is_whitespace) {
                format!("'{s}'")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Has the child exited? Asks without reaping it (WNOWAIT), so its pid, and with it its process
/// group id, stay reserved and a later `killpg` cannot hit an unrelated process group.
fn exited_unreaped(pid: u32) -> bool {
    match waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    ) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        // ECHILD: already reaped.
        Err(_) => true,
    }
}

/// Waits (polling, without reaping) until the child exits or `timeout` passes.
fn wait_exit_unreaped(pid: u32, timeout: Duration) -> bool {
    crate::wait_for(timeout, || exited_unreaped(pid))
}

/// Runs `cmd` to completion in its own process group, feeding `stdin`, collecting stdout and
/// stderr, and killing the whole group after `timeout`. Stragglers the command left in its
/// group (background children holding the output pipes) are killed when it exits: a one-shot
/// command must not leave processes behind.
pub(crate) fn run_command(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    what: &str,
) -> Result<Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    let mut child_in = child.stdin.take();
    let mut child_out = child.stdout.take().expect("piped stdout");
    let mut child_err = child.stderr.take().expect("piped stderr");
    let (timed_out, stdout, stderr) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            if let (Some(input), Some(pipe)) = (stdin, child_in.as_mut()) {
                // A command that does not read its input closes the pipe: not our error.
                let _ = pipe.write_all(input);
            }
            drop(child_in);
        });
        let out = s.spawn(move || {
            let mut v = Vec::new();
            let _ = child_out.read_to_end(&mut v);
            v
        });
        let err = s.spawn(move || {
            let mut v = Vec::new();
            let _ = child_err.read_to_end(&mut v);
            v
        });
        let timed_out = !wait_exit_unreaped(pid, timeout);
        // The leader is exited-but-unreaped or still running: its group id is still ours.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = writer.join();
        (
            timed_out,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    });
    let status = child
        .wait()
        .with_context(|| format!("waiting for {what}"))?;
    if timed_out {
        bail!(
            "{what} did not finish within {timeout:?} and was killed; stdout: {}; stderr: {}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Turns a non-zero exit into an error that shows the command, its exit and both outputs.
pub(crate) fn check_output(out: Output, what: &str) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(anyhow!(
        "{what} failed ({}); stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Where a background process's stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogMode {
    /// To `<lab dir>/logs/<n>-<label>.out` and `.err`, readable with [`Bg::stdout`] and
    /// [`Bg::stderr`] while it runs and afterwards. Kept when a test panics.
    #[default]
    Files,
    /// The caller's stdout and stderr (the demo showing the agent's log).
    Inherit,
    /// Discarded.
    Null,
}

static LOG_SEQ: AtomicU64 = AtomicU64::new(0);

/// Every live (unreaped) [`Bg`] of this process: its pid (= process group id) and the netns it
/// was started in. Killing a registered group is race-free: a [`Bg`] leaves the registry,
/// under the lock, before it reaps its process, so a registered id is never a reused one.
/// Teardown and the signal cleanup use it to catch a process that is still on its way into
/// its namespace (between fork and setns), which a scan of the namespace cannot see.
static LIVE: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(u32, String)>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGKILLs the process groups of the live [`Bg`]s started in a namespace `select` accepts.
/// Returns how many.
pub(crate) fn kill_registered(select: impl Fn(&str) -> bool) -> usize {
    let reg = live();
    let mut n = 0;
    for (pid, ns) in reg.iter() {
        if select(ns) {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            n += 1;
        }
    }
    n
}

/// A background process, killed with its whole process group when dropped.
///
/// It runs in its own process group so that the guard also kills what it started (a shell's
/// children, a daemon's helpers). The consequence: Ctrl-C in a terminal does not reach it
/// directly; the lab's teardown, [`crate::cleanup_on_signal`] or the next run's sweep does.
#[derive(Debug)]
pub struct Bg {
    child: Option<Child>,
    label: String,
    stdout_path: Option<PathBuf>,
    stderr_path: Option<PathBuf>,
    grace: Duration,
}

impl Bg {
    /// Spawns `cmd` in its own process group with output handled as `mode`; `log_dir` is where
    /// [`LogMode::Files`] puts the logs.
    pub(crate) fn spawn(
        mut cmd: Command,
        netns: &str,
        label: &str,
        mode: LogMode,
        log_dir: &Path,
        what: &str,
    ) -> Result<Bg> {
        let (mut stdout_path, mut stderr_path) = (None, None);
        match mode {
            LogMode::Files => {
                std::fs::create_dir_all(log_dir)
                    .with_context(|| format!("creating log dir {}", log_dir.display()))?;
                let seq = LOG_SEQ.fetch_add(1, Ordering::Relaxed);
                let base: String = label
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let out = log_dir.join(format!("{seq:03}-{base}.out"));
                let err = log_dir.join(format!("{seq:03}-{base}.err"));
                cmd.stdout(
                    File::create(&out).with_context(|| format!("creating {}", out.display()))?,
                );
                cmd.stderr(
                    File::create(&err).with_context(|| format!("creating {}", err.display()))?,
                );
                stdout_path = Some(out);
                stderr_path = Some(err);
            }
            LogMode::Inherit => {
                cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
            LogMode::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        cmd.stdin(Stdio::null()).process_group(0);
        // Registered while holding the lock across the spawn, so that a concurrent cleanup
        // cannot miss it.
        let mut reg = live();
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        reg.push((child.id(), netns.to_string()));
        drop(reg);
        Ok(Bg {
            child: Some(child),
            label: what.to_string(),
            stdout_path,
            stderr_path,
            grace: Duration::from_secs(2),
        })
    }

    fn child(&self) -> &Child {
        self.child.as_ref().expect("Bg used after it was reaped")
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// What this process is, for messages: the namespace and the command line.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// How long [`Bg::stop`] and `Drop` wait after SIGTERM before SIGKILL (default 2 s).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !exited_unreaped(self.pid())
    }

    /// The stdout log file ([`LogMode::Files`] only).
    pub fn stdout_path(&self) -> Option<&Path> {
        self.stdout_path.as_deref()
    }

    /// The stderr log file ([`LogMode::Files`] only).
    pub fn stderr_path(&self) -> Option<&Path> {
        self.stderr_path.as_deref()
    }

    /// What the process wrote to stdout so far (empty unless [`LogMode::Files`]).
    pub fn stdout(&self) -> String {
        read_lossy(self.stdout_path.as_deref())
    }

    /// What the process wrote to stderr so far (empty unless [`LogMode::Files`]).
    pub fn stderr(&self) -> String {
        read_lossy(self.stderr_path.as_deref())
    }

    /// Waits until `needle` appears in stdout or stderr (a daemon's "ready" line). Fails at once
    /// if the process exits first, and after `timeout` otherwise, with both logs in the error.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<()> {
        let mut exited = false;
        let found = crate::wait_for(timeout, || {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return true;
            }
            exited = !self.is_running();
            exited
        });
        if found && !exited {
            return Ok(());
        }
        if self.stdout().contains(needle) || self.stderr().contains(needle) {
            return Ok(());
        }
        bail!(
            "{}: {:?} not seen {}; stdout: {}; stderr: {}",
            self.label,
            needle,
            if exited {
                "before the process exited".to_string()
            } else {
                format!("within {timeout:?}")
            },
            self.stdout().trim(),
            self.stderr().trim()
        )
    }

    /// Sends `sig` to the process group.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if !self.is_running() {
            bail!("{}: not running", self.label);
        }
        killpg(Pid::from_raw(self.pid() as i32), sig)
            .with_context(|| format!("sending {sig} to {}", self.label))
    }

    /// Sends `sig` to the process only (not its group).
    pub fn signal_leader(&self, sig: Signal) -> Result<()> {
        if !self.is_running() {
            bail!("{}: not running", self.label);
        }
        kill(Pid::from_raw(self.pid() as i32), sig)
            .with_context(|| format!("sending {sig} to {}", self.label))
    }

    /// Waits up to `timeout` for the process to exit by itself; then kills what is left of its
    /// group and returns the exit status. `Ok(None)` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        if self.child.is_none() {
            bail!("{}: already reaped", self.label);
        }
        if !wait_exit_unreaped(self.pid(), timeout) {
            return Ok(None);
        }
        self.reap().map(Some)
    }

    /// SIGTERM to the group, up to the grace period to exit, then SIGKILL; returns the status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    /// SIGKILL to the group at once; returns the status.
    pub fn kill(mut self) -> Result<ExitStatus> {
        if self.child.is_none() {
            bail!("{}: already reaped", self.label);
        }
        let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        self.reap()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        if self.child.is_none() {
            bail!("{}: already reaped", self.label);
        }
        let pid = self.pid();
        if !exited_unreaped(pid) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
            wait_exit_unreaped(pid, self.grace);
        }
        self.reap()
    }

    /// Kills stragglers in the group (the leader is exited or still unreaped, so the group id
    /// is still ours), then reaps the leader.
    fn reap(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("checked by callers");
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        live().retain(|(pid, _)| *pid != child.id());
        child
            .wait()
            .with_context(|| format!("waiting for {}", self.label))
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.terminate()
        {
            eprintln!("vnetd-lab: stopping {}: {e:#}", self.label);
        }
    }
}

fn read_lossy(path: Option<&Path>) -> String {
    path.and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A running `tcpdump` (text output, `-n -e`, immediate mode) on one interface of a namespace.
///
/// Lines look like `12:00:00.000000 02:00:0a:00:00:04 > 02:00:0a:00:00:01, ethertype IPv4
/// (0x0800), length 98: 10.0.0.4 > 198.51.100.10: ICMP echo request, ...`: match on the
/// `src > dst` part. The constructor returns once tcpdump is listening.
#[derive(Debug)]
pub struct Capture {
    bg: Bg,
}

impl Capture {
    pub(crate) fn new(bg: Bg) -> Result<Capture> {
        bg.wait_for_output("listening on", Duration::from_secs(10))
            .context("waiting for tcpdump to start")?;
        Ok(Capture { bg })
    }

    /// The packet lines captured so far.
    pub fn lines(&self) -> Vec<String> {
        self.bg.stdout().lines().map(str::to_string).collect()
    }

    /// How many captured lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until a captured line contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        crate::wait_for(timeout, || self.bg.stdout().contains(needle))
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns every captured line.
    pub fn stop(mut self) -> Result<Vec<String>> {
        let _ = self.bg.signal_leader(Signal::SIGINT);
        // Still running after that: Drop kills it; the lines flushed so far are what we have.
        self.bg.wait_timeout(Duration::from_secs(3))?;
        Ok(self.lines())
    }

    /// The underlying process (its stderr has tcpdump's own messages).
    pub fn process(&self) -> &Bg {
        &self.bg
    }
}
