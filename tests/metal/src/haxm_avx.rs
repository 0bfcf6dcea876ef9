//! `haxm-avx`: a guest's AVX state (YMM0-15, 256 bits each) survives 10,000 exits, and XSETBV
//! faults as the SDM says (issue 11 item 3).
//!
//! The host first turns on XSAVE as an OS does (CR4.OSXSAVE, XCR0 = what the CPU supports of
//! x87|SSE|AVX|AVX-512), so rhax switches the guest's state with XSAVE/XRSTOR and shows XSAVE
//! and AVX in the guest's CPUID. A 64-bit guest then:
//!
//! * sets CR4.OSXSAVE and tries five XSETBVs the SDM refuses with #GP(0) (ECX = 1, x87 clear,
//!   AVX without SSE, AVX-512 bits partial, a reserved bit of EDX); its #GP handler counts
//!   them and skips the instruction;
//! * sets XCR0 = x87|SSE|AVX, loads YMM0-15 with `vmovdqu` from distinct patterns;
//! * loops [`ITERATIONS`] times over `vpaddd ymm14, ymm14, ymm15` (AVX2; `vxorps` on a CPU
//!   with AVX only) and CPUID (an exit handled in the kernel);
//! * stores YMM0-15 with `vmovdqu`, OUTs the #GP count and halts.
//!
//! The host checks the #GP count, each register bit for bit (YMM14 = pattern 14 + N x
//! pattern 15 in each 32-bit lane, or pattern 14 XOR N x pattern 15), and that its own XCR0
//! is back after every RUN. On a CPU model without XSAVE or AVX the scenario says so and
//! passes without running the guest.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rhax::api::{IoDirection, RamFlags, SegmentDesc, VcpuState};
use rhax::{Exit, System};

use crate::arch::{cpuid, cr4, write_cr4, xgetbv0, xsetbv0};
use crate::haxm::{e, qemu_msrs, qemu_set, real_mode_at, Ram, R, V};
use crate::hv::Shell;
use crate::scenarios::Ctx;

/// CPUID exits in the guest's loop.
pub const ITERATIONS: u32 = 10_000;

const RAM_BYTES: u64 = 0x2_0000;
const GDT: u64 = 0x500;
const GP_HANDLER: u64 = 0x800;
const CODE: u64 = 0x1000;
const IDT: u64 = 0x2000;
/// YMM0-15 patterns, 32 bytes each.
const YMM_PATTERNS: u64 = 0x3000;
/// YMM0-15 as stored after the loop.
const YMM_OUT: u64 = 0x3400;
/// #GP count (the handler increments this qword).
const GP_COUNT: u64 = 0x4000;
const PML4: u64 = 0x1_0000;
const PORT_RESULT: u16 = 0x85;
/// The XSETBVs the guest expects #GP(0) for: (ECX, EDX:EAX).
const BAD_XSETBV: [(u32, u64); 5] = [(1, 7), (0, 6), (0, 5), (0, 0x27), (0, 1 << 32 | 7)];

/// `[disp32]` operand with ModRM.reg = `reg`.
fn abs(reg: u8, disp: u64) -> [u8; 6] {
    let d = (disp as u32).to_le_bytes();
    [(reg & 7) << 3 | 4, 0x25, d[0], d[1], d[2], d[3]]
}

/// YMM`n`'s pattern: 32 distinct bytes per register.
fn ymm_pattern(n: u8) -> [u8; 32] {
    core::array::from_fn(|i| (n.wrapping_mul(32).wrapping_add(i as u8)) ^ 0x5A)
}

/// What YMM14 holds after the loop: each 32-bit lane of pattern 14 plus ITERATIONS times
/// that lane of pattern 15, wrapping (VPADDD, SDM Vol. 2B PADDD); with VXORPS, pattern 14
/// XORed ITERATIONS times with pattern 15.
fn ymm14_expected(avx2: bool) -> [u8; 32] {
    let (a, b) = (ymm_pattern(14), ymm_pattern(15));
    if !avx2 {
        let odd = ITERATIONS % 2 == 1;
        return core::array::from_fn(|i| if odd { a[i] ^ b[i] } else { a[i] });
    }
    let mut out = [0u8; 32];
    for lane in 0..8 {
        let r = lane * 4..lane * 4 + 4;
        let x = u32::from_le_bytes(a[r.clone()].try_into().unwrap_or([0; 4]));
        let y = u32::from_le_bytes(b[r.clone()].try_into().unwrap_or([0; 4]));
        out[r].copy_from_slice(&x.wrapping_add(y.wrapping_mul(ITERATIONS)).to_le_bytes());
    }
    out
}

