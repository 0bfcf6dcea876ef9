//! `haxm-fpu`: the guest's x87/SSE registers survive every kind of exit of the HAXM RUN path.
//!
//! rhax-core loads the guest's FXSAVE image once per stay in the non-preemptible region and
//! keeps it loaded across VM exits (`Vcpu::load_guest_msrs`), so every instruction the host runs
//! between two entries sees the guest's XMM and x87 registers. Host code that uses SSE there
//! (compiler-generated copies of structs through XMM registers, for instance) silently
//! corrupts the guest. This scenario makes such corruption visible:
//!
//! * a 64-bit guest loads XMM0-15 and the x87 stack ST0-7 with distinct patterns;
//! * it then loops [`ITERATIONS`] times over one exit of every kind: CPUID (handled in the
//!   kernel), OUT (back to user space), an MMIO store and an MMIO load (FAST_MMIO, the load
//!   completed by the emulator at the next RUN), `rep outsb` (string IO), and `sti; hlt`
//!   answered with the INTERRUPT IOCTL (the handler runs and IRETQs);
//! * at the end it FXSAVEs its registers, counts the bits that differ from the patterns
//!   (XMM: all 128 bits; x87: the 80 bits of each register) and OUTs the count to port 0x85.
//!
//! The host checks the count is 0, recounts from the guest's FXSAVE image in RAM (naming the
//! corrupted registers), and checks every exit and the number of interrupts handled.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rhax::api::{IoDirection, MmioDirection, RamFlags, SegmentDesc, VcpuState};
use rhax::{Exit, System};

use crate::haxm::{e, qemu_msrs, qemu_set, real_mode_at, Ram, R, V};
use crate::hv::Shell;
use crate::scenarios::Ctx;

/// Rounds of the exit loop (one exit of every kind per round).
pub const ITERATIONS: u32 = 10_000;

/// Guest-physical layout (all inside [`RAM_BYTES`] at GPA 0, identity-mapped by the guest).
const RAM_BYTES: u64 = 0x2_0000;
const GDT: u64 = 0x500;
const HANDLER: u64 = 0x800;
const CODE: u64 = 0x1000;
const IDT: u64 = 0x2000;
/// XMM0-15 patterns, 16 bytes each.
const XMM_PATTERNS: u64 = 0x3000;
/// ST0-7 patterns in FXSAVE slot layout: 10 bytes of 80-bit value, 6 bytes of zero.
const X87_PATTERNS: u64 = 0x3100;
/// What `rep outsb` sends.
const STRING: u64 = 0x3200;
const STRING_BYTES: &[u8; 5] = b"FPU!!";
/// The guest's FXSAVE image after the loop (16-byte aligned).
const FXSAVE_AREA: u64 = 0x3400;
/// Interrupts handled (the handler increments this qword).
const IRQ_COUNT: u64 = 0x4000;
const PML4: u64 = 0x1_0000;
/// Unbacked guest-physical address of the MMIO accesses (a 2-MiB guest page maps it).
const MMIO: u64 = 0xD000_0000;
/// The vector injected at each HLT.
const VECTOR: u8 = 0x20;
/// FXSAVE layout (SDM Vol. 1 §10.5.1, Table 10-2): ST0-7 at 32, XMM0-15 at 160.
const FX_ST0: u64 = 32;
const FX_XMM0: u64 = 160;
/// Ports.
const PORT_OUT: u16 = 0x80;
const PORT_STRING: u16 = 0xE9;
const PORT_RESULT: u16 = 0x85;

/// A few bytes of 64-bit machine code with backward branches.
struct Code {
    base: u64,
    bytes: Vec<u8>,
}

