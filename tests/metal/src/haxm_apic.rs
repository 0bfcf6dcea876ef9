//! `haxm-apic`: the in-kernel local APIC (issue 12) against a real guest, on emulated VT-x.
//!
//! A VM with `Vm::enable_apic(ENABLE)` runs the 64-bit guest of `haxm_apic_guest.rs`: one
//! suite in xAPIC mode (MMIO at 0xFEE00000: the APIC-access page and the TPR shadow where the
//! CPU has them) and again in x2APIC mode (MSRs), plus the xAPIC-only checks. The suite covers
//! TPR and CR8 priority, masked LVTs, LINT0, a level-triggered MSI (TMR), nesting with ISR order
//! and EOI, the three timer modes with the divide configuration, and NMI by ICR; the xAPIC part
//! the writable ID, IA32_APIC_BASE relocation and its #GP rules. The client plays the outside
//! world: it signals MSIs and moves LINT0 when the guest asks by OUT, and answers MMIO reads
//! (after relocation the old base must be plain MMIO). Every result is a named check.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rhax::api::ext::ApicFlags;
use rhax::api::{CpuidEntry, IoDirection, MmioDirection, RamFlags, VcpuState, VmxMsr};

use crate::arch::rdtsc;
use crate::haxm::{e, flat, qemu_init, qemu_msrs, qemu_reset_state, qemu_set, step, write_gdt};
use crate::haxm::{Ev, Ram, R, V};
use crate::haxm_apic_guest as g;
use crate::hv::Shell;
use crate::scenarios::Ctx;
use crate::time;

/// What the client answers for MMIO reads (the old APIC base after relocation).
const MMIO_ANSWER: u64 = 0x5A5A_5A5A;
/// RUNs before the scenario gives up.
const MAX_RUNS: usize = 200_000;

/// How a result is judged.
enum Want {
    Eq(u32),
    /// `lo <= value <= hi`.
    Range(u32, u32),
}

/// The suite's checks, run in both modes: (index, name, expectation).
const SUITE: &[(usize, &str, Want)] = &[
    (0, "APIC ID of vCPU 0", Want::Eq(0)),
    (1, "TPR reads back 0x50", Want::Eq(0x50)),
    (2, "TPR 0x50 blocks vector 0x45 (log entries)", Want::Eq(0)),
    (3, "blocked 0x45 pending in IRR", Want::Eq(0x20)),
    (4, "TPR 0: 0x45 delivered", Want::Eq(0x45)),
    (5, "TPR 0: one interrupt", Want::Eq(1)),
    (6, "MOV CR8 6: TPR reads 0x60", Want::Eq(0x60)),
    (7, "CR8 6 blocks vector 0x55 (log entries)", Want::Eq(0)),
    (8, "CR8 0: 0x55 delivered", Want::Eq(0x55)),
    (9, "TPR 0x30: CR8 reads 3", Want::Eq(3)),
    (
        10,
        "masked LINT0 and masked timer deliver nothing",
        Want::Eq(0),
    ),
    (11, "masked one-shot timer counted down to 0", Want::Eq(0)),
    (12, "LINT0 edge, fixed: 0x47 delivered", Want::Eq(0x47)),
    (13, "level-triggered MSI: 0x48 delivered", Want::Eq(0x48)),
    (
        14,
        "level-triggered 0x48: TMR bit set in service",
        Want::Eq(0x100),
    ),
    (15, "nesting: 0x50 first", Want::Eq(0x50)),
    (16, "nesting: 0x60 preempts inside 0x50", Want::Eq(0x60)),
    (17, "nesting: 0x50 finishes", Want::Eq(0x150)),
    (
        18,
        "nesting: lower class 0x41 after 0x50's EOI",
        Want::Eq(0x41),
    ),
    (19, "nesting: four log entries", Want::Eq(4)),
    (
        20,
        "ISR[2] in 0x60: 0x50 in service, 0x41 not",
        Want::Eq(0x1_0000),
    ),
    (21, "ISR[3] in 0x60: 0x60 in service", Want::Eq(1)),
    (
        22,
        "EOI in 0x60 clears the highest ISR bit (0x60)",
        Want::Eq(0),
    ),
    (23, "EOI in 0x60 leaves 0x50 in service", Want::Eq(0x1_0000)),
    (24, "ISR[2] empty after the handlers", Want::Eq(0)),
    (25, "divide configuration reads back 0xB", Want::Eq(0xB)),
    (26, "one-shot timer fires once", Want::Eq(1)),
    (27, "one-shot: current count 0 after", Want::Eq(0)),
    (28, "periodic: the count reloaded", Want::Range(1, 3000)),
    (29, "periodic timer fires 3 times", Want::Eq(3)),
    (32, "TSC-deadline timer fires once", Want::Eq(1)),
    (33, "TSC-deadline fires at/after the deadline", Want::Eq(1)),
    (34, "IA32_TSC_DEADLINE 0 after it fired", Want::Eq(0)),
    (35, "IA32_TSC_DEADLINE 0 disarms", Want::Eq(1)),
    (36, "NMI by ICR: the NMI handler ran", Want::Eq(0x102)),
    (
        37,
        "version: EOI-broadcast suppression offered",
        Want::Eq(0x100_0000),
    ),
    (
        38,
        "SVR bit 12 (suppress EOI broadcast) writable",
        Want::Eq(0x11FF),
    ),
];

