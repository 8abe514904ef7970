//! Stable-toolchain fuzz runner: feeds each target its corpus
//! (`corpus/<target>/`), then random mutations of it (byte flips, inserts,
//! deletes, splices and a dictionary of interesting tokens) from a xorshift
//! generator, for the given number of seconds per target. A panic is a
//! finding: the input is written to `artifacts/<target>/crash-<n>` and the
//! runner exits with 1. A single input that takes over a second is
//! reported as slow.
//!
//! ```sh
//! cargo run --release --bin runner -- [SECONDS] [TARGET...]
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

const TOKENS: &[&str] = &[
    "[limits]",
    "[max]",
    "[filesystem]",
    "[ids]",
    "[cgroup]",
    "[seccomp]",
    "[allow]",
    "[deny]",
    "[silent_enosys]",
    "[[rule]]",
    "[[runtime]]",
    "[runtime.",
    "memory = ",
    "wall_time = ",
    "\"256M\"",
    "\"0.5\"",
    "\"1e309\"",
    "\"18446744073709551615\"",
    "\"16E\"",
    "K",
    "M",
    "G",
    "T",
    "iB",
    "ms",
    "s",
    "-",
    ".",
    "0x",
    "inf",
    "NaN",
    "syscall = \"socket\"",
    "arg = 0",
    "arg = 6",
    "allow_if_in = [1, 2, 10]",
    "allow_if_mask_clear = 4294967295",
    "deny_if_in = [4294967296]",
    "reason = \"r\"",
    "read = \"r\"",
    "name = \"x\"",
    "aliases = [\"y\"]",
    "extensions = [\"z\"]",
    "run = [\"{main}\"]",
    "compile = [\"cc\"]",
    "\"\"",
    "=",
    "\n",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    "\\u0000",
    "\u{feff}",
    "é",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
            2 if !out.is_empty() => {
                let i = rng.below(out.len());
                let n = rng.below(out.len() - i) + 1;
                out.drain(i..i + n.min(16));
            }
            3 | 4 => {
                let i = rng.below(out.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(i..i, t.iter().copied());
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let i = rng.below(out.len() + 1);
                let j = rng.below(other.len() + 1);
                out.truncate(i);
                out.extend_from_slice(&other[j..]);
            }
            _ => {
                let i = rng.below(out.len() + 1);
                let n = rng.below(8) + 1;
                for _ in 0..n {
                    out.insert(i, b"0123456789.\n =\"[]"[rng.below(17)]);
                }
            }
        }
    }
    out.truncate(64 * 1024);
    out
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    corpus
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let wanted: Vec<String> = args.collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("FUZZ_SHOW_PANICS").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let mut failed = false;
    for (name, target) in formicary_fuzz::TARGETS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let corpus = load_corpus(&root.join("corpus").join(name));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seconds);
        let end = Instant::now() + Duration::from_secs(seconds);
        let (mut execs, mut crashes, mut slow) = (0u64, 0u32, 0u32);
        let mut queue = corpus.clone();
        while Instant::now() < end {
            let input = if (execs as usize) < corpus.len() {
                corpus[execs as usize].clone()
            } else {
                let base = queue[rng.below(queue.len())].clone();
                mutate(&mut rng, &corpus, &base)
            };
            let start = Instant::now();
            let outcome = std::panic::catch_unwind(|| target(&input));
            if start.elapsed() > Duration::from_secs(1) {
                slow += 1;
                eprintln!(
                    "{name}: slow input ({:?}): {:?}",
                    start.elapsed(),
                    String::from_utf8_lossy(&input)
                );
            }
            if outcome.is_err() {
                crashes += 1;
                failed = true;
                let dir = root.join("artifacts").join(name);
                std::fs::create_dir_all(&dir).expect("create artifacts dir");
                let path = dir.join(format!("crash-{crashes}"));
                std::fs::write(&path, &input).expect("write crash input");
                eprintln!(
                    "{name}: panic on {:?} (saved to {})",
                    String::from_utf8_lossy(&input),
                    path.display()
                );
                if crashes >= 20 {
                    break;
                }
            } else if queue.len() < 4096 && rng.below(64) == 0 {
                queue.push(input);
            }
            execs += 1;
        }
        println!("{name}: {execs} inputs, {crashes} panics, {slow} slow");
    }
    std::process::exit(i32::from(failed));
}
