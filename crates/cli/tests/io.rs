//! Data in and out of the sandbox: stdin, --file, --out/--out-dir, and
//! how output that is odd or cut short is reported.

mod common;

use common::{exec, sh};
use std::path::Path;
use std::time::{Duration, Instant};

/// Every path under `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            found.push(
                path.strip_prefix(dir)
                    .expect("beneath dir")
                    .to_string_lossy()
                    .into_owned(),
            );
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn the_program_can_open_its_own_stdout_and_stderr_again() {
    require_root!();
    // Shell habits: `> /dev/stdout`, `tee /dev/stderr`, /proc/self/fd/N.
    let r = sh("echo a > /dev/stdout; echo b | tee /dev/stderr; echo c > /proc/self/fd/2").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "a\nb\n");
    assert_eq!(r.stderr_of_program(), "b\nc\n");
}

#[test]
fn stdin_from_a_file_reaches_the_program() {
    require_root!();
    let dir = common::scratch();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "line one\nline two\n").expect("write input");
    let r = exec(&["cat"])
        .flags(&["--stdin", input.to_str().expect("utf-8 path")])
        .run();
    assert_eq!(r.stdout(), "line one\nline two\n");
}

#[test]
fn stdin_dash_passes_formicarys_own_stdin() {
    require_root!();
    let r = exec(&["wc", "-c"])
        .flag("--stdin")
        .flag("-")
        .host_stdin(&[b'z'; 100_000])
        .run();
    assert_eq!(r.stdout().trim(), "100000");
}

#[test]
fn without_stdin_flag_the_program_reads_eof() {
    require_root!();
    let r = exec(&["wc", "-c"]).host_stdin(b"not for the sandbox").run();
    assert_eq!(r.stdout().trim(), "0");
    assert_eq!(
        r.stderr_of_program(),
        "",
        "stdin must be open: {:?}",
        r.json
    );
}

#[test]
fn without_stdin_flag_stdin_is_an_open_dev_null() {
    require_root!();
    // Regression: init once closed every inherited descriptor and then
    // reopened /dev/null close-on-exec as fd 0, so the program started
    // with no stdin at all.
    let r = sh("readlink /proc/self/fd/0; cat; echo cat=$?").run();
    assert_eq!(r.stdout(), "/dev/null\ncat=0\n", "{:?}", r.json);
}

#[test]
fn the_program_starts_with_the_usual_umask() {
    require_root!();
    let r = sh("umask; touch /sandbox/f; stat -c %a /sandbox/f").run();
    assert_eq!(r.stdout(), "0022\n644\n", "{:?}", r.json);
}

#[test]
fn file_flag_copies_a_file_and_a_directory_keeping_relative_paths() {
    require_root!();
    let dir = common::scratch();
    let single = dir.path().join("single.txt");
    std::fs::write(&single, "one").expect("write file");
    let tree_dir = dir.path().join("tree");
    std::fs::create_dir_all(tree_dir.join("sub/deeper")).expect("mkdir");
    std::fs::write(tree_dir.join("top.txt"), "top").expect("write");
    std::fs::write(tree_dir.join("sub/deeper/leaf.txt"), "leaf").expect("write");
    let r = sh("cat single.txt renamed.txt data/top.txt data/sub/deeper/leaf.txt; echo; stat -c %U data/top.txt")
        .flags(&[
            "--file",
            single.to_str().expect("utf-8"),
            "--file",
            &format!("{}:renamed.txt", single.display()),
            "--file",
            &format!("{}:data", tree_dir.display()),
        ])
        .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(
        r.stdout(),
        "oneonetopleaf\nsandbox\n",
        "contents, and owned by the sandbox user"
    );
}

#[test]
fn out_collects_matching_regular_files_with_their_sizes() {
    require_root!();
    let dir = common::scratch();
    let out = dir.path().join("out");
    let r = sh(
        "echo hello > a.txt; mkdir -p res/deep; printf 12345 > res/deep/r.dat; echo no > skip.bin",
    )
    .flags(&["--out", "*.txt", "--out", "res/**"])
    .flags(&["--out-dir", out.to_str().expect("utf-8")])
    .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let mut files: Vec<(String, u64)> = r.json["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_string(),
                f["size"].as_u64().expect("size"),
            )
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![("a.txt".to_string(), 6), ("res/deep/r.dat".to_string(), 5)]
    );
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).expect("a.txt"),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("res/deep/r.dat")).expect("r.dat"),
        "12345"
    );
    assert!(!out.join("skip.bin").exists());
}