/// The xAPIC-only checks.
const XONLY: &[(usize, &str, Want)] = &[
    (0, "xAPIC ID writable", Want::Eq(0x0500_0000)),
    (
        1,
        "IA32_APIC_BASE at reset: 0xFEE00000 | EN | BSP",
        Want::Eq(0xFEE0_0900),
    ),
    (2, "relocated base: TPR reads back 0x40", Want::Eq(0x40)),
    (3, "relocated base: CR8 reads 4", Want::Eq(4)),
    (4, "relocated base: self-IPI 0x46 delivered", Want::Eq(0x46)),
    (
        5,
        "relocated base: the old base is plain MMIO",
        Want::Eq(MMIO_ANSWER as u32),
    ),
    (7, "IA32_APIC_BASE: 4 invalid writes #GP", Want::Eq(4)),
    (
        8,
        "IA32_APIC_BASE: x2APIC mode from xAPIC",
        Want::Eq(0xFEE0_0D00),
    ),
    (9, "x2APIC: WRMSR to the ID #GP", Want::Eq(1)),
    (
        10,
        "x2APIC mode: the xAPIC page is plain MMIO",
        Want::Eq(MMIO_ANSWER as u32),
    ),
];

fn judge(bank: &str, ram: &Ram, base: u64, list: &[(usize, &str, Want)], fails: &mut Vec<String>) {
    for (i, name, want) in list {
        let got = ram.u32(base + 4 * *i as u64);
        let ok = match want {
            Want::Eq(w) => got == *w,
            Want::Range(lo, hi) => (*lo..=*hi).contains(&got),
        };
        if !ok {
            let w = match want {
                Want::Eq(w) => format!("{w:#x}"),
                Want::Range(lo, hi) => format!("{lo:#x}..={hi:#x}"),
            };
            fails.push(format!("{bank}: {name}: got {got:#x}, expected {w}"));
        }
    }
}

/// The divide check: the count with divide-by-1 falls about 128 times as fast as with 128.
fn judge_divide(bank: &str, ram: &Ram, base: u64, fails: &mut Vec<String>) {
    let d1 = u64::from(ram.u32(base + 4 * 30));
    let d128 = u64::from(ram.u32(base + 4 * 31));
    if d128 == 0 || d1 < 32 * d128 || d1 > 512 * d128 {
        fails.push(format!(
            "{bank}: divide 1 vs 128: count fell {d1} vs {d128} over the same spin"
        ));
    }
}

