//! Who the sandbox user is on the host, and the user namespace's id maps.
//!
//! As root, every running sandbox gets its own host uid and gid from a
//! configured range (like isolate's per-box uids), so two sandboxes can
//! never signal or read each other. A slot is held by an open-file-
//! description lock on one byte of a lock file: it is released when the
//! lease is dropped or the process dies, and it works across processes.
//! Rootless, the sandbox user is the caller.

use crate::mounts::SANDBOX_ID;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why no host id could be had.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("cannot open the uid lock file {path:?}: {source}")]
    LockFile { path: PathBuf, source: io::Error },
    #[error(
        "all {count} sandbox uids from {base} are in use: wait, or raise [ids] count in the config"
    )]
    Exhausted { base: u32, count: u32 },
    #[error("cannot lock a uid slot: {0}")]
    Lock(io::Error),
    #[error("cannot write the user namespace's {file}: {source}")]
    WriteMap {
        file: &'static str,
        source: io::Error,
    },
}

/// The host uid and gid the sandbox's uid/gid 1000 map to, held for the
/// duration of one run.
#[derive(Debug)]
pub struct HostIds {
    pub uid: u32,
    pub gid: u32,
    /// The lock file, whose byte lock holds the slot (None rootless).
    _lease: Option<File>,
}

/// Hands out per-sandbox host ids.
#[derive(Debug)]
pub struct IdAllocator {
    rootless: bool,
    lock_path: PathBuf,
    base: u32,
    count: u32,
    next: AtomicU32,
}

impl IdAllocator {
    /// `state_dir` holds the lock file (created 0700, root only).
    pub fn new(rootless: bool, state_dir: &Path, base: u32, count: u32) -> IdAllocator {
        IdAllocator {
            rootless,
            lock_path: state_dir.join("uid-slots.lock"),
            base,
            count,
            next: AtomicU32::new(std::process::id().wrapping_mul(2_654_435_761)),
        }
    }

    /// Leases ids for one sandbox.
    pub fn acquire(&self) -> Result<HostIds, IdError> {
        if self.rootless {
            return Ok(HostIds {
                uid: crate::sys::euid(),
                gid: crate::sys::egid(),
                _lease: None,
            });
        }
        if let Some(dir) = self.lock_path.parent() {
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
        }
        // A new open file description per lease: OFD locks of one
        // description do not exclude each other, separate ones do.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.lock_path)
            .map_err(|source| IdError::LockFile {
                path: self.lock_path.clone(),
                source,
            })?;
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        for i in 0..self.count {
            let slot = (start + i) % self.count;
            if try_lock_byte(&file, slot as i64).map_err(IdError::Lock)? {
                let id = self.base + slot;
                return Ok(HostIds {
                    uid: id,
                    gid: id,
                    _lease: Some(file),
                });
            }
        }
        Err(IdError::Exhausted {
            base: self.base,
            count: self.count,
        })
    }
}

/// Takes an OFD write lock on one byte; false when someone else holds it.
fn try_lock_byte(file: &File, offset: i64) -> io::Result<bool> {
    // SAFETY: an all-zero flock is valid; fields are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = offset;
    lock.l_len = 1;
    // SAFETY: valid fd and pointer to a local flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if r == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// The map line giving the sandbox id 1000 the host id `host`.
pub fn map_line(host: u32) -> String {
    format!("{SANDBOX_ID} {host} 1\n")
}

/// Writes the child's uid and gid maps. Rootless, setgroups must be denied
/// first (the kernel requires it for an unprivileged gid map).
pub fn write_maps(pid: libc::pid_t, ids: &HostIds, rootless: bool) -> Result<(), IdError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let write = |file: &'static str, text: &str| {
        std::fs::write(proc_dir.join(file), text)
            .map_err(|source| IdError::WriteMap { file, source })
    };
    if rootless {
        write("setgroups", "deny")?;
    }
    write("uid_map", &map_line(ids.uid))?;
    write("gid_map", &map_line(ids.gid))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_leases_get_distinct_ids_and_are_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alloc = IdAllocator::new(false, dir.path(), 2_000_000, 3);
        let a = alloc.acquire().expect("a");
        let b = alloc.acquire().expect("b");
        let c = alloc.acquire().expect("c");
        let mut ids = vec![a.uid, b.uid, c.uid];
        ids.sort();
        assert_eq!(ids, vec![2_000_000, 2_000_001, 2_000_002]);
        assert!(matches!(alloc.acquire(), Err(IdError::Exhausted { .. })));
        let freed = b.uid;
        drop(b);
        assert_eq!(alloc.acquire().expect("reused").uid, freed);
        drop((a, c));
    }

    #[test]
    fn map_lines_map_only_the_sandbox_user() {
        assert_eq!(map_line(1_000_000_007), "1000 1000000007 1\n");
    }
}
