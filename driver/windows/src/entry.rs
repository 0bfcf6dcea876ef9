//! `DriverEntry` and `DriverUnload`, the one global shell, the panic handler.
//!
//! The shell (the core dispatcher over the NT platform, the device table, the driver object)
//! lives in one pool block published through an atomic pointer ([`shell`]); IRP handlers
//! borrow it. The I/O manager sends no IRP before DriverEntry returns a success (the control
//! device is `DO_DEVICE_INITIALIZING` until then) and calls DriverUnload only when no file
//! object of the driver's devices is left, so the block outlives every handler.
//!
//! Like HAXM, the driver loads when VT-x is unusable: the core then answers CAPABILITY with
//! HAXM's not-working status and fail-reason bits (so QEMU prints its own explanation) and
//! refuses CREATE_VM; the diagnosis is also printed here.

use core::alloc::Layout;
use core::ptr::{addr_of_mut, null_mut};
use core::sync::atomic::{AtomicPtr, Ordering};

use rhax_core::dispatch::{Codes, Hypervisor};

use crate::devices::Devices;
use crate::nt::io::{
    DRIVER_OBJECT, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL,
};
use crate::nt::{KeBugCheckEx, NTSTATUS, RHAX_BUGCHECK, UNICODE_STRING};
use crate::platform::NtPlatform;
use crate::roots::NtRoots;
use crate::status::STATUS_INSUFFICIENT_RESOURCES;
use crate::{cpu, irp, log, pool};

/// The dispatcher type of this driver.
#[cfg(not(feature = "wine-fake-vmx"))]
pub type NtHypervisor = Hypervisor<NtPlatform, NtRoots>;
/// TEST BUILD (feature `wine-fake-vmx`, Cargo.toml): the software VMX model and a heap
/// platform, so CREATE_VM/VCPU_CREATE work under Wine.
#[cfg(feature = "wine-fake-vmx")]
pub type NtHypervisor =
    Hypervisor<rhax_core::platform::HeapPlatform, rhax_core::dispatch::SoftCpuRoots>;

/// Everything the driver holds while loaded.
pub struct Shell {
    /// The one core dispatcher.
    pub hv: NtHypervisor,
    /// The device objects.
    pub devices: Devices,
    /// This driver's object (device creation).
    pub driver: *mut DRIVER_OBJECT,
}

// SAFETY: the hypervisor is thread-safe by design (its locks, rhax_core::dispatch docs),
// `Devices` is Sync, and the driver object pointer is only passed to the I/O manager.
unsafe impl Sync for Shell {}
// SAFETY: as above.
unsafe impl Send for Shell {}

/// The shell, between DriverEntry's success and DriverUnload.
static SHELL: AtomicPtr<Shell> = AtomicPtr::new(null_mut());

/// The loaded shell (`None` outside DriverEntry..DriverUnload).
pub fn shell() -> Option<&'static Shell> {
    let p = SHELL.load(Ordering::Acquire);
    // SAFETY: a non-null pointer is a fully built shell that stays until DriverUnload, which
    // runs only when no IRP can be in flight (module documentation).
    unsafe { p.as_ref() }
}

/// The image's entry point.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL with this driver's object.
#[no_mangle]
pub unsafe extern "system" fn DriverEntry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *const UNICODE_STRING,
) -> NTSTATUS {
    let pool2 = pool::init();
    log!(
        "rhax {} loading (pool: {})",
        env!("CARGO_PKG_VERSION"),
        if pool2 {
            "ExAllocatePool2"
        } else {
            "ExAllocatePoolWithTag, NonPagedPoolNx"
        }
    );
    match load(driver) {
        Ok(()) => {
            log!("\\\\.\\HAX ready");
            0
        }
        Err(status) => {
            log!("load failed: {:#x}", status);
            status
        }
    }
}

/// Builds the dispatcher in place at `dst`.
///
/// # Safety
/// `dst` is writable storage for an `NtHypervisor`, written once.
#[cfg(not(feature = "wine-fake-vmx"))]
#[inline(never)] // load-only: its frame (the dispatcher's CPUID table) stays out of DriverEntry's
unsafe fn build_hypervisor(dst: *mut NtHypervisor) -> Result<(), NTSTATUS> {
    let platform = NtPlatform::new().inspect_err(|s| log!("platform: {:#x}", s))?;
    let host = match cpu::probe(&platform) {
        Ok(controls) => {
            log!("VT-x usable on every CPU");
            Ok(controls)
        }
        Err(obstacle) => {
            // HAXM loads in this case too: CAPABILITY says why, CREATE_VM is refused.
            log!("VT-x not usable: {}", obstacle);
            Err(obstacle.capability_failure())
        }
    };
    // SAFETY: the caller's contract. Written in place (the hypervisor holds a 2.6 KiB CPUID
    // table: no extra copy on the stack).
    unsafe {
        dst.write(Hypervisor::new(
            platform,
            NtRoots::new(),
            Codes::Windows,
            host,
        ))
    };
    Ok(())
}

