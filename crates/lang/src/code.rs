//! Running source code: a request names a language (or lets the main file's
//! extension name it) and gives files; the compile stage (when the
//! language has one) and the run stage run one after the other in one
//! sandbox, each with its own limits.

use crate::catalogue::{Catalogue, Runtime};
use crate::versions::VersionCache;
use formicary_engine::result::{RunResult, Status};
use formicary_engine::sandbox::Engine;
use formicary_engine::spec::{
    InlineFile, InputFile, Limits, NetworkSpec, OutputSpec, ReadOnlyPath, SandboxSpec, Stage,
};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// Compile-stage defaults before a runtime's own: more room than a run,
/// because a compiler needs it (and source code can attack a compiler).
pub fn compile_defaults(run: &Limits) -> Limits {
    Limits {
        wall_time_ms: 30_000,
        cpu_time_ms: 30_000,
        memory_bytes: 512 << 20,
        pids: 128,
        // One writable filesystem serves both stages (sized to the larger
        // disk limit), so the compile stage gets the run's by default and
        // the run's --disk stays exact.
        disk_bytes: run.disk_bytes,
        output_bytes: run.output_bytes,
        open_files: run.open_files.max(1024),
        file_size_bytes: run.file_size_bytes.max(256 << 20),
    }
}

/// A source file of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Its path relative to /sandbox.
    pub name: String,
    pub content: Vec<u8>,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeRequest {
    /// A runtime name or alias; None: found from the main file's extension.
    pub language: Option<String>,
    /// The sources; the first is the main file unless `main` names another.
    pub files: Vec<SourceFile>,
    pub main: Option<String>,
    pub stdin: Vec<u8>,
    /// Arguments given to the program.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The run stage's limits (see [`Language::limits`] for defaults).
    pub limits: Limits,
    /// The compile stage's limits.
    pub compile_limits: Limits,
    /// Host files copied into /sandbox as well.
    pub input_files: Vec<InputFile>,
    pub outputs: Option<OutputSpec>,
    pub allow_degraded: bool,
    /// Report where the run's time went (`RunResult::profile`).
    #[serde(default)]
    pub profile: bool,
    /// Network access of both stages (default: none).
    #[serde(default)]
    pub network: NetworkSpec,
}

/// The result of a request: the run's result, plus which language ran, its
/// version, and the compile stage's result (None for interpreted
/// languages). When the compile failed, `status` is `compile_error` and
/// the run fields are empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeResult {
    #[serde(flatten)]
    pub run: RunResult,
    pub language: String,
    pub version: Option<String>,
    pub compile: Option<RunResult>,
}

/// Why a request could not even be tried.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("unknown language `{name}`: formicary knows {known}")]
    UnknownLanguage { name: String, known: String },
    #[error("cannot tell the language of `{file}` from its extension: pass --lang (formicary knows {known})")]
    NoLanguageFor { file: String, known: String },
    #[error("{language} is not available here: {reason}. Install it, or see `formicary runtimes`")]
    Unavailable { language: String, reason: String },
    #[error("no source files given")]
    NoFiles,
    #[error("source file name {name:?} must be a relative path without `..`")]
    BadName { name: String },
    #[error("the main file {main:?} is not among the files given")]
    NoMain { main: String },
    #[error(
        "no `public class` and no class with a `main` method found in {file}: Java needs one to know what to run"
    )]
    NoJavaClass { file: String },
}

/// The language layer: a catalogue and a version cache over an engine.
pub struct Language {
    catalogue: Catalogue,
    versions: VersionCache,
}

