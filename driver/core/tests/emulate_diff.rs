//! The MMIO emulator's decoder against iced-x86 (an independent, exhaustively tested
//! decoder): seeded random instruction streams of every family the emulator handles, with
//! random legacy prefixes, REX, VEX, ModRM/SIB/displacement and immediates, in 16-, 32- and
//! 64-bit mode. Where iced decodes a family instruction with a memory operand, `decode_full`
//! must agree on length, memory operand, segment, access size, register operand, immediate,
//! REP and LOCK; where iced says invalid, `decode_full` must refuse.
//!
//! `EMULATE_DIFF_N` sets the number of streams (default 500,000; the test prints the count).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register as IReg};
use rhax_core::emulate::{
    decode_full, AluOp, BitOp, CpuMode, DecodeFailure, Decoded, Op, Rep, Seg, VecMove,
};

/// xorshift64* (Vigna): enough randomness for stream generation, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const ONE_BYTE: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0a, 0x0b, 0x10, 0x11, 0x12, 0x13, 0x18, 0x19, 0x1a, 0x1b,
    0x20, 0x21, 0x22, 0x23, 0x28, 0x29, 0x2a, 0x2b, 0x30, 0x31, 0x32, 0x33, 0x38, 0x39, 0x3a, 0x3b,
    0x63, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8e, 0x8f,
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf, 0xc6, 0xc7,
    0xf6, 0xf7, 0xfe, 0xff, 0x04, 0x05, 0xc4, 0xc5,
];
const TWO_BYTE: &[u8] = &[
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f,
    0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f,
    0xa3, 0xab, 0xb3, 0xbb, 0xba, 0xb0, 0xb1, 0xc0, 0xc1, 0xb6, 0xb7, 0xbe, 0xbf, 0xc3, 0x10, 0x11,
    0x28, 0x29, 0x6f, 0x7f, 0x6e, 0x7e, 0xd6, 0x38,
];
const PREFIXES: &[u8] = &[
    0x66, 0x67, 0xf2, 0xf3, 0xf0, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65,
];
const VEX_OPS: &[u8] = &[0x10, 0x11, 0x28, 0x29, 0x6f, 0x7f, 0x6e, 0x7e, 0xe7];

/// One random stream: prefixes, maybe REX, an opcode of the families, then ModRM (mostly a
/// memory form) and random bytes for SIB, displacement and immediate.
fn stream(rng: &mut Rng, mode: CpuMode, out: &mut [u8; 16]) {
    let mut v: Vec<u8> = Vec::with_capacity(16);
    // Mostly 0-2 prefixes, sometimes many.
    let np = match rng.below(10) {
        0..=3 => 0,
        4..=6 => 1,
        7 | 8 => 2,
        _ => rng.below(6),
    };
    for _ in 0..np {
        v.push(rng.pick(PREFIXES));
    }
    if mode == CpuMode::Bits64 && rng.below(3) == 0 {
        v.push(0x40 | rng.below(16) as u8);
    }
    let modrm = |rng: &mut Rng| {
        let b = rng.byte();
        if rng.below(8) == 0 {
            b
        } else {
            b & 0xbf | if rng.below(2) == 0 { 0 } else { 0x40 }
        }
    };
    match rng.below(10) {
        0..=4 => {
            let op = rng.pick(ONE_BYTE);
            v.push(op);
            if op == 0xc4 || op == 0xc5 {
                // A VEX with a mostly-plausible payload.
                let mut b1 = rng.byte();
                if rng.below(4) != 0 {
                    b1 |= 0xc0;
                }
                if op == 0xc4 {
                    if rng.below(4) != 0 {
                        b1 = b1 & 0xe0 | 1;
                    }
                    v.push(b1);
                    let mut b2 = rng.byte();
                    if rng.below(4) != 0 {
                        b2 |= 0x78;
                    }
                    v.push(b2);
                } else {
                    if rng.below(4) != 0 {
                        b1 |= 0x78;
                    }
                    v.push(b1);
                }
                v.push(rng.pick(VEX_OPS));
            }
        }
        5..=8 => {
            v.push(0x0f);
            let op = rng.pick(TWO_BYTE);
            v.push(op);
            if op == 0x38 {
                v.push(if rng.below(2) == 0 { 0xf0 } else { 0xf1 });
            }
        }
        _ => {
            // Anything at all.
            v.push(rng.byte());
        }
    }
    v.push(modrm(rng));
    while v.len() < 16 {
        v.push(rng.byte());
    }
    out.copy_from_slice(&v[..16]);
}

