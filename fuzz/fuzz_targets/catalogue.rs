#![no_main]
//! cargo-fuzz target: see `formicary_fuzz::catalogue`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| formicary_fuzz::catalogue(data));