impl Language {
    pub fn new(catalogue: Catalogue, versions: VersionCache) -> Language {
        Language {
            catalogue,
            versions,
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The runtime a request would use.
    pub fn resolve(
        &self,
        language: Option<&str>,
        main_file: Option<&str>,
    ) -> Result<&Runtime, CodeError> {
        let known = || self.catalogue.names().join(", ");
        match (language, main_file) {
            (Some(name), _) => {
                self.catalogue
                    .find(name)
                    .ok_or_else(|| CodeError::UnknownLanguage {
                        name: name.to_string(),
                        known: known(),
                    })
            }
            (None, Some(file)) => {
                self.catalogue
                    .for_file(file)
                    .ok_or_else(|| CodeError::NoLanguageFor {
                        file: file.to_string(),
                        known: known(),
                    })
            }
            (None, None) => Err(CodeError::NoFiles),
        }
    }

    /// A runtime's default run and compile limits on top of `base` (the
    /// engine's defaults), none above `max` (a default follows the
    /// operator's maxima down; what a caller asks for is checked later).
    pub fn limits(&self, runtime: &Runtime, base: &Limits, max: &Limits) -> (Limits, Limits) {
        let mut run = base.clone();
        // Validated when the catalogue was loaded.
        let _ = runtime.limits.apply_to(&mut run);
        let run = run.lowered_to(max);
        let mut compile = compile_defaults(&run);
        let _ = runtime.compile_limits.apply_to(&mut compile);
        (run, compile.lowered_to(max))
    }

    /// The version `runtime` reports (cached by the binary's identity).
    pub fn version(&self, engine: &Engine, runtime: &Runtime) -> Option<String> {
        self.versions.version(engine, runtime)
    }

    /// Runs a request to the end.
    pub fn run(&self, engine: &Engine, request: &CodeRequest) -> Result<CodeResult, CodeError> {
        let main_name = match &request.main {
            Some(m) => m.clone(),
            None => request
                .files
                .first()
                .map(|f| f.name.clone())
                .ok_or(CodeError::NoFiles)?,
        };
        let runtime = self.resolve(request.language.as_deref(), Some(&main_name))?;
        runtime
            .availability()
            .map_err(|reason| CodeError::Unavailable {
                language: runtime.name.clone(),
                reason,
            })?;
        for f in &request.files {
            if !clean_relative(&f.name) {
                return Err(CodeError::BadName {
                    name: f.name.clone(),
                });
            }
        }
        let main = request
            .files
            .iter()
            .find(|f| f.name == main_name)
            .ok_or_else(|| CodeError::NoMain {
                main: main_name.clone(),
            })?;

        // Java runs the main file's public class (or, without one, the
        // class that declares `main`), by its package-qualified name, and
        // javac wants a public class in a file of its name.
        let mut files: Vec<SourceFile> = request.files.clone();
        let mut main_file = main_name.clone();
        let class = if runtime.name == "java" {
            let entry = java_entry(&main.content).ok_or_else(|| CodeError::NoJavaClass {
                file: main_name.clone(),
            })?;
            // The file's name: its public class's, or, without one, its own
            // (a class that is not public may live in any .java file).
            let class = entry.public_class.clone().unwrap_or_else(|| {
                Path::new(&main_name)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let wanted = match Path::new(&main_name).parent() {
                Some(dir) if !dir.as_os_str().is_empty() => {
                    format!("{}/{class}.java", dir.display())
                }
                _ => format!("{class}.java"),
            };
            if wanted != main_name {
                if let Some(f) = files.iter_mut().find(|f| f.name == main_name) {
                    f.name = wanted.clone();
                }
                main_file = wanted;
            }
            Some(entry.run_class)
        } else {
            None
        };
        let sources: Vec<String> = {
            let mut list: Vec<String> = files
                .iter()
                .filter(|f| {
                    Path::new(&f.name)
                        .extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| {
                            runtime.extensions.iter().any(|x| x.eq_ignore_ascii_case(e))
                        })
                })
                .map(|f| f.name.clone())
                .collect();
            // The main file first: compilers report its errors first.
            list.sort_by_key(|n| *n != main_file);
            list
        };
        let main_stem = Path::new(&main_file)
            .with_extension("")
            .to_string_lossy()
            .into_owned();
        let expand = |template: &[String], limits: &Limits| -> Vec<String> {
            let heap_mb = (limits.memory_bytes / 4 * 3) >> 20;
            let mut out = Vec::new();
            for part in template {
                if part == "{sources}" {
                    out.extend(sources.iter().cloned());
                    continue;
                }
                out.push(
                    part.replace("{main}", &main_file)
                        .replace("{main_stem}", &main_stem)
                        .replace("{class}", class.as_deref().unwrap_or(""))
                        .replace("{heap_mb}", &heap_mb.max(16).to_string()),
                );
            }
            out
        };

        let mut env: Vec<(String, String)> = runtime
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(request.env.iter().cloned());
        let run_argv = expand(&runtime.run, &request.limits);
        let mut spec = SandboxSpec::new(run_argv[0].clone(), run_argv[1..].to_vec());
        spec.args.extend(request.args.iter().cloned());
        spec.env = env.clone();
        spec.stdin = request.stdin.clone();
        spec.limits = request.limits.clone();
        spec.files = request.input_files.clone();
        spec.outputs = request.outputs.clone();
        if let Some(outputs) = spec.outputs.as_mut() {
            // The runtime's support files are formicary's, not the
            // program's: `--out '**'` does not bring them back.
            outputs.exclude.extend(runtime.support.keys().cloned());
        }
        spec.allow_degraded = request.allow_degraded;
        spec.profile = request.profile;
        spec.network = request.network.clone();
        spec.extra_read_only = expand_read_only(&runtime.read_only);
        spec.inline_files = files
            .iter()
            .map(|f| InlineFile {
                sandbox_path: PathBuf::from(&f.name),
                content: f.content.clone(),
                executable: false,
            })
            .chain(runtime.support.iter().map(|(name, content)| InlineFile {
                sandbox_path: PathBuf::from(name),
                content: content.as_bytes().to_vec(),
                executable: false,
            }))
            .collect();
        if let Some(template) = &runtime.compile {
            let argv = expand(template, &request.compile_limits);
            spec.before.push(Stage {
                program: argv[0].clone(),
                args: argv[1..].to_vec(),
                env,
                stdin: Vec::new(),
                limits: request.compile_limits.clone(),
            });
        }

        let version = self.version(engine, runtime);
        let staged = engine.run_staged(&spec);
        let compile = staged.before.into_iter().next();
        let run = match (staged.main, &compile) {
            (Some(main), _) => main,
            (None, Some(c)) if c.status == Status::SetupError => c.clone(),
            (None, Some(c)) => compile_error(c, &request.limits),
            (None, None) => RunResult::setup_error("nothing ran".into(), request.limits.clone()),
        };
        Ok(CodeResult {
            run,
            language: runtime.name.clone(),
            version,
            compile,
        })
    }
}

/// The request's result when its compile failed: status `compile_error`,
/// nothing run, the same isolation.
fn compile_error(compile: &RunResult, run_limits: &Limits) -> RunResult {
    let mut r = RunResult::setup_error(String::new(), run_limits.clone());
    r.status = Status::CompileError;
    r.error = Some(match compile.status {
        Status::RuntimeError => {
            "the compiler reported errors: see compile.stderr and compile.stdout".to_string()
        }
        other => format!(
            "the compile stage ended with {}: see compile",
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
    });
    r.isolation = compile.isolation.clone();
    r
}

fn clean_relative(name: &str) -> bool {
    !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Host paths a runtime wants, with a `*` in the last component expanded;
/// missing ones are skipped (they are optional by nature).
pub(crate) fn expand_read_only(patterns: &[String]) -> Vec<ReadOnlyPath> {
    let mut out = Vec::new();
    for pattern in patterns {
        let path = Path::new(pattern);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.contains('*') {
            out.push(ReadOnlyPath {
                host: path.to_path_buf(),
                sandbox: None,
                optional: true,
            });
            continue;
        }
        let Some(parent) = path.parent() else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| formicary_engine::workspace::glob_match(name, n))
            })
            .map(|e| e.path())
            .collect();
        found.sort();
        out.extend(found.into_iter().map(|host| ReadOnlyPath {
            host,
            sandbox: None,
            optional: true,
        }));
    }
    out
}

/// What `java` runs for a main file.
#[derive(Debug, PartialEq, Eq)]
pub struct JavaEntry {
    /// The file's public class, which names the file (`Main` for
    /// `Main.java`); None when it has none.
    pub public_class: Option<String>,
    /// The class to run, package-qualified (`app.Main`): the public class,
    /// or else the class that declares `main`.
    pub run_class: String,
}

/// The class to run in a Java main file: its first top-level public class,
/// or without one the class in which a `static ... main` is declared,
/// qualified by the file's `package`. Comments and strings are skipped.
pub fn java_entry(source: &[u8]) -> Option<JavaEntry> {
    let text = String::from_utf8_lossy(source);
    let cleaned = strip_java_comments_and_strings(&text);
    let public_class = java_public_class_in(&cleaned);
    let class = match &public_class {
        Some(class) => class.clone(),
        None => java_class_declaring_main(&cleaned)?,
    };
    let run_class = match java_package(&cleaned) {
        Some(package) => format!("{package}.{class}"),
        None => class,
    };
    Some(JavaEntry {
        public_class,
        run_class,
    })
}

/// The name in `package a.b.c;`, if the source declares one.
fn java_package(cleaned: &str) -> Option<String> {
    let mut rest = cleaned;
    while let Some(at) = rest.find("package") {
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$'));
        let after = &rest[at + "package".len()..];
        if before_ok && after.starts_with(char::is_whitespace) {
            let name: String = after
                .split(';')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let valid = !name.is_empty()
                && name.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
                });
            return valid.then_some(name);
        }
        rest = &rest[at + "package".len()..];
    }
    None
}

