//! The sandbox's filesystem: a fresh tmpfs root, assembled from read-only
//! binds of host paths, a new /proc with sensitive files masked, a minimal
//! /dev and synthesized /etc files. The same tmpfs holds /sandbox, /tmp
//! and /dev/shm, the only writable places, so its size is the disk limit.
//! The tmpfs root is pivoted into first; host paths are bound from the old
//! root, which is then detached.
//!
//! [`MountPlan::prepare`] runs in the supervisor and may allocate: it looks
//! at the host paths and turns the configuration into a list of
//! [`MountOp`]s with every path already a C string. [`MountPlan::apply_in_child`]
//! runs in the sandbox's init between clone and exec, so it only makes raw
//! syscalls on that prepared data.

use crate::child_error::{check, check_int, last_errno, ChildFailure};
use crate::spec::ReadOnlyPath;
use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The host directory the new root's tmpfs is first mounted on. The mount
/// namespace is private by then, so this is invisible to the host, and
/// pivot_root moves the tmpfs off it at once (so host paths under /tmp can
/// still be bound).
const BUILD_ROOT: &CStr = c"/tmp";
/// Where the host's root stays reachable while the new root is assembled
/// (the binds take their sources from it); detached before the seal.
const OLD_ROOT: &str = "/.oldroot";
/// An empty directory of the root, bound over the /proc directories that
/// are masked, then removed (the binds keep it, empty and unlinked).
const EMPTY_DIR: &CStr = c"/.empty";

/// The sandbox user's uid and gid inside the sandbox.
pub const SANDBOX_ID: u32 = 1000;

/// Files in /proc that leak host information or act on the host; a bind of
/// /dev/null hides each (the list container runtimes mask).
const MASKED_PROC_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/sysrq-trigger",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/latency_stats",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
    "/proc/config.gz",
    "/proc/vmallocinfo",
    "/proc/pagetypeinfo",
    "/proc/slabinfo",
    // Unique per host boot: lets separate sandboxes tell they share a host.
    "/proc/sys/kernel/random/boot_id",
];

