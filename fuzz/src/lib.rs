//! The fuzz targets as plain functions, shared by the cargo-fuzz targets
//! (`fuzz_targets/`) and the stable-toolchain runner (`src/bin/runner.rs`).
//! Each takes arbitrary bytes; any panic is a finding.

use std::path::Path;

/// `EngineConfig::parse` on arbitrary text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = formicary_engine::config::EngineConfig::parse(Path::new("fuzz.toml"), text);
    }
}

/// The size and duration parsers, and `format_size` on what parses.
pub fn units(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(n) = formicary_engine::units::parse_size(text) {
            let shown = formicary_engine::units::format_size(n);
            // What format_size prints must parse back to the same size.
            assert_eq!(
                formicary_engine::units::parse_size(&shown).ok(),
                Some(n),
                "format_size({n}) = {shown:?} does not parse back"
            );
        }
        let _ = formicary_engine::units::parse_duration(text);
    }
}

/// The runtime catalogue merged with arbitrary operator text.
pub fn catalogue(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let base = formicary_lang::Catalogue::builtin().expect("the built-in catalogue loads");
        let _ = base.merged("fuzz", text);
    }
}

/// The seccomp policy parser, and compiling what it accepts.
pub fn seccomp_policy(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        use formicary_engine::seccomp::{Arch, DenyMode, Policy};
        if let Ok(policy) = Policy::from_toml(text) {
            // A policy that loads must compile for every architecture and
            // mode (or fail with an error, never a panic).
            for arch in Arch::ALL {
                for mode in [DenyMode::Notify, DenyMode::Errno] {
                    let _ = policy.compile(arch, mode);
                }
            }
        }
    }
}

/// A fuzz target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: [(&str, Target); 4] = [
    ("config", config),
    ("units", units),
    ("catalogue", catalogue),
    ("seccomp_policy", seccomp_policy),
];
