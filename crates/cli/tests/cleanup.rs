//! Nothing outlives a run: cgroups, processes of the sandbox's host uid,
//! and mounts, whether the run ended normally, by a limit, or because
//! formicary itself was killed.

mod common;

use common::{exec, python, sh, BIN};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const HIERARCHIES: [&str; 3] = ["memory", "pids", "cpuacct"];

/// The cgroups named after formicary process `pid` in any hierarchy.
fn cgroups_of(pid: u32) -> Vec<String> {
    let prefix = format!("{pid}-");
    let mut found = Vec::new();
    for h in HIERARCHIES {
        let parent = Path::new("/sys/fs/cgroup").join(h).join("formicary");
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && e.path().is_dir() {
                found.push(format!("{h}/formicary/{name}"));
            }
        }
    }
    found
}

fn host_mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .map(str::to_string)
        .collect()
}

fn in_sandbox_range(uid: u32) -> bool {
    (common::UID_BASE..common::UID_BASE + common::UID_COUNT).contains(&uid)
}

#[test]
fn fifty_mixed_runs_leave_no_cgroups_processes_or_mounts() {
    require_root!();
    let mounts_before = host_mounts();
    let mut pids = Vec::new();
    let mut uids = BTreeSet::new();
    for i in 0..50 {
        let run = match i % 5 {
            0 | 1 => exec(&["true"]).run(),
            2 => exec(&["sleep", "100"]).flags(&["--wall-time", "0.2"]).run(),
            3 => python("b = bytearray(100 << 20)")
                .flags(&["--memory", "32M"])
                .run(),
            _ => sh("yes").flags(&["--output", "1K"]).run(),
        };
        let expected = ["ok", "ok", "timeout", "memory_exceeded", "output_exceeded"][i % 5];
        assert_eq!(run.status(), expected, "run {i}: {:?}", run.json);
        pids.push(run.pid);
        uids.insert(run.host_uid());
    }
    for pid in &pids {
        assert_eq!(cgroups_of(*pid), Vec::<String>::new(), "formicary {pid}");
    }
    for uid in &uids {
        let gone = common::eventually(Duration::from_secs(2), || {
            common::processes_of_uid(*uid).is_empty()
        });
        assert!(gone, "uid {uid}: {:?}", common::processes_of_uid(*uid));
    }
    let added: Vec<String> = host_mounts().difference(&mounts_before).cloned().collect();
    assert!(added.is_empty(), "mounts added on the host: {added:#?}");
}

