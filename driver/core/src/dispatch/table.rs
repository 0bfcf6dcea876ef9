//! The one IOCTL table: for every IOCTL rhax serves, its definition (codes per host, from
//! `rhax-api`), the device it belongs to (the handler's kind), the buffer sizes HAXM checks,
//! and the handler. [`super::Hypervisor::dispatch`] resolves the handle, looks the code up in
//! `rhax-api`'s definitions for the handle's device, finds the entry, checks the sizes and
//! calls the handler: no other list of IOCTLs exists in the dispatcher.

use crate::memory::try_arc::TryArc;

use rhax_api::apic::RhaxApicState;
use rhax_api::ext::{
    ApicConfig, EmulationControl, RhaxExtInfo, RhaxLint, RhaxMsi, RhaxXsave, StatsControl,
    VcpuFieldStats, VcpuStats, RHAX_IOCTL_EXT_INFO, RHAX_IOCTL_VCPU_FIELD_STATS,
    RHAX_IOCTL_VCPU_STATS, RHAX_VCPU_IOCTL_APIC_LINT, RHAX_VCPU_IOCTL_GET_APIC_STATE,
    RHAX_VCPU_IOCTL_GET_STATS, RHAX_VCPU_IOCTL_GET_XSAVE, RHAX_VCPU_IOCTL_RESET_STATS,
    RHAX_VCPU_IOCTL_SET_APIC_STATE, RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL,
    RHAX_VCPU_IOCTL_SET_STATS_CONTROL, RHAX_VCPU_IOCTL_SET_XSAVE, RHAX_VM_IOCTL_ENABLE_APIC,
    RHAX_VM_IOCTL_SIGNAL_MSI,
};
use rhax_api::ioctl::{self as codes, IoctlDef};
use rhax_api::{
    AllocRamInfo, CapabilityInfo, FxLayout, ModuleVersion, MsrData, Pod, ProtectRamInfo,
    QemuVersion, RamblockInfo, Scope, SetMemlimit, SetRamInfo, SetRamInfo2, TunnelInfo, VcpuDebug,
    VcpuState,
};

use super::objects::{VcpuObject, VmObject};
use super::{Codes, CpuRoots, DispatchError, ErrorKind, Hypervisor, Res, UserMapping};
use crate::platform::Platform;

/// The request being served, for error context and HAXM's per-host buffer rules.
#[derive(Clone, Copy)]
pub(super) struct Ctx {
    pub(super) def: Option<&'static IoctlDef>,
    pub(super) scope: Option<Scope>,
    pub(super) codes: Codes,
}

impl Ctx {
    pub(super) fn err(&self, kind: ErrorKind) -> DispatchError {
        DispatchError::new(kind, self.def, self.scope, self.codes)
    }

    pub(super) fn windows(&self) -> bool {
        self.codes == Codes::Windows
    }

    /// HAXM's buffer checks: Windows needs at least `input`/`output` bytes
    /// (`METHOD_BUFFERED` lengths); POSIX kernels copy exactly the size the code encodes, so
    /// anything else is refused. A need of 0 means the buffer is not used.
    pub(super) fn sizes(
        &self,
        input: &[u8],
        need_in: usize,
        output: &[u8],
        need_out: usize,
    ) -> Res<()> {
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

    pub(super) fn read<T: Pod>(&self, input: &[u8]) -> Res<T> {
        T::read_from_prefix(input).ok_or_else(|| {
            self.err(ErrorKind::InputSize {
                expected: T::SIZE,
                got: input.len(),
            })
        })
    }

    pub(super) fn write<T: Pod>(&self, value: &T, output: &mut [u8]) -> Res<usize> {
        let got = output.len();
        value.write_to_prefix(output).ok_or_else(|| {
            self.err(ErrorKind::OutputSize {
                expected: T::SIZE,
                got,
            })
        })
    }
}

/// One IOCTL's buffers, as the handler sees them.
pub(super) struct Call<'a> {
    pub(super) ctx: Ctx,
    pub(super) input: &'a [u8],
    pub(super) output: &'a mut [u8],
}

/// A buffer size HAXM checks before the handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Need {
    /// Not used (not checked).
    None,
    /// Exactly this many bytes (POSIX), at least (Windows).
    Bytes(usize),
    /// Computed from the request by the handler (SET_CPUID's input, GET_CPUID's output).
    Computed,
}

impl Need {
    fn bytes(self) -> usize {
        match self {
            Need::Bytes(n) => n,
            Need::None | Need::Computed => 0,
        }
    }
}