impl Code {
    fn here(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    fn i(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    fn imm32(&mut self, opcode: &[u8], imm: u32) -> &mut Self {
        self.i(opcode).i(&imm.to_le_bytes())
    }

    /// `jnz target` (rel8 when it fits, else rel32).
    fn jnz(&mut self, target: u64) -> &mut Self {
        let rel8 = target as i64 - (self.here() as i64 + 2);
        if let Ok(r) = i8::try_from(rel8) {
            return self.i(&[0x75, r as u8]);
        }
        let rel32 = target as i64 - (self.here() as i64 + 6);
        self.imm32(&[0x0F, 0x85], rel32 as i32 as u32)
    }

    /// RBX += popcount(RAX); clobbers RAX, RCX, RDX. Only a backward branch: 64 rounds of
    /// "add the low bit, shift".
    fn add_popcount(&mut self) -> &mut Self {
        self.imm32(&[0xB9], 64); // mov ecx, 64
        let top = self.here();
        self.i(&[0x48, 0x89, 0xC2]) // mov rdx, rax
            .i(&[0x83, 0xE2, 0x01]) // and edx, 1
            .i(&[0x48, 0x01, 0xD3]) // add rbx, rdx
            .i(&[0x48, 0xD1, 0xE8]) // shr rax, 1
            .i(&[0xFF, 0xC9]) // dec ecx
            .jnz(top)
    }
}

/// `[disp32]` operand (ModRM r/m = 100, SIB = no base, no index) with ModRM.reg = `reg`.
fn abs(reg: u8, disp: u64) -> [u8; 6] {
    let d = (disp as u32).to_le_bytes();
    [(reg & 7) << 3 | 4, 0x25, d[0], d[1], d[2], d[3]]
}

/// XMM`n`'s pattern: every byte distinct across registers.
fn xmm_pattern(n: u8) -> [u8; 16] {
    core::array::from_fn(|i| (n * 16 + i as u8) ^ 0xA5)
}

/// ST`i`'s pattern as an 80-bit extended-precision value (SDM Vol. 1 §4.2.2): a normal number
/// (integer bit 63 set, exponent neither 0 nor 0x7FFF), sign alternating, mantissa distinct.
fn x87_pattern(i: u8) -> [u8; 10] {
    let mantissa =
        0x8000_0000_0000_0000u64 | 0x0123_4567_89AB_CDEFu64.rotate_left(8 * u32::from(i));
    let sign_exp = (u16::from(i & 1) << 15) | (0x3FFF + u16::from(i));
    let mut v = [0u8; 10];
    v[..8].copy_from_slice(&mantissa.to_le_bytes());
    v[8..].copy_from_slice(&sign_exp.to_le_bytes());
    v
}

/// The guest program (see the module documentation).
fn guest_code() -> Code {
    let mut c = Code {
        base: CODE,
        bytes: Vec::new(),
    };
    c.i(&[0xDB, 0xE3]); // fninit
    for i in (0..8u8).rev() {
        // fld tbyte [X87_PATTERNS + 16 i]: pushes, so ST0 ends up holding pattern 0.
        c.i(&[0xDB]).i(&abs(5, X87_PATTERNS + 16 * u64::from(i)));
    }
    for n in 0..16u8 {
        // movdqu xmmN, [XMM_PATTERNS + 16 n] (REX.R selects XMM8-15).
        c.i(&[0xF3]);
        if n >= 8 {
            c.i(&[0x44]);
        }
        c.i(&[0x0F, 0x6F])
            .i(&abs(n, XMM_PATTERNS + 16 * u64::from(n)));
    }
    c.imm32(&[0x41, 0xBF], ITERATIONS); // mov r15d, ITERATIONS
    let top = c.here();
    c.i(&[0x31, 0xC0]) // xor eax, eax
        .i(&[0x0F, 0xA2]) // cpuid (handled in the kernel)
        .i(&[0xE6, PORT_OUT as u8]) // out 0x80, al
        .imm32(&[0xBF], MMIO as u32) // mov edi, MMIO
        .i(&[0x89, 0x07]) // mov [rdi], eax (MMIO store)
        .i(&[0x48, 0x8B, 0x1F]) // mov rbx, [rdi] (MMIO load)
        .imm32(&[0xBE], STRING as u32) // mov esi, STRING
        .imm32(&[0xB9], STRING_BYTES.len() as u32) // mov ecx, 5
        .imm32(&[0xBA], u32::from(PORT_STRING)) // mov edx, 0xE9
        .i(&[0xF3, 0x6E]) // rep outsb
        .i(&[0xFB]) // sti
        .i(&[0xF4]) // hlt (the host injects VECTOR; the handler returns here)
        .i(&[0xFA]) // cli
        .i(&[0x41, 0xFF, 0xCF]) // dec r15d
        .jnz(top);
    // fxsave [FXSAVE_AREA]
    c.i(&[0x0F, 0xAE]).i(&abs(0, FXSAVE_AREA));
    c.i(&[0x31, 0xDB]); // xor ebx, ebx: the corrupted-bit count
                        // XMM0-15: 32 qwords compared whole.
    c.imm32(&[0xBE], (FXSAVE_AREA + FX_XMM0) as u32) // mov esi, &saved XMM0
        .imm32(&[0xBF], XMM_PATTERNS as u32) // mov edi, XMM_PATTERNS
        .imm32(&[0x41, 0xB8], 32); // mov r8d, 32
    let xmm_loop = c.here();
    c.i(&[0x48, 0x8B, 0x06]) // mov rax, [rsi]
        .i(&[0x48, 0x33, 0x07]) // xor rax, [rdi]
        .add_popcount()
        .i(&[0x48, 0x83, 0xC6, 0x08]) // add rsi, 8
        .i(&[0x48, 0x83, 0xC7, 0x08]) // add rdi, 8
        .i(&[0x41, 0xFF, 0xC8]) // dec r8d
        .jnz(xmm_loop);
    // ST0-7: 16-byte slots, of which the low 80 bits are the register.
    c.imm32(&[0xBE], (FXSAVE_AREA + FX_ST0) as u32) // mov esi, &saved ST0
        .imm32(&[0xBF], X87_PATTERNS as u32) // mov edi, X87_PATTERNS
        .imm32(&[0x41, 0xB8], 8); // mov r8d, 8
    let x87_loop = c.here();
    c.i(&[0x48, 0x8B, 0x06]) // mov rax, [rsi]
        .i(&[0x48, 0x33, 0x07]) // xor rax, [rdi]
        .add_popcount()
        .i(&[0x0F, 0xB7, 0x46, 0x08]) // movzx eax, word [rsi + 8]
        .i(&[0x0F, 0xB7, 0x57, 0x08]) // movzx edx, word [rdi + 8]
        .i(&[0x31, 0xD0]) // xor eax, edx
        .add_popcount()
        .i(&[0x48, 0x83, 0xC6, 0x10]) // add rsi, 16
        .i(&[0x48, 0x83, 0xC7, 0x10]) // add rdi, 16
        .i(&[0x41, 0xFF, 0xC8]) // dec r8d
        .jnz(x87_loop);
    c.i(&[0x89, 0xD8]) // mov eax, ebx
        .i(&[0xE7, PORT_RESULT as u8]) // out 0x85, eax
        .i(&[0xF4]); // hlt
    c
}

/// Writes the guest: GDT, IDT, handler, code, patterns, page tables.
fn write_guest(ram: &Ram) -> R<()> {
    // GDT: null, 64-bit code (0x08), data (0x10).
    ram.write(GDT + 8, &0x00AF_9B00_0000_FFFFu64.to_le_bytes());
    ram.write(GDT + 16, &0x00CF_9300_0000_FFFFu64.to_le_bytes());
    // The handler: inc qword [IRQ_COUNT]; iretq.
    let mut h = alloc::vec![0x48, 0xFF];
    h.extend_from_slice(&abs(0, IRQ_COUNT));
    h.extend_from_slice(&[0x48, 0xCF]);
    ram.write(HANDLER, &h);
    // IDT entry VECTOR: a 64-bit interrupt gate (type 0xE, P = 1, DPL 0) to HANDLER through
    // selector 0x08 (SDM Vol. 3A §7.14.1, Figure 7-8).
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(HANDLER as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    gate[5] = 0x8E;
    gate[6..8].copy_from_slice(&((HANDLER >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((HANDLER >> 32) as u32).to_le_bytes());
    ram.write(IDT + 16 * u64::from(VECTOR), &gate);
    let code = guest_code();
    if code.here() > IDT {
        return Err(format!(
            "guest code overlaps the IDT (ends at {:#x})",
            code.here()
        ));
    }
    ram.write(CODE, &code.bytes);
    for n in 0..16u8 {
        ram.write(XMM_PATTERNS + 16 * u64::from(n), &xmm_pattern(n));
    }
    for i in 0..8u8 {
        ram.write(X87_PATTERNS + 16 * u64::from(i), &x87_pattern(i));
    }
    ram.write(STRING, STRING_BYTES);
    // PML4 → PDPT; PDPT[0] → PD with a 2-MiB identity page; PDPT[3] → PD2 with a 2-MiB page
    // at MMIO (P | RW | PS), which no RAM backs.
    ram.write(PML4, &(0x11000u64 | 3).to_le_bytes());
    ram.write(0x11000, &(0x12000u64 | 3).to_le_bytes());
    ram.write(0x11018, &(0x13000u64 | 3).to_le_bytes());
    ram.write(0x12000, &0x83u64.to_le_bytes());
    ram.write(0x13000 + 8 * 128, &(MMIO | 0x83).to_le_bytes());
    Ok(())
}

/// 64-bit mode with SSE enabled for the guest (CR4.OSFXSR, OSXMMEXCPT), flat segments, the
/// IDT above and EFER.LME|LMA through SET_MSRS.
fn long_mode_state() -> VcpuState {
    let mut s = real_mode_at(CODE);
    s.cs = SegmentDesc::new(0x08, 0, 0xffff_ffff, 0xA09B); // L = 1, D = 0
    for seg in [&mut s.ds, &mut s.es, &mut s.ss, &mut s.fs, &mut s.gs] {
        *seg = SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xC093);
    }
    s.gdt = SegmentDesc::new(0, GDT, 0x17, 0);
    s.idt = SegmentDesc::new(0, IDT, 0xfff, 0);
    s.regs[4] = 0x8000; // RSP
    s.rflags = 2;
    s.cr0 = 0x8000_0013; // PG | ET | MP | PE
    s.cr4 = 0x620; // OSXMMEXCPT | OSFXSR | PAE
    s.cr3 = PML4;
    s
}

/// One RUN that is not INTERRUPT (a host interrupt or the run budget may cut any RUN short).
fn run_until<T>(v: &mut V<'_>, mut f: impl FnMut(Exit<'_>) -> R<Option<T>>) -> R<T> {
    for _ in 0..1000 {
        let exit = v.run().map_err(e("RUN"))?;
        if let Exit::Interrupt = exit {
            continue;
        }
        if let Some(t) = f(exit)? {
            return Ok(t);
        }
    }
    Err(String::from("1000 RUNs without the expected exit"))
}

/// Counts the bits of the guest's saved registers that differ from the patterns, per
/// register: `(name, bits)` for each corrupted one.
fn recount(image: &[u8]) -> Vec<(String, u32)> {
    let mut bad = Vec::new();
    let diff = |a: &[u8], b: &[u8]| -> u32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x ^ y).count_ones())
            .sum::<u32>()
    };
    for n in 0..16u8 {
        let at = (FX_XMM0 + 16 * u64::from(n)) as usize;
        let bits = diff(&image[at..at + 16], &xmm_pattern(n));
        if bits != 0 {
            bad.push((format!("XMM{n}"), bits));
        }
    }
    for i in 0..8u8 {
        let at = (FX_ST0 + 16 * u64::from(i)) as usize;
        let bits = diff(&image[at..at + 10], &x87_pattern(i));
        if bits != 0 {
            bad.push((format!("ST{i}"), bits));
        }
    }
    bad
}

