//! Reading a whole hash map in few system calls: `BPF_MAP_LOOKUP_BATCH` (kernel 5.6), which aya
//! does not wrap. Walking a map key by key (`get_next_key` then a lookup, two system calls per
//! entry) took the controller 60-70% of a core every 100 ms tick with the half-open table full
//! (65,536 entries); a batch copies thousands of entries per call. A batch walks the hash buckets
//! in order (`__htab_map_lookup_and_delete_batch`, kernel/bpf/hashtab.c), so entries changing
//! meanwhile are read once or not at all, never twice, and a removed one never restarts the walk
//! (a key-by-key walk whose current key is removed starts again from the first bucket).
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::Context as _;
use aya::{Pod, maps::MapData};

/// `BPF_MAP_LOOKUP_BATCH` in include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call; a bucket holding more than this answers `ENOSPC`, and the call is
/// made again with twice as many.
const BATCH: u32 = 4096;

/// The `batch` member of `union bpf_attr`.
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

/// Every entry of the hash map `map` (keys `K`, values `V` of the map's sizes).
///
/// # Errors
/// On a bpf() failure (a kernel without batch operations answers `EINVAL`).
pub fn entries<K: Pod, V: Pod>(map: &MapData) -> anyhow::Result<Vec<(K, V)>> {
    let fd = u32::try_from(map.fd().as_fd().as_raw_fd())?;
    let mut out = Vec::new();
    let mut count = BATCH;
    // The position between calls: for a hash map, a bucket index (u32); 8 bytes to spare.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(count as usize);
        let mut values: Vec<V> = Vec::with_capacity(count as usize);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw mut token_in) as u64 },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: attr is the batch member of `union bpf_attr` with the size passed; the buffers
        // it points to hold `count` keys and values and outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                (&raw mut attr).cast::<u8>(),
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        if err
            .as_ref()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
        {
            count *= 2;
            continue;
        }
        if let Some(e) = &err
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            return Err(io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(0)))
                .context("BPF_MAP_LOOKUP_BATCH");
        }
        let n = (attr.count as usize).min(count as usize);
        // SAFETY: the kernel filled the first `n` keys and values (plain data of their sizes).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.into_iter().zip(values));
        // ENOENT: no bucket left.
        if err.is_some() {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}
