//! RDMSR/WRMSR exits and the GET/SET_MSRS IOCTLs (haxm-abi.md §2, §6).

use super::*;
use crate::vcpu::checked::{CanonicalAddress, GuestDebugCtl, GuestEfer, SwappedMsrValue};

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
        if let Some(fixed) = haxm_fixed_msr(msr) {
            return Ok(fixed.read);
        }
        let soft = soft_msr_slot(msr).and_then(|i| self.soft_msrs.get(i).copied());
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
                    IA32_DEBUGCTL => vmcs.guest_ia32_debugctl()?,
                    IA32_APIC_BASE => apic,
                    // FEATURE_CONTROL: locked, VMX off (VMX is hidden in CPUID).
                    0x3a => 1,
                    _ if soft.is_some() => soft.unwrap_or(0),
                    _ => return Ok(None),
                }))
            })??;
        Ok(v)
    }

    /// Writes an MSR HAXM handles; false if refused (guest WRMSR → #GP; SET_MSRS stops its
    /// batch there). Every value that reaches WRMSR in the host or a VMCS guest field VM entry
    /// checks passes a check of `vcpu::checked` first: a refused value changes nothing.
    /// `writer` decides the rules that differ: a guest cannot write EFER.LMA or change LME
    /// with paging on; user space restores a whole state and may.
    pub(in crate::vcpu::haxm) fn write_msr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        msr: u32,
        v: u64,
        writer: MsrWriter,
    ) -> Result<bool, HaxError> {
        if let Some(checked) = SwappedMsrValue::check(msr, v) {
            return Ok(match checked {
                Ok(value) => {
                    self.core.set_swapped_msr(root, value);
                    true
                }
                Err(_) => false,
            });
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
            m => {
                if let Some(fixed) = haxm_fixed_msr(m) {
                    // Nothing reaches the hardware: the write is dropped or faults.
                    return Ok(fixed.write_ignored);
                }
                if let Some(slot) = soft_msr_slot(m) {
                    if let Some(m) = self.soft_msrs.get_mut(slot) {
                        *m = v;
                    }
                    return Ok(true);
                }
            }
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
                        let efer = match writer {
                            MsrWriter::Guest => {
                                let cr0 = guest_cr(vmcs, 0)?;
                                let lma = vmcs.vm_entry_controls()?
                                    & EntryControls::IA32E_MODE_GUEST.bits()
                                    != 0;
                                let current = (vmcs.guest_ia32_efer()? & !EFER_LMA)
                                    | if lma { EFER_LMA } else { 0 };
                                GuestEfer::from_guest(v, current, cr0)
                            }
                            MsrWriter::User => GuestEfer::from_user(v),
                        };
                        let Ok(efer) = efer else {
                            return Ok(false);
                        };
                        // "IA-32e mode guest" follows LMA (SDM §27.3.1.1 requires them equal).
                        vmcs.set_guest_ia32_efer(efer.get());
                        let entry = vmcs.vm_entry_controls()?;
                        let bit = EntryControls::IA32E_MODE_GUEST.bits();
                        vmcs.set_vm_entry_controls(if efer.lma() {
                            entry | bit
                        } else {
                            entry & !bit
                        });
                    }
                    IA32_SYSENTER_CS => vmcs.set_guest_ia32_sysenter_cs(v as u32),
                    IA32_SYSENTER_ESP | IA32_SYSENTER_EIP | IA32_FS_BASE | IA32_GS_BASE => {
                        // Canonical, or WRMSR raises #GP and VM entry fails (SDM §27.3.1.1-2).
                        let Ok(a) = CanonicalAddress::check(v) else {
                            return Ok(false);
                        };
                        match msr {
                            IA32_SYSENTER_ESP => vmcs.set_guest_ia32_sysenter_esp(a.get()),
                            IA32_SYSENTER_EIP => vmcs.set_guest_ia32_sysenter_eip(a.get()),
                            IA32_FS_BASE => vmcs.set_guest_fs_base(a.get()),
                            _ => vmcs.set_guest_gs_base(a.get()),
                        }
                    }
                    IA32_PAT => {
                        // Each entry a valid memory type (SDM Vol. 3A §13.12.2; VM entry checks
                        // the same, §27.3.1.1).
                        if !(0..8).all(|i| matches!((v >> (i * 8)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7)) {
                            return Ok(false);
                        }
                        vmcs.set_guest_ia32_pat(v);
                    }
                    IA32_DEBUGCTL => {
                        let Ok(d) = GuestDebugCtl::check(v) else {
                            return Ok(false);
                        };
                        vmcs.set_guest_ia32_debugctl(d.get());
                    }
                    // FEATURE_CONTROL is locked (reads as 1): writes fault, as on hardware.
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
            vcpu.write_msr(root, msr, e.value, MsrWriter::User)
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

/// Who writes an MSR: the rules for EFER differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) enum MsrWriter {
    /// A guest WRMSR.
    Guest,
    /// SET_MSRS.
    User,
}

/// Ranges of the MSRs HAXM keeps in software per vCPU (haxm-abi.md §6): written values are
/// remembered and read back, nothing reaches the hardware. PLATFORM_ID (0x17), BIOS_SIGN_ID
/// (0x8b), PMC0-3 (0xc1-0xc4), MTRRcap (0xfe), MCG_CAP/MCG_STATUS (0x179/0x17a),
/// PERFEVTSEL0-3 (0x186-0x189), MISC_ENABLE (0x1a0), variable MTRRs (0x200-0x20f), fixed
/// MTRRs (0x250, 0x258, 0x259, 0x268-0x26f), MTRR def type (0x2ff) and the MC0-MC4 banks
/// (0x400-0x413), and CPUID_FEATURE_MASK (0x478, HAXM's read-back register). A fixed array
/// holds them: no allocation on the WRMSR path.
const SOFT_MSR_RANGES: [(u32, u32); 14] = [
    (0x17, 0x17),
    (0x8b, 0x8b),
    (0xc1, 0xc4),
    (0xfe, 0xfe),
    (0x179, 0x17a),
    (0x186, 0x189),
    (0x1a0, 0x1a0),
    (0x200, 0x20f),
    (0x250, 0x250),
    (0x258, 0x259),
    (0x268, 0x26f),
    (0x2ff, 0x2ff),
    (0x400, 0x413),
    (0x478, 0x478),
];

/// How many MSRs [`SOFT_MSR_RANGES`] names.
pub(in crate::vcpu::haxm) const SOFT_MSRS: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < SOFT_MSR_RANGES.len() {
        n += (SOFT_MSR_RANGES[i].1 - SOFT_MSR_RANGES[i].0 + 1) as usize;
        i += 1;
    }
    n
};

