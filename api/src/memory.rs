//! Guest-memory structs: `hax_alloc_ram_info`, `hax_ramblock_info`, `hax_set_ram_info`,
//! `hax_set_ram_info2`, `hax_protect_ram_info`, and their flags.
//!
//! Source: HAXM 7.8.0 `include/hax_interface.h` and `core/include/memory.h`, measured in
//! `haxm-abi.md` §3 and §5. Semantics: `haxm-abi.md` §2.

use crate::pod::{assert_layout, impl_pod};
use crate::UnknownValue;

/// `HAX_PAGE_SIZE`.
pub const HAX_PAGE_SIZE: u64 = 4096;
/// `HAX_CHUNK_SIZE`: RAM blocks are pinned in chunks of 2 MiB.
pub const HAX_CHUNK_SIZE: u64 = 2 * 1024 * 1024;

bitflags::bitflags! {
    /// `flags` of [`SetRamInfo`] (a `u8` there) and [`SetRamInfo2`] (a `u32`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RamFlags: u32 {
        /// `HAX_RAM_INFO_ROM` = `HAX_MEMSLOT_READONLY`: map read-only.
        const ROM = 0x01;
        /// `HAX_RAM_INFO_STANDALONE` = `HAX_MEMSLOT_STANDALONE`: the HVA range is its own
        /// RAM block (cap `HAX_CAP_IMPLICIT_RAMBLOCK`).
        const STANDALONE = 0x40;
        /// `HAX_RAM_INFO_INVALID` = `HAX_MEMSLOT_INVALID`: unmap; must be the only flag, with
        /// `va == 0`.
        const INVALID = 0x80;
    }
}

/// `HAX_RAM_PERM_MASK`: the bits of [`ProtectRamInfo::flags`] HAXM looks at.
pub const HAX_RAM_PERM_MASK: u32 = 0x7;

/// The protections `HAX_VM_IOCTL_PROTECT_RAM` accepts: HAXM supports only none or all
/// (`flags & 7` must be 0 or 7).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RamPermission {
    /// `HAX_RAM_PERM_NONE`: every access exits with `HAX_EXIT_PAGEFAULT`.
    None = 0x0,
    /// `HAX_RAM_PERM_RWX`: unprotected.
    Rwx = 0x7,
}

impl TryFrom<u32> for RamPermission {
    type Error = UnknownValue;

    fn try_from(value: u32) -> Result<Self, UnknownValue> {
        match value & HAX_RAM_PERM_MASK {
            0 => Ok(Self::None),
            7 => Ok(Self::Rwx),
            _ => Err(UnknownValue {
                kind: "RAM permission",
                value: value.into(),
            }),
        }
    }
}

/// `hax_alloc_ram_info`: the argument of `HAX_VM_IOCTL_ALLOC_RAM` (32-bit size).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocRamInfo {
    /// `size` in bytes.
    pub size: u32,
    /// `pad`.
    pub pad: u32,
    /// `va`: the user buffer.
    pub va: u64,
}

impl_pod!(AllocRamInfo);
assert_layout!(AllocRamInfo, size = 16; size = 0, pad = 4, va = 8);

/// `hax_ramblock_info`: the argument of `HAX_VM_IOCTL_ADD_RAMBLOCK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamblockInfo {
    /// `start_va`: the user buffer.
    pub start_va: u64,
    /// `size` in bytes.
    pub size: u64,
    /// `reserved`: must be 0.
    pub reserved: u64,
}

impl_pod!(RamblockInfo);
assert_layout!(RamblockInfo, size = 24; start_va = 0, size = 8, reserved = 16);

/// `hax_set_ram_info`: the argument of `HAX_VM_IOCTL_SET_RAM`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetRamInfo {
    /// `pa_start`: guest-physical start.
    pub pa_start: u64,
    /// `size` in bytes.
    pub size: u32,
    /// `flags`: see [`SetRamInfo::flags`].
    pub flags: u8,
    /// `pad[3]`.
    pub pad: [u8; 3],
    /// `va`: host virtual address inside a registered RAM block (0 to unmap).
    pub va: u64,
}

impl_pod!(SetRamInfo);
assert_layout!(SetRamInfo, size = 24; pa_start = 0, size = 8, flags = 12, pad = 13, va = 16);

impl SetRamInfo {
    /// `flags`, typed (unknown bits kept).
    pub const fn flags(&self) -> RamFlags {
        RamFlags::from_bits_retain(self.flags as u32)
    }
}

/// `hax_set_ram_info2`: the argument of `HAX_VM_IOCTL_SET_RAM2` (64-bit size).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetRamInfo2 {
    /// `pa_start`: guest-physical start.
    pub pa_start: u64,
    /// `size` in bytes.
    pub size: u64,
    /// `va`: host virtual address (0 to unmap).
    pub va: u64,
    /// `flags`: see [`SetRamInfo2::flags`].
    pub flags: u32,
    /// `reserved1`: must be 0.
    pub reserved1: u32,
    /// `reserved2`: must be 0.
    pub reserved2: u64,
}

impl_pod!(SetRamInfo2);
assert_layout!(SetRamInfo2, size = 40;
    pa_start = 0, size = 8, va = 16, flags = 24, reserved1 = 28, reserved2 = 32);

impl SetRamInfo2 {
    /// `flags`, typed (unknown bits kept).
    pub const fn flags(&self) -> RamFlags {
        RamFlags::from_bits_retain(self.flags)
    }
}

/// `hax_protect_ram_info`: the argument of `HAX_VM_IOCTL_PROTECT_RAM`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtectRamInfo {
    /// `pa_start`: guest-physical start.
    pub pa_start: u64,
    /// `size` in bytes.
    pub size: u64,
    /// `flags`: see [`ProtectRamInfo::permission`].
    pub flags: u32,
    /// `reserved`: must be 0.
    pub reserved: u32,
}

impl_pod!(ProtectRamInfo);
assert_layout!(ProtectRamInfo, size = 24; pa_start = 0, size = 8, flags = 16, reserved = 20);

impl ProtectRamInfo {
    /// `flags & HAX_RAM_PERM_MASK`, typed; an error for the partial permissions HAXM refuses.
    pub fn permission(&self) -> Result<RamPermission, UnknownValue> {
        RamPermission::try_from(self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_permissions() {
        let s = SetRamInfo {
            flags: 0x81,
            ..Default::default()
        };
        assert_eq!(s.flags(), RamFlags::ROM | RamFlags::INVALID);
        let s2 = SetRamInfo2 {
            flags: 0x40,
            ..Default::default()
        };
        assert_eq!(s2.flags(), RamFlags::STANDALONE);
        let p = ProtectRamInfo {
            flags: 7,
            ..Default::default()
        };
        assert_eq!(p.permission(), Ok(RamPermission::Rwx));
        let p = ProtectRamInfo {
            flags: 8,
            ..Default::default()
        };
        assert_eq!(
            p.permission(),
            Ok(RamPermission::None),
            "bits above the mask ignored"
        );
        let p = ProtectRamInfo {
            flags: 1,
            ..Default::default()
        };
        assert!(p.permission().is_err());
    }
}
