//! The engine used as a library, the way the server will use it: one
//! `Engine`, many threads running sandboxes at once. Needs root (CI runs as
//! root); prints SKIP otherwise.

use formicary_engine::config::EngineConfig;
use formicary_engine::result::Status;
use formicary_engine::sandbox::Engine;
use formicary_engine::spec::{InlineFile, SandboxSpec, Stage};
use std::path::PathBuf;
use std::sync::Arc;

/// The tests here look at process-wide state (descriptors, umask, current
/// directory), so they take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

#[test]
fn concurrent_runs_from_many_threads_succeed_and_leak_no_descriptors() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        println!("SKIP: needs root for cgroups");
        return;
    }
    let engine = Arc::new(Engine::new(EngineConfig::default()).expect("engine"));
    // Warm up once so lazily opened files (if any) are not counted as leaks.
    assert_eq!(
        engine.run(&SandboxSpec::new("true", vec![])).status,
        Status::Ok
    );
    let before = open_fds();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let mut uids = Vec::new();
                for i in 0..10 {
                    let mut spec = SandboxSpec::new(
                        "/bin/sh",
                        vec!["-c".into(), "cat /sandbox/in.txt; id -u".into()],
                    );
                    spec.inline_files.push(InlineFile {
                        sandbox_path: PathBuf::from("in.txt"),
                        content: format!("thread {t} run {i}\n").into_bytes(),
                        executable: false,
                    });
                    let result = engine.run(&spec);
                    assert_eq!(result.status, Status::Ok, "{result:?}");
                    assert_eq!(result.stdout, format!("thread {t} run {i}\n1000\n"));
                    uids.push(result.isolation.host_uid);
                }
                uids
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(open_fds(), before, "descriptors leaked by the engine");
}

#[test]
fn the_working_directory_and_umask_of_the_caller_do_not_matter() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        println!("SKIP: needs root for cgroups");
        return;
    }
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o777) };
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = std::env::current_dir().expect("cwd");
    std::env::set_current_dir(dir.path()).expect("chdir");
    let mut spec = SandboxSpec::new(
        "/bin/sh",
        vec![
            "-c".into(),
            "pwd; cat f.txt; echo x > out && cat out".into(),
        ],
    );
    spec.inline_files.push(InlineFile {
        sandbox_path: PathBuf::from("f.txt"),
        content: b"readable\n".to_vec(),
        executable: false,
    });
    let result = engine.run(&spec);
    std::env::set_current_dir(cwd).expect("chdir back");
    // SAFETY: restoring the mask.
    unsafe { libc::umask(old) };
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(result.stdout, "/sandbox\nreadable\nx\n");
}

fn c_hello() -> InlineFile {
    InlineFile {
        sandbox_path: PathBuf::from("main.c"),
        content: b"#include <stdio.h>\nint main(void){char b[64]; if(fgets(b,64,stdin)) printf(\"got %s\", b); return 0;}\n".to_vec(),
        executable: false,
    }
}

fn has_gcc() -> bool {
    std::path::Path::new("/usr/bin/gcc").exists()
}

#[test]
fn a_compile_stage_and_a_run_share_the_workspace_with_their_own_limits() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() || !has_gcc() {
        println!("SKIP: needs root and /usr/bin/gcc");
        return;
    }
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    let mut spec = SandboxSpec::new("./main", vec![]);
    spec.inline_files.push(c_hello());
    spec.stdin = b"input line\n".to_vec();
    spec.limits.memory_bytes = 32 << 20;
    let mut compile_limits = spec.limits.clone();
    compile_limits.memory_bytes = 512 << 20;
    compile_limits.pids = 128;
    compile_limits.wall_time_ms = 30_000;
    spec.before.push(Stage {
        program: "gcc".into(),
        args: vec!["-O0".into(), "-o".into(), "main".into(), "main.c".into()],
        env: vec![],
        stdin: vec![],
        limits: compile_limits.clone(),
    });
    let staged = engine.run_staged(&spec);
    assert_eq!(staged.before.len(), 1);
    let compile = &staged.before[0];
    assert_eq!(compile.status, Status::Ok, "{compile:?}");
    assert_eq!(compile.limits, compile_limits, "the compile's own limits");
    let main = staged.main.expect("the program ran");
    assert_eq!(main.status, Status::Ok, "{main:?}");
    assert_eq!(
        main.stdout, "got input line\n",
        "stdin reaches the run stage only"
    );
    assert_eq!(main.limits.memory_bytes, 32 << 20);
}

#[test]
fn a_failed_first_stage_stops_the_run() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() || !has_gcc() {
        println!("SKIP: needs root and /usr/bin/gcc");
        return;
    }
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    let mut spec = SandboxSpec::new("./main", vec![]);
    spec.inline_files.push(InlineFile {
        sandbox_path: PathBuf::from("main.c"),
        content: b"int main(void) { return undeclared; }\n".to_vec(),
        executable: false,
    });
    spec.before.push(Stage {
        program: "gcc".into(),
        args: vec!["-o".into(), "main".into(), "main.c".into()],
        env: vec![],
        stdin: vec![],
        limits: spec.limits.clone(),
    });
    let staged = engine.run_staged(&spec);
    assert!(staged.main.is_none(), "the program must not run");
    let compile = &staged.before[0];
    assert_eq!(compile.status, Status::RuntimeError);
    assert!(compile.stderr.contains("undeclared"), "{}", compile.stderr);
}

#[test]
fn what_a_stage_leaves_running_is_gone_before_the_next_stage() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        println!("SKIP: needs root for cgroups");
        return;
    }
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    let mut spec = SandboxSpec::new(
        "/bin/sh",
        vec![
            "-c".into(),
            "cat /tmp/left; ls /proc | grep -c '^[0-9]'".into(),
        ],
    );
    spec.before.push(Stage {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "echo from-stage-one > /tmp/left; sleep 100 & sleep 100 & exit 0".into(),
        ],
        env: vec![],
        stdin: vec![],
        limits: spec.limits.clone(),
    });
    let staged = engine.run_staged(&spec);
    assert_eq!(
        staged.before[0].status,
        Status::Ok,
        "{:?}",
        staged.before[0]
    );
    let main = staged.main.expect("ran");
    // /tmp persists; the sleepers do not: only init, sh and ls (and grep)
    // are in /proc.
    let lines: Vec<&str> = main.stdout.lines().collect();
    assert_eq!(lines[0], "from-stage-one");
    let count: u32 = lines[1].parse().expect("a count");
    assert!(
        count <= 4,
        "stage one's processes survived: {count} in /proc"
    );
}
