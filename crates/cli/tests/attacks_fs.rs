//! Filesystem escapes from inside the sandbox: reading host files, writing
//! outside `/sandbox` and `/tmp`, links, `..`, mounts, file handles, device
//! nodes and setuid binaries. Each test names the attack and the layer that
//! must stop it. Where two layers stop it (the mount namespace and
//! Landlock, say), the engine offers no switch to turn one off, so the test
//! shows only that the pair holds.
//!
//! Results come from the C probe in `common` (`CASE RESULT ERRNO`), so no
//! interpreter hides what the kernel answered.

mod common;

use common::{exec, probe_run, sh};

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EACCES: i32 = 13;
const EXDEV: i32 = 18;
const EROFS: i32 = 30;

/// Runs one probe case and returns its errno, after checking the run
/// itself ended normally (`ok`, exit 0) and the call failed.
fn refused(args: &[&str]) -> Option<(i32, common::Run)> {
    let r = probe_run(args)?;
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.exit_code(), Some(0), "{:?}", r.json);
    let line = r
        .stdout()
        .lines()
        .last()
        .expect("the probe reported")
        .to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{line}");
    assert_eq!(fields[0], args[0], "{line}");
    assert_eq!(fields[1], "-1", "the call succeeded: {line}");
    Some((fields[2].parse().expect("errno"), r))
}

/// The errno of a refused probe case.
macro_rules! errno_of {
    ($($arg:expr),+) => {{
        require_root!();
        let Some((errno, run)) = refused(&[$($arg),+]) else { return };
        (errno, run)
    }};
}

// --- reading host files -------------------------------------------------

#[test]
fn host_etc_shadow_is_not_in_the_sandbox() {
    // Mount namespace: the root is a fresh tmpfs; /etc holds only
    // generated files and a few binds.
    let (errno, _) = errno_of!("read", "/etc/shadow");
    assert_eq!(errno, ENOENT);
}

#[test]
fn host_root_home_is_not_in_the_sandbox() {
    // Mount namespace: /root is not bound.
    let (errno, _) = errno_of!("read", "/root/.bashrc");
    assert_eq!(errno, ENOENT);
}

#[test]
fn the_callers_home_is_not_in_the_sandbox() {
    // Mount namespace: no /home.
    let (errno, _) = errno_of!("read", "/home");
    assert_eq!(errno, ENOENT);
}

#[test]
fn a_host_file_in_the_test_scratch_dir_is_not_reachable_by_its_host_path() {
    // Mount namespace: the host's directories outside the configured binds
    // do not exist in the sandbox, whatever their permissions.
    require_root!();
    let dir = common::scratch();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "SECRET").expect("write secret");
    let Some((errno, _)) = refused(&["read", secret.to_str().expect("utf-8")]) else {
        return;
    };
    assert_eq!(errno, ENOENT);
}

#[test]
fn proc_1_root_does_not_lead_to_the_host_root() {
    // pid namespace + ptrace access checks: pid 1 is the sandbox's own
    // init, and its root link is refused to the program.
    let (errno, _) = errno_of!("read", "/proc/1/root/etc/shadow");
    assert_eq!(errno, EACCES);
}

#[test]
fn proc_1_cwd_does_not_lead_to_the_supervisors_directory() {
    // pid namespace + ptrace access checks (init is not dumpable).
    let (errno, _) = errno_of!("read", "/proc/1/cwd/Cargo.toml");
    assert_eq!(errno, EACCES);
}

#[test]
fn proc_of_a_host_process_is_not_visible() {
    // pid namespace: the test's own pid does not exist in the sandbox's
    // /proc (unless the pid collides with a sandbox pid, which are 1..3).
    require_root!();
    let me = std::process::id().to_string();
    let path = format!("/proc/{me}/cwd");
    let Some((errno, _)) = refused(&["read", &path]) else {
        return;
    };
    assert_eq!(errno, ENOENT);
}

#[test]
fn host_proc_entries_are_not_listed() {
    // pid namespace: /proc lists only the sandbox's processes.
    require_root!();
    let r = sh("ls /proc | grep -E '^[0-9]+$' | wc -l").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let n: u32 = r.stdout().trim().parse().expect("a count");
    assert!(n <= 5, "{n} pids visible: {}", r.stdout());
}

#[test]
fn proc_1_exe_cannot_be_read_back_to_the_host_binary() {
    // ptrace access checks: init is a clone of the supervisor and not
    // dumpable, so its exe link is refused.
    let (errno, _) = errno_of!("readlink", "/proc/1/exe");
    assert_eq!(errno, EACCES);
}

