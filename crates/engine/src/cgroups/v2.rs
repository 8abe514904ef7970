//! The cgroup v2 manager: one directory per sandbox in the unified tree.
//!
//! Creating `parent/name` under the cgroup2 mount:
//!
//! 1. for the mount root and each component of `parent`, from the top:
//!    write `+memory +pids [+cpu]` to its `cgroup.subtree_control`, then make
//!    the next directory. Enabling a controller that is already enabled is a
//!    no-op, so this is safe to repeat. The kernel's no-internal-processes
//!    rule forbids enabling controllers in a group that holds processes (the
//!    root is exempt), so `parent` must be a group used only for sandboxes;
//! 2. make the sandbox's directory and write `memory.max`, `memory.swap.max`
//!    = 0 (skipped when swap is not accounted: the file is then absent),
//!    `memory.oom.group` = 1 and `pids.max`.
//!
//! `memory.oom.group` = 1 makes an OOM kill take the whole sandbox, not one
//! process of it. A judge wants that: a run that hit its memory limit has
//! failed, and a half-killed program (a shell whose child was killed, a
//! server whose worker died) would otherwise keep running into the wall
//! clock limit and report a confusing result. The verdict is "memory limit
//! exceeded" either way, and it arrives at once.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::CgroupFs;
use super::{
    kill_listed_until_empty, mkdir_existing_ok, mkdir_new, remove_with_retry, write_in, Cgroup,
    CgroupDir, CgroupError, CgroupLimits, CgroupUsage, CgroupVersion, LimitsInForce, StatFile,
};

/// One sandbox's cgroup v2 directory.
#[derive(Debug)]
pub struct V2Cgroup {
    fs: Arc<dyn CgroupFs>,
    /// The directory, open (readable, for `CLONE_INTO_CGROUP`) unless it is
    /// a cgroup found by `cleanup_stale`.
    dir: CgroupDir,
    cpu_stat: StatFile,
    /// `memory.peak`, or `memory.current` on kernels before 5.19.
    memory_peak: StatFile,
    memory_events: StatFile,
    pids_events: StatFile,
    /// The limits in force: updates write only what changes.
    in_force: LimitsInForce,
}

