//! Stopping on SIGINT, SIGTERM and SIGHUP: the sandboxes are taken down
//! (init killed, cgroups removed) before formicary exits, instead of
//! formicary dying at once and leaving its cgroups for the next run to
//! clean up.
//!
//! The three signals are blocked in the calling thread before any other
//! thread exists (every later thread inherits the mask, and each sandbox's
//! init resets its own). A one-shot command (`exec`, `run`) gives the
//! engine a signalfd of them (`Engine::stop_runs_on`), which the
//! supervisor polls beside the run's own descriptors: no thread is started
//! (one costs ~80 µs per run here). `batch`, long-lived and threaded
//! anyway, has a thread wait for them with `sigwait` and call
//! `Engine::stop_all`.

use formicary_engine::sandbox::Engine;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The signals that stop formicary.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The signal that stopped formicary, 0 before one came.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// How long the sandboxes get to be taken down before formicary exits
/// anyway (a `batch` worker may be blocked reading its input).
const GRACE: Duration = Duration::from_secs(5);

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and fill the set on
    // this stack; the signal numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the stop signals in this thread (and so in every thread it
/// starts from now on). Call it before `Engine::new` and before any
/// thread is started, then [`watch`] once the engine exists.
pub fn block() -> std::io::Result<()> {
    let set = stop_set();
    // SAFETY: pthread_sigmask reads the set on this stack.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// A signalfd of the stop signals (blocked first with [`block`]): readable
/// once one is pending, and then [`pending`] tells which.
pub fn signal_fd() -> std::io::Result<OwnedFd> {
    let set = stop_set();
    // SAFETY: signalfd reads the set on this stack and returns a fresh
    // descriptor, which is ours.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from signalfd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The stop signal pending on `fd` (a [`signal_fd`]), if one is; taking
/// it.
pub fn pending(fd: BorrowedFd<'_>) -> Option<libc::c_int> {
    // SAFETY: an all-zero signalfd_siginfo is valid; read fills it.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: read writes at most `size` bytes into `info`.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    (n == size as isize).then_some(info.ssi_signo as libc::c_int)
}

/// Starts the thread that waits for a stop signal: on one, it stops every
/// sandbox of `engine` ([`Engine::stop_all`]), waits for them to be taken
/// down by the threads running them (at most [`GRACE`]), and exits with
/// 128 + the signal if the command has not ended by itself by then.
pub fn watch(engine: Arc<Engine>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("formicary-signals".to_string())
        .spawn(move || {
            let set = stop_set();
            let mut signal: libc::c_int = 0;
            // SAFETY: sigwait reads the set and writes the signal number,
            // both on this stack; the signals are blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            RECEIVED.store(signal, Ordering::SeqCst);
            engine.stop_all();
            let deadline = std::time::Instant::now() + GRACE;
            while engine.live_sandboxes() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            // The command's own thread normally ends first, with the
            // stopped run's result; this is for one that cannot.
            std::thread::sleep(Duration::from_millis(500));
            eprintln!("formicary: stopped by {}", name(signal));
            std::process::exit(128 + signal);
        })?;
    Ok(())
}

/// The stop signal received, if one was.
pub fn received() -> Option<libc::c_int> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

pub fn name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
