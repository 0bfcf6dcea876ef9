//! The in-kernel APIC's VMX virtualization beyond the TPR shadow: APIC-access exits (exit
//! reason 44) of the APIC-access page that ENABLE_APIC maps at the xAPIC base (SDM Vol. 3C
//! §30.4). With the TPR shadow, the CPU virtualizes the TPR (offset 0x80) in the
//! virtual-APIC page without an exit; every other access is a fault-like APIC-access exit
//! whose qualification gives the offset and the access type (Table 28-6). Those go the way
//! of an EPT violation on MMIO (the instruction fetched at passive level, hvf's whole-
//! instruction fetch), and `HaxVcpu::apic_mmio` serves the MOV forms: the same path, so
//! the two routes cannot disagree.
//!
//! In x2APIC mode the page is not the APIC's (SDM Vol. 3A §11.12.1) and the MSRs are: where
//! the CPU offers "virtualize x2APIC mode" (every Bochs model from Nehalem on), the vCPU
//! switches to it for as long as the guest's APIC is in x2APIC mode (KVM's
//! `vmx_set_virtual_apic_mode`), and the MSR bitmap lets through exactly what the CPU then
//! virtualizes (§30.5): the TPR (808H) both ways, and with virtual-interrupt delivery the
//! writes of EOI (80BH) and SELF IPI (83FH); with APIC-register virtualization also the
//! reads of every register the virtual-APIC page holds ([`crate::apic::x2apic_read_virtualized`]:
//! never the current count 839H). Every other x2APIC MSR access still exits; outside x2APIC
//! mode all of them do (the guest gets #GP from the model).
//!
//! APIC-write exits (reason 56, trap-like) come from the CPU's virtualized xAPIC writes: of
//! ICR low (not a self-IPI) with virtual-interrupt delivery, and with APIC-register
//! virtualization of every register §30.4.3.1 lists except TPR, EOI and ICR high, which the
//! CPU completes itself (`apic_vid.rs`).

use crate::apic::ApicMode;
use rhax_api::ext::ApicFlags;

use super::*;

/// Where ENABLE_APIC maps the APIC-access page (the xAPIC base after reset, SDM Vol. 3A
/// §11.4.4).
const DEFAULT_APIC_BASE: u64 = 0xfee0_0000;

/// The x2APIC MSRs the bitmap lets through in x2APIC mode (§30.5).
const X2APIC_TPR: u32 = 0x808;
pub(in crate::vcpu::haxm) const X2APIC_EOI: u32 = 0x80b;
/// The xAPIC EOI register's offset in the APIC page (SDM Vol. 3A Table 11-1).
const XAPIC_EOI: u64 = 0xb0;
pub(in crate::vcpu::haxm) const X2APIC_SELF_IPI: u32 = 0x83f;
/// The x2APIC registers (SDM Vol. 3A Table 11-6: 800H-83FH).
const X2APIC_REGISTERS: core::ops::Range<u32> = 0x800..0x840;

impl HaxVcpu {
    /// The exit qualification of the APIC exits (APIC access, EOI-induced, APIC write: SDM
    /// Vol. 3C §28.2.1, Table 28-6: the page offset and access type, or the vector).
    pub(in crate::vcpu::haxm) fn apic_exit_qualification<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<u64, HaxError> {
        Ok(self
            .core
            .with_vmcs(root, |vmcs, _| vmcs.exit_qualification())??)
    }

