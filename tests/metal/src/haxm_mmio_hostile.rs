//! `haxm-mmio-hostile` (issue 11 item 8): hostile MMIO from a 64-bit guest, each ending in a
//! defined exit, while a second VM keeps running:
//!
//! 1. an MMIO read at every kind of unbacked hole (past the end of RAM, the VGA window, the
//!    IOAPIC and local APIC pages, just below 4 GiB, above 4 GiB, near 512 GiB);
//! 2. a storm of MMIO exits of mixed kinds (4,000 in `haxm-mmio-hostile`, 100,000 in
//!    `haxm-mmio-storm`) (loads, stores, read-modify-write,
//!    `rep stosd`, MMIO-to-MMIO `movsd`, `test`), every one served and counted;
//! 3. a `rep movsd` of 16 elements from MMIO to MMIO (16 move exits);
//! 4. an instruction the emulator does not carry out (`fld dword [mmio]`): STATECHANGE with
//!    the instruction's bytes;
//! 5. in a fresh VM, an instruction whose last byte lies in an unbacked page (the code runs
//!    off the end of RAM into MMIO): STATECHANGE, not a host fault.
//!
//! After each phase the witness VM (real mode, `out 0x80; hlt` in a loop) runs once.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::arch::global_asm;

use rhax::api::{IoDirection, MmioDirection};
use rhax::Exit;

use crate::haxm::{
    e, flat, qemu_msrs, qemu_reset_state, qemu_set, real_mode_at, simple_vm, write_gdt, Ram, R, V,
};
use crate::hv::Shell;
use crate::scenarios::Ctx;

const RAM_BYTES: u64 = 0x4_0000;
const CODE: u64 = 0x1000;
const STACK_TOP: u64 = 0x8000;
/// The holes table: (address, result) pairs of qwords; the count at `HOLES_N`.
const HOLES: u64 = 0x9000;
const HOLES_N: u64 = 0x8f00;
const STORM_N: u64 = 0x8f08;
const PML4: u64 = 0x1_0000;
/// The MMIO window of the storm (a memory-like device).
const WIN: u64 = 0xD000_0000;
/// Storm iterations of `haxm-mmio-hostile` (8 exits each: 4,000 exits) and of
/// `haxm-mmio-storm` (100,000 exits).
const HOSTILE_ITERATIONS: u32 = 500;
const STORM_ITERATIONS: u32 = 12_500;
const PORT_PHASE: u16 = 0xE5;

global_asm!(
    r#"
    .section .rodata.rhax_guest_hostile64, "a"
    .code64
    .global rhax_hostile64_start
rhax_hostile64_start:
    mov esp, {stack}
    /* 1: a read at every hole of the table */
    mov esi, {holes}
    mov ecx, dword ptr [{holes_n}]
1:
    mov rbx, qword ptr [rsi]
    mov eax, dword ptr [rbx]
    mov qword ptr [rsi+8], rax
    add rsi, 16
    dec ecx
    jnz 1b
    mov eax, 1
    out {phase}, eax
    /* 2: the storm */
    mov r8d, {win}
    mov r9d, dword ptr [{storm_n}]
2:
    mov eax, dword ptr [r8]
    mov dword ptr [r8+8], eax
    add dword ptr [r8+16], 1
    lea rdi, [r8+0x100]
    mov ecx, 2
    rep stosd
    lea rsi, [r8+0x200]
    lea rdi, [r8+0x300]
    movsd
    test byte ptr [r8+0x20], 1
    dec r9d
    jnz 2b
    mov eax, 2
    out {phase}, eax
    /* 3: rep movsd between two MMIO addresses */
    lea rsi, [r8+0x400]
    lea rdi, [r8+0x800]
    mov ecx, 16
    rep movsd
    mov eax, 3
    out {phase}, eax
    /* 4: an instruction the emulator does not carry out */
    fld dword ptr [r8]
    mov eax, 0xbad
    out {phase}, eax
    hlt
    .global rhax_hostile64_end
rhax_hostile64_end:
    .code64
    .text
"#,
    stack = const STACK_TOP,
    holes = const HOLES,
    holes_n = const HOLES_N,
    storm_n = const STORM_N,
    win = const WIN,
    phase = const PORT_PHASE,
);

