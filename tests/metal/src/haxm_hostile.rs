//! `haxm-hostile`: the inputs of issue 8's soundness defects 1, 2 and 9 on emulated VT-x,
//! where Bochs faults exactly as hardware does: a value that reached the host's WRMSR or
//! FXRSTOR unchecked would #GP in this kernel and fail the run (the IDT handler reports and
//! stops), a guest write VM entry refuses would wedge every later RUN, and a string IO the
//! guest's paging refuses used to stop the vCPU.
//!
//! * from user space: SET_MSRS of non-canonical KERNEL_GS_BASE/LSTAR/CSTAR, reserved bits of
//!   TSC_AUX/FMASK/EFER, SET_FPU with MXCSR bits no CPU has, SET_REGS with a non-canonical
//!   GDT base; after each, a RUN loads the guest state and the guest runs;
//! * from the guest (real mode, #GP handler in the IVT): WRMSR of EFER reserved bits,
//!   DEBUGCTL and PAT values hardware refuses, a non-canonical FS_BASE, MOV to CR4 of VMXE;
//!   each gets #GP in the guest and the vCPU keeps running;
//! * a 32-bit paged guest whose `outsb` reads a page that is not present: #PF in the guest
//!   with CR2, the registers as before the instruction, no IO exit;
//! * a task switch (`jmp` to a TSS): done for the guest, which goes on in the new task.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rhax::api::{FxLayout, SegmentDesc, VmxMsr};

use crate::haxm::{
    e, expect, io_out, next, qemu_msrs, qemu_set, real_mode_at, simple_vm, Ev, Ram, R, V,
};
use crate::hv::Shell;
use crate::scenarios::Ctx;

/// `mov al, 0x55; out 0x80, al; hlt`: the proof that the guest still runs.
const OUT_HLT: u64 = 0x1000;
/// Real-mode #GP handler: `mov al, 13; out 0x81, al; hlt`.
const GP_HANDLER: u64 = 0x1100;
/// Guest snippets start here, 0x40 bytes apart.
const SNIPPETS: u64 = 0x1200;
/// 32-bit #PF handler: `mov al, 14; out 0x81, al; hlt`.
const PF_HANDLER: u64 = 0x3100;
const PAGED_CODE: u64 = 0x3000;
const GDT: u64 = 0x600;
const IDT: u64 = 0x700;
const PD: u64 = 0x4000;

fn out_then_hlt(v: &mut V<'_>, what: &str) -> R<()> {
    v.set_regs(&real_mode_at(OUT_HLT)).map_err(e("SET_REGS"))?;
    crate::haxm_events::out_then_hlt(v, what)
}

fn msr(entry: u64, value: u64) -> VmxMsr {
    VmxMsr { entry, value }
}

/// `mov ecx, msr; mov eax, lo; mov edx, hi; wrmsr; hlt` (16-bit code, 0x66 prefixes).
fn wrmsr_code(msr: u32, value: u64) -> Vec<u8> {
    let mut c = Vec::new();
    c.extend([0x66, 0xB9]);
    c.extend(msr.to_le_bytes());
    c.extend([0x66, 0xB8]);
    c.extend((value as u32).to_le_bytes());
    c.extend([0x66, 0xBA]);
    c.extend(((value >> 32) as u32).to_le_bytes());
    c.extend([0x0F, 0x30, 0xF4]);
    c
}