#[test]
fn sys_is_absent() {
    // Mount namespace: no /sys, so no host devices, cgroups or firmware.
    let (errno, _) = errno_of!("read", "/sys/kernel/notes");
    assert_eq!(errno, ENOENT);
}

#[test]
fn dot_dot_from_sandbox_stays_in_the_sandbox_root() {
    // Mount namespace (pivot_root): `..` at the root is the root.
    require_root!();
    let r = sh("cd /sandbox/../../../../.. && pwd && ls").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let mut lines = r.stdout().lines();
    assert_eq!(lines.next(), Some("/"));
    let names: Vec<&str> = lines.collect();
    assert!(!names.contains(&"root"), "{names:?}");
    assert!(!names.contains(&"home"), "{names:?}");
    assert!(names.contains(&"sandbox"), "{names:?}");
}

#[test]
fn dot_dot_through_proc_self_cwd_stays_inside() {
    // Mount namespace: /proc/self/cwd/.. resolves in the sandbox's tree.
    let (errno, _) = errno_of!("read", "/proc/self/cwd/../../../etc/shadow");
    assert_eq!(errno, ENOENT);
}

// --- writing outside /sandbox and /tmp ----------------------------------

#[test]
fn writing_into_usr_is_read_only() {
    // Mount namespace (read-only bind) and Landlock (no write rights).
    let (errno, _) = errno_of!("write", "/usr/bin/formicary-probe");
    assert_eq!(errno, EROFS);
}

#[test]
fn writing_into_etc_is_read_only() {
    // Mount namespace (read-only root tmpfs) and Landlock.
    let (errno, _) = errno_of!("write", "/etc/ld.so.preload");
    assert_eq!(errno, EROFS);
}

#[test]
fn writing_at_the_root_is_read_only() {
    // Mount namespace (read-only root tmpfs) and Landlock.
    let (errno, _) = errno_of!("write", "/evil");
    assert_eq!(errno, EROFS);
}

#[test]
fn writing_a_sysctl_is_read_only() {
    // Mount namespace: /proc is sealed read-only, /proc/sys included.
    let (errno, _) = errno_of!("write", "/proc/sys/kernel/hostname");
    assert_eq!(errno, EROFS);
}

#[test]
fn writing_core_pattern_is_read_only() {
    // Mount namespace: core_pattern would run a host program as root.
    let (errno, _) = errno_of!("write", "/proc/sys/kernel/core_pattern");
    assert_eq!(errno, EROFS);
}

#[test]
fn proc_sysrq_trigger_is_masked() {
    // Mount namespace: a nodev bind of /dev/null masks it (EACCES) where
    // the kernel has it; kernels without CONFIG_MAGIC_SYSRQ lack the file.
    let (errno, _) = errno_of!("write", "/proc/sysrq-trigger");
    assert!(
        errno == EACCES || errno == EROFS || errno == ENOENT,
        "errno {errno}"
    );
}

#[test]
fn renaming_a_bound_host_file_is_refused() {
    // Mount namespace: renames across or on read-only mounts fail.
    let (errno, _) = errno_of!("rename", "/usr/bin/env", "/sandbox/env");
    assert!(errno == EXDEV || errno == EROFS, "errno {errno}");
}

#[test]
fn unlinking_a_bound_host_file_is_refused() {
    // Mount namespace: read-only bind.
    let (errno, _) = errno_of!("unlink", "/usr/bin/env");
    assert_eq!(errno, EROFS);
}

#[test]
fn usr_is_unchanged_on_the_host_after_a_write_storm() {
    // Mount namespace and Landlock: a script tries every write it can
    // think of under /usr/share; the host directory is unchanged.
    require_root!();
    let dir = "/usr/share/formicary-attack-probe";
    let r = sh(&format!(
        "mkdir {dir}; touch {dir}; echo x > /usr/share/x; cp /bin/sh /usr/bin/sh2; \
         ln -s /x /usr/share/l; chmod 777 /usr/bin/env; true"
    ))
    .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(!std::path::Path::new(dir).exists());
    assert!(!std::path::Path::new("/usr/share/x").exists());
    assert!(!std::path::Path::new("/usr/bin/sh2").exists());
    assert!(std::fs::symlink_metadata("/usr/share/l").is_err());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/usr/bin/env")
        .expect("stat env")
        .permissions()
        .mode();
    assert_ne!(mode & 0o777, 0o777);
}

// --- links --------------------------------------------------------------

#[test]
fn hardlink_to_a_setuid_host_binary_is_refused() {
    // Mount namespace: /usr is another mount than /sandbox (EXDEV); a
    // hardlink would let the program keep a host inode.
    let (errno, _) = errno_of!("link", "/usr/bin/su", "/sandbox/su");
    assert_eq!(errno, EXDEV);
}

