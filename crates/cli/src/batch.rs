//! `formicary batch`: many requests through one engine and a pool of
//! sandboxes built ahead (the engine's fast path), for judges, agents and
//! benchmarks. Requests are JSON lines on stdin; results are JSON lines on
//! stdout, in the order they finish, each with the request's `id`.

use anyhow::Context;
use formicary_engine::config::{EngineConfig, LimitOverrides};
use formicary_engine::pool::SandboxPool;
use formicary_engine::result::RunResult;
use formicary_engine::sandbox::Engine;
use formicary_engine::spawner::SpawnerProgram;
use formicary_engine::spec::{InlineFile, SandboxSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The longest request line read (inline files and stdin included). Each
/// worker may hold one such line and what it becomes, so the batch's own
/// memory stays within a few times this per job.
pub const MAX_LINE: usize = 16 << 20;

/// One request line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Echoed in the result line, to match it with its request.
    #[serde(default)]
    pub id: serde_json::Value,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Given on the program's stdin.
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files written into /sandbox first: relative path to content.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Limits in the config file's units (`{"memory": "512M", "wall_time":
    /// "2.5"}`); the others are the config's defaults.
    #[serde(default)]
    pub limits: LimitOverrides,
    #[serde(default)]
    pub allow_degraded: bool,
    /// Add `profile` to the result: where the request's time went.
    #[serde(default)]
    pub profile: bool,
}

/// One result line: the request's id, how long the request took from the
/// moment a worker took it (µs), and the run's result.
#[derive(Debug, Serialize)]
struct ResultLine<'a> {
    id: &'a serde_json::Value,
    latency_us: u64,
    #[serde(flatten)]
    result: &'a RunResult,
}

impl Request {
    /// The engine's spec for this request.
    pub fn to_spec(&self, config: &EngineConfig) -> Result<SandboxSpec, String> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or("`command` is empty: give the program and its arguments")?;
        let mut spec = SandboxSpec::new(program.clone(), args.to_vec());
        spec.limits = config.defaults.clone();
        // The config's network rules, as every run gets them.
        spec.network = config.network.clone();
        self.limits
            .apply_to(&mut spec.limits)
            .map_err(|(key, value, e)| format!("limits.{key} = {value:?}: {e}"))?;
        spec.env = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        spec.stdin = self.stdin.as_bytes().to_vec();
        spec.inline_files = self
            .files
            .iter()
            .map(|(path, content)| InlineFile {
                sandbox_path: path.into(),
                content: content.as_bytes().to_vec(),
                executable: false,
            })
            .collect();
        spec.allow_degraded = self.allow_degraded;
        spec.profile = self.profile;
        Ok(spec)
    }
}

/// Runs every request of `input` with `jobs` workers and `warm` sandboxes
/// kept ready; writes one result line per request line to `output`.
pub fn run_batch(
    config: EngineConfig,
    jobs: usize,
    warm: usize,
    input: impl BufRead + Send,
    output: impl Write + Send,
) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::new(config).context("cannot start the sandbox engine")?);
    // Many sandboxes from several threads: clone them from a helper
    // process (this binary again; see `main`), not from this one.
    engine.start_spawner(&SpawnerProgram::this_executable())?;
    crate::stop::watch(Arc::clone(&engine)).context("cannot start the signal thread")?;
    let pool = SandboxPool::new(Arc::clone(&engine), warm)
        .context("cannot start the thread that builds sandboxes")?;
    let lines = Mutex::new(BoundedLines::new(input).enumerate());
    let output = Mutex::new(output);
    let failures = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                // Stopped by a signal: no further request.
                if engine.is_stopping() {
                    return;
                }
                let next = match lines.lock() {
                    Ok(mut lines) => lines.next(),
                    Err(_) => None,
                };
                let Some((number, line)) = next else {
                    return;
                };
                let line = match line {
                    Ok(line) => line,
                    Err(e) => {
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("cannot read request line {}: {e}", number + 1));
                        }
                        return;
                    }
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let began = Instant::now();
                let (id, result) = serve_line(&engine, &pool, &line, number + 1);
                let latency_us = began.elapsed().as_micros() as u64;
                let text = serde_json::to_string(&ResultLine {
                    id: &id,
                    latency_us,
                    result: &result,
                });
                let written = match (text, output.lock()) {
                    (Ok(text), Ok(mut out)) => {
                        writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
                    }
                    _ => false,
                };
                if !written {
                    if let Ok(mut f) = failures.lock() {
                        f.push("cannot write a result line".into());
                    }
                    return;
                }
            });
        }
    });
    drop(pool);
    let failures = failures.into_inner().unwrap_or_default();
    if let Some(first) = failures.first() {
        anyhow::bail!("{first}");
    }
    Ok(())
}

