//! Where the dataplane lives on bpffs. Everything is under `<bpffs>/abi-v<N>/` so that an agent
//! of another ABI never adopts maps whose layout it does not know; the pins of other ABIs are
//! removed (links detached first) by the agent that starts and by teardown.
use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use vnetd_common::ABI_VERSION;

/// Prefix of the per-ABI directories: `abi-v<N>`.
const ABI_DIR_PREFIX: &str = "abi-v";

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

/// The `abi-v<N>` directories under `bpffs` (any N), sorted; none if `bpffs` does not exist.
pub fn abi_dirs(bpffs: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(bpffs) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", bpffs.display())),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", bpffs.display()))?;
        let name = entry.file_name();
        let is_abi = name
            .to_str()
            .and_then(|n| n.strip_prefix(ABI_DIR_PREFIX))
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
        if is_abi && entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// What [`remove_abi`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: usize,
    pub maps: usize,
}

/// Removes one ABI's pins: links first, each detached from its hook (so the uplink's XDP slot
/// is free for the next program), then the maps (they go with their last user), then the
/// directory.
pub fn remove_abi(root: &Path) -> Result<Removed> {
    let mut removed = Removed::default();
    for path in dir_entries(&root.join("links"))? {
        detach_and_unpin_link(&path)?;
        removed.links += 1;
    }
    for path in dir_entries(&root.join("maps"))? {
        remove_file(&path)?;
        removed.maps += 1;
    }
    match fs::remove_dir_all(root) {
        Ok(()) => Ok(removed),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(removed),
        Err(err) => Err(err).with_context(|| format!("removing {}", root.display())),
    }
}

fn dir_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading {}", dir.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("reading {}", dir.display())),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// Detaches the link pinned at `path` from its hook, then removes the pin. Removing the pin
/// alone detaches only once nobody else holds the link; BPF_LINK_DETACH detaches it now.
pub fn detach_and_unpin_link(path: &Path) -> Result<()> {
    let link = match bpf_obj_get(path) {
        Ok(fd) => fd,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
    };
    match bpf_link_detach(&link) {
        Ok(()) => {}
        // Already detached: its interface is gone.
        Err(err) if err.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(err) => {
            return Err(err).with_context(|| format!("detaching the link {}", path.display()));
        }
    }
    remove_file(path)
}

/// BPF_OBJ_GET: opens a pinned object.
fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    // SAFETY: the kernel reads `attr` (its size given) and the NUL-terminated path it points
    // to, both alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_LINK_DETACH (kernel 5.9): detaches a link from its hook; the link object lives on,
/// detached, while fds or pins hold it.
fn bpf_link_detach(link: &OwnedFd) -> io::Result<()> {
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let attr = LinkDetach {
        link_fd: link.as_raw_fd() as u32,
    };
    const BPF_LINK_DETACH: libc::c_long = 34;
    // SAFETY: the kernel reads `attr`, alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &raw const attr,
            size_of::<LinkDetach>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
