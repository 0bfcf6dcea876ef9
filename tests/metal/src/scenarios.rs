//! The scenarios, selected by `scenarios=a,b,c` on the command line. Each prints
//! `scenario NAME: start`, then `scenario NAME: PASS [info]` or `scenario NAME: FAIL reason`.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{cpuid, cr0, cr4, rdmsr, rdtsc};
use crate::vmx::{self, VmxState, IA32_FEATURE_CONTROL, IA32_VMX_BASIC};
use crate::{
    bench_table, guests, haxm, haxm_apic, haxm_avx, haxm_debug, haxm_events, haxm_fpu, haxm_hostile,
    haxm_kick, haxm_mmio, haxm_mmio_hostile, haxm_quickboot, haxm_stat, interrupts, mm, println,
    smp,
};

/// What scenarios may know about the run.
pub struct Ctx {
    /// CPUs requested on the command line.
    pub cpus_wanted: usize,
    /// The kernel's command line (`key=value` words).
    pub cmdline: String,
    /// Boot modules (the `vmm` scenario's guest ELF and its modules).
    pub modules: Vec<crate::vmm::BootModule>,
}

impl Ctx {
    /// The value of `key=value` on the kernel's command line.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.cmdline
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
}

type Scenario = fn(&Ctx) -> Result<String, String>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("boot", boot),
    ("smp", smp_scenario),
    ("vmx-caps", vmx_caps),
    ("negotiate", negotiate),
    ("refuse", refuse),
    ("real-mode", guests::real_mode_guest),
    ("protected-mode", guests::protected_mode_guest),
    ("long-mode", guests::long_mode_guest),
    ("ept-violation", guests::ept_violation_guest),
    ("preemption-timer", guests::preemption_timer_guest),
    ("two-vcpus", guests::two_vcpus),
    ("bench-exits", guests::bench_exits),
    ("demo", guests::demo),
    ("haxm-qemu", haxm::haxm_qemu),
    ("haxm-pmode", haxm::haxm_pmode),
    ("haxm-long", haxm::haxm_long),
    ("haxm-smp", haxm::haxm_smp),
    ("haxm-bad-input", haxm::haxm_bad_input),
    ("haxm-events", haxm_events::haxm_events),
    ("haxm-apic", haxm_apic::haxm_apic),
    ("haxm-kick", haxm_kick::haxm_kick),
    ("haxm-hostile", haxm_hostile::haxm_hostile),
    ("haxm-fpu", haxm_fpu::haxm_fpu),
    ("haxm-mmio", haxm_mmio::haxm_mmio),
    ("haxm-vga", haxm_mmio::haxm_vga),
    ("haxm-mmio-hostile", haxm_mmio_hostile::haxm_mmio_hostile),
    ("haxm-mmio-storm", haxm_mmio_hostile::haxm_mmio_storm),
    ("haxm-quickboot", haxm_quickboot::haxm_quickboot),
    ("haxm-debug", haxm_debug::haxm_debug),
    ("mtf-probe", guests::mtf_probe),
    ("haxm-avx", haxm_avx::haxm_avx),
    ("bench-haxm", haxm::bench_haxm),
    ("haxm-stat", haxm_stat::haxm_stat),
    ("bench-table", bench_table::bench_table),
    ("bench-table-short", bench_table::bench_table_short),
    ("bench-apic", crate::bench_apic::bench_apic),
    ("vmm", crate::vmm::vmm),
];

/// Runs the comma-separated list (`all` = every scenario); returns (passed, failed).
pub fn run_list(ctx: &Ctx, list: &str) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    let names: Vec<&str> = if list == "all" {
        SCENARIOS.iter().map(|s| s.0).collect()
    } else {
        list.split(',').filter(|s| !s.is_empty()).collect()
    };
    for name in names {
        println!("scenario {name}: start");
        let t0 = rdtsc();
        let result = match SCENARIOS.iter().find(|s| s.0 == name) {
            Some((_, f)) => f(ctx),
            None => Err(String::from("unknown scenario")),
        };
        let instructions = rdtsc() - t0;
        match result {
            Ok(info) => {
                passed += 1;
                println!("scenario {name}: PASS {info} (tsc {instructions})");
            }
            Err(reason) => {
                failed += 1;
                println!("scenario {name}: FAIL {reason}");
            }
        }
    }
    (passed, failed)
}

