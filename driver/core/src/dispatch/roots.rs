//! [`CpuRoots`]: how a shell lends the dispatcher the VMX root operation of a CPU, and
//! [`UserMapping`]: how it maps kernel pages (the tunnel, the IO buffer) into the calling
//! process. The host-test implementations over the software VMX are in `roots/soft.rs`
//! (feature `soft`).

use core::ptr::NonNull;

use crate::memory::Translation;
use crate::platform::{CpuIndex, PhysPages, PlatformError};
use crate::vmx::root::VmxRoot;
use crate::vmx::Vmx;

/// The shell could not lend a VMX root (VMX is off on that CPU, or the CPU does not exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootUnavailable;

/// Per-CPU VMX root operation, lent by the shell for the duration of a closure.
///
/// Rules the dispatcher follows and an implementation may rely on:
/// * [`CpuRoots::with_current`] is entered with no dispatcher spin lock taken *inside* it:
///   the vCPU lock is acquired before, so a preempted lock holder can never be spun on by a
///   non-preemptible context of the same CPU;
/// * nothing inside the closures pins user memory or sleeps (Windows: probe-and-lock happens
///   at PASSIVE_LEVEL, outside);
/// * the closures never re-enter the trait.
pub trait CpuRoots {
    /// The VMX instruction implementation.
    type Vmx: Vmx;

    /// Runs `f` with the VMX root of the CPU the caller runs on, with preemption disabled
    /// (Windows: IRQL raised to DISPATCH_LEVEL) exactly for the duration of `f`.
    fn with_current<T>(
        &self,
        f: impl FnOnce(&mut VmxRoot<Self::Vmx>) -> T,
    ) -> Result<T, RootUnavailable>;

    /// Runs `f` on CPU `cpu` with its VMX root (an IPI to that CPU; direct if it is the
    /// current one) and waits. Used to VMCLEAR a vCPU's VMCS where it is active before the
    /// vCPU is used on another CPU or destroyed (SDM Vol. 3C §25.11.1).
    fn with_cpu<T: Send>(
        &self,
        cpu: CpuIndex,
        f: impl FnOnce(&mut VmxRoot<Self::Vmx>) -> T + Send,
    ) -> Result<T, RootUnavailable>;

    /// Executes INVEPT for `eptp` on every CPU in VMX root operation and waits for all
    /// (SDM Vol. 3C §29.4.3.1: a CPU may keep translations tagged with an EPTP after it
    /// stopped running it, so every CPU is flushed, not only those running the VM now).
    /// Single-context when `single_context`, else global. The IPI also forces any vCPU in
    /// guest mode out (external-interrupt exiting), so its next entry uses the new tables.
    /// An implementation must execute the instruction without borrowing a root that the
    /// interrupted thread may hold (INVEPT needs only VMX root, no VMCS).
    fn invept_each_cpu(&self, eptp: u64, single_context: bool);

    /// A VM is about to be created. A shell that enters VMX operation only while VMs exist
    /// (Windows: VMXON on every CPU when the first VM is created, so that other VT-x users can
    /// run while rhax is idle, as HAXM does) enters it here. Every `Ok` is matched by exactly
    /// one [`CpuRoots::vm_destroyed`]; on `Err` the VM is not created (nothing changed).
    /// Called with no dispatcher lock held, at passive level.
    fn vm_created(&self) -> Result<(), RootUnavailable> {
        Ok(())
    }

    /// A VM created after a successful [`CpuRoots::vm_created`] is gone: its memory is freed
    /// and every CPU flushed its translations. The last one may leave VMX operation (every
    /// vCPU of the VM was torn down before: each holds the VM's memory). Called with no
    /// dispatcher lock held.
    fn vm_destroyed(&self) {}
}

/// How the shell makes memory reachable: kernel pages (the tunnel, the IO buffer) mapped into
/// the process calling the dispatcher (HAXM maps them into the process that calls
/// VCPU_CREATE, `haxm-abi.md` §8 quirk 13), and pinned guest RAM reached from the kernel (for
/// string IO and the MMIO instruction fetch).
///
/// # Safety
/// [`UserMapping::guest_page`] must satisfy the contract of
/// [`crate::vcpu::guest::MappedGuestMemory::new`]: for a translation the VM's memory hands
/// out it returns `None` or a pointer to the rest of that host page, kernel-accessible and
/// valid for reads and writes while the page is pinned. It is called at passive level with
/// the VM's memory lock held (the copy follows under the same lock), so it must not block.
pub unsafe trait UserMapping {
    /// Maps `pages` into the calling process; returns the user address.
    fn map_user(&self, pages: &PhysPages) -> Result<u64, PlatformError>;

    /// Undoes [`UserMapping::map_user`] (also when the process died: the shell knows how).
    fn unmap_user(&self, user_address: u64, pages: &PhysPages);

    /// The kernel address of the guest byte behind `t` (bare metal: the identity-mapped
    /// `hpa`; Windows: the system address of the pinned chunk's MDL).
    fn guest_page(t: &Translation) -> Option<NonNull<u8>>;
}

// Host-test doubles (feature `soft`, see Cargo.toml): not in any shipped build.
#[cfg(any(test, feature = "soft"))]
mod soft;
#[cfg(any(test, feature = "soft"))]
pub use soft::{soft_hypervisor, NoCpuRoots, NoHooks, PinHooks, PinningPlatform, SoftCpuRoots};
