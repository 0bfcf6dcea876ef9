//! The MMIO emulator through the HAXM RUN path (issue 11), with a memory-like MMIO device on
//! the client side (reads return what was written; MMIO-to-MMIO moves copy).
//!
//! * `haxm-mmio`: the differential test of `mmio_guest.rs` in 32-bit protected mode and in
//!   64-bit mode: every instruction family the emulator handles, run once on RAM by the CPU
//!   and once on MMIO by rhax, compared by the guest (registers, flags, XMM, memory).
//! * `haxm-vga`: SeaBIOS's VGA clear in real mode: `rep stosw` of 2000 words to 0xB8000
//!   (unmapped, so MMIO), a read-modify-write, `rep movsw` from the text buffer to RAM and a
//!   backward `repe scasw` over the whole buffer, MOV with moffs operands both ways and a MOV
//!   to DS from the text buffer; the device and RAM contents checked.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use rhax::api::{IoDirection, MmioDirection};
use rhax::Exit;

use crate::haxm::{
    e, flat, qemu_msrs, qemu_reset_state, qemu_set, real_mode_at, simple_vm, write_gdt, Ram, R, V,
};
use crate::hv::Shell;
use crate::mmio_guest as g;
use crate::scenarios::Ctx;

const RAM_BYTES: u64 = 0x4_0000;
const PML4: u64 = 0x1_0000;
/// More exits than any of these guests needs: a runaway guest ends the scenario.
const MAX_EXITS: u64 = 2_000_000;

/// A memory-like MMIO device over one window.
struct Device {
    base: u64,
    bytes: Vec<u8>,
    reads: u64,
    writes: u64,
    moves: u64,
}

impl Device {
    fn new(base: u64, len: usize) -> Device {
        Device {
            base,
            bytes: vec![0; len],
            reads: 0,
            writes: 0,
            moves: 0,
        }
    }

    fn range(&self, gpa: u64, size: u8) -> R<core::ops::Range<usize>> {
        let off = gpa.wrapping_sub(self.base) as usize;
        let end = off.wrapping_add(usize::from(size));
        if !matches!(size, 1 | 2 | 4 | 8) || gpa < self.base || end > self.bytes.len() {
            return Err(format!(
                "MMIO access of {size} bytes at {gpa:#x} outside the device"
            ));
        }
        Ok(off..end)
    }

    fn load(&self, gpa: u64, size: u8) -> R<u64> {
        let r = self.range(gpa, size)?;
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&self.bytes[r]);
        Ok(u64::from_le_bytes(b))
    }

    fn store(&mut self, gpa: u64, size: u8, value: u64) -> R<()> {
        let r = self.range(gpa, size)?;
        let n = r.len();
        self.bytes[r].copy_from_slice(&value.to_le_bytes()[..n]);
        Ok(())
    }

    /// Serves one FAST_MMIO exit.
    fn serve(&mut self, m: &mut rhax::MmioExit<'_>) -> R<()> {
        match m.direction {
            MmioDirection::Read => {
                self.reads += 1;
                let v = self.load(m.gpa, m.size)?;
                m.complete_read(v).map_err(e("complete_read"))
            }
            MmioDirection::Write => {
                self.writes += 1;
                self.store(m.gpa, m.size, m.write_data())
            }
            MmioDirection::Move => {
                self.moves += 1;
                let to = m.gpa2.ok_or("MMIO move without gpa2")?;
                let v = self.load(m.gpa, m.size)?;
                self.store(to, m.size, v)
            }
        }
    }
}

/// What the guest reported on its ports, and the state of the exit loop.
#[derive(Default)]
struct Report {
    done: Option<u32>,
    no_movbe: bool,
    mismatches: Vec<String>,
    mismatch_count: usize,
    outs: Vec<(u16, u32)>,
    exits: u64,
}

fn out_value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

/// RUNs until HLT, serving MMIO from `dev` and recording OUTs with `on_out`.
fn run_to_hlt(
    v: &mut V<'_>,
    dev: &mut Device,
    report: &mut Report,
    mut on_out: impl FnMut(&mut Report, u16, u32) -> R<()>,
) -> R<()> {
    loop {
        report.exits += 1;
        if report.exits > MAX_EXITS {
            return Err(format!("more than {MAX_EXITS} exits"));
        }
        match v.run().map_err(e("RUN"))? {
            Exit::FastMmio(mut m) => dev.serve(&mut m)?,
            Exit::Io {
                direction: IoDirection::Out,
                port,
                data,
                string: false,
                ..
            } => {
                let value = out_value(data);
                on_out(report, port, value)?;
            }
            Exit::Hlt => return Ok(()),
            Exit::Interrupt => {}
            other => {
                let text = format!("{other:?}");
                let s = v.get_regs().map_err(e("GET_REGS"))?;
                return Err(format!(
                    "unexpected exit {text} at CS base {:#x} RIP {:#x}",
                    s.cs.base, s.rip
                ));
            }
        }
    }
}