/// Whether a /proc file must be masked: only when the sandbox user could
/// open it. The sandbox's /proc shows the same kernel's files with the same
/// modes, owned by a uid the sandbox user is not: an absent file, or one
/// without read or write permission for others, is closed to it already.
fn needs_mask(file: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(file) {
        Ok(meta) => meta.permissions().mode() & 0o006 != 0,
        // Unknown (no /proc here?): mask to be safe.
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Whether a /proc directory must be masked: whenever it may exist.
fn dir_needs_mask(dir: &str) -> bool {
    !matches!(std::fs::symlink_metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// The /proc files and directories this host's sandboxes need masked,
/// decided once per process: which files exist and their modes belong to
/// the running kernel, so every plan would find the same (and the stats
/// cost ~25 µs per sandbox).
fn proc_masks() -> &'static (Vec<&'static str>, Vec<&'static str>) {
    static MASKS: std::sync::OnceLock<(Vec<&'static str>, Vec<&'static str>)> =
        std::sync::OnceLock::new();
    MASKS.get_or_init(|| {
        (
            MASKED_PROC_FILES
                .iter()
                .copied()
                .filter(|f| needs_mask(f))
                .collect(),
            MASKED_PROC_DIRS
                .iter()
                .copied()
                .filter(|d| dir_needs_mask(d))
                .collect(),
        )
    })
}

/// Who finds which /proc files a sandbox needs masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcMaskCheck {
    /// The supervisor, from the host's /proc, once per process
    /// ([`proc_masks`]; ~20 `stat` calls): for a process that builds many
    /// sandboxes, which then mount only the masks needed.
    Supervisor,
    /// The root builder, in the sandbox's own /proc, one `stat` before
    /// each mask: for a run someone waits for, whose supervisor has better
    /// to do before the clone and whose builder has time to spare.
    Builder,
}

/// Directories in /proc hidden under an empty read-only directory (the rest of
/// /proc, /proc/sys, /proc/bus, /proc/fs and /proc/irq included, is made
/// read-only by the seal, as container runtimes do).
const MASKED_PROC_DIRS: &[&str] = &["/proc/acpi", "/proc/asound", "/proc/scsi"];

/// The writable directories (parts of the root's tmpfs) and their modes.
const WRITABLE: [(&str, u32); 3] = [("/sandbox", 0o755), ("/tmp", 0o1777), ("/dev/shm", 0o1777)];

/// Device files bound from the host into the sandbox's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Filesystems that are the kernel's control interfaces (cgroups, tracing,
/// BPF, namespaces, terminals...), never what a program needs to run and
/// never bound into a sandbox. (Not `autofs`: automount points may hold
/// data an operator binds.)
const KERNEL_INTERFACE_FILESYSTEMS: &[&str] = &[
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "tracefs",
];

/// Gives the calling process (the spawner) a mount namespace of its own,
/// private, without the host's mounts of kernel interfaces: each init
/// cloned from it then copies only the mounts a root can be built from,
/// and has fewer to detach and free. Every mount the kernel copies costs
/// time in the clone and again in the teardown, and hosts have dozens of
/// these (this one 13 of its 22; a Docker host one per container). Fails
/// without `CAP_SYS_ADMIN` (rootless), which changes nothing but speed.
pub(crate) fn shed_kernel_interface_mounts() -> std::io::Result<()> {
    // SAFETY: unshare with a constant flag.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Private first: the copies share the host's propagation, and a
    // detach here must not propagate to the host.
    // SAFETY: constant strings; a null source and data are allowed.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let text = crate::sys::read_small_file("/proc/self/mountinfo")?;
    let mounts = crate::mountinfo::parse(&text)
        .map_err(|bad| std::io::Error::other(format!("unreadable mountinfo line {:?}", bad.0)))?;
    // Children before their parents (a detached parent takes its children
    // with it, and their detach then fails harmlessly).
    for mount in mounts.iter().rev() {
        if !KERNEL_INTERFACE_FILESYSTEMS.contains(&mount.fstype.as_str()) {
            continue;
        }
        let Ok(path) = CString::new(mount.mount_point.as_str()) else {
            continue;
        };
        // SAFETY: a valid C string; umount2 only reads it.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
    Ok(())
}

/// The read-only host paths every sandbox gets unless the config file says
/// otherwise: what dynamically linked programs need to start, and no more.
pub fn default_read_only_paths() -> Vec<ReadOnlyPath> {
    [
        ("/usr", false),
        ("/bin", true),
        ("/sbin", true),
        ("/lib", true),
        ("/lib64", true),
        ("/lib32", true),
        ("/libx32", true),
        // The dynamic loader's cache (ld.so.conf is only read by ldconfig).
        ("/etc/ld.so.cache", true),
        // TLS trust: /etc/ssl/certs links into /usr/share/ca-certificates.
        ("/etc/ssl", true),
        ("/etc/pki", true),
        // Debian's alternatives (java, editor...), links into /usr.
        ("/etc/alternatives", true),
        ("/etc/localtime", true),
    ]
    .into_iter()
    .map(|(p, optional)| ReadOnlyPath {
        host: PathBuf::from(p),
        sandbox: None,
        optional,
    })
    .collect()
}

/// Why a mount plan could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("read-only path {path:?} does not exist on this host: fix the --ro-bind flag or the config file's read-only paths, or install what provides it")]
    Missing { path: PathBuf },
    #[error("cannot inspect read-only path {path:?}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read-only path {path:?} would cover the sandbox's writable {writable}: bind it somewhere else, or under it (for example {writable}/data)")]
    Reserved {
        path: PathBuf,
        writable: &'static str,
    },
    #[error("path {path:?} must be absolute and free of `..`")]
    BadPath { path: PathBuf },
    #[error("path {path:?} contains a NUL byte")]
    Nul { path: PathBuf },
}

/// One step of assembling the root. Paths are absolute in the new root
/// (already pivoted into); host paths are reached under the old root.
#[derive(Debug)]
pub enum MountOp {
    Mkdir {
        path: CString,
        mode: u32,
    },
    Symlink {
        target: CString,
        path: CString,
    },
    WriteFile {
        path: CString,
        content: Vec<u8>,
    },
    /// An empty file to bind a file onto.
    Touch {
        path: CString,
    },
    /// Recursive bind of a host path; made read-only by `SealReadOnly`.
    BindReadOnly {
        source: CString,
        target: CString,
    },
    /// Read-only, nosuid and nodev on `target` and every mount below it.
    SealReadOnly {
        target: CString,
    },
    /// A sealed device bind made usable again: nodev and read-only
    /// cleared, nosuid and noexec set.
    UnsealDevice {
        target: CString,
    },
    /// A sealed writable directory's bind made writable again, alone
    /// (what is mounted under it stays read-only); it keeps nosuid and
    /// nodev.
    UnsealWritable {
        target: CString,
    },
    /// A directory of the root bound onto itself, not recursively (made
    /// writable again after the seal by `UnsealWritable`).
    BindWritable {
        source: CString,
        target: CString,
    },
    /// A new procfs for the sandbox's pid namespace.
    Proc {
        target: CString,
    },
    /// Hide a file with /dev/null. One the sandbox's /proc lacks
    /// (`ENOENT`) needs no mask. `if_open`: first look whether the sandbox
    /// user could open it at all, and mask it only then (see
    /// [`ProcMaskCheck::Builder`]); otherwise the plan lists only files
    /// the supervisor found in need.
    MaskFile {
        target: CString,
        if_open: bool,
    },
    /// Hide a directory with a bind of an empty directory, read-only
    /// after the seal (skipped on `ENOENT`, as for files).
    MaskDir {
        target: CString,
    },
    Chown {
        path: CString,
        id: u32,
    },
    Chmod {
        path: CString,
        mode: u32,
    },
    Detach {
        target: CString,
    },
    Rmdir {
        path: CString,
    },
}

/// Every step to build the sandbox's root, prepared ahead of the clone.
#[derive(Debug)]
pub struct MountPlan {
    /// The root tmpfs's mount options: its size is the disk limit plus
    /// what the plan itself writes into it.
    root_options: CString,
    ops: Vec<MountOp>,
}

fn cstring(path: &Path) -> Result<CString, MountError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::Nul {
        path: path.to_path_buf(),
    })
}

