//! The operator's configuration file (TOML): default limits, the maxima a
//! request may ask for, the read-only host paths, the host uid range and
//! the cgroup parent. One schema for the CLI and (later) the server.
//!
//! ```toml
//! [limits]            # defaults of every run
//! memory = "256M"
//! wall_time = "10"
//! [max]               # the most a request may ask for
//! memory = "2G"
//! [filesystem]
//! read_only = ["/usr", "/bin"]          # replaces the built-in list
//! extra_read_only = ["/opt/tool"]       # added to it
//! [ids]
//! uid_base = 1000000000                 # first host uid for sandboxes (root only)
//! count = 65536
//! [cgroup]
//! parent = "formicary"
//! [seccomp]
//! policy = "/etc/formicary/seccomp.toml"
//! [network]
//! allow = ["pypi.org", "files.pythonhosted.org"]  # every run's default rules (default: none)
//! resolve = ["registry.test:192.0.2.10"]          # pinned names for the proxy
//! max_bytes_up = "256M"                            # default and maximum of a run
//! max_bytes_down = "1G"
//! max_connections = 1024
//! ```

use crate::mounts::default_read_only_paths;
use crate::spec::{Limits, NetworkSpec, ReadOnlyPath};
use crate::units::{parse_duration, parse_size, UnitError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Why the config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path:?} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path:?}: [{table}] {key} = {value:?}: {source}")]
    Value {
        path: PathBuf,
        table: &'static str,
        key: &'static str,
        value: String,
        source: UnitError,
    },
    #[error("config file {path:?}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Limits as written in a TOML file: every field optional, in human units
/// (`memory = "512M"`, `wall_time = "2.5"`). The config file's `[limits]`
/// and `[max]` tables and the runtime catalogue's per-language limits use it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    wall_time: Option<String>,
    cpu_time: Option<String>,
    memory: Option<String>,
    pids: Option<u64>,
    disk: Option<String>,
    output: Option<String>,
    open_files: Option<u64>,
    file_size: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesystemText {
    read_only: Option<Vec<String>>,
    #[serde(default)]
    extra_read_only: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsText {
    uid_base: Option<u32>,
    count: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CgroupText {
    parent: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeccompText {
    policy: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkText {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    resolve: Vec<String>,
    max_bytes_up: Option<String>,
    max_bytes_down: Option<String>,
    max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigText {
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    max: LimitOverrides,
    #[serde(default)]
    filesystem: FilesystemText,
    #[serde(default)]
    ids: IdsText,
    #[serde(default)]
    cgroup: CgroupText,
    #[serde(default)]
    seccomp: SeccompText,
    #[serde(default)]
    network: NetworkText,
}

/// The engine's configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Limits of a run that asks for nothing else.
    pub defaults: Limits,
    /// The most any run may ask for.
    pub max: Limits,
    /// Host paths bound read-only into every sandbox.
    pub read_only: Vec<ReadOnlyPath>,
    /// First host uid (and gid) of the per-sandbox range, when root.
    pub uid_base: u32,
    /// Number of host uids in the range: the most sandboxes at once.
    pub uid_count: u32,
    /// Cgroup (relative to each hierarchy's root) under which sandboxes'
    /// cgroups are created.
    pub cgroup_parent: String,
    /// A seccomp policy file replacing the built-in one.
    pub seccomp_policy: Option<PathBuf>,
    /// Where formicary keeps its lock file (root only).
    pub state_dir: PathBuf,
    /// Every run's network unless it asks otherwise: the default rules
    /// (none unless the operator lists some) and `--resolve` mappings, and
    /// the proxy's byte and connection limits, which are also the most a
    /// run may ask for.
    pub network: NetworkSpec,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            defaults: Limits::default(),
            max: Limits::default_maximum(),
            read_only: default_read_only_paths(),
            uid_base: 1_000_000_000,
            uid_count: 65_536,
            cgroup_parent: "formicary".to_string(),
            seccomp_policy: None,
            state_dir: PathBuf::from("/run/formicary"),
            network: NetworkSpec::default(),
        }
    }
}

fn apply_limits(
    path: &Path,
    table: &'static str,
    text: &LimitOverrides,
    into: &mut Limits,
) -> Result<(), ConfigError> {
    text.apply_to(into)
        .map_err(|(key, value, source)| ConfigError::Value {
            path: path.to_path_buf(),
            table,
            key,
            value,
            source,
        })
}

impl LimitOverrides {
    /// Writes every limit given here into `into`. On a bad value: the key,
    /// the text and why.
    pub fn apply_to(&self, into: &mut Limits) -> Result<(), (&'static str, String, UnitError)> {
        let text = self;
        let err = |key: &'static str, value: &str, source| (key, value.to_string(), source);
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        if let Some(v) = &text.wall_time {
            into.wall_time_ms = ms(parse_duration(v).map_err(|e| err("wall_time", v, e))?);
        }
        if let Some(v) = &text.cpu_time {
            into.cpu_time_ms = ms(parse_duration(v).map_err(|e| err("cpu_time", v, e))?);
        }
        if let Some(v) = &text.memory {
            into.memory_bytes = parse_size(v).map_err(|e| err("memory", v, e))?;
        }
        if let Some(v) = &text.disk {
            into.disk_bytes = parse_size(v).map_err(|e| err("disk", v, e))?;
        }
        if let Some(v) = &text.output {
            into.output_bytes = parse_size(v).map_err(|e| err("output", v, e))?;
        }
        if let Some(v) = &text.file_size {
            into.file_size_bytes = parse_size(v).map_err(|e| err("file_size", v, e))?;
        }
        if let Some(v) = text.pids {
            into.pids = v;
        }
        if let Some(v) = text.open_files {
            into.open_files = v;
        }
        Ok(())
    }
}

fn network_from(path: &Path, text: NetworkText) -> Result<NetworkSpec, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut network = NetworkSpec {
        allow: text.allow,
        resolve: text.resolve,
        ..NetworkSpec::default()
    };
    let size = |key: &'static str, value: &Option<String>, into: &mut u64| {
        if let Some(v) = value {
            *into = parse_size(v).map_err(|source| ConfigError::Value {
                path: path.to_path_buf(),
                table: "network",
                key,
                value: v.clone(),
                source,
            })?;
        }
        Ok::<(), ConfigError>(())
    };
    size(
        "max_bytes_up",
        &text.max_bytes_up,
        &mut network.max_bytes_up,
    )?;
    size(
        "max_bytes_down",
        &text.max_bytes_down,
        &mut network.max_bytes_down,
    )?;
    if let Some(n) = text.max_connections {
        network.max_connections = n;
    }
    // Found out now, not at the first run.
    crate::network::NetworkPlan::validate(&network)
        .map_err(|e| invalid(format!("[network]: {e}")))?;
    Ok(network)
}

