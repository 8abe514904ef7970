//! What the engine reports after a run: status, exit, output, usage, what
//! limits were hit, what was denied, and what isolation was applied.
//!
//! [`classify`] turns the raw facts the supervisor gathered into a
//! [`Status`]; it is a pure function so its rules are unit-tested.

use crate::spec::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The program exited with code 0.
    Ok,
    /// The program exited with a non-zero code.
    RuntimeError,
    /// The program died of a signal that no limit explains.
    Signaled,
    /// The wall-clock limit was reached.
    Timeout,
    /// The CPU-time limit was reached.
    CpuTimeExceeded,
    /// The memory limit was reached and the kernel killed a process.
    MemoryExceeded,
    /// stdout or stderr went beyond the output limit.
    OutputExceeded,
    /// The sandbox could not be set up, or the program could not be started.
    SetupError,
    /// The compile stage failed, so the program did not run (set by the
    /// language layer; the engine itself never reports it).
    CompileError,
}

/// A limit that was reached during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    WallTime,
    CpuTime,
    Memory,
    Pids,
    Output,
    FileSize,
    Disk,
}

/// A collected output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedFile {
    /// Its path relative to /sandbox (and to the output directory).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What isolation was applied to the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationReport {
    /// The namespaces the program runs in.
    pub namespaces: Vec<String>,
    /// Whether the seccomp filter was installed, and how denials are seen.
    pub seccomp: Option<String>,
    /// The Landlock ABI used, or None where the kernel lacks Landlock.
    pub landlock_abi: Option<u32>,
    /// `v1` or `v2`, or None when no cgroup could be used.
    pub cgroup: Option<String>,
    /// The host uid the sandbox's uid 1000 maps to.
    pub host_uid: u32,
    /// The host gid the sandbox's gid 1000 maps to.
    pub host_gid: u32,
    /// Whether formicary ran as root (per-sandbox uids) or rootless.
    pub rootless: bool,
    /// Limits or layers that were requested but not enforced (only with
    /// `allow_degraded`).
    pub not_enforced: Vec<String>,
}

/// The result of one run, as printed by `formicary exec --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The program's stdout exactly as it wrote it, when that is not valid
    /// UTF-8 (`stdout` then has U+FFFD for each invalid sequence); `None`
    /// when `stdout` is exact. Not in the JSON result. See
    /// [`RunResult::stdout_bytes`].
    #[serde(skip)]
    pub stdout_raw: Option<Vec<u8>>,
    /// The same for stderr.
    #[serde(skip)]
    pub stderr_raw: Option<Vec<u8>>,
    pub wall_time_ms: u64,
    pub cpu_time_ms: u64,
    pub memory_peak_bytes: u64,
    pub limits_hit: Vec<LimitKind>,
    pub denied_syscalls: BTreeMap<String, u64>,
    pub files: Vec<CollectedFile>,
    pub limits: Limits,
    pub isolation: IsolationReport,
    pub error: Option<String>,
    /// Where the time went, step by step (microseconds since the start of
    /// the run at the end of each step); only when asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub profile: Option<Vec<(String, u64)>>,
    /// What the sandbox did on the network, when the run allowed any
    /// destination (absent with `--net none`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub network: Option<NetworkReport>,
}

/// The network side of a run that allowed destinations: the rules, and
/// every connection attempt through the proxy, allowed or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    /// The `--net allow` rules, as given.
    pub allow: Vec<String>,
    /// Where the proxy answered inside the sandbox.
    pub proxy: String,
    /// Each connection attempt: destination name and address, port,
    /// allowed or not and why, bytes each way, the limit that closed it.
    pub attempts: Vec<formicary_netproxy::Attempt>,
    /// Connections the sandbox opened to the proxy.
    pub connections: u64,
    /// Bytes sent and received through the proxy, all connections together.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The network limits reached (`bytes_up`, `bytes_down`, `connections`,
    /// `concurrent_connections`, ...), in the order they were reached.
    pub limits_exceeded: Vec<String>,
}

impl RunResult {
    /// A result for a run that never started.
    pub fn setup_error(message: String, limits: Limits) -> Self {
        RunResult {
            status: Status::SetupError,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_raw: None,
            stderr_raw: None,
            wall_time_ms: 0,
            cpu_time_ms: 0,
            memory_peak_bytes: 0,
            limits_hit: Vec::new(),
            denied_syscalls: BTreeMap::new(),
            files: Vec::new(),
            limits,
            isolation: IsolationReport::default(),
            error: Some(message),
            profile: None,
            network: None,
        }
    }

