//! Integer arithmetic with exact status flags (SDM Vol. 1 §3.4.3.1 "Status Flags", Vol. 1
//! Appendix A "EFLAGS Cross-Reference", and each instruction's "Flags Affected").
//!
//! Values are carried in `u64` and cut to `size` bytes (1, 2, 4, 8). Flags an instruction
//! leaves "undefined" take the value the host CPU produced when measured
//! (`tests/emulate_alu.rs` runs the real instructions; measured on AMD EPYC): AND/OR/XOR/TEST
//! clear AF, BT/BTS/BTR/BTC leave OF/SF/AF/PF as they were.

/// The RFLAGS bits this module computes.
pub struct Flags;

impl Flags {
    /// Carry (bit 0).
    pub const CF: u64 = 1 << 0;
    /// Parity of the low byte (bit 2).
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry out of bit 3 (bit 4).
    pub const AF: u64 = 1 << 4;
    /// Zero (bit 6).
    pub const ZF: u64 = 1 << 6;
    /// Sign (bit 7).
    pub const SF: u64 = 1 << 7;
    /// Direction (bit 10): string forms step down when set.
    pub const DF: u64 = 1 << 10;
    /// Overflow (bit 11).
    pub const OF: u64 = 1 << 11;
    /// All six status flags.
    pub const STATUS: u64 = Self::CF | Self::PF | Self::AF | Self::ZF | Self::SF | Self::OF;
}

/// The eight two-operand ALU operations, in their opcode order (`opcode >> 3` for 00-3F, and
/// ModRM.reg of 80/81/83; SDM Vol. 2A Table A-6 group 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    /// ADD.
    Add,
    /// OR.
    Or,
    /// ADC.
    Adc,
    /// SBB.
    Sbb,
    /// AND.
    And,
    /// SUB.
    Sub,
    /// XOR.
    Xor,
    /// CMP (SUB without the result).
    Cmp,
}

impl AluOp {
    /// The operation numbered `n & 7`.
    pub fn from_number(n: u8) -> AluOp {
        match n & 7 {
            0 => AluOp::Add,
            1 => AluOp::Or,
            2 => AluOp::Adc,
            3 => AluOp::Sbb,
            4 => AluOp::And,
            5 => AluOp::Sub,
            6 => AluOp::Xor,
            _ => AluOp::Cmp,
        }
    }

    /// Whether the destination is written (all but CMP).
    pub fn writes(self) -> bool {
        self != AluOp::Cmp
    }
}

/// All ones in the low `size` bytes.
pub(crate) fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// The sign bit of a `size`-byte value.
fn sign(size: u8) -> u64 {
    (mask(size) >> 1).wrapping_add(1)
}

/// `v` (a `size`-byte value) sign-extended to 64 bits.
pub(crate) fn sign_extend(v: u64, size: u8) -> u64 {
    let bits = u32::from(size.clamp(1, 8)) * 8;
    let shift = 64 - bits;
    (((v << shift) as i64) >> shift) as u64
}

/// PF, ZF and SF of result `r` (PF: even number of set bits in the low byte).
fn pzs(r: u64, size: u8) -> u64 {
    let mut f = 0;
    if (r as u8).count_ones() % 2 == 0 {
        f |= Flags::PF;
    }
    if r & mask(size) == 0 {
        f |= Flags::ZF;
    }
    if r & sign(size) != 0 {
        f |= Flags::SF;
    }
    f
}

/// `a + b + carry` cut to `size`, with all six flags.
fn add(a: u64, b: u64, carry: bool, size: u8) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let wide = u128::from(a) + u128::from(b) + u128::from(carry);
    let r = (wide as u64) & m;
    let mut f = pzs(r, size);
    if wide > u128::from(m) {
        f |= Flags::CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= Flags::AF;
    }
    // Overflow: both operands of one sign, the result of the other.
    if (a ^ r) & (b ^ r) & sign(size) != 0 {
        f |= Flags::OF;
    }
    (r, f)
}

/// `a - b - borrow` cut to `size`, with all six flags.
fn sub(a: u64, b: u64, borrow: bool, size: u8) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_sub(b).wrapping_sub(u64::from(borrow)) & m;
    let mut f = pzs(r, size);
    if u128::from(a) < u128::from(b) + u128::from(borrow) {
        f |= Flags::CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= Flags::AF;
    }
    // Overflow: operands of different signs, the result's sign differs from the minuend's.
    if (a ^ b) & (a ^ r) & sign(size) != 0 {
        f |= Flags::OF;
    }
    (r, f)
}

/// A logic result's flags: OF = CF = 0, SF/ZF/PF from the result, AF as the host leaves it
/// (SDM says undefined; measured 0).
fn logic(r: u64, size: u8) -> (u64, u64) {
    let r = r & mask(size);
    (r, pzs(r, size))
}

/// Replaces the status flags of `rflags` with `status` (only the bits in `which`).
pub(crate) fn merge_flags(rflags: u64, status: u64, which: u64) -> u64 {
    (rflags & !which) | (status & which)
}

