//! End to end through libcni, the CNI runtime library containerd and CRI-O are built on: the
//! plugin driven the way a container runtime drives it (conflist loading, `CNI_*` environment,
//! the result parsed into libcni's types and cached, CHECK and DEL fed the cached result as
//! `prevResult`), not by our own harness. Needs root, Go and libcni's sources
//! (`cargo xtask setup` installs `golang-go` and `golang-github-appc-cni-dev`).
//!
//! Debian bookworm ships libcni's sources but not upstream's `cnitool`, so this file carries a
//! small one, [`CNITOOL_GO`], with upstream's command line and environment, built once per
//! run (offline, GOPATH mode against the Debian sources) into `target/cnitool/`.
//!
//! Bookworm's libcni is 1.1.2, which implements CNI spec 1.0.0: its results go up to 1.0.0 and
//! it has no GC or STATUS (they came with spec 1.1.0 in libcni 1.2). So the conflist here says
//! `"cniVersion": "<what libcni implements>"`, GC and STATUS are not exercised, and a second
//! test shows what such a runtime does with a `1.1.0` conflist.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use vnetd_lab::{
    Node, POD_GATEWAY, PodNs,
    ipnet::Ipv4Net,
    serial,
    vnetd::{Agent, bin, lab_with_agent},
};

/// Where Debian's `golang-github-appc-cni-dev` puts libcni (GOPATH layout).
const GOPATH: &str = "/usr/share/gocode";
const LIBCNI_SRC: &str = "/usr/share/gocode/src/github.com/containernetworking/cni";
/// The conflist's network name.
const NET: &str = "vnetd";
/// The spec versions vnetd-cni speaks (`vnetd::cni::SUPPORTED_VERSIONS`), as its VERSION says.
const PLUGIN_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// A `cnitool` on libcni 1.1.x's API: upstream's command line (`add|check|del <net> <netns>`)
/// and environment (`NETCONFPATH`, `CNI_PATH`, `CNI_ARGS`, `CAP_ARGS`, `CNI_IFNAME`; the
/// container id derived from the netns path), plus `CNI_CONTAINERID` (use this id instead),
/// `CNI_CACHE_DIR` (libcni's result cache, instead of /var/lib/cni: the lab keeps its state in
/// its own directory), `validate <net>` (ValidateNetworkList: the plugins' VERSION) and
/// `version` (the newest spec version this libcni implements).
const CNITOOL_GO: &str = r#"// cnitool for the vnetd lab (written by tests/tests/e2e_libcni.rs; edit it there).
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cnitool add|check|del <net> <netns> | validate <net> | version")
	os.Exit(2)
}

