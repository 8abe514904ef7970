//! Copying files into /sandbox before the run and out of it afterwards.
//!
//! The supervisor works through a directory fd of the sandbox's /sandbox
//! (handed over by init), never through a path. Every open inside it uses
//! openat2 with RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, RESOLVE_NO_MAGICLINKS
//! and RESOLVE_NO_XDEV, so neither a symlink nor a mount planted by the
//! program can lead outside. Output files are copied only when they are
//! regular files, opened with O_NOFOLLOW|O_NONBLOCK (a FIFO cannot block),
//! and within count and byte bounds.

use crate::result::CollectedFile;
use crate::spec::{InlineFile, InputFile, OutputSpec};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Deepest directory nesting walked when collecting outputs.
const MAX_DEPTH: usize = 64;
/// Most directory entries looked at when collecting outputs.
const MAX_ENTRIES_SCANNED: usize = 100_000;

/// Why files could not be copied in or out.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("sandbox path {path:?} must be relative to /sandbox, without `..` or `.`")]
    BadSandboxPath { path: PathBuf },
    #[error("cannot read input {path:?}: {source}")]
    ReadInput { path: PathBuf, source: io::Error },
    #[error("input {path:?} is neither a regular file, a directory nor a symlink")]
    UnsupportedInput { path: PathBuf },
    #[error("cannot write {path:?} into /sandbox: {source}{hint}")]
    WriteSandbox {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot create output directory {path:?}: {source}")]
    OutputDir { path: PathBuf, source: io::Error },
    #[error("cannot write output file {path:?}: {source}")]
    WriteOutput { path: PathBuf, source: io::Error },
}

/// An output file that matched but was not copied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

/// Runs a file-creating closure as the sandbox user (see [`copy_in`]).
pub type AsSandboxUser<'a> = &'a dyn Fn(&mut dyn FnMut() -> io::Result<()>) -> io::Result<()>;

/// Checks that a sandbox path is relative and made of normal components.
pub fn validate_sandbox_path(path: &Path) -> Result<(), WorkspaceError> {
    let ok = !path.as_os_str().is_empty()
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(WorkspaceError::BadSandboxPath {
            path: path.to_path_buf(),
        })
    }
}

