//! `formicary`: the command-line front end. Thin: it parses flags into the
//! engine's spec, runs it, and prints the result.

// The entry point is `main` below, called by the C runtime: see there.
// (Tests keep the harness's own.)
#![cfg_attr(not(test), no_main)]

mod args;
mod batch;
mod echo;
mod stop;

use anyhow::Context;
use args::{BatchArgs, CheckArgs, Cli, Command, ExecArgs, RunArgs, RuntimesArgs};
use clap::{CommandFactory, Parser};
use formicary_engine::config::EngineConfig;
use formicary_engine::result::{RunResult, Status};
use formicary_engine::sandbox::Engine;
use std::io::Write;

/// formicary's exit status, 0 to 255.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(test, allow(dead_code))]
struct ExitCode(u8);

impl ExitCode {
    const SUCCESS: ExitCode = ExitCode(0);
}

impl From<u8> for ExitCode {
    fn from(code: u8) -> ExitCode {
        ExitCode(code)
    }
}

/// Exit code when formicary itself fails before running anything.
const EXIT_SETUP: u8 = 125;

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<EngineConfig> {
    match path {
        Some(p) => Ok(EngineConfig::load(p)?),
        None => Ok(EngineConfig::default()),
    }
}

/// Exits with clap's usage error (exit code 2): flags that contradict each
/// other or would do nothing, found once the config is known.
fn usage_error(message: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// The run's network from `--net*` flags over the config's `[network]`.
fn network_of(
    flags: &args::NetArgs,
    config: &EngineConfig,
) -> anyhow::Result<formicary_engine::spec::NetworkSpec> {
    let network = flags
        .resolve(&config.network)
        .unwrap_or_else(|message| usage_error(message));
    network
        .validate_limits(&config.network)
        .map_err(anyhow::Error::msg)?;
    Ok(network)
}

/// The process's entry point, called by the C runtime in place of the
/// standard library's. That one finds the main thread's stack by reading
/// /proc/self/maps (glibc's `pthread_getattr_np`) and sets up an alternate
/// signal stack, to print a message on stack overflow: ~40 µs of every
/// `formicary exec`, for a process whose work is mostly waiting. What else
/// it does, this does too: the standard streams are open (on /dev/null
/// if the caller closed one), SIGPIPE is ignored (a closed pipe is an
/// error to report, not a death), a panic unwinds (so a run's teardown
/// still kills its sandbox and removes its cgroup) and exits 101, and
/// standard output is flushed before the exit (`std::process::exit`
/// does). A stack overflow is a plain SIGSEGV, and a panic's message names
/// the main thread `<unnamed>`. (`std::env::args` works without Rust's
/// start-up: on glibc the standard library takes the arguments in an
/// `.init_array` hook.)
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    open_standard_streams();
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // `process::exit` flushes standard output, as a return from Rust's
    // `main` would.
    match std::panic::catch_unwind(run_command) {
        Ok(ExitCode(code)) => std::process::exit(code.into()),
        Err(_) => std::process::exit(101),
    }
}

/// Opens /dev/null on each of descriptors 0, 1 and 2 that is closed, so
/// that no file formicary opens later takes a standard stream's number.
#[cfg_attr(test, allow(dead_code))]
fn open_standard_streams() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes the array given, of the length given.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        // SAFETY: abort takes no arguments and does not return.
        unsafe { libc::abort() };
    }
    for pfd in fds {
        if pfd.revents & libc::POLLNVAL != 0 {
            // SAFETY: a constant path; the lowest free descriptor is the
            // closed one (every lower one is open).
            if unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } != pfd.fd {
                // SAFETY: as above.
                unsafe { libc::abort() };
            }
        }
    }
}

