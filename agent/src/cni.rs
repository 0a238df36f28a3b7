//! The CNI plugin `vnetd-cni` (spec 1.0.0 and 1.1.0), kept here rather than in the binary so that
//! tests can drive it without a process. The plugin is a thin client of the agent: it reads the
//! `CNI_*` environment and the network configuration, sends one request over the agent's socket,
//! and turns the answer into CNI's result or error JSON. The agent creates the interfaces and
//! programs the dataplane.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::api::{
    client,
    proto::{
        AddRequest, AddResult, ApiError, Attachment, CheckRequest, Request, Response,
        container_id_problem, ifname_problem, network_name_problem,
    },
};

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// The newest supported version: used for output when the caller asked for none we speak.
pub const LATEST_VERSION: &str = "1.1.0";
pub const DEFAULT_AGENT_SOCKET: &str = "/run/vnetd/vnetd.sock";
/// How long to wait for the agent: ADD creates a veth pair and programs maps, which can take a
/// moment on a busy node.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    // The spec's well-known codes.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (1.1.0): the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;

    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

impl From<ApiError> for CniError {
    fn from(err: ApiError) -> Self {
        Self {
            code: err.code,
            msg: err.msg,
            details: err.details,
        }
    }
}

/// What `CNI_ARGS` tells us about the pod; every other key is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub container_group: Option<String>,
    pub k8s_namespace: Option<String>,
    pub k8s_pod: Option<String>,
}

/// The invocation, from the `CNI_*` environment: each command with exactly what it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CniEnv {
    Add {
        attachment: Attachment,
        netns: PathBuf,
        args: CniArgs,
    },
    /// `CNI_NETNS` is optional on DEL (the namespace may already be gone) and the agent does not
    /// need it: it knows what it made for the attachment.
    Del {
        attachment: Attachment,
    },
    Check {
        attachment: Attachment,
        netns: PathBuf,
    },
    Status,
    Gc,
    Version,
}

impl CniEnv {
    pub fn command(&self) -> &'static str {
        match self {
            CniEnv::Add { .. } => "ADD",
            CniEnv::Del { .. } => "DEL",
            CniEnv::Check { .. } => "CHECK",
            CniEnv::Status => "STATUS",
            CniEnv::Gc => "GC",
            CniEnv::Version => "VERSION",
        }
    }
}

/// The plugin's configuration: one plugin object of a conflist, as the runtime passes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub agent_socket: PathBuf,
    /// Which subnet's pool ADD allocates from; the agent picks when absent.
    pub subnet: Option<String>,
    pub mtu: Option<u32>,
    /// CHECK's `prevResult`, checked only by CHECK (DEL may carry one too and ignores it).
    pub prev_result: Option<serde_json::Value>,
    /// GC's `cni.dev/valid-attachments`; `None` when the key is absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The configuration as it arrives; `parse_config` checks it.
#[derive(Deserialize)]
struct RawNetConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    #[serde(rename = "agentSocket")]
    agent_socket: Option<PathBuf>,
    subnet: Option<String>,
    mtu: Option<u32>,
    ipam: Option<serde_json::Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<serde_json::Value>,
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        deserialize_with = "present"
    )]
    valid_attachments: Option<Option<Vec<GcAttachment>>>,
    /// libcni also sends the list under this name (a spec typo it keeps compatible with).
    #[serde(rename = "cni.dev/attachments", default, deserialize_with = "present")]
    attachments: Option<Option<Vec<GcAttachment>>>,
}

/// Tells a key given as `null` (`Some(None)`) from an absent key (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
struct GcAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// Reads the `CNI_*` environment. `env` looks a variable up (`std::env::var` in the binary).
pub fn parse_env(env: &impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
    let var = |name: &str| env(name).filter(|value| !value.is_empty());
    let required = |name: &str| {
        var(name).ok_or_else(|| {
            CniError::new(CniError::INVALID_ENVIRONMENT, format!("{name} is not set"))
        })
    };
    let command = required("CNI_COMMAND")?;
    let attachment = || -> Result<Attachment, CniError> {
        Ok(Attachment {
            // The network's name is in the configuration, not the environment: see `execute`.
            network: String::new(),
            container_id: required("CNI_CONTAINERID")?,
            ifname: required("CNI_IFNAME")?,
        })
    };
    match command.as_str() {
        "ADD" => {
            let attachment = attachment()?;
            validate_container_id(&attachment.container_id)?;
            validate_ifname(&attachment.ifname)?;
            let netns = PathBuf::from(required("CNI_NETNS")?);
            let args = parse_cni_args(&var("CNI_ARGS").unwrap_or_default())?;
            Ok(CniEnv::Add {
                attachment,
                netns,
                args,
            })
        }
        "DEL" => Ok(CniEnv::Del {
            attachment: attachment()?,
        }),
        "CHECK" => {
            let attachment = attachment()?;
            Ok(CniEnv::Check {
                attachment,
                netns: PathBuf::from(required("CNI_NETNS")?),
            })
        }
        "STATUS" => Ok(CniEnv::Status),
        "GC" => Ok(CniEnv::Gc),
        "VERSION" => Ok(CniEnv::Version),
        other => Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )),
    }
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    match container_id_problem(id) {
        Some(problem) => Err(CniError::new(CniError::INVALID_ENVIRONMENT, problem)),
        None => Ok(()),
    }
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    match ifname_problem(name) {
        Some(problem) => Err(CniError::new(CniError::INVALID_ENVIRONMENT, problem)),
        None => Ok(()),
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Unknown keys (including `IgnoreUnknown`) are ignored; an empty value
/// counts as not given.
pub fn parse_cni_args(cni_args: &str) -> Result<CniArgs, CniError> {
    let mut args = CniArgs::default();
    for pair in cni_args.split(';').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=').filter(|(key, _)| !key.is_empty()) else {
            return Err(CniError::new(
                CniError::INVALID_ENVIRONMENT,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            ));
        };
        let value = (!value.is_empty()).then(|| value.to_string());
        match key {
            "VNETD_CONTAINER_GROUP" => args.container_group = value,
            "K8S_POD_NAMESPACE" => args.k8s_namespace = value,
            "K8S_POD_NAME" => args.k8s_pod = value,
            _ => {}
        }
    }
    Ok(args)
}

