//! `impl CpuRoots` on ntoskrnl: per-CPU VMX roots, VMX operation on every CPU from the first
//! VM's creation to the last VM's destruction (HAXM did the same, so other VT-x users run while
//! rhax is idle).
//!
//! * Slots: one per CPU (system-wide index over all processor groups), sized from the active
//!   processor count and allocated (fallibly) by the first `vm_created`; kept until unload.
//! * `vm_created` / `vm_destroyed` (passive level, serialized by a passive lock): the first
//!   allocates the VMXON regions at passive level, then binds the thread to each CPU in turn
//!   and runs `VmxRoot::enable` there at DISPATCH_LEVEL (plus a global INVEPT: translations
//!   cached under an earlier VMXON, ours or another hypervisor's, may survive VMXOFF, as KVM
//!   notes in `vmx_hardware_enable`); any failure undoes every CPU and returns `Err`. The last
//!   VMXOFFs every CPU the same way and frees the regions.
//! * `with_current`: IRQL raised to DISPATCH_LEVEL (CR8, as wdm.h's inline KeRaiseIrql) and
//!   interrupts off for exactly the closure (VM entry needs them off: `VmxRoot::enable`'s
//!   contract); afterwards the host GDTR/IDTR limits, LDTR and (if not 0x67) the TR limit that
//!   a VM exit clobbers (SDM Vol. 3C §28.5.2: GDTR/IDTR limits 0xFFFF, LDTR unusable, TR limit
//!   0x67) are restored before interrupts come back. Host interrupts that forced the exit are
//!   delivered when IF and then IRQL drop.
//! * `with_cpu`: the thread bound to that CPU, then `with_current`.
//! * `invept_each_cpu`: KeIpiGenericCall; each CPU that is in VMX operation executes INVEPT in
//!   the IPI handler with a fresh `HwVmx` (INVEPT needs VMX root, no VMCS and no root object:
//!   the interrupted thread's lend is never touched). A CPU in guest mode takes the IPI as a
//!   VM exit first, and handles it once its lend ends; the call returns when all have flushed.
//!
//! UNVERIFIED on real Windows: this is written from the SDM and the WDK documentation and has
//! only been compiled. Nothing here runs under Wine (no VM is ever created there); none of it
//! runs at load or unload unless a VM was created.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use alloc::boxed::Box;
use alloc::vec::Vec;

use rhax_core::dispatch::{CpuRoots, RootUnavailable};
use rhax_core::platform::{CpuIndex, PhysPages};
use rhax_core::vmx::caps::EptVpidCap;
use rhax_core::vmx::hw::HwVmx;
use rhax_core::vmx::instructions::InveptType;
use rhax_core::vmx::root::{EnableError, VmxRoot};
use rhax_core::vmx::Vmx;

use crate::nt::ke::{self, APC_LEVEL, DISPATCH_LEVEL};
use crate::platform::{alloc_contiguous, free_contiguous, on_processor, NtPlatform};

/// One CPU's VMX state.
struct CpuSlot {
    /// The root while the CPU is in VMX operation.
    root: UnsafeCell<Option<VmxRoot<HwVmx>>>,
    /// The VMXON region between its allocation and VMXON, and after VMXOFF until freed.
    region: UnsafeCell<Option<PhysPages>>,
    /// A lend (or enable/disable) is using `root` on this CPU: catches re-entry.
    busy: AtomicBool,
    /// VMXON done and VMXOFF not begun: the IPI worker may execute INVEPT here.
    vmx_on: AtomicBool,
    /// This CPU supports all-context INVEPT (IA32_VMX_EPT_VPID_CAP bits 20 and 26).
    invept_global: AtomicBool,
}

// SAFETY: `root` is touched only on its own CPU at DISPATCH_LEVEL or above (lends, enable and
// disable run bound to that CPU and non-preemptible; the IPI worker reads only `vmx_on`), and
// `busy` excludes two users on that CPU. `region` is touched only under the state lock by the
// thread doing enable/disable (at passive level or bound to the slot's CPU). Atomics otherwise.
unsafe impl Sync for CpuSlot {}

