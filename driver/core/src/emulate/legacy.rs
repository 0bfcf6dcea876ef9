//! The MMIO instruction decoder: the plain MOV loads and stores that reach unmapped guest
//! memory (Intel SDM Vol. 2A chapter 2 "Instruction Format", Vol. 2B MOV, MOVZX, MOVSX;
//! 2023+ numbering). A full emulator is a later issue; anything else is refused with
//! [`DecodeError`] and the vCPU reports STATECHANGE.
//!
//! Decoded: prefixes (operand size 66, address size 67, segment overrides, REP F2/F3 which MOV
//! ignores), REX in 64-bit mode, `88`/`89`/`8A`/`8B` (MOV r/m,r and r,r/m), `C6 /0`/`C7 /0`
//! (MOV r/m,imm), `A0`-`A3` (MOV AL/eAX, moffs and back), `0F B6`/`B7` (MOVZX), `0F BE`/`BF`
//! (MOVSX), with ModRM/SIB/displacement in 16-, 32- and 64-bit addressing. The effective
//! address is not computed: the VM exit already reports the guest-physical address; only the
//! instruction's length and its register/immediate operand matter.

/// The processor mode the instruction is decoded in (default operand and address size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// Real or virtual-8086 mode, or protected mode with a 16-bit code segment (CS.D = 0).
    Bits16,
    /// Protected/compatibility mode with CS.D = 1.
    Bits32,
    /// 64-bit mode (IA-32e with CS.L = 1).
    Bits64,
}

/// How a load's value reaches its destination register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// MOV: the value fills exactly the destination size.
    None,
    /// MOVZX.
    Zero,
    /// MOVSX.
    Sign,
}

/// A register operand: number (0-15, REX extended) and whether it is AH/CH/DH/BH (byte
/// registers 4-7 without a REX prefix, SDM Vol. 2A §3.7.2.1 / Table 3-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    /// x86 register number.
    pub number: u8,
    /// Bits 15:8 of register `number` (AH = 0, CH = 1, DH = 2, BH = 3).
    pub high_byte: bool,
}

/// What the instruction does with memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Memory → register.
    Load {
        /// Destination.
        dest: Register,
        /// Destination size in bytes (1, 2, 4, 8).
        dest_size: u8,
        /// Extension from the access size to `dest_size`.
        extend: Extend,
    },
    /// Register → memory.
    StoreRegister {
        /// Source.
        src: Register,
    },
    /// Immediate → memory (already sign-extended to the access size).
    StoreImmediate {
        /// The value.
        value: u64,
    },
}

/// A decoded MMIO instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// The access.
    pub operation: Operation,
    /// Bytes of memory accessed (1, 2, 4 or 8).
    pub size: u8,
    /// Instruction length in bytes.
    pub length: u8,
}

/// Why an instruction was not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ran out (the instruction crosses into an unreadable page, or is longer than
    /// 15 bytes, SDM Vol. 2A §2.3.11).
    Truncated,
    /// An opcode outside the supported MOV forms.
    Unsupported {
        /// The (first) opcode byte.
        opcode: u8,
    },
    /// The ModRM names a register, not memory: such an instruction cannot touch MMIO.
    RegisterOperand,
    /// LOCK on a MOV (#UD on hardware).
    Lock,
}

/// The most bytes an instruction may have (SDM Vol. 2A §2.3.11).
pub const MAX_LENGTH: usize = 15;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LENGTH {
            return Err(DecodeError::Truncated);
        }
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        for _ in 0..n {
            self.next()?;
        }
        Ok(())
    }

    fn imm(&mut self, n: usize) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.next()?) << (8 * i);
        }
        Ok(v)
    }
}

/// Skips ModRM's SIB and displacement; returns `reg` (bits 5:3, without REX.R). SDM Vol. 2A
/// Tables 2-1 (16-bit), 2-2 (32-bit) and 2-3 (SIB).
fn modrm(c: &mut Cursor<'_>, address_size: u8) -> Result<u8, DecodeError> {
    let m = c.next()?;
    let (md, reg, rm) = (m >> 6, (m >> 3) & 7, m & 7);
    if md == 3 {
        return Err(DecodeError::RegisterOperand);
    }
    if address_size == 2 {
        let disp = match (md, rm) {
            (0, 6) => 2,
            (0, _) => 0,
            (1, _) => 1,
            _ => 2,
        };
        c.skip(disp)?;
        return Ok(reg);
    }
    let mut disp = match md {
        0 => 0,
        1 => 1,
        _ => 4,
    };
    if rm == 4 {
        let sib = c.next()?;
        if md == 0 && sib & 7 == 5 {
            disp = 4;
        }
    } else if md == 0 && rm == 5 {
        // disp32 (RIP-relative in 64-bit mode).
        disp = 4;
    }
    c.skip(disp)?;
    Ok(reg)
}