fn bits(mode: CpuMode) -> u32 {
    match mode {
        CpuMode::Bits16 => 16,
        CpuMode::Bits32 => 32,
        CpuMode::Bits64 => 64,
    }
}

fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

const SETCC: [Mnemonic; 16] = [
    Mnemonic::Seto,
    Mnemonic::Setno,
    Mnemonic::Setb,
    Mnemonic::Setae,
    Mnemonic::Sete,
    Mnemonic::Setne,
    Mnemonic::Setbe,
    Mnemonic::Seta,
    Mnemonic::Sets,
    Mnemonic::Setns,
    Mnemonic::Setp,
    Mnemonic::Setnp,
    Mnemonic::Setl,
    Mnemonic::Setge,
    Mnemonic::Setle,
    Mnemonic::Setg,
];
const CMOVCC: [Mnemonic; 16] = [
    Mnemonic::Cmovo,
    Mnemonic::Cmovno,
    Mnemonic::Cmovb,
    Mnemonic::Cmovae,
    Mnemonic::Cmove,
    Mnemonic::Cmovne,
    Mnemonic::Cmovbe,
    Mnemonic::Cmova,
    Mnemonic::Cmovs,
    Mnemonic::Cmovns,
    Mnemonic::Cmovp,
    Mnemonic::Cmovnp,
    Mnemonic::Cmovl,
    Mnemonic::Cmovge,
    Mnemonic::Cmovle,
    Mnemonic::Cmovg,
];

/// The family name of an iced instruction, `None` outside the emulator's families.
fn iced_family(i: &Instruction) -> Option<String> {
    use Mnemonic as M;
    let m = i.mnemonic();
    if let Some(cc) = SETCC.iter().position(|&x| x == m) {
        return Some(format!("setcc{cc}"));
    }
    if let Some(cc) = CMOVCC.iter().position(|&x| x == m) {
        return Some(format!("cmov{cc}"));
    }
    let s = match m {
        M::Mov | M::Movnti => "mov",
        M::Movzx => "movzx",
        M::Movsx => "movsx",
        M::Movsxd => "movsxd",
        // MOVSD/CMPSD are also SSE2 mnemonics (F2 0F 10/11, F2 0F C2): only the string
        // forms count.
        M::Movsd if i.code() != Code::Movsd_m32_m32 => return None,
        M::Cmpsd if i.code() != Code::Cmpsd_m32_m32 => return None,
        M::Movsb | M::Movsw | M::Movsd | M::Movsq => "movs",
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => "cmps",
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => "stos",
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => "lods",
        M::Scasb | M::Scasw | M::Scasd | M::Scasq => "scas",
        M::Add => "add",
        M::Or => "or",
        M::Adc => "adc",
        M::Sbb => "sbb",
        M::And => "and",
        M::Sub => "sub",
        M::Xor => "xor",
        M::Cmp => "cmp",
        M::Test => "test",
        M::Inc => "inc",
        M::Dec => "dec",
        M::Not => "not",
        M::Neg => "neg",
        M::Xchg => "xchg",
        M::Cmpxchg => "cmpxchg",
        M::Xadd => "xadd",
        M::Bt => "bt",
        M::Bts => "bts",
        M::Btr => "btr",
        M::Btc => "btc",
        M::Push => "push",
        M::Pop => "pop",
        M::Movbe => "movbe",
        M::Movdqa | M::Movaps | M::Movapd | M::Vmovdqa | M::Vmovaps | M::Vmovapd => "vec-a",
        M::Movdqu | M::Movups | M::Movupd | M::Vmovdqu | M::Vmovups | M::Vmovupd => "vec-u",
        M::Movd | M::Movq => "vec-s",
        _ => return None,
    };
    Some(s.to_string())
}

