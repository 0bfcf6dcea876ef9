//! `haxm-quickboot` (issue 11 item 4): the Android emulator's quickboot flow through RUN.
//!
//! After loading a snapshot the emulator protects all guest RAM (PROTECT_RAM, no access) and
//! unprotects a 2 MiB chunk each time RUN answers PAGEFAULT, then runs again. Here, in 32-bit
//! protected mode with 4 MiB of RAM:
//!
//! 1. everything protected: the first instruction fetch is PAGEFAULT; chunk 0 unprotected;
//! 2. the guest's load from chunk 1 is PAGEFAULT; chunk 1 unprotected, the load completes;
//! 3. chunk 1 protected again: `rep outsb` from it (the host copies the string) is PAGEFAULT
//!    with nothing changed; after the unprotect the same OUTS gives its IO exit;
//! 4. chunk 1 protected again: `movsd` from MMIO into it reads the MMIO first, then its write
//!    (done by the host) is PAGEFAULT with nothing changed; after the unprotect the MOVSD runs
//!    again from the start (a new MMIO read) and completes.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use core::arch::global_asm;

use rhax::api::{IoDirection, MmioDirection, RamPermission};
use rhax::Exit;

use crate::haxm::{
    e, flat, qemu_msrs, qemu_reset_state, qemu_set, simple_vm, write_gdt, Ram, R, V,
};
use crate::hv::Shell;
use crate::scenarios::Ctx;

const RAM_BYTES: u64 = 0x40_0000;
const CHUNK: u64 = 0x20_0000;
const MMIO: u64 = 0xD000_0000;
const STRING: &[u8; 8] = b"QUICKBT!";

global_asm!(
    r#"
    .section .rodata.rhax_guest_quickboot32, "a"
    .code32
    .global rhax_quickboot32_start
rhax_quickboot32_start:
    mov esp, 0x8000
    mov eax, dword ptr [0x200000]
    out 0x80, eax
    mov esi, 0x200100
    mov ecx, 8
    mov dx, 0xE9
    cld
    rep outsb
    mov esi, {mmio}
    mov edi, 0x200300
    movsd
    mov eax, dword ptr [0x200300]
    out 0x81, eax
    hlt
    .global rhax_quickboot32_end
rhax_quickboot32_end:
    .code64
    .text
"#,
    mmio = const MMIO,
);

extern "C" {
    static rhax_quickboot32_start: u8;
    static rhax_quickboot32_end: u8;
}

fn guest_code() -> &'static [u8] {
    let start = core::ptr::addr_of!(rhax_quickboot32_start);
    let end = core::ptr::addr_of!(rhax_quickboot32_end);
    // SAFETY: both symbols are in `.rodata.rhax_guest_quickboot32` of this image, start
    // first; the section is read-only and lives for the whole run.
    unsafe { core::slice::from_raw_parts(start, (end as usize).saturating_sub(start as usize)) }
}

/// What one RUN gave (INTERRUPT runs again).
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    PageFault(u64),
    Out(u16, u32),
    Outs(vec::Vec<u8>),
    MmioRead(u64),
    Hlt,
}

fn next(v: &mut V<'_>, answer: u32) -> R<Seen> {
    for _ in 0..1000 {
        return Ok(match v.run().map_err(e("RUN"))? {
            Exit::Interrupt => continue,
            Exit::PageFault { gpa, .. } => Seen::PageFault(gpa),
            Exit::Io {
                direction: IoDirection::Out,
                port,
                data,
                string,
                ..
            } => {
                if string {
                    Seen::Outs(data.to_vec())
                } else {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&data[..4]);
                    Seen::Out(port, u32::from_le_bytes(b))
                }
            }
            Exit::FastMmio(mut m) if m.direction == MmioDirection::Read => {
                m.complete_read(u64::from(answer))
                    .map_err(e("complete_read"))?;
                Seen::MmioRead(m.gpa)
            }
            Exit::Hlt => Seen::Hlt,
            other => return Err(format!("unexpected exit {other:?}")),
        });
    }
    Err(String::from("1000 INTERRUPT exits in a row"))
}

