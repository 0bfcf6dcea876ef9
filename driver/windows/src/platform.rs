//! `impl Platform + UserMapping` on ntoskrnl.
//!
//! * Pages: `MmAllocateContiguousMemorySpecifyCache` (cached, anywhere in physical memory:
//!   negotiation requires 64-bit VMCS addresses), zeroed here, physical address from
//!   `MmGetPhysicalAddress`.
//! * Pinning: an MDL over the user range, `MmProbeAndLockPages(UserMode, IoWriteAccess)`
//!   through the SEH shim (it raises on a bad address); the PFN array follows the MDL header.
//!   Every pin is also registered (`PINS`): [`UserMapping::guest_page`] finds the MDL the
//!   core names (`Translation::pin_handle`) there, with the system mapping it makes lazily.
//! * Processors: system-wide indices over all processor groups
//!   (`KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS)`, `KeGetCurrentProcessorNumberEx`);
//!   work on a given CPU by binding the thread to it (`KeSetSystemGroupAffinityThread`) and
//!   raising IRQL to DISPATCH_LEVEL for the closure.
//! * Kicks: `KeIpiGenericCall` (an IPI at IPI_LEVEL, which the local APIC delivers even while
//!   the target holds DISPATCH_LEVEL around a guest: a DPC's interrupt would be masked there).
//! * User mappings (tunnel, IO buffer): an MDL built over the non-paged pages and
//!   `MmMapLockedPagesSpecifyCache(UserMode)` through the SEH shim, recorded (`MAPS`) with the
//!   process they were mapped into, so that `unmap_user` can undo them in that process.
//!
//! The Wine path (DriverEntry with no VT-x, unload) reaches only `NtPlatform::new`,
//! `current_cpu` and `cpu_count`, which Wine implements.
//!
//! UNVERIFIED on real Windows: nothing here beyond the Wine path has run. It is written from
//! the WDK documentation (wdm.h semantics, IRQL rules quoted per call) and checked statically
//! (`cargo xtask sys`: imports, no SSE).

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rhax_core::dispatch::UserMapping;
use rhax_core::memory::Translation;
use rhax_core::platform::{CpuIndex, PhysPages, PinnedMemory, Platform, PlatformError};

use crate::nt::ke::{self, DISPATCH_LEVEL, GROUP_AFFINITY, KIRQL, PROCESSOR_NUMBER};
use crate::nt::mm::{self, MDL};
use crate::seh;

use crate::pages;

use pages::{PinRegistry, Pinned};

/// The kernel's services as rhax-core sees them.
pub struct NtPlatform {
    _private: (),
}

impl NtPlatform {
    /// Resolves what the platform needs at load (DriverEntry, PASSIVE_LEVEL). Nothing to
    /// resolve today (every import is static and exists since Windows 7/8); kept fallible for
    /// run-time-resolved routines. Calls nothing (Wine-safe).
    pub fn new() -> Result<NtPlatform, i32> {
        Ok(NtPlatform { _private: () })
    }

    /// The active processors of all groups (`KeQueryActiveProcessorCountEx`, any IRQL, in
    /// Wine). Processors added at run time after load are not used (nor were they by HAXM).
    pub(crate) fn cpu_count_now() -> u32 {
        // SAFETY: any IRQL; no pointer.
        unsafe { ke::KeQueryActiveProcessorCountEx(ke::ALL_PROCESSOR_GROUPS) }.max(1)
    }
}

// ---------------------------------------------------------------------------------------
// A spin lock at DISPATCH_LEVEL (KeAcquireSpinLock's behaviour, without its import): the
// holder cannot be preempted, so a waiter on another CPU spins for a bounded time.

/// A value guarded by a spin lock taken at DISPATCH_LEVEL.
pub(crate) struct IrqlSpinLock<T> {
    held: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a guard, and one guard exists at a time.
unsafe impl<T: Send> Sync for IrqlSpinLock<T> {}

impl<T> IrqlSpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        IrqlSpinLock {
            held: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Raises IRQL to DISPATCH_LEVEL (if below) and takes the lock. Callable at IRQL <=
    /// DISPATCH_LEVEL, in ring 0.
    pub(crate) fn lock(&self) -> IrqlGuard<'_, T> {
        // SAFETY: driver code runs at CPL 0 (this is never reached on the Wine path).
        let current = unsafe { ke::current_irql() };
        let old = if current < DISPATCH_LEVEL {
            // SAFETY: raising to DISPATCH_LEVEL from below; lowered back by the guard.
            Some(unsafe { ke::raise_irql(DISPATCH_LEVEL) })
        } else {
            None
        };
        while self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        IrqlGuard { lock: self, old }
    }
}

