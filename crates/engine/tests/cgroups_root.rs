//! Privileged tests of the cgroup managers on the real kernel, with whatever
//! version the host offers (v1 on the development machine). They skip, saying
//! why, when not root or when the host has no usable cgroups.
//!
//! The workloads run in children that are this test binary re-executed with
//! `FORMICARY_CG_HELPER` set (see `helper`): each waits for one byte on stdin,
//! so that it is inside the cgroup before it starts its work.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use formicary_engine::cgroups::{Cgroup, CgroupLimits, CgroupVersion, HostCgroups};

const HELPER_ENV: &str = "FORMICARY_CG_HELPER";
const LIMITS: CgroupLimits = CgroupLimits {
    memory_bytes: 32 << 20,
    pids: 8,
};

/// Not a test: the body of the helper children. Does nothing in a normal run.
#[test]
fn helper() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let mut go = [0u8; 1];
    if std::io::stdin().read_exact(&mut go).is_err() {
        std::process::exit(3);
    }
    match mode.as_str() {
        "alloc64" => {
            let mut v: Vec<u8> = Vec::with_capacity(64 << 20);
            for i in (0..(64 << 20)).step_by(4096) {
                v.resize(i + 1, 0);
                v[i] = 1;
            }
            std::hint::black_box(&v);
            std::process::exit(0);
        }
        "forks" => {
            let mut children = Vec::new();
            let mut failed = 0;
            for _ in 0..20 {
                match Command::new("sleep").arg("5").spawn() {
                    Ok(c) => children.push(c),
                    Err(_) => failed += 1,
                }
            }
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
            std::process::exit(if failed > 0 { 0 } else { 4 });
        }
        "spin" => {
            // Spin until this process has used 300 ms of CPU (not wall) time.
            let mut x = 0u64;
            while process_cpu_time() < Duration::from_millis(300) {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            std::process::exit(0);
        }
        "sleep" => {
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(0);
        }
        _ => std::process::exit(5),
    }
}

fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::MAX;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The host's cgroups, or None (with the reason printed) when these tests
/// cannot run here.
fn host_or_skip(test: &str) -> Option<HostCgroups> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root to create cgroups");
        return None;
    }
    let host = match HostCgroups::detect() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("SKIP {test}: {e}");
            return None;
        }
    };
    let report = host.report();
    if host.version().is_none() || !report.can_create {
        eprintln!("SKIP {test}: no usable cgroups: {report:?}");
        return None;
    }
    Some(host)
}

/// A test's own parent cgroup, removed with everything in it at the end.
struct Parent<'h> {
    host: &'h HostCgroups,
    name: String,
}

impl<'h> Parent<'h> {
    fn new(host: &'h HostCgroups, tag: &str) -> Self {
        Parent {
            host,
            name: format!("formicary-test-{}-{tag}", std::process::id()),
        }
    }
}

impl Drop for Parent<'_> {
    fn drop(&mut self) {
        let _ = self.host.cleanup_stale(&self.name, &|_| true);
        let _ = self.host.remove_parent(&self.name);
    }
}

/// Starts a helper child, puts it in `cg`, then lets it run.
fn start_in(cg: &dyn Cgroup, mode: &str) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["helper", "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn helper");
    let pid = i32::try_from(child.id()).expect("pid fits");
    cg.add_process(pid).expect("add helper to cgroup");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(b"g")
        .expect("start helper");
    child
}

/// Where the sandbox's directories are, to check they are gone.
fn sandbox_dirs(host: &HostCgroups, parent: &str, name: &str) -> Vec<std::path::PathBuf> {
    host.report()
        .hierarchies
        .iter()
        .filter(|h| h.used)
        .map(|h| h.mount_point.join(parent).join(name))
        .collect()
}

#[test]
fn memory_hog_is_oom_killed_and_peak_is_near_the_limit() {
    let Some(host) = host_or_skip("memory_hog") else {
        return;
    };
    let parent = Parent::new(&host, "oom");
    let cg = host.create(&parent.name, "sb", &LIMITS).expect("create");
    let status = start_in(cg.as_ref(), "alloc64").wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "child should be OOM-killed, got {status:?}"
    );
    let usage = cg.usage().expect("usage");
    eprintln!(
        "{} usage after OOM: {usage:?}",
        host.version().map(|v| v.to_string()).unwrap_or_default()
    );
    assert!(usage.oom_kills >= 1, "{usage:?}");
    assert!(
        usage.memory_peak_bytes >= 28 << 20 && usage.memory_peak_bytes <= 33 << 20,
        "peak {} should be close to 32M",
        usage.memory_peak_bytes
    );
    let dirs = sandbox_dirs(&host, &parent.name, "sb");
    cg.destroy().expect("destroy");
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn v1_sandboxes_get_the_oom_killer_even_when_their_parent_disabled_it() {
    // A v1 cgroup inherits `oom_kill_disable` from its parent, and the
    // manager writes it only when the new cgroup does not say 0: a parent
    // that has it disabled must not pass that on (the sandbox would hang
    // at its memory limit instead of being killed).
    let Some(host) = host_or_skip("oom_inherit") else {
        return;
    };
    if host.version() != Some(CgroupVersion::V1) {
        eprintln!("SKIP oom_inherit: not cgroup v1");
        return;
    }
    let parent = Parent::new(&host, "oominherit");
    let first = host.create(&parent.name, "sb1", &LIMITS).expect("create");
    let memory = host
        .report()
        .hierarchies
        .iter()
        .find(|h| h.used && h.controllers.iter().any(|c| c == "memory"))
        .expect("a memory hierarchy")
        .mount_point
        .join(&parent.name);
    let oom_control = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("memory.oom_control")).expect("read oom_control")
    };
    assert!(oom_control(&memory.join("sb1")).contains("oom_kill_disable 0"));
    std::fs::write(memory.join("memory.oom_control"), "1").expect("disable at the parent");
    assert!(oom_control(&memory).contains("oom_kill_disable 1"));
    let second = host.create(&parent.name, "sb2", &LIMITS).expect("create");
    assert!(
        oom_control(&memory.join("sb2")).contains("oom_kill_disable 0"),
        "{}",
        oom_control(&memory.join("sb2"))
    );
    let status = start_in(second.as_ref(), "alloc64").wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    std::fs::write(memory.join("memory.oom_control"), "0").expect("enable again");
    first.destroy().expect("destroy");
    second.destroy().expect("destroy");
}

