//! What the plugin's unit tests share: a stand-in agent on a real socket, and the environment
//! and configuration of typical invocations.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::api::proto::{AddResult, Response};

/// A stand-in for the agent: serves one connection on a real Unix socket, records the
/// request line and answers with a canned line.
pub(super) struct FakeAgent {
    pub(super) socket: PathBuf,
    server: Option<JoinHandle<Option<Value>>>,
}

impl FakeAgent {
    pub(super) fn answering(response: Response) -> Self {
        Self::answering_line(serde_json::to_string(&response).unwrap())
    }

    pub(super) fn answering_line(line: String) -> Self {
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
    pub(super) fn request(mut self) -> Value {
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

pub(super) fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

pub(super) const NETNS: &str = "/run/netns/pod1";

pub(super) fn add_env(cni_args: &str) -> impl Fn(&str) -> Option<String> + use<> {
    env_of(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", cni_args),
        ("CNI_PATH", "/opt/cni/bin"),
    ])
}

pub(super) fn command_env(command: &str) -> impl Fn(&str) -> Option<String> + use<> {
    env_of(&[
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ])
}

pub(super) fn config(socket: &Path, version: &str, extra: Value) -> Vec<u8> {
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

pub(super) fn added() -> AddResult {
    AddResult {
        host_ifname: "vnd1a2b3c4d".into(),
        host_mac: [0xee, 0xee, 0xee, 0xee, 0xee, 0xee],
        pod_mac: [0x02, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e],
        ip: Ipv4Addr::new(10, 0, 2, 4),
        gateway: Ipv4Addr::new(169, 254, 1, 1),
        mtu: 1500,
        routes: crate::api::proto::default_route_only(),
    }
}

pub(super) fn parsed(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{stdout:?}: {e}"))
}

pub(super) fn code_of(stdout: &str) -> u64 {
    parsed(stdout)["code"].as_u64().unwrap()
}

pub(super) fn nowhere() -> PathBuf {
    std::env::temp_dir().join(format!("vnetd-cni-test-{}-absent.sock", std::process::id()))
}
