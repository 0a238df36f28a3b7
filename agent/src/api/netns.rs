//! What the agent accepts as `CNI_NETNS`: a network namespace file other than its own, opened
//! without blocking. A client names any path it likes; opening a FIFO for reading blocks until
//! a writer comes (the agent serves requests one at a time, so that would stall every pod on
//! the node), and opening a device could have side effects. So the path is opened
//! `O_RDONLY | O_NONBLOCK | O_CLOEXEC`, and the open file is checked before it is used: on nsfs
//! (`fstatfs`), of type `CLONE_NEWNET` (`NS_GET_NSTYPE`), and not the namespace the agent runs in.
use std::{
    fs::File,
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

/// `NSFS_MAGIC` from linux/magic.h.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    // Paths with `{:?}`: they come from the client, and a log line stays one line.
    #[error("network namespace {:?} not found", .0)]
    NotFound(PathBuf),
    #[error("CNI_NETNS {:?} is refused: {why}", .path)]
    Refused { path: PathBuf, why: String },
    #[error("opening network namespace {:?}: {source}", .path)]
    Io { path: PathBuf, source: io::Error },
}

/// Opens `path` as a pod's network namespace (see the module documentation).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    let refused = |why: &str| NetnsError::Refused {
        path: path.to_owned(),
        why: why.to_string(),
    };
    let io_error = |source: io::Error| NetnsError::Io {
        path: path.to_owned(),
        source,
    };
    if !path.is_absolute() {
        return Err(refused("not an absolute path"));
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(NetnsError::NotFound(path.to_owned()));
        }
        Err(err) => return Err(io_error(err)),
    };
    // SAFETY: fstatfs writes one `statfs` into the zeroed buffer it is given.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return Err(io_error(io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    if fs.f_type as i64 != NSFS_MAGIC {
        return Err(refused("not a network namespace (not a namespace file)"));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the namespace's CLONE_NEW* type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(io_error(io::Error::last_os_error()));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(refused(
            "not a network namespace (another kind of namespace)",
        ));
    }
    let own = std::fs::metadata("/proc/thread-self/ns/net").map_err(|err| {
        io_error(io::Error::new(
            err.kind(),
            format!("the agent's own: {err}"),
        ))
    })?;
    let meta = file.metadata().map_err(io_error)?;
    if (meta.dev(), meta.ino()) == (own.dev(), own.ino()) {
        return Err(refused(
            "it is the agent's own network namespace, not a pod's",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_pod_network_namespace() {
        let dir = std::env::temp_dir().join(format!("vnetd-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "x").unwrap();
        for (path, fragment) in [
            (fifo.as_path(), "not a network namespace"),
            (file.as_path(), "not a network namespace"),
            (Path::new("/proc/self/ns/uts"), "another kind"),
            (Path::new("/proc/self/ns/net"), "agent's own"),
            (Path::new("relative/netns"), "absolute"),
        ] {
            let err = open(path).unwrap_err().to_string();
            assert!(err.contains(fragment), "{}: {err}", path.display());
            assert!(err.contains(&*path.to_string_lossy()), "{err}");
        }
        assert!(matches!(
            open(&dir.join("absent")),
            Err(NetnsError::NotFound(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
