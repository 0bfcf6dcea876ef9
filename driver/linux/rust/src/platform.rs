//! `impl Platform + UserMapping` over the glue.
//!
//! * Pages: alloc_pages + split_page (cached, anywhere: negotiation requires 64-bit VMCS
//!   addresses), zeroed, physical address from page_to_phys; each page has its own reference
//!   count, so a tunnel page still mapped into a process outlives `free_pages` until that
//!   mapping goes (the core may free it from a `release` after the process's mm is gone).
//! * Pinning: pin_user_pages_fast with FOLL_WRITE | FOLL_LONGTERM (guest RAM stays put for
//!   the VM's life: Documentation/core-api/pin_user_pages.rst, case 2); unpinned (dirty) with
//!   unpin_user_pages_dirty_lock.
//! * Guest bytes from the kernel: the direct map of the pinned page (x86-64 maps all RAM).
//! * Processors: Linux CPU numbers `0..nr_cpu_ids` (possibly with offline holes);
//!   on_each_cpu / smp_call_function_single (the closure runs in the IPI handler, interrupts
//!   off). CPU hotplug after the first VM is not followed (HAXM does not either).
//! * Kicks: an empty smp_call_function_single to the CPU (the IPI is the point).
//! * User mappings (tunnel, IO buffer): vm_mmap of an anon-inode file whose mmap inserts the
//!   pages (vm_insert_page: VM_DONTCOPY, VM_DONTEXPAND, VM_DONTDUMP), as HAXM's Linux port
//!   maps them into the process that calls VCPU_CREATE (`haxm-abi.md` §"VCPU_CREATE").
//!
//! UNVERIFIED: compiled and linked against Debian 12's 6.1 headers only; nothing here has run.

use core::ffi::c_void;
use core::ptr::NonNull;

use rhax_core::dispatch::UserMapping;
use rhax_core::memory::Translation;
use rhax_core::platform::{CpuIndex, PhysPages, PinnedMemory, Platform, PlatformError};

use crate::ffi;

/// Larger blocks than this are refused (alloc_pages' MAX_ORDER is 10 on x86-64: 4 MiB).
pub(crate) const MAX_PAGES: usize = 1024;

/// The kernel's services as rhax-core sees them.
pub struct LinuxPlatform {
    _private: (),
}

impl LinuxPlatform {
    /// The platform (nothing to resolve: every import is static).
    pub(crate) const fn new() -> Self {
        LinuxPlatform { _private: () }
    }
}

/// Allocates `count` contiguous zeroed pages.
pub(crate) fn alloc_contiguous(count: usize) -> Result<PhysPages, PlatformError> {
    if count == 0 || count > MAX_PAGES {
        return Err(PlatformError::Unsupported);
    }
    let mut phys = 0u64;
    // SAFETY: writes `phys`; null on failure.
    let virt = unsafe { ffi::rhax_glue_alloc_pages(count, &mut phys) };
    let virt = NonNull::new(virt).ok_or(PlatformError::OutOfMemory)?;
    // SAFETY: `count` zeroed, contiguous, page-aligned pages at `phys`, mapped at `virt`
    // (the direct map), owned by the result.
    Ok(unsafe { PhysPages::from_raw(virt, phys, count) })
}

/// Frees pages from [`alloc_contiguous`].
pub(crate) fn free_contiguous(pages: PhysPages) {
    // SAFETY: the block `alloc_contiguous` returned, with its count; moved in, so unused.
    unsafe { ffi::rhax_glue_free_pages(pages.virt().as_ptr(), pages.count()) }
}

/// The IPI worker of `run_on_each_cpu` and `run_on_cpu`, called by the glue's C trampoline
/// (the kernel calls only C functions indirectly).
///
/// # Safety
/// `ctx` is the address of a `&(dyn Fn(CpuIndex) + Sync)` that outlives the call.
#[no_mangle]
pub unsafe extern "C" fn rhax_percpu_call(ctx: *mut c_void) {
    // SAFETY: the caller's contract.
    let f = unsafe { &*(ctx as *const &(dyn Fn(CpuIndex) + Sync)) };
    // SAFETY: any context.
    f(unsafe { ffi::rhax_glue_current_cpu() });
}

/// Runs `f` on CPU `cpu` in its IPI handler and waits; `false` if it could not (offline).
/// Process context with interrupts on (smp_call_function_single's rule).
pub(crate) fn on_cpu(cpu: CpuIndex, f: &(dyn Fn(CpuIndex) + Sync)) -> bool {
    let ctx: &(dyn Fn(CpuIndex) + Sync) = f;
    // SAFETY: `ctx` lives until the call returns, which waits for the handler (wait=1).
    unsafe { ffi::rhax_glue_on_cpu(cpu, &ctx as *const _ as *mut c_void) == 0 }
}

/// Runs `f` on every online CPU and waits.
pub(crate) fn on_each_cpu(f: &(dyn Fn(CpuIndex) + Sync)) {
    // SAFETY: as in `on_cpu` (on_each_cpu waits too).
    unsafe { ffi::rhax_glue_on_each_cpu(&f as *const _ as *mut c_void) }
}

