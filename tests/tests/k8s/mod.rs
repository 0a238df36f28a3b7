//! The Kubernetes manifests in `deploy/kubernetes/`, read strictly into the API types
//! (k8s-openapi), and rendered for the lab: a container's command line, environment and paths
//! as kubelet would give them, with the node's host paths mapped to a lab node's directories.
//! Shared by `k8s_manifests` (the manifests alone) and `e2e_deploy` (agents started from them).
#![allow(dead_code)] // each test binary uses its part

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, PodSpec, Volume},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// `deploy/` in the repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `deploy/kubernetes/`: what `kubectl apply -f` takes.
pub fn manifests_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// Every manifest file, sorted by name.
pub fn manifest_files() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    Ok(files)
}

/// A YAML document as a generic value.
pub fn yaml_value(text: &str) -> Result<Value> {
    serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Reads `text` into `T` strictly: k8s-openapi's types skip fields they do not know, so the
/// value is also serialised back and compared with the document; a field the type dropped
/// (a typo, a field of another API version) or a value it changed is an error naming its path.
pub fn strict<T: DeserializeOwned + Serialize>(text: &str, what: &str) -> Result<T> {
    let doc = yaml_value(text).with_context(|| format!("{what}: not YAML"))?;
    let typed: T = serde_json::from_value(doc.clone())
        .with_context(|| format!("{what}: not a {}", std::any::type_name::<T>()))?;
    let back = serde_json::to_value(&typed)?;
    let mut problems = Vec::new();
    differences(&doc, &back, "", &mut problems);
    if !problems.is_empty() {
        bail!(
            "{what}: not read exactly as a {}:\n  {}",
            std::any::type_name::<T>(),
            problems.join("\n  ")
        );
    }
    Ok(typed)
}

fn differences(doc: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (doc, back) {
        (Value::Object(d), Value::Object(b)) => {
            for (key, value) in d {
                let at = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => differences(value, other, &at, out),
                    None => out.push(format!("{at}: unknown field")),
                }
            }
            for key in b.keys().filter(|k| !d.contains_key(*k)) {
                out.push(format!("{path}.{key}: added by the type"));
            }
        }
        (Value::Array(d), Value::Array(b)) if d.len() == b.len() => {
            for (i, (d, b)) in d.iter().zip(b).enumerate() {
                differences(d, b, &format!("{path}[{i}]"), out);
            }
        }
        (d, b) if d == b => {}
        (d, b) => out.push(format!("{path}: {d} read as {b}")),
    }
}

/// The parsed manifests: every file is one object of a kind listed here.
pub struct Manifests {
    pub daemonset: DaemonSet,
    pub configmaps: BTreeMap<String, ConfigMap>,
}

impl Manifests {
    pub fn load() -> Result<Manifests> {
        let mut daemonsets = Vec::new();
        let mut configmaps = BTreeMap::new();
        for file in manifest_files()? {
            let text = std::fs::read_to_string(&file)?;
            let what = file.display().to_string();
            let kind = yaml_value(&text)?["kind"]
                .as_str()
                .unwrap_or("")
                .to_string();
            match kind.as_str() {
                "DaemonSet" => daemonsets.push(strict::<DaemonSet>(&text, &what)?),
                "ConfigMap" => {
                    let cm: ConfigMap = strict(&text, &what)?;
                    let name = cm
                        .metadata
                        .name
                        .clone()
                        .context("a ConfigMap without a name")?;
                    configmaps.insert(name, cm);
                }
                other => bail!("{what}: kind {other:?} is not one the deploy tests read"),
            }
        }
        ensure!(
            daemonsets.len() == 1,
            "one DaemonSet, found {}",
            daemonsets.len()
        );
        Ok(Manifests {
            daemonset: daemonsets.remove(0),
            configmaps,
        })
    }

    pub fn pod(&self) -> Result<&PodSpec> {
        self.daemonset
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .context("the DaemonSet has no pod template")
    }

    pub fn container(&self, name: &str) -> Result<&Container> {
        self.pod()?
            .containers
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no container {name}"))
    }

    pub fn init_container(&self, name: &str) -> Result<&Container> {
        self.pod()?
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .with_context(|| format!("no init container {name}"))
    }

    pub fn volume(&self, name: &str) -> Result<&Volume> {
        self.pod()?
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .with_context(|| format!("no volume {name}"))
    }

    /// A ConfigMap's data.
    pub fn data(&self, configmap: &str) -> Result<&BTreeMap<String, String>> {
        self.configmaps
            .get(configmap)
            .and_then(|c| c.data.as_ref())
            .with_context(|| format!("no ConfigMap {configmap} with data"))
    }
}

/// The image's files the manifests name: each file the Containerfile's final stage copies
/// into a directory, as (path in the image, file name).
pub fn image_files() -> Result<Vec<(String, String)>> {
    let containerfile = std::fs::read_to_string(deploy_dir().join("Containerfile"))?;
    let final_stage = containerfile
        .rsplit("\nFROM ")
        .next()
        .context("a Containerfile without FROM")?;
    let mut files = Vec::new();
    for line in final_stage.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (dest, sources) = words.split_last().context("COPY without a destination")?;
        ensure!(
            dest.ends_with('/'),
            "COPY into {dest}: expected a directory"
        );
        for source in sources {
            let name = source.rsplit('/').next().unwrap_or(source).to_string();
            files.push((format!("{dest}{name}"), name));
        }
    }
    Ok(files)
}

