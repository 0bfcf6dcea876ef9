//! Guest memory: RAM blocks, memslots, PROTECT_RAM and the EPT built from them.
//!
//! Section numbers follow the Intel SDM, order number 325462-083US (March 2024): Vol. 3C §29.3
//! "The Extended Page Table Mechanism (EPT)" (§29.3.2 translation and entry formats, §29.3.3
//! EPT-induced VM exits), §29.4 caching and INVEPT, §25.6.11 the EPTP. HAXM behaviour from
//! haxm-abi.md §2 (ALLOC_RAM, ADD_RAMBLOCK, SET_RAM, SET_RAM2, PROTECT_RAM) and §6 "Guest RAM".
//!
//! # Design
//!
//! * **Lazy EPT, lazy pinning (as HAXM).** SET_RAM only edits the memslots and zaps EPT
//!   entries; nothing is pinned or mapped. An EPT violation ([`GuestMemory::handle_violation`])
//!   looks up the slot, pins the 2-MiB chunk of the RAM block on first use, and maps every page
//!   of the slot that lies in that chunk at once (one 2-MiB leaf when allowed). Why lazy:
//!   QEMU registers every RAM block with host memory (VRAM, option ROMs, the whole of pc.ram)
//!   whether the guest touches it or not (haxm-clients.md §2.1); pinning all of it eagerly
//!   would lock gigabytes of never-used memory. Pinned chunks stay pinned until the block goes
//!   (the VM is destroyed, or a STANDALONE block loses its last mapping), as in HAXM.
//! * **2-MiB leaves** where a whole 2-MiB-aligned guest range maps, inside one slot, onto one
//!   chunk whose host pages are physically contiguous from a 2-MiB-aligned address, and the CPU
//!   supports 2-MiB EPT pages (the `large_pages` argument); 4 KiB otherwise. A 2-MiB guest
//!   range containing a protected page is always mapped with 4-KiB leaves.
//! * **Memory type**: write-back with "ignore PAT", see [`ept::LEAF_MEMORY_TYPE`].
//! * **MMIO** is every guest-physical page without a slot: it never gets an EPT entry, so
//!   an access exits with an EPT violation, and [`Resolution::Mmio`] sends it to the emulator.
//!   Writes to ROM are the same ([`Resolution::WriteToRom`]): ROM pages are mapped read+execute.
//!
//! # Concurrency
//!
//! Memory-map changes arrive on the VM handle from any thread (QEMU's main thread, or a vCPU
//! thread reprogramming a PCI BAR) while other vCPUs run the guest (haxm-clients.md §2.2).
//! All state lives behind one [`spin::Mutex`]; vCPUs take it only to resolve an EPT violation
//! or to translate and copy for the emulator and string IO, never on the VM-entry path. It is
//! the leaf of the dispatcher's lock hierarchy (`dispatch::lockorder`): nothing else is locked
//! while it is held, and it is never held across work that blocks or faults. In particular
//! **pinning runs with the lock released**: a lookup that finds its chunk unpinned returns what
//! to pin (`NeedPin`), the caller pins it (probe-and-lock: may fault, page in, block), retakes
//! the lock and installs the pin only into the very block it was made for (blocks carry an
//! id, so a block unmapped and registered again at the same address meanwhile is not
//! mistaken for it), then looks up again. A pin that lost the race is released, never having
//! been reachable. What stays under the lock is bounded and non-blocking: the lookups, the
//! splices of a change, and EPT fills (which may allocate a paging-structure page from the
//! platform's non-paged allocator, allowed at raised IRQL on Windows).
//!
//! Sizes are bounded and every allocation on an IOCTL path is fallible ([`limits`]).
//!
//! Safety argument against the CPU's page walker, which reads the tables without the lock:
//! * entries change only by one aligned 8-byte atomic store each, so a walk sees the old or
//!   the new entry, never a torn one;
//! * filling a not-present entry needs no flush (only present translations are cached);
//! * a change that clears a present entry ("zap") bumps the **epoch** and returns an
//!   [`InveptRequest`]: until every CPU that may have run this VM executed a single-context
//!   INVEPT for [`GuestMemory::eptp`], the CPU may still use the old translation, and even walk
//!   through a page table the zap unlinked. So nothing a zap removes is freed at once: unlinked
//!   page tables and the pins of dropped STANDALONE blocks are *retired*, tagged with the epoch,
//!   and handed back to the platform only by [`GuestMemory::invept_done`], which the caller
//!   calls after that INVEPT completed everywhere (host-side copies through a [`Translation`]
//!   happen only inside the lock, see below, so none is in flight then). Guest RAM pages and EPT pages therefore never return to the host while a
//!   stale translation can reach them.
//! * **Host-side copies** (string IO, the MMIO instruction fetch, the guest page walk) reach
//!   guest RAM through the pins too, not through the EPT, and no INVEPT protects them: a copy
//!   through a [`Translation`] obtained earlier could still run while another thread unmaps
//!   the page, the INVEPT broadcast completes and [`GuestMemory::invept_done`] unpins it. So
//!   the kernel copies only inside [`GuestMemory::with_translation`], which holds the lock from
//!   the lookup to the end of the copy; see there for why that closes the window.
//! * This module never executes VMX instructions; the caller issues INVEPT (e.g. by IPI to the
//!   CPUs running the VM's vCPUs, and on the next entry of a vCPU whose CPU has a flushed epoch
//!   older than [`GuestMemory::epoch`]).

