//! HAXM's objects and handles: the system device, VMs, vCPUs; opening, closing, destroying,
//! and resolving a handle to its object (module documentation of [`super`] for lifetimes,
//! [`super::lockorder`] for the locks).

use crate::memory::try_arc::TryArc;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::ops::Deref;
use core::sync::atomic::AtomicU32;

use rhax_api::{Device, QemuVersion, Scope, HAX_MAX_VCPUS};

use super::lockorder::{Level, LockTracker, Ordered, OrderedGuard};
use super::{CpuRoots, Ctx, ErrorKind, Hypervisor, Res, RootUnavailable, UserMapping};
use crate::memory::limits::try_push;
use crate::memory::{GuestMemory, MemoryError};
use crate::platform::Platform;
use crate::vcpu::cpuid::CpuidTable;
use crate::vcpu::haxm::HaxVcpu;
use crate::vmx::negotiate::OptionalFeatures;

/// `running_on` of a vCPU outside RUN.
pub(super) const NOT_RUNNING: u32 = u32::MAX;

/// An open handle: the object it names and a serial number unique over the hypervisor's
/// life, so a stale handle never reaches a later object with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    pub(super) device: Device,
    pub(super) serial: u64,
}

impl Handle {
    /// The device it refers to.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The device scope its IOCTLs are looked up in.
    pub fn scope(&self) -> Scope {
        self.device.scope()
    }

    /// A handle made up from parts, for tests of stale and forged handles.
    pub fn forge(device: Device, serial: u64) -> Handle {
        Handle { device, serial }
    }
}

/// A vCPU slot of a VM.
pub(super) struct VcpuEntry {
    pub(super) obj: TryArc<VcpuObject>,
    /// Serial of the open handle.
    pub(super) handle: Option<u64>,
}

pub(super) struct VmState {
    /// Serial of the open VM handle.
    pub(super) handle: Option<u64>,
    /// The VM handle was closed: the VM lives on only for its vCPUs.
    pub(super) closed: bool,
    pub(super) vcpus: [Option<VcpuEntry>; HAX_MAX_VCPUS as usize],
    pub(super) qemu_version: Option<QemuVersion>,
    /// The in-kernel APIC's bus (RHAX_VM_IOCTL_ENABLE_APIC), set before any vCPU exists.
    pub(super) apic: Option<TryArc<crate::apic::ApicBus>>,
}

impl VmState {
    fn vcpu_count(&self) -> usize {
        self.vcpus.iter().filter(|v| v.is_some()).count()
    }
}

pub(super) struct VmObject {
    pub(super) id: u32,
    /// The system handle that created it (for cleanup of never-opened VMs).
    pub(super) creator: Option<u64>,
    pub(super) eptp: u64,
    /// Taken (`None`) when the VM is destroyed; requests hold clones, and the holder of the
    /// last one frees it ([`MemoryRef`]).
    pub(super) memory: Ordered<Option<TryArc<GuestMemory>>>,
    /// The VM's CPUID table, shared by its vCPUs; replaced whole by SET_CPUID (copy on
    /// write), so RUN holds a reference without a lock.
    pub(super) cpuid: Ordered<TryArc<CpuidTable>>,
    pub(super) state: Ordered<VmState>,
}

/// Where a vCPU is: idle in its slot, lent to the one request working on it, or destroyed.
pub(super) enum VcpuSlot {
    Idle(Box<HaxVcpu>),
    /// Lent out; `destroy`: closed meanwhile, so the request destroys it when done.
    Lent {
        destroy: bool,
    },
    Gone,
}

pub(super) struct VcpuObject {
    pub(super) id: u32,
    /// CPU index while inside RUN, [`NOT_RUNNING`] otherwise (read by KICKOFF without locks).
    pub(super) running_on: AtomicU32,
    pub(super) user_tunnel: u64,
    pub(super) user_io_buffer: u64,
    pub(super) slot: Ordered<VcpuSlot>,
}