impl CpuSlot {
    const fn new() -> Self {
        CpuSlot {
            root: UnsafeCell::new(None),
            region: UnsafeCell::new(None),
            busy: AtomicBool::new(false),
            vmx_on: AtomicBool::new(false),
            invept_global: AtomicBool::new(false),
        }
    }
}

/// A lock for passive-level callers that may sleep while holding it (enable/disable bind
/// the thread to other CPUs): waiters sleep 1 ms between attempts.
struct PassiveLock {
    held: AtomicBool,
}

impl PassiveLock {
    fn lock(&self) -> PassiveGuard<'_> {
        while self
            .held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            let interval: i64 = -10_000; // relative, 100-ns units: 1 ms
                                         // SAFETY: passive level (vm_created/vm_destroyed's contract); KernelMode, not
                                         // alertable, a valid interval.
            unsafe { ke::KeDelayExecutionThread(0, 0, &interval) };
        }
        PassiveGuard { lock: self }
    }
}

struct PassiveGuard<'a> {
    lock: &'a PassiveLock,
}

impl Drop for PassiveGuard<'_> {
    fn drop(&mut self) {
        self.lock.held.store(false, Ordering::Release);
    }
}

/// The per-CPU VMX roots the dispatcher borrows.
pub struct NtRoots {
    /// The slots (a leaked `Box<[CpuSlot]>`, published once), null before the first VM.
    slots: AtomicPtr<CpuSlot>,
    slot_count: AtomicUsize,
    /// Serializes `vm_created`/`vm_destroyed`.
    state: PassiveLock,
    /// Live VMs (written under `state`).
    vms: AtomicU32,
}

impl Default for NtRoots {
    fn default() -> Self {
        Self::new()
    }
}

impl NtRoots {
    /// No CPU in VMX operation yet; nothing allocated (Wine-safe: calls nothing).
    pub fn new() -> NtRoots {
        NtRoots {
            slots: AtomicPtr::new(core::ptr::null_mut()),
            slot_count: AtomicUsize::new(0),
            state: PassiveLock {
                held: AtomicBool::new(false),
            },
            vms: AtomicU32::new(0),
        }
    }

    fn slots(&self) -> &[CpuSlot] {
        let p = self.slots.load(Ordering::Acquire);
        if p.is_null() {
            return &[];
        }
        // SAFETY: published once (Release after the count) from a leaked boxed slice of
        // `slot_count` slots, freed only by drop.
        unsafe { core::slice::from_raw_parts(p, self.slot_count.load(Ordering::Relaxed)) }
    }

    /// Allocates the slots if not yet (under `state`).
    fn ensure_slots(&self) -> Result<(), RootUnavailable> {
        if !self.slots.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        let n = NtPlatform::cpu_count_now() as usize;
        let mut v: Vec<CpuSlot> = Vec::new();
        v.try_reserve_exact(n).map_err(|_| RootUnavailable)?;
        v.extend((0..n).map(|_| CpuSlot::new()));
        let boxed = v.into_boxed_slice();
        self.slot_count.store(boxed.len(), Ordering::Relaxed);
        self.slots
            .store(Box::into_raw(boxed).cast::<CpuSlot>(), Ordering::Release);
        Ok(())
    }