mod apic_access;
mod ept;
mod error;
mod fault;
pub mod limits;
mod memslot;
mod ramblock;
pub(crate) mod try_arc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use rhax_api::{
    AllocRamInfo, ProtectRamInfo, RamFlags, RamPermission, RamblockInfo, SetRamInfo, SetRamInfo2,
    HAX_CHUNK_SIZE,
};
use spin::Mutex;

pub use ept::{
    entry_span, index, leaf_entry, Leaf, EPT_ADDRESS_MASK, EPT_EXECUTE, EPT_IGNORE_PAT, EPT_LARGE,
    EPT_MEMORY_TYPE_WB, EPT_READ, EPT_RWX, EPT_WRITE, LEAF_MEMORY_TYPE,
};
pub use error::MemoryError;
pub use memslot::Slot;

use crate::platform::{PhysPages, PinnedMemory, Platform};
use ept::Ept;
use limits::{try_reserve, RamQuota};
use memslot::{MemSlots, Protections};
use ramblock::RamBlocks;

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;
/// Frames per 2-MiB page.
const FRAMES_PER_LARGE: u64 = 512;
/// A 2-MiB page.
pub const LARGE_PAGE_SIZE: u64 = PAGE_SIZE * FRAMES_PER_LARGE;
/// Guest-physical addresses a 4-level EPT translates: bits 47:0 (SDM Vol. 3C §29.3.2).
pub const GPA_LIMIT: u64 = 1 << 48;

const _: () = assert!(HAX_CHUNK_SIZE == LARGE_PAGE_SIZE);

bitflags::bitflags! {
    /// The access that caused an EPT violation: exit-qualification bits 2:0 (SDM Vol. 3C
    /// §28.2.1, Table 28-7 "Exit Qualification for EPT Violations").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EptAccess: u64 {
        /// Bit 0: a data read.
        const READ = 1 << 0;
        /// Bit 1: a data write.
        const WRITE = 1 << 1;
        /// Bit 2: an instruction fetch.
        const EXECUTE = 1 << 2;
    }
}

impl EptAccess {
    /// The access bits of an EPT-violation exit qualification.
    pub fn from_exit_qualification(qualification: u64) -> EptAccess {
        EptAccess::from_bits_truncate(qualification & 7)
    }
}

