//! formicary's isolation engine.
//!
//! The engine runs one program in a fresh sandbox and reports what happened.
//! It knows nothing of command lines or servers: callers fill in a
//! [`spec::SandboxSpec`], hand it to [`sandbox::Engine::run`], and get a
//! [`result::RunResult`] back.
//!
//! One module per concern: `mounts` (the filesystem), `idmap` (host ids),
//! `cgroups`, `seccomp`, `landlock`, `caps`, `rlimits`, `child` (the
//! sandbox's init), `supervisor` (the loop while it runs), `workspace`
//! (copying files in and out), and `sandbox` (the ordered script tying
//! them together).

pub mod caps;
pub mod cgroups;
pub mod check;
pub mod child;
pub mod child_error;
pub mod config;
pub mod idmap;
mod init_clone;
pub mod landlock;
mod mountinfo;
pub mod mounts;
pub mod network;
pub mod pool;
pub mod result;
pub mod rlimits;
pub(crate) mod run_request;
pub mod sandbox;
pub mod seccomp;
pub mod spawner;
pub mod spec;
pub mod supervisor;
mod sys;
pub mod units;
pub mod workspace;

#[cfg(test)]
mod test_support;