    /// VMXON on every CPU; all or nothing. Under `state`, at passive level.
    fn enable_all(&self) -> Result<(), RootUnavailable> {
        self.ensure_slots()?;
        let slots = self.slots();
        for slot in slots {
            match alloc_contiguous(1) {
                // SAFETY: under `state` with no VM: nothing else touches `region`.
                Ok(region) => unsafe { *slot.region.get() = Some(region) },
                Err(_) => {
                    self.free_regions();
                    return Err(RootUnavailable);
                }
            }
        }
        let failed = AtomicBool::new(false);
        for (cpu, slot) in slots.iter().enumerate() {
            let cpu = cpu as CpuIndex;
            let ran = on_processor(cpu, || {
                if !enable_here(slot, cpu) {
                    failed.store(true, Ordering::Relaxed);
                }
            });
            if !ran {
                failed.store(true, Ordering::Relaxed);
            }
        }
        if failed.load(Ordering::Relaxed) {
            self.disable_all();
            return Err(RootUnavailable);
        }
        Ok(())
    }

    /// VMXOFF on every CPU in VMX operation, then the regions freed. Under `state`, passive.
    fn disable_all(&self) {
        for (cpu, slot) in self.slots().iter().enumerate() {
            on_processor(cpu as CpuIndex, || disable_here(slot));
        }
        self.free_regions();
    }

    fn free_regions(&self) {
        for slot in self.slots() {
            // SAFETY: under `state`; `region` is not used by the CPU any more (never entered
            // or VMXOFF done).
            if let Some(region) = unsafe { (*slot.region.get()).take() } {
                free_contiguous(region);
            }
        }
    }
}

/// VMXON on this CPU with the slot's region. Bound to `cpu` at DISPATCH_LEVEL, under `state`.
fn enable_here(slot: &CpuSlot, cpu: CpuIndex) -> bool {
    if slot.busy.swap(true, Ordering::Acquire) {
        return false;
    }
    // SAFETY: under `state`, on the slot's CPU (see `CpuSlot`).
    let region = unsafe { &mut *slot.region.get() }.take();
    // SAFETY: on the slot's CPU, non-preemptible, `busy` held.
    let root = unsafe { &mut *slot.root.get() };
    let ok = match (region, root.is_some()) {
        (Some(region), false) => {
            // SAFETY: CPL 0; the handle lives in the slot of this CPU, used only here at
            // DISPATCH_LEVEL or above.
            let hw = unsafe { HwVmx::new() };
            // SAFETY: CPL 0, bound to this CPU at DISPATCH_LEVEL; the root stays in this
            // CPU's slot and is used only on it, non-preemptible, with interrupts off around
            // runs (`with_current`); `region` is one page from the platform.
            match unsafe { VmxRoot::enable(hw, cpu, region) } {
                Ok(mut r) => {
                    let global = r
                        .caps()
                        .ept_vpid
                        .contains(EptVpidCap::INVEPT | EptVpidCap::INVEPT_ALL_CONTEXT);
                    slot.invept_global.store(global, Ordering::SeqCst);
                    if global {
                        // Stale translations of an earlier VMX session may survive VMXOFF
                        // (KVM's ept_sync_global at enable, for the same reason).
                        // SAFETY: VMX root on this CPU (just entered); the type is supported.
                        let _ = unsafe { r.vmx().invept(InveptType::Global, 0) };
                    }
                    *root = Some(r);
                    slot.vmx_on.store(true, Ordering::SeqCst);
                    true
                }
                Err((e, _, region)) => {
                    // SAFETY: as above.
                    unsafe { *slot.region.get() = Some(region) };
                    let why: &core::ffi::CStr = match e {
                        EnableError::DisabledByFirmware => c"disabled by firmware",
                        EnableError::Cr0NotAllowed => c"CR0 not allowed by IA32_VMX_CR0_FIXED",
                        EnableError::Cr4NotAllowed => c"CR4 not allowed by IA32_VMX_CR4_FIXED",
                        EnableError::BadRegion => c"bad VMXON region",
                        EnableError::Vmxon(_) => c"VMXON failed (another hypervisor?)",
                    };
                    // SAFETY: a NUL-terminated format with %u and %s arguments (a static C
                    // string); DbgPrint may be called at DISPATCH_LEVEL.
                    unsafe {
                        crate::nt::DbgPrint(
                            c"rhax: VT-x could not be entered on CPU %u: %s\n"
                                .as_ptr()
                                .cast(),
                            cpu,
                            why.as_ptr(),
                        )
                    };
                    false
                }
            }
        }
        (region, _) => {
            // SAFETY: as above.
            unsafe { *slot.region.get() = region };
            false
        }
    };
    slot.busy.store(false, Ordering::Release);
    ok
}

