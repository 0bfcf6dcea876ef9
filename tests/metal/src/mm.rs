//! Physical memory: a page allocator over the RAM above the kernel (identity-mapped, so a
//! physical address is also a pointer) and the global allocator on top of it.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;

use crate::sync::SpinLock;

/// Size of a page.
pub const PAGE: u64 = 4096;
const MAX_RUNS: usize = 256;

/// Free runs of pages, sorted by address and coalesced.
struct Runs {
    start: [u64; MAX_RUNS],
    pages: [u64; MAX_RUNS],
    len: usize,
    total: u64,
}

static FREE: SpinLock<Runs> = SpinLock::new(Runs {
    start: [0; MAX_RUNS],
    pages: [0; MAX_RUNS],
    len: 0,
    total: 0,
});

impl Runs {
    fn remove(&mut self, i: usize) {
        self.start.copy_within(i + 1..self.len, i);
        self.pages.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    fn insert(&mut self, i: usize, start: u64, pages: u64) -> bool {
        if self.len == MAX_RUNS {
            return false;
        }
        self.start.copy_within(i..self.len, i + 1);
        self.pages.copy_within(i..self.len, i + 1);
        self.start[i] = start;
        self.pages[i] = pages;
        self.len += 1;
        true
    }

    /// Adds a free range, merging with its neighbours. False if the table is full (leaks it).
    fn free(&mut self, start: u64, pages: u64) -> bool {
        let i = self.start[..self.len].partition_point(|&s| s < start);
        let merges_prev = i > 0 && self.start[i - 1] + self.pages[i - 1] * PAGE == start;
        let merges_next = i < self.len && start + pages * PAGE == self.start[i];
        match (merges_prev, merges_next) {
            (true, true) => {
                self.pages[i - 1] += pages + self.pages[i];
                self.remove(i);
            }
            (true, false) => self.pages[i - 1] += pages,
            (false, true) => {
                self.start[i] = start;
                self.pages[i] += pages;
            }
            (false, false) => {
                if !self.insert(i, start, pages) {
                    return false;
                }
            }
        }
        self.total += pages;
        true
    }

    /// First fit of `pages` pages aligned to `align` bytes.
    fn alloc(&mut self, pages: u64, align: u64) -> Option<u64> {
        for i in 0..self.len {
            let (s, n) = (self.start[i], self.pages[i]);
            let a = s.next_multiple_of(align);
            let lead = (a - s) / PAGE;
            if lead + pages > n {
                continue;
            }
            let tail = n - lead - pages;
            // Split: [s, a) stays, [a, a+pages) goes, the tail stays.
            if lead == 0 {
                self.start[i] = a + pages * PAGE;
                self.pages[i] = tail;
                if tail == 0 {
                    self.remove(i);
                }
            } else {
                self.pages[i] = lead;
                if tail != 0 && !self.insert(i + 1, a + pages * PAGE, tail) {
                    self.pages[i] = n;
                    return None;
                }
            }
            self.total -= pages;
            return Some(a);
        }
        None
    }
}

/// Gives `[start, end)` to the page allocator.
pub fn add_region(start: u64, end: u64) {
    let start = start.next_multiple_of(PAGE);
    let end = end & !(PAGE - 1);
    if end > start {
        FREE.lock().free(start, (end - start) / PAGE);
    }
}

/// Allocates `pages` zeroed, physically contiguous pages aligned to `align` bytes (a power of
/// two, at least 4096). Returns the physical (= virtual) address.
pub fn alloc_pages(pages: u64, align: u64) -> Option<u64> {
    let align = align.max(PAGE);
    let addr = FREE.lock().alloc(pages, align)?;
    // SAFETY: the range was free RAM, now owned by the caller; identity-mapped.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, (pages * PAGE) as usize) };
    Some(addr)
}

/// Returns pages obtained from [`alloc_pages`].
pub fn free_pages(addr: u64, pages: u64) {
    // A full run table only leaks the pages: never corrupts.
    let _ = FREE.lock().free(addr, pages);
}

/// Free pages left.
pub fn free_page_count() -> u64 {
    FREE.lock().total
}

/// Small-object size classes: 16 B .. 2 KiB.
const CLASSES: usize = 8;

struct Heap {
    heads: [usize; CLASSES],
}

static HEAP: SpinLock<Heap> = SpinLock::new(Heap {
    heads: [0; CLASSES],
});

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout
        .size()
        .max(layout.align())
        .max(16)
        .next_power_of_two();
    let c = size.trailing_zeros() as usize - 4;
    (c < CLASSES).then_some(c)
}

/// The global allocator: size classes carved from pages, and whole pages for big blocks.
pub struct KernelAllocator;

// SAFETY: blocks come from disjoint free lists and page runs, under locks; alignment is honoured
// (a class block of size 2^k is 2^k-aligned inside a page; page blocks are page-aligned or more).
unsafe impl GlobalAlloc for KernelAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(c) = class_of(&layout) {
            let size = 16usize << c;
            let mut heap = HEAP.lock();
            if heap.heads[c] == 0 {
                let Some(page) = alloc_pages(1, PAGE) else {
                    return null_mut();
                };
                // Thread the page's blocks into the free list.
                let mut off = 0;
                while off < PAGE as usize {
                    let block = page as usize + off;
                    let next = if off + size < PAGE as usize {
                        block + size
                    } else {
                        0
                    };
                    // SAFETY: `block` lies inside the page just allocated and is 16-aligned.
                    unsafe { (block as *mut usize).write(next) };
                    off += size;
                }
                heap.heads[c] = page as usize;
            }
            let block = heap.heads[c];
            // SAFETY: a free block's first word holds the next free block (written above or by
            // dealloc).
            heap.heads[c] = unsafe { (block as *const usize).read() };
            block as *mut u8
        } else {
            let pages = (layout.size() as u64).div_ceil(PAGE);
            alloc_pages(pages, layout.align() as u64).map_or(null_mut(), |a| a as *mut u8)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(c) = class_of(&layout) {
            let mut heap = HEAP.lock();
            // SAFETY: the caller returns a block this allocator gave out for the same layout.
            unsafe { (ptr as *mut usize).write(heap.heads[c]) };
            heap.heads[c] = ptr as usize;
        } else {
            free_pages(ptr as u64, (layout.size() as u64).div_ceil(PAGE));
        }
    }
}

#[global_allocator]
static ALLOCATOR: KernelAllocator = KernelAllocator;
