//! What a caller asks the engine for: the program, its inputs and its limits.
//!
//! These types are the one schema every interface (CLI, config file, and later
//! the HTTP server and clients) fills in. They are plain data: building one
//! never touches the system. [`Limits::validate`] checks them against the
//! operator's maxima before anything runs.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Resource limits of one run. Every field has a secure default
/// ([`Limits::default`]); units are in the field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time of the whole run, in milliseconds. Default 10 s.
    pub wall_time_ms: u64,
    /// CPU time of all the sandbox's processes together, in milliseconds. Default 10 s.
    pub cpu_time_ms: u64,
    /// Memory of all processes together (cgroup), in bytes; swap is 0. Default 256 MiB.
    pub memory_bytes: u64,
    /// Processes and threads together. Default 64.
    pub pids: u64,
    /// Writable space shared by /sandbox, /tmp and /dev/shm, in bytes. Default 64 MiB.
    pub disk_bytes: u64,
    /// Bytes kept of stdout, and separately of stderr. Default 1 MiB.
    pub output_bytes: u64,
    /// RLIMIT_NOFILE: open file descriptors per process. Default 256.
    pub open_files: u64,
    /// RLIMIT_FSIZE: the largest file a process may write, in bytes. Default 64 MiB.
    pub file_size_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall_time_ms: 10_000,
            cpu_time_ms: 10_000,
            memory_bytes: 256 << 20,
            pids: 64,
            disk_bytes: 64 << 20,
            output_bytes: 1 << 20,
            open_files: 256,
            file_size_bytes: 64 << 20,
        }
    }
}

/// A limit that a request exceeded, or that makes no sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("--{flag} {value} is above this host's maximum of {max} (set in the config file's [max] table); ask for less or raise the maximum")]
    AboveMaximum {
        flag: &'static str,
        value: String,
        max: String,
    },
    #[error("--{flag} {value} is above this host's maximum of {max} (set in the config file's [network] table); ask for less or raise the maximum")]
    NetworkAboveMaximum {
        flag: &'static str,
        value: String,
        max: String,
    },
    #[error("--{flag} must be at least {min}, got {value}")]
    BelowMinimum {
        flag: &'static str,
        value: String,
        min: String,
    },
}

/// One limit's name as the user writes it, with how to print its values.
struct LimitField {
    flag: &'static str,
    get: fn(&Limits) -> u64,
    get_mut: fn(&mut Limits) -> &mut u64,
    min: u64,
    print: fn(u64) -> String,
}

fn print_ms(ms: u64) -> String {
    format!("{}s", ms as f64 / 1000.0)
}

fn print_count(n: u64) -> String {
    n.to_string()
}

const LIMIT_FIELDS: &[LimitField] = &[
    LimitField {
        flag: "wall-time",
        get: |l| l.wall_time_ms,
        get_mut: |l| &mut l.wall_time_ms,
        min: 1,
        print: print_ms,
    },
    LimitField {
        flag: "cpu-time",
        get: |l| l.cpu_time_ms,
        get_mut: |l| &mut l.cpu_time_ms,
        min: 1,
        print: print_ms,
    },
    LimitField {
        flag: "memory",
        get: |l| l.memory_bytes,
        get_mut: |l| &mut l.memory_bytes,
        min: 4 << 20,
        print: crate::units::format_size,
    },
    LimitField {
        flag: "pids",
        get: |l| l.pids,
        get_mut: |l| &mut l.pids,
        min: 1,
        print: print_count,
    },
    LimitField {
        flag: "disk",
        get: |l| l.disk_bytes,
        get_mut: |l| &mut l.disk_bytes,
        min: 64 << 10,
        print: crate::units::format_size,
    },
    LimitField {
        flag: "output",
        get: |l| l.output_bytes,
        get_mut: |l| &mut l.output_bytes,
        min: 0,
        print: crate::units::format_size,
    },
    LimitField {
        flag: "open-files",
        get: |l| l.open_files,
        get_mut: |l| &mut l.open_files,
        min: 8,
        print: print_count,
    },
    LimitField {
        flag: "file-size",
        get: |l| l.file_size_bytes,
        get_mut: |l| &mut l.file_size_bytes,
        min: 0,
        print: crate::units::format_size,
    },
];

impl Limits {
    /// The most an operator lets any request ask for, when the config file
    /// says nothing: generous, but bounded.
    pub fn default_maximum() -> Self {
        Limits {
            wall_time_ms: 600_000,
            cpu_time_ms: 600_000,
            memory_bytes: 8 << 30,
            pids: 4096,
            disk_bytes: 4 << 30,
            output_bytes: 256 << 20,
            open_files: 65_536,
            file_size_bytes: 4 << 30,
        }
    }

