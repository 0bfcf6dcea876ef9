//! What a caller may make the kernel hold for one VM, and fallible allocation.
//!
//! Every structure the memory IOCTLs grow (RAM blocks, memslots, protected ranges, pinned
//! chunks, EPT tables) lives in non-paged kernel memory. A kernel allocation that fails through
//! an infallible API (`Vec::push`, `Box::new`) ends in `handle_alloc_error`, a bugcheck; and a
//! structure a user can grow without a bound is a way to exhaust the pool for everyone. So:
//!
//! * **Per-VM bounds** ([`MAX_RAM_BLOCKS`], [`MAX_MEMSLOTS`], [`MAX_PROTECTED_RANGES`]): a request
//!   that would go past one is refused ([`super::MemoryError::LimitReached`], answered as HAXM
//!   answers a failed kernel allocation: `-ENOMEM`, Windows `STATUS_UNSUCCESSFUL`), before
//!   anything changes. HAXM itself has no such bounds (its RAM blocks and memslots are linked
//!   lists of `hax_vmalloc`ed nodes, `core/ramblock.c`, `core/memslot.c`; its protection state
//!   is a bitmap sized by the highest mapped frame), so its only answer to a storm is running
//!   the pool dry. The values are far above what known clients use (below).
//! * **The RAM quota** ([`RamQuota`], set by SET_MEMLIMIT): the bytes of all RAM blocks
//!   registered by all VMs together (ALLOC_RAM, ADD_RAMBLOCK and the implicit blocks of
//!   STANDALONE mappings) stay within the limit; a registration past it is refused with
//!   `-EINVAL` (HAXM before 6.2.0 enforced its quota the same way in `hax_vm_alloc_ram`:
//!   `if (hax->mem_limit && size > hax->mem_quota) return -EINVAL`, shared by every VM;
//!   haxm-abi.md §2 notes that 6.2.0 and later only store it).
//! * **Fallible allocation** everywhere on an IOCTL path: `try_reserve` before a push or a
//!   splice, `try_box` instead of `Box::new`, so running out of kernel memory is an error
//!   the caller sees (`-ENOMEM`) and the VM is unchanged.
//!
//! Why these numbers:
//! * QEMU registers one RAM block per `MemoryRegion` with RAM (pc.ram, VGA VRAM, option and
//!   BIOS ROMs, pflash: typically under 20) and maps each in one to three memslots (below and
//!   above the PCI hole, the legacy VGA window, the ISA BIOS alias), so a PC guest has a few
//!   dozen slots; a device reprogramming BARs replaces slots rather than adding them. The
//!   Android emulator adds one STANDALONE block and slot per host-visible allocation it maps
//!   into the guest (goldfish address space, Vulkan host memory): hundreds in heavy use. KVM
//!   served QEMU for years with 509 user memslots per VM. 4096 blocks and 4096 slots are eight
//!   times that, and cost at most 4096 × 40 bytes of slots and 4096 block headers.
//! * PROTECT_RAM is used by the Android emulator's on-demand snapshot loading: all of RAM is
//!   protected, and each access unprotects the whole 2-MiB chunk it faulted in (haxm-abi.md
//!   §8 quirk 10), so ranges are at most one per two chunks: 2048 for a 8-GiB guest. 65536
//!   ranges (1 MiB of 16-byte ranges) leave room for page-granular use on a 512-MiB guest.

use core::sync::atomic::{AtomicU64, Ordering};

/// RAM blocks per VM (ALLOC_RAM, ADD_RAMBLOCK and STANDALONE mappings together).
pub const MAX_RAM_BLOCKS: usize = 4096;
/// Memslots per VM (after splitting and merging: the number [`super::GuestMemory::slots`] has).
pub const MAX_MEMSLOTS: usize = 4096;
/// Disjoint protected ranges per VM (after merging).
pub const MAX_PROTECTED_RANGES: usize = 65536;

/// Which per-VM bound a request would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`MAX_RAM_BLOCKS`].
    RamBlocks,
    /// [`MAX_MEMSLOTS`].
    Memslots,
    /// [`MAX_PROTECTED_RANGES`].
    ProtectedRanges,
}

/// The host-wide RAM quota of SET_MEMLIMIT, shared by every VM's memory: bytes of registered
/// RAM blocks, charged when a block is registered and released when it goes. Lock-free (an
/// atomic counter), so it is taken under any lock without a place in the lock hierarchy.
#[derive(Debug)]
pub struct RamQuota {
    /// Bytes; `u64::MAX` for no limit.
    limit: AtomicU64,
    used: AtomicU64,
}

impl Default for RamQuota {
    fn default() -> Self {
        RamQuota::unlimited()
    }
}

impl RamQuota {
    /// No limit.
    pub const fn unlimited() -> RamQuota {
        RamQuota {
            limit: AtomicU64::new(u64::MAX),
            used: AtomicU64::new(0),
        }
    }

    /// A limit of `bytes`.
    pub const fn new(bytes: u64) -> RamQuota {
        RamQuota {
            limit: AtomicU64::new(bytes),
            used: AtomicU64::new(0),
        }
    }

    /// Sets the limit (`None`: none). Registered bytes are not re-checked: SET_MEMLIMIT is
    /// refused while a VM exists, so nothing is registered when this is called.
    pub fn set_limit(&self, bytes: Option<u64>) {
        self.limit
            .store(bytes.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The limit in bytes, `None` for none.
    pub fn limit(&self) -> Option<u64> {
        match self.limit.load(Ordering::Acquire) {
            u64::MAX => None,
            l => Some(l),
        }
    }

    /// Bytes of RAM blocks registered now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Charges `bytes` if they fit under the limit.
    pub(crate) fn try_charge(&self, bytes: u64) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Gives back what [`RamQuota::try_charge`] took.
    pub(crate) fn release(&self, bytes: u64) {
        // Saturating: a release never exceeds what was charged, but a broken invariant must
        // not wrap the counter into "everything used".
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

pub(crate) use crate::heap::{try_box, try_push, try_reserve};