/// What an EPT violation turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The page is RAM and is now mapped (or already was: another vCPU got there first);
    /// re-enter the guest.
    Mapped,
    /// No RAM at this address: emulate the instruction as MMIO (FAST_MMIO exit).
    Mmio,
    /// A write to ROM: emulate it as an MMIO write (QEMU drops it).
    WriteToRom,
    /// The 2-MiB guest block holding the page contains pages protected by PROTECT_RAM:
    /// HAX_EXIT_PAGEFAULT.
    Protected {
        /// The first protected page of the 2-MiB-aligned block containing the faulting
        /// address, as HAXM reports in `pagefault.gpa` (haxm-abi.md §4 and quirk 10; Android
        /// rounds down to 2 MiB and unprotects the whole chunk).
        gpa: u64,
    },
}

/// A guest-physical address resolved for the instruction emulator or string IO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address (pinned until the mapping goes and [`GuestMemory::invept_done`]).
    pub hpa: u64,
    /// The host-virtual address in the process that registered the block.
    pub hva: u64,
    /// Writes allowed (not ROM).
    pub writable: bool,
    /// The platform's handle of the pinned chunk holding the byte ([`PinnedMemory::handle`]:
    /// an MDL on Windows, whose system-space mapping reaches it from the kernel).
    pub pin_handle: usize,
    /// The byte's offset from the start of that pinned chunk.
    pub pin_offset: usize,
}

/// A request to execute a single-context INVEPT for `eptp` on every CPU where this VM's vCPUs
/// run or ran, then to call [`GuestMemory::invept_done`] with it.
#[must_use = "a changed mapping stays cached in CPUs until INVEPT"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InveptRequest {
    /// The EPTP to invalidate.
    pub eptp: u64,
    /// The epoch the INVEPT makes current.
    pub epoch: u64,
}

/// A RAM block, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamBlockInfo {
    /// First host-virtual address.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Created implicitly by a STANDALONE mapping.
    pub standalone: bool,
    /// Indices of the pinned 2-MiB chunks.
    pub pinned_chunks: Vec<u64>,
}

/// The whole observable state, to compare before and after a refused request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemorySnapshot {
    /// RAM blocks in address order.
    pub blocks: Vec<RamBlockInfo>,
    /// Memslots in guest-physical order.
    pub slots: Vec<Slot>,
    /// Protected guest frame ranges `[start, end)`.
    pub protected: Vec<(u64, u64)>,
    /// Guest frame after the highest mapped so far.
    pub mapped_limit_gfn: u64,
    /// Present EPT leaves.
    pub leaves: Vec<(u64, Leaf)>,
    /// The epoch.
    pub epoch: u64,
    /// Paging structures in the tree.
    pub tables: usize,
    /// Retired paging structures and pins waiting for an INVEPT.
    pub retired: (usize, usize),
}

struct MemoryMap {
    blocks: RamBlocks,
    slots: MemSlots,
    protections: Protections,
    ept: Ept,
    large_pages: bool,
    /// Frame after the highest ever mapped (PROTECT_RAM must stay below it).
    mapped_limit_gfn: u64,
    epoch: u64,
    /// In epoch order (each change pushes with a new, higher epoch).
    retired_tables: Vec<(u64, PhysPages)>,
    retired_pins: Vec<(u64, PinnedMemory)>,
    quota: Arc<RamQuota>,
    /// The APIC-access page of rhax's in-kernel APIC ([`GuestMemory::map_apic_access`]).
    apic_access: Option<PhysPages>,
}

/// A VM's guest memory. Shared between the VM handle and its vCPUs (`&self` everywhere).
pub struct GuestMemory {
    map: Mutex<MemoryMap>,
    epoch: AtomicU64,
    eptp: u64,
}

/// A validated SET_RAM / SET_RAM2.
struct MapRequest {
    start_gfn: u64,
    end_gfn: u64,
    va: u64,
    flags: RamFlags,
}

/// A chunk that must be pinned before the request can go on: pinned outside the lock
/// ([`GuestMemory::pin_outside_lock`]), then installed if the block is still the same.
pub(crate) struct NeedPin {
    block: u64,
    id: u64,
    chunk: u64,
    hva: u64,
    len: u64,
}

