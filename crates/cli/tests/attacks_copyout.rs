//! Attacks on the copy-out of `--out` files: links, FIFOs, devices, huge
//! sparse files, many files, deep trees, `..` in globs, setuid bits, and a
//! file swapped for a link while the run ends. The supervisor copies only
//! after every sandboxed process is gone, through the `/sandbox` fd with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | ...)`, and writes
//! beneath the output directory the same way: that is the layer under test
//! in every case here. Each test checks that nothing outside the output
//! directory was read (a host secret never shows up) or written (a victim
//! directory is unchanged), that the run does not hang, and that the
//! output limits hold.

mod common;

use common::sh;
use std::path::Path;
use std::time::{Duration, Instant};

/// A host directory with a secret file and a victim directory, and an
/// output directory beside them.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = common::scratch();
        std::fs::write(dir.path().join("secret"), "HOST-SECRET-1b9e").expect("write secret");
        std::fs::create_dir(dir.path().join("victim")).expect("mkdir victim");
        std::fs::write(dir.path().join("victim/f"), "victim").expect("write victim");
        Host { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("utf-8")
            .to_string()
    }

    fn out(&self) -> String {
        self.path("out")
    }

    /// Every file under the output directory holds no host secret.
    fn assert_no_secret_copied(&self) {
        for (path, data) in common::snapshot(Path::new(&self.out())) {
            assert!(
                !String::from_utf8_lossy(&data).contains("HOST-SECRET"),
                "{} holds the host secret",
                path.display()
            );
        }
    }
}

/// Runs `script` with `--out GLOB --out-dir <out>` and the extra flags.
fn run_out(host: &Host, script: &str, glob: &str, flags: &[&str]) -> common::Run {
    sh(script)
        .flags(&["--out", glob, "--out-dir", &host.out()])
        .flags(flags)
        .run()
}

fn files(r: &common::Run) -> Vec<(String, u64)> {
    r.json["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_string(),
                f["size"].as_u64().expect("size"),
            )
        })
        .collect()
}

fn error(r: &common::Run) -> String {
    r.json["error"].as_str().unwrap_or("").to_string()
}

#[test]
fn an_output_symlink_to_a_host_file_is_not_followed() {
    // Copy-out: O_NOFOLLOW / RESOLVE_NO_SYMLINKS; the link's target is a
    // real host path, which a naive copy would read as root.
    require_root!();
    let host = Host::new();
    let script = format!("ln -s {} result.txt", host.path("secret"));
    let r = run_out(&host, &script, "*.txt", &[]);
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r), []);
    assert!(error(&r).contains("result.txt"), "{}", error(&r));
    host.assert_no_secret_copied();
}

#[test]
fn an_output_symlink_to_a_host_directory_is_not_walked() {
    // Copy-out: the walk does not follow links.
    require_root!();
    let host = Host::new();
    let script = format!("ln -s {} d", host.dir.path().display());
    let r = run_out(&host, &script, "**", &[]);
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r), []);
    host.assert_no_secret_copied();
}

#[test]
fn a_symlink_in_a_subdirectory_to_proc_self_root_is_not_followed() {
    // Copy-out: RESOLVE_NO_MAGICLINKS and NO_SYMLINKS; the supervisor's
    // own /proc/self would be the host's.
    require_root!();
    let host = Host::new();
    let r = run_out(
        &host,
        "mkdir d && ln -s /proc/self/root/etc/passwd d/passwd",
        "**",
        &[],
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r), []);
    assert!(!Path::new(&host.out()).join("d/passwd").exists());
}

#[test]
fn an_output_fifo_is_skipped_without_hanging() {
    // Copy-out: O_NONBLOCK open and a regular-file check.
    require_root!();
    let host = Host::new();
    let start = Instant::now();
    let r = run_out(&host, "mkfifo out.txt", "*.txt", &[]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r), []);
    assert!(
        error(&r).contains("out.txt (not a regular file)"),
        "{}",
        error(&r)
    );
}

#[test]
fn an_output_socket_is_skipped() {
    // Copy-out: only regular files.
    require_root!();
    let host = Host::new();
    let r = run_out(
        &host,
        "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('s.txt')\"",
        "*.txt",
        &[],
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r), []);
    assert!(error(&r).contains("s.txt"), "{}", error(&r));
}

