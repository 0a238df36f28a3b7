//! Driving vnetd in a lab: start a node's agent, attach pods through the CNI plugin, read the
//! agent's status. Used by the end-to-end tests and the demo.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{Bg, CniCall, Lab, LogMode, Node, Ns, PodNs, wait_for};

/// Where the built binaries are: `$VNETD_BIN_DIR`, else `<workspace>/target/release`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("VNETD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace")
                .join("target/release")
        });
    dir.join(name)
}

/// What `vnetd validate` says of `spec`: `None` when the binary is not built (a test then
/// checks the text alone), else `Ok` or the validator's output.
pub fn validate(spec: &str) -> Option<Result<(), String>> {
    let vnetd = bin("vnetd");
    if !vnetd.exists() {
        return None;
    }
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vnetd-spec-{}-{n}.yaml", std::process::id()));
    std::fs::write(&path, spec).expect("writing a spec to validate");
    let out = std::process::Command::new(&vnetd)
        .arg("validate")
        .arg(&path)
        .output()
        .expect("running vnetd validate");
    let _ = std::fs::remove_file(&path);
    Some(match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    })
}

/// The spec the lab runs (`examples/lab.yaml`).
pub fn lab_spec() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab.yaml");
    std::fs::read_to_string(&path).expect("examples/lab.yaml")
}

/// `spec` with an `outboundNat` section of `fields` (YAML lines at the section's indentation,
/// e.g. `portRange: "40000-40015"`). The lab's spec has none, so the section is appended.
pub fn with_outbound_nat(spec: &str, fields: &[&str]) -> String {
    assert!(
        !spec.lines().any(|l| l.starts_with("outboundNat:")),
        "the spec already has an outboundNat section"
    );
    let mut out = spec.trim_end().to_string();
    out.push_str("\noutboundNat:\n");
    for f in fields {
        out.push_str(&format!("  {f}\n"));
    }
    out
}

/// `spec` with one more container group: a Public group `name` in subnet `apps` with the
/// public address `public_ip`, exposing TCP `port` (its one container declares it).
pub fn with_public_group(spec: &str, name: &str, public_ip: Ipv4Addr, port: u16) -> String {
    with_public_group_ports(spec, name, public_ip, &[port])
}

/// [`with_public_group`] exposing every TCP port of `ports` (its one container declares them
/// all).
pub fn with_public_group_ports(
    spec: &str,
    name: &str,
    public_ip: Ipv4Addr,
    ports: &[u16],
) -> String {
    let list = |f: &dyn Fn(u16) -> String| ports.iter().map(|p| f(*p)).collect::<Vec<_>>();
    let exposed = list(&|p| format!("{{ protocol: TCP, port: {p} }}")).join(", ");
    let declared = list(&|p| format!("{{ port: {p} }}")).join(", ");
    let group = format!(
        "  - name: {name}
    location: westeurope
    properties:
      osType: Linux
      subnetIds: [{{ id: apps }}]
      ipAddress:
        type: Public
        ip: {public_ip}
        ports: [{exposed}]
      containers:
        - name: {name}
          properties: {{ image: {name}, ports: [{declared}] }}
"
    );
    let at = spec
        .find("\ncontainerGroups:\n")
        .map(|i| i + "\ncontainerGroups:\n".len())
        .expect("the spec has a containerGroups section");
    format!("{}{group}{}", &spec[..at], &spec[at..])
}

/// One security rule of an NSG for [`with_nsg`]: any protocol, from any address and port to any
/// address and port, until narrowed with the builder methods. Written in the singular form for
/// one value and the plural form (`...Prefixes`, `...Ranges`) for several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsgRule {
    pub name: String,
    /// 100..=4096, unique per direction in an NSG.
    pub priority: u16,
    /// `Inbound` or `Outbound`.
    pub direction: &'static str,
    /// `Allow` or `Deny`.
    pub access: &'static str,
    /// `Tcp`, `Udp`, `Icmp`, ... or `*`.
    pub protocol: &'static str,
    /// Address prefixes or service tags (`VirtualNetwork`, `Internet`, ...).
    pub sources: Vec<String>,
    pub destinations: Vec<String>,
    /// `N`, `N-M` or `*`.
    pub destination_ports: Vec<String>,
}

impl NsgRule {
    fn new(name: &str, priority: u16, direction: &'static str, access: &'static str) -> NsgRule {
        NsgRule {
            name: name.into(),
            priority,
            direction,
            access,
            protocol: "*",
            sources: vec!["*".into()],
            destinations: vec!["*".into()],
            destination_ports: vec!["*".into()],
        }
    }