/// What `main` runs: a command, to its exit code.
#[cfg_attr(test, allow(dead_code))]
fn run_command() -> ExitCode {
    // `formicary batch` runs this binary again as its sandbox spawner:
    // that process serves the engine and never returns from here.
    formicary_engine::spawner::main_if_spawner();
    let cli = Cli::parse();
    // `exec --json` and `run --json` promise one result object on stdout,
    // even for a request refused before anything ran.
    let json_result = match &cli.command {
        Command::Exec(args) => args.io.json,
        Command::Run(args) => args.io.json,
        _ => false,
    };
    let outcome = match cli.command {
        Command::Exec(args) => exec(&args),
        Command::Run(args) => run(&args),
        Command::Runtimes(args) => runtimes(&args),
        Command::Check(args) => check(&args),
        Command::Batch(args) => batch(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            let message = one_line(&err);
            eprintln!("formicary: {message}");
            if json_result {
                let result =
                    RunResult::setup_error(message, formicary_engine::spec::Limits::default());
                let mut out = std::io::stdout().lock();
                let _ = serde_json::to_writer(&mut out, &result);
                let _ = writeln!(out);
            }
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// The error and its causes on one line, each cause once: typed errors
/// already quote their source in their own message.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn exec(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.io.config.as_deref())?;
    let network = network_of(&args.net, &config)?;
    let spec = args
        .to_spec(&config.defaults, network)
        .map_err(anyhow::Error::msg)?;
    spec.limits
        .validate(&config.max)
        .map_err(anyhow::Error::msg)?;
    let (engine, signals, streamed) = start_engine(config, !args.io.json)?;
    let result = engine.run(&spec);
    if let Some(code) = stopped(&signals, args.io.json, &result) {
        return Ok(code);
    }
    // The run is over and cleaned up (init reaped, cgroup removed, ids
    // released): the engine holds only memory and descriptors now, which
    // the process's exit, next, takes back anyway. Unmapping its reserved
    // child memory here would only add two munmaps and their TLB
    // shootdowns (~20 us) to every run.
    std::mem::forget(engine);
    report(args.io.json, streamed, &result, &result)
}

/// The engine of a one-shot command, which SIGINT, SIGTERM and SIGHUP stop
/// cleanly (`stop.rs`), the signalfd that tells whether one came, and
/// whether the program's output passes through as it comes (`echo.rs`;
/// asked with `pass_through`, done unless formicary's stdout or stderr is
/// not open).
fn start_engine(
    config: EngineConfig,
    pass_through: bool,
) -> anyhow::Result<(Engine, std::os::fd::OwnedFd, bool)> {
    stop::block().context("cannot block the stop signals")?;
    let signals = stop::signal_fd().context("cannot watch the stop signals")?;
    let engine = Engine::new(config).context("cannot start the sandbox engine")?;
    let for_engine = signals
        .try_clone()
        .context("cannot watch the stop signals")?;
    let _ = engine.stop_runs_on(for_engine);
    let streamed = pass_through
        && echo::writers().is_some_and(|(out, err)| engine.echo_output_to(out, err).is_ok());
    Ok((engine, signals, streamed))
}

/// When a stop signal came during the run: says so (and prints the run's
/// result with `--json`), and gives 128 + the signal as the exit code.
fn stopped(signals: &std::os::fd::OwnedFd, json: bool, result: &RunResult) -> Option<ExitCode> {
    use std::os::fd::AsFd;
    let signal = stop::pending(signals.as_fd())?;
    let message = format!(
        "stopped by {} before the run ended; the sandbox was taken down",
        stop::name(signal)
    );
    if json {
        let mut stopped = result.clone();
        stopped.error = Some(message.clone());
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &stopped);
        let _ = writeln!(out);
    }
    eprintln!("formicary: {message}");
    Some(ExitCode::from((128 + signal) as u8))
}

/// Prints a result (`json_value` as JSON, or the program's output passed
/// through) and gives the exit code.
/// Prints the result: one JSON object, or (`streamed`: the program's
/// output has passed through already) the output and why the run ended.
fn report(
    json: bool,
    streamed: bool,
    json_value: &impl serde::Serialize,
    result: &RunResult,
) -> anyhow::Result<ExitCode> {
    let code = result.process_exit_code().clamp(0, 255) as u8;
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, json_value).context("cannot print the result")?;
        writeln!(out).context("cannot print the result")?;
    } else {
        print_plain(result, streamed);
    }
    Ok(ExitCode::from(code))
}

