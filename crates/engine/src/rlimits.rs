//! Per-process resource limits (setrlimit) of the sandboxed program.
//!
//! Most limits are the cgroup's job (memory, pids, total CPU). Rlimits cover
//! what a cgroup cannot, per process:
//!
//! * `RLIMIT_NOFILE`: open file descriptors;
//! * `RLIMIT_FSIZE`: the largest file a process may write (SIGXFSZ beyond);
//! * `RLIMIT_CPU`: a backstop in case the supervisor's CPU accounting fails
//!   to stop the run (SIGXCPU at the soft limit, so the result can name
//!   the limit; SIGKILL a second later at the hard limit);
//! * `RLIMIT_CORE` = 0: no core dumps, which would write the program's
//!   memory to disk;
//! * `RLIMIT_RTPRIO` = 0 and `RLIMIT_NICE` = 0: no real-time scheduling and
//!   no raised priority, whatever the environment formicary runs in allows.
//!
//! Left alone on purpose: `RLIMIT_STACK` (the default suits compilers and
//! interpreters; memory is bounded by the cgroup) and `RLIMIT_NPROC` (it counts
//! every process of the uid across the host; the cgroup's pids.max is the
//! right tool).
//!
//! Every other limit is set with soft = hard, so the program cannot raise it.

use crate::child_error::ChildFailure;
use crate::spec::Limits;

/// One limit to set in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitEntry {
    /// `RLIMIT_*` number.
    pub resource: libc::c_int,
    /// The step name reported if setting it fails.
    pub step: &'static str,
    /// Soft value.
    pub value: u64,
    /// Hard value (equal to `value` but for RLIMIT_CPU).
    pub hard: u64,
}

/// The rlimits the child sets, prepared by the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlimitPlan {
    entries: [RlimitEntry; 6],
}