#[test]
fn an_output_symlink_to_a_device_is_not_read() {
    // Copy-out: a device cannot be made in the sandbox (no CAP_MKNOD,
    // nodev), so the nearest attack is a link to /dev/zero, which would
    // make a naive copy read forever.
    require_root!();
    let host = Host::new();
    let start = Instant::now();
    let r = run_out(
        &host,
        "ln -s /dev/zero z.bin; ln -s /dev/urandom u.bin",
        "*.bin",
        &[],
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r), []);
}

#[test]
fn a_huge_sparse_output_file_is_refused_by_the_output_total() {
    // Copy-out byte budget (--disk): a 3 GiB sparse file costs the sandbox
    // nothing but would cost the host 3 GiB.
    require_root!();
    let host = Host::new();
    let start = Instant::now();
    let r = run_out(&host, "truncate -s 3G big", "big", &["--file-size", "4G"]);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r), []);
    assert!(error(&r).contains("big (would pass"), "{}", error(&r));
    assert!(!Path::new(&host.out()).join("big").exists());
}

#[test]
fn two_sparse_files_together_stop_at_the_output_total() {
    // Copy-out byte budget: each fits, both together do not.
    require_root!();
    let host = Host::new();
    let r = run_out(
        &host,
        "truncate -s 40M a.bin; truncate -s 40M b.bin",
        "*.bin",
        &[],
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r).len(), 1, "{:?}", files(&r));
    let total: u64 = common::snapshot(Path::new(&host.out()))
        .iter()
        .map(|(_, d)| d.len() as u64)
        .sum();
    assert!(total <= 64 << 20, "{total} bytes written");
}

#[test]
fn many_thousands_of_small_files_stop_at_ten_thousand() {
    // Copy-out file budget (10,000) and the tmpfs inode limit.
    require_root!();
    let host = Host::new();
    let start = Instant::now();
    let r = run_out(
        &host,
        "python3 -c \"\nfor i in range(12000): open('f%05d' % i, 'w').write('x')\"",
        "f*",
        &[],
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r).len(), 10_000);
    let copied = std::fs::read_dir(host.out()).expect("read out").count();
    assert_eq!(copied, 10_000);
    assert!(!error(&r).is_empty());
}

#[test]
fn a_tree_deeper_than_the_walk_bound_does_not_crash_the_copy() {
    // Copy-out walk depth bound (64).
    require_root!();
    let host = Host::new();
    let r = run_out(
        &host,
        "python3 -c \"\nimport os\np='.'\nfor i in range(200): p=os.path.join(p,'d')\nos.makedirs(p)\nopen(os.path.join(p,'deep.txt'),'w').write('x')\nopen('top.txt','w').write('y')\"",
        "**/*.txt",
        &[],
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let names: Vec<String> = files(&r).into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, ["top.txt"]);
}

#[test]
fn a_glob_with_dot_dot_matches_nothing_outside() {
    // Copy-out: globs match names beneath /sandbox only.
    require_root!();
    let host = Host::new();
    let r = run_out(&host, "echo x > a", "../*", &[]);
    assert!(
        r.status() == "ok" || r.status() == "setup_error",
        "{:?}",
        r.json
    );
    assert_eq!(files(&r), []);
    let out = common::snapshot(Path::new(&host.out()));
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_glob_with_dot_dot_in_the_middle_matches_nothing_outside() {
    // Copy-out.
    require_root!();
    let host = Host::new();
    let r = run_out(&host, "mkdir a; echo x > a/b", "a/../../../etc/*", &[]);
    assert_eq!(files(&r), []);
    assert!(common::snapshot(Path::new(&host.out())).is_empty());
}

#[test]
fn an_absolute_glob_matches_nothing_on_the_host() {
    // Copy-out: a glob is relative to /sandbox.
    require_root!();
    let host = Host::new();
    let r = run_out(&host, "true", "/etc/*", &[]);
    assert_eq!(files(&r), []);
    assert!(common::snapshot(Path::new(&host.out())).is_empty());
}

#[test]
fn a_file_named_with_dots_and_newlines_stays_in_the_out_dir() {
    // Copy-out: names are single components; `..` cannot be a file name.
    require_root!();
    let host = Host::new();
    let r = run_out(
        &host,
        "printf x > '...'; printf y > 'a\nb'; printf z > '..a'",
        "**",
        &[],
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r).len(), 3, "{:?}", files(&r));
    for (path, _) in common::snapshot(Path::new(&host.out())) {
        assert!(path.starts_with(host.out()), "{}", path.display());
    }
    assert_eq!(
        std::fs::read_to_string(host.path("victim/f")).expect("victim"),
        "victim"
    );
}

