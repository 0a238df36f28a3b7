//! Where the dataplane lives on bpffs. Everything is under `<bpffs>/abi-v<N>/` so that an agent
//! of another ABI never adopts maps whose layout it does not know.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use vnetd_common::ABI_VERSION;

/// `statfs(2)` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(bpffs: &Path) -> Self {
        Self {
            root: bpffs.join(format!("abi-v{ABI_VERSION}")),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// The link attaching `program` to `ifname`: `links/<program>@<ifname>`.
    pub fn link(&self, program: &str, ifname: &str) -> PathBuf {
        self.links_dir().join(format!("{program}@{ifname}"))
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Checks that `bpffs` is on a bpf filesystem and makes the directories.
    pub fn prepare(&self, bpffs: &Path) -> Result<()> {
        let probe = nearest_existing(bpffs);
        let stat = nix::sys::statfs::statfs(&probe)
            .with_context(|| format!("statfs {}", probe.display()))?;
        if stat.filesystem_type().0 != BPF_FS_MAGIC {
            bail!(
                "--bpffs {} is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)",
                bpffs.display()
            );
        }
        for dir in [self.root.join("maps"), self.links_dir()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}
