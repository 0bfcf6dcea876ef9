//! `haxm-apic`, third part: APIC-register virtualization (SDM Vol. 3C §30.4.2, §30.4.3,
//! §30.5) shown by exit counts. A 64-bit guest reads the xAPIC SVR 1,000 times, writes the
//! LVT timer 100 times (with the read-only delivery-status bit set), switches to x2APIC mode,
//! reads the SVR MSR 1,000 times and the timer's current count 100 times; an `out 0xE8`
//! ends each phase and the client takes the vCPU's exit counters there. Where the CPU has
//! APIC-register virtualization with virtual-interrupt delivery (Bochs skylake_x) and the
//! flags allow it, the reads cause no exits and each write one APIC-write exit; otherwise
//! (sandy_bridge, or NO_APIC_VIRTUALIZATION) every read and write exits. The current count
//! always exits, and the values read are the model's either way.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rhax::api::ext::ApicFlags;
use rhax::api::{IoDirection, RamFlags};

use crate::haxm::{e, qemu_init, step, write_gdt, Ev, Ram, R, V};
use crate::haxm_apic::{long_mode, page_tables};
use crate::haxm_apic_guest::CODE;
use crate::hv::Shell;

/// Where the guest stores what it read: SVR (xAPIC), LVT timer, SVR (x2APIC).
const RESULTS: u64 = 0x3000;
/// The phase marks and the end.
pub(crate) const PORT_PHASE: u16 = 0xE8;
pub(crate) const PORT_END: u16 = 0xE9;
/// Exit reasons counted (SDM Vol. 3C Appendix C), in the order [`counts`] returns them.
const REASONS: [usize; 4] = [31, 44, 48, 56];
/// Their positions: RDMSR, APIC access, EPT violation, APIC write.
const RDMSR: usize = 0;
pub(crate) const APIC_ACCESS: usize = 1;
pub(crate) const EPT_VIOLATION: usize = 2;
const APIC_WRITE: usize = 3;
/// Loop lengths.
const READS: u32 = 1000;
const WRITES: u32 = 100;

/// A counted loop: `mov esi, n`, `body`, `dec esi`, `jnz` back to the body.
pub(crate) fn counted(code: &mut Vec<u8>, n: u32, body: &[u8]) {
    code.push(0xBE); // mov esi, imm32
    code.extend(n.to_le_bytes());
    code.extend(body);
    code.extend([0xFF, 0xCE]); // dec esi
    let back = -((body.len() + 4) as i32);
    code.extend([0x75, back as u8]); // jnz body
}

/// `mov [addr32], eax`.
pub(crate) fn store_eax(code: &mut Vec<u8>, addr: u64) {
    code.extend([0x89, 0x04, 0x25]);
    code.extend((addr as u32).to_le_bytes());
}

pub(crate) const OUT_PHASE: [u8; 2] = [0xE6, PORT_PHASE as u8];

fn guest() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend([0xBB, 0x00, 0x00, 0xE0, 0xFE]); // mov ebx, 0xFEE00000
    // mov dword [rbx + 0xF0], 0x1FF: SVR, software-enabled.
    c.extend([0xC7, 0x83, 0xF0, 0x00, 0x00, 0x00, 0xFF, 0x01, 0x00, 0x00]);
    c.extend(OUT_PHASE); // 0: the baseline
    counted(&mut c, READS, &[0x8B, 0x83, 0xF0, 0x00, 0x00, 0x00]); // mov eax, [rbx + 0xF0]
    store_eax(&mut c, RESULTS);
    c.extend(OUT_PHASE); // 1: xAPIC reads
    // mov dword [rbx + 0x320], 0x11040: LVT timer masked, vector 0x40, delivery status set.
    counted(
        &mut c,
        WRITES,
        &[0xC7, 0x83, 0x20, 0x03, 0x00, 0x00, 0x40, 0x10, 0x01, 0x00],
    );
    c.extend([0x8B, 0x83, 0x20, 0x03, 0x00, 0x00]); // mov eax, [rbx + 0x320]
    store_eax(&mut c, RESULTS + 4);
    c.extend(OUT_PHASE); // 2: xAPIC writes
    c.extend([0xB9, 0x1B, 0x00, 0x00, 0x00]); // mov ecx, IA32_APIC_BASE
    c.extend([0x0F, 0x32, 0x0D, 0x00, 0x0C, 0x00, 0x00, 0x0F, 0x30]); // rdmsr; or eax, 0xC00; wrmsr
    c.extend(OUT_PHASE); // 3: x2APIC mode
    counted(&mut c, READS, &[0xB9, 0x0F, 0x08, 0x00, 0x00, 0x0F, 0x32]); // SVR
    store_eax(&mut c, RESULTS + 8);
    c.extend(OUT_PHASE); // 4: x2APIC reads
    counted(&mut c, WRITES, &[0xB9, 0x39, 0x08, 0x00, 0x00, 0x0F, 0x32]); // current count
    c.extend(OUT_PHASE); // 5: current-count reads
    c.extend([0xE6, PORT_END as u8]);
    c
}

/// The exit counts of the reasons above.
pub(crate) fn counts(v: &V<'_>) -> R<[u64; 4]> {
    let s = v.stats().map_err(e("GET_STATS"))?;
    let n = |r: usize| s.per_reason.get(r).map_or(0, |x| x.exits);
    Ok(REASONS.map(n))
}

