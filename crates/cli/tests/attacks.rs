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
