//! formicary run by an unprivileged user made up for the test (uid 4242, via setpriv): it must
//! refuse what it cannot enforce unless told to degrade, and then say what
//! it did not enforce.

mod common;

use common::BIN;
use std::process::{Command, Output};

/// A uid and gid that no account on the machine uses: an unprivileged user
/// made up for the test, sharing nothing with system daemons (as `nobody`
/// would).
const TEST_ID: &str = "4242";

/// Runs formicary as the test's own unprivileged user (uid/gid 4242, no
/// groups); None with a SKIP
/// line when that cannot be done here.
fn as_test_user(args: &[&str]) -> Option<Output> {
    if !common::is_root() {
        println!("SKIP: needs root to switch to the test user");
        return None;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("SKIP: setpriv is not installed");
        return None;
    }
    let probe = Command::new("setpriv")
        .args([
            &format!("--reuid={TEST_ID}"),
            &format!("--regid={TEST_ID}"),
            "--clear-groups",
            BIN,
            "--version",
        ])
        .output()
        .expect("run setpriv");
    if !probe.status.success() {
        println!(
            "SKIP: the test user cannot execute {BIN}: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        return None;
    }
    Some(
        Command::new("setpriv")
            .args([
                &format!("--reuid={TEST_ID}"),
                &format!("--regid={TEST_ID}"),
                "--clear-groups",
                BIN,
            ])
            .args(args)
            .current_dir("/")
            .output()
            .expect("run formicary as the test user"),
    )
}

#[test]
fn rootless_without_allow_degraded_is_refused_naming_the_flag() {
    let Some(out) = as_test_user(&["exec", "--", "id", "-u"]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-degraded"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing ran");
}

#[test]
fn rootless_with_allow_degraded_runs_as_1000_and_lists_what_is_not_enforced() {
    let Some(out) = as_test_user(&["exec", "--json", "--allow-degraded", "--", "id", "-u"]) else {
        return;
    };
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(json["status"], "ok", "{json:#}");
    assert_eq!(json["stdout"], "1000\n");
    assert_eq!(json["isolation"]["rootless"], true);
    assert_eq!(json["isolation"]["host_uid"].to_string(), TEST_ID);
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
