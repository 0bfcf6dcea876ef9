//! The EPT paging structures of one VM (SDM 325462-083US Vol. 3C §29.3.2 "EPT Translation
//! Mechanism", Tables 29-1 to 29-6 for the entry formats; §25.6.11 for the EPTP).
//!
//! A 4-level tree: PML4 (level 4), PDPT (3), PD (2), PT (1). Leaves are 4-KiB PTEs or 2-MiB
//! PDEs (bit 7). No 1-GiB leaves: RAM blocks are pinned per 2 MiB, so no larger host range is
//! known to be contiguous. Every entry is written with one aligned 8-byte atomic store, because
//! the CPU may walk the tables while they change (another vCPU runs the guest).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::sync::atomic::{AtomicU64, Ordering};

use super::limits::try_box;
use crate::heap::try_zeroed;
use crate::platform::{PhysPages, Platform, PlatformError};

/// Entries per EPT paging structure (SDM §29.3.2: each is 4 KiB of 512 8-byte entries).
pub const ENTRIES: usize = 512;

/// Bit 0: read access.
pub const EPT_READ: u64 = 1 << 0;
/// Bit 1: write access.
pub const EPT_WRITE: u64 = 1 << 1;
/// Bit 2: execute access (for supervisor-mode linear addresses when mode-based execute
/// control is off, which rhax never turns on).
pub const EPT_EXECUTE: u64 = 1 << 2;
/// Bits 2:0: an entry is present when any of them is set (SDM §29.3.2: "If bits 2:0 of an EPT
/// paging-structure entry are all 0, the entry is not present").
pub const EPT_RWX: u64 = EPT_READ | EPT_WRITE | EPT_EXECUTE;
/// Bits 5:3 of a leaf: EPT memory type. 6 = write-back.
pub const EPT_MEMORY_TYPE_WB: u64 = 6 << 3;
/// Bit 6 of a leaf: ignore PAT memory type.
pub const EPT_IGNORE_PAT: u64 = 1 << 6;
/// Bit 7 of a PDE: maps a 2-MiB page (Table 29-4) instead of referencing a page table.
pub const EPT_LARGE: u64 = 1 << 7;
/// Bits 51:12: physical address (of the next structure or of the page).
pub const EPT_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The memory-type bits rhax puts in every leaf.
///
/// Write-back (6) with "ignore PAT" (bit 6) set, so the effective type of every guest RAM
/// access is WB whatever the guest's PAT says (SDM Vol. 3C §29.3, "EPT and Memory Typing":
/// with bit 6 set the EPT memory type is used alone). Why: guest RAM is ordinary host memory
/// that the host keeps mapped WB (the user buffer, and kernel mappings for string IO); letting
/// a guest PAT make it UC/WC would alias one physical page with conflicting memory types, which
/// the SDM calls unsupported (Vol. 3A, "Programming the PAT"), and no device DMA or
/// real MMIO lies behind guest RAM (MMIO is never mapped; it exits). KVM makes the same choice
/// when no non-coherent DMA device is assigned. The guest's PAT/MTRR settings therefore have no
/// effect on RAM, only on its own page-table bookkeeping.
pub const LEAF_MEMORY_TYPE: u64 = EPT_MEMORY_TYPE_WB | EPT_IGNORE_PAT;

/// Bits of a non-leaf entry: full access, further restricted only by the leaf.
const NON_LEAF: u64 = EPT_RWX;

/// Bytes mapped by one entry of a level-`level` structure.
pub const fn entry_span(level: u32) -> u64 {
    1u64 << (12 + 9 * (level - 1))
}

/// Index of `gpa`'s entry in a level-`level` structure (SDM §29.3.2: bits 47:39, 38:30, 29:21,
/// 20:12).
pub const fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// The leaf entry for a page: `hpa` with read and execute, write unless `read_only`.
pub const fn leaf_entry(hpa: u64, read_only: bool, large: bool) -> u64 {
    let access = if read_only {
        EPT_READ | EPT_EXECUTE
    } else {
        EPT_RWX
    };
    (hpa & EPT_ADDRESS_MASK) | access | LEAF_MEMORY_TYPE | if large { EPT_LARGE } else { 0 }
}

