//! Cloning a sandbox's init: the plan init follows (mounts, Landlock,
//! seccomp, its buffers), made before the clone because init may not
//! allocate, and the clone itself into new namespaces.
//!
//! Used in two places: by the supervisor itself (`Engine::run`, one
//! sandbox per process), and by the spawner helper (`spawner.rs`), which
//! clones with `CLONE_PARENT` so that init is still the supervisor's child.

use crate::child::{self, ChildPlan, SeccompStep};
use crate::landlock::{self, LandlockPlan, NetPolicy};
use crate::mounts::{MountPlan, ProcMaskCheck};
use crate::run_request;
use crate::spec::ReadOnlyPath;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What every sandbox's init plan is made of, fixed for the engine. The
/// supervisor sends it to the spawner helper once, as JSON.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct InitBase {
    /// The operator's read-only paths (a shape adds its own).
    pub read_only: Vec<ReadOnlyPath>,
    pub landlock_abi: Option<u32>,
    pub user_notif: bool,
    /// Drop supplementary groups (root only).
    pub clear_groups: bool,
    pub last_cap: u32,
    /// The cloning process's own argument area (init overwrites its copy
    /// of it): not sent, each process finds its own.
    #[serde(skip)]
    pub arg_area: Option<(usize, usize)>,
    pub filter: FilterProgram,
}

/// A compiled seccomp program, as the kernel takes it. On the wire, one
/// integer per instruction (`code | jt << 16 | jf << 24 | k << 32`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub(crate) struct FilterProgram(Vec<libc::sock_filter>);

/// The most instructions the kernel takes (BPF_MAXINSNS).
const FILTER_MAX: usize = 4096;

impl FilterProgram {
    pub(crate) fn new(instructions: &[libc::sock_filter]) -> FilterProgram {
        FilterProgram(instructions.to_vec())
    }

    /// The program in the kernel's format. The pointer inside is valid
    /// while `self` lives and is not mutated; the kernel only reads it.
    fn as_fprog(&self) -> libc::sock_fprog {
        libc::sock_fprog {
            // Checked on every way in (`compile`, `try_from`): at most
            // 4096; 0, which the kernel refuses, only if that broke.
            len: u16::try_from(self.0.len()).unwrap_or(0),
            filter: self.0.as_ptr().cast_mut(),
        }
    }
}

impl TryFrom<Vec<u64>> for FilterProgram {
    type Error = String;

    fn try_from(words: Vec<u64>) -> Result<FilterProgram, String> {
        if words.is_empty() || words.len() > FILTER_MAX {
            return Err(format!(
                "a seccomp program of {} instructions (1 to {FILTER_MAX})",
                words.len()
            ));
        }
        Ok(FilterProgram(
            words
                .into_iter()
                .map(|w| libc::sock_filter {
                    code: w as u16,
                    jt: (w >> 16) as u8,
                    jf: (w >> 24) as u8,
                    k: (w >> 32) as u32,
                })
                .collect(),
        ))
    }
}

impl From<FilterProgram> for Vec<u64> {
    fn from(program: FilterProgram) -> Vec<u64> {
        program
            .0
            .iter()
            .map(|i| {
                u64::from(i.code)
                    | u64::from(i.jt) << 16
                    | u64::from(i.jf) << 24
                    | u64::from(i.k) << 32
            })
            .collect()
    }
}

/// The part of a sandbox's shape init's plan depends on.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitShape {
    pub disk_bytes: u64,
    pub extra_read_only: Vec<ReadOnlyPath>,
    pub proxy_port: Option<u16>,
    /// Build the root in a helper beside init (`ChildPlan::root_by_helper`).
    pub root_by_helper: bool,
    /// Cloned by the supervisor's own thread (no spawner): with
    /// `root_by_helper`, it sleeps until init runs (`ChildPlan::
    /// announce_running`), and its one plan leaves the /proc masks to the
    /// root builder ([`ProcMaskCheck::Builder`]). A spawner keeps its plans
    /// for the next sandbox, and clones with `CLONE_PARENT`.
    pub supervisor_clones: bool,
}

/// A cloned init: its pid, pidfd, and the supervisor's end of its socket.
pub(crate) struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub sync: OwnedFd,
}

/// Why no init was cloned.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The plan could not be made (a read-only path, the Landlock rules).
    Plan(String),
    /// clone3 failed.
    Clone(io::Error),
    /// The spawner helper is gone or did not answer.
    Spawner(String),
}

