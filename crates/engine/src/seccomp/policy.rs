//! The policy as data, and its compilation to a classic-BPF program.
//!
//! Layout of the compiled program (every block ends in a return, so no
//! jump ever crosses more than one block):
//!
//! ```text
//!   A = arch;  if A != native: return FOREIGN
//!   A = nr;    [x86_64] if A & X32_BIT: return FOREIGN
//!   for each rule syscall:     if A != nr: skip block; block = arg checks, return ALLOW
//!   for each silent_enosys nr: if A == nr: return ERRNO(ENOSYS)
//!   [Errno mode] for each deny nr: if A == nr: return ERRNO(EPERM)
//!   for each allowed nr:       if A == nr: return ALLOW
//!   return UNKNOWN
//! ```
//!
//! The per-syscall tests are compare-and-return pairs (`JEQ nr, 0, 1;
//! RET`), which never need a jump longer than 1, so the program can grow to
//! the kernel's 4096-instruction limit without long-jump trouble. Rule
//! blocks come first because their syscalls (ioctl, clone, socket) cannot be
//! served by the kernel's action cache and are evaluated on every call;
//! allowed syscalls never read the arguments on their path, so on 5.11+
//! the kernel caches them as always-allow and skips the filter entirely.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::bpf::{self, jump, load, ret, JMP_JEQ_K, JMP_JSET_K};
use super::{Arch, DenyMode, SeccompError, X32_SYSCALL_BIT};

/// The policy shipped with formicary.
const DEFAULT_POLICY: &str = include_str!("default-policy.toml");

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_DATA: u32 = 0x0000_ffff;

/// `SECCOMP_RET_ERRNO` with `errno` in the data field.
const fn ret_errno(errno: i32) -> u32 {
    SECCOMP_RET_ERRNO | (errno as u32 & SECCOMP_RET_DATA)
}

/// One argument check of a `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Allowed when none of these bits is set.
    AllowIfMaskClear(u32),
    /// Allowed when the value is one of these.
    AllowIfIn(Vec<u32>),
    /// Allowed unless the value is one of these.
    DenyIfIn(Vec<u32>),
}

impl Check {
    /// Whether `value` passes the check.
    pub fn allows(&self, value: u32) -> bool {
        match self {
            Check::AllowIfMaskClear(mask) => value & mask == 0,
            Check::AllowIfIn(values) => values.contains(&value),
            Check::DenyIfIn(values) => !values.contains(&value),
        }
    }
}

/// An argument rule: `syscall` is allowed when argument `arg` passes
/// `check`, and refused with `EPERM` otherwise. Several rules for one
/// syscall must all pass.
///
/// Only the low 32 bits of the argument are compared: every argument we
/// check is an `int` (or a flags word whose interesting bits are all low)
/// for the kernel, which ignores the high half. Comparing the full 64 bits
/// would let `0xffffffff00005412` slip past a check for `0x5412` while
/// the kernel still acts on `0x5412` (CVE-2019-10063).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The syscall's name.
    pub syscall: String,
    /// Which argument (0..=5).
    pub arg: u8,
    /// The check.
    pub check: Check,
    /// Why the rule exists.
    pub reason: String,
}

impl Rule {
    /// Whether the call with these arguments passes this rule.
    pub fn allows(&self, args: &[u64; 6]) -> bool {
        let value = args.get(usize::from(self.arg)).copied().unwrap_or(0);
        // Truncation intended: the low word is what the kernel uses.
        self.check.allows((value & 0xffff_ffff) as u32)
    }
}

/// Which section a syscall is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Allow,
    Deny,
    SilentEnosys,
    Rule,
}

/// A parsed, validated seccomp policy (see the module docs and
/// `default-policy.toml` for the format).
#[derive(Debug, Clone)]
pub struct Policy {
    allow: BTreeMap<String, String>,
    deny: BTreeMap<String, String>,
    silent_enosys: BTreeMap<String, String>,
    rules: Vec<Rule>,
}

/// The file format, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: BTreeMap<String, String>,
    #[serde(default)]
    deny: BTreeMap<String, String>,
    #[serde(default)]
    silent_enosys: BTreeMap<String, String>,
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    syscall: String,
    arg: u8,
    reason: String,
    allow_if_mask_clear: Option<u64>,
    allow_if_in: Option<Vec<u64>>,
    deny_if_in: Option<Vec<u64>>,
}

