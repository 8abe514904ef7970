//! formicary's language layer: users hand it source code, not commands.
//!
//! A [`catalogue::Catalogue`] (data: `runtimes.toml`) says how each
//! language is compiled and run; [`code::Language::run`] turns a
//! [`code::CodeRequest`] into an engine run with a compile stage and a run
//! stage in one sandbox. This layer knows nothing of namespaces or mounts:
//! it only fills in the engine's spec.

pub mod catalogue;
pub mod code;
pub mod versions;

pub use catalogue::{Catalogue, Runtime};
pub use code::{CodeError, CodeRequest, CodeResult, Language, SourceFile};
pub use versions::VersionCache;
