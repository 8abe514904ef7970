#![no_main]
//! cargo-fuzz target: see `formicary_fuzz::proxy_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| formicary_fuzz::proxy_request(data));