/// TEST BUILD: the software VMX model of a Skylake-X (Bochs's MSRs, as rhax-core's tests).
///
/// # Safety
/// As the real one.
#[cfg(feature = "wine-fake-vmx")]
unsafe fn build_hypervisor(dst: *mut NtHypervisor) -> Result<(), NTSTATUS> {
    const TSV: &str = include_str!("../../core/tests/data/bochs-vmx-msrs.tsv");
    log!("TEST BUILD (wine-fake-vmx): software VMX model, no ntoskrnl platform");
    let _ = (cpu::probe, NtPlatform::new, NtRoots::new, Codes::Windows);
    let msrs = rhax_core::vmx::soft::msrs_from_tsv(TSV, "corei7_skylake_x")
        .ok_or(STATUS_INSUFFICIENT_RESOURCES as i32)?;
    let hv = rhax_core::dispatch::soft_hypervisor(
        rhax_core::platform::HeapPlatform::new(),
        msrs,
        Codes::Windows,
    )
    .ok_or(STATUS_INSUFFICIENT_RESOURCES as i32)?;
    // SAFETY: the caller's contract.
    unsafe { dst.write(hv) };
    Ok(())
}

fn load(driver: *mut DRIVER_OBJECT) -> Result<(), NTSTATUS> {
    let layout = Layout::new::<Shell>();
    // SAFETY: a non-zero-sized layout; null on failure (the pool allocator never panics).
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) }.cast::<Shell>();
    if p.is_null() {
        return Err(STATUS_INSUFFICIENT_RESOURCES as i32);
    }
    // SAFETY: `p` is a fresh block for a `Shell` (field places only, nothing read).
    let hv = unsafe { addr_of_mut!((*p).hv) };
    // SAFETY: as above.
    let driver_field = unsafe { addr_of_mut!((*p).driver) };
    // SAFETY: as above.
    let devices = unsafe { addr_of_mut!((*p).devices) };
    // SAFETY: each field is written once before the shell is published.
    if let Err(status) = unsafe { build_hypervisor(hv) } {
        // SAFETY: allocated above with this layout; nothing in it needs dropping.
        unsafe { alloc::alloc::dealloc(p.cast(), layout) };
        return Err(status);
    }
    // SAFETY: as above.
    unsafe { driver_field.write(driver) };
    // SAFETY: the devices' storage inside the pool block, which never moves, unshared.
    unsafe { Devices::init(devices) };
    // SAFETY: the I/O manager's driver object, ours to fill in DriverEntry.
    unsafe {
        let d = &mut *driver;
        d.MajorFunction[IRP_MJ_CREATE] = Some(irp::create);
        d.MajorFunction[IRP_MJ_CLEANUP] = Some(irp::cleanup);
        d.MajorFunction[IRP_MJ_CLOSE] = Some(irp::close);
        d.MajorFunction[IRP_MJ_DEVICE_CONTROL] = Some(irp::device_control);
        d.DriverUnload = Some(driver_unload);
    }
    SHELL.store(p, Ordering::Release);
    // SAFETY: just built.
    let devices = unsafe { &(*p).devices };
    if let Err(status) = devices.create_control(driver) {
        // SAFETY: the shell just published; no device exists, so no IRP can reach it.
        unsafe { destroy() };
        return Err(status);
    }
    Ok(())
}

/// Unpublishes the shell, deletes every device and link, drops the hypervisor (every VM and
/// vCPU still alive is torn down) and frees the block.
///
/// # Safety
/// No IRP of this driver is in flight or can start.
unsafe fn destroy() {
    let p = SHELL.swap(null_mut(), Ordering::AcqRel);
    if p.is_null() {
        return;
    }
    // SAFETY: the shell built by `load`, now unreachable by others.
    unsafe { (*p).devices.delete_all() };
    // SAFETY: the field's place in the live block (nothing read).
    let hv = unsafe { addr_of_mut!((*p).hv) };
    // SAFETY: initialized by `load`; dropped once. `devices` and `driver` need no drop.
    unsafe { core::ptr::drop_in_place(hv) };
    // SAFETY: allocated by `load` with this layout.
    unsafe { alloc::alloc::dealloc(p.cast(), Layout::new::<Shell>()) };
}

/// `DriverUnload`.
///
/// # Safety
/// Called by the I/O manager at PASSIVE_LEVEL when no file object of the driver is open.
pub unsafe extern "system" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    // SAFETY: the I/O manager's contract above.
    unsafe { destroy() };
    log!("unloaded");
}

/// A panic is a broken invariant (no input reaches one: kernel code is hostile-input code),
/// so the machine is stopped before anything else is corrupted: one line naming the place,
/// then bug check [`RHAX_BUGCHECK`] (parameter 1: the line, 2: the file name's address).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line) = info
        .location()
        .map(|l| (l.file(), l.line()))
        .unwrap_or(("?", 0));
    log!("panic at {}:{}: {}", file, line, info.message());
    // SAFETY: bug check ends the system; arguments are plain numbers.
    unsafe { KeBugCheckEx(RHAX_BUGCHECK, line as usize, file.as_ptr() as usize, 0, 0) }
}
