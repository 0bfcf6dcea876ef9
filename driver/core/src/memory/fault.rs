//! Resolving a guest-physical address under the memory lock: the memslot, the block, the
//! pinned chunk (or the chunk to pin first, outside the lock: [`NeedPin`]), and filling the
//! EPT from a pinned chunk on a violation (SDM 325462-083US Vol. 3C §29.3.2 for the leaves,
//! Table 29-4 for 2-MiB leaves).

use rhax_api::HAX_CHUNK_SIZE;

use super::ept::leaf_entry;
use super::ramblock::RamBlock;
use super::{
    EptAccess, MemoryError, MemoryMap, NeedPin, Resolution, Slot, Translation, FRAMES_PER_LARGE,
    LARGE_PAGE_SIZE, PAGE_SIZE,
};
use crate::platform::{PinnedMemory, Platform};

/// The chunk index and the page index inside it of host address `hva` in `block`.
fn chunk_page(block: &RamBlock, hva: u64) -> (u64, usize) {
    let off = hva - block.start;
    (
        off / HAX_CHUNK_SIZE,
        ((off % HAX_CHUNK_SIZE) / PAGE_SIZE) as usize,
    )
}

/// A page a pinned chunk should hold but the platform does not know: a broken invariant,
/// reported as a bad address rather than a panic.
const NO_PAGE: MemoryError = MemoryError::Platform(crate::platform::PlatformError::BadUserAddress);

impl MemoryMap {
    /// The slot mapping `gfn`, its block and the pinned chunk holding `gfn`'s page; or the
    /// chunk to pin first.
    #[allow(clippy::type_complexity)]
    fn lookup(
        &self,
        gfn: u64,
    ) -> Result<Option<Result<(Slot, &RamBlock, u64), NeedPin>>, MemoryError> {
        let Some(slot) = self.slots.find(gfn).copied() else {
            return Ok(None);
        };
        // A slot always names a registered block; a miss would be a broken invariant,
        // reported as an error rather than a panic.
        let block = self.blocks.get(slot.block).ok_or(MemoryError::NoRamBlock)?;
        let (chunk, _) = chunk_page(block, slot.hva_of(gfn));
        if block.chunk(chunk).is_some() {
            return Ok(Some(Ok((slot, block, chunk))));
        }
        let (hva, len) = block.chunk_range(chunk);
        Ok(Some(Err(NeedPin {
            block: block.start,
            id: block.id,
            chunk,
            hva,
            len,
        })))
    }

    /// [`GuestMemory::translate`] under the lock; `Err(NeedPin)` when the chunk is not pinned.
    pub(super) fn translate<P: Platform>(
        &self,
        platform: &P,
        gpa: u64,
    ) -> Result<Result<Option<Translation>, NeedPin>, MemoryError> {
        let gfn = gpa / PAGE_SIZE;
        let (slot, block, chunk) = match self.lookup(gfn)? {
            None => return Ok(Ok(None)),
            Some(Err(need)) => {
                if let Some(p) = self.protections.first_in(gfn, gfn + 1) {
                    return Err(MemoryError::Protected { gpa: p * PAGE_SIZE });
                }
                return Ok(Err(need));
            }
            Some(Ok(found)) => found,
        };
        if let Some(p) = self.protections.first_in(gfn, gfn + 1) {
            return Err(MemoryError::Protected { gpa: p * PAGE_SIZE });
        }
        let hva = slot.hva_of(gfn);
        let (_, page) = chunk_page(block, hva);
        let pinned = block.chunk(chunk).ok_or(NO_PAGE)?;
        let hpa = platform.pinned_page(pinned, page).ok_or(NO_PAGE)?;
        let hva = hva + gpa % PAGE_SIZE;
        Ok(Ok(Some(Translation {
            hpa: hpa + gpa % PAGE_SIZE,
            hva,
            writable: !slot.rom,
            pin_handle: pinned.handle,
            // The chunk covers `hva` (it was found for it), so this neither wraps nor
            // exceeds the chunk's length.
            pin_offset: hva.wrapping_sub(pinned.user_address) as usize,
        })))
    }

