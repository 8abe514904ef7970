//! The spawner: a small single-threaded helper process that clones each
//! sandbox's init on the supervisor's behalf.
//!
//! Cloning from the supervisor itself (multithreaded, with a heap that
//! grows with its work) costs twice: clone copies and write-protects the
//! page tables of all of the supervisor's memory, and afterwards the first
//! write to each of those pages by any supervisor thread is a copy-on-write
//! fault whose TLB flush interrupts every other core running the
//! supervisor (an IPI, which a virtual machine makes expensive). The
//! helper is a freshly exec'd program (the embedding binary, run with
//! [`SPAWNER_ARG`], whose `main` hands over to [`main_if_spawner`]), not a
//! fork of the supervisor: it holds none of the supervisor's memory or
//! locks, has one thread, and its clones copy little and flush no other
//! core.
//!
//! What stays the same: init is cloned with the same flags and runs the
//! same `child::run_init` on a plan made the same way
//! (`init_clone::spawn_init`), from the same base, which the supervisor
//! sends once (read-only paths, Landlock ABI, the compiled seccomp
//! program). `CLONE_PARENT` makes init the supervisor's child, not the
//! helper's: the supervisor writes its id maps, reaps it and supervises it
//! exactly as when it cloned it itself, and init's parent-death signal is
//! tied to the supervisor's spawner thread, which lives as long as the
//! engine. The helper sends back init's pid, its pidfd and the
//! supervisor's end of init's socket (`SCM_RIGHTS`) and keeps nothing.
//!
//! The helper dies with the supervisor: its parent-death signal, and
//! end-of-file on its socket. If it dies first, the request that finds it
//! gone fails with a clear error, and the next request starts a new one.

use crate::init_clone::{
    self, spawn_init, ChildMemory, InitBase, InitShape, MountPlanCache, SpawnError, Spawned,
};
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// The first argument that makes a binary calling [`main_if_spawner`] a
/// spawner helper.
pub const SPAWNER_ARG: &str = "__formicary-spawner";

/// How long the supervisor waits for the helper's answer before it gives
/// the helper up (a clone and its plan take about a millisecond; the
/// first answer follows the helper's start).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request (a shape's read-only paths).
const PACKET_MAX: usize = 64 * 1024;

/// The largest answer: the helper cuts an error message to fit, so the
/// supervisor reads answers into a small buffer on its stack.
const ANSWER_MAX: usize = 4096;

/// The largest base (the operator's read-only paths and a seccomp program
/// of at most 4096 instructions, as JSON). Below the kernel's default
/// socket buffer (208 KiB), which bounds one packet.
const BASE_MAX: usize = 160 * 1024;

/// The program an engine runs as its spawner helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnerProgram {
    /// The executable: one whose `main` calls [`main_if_spawner`] first.
    pub path: PathBuf,
    /// Its arguments, starting with [`SPAWNER_ARG`].
    pub args: Vec<OsString>,
}

impl SpawnerProgram {
    /// This process's own executable (`/proc/self/exe`, so the very file
    /// this process runs, even if it was since replaced on disk), with
    /// [`SPAWNER_ARG`]: for a binary whose `main` starts with
    /// [`main_if_spawner`], as `formicary`'s does.
    pub fn this_executable() -> SpawnerProgram {
        SpawnerProgram {
            path: PathBuf::from("/proc/self/exe"),
            args: vec![OsString::from(SPAWNER_ARG)],
        }
    }
}

/// Why the spawner helper could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("cannot start the sandbox spawner {program}: {source}")]
    Start {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the sandbox spawner {program} did not answer ({reason}); it must be a program whose \
         main calls formicary_engine::spawner::main_if_spawner first"
    )]
    Handshake { program: String, reason: String },
    #[error("the engine's settings do not fit in one message to the sandbox spawner ({0} bytes of JSON, at most {BASE_MAX}): list fewer read-only paths")]
    BaseTooLarge(usize),
}

