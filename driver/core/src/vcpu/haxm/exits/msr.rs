//! RDMSR/WRMSR exits and the GET/SET_MSRS IOCTLs (haxm-abi.md §2, §6).

use super::*;

impl HaxVcpu {
    /// Reads an MSR HAXM handles (§6 list); `None` for one it does not (RDMSR → #GP).
    pub(in crate::vcpu::haxm) fn read_msr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        msr: u32,
    ) -> Result<Option<u64>, HaxError> {
        if let Some(v) = self.core.swapped_msr(root, msr) {
            return Ok(Some(v));
        }
        let soft = self.soft_msrs.get(&msr).copied();
        let apic = self.apic_base;
        let v = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<Option<u64>, VmFail> {
                Ok(Some(match msr {
                    IA32_TSC => vmcs.vmx().rdtsc().wrapping_add(vmcs.tsc_offset()?),
                    IA32_EFER => {
                        let lma =
                            vmcs.vm_entry_controls()? & EntryControls::IA32E_MODE_GUEST.bits() != 0;
                        (vmcs.guest_ia32_efer()? & !EFER_LMA) | if lma { EFER_LMA } else { 0 }
                    }
                    IA32_SYSENTER_CS => u64::from(vmcs.guest_ia32_sysenter_cs()?),
                    IA32_SYSENTER_ESP => vmcs.guest_ia32_sysenter_esp()?,
                    IA32_SYSENTER_EIP => vmcs.guest_ia32_sysenter_eip()?,
                    IA32_FS_BASE => vmcs.guest_fs_base()?,
                    IA32_GS_BASE => vmcs.guest_gs_base()?,
                    IA32_PAT => vmcs.guest_ia32_pat()?,
                    0x1d9 => vmcs.guest_ia32_debugctl()?,
                    IA32_APIC_BASE => apic,
                    // FEATURE_CONTROL: locked, VMX off (VMX is hidden in CPUID).
                    0x3a => 1,
                    m if is_soft_msr(m) => soft.unwrap_or(0),
                    _ => return Ok(None),
                }))
            })??;
        Ok(v)
    }

    /// Writes an MSR HAXM handles; false if refused (WRMSR → #GP).
    pub(in crate::vcpu::haxm) fn write_msr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        msr: u32,
        v: u64,
    ) -> Result<bool, HaxError> {
        if self.core.set_swapped_msr(root, msr, v) {
            return Ok(true);
        }
        match msr {
            IA32_APIC_BASE => {
                // Only the default base; only vCPU 0 may be the BSP (§6).
                if v & 0xffff_f000 != APIC_DEFAULT || (v & APIC_BASE_BSP != 0 && self.vcpu_id != 0)
                {
                    return Ok(false);
                }
                self.apic_base = v;
                return Ok(true);
            }
            m if is_soft_msr(m) => {
                self.soft_msrs.insert(msr, v);
                return Ok(true);
            }
            0x3a => return Ok(false),
            _ => {}
        }
        let ok = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<bool, VmFail> {
                match msr {
                    IA32_TSC => {
                        let now = vmcs.vmx().rdtsc();
                        vmcs.set_tsc_offset(v.wrapping_sub(now));
                    }
                    IA32_EFER => {
                        // SCE, LME, LMA, NXE only. "IA-32e mode guest" follows LMA (SDM §27.3.1.1
                        // requires them equal on entry).
                        if v & !0xd01 != 0 {
                            return Ok(false);
                        }
                        vmcs.set_guest_ia32_efer(v);
                        let entry = vmcs.vm_entry_controls()?;
                        let bit = EntryControls::IA32E_MODE_GUEST.bits();
                        vmcs.set_vm_entry_controls(if v & EFER_LMA != 0 {
                            entry | bit
                        } else {
                            entry & !bit
                        });
                    }
                    IA32_SYSENTER_CS => vmcs.set_guest_ia32_sysenter_cs(v as u32),
                    IA32_SYSENTER_ESP => vmcs.set_guest_ia32_sysenter_esp(v),
                    IA32_SYSENTER_EIP => vmcs.set_guest_ia32_sysenter_eip(v),
                    IA32_FS_BASE => vmcs.set_guest_fs_base(v),
                    IA32_GS_BASE => vmcs.set_guest_gs_base(v),
                    IA32_PAT => {
                        if !(0..8).all(|i| matches!((v >> (i * 8)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7)) {
                            return Ok(false);
                        }
                        vmcs.set_guest_ia32_pat(v);
                    }
                    0x1d9 => vmcs.set_guest_ia32_debugctl(v),
                    _ => return Ok(false),
                }
                Ok(true)
            })??;
        Ok(ok)
    }

    /// `HAX_VCPU_IOCTL_GET_MSRS`: entries `0..nr_msr` in order, stopping at the first MSR
    /// refused; `done` = the number processed. `nr_msr >= 32` is refused with nothing changed.
    pub fn get_msrs<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        d: &mut MsrData,
    ) -> Result<(), HaxError> {
        self.msr_batch(root, d, |vcpu, root, msr, e| {
            Ok(match vcpu.read_msr(root, msr)? {
                Some(v) => {
                    e.value = v;
                    true
                }
                None => false,
            })
        })
    }

    /// `HAX_VCPU_IOCTL_SET_MSRS`: as [`HaxVcpu::get_msrs`], writing.
    pub fn set_msrs<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        d: &mut MsrData,
    ) -> Result<(), HaxError> {
        self.msr_batch(root, d, |vcpu, root, msr, e| {
            vcpu.write_msr(root, msr, e.value)
        })
    }

    /// HAXM's MSR batch protocol shared by GET and SET (haxm-abi.md §2): `nr_msr` above 31 is
    /// refused before anything is touched; entries are processed in order until `op` refuses
    /// one (or its index does not fit 32 bits); `done` counts the processed entries.
    pub(in crate::vcpu::haxm) fn msr_batch<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        d: &mut MsrData,
        mut op: impl FnMut(&mut Self, &mut VmxRoot<V>, u32, &mut VmxMsr) -> Result<bool, HaxError>,
    ) -> Result<(), HaxError> {
        let n = usize::from(d.nr_msr);
        if n > HAX_MAX_MSRS_PER_CALL {
            return Err(HaxError::TooManyMsrs { nr_msr: d.nr_msr });
        }
        let mut done = 0;
        for e in &mut d.entries[..n] {
            let Ok(msr) = u32::try_from(e.entry) else {
                break;
            };
            if !op(self, root, msr, e)? {
                break;
            }
            done += 1;
        }
        d.done = done;
        Ok(())
    }
}

/// MSRs HAXM keeps in software per vCPU (haxm-abi.md §6): written values are remembered and
/// read back, nothing reaches the hardware. PLATFORM_ID (0x17), BIOS_SIGN_ID (0x8b), MCG_CAP/
/// MCG_STATUS (0x179/0x17a), MTRRcap (0xfe), MTRR def type (0x2ff), MISC_ENABLE (0x1a0),
/// PMC0-3 (0xc1-0xc4), PERFEVTSEL0-3 (0x186-0x189), variable MTRRs (0x200-0x20f), fixed MTRRs
/// (0x250, 0x258, 0x259, 0x268-0x26f) and the MC0-MC4 banks (0x400-0x413).
pub(in crate::vcpu::haxm) const fn is_soft_msr(msr: u32) -> bool {
    matches!(
        msr,
        0x17 | 0x8b
            | 0x179
            | 0x17a
            | 0xfe
            | 0x2ff
            | 0x1a0
            | 0xc1..=0xc4
            | 0x186..=0x189
            | 0x200..=0x20f
            | 0x250
            | 0x258
            | 0x259
            | 0x268..=0x26f
            | 0x400..=0x413
    )
}