/// Holds an [`IrqlSpinLock`]; releases it and restores IRQL when dropped.
pub(crate) struct IrqlGuard<'a, T> {
    lock: &'a IrqlSpinLock<T>,
    old: Option<KIRQL>,
}

impl<T> core::ops::Deref for IrqlGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock: no other reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for IrqlGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only one.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for IrqlGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.held.store(false, Ordering::Release);
        if let Some(old) = self.old {
            // SAFETY: restores the IRQL `lock` raised from.
            unsafe { ke::lower_irql(old) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Contiguous pages.

/// Allocates `count` physically contiguous, zeroed, cached pages (IRQL <= DISPATCH_LEVEL).
pub(crate) fn alloc_contiguous(count: usize) -> Result<PhysPages, PlatformError> {
    let bytes = pages::check_alloc(count)?;
    // SAFETY: IRQL <= DISPATCH_LEVEL (every caller is at passive level or in a lend); any
    // physical address is acceptable (lowest 0, highest all ones, no boundary), MmCached.
    let va = unsafe { mm::MmAllocateContiguousMemorySpecifyCache(bytes, 0, -1, 0, mm::MmCached) };
    let virt = NonNull::new(va.cast::<u8>()).ok_or(PlatformError::OutOfMemory)?;
    // SAFETY: `virt` maps `bytes` writable bytes that nothing else references yet (the
    // allocator does not zero them: MmAllocateContiguousMemorySpecifyCache's documentation).
    unsafe { core::ptr::write_bytes(virt.as_ptr(), 0, bytes) };
    // SAFETY: non-paged memory just allocated; any IRQL.
    let phys = unsafe { mm::MmGetPhysicalAddress(va) } as u64;
    // SAFETY: `count` zeroed, contiguous, page-aligned pages at `phys`, owned by the result.
    Ok(unsafe { PhysPages::from_raw(virt, phys, count) })
}

/// Frees pages from [`alloc_contiguous`] (IRQL PASSIVE_LEVEL: MmFreeContiguousMemory).
pub(crate) fn free_contiguous(pages: PhysPages) {
    // SAFETY: the base address MmAllocateContiguousMemorySpecifyCache returned; the pages
    // are no longer used (`PhysPages` is moved in).
    unsafe { mm::MmFreeContiguousMemory(pages.virt().as_ptr().cast()) };
}

// ---------------------------------------------------------------------------------------
// Pins and their registry.

/// What the registry keeps with a pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PinRecord {
    mdl: *mut MDL,
    /// The system-space mapping made by `guest_page` (what MmMapLockedPagesSpecifyCache
    /// returned), null until the first use.
    system_va: *mut c_void,
}

// SAFETY: an MDL and its system mapping are kernel objects usable from any thread.
unsafe impl Send for PinRecord {}

static PINS: IrqlSpinLock<PinRegistry<PinRecord>> = IrqlSpinLock::new(PinRegistry::new());

/// Unlocks and frees a locked MDL, unmapping its system mapping first.
///
/// # Safety
/// `mdl` was locked by MmProbeAndLockPages and is no longer registered or used; `system_va`
/// is null or its KernelMode mapping. IRQL <= DISPATCH_LEVEL.
unsafe fn release_pin(mdl: *mut MDL, system_va: *mut c_void) {
    if !system_va.is_null() {
        // SAFETY: the mapping MmMapLockedPagesSpecifyCache(KernelMode) made for this MDL.
        unsafe { mm::MmUnmapLockedPages(system_va, mdl) };
    }
    // SAFETY: locked by probe-and-lock (caller's contract).
    unsafe { mm::MmUnlockPages(mdl) };
    // SAFETY: allocated by IoAllocateMdl, unlocked, unused.
    unsafe { mm::IoFreeMdl(mdl) };
}

// ---------------------------------------------------------------------------------------
// Processors.

/// Runs `f` on processor `index` at DISPATCH_LEVEL by binding the calling thread to it.
/// `false` when that processor does not exist or the thread did not get there. Caller at
/// IRQL <= APC_LEVEL (KeSetSystemGroupAffinityThread's rule).
pub(crate) fn on_processor(index: u32, f: impl FnOnce()) -> bool {
    let mut number = PROCESSOR_NUMBER::default();
    // SAFETY: any IRQL; writes `number`.
    if unsafe { ke::KeGetProcessorNumberFromIndex(index, &mut number) } != 0 {
        return false;
    }
    if number.Number >= 64 {
        return false;
    }
    let affinity = GROUP_AFFINITY {
        Mask: 1usize << number.Number,
        Group: number.Group,
        Reserved: [0; 3],
    };
    let mut previous = GROUP_AFFINITY::default();
    // SAFETY: IRQL <= APC_LEVEL (caller's contract); a one-processor affinity of an existing
    // processor (KeGetProcessorNumberFromIndex succeeded). The thread runs there on return.
    unsafe { ke::KeSetSystemGroupAffinityThread(&affinity, &mut previous) };
    // SAFETY: raising from <= APC_LEVEL; lowered below.
    let old = unsafe { ke::raise_irql(DISPATCH_LEVEL) };
    // SAFETY: any IRQL.
    let here = unsafe { ke::KeGetCurrentProcessorNumberEx(core::ptr::null_mut()) };
    let ran = here == index;
    if ran {
        f();
    }
    // SAFETY: restores the IRQL raised above.
    unsafe { ke::lower_irql(old) };
    // SAFETY: `previous` is what KeSetSystemGroupAffinityThread returned.
    unsafe { ke::KeRevertToUserGroupAffinityThread(&previous) };
    ran
}

/// The IPI worker of [`Platform::run_on_each_cpu`] above APC_LEVEL.
unsafe extern "system" fn ipi_each(argument: usize) -> usize {
    // SAFETY: `argument` is the address of the `&dyn Fn` run_on_each_cpu keeps alive until
    // KeIpiGenericCall returns.
    let f = unsafe { &*(argument as *const &(dyn Fn(CpuIndex) + Sync)) };
    // SAFETY: any IRQL.
    f(unsafe { ke::KeGetCurrentProcessorNumberEx(core::ptr::null_mut()) });
    0
}

/// The IPI worker of [`Platform::kick`]: the interrupt itself is the point (a vCPU in guest
/// mode on the CPU exits: external-interrupt exiting).
unsafe extern "system" fn ipi_nothing(_argument: usize) -> usize {
    0
}

/// TSC ticks per second, measured once.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// TSC frequency from CPUID leaf 0x15 (crystal clock times the TSC/crystal ratio), when the
/// CPU enumerates all three numbers (SDM Vol. 3B §19.7.3).
fn tsc_hz_from_cpuid() -> Option<u64> {
    use core::arch::x86_64::__cpuid;
    if __cpuid(0).eax < 0x15 {
        return None;
    }
    let l = __cpuid(0x15);
    if l.eax == 0 || l.ebx == 0 || l.ecx == 0 {
        return None;
    }
    Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax))
}

