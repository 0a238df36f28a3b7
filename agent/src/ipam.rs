//! Address management: the node's pool, allocations recorded durably in `--state-dir`.
//!
//! One file per allocated address (`<state>/ipam/<ip>`, holding its owner) made with
//! `link(2)` from a fully written, fsynced temporary: the name appears atomically or not at
//! all, so an agent killed at any moment never hands one address to two pods, and a restart
//! sees every allocation it made.
use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write as _},
    net::Ipv4Addr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// The allocations of one node.
pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    pub fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("ipam");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The lowest free address of `pool` (ranges in order), recorded for `owner`.
    /// `None` when the pool is exhausted.
    pub fn allocate(
        &self,
        pool: &[RangeInclusive<Ipv4Addr>],
        owner: &str,
    ) -> Result<Option<Ipv4Addr>> {
        for range in pool {
            for ip in u32::from(*range.start())..=u32::from(*range.end()) {
                let ip = Ipv4Addr::from(ip);
                if self.reserve(ip, owner)? {
                    return Ok(Some(ip));
                }
            }
        }
        Ok(None)
    }

    /// Records `ip` for `owner`; false if someone already holds it. Idempotent for the owner.
    pub fn reserve(&self, ip: Ipv4Addr, owner: &str) -> Result<bool> {
        let path = self.path(ip);
        let tmp = self.dir.join(format!(".{ip}.{}", std::process::id()));
        {
            let mut file =
                File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            file.write_all(owner.as_bytes())?;
            file.sync_all()?;
        }
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                Ok(self.owner_of(ip)?.as_deref() == Some(owner))
            }
            Err(err) => Err(err).with_context(|| format!("recording {}", path.display())),
        }
    }

    /// Returns `ip` to the pool if `owner` holds it.
    pub fn release(&self, ip: Ipv4Addr, owner: &str) -> Result<()> {
        if self.owner_of(ip)?.as_deref() == Some(owner) {
            fs::remove_file(self.path(ip))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<String>> {
        match fs::read_to_string(self.path(ip)) {
            Ok(owner) => Ok(Some(owner)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", self.path(ip).display())),
        }
    }

    /// Every allocation: address -> owner.
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue; // temporaries of a killed agent
            };
            if let Some(owner) = self.owner_of(ip)? {
                out.insert(ip, owner);
            }
        }
        Ok(out)
    }

    /// Number of free addresses left in `pool`.
    pub fn free_in(&self, pool: &[RangeInclusive<Ipv4Addr>]) -> Result<u64> {
        let allocated = self.allocations()?;
        Ok(pool
            .iter()
            .map(|r| {
                let size = u64::from(u32::from(*r.end())) - u64::from(u32::from(*r.start())) + 1;
                size - allocated.keys().filter(|ip| r.contains(*ip)).count() as u64
            })
            .sum())
    }

    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?
        .sync_all()
        .with_context(|| format!("fsync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vnetd-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn pool(a: &str, b: &str) -> Vec<RangeInclusive<Ipv4Addr>> {
        vec![a.parse().unwrap()..=b.parse().unwrap()]
    }

    #[test]
    fn allocates_lowest_free_and_exhausts() {
        let dir = tempdir("exhaust");
        let ipam = Ipam::open(&dir).unwrap();
        let p = pool("10.0.2.10", "10.0.2.11");
        assert_eq!(
            ipam.allocate(&p, "a/eth0").unwrap(),
            Some("10.0.2.10".parse().unwrap())
        );
        assert_eq!(
            ipam.allocate(&p, "b/eth0").unwrap(),
            Some("10.0.2.11".parse().unwrap())
        );
        assert_eq!(ipam.allocate(&p, "c/eth0").unwrap(), None);
        assert_eq!(ipam.free_in(&p).unwrap(), 0);
        ipam.release("10.0.2.10".parse().unwrap(), "a/eth0")
            .unwrap();
        assert_eq!(
            ipam.allocate(&p, "c/eth0").unwrap(),
            Some("10.0.2.10".parse().unwrap())
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn survives_reopen_and_ignores_foreign_release() {
        let dir = tempdir("reopen");
        let p = pool("10.0.1.10", "10.0.1.40");
        let ip = Ipam::open(&dir)
            .unwrap()
            .allocate(&p, "a/eth0")
            .unwrap()
            .unwrap();
        // A stray temporary from a killed agent is not an allocation.
        fs::write(dir.join("ipam/.10.0.1.11.999"), "x").unwrap();
        let ipam = Ipam::open(&dir).unwrap();
        assert_eq!(ipam.allocations().unwrap().len(), 1);
        ipam.release(ip, "someone-else/eth0").unwrap();
        assert_eq!(ipam.owner_of(ip).unwrap().as_deref(), Some("a/eth0"));
        assert!(
            ipam.reserve(ip, "a/eth0").unwrap(),
            "reserve is idempotent for the owner"
        );
        assert!(!ipam.reserve(ip, "b/eth0").unwrap());
        assert_ne!(ipam.allocate(&p, "b/eth0").unwrap(), Some(ip));
        fs::remove_dir_all(dir).unwrap();
    }
}