    /// Each limit, but no higher than in `max`.
    pub fn lowered_to(&self, max: &Limits) -> Limits {
        self.combined(max, u64::min)
    }

    /// Each limit, the higher of this one's and `other`'s.
    pub fn highest(&self, other: &Limits) -> Limits {
        self.combined(other, u64::max)
    }

    fn combined(&self, other: &Limits, pick: fn(u64, u64) -> u64) -> Limits {
        let mut out = self.clone();
        for field in LIMIT_FIELDS {
            *(field.get_mut)(&mut out) = pick((field.get)(self), (field.get)(other));
        }
        out
    }

    /// Checks every limit against `max` and against its sane minimum. A limit
    /// above the maximum is refused, never clamped.
    pub fn validate(&self, max: &Limits) -> Result<(), LimitError> {
        for field in LIMIT_FIELDS {
            let value = (field.get)(self);
            let maximum = (field.get)(max);
            if value > maximum {
                return Err(LimitError::AboveMaximum {
                    flag: field.flag,
                    value: (field.print)(value),
                    max: (field.print)(maximum),
                });
            }
            if value < field.min {
                return Err(LimitError::BelowMinimum {
                    flag: field.flag,
                    value: (field.print)(value),
                    min: (field.print)(field.min),
                });
            }
        }
        Ok(())
    }
}

/// A file or directory copied from the host into the sandbox before the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    /// Where to read it on the host.
    pub host_path: PathBuf,
    /// Where to put it, relative to /sandbox (no `..`, not absolute).
    pub sandbox_path: PathBuf,
}

/// Content given directly (the language layer and the server hand source
/// code this way), written into /sandbox before the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InlineFile {
    /// Where to put it, relative to /sandbox (no `..`, not absolute).
    pub sandbox_path: PathBuf,
    /// The bytes to write.
    pub content: Vec<u8>,
    /// Whether the file is executable.
    #[serde(default)]
    pub executable: bool,
}

/// A read-only bind mount of a host path into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnlyPath {
    /// The host path (absolute).
    pub host: PathBuf,
    /// Where it appears in the sandbox (absolute); the host path when absent.
    #[serde(default)]
    pub sandbox: Option<PathBuf>,
    /// Skip it silently when the host lacks it (used by the defaults, which
    /// list paths that only some distributions have).
    #[serde(default)]
    pub optional: bool,
}

/// Which output files to copy out of /sandbox after the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Glob patterns relative to /sandbox (`*.txt`, `out/**`).
    pub patterns: Vec<String>,
    /// Glob patterns of files never copied, even when a pattern matches
    /// (a front end's own support files).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The host directory that receives them (created if missing).
    pub host_dir: PathBuf,
    /// At most this many files are copied.
    pub max_files: u64,
    /// At most this many bytes in all are copied.
    pub max_total_bytes: u64,
}

/// A program run in the sandbox before the main one, in the same
/// namespaces and workspace, with its own limits and result: a compile
/// step, for instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// As `SandboxSpec::program`.
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment variables of this stage.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Its standard input (empty: /dev/null).
    #[serde(default)]
    pub stdin: Vec<u8>,
    pub limits: Limits,
}

/// Network access of one run. The default is none: the sandbox has only
/// its own loopback. With `allow` rules, a filtering proxy outside the
/// sandbox is reachable at a loopback port inside it (see
/// [`crate::network`]) and lets through connections to the listed
/// destinations only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// Destinations the sandbox may reach, one rule each: a host name
    /// (`pypi.org`), a wildcard domain (`*.pythonhosted.org`), an IP
    /// address or CIDR (`203.0.113.7`, `[2001:db8::1]`, `10.0.0.0/8`), each
    /// with an optional `:PORT` or `:LOW-HIGH` (default 80 and 443).
    /// Empty: no network.
    pub allow: Vec<String>,
    /// Names the proxy resolves to a fixed address (`NAME:ADDR`) instead of
    /// asking the host's resolver: for tests and for pinning a host. The
    /// address is still checked like any other.
    pub resolve: Vec<String>,
    /// Bytes the sandbox may send through the proxy, all connections
    /// together. Default 256 MiB.
    pub max_bytes_up: u64,
    /// Bytes the sandbox may receive through the proxy. Default 1 GiB.
    pub max_bytes_down: u64,
    /// Connections (allowed or refused) the sandbox may open through the
    /// proxy. Default 1024.
    pub max_connections: u64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            allow: Vec::new(),
            resolve: Vec::new(),
            max_bytes_up: 256 << 20,
            max_bytes_down: 1 << 30,
            max_connections: 1024,
        }
    }
}

