//! The fast path: `SandboxPool` and `Engine::prepare`/`run_prepared`. Every
//! request must get a sandbox no other request touched, with its own
//! limits, and nothing may be left once the pool is gone. Needs root (CI
//! runs as root); prints SKIP otherwise.

use formicary_engine::config::EngineConfig;
use formicary_engine::pool::SandboxPool;
use formicary_engine::result::{LimitKind, Status};
use formicary_engine::sandbox::{Engine, SandboxShape};
use formicary_engine::spawner::{SpawnerProgram, SPAWNER_ARG};
use formicary_engine::spec::{InlineFile, Limits, SandboxSpec, Stage};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tests count this process's children and cgroups: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            println!("SKIP: needs root for cgroups");
            return;
        }
    };
}

fn sh(script: &str) -> SandboxSpec {
    SandboxSpec::new("/bin/sh", vec!["-c".into(), script.into()])
}

/// This process's children (the sandboxes' inits).
fn children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("list /proc")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    let after = &s[s.rfind(')')? + 2..];
                    after.split_whitespace().nth(1).map(|ppid| ppid == me)
                })
                .unwrap_or(false)
        })
        .count()
}

/// This process's cgroups under the default parent, in every v1 hierarchy
/// and the v2 tree.
fn own_cgroups() -> usize {
    let prefix = format!("{}-", std::process::id());
    ["memory", "pids", "cpuacct", "unified", ""]
        .iter()
        .map(|h| PathBuf::from("/sys/fs/cgroup").join(h).join("formicary"))
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|d| d.filter_map(|e| e.ok()))
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The engine's spawner helper, built with these tests.
fn spawner_program() -> SpawnerProgram {
    SpawnerProgram {
        path: env!("CARGO_BIN_EXE_formicary-spawner").into(),
        args: vec![SPAWNER_ARG.into()],
    }
}

#[test]
fn pooled_requests_never_see_each_other() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    pooled_requests_never_see_each_other_with(None);
}

#[test]
fn pooled_requests_never_see_each_other_with_a_spawner() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    pooled_requests_never_see_each_other_with(Some(spawner_program()));
}

fn pooled_requests_never_see_each_other_with(spawner: Option<SpawnerProgram>) {
    let engine = Arc::new(Engine::new(EngineConfig::default()).expect("engine"));
    if let Some(program) = &spawner {
        engine.start_spawner(program).expect("the spawner starts");
        assert!(spawner_pid().is_some(), "no spawner runs");
    }
    let pool = SandboxPool::new(Arc::clone(&engine), 2).expect("pool");
    wait_until("the pool is warm", || pool.ready() == 2);
    let mut uids = std::collections::HashSet::new();
    for i in 0..12 {
        // Each request leaves traces everywhere it may write, and a
        // process behind; the next must find none of them.
        let spec = sh(&format!(
            "find /sandbox /tmp /dev/shm -mindepth 1 | wc -l; ps -e -o pid= | wc -l; \
             echo {i} > /sandbox/mark; echo {i} > /tmp/mark; echo {i} > /dev/shm/mark; \
             (sleep 30 &)"
        ));
        let result = pool.run(&spec);
        assert_eq!(result.status, Status::Ok, "{result:?}");
        let counts: Vec<&str> = result.stdout.lines().map(str::trim).collect();
        // No file of an earlier request, and only init, sh, ps and wc.
        assert_eq!(
            counts,
            ["0", "4"],
            "request {i} found traces of another request"
        );
        uids.insert(result.isolation.host_uid);
    }
    // Host uids are leased per sandbox: a few sandboxes at a time, at
    // least two distinct (ready and in use), never shared while alive.
    assert!(uids.len() >= 2, "{uids:?}");
    drop(pool);
    // The engine's spawner (a child of this process too) goes with it.
    drop(engine);
    assert_eq!(children(), 0, "inits or the spawner left behind");
    assert_eq!(own_cgroups(), 0, "cgroups left behind");
}

#[test]
fn a_pooled_sandbox_takes_the_requests_own_limits() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let engine = Arc::new(Engine::new(EngineConfig::default()).expect("engine"));
    let pool = SandboxPool::new(Arc::clone(&engine), 1).expect("pool");
    wait_until("the pool is warm", || pool.ready() == 1);
    // Built with the default limits (256M, 64 pids); this request asks
    // for less, within the same shape (same disk size).
    let mut spec = SandboxSpec::new(
        "python3",
        vec![
            "-c".into(),
            "x = bytearray(100 << 20); print(len(x))".into(),
        ],
    );
    spec.limits.memory_bytes = 48 << 20;
    assert_eq!(SandboxShape::of(&spec), *pool.shape());
    let result = pool.run(&spec);
    assert_eq!(result.status, Status::MemoryExceeded, "{result:?}");
    assert_eq!(result.limits.memory_bytes, 48 << 20);
    wait_until("the pool is warm again", || pool.ready() == 1);
    let mut spec = sh("for i in 1 2 3 4 5 6; do sleep 1 & done; wait");
    spec.limits.pids = 3;
    let result = pool.run(&spec);
    assert!(result.limits_hit.contains(&LimitKind::Pids), "{result:?}");
    wait_until("the pool is warm again", || pool.ready() == 1);
    let mut spec = sh("while :; do :; done");
    spec.limits.wall_time_ms = 300;
    let result = pool.run(&spec);
    assert_eq!(result.status, Status::Timeout, "{result:?}");
}

