//! The run request: what the supervisor sends the sandbox's init once the
//! sandbox is built: the working directory, init's rlimits, and each
//! stage's rlimits, argv, environment and candidate paths. Sending it after
//! the clone (rather than preparing it in memory before) is what lets a
//! sandbox be built ahead of the request it will serve (`SandboxPool`).
//!
//! The format is a fixed header ([`RequestHeader`], `repr(C)`) followed by
//! NUL-terminated strings, in a buffer of `u64` words (so the header is
//! aligned). The supervisor encodes it ([`encode`]); init receives it into
//! a buffer reserved before the clone and decodes it ([`decode`]) without
//! allocating: the pointer arrays execve takes are written into a second
//! reserved buffer. The stages' descriptors travel beside it as
//! `SCM_RIGHTS` (see `child.rs`).

use crate::child::MAX_STAGES;
use crate::rlimits::RlimitPlan;
use std::ffi::CString;

/// Most bytes of one request: every stage's argv, environment and program
/// paths together, with the header.
pub const REQUEST_MAX: usize = 1 << 20;

/// Most pointers of one request: every stage's argv, envp and candidate
/// paths, each array with its terminating NULL.
pub const POINTERS_MAX: usize = 32 * 1024;

/// One stage in the header. Its strings lie at `strings_off` in the
/// request: `argc` arguments, `envc` variables, then `ncand` paths to try.
#[repr(C)]
#[derive(Clone)]
pub struct StageHeader {
    pub rlimits: RlimitPlan,
    /// Whether a stdin descriptor comes with this stage.
    pub has_stdin: u32,
    pub argc: u32,
    pub envc: u32,
    pub ncand: u32,
    pub strings_off: u32,
    pub strings_len: u32,
}

/// The fixed part of a request.
#[repr(C)]
#[derive(Clone)]
pub struct RequestHeader {
    /// Bytes of the whole request, header included.
    pub total_len: u64,
    pub n_stages: u32,
    /// Offset of the NUL-terminated working directory.
    pub workdir_off: u32,
    /// init's own rlimits: for each limit, the highest any stage has.
    pub init_rlimits: RlimitPlan,
    pub stages: [StageHeader; MAX_STAGES],
}

pub const HEADER_LEN: usize = std::mem::size_of::<RequestHeader>();

/// One stage as the supervisor describes it.
pub struct StageRequest<'a> {
    pub rlimits: RlimitPlan,
    pub has_stdin: bool,
    pub argv: &'a [CString],
    pub envp: &'a [CString],
    pub candidates: &'a [CString],
}

/// Why a request cannot be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the arguments, environment and program paths of all stages together take {bytes} bytes; at most {max} are allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("the arguments, environment and program paths of all stages together are {count} strings; at most {max} are allowed")]
    TooManyStrings { count: usize, max: usize },
    #[error("a run has 1 to {max} stages, not {count}")]
    Stages { count: usize, max: usize },
}