    /// The program's stdout byte for byte, as it wrote it.
    pub fn stdout_bytes(&self) -> &[u8] {
        self.stdout_raw.as_deref().unwrap_or(self.stdout.as_bytes())
    }

    /// The program's stderr byte for byte, as it wrote it.
    pub fn stderr_bytes(&self) -> &[u8] {
        self.stderr_raw.as_deref().unwrap_or(self.stderr.as_bytes())
    }

    /// The exit code a command-line front end should exit with: the
    /// program's own, 128+N for signal N, 125 for a setup error.
    pub fn process_exit_code(&self) -> i32 {
        match (self.status, self.exit_code, self.signal) {
            (Status::SetupError, Some(code), _) => code,
            (Status::SetupError, None, _) => 125,
            (Status::CompileError, _, _) => 1,
            (_, _, Some(sig)) => 128 + sig,
            (_, Some(code), _) => code,
            _ => 125,
        }
    }
}

/// How the program's main process ended, as seen by the sandbox's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// The facts the supervisor gathered, from which the status follows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Killed by the supervisor at the wall-clock deadline.
    pub wall_time_exceeded: bool,
    /// Killed by the supervisor when CPU usage passed the limit.
    pub cpu_time_exceeded: bool,
    /// Killed by the supervisor when stdout or stderr passed the limit.
    pub output_exceeded: bool,
    /// The kernel's OOM killer acted inside the sandbox's cgroup.
    pub oom_killed: bool,
    /// A fork or clone failed because the pids limit was reached.
    pub pids_limit_reached: bool,
    /// The writable filesystem was full when the run ended.
    pub disk_full: bool,
    /// The measured CPU time is at (or within the RLIMIT_CPU backstop's
    /// rounding of) the limit, so a SIGXCPU is the limit's and not a
    /// program's own `kill -XCPU`.
    pub cpu_time_measured_over: bool,
    /// A process died of SIGXFSZ, or a file in /sandbox reached the
    /// file-size limit (RLIMIT_FSIZE stops writes exactly there).
    pub file_size_exceeded: bool,
}

/// Decides a run's status and the limits it hit. The supervisor's own kills
/// come first (they are certain), then the kernel's OOM kill, then the exit.
pub fn classify(exit: Option<Exit>, seen: &Observed) -> (Status, Vec<LimitKind>) {
    let mut hit = Vec::new();
    if seen.wall_time_exceeded {
        hit.push(LimitKind::WallTime);
    }
    if seen.cpu_time_exceeded {
        hit.push(LimitKind::CpuTime);
    }
    if seen.output_exceeded {
        hit.push(LimitKind::Output);
    }
    if seen.oom_killed {
        hit.push(LimitKind::Memory);
    }
    if seen.pids_limit_reached {
        hit.push(LimitKind::Pids);
    }
    if seen.disk_full {
        hit.push(LimitKind::Disk);
    }
    if seen.file_size_exceeded {
        hit.push(LimitKind::FileSize);
    }
    if let Some(Exit::Signal(sig)) = exit {
        if sig == libc::SIGXFSZ {
            hit.push(LimitKind::FileSize);
        }
        if sig == libc::SIGXCPU && !seen.cpu_time_exceeded && seen.cpu_time_measured_over {
            // RLIMIT_CPU, the per-process backstop, fired first.
            hit.push(LimitKind::CpuTime);
        }
    }
    hit.sort();
    hit.dedup();

    let status = if seen.output_exceeded {
        Status::OutputExceeded
    } else if seen.cpu_time_exceeded
        || (exit == Some(Exit::Signal(libc::SIGXCPU)) && seen.cpu_time_measured_over)
    {
        Status::CpuTimeExceeded
    } else if seen.wall_time_exceeded {
        Status::Timeout
    } else {
        match exit {
            Some(Exit::Signal(libc::SIGKILL)) if seen.oom_killed => Status::MemoryExceeded,
            Some(Exit::Signal(_)) => Status::Signaled,
            Some(Exit::Code(0)) if seen.oom_killed => Status::MemoryExceeded,
            Some(Exit::Code(0)) => Status::Ok,
            Some(Exit::Code(_)) if seen.oom_killed => Status::MemoryExceeded,
            Some(Exit::Code(_)) => Status::RuntimeError,
            None => Status::SetupError,
        }
    };
    (status, hit)
}