/// How many times a lookup pins a chunk outside the lock and finds the map changed before it
/// gives up (each retry needs a concurrent unmap of that very block).
const PIN_ATTEMPTS: usize = 4;

fn check_map_request(
    pa: u64,
    size: u64,
    va: u64,
    flags: RamFlags,
) -> Result<MapRequest, MemoryError> {
    let known = RamFlags::ROM | RamFlags::STANDALONE | RamFlags::INVALID;
    if !known.contains(flags) {
        return Err(MemoryError::BadFlags);
    }
    // HAXM (core/memory.c): INVALID must come alone and with va == 0.
    let unmap = flags.contains(RamFlags::INVALID);
    if unmap && (flags != RamFlags::INVALID || va != 0) {
        return Err(MemoryError::BadFlags);
    }
    if size == 0 {
        return Err(MemoryError::ZeroSize);
    }
    if !unmap && va == 0 {
        return Err(MemoryError::ZeroAddress);
    }
    // HAXM drops the low 12 bits of pa and size silently; rhax refuses them (QEMU trims to
    // host pages, haxm-clients.md §2.2, and haxm-clients.md §2.3 lists page alignment).
    if pa % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 || va % PAGE_SIZE != 0 {
        return Err(MemoryError::Misaligned);
    }
    let end = pa.checked_add(size).ok_or(MemoryError::RangeOverflow)?;
    if !unmap {
        va.checked_add(size).ok_or(MemoryError::RangeOverflow)?;
    }
    if end > GPA_LIMIT {
        return Err(MemoryError::GpaOutOfRange);
    }
    Ok(MapRequest {
        start_gfn: pa / PAGE_SIZE,
        end_gfn: end / PAGE_SIZE,
        va,
        flags,
    })
}

impl GuestMemory {
    /// An empty guest-physical space (everything MMIO) with its PML4, with no RAM quota of
    /// its own. `large_pages`: the CPU supports 2-MiB EPT leaves (IA32_VMX_EPT_VPID_CAP bit
    /// 16).
    pub fn new<P: Platform>(platform: &P, large_pages: bool) -> Result<GuestMemory, MemoryError> {
        GuestMemory::with_quota(platform, large_pages, Arc::new(RamQuota::unlimited()))
    }

    /// As [`GuestMemory::new`], charging its RAM blocks to `quota` (SET_MEMLIMIT's, shared
    /// by every VM).
    pub fn with_quota<P: Platform>(
        platform: &P,
        large_pages: bool,
        quota: Arc<RamQuota>,
    ) -> Result<GuestMemory, MemoryError> {
        let ept = Ept::new(platform)?;
        let eptp = ept.eptp();
        Ok(GuestMemory {
            map: Mutex::new(MemoryMap {
                blocks: RamBlocks::default(),
                slots: MemSlots::default(),
                protections: Protections::default(),
                ept,
                large_pages,
                mapped_limit_gfn: 0,
                epoch: 0,
                retired_tables: Vec::new(),
                retired_pins: Vec::new(),
                quota,
                apic_access: None,
            }),
            epoch: AtomicU64::new(0),
            eptp,
        })
    }

    /// The EPT pointer for the VMCS (SDM Vol. 3C §25.6.11).
    pub fn eptp(&self) -> u64 {
        self.eptp
    }

    /// The epoch: bumped by every change that needs an INVEPT. A vCPU whose CPU last flushed
    /// an older epoch must INVEPT before entering the guest. Lock-free.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// `HAX_VM_IOCTL_ALLOC_RAM`: registers `[va, va + size)` (32-bit size) as a RAM block.
    /// `pad` is not checked, as in HAXM.
    pub fn alloc_ram(&self, info: &AllocRamInfo) -> Result<(), MemoryError> {
        self.add_block(info.va, u64::from(info.size))
    }

    /// `HAX_VM_IOCTL_ADD_RAMBLOCK`: registers `[start_va, start_va + size)` as a RAM block.
    pub fn add_ramblock(&self, info: &RamblockInfo) -> Result<(), MemoryError> {
        if info.reserved != 0 {
            return Err(MemoryError::ReservedNotZero);
        }
        self.add_block(info.start_va, info.size)
    }