fn my_family(op: Op) -> String {
    let alu = |a: AluOp| format!("{a:?}").to_lowercase();
    let bit = |b: BitOp| format!("{b:?}").to_lowercase();
    match op {
        Op::MovStore | Op::MovLoad | Op::MovImm | Op::MovFromSreg | Op::MovToSreg => "mov".into(),
        Op::Movzx => "movzx".into(),
        Op::Movsx => "movsx".into(),
        Op::Movsxd => "movsxd".into(),
        Op::Movs => "movs".into(),
        Op::Cmps => "cmps".into(),
        Op::Stos => "stos".into(),
        Op::Lods => "lods".into(),
        Op::Scas => "scas".into(),
        Op::AluStore(a) | Op::AluLoad(a) | Op::AluImm(a) => alu(a),
        Op::TestReg | Op::TestImm => "test".into(),
        Op::Inc => "inc".into(),
        Op::Dec => "dec".into(),
        Op::Not => "not".into(),
        Op::Neg => "neg".into(),
        Op::Xchg => "xchg".into(),
        Op::Cmpxchg => "cmpxchg".into(),
        Op::Xadd => "xadd".into(),
        Op::BitReg(b) | Op::BitImm(b) => bit(b),
        Op::Setcc(cc) => format!("setcc{cc}"),
        Op::Cmovcc(cc) => format!("cmov{cc}"),
        Op::PushMem => "push".into(),
        Op::PopMem => "pop".into(),
        Op::MovbeLoad | Op::MovbeStore => "movbe".into(),
        Op::VecLoad(VecMove::Aligned) | Op::VecStore(VecMove::Aligned) => "vec-a".into(),
        Op::VecLoad(VecMove::Unaligned) | Op::VecStore(VecMove::Unaligned) => "vec-u".into(),
        Op::VecLoad(VecMove::Scalar) | Op::VecStore(VecMove::Scalar) => "vec-s".into(),
    }
}

/// Whether memory is the destination (operand 0) in the emulator's view.
fn my_store(op: Op) -> Option<bool> {
    Some(match op {
        Op::MovLoad
        | Op::MovToSreg
        | Op::Movzx
        | Op::Movsx
        | Op::Movsxd
        | Op::AluLoad(_)
        | Op::Cmovcc(_)
        | Op::MovbeLoad
        | Op::VecLoad(_) => false,
        Op::Movs | Op::Cmps | Op::Stos | Op::Lods | Op::Scas => return None,
        _ => true,
    })
}

fn is_mem(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Memory
            | OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI
    )
}

/// (number, high byte) of an iced register in the emulator's numbering.
fn reg_number(r: IReg) -> (u8, bool) {
    match r {
        IReg::AH | IReg::CH | IReg::DH | IReg::BH => ((r as u32 - IReg::AH as u32) as u8, true),
        _ if r.is_segment_register() => ((r as u32 - IReg::ES as u32) as u8, false),
        _ if r.is_xmm() || r.is_ymm() => (r.number() as u8, false),
        _ if r.is_gpr() => ((r.full_register() as u32 - IReg::RAX as u32) as u8, false),
        _ => (0xff, false),
    }
}

fn seg_of(r: IReg) -> Option<Seg> {
    Some(match r {
        IReg::ES => Seg::Es,
        IReg::CS => Seg::Cs,
        IReg::SS => Seg::Ss,
        IReg::DS => Seg::Ds,
        IReg::FS => Seg::Fs,
        IReg::GS => Seg::Gs,
        _ => return None,
    })
}