/// A node's host paths, mapped into a lab node's own directories: the bpffs to the node's pin
/// dir (it must be on a bpf filesystem), everything else under `root`.
pub struct HostPaths {
    pub root: PathBuf,
    pub bpffs: PathBuf,
}

impl HostPaths {
    pub fn map(&self, host: &str) -> PathBuf {
        match host.strip_prefix("/sys/fs/bpf") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                self.bpffs.join(rest.trim_start_matches('/'))
            }
            _ => self.root.join(host.trim_start_matches('/')),
        }
    }
}

/// Writes a ConfigMap's data into `dir` the way kubelet projects a ConfigMap volume: the
/// files in a timestamped directory, `..data` a symlink to it, and each key a symlink to
/// `..data/<key>`. Returns the timestamped directory's name.
pub fn project_configmap(
    dir: &Path,
    data: &BTreeMap<String, String>,
    version: u32,
) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    let timestamped = format!("..2026_11_29_12_00_00.{version:09}");
    let tmp_dir = dir.join(&timestamped);
    std::fs::create_dir(&tmp_dir)?;
    for (key, value) in data {
        std::fs::write(tmp_dir.join(key), value)?;
    }
    // The swap kubelet's AtomicWriter does: a new symlink beside, renamed over `..data`.
    let data_tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&timestamped, &data_tmp)?;
    std::fs::rename(&data_tmp, dir.join("..data"))?;
    for key in data.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &link)?;
        }
    }
    Ok(timestamped)
}

/// A container as kubelet would start it on a lab node: `$(VAR)` expanded from its env, and
/// every path under one of its mounts (or an image file) mapped to where it is in the lab.
pub struct Rendered {
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// mount path in the container -> lab directory, longest first.
    pub mounts: Vec<(String, PathBuf)>,
}

impl Rendered {
    /// Renders `container`: host paths through `host`, ConfigMap volumes from `configmaps`
    /// (volume name -> lab directory holding the projected ConfigMap), image files from
    /// `image` (path in the image -> lab file), `spec.nodeName` as `node`.
    pub fn new(
        manifests: &Manifests,
        container: &Container,
        host: &HostPaths,
        configmaps: &BTreeMap<String, PathBuf>,
        image: &BTreeMap<String, PathBuf>,
        node: &str,
    ) -> Result<Rendered> {
        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("spec.nodeName") => node.to_string(),
                        other => bail!(
                            "env {}: a source the lab cannot render: {other:?}",
                            var.name
                        ),
                    }
                }
                _ => bail!("env {}: neither a value nor a field", var.name),
            };
            env.push((var.name.clone(), value));
        }
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            ensure!(
                mount.sub_path.is_none(),
                "{}: a subPath mount is never updated by kubelet",
                mount.mount_path
            );
            let volume = manifests.volume(&mount.name)?;
            let dir = if let Some(path) = volume.host_path.as_ref() {
                host.map(&path.path)
            } else if volume.config_map.is_some() {
                configmaps
                    .get(&mount.name)
                    .with_context(|| format!("volume {}: not projected", mount.name))?
                    .clone()
            } else {
                bail!("volume {}: a kind the lab cannot render", mount.name)
            };
            mounts.push((mount.mount_path.clone(), dir));
        }
        mounts.sort_by_key(|(at, _)| std::cmp::Reverse(at.len()));
        let mut rendered = Rendered {
            command: Vec::new(),
            args: Vec::new(),
            env,
            mounts,
        };
        let mut files: Vec<(String, PathBuf)> = image.clone().into_iter().collect();
        files.sort_by_key(|(at, _)| std::cmp::Reverse(at.len()));
        let word = |w: &String| rendered.map_text(&rendered.expand(w), &files);
        let command = container.command.iter().flatten().map(word).collect();
        let args = container.args.iter().flatten().map(word).collect();
        rendered.command = command;
        rendered.args = args;
        Ok(rendered)
    }

    /// kubelet's `$(VAR)` expansion from the container's own env.
    fn expand(&self, word: &str) -> String {
        let mut out = word.to_string();
        for (name, value) in &self.env {
            out = out.replace(&format!("$({name})"), value);
        }
        out
    }

    /// Every image file and every path under a mount (a whole word, or a path followed by
    /// `/`), replaced by the lab's.
    fn map_text(&self, text: &str, files: &[(String, PathBuf)]) -> String {
        let mut out = text.to_string();
        for (at, lab) in files {
            out = out.replace(at.as_str(), &lab.to_string_lossy());
        }
        for (at, lab) in &self.mounts {
            if out == *at {
                return lab.to_string_lossy().into_owned();
            }
            out = out.replace(&format!("{at}/"), &format!("{}/", lab.display()));
        }
        out
    }

    /// The value after `flag` in the arguments.
    pub fn arg(&self, flag: &str) -> Result<&str> {
        let at = self
            .args
            .iter()
            .position(|a| a == flag)
            .with_context(|| format!("no {flag} in {:?}", self.args))?;
        self.args
            .get(at + 1)
            .map(String::as_str)
            .with_context(|| format!("{flag} without a value"))
    }
}

/// The address and path of an HTTP probe: `host:port` and the path.
pub fn http_probe(probe: Option<&k8s_openapi::api::core::v1::Probe>) -> Result<(String, String)> {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .context("no httpGet probe")?;
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
        other => bail!("probe port {other:?}: give the number"),
    };
    let host = get.host.clone().context("the probe names no host")?;
    Ok((
        format!("{host}:{port}"),
        get.path.clone().unwrap_or_else(|| "/".into()),
    ))
}
