//! `Platform`: what an operating system gives the hypervisor (ARCHITECTURE.md, "Shape Platform
//! for Windows"). Passed in, never a global. Every allocation and pinning can fail.

use core::ptr::NonNull;

/// Index of a logical processor, as the platform numbers them (0..cpu_count).
pub type CpuIndex = u32;

/// Failure of a platform service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// No memory (non-paged pool or contiguous pages exhausted).
    OutOfMemory,
    /// A user address range is invalid or not accessible (probe-and-lock raised).
    BadUserAddress,
    /// The request exceeds what the platform supports (e.g. too many pages at once).
    Unsupported,
}

/// Physically contiguous, zeroed, non-paged pages owned by the core until handed back with
/// [`Platform::free_pages`].
#[derive(Debug)]
pub struct PhysPages {
    virt: NonNull<u8>,
    phys: u64,
    count: usize,
}

// SAFETY: the pages are kernel memory owned by this value; nothing ties them to a thread.
unsafe impl Send for PhysPages {}

impl PhysPages {
    /// Size of one page.
    pub const PAGE_SIZE: usize = 4096;

    /// Wraps an allocation made by a platform.
    ///
    /// # Safety
    /// `virt` maps `count` zeroed pages at physical address `phys` (4-KByte aligned,
    /// contiguous), writable by the kernel, owned exclusively by the returned value.
    pub unsafe fn from_raw(virt: NonNull<u8>, phys: u64, count: usize) -> Self {
        PhysPages { virt, phys, count }
    }

    /// Kernel virtual address of the first page.
    pub fn virt(&self) -> NonNull<u8> {
        self.virt
    }

    /// Physical address of the first page.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Number of pages.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The pages as bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: by `from_raw`'s contract the range is mapped, writable and exclusively ours;
        // `&mut self` prevents aliasing through this value.
        unsafe { core::slice::from_raw_parts_mut(self.virt.as_ptr(), self.count * Self::PAGE_SIZE) }
    }
}

/// User memory pinned in place (MDL + probe-and-lock on Windows): its host-physical pages stay
/// put until [`Platform::unpin`].
#[derive(Debug)]
pub struct PinnedMemory {
    /// Platform's handle (an MDL pointer on Windows).
    pub handle: usize,
    /// User virtual address of the first byte.
    pub user_address: u64,
    /// Length in bytes.
    pub len: usize,
}

/// The services an OS provides. Shaped for Windows (non-paged physically addressed memory,
/// probe-and-lock pinning, IPI broadcast, APC-based kicks), implemented also by the bare-metal
/// test kernel and by host-test fakes.
pub trait Platform {
    /// Allocates `count` physically contiguous, zeroed, non-paged pages.
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError>;

    /// Frees pages from [`Platform::alloc_pages`].
    fn free_pages(&self, pages: PhysPages);

    /// Pins `len` bytes of the calling process's memory at `user_address`.
    fn pin(&self, user_address: u64, len: usize) -> Result<PinnedMemory, PlatformError>;

    /// The host-physical address of the page `page_index` of pinned memory.
    fn pinned_page(&self, pinned: &PinnedMemory, page_index: usize) -> Option<u64>;

    /// Releases pinned memory (also on process death without handle close).
    fn unpin(&self, pinned: PinnedMemory);

    /// Runs `f` on every CPU (IPI broadcast), passing the CPU's index, and waits for all.
    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync));

    /// Runs `f` on one CPU and waits (e.g. VMCLEAR of a VMCS on the CPU it is active on).
    fn run_on_cpu(&self, cpu: CpuIndex, f: &(dyn Fn() + Sync));

    /// Index of the CPU the caller runs on.
    fn current_cpu(&self) -> CpuIndex;

    /// Number of CPUs.
    fn cpu_count(&self) -> u32;

    /// A monotonic time stamp in TSC ticks.
    fn tsc(&self) -> u64;

    /// TSC ticks per second.
    fn tsc_frequency(&self) -> u64;

    /// Forces a vCPU running on `cpu` out of the guest (an IPI; on Windows the RUN call then
    /// returns to user mode where the APC is delivered).
    fn kick(&self, cpu: CpuIndex);

    /// The thread calling RUN must go back to user space before the guest is entered again:
    /// RUN then ends with `HAX_EXIT_INTERRUPT` (Linux: a signal is pending, which is how QEMU
    /// kicks a vCPU thread, or the scheduler wants the CPU; HAXM's Linux port checks the same
    /// before each entry). Asked before every VM entry, inside the non-preemptible region with
    /// interrupts off: it must be a cheap read of a flag, nothing that blocks. Default: never
    /// (Windows delivers its kick, an APC, when RUN returns after the next host interrupt).
    fn user_return_pending(&self) -> bool {
        false
    }
}