/// The request as `u64` words (the first `total_len` bytes count).
pub fn encode(
    workdir: &CString,
    init_rlimits: &RlimitPlan,
    stages: &[StageRequest<'_>],
) -> Result<Vec<u64>, RequestError> {
    if stages.is_empty() || stages.len() > MAX_STAGES {
        return Err(RequestError::Stages {
            count: stages.len(),
            max: MAX_STAGES,
        });
    }
    let pointers: usize = stages
        .iter()
        .map(|s| s.argv.len() + s.envp.len() + s.candidates.len() + 3)
        .sum();
    if pointers > POINTERS_MAX {
        return Err(RequestError::TooManyStrings {
            count: pointers,
            max: POINTERS_MAX,
        });
    }
    let mut bytes: Vec<u8> = Vec::new();
    let mut push = |s: &CString| {
        let off = HEADER_LEN + bytes.len();
        bytes.extend_from_slice(s.as_bytes_with_nul());
        off
    };
    let workdir_off = push(workdir);
    let mut headers = Vec::with_capacity(MAX_STAGES);
    for stage in stages {
        let start = HEADER_LEN + bytes.len();
        for s in stage.argv.iter().chain(stage.envp).chain(stage.candidates) {
            bytes.extend_from_slice(s.as_bytes_with_nul());
        }
        let end = HEADER_LEN + bytes.len();
        headers.push(StageHeader {
            rlimits: stage.rlimits.clone(),
            has_stdin: u32::from(stage.has_stdin),
            argc: stage.argv.len() as u32,
            envc: stage.envp.len() as u32,
            ncand: stage.candidates.len() as u32,
            strings_off: start as u32,
            strings_len: (end - start) as u32,
        });
    }
    let total = HEADER_LEN + bytes.len();
    if total > REQUEST_MAX {
        return Err(RequestError::TooLarge {
            bytes: total,
            max: REQUEST_MAX,
        });
    }
    // Unused slots repeat the first stage (never read: n_stages says).
    while headers.len() < MAX_STAGES {
        headers.push(headers[0].clone());
    }
    let header = RequestHeader {
        total_len: total as u64,
        n_stages: stages.len() as u32,
        workdir_off: workdir_off as u32,
        init_rlimits: init_rlimits.clone(),
        stages: [
            headers[0].clone(),
            headers[1].clone(),
            headers[2].clone(),
            headers[3].clone(),
        ],
    };
    let mut words = vec![0u64; total.div_ceil(8)];
    // SAFETY: `words` holds at least HEADER_LEN bytes (total >= HEADER_LEN),
    // is 8-byte aligned like RequestHeader, and is written, not read.
    unsafe { std::ptr::write(words.as_mut_ptr().cast::<RequestHeader>(), header) };
    // SAFETY: the strings go right after the header, inside `words`
    // (total bytes in all); the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            words.as_mut_ptr().cast::<u8>().add(HEADER_LEN),
            bytes.len(),
        );
    }
    Ok(words)
}

/// The bytes of a request from [`encode`] (its first `total_len` bytes).
pub fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u64 words viewed as bytes: same memory, alignment 1 is weaker.
    let all = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) };
    // total_len is the header's first field: the first word.
    let total = words.first().map_or(0, |w| *w as usize);
    &all[..total.min(all.len())]
}

/// One decoded stage, pointing into init's buffers.
pub struct DecodedStage<'a> {
    pub rlimits: &'a RlimitPlan,
    pub has_stdin: bool,
    /// NULL-terminated arrays of NUL-terminated strings.
    pub argv: *const *const libc::c_char,
    pub envp: *const *const libc::c_char,
    pub candidates: *const *const libc::c_char,
}

/// Why init refused a request (a static reason, for a `ChildFailure`).
pub type DecodeError = &'static str;

/// Decodes a request that `received` bytes of `buf` hold, writing the
/// pointer arrays into `pointers`. Allocates nothing: safe in init. Every
/// offset and count is checked against the buffers.
///
/// `buf` must be 8-byte aligned (a buffer of `u64` words) and hold what
/// [`encode`] produced in this same executable: the header's rlimit plans
/// carry step names that point into its static data, which are not (and
/// cannot be) checked. Hence crate-private: init receives its request from
/// its own supervisor only.
pub fn decode<'a>(
    buf: &'a [u8],
    pointers: &mut [*const libc::c_char],
) -> Result<(&'a RequestHeader, usize), DecodeError> {
    if buf.len() < HEADER_LEN
        || (buf.as_ptr() as usize) % std::mem::align_of::<RequestHeader>() != 0
    {
        return Err("decode the run request: too short");
    }
    // SAFETY: `buf` is long enough and aligned for a RequestHeader, whose
    // fields are plain data and rlimit plans the supervisor built (their
    // step names point into this same executable's static data).
    let header = unsafe { &*buf.as_ptr().cast::<RequestHeader>() };
    let n = header.n_stages as usize;
    if header.total_len as usize != buf.len() || n == 0 || n > MAX_STAGES {
        return Err("decode the run request: bad header");
    }
    if !nul_terminated_at(buf, header.workdir_off as usize) {
        return Err("decode the run request: bad working directory");
    }
    let mut used = 0usize;
    for stage in &header.stages[..n] {
        let start = stage.strings_off as usize;
        let end = start
            .checked_add(stage.strings_len as usize)
            .ok_or("decode the run request: bad strings")?;
        if start < HEADER_LEN || end > buf.len() {
            return Err("decode the run request: bad strings");
        }
        let mut at = start;
        for count in [stage.argc, stage.envc, stage.ncand] {
            for _ in 0..count {
                if at >= end || used >= pointers.len() {
                    return Err("decode the run request: too many strings");
                }
                let len = match buf[at..end].iter().position(|&b| b == 0) {
                    Some(len) => len,
                    None => return Err("decode the run request: unterminated string"),
                };
                pointers[used] = buf[at..].as_ptr().cast();
                used += 1;
                at += len + 1;
            }
            if used >= pointers.len() {
                return Err("decode the run request: too many strings");
            }
            pointers[used] = std::ptr::null();
            used += 1;
        }
        if at != end {
            return Err("decode the run request: stray bytes");
        }
    }
    Ok((header, used))
}