/// Compares one accepted instruction; `Err(why)` on a disagreement.
fn compare(mode: CpuMode, i: &Instruction, d: &Decoded) -> Result<(), String> {
    let fam = iced_family(i).ok_or("iced: not a family instruction")?;
    if fam != my_family(d.op) {
        return Err(format!("family iced {fam} mine {}", my_family(d.op)));
    }
    if usize::from(d.length) != i.len() {
        return Err(format!("length iced {} mine {}", i.len(), d.length));
    }
    let kinds: Vec<OpKind> = i.op_kinds().collect();
    if let Some(store) = my_store(d.op) {
        if is_mem(kinds[0]) != store {
            return Err("direction".into());
        }
    }
    let mem_at = kinds
        .iter()
        .position(|&k| is_mem(k))
        .ok_or("iced: no memory")?;
    if i.memory_size().size() != usize::from(d.size) {
        return Err(format!(
            "size iced {} mine {}",
            i.memory_size().size(),
            d.size
        ));
    }
    // The segment, with 64-bit mode's rule (only FS/GS overrides count).
    let base = i.memory_base();
    let mut iseg = seg_of(i.memory_segment()).ok_or("iced segment")?;
    if mode == CpuMode::Bits64 && !matches!(iseg, Seg::Fs | Seg::Gs) {
        iseg = if matches!(base, IReg::RSP | IReg::RBP | IReg::ESP | IReg::EBP) {
            Seg::Ss
        } else {
            Seg::Ds
        };
    }
    let string_src = matches!(
        kinds[mem_at],
        OpKind::MemorySegSI | OpKind::MemorySegESI | OpKind::MemorySegRSI
    );
    if (kinds[mem_at] == OpKind::Memory || string_src) && iseg != d.seg {
        return Err(format!("segment iced {iseg:?} mine {:?}", d.seg));
    }
    let amask = mask(d.address_size);
    match kinds[mem_at] {
        OpKind::Memory => {
            let m = d.mem.ok_or("mine: no memory operand")?;
            let rip = matches!(base, IReg::RIP | IReg::EIP);
            if rip != m.rip_relative {
                return Err("rip-relative".into());
            }
            let ibase = if base == IReg::None || rip {
                None
            } else {
                Some(reg_number(base).0)
            };
            if ibase != m.base {
                return Err(format!("base iced {base:?} mine {:?}", m.base));
            }
            let idx = i.memory_index();
            let iidx = (idx != IReg::None).then(|| reg_number(idx).0);
            if iidx != m.index {
                return Err(format!("index iced {idx:?} mine {:?}", m.index));
            }
            if iidx.is_some() && i.memory_index_scale() != u32::from(m.scale) {
                return Err("scale".into());
            }
            let mine = if m.rip_relative {
                m.disp.wrapping_add(u64::from(d.length))
            } else {
                m.disp
            };
            if mine & amask != i.memory_displacement64() & amask {
                return Err(format!(
                    "disp iced {:#x} mine {:#x}",
                    i.memory_displacement64(),
                    mine
                ));
            }
            // The address size the operand is computed with.
            let ias = match base {
                IReg::None => match idx {
                    IReg::None => None,
                    r => Some(r.size()),
                },
                r => Some(r.size()),
            };
            if let Some(s) = ias {
                if !rip && s != usize::from(d.address_size) {
                    return Err("address size".into());
                }
            }
        }
        k => {
            let s = match k {
                OpKind::MemorySegSI | OpKind::MemoryESDI => 2,
                OpKind::MemorySegESI | OpKind::MemoryESEDI => 4,
                _ => 8,
            };
            if s != d.address_size || d.mem.is_some() {
                return Err("string address size".into());
            }
            let irep = i.has_rep_prefix() || i.has_repne_prefix();
            if irep != (d.rep != Rep::None) {
                return Err("rep".into());
            }
            if matches!(d.op, Op::Cmps | Op::Scas) && (d.rep == Rep::Repne) != i.has_repne_prefix()
            {
                return Err("repne".into());
            }
        }
    }
    // The register operand (ModRM.reg or the implicit accumulator iced lists).
    let ireg = kinds
        .iter()
        .enumerate()
        .find(|(_, &k)| k == OpKind::Register)
        .map(|(n, _)| reg_number(i.op_register(n as u32)));
    let mreg = d.reg.map(|r| (r.number, r.high_byte));
    if ireg != mreg {
        return Err(format!("register iced {ireg:?} mine {mreg:?}"));
    }
    let imm = kinds.iter().position(|k| {
        matches!(
            k,
            OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
        )
    });
    if let Some(n) = imm {
        let im = mask(d.size.min(8));
        if i.immediate(n as u32) & im != d.imm & im {
            return Err(format!(
                "imm iced {:#x} mine {:#x}",
                i.immediate(n as u32),
                d.imm
            ));
        }
    }
    if i.has_lock_prefix() != d.lock {
        return Err("lock".into());
    }
    Ok(())
}

