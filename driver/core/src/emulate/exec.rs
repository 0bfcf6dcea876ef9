//! The executor: one instruction (one iteration of a REP string form) over an [`Env`],
//! transactional (every change is returned in [`Effects`]; nothing is applied here).
//!
//! Semantics per SDM Vol. 2A/2B instruction pages (2023+ numbering); the order of checks
//! follows the hardware's: #UD and alignment #GP before any access, a read-modify-write's
//! write permission before its read (a #PF on it reports a write, SDM Vol. 3A §4.7).

use super::alu::{self, mask, sign_extend, Flags};
use super::{
    BitOp, CpuMode, Decoded, Effects, Env, Exception, ExecError, MemWrite, Op, Register, Rep, Seg,
    VecMove, XmmWrite, MAX_WRITE,
};

/// RFLAGS.VM (bit 17): virtual-8086 mode, where MOV Sreg loads are real-mode-like.
const RFLAGS_VM: u64 = 1 << 17;

type Res<T, S> = Result<T, ExecError<S>>;

struct Exec<'a, E: Env> {
    insn: &'a Decoded,
    env: &'a mut E,
    fx: Effects,
    nwrites: usize,
}

impl<E: Env> Exec<'_, E> {
    /// Register `n` as this instruction sees it (an earlier step's pending value first).
    fn gpr(&self, n: u8) -> u64 {
        match self.fx.gpr.get(usize::from(n)) {
            Some(Some(v)) => *v,
            _ => self.env.gpr(n & 15),
        }
    }

    /// The `size`-byte value of register operand `r`.
    fn reg(&self, r: Register, size: u8) -> u64 {
        let v = self.gpr(r.number);
        if r.high_byte {
            (v >> 8) & 0xff
        } else {
            v & mask(size)
        }
    }

    /// Writes `size` bytes of `v` to `r` as hardware merges: 8- and 16-bit writes keep the
    /// other bits, a 32-bit write zero-extends to 64 (SDM Vol. 1 §3.4.1.1).
    fn set_reg(&mut self, r: Register, size: u8, v: u64) {
        let old = self.gpr(r.number);
        let new = match size {
            1 if r.high_byte => (old & !0xff00) | ((v & 0xff) << 8),
            1 => (old & !0xff) | (v & 0xff),
            2 => (old & !0xffff) | (v & 0xffff),
            4 => v & 0xffff_ffff,
            _ => v,
        };
        if let Some(slot) = self.fx.gpr.get_mut(usize::from(r.number)) {
            *slot = Some(new);
        }
    }

    fn set_gpr(&mut self, n: u8, size: u8, v: u64) {
        self.set_reg(
            Register {
                number: n,
                high_byte: false,
            },
            size,
            v,
        );
    }

    /// The memory operand's offset, wrapped to the address size (SDM Vol. 1 §3.7.5).
    fn ea(&self) -> u64 {
        let Some(m) = self.insn.mem else { return 0 };
        let asz = self.insn.address_size;
        let mut a = m.disp;
        if m.rip_relative {
            a = a.wrapping_add(self.env.rip().wrapping_add(u64::from(self.insn.length)));
        }
        if let Some(b) = m.base {
            a = a.wrapping_add(self.gpr(b));
        }
        if let Some(i) = m.index {
            a = a.wrapping_add(self.gpr(i).wrapping_mul(u64::from(m.scale)));
        }
        a & mask(asz)
    }

    fn read(&mut self, seg: Seg, off: u64, len: u8) -> Res<[u8; MAX_WRITE], E::Stop> {
        let mut buf = [0u8; MAX_WRITE];
        let slot = buf
            .get_mut(..usize::from(len))
            .ok_or(ExecError::Unsupported(self.insn.op))?;
        self.env.read(seg, off, slot)?;
        Ok(buf)
    }

    /// Reads a `len`-byte (<= 8) little-endian value.
    fn read_int(&mut self, seg: Seg, off: u64, len: u8) -> Res<u64, E::Stop> {
        let buf = self.read(seg, off, len.min(8))?;
        let mut w = [0u8; 8];
        w.copy_from_slice(buf.get(..8).unwrap_or(&[0; 8]));
        Ok(u64::from_le_bytes(w) & mask(len))
    }

    /// Queues a write after the environment allowed it.
    fn write(&mut self, seg: Seg, off: u64, data: &[u8]) -> Res<(), E::Stop> {
        let len = data.len();
        self.env.check_write(seg, off, len)?;
        let mut w = MemWrite {
            seg,
            offset: off,
            len: u8::try_from(len).map_err(|_| ExecError::Unsupported(self.insn.op))?,
            data: [0; MAX_WRITE],
        };
        w.data
            .get_mut(..len)
            .ok_or(ExecError::Unsupported(self.insn.op))?
            .copy_from_slice(data);
        let slot = self
            .fx
            .writes
            .get_mut(self.nwrites)
            .ok_or(ExecError::Unsupported(self.insn.op))?;
        *slot = Some(w);
        self.nwrites += 1;
        Ok(())
    }

    fn write_int(&mut self, seg: Seg, off: u64, len: u8, v: u64) -> Res<(), E::Stop> {
        let bytes = v.to_le_bytes();
        let data = bytes
            .get(..usize::from(len))
            .ok_or(ExecError::Unsupported(self.insn.op))?;
        self.write(seg, off, data)
    }

    fn flags(&self) -> u64 {
        self.fx.rflags
    }
}

