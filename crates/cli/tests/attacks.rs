//! Attacks from inside the sandbox, each named with the layer that must
//! stop it. A C probe compiled on the host (dynamically linked: the
//! sandbox binds /usr and /lib) makes the raw syscalls, so no libc wrapper
//! or interpreter hides what the kernel answered.

mod common;

use common::{exec, sh};

const PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *what, long r) {
    printf("%s %ld %d\n", what, r, r < 0 ? errno : 0);
}

int main(int argc, char **argv) {
    const char *a = argc > 1 ? argv[1] : "";
    long r;
    if (!strcmp(a, "clone-newuser")) {
        r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(42);
        report(a, r);
    } else if (!strcmp(a, "clone3-newuser")) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_NEWUSER;
        args.exit_signal = SIGCHLD;
        r = syscall(SYS_clone3, &args, sizeof args);
        if (r == 0) _exit(42);
        report(a, r);
    } else if (!strcmp(a, "io-uring")) {
        report(a, syscall(SYS_io_uring_setup, 8, NULL));
    } else if (!strcmp(a, "open-by-handle")) {
        report(a, syscall(SYS_open_by_handle_at, 0, NULL, 0));
    } else if (!strcmp(a, "bpf")) {
        report(a, syscall(SYS_bpf, 0, NULL, 0));
    } else if (!strcmp(a, "mount")) {
        report(a, syscall(SYS_mount, "none", "/sandbox", "tmpfs", 0, NULL));
    } else if (!strcmp(a, "aio")) {
        unsigned long ctx = 0;
        report(a, syscall(SYS_io_setup, 65536, &ctx));
    } else if (!strcmp(a, "socket-buffers")) {
        /* Memory that belongs to no process: full unix socket buffers,
           in many small children. */
        for (int c = 0; c < 30; c++) {
            if (fork() == 0) {
                for (int i = 0; i < 120; i++) {
                    int sv[2];
                    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0) break;
                    static char buf[65536];
                    while (write(sv[0], buf, sizeof buf) > 0) {}
                    while (write(sv[1], buf, sizeof buf) > 0) {}
                }
                pause();
            }
        }
        while (wait(NULL) > 0) {}
    } else if (!strcmp(a, "kill-init")) {
        kill(1, SIGKILL);
        usleep(200000);
        printf("still running\n");
    } else {
        printf("unknown attack %s\n", a);
        return 2;
    }
    return 0;
}
"#;

/// Runs the probe with `attack`; None (after a SKIP line) without gcc.
fn attack(attack: &str) -> Option<common::Run> {
    let dir = common::scratch();
    let probe = common::compile_c(dir.path(), "probe", PROBE)?;
    Some(
        exec(&["./probe", attack])
            .flags(&["--file", probe.to_str().expect("utf-8 path")])
            .run(),
    )
}

#[test]
fn nested_user_namespace_via_clone_is_stopped_by_seccomp() {
    require_root!();
    let Some(r) = attack("clone-newuser") else {
        return;
    };
    assert_eq!(r.stdout(), "clone-newuser -1 1\n", "{:?}", r.json);
    assert_eq!(r.denied("clone"), 1);
}

#[test]
fn clone3_cannot_smuggle_namespace_flags_past_seccomp() {
    require_root!();
    // seccomp cannot read clone3's flags (they are behind a pointer), so
    // clone3 must fail as a whole: ENOSYS makes glibc fall back to clone.
    let Some(r) = attack("clone3-newuser") else {
        return;
    };
    assert_eq!(r.stdout(), "clone3-newuser -1 38\n", "{:?}", r.json);
}

#[test]
fn io_uring_is_stopped_by_seccomp() {
    require_root!();
    let Some(r) = attack("io-uring") else {
        return;
    };
    assert_eq!(r.stdout(), "io-uring -1 1\n");
    assert_eq!(r.denied("io_uring_setup"), 1);
}

#[test]
fn open_by_handle_at_shocker_is_stopped_by_seccomp() {
    require_root!();
    let Some(r) = attack("open-by-handle") else {
        return;
    };
    assert_eq!(r.stdout(), "open-by-handle -1 1\n");
    assert_eq!(r.denied("open_by_handle_at"), 1);
}

#[test]
fn bpf_is_stopped_by_seccomp() {
    require_root!();
    let Some(r) = attack("bpf") else {
        return;
    };
    assert_eq!(r.stdout(), "bpf -1 1\n");
    assert_eq!(r.denied("bpf"), 1);
}