/// Captured output as text (invalid UTF-8 replaced by U+FFFD), and the
/// bytes themselves when the text is not exact.
pub(crate) fn decode_output(bytes: &[u8]) -> (String, Option<Vec<u8>>) {
    match String::from_utf8_lossy(bytes) {
        std::borrow::Cow::Borrowed(text) => (text.to_owned(), None),
        std::borrow::Cow::Owned(text) => (text, Some(bytes.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_exits() {
        let seen = Observed::default();
        assert_eq!(classify(Some(Exit::Code(0)), &seen), (Status::Ok, vec![]));
        assert_eq!(
            classify(Some(Exit::Code(3)), &seen),
            (Status::RuntimeError, vec![])
        );
        assert_eq!(
            classify(Some(Exit::Signal(libc::SIGSEGV)), &seen),
            (Status::Signaled, vec![])
        );
    }

    #[test]
    fn supervisor_kills_win_over_the_signal_they_caused() {
        let seen = Observed {
            wall_time_exceeded: true,
            ..Observed::default()
        };
        assert_eq!(
            classify(Some(Exit::Signal(libc::SIGKILL)), &seen),
            (Status::Timeout, vec![LimitKind::WallTime])
        );
        let seen = Observed {
            cpu_time_exceeded: true,
            ..Observed::default()
        };
        assert_eq!(
            classify(Some(Exit::Signal(libc::SIGKILL)), &seen),
            (Status::CpuTimeExceeded, vec![LimitKind::CpuTime])
        );
        let seen = Observed {
            output_exceeded: true,
            wall_time_exceeded: true,
            ..Observed::default()
        };
        assert_eq!(
            classify(None, &seen).0,
            Status::OutputExceeded,
            "output is decided first: it ended the run"
        );
    }

    #[test]
    fn oom_kill_is_memory_exceeded_even_when_a_child_was_killed() {
        let seen = Observed {
            oom_killed: true,
            ..Observed::default()
        };
        assert_eq!(
            classify(Some(Exit::Signal(libc::SIGKILL)), &seen),
            (Status::MemoryExceeded, vec![LimitKind::Memory])
        );
        // A shell whose child was OOM-killed exits 137 itself.
        assert_eq!(
            classify(Some(Exit::Code(137)), &seen).0,
            Status::MemoryExceeded
        );
    }

    #[test]
    fn rlimit_signals_name_their_limit() {
        let seen = Observed::default();
        assert_eq!(
            classify(Some(Exit::Signal(libc::SIGXFSZ)), &seen),
            (Status::Signaled, vec![LimitKind::FileSize])
        );
        // A program that kills itself with SIGXCPU did not hit the limit.
        assert_eq!(
            classify(Some(Exit::Signal(libc::SIGXCPU)), &seen),
            (Status::Signaled, vec![])
        );
        let spent = Observed {
            cpu_time_measured_over: true,
            ..Observed::default()
        };
        assert_eq!(
            classify(Some(Exit::Signal(libc::SIGXCPU)), &spent),
            (Status::CpuTimeExceeded, vec![LimitKind::CpuTime])
        );
    }

    #[test]
    fn a_file_at_the_size_limit_is_reported_even_when_the_shell_survived() {
        let seen = Observed {
            file_size_exceeded: true,
            ..Observed::default()
        };
        assert_eq!(
            classify(Some(Exit::Code(153)), &seen),
            (Status::RuntimeError, vec![LimitKind::FileSize])
        );
    }

    #[test]
    fn exit_codes_for_front_ends() {
        let mut r = RunResult::setup_error("x".into(), Limits::default());
        assert_eq!(r.process_exit_code(), 125);
        r.status = Status::Signaled;
        r.signal = Some(9);
        assert_eq!(r.process_exit_code(), 137);
        r.status = Status::RuntimeError;
        r.signal = None;
        r.exit_code = Some(3);
        assert_eq!(r.process_exit_code(), 3);
    }

    #[test]
    fn output_keeps_its_bytes_only_when_the_text_is_not_exact() {
        assert_eq!(
            decode_output(b"caf\xc3\xa9\n"),
            ("café\n".to_string(), None)
        );
        let (text, raw) = decode_output(b"\xff\x00a");
        assert_eq!(text, "\u{fffd}\u{0}a");
        assert_eq!(raw.as_deref(), Some(&b"\xff\x00a"[..]));
    }
}
