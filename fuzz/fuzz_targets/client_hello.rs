#![no_main]
//! cargo-fuzz target: see `formicary_fuzz::client_hello`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| formicary_fuzz::client_hello(data));