pub(super) struct Table {
    pub(super) vms: Vec<Option<TryArc<VmObject>>>,
    pub(super) systems: Vec<u64>,
    /// Bytes; `None` after `SET_MEMLIMIT{enable = 0}`.
    pub(super) mem_limit: Option<u64>,
}

impl Table {
    /// VM `vm`'s state, locked, if the VM exists and its handle has not been closed (a closed
    /// VM lives on only for its vCPUs: it cannot be reopened nor get new vCPUs).
    fn open_vm_state<'a>(
        &'a self,
        vm: u32,
        ctx: &Ctx,
        t: &'a LockTracker,
    ) -> Res<OrderedGuard<'a, VmState>> {
        let obj = self
            .vms
            .get(vm as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| ctx.err(ErrorKind::NoSuchVm { vm }))?;
        let st = obj.state.lock(t);
        if st.closed {
            return Err(ctx.err(ErrorKind::VmClosing));
        }
        Ok(st)
    }
}

/// What a handle resolved to.
pub(super) enum Target {
    System(u64),
    Vm(TryArc<VmObject>),
    Vcpu(TryArc<VmObject>, TryArc<VcpuObject>),
}

/// A reference to a VM's memory held by a request (no lock). Dropping the last reference of
/// a destroyed VM's memory flushes every CPU and frees it.
pub(super) struct MemoryRef<'h, P: Platform + UserMapping, R: CpuRoots> {
    hv: &'h Hypervisor<P, R>,
    /// Taken only by `drop`. Not an `Option`: the field's drop glue would test the `None`
    /// that `drop` leaves, out of line, on every RUN.
    mem: ManuallyDrop<TryArc<GuestMemory>>,
}

impl<P: Platform + UserMapping, R: CpuRoots> Deref for MemoryRef<'_, P, R> {
    type Target = GuestMemory;
    fn deref(&self) -> &GuestMemory {
        &self.mem
    }
}

impl<P: Platform + UserMapping, R: CpuRoots> Drop for MemoryRef<'_, P, R> {
    fn drop(&mut self) {
        // SAFETY: `mem` is initialized from construction until here, taken exactly once (this
        // is the only place), and the struct is never used after `drop`.
        let m = unsafe { ManuallyDrop::take(&mut self.mem) };
        self.hv.release_memory(m);
    }
}

/// A vCPU lent to one request; put back (or destroyed, if closed meanwhile) on drop.
pub(super) struct VcpuLease<'h, P: Platform + UserMapping, R: CpuRoots> {
    hv: &'h Hypervisor<P, R>,
    obj: &'h VcpuObject,
    /// Taken only by `drop` (not an `Option`: no test of a `None` in the drop glue, and no
    /// "missing" case in `get`).
    vcpu: ManuallyDrop<Box<HaxVcpu>>,
}

impl<P: Platform + UserMapping, R: CpuRoots> VcpuLease<'_, P, R> {
    /// The vCPU.
    pub(super) fn get(&mut self) -> &mut HaxVcpu {
        &mut self.vcpu
    }
}

impl<P: Platform + UserMapping, R: CpuRoots> Drop for VcpuLease<'_, P, R> {
    fn drop(&mut self) {
        // SAFETY: `vcpu` is initialized from construction until here, taken exactly once
        // (this is the only place), and the struct is never used after `drop`.
        let v = unsafe { ManuallyDrop::take(&mut self.vcpu) };
        let t = LockTracker::new();
        let mut slot = self.obj.slot.lock(&t);
        if matches!(*slot, VcpuSlot::Lent { destroy: true }) {
            *slot = VcpuSlot::Gone;
            drop(slot);
            self.hv.teardown_vcpu(self.obj, v);
        } else {
            *slot = VcpuSlot::Idle(v);
        }
    }
}

impl<P: Platform + UserMapping, R: CpuRoots> Hypervisor<P, R> {
    /// Opens the control device (not exclusive). When no kernel memory is left to record the
    /// handle, the handle returned is dead: every request on it fails as a closed handle.
    pub fn open_system(&self) -> Handle {
        let serial = self.serial();
        let t = LockTracker::new();
        let _ = try_push(&mut self.table.lock(&t).systems, serial);
        Handle {
            device: Device::System,
            serial,
        }
    }

