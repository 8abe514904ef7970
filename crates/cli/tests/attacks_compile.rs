//! Source code that attacks the compiler: the compile stage runs in the
//! sandbox with its own limits, so what a compiler can be made to read,
//! eat or write is contained like any program's.

mod common;

use common::BIN;
use std::process::Command;

/// `formicary run --json --lang LANG --code CODE` with tight compile limits.
fn run_code(lang: &str, code: &str, extra: &[&str]) -> Option<serde_json::Value> {
    let listing = Command::new(BIN)
        .args(["runtimes", "--json"])
        .output()
        .expect("formicary runtimes");
    let runtimes: serde_json::Value =
        serde_json::from_slice(&listing.stdout).expect("runtimes JSON");
    let available = runtimes
        .as_array()
        .expect("a list")
        .iter()
        .any(|r| r["name"] == lang && r["available"] == true);
    if !available {
        println!("SKIP: {lang} not installed");
        return None;
    }
    // The code goes in a file (it may be larger than an argument may be).
    let dir = common::scratch();
    let ext = match lang {
        "rust" => "rs",
        other => other,
    };
    let source = dir.path().join(format!("attack.{ext}"));
    std::fs::write(&source, code).expect("write the source");
    let mut limits: Vec<&str> = Vec::new();
    for (flag, value) in [
        ("--compile-wall-time", "8"),
        ("--compile-cpu-time", "8"),
        ("--compile-memory", "256M"),
    ] {
        if !extra.contains(&flag) {
            limits.extend([flag, value]);
        }
    }
    let out = Command::new(BIN)
        .args(["run", "--json", "--lang", lang])
        .args(&limits)
        .args(extra)
        .arg(&source)
        .output()
        .expect("formicary run");
    Some(
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))),
    )
}

#[test]
fn include_of_a_host_secret_finds_nothing() {
    require_root!();
    // Attack: `#include "/etc/shadow"` to have the compiler print a host
    // secret in its error message. Stopped by the mount namespace: the
    // compile stage sees only the sandbox's root, where /etc/shadow does
    // not exist.
    let Some(r) = run_code(
        "c",
        "#include \"/etc/shadow\"\nint main(void){return 0;}\n",
        &[],
    ) else {
        return;
    };
    assert_eq!(r["status"], "compile_error", "{r:#}");
    let stderr = r["compile"]["stderr"].as_str().expect("compiler stderr");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert!(!stderr.contains("root:"), "a shadow line leaked: {stderr}");
}

#[test]
fn include_bytes_of_an_endless_device_is_stopped_by_the_compile_limits() {
    require_root!();
    // Attack: `include_bytes!("/dev/zero")` makes rustc read without end.
    // Stopped by the compile stage's memory, CPU or wall limit (cgroup and
    // supervisor); nothing of it reaches the run stage.
    let Some(r) = run_code(
        "rust",
        "static B: &[u8] = include_bytes!(\"/dev/zero\");\nfn main() { println!(\"{}\", B.len()); }\n",
        &[],
    ) else {
        return;
    };
    assert_eq!(r["status"], "compile_error", "{r:#}");
    let compile_status = r["compile"]["status"].as_str().expect("compile status");
    assert!(
        [
            "memory_exceeded",
            "cpu_time_exceeded",
            "timeout",
            "runtime_error"
        ]
        .contains(&compile_status),
        "{r:#}"
    );
    assert_eq!(r["stdout"], "", "the program must not have run");
}

#[test]
fn a_template_explosion_ends_at_the_compile_limits() {
    require_root!();
    // Attack: exponential template instantiation to tie up the host's CPU
    // and memory. Stopped by the compile stage's limits (supervisor and
    // cgroup); the run stage never starts.
    let code = r#"
template<int N> struct F { static const long v = F<N-1>::v + F<N-2>::v + F<N-3>::v; };
template<> struct F<0> { static const long v = 1; };
template<> struct F<1> { static const long v = 1; };
template<> struct F<2> { static const long v = 1; };
template<int N, int M> struct G { static const long v = G<N-1, M>::v + G<N, M-1>::v; };
template<int N> struct G<N, 0> { static const long v = F<N % 40>::v; };
template<int M> struct G<0, M> { static const long v = 1; };
int main() { return (int)G<900, 900>::v; }
"#;
    let Some(r) = run_code("cpp", code, &["--compile-wall-time", "4"]) else {
        return;
    };
    assert_eq!(r["status"], "compile_error", "{r:#}");
    let limits = r["compile"]["limits_hit"].as_array().expect("limits_hit");
    let compile_status = r["compile"]["status"].as_str().expect("status");
    // g++ may also give up by itself (its own instantiation depth limit),
    // which is a compile error too; what matters is that it ended.
    assert!(
        !limits.is_empty() || compile_status == "runtime_error",
        "{r:#}"
    );
}

#[test]
fn a_compiler_flooding_its_output_is_cut_at_the_output_limit() {
    require_root!();
    // Attack: thousands of error lines to flood the supervisor's memory.
    // Stopped by the compile stage's output limit (supervisor).
    let mut code = String::from("int main(void){\n");
    for i in 0..20_000 {
        code.push_str(&format!("undeclared_{i} = 1;\n"));
    }
    code.push_str("}\n");
    let Some(r) = run_code("c", &code, &["--compile-output", "16K"]) else {
        return;
    };
    assert_eq!(r["status"], "compile_error", "{r:#}");
    let stderr = r["compile"]["stderr"].as_str().expect("stderr");
    assert!(stderr.len() <= 16 * 1024, "kept {} bytes", stderr.len());
}

#[test]
fn the_compile_stage_cannot_leave_a_process_for_the_run_stage() {
    require_root!();
    // Attack: a compiler (or something it starts) leaving a process behind
    // that waits for the program and interferes with it. gcc forks cc1, as
    // and collect2; the program counts the processes it can see. Stopped by
    // init, which kills and reaps every process of a stage before the next
    // begins.
    let Some(r) = run_code(
        "c",
        "#include <stdio.h>\n#include <dirent.h>\n#include <ctype.h>\nint main(void){int n=0; DIR*d=opendir(\"/proc\"); struct dirent*e; while((e=readdir(d))) if(isdigit((unsigned char)e->d_name[0])) n++; printf(\"%d\\n\", n); return 0;}\n",
        &[],
    ) else {
        return;
    };
    assert_eq!(r["status"], "ok", "{r:#}");
    // init and the program itself: the compiler and its children are gone.
    assert_eq!(r["stdout"], "2\n", "{r:#}");
}
