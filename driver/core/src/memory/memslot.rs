//! Memslots: guest-physical page ranges mapped onto host ranges of RAM blocks, kept split and
//! merged so that the set is canonical (no two adjacent slots that could be one), and the
//! PROTECT_RAM page set.
//!
//! A later mapping overrides exactly the pages it names: the pieces of earlier slots outside
//! it survive with their host addresses (HAXM `core/memslot.c` behaves the same way).
//!
//! Both are sorted vectors of disjoint ranges. A change is planned first ([`MemSlots::plan`],
//! [`Protections::plan`]): two binary searches find the run of entries it touches, and at most
//! five (slots) or two (protections) new entries replace that run. The plan says how much the
//! set grows, so the caller checks the per-VM bound and reserves room before anything
//! changes, and the splice that applies it cannot fail. Cost: O(log n) to find, O(k) for the
//! k entries replaced, plus one memmove of the tail.

use alloc::vec::Vec;

use super::error::MemoryError;
use super::limits::{try_reserve, Limit, MAX_MEMSLOTS, MAX_PROTECTED_RANGES};
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

/// Up to `N` entries, on the stack (`items[len..]` hold a filler value).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pieces<T: Copy, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy, const N: usize> Pieces<T, N> {
    fn new(filler: T) -> Self {
        Pieces {
            items: [filler; N],
            len: 0,
        }
    }

    fn push(&mut self, v: T) {
        // N is the proven maximum of each plan; a push past it is dropped rather than
        // panicking (it would be a broken invariant, caught by the tests' canonical checks).
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = v;
            self.len += 1;
        }
    }

    fn last_mut(&mut self) -> Option<&mut T> {
        self.len.checked_sub(1).map(|i| &mut self.items[i])
    }

    /// The entries; exact-size, so a splice with them never allocates a temporary.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = T> + '_ {
        self.items[..self.len].iter().copied()
    }
}

const NO_SLOT: Slot = Slot {
    start_gfn: 0,
    end_gfn: 0,
    block: 0,
    hva: 0,
    rom: false,
};

/// A planned memslot change: `old` (indices `lo..hi`) is replaced by `new`.
#[derive(Debug)]
pub(crate) struct SlotPlan {
    lo: usize,
    hi: usize,
    new: Pieces<Slot, 5>,
}

impl SlotPlan {
    /// The slots the change adds (merged pieces and remnants included).
    pub(crate) fn added(&self) -> impl Iterator<Item = Slot> + '_ {
        self.new.iter()
    }
}

/// The slots of a VM, sorted by first frame; they never overlap.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MemSlots {
    slots: Vec<Slot>,
}

impl MemSlots {
    /// The slot mapping `gfn`.
    pub(crate) fn find(&self, gfn: u64) -> Option<&Slot> {
        let n = self.slots.partition_point(|s| s.start_gfn <= gfn);
        n.checked_sub(1)
            .map(|i| &self.slots[i])
            .filter(|s| gfn < s.end_gfn)
    }

    /// All slots in guest-physical order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// Plans mapping `[start, end)` to `new` (`None`: unmapping it): the slots overlapping
    /// the range go, the parts of them outside it stay, and the new slot merges with every
    /// neighbour it continues. Changes nothing.
    pub(crate) fn plan(&self, start: u64, end: u64, new: Option<Slot>) -> SlotPlan {
        // Slots are disjoint and sorted, so their ends are sorted too.
        let mut lo = self.slots.partition_point(|s| s.end_gfn <= start);
        let hi = self.slots.partition_point(|s| s.start_gfn < end).max(lo);
        let mut pieces = Pieces::<Slot, 5>::new(NO_SLOT);
        let add = |pieces: &mut Pieces<Slot, 5>, s: Slot| match pieces.last_mut() {
            Some(prev) if prev.continues_with(&s) => prev.end_gfn = s.end_gfn,
            _ => pieces.push(s),
        };
        let first = lo;
        // The left neighbour ends at `start` or before; it joins the change only to merge.
        if let Some(n) = new {
            if lo > 0 && self.slots[lo - 1].continues_with(&n) {
                lo -= 1;
                add(&mut pieces, self.slots[lo]);
            }
        }
        if let Some(f) = self
            .slots
            .get(first)
            .filter(|s| s.start_gfn < start && first < hi)
        {
            add(
                &mut pieces,
                Slot {
                    end_gfn: start,
                    ..*f
                },
            );
        }
        if let Some(s) = new {
            add(&mut pieces, s);
        }
        let mut hi_ext = hi;
        if let Some(last) = hi
            .checked_sub(1)
            .map(|i| self.slots[i])
            .filter(|s| s.end_gfn > end)
        {
            if last.start_gfn < end {
                add(
                    &mut pieces,
                    Slot {
                        start_gfn: end,
                        hva: last.hva_of(end),
                        ..last
                    },
                );
            }
        }
        if new.is_some() {
            if let Some(next) = self.slots.get(hi).filter(|s| s.start_gfn == end) {
                if pieces.last_mut().is_some_and(|p| p.continues_with(next)) {
                    add(&mut pieces, *next);
                    hi_ext = hi + 1;
                }
            }
        }
        SlotPlan {
            lo,
            hi: hi_ext,
            new: pieces,
        }
    }