/// Executes one instruction (one iteration of a REP string form).
pub fn execute<E: Env>(insn: &Decoded, env: &mut E) -> Result<Effects, ExecError<E::Stop>> {
    // The next RIP wraps at the mode's width: IP in 16-bit code, EIP in 32-bit (SDM Vol. 1
    // §3.5 and §3.6.1).
    let next = env.rip().wrapping_add(u64::from(insn.length));
    let rip = match insn.mode {
        CpuMode::Bits16 => next & 0xffff,
        CpuMode::Bits32 => next & 0xffff_ffff,
        CpuMode::Bits64 => next,
    };
    let fx = Effects {
        gpr: [None; 16],
        rip,
        rflags: env.rflags(),
        xmm: None,
        segment: None,
        writes: [None, None],
        done: true,
    };
    let mut x = Exec {
        insn,
        env,
        fx,
        nwrites: 0,
    };
    match insn.op {
        Op::Movs | Op::Cmps | Op::Stos | Op::Lods | Op::Scas => string(&mut x)?,
        Op::VecLoad(k) | Op::VecStore(k) => vector(&mut x, k)?,
        _ => integer(&mut x)?,
    }
    Ok(x.fx)
}

/// The register operand (the decoder sets it for every form that has one).
fn reg_op<E: Env>(x: &Exec<'_, E>) -> Res<Register, E::Stop> {
    x.insn.reg.ok_or(ExecError::Unsupported(x.insn.op))
}

