//! Endpoints: the pods and container groups attached on this node, recorded durably in
//! `<state>/endpoints/` so a restarted agent knows what it made (and reattaches or cleans it).
use std::{
    collections::BTreeMap,
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::api::proto::{Attachment, EndpointStatus};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub attachment: Attachment,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub subnet: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
    pub container_group: Option<String>,
    pub k8s_namespace: Option<String>,
    pub k8s_pod: Option<String>,
}

impl Endpoint {
    /// The IPAM owner string of this endpoint.
    pub fn owner(&self) -> String {
        owner(&self.attachment)
    }

    pub fn status(&self) -> EndpointStatus {
        EndpointStatus {
            attachment: self.attachment.clone(),
            ip: self.ip,
            host_ifname: self.host_ifname.clone(),
            container_group: self.container_group.clone(),
            k8s_namespace: self.k8s_namespace.clone(),
            k8s_pod: self.k8s_pod.clone(),
        }
    }
}

pub fn owner(attachment: &Attachment) -> String {
    format!("{}/{}", attachment.container_id, attachment.ifname)
}

/// How every pod's host-side veth is named: a restarted agent deletes veths with this prefix
/// that it has no record of.
pub const HOST_IFNAME_PREFIX: &str = "vnd";

/// The host-side veth name of an attachment: stable (DEL after a restart finds it), unique,
/// and within IFNAMSIZ. FNV-1a is enough: collisions are caught when the link is created.
pub fn host_ifname(attachment: &Attachment) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in owner(attachment).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_IFNAME_PREFIX}{:011x}", hash & 0xfff_ffff_ffff)
}

/// The durable set of endpoints.
pub struct EndpointStore {
    dir: PathBuf,
}

impl EndpointStore {
    pub fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("endpoints");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn load_all(&self) -> Result<BTreeMap<Attachment, Endpoint>> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = fs::read_to_string(&path)?;
            let ep: Endpoint = serde_json::from_str(&text)
                .with_context(|| format!("corrupt endpoint record {}", path.display()))?;
            out.insert(ep.attachment.clone(), ep);
        }
        Ok(out)
    }

    /// Writes the record atomically (temporary, fsync, rename).
    pub fn save(&self, ep: &Endpoint) -> Result<()> {
        let path = self.path(&ep.attachment);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(ep)?)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    pub fn remove(&self, attachment: &Attachment) -> Result<()> {
        match fs::remove_file(self.path(attachment)) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn path(&self, attachment: &Attachment) -> PathBuf {
        self.dir.join(format!("{}.json", host_ifname(attachment)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = Attachment {
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        let b = Attachment {
            container_id: "abc".into(),
            ifname: "eth1".into(),
        };
        assert_eq!(host_ifname(&a), host_ifname(&a.clone()));
        assert_ne!(host_ifname(&a), host_ifname(&b));
        assert!(host_ifname(&a).len() <= 15);
    }
}
