//! The one entry point every shell calls: [`Hypervisor::dispatch`]`(handle, code, input,
//! output)`, with HAXM's objects, handles and per-device IOCTL meaning (`haxm-abi.md` §1-§2).
//!
//! # What a shell does
//!
//! * At load: `Hypervisor::new(platform, roots, codes, host)` where `codes` is the IOCTL
//!   encoding its clients use ([`rhax_api::Platform`]: Windows, Linux or Darwin codes) and
//!   `host` the negotiated [`VmxControls`] (or why VT-x is unusable, for CAPABILITY).
//! * Opening `\\.\HAX` / `/dev/HAX`: [`Hypervisor::open_system`]. Opening `hax_vmNN`:
//!   [`Hypervisor::open_vm`] (exclusive: a second open is refused, HAXM's EBUSY). Opening
//!   `hax_vmNN_vcpuMM`: [`Hypervisor::open_vcpu`] (exclusive too). The shell keeps the
//!   returned [`Handle`] with the file object.
//! * Every IOCTL: [`Hypervisor::dispatch`]; `input` holds the bytes the caller sent, `output`
//!   the buffer to fill (on POSIX, exactly the size the code encodes, as the kernel copies
//!   them; on Windows, the caller's lengths, checked against HAXM's minimums). The result is
//!   the number of bytes written (Windows `IoStatus.Information`), or a [`DispatchError`]
//!   the shell turns into a status with [`DispatchError::nt_status`] or
//!   [`DispatchError::errno`]. A failed request changes nothing.
//! * Closing: [`Hypervisor::close`]. There is no destroy IOCTL (HAXM's DESTROY_VM and
//!   VCPU_DESTROY were never implemented: Linux answers 0, the others "unknown"); closing a
//!   vCPU handle destroys the vCPU; closing the VM handle destroys the VM as soon as its
//!   last vCPU is gone (each vCPU holds the VM, as HAXM's reference counts).
//!
//! # Lifetimes, and where rhax deliberately differs from HAXM
//!
//! * VM ids 0..64 (0..8 with NetBSD codes), lowest free first; vCPU ids 0..16.
//! * A VM created through a system handle but never opened is destroyed when that system
//!   handle is closed, and a vCPU created but never opened when its VM handle is closed.
//!   HAXM leaks both until reboot (`haxm-abi.md` §1); no client depends on that.
//! * A closed VM cannot be reopened, nor get new vCPUs ([`ErrorKind::VmClosing`]); its open
//!   vCPU handles keep working until closed (process exit closes handles in any order).
//!
//! # Locking (thread safety)
//!
//! QEMU calls from many threads at once: the main thread changes the memory map while vCPU
//! threads are inside RUN; GET/SET_REGS come from the main thread while a vCPU thread is
//! parked. Locks, always taken in this order (a lock may be taken while holding only locks
//! above it):
//!
//! 1. `Hypervisor::table` (the VM table, system handles, the memory limit): held only to look
//!    up or insert/remove objects; never across VMX instructions, allocation or RUN.
//! 2. `VmObject::state` (open flags, the vCPU table, QEMU's version): short, as (1).
//! 3. `VcpuObject::backend` (one vCPU): held for the whole of one vCPU IOCTL, RUN included,
//!    and taken *before* the shell's non-preemptible region ([`CpuRoots::with_current`]) so
//!    that a preempted holder is never spun on by a non-preemptible context.
//! 4. `VmObject::memory` (read-locked by memory IOCTLs and by a running vCPU; write-locked
//!    only to destroy the VM, when no vCPU and no handle is left), then the memory module's
//!    own lock.
//!
//! No global lock is held across RUN: two vCPUs of one VM run concurrently, and memory
//! changes proceed while they do. A change that removes a translation is followed by an
//! INVEPT on every CPU ([`CpuRoots::invept_each_cpu`]; the IPI also forces running vCPUs
//! out) before the memory module may free what it unlinked
//! ([`crate::memory::GuestMemory::invept_done`]). KICKOFF takes no lock at all: it reads the
//! CPU a vCPU runs on from an atomic.
//!
//! Objects are reference counted (`Arc`): a request clones the object it resolved and drops
//! the table locks; closing removes the object from the table first (so no new request can
//! find it) and then waits on its lock for a request still in flight before tearing down.

mod error;
mod roots;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rhax_api::ext::{ExtFeatures, RhaxExtInfo, RHAX_EXT_MAGIC, RHAX_EXT_VERSION};
use rhax_api::ioctl::{self as codes, IoctlDef};
use rhax_api::{
    cpuid_size, AllocRamInfo, CapabilityFailure, CapabilityFeatures, CapabilityInfo,
    CapabilityStatus, CpuidHeader, Device, ModuleVersion, MsrData, Pod, ProtectRamInfo,
    QemuVersion, RamblockInfo, Scope, SetMemlimit, SetRamInfo, SetRamInfo2, TunnelInfo,
    HAX_COMPAT_VERSION, HAX_CUR_VERSION, HAX_MAX_CPUID_ENTRIES, HAX_MAX_MSR_ARRAY, HAX_MAX_VCPUS,
    HAX_MAX_VMS, HAX_MAX_VMS_NETBSD, HAX_TUNNEL_PAGE_SIZE,
};
use spin::{Mutex, RwLock};

pub use error::{errno, nt, DispatchError, ErrorKind};
pub use roots::{CpuRoots, RootUnavailable, UserMapping};
#[cfg(any(test, feature = "soft"))]
pub use roots::{NoCpuRoots, SoftCpuRoots};

use crate::memory::{GuestMemory, InveptRequest, MemoryError, MemorySnapshot};
use crate::platform::{CpuIndex, Platform};
use crate::vcpu::cpuid::CpuidTable;
use crate::vcpu::guest::MappedGuestMemory;
use crate::vcpu::haxm::{AfterMemory, HaxError, HaxVcpu, RunStep};
use crate::vcpu::RunError;
use crate::vmx::negotiate::{OptionalFeatures, VmxControls};
use crate::vmx::root::VmxRoot;

