//! [`DispatchError`]: why an IOCTL or a handle operation failed, and the status HAXM 7.8.0
//! reports for it on each host (`haxm-abi.md` §2 "Per-IOCTL semantics and errors").
//!
//! The error keeps the precise cause ([`ErrorKind`]) plus the context HAXM's answer depends on
//! (which IOCTL, which device, which host encoding), so the shell's edge converts it with one
//! call: [`DispatchError::nt_status`] on Windows, [`DispatchError::errno`] (or
//! [`DispatchError::posix_return`]) on Linux, macOS and NetBSD.
//!
//! # HAXM's mapping, as implemented
//!
//! | cause | Windows NTSTATUS | POSIX errno |
//! |---|---|---|
//! | handle closed, stale, or its object being destroyed | `STATUS_INVALID_HANDLE` | `ENODEV` |
//! | code unknown on this device (system) | `STATUS_INVALID_DEVICE_REQUEST` | `ENOSYS` |
//! | code unknown on this device (VM, vCPU) | `STATUS_INVALID_PARAMETER` | `ENOSYS` |
//! | DESTROY_VM / VCPU_DESTROY (never implemented by HAXM) | as unknown | Linux: success (0), BSD: `ENOSYS` |
//! | buffer too small (Windows) / not the encoded size (POSIX) | `STATUS_INVALID_PARAMETER` (CREATE_VM: `STATUS_BUFFER_TOO_SMALL`) | `EINVAL` |
//! | second open of a VM or vCPU (exclusive devices) | `STATUS_ACCESS_DENIED` | `EBUSY` |
//! | a vCPU IOCTL while another request works on that vCPU (rhax only: HAXM races) | `STATUS_DEVICE_BUSY` | `EBUSY` |
//! | open of a VM or vCPU id that does not exist | `STATUS_OBJECT_NAME_NOT_FOUND` | `ENOENT` |
//! | SET_MEMLIMIT while a VM exists, or a limit overflowing 64 bits | `STATUS_UNSUCCESSFUL` | `EINVAL` |
//! | CREATE_VM: VT-x not working, no free id, no memory | `STATUS_UNSUCCESSFUL` | `ENOMEM` |
//! | VCPU_CREATE: id ≥ 16, id in use, allocation | `STATUS_UNSUCCESSFUL` | `EINVAL` |
//! | ALLOC_RAM / ADD_RAMBLOCK refused (`reserved` ≠ 0: `STATUS_INVALID_PARAMETER`), past the SET_MEMLIMIT quota | `STATUS_UNSUCCESSFUL` | `EINVAL` (no memory, per-VM bound: `ENOMEM`) |
//! | SET_RAM / SET_RAM2 / PROTECT_RAM refused (a STANDALONE block past the quota too) | `STATUS_INVALID_PARAMETER` | `EINVAL` |
//! | SET_RAM / SET_RAM2 / PROTECT_RAM: no kernel memory, or a per-VM bound (`memory::limits`) | `STATUS_UNSUCCESSFUL` | `ENOMEM` |
//! | an object header could not be allocated (open, CREATE_VM, VCPU_CREATE) | `STATUS_UNSUCCESSFUL` | `ENOMEM` (VCPU_CREATE: `EINVAL`) |
//! | SET/GET_MSRS with `nr_msr` ≥ 32 | `STATUS_INVALID_PARAMETER` | `EFAULT` |
//! | SET_CPUID `total` 0 / > 64 | `STATUS_UNSUCCESSFUL` | `EINVAL` / `E2BIG` |
//! | no VMX root on this CPU, VMX instruction failure | `STATUS_UNSUCCESSFUL` | `ENXIO` / `EFAULT` |
//! | GET_CPUID `total` below the table's 18+ leaves (header written) | success, 8 bytes | `ENOMEM` |
//! | RUN: VM entry failed (guest state, controls) | `STATUS_UNSUCCESSFUL` | `EINVAL` |
//! | RUN: MMIO completion failed in the emulator | `STATUS_UNSUCCESSFUL` | handler returns **+1** ([`DispatchError::posix_return`]) |
//! | SET/GET_REGS, MSRS, DEBUG: VMCS not loadable | `STATUS_UNSUCCESSFUL` | `EFAULT` |
//! | VCPU_DEBUG: unknown control bits, a non-canonical DR0-3 or an unusable DR7 (rhax only: HAXM takes anything) | `STATUS_INVALID_PARAMETER` | `EINVAL` |
//! | not available on this CPU (VCPU_DEBUG hardware breakpoints without "load debug controls") | `STATUS_NOT_IMPLEMENTED` | `ENOSYS` |
//!
//! **Linux quirk not reproduced:** HAXM's Linux VM and system handlers return 0 for an unknown
//! code (`haxm-abi.md` §8, quirk 12). rhax answers `ENOSYS` there, like HAXM on macOS: no known
//! client relies on an unknown IOCTL succeeding (QEMU, Android, crosvm only send known codes),
//! while a silent 0 would make a probe of a missing feature look successful and would hide
//! client bugs. The two IOCTLs HAXM's headers define but never implemented (DESTROY_VM,
//! VCPU_DESTROY) keep Linux's 0, since a client compiled against those headers may issue them
//! and check the result (see [`crate::dispatch`]).

