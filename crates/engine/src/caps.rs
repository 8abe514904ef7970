//! Capabilities and no_new_privs: the child gives up every privilege before
//! it executes the sandboxed program.
//!
//! The parent reads the highest capability number the kernel knows
//! ([`last_cap`]); the child then, with raw syscalls only:
//!
//! 1. sets no_new_privs ([`set_no_new_privs_in_child`]), so that execve can
//!    never grant privileges again (setuid bits and file capabilities are
//!    ignored), and so that Landlock and seccomp may be applied unprivileged;
//! 2. drops every capability ([`drop_all_in_child`]): bounding set, ambient
//!    set, then effective, permitted and inheritable.
//!
//! With the bounding and inheritable sets empty, even a process running as
//! uid 0 gains nothing across execve: its new permitted set is computed from
//! them (capabilities(7), "Transformation of capabilities during execve()").

use crate::child_error::{last_errno, ChildFailure};

/// Where the kernel publishes its highest capability number.
pub const CAP_LAST_CAP_PATH: &str = "/proc/sys/kernel/cap_last_cap";

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapUserHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes an array of two.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapUserData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Why the parent could not learn the kernel's capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("could not read {path} (is /proc mounted?)")]
    ReadLastCap {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not a capability number")]
    ParseLastCap { path: &'static str, text: String },
}

/// The highest capability number the running kernel knows. Parent side.
/// Asked of the kernel itself first: `PR_CAPBSET_READ` accepts exactly the
/// capability numbers it knows, so a binary search over 0..64 finds the
/// last in six calls, where the first read of the sysctl file costs a new
/// process ~15 µs. The file is the fallback.
pub fn last_cap() -> Result<u32, CapsError> {
    if let Some(cap) = last_cap_by_prctl() {
        return Ok(cap);
    }
    last_cap_from_file()
}

/// Whether the kernel knows capability `cap`.
fn kernel_knows(cap: u32) -> bool {
    // SAFETY: prctl with integer arguments; it only reads this thread's
    // bounding set.
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) >= 0 }
}

fn last_cap_by_prctl() -> Option<u32> {
    if !kernel_knows(0) {
        return None;
    }
    // Invariant: `known` is known, `unknown` is not (64 never is).
    let (mut known, mut unknown) = (0u32, 64u32);
    while unknown - known > 1 {
        let middle = (known + unknown) / 2;
        if kernel_knows(middle) {
            known = middle;
        } else {
            unknown = middle;
        }
    }
    Some(known)
}

fn last_cap_from_file() -> Result<u32, CapsError> {
    let text = crate::sys::read_small_file(CAP_LAST_CAP_PATH).map_err(|source| {
        CapsError::ReadLastCap {
            path: CAP_LAST_CAP_PATH,
            source,
        }
    })?;
    parse_last_cap(&text)
}

fn parse_last_cap(text: &str) -> Result<u32, CapsError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|&cap| cap < 64)
        .ok_or_else(|| CapsError::ParseLastCap {
            path: CAP_LAST_CAP_PATH,
            text: text.to_owned(),
        })
}