fn ro_path(text: &str) -> ReadOnlyPath {
    ReadOnlyPath {
        host: PathBuf::from(text),
        sandbox: None,
        optional: false,
    }
}

impl EngineConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<EngineConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<EngineConfig, ConfigError> {
        let parsed: ConfigText = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut config = EngineConfig::default();
        apply_limits(path, "max", &parsed.max, &mut config.max)?;
        // A built-in default above a lowered maximum follows the maximum
        // down; a default the operator wrote must fit (checked below).
        config.defaults = config.defaults.lowered_to(&config.max);
        apply_limits(path, "limits", &parsed.limits, &mut config.defaults)?;
        config
            .defaults
            .validate(&config.max)
            .map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!("the [limits] defaults do not fit [max]: {e}"),
            })?;
        if let Some(list) = &parsed.filesystem.read_only {
            config.read_only = list.iter().map(|p| ro_path(p)).collect();
        }
        config
            .read_only
            .extend(parsed.filesystem.extra_read_only.iter().map(|p| ro_path(p)));
        for entry in &config.read_only {
            let clean = entry.host.is_absolute()
                && entry.host.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if !clean {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "read-only path {:?} must be absolute and free of `..`",
                        entry.host
                    ),
                });
            }
        }
        if let Some(base) = parsed.ids.uid_base {
            if base < 1000 {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("[ids] uid_base = {base} would give sandboxes system uids: use 100000 or more"),
                });
            }
            config.uid_base = base;
        }
        if let Some(count) = parsed.ids.count {
            if count == 0 || config.uid_base.checked_add(count).is_none() {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "[ids] count = {count} must be at least 1 and keep uids below 2^32"
                    ),
                });
            }
            config.uid_count = count;
        }
        if let Some(parent) = parsed.cgroup.parent {
            let ok = !parent.is_empty()
                && Path::new(&parent)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !ok {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "[cgroup] parent = {parent:?} must be a relative path without `..`"
                    ),
                });
            }
            config.cgroup_parent = parent;
        }
        config.seccomp_policy = parsed.seccomp.policy;
        config.network = network_from(path, parsed.network)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EngineConfig, ConfigError> {
        EngineConfig::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(parse("").expect("empty"), EngineConfig::default());
    }

    #[test]
    fn limits_and_maxima_are_read_in_human_units() {
        let c = parse(
            "[limits]\nmemory = \"128M\"\nwall_time = \"2.5\"\npids = 10\n[max]\nmemory = \"1G\"\n",
        )
        .expect("valid");
        assert_eq!(c.defaults.memory_bytes, 128 << 20);
        assert_eq!(c.defaults.wall_time_ms, 2500);
        assert_eq!(c.defaults.pids, 10);
        assert_eq!(c.max.memory_bytes, 1 << 30);
    }

    #[test]
    fn a_lowered_maximum_lowers_the_built_in_default() {
        let c = parse("[max]\nmemory = \"128M\"\n").expect("valid");
        assert_eq!(c.defaults.memory_bytes, 128 << 20);
        assert_eq!(c.defaults.pids, Limits::default().pids);
    }

    #[test]
    fn defaults_above_the_maximum_are_refused() {
        let err =
            parse("[limits]\nmemory = \"2G\"\n[max]\nmemory = \"1G\"\n").expect_err("must fail");
        assert!(err.to_string().contains("do not fit [max]"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_place() {
        assert!(matches!(
            parse("[limits]\nmemroy = \"1G\"\n"),
            Err(ConfigError::Parse { .. })
        ));
        let err = parse("[limits]\nmemory = \"lots\"\n").expect_err("bad size");
        assert!(err.to_string().contains("[limits] memory"), "{err}");
        assert!(parse("[filesystem]\nextra_read_only = [\"relative\"]\n").is_err());
        assert!(parse("[filesystem]\nextra_read_only = [\"/usr/../etc\"]\n").is_err());
        assert!(parse("[ids]\nuid_base = 0\n").is_err());
        assert!(parse("[cgroup]\nparent = \"../escape\"\n").is_err());
    }

    #[test]
    fn read_only_list_replaces_and_extra_extends() {
        let c = parse("[filesystem]\nread_only = [\"/usr\"]\nextra_read_only = [\"/opt\"]\n")
            .expect("valid");
        let hosts: Vec<_> = c.read_only.iter().map(|r| r.host.clone()).collect();
        assert_eq!(hosts, vec![PathBuf::from("/usr"), PathBuf::from("/opt")]);
    }
}
