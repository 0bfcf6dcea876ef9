//! Control-register and debug-register accesses (exit reasons 28, 29; SDM Vol. 3C §28.2.1
//! Tables 28-3, 28-4).

use super::*;

impl HaxVcpu {
    pub(in crate::vcpu::haxm) fn cr_access<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        cr: crate::vmcs::exit::CrAccess,
    ) -> Result<(), HaxError> {
        let value = match cr.access {
            CrAccessType::MovTo { gpr } => Some(self.gpr(root, gpr)?),
            _ => None,
        };
        let read =
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<Option<(u8, u64)>, VmFail> {
                    let mut out = None;
                    match (cr.cr, cr.access) {
                        (0, CrAccessType::MovTo { .. }) => write_cr0(vmcs, value.unwrap_or(0))?,
                        (0, CrAccessType::Clts) => {
                            let v = guest_cr(vmcs, 0)? & !8;
                            write_cr0(vmcs, v)?;
                        }
                        (0, CrAccessType::Lmsw { source, .. }) => {
                            // LMSW loads CR0[3:0] and cannot clear PE (SDM Vol. 2A LMSW).
                            let cur = guest_cr(vmcs, 0)?;
                            let v = (cur & !0xe) | u64::from(source & 0xf) | (cur & 1);
                            write_cr0(vmcs, v)?;
                        }
                        (0, CrAccessType::MovFrom { gpr }) => out = Some((gpr, guest_cr(vmcs, 0)?)),
                        (4, CrAccessType::MovTo { .. }) => write_cr4(vmcs, value.unwrap_or(0))?,
                        (4, CrAccessType::MovFrom { gpr }) => out = Some((gpr, guest_cr(vmcs, 4)?)),
                        (3, CrAccessType::MovTo { .. }) => vmcs.set_guest_cr3(value.unwrap_or(0)),
                        (3, CrAccessType::MovFrom { gpr }) => out = Some((gpr, vmcs.guest_cr3()?)),
                        // CR8 (TPR) is not virtualized: writes are dropped, reads give 0 (§6).
                        (8, CrAccessType::MovFrom { gpr }) => out = Some((gpr, 0)),
                        _ => {}
                    }
                    skip_instruction(vmcs)?;
                    Ok(out)
                })??;
        if let Some((gpr, v)) = read {
            self.set_gpr(root, gpr, v)?;
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
                7 => self
                    .core
                    .with_vmcs(root, |vmcs, _| vmcs.set_guest_dr7(v & 0xffff_ffff))?,
                6 => self.drs[4] = v,
                d => self.drs[d] = v,
            }
        } else {
            let v = match dr {
                7 => self.core.with_vmcs(root, |vmcs, _| vmcs.guest_dr7())??,
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
    v: u64,
) -> Result<(), VmFail> {
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
    v: u64,
) -> Result<(), VmFail> {
    let old = vmcs.guest_cr4()?;
    let mask = vmcs.cr4_guest_host_mask()?;
    let must = mask & old & !vmcs.cr4_read_shadow()?;
    vmcs.set_cr4_read_shadow(v);
    vmcs.set_guest_cr4(v | must);
    Ok(())
}