    /// Creates a VM (lowest free id) not owned by any system handle; returns its id.
    pub fn create_vm(&self) -> Res<u32> {
        let ctx = self.ctx(Some(&rhax_api::ioctl::HAX_IOCTL_CREATE_VM), None);
        self.create_vm_for(None, ctx)
    }

    /// A VM's CPUID table, a copy of the template built in its allocation (no 2.6 KiB table
    /// on the kernel stack). Out of line: inlined, its closure's frame pushed VM creation's
    /// over the 2 KiB budget (`cargo xtask sys`).
    #[inline(never)]
    fn new_cpuid_table(&self) -> Result<TryArc<CpuidTable>, ()> {
        TryArc::try_new_zeroed_with((), |t: &mut CpuidTable| {
            t.copy_from(&self.cpuid_template);
            Ok(())
        })
        .map_err(drop)
    }

    /// A VM's guest memory, shared. Out of line for the same reason as
    /// [`Hypervisor::new_cpuid_table`]: the `GuestMemory` value passes through its frame.
    #[inline(never)]
    fn new_memory(&self, large: bool) -> Result<TryArc<GuestMemory>, MemoryError> {
        let memory = GuestMemory::with_quota(&self.platform, large, self.quota.clone())?;
        TryArc::try_new(memory).map_err(|(e, m)| {
            // Never reachable by a vCPU: no INVEPT needed.
            m.destroy(&self.platform);
            MemoryError::Platform(e)
        })
    }

    pub(super) fn create_vm_for(&self, creator: Option<u64>, ctx: Ctx) -> Res<u32> {
        let controls = self
            .host
            .as_ref()
            .map_err(|_| ctx.err(ErrorKind::NotWorking))?;
        // VMX operation on every CPU while a VM exists (a shell may enter it only now); from
        // here on, the memory's last release ends it (`release_memory`).
        self.roots
            .vm_created()
            .map_err(|RootUnavailable| ctx.err(ErrorKind::NoVmxRoot))?;
        // Allocate before taking the table lock: allocation may be slow, and a failure then
        // leaves the table untouched.
        let large = controls.available.contains(OptionalFeatures::EPT_2M_PAGES);
        let memory = self.new_memory(large).map_err(|e| {
            self.roots.vm_destroyed();
            ctx.err(ErrorKind::Memory(e))
        })?;
        let eptp = memory.eptp();
        let oom = |e| ctx.err(ErrorKind::Memory(MemoryError::Platform(e)));
        let Ok(cpuid) = self.new_cpuid_table() else {
            self.release_memory(memory);
            return Err(oom(crate::platform::PlatformError::OutOfMemory));
        };
        let t = LockTracker::new();
        let mut table = self.table.lock(&t);
        let Some(id) = table.vms.iter().position(Option::is_none) else {
            drop(table);
            self.release_memory(memory);
            return Err(ctx.err(ErrorKind::NoFreeVmId));
        };
        let obj = TryArc::try_new(VmObject {
            id: id as u32,
            creator,
            eptp,
            memory: Ordered::new(Level::VmMemory, Some(memory)),
            cpuid: Ordered::new(Level::VmCpuid, cpuid),
            state: Ordered::new(
                Level::VmState,
                VmState {
                    handle: None,
                    closed: false,
                    vcpus: Default::default(),
                    qemu_version: None,
                    apic: None,
                },
            ),
        });
        match obj {
            Ok(obj) => {
                table.vms[id] = Some(obj);
                Ok(id as u32)
            }
            Err((e, obj)) => {
                drop(table);
                self.destroy_vm(&obj);
                Err(oom(e))
            }
        }
    }

