//! The host-test implementations of the shell traits (feature `soft`): [`UserMapping`] for
//! [`HeapPlatform`], and [`CpuRoots`] over the software VMX ([`SoftCpuRoots`]) or none
//! ([`NoCpuRoots`]).

use core::ptr::NonNull;

use super::{CpuRoots, RootUnavailable, UserMapping};
use crate::memory::Translation;
use crate::platform::{CpuIndex, HeapPlatform, PhysPages, PlatformError};
use crate::vmx::instructions::InveptType;
use crate::vmx::root::VmxRoot;
use crate::vmx::soft::SoftVmx;
use crate::vmx::Vmx;

/// Host tests share one address space with the "user": the user address is the kernel
/// address. [`HeapPlatform`] cannot pin, so no translation ever reaches `guest_page`.
// SAFETY: `guest_page` never returns a pointer.
unsafe impl UserMapping for HeapPlatform {
    fn map_user(&self, pages: &PhysPages) -> Result<u64, PlatformError> {
        Ok(pages.virt().as_ptr() as u64)
    }

    fn unmap_user(&self, _user_address: u64, _pages: &PhysPages) {}

    fn guest_page(_t: &Translation) -> Option<NonNull<u8>> {
        None
    }
}

/// A [`CpuRoots`] for host tests: one CPU (index 0, as [`HeapPlatform`]) whose VMX root is a
/// [`SoftVmx`]. Not `Sync` (the software model's CPU hook is not `Send`): one test thread.
pub struct SoftCpuRoots {
    root: core::cell::RefCell<Option<VmxRoot<SoftVmx>>>,
    /// INVEPTs executed by [`CpuRoots::invept_each_cpu`] (a CPU-count check for tests).
    pub invepts: core::cell::Cell<u64>,
    /// VMs between [`CpuRoots::vm_created`] and [`CpuRoots::vm_destroyed`]. Lends work only
    /// while it is above zero, as on Windows where VMX operation exists only while a VM does:
    /// a lend outside a VM's life (a vCPU torn down after its VM's memory) fails here too.
    pub live_vms: core::cell::Cell<u32>,
    /// Makes [`CpuRoots::vm_created`] fail (VMXON refused on some CPU).
    pub refuse_vms: core::cell::Cell<bool>,
}

impl SoftCpuRoots {
    /// Lends `root` as CPU 0's.
    pub fn new(root: VmxRoot<SoftVmx>) -> Self {
        SoftCpuRoots {
            root: core::cell::RefCell::new(Some(root)),
            invepts: core::cell::Cell::new(0),
            live_vms: core::cell::Cell::new(0),
            refuse_vms: core::cell::Cell::new(false),
        }
    }

    /// No VMX on the CPU: every lend fails with [`RootUnavailable`].
    pub fn disabled() -> Self {
        SoftCpuRoots {
            root: core::cell::RefCell::new(None),
            invepts: core::cell::Cell::new(0),
            live_vms: core::cell::Cell::new(0),
            refuse_vms: core::cell::Cell::new(false),
        }
    }

    /// Direct access to the model CPU (install a guest hook, read counters).
    pub fn with_soft<T>(&self, f: impl FnOnce(&mut VmxRoot<SoftVmx>) -> T) -> Option<T> {
        let mut r = self.root.try_borrow_mut().ok()?;
        r.as_mut().map(f)
    }
}

impl CpuRoots for SoftCpuRoots {
    type Vmx = SoftVmx;

    fn with_current<T>(
        &self,
        f: impl FnOnce(&mut VmxRoot<SoftVmx>) -> T,
    ) -> Result<T, RootUnavailable> {
        if self.live_vms.get() == 0 {
            return Err(RootUnavailable);
        }
        self.with_soft(f).ok_or(RootUnavailable)
    }

    fn with_cpu<T: Send>(
        &self,
        cpu: CpuIndex,
        f: impl FnOnce(&mut VmxRoot<SoftVmx>) -> T + Send,
    ) -> Result<T, RootUnavailable> {
        if cpu != 0 {
            return Err(RootUnavailable);
        }
        self.with_current(f)
    }

    fn invept_each_cpu(&self, eptp: u64, single_context: bool) {
        let kind = if single_context {
            InveptType::SingleContext
        } else {
            InveptType::Global
        };
        let done = self.with_soft(|root| {
            // SAFETY: the software model has no preconditions beyond VMX root, which a
            // `VmxRoot` guarantees.
            unsafe { root.vmx().invept(kind, eptp) }
        });
        if matches!(done, Some(Ok(()))) {
            self.invepts.set(self.invepts.get() + 1);
        }
    }

    fn vm_created(&self) -> Result<(), RootUnavailable> {
        if self.refuse_vms.get() {
            return Err(RootUnavailable);
        }
        self.live_vms.set(self.live_vms.get() + 1);
        Ok(())
    }

    fn vm_destroyed(&self) {
        // An unmatched call is a dispatcher bug the tests must see.
        let live = self.live_vms.get().checked_sub(1);
        self.live_vms
            .set(live.unwrap_or_else(|| panic!("vm_destroyed without vm_created")));
    }
}

/// A [`CpuRoots`] with VMX off on every CPU: for exercising the system and VM paths (and
/// their thread safety) without any vCPU work. Every lend fails; INVEPT is counted only.
#[derive(Debug, Default)]
pub struct NoCpuRoots {
    /// INVEPT broadcasts requested.
    pub invepts: core::sync::atomic::AtomicU64,
}

