//! `HAX_IOCTL_VCPU_DEBUG` and the `HAX_EXIT_DEBUG` exit: hardware breakpoints, single step and
//! software breakpoints for a debugger in user space (haxm-abi.md §2 "VCPU_DEBUG", §4 exit 11).
//!
//! - **Hardware breakpoints** (`USE_HW_BP`): the debugger's DR7 goes into the VMCS (loaded at
//!   entry by "load debug controls", SDM Vol. 3C §27.3.2.1) and its DR0-3 into the CPU around
//!   the guest (VMX switches only DR7, §28.5.1); the host's DR0-3 are back before the step
//!   leaves the non-preemptible region. The guest's own DR0-3/DR6 live in software as always
//!   (MOV-DR exiting is always on), and its own DR7 is kept aside while the debugger's is
//!   loaded: the guest reads and writes its own values and gets them back when debugging stops.
//! - **The guest's own breakpoints**: without a debugger's, the guest's DR7 is in the VMCS, so
//!   the CPU compares against whatever DR0-3 hold while it runs. When the guest's DR7 enables
//!   a breakpoint, its own DR0-3 are loaded the same way (before this, the host's addresses
//!   were armed by the guest's enables).
//! - **Single step** (`STEP`): the monitor trap flag where the CPU has it (a VM exit after each
//!   instruction or event delivery, SDM Vol. 3C §26.5.2), else RFLAGS.TF set for each entry and
//!   taken off again at the exit, with #DB intercepted. An instruction the host completes for
//!   the guest (CPUID, port IO, MMIO, HLT...) is a step too: the DEBUG exit follows it at once,
//!   or at the start of the next RUN when the instruction needed user space.
//! - **Software breakpoints** (`USE_SW_BP`): #BP in the exception bitmap; the exit reports the
//!   address of the INT3 (a software exception's VM exit saves the RIP of the instruction,
//!   §28.2.5 / §27.6.1.3).
//! - A #DB that is not the debugger's (the guest's own TF, ICEBP) is delivered to the guest
//!   with its DR6 updated, as the CPU would have done without the intercept (SDM Vol. 3B §18.2.3).
//!   When the guest's own TF traps an instruction the debugger steps, both get the trap.
//!
//! Known limits of the trap-flag route (the monitor-trap route has none of them): queued
//! interrupts wait while it steps (their frames would carry TF); an entry that injects an event
//! runs without TF, so a step that delivers an exception runs on to the next exit; a PUSHF or an
//! exception the stepped instruction raises inside the guest still sees TF (the stack is not
//! rewritten). KVM's TF stepping has the same ones.

use super::*;
use crate::vcpu::checked::{DebugRequest, HostBreakpoints, DR7_FIXED1};
use crate::vmx::negotiate::OptionalFeatures;
use rhax_api::tunnel::TunnelDebug;

/// #DB, #BP in the exception bitmap (SDM Vol. 3C §25.6.3).
const DB_VECTOR: u8 = 1;
const BP_VECTOR: u8 = 3;
/// RFLAGS.TF and RFLAGS.RF.
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_RF: u64 = 1 << 16;
/// DR6 / exit qualification / pending debug exceptions: B0-B3, BD, BS (SDM Vol. 3C Table 28-1).
const DR6_B0_3: u64 = 0xf;
const DR6_BD: u64 = 1 << 13;
const DR6_BS: u64 = 1 << 14;
/// DR6 bits that read as 1 (SDM Vol. 3B §18.2.3).
const DR6_FIXED1: u64 = 0xffff_0ff0;
/// IA32_DEBUGCTL.BTF: TF traps on branches only (SDM Vol. 3B §18.4.3).
const DEBUGCTL_BTF: u64 = 1 << 1;
/// Activity state HLT (SDM Vol. 3C §25.4.2).
const ACTIVITY_HLT: u32 = 1;

/// How single steps are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepRoute {
    /// The monitor trap flag (a VM-execution control).
    MonitorTrap,
    /// RFLAGS.TF, hidden from the guest.
    TrapFlag,
}

/// The debugger's session on this vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) struct Debugger {
    control: DebugControl,
    breakpoints: Option<HostBreakpoints>,
    /// The guest's own DR7 while the debugger's is in the VMCS.
    guest_dr7: u64,
    route: StepRoute,
    /// TF (and a cleared BTF) added for the entry in progress (trap-flag route).
    tf_added: bool,
    btf_cleared: bool,
    /// The exit that just happened followed an entry with TF added by rhax.
    tf_was_added: bool,
    /// A step ended in user space (IO, MMIO, HLT): the DEBUG exit is due at the next RUN.
    step_owed: bool,
}