/// The non-string integer forms.
fn integer<E: Env>(x: &mut Exec<'_, E>) -> Res<(), E::Stop> {
    let insn = x.insn;
    let size = insn.size;
    let seg = insn.seg;
    match insn.op {
        Op::MovStore => {
            let r = reg_op(x)?;
            let v = x.reg(r, size);
            let ea = x.ea();
            x.write_int(seg, ea, size, v)?;
        }
        Op::MovImm => {
            let ea = x.ea();
            x.write_int(seg, ea, size, insn.imm)?;
        }
        Op::MovLoad | Op::Movzx => {
            let r = reg_op(x)?;
            let ea = x.ea();
            let v = x.read_int(seg, ea, size)?;
            let dest = if insn.op == Op::Movzx {
                insn.operand_size
            } else {
                size
            };
            x.set_reg(r, dest, v);
        }
        Op::Movsx | Op::Movsxd => {
            let r = reg_op(x)?;
            let ea = x.ea();
            let v = x.read_int(seg, ea, size)?;
            x.set_reg(r, insn.operand_size, sign_extend(v, size));
        }
        Op::MovFromSreg => {
            let r = reg_op(x)?;
            let s = super::Seg::from_number(r.number).ok_or(ExecError::Exception(Exception::UD))?;
            let v = u64::from(x.env.selector(s));
            let ea = x.ea();
            // A memory destination always takes 16 bits (SDM Vol. 2B MOV, "the
            // destination operand is always 16 bits").
            x.write_int(seg, ea, 2, v)?;
        }
        Op::MovToSreg => {
            let r = reg_op(x)?;
            let s = super::Seg::from_number(r.number).ok_or(ExecError::Exception(Exception::UD))?;
            if x.env.protected_mode() && x.env.rflags() & RFLAGS_VM == 0 {
                // A protected-mode load checks and loads a descriptor: not emulated here.
                return Err(ExecError::Unsupported(insn.op));
            }
            let ea = x.ea();
            let v = x.read_int(seg, ea, 2)?;
            x.fx.segment = Some((s, v as u16));
        }
        Op::AluStore(a) | Op::AluImm(a) => {
            let b = if let Op::AluImm(_) = insn.op {
                insn.imm & mask(size)
            } else {
                let r = reg_op(x)?;
                x.reg(r, size)
            };
            let ea = x.ea();
            if a.writes() {
                x.env.check_write(seg, ea, usize::from(size))?;
            }
            let m = x.read_int(seg, ea, size)?;
            let (res, fl) = alu::alu(a, m, b, size, x.flags());
            if a.writes() {
                x.write_int(seg, ea, size, res)?;
            }
            x.fx.rflags = fl;
        }
        Op::AluLoad(a) => {
            let r = reg_op(x)?;
            let ea = x.ea();
            let m = x.read_int(seg, ea, size)?;
            let (res, fl) = alu::alu(a, x.reg(r, size), m, size, x.flags());
            if a.writes() {
                x.set_reg(r, size, res);
            }
            x.fx.rflags = fl;
        }
        Op::TestReg | Op::TestImm => {
            let b = if insn.op == Op::TestImm {
                insn.imm & mask(size)
            } else {
                let r = reg_op(x)?;
                x.reg(r, size)
            };
            let ea = x.ea();
            let m = x.read_int(seg, ea, size)?;
            let (_, fl) = alu::alu(super::AluOp::And, m, b, size, x.flags());
            x.fx.rflags = fl;
        }
        Op::Inc | Op::Dec | Op::Not | Op::Neg => {
            let ea = x.ea();
            x.env.check_write(seg, ea, usize::from(size))?;
            let m = x.read_int(seg, ea, size)?;
            let (res, fl) = match insn.op {
                Op::Inc => alu::inc_dec(m, false, size, x.flags()),
                Op::Dec => alu::inc_dec(m, true, size, x.flags()),
                // NOT changes no flag (SDM Vol. 2B NOT).
                Op::Not => (!m & mask(size), x.flags()),
                _ => alu::neg(m, size, x.flags()),
            };
            x.write_int(seg, ea, size, res)?;
            x.fx.rflags = fl;
        }
        Op::Xchg => {
            let r = reg_op(x)?;
            let ea = x.ea();
            x.env.check_write(seg, ea, usize::from(size))?;
            let m = x.read_int(seg, ea, size)?;
            let v = x.reg(r, size);
            x.write_int(seg, ea, size, v)?;
            x.set_reg(r, size, m);
        }
        Op::Cmpxchg => {
            let r = reg_op(x)?;
            let ea = x.ea();
            x.env.check_write(seg, ea, usize::from(size))?;
            let m = x.read_int(seg, ea, size)?;
            let acc = x.gpr(0) & mask(size);
            let (_, fl) = alu::alu(super::AluOp::Cmp, acc, m, size, x.flags());
            x.fx.rflags = fl;
            if acc == m {
                let v = x.reg(r, size);
                x.write_int(seg, ea, size, v)?;
            } else {
                // The destination is written back unchanged (the locked cycle always
                // writes, SDM Vol. 2A CMPXCHG), and the accumulator takes it.
                x.write_int(seg, ea, size, m)?;
                x.set_gpr(0, size, m);
            }
        }
        Op::Xadd => {
            let r = reg_op(x)?;
            let ea = x.ea();
            x.env.check_write(seg, ea, usize::from(size))?;
            let m = x.read_int(seg, ea, size)?;
            let v = x.reg(r, size);
            let (sum, fl) = alu::alu(super::AluOp::Add, m, v, size, x.flags());
            x.write_int(seg, ea, size, sum)?;
            x.set_reg(r, size, m);
            x.fx.rflags = fl;
        }
        Op::BitReg(b) | Op::BitImm(b) => bit(x, b)?,
        Op::Setcc(cc) => {
            let ea = x.ea();
            let v = u64::from(alu::condition(cc, x.flags()));
            x.write_int(seg, ea, 1, v)?;
        }
        Op::Cmovcc(cc) => {
            let r = reg_op(x)?;
            let ea = x.ea();
            // The source is read whatever the condition (SDM Vol. 2A CMOVcc).
            let m = x.read_int(seg, ea, size)?;
            if alu::condition(cc, x.flags()) {
                x.set_reg(r, size, m);
            } else if size == 4 {
                // A false 32-bit CMOV still zero-extends its destination in 64-bit mode.
                let low = x.reg(r, 4);
                x.set_reg(r, 4, low);
            }
        }
        Op::PushMem => {
            let ea = x.ea();
            let v = x.read_int(seg, ea, size)?;
            let width = stack_width(x);
            let sp = x.gpr(4).wrapping_sub(u64::from(size)) & mask(width);
            x.write_int(Seg::Ss, sp, size, v)?;
            x.set_gpr(4, width, sp);
        }
        Op::PopMem => {
            let width = stack_width(x);
            let sp = x.gpr(4) & mask(width);
            let v = x.read_int(Seg::Ss, sp, size)?;
            // RSP is incremented before the destination's address is computed (SDM Vol. 2B
            // POP: "If the destination operand uses ESP as a base register, the address is
            // computed after the pop increments ESP").
            x.set_gpr(4, width, sp.wrapping_add(u64::from(size)));
            let ea = x.ea();
            x.write_int(seg, ea, size, v)?;
        }
        Op::MovbeLoad => {
            let r = reg_op(x)?;
            let ea = x.ea();
            let v = x.read_int(seg, ea, size)?;
            x.set_reg(r, size, swap(v, size));
        }
        Op::MovbeStore => {
            let r = reg_op(x)?;
            let v = swap(x.reg(r, size), size);
            let ea = x.ea();
            x.write_int(seg, ea, size, v)?;
        }
        _ => return Err(ExecError::Unsupported(insn.op)),
    }
    Ok(())
}

