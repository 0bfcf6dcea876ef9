//! The decoder: legacy prefixes, REX, VEX, the one-byte, 0F and 0F 38 opcode maps for the
//! instructions that can reach memory, ModRM/SIB/displacement and immediates (SDM Vol. 2A
//! chapter 2, Appendix A opcode maps, 2023+ numbering).

use super::{
    AluOp, BitOp, CpuMode, DecodeFailure, Decoded, MemOperand, Op, Register, Rep, Seg, MAX_LENGTH,
};

/// Bytes consumed so far; refuses to go past 15 (SDM Vol. 2A §2.3.11).
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    pub(super) fn next(&mut self) -> Result<u8, DecodeFailure> {
        if self.pos >= MAX_LENGTH {
            return Err(DecodeFailure::Truncated);
        }
        let b = *self.bytes.get(self.pos).ok_or(DecodeFailure::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// A little-endian value of `n` bytes (n <= 8).
    pub(super) fn le(&mut self, n: u8) -> Result<u64, DecodeFailure> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.next()?) << (8 * u32::from(i));
        }
        Ok(v)
    }
}

/// The legacy prefixes seen (SDM Vol. 2A §2.1.1): the last of each group wins.
#[derive(Default)]
pub(super) struct Prefixes {
    pub(super) opsize: bool,
    pub(super) addrsize: bool,
    pub(super) lock: bool,
    /// The last of F2/F3 (0 if none).
    pub(super) rep: u8,
    pub(super) seg: Option<Seg>,
    /// REX byte (0 if none); only the one right before the opcode counts.
    pub(super) rex: u8,
}

/// The ModRM byte's fields, REX-extended.
pub(super) struct ModRm {
    /// ModRM.reg | REX.R << 3.
    pub(super) reg: u8,
    /// ModRM.reg alone (the opcode extension of group opcodes).
    pub(super) digit: u8,
    pub(super) mem: MemOperand,
    /// The default segment from the base register (SS for rSP/rBP bases).
    pub(super) stack_base: bool,
}

/// 16-bit addressing's base/index pairs (SDM Vol. 2A Table 2-1): BX = 3, BP = 5, SI = 6,
/// DI = 7.
const MODES16: [(Option<u8>, Option<u8>); 8] = [
    (Some(3), Some(6)),
    (Some(3), Some(7)),
    (Some(5), Some(6)),
    (Some(5), Some(7)),
    (Some(6), None),
    (Some(7), None),
    (Some(5), None),
    (Some(3), None),
];

/// Reads ModRM, SIB and displacement. Refuses a register operand (mod = 11).
pub(super) fn modrm(
    c: &mut Cursor<'_>,
    mode: CpuMode,
    address_size: u8,
    rex: u8,
) -> Result<ModRm, DecodeFailure> {
    let m = c.next()?;
    let (md, digit, rm) = (m >> 6, (m >> 3) & 7, m & 7);
    let reg = digit | ((rex >> 2) & 1) << 3;
    if md == 3 {
        return Err(DecodeFailure::RegisterOperand);
    }
    let mut mem = MemOperand {
        base: None,
        index: None,
        scale: 1,
        disp: 0,
        rip_relative: false,
    };
    if address_size == 2 {
        let (base, index) = MODES16[usize::from(rm)];
        let disp_len = match (md, rm) {
            (0, 6) => 2,
            (0, _) => 0,
            (1, _) => 1,
            _ => 2,
        };
        if !(md == 0 && rm == 6) {
            mem.base = base;
            mem.index = index;
        }
        mem.disp = super::alu::sign_extend(c.le(disp_len)?, disp_len.max(1));
        if disp_len == 0 {
            mem.disp = 0;
        }
        let stack_base = mem.base == Some(5);
        return Ok(ModRm {
            reg,
            digit,
            mem,
            stack_base,
        });
    }
    let rex_b = (rex & 1) << 3;
    let rex_x = ((rex >> 1) & 1) << 3;
    let mut disp_len = match md {
        0 => 0,
        1 => 1,
        _ => 4,
    };
    if rm == 4 {
        // SIB (SDM Vol. 2A Table 2-3): index 100 without REX.X is "none"; base 101 with
        // mod 00 is "disp32, no base".
        let sib = c.next()?;
        let (ss, idx, base) = (sib >> 6, (sib >> 3) & 7, sib & 7);
        let index = idx | rex_x;
        if index != 4 {
            mem.index = Some(index);
            mem.scale = 1 << ss;
        }
        if md == 0 && base == 5 {
            disp_len = 4;
        } else {
            mem.base = Some(base | rex_b);
        }
    } else if md == 0 && rm == 5 {
        // disp32 alone; RIP-relative in 64-bit mode (SDM Vol. 2A §2.2.1.6).
        disp_len = 4;
        mem.rip_relative = mode == CpuMode::Bits64;
    } else {
        mem.base = Some(rm | rex_b);
    }
    if disp_len > 0 {
        mem.disp = super::alu::sign_extend(c.le(disp_len)?, disp_len);
    }
    let stack_base = matches!(mem.base, Some(4 | 5));
    Ok(ModRm {
        reg,
        digit,
        mem,
        stack_base,
    })
}

