//! The policy as data, and its compilation to a classic-BPF program.
//!
//! The default policy is parsed and validated at build time (`build.rs`
//! runs the parser of [`policy_file`](super::policy_file) on
//! `default-policy.toml`) and compiled into the binary as static data, so
//! [`default_policy`] parses no text; [`Policy::from_toml`] runs the same
//! parser at run time for an operator's file.
//!
//! Layout of the compiled program:
//!
//! ```text
//!   A = arch;  if A != native: return FOREIGN
//!   A = nr;    [x86_64] if A & X32_BIT: return FOREIGN
//!   binary search on A over the boundaries of the number ranges
//!   (JGE boundary: taken = upper half, fall through = lower half);
//!   each leaf is one range of numbers with one verdict:
//!     return ALLOW / ERRNO(ENOSYS) / ERRNO(EPERM) / USER_NOTIF, or
//!     a rule block: load the argument's low word, checks, return ALLOW
//! ```
//!
//! Every number from 0 to `u32::MAX` falls in exactly one range: the
//! policy's numbers for this architecture, sorted, with the gaps between
//! them (unknown numbers) as ranges of their own, and neighbours with the
//! same verdict merged. So a leaf needs no compare of its own, and any call
//! is decided after about log2(ranges) compares (7 for the default policy)
//! instead of a walk down a list of several hundred.
//!
//! Allowed syscalls' paths load only `nr` and `arch`, so on 5.11+ the
//! kernel's action cache (which emulates the filter for every number when
//! it is installed) marks them always-allowed and skips the filter; only
//! rule syscalls read their arguments. Conditional jumps have 8-bit offsets:
//! a tree node whose lower half is longer than 255 instructions jumps over
//! it with a `JA` (32-bit offset) instead; the checks inside a rule block
//! use [`bpf::jump_offset`], which refuses distances that do not fit.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::bpf::{self, jump, load, ret, stmt, JMP_JA, JMP_JEQ_K, JMP_JGE_K, JMP_JSET_K};
use super::policy_file::{self, Check, PolicyError, Rule};
use super::{Arch, DenyMode, SeccompError, X32_SYSCALL_BIT};

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_DATA: u32 = 0x0000_ffff;

/// `SECCOMP_RET_ERRNO` with `errno` in the data field.
const fn ret_errno(errno: i32) -> u32 {
    SECCOMP_RET_ERRNO | (errno as u32 & SECCOMP_RET_DATA)
}

impl From<PolicyError> for SeccompError {
    fn from(err: PolicyError) -> Self {
        match err {
            PolicyError::Parse(source) => SeccompError::ParsePolicy { source },
            PolicyError::UnknownSyscall { section, name } => {
                SeccompError::UnknownSyscall { section, name }
            }
            PolicyError::DuplicateSyscall {
                name,
                first,
                second,
            } => SeccompError::DuplicateSyscall {
                name,
                first,
                second,
            },
            PolicyError::BadRule {
                index,
                syscall,
                problem,
            } => SeccompError::BadRule {
                index,
                syscall,
                problem,
            },
        }
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

/// A syscall of the default policy, as `build.rs` writes it: name, reason,
/// and its number on each architecture (in [`static_column`] order), or
/// [`NO_NR`] where it does not exist.
type StaticEntry = (&'static str, &'static str, [u32; 2]);

/// In a [`StaticEntry`]: no syscall of that name on that architecture.
const NO_NR: u32 = u32::MAX;

/// The column of `arch` in a [`StaticEntry`]'s numbers.
const fn static_column(arch: Arch) -> usize {
    match arch {
        Arch::X86_64 => 0,
        Arch::Aarch64 => 1,
    }
}

/// One section: syscall name to reason, sorted by name (binary search).
#[derive(Debug, Clone)]
enum Section {
    /// The default policy's, compiled in by `build.rs` with each syscall's
    /// numbers: nothing to build or look up at run time.
    Static(&'static [StaticEntry]),
    /// An operator's file's.
    Owned(Vec<(String, String)>),
}

impl Section {
    fn len(&self) -> usize {
        match self {
            Section::Static(entries) => entries.len(),
            Section::Owned(entries) => entries.len(),
        }
    }

    /// Entry `i` (0..len) as (name, reason).
    fn entry(&self, i: usize) -> Option<(&str, &str)> {
        match self {
            Section::Static(entries) => entries.get(i).map(|&(n, r, _)| (n, r)),
            Section::Owned(entries) => entries.get(i).map(|(n, r)| (n.as_str(), r.as_str())),
        }
    }

    /// (name, reason) pairs, sorted by name.
    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        (0..self.len()).filter_map(|i| self.entry(i))
    }

    /// The names, sorted.
    #[cfg(test)]
    fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(name, _)| name)
    }