/// The slot of a software-kept MSR, or `None` for any other MSR.
pub(in crate::vcpu::haxm) const fn soft_msr_slot(msr: u32) -> Option<usize> {
    let mut base = 0;
    let mut i = 0;
    while i < SOFT_MSR_RANGES.len() {
        let (lo, hi) = SOFT_MSR_RANGES[i];
        if msr >= lo && msr <= hi {
            return Some(base + (msr - lo) as usize);
        }
        base += (hi - lo + 1) as usize;
        i += 1;
    }
    None
}

/// How HAXM 7.8 answered an MSR it neither passed through nor kept: a fixed read value (or
/// #GP) and a write that is dropped (or #GP). Nothing of these reaches the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) struct FixedMsr {
    /// What RDMSR returns; `None`: #GP.
    pub read: Option<u64>,
    /// WRMSR is accepted and dropped; false: #GP.
    pub write_ignored: bool,
}

/// The MSRs HAXM 7.8 answered with constants (`core/vcpu.c` `handle_msr_read`,
/// `handle_msr_write`, `misc_msr_read/write`; indexes from `core/include/ia32_defs.h`). A
/// guest that reads one of them on real hardware gets a model-specific value; these are the
/// values HAXM's guests (Android, Windows, Linux images) were tested with, so rhax gives the
/// same ones rather than #GP.
pub(in crate::vcpu::haxm) const fn haxm_fixed_msr(msr: u32) -> Option<FixedMsr> {
    const fn f(read: Option<u64>, write_ignored: bool) -> Option<FixedMsr> {
        Some(FixedMsr {
            read,
            write_ignored,
        })
    }
    match msr {
        // P5_MC_ADDR, P5_MC_TYPE: read 0 (the P6 family maps them to MC0); writes #GP.
        0x0 | 0x1 => f(Some(0), false),
        // EBL_CR_POWERON (0x2a), EBC_SOFT_POWERON (0x2b), EBC_FREQUENCY_ID (0x2c): 0, writes
        // dropped. Old Windows kernels read 0x2a/0x2c for the bus ratio.
        0x2a..=0x2c => f(Some(0), true),
        // THERM_DIODE_OFFSET.
        0x3f => f(Some(0), false),
        // BIOS_UPDT_TRIG: a microcode update request is dropped (SDM Vol. 3A §10.11.6: the
        // write triggers the load; no guest may load microcode into the host). Not readable.
        0x79 => f(None, true),
        // FSB_FREQ: 4 (HAXM's "166 MHz" encoding); TEMP_TARGET (HAXM's 0xee).
        0xcd => f(Some(4), false),
        0xee => f(Some(0x8679_1b00), false),
        // BBL_CR_CTL3: L2 present and enabled (HAXM's constant; Windows reads it for the
        // L2 cache description).
        0x11e => f(Some(0xbe70_2111), false),
        // MCG_CTL: HAXM reads 3; MCG_CAP (soft) says no MCG_CTL_P, so guests do not write it.
        0x17b => f(Some(3), false),
        // MSR_TEMPERATURE_TARGET (Linux `msr-index.h`, coretemp/intel_tcc): TjMax in bits
        // 23:16. HAXM named this constant at 0xee; the same value is answered here so a guest
        // that reads the modern index sees what HAXM's guests saw at the old one.
        0x1a2 => f(Some(0x8679_1b00), false),
        // MC0_CTL2..MC8_CTL2 (CMCI thresholds) and 0x300-0x3ff (the performance-monitoring
        // block: BPU counters, fixed counters, PERF_CAPABILITIES 0x345, PERF_GLOBAL_*, PEBS):
        // read 0, writes dropped. PDCM is hidden in CPUID, but old Linux kernels read
        // PERF_CAPABILITIES without checking it (HAXM's comment).
        0x280..=0x288 | 0x300..=0x3ff => f(Some(0), true),
        _ => None,
    }
}
