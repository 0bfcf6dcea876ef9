//! The `emulator` harness: `rhax_core::emulate::decode_full` and `execute` on arbitrary bytes,
//! registers, flags and memory, in every mode (issue 11's full MMIO emulator).
//!
//! Input: byte 0 the mode, byte 1 how many instruction bytes the fetch got, byte 2 which
//! reads stop as MMIO, bytes 3..11 RFLAGS, 11..139 the sixteen GPRs, then the instruction.
//! Memory is a function of the address (no bounds), so every access is possible.
//!
//! Oracles:
//! 1. no panic; a decoded length within the bytes given, at most 15;
//! 2. iced-x86 agrees: what rhax decodes, iced decodes as a valid instruction of the same
//!    length (the differential test in `tests/emulate_diff.rs` compares the operands on
//!    generated streams; here arbitrary bytes);
//! 3. `execute` is transactional and honest: every write it returns is 1..=32 bytes and was
//!    checked with `check_write` at the same address first; RFLAGS changes only in the status
//!    flags (OF SF ZF AF PF CF) and keeps bit 1; RIP moves by exactly the length (wrapped to
//!    the mode's width) when the instruction is done, and not at all for a REP iteration with
//!    more to go.

use iced_x86::{Decoder, DecoderOptions};
use rhax_core::emulate::{decode_full, execute, CpuMode, Env, Exception, ExecError, Fault, Seg};

const MODES: [(CpuMode, u32); 3] = [
    (CpuMode::Bits16, 16),
    (CpuMode::Bits32, 32),
    (CpuMode::Bits64, 64),
];

/// OF SF ZF AF PF CF.
const STATUS: u64 = 0x8d5;

struct FuzzEnv {
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
    long: bool,
    /// Reads whose linear address has this bit 12 stop as MMIO (0: none stop).
    mmio: u8,
    checked: Vec<(u64, usize)>,
}

impl FuzzEnv {
    fn linear(&self, seg: Seg, offset: u64) -> u64 {
        let base = (seg as u64) << 20;
        let l = base.wrapping_add(offset);
        if self.long {
            l
        } else {
            l & 0xffff_ffff
        }
    }
}

impl Env for FuzzEnv {
    type Stop = u64;
    fn gpr(&self, n: u8) -> u64 {
        self.gpr[usize::from(n & 15)]
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn xmm(&self, n: u8) -> u128 {
        u128::from(n) * 0x0101_0101_0101_0101_0101_0101_0101_0101
    }
    fn ymm_high(&self, n: u8) -> Option<u128> {
        (self.mmio & 2 != 0).then_some(u128::from(n))
    }
    fn selector(&self, s: Seg) -> u16 {
        (s as u16) << 3
    }
    fn segment_base(&self, s: Seg) -> u64 {
        (s as u64) << 20
    }
    fn stack_is_32bit(&self) -> bool {
        self.mmio & 4 != 0
    }
    fn protected_mode(&self) -> bool {
        self.mmio & 8 != 0
    }
    fn read(&mut self, seg: Seg, offset: u64, buf: &mut [u8]) -> Result<(), Fault<u64>> {
        let lin = self.linear(seg, offset);
        if self.mmio & 1 != 0 && lin & 0x1000 != 0 {
            return Err(Fault::Env(lin));
        }
        if lin & 0xfff == 0xfff && self.mmio & 16 != 0 {
            return Err(Fault::Exception(Exception::GP0));
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (lin.wrapping_add(i as u64).wrapping_mul(131) >> 3) as u8;
        }
        Ok(())
    }
    fn check_write(&mut self, seg: Seg, offset: u64, len: usize) -> Result<(), Fault<u64>> {
        let lin = self.linear(seg, offset);
        self.checked.push((lin, len));
        Ok(())
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    if data.len() < 139 {
        return;
    }
    let (mode, bits) = MODES[usize::from(data[0]) % 3];
    let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
    let bytes = &data[139..];
    let seen = &bytes[..usize::from(data[1]).min(bytes.len())];
    let Ok(insn) = decode_full(seen, mode) else {
        return;
    };
    let len = usize::from(insn.length);
    assert!(len > 0 && len <= seen.len() && len <= 15, "length {len}");
    let mut iced = Decoder::with_ip(bits, &seen[..len], 0, DecoderOptions::NONE);
    let i = iced.decode();
    assert!(
        !i.is_invalid() && i.len() == len,
        "rhax decodes {:02x?} ({:?}, length {len}); iced: {} length {}",
        &seen[..len],
        insn.op,
        if i.is_invalid() { "invalid" } else { "valid" },
        i.len()
    );
    let mut gpr = [0u64; 16];
    for (n, g) in gpr.iter_mut().enumerate() {
        *g = word(11 + 8 * n);
    }
    let rip = word(3) & 0xffff_fff0 | 0x1000;
    let rflags = (word(3) & STATUS) | 2 | (u64::from(data[2] >> 7) << 10);
    let mut env = FuzzEnv {
        gpr,
        rip,
        rflags,
        long: mode == CpuMode::Bits64,
        mmio: data[2],
        checked: Vec::new(),
    };
    let fx = match execute(&insn, &mut env) {
        Ok(fx) => fx,
        Err(ExecError::Env(_) | ExecError::Exception(_) | ExecError::Unsupported(_)) => return,
    };
    for w in fx.writes.iter().flatten() {
        let n = usize::from(w.len);
        assert!((1..=32).contains(&n), "write of {n} bytes");
        let lin = env.linear(w.seg, w.offset);
        assert!(
            env.checked.iter().any(|&(l, c)| l == lin && c >= n),
            "a write of {n} bytes at {lin:#x} that was never checked ({:?})",
            env.checked
        );
    }
    assert_eq!(
        (fx.rflags ^ rflags) & !STATUS,
        0,
        "RFLAGS {:#x} -> {:#x} beyond the status flags",
        rflags,
        fx.rflags
    );
    let width = match mode {
        CpuMode::Bits16 => 0xffff,
        CpuMode::Bits32 => 0xffff_ffff,
        CpuMode::Bits64 => u64::MAX,
    };
    let want = if fx.done {
        rip.wrapping_add(len as u64) & width
    } else {
        rip
    };
    assert_eq!(fx.rip, want, "RIP after {:?} (done {})", insn.op, fx.done);
}