/// `vmovdqu ymmN, [addr]` (load) or `vmovdqu [addr], ymmN` (store): VEX.256.F3.0F 6F / 7F,
/// two-byte VEX with R̄ selecting YMM8-15 (SDM Vol. 2A §2.3.5).
fn vmovdqu(c: &mut Vec<u8>, n: u8, addr: u64, store: bool) {
    let r_bar = if n >= 8 { 0 } else { 0x80 };
    c.extend_from_slice(&[0xC5, r_bar | 0x7E, if store { 0x7F } else { 0x6F }]);
    c.extend_from_slice(&abs(n, addr));
}

fn mov_imm32(c: &mut Vec<u8>, opcode: u8, imm: u32) {
    c.push(opcode);
    c.extend_from_slice(&imm.to_le_bytes());
}

fn guest_code(avx2: bool) -> Vec<u8> {
    let mut c = Vec::new();
    // mov rax, cr4; or eax, 0x40000 (OSXSAVE); mov cr4, rax
    c.extend_from_slice(&[
        0x0F, 0x20, 0xE0, 0x0D, 0x00, 0x00, 0x04, 0x00, 0x0F, 0x22, 0xE0,
    ]);
    for (ecx, value) in BAD_XSETBV {
        mov_imm32(&mut c, 0xB9, ecx); // mov ecx, imm32
        mov_imm32(&mut c, 0xB8, value as u32); // mov eax, imm32
        mov_imm32(&mut c, 0xBA, (value >> 32) as u32); // mov edx, imm32
        c.extend_from_slice(&[0x0F, 0x01, 0xD1]); // xsetbv (#GP: the handler skips it)
    }
    c.extend_from_slice(&[0x31, 0xC9, 0x31, 0xD2]); // xor ecx, ecx; xor edx, edx
    mov_imm32(&mut c, 0xB8, 7); // mov eax, 7
    c.extend_from_slice(&[0x0F, 0x01, 0xD1]); // xsetbv: XCR0 = x87|SSE|AVX
    for n in 0..16u8 {
        vmovdqu(&mut c, n, YMM_PATTERNS + 32 * u64::from(n), false);
    }
    c.extend_from_slice(&[0x41, 0xBF]); // mov r15d, ITERATIONS
    c.extend_from_slice(&ITERATIONS.to_le_bytes());
    let top = c.len();
    if avx2 {
        c.extend_from_slice(&[0xC4, 0x41, 0x0D, 0xFE, 0xF7]); // vpaddd ymm14, ymm14, ymm15
    } else {
        c.extend_from_slice(&[0xC4, 0x41, 0x0C, 0x57, 0xF7]); // vxorps ymm14, ymm14, ymm15
    }
    c.extend_from_slice(&[0x31, 0xC0, 0x0F, 0xA2]); // xor eax, eax; cpuid
    c.extend_from_slice(&[0x41, 0xFF, 0xCF]); // dec r15d
    let rel = top as i64 - (c.len() as i64 + 6);
    c.extend_from_slice(&[0x0F, 0x85]); // jnz top (rel32)
    c.extend_from_slice(&(rel as i32).to_le_bytes());
    for n in 0..16u8 {
        vmovdqu(&mut c, n, YMM_OUT + 32 * u64::from(n), true);
    }
    // mov eax, [GP_COUNT]; out 0x85, eax; hlt
    c.push(0x8B);
    c.extend_from_slice(&abs(0, GP_COUNT));
    c.extend_from_slice(&[0xE7, PORT_RESULT as u8, 0xF4]);
    c
}

