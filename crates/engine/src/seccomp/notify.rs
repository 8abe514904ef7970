//! Installing the filter (child side) and answering its notifications
//! (supervisor side).
//!
//! With [`DenyMode::Notify`](super::DenyMode::Notify) every refused call
//! stops the calling thread and arrives on the listener fd; the supervisor
//! names it, counts it and answers with the errno the policy gives
//! ([`Policy::denial`]). The call never runs: the answer is always an
//! error, so the supervisor never acts on the target's behalf and there is
//! no time-of-check/time-of-use window to worry about.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use syscalls::Sysno;

use super::policy::Class;
use super::{Arch, Policy, SeccompError, AUDIT_ARCH_I386, X32_SYSCALL_BIT};

/// The most distinct names counted; further ones are counted as `other`.
pub const MAX_DISTINCT_NAMES: usize = 256;

const SECCOMP_SET_MODE_FILTER: usize = 1;

/// What the supervisor answers a notification with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The (positive) errno returned to the caller.
    pub errno: i32,
    /// The call's name: the syscall name on the native architecture,
    /// `i386:<name>` / `i386:<nr>` for 32-bit x86 calls, `x32:<nr>` for x32
    /// calls, `syscall_<nr>` for numbers without a name, and
    /// `arch_<hex>:<nr>` for any other architecture.
    pub name: String,
}

impl Policy {
    /// What to answer a notification for call `nr` of audit arch `arch`:
    /// `EPERM` for `[deny]` and failed rules, `ENOSYS` for everything else
    /// (unknown calls, other architectures, x32).
    pub fn denial(&self, arch: u32, nr: i32, args: &[u64; 6]) -> Denial {
        let enosys = |name: String| Denial {
            errno: libc::ENOSYS,
            name,
        };
        // The bit pattern is what the kernel compared; keep it.
        let raw = nr as u32;
        let Some(native) = Arch::from_audit_arch(arch) else {
            if arch == AUDIT_ARCH_I386 {
                let name = usize::try_from(raw)
                    .ok()
                    .and_then(syscalls::x86::Sysno::new)
                    .map_or_else(|| format!("i386:{nr}"), |s| format!("i386:{}", s.name()));
                return enosys(name);
            }
            return enosys(format!("arch_{arch:#x}:{nr}"));
        };
        if nr < 0 {
            return enosys(format!("syscall_{nr}"));
        }
        if native == Arch::X86_64 && raw & X32_SYSCALL_BIT != 0 {
            return enosys(format!("x32:{}", raw & !X32_SYSCALL_BIT));
        }
        let Some(name) = native.syscall_name(raw) else {
            return enosys(format!("syscall_{nr}"));
        };
        let errno = match self.class(name) {
            Some(Class::Deny) => libc::EPERM,
            // The filter notifies a rule call only when a check failed.
            Some(Class::Rule) if !self.rules_allow(name, args) => libc::EPERM,
            Some(Class::SilentEnosys) | None => libc::ENOSYS,
            // An allowed call, or a rule call whose arguments pass, is never
            // notified by a filter compiled from this policy: the filter
            // came from another policy. Refuse conservatively.
            Some(Class::Rule) | Some(Class::Allow) => libc::EPERM,
        };
        Denial {
            errno,
            name: name.to_owned(),
        }
    }
}