/// Levels whose structures reference further structures (PML4, PDPT, PD): the most tables
/// above any one table, hence the depth of every explicit walk stack below.
const LEVELS_WITH_CHILDREN: usize = 3;

/// A referenced structure. `ManuallyDrop`: a `Table` is never dropped by drop glue, which
/// would recurse through the tree (one native stack frame per level, with the compiler's
/// frames, not ours); [`Table::retire_into`] takes trees apart iteratively instead. A tree
/// dropped without [`Ept::free`] leaks, as its `PhysPages` do anyway (only the platform can
/// free them).
type Child = ManuallyDrop<Box<Table>>;

/// The structures a table's entries reference, by entry index.
type Children = Box<[Option<Child>; ENTRIES]>;

/// One paging structure and, for levels 4..2, the structures its entries reference.
struct Table {
    page: PhysPages,
    children: Option<Children>,
}

/// The entries of a paging-structure page.
fn entries(page: &PhysPages) -> &[AtomicU64; ENTRIES] {
    let ptr = page.virt().as_ptr().cast::<[AtomicU64; ENTRIES]>();
    // SAFETY: `Table::new` checked that the page is at least one 4-KiB page, 8-byte aligned,
    // and `PhysPages` gives us exclusive ownership of it, mapped and writable for its lifetime
    // (borrowed here). It is only ever accessed through these atomics by software; the CPU's
    // page walker reads it outside the Rust memory model, which atomic 8-byte stores make
    // tear-free.
    unsafe { &*ptr }
}

fn get(page: &PhysPages, i: usize) -> u64 {
    entries(page)[i].load(Ordering::Acquire)
}

fn set(page: &PhysPages, i: usize, value: u64) {
    // Release: a new structure's (zeroed or filled) contents are written before the entry that
    // makes it reachable. x86 stores are not reordered with older stores anyway.
    entries(page)[i].store(value, Ordering::Release);
}

impl Table {
    fn new<P: Platform>(platform: &P, level: u32) -> Result<Table, PlatformError> {
        let page = platform.alloc_pages(1)?;
        if page.count() < 1 || page.virt().as_ptr().align_offset(8) != 0 {
            platform.free_pages(page);
            return Err(PlatformError::Unsupported);
        }
        let children = if level > 1 {
            // 4 KiB of `None`s, zeroed in place and fallibly (no array on the stack).
            match try_zeroed::<[Option<Child>; ENTRIES]>() {
                Some(c) => Some(c),
                None => {
                    platform.free_pages(page);
                    return Err(PlatformError::OutOfMemory);
                }
            }
        } else {
            None
        };
        Ok(Table { page, children })
    }

    fn is_empty(&self) -> bool {
        entries(&self.page)
            .iter()
            .all(|e| e.load(Ordering::Acquire) & EPT_RWX == 0)
    }

    /// Moves this table and everything below into `out` (parents before children).
    ///
    /// Iterative, with an explicit stack of one child array per level that has children: no
    /// recursion and no 512-entry array on the native stack, since this runs on IOCTL paths
    /// (SET_RAM unmapping, VM teardown) with a kernel stack of a few KiB.
    fn retire_into(self, out: &mut Vec<PhysPages>) {
        // The callers reserve room first (`Ept::zap_bound`): this push does not allocate.
        self.retire(&mut |p| out.push(p));
    }

