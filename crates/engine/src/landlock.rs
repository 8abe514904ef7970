//! Landlock: the unprivileged file-system, TCP and IPC-scope restriction the
//! sandboxed program runs under, on top of the mount namespace.
//!
//! Split like every module whose work finishes in the child:
//!
//! * the parent calls [`LandlockPlan::prepare`]: it creates the ruleset (which
//!   proves Landlock works before anything is cloned), and turns the path
//!   rules into `CString`s and access masks;
//! * the child, after pivot_root and after setting no_new_privs, calls
//!   [`LandlockPlan::apply_in_child`], which opens each path, adds the rules
//!   and restricts itself, with raw syscalls only and no allocation. (init
//!   calls its two halves apart: [`LandlockPlan::add_rules_in_child`] as soon
//!   as its root is built, [`LandlockPlan::restrict_in_child`] in its place
//!   among the privileges.)
//!
//! Rules name paths as the sandbox sees them: they are resolved in the child,
//! inside its own mount namespace, never in the parent's.
//!
//! The kernel's ABI version decides what the ruleset can handle
//! (Documentation/userspace-api/landlock.rst and `<linux/landlock.h>`):
//!
//! | ABI | Linux | adds                                           |
//! |-----|-------|------------------------------------------------|
//! | 1   | 5.13  | the base file-system rights                    |
//! | 2   | 5.19  | `REFER` (rename and link across directories)   |
//! | 3   | 6.2   | `TRUNCATE`                                     |
//! | 4   | 6.7   | TCP `BIND_TCP` and `CONNECT_TCP`               |
//! | 5   | 6.10  | `IOCTL_DEV`                                    |
//! | 6   | 6.12  | scopes: abstract unix sockets, signals         |
//! | 7   | 6.15  | audit logging flags (no new rights)            |
//!
//! The plan handles everything its ABI knows, so anything not explicitly
//! allowed by a rule is denied.

use crate::child_error::{last_errno, ChildFailure};
use std::ffi::{CString, NulError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Constants of `<linux/landlock.h>`, written out because libc has none.
pub mod uapi {
    /// `landlock_create_ruleset` flag: return the ABI version.
    pub const CREATE_RULESET_VERSION: u32 = 1 << 0;

    /// Rule type of `struct landlock_path_beneath_attr`.
    pub const RULE_PATH_BENEATH: libc::c_int = 1;
    /// Rule type of `struct landlock_net_port_attr` (ABI 4).
    pub const RULE_NET_PORT: libc::c_int = 2;

    /// Execute a file.
    pub const FS_EXECUTE: u64 = 1 << 0;
    /// Open a file with write access.
    pub const FS_WRITE_FILE: u64 = 1 << 1;
    /// Open a file with read access.
    pub const FS_READ_FILE: u64 = 1 << 2;
    /// Open a directory or list its content.
    pub const FS_READ_DIR: u64 = 1 << 3;
    /// Remove an empty directory or rename one.
    pub const FS_REMOVE_DIR: u64 = 1 << 4;
    /// Unlink or rename a file.
    pub const FS_REMOVE_FILE: u64 = 1 << 5;
    /// Create (or rename or link) a character device.
    pub const FS_MAKE_CHAR: u64 = 1 << 6;
    /// Create (or rename) a directory.
    pub const FS_MAKE_DIR: u64 = 1 << 7;
    /// Create (or rename or link) a regular file.
    pub const FS_MAKE_REG: u64 = 1 << 8;
    /// Create (or rename or link) a unix domain socket.
    pub const FS_MAKE_SOCK: u64 = 1 << 9;
    /// Create (or rename or link) a named pipe.
    pub const FS_MAKE_FIFO: u64 = 1 << 10;
    /// Create (or rename or link) a block device.
    pub const FS_MAKE_BLOCK: u64 = 1 << 11;
    /// Create (or rename or link) a symbolic link.
    pub const FS_MAKE_SYM: u64 = 1 << 12;
    /// Link or rename a file from or to a different directory (ABI 2).
    pub const FS_REFER: u64 = 1 << 13;
    /// Truncate a file (ABI 3).
    pub const FS_TRUNCATE: u64 = 1 << 14;
    /// ioctl on a character or block device (ABI 5).
    pub const FS_IOCTL_DEV: u64 = 1 << 15;

    /// Bind a TCP socket to a local port (ABI 4).
    pub const NET_BIND_TCP: u64 = 1 << 0;
    /// Connect a TCP socket to a remote port (ABI 4).
    pub const NET_CONNECT_TCP: u64 = 1 << 1;

    /// No connecting to abstract unix sockets outside the domain (ABI 6).
    pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
    /// No signals to processes outside the domain (ABI 6).
    pub const SCOPE_SIGNAL: u64 = 1 << 1;

    /// The file-system rights of ABI 1.
    pub const FS_ABI1: u64 = FS_EXECUTE
        | FS_WRITE_FILE
        | FS_READ_FILE
        | FS_READ_DIR
        | FS_REMOVE_DIR
        | FS_REMOVE_FILE
        | FS_MAKE_CHAR
        | FS_MAKE_DIR
        | FS_MAKE_REG
        | FS_MAKE_SOCK
        | FS_MAKE_FIFO
        | FS_MAKE_BLOCK
        | FS_MAKE_SYM;

    /// The only rights a rule on a non-directory may carry: the kernel refuses
    /// directory rights there with EINVAL.
    pub const FS_FILE_RIGHTS: u64 =
        FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV;
}

/// `struct landlock_ruleset_attr`. The kernel reads only as many bytes as the
/// `size` argument says; see [`ruleset_attr_size`].
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the uapi header).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `struct landlock_net_port_attr`.
#[repr(C)]
struct NetPortAttr {
    allowed_access: u64,
    port: u64,
}