/// Decodes the instruction at the start of `bytes` in `mode`.
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<Instruction, DecodeError> {
    let mut c = Cursor { bytes, pos: 0 };
    let mut opsize_prefix = false;
    let mut addrsize_prefix = false;
    let mut rex = 0u8;
    let mut op;
    loop {
        op = c.next()?;
        match op {
            0x66 => opsize_prefix = true,
            0x67 => addrsize_prefix = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0xf2 | 0xf3 => {}
            0xf0 => return Err(DecodeError::Lock),
            _ => {}
        }
        if matches!(
            op,
            0x66 | 0x67 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0xf2 | 0xf3
        ) {
            // A REX before a legacy prefix is ignored (SDM Vol. 2A §2.2.1).
            rex = 0;
            continue;
        }
        if mode == CpuMode::Bits64 && (0x40..=0x4f).contains(&op) {
            rex = op;
            continue;
        }
        break;
    }
    let rex_w = rex & 8 != 0;
    let rex_r = (rex >> 2) & 1;
    // Operand size: SDM Vol. 2A §3.6 Table 3-4; REX.W wins over 66.
    let opsize: u8 = match mode {
        CpuMode::Bits64 if rex_w => 8,
        CpuMode::Bits64 | CpuMode::Bits32 => {
            if opsize_prefix {
                2
            } else {
                4
            }
        }
        CpuMode::Bits16 => {
            if opsize_prefix {
                4
            } else {
                2
            }
        }
    };
    let address_size: u8 = match (mode, addrsize_prefix) {
        (CpuMode::Bits64, false) => 8,
        (CpuMode::Bits64, true) | (CpuMode::Bits32, false) | (CpuMode::Bits16, true) => 4,
        (CpuMode::Bits32, true) | (CpuMode::Bits16, false) => 2,
    };
    let reg_of = |r: u8, byte: bool| {
        // Byte registers 4-7 without REX are AH, CH, DH, BH: bits 15:8 of registers 0-3.
        let high_byte = byte && rex == 0 && (4..8).contains(&r);
        Register {
            number: if high_byte { r - 4 } else { r | (rex_r << 3) },
            high_byte,
        }
    };
    let (operation, size) = match op {
        0x88..=0x8b => {
            let byte = op & 1 == 0;
            let r = modrm(&mut c, address_size)?;
            let size = if byte { 1 } else { opsize };
            let reg = reg_of(r, byte);
            if op & 2 == 0 {
                (Operation::StoreRegister { src: reg }, size)
            } else {
                (
                    Operation::Load {
                        dest: reg,
                        dest_size: size,
                        extend: Extend::None,
                    },
                    size,
                )
            }
        }
        0xc6 | 0xc7 => {
            let r = modrm(&mut c, address_size)?;
            if r != 0 {
                return Err(DecodeError::Unsupported { opcode: op });
            }
            let size = if op == 0xc6 { 1 } else { opsize };
            // imm8/imm16/imm32; with REX.W the imm32 is sign-extended to 64 bits.
            let imm_len = usize::from(size.min(4));
            let raw = c.imm(imm_len)?;
            let value = if size == 8 {
                raw as u32 as i32 as i64 as u64
            } else {
                raw
            };
            (Operation::StoreImmediate { value }, size)
        }
        0xa0..=0xa3 => {
            c.skip(usize::from(address_size))?;
            let size = if op & 1 == 0 { 1 } else { opsize };
            let rax = Register {
                number: 0,
                high_byte: false,
            };
            if op & 2 == 0 {
                (
                    Operation::Load {
                        dest: rax,
                        dest_size: size,
                        extend: Extend::None,
                    },
                    size,
                )
            } else {
                (Operation::StoreRegister { src: rax }, size)
            }
        }
        0x0f => {
            let op2 = c.next()?;
            let (size, extend) = match op2 {
                0xb6 => (1, Extend::Zero),
                0xb7 => (2, Extend::Zero),
                0xbe => (1, Extend::Sign),
                0xbf => (2, Extend::Sign),
                _ => return Err(DecodeError::Unsupported { opcode: op2 }),
            };
            let r = modrm(&mut c, address_size)?;
            (
                Operation::Load {
                    dest: reg_of(r, false),
                    dest_size: opsize,
                    extend,
                },
                size,
            )
        }
        _ => return Err(DecodeError::Unsupported { opcode: op }),
    };
    Ok(Instruction {
        operation,
        size,
        length: c.pos as u8,
    })
}

