//! Heap allocation for kernel paths: fallible (a kernel out of memory returns an error, it
//! does not bugcheck) and in place (a large value is never built on the kernel stack first:
//! Windows kernel stacks are 24 KiB and rhax's budget per frame is 2 KiB).

use alloc::alloc::{alloc, alloc_zeroed, Layout};
use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::platform::PlatformError;
use core::ptr::NonNull;

/// Reserves room for `additional` more elements, or reports the kernel out of memory.
pub fn try_reserve<T>(v: &mut Vec<T>, additional: usize) -> Result<(), PlatformError> {
    v.try_reserve(additional)
        .map_err(|_| PlatformError::OutOfMemory)
}

/// Pushes after a fallible reservation.
pub fn try_push<T>(v: &mut Vec<T>, value: T) -> Result<(), PlatformError> {
    try_reserve(v, 1)?;
    v.push(value);
    Ok(())
}

/// `Box::new` that hands the value back instead of aborting when the allocation fails
/// (`Box::try_new` is not stable).
pub fn try_box<T>(value: T) -> Result<Box<T>, T> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        // A zero-sized box allocates nothing.
        return Ok(Box::new(value));
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let raw = unsafe { alloc(layout) }.cast::<T>();
    let Some(ptr) = NonNull::new(raw) else {
        return Err(value);
    };
    // SAFETY: `ptr` is a fresh allocation with `T`'s size and alignment, valid for writes.
    unsafe { ptr.as_ptr().write(value) };
    // SAFETY: allocated by the global allocator with `Layout::new::<T>()` and initialised
    // above: what `Box::from_raw` requires; ownership passes to the box.
    Ok(unsafe { Box::from_raw(ptr.as_ptr()) })
}

/// Types for which the all-zero bit pattern is a valid value.
///
/// # Safety
/// Every field of the type must be valid when all its bytes are zero (integers, arrays of
/// them, `bool` false, `Option<Box<_>>` none...): no references, no non-null pointers, no
/// enums without a zero discriminant.
pub unsafe trait Zeroable {}

/// A zeroed `T` on the heap, allocated fallibly and in place; `None` when memory is short.
pub fn try_zeroed<T: Zeroable>() -> Option<Box<T>> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        // SAFETY: `T: Zeroable`, and a zero-sized value has no bytes to be invalid.
        return Some(Box::new(unsafe { core::mem::zeroed() }));
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let raw = unsafe { alloc_zeroed(layout) }.cast::<T>();
    let ptr = NonNull::new(raw)?;
    // SAFETY: allocated by the global allocator with `Layout::new::<T>()`, all bytes zero,
    // which is a valid `T` (`T: Zeroable`): what `Box::from_raw` requires.
    Some(unsafe { Box::from_raw(ptr.as_ptr()) })
}

// SAFETY: an array of zeroable values is zeroable.
unsafe impl<T: Zeroable, const N: usize> Zeroable for [T; N] {}

// SAFETY: all zero is `None`: `ManuallyDrop` is `repr(transparent)` and `Option<Box<T>>` uses
// the null pointer for `None` (guaranteed, `core::option` "Representation").
unsafe impl<T> Zeroable for Option<core::mem::ManuallyDrop<Box<T>>> {}

// SAFETY: as above.
unsafe impl<T> Zeroable for Option<Box<T>> {}

// SAFETY: the FXSAVE image is plain integers and byte arrays.
unsafe impl Zeroable for rhax_api::fpu::FxLayout {}
// SAFETY: integers and byte arrays (`Pod`): all zero is a valid (empty) XSAVE area.
unsafe impl Zeroable for rhax_api::fpu::XsaveArea {}
// SAFETY: integers and a byte array (`Pod`): all zero is a valid (if unversioned) state.
unsafe impl Zeroable for rhax_api::apic::RhaxApicState {}