/// The file-system rights an ABI version can handle.
pub fn handled_fs(abi: u32) -> u64 {
    let mut access = 0;
    if abi >= 1 {
        access |= uapi::FS_ABI1;
    }
    if abi >= 2 {
        access |= uapi::FS_REFER;
    }
    if abi >= 3 {
        access |= uapi::FS_TRUNCATE;
    }
    if abi >= 5 {
        access |= uapi::FS_IOCTL_DEV;
    }
    access
}

/// The network rights an ABI version can handle.
pub fn handled_net(abi: u32) -> u64 {
    if abi >= 4 {
        uapi::NET_BIND_TCP | uapi::NET_CONNECT_TCP
    } else {
        0
    }
}

/// The scopes an ABI version can restrict.
pub fn scoped(abi: u32) -> u64 {
    if abi >= 6 {
        uapi::SCOPE_ABSTRACT_UNIX_SOCKET | uapi::SCOPE_SIGNAL
    } else {
        0
    }
}

/// How many bytes of [`RulesetAttr`] to hand an ABI version: exactly the size
/// the structure had when that ABI was current, so the kernel never sees
/// fields it does not know.
fn ruleset_attr_size(abi: u32) -> usize {
    match abi {
        0..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    }
}

/// What a path rule allows beneath its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read files, list directories, execute: `READ_FILE | READ_DIR | EXECUTE`.
    ReadExec,
    /// Every file-system right the ABI handles.
    ReadWrite,
    /// For device files such as /dev/null: `READ_FILE | WRITE_FILE`, plus
    /// `TRUNCATE` (ABI 3) and `IOCTL_DEV` (ABI 5). File rights only, since a
    /// rule on a non-directory may carry nothing else.
    DevWrite,
}

impl Access {
    /// The access mask this grants under `abi`, never more than the ABI
    /// handles.
    pub fn mask(self, abi: u32) -> u64 {
        let wanted = match self {
            Access::ReadExec => uapi::FS_READ_FILE | uapi::FS_READ_DIR | uapi::FS_EXECUTE,
            Access::ReadWrite => u64::MAX,
            Access::DevWrite => {
                uapi::FS_READ_FILE | uapi::FS_WRITE_FILE | uapi::FS_TRUNCATE | uapi::FS_IOCTL_DEV
            }
        };
        wanted & handled_fs(abi)
    }
}

/// One path the sandboxed program may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    /// Absolute path as seen inside the sandbox (after pivot_root).
    pub path: String,
    /// What is allowed on it and beneath it.
    pub access: Access,
}

impl PathRule {
    /// A rule allowing `access` on `path`.
    pub fn new(path: impl Into<String>, access: Access) -> Self {
        PathRule {
            path: path.into(),
            access,
        }
    }
}

/// What TCP the sandboxed program may do (ABI 4 and later; older kernels
/// cannot restrict TCP at all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPolicy {
    /// Remote TCP ports the program may connect to. Empty: no TCP connect at
    /// all. Binding a TCP port is never allowed.
    pub connect_tcp_ports: Vec<u16>,
}