/// The decoder's state after the prefixes.
pub(super) struct Ctx {
    pub(super) mode: CpuMode,
    pub(super) p: Prefixes,
    pub(super) operand_size: u8,
    pub(super) address_size: u8,
}

impl Ctx {
    /// A general register from a ModRM.reg-style number: byte registers 4-7 without REX are
    /// AH, CH, DH, BH (SDM Vol. 2A §3.7.2.1 / Table 3-1).
    pub(super) fn gpr(&self, n: u8, byte: bool) -> Register {
        let high_byte = byte && self.p.rex == 0 && (4..8).contains(&n);
        Register {
            number: if high_byte { n - 4 } else { n },
            high_byte,
        }
    }

    /// Operand size of a byte/full pair (`op & 1 == 0`: byte).
    pub(super) fn size_of(&self, op: u8) -> u8 {
        if op & 1 == 0 {
            1
        } else {
            self.operand_size
        }
    }
}

pub(super) fn unsupported(map: u32, op: u8) -> DecodeFailure {
    DecodeFailure::Unsupported {
        opcode: map << 8 | u32::from(op),
    }
}

/// Decodes the instruction at the start of `bytes` in `mode`.
pub fn decode_full(bytes: &[u8], mode: CpuMode) -> Result<Decoded, DecodeFailure> {
    let mut c = Cursor { bytes, pos: 0 };
    let mut p = Prefixes::default();
    let mut op;
    loop {
        op = c.next()?;
        match op {
            0x66 => p.opsize = true,
            0x67 => p.addrsize = true,
            0xf0 => p.lock = true,
            0xf2 | 0xf3 => p.rep = op,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {
                // 26/2E/36/3E carry ES/CS/SS/DS in bits 4:3; 64/65 are FS/GS.
                // In 64-bit mode ES/CS/SS/DS overrides are ignored altogether (they do not
                // even replace an earlier FS/GS; SDM Vol. 1 §3.4.2.1).
                p.seg = match op {
                    0x64 => Some(Seg::Fs),
                    0x65 => Some(Seg::Gs),
                    _ if mode == CpuMode::Bits64 => p.seg,
                    _ => Seg::from_number((op >> 3) & 3),
                };
            }
            0x40..=0x4f if mode == CpuMode::Bits64 => {
                p.rex = op;
                continue;
            }
            _ => break,
        }
        // A REX followed by a legacy prefix is ignored (SDM Vol. 2A §2.2.1).
        p.rex = 0;
    }
    let rex_w = p.rex & 8 != 0;
    // SDM Vol. 2A §3.6 Table 3-4; REX.W wins over 66.
    let operand_size = match mode {
        CpuMode::Bits64 if rex_w => 8,
        CpuMode::Bits64 | CpuMode::Bits32 => {
            if p.opsize {
                2
            } else {
                4
            }
        }
        CpuMode::Bits16 => {
            if p.opsize {
                4
            } else {
                2
            }
        }
    };
    let address_size = match (mode, p.addrsize) {
        (CpuMode::Bits64, false) => 8,
        (CpuMode::Bits64, true) | (CpuMode::Bits32, false) | (CpuMode::Bits16, true) => 4,
        (CpuMode::Bits32, true) | (CpuMode::Bits16, false) => 2,
    };
    let ctx = Ctx {
        mode,
        p,
        operand_size,
        address_size,
    };
    let mut d = Decoded {
        length: 0,
        mode,
        op: Op::MovLoad,
        operand_size,
        address_size,
        size: operand_size,
        seg: Seg::Ds,
        rep: Rep::None,
        lock: ctx.p.lock,
        reg: None,
        mem: None,
        imm: 0,
        vex: None,
    };
    let mut stack_base = false;
    // VEX (C5 two-byte, C4 three-byte): outside 64-bit mode only when the next byte's top
    // bits are 11, else these are LDS/LES (SDM Vol. 2A §2.3.5).
    if (op == 0xc4 || op == 0xc5)
        && (mode == CpuMode::Bits64 || c.peek().is_some_and(|b| b >> 6 == 3))
    {
        super::decode_0f::vex(&mut c, &ctx, op, &mut d, &mut stack_base)?;
    } else {
        legacy(&mut c, &ctx, op, &mut d, &mut stack_base)?;
    }
    if d.mem.is_some() {
        d.seg = segment(mode, ctx.p.seg, stack_base);
    }
    if ctx.p.lock && !lockable(d.op) {
        return Err(DecodeFailure::InvalidLock);
    }
    d.length = u8::try_from(c.pos).map_err(|_| DecodeFailure::Truncated)?;
    Ok(d)
}

