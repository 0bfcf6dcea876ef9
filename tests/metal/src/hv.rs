//! The in-kernel HAXM shell: rhax-core's dispatcher ([`Hypervisor`]) served to a userlib
//! client through a [`rhax::Transport`] that calls it directly, the way the Windows driver's
//! IRP handler will (Windows IOCTL codes, Win32 errors from the NTSTATUS it would complete
//! the IRP with).
//!
//! * [`MetalRoots`] lends the dispatcher each CPU's [`VmxRoot`] ([`CpuRoots`]): one root per
//!   CPU, entered on every online CPU by [`Shell::new`] and left by [`Shell`]'s drop.
//! * "User" addresses are kernel addresses: the kernel identity-maps the first 4 GiB, so the
//!   tunnel and IO buffer pages handed to SETUP_TUNNEL and the guest RAM the client registers
//!   (pages from the kernel allocator) are reached at their physical address
//!   ([`rhax_core::dispatch::UserMapping`] for [`Metal`] in `platform.rs`).
//!
//! INVEPT on every CPU ([`CpuRoots::invept_each_cpu`]): a CPU that is not inside
//! [`CpuRoots::with_current`] cannot be in guest mode, so it gets a pending-flush mark it
//! executes before its next lend (hence before its next VM entry). A CPU inside a lend may be
//! in guest mode: it gets the mark plus the wake-up IPI (which forces a VM exit: external-
//! interrupt exiting), and the requester waits until it acknowledged, which it does when the
//! lend ends. The lend's bookkeeping (`in_root` set before the mark is read, the requester
//! marking before it reads `in_root`, both sequentially consistent) makes one of the two
//! sides see the other.

use alloc::format;
use alloc::string::String;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rhax::{DevicePath, IoctlRequest, OsError, Transport};
use rhax_api::{CapabilityFailure, Platform as Codes};
use rhax_core::dispatch::{nt, CpuRoots, Handle, Hypervisor, RootUnavailable};
use rhax_core::platform::{CpuIndex, Platform};
use rhax_core::vmx::caps::VmxCaps;
use rhax_core::vmx::hw::HwVmx;
use rhax_core::vmx::instructions::InveptType;
use rhax_core::vmx::negotiate::negotiate;
use rhax_core::vmx::root::VmxRoot;
use rhax_core::vmx::Vmx;

use crate::boot::MAX_CPUS;
use crate::platform::Metal;
use crate::{smp, vmx};

/// One CPU's VMX root and its INVEPT bookkeeping.
struct CpuSlot {
    root: UnsafeCell<Option<VmxRoot<HwVmx>>>,
    /// Inside [`CpuRoots::with_current`] (maybe in guest mode).
    in_root: AtomicBool,
    /// A lend is in progress: catches re-entry, which the trait forbids.
    busy: AtomicBool,
    /// Flush requests posted / executed (sequence numbers).
    requested: AtomicU64,
    done: AtomicU64,
    /// EPTP of the pending single-context flush; `u64::MAX` = global.
    eptp: AtomicU64,
}

// SAFETY: `root` is touched only by its own CPU (lends run there; `Shell::new`/drop enter and
// leave it with a job on that CPU) in a context that cannot be preempted (no scheduler, and
// the only interrupt handler, the wake-up IPI's, never touches it). The rest is atomics.
unsafe impl Sync for CpuSlot {}