use core::fmt;

use rhax_api::ioctl::{self, IoctlDef};
use rhax_api::{Platform as Codes, Scope};

use crate::memory::MemoryError;
use crate::platform::PlatformError;
use crate::vcpu::cpuid::CpuidError;
use crate::vcpu::haxm::HaxError;

/// NTSTATUS values a Windows shell completes an IRP with (`ntstatus.h`).
pub mod nt {
    /// `STATUS_SUCCESS`.
    pub const STATUS_SUCCESS: u32 = 0;
    /// `STATUS_UNSUCCESSFUL` (Win32 `ERROR_GEN_FAILURE`, 31).
    pub const STATUS_UNSUCCESSFUL: u32 = 0xC000_0001;
    /// `STATUS_NOT_IMPLEMENTED` (Win32 `ERROR_INVALID_FUNCTION`, 1).
    pub const STATUS_NOT_IMPLEMENTED: u32 = 0xC000_0002;
    /// `STATUS_INVALID_HANDLE` (Win32 6).
    pub const STATUS_INVALID_HANDLE: u32 = 0xC000_0008;
    /// `STATUS_INVALID_PARAMETER` (Win32 87).
    pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;
    /// `STATUS_INVALID_DEVICE_REQUEST` (Win32 1).
    pub const STATUS_INVALID_DEVICE_REQUEST: u32 = 0xC000_0010;
    /// `STATUS_ACCESS_DENIED` (Win32 5): the I/O manager's answer to a second open of an
    /// exclusive device.
    pub const STATUS_ACCESS_DENIED: u32 = 0xC000_0022;
    /// `STATUS_BUFFER_TOO_SMALL` (Win32 122).
    pub const STATUS_BUFFER_TOO_SMALL: u32 = 0xC000_0023;
    /// `STATUS_DEVICE_BUSY` (Win32 170, `ERROR_BUSY`): a warning-severity status, so
    /// `NT_SUCCESS` is false and the request fails.
    pub const STATUS_DEVICE_BUSY: u32 = 0x8000_0011;
    /// `STATUS_OBJECT_NAME_NOT_FOUND` (Win32 2): no device with that name.
    pub const STATUS_OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
    /// `STATUS_OBJECT_NAME_COLLISION` (Win32 183, `ERROR_ALREADY_EXISTS`).
    pub const STATUS_OBJECT_NAME_COLLISION: u32 = 0xC000_0035;
    /// `STATUS_INVALID_DEVICE_STATE` (Win32 5023).
    pub const STATUS_INVALID_DEVICE_STATE: u32 = 0xC000_0184;
}

/// POSIX error numbers that differ between Linux and the BSDs (Darwin, NetBSD) are resolved
/// per host; the others are the same everywhere.
pub mod errno {
    /// `ENOENT`.
    pub const ENOENT: i32 = 2;
    /// `E2BIG`.
    pub const E2BIG: i32 = 7;
    /// `ENXIO`.
    pub const ENXIO: i32 = 6;
    /// `ENOMEM`.
    pub const ENOMEM: i32 = 12;
    /// `EFAULT`.
    pub const EFAULT: i32 = 14;
    /// `EBUSY`.
    pub const EBUSY: i32 = 16;
    /// `ENODEV`.
    pub const ENODEV: i32 = 19;
    /// `EINVAL`.
    pub const EINVAL: i32 = 22;
    /// `EEXIST`.
    pub const EEXIST: i32 = 17;
    /// `ENOSYS` on Linux.
    pub const ENOSYS_LINUX: i32 = 38;
    /// `ENOSYS` on Darwin and NetBSD.
    pub const ENOSYS_BSD: i32 = 78;
}

