//! The orchestrator: one [`Engine`] per process looks at the host once, and
//! [`Engine::run`] runs one sandbox as a script of ordered steps:
//!
//! 1. validate the request (limits against the maxima, paths);
//! 2. decide what can be enforced here, and refuse what cannot (unless the
//!    caller allows a degraded run, which the result then lists);
//! 3. prepare everything the child needs (mount plan, argv, seccomp filter,
//!    Landlock ruleset, rlimits, pipes) — the child may not allocate;
//! 4. lease host ids and create the cgroup;
//! 5. clone into new user, mount, pid, net, ipc and uts namespaces;
//! 6. write the id maps, move the child into its cgroup, let it build its root;
//! 7. copy the inputs into /sandbox through the directory fd it hands over;
//! 8. release the program and supervise it to its end;
//! 9. gather usage, copy outputs, classify, and clean up (cgroup, ids).
//!
//! `Engine` is `Sync`: many threads may run sandboxes at once. Nothing here
//! depends on the caller's current directory, umask or signal handlers.

use crate::cgroups::{Cgroup, CgroupLimits, CgroupUsage, HostCgroups};
use crate::child::{self, Message};
use crate::config::EngineConfig;
use crate::idmap::{self, IdAllocator};
use crate::init_clone::{
    spawn_init, ChildMemory, FilterProgram, InitBase, InitShape, MountPlanCache, SpawnError,
    Spawned,
};
use crate::landlock;
use crate::network::{self, NetworkPlan, RunningProxy};
use crate::result::{classify, IsolationReport, RunResult, Status};
use crate::rlimits::RlimitPlan;
use crate::run_request;
use crate::seccomp::{self, DenyMode, Notifier, Policy};
use crate::spawner::{Spawner, SpawnerError, SpawnerProgram};
use crate::spec::{Limits, SandboxSpec};
use crate::supervisor::{self, Watch};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The sandbox's PATH.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The namespaces every sandbox gets, in the order they appear in reports.
pub const NAMESPACES: &[&str] = &["user", "mount", "pid", "net", "ipc", "uts", "cgroup"];

/// Why the engine could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Caps(#[from] crate::caps::CapsError),
    #[error("cannot read the seccomp policy {path:?}: {source}")]
    SeccompPolicyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What the host offers, looked at once.
pub struct HostFacts {
    pub rootless: bool,
    pub cgroups: Option<HostCgroups>,
    pub landlock_abi: Option<u32>,
    pub user_notif: bool,
    pub last_cap: u32,
    /// This process's argument area (see `ChildPlan::arg_area`).
    pub arg_area: Option<(usize, usize)>,
}

/// A sandbox engine: host facts, compiled filters and the id allocator.
pub struct Engine {
    config: EngineConfig,
    facts: HostFacts,
    policy: &'static Policy,
    ids: IdAllocator,
    /// What every init's plan is made of (for cloning here, without a
    /// spawner).
    init_base: InitBase,
    /// init's buffers, for cloning here.
    child_memory: ChildMemory,
    /// The helper that clones inits, once [`Engine::start_spawner`] has
    /// started it.
    spawner: std::sync::OnceLock<Spawner>,
    /// Every live sandbox's init, for [`Engine::stop_all`].
    live: std::sync::Arc<LiveInits>,
    /// Set by [`Engine::stop_all`]: no new sandbox is built.
    stopping: std::sync::atomic::AtomicBool,
    /// See [`Engine::stop_runs_on`].
    stop_fd: std::sync::OnceLock<OwnedFd>,
    /// Where each run's program's stdout and stderr are copied as they come
    /// (`echo_output_to`).
    echo: std::sync::OnceLock<(OwnedFd, OwnedFd)>,
}

/// The pidfds of an engine's live inits, by registration number.
#[derive(Default)]
struct LiveInits {
    inits: std::sync::Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    last_id: u64,
    pidfds: std::collections::HashMap<u64, OwnedFd>,
}

impl LiveInits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Plain data: a panic elsewhere while holding it leaves it usable.
        self.inits.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One init in [`LiveInits`], removed when dropped (init reaped).
struct Registration {
    live: std::sync::Arc<LiveInits>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.lock().pidfds.remove(&self.id);
    }
}

/// Why a sandbox is refused once [`Engine::stop_all`] was called.
const STOPPING: &str = "formicary is stopping: no new sandbox is started";

/// Numbers this process's runs, for unique cgroup names across every
/// `Engine` of the process.
static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where a run's time went, step by step, when the caller asks
/// (`SandboxSpec::profile`): microseconds since `Engine::run` began at the
/// end of each step. Costs a clock read per step.
struct Profile {
    start: Instant,
    marks: Option<Vec<(String, u64)>>,
}

impl Profile {
    fn new(on: bool) -> Profile {
        Profile {
            start: Instant::now(),
            marks: on.then(Vec::new),
        }
    }

    fn mark(&mut self, step: &str) {
        if let Some(marks) = &mut self.marks {
            marks.push((step.to_string(), self.start.elapsed().as_micros() as u64));
        }
    }
}

/// A setup failure before the program started, with the exit code a CLI
/// should use (125 unless the program itself could not be executed).
fn setup_failure(spec: &SandboxSpec, message: String) -> RunResult {
    RunResult::setup_error(message, spec.limits.clone())
}

fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