/// `a op b` on `size` bytes with the incoming RFLAGS (ADC/SBB read CF): the result and the
/// new RFLAGS. CMP's result is the difference (not to be stored).
pub fn alu(op: AluOp, a: u64, b: u64, size: u8, rflags: u64) -> (u64, u64) {
    let cf = rflags & Flags::CF != 0;
    let (r, f) = match op {
        AluOp::Add => add(a, b, false, size),
        AluOp::Adc => add(a, b, cf, size),
        AluOp::Sub | AluOp::Cmp => sub(a, b, false, size),
        AluOp::Sbb => sub(a, b, cf, size),
        AluOp::And => logic(a & b, size),
        AluOp::Or => logic(a | b, size),
        AluOp::Xor => logic(a ^ b, size),
    };
    (r, merge_flags(rflags, f, Flags::STATUS))
}

/// INC (`dec` false) or DEC: CF is kept (SDM Vol. 2A INC/DEC "Flags Affected").
pub fn inc_dec(a: u64, dec: bool, size: u8, rflags: u64) -> (u64, u64) {
    let (r, f) = if dec {
        sub(a, 1, false, size)
    } else {
        add(a, 1, false, size)
    };
    (r, merge_flags(rflags, f, Flags::STATUS & !Flags::CF))
}

/// NEG: 0 - a, CF = (a != 0) (SDM Vol. 2B NEG), the rest as SUB.
pub fn neg(a: u64, size: u8, rflags: u64) -> (u64, u64) {
    let (r, f) = sub(0, a, false, size);
    (r, merge_flags(rflags, f, Flags::STATUS))
}

/// Condition code `cc` (0..15, the low nibble of Jcc/SETcc/CMOVcc; SDM Vol. 1 Appendix B
/// Table B-1) on `rflags`.
pub fn condition(cc: u8, rflags: u64) -> bool {
    let f = |bit: u64| rflags & bit != 0;
    let base = match cc >> 1 {
        0 => f(Flags::OF),
        1 => f(Flags::CF),
        2 => f(Flags::ZF),
        3 => f(Flags::CF) || f(Flags::ZF),
        4 => f(Flags::SF),
        5 => f(Flags::PF),
        6 => f(Flags::SF) != f(Flags::OF),
        _ => f(Flags::ZF) || (f(Flags::SF) != f(Flags::OF)),
    };
    // Odd codes are the negations (NO, NB, NZ...).
    base != (cc & 1 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sub_flags_at_the_edges() {
        // 0x7f + 1 (byte): OF, SF, AF; no CF.
        let (r, f) = alu(AluOp::Add, 0x7f, 1, 1, 0);
        assert_eq!(r, 0x80);
        assert_eq!(f & Flags::STATUS, Flags::OF | Flags::SF | Flags::AF);
        // 0xffff + 1 (word): CF, ZF, PF, AF.
        let (r, f) = alu(AluOp::Add, 0xffff, 1, 2, 0);
        assert_eq!(r, 0);
        assert_eq!(
            f & Flags::STATUS,
            Flags::CF | Flags::ZF | Flags::PF | Flags::AF
        );
        // 0 - 1 (qword): CF, SF, PF, AF.
        let (r, f) = alu(AluOp::Sub, 0, 1, 8, 0);
        assert_eq!(r, u64::MAX);
        assert_eq!(
            f & Flags::STATUS,
            Flags::CF | Flags::SF | Flags::PF | Flags::AF
        );
        // SBB with CF in: 5 - 5 - 1 = -1.
        let (r, f) = alu(AluOp::Sbb, 5, 5, 4, Flags::CF);
        assert_eq!(r, 0xffff_ffff);
        assert!(f & Flags::CF != 0);
        // ADC carry in that itself carries out: 0xff + 0xff + 1 = 0x1ff.
        let (r, f) = alu(AluOp::Adc, 0xff, 0xff, 1, Flags::CF);
        assert_eq!(r, 0xff);
        assert!(f & Flags::CF != 0);
        // Other RFLAGS bits (DF, IF) survive.
        let (_, f) = alu(
            AluOp::Xor,
            1,
            1,
            4,
            Flags::DF | 0x202 | Flags::CF | Flags::OF,
        );
        assert_eq!(f, Flags::DF | 0x202 | Flags::ZF | Flags::PF);
    }

    #[test]
    fn inc_keeps_cf_neg_sets_it() {
        let (r, f) = inc_dec(0xff, false, 1, Flags::CF);
        assert_eq!(r, 0);
        assert_eq!(
            f & Flags::STATUS,
            Flags::CF | Flags::ZF | Flags::PF | Flags::AF
        );
        let (r, f) = inc_dec(0x8000, true, 2, 0);
        assert_eq!(r, 0x7fff);
        assert_eq!(f & Flags::STATUS, Flags::OF | Flags::AF | Flags::PF);
        let (r, f) = neg(0, 4, Flags::CF);
        assert_eq!((r, f & Flags::CF), (0, 0));
        let (r, f) = neg(0x8000_0000, 4, 0);
        assert_eq!(r, 0x8000_0000);
        assert!(f & Flags::OF != 0 && f & Flags::CF != 0);
    }

    #[test]
    fn conditions() {
        assert!(condition(0x4, Flags::ZF));
        assert!(!condition(0x5, Flags::ZF));
        assert!(condition(0xc, Flags::SF));
        assert!(!condition(0xc, Flags::SF | Flags::OF));
        assert!(condition(0xe, Flags::ZF | Flags::SF | Flags::OF));
        assert!(condition(0xf, 0));
        assert!(condition(0x6, Flags::CF));
        assert!(condition(0xb, 0));
    }
}