/// Page tables at 0x10000: the first 2 MiB and the 4th GiB identity-mapped with 2-MiB pages
/// (the 4th GiB uncached: the APIC and the relocated base are there).
pub(crate) fn page_tables(ram: &Ram) {
    ram.write(0x10000, &(0x11000u64 | 3).to_le_bytes());
    ram.write(0x11000, &(0x12000u64 | 3).to_le_bytes());
    ram.write(0x11018, &(0x13000u64 | 3).to_le_bytes());
    ram.write(0x12000, &0x83u64.to_le_bytes());
    for i in 0..512u64 {
        let pa = 0xC000_0000 + (i << 21);
        ram.write(0x13000 + 8 * i, &(pa | 0x9B).to_le_bytes()); // P RW PWT PCD PS
    }
}

/// CPUID leaf 1 with x2APIC (ECX bit 21) and TSC-deadline (bit 24), as QEMU sets it.
pub(crate) fn apic_cpuid(v: &V<'_>) -> R<()> {
    let leaf1 = CpuidEntry {
        function: 1,
        ecx: (1 << 21) | (1 << 24),
        edx: 1 << 9, // APIC
        ..CpuidEntry::default()
    };
    v.set_cpuid(&[leaf1]).map_err(e("SET_CPUID"))
}

/// CPUID with the APIC features, then 64-bit mode at [`g::CODE`] with the tables of
/// [`page_tables`] (CR0.PG, CR4.PAE, CR3 by SET_REGS, EFER by SET_MSRS as QEMU sends them).
pub(crate) fn long_mode(v: &V<'_>) -> R<()> {
    apic_cpuid(v)?;
    let mut s: VcpuState = qemu_reset_state();
    flat(&mut s, 0xA09B); // L = 1, D = 0
    s.rip = g::CODE;
    s.cr0 = 0x8000_0011; // PG | ET | PE
    s.cr4 = 0x20; // PAE
    s.cr3 = 0x10000;
    let mut msrs: Vec<VmxMsr> = qemu_msrs();
    for m in &mut msrs {
        if m.entry == 0xC000_0080 {
            m.value = 0x500; // LME | LMA
        }
    }
    qemu_set(v, &s, &msrs)
}

/// Runs the guest to its end, serving the OUT requests, HLT and MMIO reads.
fn drive(v: &mut V<'_>, vm: &rhax::Vm<crate::hv::KernelTransport<'_>>, ram: &Ram) -> R<usize> {
    let mut spins = 0;
    for runs in 0..MAX_RUNS {
        let ev = step(v, MMIO_ANSWER)?;
        if ev == Ev::Interrupt {
            spins += 1;
            if spins < 1000 {
                continue;
            }
        } else {
            spins = 0;
        }
        match ev {
            Ev::Io {
                dir: IoDirection::Out,
                port,
                data,
                ..
            } => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                let val = u32::from_le_bytes(b);
                match port {
                    g::PORT_MSI => vm.signal_msi(0xFEE0_0000, val).map_err(e("SIGNAL_MSI"))?,
                    g::PORT_LINT0 => v.apic_lint(0, val != 0, 0).map_err(e("APIC_LINT"))?,
                    g::PORT_DONE => return Ok(runs),
                    _ => return Err(format!("guest OUT to port {port:#x} ({val:#x})")),
                }
            }
            Ev::Hlt => {}
            Ev::Mmio {
                gpa,
                dir: MmioDirection::Read,
                ..
            } if gpa & !0xfff == 0xFEE0_0000 => {}
            other => {
                let (rip, rsp) = v.get_regs().map(|s| (s.rip, s.regs[4])).unwrap_or((0, 0));
                let log: Vec<u32> = (0..8).map(|i| ram.u32(g::LOG + 4 * i)).collect();
                let bank: Vec<u32> = (0..12).map(|i| ram.u32(g::BANK_X + 4 * i)).collect();
                let reasons: Vec<(usize, u64)> = v
                    .stats()
                    .map(|st| {
                        st.per_reason
                            .iter()
                            .enumerate()
                            .filter(|(_, r)| r.exits != 0)
                            .map(|(i, r)| (i, r.exits))
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "unexpected exit {other:?} at RIP {rip:#x} RSP {rsp:#x}; log {log:x?}; \
                     xAPIC results {bank:x?}; exits by reason {reasons:?}"
                ));
            }
        }
    }
    Err(format!("no end after {MAX_RUNS} RUNs"))
}

