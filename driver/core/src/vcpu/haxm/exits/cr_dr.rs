//! Control-register and debug-register accesses (exit reasons 28, 29; SDM Vol. 3C §28.2.1
//! Tables 28-3, 28-4).

use super::*;
use crate::vcpu::bits::CR4_OSXSAVE;
use crate::vcpu::checked::{GuestCr0, GuestCr3, GuestCr4, Refused};

impl HaxVcpu {
    /// MOV to/from CR0, CR3, CR4, CR8, CLTS and LMSW. A write that hardware refuses (SDM
    /// Vol. 2B MOV CR "#GP(0)", checked by `vcpu::checked`) injects #GP and leaves RIP and the
    /// register alone; storing it would fail every later VM entry instead (SDM §27.3.1.1).
    pub(in crate::vcpu::haxm) fn cr_access<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        cr: crate::vmcs::exit::CrAccess,
        maxphyaddr: u8,
        xsave: bool,
    ) -> Result<(), HaxError> {
        let value = match cr.access {
            CrAccessType::MovTo { gpr } => Some(self.gpr(root, gpr)?),
            _ => None,
        };
        if cr.cr == 8 && self.has_apic() {
            return self.apic_cr8(root, cr.access, value);
        }
        let cr4_fixed1 = self.controls().guest_cr4_fixed.may_be_one;
        let read = self.core.with_vmcs(
            root,
            |vmcs, _| -> Result<Result<Option<(u8, u64)>, Refused>, VmFail> {
                let mut out = None;
                let efer = vmcs.guest_ia32_efer()?;
                let cr0 = |vmcs: &mut Vmcs<'_, Counted<'_, V>>, v: u64| -> Result<_, VmFail> {
                    let cs_long = vmcs.guest_cs_access_rights()? & (1 << 13) != 0;
                    Ok(GuestCr0::check(v, efer, guest_cr(vmcs, 4)?, cs_long))
                };
                match (cr.cr, cr.access) {
                    (0, CrAccessType::MovTo { .. }) => match cr0(vmcs, value.unwrap_or(0))? {
                        Ok(v) => write_cr0(vmcs, v)?,
                        Err(e) => return Ok(Err(e)),
                    },
                    (0, CrAccessType::Clts) => {
                        let v = guest_cr(vmcs, 0)? & !8;
                        match cr0(vmcs, v)? {
                            Ok(v) => write_cr0(vmcs, v)?,
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    (0, CrAccessType::Lmsw { source, .. }) => {
                        // LMSW loads CR0[3:0] and cannot clear PE (SDM Vol. 2A LMSW).
                        let cur = guest_cr(vmcs, 0)?;
                        let v = (cur & !0xe) | u64::from(source & 0xf) | (cur & 1);
                        match cr0(vmcs, v)? {
                            Ok(v) => write_cr0(vmcs, v)?,
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    (0, CrAccessType::MovFrom { gpr }) => out = Some((gpr, guest_cr(vmcs, 0)?)),
                    (4, CrAccessType::MovTo { .. }) => {
                        let cur = guest_cr(vmcs, 4)?;
                        let cr3 = vmcs.guest_cr3()?;
                        match GuestCr4::check(value.unwrap_or(0), cur, cr4_fixed1, efer, cr3, xsave)
                        {
                            Ok(v) => write_cr4(vmcs, v)?,
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    (4, CrAccessType::MovFrom { gpr }) => out = Some((gpr, guest_cr(vmcs, 4)?)),
                    (3, CrAccessType::MovTo { .. }) => {
                        let pcide = guest_cr(vmcs, 4)? & (1 << 17) != 0;
                        match GuestCr3::check(value.unwrap_or(0), maxphyaddr, pcide) {
                            Ok(v) => vmcs.set_guest_cr3(v.get()),
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    (3, CrAccessType::MovFrom { gpr }) => out = Some((gpr, vmcs.guest_cr3()?)),
                    // CR8 (TPR) is not virtualized: writes are dropped, reads give 0 (§6).
                    (8, CrAccessType::MovFrom { gpr }) => out = Some((gpr, 0)),
                    _ => {}
                }
                skip_instruction(vmcs)?;
                Ok(Ok(out))
            },
        )??;
        match read {
            Ok(Some((gpr, v))) => self.set_gpr(root, gpr, v)?,
            Ok(None) => {
                if let (4, Some(v)) = (cr.cr, value) {
                    self.core.set_guest_osxsave(v & CR4_OSXSAVE != 0);
                }
            }
            Err(_) => self.inject_gp(root)?,
        }
        Ok(())
    }

    pub(in crate::vcpu::haxm) fn dr_access<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        // Exit qualification for MOV DR (SDM Table 28-4): bits 2:0 DR, bit 4 direction
        // (0 = MOV to DR), bits 11:8 GPR.
        let q = self
            .core
            .with_vmcs(root, |vmcs, _| vmcs.exit_qualification())??;
        let dr = (q & 7) as usize;
        let gpr = ((q >> 8) & 0xf) as u8;
        let dr = match dr {
            4 => 6,
            5 => 7,
            d => d,
        };
        if q & (1 << 4) == 0 {
            let v = self.gpr(root, gpr)?;
            match dr {
                7 => self.set_guest_dr7(root, v)?,
                6 => self.drs[4] = v,
                d => self.drs[d] = v,
            }
        } else {
            let v = match dr {
                7 => self.guest_dr7(root)?,
                6 => self.drs[4],
                d => self.drs[d],
            };
            self.set_gpr(root, gpr, v)?;
        }
        self.skip(root)
    }
}

/// The guest's view of CR0 or CR4: host-owned bits from the read shadow (SDM §25.6.6).
pub(in crate::vcpu::haxm) fn guest_cr<V: Vmx>(
    vmcs: &mut Vmcs<'_, Counted<'_, V>>,
    n: u8,
) -> Result<u64, VmFail> {
    let (real, mask, shadow) = if n == 0 {
        (
            vmcs.guest_cr0()?,
            vmcs.cr0_guest_host_mask()?,
            vmcs.cr0_read_shadow()?,
        )
    } else {
        (
            vmcs.guest_cr4()?,
            vmcs.cr4_guest_host_mask()?,
            vmcs.cr4_read_shadow()?,
        )
    };
    Ok((real & !mask) | (shadow & mask))
}

/// A guest write of CR0: the shadow gets the value, the register the value with the bits VMX
/// forces; EFER.LMA and "IA-32e mode guest" follow a paging switch with EFER.LME (SDM Vol. 3A
/// §11.8.5 "Initializing IA-32e Mode").
pub(in crate::vcpu::haxm) fn write_cr0<V: Vmx>(
    vmcs: &mut Vmcs<'_, Counted<'_, V>>,
    v: GuestCr0,
) -> Result<(), VmFail> {
    let v = v.get();
    let old = vmcs.guest_cr0()?;
    let mask = vmcs.cr0_guest_host_mask()?;
    let must = mask & old & !vmcs.cr0_read_shadow()?;
    vmcs.set_cr0_read_shadow(v);
    vmcs.set_guest_cr0(v | must);
    let efer = vmcs.guest_ia32_efer()?;
    if (old ^ v) & CR0_PG != 0 && efer & EFER_LME != 0 {
        let on = v & CR0_PG != 0;
        vmcs.set_guest_ia32_efer(if on {
            efer | EFER_LMA
        } else {
            efer & !EFER_LMA
        });
        let entry = vmcs.vm_entry_controls()?;
        let bit = EntryControls::IA32E_MODE_GUEST.bits();
        vmcs.set_vm_entry_controls(if on { entry | bit } else { entry & !bit });
    }
    Ok(())
}

pub(in crate::vcpu::haxm) fn write_cr4<V: Vmx>(
    vmcs: &mut Vmcs<'_, Counted<'_, V>>,
    v: GuestCr4,
) -> Result<(), VmFail> {
    let v = v.get();
    let old = vmcs.guest_cr4()?;
    let mask = vmcs.cr4_guest_host_mask()?;
    let must = mask & old & !vmcs.cr4_read_shadow()?;
    vmcs.set_cr4_read_shadow(v);
    vmcs.set_guest_cr4(v | must);
    Ok(())
}