#[test]
fn symlink_to_proc_1_root_does_not_escape() {
    // pid namespace + ptrace checks: following a planted link is no
    // different from opening the target.
    let (errno, _) = errno_of!("symlink-read", "/proc/1/root/etc/hostname");
    assert_eq!(errno, EACCES);
}

#[test]
fn symlink_to_a_host_path_resolves_inside_the_sandbox() {
    // Mount namespace: a link's target is resolved in the sandbox's tree.
    let (errno, _) = errno_of!("symlink-read", "/root/.ssh/id_rsa");
    assert_eq!(errno, ENOENT);
}

#[test]
fn ro_bind_then_symlink_swap_does_not_widen_the_bind() {
    // Mount namespace: a --ro-bind stays read-only whatever links the
    // program plants next to it; the host directory is unchanged.
    require_root!();
    let dir = common::scratch();
    std::fs::write(dir.path().join("data"), "host data").expect("write");
    let before = common::snapshot(dir.path());
    let bind = format!("{}:/sandbox/in", dir.path().display());
    let r = sh("echo x > in/data; ln -s in/data l; echo x > l; rm -f in/data; mkdir in/new; true")
        .flags(&["--ro-bind", &bind])
        .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(common::snapshot(dir.path()), before);
}

#[test]
fn ro_bind_under_a_writable_directory_is_visible_and_read_only() {
    // /sandbox and /tmp are binds of the root's own tmpfs made writable
    // after the seal: a read-only host path bound under them must stay
    // read-only (not made writable with them) and must show (not be
    // hidden under them). The host directory and file are writable by
    // anyone, so only the mount stands between the program and them.
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let dir = common::scratch();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let file = dir.path().join("data");
    std::fs::write(&file, "host data").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let before = common::snapshot(dir.path());
    let in_sandbox = format!("{}:/sandbox/in", dir.path().display());
    let in_tmp = format!("{}:/tmp/in", dir.path().display());
    let r = sh("cat in/data /tmp/in/data; \
                for f in in/data in/new /tmp/in/data /tmp/in/new; do \
                  (echo x >> $f) 2>/dev/null && echo wrote $f; done; \
                touch /sandbox/mine && echo own-ok")
    .flags(&["--ro-bind", &in_sandbox, "--ro-bind", &in_tmp])
    .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "host datahost dataown-ok\n", "{:?}", r.json);
    assert_eq!(common::snapshot(dir.path()), before);
}

#[test]
fn ro_bind_over_a_writable_directory_is_refused() {
    // It would hide the sandbox's own /sandbox (or /tmp, /dev/shm).
    require_root!();
    for target in ["/sandbox", "/tmp", "/dev", "/"] {
        let bind = format!("/usr/share:{target}");
        let r = exec(&["true"]).flags(&["--ro-bind", &bind]).run();
        assert_eq!(r.status(), "setup_error", "{target}: {:?}", r.json);
        assert!(
            r.json["error"]
                .as_str()
                .is_some_and(|e| e.contains("would cover the sandbox's writable")),
            "{target}: {:?}",
            r.json
        );
    }
}

// --- mounts and roots ---------------------------------------------------

#[test]
fn mount_tmpfs_is_refused_by_seccomp() {
    // seccomp (EPERM, recorded); the user namespace would also refuse it
    // without CAP_SYS_ADMIN, which is dropped.
    let (errno, r) = errno_of!("mount-tmpfs", "/sandbox");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("mount"), 1);
}

#[test]
fn bind_mount_of_a_host_path_is_refused_by_seccomp() {
    // seccomp.
    let (errno, r) = errno_of!("mount-bind", "/usr", "/sandbox");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("mount"), 1);
}

#[test]
fn remounting_usr_read_write_is_refused_by_seccomp() {
    // seccomp; the binds are also locked by the user namespace.
    let (errno, r) = errno_of!("remount-rw", "/usr");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("mount"), 1);
}

#[test]
fn a_new_procfs_is_refused_by_seccomp() {
    // seccomp: a second procfs would drop the masks.
    let (errno, r) = errno_of!("mount-proc", "/tmp");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("mount"), 1);
}

#[test]
fn unmounting_a_proc_mask_is_refused_by_seccomp() {
    // seccomp: umount2 of the mask over /proc/kallsyms would reveal it.
    let (errno, r) = errno_of!("umount", "/proc/kallsyms");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("umount2"), 1);
}

#[test]
fn pivot_root_is_refused_by_seccomp() {
    // seccomp.
    let (errno, r) = errno_of!("pivot-root");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("pivot_root"), 1);
}

#[test]
fn chroot_is_refused_by_seccomp() {
    // seccomp (and no CAP_SYS_CHROOT): the classic chroot-twice escape.
    let (errno, r) = errno_of!("chroot", "/tmp");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("chroot"), 1);
}

