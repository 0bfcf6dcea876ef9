//! Hand-written NT declarations (windows-cross-build.md: windows-sys has wrong x64 layouts and
//! declares kernel exports as ntdll imports; wdk-sys needs the WDK on Windows). Every structure
//! used has its documented x64 offsets asserted at compile time; every function is imported from
//! `ntoskrnl.exe` (raw-dylib, `+verbatim`: the DLL name is exactly that, pitfall P8).
//!
//! Functions newer than Windows 10 1809 are not imported: they are resolved at run time with
//! [`MmGetSystemRoutineAddress`] (`crate::pool` for `ExAllocatePool2`), so the image loads on
//! every Windows 10/11 and under Wine 8.0, whose ntoskrnl lacks them.

#![allow(non_snake_case, non_camel_case_types, missing_docs)]

use core::ffi::c_void;

// Rooms by owner: `io` (I/O manager objects and calls, object security) and `ex` (pool, the
// shell's mutex) belong to the shell; `mm` (memory, MDLs) and `ke` (processors, IRQL, IPIs,
// DPCs) to the platform. No Rtl security call is imported: the device security descriptors
// are built as bytes (`crate::devices`, host-tested).
pub mod ex;
pub mod io;
pub mod ke;
pub mod mm;

pub use ex::{ExAllocatePoolWithTag, ExFreePoolWithTag};
pub use io::IoCreateDevice;

pub type NTSTATUS = i32;

/// `NT_SUCCESS`: success and informational statuses are non-negative.
pub const fn nt_success(status: NTSTATUS) -> bool {
    status >= 0
}

/// `UNICODE_STRING` (x64: Length 0, MaximumLength 2, Buffer 8; size 16).
#[repr(C)]
pub struct UNICODE_STRING {
    /// Bytes, not characters, without a terminating NUL.
    pub Length: u16,
    pub MaximumLength: u16,
    pub Buffer: *const u16,
}
const _: () = {
    assert!(core::mem::size_of::<UNICODE_STRING>() == 16);
    assert!(core::mem::offset_of!(UNICODE_STRING, MaximumLength) == 2);
    assert!(core::mem::offset_of!(UNICODE_STRING, Buffer) == 8);
};

impl UNICODE_STRING {
    /// A counted string over `s` (which the caller keeps alive while the string is used).
    /// `None` when `s` is too long for the 16-bit byte count.
    pub fn from_slice(s: &[u16]) -> Option<UNICODE_STRING> {
        let bytes = u16::try_from(s.len().checked_mul(2)?).ok()?;
        Some(UNICODE_STRING {
            Length: bytes,
            MaximumLength: bytes,
            Buffer: s.as_ptr(),
        })
    }
}

/// Private bug check code of rhax.sys ("RHAX" in ASCII) for a broken invariant (a Rust panic):
/// parameter 1 is the source line, 2 the address of the file name's first byte (visible in
/// a dump), 3 and 4 zero. Not a Microsoft-documented code: `!analyze` shows it as unknown,
/// the DbgPrint line before it (`rhax: panic at FILE:LINE`) names the place.
pub const RHAX_BUGCHECK: u32 = 0x5248_4158;

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    /// printf-style: user text only ever goes in as a `%s` argument (`crate::log`).
    pub fn DbgPrint(format: *const u8, ...) -> u32;
    /// `DbgPrint` with a component and level (`crate::log`).
    pub fn DbgPrintEx(component: u32, level: u32, format: *const u8, ...) -> u32;
    /// Resolves an ntoskrnl or HAL export by name (PASSIVE_LEVEL); null when absent.
    pub fn MmGetSystemRoutineAddress(name: *const UNICODE_STRING) -> *mut c_void;
    pub fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> !;
}
