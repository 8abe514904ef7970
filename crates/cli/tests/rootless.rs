//! formicary run by an unprivileged user (`nobody`, via setpriv): it must
//! refuse what it cannot enforce unless told to degrade, and then say what
//! it did not enforce.

mod common;

use common::BIN;
use std::process::{Command, Output};

/// Runs formicary as nobody (uid/gid 65534, no groups); None with a SKIP
/// line when that cannot be done here.
fn as_nobody(args: &[&str]) -> Option<Output> {
    if !common::is_root() {
        println!("SKIP: needs root to switch to nobody");
        return None;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("SKIP: setpriv is not installed");
        return None;
    }
    let probe = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--version",
        ])
        .output()
        .expect("run setpriv");
    if !probe.status.success() {
        println!(
            "SKIP: nobody cannot execute {BIN}: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        return None;
    }
    Some(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .current_dir("/")
            .output()
            .expect("run formicary as nobody"),
    )
}

#[test]
fn rootless_without_allow_degraded_is_refused_naming_the_flag() {
    let Some(out) = as_nobody(&["exec", "--", "id", "-u"]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-degraded"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing ran");
}

#[test]
fn rootless_with_allow_degraded_runs_as_1000_and_lists_what_is_not_enforced() {
    let Some(out) = as_nobody(&["exec", "--json", "--allow-degraded", "--", "id", "-u"]) else {
        return;
    };
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(json["status"], "ok", "{json:#}");
    assert_eq!(json["stdout"], "1000\n");
    assert_eq!(json["isolation"]["rootless"], true);
    assert_eq!(json["isolation"]["host_uid"], 65534);
    let not_enforced = json["isolation"]["not_enforced"]
        .as_array()
        .expect("not_enforced");
    assert!(
        not_enforced
            .iter()
            .any(|v| v.as_str().is_some_and(|s| s.contains("memory"))),
        "{not_enforced:?}"
    );
}