/// The precise cause of a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The code means nothing on this device for this host encoding (including a code of
    /// another device: HAXM dispatches per device, `haxm-abi.md` §1).
    UnknownIoctl {
        /// The code received.
        code: u32,
    },
    /// DESTROY_VM or VCPU_DESTROY: defined by HAXM's headers, never implemented; objects die
    /// when their handle is closed.
    UnimplementedByHaxm,
    /// The input buffer is shorter than the IOCTL needs (Windows) or not exactly the size
    /// the code encodes (POSIX).
    InputSize {
        /// Bytes needed.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The output buffer is too short (Windows) or not exactly the encoded size (POSIX).
    OutputSize {
        /// Bytes needed.
        expected: usize,
        /// Bytes available.
        got: usize,
    },
    /// The handle was closed, never existed, or names an object that is gone.
    InvalidHandle,
    /// The VM's handle was closed: it only lives on for its vCPUs and cannot be reopened,
    /// nor can vCPUs be added or opened (HAXM: "being destroyed").
    VmClosing,
    /// VM and vCPU devices are exclusive: the object already has an open handle.
    Busy,
    /// No VM with this id.
    NoSuchVm {
        /// The id asked for.
        vm: u32,
    },
    /// No vCPU with this id in the VM.
    NoSuchVcpu {
        /// The id asked for.
        vcpu: u32,
    },
    /// SET_MEMLIMIT while a VM exists.
    VmsExist,
    /// SET_MEMLIMIT with a limit in MB that overflows 64 bits in bytes.
    MemLimitOverflow {
        /// The limit received, in MB.
        megabytes: u64,
    },
    /// VT-x is not usable on this host (CAPABILITY reports why).
    NotWorking,
    /// Every VM id is in use.
    NoFreeVmId,
    /// vCPU id above HAXM's limit (0..16).
    VcpuIdOutOfRange {
        /// The id received.
        vcpu: u32,
    },
    /// The vCPU id is already taken in this VM.
    VcpuIdInUse {
        /// The id received.
        vcpu: u32,
    },
    /// A guest-memory request was refused or failed.
    Memory(MemoryError),
    /// A platform service failed (allocation, mapping into the caller).
    Platform(PlatformError),
    /// `nr_msr` is 32 or more (at most 31 MSRs per call, `haxm-abi.md` §8 quirk 4).
    TooManyMsrs {
        /// The count received.
        nr_msr: u16,
    },
    /// SET_CPUID `total` is 0 or above 64.
    CpuidTotal {
        /// The count received.
        total: u32,
    },
    /// The shell could not lend a VMX root for the current CPU (VMX is off there).
    NoVmxRoot,
    /// A VMX instruction failed while serving the request.
    Vmx,
    /// Valid request for something rhax does not implement yet.
    NotImplemented {
        /// What is missing.
        what: &'static str,
    },
    /// The HAXM vCPU refused or failed the request.
    Vcpu(HaxError),
    /// Another request is working on this vCPU (HAXM requires every vCPU IOCTL to come from
    /// the vCPU's own thread; rhax refuses the second instead of spinning until the first,
    /// a RUN maybe, returns).
    VcpuInUse,
    /// GET_CPUID with `total` below the table's size: only the header (with the size) was
    /// written (POSIX `ENOMEM`; Windows reports success instead).
    CpuidTooSmall {
        /// The number of leaves the table holds.
        total: u32,
    },
    /// An in-kernel APIC request was refused (rhax's extension).
    Apic(ApicRefusal),
}

/// Why an in-kernel APIC request (RHAX_VM_IOCTL_ENABLE_APIC, SIGNAL_MSI, APIC_LINT) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicRefusal {
    /// ENABLE_APIC without [`rhax_api::ext::ApicFlags::ENABLE`], with an unknown flag or a
    /// nonzero reserved field (`EINVAL`).
    Config,
    /// ENABLE_APIC a second time (`EEXIST`).
    AlreadyEnabled,
    /// ENABLE_APIC after a vCPU was created (`EBUSY`).
    VcpusExist,
    /// SIGNAL_MSI or APIC_LINT on a VM without the in-kernel APIC (`ENXIO`).
    NotEnabled,
    /// An MSI address outside 0xFEExxxxx, data with bits above 15 or a reserved delivery
    /// mode, a nonzero reserved field (`EINVAL`).
    Msi,
    /// A LINT pin other than 0 or 1, a level other than 0 or 1, a vector above 255
    /// (`EINVAL`).
    Lint,
}