/// Parses and checks the configuration on stdin. JSON that does not decode into the expected
/// shapes is code 6 (as a Go plugin's unmarshal failure is); decoded values that make no sense
/// are code 7; a version we do not speak is code 1.
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    let raw: RawNetConf = serde_json::from_slice(stdin).map_err(|err| {
        CniError::new(
            CniError::DECODE_FAILURE,
            "cannot decode the network configuration",
        )
        .with_details(err.to_string())
    })?;
    let cni_version = check_version(raw.cni_version.as_deref())?;
    let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
    let name = raw.name.filter(|name| !name.is_empty());
    let name = name.ok_or_else(|| invalid("the network configuration has no name".into()))?;
    if let Some(problem) = network_name_problem(&name) {
        return Err(invalid(format!("the network configuration's {problem}")));
    }
    if raw
        .plugin_type
        .is_none_or(|plugin_type| plugin_type.is_empty())
    {
        return Err(invalid("the network configuration has no type".into()));
    }
    // Addresses come from the agent's pools; an `ipam` section would silently do nothing.
    if let Some(ipam) = raw.ipam {
        return Err(CniError::new(
            CniError::UNSUPPORTED_FIELD,
            format!(
                "unsupported field ipam={ipam}: vnetd-cni takes addresses from the agent's pools \
                 (choose one with \"subnet\")"
            ),
        ));
    }
    if let Some(mtu) = raw.mtu.filter(|mtu| !(68..=65535).contains(mtu)) {
        return Err(invalid(format!("mtu {mtu} is outside 68..=65535")));
    }
    let agent_socket = raw
        .agent_socket
        .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into());
    if agent_socket.as_os_str().is_empty() {
        return Err(invalid("agentSocket is empty".into()));
    }
    let valid_attachments = raw.valid_attachments.or(raw.attachments).map(|list| {
        // libcni sends `null` when the runtime has no attachments at all.
        list.unwrap_or_default()
            .into_iter()
            .map(|a| Attachment {
                network: name.clone(),
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect()
    });
    Ok(NetConf {
        cni_version,
        name,
        agent_socket,
        subnet: raw.subnet.filter(|subnet| !subnet.is_empty()),
        mtu: raw.mtu,
        prev_result: raw.prev_result,
        valid_attachments,
    })
}

fn check_version(version: Option<&str>) -> Result<String, CniError> {
    match version {
        Some(version) if SUPPORTED_VERSIONS.contains(&version) => Ok(version.to_string()),
        // libcni reads a missing cniVersion as 0.1.0.
        other => Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version {}: vnetd-cni supports {}",
                other.unwrap_or("0.1.0 (no cniVersion)"),
                SUPPORTED_VERSIONS.join(", ")
            ),
        )),
    }
}

/// The version to write output in: the configuration's when we speak it, else the newest.
fn output_version(stdin: &[u8]) -> &'static str {
    #[derive(Deserialize)]
    struct VersionOnly {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let requested = serde_json::from_slice::<VersionOnly>(stdin)
        .ok()
        .and_then(|v| v.cni_version);
    SUPPORTED_VERSIONS
        .into_iter()
        .find(|v| requested.as_deref() == Some(*v))
        .unwrap_or(LATEST_VERSION)
}

#[derive(Serialize)]
struct ResultOutput<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    interfaces: [InterfaceOutput; 2],
    ips: [IpOutput; 1],
    routes: [RouteOutput; 1],
    dns: DnsOutput,
}

#[derive(Serialize)]
struct InterfaceOutput {
    name: String,
    mac: String,
    /// New in 1.1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<String>,
}

