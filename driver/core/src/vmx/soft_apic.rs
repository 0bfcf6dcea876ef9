//! APIC virtualization in the software VMX (SDM Vol. 3C chapter 30), as far as the CPU itself
//! acts on the virtual-APIC page: with "virtual-interrupt delivery", VM entry loads RVI/SVI
//! from the guest interrupt status, virtualizes the PPR and delivers a pending virtual
//! interrupt the guest can take (§30.2.1, §30.2.2); the guest's EOI is virtualized, with an
//! EOI-induced VM exit when the vector's EOI-exit bit is set (§30.1.4). The test hook plays
//! the guest and calls [`GuestCpu::virtual_eoi`] where the guest writes its EOI.
//!
//! The page is reached through the memory map the test gave [`super::soft::SoftVmx::set_memory`]
//! (a [`crate::platform::HeapPlatform`]'s pages); without one, nothing here runs and a test of
//! virtual-interrupt delivery fails loudly in its own assertions.

use alloc::collections::BTreeMap;
use core::ptr::NonNull;

use crate::vmcs::VmcsField;

/// Offsets in the virtual-APIC page (SDM Vol. 3C §30.1.1).
const VTPR: usize = 0x80;
const VPPR: usize = 0xa0;
const VISR: usize = 0x100;
const VIRR: usize = 0x200;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// Primary control "interrupt-window exiting" (bit 2).
const INTERRUPT_WINDOW_EXITING: u64 = 1 << 2;
/// Exit reason 45: EOI-induced (SDM Vol. 3C Appendix C).
pub const EXIT_REASON_EOI_INDUCED: u32 = 45;
/// The virtual-APIC page of one VM entry, borrowed from the test's memory for the entry.
pub struct VirtualApicPage {
    page: NonNull<u8>,
}

impl VirtualApicPage {
    /// # Safety
    /// `page` points at 4096 bytes that stay allocated and are not otherwise accessed while
    /// the value lives (the vCPU reads the page only between VM exits and entries).
    pub unsafe fn new(page: NonNull<u8>) -> Self {
        VirtualApicPage { page }
    }

    pub(crate) fn read(&self, offset: usize) -> u32 {
        debug_assert!(offset + 4 <= 4096 && offset % 4 == 0);
        // SAFETY: in bounds of the 4 KiB page (offsets are constants below 0x280).
        let p = unsafe { self.page.as_ptr().add(offset) }.cast::<u32>();
        // SAFETY: aligned (the page is 4 KiB aligned, the offset a multiple of 4), valid per
        // `new`'s contract.
        unsafe { p.read_volatile() }
    }

    pub(crate) fn write(&mut self, offset: usize, value: u32) {
        debug_assert!(offset + 4 <= 4096 && offset % 4 == 0);
        // SAFETY: as in `read`.
        let p = unsafe { self.page.as_ptr().add(offset) }.cast::<u32>();
        // SAFETY: as in `read`.
        unsafe { p.write_volatile(value) }
    }

    /// The highest set bit of the 256-bit vector register at `base` (VISR, VIRR).
    fn highest(&self, base: usize) -> Option<u8> {
        (0..8usize).rev().find_map(|w| {
            let word = self.read(base + w * 16);
            (word != 0).then(|| (w * 32 + 31 - word.leading_zeros() as usize) as u8)
        })
    }

    fn set_bit(&mut self, base: usize, vector: u8, on: bool) {
        let off = base + (usize::from(vector) >> 5) * 16;
        let bit = 1u32 << (vector & 31);
        let w = self.read(off);
        self.write(off, if on { w | bit } else { w & !bit });
    }
}

fn field(fields: &BTreeMap<u32, u64>, f: VmcsField) -> u64 {
    fields.get(&f.encoding()).copied().unwrap_or(0)
}

/// PPR virtualization (§30.1.3): VPPR from VTPR and SVI.
fn virtualize_ppr(page: &mut VirtualApicPage, svi: u8) {
    let vtpr = page.read(VTPR) & 0xff;
    let vppr = if vtpr >> 4 >= u32::from(svi >> 4) {
        vtpr
    } else {
        u32::from(svi & 0xf0)
    };
    page.write(VPPR, vppr);
}

/// Evaluation and delivery of a pending virtual interrupt (§30.2.1, §30.2.2): recognized when
/// RVI[7:4] > VPPR[7:4], delivered when RFLAGS.IF is set, nothing blocks by STI or MOV SS,
/// "interrupt-window exiting" is 0 and no event is being injected by this entry. Returns the
/// vector delivered.
fn deliver(fields: &mut BTreeMap<u32, u64>, page: &mut VirtualApicPage) -> Option<u8> {
    let status = field(fields, VmcsField::GuestInterruptStatus);
    let rvi = status as u8;
    let vppr = page.read(VPPR) as u8;
    if rvi >> 4 <= vppr >> 4 {
        return None;
    }
    let enabled = field(fields, VmcsField::GuestRflags) & RFLAGS_IF != 0
        && field(fields, VmcsField::GuestInterruptibilityState) & 0b11 == 0
        && field(fields, VmcsField::PrimaryProcessorBasedVmExecutionControls)
            & INTERRUPT_WINDOW_EXITING
            == 0
        && field(fields, VmcsField::VmEntryInterruptionInformation) & (1 << 31) == 0;
    if !enabled {
        return None;
    }
    let vector = rvi;
    page.set_bit(VISR, vector, true);
    page.set_bit(VIRR, vector, false);
    page.write(VPPR, u32::from(vector & 0xf0));
    let next = page.highest(VIRR).unwrap_or(0);
    fields.insert(
        VmcsField::GuestInterruptStatus.encoding(),
        u64::from(next) | u64::from(vector) << 8,
    );
    Some(vector)
}

