//! The sandbox's init: the code that runs in the cloned child, from clone
//! to the program's execve, and then as pid 1 of the sandbox.
//!
//! The supervisor may be a multithreaded process, so everything here is
//! async-signal-safe: no heap allocation, no locks, no panics, only raw
//! syscalls on data the supervisor prepared before the clone
//! ([`ChildPlan`]). Failures are a static step name and an errno, sent to
//! the supervisor as a fixed-size [`Message`].
//!
//! The order of steps (each one's reason is next to it):
//! 1. die with the supervisor (PDEATHSIG), close every descriptor inherited
//!    by accident (other threads' sandboxes);
//! 2. at once on two cores: a helper waits until the uid/gid maps are
//!    written, becomes the sandbox user and builds the filesystem (mounts,
//!    pivot_root, read-only root), while init makes the network namespace,
//!    brings up its loopback interface and sets the hostname;
//! 3. init becomes the sandbox user (uid/gid 1000, no supplementary groups)
//!    while keeping the user namespace's capabilities for setup;
//! 4. hand /sandbox to the supervisor, which copies the inputs in (and has
//!    meanwhile moved init into its cgroups), then a new cgroup namespace;
//! 5. stdio, working directory, then privileges: capabilities dropped,
//!    no_new_privs, rlimits, Landlock, and seccomp last (it would forbid
//!    the steps before it), its listener handed to the supervisor;
//! 6. for each stage (a compile, then a run; or just a run): its stdio, its
//!    program (vfork-style: new session, fds above 2 closed, the stage's
//!    rlimits, execve), reap until it exits, kill and reap whatever it left,
//!    report; between stages wait for the go-ahead. init exits as soon as
//!    the last stage is reported, and its exit takes the namespaces down.

use crate::caps;
use crate::child_error::{check, check_int, last_errno, ChildFailure};
use crate::landlock::LandlockPlan;
use crate::mounts::{MountPlan, SANDBOX_ID};
use crate::rlimits::RlimitPlan;
use crate::run_request::{self, RequestHeader};
use std::os::fd::RawFd;

/// What init tells the supervisor. Fixed size, so sending needs no
/// allocation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Message {
    pub kind: u32,
    pub errno: i32,
    /// A wait status for `EXITED`.
    pub status: i32,
    pub _pad: i32,
    /// CPU time (µs) of all reaped processes, for `EXITED`.
    pub cpu_us: u64,
    /// Largest max RSS (KiB) of any reaped process, for `EXITED`.
    pub max_rss_kb: u64,
    /// Bit N set: a process init reaped died of signal N, for `EXITED`.
    pub signals_seen: u64,
    /// The failed step's name, NUL-padded, for `FAILED` and `EXEC_FAILED`.
    pub step: [u8; 64],
}

impl Message {
    pub const READY: u32 = 1;
    pub const LISTENER: u32 = 2;
    pub const EXITED: u32 = 3;
    pub const FAILED: u32 = 4;
    pub const EXEC_FAILED: u32 = 5;
    pub const STARTED: u32 = 6;
    /// The network proxy's listening socket, inside the sandbox's netns.
    pub const PROXY_SOCKET: u32 = 7;
    /// init runs: its first message, sent only when its supervisor cloned
    /// it and waits for it (`ChildPlan::announce_running`; see
    /// `setup_and_start`).
    pub const RUNNING: u32 = 8;

    pub const SIZE: usize = std::mem::size_of::<Message>();

    fn new(kind: u32) -> Message {
        Message {
            kind,
            errno: 0,
            status: 0,
            _pad: 0,
            cpu_us: 0,
            max_rss_kb: 0,
            signals_seen: 0,
            step: [0; 64],
        }
    }

    fn failure(kind: u32, failure: ChildFailure) -> Message {
        let mut m = Message::new(kind);
        m.errno = failure.errno;
        let bytes = failure.step.as_bytes();
        let n = bytes.len().min(m.step.len() - 1);
        m.step[..n].copy_from_slice(&bytes[..n]);
        m
    }

    /// Reads a message from received bytes (supervisor side).
    pub fn from_bytes(bytes: &[u8]) -> Option<Message> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        // SAFETY: the length matches and every bit pattern is a valid
        // Message (integers and a byte array).
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Message>()) })
    }

    /// The step name (supervisor side).
    pub fn step_name(&self) -> String {
        let end = self
            .step
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.step.len());
        String::from_utf8_lossy(&self.step[..end]).into_owned()
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Message is repr(C) plain data without padding holes that
        // matter (the explicit _pad field fills the only gap).
        unsafe { std::slice::from_raw_parts((self as *const Message).cast::<u8>(), Self::SIZE) }
    }
}