/// The host encoding of IOCTL codes a hypervisor serves.
pub type Codes = rhax_api::Platform;

/// `HAX_MEMQUOTA` default: HAXM reports 2^48 bytes until SET_MEMLIMIT (`haxm-abi.md` §5).
pub const DEFAULT_MEM_QUOTA: u64 = 1 << 48;

const NOT_RUNNING: u32 = u32::MAX;

/// An open handle: the object it names and a serial number unique over the hypervisor's
/// life, so a stale handle never reaches a later object with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    device: Device,
    serial: u64,
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
struct VcpuEntry {
    obj: Arc<VcpuObject>,
    /// Serial of the open handle.
    handle: Option<u64>,
}

struct VmState {
    /// Serial of the open VM handle.
    handle: Option<u64>,
    /// The VM handle was closed: the VM lives on only for its vCPUs.
    closed: bool,
    vcpus: [Option<VcpuEntry>; HAX_MAX_VCPUS as usize],
    qemu_version: Option<QemuVersion>,
}

impl VmState {
    fn vcpu_count(&self) -> usize {
        self.vcpus.iter().filter(|v| v.is_some()).count()
    }
}

struct VmObject {
    id: u32,
    /// The system handle that created it (for cleanup of never-opened VMs).
    creator: Option<u64>,
    eptp: u64,
    memory: RwLock<Option<GuestMemory>>,
    /// The VM's CPUID table, shared by its vCPUs; replaced whole by SET_CPUID (copy on
    /// write), so RUN holds a reference without a lock.
    cpuid: Mutex<Arc<CpuidTable>>,
    state: Mutex<VmState>,
}

struct VcpuObject {
    id: u32,
    /// CPU index while inside RUN, [`NOT_RUNNING`] otherwise (read by KICKOFF without locks).
    running_on: AtomicU32,
    user_tunnel: u64,
    user_io_buffer: u64,
    backend: Mutex<Option<HaxVcpu>>,
}

struct Table {
    vms: Vec<Option<Arc<VmObject>>>,
    systems: Vec<u64>,
    /// Bytes; `None` after `SET_MEMLIMIT{enable = 0}`.
    mem_limit: Option<u64>,
}

impl Table {
    /// VM `vm`'s state, locked, if the VM exists and its handle has not been closed (a closed
    /// VM lives on only for its vCPUs: it cannot be reopened nor get new vCPUs).
    fn open_vm_state(&self, vm: u32, ctx: &Ctx) -> Res<spin::MutexGuard<'_, VmState>> {
        let obj = self
            .vms
            .get(vm as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| ctx.err(ErrorKind::NoSuchVm { vm }))?;
        let st = obj.state.lock();
        if st.closed {
            return Err(ctx.err(ErrorKind::VmClosing));
        }
        Ok(st)
    }
}

/// Observable state, to compare before and after a refused request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HypervisorSnapshot {
    /// The memory quota in bytes, if reported.
    pub mem_limit: Option<u64>,
    /// Open system handles.
    pub system_handles: usize,
    /// Live VMs in id order.
    pub vms: Vec<VmSnapshot>,
}

/// One VM in a [`HypervisorSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSnapshot {
    /// Its id.
    pub id: u32,
    /// Its handle is open.
    pub open: bool,
    /// Its handle was closed.
    pub closed: bool,
    /// What NOTIFY_QEMU_VERSION said.
    pub qemu_version: Option<(u32, u32)>,
    /// Its vCPUs in id order: id, handle open, tunnel and IO buffer user addresses.
    pub vcpus: Vec<(u32, bool, u64, u64)>,
    /// Its guest memory.
    pub memory: Option<MemorySnapshot>,
}

/// The hypervisor: every object, reached through handles.
pub struct Hypervisor<P: Platform + UserMapping, R: CpuRoots> {
    platform: P,
    roots: R,
    codes: Codes,
    host: Result<VmxControls, CapabilityFailure>,
    next_serial: AtomicU64,
    table: Mutex<Table>,
    cpuid_template: CpuidTable,
}

type Res<T> = Result<T, DispatchError>;

/// The request being served, for error context.
#[derive(Clone, Copy)]
struct Ctx {
    def: Option<&'static IoctlDef>,
    scope: Option<Scope>,
    codes: Codes,
}

impl Ctx {
    fn err(&self, kind: ErrorKind) -> DispatchError {
        DispatchError::new(kind, self.def, self.scope, self.codes)
    }

    fn windows(&self) -> bool {
        self.codes == Codes::Windows
    }

    /// HAXM's buffer checks: Windows needs at least `input`/`output` bytes
    /// (`METHOD_BUFFERED` lengths); POSIX kernels copy exactly the size the code encodes, so
    /// anything else is refused. A need of 0 means the buffer is not used.
    fn sizes(&self, input: &[u8], need_in: usize, output: &[u8], need_out: usize) -> Res<()> {
        let ok = |got: usize, need: usize| {
            need == 0
                || if self.windows() {
                    got >= need
                } else {
                    got == need
                }
        };
        if !ok(input.len(), need_in) {
            return Err(self.err(ErrorKind::InputSize {
                expected: need_in,
                got: input.len(),
            }));
        }
        if !ok(output.len(), need_out) {
            return Err(self.err(ErrorKind::OutputSize {
                expected: need_out,
                got: output.len(),
            }));
        }
        Ok(())
    }

    fn read<T: Pod>(&self, input: &[u8]) -> Res<T> {
        T::read_from_prefix(input).ok_or_else(|| {
            self.err(ErrorKind::InputSize {
                expected: T::SIZE,
                got: input.len(),
            })
        })
    }

    fn write<T: Pod>(&self, value: &T, output: &mut [u8]) -> Res<usize> {
        let got = output.len();
        value.write_to_prefix(output).ok_or_else(|| {
            self.err(ErrorKind::OutputSize {
                expected: T::SIZE,
                got,
            })
        })
    }
}

