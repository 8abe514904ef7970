//! The engine used as a library, the way the server will use it: one
//! `Engine`, many threads running sandboxes at once. Needs root (CI runs as
//! root); prints SKIP otherwise.

use formicary_engine::config::EngineConfig;
use formicary_engine::result::Status;
use formicary_engine::sandbox::Engine;
use formicary_engine::spec::{InlineFile, SandboxSpec};
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
