//! Timing harnesses for the two per-run costs of the seccomp layer: loading
//! the default policy and compiling it, and installing the filter. Run with
//! `cargo test --release -p formicary-engine seccomp::bench -- --ignored
//! --nocapture`; they print numbers and assert nothing about time.

use std::hint::black_box;
use std::io;
use std::time::Instant;

use super::{Arch, DenyMode, Policy};

/// One uncached load of the default policy, as a fresh process pays it.
fn load_default() -> Policy {
    super::policy::load_default_policy()
}

fn micros(total: std::time::Duration, n: u32) -> f64 {
    total.as_secs_f64() * 1e6 / f64::from(n)
}

#[test]
#[ignore = "benchmark: prints timings"]
fn bench_default_policy_and_compile() {
    // The first, cold call: what one short-lived process pays.
    let start = Instant::now();
    let policy = load_default();
    let cold_load = start.elapsed();
    let start = Instant::now();
    let filter = policy
        .compile(Arch::native(), DenyMode::Notify)
        .expect("compiles");
    let cold_compile = start.elapsed();
    eprintln!(
        "cold: load {:.1} us, compile {:.1} us, {} instructions",
        micros(cold_load, 1),
        micros(cold_compile, 1),
        filter.instructions().len()
    );

    const N: u32 = 2000;
    let start = Instant::now();
    for _ in 0..N {
        black_box(load_default());
    }
    let load = start.elapsed();
    let start = Instant::now();
    for _ in 0..N {
        black_box(
            policy
                .compile(Arch::native(), DenyMode::Notify)
                .expect("compiles"),
        );
    }
    let compile = start.elapsed();
    eprintln!(
        "warm mean over {N}: load {:.1} us, compile {:.1} us",
        micros(load, N),
        micros(compile, N)
    );
}

/// Forks `n` children that each set no_new_privs and install `prog`, timing
/// the install inside the child; returns the per-child times in ns.
fn time_installs(prog: &libc::sock_fprog, listener: bool, n: usize) -> Vec<u64> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let [rd, wr] = fds;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: the child makes only raw syscalls, reads the vDSO clock
        // and _exits: safe after fork in a threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(100) };
            }
            let mut t0 = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let mut t1 = t0;
            // SAFETY: t0 is a valid out-pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t0) };
            let ok = if listener {
                super::install_with_listener(prog).is_ok()
            } else {
                super::install(prog).is_ok()
            };
            // SAFETY: t1 is a valid out-pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t1) };
            let ns = (t1.tv_sec - t0.tv_sec) * 1_000_000_000 + (t1.tv_nsec - t0.tv_nsec);
            let bytes = (ns as u64).to_ne_bytes();
            // SAFETY: bytes is 8 readable bytes; write and _exit are
            // async-signal-safe.
            unsafe {
                libc::write(wr, bytes.as_ptr().cast(), 8);
                libc::_exit(if ok { 0 } else { 101 });
            }
        }
        let mut status = 0;
        // SAFETY: status is a valid out-pointer; pid is our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
        let mut bytes = [0u8; 8];
        // SAFETY: bytes is 8 writable bytes.
        assert_eq!(unsafe { libc::read(rd, bytes.as_mut_ptr().cast(), 8) }, 8);
        out.push(u64::from_ne_bytes(bytes));
    }
    // SAFETY: both fds are ours.
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
    out
}

#[test]
#[ignore = "benchmark: prints timings"]
fn bench_install() {
    let policy = load_default();
    for mode in [DenyMode::Notify, DenyMode::Errno] {
        let filter = policy.compile(Arch::native(), mode).expect("compiles");
        let prog = filter.as_fprog();
        let mut ns = time_installs(&prog, mode == DenyMode::Notify, 200);
        ns.sort_unstable();
        let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3;
        let median = ns[ns.len() / 2] as f64 / 1e3;
        eprintln!(
            "{mode:?}: {} instructions, install over {} children: mean {mean:.1} us, median {median:.1} us, min {:.1} us",
            filter.instructions().len(),
            ns.len(),
            ns[0] as f64 / 1e3
        );
    }
}
