//! The HAXM user/kernel ABI, frozen byte for byte, plus rhax's own extensions.
//!
//! Source: Intel HAXM 7.8.0 (`intel/haxm` at `4c524a10`, the last upstream release):
//! `include/hax_interface.h`, `include/hax_vcpu_state.h`, the four platform interface headers
//! and the constants of `core/include/*.h`, as measured by compiling those headers
//! (`haxm-abi.md`, `tests/abi/haxm-layouts.tsv`, `tests/abi/haxm-ioctls.tsv`). Every offset
//! and size is identical on all eight measured compiler/target pairs (gcc, clang, MSVC;
//! 32- and 64-bit), so one `#[repr(C)]` definition serves every host.
//!
//! What is here:
//! * every ABI struct as a `#[repr(C)]` type with explicit padding fields and compile-time
//!   size/offset assertions; C unions and bit-fields are read and written through accessors;
//! * [`Pod`]: safe byte views for moving the structs through IOCTL buffers;
//! * [`ioctl`]: every IOCTL code on Windows, Linux, macOS and NetBSD, with its device scope;
//! * exit statuses, capability bits, memory flags, API versions and limits;
//! * [`ext`]: rhax's own IOCTLs, in a number range no HAXM variant uses;
//! * [`conformance`]: the tables that `tests/abi/*.tsv` are checked against.
//!
//! The crate is `no_std`, has no `unsafe` in its public API, and depends only on `bitflags`.
//!
//! ```
//! use rhax_api::{Pod, SegmentDesc, VcpuState, ioctl};
//!
//! let mut regs = VcpuState::default();
//! regs.rip = 0x7c00;
//! regs.cs = SegmentDesc::new(0, 0, 0xffff, 0).with_type(0xb).with_s(true).with_present(true);
//! assert_eq!(regs.cs.ar, 0x9b);
//! let bytes: &[u8] = regs.as_bytes();
//! assert_eq!(bytes.len(), 512);
//! assert_eq!(VcpuState::from_bytes(bytes), Some(regs));
//! assert_eq!(ioctl::HAX_VCPU_SET_REGS.windows(), Some(0x4000_2434));
//! ```
#![no_std]

use core::fmt;

pub mod apic;
pub mod bits;
pub mod conformance;
pub mod cpuid;
pub mod debug;
pub mod ext;
pub mod fpu;
pub mod ioctl;
pub mod memory;
pub mod msr;
pub mod pod;
pub mod system;
pub mod tunnel;
pub mod vcpu;

pub use bits::BitField;
pub use cpuid::{
    cpuid_size, Cpuid, CpuidEntry, CpuidHeader, CpuidTable, HAXM_CPUID_LEAVES,
    HAX_MAX_CPUID_ENTRIES,
};
pub use debug::{DebugControl, VcpuDebug};
pub use fpu::FxLayout;
pub use ioctl::{Device, IoctlDef, Platform, Scope};
pub use memory::{
    AllocRamInfo, ProtectRamInfo, RamFlags, RamPermission, RamblockInfo, SetRamInfo, SetRamInfo2,
    HAX_CHUNK_SIZE, HAX_PAGE_SIZE, HAX_RAM_PERM_MASK,
};
pub use msr::{MsrData, VmxMsr, HAX_MAX_MSRS_PER_CALL, HAX_MAX_MSR_ARRAY};
pub use pod::Pod;
pub use system::{
    CapabilityFailure, CapabilityFeatures, CapabilityInfo, CapabilityStatus, ModuleVersion,
    QemuVersion, SetMemlimit, HAX_CAP_WORKSTATUS_MASK, HAX_COMPAT_VERSION, HAX_CUR_VERSION,
    HAX_MAX_VCPUS, HAX_MAX_VMS, HAX_MAX_VMS_NETBSD,
};
pub use tunnel::{
    ExitStatus, FastMmio, IoDirection, MmioDirection, PageFaultFlags, Tunnel, TunnelDebug,
    TunnelInfo, TunnelIo, TunnelMmio, TunnelPageFault, TunnelPayload, TunnelState,
    HAX_EXIT_REASON_PAUSE_REQUEST, HAX_IO_FLAG_STRING, HAX_TUNNEL_PAGE_SIZE, IOS_MAX_BUFFER,
};
pub use vcpu::{GprIndex, GprPart, Interruptibility, SegmentDesc, VcpuState};

/// A number that is not one of the values an ABI enum defines (an exit status, a direction,
/// a permission...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnknownValue {
    /// What was being decoded, e.g. `"exit status"`.
    pub kind: &'static str,
    /// The value found.
    pub value: u64,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:#x}", self.kind, self.value)
    }
}

impl core::error::Error for UnknownValue {}
