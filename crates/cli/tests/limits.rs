//! Limits and how a run's end is reported: status, exit code, limits hit,
//! and what formicary itself exits with.

mod common;

use common::{exec, python, sh};
use std::time::{Duration, Instant};

#[test]
fn nonzero_exit_is_runtime_error_and_passes_through() {
    require_root!();
    let r = sh("exit 3").run();
    assert_eq!(r.status(), "runtime_error");
    assert_eq!(r.exit_code(), Some(3));
    assert_eq!(r.code, 3, "formicary exits with the program's code");
}

#[test]
fn death_by_signal_is_signaled_and_exits_128_plus_signal() {
    require_root!();
    let r = sh("kill -SEGV $$").run();
    assert_eq!(r.status(), "signaled");
    assert_eq!(r.json["signal"], 11);
    assert!(r.limits_hit().is_empty(), "{:?}", r.limits_hit());
    assert_eq!(r.code, 139);
}

#[test]
fn wall_time_limit_ends_the_run_as_timeout() {
    require_root!();
    let r = exec(&["sleep", "100"]).flags(&["--wall-time", "0.5"]).run();
    assert_eq!(r.status(), "timeout");
    assert_eq!(r.limits_hit(), vec!["wall_time"]);
    let ms = r.wall_time_ms();
    assert!((500..=1500).contains(&ms), "wall_time_ms {ms}");
}

#[test]
fn wall_timeout_exits_137() {
    require_root!();
    let r = exec(&["sleep", "100"]).flags(&["--wall-time", "0.5"]).run();
    assert_eq!(r.status(), "timeout");
    assert_eq!(r.code, 137);
}

#[test]
fn cpu_time_limit_ends_a_busy_loop() {
    require_root!();
    let r = sh("while :; do :; done")
        .flags(&["--cpu-time", "0.5", "--wall-time", "10"])
        .run();
    assert_eq!(r.status(), "cpu_time_exceeded", "{:?}", r.json);
    assert!(r.hit("cpu_time"));
    assert!(!r.hit("wall_time"));
    assert!(r.wall_time_ms() < 5000, "ended long before the wall limit");
}

#[test]
fn memory_limit_kills_a_large_allocation() {
    require_root!();
    let r = python("b = bytearray(200 * 1024 * 1024); print('allocated')")
        .flags(&["--memory", "64M"])
        .run();
    assert_eq!(r.status(), "memory_exceeded", "{:?}", r.json);
    assert!(r.hit("memory"));
    assert!(!r.stdout().contains("allocated"));
}

