//! The decoder's 0F map (SDM Vol. 2A Appendix A, Table A-3), 0F 38 F0/F1 (MOVBE) and the
//! VEX-encoded moves (§2.3); the prefixes, ModRM and the one-byte map are in `decode.rs`.

use super::decode::{modrm, unsupported, Ctx, Cursor, ModRm};
use super::{BitOp, CpuMode, DecodeFailure, Decoded, Op, Register, VecMove, Vex};

/// The 0F map (SDM Vol. 2A Table A-3) and 0F 38 F0/F1.
pub(super) fn map0f(
    c: &mut Cursor<'_>,
    ctx: &Ctx,
    op: u8,
    d: &mut Decoded,
    stack_base: &mut bool,
) -> Result<(), DecodeFailure> {
    let (mode, rex, asz) = (ctx.mode, ctx.p.rex, ctx.address_size);
    // SSE mandatory prefix: F2/F3 (the last one) win over 66 (SDM Vol. 2A §2.1.2 and the
    // notes on mandatory prefixes of Appendix A, Table A-3).
    let pp = match ctx.p.rep {
        0xf3 => 2,
        0xf2 => 3,
        _ if ctx.p.opsize => 1,
        _ => 0,
    };
    let mut m = |c: &mut Cursor<'_>, d: &mut Decoded| -> Result<ModRm, DecodeFailure> {
        let m = modrm(c, mode, asz, rex)?;
        d.mem = Some(m.mem);
        *stack_base = m.stack_base;
        Ok(m)
    };
    match op {
        0x40..=0x4f => {
            let r = m(c, d)?;
            d.reg = Some(ctx.gpr(r.reg, false));
            d.op = Op::Cmovcc(op & 0xf);
        }
        0x90..=0x9f => {
            m(c, d)?;
            d.size = 1;
            d.op = Op::Setcc(op & 0xf);
        }
        0xa3 | 0xab | 0xb3 | 0xbb => {
            let r = m(c, d)?;
            d.reg = Some(ctx.gpr(r.reg, false));
            d.op = Op::BitReg(bit_op((op >> 3) & 3));
        }
        0xba => {
            let r = m(c, d)?;
            if r.digit < 4 {
                return Err(DecodeFailure::Invalid);
            }
            d.imm = c.le(1)?;
            d.op = Op::BitImm(bit_op(r.digit & 3));
        }
        0xb0 | 0xb1 | 0xc0 | 0xc1 => {
            let r = m(c, d)?;
            d.size = ctx.size_of(op);
            d.reg = Some(ctx.gpr(r.reg, d.size == 1));
            d.op = if op < 0xc0 { Op::Cmpxchg } else { Op::Xadd };
        }
        0xb6 | 0xb7 | 0xbe | 0xbf => {
            let r = m(c, d)?;
            d.size = if op & 1 == 0 { 1 } else { 2 };
            d.reg = Some(ctx.gpr(r.reg, false));
            d.op = if op < 0xb8 { Op::Movzx } else { Op::Movsx };
        }
        0xc3 if pp == 0 => {
            let r = m(c, d)?;
            d.size = if rex & 8 != 0 { 8 } else { 4 };
            d.reg = Some(ctx.gpr(r.reg, false));
            d.op = Op::MovStore;
        }
        0x38 => {
            let op3 = c.next()?;
            if !matches!(op3, 0xf0 | 0xf1) || ctx.p.rep != 0 {
                return Err(unsupported(0x0f38, op3));
            }
            let r = m(c, d)?;
            d.reg = Some(ctx.gpr(r.reg, false));
            d.op = if op3 == 0xf0 {
                Op::MovbeLoad
            } else {
                Op::MovbeStore
            };
        }
        0x10 | 0x11 | 0x28 | 0x29 | 0x6f | 0x7f | 0x6e | 0x7e | 0xd6 => {
            let (load, kind, size) = match (op, pp) {
                (0x10, 0 | 1) => (true, VecMove::Unaligned, 16),
                (0x11, 0 | 1) => (false, VecMove::Unaligned, 16),
                (0x28, 0 | 1) => (true, VecMove::Aligned, 16),
                (0x29, 0 | 1) => (false, VecMove::Aligned, 16),
                (0x6f, 1) => (true, VecMove::Aligned, 16),
                (0x6f, 2) => (true, VecMove::Unaligned, 16),
                (0x7f, 1) => (false, VecMove::Aligned, 16),
                (0x7f, 2) => (false, VecMove::Unaligned, 16),
                (0x6e, 1) => (true, VecMove::Scalar, if rex & 8 != 0 { 8 } else { 4 }),
                (0x7e, 1) => (false, VecMove::Scalar, if rex & 8 != 0 { 8 } else { 4 }),
                (0x7e, 2) => (true, VecMove::Scalar, 8),
                (0xd6, 1) => (false, VecMove::Scalar, 8),
                _ => return Err(unsupported(0x0f, op)),
            };
            let r = m(c, d)?;
            d.size = size;
            d.reg = Some(Register {
                number: r.reg,
                high_byte: false,
            });
            d.op = if load {
                Op::VecLoad(kind)
            } else {
                Op::VecStore(kind)
            };
        }
        _ => return Err(unsupported(0x0f, op)),
    }
    Ok(())
}