/// The parsed default policy, parsed once.
pub fn default_policy() -> Result<&'static Policy, SeccompError> {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    if let Some(policy) = POLICY.get() {
        return Ok(policy);
    }
    let parsed = Policy::from_toml(DEFAULT_POLICY)?;
    Ok(POLICY.get_or_init(|| parsed))
}

/// Whether `name` is a syscall on at least one supported architecture.
fn exists_somewhere(name: &str) -> bool {
    Arch::ALL.iter().any(|a| a.syscall_nr(name).is_some())
}

impl Policy {
    /// Parses and validates a policy: every name must be a syscall on some
    /// supported architecture, appear in one section only, and every rule
    /// must have exactly one check on an argument 0..=5 with 32-bit values.
    pub fn from_toml(text: &str) -> Result<Policy, SeccompError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|source| SeccompError::ParsePolicy { source })?;

        let mut seen: BTreeMap<String, &'static str> = BTreeMap::new();
        let mut claim = |name: &str, section: &'static str| -> Result<(), SeccompError> {
            if !exists_somewhere(name) {
                return Err(SeccompError::UnknownSyscall {
                    section: section.to_owned(),
                    name: name.to_owned(),
                });
            }
            match seen.get(name) {
                // Several rules for one syscall are allowed (they are ANDed).
                Some(&"rule") if section == "rule" => Ok(()),
                Some(first) => Err(SeccompError::DuplicateSyscall {
                    name: name.to_owned(),
                    first: (*first).to_owned(),
                    second: section.to_owned(),
                }),
                None => {
                    seen.insert(name.to_owned(), section);
                    Ok(())
                }
            }
        };
        for name in file.allow.keys() {
            claim(name, "allow")?;
        }
        for name in file.deny.keys() {
            claim(name, "deny")?;
        }
        for name in file.silent_enosys.keys() {
            claim(name, "silent_enosys")?;
        }

        let mut rules = Vec::with_capacity(file.rule.len());
        for (index, raw) in file.rule.into_iter().enumerate() {
            claim(&raw.syscall, "rule")?;
            let bad = |problem: &str| SeccompError::BadRule {
                index,
                syscall: raw.syscall.clone(),
                problem: problem.to_owned(),
            };
            if raw.arg > 5 {
                return Err(bad("`arg` must be 0 to 5"));
            }
            if raw.reason.trim().is_empty() {
                return Err(bad("`reason` is empty"));
            }
            let word = |v: u64| u32::try_from(v).map_err(|_| bad("values must fit in 32 bits"));
            let words = |vs: &[u64]| -> Result<Vec<u32>, SeccompError> {
                if vs.is_empty() {
                    return Err(bad("the list of values is empty"));
                }
                vs.iter().map(|&v| word(v)).collect()
            };
            let check =
                match (&raw.allow_if_mask_clear, &raw.allow_if_in, &raw.deny_if_in) {
                    (Some(mask), None, None) => Check::AllowIfMaskClear(word(*mask)?),
                    (None, Some(values), None) => Check::AllowIfIn(words(values)?),
                    (None, None, Some(values)) => Check::DenyIfIn(words(values)?),
                    _ => return Err(bad(
                        "give exactly one of `allow_if_mask_clear`, `allow_if_in`, `deny_if_in`",
                    )),
                };
            rules.push(Rule {
                syscall: raw.syscall,
                arg: raw.arg,
                check,
                reason: raw.reason,
            });
        }

        Ok(Policy {
            allow: file.allow,
            deny: file.deny,
            silent_enosys: file.silent_enosys,
            rules,
        })
    }

    /// The section `name` is in, if any.
    pub(crate) fn class(&self, name: &str) -> Option<Class> {
        if self.allow.contains_key(name) {
            Some(Class::Allow)
        } else if self.deny.contains_key(name) {
            Some(Class::Deny)
        } else if self.silent_enosys.contains_key(name) {
            Some(Class::SilentEnosys)
        } else if self.rules.iter().any(|r| r.syscall == name) {
            Some(Class::Rule)
        } else {
            None
        }
    }

    /// The reason the policy gives for `name` (the first rule's, for rules).
    pub fn reason(&self, name: &str) -> Option<&str> {
        self.allow
            .get(name)
            .or_else(|| self.deny.get(name))
            .or_else(|| self.silent_enosys.get(name))
            .map(String::as_str)
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| r.syscall == name)
                    .map(|r| r.reason.as_str())
            })
    }

    /// The argument rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether a call to rule syscall `name` with `args` passes all its
    /// rules (true for syscalls without rules).
    pub fn rules_allow(&self, name: &str, args: &[u64; 6]) -> bool {
        self.rules
            .iter()
            .filter(|r| r.syscall == name)
            .all(|r| r.allows(args))
    }

    /// Compiles the policy for `arch`. Names that do not exist on `arch`
    /// are skipped.
    pub fn compile(&self, arch: Arch, mode: DenyMode) -> Result<CompiledFilter, SeccompError> {
        let (foreign, denied, unknown) = match mode {
            DenyMode::Notify => (
                SECCOMP_RET_USER_NOTIF,
                SECCOMP_RET_USER_NOTIF,
                SECCOMP_RET_USER_NOTIF,
            ),
            DenyMode::Errno => (
                ret_errno(libc::ENOSYS),
                ret_errno(libc::EPERM),
                ret_errno(libc::ENOSYS),
            ),
        };
        let numbers = |names: &BTreeMap<String, String>| -> Vec<u32> {
            let mut nrs: Vec<u32> = names.keys().filter_map(|n| arch.syscall_nr(n)).collect();
            // Ascending numbers put the hottest calls (read, write, mmap...)
            // first, which matters on kernels without the action cache.
            nrs.sort_unstable();
            nrs
        };

        let mut prog = vec![
            load(bpf::OFFSET_ARCH),
            jump(JMP_JEQ_K, arch.audit_arch(), 1, 0),
            ret(foreign),
            load(bpf::OFFSET_NR),
        ];
        if arch == Arch::X86_64 {
            // x32 calls reach the same kernel code under other numbers.
            prog.push(jump(JMP_JSET_K, X32_SYSCALL_BIT, 0, 1));
            prog.push(ret(foreign));
        }

        // Rule syscalls, grouped in order of first appearance.
        let mut rule_names: Vec<&str> = Vec::new();
        for rule in &self.rules {
            if !rule_names.contains(&rule.syscall.as_str()) {
                rule_names.push(&rule.syscall);
            }
        }
        for name in rule_names {
            let Some(nr) = arch.syscall_nr(name) else {
                continue;
            };
            let mut block = Vec::new();
            for rule in self.rules.iter().filter(|r| r.syscall == name) {
                block.push(load(bpf::arg_low_offset(rule.arg)));
                emit_check(&mut block, &rule.check, denied, name)?;
            }
            block.push(ret(SECCOMP_RET_ALLOW));
            prog.push(jump(JMP_JEQ_K, nr, 0, bpf::jump_offset(block.len(), name)?));
            prog.extend(block);
        }

        let mut pairs = |nrs: Vec<u32>, action: u32| {
            for nr in nrs {
                prog.push(jump(JMP_JEQ_K, nr, 0, 1));
                prog.push(ret(action));
            }
        };
        pairs(numbers(&self.silent_enosys), ret_errno(libc::ENOSYS));
        if mode == DenyMode::Errno {
            // In Notify mode denied and unknown calls share the final return.
            pairs(numbers(&self.deny), denied);
        }
        pairs(numbers(&self.allow), SECCOMP_RET_ALLOW);
        prog.push(ret(unknown));

        bpf::verify(&prog)?;
        Ok(CompiledFilter {
            arch,
            mode,
            insns: prog,
        })
    }
}

