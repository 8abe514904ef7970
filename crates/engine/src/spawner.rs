//! The spawner: a small single-threaded process that clones each sandbox's
//! init on the supervisor's behalf.
//!
//! Cloning from the supervisor itself (multithreaded, with a heap that
//! grows with its work) costs twice: clone copies and write-protects the
//! page tables of all of the supervisor's memory, and afterwards the first
//! write to each of those pages by any supervisor thread is a copy-on-write
//! fault whose TLB flush interrupts every other core running the
//! supervisor (an IPI, which a virtual machine makes expensive). The
//! helper is forked once per engine, before the supervisor has much
//! memory, and has one thread: its clones copy little, and their flushes
//! reach no other core.
//!
//! What stays the same: init is cloned with the same flags, runs the same
//! `child::run_init` on a plan built the same way (the helper builds the
//! mount plan and the Landlock ruleset itself from the sandbox's shape,
//! and has its own copy of the compiled seccomp filter and of init's
//! buffers). `CLONE_PARENT` makes init the supervisor's child, not the
//! helper's: the supervisor writes its id maps, reaps it and supervises it
//! exactly as when it cloned it itself, and init's parent-death signal is
//! tied to the supervisor's spawner thread, which lives as long as the
//! engine. The helper sends back init's pid, its pidfd and the
//! supervisor's end of init's socket (`SCM_RIGHTS`) and keeps nothing.
//!
//! The helper dies with the supervisor: its parent-death signal, and
//! end-of-file on its socket. If it dies first, the request that finds it
//! gone fails with a clear error, and the next request starts a new one.

use crate::child::{self, ChildPlan, SeccompStep};
use crate::landlock::{self, LandlockPlan, NetPolicy};
use crate::mounts::MountPlan;
use crate::run_request;
use crate::seccomp::CompiledFilter;
use crate::spec::ReadOnlyPath;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// How long the supervisor waits for the helper's answer before it gives
/// the helper up (a clone and its plan take about a millisecond).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request or answer (a shape's read-only paths, or an error).
const PACKET_MAX: usize = 64 * 1024;

/// What every sandbox's init plan is made of, fixed for the engine.
#[derive(Clone)]
pub(crate) struct InitBase {
    /// The operator's read-only paths (a shape adds its own).
    pub read_only: Vec<ReadOnlyPath>,
    pub landlock_abi: Option<u32>,
    pub user_notif: bool,
    /// Drop supplementary groups (root only).
    pub clear_groups: bool,
    pub last_cap: u32,
    pub arg_area: Option<(usize, usize)>,
    pub filter: CompiledFilter,
}

/// The part of a sandbox's shape init's plan depends on.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitShape {
    pub disk_bytes: u64,
    pub extra_read_only: Vec<ReadOnlyPath>,
    pub proxy_port: Option<u16>,
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
    /// The helper is gone or did not answer.
    Spawner(String),
}

