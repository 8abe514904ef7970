//! The command line, defined once with clap. Parsing turns flags into the
//! engine's types and touches nothing on the system except reading the
//! files the user names (--config, --stdin).

use clap::{Args, Parser, Subcommand};
use formicary_engine::spec::{
    InputFile, Limits, NetworkSpec, OutputSpec, ReadOnlyPath, SandboxSpec,
};
use formicary_engine::units::{parse_duration, parse_size};
use std::path::{Path, PathBuf};

/// Run untrusted code in a secure, fast Linux sandbox.
#[derive(Debug, Parser)]
#[command(name = "formicary", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Each subcommand's flags are defined only when it is the one given
/// (`defer`): building every subcommand's arguments cost more than parsing
/// (~0.1 ms at each start). Help and usage are the same, as long as the
/// structs flattened into a subcommand have no doc comment: a deferred
/// subcommand takes the last flattened struct's doc as its `about` (clap
/// 4.6), so theirs are plain comments.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run a program in a new sandbox.
    Exec(Box<ExecArgs>),
    /// Compile (when needed) and run source code in a new sandbox.
    Run(Box<RunArgs>),
    /// List the languages formicary knows and whether each is installed here.
    Runtimes(RuntimesArgs),
    /// Report what this host offers and what formicary can enforce here.
    Check(CheckArgs),
    /// Run many requests (JSON lines on stdin) with sandboxes built ahead; print one result line each
    Batch(BatchArgs),
}

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Requests run at once [default: the number of CPUs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub jobs: Option<u64>,
    /// Sandboxes kept built ahead, waiting for requests [default: --jobs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub warm: Option<u64>,
    /// Configuration file (TOML); see the README
    #[arg(long, value_name = "FILE", env = "FORMICARY_CONFIG")]
    pub config: Option<PathBuf>,
}