    pub fn allow_in(name: &str, priority: u16) -> NsgRule {
        Self::new(name, priority, "Inbound", "Allow")
    }

    pub fn deny_in(name: &str, priority: u16) -> NsgRule {
        Self::new(name, priority, "Inbound", "Deny")
    }

    pub fn allow_out(name: &str, priority: u16) -> NsgRule {
        Self::new(name, priority, "Outbound", "Allow")
    }

    pub fn deny_out(name: &str, priority: u16) -> NsgRule {
        Self::new(name, priority, "Outbound", "Deny")
    }

    pub fn tcp(self) -> NsgRule {
        NsgRule {
            protocol: "Tcp",
            ..self
        }
    }

    pub fn udp(self) -> NsgRule {
        NsgRule {
            protocol: "Udp",
            ..self
        }
    }

    pub fn from<S: ToString>(self, prefixes: impl IntoIterator<Item = S>) -> NsgRule {
        NsgRule {
            sources: prefixes.into_iter().map(|p| p.to_string()).collect(),
            ..self
        }
    }

    pub fn to<S: ToString>(self, prefixes: impl IntoIterator<Item = S>) -> NsgRule {
        NsgRule {
            destinations: prefixes.into_iter().map(|p| p.to_string()).collect(),
            ..self
        }
    }

    pub fn ports<S: ToString>(self, ranges: impl IntoIterator<Item = S>) -> NsgRule {
        NsgRule {
            destination_ports: ranges.into_iter().map(|p| p.to_string()).collect(),
            ..self
        }
    }

