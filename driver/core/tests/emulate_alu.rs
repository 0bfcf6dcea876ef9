//! The emulator's arithmetic against the host CPU: every ALU operation and size, on edge
//! values and seeded random operands, is run as the real instruction (inline asm on
//! registers) and through `decode_full` + `execute` on a memory operand; result and the six
//! status flags must match. The flags the SDM leaves undefined (AF after AND/OR/XOR/TEST;
//! OF/SF/AF/PF after BT*) are compared too: the emulator matches the host that was measured.

#![cfg(target_arch = "x86_64")]

mod emulate_env;

use std::arch::asm;

use emulate_env::TestEnv;
use rhax_core::emulate::{decode_full, execute, CpuMode, Flags};

/// The status flags (the host keeps IF and others of its own in what it pushes).
const ST: u64 = Flags::STATUS;

/// The undefined flags were measured on an AMD host (AMD EPYC): AND/OR/XOR/TEST leave
/// AF = 0 and BT/BTS/BTR/BTC leave OF/SF/AF/PF unchanged, and the emulator does the same.
/// On a host of another vendor only the flags the SDM defines are compared.
fn measured_vendor() -> bool {
    // `__cpuid` is safe from Rust 1.89 on and unsafe before (rust-version is 1.85).
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 0 exists on every x86_64 CPU; it reads no memory.
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    [r.ebx, r.edx, r.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163] // "AuthenticAMD"
}

/// Flags compared after a logic operation.
fn logic_flags() -> u64 {
    if measured_vendor() {
        ST
    } else {
        ST & !Flags::AF
    }
}

/// Flags compared after a bit test (CF defined, ZF unaffected).
fn bt_flags() -> u64 {
    if measured_vendor() {
        ST
    } else {
        Flags::CF | Flags::ZF
    }
}

/// The memory operand's address ([rbx]).
const ADDR: u64 = 0x100;

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
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

/// Runs `$ins a, b` (or `$ins a` when no b) on the host with RFLAGS = `f` before; returns
/// (a after, b after, RFLAGS after).
macro_rules! host {
    ($ins:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut a: u64 = $a;
        let mut b: u64 = $b;
        let mut f: u64 = $f;
        // SAFETY: register-only arithmetic; the push/popfq pair only moves RFLAGS through
        // the stack (no `nostack`), and the status flags and bit 1 are all `f` may set.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($ins, " {a:", $m, "}, {b:", $m, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) a,
                b = inout(reg) b,
                f = inout(reg) f,
            );
        }
        (a, b, f)
    }};
}

macro_rules! host1 {
    ($ins:literal, $m:literal, $a:expr, $f:expr) => {{
        let mut a: u64 = $a;
        let mut f: u64 = $f;
        // SAFETY: as in `host!`.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($ins, " {a:", $m, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) a,
                f = inout(reg) f,
            );
        }
        (a, f)
    }};
}

/// The two-operand instructions by name, dispatched to the right width.
fn host_two(name: &str, size: u8, a: u64, b: u64, f: u64) -> (u64, u64, u64) {
    macro_rules! widths {
        ($ins:literal) => {
            match size {
                1 => host!($ins, "l", a, b, f),
                2 => host!($ins, "x", a, b, f),
                4 => host!($ins, "e", a, b, f),
                _ => host!($ins, "r", a, b, f),
            }
        };
    }
    macro_rules! wide {
        ($ins:literal) => {
            match size {
                2 => host!($ins, "x", a, b, f),
                4 => host!($ins, "e", a, b, f),
                _ => host!($ins, "r", a, b, f),
            }
        };
    }
    match name {
        "add" => widths!("add"),
        "or" => widths!("or"),
        "adc" => widths!("adc"),
        "sbb" => widths!("sbb"),
        "and" => widths!("and"),
        "sub" => widths!("sub"),
        "xor" => widths!("xor"),
        "cmp" => widths!("cmp"),
        "test" => widths!("test"),
        "xadd" => widths!("xadd"),
        "bt" => wide!("bt"),
        "bts" => wide!("bts"),
        "btr" => wide!("btr"),
        "btc" => wide!("btc"),
        _ => unreachable!(),
    }
}

