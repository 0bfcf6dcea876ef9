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