func parseArgs(args string) ([][2]string, error) {
	var result [][2]string
	for _, pair := range strings.Split(args, ";") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		result = append(result, [2]string{kv[0], kv[1]})
	}
	return result, nil
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Println(version.Current())
		return
	}
	if len(os.Args) < 3 {
		usage()
	}
	netdir := os.Getenv("NETCONFPATH")
	if netdir == "" {
		netdir = "/etc/cni/net.d"
	}
	list, err := libcni.LoadConfList(netdir, os.Args[2])
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()

	if os.Args[1] == "validate" {
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(err)
		}
		plugins := map[string][]string{}
		for _, plugin := range list.Plugins {
			info, err := cni.GetVersionInfo(ctx, plugin.Network.Type)
			if err != nil {
				fail(err)
			}
			plugins[plugin.Network.Type] = info.SupportedVersions()
		}
		out, _ := json.Marshal(map[string]interface{}{"capabilities": caps, "plugins": plugins})
		fmt.Println(string(out))
		return
	}
	if len(os.Args) != 4 {
		usage()
	}

	var capabilityArgs map[string]interface{}
	if value := os.Getenv("CAP_ARGS"); value != "" {
		if err := json.Unmarshal([]byte(value), &capabilityArgs); err != nil {
			fail(err)
		}
	}
	var cniArgs [][2]string
	if value := os.Getenv("CNI_ARGS"); value != "" {
		if cniArgs, err = parseArgs(value); err != nil {
			fail(err)
		}
	}
	ifName, ok := os.LookupEnv("CNI_IFNAME")
	if !ok {
		ifName = "eth0"
	}
	netns, err := filepath.Abs(os.Args[3])
	if err != nil {
		fail(err)
	}
	containerID := os.Getenv("CNI_CONTAINERID")
	if containerID == "" {
		sum := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cnitool-%x", sum[:10])
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           cniArgs,
		CapabilityArgs: capabilityArgs,
	}

	switch os.Args[1] {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if result != nil {
			_ = result.Print()
		}
		if err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		usage()
	}
}
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The built cnitool: built on first use in this process, reused from `target/cnitool/` while
/// it is newer than its source and libcni's.
fn cnitool() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_cnitool().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_cnitool() -> Result<PathBuf> {
    let setup = "run `cargo xtask setup` (it installs golang-go and golang-github-appc-cni-dev)";
    ensure!(
        Path::new(LIBCNI_SRC).join("libcni/api.go").is_file(),
        "libcni's sources are not in {LIBCNI_SRC}: {setup}"
    );
    let go = ["go", "/usr/lib/go/bin/go"]
        .into_iter()
        .find(|go| {
            Command::new(go)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .with_context(|| format!("no Go toolchain (`go`): {setup}"))?;

    let dir = workspace().join("target/cnitool");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    let main_go = src.join("main.go");
    // Rewritten only when it changed, so its mtime says when the source last changed.
    if std::fs::read_to_string(&main_go).ok().as_deref() != Some(CNITOOL_GO) {
        let tmp = src.join(format!("main.go.{}.tmp", std::process::id()));
        std::fs::write(&tmp, CNITOOL_GO)?;
        std::fs::rename(&tmp, &main_go)?;
    }
    let out = dir.join("cnitool");
    let sources = newest_mtime(&main_go)?.max(newest_mtime(Path::new(LIBCNI_SRC))?);
    if std::fs::metadata(&out)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= sources)
    {
        return Ok(out);
    }

    // GOPATH mode against the Debian sources: no module proxy, no network, no go.mod.
    let tmp = dir.join(format!("cnitool.{}.tmp", std::process::id()));
    let built = Command::new(go)
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOENV", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", dir.join("gocache"))
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg("main.go")
        .output()
        .context("running go build")?;
    ensure!(
        built.status.success(),
        "building cnitool ({} build in {}) failed: {}{}",
        go,
        src.display(),
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// The newest modification time of a file or of anything in a directory tree.
fn newest_mtime(path: &Path) -> Result<SystemTime> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mut newest = meta.modified()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            newest = newest.max(newest_mtime(&entry?.path())?);
        }
    }
    Ok(newest)
}

/// `a.b.c` as numbers, for ordering spec versions.
fn semver(version: &str) -> Vec<u32> {
    version.split('.').filter_map(|n| n.parse().ok()).collect()
}

/// A runtime on one node: cnitool running in the node's namespace with a conflist and libcni's
/// cache in the node's directory and the plugin from `target/release`.
struct Runtime {
    tool: PathBuf,
    node: Node,
    netconf_dir: PathBuf,
    cache_dir: PathBuf,
}

impl Runtime {
    /// Writes the conflist (`cniVersion` as given) for `node`'s agent.
    fn new(node: &Node, cni_version: &str) -> Result<Runtime> {
        let netconf_dir = node.dir.join("net.d");
        std::fs::create_dir_all(&netconf_dir)?;
        let conflist = json!({
            "cniVersion": cni_version,
            "name": NET,
            "plugins": [{
                "type": "vnetd-cni",
                "agentSocket": node.api_socket,
                "subnet": "apps",
            }],
        });
        std::fs::write(
            netconf_dir.join("10-vnetd.conflist"),
            serde_json::to_string_pretty(&conflist)?,
        )?;
        Ok(Runtime {
            tool: cnitool()?,
            node: node.clone(),
            netconf_dir,
            cache_dir: node.dir.join("cni-cache"),
        })
    }

    /// The newest CNI spec version the built libcni implements.
    fn libcni_spec(tool: &Path) -> Result<String> {
        let out = Command::new(tool).arg("version").output()?;
        ensure!(out.status.success(), "cnitool version: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `cnitool <args>` in the node's namespace with the runtime's environment and `env`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = self.node.command(
            std::iter::once(self.tool.as_os_str())
                .chain(args.iter().map(|a| std::ffi::OsStr::new(*a))),
        );
        for var in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CAP_ARGS",
            "CNI_PATH",
            "CNI_CACHE_DIR",
            "NETCONFPATH",
        ] {
            cmd.env_remove(var);
        }
        let plugin = bin("vnetd-cni");
        ensure!(
            plugin.is_file(),
            "{} is missing: run `cargo build --release` first",
            plugin.display()
        );
        cmd.env("NETCONFPATH", &self.netconf_dir)
            .env("CNI_PATH", plugin.parent().expect("the plugin's directory"))
            .env("CNI_CACHE_DIR", &self.cache_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.node.run_command(cmd, Duration::from_secs(60))
    }

