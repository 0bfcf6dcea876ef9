//! The in-kernel APIC's exits (see `apic.rs` for the unit and the entry side): HLT halting
//! in the kernel, the VMX-preemption timer as the APIC timer, the MSRs the APIC owns (x2APIC
//! registers, IA32_APIC_BASE, IA32_TSC_DEADLINE) with the fast paths right after the exit,
//! MOV CR8 without the TPR shadow, and xAPIC MMIO at the APIC base (the MOV forms decoded by
//! `emulate::decode`).

use rhax_api::ext::ApicFlags;

use super::apic::IA32_TSC_DEADLINE;
use super::apic_virt::{X2APIC_EOI, X2APIC_SELF_IPI};
use super::*;
use crate::apic::{ApicMode, Effect};

/// The x2APIC MSR range (SDM Vol. 3A §11.12.1.2).
const X2APIC_MSRS: core::ops::RangeInclusive<u32> = 0x800..=0x8ff;
/// x2APIC ICR (SDM Vol. 3A Table 11-6).
const X2APIC_ICR: u32 = 0x830;

/// What [`HaxVcpu::apic_fast_exit`] did with an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) enum FastExit {
    /// Not a fast path's: the general handling takes it.
    No,
    /// Carried out; the next entry does the APIC's usual work first.
    Handled,
    /// Carried out, and this vCPU's APIC is as the last entry's work left it (an IPI to other
    /// vCPUs): the next entry may skip that work ([`HaxVcpu::apic_reenter_direct`]). `now`:
    /// the guest TSC the fast path read.
    Unchanged {
        /// Guest TSC at the fast path.
        now: u64,
    },
}

impl HaxVcpu {
    /// HLT with an in-kernel APIC: the vCPU halts in the kernel (the next entry polls).
    pub(in crate::vcpu::haxm) fn apic_halt<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Next, HaxError> {
        self.skip(root)?;
        if let Some(u) = self.apic.as_deref_mut() {
            u.halted = true;
        }
        Ok(Next::Resume)
    }

    /// A VMX-preemption-timer exit: the APIC timer's expiry (resume: the next entry fires
    /// it) or the end of the slice.
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_timer_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Option<Next>, HaxError> {
        let deadline = match self.apic.as_deref() {
            Some(u) if u.timer_on_preemption => u.local.timer_deadline(),
            _ => return Ok(None),
        };
        let Some(d) = deadline else {
            return Ok(None);
        };
        let now = self.guest_tsc(root)?;
        Ok((now >= d).then_some(Next::Resume))
    }