/// The debug state of one vCPU (boxed in [`HaxVcpu`]).
#[derive(Debug, Default)]
pub(in crate::vcpu::haxm) struct DebugRegs {
    /// The VCPU_DEBUG session, if any.
    debugger: Option<Debugger>,
    /// The host's DR0-3 while the debugger's or the guest's are loaded in the CPU (within one
    /// RUN step), and what is loaded.
    host_breakpoints: Option<[u64; 4]>,
    loaded_breakpoints: Option<[u64; 4]>,
    /// The guest's own DR7 enables one of its breakpoints (L0-3/G0-3): its DR0-3 must be in
    /// the CPU while it runs.
    guest_breakpoints_on: bool,
}

impl Debugger {
    fn stepping(&self) -> bool {
        self.control.contains(DebugControl::STEP)
    }
}

impl HaxVcpu {
    /// `HAX_IOCTL_VCPU_DEBUG`. Without ENABLE debugging stops: the guest's own DR7 goes back
    /// into the VMCS and nothing of the debugger's stays (HAXM zeroes DR0-3 and DR7 instead,
    /// because it has only one set; rhax keeps the guest's apart). Refused with nothing
    /// changed: unknown control bits, a non-canonical DR0-3 or an unusable DR7 with
    /// `USE_HW_BP` ([`DebugRequest::check`]), hardware breakpoints on a CPU without the "load
    /// debug controls" entry control.
    pub fn debug<V: Vmx>(&mut self, root: &mut VmxRoot<V>, d: &VcpuDebug) -> Result<(), HaxError> {
        let request = DebugRequest::check(d).map_err(HaxError::InvalidValue)?;
        let control = request.control();
        if request.breakpoints().is_some()
            && !self
                .controls()
                .entry
                .contains(EntryControls::LOAD_DEBUG_CONTROLS)
        {
            return Err(HaxError::Unsupported(
                "VCPU_DEBUG: hardware breakpoints need the load-debug-controls entry control",
            ));
        }
        let route = self.step_route();
        let old = self.dbg.debugger;
        let new = control.contains(DebugControl::ENABLE).then_some(Debugger {
            control,
            breakpoints: request.breakpoints(),
            guest_dr7: 0,
            route,
            tf_added: false,
            btf_cleared: false,
            tf_was_added: false,
            step_owed: false,
        });
        let old_dr7 = old.and_then(|o| o.breakpoints.map(|_| o.guest_dr7));
        let guest_dr7 = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<u64, VmFail> {
                let guest_dr7 = match old_dr7 {
                    Some(v) => v,
                    None => vmcs.guest_dr7()?,
                };
                match new.and_then(|n| n.breakpoints) {
                    Some(b) => vmcs.set_guest_dr7(b.dr7()),
                    None => vmcs.set_guest_dr7(guest_dr7),
                }
                let mut bitmap = vmcs.exception_bitmap()? & !((1 << DB_VECTOR) | (1 << BP_VECTOR));
                if let Some(n) = new {
                    if n.breakpoints.is_some() || n.stepping() {
                        bitmap |= 1 << DB_VECTOR;
                    }
                    if n.control.contains(DebugControl::USE_SW_BP) {
                        bitmap |= 1 << BP_VECTOR;
                    }
                }
                vmcs.set_exception_bitmap(bitmap);
                let mtf = PrimaryProcControls::MONITOR_TRAP_FLAG.bits();
                let proc = vmcs.primary_processor_based_vm_execution_controls()?;
                let on = new.is_some_and(|n| n.stepping() && n.route == StepRoute::MonitorTrap);
                vmcs.set_primary_processor_based_vm_execution_controls(if on {
                    proc | mtf
                } else {
                    proc & !mtf
                });
                Ok(guest_dr7)
            })??;
        self.dbg.debugger = new.map(|n| Debugger { guest_dr7, ..n });
        self.dbg.guest_breakpoints_on = guest_dr7 & 0xff != 0;
        Ok(())
    }

    /// How single steps are taken on this vCPU's CPU.
    pub fn step_route(&self) -> StepRoute {
        if self
            .controls()
            .available
            .contains(OptionalFeatures::MONITOR_TRAP_FLAG)
        {
            StepRoute::MonitorTrap
        } else {
            StepRoute::TrapFlag
        }
    }

    /// True while the trap-flag route steps: queued interrupts are held back then (their
    /// frames would carry the debugger's TF into the guest's stack).
    pub(in crate::vcpu::haxm) fn tf_stepping(&self) -> bool {
        self.dbg
            .debugger
            .is_some_and(|d| d.stepping() && d.route == StepRoute::TrapFlag)
    }

    /// The guest's DR7 as the guest sees it (its own while the debugger's is loaded).
    pub(in crate::vcpu::haxm) fn guest_dr7<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<u64, HaxError> {
        match self.dbg.debugger {
            Some(d) if d.breakpoints.is_some() => Ok(d.guest_dr7),
            _ => Ok(self.core.with_vmcs(root, |vmcs, _| vmcs.guest_dr7())??),
        }
    }

    /// Sets the guest's own DR7 (bits 63:32 dropped, bit 10 set: MOV to DR7 of bits 63:32
    /// is #GP and the caller checked it; VM entry requires them clear, SDM §27.3.1.1).
    pub(in crate::vcpu::haxm) fn set_guest_dr7<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        v: u64,
    ) -> Result<(), HaxError> {
        let v = (v & 0xffff_ffff) | DR7_FIXED1;
        self.dbg.guest_breakpoints_on = v & 0xff != 0;
        match self.dbg.debugger.as_mut() {
            Some(d) if d.breakpoints.is_some() => d.guest_dr7 = v,
            _ => self.core.with_vmcs(root, |vmcs, _| vmcs.set_guest_dr7(v))?,
        }
        Ok(())
    }

    /// Before an entry: the debugger's DR0-3, or the guest's own when its DR7 enables one,
    /// into the CPU ([`HaxVcpu::leave`] puts the host's back) and, on the trap-flag route, TF
    /// for one instruction.
    pub(in crate::vcpu::haxm) fn arm_debugger<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        let want = match self.dbg.debugger.and_then(|d| d.breakpoints) {
            Some(b) => Some(*b.addresses()),
            // A non-canonical value (only SET_REGS can store one) would fault MOV to DR in the
            // host (SDM Vol. 2B MOV DR); it is not loaded, as if that breakpoint never matched.
            None if self.dbg.guest_breakpoints_on => Some(self.drs_0_3().map(|a| {
                if crate::vcpu::checked::is_canonical(a) {
                    a
                } else {
                    0
                }
            })),
            None => None,
        };
        if let Some(addresses) = want {
            if self.dbg.host_breakpoints.is_none() {
                // SAFETY: CPL0 in the non-preemptible region (interrupts off), where RUN
                // steps run.
                self.dbg.host_breakpoints = Some(unsafe { root.vmx().read_breakpoint_addresses() });
            }
            if self.dbg.loaded_breakpoints != Some(addresses) {
                // SAFETY: as above; every address is canonical (`HostBreakpoints`, or checked
                // just above), and the host's are restored by `leave` before the region ends.
                unsafe { root.vmx().write_breakpoint_addresses(&addresses) };
                self.dbg.loaded_breakpoints = Some(addresses);
            }
        }
        let Some(mut d) = self.dbg.debugger else {
            return Ok(());
        };
        if d.stepping() && d.route == StepRoute::TrapFlag {
            let (tf, btf) =
                self.core
                    .with_vmcs(root, |vmcs, _| -> Result<(bool, bool), VmFail> {
                        // An event injected at this entry would push the debugger's TF in its
                        // frame: that entry runs without it (see the module documentation).
                        if vmcs.vm_entry_interruption_information()? & VALID != 0 {
                            return Ok((false, false));
                        }
                        let rflags = vmcs.guest_rflags()?;
                        let mut tf = false;
                        if rflags & RFLAGS_TF == 0 {
                            vmcs.set_guest_rflags(rflags | RFLAGS_TF);
                            tf = true;
                            // With STI/MOV-SS blocking or in HLT, the trap TF asks for must be
                            // recorded as a pending BS, or VM entry fails (SDM §27.3.1.5).
                            let blocking = vmcs.guest_interruptibility_state()? & 3 != 0
                                || vmcs.guest_activity_state()? == ACTIVITY_HLT;
                            if blocking {
                                let p = vmcs.guest_pending_debug_exceptions()?;
                                vmcs.set_guest_pending_debug_exceptions(p | DR6_BS);
                            }
                        }
                        let mut btf = false;
                        let ctl = vmcs.guest_ia32_debugctl()?;
                        if ctl & DEBUGCTL_BTF != 0 {
                            vmcs.set_guest_ia32_debugctl(ctl & !DEBUGCTL_BTF);
                            btf = true;
                        }
                        Ok((tf, btf))
                    })??;
            d.tf_added = tf;
            d.btf_cleared = btf;
        }
        self.dbg.debugger = Some(d);
        Ok(())
    }

    /// After an exit: TF and BTF as the guest had them (the guest never sees the debugger's).
    pub(in crate::vcpu::haxm) fn disarm_step<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        let Some(mut d) = self.dbg.debugger else {
            return Ok(());
        };
        d.tf_was_added = d.tf_added;
        if d.tf_added || d.btf_cleared {
            let (tf, btf) = (d.tf_added, d.btf_cleared);
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                    if tf {
                        let rflags = vmcs.guest_rflags()?;
                        vmcs.set_guest_rflags(rflags & !RFLAGS_TF);
                        // A trap held back by blocking stays pending in BS; without TF it
                        // must go (SDM §27.3.1.5), and it was the debugger's anyway.
                        let p = vmcs.guest_pending_debug_exceptions()?;
                        if p & DR6_BS != 0 {
                            vmcs.set_guest_pending_debug_exceptions(p & !DR6_BS);
                        }
                    }
                    if btf {
                        let ctl = vmcs.guest_ia32_debugctl()?;
                        vmcs.set_guest_ia32_debugctl(ctl | DEBUGCTL_BTF);
                    }
                    Ok(())
                })??;
        }
        d.tf_added = false;
        d.btf_cleared = false;
        self.dbg.debugger = Some(d);
        Ok(())
    }

    /// The host's DR0-3 back in the CPU (end of every RUN step).
    pub(in crate::vcpu::haxm) fn restore_host_breakpoints<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) {
        if let Some(host) = self.dbg.host_breakpoints.take() {
            // SAFETY: CPL0 inside the region; the values were read from this CPU's DR0-3 by
            // `arm_debugger` in the same step.
            unsafe { root.vmx().write_breakpoint_addresses(&host) };
        }
        self.dbg.loaded_breakpoints = None;
    }

    /// #DB or #BP intercepted (exit reason 0): the debugger's event ends RUN with
    /// HAX_EXIT_DEBUG; another is delivered to the guest.
    pub(in crate::vcpu::haxm) fn debug_exception<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        interruption: crate::vmcs::exit::Interruption,
        qualification: u64,
    ) -> Result<Next, HaxError> {
        let d = self.dbg.debugger;
        let kind = interruption.kind;
        let software = matches!(
            kind,
            InterruptionType::SoftwareException | InterruptionType::PrivilegedSoftwareException
        );
        if interruption.vector == BP_VECTOR {
            if d.is_some_and(|d| d.control.contains(DebugControl::USE_SW_BP)) {
                let rip = self.core.with_vmcs(root, |vmcs, _| vmcs.guest_rip())??;
                self.fill_debug(rip, 0, 0);
                return Ok(Next::User(ExitStatus::Debug));
            }
            self.reflect(root, interruption, software)?;
            return Ok(Next::Resume);
        }
        // #DB: the exit qualification holds what DR6 would have got (SDM Vol. 3C Table 28-1).
        let hits = qualification & DR6_B0_3;
        let step = qualification & DR6_BS != 0;
        let ours = match d {
            Some(d) if kind == InterruptionType::HardwareException => {
                (d.breakpoints.is_some() && hits != 0) || (step && d.tf_was_added)
            }
            _ => false,
        };
        if !ours {
            if kind == InterruptionType::HardwareException {
                // What the CPU writes into DR6 on delivery (SDM Vol. 3B §18.2.3): B0-B3 of
                // this exception replace the old ones, BD and BS are set when they occur.
                let dr6 = self.drs[4];
                self.drs[4] =
                    (dr6 & !DR6_B0_3) | (qualification & (DR6_B0_3 | DR6_BD | DR6_BS)) | DR6_FIXED1;
            }
            self.reflect(root, interruption, software)?;
            // The guest's own TF trapped the instruction the debugger steps on the TF route
            // (TF was the guest's, so none was added): the instruction is the debugger's step
            // too. Both get it: the guest's #DB waits in the VM-entry injection for the next
            // RUN, the debugger gets its DEBUG exit now.
            let debugger_step = d.is_some_and(|d| d.stepping() && d.route == StepRoute::TrapFlag);
            if step && debugger_step && kind == InterruptionType::HardwareException {
                self.report_step(root)?;
                return Ok(Next::User(ExitStatus::Debug));
            }
            return Ok(Next::Resume);
        }
        let (rip, dr7) = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<(u64, u64), VmFail> {
                Ok((vmcs.guest_rip()?, vmcs.guest_dr7()?))
            })??;
        // An instruction breakpoint is a fault: RIP is at the instruction, and the guest
        // resumes there with RF set so the same breakpoint does not fire again (SDM Vol. 3B
        // §18.3.1.1, the flag a #DB handler's IRET would restore).
        let fault = d
            .and_then(|d| d.breakpoints)
            .is_some_and(|b| (0..4).any(|n| hits & (1 << n) != 0 && b.is_instruction(n)));
        if fault {
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                    let rflags = vmcs.guest_rflags()?;
                    vmcs.set_guest_rflags(rflags | RFLAGS_RF);
                    Ok(())
                })??;
        }
        self.fill_debug(rip, qualification | DR6_FIXED1, dr7);
        Ok(Next::User(ExitStatus::Debug))
    }

    /// The monitor-trap exit of a debugger's step: the tunnel gets HAX_EXIT_DEBUG with BS
    /// (true), or the exit is not the debugger's (false).
    pub(in crate::vcpu::haxm) fn monitor_trap_step<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<bool, HaxError> {
        match self.dbg.debugger {
            Some(d) if d.stepping() && d.route == StepRoute::MonitorTrap => {
                self.report_step(root)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// After a handler that resumes the guest: an instruction the host completed (RIP moved)
    /// is a whole step, reported now.
    pub(in crate::vcpu::haxm) fn step_completed_in_kernel<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<bool, HaxError> {
        if !self.dbg.debugger.is_some_and(|d| d.stepping()) {
            return Ok(false);
        }
        let moved = self
            .core
            .with_vmcs(root, |vmcs, _| vmcs.cache().is_dirty(VmcsField::GuestRip))?;
        if moved {
            self.report_step(root)?;
        }
        Ok(moved)
    }

    /// A user exit while stepping: IO, MMIO and HLT complete their instruction (now or at the
    /// next RUN), so the step's DEBUG exit is owed to the next RUN.
    pub(in crate::vcpu::haxm) fn note_user_exit(&mut self, status: ExitStatus) {
        if let Some(d) = self.dbg.debugger.as_mut() {
            if d.stepping()
                && matches!(
                    status,
                    ExitStatus::Io | ExitStatus::Mmio | ExitStatus::FastMmio | ExitStatus::Hlt
                )
            {
                d.step_owed = true;
            }
        }
    }

    /// At the start of a RUN, after the pending completion: the owed step's DEBUG exit.
    pub(in crate::vcpu::haxm) fn take_owed_step<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<bool, HaxError> {
        let Some(d) = self.dbg.debugger.as_mut() else {
            return Ok(false);
        };
        if !core::mem::take(&mut d.step_owed) || !d.stepping() {
            return Ok(false);
        }
        self.report_step(root)?;
        self.set_status(ExitStatus::Debug, 0);
        self.finish_user_exit(root)?;
        Ok(true)
    }

    fn drs_0_3(&self) -> [u64; 4] {
        [self.drs[0], self.drs[1], self.drs[2], self.drs[3]]
    }

    fn report_step<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        let (rip, dr7) = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<(u64, u64), VmFail> {
                Ok((vmcs.guest_rip()?, vmcs.guest_dr7()?))
            })??;
        self.fill_debug(rip, DR6_BS | DR6_FIXED1, dr7);
        Ok(())
    }

    fn fill_debug(&mut self, rip: u64, dr6: u64, dr7: u64) {
        self.set_payload(TunnelPayload::from_debug(TunnelDebug { rip, dr6, dr7 }));
    }

    /// Delivers an intercepted #DB/#BP/ICEBP to the guest as it happened (a software event
    /// with its instruction length, SDM Vol. 3C §27.6.1.1).
    fn reflect<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        interruption: crate::vmcs::exit::Interruption,
        software: bool,
    ) -> Result<(), HaxError> {
        self.core
            .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                let kind: u32 = match interruption.kind {
                    InterruptionType::PrivilegedSoftwareException => 5,
                    InterruptionType::SoftwareException => 6,
                    _ => 3,
                };
                vmcs.set_vm_entry_interruption_information(
                    VALID | (kind << 8) | u32::from(interruption.vector),
                );
                if software {
                    let len = vmcs.vm_exit_instruction_length()?;
                    vmcs.set_vm_entry_instruction_length(len);
                }
                Ok(())
            })??;
        Ok(())
    }
}
