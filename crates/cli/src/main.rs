//! `formicary`: the command-line front end. Thin: it parses flags into the
//! engine's spec, runs it, and prints the result.

mod args;

use anyhow::Context;
use args::{CheckArgs, Cli, Command, ExecArgs};
use clap::Parser;
use formicary_engine::config::EngineConfig;
use formicary_engine::result::{RunResult, Status};
use formicary_engine::sandbox::Engine;
use std::io::Write;
use std::process::ExitCode;

/// Exit code when formicary itself fails before running anything.
const EXIT_SETUP: u8 = 125;

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<EngineConfig> {
    match path {
        Some(p) => Ok(EngineConfig::load(p)?),
        None => Ok(EngineConfig::default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Exec(args) => exec(&args),
        Command::Check(args) => check(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("formicary: {err:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn exec(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let spec = args.to_spec(&config.defaults).map_err(anyhow::Error::msg)?;
    spec.limits
        .validate(&config.max)
        .map_err(anyhow::Error::msg)?;
    let engine = Engine::new(config).context("cannot start the sandbox engine")?;
    let result = engine.run(&spec);
    let code = result.process_exit_code().clamp(0, 255) as u8;
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &result).context("cannot print the result")?;
        writeln!(out).context("cannot print the result")?;
    } else {
        print_plain(&result);
    }
    Ok(ExitCode::from(code))
}

/// Without --json: the program's output passes through, and a line on
/// stderr says why the run ended when the program did not end by itself.
fn print_plain(result: &RunResult) {
    let _ = std::io::stdout().write_all(result.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().write_all(result.stderr.as_bytes());
    let l = &result.limits;
    let note = match result.status {
        Status::Ok | Status::RuntimeError => None,
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
    if let Some(note) = note {
        eprintln!("formicary: {note}");
    } else if let Some(error) = &result.error {
        eprintln!("formicary: {error}");
    }
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