    /// `cnitool <op> vnetd <pod netns>`, which must succeed; returns stdout.
    fn ok(&self, op: &str, pod: &PodNs, env: &[(&str, &str)]) -> Result<String> {
        let out = self.run(&[op, NET, &pod.path.to_string_lossy()], env)?;
        if !out.status.success() {
            bail!(
                "cnitool {op} {NET} {} ({env:?}) failed ({}): stdout: {} stderr: {}",
                pod.role,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// libcni's cached result of an attachment (what CHECK and DEL get as `prevResult`).
    fn cached_result(&self, container_id: &str) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{NET}-{container_id}-eth0"))
    }
}

/// Checks an ADD result as libcni printed it, returns the pod's address.
fn check_add_result(result: &Value, cni_version: &str, pod: &PodNs) -> Result<Ipv4Addr> {
    let apps: Ipv4Net = "10.0.2.0/23".parse()?;
    ensure!(result["cniVersion"] == cni_version, "{result:#}");
    let ips = result["ips"].as_array().context("no ips")?;
    ensure!(ips.len() == 1, "one address: {result:#}");
    let address = ips[0]["address"].as_str().context("no address")?;
    let (ip, prefix) = address.split_once('/').context("address/prefix")?;
    let ip: Ipv4Addr = ip.parse()?;
    ensure!(prefix == "32", "a /32: {result:#}");
    ensure!(apps.contains(&ip), "{ip} is not in apps {apps}");
    ensure!(ips[0]["gateway"] == POD_GATEWAY.to_string(), "{result:#}");
    let index = ips[0]["interface"].as_u64().context("ips[0].interface")? as usize;
    let pod_if = &result["interfaces"][index];
    ensure!(pod_if["name"] == "eth0", "{result:#}");
    ensure!(
        pod_if["sandbox"] == pod.path.to_string_lossy().as_ref(),
        "{result:#}"
    );
    ensure!(
        result["routes"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["dst"] == "0.0.0.0/0" && r["gw"] == POD_GATEWAY.to_string())),
        "a default route via {POD_GATEWAY}: {result:#}"
    );
    Ok(ip)
}

/// The agent's endpoint with address `ip`.
fn endpoint(agent: &Agent, ip: Ipv4Addr) -> Result<Value> {
    let status = agent.status()?;
    status["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["ip"] == ip.to_string()).cloned())
        .with_context(|| format!("no endpoint {ip} in {:#}", status["endpoints"]))
}

/// Two pods attached, checked, talking and detached by libcni, as a container runtime does it.
#[test]
fn libcni_adds_checks_and_deletes_pods() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let spec = Runtime::libcni_spec(&cnitool()?)?;
    ensure!(
        PLUGIN_VERSIONS.contains(&spec.as_str()),
        "libcni implements CNI {spec}, which vnetd-cni does not speak"
    );
    let runtime = Runtime::new(&node, &spec)?;

    // ValidateNetworkList: libcni asks the plugin (VERSION) whether it speaks the conflist's
    // version.
    let validated: Value =
        serde_json::from_str(&runtime.run(&["validate", NET], &[]).and_then(|out| {
            ensure!(out.status.success(), "cnitool validate: {out:?}");
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })?)?;
    assert_eq!(
        validated["plugins"]["vnetd-cni"],
        json!(PLUGIN_VERSIONS),
        "{validated}"
    );

    let pod_a = lab.add_pod_netns("pod-a")?;
    let pod_b = lab.add_pod_netns("pod-b")?;
    // pod-a: the container id cnitool derives from the netns path, no CNI_ARGS.
    let result_a: Value = serde_json::from_str(&runtime.ok("add", &pod_a, &[])?)?;
    let ip_a = check_add_result(&result_a, &spec, &pod_a)?;
    // pod-b: what containerd passes for a Kubernetes pod (unknown keys included).
    let cni_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                    K8S_POD_INFRA_CONTAINER_ID=ctr-web-0;K8S_POD_UID=6b1d3c0e-8a2f-4d1e-9b7a-0c1d2e3f4a5b";
    let env_b = [("CNI_ARGS", cni_args), ("CNI_CONTAINERID", "ctr-web-0")];
    let result_b: Value = serde_json::from_str(&runtime.ok("add", &pod_b, &env_b)?)?;
    let ip_b = check_add_result(&result_b, &spec, &pod_b)?;
    assert_ne!(ip_a, ip_b);

    // The agent's view: both endpoints, with the attachment libcni sent and pod-b's Kubernetes
    // identity from CNI_ARGS.
    let endpoints = agent.status()?["endpoints"].clone();
    assert_eq!(endpoints.as_array().map(Vec::len), Some(2), "{endpoints:#}");
    let ep_a = endpoint(&agent, ip_a)?;
    let ep_b = endpoint(&agent, ip_b)?;
    let container_a = ep_a["container_id"].as_str().context("container_id")?;
    assert!(container_a.starts_with("cnitool-"), "{ep_a}");
    assert_eq!(ep_a["ifname"], "eth0", "{ep_a}");
    assert!(ep_a["k8s_pod"].is_null(), "{ep_a}");
    assert_eq!(ep_b["container_id"], "ctr-web-0", "{ep_b}");
    assert_eq!(ep_b["k8s_namespace"], "default", "{ep_b}");
    assert_eq!(ep_b["k8s_pod"], "web-0", "{ep_b}");
    // libcni cached the results: CHECK and DEL get them as prevResult.
    for container in [container_a, "ctr-web-0"] {
        let cached = runtime.cached_result(container);
        assert!(cached.is_file(), "no cached result {}", cached.display());
    }
    // The pod's side as the result describes it.
    let eth0 = pod_a.ip_json(["-4", "addr", "show", "dev", "eth0"])?;
    assert_eq!(eth0[0]["addr_info"][0]["local"], ip_a.to_string(), "{eth0}");
    let host_ifs = [&ep_a, &ep_b].map(|ep| ep["host_ifname"].as_str().unwrap().to_string());

    // CHECK (the plugin refuses a CHECK without a valid prevResult, so this also proves the
    // cached result reached it).
    runtime.ok("check", &pod_a, &[])?;
    runtime.ok("check", &pod_b, &env_b)?;

    assert_eq!(pod_a.ping_count(ip_b, 2)?, 2, "pod-a to pod-b");
    assert_eq!(pod_b.ping_count(ip_a, 2)?, 2, "pod-b to pod-a");

    // DEL, twice each: the runtime retries DEL until it succeeds, so a repeat must succeed.
    for _ in 0..2 {
        runtime.ok("del", &pod_a, &[])?;
        runtime.ok("del", &pod_b, &env_b)?;
    }
    let status = agent.status()?;
    assert_eq!(status["endpoints"], json!([]), "{:#}", status["endpoints"]);
    for pod in [&pod_a, &pod_b] {
        assert!(
            pod.link_info("eth0").is_err(),
            "{} still has eth0",
            pod.role
        );
    }
    for host_if in &host_ifs {
        assert!(node.link_info(host_if).is_err(), "{host_if} is still there");
    }
    for container in [container_a, "ctr-web-0"] {
        assert!(!runtime.cached_result(container).exists());
    }
    Ok(())
}

/// A runtime on libcni older than spec 1.1.0 (containerd 1.7 and bookworm's libcni 1.1.2)
/// with a `"cniVersion": "1.1.0"` conflist: validation passes (the plugin says it speaks
/// 1.1.0), the plugin attaches the pod, and libcni then fails the ADD because it cannot parse a
/// 1.1.0 result. The runtime's answer to a failed ADD is DEL, which must remove the endpoint
/// the failed ADD left (libcni has no cached result to pass). With a libcni that implements
/// 1.1.0, the ADD simply succeeds.
#[test]
fn libcni_with_a_1_1_0_conflist() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let spec = Runtime::libcni_spec(&cnitool()?)?;
    let runtime = Runtime::new(&node, "1.1.0")?;
    let validate = runtime.run(&["validate", NET], &[])?;
    assert!(validate.status.success(), "{validate:?}");

    let pod = lab.add_pod_netns("pod-a")?;
    let netns = pod.path.to_string_lossy().into_owned();
    let add = runtime.run(&["add", NET, &netns], &[])?;
    let stderr = String::from_utf8_lossy(&add.stderr);
    if semver(&spec) < semver("1.1.0") {
        assert!(!add.status.success(), "libcni {spec} took a 1.1.0 result?");
        assert!(
            stderr.contains(r#"unsupported CNI result version "1.1.0""#),
            "{stderr}"
        );
        // The plugin did attach the pod before libcni gave up.
        let endpoints = agent.status()?["endpoints"].clone();
        assert_eq!(endpoints.as_array().map(Vec::len), Some(1), "{endpoints:#}");
    } else {
        assert!(add.status.success(), "{add:?}");
        let result: Value = serde_json::from_slice(&add.stdout)?;
        check_add_result(&result, "1.1.0", &pod)?;
    }

    runtime.ok("del", &pod, &[])?;
    assert_eq!(agent.status()?["endpoints"], json!([]));
    assert!(pod.link_info("eth0").is_err(), "the pod still has eth0");
    Ok(())
}