/// If this process was started as a spawner helper (its first argument is
/// [`SPAWNER_ARG`]), serves as one and exits; otherwise returns at once.
/// A binary that embeds the engine and uses [`SpawnerProgram`] calls this
/// first thing in `main`, before it starts threads or parses arguments.
pub fn main_if_spawner() {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(SPAWNER_ARG)) {
        helper_main()
    }
}

/// The helper's messages to the supervisor, as JSON.
#[derive(Serialize, Deserialize)]
enum Answer {
    /// The base was received: ready for shapes.
    Ready,
    /// Cloned; the pidfd and the socket are attached, in that order.
    Spawned {
        pid: libc::pid_t,
    },
    Plan(String),
    Clone(i32),
}

/// The supervisor's side: the helper, restarted when it is found gone.
pub(crate) struct Spawner {
    program: SpawnerProgram,
    /// The base, as JSON: the helper's first message.
    base: Vec<u8>,
    live: Mutex<Option<Helper>>,
    /// Asks the spawner thread to start a helper process.
    starter: Mutex<mpsc::Sender<StartOrder>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A running helper.
struct Helper {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    socket: OwnedFd,
}

/// What the spawner thread starts a helper with, and where it answers.
struct StartOrder {
    program: SpawnerProgram,
    /// The helper's end of its socket, which becomes its stdin.
    socket: OwnedFd,
    answer: mpsc::SyncSender<io::Result<libc::pid_t>>,
}

impl Spawner {
    /// Starts the spawner thread and a first helper. The thread starts
    /// every helper, so that their parent (and, through `CLONE_PARENT`,
    /// every init's parent, whose death their parent-death signal follows)
    /// is a thread that lives exactly as long as the engine.
    pub(crate) fn start(
        base: &InitBase,
        program: &SpawnerProgram,
    ) -> Result<Spawner, SpawnerError> {
        let start_error = |source| SpawnerError::Start {
            program: program.path.display().to_string(),
            source,
        };
        let base = serde_json::to_vec(base).map_err(|e| start_error(io::Error::other(e)))?;
        if base.len() > BASE_MAX {
            return Err(SpawnerError::BaseTooLarge(base.len()));
        }
        let (tx, rx) = mpsc::channel::<StartOrder>();
        let thread = std::thread::Builder::new()
            .name("formicary-spawner".to_string())
            .spawn(move || {
                for order in rx {
                    let answer = start_helper_process(&order.program, order.socket);
                    let _ = order.answer.send(answer);
                }
            })
            .map_err(start_error)?;
        let spawner = Spawner {
            program: program.clone(),
            base,
            live: Mutex::new(None),
            starter: Mutex::new(tx),
            thread: Some(thread),
        };
        let helper = spawner.start_helper()?;
        *spawner.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(helper);
        Ok(spawner)
    }

    /// Starts a helper and hands it the base.
    fn start_helper(&self) -> Result<Helper, SpawnerError> {
        let name = || self.program.path.display().to_string();
        let start_error = |source| SpawnerError::Start {
            program: name(),
            source,
        };
        let (ours, theirs) = crate::sys::seqpacket_pair().map_err(start_error)?;
        set_receive_timeout(&ours, ANSWER_TIMEOUT).map_err(start_error)?;
        let (answer, answered) = mpsc::sync_channel(1);
        let gone = || start_error(io::Error::other("the spawner thread is gone"));
        self.starter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(StartOrder {
                program: self.program.clone(),
                socket: theirs,
                answer,
            })
            .map_err(|_| gone())?;
        let pid = answered.recv().map_err(|_| gone())?.map_err(start_error)?;
        // The helper is an unreaped child of this process: its pid cannot
        // be recycled before the pidfd is open.
        let pidfd = match crate::sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = crate::sys::wait_pid(pid);
                return Err(start_error(e));
            }
        };
        let helper = Helper {
            pid,
            pidfd,
            socket: ours,
        };
        match handshake(&helper, &self.base) {
            Ok(()) => Ok(helper),
            Err(reason) => {
                helper.stop();
                Err(SpawnerError::Handshake {
                    program: name(),
                    reason,
                })
            }
        }
    }

    /// Has the helper clone an init for `shape`.
    pub(crate) fn spawn(&self, shape: &InitShape) -> Result<Spawned, SpawnError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.is_none() {
            *live = Some(
                self.start_helper()
                    .map_err(|e| SpawnError::Spawner(e.to_string()))?,
            );
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
            &mut *self.starter.lock().unwrap_or_else(|e| e.into_inner()),
            closed,
        ));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the helper program (on the spawner thread) with `socket` as its
