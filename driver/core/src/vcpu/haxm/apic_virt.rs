//! The in-kernel APIC's VMX virtualization beyond the TPR shadow: APIC-access exits (exit
//! reason 44) of the APIC-access page that ENABLE_APIC maps at the xAPIC base (SDM Vol. 3C
//! §30.4). With the TPR shadow, the CPU virtualizes the TPR (offset 0x80) in the
//! virtual-APIC page without an exit; every other access is a fault-like APIC-access exit
//! whose qualification gives the offset and the access type (Table 28-6). Those go the way
//! of an EPT violation on MMIO (the instruction fetched at passive level, hvf's whole-
//! instruction fetch), and `HaxVcpu::apic_mmio` serves the MOV forms: the same path, so
//! the two routes cannot disagree.

use super::*;

/// Where ENABLE_APIC maps the APIC-access page (the xAPIC base after reset, SDM Vol. 3A
/// §11.4.4).
const DEFAULT_APIC_BASE: u64 = 0xfee0_0000;

impl HaxVcpu {
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
        let q = self
            .core
            .with_vmcs(root, |vmcs, _| vmcs.exit_qualification())??;
        let offset = q & 0xfff;
        let access = match (q >> 12) & 0xf {
            0 => EptAccess::READ,
            1 => EptAccess::WRITE,
            _ => return Ok(self.panic(PanicReason::UnhandledExit { reason: 44 })),
        };
        let fetch = self.fetch_site(root)?;
        Ok(Next::Memory(MemoryRequest::EptViolation {
            gpa: DEFAULT_APIC_BASE + offset,
            access,
            qualification: access.bits(),
            fetch,
        }))
    }
}

impl HaxVcpu {
    /// An APIC-write exit (reason 56, SDM Vol. 3C §30.4.3.3): with virtual-interrupt delivery
    /// the CPU virtualizes a write to ICR low (offset 0x300) that is not a self-IPI into the
    /// virtual-APIC page, then exits trap-like (RIP already past the instruction), the
    /// qualification giving the offset. The value is taken from the page and written to the
    /// model as the MMIO path would (the IPI is sent); the ICR high half came through an
    /// APIC-access exit before, so the model holds the destination.
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_write_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Next, HaxError> {
        let q = self
            .core
            .with_vmcs(root, |vmcs, _| vmcs.exit_qualification())??;
        let offset = (q & 0xff0) as usize;
        let now = self.guest_tsc(root)?;
        let effect = match self.apic.as_deref_mut() {
            Some(u) => {
                let value = u
                    .vapic
                    .as_mut()
                    .and_then(|p| p.bytes_mut().get(offset..offset + 4))
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                match value {
                    Some(v) => u.local.write_mmio(offset as u32, v, now),
                    None => crate::apic::Effect::None,
                }
            }
            None => crate::apic::Effect::None,
        };
        self.apic_effect(effect);
        Ok(Next::Resume)
    }
}