/// The rules of a standard run: the root read-only and executable, the
/// writable scratch directories read-write, and the harmless devices usable.
pub fn default_rules() -> Vec<PathRule> {
    let mut rules = vec![
        PathRule::new("/", Access::ReadExec),
        PathRule::new("/sandbox", Access::ReadWrite),
        PathRule::new("/tmp", Access::ReadWrite),
        PathRule::new("/dev/shm", Access::ReadWrite),
    ];
    for device in [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
    ] {
        rules.push(PathRule::new(device, Access::DevWrite));
    }
    rules
}

/// Why a Landlock plan could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Landlock ABI version {abi} is not usable; the kernel must support Landlock (Linux 5.13 or later, with `landlock` in the lsm= boot parameter)")]
    UnsupportedAbi { abi: u32 },
    #[error("Landlock rule path {path:?} is not absolute; rules name paths as the sandbox sees them, from its root")]
    RelativePath { path: String },
    #[error("Landlock rule path {path:?} contains a NUL byte")]
    PathContainsNul {
        path: String,
        #[source]
        source: NulError,
    },
    #[error("landlock_create_ruleset failed for ABI {abi} (is Landlock enabled in this kernel?)")]
    CreateRuleset {
        abi: u32,
        #[source]
        source: std::io::Error,
    },
}

/// A path rule ready for the child.
#[derive(Debug)]
struct PreparedPathRule {
    path: CString,
    access: u64,
}

/// Everything the child needs to restrict itself, prepared by the parent.
///
/// One plan serves one child: the child adds its rules to the ruleset the
/// plan holds, and that ruleset is one kernel object shared by every process
/// holding its fd. Reusing a plan for a second child would hand it the first
/// child's rules too. Drop the plan in the parent once the child is cloned.
#[derive(Debug)]
pub struct LandlockPlan {
    abi: u32,
    ruleset: OwnedFd,
    handled_fs: u64,
    handled_net: u64,
    scoped: u64,
    paths: Vec<PreparedPathRule>,
    /// Ports for `CONNECT_TCP` rules; empty when the ABI has no TCP rules.
    connect_ports: Vec<u64>,
}

/// The Landlock ABI version of the running kernel, or `None` if Landlock is
/// not available (not built in, not enabled, or refused by seccomp).
pub fn abi_version() -> Option<u32> {
    // SAFETY: with a NULL attr and size 0 the kernel reads no memory; it only
    // returns the version or an error.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            uapi::CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(rc).ok().filter(|&version| version >= 1)
}

impl LandlockPlan {
    /// Prepares the restriction for a child, in the parent.
    ///
    /// `abi` is normally [`abi_version`]; a lower value restricts only what
    /// that older ABI knows. Every access the ABI knows is handled, so what no
    /// rule allows is denied. Each rule's mask is cut to what the ABI knows.
    pub fn prepare(
        abi: u32,
        rules: &[PathRule],
        net: &NetPolicy,
    ) -> Result<LandlockPlan, LandlockError> {
        if abi == 0 {
            return Err(LandlockError::UnsupportedAbi { abi });
        }
        let mut paths = Vec::with_capacity(rules.len());
        for rule in rules {
            if !rule.path.starts_with('/') {
                return Err(LandlockError::RelativePath {
                    path: rule.path.clone(),
                });
            }
            let path = CString::new(rule.path.as_str()).map_err(|source| {
                LandlockError::PathContainsNul {
                    path: rule.path.clone(),
                    source,
                }
            })?;
            paths.push(PreparedPathRule {
                path,
                access: rule.access.mask(abi),
            });
        }

        let handled_fs = handled_fs(abi);
        let handled_net = handled_net(abi);
        let scoped = scoped(abi);
        let connect_ports = if handled_net != 0 {
            net.connect_tcp_ports
                .iter()
                .map(|&p| u64::from(p))
                .collect()
        } else {
            Vec::new()
        };

        let ruleset = create_ruleset(abi, handled_fs, handled_net, scoped)
            .map_err(|source| LandlockError::CreateRuleset { abi, source })?;
        Ok(LandlockPlan {
            abi,
            ruleset,
            handled_fs,
            handled_net,
            scoped,
            paths,
            connect_ports,
        })
    }

    /// The ruleset's descriptor, which the child must keep open.
    pub fn ruleset_fd(&self) -> RawFd {
        self.ruleset.as_raw_fd()
    }