/// See the module documentation.
pub fn haxm_hostile(_: &Ctx) -> R<String> {
    let ram = Ram::new(0x1_0000)?;
    ram.write(OUT_HLT, &[0xB0, 0x55, 0xE6, 0x80, 0xF4]);
    ram.write(GP_HANDLER, &[0xB0, 0x0D, 0xE6, 0x81, 0xF4]);
    // IVT entry 13 → 0000:GP_HANDLER.
    ram.write(
        13 * 4,
        &[(GP_HANDLER & 0xff) as u8, (GP_HANDLER >> 8) as u8, 0, 0],
    );
    let shell = Shell::new()?;
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &real_mode_at(OUT_HLT), &qemu_msrs())?;
    out_then_hlt(&mut v, "first run")?;
    let mut checked = 0;

    // 1. User space: values the host's WRMSR/FXRSTOR would fault on, or VM entry refuses.
    let refused: [(u64, u64, &str); 7] = [
        (
            0xc000_0102,
            0x8000_0000_0000_0000,
            "KERNEL_GS_BASE non-canonical",
        ),
        (0xc000_0082, 0x0000_8000_0000_0000, "LSTAR non-canonical"),
        (0xc000_0083, 0x1234_0000_0000_0000, "CSTAR non-canonical"),
        (0xc000_0103, 1 << 32, "TSC_AUX bit 32"),
        (0xc000_0084, 1 << 40, "FMASK bit 40"),
        (0xc000_0080, 1 << 9, "EFER bit 9"),
        (0xc000_0100, 0x0000_8000_0000_0000, "FS_BASE non-canonical"),
    ];
    for (entry, value, what) in refused {
        let done = v.set_msrs(&[msr(entry, value)]).map_err(e("SET_MSRS"))?;
        if done != 0 {
            return Err(format!("SET_MSRS {what}: accepted"));
        }
        out_then_hlt(&mut v, what)?;
        checked += 1;
    }
    let mut fpu = FxLayout {
        fcw: 0x37f,
        mxcsr: 0xffff_ffff,
        mxcsr_mask: 0xffff_ffff,
        ..FxLayout::default()
    };
    if v.set_fpu(&fpu).is_ok() {
        return Err(String::from("SET_FPU with MXCSR 0xffffffff accepted"));
    }
    out_then_hlt(&mut v, "after SET_FPU refused")?;
    fpu.mxcsr = 0x1f80;
    v.set_fpu(&fpu).map_err(e("SET_FPU good"))?;
    out_then_hlt(&mut v, "after SET_FPU good")?;
    let mut bad = real_mode_at(OUT_HLT);
    bad.gdt = SegmentDesc::new(0, 0x8000_0000_0000_0000, 0xffff, 0);
    v.set_regs(&bad)
        .map_err(e("SET_REGS non-canonical GDT base"))?;
    if v.run().is_ok() {
        return Err(String::from(
            "RUN with a non-canonical GDT base entered the guest",
        ));
    }
    out_then_hlt(&mut v, "after a good SET_REGS")?;
    checked += 3;

    // 2. The guest: writes hardware refuses get #GP, and the vCPU keeps running.
    let guest_cases: [(Vec<u8>, &str); 5] = [
        (wrmsr_code(0xc000_0080, 1 << 9), "WRMSR EFER bit 9"),
        (wrmsr_code(0x1d9, 1 << 6), "WRMSR DEBUGCTL bit 6"),
        (wrmsr_code(0x277, 0x02), "WRMSR PAT type 2"),
        (
            wrmsr_code(0xc000_0100, 0x8000_0000_0000_0000),
            "WRMSR FS_BASE non-canonical",
        ),
        (
            // mov eax, 0x2000 (VMXE); mov cr4, eax; hlt
            alloc::vec![0x66, 0xB8, 0x00, 0x20, 0x00, 0x00, 0x0F, 0x22, 0xE0, 0xF4],
            "MOV CR4.VMXE",
        ),
    ];
    for (i, (code, what)) in guest_cases.iter().enumerate() {
        let at = SNIPPETS + 0x40 * i as u64;
        ram.write(at, code);
        v.set_regs(&real_mode_at(at)).map_err(e("SET_REGS"))?;
        expect(
            &format!("{what}: #GP"),
            next(&mut v, 0)?,
            io_out(0x81, 1, &[13]),
        )?;
        expect(&format!("{what}: HLT"), next(&mut v, 0)?, Ev::Hlt)?;
        out_then_hlt(&mut v, what)?;
        checked += 1;
    }

    // 3. A paged guest's `outsb` from a page that is not present: #PF, not a stopped vCPU.
    let gdt: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        ram.write(GDT + 8 * i as u64, &d.to_le_bytes());
    }
    let gate = (PF_HANDLER & 0xffff) | (8 << 16) | (0x8e00 << 32) | ((PF_HANDLER >> 16) << 48);
    ram.write(IDT + 14 * 8, &gate.to_le_bytes());
    ram.write(PD, &0x83u32.to_le_bytes()); // 0-4 MiB: one supervisor 4 MiB page
    ram.write(PF_HANDLER, &[0xB0, 0x0E, 0xE6, 0x81, 0xF4]);
    ram.write(
        PAGED_CODE,
        &[
            0xBE, 0x00, 0x00, 0x40, 0x00, // mov esi, 0x400000 (not present)
            0xBA, 0xF8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
            0x6E, // outsb
            0xF4, // hlt
        ],
    );
    let mut s = real_mode_at(PAGED_CODE);
    s.cr0 = 0x8000_0011;
    s.cr3 = PD;
    s.cr4 = 0x10;
    s.cs = SegmentDesc::new(8, 0, 0xffff_ffff, 0xc09b);
    for seg in [&mut s.ds, &mut s.es, &mut s.ss, &mut s.fs, &mut s.gs] {
        *seg = SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xc093);
    }
    s.gdt = SegmentDesc::new(0, GDT, 0x17, 0);
    s.idt = SegmentDesc::new(0, IDT, 0xff, 0);
    s.regs[4] = 0x8000;
    v.set_regs(&s).map_err(e("SET_REGS paged"))?;
    expect(
        "outsb from a missing page: #PF",
        next(&mut v, 0)?,
        io_out(0x81, 1, &[14]),
    )?;
    let after = v.get_regs().map_err(e("GET_REGS"))?;
    if after.cr2 != 0x40_0000 || after.regs[6] != 0x40_0000 {
        return Err(format!(
            "#PF: CR2 {:#x}, ESI {:#x}; expected both 0x400000",
            after.cr2, after.regs[6]
        ));
    }
    expect("#PF handler: HLT", next(&mut v, 0)?, Ev::Hlt)?;
    out_then_hlt(&mut v, "after the #PF")?;
    checked += 1;

    // 4. A task switch (exit 9, unconditional): `jmp 0x20:0` to TSS B from task A.
    const TSS_A: u64 = 0x5000;
    const TSS_B: u64 = 0x5100;
    const TASK_B_CODE: u64 = 0x3200;
    let tss = |base: u64, ty: u64| 0x67 | ((base & 0xff_ffff) << 16) | (ty << 40);
    ram.write(GDT + 0x18, &tss(TSS_A, 0x8b).to_le_bytes());
    ram.write(GDT + 0x20, &tss(TSS_B, 0x89).to_le_bytes());
    for (off, val) in [
        (0x20u64, TASK_B_CODE as u32),
        (0x24, 2),
        (0x28, 0x4242),
        (0x38, 0x7000),
        (0x48, 0x10),
        (0x4c, 0x08),
        (0x50, 0x10),
        (0x54, 0x10),
    ] {
        ram.write(TSS_B + off, &val.to_le_bytes());
    }
    ram.write(TASK_B_CODE, &[0xE6, 0x82, 0xF4]); // out 0x82, al (AL = 0x42 from EAX); hlt
    ram.write(0x3300, &[0xEA, 0, 0, 0, 0, 0x20, 0x00]); // jmp 0x20:0
    let mut s = real_mode_at(0x3300);
    s.cr0 = 0x11;
    s.cs = SegmentDesc::new(8, 0, 0xffff_ffff, 0xc09b);
    for seg in [&mut s.ds, &mut s.es, &mut s.ss, &mut s.fs, &mut s.gs] {
        *seg = SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xc093);
    }
    s.gdt = SegmentDesc::new(0, GDT, 0x27, 0);
    s.idt = SegmentDesc::new(0, IDT, 0xff, 0);
    s.tr = SegmentDesc::new(0x18, TSS_A, 0x67, 0x8b);
    v.set_regs(&s).map_err(e("SET_REGS task A"))?;
    expect(
        "task switch: task B's OUT",
        next(&mut v, 0)?,
        io_out(0x82, 1, &[0x42]),
    )?;
    let b = v.get_regs().map_err(e("GET_REGS task B"))?;
    if b.tr.selector != 0x20 || b.tr.base != TSS_B || b.regs[4] != 0x7000 {
        return Err(format!(
            "task switch: TR {:#x} base {:#x}, ESP {:#x}",
            b.tr.selector, b.tr.base, b.regs[4]
        ));
    }
    expect("task B: HLT", next(&mut v, 0)?, Ev::Hlt)?;
    checked += 1;
    Ok(format!(
        "{checked} hostile inputs refused or faulted in the guest; the host and the vCPU went on"
    ))
}