// The limit flags, shared by every command that runs something (no doc comment: see `Command`).
#[derive(Debug, Args, Default)]
pub struct LimitArgs {
    /// Wall-clock time of the whole run, in seconds [default: 10]
    #[arg(long, value_name = "SECS", value_parser = parse_ms)]
    pub wall_time: Option<u64>,
    /// CPU time of all processes together, in seconds [default: 10]
    #[arg(long, value_name = "SECS", value_parser = parse_ms)]
    pub cpu_time: Option<u64>,
    /// Memory of all processes together (K/M/G), swap 0 [default: 256M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub memory: Option<u64>,
    /// Processes and threads together [default: 64]
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Writable space: /sandbox, /tmp and /dev/shm together [default: 64M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub disk: Option<u64>,
    /// Bytes kept of stdout, and of stderr; more ends the run [default: 1M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub output: Option<u64>,
    /// Open files per process (RLIMIT_NOFILE) [default: 256]
    #[arg(long, value_name = "N")]
    pub open_files: Option<u64>,
    /// Largest file a process may write (RLIMIT_FSIZE) [default: 64M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub file_size: Option<u64>,
}

fn parse_ms(text: &str) -> Result<u64, String> {
    parse_duration(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| e.to_string())
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

impl LimitArgs {
    /// The limits: each flag given, else the configured default.
    pub fn resolve(&self, defaults: &Limits) -> Limits {
        Limits {
            wall_time_ms: self.wall_time.unwrap_or(defaults.wall_time_ms),
            cpu_time_ms: self.cpu_time.unwrap_or(defaults.cpu_time_ms),
            memory_bytes: self.memory.unwrap_or(defaults.memory_bytes),
            pids: self.pids.unwrap_or(defaults.pids),
            disk_bytes: self.disk.unwrap_or(defaults.disk_bytes),
            output_bytes: self.output.unwrap_or(defaults.output_bytes),
            open_files: self.open_files.unwrap_or(defaults.open_files),
            file_size_bytes: self.file_size.unwrap_or(defaults.file_size_bytes),
        }
    }
}

// Network flags, shared by `exec` and `run` (no doc comment: see `Command`).
#[derive(Debug, Args, Default)]
pub struct NetArgs {
    /// `none` (loopback only), or `allow=RULE[,RULE...]`: let the sandbox reach these destinations through formicary's filtering proxy. A RULE is a host (`pypi.org`), a wildcard domain (`*.pythonhosted.org`), an IP address or CIDR, with an optional `:PORT` or `:LOW-HIGH` (default 80 and 443). Repeatable; replaces the config file's [network] allow [default: none]
    #[arg(long = "net", value_name = "none|allow=RULES", value_parser = parse_net)]
    pub net: Vec<String>,
    /// Make the proxy resolve NAME to ADDR instead of asking the host's resolver (repeatable; the address is still checked like any other)
    #[arg(long = "resolve", value_name = "NAME:ADDR", value_parser = parse_resolve, requires = "net")]
    pub resolve: Vec<String>,
    /// Bytes the sandbox may send through the proxy, all connections together [default: 256M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub net_max_up: Option<u64>,
    /// Bytes the sandbox may receive through the proxy [default: 1G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub net_max_down: Option<u64>,
    /// Connections the sandbox may open through the proxy, allowed or refused [default: 1024]
    #[arg(long, value_name = "N")]
    pub net_max_connections: Option<u64>,
}

fn parse_net(text: &str) -> Result<String, String> {
    formicary_netproxy::RuleSet::parse_net(text)
        .map(|_| text.trim().to_string())
        .map_err(|e| e.to_string())
}

fn parse_resolve(text: &str) -> Result<String, String> {
    formicary_netproxy::StaticResolver::new()
        .add_mapping(text)
        .map(|()| text.trim().to_string())
        .map_err(|e| e.to_string())
}

impl NetArgs {
    /// The run's network: the config file's unless `--net` is given. An
    /// error is a usage error: flags that contradict each other, or that
    /// would do nothing.
    pub fn resolve(&self, defaults: &NetworkSpec) -> Result<NetworkSpec, String> {
        let mut network = defaults.clone();
        if !self.net.is_empty() {
            let none = self.net.iter().any(|n| n == "none");
            if none && self.net.len() > 1 {
                return Err("--net none cannot be combined with --net allow=...".into());
            }
            network.allow = self
                .net
                .iter()
                .filter_map(|n| n.strip_prefix("allow="))
                .map(str::to_string)
                .collect();
        }
        network.resolve.extend(self.resolve.iter().cloned());
        if let Some(v) = self.net_max_up {
            network.max_bytes_up = v;
        }
        if let Some(v) = self.net_max_down {
            network.max_bytes_down = v;
        }
        if let Some(v) = self.net_max_connections {
            network.max_connections = v;
        }
        if !network.enabled() {
            let given = [
                ("--resolve", !self.resolve.is_empty()),
                ("--net-max-up", self.net_max_up.is_some()),
                ("--net-max-down", self.net_max_down.is_some()),
                ("--net-max-connections", self.net_max_connections.is_some()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{flag} has no effect without network: add --net allow=RULE[,RULE...]"
                ));
            }
        }
        Ok(network)
    }
}

// Input, output and reporting flags, shared by `exec` and `run` (no doc comment: see `Command`).
#[derive(Debug, Args)]
pub struct IoArgs {
    /// Give the program this file's content on stdin (`-`: formicary's own stdin)
    #[arg(long, value_name = "PATH|-")]
    pub stdin: Option<String>,
    /// Set an environment variable in the sandbox (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Copy a host file or directory into /sandbox before the run (repeatable)
    #[arg(long = "file", value_name = "HOST_PATH[:SANDBOX_PATH]", value_parser = parse_input_file)]
    pub files: Vec<InputFile>,
    /// Copy matching regular files out of /sandbox after the run (repeatable; needs --out-dir)
    #[arg(long = "out", value_name = "GLOB", requires = "out_dir")]
    pub out: Vec<String>,
    /// Host directory that receives the --out files
    #[arg(long, value_name = "DIR", requires = "out")]
    pub out_dir: Option<PathBuf>,
    /// Configuration file (TOML); see the README
    #[arg(long, value_name = "FILE", env = "FORMICARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print one JSON object with the result instead of passing output through
    #[arg(long)]
    pub json: bool,
    /// Run even when a limit or isolation layer cannot be enforced here; the result lists what was not
    #[arg(long)]
    pub allow_degraded: bool,
    /// Add `profile` to the JSON result: where the run's time went, step by step
    #[arg(long, requires = "json")]
    pub profile: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub io: IoArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// Bind an extra host path read-only into the sandbox (repeatable)
    #[arg(long = "ro-bind", value_name = "HOST_PATH[:SANDBOX_PATH]", value_parser = parse_ro_bind)]
    pub ro_bind: Vec<ReadOnlyPath>,
    /// Working directory inside the sandbox
    #[arg(long, value_name = "DIR", default_value = "/sandbox")]
    pub workdir: String,
    /// The program (a path in the sandbox, or a name on its PATH) and its arguments
    #[arg(required = true, last = true, value_name = "PROGRAM [ARGS]...")]
    pub command: Vec<String>,
}

// The compile stage's limit flags (`run` only) (no doc comment: see `Command`).
#[derive(Debug, Args, Default)]
pub struct CompileLimitArgs {
    /// Compile stage: wall-clock time, in seconds [default: 30]
    #[arg(long, value_name = "SECS", value_parser = parse_ms)]
    pub compile_wall_time: Option<u64>,
    /// Compile stage: CPU time, in seconds [default: 30]
    #[arg(long, value_name = "SECS", value_parser = parse_ms)]
    pub compile_cpu_time: Option<u64>,
    /// Compile stage: memory [default: 512M, more for some languages]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub compile_memory: Option<u64>,
    /// Compile stage: processes and threads [default: 128]
    #[arg(long, value_name = "N")]
    pub compile_pids: Option<u64>,
    /// Compile stage: bytes kept of its stdout and stderr [default: the run's]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub compile_output: Option<u64>,
    /// Compile stage: largest file it may write [default: 256M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub compile_file_size: Option<u64>,
    /// Compile stage: writable space (the one filesystem both stages share is the larger of the two) [default: the run's --disk]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub compile_disk: Option<u64>,
    /// Compile stage: open files per process [default: 1024]
    #[arg(long, value_name = "N")]
    pub compile_open_files: Option<u64>,
}

impl CompileLimitArgs {
    pub fn resolve(&self, defaults: &Limits) -> Limits {
        Limits {
            wall_time_ms: self.compile_wall_time.unwrap_or(defaults.wall_time_ms),
            cpu_time_ms: self.compile_cpu_time.unwrap_or(defaults.cpu_time_ms),
            memory_bytes: self.compile_memory.unwrap_or(defaults.memory_bytes),
            pids: self.compile_pids.unwrap_or(defaults.pids),
            output_bytes: self.compile_output.unwrap_or(defaults.output_bytes),
            file_size_bytes: self.compile_file_size.unwrap_or(defaults.file_size_bytes),
            disk_bytes: self.compile_disk.unwrap_or(defaults.disk_bytes),
            open_files: self.compile_open_files.unwrap_or(defaults.open_files),
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub compile_limits: CompileLimitArgs,
    #[command(flatten)]
    pub io: IoArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// The language (or an alias: py, js, ts, sh, c++, rs, golang...); by default found from the main file's extension
    #[arg(long, value_name = "LANG")]
    pub lang: Option<String>,
    /// The program's source, given inline (needs --lang)
    #[arg(
        long,
        value_name = "CODE",
        requires = "lang",
        conflicts_with = "sources"
    )]
    pub code: Option<String>,
    /// Which of the files is the main one [default: the first]
    #[arg(long, value_name = "NAME")]
    pub main: Option<String>,
    /// An argument for the program (repeatable)
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// A runtime catalogue (TOML) that extends or overrides the built-in one
    #[arg(long, value_name = "FILE", env = "FORMICARY_RUNTIMES")]
    pub runtimes: Option<PathBuf>,
    /// Source files, copied into /sandbox keeping their relative paths
    #[arg(value_name = "FILE", required_unless_present = "code")]
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RuntimesArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Configuration file (TOML)
    #[arg(long, value_name = "FILE", env = "FORMICARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// A runtime catalogue (TOML) that extends or overrides the built-in one
    #[arg(long, value_name = "FILE", env = "FORMICARY_RUNTIMES")]
    pub runtimes: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file (TOML)
    #[arg(long, value_name = "FILE", env = "FORMICARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

fn clean_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn parse_input_file(text: &str) -> Result<InputFile, String> {
    let (host, inside) = match text.rsplit_once(':') {
        Some((h, s)) if !h.is_empty() => (PathBuf::from(h), PathBuf::from(s)),
        _ => {
            let host = PathBuf::from(text);
            let name = host
                .file_name()
                .map(PathBuf::from)
                .ok_or_else(|| format!("`{text}` names no file"))?;
            (host, name)
        }
    };
    if !clean_relative(&inside) {
        return Err(format!(
            "sandbox path {inside:?} must be relative to /sandbox, without `..` (e.g. `data/input.txt`)"
        ));
    }
    Ok(InputFile {
        host_path: host,
        sandbox_path: inside,
    })
}

fn parse_ro_bind(text: &str) -> Result<ReadOnlyPath, String> {
    let (host, inside) = match text.split_once(':') {
        Some((h, s)) => (PathBuf::from(h), Some(PathBuf::from(s))),
        None => (PathBuf::from(text), None),
    };
    let absolute_clean = |p: &Path| {
        p.is_absolute()
            && p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            })
    };
    if !absolute_clean(&host) || !inside.as_deref().is_none_or(absolute_clean) {
        return Err(format!(
            "`{text}`: both paths must be absolute and free of `..`"
        ));
    }
    Ok(ReadOnlyPath {
        host,
        sandbox: inside,
        optional: false,
    })
}

