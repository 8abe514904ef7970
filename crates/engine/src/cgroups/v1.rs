//! The cgroup v1 manager: one directory per sandbox in each of the
//! `memory`, `pids` and `cpuacct` hierarchies (fewer when some are
//! co-mounted, as `cpu,cpuacct` often is).
//!
//! Creating `parent/name`:
//!
//! 1. make `parent` in each hierarchy if missing; in the memory hierarchy, a
//!    newly made parent gets `memory.use_hierarchy` = 1 so that its children
//!    are charged to it (always so since Linux 5.x; refused with EINVAL on old
//!    kernels when inherited, which is equally fine);
//! 2. make the sandbox's directory in each hierarchy;
//! 3. memory: `memory.limit_in_bytes`, then `memory.memsw.limit_in_bytes` to
//!    the same value so that swap is 0 (the memsw limit can never be below
//!    the memory limit, hence the order). Without swap accounting the memsw
//!    files are absent: `memory.swappiness` = 0 is written instead, and the
//!    report says swap is not accounted. The OOM killer must be enabled (a
//!    disabled one would hang the sandbox instead of killing it): the new
//!    cgroup inherits the parent's setting, so `memory.oom_control` is read
//!    (through the descriptor kept for the usage) and written 0 only when
//!    it does not say `oom_kill_disable 0`;
//! 4. pids: `pids.max`.
//!
//! v1 has no `cgroup.kill` and no `memory.oom.group`: [`Cgroup::kill_all`]
//! kills what `cgroup.procs` lists until it is empty, and an OOM kill takes
//! one process at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::os::fd::BorrowedFd;

use super::fs::CgroupFs;
use super::{
    kill_listed_until_empty, mkdir_existing_ok, mkdir_new, remove_with_retry, write, write_in,
    Cgroup, CgroupDir, CgroupError, CgroupLimits, CgroupUsage, CgroupVersion, LimitsInForce,
    StatFile,
};

/// The mount points of the hierarchies a sandbox uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub memory: PathBuf,
    pub pids: PathBuf,
    pub cpuacct: PathBuf,
}