/// Memory that each sandbox's init uses as its own: the buffers its run
/// request is received into, and pid 2's stack. Reserved once per process
/// that clones inits and never touched by it: every clone gets a private
/// (copy-on-write) copy, of which init touches only the pages it uses. So
/// no run allocates or frees it.
pub(crate) struct ChildMemory {
    request_words: Vec<u64>,
    pointers: Vec<*const libc::c_char>,
    exec_stack: child::ExecStack,
}

// SAFETY: the raw pointers in `pointers` are never dereferenced by the
// process that reserved them (the vector is only ever written by cloned
// children, in their own copies), so sharing it between threads cannot
// race on them.
unsafe impl Send for ChildMemory {}
// SAFETY: as above: the cloning process neither reads nor writes this memory.
unsafe impl Sync for ChildMemory {}

impl ChildMemory {
    pub(crate) fn new() -> ChildMemory {
        ChildMemory {
            // Zeroed by the allocator: fresh pages, never touched here.
            request_words: vec![0u64; run_request::REQUEST_MAX / 8],
            pointers: vec![std::ptr::null(); run_request::POINTERS_MAX],
            exec_stack: child::ExecStack::new(),
        }
    }

    fn request_buffers(&self) -> child::RequestBuffers {
        child::RequestBuffers {
            // Only the child writes through these, into its own copy.
            words: self.request_words.as_ptr().cast_mut(),
            word_count: self.request_words.len(),
            pointers: self.pointers.as_ptr().cast_mut(),
            pointer_count: self.pointers.len(),
        }
    }
}

/// The mount plan of the last shape cloned, kept for the next init of the
/// same shape (a pool's sandboxes are all alike). The plan depends on
/// nothing else: the base's read-only paths are fixed, and the /proc masks
/// are decided once per process. Making it afresh is some hundred small
/// allocations, and in the spawner every page they touch was shared with
/// the init cloned before, so each costs a copy-on-write fault: keeping it
/// halves the spawner's page faults per sandbox (21 to 12) and raised
/// `formicary batch`'s throughput by 1-2%.
#[derive(Default)]
pub(crate) struct MountPlanCache {
    /// The disk size and extra read-only paths it was made for, and the plan.
    last: Option<(u64, Vec<ReadOnlyPath>, ProcMaskCheck, MountPlan)>,
}

impl MountPlanCache {
    /// The plan for `shape`: the last one if the shape is the same. For a
    /// run someone waits for, cloned by its supervisor, the root builder
    /// finds which /proc files need a mask; otherwise the supervisor, once
    /// per process.
    fn plan_for(&mut self, base: &InitBase, shape: &InitShape) -> Result<&MountPlan, SpawnError> {
        let masks = if shape.root_by_helper && shape.supervisor_clones {
            ProcMaskCheck::Builder
        } else {
            ProcMaskCheck::Supervisor
        };
        let kept = match self.last.take() {
            Some(last)
                if last.0 == shape.disk_bytes
                    && last.1 == shape.extra_read_only
                    && last.2 == masks =>
            {
                last
            }
            _ => {
                let mut read_only = base.read_only.clone();
                read_only.extend(shape.extra_read_only.iter().cloned());
                let plan = MountPlan::prepare(&read_only, shape.disk_bytes, masks)
                    .map_err(|e| SpawnError::Plan(e.to_string()))?;
                (shape.disk_bytes, shape.extra_read_only.clone(), masks, plan)
            }
        };
        Ok(&self.last.insert(kept).3)
    }
}