impl Engine {
    /// Looks at the host, compiles the seccomp filter, and removes what a
    /// crashed earlier run left behind.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        let rootless = crate::sys::euid() != 0;
        let policy: &'static Policy = match &config.seccomp_policy {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    EngineError::SeccompPolicyFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                Box::leak(Box::new(Policy::from_toml(&text)?))
            }
            None => seccomp::default_policy()?,
        };
        let user_notif = seccomp::user_notif_supported();
        let mode = if user_notif {
            DenyMode::Notify
        } else {
            DenyMode::Errno
        };
        let filter = policy.compile(seccomp::Arch::native(), mode)?;
        // Only a cgroup tree this process may create children in counts
        // (rootless without delegation sees the tree but cannot use it).
        let cgroups = HostCgroups::detect().ok().filter(|h| h.can_create());
        let facts = HostFacts {
            rootless,
            cgroups,
            landlock_abi: landlock::abi_version(),
            user_notif,
            last_cap: crate::caps::last_cap()?,
            arg_area: crate::init_clone::own_arg_area(),
        };
        if let Some(host) = &facts.cgroups {
            let _ = host.cleanup_stale(&config.cgroup_parent, &|name| stale_cgroup(name));
        }
        let ids = IdAllocator::new(
            rootless,
            &config.state_dir,
            config.uid_base,
            config.uid_count,
        );
        let init_base = InitBase {
            read_only: config.read_only.clone(),
            landlock_abi: facts.landlock_abi,
            user_notif: facts.user_notif,
            clear_groups: !facts.rootless,
            last_cap: facts.last_cap,
            arg_area: facts.arg_area,
            filter: FilterProgram::new(filter.instructions()),
        };
        Ok(Engine {
            config,
            facts,
            policy,
            ids,
            init_base,
            child_memory: ChildMemory::new(),
            spawner: std::sync::OnceLock::new(),
            live: std::sync::Arc::new(LiveInits::default()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop_fd: std::sync::OnceLock::new(),
            echo: std::sync::OnceLock::new(),
        })
    }

    /// From now on, clone every sandbox's init from a small
    /// single-threaded helper process, `program`, instead of the calling
    /// thread (see `spawner.rs`): the same sandbox, without the cost a
    /// clone of a large multithreaded supervisor puts on its other threads
    /// (page tables copied, copy-on-write faults and TLB shootdowns).
    /// Worth it for a long-lived process serving many sandboxes from
    /// several threads, such as one with a [`crate::pool::SandboxPool`]; a
    /// one-shot run is faster without (the helper's start costs about a
    /// millisecond). Does nothing if a helper was started already. The
    /// helper lives as long as the engine; if it dies, the request that
    /// finds it gone fails and the next one starts a new helper.
    pub fn start_spawner(&self, program: &SpawnerProgram) -> Result<(), SpawnerError> {
        if self.spawner.get().is_some() {
            return Ok(());
        }
        let spawner = Spawner::start(&self.init_base, program)?;
        // Two threads may race here: the loser's helper is stopped.
        let _ = self.spawner.set(spawner);
        Ok(())
    }

    /// Ends every sandbox of this engine at once (SIGKILL to each init; the
    /// runs in progress then end, and their callers take the sandboxes
    /// down as usual), and refuses to build any more: for a front end that
    /// was asked to stop (SIGINT, SIGTERM). Returns how many were live.
    pub fn stop_all(&self) -> usize {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let inits = self.live.lock();
        for pidfd in inits.pidfds.values() {
            let _ = crate::sys::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
        }
        inits.pidfds.len()
    }

    /// From now on, a run whose program is running ends at once (init
    /// killed, the sandbox taken down as usual) when `fd` is readable: a
    /// signalfd of the signals that should stop a front end, an eventfd or
    /// a pipe. The supervisor polls it with the run's other descriptors and
    /// never reads it, so the caller can tell afterwards what came. Set
    /// once; returns `fd` back if one was set already. (For a front end
    /// that stops on a signal without a thread of its own; from another
    /// thread, [`Engine::stop_all`] does the same.)
    pub fn stop_runs_on(&self, fd: OwnedFd) -> Result<(), OwnedFd> {
        self.stop_fd.set(fd)
    }

    /// From now on, the output of each run's program (its last stage; not
    /// a compile stage's) is copied to `stdout` and `stderr` as the
    /// supervisor reads it, so a front end can pass it through while the
    /// program runs, in the order it came. It is still kept in the result
    /// (up to the output limit, like the copy). Give non-blocking
    /// descriptors: a blocking one that a reader does not drain holds the
    /// supervisor up, and the limits with it; a non-blocking one never
    /// does, and what its reader has not taken yet goes after the program
    /// ends. A reader that goes away ends the copy (the caller should
    /// ignore `SIGPIPE`, as Rust programs do). For one-shot front ends that
    /// run one program at a time; set once, and returns the descriptors
    /// back if some were set already.
    pub fn echo_output_to(
        &self,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<(), (OwnedFd, OwnedFd)> {
        self.echo.set((stdout, stderr))
    }

    /// How many sandboxes of this engine have an init not yet reaped.
    pub fn live_sandboxes(&self) -> usize {
        self.live.lock().pidfds.len()
    }

    /// Whether [`Engine::stop_all`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Registers init's pidfd; None, and init killed, when the engine is
    /// stopping (a sandbox cloned while `stop_all` ran).
    fn register(&self, child: &ChildGuard) -> Result<Registration, String> {
        let pidfd = child
            .pidfd
            .try_clone()
            .map_err(|e| format!("cannot keep a descriptor of the sandbox's init: {e}"))?;
        let id = {
            let mut inits = self.live.lock();
            inits.last_id += 1;
            let id = inits.last_id;
            inits.pidfds.insert(id, pidfd);
            id
        };
        let registration = Registration {
            live: std::sync::Arc::clone(&self.live),
            id,
        };
        if self.is_stopping() {
            return Err(STOPPING.to_string());
        }
        Ok(registration)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn facts(&self) -> &HostFacts {
        &self.facts
    }

    /// Runs one sandbox and reports what happened. Never panics on bad
    /// input: every failure is a result with status `setup_error`. With
    /// `before` stages, this is the main program's result, or the result of
    /// the stage that failed and stopped the run.
    pub fn run(&self, spec: &SandboxSpec) -> RunResult {
        self.finish_staged(spec, self.run_staged(spec))
    }

    /// The one result of a staged run: the main program's, or the result
    /// of the stage that failed and stopped the run.
    pub fn finish_staged(&self, spec: &SandboxSpec, staged: StagedResult) -> RunResult {
        match staged.main {
            Some(main) => main,
            None => staged
                .before
                .into_iter()
                .last()
                .unwrap_or_else(|| setup_failure(spec, "nothing ran".to_string())),
        }
    }

    /// Runs `spec.before` stages and then the main program, one after the
    /// other in the same sandbox: same namespaces and the same /sandbox and
    /// /tmp, each stage with its own limits, output and result. A stage
    /// that does not end with status `ok` stops the run.
    pub fn run_staged(&self, spec: &SandboxSpec) -> StagedResult {
        match self.run_inner(spec) {
            Ok(result) => result,
            Err(message) => StagedResult {
                before: Vec::new(),
                main: Some(setup_failure(spec, message)),
            },
        }
    }

    fn run_inner(&self, spec: &SandboxSpec) -> Result<StagedResult, String> {
        let stages = stages_of(spec);
        self.validate(spec, &stages)?;
        // The cgroup gets the first stage's limits at once: the update
        // before the run request then has nothing to write.
        let prepared = self.prepare_with(
            &SandboxShape::of(spec),
            &cgroup_limits(stages[0].limits),
            Urgency::Waited,
            spec.profile,
            EarlyRequest::of(spec, &stages),
        )?;
        let (staged, teardown) = self.serve(prepared, spec, &stages);
        Ok(teardown.finish(staged))
    }

    /// Whether the engine would accept `spec`: its limits against the
    /// maxima, its paths, and what this host can enforce. Touches nothing.
    pub fn check(&self, spec: &SandboxSpec) -> Result<(), String> {
        self.validate(spec, &stages_of(spec))
    }

    /// Steps 1 and 2: the request against the maxima, and what this host
    /// can enforce. Touches nothing on the system.
    fn validate(&self, spec: &SandboxSpec, stages: &[StageRef<'_>]) -> Result<(), String> {
        if stages.len() > child::MAX_STAGES {
            return Err(format!(
                "at most {} stages run in one sandbox, {} were given",
                child::MAX_STAGES,
                stages.len()
            ));
        }
        for stage in stages {
            stage
                .limits
                .validate(&self.config.max)
                .map_err(|e| e.to_string())?;
        }
        spec.network
            .validate_limits(&self.config.network)
            .map_err(|e| e.to_string())?;
        for f in &spec.files {
            crate::workspace::validate_sandbox_path(&f.sandbox_path).map_err(|e| e.to_string())?;
        }
        for f in &spec.inline_files {
            crate::workspace::validate_sandbox_path(&f.sandbox_path).map_err(|e| e.to_string())?;
        }
        if !spec.workdir.starts_with('/') {
            return Err(format!(
                "working directory {:?} must be absolute",
                spec.workdir
            ));
        }
        if let Some(out) = &spec.outputs {
            // Found out before the run, not after it: the result would be lost.
            if out.host_dir.exists() && !out.host_dir.is_dir() {
                return Err(format!(
                    "output directory {:?} exists and is not a directory",
                    out.host_dir
                ));
            }
        }
        let not_enforced = self.not_enforced();
        if !not_enforced.is_empty() && !spec.allow_degraded {
            return Err(format!(
                "cannot enforce on this host: {}. {} Run `formicary check` for details, or pass --allow-degraded to run anyway.",
                not_enforced.join(", "),
                if self.facts.rootless {
                    "Rootless runs need a cgroup tree this user may create cgroups in, under [cgroup] parent (delegated cgroup v2 subtrees are not supported yet); or run as root."
                } else {
                    "Mount the cgroup memory, pids and cpuacct controllers (v1) or a cgroup2 tree with them enabled."
                }
            ));
        }
        Ok(())
    }

    /// The limits this host cannot enforce.
    fn not_enforced(&self) -> Vec<String> {
        let mut not_enforced = Vec::new();
        if self.facts.cgroups.is_none() {
            not_enforced.push("memory limit (no usable cgroup)".to_string());
            not_enforced.push("pids limit (no usable cgroup)".to_string());
            not_enforced
                .push("cpu-time limit across processes (per-process RLIMIT_CPU only)".to_string());
        }
        not_enforced
    }

    /// Builds a sandbox of `shape` up to the point where it waits for its
    /// run request. Its init dies when the thread that cloned it ends (the
    /// parent-death signal follows the creating thread): without a spawner
    /// ([`Engine::start_spawner`]) that is the thread that called this,
    /// so call it from a thread that outlives the sandbox, as
    /// `SandboxPool`'s builder does; with one, the spawner's thread, which
    /// lives as long as the engine.
    /// What it builds: namespaces, id maps, cgroup (with the engine's default
    /// limits until the request sets its own), root filesystem, and the
    /// network proxy if the shape has network. A sandbox so built serves
    /// exactly one request ([`Engine::run_prepared`]) and is never reused.
    pub fn prepare(&self, shape: &SandboxShape) -> Result<PreparedSandbox, String> {
        self.prepare_with(
            shape,
            &cgroup_limits(&self.config.defaults),
            Urgency::Ahead,
            false,
            None,
        )
    }

    fn prepare_with(
        &self,
        shape: &SandboxShape,
        limits: &CgroupLimits,
        urgency: Urgency,
        profile_on: bool,
        early: Option<EarlyRequest<'_>>,
    ) -> Result<PreparedSandbox, String> {
        if self.is_stopping() {
            return Err(STOPPING.to_string());
        }
        let mut profile = Profile::new(profile_on);
        profile.mark("validate");
        // 3. Prepare what init needs before the clone (it may not
        // allocate): the network plan here; the mount plan (one writable
        // tmpfs for every stage), Landlock and the buffers for its run
        // request where it is cloned (`spawner::spawn_init`).
        let network = NetworkPlan::prepare(&shape.network).map_err(|e| e.to_string())?;
        let init_shape = InitShape {
            disk_bytes: shape.disk_bytes,
            extra_read_only: shape.extra_read_only.clone(),
            proxy_port: network.as_ref().map(|_| network::PROXY_PORT),
            root_by_helper: urgency == Urgency::Waited,
            supervisor_clones: self.spawner.get().is_none(),
        };
        profile.mark("prepare the child's plan");

        // 4. Ids. (The cgroup is created once the child is cloned, while
        // it builds its root.)
        let host_ids = self.ids.acquire().map_err(|e| e.to_string())?;
        let isolation = IsolationReport {
            namespaces: NAMESPACES.iter().map(|s| s.to_string()).collect(),
            seccomp: Some(if self.facts.user_notif {
                "allow-list, denials recorded (user notification)".to_string()
            } else {
                "allow-list, denials not recorded (no user notification on this kernel)".to_string()
            }),
            landlock_abi: self.facts.landlock_abi,
            cgroup: self
                .facts
                .cgroups
                .as_ref()
                .and_then(|h| h.version())
                .map(|v| v.to_string()),
            host_uid: host_ids.uid,
            host_gid: host_ids.gid,
            rootless: self.facts.rootless,
            not_enforced: self.not_enforced(),
        };
        profile.mark("lease host ids");

        // 5. Clone: init's plan (mounts, Landlock, seccomp, its buffers)
        // and the clone itself, in the spawner when there is one.
        let spawned = match self.spawner.get() {
            Some(spawner) => spawner.spawn(&init_shape),
            None => spawn_init(
                &self.init_base,
                &self.child_memory,
                &mut MountPlanCache::default(),
                &init_shape,
                false,
            ),
        }
        .map_err(|e| match e {
            SpawnError::Plan(message) | SpawnError::Spawner(message) => message,
            SpawnError::Clone(e) => format!(
                "cannot create the sandbox's namespaces: {e}{}",
                clone_hint(&e)
            ),
        })?;
        profile.mark("clone into new namespaces");
        let Spawned {
            pid,
            pidfd,
            sync: sync_parent,
        } = spawned;
        // From here every early return drops the teardown: init killed,
        // then its cgroup removed, then the ids released.
        let mut teardown = Teardown {
            child: Some(ChildGuard {
                pid,
                pidfd,
                reaped: false,
                registration: None,
            }),
            cgroup: None,
            host_ids: None,
        };
        if let Some(child) = teardown.child.as_mut() {
            // On failure (stopping), the teardown kills init.
            child.registration = Some(self.register(child)?);
        }

        // 6. Maps, then init builds its root while the cgroup is created
        // and init moved into it (two cores' work at once, once init runs:
        // `Message::RUNNING`; init enters its cgroup namespace only after
        // its run request).
        let owner = (host_ids.uid, host_ids.gid);
        let maps = idmap::write_maps(pid, &host_ids, self.facts.rootless);
        teardown.host_ids = Some(host_ids);
        maps.map_err(|e| e.to_string())?;
        crate::sys::write_all(sync_parent.as_fd(), b"G")
            .map_err(|e| format!("sandbox init died early: {e}"))?;
        profile.mark("write id maps");
        if init_shape.root_by_helper && init_shape.supervisor_clones {
            // Asleep until init runs: see `Message::RUNNING`.
            expect_running(&sync_parent)?;
            profile.mark("init: running");
        }
        if let Some(host) = &self.facts.cgroups {
            let name = format!(
                "{}-{}",
                std::process::id(),
                RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let cg = teardown.cgroup.insert(
                host.create(&self.config.cgroup_parent, &name, limits)
                    .map_err(|e| e.to_string())?,
            );
            cg.add_process(pid).map_err(|e| e.to_string())?;
        }
        profile.mark("create the cgroup, move init into it");
        // The proxy's socket comes first, before init builds its root.
        let proxy = match &network {
            Some(plan) => {
                let socket = expect_proxy_socket(&sync_parent)?;
                Some(RunningProxy::start(plan, socket).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let sent = match early {
            Some(request) if proxy.is_none() => {
                let sent = self.send_run_request(
                    request.spec,
                    request.stages,
                    owner,
                    teardown.cgroup.as_deref(),
                    false,
                    &sync_parent,
                    &mut profile,
                );
                match sent {
                    Ok(fds) => Some(fds),
                    // init may have failed first: its own reason (read
                    // by expect_ready) says more than a broken socket.
                    Err(message) => {
                        expect_ready(&sync_parent)?;
                        return Err(message);
                    }
                }
            }
            _ => None,
        };
        let sandbox_dir = expect_ready(&sync_parent)?;
        profile.mark("init: mounts and pivot_root");
        Ok(PreparedSandbox {
            shape: shape.clone(),
            teardown,
            sync: sync_parent,
            sandbox_dir,
            proxy,
            sent,
            isolation,
            profile,
        })
    }

    /// Runs `spec` in a sandbox built ahead for its shape. The sandbox is
    /// used up: a result comes back whatever happens, and the sandbox is
    /// taken down.
    pub fn run_prepared(&self, prepared: PreparedSandbox, spec: &SandboxSpec) -> StagedResult {
        let (staged, teardown) = self.run_prepared_deferred(prepared, spec);
        teardown.finish(staged)
    }

    /// As [`Engine::run_prepared`], but the sandbox's teardown (its init's
    /// exit and reaping, the cgroup's removal, the ids' release) is left
    /// to the caller, to do off the request's path: the result is complete.
    pub fn run_prepared_deferred(
        &self,
        prepared: PreparedSandbox,
        spec: &SandboxSpec,
    ) -> (StagedResult, Teardown) {
        let mut prepared = prepared;
        let checked = self.check(spec).and_then(|()| {
            if prepared.shape.fits(spec) {
                Ok(())
            } else {
                Err("this request needs a sandbox of another shape (disk size, read-only paths or network) than the one prepared".to_string())
            }
        });
        match checked {
            Ok(()) => self.run_prepared_checked(prepared, spec),
            Err(message) => (
                StagedResult {
                    before: Vec::new(),
                    main: Some(setup_failure(spec, message)),
                },
                std::mem::take(&mut prepared.teardown),
            ),
        }
    }

    /// As [`Engine::run_prepared_deferred`], for a request already checked
    /// ([`Engine::check`]) and known to fit the sandbox's shape.
    pub(crate) fn run_prepared_checked(
        &self,
        mut prepared: PreparedSandbox,
        spec: &SandboxSpec,
    ) -> (StagedResult, Teardown) {
        if spec.profile && prepared.profile.marks.is_none() {
            // Built ahead: the run's own steps are what matter.
            prepared.profile = Profile::new(true);
        }
        self.serve(prepared, spec, &stages_of(spec))
    }

    /// Steps 7 to 9: inputs, the run request, each stage, outputs.
    fn serve(
        &self,
        prepared: PreparedSandbox,
        spec: &SandboxSpec,
        stages: &[StageRef<'_>],
    ) -> (StagedResult, Teardown) {
        let PreparedSandbox {
            shape: _,
            mut teardown,
            sync,
            sandbox_dir,
            proxy,
            sent,
            isolation,
            mut profile,
        } = prepared;
        let result = self.serve_inner(
            spec,
            stages,
            &mut teardown,
            sync,
            sandbox_dir,
            proxy,
            sent,
            &mut profile,
        );
        let mut staged = match result {
            Ok(staged) => staged,
            Err(message) => StagedResult {
                before: Vec::new(),
                main: Some(setup_failure(spec, message)),
            },
        };
        for result in staged.before.iter_mut().chain(staged.main.iter_mut()) {
            result.isolation = isolation.clone();
        }
        if let Some(last) = staged.main.as_mut().or(staged.before.last_mut()) {
            last.profile = profile.marks;
        }
        (staged, teardown)
    }

    #[allow(clippy::too_many_arguments)]
    fn serve_inner(
        &self,
        spec: &SandboxSpec,
        stages: &[StageRef<'_>],
        teardown: &mut Teardown,
        sync: OwnedFd,
        sandbox_dir: OwnedFd,
        proxy: Option<RunningProxy>,
        sent: Option<Vec<StageFds>>,
        profile: &mut Profile,
    ) -> Result<StagedResult, String> {
        let host_ids = teardown
            .host_ids
            .as_ref()
            .ok_or("the prepared sandbox has no host ids")?;
        let (uid, gid) = (host_ids.uid, host_ids.gid);
        let cgroup = teardown.cgroup.as_deref();
        let child = teardown
            .child
            .as_ref()
            .ok_or("the prepared sandbox has no init")?;

        // 7. Inputs, then the run request (unless it went ahead of the
        // root: see `EarlyRequest`).
        let mut stage_fds = match sent {
            Some(fds) => fds,
            None => {
                crate::workspace::copy_in(
                    sandbox_dir.as_fd(),
                    &spec.files,
                    &spec.inline_files,
                    &|f| crate::sys::with_fs_ids(uid, gid, f),
                )
                .map_err(|e| e.to_string())?;
                profile.mark("copy inputs in");
                self.send_run_request(
                    spec,
                    stages,
                    (uid, gid),
                    cgroup,
                    proxy.is_some(),
                    &sync,
                    profile,
                )?
            }
        };

        // 8. Each stage: release it, supervise it, read what it did.
        let pid = child.pid;
        let mut sync_open = Some(sync);
        let mut results = Vec::with_capacity(stages.len());
        let mut notifier: Option<Notifier> = None;
        let mut answered = 0u64;
        for (index, stage) in stages.iter().enumerate() {
            let last = index + 1 == stages.len();
            let baseline = match cgroup {
                Some(cg) => {
                    if index > 0 {
                        cg.update_limits(&cgroup_limits(stage.limits))
                            .map_err(|e| {
                                format!(
                                    "cannot apply the limits of stage {}: {e} (what earlier stages left in /sandbox and /tmp counts toward memory: raise --memory)",
                                    index + 1
                                )
                            })?;
                        let _ = cg.reset_peak();
                    }
                    cg.usage().ok()
                }
                None => None,
            };
            let sync_fd = sync_open
                .as_ref()
                .ok_or("the sandbox's init was released too early")?;
            if index == 0 {
                // The run request was the go-ahead; the seccomp listener
                // arrives just before the first program starts.
                notifier = expect_listener(sync_fd, self.facts.user_notif)?.map(Notifier::new);
                profile.mark("init: privileges, Landlock, seccomp");
            } else {
                crate::sys::write_all(sync_fd.as_fd(), b"G")
                    .map_err(|e| format!("the sandbox's init is gone: {e}"))?;
            }
            let (stdout_r, stderr_r) = stage_fds[index].take_readers()?;
            let started = Instant::now();
            let started_wall = wall_clock_now();
            let outcome = supervisor::supervise(
                Watch {
                    sync: sync_fd.as_fd(),
                    stdout: stdout_r,
                    stderr: stderr_r,
                    init_pidfd: child.pidfd.as_fd(),
                    cgroup,
                    policy: self.policy,
                    wall_limit: Duration::from_millis(stage.limits.wall_time_ms),
                    cpu_limit: Duration::from_millis(stage.limits.cpu_time_ms),
                    output_limit: stage.limits.output_bytes,
                    cpu_baseline_ns: baseline.as_ref().map_or(0, |u| u.cpu_time_ns),
                    init_pid: pid,
                    stop: self.stop_fd.get().map(|f| f.as_fd()),
                    echo: self
                        .echo
                        .get()
                        .filter(|_| last)
                        .map(|(out, err)| supervisor::Echo {
                            stdout: out.as_fd(),
                            stderr: err.as_fd(),
                        }),
                },
                notifier.as_ref(),
                &mut answered,
                started,
            );
            if last {
                profile.mark("the program, until its end");
                // Let init go now: the kernel tears the namespaces down on
                // the other core while this one reads the results.
                sync_open = None;
            }
            let result = self.stage_result(
                spec,
                stage,
                last,
                outcome,
                cgroup,
                baseline.as_ref(),
                sandbox_dir.as_fd(),
                started_wall,
            )?;
            let ok = result.status == Status::Ok;
            results.push(result);
            if !ok {
                break;
            }
        }
        // 9. Let init go (its exit takes the namespaces down), if a failed
        // stage has not already. Every process of the sandbox is gone or
        // going: its connections are closed, and the proxy's log is
        // complete once the proxy has stopped.
        drop(sync_open);
        if let Some(proxy) = proxy {
            let report = proxy.finish();
            if let Some(last) = results.last_mut() {
                last.network = Some(report);
            }
            profile.mark("stop the network proxy");
        }
        let main = if results.len() == stages.len() {
            results.pop()
        } else {
            None
        };
        Ok(StagedResult {
            before: results,
            main,
        })
    }

    /// Step 7's run request: each stage's plan and descriptors, the
    /// cgroup's first limits, the request sent. Returns the stages'
    /// descriptors with only the supervisor's ends left.
    #[allow(clippy::too_many_arguments)]
    fn send_run_request(
        &self,
        spec: &SandboxSpec,
        stages: &[StageRef<'_>],
        owner: (u32, u32),
        cgroup: Option<&dyn Cgroup>,
        with_proxy: bool,
        sync: &OwnedFd,
        profile: &mut Profile,
    ) -> Result<Vec<StageFds>, String> {
        let network_env = if with_proxy {
            network::proxy_environment()
        } else {
            Vec::new()
        };
        let mut prepared = Vec::with_capacity(stages.len());
        let mut stage_fds = Vec::with_capacity(stages.len());
        for stage in stages {
            let (p, fds) = PreparedStage::new(stage, &network_env, owner)?;
            prepared.push(p);
            stage_fds.push(fds);
        }
        if let Some(cg) = cgroup {
            // Writes only what differs from the limits it was built with.
            cg.update_limits(&cgroup_limits(stages[0].limits))
                .map_err(|e| format!("cannot apply the run's limits to its cgroup: {e}"))?;
        }
        let workdir = CString::new(spec.workdir.as_bytes())
            .map_err(|_| "working directory contains NUL".to_string())?;
        let init_rlimits =
            RlimitPlan::from_limits(&highest_limits(stages)).map_err(|e| e.to_string())?;
        let requests: Vec<run_request::StageRequest<'_>> = prepared
            .iter()
            .zip(&stage_fds)
            .map(|(p, fds)| p.request(fds.stdin.is_some()))
            .collect();
        let request =
            run_request::encode(&workdir, &init_rlimits, &requests).map_err(|e| e.to_string())?;
        let mut fds = Vec::with_capacity(3 * stages.len());
        for f in &stage_fds {
            fds.extend(f.child_ends());
        }
        send_request(sync, run_request::as_bytes(&request), &fds)?;
        // init holds its own copies now.
        for f in stage_fds.iter_mut() {
            f.drop_child_ends();
        }
        profile.mark("send the run request");
        Ok(stage_fds)
    }

    /// The result of one stage, from what the supervisor saw and what the
    /// cgroup counted since the stage began. Outputs are collected after
    /// the last stage.
    #[allow(clippy::too_many_arguments)]
    fn stage_result(
        &self,
        spec: &SandboxSpec,
        stage: &StageRef<'_>,
        last: bool,
        outcome: supervisor::Outcome,
        cgroup: Option<&dyn Cgroup>,
        baseline: Option<&CgroupUsage>,
        sandbox_dir: BorrowedFd<'_>,
        started_wall: (i64, i64),
    ) -> Result<RunResult, String> {
        let usage = cgroup.and_then(|c| c.usage().ok());
        let mut observed = outcome.observed.clone();
        if let Some(u) = &usage {
            let before = baseline.cloned().unwrap_or_default();
            observed.oom_killed = u.oom_kills > before.oom_kills;
            observed.pids_limit_reached = u.pids_limit_hits > before.pids_limit_hits;
        }
        if let Ok((free_blocks, free_inodes)) = crate::sys::free_space(sandbox_dir) {
            observed.disk_full = free_blocks == 0 || free_inodes == 0;
        }
        let limits = stage.limits;
        if !observed.file_size_exceeded && limits.file_size_bytes < limits.disk_bytes {
            observed.file_size_exceeded = crate::workspace::any_file_at_least(
                sandbox_dir,
                limits.file_size_bytes,
                started_wall,
            );
        }
        if let Some(errno) = outcome.exec_errno {
            let code = if errno == libc::ENOENT { 127 } else { 126 };
            let mut r = setup_failure(
                spec,
                format!("cannot execute {:?}: {}", stage.program, strerror(errno)),
            );
            r.limits = limits.clone();
            r.exit_code = Some(code);
            (r.stderr, r.stderr_raw) = crate::result::decode_output(&outcome.stderr.bytes);
            return Ok(r);
        }
        if let Some((step, errno)) = &outcome.failure {
            return Err(format!(
                "sandbox setup failed: {step}: {}",
                strerror(*errno)
            ));
        }
        // A run the supervisor ended never reports an exit: its init was
        // SIGKILLed, and so was the program with it. The same when the OOM
        // killer took init itself (possible rootless, where init cannot be
        // protected).
        let supervisor_killed =
            observed.wall_time_exceeded || observed.cpu_time_exceeded || observed.output_exceeded;
        let exit = match outcome.exit {
            None if supervisor_killed || observed.oom_killed => {
                Some(crate::result::Exit::Signal(libc::SIGKILL))
            }
            other => other,
        };
        let cpu_time_ms = match (&usage, baseline) {
            (Some(u), Some(b)) => u.cpu_time_ns.saturating_sub(b.cpu_time_ns) / 1_000_000,
            _ => outcome.reaped_cpu_us / 1000,
        };
        // A program may kill itself with SIGXCPU: that names the CPU limit
        // only when the CPU time was really spent.
        observed.cpu_time_measured_over = cpu_time_ms + 1000 >= limits.cpu_time_ms;
        let (status, limits_hit) = classify(exit, &observed);
        let (files, skipped) = match (&spec.outputs, last) {
            (Some(out), true) => {
                crate::workspace::copy_out(sandbox_dir, out).map_err(|e| e.to_string())?
            }
            _ => (Vec::new(), Vec::new()),
        };
        let memory_peak_bytes = match &usage {
            Some(u) => u.memory_peak_bytes,
            None => outcome.reaped_max_rss_kb * 1024,
        };
        let mut notes = Vec::new();
        if status == Status::SetupError {
            notes.push("the sandbox's init ended without reporting the program's exit".to_string());
        }
        if outcome.denials_throttled {
            notes.push(format!(
                "the program made more than {} denied system calls; formicary stopped answering them, and the calls after that blocked until the run ended",
                supervisor::MAX_ANSWERED_DENIALS
            ));
        }
        if !skipped.is_empty() {
            notes.push(format!(
                "output files not copied: {}",
                skipped
                    .iter()
                    .map(|s| format!("{} ({})", s.path, s.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let error = if notes.is_empty() {
            None
        } else {
            Some(notes.join("; "))
        };
        let (stdout, stdout_raw) = crate::result::decode_output(&outcome.stdout.bytes);
        let (stderr, stderr_raw) = crate::result::decode_output(&outcome.stderr.bytes);
        Ok(RunResult {
            status,
            exit_code: match exit {
                Some(crate::result::Exit::Code(c)) => Some(c),
                _ => None,
            },
            signal: match exit {
                Some(crate::result::Exit::Signal(s)) => Some(s),
                _ => None,
            },
            stdout,
            stderr,
            stdout_truncated: outcome.stdout.truncated,
            stderr_truncated: outcome.stderr.truncated,
            stdout_raw,
            stderr_raw,
            wall_time_ms: outcome.wall.as_millis() as u64,
            cpu_time_ms,
            memory_peak_bytes,
            limits_hit,
            denied_syscalls: outcome.denied,
            files,
            limits: limits.clone(),
            isolation: IsolationReport::default(),
            error,
            profile: None,
            network: None,
        })
    }
}

/// The wall clock as (seconds, nanoseconds), comparable with file mtimes
/// (coarse by a tick: a file written in the same tick still counts).
fn wall_clock_now() -> (i64, i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // File times are taken from a coarse clock that may lag the precise
    // one by up to a tick: start the window 10 ms early.
    let t = now.saturating_sub(Duration::from_millis(10));
    (t.as_secs() as i64, t.subsec_nanos() as i64)
}

/// What `Engine::run_staged` returns: the results of the stages that ran
/// before the main program, and the main program's (None when a stage
/// before it failed).
#[derive(Debug, Clone)]
pub struct StagedResult {
    pub before: Vec<RunResult>,
    pub main: Option<RunResult>,
}

impl StagedResult {
    /// No result at all (for a teardown with nothing to report).
    pub fn empty() -> StagedResult {
        StagedResult {
            before: Vec::new(),
            main: None,
        }
    }
}

/// One program of a staged run, borrowed from the spec.
struct StageRef<'s> {
    program: &'s str,
    args: &'s [String],
    env: &'s [(String, String)],
    stdin: &'s [u8],
    limits: &'s Limits,
}

/// The spec's stages in order: `before`, then the main program.
fn stages_of(spec: &SandboxSpec) -> Vec<StageRef<'_>> {
    spec.before
        .iter()
        .map(|s| StageRef {
            program: &s.program,
            args: &s.args,
            env: &s.env,
            stdin: &s.stdin,
            limits: &s.limits,
        })
        .chain(std::iter::once(StageRef {
            program: &spec.program,
            args: &spec.args,
            env: &spec.env,
            stdin: &spec.stdin,
            limits: &spec.limits,
        }))
        .collect()
}

/// For each limit, the highest any stage has: init's own rlimits, which
/// each stage's program then lowers to its own.
fn highest_limits(stages: &[StageRef<'_>]) -> Limits {
    stages
        .iter()
        .fold(stages[0].limits.clone(), |top, s| top.highest(s.limits))
}

fn cgroup_limits(limits: &Limits) -> CgroupLimits {
    // The sandbox's init is one of the cgroup's processes; the pids limit
    // is the program's.
    CgroupLimits {
        memory_bytes: limits.memory_bytes,
        pids: limits.pids + 1,
    }
}

/// A stage's exec data, made before the clone (init only reads it).
struct PreparedStage {
    exec: ExecPlan,
    rlimits: RlimitPlan,
}

/// A stage's descriptors: the child's ends are dropped after the clone,
/// the read ends taken when the stage is supervised.
struct StageFds {
    stdin: Option<OwnedFd>,
    stdout_r: Option<OwnedFd>,
    stdout_w: Option<OwnedFd>,
    stderr_r: Option<OwnedFd>,
    stderr_w: Option<OwnedFd>,
}

impl PreparedStage {
    /// `network_env` comes before the stage's own variables, which may
    /// override it. `owner`: the sandbox's host uid and gid, which its
    /// output pipes are given to.
    fn new(
        stage: &StageRef<'_>,
        network_env: &[(String, String)],
        owner: (u32, u32),
    ) -> Result<(PreparedStage, StageFds), String> {
        let env: Vec<(String, String)> = network_env.iter().chain(stage.env).cloned().collect();
        let exec = ExecPlan::new(stage.program, stage.args, &env)?;
        let rlimits = RlimitPlan::from_limits(stage.limits).map_err(|e| e.to_string())?;
        let stdin = if stage.stdin.is_empty() {
            None
        } else {
            Some(
                crate::sys::sealed_memfd(c"stdin", stage.stdin)
                    .map_err(|e| format!("cannot hold stdin: {e}"))?,
            )
        };
        let (out_r, out_w) =
            crate::sys::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let (err_r, err_w) =
            crate::sys::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        // The program's own stdout and stderr are its to open again, as
        // `/dev/stdout`, `/dev/stderr` or `/proc/self/fd/N`, which checks
        // the pipe's owner and mode (0600): owned by the supervisor, it
        // is nobody's inside and the open fails with EACCES.
        for pipe in [&out_w, &err_w] {
            crate::sys::fchown(pipe.as_fd(), owner.0, owner.1)
                .map_err(|e| format!("cannot give an output pipe to the sandbox's user: {e}"))?;
        }
        Ok((
            PreparedStage { exec, rlimits },
            StageFds {
                stdin,
                stdout_r: Some(out_r),
                stdout_w: Some(out_w),
                stderr_r: Some(err_r),
                stderr_w: Some(err_w),
            },
        ))
    }

    fn request(&self, has_stdin: bool) -> run_request::StageRequest<'_> {
        run_request::StageRequest {
            rlimits: self.rlimits.clone(),
            has_stdin,
            argv: &self.exec.argv,
            envp: &self.exec.envp,
            candidates: &self.exec.candidates,
        }
    }
}

impl StageFds {
    /// The descriptors init gets for this stage, in the run request's
    /// order: stdin (if any), stdout, stderr.
    fn child_ends(&self) -> Vec<libc::c_int> {
        self.stdin
            .iter()
            .chain(self.stdout_w.iter())
            .chain(self.stderr_w.iter())
            .map(|f| f.as_raw_fd())
            .collect()
    }

    /// Once init has its copies, the supervisor keeps only the read ends.
    fn drop_child_ends(&mut self) {
        self.stdin = None;
        self.stdout_w = None;
        self.stderr_w = None;
    }

    fn take_readers(&mut self) -> Result<(OwnedFd, OwnedFd), String> {
        match (self.stdout_r.take(), self.stderr_r.take()) {
            (Some(out), Some(err)) => Ok((out, err)),
            _ => Err("a stage's output pipes were used twice".to_string()),
        }
    }
}

/// A cgroup name is `<pid>-<n>`; it is stale when that pid is gone.
fn stale_cgroup(name: &str) -> bool {
    match name.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        None => false,
    }
}

fn clone_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSPC) => {
            " (user namespaces may be disabled: check kernel.unprivileged_userns_clone, user.max_user_namespaces and AppArmor's restrict_unprivileged_userns; `formicary check` tells)"
        }
        _ => "",
    }
}

/// Sends the run request: its first packet with the stages' descriptors,
/// the rest in packets a socket buffer always holds.
fn send_request(sync: &OwnedFd, bytes: &[u8], fds: &[libc::c_int]) -> Result<(), String> {
    const PACKET: usize = 64 * 1024;
    let gone =
        |e: std::io::Error| format!("cannot send the run request to the sandbox's init: {e}");
    let mut chunks = bytes.chunks(PACKET);
    let first = chunks.next().unwrap_or(&[]);
    crate::sys::send_with_fds(sync.as_fd(), first, fds).map_err(gone)?;
    for chunk in chunks {
        crate::sys::send_with_fds(sync.as_fd(), chunk, &[]).map_err(gone)?;
    }
    Ok(())
}

/// What a sandbox is built for before any request: the parts of a spec
/// that shape the sandbox itself rather than a run in it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxShape {
    /// Size of the one writable tmpfs (/sandbox, /tmp, /dev/shm): the
    /// largest disk limit of the spec's stages.
    pub disk_bytes: u64,
    pub extra_read_only: Vec<crate::spec::ReadOnlyPath>,
    pub network: crate::spec::NetworkSpec,
}

impl SandboxShape {
    /// The shape `spec` needs.
    pub fn of(spec: &SandboxSpec) -> SandboxShape {
        SandboxShape {
            disk_bytes: stages_of(spec)
                .iter()
                .map(|s| s.limits.disk_bytes)
                .max()
                .unwrap_or(spec.limits.disk_bytes),
            extra_read_only: spec.extra_read_only.clone(),
            network: spec.network.clone(),
        }
    }

    /// Whether `spec` needs exactly this shape (as `SandboxShape::of(spec)
    /// == *self`, without building one).
    pub fn fits(&self, spec: &SandboxSpec) -> bool {
        let disk = spec
            .before
            .iter()
            .map(|s| s.limits.disk_bytes)
            .fold(spec.limits.disk_bytes, u64::max);
        disk == self.disk_bytes
            && spec.extra_read_only == self.extra_read_only
            && spec.network == self.network
    }

    /// The shape of a single-stage request with `limits`, no extra
    /// read-only path and no network: what a pool keeps ready.
    pub fn plain(limits: &Limits) -> SandboxShape {
        SandboxShape {
            disk_bytes: limits.disk_bytes,
            extra_read_only: Vec::new(),
            network: crate::spec::NetworkSpec::default(),
        }
    }
}

/// Whether a request waits for the sandbox being built. For a run it
/// does: init's root is built by a helper on the other core while init
/// makes the network namespace. For a sandbox built ahead nobody waits:
/// init builds the root itself afterwards, which costs less CPU in all (no
/// helper to clone, switch to and reap; `formicary batch` serves about 2%
/// more sandboxes per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    Waited,
    Ahead,
}

/// A run request sent as soon as init is in its cgroup, before its root is
/// built: init finds it waiting when it reports the root ready, instead of
/// waiting one more exchange for it. Only for a run with nothing to put in
/// /sandbox first (no input files: the request is also the go-ahead that
/// they are there) and no network (whose proxy is started once init has
/// handed its socket over).
struct EarlyRequest<'s> {
    spec: &'s SandboxSpec,
    stages: &'s [StageRef<'s>],
}

impl<'s> EarlyRequest<'s> {
    fn of(spec: &'s SandboxSpec, stages: &'s [StageRef<'s>]) -> Option<EarlyRequest<'s>> {
        let nothing_to_copy = spec.files.is_empty() && spec.inline_files.is_empty();
        (nothing_to_copy && !spec.network.enabled()).then_some(EarlyRequest { spec, stages })
    }
}

/// A sandbox built ahead of its request ([`Engine::prepare`]): fresh
/// namespaces, root filesystem and cgroup, its init waiting for one run
/// request. Dropping it takes it down unused.
pub struct PreparedSandbox {
    shape: SandboxShape,
    teardown: Teardown,
    sync: OwnedFd,
    sandbox_dir: OwnedFd,
    proxy: Option<RunningProxy>,
    /// The stages' descriptors, when the run request went ahead of the
    /// root ([`EarlyRequest`]).
    sent: Option<Vec<StageFds>>,
    isolation: IsolationReport,
    profile: Profile,
}

impl PreparedSandbox {
    /// What the sandbox was built for.
    pub fn shape(&self) -> &SandboxShape {
        &self.shape
    }
}

/// What is left of a sandbox once its result is complete: its init (which
/// exits after its last stage, or once its socket is closed), its cgroup and
/// its host ids.
/// [`Teardown::finish`] takes them down; dropping does the same.
#[derive(Default)]
pub struct Teardown {
    child: Option<ChildGuard>,
    cgroup: Option<Box<dyn Cgroup>>,
    host_ids: Option<idmap::HostIds>,
}

impl Teardown {
    /// Reaps init (its exit takes the namespaces down), removes the
    /// cgroup and releases the ids; `staged` is returned, with these
    /// steps added to its profile when it has one.
    pub fn finish(mut self, mut staged: StagedResult) -> StagedResult {
        let began = Instant::now();
        let last = staged.main.as_mut().or(staged.before.last_mut());
        let mut marks = last.and_then(|r| r.profile.as_mut());
        let base = marks.as_ref().and_then(|m| m.last()).map_or(0, |(_, t)| *t);
        let mut mark = |step: &str| {
            if let Some(m) = marks.as_mut() {
                m.push((step.to_string(), base + began.elapsed().as_micros() as u64));
            }
        };
        self.take_down(&mut mark);
        staged
    }

    fn take_down(&mut self, mark: &mut dyn FnMut(&str)) {
        if let Some(child) = self.child.take() {
            let _ = child.reap();
            mark("reap init");
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy();
            mark("remove the cgroup");
        }
        self.host_ids = None;
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        // A ChildGuard kills init when dropped unreaped; then the cgroup
        // can go.
        if let Some(child) = self.child.take() {
            drop(child);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy();
        }
    }
}

/// The init process, killed and reaped when dropped.
struct ChildGuard {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    reaped: bool,
    /// In the engine's live inits until init is reaped (dropped after the
    /// fields above: init is waited for first).
    registration: Option<Registration>,
}

impl ChildGuard {
    fn reap(mut self) -> std::io::Result<(i32, libc::rusage)> {
        self.reaped = true;
        crate::sys::wait_pid(self.pid)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = crate::sys::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
            let _ = crate::sys::wait_pid(self.pid);
        }
    }
}

fn recv_message(sync: &OwnedFd) -> Result<(Message, Option<OwnedFd>), String> {
    let mut buf = [0u8; Message::SIZE + 8];
    let (n, fd) = match crate::sys::recv_with_fd(sync.as_fd(), &mut buf) {
        // init exited with something of ours unread (a run request sent
        // ahead, `EarlyRequest`, or a stage's go-ahead): the kernel
        // reports that reset once, before what init sent first (why it
        // failed).
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
            crate::sys::recv_with_fd(sync.as_fd(), &mut buf)
        }
        other => other,
    }
    .map_err(|e| format!("lost contact with the sandbox's init: {e}"))?;
    if n == 0 {
        return Err("the sandbox's init exited during setup".to_string());
    }
    let m = Message::from_bytes(&buf[..n]).ok_or("malformed message from the sandbox's init")?;
    if m.kind == Message::FAILED {
        return Err(format!(
            "sandbox setup failed: {}: {}",
            m.step_name(),
            strerror(m.errno)
        ));
    }
    Ok((m, fd))
}

fn expect_ready(sync: &OwnedFd) -> Result<OwnedFd, String> {
    match recv_message(sync)? {
        (m, Some(fd)) if m.kind == Message::READY => Ok(fd),
        _ => Err("unexpected message from the sandbox's init (wanted READY)".to_string()),
    }
}

fn expect_running(sync: &OwnedFd) -> Result<(), String> {
    match recv_message(sync)? {
        (m, None) if m.kind == Message::RUNNING => Ok(()),
        _ => Err("unexpected message from the sandbox's init (wanted RUNNING)".to_string()),
    }
}

fn expect_proxy_socket(sync: &OwnedFd) -> Result<OwnedFd, String> {
    match recv_message(sync)? {
        (m, Some(fd)) if m.kind == Message::PROXY_SOCKET => Ok(fd),
        _ => Err(
            "unexpected message from the sandbox's init (wanted the network proxy's socket)"
                .to_string(),
        ),
    }
}

fn expect_listener(sync: &OwnedFd, user_notif: bool) -> Result<Option<OwnedFd>, String> {
    if !user_notif {
        return Ok(None);
    }
    match recv_message(sync)? {
        (m, Some(fd)) if m.kind == Message::LISTENER => Ok(Some(fd)),
        _ => Err(
            "unexpected message from the sandbox's init (wanted the seccomp listener)".to_string(),
        ),
    }
}

/// argv, envp and the program's candidate paths as C strings, with the
/// NULL-terminated pointer arrays execve takes.
struct ExecPlan {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// The environment every program starts with, before `--env` additions.
pub fn base_environment() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), SANDBOX_PATH.into()),
        ("HOME".into(), "/sandbox".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TMPDIR".into(), "/tmp".into()),
    ]
}

impl ExecPlan {
    fn new(
        program: &str,
        args: &[String],
        extra_env: &[(String, String)],
    ) -> Result<ExecPlan, String> {
        let nul = |what: &str| format!("{what} contains a NUL byte");
        if program.is_empty() {
            return Err("no program given".into());
        }
        let candidates = if program.contains('/') {
            vec![CString::new(program.as_bytes()).map_err(|_| nul("the program"))?]
        } else {
            SANDBOX_PATH
                .split(':')
                .map(|dir| CString::new(format!("{dir}/{program}")).map_err(|_| nul("the program")))
                .collect::<Result<_, _>>()?
        };
        let mut argv = vec![CString::new(program.as_bytes()).map_err(|_| nul("the program"))?];
        for a in args {
            argv.push(CString::new(a.as_bytes()).map_err(|_| nul("an argument"))?);
        }
        let mut env = base_environment();
        for (k, v) in extra_env {
            if k.is_empty() || k.contains('=') {
                return Err(format!("environment variable name {k:?} is not valid"));
            }
            env.retain(|(existing, _)| existing != k);
            env.push((k.clone(), v.clone()));
        }
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| {
                CString::new(format!("{k}={v}")).map_err(|_| nul("an environment variable"))
            })
            .collect::<Result<_, _>>()?;
        Ok(ExecPlan {
            candidates,
            argv,
            envp,
        })
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{NetworkSpec, ReadOnlyPath, Stage};

    fn stage(disk: u64) -> Stage {
        Stage {
            program: "cc".into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            limits: Limits {
                disk_bytes: disk,
                ..Limits::default()
            },
        }
    }

    #[test]
    fn a_shape_fits_exactly_the_specs_it_was_made_for() {
        let plain = SandboxSpec::new("true", Vec::new());
        let mut bigger_compile = plain.clone();
        bigger_compile.before.push(stage(256 << 20));
        let mut smaller_compile = plain.clone();
        smaller_compile.before.push(stage(1 << 20));
        let mut read_only = plain.clone();
        read_only.extra_read_only.push(ReadOnlyPath {
            host: "/opt".into(),
            sandbox: None,
            optional: false,
        });
        let mut network = plain.clone();
        network.network = NetworkSpec {
            allow: vec!["pypi.org".into()],
            ..NetworkSpec::default()
        };
        let specs = [plain, bigger_compile, smaller_compile, read_only, network];
        for (i, a) in specs.iter().enumerate() {
            for (j, b) in specs.iter().enumerate() {
                let same = SandboxShape::of(a) == SandboxShape::of(b);
                assert_eq!(SandboxShape::of(a).fits(b), same, "shape of {i}, spec {j}");
            }
        }
        // A compile stage with a smaller disk keeps the run's: same shape.
        assert!(SandboxShape::of(&specs[0]).fits(&specs[2]));
        assert!(!SandboxShape::of(&specs[0]).fits(&specs[1]));
    }
}