/// `seccomp(op, flags, args)`.
fn seccomp(op: libc::c_uint, flags: libc::c_ulong, args: *mut libc::c_void) -> io::Result<i64> {
    // SAFETY: seccomp(2) reads or writes `args` according to `op`; every
    // caller passes a pointer to a live object of the type `op` expects.
    let ret = unsafe { libc::syscall(libc::SYS_seccomp, op, flags, args) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Whether the kernel supports `SECCOMP_RET_USER_NOTIF` (Linux 5.0+).
pub fn user_notif_supported() -> bool {
    let mut action: u32 = libc::SECCOMP_RET_USER_NOTIF;
    seccomp(
        libc::SECCOMP_GET_ACTION_AVAIL,
        0,
        std::ptr::from_mut(&mut action).cast(),
    )
    .is_ok()
}

/// The kernel's sizes of the notification structures, never smaller than
/// ours (a newer kernel may have larger ones).
fn notif_sizes() -> (usize, usize) {
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    let ours = (
        std::mem::size_of::<libc::seccomp_notif>(),
        std::mem::size_of::<libc::seccomp_notif_resp>(),
    );
    match seccomp(
        libc::SECCOMP_GET_NOTIF_SIZES,
        0,
        std::ptr::from_mut(&mut sizes).cast(),
    ) {
        Ok(_) => (
            ours.0.max(usize::from(sizes.seccomp_notif)),
            ours.1.max(usize::from(sizes.seccomp_notif_resp)),
        ),
        Err(_) => ours,
    }
}

/// The supervisor's end of a filter's listener fd.
#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
    notif_size: usize,
    resp_size: usize,
}

impl Notifier {
    /// Wraps a listener fd (from [`install_with_listener`], passed to the
    /// supervisor).
    pub fn new(fd: OwnedFd) -> Self {
        let (notif_size, resp_size) = notif_sizes();
        Notifier {
            fd,
            notif_size,
            resp_size,
        }
    }

    /// The listener fd, to poll for `POLLIN` (a notification is waiting)
    /// and `POLLHUP` (every task using the filter has exited).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receives one notification, counts it in `counts` under its name
    /// (at most [`MAX_DISTINCT_NAMES`] names, then `other`) and answers it
    /// with the policy's errno. A target that died meanwhile is not an
    /// error. Blocks if no notification is waiting: poll first.
    pub fn handle_one(
        &self,
        policy: &Policy,
        counts: &mut BTreeMap<String, u64>,
    ) -> Result<(), SeccompError> {
        let fd = self.fd.as_raw_fd();
        // u64 words keep the buffer aligned for `seccomp_notif`; zeroed
        // fresh for every receive, as the kernel requires.
        let mut buf = vec![0u64; self.notif_size.div_ceil(8)];
        loop {
            // SAFETY: `buf` is writable, aligned and at least as large as
            // the kernel's `struct seccomp_notif` (SECCOMP_GET_NOTIF_SIZES).
            let ret = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, buf.as_mut_ptr()) };
            if ret == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The target was killed or its call interrupted before we
                // got it: nothing to answer.
                Some(libc::ENOENT) => return Ok(()),
                _ => return Err(SeccompError::NotifRecv { fd, source: err }),
            }
        }
        // SAFETY: `buf` is aligned for u64 (hence for seccomp_notif, whose
        // alignment is 8), at least size_of::<seccomp_notif>() long, and
        // was filled by the kernel; every bit pattern is a valid value.
        let notif: libc::seccomp_notif = unsafe { std::ptr::read(buf.as_ptr().cast()) };

        let denial = policy.denial(notif.data.arch, notif.data.nr, &notif.data.args);
        let key = if counts.len() >= MAX_DISTINCT_NAMES && !counts.contains_key(&denial.name) {
            "other".to_owned()
        } else {
            denial.name
        };
        *counts.entry(key).or_insert(0) += 1;

        let mut resp_buf = vec![0u64; self.resp_size.div_ceil(8)];
        let resp = libc::seccomp_notif_resp {
            id: notif.id,
            val: 0,
            error: -denial.errno,
            flags: 0,
        };
        // SAFETY: `resp_buf` is aligned for u64 and at least
        // size_of::<seccomp_notif_resp>() long.
        unsafe { std::ptr::write(resp_buf.as_mut_ptr().cast(), resp) };
        // SAFETY: `resp_buf` holds a valid seccomp_notif_resp and is as
        // large as the kernel's version of the struct.
        let ret = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, resp_buf.as_mut_ptr()) };
        if ret != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(SeccompError::NotifSend {
                    fd,
                    id: notif.id,
                    source: err,
                });
            }
        }
        Ok(())
    }
}

/// Installs `prog` on the calling thread and returns the listener fd
/// (close-on-exec). Async-signal-safe: one raw syscall, no allocation, no
/// errno access. The caller must already have set `PR_SET_NO_NEW_PRIVS`.
/// On failure returns the errno.
pub fn install_with_listener(prog: &libc::sock_fprog) -> Result<RawFd, i32> {
    // SAFETY: seccomp(2) only reads `*prog` and the instructions it points
    // to, which the caller keeps alive (CompiledFilter::as_fprog).
    let ret = unsafe {
        syscalls::syscall3(
            Sysno::seccomp,
            SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as usize,
            std::ptr::from_ref(prog) as usize,
        )
    };
    match ret {
        Ok(fd) => RawFd::try_from(fd).map_err(|_| libc::EBADF),
        Err(errno) => Err(errno.into_raw()),
    }
}