    /// Hands this table and everything below to `sink` (parents before children),
    /// iteratively (see [`Table::retire_into`]).
    fn retire(self, sink: &mut dyn FnMut(PhysPages)) {
        let mut stack: [(Option<Children>, usize); LEVELS_WITH_CHILDREN] =
            [const { (None, 0) }; LEVELS_WITH_CHILDREN];
        let mut depth = 0;
        let mut next = Some(self);
        loop {
            if let Some(Table { page, children }) = next.take() {
                sink(page);
                if let Some(children) = children {
                    match stack.get_mut(depth) {
                        Some(slot) => {
                            *slot = (Some(children), 0);
                            depth += 1;
                        }
                        // Deeper than EPT's four levels: `map` never builds that. Leak the
                        // rest rather than recurse.
                        None => debug_assert!(false, "EPT tree deeper than 4 levels"),
                    }
                }
            }
            let Some(top) = depth.checked_sub(1) else {
                return;
            };
            let (children, i) = &mut stack[top];
            let found = children.as_mut().and_then(|c| {
                while *i < ENTRIES {
                    *i += 1;
                    if let Some(child) = c[*i - 1].take() {
                        return Some(child);
                    }
                }
                None
            });
            match found {
                Some(child) => next = Some(*ManuallyDrop::into_inner(child)),
                None => {
                    // Every child taken: the array is all `None` and its drop frees 4 KiB.
                    stack[top] = (None, 0);
                    depth = top;
                }
            }
        }
    }
}

/// The table reached from `t` through the entry indexes `path` (one per level, from `t`'s).
fn walk_mut<'a>(mut t: &'a mut Table, path: &[usize]) -> Option<&'a mut Table> {
    for &i in path {
        t = &mut **t.children.as_mut()?.get_mut(i)?.as_mut()?;
    }
    Some(t)
}

/// A leaf found by [`Ept::leaf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The raw entry.
    pub entry: u64,
    /// 1 for a 4-KiB PTE, 2 for a 2-MiB PDE.
    pub level: u32,
}

impl Leaf {
    /// Host-physical address the leaf gives for `gpa`.
    pub fn hpa(&self, gpa: u64) -> u64 {
        let span = entry_span(self.level);
        (self.entry & EPT_ADDRESS_MASK & !(span - 1)) | (gpa & (span - 1))
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.entry & EPT_WRITE != 0
    }
}

/// One VM's EPT.
pub(crate) struct Ept {
    root: Table,
    /// Paging structures in the tree (root included).
    tables: usize,
}

impl Ept {
    pub(crate) fn new<P: Platform>(platform: &P) -> Result<Ept, PlatformError> {
        Ok(Ept {
            root: Table::new(platform, 4)?,
            tables: 1,
        })
    }

    /// The EPTP (SDM Vol. 3C §25.6.11): bits 2:0 memory type of the paging structures (6 = WB,
    /// which negotiation requires), bits 5:3 page-walk length minus 1 (3), bit 6 (accessed and
    /// dirty flags) clear, bits 51:12 the PML4 address.
    pub(crate) fn eptp(&self) -> u64 {
        (self.root.page.phys() & EPT_ADDRESS_MASK) | 6 | (3 << 3)
    }

    pub(crate) fn table_count(&self) -> usize {
        self.tables
    }

    /// The leaf translating `gpa`, if any.
    pub(crate) fn leaf(&self, gpa: u64) -> Option<Leaf> {
        let mut t = &self.root;
        let mut level = 4;
        loop {
            let i = index(gpa, level);
            let e = get(&t.page, i);
            if e & EPT_RWX == 0 {
                return None;
            }
            if level == 1 || (level == 2 && e & EPT_LARGE != 0) {
                return Some(Leaf { entry: e, level });
            }
            t = &**t.children.as_ref()?[i].as_ref()?;
            level -= 1;
        }
    }

    /// Whether the PDE covering `gpa` is unused (no 2-MiB leaf, no page table).
    pub(crate) fn pde_free(&self, gpa: u64) -> bool {
        let mut t = &self.root;
        for level in [4, 3] {
            let i = index(gpa, level);
            match t.children.as_ref().and_then(|c| c[i].as_ref()) {
                Some(c) => t = &**c,
                None => return true,
            }
        }
        get(&t.page, index(gpa, 2)) & EPT_RWX == 0
    }