#[test]
fn open_tree_clone_is_refused_by_seccomp() {
    // seccomp: the new mount API.
    let (errno, r) = errno_of!("open-tree", "/usr");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("open_tree"), 1);
}

#[test]
fn fsopen_is_refused_by_seccomp() {
    // seccomp: the new mount API.
    let (errno, r) = errno_of!("fsopen");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("fsopen"), 1);
}

#[test]
fn mount_setattr_to_clear_read_only_is_refused_by_seccomp() {
    // seccomp.
    let (errno, r) = errno_of!("mount-setattr", "/usr");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("mount_setattr"), 1);
}

#[test]
fn name_to_handle_at_is_refused_by_seccomp() {
    // seccomp: the first half of the shocker exploit.
    let (errno, r) = errno_of!("name-to-handle", "/usr");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("name_to_handle_at"), 1);
}

#[test]
fn open_by_handle_at_shocker_with_a_guessed_handle_is_refused() {
    // seccomp (and no CAP_DAC_READ_SEARCH).
    let (errno, r) = errno_of!("open-by-handle");
    assert_eq!(errno, EPERM);
    assert_eq!(r.denied("open_by_handle_at"), 1);
}

// --- device nodes -------------------------------------------------------

#[test]
fn mknod_of_dev_mem_is_refused() {
    // User namespace (no CAP_MKNOD in the initial namespace); /sandbox is
    // also nodev, so such a node could not be opened.
    let (errno, _) = errno_of!("mknod-chr", "/sandbox/mem", "1");
    assert_eq!(errno, EPERM);
}

#[test]
fn mknod_of_a_block_device_is_refused() {
    // User namespace (no CAP_MKNOD); nodev mount.
    let (errno, _) = errno_of!("mknod-blk", "/tmp/sda");
    assert_eq!(errno, EPERM);
}

#[test]
fn dev_holds_no_host_disk_or_tty() {
    // Mount namespace: /dev is built from five devices.
    require_root!();
    let r =
        sh("ls /dev/vda /dev/sda /dev/tty /dev/console /dev/kmsg /dev/mem 2>/dev/null; true").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "");
}

// --- setuid binaries from the host --------------------------------------

#[test]
fn su_gains_no_privilege() {
    // no_new_privs and the nosuid bind of /usr; root is not even mapped
    // in the user namespace.
    require_root!();
    let r = sh("su -c 'id -u' root </dev/null; echo rc=$?; id -u").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(
        !r.stdout().contains("\n0\n") && !r.stdout().starts_with("0\n"),
        "{}",
        r.stdout()
    );
    assert!(r.stdout().ends_with("1000\n"), "{}", r.stdout());
    assert!(!r.stdout().contains("rc=0"), "{}", r.stdout());
}

#[test]
fn passwd_cannot_change_the_host_shadow_file() {
    // no_new_privs, nosuid; the sandbox has no /etc/shadow at all.
    require_root!();
    let before = std::fs::read("/etc/shadow").ok();
    let r = sh("printf 'x\\nx\\n' | passwd sandbox; passwd -d root; echo rc=$?").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(!r.stdout().contains("rc=0"), "{}", r.stdout());
    assert_eq!(std::fs::read("/etc/shadow").ok(), before);
}

#[test]
fn a_root_owned_setuid_probe_bound_from_the_host_runs_as_the_sandbox_user() {
    // nosuid on every bind and no_new_privs: the host's setuid-root bit on
    // a --ro-bind file is ignored, and euid stays 1000.
    require_root!();
    let dir = common::scratch();
    let Some(bin) = common::attack_probe() else {
        return;
    };
    let suid = dir.path().join("suid-probe");
    std::fs::copy(&bin, &suid).expect("copy probe");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    let bind = format!("{}:/opt/bin", dir.path().display());
    let r = exec(&["/opt/bin/suid-probe", "ids"])
        .flags(&["--ro-bind", &bind])
        .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "ids 1000 1000 1000\n");
}

#[test]
fn a_setuid_bit_set_inside_the_sandbox_gives_nothing() {
    // nosuid on /sandbox and no_new_privs: the program's own setuid file
    // runs as itself (and it could only be setuid to 1000 anyway).
    require_root!();
    let Some(r) = common::probe(&[]).map(|_| {
        sh("cp ./probe ./s && chmod 4755 ./s && ./s ids")
            .flags(&[
                "--file",
                common::attack_probe()
                    .expect("probe")
                    .to_str()
                    .expect("utf-8"),
            ])
            .run()
    }) else {
        return;
    };
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "ids 1000 1000 1000\n");
}