#[test]
fn requests_of_another_shape_run_the_ordinary_way() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let engine = Arc::new(Engine::new(EngineConfig::default()).expect("engine"));
    let pool = SandboxPool::new(Arc::clone(&engine), 1).expect("pool");
    wait_until("the pool is warm", || pool.ready() == 1);
    // Another disk size: another tmpfs, so not from the pool. (What is
    // free is the disk limit; the tmpfs also holds the root's own files.)
    let mut spec = sh("df -k /sandbox | tail -1 | awk '{print $4}'");
    spec.limits.disk_bytes = 2 << 20;
    assert_ne!(SandboxShape::of(&spec), *pool.shape());
    let result = pool.run(&spec);
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(result.stdout.trim(), "2048");
    assert_eq!(pool.ready(), 1, "the ready sandbox was not used");
    // A staged request of the pool's shape uses it: compile, then run.
    let mut spec = SandboxSpec::new("/sandbox/hello", vec![]);
    spec.inline_files.push(InlineFile {
        sandbox_path: "hello.c".into(),
        content: b"#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n".to_vec(),
        executable: false,
    });
    spec.before.push(Stage {
        program: "gcc".into(),
        args: vec!["-o".into(), "hello".into(), "hello.c".into()],
        env: Vec::new(),
        stdin: Vec::new(),
        limits: Limits {
            memory_bytes: 512 << 20,
            pids: 128,
            ..Limits::default()
        },
    });
    let staged = pool.run_staged(&spec);
    assert_eq!(staged.before.len(), 1);
    assert_eq!(staged.before[0].status, Status::Ok, "{staged:?}");
    let main = staged.main.expect("the program ran");
    assert_eq!(main.stdout, "hi\n");
}

#[test]
fn a_prepared_sandbox_refuses_a_request_of_another_shape_and_is_not_reused() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    let prepared = engine
        .prepare(&SandboxShape::plain(&Limits::default()))
        .expect("prepared");
    let mut spec = sh("true");
    spec.limits.disk_bytes = 1 << 20;
    let result = engine.finish_staged(&spec, engine.run_prepared(prepared, &spec));
    assert_eq!(result.status, Status::SetupError);
    assert!(
        result
            .error
            .as_deref()
            .unwrap_or("")
            .contains("another shape"),
        "{result:?}"
    );
    // Unused prepared sandboxes are taken down when dropped.
    let prepared = engine
        .prepare(&SandboxShape::plain(&Limits::default()))
        .expect("prepared");
    assert_eq!(children(), 1);
    drop(prepared);
    assert_eq!(children(), 0, "an unused prepared sandbox's init is gone");
    assert_eq!(own_cgroups(), 0);
}

/// The engine's spawner: this process's child that is not a sandbox's
/// init (an init is also pid 1 of its own pid namespace).
fn spawner_pid() -> Option<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("list /proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>())
            };
            let ppid = field("PPid:")?;
            let nspid = field("NSpid:")?;
            (ppid == [me.as_str()] && nspid.len() == 1).then(|| nspid[0].parse().ok())?
        })
        .next()
}

#[test]
fn a_crashed_spawner_is_a_clear_error_and_the_next_sandbox_starts_a_new_one() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    engine
        .start_spawner(&spawner_program())
        .expect("the spawner starts");
    let shape = SandboxShape::plain(&Limits::default());
    let built_before = engine.prepare(&shape).expect("prepared");
    let helper = spawner_pid().expect("the spawner runs");
    // SAFETY: kill with integers; `helper` is this process's unreaped child.
    assert_eq!(unsafe { libc::kill(helper, libc::SIGKILL) }, 0);
    let error = match engine.prepare(&shape) {
        Ok(_) => panic!("a sandbox was built by a dead spawner"),
        Err(e) => e,
    };
    assert!(error.contains("sandbox spawner"), "{error}");
    // The next sandbox starts a new spawner.
    let built_after = engine.prepare(&shape).expect("a new spawner");
    assert_ne!(spawner_pid(), Some(helper));
    // Sandboxes are not the spawner's children: the one built before the
    // crash still serves its request.
    for prepared in [built_before, built_after] {
        let result = engine.finish_staged(
            &sh("echo ok"),
            engine.run_prepared(prepared, &sh("echo ok")),
        );
        assert_eq!(result.status, Status::Ok, "{result:?}");
        assert_eq!(result.stdout, "ok\n");
    }
    drop(engine);
    assert_eq!(children(), 0, "inits or the spawner left behind");
    assert_eq!(own_cgroups(), 0);
}