impl V2Cgroup {
    /// Makes the cgroup `parent/name`, and first `parent` with its
    /// controllers enabled unless `parents_ready` (this process made it
    /// before).
    pub(crate) fn create(
        fs: Arc<dyn CgroupFs>,
        mount: &Path,
        available: &[String],
        parent: &[&str],
        parents_ready: bool,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<V2Cgroup, CgroupError> {
        let mut dir = mount.to_path_buf();
        if parents_ready {
            dir.extend(parent);
        } else {
            let enable = enable_string(available);
            for part in parent {
                enable_controllers(fs.as_ref(), &dir, &enable)?;
                dir.push(part);
                mkdir_existing_ok(&dir)?;
            }
            enable_controllers(fs.as_ref(), &dir, &enable)?;
        }
        dir.push(name);
        mkdir_new(&dir)?;

        let mut cg = V2Cgroup::existing(fs, dir);
        let result = CgroupDir::open(cg.dir.path().to_path_buf(), true).and_then(|opened| {
            cg.dir = opened;
            cg.set_limits(limits, true)
        });
        match result {
            Ok(()) => {
                for f in [
                    &cg.cpu_stat,
                    &cg.memory_peak,
                    &cg.memory_events,
                    &cg.pids_events,
                ] {
                    f.preopen_in(&cg.dir);
                }
                Ok(cg)
            }
            Err(e) => {
                // Nothing runs in it yet: removing it cannot be busy.
                let _ = cg.fs.remove_cgroup_dir(cg.dir.path());
                Err(e)
            }
        }
    }

    /// A handle on an existing cgroup directory (to kill and remove it).
    pub(crate) fn existing(fs: Arc<dyn CgroupFs>, dir: PathBuf) -> V2Cgroup {
        V2Cgroup {
            fs,
            cpu_stat: StatFile::new(dir.join("cpu.stat")),
            memory_peak: StatFile::with_fallback(
                dir.join("memory.peak"),
                dir.join("memory.current"),
            ),
            memory_events: StatFile::new(dir.join("memory.events")),
            pids_events: StatFile::new(dir.join("pids.events")),
            in_force: LimitsInForce::unknown(),
            dir: CgroupDir::at(dir),
        }
    }

    /// Writes the limits that differ from those in force; at creation,
    /// also the settings that never change (no swap, OOM kills the group).
    fn set_limits(&self, limits: &CgroupLimits, creating: bool) -> Result<(), CgroupError> {
        let fs = self.fs.as_ref();
        let change = self.in_force.replace(limits);
        if change.previous_memory.is_some() {
            write_in(
                fs,
                &self.dir,
                "memory.max",
                &limits.memory_bytes.to_string(),
            )?;
        }
        if creating {
            match write_in(fs, &self.dir, "memory.swap.max", "0") {
                Ok(()) => {}
                // No swap accounting (CONFIG_MEMCG_SWAP off or swapaccount=0):
                // the file does not exist and swap cannot be charged anyway.
                Err(CgroupError::Write { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            write_in(fs, &self.dir, "memory.oom.group", "1")?;
        }
        if change.pids {
            write_in(fs, &self.dir, "pids.max", &limits.pids.to_string())?;
        }
        Ok(())
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `+memory +pids`, and `+cpu` when the host offers it (cpu.stat's
/// `usage_usec` is there without it, but it is wanted for future quotas).
fn enable_string(available: &[String]) -> String {
    let mut s = String::from("+memory +pids");
    if available.iter().any(|c| c == "cpu") {
        s.push_str(" +cpu");
    }
    s
}

fn enable_controllers(fs: &dyn CgroupFs, dir: &Path, value: &str) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    fs.write_file(&path, value)
        .map_err(|source| CgroupError::EnableControllers {
            path,
            value: value.to_string(),
            source,
        })
}

impl Cgroup for V2Cgroup {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn update_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.set_limits(limits, false)
    }

    fn reset_peak(&self) -> Result<(), CgroupError> {
        // memory.peak resets only per open file (Linux 6.12+), and not at
        // all before: the peak spans every stage of the sandbox.
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        self.dir
            .write(self.fs.as_ref(), "cgroup.procs", &pid.to_string())
            .map_err(|source| CgroupError::AddProcess {
                pid,
                path: self.dir.path().join("cgroup.procs"),
                source,
            })
    }

    fn usage(&self) -> Result<CgroupUsage, CgroupError> {
        let peak = self.memory_peak.read_number()?;
        Ok(CgroupUsage {
            cpu_time_ns: self.cpu_time_ns()?,
            memory_peak_bytes: peak,
            oom_kills: self.memory_events.read_key("oom_kill")?,
            pids_limit_hits: self.pids_events.read_key("max")?,
        })
    }

    fn cpu_time_ns(&self) -> Result<u64, CgroupError> {
        Ok(self.cpu_stat.read_key("usage_usec")?.saturating_mul(1000))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        match self.dir.write(self.fs.as_ref(), "cgroup.kill", "1") {
            Ok(()) => Ok(()),
            // Before Linux 5.14 there is no cgroup.kill.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                kill_listed_until_empty(self.fs.as_ref(), &self.dir.path().join("cgroup.procs"))
            }
            Err(source) => Err(CgroupError::Write {
                path: self.dir.path().join("cgroup.kill"),
                value: "1".to_string(),
                source,
            }),
        }
    }

    fn destroy(self: Box<Self>) -> Result<(), CgroupError> {
        let V2Cgroup {
            fs,
            dir,
            cpu_stat,
            memory_peak,
            memory_events,
            pids_events,
            in_force: _,
        } = *self;
        // Close our fds in the directory, and its own, before removing it.
        drop((cpu_stat, memory_peak, memory_events, pids_events));
        let path = dir.path().to_path_buf();
        drop(dir);
        // kill_all needs only the path; this handle opens nothing.
        let handle = V2Cgroup::existing(fs.clone(), path.clone());
        remove_with_retry(fs.as_ref(), &path, &|| handle.kill_all())
    }

    fn procs_file_fd(&self) -> Option<BorrowedFd<'_>> {
        self.dir.fd()
    }
}