/// Makes init's plan for `shape` (its mounts from `plans` when the shape
/// is the last one's) and clones init. `clone_parent`: init becomes the
/// caller's parent's child (the helper's case).
pub(crate) fn spawn_init(
    base: &InitBase,
    memory: &ChildMemory,
    plans: &mut MountPlanCache,
    shape: &InitShape,
    clone_parent: bool,
) -> Result<Spawned, SpawnError> {
    let mounts = plans.plan_for(base, shape)?;
    let landlock_plan = match base.landlock_abi {
        Some(abi) => Some(
            LandlockPlan::prepare(
                abi,
                &landlock::default_rules(),
                &NetPolicy {
                    connect_tcp_ports: shape.proxy_port.into_iter().collect(),
                },
            )
            .map_err(|e| SpawnError::Plan(e.to_string()))?,
        ),
        None => None,
    };
    let (sync_parent, sync_child) = crate::sys::seqpacket_pair()
        .map_err(|e| SpawnError::Plan(format!("cannot create a socket pair: {e}")))?;
    let fprog = base.filter.as_fprog();
    let plan = ChildPlan {
        sync_fd: sync_child.as_raw_fd(),
        clear_groups: base.clear_groups,
        mounts,
        last_cap: base.last_cap,
        landlock: landlock_plan.as_ref(),
        seccomp: if base.user_notif {
            SeccompStep::Notify(&fprog)
        } else {
            SeccompStep::Errno(&fprog)
        },
        request: memory.request_buffers(),
        exec_stack: &memory.exec_stack,
        arg_area: base.arg_area,
        proxy_port: shape.proxy_port,
        root_by_helper: shape.root_by_helper,
        announce_running: shape.root_by_helper && shape.supervisor_clones,
        // Only the spawner clones with CLONE_PARENT, and it reset its own
        // signals when it started.
        signals_are_default: clone_parent,
    };
    let (pid, pidfd) = clone_sandbox(&plan, clone_parent).map_err(SpawnError::Clone)?;
    // The child has its own copies of the plan, buffers and descriptors.
    drop(sync_child);
    Ok(Spawned {
        pid,
        pidfd,
        sync: sync_parent,
    })
}

/// clone3 into new namespaces; the child runs init and never returns.
/// Not the network namespace: init makes that one itself, while a helper
/// builds its root (see `child.rs`), rather than here before either starts.
fn clone_sandbox(plan: &ChildPlan<'_>, clone_parent: bool) -> io::Result<(libc::pid_t, OwnedFd)> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_PIDFD;
    if clone_parent {
        flags |= libc::CLONE_PARENT;
    }
    let args = CloneArgs {
        flags: flags as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        // With CLONE_PARENT the kernel uses the caller's own exit signal
        // (SIGCHLD: the helper was forked) instead.
        exit_signal: if clone_parent {
            0
        } else {
            libc::SIGCHLD as u64
        },
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a
    // copy of the address space and continues here on its own copy of the
    // stack. In the child only `child::run_init` runs, which is
    // async-signal-safe and never returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if ret == 0 {
        child::run_init(plan);
    }
    // SAFETY: CLONE_PIDFD stored a fresh descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((ret as libc::pid_t, pidfd))
}

/// The start and end of this process's command line in memory: where the
/// kernel put the argument strings, one after the other, each ending in a
/// NUL. Found from the arguments themselves when they check out (see
/// [`arg_area_from_argv`]), else from /proc/self/stat.
pub(crate) fn own_arg_area() -> Option<(usize, usize)> {
    arg_area_from_argv().or_else(arg_area_from_proc)
}

extern "C" {
    /// glibc's copy of `argv[0]`, the pointer itself (argp(3)); the
    /// program may change it, hence `mut`.
    static mut program_invocation_name: *const libc::c_char;
    /// The environment; at start, `environ[0]` is the first string the
    /// kernel put right after the arguments.
    static mut environ: *const *const libc::c_char;
}

/// The argument area from `argv[0]`'s address and the arguments as the
/// standard library kept them (in glibc's `.init_array` hook, which runs
/// without Rust's own start-up too). The kernel lays out, from the start
/// of the area upwards: the arguments, the environment strings, the
/// executable's name (`AT_EXECFN`). So the area is taken only when the
/// arguments' total length ends it exactly where the environment begins,
/// below the executable's name, and then every byte is compared: a pointer
/// changed since (`setprogname`, a copy) or an environment changed since
/// gives `None`, and memory outside the kernel's area is never read. One
/// less file for a new process to open (its first /proc/self read costs
/// ~15 µs).
fn arg_area_from_argv() -> Option<(usize, usize)> {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.is_empty() {
        return None;
    }
    // SAFETY: plain loads of two glibc globals set before main (read
    // through raw pointers: C code may write them).
    let (start, env) = unsafe {
        (
            std::ptr::addr_of!(program_invocation_name).read(),
            std::ptr::addr_of!(environ).read(),
        )
    };
    if start.is_null() || env.is_null() {
        return None;
    }
    // SAFETY: `environ` is a NULL-terminated array: its first element is
    // readable.
    let env_start = unsafe { *env } as usize;
    // SAFETY: getauxval reads the auxiliary vector.
    let execfn = unsafe { libc::getauxval(libc::AT_EXECFN) } as usize;
    let length: usize = args.iter().map(|a| a.as_bytes().len() + 1).sum();
    let end = (start as usize).checked_add(length)?;
    let boundary_checks = env_start == end && execfn != 0 && end <= execfn;
    if !boundary_checks {
        return None;
    }
    let mut at = start;
    for arg in &args {
        for &byte in arg.as_bytes().iter().chain(std::iter::once(&0u8)) {
            // SAFETY: `at` is within [start, end), the kernel's argument
            // area (checked above: it ends where the environment strings
            // begin, below the executable's name).
            if unsafe { *at } as u8 != byte {
                return None;
            }
            // SAFETY: as above; at most `end`, which is not read.
            at = unsafe { at.add(1) };
        }
    }
    Some((start as usize, end))
}