    /// Opens VM `vm`'s device. Exclusive: fails with [`ErrorKind::Busy`] while open.
    pub fn open_vm(&self, vm: u32) -> Res<Handle> {
        let ctx = self.ctx(None, Some(Scope::Vm));
        let t = LockTracker::new();
        let table = self.table.lock(&t);
        let mut st = table.open_vm_state(vm, &ctx, &t)?;
        if st.handle.is_some() {
            return Err(ctx.err(ErrorKind::Busy));
        }
        let serial = self.serial();
        st.handle = Some(serial);
        Ok(Handle {
            device: Device::Vm { vm },
            serial,
        })
    }

    /// Opens vCPU `vcpu` of VM `vm`. Exclusive.
    pub fn open_vcpu(&self, vm: u32, vcpu: u32) -> Res<Handle> {
        let ctx = self.ctx(None, Some(Scope::Vcpu));
        let t = LockTracker::new();
        let table = self.table.lock(&t);
        let mut st = table.open_vm_state(vm, &ctx, &t)?;
        let entry = st
            .vcpus
            .get_mut(vcpu as usize)
            .and_then(Option::as_mut)
            .ok_or_else(|| ctx.err(ErrorKind::NoSuchVcpu { vcpu }))?;
        if entry.handle.is_some() {
            return Err(ctx.err(ErrorKind::Busy));
        }
        let serial = self.serial();
        entry.handle = Some(serial);
        Ok(Handle {
            device: Device::Vcpu { vm, vcpu },
            serial,
        })
    }

    /// Closes a handle and destroys what it kept alive. Fails only for a handle that is not
    /// open (nothing changes then).
    pub fn close(&self, handle: Handle) -> Res<()> {
        let ctx = self.ctx(None, Some(handle.scope()));
        // At most every vCPU of every VM dies: HAX_MAX_VCPUS per VM, and VMs only die one at a
        // time except for a system handle's never-opened ones, handled one by one below.
        let mut dead_vcpus: [Option<TryArc<VcpuObject>>; HAX_MAX_VCPUS as usize] =
            Default::default();
        let mut dead_vm: Option<TryArc<VmObject>> = None;
        let t = LockTracker::new();
        match handle.device {
            Device::System => {
                {
                    let mut table = self.table.lock(&t);
                    let pos = table
                        .systems
                        .iter()
                        .position(|&s| s == handle.serial)
                        .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                    table.systems.swap_remove(pos);
                }
                // VMs it created and nobody opened die with it, one at a time.
                while let Some(vm) = self.take_never_opened(handle.serial, &t) {
                    let vcpus = {
                        let mut st = vm.state.lock(&t);
                        core::mem::take(&mut st.vcpus)
                    };
                    for v in vcpus.into_iter().flatten() {
                        self.destroy_vcpu(&v.obj);
                    }
                    self.destroy_vm(&vm);
                }
                return Ok(());
            }
            Device::Vm { vm } => {
                let mut table = self.table.lock(&t);
                let slot = table
                    .vms
                    .get_mut(vm as usize)
                    .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                let obj = slot
                    .as_ref()
                    .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                let mut st = obj.state.lock(&t);
                if st.handle != Some(handle.serial) {
                    return Err(ctx.err(ErrorKind::InvalidHandle));
                }
                st.handle = None;
                st.closed = true;
                for (i, v) in st.vcpus.iter_mut().enumerate() {
                    if v.as_ref().is_some_and(|e| e.handle.is_none()) {
                        dead_vcpus[i] = v.take().map(|e| e.obj);
                    }
                }
                let empty = st.vcpu_count() == 0;
                drop(st);
                if empty {
                    dead_vm = slot.take();
                }
            }
            Device::Vcpu { vm, vcpu } => {
                let mut table = self.table.lock(&t);
                let slot = table
                    .vms
                    .get_mut(vm as usize)
                    .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                let obj = slot
                    .as_ref()
                    .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                let mut st = obj.state.lock(&t);
                let v = st
                    .vcpus
                    .get_mut(vcpu as usize)
                    .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                if v.as_ref().and_then(|e| e.handle) != Some(handle.serial) {
                    return Err(ctx.err(ErrorKind::InvalidHandle));
                }
                dead_vcpus[0] = v.take().map(|e| e.obj);
                let gone = st.closed && st.vcpu_count() == 0;
                drop(st);
                if gone {
                    dead_vm = slot.take();
                }
            }
        }
        // Outside the table lock: vCPUs first (their VMCSs reference the EPT), then the VM.
        for v in dead_vcpus.iter().flatten() {
            self.destroy_vcpu(v);
        }
        if let Some(vm) = dead_vm {
            self.destroy_vm(&vm);
        }
        Ok(())
    }

