//! Heap allocation for kernel paths: fallible (a kernel out of memory returns an error, it
//! does not bugcheck) and in place (a large value is never built on the kernel stack first:
//! Windows kernel stacks are 24 KiB and rhax's budget per frame is 2 KiB).

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::boxed::Box;
use core::ptr::NonNull;

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

// SAFETY: the FXSAVE image is plain integers and byte arrays.
unsafe impl Zeroable for rhax_api::fpu::FxLayout {}