    /// Writes the leaf `entry` for `gpa` at `level` (1: 4 KiB, 2: 2 MiB), creating the
    /// structures on the way. The caller makes sure the slot is not present: filling a
    /// not-present entry needs no INVEPT (SDM Vol. 3C §29.4, "Caching Translation Information": only
    /// present translations are cached; a stale "not present" at worst repeats the EPT violation).
    pub(crate) fn map<P: Platform>(
        &mut self,
        platform: &P,
        gpa: u64,
        level: u32,
        entry: u64,
    ) -> Result<(), PlatformError> {
        let mut t = &mut self.root;
        let mut l = 4;
        while l > level {
            let i = index(gpa, l);
            let Table { page, children } = t;
            let Some(children) = children.as_mut() else {
                return Err(PlatformError::Unsupported);
            };
            let slot = &mut children[i];
            if slot.is_none() {
                if get(page, i) & EPT_RWX != 0 {
                    // A larger leaf already maps this range.
                    return Ok(());
                }
                let child = Table::new(platform, l - 1)?;
                let phys = child.page.phys();
                let child = match try_box(child) {
                    Ok(c) => c,
                    Err(child) => {
                        // Nothing was linked yet: the structure goes straight back.
                        child.retire(&mut |p| platform.free_pages(p));
                        return Err(PlatformError::OutOfMemory);
                    }
                };
                *slot = Some(ManuallyDrop::new(child));
                self.tables += 1;
                set(page, i, (phys & EPT_ADDRESS_MASK) | NON_LEAF);
            }
            let Some(next) = slot.as_mut() else {
                return Err(PlatformError::Unsupported);
            };
            t = &mut **next;
            l -= 1;
        }
        set(&t.page, index(gpa, level), entry);
        Ok(())
    }

    /// Clears every translation of guest frames `[start_gfn, end_gfn)` (a 2-MiB leaf only
    /// partly inside goes whole: lazy filling maps the rest again on the next violation), and
    /// unlinks structures left empty. Unlinked structures go to `retired`: the CPU may still hold
    /// them in its paging-structure caches until an INVEPT, so they must not be freed before.
    /// Returns whether a present entry was cleared (then an INVEPT is needed, SDM Vol. 3C
    /// §29.4, "Guidelines for Use of the INVEPT Instruction").
    pub(crate) fn zap(
        &mut self,
        start_gfn: u64,
        end_gfn: u64,
        retired: &mut Vec<PhysPages>,
    ) -> bool {
        let start = start_gfn << 12;
        let end = end_gfn << 12;
        if start >= end {
            return false;
        }
        let mut removed = 0;
        let z = zap_tree(&mut self.root, start, end, retired, &mut removed);
        self.tables -= removed;
        z
    }

    /// An upper bound on the paging structures [`Ept::zap`] of `[start_gfn, end_gfn)` can
    /// unlink: the structures whose span meets the range, per level below the root (a PT spans
    /// 2 MiB, a PD 1 GiB, a PDPT 512 GiB), and never more than the tree holds. The caller
    /// reserves that much room before zapping, so the zap itself never allocates.
    pub(crate) fn zap_bound(&self, start_gfn: u64, end_gfn: u64) -> usize {
        if start_gfn >= end_gfn {
            return 0;
        }
        let (start, last) = (start_gfn << 12, (end_gfn << 12) - 1);
        let mut bound: u64 = 0;
        for level in 1..4 {
            let span = entry_span(level + 1);
            bound = bound.saturating_add(last / span - start / span + 1);
        }
        usize::try_from(bound).map_or(self.tables, |b| b.min(self.tables))
    }

    /// Every leaf, as (guest-physical address, leaf), in address order.
    pub(crate) fn leaves(&self, out: &mut Vec<(u64, Leaf)>) {
        collect(&self.root, out);
    }

