//! The policy file format and its validation: the one parser of seccomp
//! policies.
//!
//! This file stands alone on purpose. `crates/engine/build.rs` includes it
//! (`#[path]`) to turn `default-policy.toml` into static data at build time,
//! so a misspelt name in the shipped policy fails the build; and
//! [`Policy::from_toml`](super::Policy::from_toml) uses it at run time for
//! an operator's file. It may use only `std`, `serde`, `toml` and
//! `syscalls`, the engine's build dependencies, and nothing from the rest of
//! the crate.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

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

/// A validated policy file: section name to reason, and the rules in file
/// order.
#[derive(Debug, Clone)]
pub struct ParsedPolicy {
    /// `[allow]`.
    pub allow: BTreeMap<String, String>,
    /// `[deny]`.
    pub deny: BTreeMap<String, String>,
    /// `[silent_enosys]`.
    pub silent_enosys: BTreeMap<String, String>,
    /// `[[rule]]`, in file order.
    pub rules: Vec<Rule>,
}

/// Why a policy file was refused. The engine maps each variant onto the
/// [`SeccompError`](super::SeccompError) variant of the same name; the
/// messages are the same.
#[derive(Debug)]
pub enum PolicyError {
    /// Not valid TOML, or not the expected shape.
    Parse(toml::de::Error),
    /// A name that is a syscall on no supported architecture.
    UnknownSyscall {
        /// The section the name appears in.
        section: String,
        /// The unknown name.
        name: String,
    },
    /// The same syscall in two sections.
    DuplicateSyscall {
        /// The syscall.
        name: String,
        /// The first section naming it.
        first: String,
        /// The second section naming it.
        second: String,
    },
    /// A malformed `[[rule]]`.
    BadRule {
        /// Zero-based position of the rule in the file.
        index: usize,
        /// The rule's syscall.
        syscall: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Parse(source) => write!(f, "seccomp policy is not valid: {source}"),
            PolicyError::UnknownSyscall { section, name } => write!(
                f,
                "seccomp policy [{section}] names `{name}`, which is a system call on no supported architecture; check the spelling"
            ),
            PolicyError::DuplicateSyscall {
                name,
                first,
                second,
            } => write!(
                f,
                "seccomp policy lists `{name}` in both [{first}] and [{second}]; keep one"
            ),
            PolicyError::BadRule {
                index,
                syscall,
                problem,
            } => write!(
                f,
                "seccomp policy rule #{index} (`{syscall}`) is invalid: {problem}"
            ),
        }
    }
}

impl std::error::Error for PolicyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PolicyError::Parse(source) => Some(source),
            _ => None,
        }
    }
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

/// Whether `name` is a syscall on at least one supported architecture (the
/// ones of `Arch::ALL`; a test keeps the two lists in step).
pub fn exists_somewhere(name: &str) -> bool {
    name.parse::<syscalls::x86_64::Sysno>().is_ok()
        || name.parse::<syscalls::aarch64::Sysno>().is_ok()
}

/// Parses and validates a policy: every name must be a syscall on some
/// supported architecture, appear in one section only, and every rule must
/// have exactly one check on an argument 0..=5 with 32-bit values and a
/// reason.
pub fn parse(text: &str) -> Result<ParsedPolicy, PolicyError> {
    let file: PolicyFile = toml::from_str(text).map_err(PolicyError::Parse)?;

    let mut seen: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut claim = |name: &str, section: &'static str| -> Result<(), PolicyError> {
        if !exists_somewhere(name) {
            return Err(PolicyError::UnknownSyscall {
                section: section.to_owned(),
                name: name.to_owned(),
            });
        }
        match seen.get(name) {
            // Several rules for one syscall are allowed (they are ANDed).
            Some(&"rule") if section == "rule" => Ok(()),
            Some(first) => Err(PolicyError::DuplicateSyscall {
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
        let bad = |problem: &str| PolicyError::BadRule {
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
        let words = |vs: &[u64]| -> Result<Vec<u32>, PolicyError> {
            if vs.is_empty() {
                return Err(bad("the list of values is empty"));
            }
            vs.iter().map(|&v| word(v)).collect()
        };
        let check = match (&raw.allow_if_mask_clear, &raw.allow_if_in, &raw.deny_if_in) {
            (Some(mask), None, None) => Check::AllowIfMaskClear(word(*mask)?),
            (None, Some(values), None) => Check::AllowIfIn(words(values)?),
            (None, None, Some(values)) => Check::DenyIfIn(words(values)?),
            _ => {
                return Err(bad(
                    "give exactly one of `allow_if_mask_clear`, `allow_if_in`, `deny_if_in`",
                ))
            }
        };
        rules.push(Rule {
            syscall: raw.syscall,
            arg: raw.arg,
            check,
            reason: raw.reason,
        });
    }

    Ok(ParsedPolicy {
        allow: file.allow,
        deny: file.deny,
        silent_enosys: file.silent_enosys,
        rules,
    })
}
