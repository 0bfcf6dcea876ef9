//! The platform's pure page arithmetic, host-tested: bounds of a pin (what one MDL can
//! describe), bounds of a contiguous allocation, and the registry of pinned ranges that
//! [`rhax_core::dispatch::UserMapping::guest_page`] searches (its static signature gets only a
//! `Translation`, so the NT side finds the pin's MDL by the user address and physical page).

use alloc::vec::Vec;

use rhax_core::platform::PlatformError;

/// Bytes per page.
pub const PAGE_SIZE: u64 = 4096;

/// One past the highest user address a probe accepts on x64 (`MM_USER_PROBE_ADDRESS`,
/// 0x7FFF_FFFF_0000: the last 64 KiB below 128 TiB are a no-access guard).
pub const USER_PROBE_END: u64 = 0x7fff_ffff_0000;

/// The most pages one MDL may describe here: the MDL's `Size` field is a `CSHORT`, so the
/// header (0x30 bytes) and the PFN array (8 bytes a page) must fit in 32767 bytes (wdm.h
/// `MmSizeOfMdl`; newer Windows allows more, this bound holds on every version). rhax-core
/// pins 2-MiB chunks (at most 513 pages).
pub const MAX_MDL_PAGES: usize = (0x7fff - 0x30) / 8;
const _: () = assert!(0x30 + MAX_MDL_PAGES * 8 <= 0x7fff);
const _: () = assert!(0x30 + (MAX_MDL_PAGES + 1) * 8 > 0x7fff);
// A 2-MiB chunk that does not start on a page boundary still fits.
const _: () = assert!(MAX_MDL_PAGES >= 513);

/// The most pages one contiguous allocation may take (rhax-core asks for 1 or 2; the bound
/// keeps a bad count from asking the memory manager for a huge contiguous range).
pub const MAX_CONTIGUOUS_PAGES: usize = 512;

/// `ADDRESS_AND_SIZE_TO_SPAN_PAGES`: how many pages `len` bytes from `addr` touch.
pub fn span_pages(addr: u64, len: u64) -> Option<u64> {
    if len == 0 {
        return Some(0);
    }
    let first = addr / PAGE_SIZE;
    let last = addr.checked_add(len - 1)? / PAGE_SIZE;
    Some(last - first + 1)
}

/// Checks a pin request before any kernel call: a non-empty user range below
/// [`USER_PROBE_END`] (else `BadUserAddress`, as the probe would raise), one MDL long at most
/// (else `Unsupported`). Returns the number of pages.
pub fn check_pin(user_address: u64, len: usize) -> Result<usize, PlatformError> {
    let len64 = u64::try_from(len).map_err(|_| PlatformError::Unsupported)?;
    if len == 0 {
        return Err(PlatformError::BadUserAddress);
    }
    let end = user_address
        .checked_add(len64)
        .ok_or(PlatformError::BadUserAddress)?;
    if end > USER_PROBE_END {
        return Err(PlatformError::BadUserAddress);
    }
    // IoAllocateMdl takes a ULONG length.
    if u32::try_from(len).is_err() {
        return Err(PlatformError::Unsupported);
    }
    let pages = span_pages(user_address, len64).ok_or(PlatformError::BadUserAddress)?;
    if pages > MAX_MDL_PAGES as u64 {
        return Err(PlatformError::Unsupported);
    }
    Ok(pages as usize)
}

/// `STATUS_INSUFFICIENT_RESOURCES`.
const STATUS_INSUFFICIENT_RESOURCES: i32 = 0xc000_009a_u32 as i32;
/// `STATUS_WORKING_SET_QUOTA`: the process may not lock more pages.
const STATUS_WORKING_SET_QUOTA: i32 = 0xc000_00a1_u32 as i32;
/// `STATUS_QUOTA_EXCEEDED`.
const STATUS_QUOTA_EXCEEDED: i32 = 0xc000_0044_u32 as i32;

/// The error of a pin whose probe-and-lock raised `status`: a resource shortage is
/// `OutOfMemory`, anything else (STATUS_ACCESS_VIOLATION, a guard page, ...) a bad address.
pub fn pin_error(status: i32) -> PlatformError {
    match status {
        STATUS_INSUFFICIENT_RESOURCES | STATUS_WORKING_SET_QUOTA | STATUS_QUOTA_EXCEEDED => {
            PlatformError::OutOfMemory
        }
        _ => PlatformError::BadUserAddress,
    }
}

/// Checks a contiguous allocation of `count` pages; returns its size in bytes.
pub fn check_alloc(count: usize) -> Result<usize, PlatformError> {
    if count == 0 || count > MAX_CONTIGUOUS_PAGES {
        return Err(PlatformError::Unsupported);
    }
    count
        .checked_mul(PAGE_SIZE as usize)
        .ok_or(PlatformError::Unsupported)
}

/// One registered pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinned<T> {
    /// User address of its first byte.
    pub start: u64,
    /// Its length in bytes.
    pub len: usize,
    /// What the platform keeps with it (the MDL and its system mapping on Windows).
    pub value: T,
}

/// The live pins, sorted by start address (pins of different processes may overlap: the
/// caller confirms a candidate by its physical page).
#[derive(Debug)]
pub struct PinRegistry<T> {
    pins: Vec<Pinned<T>>,
}

impl<T> Default for PinRegistry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PinRegistry<T> {
    /// An empty registry (const: it lives in a static).
    pub const fn new() -> Self {
        PinRegistry { pins: Vec::new() }
    }

