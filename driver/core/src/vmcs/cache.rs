//! `VmcsCache`: a value slot, a `cached` bit and a `dirty` bit per field of the component table
//! (ARCHITECTURE.md, "The VMCS component table"), and [`Vmcs`], the view that pairs the cache
//! with the CPU whose current VMCS it mirrors.
//!
//! - Read: the first read VMREADs and sets `cached`; later reads are free.
//! - Write: updates the slot, sets `cached` and `dirty`; writing the cached value is a no-op.
//!   No VMWRITE happens here.
//! - Flush: once, immediately before VMLAUNCH/VMRESUME (only `crate::vcpu` calls it): VMWRITE
//!   every dirty field, walking the set bits of the dirty bitset. Until the next VM exit a write
//!   is a bug (debug assertion): it would miss this entry.
//! - VM exit (or failed entry): fields with [`Policy::Volatile`] lose `cached`.
//! - VMCLEAR or a move to another CPU: everything loses `cached` except dirty fields, which are
//!   still newer than the VMCS and are written by the next flush.

use crate::vmcs::{Policy, VmcsField};
use crate::vmx::{VmFail, Vmx};

const WORDS: usize = VmcsField::COUNT.div_ceil(64);
/// Slots of the value array: one per bit of the bitsets, so an index made of a word number
/// and a bit number is in bounds without a test.
const SLOTS: usize = WORDS * 64;

/// The encoding of the field at each index (0 past the table, where no bit is ever set):
/// the flush's one load per field, no bounds test.
const ENCODINGS: [u32; SLOTS] = {
    let mut e = [0u32; SLOTS];
    let mut i = 0;
    while i < VmcsField::COUNT {
        e[i] = VmcsField::ALL[i].encoding();
        i += 1;
    }
    e
};

const fn policy_mask(policy: Policy) -> [u64; WORDS] {
    let mut mask = [0u64; WORDS];
    let mut i = 0;
    while i < VmcsField::COUNT {
        let same = matches!(
            (VmcsField::ALL[i].policy(), policy),
            (Policy::Volatile, Policy::Volatile) | (Policy::Stable, Policy::Stable)
        );
        if same {
            mask[i / 64] |= 1 << (i % 64);
        }
        i += 1;
    }
    mask
}

/// Bit 31 of the VM-entry interruption-information field: an event is to be injected.
const ENTRY_INFO_VALID: u64 = 1 << 31;

/// Bitset of the fields a VM exit may change, less the VM-entry interruption-information
/// field, whose change is known (see [`VmcsCache::on_exit`]).
const VOLATILE: [u64; WORDS] = {
    let mut m = policy_mask(Policy::Volatile);
    let i = VmcsField::VmEntryInterruptionInformation.index();
    m[i / 64] &= !(1 << (i % 64));
    m
};

/// The per-VMCS cache of field values.
#[derive(Clone, Debug)]
pub struct VmcsCache {
    values: [u64; SLOTS],
    cached: [u64; WORDS],
    dirty: [u64; WORDS],
    /// Bit `w` set when `dirty[w]` may be non-zero: the flush visits only those words (one
    /// field is dirty on most exits, the guest RIP).
    dirty_words: u8,
    /// Set by the flush, cleared by the VM exit: writes in between would miss the entry.
    flushed: bool,
}

// SAFETY: integer arrays and a bool: all zero is `VmcsCache::new()` (nothing cached, nothing
// dirty, not flushed).
unsafe impl crate::heap::Zeroable for VmcsCache {}

impl Default for VmcsCache {
    fn default() -> Self {
        Self::new()
    }
}

/// A VMWRITE that failed during a flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushError {
    /// The field that could not be written (it stays neither cached nor dirty).
    pub field: VmcsField,
    /// The failure.
    pub fail: VmFail,
}

impl VmcsCache {
    /// An empty cache: nothing cached, nothing dirty.
    pub const fn new() -> Self {
        VmcsCache {
            values: [0; SLOTS],
            cached: [0; WORDS],
            dirty: [0; WORDS],
            dirty_words: 0,
            flushed: false,
        }
    }

