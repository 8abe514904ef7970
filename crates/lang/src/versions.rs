//! What version each runtime is, asked of the runtime itself inside a
//! sandbox, and remembered per binary: a runtime's version is asked once
//! after it is installed or upgraded, not on every run.

use crate::catalogue::Runtime;
use formicary_engine::result::Status;
use formicary_engine::sandbox::Engine;
use formicary_engine::spec::SandboxSpec;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Versions, in memory and (where a directory is given) in a JSON file.
pub struct VersionCache {
    file: Option<PathBuf>,
    known: Mutex<BTreeMap<String, String>>,
}

impl VersionCache {
    /// A cache kept in `dir/versions.json` when `dir` is given (it must
    /// belong to the caller: its content is trusted), else in memory only.
    pub fn new(dir: Option<&Path>) -> VersionCache {
        let file = dir.map(|d| d.join("versions.json"));
        let known = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        VersionCache {
            file,
            known: Mutex::new(known),
        }
    }

    /// The identity of the runtime's binary: its path and what changes
    /// when it is replaced.
    fn key(runtime: &Runtime) -> Option<String> {
        // Every binary the runtime needs (tsc as well as node, javac as
        // well as java): upgrading any of them asks again.
        let mut key = format!("{}\0{}", runtime.name, runtime.version.join(" "));
        for path in runtime.requires.iter().chain(runtime.version.first()) {
            let meta = std::fs::metadata(path).ok()?;
            key.push_str(&format!(
                "\0{path}:{}:{}:{}",
                meta.ino(),
                meta.size(),
                meta.mtime()
            ));
        }
        Some(key)
    }

    /// The runtime's version line, or None when it cannot be told.
    pub fn version(&self, engine: &Engine, runtime: &Runtime) -> Option<String> {
        let key = Self::key(runtime)?;
        if let Some(v) = self.known.lock().ok()?.get(&key) {
            return Some(v.clone());
        }
        let version = ask(engine, runtime)?;
        let mut known = self.known.lock().ok()?;
        known.insert(key, version.clone());
        if let Some(file) = &self.file {
            if let Ok(bytes) = serde_json::to_vec(&*known) {
                let tmp = file.with_extension(format!("json.{}", std::process::id()));
                if std::fs::write(&tmp, bytes).is_ok() {
                    let _ = std::fs::rename(&tmp, file);
                }
            }
        }
        Some(version)
    }
}

/// Runs the runtime's version command in a sandbox; the first non-empty
/// line of stdout, else of stderr (java prints its version there).
fn ask(engine: &Engine, runtime: &Runtime) -> Option<String> {
    let mut spec = SandboxSpec::new(runtime.version[0].clone(), runtime.version[1..].to_vec());
    spec.limits.memory_bytes = spec.limits.memory_bytes.max(512 << 20);
    spec.limits.pids = spec.limits.pids.max(128);
    spec.extra_read_only = crate::code::expand_read_only(&runtime.read_only);
    spec.allow_degraded = true;
    let result = engine.run(&spec);
    if result.status != Status::Ok {
        return None;
    }
    [&result.stdout, &result.stderr]
        .iter()
        .flat_map(|s| s.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect())
}