extern "C" {
    static rhax_hostile64_start: u8;
    static rhax_hostile64_end: u8;
}

fn guest_code() -> &'static [u8] {
    let start = core::ptr::addr_of!(rhax_hostile64_start);
    let end = core::ptr::addr_of!(rhax_hostile64_end);
    // SAFETY: both symbols are in `.rodata.rhax_guest_hostile64` of this image, start first;
    // the section is read-only and lives for the whole run.
    unsafe { core::slice::from_raw_parts(start, (end as usize).saturating_sub(start as usize)) }
}

/// What a hole reads as (user space's answer).
fn hole_value(gpa: u64) -> u64 {
    (gpa as u32 ^ 0xA5A5_A5A5) as u64
}

/// The holes: past RAM, VGA, the text buffer, the IOAPIC, the local APIC, below 4 GiB, 4 GiB,
/// near 512 GiB.
const HOLE_LIST: [u64; 8] = [
    RAM_BYTES,
    0xA_0000,
    0xB_8000,
    0xFEC0_0000,
    0xFEE0_0000,
    0xFFFF_FFF0,
    0x1_0000_0000,
    0x7F_FFFF_F000,
];

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    reads: u64,
    writes: u64,
    moves: u64,
}

/// The client of the hostile guest: the window is memory-like, the holes answer
/// [`hole_value`].
struct Client {
    win: Vec<u8>,
    counts: Counts,
    holes_seen: Vec<u64>,
}

impl Client {
    fn win_range(&self, gpa: u64, size: u8) -> Option<core::ops::Range<usize>> {
        let off = gpa.checked_sub(WIN)? as usize;
        let end = off + usize::from(size);
        (end <= self.win.len()).then_some(off..end)
    }

    fn load(&self, gpa: u64, size: u8) -> u64 {
        match self.win_range(gpa, size) {
            Some(r) => {
                let mut b = [0u8; 8];
                b[..r.len()].copy_from_slice(&self.win[r]);
                u64::from_le_bytes(b)
            }
            None => hole_value(gpa),
        }
    }

    fn store(&mut self, gpa: u64, size: u8, value: u64) -> R<()> {
        let r = self
            .win_range(gpa, size)
            .ok_or_else(|| format!("MMIO write at {gpa:#x} outside the window"))?;
        let n = r.len();
        self.win[r].copy_from_slice(&value.to_le_bytes()[..n]);
        Ok(())
    }

    /// RUNs until an OUT to the phase port (its value) or another exit (an error, except
    /// STATECHANGE: `None`).
    fn run_phase(&mut self, v: &mut V<'_>) -> R<Option<u32>> {
        for _ in 0..(4 * 8 * u64::from(STORM_ITERATIONS)) {
            match v.run().map_err(e("RUN"))? {
                Exit::FastMmio(mut m) => match m.direction {
                    MmioDirection::Read => {
                        self.counts.reads += 1;
                        if self.win_range(m.gpa, m.size).is_none() {
                            self.holes_seen.push(m.gpa);
                        }
                        let v = self.load(m.gpa, m.size);
                        m.complete_read(v).map_err(e("complete_read"))?;
                    }
                    MmioDirection::Write => {
                        self.counts.writes += 1;
                        self.store(m.gpa, m.size, m.write_data())?;
                    }
                    MmioDirection::Move => {
                        self.counts.moves += 1;
                        let to = m.gpa2.ok_or("move without gpa2")?;
                        let v = self.load(m.gpa, m.size);
                        self.store(to, m.size, v)?;
                    }
                },
                Exit::Io {
                    direction: IoDirection::Out,
                    port: PORT_PHASE,
                    data,
                    ..
                } => {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&data[..4]);
                    return Ok(Some(u32::from_le_bytes(b)));
                }
                Exit::StateChange => return Ok(None),
                Exit::Interrupt => {}
                other => return Err(format!("unexpected exit {other:?}")),
            }
        }
        Err(String::from("the phase never ended"))
    }
}