/// TSC frequency measured against the performance counter over ~10 ms (busy wait, at
/// passive level: see [`tsc_hz`]).
fn tsc_hz_measured() -> u64 {
    let mut qpf = 0i64;
    // SAFETY: any IRQL; writes the frequency.
    let q0 = unsafe { ke::KeQueryPerformanceCounter(&mut qpf) };
    // SAFETY: RDTSC is unprivileged.
    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
    let qpf = qpf.max(1) as u64;
    // Each counter read is paired with its TSC read, so a preemption between the two loops'
    // iterations does not skew the ratio.
    let (q1, t1) = loop {
        // SAFETY: any IRQL.
        let q = unsafe { ke::KeQueryPerformanceCounter(core::ptr::null_mut()) };
        // SAFETY: RDTSC is unprivileged.
        let t = unsafe { core::arch::x86_64::_rdtsc() };
        if q.wrapping_sub(q0) as u64 >= qpf / 100 {
            break (q, t);
        }
        core::hint::spin_loop();
    };
    let dq = (q1.wrapping_sub(q0) as u64).max(1);
    (u128::from(t1.wrapping_sub(t0)) * u128::from(qpf) / u128::from(dq)) as u64
}

/// TSC ticks per second: CPUID leaf 0x15 when complete, else measured once (~10 ms busy
/// wait). `NtRoots::vm_created` calls it at passive level before any vCPU exists, so the
/// measurement never runs inside a lend (interrupts off). Not called on the Wine path.
pub(crate) fn tsc_hz() -> u64 {
    let known = TSC_HZ.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let hz = tsc_hz_from_cpuid()
        .unwrap_or_else(tsc_hz_measured)
        .max(1_000_000);
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

impl Platform for NtPlatform {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        alloc_contiguous(count)
    }

    fn free_pages(&self, pages: PhysPages) {
        free_contiguous(pages)
    }

    /// Passive level, in the context of the process owning the range (the IOCTL's caller).
    fn pin(&self, user_address: u64, len: usize) -> Result<PinnedMemory, PlatformError> {
        pages::check_pin(user_address, len)?;
        let length = u32::try_from(len).map_err(|_| PlatformError::Unsupported)?;
        // SAFETY: IRQL <= DISPATCH_LEVEL; the address is only described, not accessed.
        let mdl = unsafe {
            mm::IoAllocateMdl(
                user_address as *mut c_void,
                length,
                0,
                0,
                core::ptr::null_mut(),
            )
        };
        if mdl.is_null() {
            return Err(PlatformError::OutOfMemory);
        }
        // SAFETY: a fresh unlocked MDL over a user range, at passive level in the owning
        // process; the shim turns the exception of a bad range into an error.
        if let Err(status) = unsafe { seh::probe_and_lock(mdl, mm::UserMode, mm::IoWriteAccess) } {
            // SAFETY: allocated above, not locked.
            unsafe { mm::IoFreeMdl(mdl) };
            return Err(pages::pin_error(status));
        }
        let record = PinRecord {
            mdl,
            system_va: core::ptr::null_mut(),
        };
        let inserted = PINS.lock().insert(Pinned {
            start: user_address,
            len,
            value: record,
        });
        if inserted.is_err() {
            // SAFETY: locked above, never registered nor mapped.
            unsafe { release_pin(mdl, core::ptr::null_mut()) };
            return Err(PlatformError::OutOfMemory);
        }
        Ok(PinnedMemory {
            handle: mdl as usize,
            user_address,
            len,
        })
    }

    fn pinned_page(&self, pinned: &PinnedMemory, page_index: usize) -> Option<u64> {
        let pages = pages::span_pages(pinned.user_address, pinned.len as u64)?;
        if page_index as u64 >= pages || pinned.handle == 0 {
            return None;
        }
        let mdl = pinned.handle as *mut MDL;
        // SAFETY: `handle` is the MDL `pin` locked (the core hands back what `pin` returned),
        // whose PFN array has `pages` entries; `page_index` < `pages`.
        let pfn = unsafe { mm::mdl_pfn(mdl, page_index) };
        pfn.checked_mul(pages::PAGE_SIZE)
    }

    /// IRQL <= DISPATCH_LEVEL, any process (the MDL records the owner).
    fn unpin(&self, pinned: PinnedMemory) {
        let mdl = pinned.handle as *mut MDL;
        if mdl.is_null() {
            return;
        }
        let removed = PINS.lock().remove(|p| p.value.mdl == mdl);
        let system_va = removed.map_or(core::ptr::null_mut(), |p| p.value.system_va);
        // SAFETY: `pin` locked this MDL; it is unregistered now, so `guest_page` cannot hand
        // out its mapping any more, and the core no longer uses the pin.
        unsafe { release_pin(mdl, system_va) };
    }

    /// Binds the calling thread to each CPU in turn (all processor groups) and runs `f`
    /// there at DISPATCH_LEVEL: `f` (CPUID/RDMSR, VMXON/VMXOFF) cannot be preempted on its
    /// CPU but may allocate non-paged memory, which KeIpiGenericCall's IPI_LEVEL would forbid.
    /// The caller is at IRQL <= APC_LEVEL; above that (never in rhax) `f` runs on every CPU
    /// at once at IPI_LEVEL through KeIpiGenericCall.
    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync)) {
        // SAFETY: CPL 0.
        if unsafe { ke::current_irql() } > ke::APC_LEVEL {
            let f: &(dyn Fn(CpuIndex) + Sync) = f;
            // SAFETY: IRQL <= DISPATCH_LEVEL (KeIpiGenericCall's rule; the trait's callers are
            // never above); `&f` outlives the call, which waits for every CPU.
            unsafe { ke::KeIpiGenericCall(ipi_each, &f as *const _ as usize) };
            return;
        }
        for cpu in 0..self.cpu_count() {
            on_processor(cpu, || f(cpu));
        }
    }

    /// Binds the thread to `cpu` and runs `f` there at DISPATCH_LEVEL (caller at IRQL <=
    /// APC_LEVEL). A CPU that does not exist runs nothing.
    fn run_on_cpu(&self, cpu: CpuIndex, f: &(dyn Fn() + Sync)) {
        // SAFETY: CPL 0.
        if unsafe { ke::current_irql() } > ke::APC_LEVEL {
            if cpu == self.current_cpu() {
                f();
            } else {
                self.run_on_each_cpu(&|here| {
                    if here == cpu {
                        f()
                    }
                });
            }
            return;
        }
        on_processor(cpu, f);
    }

    fn current_cpu(&self) -> CpuIndex {
        // SAFETY: any IRQL; NULL: only the index is wanted. In Wine.
        unsafe { ke::KeGetCurrentProcessorNumberEx(core::ptr::null_mut()) }
    }

    fn cpu_count(&self) -> u32 {
        NtPlatform::cpu_count_now()
    }

    fn tsc(&self) -> u64 {
        // SAFETY: RDTSC is unprivileged.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    fn tsc_frequency(&self) -> u64 {
        tsc_hz()
    }

    /// An IPI to every CPU (KeIpiGenericCall, IRQL <= DISPATCH_LEVEL): the one on `cpu`
    /// leaves the guest. Broadcast rather than targeted because only the IPI vector is sure to
    /// get through the DISPATCH_LEVEL task priority the vCPU runs at; KICKOFF is rare.
    fn kick(&self, cpu: CpuIndex) {
        if cpu >= self.cpu_count() {
            return;
        }
        // SAFETY: IRQL <= DISPATCH_LEVEL (the IOCTL path); the worker does nothing.
        unsafe { ke::KeIpiGenericCall(ipi_nothing, 0) };
    }
}

