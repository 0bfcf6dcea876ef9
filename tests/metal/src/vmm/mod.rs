//! `vmm` (issue 12 item 6): a small VMM on userlib that boots a multiboot (v1) image, the way
//! a real client would (System, Vm, Vcpu over the in-kernel transport).
//!
//! The image and its modules come as boot modules of the metal kernel (`cargo xtask metal vmm
//! PATH.elf` puts them in the ROM): the first module is the image, its string the guest's
//! command line; every further module is a guest module with its string. Kernel arguments:
//! `vmm_megs=N` (guest RAM, default 32), `vmm_cpus=N` (vCPUs, default 1), `vmm_expect=N` or
//! `vmm_expect=stop` (the outcome that passes: exit status N, or the vCPU stopped by a triple
//! fault; default 0), `vmm_x2apic=1` (advertise x2APIC and TSC-deadline in CPUID),
//! `vmm_apic_flags=N` (ENABLE_APIC's flags, `NO_*` bits to switch accelerations off),
//! `vmm_halt_ms=N` (how long a started vCPU of several may stay halted with no wake-up
//! source of its own, in guest milliseconds, before the run fails; 0 = forever; default
//! 1000), `vmm_max_exits=N`.
//!
//! The VM has rhax's in-kernel local APIC (`Vm::enable_apic`, before any vCPU exists), as
//! QEMU's kernel irqchip: xAPIC at 0xFEE00000 and x2APIC, timer, IPIs, INIT/SIPI. With several
//! vCPUs each is created and run on its own CPU (CPU i for vCPU i, as a client's vCPU
//! threads); an application processor starts in the wait-for-SIPI state (SDM Vol. 3A §9.4),
//! where its RUN returns HLT without entering the guest, until the guest's INIT/SIPI reaches
//! it through the APIC. The first vCPU whose run ends stops the others.
//!
//! * `loader.rs`: the multiboot header, the image, the information structure.
//! * `devices.rs`: the 16550 UART at 0x3F8 and the exit port 0xF4.
//! * `run.rs`: the RUN loop (HLT: run again, the APIC wakes the vCPU) and what the vCPUs
//!   share.

mod devices;
mod loader;
mod run;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use rhax::api::ext::ApicFlags;
use rhax::api::{CpuidEntry, RamFlags, VcpuState};

use crate::bootinfo::BootInfo;
use crate::haxm::{
    e, flat, qemu_init, qemu_msrs, qemu_reset_state, qemu_set, write_gdt, Ram, V,
};
use crate::hv::{KernelTransport, Shell};
use crate::scenarios::Ctx;
use crate::sync::SpinLock;
use crate::{println, smp};
use loader::PlacedModule;
use run::{Counts, Outcome, Shared};

/// Guest RAM unless `vmm_megs` says otherwise.
const DEFAULT_MEGS: u64 = 32;
/// Guest RAM bounds: room for the low structures and an image at 1 MiB; what a 128 MiB
/// Bochs machine can lend.
const MIN_MEGS: u64 = 2;
const MAX_MEGS: u64 = 1024;
/// What guest RAM holds before the image is loaded.
const JUNK: u8 = 0xCC;
/// vCPUs a VM may have here (one CPU each).
const MAX_CPUS: u32 = 16;
/// Exits before the VMM gives up on a guest that never ends.
const DEFAULT_MAX_EXITS: u64 = 5_000_000;
/// Multiboot images load at 1 MiB or above (below: the VMM's structures and the PC hole).
const LOAD_MIN: u64 = 0x10_0000;
/// How long a started vCPU may stay halted unless `vmm_halt_ms` says otherwise.
const DEFAULT_HALT_MS: u64 = 1000;

/// CPUID.01H:ECX.x2APIC[bit 21] and TSC-Deadline[bit 24] (SDM Vol. 2A, CPUID, Table 3-10).
const CPUID1_ECX_X2APIC: u32 = 1 << 21;
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// A boot module of the metal kernel, read in place (the ROM, or RAM kept from the allocator).
pub struct BootModule {
    /// The module's bytes.
    pub data: &'static [u8],
    /// Its string.
    pub string: String,
}