/// The witness: a real-mode VM that OUTs 0x55 to port 0x80 and halts, in a loop.
fn witness(v: &mut V<'_>, after: &str) -> R<()> {
    let mut saw_out = false;
    for _ in 0..100 {
        match v.run().map_err(e("witness RUN"))? {
            Exit::Io {
                direction: IoDirection::Out,
                port: 0x80,
                data,
                ..
            } if data.first() == Some(&0x55) => saw_out = true,
            Exit::Hlt if saw_out => return Ok(()),
            Exit::Interrupt | Exit::Hlt => {}
            other => return Err(format!("witness VM after {after}: exit {other:?}")),
        }
    }
    Err(format!("witness VM after {after}: no OUT then HLT"))
}

/// Long mode with identity paging of 0-4 GiB (2-MiB pages), 4-6 GiB and the last 2 MiB below
/// 512 GiB, so that every hole of [`HOLE_LIST`] is mapped by the guest.
fn long_mode(ram: &Ram) -> (rhax::api::VcpuState, Vec<rhax::api::VmxMsr>) {
    write_gdt(ram, 0x00AF_9B00_0000_FFFF);
    ram.write(PML4, &(0x11000u64 | 3).to_le_bytes());
    for (i, pd) in [0x12000u64, 0x13000, 0x14000, 0x15000, 0x16000]
        .iter()
        .enumerate()
    {
        ram.write(0x11000 + 8 * i as u64, &(pd | 3).to_le_bytes());
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i as u64) << 30) | (j << 21) | 0x83).to_le_bytes())
            .collect();
        ram.write(*pd, &entries);
    }
    ram.write(0x11000 + 8 * 511, &(0x17000u64 | 3).to_le_bytes());
    ram.write(0x17000 + 8 * 511, &(0x7F_FFE0_0000u64 | 0x83).to_le_bytes());
    let mut s = qemu_reset_state();
    flat(&mut s, 0xA09B);
    s.cr0 = 0x8000_0033;
    s.cr4 = 0x620;
    s.cr3 = PML4;
    s.rip = CODE;
    let mut msrs = qemu_msrs();
    for m in &mut msrs {
        if m.entry == 0xC000_0080 {
            m.value = 0x500;
        }
    }
    (s, msrs)
}

/// `haxm-mmio-hostile`: every phase, a storm of 4,000 exits.
pub fn haxm_mmio_hostile(_: &Ctx) -> R<String> {
    hostile(HOSTILE_ITERATIONS)
}

/// `haxm-mmio-storm`: every phase, a storm of 100,000 exits.
pub fn haxm_mmio_storm(_: &Ctx) -> R<String> {
    hostile(STORM_ITERATIONS)
}

