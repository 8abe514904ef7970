//! Privilege attacks from inside the sandbox: capabilities, set*id, nested
//! namespaces, ptrace, overwriting the runtime's binary (runc
//! CVE-2019-5736), descriptors leaked by the caller (runc CVE-2024-21626),
//! terminal injection (CVE-2019-10063), cgroup v1 `release_agent`
//! (CVE-2022-0492), and the kernel surfaces the seccomp allow-list closes
//! (keyrings, bpf, perf, userfaultfd, io_uring, modules, personality, the
//! i386 and x32 system call ABIs). Each test names the attack and the layer
//! that must stop it. Only one layer can be observed at a time: the engine
//! has no switch to disable seccomp or Landlock, so where a second layer
//! (dropped capabilities, say) would also stop the attack the comment says
//! so.

mod common;

use common::{probe_run, BIN};
use std::process::{Command, Stdio};

const EPERM: &str = "1";
const EINVAL: &str = "22";
const EACCES: &str = "13";
const ETXTBSY: &str = "26";
const ENOSYS_NEG: &str = "-38";

/// Runs a probe case and returns its output line's fields after checking
/// the run ended `ok`.
fn case(args: &[&str]) -> Option<(Vec<String>, common::Run)> {
    let r = probe_run(args)?;
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let line = r
        .stdout()
        .lines()
        .last()
        .expect("a report line")
        .to_string();
    Some((line.split_whitespace().map(str::to_string).collect(), r))
}

/// Asserts that probe case `args` failed with `errno` and that seccomp
/// recorded `denied` (when given) exactly once.
fn assert_refused(args: &[&str], errno: &str, denied: Option<&str>) {
    require_root!();
    let Some((f, r)) = case(args) else {
        return;
    };
    assert_eq!(f, [args[0], "-1", errno], "{:?}", r.json);
    if let Some(name) = denied {
        assert_eq!(r.denied(name), 1, "{:?}", r.json["denied_syscalls"]);
    }
}

// --- capabilities and ids -----------------------------------------------

#[test]
fn every_capability_set_is_empty_and_no_new_privs_is_set() {
    // capabilities (dropped by init) and no_new_privs.
    require_root!();
    let Some((_, r)) = case(&["caps"]) else {
        return;
    };
    assert_eq!(
        r.stdout(),
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n"
    );
}

#[test]
fn capset_cannot_raise_capabilities() {
    // capabilities: the permitted set is empty, so capset fails.
    assert_refused(&["capset"], EPERM, None);
}

#[test]
fn ambient_cap_sys_admin_cannot_be_raised() {
    // capabilities: ambient raise needs it in permitted and inheritable.
    assert_refused(&["ambient-raise"], EPERM, None);
}

#[test]
fn securebits_cannot_be_changed() {
    // capabilities: PR_SET_SECUREBITS needs CAP_SETPCAP.
    assert_refused(&["keep-caps"], EPERM, None);
}

#[test]
fn setresuid_to_root_fails_because_root_is_not_mapped() {
    // user namespace: only 1000 is mapped (EINVAL for an unmapped id).
    assert_refused(&["setuid0"], EINVAL, None);
}

#[test]
fn setresgid_to_root_fails_because_root_is_not_mapped() {
    // user namespace.
    assert_refused(&["setgid0"], EINVAL, None);
}

#[test]
fn setgroups_cannot_add_group_zero() {
    // capabilities (no CAP_SETGID).
    assert_refused(&["setgroups0"], EPERM, None);
}

#[test]
fn the_program_runs_as_1000_with_a_per_run_host_uid() {
    // user namespace: the sandbox's 1000 is a leased host uid in the range.
    require_root!();
    let Some((f, r)) = case(&["ids"]) else {
        return;
    };
    assert_eq!(f, ["ids", "1000", "1000", "1000"]);
    let uid = r.host_uid();
    assert!((common::UID_BASE..common::UID_BASE + common::UID_COUNT).contains(&uid));
}

// --- namespaces inside --------------------------------------------------

#[test]
fn unshare_newuser_is_refused_by_seccomp() {
    // seccomp (unshare is denied whatever its flags).
    assert_refused(&["unshare", "0x10000000"], EPERM, Some("unshare"));
}