#[derive(Serialize)]
struct IpOutput {
    address: String,
    gateway: String,
    /// Index into `interfaces`: the pod's side.
    interface: usize,
}

#[derive(Serialize)]
struct RouteOutput {
    dst: &'static str,
    gw: String,
}

/// The agent configures no DNS; the runtime does.
#[derive(Serialize)]
struct DnsOutput {}

/// Lowercase, colon-separated, as CNI results and `ip link` write MACs.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// ADD's result: the host and pod ends of the veth, the pod's /32 behind the gateway, and the
/// default route via the gateway.
pub fn result_json(cni_version: &str, ifname: &str, netns: &Path, added: &AddResult) -> String {
    let mtu = (cni_version != "1.0.0").then_some(added.mtu);
    let output = ResultOutput {
        cni_version,
        interfaces: [
            InterfaceOutput {
                name: added.host_ifname.clone(),
                mac: format_mac(&added.host_mac),
                mtu,
                sandbox: None,
            },
            InterfaceOutput {
                name: ifname.to_string(),
                mac: format_mac(&added.pod_mac),
                mtu,
                sandbox: Some(netns.display().to_string()),
            },
        ],
        ips: [IpOutput {
            address: format!("{}/32", added.ip),
            gateway: added.gateway.to_string(),
            interface: 1,
        }],
        routes: [RouteOutput {
            dst: "0.0.0.0/0",
            gw: added.gateway.to_string(),
        }],
        dns: DnsOutput {},
    };
    serde_json::to_string(&output).expect("the result serializes")
}

/// The spec's error object.
pub fn error_json(cni_version: &str, err: &CniError) -> String {
    #[derive(Serialize)]
    struct ErrorOutput<'a> {
        #[serde(rename = "cniVersion")]
        cni_version: &'a str,
        code: u32,
        msg: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        details: &'a str,
    }
    let output = ErrorOutput {
        cni_version,
        code: err.code,
        msg: &err.msg,
        details: &err.details,
    };
    serde_json::to_string(&output).expect("the error serializes")
}

/// VERSION's answer, in the requested version when we speak it.
pub fn version_json(cni_version: &str) -> String {
    serde_json::json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS })
        .to_string()
}

/// Runs one invocation: returns the exit code and what to print on stdout. Errors are also
/// written to stderr in human form, because runtimes log the plugin's stderr.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (i32, String) {
    let version = output_version(stdin);
    match execute(&env, stdin, version) {
        Ok(stdout) => (0, stdout),
        Err((command, err)) => {
            let details = if err.details.is_empty() {
                String::new()
            } else {
                format!(" ({})", err.details)
            };
            eprintln!(
                "vnetd-cni {command}: {}{details} [CNI error {}]",
                err.msg, err.code
            );
            (1, error_json(version, &err))
        }
    }
}

fn execute(
    env: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    version: &str,
) -> Result<String, (String, CniError)> {
    let command_name = || env("CNI_COMMAND").unwrap_or_else(|| "(no CNI_COMMAND)".into());
    let invocation = parse_env(env).map_err(|err| (command_name(), err))?;
    let command = invocation.command();
    let failed = |err: CniError| (command.to_string(), err);
    if invocation == CniEnv::Version {
        return Ok(version_json(version));
    }
    let conf = parse_config(stdin).map_err(failed)?;
    if matches!(invocation, CniEnv::Status | CniEnv::Gc) && conf.cni_version == "1.0.0" {
        return Err(failed(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!("{command} needs cniVersion 1.1.0; the configuration says 1.0.0"),
        )));
    }
    let on_network = |attachment: Attachment| Attachment {
        network: conf.name.clone(),
        ..attachment
    };
    match invocation {
        CniEnv::Add {
            attachment,
            netns,
            args,
        } => {
            let attachment = on_network(attachment);
            let ifname = attachment.ifname.clone();
            let request = Request::Add(AddRequest {
                attachment,
                netns: netns.clone(),
                subnet: conf.subnet.clone(),
                container_group: args.container_group,
                k8s_namespace: args.k8s_namespace,
                k8s_pod: args.k8s_pod,
                mtu: conf.mtu,
            });
            match ask_agent(&conf, &request, CniError::TRY_AGAIN_LATER).map_err(failed)? {
                Response::Added(added) => {
                    Ok(result_json(&conf.cni_version, &ifname, &netns, &added))
                }
                other => Err(failed(unexpected(&other))),
            }
        }
        CniEnv::Del { attachment } => {
            // Agent down on DEL: we cannot tell whether anything is left to clean up, and
            // answering success would make the runtime forget the attachment while the agent
            // may still hold its address and interface. Code 11 makes the runtime retry.
            let request = Request::Del(on_network(attachment));
            expect_done(ask_agent(&conf, &request, CniError::TRY_AGAIN_LATER)).map_err(failed)
        }
        CniEnv::Check { attachment, netns } => {
            check_prev_result(&conf, &attachment.ifname, &netns).map_err(failed)?;
            let request = Request::Check(CheckRequest {
                attachment: on_network(attachment),
                netns,
            });
            expect_done(ask_agent(&conf, &request, CniError::TRY_AGAIN_LATER)).map_err(failed)
        }
        CniEnv::Status => {
            let request = Request::Ready {
                subnet: conf.subnet.clone(),
            };
            expect_done(ask_agent(&conf, &request, CniError::NOT_AVAILABLE)).map_err(failed)
        }
        CniEnv::Gc => {
            // Without the list, GC would release every attachment on the node: refuse instead.
            let valid = conf.valid_attachments.clone().ok_or_else(|| {
                failed(CniError::new(
                    CniError::INVALID_CONFIG,
                    "GC needs cni.dev/valid-attachments in the configuration",
                ))
            })?;
            let request = Request::Gc {
                network: conf.name.clone(),
                valid,
            };
            expect_done(ask_agent(&conf, &request, CniError::TRY_AGAIN_LATER)).map_err(failed)
        }
        CniEnv::Version => Ok(version_json(version)),
    }
}