#[test]
fn planted_symlinks_to_host_files_are_not_followed_when_collecting() {
    require_root!();
    let dir = common::scratch();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "HOST SECRET").expect("write secret");
    let out = dir.path().join("out");
    let script = format!(
        "ln -s {s} leak.txt; ln -s {d} linkdir; mkdir real; ln -s {s} real/inner.txt; echo fine > ok.txt",
        s = secret.display(),
        d = dir.path().display()
    );
    let r = sh(&script)
        .flags(&["--out", "*.txt", "--out", "linkdir/**", "--out", "real/**"])
        .flags(&["--out-dir", out.to_str().expect("utf-8")])
        .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let paths: Vec<&str> = r.json["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, vec!["ok.txt"]);
    let copied = tree(&out);
    assert!(
        copied.iter().all(|p| p == "ok.txt" || p == "real"),
        "only ok.txt may be written: {copied:?}"
    );
    for p in &copied {
        let path = out.join(p);
        if path.is_file() {
            let content = std::fs::read_to_string(&path).expect("read copied file");
            assert!(!content.contains("HOST SECRET"), "{p} leaked the secret");
        }
    }
    assert_eq!(
        tree(dir.path()),
        {
            let mut expected: Vec<String> = vec!["out".into(), "secret".into()];
            expected.extend(copied.iter().map(|p| format!("out/{p}")));
            expected.sort();
            expected
        },
        "nothing is written outside the output directory"
    );
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "HOST SECRET"
    );
}

#[test]
fn fifo_is_not_copied_out_and_does_not_hang_collection() {
    require_root!();
    let dir = common::scratch();
    let out = dir.path().join("out");
    let started = Instant::now();
    let r = sh("mkfifo pipe.txt; echo x > real.txt")
        .flags(&["--out", "*.txt", "--out-dir", out.to_str().expect("utf-8")])
        .run();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.json["files"].as_array().expect("files").len(), 1);
    assert!(!out.join("pipe.txt").exists());
    assert!(out.join("real.txt").is_file());
}

#[test]
fn sandbox_path_with_dotdot_is_refused_before_running() {
    require_root!();
    let out = exec(&["true"])
        .flags(&["--file", "/etc/hostname:../escape"])
        .output();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without `..`"), "{stderr}");
}

#[test]
fn invalid_utf8_output_is_replaced_not_fatal() {
    require_root!();
    let r = exec(&["printf", "a\\377\\376b"]).run();
    assert_eq!(r.status(), "ok");
    assert_eq!(r.stdout(), "a\u{FFFD}\u{FFFD}b");
}

#[test]
fn partial_output_of_a_timed_out_run_is_kept() {
    require_root!();
    let r = sh("echo before; echo err-before >&2; sleep 100")
        .flags(&["--wall-time", "0.5"])
        .run();
    assert_eq!(r.status(), "timeout");
    assert_eq!(r.stdout(), "before\n");
    assert_eq!(r.stderr_of_program(), "err-before\n");
}

#[test]
fn output_written_just_before_exit_is_complete() {
    require_root!();
    let r = exec(&[
        "/usr/bin/python3",
        "-c",
        "import sys; sys.stdout.write('y' * 900000)",
    ])
    .run();
    assert_eq!(r.status(), "ok");
    assert_eq!(r.stdout().len(), 900_000);
    assert_eq!(r.json["stdout_truncated"], false);
}

#[test]
fn an_out_dir_that_is_a_file_is_refused_before_anything_runs() {
    require_root!();
    let dir = common::scratch();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").expect("write");
    let out = exec(&["sh", "-c", "echo ran"])
        .flags(&[
            "--out",
            "*",
            "--out-dir",
            not_a_dir.to_str().expect("utf-8"),
        ])
        .output();
    assert_eq!(out.status.code(), Some(125));
    assert!(out.stdout.is_empty(), "the program must not run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a directory"), "{stderr}");
}

#[test]
fn without_json_output_passes_through_while_the_program_still_runs() {
    require_root!();
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // The program writes a line to each stream, then waits for the wall
    // limit. Both lines must reach formicary's own stdout and stderr while
    // formicary (and so the program) is still running: before the pass
    // through, nothing came until the run's end.
    let mut child = sh("echo to-stdout; echo to-stderr >&2; sleep 30")
        .flags(&["--wall-time", "20"])
        .command(false)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start formicary");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let (mut line, mut err_line) = (String::new(), String::new());
    out.read_line(&mut line).expect("read stdout");
    err.read_line(&mut err_line).expect("read stderr");
    assert_eq!(line, "to-stdout\n");
    assert_eq!(err_line, "to-stderr\n");
    assert!(
        child.try_wait().expect("poll formicary").is_none(),
        "the lines came only once formicary had ended"
    );
    // Stop it (the signal stops the run cleanly): nothing is printed twice.
    // SAFETY: kill with integers; the child is ours and not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read the rest");
    assert_eq!(rest, "", "stdout repeated after the run");
    let status = child.wait().expect("wait for formicary");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let mut err_rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut err_rest).expect("read stderr");
    assert!(
        !err_rest.contains("to-stderr"),
        "stderr repeated: {err_rest}"
    );
}