    /// Takes out of the table one VM created by system handle `serial` and never opened.
    fn take_never_opened(&self, serial: u64, t: &LockTracker) -> Option<TryArc<VmObject>> {
        let mut table = self.table.lock(t);
        let slot = table.vms.iter_mut().find(|slot| {
            slot.as_ref().is_some_and(|vm| {
                let st = vm.state.lock(t);
                vm.creator == Some(serial) && st.handle.is_none() && !st.closed
            })
        })?;
        slot.take()
    }

    /// Destroys a vCPU now, or, when a request has it, marks it so that the request destroys
    /// it when it is done ([`VcpuLease`]).
    pub(super) fn destroy_vcpu(&self, obj: &VcpuObject) {
        let t = LockTracker::new();
        let v = {
            let mut slot = obj.slot.lock(&t);
            match core::mem::replace(&mut *slot, VcpuSlot::Gone) {
                VcpuSlot::Idle(v) => v,
                VcpuSlot::Lent { .. } => {
                    *slot = VcpuSlot::Lent { destroy: true };
                    return;
                }
                VcpuSlot::Gone => return,
            }
        };
        self.teardown_vcpu(obj, v);
    }

    fn teardown_vcpu(&self, obj: &VcpuObject, mut b: Box<HaxVcpu>) {
        let (tunnel, io) = b.tunnel_pages();
        self.platform.unmap_user(obj.user_tunnel, tunnel);
        self.platform.unmap_user(obj.user_io_buffer, io);
        if let Some(cpu) = b.core().resident_cpu() {
            // VMCLEAR where the VMCS is active (SDM Vol. 3C §25.11.1) before its page is freed.
            let core = b.core();
            let _ = self.roots.with_cpu(cpu, |root| core.unload(root));
        }
        // A VMCS that could not be cleared leaves its vCPU leaked (`StillResident`): a CPU
        // may still use the pages.
        let _ = (*b).destroy(&self.platform);
    }

    /// Drops the VM's reference to its memory; the last reference frees it.
    pub(super) fn destroy_vm(&self, vm: &VmObject) {
        let t = LockTracker::new();
        let memory = vm.memory.lock(&t).take();
        if let Some(m) = memory {
            self.release_memory(m);
        }
    }

    /// Drops one reference to a VM's memory; exactly one of the holders (`TryArc::into_inner`)
    /// gets it back when the last goes, and frees it.
    pub(super) fn release_memory(&self, memory: TryArc<GuestMemory>) {
        if let Some(memory) = TryArc::into_inner(memory) {
            // Every CPU that ran one of its vCPUs may still cache translations tagged with its
            // EPTP (SDM Vol. 3C §29.4.3.1): flush them before the tables and pins go back.
            self.roots
                .invept_each_cpu(memory.eptp(), self.single_context_invept());
            memory.destroy(&self.platform);
            // Every VM memory comes from `create_vm_for` after a successful `vm_created`.
            self.roots.vm_destroyed();
        }
    }