#[test]
fn fork_loop_hits_the_pids_limit() {
    let Some(host) = host_or_skip("fork_loop") else {
        return;
    };
    let parent = Parent::new(&host, "pids");
    let cg = host.create(&parent.name, "sb", &LIMITS).expect("create");
    let status = start_in(cg.as_ref(), "forks").wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "some forks should have failed: {status:?}"
    );
    let usage = cg.usage().expect("usage");
    assert!(usage.pids_limit_hits >= 1, "{usage:?}");
    cg.destroy().expect("destroy");
}

#[test]
fn cpu_time_grows_for_a_spinning_child() {
    let Some(host) = host_or_skip("cpu_time") else {
        return;
    };
    let parent = Parent::new(&host, "cpu");
    let cg = host.create(&parent.name, "sb", &LIMITS).expect("create");
    let before = cg.cpu_time_ns().expect("cpu");
    let status = start_in(cg.as_ref(), "spin").wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let after = cg.cpu_time_ns().expect("cpu");
    assert!(after - before >= 250_000_000, "cpu {before} -> {after}");
    assert_eq!(cg.usage().expect("usage").cpu_time_ns, after);
    // One cheap read: time it loosely.
    let t = Instant::now();
    for _ in 0..1000 {
        cg.cpu_time_ns().expect("cpu");
    }
    eprintln!("cpu_time_ns: {:?} per read", t.elapsed() / 1000);
    cg.destroy().expect("destroy");
}

#[test]
fn kill_all_kills_a_sleeping_child() {
    let Some(host) = host_or_skip("kill_all") else {
        return;
    };
    let parent = Parent::new(&host, "kill");
    let cg = host.create(&parent.name, "sb", &LIMITS).expect("create");
    let mut child = start_in(cg.as_ref(), "sleep");
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    cg.kill_all().expect("kill_all");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    cg.destroy().expect("destroy");
}

#[test]
fn destroy_kills_what_is_left_and_removes_everything() {
    let Some(host) = host_or_skip("destroy") else {
        return;
    };
    let parent = Parent::new(&host, "destroy");
    let cg = host.create(&parent.name, "sb", &LIMITS).expect("create");
    let mut child = start_in(cg.as_ref(), "sleep");
    std::thread::sleep(Duration::from_millis(50));
    let dirs = sandbox_dirs(&host, &parent.name, "sb");
    assert!(dirs.iter().all(|d| d.is_dir()));
    cg.destroy().expect("destroy with a live process");
    assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    host.remove_parent(&parent.name).expect("remove parent");
    for d in &dirs {
        assert!(!d.parent().expect("has parent").exists());
    }
}

#[test]
fn cleanup_stale_kills_and_removes_leftovers() {
    let Some(host) = host_or_skip("cleanup_stale") else {
        return;
    };
    let parent = Parent::new(&host, "stale");
    let left = host
        .create(&parent.name, "stale-1", &LIMITS)
        .expect("create");
    let mut child = start_in(left.as_ref(), "sleep");
    drop(left); // as if the supervisor had crashed
    let keep = host
        .create(&parent.name, "live-1", &LIMITS)
        .expect("create");
    let n = host
        .cleanup_stale(&parent.name, &|n| n.starts_with("stale-"))
        .expect("cleanup");
    assert_eq!(n, 1);
    assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    assert!(sandbox_dirs(&host, &parent.name, "stale-1")
        .iter()
        .all(|d| !d.exists()));
    assert!(sandbox_dirs(&host, &parent.name, "live-1")
        .iter()
        .all(|d| d.is_dir()));
    keep.destroy().expect("destroy");
}

#[test]
fn report_on_this_host_is_consistent() {
    let Some(host) = host_or_skip("report") else {
        return;
    };
    let report = host.report();
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    assert!(report.can_create);
    if report.version == Some(CgroupVersion::V1) {
        let used: Vec<_> = report.hierarchies.iter().filter(|h| h.used).collect();
        assert!(used
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == "memory")));
        assert!(used
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == "pids")));
        assert!(used
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == "cpuacct")));
    }
}
