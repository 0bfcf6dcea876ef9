//! `impl CpuRoots` on Linux: per-CPU VMX roots, VMX operation on every online CPU from the
//! first VM's creation to the last VM's destruction (as HAXM and KVM do: other VT-x users run
//! while rhax is idle).
//!
//! * Slots: one per CPU number below nr_cpu_ids, allocated (fallibly) by the first
//!   `vm_created`; kept until unload.
//! * `vm_created` / `vm_destroyed` (process context, serialized by the glue's mutex): the
//!   first allocates the VMXON regions, then runs `VmxRoot::enable` on each online CPU in an
//!   IPI handler (smp_call_function_single: interrupts off) after setting CR4.VMXE through
//!   the kernel's CR4 shadow (cr4_set_bits, as KVM's `kvm_cpu_vmxon`: a raw MOV to CR4 would
//!   be undone by the kernel's next shadow-based CR4 write, which #GPs in VMX operation).
//!   A CPU whose CR4.VMXE is already set is in use by another hypervisor (KVM running VMs,
//!   VirtualBox): refused with a printk, and every CPU undone. The last VM VMXOFFs every CPU
//!   and clears CR4.VMXE the same way.
//! * `with_current`: the glue's lend (preemption and interrupts off, the host state a VM exit
//!   clobbers restored as KVM does: GDT via load_fixmap_gdt, TSS limit, IDT, LDT, DS/ES,
//!   DEBUGCTL, DR7) around the closure.
//! * `with_cpu`: smp_call_function_single to that CPU, then the lend there.
//! * `invept_each_cpu`: on_each_cpu; each CPU in VMX operation executes INVEPT in the IPI
//!   handler with a fresh `HwVmx` (no root is borrowed).
//!
//! UNVERIFIED: compiled only; it runs first in the Bochs Linux of issue 10's stage.

use core::cell::UnsafeCell;
use core::ffi::c_void;
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

use crate::ffi;
use crate::platform::{alloc_contiguous, free_contiguous, on_cpu, on_each_cpu};

/// CR4.VMXE (SDM Vol. 3A §2.5).
const CR4_VMXE: u64 = 1 << 13;

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
    /// This CPU supports all-context INVEPT.
    invept_global: AtomicBool,
}

// SAFETY: `root` is touched only on its own CPU with interrupts off (lends, and enable and
// disable in IPI handlers), and `busy` excludes two users there. `region` is touched only
// under the state mutex by the thread doing enable/disable or its IPI handlers, which it
// waits for. Atomics otherwise.
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

/// Holds the glue's state mutex.
struct StateGuard;

impl StateGuard {
    fn lock() -> Self {
        // SAFETY: process context (vm_created/vm_destroyed/drop's contract).
        unsafe { ffi::rhax_glue_state_lock() };
        StateGuard
    }
}

impl Drop for StateGuard {
    fn drop(&mut self) {
        // SAFETY: held since `lock`.
        unsafe { ffi::rhax_glue_state_unlock() };
    }
}

/// The per-CPU VMX roots the dispatcher borrows.
pub struct LinuxRoots {
    slots: AtomicPtr<CpuSlot>,
    slot_count: AtomicUsize,
    /// Live VMs (written under the state mutex).
    vms: AtomicU32,
}