#[test]
fn passed_through_output_is_whole_and_cut_at_the_output_limit() {
    require_root!();
    // More than a pipe holds, so the copy must wait for its reader.
    let out = sh("head -c 300000 /dev/zero | tr '\\0' x; echo; echo end >&2").output();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.len(), 300_001);
    assert!(out.stdout[..300_000].iter().all(|&b| b == b'x'));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "end\n");
    let out = sh("yes").flags(&["--output", "1000"]).output();
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(out.stdout.len(), 1000, "exactly what was kept");
}

/// The names of a `--profile` result's steps, in order.
fn steps(r: &common::Run) -> Vec<String> {
    r.json["profile"]
        .as_array()
        .unwrap_or_else(|| panic!("no profile: {:?}", r.json))
        .iter()
        .map(|step| step[0].as_str().expect("step name").to_string())
        .collect()
}

fn position(steps: &[String], name: &str) -> usize {
    steps
        .iter()
        .position(|s| s == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {steps:?}"))
}

#[test]
fn the_run_request_goes_ahead_of_the_root_only_when_nothing_is_copied_in() {
    require_root!();
    // Nothing to copy in: the request is sent while init builds its root,
    // and the program still runs, with its stdin.
    let plain = exec(&["cat"])
        .flags(&["--profile", "--stdin", "-"])
        .host_stdin(b"through the early request\n")
        .run();
    assert_eq!(plain.status(), "ok", "{:?}", plain.json);
    assert_eq!(plain.stdout(), "through the early request\n");
    let s = steps(&plain);
    assert!(
        position(&s, "send the run request") < position(&s, "init: mounts and pivot_root"),
        "{s:?}"
    );
    assert!(!s.iter().any(|step| step == "copy inputs in"), "{s:?}");

    // An input file: the request is the go-ahead that it is in /sandbox,
    // so it waits for the root and the copy.
    let dir = common::scratch();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "copied first\n").expect("write input");
    let input_flag = format!("{}:in.txt", input.display());
    let copied = exec(&["cat", "in.txt"])
        .flags(&["--profile", "--file", &input_flag])
        .run();
    assert_eq!(copied.status(), "ok", "{:?}", copied.json);
    assert_eq!(copied.stdout(), "copied first\n");
    let s = steps(&copied);
    let ready = position(&s, "init: mounts and pivot_root");
    let copy = position(&s, "copy inputs in");
    let request = position(&s, "send the run request");
    assert!(ready < copy && copy < request, "{s:?}");
}

/// `formicary exec ARGS` with `fd` closed in formicary itself, its stdout
/// (unless closed) and stderr piped.
fn exec_with_closed_fd(fd: libc::c_int, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(common::BIN);
    command
        .arg("exec")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: close(2) between fork and exec, on the child's own table.
    unsafe {
        command.pre_exec(move || {
            libc::close(fd);
            Ok(())
        });
    }
    command.output().expect("run formicary")
}

#[test]
fn a_closed_standard_stream_of_formicary_is_dev_null_not_a_file_it_opens() {
    require_root!();
    // formicary starts without stdout: its result goes to /dev/null, not
    // into a descriptor it opened for itself and found numbered 1 (its
    // signalfd, say, which refuses writes).
    let out = exec_with_closed_fd(1, &["--json", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn a_reader_gone_from_formicarys_stdout_does_not_kill_it() {
    require_root!();
    use std::os::unix::process::ExitStatusExt;
    // The program's output passes through to a pipe whose reader is gone:
    // formicary gets EPIPE, not SIGPIPE, and still ends with the program's
    // own exit code.
    let mut child = std::process::Command::new(common::BIN)
        .args(["exec", "--", "sh", "-c", "sleep 0.3; echo lost; exit 7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start formicary");
    drop(child.stdout.take());
    let status = child.wait().expect("wait for formicary");
    assert_eq!(
        status.signal(),
        None,
        "formicary died of a signal: {status:?}"
    );
    assert_eq!(status.code(), Some(7), "{status:?}");
}