#[test]
fn unshare_newns_is_refused_by_seccomp() {
    // seccomp; capabilities would refuse it too.
    assert_refused(&["unshare", "0x20000"], EPERM, Some("unshare"));
}

#[test]
fn setns_into_init_mount_namespace_is_refused_by_seccomp() {
    // seccomp (and /proc/1/ns is not the program's to open).
    assert_refused(&["setns"], EPERM, Some("setns"));
}

#[test]
fn clone_newnet_is_refused_by_seccomp() {
    // seccomp argument rule on clone's flags.
    assert_refused(&["clone", "0x40000000"], EPERM, Some("clone"));
}

#[test]
fn clone_newuser_with_high_bits_set_is_still_refused() {
    // seccomp: the flags check is on the low 32 bits, so junk in the high
    // half of the 64-bit argument does not slip past it.
    assert_refused(&["clone", "0x100010000000"], EPERM, Some("clone"));
}

#[test]
fn clone3_newuser_fails_with_enosys() {
    // seccomp: clone3 is refused as a whole (its flags are in memory).
    assert_refused(&["clone3", "0x10000000"], "38", None);
}

#[test]
fn plain_clone_still_works() {
    // Control: the rule refuses only namespace flags.
    require_root!();
    let Some((f, _)) = case(&["clone", "0"]) else {
        return;
    };
    assert_eq!(f, ["clone", "1", "0"]);
}

// --- ptrace and other processes' memory ---------------------------------

#[test]
fn ptrace_attach_to_init_is_refused_by_seccomp() {
    // seccomp; init is also not dumpable.
    assert_refused(&["ptrace-attach", "1"], EPERM, Some("ptrace"));
}

#[test]
fn ptrace_attach_to_own_child_is_refused_by_seccomp() {
    // seccomp: tracing defeats the filter of the tracee.
    assert_refused(&["ptrace-child"], EPERM, Some("ptrace"));
}

#[test]
fn ptrace_traceme_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["ptrace-traceme"], EPERM, Some("ptrace"));
}

#[test]
fn process_vm_readv_of_init_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["process-vm-readv"], EPERM, Some("process_vm_readv"));
}

#[test]
fn pidfd_getfd_of_init_is_refused_by_seccomp() {
    // seccomp: init holds the message socket and the Landlock ruleset.
    assert_refused(&["pidfd-getfd"], EPERM, Some("pidfd_getfd"));
}

#[test]
fn sigkill_to_init_does_not_end_the_sandbox_early() {
    // pid namespace: init is immune to signals from its own namespace.
    require_root!();
    let Some((f, r)) = case(&["kill", "1", "9"]) else {
        return;
    };
    assert_eq!(f, ["kill", "0", "0"]);
    assert_eq!(r.exit_code(), Some(0));
}

// --- the runtime's binary (CVE-2019-5736) --------------------------------

#[test]
fn proc_self_exe_cannot_be_opened_for_writing() {
    // The kernel (ETXTBSY on a running binary); the file is also on a
    // read-only mount (the copy in /sandbox is the program's own).
    assert_refused(&["open-exe-write", "/proc/self/exe"], ETXTBSY, None);
}

#[test]
fn proc_1_exe_the_formicary_binary_cannot_be_opened_for_writing() {
    // ptrace access checks: init is a clone of formicary, not dumpable.
    require_root!();
    let before = std::fs::read(BIN).expect("read formicary");
    assert_refused(&["open-exe-write", "/proc/1/exe"], EACCES, None);
    assert_eq!(std::fs::read(BIN).expect("read formicary"), before);
}

#[test]
fn an_interpreter_cannot_overwrite_its_host_binary_through_proc_self_exe() {
    // File permissions of the host uid (EACCES: root owns the binary), the
    // read-only /usr bind and Landlock: python3 is a host binary here,
    // unlike the probe.
    require_root!();
    let r = common::python(
        "import os\ntry:\n os.open('/proc/self/exe', os.O_WRONLY)\n print('opened')\nexcept OSError as e:\n print(e.errno)",
    )
    .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(
        ["13\n", "26\n", "30\n"].contains(&r.stdout()),
        "{}",
        r.stdout()
    );
}

// --- descriptors leaked by the caller (CVE-2024-21626) ------------------

