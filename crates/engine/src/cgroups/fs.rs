//! The seam between the cgroup managers and the filesystem they drive.
//!
//! Reading is plain `std::fs` in every case: a fake tree of ordinary files
//! reads exactly like cgroupfs. Only three operations behave differently on a
//! real cgroupfs and on a fake tree of plain files, and only they go through
//! [`CgroupFs`]:
//!
//! - writing an interface file: cgroupfs files exist as soon as the directory
//!   is made, so the kernel path never creates or truncates; the fake creates;
//! - removing a cgroup: `rmdir` on cgroupfs removes a directory that still
//!   shows its interface files; a plain directory must be emptied first;
//! - killing the processes listed in a `cgroup.procs` file: the fake records
//!   the pids instead of signalling them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The filesystem operations whose behaviour differs between cgroupfs and a
/// fake tree. See the module header.
pub(crate) trait CgroupFs: Send + Sync + std::fmt::Debug {
    /// Writes `value` to an existing interface file in one `write(2)`.
    fn write_file(&self, path: &Path, value: &str) -> io::Result<()>;
    /// The same for the file `name` in the directory open at `dir`: no walk
    /// down the whole path again (each cgroupfs level takes a kernfs lock).
    fn write_file_at(&self, dir: BorrowedFd<'_>, name: &str, value: &str) -> io::Result<()>;
    /// Removes a cgroup directory.
    fn remove_cgroup_dir(&self, path: &Path) -> io::Result<()>;
    /// Sends SIGKILL to every process listed in the `cgroup.procs` file at
    /// `procs`, and returns how many were listed.
    fn kill_listed(&self, procs: &Path) -> io::Result<usize>;
}

/// The real thing: a mounted cgroupfs (v1 or v2).
#[derive(Debug, Default)]
pub(crate) struct KernelFs;

impl CgroupFs for KernelFs {
    fn write_file(&self, path: &Path, value: &str) -> io::Result<()> {
        // No O_CREAT: a missing file means the controller or feature is absent,
        // and callers tell that (ENOENT) apart from a refused value.
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }

    fn write_file_at(&self, dir: BorrowedFd<'_>, name: &str, value: &str) -> io::Result<()> {
        let mut file = open_at(dir, name, libc::O_WRONLY)?;
        file.write_all(value.as_bytes())
    }

    fn remove_cgroup_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn kill_listed(&self, procs: &Path) -> io::Result<usize> {
        let listed = parse_pids(&std::fs::read_to_string(procs)?);
        if listed.is_empty() {
            return Ok(0);
        }
        // A pid read from cgroup.procs may exit and be reused by an unrelated
        // process before we signal it. So: pin each process with a pidfd, read
        // the list again, and signal only pidfds whose pid is still listed.
        // A pidfd never signals a different process than the one it was opened
        // for, so a reused number is harmless after this point.
        let mut pinned = Vec::with_capacity(listed.len());
        for &pid in &listed {
            match pidfd_open(pid) {
                Ok(fd) => pinned.push((pid, fd)),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    // Kernel older than 5.3: no pidfds. Fall back to kill(2),
                    // accepting the (tiny) pid-reuse window.
                    return kill_without_pidfds(&listed);
                }
                Err(e) => return Err(e),
            }
        }
        let still: HashSet<i32> = parse_pids(&std::fs::read_to_string(procs)?)
            .into_iter()
            .collect();
        for (pid, fd) in &pinned {
            if still.contains(pid) {
                match pidfd_send_sigkill(fd) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(listed.len())
    }
}

fn kill_without_pidfds(pids: &[i32]) -> io::Result<usize> {
    for &pid in pids {
        if pid <= 0 {
            continue;
        }
        // SAFETY: kill(2) with a positive pid and a valid signal number touches
        // no memory of ours; pid > 0 was checked so it never means a group.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(pids.len())
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd
    // or -1; it reads or writes no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `raw` as a new fd that nothing else
    // owns, so transferring its ownership to an OwnedFd is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn pidfd_send_sigkill(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: the fd is a live pidfd we own; a null siginfo pointer is
    // allowed by pidfd_send_signal(2) and means "as kill(2) would".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Parses a `cgroup.procs` file: one pid per line. Lines that are not
/// numbers are skipped (the kernel writes none).
pub(crate) fn parse_pids(text: &str) -> Vec<i32> {
    text.lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .collect()
}

/// Opens the file `name` in the directory open at `dir`, with `flags`
/// (`O_CLOEXEC` added; `O_CREAT` files get mode 0644).
pub(crate) fn open_at(dir: BorrowedFd<'_>, name: &str, flags: libc::c_int) -> io::Result<File> {
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `dir` is a live descriptor and `name` a NUL-terminated string;
    // openat returns a new descriptor or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `fd` as a new descriptor nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Opens a cgroup directory: `O_PATH` when it is only a place to open its
/// files from, readable when it is for `CLONE_INTO_CGROUP` (the kernel
/// refuses path-only fds there).
pub(crate) fn open_dir(path: &Path, path_only: bool) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let extra = if path_only { libc::O_PATH } else { 0 };
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | extra)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

/// A fake cgroupfs made of plain files in a temporary directory, for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct PlainFs {
    /// Every pid `kill_listed` would have signalled, in order.
    pub killed: std::sync::Mutex<Vec<i32>>,
}

#[cfg(test)]
impl CgroupFs for PlainFs {
    fn write_file(&self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)
    }

    fn write_file_at(&self, dir: BorrowedFd<'_>, name: &str, value: &str) -> io::Result<()> {
        let mut file = open_at(dir, name, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)?;
        file.write_all(value.as_bytes())
    }

    fn remove_cgroup_dir(&self, path: &Path) -> io::Result<()> {
        // Like cgroupfs, refuse while processes or a child cgroup remain.
        if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
            if !parse_pids(&procs).is_empty() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        for entry in std::fs::read_dir(path)? {
            if entry?.file_type()?.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        std::fs::remove_dir_all(path)
    }

    fn kill_listed(&self, procs: &Path) -> io::Result<usize> {
        let pids = match std::fs::read_to_string(procs) {
            Ok(text) => parse_pids(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        if !pids.is_empty() {
            self.killed
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend(&pids);
            // The "kernel" reaps them at once.
            std::fs::write(procs, "")?;
        }
        Ok(pids.len())
    }
}
