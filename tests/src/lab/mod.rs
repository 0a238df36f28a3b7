//! The lab: builds the topology, owns its namespaces, tears everything down.
//!
//! This module holds the lab itself (its state, lifecycle and teardown); the parts it builds
//! are in [`topology`] (fabric, edge, internet), [`node`] (nodes and their uplinks),
//! [`appliances`], [`pods`] (pod namespaces, veth pods) and [`cni`] (running a CNI plugin).

mod appliances;
mod cni;
mod node;
mod pods;
mod topology;

pub use appliances::Appliance;
pub use cni::{CniCall, CniOutput};
pub use node::{NODE_METRICS_ADDR, Node};
pub use pods::{PodNs, VethPod};

use crate::ns::Ns;
use crate::process;
use crate::sweep::{self, FAMILY};
use crate::{BPFFS_ROOT, EDGE_INTERNET_IP, GATEWAY, INTERNET_HOST_IP, LAB_DIR_ROOT, UPLINK};
use anyhow::{Context, Result, anyhow, ensure};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Set this environment variable to keep each lab's directory (logs) after teardown; a later
/// sweep removes it once the process is gone.
pub const KEEP_LOGS_ENV: &str = "VNETD_LAB_KEEP_LOGS";

/// A deterministic, locally administered MAC: `02:<kind>:<the four bytes of ip>`. Kinds: 00
/// fabric members (nodes, appliances, the edge), 01 veth pods' eth0, 02 their host side.
fn mac_for(kind: u8, ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!(
        "02:{kind:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        o[0], o[1], o[2], o[3]
    )
}

/// Sysctls every lab namespace gets, before any link exists in it (so the `default` values
/// reach every interface created later):
/// - IPv6 off: no router solicitations, DAD or MLD reports on the fabric to disturb packet
///   counts and captures (the dataplane is IPv4). A test that needs IPv6 turns it back on.
/// - rp_filter off: inherited from the root namespace otherwise, so results would depend on
///   the machine; and a packet that escaped translation should still arrive where a test can
///   see it, not vanish at the edge.
/// - No ICMP redirects: appliances and nodes forward out of the interface they received on;
///   a redirect would teach the sender to bypass them.
const BASE_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/conf/default/send_redirects", "0"),
    ("net/ipv4/conf/all/accept_redirects", "0"),
    ("net/ipv4/conf/default/accept_redirects", "0"),
];

#[derive(Default)]
struct State {
    /// Every namespace created, in order of creation.
    namespaces: Vec<String>,
    roles: HashSet<String>,
    /// Addresses in use and the member (role) that holds them.
    addresses: HashMap<Ipv4Addr, String>,
    ports: u32,
    veths: u32,
    nodes: Vec<Node>,
    appliances: Vec<Appliance>,
    public_ips: Vec<(Ipv4Addr, String)>,
    internet_ips: Vec<Ipv4Addr>,
    torn_down: bool,
}

/// A virtual network in namespaces (see the crate docs for the topology).
///
/// [`Lab::new`] builds the fabric, the edge and the internet host; add nodes, appliances and
/// pods with `&self` methods (the lab is `Sync`: share it with threads). Dropping it, or
/// [`Lab::teardown`], removes everything it made, processes first, then namespaces; the lab's
/// files are kept when the drop happens during a panic (their path is printed), for the
/// post-mortem, and swept by a later run.
pub struct Lab {
    id: String,
    prefix: String,
    dir: PathBuf,
    bpffs: PathBuf,
    fabric: Ns,
    edge: Ns,
    internet: Ns,
    state: Mutex<State>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab").field("id", &self.id).finish()
    }
}