/// Why rlimits could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    #[error("getrlimit({name}) failed in the parent")]
    Get {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the calling process's hard limit of `resource`.
fn hard_limit(resource: libc::c_int, name: &'static str) -> Result<u64, RlimitError> {
    let mut current = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: pid 0 is the caller; a NULL new limit only reads; `current` is
    // a valid struct for the kernel to fill.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::pid_t,
            resource,
            std::ptr::null::<libc::rlimit64>(),
            &mut current as *mut libc::rlimit64,
        )
    };
    if rc != 0 {
        return Err(RlimitError::Get {
            name,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(current.rlim_max)
}

impl RlimitPlan {
    /// Prepares the limits in the parent.
    ///
    /// `open_files` is RLIMIT_NOFILE, `file_size_bytes` RLIMIT_FSIZE and
    /// `cpu_seconds_backstop` RLIMIT_CPU (seconds); core dumps are off. A
    /// value above the parent's own hard limit is lowered to it, since the
    /// child inherits that hard limit and could not raise it without
    /// CAP_SYS_RESOURCE: lowering only ever makes the sandbox stricter.
    pub fn prepare(
        open_files: u64,
        file_size_bytes: u64,
        cpu_seconds_backstop: u64,
    ) -> Result<RlimitPlan, RlimitError> {
        let wanted = [
            (libc::RLIMIT_NOFILE, "setrlimit(RLIMIT_NOFILE)", open_files),
            (
                libc::RLIMIT_FSIZE,
                "setrlimit(RLIMIT_FSIZE)",
                file_size_bytes,
            ),
            (
                libc::RLIMIT_CPU,
                "setrlimit(RLIMIT_CPU)",
                cpu_seconds_backstop,
            ),
            (libc::RLIMIT_CORE, "setrlimit(RLIMIT_CORE)", 0),
            (libc::RLIMIT_RTPRIO, "setrlimit(RLIMIT_RTPRIO)", 0),
            (libc::RLIMIT_NICE, "setrlimit(RLIMIT_NICE)", 0),
        ];
        let mut entries = [RlimitEntry {
            resource: 0,
            step: "",
            value: 0,
            hard: 0,
        }; 6];
        for (entry, (resource, step, value)) in entries.iter_mut().zip(wanted) {
            // glibc types the resource as an unsigned enum; the numbers are small.
            let resource = resource as libc::c_int;
            let parent_hard = hard_limit(resource, step)?;
            let hard = if resource == libc::RLIMIT_CPU as libc::c_int {
                value.saturating_add(1)
            } else {
                value
            };
            *entry = RlimitEntry {
                resource,
                step,
                value: value.min(parent_hard),
                hard: hard.min(parent_hard),
            };
        }
        Ok(RlimitPlan { entries })
    }

    /// Prepares the limits of a run: its open-file and file-size limits, and
    /// a CPU backstop one second above its CPU time rounded up to seconds.
    pub fn from_limits(limits: &Limits) -> Result<RlimitPlan, RlimitError> {
        let cpu_seconds = limits.cpu_time_ms.div_ceil(1000).saturating_add(1);
        RlimitPlan::prepare(limits.open_files, limits.file_size_bytes, cpu_seconds)
    }

    /// The limits to be set.
    pub fn entries(&self) -> &[RlimitEntry] {
        &self.entries
    }

    /// Sets every limit on the calling process. Child side,
    /// async-signal-safe.
    pub fn apply_in_child(&self) -> Result<(), ChildFailure> {
        for entry in &self.entries {
            let limit = libc::rlimit64 {
                rlim_cur: entry.value,
                rlim_max: entry.hard,
            };
            // SAFETY: pid 0 is the caller; `limit` is a live rlimit64 the
            // kernel only reads; the old-limit pointer is NULL.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_prlimit64,
                    0 as libc::pid_t,
                    entry.resource,
                    &limit as *const libc::rlimit64,
                    std::ptr::null_mut::<libc::rlimit64>(),
                )
            };
            if rc != 0 {
                return Err(crate::child_error::last_errno(entry.step));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{counting_allocations, in_forked_child};

    #[test]
    fn prepare_lists_the_six_limits() -> Result<(), RlimitError> {
        let plan = RlimitPlan::prepare(64, 1 << 20, 5)?;
        let values: Vec<(libc::c_int, u64)> = plan
            .entries()
            .iter()
            .map(|e| (e.resource, e.value))
            .collect();
        assert_eq!(
            values,
            vec![
                (libc::RLIMIT_NOFILE as libc::c_int, 64),
                (libc::RLIMIT_FSIZE as libc::c_int, 1 << 20),
                (libc::RLIMIT_CPU as libc::c_int, 5),
                (libc::RLIMIT_CORE as libc::c_int, 0),
                (libc::RLIMIT_RTPRIO as libc::c_int, 0),
                (libc::RLIMIT_NICE as libc::c_int, 0),
            ]
        );
        Ok(())
    }

    #[test]
    fn prepare_lowers_values_above_the_hard_limit() -> Result<(), RlimitError> {
        let hard = hard_limit(libc::RLIMIT_NOFILE as libc::c_int, "NOFILE")?;
        let plan = RlimitPlan::prepare(u64::MAX, 1, 1)?;
        assert_eq!(plan.entries()[0].value, hard);
        Ok(())
    }

    #[test]
    fn from_limits_adds_a_second_to_the_cpu_time() -> Result<(), RlimitError> {
        let limits = Limits {
            cpu_time_ms: 2_500,
            ..Limits::default()
        };
        let plan = RlimitPlan::from_limits(&limits)?;
        assert_eq!(plan.entries()[2].value, 4);
        assert_eq!(plan.entries()[0].value, limits.open_files);
        Ok(())
    }

    #[test]
    fn limits_read_back_in_the_child() -> Result<(), RlimitError> {
        let plan = RlimitPlan::prepare(64, 1 << 20, 5)?;
        // Child: apply, then report soft and hard of each limit (low 31 bits
        // are plenty for these values) or -errno.
        let report: [i32; 14] = in_forked_child(|| {
            let mut out = [0i32; 14];
            let (applied, allocations) = counting_allocations(|| plan.apply_in_child());
            out[13] = allocations;
            if let Err(failure) = applied {
                out[0] = -failure.errno;
                return out;
            }
            for (i, entry) in plan.entries().iter().enumerate() {
                let mut got = libc::rlimit64 {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: reading the caller's limit into a valid struct.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_prlimit64,
                        0 as libc::pid_t,
                        entry.resource,
                        std::ptr::null::<libc::rlimit64>(),
                        &mut got as *mut libc::rlimit64,
                    )
                };
                if rc != 0 {
                    out[0] = -1;
                    return out;
                }
                out[1 + 2 * i] = got.rlim_cur.min(i32::MAX as u64) as i32;
                out[2 + 2 * i] = got.rlim_max.min(i32::MAX as u64) as i32;
            }
            out
        });
        assert_eq!(report[0], 0, "apply_in_child or prlimit64 failed");
        // RLIMIT_CPU: SIGXCPU at 5 s, SIGKILL at 6 s.
        assert_eq!(
            &report[1..13],
            &[64, 64, 1 << 20, 1 << 20, 5, 6, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(report[13], 0, "apply_in_child must not allocate");
        Ok(())
    }
}