    fn add_block(&self, start: u64, size: u64) -> Result<(), MemoryError> {
        let mut m = self.map.lock();
        m.blocks.prepare(start, size)?;
        if !m.quota.try_charge(size) {
            return Err(MemoryError::QuotaExceeded { bytes: size });
        }
        m.blocks.insert(start, size, false);
        Ok(())
    }

    /// `HAX_VM_IOCTL_SET_RAM`. `pad` is not checked: QEMU leaves stack garbage in it
    /// (haxm-clients.md §2.2).
    pub fn set_ram(&self, info: &SetRamInfo) -> Result<Option<InveptRequest>, MemoryError> {
        let req = check_map_request(info.pa_start, u64::from(info.size), info.va, info.flags())?;
        self.apply_map(&req)
    }

    /// `HAX_VM_IOCTL_SET_RAM2`: as [`GuestMemory::set_ram`] with a 64-bit size; `reserved1`
    /// and `reserved2` must be 0.
    pub fn set_ram2(&self, info: &SetRamInfo2) -> Result<Option<InveptRequest>, MemoryError> {
        if info.reserved1 != 0 || info.reserved2 != 0 {
            return Err(MemoryError::ReservedNotZero);
        }
        let req = check_map_request(info.pa_start, info.size, info.va, info.flags())?;
        self.apply_map(&req)
    }

    /// Plans the change, checks every bound and reserves every byte it needs, and only then
    /// changes anything (so a refusal or an allocation failure leaves the map as it was). Cost:
    /// O(log n) searches plus the slots, tables and pins the change itself touches.
    fn apply_map(&self, req: &MapRequest) -> Result<Option<InveptRequest>, MemoryError> {
        let mut guard = self.map.lock();
        let m = &mut *guard;
        let unmap = req.flags.contains(RamFlags::INVALID);
        let size = (req.end_gfn - req.start_gfn) * PAGE_SIZE;
        let va_end = req.va.wrapping_add(size); // checked in check_map_request
        let mut new_block = false;
        let block = if unmap {
            0
        } else if req.flags.contains(RamFlags::STANDALONE) {
            // The HVA range is its own block. A range inside an existing block (a remap of a
            // STANDALONE range, e.g. ROM <-> RAM, or the same buffer at a second guest
            // address) shares that block; one straddling a block's edge is refused.
            if let Some(b) = m.blocks.containing(req.va, va_end) {
                b.start
            } else if m.blocks.overlaps(req.va, va_end) {
                return Err(MemoryError::Overlap);
            } else {
                new_block = true;
                req.va
            }
        } else {
            match m.blocks.containing(req.va, va_end) {
                Some(b) => b.start,
                None => return Err(MemoryError::NoRamBlock),
            }
        };
        let new_slot = (!unmap).then(|| Slot {
            start_gfn: req.start_gfn,
            end_gfn: req.end_gfn,
            block,
            hva: req.va,
            rom: req.flags.contains(RamFlags::ROM),
        });
        let plan = m.slots.plan(req.start_gfn, req.end_gfn, new_slot);
        // Every bound and reservation before the first change.
        if new_block {
            m.blocks.prepare(req.va, size)?;
        }
        m.slots.prepare(&plan)?;
        let pin_bound: usize = m
            .slots
            .removed(&plan)
            .iter()
            .filter_map(|s| m.blocks.get(s.block))
            .filter(|b| b.standalone)
            .map(|b| b.chunks.len())
            .sum();
        let table_bound = m.ept.zap_bound(req.start_gfn, req.end_gfn);
        let mut pins = Vec::new();
        try_reserve(&mut pins, pin_bound)?;
        let mut retired = Vec::new();
        try_reserve(&mut retired, table_bound)?;
        try_reserve(&mut m.retired_pins, pin_bound)?;
        try_reserve(&mut m.retired_tables, table_bound)?;
        if new_block && !m.quota.try_charge(size) {
            return Err(MemoryError::QuotaExceeded { bytes: size });
        }
        // Apply: nothing below can fail or allocate.
        if new_block {
            m.blocks.insert(req.va, size, true);
        }
        for s in m.slots.removed(&plan) {
            if let Some(b) = m.blocks.get_mut(s.block) {
                b.refs = b.refs.saturating_sub(1);
            }
        }
        for s in plan.added() {
            if let Some(b) = m.blocks.get_mut(s.block) {
                b.refs += 1;
            }
        }
        // A STANDALONE block lives as long as a slot refers to it.
        for s in m.slots.removed(&plan) {
            let orphan = m
                .blocks
                .get(s.block)
                .is_some_and(|b| b.standalone && b.refs == 0);
            if orphan {
                let bytes = m.blocks.remove_into(s.block, &mut pins);
                m.quota.release(bytes);
            }
        }
        m.slots.apply(&plan);
        if !unmap {
            m.mapped_limit_gfn = m.mapped_limit_gfn.max(req.end_gfn);
        }
        let mut flush = m.ept.zap(req.start_gfn, req.end_gfn, &mut retired);
        flush |= !pins.is_empty();
        Ok(self.retire(m, flush, retired, pins))
    }

