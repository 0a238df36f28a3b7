//! The Kubernetes manifests in `deploy/kubernetes/`: every one reads strictly into the
//! Kubernetes API types, and the DaemonSet wires what the agent needs (the lab runs it in
//! `e2e_deploy`). Needs no root.
mod k8s;

use anyhow::{Context as _, Result};
use k8s::{Manifests, http_probe, image_files, strict};
use k8s_openapi::api::apps::v1::DaemonSet;

#[test]
fn every_manifest_reads_strictly_into_the_kubernetes_types() -> Result<()> {
    let files = k8s::manifest_files()?;
    assert!(files.len() >= 3, "{files:?}");
    let manifests = Manifests::load()?;
    assert_eq!(
        manifests.configmaps.keys().collect::<Vec<_>>(),
        ["vnetd-cni", "vnetd-spec"]
    );
    Ok(())
}

#[test]
fn the_strict_reading_names_an_unknown_or_misplaced_field() -> Result<()> {
    let text = std::fs::read_to_string(k8s::manifests_dir().join("daemonset.yaml"))?;
    let typo = text.replacen("hostNetwork: true", "hostNetwrk: true", 1);
    let err = strict::<DaemonSet>(&typo, "typo").unwrap_err().to_string();
    assert!(
        err.contains(".spec.template.spec.hostNetwrk: unknown field"),
        "{err}"
    );
    // A field of the container placed in the pod.
    let misplaced = text.replacen(
        "      hostNetwork: true",
        "      hostNetwork: true\n      readinessProbe: {}",
        1,
    );
    let err = strict::<DaemonSet>(&misplaced, "misplaced")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(".spec.template.spec.readinessProbe: unknown field"),
        "{err}"
    );
    Ok(())
}

/// The README's "Running on Kubernetes" section.
fn readme_section() -> Result<String> {
    let readme = std::fs::read_to_string(k8s::deploy_dir().join("../README.md"))?;
    let start = readme
        .find("## Running on Kubernetes")
        .context("no \"Running on Kubernetes\" section in the README")?;
    let rest = &readme[start + 3..];
    Ok(rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string())
}

#[test]
fn the_daemonset_wires_what_the_agent_needs() -> Result<()> {
    let manifests = Manifests::load()?;
    let pod = manifests.pod()?;
    let agent = manifests.container("vnetd")?;
    let install = manifests.init_container("install-cni")?;
    assert_eq!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true), "hostPID is not needed");
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert!(
        pod.termination_grace_period_seconds.unwrap_or(30) >= 20,
        "room for the agent's 15 s drain"
    );

    // The node's name from the downward API, into --node.
    let args = agent.args.clone().unwrap_or_default();
    let node_at = args.iter().position(|a| a == "--node").context("--node")?;
    assert_eq!(args[node_at + 1], "$(NODE_NAME)");
    let node_env = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .context("env NODE_NAME")?;
    assert_eq!(
        node_env
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    // The spec is a key of a whole-volume ConfigMap mount (kubelet updates no subPath).
    let spec_at = args.iter().position(|a| a == "--spec").context("--spec")?;
    let spec = std::path::Path::new(&args[spec_at + 1]);
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| spec.parent() == Some(std::path::Path::new(&m.mount_path)))
        .context("the spec's directory is not a mount")?;
    assert_eq!(mount.sub_path, None);
    let configmap = manifests
        .volume(&mount.name)?
        .config_map
        .as_ref()
        .context("the spec's volume is not a ConfigMap")?;
    let key = spec.file_name().unwrap().to_str().unwrap();
    assert!(manifests.data(&configmap.name)?.contains_key(key));

    // The probes ask the agent's own metrics address.
    let metrics = &args[args.iter().position(|a| a == "--metrics-addr").unwrap() + 1];
    assert_eq!(
        http_probe(agent.liveness_probe.as_ref())?,
        (metrics.clone(), "/healthz".into())
    );
    assert_eq!(
        http_probe(agent.readiness_probe.as_ref())?,
        (metrics.clone(), "/readyz".into())
    );

    // The host paths it needs, each mounted.
    let host_paths: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    for path in [
        "/sys/fs/bpf",
        "/run/vnetd",
        "/var/lib/vnetd",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/var/run/netns",
    ] {
        assert!(
            host_paths.iter().any(|p| p == path),
            "{path} in {host_paths:?}"
        );
    }
    let netns = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/var/run/netns")
        .context("/var/run/netns mount")?;
    assert_eq!(netns.mount_propagation.as_deref(), Some("HostToContainer"));

    // Capabilities: all dropped but those named, each explained in the README.
    let caps = agent
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .context("capabilities")?;
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let readme = readme_section()?;
    for cap in caps.add.iter().flatten() {
        assert!(
            readme.contains(&format!("`{cap}`")),
            "the README's Running on Kubernetes section explains {cap}"
        );
    }
    assert!(
        readme.contains("kubectl apply -f deploy/kubernetes/"),
        "{readme}"
    );

    // The binaries run are the image's, and the init container installs the plugin and the
    // CNI ConfigMap's conflist.
    let image: Vec<String> = image_files()?.into_iter().map(|(at, _)| at).collect();
    assert!(
        image.contains(&agent.command.as_ref().unwrap()[0]),
        "{image:?}"
    );
    let script = install
        .command
        .iter()
        .flatten()
        .cloned()
        .collect::<String>();
    let conflists = manifests.data("vnetd-cni")?;
    for (name, text) in conflists {
        assert!(script.contains(name), "the init container installs {name}");
        let conf: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{name} is not JSON"))?;
        assert_eq!(conf["plugins"][0]["type"], "vnetd-cni");
        assert_eq!(
            conf["plugins"][0]["agentSocket"],
            manifests.container("vnetd")?.args.as_ref().unwrap()
                [args.iter().position(|a| a == "--api-socket").unwrap() + 1]
        );
    }
    assert!(script.contains("/usr/local/bin/vnetd-cni"));
    assert!(image.contains(&"/usr/local/bin/vnetd-cni".to_string()));
    let containerfile = std::fs::read_to_string(k8s::deploy_dir().join("Containerfile"))?;
    assert!(
        containerfile.contains(" AS builder")
            && containerfile.contains("cargo build --release --locked -p vnetd --bins"),
        "a builder stage builds the agent and, through its build.rs, the eBPF object"
    );
    Ok(())
}
