//! A minimal classic-BPF vocabulary for seccomp filters.
//!
//! Only the handful of instructions a seccomp allow-list needs are offered:
//! load a 32-bit word of `struct seccomp_data`, compare it with a constant,
//! test bits, and return an action. Jump offsets in classic BPF are `u8`
//! (relative to the next instruction), so every jump is built through
//! [`jump_offset`], which refuses distances that do not fit instead of
//! silently truncating them. [`verify`] re-checks a finished program the way
//! the kernel's checker would for the subset we emit.

use libc::sock_filter;

use super::SeccompError;

// Instruction classes and modes (linux/filter.h, linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_K: u16 = 0x00;
const BPF_AND: u16 = 0x50;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;

/// `A = *(u32 *)(seccomp_data + k)`.
pub(crate) const LD_W_ABS: u16 = BPF_LD | BPF_W | BPF_ABS;
/// `A &= k`.
pub(crate) const ALU_AND_K: u16 = BPF_ALU | BPF_AND | BPF_K;
/// `pc += k` (unconditional, 32-bit offset).
pub(crate) const JMP_JA: u16 = BPF_JMP | BPF_JA;
/// `pc += (A == k) ? jt : jf`.
pub(crate) const JMP_JEQ_K: u16 = BPF_JMP | BPF_JEQ | BPF_K;
/// `pc += (A > k) ? jt : jf`.
pub(crate) const JMP_JGT_K: u16 = BPF_JMP | BPF_JGT | BPF_K;
/// `pc += (A >= k) ? jt : jf`.
pub(crate) const JMP_JGE_K: u16 = BPF_JMP | BPF_JGE | BPF_K;
/// `pc += (A & k) != 0 ? jt : jf`.
pub(crate) const JMP_JSET_K: u16 = BPF_JMP | BPF_JSET | BPF_K;
/// `return k`.
pub(crate) const RET_K: u16 = BPF_RET | BPF_K;

/// The most instructions the kernel accepts in one filter (BPF_MAXINSNS).
pub(crate) const MAX_INSNS: usize = 4096;

/// Offsets into `struct seccomp_data` (linux/seccomp.h); all fields are
/// native-endian and both supported architectures are little-endian.
pub(crate) const OFFSET_NR: u32 = 0;
/// Offset of `seccomp_data.arch`.
pub(crate) const OFFSET_ARCH: u32 = 4;
/// Offset of `seccomp_data.args[0]`.
const OFFSET_ARGS: u32 = 16;
/// Size of `struct seccomp_data`: loads must stay inside it.
pub(crate) const SECCOMP_DATA_SIZE: u32 = 64;

/// Offset of the low 32 bits of argument `index` (0..=5). Little-endian:
/// the low word comes first, the high word is at `+ 4`.
pub(crate) const fn arg_low_offset(index: u8) -> u32 {
    OFFSET_ARGS + 8 * index as u32
}

/// A statement without jumps.
pub(crate) const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump; `jt`/`jf` count instructions after the next one.
pub(crate) const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// `A = seccomp_data[offset..offset + 4]`.
pub(crate) const fn load(offset: u32) -> sock_filter {
    stmt(LD_W_ABS, offset)
}

/// `return action`.
pub(crate) const fn ret(action: u32) -> sock_filter {
    stmt(RET_K, action)
}

/// Converts a forward distance (instructions to skip) into a jump offset,
/// refusing distances above 255 instead of wrapping them.
pub(crate) fn jump_offset(distance: usize, syscall: &str) -> Result<u8, SeccompError> {
    u8::try_from(distance).map_err(|_| SeccompError::JumpTooFar {
        syscall: syscall.to_owned(),
        distance,
    })
}