/// The class whose body declares `static ... void main`: the last `class`
/// (or interface, enum, record) named before that declaration.
fn java_class_declaring_main(cleaned: &str) -> Option<String> {
    let words: Vec<&str> = cleaned
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut last_class = None;
    let mut seen_static = false;
    for (i, w) in words.iter().enumerate() {
        match *w {
            "class" | "interface" | "enum" | "record" => {
                last_class = words.get(i + 1).map(|s| s.to_string());
                seen_static = false;
            }
            "static" => seen_static = true,
            "main" if seen_static && i > 0 && words[i - 1] == "void" => return last_class,
            _ => {}
        }
    }
    None
}

/// The name of the first top-level `public class` (or interface, enum,
/// record) in Java source, skipping comments and strings.
pub fn java_public_class(source: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(source);
    java_public_class_in(&strip_java_comments_and_strings(&text))
}

fn java_public_class_in(cleaned: &str) -> Option<String> {
    let words: Vec<&str> = cleaned
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        if *w != "public" {
            continue;
        }
        let mut j = i + 1;
        while j < words.len()
            && matches!(
                words[j],
                "final" | "abstract" | "static" | "strictfp" | "sealed"
            )
        {
            j += 1;
        }
        if j + 1 < words.len() && matches!(words[j], "class" | "interface" | "enum" | "record") {
            return Some(words[j + 1].to_string());
        }
    }
    None
}