/// The runtime catalogue: built in, or with the operator's file on top.
fn catalogue(path: Option<&std::path::Path>) -> anyhow::Result<formicary_lang::Catalogue> {
    Ok(match path {
        Some(p) => formicary_lang::Catalogue::with_overrides(p)?,
        None => formicary_lang::Catalogue::builtin()?,
    })
}

/// Where runtime versions are remembered: formicary's state directory as
/// root, the user's runtime directory rootless, nowhere otherwise.
fn version_cache(config: &EngineConfig) -> formicary_lang::VersionCache {
    use std::os::unix::fs::DirBuilderExt;
    let dir = if nix_is_root() {
        Some(config.state_dir.clone())
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| std::path::PathBuf::from(d).join("formicary"))
    };
    let dir = dir.filter(|d| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .is_ok()
    });
    formicary_lang::VersionCache::new(dir.as_deref())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.io.config.as_deref())?;
    let language =
        formicary_lang::Language::new(catalogue(args.runtimes.as_deref())?, version_cache(&config));
    let files = match &args.code {
        Some(code) => {
            let runtime = language.resolve(args.lang.as_deref(), None)?;
            vec![formicary_lang::SourceFile {
                name: runtime.default_main.clone(),
                content: code.as_bytes().to_vec(),
            }]
        }
        None => args
            .sources
            .iter()
            .map(|path| read_source(path))
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let main_name = args
        .main
        .clone()
        .or_else(|| files.first().map(|f| f.name.clone()));
    let runtime = language.resolve(args.lang.as_deref(), main_name.as_deref())?;
    let (run_defaults, compile_defaults) = language.limits(runtime, &config.defaults, &config.max);
    let limits = args.limits.resolve(&run_defaults);
    let compile_limits = args.compile_limits.resolve(&compile_defaults);
    limits.validate(&config.max).map_err(anyhow::Error::msg)?;
    if runtime.compile.is_some() {
        // The compile stage's flags are --compile-*: name them so.
        compile_limits
            .validate(&config.max)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replacen("--", "--compile-", 1)))?;
    }
    let network = network_of(&args.net, &config)?;
    let request = formicary_lang::CodeRequest {
        language: Some(runtime.name.clone()),
        main: args.main.clone(),
        files,
        stdin: args.io.read_stdin().map_err(anyhow::Error::msg)?,
        args: args.args.clone(),
        env: args.io.env.clone(),
        outputs: args.io.outputs(limits.disk_bytes),
        limits,
        compile_limits,
        input_files: args.io.files.clone(),
        allow_degraded: args.io.allow_degraded,
        profile: args.io.profile,
        network,
    };
    let (engine, signals, streamed) = start_engine(config, !args.io.json)?;
    let result = language.run(&engine, &request)?;
    if let Some(code) = stopped(&signals, args.io.json, &result.run) {
        return Ok(code);
    }
    if !args.io.json && result.run.status == Status::CompileError {
        if let Some(compile) = &result.compile {
            // The compiler's own words, on stderr.
            let _ = std::io::stderr().write_all(compile.stdout.as_bytes());
            let _ = std::io::stderr().write_all(compile.stderr.as_bytes());
        }
    }
    report(args.io.json, streamed, &result, &result.run)
}

/// A source file from the command line: a relative path keeps its
/// directories in /sandbox; an absolute one keeps only its name.
fn read_source(path: &std::path::Path) -> anyhow::Result<formicary_lang::SourceFile> {
    let content = std::fs::read(path)
        .with_context(|| format!("cannot read source file {}", path.display()))?;
    let relative_clean = path.is_relative()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    let name = if relative_clean {
        path.components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect::<std::path::PathBuf>()
    } else {
        std::path::PathBuf::from(
            path.file_name()
                .with_context(|| format!("{} names no file", path.display()))?,
        )
    };
    Ok(formicary_lang::SourceFile {
        name: name.to_string_lossy().into_owned(),
        content,
    })
}

/// One line of `formicary runtimes`.
#[derive(serde::Serialize)]
struct RuntimeLine {
    name: String,
    aliases: Vec<String>,
    extensions: Vec<String>,
    compiled: bool,
    available: bool,
    version: Option<String>,
    reason: Option<String>,
}

