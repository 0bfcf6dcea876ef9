//! The `decoder` harness: `rhax_core::emulate::decode` on arbitrary bytes in every mode.
//!
//! Oracles:
//! 1. no panic, and a decoded length within the bytes given and at most 15;
//! 2. iced-x86 as the reference: when iced decodes the same bytes as MOV/MOVZX/MOVSX with a
//!    memory operand and a general-purpose register or immediate as the other operand, rhax
//!    must decode it too, with the same length, access size, direction, register (number and
//!    AH-BH form), destination size, extension and immediate; when rhax decodes something,
//!    iced must see such a MOV;
//! 3. `merge_load` and `store_value` agree with a plain reference (SDM Vol. 1 §3.4.1.1:
//!    8/16-bit writes keep the other bits, 32-bit writes zero-extend).

use iced_x86::{Decoder, DecoderOptions, Instruction as Iced, Mnemonic, OpKind, Register as R};
use rhax_core::emulate::{
    decode, merge_load, store_value, CpuMode, DecodeError, Extend, Operation, Register,
};

const MODES: [(CpuMode, u32); 3] = [
    (CpuMode::Bits16, 16),
    (CpuMode::Bits32, 32),
    (CpuMode::Bits64, 64),
];

/// The rhax view of an iced register operand: number 0-15 and AH-BH.
fn reg(r: R) -> Option<(Register, u8)> {
    if !r.is_gpr() {
        return None;
    }
    let high_byte = matches!(r, R::AH | R::CH | R::DH | R::BH);
    let number = (r.full_register().number()) as u8;
    Some((Register { number, high_byte }, r.size() as u8))
}

/// What iced says a memory MOV does, in rhax's terms (`None`: not a memory MOV rhax decodes).
fn expected(i: &Iced) -> Option<(Operation, u8)> {
    let extend = match i.mnemonic() {
        Mnemonic::Mov => Extend::None,
        Mnemonic::Movzx => Extend::Zero,
        Mnemonic::Movsx => Extend::Sign,
        _ => return None,
    };
    if i.op_count() != 2 {
        return None;
    }
    let size = i.memory_size().size() as u8;
    match (i.op0_kind(), i.op1_kind()) {
        (OpKind::Register, OpKind::Memory) => {
            let (dest, dest_size) = reg(i.op0_register())?;
            Some((
                Operation::Load {
                    dest,
                    dest_size,
                    extend,
                },
                size,
            ))
        }
        (OpKind::Memory, OpKind::Register) => {
            let (src, _) = reg(i.op1_register())?;
            Some((Operation::StoreRegister { src }, size))
        }
        (
            OpKind::Memory,
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate32to64,
        ) => Some((
            Operation::StoreImmediate {
                value: i.immediate(1),
            },
            size,
        )),
        _ => None,
    }
}

fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    }
}

/// Reference for `merge_load`.
fn merge_ref(old: u64, dest: Register, dest_size: u8, size: u8, extend: Extend, value: u64) -> u64 {
    let v = value & mask(size);
    let ext = match extend {
        Extend::Sign => {
            let sign = 1u64 << (8 * u32::from(size.min(8)) - 1);
            if v & sign != 0 {
                v | !mask(size)
            } else {
                v
            }
        }
        _ => v,
    };
    match dest_size {
        1 if dest.high_byte => (old & !0xff00) | ((ext & 0xff) << 8),
        1 => (old & !0xff) | (ext & 0xff),
        2 => (old & !0xffff) | (ext & 0xffff),
        4 => ext & 0xffff_ffff,
        _ => ext,
    }
}

/// Runs one input: `data[0]` picks the mode, `data[1]` how many bytes the decoder sees (the
/// fetch may stop early at a non-RAM page), `data[2..10]` an old register value and
/// `data[10..18]` a loaded value for the merge check, the rest are the instruction bytes.
pub fn run(data: &[u8]) {
    if data.len() < 18 {
        return;
    }
    let (mode, bits) = MODES[usize::from(data[0]) % 3];
    let old = u64::from_le_bytes(data[2..10].try_into().expect("8 bytes"));
    let loaded = u64::from_le_bytes(data[10..18].try_into().expect("8 bytes"));
    let bytes = &data[18..];
    let cut = usize::from(data[1]).min(bytes.len());
    let seen = &bytes[..cut];
    let ours = decode(seen, mode);
    if let Ok(insn) = &ours {
        assert!(
            usize::from(insn.length) <= seen.len() && insn.length <= 15 && insn.length > 0,
            "length {} of {} bytes",
            insn.length,
            seen.len()
        );
        assert!(matches!(insn.size, 1 | 2 | 4 | 8), "size {}", insn.size);
        match insn.operation {
            Operation::Load {
                dest,
                dest_size,
                extend,
            } => {
                assert!(dest.number < 16 && (!dest.high_byte || dest.number < 4));
                assert_eq!(
                    merge_load(old, dest, dest_size, insn.size, extend, loaded),
                    merge_ref(old, dest, dest_size, insn.size, extend, loaded),
                    "merge_load {dest:?} {dest_size} {} {extend:?}",
                    insn.size
                );
            }
            Operation::StoreRegister { src } => {
                assert!(src.number < 16 && (!src.high_byte || src.number < 4));
                let v = if src.high_byte { old >> 8 } else { old };
                assert_eq!(store_value(old, src, insn.size), v & mask(insn.size));
            }
            Operation::StoreImmediate { .. } => {}
        }
    }
    let mut d = Decoder::new(bits, seen, DecoderOptions::NONE);
    let theirs = d.decode();
    let want = if theirs.is_invalid() {
        None
    } else {
        expected(&theirs)
    };
    match (&ours, want) {
        (Ok(insn), Some((op, size))) => {
            assert_eq!(
                usize::from(insn.length),
                theirs.len(),
                "length of {seen:02x?} ({bits}-bit): iced {theirs}"
            );
            assert_eq!(
                insn.size, size,
                "access size of {seen:02x?} ({bits}-bit): iced {theirs}"
            );
            let op = match op {
                Operation::StoreImmediate { value } => Operation::StoreImmediate {
                    value: value & mask(size),
                },
                other => other,
            };
            let mine = match insn.operation {
                Operation::StoreImmediate { value } => Operation::StoreImmediate {
                    value: value & mask(size),
                },
                other => other,
            };
            assert_eq!(
                mine, op,
                "operands of {seen:02x?} ({bits}-bit): iced {theirs}"
            );
        }
        (Ok(insn), None) => panic!(
            "rhax decodes {seen:02x?} ({bits}-bit) as {insn:?}, iced as {theirs} (invalid: {})",
            theirs.is_invalid()
        ),
        (Err(e), Some(_)) => {
            panic!("rhax refuses {seen:02x?} ({bits}-bit) with {e:?}, iced decodes {theirs}")
        }
        (Err(DecodeError::Truncated), None) | (Err(_), None) => {}
    }
}
