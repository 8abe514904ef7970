//! Helpers shared by the integration tests: run the real `formicary`
//! binary, parse its `--json` result, compile probe programs, and look at
//! the host's processes.
//!
//! Almost every test needs root (the sandbox gets per-run host uids and
//! cgroups only as root); those start with `require_root!()`, which prints
//! `SKIP: <reason>` and returns when the tests run unprivileged.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_formicary");

/// First host uid of the default sandbox uid range, and its size.
pub const UID_BASE: u32 = 1_000_000_000;
pub const UID_COUNT: u32 = 65_536;

/// Returns from the calling test, after printing why, unless we are root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            println!("SKIP: needs root (per-sandbox host uids and cgroups)");
            return;
        }
    };
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One finished `formicary exec --json` run.
#[derive(Debug)]
pub struct Run {
    /// formicary's own exit code.
    pub code: i32,
    /// The parsed result object.
    pub json: Value,
    /// formicary's own stderr.
    pub stderr: String,
    /// formicary's host pid (its cgroups are named `<pid>-<n>`).
    pub pid: u32,
}

impl Run {
    pub fn status(&self) -> &str {
        self.json["status"].as_str().expect("status is a string")
    }

    pub fn stdout(&self) -> &str {
        self.json["stdout"].as_str().expect("stdout is a string")
    }

    pub fn stderr_of_program(&self) -> &str {
        self.json["stderr"].as_str().expect("stderr is a string")
    }

    pub fn exit_code(&self) -> Option<i64> {
        self.json["exit_code"].as_i64()
    }

    pub fn limits_hit(&self) -> Vec<String> {
        self.json["limits_hit"]
            .as_array()
            .expect("limits_hit is an array")
            .iter()
            .map(|v| v.as_str().expect("limit kind is a string").to_string())
            .collect()
    }

    pub fn hit(&self, limit: &str) -> bool {
        self.limits_hit().iter().any(|l| l == limit)
    }

    pub fn host_uid(&self) -> u32 {
        self.json["isolation"]["host_uid"]
            .as_u64()
            .expect("isolation.host_uid is a number") as u32
    }

    pub fn denied(&self, syscall: &str) -> u64 {
        self.json["denied_syscalls"][syscall].as_u64().unwrap_or(0)
    }

    pub fn wall_time_ms(&self) -> u64 {
        self.json["wall_time_ms"]
            .as_u64()
            .expect("wall_time_ms is a number")
    }
}

/// A `formicary exec` command line, built up then run.
pub struct Exec {
    flags: Vec<String>,
    program: Vec<String>,
    stdin: Option<Vec<u8>>,
    envs: Vec<(String, String)>,
}

/// `formicary exec [flags] -- program...`
pub fn exec(program: &[&str]) -> Exec {
    Exec {
        flags: Vec::new(),
        program: program.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        envs: Vec::new(),
    }
}

/// `formicary exec [flags] -- sh -c script`
pub fn sh(script: &str) -> Exec {
    exec(&["sh", "-c", script])
}

/// `formicary exec [flags] -- python3 -c code`
pub fn python(code: &str) -> Exec {
    exec(&["/usr/bin/python3", "-c", code])
}

impl Exec {
    pub fn flag(mut self, flag: &str) -> Self {
        self.flags.push(flag.to_string());
        self
    }

    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|s| s.to_string()));
        self
    }

    /// Bytes written to formicary's own stdin.
    pub fn host_stdin(mut self, data: &[u8]) -> Self {
        self.stdin = Some(data.to_vec());
        self
    }

    /// An environment variable of the formicary process itself.
    pub fn host_env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn command(&self, json: bool) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("exec");
        if json {
            cmd.arg("--json");
        }
        cmd.args(&self.flags).arg("--").args(&self.program);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs without `--json`: the raw process output.
    pub fn output(&self) -> Output {
        run_with_stdin(self.command(false), self.stdin.as_deref())
    }

    /// Runs with `--json` and parses the result.
    pub fn run(&self) -> Run {
        let (pid, out) = spawn_and_wait(self.command(true), self.stdin.as_deref());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "formicary did not print one JSON result ({e}); exit {:?}; stdout {:?}; stderr {stderr}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout)
            )
        });
        Run {
            code: out.status.code().expect("formicary exited, not killed"),
            json,
            stderr,
            pid,
        }
    }
}

fn run_with_stdin(cmd: Command, stdin: Option<&[u8]>) -> Output {
    spawn_and_wait(cmd, stdin).1
}

fn spawn_and_wait(mut cmd: Command, stdin: Option<&[u8]>) -> (u32, Output) {
    use std::io::Write;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn formicary");
    let pid = child.id();
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(data).expect("write formicary's stdin");
    }
    (pid, child.wait_with_output().expect("wait for formicary"))
}

/// A scratch directory outside /tmp (the sandbox mounts its own /tmp, so a
/// host path there would prove nothing about visibility).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("formicary-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a scratch directory")
}

/// Compiles a C program with the host's gcc into `dir/name`; None (and a
/// SKIP line) when gcc is missing.
pub fn compile_c(dir: &Path, name: &str, source: &str) -> Option<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write C source");
    let bin = dir.join(name);
    match Command::new("gcc")
        .arg("-O1")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
    {
        Ok(out) if out.status.success() => Some(bin),
        Ok(out) => panic!(
            "gcc failed to compile {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            println!("SKIP: gcc not available: {e}");
            None
        }
    }
}

/// A host process and its real uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// A zombie has exited and holds nothing but its pid; it lingers only
    /// until its parent (here possibly a host init that reaps lazily) waits.
    pub zombie: bool,
}

/// Every process on the host, as far as /proc can be read.
pub fn host_processes() -> Vec<Proc> {
    let mut procs = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return procs;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u32>().ok())
        };
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("Z (zombie)"));
        if let (Some(ppid), Some(uid)) = (field("PPid:"), field("Uid:")) {
            procs.push(Proc {
                pid,
                ppid,
                uid,
                zombie,
            });
        }
    }
    procs
}

/// The live (not zombie) processes of host uid `uid`.
pub fn processes_of_uid(uid: u32) -> Vec<Proc> {
    host_processes()
        .into_iter()
        .filter(|p| p.uid == uid && !p.zombie)
        .collect()
}

/// The descendants of `root` (not including it).
pub fn descendants(root: u32) -> Vec<Proc> {
    let all = host_processes();
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            if !found.contains(p) {
                found.push(p.clone());
                frontier.push(p.pid);
            }
        }
    }
    found
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