/// VMXOFF on this CPU. Bound to the slot's CPU at DISPATCH_LEVEL, under `state`.
fn disable_here(slot: &CpuSlot) {
    if slot.busy.swap(true, Ordering::Acquire) {
        return;
    }
    // SAFETY: on the slot's CPU, non-preemptible, `busy` held.
    let root = unsafe { &mut *slot.root.get() };
    if let Some(r) = root.take() {
        slot.vmx_on.store(false, Ordering::SeqCst);
        match r.disable() {
            // SAFETY: under `state` (see `CpuSlot`).
            Ok((_, region)) => unsafe { *slot.region.get() = Some(region) },
            Err((r, _)) => {
                // Still in VMX operation: keep the root (and its region) as it was.
                *root = Some(*r);
                slot.vmx_on.store(true, Ordering::SeqCst);
            }
        }
    }
    slot.busy.store(false, Ordering::Release);
}

impl Drop for NtRoots {
    fn drop(&mut self) {
        if self.slots.load(Ordering::Acquire).is_null() {
            return; // never used: the Wine path (calls nothing)
        }
        if self.vms.load(Ordering::Relaxed) != 0 {
            let _g = self.state.lock();
            self.disable_all();
        }
        let p = self.slots.swap(core::ptr::null_mut(), Ordering::AcqRel);
        let n = self.slot_count.load(Ordering::Relaxed);
        // SAFETY: the leaked boxed slice of `ensure_slots`, not referenced any more (`&mut
        // self`; every CPU left VMX operation).
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(p, n)) });
    }
}

/// Host state a VM exit changes and Windows needs back:
/// * SDM Vol. 3C §28.5.2: GDTR/IDTR bases come from the VMCS with limits 0xFFFF, LDTR is left
///   unusable (null), TR gets limit 0x67;
/// * §28.5.2 too: DS/ES get the host selector fields, which must have RPL 0 (§27.2.3), while
///   Windows x64 runs with DS = ES = 0x2B (KGDT64_R3_DATA | RPL 3), which user mode sees;
/// * §28.5.1: DR7 becomes 0x400 and IA32_DEBUGCTL 0 (a kernel debugger's hardware
///   breakpoints and branch tracing would be lost).
///
/// FS and GS keep RPL 0 after the exit (0x50, 0x28 instead of 0x53, 0x2B: the same
/// descriptors; their bases, which are what 64-bit code uses, come right from the VMCS).
/// Reloading the selectors would reload the bases from the GDT, and GS's is the kernel's PCR:
/// an NMI between the reload and the WRMSR that repairs it would crash, so they are left.
struct HostDescriptors {
    gdtr: [u8; 10],
    idtr: [u8; 10],
    ldtr: u16,
    tr: u16,
    tr_limit: Option<u32>,
    ds: u16,
    es: u16,
    dr7: u64,
    debugctl: u64,
}

/// IA32_DEBUGCTL.
const IA32_DEBUGCTL: u32 = 0x1d9;
/// DR7 after a VM exit (SDM Vol. 3C §28.5.1).
const EXIT_DR7: u64 = 0x400;

/// The TR limit a VM exit leaves (SDM Vol. 3C §28.5.2); Windows x64's KTSS64 has exactly this
/// limit, so the TR reload below is not expected to run there.
const EXIT_TR_LIMIT: u32 = 0x67;