impl Platform for LinuxPlatform {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        alloc_contiguous(count)
    }

    fn free_pages(&self, pages: PhysPages) {
        free_contiguous(pages)
    }

    fn pin(&self, user_address: u64, len: usize) -> Result<PinnedMemory, PlatformError> {
        if user_address % PhysPages::PAGE_SIZE as u64 != 0 || len == 0 {
            return Err(PlatformError::BadUserAddress);
        }
        let mut handle: *mut c_void = core::ptr::null_mut();
        // SAFETY: writes `handle`; the glue checks the range against the process.
        match unsafe { ffi::rhax_glue_pin(user_address, len, &mut handle) } {
            0 => Ok(PinnedMemory {
                handle: handle as usize,
                user_address,
                len,
            }),
            -12 => Err(PlatformError::OutOfMemory),
            -22 => Err(PlatformError::Unsupported),
            _ => Err(PlatformError::BadUserAddress),
        }
    }

    fn pinned_page(&self, pinned: &PinnedMemory, page_index: usize) -> Option<u64> {
        // SAFETY: a handle `pin` returned and not yet unpinned (the core's contract); the
        // glue bounds-checks the index.
        let pa = unsafe { ffi::rhax_glue_pinned_page(pinned.handle as *mut c_void, page_index) };
        (pa != 0).then_some(pa)
    }

    fn unpin(&self, pinned: PinnedMemory) {
        // SAFETY: a handle `pin` returned, released once (moved in).
        unsafe { ffi::rhax_glue_unpin(pinned.handle as *mut c_void) }
    }

    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync)) {
        on_each_cpu(f)
    }

    fn run_on_cpu(&self, cpu: CpuIndex, f: &(dyn Fn() + Sync)) {
        on_cpu(cpu, &|_| f());
    }

    fn current_cpu(&self) -> CpuIndex {
        // SAFETY: any context.
        unsafe { ffi::rhax_glue_current_cpu() }
    }

    fn cpu_count(&self) -> u32 {
        // SAFETY: any context.
        unsafe { ffi::rhax_glue_cpu_ids() }.max(1)
    }

    fn tsc(&self) -> u64 {
        // SAFETY: RDTSC is unprivileged (and CR4.TSD does not apply at CPL 0).
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    fn tsc_frequency(&self) -> u64 {
        // SAFETY: reads a kernel variable.
        let khz = unsafe { ffi::rhax_glue_tsc_khz() };
        // No calibrated TSC (never on a VT-x host in practice): assume 1 GHz, which only
        // scales the core's time slices.
        if khz == 0 {
            1_000_000_000
        } else {
            khz * 1000
        }
    }

    fn kick(&self, cpu: CpuIndex) {
        // SAFETY: any CPU number; the glue ignores offline ones.
        unsafe { ffi::rhax_glue_kick(cpu) }
    }

    /// A signal is pending or the scheduler wants the CPU (asked by the core before every
    /// VM entry, with interrupts off: the glue only reads `current`'s flags). QEMU's own kick,
    /// SIGUSR1, is blocked in HAX vCPU threads, so the bound on RUN that matters for it is the
    /// host-interrupt exit; this catches the signals that are not blocked (e.g. SIGKILL) and
    /// reschedules.
    fn user_return_pending(&self) -> bool {
        // SAFETY: reads `current`'s flags; any context.
        unsafe { ffi::rhax_glue_user_return_pending() }
    }
}

// SAFETY: `guest_page` returns the direct-map address of the translated byte: the page is
// pinned (FOLL_LONGTERM) while the translation is handed out, the direct map covers all RAM
// on x86-64, and the lookup (pfn_valid, page_address) never blocks.
unsafe impl UserMapping for LinuxPlatform {
    fn map_user(&self, pages: &PhysPages) -> Result<u64, PlatformError> {
        let mut uaddr = 0u64;
        // SAFETY: a block from `alloc_contiguous`; writes `uaddr`.
        match unsafe { ffi::rhax_glue_map_user(pages.virt().as_ptr(), pages.count(), &mut uaddr) } {
            0 => Ok(uaddr),
            -12 => Err(PlatformError::OutOfMemory),
            _ => Err(PlatformError::Unsupported),
        }
    }

    fn unmap_user(&self, user_address: u64, pages: &PhysPages) {
        // SAFETY: the glue unmaps only a mapping of exactly these pages at that address in
        // the current process, and nothing when the process (its mm) is gone.
        unsafe { ffi::rhax_glue_unmap_user(user_address, pages.virt().as_ptr(), pages.count()) }
    }

    fn guest_page(t: &Translation) -> Option<NonNull<u8>> {
        // SAFETY: any physical address; null when it is not RAM.
        NonNull::new(unsafe { ffi::rhax_glue_phys_to_virt(t.hpa) })
    }
}
