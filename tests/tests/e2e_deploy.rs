//! End to end, as on Kubernetes (issue 12, "The DaemonSet"): the probes through start-up, a
//! graceful SIGTERM, a ConfigMap update arriving as kubelet's `..data` symlink swap, and an
//! agent started with exactly the command line, environment and paths the DaemonSet renders
//! (host paths mapped to the lab node's directories), its plugin installed by the init
//! container's own script. Needs root.
mod k8s;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s::{HostPaths, Manifests, Rendered, http_probe, image_files, project_configmap};
use vnetd_lab::{
    CniCall, CniOutput, Lab, LogMode, NODE_METRICS_ADDR, Node, Ns, serial,
    vnetd::{Agent, bin, cni_call, lab_spec, node_cidr},
    wait_for,
};

/// GET `path` on `addr` inside the node's namespace, as kubelet's probe (hostNetwork) does;
/// `None` while nothing answers.
fn probe_at(node: &Ns, addr: &str, path: &str) -> Option<(u16, String)> {
    vnetd_lab::http_get(node, addr.parse().ok()?, path, Duration::from_secs(2)).ok()
}

fn probe(node: &Ns, path: &str) -> Option<(u16, String)> {
    probe_at(node, NODE_METRICS_ADDR, path)
}

fn cni_ip(out: &CniOutput) -> Result<Ipv4Addr> {
    ensure!(
        out.exit == 0,
        "CNI failed ({}): {} {}",
        out.exit,
        out.stdout,
        out.stderr
    );
    let result = out.json()?;
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {result}"))
}

/// Item 1: `/healthz` answers from the start, while the dataplane is loaded; `/readyz` stays
/// 503 ("starting") after the dataplane is attached until the API socket is bound, then 200;
/// a socket removed behind the agent's back makes it not ready, still alive. The agent is held
/// between the two by its test pause point (`VNETD_TEST_PAUSE_BEFORE_SOCKET`), so the window
/// is observed for certain.
#[test]
fn probes_answer_through_start_up_and_ready_only_once_the_socket_serves() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let spec = node.dir.join("spec.yaml");
    std::fs::write(&spec, lab_spec())?;
    let paused = node.dir.join("paused-before-socket");
    std::fs::write(&paused, "")?;
    let mut agent = Agent::with_args(
        &node,
        spec.clone(),
        node.agent_args(&spec),
        vec![(
            "VNETD_TEST_PAUSE_BEFORE_SOCKET".into(),
            paused.display().to_string(),
        )],
    );
    agent.spawn_unwaited(LogMode::Files)?;
    let result = (|| -> Result<()> {
        ensure!(
            wait_for(Duration::from_secs(20), || {
                probe(&node, "/healthz").is_some() || !agent.is_running()
            }),
            "no answer on /healthz: {}",
            agent.log()
        );
        let (code, body) = probe(&node, "/healthz").context("/healthz")?;
        ensure!(code == 200, "/healthz while starting: {code} {body}");
        ensure!(
            wait_for(Duration::from_secs(20), || agent
                .log()
                .contains("waiting before binding the API socket")),
            "the agent did not reach its pause point: {}",
            agent.log()
        );
        ensure!(agent.log().contains("uplink programs attached"));
        for _ in 0..5 {
            let (code, body) = probe(&node, "/readyz").context("/readyz")?;
            ensure!(
                code == 503 && body.contains("starting"),
                "/readyz before the socket: {code} {body}"
            );
            ensure!(!node.api_socket.exists());
            std::thread::sleep(Duration::from_millis(50));
        }
        ensure!(probe(&node, "/healthz").map(|(c, _)| c) == Some(200));
        Ok(())
    })();
    let _ = std::fs::remove_file(&paused);
    result?;

    assert!(
        wait_for(Duration::from_secs(20), || {
            probe(&node, "/readyz").map(|(c, _)| c) == Some(200)
        }),
        "/readyz never turned 200: {:?}\n{}",
        probe(&node, "/readyz"),
        agent.log()
    );
    assert!(node.api_socket.exists());
    agent.wait_serving(Duration::from_secs(10))?;
    assert_eq!(probe(&node, "/healthz"), Some((200, "ok\n".into())));

    std::fs::remove_file(&node.api_socket)?;
    let (code, body) = probe(&node, "/readyz").context("/readyz")?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("is gone"), "{body}");
    assert_eq!(probe(&node, "/healthz").map(|(c, _)| c), Some(200));

    agent.terminate()?;
    let status = agent.wait_exit(Duration::from_secs(20))?;
    assert!(status.success(), "{status}: {}", agent.log());
    Ok(())
}

