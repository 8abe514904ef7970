//! Cgroups: the memory, process-count and CPU-time accounting of one sandbox.
//!
//! The parent (the supervisor) does everything here; the child does nothing
//! but be placed in the cgroup by [`Cgroup::add_process`]. (On v2,
//! [`Cgroup::procs_file_fd`] is ready for `clone3(CLONE_INTO_CGROUP)`; the
//! engine does not use it yet.)
//!
//! Two managers sit behind one trait, [`Cgroup`], chosen at run time by
//! [`HostCgroups::detect`] (as youki's `AnyCgroupManager` does):
//!
//! - **v2** ([`v2`]), used when a `cgroup2` mount offers the `memory` and
//!   `pids` controllers: one directory per sandbox under the unified tree.
//! - **v1** ([`v1`]), used otherwise when v1 `memory`, `pids` and `cpuacct`
//!   hierarchies are mounted: one directory per sandbox in each of them.
//!
//! Mounts are found in `/proc/self/mountinfo`, never assumed: `cpu` and
//! `cpuacct` may be separate hierarchies or co-mounted as `cpu,cpuacct`.
//!
//! Cost. Creating a sandbox's cgroup is a `mkdir` per hierarchy (plus one
//! `mkdir` per parent component, normally answered `EEXIST`) and a few small
//! writes. Usage files are opened once and then re-read with `pread(2)` at
//! offset 0, which makes cgroupfs regenerate them: reading the CPU time is
//! one system call.
//!
//! A [`Cgroup`] that is dropped without [`Cgroup::destroy`] leaves its
//! directories behind; [`HostCgroups::cleanup_stale`] removes such leftovers.

mod detect;
mod fs;
pub mod v1;
pub mod v2;

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use fs::{CgroupFs, KernelFs};

/// The limits a cgroup has now (unknown until first set), so that an
/// update writes only what changes.
#[derive(Debug)]
pub(crate) struct LimitsInForce {
    memory_bytes: std::sync::atomic::AtomicU64,
    pids: std::sync::atomic::AtomicU64,
}

/// What an update changes: the memory limit it replaces (when the memory
/// limit changes; `u64::MAX` if it was unknown), and whether pids change.
pub(crate) struct LimitChange {
    pub previous_memory: Option<u64>,
    pub pids: bool,
}

impl LimitsInForce {
    pub(crate) fn unknown() -> LimitsInForce {
        LimitsInForce {
            memory_bytes: std::sync::atomic::AtomicU64::new(u64::MAX),
            pids: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// Records `new` as in force; says what differs from before.
    pub(crate) fn replace(&self, new: &CgroupLimits) -> LimitChange {
        use std::sync::atomic::Ordering::Relaxed;
        let memory = self.memory_bytes.swap(new.memory_bytes, Relaxed);
        let pids = self.pids.swap(new.pids, Relaxed);
        LimitChange {
            previous_memory: (memory != new.memory_bytes).then_some(memory),
            pids: pids != new.pids,
        }
    }
}

/// The limits put on one sandbox's cgroup. Swap is always 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory of all the sandbox's processes together, in bytes. Must be > 0.
    pub memory_bytes: u64,
    /// Processes and threads together. Must be > 0.
    pub pids: u64,
}

/// What the sandbox's processes used, read from the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupUsage {
    /// CPU time of all processes, user and system, in nanoseconds.
    pub cpu_time_ns: u64,
    /// The highest memory charge seen, in bytes (v1 `memory.max_usage_in_bytes`,
    /// v2 `memory.peak`, or `memory.current` on kernels before 5.19).
    pub memory_peak_bytes: u64,
    /// How many processes the OOM killer killed in the cgroup.
    pub oom_kills: u64,
    /// How many forks or clones failed because the pids limit was reached.
    pub pids_limit_hits: u64,
}

/// Which cgroup interface is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