fn strip_java_comments_and_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' || b[i] == b'\'' {
            let quote = b[i];
            i += 1;
            while i < b.len() && b[i] != quote {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_class_is_found_past_comments_and_strings() {
        let src = br#"
// public class Wrong {}
/* public class AlsoWrong */
import java.util.*;
class Helper {}
public final class Solution {
    String s = "public class InString";
}
"#;
        assert_eq!(java_public_class(src).as_deref(), Some("Solution"));
        assert_eq!(java_public_class(b"class NotPublic {}"), None);
        assert_eq!(
            java_public_class(b"public record Point(int x) {}").as_deref(),
            Some("Point")
        );
    }

    #[test]
    fn java_runs_the_public_class_or_the_one_with_main_by_its_qualified_name() {
        let entry = |src: &[u8]| java_entry(src).map(|e| (e.public_class, e.run_class));
        assert_eq!(
            entry(b"public class Main { public static void main(String[] a) {} }"),
            Some((Some("Main".into()), "Main".into()))
        );
        // No public class: the class that declares main, as judges accept.
        assert_eq!(
            entry(b"class Helper {}\nclass Sol { static public void main(String[] a) {} }"),
            Some((None, "Sol".into()))
        );
        // A package qualifies the class run (javac -d . puts it in app/).
        assert_eq!(
            entry(
                b"package app.util;\npublic class Main { public static void main(String[] a) {} }"
            ),
            Some((Some("Main".into()), "app.util.Main".into()))
        );
        assert_eq!(
            entry(b"// package nope;\nclass A { String s = \"package x;\"; static void main(String[] a) {} }"),
            Some((None, "A".into()))
        );
        assert_eq!(entry(b"class NoMain { void main2() {} }"), None);
    }

    #[test]
    fn compile_defaults_are_roomier_than_the_run() {
        let run = Limits::default();
        let c = compile_defaults(&run);
        assert_eq!(c.disk_bytes, run.disk_bytes, "the run's --disk stays exact");
        assert_eq!(c.wall_time_ms, 30_000);
        assert_eq!(c.memory_bytes, 512 << 20);
        assert_eq!(c.pids, 128);
    }

    #[test]
    fn read_only_globs_expand_and_plain_paths_stay_optional() {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["java-17", "java-21", "other"] {
            std::fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        let pattern = format!("{}/java-*", dir.path().display());
        let out = expand_read_only(&[pattern, "/nonexistent/plain".into()]);
        let hosts: Vec<_> = out.iter().map(|r| r.host.clone()).collect();
        assert_eq!(
            hosts,
            vec![
                dir.path().join("java-17"),
                dir.path().join("java-21"),
                PathBuf::from("/nonexistent/plain")
            ]
        );
        assert!(out.iter().all(|r| r.optional));
    }
}
