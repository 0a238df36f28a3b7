//! End to end: the agent as a process on a node, and its API socket as a client (friendly or
//! not) sees it: one agent per state dir, who may talk to it, what it reads from them, and CNI
//! GC with several networks. Needs root.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::MetadataExt as _, net::UnixStream, process::CommandExt as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use vnetd_lab::{
    Node, PodNs, serial,
    vnetd::{add_pod, bin, cni_call, lab_with_agent},
};

/// `vnetd run` for `node` with some of its arguments replaced, run to completion (an agent
/// that does not exit within `timeout` is killed and that is an error).
fn run_agent_with(
    node: &Node,
    spec: &Path,
    replace: &[(&str, &Path)],
    timeout: Duration,
) -> Result<std::process::Output> {
    let mut args = vec![bin("vnetd").into_os_string()];
    args.extend(node.agent_args(spec));
    for (flag, value) in replace {
        let at = args
            .iter()
            .position(|a| a == *flag)
            .context("no such flag")?
            + 1;
        args[at] = value.into();
    }
    node.run_timeout(args, timeout)
}

/// The agent's log without the terminal colour sequences tracing adds to its fields.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One request line on the agent's socket, one answer line back.
fn ask(socket: &Path, line: &[u8]) -> Result<Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // The agent may answer and close before it has read everything (an oversized request):
    // its answer is still there to read.
    if let Err(err) = stream.write_all(line) {
        anyhow::ensure!(err.kind() == std::io::ErrorKind::BrokenPipe, err);
    }
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).with_context(|| format!("answer {answer:?}"))
}

/// Issue 7 item 9: a second `vnetd run` on the same state dir exits at once with an error
/// naming the state dir, before it touches the dataplane or the socket: the first agent keeps
/// its socket (same inode) and keeps serving. An agent on another state dir is refused a
/// socket that a live agent serves.
#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() -> Result<()> {
    let _serial = serial();
    let (_lab, node, agent) = lab_with_agent()?;
    let inode = std::fs::metadata(&node.api_socket)?.ino();

    let other_socket = node.dir.join("second.sock");
    let out = run_agent_with(
        &node,
        &agent.spec,
        &[("--api-socket", &other_socket)],
        Duration::from_secs(20),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&*node.state_dir.to_string_lossy()) && stderr.contains("another vnetd"),
        "{stderr}"
    );
    assert!(!other_socket.exists(), "the refused agent bound nothing");

    let out = run_agent_with(&node, &agent.spec, &[], Duration::from_secs(20))?;
    assert_eq!(out.status.code(), Some(1));
    let other_state = node.dir.join("state-2");
    let out = run_agent_with(
        &node,
        &agent.spec,
        &[("--state-dir", &other_state)],
        Duration::from_secs(20),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is served by a running agent"), "{stderr}");

    assert_eq!(
        std::fs::metadata(&node.api_socket)?.ino(),
        inode,
        "the first agent's socket is untouched"
    );
    assert_eq!(agent.status()?["node"], "node-1");
    Ok(())
}

/// Issue 7 item 11: the socket is 0600 from the start; a client that is not root is refused
/// (even when the socket's mode would let it in) and the refusal is logged; an oversized
/// request is refused; connections beyond the limit are turned away; the agent keeps serving.
#[test]
fn the_api_socket_serves_root_only_and_bounds_requests() -> Result<()> {
    let _serial = serial();
    let (_lab, node, agent) = lab_with_agent()?;
    let mode = std::fs::metadata(&node.api_socket)?.mode() & 0o7777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // As if someone loosened the socket's mode: the peer's credentials still keep nobody out.
    std::fs::set_permissions(
        &node.api_socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )?;
    let out = std::process::Command::new(bin("vnetd"))
        .args(["status", "--json", "--api-socket"])
        .arg(&node.api_socket)
        .uid(65534)
        .gid(65534)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "nobody got: {stderr}");
    assert!(stderr.contains("uid 0"), "{stderr}");
    assert!(
        vnetd_lab::wait_for(Duration::from_secs(5), || agent
            .log()
            .contains("refused an API client")),
        "{}",
        agent.log()
    );
    assert!(
        without_colours(&agent.log()).contains("uid=65534"),
        "{}",
        agent.log()
    );

    let mut huge = vec![b'x'; 100 * 1024];
    huge.push(b'\n');
    let answer = ask(&node.api_socket, &huge)?;
    let msg = answer["error"]["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("larger than 65536 bytes"), "{answer}");

    // Idle connections up to the limit, then one more: it is turned away at once.
    let idle: Vec<UnixStream> = (0..32)
        .map(|_| UnixStream::connect(&node.api_socket))
        .collect::<Result<_, _>>()?;
    let answer = ask(&node.api_socket, b"{\"op\":\"status\"}\n")?;
    assert_eq!(answer["error"]["code"], 11, "{answer}");
    drop(idle);
    assert!(
        vnetd_lab::wait_for(Duration::from_secs(5), || agent.status().is_ok()),
        "the agent serves again once the idle connections are gone"
    );
    Ok(())
}