#[test]
fn mount_is_stopped_by_seccomp() {
    require_root!();
    let Some(r) = attack("mount") else {
        return;
    };
    assert_eq!(r.stdout(), "mount -1 1\n");
    assert_eq!(r.denied("mount"), 1);
}

#[test]
fn program_cannot_kill_the_sandbox_init() {
    require_root!();
    // The pid namespace's init ignores SIGKILL from inside its namespace;
    // were it to die, the program would die with it.
    let Some(r) = attack("kill-init") else {
        return;
    };
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "still running\n");
}

#[test]
fn usr_and_the_writable_mounts_are_nosuid_and_nodev() {
    require_root!();
    let r = exec(&["cat", "/proc/self/mountinfo"]).run();
    for target in ["/usr", "/sandbox", "/tmp", "/dev/shm"] {
        let line = r
            .stdout()
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(target))
            .unwrap_or_else(|| panic!("{target} is mounted: {}", r.stdout()));
        let options = line.split_whitespace().nth(5).expect("mount options");
        assert!(
            options.contains("nosuid") && options.contains("nodev"),
            "{target}: {options}"
        );
    }
}

#[test]
fn dev_holds_only_harmless_devices() {
    require_root!();
    let r = sh(concat!(
        "for f in /dev/* /dev/*/*; do ",
        "if [ ! -L \"$f\" ] && { [ -c \"$f\" ] || [ -b \"$f\" ]; }; then echo \"$f\"; fi; ",
        "done",
    ))
    .run();
    assert_eq!(
        r.stdout(),
        "/dev/full\n/dev/null\n/dev/random\n/dev/urandom\n/dev/zero\n",
        "{:?}",
        r.json
    );
}

#[test]
fn dev_shm_counts_against_the_disk_limit() {
    require_root!();
    let r = exec(&["dd", "if=/dev/zero", "of=/dev/shm/f", "bs=1M", "count=100"])
        .flags(&["--disk", "8M"])
        .run();
    assert!(
        r.stderr_of_program().contains("No space left"),
        "{:?}",
        r.json
    );
}

#[test]
fn aio_contexts_from_the_host_wide_quota_are_refused_by_seccomp() {
    require_root!();
    // Security review: io_setup draws on fs.aio-max-nr, shared by the whole
    // host; one sandbox could exhaust it for everyone.
    let Some(r) = attack("aio") else {
        return;
    };
    assert_eq!(r.stdout(), "aio -1 1\n", "{:?}", r.json);
    assert_eq!(r.denied("io_setup"), 1);
}

#[test]
fn memory_held_by_no_process_is_memory_exceeded_not_a_setup_error() {
    require_root!();
    // Security review: socket buffers are charged to the cgroup but to no
    // process, so the OOM killer used to pick the sandbox's init and the
    // run came back as `setup_error`. init is now the OOM killer's last
    // choice, and a run without an exit report is classified by the
    // cgroup's OOM counter.
    let dir = common::scratch();
    let Some(probe) = common::compile_c(dir.path(), "probe", PROBE) else {
        return;
    };
    let r = exec(&["./probe", "socket-buffers"])
        .flags(&[
            "--file",
            probe.to_str().expect("utf-8 path"),
            "--memory",
            "64M",
            "--wall-time",
            "8",
            "--pids",
            "64",
        ])
        .run();
    assert_eq!(r.status(), "memory_exceeded", "{:?}", r.json);
    assert!(r.hit("memory"));
}

#[test]
fn a_program_killing_itself_with_sigxcpu_is_not_reported_as_over_its_cpu_limit() {
    require_root!();
    // Security review: the verdict must come from what was measured, not
    // from the signal a program chose.
    let r = sh("kill -XCPU $$").run();
    assert_eq!(r.status(), "signaled", "{:?}", r.json);
    assert!(!r.hit("cpu_time"), "{:?}", r.json);
}

#[test]
fn the_host_boot_id_is_masked() {
    require_root!();
    // Unique per host boot: two sandboxes could tell they share a host.
    let r = sh("cat /proc/sys/kernel/random/boot_id 2>&1; echo done").run();
    assert!(
        !r.stdout().contains('-') || r.stdout().contains("denied"),
        "{:?}",
        r.json
    );
    assert!(r.stdout().ends_with("done\n"));
}
