//! What the glue's module init/exit and file operations call: `rhax_init`, `rhax_exit`,
//! `rhax_open`, `rhax_release`, `rhax_ioctl`; the one global shell; the panic handler.
//!
//! The shell (the core dispatcher over the Linux platform) lives in one kmalloc block
//! published through an atomic pointer. The glue registers `/dev/HAX` only after
//! `rhax_init` succeeded and deregisters every node before `rhax_exit`; every open file holds
//! a module reference (misc devices' fops carry THIS_MODULE), so no file operation can run
//! outside init..exit.
//!
//! Like HAXM, the module loads when VT-x is unusable: the core then answers CAPABILITY with
//! HAXM's not-working status (QEMU prints its own explanation) and refuses CREATE_VM; the
//! diagnosis is printed here.

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ffi::{c_int, c_long, c_void};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use alloc::vec::Vec;

use rhax_api::{Device, Scope};
use rhax_core::dispatch::{Codes, DispatchError, ErrorKind, Handle, Hypervisor};
use rhax_core::vcpu::haxm::HaxError;
use rhax_core::vmx::caps::VmxCapMsrs;
use rhax_core::vmx::hw::HwVmx;
use rhax_core::vmx::negotiate::VmxControls;
use rhax_core::vmx::Vmx;
use rhax_sys::cpu::{cpuid_facts, diagnose, CpuFacts, Obstacle, Reason};

use crate::errno::{self, ioctl_return, positive};
use crate::ffi;
use crate::ioc::{self, Indirect};
use crate::platform::{on_each_cpu, LinuxPlatform};
use crate::roots::LinuxRoots;

/// The dispatcher of this module.
type LinuxHypervisor = Hypervisor<LinuxPlatform, LinuxRoots>;

/// The shell, between `rhax_init`'s success and `rhax_exit`.
static SHELL: AtomicPtr<LinuxHypervisor> = AtomicPtr::new(null_mut());

fn shell() -> Option<&'static LinuxHypervisor> {
    let p = SHELL.load(Ordering::Acquire);
    // SAFETY: a non-null pointer is a fully built shell that stays until `rhax_exit`, which
    // runs only when no file operation can (module documentation).
    unsafe { p.as_ref() }
}

/// One CPU's facts, written by its IPI handler.
struct Cell(UnsafeCell<Option<CpuFacts>>);
// SAFETY: each cell is written by the one handler running on its CPU while the prober waits.
unsafe impl Sync for Cell {}

/// An obstacle with no NX note.
fn obstacle(reason: Reason) -> Obstacle {
    Obstacle {
        reason,
        no_nx: false,
    }
}

/// Is VT-x usable on every online CPU (CPUID and the VMX capability MSRs, read on each CPU in
/// an IPI handler), and with which controls.
fn probe(platform: &LinuxPlatform) -> Result<VmxControls, Obstacle> {
    use rhax_core::platform::Platform;
    let n = platform.cpu_count() as usize;
    let mut cells: Vec<Cell> = Vec::new();
    if cells.try_reserve_exact(n).is_err() {
        return Err(obstacle(Reason::OutOfMemory));
    }
    cells.extend((0..n).map(|_| Cell(UnsafeCell::new(None))));
    on_each_cpu(&|cpu| {
        let Some(cell) = cells.get(cpu as usize) else {
            return;
        };
        let cpuid = cpuid_facts();
        let msrs = (cpuid.vmx && &cpuid.vendor == b"GenuineIntel").then(|| {
            // SAFETY: CPL 0, used only here, on this CPU, in the IPI handler.
            let mut hw = unsafe { HwVmx::new() };
            // SAFETY: VmxCapMsrs::read reads IA32_FEATURE_CONTROL and only the capability
            // MSRs that SDM Vol. 3D Appendix A says exist on a VMX CPU.
            VmxCapMsrs::read(|msr| unsafe { hw.rdmsr(msr) })
        });
        // SAFETY: this invocation is the only writer of this cell (see `Cell`).
        unsafe { *cell.0.get() = Some(CpuFacts { cpu, cpuid, msrs }) };
    });
    let mut facts: Vec<CpuFacts> = Vec::new();
    if facts.try_reserve_exact(n).is_err() {
        return Err(obstacle(Reason::OutOfMemory));
    }
    for (i, cell) in cells.into_iter().enumerate() {
        match cell.0.into_inner() {
            Some(f) => facts.push(f),
            // SAFETY: any CPU number.
            None if !unsafe { ffi::rhax_glue_cpu_online(i as u32) } => {}
            None => return Err(obstacle(Reason::NotGathered { cpu: i as u32 })),
        }
    }
    diagnose(&facts)
}