/// Issue 7 item 11: CNI_NETNS is opened without blocking and must be a network namespace
/// other than the agent's: a FIFO gets an error promptly (it used to hang the agent, which
/// held its lock while blocked in open), and so do a regular file, the node's own namespace
/// and /proc/self/ns/net. An invalid container id is refused by the agent itself. The agent
/// keeps serving.
#[test]
fn cni_netns_must_be_a_pod_network_namespace() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let fifo = node.dir.join("fifo-netns");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let file = node.dir.join("file-netns");
    std::fs::write(&file, "not a namespace")?;
    let pod = lab.add_pod_netns("pod-x")?;

    for (netns, why) in [
        (fifo.as_path(), "not a network namespace"),
        (file.as_path(), "not a network namespace"),
        (node.path.as_path(), "the agent's own network namespace"),
        (Path::new("/proc/self/ns/net"), "the agent's own"),
    ] {
        let mut call = cni_call("ADD", &node, &pod, Some("apps"), "");
        call.netns = netns.to_path_buf();
        call.ifname = "net9".into();
        call.timeout = Some(Duration::from_secs(20));
        let out = node
            .cni(&call)
            .with_context(|| format!("CNI ADD with CNI_NETNS={}", netns.display()))?;
        assert_eq!(out.exit, 1, "{}: {}", netns.display(), out.stdout);
        let msg = out.json()?["msg"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(why), "{}: {msg}", netns.display());
        assert!(
            msg.contains(&*netns.to_string_lossy()),
            "names the path: {msg}"
        );
    }
    assert!(
        node.ip(["link", "show", "net9"]).is_err(),
        "nothing was made in the node's namespace"
    );

    // The plugin checks container ids too; the agent must not rely on it.
    let bad = json!({"op": "del", "container_id": "../../etc", "ifname": "eth0",
                     "network": "vnetd"});
    let answer = ask(&node.api_socket, format!("{bad}\n").as_bytes())?;
    assert_eq!(answer["error"]["code"], 4, "{answer}");

    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    assert_eq!(
        agent.status()?["endpoints"].as_array().map(Vec::len),
        Some(1)
    );
    assert!(a.ping(node.ip, 1));
    Ok(())
}

/// A CNI call of `command` for `pod` on the network named `network`.
fn call_on(network: &str, command: &str, node: &Node, pod: &PodNs) -> vnetd_lab::CniCall {
    let mut call = cni_call(command, node, pod, Some("apps"), "");
    let mut conf: Value = serde_json::from_str(&call.config).unwrap();
    conf["name"] = network.into();
    call.config = conf.to_string();
    call
}

fn gc_on(network: &str, node: &Node, pod: &PodNs, valid: Value) -> Result<i32> {
    let mut call = call_on(network, "GC", node, pod);
    let mut conf: Value = serde_json::from_str(&call.config)?;
    conf["cni.dev/valid-attachments"] = valid;
    call.config = conf.to_string();
    let out = node.cni(&call)?;
    anyhow::ensure!(
        out.exit == 0,
        "GC on {network}: {} {}",
        out.stdout,
        out.stderr
    );
    Ok(out.exit)
}

/// Issue 7 item 10: attachments are keyed by network too. GC for one network (its runtime
/// lists only that network's attachments) leaves the other network's interfaces and addresses
/// alone; GC for the other network then collects its own.
#[test]
fn gc_of_one_network_leaves_another_networks_attachments() -> Result<()> {
    let _serial = serial();
    let (lab, node, agent) = lab_with_agent()?;
    let pod_a = lab.add_pod_netns("pod-a")?;
    let pod_b = lab.add_pod_netns("pod-b")?;
    for (network, pod) in [("net-a", &pod_a), ("net-b", &pod_b)] {
        let out = node.cni(&call_on(network, "ADD", &node, pod))?;
        assert_eq!(
            out.exit, 0,
            "ADD on {network}: {} {}",
            out.stdout, out.stderr
        );
    }
    let ip_of = |pod: &PodNs| -> Result<String> {
        let addrs = pod.ip_json(["-4", "addr", "show", "eth0"])?;
        Ok(addrs[0]["addr_info"][0]["local"]
            .as_str()
            .context("no address")?
            .to_string())
    };
    let ip_b = ip_of(&pod_b)?;

    gc_on(
        "net-a",
        &node,
        &pod_a,
        json!([{ "containerID": "ctr-pod-a", "ifname": "eth0" }]),
    )?;
    assert_eq!(ip_of(&pod_b)?, ip_b, "net-b's interface and address stay");
    let endpoints = agent.status()?["endpoints"].clone();
    assert_eq!(endpoints.as_array().map(Vec::len), Some(2), "{endpoints}");
    assert!(pod_a.ping(ip_b.parse()?, 1), "pod-b still reachable");

    gc_on("net-b", &node, &pod_b, json!([]))?;
    assert!(
        pod_b.ip(["link", "show", "eth0"]).is_err(),
        "net-b's GC collected its own"
    );
    let endpoints = agent.status()?["endpoints"].clone();
    assert_eq!(endpoints.as_array().map(Vec::len), Some(1), "{endpoints}");
    assert_eq!(endpoints[0]["network"], "net-a", "{endpoints}");
    Ok(())
}