/// Runs the probe with `args` from a shell that leaves fds 7 (a host
/// directory) and 8 (a host file) open, without close-on-exec, across the
/// exec of formicary.
fn with_leaked_fds(args: &str) -> Option<common::Run> {
    let bin = common::attack_probe()?;
    let dir = common::scratch();
    std::fs::write(dir.path().join("secret"), "SECRET").expect("write secret");
    let script = format!(
        "exec 7<'{d}' 8<'{d}/secret'; exec '{BIN}' exec --json --file '{p}' -- ./probe {args}",
        d = dir.path().display(),
        p = bin.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    let json = serde_json::from_slice(&out.stdout).expect("one JSON result");
    Some(common::Run {
        code: out.status.code().expect("exited"),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        pid: 0,
    })
}

#[test]
fn descriptors_inherited_by_formicary_are_closed_before_the_program_runs() {
    // init closes every inherited fd (close_range), and the program's fds
    // above 2 are close-on-exec.
    require_root!();
    let Some(r) = with_leaked_fds("fds") else {
        return;
    };
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "fds 0\n");
}

#[test]
fn openat_through_a_leaked_host_directory_fd_finds_nothing() {
    // init's close_range: no fd is left to resolve `secret` against.
    require_root!();
    let Some(r) = with_leaked_fds("openat-fd secret") else {
        return;
    };
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "openat-fd hits 0\n");
}

#[test]
fn the_working_directory_is_not_a_host_directory() {
    // Mount namespace: the cwd is set inside the new root (the runc bug
    // left the cwd in a host directory).
    require_root!();
    let Some((f, _)) = case(&["cwd"]) else {
        return;
    };
    assert_eq!(f, ["cwd", "/sandbox"]);
}

// --- terminal injection ---------------------------------------------------

#[test]
fn tiocsti_is_refused_by_seccomp() {
    // seccomp ioctl rule; setsid also leaves no controlling terminal.
    assert_refused(&["tiocsti", "0"], EPERM, Some("ioctl"));
}

#[test]
fn tiocsti_with_high_bits_in_the_command_is_refused_cve_2019_10063() {
    // seccomp: the rule compares the low 32 bits, which the kernel uses.
    assert_refused(&["tiocsti", "0x100000000"], EPERM, Some("ioctl"));
}

#[test]
fn tioclinux_is_refused_by_seccomp() {
    // seccomp ioctl rule.
    assert_refused(&["tioclinux", "0"], EPERM, Some("ioctl"));
}

#[test]
fn tioclinux_with_high_bits_in_the_command_is_refused() {
    // seccomp: CVE-2019-10063 class.
    assert_refused(&["tioclinux", "0xffffffff00000000"], EPERM, Some("ioctl"));
}

// --- cgroup release_agent (CVE-2022-0492) --------------------------------

#[test]
fn mounting_cgroup_v1_for_release_agent_is_refused() {
    // seccomp (mount); the user namespace would also refuse a v1 cgroupfs.
    assert_refused(&["mount-cgroup", "/tmp"], EPERM, Some("mount"));
}

#[test]
fn no_cgroupfs_is_visible_for_a_release_agent() {
    // Mount namespace: no /sys, so no cgroupfs to write to.
    require_root!();
    let Some((f, _)) = case(&["read", "/sys/fs/cgroup/memory/release_agent"]) else {
        return;
    };
    assert_eq!(f, ["read", "-1", "2"]);
}

// --- kernel surfaces ------------------------------------------------------

#[test]
fn add_key_is_refused_by_seccomp() {
    // seccomp: keyrings are not namespaced.
    assert_refused(&["add-key"], EPERM, Some("add_key"));
}

#[test]
fn keyctl_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["keyctl"], EPERM, Some("keyctl"));
}

#[test]
fn request_key_is_refused_by_seccomp() {
    // seccomp: request_key can run a host upcall.
    assert_refused(&["request-key"], EPERM, Some("request_key"));
}

#[test]
fn bpf_map_create_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["bpf"], EPERM, Some("bpf"));
}

#[test]
fn perf_event_open_is_refused_by_seccomp() {
    // seccomp: perf is a side channel and a frequent kernel bug source.
    assert_refused(&["perf-event-open"], EPERM, Some("perf_event_open"));
}

