//! A node's running agent: started, stopped, paused, and what it reports (status, metrics,
//! counters).
use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{bin, nsg_rule_hits_in_metrics, nsg_rule_hits_in_status};
use crate::{Bg, LogMode, Node, wait_for};

/// A node's running agent (`vnetd run` under `nsenter --net`, so it sees the node's links and
/// the real /sys/fs/bpf).
pub struct Agent {
    pub node: Node,
    pub spec: PathBuf,
    /// Environment variables every (re)start of the agent gets (test-only switches such as
    /// `VNETD_TEST_PAUSE_AFTER_IPAM`); change it between [`Agent::spawn`]s.
    pub env: Vec<(String, String)>,
    /// The command line after the binary; `None`: [`Node::agent_args`] for [`Agent::spec`].
    /// (The deploy tests give the one the DaemonSet renders.)
    pub args: Option<Vec<std::ffi::OsString>>,
    process: Option<Bg>,
}

impl Agent {
    /// Writes `spec` to the node's directory and starts the agent on it, waiting until it serves.
    pub fn start(node: &Node, spec: &str) -> Result<Agent> {
        Self::start_with_env(node, spec, Vec::new())
    }

    /// [`Agent::start`] with extra environment variables (kept in [`Agent::env`]).
    pub fn start_with_env(node: &Node, spec: &str, env: Vec<(String, String)>) -> Result<Agent> {
        let path = node.dir.join("spec.yaml");
        std::fs::create_dir_all(&node.dir)?;
        std::fs::write(&path, spec)?;
        let mut agent = Agent {
            node: node.clone(),
            spec: path,
            env,
            args: None,
            process: None,
        };
        agent.spawn(LogMode::Files)?;
        Ok(agent)
    }

    /// An agent of `node` not started yet, with exactly `args` after the binary and `env`
    /// (`node`'s `api_socket`, `state_dir` and `bpffs_dir` must be where `args` put them).
    /// Start it with [`Agent::spawn`], or [`Agent::spawn_unwaited`] to watch it start.
    pub fn with_args(
        node: &Node,
        spec: PathBuf,
        args: Vec<std::ffi::OsString>,
        env: Vec<(String, String)>,
    ) -> Agent {
        Agent {
            node: node.clone(),
            spec,
            env,
            args: Some(args),
            process: None,
        }
    }

    /// Starts the agent (again), with its output as `mode`.
    pub fn spawn(&mut self, mode: LogMode) -> Result<()> {
        self.spawn_unwaited(mode)?;
        self.wait_serving(Duration::from_secs(20))
    }

    /// Starts the agent (again) and returns at once.
    pub fn spawn_unwaited(&mut self, mode: LogMode) -> Result<()> {
        let mut args = vec![bin("vnetd").into_os_string()];
        match &self.args {
            Some(given) => args.extend(given.iter().cloned()),
            None => args.extend(self.node.agent_args(&self.spec)),
        }
        // A socket left by a killed agent must not pass for the new one's; removed before the
        // start, or it could remove the new agent's socket.
        let _ = std::fs::remove_file(&self.node.api_socket);
        let mut cmd = self.node.command(args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(self.node.spawn_with(cmd, mode)?);
        Ok(())
    }

    /// Waits until the agent answers `vnetd status` on its socket.
    pub fn wait_serving(&self, timeout: Duration) -> Result<()> {
        let Some(bg) = &self.process else {
            bail!("the agent of {} was not started", self.node.role);
        };
        let up = wait_for(timeout, || {
            self.node.api_socket.exists() && self.status().is_ok() || !bg.is_running()
        });
        if !up || !bg.is_running() {
            bail!(
                "the agent of {} did not come up:\n{}",
                self.node.role,
                bg.stderr()
            );
        }
        Ok(())
    }

    /// True while the agent's process runs.
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(Bg::is_running)
    }

    /// Sends SIGTERM to the agent (as kubelet does) and returns at once; see
    /// [`Agent::wait_exit`].
    pub fn terminate(&self) -> Result<()> {
        match &self.process {
            Some(bg) => bg.signal_leader(nix::sys::signal::Signal::SIGTERM),
            None => bail!("the agent of {} is not running", self.node.role),
        }
    }