fn write_guest(ram: &Ram, avx2: bool) -> R<()> {
    ram.write(GDT + 8, &0x00AF_9B00_0000_FFFFu64.to_le_bytes());
    ram.write(GDT + 16, &0x00CF_9300_0000_FFFFu64.to_le_bytes());
    // #GP handler: add rsp, 8 (the error code); add qword [rsp], 3 (past XSETBV);
    // inc qword [GP_COUNT]; iretq.
    let mut h = alloc::vec![0x48, 0x83, 0xC4, 0x08, 0x48, 0x83, 0x04, 0x24, 0x03, 0x48, 0xFF];
    h.extend_from_slice(&abs(0, GP_COUNT));
    h.extend_from_slice(&[0x48, 0xCF]);
    ram.write(GP_HANDLER, &h);
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(GP_HANDLER as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    gate[5] = 0x8E;
    gate[6..8].copy_from_slice(&((GP_HANDLER >> 16) as u16).to_le_bytes());
    ram.write(IDT + 16 * 13, &gate);
    let code = guest_code(avx2);
    if CODE + code.len() as u64 > IDT {
        return Err(format!("guest code too long ({} bytes)", code.len()));
    }
    ram.write(CODE, &code);
    for n in 0..16u8 {
        ram.write(YMM_PATTERNS + 32 * u64::from(n), &ymm_pattern(n));
    }
    ram.write(PML4, &(0x11000u64 | 3).to_le_bytes());
    ram.write(0x11000, &(0x12000u64 | 3).to_le_bytes());
    ram.write(0x12000, &0x83u64.to_le_bytes());
    Ok(())
}

fn long_mode_state() -> VcpuState {
    let mut s = real_mode_at(CODE);
    s.cs = SegmentDesc::new(0x08, 0, 0xffff_ffff, 0xA09B);
    for seg in [&mut s.ds, &mut s.es, &mut s.ss, &mut s.fs, &mut s.gs] {
        *seg = SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xC093);
    }
    s.gdt = SegmentDesc::new(0, GDT, 0x17, 0);
    s.idt = SegmentDesc::new(0, IDT, 0xfff, 0);
    s.regs[4] = 0x8000;
    s.rflags = 2;
    s.cr0 = 0x8000_0013;
    s.cr4 = 0x620;
    s.cr3 = PML4;
    s
}

/// Turns XSAVE on in the host as an OS does; returns the previous CR4 and the XCR0 set, or
/// `None` when the CPU lacks XSAVE or AVX.
fn host_xsave_on() -> Option<(u64, u64)> {
    let (_, _, ecx1, _) = cpuid(1, 0);
    if ecx1 & (1 << 26) == 0 || ecx1 & (1 << 28) == 0 {
        return None;
    }
    let (eax_d, _, _, edx_d) = cpuid(0xd, 0);
    let supported = u64::from(eax_d) | (u64::from(edx_d) << 32);
    let xcr0 = supported & if supported & 0xe0 == 0xe0 { 0xe7 } else { 7 };
    let old = cr4();
    // SAFETY: CPUID says XSAVE exists: CR4.OSXSAVE may be set; PAE/SSE stay as they are.
    unsafe { write_cr4(old | (1 << 18)) };
    // SAFETY: OSXSAVE now set; x87|SSE|AVX (and AVX-512 whole) as supported: XSETBV accepts.
    unsafe { xsetbv0(xcr0) };
    Some((old, xcr0))
}

/// One RUN that is not INTERRUPT; checks the host's XCR0 after each.
fn run_until<T>(v: &mut V<'_>, xcr0: u64, mut f: impl FnMut(Exit<'_>) -> R<Option<T>>) -> R<T> {
    for _ in 0..100_000 {
        let exit = v.run().map_err(e("RUN"))?;
        // SAFETY: OSXSAVE is on (host_xsave_on).
        let now = unsafe { xgetbv0() };
        if now != xcr0 {
            return Err(format!("host XCR0 {now:#x} after RUN, {xcr0:#x} before"));
        }
        if let Exit::Interrupt = exit {
            continue;
        }
        if let Some(t) = f(exit)? {
            return Ok(t);
        }
    }
    Err(String::from("100000 RUNs without the expected exit"))
}

