//! Running a CNI plugin inside a node: the call, its output and the command that makes it.

use super::{Lab, Node};
use crate::process;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One CNI plugin invocation: the CNI environment variables, the network config on stdin.
/// Empty strings leave their variable unset (VERSION needs only the command).
#[derive(Clone, Debug, Default)]
pub struct CniCall {
    /// ADD, DEL, CHECK, VERSION, STATUS or GC.
    pub command: String,
    pub plugin: PathBuf,
    pub container_id: String,
    /// The pod's namespace path (`/run/netns/..`).
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS`, e.g. `K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0`.
    pub args: String,
    /// The network configuration JSON (stdin).
    pub config: String,
    /// `CNI_PATH`; default: the plugin's directory.
    pub cni_path: Option<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// Killed after this (default 60 s).
    pub timeout: Option<Duration>,
}

/// What a CNI plugin returned.
#[derive(Clone, Debug)]
pub struct CniOutput {
    /// The exit code (128 + signal if killed).
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    /// stdout parsed as JSON (the CNI result or error).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("CNI output is not JSON: {:?}", self.stdout))
    }
}

impl Node {
    /// The command that runs `call`'s plugin inside this node's namespace, with the CNI
    /// environment set (the network configuration goes to its stdin). [`Node::cni`] runs it with
    /// a timeout; a benchmark may run it with a blocking wait, which measures without polling.
    pub fn cni_command(&self, call: &CniCall) -> std::process::Command {
        let mut cmd = self.command([&call.plugin]);
        for var in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ] {
            cmd.env_remove(var);
        }
        let mut set = |k: &str, v: &str| {
            if !v.is_empty() {
                cmd.env(k, v);
            }
        };
        set("CNI_COMMAND", &call.command);
        set("CNI_CONTAINERID", &call.container_id);
        set("CNI_NETNS", &call.netns.to_string_lossy());
        set("CNI_IFNAME", &call.ifname);
        set("CNI_ARGS", &call.args);
        let cni_path = call.cni_path.clone().unwrap_or_else(|| {
            call.plugin
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        set("CNI_PATH", &cni_path);
        for (k, v) in &call.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a CNI plugin inside this node's namespace (see [`CniCall`]).
    pub fn cni(&self, call: &CniCall) -> Result<CniOutput> {
        let cmd = self.cni_command(call);
        let what = format!(
            "CNI {} ({}) in netns {} for {}",
            call.command,
            call.plugin.display(),
            self.name,
            call.container_id
        );
        let out = process::run_command(
            cmd,
            Some(call.config.as_bytes()),
            call.timeout.unwrap_or(Duration::from_secs(60)),
            &what,
        )?;
        use std::os::unix::process::ExitStatusExt;
        let exit = out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Ok(CniOutput {
            exit,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl Lab {
    /// Runs a CNI plugin in `node`'s namespace: `(exit code, stdout)`. See [`Node::cni`] and
    /// [`CniCall`] for stderr, extra env and time limits.
    #[allow(clippy::too_many_arguments)]
    pub fn cni(
        &self,
        node: &Node,
        cmd: &str,
        plugin: &Path,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        args: &str,
        config_json: &str,
    ) -> Result<(i32, String)> {
        let out = node.cni(&CniCall {
            command: cmd.to_string(),
            plugin: plugin.to_path_buf(),
            container_id: container_id.to_string(),
            netns: netns.to_path_buf(),
            ifname: ifname.to_string(),
            args: args.to_string(),
            config: config_json.to_string(),
            ..CniCall::default()
        })?;
        Ok((out.exit, out.stdout))
    }
}