fn cstr(text: &str) -> CString {
    // Only called with constants and formatted numbers, which hold no NUL.
    CString::new(text).unwrap_or_default()
}

/// Checks that `path` is absolute and made only of normal components.
fn absolute_clean(path: &Path) -> Result<(), MountError> {
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if clean {
        Ok(())
    } else {
        Err(MountError::BadPath {
            path: path.to_path_buf(),
        })
    }
}

/// Builds the op list, creating each directory once.
struct Builder {
    ops: Vec<MountOp>,
    dirs: BTreeSet<PathBuf>,
}

impl Builder {
    /// A path in the new root (already pivoted into).
    fn at(path: &Path) -> PathBuf {
        path.to_path_buf()
    }

    /// A host path, reached through the old root.
    fn host(path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        Path::new(OLD_ROOT).join(rel)
    }

    /// Creates `path` (absolute in the sandbox) and its missing parents.
    fn mkdir_all(&mut self, path: &Path) -> Result<(), MountError> {
        let mut current = PathBuf::from("/");
        for part in path.components().skip(1) {
            current.push(part);
            if self.dirs.insert(current.clone()) {
                self.ops.push(MountOp::Mkdir {
                    path: cstring(&Self::at(&current))?,
                    mode: 0o755,
                });
            }
        }
        Ok(())
    }

    fn parent_of(&mut self, path: &Path) -> Result<(), MountError> {
        match path.parent() {
            Some(parent) => self.mkdir_all(parent),
            None => Ok(()),
        }
    }

    fn read_only(&mut self, entry: &ReadOnlyPath) -> Result<(), MountError> {
        absolute_clean(&entry.host)?;
        let inside = entry.sandbox.clone().unwrap_or_else(|| entry.host.clone());
        absolute_clean(&inside)?;
        // Covering a writable directory (or what holds one) would hide the
        // sandbox's own: a read-only path goes under it instead.
        if let Some((writable, _)) = WRITABLE
            .iter()
            .find(|(dir, _)| Path::new(dir).starts_with(&inside))
        {
            return Err(MountError::Reserved {
                path: inside,
                writable,
            });
        }
        let meta = match std::fs::symlink_metadata(&entry.host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if entry.optional {
                    Ok(())
                } else {
                    Err(MountError::Missing {
                        path: entry.host.clone(),
                    })
                };
            }
            Err(source) => {
                return Err(MountError::Inspect {
                    path: entry.host.clone(),
                    source,
                })
            }
        };
        self.parent_of(&inside)?;
        let target = cstring(&Self::at(&inside))?;
        if meta.file_type().is_symlink() {
            // Merged-/usr links (/bin -> usr/bin) and /etc/localtime: the
            // same link inside, pointing into what is bound.
            let link = std::fs::read_link(&entry.host).map_err(|source| MountError::Inspect {
                path: entry.host.clone(),
                source,
            })?;
            self.ops.push(MountOp::Symlink {
                target: cstring(&link)?,
                path: target,
            });
            return Ok(());
        }
        if meta.is_dir() {
            if self.dirs.insert(inside.clone()) {
                self.ops.push(MountOp::Mkdir {
                    path: target.clone(),
                    mode: 0o755,
                });
            }
        } else {
            self.ops.push(MountOp::Touch {
                path: target.clone(),
            });
        }
        self.ops.push(MountOp::BindReadOnly {
            source: cstring(&Self::host(&entry.host))?,
            target,
        });
        Ok(())
    }

    fn write_file(&mut self, inside: &str, content: String) -> Result<(), MountError> {
        let path = Path::new(inside);
        self.parent_of(path)?;
        self.ops.push(MountOp::WriteFile {
            path: cstring(&Self::at(path))?,
            content: content.into_bytes(),
        });
        Ok(())
    }
}

