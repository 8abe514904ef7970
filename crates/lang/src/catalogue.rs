//! The runtime catalogue: which languages formicary runs, and how. It is
//! data (`runtimes.toml`, embedded at build time), which an operator's file
//! can extend or override entry by entry.

use formicary_engine::config::LimitOverrides;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The built-in catalogue.
const BUILTIN: &str = include_str!("runtimes.toml");

/// Why a catalogue was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read the runtime catalogue {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runtime catalogue {origin} is not valid: {message}")]
    Parse { origin: String, message: String },
    #[error("runtime catalogue {origin}: runtime `{runtime}`: {message}")]
    Invalid {
        origin: String,
        runtime: String,
        message: String,
    },
}

/// One language's entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub extensions: Vec<String>,
    pub default_main: String,
    #[serde(default)]
    pub compile: Option<Vec<String>>,
    pub run: Vec<String>,
    pub version: Vec<String>,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub read_only: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub support: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: LimitOverrides,
    #[serde(default)]
    pub compile_limits: LimitOverrides,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    #[serde(default)]
    runtime: Vec<Runtime>,
}

/// Every runtime formicary knows, in catalogue order.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    runtimes: Vec<Runtime>,
}

impl Runtime {
    /// Whether `name` (case-insensitive) names this runtime.
    pub fn answers_to(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.name == name || self.aliases.contains(&name)
    }

    /// Whether this runtime is installed here: every required host path
    /// exists. The reason names the first one missing.
    pub fn availability(&self) -> Result<(), String> {
        match self.requires.iter().find(|p| !Path::new(p).exists()) {
            None => Ok(()),
            Some(missing) => Err(format!("{missing} is not installed on this host")),
        }
    }

    fn validate(&self, origin: &str) -> Result<(), CatalogueError> {
        let invalid = |message: String| CatalogueError::Invalid {
            origin: origin.to_string(),
            runtime: self.name.clone(),
            message,
        };
        if self.name.is_empty() || self.name != self.name.to_ascii_lowercase() {
            return Err(invalid("the name must be lowercase and not empty".into()));
        }
        if self.run.is_empty() || self.version.is_empty() {
            return Err(invalid(
                "`run` and `version` need at least a program".into(),
            ));
        }
        if self.compile.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(invalid("`compile`, when given, needs a program".into()));
        }
        if self.extensions.is_empty() {
            return Err(invalid("`extensions` must list at least one".into()));
        }
        let main = Path::new(&self.default_main);
        let relative = main
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !relative || self.default_main.is_empty() {
            return Err(invalid("`default_main` must be a plain file name".into()));
        }
        for name in self.support.keys() {
            let ok = !name.is_empty()
                && Path::new(name)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !ok {
                return Err(invalid(format!(
                    "support file {name:?} must be a relative path without `..`"
                )));
            }
        }
        for path in self.requires.iter().chain(&self.read_only) {
            if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(invalid(format!(
                    "{path:?} must be an absolute path without `..`"
                )));
            }
        }
        let mut scratch = formicary_engine::spec::Limits::default();
        for (table, overrides) in [
            ("limits", &self.limits),
            ("compile_limits", &self.compile_limits),
        ] {
            overrides
                .apply_to(&mut scratch)
                .map_err(|(key, value, e)| invalid(format!("{table}.{key} = {value:?}: {e}")))?;
        }
        Ok(())
    }
}