/// Builds the shell. 0 or -ENOMEM. Module init (process context).
#[no_mangle]
pub extern "C" fn rhax_init() -> c_int {
    info!("rhax {} loading", env!("CARGO_PKG_VERSION"));
    let platform = LinuxPlatform::new();
    let host = match probe(&platform) {
        Ok(c) => {
            info!("VT-x usable on every online CPU");
            Ok(c)
        }
        Err(o) => {
            error!("VT-x not usable: {}", o);
            Err(o.capability_failure())
        }
    };
    let layout = Layout::new::<LinuxHypervisor>();
    // SAFETY: a non-zero-sized layout; null on failure (kmalloc never panics).
    let p = unsafe { alloc::alloc::alloc(layout) }.cast::<LinuxHypervisor>();
    if p.is_null() {
        return -errno::ENOMEM;
    }
    // SAFETY: a fresh block for one hypervisor, written once before it is published.
    unsafe { build(p, platform, host) };
    SHELL.store(p, Ordering::Release);
    0
}

/// Writes the hypervisor into `dst` (kept out of `rhax_init`, whose frame would otherwise
/// hold the 2.6 KiB CPUID table twice; the dispatcher is built into its block).
///
/// # Safety
/// `dst` is writable storage for one `LinuxHypervisor`, written once.
#[inline(never)]
unsafe fn build(
    dst: *mut LinuxHypervisor,
    platform: LinuxPlatform,
    host: Result<VmxControls, rhax_api::CapabilityFailure>,
) {
    // SAFETY: the caller's contract.
    unsafe {
        dst.write(Hypervisor::new(
            platform,
            LinuxRoots::new(),
            Codes::Linux,
            host,
        ))
    };
}

/// Drops the shell (every VM still alive is torn down). Module exit, after every node is gone.
#[no_mangle]
pub extern "C" fn rhax_exit() {
    let p = SHELL.swap(null_mut(), Ordering::AcqRel);
    if p.is_null() {
        return;
    }
    // SAFETY: built by `rhax_init`, now unreachable; dropped and freed once.
    unsafe { core::ptr::drop_in_place(p) };
    // SAFETY: allocated by `rhax_init` with this layout.
    unsafe { alloc::alloc::dealloc(p.cast(), Layout::new::<LinuxHypervisor>()) };
    info!("unloaded");
}

/// Opens a node: `kind` 0 `/dev/HAX`, 1 `/dev/hax_vm/vmNN`, 2 `/dev/hax_vmNN/vcpuMM`. On
/// success `*out` is the file's handle for `rhax_ioctl`/`rhax_release`. 0 or -errno.
///
/// # Safety
/// `out` is writable. Process context.
#[no_mangle]
pub unsafe extern "C" fn rhax_open(kind: u32, vm: u32, vcpu: u32, out: *mut *mut c_void) -> c_int {
    let Some(hv) = shell() else {
        return -errno::ENODEV;
    };
    let r = match kind {
        0 => Ok(hv.open_system()),
        1 => hv.open_vm(vm),
        2 => hv.open_vcpu(vm, vcpu),
        _ => return -errno::ENODEV,
    };
    let handle = match r {
        Ok(h) => h,
        Err(e) => return -positive(e.errno()),
    };
    let layout = Layout::new::<Handle>();
    // SAFETY: a non-zero-sized layout.
    let p = unsafe { alloc::alloc::alloc(layout) }.cast::<Handle>();
    if p.is_null() {
        let _ = hv.close(handle);
        return -errno::ENOMEM;
    }
    // SAFETY: a fresh block for one handle.
    unsafe { p.write(handle) };
    // SAFETY: the caller's contract.
    unsafe { *out = p.cast() };
    0
}