    /// Bumps the epoch and parks what must wait for an INVEPT, when anything changed. The
    /// caller reserved room in the retired lists for `tables` and `pins`.
    fn retire(
        &self,
        m: &mut MemoryMap,
        flush: bool,
        tables: Vec<PhysPages>,
        pins: Vec<PinnedMemory>,
    ) -> Option<InveptRequest> {
        if !flush && tables.is_empty() && pins.is_empty() {
            return None;
        }
        m.epoch += 1;
        self.epoch.store(m.epoch, Ordering::Release);
        let e = m.epoch;
        m.retired_tables.extend(tables.into_iter().map(|t| (e, t)));
        m.retired_pins.extend(pins.into_iter().map(|p| (e, p)));
        Some(InveptRequest {
            eptp: self.eptp,
            epoch: e,
        })
    }

    /// `HAX_VM_IOCTL_PROTECT_RAM`: protects (NONE) or unprotects (RWX) the guest pages touched
    /// by `[pa_start, pa_start + size)`. Any access to a 2-MiB block holding a protected page
    /// then resolves to [`Resolution::Protected`].
    pub fn protect_ram(&self, info: &ProtectRamInfo) -> Result<Option<InveptRequest>, MemoryError> {
        let perm = info.permission().map_err(|_| MemoryError::BadPermission)?;
        if info.reserved != 0 {
            return Err(MemoryError::ReservedNotZero);
        }
        if info.size == 0 {
            return Err(MemoryError::ZeroSize);
        }
        let end = info
            .pa_start
            .checked_add(info.size)
            .ok_or(MemoryError::RangeOverflow)?;
        let start_gfn = info.pa_start / PAGE_SIZE;
        // Rounded out: every page the range touches (Android passes page-sized ranges).
        let end_gfn = end / PAGE_SIZE + u64::from(end % PAGE_SIZE != 0);
        let mut guard = self.map.lock();
        let m = &mut *guard;
        // HAXM: the range must lie below the highest guest frame mapped so far (-EINVAL).
        if end_gfn > m.mapped_limit_gfn {
            return Err(MemoryError::BeyondMappedRam);
        }
        let protect = perm == RamPermission::None;
        let plan = m.protections.plan(start_gfn, end_gfn, protect);
        m.protections.prepare(&plan)?;
        if !protect {
            // Unprotected pages are mapped by the next violation; nothing cached to flush.
            m.protections.apply(&plan);
            return Ok(None);
        }
        let table_bound = m.ept.zap_bound(start_gfn, end_gfn);
        let mut retired = Vec::new();
        try_reserve(&mut retired, table_bound)?;
        try_reserve(&mut m.retired_tables, table_bound)?;
        m.protections.apply(&plan);
        let flush = m.ept.zap(start_gfn, end_gfn, &mut retired);
        Ok(self.retire(m, flush, retired, Vec::new()))
    }

