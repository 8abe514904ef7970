//! formicary's isolation engine.
//!
//! The engine runs one program in a fresh sandbox and reports what happened.
//! It knows nothing of command lines or servers: callers fill in a
//! [`spec::SandboxSpec`] and get a [`result::RunResult`] back.

pub mod result;
pub mod seccomp;
pub mod spec;
pub mod units;