/// See the module documentation.
pub fn haxm_fpu(_: &Ctx) -> R<String> {
    let ram = Ram::zeroed(RAM_BYTES)?;
    write_guest(&ram)?;
    let shell = Shell::new()?;
    let sys = System::open(shell.transport()).map_err(e("open \\\\.\\HAX"))?;
    let vm = sys.create_vm().map_err(e("CREATE_VM"))?;
    // SAFETY: kernel pages owned by `ram`, which outlives the VM (declared first), and no Rust
    // object lives in them.
    unsafe { vm.add_ramblock(ram.addr, RAM_BYTES) }.map_err(e("ADD_RAMBLOCK"))?;
    vm.set_ram(0, RAM_BYTES as u32, ram.addr, RamFlags::empty())
        .map_err(e("SET_RAM"))?;
    let mut v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
    let mut msrs = qemu_msrs();
    for m in &mut msrs {
        if m.entry == 0xC000_0080 {
            m.value = 0x500; // LME | LMA
        }
    }
    qemu_set(&v, &long_mode_state(), &msrs)?;

    let mmio_value = 0x0BAD_F00D_CAFE_D00Du64;
    for round in 0..ITERATIONS {
        let what = |w: &str| format!("round {round}: {w}");
        run_until(&mut v, |exit| match exit {
            Exit::Io {
                direction: IoDirection::Out,
                size: 1,
                count: 1,
                port: PORT_OUT,
                string: false,
                ..
            } => Ok(Some(())),
            other => Err(what(&format!("{other:?}, expected OUT 0x80"))),
        })?;
        run_until(&mut v, |exit| match exit {
            Exit::FastMmio(m)
                if m.gpa == MMIO && m.size == 4 && m.direction == MmioDirection::Write =>
            {
                Ok(Some(()))
            }
            other => Err(what(&format!("{other:?}, expected an MMIO store"))),
        })?;
        run_until(&mut v, |exit| match exit {
            Exit::FastMmio(mut m)
                if m.gpa == MMIO && m.size == 8 && m.direction == MmioDirection::Read =>
            {
                m.complete_read(mmio_value).map_err(e("complete_read"))?;
                Ok(Some(()))
            }
            other => Err(what(&format!("{other:?}, expected an MMIO load"))),
        })?;
        run_until(&mut v, |exit| match exit {
            Exit::Io {
                direction: IoDirection::Out,
                size: 1,
                count: 5,
                port: PORT_STRING,
                string: true,
                data,
                ..
            } if data == STRING_BYTES => Ok(Some(())),
            other => Err(what(&format!("{other:?}, expected rep outsb"))),
        })?;
        run_until(&mut v, |exit| match exit {
            Exit::Hlt => Ok(Some(())),
            other => Err(what(&format!("{other:?}, expected HLT"))),
        })?;
        v.interrupt(VECTOR).map_err(e("INTERRUPT"))?;
    }
    let reported = run_until(&mut v, |exit| match exit {
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
    run_until(&mut v, |exit| match exit {
        Exit::Hlt => Ok(Some(())),
        other => Err(format!("{other:?}, expected the final HLT")),
    })?;
    let image = ram.read(FXSAVE_AREA, 512);
    let bad = recount(&image);
    let recounted: u32 = bad.iter().map(|b| b.1).sum();
    let irqs = u64::from_le_bytes(ram.read(IRQ_COUNT, 8).try_into().unwrap_or([0; 8]));
    crate::println!("bench: haxm-fpu-corrupted-bits {reported} bits");
    if reported != recounted {
        return Err(format!(
            "the guest counted {reported} corrupted bits, its FXSAVE image shows {recounted}"
        ));
    }
    if reported != 0 {
        let list: Vec<String> = bad.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        return Err(format!(
            "{reported} guest x87/SSE bits corrupted after {ITERATIONS} rounds ({})",
            list.join(", ")
        ));
    }
    if irqs != u64::from(ITERATIONS) {
        return Err(format!(
            "the guest handled {irqs} interrupts, {ITERATIONS} injected"
        ));
    }
    drop(sys);
    Ok(format!(
        "XMM0-15 and ST0-7 intact after {ITERATIONS} rounds of CPUID, OUT, MMIO store, MMIO \
         load, rep outsb, HLT + INTERRUPT ({} exits to user space)",
        5 * ITERATIONS + 2
    ))
}