/// Console, exception handlers (#BP, #UD, #GP caught at the right RIP with the right error
/// code), long mode/SSE state (enabled for FXSAVE and guests; the kernel itself is built
/// soft-float and never uses it), allocators, TSC.
fn boot(_: &Ctx) -> Result<String, String> {
    // #BP is a trap: the saved RIP is the instruction after INT3 (SDM Vol. 3A §7.5).
    interrupts::expect(3, 0);
    let after_int3: u64;
    // SAFETY: the armed handler records the #BP and resumes after INT3; no state is changed.
    unsafe { asm!("lea {0}, [rip + 2f]", "int3", "2:", out(reg) after_int3) };
    match interrupts::caught() {
        Some((3, rip, _)) if rip == after_int3 => {}
        other => {
            return Err(format!(
                "#BP: expected rip {after_int3:#x}, handler saw {other:x?}"
            ))
        }
    }
    // #UD is a fault: the saved RIP is the UD2 itself; the handler skips its 2 bytes.
    interrupts::expect(6, 2);
    let at_ud2: u64;
    // SAFETY: as above; the handler resumes after the 2-byte UD2.
    unsafe { asm!("lea {0}, [rip + 2f]", "2:", "ud2", out(reg) at_ud2) };
    match interrupts::caught() {
        Some((6, rip, _)) if rip == at_ud2 => {}
        other => {
            return Err(format!(
                "#UD: expected rip {at_ud2:#x}, handler saw {other:x?}"
            ))
        }
    }
    // #GP(0) from RDMSR of an MSR that does not exist (Bochs runs with ignore_bad_msrs=0).
    interrupts::expect(13, 2);
    let at_rdmsr: u64;
    // SAFETY: as above; RDMSR (2 bytes) faults before changing EAX/EDX, which are discarded.
    unsafe {
        asm!("lea {0}, [rip + 2f]", "2:", "rdmsr", out(reg) at_rdmsr, in("ecx") 0x4000_1234u32,
             out("eax") _, out("edx") _);
    }
    match interrupts::caught() {
        Some((13, rip, 0)) if rip == at_rdmsr => {}
        other => {
            return Err(format!(
                "#GP: expected rip {at_rdmsr:#x} error 0, handler saw {other:x?}"
            ))
        }
    }
    // Long mode, paging, SSE as the boot stub set them.
    // SAFETY: IA32_EFER exists on every x86-64 CPU.
    let efer = unsafe { rdmsr(0xC000_0080) };
    if efer & (1 << 10) == 0
        || cr0() & (1 << 31) == 0
        || cr4() & (1 << 5 | 1 << 9) != (1 << 5 | 1 << 9)
    {
        return Err(format!(
            "bad mode: efer={efer:#x} cr0={:#x} cr4={:#x}",
            cr0(),
            cr4()
        ));
    }
    let x = core::hint::black_box(1.5f64);
    if x * x + 0.75 != 3.0 {
        return Err(String::from("soft-float arithmetic gave a wrong result"));
    }
    // Allocators: small and large blocks, and pages returned.
    let before = mm::free_page_count();
    {
        let v: Vec<u64> = (0..1000).collect();
        let big = Box::new([7u8; 65536]);
        let sum: u64 = v.iter().sum();
        if sum != 499_500 || big.iter().map(|&b| u64::from(b)).sum::<u64>() != 7 * 65536 {
            return Err(String::from("heap data corrupted"));
        }
        let p = mm::alloc_pages(3, 1 << 21).ok_or("alloc_pages(3, 2 MiB) failed")?;
        if p % (1 << 21) != 0 {
            return Err(format!("alloc_pages alignment: {p:#x}"));
        }
        mm::free_pages(p, 3);
    }
    let after = mm::free_page_count();
    // The small-object classes keep their pages (at most one per class used above).
    if before - after > 8 {
        return Err(format!("pages leaked: {before} free before, {after} after"));
    }
    // With several CPUs Bochs advances its clock per time slice, so two back-to-back reads can
    // be equal: wait (boundedly) for a change.
    let t0 = rdtsc();
    if !(0..1_000_000).any(|_| rdtsc() > t0) {
        return Err(String::from("TSC does not advance"));
    }
    Ok(format!("#BP/#UD/#GP caught, {} MiB free", after >> 8))
}