/// What VM entry does with "virtual-interrupt delivery" (§27.3.2.5): RVI/SVI from the guest
/// interrupt status, PPR virtualization, then evaluation and delivery.
pub fn entry(fields: &mut BTreeMap<u32, u64>, page: &mut VirtualApicPage) -> Option<u8> {
    let svi = (field(fields, VmcsField::GuestInterruptStatus) >> 8) as u8;
    virtualize_ppr(page, svi);
    deliver(fields, page)
}

/// EOI virtualization (§30.1.4): VISR[SVI] cleared, SVI the next highest VISR bit, PPR
/// virtualized; then either an EOI-induced VM exit (the vector's EOI-exit bit set; exit
/// qualification the vector) or the evaluation of pending virtual interrupts. Returns the
/// vector that caused the EOI-induced exit, or `Err(delivered)` with the vector delivered
/// after it (if any).
pub fn eoi(fields: &mut BTreeMap<u32, u64>, page: &mut VirtualApicPage) -> Result<u8, Option<u8>> {
    let status = field(fields, VmcsField::GuestInterruptStatus);
    let vector = (status >> 8) as u8;
    page.set_bit(VISR, vector, false);
    let svi = page.highest(VISR).unwrap_or(0);
    fields.insert(
        VmcsField::GuestInterruptStatus.encoding(),
        (status & 0xff) | u64::from(svi) << 8,
    );
    virtualize_ppr(page, svi);
    let bitmap = match vector >> 6 {
        0 => VmcsField::EoiExitBitmap0,
        1 => VmcsField::EoiExitBitmap1,
        2 => VmcsField::EoiExitBitmap2,
        _ => VmcsField::EoiExitBitmap3,
    };
    if field(fields, bitmap) & (1 << (vector & 63)) != 0 {
        fields.insert(
            VmcsField::ExitReason.encoding(),
            u64::from(EXIT_REASON_EOI_INDUCED),
        );
        fields.insert(VmcsField::ExitQualification.encoding(), u64::from(vector));
        return Ok(vector);
    }
    Err(deliver(fields, page))
}

/// A guest write to ICR low (offset 0x300) that is not a self-IPI, with "virtual-interrupt
/// delivery" (SDM Vol. 3C §30.4.3.3, §30.5): the value goes to the page; the APIC-write VM
/// exit that follows is the caller's.
pub fn write_icr_low(page: &mut VirtualApicPage, value: u32) {
    page.write(0x300, value);
}

/// The VTPR byte (bits 7:0 of the page's TPR word).
pub fn read_vtpr(page: &mut VirtualApicPage) -> u8 {
    page.read(VTPR) as u8
}

/// What TPR virtualization (§30.1.2) ends in.
pub enum TprVirtualized {
    /// No VM exit; the vector the evaluation that follows delivered (with "virtual-interrupt
    /// delivery"), if any.
    Delivered(Option<u8>),
    /// A TPR-below-threshold VM exit (without "virtual-interrupt delivery", VTPR[7:4] below
    /// the TPR threshold).
    BelowThreshold,
}

/// A write of VTPR followed by TPR virtualization (§30.1.2).
pub fn write_vtpr(
    fields: &mut BTreeMap<u32, u64>,
    page: &mut VirtualApicPage,
    value: u32,
    vid: bool,
    threshold: u64,
) -> TprVirtualized {
    page.write(VTPR, value);
    if !vid {
        return if u64::from((value >> 4) & 0xf) < threshold {
            TprVirtualized::BelowThreshold
        } else {
            TprVirtualized::Delivered(None)
        };
    }
    let svi = (field(fields, VmcsField::GuestInterruptStatus) >> 8) as u8;
    virtualize_ppr(page, svi);
    TprVirtualized::Delivered(deliver(fields, page))
}

/// Self-IPI virtualization (§30.1.5, a virtualized write of the x2APIC SELF IPI MSR with
/// "virtual-interrupt delivery"): VIRR[vector] set, RVI raised to it, then the evaluation of
/// pending virtual interrupts. Returns the vector delivered, if any.
pub fn self_ipi(
    fields: &mut BTreeMap<u32, u64>,
    page: &mut VirtualApicPage,
    vector: u8,
) -> Option<u8> {
    page.set_bit(VIRR, vector, true);
    let status = field(fields, VmcsField::GuestInterruptStatus);
    if vector > status as u8 {
        fields.insert(
            VmcsField::GuestInterruptStatus.encoding(),
            (status & !0xff) | u64::from(vector),
        );
    }
    deliver(fields, page)
}

/// A virtualized RDMSR of x2APIC MSR `msr` (§30.5): the 8 bytes at offset
/// X = (`msr` & FFH) << 4 of the virtual-APIC page into EDX:EAX, whatever the MSR (so the
/// 64-bit ICR, 830H, is EAX from 300H and EDX from 304H, not from 310H).
pub fn read_register(page: &mut VirtualApicPage, msr: u32) -> u64 {
    let offset = ((msr & 0xff) as usize) << 4;
    u64::from(page.read(offset)) | u64::from(page.read(offset + 4)) << 32
}
