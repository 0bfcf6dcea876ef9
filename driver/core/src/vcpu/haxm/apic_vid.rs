//! Virtual-interrupt delivery for the in-kernel APIC (SDM Vol. 3C §30.2, §30.1.4), where the
//! CPU offers it (Bochs: haswell and later) and `ApicFlags::NO_APIC_VIRTUALIZATION` is clear.
//!
//! Who owns what: the model ([`crate::apic::LocalApic`]) stays the APIC's register file, and
//! the virtual-APIC page mirrors its IRR and ISR while the guest runs:
//! - before every entry ([`HaxVcpu::apic_vid_push`]) the model's IRR/ISR are written to the
//!   page's VIRR/VISR, RVI (the highest requested vector) and SVI (the highest in service)
//!   to the guest interrupt status, the TMR to the EOI-exit bitmap (a level-triggered
//!   vector's EOI must reach the model: an EOI-induced exit); the CPU then delivers a
//!   vector as soon as the guest can take it (RFLAGS.IF, no STI/MOV-SS shadow, above the
//!   virtual PPR) and virtualizes the guest's EOI writes, without exits;
//! - after every exit ([`HaxVcpu::apic_vid_pull`]) the page's VIRR/VISR go back into the
//!   model, before any handler reads or changes them.
//!
//! The copies are 16 words each way, done only for the words that differ from the page as
//! last synced (`ApicUnit::vid_synced`): most exits change neither side; a vCPU without virtual-
//! interrupt delivery injects through the VM-entry interruption field as before (`apic.rs`).
//!
//! With virtual-interrupt delivery the CPU also virtualizes writes to ICR low through the
//! APIC-access page (§30.4.3.1): the value lands in the virtual-APIC page and a self-IPI is
//! virtualized, anything else is an APIC-write VM exit ([`HaxVcpu::apic_write_exit`]).
//!
//! With APIC-register virtualization (turned on with virtual-interrupt delivery where the CPU
//! has both, as KVM's APICv pairs them) the CPU answers the guest's reads of the other
//! registers from the page too (§30.4.2, and x2APIC RDMSR through the MSR bitmap, §30.5):
//! the page holds the model's image of [`crate::apic::PAGE_MIRRORED`], rewritten before an
//! entry when anything changed the model (`ApicUnit::image_dirty`). The guest's xAPIC writes
//! of those registers land in the page and end in APIC-write exits that hand the value to the
//! model (`apic_virt.rs`); a write of ICR high only stores (§30.4.3.2), so the page's ICR
//! goes back into the model after every exit ([`HaxVcpu::apic_vid_pull`]).

use rhax_api::ext::ApicFlags;

use super::apic::ApicUnit;
use super::*;

/// Offsets in the virtual-APIC page (SDM Vol. 3C §30.1.1): VISR and VIRR, one 32-bit word
/// per 16 bytes.
const VISR: usize = 0x100;
const VIRR: usize = 0x200;
/// VICR_LO and VICR_HI (§30.1.1; §30.4.3.2: a write of ICR high stores without an exit).
const VICR_LO: usize = 0x300;
const VICR_HI: usize = 0x310;

impl ApicUnit {
    /// The page's word at `offset` (0 without a page).
    pub(in crate::vcpu::haxm) fn page_word(&mut self, offset: usize) -> u32 {
        self.vapic
            .as_mut()
            .and_then(|p| p.bytes_mut().get(offset..offset + 4))
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(in crate::vcpu::haxm) fn set_page_word(&mut self, offset: usize, value: u32) {
        store(&mut self.vapic, offset, value);
    }
}

/// Stores `value` at `offset` of the virtual-APIC page (nothing without a page).
fn store(vapic: &mut Option<PhysPages>, offset: usize, value: u32) {
    if let Some(b) = vapic
        .as_mut()
        .and_then(|p| p.bytes_mut().get_mut(offset..offset + 4))
    {
        b.copy_from_slice(&value.to_le_bytes());
    }
}

/// The page's VIRR and VISR (8 words each), or `None` when they are as last synced (or
/// there is no page). One pass of 16 loads and XORs against `vid_synced`, without building
/// the arrays first: most exits change neither, and the compare of two built tuples (two
/// `bcmp` calls) cost ~150 emulated instructions per exit.
fn changed_page_words(u: &mut ApicUnit) -> Option<([u32; 8], [u32; 8])> {
    let ApicUnit {
        vapic, vid_synced, ..
    } = u;
    let b: &[u8] = vapic.as_mut()?.bytes_mut();
    let b = b.get(..VIRR + 0x80)?;
    let word = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let mut irr = [0u32; 8];
    let mut isr = [0u32; 8];
    let mut diff = 0;
    for i in 0..8 {
        irr[i] = word(VIRR + i * 16);
        isr[i] = word(VISR + i * 16);
        diff |= (irr[i] ^ vid_synced.0[i]) | (isr[i] ^ vid_synced.1[i]);
    }
    (diff != 0).then_some((irr, isr))
}

impl HaxVcpu {
    /// Turns virtual-interrupt delivery on for this (never run) vCPU when the CPU offers it
    /// and `flags` allow, with APIC-register virtualization where the CPU has that too (as
    /// KVM's APICv pairs them); the TPR shadow is already on. Returns (virtual-interrupt
    /// delivery, APIC-register virtualization); (false, false): injection stays with rhax.
    pub(in crate::vcpu::haxm) fn try_virtual_interrupt_delivery(
        &mut self,
        flags: ApicFlags,
    ) -> (bool, bool) {
        if flags.contains(ApicFlags::NO_APIC_VIRTUALIZATION) {
            return (false, false);
        }
        let c = *self.core.controls();
        let both = OptionalFeatures::VIRTUAL_INTERRUPT_DELIVERY
            | OptionalFeatures::APIC_REGISTER_VIRTUALIZATION;
        if let Ok(next) = c.with(both) {
            if self.core.use_controls(next).is_ok() {
                return (true, true);
            }
        }
        match c.with(OptionalFeatures::VIRTUAL_INTERRUPT_DELIVERY) {
            Ok(next) => (self.core.use_controls(next).is_ok(), false),
            Err(_) => (false, false),
        }
    }