    /// A reference to the VM's memory, `InvalidHandle` once the VM is destroyed.
    pub(super) fn memory_of(&self, vm: &VmObject, ctx: Ctx) -> Res<MemoryRef<'_, P, R>> {
        let t = LockTracker::new();
        let mem = vm
            .memory
            .lock(&t)
            .clone()
            .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
        Ok(MemoryRef {
            hv: self,
            mem: ManuallyDrop::new(mem),
        })
    }

    /// Lends the vCPU to this request: [`ErrorKind::VcpuInUse`] while another request has it,
    /// `InvalidHandle` once destroyed.
    pub(super) fn lease<'h>(&'h self, obj: &'h VcpuObject, ctx: Ctx) -> Res<VcpuLease<'h, P, R>> {
        let t = LockTracker::new();
        let mut slot = obj.slot.lock(&t);
        match core::mem::replace(&mut *slot, VcpuSlot::Lent { destroy: false }) {
            VcpuSlot::Idle(v) => Ok(VcpuLease {
                hv: self,
                obj,
                vcpu: ManuallyDrop::new(v),
            }),
            other => {
                let kind = match other {
                    VcpuSlot::Lent { .. } => ErrorKind::VcpuInUse,
                    _ => ErrorKind::InvalidHandle,
                };
                *slot = other;
                Err(ctx.err(kind))
            }
        }
    }

    /// vCPU `vcpu` of VM `vm` by id, whoever holds their devices (the system device's
    /// `RHAX_IOCTL_VCPU_STATS`); a VM whose handle was closed still has its vCPUs.
    pub(super) fn vcpu_by_id(&self, vm: u32, vcpu: u32, ctx: Ctx) -> Res<TryArc<VcpuObject>> {
        let t = LockTracker::new();
        let table = self.table.lock(&t);
        let obj = table
            .vms
            .get(vm as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| ctx.err(ErrorKind::NoSuchVm { vm }))?;
        let st = obj.state.lock(&t);
        st.vcpus
            .get(vcpu as usize)
            .and_then(Option::as_ref)
            .map(|e| e.obj.clone())
            .ok_or_else(|| ctx.err(ErrorKind::NoSuchVcpu { vcpu }))
    }

    /// Resolves a handle to its object; a closed or stale handle never reaches one.
    pub(super) fn resolve(&self, handle: Handle, ctx: Ctx) -> Res<Target> {
        let t = LockTracker::new();
        let table = self.table.lock(&t);
        let vm_obj = |vm: u32| {
            table
                .vms
                .get(vm as usize)
                .and_then(Option::as_ref)
                .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))
        };
        match handle.device {
            Device::System => {
                if !table.systems.contains(&handle.serial) {
                    return Err(ctx.err(ErrorKind::InvalidHandle));
                }
                Ok(Target::System(handle.serial))
            }
            Device::Vm { vm } => {
                let obj = vm_obj(vm)?;
                if obj.state.lock(&t).handle != Some(handle.serial) {
                    return Err(ctx.err(ErrorKind::InvalidHandle));
                }
                Ok(Target::Vm(obj.clone()))
            }
            Device::Vcpu { vm, vcpu } => {
                let obj = vm_obj(vm)?;
                let st = obj.state.lock(&t);
                let e = st
                    .vcpus
                    .get(vcpu as usize)
                    .and_then(Option::as_ref)
                    .filter(|e| e.handle == Some(handle.serial))
                    .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                Ok(Target::Vcpu(obj.clone(), e.obj.clone()))
            }
        }
    }

    pub(super) fn single_context_invept(&self) -> bool {
        self.host.as_ref().is_ok_and(|c| {
            c.available
                .contains(OptionalFeatures::INVEPT_SINGLE_CONTEXT)
        })
    }
}

impl<P: Platform + UserMapping, R: CpuRoots> Drop for Hypervisor<P, R> {
    /// Driver unload: everything still alive is torn down (vCPUs first).
    fn drop(&mut self) {
        let vms = core::mem::take(&mut self.table.get_mut().vms);
        for vm in vms.into_iter().flatten() {
            let t = LockTracker::new();
            let vcpus = core::mem::take(&mut vm.state.lock(&t).vcpus);
            for v in vcpus.into_iter().flatten() {
                self.destroy_vcpu(&v.obj);
            }
            self.destroy_vm(&vm);
        }
    }
}