/// stdin, nothing else open, an empty environment, and a parent-death
/// signal. Returns its pid.
fn start_helper_process(program: &SpawnerProgram, socket: OwnedFd) -> io::Result<libc::pid_t> {
    let parent = std::process::id() as libc::pid_t;
    let mut command = Command::new(&program.path);
    command
        .arg0("formicary-spawner")
        .args(&program.args)
        .env_clear()
        .stdin(Stdio::from(socket))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes two system calls
    // (prctl, getppid) and builds errors from errno without allocating.
    unsafe {
        command.pre_exec(move || {
            // Die with the spawner thread (the engine, or the process).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before the signal was set: it never comes.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // Not waited on through `child`: `Helper::stop` reaps it by pid.
    Ok(child.id() as libc::pid_t)
}

/// Sends the base and waits for the helper's `Ready`.
fn handshake(helper: &Helper, base: &[u8]) -> Result<(), String> {
    crate::sys::send_with_fds(helper.socket.as_fd(), base, &[])
        .map_err(|e| format!("cannot send it the engine's settings: {e}"))?;
    let mut buf = [0u8; 64];
    match crate::sys::recv_with_fds(helper.socket.as_fd(), &mut buf) {
        Ok((0, _)) => Err("it exited".to_string()),
        Ok((n, _)) => match serde_json::from_slice(&buf[..n]) {
            Ok(Answer::Ready) => Ok(()),
            _ => Err("it answered something else than ready".to_string()),
        },
        Err(e) => Err(e.to_string()),
    }
}

/// One request and its answer. An `Err` means the helper is unusable.
fn ask(helper: &Helper, shape: &InitShape) -> io::Result<Result<Spawned, SpawnError>> {
    let request = serde_json::to_vec(shape).map_err(io::Error::other)?;
    crate::sys::send_with_fds(helper.socket.as_fd(), &request, &[])?;
    let mut buf = [0u8; ANSWER_MAX];
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
        Answer::Ready => return Err(io::Error::other("it answered ready twice")),
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

/// The helper process: one thread, serving its socket (stdin) until it
/// closes. Started by someone else than a supervisor (its stdin is not a
/// socket), it says what it is and exits with 2.
fn helper_main() -> ! {
    // SAFETY: fd 0 is this process's stdin; only borrowed for this check.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    if !is_seqpacket_socket(stdin) {
        eprintln!(
            "formicary: `{SPAWNER_ARG}` runs formicary's sandbox spawner, which formicary starts itself; it is not a command"
        );
        std::process::exit(2);
    }
    // The kernel named this process after the file it runs
    // (`/proc/self/exe`: "exe"); say what it is in ps and top.
    // SAFETY: prctl reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"formicary-spawn".as_ptr(), 0, 0, 0) };
    // Default dispositions (formicary's `main`, like Rust's own start-up,
    // ignores SIGPIPE) and an empty
    // mask, once: every init cloned from here inherits them, and need not
    // reset 64 signals itself. This also resets glibc's own two signals
    // (thread cancellation and the set*id broadcast), which is harmless only
    // because the spawner stays single-threaded and calls no set*id wrapper.
    crate::child::reset_signals();
    let code = match take_socket() {
        Ok(socket) => match serve(socket) {
            Ok(()) => 0,
            Err(_) => 1,
        },
        Err(_) => 1,
    };
    std::process::exit(code)
}

fn is_seqpacket_socket(fd: BorrowedFd<'_>) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && kind == libc::SOCK_SEQPACKET
}

/// Moves the socket (stdin) above 2, with /dev/null as 0, and closes every
/// other descriptor above 2, so that init's descriptors never land on 0 to
/// 2 (init installs each stage's stdio there) and the helper holds nothing
/// else open.
fn take_socket() -> io::Result<OwnedFd> {
    // SAFETY: fcntl returns a fresh descriptor, ours.
    let socket = unsafe {
        let moved = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if moved < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(moved)
    };
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: dup2 onto this process's own stdin, replacing the socket
    // there (its copy above 2 is kept).
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(null);
    let keep = socket.as_raw_fd() as libc::c_uint;
    // SAFETY: close_range on this process's own descriptors, none of which
    // is owned by anything still in use (the process has just started).
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
    }
    Ok(socket)
}

/// Receives the base, answers ready, then clones an init per shape.
fn serve(socket: OwnedFd) -> io::Result<()> {
    let mut buf = vec![0u8; BASE_MAX];
    let (n, _) = crate::sys::recv_with_fds(socket.as_fd(), &mut buf)?;
    if n == 0 {
        return Ok(());
    }
    let mut base: InitBase = serde_json::from_slice(&buf[..n]).map_err(io::Error::other)?;
    base.arg_area = init_clone::own_arg_area();
    // Only speed depends on it: a rootless helper keeps the host's mounts.
    let _ = crate::mounts::shed_kernel_interface_mounts();
    let memory = ChildMemory::new();
    let mut plans = MountPlanCache::default();
    send(socket.as_fd(), &Answer::Ready, &[])?;
    buf.truncate(PACKET_MAX);
    loop {
        let n = match crate::sys::recv_with_fds(socket.as_fd(), &mut buf)? {
            (0, _) => return Ok(()),
            (n, _) => n,
        };
        let spawned = match serde_json::from_slice::<InitShape>(&buf[..n]) {
            Ok(shape) => spawn_init(&base, &memory, &mut plans, &shape, true),
            Err(e) => Err(SpawnError::Plan(format!("malformed request: {e}"))),
        };
        match spawned {
            Ok(s) => send(
                socket.as_fd(),
                &Answer::Spawned { pid: s.pid },
                &[s.pidfd.as_raw_fd(), s.sync.as_raw_fd()],
            )?,
            // The supervisor holds its own copies now; `s` closes ours.
            Err(SpawnError::Plan(m)) | Err(SpawnError::Spawner(m)) => {
                send(socket.as_fd(), &Answer::Plan(fit_answer(m)), &[])?
            }
            Err(SpawnError::Clone(e)) => send(
                socket.as_fd(),
                &Answer::Clone(e.raw_os_error().unwrap_or(libc::EIO)),
                &[],
            )?,
        }
    }
}

/// `message`, cut (at a character boundary, marked with "...") so that its
/// answer fits in [`ANSWER_MAX`] bytes of JSON whatever it holds: JSON
/// writes a byte as at most 6 (`\u001f`), and the rest of the answer
/// takes less than 64.
fn fit_answer(mut message: String) -> String {
    let room = (ANSWER_MAX - 64) / 6;
    if message.len() > room {
        let mut end = room;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

fn send(socket: BorrowedFd<'_>, answer: &Answer, fds: &[RawFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(answer).map_err(io::Error::other)?;
    crate::sys::send_with_fds(socket, &bytes, fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_answer_fits_the_supervisors_buffer() {
        for message in [
            "\u{1f}".repeat(10_000),
            "\"".repeat(10_000),
            "é".repeat(10_000),
            "short".to_string(),
        ] {
            let json =
                serde_json::to_vec(&Answer::Plan(fit_answer(message.clone()))).expect("serialize");
            assert!(json.len() <= ANSWER_MAX, "{} bytes", json.len());
        }
        assert_eq!(fit_answer("short".into()), "short");
    }
}