/// Installs `prog` on the calling thread, without a listener (for kernels
/// without user notification, with a filter compiled in
/// [`DenyMode::Errno`](super::DenyMode::Errno)). Async-signal-safe like
/// [`install_with_listener`]. On failure returns the errno.
pub fn install(prog: &libc::sock_fprog) -> Result<(), i32> {
    // SAFETY: as in `install_with_listener`.
    let ret = unsafe {
        syscalls::syscall3(
            Sysno::seccomp,
            SECCOMP_SET_MODE_FILTER,
            0,
            std::ptr::from_ref(prog) as usize,
        )
    };
    ret.map(|_| ()).map_err(|errno| errno.into_raw())
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::seccomp::{default_policy, DenyMode, AUDIT_ARCH_AARCH64, AUDIT_ARCH_X86_64};

    fn policy() -> &'static Policy {
        default_policy().expect("the default policy parses")
    }

    #[test]
    fn denial_names_and_errnos() {
        let p = policy();
        let none = [0u64; 6];
        let x86 = AUDIT_ARCH_X86_64;
        let d = p.denial(x86, 101, &none);
        assert_eq!((d.errno, d.name.as_str()), (libc::EPERM, "ptrace"));
        let d = p.denial(x86, 999, &none);
        assert_eq!((d.errno, d.name.as_str()), (libc::ENOSYS, "syscall_999"));
        // A real syscall the policy does not list: ENOSYS under its name.
        let d = p.denial(x86, 139, &none);
        assert_eq!((d.errno, d.name.as_str()), (libc::ENOSYS, "sysfs"));
        let d = p.denial(AUDIT_ARCH_I386, 26, &none);
        assert_eq!((d.errno, d.name.as_str()), (libc::ENOSYS, "i386:ptrace"));
        let d = p.denial(AUDIT_ARCH_I386, 9999, &none);
        assert_eq!(d.name, "i386:9999");
        let d = p.denial(x86, 0x4000_0065, &none);
        assert_eq!((d.errno, d.name.as_str()), (libc::ENOSYS, "x32:101"));
        let d = p.denial(0x1234, 1, &none);
        assert_eq!((d.errno, d.name.as_str()), (libc::ENOSYS, "arch_0x1234:1"));
        // aarch64: ptrace is 117.
        let d = p.denial(AUDIT_ARCH_AARCH64, 117, &none);
        assert_eq!((d.errno, d.name.as_str()), (libc::EPERM, "ptrace"));
        // A failed rule: EPERM.
        let d = p.denial(x86, 16, &[0, 0x5412, 0, 0, 0, 0]);
        assert_eq!((d.errno, d.name.as_str()), (libc::EPERM, "ioctl"));
        let d = p.denial(x86, -1, &none);
        assert_eq!((d.errno, d.name.as_str()), (libc::ENOSYS, "syscall_-1"));
    }

    #[test]
    fn user_notif_is_detected() {
        // The test machines run 5.0+ kernels; this documents the probe works.
        assert!(user_notif_supported());
    }

    // ---- child-side helpers: raw syscalls only, no allocation ----

    fn errno_of(ret: Result<usize, syscalls::Errno>) -> i32 {
        match ret {
            Ok(_) => 0,
            Err(e) => e.into_raw(),
        }
    }

    /// Sends `fd` over unix socket `sock` with SCM_RIGHTS.
    fn send_fd(sock: RawFd, fd: RawFd) -> bool {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is pure arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: msg_control points at 64 zeroed, aligned bytes, more than
        // CMSG_SPACE(4), so the first header and its data are in bounds.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return false;
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        }
        // SAFETY: msg and everything it points to live until the call returns.
        unsafe { libc::sendmsg(sock, &msg, 0) == 1 }
    }

    /// Receives an fd sent by `send_fd`.
    fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        // SAFETY: as in send_fd.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: msg points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled msg_control; CMSG_FIRSTHDR checks the length.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null()
                || (*cmsg).cmsg_level != libc::SOL_SOCKET
                || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            {
                return Err(io::Error::other("no fd received"));
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
            Ok(OwnedFd::from_raw_fd(fd))
        }
    }

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
        // SAFETY: both fds were just created and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Child side: no_new_privs, install, pass the listener (if any).
    /// Returns normally only on success; exits 100+ on failure.
    fn child_install(prog: &libc::sock_fprog, sock: Option<RawFd>) {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(100) };
        }
        match sock {
            Some(sock) => match install_with_listener(prog) {
                Ok(fd) => {
                    // SAFETY: F_GETFD on an fd we own.
                    let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                    if fd_flags < 0 || fd_flags & libc::FD_CLOEXEC == 0 {
                        // SAFETY: as above.
                        unsafe { libc::_exit(103) };
                    }
                    if !send_fd(sock, fd) {
                        // SAFETY: as above.
                        unsafe { libc::_exit(102) };
                    }
                    // SAFETY: fd is ours; the supervisor holds its own copy.
                    unsafe { libc::close(fd) };
                }
                // SAFETY: as above.
                Err(_) => unsafe { libc::_exit(101) },
            },
            None => {
                if install(prog).is_err() {
                    // SAFETY: as above.
                    unsafe { libc::_exit(101) };
                }
            }
        }
    }

    fn fork() -> libc::pid_t {
        // SAFETY: the children of these tests only make raw syscalls and
        // _exit or execve, which is safe after fork in a threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        pid
    }

    fn wait(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid: {}", io::Error::last_os_error());
        status
    }

    /// Answers notifications until every task using the filter is gone.
    fn supervise(notifier: &Notifier, pid: libc::pid_t, limit: Duration) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        let deadline = Instant::now() + limit;
        loop {
            let mut pfd = libc::pollfd {
                fd: notifier.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 100) };
            if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                panic!("poll: {}", io::Error::last_os_error());
            }
            if pfd.revents & libc::POLLIN != 0 {
                notifier
                    .handle_one(policy(), &mut counts)
                    .expect("handle_one");
            } else if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                return counts;
            }
            if Instant::now() > deadline {
                // SAFETY: pid is our child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("child {pid} did not finish in {limit:?}; counts so far {counts:?}");
            }
        }
    }

    /// The probe run in the child once the filter is in place: bit 0 if
    /// ptrace got EPERM, bit 1 if syscall 999 got ENOSYS.
    fn probe() -> ! {
        let mut code = 0;
        // SAFETY: PTRACE_TRACEME takes no pointers.
        let r =
            unsafe { syscalls::syscall4(Sysno::ptrace, libc::PTRACE_TRACEME as usize, 0, 0, 0) };
        if errno_of(r) == libc::EPERM {
            code |= 1;
        }
        // SAFETY: syscall 999 does not exist; it takes nothing.
        let r = syscalls::Errno::from_ret(unsafe { syscalls::raw::syscall0(999) });
        if errno_of(r) == libc::ENOSYS {
            code |= 2;
        }
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(code) }
    }

    #[test]
    fn notify_mode_records_ptrace_and_unknown_calls() {
        let filter = policy()
            .compile(Arch::native(), DenyMode::Notify)
            .expect("compiles");
        let prog = filter.as_fprog();
        let (parent_sock, child_sock) = socketpair();
        let pid = fork();
        if pid == 0 {
            child_install(&prog, Some(child_sock.as_raw_fd()));
            probe();
        }
        drop(child_sock);
        let notifier = Notifier::new(recv_fd(parent_sock.as_raw_fd()).expect("listener fd"));
        let counts = supervise(&notifier, pid, Duration::from_secs(20));
        let status = wait(pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            3,
            "the child saw EPERM and ENOSYS"
        );
        let want: BTreeMap<String, u64> =
            [("ptrace".to_owned(), 1), ("syscall_999".to_owned(), 1)].into();
        assert_eq!(counts, want);
    }

    #[test]
    fn errno_mode_refuses_without_a_supervisor() {
        let filter = policy()
            .compile(Arch::native(), DenyMode::Errno)
            .expect("compiles");
        let prog = filter.as_fprog();
        let pid = fork();
        if pid == 0 {
            child_install(&prog, None);
            probe();
        }
        let status = wait(pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            3,
            "the child saw EPERM and ENOSYS"
        );
    }

    #[test]
    fn the_counts_map_is_capped() {
        // Exercise the cap through a fake notifier loop: the key choice is
        // the same code path as handle_one's.
        let mut counts: BTreeMap<String, u64> = (0..MAX_DISTINCT_NAMES)
            .map(|i| (format!("n{i}"), 1))
            .collect();
        let name = "new".to_owned();
        let key = if counts.len() >= MAX_DISTINCT_NAMES && !counts.contains_key(&name) {
            "other".to_owned()
        } else {
            name
        };
        *counts.entry(key).or_insert(0) += 1;
        assert_eq!(counts.get("other"), Some(&1));
    }

    fn find_in_path(program: &str) -> Option<CString> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
            .and_then(|p| CString::new(p.into_os_string().into_encoded_bytes()).ok())
    }

    /// Runs `argv` under the default policy with stdout and stderr sent to
    /// /dev/null; returns its wait status and the recorded denials, or
    /// None when the program is not installed.
    fn run_program(argv: &[&str], mode: DenyMode) -> Option<(i32, BTreeMap<String, u64>)> {
        let path = find_in_path(argv.first()?)?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(*a).expect("no NUL"))
            .collect();
        let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        arg_ptrs.push(std::ptr::null());
        let env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.into_encoded_bytes();
                kv.push(b'=');
                kv.extend(v.into_encoded_bytes());
                CString::new(kv).ok()
            })
            .collect();
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        let devnull = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        let filter = policy().compile(Arch::native(), mode).expect("compiles");
        let prog = filter.as_fprog();
        let (parent_sock, child_sock) = socketpair();
        let listen = mode == DenyMode::Notify;

        let pid = fork();
        if pid == 0 {
            // SAFETY: dup2 on fds we own; the originals are close-on-exec.
            unsafe {
                libc::dup2(devnull.as_raw_fd(), 1);
                libc::dup2(devnull.as_raw_fd(), 2);
            }
            child_install(&prog, listen.then(|| child_sock.as_raw_fd()));
            // SAFETY: path, argv and envp are NUL-terminated arrays built
            // before fork and still alive in this copy of the address space.
            unsafe {
                libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
                libc::_exit(127);
            }
        }
        drop(child_sock);
        let counts = if listen {
            let notifier = Notifier::new(recv_fd(parent_sock.as_raw_fd()).expect("listener fd"));
            supervise(&notifier, pid, Duration::from_secs(120))
        } else {
            BTreeMap::new()
        };
        Some((wait(pid), counts))
    }

    #[test]
    fn real_runtimes_run_under_the_default_policy() {
        let programs: &[&[&str]] = &[
            &["bash", "-c", "echo hi | cat; ls / > /dev/null"],
            &[
                "python3",
                "-c",
                "import json,threading,subprocess,socket; socket.getaddrinfo('localhost', 80); \
                 t=threading.Thread(target=print); t.start(); t.join(); \
                 raise SystemExit(subprocess.run(['ls','/'],capture_output=True).returncode)",
            ],
            &[
                "node",
                "-e",
                "require('fs').readdirSync('/'); require('child_process').execSync('true')",
            ],
            &["gcc", "--version"],
            &[
                "perl",
                "-e",
                "opendir(my $d, '/') or die; system('true') == 0 or die",
            ],
            &["java", "-version"],
            &["rustc", "--version"],
            &["ruby", "-e", "puts Dir.entries('/').size"],
            &["php", "-r", "echo count(scandir('/'));"],
            &["go", "version"],
            // Compile-and-run: compilers fork helpers, linkers mmap a lot,
            // the JVM starts many threads.
            &[
                "bash",
                "-c",
                "set -e; d=$(mktemp -d); cd \"$d\"; \
                 echo 'int main(void){return 0;}' > a.c; gcc -O2 a.c -o a; ./a; \
                 echo 'fn main(){let t=std::thread::spawn(||1);assert_eq!(t.join().unwrap(),1);}' > m.rs; \
                 if command -v rustc >/dev/null; then rustc -O m.rs -o m; ./m; fi; \
                 if command -v javac >/dev/null; then \
                 echo 'public class H{public static void main(String[] a)throws Exception{Thread t=new Thread(()->{});t.start();t.join();}}' > H.java; \
                 javac H.java; java -cp . H; fi; \
                 cd /; rm -rf \"$d\"",
            ],
        ];
        let mut failures = Vec::new();
        for argv in programs {
            for mode in [DenyMode::Notify, DenyMode::Errno] {
                let Some((status, counts)) = run_program(argv, mode) else {
                    eprintln!("skipped {} (not installed)", argv[0]);
                    break;
                };
                let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                eprintln!(
                    "{} {mode:?}: status {status:#x}, denied {counts:?}",
                    argv[0]
                );
                if !ok || !counts.is_empty() {
                    failures.push(format!(
                        "{} {mode:?}: status {status:#x}, denied {counts:?}",
                        argv[0]
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn real_program_denials_are_recorded_by_name() {
        let script = "import ctypes, errno, socket\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
assert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == errno.EPERM\n\
try:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\n    raise SystemExit(3)\n\
except PermissionError:\n    pass\n\
assert libc.syscall(999) == -1 and ctypes.get_errno() == errno.ENOSYS\n";
        let Some((status, counts)) = run_program(&["python3", "-c", script], DenyMode::Notify)
        else {
            eprintln!("skipped: python3 not installed");
            return;
        };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
        let want: BTreeMap<String, u64> = [
            ("socket".to_owned(), 1),
            ("syscall_999".to_owned(), 1),
            ("unshare".to_owned(), 1),
        ]
        .into();
        assert_eq!(counts, want);
        let Some((status, counts)) = run_program(&["python3", "-c", script], DenyMode::Errno)
        else {
            return;
        };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
        assert!(counts.is_empty());
    }
}
