//! RAM blocks: user host-virtual ranges registered by ALLOC_RAM / ADD_RAMBLOCK, or implicitly by
//! a STANDALONE mapping (haxm-abi.md §2 and §6 "Guest RAM"). A block is pinned in 2 MiB chunks
//! ([`HAX_CHUNK_SIZE`], counted from the block's start as HAXM does), each on first need.
//!
//! Both the blocks and each block's pinned chunks are sorted vectors searched by binary
//! search, grown only after a fallible reservation ([`super::limits`]).

use alloc::vec::Vec;

use rhax_api::HAX_CHUNK_SIZE;

use super::error::MemoryError;
use super::limits::{try_reserve, Limit, MAX_RAM_BLOCKS};
use super::PAGE_SIZE;
use crate::platform::PinnedMemory;

/// One registered block.
#[derive(Debug)]
pub(crate) struct RamBlock {
    pub(crate) start: u64,
    pub(crate) size: u64,
    /// Created by a STANDALONE mapping: freed when no mapping refers to it any more.
    pub(crate) standalone: bool,
    /// Unique over the VM's life: a pin made outside the lock is installed only into the block
    /// it was made for, not into a later one registered at the same address.
    pub(crate) id: u64,
    /// Memslots backed by this block.
    pub(crate) refs: usize,
    /// Pinned chunks, sorted by index. Sparse: a block can be far larger than what is ever
    /// touched, and nothing here may allocate in proportion to a user-given size.
    pub(crate) chunks: Vec<(u64, PinnedMemory)>,
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

    fn chunk_pos(&self, index: u64) -> Result<usize, usize> {
        self.chunks.binary_search_by_key(&index, |(i, _)| *i)
    }

    /// Pinned chunk `index`, if pinned.
    pub(crate) fn chunk(&self, index: u64) -> Option<&PinnedMemory> {
        self.chunk_pos(index).ok().map(|p| &self.chunks[p].1)
    }

    /// Installs a pin of chunk `index` made outside the lock. Hands `pinned` back when the
    /// chunk is pinned already (another thread won the race) or no memory is left to record it.
    pub(crate) fn install_chunk(
        &mut self,
        index: u64,
        pinned: PinnedMemory,
    ) -> Result<(), (Option<MemoryError>, PinnedMemory)> {
        match self.chunk_pos(index) {
            Ok(_) => Err((None, pinned)),
            Err(pos) => {
                if let Err(e) = try_reserve(&mut self.chunks, 1) {
                    return Err((Some(e.into()), pinned));
                }
                self.chunks.insert(pos, (index, pinned));
                Ok(())
            }
        }
    }
}

/// All blocks of a VM, sorted by start address; they never overlap.
#[derive(Debug, Default)]
pub(crate) struct RamBlocks {
    pub(crate) blocks: Vec<RamBlock>,
    next_id: u64,
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
    /// Index of the last block starting at or below `addr` (`None` if there is none).
    fn last_at_or_below(&self, addr: u64) -> Option<usize> {
        self.blocks
            .partition_point(|b| b.start <= addr)
            .checked_sub(1)
    }

    /// Whether `[start, end)` overlaps a registered block.
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        // The only candidate is the last block starting below `end`.
        let n = self.blocks.partition_point(|b| b.start < end);
        n.checked_sub(1)
            .is_some_and(|i| self.blocks[i].end() > start)
    }

    /// The block that contains all of `[start, end)`.
    pub(crate) fn containing(&self, start: u64, end: u64) -> Option<&RamBlock> {
        self.last_at_or_below(start)
            .map(|i| &self.blocks[i])
            .filter(|b| end <= b.end())
    }

    /// The block starting at `start`.
    pub(crate) fn get(&self, start: u64) -> Option<&RamBlock> {
        let i = self.last_at_or_below(start)?;
        Some(&self.blocks[i]).filter(|b| b.start == start)
    }

    /// The block starting at `start`, mutably.
    pub(crate) fn get_mut(&mut self, start: u64) -> Option<&mut RamBlock> {
        let i = self.last_at_or_below(start)?;
        self.blocks.get_mut(i).filter(|b| b.start == start)
    }

    /// Checks that a block `[start, start + size)` may be registered ([`check_block_range`],
    /// no overlap, HAXM `-EINVAL`; below [`MAX_RAM_BLOCKS`]) and reserves room for it, so
    /// that [`RamBlocks::insert`] cannot fail. Changes nothing observable.
    pub(crate) fn prepare(&mut self, start: u64, size: u64) -> Result<(), MemoryError> {
        let end = check_block_range(start, size)?;
        if self.overlaps(start, end) {
            return Err(MemoryError::Overlap);
        }
        if self.blocks.len() >= MAX_RAM_BLOCKS {
            return Err(MemoryError::LimitReached(Limit::RamBlocks));
        }
        try_reserve(&mut self.blocks, 1)?;
        Ok(())
    }

    /// Registers a block after [`RamBlocks::prepare`] succeeded for it.
    pub(crate) fn insert(&mut self, start: u64, size: u64, standalone: bool) {
        let pos = self.blocks.partition_point(|b| b.start < start);
        self.next_id += 1;
        self.blocks.insert(
            pos,
            RamBlock {
                start,
                size,
                standalone,
                id: self.next_id,
                refs: 0,
                chunks: Vec::new(),
            },
        );
    }

    /// Removes a block, moving its pinned chunks into `pins` (which the caller reserved room
    /// in); returns its size.
    pub(crate) fn remove_into(&mut self, start: u64, pins: &mut Vec<PinnedMemory>) -> u64 {
        let Some(i) = self
            .last_at_or_below(start)
            .filter(|&i| self.blocks[i].start == start)
        else {
            return 0;
        };
        let b = self.blocks.remove(i);
        pins.extend(b.chunks.into_iter().map(|(_, p)| p));
        b.size
    }
}
