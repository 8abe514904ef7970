//! Denial of service from inside the sandbox: fork, thread and memory
//! bombs, disk and inode exhaustion, output floods, CPU spinning, sleeping
//! forever, zombies, descriptor exhaustion, a process ignoring SIGTERM and
//! a double-fork escape. Each attack ends within its limit with the right
//! status, and while it runs a benign sandbox started beside it (a separate
//! formicary process) still finishes promptly: the only timing assertion,
//! with a generous bound, because promptness is the property.
//!
//! The attacks run one at a time (a lock), so that each measurement is of
//! one attack; the machine may have only two CPUs.

mod common;

use common::{exec, python, sh, Exec};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attacks run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The bound on a benign run beside an attack.
const PROMPT: Duration = Duration::from_secs(10);

/// Runs `attack` in its own formicary process and, after `ramp` (for the
/// attack to take hold), a benign `echo` beside it. Returns the attack's
/// result and how long the benign run took, after checking that it
/// succeeded.
fn beside(attack: Exec, ramp: Duration) -> (common::Run, Duration) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let handle = std::thread::spawn(move || attack.run());
    std::thread::sleep(ramp);
    let start = Instant::now();
    let benign = exec(&["echo", "benign"]).run();
    let took = start.elapsed();
    assert_eq!(benign.status(), "ok", "{:?}", benign.json);
    assert_eq!(benign.stdout(), "benign\n");
    let r = handle.join().expect("the attack's thread");
    assert!(
        took < PROMPT,
        "a benign run beside the attack took {took:?}"
    );
    // Nothing of the attack outlives its run.
    let uid = r.host_uid();
    let gone = common::eventually(Duration::from_secs(3), || {
        common::processes_of_uid(uid).is_empty()
    });
    assert!(gone, "uid {uid} left {:?}", common::processes_of_uid(uid));
    (r, took)
}

fn ramp() -> Duration {
    Duration::from_millis(1000)
}

#[test]
fn a_fork_bomb_is_bounded_by_pids_and_ends_at_the_wall_time() {
    // cgroups (pids.max) bound it; the supervisor's deadline ends it.
    require_root!();
    let (r, _) = beside(
        sh("b() { b | b & }; b; sleep 100").flags(&["--wall-time", "3", "--pids", "32"]),
        ramp(),
    );
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    assert_eq!(r.json["signal"], 9);
    assert!(r.hit("wall_time"));
}

#[test]
fn a_c_fork_bomb_hits_the_pids_limit() {
    // cgroups (pids.max): fork fails with EAGAIN; the bomb then sleeps.
    require_root!();
    let (r, _) = beside(
        python(
            "import os, time\nn = 0\ntry:\n while True:\n  if os.fork() == 0:\n   time.sleep(100)\n  n += 1\nexcept OSError:\n print(n, flush=True)\ntime.sleep(100)",
        )
        .flags(&["--wall-time", "3", "--pids", "40"]),
        ramp(),
    );
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    let forked: u32 = r.stdout().trim().parse().expect("a count");
    assert!(forked < 40, "{forked} processes past pids 40");
    assert!(r.hit("pids"), "{:?}", r.json["limits_hit"]);
}

#[test]
fn a_thread_bomb_hits_the_pids_limit() {
    // cgroups (pids.max counts threads).
    require_root!();
    let (r, _) = beside(
        python(
            "import threading, time\nn = 0\ntry:\n while True:\n  threading.Thread(target=time.sleep, args=(100,), daemon=True).start()\n  n += 1\nexcept RuntimeError:\n print(n, flush=True)\ntime.sleep(100)",
        )
        .flags(&["--wall-time", "3", "--pids", "50"]),
        ramp(),
    );
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    let threads: u32 = r.stdout().trim().parse().expect("a count");
    assert!(threads < 50, "{threads}");
    assert!(r.hit("pids"));
}

#[test]
fn an_anonymous_memory_bomb_is_memory_exceeded() {
    // cgroups (memory limit, swap 0).
    require_root!();
    let (r, _) = beside(
        python("b = []\nwhile True: b.append(bytearray(16 << 20))").flags(&["--memory", "64M"]),
        Duration::from_millis(200),
    );
    assert_eq!(r.status(), "memory_exceeded", "{:?}", r.json);
    assert!(r.hit("memory"));
    assert_eq!(r.code, 137);
}

#[test]
fn a_memory_bomb_in_many_processes_is_memory_exceeded() {
    // cgroups: the limit is for all processes together; the OOM killer
    // takes some children, the rest end, and the run is memory_exceeded
    // whatever the program's own exit.
    require_root!();
    let (r, _) = beside(
        python(
            "import os, time\nfor i in range(8):\n if os.fork() == 0:\n  b = b'\\x01' * (24 << 20)\n  time.sleep(2)\n  os._exit(0)\nwhile True:\n try: os.wait()\n except ChildProcessError: break",
        )
        .flags(&["--memory", "96M", "--wall-time", "20"]),
        Duration::from_millis(500),
    );
    assert_eq!(r.status(), "memory_exceeded", "{:?}", r.json);
}