/// The segment of a memory operand: an override, else SS for rSP/rBP bases and DS for the
/// rest (SDM Vol. 1 §3.7.4 "Specifying a Segment Selector", Table 3-5); 64-bit mode honours
/// only FS and GS overrides (Vol. 2A §2.1.1, group 2: "in 64-bit mode the CS, DS, ES, and SS
/// segment overrides are ignored").
fn segment(mode: CpuMode, over: Option<Seg>, stack_base: bool) -> Seg {
    let default = if stack_base { Seg::Ss } else { Seg::Ds };
    match over {
        Some(s @ (Seg::Fs | Seg::Gs)) => s,
        Some(_) if mode == CpuMode::Bits64 => default,
        Some(s) => s,
        None => default,
    }
}

/// LOCK is legal on the memory forms of these only (SDM Vol. 2A LOCK "Description").
fn lockable(op: Op) -> bool {
    match op {
        Op::AluStore(a) | Op::AluImm(a) => a != AluOp::Cmp,
        Op::BitReg(b) | Op::BitImm(b) => b != BitOp::Bt,
        Op::Inc | Op::Dec | Op::Not | Op::Neg | Op::Xchg | Op::Cmpxchg | Op::Xadd => true,
        _ => false,
    }
}

/// The non-VEX maps.
fn legacy(
    c: &mut Cursor<'_>,
    ctx: &Ctx,
    op: u8,
    d: &mut Decoded,
    stack_base: &mut bool,
) -> Result<(), DecodeFailure> {
    let mode = ctx.mode;
    let rex = ctx.p.rex;
    let asz = ctx.address_size;
    let mut take_modrm = |c: &mut Cursor<'_>, d: &mut Decoded| -> Result<ModRm, DecodeFailure> {
        let m = modrm(c, mode, asz, rex)?;
        d.mem = Some(m.mem);
        *stack_base = m.stack_base;
        Ok(m)
    };
    match op {
        // ALU r/m,r and r,r/m (SDM Vol. 2A Table A-2 rows 0-3).
        0x00..=0x3f if op & 7 < 4 => {
            let m = take_modrm(c, d)?;
            let alu = AluOp::from_number(op >> 3);
            d.size = ctx.size_of(op);
            d.reg = Some(ctx.gpr(m.reg, d.size == 1));
            d.op = if op & 2 == 0 {
                Op::AluStore(alu)
            } else {
                Op::AluLoad(alu)
            };
        }
        0x63 if mode == CpuMode::Bits64 => {
            let m = take_modrm(c, d)?;
            d.size = ctx.operand_size.min(4);
            d.reg = Some(ctx.gpr(m.reg, false));
            d.op = Op::Movsxd;
        }
        // Group 1; 82 is 80's alias outside 64-bit mode.
        0x80..=0x83 if op != 0x82 || mode != CpuMode::Bits64 => {
            let m = take_modrm(c, d)?;
            d.size = ctx.size_of(op);
            d.op = Op::AluImm(AluOp::from_number(m.digit));
            d.imm = match op {
                0x81 => imm_z(c, d.size)?,
                _ => super::alu::sign_extend(c.le(1)?, 1),
            };
        }
        0x84..=0x8b => {
            let m = take_modrm(c, d)?;
            d.size = ctx.size_of(op);
            d.reg = Some(ctx.gpr(m.reg, d.size == 1));
            d.op = match op {
                0x84 | 0x85 => Op::TestReg,
                0x86 | 0x87 => Op::Xchg,
                0x88 | 0x89 => Op::MovStore,
                _ => Op::MovLoad,
            };
        }
        0x8c | 0x8e => {
            let m = take_modrm(c, d)?;
            // Segment numbers 6 and 7, and MOV to CS, are #UD (SDM Vol. 2B MOV).
            if m.digit > 5 || (op == 0x8e && m.digit == 1) {
                return Err(DecodeFailure::Invalid);
            }
            d.size = 2;
            d.reg = Some(Register {
                number: m.digit,
                high_byte: false,
            });
            d.op = if op == 0x8c {
                Op::MovFromSreg
            } else {
                Op::MovToSreg
            };
        }
        0x8f => {
            let m = take_modrm(c, d)?;
            if m.digit != 0 {
                return Err(unsupported(0, op));
            }
            d.size = stack_operand_size(ctx);
            d.op = Op::PopMem;
        }
        0xa0..=0xa3 => {
            // moffs: an offset of the address size, no ModRM (SDM Vol. 2B MOV, note 1).
            let off = c.le(asz)?;
            d.mem = Some(MemOperand {
                base: None,
                index: None,
                scale: 1,
                disp: off,
                rip_relative: false,
            });
            d.size = ctx.size_of(op);
            d.reg = Some(ctx.gpr(0, false));
            d.op = if op & 2 == 0 {
                Op::MovLoad
            } else {
                Op::MovStore
            };
        }
        0xa4..=0xa7 | 0xaa..=0xaf => {
            d.size = ctx.size_of(op);
            d.seg = segment(mode, ctx.p.seg, false);
            d.op = match op & !1 {
                0xa4 => Op::Movs,
                0xa6 => Op::Cmps,
                0xaa => Op::Stos,
                0xac => Op::Lods,
                _ => Op::Scas,
            };
            if !matches!(d.op, Op::Movs | Op::Cmps) {
                d.reg = Some(ctx.gpr(0, false));
            }
            let compares = matches!(d.op, Op::Cmps | Op::Scas);
            d.rep = match (ctx.p.rep, compares) {
                (0xf3, true) => Rep::Repe,
                (0xf2, true) => Rep::Repne,
                (0xf2 | 0xf3, false) => Rep::Rep,
                _ => Rep::None,
            };
        }
        0xc6 | 0xc7 => {
            let m = take_modrm(c, d)?;
            if m.digit != 0 {
                return Err(unsupported(0, op));
            }
            d.size = ctx.size_of(op);
            d.imm = if op == 0xc6 {
                c.le(1)?
            } else {
                imm_z(c, d.size)?
            };
            d.op = Op::MovImm;
        }
        0xf6 | 0xf7 => {
            let m = take_modrm(c, d)?;
            d.size = ctx.size_of(op);
            d.op = match m.digit {
                0 | 1 => Op::TestImm,
                2 => Op::Not,
                3 => Op::Neg,
                _ => return Err(unsupported(0, op)),
            };
            if d.op == Op::TestImm {
                d.imm = if op == 0xf6 {
                    c.le(1)?
                } else {
                    imm_z(c, d.size)?
                };
            }
        }
        0xfe | 0xff => {
            let m = take_modrm(c, d)?;
            d.size = ctx.size_of(op);
            d.op = match m.digit {
                0 => Op::Inc,
                1 => Op::Dec,
                6 if op == 0xff => {
                    d.size = stack_operand_size(ctx);
                    Op::PushMem
                }
                _ => return Err(unsupported(0, op)),
            };
        }
        0x0f => {
            let op2 = c.next()?;
            return super::decode_0f::map0f(c, ctx, op2, d, stack_base);
        }
        _ => return Err(unsupported(0, op)),
    }
    Ok(())
}