/// Item 2: SIGTERM while a CNI ADD is in progress (held at the agent's pause point after
/// IPAM): the agent turns not ready and removes its socket at once, lets the ADD finish (its
/// caller gets the address), exits 0, and leaves the dataplane running: the pods keep talking
/// with no agent, and the next agent adopts both endpoints.
#[test]
fn sigterm_finishes_the_add_in_progress_removes_the_socket_and_leaves_the_dataplane() -> Result<()>
{
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let paused = node.dir.join("add-paused-after-ipam");
    let mut agent = Agent::start_with_env(
        &node,
        &lab_spec(),
        vec![(
            "VNETD_TEST_PAUSE_AFTER_IPAM".into(),
            paused.display().to_string(),
        )],
    )?;
    let pods = [lab.add_pod_netns("pod-a")?, lab.add_pod_netns("pod-b")?];

    // Every ADD stops at the pause point: the first is let through at once.
    let first = std::thread::scope(|s| {
        let add = s.spawn(|| node.cni(&cni_call("ADD", &node, &pods[0], Some("apps"), "")));
        let reached = wait_for(Duration::from_secs(20), || paused.exists());
        let _ = std::fs::remove_file(&paused);
        let out = add.join().map_err(|_| anyhow!("the ADD thread panicked"))?;
        ensure!(reached, "the first ADD never reached the pause point");
        out
    })?;
    let ip_a = cni_ip(&first)?;

    let second = std::thread::scope(|s| {
        let add = s.spawn(|| node.cni(&cni_call("ADD", &node, &pods[1], Some("apps"), "")));
        let while_draining = (|| -> Result<()> {
            ensure!(
                wait_for(Duration::from_secs(20), || paused.exists()),
                "the second ADD never reached the pause point"
            );
            agent.terminate()?;
            ensure!(
                wait_for(Duration::from_secs(10), || !node.api_socket.exists()),
                "the socket is still there after SIGTERM"
            );
            let (code, body) = probe(&node, "/readyz").context("/readyz while draining")?;
            ensure!(
                code == 503 && body.contains("stopping"),
                "/readyz while draining: {code} {body}"
            );
            ensure!(
                agent.is_running(),
                "the agent exited with an ADD in progress: {}",
                agent.log()
            );
            Ok(())
        })();
        let _ = std::fs::remove_file(&paused);
        let out = add.join().map_err(|_| anyhow!("the ADD thread panicked"))?;
        while_draining.map(|()| out)
    })??;
    let ip_b = cni_ip(&second).context("the ADD in progress at SIGTERM")?;
    let status = agent.wait_exit(Duration::from_secs(20))?;
    assert!(status.success(), "{status}: {}", agent.log());
    assert!(
        agent.log().contains("no request in progress"),
        "{}",
        agent.log()
    );
    assert!(!node.api_socket.exists());

    // No agent: the dataplane forwards from its pins.
    assert!(
        pods[1].ping(ip_a, 3),
        "pod-b reaches pod-a with the agent stopped"
    );
    assert!(
        pods[0].ping(ip_b, 3),
        "pod-a reaches pod-b with the agent stopped"
    );

    agent.env.clear();
    agent.spawn(LogMode::Files)?;
    let mut ips: Vec<String> = agent.status()?["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .filter_map(|e| e["ip"].as_str().map(str::to_string))
        .collect();
    ips.sort();
    let mut want = vec![ip_a.to_string(), ip_b.to_string()];
    want.sort();
    assert_eq!(ips, want, "the next agent adopted both endpoints");
    Ok(())
}

/// Item 1, liveness: a request that holds the agent (an ADD held at the pause point after
/// IPAM) longer than the agent's limit (`--stuck-after`, here 5 s) makes `/healthz` fail,
/// naming why; once it lets go, the ADD completes and `/healthz` is 200 again.
#[test]
fn healthz_fails_while_a_request_holds_the_agent_too_long() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let paused = node.dir.join("add-paused-after-ipam");
    // A threshold well under the CNI plugin's 30 s wait for the agent: at the default (also
    // 30 s) the ADD could give up before /healthz turns, and the test raced with it.
    let spec = node.dir.join("spec.yaml");
    std::fs::write(&spec, lab_spec())?;
    let mut args = node.agent_args(&spec);
    args.extend(["--stuck-after".into(), "5".into()]);
    let mut agent = Agent::with_args(
        &node,
        spec,
        args,
        vec![(
            "VNETD_TEST_PAUSE_AFTER_IPAM".into(),
            paused.display().to_string(),
        )],
    );
    agent.spawn(LogMode::Files)?;
    let pod = lab.add_pod_netns("pod-a")?;
    let stuck = std::thread::scope(|s| {
        let add = s.spawn(|| node.cni(&cni_call("ADD", &node, &pod, Some("apps"), "")));
        let seen = (|| -> Result<(u16, String)> {
            ensure!(
                wait_for(Duration::from_secs(20), || paused.exists()),
                "the ADD never reached the pause point"
            );
            ensure!(probe(&node, "/healthz").map(|(c, _)| c) == Some(200));
            let mut last = None;
            wait_for(Duration::from_secs(45), || {
                last = probe(&node, "/healthz");
                last.as_ref().is_some_and(|(c, _)| *c == 503)
            });
            last.context("no answer on /healthz")
        })();
        let _ = std::fs::remove_file(&paused);
        let out = add.join().map_err(|_| anyhow!("the ADD thread panicked"))?;
        cni_ip(&out?)?;
        seen
    })?;
    assert_eq!(stuck.0, 503, "{}", stuck.1);
    assert!(stuck.1.contains("stuck"), "{}", stuck.1);
    assert!(
        wait_for(Duration::from_secs(10), || {
            probe(&node, "/healthz").map(|(c, _)| c) == Some(200)
        }),
        "/healthz is 200 again once the agent is free: {:?}",
        probe(&node, "/healthz")
    );
    Ok(())
}

