//! The global allocator: non-paged, no-execute pool, tag `rhax`.
//!
//! `ExAllocatePool2(POOL_FLAG_NON_PAGED)` exists from Windows 10 2004 (windows-cross-build.md
//! P17), and not at all in Wine 8.0: importing it would stop the image from loading on 1809 and
//! abort under Wine. It is resolved once at load with `MmGetSystemRoutineAddress`; without it,
//! `ExAllocatePoolWithTag(NonPagedPoolNx)` (Windows 8+, and Wine) serves the same memory.
//!
//! Fallible: a failed allocation returns null (the core's allocations are all fallible and
//! report out of memory); nothing here panics. Pool blocks are 16-byte aligned on x64 (blocks
//! of a page or more are page-aligned); larger alignments are served by over-allocating and
//! keeping the pool block's address just below the aligned block.

#[cfg(rhax_nt)]
use core::alloc::GlobalAlloc;
use core::alloc::Layout;
#[cfg(rhax_nt)]
use core::ffi::c_void;
#[cfg(rhax_nt)]
use core::sync::atomic::{AtomicPtr, Ordering};

#[cfg(rhax_nt)]
use crate::nt::ex::{
    ExAllocatePool2Fn, ExAllocatePoolWithTag, ExFreePoolWithTag, NON_PAGED_POOL_NX,
    POOL_FLAG_NON_PAGED, POOL_FLAG_UNINITIALIZED,
};
#[cfg(rhax_nt)]
use crate::nt::{MmGetSystemRoutineAddress, UNICODE_STRING};

/// The pool tag, shown as `rhax` by `!poolused` and PoolMon (the first byte is the lowest).
pub const TAG: u32 = u32::from_le_bytes(*b"rhax");

#[cfg(rhax_nt)]
/// The alignment every pool block has (x64 `POOL_HEADER` granularity).
const POOL_ALIGN: usize = 16;

#[cfg(rhax_nt)]
/// `ExAllocatePool2`, when this kernel has it (set once by [`init`]).
static ALLOCATE_POOL2: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

#[cfg(rhax_nt)]
/// Resolves `ExAllocatePool2` (DriverEntry, PASSIVE_LEVEL, before the first allocation).
/// Returns whether it was found.
pub fn init() -> bool {
    let name: [u16; 15] = [
        b'E' as u16,
        b'x' as u16,
        b'A' as u16,
        b'l' as u16,
        b'l' as u16,
        b'o' as u16,
        b'c' as u16,
        b'a' as u16,
        b't' as u16,
        b'e' as u16,
        b'P' as u16,
        b'o' as u16,
        b'o' as u16,
        b'l' as u16,
        b'2' as u16,
    ];
    let Some(us) = UNICODE_STRING::from_slice(&name) else {
        return false;
    };
    // SAFETY: a valid counted string that outlives the call; PASSIVE_LEVEL (DriverEntry).
    let f = unsafe { MmGetSystemRoutineAddress(&us) };
    ALLOCATE_POOL2.store(f, Ordering::Release);
    !f.is_null()
}

#[cfg(rhax_nt)]
/// A pool block of `bytes`, 16-byte aligned, or null.
fn pool_alloc(bytes: usize) -> *mut u8 {
    let f = ALLOCATE_POOL2.load(Ordering::Acquire);
    if f.is_null() {
        // SAFETY: NonPagedPoolNx at IRQL <= DISPATCH_LEVEL; returns null on failure.
        unsafe { ExAllocatePoolWithTag(NON_PAGED_POOL_NX, bytes, TAG) }.cast()
    } else {
        // SAFETY: `f` is ntoskrnl's `ExAllocatePool2` export (resolved by name in `init`),
        // whose documented signature `ExAllocatePool2Fn` declares.
        let f: ExAllocatePool2Fn = unsafe { core::mem::transmute::<*mut c_void, _>(f) };
        // SAFETY: non-paged NX pool, uninitialized like `GlobalAlloc::alloc` allows; null on
        // failure (no POOL_FLAG_RAISE_ON_FAILURE).
        unsafe { f(POOL_FLAG_NON_PAGED | POOL_FLAG_UNINITIALIZED, bytes, TAG) }.cast()
    }
}