/// A [`Platform`] for host tests and examples (feature `soft`): pages from the global allocator with made-up
/// physical addresses (distinct, 4-KByte aligned, below 4 GiB), one CPU, a counter as TSC.
/// It maps nothing real: only the software VMX model may be given its addresses.
#[cfg(any(test, feature = "soft"))]
#[derive(Debug, Default)]
pub struct HeapPlatform {
    next_phys: core::sync::atomic::AtomicU64,
    tsc: core::sync::atomic::AtomicU64,
    /// Pages currently allocated (to check that everything is freed).
    pub live_pages: core::sync::atomic::AtomicUsize,
    /// What [`Platform::user_return_pending`] answers (a test's stand-in for a pending signal).
    pub user_return: core::sync::atomic::AtomicBool,
    /// The live pages by physical address, for the software VMX's accesses to the structures
    /// the CPU reads and writes itself (the virtual-APIC page).
    memory: PhysMap,
}

/// [`HeapPlatform`]'s physical-to-virtual map of its live pages (shared with the software
/// VMX through [`HeapPlatform::memory`]).
#[cfg(any(test, feature = "soft"))]
#[derive(Debug, Default, Clone)]
pub struct PhysMap(alloc::sync::Arc<spin::Mutex<alloc::collections::BTreeMap<u64, usize>>>);

#[cfg(any(test, feature = "soft"))]
impl PhysMap {
    /// The 4-KByte page at physical address `phys` (page-aligned) while it is allocated.
    pub fn page(&self, phys: u64) -> Option<NonNull<u8>> {
        let virt = *self.0.lock().get(&(phys & !0xfff))?;
        NonNull::new(virt as *mut u8)
    }
}

#[cfg(any(test, feature = "soft"))]
impl HeapPlatform {
    /// A platform whose first page gets physical address 1 MiB.
    pub fn new() -> Self {
        HeapPlatform {
            next_phys: core::sync::atomic::AtomicU64::new(0x10_0000),
            ..Default::default()
        }
    }

    /// The map the software VMX reads the CPU-accessed pages through
    /// ([`crate::vmx::soft::SoftVmx::set_memory`]).
    pub fn memory(&self) -> PhysMap {
        self.memory.clone()
    }
}

#[cfg(any(test, feature = "soft"))]
impl Platform for HeapPlatform {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        use core::sync::atomic::Ordering;
        let size = count
            .checked_mul(PhysPages::PAGE_SIZE)
            .ok_or(PlatformError::Unsupported)?;
        let layout = core::alloc::Layout::from_size_align(size.max(1), PhysPages::PAGE_SIZE)
            .map_err(|_| PlatformError::Unsupported)?;
        // SAFETY: the layout has a nonzero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let virt = NonNull::new(ptr).ok_or(PlatformError::OutOfMemory)?;
        let phys = self.next_phys.fetch_add(size as u64, Ordering::Relaxed);
        self.live_pages.fetch_add(count, Ordering::Relaxed);
        {
            let mut map = self.memory.0.lock();
            for i in 0..count {
                let off = i * PhysPages::PAGE_SIZE;
                map.insert(phys + off as u64, ptr as usize + off);
            }
        }
        // SAFETY: fresh zeroed allocation of `count` pages owned by the result.
        Ok(unsafe { PhysPages::from_raw(virt, phys, count) })
    }

    fn free_pages(&self, pages: PhysPages) {
        let size = pages.count * PhysPages::PAGE_SIZE;
        self.live_pages
            .fetch_sub(pages.count, core::sync::atomic::Ordering::Relaxed);
        {
            let mut map = self.memory.0.lock();
            for i in 0..pages.count {
                map.remove(&(pages.phys + (i * PhysPages::PAGE_SIZE) as u64));
            }
        }
        if let Ok(layout) = core::alloc::Layout::from_size_align(size.max(1), PhysPages::PAGE_SIZE)
        {
            // SAFETY: allocated by alloc_pages with this layout, and owned by `pages`.
            unsafe { alloc::alloc::dealloc(pages.virt.as_ptr(), layout) };
        }
    }

    fn pin(&self, _user_address: u64, _len: usize) -> Result<PinnedMemory, PlatformError> {
        Err(PlatformError::Unsupported)
    }

    fn pinned_page(&self, _pinned: &PinnedMemory, _page_index: usize) -> Option<u64> {
        None
    }

    fn unpin(&self, _pinned: PinnedMemory) {}

    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync)) {
        f(0)
    }

    fn run_on_cpu(&self, _cpu: CpuIndex, f: &(dyn Fn() + Sync)) {
        f()
    }

    fn current_cpu(&self) -> CpuIndex {
        0
    }

    fn cpu_count(&self) -> u32 {
        1
    }

    fn tsc(&self) -> u64 {
        self.tsc.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
    }

    fn tsc_frequency(&self) -> u64 {
        1_000_000_000
    }

    fn kick(&self, _cpu: CpuIndex) {}

    fn user_return_pending(&self) -> bool {
        self.user_return.load(core::sync::atomic::Ordering::Relaxed)
    }
}