/// Appends the test of `check` on the value in A: falls through when the
/// check passes, returns `denied` otherwise.
fn emit_check(
    out: &mut Vec<libc::sock_filter>,
    check: &Check,
    denied: u32,
    name: &str,
) -> Result<(), SeccompError> {
    match check {
        Check::AllowIfMaskClear(mask) => {
            // Any bit set: fall into the deny; none set: skip it.
            out.push(jump(JMP_JSET_K, *mask, 0, 1));
            out.push(ret(denied));
        }
        Check::AllowIfIn(values) => {
            // JEQ v_j jumps over the remaining JEQs and the deny.
            let n = values.len();
            for (j, v) in values.iter().enumerate() {
                out.push(jump(JMP_JEQ_K, *v, bpf::jump_offset(n - j, name)?, 0));
            }
            out.push(ret(denied));
        }
        Check::DenyIfIn(values) => {
            // JEQ v_j jumps to the deny at position n; the last JEQ's
            // false branch skips the deny.
            let n = values.len();
            for (j, v) in values.iter().enumerate() {
                let jf = if j + 1 == n { 1 } else { 0 };
                out.push(jump(JMP_JEQ_K, *v, bpf::jump_offset(n - 1 - j, name)?, jf));
            }
            out.push(ret(denied));
        }
    }
    Ok(())
}