impl Layout {
    /// The distinct mounts, memory first.
    pub(crate) fn distinct_mounts(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::with_capacity(3);
        for m in [&self.memory, &self.pids, &self.cpuacct] {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

/// One sandbox's cgroup v1 directories.
#[derive(Debug)]
pub struct V1Cgroup {
    fs: Arc<dyn CgroupFs>,
    /// One directory per distinct hierarchy, memory's first.
    dirs: Vec<CgroupDir>,
    /// Which of `dirs` is in the pids hierarchy (0 when it is co-mounted
    /// with memory).
    pids: usize,
    /// Which of `dirs` is in the cpuacct hierarchy.
    cpuacct: usize,
    cpuacct_usage: StatFile,
    memory_max_usage: StatFile,
    memory_oom_control: StatFile,
    pids_events: StatFile,
    /// Whether memsw (memory + swap) files exist, set at creation.
    swap_accounted: std::sync::atomic::AtomicBool,
    /// The limits in force: updates write only what changes, and memsw
    /// and memory writes are ordered by whether memory goes up or down.
    in_force: LimitsInForce,
}

/// Makes the directories of `parent` in every hierarchy, where missing,
/// with hierarchical memory accounting in those it makes.
fn make_parents(fs: &dyn CgroupFs, layout: &Layout, parent: &[&str]) -> Result<(), CgroupError> {
    for mount in layout.distinct_mounts() {
        let mut dir = mount.clone();
        for part in parent {
            dir.push(part);
            let made = mkdir_existing_ok(&dir)?;
            if made && mount == layout.memory {
                match write(fs, dir.join("memory.use_hierarchy"), "1") {
                    Ok(()) => {}
                    Err(CgroupError::Write { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

impl V1Cgroup {
    /// Makes the cgroup `parent/name` in every hierarchy, and first
    /// `parent` unless `parents_ready` (this process made it before).
    pub(crate) fn create(
        fs: Arc<dyn CgroupFs>,
        layout: &Layout,
        parent: &[&str],
        parents_ready: bool,
        name: &str,
        limits: &CgroupLimits,
        swap_accounted: bool,
    ) -> Result<V1Cgroup, CgroupError> {
        if !parents_ready {
            make_parents(fs.as_ref(), layout, parent)?;
        }
        let rel: PathBuf = parent.iter().collect::<PathBuf>().join(name);
        let mut cg = V1Cgroup::existing(fs, layout, &rel);
        let mut made = 0;
        let result = (|| {
            for dir in cg.dirs.iter_mut() {
                mkdir_new(dir.path())?;
                made += 1;
                *dir = CgroupDir::open(dir.path().to_path_buf(), false)?;
            }
            let (memory, pids, cpuacct) = (&cg.dirs[0], &cg.dirs[cg.pids], &cg.dirs[cg.cpuacct]);
            for (f, dir) in [
                (&cg.memory_oom_control, memory),
                (&cg.memory_max_usage, memory),
                (&cg.pids_events, pids),
                (&cg.cpuacct_usage, cpuacct),
            ] {
                f.preopen_in(dir);
            }
            cg.swap_accounted
                .store(swap_accounted, std::sync::atomic::Ordering::Relaxed);
            cg.set_limits(limits, swap_accounted, true)
        })();
        if let Err(e) = result {
            // Nothing runs in them yet: removing them cannot be busy.
            for dir in cg.dirs[..made].iter().rev() {
                let _ = cg.fs.remove_cgroup_dir(dir.path());
            }
            return Err(e);
        }
        Ok(cg)
    }

    /// A handle on existing directories `rel` under each hierarchy (to kill
    /// and remove them). Hierarchies where `rel` is missing are skipped when
    /// removing.
    pub(crate) fn existing(fs: Arc<dyn CgroupFs>, layout: &Layout, rel: &Path) -> V1Cgroup {
        let memory = layout.memory.join(rel);
        let pids = layout.pids.join(rel);
        let cpuacct = layout.cpuacct.join(rel);
        let mounts = layout.distinct_mounts();
        let index_of = |mount: &PathBuf| mounts.iter().position(|m| m == mount).unwrap_or(0);
        V1Cgroup {
            fs,
            pids: index_of(&layout.pids),
            cpuacct: index_of(&layout.cpuacct),
            dirs: mounts.iter().map(|m| CgroupDir::at(m.join(rel))).collect(),
            cpuacct_usage: StatFile::new(cpuacct.join("cpuacct.usage")),
            memory_max_usage: StatFile::new(memory.join("memory.max_usage_in_bytes")),
            memory_oom_control: StatFile::new(memory.join("memory.oom_control")),
            pids_events: StatFile::new(pids.join("pids.events")),
            swap_accounted: std::sync::atomic::AtomicBool::new(false),
            in_force: LimitsInForce::unknown(),
        }
    }

    /// Writes the limits that differ from those in force; at creation,
    /// also the settings that never change (OOM killer on, no swap).
    fn set_limits(
        &self,
        limits: &CgroupLimits,
        swap_accounted: bool,
        creating: bool,
    ) -> Result<(), CgroupError> {
        let fs = self.fs.as_ref();
        let memory = &self.dirs[0];
        let change = self.in_force.replace(limits);
        if let Some(previous) = change.previous_memory {
            let bytes = limits.memory_bytes.to_string();
            // memsw may never be below the memory limit: when raising, memsw
            // goes first; when lowering (or first setting), memory does.
            let raising = limits.memory_bytes > previous;
            if swap_accounted && raising {
                write_in(fs, memory, "memory.memsw.limit_in_bytes", &bytes)?;
            }
            write_in(fs, memory, "memory.limit_in_bytes", &bytes)?;
            if swap_accounted && !raising {
                write_in(fs, memory, "memory.memsw.limit_in_bytes", &bytes)?;
            }
        }
        if creating {
            if !swap_accounted {
                write_in(fs, memory, "memory.swappiness", "0")?;
            }
            // A new cgroup inherits its parent's setting, which is almost
            // always "enabled": one read of the file kept open for the
            // usage instead of an open, a write and a close.
            if !self.memory_oom_control.has_line("oom_kill_disable 0") {
                write_in(fs, memory, "memory.oom_control", "0")?;
            }
        }
        if change.pids {
            write_in(
                fs,
                &self.dirs[self.pids],
                "pids.max",
                &limits.pids.to_string(),
            )?;
        }
        Ok(())
    }

    /// The cgroup's directories, memory's first.
    pub fn paths(&self) -> Vec<&Path> {
        self.dirs.iter().map(CgroupDir::path).collect()
    }
}

impl Cgroup for V1Cgroup {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn update_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.set_limits(
            limits,
            self.swap_accounted
                .load(std::sync::atomic::Ordering::Relaxed),
            false,
        )
    }

    fn reset_peak(&self) -> Result<(), CgroupError> {
        write_in(
            self.fs.as_ref(),
            &self.dirs[0],
            "memory.max_usage_in_bytes",
            "0",
        )
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for dir in &self.dirs {
            dir.write(self.fs.as_ref(), "cgroup.procs", &value)
                .map_err(|source| CgroupError::AddProcess {
                    pid,
                    path: dir.path().join("cgroup.procs"),
                    source,
                })?;
        }
        Ok(())
    }

    fn usage(&self) -> Result<CgroupUsage, CgroupError> {
        Ok(CgroupUsage {
            cpu_time_ns: self.cpu_time_ns()?,
            memory_peak_bytes: self.memory_max_usage.read_number()?,
            oom_kills: self.memory_oom_control.read_key("oom_kill")?,
            pids_limit_hits: self.pids_events.read_key("max")?,
        })
    }

    fn cpu_time_ns(&self) -> Result<u64, CgroupError> {
        self.cpuacct_usage.read_number()
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            kill_listed_until_empty(self.fs.as_ref(), &dir.path().join("cgroup.procs"))?;
        }
        Ok(())
    }

    fn destroy(mut self: Box<Self>) -> Result<(), CgroupError> {
        // Close our usage files and directories before removing them.
        for dir in self.dirs.iter_mut() {
            *dir = CgroupDir::at(dir.path().to_path_buf());
        }
        for f in [
            &mut self.cpuacct_usage,
            &mut self.memory_max_usage,
            &mut self.memory_oom_control,
            &mut self.pids_events,
        ] {
            drop(f.file.take());
        }
        for dir in &self.dirs {
            remove_with_retry(self.fs.as_ref(), dir.path(), &|| self.kill_all())?;
        }
        Ok(())
    }

    fn procs_file_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}