/// The helper's answer, as JSON.
#[derive(Serialize, Deserialize)]
enum Answer {
    /// Cloned; the pidfd and the socket are attached, in that order.
    Spawned {
        pid: libc::pid_t,
    },
    Plan(String),
    Clone(i32),
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

/// Makes init's plan for `shape` and clones init. `clone_parent`: init
/// becomes the caller's parent's child (the helper's case).
pub(crate) fn spawn_init(
    base: &InitBase,
    memory: &ChildMemory,
    shape: &InitShape,
    clone_parent: bool,
) -> Result<Spawned, SpawnError> {
    let mut read_only = base.read_only.clone();
    read_only.extend(shape.extra_read_only.iter().cloned());
    let mounts = MountPlan::prepare(&read_only, shape.disk_bytes)
        .map_err(|e| SpawnError::Plan(e.to_string()))?;
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
        mounts: &mounts,
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

/// The supervisor's side: the helper, restarted when it is found gone.
pub(crate) struct Spawner {
    base: InitBase,
    live: Mutex<Option<Helper>>,
    /// Asks the spawner thread to fork a helper.
    forker: Mutex<mpsc::Sender<ForkOrder>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A running helper.
struct Helper {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    socket: OwnedFd,
}

/// What the spawner thread forks a helper with, and where it answers.
struct ForkOrder {
    base: InitBase,
    socket: OwnedFd,
    answer: mpsc::SyncSender<io::Result<libc::pid_t>>,
}

impl Spawner {
    /// Starts the spawner thread and a first helper. The thread forks
    /// every helper, so that their parent (and, through `CLONE_PARENT`,
    /// every init's parent, whose death their parent-death signal follows)
    /// is a thread that lives exactly as long as the engine.
    pub(crate) fn start(base: InitBase) -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<ForkOrder>();
        let thread = std::thread::Builder::new()
            .name("formicary-spawner".to_string())
            .spawn(move || {
                for order in rx {
                    let answer = fork_helper(order.base, order.socket);
                    let _ = order.answer.send(answer);
                }
            })?;
        let spawner = Spawner {
            base,
            live: Mutex::new(None),
            forker: Mutex::new(tx),
            thread: Some(thread),
        };
        let helper = spawner.start_helper()?;
        *spawner.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(helper);
        Ok(spawner)
    }

    fn start_helper(&self) -> io::Result<Helper> {
        let (ours, theirs) = crate::sys::seqpacket_pair()?;
        set_receive_timeout(&ours, ANSWER_TIMEOUT)?;
        let (answer, answered) = mpsc::sync_channel(1);
        self.forker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(ForkOrder {
                base: self.base.clone(),
                socket: theirs,
                answer,
            })
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let pid = answered
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone"))??;
        // The helper is an unreaped child of this process: its pid cannot
        // be recycled before the pidfd is open.
        let pidfd = crate::sys::pidfd_open(pid)?;
        Ok(Helper {
            pid,
            pidfd,
            socket: ours,
        })
    }

    /// Has the helper clone an init for `shape`.
    pub(crate) fn spawn(&self, shape: &InitShape) -> Result<Spawned, SpawnError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.is_none() {
            *live = Some(self.start_helper().map_err(|e| {
                SpawnError::Spawner(format!("cannot start the sandbox spawner: {e}"))
            })?);
        }
        let Some(helper) = live.as_ref() else {
            return Err(SpawnError::Spawner("no sandbox spawner".to_string()));
        };
        match ask(helper, shape) {
            Ok(answer) => answer,
            Err(e) => {
                let message = format!(
                    "the sandbox spawner (pid {}) is gone or stuck: {e}; the next sandbox starts a new one",
                    helper.pid
                );
                if let Some(helper) = live.take() {
                    helper.stop();
                }
                Err(SpawnError::Spawner(message))
            }
        }
    }
}

impl Helper {
    /// Kills and reaps the helper. Its inits are not its children
    /// (`CLONE_PARENT`), so they are unaffected.
    fn stop(self) {
        let _ = crate::sys::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
        drop(self.socket);
        let _ = crate::sys::wait_pid(self.pid);
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        if let Some(helper) = self.live.lock().unwrap_or_else(|e| e.into_inner()).take() {
            helper.stop();
        }
        // Closing the order channel ends the spawner thread.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(
            &mut *self.forker.lock().unwrap_or_else(|e| e.into_inner()),
            closed,
        ));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request and its answer. An `Err` means the helper is unusable.
fn ask(helper: &Helper, shape: &InitShape) -> io::Result<Result<Spawned, SpawnError>> {
    let request = serde_json::to_vec(shape).map_err(io::Error::other)?;
    crate::sys::send_with_fds(helper.socket.as_fd(), &request, &[])?;
    let mut buf = vec![0u8; PACKET_MAX];
    let (n, mut fds) = crate::sys::recv_with_fds(helper.socket.as_fd(), &mut buf)?;
    if n == 0 {
        return Err(io::Error::other("it exited"));
    }
    let answer: Answer = serde_json::from_slice(&buf[..n]).map_err(io::Error::other)?;
    Ok(match answer {
        Answer::Spawned { pid } => {
            if fds.len() != 2 {
                return Err(io::Error::other(format!(
                    "it sent {} descriptors with init, not 2",
                    fds.len()
                )));
            }
            let sync = fds.pop().ok_or_else(|| io::Error::other("no socket"))?;
            let pidfd = fds.pop().ok_or_else(|| io::Error::other("no pidfd"))?;
            Ok(Spawned { pid, pidfd, sync })
        }
        Answer::Plan(message) => Err(SpawnError::Plan(message)),
        Answer::Clone(errno) => Err(SpawnError::Clone(io::Error::from_raw_os_error(errno))),
    })
}

fn set_receive_timeout(socket: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads a timeval of the given size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Forks a helper serving `socket` (on the spawner thread).
fn fork_helper(base: InitBase, socket: OwnedFd) -> io::Result<libc::pid_t> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: fork in a possibly multithreaded process. The child runs
    // only `helper_main`, which never returns; it allocates (glibc's
    // allocator is fork-safe: its locks are reset in the child) and makes
    // system calls, and takes no other lock another thread could have
    // held at the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        helper_main(&base, socket.as_raw_fd(), parent);
    }
    Ok(pid)
}

