//! The supervisor's loop while the program runs: it collects stdout and
//! stderr within the output limit, answers seccomp notifications (and
//! counts them), watches the wall clock and the cgroup's CPU time, and
//! kills the whole sandbox (by killing its init, which takes the pid
//! namespace with it) when a limit is reached.
//!
//! It sleeps in poll(2) until something happens or the next deadline: the
//! wall deadline, or the earliest moment the CPU limit could be reached
//! with every CPU busy (at most 100 ms ahead), so short runs wake only for
//! their own events.

use crate::cgroups::Cgroup;
use crate::child::Message;
use crate::result::{Exit, Observed};
use crate::seccomp::{Notifier, Policy};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// What the supervisor watches.
pub struct Watch<'a> {
    pub sync: BorrowedFd<'a>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub init_pidfd: BorrowedFd<'a>,
    pub cgroup: Option<&'a dyn Cgroup>,
    pub policy: &'a Policy,
    pub wall_limit: Duration,
    pub cpu_limit: Duration,
    pub output_limit: u64,
    /// CPU time the cgroup had used before the program started (setup).
    pub cpu_baseline_ns: u64,
    /// The sandbox's init, as the host sees it: once the program is
    /// forked, init is made the OOM killer's last choice (memory that
    /// belongs to no process, like socket buffers, would otherwise make
    /// small init its first victim and lose the program's exit status).
    pub init_pid: libc::pid_t,
    /// Readable (a signalfd, an eventfd, a pipe): the run is to end at
    /// once, init killed (see `Engine::stop_runs_on`).
    pub stop: Option<BorrowedFd<'a>>,
}

/// One output stream, kept up to the limit.
#[derive(Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
    open: bool,
}

/// What happened while the program ran.
pub struct Outcome {
    pub exit: Option<Exit>,
    pub observed: Observed,
    pub stdout: Captured,
    pub stderr: Captured,
    pub wall: Duration,
    pub denied: BTreeMap<String, u64>,
    /// CPU time (µs) and max RSS (KiB) that init measured by reaping.
    pub reaped_cpu_us: u64,
    pub reaped_max_rss_kb: u64,
    /// errno of a failed execve of the program.
    pub exec_errno: Option<i32>,
    /// A setup step of init that failed after the program was released.
    pub failure: Option<(String, i32)>,
    /// The program made more than MAX_ANSWERED_DENIALS denied calls; the
    /// rest were left unanswered (blocked).
    pub denials_throttled: bool,
}

/// Most seccomp notifications answered in one run, all stages together
/// (see `supervise`).
pub const MAX_ANSWERED_DENIALS: u64 = 100_000;

const CPU_CHECK_MAX: Duration = Duration::from_millis(100);
const CPU_CHECK_MIN: Duration = Duration::from_millis(5);