/// The value a load leaves in a 64-bit register that held `old`: `value` (the `size` bytes
/// read) extended per `extend` to `dest_size`, merged as hardware does: 8- and 16-bit writes
/// keep the other bits, a 32-bit write zero-extends to 64 bits (SDM Vol. 1 §3.4.1.1).
pub fn merge_load(
    old: u64,
    dest: Register,
    dest_size: u8,
    size: u8,
    extend: Extend,
    value: u64,
) -> u64 {
    let bits = u32::from(size) * 8;
    let value = if bits >= 64 {
        value
    } else {
        value & ((1u64 << bits) - 1)
    };
    let extended = match extend {
        Extend::Sign if bits < 64 => {
            let shift = 64 - bits;
            ((value << shift) as i64 >> shift) as u64
        }
        _ => value,
    };
    match dest_size {
        1 if dest.high_byte => (old & !0xff00) | ((extended & 0xff) << 8),
        1 => (old & !0xff) | (extended & 0xff),
        2 => (old & !0xffff) | (extended & 0xffff),
        4 => extended & 0xffff_ffff,
        _ => extended,
    }
}

/// The `size` bytes a store takes from register value `reg_value`.
pub fn store_value(reg_value: u64, src: Register, size: u8) -> u64 {
    let v = if src.high_byte {
        reg_value >> 8
    } else {
        reg_value
    };
    match size {
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(n: u8) -> Register {
        Register {
            number: n,
            high_byte: false,
        }
    }

    #[test]
    fn mov_forms_in_each_mode() {
        // mov [bx+si], al (16-bit): 88 00
        let i = decode(&[0x88, 0x00], CpuMode::Bits16).unwrap();
        assert_eq!((i.size, i.length), (1, 2));
        assert_eq!(i.operation, Operation::StoreRegister { src: reg(0) });
        // mov ax, [0x1234] (16-bit, mod 0 rm 6 = disp16): 8b 06 34 12
        let i = decode(&[0x8b, 0x06, 0x34, 0x12], CpuMode::Bits16).unwrap();
        assert_eq!((i.size, i.length), (2, 4));
        // mov dword [0xfee000b0], 0 in 32-bit mode: c7 05 b0 00 e0 fe 00 00 00 00
        let i = decode(
            &[0xc7, 0x05, 0xb0, 0x00, 0xe0, 0xfe, 0, 0, 0, 0],
            CpuMode::Bits32,
        )
        .unwrap();
        assert_eq!((i.size, i.length), (4, 10));
        assert_eq!(i.operation, Operation::StoreImmediate { value: 0 });
        // mov r9, [rax+rcx*8+0x10] in 64-bit: 4c 8b 4c c8 10
        let i = decode(&[0x4c, 0x8b, 0x4c, 0xc8, 0x10], CpuMode::Bits64).unwrap();
        assert_eq!((i.size, i.length), (8, 5));
        assert_eq!(
            i.operation,
            Operation::Load {
                dest: reg(9),
                dest_size: 8,
                extend: Extend::None
            }
        );
        // movzx eax, byte [rdi]: 0f b6 07; movsx ecx, word [rbp+0]: 0f bf 4d 00
        let i = decode(&[0x0f, 0xb6, 0x07], CpuMode::Bits64).unwrap();
        assert_eq!((i.size, i.length), (1, 3));
        let i = decode(&[0x0f, 0xbf, 0x4d, 0x00], CpuMode::Bits64).unwrap();
        assert_eq!(
            (i.size, i.length, i.operation),
            (
                2,
                4,
                Operation::Load {
                    dest: reg(1),
                    dest_size: 4,
                    extend: Extend::Sign
                }
            )
        );
        // mov qword [rax], -1 (REX.W C7, imm32 sign-extended): 48 c7 00 ff ff ff ff
        let i = decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], CpuMode::Bits64).unwrap();
        assert_eq!(
            (i.size, i.length, i.operation),
            (8, 7, Operation::StoreImmediate { value: u64::MAX })
        );
        // 66-prefixed word store in 32-bit: 66 89 03 ; mov ah,[si] without REX: 8a 24
        let i = decode(&[0x66, 0x89, 0x03], CpuMode::Bits32).unwrap();
        assert_eq!((i.size, i.length), (2, 3));
        let i = decode(&[0x8a, 0x24], CpuMode::Bits16).unwrap();
        assert_eq!(
            i.operation,
            Operation::Load {
                dest: Register {
                    number: 0,
                    high_byte: true
                },
                dest_size: 1,
                extend: Extend::None
            }
        );
        // With a REX prefix, byte register 4 is SPL, not AH: 40 8a 24 24 (mov spl,[rsp]).
        let i = decode(&[0x40, 0x8a, 0x24, 0x24], CpuMode::Bits64).unwrap();
        assert_eq!(i.length, 4);
        assert!(
            matches!(i.operation, Operation::Load { dest, .. } if !dest.high_byte && dest.number == 4)
        );
        // mov eax, [moffs32] (a1) in 32-bit mode; 67-prefixed moffs16.
        assert_eq!(
            decode(&[0xa1, 1, 2, 3, 4], CpuMode::Bits32).unwrap().length,
            5
        );
        assert_eq!(
            decode(&[0x67, 0xa1, 1, 2], CpuMode::Bits32).unwrap().length,
            4
        );
        // SIB with base 5 and mod 0 carries a disp32: 8b 04 25 00 10 00 00
        assert_eq!(
            decode(&[0x8b, 0x04, 0x25, 0, 0x10, 0, 0], CpuMode::Bits64)
                .unwrap()
                .length,
            7
        );
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert_eq!(
            decode(&[0x01, 0x00], CpuMode::Bits32),
            Err(DecodeError::Unsupported { opcode: 0x01 })
        );
        assert_eq!(
            decode(&[0x89, 0xc0], CpuMode::Bits32),
            Err(DecodeError::RegisterOperand)
        );
        assert_eq!(
            decode(&[0x8b], CpuMode::Bits32),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0xf0, 0x89, 0x00], CpuMode::Bits32),
            Err(DecodeError::Lock)
        );
        assert_eq!(
            decode(&[0x66; 20], CpuMode::Bits32),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0xc7, 0x08, 0, 0, 0, 0], CpuMode::Bits32),
            Err(DecodeError::Unsupported { opcode: 0xc7 })
        );
    }

    #[test]
    fn loads_merge_like_hardware() {
        let old = 0x1122_3344_5566_7788;
        assert_eq!(
            merge_load(old, reg(0), 1, 1, Extend::None, 0xab),
            0x1122_3344_5566_77ab
        );
        let ah = Register {
            number: 0,
            high_byte: true,
        };
        assert_eq!(
            merge_load(old, ah, 1, 1, Extend::None, 0xab),
            0x1122_3344_5566_ab88
        );
        assert_eq!(
            merge_load(old, reg(0), 2, 2, Extend::None, 0xbeef),
            0x1122_3344_5566_beef
        );
        assert_eq!(
            merge_load(old, reg(0), 4, 4, Extend::None, 0xdead_beef),
            0xdead_beef
        );
        assert_eq!(
            merge_load(old, reg(0), 4, 1, Extend::Sign, 0x80),
            0xffff_ff80
        );
        assert_eq!(
            merge_load(old, reg(0), 8, 2, Extend::Sign, 0x8000),
            0xffff_ffff_ffff_8000
        );
        assert_eq!(
            merge_load(old, reg(0), 2, 1, Extend::Zero, 0xff),
            0x1122_3344_5566_00ff
        );
        assert_eq!(store_value(0x1234, ah, 1), 0x12);
        assert_eq!(store_value(0x1_2345_6789, reg(0), 4), 0x2345_6789);
    }
}