impl HostDescriptors {
    /// Reads them on this CPU.
    ///
    /// # Safety
    /// CPL 0, interrupts off (nothing may change them before `restore`).
    unsafe fn save() -> Self {
        let mut gdtr = [0u8; 10];
        let mut idtr = [0u8; 10];
        let ldtr: u16;
        let tr: u16;
        // SAFETY: SGDT stores 10 bytes into `gdtr`.
        unsafe { core::arch::asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack)) };
        // SAFETY: SIDT stores 10 bytes into `idtr`.
        unsafe { core::arch::asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack)) };
        // SAFETY: SLDT/STR read selectors, no side effect.
        unsafe { core::arch::asm!("sldt {0:x}", out(reg) ldtr, options(nomem, nostack)) };
        // SAFETY: as above.
        unsafe { core::arch::asm!("str {0:x}", out(reg) tr, options(nomem, nostack)) };
        let limit: u32;
        let valid: u8;
        // SAFETY: LSL reads the limit of the descriptor TR selects (a TSS: allowed for LSL,
        // SDM Vol. 2A LSL), setting ZF when it could.
        unsafe {
            core::arch::asm!(
                "lsl {l:e}, {s:e}", "setz {v}",
                l = out(reg) limit, s = in(reg) u32::from(tr), v = out(reg_byte) valid,
                options(nomem, nostack)
            )
        };
        let ds: u16;
        let es: u16;
        let dr7: u64;
        // SAFETY: reading segment registers has no side effect.
        unsafe { core::arch::asm!("mov {0:x}, ds", out(reg) ds, options(nomem, nostack)) };
        // SAFETY: as above.
        unsafe { core::arch::asm!("mov {0:x}, es", out(reg) es, options(nomem, nostack)) };
        // SAFETY: MOV from DR7 at CPL 0 (caller's contract).
        unsafe { core::arch::asm!("mov {}, dr7", out(reg) dr7, options(nomem, nostack)) };
        let (lo, hi): (u32, u32);
        // SAFETY: RDMSR at CPL 0; IA32_DEBUGCTL exists on every Intel 64 processor.
        unsafe {
            core::arch::asm!("rdmsr", in("ecx") IA32_DEBUGCTL, out("eax") lo, out("edx") hi,
                options(nomem, nostack))
        };
        let debugctl = u64::from(hi) << 32 | u64::from(lo);
        HostDescriptors {
            gdtr,
            idtr,
            ldtr,
            tr,
            tr_limit: (valid != 0).then_some(limit),
            ds,
            es,
            dr7,
            debugctl,
        }
    }

    /// Puts them back on the CPU `save` ran on.
    ///
    /// # Safety
    /// CPL 0, same CPU as `save`, interrupts still off.
    unsafe fn restore(&self) {
        // SAFETY: the values SGDT/SIDT stored on this CPU: same bases, the original limits.
        unsafe { core::arch::asm!("lgdt [{}]", in(reg) self.gdtr.as_ptr(), options(nostack)) };
        // SAFETY: as above.
        unsafe { core::arch::asm!("lidt [{}]", in(reg) self.idtr.as_ptr(), options(nostack)) };
        // SAFETY: the selectors DS/ES held before the entry (valid data selectors of this GDT).
        unsafe { core::arch::asm!("mov ds, {0:x}", in(reg) self.ds, options(nostack)) };
        // SAFETY: as above.
        unsafe { core::arch::asm!("mov es, {0:x}", in(reg) self.es, options(nostack)) };
        if self.dr7 != EXIT_DR7 {
            // SAFETY: the value DR7 held before the entry (CPL 0).
            unsafe { core::arch::asm!("mov dr7, {}", in(reg) self.dr7, options(nomem, nostack)) };
        }
        if self.debugctl != 0 {
            // SAFETY: WRMSR at CPL 0 of the value IA32_DEBUGCTL held before the entry.
            unsafe {
                core::arch::asm!("wrmsr", in("ecx") IA32_DEBUGCTL,
                    in("eax") self.debugctl as u32, in("edx") (self.debugctl >> 32) as u32,
                    options(nostack))
            };
        }
        if self.ldtr != 0 {
            // SAFETY: the LDT selector that was loaded on this CPU before the entry.
            unsafe { core::arch::asm!("lldt {0:x}", in(reg) self.ldtr, options(nostack)) };
        }
        if let Some(limit) = self.tr_limit {
            if limit != EXIT_TR_LIMIT && self.tr != 0 {
                // LTR needs an available (not busy) TSS descriptor: clear the busy bit (type
                // 0xB -> 0x9, bit 1 of the type in byte 5), then LTR sets it again.
                let base = u64::from_le_bytes([
                    self.gdtr[2],
                    self.gdtr[3],
                    self.gdtr[4],
                    self.gdtr[5],
                    self.gdtr[6],
                    self.gdtr[7],
                    self.gdtr[8],
                    self.gdtr[9],
                ]);
                let type_byte = (base + u64::from(self.tr & !7) + 5) as *mut u8;
                // SAFETY: TR selects a TSS descriptor inside this CPU's GDT (it was loaded).
                unsafe { *type_byte &= !0x2 };
                // SAFETY: reloads the same TSS; restores its limit in the hidden part.
                unsafe { core::arch::asm!("ltr {0:x}", in(reg) self.tr, options(nostack)) };
            }
        }
    }
}