impl<P: Platform + UserMapping, R: CpuRoots> Hypervisor<P, R> {
    /// A hypervisor serving clients that use `codes`, on a host where VT-x negotiated to
    /// `host` (or is unusable for the reasons given, which CAPABILITY then reports).
    pub fn new(
        platform: P,
        roots: R,
        codes: Codes,
        host: Result<VmxControls, CapabilityFailure>,
    ) -> Self {
        let max_vms = match codes {
            Codes::NetBsd | Codes::NetBsdI386 => HAX_MAX_VMS_NETBSD,
            _ => HAX_MAX_VMS,
        };
        Hypervisor {
            platform,
            roots,
            codes,
            host,
            next_serial: AtomicU64::new(1),
            table: Mutex::new(Table {
                vms: (0..max_vms).map(|_| None).collect(),
                systems: Vec::new(),
                mem_limit: Some(DEFAULT_MEM_QUOTA),
            }),
            cpuid_template: default_cpuid(),
        }
    }

    /// Replaces the CPUID table new VMs start from (default: the host's, filtered by
    /// [`CpuidTable::new`]).
    pub fn with_cpuid(mut self, table: CpuidTable) -> Self {
        self.cpuid_template = table;
        self
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The CPU roots.
    pub fn roots(&self) -> &R {
        &self.roots
    }

    /// The IOCTL encoding served.
    pub fn codes(&self) -> Codes {
        self.codes
    }

    fn ctx(&self, def: Option<&'static IoctlDef>, scope: Option<Scope>) -> Ctx {
        Ctx {
            def,
            scope,
            codes: self.codes,
        }
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// The capability bits rhax really implements today (`haxm-abi.md` §5): all of HAXM
    /// 7.8.0's but DEBUG (VCPU_DEBUG with ENABLE, single-step and breakpoints, is refused by
    /// the HAXM vCPU).
    pub fn capability_features(&self) -> Option<CapabilityFeatures> {
        self.host.as_ref().ok().map(|_| {
            // EPT and unrestricted guest are required by negotiation (vmx::negotiate), so a
            // working host has both.
            CapabilityFeatures::EPT
                | CapabilityFeatures::UG
                | CapabilityFeatures::FASTMMIO
                | CapabilityFeatures::RAMBLOCK_64BIT
                | CapabilityFeatures::SETRAM_64BIT
                | CapabilityFeatures::TUNNEL_PAGE
                | CapabilityFeatures::RAM_PROTECTION
                | CapabilityFeatures::IMPLICIT_RAMBLOCK
                | CapabilityFeatures::CPUID
        })
    }

    // ---------------------------------------------------------------- handles

    /// Opens the control device (not exclusive).
    pub fn open_system(&self) -> Handle {
        let serial = self.serial();
        self.table.lock().systems.push(serial);
        Handle {
            device: Device::System,
            serial,
        }
    }

    /// Creates a VM (lowest free id) not owned by any system handle; returns its id.
    pub fn create_vm(&self) -> Res<u32> {
        self.create_vm_for(None, self.ctx(Some(&codes::HAX_IOCTL_CREATE_VM), None))
    }

    fn create_vm_for(&self, creator: Option<u64>, ctx: Ctx) -> Res<u32> {
        let controls = self
            .host
            .as_ref()
            .map_err(|_| ctx.err(ErrorKind::NotWorking))?;
        // Allocate before taking the table lock: allocation may be slow, and a failure then
        // leaves the table untouched.
        let large = controls.available.contains(OptionalFeatures::EPT_2M_PAGES);
        let memory =
            GuestMemory::new(&self.platform, large).map_err(|e| ctx.err(ErrorKind::Memory(e)))?;
        let mut table = self.table.lock();
        let Some(id) = table.vms.iter().position(Option::is_none) else {
            drop(table);
            memory.destroy(&self.platform);
            return Err(ctx.err(ErrorKind::NoFreeVmId));
        };
        let eptp = memory.eptp();
        table.vms[id] = Some(Arc::new(VmObject {
            id: id as u32,
            creator,
            eptp,
            memory: RwLock::new(Some(memory)),
            cpuid: Mutex::new(Arc::new(self.cpuid_template.clone())),
            state: Mutex::new(VmState {
                handle: None,
                closed: false,
                vcpus: Default::default(),
                qemu_version: None,
            }),
        }));
        Ok(id as u32)
    }

    /// Opens VM `vm`'s device. Exclusive: fails with [`ErrorKind::Busy`] while open.
    pub fn open_vm(&self, vm: u32) -> Res<Handle> {
        let ctx = self.ctx(None, Some(Scope::Vm));
        let table = self.table.lock();
        let mut st = table.open_vm_state(vm, &ctx)?;
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
        let table = self.table.lock();
        let mut st = table.open_vm_state(vm, &ctx)?;
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
        let mut dead_vcpus: Vec<Arc<VcpuObject>> = Vec::new();
        let mut dead_vms: Vec<Arc<VmObject>> = Vec::new();
        {
            let mut table = self.table.lock();
            match handle.device {
                Device::System => {
                    let pos = table
                        .systems
                        .iter()
                        .position(|&s| s == handle.serial)
                        .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                    table.systems.swap_remove(pos);
                    for slot in table.vms.iter_mut() {
                        let never_opened = slot.as_ref().is_some_and(|vm| {
                            let st = vm.state.lock();
                            vm.creator == Some(handle.serial) && st.handle.is_none() && !st.closed
                        });
                        if never_opened {
                            if let Some(vm) = slot.take() {
                                let mut st = vm.state.lock();
                                dead_vcpus.extend(
                                    st.vcpus.iter_mut().filter_map(|v| v.take()).map(|e| e.obj),
                                );
                                drop(st);
                                dead_vms.push(vm);
                            }
                        }
                    }
                }
                Device::Vm { vm } => {
                    let slot = table
                        .vms
                        .get_mut(vm as usize)
                        .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                    let obj = slot
                        .as_ref()
                        .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                    let mut st = obj.state.lock();
                    if st.handle != Some(handle.serial) {
                        return Err(ctx.err(ErrorKind::InvalidHandle));
                    }
                    st.handle = None;
                    st.closed = true;
                    for v in st.vcpus.iter_mut() {
                        if v.as_ref().is_some_and(|e| e.handle.is_none()) {
                            if let Some(e) = v.take() {
                                dead_vcpus.push(e.obj);
                            }
                        }
                    }
                    let empty = st.vcpu_count() == 0;
                    drop(st);
                    if empty {
                        if let Some(o) = slot.take() {
                            dead_vms.push(o);
                        }
                    }
                }
                Device::Vcpu { vm, vcpu } => {
                    let slot = table
                        .vms
                        .get_mut(vm as usize)
                        .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                    let obj = slot
                        .as_ref()
                        .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                    let mut st = obj.state.lock();
                    let v = st
                        .vcpus
                        .get_mut(vcpu as usize)
                        .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                    if v.as_ref().and_then(|e| e.handle) != Some(handle.serial) {
                        return Err(ctx.err(ErrorKind::InvalidHandle));
                    }
                    if let Some(e) = v.take() {
                        dead_vcpus.push(e.obj);
                    }
                    let gone = st.closed && st.vcpu_count() == 0;
                    drop(st);
                    if gone {
                        if let Some(o) = slot.take() {
                            dead_vms.push(o);
                        }
                    }
                }
            }
        }
        // Outside the table lock: vCPUs first (their VMCSs reference the EPT), then VMs.
        for v in dead_vcpus {
            self.destroy_vcpu(&v);
        }
        for vm in dead_vms {
            self.destroy_vm(&vm);
        }
        Ok(())
    }

    fn destroy_vcpu(&self, obj: &VcpuObject) {
        // Waits for a request still in flight on this vCPU, then takes it out for good.
        let Some(mut b) = obj.backend.lock().take() else {
            return;
        };
        let (tunnel, io) = b.tunnel_pages();
        self.platform.unmap_user(obj.user_tunnel, tunnel);
        self.platform.unmap_user(obj.user_io_buffer, io);
        if let Some(cpu) = b.core().resident_cpu() {
            // VMCLEAR where the VMCS is active (SDM Vol. 3C §25.11.1) before its page is freed.
            let core = b.core();
            let _ = self.roots.with_cpu(cpu, |root| core.unload(root));
        }
        if let Err(still_active) = b.destroy(&self.platform) {
            // Its VMCS could not be cleared: a CPU may still use the pages, so they are
            // leaked rather than handed back.
            core::mem::forget(still_active);
        }
    }

    fn destroy_vm(&self, vm: &VmObject) {
        let Some(memory) = vm.memory.write().take() else {
            return;
        };
        // Every CPU that ran one of its vCPUs may still cache translations tagged with its
        // EPTP (SDM Vol. 3C §29.4.3.1): flush them before the tables and pins go back.
        self.roots
            .invept_each_cpu(vm.eptp, self.single_context_invept());
        memory.destroy(&self.platform);
    }

    fn single_context_invept(&self) -> bool {
        self.host.as_ref().is_ok_and(|c| {
            c.available
                .contains(OptionalFeatures::INVEPT_SINGLE_CONTEXT)
        })
    }

    fn resolve_vm(&self, handle: Handle, vm: u32, ctx: Ctx) -> Res<Arc<VmObject>> {
        let table = self.table.lock();
        let obj = table
            .vms
            .get(vm as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
        if obj.state.lock().handle != Some(handle.serial) {
            return Err(ctx.err(ErrorKind::InvalidHandle));
        }
        Ok(obj.clone())
    }

    fn resolve_vcpu(
        &self,
        handle: Handle,
        vm: u32,
        vcpu: u32,
        ctx: Ctx,
    ) -> Res<(Arc<VmObject>, Arc<VcpuObject>)> {
        let table = self.table.lock();
        let obj = table
            .vms
            .get(vm as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
        let st = obj.state.lock();
        let e = st
            .vcpus
            .get(vcpu as usize)
            .and_then(Option::as_ref)
            .filter(|e| e.handle == Some(handle.serial))
            .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
        Ok((obj.clone(), e.obj.clone()))
    }

    // ---------------------------------------------------------------- dispatch

    /// Serves one IOCTL (see the module documentation).
    pub fn dispatch(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Res<usize> {
        let scope = handle.scope();
        let ctx = self.ctx(None, Some(scope));
        // The handle first: a request on a closed or stale handle never reaches an object.
        let target = match handle.device {
            Device::System => {
                if !self.table.lock().systems.contains(&handle.serial) {
                    return Err(ctx.err(ErrorKind::InvalidHandle));
                }
                Target::System(handle.serial)
            }
            Device::Vm { vm } => Target::Vm(self.resolve_vm(handle, vm, ctx)?),
            Device::Vcpu { vm, vcpu } => {
                let (v, c) = self.resolve_vcpu(handle, vm, vcpu, ctx)?;
                Target::Vcpu(v, c)
            }
        };
        let def = IoctlDef::lookup(self.codes, scope, code)
            .ok_or_else(|| ctx.err(ErrorKind::UnknownIoctl { code }))?;
        let ctx = self.ctx(Some(def), Some(scope));
        match target {
            Target::System(serial) => self.system_ioctl(serial, def, ctx, input, output),
            Target::Vm(vm) => self.vm_ioctl(&vm, def, ctx, input, output),
            Target::Vcpu(vm, vcpu) => self.vcpu_ioctl(&vm, &vcpu, def, ctx, input, output),
        }
    }

    fn system_ioctl(
        &self,
        serial: u64,
        def: &'static IoctlDef,
        ctx: Ctx,
        input: &[u8],
        output: &mut [u8],
    ) -> Res<usize> {
        use rhax_api::ext::RHAX_IOCTL_EXT_INFO;
        match *def {
            codes::HAX_IOCTL_VERSION => {
                ctx.sizes(input, 0, output, ModuleVersion::SIZE)?;
                let v = ModuleVersion {
                    compat_version: HAX_COMPAT_VERSION,
                    cur_version: HAX_CUR_VERSION,
                };
                ctx.write(&v, output)
            }
            codes::HAX_IOCTL_CAPABILITY => {
                ctx.sizes(input, 0, output, CapabilityInfo::SIZE)?;
                let table = self.table.lock();
                let (mut wstatus, winfo) = match (&self.host, self.capability_features()) {
                    (Ok(_), Some(f)) => (CapabilityStatus::WORKING, f.bits()),
                    (Err(fail), _) => (CapabilityStatus::empty(), fail.bits()),
                    (Ok(_), None) => (CapabilityStatus::empty(), CapabilityFailure::VT.bits()),
                };
                if table.mem_limit.is_some() {
                    wstatus |= CapabilityStatus::MEMQUOTA;
                }
                // win_refcount: Windows reports the control device's reference count, Linux
                // a zeroed field (`haxm-abi.md` §2).
                let refcount = if ctx.windows() {
                    table.systems.len() as u32
                } else {
                    0
                };
                // mem_quota is not written when MEMQUOTA is clear (HAXM); Linux copies a zeroed
                // local struct, so its callers see 0.
                let previous = CapabilityInfo::read_from_prefix(output).unwrap_or_default();
                let quota = match table.mem_limit {
                    Some(q) => q,
                    None if matches!(self.codes, Codes::Linux | Codes::LinuxI386) => 0,
                    None => previous.mem_quota,
                };
                let cap = CapabilityInfo {
                    wstatus: wstatus.bits(),
                    winfo,
                    win_refcount: refcount,
                    mem_quota: quota,
                };
                ctx.write(&cap, output)
            }
            codes::HAX_IOCTL_SET_MEMLIMIT => {
                ctx.sizes(input, SetMemlimit::SIZE, output, 0)?;
                let m: SetMemlimit = ctx.read(input)?;
                let mut table = self.table.lock();
                if table.vms.iter().any(Option::is_some) {
                    return Err(ctx.err(ErrorKind::VmsExist));
                }
                // The input is in MB, the quota in bytes (`haxm-abi.md` §8 quirk 11).
                table.mem_limit = if m.enable_memlimit == 0 {
                    None
                } else {
                    Some(m.memory_limit.checked_mul(1 << 20).ok_or_else(|| {
                        ctx.err(ErrorKind::MemLimitOverflow {
                            megabytes: m.memory_limit,
                        })
                    })?)
                };
                Ok(0)
            }
            codes::HAX_IOCTL_CREATE_VM => {
                ctx.sizes(input, 0, output, 4)?;
                let id = self.create_vm_for(Some(serial), ctx)?;
                ctx.write(&id, output)
            }
            codes::HAX_IOCTL_DESTROY_VM => self.unimplemented_by_haxm(ctx),
            RHAX_IOCTL_EXT_INFO => {
                ctx.sizes(input, 0, output, RhaxExtInfo::SIZE)?;
                let info = RhaxExtInfo {
                    magic: RHAX_EXT_MAGIC,
                    version: RHAX_EXT_VERSION,
                    features: ExtFeatures::VCPU_STATS.bits(),
                };
                ctx.write(&info, output)
            }
            _ => Err(ctx.err(ErrorKind::UnknownIoctl {
                code: def.code(self.codes).unwrap_or(0),
            })),
        }
    }

    /// DESTROY_VM and VCPU_DESTROY: HAXM's Linux driver returns 0 (its unknown-IOCTL default),
    /// the others their "unknown IOCTL" error.
    fn unimplemented_by_haxm(&self, ctx: Ctx) -> Res<usize> {
        if matches!(self.codes, Codes::Linux | Codes::LinuxI386) {
            Ok(0)
        } else {
            Err(ctx.err(ErrorKind::UnimplementedByHaxm))
        }
    }

    /// Runs a memory-map change and, if it removed translations, the INVEPT everywhere that
    /// lets the memory module free what it unlinked.
    fn memory_change(
        &self,
        vm: &VmObject,
        ctx: Ctx,
        f: impl FnOnce(&GuestMemory) -> Result<Option<InveptRequest>, MemoryError>,
    ) -> Res<usize> {
        let guard = vm.memory.read();
        let memory = guard
            .as_ref()
            .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
        if let Some(req) = f(memory).map_err(|e| ctx.err(ErrorKind::Memory(e)))? {
            self.roots
                .invept_each_cpu(req.eptp, self.single_context_invept());
            memory.invept_done(&self.platform, req);
        }
        Ok(0)
    }

    fn vm_ioctl(
        &self,
        vm: &Arc<VmObject>,
        def: &'static IoctlDef,
        ctx: Ctx,
        input: &[u8],
        output: &mut [u8],
    ) -> Res<usize> {
        match *def {
            codes::HAX_VM_IOCTL_VCPU_CREATE | codes::HAX_VM_IOCTL_VCPU_CREATE_ORIG => {
                ctx.sizes(input, 4, output, 0)?;
                let id: u32 = ctx.read(input)?;
                self.create_vcpu(vm, id, ctx)?;
                Ok(0)
            }
            codes::HAX_VM_IOCTL_ALLOC_RAM => {
                ctx.sizes(input, AllocRamInfo::SIZE, output, 0)?;
                let info: AllocRamInfo = ctx.read(input)?;
                self.memory_change(vm, ctx, |m| m.alloc_ram(&info).map(|()| None))
            }
            codes::HAX_VM_IOCTL_ADD_RAMBLOCK => {
                ctx.sizes(input, RamblockInfo::SIZE, output, 0)?;
                let info: RamblockInfo = ctx.read(input)?;
                self.memory_change(vm, ctx, |m| m.add_ramblock(&info).map(|()| None))
            }
            codes::HAX_VM_IOCTL_SET_RAM => {
                ctx.sizes(input, SetRamInfo::SIZE, output, 0)?;
                let info: SetRamInfo = ctx.read(input)?;
                self.memory_change(vm, ctx, |m| m.set_ram(&info))
            }
            codes::HAX_VM_IOCTL_SET_RAM2 => {
                ctx.sizes(input, SetRamInfo2::SIZE, output, 0)?;
                let info: SetRamInfo2 = ctx.read(input)?;
                self.memory_change(vm, ctx, |m| m.set_ram2(&info))
            }
            codes::HAX_VM_IOCTL_PROTECT_RAM => {
                ctx.sizes(input, ProtectRamInfo::SIZE, output, 0)?;
                let info: ProtectRamInfo = ctx.read(input)?;
                self.memory_change(vm, ctx, |m| m.protect_ram(&info))
            }
            codes::HAX_VM_IOCTL_NOTIFY_QEMU_VERSION => {
                ctx.sizes(input, QemuVersion::SIZE, output, 0)?;
                // HAXM records "fast MMIO basic/extra" from it and never reads them again
                // (`haxm-abi.md` §2); kept for diagnostics. Never fails.
                let v: QemuVersion = ctx.read(input)?;
                vm.state.lock().qemu_version = Some(v);
                Ok(0)
            }
            codes::HAX_VM_IOCTL_VCPU_DESTROY => self.unimplemented_by_haxm(ctx),
            _ => Err(ctx.err(ErrorKind::UnknownIoctl {
                code: def.code(self.codes).unwrap_or(0),
            })),
        }
    }

    fn create_vcpu(&self, vm: &Arc<VmObject>, id: u32, ctx: Ctx) -> Res<()> {
        if id >= HAX_MAX_VCPUS {
            return Err(ctx.err(ErrorKind::VcpuIdOutOfRange { vcpu: id }));
        }
        let in_use = |st: &VmState| st.vcpus[id as usize].is_some();
        if in_use(&vm.state.lock()) {
            return Err(ctx.err(ErrorKind::VcpuIdInUse { vcpu: id }));
        }
        let controls = self
            .host
            .as_ref()
            .map_err(|_| ctx.err(ErrorKind::NotWorking))?;
        // Build outside the locks (allocation), then insert if the id is still free.
        let backend = HaxVcpu::new(&self.platform, controls, vm.id, id, vm.eptp)
            .map_err(|e| ctx.err(ErrorKind::Vcpu(e)))?;
        let (tunnel, io) = backend.tunnel_pages();
        let user_tunnel = match self.platform.map_user(tunnel) {
            Ok(va) => va,
            Err(e) => {
                let _ = backend.destroy(&self.platform);
                return Err(ctx.err(ErrorKind::Platform(e)));
            }
        };
        let user_io_buffer = match self.platform.map_user(io) {
            Ok(va) => va,
            Err(e) => {
                self.platform.unmap_user(user_tunnel, tunnel);
                let _ = backend.destroy(&self.platform);
                return Err(ctx.err(ErrorKind::Platform(e)));
            }
        };
        let obj = Arc::new(VcpuObject {
            id,
            running_on: AtomicU32::new(NOT_RUNNING),
            user_tunnel,
            user_io_buffer,
            backend: Mutex::new(Some(backend)),
        });
        let mut st = vm.state.lock();
        if in_use(&st) || st.closed {
            drop(st);
            let kind = ErrorKind::VcpuIdInUse { vcpu: id };
            self.destroy_vcpu(&obj);
            return Err(ctx.err(kind));
        }
        st.vcpus[id as usize] = Some(VcpuEntry { obj, handle: None });
        Ok(())
    }

    /// Runs `f` on the current CPU's VMX root with the vCPU's VMCS usable there: if the VMCS
    /// is active on another CPU it is VMCLEARed there first (SDM Vol. 3C §25.11.1), through
    /// [`CpuRoots::with_cpu`], outside the non-preemptible region. The vCPU lock is held by
    /// the caller.
    fn on_this_cpu<T>(
        &self,
        hax: &mut HaxVcpu,
        ctx: Ctx,
        mut f: impl FnMut(&mut HaxVcpu, &mut VmxRoot<R::Vmx>) -> Result<T, HaxError>,
    ) -> Res<T> {
        // A thread may be moved between the attempts; two moves in a row are unlikely, three
        // mean something is wrong.
        for _ in 0..3 {
            let r = self
                .roots
                .with_current(|root| {
                    match hax.core().resident_cpu() {
                        Some(cpu) if cpu != root.cpu() => return Err(OnCpu::Migrate(cpu)),
                        _ => {}
                    }
                    f(hax, root).map_err(OnCpu::Hax)
                })
                .map_err(|_| ctx.err(ErrorKind::NoVmxRoot))?;
            let cpu = match r {
                Ok(v) => return Ok(v),
                Err(OnCpu::Migrate(cpu))
                | Err(OnCpu::Hax(HaxError::Vmcs(RunError::ActiveElsewhere { cpu }))) => cpu,
                Err(OnCpu::Hax(e)) => return Err(ctx.err(ErrorKind::Vcpu(e))),
            };
            let core = hax.core();
            self.roots
                .with_cpu(cpu, |root| core.unload(root))
                .map_err(|_| ctx.err(ErrorKind::NoVmxRoot))?
                .map_err(|e| ctx.err(ErrorKind::Vcpu(HaxError::Vmcs(e))))?;
        }
        Err(
            ctx.err(ErrorKind::Vcpu(HaxError::Vmcs(RunError::ActiveElsewhere {
                cpu: self.platform.current_cpu(),
            }))),
        )
    }

    #[allow(clippy::too_many_lines)]
    fn vcpu_ioctl(
        &self,
        vm: &Arc<VmObject>,
        vcpu: &Arc<VcpuObject>,
        def: &'static IoctlDef,
        ctx: Ctx,
        input: &[u8],
        output: &mut [u8],
    ) -> Res<usize> {
        use rhax_api::ext::{VcpuStats, RHAX_VCPU_IOCTL_GET_STATS, RHAX_VCPU_IOCTL_RESET_STATS};
        use rhax_api::{CpuidEntry, FxLayout, VcpuDebug, VcpuState};
        // Requests that need no vCPU state come first: they must not wait for a RUN.
        match *def {
            codes::HAX_VCPU_IOCTL_KICKOFF => {
                // No lock: RUN holds the vCPU's. A vCPU not in the guest has nothing to leave;
                // one about to enter sees the user-event/kick state V's run loop checks.
                let cpu = vcpu.running_on.load(Ordering::Acquire);
                if cpu != NOT_RUNNING {
                    self.platform.kick(cpu as CpuIndex);
                }
                return Ok(0);
            }
            codes::HAX_VCPU_IOCTL_SETUP_TUNNEL => {
                ctx.sizes(input, 0, output, TunnelInfo::SIZE)?;
                // The mapping was made at VCPU_CREATE; a repeated call returns the same
                // pointers (`haxm-abi.md` §2).
                let info = TunnelInfo {
                    va: vcpu.user_tunnel,
                    io_va: vcpu.user_io_buffer,
                    size: HAX_TUNNEL_PAGE_SIZE,
                    pad: [0; 6],
                };
                return ctx.write(&info, output);
            }
            codes::HAX_VCPU_IOCTL_SET_CPUID => {
                // The table is the VM's (`haxm-abi.md` §2): replaced whole, so running vCPUs
                // keep the one they started with until their next RUN.
                let header = self.cpuid_header(input, ctx)?;
                let need = self.cpuid_bytes(header.total, ctx)?;
                ctx.sizes(input, need, output, 0)?;
                let entries: Vec<CpuidEntry> = input[core::mem::size_of::<CpuidHeader>()..need]
                    .chunks_exact(CpuidEntry::SIZE)
                    .filter_map(CpuidEntry::from_bytes)
                    .collect();
                let mut slot = vm.cpuid.lock();
                let mut table = CpuidTable::clone(&slot);
                HaxVcpu::set_cpuid(&mut table, &entries)
                    .map_err(|e| ctx.err(ErrorKind::Vcpu(e)))?;
                *slot = Arc::new(table);
                return Ok(0);
            }
            codes::HAX_VCPU_IOCTL_GET_CPUID => {
                let header = self.cpuid_header(input, ctx)?;
                let room = header.total.min(HAX_MAX_CPUID_ENTRIES as u32) as usize;
                let need = cpuid_size(room).unwrap_or(usize::MAX);
                ctx.sizes(input, 0, output, need)?;
                let table = vm.cpuid.lock().clone();
                let mut entries = [CpuidEntry::default(); HAX_MAX_CPUID_ENTRIES];
                let (total, copied) = table.get(&mut entries[..room]);
                let out_header = CpuidHeader {
                    total,
                    pad: 0,
                    entries: [],
                };
                let mut n = ctx.write(&out_header, output)?;
                if !copied {
                    // HAXM: `total` too small → the header with the table's size; POSIX
                    // -ENOMEM (the header is still copied back), Windows success with Info 8.
                    if ctx.windows() {
                        return Ok(n);
                    }
                    return Err(ctx.err(ErrorKind::CpuidTooSmall { total }));
                }
                for e in &entries[..total as usize] {
                    n += ctx.write(e, &mut output[n..])?;
                }
                return Ok(n);
            }
            _ => {}
        }
        // Validate sizes before waiting for the vCPU.
        let (need_in, need_out) = match *def {
            codes::HAX_VCPU_IOCTL_RUN | RHAX_VCPU_IOCTL_RESET_STATS => (0, 0),
            codes::HAX_VCPU_IOCTL_SET_MSRS | codes::HAX_VCPU_IOCTL_GET_MSRS => {
                (MsrData::SIZE, MsrData::SIZE)
            }
            codes::HAX_VCPU_IOCTL_SET_FPU => (FxLayout::SIZE, 0),
            codes::HAX_VCPU_IOCTL_GET_FPU => (0, FxLayout::SIZE),
            codes::HAX_VCPU_SET_REGS => (VcpuState::SIZE, 0),
            codes::HAX_VCPU_GET_REGS => (0, VcpuState::SIZE),
            codes::HAX_VCPU_IOCTL_INTERRUPT => (4, 0),
            codes::HAX_IOCTL_VCPU_DEBUG => (VcpuDebug::SIZE, 0),
            RHAX_VCPU_IOCTL_GET_STATS => (0, VcpuStats::SIZE),
            _ => {
                return Err(ctx.err(ErrorKind::UnknownIoctl {
                    code: def.code(self.codes).unwrap_or(0),
                }))
            }
        };
        ctx.sizes(input, need_in, output, need_out)?;
        let mut msrs = None;
        if need_in == MsrData::SIZE {
            let d: MsrData = ctx.read(input)?;
            // At most 31 per call (`haxm-abi.md` §8 quirk 4); checked before any work.
            if usize::from(d.nr_msr) >= HAX_MAX_MSR_ARRAY {
                return Err(ctx.err(ErrorKind::TooManyMsrs { nr_msr: d.nr_msr }));
            }
            msrs = Some(d);
        }
        // The vCPU lock, taken before any non-preemptible region (module documentation).
        let mut guard = vcpu.backend.lock();
        let hax = guard
            .as_mut()
            .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
        match *def {
            codes::HAX_VCPU_IOCTL_RUN => {
                let cpuid = vm.cpuid.lock().clone();
                let memory = vm.memory.read();
                let memory = memory
                    .as_ref()
                    .ok_or_else(|| ctx.err(ErrorKind::InvalidHandle))?;
                // SAFETY: `UserMapping::guest_page` satisfies `MappedGuestMemory::new`'s
                // contract (the unsafe trait's requirement).
                let mapped =
                    unsafe { MappedGuestMemory::new(memory, &self.platform, P::guest_page) };
                let running = &vcpu.running_on;
                // RUN in steps (vcpu::haxm module documentation): the guest runs inside the
                // non-preemptible region; an exit that needs guest memory (an EPT violation
                // may pin, every access takes the memory lock) ends the step, the work is
                // done here at passive level, and the next step continues. A thread moved
                // to another CPU in between finds its VMCS cleared there by `on_this_cpu`.
                let mut first = true;
                loop {
                    let step = self.on_this_cpu(hax, ctx, |hax, root| {
                        running.store(root.cpu(), Ordering::Release);
                        let r = if first {
                            hax.run(root, &cpuid, &self.platform)
                        } else {
                            hax.resume(root, &cpuid, &self.platform)
                        };
                        running.store(NOT_RUNNING, Ordering::Release);
                        r
                    })?;
                    first = false;
                    if step == RunStep::Done {
                        return Ok(0);
                    }
                    let after = hax
                        .complete_memory(&mapped)
                        .map_err(|e| ctx.err(ErrorKind::Vcpu(e)))?;
                    if after == AfterMemory::Done {
                        return Ok(0);
                    }
                }
            }
            codes::HAX_VCPU_IOCTL_SET_MSRS | codes::HAX_VCPU_IOCTL_GET_MSRS => {
                let set = *def == codes::HAX_VCPU_IOCTL_SET_MSRS;
                let mut d = msrs.unwrap_or_default();
                self.on_this_cpu(hax, ctx, |hax, root| {
                    if set {
                        hax.set_msrs(root, &mut d)
                    } else {
                        hax.get_msrs(root, &mut d)
                    }
                })?;
                ctx.write(&d, output)
            }
            codes::HAX_VCPU_IOCTL_SET_FPU => {
                let f: FxLayout = ctx.read(input)?;
                let host = self
                    .roots
                    .with_current(|root| root.host_state().mxcsr_mask)
                    .map_err(|_| ctx.err(ErrorKind::NoVmxRoot))?;
                hax.set_fpu(host, &f)
                    .map_err(|e| ctx.err(ErrorKind::Vcpu(e)))?;
                Ok(0)
            }
            codes::HAX_VCPU_IOCTL_GET_FPU => ctx.write(&hax.get_fpu(), output),
            codes::HAX_VCPU_SET_REGS => {
                let s: VcpuState = ctx.read(input)?;
                self.on_this_cpu(hax, ctx, |hax, root| hax.set_regs(root, &s))?;
                Ok(0)
            }
            codes::HAX_VCPU_GET_REGS => {
                let s = self.on_this_cpu(hax, ctx, |hax, root| hax.get_regs(root))?;
                ctx.write(&s, output)
            }
            codes::HAX_VCPU_IOCTL_INTERRUPT => {
                // Linux copies one byte, Windows and Darwin a u32; only bits 7:0 count.
                let v: u32 = ctx.read(input)?;
                hax.interrupt(v & 0xff);
                Ok(0)
            }
            codes::HAX_IOCTL_VCPU_DEBUG => {
                let d: VcpuDebug = ctx.read(input)?;
                self.on_this_cpu(hax, ctx, |hax, root| hax.debug(root, &d))?;
                Ok(0)
            }
            RHAX_VCPU_IOCTL_GET_STATS => match hax.write_stats(output) {
                0 => Err(ctx.err(ErrorKind::OutputSize {
                    expected: VcpuStats::SIZE,
                    got: output.len(),
                })),
                n => Ok(n),
            },
            RHAX_VCPU_IOCTL_RESET_STATS => {
                hax.reset_stats();
                Ok(0)
            }
            _ => Err(ctx.err(ErrorKind::UnknownIoctl {
                code: def.code(self.codes).unwrap_or(0),
            })),
        }
    }

    fn cpuid_header(&self, input: &[u8], ctx: Ctx) -> Res<CpuidHeader> {
        CpuidHeader::read_from_prefix(input).ok_or_else(|| {
            ctx.err(ErrorKind::InputSize {
                expected: core::mem::size_of::<CpuidHeader>(),
                got: input.len(),
            })
        })
    }

    /// SET_CPUID: `0 < total <= 64` (`haxm-abi.md` §2), then `8 + total * 40` bytes.
    fn cpuid_bytes(&self, total: u32, ctx: Ctx) -> Res<usize> {
        if total == 0 || total as usize > HAX_MAX_CPUID_ENTRIES {
            return Err(ctx.err(ErrorKind::CpuidTotal { total }));
        }
        Ok(cpuid_size(total as usize).unwrap_or(usize::MAX))
    }

    // ---------------------------------------------------------------- inspection

    /// Everything observable (object tables, handles, memory), for tests and diagnostics.
    pub fn snapshot(&self) -> HypervisorSnapshot {
        let table = self.table.lock();
        let vms = table
            .vms
            .iter()
            .flatten()
            .map(|vm| {
                let st = vm.state.lock();
                VmSnapshot {
                    id: vm.id,
                    open: st.handle.is_some(),
                    closed: st.closed,
                    qemu_version: st.qemu_version.map(|q| (q.cur_version, q.least_version)),
                    vcpus: st
                        .vcpus
                        .iter()
                        .flatten()
                        .map(|e| {
                            (
                                e.obj.id,
                                e.handle.is_some(),
                                e.obj.user_tunnel,
                                e.obj.user_io_buffer,
                            )
                        })
                        .collect(),
                    memory: vm.memory.read().as_ref().map(GuestMemory::snapshot),
                }
            })
            .collect();
        HypervisorSnapshot {
            mem_limit: table.mem_limit,
            system_handles: table.systems.len(),
            vms,
        }
    }
}

/// The default CPUID table of new VMs.
fn default_cpuid() -> CpuidTable {
    #[cfg(target_arch = "x86_64")]
    {
        CpuidTable::from_host()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        CpuidTable::new(|_, _| [0; 4])
    }
}

/// Why a lent root could not serve a vCPU operation.
enum OnCpu {
    /// The vCPU's VMCS is active on this other CPU: clear it there first.
    Migrate(CpuIndex),
    Hax(HaxError),
}

enum Target {
    System(u64),
    Vm(Arc<VmObject>),
    Vcpu(Arc<VmObject>, Arc<VcpuObject>),
}

impl<P: Platform + UserMapping, R: CpuRoots> Drop for Hypervisor<P, R> {
    /// Driver unload: everything still alive is torn down (vCPUs first).
    fn drop(&mut self) {
        let vms: Vec<Arc<VmObject>> = self
            .table
            .lock()
            .vms
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for vm in vms {
            let vcpus: Vec<Arc<VcpuObject>> = vm
                .state
                .lock()
                .vcpus
                .iter_mut()
                .filter_map(Option::take)
                .map(|e| e.obj)
                .collect();
            for v in vcpus {
                self.destroy_vcpu(&v);
            }
            self.destroy_vm(&vm);
        }
    }
}
