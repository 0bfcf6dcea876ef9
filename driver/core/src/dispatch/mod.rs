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
//! parked. Five spin locks, in a fixed order, none held across anything that blocks, faults or
//! runs the guest: the hierarchy, the rules and their debug-build check are in [`lockorder`]
//! (and ARCHITECTURE.md, "Lock hierarchy"). In short: table → VM state → VM CPUID → vCPU slot
//! → VM memory reference → (the memory module's own lock). A vCPU request takes the vCPU *out*
//! of its slot and works on it with no lock held; a second request for the same vCPU
//! meanwhile is refused ([`ErrorKind::VcpuInUse`]: HAXM requires every vCPU IOCTL from the
//! vCPU's own thread) rather than spinning for the length of a RUN.
//!
//! No global lock is held across RUN: two vCPUs of one VM run concurrently, and memory
//! changes proceed while they do. A change that removes a translation is followed by an
//! INVEPT on every CPU ([`CpuRoots::invept_each_cpu`]; the IPI also forces running vCPUs
//! out) before the memory module may free what it unlinked
//! ([`crate::memory::GuestMemory::invept_done`]). KICKOFF takes no lock at all: it reads the
//! CPU a vCPU runs on from an atomic.
//!
//! Objects are reference counted (`TryArc`, an `Arc` with a fallible constructor): a request clones the object it resolved and drops
//! the table locks; closing removes the object from the table first (so no new request can
//! find it); a vCPU lent to a request when it is closed is destroyed by that request when it
//! returns, and a VM's memory by whoever drops the last reference to it.
//!
//! # Files
//!
//! `table.rs` (the one IOCTL table: definition, device, sizes, handler), `objects.rs`
//! (handles, objects, open/close/destroy), `system.rs`, `vm.rs`, `vcpu.rs` (the handlers),
//! `lockorder.rs` (the lock hierarchy), `error.rs` (HAXM's statuses), `roots.rs` (what the
//! shell lends).
//!
//! # Kernel memory
//!
//! Every allocation a request makes is fallible (out of memory is `-ENOMEM` /
//! `STATUS_UNSUCCESSFUL`, except VCPU_CREATE's `-EINVAL`; nothing changed) and bounded
//! ([`crate::memory::limits`]); shared objects use `TryArc`, whose constructor reports a
//! failed allocation (stable Rust's `Arc` has none).

mod apic;
mod error;
mod live;
pub mod lockorder;
mod objects;
mod roots;
mod system;
mod table;
mod vcpu;
mod vm;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use rhax_api::ioctl::IoctlDef;
use rhax_api::{CapabilityFailure, CapabilityFeatures, Scope, HAX_MAX_VMS, HAX_MAX_VMS_NETBSD};

pub use error::{errno, nt, ApicRefusal, DispatchError, ErrorKind};
pub use live::LiveObjects;
pub use objects::Handle;
#[cfg(any(test, feature = "soft"))]
pub use roots::{soft_hypervisor, NoCpuRoots, NoHooks, PinHooks, PinningPlatform, SoftCpuRoots};
pub use roots::{CpuRoots, RootUnavailable, UserMapping};

use crate::memory::limits::RamQuota;
use crate::memory::MemorySnapshot;
use crate::platform::Platform;
use crate::vcpu::cpuid::CpuidTable;
use crate::vmx::negotiate::VmxControls;
use lockorder::{Level, LockTracker, Ordered};
use objects::{Table, Target};
use table::{Call, Ctx, Handler};

/// The host encoding of IOCTL codes a hypervisor serves.
pub type Codes = rhax_api::Platform;

/// `HAX_MEMQUOTA` default: HAXM reports 2^48 bytes until SET_MEMLIMIT (`haxm-abi.md` §5).
pub const DEFAULT_MEM_QUOTA: u64 = 1 << 48;

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
    table: Ordered<Table>,
    cpuid_template: CpuidTable,
    /// SET_MEMLIMIT's quota, charged by every VM's RAM blocks.
    quota: Arc<RamQuota>,
}

type Res<T> = Result<T, DispatchError>;

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
            table: Ordered::new(
                Level::Table,
                Table {
                    vms: (0..max_vms).map(|_| None).collect(),
                    systems: Vec::new(),
                    mem_limit: Some(DEFAULT_MEM_QUOTA),
                },
            ),
            cpuid_template: default_cpuid(),
            quota: Arc::new(RamQuota::new(DEFAULT_MEM_QUOTA)),
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

    /// SET_MEMLIMIT's quota: its limit and the bytes of RAM blocks all VMs registered.
    pub fn ram_quota(&self) -> &RamQuota {
        &self.quota
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
    /// 7.8.0's, DEBUG included (VCPU_DEBUG: hardware and software breakpoints, single step;
    /// `vcpu/haxm/debug.rs`).
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
                | CapabilityFeatures::DEBUG
        })
    }

    /// Serves one IOCTL (see the module documentation): the handle first (a request on a
    /// closed or stale handle never reaches an object), then the code among the handle's
    /// device's definitions, then the row of the table (`table.rs`), its sizes, its handler.
    pub fn dispatch(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Res<usize> {
        let scope = handle.scope();
        let ctx = self.ctx(None, Some(scope));
        let target = self.resolve(handle, ctx)?;
        let unknown = || ctx.err(ErrorKind::UnknownIoctl { code });
        let entry = match Self::run_row(self.codes, scope, code) {
            Some(e) => e,
            None => Self::row(self.codes, scope, code).ok_or_else(unknown)?,
        };
        let ctx = self.ctx(Some(entry.def), Some(scope));
        entry.check_sizes(&ctx, input, output)?;
        let call = Call { ctx, input, output };
        match (entry.handler, &target) {
            (Handler::System(f), Target::System(serial)) => f(self, *serial, call),
            (Handler::Vm(f), Target::Vm(vm)) => f(self, vm, call),
            (Handler::Vcpu(f), Target::Vcpu(vm, vcpu)) => f(self, vm, vcpu, call),
            // The row was found for the handle's scope, so its kind matches the target.
            _ => Err(unknown()),
        }
    }

    /// Everything observable (object tables, handles, memory), for tests and diagnostics.
    pub fn snapshot(&self) -> HypervisorSnapshot {
        let t = LockTracker::new();
        let table = self.table.lock(&t);
        let vms = table
            .vms
            .iter()
            .flatten()
            .map(|vm| {
                let st = vm.state.lock(&t);
                let memory = vm.memory.lock(&t).clone();
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
                    memory: memory.as_deref().map(crate::memory::GuestMemory::snapshot),
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

/// The default CPUID table of new VMs. Inlined into `Hypervisor::new` (the load path): the
/// table is built once, in place, not in a 2.6 KiB frame of its own.
#[inline(always)]
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