/// Seccomp as init installs it.
pub enum SeccompStep<'a> {
    /// Denials go to the supervisor through a listener fd.
    Notify(&'a libc::sock_fprog),
    /// Denials fail with an errno and are not seen.
    Errno(&'a libc::sock_fprog),
}

/// Most stages one sandbox runs (a compile and a run need two).
pub const MAX_STAGES: usize = 4;

/// One program to run in the sandbox, as init has it from the run request.
struct StagePlan<'a> {
    stdin_fd: Option<RawFd>,
    stdout_fd: RawFd,
    stderr_fd: RawFd,
    /// This stage's rlimits, set by its program before the execve (only lower
    /// than init's, which are the highest of all stages).
    rlimits: &'a RlimitPlan,
    /// NULL-terminated: paths to try for the program, in order (the PATH
    /// lookup was done by the supervisor); argv; envp.
    exec_candidates: *const *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

/// Buffers init receives the run request into, reserved by the supervisor
/// before the clone (init may not allocate). Raw pointers: after the clone
/// they are init's own copy, which only init writes.
pub struct RequestBuffers {
    pub words: *mut u64,
    pub word_count: usize,
    pub pointers: *mut *const libc::c_char,
    pub pointer_count: usize,
}

/// Everything init needs, prepared by the supervisor before the clone.
pub struct ChildPlan<'a> {
    pub sync_fd: RawFd,
    /// Drop supplementary groups (possible when the supervisor is root;
    /// a rootless user namespace has setgroups denied).
    pub clear_groups: bool,
    pub mounts: &'a MountPlan,
    pub last_cap: u32,
    pub landlock: Option<&'a LandlockPlan>,
    pub seccomp: SeccompStep<'a>,
    /// Where the run request (working directory, rlimits, the stages:
    /// 1 to MAX_STAGES programs run one after the other) is received.
    pub request: RequestBuffers,
    /// The root builder's stack, then each program's until its execve.
    pub exec_stack: &'a ExecStack,
    /// Where the supervisor's command line lies in memory (from
    /// /proc/self/stat): init blanks its copy, so the program cannot read
    /// the caller's command line (host paths, flags) in /proc/1/cmdline.
    pub arg_area: Option<(usize, usize)>,
    /// When the run has network: the loopback port where init opens the
    /// proxy's listening socket and hands it to the supervisor.
    pub proxy_port: Option<u16>,
    /// Build the root in a helper (pid 2) while init makes the network
    /// namespace: two cores at once, for a run someone is waiting for.
    /// Otherwise init builds it itself afterwards, which costs less CPU
    /// (no process to clone, switch to and reap): for sandboxes built
    /// ahead.
    pub root_by_helper: bool,
    /// Send `RUNNING` first: the supervisor cloned init itself and sleeps
    /// until then (see `setup_and_start`).
    pub announce_running: bool,
    /// Cloned from a process whose dispositions are all default and whose
    /// mask is empty (the spawner resets its own once, at its start), so
    /// init has nothing to reset.
    pub signals_are_default: bool,
}

fn send(fd: RawFd, message: &Message, attach: Option<RawFd>) -> Result<(), ChildFailure> {
    let bytes = message.as_bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cmsg_buf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(attached) = attach {
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        // SAFETY: pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
        // SAFETY: the control buffer (32 bytes) holds one cmsghdr with one fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), attached);
        }
    }
    check(
        // SAFETY: msg points to live buffers.
        unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) } as libc::c_long,
        "report to the supervisor",
    )?;
    Ok(())
}

/// Waits for the supervisor's one-byte go-ahead; exits quietly if the
/// supervisor went away.
fn wait_for_go(fd: RawFd) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a local.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 && byte == b'G' {
            return;
        }
        if n < 0 && last_errno("").errno == libc::EINTR {
            continue;
        }
        // EOF or anything else: the supervisor is gone or gave up.
        // SAFETY: _exit never returns and is async-signal-safe.
        unsafe { libc::_exit(1) };
    }
}

/// Entry point of the cloned child. Never returns.
pub fn run_init(plan: &ChildPlan<'_>) -> ! {
    if let Err(failure) = setup_and_start(plan) {
        let _ = send(
            plan.sync_fd,
            &Message::failure(Message::FAILED, failure),
            None,
        );
        // SAFETY: _exit never returns.
        unsafe { libc::_exit(1) };
    }
    // Every stage has run and been reported.
    // SAFETY: _exit never returns.
    unsafe { libc::_exit(0) }
}

fn set_ids(clear_groups: bool) -> Result<(), ChildFailure> {
    // Raw syscalls, not the libc wrappers: glibc's set*id and setgroups
    // signal every thread of the process to change credentials together,
    // and in this child (a copy of one thread of a possibly multithreaded
    // supervisor) the other threads do not exist: the wrapper would wait
    // for them forever.
    let id = SANDBOX_ID as libc::c_long;
    // SAFETY: credential syscalls with integer arguments (and a null list
    // of zero groups).
    unsafe {
        if clear_groups {
            check(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                "drop supplementary groups",
            )?;
        }
        check(
            libc::syscall(libc::SYS_setresgid, id, id, id),
            "become the sandbox group",
        )?;
        check(
            libc::syscall(libc::SYS_setresuid, id, id, id),
            "become the sandbox user",
        )?;
    }
    Ok(())
}