impl BootModule {
    /// Module `i` of the loader's information.
    pub fn of(bi: &BootInfo, i: usize) -> BootModule {
        let Some(m) = bi.modules.get(i).filter(|_| i < bi.module_count) else {
            return BootModule {
                data: &[],
                string: String::new(),
            };
        };
        let len = usize::try_from(m.end - m.start).unwrap_or(0);
        // SAFETY: the loader's module lies in the identity-mapped first 4 GiB (the ROM, which
        // nothing writes, or RAM that `init_memory` keeps from the page allocator) and stays
        // there for the whole run.
        let data = unsafe { core::slice::from_raw_parts(m.start as *const u8, len) };
        let slen = usize::try_from(m.string_len).unwrap_or(0);
        // SAFETY: the string lies inside its tag in the information structure, which stays
        // mapped and unchanged (same argument as above).
        let s = unsafe { core::slice::from_raw_parts(m.string as *const u8, slen) };
        BootModule {
            data,
            string: String::from_utf8_lossy(s).into_owned(),
        }
    }
}

/// The outcome that passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Status(u32),
    Stopped,
}

struct Config {
    megs: u64,
    cpus: u32,
    expect: Expect,
    x2apic: bool,
    /// `vmm_halt_ms`: 0 = no limit.
    halt_ms: u64,
    /// `vmm_apic_flags`: the ENABLE_APIC flags (ENABLE and any `NO_*`).
    apic_flags: ApicFlags,
    max_exits: u64,
}

fn config(ctx: &Ctx) -> Result<Config, String> {
    fn num(ctx: &Ctx, key: &str, default: u64) -> Result<u64, String> {
        ctx.arg(key).map_or(Ok(default), |s| {
            s.parse().map_err(|_| format!("{key}={s}: not a number"))
        })
    }
    let megs = num(ctx, "vmm_megs", DEFAULT_MEGS)?;
    if !(MIN_MEGS..=MAX_MEGS).contains(&megs) {
        return Err(format!("vmm_megs={megs}: {MIN_MEGS} to {MAX_MEGS}"));
    }
    let cpus = u32::try_from(num(ctx, "vmm_cpus", 1)?).unwrap_or(0);
    if !(1..=MAX_CPUS).contains(&cpus) {
        return Err(format!("vmm_cpus: 1 to {MAX_CPUS}"));
    }
    let expect = match ctx.arg("vmm_expect") {
        None => Expect::Status(0),
        Some("stop") => Expect::Stopped,
        Some(s) => Expect::Status(
            parse_u32(s).ok_or_else(|| format!("vmm_expect={s}: a status or `stop`"))?,
        ),
    };
    Ok(Config {
        megs,
        cpus,
        expect,
        x2apic: ctx.arg("vmm_x2apic") == Some("1"),
        halt_ms: num(ctx, "vmm_halt_ms", DEFAULT_HALT_MS)?,
        apic_flags: match ctx.arg("vmm_apic_flags") {
            None => ApicFlags::ENABLE,
            Some(s) => parse_u32(s)
                .and_then(ApicFlags::from_bits)
                .map(|f| f | ApicFlags::ENABLE)
                .ok_or_else(|| format!("vmm_apic_flags={s}: not a set of ApicFlags bits"))?,
        },
        max_exits: num(ctx, "vmm_max_exits", DEFAULT_MAX_EXITS)?,
    })
}

/// A decimal or `0x` hexadecimal u32.
fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Guest RAM with checked writes (every address here comes from the image).
struct GuestRam(Ram);

impl GuestRam {
    fn write(&self, gpa: u64, bytes: &[u8], what: &str) -> Result<(), String> {
        gpa.checked_add(bytes.len() as u64)
            .filter(|&end| end <= self.0.len())
            .ok_or_else(|| {
                format!(
                    "{what} at {gpa:#x} ({} bytes) does not fit in {} MiB of guest RAM",
                    bytes.len(),
                    self.0.len() >> 20
                )
            })?;
        self.0.write(gpa, bytes);
        Ok(())
    }

    fn fill(&self, gpa: u64, len: u64, byte: u8, what: &str) -> Result<(), String> {
        const CHUNK: u64 = 64 << 10;
        let zeros = alloc::vec![byte; CHUNK as usize];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(CHUNK);
            let gpa = gpa.checked_add(at).ok_or("address overflow")?;
            self.write(gpa, zeros.get(..n as usize).unwrap_or(&[]), what)?;
            at += n;
        }
        Ok(())
    }
}