    /// The ABI version the plan was prepared for.
    pub fn abi(&self) -> u32 {
        self.abi
    }

    /// The file-system rights denied unless a rule allows them.
    pub fn handled_fs(&self) -> u64 {
        self.handled_fs
    }

    /// The network rights denied unless a rule allows them (0 before ABI 4:
    /// TCP is then not restricted by Landlock).
    pub fn handled_net(&self) -> u64 {
        self.handled_net
    }

    /// The IPC scopes restricted (0 before ABI 6).
    pub fn scoped(&self) -> u64 {
        self.scoped
    }

    /// Adds the rules and restricts the calling process, in the child.
    ///
    /// The caller must have set no_new_privs (or hold CAP_SYS_ADMIN), else
    /// `landlock_restrict_self` fails with EPERM. Paths that do not exist are
    /// skipped. A rule on a non-directory keeps only its file rights, which is
    /// all the kernel accepts there.
    ///
    /// Async-signal-safe: raw syscalls on the plan's data, no allocation.
    pub fn apply_in_child(&self) -> Result<(), ChildFailure> {
        self.add_rules_in_child()?;
        self.restrict_in_child()
    }

    /// The first half of [`apply_in_child`](Self::apply_in_child): opens
    /// each path and adds the rules to the ruleset, restricting nothing yet.
    /// Needs no privilege and no no_new_privs, so init does it while the
    /// supervisor copies the inputs in. Async-signal-safe.
    pub fn add_rules_in_child(&self) -> Result<(), ChildFailure> {
        let ruleset = self.ruleset.as_raw_fd();
        for rule in &self.paths {
            add_path_rule(ruleset, rule)?;
        }
        for &port in &self.connect_ports {
            let attr = NetPortAttr {
                allowed_access: uapi::NET_CONNECT_TCP,
                port,
            };
            // SAFETY: `attr` is a live, correctly laid out
            // landlock_net_port_attr; the kernel only reads it.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset,
                    uapi::RULE_NET_PORT,
                    &attr as *const NetPortAttr,
                    0u32,
                )
            };
            if rc != 0 {
                return Err(last_errno("landlock_add_rule(net_port)"));
            }
        }
        Ok(())
    }

    /// The second half of [`apply_in_child`](Self::apply_in_child), after
    /// [`add_rules_in_child`](Self::add_rules_in_child): restricts the
    /// calling process to the ruleset. Needs no_new_privs (or
    /// CAP_SYS_ADMIN). Async-signal-safe.
    pub fn restrict_in_child(&self) -> Result<(), ChildFailure> {
        let ruleset = self.ruleset.as_raw_fd();
        // SAFETY: plain integer arguments; no memory is passed.
        let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
        if rc != 0 {
            return Err(last_errno("landlock_restrict_self"));
        }
        Ok(())
    }
}