fn read_into(fd: BorrowedFd<'_>, cap: &mut Captured, limit: u64) -> bool {
    // Straight into the captured bytes, up to one byte past the limit (the
    // byte that ends the run), at most 64 KiB per read. No buffer on the
    // stack: a 64 KiB one cost 16 page faults at every run's start.
    const CHUNK: u64 = 65536;
    loop {
        let room = limit.saturating_sub(cap.bytes.len() as u64);
        let want = (room + 1).min(CHUNK) as usize;
        let before = cap.bytes.len();
        match crate::sys::read_append(fd, &mut cap.bytes, want) {
            Ok(0) => {
                cap.open = false;
                return false;
            }
            Ok(n) => {
                if n as u64 > room {
                    cap.bytes.truncate(before + room as usize);
                    cap.truncated = true;
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                cap.open = false;
                return false;
            }
        }
    }
}

/// Sets init's oom_score_adj to -1000. Only root may; rootless, the
/// classification falls back on the cgroup's OOM counter instead.
fn protect_from_oom(init_pid: libc::pid_t) {
    let _ = std::fs::write(format!("/proc/{init_pid}/oom_score_adj"), "-1000");
}

/// Runs the loop from a stage's release until its program has ended and
/// its output is complete (init reports the end after killing whatever the
/// program left), or until init is gone.
pub fn supervise(
    watch: Watch<'_>,
    notifier: Option<&Notifier>,
    answered: &mut u64,
    started: Instant,
) -> Outcome {
    let _ = crate::sys::set_nonblocking(watch.stdout.as_fd());
    let _ = crate::sys::set_nonblocking(watch.stderr.as_fd());
    let mut out = Outcome {
        exit: None,
        observed: Observed::default(),
        stdout: Captured {
            open: true,
            ..Captured::default()
        },
        stderr: Captured {
            open: true,
            ..Captured::default()
        },
        wall: Duration::ZERO,
        denied: BTreeMap::new(),
        reaped_cpu_us: 0,
        reaped_max_rss_kb: 0,
        exec_errno: None,
        failure: None,
        denials_throttled: false,
    };
    let deadline = started + watch.wall_limit;
    let cpus = crate::sys::online_cpus() as u32;
    let mut sync_open = true;
    let mut notify_open = notifier.is_some() && *answered < MAX_ANSWERED_DENIALS;
    out.denials_throttled = notifier.is_some() && !notify_open;
    let mut killed = false;
    let mut stop_open = watch.stop.is_some();
    let mut stop_seen = false;
    let mut next_cpu_check = started;
    let mut ended_at: Option<Instant> = None;

    let kill = |observed_flag: &mut bool, killed: &mut bool| {
        *observed_flag = true;
        if !*killed {
            let _ = crate::sys::pidfd_kill(watch.init_pidfd, libc::SIGKILL);
            *killed = true;
        }
    };

    while (sync_open && out.exit.is_none()) || out.stdout.open || out.stderr.open {
        let now = Instant::now();
        // Limits, unless the run is already over.
        if !killed && ended_at.is_none() {
            if now >= deadline {
                kill(&mut out.observed.wall_time_exceeded, &mut killed);
            } else if now >= next_cpu_check {
                if let Some(cg) = watch.cgroup {
                    if let Ok(total) = cg.cpu_time_ns() {
                        let used =
                            Duration::from_nanos(total.saturating_sub(watch.cpu_baseline_ns));
                        if used >= watch.cpu_limit {
                            kill(&mut out.observed.cpu_time_exceeded, &mut killed);
                        } else {
                            let earliest = (watch.cpu_limit - used) / cpus.max(1);
                            next_cpu_check = now + earliest.clamp(CPU_CHECK_MIN, CPU_CHECK_MAX);
                        }
                    }
                } else {
                    next_cpu_check = deadline;
                }
            }
        }
        // After init ends, the pipes close as soon as the kernel has
        // killed the rest of the namespace; do not wait for them forever.
        if let Some(end) = ended_at {
            if now >= end + Duration::from_secs(2) {
                break;
            }
        }
        let wake = if killed || ended_at.is_some() {
            now + Duration::from_millis(100)
        } else {
            deadline.min(next_cpu_check.max(now))
        };
        let timeout_ms = wake
            .saturating_duration_since(now)
            .as_millis()
            .min(i32::MAX as u128) as i32;

        let mut fds = Vec::with_capacity(5);
        let mut roles = Vec::with_capacity(5);
        let notify_fd = notifier.map_or(-1, |n| n.as_raw_fd());
        let stop_fd = watch.stop.map_or(-1, |f| f.as_raw_fd());
        for (open, fd, role) in [
            (sync_open, watch.sync.as_raw_fd(), 0),
            (out.stdout.open, watch.stdout.as_raw_fd(), 1),
            (out.stderr.open, watch.stderr.as_raw_fd(), 2),
            (notify_open, notify_fd, 3),
            (stop_open, stop_fd, 4),
        ] {
            if open && fd >= 0 {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                roles.push(role);
            }
        }
        if crate::sys::poll(&mut fds, timeout_ms.max(0) + 1).is_err() {
            break;
        }
        for (pfd, role) in fds.iter().zip(roles.iter()) {
            if pfd.revents == 0 {
                continue;
            }
            match role {
                0 => {
                    let mut buf = [0u8; Message::SIZE + 8];
                    match crate::sys::recv_with_fd(watch.sync, &mut buf) {
                        Ok((0, _)) | Err(_) => {
                            sync_open = false;
                            ended_at.get_or_insert_with(Instant::now);
                        }
                        Ok((n, _)) => {
                            if let Some(m) = Message::from_bytes(&buf[..n]) {
                                match m.kind {
                                    Message::EXITED => {
                                        let status = m.status;
                                        out.exit = Some(if libc::WIFSIGNALED(status) {
                                            Exit::Signal(libc::WTERMSIG(status))
                                        } else {
                                            Exit::Code(libc::WEXITSTATUS(status))
                                        });
                                        out.reaped_cpu_us = m.cpu_us;
                                        out.reaped_max_rss_kb = m.max_rss_kb;
                                        let xfsz = 1u64 << libc::SIGXFSZ;
                                        out.observed.file_size_exceeded |=
                                            m.signals_seen & xfsz != 0;
                                        ended_at.get_or_insert_with(Instant::now);
                                    }
                                    Message::STARTED => protect_from_oom(watch.init_pid),
                                    Message::EXEC_FAILED => out.exec_errno = Some(m.errno),
                                    Message::FAILED => out.failure = Some((m.step_name(), m.errno)),
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                1 | 2 => {
                    let cap = if *role == 1 {
                        &mut out.stdout
                    } else {
                        &mut out.stderr
                    };
                    let fd = if *role == 1 {
                        watch.stdout.as_fd()
                    } else {
                        watch.stderr.as_fd()
                    };
                    if read_into(fd, cap, watch.output_limit) {
                        kill(&mut out.observed.output_exceeded, &mut killed);
                        // Stop reading: what came before the cut is kept.
                        cap.open = false;
                    }
                }
                4 => {
                    // Not read: it stays readable for the caller to see
                    // why; polled no more.
                    stop_open = false;
                    kill(&mut stop_seen, &mut killed);
                }
                _ => {
                    if pfd.revents & libc::POLLIN != 0 {
                        if let Some(n) = notifier {
                            let _ = n.handle_one(watch.policy, &mut out.denied);
                            *answered += 1;
                            if *answered >= MAX_ANSWERED_DENIALS {
                                // Each answer costs the supervisor's CPU,
                                // outside the sandbox's cgroup. Past this
                                // many, further denied calls stay blocked
                                // until the run ends.
                                notify_open = false;
                                out.denials_throttled = true;
                            }
                        }
                    } else {
                        notify_open = false;
                    }
                }
            }
        }
    }
    out.wall = ended_at
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(started);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(input: &[u8], limit: u64) -> (Captured, bool) {
        let (rd, wr) = crate::sys::pipe().expect("pipe");
        crate::sys::write_all(wr.as_fd(), input).expect("write");
        drop(wr);
        let mut cap = Captured {
            open: true,
            ..Captured::default()
        };
        let hit = read_into(rd.as_fd(), &mut cap, limit);
        (cap, hit)
    }

    #[test]
    fn output_within_the_limit_is_kept_whole_and_eof_is_seen() {
        let (cap, hit) = captured(b"0123456789", 10);
        assert!(!hit);
        assert!(!cap.truncated);
        assert!(!cap.open, "end of file");
        assert_eq!(cap.bytes, b"0123456789");
    }

    #[test]
    fn the_first_byte_past_the_limit_cuts_the_output_at_the_limit() {
        let (cap, hit) = captured(b"0123456789", 4);
        assert!(hit);
        assert!(cap.truncated);
        assert_eq!(cap.bytes, b"0123");
        let (cap, hit) = captured(b"x", 0);
        assert!(hit && cap.bytes.is_empty());
    }

    #[test]
    fn output_larger_than_one_read_is_read_in_chunks() {
        let input: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let (cap, hit) = captured(&input, 1 << 20);
        assert!(!hit);
        assert_eq!(cap.bytes, input);
        let (cap, hit) = captured(&input, 50_000);
        assert!(hit);
        assert_eq!(cap.bytes, input[..50_000]);
    }
}
