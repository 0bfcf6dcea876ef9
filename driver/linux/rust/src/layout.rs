//! How the kmalloc-based global allocator meets an alignment (pure, host-tested).
//!
//! kmalloc returns memory aligned to at least ARCH_KMALLOC_MINALIGN (8 on x86-64), and
//! power-of-two sizes naturally aligned (`include/linux/slab.h`, guaranteed since 5.4), so a
//! larger alignment is met by asking for the next power of two of `max(size, align)`;
//! alignments above a page are refused.

use core::alloc::Layout;

/// x86-64's page size.
pub const PAGE: usize = 4096;

/// The kmalloc size that gives `layout` its alignment, or `None` if none can.
pub fn kmalloc_size(layout: Layout) -> Option<usize> {
    if layout.align() <= 8 {
        return Some(layout.size().max(1));
    }
    if layout.align() > PAGE {
        return None;
    }
    layout
        .size()
        .max(layout.align())
        .checked_next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn small_alignments_ask_for_the_size() {
        assert_eq!(kmalloc_size(l(24, 8)), Some(24));
        assert_eq!(kmalloc_size(l(0, 1)), Some(1));
    }

    #[test]
    fn larger_alignments_round_to_a_power_of_two() {
        assert_eq!(kmalloc_size(l(24, 16)), Some(32));
        assert_eq!(kmalloc_size(l(8, 64)), Some(64));
        assert_eq!(kmalloc_size(l(4096, 4096)), Some(4096));
        assert_eq!(kmalloc_size(l(5000, 4096)), Some(8192));
        for (size, align) in [(1, 16), (100, 32), (3000, 1024), (17, 4096)] {
            let n = kmalloc_size(l(size, align)).unwrap();
            assert!(n.is_power_of_two() && n >= size && n % align == 0);
        }
    }

    #[test]
    fn above_a_page_is_refused() {
        assert_eq!(kmalloc_size(l(8192, 8192)), None);
    }
}