fn runtimes(args: &RuntimesArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let language =
        formicary_lang::Language::new(catalogue(args.runtimes.as_deref())?, version_cache(&config));
    let engine = Engine::new(config).context("cannot start the sandbox engine")?;
    let lines: Vec<RuntimeLine> = language
        .catalogue()
        .runtimes()
        .iter()
        .map(|r| {
            let availability = r.availability();
            RuntimeLine {
                name: r.name.clone(),
                aliases: r.aliases.clone(),
                extensions: r.extensions.clone(),
                compiled: r.compile.is_some(),
                available: availability.is_ok(),
                version: if availability.is_ok() {
                    language.version(&engine, r)
                } else {
                    None
                },
                reason: availability.err(),
            }
        })
        .collect();
    let text = if args.json {
        serde_json::to_string_pretty(&lines).context("cannot print the list")? + "\n"
    } else {
        let mut t = String::new();
        for l in &lines {
            let state = if l.available { "yes" } else { "no " };
            let detail = match (&l.version, &l.reason) {
                (_, Some(reason)) => reason.clone(),
                (Some(v), None) => v.clone(),
                (None, None) => "version unknown".to_string(),
            };
            let names = if l.aliases.is_empty() {
                l.name.clone()
            } else {
                format!("{} ({})", l.name, l.aliases.join(", "))
            };
            t.push_str(&format!("{state}  {names:<32} {detail}\n"));
        }
        t
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// Without --json: the program's output passes through (as it came, when
/// `streamed`; here otherwise), and a line on stderr says why the run
/// ended when the program did not end by itself.
fn print_plain(result: &RunResult, streamed: bool) {
    if !streamed {
        // Byte for byte: binary output passes through unchanged.
        let _ = std::io::stdout().write_all(result.stdout_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(result.stderr_bytes());
    }
    let l = &result.limits;
    let note = match result.status {
        Status::Ok | Status::RuntimeError => None,
        Status::CompileError => Some("compilation failed".to_string()),
        Status::Signaled => Some(format!(
            "program killed by signal {}",
            result.signal.unwrap_or(0)
        )),
        Status::Timeout => Some(format!(
            "wall-time limit of {}s reached",
            l.wall_time_ms as f64 / 1000.0
        )),
        Status::CpuTimeExceeded => Some(format!(
            "CPU-time limit of {}s reached",
            l.cpu_time_ms as f64 / 1000.0
        )),
        Status::MemoryExceeded => Some(format!(
            "memory limit of {} reached",
            formicary_engine::units::format_size(l.memory_bytes)
        )),
        Status::OutputExceeded => Some(format!(
            "output limit of {} reached",
            formicary_engine::units::format_size(l.output_bytes)
        )),
        Status::SetupError => Some(
            result
                .error
                .clone()
                .unwrap_or_else(|| "sandbox setup failed".into()),
        ),
    };
    if let Some(network) = &result.network {
        // Refusals are what a user needs to see to fix a rule.
        for a in network.attempts.iter().filter(|a| !a.allowed) {
            eprintln!("formicary: network: {}", a.reason);
        }
        for limit in &network.limits_exceeded {
            eprintln!("formicary: network limit reached: {limit}");
        }
    }
    if let Some(note) = note {
        eprintln!("formicary: {note}");
    } else if let Some(error) = &result.error {
        eprintln!("formicary: {error}");
    }
}

fn batch(args: &BatchArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let jobs = args.jobs.unwrap_or(cpus);
    let warm = args.warm.unwrap_or(jobs);
    let stdin = std::io::BufReader::new(std::io::stdin());
    let stdout = std::io::stdout();
    // Before the engine and its threads: see `stop.rs`.
    stop::block().context("cannot block the stop signals")?;
    batch::run_batch(config, jobs as usize, warm as usize, stdin, stdout)?;
    if let Some(signal) = stop::received() {
        eprintln!(
            "formicary: stopped by {}; every sandbox was taken down",
            stop::name(signal)
        );
        return Ok(ExitCode::from((128 + signal) as u8));
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let report = formicary_engine::check::host_report(config);
    let text = if args.json {
        serde_json::to_string_pretty(&report).context("cannot print the report")? + "\n"
    } else {
        report.to_text()
    };
    // A closed pipe (`formicary check | head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