    /// Makes the controls and the MSR bitmap follow the guest's APIC mode (see the module
    /// documentation); called before every entry, a compare when nothing changed.
    pub(in crate::vcpu::haxm) fn apic_follow_mode<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        let Some(u) = self.apic.as_deref() else {
            return Ok(());
        };
        let want = u.x2apic_virt && u.local.mode() == ApicMode::X2Apic;
        if want == u.x2apic_virt_on {
            return Ok(());
        }
        let (vid, arv, access_virt) = (u.vid, u.arv, u.access_virt);
        let c = *self.core.controls();
        let next = if want {
            c.without(OptionalFeatures::VIRTUALIZE_APIC_ACCESSES)
                .and_then(|c| c.with(OptionalFeatures::VIRTUALIZE_X2APIC))
        } else if access_virt {
            c.without(OptionalFeatures::VIRTUALIZE_X2APIC)
                .and_then(|c| c.with(OptionalFeatures::VIRTUALIZE_APIC_ACCESSES))
        } else {
            c.without(OptionalFeatures::VIRTUALIZE_X2APIC)
        };
        let Ok(next) = next else {
            // The CPU's controls do not allow the switch (cannot happen with the features
            // negotiated at attach): x2APIC mode stays fully intercepted.
            if let Some(u) = self.apic.as_deref_mut() {
                u.x2apic_virt = false;
            }
            return Ok(());
        };
        self.core.switch_controls(root, next)?;
        self.core.intercept_msr(X2APIC_TPR, false, !want);
        self.core.intercept_msr(X2APIC_TPR, true, !want);
        if vid {
            self.core.intercept_msr(X2APIC_EOI, true, !want);
            self.core.intercept_msr(X2APIC_SELF_IPI, true, !want);
        }
        if arv {
            // §30.5: with APIC-register virtualization a RDMSR the bitmap lets through reads
            // the page, whatever the MSR: only the registers the page holds.
            for msr in X2APIC_REGISTERS.filter(|&m| crate::apic::x2apic_read_virtualized(m)) {
                self.core.intercept_msr(msr, false, !want);
            }
        }
        if let Some(u) = self.apic.as_deref_mut() {
            u.x2apic_virt_on = want;
        }
        Ok(())
    }

    /// An APIC-access exit. Linear reads and writes (types 0, 1) continue as an MMIO access
    /// at the page's address plus the offset; an access during event delivery or an
    /// instruction fetch from the page (types 2, 3, 10, 15: an IDT, a stack or code in the
    /// APIC page) is not something a guest does on hardware either without faulting
    /// oddly: the vCPU stops with the exit reported (STATECHANGE).
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_access_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Next, HaxError> {
        let q = self.apic_exit_qualification(root)?;
        let offset = q & 0xfff;
        let access = match (q >> 12) & 0xf {
            0 => EptAccess::READ,
            1 => EptAccess::WRITE,
            _ => return Ok(self.panic(PanicReason::UnhandledExit { reason: 44 })),
        };
        if access == EptAccess::WRITE
            && offset == XAPIC_EOI
            && self.apic_fast_eoi()
            && self.exit_length_plausible(root)?
        {
            // KVM's fast EOI (`handle_apic_access`): the value of an EOI write does not
            // matter (SDM Vol. 3A §11.8.5), so no fetch and no decode; the model takes the
            // EOI and RIP moves by the VM-exit instruction length. The SDM leaves that field
            // undefined for this exit (Vol. 3C §28.2.5); processors report the instruction's
            // length there (KVM relies on it, as Bochs does), and a value that cannot be a
            // length (0, or above 15) sends the write down the general path, which fetches.
            let now = self.guest_tsc(root)?;
            let effect = match self.apic.as_deref_mut() {
                Some(u) => {
                    u.fast_exits += 1;
                    u.local.write_mmio(XAPIC_EOI as u32, 0, now)
                }
                None => crate::apic::Effect::None,
            };
            self.apic_effect(effect);
            self.skip(root)?;
            return Ok(Next::Resume);
        }
        let fetch = self.fetch_site(root)?;
        Ok(self.wait_for_memory(MemoryRequest::EptViolation {
            gpa: DEFAULT_APIC_BASE + offset,
            access,
            qualification: access.bits(),
            fetch,
        }))
    }

    /// Whether the VM-exit instruction length holds a length an instruction can have (1-15).
    fn exit_length_plausible<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<bool, HaxError> {
        let len = self
            .core
            .with_vmcs(root, |vmcs, _| vmcs.vm_exit_instruction_length())??;
        Ok((1..=15).contains(&len))
    }

    /// Whether an xAPIC EOI write may take the fast path: the in-kernel APIC in xAPIC mode
    /// with its fast paths on.
    fn apic_fast_eoi(&self) -> bool {
        self.apic.as_deref().is_some_and(|u| {
            !u.flags.contains(ApicFlags::NO_FAST_PATHS) && u.local.mode() == ApicMode::XApic
        })
    }

    /// An APIC-write exit (reason 56, SDM Vol. 3C §30.4.3.3): the CPU wrote the guest's value
    /// into the virtual-APIC page, then exited trap-like (RIP already past the instruction),
    /// the qualification giving the offset (bits 11:0). With virtual-interrupt delivery that
    /// is a write of ICR low (0x300) that is not a self-IPI; with APIC-register
    /// virtualization any register of §30.4.3.1's list the CPU does not complete itself. The
    /// value is taken from the page and written to the model as the MMIO path would (an IPI
    /// is sent; the ICR high half is in the model already: an APIC-access exit, or with
    /// APIC-register virtualization the page's copy taken after every exit); the page's image
    /// is then rewritten from the model before the next entry (`apic_image_dirty`), so read-only
    /// and reserved bits the guest set do not stay visible.
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_write_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Next, HaxError> {
        let q = self.apic_exit_qualification(root)?;
        let offset = (q & 0xff0) as usize;
        let now = self.guest_tsc(root)?;
        let effect = match self.apic.as_deref_mut() {
            Some(u) if u.vapic.is_some() => {
                let value = u.page_word(offset);
                u.local.write_mmio(offset as u32, value, now)
            }
            _ => crate::apic::Effect::None,
        };
        self.apic_image_dirty();
        self.apic_effect(effect);
        Ok(Next::Resume)
    }
}