/// The /etc files formicary writes itself: who `sandbox` is, and names.
fn synthesized_etc() -> Vec<(&'static str, String)> {
    vec![
        (
            "/etc/passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 sandbox:x:{SANDBOX_ID}:{SANDBOX_ID}:sandbox:/sandbox:/bin/sh\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "/etc/group",
            format!("root:x:0:\nsandbox:x:{SANDBOX_ID}:\nnogroup:x:65534:\n"),
        ),
        (
            "/etc/hosts",
            "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string(),
        ),
        ("/etc/hostname", "sandbox\n".to_string()),
        (
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n".to_string(),
        ),
        ("/etc/resolv.conf", String::new()),
        // What getprotobyname and getservbyname read (Perl's sockets ask for
        // "tcp" by name; getaddrinfo accepts "http" as a port): the common
        // entries, not the host's whole lists.
        (
            "/etc/protocols",
            "ip\t0\tIP\nicmp\t1\tICMP\ntcp\t6\tTCP\nudp\t17\tUDP\n\
             ipv6\t41\tIPv6\nipv6-icmp\t58\tIPv6-ICMP\n"
                .to_string(),
        ),
        (
            "/etc/services",
            "ftp\t\t21/tcp\nssh\t\t22/tcp\nsmtp\t\t25/tcp\ndomain\t\t53/tcp\n\
             domain\t\t53/udp\nhttp\t\t80/tcp\t\twww\npop3\t\t110/tcp\n\
             ntp\t\t123/udp\nimap\t\t143/tcp\nhttps\t\t443/tcp\n\
             submission\t587/tcp\nimaps\t\t993/tcp\npop3s\t\t995/tcp\n\
             socks\t\t1080/tcp\npostgresql\t5432/tcp\nredis\t\t6379/tcp\n\
             http-alt\t8080/tcp\n"
                .to_string(),
        ),
    ]
}

