//! Per-CPU data, the local APIC (xAPIC, MMIO) and SMP bring-up by INIT-SIPI-SIPI
//! (SDM Vol. 3A §9.4.4, "MP Initialization Example"), and running work on other CPUs.
//!
//! There is no ACPI in the ROM boot path, so the CPU count comes from the command line
//! (`cpus=N`) and APIC IDs are assumed to be 0..N-1, as Bochs assigns them.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::arch::{rdmsr, rdtsc, wrmsr};
use crate::boot::{self, MAX_CPUS, TRAMPOLINE_PHYS};
use crate::interrupts::{SPURIOUS_VECTOR, WAKE_VECTOR};
use crate::sync::SpinLock;
use crate::{mm, println, time, vmx};

const IA32_APIC_BASE: u32 = 0x1B;
const IA32_GS_BASE: u32 = 0xC000_0101;

const IDLE: u32 = 0;
const POSTED: u32 = 1;
const DONE: u32 = 2;

type Job = *const (dyn Fn(usize) + Sync);

/// What each CPU knows about itself. GS base points at its entry.
#[repr(C, align(64))]
pub struct PerCpu {
    self_ptr: AtomicU64,
    index: AtomicU64,
    /// Local APIC ID.
    pub apic_id: AtomicU32,
    /// Set when the CPU finished its initialisation.
    pub online: AtomicBool,
    /// TR selector loaded on this CPU.
    pub tr: AtomicU32,
    state: AtomicU32,
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written only by the poster while `state` is IDLE, and read only by the owning
// CPU after it observed POSTED (acquire/release on `state`).
unsafe impl Sync for PerCpu {}

static PERCPU: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        self_ptr: AtomicU64::new(0),
        index: AtomicU64::new(0),
        apic_id: AtomicU32::new(0),
        online: AtomicBool::new(false),
        tr: AtomicU32::new(0),
        state: AtomicU32::new(IDLE),
        job: UnsafeCell::new(None),
    }
}; MAX_CPUS];

static CPU_COUNT: AtomicUsize = AtomicUsize::new(1);
static AP_INDEX: AtomicUsize = AtomicUsize::new(0);
static RUN_LOCK: SpinLock<()> = SpinLock::new(());

/// Per-CPU data of CPU `i`.
pub fn percpu(i: usize) -> &'static PerCpu {
    &PERCPU[i]
}

/// Number of CPUs online.
pub fn cpu_count() -> usize {
    CPU_COUNT.load(Ordering::SeqCst)
}

/// Index of the running CPU (0 = BSP).
pub fn cpu_index() -> usize {
    let v: u64;
    // SAFETY: GS base points at this CPU's `PerCpu` (set in `cpu_init` before any caller runs);
    // offset 8 is `index`.
    unsafe { asm!("mov {}, gs:[8]", out(reg) v, options(readonly, nostack, preserves_flags)) }
    v as usize
}

/// [`cpu_index`] if GS is already set up on this CPU (for the exception path).
pub fn try_cpu_index() -> Option<usize> {
    // SAFETY: IA32_GS_BASE exists on every x86-64 CPU.
    let gs = unsafe { rdmsr(IA32_GS_BASE) };
    (gs != 0).then(cpu_index)
}

fn apic_base() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC (all x86-64 CPUs).
    unsafe { rdmsr(IA32_APIC_BASE) & 0xFFFF_F000 }
}

fn apic_read(reg: u64) -> u32 {
    // SAFETY: the APIC page is identity-mapped (0-4 GiB) and `reg` is a register offset.
    unsafe { ((apic_base() + reg) as *const u32).read_volatile() }
}

fn apic_write(reg: u64, v: u32) {
    // SAFETY: as in `apic_read`; callers write documented registers only.
    unsafe { ((apic_base() + reg) as *mut u32).write_volatile(v) }
}

/// Signals end of interrupt to the local APIC.
pub fn eoi() {
    apic_write(0xB0, 0);
}

/// This CPU's local APIC ID.
pub fn apic_id() -> u32 {
    apic_read(0x20) >> 24
}

fn send_ipi(dest: u32, icr_low: u32) {
    apic_write(0x310, dest << 24);
    apic_write(0x300, icr_low);
    // Delivery status (bit 12) clears when the IPI was accepted.
    let start = rdtsc();
    while apic_read(0x300) & (1 << 12) != 0 && rdtsc() - start < 1_000_000_000 {
        crate::arch::pause();
    }
}

/// Per-CPU initialisation, on the CPU itself: IDT/TSS, GS base, local APIC, VMX.
fn cpu_init(i: usize) {
    let pc = &PERCPU[i];
    pc.self_ptr
        .store(pc as *const PerCpu as u64, Ordering::SeqCst);
    pc.index.store(i as u64, Ordering::SeqCst);
    // SAFETY: IA32_GS_BASE is architectural; the kernel does not otherwise use GS.
    unsafe { wrmsr(IA32_GS_BASE, pc as *const PerCpu as u64) };
    let tr = crate::interrupts::load_on_this_cpu(i);
    pc.tr.store(u32::from(tr), Ordering::SeqCst);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { rdmsr(IA32_APIC_BASE) };
    // SAFETY: set the global-enable bit (bit 11) keeping the base address.
    unsafe { wrmsr(IA32_APIC_BASE, base | 1 << 11) };
    // Spurious-interrupt vector register: software enable (bit 8).
    apic_write(0xF0, 0x100 | u32::from(SPURIOUS_VECTOR));
    pc.apic_id.store(apic_id(), Ordering::SeqCst);
    vmx::enable_on_this_cpu(i);
}