    /// The rule as an item of a `securityRules:` list indented by four spaces.
    fn yaml(&self) -> String {
        let quoted = |s: &str| serde_json::Value::from(s).to_string();
        let field = |singular: &str, plural: &str, values: &[String]| match values {
            [one] => format!("        {singular}: {}\n", quoted(one)),
            many => format!(
                "        {plural}: [{}]\n",
                many.iter()
                    .map(|v| quoted(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut out = format!(
            "      - name: {}\n        priority: {}\n        direction: {}\n        access: {}\n        protocol: {}\n",
            quoted(&self.name),
            self.priority,
            self.direction,
            self.access,
            quoted(self.protocol)
        );
        out.push_str(&field(
            "sourceAddressPrefix",
            "sourceAddressPrefixes",
            &self.sources,
        ));
        out.push_str("        sourcePortRange: \"*\"\n");
        out.push_str(&field(
            "destinationAddressPrefix",
            "destinationAddressPrefixes",
            &self.destinations,
        ));
        out.push_str(&field(
            "destinationPortRange",
            "destinationPortRanges",
            &self.destination_ports,
        ));
        out
    }
}

/// `spec` with the network security group `nsg` of `rules` (the default rules are always
/// there), associated with each subnet of `subnets` (which must have no NSG yet). Adds a
/// `networkSecurityGroups` section, or the NSG to the one there is.
pub fn with_nsg(spec: &str, nsg: &str, subnets: &[&str], rules: &[NsgRule]) -> String {
    let mut group = match rules {
        [] => format!("  - name: {nsg}\n    securityRules: []\n"),
        _ => format!("  - name: {nsg}\n    securityRules:\n"),
    };
    for rule in rules {
        group.push_str(&rule.yaml());
    }
    const SECTION: &str = "\nnetworkSecurityGroups:\n";
    let mut out = match spec.find(SECTION) {
        Some(i) => {
            let at = i + SECTION.len();
            format!("{}{group}{}", &spec[..at], &spec[at..])
        }
        None => format!("{}{SECTION}{group}", spec.trim_end()),
    };
    let subnets_at = out
        .find("\n  subnets:\n")
        .expect("the spec has a subnets list under virtualNetwork");
    for subnet in subnets {
        let line = format!("\n    - name: {subnet}\n");
        let at = out[subnets_at..]
            .find(&line)
            .map(|i| subnets_at + i + line.len())
            .unwrap_or_else(|| panic!("the spec has no subnet {subnet}"));
        let has_nsg = out[at..]
            .lines()
            .take_while(|l| l.starts_with("      "))
            .any(|l| l.trim_start().starts_with("networkSecurityGroup:"));
        assert!(!has_nsg, "subnet {subnet} already has an NSG");
        out.insert_str(at, &format!("      networkSecurityGroup: {nsg}\n"));
    }
    out
}

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

/// The hits of `nsg`'s rule `rule` in Prometheus text: the sum of every
/// `vnetd_nsg_rule_hits_total` series whose labels `nsg` and `rule` are these.
pub fn nsg_rule_hits_in_metrics(text: &str, nsg: &str, rule: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("vnetd_nsg_rule_hits_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let has = |key: &str, want: &str| {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .any(|(k, v)| k.trim() == key && v.trim().trim_matches('"') == want)
        };
        if has("nsg", nsg) && has("rule", rule) {
            let n = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())? as u64;
            *found.get_or_insert(0) += n;
        }
    }
    found
}

/// The hits of `nsg`'s rule `rule` in a `vnetd status --json` report. The report's layout of
/// NSG hits is the agent's to choose, so this accepts any that keeps the names as strings: a
/// row (array or object) holding the rule's name and a count, with the NSG's name in that row
/// or in one that contains it (as a value or a key); or an object keyed by rule names with
/// counts, inside one naming the NSG. Of a row's numbers it takes a field named `hits`, else
/// its only one (an array row: its last). Sums the rows found; `None` when there is none.
pub fn nsg_rule_hits_in_status(status: &Value, nsg: &str, rule: &str) -> Option<u64> {
    fn walk(v: &Value, nsg: &str, rule: &str, nsg_above: bool, found: &mut Option<u64>) {
        // (key, child): an array's children have no key.
        let children: Vec<(Option<&str>, &Value)> = match v {
            Value::Array(a) => a.iter().map(|c| (None, c)).collect(),
            Value::Object(o) => o.iter().map(|(k, c)| (Some(k.as_str()), c)).collect(),
            _ => return,
        };
        let nsg_here = nsg_above || children.iter().any(|(_, c)| c.as_str() == Some(nsg));
        let names_rule = children
            .iter()
            .any(|(k, c)| c.as_str() == Some(rule) || *k == Some(rule));
        if nsg_here && names_rule {
            let count = match v {
                Value::Object(o) => o
                    .get(rule)
                    .and_then(Value::as_u64)
                    .or_else(|| o.get("hits").and_then(Value::as_u64))
                    .or_else(|| {
                        let nums: Vec<u64> = o.values().filter_map(Value::as_u64).collect();
                        (nums.len() == 1).then(|| nums[0])
                    }),
                _ => children.iter().rev().find_map(|(_, c)| c.as_u64()),
            };
            if let Some(n) = count {
                *found.get_or_insert(0) += n;
                return;
            }
        }
        for (k, c) in children {
            walk(c, nsg, rule, nsg_here || k == Some(nsg), found);
        }
    }
    let mut found = None;
    walk(status, nsg, rule, false, &mut found);
    found
}

fn counter(list: &Value, name: &str) -> Result<u64> {
    list.as_array()
        .and_then(|rows| rows.iter().find(|r| r[0] == name))
        .and_then(|r| r[1].as_u64())
        .with_context(|| format!("no counter {name} in {list}"))
}

/// A pod attached through the CNI plugin.
pub struct Pod {
    pub ns: PodNs,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub node: Node,
    pub result: Value,
}

impl std::ops::Deref for Pod {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.ns
    }
}

/// Pings `dst` twice from `pod` with the forged source address `forged` (added to its eth0
/// for the duration), as a pod trying to spoof would; returns how many pings were answered.
pub fn ping_from_forged(pod: &Ns, forged: Ipv4Addr, dst: Ipv4Addr) -> Result<u32> {
    let cidr = format!("{forged}/32");
    pod.ip(["addr", "add", &cidr, "dev", "eth0"])?;
    let out = pod.run([
        "ping",
        "-n",
        "-c",
        "2",
        "-W",
        "1",
        "-I",
        &forged.to_string(),
        &dst.to_string(),
    ]);
    pod.ip(["addr", "del", &cidr, "dev", "eth0"])?;
    let stdout = String::from_utf8_lossy(&out?.stdout).into_owned();
    Ok(stdout.lines().filter(|l| l.contains("bytes from")).count() as u32)
}

/// `ip/24` on the lab's fabric, the way the lab's nodes are addressed (`node_cidr("10.0.0.4")`).
pub fn node_cidr(ip: &str) -> ipnet::Ipv4Net {
    format!("{ip}/24").parse().expect("a node address")
}

/// Where most end-to-end tests start: a lab whose node-1 (10.0.0.4) runs an agent on the lab's
/// spec (`examples/lab.yaml`).
pub fn lab_with_agent() -> Result<(Lab, Node, Agent)> {
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, &lab_spec())?;
    Ok((lab, node, agent))
}