/// Item 3: the spec mounted from a ConfigMap (`spec.yaml -> ..data/spec.yaml`, `..data ->
/// ..<timestamp>`) and updated as kubelet does it: a new timestamped directory, a new `..data`
/// symlink renamed over the old one, the old directory removed. The change is applied; a
/// change to another key only (the spec the same) is not a reload; an invalid spec is refused.
#[test]
fn a_configmap_update_by_data_symlink_swap_is_applied() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let volume = node.dir.join("configmap");
    let mut data = BTreeMap::from([("spec.yaml".to_string(), lab_spec())]);
    let mut current = project_configmap(&volume, &data, 1)?;
    let spec = volume.join("spec.yaml");
    let mut agent = Agent::with_args(&node, spec.clone(), node.agent_args(&spec), Vec::new());
    agent.spawn(LogMode::Files)?;

    let mut update = |data: &BTreeMap<String, String>, version: u32| -> Result<()> {
        let next = project_configmap(&volume, data, version)?;
        std::fs::remove_dir_all(volume.join(&current))?;
        current = next;
        Ok(())
    };

    data.insert(
        "spec.yaml".into(),
        lab_spec().replace("maxPods: 30", "maxPods: 20"),
    );
    update(&data, 2)?;
    assert!(
        agent.wait_for_status("reloads_ok", 1),
        "the swapped spec was not applied: {}",
        agent.log()
    );

    data.insert("unrelated".into(), "x".into());
    update(&data, 3)?;
    std::thread::sleep(Duration::from_millis(1500));
    let status = agent.status()?;
    assert_eq!(
        (
            status["reloads_ok"].as_u64(),
            status["reloads_failed"].as_u64()
        ),
        (Some(1), Some(0)),
        "another key changed, the spec did not: no reload"
    );

    data.insert(
        "spec.yaml".into(),
        "apiVersion: vnetd/v1\nnodes: 3\n".into(),
    );
    update(&data, 4)?;
    assert!(
        agent.wait_for_status("reloads_failed", 1),
        "the invalid spec was not refused: {}",
        agent.log()
    );
    assert_eq!(agent.status()?["node"], "node-1", "the agent keeps serving");
    Ok(())
}