    /// [`GuestMemory::handle_violation`] under the lock; `Err(NeedPin)` when the chunk must
    /// be pinned first.
    pub(super) fn resolve_violation<P: Platform>(
        &mut self,
        platform: &P,
        gpa: u64,
        access: EptAccess,
    ) -> Result<Result<Resolution, NeedPin>, MemoryError> {
        let gfn = gpa / PAGE_SIZE;
        let Some(slot) = self.slots.find(gfn).copied() else {
            return Ok(Ok(Resolution::Mmio));
        };
        if slot.rom && access.contains(EptAccess::WRITE) {
            return Ok(Ok(Resolution::WriteToRom));
        }
        if self.ept.leaf(gpa).is_some() {
            // Another vCPU mapped it between this exit and the lock (no flush needed: the
            // violation itself dropped the stale "not present" for this address).
            return Ok(Ok(Resolution::Mapped));
        }
        let block_start = gfn & !(FRAMES_PER_LARGE - 1);
        if let Some(p) = self
            .protections
            .first_in(block_start, block_start + FRAMES_PER_LARGE)
        {
            return Ok(Ok(Resolution::Protected { gpa: p * PAGE_SIZE }));
        }
        match self.lookup(gfn)? {
            None => return Ok(Ok(Resolution::Mmio)),
            Some(Err(need)) => return Ok(Err(need)),
            Some(Ok(_)) => {}
        }
        self.fill(platform, &slot, gfn)?;
        Ok(Ok(Resolution::Mapped))
    }

    /// Maps every page of `slot` whose host page lies in the (pinned) chunk holding `gfn`'s,
    /// except protected pages (HAXM maps up to 512 PTEs per violation the same way).
    fn fill<P: Platform>(
        &mut self,
        platform: &P,
        slot: &Slot,
        gfn: u64,
    ) -> Result<(), MemoryError> {
        let hva = slot.hva_of(gfn);
        let MemoryMap {
            blocks,
            protections,
            ept,
            large_pages,
            ..
        } = self;
        let block = blocks.get(slot.block).ok_or(MemoryError::NoRamBlock)?;
        let (chunk, _) = chunk_page(block, hva);
        let (chunk_start, chunk_len) = block.chunk_range(chunk);
        let pinned = block.chunk(chunk).ok_or(NO_PAGE)?;
        let slot_hva_end = slot.hva_of(slot.end_gfn);
        let lo_h = chunk_start.max(slot.hva);
        let hi_h = (chunk_start + chunk_len).min(slot_hva_end);
        let lo = slot.start_gfn + (lo_h - slot.hva) / PAGE_SIZE;
        let hi = slot.start_gfn + (hi_h - slot.hva) / PAGE_SIZE;
        let page_of = |g: u64| ((slot.hva_of(g) - chunk_start) / PAGE_SIZE) as usize;
        let mut g = lo;
        while g < hi {
            let region = g & !(FRAMES_PER_LARGE - 1);
            let region_end = region + FRAMES_PER_LARGE;
            if *large_pages
                && g == region
                && region_end <= hi
                && protections.first_in(region, region_end).is_none()
                && ept.pde_free(region * PAGE_SIZE)
            {
                if let Some(hpa) = contiguous_2m(platform, pinned, page_of(region)) {
                    let entry = leaf_entry(hpa, slot.rom, true);
                    ept.map(platform, region * PAGE_SIZE, 2, entry)?;
                    g = region_end;
                    continue;
                }
            }
            let stop = region_end.min(hi);
            while g < stop {
                let gpa = g * PAGE_SIZE;
                if protections.first_in(g, g + 1).is_none() && ept.leaf(gpa).is_none() {
                    let hpa = platform.pinned_page(pinned, page_of(g)).ok_or(NO_PAGE)?;
                    ept.map(platform, gpa, 1, leaf_entry(hpa, slot.rom, false))?;
                }
                g += 1;
            }
        }
        Ok(())
    }
}

/// The host-physical address of 512 pinned pages from `first`, when they are contiguous and
/// start 2-MiB aligned (a 2-MiB EPT leaf needs both: Table 29-4, bits 20:12 reserved).
fn contiguous_2m<P: Platform>(platform: &P, pinned: &PinnedMemory, first: usize) -> Option<u64> {
    let base = platform.pinned_page(pinned, first)?;
    if base % LARGE_PAGE_SIZE != 0 {
        return None;
    }
    for i in 1..FRAMES_PER_LARGE as usize {
        if platform.pinned_page(pinned, first + i)? != base + i as u64 * PAGE_SIZE {
            return None;
        }
    }
    Some(base)
}