/// A system-device handler: the system handle's serial.
pub(super) type SystemFn<P, R> = fn(&Hypervisor<P, R>, u64, Call<'_>) -> Res<usize>;
/// A VM-device handler.
pub(super) type VmFn<P, R> = fn(&Hypervisor<P, R>, &TryArc<VmObject>, Call<'_>) -> Res<usize>;
/// A vCPU-device handler.
pub(super) type VcpuFn<P, R> =
    fn(&Hypervisor<P, R>, &TryArc<VmObject>, &TryArc<VcpuObject>, Call<'_>) -> Res<usize>;

/// The handler, by device: its kind is the device scope the IOCTL is served on.
pub(super) enum Handler<P: Platform + UserMapping, R: CpuRoots> {
    System(SystemFn<P, R>),
    Vm(VmFn<P, R>),
    Vcpu(VcpuFn<P, R>),
}

impl<P: Platform + UserMapping, R: CpuRoots> Clone for Handler<P, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Platform + UserMapping, R: CpuRoots> Copy for Handler<P, R> {}

/// One row of the table.
pub(super) struct Entry<P: Platform + UserMapping, R: CpuRoots> {
    pub(super) def: &'static IoctlDef,
    pub(super) input: Need,
    pub(super) output: Need,
    pub(super) handler: Handler<P, R>,
}

impl<P: Platform + UserMapping, R: CpuRoots> Clone for Entry<P, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Platform + UserMapping, R: CpuRoots> Copy for Entry<P, R> {}

impl<P: Platform + UserMapping, R: CpuRoots> Entry<P, R> {
    /// The device the IOCTL is served on.
    pub(super) fn scope(&self) -> Scope {
        match self.handler {
            Handler::System(_) => Scope::System,
            Handler::Vm(_) => Scope::Vm,
            Handler::Vcpu(_) => Scope::Vcpu,
        }
    }

    /// The sizes checked before the handler runs (before any lock or vCPU is taken).
    pub(super) fn check_sizes(&self, ctx: &Ctx, input: &[u8], output: &[u8]) -> Res<()> {
        ctx.sizes(input, self.input.bytes(), output, self.output.bytes())
    }
}

const fn e<P: Platform + UserMapping, R: CpuRoots>(
    def: &'static IoctlDef,
    input: Need,
    output: Need,
    handler: Handler<P, R>,
) -> Entry<P, R> {
    Entry {
        def,
        input,
        output,
        handler,
    }
}

use Need::{Bytes, Computed, None as Unused};

/// Number of rows.
pub(super) const IOCTL_COUNT: usize = 41;

impl<P: Platform + UserMapping, R: CpuRoots> Hypervisor<P, R> {
    /// Every IOCTL served. Sizes are HAXM 7.8.0's (`haxm-abi.md` §2 "Per-IOCTL semantics");
    /// DESTROY_VM and VCPU_DESTROY (never implemented by HAXM) and KICKOFF check none.
    #[rustfmt::skip]
    pub(super) const IOCTLS: [Entry<P, R>; IOCTL_COUNT] = [
        // ---- system device (system.rs)
        e(&codes::HAX_IOCTL_VERSION, Unused, Bytes(ModuleVersion::SIZE), Handler::System(Self::version)),
        e(&codes::HAX_IOCTL_CAPABILITY, Unused, Bytes(CapabilityInfo::SIZE), Handler::System(Self::capability)),
        e(&codes::HAX_IOCTL_SET_MEMLIMIT, Bytes(SetMemlimit::SIZE), Unused, Handler::System(Self::set_memlimit)),
        e(&codes::HAX_IOCTL_CREATE_VM, Unused, Bytes(4), Handler::System(Self::create_vm_ioctl)),
        e(&codes::HAX_IOCTL_DESTROY_VM, Unused, Unused, Handler::System(Self::destroy_vm_ioctl)),
        e(&RHAX_IOCTL_EXT_INFO, Unused, Bytes(RhaxExtInfo::SIZE), Handler::System(Self::ext_info)),
        // The request is the buffer's first 24 bytes (POSIX: one 3312-byte buffer both ways).
        e(&RHAX_IOCTL_VCPU_STATS, Computed, Bytes(VcpuStats::SIZE), Handler::System(Self::vcpu_stats)),
        e(&RHAX_IOCTL_VCPU_FIELD_STATS, Computed, Bytes(VcpuFieldStats::SIZE), Handler::System(Self::vcpu_field_stats)),
        // ---- VM device (vm.rs)
        e(&codes::HAX_VM_IOCTL_VCPU_CREATE, Bytes(4), Unused, Handler::Vm(Self::vcpu_create)),
        e(&codes::HAX_VM_IOCTL_VCPU_CREATE_ORIG, Bytes(4), Unused, Handler::Vm(Self::vcpu_create)),
        e(&codes::HAX_VM_IOCTL_ALLOC_RAM, Bytes(AllocRamInfo::SIZE), Unused, Handler::Vm(Self::alloc_ram)),
        e(&codes::HAX_VM_IOCTL_ADD_RAMBLOCK, Bytes(RamblockInfo::SIZE), Unused, Handler::Vm(Self::add_ramblock)),
        e(&codes::HAX_VM_IOCTL_SET_RAM, Bytes(SetRamInfo::SIZE), Unused, Handler::Vm(Self::set_ram)),
        e(&codes::HAX_VM_IOCTL_SET_RAM2, Bytes(SetRamInfo2::SIZE), Unused, Handler::Vm(Self::set_ram2)),
        e(&codes::HAX_VM_IOCTL_PROTECT_RAM, Bytes(ProtectRamInfo::SIZE), Unused, Handler::Vm(Self::protect_ram)),
        e(&codes::HAX_VM_IOCTL_NOTIFY_QEMU_VERSION, Bytes(QemuVersion::SIZE), Unused, Handler::Vm(Self::notify_qemu_version)),
        e(&codes::HAX_VM_IOCTL_VCPU_DESTROY, Unused, Unused, Handler::Vm(Self::vcpu_destroy_ioctl)),
        e(&RHAX_VM_IOCTL_ENABLE_APIC, Bytes(ApicConfig::SIZE), Unused, Handler::Vm(Self::enable_apic)),
        e(&RHAX_VM_IOCTL_SIGNAL_MSI, Bytes(RhaxMsi::SIZE), Unused, Handler::Vm(Self::signal_msi)),
        // ---- vCPU device (vcpu.rs)
        e(&codes::HAX_VCPU_IOCTL_KICKOFF, Unused, Unused, Handler::Vcpu(Self::kickoff)),
        e(&codes::HAX_VCPU_IOCTL_SETUP_TUNNEL, Unused, Bytes(TunnelInfo::SIZE), Handler::Vcpu(Self::setup_tunnel)),
        e(&codes::HAX_VCPU_IOCTL_SET_CPUID, Computed, Unused, Handler::Vcpu(Self::set_cpuid)),
        e(&codes::HAX_VCPU_IOCTL_GET_CPUID, Unused, Computed, Handler::Vcpu(Self::get_cpuid)),
        e(&codes::HAX_VCPU_IOCTL_RUN, Unused, Unused, Handler::Vcpu(Self::run)),
        e(&codes::HAX_VCPU_IOCTL_SET_MSRS, Bytes(MsrData::SIZE), Bytes(MsrData::SIZE), Handler::Vcpu(Self::set_msrs)),
        e(&codes::HAX_VCPU_IOCTL_GET_MSRS, Bytes(MsrData::SIZE), Bytes(MsrData::SIZE), Handler::Vcpu(Self::get_msrs)),
        e(&codes::HAX_VCPU_IOCTL_SET_FPU, Bytes(FxLayout::SIZE), Unused, Handler::Vcpu(Self::set_fpu)),
        e(&codes::HAX_VCPU_IOCTL_GET_FPU, Unused, Bytes(FxLayout::SIZE), Handler::Vcpu(Self::get_fpu)),
        e(&codes::HAX_VCPU_SET_REGS, Bytes(VcpuState::SIZE), Unused, Handler::Vcpu(Self::set_regs)),
        e(&codes::HAX_VCPU_GET_REGS, Unused, Bytes(VcpuState::SIZE), Handler::Vcpu(Self::get_regs)),
        e(&codes::HAX_VCPU_IOCTL_INTERRUPT, Bytes(4), Unused, Handler::Vcpu(Self::interrupt)),
        e(&codes::HAX_IOCTL_VCPU_DEBUG, Bytes(VcpuDebug::SIZE), Unused, Handler::Vcpu(Self::vcpu_debug)),
        e(&RHAX_VCPU_IOCTL_GET_STATS, Unused, Bytes(VcpuStats::SIZE), Handler::Vcpu(Self::get_stats)),
        e(&RHAX_VCPU_IOCTL_RESET_STATS, Unused, Unused, Handler::Vcpu(Self::reset_stats)),
        e(&RHAX_VCPU_IOCTL_GET_XSAVE, Unused, Bytes(RhaxXsave::SIZE), Handler::Vcpu(Self::get_xsave)),
        e(&RHAX_VCPU_IOCTL_SET_XSAVE, Bytes(RhaxXsave::SIZE), Unused, Handler::Vcpu(Self::set_xsave)),
        e(&RHAX_VCPU_IOCTL_SET_STATS_CONTROL, Bytes(StatsControl::SIZE), Unused, Handler::Vcpu(Self::set_stats_control)),
        e(&RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL, Bytes(EmulationControl::SIZE), Unused, Handler::Vcpu(Self::set_emulation_control)),
        e(&RHAX_VCPU_IOCTL_APIC_LINT, Bytes(RhaxLint::SIZE), Unused, Handler::Vcpu(Self::apic_lint)),
        e(&RHAX_VCPU_IOCTL_GET_APIC_STATE, Unused, Bytes(RhaxApicState::SIZE), Handler::Vcpu(Self::get_apic_state)),
        e(&RHAX_VCPU_IOCTL_SET_APIC_STATE, Bytes(RhaxApicState::SIZE), Unused, Handler::Vcpu(Self::set_apic_state)),
    ];

    /// Each row's code in `platform`'s encoding (`u32::MAX` where it has none: no IOCTL code
    /// is all ones), computed at compile time.
    const fn row_codes(platform: Codes) -> [u32; IOCTL_COUNT] {
        let mut out = [u32::MAX; IOCTL_COUNT];
        let mut i = 0;
        while i < IOCTL_COUNT {
            if let Some(c) = Self::IOCTLS[i].def.code(platform) {
                out[i] = c;
            }
            i += 1;
        }
        out
    }

    const LINUX_CODES: [u32; IOCTL_COUNT] = Self::row_codes(Codes::Linux);
    const WINDOWS_CODES: [u32; IOCTL_COUNT] = Self::row_codes(Codes::Windows);

    /// RUN's row: the one IOCTL of the hot path (every guest exit served by user space), so
    /// the lookup tries it before the scan. Found at compile time (a table without RUN does
    /// not build).
    const RUN_ROW: usize = {
        // A (device, Windows function) pair names one definition; RUN has both.
        let run = codes::HAX_VCPU_IOCTL_RUN.windows_function;
        let mut i = 0;
        loop {
            let def = Self::IOCTLS[i].def;
            if let (Some(a), Some(b), Scope::Vcpu) = (def.windows_function, run, def.scope) {
                if a == b {
                    break i;
                }
            }
            i += 1;
        }
    };

    /// The row serving `code` on a device of `scope`, by the precomputed codes of the
    /// hypervisor's encoding (a scan of 30 integers instead of working out every row's
    /// encoding and comparing definitions); the other encodings take [`IoctlDef::lookup`].
    #[inline(never)]
    pub(super) fn row(codes: Codes, scope: Scope, code: u32) -> Option<Entry<P, R>> {
        let table = match codes {
            Codes::Linux => &Self::LINUX_CODES,
            Codes::Windows => &Self::WINDOWS_CODES,
            _ => return Self::entry(IoctlDef::lookup(codes, scope, code)?, scope),
        };
        let mut i = 0;
        while i < IOCTL_COUNT {
            if table[i] == code {
                let e = Self::IOCTLS[i];
                if e.scope() == scope {
                    return Some(e);
                }
            }
            i += 1;
        }
        None
    }

    /// RUN's row if `code` is RUN's on the vCPU device, tried inline before [`Self::row`]'s
    /// scan: RUN is the hot IOCTL (every exit served by user space). The code and the row are
    /// constants here, so this is one compare, in the caller's frame without the table.
    /// RUN's code on another device is not RUN there: it falls through to the scan, which
    /// refuses it.
    #[inline(always)]
    pub(super) fn run_row(codes: Codes, scope: Scope, code: u32) -> Option<Entry<P, R>> {
        let run = match codes {
            Codes::Windows => Self::WINDOWS_CODES[Self::RUN_ROW],
            Codes::Linux => Self::LINUX_CODES[Self::RUN_ROW],
            _ => return None,
        };
        (code == run && scope == Scope::Vcpu).then_some(Self::IOCTLS[Self::RUN_ROW])
    }

    /// The row serving `def` on a device of `scope`. Out of line: the table is a generic
    /// constant, materialised only in this frame, not in the caller's (RUN's) stack frame.
    #[inline(never)]
    pub(super) fn entry(def: &'static IoctlDef, scope: Scope) -> Option<Entry<P, R>> {
        Self::IOCTLS
            .iter()
            .find(|e| e.scope() == scope && (core::ptr::eq(e.def, def) || *e.def == *def))
            .copied()
    }

    /// The definitions in the table, with their device, for tests of its completeness.
    pub fn served_ioctls() -> impl Iterator<Item = (&'static IoctlDef, Scope)> {
        Self::IOCTLS.into_iter().map(|e| (e.def, e.scope()))
    }
}