impl Lab {
    /// Sweeps leftovers of dead processes' labs, then builds a new lab: `fabric` (bridge
    /// `br0`), `edge` (10.0.0.1 on the fabric, 198.51.100.1 towards the internet) and
    /// `internet` (198.51.100.10). About 50 ms.
    pub fn new() -> Result<Lab> {
        match sweep::sweep_stale() {
            Ok(r) if !r.is_empty() => eprintln!("vnetd-lab: swept leftovers of dead labs: {r}"),
            Ok(_) => {}
            Err(e) => eprintln!("vnetd-lab: sweeping leftovers: {e:#}"),
        }
        let id = format!(
            "{FAMILY}{}x{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let prefix = format!("{id}-");
        let dir = Path::new(LAB_DIR_ROOT).join(&id);
        let logs = dir.join("logs");
        let ns = |role: &str| Ns::new(format!("{prefix}{role}"), role.to_string(), logs.clone());
        let lab = Lab {
            fabric: ns("fabric"),
            edge: ns("edge"),
            internet: ns("internet"),
            bpffs: Path::new(BPFFS_ROOT).join(&id),
            dir,
            prefix,
            id,
            state: Mutex::new(State::default()),
        };
        // From here on, an error drops `lab`, which removes what was made.
        std::fs::create_dir_all(lab.dir.join("logs"))
            .with_context(|| format!("creating {}", lab.dir.display()))?;
        // Who owns the lab, for sweeps that must tell a reused pid from its first owner.
        let me = sweep::start_time(std::process::id()).unwrap_or(0);
        let owner = sweep::owner_file(&lab.id);
        std::fs::write(&owner, me.to_string())
            .with_context(|| format!("writing {}", owner.display()))?;
        lab.build_base()
            .with_context(|| format!("building lab {}", lab.id))?;
        Ok(lab)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `vnl<pid>x<n>`: this lab's id; its namespaces are `<id>-<role>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `vnl<pid>x<n>-`: the prefix of every namespace of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's directory (`/tmp/vnetd-lab/<id>`): logs, node dirs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lab's bpffs directory (`/sys/fs/bpf/<id>`), parent of the nodes' pin dirs.
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs
    }

    /// The fabric namespace (bridge `br0`, ports `fp<n>-<member>`).
    pub fn fabric(&self) -> &Ns {
        &self.fabric
    }

    /// The edge router: `eth0` 10.0.0.1/32 on the fabric, `eth1` 198.51.100.1/24.
    pub fn edge(&self) -> &Ns {
        &self.edge
    }

    /// The internet host: `eth0` 198.51.100.10/24 ([`crate::INTERNET_HOST_IP`]).
    pub fn internet(&self) -> &Ns {
        &self.internet
    }

    /// The nodes added so far.
    pub fn nodes(&self) -> Vec<Node> {
        self.lock().nodes.clone()
    }

    /// A node by role name.
    pub fn node(&self, role: &str) -> Option<Node> {
        self.lock().nodes.iter().find(|n| n.role == role).cloned()
    }

    /// The appliances added so far.
    pub fn appliances(&self) -> Vec<Appliance> {
        self.lock().appliances.clone()
    }

    /// The namespace names of this lab, in order of creation.
    pub fn namespaces(&self) -> Vec<String> {
        self.lock().namespaces.clone()
    }

    /// Creates `<prefix><role>`, registered for teardown before it exists, with lo up and
    /// [`BASE_SYSCTLS`].
    fn create_ns(&self, role: &str) -> Result<Ns> {
        ensure!(
            !role.is_empty()
                && role.len() <= 32
                && role
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
            "{role:?}: a lab member name is 1-32 characters of [A-Za-z0-9._-]"
        );
        let ns = Ns::new(
            format!("{}{role}", self.prefix),
            role.to_string(),
            self.dir.join("logs"),
        );
        {
            let mut st = self.lock();
            ensure!(!st.torn_down, "lab {} is torn down", self.id);
            ensure!(
                st.roles.insert(role.to_string()),
                "lab {} already has a member named {role:?}",
                self.id
            );
            st.namespaces.push(ns.name.clone());
        }
        if ns.exists() {
            // Our id, a name this lab has not made: left by an earlier process with our pid
            // that recorded no owner. Ours now.
            eprintln!("vnetd-lab: removing stale netns {}", ns.name);
            sweep::delete_netns(&ns.name)?;
        }
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &ns.name])
            .output()
            .with_context(|| format!("running ip netns add {}", ns.name))?;
        ensure!(
            out.status.success(),
            "ip netns add {} failed: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        ns.in_ns(|| {
            for (key, value) in BASE_SYSCTLS {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {value} to {}", path.display()))?;
            }
            Ok(())
        })
        .with_context(|| format!("setting sysctls in netns {}", ns.name))?;
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn claim_address(&self, ip: Ipv4Addr, owner: &str) -> Result<()> {
        let mut st = self.lock();
        if let Some(holder) = st.addresses.get(&ip) {
            anyhow::bail!("{ip} is already used by {holder} in lab {}", self.id);
        }
        st.addresses.insert(ip, owner.to_string());
        Ok(())
    }

    /// Deletes one namespace of this lab now (a pod going away, a node failing), killing its
    /// processes; its addresses become free again and the edge forgets a member's route. A
    /// veth pod's host side goes with it (deleting one end of a veth deletes the pair).
    pub fn remove_ns(&self, ns: &Ns) -> Result<()> {
        ensure!(
            ns.name.starts_with(&self.prefix) && self.lock().namespaces.contains(&ns.name),
            "{} is not a namespace of lab {}",
            ns.name,
            self.id
        );
        // Deleting the namespace frees its links asynchronously (in a kernel work queue):
        // delete them first, synchronously, so the peer (a pod's host veth, a member's fabric
        // port) is gone when this returns, as it would be after a CNI DEL.
        if let Ok(links) = ns.ip_json(["link", "show"]) {
            for l in links.as_array().into_iter().flatten() {
                if let Some(name) = l.get("ifname").and_then(Value::as_str)
                    && name != "lo"
                {
                    // Already gone with its peer: fine.
                    let _ = ns.ip(["link", "del", "dev", name]);
                }
            }
        }
        sweep::delete_netns(&ns.name)?;
        let member_ip = {
            let mut st = self.lock();
            st.namespaces.retain(|n| *n != ns.name);
            st.roles.remove(&ns.role);
            st.addresses.retain(|_, owner| *owner != ns.role);
            let ip = st
                .nodes
                .iter()
                .map(|n| (&n.ns, n.ip))
                .chain(st.appliances.iter().map(|a| (&a.ns, a.ip)))
                .find(|(n, _)| n.name == ns.name)
                .map(|(_, ip)| ip);
            st.nodes.retain(|n| n.name != ns.name);
            st.appliances.retain(|n| n.name != ns.name);
            ip
        };
        if let Some(ip) = member_ip {
            self.edge
                .ip(["route", "del", &format!("{ip}/32"), "dev", UPLINK])
                .with_context(|| format!("removing the edge's route to {}", ns.role))?;
        }
        Ok(())
    }

    /// Removes everything: kills the processes in every lab namespace, deletes the namespaces
    /// (newest first; their links go with them), the bpffs dir and the lab dir (kept when
    /// called during a panic). Idempotent; also run by `Drop`. Afterwards nothing can be added.
    pub fn teardown(&self) -> Result<()> {
        let names = {
            let mut st = self.lock();
            if st.torn_down {
                return Ok(());
            }
            st.torn_down = true;
            std::mem::take(&mut st.namespaces)
        };
        let mut errors = Vec::new();
        // Processes first, in every namespace, so none reacts to its links vanishing: those
        // this process started (also any still on their way in), then whatever is inside.
        process::kill_registered(|ns| names.iter().any(|n| n == ns));
        let own = std::process::id() as i32;
        for name in &names {
            let path = Path::new("/run/netns").join(name);
            if let Ok(pids) = crate::ns::pids_in_netns(&path) {
                for pid in pids.into_iter().filter(|&p| p != own) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        for name in names.iter().rev() {
            if let Err(e) = sweep::delete_netns(name) {
                errors.push(format!("{e:#}"));
            }
        }
        if self.bpffs.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.bpffs)
        {
            errors.push(format!("removing {}: {e}", self.bpffs.display()));
        }
        let keep = if std::thread::panicking() {
            Some("during a panic")
        } else if !errors.is_empty() {
            Some("with errors")
        } else if std::env::var_os(KEEP_LOGS_ENV).is_some() {
            Some(KEEP_LOGS_ENV)
        } else {
            None
        };
        if let Some(why) = keep {
            eprintln!(
                "vnetd-lab: lab {} torn down {why}; logs kept in {}",
                self.id,
                self.dir.display()
            );
        } else if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            errors.push(format!("removing {}: {e}", self.dir.display()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "tearing down lab {}: {}",
                self.id,
                errors.join("; ")
            ))
        }
    }

    /// A human-readable summary of the lab (for the demo and failure messages).
    pub fn describe(&self) -> String {
        let st = self.lock();
        let mut s = format!(
            "lab {} (namespaces {}*)\n  edge: eth0 {GATEWAY}/32 on the fabric, eth1 {EDGE_INTERNET_IP}/24\n  internet host: {INTERNET_HOST_IP}",
            self.id, self.prefix
        );
        for ip in &st.internet_ips {
            s.push_str(&format!(", {ip}"));
        }
        for n in &st.nodes {
            s.push_str(&format!(
                "\n  node {}: {} {} ({}), netns {}",
                n.role, n.uplink, n.cidr, n.mac, n.name
            ));
        }
        for a in &st.appliances {
            s.push_str(&format!(
                "\n  appliance {}: {} {} ({}), netns {}",
                a.role, a.uplink, a.cidr, a.mac, a.name
            ));
        }
        for (ip, node) in &st.public_ips {
            s.push_str(&format!("\n  public ip {ip} -> {node}"));
        }
        s
    }
}

impl fmt::Display for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("vnetd-lab: {e:#}");
        }
    }
}

/// The lab is shared with threads (traffic helpers, a demo's signal handling).
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Lab>();
    is_send_sync::<Node>();
};

#[cfg(test)]
mod tests {
    use super::mac_for;
    use std::net::Ipv4Addr;

    #[test]
    fn macs() {
        assert_eq!(mac_for(0, Ipv4Addr::new(10, 0, 0, 4)), "02:00:0a:00:00:04");
        assert_eq!(
            mac_for(1, Ipv4Addr::new(10, 0, 1, 200)),
            "02:01:0a:00:01:c8"
        );
    }
}
