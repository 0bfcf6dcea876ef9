//! `hax_cpuid` and `hax_cpuid_entry`: the arguments of `HAX_VCPU_IOCTL_SET_CPUID` /
//! `HAX_VCPU_IOCTL_GET_CPUID`.
//!
//! Source: HAXM 7.8.0 `include/hax_interface.h`, measured in `haxm-abi.md` §3. The C
//! `hax_cpuid` is an 8-byte header followed by a flexible array `entries[0]` (stride 40,
//! starting at offset 8). Here that is [`Cpuid<N>`] with `N` entries inline; [`CpuidHeader`]
//! (`Cpuid<0>`) is the C type itself.

use core::mem::size_of;

use crate::pod::{assert_layout, impl_pod, Pod};

/// `HAX_MAX_CPUID_ENTRIES`: the most entries SET_CPUID accepts.
pub const HAX_MAX_CPUID_ENTRIES: usize = 64;

/// The number of leaves HAXM 7.8.0 holds and GET_CPUID returns: a GET_CPUID whose `total` is
/// smaller fails (POSIX) or returns only the header (Windows), with `total` set to this.
pub const HAXM_CPUID_LEAVES: usize = 18;

/// `hax_cpuid_entry`: one CPUID leaf/subleaf and its result.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidEntry {
    /// `function`: EAX input.
    pub function: u32,
    /// `index`: ECX input (subleaf).
    pub index: u32,
    /// `flags`.
    pub flags: u32,
    /// `eax`.
    pub eax: u32,
    /// `ebx`.
    pub ebx: u32,
    /// `ecx`.
    pub ecx: u32,
    /// `edx`.
    pub edx: u32,
    /// `pad[3]`.
    pub pad: [u32; 3],
}

impl_pod!(CpuidEntry);
assert_layout!(CpuidEntry, size = 40, align = 4;
    function = 0, index = 4, flags = 8, eax = 12, ebx = 16, ecx = 20, edx = 24, pad = 28);

/// `hax_cpuid` with room for `N` entries: the header then `entries[N]`, laid out exactly as
/// the C header followed by its flexible array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpuid<const N: usize> {
    /// `total`: the number of valid entries.
    pub total: u32,
    /// `pad`.
    pub pad: u32,
    /// `entries[]`.
    pub entries: [CpuidEntry; N],
}

/// `hax_cpuid` as C declares it: the 8-byte header alone.
pub type CpuidHeader = Cpuid<0>;

/// A [`Cpuid`] with room for [`HAX_MAX_CPUID_ENTRIES`] entries.
pub type CpuidTable = Cpuid<HAX_MAX_CPUID_ENTRIES>;

// SAFETY: `#[repr(C)]` of two `u32`s and an array of `Pod` `CpuidEntry` (alignment 4, size
// 40): the array starts at offset 8 and the total is `8 + 40 * N`, a multiple of the
// alignment 4, so there is no padding for any `N` (asserted below for several `N`).
unsafe impl<const N: usize> Pod for Cpuid<N> {}

impl<const N: usize> Default for Cpuid<N> {
    /// All-zero.
    fn default() -> Self {
        Self::zeroed()
    }
}

assert_layout!(CpuidHeader, size = 8, align = 4; total = 0, pad = 4, entries = 8);
assert_layout!(Cpuid<1>, size = 48; entries = 8);
assert_layout!(Cpuid<2>, size = 88; entries = 8);
assert_layout!(CpuidTable, size = 8 + 40 * 64; entries = 8);

/// The byte size of a `hax_cpuid` carrying `total` entries: `8 + 40 * total`, or `None` on
/// overflow.
pub const fn cpuid_size(total: usize) -> Option<usize> {
    match total.checked_mul(size_of::<CpuidEntry>()) {
        Some(n) => n.checked_add(size_of::<CpuidHeader>()),
        None => None,
    }
}

impl<const N: usize> Cpuid<N> {
    /// A table holding `entries`, `total` set to their number; `None` if there are more than
    /// `N` (or more than `u32::MAX`).
    pub fn from_entries(entries: &[CpuidEntry]) -> Option<Self> {
        let total = u32::try_from(entries.len()).ok()?;
        let mut dst = Self::default();
        dst.entries
            .get_mut(..entries.len())?
            .copy_from_slice(entries);
        dst.total = total;
        Some(dst)
    }

    /// The valid entries: the first `min(total, N)`.
    pub fn entries(&self) -> &[CpuidEntry] {
        let n = (self.total as usize).min(N);
        &self.entries[..n]
    }

    /// The number of bytes a driver reads or writes for this table: header plus `total`
    /// entries, capped at `N` entries. This is the buffer length to pass to the IOCTL.
    pub fn byte_len(&self) -> usize {
        // Cannot overflow: bounded by size_of::<Self>().
        size_of::<CpuidHeader>() + core::mem::size_of_val(self.entries())
    }

    /// The header and the valid entries, as bytes.
    pub fn used_bytes(&self) -> &[u8] {
        &self.as_bytes()[..self.byte_len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_entries() {
        assert_eq!(cpuid_size(0), Some(8));
        assert_eq!(cpuid_size(64), Some(2568));
        assert_eq!(cpuid_size(usize::MAX), None);
        let e = CpuidEntry {
            function: 1,
            eax: 0x906ea,
            ..Default::default()
        };
        let t = CpuidTable::from_entries(&[e, e]).unwrap();
        assert_eq!(t.total, 2);
        assert_eq!(t.entries(), &[e, e]);
        assert_eq!(t.byte_len(), 88);
        // The second entry's `eax` is at 8 + 40 + 12, as in the C flexible array.
        assert_eq!(&t.used_bytes()[60..64], &0x906eau32.to_le_bytes());
        assert!(Cpuid::<1>::from_entries(&[e, e]).is_none());
        let h = CpuidHeader {
            total: 18,
            ..Default::default()
        };
        assert_eq!(h.entries().len(), 0);
        assert_eq!(h.byte_len(), 8);
    }
}