/// Creates a ruleset handling the given rights. Parent side.
fn create_ruleset(
    abi: u32,
    handled_fs: u64,
    handled_net: u64,
    scoped: u64,
) -> std::io::Result<OwnedFd> {
    let attr = RulesetAttr {
        handled_access_fs: handled_fs,
        handled_access_net: handled_net,
        scoped,
    };
    // SAFETY: `attr` is live and at least `ruleset_attr_size(abi)` bytes long;
    // the kernel only reads that many bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            ruleset_attr_size(abi),
            0u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(rc).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd (O_CLOEXEC by Landlock's
    // design) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens one rule's path and adds it to `ruleset`. Child side,
/// async-signal-safe.
fn add_path_rule(ruleset: RawFd, rule: &PreparedPathRule) -> Result<(), ChildFailure> {
    // SAFETY: `rule.path` is a NUL-terminated string that lives as long as the
    // plan.
    let fd = unsafe { libc::open(rule.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        let failure = last_errno("open(landlock rule path)");
        return if failure.errno == libc::ENOENT {
            Ok(())
        } else {
            Err(failure)
        };
    }
    let result = add_open_path_rule(ruleset, fd, rule.access);
    // SAFETY: `fd` was opened above and is closed exactly once, here.
    unsafe { libc::close(fd) };
    result
}

fn add_open_path_rule(ruleset: RawFd, fd: RawFd, access: u64) -> Result<(), ChildFailure> {
    // SAFETY: an all-zero `struct stat` is a valid value of plain integers.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open (fstat works on O_PATH fds) and `stat` is a valid
    // buffer for the kernel to fill.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(last_errno("fstat(landlock rule path)"));
    }
    let access = if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
        access
    } else {
        access & uapi::FS_FILE_RIGHTS
    };
    if access == 0 {
        // Nothing left to allow; the kernel would refuse the rule with ENOMSG.
        return Ok(());
    }
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: fd,
    };
    // SAFETY: `attr` is a live, correctly laid out (packed)
    // landlock_path_beneath_attr; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            uapi::RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if rc != 0 {
        return Err(last_errno("landlock_add_rule(path_beneath)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::uapi::*;
    use super::*;
    use crate::test_support::{counting_allocations, errno_of, in_forked_child};
    use std::net::TcpListener;

    #[test]
    fn handled_rights_per_abi() {
        let expected_fs = [
            (1, FS_ABI1),
            (2, FS_ABI1 | FS_REFER),
            (3, FS_ABI1 | FS_REFER | FS_TRUNCATE),
            (4, FS_ABI1 | FS_REFER | FS_TRUNCATE),
            (5, FS_ABI1 | FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV),
            (6, FS_ABI1 | FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV),
            (7, FS_ABI1 | FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV),
        ];
        for (abi, fs) in expected_fs {
            assert_eq!(handled_fs(abi), fs, "fs, ABI {abi}");
            let net = if abi >= 4 {
                NET_BIND_TCP | NET_CONNECT_TCP
            } else {
                0
            };
            assert_eq!(handled_net(abi), net, "net, ABI {abi}");
            let scopes = if abi >= 6 {
                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            } else {
                0
            };
            assert_eq!(scoped(abi), scopes, "scoped, ABI {abi}");
        }
        assert_eq!(FS_ABI1, (1 << 13) - 1);
        assert_eq!(handled_fs(7), (1 << 16) - 1);
    }

    #[test]
    fn access_masks_per_abi() {
        for abi in 1..=7 {
            assert_eq!(
                Access::ReadExec.mask(abi),
                FS_READ_FILE | FS_READ_DIR | FS_EXECUTE,
                "ReadExec, ABI {abi}"
            );
            assert_eq!(
                Access::ReadWrite.mask(abi),
                handled_fs(abi),
                "ReadWrite, ABI {abi}"
            );
            let mut dev = FS_READ_FILE | FS_WRITE_FILE;
            if abi >= 3 {
                dev |= FS_TRUNCATE;
            }
            if abi >= 5 {
                dev |= FS_IOCTL_DEV;
            }
            assert_eq!(Access::DevWrite.mask(abi), dev, "DevWrite, ABI {abi}");
            assert_eq!(Access::DevWrite.mask(abi) & !FS_FILE_RIGHTS, 0);
        }
    }

    #[test]
    fn ruleset_attr_size_matches_each_abis_struct() {
        assert_eq!(ruleset_attr_size(1), 8);
        assert_eq!(ruleset_attr_size(3), 8);
        assert_eq!(ruleset_attr_size(4), 16);
        assert_eq!(ruleset_attr_size(5), 16);
        assert_eq!(ruleset_attr_size(6), 24);
        assert_eq!(ruleset_attr_size(7), 24);
        assert_eq!(std::mem::size_of::<PathBeneathAttr>(), 12);
        assert_eq!(std::mem::size_of::<NetPortAttr>(), 16);
    }

    #[test]
    fn default_rules_cover_root_scratch_and_devices() {
        let rules = default_rules();
        let access_of = |path: &str| {
            rules
                .iter()
                .find(|rule| rule.path == path)
                .map(|rule| rule.access)
        };
        assert_eq!(access_of("/"), Some(Access::ReadExec));
        for dir in ["/sandbox", "/tmp", "/dev/shm"] {
            assert_eq!(access_of(dir), Some(Access::ReadWrite), "{dir}");
        }
        for dev in [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
        ] {
            assert_eq!(access_of(dev), Some(Access::DevWrite), "{dev}");
        }
        assert_eq!(rules.len(), 9);
    }

    #[test]
    fn prepare_refuses_bad_input() {
        let net = NetPolicy::default();
        assert!(matches!(
            LandlockPlan::prepare(0, &[], &net),
            Err(LandlockError::UnsupportedAbi { abi: 0 })
        ));
        let relative = [PathRule::new("tmp", Access::ReadWrite)];
        assert!(matches!(
            LandlockPlan::prepare(1, &relative, &net),
            Err(LandlockError::RelativePath { .. })
        ));
        let nul = [PathRule::new("/t\0mp", Access::ReadWrite)];
        assert!(matches!(
            LandlockPlan::prepare(1, &nul, &net),
            Err(LandlockError::PathContainsNul { .. })
        ));
    }

    fn kernel_abi() -> Option<u32> {
        let abi = abi_version();
        if abi.is_none() {
            eprintln!("Landlock is not available here; skipping");
        }
        abi
    }

    #[test]
    fn prepare_records_what_the_abi_handles() -> Result<(), LandlockError> {
        let Some(abi) = kernel_abi() else {
            return Ok(());
        };
        let net = NetPolicy {
            connect_tcp_ports: vec![443],
        };
        let plan = LandlockPlan::prepare(abi, &default_rules(), &net)?;
        assert_eq!(plan.abi(), abi);
        assert_eq!(plan.handled_fs(), handled_fs(abi));
        assert_eq!(plan.handled_net(), handled_net(abi));
        assert_eq!(plan.scoped(), scoped(abi));
        assert_eq!(
            plan.connect_ports,
            if abi >= 4 { vec![443] } else { vec![] }
        );
        let old = LandlockPlan::prepare(1, &default_rules(), &net)?;
        assert_eq!(old.handled_net(), 0);
        assert!(old.connect_ports.is_empty());
        Ok(())
    }

    /// Paths and sockets a probe child uses, all prepared before the fork.
    struct Probe {
        plan: LandlockPlan,
        new_in_rw: CString,
        new_in_ro: CString,
        existing_in_ro: CString,
        outside: CString,
        denied_port: u16,
        allowed_port: u16,
    }

    fn cstring(path: &std::path::Path) -> CString {
        CString::new(path.as_os_str().as_encoded_bytes()).expect("temp paths have no NUL")
    }

    fn make_probe(abi: u32, root: &std::path::Path, listeners: &[TcpListener; 2]) -> Probe {
        let rw = root.join("rw");
        let ro = root.join("ro");
        std::fs::create_dir(&rw).expect("mkdir rw");
        std::fs::create_dir(&ro).expect("mkdir ro");
        std::fs::write(ro.join("existing"), b"hello").expect("write ro/existing");
        std::fs::write(root.join("outside"), b"secret").expect("write outside");
        let port = |l: &TcpListener| l.local_addr().expect("local_addr").port();
        let allowed_port = port(&listeners[1]);
        let rules = [
            PathRule::new(rw.to_string_lossy(), Access::ReadWrite),
            PathRule::new(ro.to_string_lossy(), Access::ReadExec),
            PathRule::new(root.join("missing").to_string_lossy(), Access::ReadWrite),
            // A file rule with directory rights: kept to file rights.
            PathRule::new(ro.join("existing").to_string_lossy(), Access::ReadWrite),
        ];
        let net = NetPolicy {
            connect_tcp_ports: vec![allowed_port],
        };
        let plan = LandlockPlan::prepare(abi, &rules, &net).expect("prepare");
        Probe {
            plan,
            new_in_rw: cstring(&rw.join("new")),
            new_in_ro: cstring(&ro.join("new")),
            existing_in_ro: cstring(&ro.join("existing")),
            outside: cstring(&root.join("outside")),
            denied_port: port(&listeners[0]),
            allowed_port,
        }
    }

    /// Runs in the child: async-signal-safe only. Returns errnos (0 = success)
    /// and, last, the number of allocations `apply_in_child` made.
    fn run_probe(probe: &Probe) -> [i32; 9] {
        let mut out = [0i32; 9];
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc != 0 {
            out[0] = -1;
            return out;
        }
        let (applied, allocations) = counting_allocations(|| probe.plan.apply_in_child());
        out[8] = allocations;
        if let Err(failure) = applied {
            out[0] = failure.errno;
            return out;
        }
        let open = |path: &CString, flags: libc::c_int| -> i32 {
            // SAFETY: `path` is NUL-terminated and outlives the call.
            let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
            let errno = errno_of(fd.into());
            if fd >= 0 {
                // SAFETY: closing the fd just opened.
                unsafe { libc::close(fd) };
            }
            errno
        };
        out[1] = open(&probe.new_in_rw, libc::O_WRONLY | libc::O_CREAT);
        out[2] = open(&probe.new_in_ro, libc::O_WRONLY | libc::O_CREAT);
        out[3] = open(&probe.existing_in_ro, libc::O_RDONLY);
        out[4] = open(&probe.outside, libc::O_RDONLY);
        out[5] = connect_localhost(probe.denied_port);
        out[6] = connect_localhost(probe.allowed_port);
        // SAFETY: signal 0 only checks permission; nothing is delivered.
        let rc = unsafe { libc::kill(libc::getppid(), 0) };
        out[7] = errno_of(rc.into());
        out
    }

    /// TCP connect to 127.0.0.1:`port`; 0 or the errno. Async-signal-safe.
    fn connect_localhost(port: u16) -> i32 {
        // SAFETY: socket with integer arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return errno_of(fd.into());
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `addr` is a valid sockaddr_in of the size passed.
        let rc = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let errno = errno_of(rc.into());
        // SAFETY: closing the socket opened above.
        unsafe { libc::close(fd) };
        errno
    }

    fn listeners() -> [TcpListener; 2] {
        let listen = || TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        [listen(), listen()]
    }

    #[test]
    fn restricted_child_gets_exactly_the_rules_access() {
        let Some(abi) = kernel_abi() else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let listeners = listeners();
        let probe = make_probe(abi, dir.path(), &listeners);
        let [applied, write_rw, write_ro, read_ro, read_outside, denied, allowed, kill, allocations] =
            in_forked_child(|| run_probe(&probe));

        assert_eq!(applied, 0, "apply_in_child failed with errno {applied}");
        assert_eq!(allocations, 0, "apply_in_child must not allocate");
        assert_eq!(write_rw, 0, "creating a file in the read-write dir");
        assert_eq!(
            write_ro,
            libc::EACCES,
            "creating a file in the read-only dir"
        );
        assert_eq!(read_ro, 0, "reading a file in the read-only dir");
        assert_eq!(read_outside, libc::EACCES, "reading a file no rule covers");
        assert!(dir.path().join("rw/new").exists());
        assert!(!dir.path().join("ro/new").exists());
        assert_eq!(allowed, 0, "connecting to the allowed port");
        if abi >= 4 {
            assert_eq!(denied, libc::EACCES, "connecting to a port no rule allows");
        }
        if abi >= 6 {
            assert_eq!(kill, libc::EPERM, "signalling a process outside the domain");
        }
    }

    #[test]
    fn plan_for_an_older_abi_restricts_only_what_it_knows() {
        let Some(abi) = kernel_abi() else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let listeners = listeners();
        let probe = make_probe(1, dir.path(), &listeners);
        let [applied, write_rw, write_ro, read_ro, read_outside, denied, allowed, kill, allocations] =
            in_forked_child(|| run_probe(&probe));
        assert_eq!((applied, allocations), (0, 0));
        assert_eq!((write_rw, read_ro, allowed), (0, 0, 0));
        assert_eq!((write_ro, read_outside), (libc::EACCES, libc::EACCES));
        // ABI 1 knows neither TCP nor scopes: both stay open.
        assert_eq!(
            denied, 0,
            "TCP is not restricted under ABI 1 (kernel ABI {abi})"
        );
        assert_eq!(kill, 0, "signals are not scoped under ABI 1");
    }

    #[test]
    fn restrict_self_without_no_new_privs_or_caps_fails_with_eperm() {
        let Some(abi) = kernel_abi() else {
            return;
        };
        let plan = LandlockPlan::prepare(abi, &[], &NetPolicy::default()).expect("prepare");
        let last_cap = crate::caps::last_cap().expect("cap_last_cap");
        // Without CAP_SYS_ADMIN and without no_new_privs, the kernel refuses.
        let [dropped, errno, step_is_restrict] = in_forked_child(|| {
            if let Err(failure) = crate::caps::drop_all_in_child(last_cap) {
                return [failure.errno, 0, 0];
            }
            match plan.apply_in_child() {
                Ok(()) => [0, 0, 0],
                Err(failure) => [
                    0,
                    failure.errno,
                    i32::from(failure.step == "landlock_restrict_self"),
                ],
            }
        });
        assert_eq!(dropped, 0, "drop_all_in_child errno");
        assert_eq!(errno, libc::EPERM);
        assert_eq!(
            step_is_restrict, 1,
            "the failing step is landlock_restrict_self"
        );
    }
}