#[test]
fn a_setuid_output_file_lands_without_its_setuid_bit() {
    // Copy-out: the supervisor (root) writes the copy; a kept 04755 would
    // be a setuid-root binary chosen by the program.
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new();
    let r = run_out(&host, "cp /bin/true x && chmod 6755 x", "x", &[]);
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(files(&r).len(), 1);
    let meta = std::fs::metadata(Path::new(&host.out()).join("x")).expect("stat x");
    assert_eq!(
        meta.permissions().mode() & 0o7000,
        0,
        "{:o}",
        meta.permissions().mode()
    );
}

#[test]
fn pre_existing_links_in_the_out_dir_are_not_written_through() {
    // Copy-out destination: openat2 beneath the out dir with
    // RESOLVE_NO_SYMLINKS. The victim directory is unchanged. (The run is
    // then reported as setup_error with the file named in `error`.)
    require_root!();
    let host = Host::new();
    std::fs::create_dir(host.out()).expect("mkdir out");
    std::os::unix::fs::symlink(host.path("victim"), Path::new(&host.out()).join("sub"))
        .expect("symlink");
    std::os::unix::fs::symlink(host.path("victim/f"), Path::new(&host.out()).join("f"))
        .expect("symlink");
    let before = common::snapshot(&host.dir.path().join("victim"));
    let r = run_out(
        &host,
        "mkdir sub; echo EVIL > sub/f; echo EVIL > f",
        "**",
        &[],
    );
    assert_eq!(common::snapshot(&host.dir.path().join("victim")), before);
    assert!(!error(&r).is_empty(), "{:?}", r.json);
}

#[test]
fn a_file_swapped_for_a_link_while_the_run_ends_is_contained() {
    // Copy-out runs after every sandboxed process is dead, so the swap
    // loop cannot race the copy: whatever state it left is copied as a
    // regular file or refused as a link, never followed.
    require_root!();
    let host = Host::new();
    for round in 0..3 {
        let script = format!(
            "while true; do echo mine > r.txt; ln -sf {} r.txt; done & sleep 0.3; exit 0",
            host.path("secret")
        );
        let r = run_out(&host, &script, "r.txt", &[]);
        assert_eq!(r.status(), "ok", "round {round}: {:?}", r.json);
        host.assert_no_secret_copied();
        let f = files(&r);
        assert!(f.is_empty() || f == [("r.txt".to_string(), 5)], "{f:?}");
    }
}

#[test]
fn a_file_swapped_while_formicary_is_killed_by_the_wall_time_is_contained() {
    // Copy-out after a timeout: the sandbox is killed first, then copied.
    require_root!();
    let host = Host::new();
    let script = format!(
        "while true; do echo mine > r.txt; ln -sf {} r.txt; done",
        host.path("secret")
    );
    let r = run_out(&host, &script, "r.txt", &["--wall-time", "0.5"]);
    assert_eq!(r.status(), "timeout", "{:?}", r.json);
    host.assert_no_secret_copied();
}

#[test]
fn a_hardlink_farm_of_one_big_file_stops_at_the_output_total() {
    // Copy-out byte budget: 100 names of one 30 MiB inode cost the sandbox
    // 30 MiB but would cost the host 3 GiB.
    require_root!();
    let host = Host::new();
    let r = run_out(
        &host,
        "head -c 30M /dev/zero > f0 && for i in $(seq 1 99); do ln f0 f$i; done",
        "f*",
        &[],
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let total: u64 = files(&r).iter().map(|(_, s)| s).sum();
    assert!(total <= 64 << 20, "{total}");
    assert!(files(&r).len() <= 2, "{}", files(&r).len());
}

#[test]
fn outputs_are_copied_only_after_the_background_writer_is_dead() {
    // supervisor: copy-out waits for every sandboxed process; the copy is
    // a snapshot, not a live file that keeps growing on the host.
    require_root!();
    let host = Host::new();
    let r = run_out(
        &host,
        "(while true; do echo x >> grow.txt; done) & sleep 0.2",
        "grow.txt",
        &[],
    );
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let size = std::fs::metadata(Path::new(&host.out()).join("grow.txt"))
        .expect("copied")
        .len();
    std::thread::sleep(Duration::from_millis(300));
    let later = std::fs::metadata(Path::new(&host.out()).join("grow.txt"))
        .expect("copied")
        .len();
    assert_eq!(size, later);
    assert_eq!(files(&r), [("grow.txt".to_string(), size)]);
}