/// Calls the agent. Not getting an answer is `unreachable_code` (11 "try again later", or 50
/// "not available" for STATUS); an answer we cannot read means the plugin and the agent do not
/// match, which retrying will not fix.
fn ask_agent(
    conf: &NetConf,
    request: &Request,
    unreachable_code: u32,
) -> Result<Response, CniError> {
    client::call(&conf.agent_socket, request, AGENT_TIMEOUT).map_err(|err| {
        let garbled = err
            .chain()
            .filter_map(|cause| cause.downcast_ref::<serde_json::Error>())
            .any(|json_err| !json_err.is_eof());
        if garbled {
            CniError::new(
                ApiError::INTERNAL,
                format!(
                    "cannot read the answer of the vnetd agent at {} (are the plugin and the \
                     agent the same version?)",
                    conf.agent_socket.display()
                ),
            )
            .with_details(format!("{err:#}"))
        } else {
            CniError::new(
                unreachable_code,
                format!(
                    "no answer from the vnetd agent at {}",
                    conf.agent_socket.display()
                ),
            )
            .with_details(format!("{err:#}"))
        }
    })
}

fn expect_done(answer: Result<Response, CniError>) -> Result<String, CniError> {
    match answer? {
        Response::Done => Ok(String::new()),
        other => Err(unexpected(&other)),
    }
}

/// Turns an agent's error into the CNI error it carries, and any other unexpected answer into
/// an internal error.
fn unexpected(answer: &Response) -> CniError {
    match answer {
        Response::Error(err) => err.clone().into(),
        other => CniError::new(
            ApiError::INTERNAL,
            format!("the vnetd agent answered {}", answer_kind(other)),
        ),
    }
}

fn answer_kind(answer: &Response) -> &'static str {
    match answer {
        Response::Added(_) => "an ADD result",
        Response::Done => "done",
        Response::Status(_) => "a status report",
        Response::Error(_) => "an error",
    }
}

