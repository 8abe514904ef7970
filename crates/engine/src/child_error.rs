//! The one error type of code that runs between clone and execve.
//!
//! That code may not allocate, so a failure is a static step name and an
//! errno, copied into a fixed-size message for the supervisor.

/// A failed step in the sandbox's init: which step, and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildFailure {
    pub step: &'static str,
    pub errno: i32,
}

/// The failure of `step` with the calling thread's current errno. Reading
/// errno does not allocate.
pub fn last_errno(step: &'static str) -> ChildFailure {
    ChildFailure {
        step,
        errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    }
}

/// Turns a raw syscall return value into a result, naming the step.
pub fn check(ret: libc::c_long, step: &'static str) -> Result<libc::c_long, ChildFailure> {
    if ret < 0 {
        Err(last_errno(step))
    } else {
        Ok(ret)
    }
}

/// Same as [`check`] for the many libc calls that return `c_int`.
pub fn check_int(ret: libc::c_int, step: &'static str) -> Result<libc::c_int, ChildFailure> {
    if ret < 0 {
        Err(last_errno(step))
    } else {
        Ok(ret)
    }
}