/// Why a cgroup operation failed. Every variant names the path or pid.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}; is /proc mounted and readable?")]
    ReadProc { path: PathBuf, source: io::Error },
    #[error("cannot understand a line of {path}: `{line}`")]
    ParseMountinfo { path: PathBuf, line: String },
    #[error("no usable cgroups on this host: need a cgroup2 mount with the memory and pids controllers, or cgroup v1 memory, pids and cpuacct hierarchies ({detail})")]
    Unavailable { detail: String },
    #[error("`{value}` is not a valid cgroup {what}: use a relative path of names made of letters, digits, `-`, `_` and `.` (not first), with no `..`")]
    InvalidName { what: &'static str, value: String },
    #[error("the cgroup {what} limit must be greater than 0 (got 0)")]
    InvalidLimit { what: &'static str },
    #[error(
        "cannot create cgroup {path}: {source}; run as root or give this user a delegated cgroup"
    )]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("cgroup {path} already exists: a sandbox of that name is running or was left behind; pick another name or remove it with cleanup_stale")]
    AlreadyExists { path: PathBuf },
    #[error("cannot write `{value}` to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot enable controllers `{value}` in {path}: {source}; a cgroup v2 group that holds processes cannot delegate controllers (no-internal-processes rule): choose a parent with no processes in it")]
    EnableControllers {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot understand {path}: expected {expected}, found `{found}`")]
    Parse {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    #[error("cannot move pid {pid} into {path}: {source}; does the process still exist?")]
    AddProcess {
        pid: i32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot kill the processes listed in {path}: {source}")]
    Kill { path: PathBuf, source: io::Error },
    #[error("processes remain in {path} after {rounds} rounds of SIGKILL; a process stuck in the kernel (D state) cannot die until its I/O ends")]
    KillIncomplete { path: PathBuf, rounds: u32 },
    #[error("cannot remove cgroup {path}: {source}; if processes remain, kill them first (or retry later: a dying process can keep it busy briefly)")]
    Rmdir { path: PathBuf, source: io::Error },
    #[error("cannot list {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
}

/// One sandbox's cgroup (v2) or cgroups (v1, one per hierarchy).
pub trait Cgroup: Send + fmt::Debug {
    /// Which interface this cgroup uses.
    fn version(&self) -> CgroupVersion;
    /// Moves a process (all its threads) into the cgroup in every hierarchy.
    fn add_process(&self, pid: i32) -> Result<(), CgroupError>;
    /// Reads all the usage counters. A few `pread`s on already-open files.
    fn usage(&self) -> Result<CgroupUsage, CgroupError>;
    /// Reads the CPU time only, in nanoseconds: one `pread`.
    fn cpu_time_ns(&self) -> Result<u64, CgroupError>;
    /// Sends SIGKILL to every process in the cgroup. v2: `cgroup.kill`
    /// (Linux ≥ 5.14); v1 (or older v2): kill what `cgroup.procs` lists,
    /// repeatedly until it is empty, a bounded number of times.
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Removes the cgroup's directories. Kills remaining processes first if
    /// the kernel says the cgroup is busy, and retries briefly.
    fn destroy(self: Box<Self>) -> Result<(), CgroupError>;
    /// v2: the cgroup directory's fd, for `clone3(CLONE_INTO_CGROUP)`, so a
    /// child could start inside the cgroup with no move (not used by the
    /// engine yet). None on v1.
    fn procs_file_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Changes the limits of a cgroup already in use (for the request a
    /// sandbox built ahead serves, and between the stages of a run). Only
    /// the limits that differ from those in force are written: an update to
    /// the same limits touches nothing.
    fn update_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Starts the peak-memory measurement afresh where the kernel allows
    /// it (v1); on v2 the peak spans the cgroup's life.
    fn reset_peak(&self) -> Result<(), CgroupError>;
}

/// One hierarchy as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HierarchyReport {
    pub version: CgroupVersion,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Its controllers (v2: from `cgroup.controllers` at the mount).
    pub controllers: Vec<String>,
    /// This process's own cgroup in it, from `/proc/self/cgroup`.
    pub own_cgroup: Option<String>,
    /// Whether it is used for sandboxes.
    pub used: bool,
    /// Whether this process may create cgroups at its root (`access(W_OK)`).
    pub writable: bool,
}

/// What the host offers, for `formicary doctor`-style output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupReport {
    /// The version sandboxes will use, or None when cgroups cannot be used.
    pub version: Option<CgroupVersion>,
    /// Every cgroup mount found.
    pub hierarchies: Vec<HierarchyReport>,
    /// Whether every used hierarchy's root is writable by this process.
    pub can_create: bool,
    /// Whether swap is accounted, so that it can be limited to 0 (v1
    /// `memory.memsw.*`, v2 `memory.swap.max`). When it is not, v1 sets
    /// `memory.swappiness` to 0 instead. None when it could not be told.
    pub swap_accounting: Option<bool>,
    /// Why no version can be used, when none can.
    pub unavailable_reason: Option<String>,
}

/// A v1 hierarchy: a mount point and its controllers.
#[derive(Debug, Clone)]
struct V1Hierarchy {
    mount: PathBuf,
    controllers: Vec<String>,
}

/// What the host offers, found by [`HostCgroups::detect`].
#[derive(Debug, Clone)]
pub struct HostCgroups {
    /// The first cgroup2 mount, with the controllers its root offers.
    v2: Option<(PathBuf, Vec<String>)>,
    v1: Vec<V1Hierarchy>,
    /// This process's cgroups ([`HostCgroups::own`]).
    own: OnceLock<Vec<detect::OwnCgroup>>,
    version: Option<CgroupVersion>,
    swap_accounting: Option<bool>,
    fs: Arc<dyn CgroupFs>,
    /// Parents this process has made (or found) ready, controllers enabled:
    /// later sandboxes under them make only their own directories. Should
    /// a creation under one fail (the parent removed or remade by someone
    /// else), it is tried once more with the parent set up again.
    parents_ready: Arc<std::sync::Mutex<Vec<String>>>,
}

/// This process's own cgroups, from `/proc/self/cgroup`.
fn read_own_cgroups() -> Result<Vec<detect::OwnCgroup>, CgroupError> {
    let path = "/proc/self/cgroup";
    let text = crate::sys::read_small_file(path).map_err(|source| CgroupError::ReadProc {
        path: PathBuf::from(path),
        source,
    })?;
    Ok(detect::parse_proc_self_cgroup(&text))
}

/// The v1 controllers sandboxes need, each in some hierarchy.
const V1_NEEDED: [&str; 3] = ["memory", "pids", "cpuacct"];
/// The v2 controllers sandboxes need.
const V2_NEEDED: [&str; 2] = ["memory", "pids"];

impl HostCgroups {
    /// Looks at this host's `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Result<HostCgroups, CgroupError> {
        let read = |p: &str| {
            crate::sys::read_small_file(p).map_err(|source| CgroupError::ReadProc {
                path: PathBuf::from(p),
                source,
            })
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        HostCgroups::detect_with(&mountinfo, None, Path::new("/"))
    }

    /// Like [`detect`](Self::detect) but from given file contents, with
    /// `root` prepended to every mount point (a fake tree in tests, or a
    /// host's `/` seen from elsewhere). Reads `cgroup.controllers` of a
    /// cgroup2 mount and probes for swap accounting files under `root`.
    pub fn detect_at(
        mountinfo: &str,
        proc_self_cgroup: &str,
        root: &Path,
    ) -> Result<HostCgroups, CgroupError> {
        HostCgroups::detect_with(mountinfo, Some(proc_self_cgroup), root)
    }

    /// [`detect_at`](Self::detect_at), with `/proc/self/cgroup` read from
    /// the system when not given. Only cgroup v2 needs it to decide
    /// anything (whether swap is accounted): with v1 it is read when a
    /// report asks for it. (Its read, the first in a new process, takes
    /// ~20 µs, and over 100 µs when other sandboxes' cgroups are being
    /// removed; `formicary exec` has better to do.)
    fn detect_with(
        mountinfo: &str,
        proc_self_cgroup: Option<&str>,
        root: &Path,
    ) -> Result<HostCgroups, CgroupError> {
        let mounts =
            detect::parse_mountinfo(mountinfo).map_err(|bad| CgroupError::ParseMountinfo {
                path: PathBuf::from("/proc/self/mountinfo"),
                line: bad.0,
            })?;
        let own = OnceLock::new();
        if let Some(text) = proc_self_cgroup {
            let _ = own.set(detect::parse_proc_self_cgroup(text));
        }
        let under_root = |mp: &str| root.join(mp.trim_start_matches('/'));

        let mut v2: Option<(PathBuf, Vec<String>)> = None;
        let mut v1 = Vec::new();
        for m in mounts {
            let mount = under_root(&m.mount_point);
            if m.v2 {
                let controllers: Vec<String> =
                    crate::sys::read_small_file(mount.join("cgroup.controllers"))
                        .map(|t| t.split_whitespace().map(str::to_string).collect())
                        .unwrap_or_default();
                let usable = V2_NEEDED.iter().all(|c| controllers.iter().any(|x| x == c));
                // Prefer a usable cgroup2 mount over an earlier unusable one
                // (hybrid hosts mount an empty one at .../unified).
                let replace = match &v2 {
                    None => true,
                    Some((_, have)) => {
                        usable
                            && !V2_NEEDED
                                .iter()
                                .all(|c| have.iter().any(|x: &String| x == c))
                    }
                };
                if replace {
                    v2 = Some((mount, controllers));
                }
            } else if !m.controllers.is_empty() {
                v1.push(V1Hierarchy {
                    mount,
                    controllers: m.controllers,
                });
            }
        }

        let v2_usable = v2
            .as_ref()
            .is_some_and(|(_, c)| V2_NEEDED.iter().all(|n| c.iter().any(|x| x == n)));
        let v1_usable = V1_NEEDED
            .iter()
            .all(|n| v1.iter().any(|h| h.controllers.iter().any(|c| c == n)));
        let version = if v2_usable {
            Some(CgroupVersion::V2)
        } else if v1_usable {
            Some(CgroupVersion::V1)
        } else {
            None
        };

        let swap_accounting = match version {
            Some(CgroupVersion::V1) => v1
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == "memory"))
                .map(|h| h.mount.join("memory.memsw.limit_in_bytes").exists()),
            Some(CgroupVersion::V2) => {
                // The root cgroup has no memory.swap.* files; look in this
                // process's own cgroup when it is not the root.
                if own.get().is_none() {
                    let _ = own.set(read_own_cgroups()?);
                }
                let own_v2 = own
                    .get()
                    .and_then(|own| own.iter().find(|o| o.controllers.is_empty()));
                match (&v2, own_v2) {
                    (Some((mount, _)), Some(o)) if o.path != "/" => Some(
                        mount
                            .join(o.path.trim_start_matches('/'))
                            .join("memory.swap.max")
                            .exists(),
                    ),
                    _ => None,
                }
            }
            None => None,
        };

        Ok(HostCgroups {
            v2,
            v1,
            own,
            version,
            swap_accounting,
            fs: Arc::new(KernelFs),
            parents_ready: Arc::default(),
        })
    }

    /// Replaces the filesystem seam (tests use a fake tree of plain files).
    #[cfg(test)]
    fn with_fs(mut self, fs: Arc<dyn CgroupFs>) -> HostCgroups {
        self.fs = fs;
        self
    }

    /// The version sandboxes will use, or None when cgroups cannot be used.
    pub fn version(&self) -> Option<CgroupVersion> {
        self.version
    }

    /// The hierarchies used for sandboxes on v1, one per distinct mount,
    /// in the order memory, pids, cpuacct.
    fn v1_used(&self) -> Vec<&V1Hierarchy> {
        let mut used: Vec<&V1Hierarchy> = Vec::new();
        for name in V1_NEEDED {
            if let Some(h) = self
                .v1
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == name))
            {
                if !used.iter().any(|u| u.mount == h.mount) {
                    used.push(h);
                }
            }
        }
        used
    }

    fn v1_mount_of(&self, controller: &str) -> Option<PathBuf> {
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .map(|h| h.mount.clone())
    }

    /// This process's cgroups, from `/proc/self/cgroup` (read now if
    /// detection did not need it; unreadable, none).
    fn own(&self) -> &[detect::OwnCgroup] {
        self.own
            .get_or_init(|| read_own_cgroups().unwrap_or_default())
    }

    fn own_cgroup(&self, controllers: &[String], v2: bool) -> Option<String> {
        self.own()
            .iter()
            .find(|o| {
                if v2 {
                    o.controllers.is_empty()
                } else {
                    !o.controllers.is_empty() && o.controllers == controllers
                }
            })
            .map(|o| o.path.clone())
    }

    /// Whether this process can create sandbox cgroups: a version is usable
    /// and every hierarchy it uses is writable (`report().can_create`,
    /// without looking at the hierarchies sandboxes do not use).
    pub fn can_create(&self) -> bool {
        match self.version {
            Some(CgroupVersion::V2) => self.v2.as_ref().is_some_and(|(m, _)| writable(m)),
            Some(CgroupVersion::V1) => self.v1_used().iter().all(|h| writable(&h.mount)),
            None => false,
        }
    }

    /// Describes what the host offers. Checks write access with
    /// `access(2)`, which creates nothing.
    pub fn report(&self) -> CgroupReport {
        let mut hierarchies = Vec::new();
        let used_v1: Vec<PathBuf> = if self.version == Some(CgroupVersion::V1) {
            self.v1_used().iter().map(|h| h.mount.clone()).collect()
        } else {
            Vec::new()
        };
        if let Some((mount, controllers)) = &self.v2 {
            hierarchies.push(HierarchyReport {
                version: CgroupVersion::V2,
                mount_point: mount.clone(),
                controllers: controllers.clone(),
                own_cgroup: self.own_cgroup(&[], true),
                used: self.version == Some(CgroupVersion::V2),
                writable: writable(mount),
            });
        }
        for h in &self.v1 {
            hierarchies.push(HierarchyReport {
                version: CgroupVersion::V1,
                mount_point: h.mount.clone(),
                controllers: h.controllers.clone(),
                own_cgroup: self.own_cgroup(&h.controllers, false),
                used: used_v1.contains(&h.mount),
                writable: writable(&h.mount),
            });
        }
        let can_create =
            self.version.is_some() && hierarchies.iter().filter(|h| h.used).all(|h| h.writable);
        CgroupReport {
            version: self.version,
            hierarchies,
            can_create,
            swap_accounting: self.swap_accounting,
            unavailable_reason: if self.version.is_none() {
                Some(self.unavailable_detail())
            } else {
                None
            },
        }
    }

    fn unavailable_detail(&self) -> String {
        let v2 = match &self.v2 {
            None => "no cgroup2 mount".to_string(),
            Some((m, c)) => format!("cgroup2 at {} offers [{}]", m.display(), c.join(" ")),
        };
        let missing: Vec<&str> = V1_NEEDED
            .iter()
            .copied()
            .filter(|n| self.v1_mount_of(n).is_none())
            .collect();
        format!("{v2}; v1 hierarchies missing: [{}]", missing.join(" "))
    }

    /// Creates the cgroup `parent/name` with `limits`, creating `parent`
    /// (and enabling the controllers in it, on v2) when missing. On failure
    /// nothing of the sandbox's own cgroup is left behind.
    pub fn create(
        &self,
        parent: &str,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Box<dyn Cgroup>, CgroupError> {
        let parent_parts = validate_parent(parent)?;
        validate_name(name)?;
        if limits.memory_bytes == 0 {
            return Err(CgroupError::InvalidLimit { what: "memory" });
        }
        if limits.pids == 0 {
            return Err(CgroupError::InvalidLimit { what: "pids" });
        }
        let parents_ready = self
            .parents_ready
            .lock()
            .is_ok_and(|ready| ready.iter().any(|p| p == parent));
        let made = match self.create_under(&parent_parts, parents_ready, name, limits) {
            Err(_) if parents_ready => self.create_under(&parent_parts, false, name, limits)?,
            result => result?,
        };
        if !parents_ready {
            if let Ok(mut ready) = self.parents_ready.lock() {
                ready.push(parent.to_string());
            }
        }
        Ok(made)
    }

    /// [`create`](Self::create) with the parent already validated and,
    /// unless `parents_ready`, made first.
    fn create_under(
        &self,
        parent_parts: &[&str],
        parents_ready: bool,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Box<dyn Cgroup>, CgroupError> {
        Ok(match self.version {
            Some(CgroupVersion::V2) => {
                let (mount, controllers) = self.v2_mount()?;
                Box::new(v2::V2Cgroup::create(
                    self.fs.clone(),
                    mount,
                    controllers,
                    parent_parts,
                    parents_ready,
                    name,
                    limits,
                )?)
            }
            Some(CgroupVersion::V1) => Box::new(v1::V1Cgroup::create(
                self.fs.clone(),
                &self.v1_layout()?,
                parent_parts,
                parents_ready,
                name,
                limits,
                self.swap_accounting.unwrap_or(false),
            )?),
            None => {
                return Err(CgroupError::Unavailable {
                    detail: self.unavailable_detail(),
                })
            }
        })
    }

    fn v2_mount(&self) -> Result<(&Path, &[String]), CgroupError> {
        self.v2
            .as_ref()
            .map(|(m, c)| (m.as_path(), c.as_slice()))
            .ok_or_else(|| CgroupError::Unavailable {
                detail: self.unavailable_detail(),
            })
    }

    fn v1_layout(&self) -> Result<v1::Layout, CgroupError> {
        match (
            self.v1_mount_of("memory"),
            self.v1_mount_of("pids"),
            self.v1_mount_of("cpuacct"),
        ) {
            (Some(memory), Some(pids), Some(cpuacct)) => Ok(v1::Layout {
                memory,
                pids,
                cpuacct,
            }),
            _ => Err(CgroupError::Unavailable {
                detail: self.unavailable_detail(),
            }),
        }
    }

    /// Removes the children of `parent` whose name `is_stale` accepts,
    /// killing their processes first. Returns how many sandboxes (names)
    /// were removed. Tries every stale child; returns the first error after.
    pub fn cleanup_stale(
        &self,
        parent: &str,
        is_stale: &dyn Fn(&str) -> bool,
    ) -> Result<usize, CgroupError> {
        let parent_parts = validate_parent(parent)?;
        let rel: PathBuf = parent_parts.iter().collect();
        let mut first_error = None;
        let mut removed = BTreeSet::new();
        match self.version {
            Some(CgroupVersion::V2) => {
                let (mount, _) = self.v2_mount()?;
                for name in stale_children(&mount.join(&rel), is_stale)? {
                    let cg = v2::V2Cgroup::existing(self.fs.clone(), mount.join(&rel).join(&name));
                    match cg.kill_all().and_then(|()| Box::new(cg).destroy()) {
                        Ok(()) => {
                            removed.insert(name);
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            Some(CgroupVersion::V1) => {
                let layout = self.v1_layout()?;
                let mut names = BTreeSet::new();
                for mount in layout.distinct_mounts() {
                    names.extend(stale_children(&mount.join(&rel), is_stale)?);
                }
                for name in names {
                    let cg = v1::V1Cgroup::existing(self.fs.clone(), &layout, &rel.join(&name));
                    match cg.kill_all().and_then(|()| Box::new(cg).destroy()) {
                        Ok(()) => {
                            removed.insert(name);
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            None => {
                return Err(CgroupError::Unavailable {
                    detail: self.unavailable_detail(),
                })
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed.len()),
        }
    }

    /// Removes `parent` itself from every used hierarchy, if it is empty
    /// (for uninstalling, and for tests). A missing parent is not an error.
    pub fn remove_parent(&self, parent: &str) -> Result<(), CgroupError> {
        let parts = validate_parent(parent)?;
        let mounts: Vec<PathBuf> = match self.version {
            Some(CgroupVersion::V2) => vec![self.v2_mount()?.0.to_path_buf()],
            Some(CgroupVersion::V1) => self.v1_layout()?.distinct_mounts(),
            None => Vec::new(),
        };
        for mount in mounts {
            // Innermost first.
            for depth in (1..=parts.len()).rev() {
                let dir: PathBuf = mount.join(parts[..depth].iter().collect::<PathBuf>());
                match self.fs.remove_cgroup_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(CgroupError::Rmdir { path: dir, source }),
                }
            }
        }
        Ok(())
    }
}

/// The child directories of `dir` whose names are valid sandbox names and
/// stale. A missing `dir` has none.
fn stale_children(dir: &Path, is_stale: &dyn Fn(&str) -> bool) -> Result<Vec<String>, CgroupError> {
    // A directory's link count is 2 plus its subdirectories (cgroupfs
    // keeps it so, as do ordinary filesystems): with none, there is nothing
    // to list. This is the common case, at every start of a process.
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() && meta.nlink() == 2 => return Ok(Vec::new()),
        _ => {}
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::ReadDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            if validate_name(name).is_ok() && is_stale(name) {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn name_ok(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with('.')
        && part.len() <= 200
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
    if name_ok(name) {
        Ok(())
    } else {
        Err(CgroupError::InvalidName {
            what: "name",
            value: name.to_string(),
        })
    }
}

fn validate_parent(parent: &str) -> Result<Vec<&str>, CgroupError> {
    let parts: Vec<&str> = parent.split('/').collect();
    if parts.iter().all(|p| name_ok(p)) {
        Ok(parts)
    } else {
        Err(CgroupError::InvalidName {
            what: "parent",
            value: parent.to_string(),
        })
    }
}

/// Makes `dir`, treating "already there" as success (for parents).
fn mkdir_existing_ok(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Mkdir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Makes a sandbox's own directory, which must not exist yet.
fn mkdir_new(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CgroupError::AlreadyExists {
            path: dir.to_path_buf(),
        }),
        Err(source) => Err(CgroupError::Mkdir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// A sandbox's cgroup directory: its path (for messages and removal) and,
/// once it exists, a descriptor its files are opened from, so that each
/// open looks up one name instead of walking the whole path through
/// cgroupfs again (every level takes a kernfs lock the other sandboxes'
/// `mkdir` and `rmdir` contend for).
#[derive(Debug)]
pub(crate) struct CgroupDir {
    path: PathBuf,
    fd: Option<std::os::fd::OwnedFd>,
}

impl CgroupDir {
    /// A directory reached by its path only (one found by `cleanup_stale`).
    fn at(path: PathBuf) -> CgroupDir {
        CgroupDir { path, fd: None }
    }

    /// Opens the directory just made: `O_PATH`, or readable when the fd is
    /// for `CLONE_INTO_CGROUP` (which refuses `O_PATH`).
    fn open(path: PathBuf, for_clone: bool) -> Result<CgroupDir, CgroupError> {
        match fs::open_dir(&path, !for_clone) {
            Ok(fd) => Ok(CgroupDir { path, fd: Some(fd) }),
            Err(source) => Err(CgroupError::Read { path, source }),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Writes `value` to its file `name`.
    fn write(&self, fs: &dyn CgroupFs, name: &str, value: &str) -> io::Result<()> {
        match self.fd() {
            Some(dir) => fs.write_file_at(dir, name, value),
            None => fs.write_file(&self.path.join(name), value),
        }
    }
}

/// Writes `value` to the file `name` of `dir`, with the path in the error.
fn write_in(
    fs: &dyn CgroupFs,
    dir: &CgroupDir,
    name: &str,
    value: &str,
) -> Result<(), CgroupError> {
    dir.write(fs, name, value)
        .map_err(|source| CgroupError::Write {
            path: dir.path.join(name),
            value: value.to_string(),
            source,
        })
}

fn write(fs: &dyn CgroupFs, path: PathBuf, value: &str) -> Result<(), CgroupError> {
    fs.write_file(&path, value)
        .map_err(|source| CgroupError::Write {
            path,
            value: value.to_string(),
            source,
        })
}

/// Removes a cgroup directory, retrying while the kernel says it is busy
/// (processes that were just killed take a moment to leave). Calls `kill`
/// once on the first EBUSY. A directory already gone is success.
fn remove_with_retry(
    fs: &dyn CgroupFs,
    dir: &Path,
    kill: &dyn Fn() -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let mut killed = false;
    let mut delay = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    loop {
        match fs.remove_cgroup_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && waited < RMDIR_PATIENCE => {
                if !killed {
                    killed = true;
                    kill()?;
                }
                std::thread::sleep(delay);
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(CgroupError::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// How long [`remove_with_retry`] keeps trying on EBUSY.
const RMDIR_PATIENCE: Duration = Duration::from_secs(2);
/// How many rounds of "read cgroup.procs, SIGKILL each" before giving up.
const KILL_ROUNDS: u32 = 100;

/// Kills what `procs` lists until it lists nothing, at most [`KILL_ROUNDS`]
/// times. Bounded because a fork bomb is bounded by the pids limit: each
/// round kills every process that exists, and new ones can only be forked
/// by processes that are not yet dead.
fn kill_listed_until_empty(fs: &dyn CgroupFs, procs: &Path) -> Result<(), CgroupError> {
    let mut delay = Duration::from_micros(200);
    for _ in 0..KILL_ROUNDS {
        match fs.kill_listed(procs) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(CgroupError::Kill {
                    path: procs.to_path_buf(),
                    source,
                })
            }
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
    Err(CgroupError::KillIncomplete {
        path: procs.to_path_buf(),
        rounds: KILL_ROUNDS,
    })
}

/// A usage file, opened on first read and then re-read with `pread` at
/// offset 0 (cgroupfs regenerates the content for each read from 0).
#[derive(Debug)]
struct StatFile {
    path: PathBuf,
    /// Opened instead when `path` does not exist (`memory.current` for
    /// `memory.peak` on kernels before 5.19).
    fallback: Option<PathBuf>,
    /// The open file and the path it was opened from.
    file: OnceLock<(File, PathBuf)>,
}

impl StatFile {
    fn new(path: PathBuf) -> StatFile {
        StatFile {
            path,
            fallback: None,
            file: OnceLock::new(),
        }
    }

    fn with_fallback(path: PathBuf, fallback: PathBuf) -> StatFile {
        StatFile {
            fallback: Some(fallback),
            ..StatFile::new(path)
        }
    }

    fn open(&self) -> Result<&(File, PathBuf), CgroupError> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let opened = match (File::open(&self.path), &self.fallback) {
            (Ok(f), _) => (f, self.path.clone()),
            (Err(e), Some(fallback)) if e.kind() == io::ErrorKind::NotFound => {
                let f = File::open(fallback).map_err(|source| CgroupError::Read {
                    path: fallback.clone(),
                    source,
                })?;
                (f, fallback.clone())
            }
            (Err(source), _) => {
                return Err(CgroupError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        Ok(self.file.get_or_init(|| opened))
    }

    /// Opens the file now, from `dir` (the directory it is in) when that is
    /// open, so that the first read is one `pread`: a cgroup is created
    /// while the sandbox's init builds its root, and the baseline read just
    /// after it is on the critical path. A failure is left for the first
    /// read to report.
    fn preopen_in(&self, dir: &CgroupDir) {
        let Some(fd) = dir.fd() else {
            let _ = self.open();
            return;
        };
        for path in std::iter::once(&self.path).chain(self.fallback.as_ref()) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                break;
            };
            match fs::open_at(fd, name, libc::O_RDONLY) {
                Ok(file) => {
                    let _ = self.file.set((file, path.clone()));
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Left for the first read, which says what is wrong.
                Err(_) => break,
            }
        }
    }

    /// Reads the whole file into `buf` and returns it as text, with the path
    /// it came from.
    fn read<'b>(&self, buf: &'b mut [u8]) -> Result<(&'b str, &Path), CgroupError> {
        let (file, path) = self.open()?;
        let mut n = 0;
        while n < buf.len() {
            let got =
                file.read_at(&mut buf[n..], n as u64)
                    .map_err(|source| CgroupError::Read {
                        path: path.clone(),
                        source,
                    })?;
            if got == 0 {
                break;
            }
            n += got;
        }
        let text = std::str::from_utf8(&buf[..n]).map_err(|_| CgroupError::Parse {
            path: path.clone(),
            expected: "text",
            found: String::from_utf8_lossy(&buf[..n.min(64)]).into_owned(),
        })?;
        Ok((text, path))
    }

    /// A file holding one number, such as `cpuacct.usage`.
    fn read_number(&self) -> Result<u64, CgroupError> {
        let mut buf = [0u8; 64];
        let (text, path) = self.read(&mut buf)?;
        text.trim().parse().map_err(|_| CgroupError::Parse {
            path: path.to_path_buf(),
            expected: "a number",
            found: text.trim().to_string(),
        })
    }

    /// Whether the file has the line `line` (false when it cannot be read).
    fn has_line(&self, line: &str) -> bool {
        let mut buf = [0u8; 1024];
        matches!(self.read(&mut buf), Ok((text, _)) if text.lines().any(|l| l == line))
    }

    /// The value of `key` in a flat-keyed file (`key value` lines, as in
    /// `memory.events`). A missing key reads as 0: older kernels lack some
    /// (e.g. `oom_kill` before Linux 4.13).
    fn read_key(&self, key: &str) -> Result<u64, CgroupError> {
        let mut buf = [0u8; 1024];
        let (text, path) = self.read(&mut buf)?;
        parse_key(text, key).map_err(|found| CgroupError::Parse {
            path: path.to_path_buf(),
            expected: "`key number` lines",
            found,
        })
    }
}

/// Finds `key N` in flat-keyed text; Ok(0) when the key is absent.
fn parse_key(text: &str, key: &str) -> Result<u64, String> {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            let value = it.next().unwrap_or("");
            return value.parse().map_err(|_| line.to_string());
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests;