/// Initialises the BSP.
pub fn init_bsp() {
    cpu_init(0);
    PERCPU[0].online.store(true, Ordering::SeqCst);
}

/// Starts CPUs 1..n by INIT-SIPI-SIPI. Returns how many CPUs are online.
pub fn start_aps(n: usize) -> usize {
    let n = n.min(MAX_CPUS);
    let tramp = boot::trampoline();
    // SAFETY: 0x8000..0x9000 is free conventional memory below 1 MiB that nothing else uses
    // (the page allocator only hands out memory above the kernel).
    unsafe {
        core::ptr::copy_nonoverlapping(tramp.as_ptr(), TRAMPOLINE_PHYS as *mut u8, tramp.len())
    };
    #[allow(clippy::needless_range_loop)] // `i` is also the AP's index and APIC ID.
    for i in 1..n {
        let Some(stack) = mm::alloc_pages(16, 4096) else {
            println!("smp: no memory for the stack of CPU {i}");
            break;
        };
        boot::AP_STACK_TOP.store(stack + 16 * mm::PAGE, Ordering::SeqCst);
        AP_INDEX.store(i, Ordering::SeqCst);
        let dest = i as u32;
        // INIT (delivery mode 101b, level assert), then two SIPIs with the trampoline page.
        send_ipi(dest, 0x4500);
        time::delay_us(10_000);
        let sipi = 0x4600 | (TRAMPOLINE_PHYS >> 12) as u32;
        send_ipi(dest, sipi);
        time::delay_us(200);
        if !PERCPU[i].online.load(Ordering::SeqCst) {
            send_ipi(dest, sipi);
        }
        let start = time::now_ns();
        while !PERCPU[i].online.load(Ordering::SeqCst) && time::now_ns() - start < 1_000_000_000 {
            crate::arch::pause();
        }
        if !PERCPU[i].online.load(Ordering::SeqCst) {
            println!("smp: CPU {i} (APIC ID {dest}) did not come up");
            break;
        }
        CPU_COUNT.store(i + 1, Ordering::SeqCst);
    }
    cpu_count()
}

#[no_mangle]
extern "C" fn ap_main() -> ! {
    let i = AP_INDEX.load(Ordering::SeqCst);
    cpu_init(i);
    let pc = &PERCPU[i];
    pc.online.store(true, Ordering::SeqCst);
    loop {
        crate::arch::cli();
        if pc.state.load(Ordering::Acquire) == POSTED {
            // SAFETY: POSTED means the poster wrote `job` and waits for DONE before touching it.
            let job = unsafe { *pc.job.get() };
            if let Some(job) = job {
                // SAFETY: the poster keeps the closure alive until it observes DONE.
                unsafe { (*job)(i) };
            }
            pc.state.store(DONE, Ordering::Release);
            continue;
        }
        // SAFETY: `sti; hlt` waits for the wake-up IPI; the STI shadow makes the pair atomic, so
        // an IPI arriving between the check above and HLT is not lost.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
    }
}

/// Runs `f(cpu)` on every online CPU in `mask` (bit i = CPU i) at the same time, the caller's
/// CPU included if its bit is set, and returns when all have finished.
pub fn run_on_cpus(mask: u64, f: &(dyn Fn(usize) + Sync)) {
    let _guard = RUN_LOCK.lock();
    let me = cpu_index();
    // SAFETY: only the lifetime is erased; this function waits for every CPU to finish with the
    // closure (DONE) before returning, so the reference outlives every use.
    let job: Job = unsafe {
        core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
    };
    let others =
        |i: usize| i != me && mask & (1 << i) != 0 && PERCPU[i].online.load(Ordering::SeqCst);
    for (i, pc) in PERCPU.iter().enumerate().take(cpu_count()) {
        if others(i) {
            // SAFETY: state is IDLE (the previous run waited for DONE and reset it), so the AP
            // does not read `job` now.
            unsafe { *pc.job.get() = Some(job) };
            pc.state.store(POSTED, Ordering::Release);
            send_ipi(
                pc.apic_id.load(Ordering::SeqCst),
                u32::from(WAKE_VECTOR) | 0x4000,
            );
        }
    }
    if mask & (1 << me) != 0 {
        f(me);
    }
    for (i, pc) in PERCPU.iter().enumerate().take(cpu_count()) {
        if others(i) {
            while pc.state.load(Ordering::Acquire) != DONE {
                crate::arch::pause();
            }
            pc.state.store(IDLE, Ordering::SeqCst);
        }
    }
}

/// Sends the wake-up IPI to CPU `cpu`: wakes it from HLT, or forces a VM exit when it runs a
/// guest with external-interrupt exiting.
pub fn kick(cpu: usize) {
    if cpu < cpu_count() {
        send_ipi(
            PERCPU[cpu].apic_id.load(Ordering::SeqCst),
            u32::from(WAKE_VECTOR) | 0x4000,
        );
    }
}

/// Sends an NMI to CPU `cpu` (ICR delivery mode 100b, SDM Vol. 3A §12.6.1).
pub fn send_nmi(cpu: usize) {
    if cpu < cpu_count() {
        send_ipi(PERCPU[cpu].apic_id.load(Ordering::SeqCst), 0x400 | 0x4000);
    }
}

/// Runs `f` on every online CPU.
pub fn run_on_all(f: &(dyn Fn(usize) + Sync)) {
    run_on_cpus(u64::MAX, f);
}