fn host_one(name: &str, size: u8, a: u64, f: u64) -> (u64, u64) {
    macro_rules! widths {
        ($ins:literal) => {
            match size {
                1 => host1!($ins, "l", a, f),
                2 => host1!($ins, "x", a, f),
                4 => host1!($ins, "e", a, f),
                _ => host1!($ins, "r", a, f),
            }
        };
    }
    match name {
        "inc" => widths!("inc"),
        "dec" => widths!("dec"),
        "neg" => widths!("neg"),
        "not" => widths!("not"),
        _ => unreachable!(),
    }
}

/// The size prefix bytes (64-bit mode) and whether the opcode is the byte form.
fn size_prefix(size: u8) -> Vec<u8> {
    match size {
        2 => vec![0x66],
        8 => vec![0x48],
        _ => vec![],
    }
}

/// Runs `bytes` (memory operand [rbx] = ADDR holding `m`, rcx = `r`, rax = `acc`) and
/// returns (memory after, rcx after, rax after, RFLAGS after).
fn emulate(bytes: &[u8], size: u8, m: u64, r: u64, acc: u64, f: u64) -> (u64, u64, u64, u64) {
    let d = decode_full(bytes, CpuMode::Bits64).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"));
    let mut env = TestEnv::new();
    env.gpr[3] = ADDR;
    env.gpr[1] = r;
    env.gpr[0] = acc;
    env.rflags = f;
    env.put(ADDR, &m.to_le_bytes()[..size as usize]);
    let fx = execute(&d, &mut env).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"));
    env.apply(&fx);
    let mut w = [0u8; 8];
    w[..size as usize].copy_from_slice(env.get(ADDR, size as usize));
    (u64::from_le_bytes(w), env.gpr[1], env.gpr[0], env.rflags)
}

/// Edge operands plus random ones.
fn operands(rng: &mut Rng, size: u8) -> Vec<(u64, u64)> {
    let m = mask(size);
    let sign = (m >> 1) + 1;
    let edges = [0, 1, 0xf, 0x10, sign - 1, sign, sign + 1, m - 1, m];
    let mut v = Vec::new();
    for &a in &edges {
        for &b in &edges {
            v.push((a, b));
        }
    }
    for _ in 0..400 {
        let (a, b) = (rng.next(), rng.next());
        // Mix in small values so carries and borrows near the edges show up.
        let a = if a & 0x100 != 0 { a & 0x1ff } else { a };
        v.push((a & m, b & m));
    }
    v
}

/// Random incoming status flags (bit 1 always set).
fn flags_in(rng: &mut Rng) -> u64 {
    0x2 | (rng.next() & Flags::STATUS)
}

#[test]
fn alu_two_operand_forms_match_the_host() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let ops = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"];
    let mut checked = 0;
    for (n, name) in ops.iter().enumerate() {
        for size in [1u8, 2, 4, 8] {
            let fm = if matches!(*name, "and" | "or" | "xor") {
                logic_flags()
            } else {
                ST
            };
            for (a, b) in operands(&mut rng, size) {
                let f = flags_in(&mut rng);
                let (want, _, wf) = host_two(name, size, a, b, f);
                // op [rbx], rcx: opcode n*8 + (byte ? 0 : 1), ModRM 00 001 011.
                let mut bytes = size_prefix(size);
                bytes.extend([(n as u8) << 3 | u8::from(size != 1), 0x0b]);
                let (got, _, _, gf) = emulate(&bytes, size, a, b, 0, f);
                let want = if *name == "cmp" { a } else { want & mask(size) };
                assert_eq!(
                    (got, gf & fm),
                    (want, wf & fm),
                    "{name} size {size} {a:#x}, {b:#x} flags in {f:#x}"
                );
                // The immediate group (81 /n with imm32 or 80 /n imm8) on the same values
                // when b fits the immediate.
                if size == 1 || b == (b as u32 as i32 as i64 as u64) & mask(size) {
                    let mut bytes = size_prefix(size);
                    let opc = if size == 1 { 0x80 } else { 0x81 };
                    bytes.extend([opc, (n as u8) << 3 | 3]);
                    let imm = b.to_le_bytes();
                    bytes.extend(&imm[..size.min(4) as usize]);
                    let (got, _, _, gf) = emulate(&bytes, size, a, 0, 0, f);
                    assert_eq!((got, gf & fm), (want, wf & fm));
                }
                // 83 /n ib: imm8 sign-extended to the operand size.
                if size != 1 && b == (b as u8 as i8 as i64 as u64) & mask(size) {
                    let mut bytes = size_prefix(size);
                    bytes.extend([0x83, (n as u8) << 3 | 3, b as u8]);
                    let (got, _, _, gf) = emulate(&bytes, size, a, 0, 0, f);
                    assert_eq!((got, gf & fm), (want, wf & fm), "83 /{n} size {size}");
                }
                checked += 1;
            }
        }
    }
    println!("emulate_alu: {checked} two-operand cases match the host");
}

