//! `haxm-apic`, second VM: two vCPUs on two CPUs. vCPU 1 waits for a start-up IPI (the
//! in-kernel APIC's AP state); the BSP's guest brings it up with INIT and SIPI (it starts in
//! real mode at the vector's page and goes to 64-bit mode itself), then sends IPIs with
//! logical destinations in the flat and cluster models (xAPIC DFR/LDR), a physical
//! broadcast, and the three shorthands, counting per APIC ID which vCPU took each vector.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use rhax::api::ext::ApicFlags;
use rhax::api::{IoDirection, RamFlags};

use crate::haxm::{e, qemu_init, step, write_gdt, Ev, Ram, R, V};
use crate::haxm_apic::{apic_cpuid, long_mode, page_tables};
use crate::haxm_apic_guest::CODE;
use crate::haxm_apic_smp_guest as g;
use crate::hv::Shell;
use crate::smp;
use crate::sync::SpinLock;

/// The checks: (result index, name, expected).
const CHECKS: &[(usize, &str, u32)] = &[
    (0, "INIT/SIPI: the AP runs (64-bit mode reached)", 1),
    (1, "INIT/SIPI: the AP reads APIC ID 1", 1),
    (2, "flat logical 0x02: the AP takes 0x70", 1),
    (3, "flat logical 0x02: not the BSP", 0),
    (4, "flat logical 0x03: the AP takes 0x71", 1),
    (5, "flat logical 0x03: the BSP takes 0x71", 1),
    (6, "cluster 1 member 2: the AP takes 0x72", 1),
    (7, "cluster 1 member 2: not the BSP", 0),
    (8, "cluster 2: not the AP", 0),
    (9, "cluster 2: not the BSP", 0),
    (10, "cluster 1 members 1+2: the AP takes 0x74", 1),
    (11, "cluster 1 members 1+2: the BSP takes 0x74", 1),
    (12, "physical broadcast 0xFF: the AP takes 0x75", 1),
    (13, "physical broadcast 0xFF: the BSP takes 0x75", 1),
    (14, "shorthand self: not the AP", 0),
    (15, "shorthand self: the BSP takes 0x76", 1),
    (16, "shorthand all-including-self: the AP", 1),
    (17, "shorthand all-including-self: the BSP", 1),
    (18, "shorthand all-excluding-self: the AP", 1),
    (19, "shorthand all-excluding-self: not the BSP", 0),
];

/// The BSP's guest ended (or failed): vCPU 1's thread stops.
static DONE: AtomicBool = AtomicBool::new(false);

/// RUNs before either side gives up.
const MAX_RUNS: usize = 100_000;

/// vCPU 1 on CPU 1: RUN until the BSP is done; it may only halt, be interrupted or wait.
fn run_ap(v: &mut V<'_>) -> R<usize> {
    for runs in 0..MAX_RUNS {
        if DONE.load(Ordering::SeqCst) {
            return Ok(runs);
        }
        match step(v, 0)? {
            Ev::Hlt | Ev::Interrupt => {}
            other => {
                let rip = v.get_regs().map(|s| s.cs.base + s.rip).unwrap_or(0);
                return Err(format!("AP: exit {other:?} at {rip:#x}"));
            }
        }
    }
    Err(String::from("AP: the BSP did not finish"))
}

/// vCPU 0 on CPU 0: RUN until the guest's OUT to [`g::PORT_DONE`].
fn run_bsp(v: &mut V<'_>) -> R<usize> {
    for runs in 0..MAX_RUNS {
        match step(v, 0)? {
            Ev::Hlt | Ev::Interrupt => {}
            Ev::Io {
                dir: IoDirection::Out,
                port: g::PORT_DONE,
                ..
            } => return Ok(runs),
            other => {
                let rip = v.get_regs().map(|s| s.rip).unwrap_or(0);
                return Err(format!("BSP: exit {other:?} at {rip:#x}"));
            }
        }
    }
    Err(String::from("BSP: no end"))
}

/// The two-vCPU part; returns the number of checks.
pub(crate) fn smp_checks() -> R<usize> {
    if smp::cpu_count() < 2 {
        return Err(String::from("needs 2 CPUs (--cpus 2)"));
    }
    let ram = Ram::zeroed(0x2_0000)?;
    ram.write(CODE, g::bsp());
    ram.write(g::AP_CODE, g::ap());
    write_gdt(&ram, 0x00AF_9B00_0000_FFFF);
    page_tables(&ram);
    // The AP's GDTR image: limit 0x17, base 0x500 (the GDT above).
    ram.write(g::AP_GDTR, &[0x17, 0, 0x00, 0x05, 0, 0]);
    let shell = Shell::new()?;
    let sys = rhax::System::open(shell.transport()).map_err(e("open \\\\.\\HAX"))?;
    let vm = qemu_init(&sys)?;
    // SAFETY: `ram` is kernel pages that outlive the VM (declared first, dropped last).
    unsafe { vm.add_ramblock(ram.addr, ram.len()) }.map_err(e("ADD_RAMBLOCK"))?;
    vm.set_ram(0, ram.len() as u32, ram.addr, RamFlags::empty())
        .map_err(e("SET_RAM"))?;
    vm.enable_apic(ApicFlags::ENABLE)
        .map_err(e("ENABLE_APIC"))?;
    let v0 = vm.create_vcpu(0).map_err(e("VCPU_CREATE 0"))?;
    let v1 = vm.create_vcpu(1).map_err(e("VCPU_CREATE 1"))?;
    long_mode(&v0)?;
    apic_cpuid(&v1)?;
    let vcpus = [SpinLock::new(Some(v0)), SpinLock::new(Some(v1))];
    let results: [SpinLock<Option<R<usize>>>; 2] = [SpinLock::new(None), SpinLock::new(None)];
    DONE.store(false, Ordering::SeqCst);
    smp::run_on_cpus(0b11, &|cpu| {
        let r = (|| {
            let mut guard = vcpus[cpu].lock();
            let v = guard.as_mut().ok_or("no vCPU")?;
            if cpu == 0 {
                run_bsp(v)
            } else {
                run_ap(v)
            }
        })();
        if cpu == 0 {
            DONE.store(true, Ordering::SeqCst);
        }
        *results[cpu].lock() = Some(r);
    });
    for (i, r) in results.iter().enumerate() {
        r.lock()
            .take()
            .ok_or_else(|| format!("CPU {i} did not report"))??;
    }
    let fails: Vec<String> = CHECKS
        .iter()
        .filter_map(|&(i, name, want)| {
            let got = ram.u32(g::BANK + 4 * i as u64);
            (got != want).then(|| format!("SMP: {name}: got {got:#x}, expected {want:#x}"))
        })
        .collect();
    for v in &vcpus {
        drop(v.lock().take());
    }
    drop(vm);
    drop(sys);
    if !fails.is_empty() {
        return Err(fails.join("; "));
    }
    Ok(CHECKS.len())
}
