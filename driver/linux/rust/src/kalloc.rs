//! The global allocator: kmalloc through the glue, with the size [`kmalloc_size`] picks for
//! the alignment (GFP_ATOMIC inside a lend, GFP_KERNEL elsewhere: the glue decides).

use core::alloc::{GlobalAlloc, Layout};

use crate::ffi;
use crate::layout::kmalloc_size;

/// The allocator over kmalloc/kfree.
struct Kmalloc;

// SAFETY: every block comes from kmalloc with a size that gives the requested alignment
// (`crate::layout`), and is freed with kfree exactly once by the caller's
// contract.
unsafe impl GlobalAlloc for Kmalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match kmalloc_size(layout) {
            // SAFETY: any size; null on failure.
            Some(size) => unsafe { ffi::rhax_glue_kmalloc(size, layout.align()) },
            None => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` (GlobalAlloc's contract).
        unsafe { ffi::rhax_glue_kfree(ptr) }
    }
}

#[global_allocator]
static ALLOCATOR: Kmalloc = Kmalloc;