fn bit_op(n: u8) -> BitOp {
    match n & 3 {
        0 => BitOp::Bt,
        1 => BitOp::Bts,
        2 => BitOp::Btr,
        _ => BitOp::Btc,
    }
}

/// A VEX-encoded move (SDM Vol. 2A §2.3.5, §2.3.6): VMOVUPS/UPD/APS/APD (0F 10/11/28/29),
/// VMOVDQA/VMOVDQU (66/F3 0F 6F/7F), 128- or 256-bit.
pub(super) fn vex(
    c: &mut Cursor<'_>,
    ctx: &Ctx,
    op: u8,
    d: &mut Decoded,
    stack_base: &mut bool,
) -> Result<(), DecodeFailure> {
    // 66, F2, F3, LOCK or REX before VEX: #UD (SDM Vol. 2A §2.3.2).
    if ctx.p.opsize || ctx.p.rep != 0 || ctx.p.lock || ctx.p.rex != 0 {
        return Err(DecodeFailure::Invalid);
    }
    let b1 = c.next()?;
    let (r_, x_, b_, map, w, vvvv, l, pp) = if op == 0xc5 {
        (b1 >> 7, 1, 1, 1, 0, (b1 >> 3) & 0xf, (b1 >> 2) & 1, b1 & 3)
    } else {
        let b2 = c.next()?;
        (
            b1 >> 7,
            (b1 >> 6) & 1,
            (b1 >> 5) & 1,
            b1 & 0x1f,
            b2 >> 7,
            (b2 >> 3) & 0xf,
            (b2 >> 2) & 1,
            b2 & 3,
        )
    };
    if map != 1 {
        return Err(if map == 0 || map > 3 {
            DecodeFailure::Invalid
        } else {
            DecodeFailure::Unsupported {
                opcode: 0xc400 | u32::from(map),
            }
        });
    }
    let opc = c.next()?;
    let (load, kind) = match (opc, pp) {
        (0x10, 0 | 1) => (true, VecMove::Unaligned),
        (0x11, 0 | 1) => (false, VecMove::Unaligned),
        (0x28, 0 | 1) => (true, VecMove::Aligned),
        (0x29, 0 | 1) => (false, VecMove::Aligned),
        (0x6f, 1) => (true, VecMove::Aligned),
        (0x6f, 2) => (true, VecMove::Unaligned),
        (0x7f, 1) => (false, VecMove::Aligned),
        (0x7f, 2) => (false, VecMove::Unaligned),
        _ => {
            return Err(DecodeFailure::Unsupported {
                opcode: 0xc40f00 | u32::from(opc),
            })
        }
    };
    // VEX.vvvv is unused by these moves and must be 1111b (SDM Vol. 2A §2.3.6.2).
    if vvvv != 0xf {
        return Err(DecodeFailure::Invalid);
    }
    // R, X, B are stored inverted; outside 64-bit mode they do not extend anything.
    let rex = if ctx.mode == CpuMode::Bits64 {
        ((r_ ^ 1) << 2) | ((x_ ^ 1) << 1) | (b_ ^ 1)
    } else {
        0
    };
    let m = modrm(c, ctx.mode, ctx.address_size, rex)?;
    d.mem = Some(m.mem);
    *stack_base = m.stack_base;
    d.size = if l == 1 { 32 } else { 16 };
    d.reg = Some(Register {
        number: m.reg,
        high_byte: false,
    });
    d.vex = Some(Vex {
        l256: l == 1,
        w: w == 1,
    });
    d.op = if load {
        Op::VecLoad(kind)
    } else {
        Op::VecStore(kind)
    };
    Ok(())
}
