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
    kill_listed_until_empty, mkdir_existing_ok, mkdir_new, remove_with_retry, write, Cgroup,
    CgroupError, CgroupLimits, CgroupUsage, CgroupVersion, LimitsInForce, StatFile,
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
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    pids: PathBuf,
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
        let cg = V1Cgroup::existing(fs, layout, &rel);
        let mut made: Vec<&Path> = Vec::with_capacity(cg.dirs.len());
        let result = (|| {
            for dir in &cg.dirs {
                mkdir_new(dir)?;
                made.push(dir);
            }
            cg.swap_accounted
                .store(swap_accounted, std::sync::atomic::Ordering::Relaxed);
            cg.set_limits(limits, swap_accounted, true)
        })();
        if let Err(e) = result {
            // Nothing runs in them yet: removing them cannot be busy.
            for dir in made.iter().rev() {
                let _ = cg.fs.remove_cgroup_dir(dir);
            }
            return Err(e);
        }
        for f in [
            &cg.cpuacct_usage,
            &cg.memory_max_usage,
            &cg.memory_oom_control,
            &cg.pids_events,
        ] {
            f.preopen();
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
        V1Cgroup {
            fs,
            dirs: layout
                .distinct_mounts()
                .iter()
                .map(|m| m.join(rel))
                .collect(),
            memory: memory.clone(),
            pids: pids.clone(),
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
        let memory = &self.memory;
        let change = self.in_force.replace(limits);
        if let Some(previous) = change.previous_memory {
            let bytes = limits.memory_bytes.to_string();
            // memsw may never be below the memory limit: when raising, memsw
            // goes first; when lowering (or first setting), memory does.
            let raising = limits.memory_bytes > previous;
            if swap_accounted && raising {
                write(fs, memory.join("memory.memsw.limit_in_bytes"), &bytes)?;
            }
            write(fs, memory.join("memory.limit_in_bytes"), &bytes)?;
            if swap_accounted && !raising {
                write(fs, memory.join("memory.memsw.limit_in_bytes"), &bytes)?;
            }
        }
        if creating {
            if !swap_accounted {
                write(fs, memory.join("memory.swappiness"), "0")?;
            }
            // A new cgroup inherits its parent's setting, which is almost
            // always "enabled": one read of the file kept open for the
            // usage instead of an open, a write and a close.
            if !self.memory_oom_control.has_line("oom_kill_disable 0") {
                write(fs, memory.join("memory.oom_control"), "0")?;
            }
        }
        if change.pids {
            write(fs, self.pids.join("pids.max"), &limits.pids.to_string())?;
        }
        Ok(())
    }

    /// The cgroup's directories, memory's first.
    pub fn paths(&self) -> &[PathBuf] {
        &self.dirs
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
        write(
            self.fs.as_ref(),
            self.memory.join("memory.max_usage_in_bytes"),
            "0",
        )
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            self.fs
                .write_file(&path, &value)
                .map_err(|source| CgroupError::AddProcess { pid, path, source })?;
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
            kill_listed_until_empty(self.fs.as_ref(), &dir.join("cgroup.procs"))?;
        }
        Ok(())
    }

    fn destroy(mut self: Box<Self>) -> Result<(), CgroupError> {
        // Close our usage files before removing the directories.
        for f in [
            &mut self.cpuacct_usage,
            &mut self.memory_max_usage,
            &mut self.memory_oom_control,
            &mut self.pids_events,
        ] {
            drop(f.file.take());
        }
        for dir in &self.dirs {
            remove_with_retry(self.fs.as_ref(), dir, &|| self.kill_all())?;
        }
        Ok(())
    }

    fn procs_file_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}