/// Closes a file's handle (the last `fput`, also at process exit) and updates the nodes.
///
/// # Safety
/// `h` came from `rhax_open` and is released once. Process context.
#[no_mangle]
pub unsafe extern "C" fn rhax_release(h: *mut c_void) {
    if h.is_null() {
        return;
    }
    // SAFETY: the caller's contract.
    let handle = unsafe { h.cast::<Handle>().read() };
    // SAFETY: allocated by `rhax_open` with this layout; released once.
    unsafe { alloc::alloc::dealloc(h.cast(), Layout::new::<Handle>()) };
    if let Some(hv) = shell() {
        let _ = hv.close(handle);
        sync_nodes(hv);
    }
}

/// Makes the VM and vCPU nodes match the core's live objects.
fn sync_nodes(hv: &LinuxHypervisor) {
    let live = hv.live();
    // SAFETY: `live.vcpus` holds 64 entries, read during the call; process context.
    unsafe { ffi::rhax_glue_nodes_sync(live.vms, live.vcpus.as_ptr()) };
}

/// Copies `buf.len()` bytes from user space; `Err(-EFAULT)` if any byte could not be read.
fn copy_in(buf: &mut [u8], uaddr: u64) -> Result<(), c_long> {
    // SAFETY: `buf` is writable for its length; the glue checks the user range.
    match unsafe { ffi::rhax_glue_copy_from_user(buf.as_mut_ptr(), uaddr, buf.len()) } {
        0 => Ok(()),
        _ => Err(-c_long::from(errno::EFAULT)),
    }
}

/// Copies `buf` to user space.
fn copy_out(uaddr: u64, buf: &[u8]) -> Result<(), c_long> {
    // SAFETY: `buf` is readable for its length; the glue checks the user range.
    match unsafe { ffi::rhax_glue_copy_to_user(uaddr, buf.as_ptr(), buf.len()) } {
        0 => Ok(()),
        _ => Err(-c_long::from(errno::EFAULT)),
    }
}

/// A zeroed kernel buffer of `len` bytes, fallibly.
fn zeroed(len: usize) -> Result<Vec<u8>, c_long> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| -c_long::from(errno::ENOMEM))?;
    v.resize(len, 0);
    Ok(v)
}

/// One IOCTL (`unlocked_ioctl`; 64-bit callers only: there is no `compat_ioctl`). 0 or
/// -errno.
///
/// # Safety
/// `h` came from `rhax_open` and is not released during the call. Process context.
#[no_mangle]
pub unsafe extern "C" fn rhax_ioctl(h: *mut c_void, cmd: u32, arg: u64) -> c_long {
    let Some(hv) = shell() else {
        return -c_long::from(errno::ENODEV);
    };
    if h.is_null() {
        return -c_long::from(errno::ENODEV);
    }
    // SAFETY: the caller's contract.
    let handle = unsafe { h.cast::<Handle>().read() };
    let r = match ioctl(hv, handle, cmd, arg) {
        Ok(v) | Err(v) => v,
    };
    if handle.scope() != Scope::Vcpu {
        // CREATE_VM and VCPU_CREATE make objects whose nodes user space opens next.
        sync_nodes(hv);
    }
    r
}