/// Closes every descriptor but `keep`: the clone copied the whole table of
/// a supervisor that may be running other sandboxes on other threads, and
/// init must not hold their pipes open (nor see them). No allocation: the
/// list is sorted in place.
fn close_all_but(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut next: libc::c_uint = 0;
    for &mut fd in keep {
        if fd < 0 || (fd as libc::c_uint) < next {
            continue;
        }
        if fd as libc::c_uint > next {
            // SAFETY: close_range takes integers only.
            unsafe { libc::syscall(libc::SYS_close_range, next, fd as libc::c_uint - 1, 0) };
        }
        next = fd as libc::c_uint + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0) };
}

/// A TCP socket listening on 127.0.0.1:`port` in this (the sandbox's)
/// network namespace, for the supervisor's proxy to accept on. No
/// SO_REUSEADDR/SO_REUSEPORT: nothing in the sandbox can bind the port
/// beside it.
fn open_proxy_socket(port: u16) -> Result<RawFd, ChildFailure> {
    let fd = check_int(
        // SAFETY: a plain socket; closed on failure below or by the caller.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "open the network proxy's socket",
    )?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in the kernel only reads.
    let bound = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let result = if bound < 0 {
        Err(last_errno("bind the network proxy's socket"))
    } else {
        // SAFETY: listen on our own socket.
        check_int(
            unsafe { libc::listen(fd, 128) },
            "listen on the network proxy's socket",
        )
        .map(|_| fd)
    };
    if result.is_err() {
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
    }
    result
}