fn nul_terminated_at(buf: &[u8], off: usize) -> bool {
    off >= HEADER_LEN && off < buf.len() && buf[off..].contains(&0)
}

/// Stage `index` of a decoded request: its arrays start where the earlier
/// stages' end in `pointers`.
pub fn stage<'a>(
    header: &'a RequestHeader,
    pointers: &'a [*const libc::c_char],
    index: usize,
) -> DecodedStage<'a> {
    let mut at = 0usize;
    for s in &header.stages[..index] {
        at += s.argc as usize + s.envc as usize + s.ncand as usize + 3;
    }
    let s = &header.stages[index];
    let argv = at;
    let envp = argv + s.argc as usize + 1;
    let candidates = envp + s.envc as usize + 1;
    DecodedStage {
        rlimits: &s.rlimits,
        has_stdin: s.has_stdin != 0,
        argv: pointers[argv..].as_ptr(),
        envp: pointers[envp..].as_ptr(),
        candidates: pointers[candidates..].as_ptr(),
    }
}

/// The working directory of a decoded request.
pub fn workdir<'a>(header: &'a RequestHeader, buf: &'a [u8]) -> *const libc::c_char {
    buf[header.workdir_off as usize..].as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Limits;
    use std::ffi::CStr;

    fn c(s: &str) -> CString {
        CString::new(s).expect("no NUL")
    }

    fn strings(mut p: *const *const libc::c_char) -> Vec<String> {
        let mut out = Vec::new();
        // SAFETY: a NULL-terminated array of C strings from decode.
        unsafe {
            while !(*p).is_null() {
                out.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
                p = p.add(1);
            }
        }
        out
    }

    fn received(words: &[u64]) -> Vec<u64> {
        // As init receives it: only total_len bytes are meaningful.
        words.to_vec()
    }

    #[test]
    fn a_request_decodes_to_what_was_encoded() {
        let limits = Limits::default();
        let rl = RlimitPlan::from_limits(&limits).expect("rlimits");
        let argv0 = [c("gcc"), c("-o"), c("main"), c("main.c")];
        let env0 = [c("PATH=/usr/bin"), c("HOME=/sandbox")];
        let cand0 = [c("/usr/bin/gcc"), c("/bin/gcc")];
        let argv1 = [c("./main")];
        let stages = [
            StageRequest {
                rlimits: rl.clone(),
                has_stdin: false,
                argv: &argv0,
                envp: &env0,
                candidates: &cand0,
            },
            StageRequest {
                rlimits: rl.clone(),
                has_stdin: true,
                argv: &argv1,
                envp: &[],
                candidates: &[c("/sandbox/main")],
            },
        ];
        let words = encode(&c("/sandbox/work"), &rl, &stages).expect("encodes");
        let buf = received(&words);
        let total = as_bytes(&buf).len();
        // SAFETY: viewing the u64 buffer as its bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), total) };
        let mut pointers = vec![std::ptr::null(); POINTERS_MAX];
        let (header, used) = decode(bytes, &mut pointers).expect("decodes");
        assert_eq!(header.n_stages, 2);
        // Stage 0: 4 argv, 2 env, 2 paths; stage 1: 1, 0, 1; each array
        // with its NULL.
        assert_eq!(used, (4 + 1) + (2 + 1) + (2 + 1) + (1 + 1) + 1 + (1 + 1));
        // SAFETY: workdir points at a NUL-terminated string in `bytes`.
        let wd = unsafe { CStr::from_ptr(workdir(header, bytes)) };
        assert_eq!(wd.to_str(), Ok("/sandbox/work"));
        let s0 = stage(header, &pointers, 0);
        assert_eq!(strings(s0.argv), ["gcc", "-o", "main", "main.c"]);
        assert_eq!(strings(s0.envp), ["PATH=/usr/bin", "HOME=/sandbox"]);
        assert_eq!(strings(s0.candidates), ["/usr/bin/gcc", "/bin/gcc"]);
        assert!(!s0.has_stdin);
        let s1 = stage(header, &pointers, 1);
        assert_eq!(strings(s1.argv), ["./main"]);
        assert!(strings(s1.envp).is_empty());
        assert_eq!(strings(s1.candidates), ["/sandbox/main"]);
        assert!(s1.has_stdin);
        assert_eq!(*s1.rlimits, rl);
    }

    #[test]
    fn damaged_requests_are_refused_not_followed() {
        let rl = RlimitPlan::from_limits(&Limits::default()).expect("rlimits");
        let argv = [c("true")];
        let stages = [StageRequest {
            rlimits: rl.clone(),
            has_stdin: false,
            argv: &argv,
            envp: &[],
            candidates: &[c("/bin/true")],
        }];
        let words = encode(&c("/sandbox"), &rl, &stages).expect("encodes");
        let total = as_bytes(&words).len();
        let mut pointers = vec![std::ptr::null(); 16];
        let check = |mutate: &dyn Fn(&mut [u8])| {
            let mut buf = words.clone();
            // SAFETY: the buffer's bytes, as init holds them.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), total) };
            mutate(bytes);
            let mut pointers = vec![std::ptr::null(); 16];
            decode(bytes, &mut pointers).map(|_| ())
        };
        assert!(check(&|_| {}).is_ok());
        // The string region's last NUL removed: unterminated.
        assert!(check(&|b| {
            let last = b.len() - 1;
            b[last] = b'x';
        })
        .is_err());
        // A truncated request.
        {
            let buf = words.clone();
            // SAFETY: a prefix of the buffer's bytes.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), total - 1) };
            assert!(decode(bytes, &mut pointers).is_err());
        }
        // Too few pointer slots.
        {
            // SAFETY: the buffer's bytes.
            let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), total) };
            let mut few = vec![std::ptr::null(); 3];
            assert!(decode(bytes, &mut few).is_err());
        }
    }

    #[test]
    fn as_bytes_of_nothing_is_nothing() {
        assert!(as_bytes(&[]).is_empty());
        assert!(as_bytes(&[u64::MAX]).len() <= 8);
    }

    #[test]
    fn oversized_requests_are_refused_when_encoding() {
        let rl = RlimitPlan::from_limits(&Limits::default()).expect("rlimits");
        let big = [c(&"x".repeat(REQUEST_MAX))];
        let stages = [StageRequest {
            rlimits: rl.clone(),
            has_stdin: false,
            argv: &big,
            envp: &[],
            candidates: &[c("/bin/true")],
        }];
        assert!(matches!(
            encode(&c("/sandbox"), &rl, &stages),
            Err(RequestError::TooLarge { .. })
        ));
        let many: Vec<CString> = (0..POINTERS_MAX).map(|i| c(&i.to_string())).collect();
        let stages = [StageRequest {
            rlimits: rl.clone(),
            has_stdin: false,
            argv: &many,
            envp: &[],
            candidates: &[c("/bin/true")],
        }];
        assert!(matches!(
            encode(&c("/sandbox"), &rl, &stages),
            Err(RequestError::TooManyStrings { .. })
        ));
        assert!(matches!(
            encode(&c("/sandbox"), &rl, &[]),
            Err(RequestError::Stages { .. })
        ));
    }
}