impl LinuxRoots {
    /// No CPU in VMX operation; nothing allocated.
    pub(crate) const fn new() -> Self {
        LinuxRoots {
            slots: AtomicPtr::new(core::ptr::null_mut()),
            slot_count: AtomicUsize::new(0),
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

    fn ensure_slots(&self) -> Result<(), RootUnavailable> {
        if !self.slots.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        // SAFETY: any context.
        let n = unsafe { ffi::rhax_glue_cpu_ids() }.max(1) as usize;
        let mut v: Vec<CpuSlot> = Vec::new();
        v.try_reserve_exact(n).map_err(|_| RootUnavailable)?;
        v.extend((0..n).map(|_| CpuSlot::new()));
        let boxed = v.into_boxed_slice();
        self.slot_count.store(boxed.len(), Ordering::Relaxed);
        self.slots
            .store(Box::into_raw(boxed).cast::<CpuSlot>(), Ordering::Release);
        Ok(())
    }

    /// VMXON on every online CPU; all or nothing. Under the state mutex.
    fn enable_all(&self) -> Result<(), RootUnavailable> {
        self.ensure_slots()?;
        let slots = self.slots();
        for (cpu, slot) in slots.iter().enumerate() {
            // SAFETY: any CPU number.
            if !unsafe { ffi::rhax_glue_cpu_online(cpu as u32) } {
                continue;
            }
            match alloc_contiguous(1) {
                // SAFETY: under the state mutex with no VM: nothing else touches `region`.
                Ok(region) => unsafe { *slot.region.get() = Some(region) },
                Err(_) => {
                    self.free_regions();
                    return Err(RootUnavailable);
                }
            }
        }
        let failed = AtomicBool::new(false);
        for (cpu, slot) in slots.iter().enumerate() {
            // SAFETY: as above.
            if !unsafe { ffi::rhax_glue_cpu_online(cpu as u32) } {
                continue;
            }
            let ran = on_cpu(cpu as CpuIndex, &|here| {
                if here != cpu as CpuIndex || !enable_here(slot, here) {
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

    /// VMXOFF on every CPU in VMX operation, then the regions freed. Under the state mutex.
    fn disable_all(&self) {
        for (cpu, slot) in self.slots().iter().enumerate() {
            if slot.vmx_on.load(Ordering::SeqCst) {
                on_cpu(cpu as CpuIndex, &|_| disable_here(slot));
            }
        }
        self.free_regions();
    }

    fn free_regions(&self) {
        for slot in self.slots() {
            // SAFETY: under the state mutex; the region is not used by the CPU any more
            // (never entered, or VMXOFF done).
            if let Some(region) = unsafe { (*slot.region.get()).take() } {
                free_contiguous(region);
            }
        }
    }
}

/// CR4 of this CPU.
fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: MOV from CR4 at CPL 0 has no side effect.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

/// VMXON on this CPU with the slot's region. In the IPI handler on `cpu` (interrupts off),
/// under the state mutex held by the waiting caller.
fn enable_here(slot: &CpuSlot, cpu: CpuIndex) -> bool {
    if slot.busy.swap(true, Ordering::Acquire) {
        return false;
    }
    let ok = enable_locked(slot, cpu);
    slot.busy.store(false, Ordering::Release);
    ok
}

fn enable_locked(slot: &CpuSlot, cpu: CpuIndex) -> bool {
    // SAFETY: on the slot's CPU, interrupts off, `busy` held (see `CpuSlot`).
    let root = unsafe { &mut *slot.root.get() };
    if root.is_some() {
        return false;
    }
    if read_cr4() & CR4_VMXE != 0 {
        error!(
            "CPU {}: CR4.VMXE is already set: another hypervisor (KVM running VMs, VirtualBox) \
             is using VT-x; stop its VMs (or unload kvm_intel) and try again",
            cpu
        );
        return false;
    }
    // SAFETY: under the state mutex, on the slot's CPU (see `CpuSlot`).
    let Some(region) = (unsafe { &mut *slot.region.get() }).take() else {
        return false;
    };
    // SAFETY: this CPU, interrupts off (cr4_set_bits' rule).
    unsafe { ffi::rhax_glue_cr4_vmxe(true) };
    // SAFETY: CPL 0; the handle lives in this CPU's slot, used only on it.
    let hw = unsafe { HwVmx::new() };
    // SAFETY: CPL 0, on this CPU non-preemptibly; the root stays in this CPU's slot and is
    // used only on it, with interrupts off around runs (the glue's lend); CR4 changes only
    // through the kernel's shadow, which now includes VMXE; `region` is one platform page.
    match unsafe { VmxRoot::enable(hw, cpu, region) } {
        Ok(mut r) => {
            let global = r
                .caps()
                .ept_vpid
                .contains(EptVpidCap::INVEPT | EptVpidCap::INVEPT_ALL_CONTEXT);
            slot.invept_global.store(global, Ordering::SeqCst);
            if global {
                // Stale translations of an earlier VMX session may survive VMXOFF (KVM's
                // ept_sync_global in vmx_hardware_enable, for the same reason).
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
            // SAFETY: not in VMX operation (VMXON failed or was not executed).
            unsafe { ffi::rhax_glue_cr4_vmxe(false) };
            let why = match e {
                EnableError::DisabledByFirmware => "disabled by firmware (IA32_FEATURE_CONTROL)",
                EnableError::Cr0NotAllowed => "CR0 not allowed by IA32_VMX_CR0_FIXED",
                EnableError::Cr4NotAllowed => "CR4 not allowed by IA32_VMX_CR4_FIXED",
                EnableError::BadRegion => "bad VMXON region",
                EnableError::Vmxon(_) => "VMXON failed (another hypervisor?)",
            };
            error!("VT-x could not be entered on CPU {}: {}", cpu, why);
            false
        }
    }
}

/// VMXOFF on this CPU. In the IPI handler on the slot's CPU, under the state mutex.
fn disable_here(slot: &CpuSlot) {
    if slot.busy.swap(true, Ordering::Acquire) {
        return;
    }
    // SAFETY: on the slot's CPU, interrupts off, `busy` held.
    let root = unsafe { &mut *slot.root.get() };
    if let Some(r) = root.take() {
        slot.vmx_on.store(false, Ordering::SeqCst);
        match r.disable() {
            Ok((_, region)) => {
                // SAFETY: under the state mutex (see `CpuSlot`).
                unsafe { *slot.region.get() = Some(region) };
                // SAFETY: VMXOFF done on this CPU; interrupts off.
                unsafe { ffi::rhax_glue_cr4_vmxe(false) };
            }
            Err((r, _)) => {
                // Still in VMX operation: keep the root (and its region) as it was.
                *root = Some(*r);
                slot.vmx_on.store(true, Ordering::SeqCst);
            }
        }
    }
    slot.busy.store(false, Ordering::Release);
}

impl Drop for LinuxRoots {
    fn drop(&mut self) {
        if self.slots.load(Ordering::Acquire).is_null() {
            return;
        }
        if self.vms.load(Ordering::Relaxed) != 0 {
            let _g = StateGuard::lock();
            self.disable_all();
        }
        let p = self.slots.swap(core::ptr::null_mut(), Ordering::AcqRel);
        let n = self.slot_count.load(Ordering::Relaxed);
        // SAFETY: the leaked boxed slice of `ensure_slots`, not referenced any more (`&mut
        // self`; every CPU left VMX operation).
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(p, n)) });
    }
}

/// The glue's lend calls this with interrupts and preemption off.
///
/// # Safety
/// `ctx` is the address of a `&mut dyn FnMut()` that outlives the call.
#[no_mangle]
pub unsafe extern "C" fn rhax_lend_call(ctx: *mut c_void) {
    // SAFETY: the caller's contract.
    let f = unsafe { &mut *(ctx as *mut &mut dyn FnMut()) };
    f();
}

/// Runs `f` in the glue's lend.
fn lend(f: &mut dyn FnMut()) {
    let mut r: &mut dyn FnMut() = f;
    // SAFETY: `r` outlives the call, which runs it at most once, synchronously.
    unsafe { ffi::rhax_glue_lend(&mut r as *mut &mut dyn FnMut() as *mut c_void) };
}

/// A value moved into an IPI handler that runs once (`Fn` closures cannot take it by value).
struct Once<T>(UnsafeCell<Option<T>>);

// SAFETY: the value is taken by the one handler invocation while the sender waits for it.
unsafe impl<T: Send> Sync for Once<T> {}

impl<T> Once<T> {
    fn put(&self, value: T) {
        // SAFETY: as in `take`: one writer, and the owner reads only after it returned.
        unsafe { *self.0.get() = Some(value) };
    }

    fn take(&self) -> Option<T> {
        // SAFETY: only one handler runs (smp_call_function_single runs the function once),
        // while the owner waits.
        unsafe { (*self.0.get()).take() }
    }
}

impl CpuRoots for LinuxRoots {
    type Vmx = HwVmx;

    fn with_current<T>(
        &self,
        f: impl FnOnce(&mut VmxRoot<HwVmx>) -> T,
    ) -> Result<T, RootUnavailable> {
        let mut f = Some(f);
        let mut out = Err(RootUnavailable);
        lend(&mut || {
            // SAFETY: any context.
            let cpu = unsafe { ffi::rhax_glue_current_cpu() };
            let Some(slot) = self.slots().get(cpu as usize) else {
                return;
            };
            if slot.busy.swap(true, Ordering::Acquire) {
                return;
            }
            // SAFETY: this CPU's slot, interrupts off, `busy` held (see `CpuSlot`).
            if let (Some(root), Some(f)) = (unsafe { &mut *slot.root.get() }, f.take()) {
                out = Ok(f(root));
            }
            slot.busy.store(false, Ordering::Release);
        });
        out
    }

    fn with_cpu<T: Send>(
        &self,
        cpu: CpuIndex,
        f: impl FnOnce(&mut VmxRoot<HwVmx>) -> T + Send,
    ) -> Result<T, RootUnavailable> {
        let f = Once(UnsafeCell::new(Some(f)));
        let out: Once<Result<T, RootUnavailable>> = Once(UnsafeCell::new(None));
        let ran = on_cpu(cpu, &|_| {
            if let Some(f) = f.take() {
                let r = self.with_current(f);
                out.put(r);
            }
        });
        if !ran {
            return Err(RootUnavailable);
        }
        out.take().unwrap_or(Err(RootUnavailable))
    }

    fn invept_each_cpu(&self, eptp: u64, single_context: bool) {
        let slots = self.slots();
        if slots.iter().all(|s| !s.vmx_on.load(Ordering::SeqCst)) {
            return;
        }
        let failures = AtomicU32::new(0);
        on_each_cpu(&|cpu| {
            let Some(slot) = slots.get(cpu as usize) else {
                return;
            };
            if !slot.vmx_on.load(Ordering::SeqCst) {
                return;
            }
            // SAFETY: CPL 0, used only in this handler on this CPU.
            let mut hw = unsafe { HwVmx::new() };
            let global = slot.invept_global.load(Ordering::Relaxed);
            let ok = if single_context {
                // SAFETY: this CPU is in VMX root operation (`vmx_on`: set after VMXON,
                // cleared before VMXOFF on this same CPU with interrupts off, which this
                // handler cannot split); INVEPT needs no current VMCS; the dispatcher asks
                // for single-context only when negotiation found it supported.
                unsafe { hw.invept(InveptType::SingleContext, eptp) }.is_ok()
                    // SAFETY: as above; all-context only where supported.
                    || (global && unsafe { hw.invept(InveptType::Global, 0) }.is_ok())
            } else {
                // SAFETY: as above.
                unsafe { hw.invept(InveptType::Global, 0) }.is_ok()
            };
            if !ok {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
        let n = failures.load(Ordering::Relaxed);
        if n != 0 {
            error!("INVEPT failed on {} CPU(s)", n);
        }
    }

    fn vm_created(&self) -> Result<(), RootUnavailable> {
        let _g = StateGuard::lock();
        let n = self.vms.load(Ordering::Relaxed);
        if n == 0 {
            self.enable_all()?;
        }
        self.vms.store(n + 1, Ordering::Relaxed);
        Ok(())
    }

    fn vm_destroyed(&self) {
        let _g = StateGuard::lock();
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
