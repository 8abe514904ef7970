#![no_main]
//! cargo-fuzz target: see `formicary_fuzz::units`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| formicary_fuzz::units(data));