/// A failed IOCTL or handle operation, with what HAXM's answer depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchError {
    /// The cause.
    pub kind: ErrorKind,
    /// The IOCTL being served, if the code was recognised.
    pub ioctl: Option<&'static IoctlDef>,
    /// The device the request was sent to (`None` for open/close).
    pub scope: Option<Scope>,
    /// The host encoding the hypervisor serves (decides the errno numbering).
    pub platform: Codes,
}

impl DispatchError {
    /// An error of `kind` for `ioctl` on `scope`.
    pub fn new(
        kind: ErrorKind,
        ioctl: Option<&'static IoctlDef>,
        scope: Option<Scope>,
        platform: Codes,
    ) -> Self {
        DispatchError {
            kind,
            ioctl,
            scope,
            platform,
        }
    }

    fn is(&self, def: &IoctlDef) -> bool {
        self.ioctl == Some(def) || self.ioctl.is_some_and(|d| d.name == def.name)
    }

    fn memory_ioctl_is_ramblock(&self) -> bool {
        self.is(&ioctl::HAX_VM_IOCTL_ALLOC_RAM) || self.is(&ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK)
    }

    /// The NTSTATUS HAXM's Windows driver completes the request with (table in the module
    /// documentation).
    pub fn nt_status(&self) -> u32 {
        use nt::*;
        match self.kind {
            ErrorKind::InvalidHandle | ErrorKind::VmClosing => STATUS_INVALID_HANDLE,
            ErrorKind::UnknownIoctl { .. } | ErrorKind::UnimplementedByHaxm => {
                // `haxm-abi.md` §2, "Unknown IOCTL": system device INVALID_DEVICE_REQUEST,
                // VM and vCPU devices INVALID_PARAMETER.
                if self.scope == Some(Scope::System) {
                    STATUS_INVALID_DEVICE_REQUEST
                } else {
                    STATUS_INVALID_PARAMETER
                }
            }
            ErrorKind::OutputSize { .. } if self.is(&ioctl::HAX_IOCTL_CREATE_VM) => {
                STATUS_BUFFER_TOO_SMALL
            }
            ErrorKind::InputSize { .. } | ErrorKind::OutputSize { .. } => STATUS_INVALID_PARAMETER,
            ErrorKind::Busy => STATUS_ACCESS_DENIED,
            ErrorKind::VcpuInUse => STATUS_DEVICE_BUSY,
            ErrorKind::NoSuchVm { .. } | ErrorKind::NoSuchVcpu { .. } => {
                STATUS_OBJECT_NAME_NOT_FOUND
            }
            ErrorKind::Memory(MemoryError::ReservedNotZero) if self.memory_ioctl_is_ramblock() => {
                STATUS_INVALID_PARAMETER
            }
            ErrorKind::Memory(_) if self.memory_ioctl_is_ramblock() => STATUS_UNSUCCESSFUL,
            // SET_RAM, SET_RAM2, PROTECT_RAM: -EINVAL → INVALID_PARAMETER, else UNSUCCESSFUL.
            ErrorKind::Memory(e) if e.is_invalid_argument() => STATUS_INVALID_PARAMETER,
            ErrorKind::TooManyMsrs { .. } => STATUS_INVALID_PARAMETER,
            ErrorKind::NotImplemented { .. } | ErrorKind::Vcpu(HaxError::Unsupported(_)) => {
                STATUS_NOT_IMPLEMENTED
            }
            ErrorKind::Vcpu(
                HaxError::TooManyMsrs { .. } | HaxError::InvalidValue(_) | HaxError::ApicState(_),
            ) => STATUS_INVALID_PARAMETER,
            ErrorKind::Apic(ApicRefusal::Config | ApicRefusal::Msi | ApicRefusal::Lint) => {
                STATUS_INVALID_PARAMETER
            }
            ErrorKind::Apic(ApicRefusal::AlreadyEnabled) => STATUS_OBJECT_NAME_COLLISION,
            ErrorKind::Apic(ApicRefusal::VcpusExist) => STATUS_DEVICE_BUSY,
            ErrorKind::Apic(ApicRefusal::NotEnabled) => STATUS_INVALID_DEVICE_STATE,
            ErrorKind::Vcpu(_)
            | ErrorKind::CpuidTooSmall { .. }
            | ErrorKind::Memory(_)
            | ErrorKind::VmsExist
            | ErrorKind::MemLimitOverflow { .. }
            | ErrorKind::NotWorking
            | ErrorKind::NoFreeVmId
            | ErrorKind::VcpuIdOutOfRange { .. }
            | ErrorKind::VcpuIdInUse { .. }
            | ErrorKind::Platform(_)
            | ErrorKind::CpuidTotal { .. }
            | ErrorKind::NoVmxRoot
            | ErrorKind::Vmx => STATUS_UNSUCCESSFUL,
        }
    }