/// CHECK's `prevResult`: what the runtime recorded from ADD. The agent checks the live state;
/// here we only make sure the record is a result that lists our interface in this sandbox.
fn check_prev_result(conf: &NetConf, ifname: &str, netns: &Path) -> Result<(), CniError> {
    #[derive(Deserialize)]
    struct PrevResult {
        #[serde(default)]
        interfaces: Vec<PrevInterface>,
        #[serde(default)]
        ips: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct PrevInterface {
        name: String,
        sandbox: Option<String>,
    }
    let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
    let Some(prev) = &conf.prev_result else {
        return Err(invalid(
            "CHECK needs prevResult in the configuration".into(),
        ));
    };
    let prev = PrevResult::deserialize(prev).map_err(|err| {
        invalid("prevResult is not a CNI result".into()).with_details(err.to_string())
    })?;
    let netns = netns.display().to_string();
    let ours = prev
        .interfaces
        .iter()
        .any(|i| i.name == ifname && i.sandbox.as_deref().is_none_or(|s| s == netns));
    if !ours {
        return Err(invalid(format!(
            "prevResult lists no interface {ifname} in {netns}"
        )));
    }
    if prev.ips.is_empty() {
        return Err(invalid("prevResult lists no address".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        io::{BufRead as _, BufReader, Write as _},
        net::Ipv4Addr,
        os::unix::net::UnixListener,
        sync::atomic::{AtomicU32, Ordering},
        thread::JoinHandle,
        time::Instant,
    };

    use serde_json::{Value, json};

    use super::*;

    /// A stand-in for the agent: serves one connection on a real Unix socket, records the
    /// request line and answers with a canned line.
    struct FakeAgent {
        socket: PathBuf,
        server: Option<JoinHandle<Option<Value>>>,
    }

    impl FakeAgent {
        fn answering(response: Response) -> Self {
            Self::answering_line(serde_json::to_string(&response).unwrap())
        }

        fn answering_line(line: String) -> Self {
            let socket = unique_socket_path();
            let listener = UnixListener::bind(&socket).unwrap();
            listener.set_nonblocking(true).unwrap();
            let server = std::thread::spawn(move || {
                // Polls so that a test whose plugin never connects does not hang forever.
                let deadline = Instant::now() + Duration::from_secs(10);
                let stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => return None,
                    }
                };
                stream.set_nonblocking(false).unwrap();
                let mut request = String::new();
                BufReader::new(&stream).read_line(&mut request).unwrap();
                (&stream).write_all(format!("{line}\n").as_bytes()).unwrap();
                Some(serde_json::from_str(&request).unwrap())
            });
            Self {
                socket,
                server: Some(server),
            }
        }

        /// The request the plugin sent.
        fn request(mut self) -> Value {
            self.server
                .take()
                .unwrap()
                .join()
                .unwrap()
                .expect("the plugin never connected")
        }
    }

    impl Drop for FakeAgent {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }

    fn unique_socket_path() -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("vnetd-cni-test-{}-{n}.sock", std::process::id()))
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    const NETNS: &str = "/run/netns/pod1";

    fn add_env(cni_args: &str) -> impl Fn(&str) -> Option<String> + use<> {
        env_of(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", cni_args),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
    }

    fn command_env(command: &str) -> impl Fn(&str) -> Option<String> + use<> {
        env_of(&[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
    }

    fn config(socket: &Path, version: &str, extra: Value) -> Vec<u8> {
        let mut conf = json!({
            "cniVersion": version,
            "name": "vnetd",
            "type": "vnetd-cni",
            "agentSocket": socket,
            "subnet": "apps",
        });
        conf.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::to_vec(&conf).unwrap()
    }

    fn added() -> AddResult {
        AddResult {
            host_ifname: "vnd1a2b3c4d".into(),
            host_mac: [0xee, 0xee, 0xee, 0xee, 0xee, 0xee],
            pod_mac: [0x02, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e],
            ip: Ipv4Addr::new(10, 0, 2, 4),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            mtu: 1500,
        }
    }

    fn parsed(stdout: &str) -> Value {
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{stdout:?}: {e}"))
    }

    fn code_of(stdout: &str) -> u64 {
        parsed(stdout)["code"].as_u64().unwrap()
    }

    fn nowhere() -> PathBuf {
        std::env::temp_dir().join(format!("vnetd-cni-test-{}-absent.sock", std::process::id()))
    }

    // --- parsing ---

    #[test]
    fn cni_args_take_our_keys_and_ignore_the_rest() {
        let args = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;VNETD_CONTAINER_GROUP=api;",
        )
        .unwrap();
        assert_eq!(
            args,
            CniArgs {
                container_group: Some("api".into()),
                k8s_namespace: Some("shop".into()),
                k8s_pod: Some("web-0".into()),
            }
        );
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        assert_eq!(
            parse_cni_args("VNETD_CONTAINER_GROUP=").unwrap(),
            CniArgs::default()
        );
    }

    #[test]
    fn malformed_cni_args_are_invalid_environment() {
        for bad in ["K8S_POD_NAME", "a=b;=c"] {
            let err = parse_cni_args(bad).unwrap_err();
            assert_eq!(err.code, CniError::INVALID_ENVIRONMENT, "{bad}");
            assert!(err.msg.contains("CNI_ARGS"), "{}", err.msg);
        }
    }

    #[test]
    fn add_needs_container_id_netns_and_ifname() {
        for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let full = add_env("");
            let env = |name: &str| if name == missing { None } else { full(name) };
            let err = parse_env(&env).unwrap_err();
            assert_eq!(err.code, CniError::INVALID_ENVIRONMENT);
            assert!(err.msg.contains(missing), "{}", err.msg);
        }
    }

    #[test]
    fn env_is_parsed_per_command() {
        let env = add_env("K8S_POD_NAME=web-0");
        let attachment = Attachment {
            network: String::new(),
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            parse_env(&env).unwrap(),
            CniEnv::Add {
                attachment: attachment.clone(),
                netns: NETNS.into(),
                args: CniArgs {
                    k8s_pod: Some("web-0".into()),
                    ..CniArgs::default()
                },
            }
        );
        // DEL without a namespace: it may be gone already.
        let del = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(parse_env(&del).unwrap(), CniEnv::Del { attachment });
        assert_eq!(
            parse_env(&env_of(&[("CNI_COMMAND", "STATUS")])).unwrap(),
            CniEnv::Status
        );
        assert_eq!(
            parse_env(&env_of(&[("CNI_COMMAND", "GC")])).unwrap(),
            CniEnv::Gc
        );
        assert_eq!(
            parse_env(&env_of(&[("CNI_COMMAND", "VERSION")])).unwrap(),
            CniEnv::Version
        );
        let err = parse_env(&env_of(&[("CNI_COMMAND", "UPDATE")])).unwrap_err();
        assert_eq!(err.code, CniError::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("UPDATE"), "{}", err.msg);
    }

    #[test]
    fn add_rejects_invalid_container_ids_and_ifnames() {
        for (var, value) in [
            ("CNI_IFNAME", "a-very-long-ifname"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_IFNAME", ".."),
            ("CNI_CONTAINERID", "-leading-dash"),
            ("CNI_CONTAINERID", "has space"),
        ] {
            let full = add_env("");
            let env = |name: &str| {
                if name == var {
                    Some(value.to_string())
                } else {
                    full(name)
                }
            };
            let err = parse_env(&env).unwrap_err();
            assert_eq!(err.code, CniError::INVALID_ENVIRONMENT, "{var}={value}");
            assert!(err.msg.contains(var), "{}", err.msg);
        }
    }

    #[test]
    fn config_defaults_and_fields() {
        let conf = parse_config(
            br#"{"cniVersion":"1.1.0","name":"vnetd","type":"vnetd-cni","runtimeConfig":{}}"#,
        )
        .unwrap();
        assert_eq!(
            conf,
            NetConf {
                cni_version: "1.1.0".into(),
                name: "vnetd".into(),
                agent_socket: DEFAULT_AGENT_SOCKET.into(),
                subnet: None,
                mtu: None,
                prev_result: None,
                valid_attachments: None,
            }
        );
        let conf = parse_config(
            br#"{"cniVersion":"1.0.0","name":"vnetd","type":"vnetd-cni","agentSocket":"/tmp/a.sock",
                 "subnet":"apps","mtu":1400}"#,
        )
        .unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(conf.subnet.as_deref(), Some("apps"));
        assert_eq!(conf.mtu, Some(1400));
    }

    #[test]
    fn valid_attachments_null_means_none_valid_and_absent_means_not_given() {
        let with = |list: &str| {
            let text = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":{list}}}"#
            );
            parse_config(text.as_bytes()).unwrap().valid_attachments
        };
        assert_eq!(with("null"), Some(vec![]));
        assert_eq!(
            with(r#"[{"containerID":"a","ifname":"eth0"}]"#),
            Some(vec![Attachment {
                network: "n".into(),
                container_id: "a".into(),
                ifname: "eth0".into()
            }])
        );
        let legacy = br#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/attachments":[]}"#;
        assert_eq!(
            parse_config(legacy).unwrap().valid_attachments,
            Some(vec![])
        );
    }

    #[test]
    fn config_errors_have_the_spec_codes() {
        let cases: [(&[u8], u32); 9] = [
            (b"{not json", CniError::DECODE_FAILURE),
            (b"", CniError::DECODE_FAILURE),
            (
                br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":"big"}"#,
                CniError::DECODE_FAILURE,
            ),
            (
                br#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#,
                CniError::INCOMPATIBLE_VERSION,
            ),
            (
                br#"{"name":"n","type":"t"}"#,
                CniError::INCOMPATIBLE_VERSION,
            ),
            (
                br#"{"cniVersion":"1.1.0","type":"t"}"#,
                CniError::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n"}"#,
                CniError::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":20}"#,
                CniError::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"type":"host-local"}}"#,
                CniError::UNSUPPORTED_FIELD,
            ),
        ];
        for (text, code) in cases {
            let err = parse_config(text).unwrap_err();
            assert_eq!(err.code, code, "{}: {err:?}", String::from_utf8_lossy(text));
        }
        let err = parse_config(br#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#).unwrap_err();
        assert!(
            err.msg.contains("0.4.0") && err.msg.contains("1.0.0, 1.1.0"),
            "{}",
            err.msg
        );
        let err =
            parse_config(br#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{}}"#).unwrap_err();
        assert!(err.msg.contains("ipam"), "{}", err.msg);
    }

    #[test]
    fn network_name_follows_the_cni_rule_and_keys_every_request() {
        let err = parse_config(br#"{"cniVersion":"1.1.0","name":"a/b","type":"t"}"#).unwrap_err();
        assert_eq!(err.code, CniError::INVALID_CONFIG);
        assert!(err.msg.contains("\"a/b\""), "{}", err.msg);
        let conf = parse_config(
            br#"{"cniVersion":"1.1.0","name":"net-b","type":"t",
                 "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"net1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            conf.valid_attachments.unwrap()[0].network,
            "net-b",
            "GC's list is of this network"
        );
    }

    // --- formatting ---

    #[test]
    fn macs_are_lowercase_colon_separated() {
        assert_eq!(
            format_mac(&[0x02, 0xAB, 0x00, 0x0c, 0xff, 0x10]),
            "02:ab:00:0c:ff:10"
        );
    }

    #[test]
    fn result_has_the_cni_shape() {
        let expected = |version: &str, mtu: Option<u32>| {
            let mut host = json!({"name": "vnd1a2b3c4d", "mac": "ee:ee:ee:ee:ee:ee"});
            let mut pod = json!({"name": "eth0", "mac": "02:1a:2b:3c:4d:5e", "sandbox": NETNS});
            if let Some(mtu) = mtu {
                host["mtu"] = json!(mtu);
                pod["mtu"] = json!(mtu);
            }
            json!({
                "cniVersion": version,
                "interfaces": [host, pod],
                "ips": [{"address": "10.0.2.4/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {},
            })
        };
        let v100 = result_json("1.0.0", "eth0", Path::new(NETNS), &added());
        assert_eq!(parsed(&v100), expected("1.0.0", None));
        assert!(
            v100.starts_with(r#"{"cniVersion":"1.0.0","interfaces":"#),
            "{v100}"
        );
        // 1.1.0 results carry the interfaces' MTU.
        let v110 = result_json("1.1.0", "eth0", Path::new(NETNS), &added());
        assert_eq!(parsed(&v110), expected("1.1.0", Some(1500)));
    }

    #[test]
    fn error_has_the_cni_shape() {
        let err = CniError::new(7, "bad").with_details("why");
        assert_eq!(
            error_json("1.0.0", &err),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"}"#
        );
        assert_eq!(
            error_json("1.1.0", &CniError::new(11, "later")),
            r#"{"cniVersion":"1.1.0","code":11,"msg":"later"}"#
        );
    }

    #[test]
    fn version_reports_supported_versions() {
        let env = env_of(&[("CNI_COMMAND", "VERSION")]);
        let (exit, stdout) = run(&env, br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(exit, 0);
        assert_eq!(
            parsed(&stdout),
            json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
        );
        for stdin in [&b""[..], br#"{"cniVersion":"0.4.0"}"#, b"garbage"] {
            let (exit, stdout) = run(&env, stdin);
            assert_eq!(exit, 0);
            assert_eq!(parsed(&stdout)["cniVersion"], "1.1.0");
        }
    }

    // --- run against a fake agent ---

    #[test]
    fn add_sends_the_attachment_and_prints_the_result() {
        let agent = FakeAgent::answering(Response::Added(added()));
        let stdin = config(&agent.socket, "1.0.0", json!({}));
        let (exit, stdout) = run(
            add_env(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;VNETD_CONTAINER_GROUP=api",
            ),
            &stdin,
        );
        assert_eq!(
            (exit, parsed(&stdout)),
            (
                0,
                parsed(&result_json("1.0.0", "eth0", Path::new(NETNS), &added()))
            )
        );
        assert_eq!(
            agent.request(),
            json!({
                "op": "add",
                "network": "vnetd",
                "container_id": "c0ffee",
                "ifname": "eth0",
                "netns": NETNS,
                "subnet": "apps",
                "container_group": "api",
                "k8s_namespace": "shop",
                "k8s_pod": "web-0",
            })
        );
    }

    #[test]
    fn add_passes_the_configured_mtu_to_the_agent() {
        let agent = FakeAgent::answering(Response::Added(added()));
        let stdin = config(&agent.socket, "1.1.0", json!({"mtu": 1300}));
        let (exit, stdout) = run(add_env(""), &stdin);
        assert_eq!(exit, 0, "{stdout}");
        assert_eq!(agent.request()["mtu"], 1300);
    }

    #[test]
    fn agent_errors_pass_through() {
        let agent = FakeAgent::answering(Response::Error(ApiError {
            code: ApiError::POOL_EXHAUSTED,
            msg: "subnet apps has no free address".into(),
            details: "10.0.2.0/23".into(),
        }));
        let stdin = config(&agent.socket, "1.1.0", json!({}));
        let (exit, stdout) = run(add_env(""), &stdin);
        assert_eq!(exit, 1);
        assert_eq!(
            parsed(&stdout),
            json!({
                "cniVersion": "1.1.0",
                "code": 100,
                "msg": "subnet apps has no free address",
                "details": "10.0.2.0/23",
            })
        );
        agent.request();
    }

    #[test]
    fn add_with_the_agent_down_is_try_again_later_naming_the_socket() {
        let socket = nowhere();
        let (exit, stdout) = run(add_env(""), &config(&socket, "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 11));
        assert!(
            parsed(&stdout)["msg"]
                .as_str()
                .unwrap()
                .contains(&*socket.to_string_lossy()),
            "{stdout}"
        );
    }

    #[test]
    fn add_with_a_garbled_answer_is_an_internal_error() {
        let agent = FakeAgent::answering_line(r#"{"what":"ever"}"#.into());
        let (exit, stdout) = run(add_env(""), &config(&agent.socket, "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, u64::from(ApiError::INTERNAL)));
        agent.request();
    }

    #[test]
    fn agent_hanging_up_without_an_answer_is_try_again_later() {
        let agent = FakeAgent::answering_line(String::new());
        let (exit, stdout) = run(
            command_env("DEL"),
            &config(&agent.socket, "1.1.0", json!({})),
        );
        // The fake writes just "\n": an empty answer, as when the agent dies mid-request.
        assert_eq!((exit, code_of(&stdout)), (1, 11));
        agent.request();
    }

    #[test]
    fn add_with_missing_env_or_bad_stdin_fails_before_calling_the_agent() {
        let full = add_env("");
        let no_ifname = |name: &str| {
            if name == "CNI_IFNAME" {
                None
            } else {
                full(name)
            }
        };
        let (exit, stdout) = run(no_ifname, &config(&nowhere(), "1.0.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 4));
        assert!(
            parsed(&stdout)["msg"]
                .as_str()
                .unwrap()
                .contains("CNI_IFNAME")
        );
        assert_eq!(parsed(&stdout)["cniVersion"], "1.0.0");

        let (exit, stdout) = run(add_env(""), b"{\"cniVersion\": ");
        assert_eq!((exit, code_of(&stdout)), (1, 6));

        let (exit, stdout) = run(env_of(&[("CNI_COMMAND", "UPDATE")]), b"{}");
        assert_eq!((exit, code_of(&stdout)), (1, 4));

        let (exit, stdout) = run(
            add_env(""),
            br#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#,
        );
        assert_eq!((exit, code_of(&stdout)), (1, 1));
    }

    #[test]
    fn del_is_silent_on_success_and_retried_when_the_agent_is_down() {
        let agent = FakeAgent::answering(Response::Done);
        let del = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(
            run(&del, &config(&agent.socket, "1.1.0", json!({}))),
            (0, String::new())
        );
        assert_eq!(
            agent.request(),
            json!({"op": "del", "network": "vnetd", "container_id": "c0ffee", "ifname": "eth0"})
        );

        let (exit, stdout) = run(&del, &config(&nowhere(), "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 11));
    }

    #[test]
    fn check_needs_a_valid_prev_result() {
        let socket = nowhere();
        let env = command_env("CHECK");
        for prev in [
            json!({}),
            json!({"prevResult": "not a result"}),
            json!({"prevResult": {"interfaces": [{"name": "eth1", "sandbox": NETNS}], "ips": [{}]}}),
            json!({"prevResult": {"interfaces": [{"name": "eth0", "sandbox": "/other"}], "ips": [{}]}}),
            json!({"prevResult": {"interfaces": [{"name": "eth0", "sandbox": NETNS}], "ips": []}}),
        ] {
            let (exit, stdout) = run(&env, &config(&socket, "1.1.0", prev.clone()));
            assert_eq!((exit, code_of(&stdout)), (1, 7), "{prev}");
        }
    }

    #[test]
    fn check_asks_the_agent() {
        let agent = FakeAgent::answering(Response::Done);
        let prev = parsed(&result_json("1.1.0", "eth0", Path::new(NETNS), &added()));
        let stdin = config(&agent.socket, "1.1.0", json!({ "prevResult": prev }));
        assert_eq!(run(command_env("CHECK"), &stdin), (0, String::new()));
        assert_eq!(
            agent.request(),
            json!({"op": "check", "network": "vnetd", "container_id": "c0ffee", "ifname": "eth0",
                   "netns": NETNS})
        );
    }

    #[test]
    fn status_is_not_available_when_the_agent_is_down_or_the_pool_is_empty() {
        let socket = nowhere();
        let status = env_of(&[("CNI_COMMAND", "STATUS")]);
        let (exit, stdout) = run(&status, &config(&socket, "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 50));
        assert!(
            parsed(&stdout)["msg"]
                .as_str()
                .unwrap()
                .contains(&*socket.to_string_lossy())
        );

        let agent = FakeAgent::answering(Response::Error(ApiError::new(
            ApiError::NOT_READY,
            "no free address in the pool of node n1",
        )));
        let (exit, stdout) = run(&status, &config(&agent.socket, "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 50));
        assert!(parsed(&stdout)["msg"].as_str().unwrap().contains("pool"));
        assert_eq!(agent.request(), json!({"op": "ready", "subnet": "apps"}));

        let agent = FakeAgent::answering(Response::Done);
        assert_eq!(
            run(&status, &config(&agent.socket, "1.1.0", json!({}))),
            (0, String::new())
        );
        agent.request();

        // STATUS is a 1.1.0 command.
        let (exit, stdout) = run(&status, &config(&socket, "1.0.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 1));
    }

    #[test]
    fn gc_sends_the_valid_attachments() {
        let agent = FakeAgent::answering(Response::Done);
        let gc = env_of(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")]);
        let valid = json!({"cni.dev/valid-attachments": [
            {"containerID": "c1", "ifname": "eth0"},
            {"containerID": "c2", "ifname": "net1"},
        ]});
        assert_eq!(
            run(&gc, &config(&agent.socket, "1.1.0", valid)),
            (0, String::new())
        );
        assert_eq!(
            agent.request(),
            json!({"op": "gc", "network": "vnetd", "valid": [
                {"network": "vnetd", "container_id": "c1", "ifname": "eth0"},
                {"network": "vnetd", "container_id": "c2", "ifname": "net1"},
            ]})
        );
        // No list at all: refuse rather than release everything.
        let (exit, stdout) = run(&gc, &config(&nowhere(), "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 7));
    }
}
