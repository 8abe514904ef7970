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
    /// Where the output is copied as it is read, besides being kept (see
    /// `Engine::echo_output_to`).
    pub echo: Option<Echo<'a>>,
}

/// The descriptors a stage's stdout and stderr are copied to as they come.
/// Non-blocking ones never hold the loop up: what a slow reader has not
/// taken waits (it is kept anyway) and goes when the descriptor is
/// writable, the rest once the stage has ended.
#[derive(Clone, Copy)]
pub struct Echo<'a> {
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// One output stream, kept up to the limit.
#[derive(Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
    open: bool,
    /// How many of `bytes` went to the echo descriptor so far.
    echoed: usize,
    /// Whether the echo descriptor still takes bytes (a reader that went
    /// away ends the copy, not the run).
    echo_open: bool,
}

impl Captured {
    /// Bytes read but not echoed yet.
    fn unechoed(&self) -> bool {
        self.echo_open && self.echoed < self.bytes.len()
    }

    /// Copies what has not been echoed to `fd`, as much as it takes now
    /// (all of it when `fd` is a blocking descriptor other than a socket).
    fn echo_to(&mut self, fd: BorrowedFd<'_>) {
        while self.unechoed() {
            match crate::sys::write_without_waiting(fd, &self.bytes[self.echoed..]) {
                Ok(n) if n > 0 => self.echoed += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                _ => self.echo_open = false,
            }
        }
    }
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
    let echoing = watch.echo.is_some();
    let mut out = Outcome {
        exit: None,
        observed: Observed::default(),
        stdout: Captured {
            open: true,
            echo_open: echoing,
            ..Captured::default()
        },
        stderr: Captured {
            open: true,
            echo_open: echoing,
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

        let mut fds = Vec::with_capacity(7);
        let mut roles = Vec::with_capacity(7);
        let notify_fd = notifier.map_or(-1, |n| n.as_raw_fd());
        let stop_fd = watch.stop.map_or(-1, |f| f.as_raw_fd());
        let (echo_out, echo_err) = watch
            .echo
            .map_or((-1, -1), |e| (e.stdout.as_raw_fd(), e.stderr.as_raw_fd()));
        for (open, fd, role, events) in [
            (sync_open, watch.sync.as_raw_fd(), 0, libc::POLLIN),
            (out.stdout.open, watch.stdout.as_raw_fd(), 1, libc::POLLIN),
            (out.stderr.open, watch.stderr.as_raw_fd(), 2, libc::POLLIN),
            (notify_open, notify_fd, 3, libc::POLLIN),
            (stop_open, stop_fd, 4, libc::POLLIN),
            (out.stdout.unechoed(), echo_out, 5, libc::POLLOUT),
            (out.stderr.unechoed(), echo_err, 6, libc::POLLOUT),
        ] {
            if open && fd >= 0 {
                fds.push(libc::pollfd {
                    fd,
                    events,
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
                    let hit = read_into(fd, cap, watch.output_limit);
                    if let Some(echo) = watch.echo {
                        cap.echo_to(if *role == 1 { echo.stdout } else { echo.stderr });
                    }
                    if hit {
                        kill(&mut out.observed.output_exceeded, &mut killed);
                        // Stop reading: what came before the cut is kept.
                        cap.open = false;
                    }
                }
                5 | 6 => {
                    if let Some(echo) = watch.echo {
                        if *role == 5 {
                            out.stdout.echo_to(echo.stdout);
                        } else {
                            out.stderr.echo_to(echo.stderr);
                        }
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
    if let Some(echo) = watch.echo {
        // The stage is over: what a slow reader has not taken yet goes
        // now, waiting for it as long as it takes.
        flush_echo(&mut out.stdout, echo.stdout);
        flush_echo(&mut out.stderr, echo.stderr);
    }
    out
}

/// Echoes the rest of `cap` to `fd`, waiting while a non-blocking `fd` is
/// full.
fn flush_echo(cap: &mut Captured, fd: BorrowedFd<'_>) {
    while cap.unechoed() {
        cap.echo_to(fd);
        if cap.unechoed() {
            let mut pfd = [libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            }];
            if crate::sys::poll(&mut pfd, -1).is_err() {
                return;
            }
        }
    }
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
    fn echo_takes_what_a_full_reader_takes_and_the_rest_at_the_end() {
        let (rd, wr) = crate::sys::pipe().expect("pipe");
        crate::sys::set_nonblocking(wr.as_fd()).expect("non-blocking");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut cap = Captured {
            bytes: bytes.clone(),
            echo_open: true,
            ..Captured::default()
        };
        // A pipe holds 64 KiB: the copy takes that much and does not wait.
        cap.echo_to(wr.as_fd());
        assert!(cap.unechoed());
        assert!(cap.echoed > 0 && cap.echoed < bytes.len(), "{}", cap.echoed);
        // Once the stage is over, the rest goes as the reader drains.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(rd), &mut got).expect("read");
            got
        });
        flush_echo(&mut cap, wr.as_fd());
        drop(wr);
        assert!(!cap.unechoed());
        assert_eq!(reader.join().expect("reader"), bytes);
    }

    #[test]
    fn a_blocking_socket_is_never_waited_on_while_the_stage_runs() {
        // formicary's stdout may be a socket (a service's journal): it is
        // duplicated, blocking, not reopened. The copy must still take only
        // what the socket takes now, or a reader that stalls would hold the
        // supervisor (and the limits) with it.
        let (reader, writer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let bytes: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut cap = Captured {
            bytes: bytes.clone(),
            echo_open: true,
            ..Captured::default()
        };
        // Nothing reads yet: a copy that waited would never return, so it
        // runs on a thread the test gives up on after a minute.
        let (done, copied) = std::sync::mpsc::channel();
        let copier = std::thread::spawn(move || {
            cap.echo_to(writer.as_fd());
            let _ = done.send(());
            (cap, writer)
        });
        copied
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the copy waited for a reader that never reads");
        let (mut cap, writer) = copier.join().expect("copier");
        assert!(cap.echo_open);
        assert!(
            cap.echoed < bytes.len(),
            "{} of {}",
            cap.echoed,
            bytes.len()
        );
        // After the stage, the rest goes as the reader drains.
        let drain = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut { reader }, &mut got).expect("read");
            got
        });
        flush_echo(&mut cap, writer.as_fd());
        drop(writer);
        assert_eq!(drain.join().expect("reader"), bytes);
    }

    #[test]
    fn a_reader_that_goes_away_ends_the_echo_not_the_capture() {
        let (rd, wr) = crate::sys::pipe().expect("pipe");
        drop(rd);
        let mut cap = Captured {
            bytes: b"kept".to_vec(),
            echo_open: true,
            ..Captured::default()
        };
        // EPIPE (Rust ignores SIGPIPE): the copy stops, the bytes stay.
        flush_echo(&mut cap, wr.as_fd());
        assert!(!cap.echo_open);
        assert_eq!(cap.bytes, b"kept");
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