fn ioctl(hv: &LinuxHypervisor, handle: Handle, cmd: u32, arg: u64) -> Result<c_long, c_long> {
    let plan = ioc::plan(cmd).ok_or(-c_long::from(errno::ENOTTY))?;
    if let Some(kind) = plan.indirect {
        return indirect(hv, handle, cmd, arg, kind);
    }
    let mut buf = zeroed(plan.buffer())?;
    let (input, output) = buf.split_at_mut(plan.input);
    if !input.is_empty() {
        copy_in(input, arg)?;
    }
    let r = hv.dispatch(handle, cmd, input, output);
    match &r {
        Ok(n) => {
            let n = (*n).min(output.len());
            if n != 0 {
                copy_out(arg, &output[..n])?;
            }
        }
        Err(e) => report_vcpu_failure(cmd, e),
    }
    Ok(ioctl_return(&r))
}

/// How many vCPU failures are logged per module load: enough to see why a client stopped
/// (QEMU aborts on the first), bounded so that a client repeating a failing RUN cannot flood
/// the kernel log.
const VCPU_FAILURES_LOGGED: u32 = 16;

/// Logs a vCPU operation that failed inside rhax-core (a VM entry refused by the CPU, a guest
/// state that cannot be emulated): the client sees only an errno and HAXM's exit status, and
/// the reason (e.g. `InvalidGuestState { reason, qualification }`, SDM Vol. 3C §27.8) is what
/// a report needs.
fn report_vcpu_failure(cmd: u32, e: &DispatchError) {
    static LOGGED: AtomicU32 = AtomicU32::new(0);
    let ErrorKind::Vcpu(h) = e.kind else {
        return;
    };
    if LOGGED.fetch_add(1, Ordering::Relaxed) >= VCPU_FAILURES_LOGGED {
        return;
    }
    // Plain fields only: `Debug` of the error types pulls core's string-slicing panic path
    // into the module, which the stack check refuses (it recurses).
    match h {
        HaxError::InvalidGuestState {
            reason,
            qualification,
        } => error!(
            "vCPU ioctl {:#x}: VM entry failed, exit reason {:#x}, qualification {:#x}",
            cmd, reason, qualification
        ),
        _ => error!(
            "vCPU ioctl {:#x} failed: errno {}",
            cmd,
            positive(e.errno())
        ),
    }
}

/// SET_CPUID / GET_CPUID: `arg` is the address of a pointer to the table.
fn indirect(
    hv: &LinuxHypervisor,
    handle: Handle,
    cmd: u32,
    arg: u64,
    kind: Indirect,
) -> Result<c_long, c_long> {
    let mut ptr = [0u8; 8];
    copy_in(&mut ptr, arg)?;
    let table = u64::from_le_bytes(ptr);
    let mut header = [0u8; ioc::CPUID_HEADER];
    copy_in(&mut header, table)?;
    let total = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let bytes = ioc::cpuid_table_bytes(total);
    let r: Result<usize, DispatchError>;
    match kind {
        Indirect::SetCpuid => {
            let mut input = zeroed(bytes)?;
            copy_in(&mut input, table)?;
            r = hv.dispatch(handle, cmd, &input, &mut []);
        }
        Indirect::GetCpuid => {
            let mut output = zeroed(bytes)?;
            r = hv.dispatch(handle, cmd, &header, &mut output);
            let n = match &r {
                Ok(n) => (*n).min(bytes),
                // Too small a table: HAXM still copies the header back (`total` needed).
                Err(e) if e.errno() == errno::ENOMEM => ioc::CPUID_HEADER,
                Err(_) => 0,
            };
            if n != 0 {
                copy_out(table, &output[..n])?;
            }
        }
    }
    Ok(ioctl_return(&r))
}

/// A panic is a broken invariant (no input reaches one): one line naming the place, then the
/// kernel's panic().
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut line = crate::log::Line::new();
    let (file, n) = info
        .location()
        .map(|l| (l.file(), l.line()))
        .unwrap_or(("?", 0));
    let _ = write!(line, "panic at {}:{}: {}", file, n, info.message());
    let b = line.bytes();
    // SAFETY: `b` is valid for its length; does not return.
    unsafe { ffi::rhax_glue_panic(b.as_ptr(), b.len()) }
}

/// Keeps `Device` in the public story of this file (the node kinds of `rhax_open`).
const _: fn(Device) = |_| {};
