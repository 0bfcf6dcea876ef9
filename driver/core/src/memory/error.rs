//! Errors of the guest-memory IOCTLs and of EPT maintenance.

use core::fmt;

use super::limits::Limit;
use crate::platform::PlatformError;

/// Why a guest-memory request was refused or could not be carried out.
///
/// Every variant except [`MemoryError::Platform`], [`MemoryError::LimitReached`] and
/// [`MemoryError::MapChanging`] is a refused argument; HAXM answers those with `-EINVAL`
/// (Windows `STATUS_INVALID_PARAMETER`), see [`MemoryError::is_invalid_argument`]. The others
/// are failures of the host (`-ENOMEM`). A refused or failed request changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// `size` is 0.
    ZeroSize,
    /// `va` is 0 where a user buffer is required.
    ZeroAddress,
    /// An address or a size is not a multiple of 4 KiB.
    Misaligned,
    /// `start + size` wraps around 2^64.
    RangeOverflow,
    /// The guest-physical range reaches past what a 4-level EPT translates (2^48, SDM Vol. 3C
    /// §29.3.2: a 4-level walk uses guest-physical bits 47:0).
    GpaOutOfRange,
    /// A `reserved` field is not 0.
    ReservedNotZero,
    /// Unknown flag bits, or INVALID combined with other flags or with `va != 0`.
    BadFlags,
    /// The RAM block overlaps one already registered.
    Overlap,
    /// The host range of a mapping does not lie inside one registered RAM block.
    NoRamBlock,
    /// PROTECT_RAM with a permission other than none or RWX.
    BadPermission,
    /// PROTECT_RAM reaching past the highest guest page mapped so far.
    BeyondMappedRam,
    /// The page is protected by PROTECT_RAM (from [`super::GuestMemory::translate`]).
    Protected {
        /// The guest-physical address of the protected page.
        gpa: u64,
    },
    /// A platform service failed (allocation, pinning); kernel heap exhaustion is
    /// `Platform(PlatformError::OutOfMemory)`.
    Platform(PlatformError),
    /// The request would pass a per-VM bound ([`super::limits`]); answered as HAXM answers
    /// a failed kernel allocation (`-ENOMEM`).
    LimitReached(Limit),
    /// Registering the RAM block would pass the SET_MEMLIMIT quota (HAXM before 6.2.0:
    /// `-EINVAL`).
    QuotaExceeded {
        /// Bytes asked for.
        bytes: u64,
    },
    /// The memory map changed under a pin made outside the lock, again and again: the
    /// translation could not be completed (a concurrent caller keeps remapping the page).
    MapChanging,
}

impl MemoryError {
    /// Whether HAXM reports this as an invalid argument (`-EINVAL`) rather than as a failure of
    /// the host (`-ENOMEM`, `STATUS_UNSUCCESSFUL`).
    pub fn is_invalid_argument(&self) -> bool {
        !matches!(
            self,
            MemoryError::Platform(_) | MemoryError::LimitReached(_) | MemoryError::MapChanging
        )
    }
}

impl From<PlatformError> for MemoryError {
    fn from(e: PlatformError) -> Self {
        MemoryError::Platform(e)
    }
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::ZeroSize => f.write_str("size is zero"),
            MemoryError::ZeroAddress => f.write_str("host address is zero"),
            MemoryError::Misaligned => f.write_str("address or size not 4 KiB aligned"),
            MemoryError::RangeOverflow => f.write_str("range wraps around the address space"),
            MemoryError::GpaOutOfRange => f.write_str("guest-physical range beyond 2^48"),
            MemoryError::ReservedNotZero => f.write_str("reserved field not zero"),
            MemoryError::BadFlags => f.write_str("invalid flags"),
            MemoryError::Overlap => f.write_str("RAM block overlaps an existing one"),
            MemoryError::NoRamBlock => f.write_str("host range not inside a registered RAM block"),
            MemoryError::BadPermission => f.write_str("protection must be none or RWX"),
            MemoryError::BeyondMappedRam => f.write_str("range beyond the highest mapped page"),
            MemoryError::Protected { gpa } => write!(f, "page {gpa:#x} is protected"),
            MemoryError::Platform(e) => write!(f, "platform failure: {e:?}"),
            MemoryError::LimitReached(l) => write!(f, "per-VM limit reached: {l:?}"),
            MemoryError::QuotaExceeded { bytes } => {
                write!(f, "{bytes} more bytes of RAM would pass the memory limit")
            }
            MemoryError::MapChanging => f.write_str("the mapping kept changing while pinning"),
        }
    }
}