/// The argument area from fields 48 and 49 of /proc/self/stat (after the
/// parenthesised command name, which may itself hold spaces).
fn arg_area_from_proc() -> Option<(usize, usize)> {
    let stat = crate::sys::read_small_file("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state).
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_area_from_argv_is_the_kernels() {
        let from_proc = arg_area_from_proc();
        assert!(from_proc.is_some());
        assert_eq!(arg_area_from_argv(), from_proc);
        assert_eq!(own_arg_area(), from_proc);
    }

    #[test]
    fn a_mount_plan_is_kept_for_the_same_shape_only() {
        let base = InitBase {
            read_only: crate::mounts::default_read_only_paths(),
            landlock_abi: None,
            user_notif: false,
            clear_groups: false,
            last_cap: 40,
            arg_area: None,
            filter: FilterProgram(vec![libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }]),
        };
        let shape = |disk_bytes, extra: &[&str]| InitShape {
            disk_bytes,
            extra_read_only: extra
                .iter()
                .map(|p| ReadOnlyPath {
                    host: p.into(),
                    sandbox: Some("/extra".into()),
                    optional: false,
                })
                .collect(),
            proxy_port: None,
            root_by_helper: true,
            supervisor_clones: true,
        };
        let described = |plan: &MountPlan| format!("{:?}", plan.ops());
        // The root tmpfs's size: the disk limit plus the plan's own files.
        let size = MountPlan::root_size;
        let mut plans = MountPlanCache::default();
        let first = plans.plan_for(&base, &shape(1 << 20, &[])).expect("plan");
        let (first_ops, first_size) = (first.ops().as_ptr(), size(first));
        assert!(first_size > 1 << 20 && first_size < 2 << 20, "{first_size}");

        // The same shape (another proxy port does not change the mounts):
        // the very same plan, not a new one.
        let mut same = shape(1 << 20, &[]);
        same.proxy_port = Some(3128);
        let again = plans.plan_for(&base, &same).expect("plan");
        assert_eq!(again.ops().as_ptr(), first_ops);

        // Another disk size or another read-only path: a plan of its own.
        let bigger = plans.plan_for(&base, &shape(2 << 20, &[])).expect("plan");
        assert_eq!(size(bigger), first_size + (1 << 20));
        let with_share = plans
            .plan_for(&base, &shape(2 << 20, &["/usr/share"]))
            .expect("plan");
        assert!(described(with_share).contains("\"/extra\""));
        let without = plans.plan_for(&base, &shape(2 << 20, &[])).expect("plan");
        assert!(!described(without).contains("\"/extra\""));
    }

    #[test]
    fn a_filter_program_survives_its_wire_form() {
        let program = FilterProgram(vec![
            libc::sock_filter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 4,
            },
            libc::sock_filter {
                code: 0x15,
                jt: 0xfe,
                jf: 0x01,
                k: 0xc000_003e,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            },
        ]);
        let json = serde_json::to_string(&program).expect("serialize");
        let back: FilterProgram = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(Vec::<u64>::from(back), Vec::<u64>::from(program));
    }

    #[test]
    fn an_empty_or_oversized_filter_program_is_refused() {
        assert!(serde_json::from_str::<FilterProgram>("[]").is_err());
        let oversized = serde_json::to_string(&vec![6u64; FILTER_MAX + 1]).expect("json");
        assert!(serde_json::from_str::<FilterProgram>(&oversized).is_err());
    }
}
