//! The command line itself: pass-through mode, exit codes for programs
//! that cannot run, `check`, and flag errors.

mod common;

use common::{exec, sh, BIN};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn without_json_output_passes_through_and_exit_code_is_the_programs() {
    require_root!();
    let out = sh("echo to-stdout; echo to-stderr >&2; exit 7").output();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
}

#[test]
fn without_json_binary_output_passes_through_byte_for_byte() {
    require_root!();
    // Not UTF-8, a NUL, and on stderr too; and a megabyte of random bytes.
    let out = sh("printf '\\377\\376\\000abc\\n'; printf '\\200x' >&2").output();
    assert_eq!(out.stdout, b"\xff\xfe\x00abc\n");
    assert_eq!(out.stderr, b"\x80x");
    let out = sh("head -c 1000000 /dev/urandom | tee /tmp/r | sha256sum >&2; cat /tmp/r").output();
    let sum = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.stdout.len(), 1_000_000);
    let mut hasher = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    std::io::Write::write_all(&mut hasher.stdin.take().expect("stdin"), &out.stdout)
        .expect("feed sha256sum");
    let ours = hasher.wait_with_output().expect("sha256sum");
    assert_eq!(String::from_utf8_lossy(&ours.stdout), sum);
}

#[test]
fn missing_program_exits_127_with_a_one_line_reason() {
    require_root!();
    let out = exec(&["no-such-program-here"]).output();
    assert_eq!(out.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no-such-program-here") && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn non_executable_file_exits_126() {
    require_root!();
    let dir = common::scratch();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "#!/bin/sh\necho ran\n").expect("write file");
    let out = exec(&["./data.txt"])
        .flags(&["--file", data.to_str().expect("utf-8")])
        .output();
    assert_eq!(out.status.code(), Some(126));
    assert!(out.stdout.is_empty(), "it must not have run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

#[test]
fn an_executable_without_a_shebang_line_runs_as_a_shell_script_like_execvp() {
    require_root!();
    let dir = common::scratch();
    let script = dir.path().join("plain.sh");
    std::fs::write(&script, "echo \"$0 got $#: $*\"\n").expect("write file");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let file = script.to_str().expect("utf-8");
    let out = exec(&["./plain.sh", "a", "b c"])
        .flags(&["--file", file])
        .output();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "./plain.sh got 2: a b c\n"
    );

    // Past the arguments the fallback can carry, the kernel's answer stands.
    let many: Vec<String> = (0..1100).map(|i| i.to_string()).collect();
    let mut argv = vec!["./plain.sh"];
    argv.extend(many.iter().map(String::as_str));
    let out = exec(&argv).flags(&["--file", file]).output();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(out.stdout.is_empty(), "it must not have run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Exec format error"), "{stderr}");
}

#[test]
fn missing_program_in_json_mode_is_a_setup_error_with_exit_code_127() {
    require_root!();
    let r = exec(&["no-such-program-here"]).run();
    assert_eq!(r.status(), "setup_error");
    assert_eq!(r.exit_code(), Some(127));
    assert_eq!(r.code, 127);
}

#[test]
fn check_reports_ready_on_a_capable_host() {
    require_root!();
    let out = Command::new(BIN)
        .args(["check", "--json"])
        .output()
        .expect("run check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    assert_eq!(report["ready"], true, "{report:#}");
    assert_eq!(report["rootless"], false);
    let status = Command::new(BIN).arg("check").output().expect("run check");
    assert_eq!(status.status.code(), Some(0));
}

#[test]
fn malformed_limit_is_a_usage_error_naming_the_flag() {
    let out = exec(&["true"]).flags(&["--memory", "lots"]).output();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--memory") && stderr.contains("lots"),
        "{stderr}"
    );
}

#[test]
fn missing_program_argument_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["exec", "--json"])
        .output()
        .expect("run formicary");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

#[test]
fn limit_below_its_minimum_is_refused() {
    let out = exec(&["true"]).flags(&["--pids", "0"]).output();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--pids"), "{stderr}");
}

#[test]
fn json_mode_prints_a_setup_error_result_for_a_refused_request() {
    // Refused before any sandbox exists (no root needed): above a maximum,
    // a missing stdin file, an unknown language.
    for args in [
        &["exec", "--json", "--memory", "16G", "--", "true"][..],
        &["exec", "--json", "--stdin", "/nonexistent/in", "--", "true"],
        &["run", "--json", "--lang", "cobol", "--code", "x"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .output()
            .expect("run formicary");
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "{args:?}: {stdout}");
        let result: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON result");
        assert_eq!(result["status"], "setup_error", "{args:?}: {result}");
        let error = result["error"].as_str().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !error.is_empty() && stderr.contains(error),
            "{args:?}: {error:?} / {stderr}"
        );
    }
}