/// See the module documentation.
pub fn haxm_avx(_: &Ctx) -> R<String> {
    let (_, _, ecx1, _) = cpuid(1, 0);
    let (_, ebx7, _, _) = cpuid(7, 0);
    let (eax_d, ebx_d, ecx_d, _) = cpuid(0xd, 0);
    crate::println!(
        "haxm-avx: host CPUID.1:ECX {ecx1:#010x} 7:EBX {ebx7:#010x} 0xD.0 {eax_d:#x}/{ebx_d}/{ecx_d}"
    );
    let Some((old_cr4, xcr0)) = host_xsave_on() else {
        return Ok(String::from("skipped: this CPU model has no XSAVE/AVX"));
    };
    let r = guest(xcr0, ebx7 & (1 << 5) != 0);
    // SAFETY: back to the CR4 the kernel had (XCR0 stays set but unused without OSXSAVE).
    unsafe { write_cr4(old_cr4) };
    r
}

fn guest(xcr0: u64, avx2: bool) -> R<String> {
    let ram = Ram::zeroed(RAM_BYTES)?;
    write_guest(&ram, avx2)?;
    let shell = Shell::new()?;
    let sys = System::open(shell.transport()).map_err(e("open \\\\.\\HAX"))?;
    let vm = sys.create_vm().map_err(e("CREATE_VM"))?;
    // SAFETY: kernel pages owned by `ram`, which outlives the VM, and no Rust object lives in
    // them.
    unsafe { vm.add_ramblock(ram.addr, RAM_BYTES) }.map_err(e("ADD_RAMBLOCK"))?;
    vm.set_ram(0, RAM_BYTES as u32, ram.addr, RamFlags::empty())
        .map_err(e("SET_RAM"))?;
    let mut v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
    let table = v.get_cpuid().map_err(e("GET_CPUID"))?;
    let leaf1 = table
        .entries()
        .iter()
        .find(|x| x.function == 1)
        .map_or(0, |x| x.ecx);
    if leaf1 & (1 << 28) == 0 {
        return Err(format!(
            "AVX not shown to the guest (leaf 1 ECX {leaf1:#x})"
        ));
    }
    let mut msrs = qemu_msrs();
    for m in &mut msrs {
        if m.entry == 0xC000_0080 {
            m.value = 0x500;
        }
    }
    qemu_set(&v, &long_mode_state(), &msrs)?;
    let gps = run_until(&mut v, xcr0, |exit| match exit {
        Exit::Io {
            direction: IoDirection::Out,
            size: 4,
            port: PORT_RESULT,
            data,
            ..
        } => Ok(Some(u32::from_le_bytes([
            data[0], data[1], data[2], data[3],
        ]))),
        other => Err(format!("{other:?}, expected the result OUT")),
    })?;
    run_until(&mut v, xcr0, |exit| match exit {
        Exit::Hlt => Ok(Some(())),
        other => Err(format!("{other:?}, expected the final HLT")),
    })?;
    if gps != BAD_XSETBV.len() as u32 {
        return Err(format!(
            "{gps} XSETBVs faulted, {} expected",
            BAD_XSETBV.len()
        ));
    }
    let out = ram.read(YMM_OUT, 16 * 32);
    let mut bad = Vec::new();
    for n in 0..16u8 {
        let want = if n == 14 {
            ymm14_expected(avx2)
        } else {
            ymm_pattern(n)
        };
        let got = &out[usize::from(n) * 32..usize::from(n) * 32 + 32];
        let bits: u32 = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        if bits != 0 {
            bad.push(format!("YMM{n}: {bits} bits"));
        }
    }
    crate::println!("bench: haxm-avx-corrupted-registers {} regs", bad.len());
    if !bad.is_empty() {
        return Err(format!(
            "YMM state corrupted after {ITERATIONS} exits: {}",
            bad.join(", ")
        ));
    }
    let x = v.get_xsave().map_err(e("GET_XSAVE"))?;
    if x.xcr0 != 7 || x.size != 832 {
        return Err(format!("GET_XSAVE: XCR0 {:#x} size {}", x.xcr0, x.size));
    }
    drop(sys);
    Ok(format!(
        "YMM0-15 bit for bit after {ITERATIONS} CPUID exits (YMM14 accumulated by {}), \
         {gps} XSETBV #GP, host XCR0 {xcr0:#x} kept",
        if avx2 { "VPADDD" } else { "VXORPS" }
    ))
}
