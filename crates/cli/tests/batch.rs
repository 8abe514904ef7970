//! `formicary batch`: JSON lines in, one result line per request out,
//! through sandboxes built ahead.

mod common;

use common::BIN;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

fn batch(args: &[&str], input: &str) -> (i32, Vec<Value>, String) {
    batch_bytes(args, input.as_bytes())
}

fn batch_bytes(args: &[&str], input: &[u8]) -> (i32, Vec<Value>, String) {
    let mut child = common::start_batch(args);
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write requests");
    let out = child.wait_with_output().expect("wait for formicary batch");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn by_id<'a>(lines: &'a [Value], id: &Value) -> &'a Value {
    lines
        .iter()
        .find(|l| &l["id"] == id)
        .unwrap_or_else(|| panic!("no result for id {id}: {lines:?}"))
}

#[test]
fn every_request_line_gets_its_own_result_line() {
    require_root!();
    let mut input = String::new();
    for i in 0..20 {
        input.push_str(&format!(
            "{{\"id\": {i}, \"command\": [\"sh\", \"-c\", \"cat; echo $N; cat in.txt\"], \"stdin\": \"s{i} \", \"env\": {{\"N\": \"n{i}\"}}, \"files\": {{\"in.txt\": \"f{i}\"}}}}\n"
        ));
    }
    input.push_str("{\"id\": \"mem\", \"command\": [\"python3\", \"-c\", \"x = bytearray(200 << 20)\"], \"limits\": {\"memory\": \"48M\"}}\n");
    input.push_str("\n{\"id\": \"bad\", \"command\": [\"true\"], \"bogus\": 1}\n");
    input.push_str(
        "{\"id\": \"toobig\", \"command\": [\"true\"], \"limits\": {\"memory\": \"1T\"}}\n",
    );
    let (code, lines, stderr) = batch(&["--jobs", "3", "--warm", "2"], &input);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 23, "{lines:?}");
    for i in 0..20 {
        let line = by_id(&lines, &Value::from(i));
        assert_eq!(line["status"], "ok", "{line}");
        assert_eq!(line["stdout"], format!("s{i} n{i}\nf{i}"), "{line}");
        assert!(line["latency_us"].as_u64().is_some_and(|l| l > 0), "{line}");
    }
    let mem = by_id(&lines, &Value::from("mem"));
    assert_eq!(mem["status"], "memory_exceeded", "{mem}");
    assert_eq!(mem["limits"]["memory_bytes"], 48u64 << 20);
    let bad = by_id(&lines, &Value::from("bad"));
    assert_eq!(bad["status"], "setup_error");
    assert!(
        bad["error"].as_str().is_some_and(|e| e.contains("bogus")),
        "{bad}"
    );
    let big = by_id(&lines, &Value::from("toobig"));
    assert_eq!(big["status"], "setup_error");
    assert!(
        big["error"].as_str().is_some_and(|e| e.contains("maximum")),
        "{big}"
    );
}

#[test]
fn zero_jobs_is_a_usage_error() {
    let (code, lines, stderr) = batch(&["--jobs", "0"], "");
    assert_eq!(code, 2, "{stderr}");
    assert!(lines.is_empty());
}

#[test]
fn a_line_that_is_not_utf8_is_refused_and_the_batch_goes_on() {
    require_root!();
    let mut input = b"{\"id\": 1, \"command\": [\"true\"]}\n".to_vec();
    input.extend_from_slice(b"{\"id\": 2, \"command\": [\"echo\", \"\xff\"]}\n");
    input.extend_from_slice(b"{\"id\": 3, \"command\": [\"echo\", \"after\"]}\n");
    let (code, lines, stderr) = batch_bytes(&["--jobs", "1"], &input);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let bad = lines
        .iter()
        .find(|l| l["status"] == "setup_error")
        .expect("the bad line's result");
    assert!(
        bad["error"].as_str().is_some_and(|e| e.contains("line 2")),
        "{bad}"
    );
    assert_eq!(by_id(&lines, &Value::from(3))["stdout"], "after\n");
}

/// The pids and command lines of `pid`'s children.
fn children_of(pid: u32) -> Vec<(String, String)> {
    common::host_processes()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .filter_map(|p| {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).ok()?;
            Some((
                p.pid.to_string(),
                String::from_utf8_lossy(&cmdline).replace('\0', " "),
            ))
        })
        .collect()
}