/// Loads the image and its modules into RAM and writes the information structure; returns
/// the entry point and a description.
fn load(
    ram: &GuestRam,
    image: &BootModule,
    modules: &[BootModule],
) -> Result<(u32, String), String> {
    let img = loader::parse(image.data)?;
    for s in &img.segments {
        if s.gpa < LOAD_MIN {
            return Err(format!(
                "the image loads at {:#x}, below 1 MiB, where this VMM keeps the boot \
                 information",
                s.gpa
            ));
        }
        ram.write(s.gpa, s.data, "image segment")?;
        // bss: memsz beyond the file bytes (§3.1.3 bss_end_addr, ELF p_memsz).
        let bss_at = s.gpa + s.data.len() as u64;
        ram.fill(bss_at, s.memsz - s.data.len() as u64, 0, "image bss")?;
    }
    // Modules page-aligned after the image (header flag 0 asks for it; we always do).
    let mut at = img.end().next_multiple_of(0x1000);
    let mut placed = Vec::new();
    for m in modules {
        ram.write(at, m.data, "module")?;
        placed.push(PlacedModule {
            gpa: at,
            len: m.data.len() as u64,
            string: &m.string,
        });
        at = (at + m.data.len() as u64).next_multiple_of(0x1000);
    }
    for (gpa, bytes) in loader::info(ram.0.len(), &image.string, &placed)? {
        ram.write(gpa, &bytes, "boot information")?;
    }
    let what = format!(
        "{} image, {} segment(s) up to {:#x}, entry {:#x}, header flags {:#x}, {} module(s)",
        if img.aout { "a.out-kludge" } else { "ELF32" },
        img.segments.len(),
        img.end(),
        img.entry,
        img.flags,
        placed.len()
    );
    Ok((img.entry, what))
}

/// The machine state of §3.2: 32-bit protected mode, paging off, flat 4 GiB code and data
/// segments, EAX = 0x2BADB002, EBX = the information structure, EFLAGS.VM and IF clear.
fn boot_state(entry: u32) -> VcpuState {
    let mut s = qemu_reset_state();
    // Flat code (0x08, 32-bit execute/read, accessed) and data (0x10) as in the GDT written
    // at 0x500 (GDTR points at it; the spec leaves GDTR undefined, this one is usable).
    flat(&mut s, 0xC09B);
    s.cr0 = 0x11; // PE | ET; PG clear
    s.rip = u64::from(entry);
    s.regs[0] = u64::from(loader::BOOTLOADER_MAGIC);
    s.regs[3] = loader::INFO;
    // ESP is undefined (§3.2): 0, so a guest that forgets its stack faults visibly.
    s.regs[4] = 0;
    s.rflags = 2; // reserved bit 1; VM (17) and IF (9) clear
    s
}

/// The VM with its RAM and vCPU 0, as `haxm::simple_vm`, and the in-kernel local APIC
/// switched on before the vCPU is created (ENABLE_APIC refuses a VM that has vCPUs).
fn apic_vm<'a>(
    shell: &'a Shell,
    ram: &Ram,
    flags: ApicFlags,
) -> Result<(rhax::System<KernelTransport<'a>>, rhax::Vm<KernelTransport<'a>>, V<'a>), String> {
    let sys = rhax::System::open(shell.transport()).map_err(e("open \\\\.\\HAX"))?;
    let vm = qemu_init(&sys)?;
    // SAFETY: `ram` is kernel pages that outlive the VM (the caller declares it first).
    unsafe { vm.add_ramblock(ram.addr, ram.len()) }.map_err(e("ADD_RAMBLOCK"))?;
    vm.set_ram(0, ram.len() as u32, ram.addr, RamFlags::empty())
        .map_err(e("SET_RAM"))?;
    vm.enable_apic(flags).map_err(e("ENABLE_APIC"))?;
    let v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
    Ok((sys, vm, v))
}