/// Checks a finished program: not empty, not longer than the kernel allows,
/// only the opcodes of this module, loads aligned and inside
/// `seccomp_data`, every jump landing inside the program, and the last
/// instruction a return (so no path can run off the end).
pub(crate) fn verify(prog: &[sock_filter]) -> Result<(), SeccompError> {
    let bad = |index: usize, what: &str| SeccompError::InvalidProgram {
        index,
        what: what.to_owned(),
    };
    if prog.is_empty() || prog.len() > MAX_INSNS {
        return Err(SeccompError::ProgramTooLong { len: prog.len() });
    }
    for (index, insn) in prog.iter().enumerate() {
        // Instructions remaining after this one.
        let remaining = prog.len() - index - 1;
        match insn.code {
            LD_W_ABS => {
                if insn.k % 4 != 0 || insn.k >= SECCOMP_DATA_SIZE {
                    return Err(bad(index, "load outside seccomp_data or unaligned"));
                }
            }
            ALU_AND_K | RET_K => {}
            JMP_JA => {
                if insn.k as usize >= remaining {
                    return Err(bad(index, "jump past the end"));
                }
            }
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K | JMP_JSET_K => {
                if usize::from(insn.jt) >= remaining || usize::from(insn.jf) >= remaining {
                    return Err(bad(index, "jump past the end"));
                }
            }
            _ => return Err(bad(index, "opcode not used by seccomp filters")),
        }
    }
    match prog.last() {
        Some(last) if last.code == RET_K => Ok(()),
        _ => Err(bad(prog.len() - 1, "program does not end with a return")),
    }
}

/// A tiny classic-BPF interpreter for the subset above, used by tests to
/// run compiled filters against made-up `seccomp_data`.
#[cfg(test)]
pub(crate) mod interp {
    use super::*;

