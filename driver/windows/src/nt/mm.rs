//! Memory manager declarations (PLAT helper's room): contiguous pages, physical addresses,
//! MDLs (probe-and-lock, mapping into a process), and the process context a user mapping
//! belongs to. Layouts and constants are the documented x64 values of wdm.h; each structure
//! offset used is asserted below.

#![allow(non_upper_case_globals)]

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

/// `PHYSICAL_ADDRESS` (a `LARGE_INTEGER`, passed by value in one register on x64).
pub type PHYSICAL_ADDRESS = i64;
/// `KPROCESSOR_MODE` (`CCHAR`).
pub type KPROCESSOR_MODE = i8;
/// `KernelMode`.
pub const KernelMode: KPROCESSOR_MODE = 0;
/// `UserMode`.
pub const UserMode: KPROCESSOR_MODE = 1;

/// `LOCK_OPERATION::IoWriteAccess` (the pages will be written: guest RAM).
pub const IoWriteAccess: i32 = 1;
/// `MEMORY_CACHING_TYPE::MmCached`.
pub const MmCached: i32 = 1;
/// `MM_PAGE_PRIORITY::NormalPagePriority`.
pub const NormalPagePriority: u32 = 16;
/// `MdlMappingNoExecute` (Windows 8+), OR-ed into the priority: the mapping is NX.
pub const MdlMappingNoExecute: u32 = 0x4000_0000;

/// `MDL_MAPPED_TO_SYSTEM_VA`: `MappedSystemVa` holds a system-space mapping.
pub const MDL_MAPPED_TO_SYSTEM_VA: i16 = 0x0001;
/// `MDL_SOURCE_IS_NONPAGED_POOL`: `MappedSystemVa` is the buffer itself (MmBuildMdlForNonPagedPool).
pub const MDL_SOURCE_IS_NONPAGED_POOL: i16 = 0x0004;

/// `MDL` (wdm.h). The PFN array (`PFN_NUMBER`, 8 bytes on x64) follows the header directly:
/// `MmGetMdlPfnArray(mdl)` is `(PPFN_NUMBER)(mdl + 1)`.
#[repr(C)]
pub struct MDL {
    pub Next: *mut MDL,
    pub Size: i16,
    pub MdlFlags: i16,
    pub AllocationProcessorNumber: u16,
    pub Reserved: u16,
    pub Process: *mut c_void,
    pub MappedSystemVa: *mut c_void,
    pub StartVa: *mut c_void,
    pub ByteCount: u32,
    pub ByteOffset: u32,
}
const _: () = assert!(size_of::<MDL>() == 0x30);
const _: () = assert!(offset_of!(MDL, Size) == 0x08);
const _: () = assert!(offset_of!(MDL, MdlFlags) == 0x0a);
const _: () = assert!(offset_of!(MDL, Process) == 0x10);
const _: () = assert!(offset_of!(MDL, MappedSystemVa) == 0x18);
const _: () = assert!(offset_of!(MDL, StartVa) == 0x20);
const _: () = assert!(offset_of!(MDL, ByteCount) == 0x28);
const _: () = assert!(offset_of!(MDL, ByteOffset) == 0x2c);

/// `PFN_NUMBER` (`ULONG_PTR`).
pub type PFN_NUMBER = u64;

/// `MmGetMdlPfnArray`: the PFN array right after the header.
///
/// # Safety
/// `mdl` points to an MDL allocated by `IoAllocateMdl` (header plus PFN array).
pub unsafe fn mdl_pfn_array(mdl: *mut MDL) -> *const PFN_NUMBER {
    // SAFETY: the PFN array is part of the same allocation, right after the header (wdm.h
    // MmGetMdlPfnArray); the caller guarantees `mdl` is such an allocation.
    unsafe { mdl.add(1) }.cast()
}

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    /// IRQL <= DISPATCH_LEVEL. Not zeroed. NULL when no such range exists.
    pub fn MmAllocateContiguousMemorySpecifyCache(
        bytes: usize,
        lowest: PHYSICAL_ADDRESS,
        highest: PHYSICAL_ADDRESS,
        boundary: PHYSICAL_ADDRESS,
        cache_type: i32,
    ) -> *mut c_void;
    /// IRQL == PASSIVE_LEVEL (documented; APC_LEVEL tolerated).
    pub fn MmFreeContiguousMemory(base: *mut c_void);
    /// Any IRQL for non-paged memory.
    pub fn MmGetPhysicalAddress(base: *mut c_void) -> PHYSICAL_ADDRESS;
    /// IRQL <= DISPATCH_LEVEL. NULL when out of memory.
    pub fn IoAllocateMdl(
        va: *mut c_void,
        length: u32,
        secondary: u8,
        charge_quota: u8,
        irp: *mut c_void,
    ) -> *mut MDL;
    /// IRQL <= DISPATCH_LEVEL.
    pub fn IoFreeMdl(mdl: *mut MDL);
    /// RAISES on failure: call only through `crate::seh::probe_and_lock`. IRQL <= APC_LEVEL
    /// for pageable (user) memory.
    pub fn MmProbeAndLockPages(mdl: *mut MDL, mode: KPROCESSOR_MODE, operation: i32);
    /// IRQL <= DISPATCH_LEVEL.
    pub fn MmUnlockPages(mdl: *mut MDL);
    /// IRQL <= DISPATCH_LEVEL; the MDL describes non-paged memory.
    pub fn MmBuildMdlForNonPagedPool(mdl: *mut MDL);
    /// KernelMode: IRQL <= DISPATCH_LEVEL, NULL on failure (BugCheckOnFailure FALSE).
    /// UserMode: IRQL <= APC_LEVEL, RAISES on failure: only through
    /// `crate::seh::map_locked_pages`.
    pub fn MmMapLockedPagesSpecifyCache(
        mdl: *mut MDL,
        mode: KPROCESSOR_MODE,
        cache_type: i32,
        requested: *mut c_void,
        bug_check_on_failure: u32,
        priority: u32,
    ) -> *mut c_void;
    /// User mappings: IRQL <= APC_LEVEL, in the context of the process mapped into.
    pub fn MmUnmapLockedPages(base: *mut c_void, mdl: *mut MDL);
    /// The calling thread's process (`PEPROCESS`). Any IRQL.
    pub fn IoGetCurrentProcess() -> *mut c_void;
    /// `ObReferenceObject`. IRQL <= DISPATCH_LEVEL.
    pub fn ObfReferenceObject(object: *mut c_void) -> isize;
    /// `ObDereferenceObject`. IRQL <= DISPATCH_LEVEL.
    pub fn ObfDereferenceObject(object: *mut c_void) -> isize;
}

/// Entry `index` of an MDL's PFN array.
///
/// # Safety
/// `mdl` is a locked (or built) MDL from `IoAllocateMdl`, and `index` is below the number of
/// pages it describes.
pub unsafe fn mdl_pfn(mdl: *mut MDL, index: usize) -> PFN_NUMBER {
    // SAFETY: the caller's MDL.
    let array = unsafe { mdl_pfn_array(mdl) };
    // SAFETY: `index` is within the array (caller's contract).
    let entry = unsafe { array.add(index) };
    // SAFETY: an initialized entry of a locked MDL.
    unsafe { entry.read() }
}