    /// Registers a pin; `Err` (nothing changed) when memory for the entry is short.
    pub fn insert(&mut self, pin: Pinned<T>) -> Result<(), Pinned<T>> {
        if self.pins.try_reserve(1).is_err() {
            return Err(pin);
        }
        let at = self.pins.partition_point(|p| p.start <= pin.start);
        self.pins.insert(at, pin);
        Ok(())
    }

    /// Removes the first pin for which `is` holds.
    pub fn remove(&mut self, is: impl Fn(&Pinned<T>) -> bool) -> Option<Pinned<T>> {
        let at = self.pins.iter().position(is)?;
        Some(self.pins.remove(at))
    }

    /// The first pin for which `is` holds.
    pub fn find_mut(&mut self, is: impl Fn(&Pinned<T>) -> bool) -> Option<&mut Pinned<T>> {
        self.pins.iter_mut().find(|p| is(p))
    }

    /// Number of registered pins.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// No pin registered.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_counts_touched_pages() {
        assert_eq!(span_pages(0x1000, 0), Some(0));
        assert_eq!(span_pages(0x1000, 1), Some(1));
        assert_eq!(span_pages(0x1000, 0x1000), Some(1));
        assert_eq!(span_pages(0x1fff, 2), Some(2));
        assert_eq!(span_pages(0x20_0000, 0x20_0000), Some(512));
        assert_eq!(span_pages(0x20_0800, 0x20_0000), Some(513));
        assert_eq!(span_pages(u64::MAX, 2), None);
    }

    #[test]
    fn pins_are_bounded_before_any_kernel_call() {
        assert_eq!(check_pin(0x10_0000, 0), Err(PlatformError::BadUserAddress));
        assert_eq!(
            check_pin(u64::MAX - 10, 100),
            Err(PlatformError::BadUserAddress)
        );
        assert_eq!(
            check_pin(USER_PROBE_END - 0x1000, 0x2000),
            Err(PlatformError::BadUserAddress)
        );
        assert_eq!(
            check_pin(0xffff_8000_0000_0000, 0x1000),
            Err(PlatformError::BadUserAddress),
            "kernel addresses are refused"
        );
        assert_eq!(check_pin(USER_PROBE_END - 0x1000, 0x1000), Ok(1));
        assert_eq!(check_pin(0x20_0000, 0x20_0000), Ok(512));
        assert_eq!(check_pin(0x1000, MAX_MDL_PAGES * 4096), Ok(MAX_MDL_PAGES));
        assert_eq!(
            check_pin(0x1000, MAX_MDL_PAGES * 4096 + 1),
            Err(PlatformError::Unsupported)
        );
        assert_eq!(
            check_pin(0x1000, 1 << 33),
            Err(PlatformError::Unsupported),
            "past a ULONG length"
        );
    }

    #[test]
    fn raised_statuses_become_typed_errors() {
        assert_eq!(
            pin_error(0xc000_0005_u32 as i32),
            PlatformError::BadUserAddress
        );
        assert_eq!(
            pin_error(0x8000_0001_u32 as i32),
            PlatformError::BadUserAddress
        );
        assert_eq!(
            pin_error(0xc000_009a_u32 as i32),
            PlatformError::OutOfMemory
        );
        assert_eq!(
            pin_error(0xc000_00a1_u32 as i32),
            PlatformError::OutOfMemory
        );
        assert_eq!(
            pin_error(0xc000_0044_u32 as i32),
            PlatformError::OutOfMemory
        );
    }

    #[test]
    fn allocations_are_bounded() {
        assert_eq!(check_alloc(0), Err(PlatformError::Unsupported));
        assert_eq!(check_alloc(1), Ok(4096));
        assert_eq!(check_alloc(2), Ok(8192));
        assert_eq!(
            check_alloc(MAX_CONTIGUOUS_PAGES + 1),
            Err(PlatformError::Unsupported)
        );
        assert_eq!(check_alloc(usize::MAX), Err(PlatformError::Unsupported));
    }

    fn pin(start: u64, len: usize, value: u32) -> Pinned<u32> {
        Pinned { start, len, value }
    }

    #[test]
    fn the_registry_finds_a_pin_by_identity_even_at_shared_addresses() {
        let mut r = PinRegistry::new();
        assert!(r.is_empty());
        for p in [
            pin(0x40_0000, 0x20_0000, 2),
            pin(0x20_0000, 0x20_0000, 1),
            pin(0x20_0000, 0x20_0000, 10), // another process, same addresses
            pin(0x80_0000, 0x1000, 3),
        ] {
            r.insert(p).unwrap();
        }
        assert_eq!(
            r.find_mut(|p| p.value == 10).map(|p| p.start),
            Some(0x20_0000)
        );
        assert_eq!(
            r.find_mut(|p| p.value == 1).map(|p| p.start),
            Some(0x20_0000)
        );
        r.find_mut(|p| p.value == 3).unwrap().value = 4;
        assert!(r.find_mut(|p| p.value == 3).is_none());
        assert_eq!(r.remove(|p| p.value == 10).map(|p| p.value), Some(10));
        assert!(r.find_mut(|p| p.value == 10).is_none());
        assert_eq!(r.len(), 3);
        assert!(!r.is_empty());
        assert!(r.remove(|p| p.value == 99).is_none());
    }
}