    /// After an exit: the page's VIRR/VISR into the model (nothing without virtual-interrupt
    /// delivery).
    pub(in crate::vcpu::haxm) fn apic_vid_pull(&mut self) {
        let Some(u) = self.apic.as_deref_mut() else {
            return;
        };
        if !u.vid {
            return;
        }
        if let Some(words) = changed_page_words(u) {
            // The CPU delivered or EOIed something while the guest ran.
            u.local.set_requests(&words.0, &words.1);
            u.vid_synced = words;
        }
        if u.arv && u.local.mode() == crate::apic::ApicMode::XApic {
            // ICR high written, or a self-IPI virtualized, without an exit (xAPIC mode only:
            // in x2APIC mode ICR writes always exit).
            let (low, high) = (u.page_word(VICR_LO), u.page_word(VICR_HI));
            u.local.take_page_icr(low, high);
        }
    }

    /// Before an entry: the model's IRR/ISR into the page, RVI/SVI into the guest interrupt
    /// status, the TMR into the EOI-exit bitmap when it changed.
    pub(in crate::vcpu::haxm) fn apic_vid_push<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        let Some(u) = self.apic.as_deref_mut() else {
            return Ok(());
        };
        if !u.vid {
            return Ok(());
        }
        let (irr, isr, tmr) = u.local.vector_words();
        if (irr, isr) != u.vid_synced {
            // Only the words the model changed since the page was last in step with it.
            for i in 0..8 {
                if irr[i] != u.vid_synced.0[i] {
                    u.set_page_word(VIRR + i * 16, irr[i]);
                }
                if isr[i] != u.vid_synced.1[i] {
                    u.set_page_word(VISR + i * 16, isr[i]);
                }
            }
            u.vid_synced = (irr, isr);
        }
        if u.arv && u.image_dirty {
            u.image_dirty = false;
            let ApicUnit { local, vapic, .. } = &mut *u;
            local.page_image(|offset, value| store(vapic, offset, value));
        }
        // A software-disabled APIC holds nothing in its IRR (acceptance refuses), so RVI is
        // simply the highest request (SDM Vol. 3C §30.2.1 compares it with the VPPR).
        // RVI and SVI, 0 for "none" (SDM Vol. 3C §30.1.1).
        let status = u16::from(u.local.highest_irr().unwrap_or(0))
            | u16::from(u.local.highest_isr().unwrap_or(0)) << 8;
        let bitmap: [u64; 4] =
            core::array::from_fn(|i| u64::from(tmr[2 * i]) | u64::from(tmr[2 * i + 1]) << 32);
        let changed = bitmap != u.eoi_exit;
        u.eoi_exit = bitmap;
        self.core.with_vmcs(root, |vmcs, _| {
            vmcs.set_guest_interrupt_status(status);
            if changed {
                vmcs.set_eoi_exit_bitmap_0(bitmap[0]);
                vmcs.set_eoi_exit_bitmap_1(bitmap[1]);
                vmcs.set_eoi_exit_bitmap_2(bitmap[2]);
                vmcs.set_eoi_exit_bitmap_3(bitmap[3]);
            }
        })?;
        Ok(())
    }

    /// An EOI-induced exit (reason 45, SDM Vol. 3C §30.1.4; trap-like, the CPU already
    /// cleared the VISR bit): the EOI of a level-triggered vector, acted on as the model's own
    /// EOI would be.
    pub(in crate::vcpu::haxm) fn apic_eoi_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Next, HaxError> {
        let q = self.apic_exit_qualification(root)?;
        let vector = q as u8;
        let level = self.apic.as_deref().is_some_and(|u| {
            let (_, _, tmr) = u.local.vector_words();
            tmr[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
        });
        if level {
            self.apic_effect(crate::apic::Effect::Eoi { vector });
        }
        Ok(Next::Resume)
    }
}