/// Item 4: the DaemonSet as kubelet renders it on a lab node. The host paths of its volumes
/// are mapped to the node's directories (the bpffs to its pin dir), its ConfigMaps projected
/// as kubelet does (the spec's data replaced by the lab's spec; the shipped one must be valid
/// too), `$(NODE_NAME)` from `spec.nodeName`, the image's binaries from the build. The init
/// container's script installs the plugin and the conflist; the agent runs with exactly the
/// rendered command line and environment; the probes the manifest declares answer; pods
/// attached through the installed plugin and conflist talk; SIGTERM ends it within the grace
/// period.
#[test]
fn the_daemonset_as_rendered_installs_the_plugin_and_serves_pods() -> Result<()> {
    let _serial = serial();
    let manifests = Manifests::load()?;
    let pod = manifests.pod()?;
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let host = HostPaths {
        root: node.dir.join("host"),
        bpffs: node.bpffs_dir.clone(),
    };
    // kubelet creates the hostPath directories (DirectoryOrCreate; the bpffs is there).
    for volume in pod.volumes.iter().flatten() {
        if let Some(path) = &volume.host_path {
            std::fs::create_dir_all(host.map(&path.path))?;
        }
    }

    let shipped = node.dir.join("shipped-spec.yaml");
    std::fs::write(&shipped, &manifests.data("vnetd-spec")?["spec.yaml"])?;
    let validate = std::process::Command::new(bin("vnetd"))
        .arg("validate")
        .arg(&shipped)
        .output()?;
    assert!(
        validate.status.success(),
        "the shipped spec: {}",
        String::from_utf8_lossy(&validate.stdout)
    );
    let mut configmaps = BTreeMap::new();
    for volume in pod.volumes.iter().flatten() {
        if let Some(source) = &volume.config_map {
            let mut data = manifests.data(&source.name)?.clone();
            if let Some(spec) = data.get_mut("spec.yaml") {
                *spec = lab_spec();
            }
            let dir = node.dir.join("configmaps").join(&volume.name);
            project_configmap(&dir, &data, 1)?;
            configmaps.insert(volume.name.clone(), dir);
        }
    }
    let image: BTreeMap<String, PathBuf> = image_files()?
        .into_iter()
        .map(|(at, name)| (at, bin(&name)))
        .collect();

    // The init container, its script run as kubelet would (no network needed).
    let install = Rendered::new(
        &manifests,
        manifests.init_container("install-cni")?,
        &host,
        &configmaps,
        &image,
        &node.role,
    )?;
    let line = [install.command.clone(), install.args.clone()].concat();
    let out = std::process::Command::new(&line[0])
        .args(&line[1..])
        .envs(install.env.iter().cloned())
        .output()?;
    assert!(
        out.status.success(),
        "{line:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin = host.map("/opt/cni/bin/vnetd-cni");
    assert_eq!(
        std::fs::read(&plugin)?,
        std::fs::read(bin("vnetd-cni"))?,
        "the installed plugin is the built one"
    );
    let conflist: serde_json::Value = serde_json::from_slice(&std::fs::read(
        host.map("/etc/cni/net.d/10-vnetd.conflist"),
    )?)?;

    // The agent: exactly the rendered command line and environment.
    let container = manifests.container("vnetd")?;
    let rendered = Rendered::new(
        &manifests,
        container,
        &host,
        &configmaps,
        &image,
        &node.role,
    )?;
    assert_eq!(rendered.command, [bin("vnetd").display().to_string()]);
    assert_eq!(rendered.arg("--node")?, "node-1");
    let k8s_node = Node {
        api_socket: rendered.arg("--api-socket")?.into(),
        state_dir: rendered.arg("--state-dir")?.into(),
        bpffs_dir: rendered.arg("--bpffs")?.into(),
        ..node.clone()
    };
    assert!(k8s_node.api_socket.starts_with(&host.root));
    assert!(k8s_node.bpffs_dir.starts_with(&node.bpffs_dir));
    let mut agent = Agent::with_args(
        &k8s_node,
        rendered.arg("--spec")?.into(),
        rendered.args.iter().map(OsString::from).collect(),
        rendered.env.clone(),
    );
    agent.spawn_unwaited(LogMode::Files)?;
    let (ready_addr, ready_path) = http_probe(container.readiness_probe.as_ref())?;
    let (live_addr, live_path) = http_probe(container.liveness_probe.as_ref())?;
    assert!(
        wait_for(Duration::from_secs(30), || {
            probe_at(&node, &ready_addr, &ready_path).map(|(c, _)| c) == Some(200)
        }),
        "the readiness probe never passed: {:?}\n{}",
        probe_at(&node, &ready_addr, &ready_path),
        agent.log()
    );
    assert_eq!(
        probe_at(&node, &live_addr, &live_path).map(|(c, _)| c),
        Some(200)
    );
    agent.wait_serving(Duration::from_secs(10))?;
    assert!(
        agent.log().contains("\"level\":\"INFO\""),
        "--log-format json as rendered: {}",
        agent.log()
    );

    // Pods through the installed plugin and conflist, as the runtime calls them: the
    // conflist's agentSocket is the host's path of the agent's socket.
    let mut conf = conflist["plugins"][0].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    let socket = conf["agentSocket"].as_str().context("agentSocket")?;
    conf["agentSocket"] = host.map(socket).display().to_string().into();
    assert_eq!(
        Path::new(conf["agentSocket"].as_str().unwrap()),
        k8s_node.api_socket
    );
    let mut pods = Vec::new();
    for name in ["pod-a", "pod-b"] {
        let ns = lab.add_pod_netns(name)?;
        let call = CniCall {
            command: "ADD".into(),
            plugin: plugin.clone(),
            container_id: format!("ctr-{name}"),
            netns: ns.path.clone(),
            ifname: "eth0".into(),
            config: conf.to_string(),
            ..Default::default()
        };
        let ip = cni_ip(&node.cni(&call)?)?;
        pods.push((ns, ip));
    }
    assert!(pods[0].0.ping(pods[1].1, 3), "pod-a reaches pod-b");

    // kubelet stops the pod: SIGTERM, then SIGKILL after the grace period.
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    agent.terminate()?;
    let status = agent.wait_exit(Duration::from_secs(grace as u64))?;
    assert!(status.success(), "{status}: {}", agent.log());
    assert!(pods[1].0.ping(pods[0].1, 3), "the pods still talk");
    Ok(())
}