/// The helper: one thread, serving requests until its socket closes.
fn helper_main(base: &InitBase, socket: RawFd, parent: libc::pid_t) -> ! {
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: prctl and getppid take and return integers.
        unsafe {
            // Die with the spawner thread (the engine, or the process).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0
                || libc::getppid() != parent
            {
                return;
            }
        }
        let Some(socket) = keep_only(socket) else {
            return;
        };
        let memory = ChildMemory::new();
        serve(base, &memory, socket);
    }));
    let _ = served;
    // SAFETY: _exit never returns, and runs none of the supervisor's
    // destructors or exit handlers in this copy of it.
    unsafe { libc::_exit(0) }
}

/// Closes every descriptor the fork copied but `socket` (moved above 2),
/// with /dev/null as 0, 1 and 2, so that init's descriptors never land on
/// 0 to 2 (init installs each stage's stdio there) and the helper holds
/// none of the supervisor's files or pipes open. The new number of
/// `socket`, or None on failure.
fn keep_only(socket: RawFd) -> Option<RawFd> {
    // SAFETY: fcntl, open, dup2 and close_range on integers and a static
    // C string; every descriptor touched is this process's own.
    unsafe {
        let moved = libc::fcntl(socket, libc::F_DUPFD_CLOEXEC, 3);
        if moved < 0 {
            return None;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return None;
        }
        for target in 0..3 {
            if null != target && libc::dup2(null, target) < 0 {
                return None;
            }
        }
        let first_free = (null.max(2) + 1) as libc::c_uint;
        let moved_u = moved as libc::c_uint;
        if moved_u > first_free {
            libc::syscall(libc::SYS_close_range, first_free, moved_u - 1, 0);
        }
        if null > 2 {
            libc::close(null);
        }
        libc::syscall(libc::SYS_close_range, moved_u + 1, libc::c_uint::MAX, 0);
        Some(moved)
    }
}

fn serve(base: &InitBase, memory: &ChildMemory, socket: RawFd) {
    // SAFETY: `socket` is this process's own descriptor, kept by
    // `keep_only`, and owned here from now on.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    let mut buf = vec![0u8; PACKET_MAX];
    loop {
        let n = match crate::sys::recv_with_fds(socket.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok((n, _)) => n,
        };
        let spawned = match serde_json::from_slice::<InitShape>(&buf[..n]) {
            Ok(shape) => spawn_init(base, memory, &shape, true),
            Err(e) => Err(SpawnError::Plan(format!("malformed request: {e}"))),
        };
        let (answer, fds) = match spawned {
            Ok(s) => (Answer::Spawned { pid: s.pid }, Some(s)),
            Err(SpawnError::Plan(m)) | Err(SpawnError::Spawner(m)) => (Answer::Plan(m), None),
            Err(SpawnError::Clone(e)) => {
                (Answer::Clone(e.raw_os_error().unwrap_or(libc::EIO)), None)
            }
        };
        let Ok(bytes) = serde_json::to_vec(&answer) else {
            return;
        };
        let attached: Vec<RawFd> = fds
            .iter()
            .flat_map(|s| [s.pidfd.as_raw_fd(), s.sync.as_raw_fd()])
            .collect();
        if crate::sys::send_with_fds(socket.as_fd(), &bytes, &attached).is_err() {
            return;
        }
        // The supervisor holds its own copies now.
        drop(fds);
    }
}