/// Runs the guest; the counts at each phase mark.
pub(crate) fn drive(v: &mut V<'_>) -> R<Vec<[u64; 4]>> {
    let mut marks = Vec::new();
    for _ in 0..10_000 {
        match step(v, 0)? {
            Ev::Io {
                dir: IoDirection::Out,
                port: PORT_PHASE,
                ..
            } => marks.push(counts(v)?),
            Ev::Io {
                dir: IoDirection::Out,
                port: PORT_END,
                ..
            } => return Ok(marks),
            Ev::Interrupt => {}
            other => return Err(format!("ARV guest: unexpected exit {other:?}")),
        }
    }
    Err(String::from("ARV guest: no end"))
}

/// Whether this CPU offers APIC-register virtualization and virtual-interrupt delivery
/// (IA32_VMX_PROCBASED_CTLS2 allowed-1 bits 8 and 9, SDM Vol. 3C Appendix A.3.3), which rhax
/// turns on together.
fn cpu_has_arv() -> bool {
    // SAFETY: the harness runs VMX on this CPU, so the VMX capability MSRs exist; the
    // secondary controls exist on every Bochs model the scenario runs on.
    let allowed1 = unsafe { crate::arch::rdmsr(0x48B) } >> 32;
    allowed1 & (0b11 << 8) == 0b11 << 8
}

/// A VM with the in-kernel APIC (`flags`) and one 64-bit vCPU running `code` at [`CODE`]
/// (the 4th GiB identity-mapped uncached: the xAPIC pages); `f` drives it.
pub(crate) fn with_apic_vm<T>(
    code: &[u8],
    flags: ApicFlags,
    f: impl FnOnce(&mut V<'_>, &Ram) -> R<T>,
) -> R<T> {
    let ram = Ram::zeroed(0x2_0000)?;
    ram.write(CODE, code);
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
    f(&mut v, &ram)
}

/// One VM; the checks' failures appended. Returns the number of checks.
fn one(flags: ApicFlags, fails: &mut Vec<String>) -> R<usize> {
    with_apic_vm(&guest(), flags, |v, ram| judge_arv(v, ram, flags, fails))
}

fn judge_arv(v: &mut V<'_>, ram: &Ram, flags: ApicFlags, fails: &mut Vec<String>) -> R<usize> {
    let marks = drive(v)?;
    let [m0, m1, m2, m3, m4, m5] = marks[..] else {
        return Err(format!("ARV guest: {} phase marks, expected 6", marks.len()));
    };
    // Per phase: the exits of each reason (the marks' own `out`s are IO exits, not counted).
    let d = |a: [u64; 4], b: [u64; 4], i: usize| b[i].saturating_sub(a[i]);
    let arv = cpu_has_arv() && !flags.contains(ApicFlags::NO_APIC_VIRTUALIZATION);
    let tag = format!("ARV {flags:?} (ARV {})", if arv { "on" } else { "off" });
    let xreads = d(m0, m1, APIC_ACCESS) + d(m0, m1, EPT_VIOLATION);
    let xwrite_access = d(m1, m2, APIC_ACCESS) + d(m1, m2, EPT_VIOLATION);
    let xwrite_trap = d(m1, m2, APIC_WRITE);
    let x2reads = d(m3, m4, RDMSR);
    let counts = d(m4, m5, RDMSR);
    crate::println!(
        "haxm-apic: {tag}: exits for {READS} xAPIC reads {xreads}, {WRITES} xAPIC writes \
         {xwrite_access} access + {xwrite_trap} APIC-write, {READS} x2APIC RDMSRs {x2reads}, \
         {WRITES} current-count RDMSRs {counts}"
    );
    let mut check = |name: &str, ok: bool, got: String| {
        if !ok {
            fails.push(format!("{tag}: {name}: {got}"));
        }
    };
    let n = u64::from(READS);
    let w = u64::from(WRITES);
    if arv {
        check("1000 xAPIC SVR reads: no exits", xreads == 0, format!("{xreads} exits"));
        check(
            "100 LVT writes: one APIC-write exit each",
            xwrite_trap == w && xwrite_access <= 1,
            format!("{xwrite_trap} APIC-write, {xwrite_access} other exits"),
        );
        check("1000 x2APIC SVR RDMSRs: no exits", x2reads == 0, format!("{x2reads} exits"));
    } else {
        check("1000 xAPIC SVR reads exit", xreads >= n, format!("{xreads} exits"));
        check(
            "100 LVT writes exit",
            xwrite_access >= w && xwrite_trap == 0,
            format!("{xwrite_access} access, {xwrite_trap} APIC-write exits"),
        );
        check("1000 x2APIC SVR RDMSRs exit", x2reads >= n, format!("{x2reads} exits"));
    }
    check(
        "100 current-count RDMSRs exit",
        counts >= w,
        format!("{counts} exits"),
    );
    let got = |i: u64| ram.u32(RESULTS + 4 * i);
    check("xAPIC SVR reads 0x1FF", got(0) == 0x1FF, format!("{:#x}", got(0)));
    check(
        "LVT timer reads 0x10040 (delivery status read-only)",
        got(1) == 0x1_0040,
        format!("{:#x}", got(1)),
    );
    check("x2APIC SVR reads 0x1FF", got(2) == 0x1FF, format!("{:#x}", got(2)));
    Ok(7)
}

/// The ARV checks: default flags (ARV where the CPU has it) and NO_APIC_VIRTUALIZATION.
pub(crate) fn arv_checks(fails: &mut Vec<String>) -> R<usize> {
    let mut n = one(ApicFlags::empty(), fails)?;
    n += one(ApicFlags::NO_APIC_VIRTUALIZATION, fails)?;
    Ok(n)
}