/// The low `size` bytes of `v` in reverse order (MOVBE).
fn swap(v: u64, size: u8) -> u64 {
    match size {
        2 => u64::from((v as u16).swap_bytes()),
        4 => u64::from((v as u32).swap_bytes()),
        _ => v.swap_bytes(),
    }
}

/// The stack pointer's width: RSP in 64-bit mode, else ESP or SP per SS.B.
fn stack_width<E: Env>(x: &Exec<'_, E>) -> u8 {
    match x.insn.mode {
        CpuMode::Bits64 => 8,
        _ if x.env.stack_is_32bit() => 4,
        _ => 2,
    }
}

/// BT/BTS/BTR/BTC on memory. With a register offset the offset is a signed operand-size
/// value and may address any bit from the operand's address: the operand-size unit that
/// holds it is at ea + (offset >> log2(bits)) * size (SDM Vol. 2A §3.1.1.9 "Operation
/// Section" bit base notes, and BT's Table 3-2 "Range of Bit Positions Specified by Bit
/// Offset Operands"). An immediate offset is taken modulo the operand size.
fn bit<E: Env>(x: &mut Exec<'_, E>, b: BitOp) -> Res<(), E::Stop> {
    let insn = x.insn;
    let size = insn.size;
    let bits = u64::from(size) * 8;
    let mut ea = x.ea();
    let offset = if let Op::BitReg(_) = insn.op {
        let r = reg_op(x)?;
        let off = sign_extend(x.reg(r, size), size) as i64;
        let shift = bits.trailing_zeros();
        let unit = off >> shift;
        ea = ea.wrapping_add((unit as u64).wrapping_mul(u64::from(size))) & mask(insn.address_size);
        (off as u64) & (bits - 1)
    } else {
        insn.imm & (bits - 1)
    };
    if b != BitOp::Bt {
        x.env.check_write(insn.seg, ea, usize::from(size))?;
    }
    let m = x.read_int(insn.seg, ea, size)?;
    let bit = 1u64 << offset;
    // CF = the bit; ZF unchanged; OF, SF, AF, PF undefined: the measured host leaves them.
    x.fx.rflags = alu::merge_flags(
        x.flags(),
        if m & bit != 0 { Flags::CF } else { 0 },
        Flags::CF,
    );
    let new = match b {
        BitOp::Bt => return Ok(()),
        BitOp::Bts => m | bit,
        BitOp::Btr => m & !bit,
        BitOp::Btc => m ^ bit,
    };
    x.write_int(insn.seg, ea, size, new)
}