    #[inline]
    fn test(bits: &[u64; WORDS], i: usize) -> bool {
        bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// Is the field's value known without a VMREAD?
    pub fn is_cached(&self, field: VmcsField) -> bool {
        Self::test(&self.cached, field.index())
    }

    /// Is the field waiting for the flush?
    pub fn is_dirty(&self, field: VmcsField) -> bool {
        Self::test(&self.dirty, field.index())
    }

    /// Number of dirty fields.
    pub fn dirty_count(&self) -> u32 {
        self.dirty.iter().map(|w| w.count_ones()).sum()
    }

    /// A VM exit happened: drop the fields the CPU may have changed.
    ///
    /// One of them is known without a VMREAD: every VM exit clears the valid bit (31) of the
    /// VM-entry interruption-information field and nothing else of it (SDM Vol. 3C §28.2,
    /// the end of "Recording VM-Exit Information"), so a cached value stays cached with the
    /// bit cleared (an uncached slot's value means nothing either way), and the entry path's
    /// "is an event being injected" test costs no VMREAD (~15 emulated instructions per
    /// entry). A failed VMLAUNCH/VMRESUME is no VM exit: the caller then forgets the field.
    #[inline]
    pub fn on_exit(&mut self) {
        for (c, v) in self.cached.iter_mut().zip(VOLATILE) {
            *c &= !v;
        }
        self.values[VmcsField::VmEntryInterruptionInformation.index()] &= !ENTRY_INFO_VALID;
        self.flushed = false;
    }

    /// VMCLEAR, or the VMCS moved to another CPU: nothing cached is trusted any more, except
    /// pending writes, which the next flush still performs.
    pub fn invalidate_all(&mut self) {
        self.cached = self.dirty;
        self.flushed = false;
    }

    /// The value stored for a field, if cached.
    pub fn peek(&self, field: VmcsField) -> Option<u64> {
        self.is_cached(field).then(|| self.values[field.index()])
    }
}

/// The cache of the current VMCS together with the CPU: the typed accessors of the component
/// table (`vmcs.guest_rip()`, `vmcs.set_guest_rip(v)`) live here.
pub struct Vmcs<'a, V: Vmx> {
    cache: &'a mut VmcsCache,
    vmx: &'a mut V,
}

impl<'a, V: Vmx> Vmcs<'a, V> {
    /// Pairs a cache with the CPU.
    ///
    /// # Safety
    /// For the lifetime of the view: CPL0, VMX root on this CPU, and the VMCS that `cache`
    /// mirrors is the current VMCS of `vmx`. (Every VMREAD/VMWRITE this view issues relies on
    /// it.)
    pub unsafe fn new(cache: &'a mut VmcsCache, vmx: &'a mut V) -> Self {
        Vmcs { cache, vmx }
    }

    /// The cache.
    pub fn cache(&self) -> &VmcsCache {
        self.cache
    }

    /// The CPU.
    pub fn vmx(&mut self) -> &mut V {
        self.vmx
    }

    /// Reads a field: from the cache, or by one VMREAD that fills the cache.
    // Always inlined: the typed accessors pass a constant field, so the encoding, the width
    // mask and the counter slot of the VMREAD fold to constants (out of line, each costs a
    // table walk per VM exit).
    #[inline(always)]
    pub fn read(&mut self, field: VmcsField) -> Result<u64, VmFail> {
        let i = field.index();
        if VmcsCache::test(&self.cache.cached, i) {
            return Ok(self.cache.values[i]);
        }
        // SAFETY: the view's contract: VMX root, CPL0, the mirrored VMCS is current.
        let value = unsafe { self.vmx.vmread(field.encoding()) }? & field.width().mask();
        self.cache.values[i] = value;
        self.cache.cached[i / 64] |= 1 << (i % 64);
        Ok(value)
    }

