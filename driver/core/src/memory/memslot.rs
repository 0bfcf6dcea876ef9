//! Memslots: guest-physical page ranges mapped onto host ranges of RAM blocks, kept split and
//! merged so that the set is canonical (no two adjacent slots that could be one), and the
//! PROTECT_RAM page set.
//!
//! A later mapping overrides exactly the pages it names: the pieces of earlier slots outside
//! it survive with their host addresses (HAXM `core/memslot.c` behaves the same way).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::PAGE_SIZE;

/// One mapping: guest frames `[start_gfn, end_gfn)` onto host addresses from `hva` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// First guest frame number.
    pub start_gfn: u64,
    /// Guest frame number after the last.
    pub end_gfn: u64,
    /// Start address of the RAM block backing the slot.
    pub block: u64,
    /// Host-virtual address of the first frame.
    pub hva: u64,
    /// Read-only (ROM): writes are MMIO.
    pub rom: bool,
}

impl Slot {
    /// The host-virtual address of frame `gfn` (meaningful for `gfn` in the slot or at its
    /// end; wrapping arithmetic so that no argument panics).
    pub fn hva_of(&self, gfn: u64) -> u64 {
        self.hva
            .wrapping_add(gfn.wrapping_sub(self.start_gfn).wrapping_mul(PAGE_SIZE))
    }

    /// Whether `next` continues this slot seamlessly (same block, contiguous host range, same
    /// access), so that the two are one mapping.
    fn continues_with(&self, next: &Slot) -> bool {
        self.end_gfn == next.start_gfn
            && self.block == next.block
            && self.rom == next.rom
            && self.hva_of(self.end_gfn) == next.hva
    }
}

/// The slots of a VM, keyed by first frame; they never overlap.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MemSlots {
    map: BTreeMap<u64, Slot>,
}

impl MemSlots {
    /// The slot mapping `gfn`.
    pub(crate) fn find(&self, gfn: u64) -> Option<&Slot> {
        self.map
            .range(..=gfn)
            .next_back()
            .map(|(_, s)| s)
            .filter(|s| gfn < s.end_gfn)
    }

    /// All slots in guest-physical order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.map.values()
    }

    /// Whether a slot is backed by `block`.
    pub(crate) fn references(&self, block: u64) -> bool {
        self.map.values().any(|s| s.block == block)
    }

    /// Unmaps `[start, end)`: slots inside go, slots across a boundary are cut. Returns the
    /// blocks of the slots touched.
    pub(crate) fn remove_range(&mut self, start: u64, end: u64) -> Vec<u64> {
        let mut touched = Vec::new();
        // Slots overlapping [start, end): those starting below `end` whose end is past `start`.
        // Only the first may start below `start`.
        let keys: Vec<u64> = self
            .map
            .range(..end)
            .rev()
            .take_while(|(_, s)| s.end_gfn > start)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let Some(s) = self.map.remove(&k) else {
                continue;
            };
            touched.push(s.block);
            if s.start_gfn < start {
                let left = Slot {
                    end_gfn: start,
                    ..s
                };
                self.map.insert(left.start_gfn, left);
            }
            if s.end_gfn > end {
                let right = Slot {
                    start_gfn: end,
                    hva: s.hva_of(end),
                    ..s
                };
                self.map.insert(right.start_gfn, right);
            }
        }
        touched
    }

    /// Maps a slot whose range is free (after [`MemSlots::remove_range`]), merging it with
    /// neighbours it continues.
    pub(crate) fn insert(&mut self, slot: Slot) {
        let mut slot = slot;
        let left = self
            .map
            .range(..slot.start_gfn)
            .next_back()
            .map(|(_, s)| *s)
            .filter(|l| l.continues_with(&slot));
        if let Some(l) = left {
            self.map.remove(&l.start_gfn);
            slot = Slot {
                start_gfn: l.start_gfn,
                hva: l.hva,
                ..slot
            };
        }
        let right = self
            .map
            .get(&slot.end_gfn)
            .copied()
            .filter(|r| slot.continues_with(r));
        if let Some(r) = right {
            self.map.remove(&r.start_gfn);
            slot.end_gfn = r.end_gfn;
        }
        self.map.insert(slot.start_gfn, slot);
    }
}

/// Protected guest frames, as disjoint merged ranges `start -> end`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Protections {
    map: BTreeMap<u64, u64>,
}

impl Protections {
    /// Protects (`protect`) or unprotects `[start, end)`.
    pub(crate) fn set(&mut self, start: u64, end: u64, protect: bool) {
        let mut new_start = start;
        let mut new_end = end;
        // Every range touching [start, end) (adjacent ones too, to merge).
        let keys: Vec<(u64, u64)> = self
            .map
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in keys {
            self.map.remove(&s);
            if protect {
                new_start = new_start.min(s);
                new_end = new_end.max(e);
            } else {
                if s < start {
                    self.map.insert(s, start);
                }
                if e > end {
                    self.map.insert(end, e);
                }
            }
        }
        if protect {
            self.map.insert(new_start, new_end);
        }
    }

    /// The first protected frame in `[start, end)`.
    pub(crate) fn first_in(&self, start: u64, end: u64) -> Option<u64> {
        if let Some((_, e)) = self.map.range(..=start).next_back() {
            if *e > start {
                return Some(start);
            }
        }
        self.map.range(start..end).next().map(|(s, _)| *s)
    }

    /// All ranges, in order.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(s, e)| (*s, *e))
    }
}