/// A lab whose node-1 (10.0.0.4) runs an agent on `spec`, with `pods` pods in `apps`
/// (`pod-0`, ...).
pub fn node_with_pods(spec: &str, pods: usize) -> Result<(Lab, Node, Agent, Vec<Pod>)> {
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, spec)?;
    let pods = (0..pods)
        .map(|i| add_pod(&lab, &node, &format!("pod-{i}"), Some("apps"), ""))
        .collect::<Result<Vec<_>>>()?;
    Ok((lab, node, agent, pods))
}

/// The hits of the rules named in `rules`' keys of `nsg` on `agent`, from `/metrics` and from
/// `vnetd status --json` (absent = 0).
pub fn nsg_hits(
    agent: &Agent,
    nsg: &str,
    rules: &BTreeMap<String, u64>,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let metrics = agent.metrics()?;
    let status = agent.status()?;
    Ok(rules
        .keys()
        .map(|r| {
            (
                nsg_rule_hits_in_metrics(&metrics, nsg, r).unwrap_or(0),
                nsg_rule_hits_in_status(&status, nsg, r).unwrap_or(0),
            )
        })
        .unzip())
}

/// Expected hits by rule name.
pub fn hit_counts(rules: &[(&str, u64)]) -> BTreeMap<String, u64> {
    rules.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

/// Waits (the metrics are refreshed every second) until `agent`'s hits of `nsg`'s rules have
/// grown from `before` by exactly `expected`, in `/metrics` and in the status alike; an error
/// shows every rule's growth in both.
pub fn expect_nsg_hits(
    agent: &Agent,
    nsg: &str,
    expected: &BTreeMap<String, u64>,
    before: &(Vec<u64>, Vec<u64>),
) -> Result<()> {
    let want: Vec<u64> = expected.values().copied().collect();
    let grown = |now: &[u64], then: &[u64]| -> Vec<u64> {
        now.iter()
            .zip(then)
            .map(|(n, t)| n.saturating_sub(*t))
            .collect()
    };
    let mut last = (Vec::new(), Vec::new());
    let ok = wait_for(Duration::from_secs(5), || {
        match nsg_hits(agent, nsg, expected) {
            Ok(now) => {
                last = (grown(&now.0, &before.0), grown(&now.1, &before.1));
                last.0 == want && last.1 == want
            }
            Err(_) => false,
        }
    });
    if !ok {
        let rows: Vec<String> = expected
            .iter()
            .enumerate()
            .map(|(i, (rule, n))| {
                format!(
                    "  {rule}: expected +{n}, /metrics +{}, status +{}",
                    last.0.get(i).copied().unwrap_or_default(),
                    last.1.get(i).copied().unwrap_or_default()
                )
            })
            .collect();
        anyhow::bail!(
            "the hits of {nsg} on {} did not move as expected:\n{}",
            agent.node.role,
            rows.join("\n")
        );
    }
    Ok(())
}

/// The network config the CNI plugin gets on stdin for `agent` and `subnet`.
pub fn cni_config(node: &Node, subnet: Option<&str>) -> String {
    let mut conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "vnetd",
        "type": "vnetd-cni",
        "agentSocket": node.api_socket,
    });
    if let Some(subnet) = subnet {
        conf["subnet"] = subnet.into();
    }
    conf.to_string()
}

/// A CNI call of `command` for a pod namespace.
pub fn cni_call(
    command: &str,
    node: &Node,
    pod: &PodNs,
    subnet: Option<&str>,
    args: &str,
) -> CniCall {
    CniCall {
        command: command.into(),
        plugin: bin("vnetd-cni"),
        container_id: format!("ctr-{}", pod.role),
        netns: pod.path.clone(),
        ifname: "eth0".into(),
        args: args.into(),
        config: cni_config(node, subnet),
        ..Default::default()
    }
}