/// Every requested CPU is online, ran a job, and is in VMX operation with the same revision.
fn smp_scenario(ctx: &Ctx) -> Result<String, String> {
    let n = smp::cpu_count();
    if n != ctx.cpus_wanted {
        return Err(format!("{n} CPUs online, {} requested", ctx.cpus_wanted));
    }
    let seen = AtomicU64::new(0);
    let bad = AtomicU64::new(0);
    smp::run_on_all(&|i| {
        // SAFETY: IA32_FEATURE_CONTROL exists (VMX was enabled on this CPU).
        let fc = unsafe { rdmsr(IA32_FEATURE_CONTROL) };
        // After a guest scenario rhax-core owned VMX on this CPU and left it (CR4.VMXE back to
        // 0): the bring-up's VMXON is then recorded as `Off`.
        let vmx_on = matches!(vmx::state(i), VmxState::On { .. });
        if smp::cpu_index() != i || fc & 0b101 != 0b101 || (vmx_on && cr4() & (1 << 13) == 0) {
            bad.fetch_or(1 << i, Ordering::SeqCst);
        }
        seen.fetch_or(1 << i, Ordering::SeqCst);
    });
    let want = (1u64 << n) - 1;
    if seen.load(Ordering::SeqCst) != want {
        return Err(format!(
            "CPUs that ran the job: {:#b}, expected {want:#b}",
            seen.load(Ordering::SeqCst)
        ));
    }
    if bad.load(Ordering::SeqCst) != 0 {
        return Err(format!(
            "CPUs with wrong index/feature control/CR4.VMXE: {:#b}",
            bad.load(Ordering::SeqCst)
        ));
    }
    let expected_rev = (vmx::read_cap(IA32_VMX_BASIC) & 0x7FFF_FFFF) as u32;
    let mut trs = Vec::new();
    for i in 0..n {
        let pc = smp::percpu(i);
        let tr = pc.tr.load(Ordering::SeqCst);
        match vmx::state(i) {
            VmxState::On {
                revision,
                feature_control,
                vmxon_region,
            } => {
                println!(
                    "smp: cpu {i} apic {} tr {tr:#x} vmxon ok revision {revision:#x} region {vmxon_region:#x} \
                     feature-control {feature_control:?}",
                    pc.apic_id.load(Ordering::SeqCst)
                );
                if revision != expected_rev {
                    return Err(format!(
                        "cpu {i}: revision {revision:#x} != {expected_rev:#x}"
                    ));
                }
            }
            VmxState::Off { revision } if revision == expected_rev => {
                println!(
                    "smp: cpu {i} vmxon ok revision {revision:#x} (since handed to rhax-core)"
                );
            }
            other => return Err(format!("cpu {i}: VMX state {other:?}")),
        }
        if trs.contains(&tr) {
            return Err(format!("cpu {i} shares TR {tr:#x}"));
        }
        trs.push(tr);
    }
    Ok(format!(
        "{n} CPUs in VMX operation, revision {expected_rev:#x}"
    ))
}

/// Reads and prints the VMX capability MSRs the CPU advertises (SDM Vol. 3C Appendix A).
fn vmx_caps(_: &Ctx) -> Result<String, String> {
    let basic = vmx::read_cap(IA32_VMX_BASIC);
    let true_ctls = basic & (1 << 55) != 0;
    let mut msrs: Vec<(&str, u32)> = alloc::vec![
        ("IA32_VMX_BASIC", 0x480),
        ("IA32_VMX_PINBASED_CTLS", 0x481),
        ("IA32_VMX_PROCBASED_CTLS", 0x482),
        ("IA32_VMX_EXIT_CTLS", 0x483),
        ("IA32_VMX_ENTRY_CTLS", 0x484),
        ("IA32_VMX_MISC", 0x485),
        ("IA32_VMX_CR0_FIXED0", 0x486),
        ("IA32_VMX_CR0_FIXED1", 0x487),
        ("IA32_VMX_CR4_FIXED0", 0x488),
        ("IA32_VMX_CR4_FIXED1", 0x489),
        ("IA32_VMX_VMCS_ENUM", 0x48A),
    ];
    let proc = vmx::read_cap(0x482);
    let mut proc2 = 0;
    if proc >> 32 & (1 << 31) != 0 {
        msrs.push(("IA32_VMX_PROCBASED_CTLS2", 0x48B));
        proc2 = vmx::read_cap(0x48B);
        // EPT (bit 1) or VPID (bit 5) allowed: IA32_VMX_EPT_VPID_CAP exists (Appendix A.10).
        if proc2 >> 32 & (1 << 1 | 1 << 5) != 0 {
            msrs.push(("IA32_VMX_EPT_VPID_CAP", 0x48C));
        }
        // VM functions (bit 13) allowed: IA32_VMX_VMFUNC exists (Appendix A.11).
        if proc2 >> 32 & (1 << 13) != 0 {
            msrs.push(("IA32_VMX_VMFUNC", 0x491));
        }
    }
    if true_ctls {
        msrs.extend([
            ("IA32_VMX_TRUE_PINBASED_CTLS", 0x48D),
            ("IA32_VMX_TRUE_PROCBASED_CTLS", 0x48E),
            ("IA32_VMX_TRUE_EXIT_CTLS", 0x48F),
            ("IA32_VMX_TRUE_ENTRY_CTLS", 0x490),
        ]);
    }
    for (name, msr) in &msrs {
        println!("vmx-caps: {name} {msr:#x} = {:#018x}", vmx::read_cap(*msr));
    }
    // Sanity of IA32_VMX_BASIC (Appendix A.1): VMCS region size 1..=4096, WB memory type (6).
    let size = basic >> 32 & 0x1FFF;
    let memtype = basic >> 50 & 0xF;
    if size == 0 || size > 4096 || memtype != 6 || basic & 0x7FFF_FFFF == 0 {
        return Err(format!(
            "IA32_VMX_BASIC {basic:#x}: size {size}, memory type {memtype}"
        ));
    }
    // A control's allowed-0 bits must be a subset of its allowed-1 bits (Appendix A.3).
    for (name, msr) in &msrs[1..5] {
        let v = vmx::read_cap(*msr);
        if (v as u32) & !((v >> 32) as u32) != 0 {
            return Err(format!(
                "{name}: allowed-0 {:#x} not within allowed-1 {:#x}",
                v as u32,
                v >> 32
            ));
        }
    }
    let (_, _, _, edx) = cpuid(1, 0);
    let ug = proc2 >> 32 & (1 << 7) != 0;
    let ept = proc2 >> 32 & (1 << 1) != 0;
    Ok(format!(
        "revision {:#x}, vmcs size {size}, true controls {true_ctls}, EPT {ept}, unrestricted guest {ug}, apic {}",
        basic & 0x7FFF_FFFF,
        edx >> 9 & 1 != 0
    ))
}