/// Most bytes read from --stdin.
pub const MAX_STDIN: u64 = 256 << 20;
/// Most output files copied out.
pub const MAX_OUT_FILES: u64 = 10_000;

impl ExecArgs {
    /// Builds the engine's spec; reads --stdin.
    /// `network` is the run's, from [`NetArgs::resolve`].
    pub fn to_spec(&self, defaults: &Limits, network: NetworkSpec) -> Result<SandboxSpec, String> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or("no program given: formicary exec [OPTIONS] -- PROGRAM [ARGS...]")?;
        let mut spec = SandboxSpec::new(program.clone(), args.to_vec());
        spec.limits = self.limits.resolve(defaults);
        spec.env = self.io.env.clone();
        spec.files = self.io.files.clone();
        spec.extra_read_only = self.ro_bind.clone();
        spec.workdir = self.workdir.clone();
        spec.allow_degraded = self.io.allow_degraded;
        spec.profile = self.io.profile;
        spec.stdin = self.io.read_stdin()?;
        spec.outputs = self.io.outputs(spec.limits.disk_bytes);
        spec.network = network;
        Ok(spec)
    }
}

impl IoArgs {
    /// The bytes --stdin names (empty without it).
    pub fn read_stdin(&self) -> Result<Vec<u8>, String> {
        let mut data = Vec::new();
        if let Some(source) = &self.stdin {
            use std::io::Read;
            let read = if source == "-" {
                std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut data)
            } else {
                std::fs::File::open(source)
                    .and_then(|f| f.take(MAX_STDIN + 1).read_to_end(&mut data))
            };
            read.map_err(|e| format!("cannot read --stdin {source}: {e}"))?;
            if data.len() as u64 > MAX_STDIN {
                return Err(format!(
                    "--stdin {source} is larger than {} MiB",
                    MAX_STDIN >> 20
                ));
            }
        }
        Ok(data)
    }

    /// The --out/--out-dir request, bounded by `max_total_bytes`.
    pub fn outputs(&self, max_total_bytes: u64) -> Option<OutputSpec> {
        self.out_dir.as_ref().map(|dir| OutputSpec {
            patterns: self.out.clone(),
            exclude: Vec::new(),
            host_dir: dir.clone(),
            max_files: MAX_OUT_FILES,
            max_total_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn exec(args: &[&str]) -> Result<ExecArgs, clap::Error> {
        let mut argv = vec!["formicary", "exec"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Exec(e) => *e,
            _ => panic!("parsed as another command"),
        })
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Regression: with `defer`, a doc comment on a flattened struct became
    /// its subcommand's `about` (`exec --help` said "Network flags, ...").
    #[test]
    fn deferred_subcommands_keep_their_own_about() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build();
        let abouts: Vec<(String, String)> = cli
            .get_subcommands()
            .map(|c| {
                let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
                (c.get_name().to_string(), about)
            })
            .collect();
        for (name, about) in [
            ("exec", "Run a program in a new sandbox"),
            (
                "run",
                "Compile (when needed) and run source code in a new sandbox",
            ),
            ("runtimes", "List the languages formicary knows"),
            ("check", "Report what this host offers"),
            ("batch", "Run many requests"),
        ] {
            let (_, got) = abouts
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no subcommand {name}"));
            assert!(got.starts_with(about), "{name}: about is {got:?}");
        }
        for args in [
            ["formicary", "exec", "--help"],
            ["formicary", "run", "--help"],
        ] {
            let help = Cli::try_parse_from(args).expect_err("--help").to_string();
            let first = help.lines().next().unwrap_or_default();
            assert!(!first.contains("flags"), "{args:?}: {first}");
        }
    }

    #[test]
    fn limits_parse_with_units_and_default_from_config() {
        let e =
            exec(&["--memory", "512M", "--wall-time", "1.5", "--", "/bin/true"]).expect("valid");
        let limits = e.limits.resolve(&Limits::default());
        assert_eq!(limits.memory_bytes, 512 << 20);
        assert_eq!(limits.wall_time_ms, 1500);
        assert_eq!(limits.cpu_time_ms, Limits::default().cpu_time_ms);
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        assert!(exec(&["--memory", "lots", "--", "x"]).is_err());
        assert!(exec(&["--wall-time", "-1", "--", "x"]).is_err());
        assert!(exec(&["--env", "NOEQUALS", "--", "x"]).is_err());
        assert!(exec(&["--file", "/etc/hosts:../escape", "--", "x"]).is_err());
        assert!(exec(&["--file", "/etc/hosts:/abs", "--", "x"]).is_err());
        assert!(exec(&["--ro-bind", "relative", "--", "x"]).is_err());
        assert!(
            exec(&["--out", "*.txt", "--", "x"]).is_err(),
            "--out needs --out-dir"
        );
        assert!(exec(&[]).is_err(), "a program is required");
    }

    #[test]
    fn files_default_to_their_name_in_the_sandbox() {
        let e = exec(&[
            "--file",
            "/etc/hosts",
            "--file",
            "/tmp/x.txt:data/in.txt",
            "--",
            "cat",
        ])
        .expect("valid");
        assert_eq!(e.io.files[0].sandbox_path, PathBuf::from("hosts"));
        assert_eq!(e.io.files[1].sandbox_path, PathBuf::from("data/in.txt"));
        assert_eq!(e.io.files[1].host_path, PathBuf::from("/tmp/x.txt"));
    }

    #[test]
    fn program_and_arguments_follow_the_double_dash() {
        let e = exec(&["--env", "A=b=c", "--", "sh", "-c", "echo $A"]).expect("valid");
        assert_eq!(e.io.env, vec![("A".to_string(), "b=c".to_string())]);
        let spec = e
            .to_spec(&Limits::default(), NetworkSpec::default())
            .expect("spec");
        assert_eq!(spec.program, "sh");
        assert_eq!(spec.args, vec!["-c", "echo $A"]);
    }
}