/// Creates a pod namespace and attaches it with CNI ADD in `subnet` (or as the container group
/// named in `args`), returning it with its address.
pub fn add_pod(
    lab: &Lab,
    node: &Node,
    name: &str,
    subnet: Option<&str>,
    args: &str,
) -> Result<Pod> {
    let ns = lab.add_pod_netns(name)?;
    let call = cni_call("ADD", node, &ns, subnet, args);
    let out = node.cni(&call)?;
    if out.exit != 0 {
        bail!(
            "CNI ADD of {name} failed ({}): {} {}",
            out.exit,
            out.stdout,
            out.stderr
        );
    }
    let result = out.json()?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in the CNI result {result}"))?;
    Ok(Pod {
        ns,
        ip,
        container_id: call.container_id,
        node: node.clone(),
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsg_hits_are_read_from_metrics_and_status() {
        let text = "# TYPE vnetd_nsg_rule_hits counter\n\
            vnetd_nsg_rule_hits_total{nsg=\"apps-nsg\",rule=\"deny-x\",direction=\"Inbound\",access=\"Deny\"} 3\n\
            vnetd_nsg_rule_hits_total{nsg=\"other\",rule=\"deny-x\",direction=\"Inbound\",access=\"Deny\"} 5\n";
        assert_eq!(
            nsg_rule_hits_in_metrics(text, "apps-nsg", "deny-x"),
            Some(3)
        );
        assert_eq!(nsg_rule_hits_in_metrics(text, "apps-nsg", "deny-y"), None);
        let rows = serde_json::json!({"node": "node-1", "nsg_hits": [
            ["apps-nsg", "deny-x", "Inbound", "Deny", 3],
            ["other", "deny-x", "Inbound", "Deny", 5],
        ]});
        assert_eq!(
            nsg_rule_hits_in_status(&rows, "apps-nsg", "deny-x"),
            Some(3)
        );
        let objects = serde_json::json!({"nsg_hits": [
            {"nsg": "apps-nsg", "rule": "deny-x", "direction": "Inbound", "access": "Deny", "hits": 3},
            {"nsg": "other", "rule": "deny-x", "direction": "Inbound", "access": "Deny", "hits": 5},
        ]});
        assert_eq!(
            nsg_rule_hits_in_status(&objects, "apps-nsg", "deny-x"),
            Some(3)
        );
        let nested = serde_json::json!({"nsgs": [
            {"name": "apps-nsg", "rules": [{"name": "deny-x", "hits": 3}, {"name": "y", "hits": 1}]},
            {"name": "other", "rules": [{"name": "deny-x", "hits": 5}]},
        ]});
        assert_eq!(
            nsg_rule_hits_in_status(&nested, "apps-nsg", "deny-x"),
            Some(3)
        );
        let keyed =
            serde_json::json!({"nsg_hits": {"apps-nsg": {"deny-x": 3}, "other": {"deny-x": 5}}});
        assert_eq!(
            nsg_rule_hits_in_status(&keyed, "apps-nsg", "deny-x"),
            Some(3)
        );
        assert_eq!(nsg_rule_hits_in_status(&keyed, "apps-nsg", "nope"), None);
    }

    /// The edits give specs the agent accepts (`vnetd validate`, when the binary is built).
    #[test]
    fn spec_edits_validate() {
        let specs = [
            with_outbound_nat(&lab_spec(), &["portRange: \"40000-40015\""]),
            with_outbound_nat(&lab_spec(), &["nonMasqueradeCidrs: [198.51.100.0/24]"]),
            with_public_group(&lab_spec(), "web", Ipv4Addr::new(203, 0, 113, 20), 8080),
            with_public_group_ports(
                &lab_spec(),
                "web",
                Ipv4Addr::new(203, 0, 113, 20),
                &[8001, 8002],
            ),
            with_nsg(
                &with_nsg(
                    &lab_spec(),
                    "apps-nsg",
                    &["apps"],
                    &[
                        NsgRule::deny_in("deny-some", 100)
                            .tcp()
                            .from(["10.0.2.10/31", "198.51.100.0/24"])
                            .ports(["8000-8080", "9000"]),
                        NsgRule::allow_in("allow-vnet", 110).from(["VirtualNetwork"]),
                        NsgRule::deny_out("deny-smtp-out", 100)
                            .tcp()
                            .to(["198.51.100.10"])
                            .ports(["25"]),
                    ],
                ),
                "aci-nsg",
                &["aci", "nodes"],
                &[],
            ),
        ];
        let vnetd = bin("vnetd");
        if !vnetd.exists() {
            eprintln!(
                "{} not built: checking the edits' text only",
                vnetd.display()
            );
        }
        let nsgs = &specs[4];
        assert!(
            nsgs.contains(
                "    - name: apps\n      networkSecurityGroup: apps-nsg\n      addressPrefix:"
            ) && nsgs
                .contains("      networkSecurityGroup: aci-nsg\n      addressPrefix: 10.0.1.0/24")
                && nsgs.contains("sourceAddressPrefixes: [\"10.0.2.10/31\", \"198.51.100.0/24\"]")
                && nsgs.contains("destinationPortRange: \"25\""),
            "{nsgs}"
        );
        for spec in &specs {
            assert_ne!(*spec, lab_spec());
            if let Some(Err(problem)) = validate(spec) {
                panic!("{spec}\n{problem}");
            }
        }
    }
}