/// The CPU's capabilities as rhax-core reads them, through the kernel's RDMSR.
fn core_caps() -> rhax_core::vmx::caps::VmxCaps {
    rhax_core::vmx::caps::VmxCaps::read(vmx::read_cap)
}

/// rhax-core negotiates VMX controls from this CPU's capability MSRs; every value it chose is
/// checked here against the raw MSRs (allowed-0 bits set, nothing outside allowed-1: SDM Vol. 3D
/// A.3-A.5), independently of rhax-core's own bookkeeping.
fn negotiate(_: &Ctx) -> Result<String, String> {
    let caps = core_caps();
    let c = rhax_core::vmx::negotiate::negotiate(&caps)
        .map_err(|e| format!("rhax-core refused: {e}"))?;
    let basic = vmx::read_cap(IA32_VMX_BASIC);
    let true_ctls = basic & (1 << 55) != 0;
    let msr = |plain: u32, tru: u32| vmx::read_cap(if true_ctls { tru } else { plain });
    let fields = [
        ("pin-based", u64::from(c.pin.bits()), msr(0x481, 0x48D)),
        (
            "primary proc-based",
            u64::from(c.proc.bits()),
            msr(0x482, 0x48E),
        ),
        (
            "secondary proc-based",
            u64::from(c.proc2.bits()),
            vmx::read_cap(0x48B),
        ),
        ("VM-exit", u64::from(c.exit.bits()), msr(0x483, 0x48F)),
        ("VM-entry", u64::from(c.entry.bits()), msr(0x484, 0x490)),
    ];
    for (name, value, cap) in fields {
        let (must, may) = (cap & 0xFFFF_FFFF, cap >> 32);
        println!("negotiate: {name} controls {value:#010x} (must {must:#010x}, may {may:#010x})");
        if value & must != must || value & !may != 0 {
            return Err(format!(
                "{name} controls {value:#x} violate the CPU's {cap:#x}"
            ));
        }
    }
    if c.vmcs_revision_id != (basic & 0x7FFF_FFFF) as u32 {
        return Err(format!(
            "revision {:#x} != IA32_VMX_BASIC {basic:#x}",
            c.vmcs_revision_id
        ));
    }
    println!("negotiate: enabled {:?}", c.enabled);
    Ok(format!(
        "{} optional features enabled",
        c.enabled.iter().count()
    ))
}

/// On a CPU without unrestricted guest (Bochs `corei5_lynnfield_750`), rhax-core must refuse
/// with a reason that names the missing feature, instead of failing at VM entry.
fn refuse(_: &Ctx) -> Result<String, String> {
    let proc2 = if vmx::read_cap(0x482) >> 32 & (1 << 31) != 0 {
        vmx::read_cap(0x48B)
    } else {
        0
    };
    if proc2 >> 32 & (1 << 7) != 0 {
        return Err(String::from(
            "this CPU offers unrestricted guest: run `refuse` on corei5_lynnfield_750",
        ));
    }
    match rhax_core::vmx::negotiate::negotiate(&core_caps()) {
        Ok(_) => Err(String::from(
            "rhax-core accepted a CPU without unrestricted guest",
        )),
        Err(e) => {
            let reason = format!("{e}");
            println!("refuse: rhax-core says: {reason}");
            if reason.contains("unrestricted guest") {
                Ok(format!("refused: {reason}"))
            } else {
                Err(format!("refused for another reason: {reason}"))
            }
        }
    }
}
