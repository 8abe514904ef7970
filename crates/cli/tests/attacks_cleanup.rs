//! Cleanup after attacks: once the runs of this file end, no process of
//! their host uids is left, no cgroup named after their formicary process
//! remains under the v1 `memory`, `pids` and `cpuacct` hierarchies (or the
//! cgroup2 root), and the host's mount table gained nothing. Other test
//! binaries may run in parallel, so only the runs started here are checked,
//! by the host uid from their `--json` result and the formicary pid.
//! Layers: the pid namespace (init's death kills the rest), the
//! supervisor's cgroup destroy, and the private mount namespace.

mod common;

use common::{exec, python, sh};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

fn cgroups_of(pid: u32) -> Vec<String> {
    let prefix = format!("{pid}-");
    let mut found = Vec::new();
    for h in ["memory", "pids", "cpuacct", ""] {
        let parent = Path::new("/sys/fs/cgroup").join(h).join("formicary");
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && e.path().is_dir() {
                found.push(format!("{}/{name}", parent.display()));
            }
        }
    }
    found
}

/// The host's mounts of the kinds a sandbox makes (tmpfs, proc, devtmpfs
/// and cgroup, plus binds of /usr and /dev): other programs on a shared CI
/// host (a container runtime, say) add overlay and nsfs mounts of their
/// own meanwhile, which this test cannot tell from a leak otherwise.
fn host_mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter(|l| {
            let fstype = l.split(" - ").nth(1).and_then(|t| t.split(' ').next());
            matches!(
                fstype,
                Some("tmpfs" | "proc" | "devtmpfs" | "cgroup" | "cgroup2")
            ) || l.contains(" /usr ")
                || l.contains("/.oldroot")
                || l.contains("/sandbox")
        })
        .map(str::to_string)
        .collect()
}

/// Checks that `run` left nothing behind.
fn assert_clean(run: &common::Run) {
    let uid = run.host_uid();
    assert!((common::UID_BASE..common::UID_BASE + common::UID_COUNT).contains(&uid));
    let gone = common::eventually(Duration::from_secs(3), || {
        common::processes_of_uid(uid).is_empty()
    });
    assert!(gone, "uid {uid}: {:?}", common::processes_of_uid(uid));
    assert_eq!(cgroups_of(run.pid), Vec::<String>::new());
}

#[test]
fn a_fork_bomb_leaves_nothing_behind() {
    require_root!();
    let mounts = host_mounts();
    let r = sh("b() { b | b & }; b; sleep 100")
        .flags(&["--wall-time", "2"])
        .run();
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    assert_clean(&r);
    let added: Vec<String> = host_mounts().difference(&mounts).cloned().collect();
    assert!(added.is_empty(), "{added:#?}");
}

#[test]
fn a_setsid_double_fork_leaves_nothing_behind() {
    require_root!();
    let Some(p) = common::probe(&["setsid-escape"]) else {
        return;
    };
    let r = p.run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_clean(&r);
}

#[test]
fn a_sigterm_ignorer_leaves_nothing_behind() {
    require_root!();
    let Some(p) = common::probe(&["ignore-term"]) else {
        return;
    };
    let r = p.flags(&["--wall-time", "1"]).run();
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    assert_clean(&r);
}

#[test]
fn zombies_leave_nothing_behind() {
    require_root!();
    let Some(p) = common::probe(&["zombies"]) else {
        return;
    };
    let r = p.flags(&["--wall-time", "1", "--pids", "20"]).run();
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    assert_clean(&r);
    // Zombies of the sandbox are not left to the host's init either.
    let uid = r.host_uid();
    let zombies = common::eventually(Duration::from_secs(3), || {
        common::host_processes().iter().all(|p| p.uid != uid)
    });
    assert!(zombies, "zombies of uid {uid} remain");
}

#[test]
fn a_memory_bomb_leaves_nothing_behind() {
    require_root!();
    let r = python("b = []\nwhile True: b.append(b'x' * (8 << 20))")
        .flags(&["--memory", "48M"])
        .run();
    assert_eq!(r.status(), "memory_exceeded", "{:?}", r.json);
    assert_clean(&r);
}

#[test]
fn an_output_flood_leaves_nothing_behind() {
    require_root!();
    let r = sh("yes & yes >&2 & wait").flags(&["--output", "4K"]).run();
    assert_eq!(r.status(), "output_exceeded", "{:?}", r.json);
    assert_clean(&r);
}

#[test]
fn a_cpu_spinner_leaves_nothing_behind() {
    require_root!();
    let r = sh("(while :; do :; done) & while :; do :; done")
        .flags(&["--cpu-time", "0.5"])
        .run();
    assert_eq!(r.status(), "cpu_time_exceeded", "{:?}", r.json);
    assert_clean(&r);
}

#[test]
fn many_attack_runs_add_no_host_mounts() {
    // Mount namespace: every mount is made in the sandbox's private
    // namespace, so the host's table is unchanged after a mixed series.
    require_root!();
    let before = host_mounts();
    let mut runs = Vec::new();
    for script in [
        "mount -t tmpfs none /tmp 2>/dev/null; true",
        "unshare -m true 2>/dev/null; true",
        "sleep 100",
        "b() { b | b & }; b",
    ] {
        runs.push(sh(script).flags(&["--wall-time", "1"]).run());
    }
    for r in &runs {
        assert_clean(r);
    }
    let added: Vec<String> = host_mounts().difference(&before).cloned().collect();
    assert!(added.is_empty(), "mounts added on the host: {added:#?}");
}

#[test]
fn killing_formicary_during_a_fork_bomb_leaves_no_processes() {
    // init's parent-death signal; the pid namespace ends with init.
    require_root!();
    let mut child = sh("b() { b | b & }; b; sleep 100")
        .flags(&["--wall-time", "30"])
        .command(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn formicary");
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(800));
    let uids: BTreeSet<u32> = common::descendants(pid)
        .iter()
        .map(|p| p.uid)
        .filter(|u| (common::UID_BASE..common::UID_BASE + common::UID_COUNT).contains(u))
        .collect();
    child.kill().expect("kill formicary");
    child.wait().expect("reap formicary");
    assert!(!uids.is_empty(), "the sandbox had started");
    for uid in uids {
        let gone = common::eventually(Duration::from_secs(5), || {
            common::processes_of_uid(uid).is_empty()
        });
        assert!(gone, "uid {uid}: {:?}", common::processes_of_uid(uid));
    }
    // Its cgroups stay until the next Engine::new removes them (documented);
    // a later run of any formicary cleans them.
    let r = exec(&["true"]).run();
    assert_eq!(r.status(), "ok");
    let left = common::eventually(Duration::from_secs(3), || cgroups_of(pid).is_empty());
    assert!(left, "{:?}", cgroups_of(pid));
}
