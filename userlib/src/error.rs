//! Typed errors: what the OS said ([`OsError`]) and what went wrong in the library
//! ([`Error`]).
//!
//! Every IOCTL has its own [`Error`] variant carrying the OS error, so a caller can tell
//! `CreateVm` from `SetRegs` without string matching. Replies are checked before use: a
//! reply that is too short, claims more bytes than the buffer holds, or carries a value the
//! ABI does not allow becomes [`Error::ShortReply`] or [`Error::Malformed`], never a panic.

use core::fmt;

use crate::transport::DevicePath;

/// An error reported by the operating system (or the in-kernel dispatcher) for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OsError {
    /// A POSIX `errno` (`open` or `ioctl` returned -1), or the negated error code an
    /// in-kernel dispatcher returns (rhax-core uses HAXM's Linux errno values).
    Errno(i32),
    /// A Win32 error code from `GetLastError` (for example 87 `ERROR_INVALID_PARAMETER` for
    /// HAXM's `STATUS_INVALID_PARAMETER`, 31 `ERROR_GEN_FAILURE` for `STATUS_UNSUCCESSFUL`).
    Win32(u32),
    /// A POSIX `ioctl` returned a positive value. HAXM's RUN returns +1 when the instruction
    /// emulator failed while completing an MMIO access and the vCPU has panicked
    /// (`haxm-abi.md` §2, RUN); on Windows the same case is `ERROR_GEN_FAILURE`.
    Positive(i32),
    /// The transport cannot express this request (a device name that does not fit, a
    /// buffer larger than the OS interface allows).
    Unsupported,
}

/// `EINTR`: the Linux/macOS/NetBSD value (4 on all three).
pub const EINTR: i32 = 4;
/// `EAGAIN` on Linux (11). macOS and NetBSD use 35.
pub const EAGAIN_LINUX: i32 = 11;
/// `EAGAIN` on macOS and NetBSD (35).
pub const EAGAIN_BSD: i32 = 35;

impl OsError {
    /// Whether a retry of the same call is the right answer: `EINTR` or `EAGAIN`. QEMU retries
    /// RUN on exactly these (`haxm-clients.md` §3.1).
    pub const fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Errno(EINTR) | Self::Errno(EAGAIN_LINUX) | Self::Errno(EAGAIN_BSD)
        )
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Errno(e) => write!(f, "errno {e}"),
            Self::Win32(e) => match win32_name(*e) {
                Some(name) => write!(f, "Win32 error {e} ({name})"),
                None => write!(f, "Win32 error {e}"),
            },
            Self::Positive(v) => write!(f, "ioctl returned {v}"),
            Self::Unsupported => f.write_str("not supported by this transport"),
        }
    }
}

impl core::error::Error for OsError {}

/// The `ERROR_*` name of the Win32 errors a HAXM driver's statuses become
/// (`RtlNtStatusToDosError`; `haxm-abi.md` §2) and of the usual open failures.
pub const fn win32_name(e: u32) -> Option<&'static str> {
    Some(match e {
        1 => "ERROR_INVALID_FUNCTION",
        2 => "ERROR_FILE_NOT_FOUND",
        3 => "ERROR_PATH_NOT_FOUND",
        5 => "ERROR_ACCESS_DENIED",
        6 => "ERROR_INVALID_HANDLE",
        8 => "ERROR_NOT_ENOUGH_MEMORY",
        31 => "ERROR_GEN_FAILURE",
        32 => "ERROR_SHARING_VIOLATION",
        87 => "ERROR_INVALID_PARAMETER",
        122 => "ERROR_INSUFFICIENT_BUFFER",
        170 => "ERROR_BUSY",
        995 => "ERROR_OPERATION_ABORTED",
        1167 => "ERROR_DEVICE_NOT_CONNECTED",
        _ => return None,
    })
}

