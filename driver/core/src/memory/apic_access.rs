//! The APIC-access page of rhax's in-kernel APIC in the VM's EPT ("virtualize APIC
//! accesses", SDM Vol. 3C §30.4): mapped at the default xAPIC base by ENABLE_APIC, dropped
//! while a vCPU's APIC is elsewhere, mapped again when all are back (`dispatch/apic.rs`).

use alloc::vec::Vec;

use super::{ept, try_reserve, GuestMemory, InveptRequest, MemoryError};
use crate::platform::{PhysPages, Platform};

impl GuestMemory {
    /// The APIC-access page of rhax's in-kernel APIC ("virtualize APIC accesses", SDM Vol.
    /// 3C §30.4): a zeroed page, owned by this memory (freed with it), mapped read/write at
    /// guest-physical `gpa` (the xAPIC base) so that the guest's accesses there are APIC
    /// accesses the CPU virtualizes or reports (exit reason 44) instead of EPT violations.
    /// Returns its host-physical address for the VMCS. Called once, before any vCPU runs;
    /// refused with [`MemoryError::Overlap`] when RAM is mapped at `gpa` already. A later
    /// SET_RAM over `gpa` replaces the translation, as any mapping change does.
    pub fn map_apic_access<P: Platform>(&self, platform: &P, gpa: u64) -> Result<u64, MemoryError> {
        let gpa = gpa & !0xfff;
        let mut page = platform.alloc_pages(1)?;
        page.bytes_mut().fill(0);
        let hpa = page.phys();
        let mut m = self.map.lock();
        if m.apic_access.is_some() || m.ept.leaf(gpa).is_some() {
            drop(m);
            platform.free_pages(page);
            return Err(MemoryError::Overlap);
        }
        if let Err(e) = m.ept.map(platform, gpa, 1, apic_access_entry(hpa)) {
            drop(m);
            platform.free_pages(page);
            return Err(MemoryError::Platform(e));
        }
        m.apic_access = Some(page);
        Ok(hpa)
    }

    /// Puts the APIC-access page's translation back at guest-physical `gpa` after
    /// [`GuestMemory::unmap_apic_access`] (every vCPU's APIC is at the default base again).
    /// `Ok(false)`: something else is mapped there now (RAM a SET_RAM put there), which
    /// stays. Filling a not-present entry needs no INVEPT (SDM Vol. 3C §29.4: only present
    /// translations are cached).
    pub fn remap_apic_access<P: Platform>(
        &self,
        platform: &P,
        gpa: u64,
    ) -> Result<bool, MemoryError> {
        let gpa = gpa & !0xfff;
        let mut m = self.map.lock();
        let Some(hpa) = m.apic_access.as_ref().map(PhysPages::phys) else {
            return Ok(false);
        };
        if let Some(leaf) = m.ept.leaf(gpa) {
            return Ok(leaf.hpa(gpa) == hpa);
        }
        m.ept
            .map(platform, gpa, 1, apic_access_entry(hpa))
            .map_err(MemoryError::Platform)?;
        Ok(true)
    }

    /// Drops the APIC-access page's translation at guest-physical `gpa` (where
    /// [`GuestMemory::map_apic_access`] put it) when a vCPU's APIC no longer answers there
    /// (its base moved, x2APIC mode, disabled; as KVM drops its APIC-access memslot when it
    /// inhibits APIC virtualization): the address becomes what the memslots say, RAM or MMIO,
    /// like any other. The page itself stays allocated until the memory is destroyed (the
    /// VMCSs keep its address; the CPU only compares translations with it, SDM Vol. 3C
    /// §30.4). `Ok(None)` when nothing was there (never mapped, already dropped, or replaced
    /// by a SET_RAM); otherwise the INVEPT the caller must run.
    pub fn unmap_apic_access(&self, gpa: u64) -> Result<Option<InveptRequest>, MemoryError> {
        let gfn = gpa >> 12;
        let mut guard = self.map.lock();
        let m = &mut *guard;
        let Some(hpa) = m.apic_access.as_ref().map(PhysPages::phys) else {
            return Ok(None);
        };
        if m.ept.leaf(gpa).map(|l| l.hpa(gpa & !0xfff)) != Some(hpa) {
            return Ok(None);
        }
        let bound = m.ept.zap_bound(gfn, gfn + 1);
        let mut retired = Vec::new();
        try_reserve(&mut retired, bound)?;
        try_reserve(&mut m.retired_tables, bound)?;
        let flush = m.ept.zap(gfn, gfn + 1, &mut retired);
        Ok(self.retire(m, flush, retired, Vec::new()))
    }
}

/// The EPT entry of the APIC-access page at host-physical `hpa`: read/write, not executable,
/// write-back like RAM (the CPU never accesses the page for the guest, it only matches the
/// translation, SDM Vol. 3C §30.4).
fn apic_access_entry(hpa: u64) -> u64 {
    (hpa & ept::EPT_ADDRESS_MASK) | ept::EPT_READ | ept::EPT_WRITE | ept::EPT_MEMORY_TYPE_WB
}