/// Whether iced's instruction is one the emulator must accept: a family member with memory,
/// and no MMX register (MOVD/MOVQ mm forms are outside the emulator).
fn must_accept(i: &Instruction) -> bool {
    if iced_family(i).is_none() {
        return false;
    }
    let kinds: Vec<OpKind> = i.op_kinds().collect();
    if !kinds.iter().any(|&k| is_mem(k)) {
        return false;
    }
    // PUSH/POP of memory only (not PUSH imm or segment registers).
    if matches!(i.mnemonic(), Mnemonic::Push | Mnemonic::Pop) && kinds[0] != OpKind::Memory {
        return false;
    }
    !kinds.iter().enumerate().any(|(n, &k)| {
        k == OpKind::Register && {
            let r = i.op_register(n as u32);
            r.is_mm() || r.is_cr() || r.is_dr() || r.is_tr()
        }
    })
}

#[test]
fn decoder_agrees_with_iced() {
    let n: u64 = std::env::var("EMULATE_DIFF_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut compared = 0u64;
    let mut refused_invalid = 0u64;
    let mut mismatches = Vec::new();
    let mut buf = [0u8; 16];
    let mut families = std::collections::BTreeMap::new();
    let seed = std::env::var("EMULATE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    rng.0 = seed | 1;
    for k in 0..n {
        let mode = [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64][(k % 3) as usize];
        stream(&mut rng, mode, &mut buf);
        let mut dec = Decoder::with_ip(bits(mode), &buf, 0, DecoderOptions::NONE);
        let i = dec.decode();
        let mine = decode_full(&buf, mode);
        let verdict = if i.is_invalid() {
            match mine {
                Ok(_) => Err("iced: invalid, mine accepted".to_string()),
                Err(_) => {
                    refused_invalid += 1;
                    Ok(())
                }
            }
        } else {
            match mine {
                Ok(d) => {
                    compared += 1;
                    *families.entry(my_family(d.op)).or_insert(0u64) += 1;
                    compare(mode, &i, &d)
                }
                Err(e) if must_accept(&i) => Err(format!("mine refused: {e:?}")),
                Err(
                    DecodeFailure::Unsupported { .. }
                    | DecodeFailure::RegisterOperand
                    | DecodeFailure::Truncated,
                ) => Ok(()),
                Err(e) => Err(format!("mine {e:?}, iced valid")),
            }
        };
        if let Err(why) = verdict {
            if mismatches.len() < 40 {
                mismatches.push(format!(
                    "{:?} {:02x?} iced `{}` ({:?}): {why}",
                    mode,
                    &buf[..i.len().max(1)],
                    i,
                    i.code()
                ));
            }
            if mismatches.len() >= 40 {
                break;
            }
        }
    }
    println!(
        "emulate_diff: {n} streams, {compared} instructions compared, {refused_invalid} invalid refused, {} mismatches",
        mismatches.len()
    );
    println!("  per family: {families:?}");
    for m in &mismatches {
        println!("  {m}");
    }
    assert!(mismatches.is_empty());
    assert!(compared > n / 4, "too few family instructions generated");
    // Every family must have been exercised.
    assert!(
        families.len() >= 60,
        "families compared: {}",
        families.len()
    );
}