fn hostile(iterations: u32) -> R<String> {
    let storm_exits = 8 * u64::from(iterations);
    let shell = Shell::new()?;
    // The witness VM.
    let wram = Ram::new(0x1_0000)?;
    wram.write(0x1000, &[0xB0, 0x55, 0xE6, 0x80, 0xF4, 0xEB, 0xF9]);
    let (_wsys, _wvm, mut w) = simple_vm(&shell, &wram)?;
    qemu_set(&w, &real_mode_at(0x1000), &qemu_msrs())?;
    witness(&mut w, "start")?;

    // The hostile VM.
    let ram = Ram::zeroed(RAM_BYTES)?;
    ram.write(CODE, guest_code());
    for (i, h) in HOLE_LIST.iter().enumerate() {
        ram.write(HOLES + 16 * i as u64, &h.to_le_bytes());
    }
    ram.write(HOLES_N, &(HOLE_LIST.len() as u32).to_le_bytes());
    ram.write(STORM_N, &iterations.to_le_bytes());
    let (s, msrs) = long_mode(&ram);
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &s, &msrs)?;
    let mut c = Client {
        win: (0..0x1000u32).map(|i| (i * 7 + 1) as u8).collect(),
        counts: Counts::default(),
        holes_seen: Vec::new(),
    };

    // 1. Holes.
    if c.run_phase(&mut v)? != Some(1) {
        return Err(String::from("phase 1 (holes) did not end with its OUT"));
    }
    if c.holes_seen != HOLE_LIST {
        return Err(format!(
            "holes read {:x?}, expected {HOLE_LIST:x?}",
            c.holes_seen
        ));
    }
    for (i, h) in HOLE_LIST.iter().enumerate() {
        let got = ram.read(HOLES + 16 * i as u64 + 8, 8);
        let got = u64::from_le_bytes(got.try_into().unwrap_or([0; 8]));
        if got != hole_value(*h) {
            return Err(format!("hole {h:#x}: the guest read {got:#x}"));
        }
    }
    witness(&mut w, "the holes")?;

    // 2. The storm.
    let before = c.counts;
    let first = c.load(WIN + 16, 4);
    if c.run_phase(&mut v)? != Some(2) {
        return Err(String::from("phase 2 (storm) did not end with its OUT"));
    }
    let n = u64::from(iterations);
    let storm = Counts {
        reads: c.counts.reads - before.reads,
        writes: c.counts.writes - before.writes,
        moves: c.counts.moves - before.moves,
    };
    let want = Counts {
        reads: 3 * n,
        writes: 4 * n,
        moves: n,
    };
    if storm != want {
        return Err(format!("storm exits {storm:?}, expected {want:?}"));
    }
    if c.load(WIN + 16, 4) != (first + n) & 0xffff_ffff {
        return Err(format!("storm counter {:#x}", c.load(WIN + 16, 4)));
    }
    if c.load(WIN + 0x300, 4) != c.load(WIN + 0x200, 4) || c.load(WIN + 8, 4) != c.load(WIN, 4) {
        return Err(String::from("storm: moved or stored data wrong"));
    }
    witness(&mut w, "the storm")?;

    // 3. rep movsd MMIO to MMIO.
    let before = c.counts;
    if c.run_phase(&mut v)? != Some(3) {
        return Err(String::from("phase 3 (rep movsd) did not end with its OUT"));
    }
    if c.counts.moves - before.moves != 16 || c.win[0x800..0x840] != c.win[0x400..0x440] {
        return Err(format!(
            "rep movsd: {} move exits, data {}",
            c.counts.moves - before.moves,
            if c.win[0x800..0x840] == c.win[0x400..0x440] {
                "copied"
            } else {
                "not copied"
            }
        ));
    }
    witness(&mut w, "rep movsd")?;

    // 4. An instruction the emulator does not carry out: STATECHANGE carrying its bytes
    // (`fld dword ptr [r8]` = 41 D9 00) and the MMIO address.
    if c.run_phase(&mut v)?.is_some() {
        return Err(String::from("fld on MMIO did not stop the vCPU"));
    }
    match v.unemulated() {
        Some(u) if u.gpa == WIN && u.bytes[..3] == [0x41, 0xD9, 0x00] => {}
        other => return Err(format!("STATECHANGE of fld: record {other:x?}")),
    }
    let st = v.get_regs().map_err(e("GET_REGS after STATECHANGE"))?;
    if c.run_phase(&mut v)?.is_some() {
        return Err(String::from("STATECHANGE is not sticky"));
    }
    witness(&mut w, "the unknown instruction")?;

    // 5. Code running off the end of RAM into MMIO, in a fresh VM.
    let ram2 = Ram::zeroed(RAM_BYTES)?;
    let mut code = vec![0x48, 0xBB]; // mov rbx, WIN
    code.extend_from_slice(&WIN.to_le_bytes());
    code.push(0xB8); // mov eax, RAM_BYTES - 2
    code.extend_from_slice(&(RAM_BYTES as u32 - 2).to_le_bytes());
    code.extend_from_slice(&[0xFF, 0xE0]); // jmp rax
    ram2.write(CODE, &code);
    // mov eax, [rbx+0x10]: two bytes in RAM, the displacement in the unbacked page.
    ram2.write(RAM_BYTES - 2, &[0x8B, 0x43]);
    let (s2, msrs2) = long_mode(&ram2);
    let (_sys2, _vm2, mut v2) = simple_vm(&shell, &ram2)?;
    qemu_set(&v2, &s2, &msrs2)?;
    if c.run_phase(&mut v2)?.is_some() {
        return Err(String::from("code running into MMIO did not stop the vCPU"));
    }
    witness(&mut w, "code running into MMIO")?;
    Ok(format!(
        "{} holes, {} storm exits, 16 MMIO-to-MMIO moves, fld on MMIO and code running into \
         MMIO stopped their vCPUs (RIP {:#x}); the witness VM ran after each",
        HOLE_LIST.len(),
        storm_exits,
        st.rip
    ))
}