    /// Writes a field into the cache (VMWRITE at the next flush); a no-op if the cached value
    /// is already `value`. Only read-write fields have typed setters; this raw form is for
    /// generic code (a read-only field written here fails at the flush with error 13).
    #[inline]
    pub fn write(&mut self, field: VmcsField, value: u64) {
        debug_assert!(
            !self.cache.flushed,
            "VMCS write of {} after the flush and before the VM exit",
            field.name()
        );
        let i = field.index();
        let value = value & field.width().mask();
        let bit = 1 << (i % 64);
        if self.cache.cached[i / 64] & bit != 0 && self.cache.values[i] == value {
            return;
        }
        self.cache.values[i] = value;
        self.cache.cached[i / 64] |= bit;
        self.cache.dirty[i / 64] |= bit;
        self.cache.dirty_words |= 1 << (i / 64);
    }

    /// Drops one field from the cache so that the next read VMREADs it.
    pub fn forget(&mut self, field: VmcsField) {
        let i = field.index();
        if !VmcsCache::test(&self.cache.dirty, i) {
            self.cache.cached[i / 64] &= !(1 << (i % 64));
        }
    }

    /// VMWRITEs every dirty field once, in table order, walking only the set bits.
    /// Called by the entry path only, immediately before VMLAUNCH/VMRESUME.
    // Always inlined into that one caller: out of line, the call, a frame and the result
    // through memory cost ~15 emulated instructions per round trip.
    #[inline(always)]
    pub(crate) fn flush(&mut self) -> Result<(), FlushError> {
        let words = core::mem::take(&mut self.cache.dirty_words);
        // A constant bound: the loop unrolls and every index below is provably in range.
        for w in 0..WORDS {
            if words & (1 << w) == 0 {
                continue;
            }
            let mut bits = core::mem::take(&mut self.cache.dirty[w]);
            while bits != 0 {
                let b = (bits.trailing_zeros() & 63) as usize;
                bits &= bits - 1;
                let i = w * 64 + b;
                // SAFETY: the view's contract: VMX root, CPL0, the mirrored VMCS is current.
                let written = unsafe {
                    self.vmx
                        .vmwrite_indexed(i, ENCODINGS[i], self.cache.values[i])
                };
                if let Err(fail) = written {
                    // The failed field is neither cached nor dirty; the rest stay pending.
                    self.cache.cached[w] &= !(1 << b);
                    self.cache.dirty[w] |= bits;
                    self.cache.dirty_words = words & !((1u8 << w) - 1);
                    let field = VmcsField::ALL.get(i).copied().unwrap_or(VmcsField::ALL[0]);
                    return Err(FlushError { field, fail });
                }
            }
        }
        self.cache.flushed = true;
        Ok(())
    }