#[test]
fn test_xadd_cmpxchg_match_the_host() {
    let mut rng = Rng(0x0bad_cafe_f00d_1234);
    for size in [1u8, 2, 4, 8] {
        for (a, b) in operands(&mut rng, size) {
            let f = flags_in(&mut rng);
            let byte = u8::from(size != 1);
            // test [rbx], rcx (84/85).
            let (_, _, wf) = host_two("test", size, a, b, f);
            let mut bytes = size_prefix(size);
            bytes.extend([0x84 | byte, 0x0b]);
            let (got, _, _, gf) = emulate(&bytes, size, a, b, 0, f);
            assert_eq!(
                (got, gf & logic_flags()),
                (a, wf & logic_flags()),
                "test size {size} {a:#x} {b:#x}"
            );
            // xadd [rbx], rcx: memory = a + b, rcx = a.
            let (ws, wr, wf) = host_two("xadd", size, a, b, f);
            let mut bytes = size_prefix(size);
            bytes.extend([0x0f, 0xc0 | byte, 0x0b]);
            let (got, rcx, _, gf) = emulate(&bytes, size, a, b, 0, f);
            assert_eq!(
                (got, rcx & mask(size), gf & ST),
                (ws & mask(size), wr & mask(size), wf & ST)
            );
            // cmpxchg [rbx], rcx with rax = b (equal half the time): flags as cmp rax, m.
            let acc = if rng.next() & 1 == 0 { a } else { b };
            let (_, _, wf) = host_two("cmp", size, acc, a, f);
            let mut bytes = size_prefix(size);
            bytes.extend([0x0f, 0xb0 | byte, 0x0b]);
            let (got, _, rax, gf) = emulate(&bytes, size, a, b, acc, f);
            assert_eq!(gf & ST, wf & ST);
            if acc == a {
                assert_eq!((got, rax), (b & mask(size), acc));
            } else {
                assert_eq!((got, rax & mask(size)), (a, a));
            }
        }
    }
}

#[test]
fn unary_forms_match_the_host() {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    for (name, opc, digit) in [
        ("inc", 0xfe, 0u8),
        ("dec", 0xfe, 1),
        ("not", 0xf6, 2),
        ("neg", 0xf6, 3),
    ] {
        for size in [1u8, 2, 4, 8] {
            for (a, _) in operands(&mut rng, size) {
                let f = flags_in(&mut rng);
                let (want, wf) = host_one(name, size, a, f);
                let mut bytes = size_prefix(size);
                bytes.extend([opc | u8::from(size != 1), digit << 3 | 3]);
                let (got, _, _, gf) = emulate(&bytes, size, a, 0, 0, f);
                assert_eq!(
                    (got, gf & ST),
                    (want & mask(size), wf & ST),
                    "{name} size {size} {a:#x} flags in {f:#x}"
                );
            }
        }
    }
}

#[test]
fn bit_tests_match_the_host() {
    let mut rng = Rng(0xb17b_17b1_7b17_b17b);
    for (n, name) in ["bt", "bts", "btr", "btc"].iter().enumerate() {
        for size in [2u8, 4, 8] {
            for (a, b) in operands(&mut rng, size) {
                // An in-operand offset: the host's register form takes it modulo the size.
                let off = b % (u64::from(size) * 8);
                let f = flags_in(&mut rng);
                let (want, _, wf) = host_two(name, size, a, off, f);
                let mut bytes = size_prefix(size);
                bytes.extend([0x0f, 0xa3 | (n as u8) << 3, 0x0b]);
                let (got, _, _, gf) = emulate(&bytes, size, a, off, 0, f);
                assert_eq!(
                    (got, gf & bt_flags()),
                    (want & mask(size), wf & bt_flags()),
                    "{name} size {size} {a:#x} bit {off}"
                );
                // 0F BA /4+n imm8.
                let mut bytes = size_prefix(size);
                bytes.extend([0x0f, 0xba, (4 + n as u8) << 3 | 3, off as u8]);
                let (got, _, _, gf) = emulate(&bytes, size, a, 0, 0, f);
                assert_eq!((got, gf & bt_flags()), (want & mask(size), wf & bt_flags()));
            }
        }
    }
}