    /// The input of a filter: `struct seccomp_data`.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Data {
        pub nr: i32,
        pub arch: u32,
        pub instruction_pointer: u64,
        pub args: [u64; 6],
    }

    impl Data {
        fn bytes(&self) -> [u8; SECCOMP_DATA_SIZE as usize] {
            let mut out = [0u8; SECCOMP_DATA_SIZE as usize];
            out[0..4].copy_from_slice(&self.nr.to_le_bytes());
            out[4..8].copy_from_slice(&self.arch.to_le_bytes());
            out[8..16].copy_from_slice(&self.instruction_pointer.to_le_bytes());
            for (i, arg) in self.args.iter().enumerate() {
                out[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
            }
            out
        }
    }

    /// Runs `prog` on `data` and returns the action; panics on anything the
    /// kernel would reject (a test failure).
    pub(crate) fn run(prog: &[sock_filter], data: &Data) -> u32 {
        run_traced(prog, data).0
    }

    /// Like [`run`], also returning the offsets of every load on the path
    /// taken (to check which inputs a verdict depends on).
    pub(crate) fn run_traced(prog: &[sock_filter], data: &Data) -> (u32, Vec<u32>) {
        let bytes = data.bytes();
        let mut loads = Vec::new();
        let mut a: u32 = 0;
        let mut pc: usize = 0;
        loop {
            let insn = prog.get(pc).expect("program counter left the program");
            pc += 1;
            let k = insn.k;
            let cond = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            match insn.code {
                LD_W_ABS => {
                    loads.push(k);
                    let off = k as usize;
                    assert!(off % 4 == 0 && off + 4 <= bytes.len(), "bad load {off}");
                    let word: [u8; 4] = bytes[off..off + 4].try_into().expect("4 bytes");
                    a = u32::from_le_bytes(word);
                }
                ALU_AND_K => a &= k,
                JMP_JA => pc += k as usize,
                JMP_JEQ_K => pc += cond(a == k),
                JMP_JGT_K => pc += cond(a > k),
                JMP_JGE_K => pc += cond(a >= k),
                JMP_JSET_K => pc += cond(a & k != 0),
                RET_K => return (k, loads),
                other => panic!("unsupported opcode {other:#x}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interp::{run, Data};
    use super::*;

    fn data(nr: i32) -> Data {
        Data {
            nr,
            arch: 0xc000_003e,
            instruction_pointer: 0,
            args: [0x1111_2222_3333_4444, 0xffff_ffff_0000_5412, 0, 0, 0, 7],
        }
    }

    #[test]
    fn arg_offsets_point_at_low_words() {
        assert_eq!(arg_low_offset(0), 16);
        assert_eq!(arg_low_offset(1), 24);
        assert_eq!(arg_low_offset(5), 56);
    }

    #[test]
    fn interpreter_loads_little_endian_words() {
        let prog = [
            load(arg_low_offset(1)),
            jump(JMP_JEQ_K, 0x5412, 0, 1),
            ret(1),
            ret(2),
        ];
        verify(&prog).expect("valid");
        assert_eq!(run(&prog, &data(0)), 1);
        let high = [
            load(arg_low_offset(1) + 4),
            jump(JMP_JEQ_K, 0xffff_ffff, 0, 1),
            ret(1),
            ret(2),
        ];
        assert_eq!(run(&high, &data(0)), 1);
        let nr = [load(OFFSET_NR), jump(JMP_JEQ_K, 42, 0, 1), ret(1), ret(2)];
        assert_eq!(run(&nr, &data(42)), 1);
        assert_eq!(run(&nr, &data(43)), 2);
    }

    #[test]
    fn jumps_and_bit_tests_behave() {
        let prog = [
            load(arg_low_offset(5)),
            jump(JMP_JSET_K, 0x10, 0, 1),
            ret(10),
            jump(JMP_JGE_K, 7, 0, 2),
            jump(JMP_JGT_K, 7, 1, 0),
            ret(20),
            stmt(JMP_JA, 1),
            ret(30),
            ret(40),
        ];
        verify(&prog).expect("valid");
        let with = |v: u64| {
            let mut d = data(0);
            d.args[5] = v;
            run(&prog, &d)
        };
        assert_eq!(with(0x10), 10, "bit set");
        assert_eq!(with(7), 20, ">= 7 but not > 7");
        assert_eq!(with(8), 40, "> 7 jumps to the JA, which skips ret(30)");
        assert_eq!(with(3), 40, "< 7 jumps to the JA");
        let and = [
            load(arg_low_offset(5)),
            stmt(ALU_AND_K, 3),
            jump(JMP_JEQ_K, 3, 0, 1),
            ret(1),
            ret(0),
        ];
        verify(&and).expect("valid");
        assert_eq!(run(&and, &data(0)), 1, "7 & 3 == 3");
    }

    #[test]
    fn jump_offset_refuses_long_jumps() {
        assert_eq!(jump_offset(255, "x").expect("fits"), 255);
        assert!(matches!(
            jump_offset(256, "x"),
            Err(SeccompError::JumpTooFar { distance: 256, .. })
        ));
    }

    #[test]
    fn verify_rejects_malformed_programs() {
        assert!(verify(&[]).is_err());
        assert!(verify(&[load(OFFSET_NR)]).is_err(), "no final return");
        assert!(verify(&[load(3), ret(0)]).is_err(), "unaligned load");
        assert!(
            verify(&[load(64), ret(0)]).is_err(),
            "load past seccomp_data"
        );
        assert!(
            verify(&[jump(JMP_JEQ_K, 0, 1, 0), ret(0)]).is_err(),
            "jump past end"
        );
        assert!(verify(&[stmt(JMP_JA, 1), ret(0)]).is_err(), "ja past end");
        assert!(verify(&[stmt(0x07, 0), ret(0)]).is_err(), "unknown opcode");
        let long = vec![ret(0); MAX_INSNS + 1];
        assert!(matches!(
            verify(&long),
            Err(SeccompError::ProgramTooLong { .. })
        ));
        verify(&[jump(JMP_JEQ_K, 0, 0, 1), ret(0), ret(1)]).expect("valid");
    }
}
