#![no_main]
//! cargo-fuzz target: see `formicary_fuzz::net_rules`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| formicary_fuzz::net_rules(data));