impl MountPlan {
    /// Prepares the whole filesystem: `read_only` host paths, the writable
    /// tmpfs of `disk_bytes`, /proc (its masks found as `masks` says),
    /// /dev and /etc.
    pub fn prepare(
        read_only: &[ReadOnlyPath],
        disk_bytes: u64,
        masks: ProcMaskCheck,
    ) -> Result<MountPlan, MountError> {
        let mut b = Builder {
            ops: Vec::new(),
            dirs: BTreeSet::new(),
        };
        b.dirs.insert(PathBuf::from("/"));
        // The writable parts are directories of the root's own tmpfs, each
        // bound onto itself (not recursively) so that the seal below can
        // leave them writable while the rest of the root is read-only: one
        // filesystem, so one size limit covers /sandbox, /tmp and /dev/shm
        // together, and no superblock of its own to make and tear down per
        // sandbox. They come first, so that a read-only path bound under
        // one of them (`/sandbox/data`) is mounted on top of it and stays
        // read-only.
        for (inside, mode) in WRITABLE {
            b.mkdir_all(Path::new(inside))?;
            let path = cstring(&Builder::at(Path::new(inside)))?;
            b.ops.push(MountOp::Chmod {
                path: path.clone(),
                mode,
            });
            if inside == "/sandbox" {
                b.ops.push(MountOp::Chown {
                    path: path.clone(),
                    id: SANDBOX_ID,
                });
            }
            b.ops.push(MountOp::BindWritable {
                source: path.clone(),
                target: path,
            });
        }
        for entry in read_only {
            b.read_only(entry)?;
        }
        for (path, content) in synthesized_etc() {
            // A read-only path given for the same file wins.
            if !read_only
                .iter()
                .any(|r| r.sandbox.as_deref().unwrap_or(&r.host) == Path::new(path))
            {
                b.write_file(path, content)?;
            }
        }

        // Every mount point the later steps need, created while the root
        // tmpfs is still writable.
        b.mkdir_all(Path::new("/dev"))?;
        for dev in DEVICES {
            b.ops.push(MountOp::Touch {
                path: cstring(&Builder::at(&Path::new("/dev").join(dev)))?,
            });
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            b.ops.push(MountOp::Symlink {
                target: cstr(target),
                path: cstring(&Builder::at(&Path::new("/dev").join(name)))?,
            });
        }
        b.mkdir_all(Path::new("/proc"))?;

        // Devices are bound now, while the host's /dev is reachable; after
        // the seal they get back the right to be devices (see below).
        for dev in DEVICES {
            b.ops.push(MountOp::BindReadOnly {
                source: cstring(&Builder::host(&Path::new("/dev").join(dev)))?,
                target: cstring(&Builder::at(&Path::new("/dev").join(dev)))?,
            });
        }

        // /proc, then the masks over it.
        b.ops.push(MountOp::Proc {
            target: cstring(&Builder::at(Path::new("/proc")))?,
        });
        let (mask_files, mask_dirs): (&[&str], &[&str]) = match masks {
            ProcMaskCheck::Supervisor => {
                let (files, dirs) = proc_masks();
                (files, dirs)
            }
            // Every candidate: the builder looks at each.
            ProcMaskCheck::Builder => (MASKED_PROC_FILES, MASKED_PROC_DIRS),
        };
        for file in mask_files {
            b.ops.push(MountOp::MaskFile {
                target: cstring(&Builder::at(Path::new(file)))?,
                if_open: masks == ProcMaskCheck::Builder,
            });
        }
        if !mask_dirs.is_empty() {
            b.ops.push(MountOp::Mkdir {
                path: EMPTY_DIR.to_owned(),
                mode: 0o555,
            });
            for dir in mask_dirs {
                b.ops.push(MountOp::MaskDir {
                    target: cstring(&Builder::at(Path::new(dir)))?,
                });
            }
            // The binds keep the directory; unlinked, nothing can be made
            // in it, and the root does not show it.
            b.ops.push(MountOp::Rmdir {
                path: EMPTY_DIR.to_owned(),
            });
        }

        // The host's root goes away; only what was bound stays. (Not
        // earlier: the kernel mounts a new /proc only where a full one is
        // visible.)
        b.ops.push(MountOp::Detach {
            target: cstr(OLD_ROOT),
        });
        b.ops.push(MountOp::Rmdir {
            path: cstr(OLD_ROOT),
        });

        // One recursive step makes the root, every host bind, /proc and its
        // masks read-only, nosuid and nodev. Then the few mounts that must
        // differ get their rights back, each alone (not what is mounted
        // under it): devices may be devices, and the writable directories
        // are writable.
        b.ops.push(MountOp::SealReadOnly { target: cstr("/") });
        for dev in DEVICES {
            b.ops.push(MountOp::UnsealDevice {
                target: cstring(&Builder::at(&Path::new("/dev").join(dev)))?,
            });
        }
        for (dir, _) in WRITABLE {
            b.ops.push(MountOp::UnsealWritable { target: cstr(dir) });
        }

        // The root's tmpfs holds the writable parts, so its size is the
        // disk limit plus the plan's own files, which the sandbox cannot
        // write (the root is read-only) and must not pay for.
        let (skeleton_bytes, skeleton_inodes) = skeleton_usage(&b.ops);
        let inodes = (disk_bytes / 1024).clamp(1024, 1 << 20) + skeleton_inodes;
        let size = disk_bytes.saturating_add(skeleton_bytes);
        Ok(MountPlan {
            root_options: cstr(&format!("size={size},nr_inodes={inodes},mode=0755")),
            ops: b.ops,
        })
    }

    /// The steps, for tests and for `formicary check`.
    pub fn ops(&self) -> &[MountOp] {
        &self.ops
    }

    /// The root tmpfs's mount options (its size and inode count).
    pub fn root_options(&self) -> &CStr {
        &self.root_options
    }

    /// The root tmpfs's size in bytes, from its options (for tests).
    #[cfg(test)]
    pub(crate) fn root_size(&self) -> u64 {
        self.root_options
            .to_str()
            .ok()
            .and_then(|o| o.split(',').find_map(|o| o.strip_prefix("size=")))
            .and_then(|v| v.parse().ok())
            .expect("the root options give a size")
    }

    /// Makes the mount namespace private, mounts the root tmpfs and runs
    /// every step. Runs in the sandbox's init: raw syscalls only.
    pub fn apply_in_child(&self) -> Result<(), ChildFailure> {
        let none = std::ptr::null::<libc::c_char>();
        check_int(
            // SAFETY: all pointers are NUL-terminated strings owned by `self`
            // or null where mount(2) allows it.
            unsafe {
                libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            },
            "make mounts private",
        )?;
        // SAFETY: constant C strings and the plan's options. The tmpfs
        // becomes the root at once;
        // the host's root stays reachable at OLD_ROOT for the binds.
        unsafe {
            check_int(
                libc::mount(
                    c"tmpfs".as_ptr(),
                    BUILD_ROOT.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    self.root_options.as_ptr().cast(),
                ),
                "mount the root tmpfs",
            )?;
            check_int(
                libc::mkdir(c"/tmp/.oldroot".as_ptr(), 0o700),
                "create the old root's mount point",
            )?;
            check(
                libc::syscall(
                    libc::SYS_pivot_root,
                    BUILD_ROOT.as_ptr(),
                    c"/tmp/.oldroot".as_ptr(),
                ),
                "pivot_root",
            )?;
            check_int(libc::chdir(c"/".as_ptr()), "enter the new root")?;
        }
        for op in &self.ops {
            apply_op(op)?;
        }
        Ok(())
    }
}