/// `--x2apic`: CPUID leaf 1 with x2APIC and TSC-deadline (SET_CPUID), as QEMU sets them for
/// its kernel irqchip. Returns what the driver kept (rhax-core keeps both only for a VM with
/// the in-kernel APIC).
fn advertise_x2apic(v: &V<'_>) -> Result<(bool, bool), String> {
    {
        let table = v.get_cpuid().map_err(e("GET_CPUID"))?;
        let mut entries: Vec<CpuidEntry> = table.entries().to_vec();
        let leaf1 = entries
            .iter_mut()
            .find(|x| x.function == 1)
            .ok_or("GET_CPUID has no leaf 1")?;
        leaf1.ecx |= CPUID1_ECX_X2APIC | CPUID1_ECX_TSC_DEADLINE;
        v.set_cpuid(&entries).map_err(e("SET_CPUID"))?;
        let after = v.get_cpuid().map_err(e("GET_CPUID"))?;
        let ecx = after
            .entries()
            .iter()
            .find(|x| x.function == 1)
            .map_or(0, |x| x.ecx);
        Ok((
            ecx & CPUID1_ECX_X2APIC != 0,
            ecx & CPUID1_ECX_TSC_DEADLINE != 0,
        ))
    }
}

/// How one vCPU's loop ended.
struct VcpuEnd {
    index: usize,
    counts: Counts,
    started: bool,
}

/// What the loops report: the first outcome (which ends the run) and each vCPU's end.
struct Ends {
    first: Option<(usize, Outcome)>,
    vcpus: Vec<VcpuEnd>,
}

/// Runs vCPU `index` (already set up) and records how it ended; the first real outcome stops
/// the others (their CPUs are kicked so that a guest spinning without exits comes back).
fn run_vcpu(v: &mut V<'_>, index: usize, shared: &Shared, cfg: &Config, ends: &SpinLock<Ends>) {
    let mut counts = Counts::default();
    let limits = run::Limits {
        max_exits: cfg.max_exits,
        halt_ticks: cfg.halt_ms.saturating_mul(crate::time::tsc_hz() / 1000),
        lone: cfg.cpus == 1,
    };
    let outcome = run::run(v, index, shared, &limits, &mut counts);
    let mut e = ends.lock();
    if outcome != Outcome::Cancelled && e.first.is_none() {
        e.first = Some((index, outcome));
        shared.stop.store(true, Ordering::SeqCst);
        for cpu in (0..cfg.cpus as usize).filter(|&c| c != index) {
            smp::kick(cpu);
        }
    }
    let started = counts.started;
    e.vcpus.push(VcpuEnd {
        index,
        counts,
        started,
    });
}

/// An application processor on its own CPU (as a client's vCPU thread): creates vCPU
/// `index` in QEMU's reset state and runs it. rhax-core keeps it in wait-for-SIPI (RUN returns
/// HLT without entering the guest) until the guest's INIT/SIPI arrives through the in-kernel
/// APIC, which then sets real mode at `vector << 12` (SDM Vol. 3A §11.6.1 "Start-Up").
fn application_processor(
    vm: &rhax::Vm<KernelTransport<'_>>,
    index: usize,
    shared: &Shared,
    cfg: &Config,
    ends: &SpinLock<Ends>,
) -> Result<(), String> {
    let mut v = vm.create_vcpu(index as u32).map_err(e("VCPU_CREATE"))?;
    if cfg.x2apic {
        advertise_x2apic(&v)?;
    }
    qemu_set(&v, &qemu_reset_state(), &qemu_msrs())?;
    run_vcpu(&mut v, index, shared, cfg, ends);
    Ok(())
}

