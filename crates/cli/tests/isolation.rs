//! What the program inside the sandbox can see and do: identity,
//! namespaces, filesystem, privileges, environment, descriptors, seccomp,
//! network. Each test checks from inside the sandbox and fails if the
//! layer that gives the property is missing.

mod common;

use common::{exec, python, sh};

#[test]
fn program_runs_as_uid_and_gid_1000_named_sandbox() {
    require_root!();
    let r = exec(&["id"]).run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(
        r.stdout()
            .starts_with("uid=1000(sandbox) gid=1000(sandbox)"),
        "id printed {:?}",
        r.stdout()
    );
}

#[test]
fn services_and_protocols_resolve_by_name() {
    require_root!();
    let r = python(
        "import socket; print(socket.getservbyname('https'), socket.getprotobyname('tcp'), \
         socket.getaddrinfo('localhost', 'http', type=socket.SOCK_STREAM)[0][4][1])",
    )
    .run();
    assert_eq!(r.stdout(), "443 6 80\n", "{:?}", r.json);
}

#[test]
fn hostname_is_sandbox() {
    require_root!();
    let r = python("import os; print(os.uname().nodename)").run();
    assert_eq!(r.stdout().trim(), "sandbox");
}

#[test]
fn no_supplementary_groups_of_the_host_are_kept() {
    require_root!();
    let r = exec(&["id", "-G"]).run();
    assert_eq!(r.stdout().trim(), "1000", "groups: {:?}", r.stdout());
    let r = sh("grep '^Groups:' /proc/self/status").run();
    assert_eq!(
        r.stdout().trim_end().trim_end_matches(['\t', ' ']),
        "Groups:",
        "the kernel's list of supplementary groups must be empty"
    );
}

#[test]
fn program_is_not_pid_1_and_sees_only_the_sandbox_processes() {
    require_root!();
    let r = python(
        "import os; print(os.getpid()); print(' '.join(sorted(e for e in os.listdir('/proc') if e.isdigit())))",
    )
    .run();
    let mut lines = r.stdout().lines();
    let pid: u32 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .expect("the probe prints its pid");
    assert_ne!(pid, 1, "the program must not be the pid namespace's init");
    let pids: Vec<u32> = lines
        .next()
        .expect("the probe lists /proc")
        .split_whitespace()
        .map(|p| p.parse().expect("numeric /proc entry"))
        .collect();
    assert!(pids.contains(&pid), "its own pid is listed: {pids:?}");
    assert!(
        pids.len() <= 3 && pids.iter().all(|&p| p < 10),
        "only init and the program are visible, host processes are not: {pids:?}"
    );
}

#[test]
fn only_the_loopback_interface_exists() {
    require_root!();
    let r = exec(&["cat", "/proc/net/dev"]).run();
    let interfaces: Vec<&str> = r
        .stdout()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, vec!["lo"], "{}", r.stdout());
}

#[test]
fn root_and_usr_are_read_only_while_sandbox_and_tmp_are_writable() {
    require_root!();
    let r = sh(concat!(
        "touch /x 2>/dev/null && echo root-writable;",
        "touch /usr/x 2>/dev/null && echo usr-writable;",
        "touch /sandbox/x && echo sandbox-ok;",
        "touch /tmp/x && echo tmp-ok",
    ))
    .run();
    assert_eq!(r.stdout(), "sandbox-ok\ntmp-ok\n", "{:?}", r.json);
}

#[test]
fn host_only_paths_are_absent() {
    require_root!();
    let dir = common::scratch();
    std::fs::write(dir.path().join("marker"), "host secret").expect("write marker");
    let marker = dir.path().join("marker");
    let marker = marker.to_str().expect("utf-8 path");
    let script = format!(
        "for p in /sys /root /home /etc/shadow {marker} {}; do test -e \"$p\" && echo \"visible $p\"; done; echo done",
        env!("CARGO_MANIFEST_DIR")
    );
    let r = sh(&script).run();
    assert_eq!(r.stdout(), "done\n", "{:?}", r.json);
}

#[test]
fn sensitive_proc_files_read_empty() {
    require_root!();
    let r = sh(
        "for f in /proc/kcore /proc/kallsyms /proc/keys /proc/timer_list /proc/sched_debug /proc/modules; do test -e $f && printf '%s %s\\n' $f $(wc -c < $f 2>/dev/null || echo 0); done",
    )
    .run();
    assert!(
        r.stdout().contains("/proc/kallsyms "),
        "probe saw kallsyms: {:?}",
        r.json
    );
    for line in r.stdout().lines() {
        assert!(line.ends_with(" 0"), "masked file has content: {line}");
    }
}

#[test]
fn every_capability_set_is_empty_and_no_new_privs_is_set() {
    require_root!();
    let r = exec(&["cat", "/proc/self/status"]).run();
    let field = |name: &str| {
        r.stdout()
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
            .to_string()
    };
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(set), "0000000000000000", "{set}");
    }
    assert_eq!(field("NoNewPrivs:"), "1");
}

#[test]
fn seccomp_filter_is_installed() {
    require_root!();
    let r = sh("grep '^Seccomp:' /proc/self/status").run();
    assert_eq!(r.stdout(), "Seccomp:\t2\n", "2 is SECCOMP_MODE_FILTER");
}