/// An immediate of the operand size, at most 32 bits, sign-extended (imm16/imm32, and the
/// REX.W forms' imm32 sign-extended to 64; SDM Vol. 2A §2.2.1.5).
fn imm_z(c: &mut Cursor<'_>, size: u8) -> Result<u64, DecodeFailure> {
    let n = size.min(4);
    Ok(super::alu::sign_extend(c.le(n)?, n))
}

/// PUSH/POP r/m: 64-bit mode defaults to 8 bytes and only 66 (without REX.W) makes it 2
/// (SDM Vol. 2A §2.2.1.7 "Default 64-Bit Operand Size" and PUSH/POP's operand-size notes).
pub(super) fn stack_operand_size(ctx: &Ctx) -> u8 {
    if ctx.mode == CpuMode::Bits64 {
        if ctx.p.opsize && ctx.p.rex & 8 == 0 {
            2
        } else {
            8
        }
    } else {
        ctx.operand_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(bytes: &[u8], mode: CpuMode) -> (MemOperand, Seg, u8) {
        let d = decode_full(bytes, mode).unwrap();
        (d.mem.unwrap(), d.seg, d.length)
    }

    #[test]
    fn sixteen_bit_modes() {
        // mov ax, [bp+0] (8b 46 00): BP base, SS default.
        let (m, seg, len) = mem(&[0x8b, 0x46, 0x00], CpuMode::Bits16);
        assert_eq!((m.base, m.index, seg, len), (Some(5), None, Seg::Ss, 3));
        // mov ax, [0x1234] (8b 06 34 12): mod 00 r/m 110 is a bare disp16, DS.
        let (m, seg, len) = mem(&[0x8b, 0x06, 0x34, 0x12], CpuMode::Bits16);
        assert_eq!((m.base, m.disp, seg, len), (None, 0x1234, Seg::Ds, 4));
        // mov ax, [bx+si-1] (8b 40 ff): disp8 sign-extended.
        let (m, _, _) = mem(&[0x8b, 0x40, 0xff], CpuMode::Bits16);
        assert_eq!((m.base, m.index, m.disp), (Some(3), Some(6), u64::MAX));
    }

    #[test]
    fn rex_sib_and_prefix_order() {
        // mov eax, [r13+r12*4] (43 8b 44 a5 00): REX.X makes index 12 valid, REX.B base 13
        // (with mod 01: r13 needs a disp8).
        let (m, _, len) = mem(&[0x43, 0x8b, 0x44, 0xa5, 0x00], CpuMode::Bits64);
        assert_eq!((m.base, m.index, m.scale, len), (Some(13), Some(12), 4, 5));
        // SIB index 100 without REX.X: no index ([rsp], SS).
        let (m, seg, _) = mem(&[0x8b, 0x04, 0x24], CpuMode::Bits64);
        assert_eq!((m.base, m.index, seg), (Some(4), None, Seg::Ss));
        // A REX before a legacy prefix is dropped: 48 66 89 03 is a 16-bit store.
        let d = decode_full(&[0x48, 0x66, 0x89, 0x03], CpuMode::Bits64).unwrap();
        assert_eq!(d.size, 2);
        // 82 is #UD in 64-bit mode, ADD's alias elsewhere.
        assert!(decode_full(&[0x82, 0x03, 0x01], CpuMode::Bits64).is_err());
        assert_eq!(
            decode_full(&[0x82, 0x03, 0x01], CpuMode::Bits32)
                .unwrap()
                .op,
            Op::AluImm(AluOp::Add)
        );
        // Fourteen prefixes and a 2-byte MOV pass 15 bytes.
        let mut long = [0x66u8; 16];
        long[14] = 0x89;
        long[15] = 0x03;
        assert_eq!(
            decode_full(&long, CpuMode::Bits32),
            Err(DecodeFailure::Truncated)
        );
    }

    #[test]
    fn vex_or_les() {
        // In 32-bit mode C4 with a memory ModRM next is LES: not emulated.
        assert_eq!(
            decode_full(&[0xc4, 0x03], CpuMode::Bits32),
            Err(DecodeFailure::Unsupported { opcode: 0xc4 })
        );
        // c4 e1 7e 6f 03 (vmovdqu ymm0, [ebx]) is VEX there (top bits 11).
        let d = decode_full(&[0xc4, 0xe1, 0x7e, 0x6f, 0x03], CpuMode::Bits32).unwrap();
        assert_eq!((d.size, d.length), (32, 5));
        // 66 before VEX: #UD.
        assert_eq!(
            decode_full(&[0x66, 0xc5, 0xf9, 0x6f, 0x03], CpuMode::Bits64),
            Err(DecodeFailure::Invalid)
        );
    }
}
