//! Links the unwinder (libgcc's) into the binary instead of loading
//! `libgcc_s.so.1` at every start.
//!
//! On glibc targets Rust's standard library asks for `-lgcc_s`. Loading it
//! costs a fresh `formicary` process an extra library to map and relocate,
//! and its constructor (`__cpu_indicator_init`) runs a dozen `CPUID`
//! instructions, each of which traps to the hypervisor in a virtual machine
//! (6 µs apiece on the benchmark machine): `formicary --version` took
//! 1.35 ms with it and 1.19 ms without (medians of 400 alternated runs;
//! `/bin/true` 0.85 ms). Naming the static `libgcc_eh.a` here
//! puts it on the link line before the standard library, so the linker
//! takes the `_Unwind_*` functions from it and, linking `--as-needed`,
//! drops `libgcc_s.so.1`. glibc itself stays dynamic.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let static_crt = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .unwrap_or_default()
        .split(',')
        .any(|f| f == "crt-static");
    // A `crt-static` build links libgcc_eh by itself.
    if os == "linux" && env == "gnu" && !static_crt {
        println!("cargo:rustc-link-lib=static=gcc_eh");
    }
}
