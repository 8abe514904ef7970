//! Small safe wrappers over the syscalls the supervisor makes. Each raw call
//! is wrapped once here and returns `io::Result`.
//!
//! Code that runs inside the sandbox's init (between clone and exec) does
//! not use these: it lives in `child.rs` and makes its raw calls there.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Reads a small file whole, as text. Files in /proc and cgroupfs report
/// a size of 0, so `std::fs::read_to_string` reads them in growing chunks
/// from 32 bytes (eight reads for a 1 KiB `/proc/self/mountinfo`, each
/// regenerating its part); this reads 4 KiB at a time (two reads). Nor
/// does it ask the file's size and position first (`read_to_end` on a
/// `File` makes a statx and an lseek that tell nothing here): open, read
/// to end of file, close.
pub fn read_small_file(path: impl AsRef<std::path::Path>) -> io::Result<String> {
    // Most such files fit in a page, mountinfo in a few.
    const CHUNK: usize = 4096;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    loop {
        match read_append(std::os::fd::AsFd::as_fd(&file), &mut bytes, CHUNK) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Gives the file behind `fd` (a pipe, say) to `uid`:`gid`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchown takes a descriptor we borrow and two integers.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    Ok(())
}

/// A connected pair of SOCK_SEQPACKET unix sockets, close-on-exec: messages
/// keep their boundaries, and EOF tells that the other side is gone.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A sealed memfd holding `data`, positioned at its start: the sandbox's
/// stdin. Seals forbid writing, growing and shrinking it, even through a
/// reopen of /proc/self/fd/0.
pub fn sealed_memfd(name: &std::ffi::CStr, data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string.
    let raw = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: memfd_create returned a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut written = 0;
    while written < data.len() {
        // SAFETY: the range lies within `data`.
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                data[written..].as_ptr().cast(),
                data.len() - written,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        written += n as usize;
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: plain fcntl/lseek on a descriptor we own.
    unsafe {
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals))?;
        if libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Receives one message into `buf`: its length (0 at EOF) and the fd
/// attached to it, if any (any further ones are closed).
pub fn recv_with_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let (n, fds) = recv_with_fds(sock, buf)?;
    Ok((n, fds.into_iter().next()))
}

/// Receives one message into `buf`: its length (0 at EOF) and every fd
/// attached to it (`SCM_RIGHTS`, at most 16; any beyond are closed by the
/// kernel as truncated).
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    const MAX_FDS: usize = 16;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one cmsghdr with MAX_FDS descriptors, 8-byte aligned.
    let mut cmsg_buf = [0u64; 2 + MAX_FDS / 2];
    // SAFETY: an all-zero msghdr is valid; its fields are filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    let n = loop {
        // SAFETY: msg points to valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut received = Vec::new();
    // SAFETY: the kernel filled msg_control; the CMSG_* macros walk it
    // within msg_controllen, and each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / 4 descriptors, fresh and ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    received.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, received))
}

/// A pidfd for `pid`, close-on-exec. Only safe from recycling when `pid`
/// is this process's unreaped child.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a fresh descriptor.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the descriptor is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends one packet of `bytes` on a `SOCK_SEQPACKET` socket, with `fds`
/// attached (`SCM_RIGHTS`; at most 16).
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    const MAX_FDS: usize = 16;
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Room for one cmsghdr with MAX_FDS descriptors, 8-byte aligned.
    let mut cmsg_buf = [0u64; 2 + MAX_FDS / 2];
    // SAFETY: an all-zero msghdr is valid; its fields are filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as libc::c_uint;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        // SAFETY: pure computation on a length.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
        // SAFETY: the control buffer holds CMSG_SPACE(16 fds) bytes, enough
        // for one header and `fds`; CMSG_FIRSTHDR is non-null for it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: msg points to live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes all of `bytes` to `fd`.
pub fn write_all(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        done += write_some(fd, &bytes[done..])?;
    }
    Ok(())
}