/// A compiled filter, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    arch: Arch,
    mode: DenyMode,
    insns: Vec<libc::sock_filter>,
}

impl CompiledFilter {
    /// The program in the kernel's format. The pointer inside is valid
    /// while `self` lives and is not mutated; the kernel only reads it.
    pub fn as_fprog(&self) -> libc::sock_fprog {
        libc::sock_fprog {
            // `compile` verified len <= 4096; 0 (rejected by the kernel)
            // can only appear if that invariant were broken.
            len: u16::try_from(self.insns.len()).unwrap_or(0),
            filter: self.insns.as_ptr().cast_mut(),
        }
    }

    /// The instructions.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.insns
    }

    /// The architecture this filter was compiled for.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// How this filter refuses calls.
    pub fn mode(&self) -> DenyMode {
        self.mode
    }
}

#[cfg(test)]
mod tests {
    use super::super::bpf::interp::{run, Data};
    use super::super::{AUDIT_ARCH_I386, AUDIT_ARCH_X86_64};
    use super::*;

    const ALLOW: u32 = SECCOMP_RET_ALLOW;
    const NOTIF: u32 = SECCOMP_RET_USER_NOTIF;
    const EPERM: u32 = ret_errno(libc::EPERM);
    const ENOSYS: u32 = ret_errno(libc::ENOSYS);