/// The scenario.
pub fn vmm(ctx: &Ctx) -> Result<String, String> {
    let cfg = config(ctx)?;
    let (image, modules) = ctx
        .modules
        .split_first()
        .ok_or("no guest image among the boot modules: run `cargo xtask metal vmm PATH.elf`")?;
    if cfg.cpus as usize > smp::cpu_count() {
        return Err(format!(
            "{} vCPUs need as many CPUs, {} online",
            cfg.cpus,
            smp::cpu_count()
        ));
    }
    let ram = GuestRam(Ram::new(cfg.megs << 20)?);
    // Not zeros: RAM on a real machine holds junk, and a loader that forgot the bss (or a
    // guest that assumes zeroed memory) must show it. 0xCC is INT3 where code runs astray.
    ram.fill(0, ram.0.len(), JUNK, "RAM")?;
    let (entry, what) = load(&ram, image, modules)?;
    println!(
        "vmm: {what}; {} MiB RAM, {} vCPU(s), cmdline \"{}\"",
        cfg.megs, cfg.cpus, image.string
    );
    for (i, m) in modules.iter().enumerate() {
        println!("vmm: module {i}: {} bytes, \"{}\"", m.data.len(), m.string);
    }
    write_gdt(&ram.0, 0x00CF_9B00_0000_FFFF);
    let shell = Shell::new()?;
    let (_sys, vm, mut v) = apic_vm(&shell, &ram.0, cfg.apic_flags)?;
    if cfg.x2apic {
        let (x2, dl) = advertise_x2apic(&v)?;
        println!(
            "vmm: cpuid: x2APIC and TSC-deadline asked for; the driver kept x2APIC {x2}, \
             TSC-deadline {dl}"
        );
    }
    qemu_set(&v, &boot_state(entry), &qemu_msrs())?;
    let shared = Shared::new();
    let ends = SpinLock::new(Ends {
        first: None,
        vcpus: Vec::new(),
    });
    if cfg.cpus == 1 {
        run_vcpu(&mut v, 0, &shared, &cfg, &ends);
    } else {
        // vCPU 0 on this CPU (CPU 0, where it was created), AP `i` on CPU `i`.
        let bsp = SpinLock::new(Some(v));
        let errors: SpinLock<Vec<String>> = SpinLock::new(Vec::new());
        let vm_ref = &vm;
        smp::run_on_cpus((1u64 << cfg.cpus) - 1, &|cpu| {
            if cpu == 0 {
                if let Some(mut v) = bsp.lock().take() {
                    run_vcpu(&mut v, 0, &shared, &cfg, &ends);
                }
            } else if let Err(why) = application_processor(vm_ref, cpu, &shared, &cfg, &ends) {
                shared.stop.store(true, Ordering::SeqCst);
                errors.lock().push(format!("vCPU {cpu}: {why}"));
            }
        });
        let first_error = errors.lock().first().cloned();
        if let Some(why) = first_error {
            return Err(why);
        }
    }
    let mut uart = shared.uart.lock();
    if uart.pending() {
        uart.flush();
    }
    let mut ends = ends.lock();
    // Insertion sort by vCPU index (at most a handful): core's sort has a 4 KiB frame and
    // recursion, which the kernel's stack check refuses.
    for i in 1..ends.vcpus.len() {
        let mut j = i;
        while j > 0 && ends.vcpus[j - 1].index > ends.vcpus[j].index {
            ends.vcpus.swap(j - 1, j);
            j -= 1;
        }
    }
    let per_vcpu: Vec<String> = ends
        .vcpus
        .iter()
        .map(|v| {
            let c = &v.counts;
            if v.started {
                format!(
                    "vCPU {}: {} exits ({} IO, {} MMIO, {} INTERRUPT, {} HLT)",
                    v.index, c.exits, c.io, c.mmio, c.interrupts, c.halts
                )
            } else {
                format!("vCPU {}: never started", v.index)
            }
        })
        .collect();
    let stats = format!(
        "{}; {} UART bytes; in-kernel APIC on",
        per_vcpu.join(", "),
        uart.transmitted,
    );
    let (who, outcome) = ends.first.take().ok_or("no vCPU reported an outcome")?;
    let result = match &outcome {
        Outcome::Exit(s) => format!("exit status {s}"),
        Outcome::Stopped => format!("vCPU {who} stopped (triple fault)"),
        Outcome::Failed(why) => format!("error on vCPU {who}: {why}"),
        Outcome::Cancelled => String::from("cancelled"),
    };
    println!("vmm: result: {result}; {stats}");
    match (outcome, cfg.expect) {
        (Outcome::Exit(s), Expect::Status(want)) if s == want => Ok(format!("{result}; {stats}")),
        (Outcome::Stopped, Expect::Stopped) => Ok(format!("{result} as expected; {stats}")),
        (_, Expect::Status(want)) => Err(format!("{result}, expected exit status {want}")),
        (_, Expect::Stopped) => Err(format!("{result}, expected a triple fault")),
    }
}
