//! Calls that raise structured exceptions, made safe to call from Rust through the C shim
//! `seh/seh.c` (compiled by `build.rs` with clang, `__try`/`__except`). Rust code must never
//! let an SEH exception unwind through its frames (panic=abort, no landing pads), so every
//! ntoskrnl call documented to raise goes through here and comes back as an `NTSTATUS`.
//!
//! The shim's `__except` needs `__C_specific_handler`, which ntoskrnl.exe exports (so does
//! Wine's): it is imported here so the linker resolves the shim's unwind data against it.
//!
//! UNVERIFIED on real Windows: the shim is compiled and linked (`cargo xtask sys`), but no
//! exception has ever been raised through it (Wine stubs both callees, and the Wine path
//! never pins or maps).

use core::ffi::c_void;

use crate::nt::mm::{self, KPROCESSOR_MODE, MDL};
use crate::nt::NTSTATUS;

type ProbeFn = unsafe extern "system" fn(*mut MDL, KPROCESSOR_MODE, i32);
type MapFn =
    unsafe extern "system" fn(*mut MDL, KPROCESSOR_MODE, i32, *mut c_void, u32, u32) -> *mut c_void;

extern "C" {
    fn rhax_seh_probe_and_lock(
        probe: ProbeFn,
        mdl: *mut MDL,
        mode: KPROCESSOR_MODE,
        operation: i32,
    ) -> NTSTATUS;
    fn rhax_seh_map_locked_pages(
        map: MapFn,
        mdl: *mut MDL,
        mode: KPROCESSOR_MODE,
        cache_type: i32,
        priority: u32,
        out: *mut *mut c_void,
    ) -> NTSTATUS;
}

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "C" {
    /// The language-specific handler of `__try`/`__except` on x64 (referenced by the shim's
    /// `.xdata`; never called from Rust).
    fn __C_specific_handler();
}

/// Keeps the `__C_specific_handler` import in the image (the shim's unwind data points at it).
#[used]
static C_SPECIFIC_HANDLER: unsafe extern "C" fn() = __C_specific_handler;

/// `MmProbeAndLockPages(mdl, mode, operation)`, with the exception it raises on an invalid or
/// inaccessible range returned as `Err(code)`.
///
/// # Safety
/// `mdl` comes from `IoAllocateMdl` and is not locked yet; IRQL <= APC_LEVEL for user memory,
/// in the context of the process owning the range.
pub unsafe fn probe_and_lock(
    mdl: *mut MDL,
    mode: KPROCESSOR_MODE,
    operation: i32,
) -> Result<(), NTSTATUS> {
    // SAFETY: the shim calls MmProbeAndLockPages inside __try (its only effect), with the
    // caller's guarantees about the MDL and the context.
    let status = unsafe { rhax_seh_probe_and_lock(mm::MmProbeAndLockPages, mdl, mode, operation) };
    if status == 0 {
        Ok(())
    } else {
        Err(status)
    }
}

/// `MmMapLockedPagesSpecifyCache(mdl, mode, cache_type, NULL, FALSE, priority)`, with the
/// exception a user-mode mapping raises on failure returned as `Err(code)` (a NULL result
/// too, as `Err(0)`).
///
/// # Safety
/// `mdl` describes locked or non-paged pages (probe-and-lock or MmBuildMdlForNonPagedPool);
/// for `UserMode`, IRQL <= APC_LEVEL in the context of the process to map into.
pub unsafe fn map_locked_pages(
    mdl: *mut MDL,
    mode: KPROCESSOR_MODE,
    cache_type: i32,
    priority: u32,
) -> Result<*mut c_void, NTSTATUS> {
    let mut va: *mut c_void = core::ptr::null_mut();
    // SAFETY: the shim calls MmMapLockedPagesSpecifyCache inside __try and stores the result
    // in `va`, a live local.
    let status = unsafe {
        rhax_seh_map_locked_pages(
            mm::MmMapLockedPagesSpecifyCache,
            mdl,
            mode,
            cache_type,
            priority,
            &mut va,
        )
    };
    match status {
        0 if !va.is_null() => Ok(va),
        0 => Err(0),
        e => Err(e),
    }
}