/// Everything that can go wrong in this library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Opening a device failed.
    Open {
        /// The device.
        device: DevicePath,
        /// What the OS said.
        os: OsError,
    },
    /// `HAX_IOCTL_VERSION` failed.
    Version(OsError),
    /// `HAX_IOCTL_CAPABILITY` failed.
    Capability(OsError),
    /// `HAX_IOCTL_SET_MEMLIMIT` failed.
    SetMemlimit(OsError),
    /// `HAX_IOCTL_CREATE_VM` failed.
    CreateVm(OsError),
    /// `HAX_VM_IOCTL_VCPU_CREATE` failed.
    CreateVcpu {
        /// The vCPU id asked for.
        id: u32,
        /// What the OS said.
        os: OsError,
    },
    /// `HAX_VM_IOCTL_NOTIFY_QEMU_VERSION` failed.
    NotifyQemuVersion(OsError),
    /// `HAX_VM_IOCTL_ALLOC_RAM` failed.
    AllocRam(OsError),
    /// `HAX_VM_IOCTL_ADD_RAMBLOCK` failed.
    AddRamblock(OsError),
    /// `HAX_VM_IOCTL_SET_RAM` failed.
    SetRam(OsError),
    /// `HAX_VM_IOCTL_SET_RAM2` failed.
    SetRam2(OsError),
    /// `HAX_VM_IOCTL_PROTECT_RAM` failed.
    ProtectRam(OsError),
    /// `HAX_VCPU_IOCTL_SETUP_TUNNEL` failed.
    SetupTunnel(OsError),
    /// `HAX_VCPU_IOCTL_RUN` failed. [`OsError::is_retryable`] says whether to simply call
    /// RUN again.
    Run(OsError),
    /// `HAX_VCPU_SET_REGS` failed.
    SetRegs(OsError),
    /// `HAX_VCPU_GET_REGS` failed.
    GetRegs(OsError),
    /// `HAX_VCPU_IOCTL_SET_FPU` failed.
    SetFpu(OsError),
    /// `HAX_VCPU_IOCTL_GET_FPU` failed.
    GetFpu(OsError),
    /// `HAX_VCPU_IOCTL_SET_MSRS` failed.
    SetMsrs(OsError),
    /// `HAX_VCPU_IOCTL_GET_MSRS` failed.
    GetMsrs(OsError),
    /// `HAX_VCPU_IOCTL_INTERRUPT` failed.
    Interrupt(OsError),
    /// `HAX_VCPU_IOCTL_KICKOFF` failed.
    Kickoff(OsError),
    /// `HAX_IOCTL_VCPU_DEBUG` failed.
    Debug(OsError),
    /// `HAX_VCPU_IOCTL_SET_CPUID` failed.
    SetCpuid(OsError),
    /// `HAX_VCPU_IOCTL_GET_CPUID` failed.
    GetCpuid(OsError),
    /// `RHAX_IOCTL_EXT_INFO` failed (a HAXM driver always fails it).
    ExtInfo(OsError),
    /// `RHAX_VCPU_IOCTL_GET_STATS` failed.
    GetStats(OsError),
    /// `RHAX_VCPU_IOCTL_RESET_STATS` failed.
    ResetStats(OsError),
    /// `RHAX_VCPU_IOCTL_GET_XSAVE` failed.
    GetXsave(OsError),
    /// `RHAX_VCPU_IOCTL_SET_XSAVE` failed.
    SetXsave(OsError),
    /// `RHAX_VCPU_IOCTL_SET_STATS_CONTROL` failed.
    SetStatsControl(OsError),
    /// `RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL` failed.
    SetEmulationControl(OsError),
    /// `RHAX_VM_IOCTL_ENABLE_APIC` failed.
    EnableApic(OsError),
    /// `RHAX_VM_IOCTL_SIGNAL_MSI` failed.
    SignalMsi(OsError),
    /// `RHAX_VCPU_IOCTL_APIC_LINT` failed.
    ApicLint(OsError),
    /// `RHAX_VCPU_IOCTL_GET_APIC_STATE` failed.
    GetApicState(OsError),
    /// `RHAX_IOCTL_VCPU_STATS` (system device) failed.
    VcpuStats(OsError),
    /// The IOCTL does not exist on this transport's platform (`HAX_VCPU_IOCTL_KICKOFF` off
    /// Windows, `HAX_VCPU_IOCTL_GET_CPUID` on NetBSD), so nothing was sent.
    Unsupported {
        /// The IOCTL's HAXM name.
        ioctl: &'static str,
    },
    /// The driver returned fewer bytes than the reply struct needs.
    ShortReply {
        /// The IOCTL's HAXM name.
        ioctl: &'static str,
        /// Bytes needed.
        expected: usize,
        /// Bytes returned.
        got: usize,
    },
    /// A reply carries a value the ABI does not allow (or the transport claims to have
    /// returned more bytes than the buffer holds).
    Malformed {
        /// The IOCTL's HAXM name.
        ioctl: &'static str,
        /// The field, e.g. `"io._count * io._size"`.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// More than [`HAX_MAX_MSRS_PER_CALL`](rhax_api::HAX_MAX_MSRS_PER_CALL) MSRs in one
    /// SET/GET_MSRS call: HAXM rejects `nr_msr >= 32`.
    TooManyMsrs {
        /// The number asked for.
        count: usize,
    },
    /// More than [`HAX_MAX_CPUID_ENTRIES`](rhax_api::HAX_MAX_CPUID_ENTRIES) CPUID entries, or
    /// none: HAXM requires `0 < total <= 64`.
    BadCpuidCount {
        /// The number asked for.
        count: usize,
    },
    /// The driver's API version is outside what this library speaks (QEMU's rule: it needs
    /// `cur_version >= 4` and `compat_version <= 4`).
    VersionUnsupported {
        /// The driver's `compat_version`.
        compat_version: u32,
        /// The driver's `cur_version`.
        cur_version: u32,
    },
    /// The capability answer says the driver cannot run VMs.
    NotWorking {
        /// `winfo`: the failure reasons ([`rhax_api::CapabilityFailure`] bits).
        failure: u16,
    },
    /// `RHAX_IOCTL_EXT_INFO` answered, but without rhax's magic.
    NotRhax {
        /// The magic found.
        magic: u32,
    },
    /// An argument the library refuses before sending anything.
    InvalidArgument {
        /// What is wrong.
        what: &'static str,
    },
}