#[test]
fn killing_formicary_kills_the_whole_sandbox() {
    require_root!();
    let mut child = Command::new(BIN)
        .args([
            "exec",
            "--wall-time",
            "60",
            "--",
            "sh",
            "-c",
            "sleep 100 & sleep 100",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn formicary");
    let supervisor = child.id();
    let mut sandboxed = Vec::new();
    let started = common::eventually(Duration::from_secs(10), || {
        sandboxed = common::descendants(supervisor)
            .into_iter()
            .filter(|p| in_sandbox_range(p.uid))
            .collect();
        sandboxed.len() >= 2
    });
    assert!(started, "the program never started: {sandboxed:?}");
    let uid = sandboxed[0].uid;
    child.kill().expect("SIGKILL formicary");
    child.wait().expect("reap formicary");
    let gone = common::eventually(Duration::from_secs(1), || {
        common::processes_of_uid(uid).is_empty()
    });
    assert!(
        gone,
        "sandbox processes survived their supervisor: {:?}",
        common::processes_of_uid(uid)
    );
}

#[test]
fn cgroups_left_by_a_killed_formicary_are_removed_by_the_next_run() {
    require_root!();
    let mut child = Command::new(BIN)
        .args(["exec", "--", "sleep", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn formicary");
    let killed = child.id();
    let created = common::eventually(Duration::from_secs(10), || {
        cgroups_of(killed).len() == HIERARCHIES.len()
    });
    assert!(created, "cgroups appeared: {:?}", cgroups_of(killed));
    child.kill().expect("SIGKILL formicary");
    child.wait().expect("reap formicary");
    // Once its init is gone the cgroup is empty and can be removed.
    let empty = common::eventually(Duration::from_secs(2), || {
        common::descendants(killed).is_empty()
    });
    assert!(empty);
    std::thread::sleep(Duration::from_millis(200));
    let r = exec(&["true"]).run();
    assert_eq!(r.status(), "ok");
    assert_eq!(cgroups_of(killed), Vec::<String>::new());
}

#[test]
fn a_sandbox_that_fails_to_build_leaves_no_cgroup() {
    // Regression: a failure after the cgroup was created (here: a
    // read-only path the sandbox's host uid cannot reach, found by init
    // while it builds the root) returned without removing the cgroup.
    require_root!();
    let dir = common::scratch();
    let closed = dir.path().join("closed");
    let inside = closed.join("secret");
    std::fs::create_dir_all(&inside).expect("mkdir");
    std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod 700");
    let bind = format!("{}:/x", inside.display());
    let run = exec(&["true"]).flags(&["--ro-bind", &bind]).run();
    assert_eq!(run.status(), "setup_error", "{:?}", run.json);
    // The run request was already on its way (nothing to copy in): the
    // error is still the step that failed, not a lost connection.
    let error = run.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("bind a read-only host path"), "{error}");
    assert_eq!(cgroups_of(run.pid), Vec::<String>::new());
}

/// Sends `signal` to `pid` (a formicary this test started).
fn send(pid: u32, signal: libc::c_int) {
    // SAFETY: kill with integers; `pid` is this test's unreaped child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

#[test]
fn sigterm_or_sigint_stops_formicary_after_taking_its_sandbox_down() {
    require_root!();
    for (signal, code, name) in [
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGINT, 130, "SIGINT"),
    ] {
        // A wall time long enough that a run ended by it (exit 137)
        // cannot be mistaken for a stopped one.
        let child = Command::new(BIN)
            .args(["exec", "--json", "--wall-time", "60", "--", "sleep", "100"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn formicary");
        let pid = child.id();
        let created = common::eventually(Duration::from_secs(10), || {
            cgroups_of(pid).len() == HIERARCHIES.len()
        });
        assert!(created, "cgroups appeared: {:?}", cgroups_of(pid));
        send(pid, signal);
        let out = child.wait_with_output().expect("wait for formicary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(&format!("stopped by {name}")), "{stderr}");
        let result: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("the result object");
        let error = result["error"].as_str().unwrap_or_default();
        assert!(error.contains(name), "{result}");
        // Taken down before formicary exited: nothing for a later run.
        assert_eq!(cgroups_of(pid), Vec::<String>::new(), "{name}");
        assert!(common::descendants(pid).is_empty(), "{name}");
    }
}

#[test]
fn sigterm_stops_a_batch_and_takes_every_sandbox_down() {
    require_root!();
    let mut child = common::start_batch(&["--jobs", "2", "--warm", "2"]);
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(
        &mut stdin,
        b"{\"id\": 1, \"command\": [\"sleep\", \"100\"], \"limits\": {\"wall_time\": \"60\"}}\n",
    )
    .expect("write a request");
    // The request's sandbox and the ones built ahead: several cgroups.
    let built = common::eventually(Duration::from_secs(10), || {
        cgroups_of(pid).len() >= 2 * HIERARCHIES.len()
    });
    assert!(built, "cgroups: {:?}", cgroups_of(pid));
    send(pid, libc::SIGTERM);
    // stdin stays open: the batch must not wait for more input.
    let status = child.wait().expect("wait for formicary batch");
    drop(stdin);
    assert_eq!(status.code(), Some(143));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read the results");
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("one result line");
    assert_eq!(result["id"], 1, "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped by SIGTERM"), "{result}");
    assert_eq!(cgroups_of(pid), Vec::<String>::new());
    assert!(common::descendants(pid).is_empty());
}
