//! Endpoints: the pods and container groups attached on this node, recorded durably in
//! `<state>/endpoints/` so a restarted agent knows what it made (and reattaches or cleans it).
use std::{
    collections::BTreeMap,
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
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
    /// The destinations routed through the interface in the pod's main table (CHECK verifies
    /// them); records of agents before per-interface routes had the default route.
    #[serde(default = "crate::api::proto::default_route_only")]
    pub routes: Vec<Ipv4Net>,
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
            mac: self
                .pod_mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            subnet: self.subnet.clone(),
            nsg: None,
            public_ip: None,
            fqdn: None,
        }
    }
}

/// The IPAM owner string of an attachment: `network/container/ifname` (none of the three may
/// hold a `/`); `container/ifname` for a legacy attachment, as its agent recorded it.
pub fn owner(attachment: &Attachment) -> String {
    if attachment.is_legacy() {
        format!("{}/{}", attachment.container_id, attachment.ifname)
    } else {
        format!(
            "{}/{}/{}",
            attachment.network, attachment.container_id, attachment.ifname
        )
    }
}

/// How every pod's host-side veth is named: a restarted agent deletes veths with this prefix
/// that it has no record of.
pub const HOST_IFNAME_PREFIX: &str = "vnd";

/// The host-side veth name of an attachment: stable (DEL after a restart finds it), unique per
/// (network, container, ifname), and within IFNAMSIZ. FNV-1a is enough: collisions are caught
/// when the link is created. A legacy attachment keeps the name its agent gave it.
pub fn host_ifname(attachment: &Attachment) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in owner(attachment).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_IFNAME_PREFIX}{:011x}", hash & 0xfff_ffff_ffff)
}

/// The recorded attachments that GC for `network` releases: that network's attachments not in
/// `valid`. Legacy attachments (recorded without a network) are never GC's to release: one
/// may belong to another network, whose runtime did not list it here. DEL removes them.
pub fn stale_for_gc<'a>(
    recorded: impl IntoIterator<Item = &'a Attachment>,
    network: &str,
    valid: &[Attachment],
) -> Vec<Attachment> {
    recorded
        .into_iter()
        .filter(|att| att.network == network && !att.is_legacy())
        .filter(|att| !valid.iter().any(|v| att.answers(v)))
        .cloned()
        .collect()
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

    fn att(network: &str, container_id: &str, ifname: &str) -> Attachment {
        Attachment {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = att("net-a", "abc", "eth0");
        let b = att("net-a", "abc", "eth1");
        // The same container and ifname on two networks (pods in two runtimes' views).
        let c = att("net-b", "abc", "eth0");
        assert_eq!(host_ifname(&a), host_ifname(&a.clone()));
        assert_ne!(host_ifname(&a), host_ifname(&b));
        assert_ne!(host_ifname(&a), host_ifname(&c));
        assert_ne!(owner(&a), owner(&c));
        assert!(host_ifname(&a).len() <= 15);
    }

    /// A record written before attachments had a network loads, keeps the veth name, IPAM owner
    /// and file its agent gave it, and answers a request for its container on any network.
    #[test]
    fn records_without_a_network_still_load() {
        let dir = std::env::temp_dir().join(format!("vnetd-endpoints-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = EndpointStore::open(&dir).unwrap();
        // Written by the agent of commit c26b68a: no "network" in the attachment.
        let legacy = r#"{"attachment":{"container_id":"abc","ifname":"eth0"},
            "netns":"/run/netns/p","ip":"10.0.2.10","subnet":"apps","host_ifname":"vnd9de51a688dd",
            "host_ifindex":7,"host_mac":[2,0,0,0,0,1],"pod_mac":[2,0,0,0,0,2],
            "container_group":null,"k8s_namespace":null,"k8s_pod":null}"#;
        let recorded = att("", "abc", "eth0");
        fs::write(
            dir.join("endpoints")
                .join(format!("{}.json", host_ifname(&recorded))),
            legacy,
        )
        .unwrap();
        let all = store.load_all().unwrap();
        let ep = &all[&recorded];
        assert!(ep.attachment.is_legacy());
        assert_eq!(
            ep.owner(),
            "abc/eth0",
            "the IPAM owner the old agent recorded"
        );
        assert_eq!(ep.host_ifname, "vnd9de51a688dd");
        assert_eq!(
            ep.routes,
            vec![Ipv4Net::default()],
            "the default route, as every interface had"
        );
        assert!(ep.attachment.answers(&att("any-net", "abc", "eth0")));
        assert!(!ep.attachment.answers(&att("any-net", "abc", "eth1")));
        // Removing it by its attachment removes the old file.
        store.remove(&ep.attachment).unwrap();
        assert!(store.load_all().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gc_of_one_network_releases_only_that_networks_stale_attachments() {
        let recorded = [
            att("net-a", "pod1", "eth0"),
            att("net-b", "pod1", "net1"),
            att("net-a", "pod2", "eth0"),
            att("", "pod3", "eth0"),
        ];
        let valid = [att("net-a", "pod1", "eth0")];
        assert_eq!(
            stale_for_gc(&recorded, "net-a", &valid),
            vec![att("net-a", "pod2", "eth0")]
        );
        assert_eq!(
            stale_for_gc(&recorded, "net-b", &[]),
            vec![att("net-b", "pod1", "net1")]
        );
    }
}
