//! Passing a program's output through while it runs (`exec` and `run`
//! without `--json`): the engine copies what it reads to descriptors of
//! formicary's own stdout and stderr (`Engine::echo_output_to`).
//!
//! Those descriptors must not block the supervisor: a pipe or terminal is
//! opened afresh through `/proc/self/fd` with `O_NONBLOCK`, a new open file
//! description, so the flag does not reach the shell or anyone else sharing
//! formicary's own. A regular file is duplicated instead (opening it anew
//! would lose its offset and `O_APPEND`; writing to it does not wait on a
//! reader), and so is anything else. A socket (a service's journal) cannot
//! be reopened: it is duplicated, and the engine sends to it with
//! `MSG_DONTWAIT`, which waits no more than a non-blocking descriptor.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Writers for formicary's stdout and stderr, or `None` when either is not
/// open (then the output is printed after the run, as with `--json` off
/// before).
pub fn writers() -> Option<(OwnedFd, OwnedFd)> {
    Some((writer_for(1).ok()?, writer_for(2).ok()?))
}

fn writer_for(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`; an invalid fd is an error, not UB.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFIFO || kind == libc::S_IFCHR {
        let path = CString::new(format!("/proc/self/fd/{fd}")).map_err(io::Error::other)?;
        // SAFETY: a valid C string; the returned descriptor is ours.
        let reopened = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        if reopened >= 0 {
            // SAFETY: a fresh descriptor nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(reopened) });
        }
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a fresh descriptor or fails.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}