static SLOTS: [CpuSlot; MAX_CPUS] = [const {
    CpuSlot {
        root: UnsafeCell::new(None),
        in_root: AtomicBool::new(false),
        busy: AtomicBool::new(false),
        requested: AtomicU64::new(0),
        done: AtomicU64::new(0),
        eptp: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// The kernel's per-CPU VMX roots, lent to the dispatcher.
pub struct MetalRoots {
    _private: (),
}

/// Executes the flushes posted for this CPU (the caller holds its root).
fn flush_pending(slot: &CpuSlot, root: &mut VmxRoot<HwVmx>) {
    let want = slot.requested.load(Ordering::SeqCst);
    if slot.done.load(Ordering::SeqCst) == want {
        return;
    }
    let eptp = slot.eptp.swap(0, Ordering::SeqCst);
    let global = || {
        // SAFETY: VMX root on this CPU (the root's invariant); INVEPT needs no current VMCS.
        unsafe { root_invept(InveptType::Global, 0) }
    };
    let ok = if eptp == u64::MAX || eptp == 0 {
        global()
    } else {
        // SAFETY: as above.
        unsafe { root.vmx().invept(InveptType::SingleContext, eptp) }.is_ok() || global()
    };
    if !ok {
        crate::fail_run("INVEPT failed on a lent CPU");
    }
    slot.done.store(want, Ordering::SeqCst);
}

/// INVEPT through a fresh handle; true on success.
///
/// # Safety
/// The running CPU is in VMX root operation at CPL 0.
unsafe fn root_invept(kind: InveptType, eptp: u64) -> bool {
    // SAFETY: CPL 0 on a VMX CPU, used only here on this CPU.
    let mut hw = unsafe { HwVmx::new() };
    // SAFETY: VMX root by the caller's contract.
    unsafe { hw.invept(kind, eptp) }.is_ok()
}

impl CpuRoots for MetalRoots {
    type Vmx = HwVmx;

    fn with_current<T>(
        &self,
        f: impl FnOnce(&mut VmxRoot<HwVmx>) -> T,
    ) -> Result<T, RootUnavailable> {
        crate::arch::cli();
        let slot = &SLOTS[smp::cpu_index()];
        if slot.busy.swap(true, Ordering::SeqCst) {
            return Err(RootUnavailable);
        }
        slot.in_root.store(true, Ordering::SeqCst);
        // SAFETY: only this CPU touches its slot's root, `busy` excludes re-entry, and
        // interrupts are off (no handler touches it anyway).
        let root = unsafe { &mut *slot.root.get() };
        let r = match root.as_mut() {
            Some(root) => {
                flush_pending(slot, root);
                let r = f(root);
                flush_pending(slot, root);
                Ok(r)
            }
            None => Err(RootUnavailable),
        };
        slot.in_root.store(false, Ordering::SeqCst);
        if let Some(root) = root.as_mut() {
            // A request that raced with the store above.
            flush_pending(slot, root);
        }
        slot.busy.store(false, Ordering::SeqCst);
        // Host interrupts that forced a VM exit (external-interrupt exiting without
        // acknowledge-on-exit leaves them pending in the local APIC) are taken now, as a
        // real OS takes them when it lowers IRQL; otherwise every entry would exit again.
        // SAFETY: STI; NOP; CLI opens a one-instruction window for pending interrupts; the
        // only one the kernel sends is the wake-up IPI, whose handler only does EOI.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
        r
    }

    fn with_cpu<T: Send>(
        &self,
        cpu: CpuIndex,
        f: impl FnOnce(&mut VmxRoot<HwVmx>) -> T + Send,
    ) -> Result<T, RootUnavailable> {
        if cpu as usize == smp::cpu_index() {
            return self.with_current(f);
        }
        if cpu as usize >= smp::cpu_count() {
            return Err(RootUnavailable);
        }
        // The target CPU must be idle (between jobs): the scenarios keep each vCPU on the
        // CPU that runs its job, so only teardown and BSP-side requests get here.
        let job = crate::sync::SpinLock::new(Some(f));
        let out = crate::sync::SpinLock::new(None);
        smp::run_on_cpus(1 << cpu, &|_| {
            if let Some(f) = job.lock().take() {
                *out.lock() = Some(self.with_current(f));
            }
        });
        let r = out.lock().take();
        r.unwrap_or(Err(RootUnavailable))
    }

    fn invept_each_cpu(&self, eptp: u64, single_context: bool) {
        let me = smp::cpu_index();
        let target = if single_context { eptp } else { u64::MAX };
        let mut waits = [0u64; MAX_CPUS];
        for (i, slot) in SLOTS.iter().enumerate().take(smp::cpu_count()) {
            // SAFETY: reading whether the slot holds a root is racy only against enable and
            // disable, which run while no dispatcher request is in flight.
            if unsafe { (*slot.root.get()).is_none() } {
                continue;
            }
            if i == me {
                // The trait's rule: never called from inside a lend, so this CPU is not in
                // guest mode; flush now.
                let kind = if single_context {
                    InveptType::SingleContext
                } else {
                    InveptType::Global
                };
                // SAFETY: this CPU holds a root, so it is in VMX root operation.
                let ok = unsafe { root_invept(kind, eptp) }
                    // SAFETY: as above.
                    || unsafe { root_invept(InveptType::Global, 0) };
                if !ok {
                    crate::fail_run("INVEPT failed on the requesting CPU");
                }
                continue;
            }
            let prev = slot.eptp.swap(target, Ordering::SeqCst);
            if prev != 0 && prev != target {
                slot.eptp.store(u64::MAX, Ordering::SeqCst);
            }
            waits[i] = slot.requested.fetch_add(1, Ordering::SeqCst) + 1;
            if slot.in_root.load(Ordering::SeqCst) {
                smp::kick(i);
            }
        }
        for (i, slot) in SLOTS.iter().enumerate().take(smp::cpu_count()) {
            if waits[i] == 0 {
                continue;
            }
            while slot.in_root.load(Ordering::SeqCst) && slot.done.load(Ordering::SeqCst) < waits[i]
            {
                crate::arch::pause();
            }
        }
    }
}

/// The dispatcher as this kernel serves it.
pub type Hv = Hypervisor<Metal, MetalRoots>;

/// The hypervisor of one scenario: VMX root entered on every online CPU.
pub struct Shell {
    hv: Option<Hv>,
}

impl Shell {
    /// Negotiates, enters VMX root on every CPU (leaving the bring-up's own VMXON first: one
    /// owner per CPU), and creates the dispatcher with Windows IOCTL codes.
    pub fn new() -> Result<Shell, String> {
        let caps = VmxCaps::read(vmx::read_cap);
        let host = negotiate(&caps).map_err(|_| CapabilityFailure::VT);
        let errors = crate::sync::SpinLock::new(String::new());
        smp::run_on_all(&|cpu| {
            crate::arch::cli();
            vmx::vmxoff_on_this_cpu(cpu);
            // SAFETY: only this CPU touches its slot (see `CpuSlot`), no lend is in progress.
            let slot = unsafe { &mut *SLOTS[cpu].root.get() };
            if slot.is_some() {
                return;
            }
            let region = match Metal.alloc_pages(1) {
                Ok(r) => r,
                Err(e) => {
                    errors
                        .lock()
                        .push_str(&format!("cpu {cpu}: VMXON region {e:?}; "));
                    return;
                }
            };
            // SAFETY: HwVmx is used only on this CPU, through the root stored in its slot.
            let hw = unsafe { HwVmx::new() };
            // SAFETY: CPL 0; the root stays in this CPU's slot and is only used on this CPU
            // with interrupts off (lends), until `Shell::drop` disables it here again.
            match unsafe { VmxRoot::enable(hw, cpu as u32, region) } {
                Ok(root) => {
                    SLOTS[cpu].requested.store(0, Ordering::SeqCst);
                    SLOTS[cpu].done.store(0, Ordering::SeqCst);
                    *slot = Some(root);
                }
                Err((e, _, region)) => {
                    Metal.free_pages(region);
                    errors.lock().push_str(&format!("cpu {cpu}: {e:?}; "));
                }
            }
        });
        let shell = Shell {
            hv: Some(Hypervisor::new(
                Metal,
                MetalRoots { _private: () },
                Codes::Windows,
                host,
            )),
        };
        let e = core::mem::take(&mut *errors.lock());
        if e.is_empty() {
            Ok(shell)
        } else {
            Err(format!("VmxRoot::enable: {e}"))
        }
    }

    /// The dispatcher.
    pub fn hv(&self) -> &Hv {
        self.hv.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// A transport to it.
    pub fn transport(&self) -> KernelTransport<'_> {
        KernelTransport { hv: self.hv() }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Tears down what is still open (VMCLEAR of every vCPU where it is active) while the
        // roots exist, then leaves VMX operation everywhere.
        drop(self.hv.take());
        smp::run_on_all(&|cpu| {
            // SAFETY: only this CPU touches its slot; the dispatcher is gone.
            let slot = unsafe { &mut *SLOTS[cpu].root.get() };
            if let Some(root) = slot.take() {
                match root.disable() {
                    Ok((_, region)) => Metal.free_pages(region),
                    Err(_) => crate::fail_run("VMXOFF failed"),
                }
            }
        });
    }
}

/// TSC ticks spent inside the dispatcher (every IOCTL through [`KernelTransport`]), so that a
/// bench can tell the kernel's share of a round trip from the user side's (Bochs's TSC
/// counts emulated instructions).
pub static DISPATCH_TSC: AtomicU64 = AtomicU64::new(0);

/// Whether [`DISPATCH_TSC`] is kept (a measuring [`crate::haxm::BenchLoop`] sets it).
pub static MEASURE_DISPATCH: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Userlib's view of the in-kernel dispatcher: opens are the dispatcher's opens, IOCTLs its
/// `dispatch`, errors the Win32 codes `DeviceIoControl` would report.
#[derive(Clone, Copy)]
pub struct KernelTransport<'a> {
    hv: &'a Hv,
}

/// `RtlNtStatusToDosError` for the statuses the dispatcher completes with.
pub fn win32_of(status: u32) -> u32 {
    match status {
        nt::STATUS_UNSUCCESSFUL => 31,
        nt::STATUS_NOT_IMPLEMENTED | nt::STATUS_INVALID_DEVICE_REQUEST => 1,
        nt::STATUS_INVALID_HANDLE => 6,
        nt::STATUS_INVALID_PARAMETER => 87,
        nt::STATUS_ACCESS_DENIED => 5,
        nt::STATUS_BUFFER_TOO_SMALL => 122,
        nt::STATUS_OBJECT_NAME_NOT_FOUND => 2,
        other => other,
    }
}

// SAFETY: the dispatcher answers SETUP_TUNNEL with the addresses `UserMapping::map_user` gave
// for the vCPU's tunnel and IO buffer pages: for `Metal` the identity-mapped kernel
// addresses of pages the vCPU owns until its handle is closed (`Hypervisor::close`).
unsafe impl Transport for KernelTransport<'_> {
    type Handle = Handle;

    fn platform(&self) -> Codes {
        Codes::Windows
    }

    fn open(&self, path: DevicePath) -> Result<Handle, OsError> {
        let r = match path {
            DevicePath::System => Ok(self.hv.open_system()),
            DevicePath::Vm { vm } => self.hv.open_vm(vm),
            DevicePath::Vcpu { vm, vcpu } => self.hv.open_vcpu(vm, vcpu),
        };
        r.map_err(|e| OsError::Win32(win32_of(e.nt_status())))
    }

    fn ioctl(&self, handle: &Handle, mut req: IoctlRequest<'_>) -> Result<usize, OsError> {
        // Windows METHOD_BUFFERED: one system buffer holds the input and receives the output.
        // The dispatcher gets them as two slices, so InOut is passed as a copy of the input,
        // on the heap: this is the shell's IOCTL path, whose stack frames stay small (`cargo
        // xtask stack`).
        let mut copy = alloc::vec::Vec::new();
        let (input, output): (&[u8], &mut [u8]) = match &mut req.buf {
            rhax::IoctlBuf::None => (&[], &mut []),
            rhax::IoctlBuf::In(b) => (b, &mut []),
            rhax::IoctlBuf::Out(b) => (&[], b),
            rhax::IoctlBuf::InOut(b) => {
                if b.len() > 4096 {
                    return Err(OsError::Unsupported);
                }
                copy.extend_from_slice(b);
                (&copy[..], b)
            }
        };
        // Timed only while a bench loop measures the user side's share (a separate pass: the
        // RDTSCs would otherwise be part of the round trip they measure).
        let r = if MEASURE_DISPATCH.load(Ordering::Relaxed) {
            let start = crate::arch::rdtsc();
            let r = self.hv.dispatch(*handle, req.code, input, output);
            DISPATCH_TSC.fetch_add(crate::arch::rdtsc().wrapping_sub(start), Ordering::Relaxed);
            r
        } else {
            self.hv.dispatch(*handle, req.code, input, output)
        };
        r.map_err(|e| OsError::Win32(win32_of(e.nt_status())))
    }

    fn close(&self, handle: Handle) {
        if let Err(e) = self.hv.close(handle) {
            crate::println!("hv: close {handle:?} failed: {e:?}");
        }
    }
}