#[cfg(rhax_nt)]
/// Frees a block of [`pool_alloc`].
///
/// # Safety
/// `p` came from `pool_alloc` and is not used after.
unsafe fn pool_free(p: *mut u8) {
    // SAFETY: the caller's contract; both allocation routes free with ExFreePoolWithTag.
    unsafe { ExFreePoolWithTag(p.cast(), TAG) }
}

/// Bytes to take from pool for `layout` when its alignment is above the pool's: the block,
/// the worst-case distance to the next aligned address, and the pool block's address kept
/// just below the aligned one. `None` on overflow.
pub fn over_allocation(layout: Layout) -> Option<usize> {
    layout
        .size()
        .checked_add(layout.align())?
        .checked_add(size_of::<usize>())
}

/// Where in a pool block at `raw` (16-aligned) the aligned block starts: the first multiple
/// of `align` (a power of two above 16) with room for a usize before it.
pub fn aligned_offset(raw: usize, align: usize) -> usize {
    let aligned = (raw + size_of::<usize>() + align - 1) & !(align - 1);
    aligned - raw
}

#[cfg(rhax_nt)]
/// The allocator.
pub struct Pool;

#[cfg(rhax_nt)]
// SAFETY: blocks are at least `layout.size()` bytes, aligned to `layout.align()` (pool
// alignment, or the over-allocation below), distinct while live, and freed once.
unsafe impl GlobalAlloc for Pool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= POOL_ALIGN {
            return pool_alloc(layout.size());
        }
        let Some(total) = over_allocation(layout) else {
            return core::ptr::null_mut();
        };
        let raw = pool_alloc(total);
        if raw.is_null() {
            return raw;
        }
        let offset = aligned_offset(raw as usize, layout.align());
        let p = raw.wrapping_add(offset);
        // `offset >= 8`, `offset + size <= total`, and `p` is a multiple of an alignment > 16,
        // so the usize just below it is inside the block and 8-aligned.
        let slot = p.wrapping_sub(size_of::<usize>()).cast::<usize>();
        // SAFETY: inside the pool block, aligned (above).
        unsafe { slot.write(raw as usize) };
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if layout.align() <= POOL_ALIGN {
            // SAFETY: `p` is a pool block (`alloc`'s first branch, same layout).
            unsafe { pool_free(p) };
            return;
        }
        let slot = p.wrapping_sub(size_of::<usize>()).cast::<usize>();
        // SAFETY: `alloc` stored the pool block's address just below `p`.
        let raw = unsafe { slot.read() };
        // SAFETY: `raw` is the pool block `p` was carved from.
        unsafe { pool_free(raw as *mut u8) };
    }
}

#[cfg(rhax_nt)]
#[global_allocator]
static POOL: Pool = Pool;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_blocks_fit_in_the_over_allocation() {
        for align in [32usize, 64, 4096, 1 << 16] {
            for size in [1usize, 31, 4096, 100_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                let total = over_allocation(layout).expect("no overflow");
                for raw in (0x1000usize..0x1000 + 2 * align).step_by(16) {
                    let off = aligned_offset(raw, align);
                    assert_eq!((raw + off) % align, 0, "aligned");
                    assert!(off >= size_of::<usize>(), "room for the block address");
                    assert!(off + size <= total, "inside the pool block");
                }
            }
        }
    }

    #[test]
    fn the_largest_layout_is_counted_exactly() {
        // Layout caps the size at isize::MAX (rounded to the alignment), so the sum fits.
        let layout = Layout::from_size_align(isize::MAX as usize - 63, 64).expect("layout");
        assert_eq!(over_allocation(layout), Some(isize::MAX as usize + 1 + 8));
    }
}