    /// Resolves an EPT violation at `gpa` (the guest-physical-address field of the exit) for
    /// `access` (exit-qualification bits 2:0). Pins and maps RAM lazily; the pinning (which
    /// probes user memory and may block or fault) runs with the memory lock released.
    pub fn handle_violation<P: Platform>(
        &self,
        platform: &P,
        gpa: u64,
        access: EptAccess,
    ) -> Result<Resolution, MemoryError> {
        for _ in 0..PIN_ATTEMPTS {
            let need = match self.map.lock().resolve_violation(platform, gpa, access)? {
                Ok(r) => return Ok(r),
                Err(need) => need,
            };
            self.pin_outside_lock(platform, &need)?;
        }
        // The block kept being replaced between the pin and the install. Re-entering is
        // always safe: if the page is still unmapped the guest exits again, as when another
        // vCPU raced this one.
        Ok(Resolution::Mapped)
    }

    /// Pins the chunk `need` names with no lock held, then installs the pin if its block is
    /// still registered (the same block, by id) and the chunk still unpinned; otherwise the
    /// pin is released again (it was never reachable through a mapping).
    fn pin_outside_lock<P: Platform>(
        &self,
        platform: &P,
        need: &NeedPin,
    ) -> Result<(), MemoryError> {
        let len = usize::try_from(need.len).map_err(|_| MemoryError::RangeOverflow)?;
        let pinned = platform.pin(need.hva, len)?;
        let outcome = {
            let mut m = self.map.lock();
            match m.blocks.get_mut(need.block).filter(|b| b.id == need.id) {
                Some(b) => b.install_chunk(need.chunk, pinned),
                None => Err((None, pinned)),
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            Err((err, pinned)) => {
                platform.unpin(pinned);
                err.map_or(Ok(()), Err)
            }
        }
    }

    /// The host page behind `gpa`: `None` for MMIO. Pins the chunk if needed. A protected
    /// page is [`MemoryError::Protected`]. The result is only an address once the call
    /// returns: the pin behind it may go as soon as the lock is released (an unmap, then
    /// [`GuestMemory::invept_done`]). To reach the bytes use [`GuestMemory::with_translation`].
    pub fn translate<P: Platform>(
        &self,
        platform: &P,
        gpa: u64,
    ) -> Result<Option<Translation>, MemoryError> {
        self.with_translation(platform, gpa, |t| t)
    }

    /// Runs `f` with the translation of `gpa` (as [`GuestMemory::translate`]) while holding
    /// the memory lock: the host page `f` reaches through it stays pinned until `f` returns.
    /// `f` must be short (a copy of at most a page) and must not call back into this memory.
    ///
    /// Why this is enough: a pin is released only by [`GuestMemory::invept_done`] (or by
    /// [`GuestMemory::destroy`], which owns the memory), and only a pin that a mapping change
    /// retired; the change retires it in the same critical section that removes the last
    /// memslot reaching its block, and `invept_done` takes the lock to collect it. `f` runs in
    /// one critical section with the lookup that found the page through a memslot. Both being
    /// critical sections of one lock, either the lookup comes first, and the pin is not even
    /// retired before `f` is done, or the change comes first, and the lookup finds no memslot
    /// (`f` gets `None`: MMIO). No copy can reach a page after its unpin.
    ///
    /// A chunk not pinned yet is pinned with the lock released, then the lookup starts over
    /// under the lock (so `f` still sees a lookup made in its own critical section).
    ///
    /// Holding the lock for the copy is cheap: the copies are at most 64 bytes (string IO),
    /// 15 (instruction fetch) or 8 (page-table entries), and the lock is never taken inside
    /// the non-preemptible region.
    pub fn with_translation<P: Platform, R>(
        &self,
        platform: &P,
        gpa: u64,
        f: impl FnOnce(Option<Translation>) -> R,
    ) -> Result<R, MemoryError> {
        for _ in 0..PIN_ATTEMPTS {
            let need = {
                let guard = self.map.lock();
                match guard.translate(platform, gpa)? {
                    Ok(t) => return Ok(f(t)),
                    Err(need) => need,
                }
            };
            self.pin_outside_lock(platform, &need)?;
        }
        Err(MemoryError::MapChanging)
    }

    /// The INVEPT of `request` completed on every CPU: frees what changes up to its epoch
    /// retired. Collected under the lock, so never while a [`GuestMemory::with_translation`]
    /// copy runs (see there); handed back to the platform after the lock is released.
    pub fn invept_done<P: Platform>(&self, platform: &P, request: InveptRequest) {
        let (tables, pins) = {
            let mut m = self.map.lock();
            let tables = take_upto(&mut m.retired_tables, request.epoch);
            let pins = take_upto(&mut m.retired_pins, request.epoch);
            (tables, pins)
        };
        for (_, t) in tables {
            platform.free_pages(t);
        }
        for (_, p) in pins {
            platform.unpin(p);
        }
    }

    /// The memslots, in guest-physical order.
    pub fn slots(&self) -> Vec<Slot> {
        self.map.lock().slots.iter().copied().collect()
    }

    /// The EPT leaf translating `gpa`, if present.
    pub fn ept_leaf(&self, gpa: u64) -> Option<Leaf> {
        self.map.lock().ept.leaf(gpa)
    }

    /// Everything observable, for tests and diagnostics (allocates: not for IOCTL paths).
    pub fn snapshot(&self) -> MemorySnapshot {
        let m = self.map.lock();
        let mut leaves = Vec::new();
        m.ept.leaves(&mut leaves);
        MemorySnapshot {
            blocks: m
                .blocks
                .blocks
                .iter()
                .map(|b| RamBlockInfo {
                    start: b.start,
                    size: b.size,
                    standalone: b.standalone,
                    pinned_chunks: b.chunks.iter().map(|(i, _)| *i).collect(),
                })
                .collect(),
            slots: m.slots.iter().copied().collect(),
            protected: m.protections.ranges().collect(),
            mapped_limit_gfn: m.mapped_limit_gfn,
            leaves,
            epoch: m.epoch,
            tables: m.ept.table_count(),
            retired: (m.retired_tables.len(), m.retired_pins.len()),
        }
    }

    /// Gives every page and pin back, and the blocks' bytes to the quota. Call only when no
    /// vCPU of the VM runs any more and every CPU that ran one executed an INVEPT for
    /// [`GuestMemory::eptp`] (single- or all-context) afterwards: otherwise a cached
    /// translation could reach freed memory.
    pub fn destroy<P: Platform>(self, platform: &P) {
        let m = self.map.into_inner();
        m.ept.free(platform);
        if let Some(p) = m.apic_access {
            platform.free_pages(p);
        }
        for (_, t) in m.retired_tables {
            platform.free_pages(t);
        }
        for (_, p) in m.retired_pins {
            platform.unpin(p);
        }
        for b in m.blocks.blocks {
            m.quota.release(b.size);
            for (_, p) in b.chunks {
                platform.unpin(p);
            }
        }
    }
}

/// Takes the entries of `v` up to `epoch` (a prefix: `v` is in epoch order) without an
/// infallible allocation. When the rest cannot be moved for lack of memory, everything stays
/// retired, to be freed by a later call or by [`GuestMemory::destroy`].
fn take_upto<T>(v: &mut Vec<(u64, T)>, epoch: u64) -> Vec<(u64, T)> {
    let n = v.partition_point(|(e, _)| *e <= epoch);
    if n == v.len() {
        return core::mem::take(v);
    }
    if n == 0 {
        return Vec::new();
    }
    let mut rest = Vec::new();
    if try_reserve(&mut rest, v.len() - n).is_err() {
        return Vec::new();
    }
    rest.extend(v.drain(n..));
    core::mem::replace(v, rest)
}