/// The space the plan's own entries take in the root's tmpfs: pages of
/// file data (a symlink of 128 bytes or more takes a page too) and inodes
/// (with the old root's mount point, the root itself and a few spare).
fn skeleton_usage(ops: &[MountOp]) -> (u64, u64) {
    // SAFETY: sysconf has no memory effects.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    };
    let (mut bytes, mut inodes) = (0u64, 8u64);
    for op in ops {
        match op {
            MountOp::WriteFile { content, .. } => {
                bytes += (content.len() as u64).div_ceil(page) * page;
                inodes += 1;
            }
            MountOp::Symlink { target, .. } => {
                if target.as_bytes().len() >= 128 {
                    bytes += page;
                }
                inodes += 1;
            }
            MountOp::Mkdir { .. } | MountOp::Touch { .. } => inodes += 1,
            _ => {}
        }
    }
    (bytes, inodes)
}

/// mount_setattr(2): `attr_set` set and `attr_clr` cleared on `target`, and
/// on every mount below it when `recursive`.
fn set_mount_attrs(
    target: &CString,
    attr_set: u64,
    attr_clr: u64,
    recursive: bool,
    step: &'static str,
) -> Result<(), ChildFailure> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    check(
        // SAFETY: `target` is a valid C string and `attr` a valid mount_attr of
        // the size passed; the kernel only reads both.
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                target.as_ptr(),
                if recursive {
                    libc::AT_RECURSIVE as libc::c_uint
                } else {
                    0
                },
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        },
        step,
    )?;
    Ok(())
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// A recursive bind (what is mounted under `source` comes along).
fn bind(source: &CStr, target: &CStr, step: &'static str) -> Result<(), ChildFailure> {
    bind_with(source, target, libc::MS_BIND | libc::MS_REC, step)
}

fn bind_with(
    source: &CStr,
    target: &CStr,
    flags: libc::c_ulong,
    step: &'static str,
) -> Result<(), ChildFailure> {
    check_int(
        // SAFETY: both strings are valid C strings owned by the plan.
        unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        },
        step,
    )?;
    Ok(())
}

/// Whether the sandbox user could open `path`, which it does not own: a
/// read or write bit for others (as [`needs_mask`] decides on the host).
/// When `stat` fails, for whatever reason, yes: the mask's own bind then
/// tells an absent file (`ENOENT`, nothing to hide) from anything else
/// (an error). (errno is not consulted here: the root builder shares it
/// with init.) Child side: a `stat` into this stack frame.
fn open_to_others(path: &CStr) -> bool {
    // SAFETY: an all-zero stat is a valid value for the kernel to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a pointer to a local.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } < 0 {
        return true;
    }
    st.st_mode & 0o006 != 0
}

/// A mask over a /proc path that is not there hides nothing: `ENOENT` is
/// success. (Its source, `/dev/null`, was bound into the root before.)
fn absent_is_fine<T>(result: Result<T, ChildFailure>) -> Result<(), ChildFailure> {
    match result {
        Err(failure) if failure.errno == libc::ENOENT => Ok(()),
        other => other.map(|_| ()),
    }
}