    /// The slots a plan removes.
    pub(crate) fn removed(&self, plan: &SlotPlan) -> &[Slot] {
        &self.slots[plan.lo..plan.hi]
    }

    /// Checks [`MAX_MEMSLOTS`] and reserves room for `plan`.
    pub(crate) fn prepare(&mut self, plan: &SlotPlan) -> Result<(), MemoryError> {
        let removed = plan.hi - plan.lo;
        let added = plan.new.len;
        if added > removed {
            let grow = added - removed;
            if self.slots.len() + grow > MAX_MEMSLOTS {
                return Err(MemoryError::LimitReached(Limit::Memslots));
            }
            try_reserve(&mut self.slots, grow)?;
        }
        Ok(())
    }

    /// Applies a plan after [`MemSlots::prepare`] (no allocation: the room is reserved and
    /// the replacement has an exact length).
    pub(crate) fn apply(&mut self, plan: &SlotPlan) {
        self.slots.splice(plan.lo..plan.hi, plan.new.iter());
    }
}

/// Protected guest frames, as disjoint merged ranges `(start, end)` sorted by start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Protections {
    ranges: Vec<(u64, u64)>,
}

/// A planned protection change: `ranges[lo..hi]` becomes `new`.
#[derive(Debug)]
pub(crate) struct ProtectPlan {
    lo: usize,
    hi: usize,
    new: Pieces<(u64, u64), 2>,
}

impl Protections {
    /// Plans protecting (`protect`) or unprotecting `[start, end)`. Changes nothing.
    pub(crate) fn plan(&self, start: u64, end: u64, protect: bool) -> ProtectPlan {
        let mut new = Pieces::new((0, 0));
        if protect {
            // Every range touching [start, end), adjacent ones too, merges into one.
            let lo = self.ranges.partition_point(|r| r.1 < start);
            let hi = self.ranges.partition_point(|r| r.0 <= end).max(lo);
            let (mut s, mut e) = (start, end);
            if lo < hi {
                s = s.min(self.ranges[lo].0);
                e = e.max(self.ranges[hi - 1].1);
            }
            new.push((s, e));
            ProtectPlan { lo, hi, new }
        } else {
            // Ranges overlapping [start, end) are cut back to what lies outside it.
            let lo = self.ranges.partition_point(|r| r.1 <= start);
            let hi = self.ranges.partition_point(|r| r.0 < end).max(lo);
            if lo < hi {
                if self.ranges[lo].0 < start {
                    new.push((self.ranges[lo].0, start));
                }
                if self.ranges[hi - 1].1 > end {
                    new.push((end, self.ranges[hi - 1].1));
                }
            }
            ProtectPlan { lo, hi, new }
        }
    }

    /// Checks [`MAX_PROTECTED_RANGES`] and reserves room for `plan`.
    pub(crate) fn prepare(&mut self, plan: &ProtectPlan) -> Result<(), MemoryError> {
        let removed = plan.hi - plan.lo;
        if plan.new.len > removed {
            let grow = plan.new.len - removed;
            if self.ranges.len() + grow > MAX_PROTECTED_RANGES {
                return Err(MemoryError::LimitReached(Limit::ProtectedRanges));
            }
            try_reserve(&mut self.ranges, grow)?;
        }
        Ok(())
    }

    /// Applies a plan after [`Protections::prepare`].
    pub(crate) fn apply(&mut self, plan: &ProtectPlan) {
        self.ranges.splice(plan.lo..plan.hi, plan.new.iter());
    }

    /// The first protected frame in `[start, end)`.
    pub(crate) fn first_in(&self, start: u64, end: u64) -> Option<u64> {
        let n = self.ranges.partition_point(|r| r.0 <= start);
        if let Some(i) = n.checked_sub(1) {
            if self.ranges[i].1 > start {
                return Some(start);
            }
        }
        self.ranges.get(n).map(|r| r.0).filter(|&s| s < end)
    }

    /// All ranges, in order.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }
}