    fn policy() -> &'static Policy {
        default_policy().expect("the default policy parses")
    }

    fn filter(arch: Arch, mode: DenyMode) -> CompiledFilter {
        policy()
            .compile(arch, mode)
            .expect("the default policy compiles")
    }

    fn nr(arch: Arch, name: &str) -> i32 {
        let n = arch.syscall_nr(name).expect("syscall exists");
        i32::try_from(n).expect("small")
    }

    fn call(f: &CompiledFilter, name: &str, args: [u64; 6]) -> u32 {
        let arch = f.arch();
        run_raw(f, arch.audit_arch(), nr(arch, name), args)
    }

    fn run_raw(f: &CompiledFilter, arch: u32, nr: i32, args: [u64; 6]) -> u32 {
        run(
            f.instructions(),
            &Data {
                nr,
                arch,
                instruction_pointer: 0x7fff_0000_1234,
                args,
            },
        )
    }

    const NONE: [u64; 6] = [0; 6];

    fn with_arg(i: usize, v: u64) -> [u64; 6] {
        let mut a = NONE;
        a[i] = v;
        a
    }

    #[test]
    fn default_policy_has_reasons_and_compiles_everywhere() {
        let p = policy();
        for (name, reason) in p.allow.iter().chain(&p.deny).chain(&p.silent_enosys) {
            assert!(!reason.trim().is_empty(), "{name} has no reason");
        }
        for arch in Arch::ALL {
            for mode in [DenyMode::Notify, DenyMode::Errno] {
                let f = p.compile(arch, mode).expect("compiles");
                assert!(f.instructions().len() < bpf::MAX_INSNS);
                assert_eq!(usize::from(f.as_fprog().len), f.instructions().len());
            }
        }
    }

    #[test]
    fn read_is_allowed_whatever_the_arguments() {
        for mode in [DenyMode::Notify, DenyMode::Errno] {
            for arch in Arch::ALL {
                let f = filter(arch, mode);
                assert_eq!(call(&f, "read", NONE), ALLOW);
                assert_eq!(call(&f, "read", [u64::MAX; 6]), ALLOW);
                assert_eq!(call(&f, "write", [1, 2, 3, 4, 5, 6]), ALLOW);
                assert_eq!(call(&f, "execve", NONE), ALLOW);
            }
        }
    }

    #[test]
    fn every_allowed_name_is_allowed_and_every_denied_name_denied() {
        for arch in Arch::ALL {
            let notify = filter(arch, DenyMode::Notify);
            let errno = filter(arch, DenyMode::Errno);
            for name in policy().allow.keys() {
                if arch.syscall_nr(name).is_some() {
                    assert_eq!(call(&errno, name, NONE), ALLOW, "{name}");
                    assert_eq!(call(&notify, name, NONE), ALLOW, "{name}");
                }
            }
            for name in policy().deny.keys() {
                if arch.syscall_nr(name).is_some() {
                    assert_eq!(call(&errno, name, NONE), EPERM, "{name}");
                    assert_eq!(call(&notify, name, NONE), NOTIF, "{name}");
                }
            }
        }
    }

    #[test]
    fn allowed_verdicts_read_only_nr_and_arch() {
        // The kernel's action cache (5.11+) marks a syscall always-allowed
        // only if the filter's path for it reads nothing but nr and arch.
        use super::super::bpf::interp::run_traced;
        for arch in Arch::ALL {
            for mode in [DenyMode::Notify, DenyMode::Errno] {
                let f = filter(arch, mode);
                for name in policy().allow.keys() {
                    let Some(n) = arch.syscall_nr(name) else {
                        continue;
                    };
                    let data = Data {
                        nr: i32::try_from(n).expect("small"),
                        arch: arch.audit_arch(),
                        instruction_pointer: 0,
                        args: [u64::MAX; 6],
                    };
                    let (action, loads) = run_traced(f.instructions(), &data);
                    assert_eq!(action, ALLOW, "{name}");
                    assert!(
                        loads
                            .iter()
                            .all(|&o| o == bpf::OFFSET_NR || o == bpf::OFFSET_ARCH),
                        "{name} reads {loads:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn ptrace_is_denied() {
        for arch in Arch::ALL {
            assert_eq!(call(&filter(arch, DenyMode::Notify), "ptrace", NONE), NOTIF);
            assert_eq!(call(&filter(arch, DenyMode::Errno), "ptrace", NONE), EPERM);
        }
    }

    #[test]
    fn unknown_numbers_get_enosys_or_notify() {
        for arch in Arch::ALL {
            let audit = arch.audit_arch();
            assert_eq!(
                run_raw(&filter(arch, DenyMode::Errno), audit, 999, NONE),
                ENOSYS
            );
            assert_eq!(
                run_raw(&filter(arch, DenyMode::Notify), audit, 999, NONE),
                NOTIF
            );
            assert_eq!(
                run_raw(&filter(arch, DenyMode::Errno), audit, -1, NONE),
                ENOSYS
            );
        }
    }

    #[test]
    fn foreign_arch_is_denied() {
        let read_i386 = 3;
        let errno = filter(Arch::X86_64, DenyMode::Errno);
        let notify = filter(Arch::X86_64, DenyMode::Notify);
        assert_eq!(run_raw(&errno, AUDIT_ARCH_I386, read_i386, NONE), ENOSYS);
        assert_eq!(run_raw(&notify, AUDIT_ARCH_I386, read_i386, NONE), NOTIF);
        // An aarch64 filter refuses x86_64 data and vice versa.
        let arm = filter(Arch::Aarch64, DenyMode::Errno);
        assert_eq!(run_raw(&arm, AUDIT_ARCH_X86_64, 0, NONE), ENOSYS);
    }

    #[test]
    fn x32_numbers_are_denied() {
        let errno = filter(Arch::X86_64, DenyMode::Errno);
        let notify = filter(Arch::X86_64, DenyMode::Notify);
        let x32_read = i32::try_from(X32_SYSCALL_BIT).expect("fits");
        let x32_ptrace = x32_read + 101;
        for n in [x32_read, x32_ptrace, x32_read + 520] {
            assert_eq!(run_raw(&errno, AUDIT_ARCH_X86_64, n, NONE), ENOSYS);
            assert_eq!(run_raw(&notify, AUDIT_ARCH_X86_64, n, NONE), NOTIF);
        }
    }

    #[test]
    fn clone_namespaces_are_denied_and_threads_allowed() {
        let thread_flags: u64 = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let fork_flags =
            (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        for arch in Arch::ALL {
            let errno = filter(arch, DenyMode::Errno);
            let notify = filter(arch, DenyMode::Notify);
            assert_eq!(call(&errno, "clone", with_arg(0, thread_flags)), ALLOW);
            assert_eq!(call(&errno, "clone", with_arg(0, fork_flags)), ALLOW);
            // CLONE_NEWTIME's bit is the exit-signal byte in clone(2).
            assert_eq!(call(&errno, "clone", with_arg(0, 0x80 | 0x11)), ALLOW);
            for ns in [
                libc::CLONE_NEWUSER,
                libc::CLONE_NEWNS,
                libc::CLONE_NEWPID,
                libc::CLONE_NEWNET,
                libc::CLONE_NEWUTS,
                libc::CLONE_NEWIPC,
                libc::CLONE_NEWCGROUP,
            ] {
                let flags = fork_flags | ns as u64;
                assert_eq!(call(&errno, "clone", with_arg(0, flags)), EPERM, "{ns:#x}");
                assert_eq!(call(&notify, "clone", with_arg(0, flags)), NOTIF, "{ns:#x}");
                assert!(!policy().rules_allow("clone", &with_arg(0, flags)));
            }
            assert!(policy().rules_allow("clone", &with_arg(0, thread_flags)));
        }
    }

    #[test]
    fn socket_domains_are_checked() {
        for arch in Arch::ALL {
            let errno = filter(arch, DenyMode::Errno);
            for ok in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
                assert_eq!(call(&errno, "socket", with_arg(0, ok as u64)), ALLOW);
            }
            for bad in [
                libc::AF_NETLINK,
                libc::AF_PACKET,
                libc::AF_VSOCK,
                libc::AF_ALG,
            ] {
                assert_eq!(call(&errno, "socket", with_arg(0, bad as u64)), EPERM);
            }
            // High bits are ignored like the kernel does: AF_INET | junk is AF_INET.
            assert_eq!(
                call(&errno, "socket", with_arg(0, 0xdead_0000_0000_0002)),
                ALLOW
            );
            assert_eq!(
                call(&errno, "socketpair", with_arg(0, libc::AF_UNIX as u64)),
                ALLOW
            );
            assert_eq!(
                call(&errno, "socketpair", with_arg(0, libc::AF_INET as u64)),
                EPERM
            );
        }
    }

    #[test]
    fn ioctl_tiocsti_is_denied_even_with_high_bits() {
        for arch in Arch::ALL {
            let errno = filter(arch, DenyMode::Errno);
            let notify = filter(arch, DenyMode::Notify);
            for cmd in [0x5412, 0xffff_ffff_0000_5412, 0x541c, 0x1_0000_541c] {
                assert_eq!(call(&errno, "ioctl", with_arg(1, cmd)), EPERM, "{cmd:#x}");
                assert_eq!(call(&notify, "ioctl", with_arg(1, cmd)), NOTIF, "{cmd:#x}");
            }
            for cmd in [
                0x5401, /* TCGETS */
                0x5413, /* TIOCGWINSZ */
                0x5421, /* FIONBIO */
            ] {
                assert_eq!(call(&errno, "ioctl", with_arg(1, cmd)), ALLOW, "{cmd:#x}");
                assert_eq!(call(&notify, "ioctl", with_arg(1, cmd)), ALLOW, "{cmd:#x}");
            }
        }
    }

    #[test]
    fn personality_only_linux_or_query() {
        for arch in Arch::ALL {
            let errno = filter(arch, DenyMode::Errno);
            assert_eq!(call(&errno, "personality", with_arg(0, 0)), ALLOW);
            assert_eq!(call(&errno, "personality", with_arg(0, 0xffff_ffff)), ALLOW);
            let addr_no_randomize = 0x0004_0000;
            assert_eq!(
                call(&errno, "personality", with_arg(0, addr_no_randomize)),
                EPERM
            );
            assert_eq!(call(&errno, "personality", with_arg(0, 0x0008)), EPERM);
        }
    }

    #[test]
    fn clone3_is_silently_enosys() {
        for arch in Arch::ALL {
            for mode in [DenyMode::Notify, DenyMode::Errno] {
                assert_eq!(call(&filter(arch, mode), "clone3", NONE), ENOSYS);
            }
        }
    }

    #[test]
    fn names_missing_on_an_arch_are_skipped() {
        // fork exists on x86_64 only.
        assert!(Arch::Aarch64.syscall_nr("fork").is_none());
        assert_eq!(
            call(&filter(Arch::X86_64, DenyMode::Errno), "fork", NONE),
            ALLOW
        );
    }

    #[test]
    fn typos_are_rejected() {
        let err = Policy::from_toml("[allow]\nreed = \"typo\"\n").expect_err("typo");
        assert!(matches!(err, SeccompError::UnknownSyscall { ref name, .. } if name == "reed"));
        let err = Policy::from_toml(
            "[[rule]]\nsyscall = \"ioctll\"\narg = 1\ndeny_if_in = [1]\nreason = \"x\"\n",
        )
        .expect_err("typo");
        assert!(matches!(err, SeccompError::UnknownSyscall { .. }));
    }

    #[test]
    fn malformed_policies_are_rejected() {
        let dup = "[allow]\nread = \"a\"\n[deny]\nread = \"b\"\n";
        assert!(matches!(
            Policy::from_toml(dup),
            Err(SeccompError::DuplicateSyscall { .. })
        ));
        let two_checks = "[[rule]]\nsyscall = \"ioctl\"\narg = 1\nreason = \"x\"\ndeny_if_in = [1]\nallow_if_in = [2]\n";
        assert!(matches!(
            Policy::from_toml(two_checks),
            Err(SeccompError::BadRule { .. })
        ));
        let wide =
            "[[rule]]\nsyscall = \"ioctl\"\narg = 1\nreason = \"x\"\ndeny_if_in = [0x100000000]\n";
        assert!(matches!(
            Policy::from_toml(wide),
            Err(SeccompError::BadRule { .. })
        ));
        let bad_arg = "[[rule]]\nsyscall = \"ioctl\"\narg = 6\nreason = \"x\"\ndeny_if_in = [1]\n";
        assert!(matches!(
            Policy::from_toml(bad_arg),
            Err(SeccompError::BadRule { .. })
        ));
        assert!(matches!(
            Policy::from_toml("[allow\n"),
            Err(SeccompError::ParsePolicy { .. })
        ));
        assert!(matches!(
            Policy::from_toml("[alow]\nread = \"x\"\n"),
            Err(SeccompError::ParsePolicy { .. })
        ));
    }

    #[test]
    fn several_rules_on_one_syscall_are_anded() {
        let text =
            "[[rule]]\nsyscall = \"socket\"\narg = 0\nreason = \"a\"\nallow_if_in = [1, 2]\n\
                    [[rule]]\nsyscall = \"socket\"\narg = 1\nreason = \"b\"\ndeny_if_in = [3]\n";
        let p = Policy::from_toml(text).expect("valid");
        let f = p.compile(Arch::X86_64, DenyMode::Errno).expect("compiles");
        let args = |d: u64, t: u64| [d, t, 0, 0, 0, 0];
        assert_eq!(call(&f, "socket", args(1, 1)), ALLOW);
        assert_eq!(call(&f, "socket", args(2, 3)), EPERM);
        assert_eq!(call(&f, "socket", args(3, 1)), EPERM);
        assert_eq!(call(&f, "read", NONE), ENOSYS, "not listed");
    }

    #[test]
    fn long_value_lists_are_refused_not_truncated() {
        let values: Vec<String> = (0..300).map(|v| v.to_string()).collect();
        let text = format!(
            "[[rule]]\nsyscall = \"ioctl\"\narg = 1\nreason = \"x\"\nallow_if_in = [{}]\n",
            values.join(",")
        );
        let p = Policy::from_toml(&text).expect("parses");
        assert!(matches!(
            p.compile(Arch::X86_64, DenyMode::Errno),
            Err(SeccompError::JumpTooFar { .. })
        ));
        // 200 values fit and every one of them is honoured.
        let values: Vec<String> = (0..200).map(|v| (v * 3).to_string()).collect();
        let text = format!(
            "[[rule]]\nsyscall = \"ioctl\"\narg = 1\nreason = \"x\"\nallow_if_in = [{}]\n",
            values.join(",")
        );
        let f = Policy::from_toml(&text)
            .expect("parses")
            .compile(Arch::X86_64, DenyMode::Errno)
            .expect("compiles");
        for v in 0..600u64 {
            let want = if v % 3 == 0 { ALLOW } else { EPERM };
            assert_eq!(call(&f, "ioctl", with_arg(1, v)), want, "{v}");
        }
    }
}