    /// The reason given for `name`, if the section lists it.
    fn get(&self, name: &str) -> Option<&str> {
        let found = match self {
            Section::Static(entries) => entries.binary_search_by(|&(n, _, _)| n.cmp(name)),
            Section::Owned(entries) => entries.binary_search_by(|(n, _)| n.as_str().cmp(name)),
        };
        found
            .ok()
            .and_then(|i| self.entry(i))
            .map(|(_, reason)| reason)
    }

    fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Calls `f` with the number on `arch` of each syscall of the section
    /// that exists there, in name order. The default policy's numbers were
    /// looked up at build time: finding ~300 names in the syscall tables
    /// (a linear match each) was half the filter's compile time.
    fn for_each_nr<E>(&self, arch: Arch, mut f: impl FnMut(u32) -> Result<(), E>) -> Result<(), E> {
        match self {
            Section::Static(entries) => {
                for &(_, _, numbers) in entries.iter() {
                    let nr = numbers[static_column(arch)];
                    if nr != NO_NR {
                        f(nr)?;
                    }
                }
            }
            Section::Owned(entries) => {
                for (name, _) in entries {
                    if let Some(nr) = arch.syscall_nr(name) {
                        f(nr)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl PartialEq for Section {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Section {}

/// A parsed, validated seccomp policy (see the module docs and
/// `default-policy.toml` for the format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allow: Section,
    deny: Section,
    silent_enosys: Section,
    rules: Vec<Rule>,
}

/// The default policy as `build.rs` writes it: validated, sections sorted
/// by name, rules in file order.
struct StaticPolicy {
    allow: &'static [StaticEntry],
    deny: &'static [StaticEntry],
    silent_enosys: &'static [StaticEntry],
    rules: &'static [StaticRule],
}

/// A [`Rule`] as static data.
struct StaticRule {
    syscall: &'static str,
    arg: u8,
    check: StaticCheck,
    reason: &'static str,
}

/// A [`Check`] as static data.
enum StaticCheck {
    AllowIfMaskClear(u32),
    AllowIfIn(&'static [u32]),
    DenyIfIn(&'static [u32]),
}

/// `default-policy.toml`, validated and converted by `build.rs`.
static DEFAULT_POLICY: StaticPolicy = include!(concat!(env!("OUT_DIR"), "/default_policy.rs"));

impl StaticPolicy {
    /// The policy, without parsing: the sections are borrowed as they are,
    /// only the few rules are copied into their owned form.
    fn to_policy(&self) -> Policy {
        let rules = self
            .rules
            .iter()
            .map(|r| Rule {
                syscall: r.syscall.to_owned(),
                arg: r.arg,
                check: match r.check {
                    StaticCheck::AllowIfMaskClear(mask) => Check::AllowIfMaskClear(mask),
                    StaticCheck::AllowIfIn(values) => Check::AllowIfIn(values.to_vec()),
                    StaticCheck::DenyIfIn(values) => Check::DenyIfIn(values.to_vec()),
                },
                reason: r.reason.to_owned(),
            })
            .collect();
        Policy {
            allow: Section::Static(self.allow),
            deny: Section::Static(self.deny),
            silent_enosys: Section::Static(self.silent_enosys),
            rules,
        }
    }
}

/// The default policy, built once per process from data compiled into the
/// binary (no parsing). It cannot fail; the `Result` stays so that callers
/// treat it like any other policy source.
pub fn default_policy() -> Result<&'static Policy, SeccompError> {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    Ok(POLICY.get_or_init(load_default_policy))
}

/// A fresh copy of the default policy (what [`default_policy`] caches).
pub(crate) fn load_default_policy() -> Policy {
    DEFAULT_POLICY.to_policy()
}

/// Syscall numbers the compiler accepts are below this (the tables of the
/// supported architectures end below 500).
const MAX_SYSCALL_NR: usize = 4096;

/// What the filter does with one range of syscall numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Return this action.
    Return(u32),
    /// Run the rule block with this index.
    Rules(usize),
}

impl Policy {
    /// Parses and validates a policy: every name must be a syscall on some
    /// supported architecture, appear in one section only, and every rule
    /// must have exactly one check on an argument 0..=5 with 32-bit values.
    pub fn from_toml(text: &str) -> Result<Policy, SeccompError> {
        let parsed = policy_file::parse(text)?;
        // BTreeMap iteration is sorted by name, as Section requires.
        let section = |map: BTreeMap<String, String>| Section::Owned(map.into_iter().collect());
        Ok(Policy {
            allow: section(parsed.allow),
            deny: section(parsed.deny),
            silent_enosys: section(parsed.silent_enosys),
            rules: parsed.rules,
        })
    }

    /// The section `name` is in, if any.
    pub(crate) fn class(&self, name: &str) -> Option<Class> {
        if self.allow.contains(name) {
            Some(Class::Allow)
        } else if self.deny.contains(name) {
            Some(Class::Deny)
        } else if self.silent_enosys.contains(name) {
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

        // Each number's verdict, indexed by number (syscall numbers are
        // small: below 500 on both architectures). Later writes win, which
        // gives the order of precedence rules > silent_enosys > deny > allow
        // should two names ever share a number (parsing already refuses a
        // name in two sections).
        let mut verdicts: Vec<Option<Verdict>> = Vec::new();
        let mut set = |nr: u32, verdict: Verdict| -> Result<(), SeccompError> {
            let index = usize::try_from(nr)
                .ok()
                .filter(|&i| i < MAX_SYSCALL_NR)
                .ok_or_else(|| SeccompError::InvalidProgram {
                    index: 0,
                    what: format!("syscall number {nr} is beyond {MAX_SYSCALL_NR}"),
                })?;
            if verdicts.len() <= index {
                verdicts.resize(index + 1, None);
            }
            verdicts[index] = Some(verdict);
            Ok(())
        };
        for (section, action) in [
            (&self.allow, SECCOMP_RET_ALLOW),
            (&self.deny, denied),
            (&self.silent_enosys, ret_errno(libc::ENOSYS)),
        ] {
            section.for_each_nr(arch, |nr| set(nr, Verdict::Return(action)))?;
        }
        // The rule blocks, one per rule syscall of this architecture (in
        // order of first appearance): each of its rules' checks, then ALLOW.
        let mut blocks: Vec<Vec<libc::sock_filter>> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let name = rule.syscall.as_str();
            let first = self.rules.iter().position(|r| r.syscall == name) == Some(i);
            let Some(nr) = arch.syscall_nr(name).filter(|_| first) else {
                continue;
            };
            let mut block = Vec::new();
            for rule in self.rules.iter().filter(|r| r.syscall == name) {
                block.push(load(bpf::arg_low_offset(rule.arg)));
                emit_check(&mut block, &rule.check, denied, name)?;
            }
            block.push(ret(SECCOMP_RET_ALLOW));
            set(nr, Verdict::Rules(blocks.len()))?;
            blocks.push(block);
        }
        let ranges = ranges(&verdicts, Verdict::Return(unknown));

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
        emit_search(&mut prog, &ranges, &blocks)?;

        bpf::verify(&prog)?;
        Ok(CompiledFilter {
            arch,
            mode,
            insns: prog,
        })
    }
}

/// Cuts `0..=u32::MAX` into ranges of one verdict each: number `n` has
/// verdict `verdicts[n]`, or `default` when that is `None` or `n` is past
/// the end. Returns each range's first number and verdict, in ascending
/// order, the first range starting at 0 and neighbours always differing.
fn ranges(verdicts: &[Option<Verdict>], default: Verdict) -> Vec<(u32, Verdict)> {
    let mut out: Vec<(u32, Verdict)> = Vec::new();
    let mut push = |start: u32, verdict: Verdict| {
        if out.last().map(|&(_, v)| v) != Some(verdict) {
            out.push((start, verdict));
        }
    };
    let mut next = 0u32;
    for (nr, verdict) in (0u32..).zip(verdicts) {
        push(nr, verdict.unwrap_or(default));
        next = nr + 1;
    }
    push(next, default);
    out
}

/// Appends the binary search over `ranges` (non-empty, ascending, as from
/// [`ranges`]) on the syscall number in A. The lower half falls through;
/// the upper half is reached by `JGE`, or by `JGE` onto a `JA` when the
/// lower half is longer than a conditional jump can skip.
fn emit_search(
    out: &mut Vec<libc::sock_filter>,
    ranges: &[(u32, Verdict)],
    blocks: &[Vec<libc::sock_filter>],
) -> Result<(), SeccompError> {
    match ranges {
        [] => Err(SeccompError::InvalidProgram {
            index: out.len(),
            what: "no syscall ranges to search".to_owned(),
        }),
        [(_, verdict)] => {
            match *verdict {
                Verdict::Return(action) => out.push(ret(action)),
                Verdict::Rules(i) => {
                    let block = blocks.get(i).ok_or_else(|| SeccompError::InvalidProgram {
                        index: out.len(),
                        what: format!("rule block {i} does not exist"),
                    })?;
                    out.extend_from_slice(block);
                }
            }
            Ok(())
        }
        _ => {
            let (lower, upper) = ranges.split_at(ranges.len() / 2);
            let Some(&(boundary, _)) = upper.first() else {
                return Err(SeccompError::InvalidProgram {
                    index: out.len(),
                    what: "empty upper half in the syscall search".to_owned(),
                });
            };
            let mut below = Vec::new();
            emit_search(&mut below, lower, blocks)?;
            match u8::try_from(below.len()) {
                Ok(skip) => out.push(jump(JMP_JGE_K, boundary, skip, 0)),
                Err(_) => {
                    let skip = u32::try_from(below.len())
                        .map_err(|_| SeccompError::ProgramTooLong { len: below.len() })?;
                    out.push(jump(JMP_JGE_K, boundary, 0, 1));
                    out.push(stmt(JMP_JA, skip));
                }
            }
            out.extend(below);
            emit_search(out, upper, blocks)
        }
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
        for (name, reason) in p
            .allow
            .iter()
            .chain(p.deny.iter())
            .chain(p.silent_enosys.iter())
        {
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
    fn the_default_policys_numbers_from_build_time_are_the_syscall_tables() {
        let p = policy();
        for section in [&p.allow, &p.deny, &p.silent_enosys] {
            let Section::Static(entries) = section else {
                panic!("the default policy's sections are static");
            };
            for &(name, _, numbers) in entries.iter() {
                for arch in Arch::ALL {
                    let expected = arch.syscall_nr(name).unwrap_or(NO_NR);
                    assert_eq!(numbers[static_column(arch)], expected, "{name} on {arch:?}");
                }
            }
        }
        // The same policy parsed from its text (names looked up at run
        // time) compiles to the same filter.
        let text = include_str!("default-policy.toml");
        let parsed = Policy::from_toml(text).expect("parses");
        for arch in Arch::ALL {
            for mode in [DenyMode::Notify, DenyMode::Errno] {
                let words = |f: CompiledFilter| -> Vec<(u16, u8, u8, u32)> {
                    f.instructions()
                        .iter()
                        .map(|i| (i.code, i.jt, i.jf, i.k))
                        .collect()
                };
                assert_eq!(
                    words(p.compile(arch, mode).expect("compiles")),
                    words(parsed.compile(arch, mode).expect("compiles")),
                    "{arch:?} {mode:?}"
                );
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
            for name in policy().allow.names() {
                if arch.syscall_nr(name).is_some() {
                    assert_eq!(call(&errno, name, NONE), ALLOW, "{name}");
                    assert_eq!(call(&notify, name, NONE), ALLOW, "{name}");
                }
            }
            for name in policy().deny.names() {
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
                for name in policy().allow.names() {
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

    // ---- the build-time default policy ----

    #[test]
    fn compiled_in_default_equals_parsing_the_file() {
        let parsed = Policy::from_toml(include_str!("default-policy.toml"))
            .expect("default-policy.toml parses at run time too");
        assert_eq!(load_default_policy(), parsed);
        assert_eq!(*policy(), parsed);
        assert!(!parsed.rules().is_empty());
        assert_eq!(policy().reason("read"), Some("read from an fd"));
        assert_eq!(policy().reason("clone"), parsed.reason("clone"));
        assert_eq!(policy().reason("no_such_call"), None);
    }

    #[test]
    fn compiled_in_sections_are_sorted_for_binary_search() {
        let p = policy();
        for section in [&p.allow, &p.deny, &p.silent_enosys] {
            assert!(matches!(section, Section::Static(_)));
            let names: Vec<&str> = section.names().collect();
            assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
            for name in names {
                assert!(section.contains(name), "{name}");
            }
        }
    }

    #[test]
    fn parser_errors_keep_their_messages() {
        let bad = [
            "[allow\n",
            "[allow]\nreed = \"typo\"\n",
            "[allow]\nread = \"a\"\n[deny]\nread = \"b\"\n",
            "[[rule]]\nsyscall = \"ioctl\"\narg = 6\nreason = \"x\"\ndeny_if_in = [1]\n",
        ];
        for text in bad {
            let Err(err) = policy_file::parse(text) else {
                panic!("accepted {text:?}");
            };
            let message = err.to_string();
            assert_eq!(SeccompError::from(err).to_string(), message);
        }
    }

    #[test]
    fn the_parser_knows_the_same_architectures_as_arch() {
        let names = syscalls::x86_64::Sysno::iter()
            .map(|s| s.name())
            .chain(syscalls::aarch64::Sysno::iter().map(|s| s.name()))
            .chain(["reed", "", "x32:read"]);
        for name in names {
            let by_arch = Arch::ALL.iter().any(|a| a.syscall_nr(name).is_some());
            assert_eq!(policy_file::exists_somewhere(name), by_arch, "{name}");
        }
    }

    // ---- the binary search against the policy itself ----

    /// What the filter must answer, computed from the policy alone: allowed
    /// sections and passing rules get ALLOW, `[silent_enosys]` ENOSYS, and
    /// everything else USER_NOTIF (Notify) or the errno the supervisor
    /// would answer, [`Policy::denial`] (Errno).
    fn expected(p: &Policy, arch: Arch, mode: DenyMode, nr: i32, args: &[u64; 6]) -> u32 {
        let name = u32::try_from(nr).ok().and_then(|n| arch.syscall_name(n));
        let class = name.and_then(|n| p.class(n));
        let allowed = match (class, name) {
            (Some(Class::Allow), _) => true,
            (Some(Class::Rule), Some(name)) => p.rules_allow(name, args),
            _ => false,
        };
        if allowed {
            ALLOW
        } else if class == Some(Class::SilentEnosys) {
            ENOSYS
        } else {
            match mode {
                DenyMode::Notify => NOTIF,
                DenyMode::Errno => ret_errno(p.denial(arch.audit_arch(), nr, args).errno),
            }
        }
    }

    /// Argument vectors that sit on both sides of every rule's check, with
    /// and without junk in the high words.
    fn sample_args(p: &Policy) -> Vec<[u64; 6]> {
        let mut out = vec![NONE, [u64::MAX; 6]];
        for rule in p.rules() {
            let values: Vec<u32> = match &rule.check {
                Check::AllowIfMaskClear(mask) => {
                    let mut v = vec![*mask, !*mask, 0];
                    v.extend((0..32).map(|b| 1u32 << b).filter(|bit| mask & bit != 0));
                    v
                }
                Check::AllowIfIn(values) | Check::DenyIfIn(values) => values
                    .iter()
                    .flat_map(|&v| [v, v.wrapping_add(1), v.wrapping_sub(1)])
                    .collect(),
            };
            for v in values {
                for high in [0, 0xdead_beef_0000_0000] {
                    let v = u64::from(v) | high;
                    out.push(with_arg(usize::from(rule.arg), v));
                    out.push([v; 6]);
                }
            }
        }
        out
    }

    /// For every number 0..=600 (and a few far ones), every mode and both
    /// architectures, the filter's action equals the policy's.
    fn assert_filter_agrees_with_policy(p: &Policy) {
        let far = [
            1000,
            4095,
            0x3fff_ffff,
            0x4000_0000,
            0x4000_0010,
            0x7fff_ffff,
            -1,
            i32::MIN,
        ];
        let samples = sample_args(p);
        for arch in Arch::ALL {
            for mode in [DenyMode::Notify, DenyMode::Errno] {
                let f = p.compile(arch, mode).expect("compiles");
                for nr in (0..=600).chain(far) {
                    for args in &samples {
                        let got = run_raw(&f, arch.audit_arch(), nr, *args);
                        let want = expected(p, arch, mode, nr, args);
                        assert_eq!(
                            got,
                            want,
                            "{arch:?} {mode:?} nr {nr} ({:?}) args {args:x?}",
                            u32::try_from(nr).ok().and_then(|n| arch.syscall_name(n))
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn default_filter_agrees_with_policy_for_every_number() {
        assert_filter_agrees_with_policy(policy());
    }

    #[test]
    fn neighbouring_numbers_of_every_kind_agree_with_policy() {
        // x86_64: read 0, write 1, open 2, close 3, stat 4, fstat 5,
        // lstat 6, poll 7, lseek 8, mmap 9: every kind next to every other,
        // two rule syscalls side by side, a rule on number 0 and the largest
        // number allowed.
        let text = "[allow]\nwrite = \"a\"\nlstat = \"a\"\npoll = \"a\"\n\
                    set_mempolicy_home_node = \"a\"\nio_pgetevents = \"a\"\n\
                    [deny]\nopen = \"d\"\nmmap = \"d\"\nio_uring_setup = \"d\"\n\
                    [silent_enosys]\nclose = \"s\"\nlseek = \"s\"\n\
                    [[rule]]\nsyscall = \"fstat\"\narg = 0\nreason = \"r\"\nallow_if_in = [1, 2]\n\
                    [[rule]]\nsyscall = \"stat\"\narg = 1\nreason = \"r\"\nallow_if_mask_clear = 0xf0\n\
                    [[rule]]\nsyscall = \"fstat\"\narg = 2\nreason = \"r\"\ndeny_if_in = [7]\n\
                    [[rule]]\nsyscall = \"read\"\narg = 0\nreason = \"r\"\ndeny_if_in = [3]\n";
        let p = Policy::from_toml(text).expect("valid");
        assert_filter_agrees_with_policy(&p);
        // An empty policy: one range, refused whatever the number.
        let empty = Policy::from_toml("").expect("valid");
        assert_filter_agrees_with_policy(&empty);
        let f = empty
            .compile(Arch::Aarch64, DenyMode::Errno)
            .expect("compiles");
        assert_eq!(f.instructions().len(), 5, "arch check, load nr, return");
    }

    #[test]
    fn long_searches_hop_with_ja_and_stay_correct() {
        // Every other syscall allowed: hundreds of ranges, so the lower
        // half of the top tree nodes is beyond a conditional jump's 255.
        let mut text = String::from("[allow]\n");
        let mut deny = String::from("[deny]\n");
        for (i, sysno) in syscalls::x86_64::Sysno::iter().enumerate() {
            let line = format!("{} = \"x\"\n", sysno.name());
            if i % 2 == 0 {
                text.push_str(&line);
            } else {
                deny.push_str(&line);
            }
        }
        text.push_str(&deny);
        let p = Policy::from_toml(&text).expect("valid");
        let f = p.compile(Arch::X86_64, DenyMode::Errno).expect("compiles");
        assert!(f.instructions().len() > 512, "{}", f.instructions().len());
        assert!(
            f.instructions().iter().any(|i| i.code == JMP_JA),
            "no long hop was needed: the test no longer tests it"
        );
        assert_filter_agrees_with_policy(&p);
    }

    #[test]
    fn the_default_filter_is_a_short_search() {
        for arch in Arch::ALL {
            for mode in [DenyMode::Notify, DenyMode::Errno] {
                let f = filter(arch, mode);
                let n = f.instructions().len();
                eprintln!("{arch:?} {mode:?}: {n} instructions");
                // The linear list it replaced had 600 to 750.
                assert!(n < 300, "{arch:?} {mode:?}: {n} instructions");
                // Small enough that every tree node reaches its upper half
                // with a conditional jump.
                assert!(f.instructions().iter().all(|i| i.code != JMP_JA));
            }
        }
    }
}