/// Lines of at most [`MAX_LINE`] bytes; a longer one is an error, and
/// ends the input.
struct BoundedLines<R> {
    input: R,
    done: bool,
}

impl<R: BufRead> BoundedLines<R> {
    fn new(input: R) -> Self {
        BoundedLines { input, done: false }
    }
}

impl<R: BufRead> Iterator for BoundedLines<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::Read;
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        let read = (&mut self.input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) if line.len() > MAX_LINE => {
                self.done = true;
                Some(Err(std::io::Error::other(format!(
                    "a request line is longer than {MAX_LINE} bytes"
                ))))
            }
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                Some(Ok(line))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// One request line to its id and result. A line that is not a valid
/// request is a `setup_error` result saying why.
fn serve_line(
    engine: &Engine,
    pool: &SandboxPool,
    line: &[u8],
    number: usize,
) -> (serde_json::Value, RunResult) {
    // Invalid UTF-8 is refused by the JSON parser like any other bad line.
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(serde_json::Value::Null);
            let limits = engine.config().defaults.clone();
            return (
                id,
                RunResult::setup_error(format!("request line {number}: {e}"), limits),
            );
        }
    };
    match request.to_spec(engine.config()) {
        Ok(spec) => {
            let mut result = pool.run(&spec);
            if let Some(signal) = crate::stop::received() {
                // Its sandbox was killed by the stop, not by its program.
                result.error = Some(format!(
                    "stopped by {} before the run ended; the sandbox was taken down",
                    crate::stop::name(signal)
                ));
            }
            (request.id.clone(), result)
        }
        Err(message) => (
            request.id.clone(),
            RunResult::setup_error(
                format!("request line {number}: {message}"),
                engine.config().defaults.clone(),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_becomes_a_spec_with_the_config_defaults() {
        let config = EngineConfig::default();
        let r: Request = serde_json::from_str(
            r#"{"id": 7, "command": ["python3", "main.py"], "stdin": "x", "env": {"A": "1"},
                "files": {"main.py": "print(1)"}, "limits": {"memory": "512M", "wall_time": "2.5"}}"#,
        )
        .expect("valid request");
        let spec = r.to_spec(&config).expect("spec");
        assert_eq!(spec.program, "python3");
        assert_eq!(spec.args, vec!["main.py"]);
        assert_eq!(spec.stdin, b"x");
        assert_eq!(spec.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(spec.inline_files.len(), 1);
        assert_eq!(spec.limits.memory_bytes, 512 << 20);
        assert_eq!(spec.limits.wall_time_ms, 2500);
        assert_eq!(spec.limits.pids, config.defaults.pids);
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let config = EngineConfig::default();
        assert!(serde_json::from_str::<Request>(r#"{"command": ["true"], "bogus": 1}"#).is_err());
        let empty: Request = serde_json::from_str(r#"{"command": []}"#).expect("parses");
        assert!(empty.to_spec(&config).is_err());
        let bad: Request =
            serde_json::from_str(r#"{"command": ["true"], "limits": {"memory": "lots"}}"#)
                .expect("parses");
        let err = bad.to_spec(&config).expect_err("refused");
        assert!(err.contains("limits.memory"), "{err}");
    }
}
