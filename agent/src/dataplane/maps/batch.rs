//! Many entries of one map in one system call: BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH and
//! BPF_MAP_LOOKUP_BATCH (kernel 5.6). aya 0.14 has none of them, and a reload writes thousands
//! of NSG entries (an LPM entry per prefix and port block, a rule, a counter per rule): one
//! system call each costs milliseconds. A map type without batch operations is written entry by
//! entry, with the same results.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::Map};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's ENOTSUPP (not in libc): the map type has no batch operation.
const ENOTSUPP: i32 = 524;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr`'s element member (BPF_MAP_*_ELEM).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A batch that stopped at entry `index` (those before it are done) with `error`.
#[derive(Debug)]
pub struct Stopped {
    pub index: usize,
    pub error: io::Error,
}

impl Stopped {
    /// The entry of `entries` (the batch's) it stopped at: the last one if the kernel's count
    /// ran past it.
    pub fn entry<'a, T>(&self, entries: &'a [T]) -> &'a T {
        &entries[self.index.min(entries.len().saturating_sub(1))]
    }
}

fn map_fd(map: &Map) -> io::Result<u32> {
    match map {
        Map::HashMap(data) | Map::LpmTrie(data) | Map::PerCpuHashMap(data) => {
            Ok(data.fd().as_fd().as_raw_fd() as u32)
        }
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "batch operations are only used on hash, per-CPU hash and LPM trie maps",
        )),
    }
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is the member of `union bpf_attr` that `cmd` reads, its size given; the
    // buffers it points to are alive and as large as the call's count says.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn bytes<T: Pod>(items: &[T]) -> u64 {
    items.as_ptr() as u64
}

/// Writes `keys[i]` -> the `i`th value (`values` holds `values.len() / keys.len()` values per
/// key: one, or one per possible CPU for a per-CPU map), in order, each as BPF_ANY would. The
/// caller checked that the key and value types are the map's (aya's typed wrappers do).
pub fn update<K: Pod, V: Pod>(map: &Map, keys: &[K], values: &[V]) -> Result<(), Stopped> {
    if keys.is_empty() {
        return Ok(());
    }
    assert_eq!(
        values.len() % keys.len(),
        0,
        "a whole number of values per key"
    );
    let per_key = values.len() / keys.len();
    let fd = map_fd(map).map_err(|error| Stopped { index: 0, error })?;
    let mut attr = BatchAttr {
        keys: bytes(keys),
        values: bytes(values),
        count: keys.len() as u32,
        map_fd: fd,
        ..BatchAttr::default()
    };
    match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
        Ok(()) => Ok(()),
        Err(error) if error.raw_os_error() == Some(ENOTSUPP) => {
            for (index, key) in keys.iter().enumerate() {
                let mut elem = ElemAttr {
                    map_fd: fd,
                    key: std::ptr::from_ref(key) as u64,
                    value: bytes(&values[index * per_key..]),
                    ..ElemAttr::default()
                };
                bpf(BPF_MAP_UPDATE_ELEM, &mut elem).map_err(|error| Stopped { index, error })?;
            }
            Ok(())
        }
        Err(error) => Err(Stopped {
            index: attr.count as usize,
            error,
        }),
    }
}

/// Deletes `keys`; a key the map does not hold is skipped (as the agent's deletes of what it
/// believes is there are meant).
pub fn delete<K: Pod>(map: &Map, keys: &[K]) -> Result<(), Stopped> {
    let fd = map_fd(map).map_err(|error| Stopped { index: 0, error })?;
    let mut start = 0;
    while start < keys.len() {
        let rest = &keys[start..];
        let mut attr = BatchAttr {
            keys: bytes(rest),
            count: rest.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => return Ok(()),
            // Stopped at a key that is not there: skip it.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                start += attr.count as usize + 1;
            }
            Err(error) if error.raw_os_error() == Some(ENOTSUPP) => {
                for (index, key) in keys.iter().enumerate().skip(start) {
                    let mut elem = ElemAttr {
                        map_fd: fd,
                        key: std::ptr::from_ref(key) as u64,
                        ..ElemAttr::default()
                    };
                    match bpf(BPF_MAP_DELETE_ELEM, &mut elem) {
                        Err(error) if error.raw_os_error() != Some(libc::ENOENT) => {
                            return Err(Stopped { index, error });
                        }
                        _ => {}
                    }
                }
                return Ok(());
            }
            Err(error) => {
                return Err(Stopped {
                    index: start + attr.count as usize,
                    error,
                });
            }
        }
    }
    Ok(())
}

/// Every entry of a hash or per-CPU hash map: (key, its `per_key` values), `per_key` being 1,
/// or the possible CPUs for a per-CPU map.
pub fn lookup_all<K: Pod, V: Pod + Default>(
    map: &Map,
    per_key: usize,
) -> io::Result<Vec<(K, Vec<V>)>> {
    let fd = map_fd(map)?;
    let mut chunk = 1024usize;
    let mut out = Vec::new();
    // The position token: a bucket index for hash maps (4 bytes), a key for others.
    let mut token_in = [0u8; 64];
    let mut token_out = [0u8; 64];
    let mut first = true;
    loop {
        let mut keys: Vec<K> = vec![K::zeroed(); chunk];
        let mut values: Vec<V> = vec![V::default(); chunk * per_key];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match result {
            Ok(()) => false,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => true,
            // A bucket holds more entries than the chunk: a larger one.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                chunk *= 4;
                continue;
            }
            Err(error) => return Err(error),
        };
        let got = attr.count as usize;
        keys.truncate(got);
        for (i, key) in keys.into_iter().enumerate() {
            out.push((key, values[i * per_key..(i + 1) * per_key].to_vec()));
        }
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// A zeroed value of a plain-data type.
trait Zeroed {
    fn zeroed() -> Self;
}

impl<T: Pod> Zeroed for T {
    fn zeroed() -> Self {
        // SAFETY: `Pod` types are plain data, valid for any bit pattern.
        unsafe { std::mem::zeroed() }
    }
}
