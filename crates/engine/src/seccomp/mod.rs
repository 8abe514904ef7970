//! The seccomp layer: which system calls a sandboxed program may make.
//!
//! The policy is data ([`default-policy.toml`](default-policy.toml), or an
//! operator's own file through [`Policy::from_toml`]): an allow-list with a
//! reason on every entry, a deny-list, calls answered `ENOSYS` silently, and a
//! few argument rules. The default file is parsed and checked at build time
//! (`build.rs`, with the one parser in `policy_file.rs`) and compiled in as
//! static data, so a typo in it fails the build and [`default_policy`]
//! parses nothing at run time. [`Policy::compile`] turns a policy into a
//! classic-BPF program for one architecture (a binary search over the
//! syscall numbers); the supervisor side ([`Notifier`]) answers the filter's
//! user notifications and records every refused call by name.
//!
//! What the parent does: [`default_policy`], [`Policy::compile`],
//! [`user_notif_supported`], then [`Notifier::handle_one`] whenever the
//! listener fd is readable. What the child does, last before `execve` and
//! after `PR_SET_NO_NEW_PRIVS`: [`install_with_listener`] (or [`install`]
//! when user notification is unavailable) — both async-signal-safe.

#[cfg(test)]
mod bench;
mod bpf;
mod notify;
mod policy;
mod policy_file;

use std::io;

pub use notify::{
    install, install_with_listener, user_notif_supported, Denial, Notifier, MAX_DISTINCT_NAMES,
};
pub use policy::{default_policy, CompiledFilter, Policy};
pub use policy_file::{Check, Rule};

/// `AUDIT_ARCH_X86_64` (linux/audit.h): EM_X86_64 | 64-bit | little-endian.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_AARCH64`: EM_AARCH64 | 64-bit | little-endian.
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// `AUDIT_ARCH_I386`: what `int 0x80` from a 64-bit x86 process reports.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `__X32_SYSCALL_BIT`: set in `nr` for x32-ABI calls on x86_64.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Errors of the seccomp layer.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The policy file is not valid TOML or does not have the expected shape.
    #[error("seccomp policy is not valid: {source}")]
    ParsePolicy {
        /// The parser's error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A syscall name exists on no supported architecture (a typo?).
    #[error("seccomp policy [{section}] names `{name}`, which is a system call on no supported architecture; check the spelling")]
    UnknownSyscall {
        /// The section the name appears in.
        section: String,
        /// The unknown name.
        name: String,
    },
    /// The same syscall appears in two sections.
    #[error("seccomp policy lists `{name}` in both [{first}] and [{second}]; keep one")]
    DuplicateSyscall {
        /// The syscall.
        name: String,
        /// The first section naming it.
        first: String,
        /// The second section naming it.
        second: String,
    },
    /// A `[[rule]]` table is malformed.
    #[error("seccomp policy rule #{index} (`{syscall}`) is invalid: {problem}")]
    BadRule {
        /// Zero-based position of the rule in the file.
        index: usize,
        /// The rule's syscall.
        syscall: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A jump in the compiled program would exceed classic BPF's 255.
    #[error("seccomp filter for `{syscall}` needs a jump of {distance} instructions (at most 255); split the rule")]
    JumpTooFar {
        /// The syscall whose block is too long.
        syscall: String,
        /// The distance that did not fit.
        distance: usize,
    },
    /// The compiled program is empty or longer than the kernel accepts.
    #[error("seccomp filter has {len} instructions; the kernel accepts 1 to 4096")]
    ProgramTooLong {
        /// The program's length.
        len: usize,
    },
    /// The compiled program failed the builder's own structural check (a bug).
    #[error("seccomp filter instruction {index} is invalid: {what} (this is a bug in formicary)")]
    InvalidProgram {
        /// The instruction's index.
        index: usize,
        /// What is wrong.
        what: String,
    },
    /// `SECCOMP_IOCTL_NOTIF_RECV` failed.
    #[error("cannot receive a seccomp notification from fd {fd}: {source}")]
    NotifRecv {
        /// The listener fd.
        fd: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `SECCOMP_IOCTL_NOTIF_SEND` failed (other than the target having died).
    #[error("cannot answer seccomp notification {id} on fd {fd}: {source}")]
    NotifSend {
        /// The listener fd.
        fd: i32,
        /// The notification's id.
        id: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A CPU architecture a filter can be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86_64 (the required one). Also denies i386 and x32 entry points.
    X86_64,
    /// aarch64. (32-bit arm compat tasks report another audit arch and are
    /// denied by the arch check.)
    Aarch64,
}

impl Arch {
    /// Every supported architecture; a policy name must exist on at least one.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture this binary runs on.
    #[cfg(target_arch = "x86_64")]
    pub const fn native() -> Arch {
        Arch::X86_64
    }

    /// The architecture this binary runs on.
    #[cfg(target_arch = "aarch64")]
    pub const fn native() -> Arch {
        Arch::Aarch64
    }

    /// The `AUDIT_ARCH_*` value the kernel puts in `seccomp_data.arch`.
    pub const fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 => AUDIT_ARCH_X86_64,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    /// The architecture whose `AUDIT_ARCH_*` value is `audit_arch`.
    pub fn from_audit_arch(audit_arch: u32) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.audit_arch() == audit_arch)
    }

    /// The number of syscall `name` on this architecture, if it exists here.
    pub fn syscall_nr(self, name: &str) -> Option<u32> {
        let id = match self {
            Arch::X86_64 => name.parse::<syscalls::x86_64::Sysno>().ok()?.id(),
            Arch::Aarch64 => name.parse::<syscalls::aarch64::Sysno>().ok()?.id(),
        };
        u32::try_from(id).ok()
    }

    /// The name of syscall number `nr` on this architecture.
    pub fn syscall_name(self, nr: u32) -> Option<&'static str> {
        let nr = usize::try_from(nr).ok()?;
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::new(nr).map(|s| s.name()),
            Arch::Aarch64 => syscalls::aarch64::Sysno::new(nr).map(|s| s.name()),
        }
    }

    /// A short lowercase name for messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// What the filter does with a refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyMode {
    /// `SECCOMP_RET_USER_NOTIF`: the supervisor records the call and answers
    /// with the errno ([`Policy::denial`]).
    Notify,
    /// `SECCOMP_RET_ERRNO`: `EPERM` for denied calls and failed rules,
    /// `ENOSYS` for unknown ones; nothing is recorded.
    Errno,
}