fn want(step: &str, got: Seen, want: Seen) -> R<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{step}: {got:?}, expected {want:?}"))
    }
}

pub fn haxm_quickboot(_: &Ctx) -> R<String> {
    let ram = Ram::zeroed(RAM_BYTES)?;
    ram.write(0x1000, guest_code());
    ram.write(CHUNK, &0x1122_3344u32.to_le_bytes());
    ram.write(CHUNK + 0x100, STRING);
    write_gdt(&ram, 0x00CF_9B00_0000_FFFF);
    let shell = Shell::new()?;
    let (_sys, vm, mut v) = simple_vm(&shell, &ram)?;
    let mut s = qemu_reset_state();
    flat(&mut s, 0xC09B);
    s.cr0 = 0x11;
    qemu_set(&v, &s, &qemu_msrs())?;
    let protect = |start: u64, perm: RamPermission| {
        vm.protect_ram(start, CHUNK, perm).map_err(e("PROTECT_RAM"))
    };
    // 1. Everything protected: the fetch of the first instruction.
    protect(0, RamPermission::None)?;
    protect(CHUNK, RamPermission::None)?;
    want("first fetch", next(&mut v, 0)?, Seen::PageFault(0))?;
    protect(0, RamPermission::Rwx)?;
    // 2. The load from chunk 1.
    want("load", next(&mut v, 0)?, Seen::PageFault(CHUNK))?;
    protect(CHUNK, RamPermission::Rwx)?;
    want("load done", next(&mut v, 0)?, Seen::Out(0x80, 0x1122_3344))?;
    // 3. rep outsb from protected chunk 1: the host's copy.
    protect(CHUNK, RamPermission::None)?;
    want(
        "rep outsb",
        next(&mut v, 0)?,
        Seen::PageFault(CHUNK + 0x100 & !0xfff),
    )?;
    let st = v.get_regs().map_err(e("GET_REGS"))?;
    if (st.regs[1], st.regs[6]) != (8, CHUNK + 0x100) {
        return Err(format!(
            "after the refused OUTS: ECX {:#x} ESI {:#x}, expected 8 and {:#x}",
            st.regs[1],
            st.regs[6],
            CHUNK + 0x100
        ));
    }
    protect(CHUNK, RamPermission::Rwx)?;
    want(
        "rep outsb done",
        next(&mut v, 0)?,
        Seen::Outs(STRING.to_vec()),
    )?;
    // 4. movsd from MMIO into protected chunk 1: read, refused write, again from the start.
    protect(CHUNK, RamPermission::None)?;
    want(
        "movsd read",
        next(&mut v, 0xCAFE_BABE)?,
        Seen::MmioRead(MMIO),
    )?;
    want(
        "movsd write",
        next(&mut v, 0)?,
        Seen::PageFault(CHUNK + 0x300 & !0xfff),
    )?;
    let st = v.get_regs().map_err(e("GET_REGS"))?;
    if (st.regs[6], st.regs[7]) != (MMIO, CHUNK + 0x300) {
        return Err(format!(
            "after the refused MOVSD: ESI {:#x} EDI {:#x} moved",
            st.regs[6], st.regs[7]
        ));
    }
    protect(CHUNK, RamPermission::Rwx)?;
    want(
        "movsd again",
        next(&mut v, 0xCAFE_BABE)?,
        Seen::MmioRead(MMIO),
    )?;
    want("movsd done", next(&mut v, 0)?, Seen::Out(0x81, 0xCAFE_BABE))?;
    want("end", next(&mut v, 0)?, Seen::Hlt)?;
    Ok(String::from(
        "fetch, load, rep outsb (host copy) and movsd from MMIO (host write) into protected \
         chunks: PAGEFAULT, nothing changed, done after the 2 MiB unprotect",
    ))
}
