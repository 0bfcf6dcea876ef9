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
}

impl SoftCpuRoots {
    /// Lends `root` as CPU 0's.
    pub fn new(root: VmxRoot<SoftVmx>) -> Self {
        SoftCpuRoots {
            root: core::cell::RefCell::new(Some(root)),
            invepts: core::cell::Cell::new(0),
        }
    }

    /// No VMX on the CPU: every lend fails with [`RootUnavailable`].
    pub fn disabled() -> Self {
        SoftCpuRoots {
            root: core::cell::RefCell::new(None),
            invepts: core::cell::Cell::new(0),
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