// ---------------------------------------------------------------------------------------
// User mappings.

/// One mapping of kernel pages into a process.
struct UserMap {
    user: u64,
    kernel: usize,
    mdl: *mut MDL,
    /// The process mapped into (referenced while the mapping lives).
    process: *mut c_void,
}

// SAFETY: kernel objects usable from any thread.
unsafe impl Send for UserMap {}

static MAPS: IrqlSpinLock<alloc::vec::Vec<UserMap>> = IrqlSpinLock::new(alloc::vec::Vec::new());

/// Unmaps a user mapping in its process and frees its MDL and process reference.
///
/// # Safety
/// `m` is a live mapping taken out of `MAPS`; IRQL <= APC_LEVEL.
unsafe fn release_user_map(m: UserMap) {
    // SAFETY: any IRQL.
    let current = unsafe { mm::IoGetCurrentProcess() };
    if current == m.process {
        // SAFETY: the mapping MmMapLockedPagesSpecifyCache(UserMode) made in this process.
        unsafe { mm::MmUnmapLockedPages(m.user as *mut c_void, m.mdl) };
    } else {
        // The last handle was closed from another process (a duplicated handle): unmap in the
        // owner's address space. The reference taken at map time keeps the process object.
        let mut state = ke::KAPC_STATE { opaque: [0; 0x40] };
        // SAFETY: a referenced process; IRQL <= APC_LEVEL (caller's contract).
        unsafe { ke::KeStackAttachProcess(m.process, &mut state) };
        // SAFETY: now in the owner's context; its mapping of this MDL.
        unsafe { mm::MmUnmapLockedPages(m.user as *mut c_void, m.mdl) };
        // SAFETY: pairs the attach above.
        unsafe { ke::KeUnstackDetachProcess(&mut state) };
    }
    // SAFETY: the MDL is unmapped and unused.
    unsafe { mm::IoFreeMdl(m.mdl) };
    // SAFETY: the reference taken in `map_user`.
    unsafe { mm::ObfDereferenceObject(m.process) };
}

