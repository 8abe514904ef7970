//! Helpers shared by the integration tests: run the real `formicary`
//! binary, parse its `--json` result, compile probe programs, and look at
//! the host's processes. [`testnet`] stands up destination hosts for the
//! network tests.
//!
//! Almost every test needs root (the sandbox gets per-run host uids and
//! cgroups only as root); those start with `require_root!()`, which prints
//! `SKIP: <reason>` and returns when the tests run unprivileged.

#![allow(dead_code)]

pub mod testnet;

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

/// Starts `formicary batch ARGS` with stdin, stdout and stderr piped.
pub fn start_batch(args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .arg("batch")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start formicary batch")
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

/// A C probe for the `attacks_*` tests: `probe CASE [ARGS]` makes raw
/// system calls and prints one line per attempt, `CASE RESULT ERRNO`
/// (`RESULT` is the call's return value, `ERRNO` 0 when it succeeded), so
/// the test sees exactly what the kernel answered.
pub const ATTACK_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <termios.h>
#include <time.h>
#include <stddef.h>
#include <unistd.h>

static void report(const char *what, long r) {
    printf("%s %ld %d\n", what, r, r < 0 ? errno : 0);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *a = argc > 1 ? argv[1] : "";
    const char *p = argc > 2 ? argv[2] : "";
    const char *q = argc > 3 ? argv[3] : "";
    long r;
    errno = 0;
    if (!strcmp(a, "read")) {
        /* open and read PATH: "read N 0" with the bytes read, or the errno */
        int fd = open(p, O_RDONLY);
        if (fd < 0) { report(a, fd); return 0; }
        char buf[4096];
        r = read(fd, buf, sizeof buf);
        report(a, r);
    } else if (!strcmp(a, "write")) {
        report(a, open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644));
    } else if (!strcmp(a, "mkdir")) {
        report(a, mkdir(p, 0755));
    } else if (!strcmp(a, "unlink")) {
        report(a, unlink(p));
    } else if (!strcmp(a, "rename")) {
        report(a, rename(p, q));
    } else if (!strcmp(a, "link")) {
        report(a, link(p, q));
    } else if (!strcmp(a, "symlink-read")) {
        /* plant a link to PATH in /sandbox and read through it */
        unlink("/sandbox/lnk");
        r = symlink(p, "/sandbox/lnk");
        if (r < 0) { report(a, r); return 0; }
        int fd = open("/sandbox/lnk", O_RDONLY);
        if (fd < 0) { report(a, fd); return 0; }
        char buf[4096];
        report(a, read(fd, buf, sizeof buf));
    } else if (!strcmp(a, "mknod-chr")) {
        report(a, mknod(p, S_IFCHR | 0666, makedev(atoi(q), 0)));
    } else if (!strcmp(a, "mknod-blk")) {
        report(a, mknod(p, S_IFBLK | 0666, makedev(8, 0)));
    } else if (!strcmp(a, "mknod-fifo")) {
        report(a, mknod(p, S_IFIFO | 0666, 0));
    } else if (!strcmp(a, "chroot")) {
        report(a, chroot(p));
    } else if (!strcmp(a, "pivot-root")) {
        report(a, syscall(SYS_pivot_root, "/sandbox", "/sandbox"));
    } else if (!strcmp(a, "mount-tmpfs")) {
        report(a, mount("none", p, "tmpfs", 0, NULL));
    } else if (!strcmp(a, "mount-bind")) {
        report(a, mount(p, q, NULL, MS_BIND | MS_REC, NULL));
    } else if (!strcmp(a, "mount-proc")) {
        report(a, mount("proc", p, "proc", 0, NULL));
    } else if (!strcmp(a, "mount-cgroup")) {
        /* CVE-2022-0492: a cgroup v1 mount to write release_agent */
        report(a, mount("cgroup", p, "cgroup", 0, "rdma"));
    } else if (!strcmp(a, "remount-rw")) {
        report(a, mount(NULL, p, NULL, MS_REMOUNT | MS_BIND, NULL));
    } else if (!strcmp(a, "umount")) {
        report(a, umount2(p, MNT_DETACH));
    } else if (!strcmp(a, "open-tree")) {
        report(a, syscall(SYS_open_tree, AT_FDCWD, p, 1 /* OPEN_TREE_CLONE */));
    } else if (!strcmp(a, "fsopen")) {
        report(a, syscall(SYS_fsopen, "tmpfs", 0));
    } else if (!strcmp(a, "mount-setattr")) {
        char attr[32] = {0};
        report(a, syscall(SYS_mount_setattr, AT_FDCWD, p, 0, attr, sizeof attr));
    } else if (!strcmp(a, "name-to-handle")) {
        char buf[sizeof(struct file_handle) + 128];
        struct file_handle *fh = (struct file_handle *)buf;
        fh->handle_bytes = 128;
        int mnt;
        report(a, syscall(SYS_name_to_handle_at, AT_FDCWD, p, fh, &mnt, 0));
    } else if (!strcmp(a, "open-by-handle")) {
        /* shocker: a guessed handle of the host root's inode 2 */
        char buf[sizeof(struct file_handle) + 8];
        struct file_handle *fh = (struct file_handle *)buf;
        fh->handle_bytes = 8;
        fh->handle_type = 1;
        uint32_t ino[2] = {2, 0};
        memcpy(fh->f_handle, ino, 8);
        report(a, syscall(SYS_open_by_handle_at, AT_FDCWD, fh, O_RDONLY));
    } else if (!strcmp(a, "ids")) {
        uid_t r1, e, s;
        getresuid(&r1, &e, &s);
        printf("ids %d %d %d\n", r1, e, s);
    } else if (!strcmp(a, "setuid0")) {
        report(a, syscall(SYS_setresuid, 0, 0, 0));
    } else if (!strcmp(a, "setgid0")) {
        report(a, syscall(SYS_setresgid, 0, 0, 0));
    } else if (!strcmp(a, "setgroups0")) {
        gid_t g = 0;
        report(a, syscall(SYS_setgroups, 1, &g));
    } else if (!strcmp(a, "capset")) {
        struct { uint32_t version; int pid; } hdr = {0x20080522, 0};
        struct { uint32_t eff, prm, inh; } data[2];
        memset(data, 0xff, sizeof data);
        report(a, syscall(SYS_capset, &hdr, data));
    } else if (!strcmp(a, "ambient-raise")) {
        report(a, prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, 21 /* SYS_ADMIN */, 0, 0));
    } else if (!strcmp(a, "keep-caps")) {
        report(a, prctl(PR_SET_SECUREBITS, 0, 0, 0, 0));
    } else if (!strcmp(a, "caps")) {
        /* effective, permitted, bounding, ambient sets from /proc */
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10)) fputs(line, stdout);
    } else if (!strcmp(a, "unshare")) {
        report(a, unshare(strtol(p, NULL, 0)));
    } else if (!strcmp(a, "setns")) {
        int fd = open("/proc/1/ns/mnt", O_RDONLY);
        report(a, setns(fd < 0 ? 0 : fd, 0));
    } else if (!strcmp(a, "clone")) {
        /* clone with FLAGS (hex), high bits included */
        unsigned long flags = strtoul(p, NULL, 0);
        r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(42);
        if (r > 0) waitpid(r, NULL, 0);
        report(a, r > 0 ? 1 : r);
    } else if (!strcmp(a, "clone3")) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = strtoul(p, NULL, 0);
        args.exit_signal = SIGCHLD;
        r = syscall(SYS_clone3, &args, sizeof args);
        if (r == 0) _exit(42);
        report(a, r > 0 ? 1 : r);
    } else if (!strcmp(a, "ptrace-attach")) {
        report(a, ptrace(PTRACE_ATTACH, atoi(p), 0, 0));
    } else if (!strcmp(a, "ptrace-child")) {
        /* trace our own child: allowed to a debugger, refused here */
        pid_t c = fork();
        if (c == 0) { pause(); _exit(0); }
        r = ptrace(PTRACE_ATTACH, c, 0, 0);
        report(a, r);
        kill(c, SIGKILL);
    } else if (!strcmp(a, "ptrace-traceme")) {
        report(a, ptrace(PTRACE_TRACEME, 0, 0, 0));
    } else if (!strcmp(a, "process-vm-readv")) {
        char buf[16];
        struct iovec l = {buf, 16}, rm = {(void *)0x400000, 16};
        report(a, syscall(SYS_process_vm_readv, 1, &l, 1, &rm, 1, 0));
    } else if (!strcmp(a, "pidfd-getfd")) {
        int pfd = syscall(SYS_pidfd_open, 1, 0);
        report("pidfd-open", pfd);
        report(a, syscall(SYS_pidfd_getfd, pfd < 0 ? 0 : pfd, 0, 0));
    } else if (!strcmp(a, "kill")) {
        report(a, kill(atoi(p), atoi(q)));
    } else if (!strcmp(a, "open-exe-write")) {
        /* CVE-2019-5736: reopen the runtime's binary through /proc/PID/exe */
        report(a, open(p, O_WRONLY));
    } else if (!strcmp(a, "readlink")) {
        char buf[512];
        r = readlink(p, buf, sizeof buf - 1);
        if (r >= 0) { buf[r] = 0; printf("readlink %s\n", buf); } else report(a, r);
    } else if (!strcmp(a, "fds")) {
        /* every open descriptor above 2, with what it points to */
        int n = 0;
        for (int fd = 3; fd < 4096; fd++) {
            if (fcntl(fd, F_GETFD) < 0) continue;
            char path[64], target[512];
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            ssize_t l = readlink(path, target, sizeof target - 1);
            target[l < 0 ? 0 : l] = 0;
            printf("fd %d %s\n", fd, target);
            n++;
        }
        printf("fds %d\n", n);
    } else if (!strcmp(a, "openat-fd")) {
        /* CVE-2024-21626: openat through an inherited directory fd */
        int hits = 0;
        for (int fd = 3; fd < 1024; fd++) {
            int f = openat(fd, p, O_RDONLY);
            if (f >= 0) { printf("openat-fd %d opened\n", fd); hits++; }
        }
        printf("openat-fd hits %d\n", hits);
    } else if (!strcmp(a, "tiocsti")) {
        /* CVE-2019-10063: the command with high bits set in the 64-bit argument */
        char c = 'x';
        unsigned long cmd = TIOCSTI | strtoul(p, NULL, 0);
        report(a, syscall(SYS_ioctl, 0, cmd, &c));
    } else if (!strcmp(a, "tioclinux")) {
        char sub = 2; /* TIOCL_SETSEL: the console selection exploit */
        unsigned long cmd = TIOCLINUX | strtoul(p, NULL, 0);
        report(a, syscall(SYS_ioctl, 0, cmd, &sub));
    } else if (!strcmp(a, "add-key")) {
        report(a, syscall(SYS_add_key, "user", "probe", "x", 1, -3 /* session */));
    } else if (!strcmp(a, "keyctl")) {
        report(a, syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 1));
    } else if (!strcmp(a, "request-key")) {
        report(a, syscall(SYS_request_key, "user", "probe", NULL, 0));
    } else if (!strcmp(a, "bpf")) {
        char attr[128] = {0};
        report(a, syscall(SYS_bpf, 0 /* MAP_CREATE */, attr, sizeof attr));
    } else if (!strcmp(a, "perf-event-open")) {
        char attr[128] = {0};
        *(uint32_t *)(attr + 4) = sizeof attr;
        report(a, syscall(SYS_perf_event_open, attr, 0, -1, -1, 0));
    } else if (!strcmp(a, "userfaultfd")) {
        report(a, syscall(SYS_userfaultfd, 0));
    } else if (!strcmp(a, "io-uring")) {
        char params[120] = {0};
        report(a, syscall(SYS_io_uring_setup, 8, params));
    } else if (!strcmp(a, "init-module")) {
        report(a, syscall(SYS_init_module, "", 0, ""));
    } else if (!strcmp(a, "finit-module")) {
        int fd = open("/dev/null", O_RDONLY);
        report(a, syscall(SYS_finit_module, fd, "", 0));
    } else if (!strcmp(a, "delete-module")) {
        report(a, syscall(SYS_delete_module, "loop", 0));
    } else if (!strcmp(a, "kexec")) {
        report(a, syscall(SYS_kexec_load, 0, 0, NULL, 0));
    } else if (!strcmp(a, "reboot")) {
        report(a, syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, NULL));
    } else if (!strcmp(a, "syslog")) {
        char buf[256];
        report(a, syscall(SYS_syslog, 3 /* READ_ALL */, buf, sizeof buf));
    } else if (!strcmp(a, "settime")) {
        struct timespec ts = {0, 0};
        report(a, syscall(SYS_clock_settime, CLOCK_REALTIME, &ts));
    } else if (!strcmp(a, "iopl")) {
        report(a, syscall(SYS_iopl, 3));
    } else if (!strcmp(a, "ioperm")) {
        report(a, syscall(SYS_ioperm, 0x60, 1, 1));
    } else if (!strcmp(a, "modify-ldt")) {
        char buf[16];
        report(a, syscall(SYS_modify_ldt, 0, buf, sizeof buf));
    } else if (!strcmp(a, "personality")) {
        report(a, syscall(SYS_personality, strtoul(p, NULL, 0)));
    } else if (!strcmp(a, "int80")) {
        /* i386 ABI from a 64-bit process: getuid32 (199) via int 0x80 */
        long ret;
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(199L) : "memory");
        printf("int80 %ld\n", ret);
    } else if (!strcmp(a, "int80-setuid")) {
        /* i386 setuid32 (213) to 0, past a filter that checked only x86_64 */
        long ret;
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(213L), "b"(0L) : "memory");
        printf("int80-setuid %ld\n", ret);
    } else if (!strcmp(a, "x32")) {
        /* x32 ABI: the syscall number with bit 30 set; mount(2) is 165 */
        long ret;
        __asm__ volatile("syscall" : "=a"(ret) : "a"(0x40000000L | 165), "D"(0L), "S"(0L), "d"(0L) : "rcx", "r11", "memory");
        printf("x32 %ld\n", ret);
    } else if (!strcmp(a, "x32-getpid")) {
        long ret;
        __asm__ volatile("syscall" : "=a"(ret) : "a"(0x40000000L | 39) : "rcx", "r11", "memory");
        printf("x32-getpid %ld\n", ret);
    } else if (!strcmp(a, "socket")) {
        report(a, socket(atoi(p), atoi(q), argc > 4 ? atoi(argv[4]) : 0));
    } else if (!strcmp(a, "tcp-connect")) {
        int s = socket(strchr(p, ':') ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
        if (s < 0) { report(a, s); return 0; }
        if (strchr(p, ':')) {
            struct sockaddr_in6 sa = {0};
            sa.sin6_family = AF_INET6;
            sa.sin6_port = htons(atoi(q));
            inet_pton(AF_INET6, p, &sa.sin6_addr);
            report(a, connect(s, (struct sockaddr *)&sa, sizeof sa));
        } else {
            struct sockaddr_in sa = {0};
            sa.sin_family = AF_INET;
            sa.sin_port = htons(atoi(q));
            inet_pton(AF_INET, p, &sa.sin_addr);
            report(a, connect(s, (struct sockaddr *)&sa, sizeof sa));
        }
    } else if (!strcmp(a, "udp-send")) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(atoi(q));
        inet_pton(AF_INET, p, &sa.sin_addr);
        report(a, sendto(s, "probe", 5, 0, (struct sockaddr *)&sa, sizeof sa));
    } else if (!strcmp(a, "tcp-bind")) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(atoi(p));
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        report(a, bind(s, (struct sockaddr *)&sa, sizeof sa));
    } else if (!strcmp(a, "abstract-connect")) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = {0};
        sa.sun_family = AF_UNIX;
        size_t n = strlen(p);
        memcpy(sa.sun_path + 1, p, n);
        report(a, connect(s, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + 1 + n));
    } else if (!strcmp(a, "abstract-listen")) {
        /* bind an abstract name, say so, and wait for a connection */
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = {0};
        sa.sun_family = AF_UNIX;
        size_t n = strlen(p);
        memcpy(sa.sun_path + 1, p, n);
        r = bind(s, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + 1 + n);
        report(a, r);
        listen(s, 1);
        sleep(atoi(q));
    } else if (!strcmp(a, "getaddrinfo")) {
        FILE *f = popen("getent hosts example.com", "r");
        char buf[256] = {0};
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        printf("getaddrinfo %zu\n", n);
    } else if (!strcmp(a, "setsid-escape")) {
        /* double fork and setsid: the grandchild outlives the program */
        if (fork() == 0) {
            setsid();
            if (fork() == 0) {
                signal(SIGHUP, SIG_IGN);
                signal(SIGTERM, SIG_IGN);
                for (;;) pause();
            }
            _exit(0);
        }
        wait(NULL);
        printf("parent exits\n");
    } else if (!strcmp(a, "ignore-term")) {
        for (int s = 1; s < 32; s++) signal(s, SIG_IGN);
        printf("ignoring\n");
        fflush(stdout);
        for (;;) pause();
    } else if (!strcmp(a, "zombies")) {
        /* children that exit and are never reaped, then sleep forever */
        int n = 0;
        for (;;) {
            pid_t c = fork();
            if (c == 0) _exit(0);
            if (c < 0) break;
            n++;
        }
        printf("zombies %d\n", n);
        fflush(stdout);
        for (;;) pause();
    } else if (!strcmp(a, "fd-exhaust")) {
        int n = 0;
        while (open("/dev/null", O_RDONLY) >= 0) n++;
        printf("fd-exhaust %d %d\n", n, errno);
    } else if (!strcmp(a, "memfd-exec")) {
        /* an executable made in memory is still subject to no_new_privs */
        int fd = syscall(SYS_memfd_create, "x", 0);
        report(a, fd);
    } else if (!strcmp(a, "cwd")) {
        char buf[512];
        printf("cwd %s\n", getcwd(buf, sizeof buf) ? buf : "?");
    } else {
        printf("unknown case %s\n", a);
        return 2;
    }
    return 0;
}
"#;

/// The attack probe, compiled once per test binary; None (after a SKIP
/// line) without gcc.
pub fn attack_probe() -> Option<PathBuf> {
    static PROBE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            // Kept for the life of the test binary: every test uses it.
            let dir = scratch().keep();
            compile_c(&dir, "probe", ATTACK_PROBE)
        })
        .clone()
}

/// `formicary exec --file probe -- ./probe args...`; None without gcc.
pub fn probe(args: &[&str]) -> Option<Exec> {
    let bin = attack_probe()?;
    let mut argv = vec!["./probe"];
    argv.extend_from_slice(args);
    Some(exec(&argv).flags(&["--file", bin.to_str().expect("utf-8 path")]))
}

/// Runs the probe with `args` and returns its parsed result.
pub fn probe_run(args: &[&str]) -> Option<Run> {
    Some(probe(args)?.run())
}

/// The files beneath `dir` with their contents, to show a host directory
/// did not change.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            if meta.is_dir() {
                stack.push(path.clone());
                out.push((path, Vec::new()));
            } else if meta.is_file() {
                let data = std::fs::read(&path).unwrap_or_default();
                out.push((path, data));
            } else {
                out.push((path, b"<special>".to_vec()));
            }
        }
    }
    out.sort();
    out
}