/// The guest's test names ("i1|i2|...", NUL-terminated) as "i1; i2".
fn names(table: &[u8]) -> Vec<String> {
    table
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let text = core::str::from_utf8(s).unwrap_or("?");
            let parts: Vec<&str> = text.split('|').filter(|p| !p.is_empty()).collect();
            parts.join("; ")
        })
        .collect()
}

/// The byte pattern of the buffer (a permutation of 0..=255: 37 is odd).
fn pattern(i: u64) -> u8 {
    (i * 37 + 0x5b) as u8
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Protected,
    Long,
}

/// Names of the saved registers, in save order.
const REGS32: [&str; 8] = ["EDI", "ESI", "EBP", "ESP", "EBX", "EDX", "ECX", "EAX"];
const REGS64: [&str; 15] = [
    "R15", "R14", "R13", "R12", "R11", "R10", "R9", "R8", "RDI", "RSI", "RBP", "RBX", "RDX", "RCX",
    "RAX",
];

/// Describes mismatch `code` of test `name` from the two saves in guest RAM.
fn describe(ram: &Ram, mode: Mode, name: &str, code: u32) -> String {
    let a = ram.read(g::AREA_A, g::AREA_LEN as usize);
    let b = ram.read(g::AREA_B, g::AREA_LEN as usize);
    let (width, regs): (usize, &[&str]) = match mode {
        Mode::Protected => (4, &REGS32),
        Mode::Long => (8, &REGS64),
    };
    let word = |area: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w[..width].copy_from_slice(&area[i * width..(i + 1) * width]);
        u64::from_le_bytes(w)
    };
    let mut out = format!("[{name}]");
    for (i, r) in regs.iter().enumerate() {
        if code & (1 << i) != 0 {
            out += &format!(" {r}: CPU {:#x}, rhax {:#x};", word(&a, i), word(&b, i));
        }
    }
    if code & (1 << 16) != 0 {
        let i = regs.len();
        out += &format!(" FLAGS: CPU {:#x}, rhax {:#x};", word(&a, i), word(&b, i));
    }
    if code & (1 << 17) != 0 {
        let diffs: Vec<String> = (g::AREA_XMM as usize..g::AREA_LEN as usize)
            .filter(|&i| a[i] != b[i])
            .take(6)
            .map(|i| {
                let (what, off) = if i < g::AREA_BUF as usize {
                    ("xmm", i - g::AREA_XMM as usize)
                } else if i < g::AREA_SIDE as usize {
                    ("buf", i - g::AREA_BUF as usize)
                } else {
                    ("side", i - g::AREA_SIDE as usize)
                };
                format!("{what}[{off:#x}] CPU {:#04x} rhax {:#04x}", a[i], b[i])
            })
            .collect();
        out += &format!(" memory: {}", diffs.join(", "));
    }
    out
}