fn hint_for(err: &io::Error) -> &'static str {
    if err.raw_os_error() == Some(libc::ENOSPC) {
        " (the inputs do not fit in --disk: raise it)"
    } else {
        ""
    }
}

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// openat2 confined beneath `dir`: no symlinks, no magic links, no mount
/// crossings.
fn open_beneath(dir: BorrowedFd<'_>, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    // SAFETY: valid dir fd, C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// mkdir of each component of `path` beneath `dir` (existing ones are fine).
fn mkdir_all_beneath(dir: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let mut current = PathBuf::new();
    for part in path.components() {
        current.push(part);
        let parent = match current.parent() {
            Some(p) if !p.as_os_str().is_empty() => {
                open_beneath(dir, p, libc::O_PATH | libc::O_DIRECTORY, 0)?
            }
            _ => open_beneath(dir, Path::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)?,
        };
        let name = CString::new(part.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid dir fd and C string.
        if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(err);
            }
        } else {
            // The caller's umask (process-wide, not ours to change) must
            // not decide the mode.
            // SAFETY: valid dir fd and C string; no links are followed.
            if unsafe { libc::fchmodat(parent.as_raw_fd(), name.as_ptr(), 0o755, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn write_new_file(
    dir: BorrowedFd<'_>,
    path: &Path,
    content: &mut dyn Read,
    mode: u32,
) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            mkdir_all_beneath(dir, parent)?;
        }
    }
    let fd = open_beneath(
        dir,
        path,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        mode,
    )?;
    let mut file = File::from(fd);
    io::copy(content, &mut file)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies the inputs into the sandbox directory `dir`. The caller has set
/// this thread's filesystem ids to the sandbox user's host ids, so what is
/// created belongs to the sandbox user; host files are read as the caller.
pub fn copy_in(
    dir: BorrowedFd<'_>,
    files: &[InputFile],
    inline: &[InlineFile],
    as_sandbox_user: AsSandboxUser<'_>,
) -> Result<(), WorkspaceError> {
    for f in inline {
        validate_sandbox_path(&f.sandbox_path)?;
        let mode = if f.executable { 0o755 } else { 0o644 };
        as_sandbox_user(&mut || {
            write_new_file(dir, &f.sandbox_path, &mut f.content.as_slice(), mode)
        })
        .map_err(|source| WorkspaceError::WriteSandbox {
            path: f.sandbox_path.clone(),
            hint: hint_for(&source),
            source,
        })?;
    }
    for f in files {
        validate_sandbox_path(&f.sandbox_path)?;
        copy_host_path(dir, &f.host_path, &f.sandbox_path, as_sandbox_user, 0)?;
    }
    Ok(())
}

fn copy_host_path(
    dir: BorrowedFd<'_>,
    host: &Path,
    inside: &Path,
    as_sandbox_user: AsSandboxUser<'_>,
    depth: usize,
) -> Result<(), WorkspaceError> {
    let read_err = |source| WorkspaceError::ReadInput {
        path: host.to_path_buf(),
        source,
    };
    let write_err = |source: io::Error| WorkspaceError::WriteSandbox {
        path: inside.to_path_buf(),
        hint: hint_for(&source),
        source,
    };
    // The top-level path is followed (the caller named it); links inside a
    // directory are copied as links.
    let meta = if depth == 0 {
        std::fs::metadata(host)
    } else {
        std::fs::symlink_metadata(host)
    }
    .map_err(read_err)?;
    if meta.is_file() {
        let mut source = File::open(host).map_err(read_err)?;
        let mode = if meta.mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        as_sandbox_user(&mut || write_new_file(dir, inside, &mut source, mode)).map_err(write_err)
    } else if meta.is_dir() {
        if depth > MAX_DEPTH {
            return Err(WorkspaceError::UnsupportedInput {
                path: host.to_path_buf(),
            });
        }
        as_sandbox_user(&mut || mkdir_all_beneath(dir, inside)).map_err(write_err)?;
        let mut entries: Vec<_> = std::fs::read_dir(host)
            .map_err(read_err)?
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            copy_host_path(
                dir,
                &entry.path(),
                &inside.join(entry.file_name()),
                as_sandbox_user,
                depth + 1,
            )?;
        }
        Ok(())
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(host).map_err(read_err)?;
        let target = CString::new(target.as_os_str().as_bytes())
            .map_err(|_| read_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let parent = inside.parent().unwrap_or(Path::new(""));
        let name = CString::new(inside.file_name().unwrap_or_default().as_bytes())
            .map_err(|_| write_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        as_sandbox_user(&mut || {
            let parent_fd = if parent.as_os_str().is_empty() {
                open_beneath(dir, Path::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)?
            } else {
                open_beneath(dir, parent, libc::O_PATH | libc::O_DIRECTORY, 0)?
            };
            // SAFETY: valid fd and C strings.
            if unsafe { libc::symlinkat(target.as_ptr(), parent_fd.as_raw_fd(), name.as_ptr()) } < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
        .map_err(write_err)
    } else {
        Err(WorkspaceError::UnsupportedInput {
            path: host.to_path_buf(),
        })
    }
}

/// Matches `path` (components joined by `/`) against a glob: `*` and `?`
/// within one component, `**` across any number of components.
///
/// Names come from the sandbox, so matching must stay cheap whatever they
/// are: both levels use the greedy wildcard algorithm with a single
/// backtrack point, O(pattern x text), never exponential.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    wildcard(
        &pat,
        &parts,
        |p| *p == "**",
        |p| *p == "?",
        |p, part| match_one(p.as_bytes(), part.as_bytes()),
    )
}

fn match_one(pat: &[u8], text: &[u8]) -> bool {
    wildcard(pat, text, |c| *c == b'*', |c| *c == b'?', |c, t| c == t)
}

/// The classic iterative wildcard match over any items: `is_star` matches
/// any run (including none), `is_any` exactly one item, else `eq`.
fn wildcard<P, T>(
    pat: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    is_any: impl Fn(&P) -> bool,
    eq: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && is_star(&pat[p]) {
            star = Some((p, t));
            p += 1;
        } else if p < pat.len() && (is_any(&pat[p]) || eq(&pat[p], &text[t])) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star swallow one more item and retry after it.
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pat.len() && is_star(&pat[p]) {
        p += 1;
    }
    p == pat.len()
}

/// Copies the regular files of /sandbox that match the output patterns
/// into the host directory, within the spec's bounds. Runs after every
/// sandbox process is gone.
pub fn copy_out(
    dir: BorrowedFd<'_>,
    spec: &OutputSpec,
) -> Result<(Vec<CollectedFile>, Vec<SkippedFile>), WorkspaceError> {
    let mut found = Vec::new();
    let mut scanned = 0usize;
    let root = open_beneath(dir, Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(
        |source| WorkspaceError::WriteOutput {
            path: spec.host_dir.clone(),
            source,
        },
    )?;
    walk(root.as_fd(), "", 0, &mut scanned, &mut |rel| {
        if spec.patterns.iter().any(|p| glob_match(p, rel))
            && !spec.exclude.iter().any(|p| glob_match(p, rel))
        {
            found.push(rel.to_string());
        }
    });
    found.sort();

    let mut collected = Vec::new();
    let mut skipped = Vec::new();
    if found.is_empty() {
        return Ok((collected, skipped));
    }
    std::fs::create_dir_all(&spec.host_dir).map_err(|source| WorkspaceError::OutputDir {
        path: spec.host_dir.clone(),
        source,
    })?;
    let out_dir = File::open(&spec.host_dir).map_err(|source| WorkspaceError::OutputDir {
        path: spec.host_dir.clone(),
        source,
    })?;
    let mut total = 0u64;
    for rel in found {
        if collected.len() as u64 >= spec.max_files {
            skipped.push(SkippedFile {
                path: rel,
                reason: format!("more than {} output files", spec.max_files),
            });
            continue;
        }
        let source = match open_beneath(
            dir,
            Path::new(&rel),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        ) {
            Ok(fd) => File::from(fd),
            Err(e) => {
                skipped.push(SkippedFile {
                    path: rel,
                    reason: format!("cannot open it: {e}"),
                });
                continue;
            }
        };
        let meta = match source.metadata() {
            Ok(m) => m,
            Err(e) => {
                skipped.push(SkippedFile {
                    path: rel,
                    reason: format!("cannot stat it: {e}"),
                });
                continue;
            }
        };
        if !meta.is_file() {
            skipped.push(SkippedFile {
                path: rel,
                reason: "not a regular file".into(),
            });
            continue;
        }
        if total + meta.len() > spec.max_total_bytes {
            skipped.push(SkippedFile {
                path: rel,
                reason: format!(
                    "would pass the {}-byte total for output files",
                    spec.max_total_bytes
                ),
            });
            continue;
        }
        let rel_path = Path::new(&rel);
        let write = |source: &File| -> io::Result<u64> {
            if let Some(parent) = rel_path.parent() {
                if !parent.as_os_str().is_empty() {
                    mkdir_all_beneath(out_dir.as_fd(), parent)?;
                }
            }
            let fd = open_beneath(
                out_dir.as_fd(),
                rel_path,
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
                0o644,
            )?;
            let mut dest = File::from(fd);
            // Copy at most the size seen: a file cannot grow now, but stay bounded.
            let n = io::copy(&mut source.take(meta.len()), &mut dest)?;
            dest.flush()?;
            Ok(n)
        };
        // One file that cannot be written (a name already taken by a
        // directory or a link in the output directory, a full disk) is
        // reported, and the others are still collected.
        match write(&source) {
            Ok(n) => {
                total += n;
                collected.push(CollectedFile { path: rel, size: n });
            }
            Err(e) => skipped.push(SkippedFile {
                reason: format!("cannot write {}: {e}", spec.host_dir.join(&rel).display()),
                path: rel,
            }),
        }
    }
    Ok((collected, skipped))
}

/// Whether any regular file beneath `dir`, modified at or after `since`
/// (seconds, nanoseconds since the epoch), is at least `size` bytes: a
/// file stopped by RLIMIT_FSIZE ends exactly at the limit, and a file an
/// earlier stage wrote is not this stage's.
pub fn any_file_at_least(dir: BorrowedFd<'_>, size: u64, since: (i64, i64)) -> bool {
    let mut found = false;
    let mut scanned = 0usize;
    let Ok(root) = open_beneath(dir, Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0) else {
        return false;
    };
    walk(root.as_fd(), "", 0, &mut scanned, &mut |rel| {
        if found {
            return;
        }
        let Ok(c) = CString::new(rel) else { return };
        // SAFETY: an all-zero stat is valid for the kernel to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and pointer; AT_SYMLINK_NOFOLLOW never
        // follows a planted link.
        let r = unsafe {
            libc::fstatat(
                root.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        let recent = (st.st_mtime, st.st_mtime_nsec) >= since;
        if r == 0
            && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
            && st.st_size as u64 >= size
            && recent
        {
            found = true;
        }
    });
    found
}

/// Walks directories beneath `dir` without following links, calling `visit`
/// with each non-directory's relative path. Bounded in depth and entries.
fn walk(
    dir: BorrowedFd<'_>,
    prefix: &str,
    depth: usize,
    scanned: &mut usize,
    visit: &mut dyn FnMut(&str),
) {
    if depth > MAX_DEPTH {
        return;
    }
    // Duplicate the fd: ReadDir-like iteration via /proc/self/fd is not
    // needed; fdopendir takes ownership of a dup.
    // SAFETY: dup of a valid descriptor.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return;
    }
    // SAFETY: fdopendir takes ownership of `dup` on success.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        // SAFETY: fdopendir failed, so we still own dup.
        unsafe { libc::close(dup) };
        return;
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: stream is a valid DIR*.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            break;
        }
        *scanned += 1;
        if *scanned > MAX_ENTRIES_SCANNED {
            break;
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        // SAFETY: entry is valid until the next readdir.
        let is_dir = unsafe { (*entry).d_type } == libc::DT_DIR;
        names.push((
            String::from_utf8_lossy(bytes).into_owned(),
            bytes.to_vec(),
            is_dir,
        ));
    }
    // SAFETY: closes the stream and the dup it owns.
    unsafe { libc::closedir(stream) };
    for (display, raw, is_dir) in names {
        let rel = if prefix.is_empty() {
            display.clone()
        } else {
            format!("{prefix}/{display}")
        };
        if is_dir {
            let Ok(c) = CString::new(raw) else { continue };
            // SAFETY: valid dir fd and C string; O_NOFOLLOW refuses links.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: fresh descriptor we own.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                walk(owned.as_fd(), &rel, depth + 1, scanned, visit);
            }
        } else {
            visit(&rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "dir/a.txt"));
        assert!(glob_match("**/*.txt", "dir/a.txt"));
        assert!(glob_match("**/*.txt", "a.txt"));
        assert!(glob_match("out/**", "out/x/y"));
        assert!(glob_match("?.c", "a.c"));
        assert!(!glob_match("?.c", "ab.c"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a", "b"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("**/x/**/*.rs", "src/x/y/z/lib.rs"));
        assert!(!glob_match("**/x/**/*.rs", "src/y/lib.rs"));
    }

    #[test]
    fn hostile_names_cannot_make_matching_slow() {
        // Exponential backtracking would take ages here (the security
        // review's reproduction: many stars against long names).
        let name = format!("{}{}", "0".repeat(5), "_".repeat(240));
        let start = std::time::Instant::now();
        for _ in 0..3000 {
            assert!(!glob_match("*_*_*_*_*_*.txt", &name));
            assert!(!glob_match("**/**/**/**/*.txt", &"a/".repeat(60)));
        }
        // Generous: linear matching takes milliseconds.
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn sandbox_paths_must_stay_inside() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a"] {
            assert!(validate_sandbox_path(Path::new(bad)).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b.txt", "deep/er/file"] {
            assert!(validate_sandbox_path(Path::new(good)).is_ok(), "{good:?}");
        }
    }

    fn direct(f: &mut dyn FnMut() -> io::Result<()>) -> io::Result<()> {
        f()
    }

    #[test]
    fn copy_in_then_out_roundtrip_and_symlinks_are_not_followed() {
        let sandbox = tempfile::tempdir().expect("tempdir");
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(host.path().join("src/sub")).expect("mkdir");
        std::fs::write(host.path().join("src/sub/a.txt"), b"hello").expect("write");
        std::fs::write(host.path().join("secret"), b"secret").expect("write");
        let dir = File::open(sandbox.path()).expect("open");
        copy_in(
            dir.as_fd(),
            &[InputFile {
                host_path: host.path().join("src"),
                sandbox_path: PathBuf::from("in"),
            }],
            &[InlineFile {
                sandbox_path: PathBuf::from("main.py"),
                content: b"print(1)".to_vec(),
                executable: false,
            }],
            &direct,
        )
        .expect("copy in");
        assert_eq!(
            std::fs::read(sandbox.path().join("in/sub/a.txt")).expect("read"),
            b"hello"
        );
        assert_eq!(
            std::fs::read(sandbox.path().join("main.py")).expect("read"),
            b"print(1)"
        );

        // A planted symlink to a host file, and a FIFO: neither is copied.
        std::os::unix::fs::symlink(host.path().join("secret"), sandbox.path().join("leak.txt"))
            .expect("symlink");
        let fifo =
            CString::new(sandbox.path().join("fifo.txt").as_os_str().as_bytes()).expect("cstring");
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let out = tempfile::tempdir().expect("tempdir");
        let spec = OutputSpec {
            patterns: vec!["**/*.txt".into()],
            exclude: Vec::new(),
            host_dir: out.path().join("collected"),
            max_files: 10,
            max_total_bytes: 1 << 20,
        };
        let (files, skipped) = copy_out(dir.as_fd(), &spec).expect("copy out");
        assert_eq!(
            files,
            vec![CollectedFile {
                path: "in/sub/a.txt".into(),
                size: 5
            }]
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(!out.path().join("collected/leak.txt").exists());
    }

    #[test]
    fn copy_out_respects_count_and_byte_bounds() {
        let sandbox = tempfile::tempdir().expect("tempdir");
        for i in 0..5 {
            std::fs::write(sandbox.path().join(format!("f{i}.out")), vec![b'x'; 100])
                .expect("write");
        }
        let dir = File::open(sandbox.path()).expect("open");
        let out = tempfile::tempdir().expect("tempdir");
        let spec = OutputSpec {
            patterns: vec!["*.out".into()],
            exclude: Vec::new(),
            host_dir: out.path().to_path_buf(),
            max_files: 3,
            max_total_bytes: 250,
        };
        let (files, skipped) = copy_out(dir.as_fd(), &spec).expect("copy out");
        assert_eq!(files.len(), 2, "250 bytes hold two 100-byte files");
        assert_eq!(skipped.len(), 3);
    }

    #[test]
    fn copy_out_leaves_excluded_files_behind() {
        let sandbox = tempfile::tempdir().expect("tempdir");
        for name in ["result.txt", ".formicary-support.d.ts", "notes.txt"] {
            std::fs::write(sandbox.path().join(name), b"x").expect("write");
        }
        let dir = File::open(sandbox.path()).expect("open");
        let out = tempfile::tempdir().expect("tempdir");
        let spec = OutputSpec {
            patterns: vec!["**".into()],
            exclude: vec![".formicary-support.d.ts".into(), "notes.*".into()],
            host_dir: out.path().to_path_buf(),
            max_files: 10,
            max_total_bytes: 1 << 20,
        };
        let (files, skipped) = copy_out(dir.as_fd(), &spec).expect("copy out");
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["result.txt"]);
        assert!(skipped.is_empty(), "{skipped:?}");
    }
}