#[test]
fn pids_limit_makes_thread_creation_fail() {
    require_root!();
    let started = Instant::now();
    let r = python(concat!(
        "import threading, time\n",
        "ok = fail = 0\n",
        "for i in range(100):\n",
        "    try:\n",
        "        threading.Thread(target=time.sleep, args=(1,), daemon=True).start(); ok += 1\n",
        "    except RuntimeError:\n",
        "        fail += 1\n",
        "print(ok, fail)\n",
    ))
    .flags(&["--pids", "16", "--wall-time", "5"])
    .run();
    let counts: Vec<u32> = r
        .stdout()
        .split_whitespace()
        .map(|n| n.parse().expect("count"))
        .collect();
    assert_eq!(counts.len(), 2, "{:?}", r.json);
    assert!(
        counts[0] < 16,
        "at most 15 threads besides main: {counts:?}"
    );
    assert!(counts[1] > 0, "some thread creations failed: {counts:?}");
    assert!(r.hit("pids"), "{:?}", r.limits_hit());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn fork_bomb_is_contained_within_the_wall_time() {
    require_root!();
    let started = Instant::now();
    let r = sh("b() { b | b & }; b; sleep 2")
        .flags(&["--pids", "16", "--wall-time", "3"])
        .run();
    assert!(r.hit("pids"), "{:?}", r.json);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn output_limit_truncates_to_exactly_the_limit() {
    require_root!();
    let r = python("import sys\nfor i in range(1000): sys.stdout.write('%09d\\n' % i * 1000)")
        .flags(&["--output", "1K"])
        .run();
    assert_eq!(r.status(), "output_exceeded");
    assert!(r.hit("output"));
    assert_eq!(r.json["stdout_truncated"], true);
    let expected: String = (0..)
        .flat_map(|i| std::iter::repeat_n(format!("{i:09}\n"), 1000))
        .take(103)
        .collect();
    assert_eq!(r.stdout().len(), 1024);
    assert_eq!(r.stdout(), &expected[..1024], "the prefix is kept intact");
}

#[test]
fn file_size_limit_stops_a_large_write() {
    require_root!();
    let r = exec(&["dd", "if=/dev/zero", "of=/sandbox/f", "bs=1M", "count=2"])
        .flags(&["--file-size", "1M"])
        .run();
    assert!(r.hit("file_size"), "{:?}", r.json);
    assert_ne!(r.status(), "ok");
}

#[test]
fn disk_limit_makes_writes_fail() {
    require_root!();
    let r = exec(&["dd", "if=/dev/zero", "of=/sandbox/f", "bs=1M", "count=100"])
        .flags(&["--disk", "8M"])
        .run();
    assert_eq!(r.status(), "runtime_error", "dd fails: {:?}", r.json);
    assert!(r.stderr_of_program().contains("No space left"));
    assert!(r.hit("disk"));
}

#[test]
fn the_whole_disk_limit_is_the_programs() {
    // The root's own files live in the same tmpfs as /sandbox and /tmp;
    // they must not take any of the limit: exactly 8 MiB fit, a byte more
    // does not.
    require_root!();
    let r = exec(&[
        "sh",
        "-c",
        "dd if=/dev/zero of=/sandbox/f bs=1M count=8 2>/dev/null && echo fits \
         && (echo x > /tmp/g) 2>/dev/null || echo full",
    ])
    .flags(&["--disk", "8M"])
    .run();
    assert_eq!(r.stdout(), "fits\nfull\n", "{:?}", r.json);
}

#[test]
fn disk_limit_is_shared_by_tmp() {
    require_root!();
    let r = exec(&["dd", "if=/dev/zero", "of=/tmp/f", "bs=1M", "count=100"])
        .flags(&["--disk", "8M"])
        .run();
    assert!(
        r.stderr_of_program().contains("No space left"),
        "{:?}",
        r.json
    );
}

#[test]
fn open_files_limit_gives_emfile() {
    require_root!();
    let r = python(concat!(
        "fs = []\n",
        "try:\n",
        "    for i in range(300): fs.append(open('/dev/null'))\n",
        "    print('opened all')\n",
        "except OSError as e:\n",
        "    print(e.errno, len(fs))\n",
    ))
    .flags(&["--open-files", "64"])
    .run();
    let parts: Vec<u32> = r
        .stdout()
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect();
    assert_eq!(parts.first(), Some(&24), "EMFILE: {:?}", r.json);
    assert!(parts[1] < 64, "{parts:?}");
}

#[test]
fn effective_limits_are_echoed() {
    require_root!();
    let r = exec(&["true"])
        .flags(&[
            "--wall-time",
            "2.5",
            "--cpu-time",
            "1",
            "--memory",
            "100M",
            "--pids",
            "20",
            "--disk",
            "10M",
            "--output",
            "4K",
            "--open-files",
            "100",
            "--file-size",
            "2M",
        ])
        .run();
    assert_eq!(
        r.json["limits"],
        serde_json::json!({
            "wall_time_ms": 2500,
            "cpu_time_ms": 1000,
            "memory_bytes": 100u64 << 20,
            "pids": 20,
            "disk_bytes": 10u64 << 20,
            "output_bytes": 4096,
            "open_files": 100,
            "file_size_bytes": 2u64 << 20,
        })
    );
}

#[test]
fn limit_above_the_configured_maximum_is_refused() {
    require_root!();
    let dir = common::scratch();
    let config = dir.path().join("formicary.toml");
    std::fs::write(
        &config,
        "[limits]\nmemory = \"64M\"\n[max]\nmemory = \"128M\"\n",
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let ok = exec(&["true"]).flags(&["--config", config]).run();
    assert_eq!(
        ok.status(),
        "ok",
        "the config itself is valid: {}",
        ok.stderr
    );
    let out = exec(&["true"])
        .flags(&["--config", config, "--memory", "256M"])
        .output();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--memory 256M") && stderr.contains("128M"),
        "{stderr}"
    );
}

#[test]
fn config_with_only_a_lower_maximum_still_accepts_requests_under_it() {
    require_root!();
    let dir = common::scratch();
    let config = dir.path().join("formicary.toml");
    std::fs::write(&config, "[max]\nmemory = \"128M\"\n").expect("write config");
    let out = exec(&["true"])
        .flags(&[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--memory",
            "64M",
        ])
        .output();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn double_forked_setsid_escapee_dies_with_the_run() {
    require_root!();
    let r = python(concat!(
        "import os, time\n",
        "if os.fork() == 0:\n",
        "    os.setsid()\n",
        "    if os.fork() == 0:\n",
        "        time.sleep(1000)\n",
        "    os._exit(0)\n",
        "time.sleep(0.2)\n",
        "print('parent done')\n",
    ))
    .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let uid = r.host_uid();
    assert!(uid >= common::UID_BASE);
    let gone = common::eventually(Duration::from_secs(2), || {
        common::processes_of_uid(uid).is_empty()
    });
    assert!(gone, "left behind: {:?}", common::processes_of_uid(uid));
}

#[test]
fn cpu_time_limit_counts_all_processes_together() {
    require_root!();
    // Four children each burn 0.4 s of CPU: under any per-process limit of
    // 1 s, but 1.6 s together.
    let r = python(concat!(
        "import os, time\n",
        "def burn():\n",
        "    end = time.process_time() + 0.4\n",
        "    while time.process_time() < end: pass\n",
        "kids = []\n",
        "for i in range(4):\n",
        "    pid = os.fork()\n",
        "    if pid == 0:\n",
        "        burn(); os._exit(0)\n",
        "    kids.append(pid)\n",
        "for k in kids: os.waitpid(k, 0)\n",
        "print('done')\n",
    ))
    .flags(&["--cpu-time", "1", "--wall-time", "20"])
    .run();
    assert_eq!(r.status(), "cpu_time_exceeded", "{:?}", r.json);
    assert!(!r.stdout().contains("done"));
}

#[test]
fn stderr_has_its_own_output_limit() {
    require_root!();
    let r = sh("echo fine; yes >&2").flags(&["--output", "1K"]).run();
    assert_eq!(r.status(), "output_exceeded");
    assert_eq!(r.json["stderr_truncated"], true);
    assert_eq!(r.json["stdout_truncated"], false);
    assert_eq!(r.stderr_of_program().len(), 1024);
    assert_eq!(r.stdout(), "fine\n");
}

#[test]
fn background_child_holding_stdout_does_not_keep_the_run_alive() {
    require_root!();
    let started = Instant::now();
    let r = sh("sleep 100 & echo main done").run();
    assert_eq!(r.status(), "ok");
    assert_eq!(r.stdout(), "main done\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn pids_1_is_either_usable_or_refused_up_front() {
    require_root!();
    let out = sh("echo hi").flags(&["--pids", "1"]).output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ran = out.status.code() == Some(0) && out.stdout == b"hi\n";
    let refused = out.status.code() == Some(125) && stderr.contains("--pids");
    assert!(ran || refused, "exit {:?}: {stderr}", out.status.code());
}