#[test]
fn a_program_that_is_not_a_spawner_is_refused_with_a_clear_error() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    let not_a_spawner = SpawnerProgram {
        path: "/bin/true".into(),
        args: vec![SPAWNER_ARG.into()],
    };
    let error = engine
        .start_spawner(&not_a_spawner)
        .expect_err("/bin/true is no spawner")
        .to_string();
    assert!(
        error.contains("/bin/true") && error.contains("main_if_spawner"),
        "{error}"
    );
    let missing = SpawnerProgram {
        path: "/nonexistent/formicary".into(),
        args: Vec::new(),
    };
    let error = engine
        .start_spawner(&missing)
        .expect_err("no such program")
        .to_string();
    assert!(error.contains("/nonexistent/formicary"), "{error}");
    // Sandboxes are still cloned here, and nothing was left behind.
    let result = engine.run(&sh("echo ok"));
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(children(), 0, "a helper was left behind");
}

#[test]
fn stop_all_ends_every_sandbox_and_refuses_new_ones() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let engine = Arc::new(Engine::new(EngineConfig::default()).expect("engine"));
    let pool = SandboxPool::new(Arc::clone(&engine), 2).expect("pool");
    wait_until("the pool is warm", || pool.ready() == 2);
    assert_eq!(engine.live_sandboxes(), 2);
    assert_eq!(engine.stop_all(), 2);
    // The pool's builder notices, takes its sandboxes down, builds no more.
    wait_until("every sandbox is taken down", || {
        engine.live_sandboxes() == 0 && own_cgroups() == 0
    });
    let refused = match engine.prepare(&SandboxShape::plain(&Limits::default())) {
        Ok(_) => panic!("a sandbox was built after stop_all"),
        Err(e) => e,
    };
    assert!(refused.contains("stopping"), "{refused}");
    let result = engine.run(&sh("echo no"));
    assert_eq!(result.status, Status::SetupError, "{result:?}");
    drop(pool);
    assert_eq!(children(), 0);
}

/// The mounts (mount point, filesystem type) of `pid`'s mount namespace.
fn mounts_of(pid: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("mountinfo")
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            Some((
                before.split(' ').nth(4)?.to_string(),
                after.split(' ').next()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn the_spawner_sheds_the_hosts_kernel_interface_mounts_and_only_its_own() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let interface = |fstype: &str| ["cgroup", "cgroup2", "devpts", "tracefs"].contains(&fstype);
    let host_before = mounts_of("self");
    if !host_before.iter().any(|(_, t)| interface(t)) {
        println!("SKIP: this host mounts no cgroup, devpts or tracefs");
        return;
    }
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    engine
        .start_spawner(&spawner_program())
        .expect("the spawner starts");
    let shape = SandboxShape::plain(&Limits::default());
    let prepared = engine.prepare(&shape).expect("prepared");
    let helper = spawner_pid().expect("the spawner runs").to_string();

    let spawners = mounts_of(&helper);
    let shed: Vec<_> = spawners.iter().filter(|(_, t)| interface(t)).collect();
    assert!(shed.is_empty(), "still in the spawner: {shed:?}");
    for needed in ["/", "/proc", "/dev"] {
        assert!(
            spawners.iter().any(|(m, _)| m == needed),
            "the spawner lost {needed}: {spawners:?}"
        );
    }
    // Its namespace is its own: the host (this test's) lost nothing.
    assert_eq!(mounts_of("self"), host_before);

    // And sandboxes cloned from it are whole.
    let spec = sh("test -c /dev/null && test -r /proc/self/status && echo whole");
    let result = engine.finish_staged(&spec, engine.run_prepared(prepared, &spec));
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(result.stdout, "whole\n");
    drop(engine);
    assert_eq!(children(), 0);
    assert_eq!(own_cgroups(), 0);
}

#[test]
fn a_sandbox_built_ahead_has_its_root_built_by_init_and_a_run_by_a_helper() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    // The program's pid tells: pid 2 went to the root builder when there
    // was one.
    let spec = sh("echo $$; test -w /sandbox && test -c /dev/null && echo built");
    let ahead = engine
        .prepare(&SandboxShape::plain(&Limits::default()))
        .expect("prepared");
    let built_ahead = engine.finish_staged(&spec, engine.run_prepared(ahead, &spec));
    assert_eq!(built_ahead.status, Status::Ok, "{built_ahead:?}");
    assert_eq!(built_ahead.stdout, "2\nbuilt\n");
    let waited = engine.run(&spec);
    assert_eq!(waited.status, Status::Ok, "{waited:?}");
    assert_eq!(waited.stdout, "3\nbuilt\n");
    drop(engine);
    assert_eq!(children(), 0);
    assert_eq!(own_cgroups(), 0);
}