    /// RDMSR/WRMSR of an MSR the APIC owns (x2APIC registers, IA32_APIC_BASE,
    /// IA32_TSC_DEADLINE). `None`: not the APIC's (the HAXM path handles it).
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_msr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        msr: u32,
        write: Option<u64>,
    ) -> Result<Option<Next>, HaxError> {
        if self.apic.is_none()
            || !(msr == IA32_APIC_BASE || msr == IA32_TSC_DEADLINE || X2APIC_MSRS.contains(&msr))
        {
            return Ok(None);
        }
        let now = self.guest_tsc(root)?;
        let features = cpuid.features();
        let x2apic = features.leaf1_ecx & (1 << 21) != 0;
        let deadline_ok = features.leaf1_ecx & (1 << 24) != 0;
        let maxphyaddr = features.maxphyaddr;
        let Some(u) = self.apic.as_deref_mut() else {
            return Ok(None);
        };
        let result: Result<(Option<u64>, Effect), ()> = match (msr, write) {
            (IA32_APIC_BASE, None) => Ok((Some(u.local.base_msr()), Effect::None)),
            (IA32_APIC_BASE, Some(v)) => u
                .local
                .write_base_msr(v, x2apic, maxphyaddr)
                .map(|()| (None, Effect::None))
                .map_err(|_| ()),
            // SDM Vol. 3A §11.5.4.1: the MSR exists only where CPUID.1:ECX[24] says so.
            (IA32_TSC_DEADLINE, _) if !deadline_ok => Err(()),
            (IA32_TSC_DEADLINE, None) => Ok((Some(u.local.read_tsc_deadline()), Effect::None)),
            (IA32_TSC_DEADLINE, Some(v)) => Ok((None, u.local.write_tsc_deadline(v, now))),
            (m, None) => u
                .local
                .read_msr(m, now)
                .map(|v| (Some(v), Effect::None))
                .map_err(|_| ()),
            (m, Some(v)) => u
                .local
                .write_msr(m, v, now)
                .map(|e| (None, e))
                .map_err(|_| ()),
        };
        let base = u.local.base_msr();
        // A base write that took the APIC away from the default xAPIC base (or brought the
        // last one back): RUN ends (as for a kick) so the dispatcher changes the APIC-access
        // mapping before the guest goes on.
        let leave = msr == IA32_APIC_BASE && write.is_some() && result.is_ok() && u.note_base();
        match result {
            Err(()) => self.inject_gp(root)?,
            Ok((read, effect)) => {
                if let Some(v) = read {
                    self.core.regs.gpr[reg::RAX] = v & 0xffff_ffff;
                    self.core.regs.gpr[reg::RDX] = v >> 32;
                }
                self.apic_base = base;
                if write.is_some() {
                    self.apic_image_dirty();
                }
                self.apic_effect(effect);
                self.skip(root)?;
            }
        }
        if leave {
            return Ok(Some(Next::User(ExitStatus::Interrupt)));
        }
        Ok(Some(Next::Resume))
    }

    /// The fast paths, right after the exit and before the general handling (issue 12 item
    /// 3; KVM's `handle_fastpath_set_msr_irqoff`): a WRMSR of the x2APIC ICR, EOI or SELF IPI
    /// or of IA32_TSC_DEADLINE in TSC-deadline mode is carried out here and the guest re-entered
    /// without the exit dispatch, the CPUID-table lookups of the general MSR path or the
    /// IDT-vectoring check (an instruction exit never interrupts event delivery, SDM Vol. 3C
    /// §28.2.4).
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_fast_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        exit: &VmExit,
    ) -> Result<FastExit, HaxError> {
        // Every exit: the model takes what the CPU did without exits (the virtual TPR; with
        // virtual-interrupt delivery VIRR/VISR) before anything reads or changes it.
        if let Some(u) = self.apic.as_deref_mut() {
            u.sync_from_vtpr();
        }
        self.apic_vid_pull();
        if !matches!(exit, VmExit::Wrmsr) {
            return Ok(FastExit::No);
        }
        let Some(u) = self.apic.as_deref() else {
            return Ok(FastExit::No);
        };
        if u.flags.contains(ApicFlags::NO_FAST_PATHS) {
            return Ok(FastExit::No);
        }
        let msr = self.core.regs.gpr[reg::RCX] as u32;
        let x2 = u.local.mode() == ApicMode::X2Apic;
        // EOI and SELF IPI exit only without virtual-interrupt delivery (with it the CPU
        // virtualizes them, SDM Vol. 3C §30.5): the interrupt handler's hot pair there.
        let x2_fast = matches!(msr, X2APIC_ICR | X2APIC_EOI | X2APIC_SELF_IPI);
        let fast = (x2_fast && x2) || (msr == IA32_TSC_DEADLINE && u.local.tsc_deadline_mode());
        if !fast {
            return Ok(FastExit::No);
        }
        let value =
            (self.core.regs.gpr[reg::RDX] << 32) | (self.core.regs.gpr[reg::RAX] & 0xffff_ffff);
        let now = self.guest_tsc(root)?;
        let Some(u) = self.apic.as_deref_mut() else {
            return Ok(FastExit::No);
        };
        let effect = if msr != IA32_TSC_DEADLINE {
            let e = match u.local.write_msr(msr, value, now) {
                Ok(e) => e,
                // A reserved bit: the general path injects the #GP.
                Err(_) => return Ok(FastExit::No),
            };
            // EOI and SELF IPI change no register the page mirrors (the ISR and IRR are
            // VISR/VIRR's business, and without virtual-interrupt delivery not in the page).
            if u.arv && msr == X2APIC_ICR {
                // Only the ICR changed among the page's registers: its words alone, not
                // the whole image (this path is the IPI's hot path).
                for (offset, word) in u.local.icr_image() {
                    u.set_page_word(offset, word);
                }
            }
            e
        } else {
            // IA32_TSC_DEADLINE is not in the page.
            u.local.write_tsc_deadline(value, now)
        };
        u.fast_exits += 1;
        // An ICR write that sends an IPI changes nothing of this APIC but the ICR (already in
        // the page) unless the IPI is for this vCPU too: fixed to self goes straight into the
        // model below, and any other delivery to this vCPU arrives through its port, which
        // `apic_reenter_direct` looks at. SELF IPI, EOI and the deadline change the IRR, the
        // ISR or the timer: the entry's APIC work must see them.
        let unchanged =
            msr == X2APIC_ICR && matches!(effect, Effect::Ipi(ipi) if !ipi.is_fixed_self());
        self.apic_effect(effect);
        self.skip(root)?;
        Ok(if unchanged {
            FastExit::Unchanged { now }
        } else {
            FastExit::Handled
        })
    }

    /// MOV to/from CR8 without the TPR shadow: CR8 is TPR[7:4] (SDM Vol. 3A §11.8.6.1); a
    /// write with bits 63:4 set is #GP(0) (SDM Vol. 2B MOV CR).
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_cr8<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        access: CrAccessType,
        value: Option<u64>,
    ) -> Result<(), HaxError> {
        let Some(u) = self.apic.as_deref_mut() else {
            return Ok(());
        };
        match (access, value) {
            (CrAccessType::MovTo { .. }, Some(v)) if v > 0xf => return self.inject_gp(root),
            (CrAccessType::MovTo { .. }, Some(v)) => {
                u.local.set_tpr((v as u8) << 4);
                u.set_vtpr((v as u8) << 4);
                if let Some(port) = u.bus.port(u.index) {
                    port.publish(&u.local);
                }
            }
            (CrAccessType::MovFrom { gpr }, _) => {
                let v = u64::from(u.local.tpr() >> 4);
                self.set_gpr(root, gpr, v)?;
            }
            _ => {}
        }
        self.skip(root)
    }

    /// An MMIO access to this vCPU's xAPIC page (xAPIC mode only: in x2APIC mode or with the
    /// APIC disabled the page is ordinary MMIO, SDM Vol. 3A §11.12.1). The plain MOV forms
    /// are decoded by `emulate::decode` and served here; registers are 32 bits wide at
    /// 16-byte strides and accessed as aligned dwords (SDM Vol. 3A §11.4.1): a narrower read
    /// sees its bytes of the dword, other writes are ignored as KVM does. `None`: not the
    /// APIC's.
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_mmio<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        gpa: u64,
        bytes: &[u8],
        cpu_mode: CpuMode,
    ) -> Result<Option<Next>, HaxError> {
        let offset = match self.apic.as_deref() {
            Some(u) if u.local.mode() == ApicMode::XApic => {
                match gpa.checked_sub(u.local.base_address()) {
                    Some(o) if o < 0x1000 => o as u32,
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        let Ok(insn) = emulate::decode(bytes, cpu_mode) else {
            // Not a plain MOV: the vCPU stops with the instruction reported (STATECHANGE and
            // the RhaxUnemulated record), rather than the access leaving for user space,
            // which has no APIC.
            return Ok(Some(
                self.panic(PanicReason::Unemulated(exits::unemulated(gpa, bytes))),
            ));
        };
        let now = self.guest_tsc(root)?;
        match insn.operation {
            Operation::Load {
                dest,
                dest_size,
                extend,
            } => {
                let value = match self.apic.as_deref_mut() {
                    Some(u) if offset & 0xc == 0 => {
                        u64::from(u.local.read_mmio(offset & 0xff0, now) >> ((offset & 3) * 8))
                    }
                    _ => 0,
                };
                let old = self.gpr(root, dest.number)?;
                let new = emulate::merge_load(old, dest, dest_size, insn.size, extend, value);
                self.set_gpr(root, dest.number, new)?;
            }
            Operation::StoreRegister { .. } | Operation::StoreImmediate { .. } => {
                let value = match insn.operation {
                    Operation::StoreRegister { src } => {
                        let r = self.gpr(root, src.number)?;
                        emulate::store_value(r, src, insn.size)
                    }
                    Operation::StoreImmediate { value } => value,
                    Operation::Load { .. } => 0,
                };
                if offset & 0xf == 0 && insn.size >= 4 {
                    let effect = match self.apic.as_deref_mut() {
                        Some(u) => u.local.write_mmio(offset, value as u32, now),
                        None => Effect::None,
                    };
                    self.apic_image_dirty();
                    self.apic_effect(effect);
                }
            }
        }
        let length = u64::from(insn.length);
        self.core
            .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                let rip = vmcs.guest_rip()?;
                vmcs.set_guest_rip(rip.wrapping_add(length));
                Ok(())
            })??;
        Ok(Some(Next::Resume))
    }
}