fn parse(origin: &str, text: &str) -> Result<Vec<Runtime>, CatalogueError> {
    let file: CatalogueFile = toml::from_str(text).map_err(|e| CatalogueError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    for runtime in &file.runtime {
        runtime.validate(origin)?;
    }
    Ok(file.runtime)
}

impl Catalogue {
    /// The catalogue shipped with formicary.
    pub fn builtin() -> Result<Catalogue, CatalogueError> {
        Ok(Catalogue {
            runtimes: parse("(built in)", BUILTIN)?,
        })
    }

    /// The built-in catalogue with an operator's file on top: an entry with
    /// the name of a built-in one replaces it, others are added.
    pub fn with_overrides(path: &Path) -> Result<Catalogue, CatalogueError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::builtin()?.merged(&path.display().to_string(), &text)
    }

    /// This catalogue with the entries of `text` on top.
    pub fn merged(mut self, origin: &str, text: &str) -> Result<Catalogue, CatalogueError> {
        for runtime in parse(origin, text)? {
            match self.runtimes.iter_mut().find(|r| r.name == runtime.name) {
                Some(existing) => *existing = runtime,
                None => self.runtimes.push(runtime),
            }
        }
        Ok(self)
    }

    pub fn runtimes(&self) -> &[Runtime] {
        &self.runtimes
    }

    /// The runtime named `name` or one of its aliases.
    pub fn find(&self, name: &str) -> Option<&Runtime> {
        self.runtimes.iter().find(|r| r.answers_to(name))
    }

    /// The runtime whose extensions include the extension of `file`.
    pub fn for_file(&self, file: &str) -> Option<&Runtime> {
        let ext = Path::new(file).extension()?.to_str()?.to_ascii_lowercase();
        self.runtimes.iter().find(|r| r.extensions.contains(&ext))
    }

    /// Every name and alias, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.runtimes.iter().map(|r| r.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalogue_has_the_languages_of_the_issue() {
        let c = Catalogue::builtin().expect("valid");
        for name in [
            "python",
            "javascript",
            "typescript",
            "bash",
            "c",
            "cpp",
            "rust",
            "go",
            "java",
            "ruby",
            "php",
            "perl",
        ] {
            assert!(c.find(name).is_some(), "{name} missing");
        }
    }

    #[test]
    fn aliases_and_extensions_find_runtimes() {
        let c = Catalogue::builtin().expect("valid");
        for (alias, name) in [
            ("py", "python"),
            ("JS", "javascript"),
            ("ts", "typescript"),
            ("sh", "bash"),
            ("c++", "cpp"),
            ("rs", "rust"),
            ("golang", "go"),
        ] {
            assert_eq!(
                c.find(alias).map(|r| r.name.as_str()),
                Some(name),
                "{alias}"
            );
        }
        for (file, name) in [
            ("main.py", "python"),
            ("a/b/x.cc", "cpp"),
            ("Hello.JAVA", "java"),
            ("s.rb", "ruby"),
        ] {
            assert_eq!(
                c.for_file(file).map(|r| r.name.as_str()),
                Some(name),
                "{file}"
            );
        }
        assert!(c.find("cobol").is_none());
        assert!(c.for_file("README").is_none());
    }

    #[test]
    fn an_override_replaces_by_name_and_adds_new_runtimes() {
        let c = Catalogue::builtin()
            .expect("valid")
            .merged(
                "test",
                r#"
[[runtime]]
name = "python"
extensions = ["py"]
default_main = "main.py"
run = ["/opt/python/bin/python3", "{main}"]
version = ["/opt/python/bin/python3", "--version"]

[[runtime]]
name = "lua"
extensions = ["lua"]
default_main = "main.lua"
run = ["/usr/bin/lua", "{main}"]
version = ["/usr/bin/lua", "-v"]
requires = ["/usr/bin/lua-that-is-not-here"]
"#,
            )
            .expect("valid override");
        assert_eq!(
            c.find("python").expect("python").run[0],
            "/opt/python/bin/python3"
        );
        let lua = c.find("lua").expect("lua added");
        assert!(lua
            .availability()
            .expect_err("not installed")
            .contains("lua-that-is-not-here"));
    }

    #[test]
    fn bad_entries_are_refused_with_the_runtime_named() {
        let bad = [
            "[[runtime]]\nname = \"x\"\nextensions = [\"x\"]\ndefault_main = \"../m\"\nrun = [\"a\"]\nversion = [\"a\"]\n",
            "[[runtime]]\nname = \"x\"\nextensions = [\"x\"]\ndefault_main = \"m\"\nrun = []\nversion = [\"a\"]\n",
            "[[runtime]]\nname = \"x\"\nextensions = [\"x\"]\ndefault_main = \"m\"\nrun = [\"a\"]\nversion = [\"a\"]\nread_only = [\"relative\"]\n",
            "[[runtime]]\nname = \"x\"\nextensions = [\"x\"]\ndefault_main = \"m\"\nrun = [\"a\"]\nversion = [\"a\"]\nlimits = { memory = \"lots\" }\n",
            "[[runtime]]\nname = \"x\"\nextensions = [\"x\"]\ndefault_main = \"m\"\nrun = [\"a\"]\nversion = [\"a\"]\nunknown = 1\n",
        ];
        for text in bad {
            assert!(
                Catalogue::builtin()
                    .expect("valid")
                    .merged("test", text)
                    .is_err(),
                "accepted: {text}"
            );
        }
    }
}