    /// Gives every structure back to the platform. Allocates nothing (it also runs on the
    /// failure path of an allocation) and walks the tree iteratively.
    pub(crate) fn free<P: Platform>(self, platform: &P) {
        self.root.retire(&mut |p| platform.free_pages(p));
    }
}

/// Appends every leaf under the root `root` in address order. Iterative (see
/// [`Table::retire_into`]): a stack of (table, level, base address, next entry).
fn collect(root: &Table, out: &mut Vec<(u64, Leaf)>) {
    let mut stack: [Option<(&Table, u32, u64, usize)>; LEVELS_WITH_CHILDREN + 1] =
        [None; LEVELS_WITH_CHILDREN + 1];
    stack[0] = Some((root, 4, 0, 0));
    let mut depth: usize = 1;
    while let Some(top) = depth.checked_sub(1) {
        let Some((t, level, base, i)) = stack[top].as_mut() else {
            depth = top;
            continue;
        };
        if *i >= ENTRIES {
            stack[top] = None;
            depth = top;
            continue;
        }
        let at = *i;
        *i += 1;
        let e = get(&t.page, at);
        if e & EPT_RWX == 0 {
            continue;
        }
        let (t, level) = (*t, *level);
        let gpa = *base + at as u64 * entry_span(level);
        if level == 1 || (level == 2 && e & EPT_LARGE != 0) {
            out.push((gpa, Leaf { entry: e, level }));
        } else if let Some(c) = t.children.as_ref().and_then(|c| c[at].as_ref()) {
            if let Some(slot) = stack.get_mut(depth) {
                *slot = Some((&**c, level - 1, gpa, 0));
                depth += 1;
            }
        }
    }
}