    /// The (positive) errno HAXM's POSIX driver returns, negated, from its ioctl handler, in
    /// the numbering of [`DispatchError::platform`]; 0 where HAXM's Linux driver reports
    /// success (DESTROY_VM, VCPU_DESTROY; such errors are never returned by
    /// [`crate::dispatch::Hypervisor::dispatch`] for Linux).
    pub fn errno(&self) -> i32 {
        use errno::*;
        // Windows has no errno; it gets Linux's numbering so the value is still meaningful.
        let bsd = !matches!(
            self.platform,
            Codes::Linux | Codes::LinuxI386 | Codes::Windows
        );
        let enosys = if bsd { ENOSYS_BSD } else { ENOSYS_LINUX };
        match self.kind {
            ErrorKind::InvalidHandle | ErrorKind::VmClosing => ENODEV,
            ErrorKind::UnknownIoctl { .. } => enosys,
            ErrorKind::UnimplementedByHaxm => {
                if matches!(self.platform, Codes::Linux | Codes::LinuxI386) {
                    0
                } else {
                    enosys
                }
            }
            ErrorKind::InputSize { .. } | ErrorKind::OutputSize { .. } => EINVAL,
            ErrorKind::Busy | ErrorKind::VcpuInUse => EBUSY,
            ErrorKind::NoSuchVm { .. } | ErrorKind::NoSuchVcpu { .. } => ENOENT,
            ErrorKind::VmsExist | ErrorKind::MemLimitOverflow { .. } => EINVAL,
            ErrorKind::NotWorking | ErrorKind::NoFreeVmId => ENOMEM,
            ErrorKind::VcpuIdOutOfRange { .. } | ErrorKind::VcpuIdInUse { .. } => EINVAL,
            // HAXM's VCPU_CREATE turns every failure into -EINVAL.
            ErrorKind::Platform(_) if self.is(&ioctl::HAX_VM_IOCTL_VCPU_CREATE) => EINVAL,
            ErrorKind::Platform(_) => ENOMEM,
            ErrorKind::Memory(e) if !e.is_invalid_argument() => ENOMEM,
            ErrorKind::Memory(_) => EINVAL,
            ErrorKind::TooManyMsrs { .. } => EFAULT,
            ErrorKind::CpuidTotal { total } if total > 64 => E2BIG,
            ErrorKind::CpuidTotal { .. } => EINVAL,
            ErrorKind::NoVmxRoot => ENXIO,
            ErrorKind::Vmx => EFAULT,
            ErrorKind::NotImplemented { .. } => enosys,
            ErrorKind::CpuidTooSmall { .. } => ENOMEM,
            ErrorKind::Apic(ApicRefusal::Config | ApicRefusal::Msi | ApicRefusal::Lint) => EINVAL,
            ErrorKind::Apic(ApicRefusal::AlreadyEnabled) => EEXIST,
            ErrorKind::Apic(ApicRefusal::VcpusExist) => EBUSY,
            ErrorKind::Apic(ApicRefusal::NotEnabled) => ENXIO,
            // HAXM's VCPU_CREATE turns every failure into -EINVAL.
            ErrorKind::Vcpu(_) if self.is(&ioctl::HAX_VM_IOCTL_VCPU_CREATE) => EINVAL,
            ErrorKind::Vcpu(e) => match e {
                // RUN: a failed VM entry is -EINVAL (`_exit_status = HAX_EXIT_UNKNOWN`).
                HaxError::EntryFailed(_)
                | HaxError::InvalidGuestState { .. }
                | HaxError::InvalidValue(_)
                | HaxError::ApicState(_) => EINVAL,
                HaxError::TooManyMsrs { .. } => EFAULT,
                HaxError::Cpuid(CpuidError::Empty) => EINVAL,
                HaxError::Cpuid(CpuidError::TooMany { .. }) => E2BIG,
                HaxError::Unsupported(_) => enosys,
                HaxError::Create(_) | HaxError::Platform(_) => ENOMEM,
                // SET/GET_REGS: -EFAULT when the VMCS cannot be loaded.
                HaxError::Vmcs(_)
                | HaxError::Memory(_)
                | HaxError::EmulationFailed
                | HaxError::NothingToResume => EFAULT,
            },
        }
    }