impl CpuRoots for NoCpuRoots {
    type Vmx = SoftVmx;

    fn with_current<T>(
        &self,
        _f: impl FnOnce(&mut VmxRoot<SoftVmx>) -> T,
    ) -> Result<T, RootUnavailable> {
        Err(RootUnavailable)
    }

    fn with_cpu<T: Send>(
        &self,
        _cpu: CpuIndex,
        _f: impl FnOnce(&mut VmxRoot<SoftVmx>) -> T + Send,
    ) -> Result<T, RootUnavailable> {
        Err(RootUnavailable)
    }

    fn invept_each_cpu(&self, _eptp: u64, _single_context: bool) {
        self.invepts
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// What a [`PinningPlatform`] lets a test observe: called on every pin (probe-and-lock) and
/// on every page mapping for a host-side copy of guest memory.
pub trait PinHooks: Send + Sync + 'static {
    /// A pin is made.
    fn on_pin() {}
    /// A guest page is mapped for a copy.
    fn on_guest_page() {}
}

/// No hooks.
pub struct NoHooks;

impl PinHooks for NoHooks {}

/// [`HeapPlatform`] that pins for real (feature `soft`): the "user" is the test process, so
/// a user address is the kernel address and the "physical" address of a pinned page is its
/// user address (the software VMX never dereferences guest-physical memory). Guest RAM given
/// to it must outlive the hypervisor.
pub struct PinningPlatform<H: PinHooks = NoHooks> {
    /// The platform below (pages, CPUs, time).
    pub heap: HeapPlatform,
    /// Pins made so far.
    pub pins: core::sync::atomic::AtomicUsize,
    hooks: core::marker::PhantomData<H>,
}

impl<H: PinHooks> Default for PinningPlatform<H> {
    fn default() -> Self {
        PinningPlatform {
            heap: HeapPlatform::new(),
            pins: core::sync::atomic::AtomicUsize::new(0),
            hooks: core::marker::PhantomData,
        }
    }
}

impl<H: PinHooks> crate::platform::Platform for PinningPlatform<H> {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        self.heap.alloc_pages(count)
    }
    fn free_pages(&self, pages: PhysPages) {
        self.heap.free_pages(pages)
    }
    fn pin(
        &self,
        user_address: u64,
        len: usize,
    ) -> Result<crate::platform::PinnedMemory, PlatformError> {
        H::on_pin();
        let handle = self
            .pins
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed)
            + 1;
        Ok(crate::platform::PinnedMemory {
            handle,
            user_address,
            len,
        })
    }
    fn pinned_page(
        &self,
        pinned: &crate::platform::PinnedMemory,
        page_index: usize,
    ) -> Option<u64> {
        (page_index < pinned.len / PhysPages::PAGE_SIZE)
            .then(|| pinned.user_address + (page_index * PhysPages::PAGE_SIZE) as u64)
    }
    fn unpin(&self, _pinned: crate::platform::PinnedMemory) {}
    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync)) {
        self.heap.run_on_each_cpu(f)
    }
    fn run_on_cpu(&self, cpu: CpuIndex, f: &(dyn Fn() + Sync)) {
        self.heap.run_on_cpu(cpu, f)
    }
    fn current_cpu(&self) -> CpuIndex {
        0
    }
    fn cpu_count(&self) -> u32 {
        1
    }
    fn tsc(&self) -> u64 {
        self.heap.tsc()
    }
    fn tsc_frequency(&self) -> u64 {
        self.heap.tsc_frequency()
    }
    fn kick(&self, _cpu: CpuIndex) {}
}

// SAFETY: the "user" is this process: a user address is a kernel address, and the guest RAM a
// test pins outlives the hypervisor (the type's contract), so `guest_page`'s pointer (the
// translation's host-virtual address) is valid while the page stays pinned.
unsafe impl<H: PinHooks> UserMapping for PinningPlatform<H> {
    fn map_user(&self, pages: &PhysPages) -> Result<u64, PlatformError> {
        Ok(pages.virt().as_ptr() as u64)
    }
    fn unmap_user(&self, _user_address: u64, _pages: &PhysPages) {}
    fn guest_page(t: &Translation) -> Option<NonNull<u8>> {
        H::on_guest_page();
        NonNull::new(t.hva as *mut u8)
    }
}

/// A dispatcher for host tests over the software VMX: `msrs` are the model CPU's VMX
/// capability MSRs (negotiated as a real CPU's would be), one CPU, `platform`, `codes`. `None`
/// when the model does not negotiate or the VMXON page cannot be had.
pub fn soft_hypervisor<P: crate::platform::Platform + UserMapping>(
    platform: P,
    msrs: alloc::vec::Vec<(u32, u64)>,
    codes: super::super::Codes,
) -> Option<super::super::Hypervisor<P, SoftCpuRoots>> {
    let vmx = SoftVmx::new(msrs);
    let controls = crate::vmx::negotiate::negotiate(vmx.caps()).ok()?;
    let page = platform.alloc_pages(1).ok()?;
    // SAFETY: the software model has no CPU state to protect; the root lives in the returned
    // dispatcher's `SoftCpuRoots`, used from one thread.
    let root = unsafe { VmxRoot::enable(vmx, 0, page) }.ok()?;
    Some(super::super::Hypervisor::new(
        platform,
        SoftCpuRoots::new(root),
        codes,
        Ok(controls),
    ))
}