    /// The VM exit (or failed entry) that follows the flush: see [`VmcsCache::on_exit`].
    pub(crate) fn on_exit(&mut self) {
        self.cache.on_exit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::soft::SoftVmx;

    fn model() -> SoftVmx {
        let mut s = SoftVmx::new(crate::vmx::soft::tests_support::skylake_msrs());
        s.host.cr4 |= 1 << 13;
        // SAFETY: software model.
        unsafe { s.vmxon(0x1000) }.unwrap();
        // SAFETY: software model.
        unsafe { s.vmptrld(0x2000) }.unwrap();
        s
    }

    #[test]
    fn read_twice_is_one_vmread() {
        let mut s = model();
        s.poke(VmcsField::GuestRip, 0xfff0);
        let mut cache = VmcsCache::new();
        // SAFETY: software model with a current VMCS.
        let mut v = unsafe { Vmcs::new(&mut cache, &mut s) };
        assert_eq!(v.guest_rip(), Ok(0xfff0));
        assert_eq!(v.guest_rip(), Ok(0xfff0));
        assert_eq!(s.counts.vmread, 1);
    }

    #[test]
    fn writing_the_cached_value_is_skipped_and_flush_writes_each_dirty_field_once() {
        let mut s = model();
        let mut cache = VmcsCache::new();
        {
            // SAFETY: software model with a current VMCS.
            let mut v = unsafe { Vmcs::new(&mut cache, &mut s) };
            v.set_guest_rip(0x100);
            v.set_guest_rip(0x200);
            v.set_guest_rsp(0x300);
            v.set_virtual_processor_id(1);
            v.set_guest_cs_selector(0xf000);
            assert_eq!(v.cache().dirty_count(), 4);
            v.flush().unwrap();
        }
        assert_eq!(s.counts.vmwrite, 4);
        assert_eq!(
            s.counts
                .writes_by_field
                .get(&VmcsField::GuestRip.encoding()),
            Some(&1)
        );
        assert_eq!(s.peek(VmcsField::GuestRip), Some(0x200));
        assert_eq!(cache.dirty_count(), 0);
        cache.on_exit();
        {
            // SAFETY: as above.
            let mut v = unsafe { Vmcs::new(&mut cache, &mut s) };
            // Stable field kept its cached bit: writing the same value is a no-op.
            v.set_virtual_processor_id(1);
            assert_eq!(v.cache().dirty_count(), 0);
            // Volatile field lost it: the same value is written again (the CPU may have
            // changed it).
            v.set_guest_rip(0x200);
            assert_eq!(v.cache().dirty_count(), 1);
            v.flush().unwrap();
        }
        assert_eq!(s.counts.vmwrite, 5);
    }

    #[test]
    fn exit_invalidates_volatile_fields_only_and_migration_everything_but_dirty() {
        let mut s = model();
        s.poke(VmcsField::GuestRip, 7);
        s.poke(VmcsField::EptPointer, 0x5e);
        s.poke(VmcsField::HostCr3, 0x1000);
        let mut cache = VmcsCache::new();
        // SAFETY: software model with a current VMCS.
        let mut v = unsafe { Vmcs::new(&mut cache, &mut s) };
        v.guest_rip().unwrap();
        v.ept_pointer().unwrap();
        v.host_cr3().unwrap();
        v.on_exit();
        v.guest_rip().unwrap();
        v.ept_pointer().unwrap();
        v.host_cr3().unwrap();
        assert_eq!(
            s.counts.vmread, 4,
            "only guest RIP is read again after an exit"
        );
        cache.invalidate_all();
        // SAFETY: as above.
        let mut v = unsafe { Vmcs::new(&mut cache, &mut s) };
        v.set_guest_rsp(9);
        v.ept_pointer().unwrap();
        v.host_cr3().unwrap();
        assert_eq!(
            v.guest_rsp(),
            Ok(9),
            "a pending write survives invalidation"
        );
        assert_eq!(s.counts.vmread, 6);
        assert!(cache.is_dirty(VmcsField::GuestRsp));
    }

    /// A VM exit clears the valid bit of the VM-entry interruption information and nothing
    /// else (SDM §28.2): the cache keeps the field, bit cleared, without a VMREAD.
    #[test]
    fn exit_keeps_the_entry_interruption_info_with_its_valid_bit_cleared() {
        let mut s = model();
        let mut cache = VmcsCache::new();
        // SAFETY: software model with a current VMCS.
        let mut v = unsafe { Vmcs::new(&mut cache, &mut s) };
        v.set_vm_entry_interruption_information(0x8000_0b0e);
        v.flush().unwrap();
        v.on_exit();
        assert_eq!(v.vm_entry_interruption_information(), Ok(0x0b0e));
        assert_eq!(s.counts.vmread, 0);
        // Not cached before the exit: still not cached (the next read asks the CPU).
        cache.invalidate_all();
        cache.on_exit();
        assert!(!cache.is_cached(VmcsField::VmEntryInterruptionInformation));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "after the flush")]
    fn a_write_after_the_flush_is_caught() {
        let mut s = model();
        let mut cache = VmcsCache::new();
        // SAFETY: software model with a current VMCS.
        let mut v = unsafe { Vmcs::new(&mut cache, &mut s) };
        v.flush().unwrap();
        v.set_guest_rip(1);
    }

    #[test]
    fn flush_reports_the_field_the_cpu_refuses() {
        let mut s = model();
        s.unsupported.insert(VmcsField::GuestIa32Pkrs.encoding());
        let mut cache = VmcsCache::new();
        // SAFETY: software model with a current VMCS.
        let mut v = unsafe { Vmcs::new(&mut cache, &mut s) };
        v.set_guest_ia32_pkrs(1);
        let e = v.flush().unwrap_err();
        assert_eq!(e.field, VmcsField::GuestIa32Pkrs);
        assert_eq!(
            e.fail,
            VmFail::Valid(crate::vmx::VmInstructionError::UnsupportedVmcsComponent)
        );
    }
}
