//! Event injection: the queue of HAX_VCPU_IOCTL_INTERRUPT vectors, interrupt windows,
//! exception injection and IDT-vectoring re-injection (SDM Vol. 3C §27.6, §28.2.4).

use super::*;

impl HaxVcpu {
    /// `HAX_VCPU_IOCTL_INTERRUPT`: queues `vector & 0xff`; duplicates are ignored.
    pub fn interrupt(&mut self, vector: u32) {
        let v = (vector & 0xff) as usize;
        self.vectors[v / 64] |= 1 << (v % 64);
    }

    pub(in crate::vcpu::haxm) fn highest_vector(&self) -> Option<u8> {
        (0..4)
            .rev()
            .find(|&w| self.vectors[w] != 0)
            .map(|w| (w * 64 + 63 - self.vectors[w].leading_zeros() as usize) as u8)
    }

    // A few instructions, called on every RUN: inline, not a call of its own.
    #[inline]
    pub(in crate::vcpu::haxm) fn vectors_pending(&self) -> bool {
        self.vectors.iter().any(|&w| w != 0)
    }

    /// Injection before an entry (§4 "Interrupt delivery"): the highest queued vector as an
    /// external interrupt when RFLAGS.IF=1, no STI/MOV-SS blocking and no event already being
    /// injected (a re-injection from IDT-vectoring information has priority); interrupt-window
    /// exiting while vectors remain or user space asked. Returns whether an event is injected.
    pub(in crate::vcpu::haxm) fn prepare_entry<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<bool, HaxError> {
        let want_window_user = self.wants_interrupt_window();
        // While a debugger steps with TF, queued interrupts wait: their frames would carry
        // the debugger's TF into the guest's stack (`debug.rs`).
        // Only "none, one, more" matters below: counted saturating at 2, without a population
        // count (not an instruction on this target's baseline: ~20 instructions per word).
        // Nothing queued (most entries) is one OR of the four words, not the per-word count
        // (~25 emulated instructions per entry).
        let v = &self.vectors;
        let queued: u32 = if v[0] | v[1] | v[2] | v[3] == 0 || self.tf_stepping() {
            0
        } else {
            self.vectors
                .iter()
                .map(|&w| u32::from(w != 0) + u32::from(w & w.wrapping_sub(1) != 0))
                .sum::<u32>()
                .min(2)
        };
        // Only looked for when something is queued (most entries: nothing).
        let highest = if queued > 0 {
            self.highest_vector()
        } else {
            None
        };
        let preemption = self.entry_preemption_ticks();
        let window_on = self.window_on;
        let apic_window = self.apic_wants_window();
        let (injected, took, window) =
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(bool, bool, bool), VmFail> {
                    if let Some(t) = preemption {
                        vmcs.set_vmx_preemption_timer_value(t);
                    }
                    let mut took = false;
                    let entry = vmcs.vm_entry_interruption_information()?;
                    let mut injected = entry & VALID != 0;
                    if !injected
                        && queued > 0
                        && vmcs.guest_rflags()? & RFLAGS_IF != 0
                        && interrupt_shadow(vmcs)? == 0
                    {
                        if let Some(v) = highest {
                            vmcs.set_vm_entry_interruption_information(VALID | u32::from(v));
                            injected = true;
                            took = true;
                        }
                    }
                    let remaining = if took { queued > 1 } else { queued > 0 };
                    let want = remaining || want_window_user || apic_window;
                    if want != window_on {
                        let proc = vmcs.primary_processor_based_vm_execution_controls()?;
                        let bit = PrimaryProcControls::INTERRUPT_WINDOW_EXITING.bits();
                        vmcs.set_primary_processor_based_vm_execution_controls(if want {
                            proc | bit
                        } else {
                            proc & !bit
                        });
                    }
                    Ok((injected, took, want))
                })??;
        if took {
            if let Some(v) = highest {
                let v = usize::from(v);
                self.vectors[v / 64] &= !(1 << (v % 64));
            }
        }
        self.window_on = window;
        Ok(injected)
    }

    /// After every exit: an event whose delivery the exit interrupted is re-injected (SDM
    /// §28.2.4 IDT-vectoring information, §27.6 event injection), with its error code and, for
    /// software interrupts and exceptions, the instruction length; NMI blocking is restored when
    /// an exit reports "NMI unblocking due to IRET" outside event delivery (SDM §28.2.3).
    pub(in crate::vcpu::haxm) fn after_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        exit: &VmExit,
        injected: bool,
    ) -> Result<(), HaxError> {
        let may = injected
            || matches!(
                exit,
                VmExit::ExceptionOrNmi { .. }
                    | VmExit::ExternalInterrupt
                    | VmExit::TripleFault
                    | VmExit::EptViolation { .. }
                    | VmExit::EptMisconfig { .. }
                    | VmExit::NmiWindow
                    | VmExit::Other { .. }
            );
        if !may {
            return Ok(());
        }
        let exit = *exit;
        self.core
            .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                let info = vmcs.idt_vectoring_information()?;
                if info & VALID != 0 {
                    let kind = (info >> 8) & 7;
                    // Bit 12 is undefined in IDT-vectoring information and reserved on entry.
                    vmcs.set_vm_entry_interruption_information(info & !(1 << 12) & 0x8000_0fff);
                    if info & (1 << 11) != 0 {
                        let code = vmcs.idt_vectoring_error_code()?;
                        vmcs.set_vm_entry_exception_error_code(code);
                    }
                    if (4..=6).contains(&kind) {
                        let len = vmcs.vm_exit_instruction_length()?;
                        vmcs.set_vm_entry_instruction_length(len);
                    }
                    return Ok(());
                }
                let unblock = match exit {
                    VmExit::EptViolation { qualification, .. } => qualification
                        .contains(crate::vmcs::exit::EptViolationQualification::NMI_UNBLOCKING),
                    VmExit::ExceptionOrNmi { interruption, .. } => {
                        interruption.nmi_unblocking && interruption.vector != 8
                    }
                    _ => false,
                };
                if unblock {
                    let s = vmcs.guest_interruptibility_state()?;
                    vmcs.set_guest_interruptibility_state(s | (1 << 3));
                }
                Ok(())
            })??;
        Ok(())
    }

    pub(in crate::vcpu::haxm) fn inject_exception<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        vector: u8,
        code: Option<u32>,
    ) -> Result<(), HaxError> {
        self.core
            .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                let mut info = VALID | (3 << 8) | u32::from(vector);
                // Real mode pushes no error code: with unrestricted guest and CR0.PE = 0, VM
                // entry requires "deliver error code" to be 0 (SDM Vol. 3C §27.2.1.3).
                let protected = vmcs.guest_cr0()? & 1 != 0;
                if let (Some(c), true) = (code, protected) {
                    info |= 1 << 11;
                    vmcs.set_vm_entry_exception_error_code(c);
                }
                vmcs.set_vm_entry_interruption_information(info);
                Ok(())
            })??;
        Ok(())
    }

    pub(in crate::vcpu::haxm) fn inject_gp<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        self.inject_exception(root, 13, Some(0))
    }
}

/// Blocking by STI / by MOV SS (interruptibility bits 1:0) as it applies to the next entry.
/// The bits saved at an exit describe the instruction after the exiting one; once software
/// moved RIP past that instruction (HLT skipped inside `sti; hlt`, an emulated OUT, SET_REGS),
/// the shadow is over (SDM Vol. 3C §27.3.1.5; `clear_stale_interrupt_shadow` clears it in the
/// VMCS at entry when an event is injected). Without this, `sti; hlt` followed by INTERRUPT
/// never injects: the stale STI blocking enables a window that the guest's next `cli` closes.
pub(in crate::vcpu::haxm) fn interrupt_shadow<V: Vmx>(
    vmcs: &mut Vmcs<'_, V>,
) -> Result<u32, VmFail> {
    if vmcs.cache().is_dirty(VmcsField::GuestRip) {
        return Ok(0);
    }
    Ok(vmcs.guest_interruptibility_state()? & 3)
}
