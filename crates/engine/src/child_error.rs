//! The one error type of code that runs in the child between clone and execve.
//!
//! That code may only make raw syscalls on data the parent prepared: no heap
//! allocation, no panics, no locks. So its error is two plain words, the step
//! that failed and the errno the kernel returned, which the child can copy
//! to the parent through a pipe as they are. Formatting it ([`Display`]) is
//! for the parent only.
//!
//! [`Display`]: std::fmt::Display

/// A setup step that failed in the child, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sandbox setup step `{step}` failed in the child: {}", std::io::Error::from_raw_os_error(*errno))]
pub struct ChildFailure {
    /// What the child was doing, e.g. `"landlock_restrict_self"`.
    pub step: &'static str,
    /// The errno the kernel returned.
    pub errno: i32,
}

impl ChildFailure {
    /// A failure of `step` with a known `errno`.
    pub const fn new(step: &'static str, errno: i32) -> Self {
        ChildFailure { step, errno }
    }
}

/// A failure of `step` with the calling thread's current errno.
///
/// Async-signal-safe: `last_os_error` reads errno into an integer and does
/// not allocate.
pub fn last_errno(step: &'static str) -> ChildFailure {
    // An OS error always carries a code; EIO stands in should that ever change.
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    ChildFailure { step, errno }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_errno_reads_the_current_errno() {
        // SAFETY: close of an fd number that is surely not open only sets errno.
        let rc = unsafe { libc::close(-1) };
        assert_eq!(rc, -1);
        let failure = last_errno("close");
        assert_eq!(failure, ChildFailure::new("close", libc::EBADF));
    }

    #[test]
    fn display_names_the_step_and_the_error() {
        let text = ChildFailure::new("landlock_restrict_self", libc::EPERM).to_string();
        assert!(text.contains("landlock_restrict_self"), "{text}");
        assert!(text.contains("not permitted"), "{text}");
    }
}
