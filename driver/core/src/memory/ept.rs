//! The EPT paging structures of one VM (SDM 325462-083US Vol. 3C §29.3.2 "EPT Translation
//! Mechanism", Tables 29-1 to 29-6 for the entry formats; §25.6.11 for the EPTP).
//!
//! A 4-level tree: PML4 (level 4), PDPT (3), PD (2), PT (1). Leaves are 4-KiB PTEs or 2-MiB
//! PDEs (bit 7). No 1-GiB leaves: RAM blocks are pinned per 2 MiB, so no larger host range is
//! known to be contiguous. Every entry is written with one aligned 8-byte atomic store, because
//! the CPU may walk the tables while they change (another vCPU runs the guest).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::limits::{try_box, try_box_nones};
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

/// One paging structure and, for levels 4..2, the structures its entries reference.
struct Table {
    page: PhysPages,
    children: Option<Box<[Option<Box<Table>>; ENTRIES]>>,
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
            match try_box_nones::<Table, ENTRIES>() {
                Ok(c) => Some(c),
                Err(e) => {
                    platform.free_pages(page);
                    return Err(e);
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

    /// Moves this table and everything below into `out`.
    fn retire_into(self, out: &mut Vec<PhysPages>) {
        if let Some(children) = self.children {
            for c in (*children).into_iter().flatten() {
                c.retire_into(out);
            }
        }
        out.push(self.page);
    }
}

/// A leaf found by `Ept::leaf`.
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
            t = t.children.as_ref()?[i].as_ref()?;
            level -= 1;
        }
    }

    /// Whether the PDE covering `gpa` is unused (no 2-MiB leaf, no page table).
    pub(crate) fn pde_free(&self, gpa: u64) -> bool {
        let mut t = &self.root;
        for level in [4, 3] {
            let i = index(gpa, level);
            match t.children.as_ref().and_then(|c| c[i].as_ref()) {
                Some(c) => t = c,
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
                        // Nothing was linked yet: the page goes straight back.
                        platform.free_pages(child.page);
                        return Err(PlatformError::OutOfMemory);
                    }
                };
                *slot = Some(child);
                self.tables += 1;
                set(page, i, (phys & EPT_ADDRESS_MASK) | NON_LEAF);
            }
            let Some(next) = slot.as_mut() else {
                return Err(PlatformError::Unsupported);
            };
            t = next;
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
        let z = zap_table(&mut self.root, 4, 0, start, end, retired, &mut removed);
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
        collect(&self.root, 4, 0, out);
    }

    /// Gives every structure back to the platform. Allocates nothing (it also runs on the
    /// failure path of an allocation), and recurses at most four levels with small frames.
    pub(crate) fn free<P: Platform>(self, platform: &P) {
        free_table(self.root, platform);
    }
}

fn free_table<P: Platform>(mut t: Table, platform: &P) {
    if let Some(children) = t.children.as_mut() {
        for slot in children.iter_mut() {
            if let Some(child) = slot.take() {
                free_table(*child, platform);
            }
        }
    }
    platform.free_pages(t.page);
}

fn collect(t: &Table, level: u32, base: u64, out: &mut Vec<(u64, Leaf)>) {
    for i in 0..ENTRIES {
        let e = get(&t.page, i);
        if e & EPT_RWX == 0 {
            continue;
        }
        let gpa = base + i as u64 * entry_span(level);
        if level == 1 || (level == 2 && e & EPT_LARGE != 0) {
            out.push((gpa, Leaf { entry: e, level }));
        } else if let Some(c) = t.children.as_ref().and_then(|c| c[i].as_ref()) {
            collect(c, level - 1, gpa, out);
        }
    }
}

fn zap_table(
    t: &mut Table,
    level: u32,
    base: u64,
    start: u64,
    end: u64,
    retired: &mut Vec<PhysPages>,
    removed: &mut usize,
) -> bool {
    let span = entry_span(level);
    let first = if start > base {
        ((start - base) / span) as usize
    } else {
        0
    };
    let mut zapped = false;
    let Table { page, children } = t;
    for i in first..ENTRIES {
        let lo = base + i as u64 * span;
        if lo >= end {
            break;
        }
        let hi = lo + span;
        let e = get(page, i);
        if e & EPT_RWX == 0 {
            continue;
        }
        let leaf = level == 1 || (level == 2 && e & EPT_LARGE != 0);
        if leaf {
            set(page, i, 0);
            zapped = true;
            continue;
        }
        let Some(slot) = children.as_mut().map(|c| &mut c[i]) else {
            continue;
        };
        let whole = start <= lo && hi <= end;
        let now_empty = match slot.as_mut() {
            Some(child) if !whole => {
                zapped |= zap_table(child, level - 1, lo, start, end, retired, removed);
                child.is_empty()
            }
            _ => true,
        };
        if now_empty {
            // Unlink first, then retire: after the store no new walk reaches the child.
            set(page, i, 0);
            zapped = true;
            if let Some(child) = slot.take() {
                let before = retired.len();
                child.retire_into(retired);
                *removed += retired.len() - before;
            }
        }
    }
    zapped
}