    /// What HAXM's POSIX ioctl handler returns: `-errno()`, except **+1** when RUN failed to
    /// complete an MMIO access with the instruction emulator (the vCPU has panicked,
    /// `haxm-abi.md` §2 RUN).
    pub fn posix_return(&self) -> i32 {
        if self.kind == ErrorKind::Vcpu(HaxError::EmulationFailed) {
            return 1;
        }
        -self.errno()
    }
}

impl fmt::Display for DispatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = self.ioctl {
            write!(f, "{}: ", d.name)?;
        }
        match self.kind {
            ErrorKind::UnknownIoctl { code } => {
                write!(f, "unknown IOCTL {code:#x} on {:?} device", self.scope)
            }
            ErrorKind::UnimplementedByHaxm => f.write_str("never implemented (close the handle)"),
            ErrorKind::InputSize { expected, got } => {
                write!(f, "input buffer {got} bytes, needs {expected}")
            }
            ErrorKind::OutputSize { expected, got } => {
                write!(f, "output buffer {got} bytes, needs {expected}")
            }
            ErrorKind::InvalidHandle => f.write_str("invalid or closed handle"),
            ErrorKind::VmClosing => f.write_str("the VM handle was closed"),
            ErrorKind::Busy => f.write_str("already open (exclusive device)"),
            ErrorKind::NoSuchVm { vm } => write!(f, "no VM {vm}"),
            ErrorKind::NoSuchVcpu { vcpu } => write!(f, "no vCPU {vcpu}"),
            ErrorKind::VmsExist => f.write_str("a VM exists"),
            ErrorKind::MemLimitOverflow { megabytes } => {
                write!(f, "memory limit {megabytes} MB overflows")
            }
            ErrorKind::NotWorking => f.write_str("VT-x is not usable"),
            ErrorKind::NoFreeVmId => f.write_str("no free VM id"),
            ErrorKind::VcpuIdOutOfRange { vcpu } => write!(f, "vCPU id {vcpu} out of range"),
            ErrorKind::VcpuIdInUse { vcpu } => write!(f, "vCPU id {vcpu} in use"),
            ErrorKind::Memory(e) => write!(f, "{e}"),
            ErrorKind::Platform(e) => write!(f, "platform failure: {e:?}"),
            ErrorKind::TooManyMsrs { nr_msr } => write!(f, "nr_msr {nr_msr} above 31"),
            ErrorKind::CpuidTotal { total } => write!(f, "CPUID total {total} not in 1..=64"),
            ErrorKind::NoVmxRoot => f.write_str("VMX is not enabled on this CPU"),
            ErrorKind::Vmx => f.write_str("VMX instruction failed"),
            ErrorKind::NotImplemented { what } => write!(f, "not implemented yet: {what}"),
            ErrorKind::Vcpu(e) => write!(f, "vCPU: {e:?}"),
            ErrorKind::VcpuInUse => f.write_str("another request is working on this vCPU"),
            ErrorKind::CpuidTooSmall { total } => {
                write!(f, "room for fewer than the {total} CPUID leaves held")
            }
            ErrorKind::Apic(r) => f.write_str(match r {
                ApicRefusal::Config => "in-kernel APIC: invalid configuration",
                ApicRefusal::AlreadyEnabled => "in-kernel APIC: already enabled",
                ApicRefusal::VcpusExist => "in-kernel APIC: enable it before creating vCPUs",
                ApicRefusal::NotEnabled => "in-kernel APIC: not enabled on this VM",
                ApicRefusal::Msi => "in-kernel APIC: invalid MSI message",
                ApicRefusal::Lint => "in-kernel APIC: invalid LINT request",
            }),
        }
    }
}

impl core::error::Error for DispatchError {}
