//! XSETBV exits (basic reason 55, unconditional in VMX non-root operation, SDM Vol. 3C §26.1.2)
//! and the CPUID answers that follow the guest's XSAVE state (CPUID.1:ECX.OSXSAVE[27],
//! CPUID.(EAX=0xD,ECX=0/1).EBX; SDM Vol. 2A CPUID, Vol. 1 §13.2).

use super::*;
use crate::vcpu::bits::CR4_OSXSAVE;
use crate::vcpu::checked::{xcr0, GuestXcr0};

/// CPUID.1:ECX.XSAVE.
const XSAVE: u32 = 1 << 26;
/// CPUID.1:ECX.OSXSAVE.
const OSXSAVE: u32 = 1 << 27;

impl HaxVcpu {
    /// XSETBV: the SDM's checks (#UD without CR4.OSXSAVE or XSAVE in CPUID; #GP(0) for ECX
    /// != 0, CPL > 0, an XCR0 value hardware refuses or one with components this guest may
    /// not enable), then the checked value becomes the guest's XCR0, loaded into the CPU at
    /// the next entry.
    pub(in crate::vcpu::haxm) fn xsetbv<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
    ) -> Result<Next, HaxError> {
        let apic_id = self.vcpu_id as u8;
        let shown = cpuid.lookup(1, 0, apic_id)[2] & XSAVE != 0;
        let d = cpuid.lookup(0xd, 0, apic_id);
        let allowed = (u64::from(d[0]) | (u64::from(d[3]) << 32)) & self.core.xcr0_allowed(root);
        let (cpl, osxsave) =
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(u8, bool), VmFail> {
                    // CPL is SS.DPL (SDM Vol. 3A §5.5); real mode has SS.DPL 0.
                    let cpl = ((vmcs.guest_ss_access_rights()? >> 5) & 3) as u8;
                    Ok((cpl, guest_cr(vmcs, 4)? & CR4_OSXSAVE != 0))
                })??;
        if !shown || !osxsave {
            // The CPU raises this #UD before the exit (SDM Vol. 3C §26.1.1); kept for a
            // guest whose CPUID was narrowed after it set CR4.OSXSAVE.
            self.inject_exception(root, 6, None)?;
            return Ok(Next::Resume);
        }
        let r = &self.core.regs.gpr;
        let ecx = r[reg::RCX] as u32;
        let value = (r[reg::RDX] << 32) | (r[reg::RAX] & 0xffff_ffff);
        match GuestXcr0::from_xsetbv(ecx, value, cpl, allowed) {
            Ok(v) => {
                self.core.set_xcr0(v);
                self.skip(root)?;
            }
            Err(_) => self.inject_gp(root)?,
        }
        Ok(Next::Resume)
    }
}

/// Patches a CPUID answer with the vCPU's own XSAVE state (`x`: its XCR0, `osxsave`: its
/// CR4.OSXSAVE, tracked without a VMREAD): OSXSAVE mirrors CR4 when XSAVE is shown, leaf 0xD
/// sub-leaf 0 EBX is the standard-format size for the current XCR0 and sub-leaf 1 EBX the
/// compacted size (XSAVEC; IA32_XSS is 0).
pub(super) fn cpuid_fixup(x: u64, osxsave: bool, leaf: u32, subleaf: u32, r: &mut [u32; 4]) {
    match (leaf, subleaf) {
        (1, _) if r[2] & XSAVE != 0 => {
            r[2] = (r[2] & !OSXSAVE) | if osxsave { OSXSAVE } else { 0 };
        }
        (0xd, 0) if r[0] != 0 => r[1] = xcr0::area_size(x),
        (0xd, 1) if r[0] != 0 => r[1] = compacted_size(x),
        _ => {}
    }
}

/// The XSAVEC (compacted) area size for `x`: 576 plus each enabled component's size (none of
/// the switched components asks for 64-byte alignment, CPUID.(EAX=0xD,ECX=i):ECX[1] = 0).
fn compacted_size(x: u64) -> u32 {
    xcr0::COMPONENTS
        .iter()
        .filter(|c| x & (1 << c.0) != 0)
        .map(|c| c.2)
        .sum::<u32>()
        + 576
}
