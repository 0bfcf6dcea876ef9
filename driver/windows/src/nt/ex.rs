//! Executive: pool allocation, and the dispatcher mutex that serializes the shell's device
//! table (device creation runs at PASSIVE_LEVEL, so a spin lock cannot be held across it).

use core::ffi::c_void;

/// `NonPagedPoolNx` (`POOL_TYPE` 512, Windows 8+): non-paged, not executable (HVCI-compatible).
pub const NON_PAGED_POOL_NX: u32 = 512;
/// `POOL_FLAG_NON_PAGED` of `ExAllocatePool2` (Windows 10 2004+): non-paged, NX.
pub const POOL_FLAG_NON_PAGED: u64 = 0x40;
/// `POOL_FLAG_UNINITIALIZED`: `ExAllocatePool2` zeroes unless asked not to.
pub const POOL_FLAG_UNINITIALIZED: u64 = 0x2;

/// `ExAllocatePool2`'s signature (resolved at run time: Windows 10 2004+, absent in Wine 8.0).
pub type ExAllocatePool2Fn =
    unsafe extern "system" fn(flags: u64, bytes: usize, tag: u32) -> *mut c_void;

/// `KMUTEX` (x64: DISPATCHER_HEADER 0x18, MutantListEntry 0x10, OwnerThread 8, Abandoned 1,
/// ApcDisable 1, padding; size 0x38). Opaque here: only its size and alignment matter, and
/// it must live in non-paged memory.
#[repr(C, align(8))]
pub struct KMUTEX {
    _opaque: [u8; 0x38],
}
const _: () = assert!(core::mem::size_of::<KMUTEX>() == 0x38);

/// `KWAIT_REASON::Executive`.
pub const EXECUTIVE: u32 = 0;
/// `KPROCESSOR_MODE::KernelMode`.
pub const KERNEL_MODE: i8 = 0;

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    pub fn ExAllocatePoolWithTag(pool_type: u32, bytes: usize, tag: u32) -> *mut c_void;
    pub fn ExFreePoolWithTag(p: *mut c_void, tag: u32);
    pub fn KeInitializeMutex(mutex: *mut KMUTEX, level: u32);
    pub fn KeWaitForSingleObject(
        object: *mut c_void,
        wait_reason: u32,
        wait_mode: i8,
        alertable: u8,
        timeout: *const i64,
    ) -> i32;
    pub fn KeReleaseMutex(mutex: *mut KMUTEX, wait: u8) -> i32;
}