// SAFETY: `guest_page` returns a pointer into the system mapping of the locked MDL that the
// core names as the pin holding the byte (`Translation::pin_handle`, the handle `pin`
// returned), at the byte's offset in that pin (checked against the pin's length), so it
// reaches exactly the guest bytes behind `t`, for the rest of the page; the mapping lives
// until `unpin` removes the entry (under the same lock) and unmaps it, i.e. while the page is
// pinned. It never blocks: a spin lock at DISPATCH_LEVEL and
// MmMapLockedPagesSpecifyCache(KernelMode), which is allowed there and does not wait.
unsafe impl UserMapping for NtPlatform {
    /// Passive level, in the calling process (VCPU_CREATE's caller).
    fn map_user(&self, pages: &PhysPages) -> Result<u64, PlatformError> {
        let bytes = pages
            .count()
            .checked_mul(PhysPages::PAGE_SIZE)
            .and_then(|b| u32::try_from(b).ok())
            .ok_or(PlatformError::Unsupported)?;
        let kernel = pages.virt().as_ptr();
        // SAFETY: describes non-paged kernel pages the caller owns; IRQL <= DISPATCH_LEVEL.
        let mdl = unsafe { mm::IoAllocateMdl(kernel.cast(), bytes, 0, 0, core::ptr::null_mut()) };
        if mdl.is_null() {
            return Err(PlatformError::OutOfMemory);
        }
        // SAFETY: the MDL describes non-paged memory (contiguous pages).
        unsafe { mm::MmBuildMdlForNonPagedPool(mdl) };
        // SAFETY: passive level in the calling process; the MDL describes resident pages; a
        // failure raises, which the shim returns.
        let user = match unsafe {
            seh::map_locked_pages(
                mdl,
                mm::UserMode,
                mm::MmCached,
                // No MdlMappingNoExecute here: the WDK documents it for system mappings
                // (Windows 8+) and is silent on user ones, and HAXM mapped the same pages with
                // NormalPagePriority alone; a refused flag would fail every VCPU_CREATE.
                mm::NormalPagePriority,
            )
        } {
            Ok(va) => va,
            Err(_) => {
                // SAFETY: built above, never mapped.
                unsafe { mm::IoFreeMdl(mdl) };
                return Err(PlatformError::OutOfMemory);
            }
        };
        // SAFETY: any IRQL.
        let process = unsafe { mm::IoGetCurrentProcess() };
        // SAFETY: the current process object is valid; the reference is dropped by
        // `release_user_map`.
        unsafe { mm::ObfReferenceObject(process) };
        let m = UserMap {
            user: user as u64,
            kernel: kernel as usize,
            mdl,
            process,
        };
        let mut maps = MAPS.lock();
        if maps.try_reserve(1).is_err() {
            drop(maps);
            // SAFETY: the mapping made above, at passive level.
            unsafe { release_user_map(m) };
            return Err(PlatformError::OutOfMemory);
        }
        maps.push(m);
        Ok(user as u64)
    }