/// `ip link set lo up`, with one ioctl: the sandbox gets a working
/// loopback and nothing else.
fn bring_up_loopback() -> Result<(), ChildFailure> {
    /// struct ifreq, as far as SIOCSIFFLAGS reads it (40 bytes in all).
    #[repr(C)]
    struct IfreqFlags {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
    let mut name = [0u8; 16];
    name[..2].copy_from_slice(b"lo");
    let request = IfreqFlags {
        name,
        flags: (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short,
        _pad: [0; 22],
    };
    // SAFETY: a plain socket; closed below.
    let fd = check_int(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
        "open a socket to set up loopback",
    )?;
    // SAFETY: `request` is a valid ifreq-sized buffer the kernel only reads.
    let result = unsafe { libc::ioctl(fd, SIOCSIFFLAGS, &request as *const IfreqFlags) };
    let failure = last_errno("bring up the loopback interface");
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    if result < 0 {
        return Err(failure);
    }
    Ok(())
}

/// Starts the helper that builds the sandbox's root while init goes on:
/// it waits for the go-ahead, becomes the sandbox user and runs
/// `MountPlan::apply_in_child`. It shares init's memory (`CLONE_VM`, so no
/// page tables are copied) and runs on the `ExecStack`, which no program
/// uses yet; it shares init's mount namespace, so the mounts and the
/// `pivot_root` it makes are init's (the kernel moves init's root to the
/// new one with its own). Its credentials are its own. On failure it
/// reports the failed step to the supervisor itself and exits non-zero.
/// (It also shares init's `errno`: only the message of a failure in both
/// at once could be wrong.)
fn start_root_builder(plan: &ChildPlan<'_>) -> Result<libc::pid_t, ChildFailure> {
    let stack_top = plan.exec_stack.as_ptr_range().end as *mut libc::c_void;
    check_int(
        // SAFETY: `stack_top` ends a live buffer reserved for a child's
        // stack (16-byte aligned) that nothing else uses until the builder
        // has been reaped; `plan` outlives the builder, which init reaps
        // before returning from setup (or init's exit kills it).
        unsafe {
            libc::clone(
                build_root,
                stack_top,
                libc::CLONE_VM | libc::SIGCHLD,
                plan as *const ChildPlan<'_> as *mut libc::c_void,
            )
        },
        "start building the root",
    )
}

/// clone(2)'s entry point for the root builder: its return value is its
/// exit status.
extern "C" fn build_root(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&ChildPlan` init passed to clone, alive until
    // init has reaped this process.
    let plan = unsafe { &*(arg as *const ChildPlan<'_>) };
    // The id maps are written once the go-ahead comes (EOF: the supervisor
    // is gone, and this exits). Files created while building the root must
    // belong to a mapped id.
    wait_for_go(plan.sync_fd);
    match set_ids(plan.clear_groups).and_then(|()| plan.mounts.apply_in_child()) {
        Ok(()) => 0,
        Err(failure) => {
            let _ = send(
                plan.sync_fd,
                &Message::failure(Message::FAILED, failure),
                None,
            );
            1
        }
    }
}

/// Reaps the root builder; an error unless it built the whole root. (A
/// builder that failed has already reported the step, which the supervisor
/// reads first.)
fn wait_for_root_builder(builder: libc::pid_t) -> Result<(), ChildFailure> {
    let mut status = 0;
    loop {
        // SAFETY: a pointer to a local.
        let pid = unsafe { libc::wait4(builder, &mut status, libc::__WALL, std::ptr::null_mut()) };
        if pid >= 0 {
            break;
        }
        let failure = last_errno("wait for the root to be built");
        if failure.errno != libc::EINTR {
            return Err(failure);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(ChildFailure {
            step: "build the root",
            errno: libc::EIO,
        })
    }
}

/// Every signal's disposition back to the default, and an empty mask.
/// Raw system calls: glibc's `sigaction` refuses its own two real-time
/// signals, which a caller may still have ignored. (SIGKILL and SIGSTOP
/// cannot be changed: those two calls fail, harmlessly.)
pub(crate) fn reset_signals() {
    /// The kernel's `struct sigaction` on x86-64 and aarch64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let empty: u64 = 0;
    // SAFETY: rt_sigaction and rt_sigprocmask read the structures given,
    // which live on this stack, with the kernel's signal set size (8); no
    // old value is written back. Raw system calls are async-signal-safe.
    unsafe {
        for signal in 1..=64 {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
}

fn setup_and_start(plan: &ChildPlan<'_>) -> Result<(), ChildFailure> {
    // 1. Die with the supervisor. (If it is already gone, the read below
    // sees EOF and we exit.)
    check_int(
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        "set the parent-death signal",
    )?;
    // When the supervisor cloned init itself, for a run someone waits
    // for, it sleeps from the clone until this message. The kernel starts a new process on its parent's
    // core and will not move it to an idle one for a while, so a
    // supervisor that went on making the cgroup kept init from starting
    // for that long, however idle the other core. Asleep, it lets init
    // start at once; woken, it makes the cgroup on whichever core is
    // free, while the root builder (cloned next) and the network
    // namespace take the rest.
    if plan.announce_running {
        send(plan.sync_fd, &Message::new(Message::RUNNING), None)?;
    }
    // Signal dispositions and the signal mask are inherited from the
    // thread that cloned init, and ignored signals and the mask survive
    // execve: a Rust supervisor ignores SIGPIPE, and an embedding server
    // may block or ignore others (an ignored SIGCHLD would even take the
    // programs' exit statuses from init). Every program starts as it would
    // from a shell: default dispositions, nothing blocked.
    if !plan.signals_are_default {
        reset_signals();
    }
    // The command line init inherited is the supervisor's: blank it.
    if let Some((start, end)) = plan.arg_area {
        if end > start {
            // SAFETY: [start, end) is this process's argument area (its own
            // copy of the supervisor's, made by the clone), in the writable
            // stack mapping; nothing in init reads the arguments.
            unsafe {
                std::ptr::write_bytes(start as *mut u8, 0, end - start);
                let name = b"formicary-init";
                if end - start > name.len() {
                    std::ptr::copy_nonoverlapping(name.as_ptr(), start as *mut u8, name.len());
                }
            }
        }
    }
    // And its name (comm, what top shows), inherited from whichever
    // process cloned it.
    // SAFETY: prctl reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"formicary-init".as_ptr(), 0, 0, 0) };
    // init is made not dumpable below, once the id maps are written, not
    // here: a process that is not dumpable has its /proc files owned by
    // root, and a rootless supervisor could then not write its
    // uid_map and setgroups (it raced init for them, and lost about half
    // the time). Nothing of the sandbox runs before then.
    // The supervisor's umask is not ours: every mode below is meant as written.
    // SAFETY: umask cannot fail; the child has its own copy of it.
    unsafe { libc::umask(0) };
    let mut keep = [plan.sync_fd, plan.landlock.map_or(-1, |l| l.ruleset_fd())];
    close_all_but(&mut keep);

    // 2.-4. The filesystem, the network namespace and its loopback
    // interface (the namespace's only one, down until set up), and the
    // hostname. Each of the root and the network namespace takes a few
    // hundred microseconds of the kernel's time, so for a run someone
    // waits for (`root_by_helper`) they are made at once on two cores: a
    // helper (pid 2) waits for the go-ahead (the id maps are written),
    // becomes the sandbox user and builds the root, while init makes the
    // network namespace, which needs no id map. Otherwise init builds the
    // root itself once the namespace is made.
    let builder = if plan.root_by_helper {
        Some(start_root_builder(plan)?)
    } else {
        None
    };
    check_int(
        // SAFETY: unshare with a constant flag.
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        "create the network namespace",
    )?;
    bring_up_loopback()?;
    if let Some(port) = plan.proxy_port {
        // Before the sandbox's own code runs, so the port is the proxy's.
        let listener = open_proxy_socket(port)?;
        let sent = send(
            plan.sync_fd,
            &Message::new(Message::PROXY_SOCKET),
            Some(listener),
        );
        // SAFETY: our own descriptor; the supervisor holds a copy.
        unsafe { libc::close(listener) };
        sent?;
    }
    check_int(
        // SAFETY: constant string and its length.
        unsafe { libc::sethostname(c"sandbox".as_ptr(), 7) },
        "set the hostname",
    )?;
    match builder {
        // The builder has had the go-ahead, so the id maps exist.
        Some(builder) => wait_for_root_builder(builder)?,
        None => {
            // Files created while building the root must belong to a
            // mapped id: wait for the maps (on EOF, the supervisor is
            // gone, and this exits).
            wait_for_go(plan.sync_fd);
            set_ids(plan.clear_groups)?;
            plan.mounts.apply_in_child()?;
        }
    }

    // Files init creates must belong to a mapped id too. The user
    // namespace's capabilities survive this (uid 0 is not mapped in it, so
    // the kernel's setuid capability fix-up does not apply).
    set_ids(plan.clear_groups)?;
    // Changing the effective uid cleared the parent-death signal: set it
    // again. If the supervisor died meanwhile, the next wait sees EOF.
    check_int(
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        "set the parent-death signal",
    )?;
    // init's memory is a copy of the supervisor's, which may serve other
    // requests (a pool, a server): never dumpable, so that no process of
    // the sandbox can read it through /proc/1/mem, maps or environ. The
    // change of uid just made (init's, and the root builder's before it,
    // which shares this memory) set dumpability to fs.suid_dumpable, which
    // a host may have set to 1, so this comes after it. No process of the
    // sandbox runs before this point (its first program starts after the
    // run request).
    check_int(
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) },
        "make init not dumpable",
    )?;

    // 5. Hand /sandbox to the supervisor and wait while it copies inputs.
    let sandbox_dir = check_int(
        // SAFETY: constant path; the fd is closed after sending.
        unsafe {
            libc::open(
                c"/sandbox".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        },
        "open /sandbox",
    )?;
    if let Some(landlock) = plan.landlock {
        landlock.add_rules_in_child()?;
    }
    send(
        plan.sync_fd,
        &Message::new(Message::READY),
        Some(sandbox_dir),
    )?;
    // SAFETY: our own descriptor.
    unsafe { libc::close(sandbox_dir) };
    // The run request is the go-ahead: the inputs are in /sandbox. (A
    // sandbox built ahead waits here for the request it will serve.)
    let request = receive_request(plan)?;

    // The supervisor has put us in our cgroups by now: make them our root.
    check_int(
        // SAFETY: unshare with a constant flag.
        unsafe { libc::unshare(libc::CLONE_NEWCGROUP) },
        "create the cgroup namespace",
    )?;

    // 6. Working directory.
    check_int(
        // SAFETY: a C string we own.
        unsafe { libc::chdir(request.workdir) },
        "enter the working directory",
    )?;

    // Privileges: capabilities first (dropping the bounding set needs
    // CAP_SETPCAP), then no_new_privs (Landlock and seccomp require it).
    caps::drop_all_in_child(plan.last_cap)?;
    caps::set_no_new_privs_in_child()?;
    request.header.init_rlimits.apply_in_child()?;
    if let Some(landlock) = plan.landlock {
        landlock.restrict_in_child()?;
    }
    // Seccomp last: after it, the setup syscalls above would be refused.
    match plan.seccomp {
        SeccompStep::Notify(prog) => {
            let listener =
                crate::seccomp::install_with_listener(prog).map_err(|errno| ChildFailure {
                    step: "install the seccomp filter",
                    errno,
                })?;
            send(
                plan.sync_fd,
                &Message::new(Message::LISTENER),
                Some(listener),
            )?;
            // SAFETY: our own descriptor; the supervisor holds a copy.
            unsafe { libc::close(listener) };
        }
        SeccompStep::Errno(prog) => {
            crate::seccomp::install(prog).map_err(|errno| ChildFailure {
                step: "install the seccomp filter",
                errno,
            })?;
        }
    }

    // 7. Each stage's program runs as a child of init; init stays to reap
    // and report, and waits for the go-ahead before each later stage.
    for index in 0..request.header.n_stages as usize {
        if index > 0 {
            wait_for_go(plan.sync_fd);
        }
        run_stage(plan, index, &request.stage(index))?;
    }
    // After the last stage nothing of the sandbox runs any more: exit now,
    // so that the kernel takes the namespaces down while the supervisor
    // reads the results, instead of after. The supervisor holds /sandbox
    // open, which keeps that tmpfs readable for copying outputs out.
    Ok(())
}

/// The run request as init received it.
struct Request<'a> {
    header: &'a RequestHeader,
    pointers: &'a [*const libc::c_char],
    workdir: *const libc::c_char,
    /// Each stage's descriptors in order: stdin (if it has one), stdout,
    /// stderr.
    fds: [RawFd; 3 * MAX_STAGES],
}

impl Request<'_> {
    fn stage(&self, index: usize) -> StagePlan<'_> {
        let mut at = 0;
        for i in 0..index {
            at += 2 + usize::from(self.header.stages[i].has_stdin != 0);
        }
        let decoded = run_request::stage(self.header, self.pointers, index);
        let stdin_fd = if decoded.has_stdin {
            at += 1;
            Some(self.fds[at - 1])
        } else {
            None
        };
        StagePlan {
            stdin_fd,
            stdout_fd: self.fds[at],
            stderr_fd: self.fds[at + 1],
            rlimits: decoded.rlimits,
            exec_candidates: decoded.candidates,
            argv: decoded.argv,
            envp: decoded.envp,
        }
    }
}

/// Receives the run request: a first packet with the stages' descriptors,
/// then as many packets as the request's length needs. EOF before it (the
/// supervisor gave up, or a prepared sandbox was discarded): exit quietly.
fn receive_request(plan: &ChildPlan<'_>) -> Result<Request<'static>, ChildFailure> {
    let buffers = &plan.request;
    // SAFETY: the supervisor reserved these buffers before the clone for
    // init alone; this process's copy is written only here, and lives as
    // long as init (hence 'static).
    let (buf, pointers): (&'static mut [u8], &'static mut [*const libc::c_char]) = unsafe {
        (
            std::slice::from_raw_parts_mut(buffers.words.cast::<u8>(), buffers.word_count * 8),
            std::slice::from_raw_parts_mut(buffers.pointers, buffers.pointer_count),
        )
    };
    let mut fds = [-1 as RawFd; 3 * MAX_STAGES];
    let first = recv_with_fds(plan.sync_fd, buf, &mut fds)?;
    // init's 0, 1 and 2 are closed, so received descriptors may land
    // there, where installing one stage's stdio would overwrite another
    // stage's descriptor: move them above 2.
    for fd in fds.iter_mut().filter(|fd| (0..3).contains(*fd)) {
        let high = check_int(
            // SAFETY: fcntl on a descriptor we hold.
            unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) },
            "move a received descriptor",
        )?;
        // SAFETY: our own descriptor, now also at `high`.
        unsafe { libc::close(*fd) };
        *fd = high;
    }
    if first == 0 {
        // SAFETY: _exit never returns.
        unsafe { libc::_exit(0) };
    }
    if first < 8 {
        return Err(ChildFailure {
            step: "receive the run request",
            errno: libc::EPROTO,
        });
    }
    let total = u64::from_ne_bytes([
        buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7],
    ]) as usize;
    if total > buf.len() || total < first {
        return Err(ChildFailure {
            step: "receive the run request",
            errno: libc::EMSGSIZE,
        });
    }
    let mut received = first;
    while received < total {
        // SAFETY: reading into the rest of our buffer.
        let n = unsafe {
            libc::read(
                plan.sync_fd,
                buf[received..total].as_mut_ptr().cast(),
                total - received,
            )
        };
        if n == 0 {
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(0) };
        }
        if n < 0 {
            let failure = last_errno("receive the run request");
            if failure.errno == libc::EINTR {
                continue;
            }
            return Err(failure);
        }
        received += n as usize;
    }
    let buf: &'static [u8] = &buf[..total];
    let (header, _) = run_request::decode(buf, pointers).map_err(|step| ChildFailure {
        step,
        errno: libc::EPROTO,
    })?;
    let pointers: &'static [*const libc::c_char] = pointers;
    Ok(Request {
        header,
        pointers,
        workdir: run_request::workdir(header, buf),
        fds,
    })
}

/// recvmsg of one packet into `buf`, with up to `fds.len()` descriptors.
fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut [RawFd]) -> Result<usize, ChildFailure> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one cmsghdr with 3 * MAX_STAGES descriptors.
    let mut cmsg_buf = [0u64; 2 + 3 * MAX_STAGES / 2 + 1];
    // SAFETY: an all-zero msghdr is valid; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    let n = loop {
        // SAFETY: msg points to live buffers.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let failure = last_errno("receive the run request");
        if failure.errno != libc::EINTR {
            return Err(failure);
        }
    };
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(ChildFailure {
            step: "receive the run request",
            errno: libc::EMSGSIZE,
        });
    }
    let mut count = 0;
    // SAFETY: the kernel filled msg_control; the CMSG_* macros walk it
    // within msg_controllen, and each SCM_RIGHTS payload is whole ints.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    if count < fds.len() {
                        fds[count] = std::ptr::read_unaligned(data.add(i));
                        count += 1;
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n)
}

/// What a program's entry point needs: the plan and which stage to run.
struct Launch<'p, 'a> {
    plan: &'p ChildPlan<'a>,
    stage: &'p StagePlan<'a>,
}

/// Runs one stage: its standard streams, its program (pid 3 the first
/// time), its end, and then nothing of it left: init kills every other
/// process of the sandbox and reaps them before reporting, so the next
/// stage starts alone and the supervisor sees EOF on the stage's pipes.
fn run_stage(
    plan: &ChildPlan<'_>,
    index: usize,
    stage: &StagePlan<'_>,
) -> Result<(), ChildFailure> {
    let stdin = match stage.stdin_fd {
        Some(fd) => fd,
        None => check_int(
            // SAFETY: constant path.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) },
            "open /dev/null for stdin",
        )?,
    };
    install_stdio([stdin, stage.stdout_fd, stage.stderr_fd])?;
    // The stage's own descriptors now live on as 0, 1 and 2 only, which
    // init closes once the program has them: the supervisor must see EOF
    // when the program's side is done. (A descriptor that was itself 0, 1
    // or 2 has already been replaced by install_stdio.)
    for fd in [stdin, stage.stdout_fd, stage.stderr_fd] {
        if fd > 2 {
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
        }
    }
    // vfork-style (CLONE_VM | CLONE_VFORK, as posix_spawn does): the child
    // borrows init's memory on its own stack until its execve, and init
    // waits until then. No page tables are copied.
    let launch = Launch { plan, stage };
    let stack_top = plan.exec_stack.as_ptr_range().end as *mut libc::c_void;
    let pid = check_int(
        // SAFETY: `stack_top` ends a live buffer reserved for this child's
        // stack (16-byte aligned: `ExecStack` holds u128s); `launch` and the plan
        // outlive the child's use of them, since init is suspended until
        // the execve.
        unsafe {
            libc::clone(
                exec_trampoline,
                stack_top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &launch as *const Launch<'_, '_> as *mut libc::c_void,
            )
        },
        "start the program",
    )?;
    let mut started = Message::new(Message::STARTED);
    started.status = index as i32;
    send(plan.sync_fd, &started, None)?;
    // SAFETY: closing init's copies of the standard streams.
    unsafe {
        libc::close(0);
        libc::close(1);
        libc::close(2);
    }
    let mut exited = reap_until(pid)?;
    // Whatever the program left behind dies now. kill(-1) reaches every
    // process of the namespace but init itself.
    // SAFETY: kill with integer arguments.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap_all(&mut exited);
    send(plan.sync_fd, &exited, None)
}

/// Makes `fds` the standard streams 0, 1 and 2. Each is first copied above
/// 2, so that no dup2 overwrites a source still needed (a source may itself
/// be 0, 1 or 2) and every final copy is fresh, without close-on-exec.
fn install_stdio(fds: [RawFd; 3]) -> Result<(), ChildFailure> {
    let mut high = [0 as RawFd; 3];
    for (copy, fd) in high.iter_mut().zip(fds) {
        *copy = check_int(
            // SAFETY: fcntl on a descriptor we hold.
            unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) },
            "copy a standard stream",
        )?;
    }
    for (target, copy) in high.into_iter().enumerate() {
        check_int(
            // SAFETY: dup2 between descriptors we hold.
            unsafe { libc::dup2(copy, target as RawFd) },
            "set up a standard stream",
        )?;
        // SAFETY: our own temporary copy.
        unsafe { libc::close(copy) };
    }
    Ok(())
}

/// The stack the root builder runs on, and then each program until its
/// execve: reserved by the supervisor before the clone, since init may not
/// allocate. Left uninitialised: the supervisor never touches it, and a
/// clone touches only the pages it uses. (Zeroing it was not free: calloc
/// clears whatever part of its block the heap held already, up to 16 pages
/// and as many page faults at every engine start.) A stack needs no zeroes;
/// and init's memory is a copy of the supervisor's anyway.
pub struct ExecStack(Box<[std::mem::MaybeUninit<u128>]>);

impl ExecStack {
    /// 64 KiB, 16-byte aligned (u128 elements).
    pub fn new() -> ExecStack {
        ExecStack(Box::new_uninit_slice(64 * 1024 / 16))
    }

    fn as_ptr_range(&self) -> std::ops::Range<*const u128> {
        let range = self.0.as_ptr_range();
        range.start.cast::<u128>()..range.end.cast::<u128>()
    }
}

impl Default for ExecStack {
    fn default() -> Self {
        Self::new()
    }
}

/// clone(2)'s entry point for a stage's program.
extern "C" fn exec_trampoline(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&Launch` init passed to clone, alive and
    // unchanged while init waits for this child's execve.
    let launch = unsafe { &*(arg as *const Launch<'_, '_>) };
    exec_program(launch.plan, launch.stage)
}

/// A stage's program: a new session, nothing inherited but stdio, then execve.
fn exec_program(plan: &ChildPlan<'_>, stage: &StagePlan<'_>) -> ! {
    // SAFETY: setsid, umask and close_range take no pointers. CLOSE_RANGE_CLOEXEC
    // keeps the sync socket usable for reporting an exec failure, while
    // guaranteeing that nothing above fd 2 survives a successful execve.
    unsafe {
        libc::setsid();
        // init runs with umask 0 so its modes are exact; programs expect
        // the usual 022.
        libc::umask(0o022);
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    // This stage's own rlimits (lower than or equal to init's).
    if let Err(failure) = stage.rlimits.apply_in_child() {
        let _ = send(
            plan.sync_fd,
            &Message::failure(Message::EXEC_FAILED, failure),
            None,
        );
        // SAFETY: _exit never returns.
        unsafe { libc::_exit(126) }
    }
    let mut errno = libc::ENOENT;
    let mut candidate = stage.exec_candidates;
    // SAFETY: a NULL-terminated array of NUL-terminated paths (decoded and
    // checked by run_request::decode), in init's memory, which the program shares until its execve.
    while let Some(path) = unsafe { candidate.as_ref() }
        .copied()
        .filter(|p| !p.is_null())
    {
        // SAFETY: as above; candidate stays inside the array until its NULL.
        candidate = unsafe { candidate.add(1) };
        // SAFETY: path, argv and envp are NUL-terminated and live.
        unsafe { libc::execve(path, stage.argv, stage.envp) };
        let e = last_errno("execve").errno;
        if e == libc::ENOEXEC {
            // Like execvp: an executable file the kernel cannot run (no
            // `#!` line) is a shell script. Only if that fails too is the
            // program unrunnable.
            exec_as_script(path, stage);
            errno = e;
            break;
        }
        // Like execvp: remember a permission error, keep looking on ENOENT.
        if e != libc::ENOENT && e != libc::ENOTDIR {
            errno = e;
        }
    }
    let _ = send(
        plan.sync_fd,
        &Message::failure(
            Message::EXEC_FAILED,
            ChildFailure {
                step: "execve",
                errno,
            },
        ),
        None,
    );
    // SAFETY: _exit never returns.
    unsafe { libc::_exit(127) }
}

/// The most arguments a script without `#!` may take (its argv is built on
/// the exec stack: init's memory may not be written here, and the program
/// may not allocate).
const SCRIPT_ARGS_MAX: usize = 1024;

/// Runs `path` with `/bin/sh` as `execvp` does for a file the kernel
/// cannot execute: `/bin/sh path arg1 ...`, the same environment. Returns
/// only if that fails (no `/bin/sh`, or too many arguments). Never inlined:
/// its 8 KiB array stays off the stack of every other exec.
#[inline(never)]
fn exec_as_script(path: *const libc::c_char, stage: &StagePlan<'_>) {
    let mut argv = [std::ptr::null::<libc::c_char>(); SCRIPT_ARGS_MAX + 2];
    argv[0] = c"/bin/sh".as_ptr();
    argv[1] = path;
    let mut n = 2;
    let mut arg = stage.argv;
    // SAFETY: stage.argv is a NULL-terminated array (checked by
    // run_request::decode); the first element (the program's name) is
    // skipped only if it is not the terminating NULL.
    unsafe {
        if !(*arg).is_null() {
            arg = arg.add(1);
        }
        while !(*arg).is_null() {
            if n > SCRIPT_ARGS_MAX {
                return;
            }
            argv[n] = *arg;
            n += 1;
            arg = arg.add(1);
        }
    }
    // `argv[n]` is still NULL: the array's terminator.
    // SAFETY: NUL-terminated strings in a NULL-terminated array, all live.
    unsafe { libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), stage.envp) };
}

/// Reaps every process until `main` exits; returns the EXITED message for
/// it, with the CPU time and largest RSS of everything reaped so far.
fn reap_until(main: libc::pid_t) -> Result<Message, ChildFailure> {
    let mut m = Message::new(Message::EXITED);
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid for the kernel to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pointers to locals.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::__WALL, &mut usage) };
        if pid < 0 {
            let failure = last_errno("wait for the program");
            if failure.errno == libc::EINTR {
                continue;
            }
            return Err(failure);
        }
        account(&mut m, status, &usage, true);
        if pid == main {
            m.status = status;
            return Ok(m);
        }
    }
}

/// Reaps whatever is left after the kill, counting its CPU time (not its
/// SIGKILL, which was ours).
fn reap_all(m: &mut Message) {
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid for the kernel to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pointers to locals.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::__WALL, &mut usage) };
        if pid < 0 {
            if last_errno("").errno == libc::EINTR {
                continue;
            }
            return; // ECHILD: nobody left.
        }
        account(m, status, &usage, false);
    }
}

fn account(m: &mut Message, status: i32, usage: &libc::rusage, count_signal: bool) {
    m.cpu_us += (usage.ru_utime.tv_sec as u64) * 1_000_000
        + usage.ru_utime.tv_usec as u64
        + (usage.ru_stime.tv_sec as u64) * 1_000_000
        + usage.ru_stime.tv_usec as u64;
    m.max_rss_kb = m.max_rss_kb.max(usage.ru_maxrss as u64);
    if count_signal && libc::WIFSIGNALED(status) {
        m.signals_seen |= 1u64 << (libc::WTERMSIG(status) as u32 & 63);
    }
}
