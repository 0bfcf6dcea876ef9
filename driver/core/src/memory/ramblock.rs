//! RAM blocks: user host-virtual ranges registered by ALLOC_RAM / ADD_RAMBLOCK, or implicitly by
//! a STANDALONE mapping (haxm-abi.md §2 and §6 "Guest RAM"). A block is pinned in 2 MiB chunks
//! ([`HAX_CHUNK_SIZE`], counted from the block's start as HAXM does), each on first need.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use rhax_api::HAX_CHUNK_SIZE;

use super::error::MemoryError;
use super::PAGE_SIZE;
use crate::platform::{PinnedMemory, Platform};

/// One registered block.
#[derive(Debug)]
pub(crate) struct RamBlock {
    pub(crate) start: u64,
    pub(crate) size: u64,
    /// Created by a STANDALONE mapping: freed when no mapping refers to it any more.
    pub(crate) standalone: bool,
    /// Pinned chunks by index. Sparse: a block can be far larger than what is ever touched, and
    /// nothing here may allocate in proportion to a user-given size.
    pub(crate) chunks: BTreeMap<u64, PinnedMemory>,
}

impl RamBlock {
    /// The exclusive end (no overflow: checked at registration).
    pub(crate) fn end(&self) -> u64 {
        self.start + self.size
    }

    /// The host range of chunk `index`: the last chunk may be shorter.
    pub(crate) fn chunk_range(&self, index: u64) -> (u64, u64) {
        let start = self.start + index * HAX_CHUNK_SIZE;
        let len = core::cmp::min(HAX_CHUNK_SIZE, self.end() - start);
        (start, len)
    }

    /// Pins chunk `index` if it is not pinned yet and returns it.
    pub(crate) fn pin_chunk<P: Platform>(
        &mut self,
        platform: &P,
        index: u64,
    ) -> Result<&PinnedMemory, MemoryError> {
        if !self.chunks.contains_key(&index) {
            let (start, len) = self.chunk_range(index);
            let len = usize::try_from(len).map_err(|_| MemoryError::RangeOverflow)?;
            let pinned = platform.pin(start, len)?;
            self.chunks.insert(index, pinned);
        }
        self.chunks.get(&index).ok_or(MemoryError::NoRamBlock)
    }
}

/// All blocks of a VM, keyed by start address; they never overlap.
#[derive(Debug, Default)]
pub(crate) struct RamBlocks {
    pub(crate) blocks: BTreeMap<u64, RamBlock>,
}

/// Checks a new block's range: non-zero, page-aligned, no wrap-around.
///
/// HAXM refuses `va == 0` and `size == 0` at registration but checks alignment only when a
/// chunk is pinned on the first guest access, where a misaligned block panics the vCPU
/// (haxm-abi.md §2). rhax refuses it up front; QEMU's blocks come from mmap and are aligned.
pub(crate) fn check_block_range(start: u64, size: u64) -> Result<u64, MemoryError> {
    if start == 0 {
        return Err(MemoryError::ZeroAddress);
    }
    if size == 0 {
        return Err(MemoryError::ZeroSize);
    }
    if start % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 {
        return Err(MemoryError::Misaligned);
    }
    start.checked_add(size).ok_or(MemoryError::RangeOverflow)
}

impl RamBlocks {
    /// Whether `[start, end)` overlaps a registered block.
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        // The only candidate is the last block starting below `end`.
        self.blocks
            .range(..end)
            .next_back()
            .is_some_and(|(_, b)| b.end() > start)
    }

    /// The block that contains all of `[start, end)`.
    pub(crate) fn containing(&self, start: u64, end: u64) -> Option<&RamBlock> {
        self.blocks
            .range(..=start)
            .next_back()
            .map(|(_, b)| b)
            .filter(|b| end <= b.end())
    }

    /// Registers a block after [`check_block_range`]; refuses overlaps (HAXM: `-EINVAL`).
    pub(crate) fn add(
        &mut self,
        start: u64,
        size: u64,
        standalone: bool,
    ) -> Result<(), MemoryError> {
        let end = check_block_range(start, size)?;
        if self.overlaps(start, end) {
            return Err(MemoryError::Overlap);
        }
        self.blocks.insert(
            start,
            RamBlock {
                start,
                size,
                standalone,
                chunks: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Removes a block, handing back its pinned chunks.
    pub(crate) fn remove(&mut self, start: u64) -> Vec<PinnedMemory> {
        match self.blocks.remove(&start) {
            Some(b) => b.chunks.into_values().collect(),
            None => Vec::new(),
        }
    }
}