#[test]
fn filling_tmp_stops_at_the_disk_limit() {
    // The writable tmpfs's size (--disk); its pages are also charged to
    // the memory cgroup, which is larger here.
    require_root!();
    let (r, _) = beside(
        sh("dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>/dev/null; echo rc=$?; du -m /tmp/fill | cut -f1")
            .flags(&["--disk", "32M", "--memory", "128M"]),
        Duration::from_millis(300),
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let mut lines = r.stdout().lines();
    assert_eq!(lines.next(), Some("rc=1"));
    let mb: u32 = lines.next().expect("size").parse().expect("a number");
    assert!(mb <= 32, "{mb} MiB");
}

#[test]
fn filling_dev_shm_counts_against_the_same_disk_limit() {
    // One tmpfs backs /sandbox, /tmp and /dev/shm together.
    require_root!();
    let (r, _) = beside(
        sh("head -c 20M /dev/zero > /tmp/a; head -c 20M /dev/zero > /dev/shm/b; echo rc=$?")
            .flags(&["--disk", "32M"]),
        Duration::from_millis(300),
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "rc=1\n");
}

#[test]
fn tmpfs_memory_beyond_the_memory_limit_is_memory_exceeded_or_refused() {
    // cgroups: tmpfs pages are charged to the sandbox's memory cgroup, so
    // a --disk larger than --memory cannot turn into host memory.
    require_root!();
    let (r, _) = beside(
        sh("head -c 120M /dev/zero > /tmp/f; echo rc=$?")
            .flags(&["--disk", "256M", "--memory", "64M"]),
        Duration::from_millis(300),
    );
    assert!(
        r.status() == "memory_exceeded" || r.stdout() == "rc=1\n",
        "{:?}",
        r.json
    );
    assert!(r.json["memory_peak_bytes"].as_u64().expect("peak") <= 64 << 20);
}

#[test]
fn page_cache_from_reading_host_files_stays_within_the_memory_limit() {
    // cgroups: page cache is charged to the reader and reclaimed at the
    // limit, not an OOM and not host memory beyond the limit.
    require_root!();
    let (r, _) = beside(
        sh("find /usr/lib -type f -size +1M 2>/dev/null | head -200 | xargs cat > /dev/null 2>&1; echo done")
            .flags(&["--memory", "32M", "--wall-time", "20"]),
        Duration::from_millis(300),
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "done\n");
    assert!(r.json["memory_peak_bytes"].as_u64().expect("peak") <= 32 << 20);
}

#[test]
fn inode_exhaustion_stops_at_the_tmpfs_inode_limit() {
    // The writable tmpfs's inode count.
    require_root!();
    let (r, _) = beside(
        python(
            "n = 0\ntry:\n while True:\n  open('/tmp/%d' % n, 'w').close(); n += 1\nexcept OSError as e:\n print(e.errno, n)",
        )
        .flags(&["--disk", "1M", "--wall-time", "30"]),
        ramp(),
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let fields: Vec<u64> = r
        .stdout()
        .split_whitespace()
        .map(|f| f.parse().expect("number"))
        .collect();
    assert_eq!(fields[0], 28, "ENOSPC");
    assert!(fields[1] < 100_000, "{} inodes", fields[1]);
}

#[test]
fn a_huge_single_file_stops_at_the_file_size_limit() {
    // rlimits (RLIMIT_FSIZE): SIGXFSZ kills the writer.
    require_root!();
    let (r, _) = beside(
        sh("head -c 100M /dev/zero > big; echo rc=$?; wc -c < big").flags(&["--file-size", "8M"]),
        Duration::from_millis(200),
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(r.hit("file_size"), "{:?}", r.json["limits_hit"]);
    let mut lines = r.stdout().lines();
    assert_ne!(lines.next(), Some("rc=0"));
    assert_eq!(lines.next(), Some("8388608"));
}

#[test]
fn a_stdout_flood_is_output_exceeded() {
    // supervisor output limit.
    require_root!();
    let (r, _) = beside(
        exec(&["yes", "flood"]).flags(&["--output", "64K"]),
        Duration::from_millis(200),
    );
    assert_eq!(r.status(), "output_exceeded", "{:?}", r.json);
    assert_eq!(r.json["stdout_truncated"], true);
    assert_eq!(r.stdout().len(), 64 << 10);
    assert_eq!(r.code, 137);
}

#[test]
fn a_stderr_flood_is_output_exceeded() {
    // supervisor output limit, separately for stderr.
    require_root!();
    let (r, _) = beside(
        sh("yes flood >&2").flags(&["--output", "64K"]),
        Duration::from_millis(200),
    );
    assert_eq!(r.status(), "output_exceeded", "{:?}", r.json);
    assert_eq!(r.json["stderr_truncated"], true);
    assert_eq!(r.stderr_of_program().len(), 64 << 10);
    assert_eq!(r.stdout(), "");
}

#[test]
fn a_flood_from_a_background_child_is_output_exceeded() {
    // supervisor: the pipes are shared by every process of the sandbox.
    require_root!();
    let (r, _) = beside(
        sh("(yes flood &) ; sleep 100").flags(&["--output", "64K"]),
        Duration::from_millis(200),
    );
    assert_eq!(r.status(), "output_exceeded", "{:?}", r.json);
}

#[test]
fn cpu_spin_in_many_threads_is_cpu_time_exceeded() {
    // cgroups (cpuacct) checked by the supervisor: all threads together.
    require_root!();
    let (r, _) = beside(
        sh("for i in 1 2 3 4 5 6 7 8; do (while :; do :; done) & done; wait").flags(&[
            "--cpu-time",
            "2",
            "--wall-time",
            "30",
        ]),
        ramp(),
    );
    assert_eq!(r.status(), "cpu_time_exceeded", "{:?}", r.json);
    assert!(r.hit("cpu_time"));
    assert!(r.wall_time_ms() < 30_000);
}

#[test]
fn sleeping_forever_is_a_timeout() {
    // supervisor wall-time deadline.
    require_root!();
    let (r, _) = beside(
        exec(&["sleep", "infinity"]).flags(&["--wall-time", "2"]),
        ramp(),
    );
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    assert_eq!(r.exit_code(), None);
    assert_eq!(r.json["signal"], 9);
}

#[test]
fn blocking_on_a_fifo_forever_is_a_timeout() {
    // supervisor wall-time deadline (a blocked process uses no CPU).
    require_root!();
    let (r, _) = beside(sh("mkfifo p; cat p").flags(&["--wall-time", "2"]), ramp());
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
}

#[test]
fn zombies_are_bounded_by_pids_and_reaped_with_the_sandbox() {
    // cgroups (a zombie holds a pid); the pid namespace's end reaps them.
    require_root!();
    let Some(p) = common::probe(&["zombies"]) else {
        return;
    };
    let (r, _) = beside(p.flags(&["--wall-time", "3", "--pids", "30"]), ramp());
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    let n: u32 = r
        .stdout()
        .trim()
        .trim_start_matches("zombies ")
        .parse()
        .expect("count");
    assert!(n < 30, "{n}");
}

#[test]
fn fd_exhaustion_stops_at_the_open_files_limit() {
    // rlimits (RLIMIT_NOFILE).
    require_root!();
    let Some(p) = common::probe(&["fd-exhaust"]) else {
        return;
    };
    let (r, _) = beside(p.flags(&["--open-files", "64"]), Duration::from_millis(100));
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "fd-exhaust 61 24\n");
}

#[test]
fn a_process_ignoring_sigterm_is_killed_at_the_wall_time() {
    // supervisor: SIGKILL to init takes the pid namespace.
    require_root!();
    let Some(p) = common::probe(&["ignore-term"]) else {
        return;
    };
    let (r, _) = beside(p.flags(&["--wall-time", "2"]), ramp());
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    assert_eq!(r.stdout(), "ignoring\n");
}

#[test]
fn a_double_fork_setsid_grandchild_dies_with_the_program() {
    // pid namespace: when the program (pid 3) exits, init exits and the
    // kernel kills the rest; the run does not wait for the grandchild.
    require_root!();
    let Some(p) = common::probe(&["setsid-escape"]) else {
        return;
    };
    let start = Instant::now();
    let (r, _) = beside(p.flags(&["--wall-time", "20"]), Duration::from_millis(100));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "parent exits\n");
}

#[test]
fn a_daemonised_child_keeping_the_pipes_open_does_not_hold_the_run() {
    // supervisor: after init ends, it waits at most 2 s for the pipes.
    require_root!();
    let start = Instant::now();
    let (r, _) = beside(
        sh("(setsid sleep 100 &); echo started").flags(&["--wall-time", "30"]),
        Duration::from_millis(100),
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "started\n");
}

#[test]
fn a_denied_syscall_flood_is_bounded() {
    // seccomp user notification: the supervisor answers at most 100,000
    // denials, then stops; the wall time ends the run.
    require_root!();
    let (r, _) = beside(
        python(
            "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True: libc.syscall(165, 0, 0, 0, 0, 0)",
        )
        .flags(&["--wall-time", "8"]),
        ramp(),
    );
    assert!(
        r.status() == "timeout" || r.status() == "cpu_time_exceeded",
        "{:?}",
        r.json
    );
    assert!(r.denied("mount") <= 100_000, "{}", r.denied("mount"));
}

#[test]
fn sigxcpu_backstop_kills_a_single_spinning_process() {
    // cgroups CPU check first; RLIMIT_CPU as backstop.
    require_root!();
    let (r, _) = beside(
        sh("while :; do :; done").flags(&["--cpu-time", "1", "--wall-time", "20"]),
        Duration::from_millis(300),
    );
    assert_eq!(r.status(), "cpu_time_exceeded", "{:?}", r.json);
}