/// One mode of `haxm-mmio`: (tests compared, MMIO exits).
fn differential(mode: Mode) -> R<(usize, u64)> {
    let ram = Ram::zeroed(RAM_BYTES)?;
    let (code, table) = match mode {
        Mode::Protected => (g::code32(), g::names32()),
        Mode::Long => (g::code64(), g::names64()),
    };
    if code.len() as u64 > g::CODE_MAX {
        return Err(format!("guest code of {} bytes does not fit", code.len()));
    }
    ram.write(g::CODE, code);
    let pat: Vec<u8> = (0..g::BUF_LEN).map(pattern).collect();
    let mut pat2 = pat.clone();
    pat2[0x23] ^= 0x5a; // `repe cmpsb` stops there
    ram.write(g::PAT, &pat);
    ram.write(g::PAT2, &pat2);
    let xmm: Vec<u8> = (0..32u64).map(|i| (i * 29 + 0x31) as u8).collect();
    ram.write(g::XMMPAT, &xmm);
    let mut s = qemu_reset_state();
    let mut msrs = qemu_msrs();
    match mode {
        Mode::Protected => {
            write_gdt(&ram, 0x00CF_9B00_0000_FFFF);
            flat(&mut s, 0xC09B);
            s.cr0 = 0x33; // NE | ET | MP | PE
            s.cr4 = 0x600; // OSXMMEXCPT | OSFXSR
        }
        Mode::Long => {
            write_gdt(&ram, 0x00AF_9B00_0000_FFFF);
            flat(&mut s, 0xA09B); // L = 1, D = 0
                                  // PML4 -> PDPT; PDPT[0] -> PD (identity 2 MiB); PDPT[3] -> PD2 with the 2-MiB page
                                  // at 0xD0000000 (P | RW | PS), the MMIO window.
            ram.write(PML4, &(0x11000u64 | 3).to_le_bytes());
            ram.write(0x11000, &(0x12000u64 | 3).to_le_bytes());
            ram.write(0x11018, &(0x13000u64 | 3).to_le_bytes());
            ram.write(0x12000, &0x83u64.to_le_bytes());
            ram.write(0x13000 + 8 * 128, &(0xD000_0000u64 | 0x83).to_le_bytes());
            s.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE
            s.cr4 = 0x620; // OSXMMEXCPT | OSFXSR | PAE
            s.cr3 = PML4;
            for m in &mut msrs {
                if m.entry == 0xC000_0080 {
                    m.value = 0x500; // LME | LMA
                }
            }
        }
    }
    s.rip = g::CODE;
    let shell = Shell::new()?;
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &s, &msrs)?;
    let names = names(table);
    let mut dev = Device::new(g::MMIO & !0xfff, 0x1000);
    let mut report = Report::default();
    run_to_hlt(&mut v, &mut dev, &mut report, |r, port, value| {
        match port {
            g::PORT_MISMATCH => {
                r.mismatch_count += 1;
                if r.mismatches.len() < 8 {
                    let index = (value >> 18) as usize;
                    let name = names.get(index).map_or("?", String::as_str);
                    r.mismatches
                        .push(describe(&ram, mode, name, value & 0x3_ffff));
                }
            }
            g::PORT_DONE => r.done = Some(value),
            g::PORT_NO_MOVBE => r.no_movbe = true,
            other => return Err(format!("OUT to port {other:#x}")),
        }
        Ok(())
    })?;
    let skipped = if report.no_movbe {
        names.iter().filter(|n| n.contains("movbe")).count()
    } else {
        0
    };
    let want = names.len() - skipped;
    let mode_name = match mode {
        Mode::Protected => "32-bit",
        Mode::Long => "64-bit",
    };
    if report.mismatch_count != 0 {
        return Err(format!(
            "{mode_name}: {} of {want} tests differ between the CPU and rhax: {}",
            report.mismatch_count,
            report.mismatches.join(" | ")
        ));
    }
    if report.done != Some(want as u32) {
        return Err(format!(
            "{mode_name}: the guest ran {:?} tests, {want} expected",
            report.done
        ));
    }
    Ok((want, dev.reads + dev.writes + dev.moves))
}

/// `haxm-mmio`: the differential test in both modes.
pub fn haxm_mmio(_: &Ctx) -> R<String> {
    let (n32, x32) = differential(Mode::Protected)?;
    let (n64, x64) = differential(Mode::Long)?;
    Ok(format!(
        "{n32} tests in 32-bit protected mode, {n64} in 64-bit mode, CPU and rhax agree; \
         {} FAST_MMIO exits",
        x32 + x64
    ))
}

/// `haxm-vga`: SeaBIOS's VGA text clear and friends in real mode.
pub fn haxm_vga(_: &Ctx) -> R<String> {
    let ram = Ram::zeroed(RAM_BYTES)?;
    ram.write(0x1000, g::vga16());
    let shell = Shell::new()?;
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &real_mode_at(0x1000), &qemu_msrs())?;
    let mut dev = Device::new(0xB8000, 0x1000);
    let mut report = Report::default();
    run_to_hlt(&mut v, &mut dev, &mut report, |r, port, value| {
        r.outs.push((port, value));
        Ok(())
    })?;
    let want_outs = [
        (0xE2u16, 0x0821u32),
        (0xE4, 1),
        (0xE6, 0x0821),
        (0xE7, 0x0720),
    ];
    if report.outs != want_outs {
        return Err(format!("OUTs {:x?}, expected {want_outs:x?}", report.outs));
    }
    for i in 0..2000u64 {
        let want = match i {
            1 => 0x0821,
            3 => 0x0721, // the moffs store of AL's 0x21
            _ => 0x0720,
        };
        let got = dev.load(0xB8000 + 2 * i, 2)?;
        if got != want {
            return Err(format!("text word {i}: {got:#x}, expected {want:#x}"));
        }
    }
    let copied = ram.read(0x600, 6);
    if copied != [0x21, 0x08, 0x20, 0x07, 0x20, 0x07] {
        return Err(format!("rep movsw copied {copied:x?}"));
    }
    // 2000 STOSW + ADD's write + the moffs store; ADD's read + MOV + 3 MOVSW + 1999 SCASW +
    // the moffs load + the segment-register load.
    if (dev.writes, dev.reads) != (2002, 2006) {
        return Err(format!(
            "{} MMIO writes and {} reads, expected 2002 and 2006",
            dev.writes, dev.reads
        ));
    }
    Ok(format!(
        "rep stosw x2000, add, rep movsw, repe scasw x1999, moffs load and store, MOV DS from the text buffer: {} FAST_MMIO exits, {} RUNs",
        dev.writes + dev.reads,
        report.exits
    ))
}
