#![no_main]
//! cargo-fuzz target: see `formicary_fuzz::seccomp_policy`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| formicary_fuzz::seccomp_policy(data));