/// RFLAGS with interrupts disabled; returns whether they were enabled.
///
/// # Safety
/// CPL 0.
unsafe fn interrupts_off() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS, then CLI (CPL 0).
    unsafe { core::arch::asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
    flags & (1 << 9) != 0
}

/// The IPI worker of `invept_each_cpu`.
struct InveptRequest<'a> {
    slots: &'a [CpuSlot],
    eptp: u64,
    single_context: bool,
    failures: AtomicU32,
}

unsafe extern "system" fn ipi_invept(argument: usize) -> usize {
    // SAFETY: the address of the request `invept_each_cpu` keeps alive until
    // KeIpiGenericCall returned.
    let req = unsafe { &*(argument as *const InveptRequest<'_>) };
    // SAFETY: any IRQL.
    let cpu = unsafe { ke::KeGetCurrentProcessorNumberEx(core::ptr::null_mut()) } as usize;
    let Some(slot) = req.slots.get(cpu) else {
        return 0;
    };
    if !slot.vmx_on.load(Ordering::SeqCst) {
        return 0;
    }
    // SAFETY: CPL 0, used only in this handler on this CPU.
    let mut hw = unsafe { HwVmx::new() };
    let global = slot.invept_global.load(Ordering::Relaxed);
    let ok = if req.single_context {
        // SAFETY: this CPU is in VMX root operation (`vmx_on`: set after VMXON, cleared
        // before VMXOFF on this same CPU, which this interrupt cannot split); INVEPT needs no
        // current VMCS and changes none; the dispatcher asks for single-context only when
        // negotiation found it supported.
        unsafe { hw.invept(InveptType::SingleContext, req.eptp) }.is_ok()
            // SAFETY: as above; all-context only where supported.
            || (global && unsafe { hw.invept(InveptType::Global, 0) }.is_ok())
    } else {
        // SAFETY: as above.
        unsafe { hw.invept(InveptType::Global, 0) }.is_ok()
    };
    if !ok {
        req.failures.fetch_add(1, Ordering::Relaxed);
    }
    0
}

impl CpuRoots for NtRoots {
    type Vmx = HwVmx;

    fn with_current<T>(
        &self,
        f: impl FnOnce(&mut VmxRoot<HwVmx>) -> T,
    ) -> Result<T, RootUnavailable> {
        // SAFETY: CPL 0 (not on the Wine path: only with a VM).
        let irql = unsafe { ke::current_irql() };
        if irql > DISPATCH_LEVEL {
            return Err(RootUnavailable);
        }
        // SAFETY: raising to DISPATCH_LEVEL (from at most that); lowered below.
        let old = unsafe { ke::raise_irql(DISPATCH_LEVEL) };
        // SAFETY: CPL 0; restored below.
        let were_on = unsafe { interrupts_off() };
        let r = (|| {
            // SAFETY: any IRQL.
            let cpu = unsafe { ke::KeGetCurrentProcessorNumberEx(core::ptr::null_mut()) };
            let slot = self.slots().get(cpu as usize).ok_or(RootUnavailable)?;
            if slot.busy.swap(true, Ordering::Acquire) {
                return Err(RootUnavailable);
            }
            // SAFETY: this CPU's slot, non-preemptible, `busy` held (see `CpuSlot`).
            let r = match unsafe { &mut *slot.root.get() } {
                Some(root) => {
                    // SAFETY: CPL 0, interrupts off until after `restore`.
                    let host = unsafe { HostDescriptors::save() };
                    let r = f(root);
                    // SAFETY: same CPU, interrupts still off.
                    unsafe { host.restore() };
                    Ok(r)
                }
                None => Err(RootUnavailable),
            };
            slot.busy.store(false, Ordering::Release);
            r
        })();
        if were_on {
            // SAFETY: interrupts were on before `interrupts_off`.
            unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
        }
        // SAFETY: restores the IRQL raised from.
        unsafe { ke::lower_irql(old) };
        r
    }

    fn with_cpu<T: Send>(
        &self,
        cpu: CpuIndex,
        f: impl FnOnce(&mut VmxRoot<HwVmx>) -> T + Send,
    ) -> Result<T, RootUnavailable> {
        // SAFETY: CPL 0.
        if unsafe { ke::current_irql() } > APC_LEVEL {
            // The thread cannot be moved: only the current CPU is reachable.
            // SAFETY: any IRQL.
            let here = unsafe { ke::KeGetCurrentProcessorNumberEx(core::ptr::null_mut()) };
            return if here == cpu {
                self.with_current(f)
            } else {
                Err(RootUnavailable)
            };
        }
        let mut out = Err(RootUnavailable);
        on_processor(cpu, || out = self.with_current(f));
        out
    }

    fn invept_each_cpu(&self, eptp: u64, single_context: bool) {
        let slots = self.slots();
        if slots.iter().all(|s| !s.vmx_on.load(Ordering::SeqCst)) {
            return;
        }
        let req = InveptRequest {
            slots,
            eptp,
            single_context,
            failures: AtomicU32::new(0),
        };
        // SAFETY: IRQL <= DISPATCH_LEVEL (the dispatcher calls this at passive level, outside
        // any lend); `req` outlives the call, which returns once every CPU ran the worker.
        unsafe { ke::KeIpiGenericCall(ipi_invept, &req as *const InveptRequest<'_> as usize) };
        let failures = req.failures.load(Ordering::Relaxed);
        if failures != 0 {
            // SAFETY: a NUL-terminated format with one %u argument.
            unsafe {
                crate::nt::DbgPrint(
                    c"rhax: INVEPT failed on %u CPU(s)\n".as_ptr().cast(),
                    failures,
                )
            };
        }
    }

    fn vm_created(&self) -> Result<(), RootUnavailable> {
        // Measured here, at passive level, so that no lend ever waits for it.
        crate::platform::tsc_hz();
        let _g = self.state.lock();
        let n = self.vms.load(Ordering::Relaxed);
        if n == 0 {
            self.enable_all()?;
        }
        self.vms.store(n + 1, Ordering::Relaxed);
        Ok(())
    }

    fn vm_destroyed(&self) {
        let _g = self.state.lock();
        let n = self.vms.load(Ordering::Relaxed);
        if n == 0 {
            return; // unmatched: the trait promises it does not happen
        }
        self.vms.store(n - 1, Ordering::Relaxed);
        if n == 1 {
            self.disable_all();
        }
    }
}