/// One VM, one vCPU: the guest's suites; failures appended. With the APIC-access page, the
/// relocation (xAPIC-only check 5) and x2APIC mode (check 10) show the page dropped: the old
/// base is plain MMIO then (before, the page stayed mapped and the CPU went on virtualizing
/// TPR reads there).
fn one_vm(flags: ApicFlags, fails: &mut Vec<String>) -> R<usize> {
    let ram = Ram::zeroed(0x2_0000)?;
    let code = g::code();
    if code.len() as u64 > g::STACK_TOP - 0x1000 - g::CODE {
        return Err(format!("guest code {} bytes: too large", code.len()));
    }
    ram.write(g::CODE, code);
    write_gdt(&ram, 0x00AF_9B00_0000_FFFF);
    page_tables(&ram);
    let shell = Shell::new()?;
    let sys = rhax::System::open(shell.transport()).map_err(e("open \\\\.\\HAX"))?;
    let vm = qemu_init(&sys)?;
    // SAFETY: `ram` is kernel pages that outlive the VM (declared first, dropped last).
    unsafe { vm.add_ramblock(ram.addr, ram.len()) }.map_err(e("ADD_RAMBLOCK"))?;
    vm.set_ram(0, ram.len() as u32, ram.addr, RamFlags::empty())
        .map_err(e("SET_RAM"))?;
    vm.enable_apic(ApicFlags::ENABLE | flags)
        .map_err(e("ENABLE_APIC"))?;
    let mut v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
    long_mode(&v)?;
    let runs = drive(&mut v, &vm, &ram)?;
    let tag = |bank: &str| format!("{bank} {flags:?}");
    judge(&tag("xAPIC"), &ram, g::BANK_X, SUITE, fails);
    judge_divide(&tag("xAPIC"), &ram, g::BANK_X, fails);
    judge(&tag("x2APIC"), &ram, g::BANK_X2, SUITE, fails);
    judge_divide(&tag("x2APIC"), &ram, g::BANK_X2, fails);
    judge(&tag("xAPIC-only"), &ram, g::XBANK, XONLY, fails);
    Ok(runs)
}

/// See the module documentation.
pub fn haxm_apic(_: &Ctx) -> R<String> {
    let t0 = rdtsc();
    let mut fails = Vec::new();
    // The accelerations the CPU offers (APIC-access page, TPR shadow, virtual-interrupt
    // delivery where present), then the xAPIC page as EPT-violation MMIO.
    let runs = one_vm(ApicFlags::empty(), &mut fails)?;
    let runs2 = one_vm(ApicFlags::NO_APIC_ACCESS_PAGE, &mut fails)?;
    let mut checks = 2 * (2 * (SUITE.len() + 1) + XONLY.len());
    match crate::haxm_apic_smp::smp_checks() {
        Ok(n) => checks += n,
        Err(f) => fails.push(f),
    }
    checks += crate::haxm_apic_arv::arv_checks(&mut fails)?;
    checks += crate::haxm_apic_remap::remap_checks(&mut fails)?;
    if !fails.is_empty() {
        return Err(format!(
            "{} of {checks} checks failed: {}",
            fails.len(),
            fails.join("; ")
        ));
    }
    let ms = (rdtsc() - t0) * 1000 / time::tsc_hz().max(1);
    Ok(format!(
        "{checks} checks (xAPIC + x2APIC suites and xAPIC-only, with and without the \
         APIC-access page; 2-vCPU; APIC-register virtualization and the APIC-access page following the base, by exit counts), {} RUNs, {ms} ms of guest TSC",
        runs + runs2,
    ))
}