fn apply_op(op: &MountOp) -> Result<(), ChildFailure> {
    match op {
        MountOp::Mkdir { path, mode } => {
            // SAFETY: valid C string.
            if unsafe { libc::mkdir(path.as_ptr(), *mode) } < 0 {
                let failure = last_errno("create a directory in the new root");
                if failure.errno != libc::EEXIST {
                    return Err(failure);
                }
            }
        }
        MountOp::Symlink { target, path } => {
            check_int(
                // SAFETY: valid C strings.
                unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) },
                "create a symlink in the new root",
            )?;
        }
        MountOp::WriteFile { path, content } => {
            let fd = check_int(
                // SAFETY: valid C string; the fd is closed below.
                unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o644,
                    )
                },
                "create a file in /etc",
            )?;
            let mut written = 0;
            while written < content.len() {
                // SAFETY: the range lies within `content`.
                let n = unsafe {
                    libc::write(
                        fd,
                        content[written..].as_ptr().cast(),
                        content.len() - written,
                    )
                };
                if n <= 0 {
                    let failure = last_errno("write a file in /etc");
                    // SAFETY: fd is ours.
                    unsafe { libc::close(fd) };
                    return Err(failure);
                }
                written += n as usize;
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
        }
        MountOp::Touch { path } => {
            // SAFETY: valid C string; the fd is closed at once.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o644,
                )
            };
            check_int(fd, "create a mount point file")?;
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
        }
        MountOp::BindReadOnly { source, target } => {
            bind(source, target, "bind a read-only host path")?;
        }
        MountOp::SealReadOnly { target } => {
            set_mount_attrs(
                target,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                0,
                true,
                "make the root and host paths read-only",
            )?;
        }
        MountOp::UnsealWritable { target } => {
            set_mount_attrs(
                target,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                MOUNT_ATTR_RDONLY,
                false,
                "make a writable directory writable again",
            )?;
        }
        MountOp::UnsealDevice { target } => {
            set_mount_attrs(
                target,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
                MOUNT_ATTR_NODEV | MOUNT_ATTR_RDONLY,
                false,
                "make a /dev entry a usable device again",
            )?;
        }
        MountOp::BindWritable { source, target } => {
            bind_with(source, target, libc::MS_BIND, "bind a writable directory")?;
        }
        MountOp::Proc { target } => {
            check_int(
                // SAFETY: valid C strings.
                unsafe {
                    libc::mount(
                        c"proc".as_ptr(),
                        target.as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    )
                },
                "mount /proc",
            )?;
        }
        MountOp::MaskFile { target, if_open } => {
            if *if_open && !open_to_others(target) {
                return Ok(());
            }
            // A literal: the child may not allocate (in a clone of a
            // multithreaded process, the allocator's lock may be held by a
            // thread that does not exist there).
            absent_is_fine(bind(c"/dev/null", target, "mask a /proc file"))?;
        }
        MountOp::MaskDir { target } => {
            absent_is_fine(bind(EMPTY_DIR, target, "mask a /proc directory"))?;
        }
        MountOp::Chown { path, id } => {
            check_int(
                // SAFETY: valid C string.
                unsafe { libc::chown(path.as_ptr(), *id, *id) },
                "give /sandbox to the sandbox user",
            )?;
        }
        MountOp::Chmod { path, mode } => {
            check_int(
                // SAFETY: valid C string.
                unsafe { libc::chmod(path.as_ptr(), *mode) },
                "set a writable directory's mode",
            )?;
        }
        MountOp::Rmdir { path } => {
            check_int(
                // SAFETY: valid C string.
                unsafe { libc::rmdir(path.as_ptr()) },
                "remove a directory used only to build the root",
            )?;
        }
        MountOp::Detach { target } => {
            check_int(
                // SAFETY: valid C string.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) },
                "detach the old root",
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(plan: &MountPlan) -> Vec<String> {
        plan.ops().iter().map(|op| format!("{op:?}")).collect()
    }

    #[test]
    fn relative_or_dotdot_paths_are_refused() {
        for bad in ["usr", "/usr/../etc", "../usr"] {
            let entry = ReadOnlyPath {
                host: PathBuf::from(bad),
                sandbox: None,
                optional: true,
            };
            assert!(
                matches!(
                    MountPlan::prepare(&[entry], 1 << 20, ProcMaskCheck::Supervisor),
                    Err(MountError::BadPath { .. })
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn missing_required_paths_are_refused_and_optional_ones_skipped() {
        let missing = ReadOnlyPath {
            host: PathBuf::from("/nonexistent-formicary-test"),
            sandbox: None,
            optional: false,
        };
        assert!(matches!(
            MountPlan::prepare(
                std::slice::from_ref(&missing),
                1 << 20,
                ProcMaskCheck::Supervisor
            ),
            Err(MountError::Missing { .. })
        ));
        let optional = ReadOnlyPath {
            optional: true,
            ..missing
        };
        let plan = MountPlan::prepare(&[optional], 1 << 20, ProcMaskCheck::Supervisor)
            .expect("optional path is skipped");
        assert!(!paths(&plan).iter().any(|p| p.contains("nonexistent")));
    }

    #[test]
    fn the_builder_or_the_supervisor_finds_the_proc_files_to_mask() {
        let masked = |plan: &MountPlan| -> Vec<(String, bool)> {
            plan.ops()
                .iter()
                .filter_map(|op| match op {
                    MountOp::MaskFile { target, if_open } => {
                        Some((target.to_str().expect("UTF-8").to_string(), *if_open))
                    }
                    _ => None,
                })
                .collect()
        };
        // The builder is given every candidate, to look at in the sandbox.
        let builder =
            MountPlan::prepare(&default_read_only_paths(), 1 << 20, ProcMaskCheck::Builder)
                .expect("plan");
        let all: Vec<(String, bool)> = MASKED_PROC_FILES
            .iter()
            .map(|f| (f.to_string(), true))
            .collect();
        assert_eq!(masked(&builder), all);
        let dirs = builder
            .ops()
            .iter()
            .filter(|op| matches!(op, MountOp::MaskDir { .. }))
            .count();
        assert_eq!(dirs, MASKED_PROC_DIRS.len());
        // The supervisor lists only what this host's /proc needs, decided.
        let supervisor = MountPlan::prepare(
            &default_read_only_paths(),
            1 << 20,
            ProcMaskCheck::Supervisor,
        )
        .expect("plan");
        let decided: Vec<(String, bool)> = proc_masks()
            .0
            .iter()
            .map(|f| (f.to_string(), false))
            .collect();
        assert_eq!(masked(&supervisor), decided);
        // The builder's look: a read or write bit for others means a mask;
        // a file it cannot stat is left to the bind (which skips `ENOENT`).
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").expect("write");
        let c_file = CString::new(file.to_str().expect("UTF-8")).expect("C string");
        for (mode, open) in [(0o600, false), (0o660, false), (0o604, true), (0o602, true)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(open_to_others(&c_file), open, "{mode:o}");
        }
        assert!(open_to_others(c"/proc/no-such-file"));
    }

    #[test]
    fn the_plan_binds_usr_read_only_and_sizes_the_writable_tmpfs() {
        let plan = MountPlan::prepare(
            &default_read_only_paths(),
            64 << 20,
            ProcMaskCheck::Supervisor,
        )
        .expect("default plan");
        let ops = paths(&plan);
        assert!(ops
            .iter()
            .any(|p| p.starts_with("BindReadOnly") && p.contains("\"/.oldroot/usr\"")));
        for masked in ["/proc/keys", "/proc/kallsyms"] {
            assert!(ops
                .iter()
                .any(|p| p.starts_with("MaskFile") && p.contains(masked)));
        }
        // The root's tmpfs is the disk: its size is the limit plus the
        // plan's own files (a page each, here), never less.
        let size = plan.root_size();
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let file_pages: u64 = plan
            .ops()
            .iter()
            .filter_map(|op| match op {
                MountOp::WriteFile { content, .. } => Some((content.len() as u64).div_ceil(page)),
                _ => None,
            })
            .sum();
        assert!(file_pages >= 2, "passwd and group at least");
        assert_eq!(
            size,
            (64 << 20) + file_pages * page,
            "{:?}",
            plan.root_options()
        );
        // No writable bind of a host path: each writable bind is a part
        // of the root's own tmpfs bound onto itself.
        let writable: Vec<_> = plan
            .ops()
            .iter()
            .filter_map(|op| match op {
                MountOp::BindWritable { source, target } => {
                    assert_eq!(source, target);
                    Some(target.to_str().expect("UTF-8").to_string())
                }
                _ => None,
            })
            .collect();
        assert_eq!(writable, ["/sandbox", "/tmp", "/dev/shm"]);
        // The /proc directory masks bind an empty directory that is
        // removed afterwards.
        let empty_removed = plan
            .ops()
            .iter()
            .position(|op| matches!(op, MountOp::Rmdir { path } if path.as_c_str() == EMPTY_DIR));
        for (i, op) in plan.ops().iter().enumerate() {
            if matches!(op, MountOp::MaskDir { .. }) {
                assert!(empty_removed.is_some_and(|r| r > i));
            }
        }
        // One detach only: the old root's.
        let detaches = plan
            .ops()
            .iter()
            .filter(|op| matches!(op, MountOp::Detach { .. }))
            .count();
        assert_eq!(detaches, 1);
        // Each directory is created once.
        let mkdirs: Vec<_> = plan
            .ops()
            .iter()
            .filter_map(|op| match op {
                MountOp::Mkdir { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        let unique: BTreeSet<_> = mkdirs.iter().collect();
        assert_eq!(unique.len(), mkdirs.len());
    }

    #[test]
    fn passwd_knows_the_sandbox_user() {
        let etc = synthesized_etc();
        let passwd = &etc
            .iter()
            .find(|(p, _)| *p == "/etc/passwd")
            .expect("passwd")
            .1;
        assert!(passwd.contains("sandbox:x:1000:1000:sandbox:/sandbox:"));
    }
}