/// Sets no_new_privs on the calling process. Child side, async-signal-safe.
///
/// Needs no privilege, is inherited by every descendant and cannot be unset.
/// It must come before Landlock's `landlock_restrict_self` and before seccomp,
/// which both require it of an unprivileged caller.
pub fn set_no_new_privs_in_child() -> Result<(), ChildFailure> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(last_errno("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    Ok(())
}

/// Drops every capability of the calling process, for good. Child side,
/// async-signal-safe.
///
/// `last_cap` comes from [`last_cap`], read by the parent. A number the
/// kernel does not know fails with EINVAL rather than being skipped, so a
/// wrong value cannot leave capabilities behind unnoticed.
pub fn drop_all_in_child(last_cap: u32) -> Result<(), ChildFailure> {
    // 1. The bounding set first: dropping from it needs CAP_SETPCAP in the
    //    effective set, which step 3 removes.
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc != 0 {
            return Err(last_errno("prctl(PR_CAPBSET_DROP)"));
        }
    }

    // 2. The ambient set: needs no privilege. Step 3 would empty it anyway
    //    (ambient capabilities must stay permitted and inheritable), but
    //    clearing it explicitly does not depend on that rule.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(last_errno("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }

    // 3. Effective, permitted and inheritable, all at once and last: lowering
    //    them needs no privilege, and afterwards nothing can raise them again.
    let header = CapUserHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapUserData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: `header` and `data` are live and laid out as the version 3
    // capset ABI expects (a header and two data structs); the kernel only
    // reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &header as *const CapUserHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(last_errno("capset"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{counting_allocations, errno_of, in_forked_child};

    #[test]
    fn last_cap_is_the_kernels() -> Result<(), CapsError> {
        let cap = last_cap()?;
        // CAP_AUDIT_READ (37) exists since Linux 3.16.
        assert!((37..64).contains(&cap), "cap_last_cap {cap}");
        // Asked of the kernel, it is what the kernel publishes.
        assert_eq!(last_cap_by_prctl(), Some(last_cap_from_file()?));
        assert_eq!(cap, last_cap_from_file()?);
        Ok(())
    }

    #[test]
    fn last_cap_parsing() {
        assert_eq!(parse_last_cap("40\n").ok(), Some(40));
        assert!(matches!(
            parse_last_cap("forty"),
            Err(CapsError::ParseLastCap { .. })
        ));
        assert!(parse_last_cap("64").is_err());
    }

    /// The five capability sets of /proc/self/status, read without allocating.
    /// Each entry: 0 if the set is empty, 1 if not, -1 if it was not found.
    fn status_cap_sets() -> [i32; 5] {
        const NAMES: [&[u8]; 5] = [b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:", b"CapAmb:"];
        let mut out = [-1i32; 5];
        let mut buf = [0u8; 8192];
        // SAFETY: a NUL-terminated literal path.
        let fd = unsafe {
            libc::open(
                c"/proc/self/status".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return out;
        }
        let mut len = 0usize;
        while len < buf.len() {
            // SAFETY: reading into the unfilled tail of `buf`.
            let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
        for line in buf[..len].split(|&b| b == b'\n') {
            for (i, name) in NAMES.iter().enumerate() {
                if let Some(rest) = line.strip_prefix(*name) {
                    let all_zero = rest
                        .iter()
                        .filter(|b| !b.is_ascii_whitespace())
                        .all(|&b| b == b'0');
                    out[i] = if all_zero { 0 } else { 1 };
                }
            }
        }
        out
    }

    fn no_new_privs() -> i32 {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }
    }

    /// Child side: optionally enters a new user namespace (which grants a full
    /// capability set inside it), then drops everything and reports.
    fn drop_and_report(last_cap: u32, new_userns: bool) -> [i32; 11] {
        let mut out = [0i32; 11];
        if new_userns {
            // SAFETY: unshare with a flag; the forked child is single-threaded.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            out[0] = errno_of(rc.into());
        }
        let before = status_cap_sets();
        out[1] = before[2]; // CapEff before dropping
        let ((nnp, dropped), allocations) =
            counting_allocations(|| (set_no_new_privs_in_child(), drop_all_in_child(last_cap)));
        out[2] = nnp.err().map_or(0, |failure| failure.errno);
        out[3] = dropped.err().map_or(0, |failure| failure.errno);
        out[4] = no_new_privs();
        out[5..10].copy_from_slice(&status_cap_sets());
        out[10] = allocations;
        out
    }

    fn check(report: [i32; 11]) {
        let [unshare, eff_before, nnp_rc, drop_rc, nnp, inh, prm, eff, bnd, amb, allocations] =
            report;
        assert_eq!(allocations, 0, "the child-side functions must not allocate");
        assert_eq!(unshare, 0, "unshare(CLONE_NEWUSER) errno");
        assert_eq!(eff_before, 1, "the child had capabilities to drop");
        assert_eq!(nnp_rc, 0, "set_no_new_privs_in_child errno");
        assert_eq!(drop_rc, 0, "drop_all_in_child errno");
        assert_eq!(nnp, 1, "no_new_privs is set");
        assert_eq!(
            [inh, prm, eff, bnd, amb],
            [0; 5],
            "CapInh, CapPrm, CapEff, CapBnd, CapAmb must all be 0"
        );
    }

    #[test]
    fn drop_all_empties_every_set_in_a_new_user_namespace() -> Result<(), CapsError> {
        let last = last_cap()?;
        check(in_forked_child(|| drop_and_report(last, true)));
        Ok(())
    }

    #[test]
    fn drop_all_empties_every_set_of_root() -> Result<(), CapsError> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root; skipping");
            return Ok(());
        }
        let last = last_cap()?;
        check(in_forked_child(|| drop_and_report(last, false)));
        Ok(())
    }

    #[test]
    fn unknown_capability_number_fails_loudly() {
        let [errno] = in_forked_child(|| match drop_all_in_child(63) {
            Ok(()) => [0],
            Err(failure) => [failure.errno],
        });
        assert_eq!(errno, libc::EINVAL);
    }
}