#[test]
fn userfaultfd_is_refused_by_seccomp() {
    // seccomp: userfaultfd widens kernel race windows.
    assert_refused(&["userfaultfd"], EPERM, Some("userfaultfd"));
}

#[test]
fn io_uring_setup_is_refused_by_seccomp() {
    // seccomp: io_uring bypasses syscall filtering for its operations.
    assert_refused(&["io-uring"], EPERM, Some("io_uring_setup"));
}

#[test]
fn init_module_is_refused_by_seccomp() {
    // seccomp (and no CAP_SYS_MODULE).
    assert_refused(&["init-module"], EPERM, Some("init_module"));
}

#[test]
fn finit_module_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["finit-module"], EPERM, Some("finit_module"));
}

#[test]
fn delete_module_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["delete-module"], EPERM, Some("delete_module"));
}

#[test]
fn kexec_load_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["kexec"], EPERM, Some("kexec_load"));
}

#[test]
fn reboot_is_refused_by_seccomp() {
    // seccomp (in a pid namespace it would only kill the sandbox).
    assert_refused(&["reboot"], EPERM, Some("reboot"));
}

#[test]
fn clock_settime_is_refused_by_seccomp() {
    // seccomp: the clock is the host's.
    assert_refused(&["settime"], EPERM, Some("clock_settime"));
}

#[test]
fn iopl_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["iopl"], EPERM, Some("iopl"));
}

#[test]
fn ioperm_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["ioperm"], EPERM, Some("ioperm"));
}

#[test]
fn modify_ldt_is_refused_by_seccomp() {
    // seccomp.
    assert_refused(&["modify-ldt"], EPERM, Some("modify_ldt"));
}

#[test]
fn personality_read_implies_exec_is_refused_by_seccomp() {
    // seccomp argument rule: only PER_LINUX or a query.
    assert_refused(&["personality", "0x0400000"], EPERM, Some("personality"));
}

#[test]
fn personality_with_high_bits_only_is_per_linux() {
    // seccomp compares the low 32 bits, as the kernel reads them: this is
    // PER_LINUX, allowed, and it changes nothing.
    require_root!();
    let Some((f, r)) = case(&["personality", "0x100000000"]) else {
        return;
    };
    assert_eq!(f, ["personality", "0", "0"]);
    assert_eq!(r.denied("personality"), 0);
}

#[test]
fn personality_addr_no_randomize_is_refused() {
    // seccomp argument rule: ASLR stays on.
    assert_refused(&["personality", "0x0040000"], EPERM, Some("personality"));
}

#[test]
fn i386_int_0x80_getuid_is_refused_by_the_architecture_check() {
    // seccomp architecture check: ENOSYS, recorded with the i386 name.
    require_root!();
    let Some((f, r)) = case(&["int80"]) else {
        return;
    };
    assert_eq!(f, ["int80", ENOSYS_NEG]);
    assert_eq!(
        r.denied("i386:getuid32"),
        1,
        "{:?}",
        r.json["denied_syscalls"]
    );
}

#[test]
fn i386_int_0x80_setuid_is_refused_by_the_architecture_check() {
    // seccomp architecture check.
    require_root!();
    let Some((f, r)) = case(&["int80-setuid"]) else {
        return;
    };
    assert_eq!(f, ["int80-setuid", ENOSYS_NEG]);
    assert_eq!(r.denied("i386:setuid32"), 1);
}

#[test]
fn x32_mount_is_refused_by_the_architecture_check() {
    // seccomp: x32 numbers (bit 30) are refused before the allow-list.
    require_root!();
    let Some((f, r)) = case(&["x32"]) else {
        return;
    };
    assert_eq!(f, ["x32", ENOSYS_NEG]);
    assert_eq!(r.denied("x32:165"), 1, "{:?}", r.json["denied_syscalls"]);
}

#[test]
fn x32_getpid_is_refused_too() {
    // seccomp: even harmless x32 calls, so no x32 alias of an allowed
    // call can carry different arguments.
    require_root!();
    let Some((f, r)) = case(&["x32-getpid"]) else {
        return;
    };
    assert_eq!(f, ["x32-getpid", ENOSYS_NEG]);
    assert_eq!(r.denied("x32:39"), 1);
}