#[test]
fn batch_clones_sandboxes_from_its_spawner_which_ends_with_it() {
    require_root!();
    let mut child = common::start_batch(&["--jobs", "2", "--warm", "1"]);
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"{\"id\": 1, \"command\": [\"sleep\", \"2\"]}\n")
        .expect("write a request");
    stdin.flush().expect("flush");
    // While the request runs: one spawner, and the sandboxes' inits
    // (the running one, and the one built ahead), all batch's children.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let children = loop {
        let children = children_of(child.id());
        let inits = children
            .iter()
            .filter(|(_, c)| c.starts_with("formicary-init"))
            .count();
        if inits >= 2 || std::time::Instant::now() > deadline {
            break children;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let spawners: Vec<&String> = children
        .iter()
        .filter(|(_, c)| c.starts_with("formicary-spawner __formicary-spawner"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(spawners.len(), 1, "{children:?}");
    assert!(
        children
            .iter()
            .filter(|(_, c)| c.starts_with("formicary-init"))
            .count()
            >= 2,
        "{children:?}"
    );
    let spawner = std::path::Path::new("/proc").join(spawners[0]);
    drop(stdin);
    let out = child.wait_with_output().expect("wait for formicary batch");
    assert_eq!(out.status.code(), Some(0));
    let line: Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("one JSON result line");
    assert_eq!(line["status"], "ok", "{line}");
    // The spawner ended with the batch (its parent reaps it on the way out).
    let still = std::fs::read(spawner.join("cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&still).starts_with("formicary-spawner"),
        "the spawner outlived formicary batch"
    );
}

#[test]
fn the_spawner_is_not_a_command() {
    let out = Command::new(BIN)
        .arg("__formicary-spawner")
        .stdin(Stdio::null())
        .output()
        .expect("run formicary");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sandbox spawner"), "{stderr}");
}

#[test]
fn programs_in_sandboxes_built_ahead_start_with_default_signals() {
    // init cloned from the spawner does not reset signals itself: the
    // spawner reset its own when it started. A caller that ignores signals
    // (nohup, a service manager) must not pass that on through it.
    require_root!();
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(BIN);
    command
        .args(["batch", "--jobs", "1", "--warm", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: signal(2) between fork and exec, on the child's own
    // dispositions; async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            libc::signal(libc::SIGUSR1, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("start formicary batch");
    let request = "{\"id\": 1, \"command\": [\"sh\", \"-c\", \"grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -1\"]}\n";
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.repeat(2).as_bytes())
        .expect("write requests");
    let out = child.wait_with_output().expect("wait for formicary batch");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!(line["status"], "ok", "{line}");
        assert_eq!(
            line["stdout"], "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\ny\n",
            "{line}"
        );
        assert_eq!(line["stderr"], "", "yes wrote to a closed pipe and lived");
    }
}

/// The mount points under /proc in a sandbox's /proc/self/mountinfo: its
/// masks.
fn proc_masks(mountinfo: &str) -> Vec<String> {
    let mut masks: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with("/proc/"))
        .map(str::to_string)
        .collect();
    masks.sort();
    masks
}

#[test]
fn exec_and_batch_mask_the_same_proc_files() {
    require_root!();
    // `exec`'s root builder decides which /proc files to mask in the
    // sandbox's own /proc; a batch's sandboxes, built ahead, get the
    // supervisor's decision from the host's. The same kernel: the same
    // masks.
    let out = Command::new(BIN)
        .args(["exec", "--", "cat", "/proc/self/mountinfo"])
        .output()
        .expect("run formicary exec");
    assert_eq!(out.status.code(), Some(0));
    let by_builder = proc_masks(&String::from_utf8_lossy(&out.stdout));
    let (code, lines, stderr) = batch(
        &["--jobs", "1", "--warm", "1"],
        "{\"id\": 1, \"command\": [\"cat\", \"/proc/self/mountinfo\"]}\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let line = by_id(&lines, &Value::from(1));
    assert_eq!(line["status"], "ok", "{line}");
    let by_supervisor = proc_masks(line["stdout"].as_str().expect("stdout"));
    // kallsyms is readable by all on every kernel: always masked.
    assert!(
        by_builder.iter().any(|m| m == "/proc/kallsyms"),
        "{by_builder:?}"
    );
    assert_eq!(by_builder, by_supervisor);
}