/// Clears the translations of `[start, end)` under the root `root` (see [`Ept::zap`]); unlinked
/// structures go to `retired` and are counted in `removed`.
///
/// Iterative (see [`Table::retire_into`]): the walk keeps, per depth, the entry index taken to
/// descend (`path`), the next entry to look at and the base address, and reaches the current
/// table again from the root through `path` (at most three steps) instead of holding a
/// borrow per level.
fn zap_tree(
    root: &mut Table,
    start: u64,
    end: u64,
    retired: &mut Vec<PhysPages>,
    removed: &mut usize,
) -> bool {
    // The first entry of a level-`level` table at `base` that can overlap `start`.
    let first = |level: u32, base: u64| {
        if start > base {
            ((start - base) / entry_span(level)) as usize
        } else {
            0
        }
    };
    let mut path = [0usize; LEVELS_WITH_CHILDREN];
    let mut next = [0usize; LEVELS_WITH_CHILDREN + 1];
    let mut base = [0u64; LEVELS_WITH_CHILDREN + 1];
    next[0] = first(4, 0);
    let mut depth = 0;
    let mut zapped = false;
    let mut retire = |slot: &mut Option<Child>| {
        if let Some(child) = slot.take() {
            let before = retired.len();
            ManuallyDrop::into_inner(child).retire_into(retired);
            *removed += retired.len() - before;
        }
    };
    loop {
        let level = 4 - depth as u32;
        let span = entry_span(level);
        let i = next[depth];
        let lo = base[depth] + i as u64 * span;
        if i >= ENTRIES || lo >= end {
            // This table is done: back in its parent, unlink it if it is now empty.
            let Some(up) = depth.checked_sub(1) else {
                return zapped;
            };
            depth = up;
            let pi = path[up];
            next[up] = pi + 1;
            let Some(Table { page, children }) = walk_mut(root, &path[..up]) else {
                return zapped;
            };
            let Some(slot) = children.as_mut().map(|c| &mut c[pi]) else {
                continue;
            };
            if slot.as_ref().is_none_or(|c| c.is_empty()) {
                // Unlink first, then retire: after the store no new walk reaches the child.
                set(page, pi, 0);
                zapped = true;
                retire(slot);
            }
            continue;
        }
        next[depth] = i + 1;
        let Some(Table { page, children }) = walk_mut(root, &path[..depth]) else {
            return zapped;
        };
        let e = get(page, i);
        if e & EPT_RWX == 0 {
            continue;
        }
        if level == 1 || (level == 2 && e & EPT_LARGE != 0) {
            set(page, i, 0);
            zapped = true;
            continue;
        }
        let Some(slot) = children.as_mut().map(|c| &mut c[i]) else {
            continue;
        };
        let whole = start <= lo && lo + span <= end;
        if slot.is_some() && !whole && depth < LEVELS_WITH_CHILDREN {
            // Partly inside: descend.
            path[depth] = i;
            depth += 1;
            base[depth] = lo;
            next[depth] = first(level - 1, lo);
            continue;
        }
        // Wholly inside (or a present entry without a structure): unlink, then retire.
        set(page, i, 0);
        zapped = true;
        retire(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::{leaf_entry, Ept};
    use crate::platform::{HeapPlatform, Platform};
    use alloc::vec::Vec;
    use core::sync::atomic::Ordering;

    /// Leaves in three PML4 entries and both leaf sizes: the iterative walks (`collect`,
    /// `zap_tree`, `retire_into`) see every level, keep address order, unlink emptied
    /// structures and give every page back.
    #[test]
    fn iterative_walks_cover_every_level() {
        let p = HeapPlatform::new();
        let mut ept = Ept::new(&p).unwrap();
        let four_k = [
            0x1000,
            0x2000,
            0x20_3000,
            0x80_0000_0000,
            0x100_0000_5000u64,
        ];
        for gpa in four_k {
            ept.map(&p, gpa, 1, leaf_entry(gpa, false, false)).unwrap();
        }
        ept.map(&p, 0x4000_0000, 2, leaf_entry(0x4000_0000, true, true))
            .unwrap();
        // Root, 3 PDPTs, 3 PDs (0, 1 GiB, 512 GiB, 1 TiB: the 1-GiB one shares PDPT 0), 4 PTs.
        let mut leaves = Vec::new();
        ept.leaves(&mut leaves);
        let gpas: Vec<u64> = leaves.iter().map(|l| l.0).collect();
        assert_eq!(
            gpas,
            [
                0x1000,
                0x2000,
                0x20_3000,
                0x4000_0000,
                0x80_0000_0000,
                0x100_0000_5000
            ]
        );
        assert_eq!(leaves[3].1.level, 2);
        let tables = ept.table_count();
        assert_eq!(tables, 1 + 3 + 4 + 4);
        // One 4-KiB page out of a PT that keeps another: nothing unlinked.
        let mut retired = Vec::new();
        assert!(ept.zap(1, 2, &mut retired));
        assert!(retired.is_empty());
        assert_eq!(ept.table_count(), tables);
        // The PT at 2 MiB empties: unlinked and retired, its PD stays (the PT at 0 remains).
        assert!(ept.zap(0x200, 0x400, &mut retired));
        assert_eq!(retired.len(), 1);
        assert_eq!(ept.table_count(), tables - 1);
        // Everything at and above 512 GiB: two whole PML4 subtrees (PDPT, PD, PT each).
        assert!(ept.zap(0x80_0000_0000 >> 12, 0x200_0000_0000 >> 12, &mut retired));
        assert_eq!(retired.len(), 1 + 6);
        leaves.clear();
        ept.leaves(&mut leaves);
        assert_eq!(
            leaves.iter().map(|l| l.0).collect::<Vec<_>>(),
            [0x2000, 0x4000_0000]
        );
        assert!(!ept.zap(0x300, 0x400, &mut retired), "nothing left there");
        for t in retired {
            p.free_pages(t);
        }
        ept.free(&p);
        assert_eq!(p.live_pages.load(Ordering::Relaxed), 0);
    }
}