    /// Waits up to `timeout` for the agent to exit by itself and returns its status; an agent
    /// still running then is killed and that is an error.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut bg) = self.process.take() else {
            bail!("the agent of {} is not running", self.node.role);
        };
        match bg.wait_timeout(timeout)? {
            Some(status) => {
                self.process = Some(bg);
                Ok(status)
            }
            None => {
                let log = bg.stderr();
                bg.kill()?;
                bail!(
                    "the agent of {} did not exit within {timeout:?}:\n{log}",
                    self.node.role
                )
            }
        }
    }

    /// Kills the agent with SIGKILL: no chance to clean up (the dataplane must stay).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(bg) = self.process.take()
            && bg.is_running()
        {
            bg.kill()?;
        }
        Ok(())
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.process.as_ref().map(Bg::stderr).unwrap_or_default()
    }

    /// Replaces the spec file (the agent reloads it).
    pub fn write_spec(&self, spec: &str) -> Result<()> {
        let tmp = self.spec.with_extension("tmp");
        std::fs::write(&tmp, spec)?;
        std::fs::rename(&tmp, &self.spec)?;
        Ok(())
    }

    /// `vnetd status --json`.
    pub fn status(&self) -> Result<Value> {
        let out = std::process::Command::new(bin("vnetd"))
            .args(["status", "--json", "--api-socket"])
            .arg(&self.node.api_socket)
            .output()
            .context("running vnetd status")?;
        if !out.status.success() {
            bail!("vnetd status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits up to 10 s for the status field `key` (`reloads_ok`, `reloads_failed`) to reach
    /// `n`: a spec edit is applied or refused asynchronously, by the agent's file watch.
    pub fn wait_for_status(&self, key: &str, n: u64) -> bool {
        wait_for(Duration::from_secs(10), || {
            self.status().map(|s| s[key] == n).unwrap_or(false)
        })
    }

    /// Packets counted on a traffic path (`pod_to_pod`, `uplink_in`, ...).
    pub fn traffic(&self, path: &str) -> Result<u64> {
        counter(&self.status()?["traffic"], path)
    }

    /// Packets dropped for a reason (`spoofed`, `route_none`, ...).
    pub fn drops(&self, reason: &str) -> Result<u64> {
        counter(&self.status()?["drops"], reason)
    }
}

/// The agent stopped (SIGSTOP) until this is dropped (SIGCONT), also when the test fails: its
/// dataplane runs on without it, nobody reads the flow-log ring or answers the API.
pub struct Paused<'a> {
    agent: &'a Agent,
}

impl Agent {
    /// Stops the agent's process group and waits until the kernel shows the agent stopped.
    pub fn pause(&self) -> Result<Paused<'_>> {
        let Some(bg) = &self.process else {
            bail!("the agent of {} is not running", self.node.role);
        };
        bg.signal(nix::sys::signal::Signal::SIGSTOP)?;
        // Made before the wait: a failed wait still continues the agent.
        let paused = Paused { agent: self };
        let stopped = wait_for(Duration::from_secs(5), || {
            process_state(bg.pid()) == Some('T')
        });
        if !stopped {
            bail!(
                "the agent of {} is not stopped: state {:?}",
                self.node.role,
                process_state(bg.pid())
            );
        }
        Ok(paused)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        if let Some(bg) = &self.agent.process
            && let Err(err) = bg.signal(nix::sys::signal::Signal::SIGCONT)
        {
            eprintln!("continuing the agent of {}: {err:#}", self.agent.node.role);
        }
    }
}

/// The state letter of process `pid` (`R`, `S`, `T` for stopped, ...), from /proc.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may hold any character.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

impl Agent {
    /// The agent's Prometheus text (`/metrics` on [`crate::NODE_METRICS_ADDR`] in the node).
    pub fn metrics(&self) -> Result<String> {
        let addr = crate::NODE_METRICS_ADDR.parse()?;
        let (status, body) = crate::http_get(&self.node, addr, "/metrics", Duration::from_secs(3))?;
        if status != 200 {
            bail!(
                "GET /metrics from {}: status {status}: {body}",
                self.node.role
            );
        }
        Ok(body)
    }

    /// The hits of rule `rule` of NSG `nsg` in `/metrics`
    /// (`vnetd_nsg_rule_hits_total{nsg,rule,direction,access}`, summed over the series that
    /// name both); `None` when no series does.
    pub fn metric_nsg_rule_hits(&self, nsg: &str, rule: &str) -> Result<Option<u64>> {
        Ok(nsg_rule_hits_in_metrics(&self.metrics()?, nsg, rule))
    }

    /// The hits of rule `rule` of NSG `nsg` in `vnetd status --json`; `None` when the status
    /// does not list that rule. See [`nsg_rule_hits_in_status`] for the shapes understood.
    pub fn status_nsg_rule_hits(&self, nsg: &str, rule: &str) -> Result<Option<u64>> {
        Ok(nsg_rule_hits_in_status(&self.status()?, nsg, rule))
    }
}

fn counter(list: &Value, name: &str) -> Result<u64> {
    list.as_array()
        .and_then(|rows| rows.iter().find(|r| r[0] == name))
        .and_then(|r| r[1].as_u64())
        .with_context(|| format!("no counter {name} in {list}"))
}