#[test]
fn environment_is_exactly_the_clean_set_plus_env_flags() {
    require_root!();
    let r = python("import os, json; print(json.dumps(dict(os.environ)))")
        .flags(&["--env", "EXTRA=yes", "--env", "HOME=/sandbox/home"])
        .host_env("FORMICARY_TEST_SECRET", "hunter2")
        .run();
    let env: serde_json::Value =
        serde_json::from_str(r.stdout().trim()).expect("the probe prints its environment as JSON");
    let expected = serde_json::json!({
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "HOME": "/sandbox/home",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "EXTRA": "yes",
    });
    assert_eq!(env, expected, "the host's variables must not leak");
}

#[test]
fn inherited_file_descriptors_are_closed() {
    require_root!();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 7</etc/hostname 9>&1; exec {} exec --json -- ls /proc/self/fd",
            common::BIN
        ))
        .output()
        .expect("run formicary through bash");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON result");
    let fds: Vec<u32> = json["stdout"]
        .as_str()
        .expect("stdout")
        .split_whitespace()
        .map(|f| f.parse().expect("numeric fd"))
        .collect();
    // 0-2 and the directory ls itself opened to list them.
    assert!(
        fds.len() <= 4 && fds.iter().filter(|&&f| f > 2).count() <= 1,
        "only stdio (and ls's own directory fd) may be open: {fds:?}"
    );
    assert!(!fds.contains(&7) && !fds.contains(&9), "{fds:?}");
}

#[test]
fn program_starts_with_default_signal_dispositions_and_nothing_blocked() {
    require_root!();
    // formicary (Rust) ignores SIGPIPE itself; the program must not
    // inherit that: `yes | head -1` ends yes with SIGPIPE, silently.
    let r = sh("grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -1").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(
        r.stdout(),
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\ny\n"
    );
    assert_eq!(
        r.stderr_of_program(),
        "",
        "yes wrote to a closed pipe and lived"
    );
}

#[test]
fn program_leads_its_own_session() {
    require_root!();
    let r =
        python("import os; print(os.getsid(0) == os.getpid(), os.getpgrp() == os.getpid())").run();
    assert_eq!(r.stdout().trim(), "True True");
}

#[test]
fn denied_syscall_fails_with_eperm_and_is_recorded() {
    require_root!();
    let r = python(concat!(
        "import ctypes\n",
        "libc = ctypes.CDLL(None, use_errno=True)\n",
        "print(libc.syscall(101, 0, 0, 0, 0), ctypes.get_errno())\n", // ptrace(PTRACE_TRACEME)
    ))
    .run();
    assert_eq!(r.stdout().trim(), "-1 1", "ptrace must fail with EPERM");
    assert_eq!(r.denied("ptrace"), 1, "{:?}", r.json["denied_syscalls"]);
}

#[test]
fn unshare_is_denied_and_recorded() {
    require_root!();
    let r = python(concat!(
        "import ctypes\n",
        "libc = ctypes.CDLL(None, use_errno=True)\n",
        "print(libc.unshare(0x10000000), ctypes.get_errno())\n", // CLONE_NEWUSER
    ))
    .run();
    assert_eq!(r.stdout().trim(), "-1 1", "unshare must fail with EPERM");
    assert_eq!(r.denied("unshare"), 1, "{:?}", r.json["denied_syscalls"]);
}

#[test]
fn unknown_syscall_number_fails_with_enosys_and_is_recorded() {
    require_root!();
    let r = python(concat!(
        "import ctypes\n",
        "libc = ctypes.CDLL(None, use_errno=True)\n",
        "print(libc.syscall(999), ctypes.get_errno())\n",
    ))
    .run();
    assert_eq!(
        r.stdout().trim(),
        "-1 38",
        "syscall 999 must fail with ENOSYS"
    );
    let denied = r.json["denied_syscalls"]
        .as_object()
        .expect("denied_syscalls is an object");
    assert!(
        denied.keys().any(|k| k.contains("999")),
        "the unknown number is recorded: {denied:?}"
    );
}

#[test]
fn netlink_sockets_cannot_be_created() {
    require_root!();
    let r = python(concat!(
        "import socket\n",
        "try:\n",
        "    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); print('created')\n",
        "except OSError as e:\n",
        "    print('refused', e.errno)\n",
    ))
    .run();
    assert!(r.stdout().starts_with("refused"), "{:?}", r.json);
}

#[test]
fn tcp_connect_to_loopback_is_refused_by_landlock() {
    require_root!();
    // A listener inside the sandbox's own netns: only Landlock can stop the
    // connect (the network namespace alone would let it through).
    let r = python(concat!(
        "import socket\n",
        "srv = socket.socket()\n",
        "try:\n",
        "    srv.bind(('127.0.0.1', 0)); srv.listen(1); port = srv.getsockname()[1]\n",
        "except OSError as e:\n",
        "    port = 9\n",
        "c = socket.socket()\n",
        "try:\n",
        "    c.connect(('127.0.0.1', port)); print('connected')\n",
        "except OSError as e:\n",
        "    print('refused', e.errno)\n",
    ))
    .run();
    // EACCES is Landlock's answer; ECONNREFUSED (111) would mean the
    // connect reached the network stack.
    assert_eq!(r.stdout().trim(), "refused 13", "{:?}", r.json);
}

#[test]
fn concurrent_sandboxes_run_as_different_host_uids() {
    require_root!();
    let a = std::thread::spawn(|| exec(&["sleep", "1"]).run());
    let b = std::thread::spawn(|| exec(&["sleep", "1"]).run());
    let a = a.join().expect("first run");
    let b = b.join().expect("second run");
    assert_eq!((a.status(), b.status()), ("ok", "ok"));
    assert!(a.host_uid() >= common::UID_BASE, "{}", a.host_uid());
    assert_ne!(a.host_uid(), b.host_uid());
}