/// One `write(2)` of as much of `bytes` as `fd` takes (retried on EINTR):
/// how many bytes were written. A non-blocking descriptor that takes none
/// now fails with `WouldBlock`.
pub fn write_some(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `bytes`.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes what `fd` takes now, without waiting for its reader: a socket
/// gets `send` with `MSG_DONTWAIT` (its descriptor may be a blocking one
/// shared with others, whose flags are left alone; a socket cannot be
/// reopened non-blocking as a pipe can), anything else a plain `write`
/// (the caller made it non-blocking, or it is a file).
pub fn write_without_waiting(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `bytes`.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOTSOCK) => return write_some(fd, bytes),
            _ => return Err(err),
        }
    }
}

/// Reads from `fd` into the spare capacity of `buf` (at most `max` bytes,
/// reserving room for them first) and appends what was read. No byte of
/// the buffer is touched beyond those the kernel writes, so a large read
/// size costs no page faults for pages that stay empty.
pub fn read_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(max);
    // SAFETY: `spare` is valid for writes of `want <= spare.len()` bytes;
    // read(2) writes at most `want` bytes there and nothing else.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: read(2) initialised the first `n <= want` bytes of the spare
    // capacity, which directly follow the vector's current contents.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain fcntl on a valid descriptor.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// poll(2) over `fds` for at most `timeout_ms` (-1: forever). EINTR counts
/// as a timeout: the caller recomputes its deadlines anyway.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of pollfd of the given length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

/// Sends `signal` to the process behind `pidfd` (never to a recycled pid).
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// Waits for the child `pid` to end and returns its raw wait status and
/// resource usage.
pub fn wait_pid(pid: libc::pid_t) -> io::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The calling thread's fsuid and fsgid, set for the duration of a closure
/// and restored after. File creation in the sandbox's tmpfs must happen as
/// the sandbox's host ids (the tmpfs belongs to the sandbox's user
/// namespace, where host root is not mapped). Only this thread is affected.
pub fn with_fs_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsuid/setfsgid change only this thread's filesystem ids and
    // return the previous ones; they cannot fail in a way that matters here
    // (a refused change keeps the old id and file creation then fails).
    let (old_uid, old_gid) = unsafe { (libc::setfsuid(uid), libc::setfsgid(gid)) };
    let out = f();
    // SAFETY: restoring the ids this thread had before.
    unsafe {
        libc::setfsgid(old_gid as u32);
        libc::setfsuid(old_uid as u32);
    }
    out
}

/// Effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Effective gid of this process.
pub fn egid() -> u32 {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() }
}

/// Number of online CPUs (at least 1), read once per process (glibc reads
/// a sysfs file for it each time).
pub fn online_cpus() -> u64 {
    static CPUS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        // SAFETY: sysconf cannot fail in a harmful way.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if n < 1 {
            1
        } else {
            n as u64
        }
    })
}

/// statvfs on an open descriptor: (free blocks for the unprivileged, free inodes).
pub fn free_space(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // SAFETY: an all-zero statvfs is a valid value for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and pointer.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok((st.f_bavail, st.f_favail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_small_file_reads_the_whole_file_across_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let text: String = (0..40_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        std::fs::write(&path, &text).expect("write");
        assert_eq!(read_small_file(&path).expect("read"), text);
        std::fs::write(&path, "").expect("write");
        assert_eq!(read_small_file(&path).expect("read"), "");
        std::fs::write(&path, [0xff, 0xfe]).expect("write");
        let err = read_small_file(&path).expect_err("not UTF-8");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let missing = read_small_file(dir.path().join("missing")).expect_err("missing");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn read_small_file_reads_proc_files_of_unknown_size() {
        let stat = read_small_file("/proc/self/stat").expect("read");
        assert!(stat.ends_with('\n'), "{stat:?}");
        assert!(stat.starts_with(&format!("{} (", std::process::id())));
    }
}
