//! Helpers for tests that must run code in a forked child.
//!
//! The test harness is multi-threaded, so a forked child may only do what the
//! engine's real child may do: raw syscalls, no allocation, no panics. The
//! child computes a fixed array of `i32` results, writes it to a pipe and
//! exits; the parent reads it back and makes its assertions there.

use std::os::fd::RawFd;

/// Runs `probe` in a forked child and returns the `N` numbers it produced.
///
/// `probe` must be async-signal-safe. Panics (in the parent) if the child
/// dies before reporting.
pub fn in_forked_child<const N: usize>(probe: impl FnOnce() -> [i32; N]) -> [i32; N] {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    let [read_end, write_end] = fds;

    // SAFETY: the child runs only `probe` (async-signal-safe by contract),
    // write and _exit, so forking a multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let results = probe();
        let len = std::mem::size_of_val(&results);
        // SAFETY: `results` is a live array of `len` bytes; write and _exit are
        // async-signal-safe.
        unsafe {
            let written = libc::write(write_end, results.as_ptr().cast(), len);
            libc::_exit(if written == len as isize { 0 } else { 101 });
        }
    }

    // SAFETY: we own `write_end`; the parent only reads.
    unsafe { libc::close(write_end) };
    let mut results = [0i32; N];
    let len = std::mem::size_of_val(&results);
    let mut got = 0usize;
    while got < len {
        // SAFETY: the destination is the unfilled tail of `results`.
        let n = unsafe {
            libc::read(
                read_end,
                results.as_mut_ptr().cast::<u8>().add(got).cast(),
                len - got,
            )
        };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: we own `read_end`.
    unsafe { libc::close(read_end) };
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid int to fill.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert_eq!(
        got, len,
        "the child died before reporting (wait status {status:#x})"
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child wait status {status:#x}"
    );
    results
}

/// The current errno, or 0 if `rc` says the call succeeded. Async-signal-safe.
pub fn errno_of(rc: libc::c_long) -> i32 {
    if rc >= 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// Counts heap allocations per thread, so tests can prove that child-side
/// code allocates nothing.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_allocation() {
    // `try_with` fails only while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every method forwards to the system allocator unchanged; counting
// touches only a const-initialised thread-local Cell, which never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller upholds `alloc`'s contract, passed on unchanged.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// How many allocations the calling thread has made so far.
pub fn allocations_on_this_thread() -> u64 {
    ALLOCATIONS.try_with(|count| count.get()).unwrap_or(0)
}

/// Runs `f` and returns its result with the number of heap allocations it
/// made (saturated to `i32`). Async-signal-safe if `f` is.
pub fn counting_allocations<T>(f: impl FnOnce() -> T) -> (T, i32) {
    let before = allocations_on_this_thread();
    let value = f();
    let made = allocations_on_this_thread().saturating_sub(before);
    (value, i32::try_from(made).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocation_counter_sees_allocations() {
        let (buffer, made) = counting_allocations(|| Vec::<u8>::with_capacity(16));
        assert!(buffer.capacity() >= 16);
        assert!(made >= 1, "counted {made}");
        let ((), none) = counting_allocations(|| ());
        assert_eq!(none, 0);
    }
}