    /// Called from the core's close, which the shell runs in IRP_MJ_CLEANUP: at passive level
    /// in the context of the process that closed the last handle, also when the process dies
    /// without closing its handles (the handle table is run down, sending CLEANUP, before its
    /// address space goes). If that is not the process the pages were mapped into (a handle
    /// duplicated elsewhere), the mapping is removed by attaching to the owner.
    fn unmap_user(&self, user_address: u64, pages: &PhysPages) {
        let kernel = pages.virt().as_ptr() as usize;
        let found = {
            let mut maps = MAPS.lock();
            maps.iter()
                .position(|m| m.user == user_address && m.kernel == kernel)
                .map(|i| maps.swap_remove(i))
        };
        if let Some(m) = found {
            // SAFETY: taken out of MAPS; passive level (the shell's CLEANUP).
            unsafe { release_user_map(m) };
        }
    }

    fn guest_page(t: &Translation) -> Option<NonNull<u8>> {
        // The core names the pin holding the byte: its MDL (`pin`'s handle) and the offset
        // from the pin's first byte. The registry entry of exactly that MDL keeps its system
        // mapping; a handle that is not registered (never, by the core's contract) is None.
        let mdl = t.pin_handle as *mut MDL;
        let mut pins = PINS.lock();
        let pin = pins.find_mut(|p| p.value.mdl == mdl)?;
        if t.pin_offset >= pin.len {
            return None;
        }
        let rec = &mut pin.value;
        if rec.system_va.is_null() {
            // SAFETY: a locked MDL; KernelMode at DISPATCH_LEVEL is allowed and returns
            // NULL on failure (BugCheckOnFailure FALSE); the mapping is undone by `unpin`.
            rec.system_va = unsafe {
                mm::MmMapLockedPagesSpecifyCache(
                    rec.mdl,
                    mm::KernelMode,
                    mm::MmCached,
                    core::ptr::null_mut(),
                    0,
                    mm::NormalPagePriority | mm::MdlMappingNoExecute,
                )
            };
        }
        let base = rec.system_va as usize;
        if base == 0 {
            return None;
        }
        // The mapping starts at the pin's first byte (MmMapLockedPagesSpecifyCache returns
        // the address of the MDL's buffer, byte offset included).
        NonNull::new(base.checked_add(t.pin_offset)? as *mut u8)
    }
}
