//! System-device structs (`hax_module_version`, `hax_capabilityinfo`, `hax_set_memlimit`),
//! the VM device's `hax_qemu_version`, capability bits, API versions and limits.
//!
//! Source: HAXM 7.8.0 `include/hax_interface.h` and `include/hax.h`, measured in
//! `haxm-abi.md` §3 and §5.

use crate::pod::{assert_layout, impl_pod};

/// `HAX_CUR_VERSION`: the API version HAXM 7.8.0 reports in `cur_version`.
pub const HAX_CUR_VERSION: u32 = 4;
/// `HAX_COMPAT_VERSION`: the oldest API version HAXM 7.8.0 stays compatible with.
pub const HAX_COMPAT_VERSION: u32 = 1;
/// `HAX_MAX_VCPUS`: vCPU ids are `0..HAX_MAX_VCPUS`.
pub const HAX_MAX_VCPUS: u32 = 16;
/// `HAX_MAX_VMS`: VM ids are `0..HAX_MAX_VMS` (Windows, Linux, macOS).
pub const HAX_MAX_VMS: u32 = 64;
/// `HAX_MAX_VMS` on NetBSD.
pub const HAX_MAX_VMS_NETBSD: u32 = 8;

/// `hax_module_version`: the answer of `HAX_IOCTL_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleVersion {
    /// `compat_version`: [`HAX_COMPAT_VERSION`] for HAXM 7.8.0.
    pub compat_version: u32,
    /// `cur_version`: [`HAX_CUR_VERSION`] for HAXM 7.8.0.
    pub cur_version: u32,
}

impl_pod!(ModuleVersion);
assert_layout!(ModuleVersion, size = 8; compat_version = 0, cur_version = 4);

bitflags::bitflags! {
    /// `hax_capabilityinfo.wstatus`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CapabilityStatus: u16 {
        /// `HAX_CAP_STATUS_WORKING`: VT-x and NX are usable; `winfo` holds
        /// [`CapabilityFeatures`]. Without it `winfo` holds [`CapabilityFailure`].
        const WORKING = 0x1;
        /// `HAX_CAP_MEMQUOTA`: `mem_quota` is valid.
        const MEMQUOTA = 0x2;
    }
}

/// `HAX_CAP_WORKSTATUS_MASK`: the bits of `wstatus` that say whether the driver works.
pub const HAX_CAP_WORKSTATUS_MASK: u16 = 0x1;

bitflags::bitflags! {
    /// `hax_capabilityinfo.winfo` when [`CapabilityStatus::WORKING`] is set.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CapabilityFeatures: u16 {
        /// `HAX_CAP_EPT`: the host has EPT.
        const EPT = 0x001;
        /// `HAX_CAP_FASTMMIO`: fast MMIO exits (API v2).
        const FASTMMIO = 0x002;
        /// `HAX_CAP_UG`: unrestricted guest (QEMU requires it).
        const UG = 0x004;
        /// `HAX_CAP_64BIT_RAMBLOCK`: `HAX_VM_IOCTL_ADD_RAMBLOCK` (HAXM 7.0.0).
        const RAMBLOCK_64BIT = 0x008;
        /// `HAX_CAP_64BIT_SETRAM`: `HAX_VM_IOCTL_SET_RAM2` (HAXM 7.1.0).
        const SETRAM_64BIT = 0x010;
        /// `HAX_CAP_TUNNEL_PAGE`: the tunnel is a full page (HAXM 7.2.0).
        const TUNNEL_PAGE = 0x020;
        /// `HAX_CAP_RAM_PROTECTION`: `HAX_VM_IOCTL_PROTECT_RAM` (HAXM 7.2.0).
        const RAM_PROTECTION = 0x040;
        /// `HAX_CAP_DEBUG`: `HAX_IOCTL_VCPU_DEBUG` (HAXM 7.4.1).
        const DEBUG = 0x080;
        /// `HAX_CAP_IMPLICIT_RAMBLOCK`: `HAX_RAM_INFO_STANDALONE` (HAXM 7.5.1).
        const IMPLICIT_RAMBLOCK = 0x100;
        /// `HAX_CAP_CPUID`: `HAX_VCPU_IOCTL_SET_CPUID` (HAXM 7.6.1).
        const CPUID = 0x200;
    }
}