/// One iteration of MOVS/CMPS/STOS/LODS/SCAS (SDM Vol. 2B; REP: Vol. 2B REP/REPE/REPNE).
fn string<E: Env>(x: &mut Exec<'_, E>) -> Res<(), E::Stop> {
    let insn = x.insn;
    let size = insn.size;
    let asz = insn.address_size;
    let am = mask(asz);
    let rep = insn.rep != Rep::None;
    if rep && x.gpr(1) & am == 0 {
        // rCX = 0: no access, no flags, the instruction completes.
        return Ok(());
    }
    let step = if x.flags() & Flags::DF != 0 {
        u64::from(size).wrapping_neg()
    } else {
        u64::from(size)
    };
    let si = x.gpr(6) & am;
    let di = x.gpr(7) & am;
    // The source is DS:rSI (overridable), the destination ES:rDI (never).
    let (uses_si, uses_di) = match insn.op {
        Op::Movs | Op::Cmps => (true, true),
        Op::Lods => (true, false),
        _ => (false, true),
    };
    match insn.op {
        Op::Movs => {
            let v = x.read_int(insn.seg, si, size)?;
            x.write_int(Seg::Es, di, size, v)?;
        }
        Op::Cmps => {
            let a = x.read_int(insn.seg, si, size)?;
            let b = x.read_int(Seg::Es, di, size)?;
            x.fx.rflags = alu::alu(super::AluOp::Cmp, a, b, size, x.flags()).1;
        }
        Op::Stos => {
            let v = x.gpr(0) & mask(size);
            x.write_int(Seg::Es, di, size, v)?;
        }
        Op::Lods => {
            let v = x.read_int(insn.seg, si, size)?;
            x.set_gpr(0, size, v);
        }
        _ => {
            let b = x.read_int(Seg::Es, di, size)?;
            let a = x.gpr(0) & mask(size);
            x.fx.rflags = alu::alu(super::AluOp::Cmp, a, b, size, x.flags()).1;
        }
    }
    // The index registers step with the address size's wrap; a 32-bit one zero-extends.
    if uses_si {
        x.set_gpr(6, asz, si.wrapping_add(step));
    }
    if uses_di {
        x.set_gpr(7, asz, di.wrapping_add(step));
    }
    if rep {
        let count = (x.gpr(1) & am).wrapping_sub(1) & am;
        x.set_gpr(1, asz, count);
        let zf = x.flags() & Flags::ZF != 0;
        let ended = count == 0 || (insn.rep == Rep::Repe && !zf) || (insn.rep == Rep::Repne && zf);
        if !ended {
            x.fx.done = false;
            x.fx.rip = x.env.rip();
        }
    }
    Ok(())
}

/// The SSE/AVX moves.
fn vector<E: Env>(x: &mut Exec<'_, E>, kind: VecMove) -> Res<(), E::Stop> {
    let insn = x.insn;
    let r = reg_op(x)?;
    let n = r.number & 15;
    let size = insn.size;
    if insn.vex.is_some() {
        // VEX is #UD in real and virtual-8086 mode, and unless XCR0 enables SSE and AVX
        // state (SDM Vol. 2A §2.5, the exception class tables: "#UD ... if XCR0[2:1] !=
        // 11b", "#UD in real-address/virtual-8086 mode").
        let v86 = x.env.rflags() & RFLAGS_VM != 0;
        if x.env.ymm_high(n).is_none() || !x.env.protected_mode() || v86 {
            return Err(ExecError::Exception(Exception::UD));
        }
    }
    let ea = x.ea();
    if kind == VecMove::Aligned {
        let linear = x.env.segment_base(insn.seg).wrapping_add(ea);
        if linear % u64::from(size) != 0 {
            // MOVDQA/MOVAPS/MOVAPD and their VEX forms: #GP(0) on a misaligned operand of
            // 16 or 32 bytes (SDM Vol. 2B MOVDQA "Exceptions", Vol. 2A §2.5 class 1).
            return Err(ExecError::Exception(Exception::GP0));
        }
    }
    match insn.op {
        Op::VecLoad(_) => {
            let buf = x.read(insn.seg, ea, size)?;
            let mut lo = [0u8; 16];
            let mut hi = [0u8; 16];
            lo.copy_from_slice(buf.get(..16).unwrap_or(&[0; 16]));
            hi.copy_from_slice(buf.get(16..32).unwrap_or(&[0; 16]));
            let value = u128::from_le_bytes(lo);
            let high = if insn.vex.is_some() {
                // VEX.128 zeroes bits 255:128 (and above); VEX.256 loads them.
                Some(if size == 32 {
                    u128::from_le_bytes(hi)
                } else {
                    0
                })
            } else {
                // Legacy SSE keeps the upper YMM bits (SDM Vol. 2A §2.3.10.1 "Vector Length
                // Transition and Programming Considerations").
                None
            };
            // buf holds only `size` bytes, the rest is zero: MOVD/MOVQ zero-extend.
            x.fx.xmm = Some(XmmWrite { n, value, high });
        }
        _ => {
            let mut data = [0u8; MAX_WRITE];
            let (lo, hi) = data.split_at_mut(16);
            lo.copy_from_slice(&x.env.xmm(n).to_le_bytes());
            if size == 32 {
                let h = x
                    .env
                    .ymm_high(n)
                    .ok_or(ExecError::Exception(Exception::UD))?;
                hi.copy_from_slice(&h.to_le_bytes());
            }
            let bytes = data
                .get(..usize::from(size))
                .ok_or(ExecError::Unsupported(insn.op))?;
            x.write(insn.seg, ea, bytes)?;
        }
    }
    Ok(())
}