impl Error {
    /// The OS error behind an IOCTL or open failure, if this is one.
    pub fn os_error(&self) -> Option<OsError> {
        self.os_ref().copied()
    }

    fn os_ref(&self) -> Option<&OsError> {
        match self {
            Self::Open { os, .. } | Self::CreateVcpu { os, .. } => Some(os),
            Self::Version(os)
            | Self::Capability(os)
            | Self::SetMemlimit(os)
            | Self::CreateVm(os)
            | Self::NotifyQemuVersion(os)
            | Self::AllocRam(os)
            | Self::AddRamblock(os)
            | Self::SetRam(os)
            | Self::SetRam2(os)
            | Self::ProtectRam(os)
            | Self::SetupTunnel(os)
            | Self::Run(os)
            | Self::SetRegs(os)
            | Self::GetRegs(os)
            | Self::SetFpu(os)
            | Self::GetFpu(os)
            | Self::SetMsrs(os)
            | Self::GetMsrs(os)
            | Self::Interrupt(os)
            | Self::Kickoff(os)
            | Self::Debug(os)
            | Self::SetCpuid(os)
            | Self::GetCpuid(os)
            | Self::ExtInfo(os)
            | Self::GetStats(os)
            | Self::ResetStats(os)
            | Self::GetXsave(os)
            | Self::SetXsave(os)
            | Self::SetStatsControl(os)
            | Self::SetEmulationControl(os)
            | Self::EnableApic(os)
            | Self::SignalMsi(os)
            | Self::ApicLint(os)
            | Self::GetApicState(os)
            | Self::VcpuStats(os) => Some(os),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed =
            |f: &mut fmt::Formatter<'_>, what: &str, os: &OsError| write!(f, "{what} failed: {os}");
        match self {
            // The name the caller's OS uses: `\\.\HAX` on Windows, `/dev/HAX` elsewhere.
            #[cfg(windows)]
            Self::Open { device, os } => write!(f, "cannot open {}: {os}", device.windows()),
            #[cfg(not(windows))]
            Self::Open { device, os } => write!(f, "cannot open {device}: {os}"),
            Self::Version(os) => failed(f, "HAX_IOCTL_VERSION", os),
            Self::Capability(os) => failed(f, "HAX_IOCTL_CAPABILITY", os),
            Self::SetMemlimit(os) => failed(f, "HAX_IOCTL_SET_MEMLIMIT", os),
            Self::CreateVm(os) => failed(f, "HAX_IOCTL_CREATE_VM", os),
            Self::CreateVcpu { id, os } => {
                write!(f, "HAX_VM_IOCTL_VCPU_CREATE of vCPU {id} failed: {os}")
            }
            Self::NotifyQemuVersion(os) => failed(f, "HAX_VM_IOCTL_NOTIFY_QEMU_VERSION", os),
            Self::AllocRam(os) => failed(f, "HAX_VM_IOCTL_ALLOC_RAM", os),
            Self::AddRamblock(os) => failed(f, "HAX_VM_IOCTL_ADD_RAMBLOCK", os),
            Self::SetRam(os) => failed(f, "HAX_VM_IOCTL_SET_RAM", os),
            Self::SetRam2(os) => failed(f, "HAX_VM_IOCTL_SET_RAM2", os),
            Self::ProtectRam(os) => failed(f, "HAX_VM_IOCTL_PROTECT_RAM", os),
            Self::SetupTunnel(os) => failed(f, "HAX_VCPU_IOCTL_SETUP_TUNNEL", os),
            Self::Run(os) => failed(f, "HAX_VCPU_IOCTL_RUN", os),
            Self::SetRegs(os) => failed(f, "HAX_VCPU_SET_REGS", os),
            Self::GetRegs(os) => failed(f, "HAX_VCPU_GET_REGS", os),
            Self::SetFpu(os) => failed(f, "HAX_VCPU_IOCTL_SET_FPU", os),
            Self::GetFpu(os) => failed(f, "HAX_VCPU_IOCTL_GET_FPU", os),
            Self::SetMsrs(os) => failed(f, "HAX_VCPU_IOCTL_SET_MSRS", os),
            Self::GetMsrs(os) => failed(f, "HAX_VCPU_IOCTL_GET_MSRS", os),
            Self::Interrupt(os) => failed(f, "HAX_VCPU_IOCTL_INTERRUPT", os),
            Self::Kickoff(os) => failed(f, "HAX_VCPU_IOCTL_KICKOFF", os),
            Self::Debug(os) => failed(f, "HAX_IOCTL_VCPU_DEBUG", os),
            Self::SetCpuid(os) => failed(f, "HAX_VCPU_IOCTL_SET_CPUID", os),
            Self::GetCpuid(os) => failed(f, "HAX_VCPU_IOCTL_GET_CPUID", os),
            Self::ExtInfo(os) => failed(f, "RHAX_IOCTL_EXT_INFO", os),
            Self::GetStats(os) => failed(f, "RHAX_VCPU_IOCTL_GET_STATS", os),
            Self::ResetStats(os) => failed(f, "RHAX_VCPU_IOCTL_RESET_STATS", os),
            Self::GetXsave(os) => failed(f, "RHAX_VCPU_IOCTL_GET_XSAVE", os),
            Self::SetXsave(os) => failed(f, "RHAX_VCPU_IOCTL_SET_XSAVE", os),
            Self::SetStatsControl(os) => failed(f, "RHAX_VCPU_IOCTL_SET_STATS_CONTROL", os),
            Self::SetEmulationControl(os) => failed(f, "RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL", os),
            Self::VcpuStats(os) => failed(f, "RHAX_IOCTL_VCPU_STATS", os),
            Self::EnableApic(os) => failed(f, "RHAX_VM_IOCTL_ENABLE_APIC", os),
            Self::SignalMsi(os) => failed(f, "RHAX_VM_IOCTL_SIGNAL_MSI", os),
            Self::ApicLint(os) => failed(f, "RHAX_VCPU_IOCTL_APIC_LINT", os),
            Self::GetApicState(os) => failed(f, "RHAX_VCPU_IOCTL_GET_APIC_STATE", os),
            Self::Unsupported { ioctl } => {
                write!(f, "{ioctl} does not exist on this platform")
            }
            Self::ShortReply {
                ioctl,
                expected,
                got,
            } => write!(
                f,
                "{ioctl}: short reply, {got} bytes where {expected} are needed"
            ),
            Self::Malformed {
                ioctl,
                field,
                value,
            } => write!(f, "{ioctl}: malformed reply, {field} = {value:#x}"),
            Self::TooManyMsrs { count } => write!(
                f,
                "{count} MSRs in one call; HAXM takes at most {}",
                rhax_api::HAX_MAX_MSRS_PER_CALL
            ),
            Self::BadCpuidCount { count } => write!(
                f,
                "{count} CPUID entries; HAXM takes 1 to {}",
                rhax_api::HAX_MAX_CPUID_ENTRIES
            ),
            Self::VersionUnsupported {
                compat_version,
                cur_version,
            } => write!(
                f,
                "driver API version {cur_version} (compatible down to {compat_version}) is \
                 not usable: need current >= {MIN} and compatible <= {MIN}",
                MIN = crate::system::CLIENT_API_VERSION
            ),
            Self::NotWorking { failure } => write!(
                f,
                "the driver is not working (VT-x/NX failure bits {failure:#x})"
            ),
            Self::NotRhax { magic } => {
                write!(f, "not an rhax driver (extension magic {magic:#x})")
            }
            Self::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        self.os_ref()
            .map(|os| os as &(dyn core::error::Error + 'static))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