bitflags::bitflags! {
    /// `hax_capabilityinfo.winfo` when [`CapabilityStatus::WORKING`] is clear.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CapabilityFailure: u16 {
        /// `HAX_CAP_FAILREASON_VT`: VT-x is missing or disabled.
        const VT = 0x1;
        /// `HAX_CAP_FAILREASON_NX`: NX/XD is missing or disabled.
        const NX = 0x2;
    }
}

/// `hax_capabilityinfo`: the answer of `HAX_IOCTL_CAPABILITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityInfo {
    /// `wstatus`: see [`CapabilityInfo::status`].
    pub wstatus: u16,
    /// `winfo`: see [`CapabilityInfo::features`] / [`CapabilityInfo::failure`].
    pub winfo: u16,
    /// `win_refcount` (QEMU: `pad`): the control device's reference count on Windows.
    pub win_refcount: u32,
    /// `mem_quota`: in bytes (not MB), valid with [`CapabilityStatus::MEMQUOTA`].
    pub mem_quota: u64,
}

impl_pod!(CapabilityInfo);
assert_layout!(CapabilityInfo, size = 16; wstatus = 0, winfo = 2, win_refcount = 4, mem_quota = 8);

impl CapabilityInfo {
    /// `wstatus`, typed (unknown bits kept).
    pub const fn status(&self) -> CapabilityStatus {
        CapabilityStatus::from_bits_retain(self.wstatus)
    }

    /// Whether the driver can run VMs.
    pub const fn is_working(&self) -> bool {
        self.wstatus & HAX_CAP_WORKSTATUS_MASK != 0
    }

    /// The feature bits, if the driver is working.
    pub const fn features(&self) -> Option<CapabilityFeatures> {
        if self.is_working() {
            Some(CapabilityFeatures::from_bits_retain(self.winfo))
        } else {
            None
        }
    }

    /// The failure reasons, if the driver is not working.
    pub const fn failure(&self) -> Option<CapabilityFailure> {
        if self.is_working() {
            None
        } else {
            Some(CapabilityFailure::from_bits_retain(self.winfo))
        }
    }

    /// The memory quota in bytes, if reported.
    pub const fn mem_quota(&self) -> Option<u64> {
        if self.wstatus & CapabilityStatus::MEMQUOTA.bits() != 0 {
            Some(self.mem_quota)
        } else {
            None
        }
    }
}

/// `hax_set_memlimit`: the argument of `HAX_IOCTL_SET_MEMLIMIT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetMemlimit {
    /// `enable_memlimit`: 0 disables the quota report.
    pub enable_memlimit: u8,
    /// `pad[7]`.
    pub pad: [u8; 7],
    /// `memory_limit`: in MB (HAXM stores `memory_limit << 20` bytes).
    pub memory_limit: u64,
}

impl_pod!(SetMemlimit);
assert_layout!(SetMemlimit, size = 16; enable_memlimit = 0, pad = 1, memory_limit = 8);

/// `hax_qemu_version`: the argument of `HAX_VM_IOCTL_NOTIFY_QEMU_VERSION`.
///
/// QEMU sends `{ cur_version: 4, least_version: 4 }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QemuVersion {
    /// `cur_version`: the client's API version.
    pub cur_version: u32,
    /// `least_version` (QEMU: `min_version`): the oldest driver API the client accepts.
    pub least_version: u32,
}

impl_pod!(QemuVersion);
assert_layout!(QemuVersion, size = 8; cur_version = 0, least_version = 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_decoding() {
        // The typical HAXM 7.8.0 answer (haxm-abi.md §5).
        let c = CapabilityInfo {
            wstatus: 0x3,
            winfo: 0x3ff,
            win_refcount: 1,
            mem_quota: 1 << 48,
        };
        assert!(c.is_working());
        assert_eq!(c.features(), Some(CapabilityFeatures::all()));
        assert_eq!(c.failure(), None);
        assert_eq!(c.mem_quota(), Some(1 << 48));
        let bad = CapabilityInfo {
            wstatus: 0,
            winfo: 0x2,
            ..Default::default()
        };
        assert!(!bad.is_working());
        assert_eq!(bad.features(), None);
        assert_eq!(bad.failure(), Some(CapabilityFailure::NX));
        assert_eq!(bad.mem_quota(), None);
    }
}