impl NetworkSpec {
    /// Whether the run has any network beyond its loopback.
    pub fn enabled(&self) -> bool {
        !self.allow.is_empty()
    }

    /// Checks the proxy's limits against the operator's (`max`, from the
    /// config file's `[network]` table): above is refused, never clamped.
    pub fn validate_limits(&self, max: &NetworkSpec) -> Result<(), LimitError> {
        type Field = (&'static str, u64, u64, fn(u64) -> String);
        let fields: [Field; 3] = [
            (
                "net-max-up",
                self.max_bytes_up,
                max.max_bytes_up,
                crate::units::format_size,
            ),
            (
                "net-max-down",
                self.max_bytes_down,
                max.max_bytes_down,
                crate::units::format_size,
            ),
            (
                "net-max-connections",
                self.max_connections,
                max.max_connections,
                print_count,
            ),
        ];
        for (flag, value, maximum, print) in fields {
            if value > maximum {
                return Err(LimitError::NetworkAboveMaximum {
                    flag,
                    value: print(value),
                    max: print(maximum),
                });
            }
            if value == 0 {
                return Err(LimitError::BelowMinimum {
                    flag,
                    value: print(value),
                    min: print(1),
                });
            }
        }
        Ok(())
    }
}

/// Everything the engine needs for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The program: an absolute path in the sandbox, or a name looked up on
    /// the sandbox's PATH.
    pub program: String,
    /// Its arguments, without argv[0].
    pub args: Vec<String>,
    /// Extra environment variables, on top of the clean default set.
    pub env: Vec<(String, String)>,
    /// Bytes given to the program on its standard input (empty: nothing).
    pub stdin: Vec<u8>,
    /// Host files copied in.
    pub files: Vec<InputFile>,
    /// Inline files written in.
    pub inline_files: Vec<InlineFile>,
    /// Output files to collect.
    pub outputs: Option<OutputSpec>,
    /// Limits of this run.
    pub limits: Limits,
    /// Extra read-only host paths for this run (on top of the engine's).
    pub extra_read_only: Vec<ReadOnlyPath>,
    /// Working directory inside the sandbox (absolute). Default `/sandbox`.
    pub workdir: String,
    /// Run even if some limit or isolation layer cannot be enforced on this
    /// host; the result then lists what was not enforced.
    pub allow_degraded: bool,
    /// Report where the run's time went (`RunResult::profile`).
    #[serde(default)]
    pub profile: bool,
    /// Programs run first, in order, in the same sandbox; the first that
    /// does not end `ok` stops the run (see `Engine::run_staged`).
    #[serde(default)]
    pub before: Vec<Stage>,
    /// Network access (default: none).
    #[serde(default)]
    pub network: NetworkSpec,
}

impl SandboxSpec {
    /// A spec that runs `program` with `args` under the default limits.
    pub fn new(program: impl Into<String>, args: Vec<String>) -> Self {
        SandboxSpec {
            program: program.into(),
            args,
            env: Vec::new(),
            stdin: Vec::new(),
            files: Vec::new(),
            inline_files: Vec::new(),
            outputs: None,
            limits: Limits::default(),
            extra_read_only: Vec::new(),
            workdir: "/sandbox".to_string(),
            allow_degraded: false,
            profile: false,
            before: Vec::new(),
            network: NetworkSpec::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_within_the_default_maximum() {
        assert_eq!(
            Limits::default().validate(&Limits::default_maximum()),
            Ok(())
        );
    }

    #[test]
    fn a_limit_above_the_maximum_is_refused_not_clamped() {
        let limits = Limits {
            memory_bytes: 16 << 30,
            ..Limits::default()
        };
        let err = limits
            .validate(&Limits::default_maximum())
            .expect_err("16G must be refused");
        assert_eq!(
            err,
            LimitError::AboveMaximum {
                flag: "memory",
                value: "16G".into(),
                max: "8G".into()
            }
        );
        assert!(err.to_string().contains("--memory 16G"));
    }

    #[test]
    fn lowered_and_highest_combine_every_field() {
        let small = Limits {
            memory_bytes: 1 << 20,
            open_files: 10,
            ..Limits::default()
        };
        let big = Limits::default_maximum();
        assert_eq!(small.highest(&big), big);
        assert_eq!(big.lowered_to(&small), small);
        assert_eq!(Limits::default().lowered_to(&small).memory_bytes, 1 << 20);
    }

    #[test]
    fn a_limit_below_its_minimum_is_refused() {
        let limits = Limits {
            pids: 0,
            ..Limits::default()
        };
        assert!(matches!(
            limits.validate(&Limits::default_maximum()),
            Err(LimitError::BelowMinimum { flag: "pids", .. })
        ));
    }
}
