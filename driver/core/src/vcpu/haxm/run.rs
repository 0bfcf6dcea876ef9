//! The RUN state machine: steps inside the non-preemptible region, the guest loop, and the
//! passive-level memory work between steps (see the parent module's documentation).

use super::apic_exits::FastExit;
use super::events::interrupt_shadow;
use super::*;
use crate::vmcs::exit::{reason as exit_reason, ExitReason, IoAccess};

/// How a step of the RUN state machine ended, inside this module: the request of
/// [`Flow::Memory`] waits in `HaxVcpu::step`, so this stays one byte on the way out of the
/// guest loop; [`HaxVcpu::run`] and [`HaxVcpu::resume`] turn it into the [`RunStep`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) enum Flow {
    /// The RUN is over: the tunnel holds the exit.
    Done,
    /// Guest memory is needed (`Step::Waiting`).
    Memory,
}

impl HaxVcpu {
    /// `HAX_VCPU_IOCTL_RUN`, first step (inside the non-preemptible region; see the module
    /// documentation). Fills the tunnel; `Ok` for every exit status (as HAXM returns 0), `Err`
    /// for a failed VM entry (status UNKNOWN) or a failed MMIO completion. A RUN abandoned
    /// between its steps (the caller could not re-enter the region) is not continued: the
    /// only state kept across steps is a resolved EPT violation or a completed string IN,
    /// and entering the guest again re-raises the violation (a fault: RIP did not move, SDM
    /// Vol. 3C §29.3.3.2) or simply goes on.
    // Its own frame: the dispatcher's RUN loop keeps only its CPUID copy and the lease
    // (the 2 KiB budget, `cargo xtask stack`).
    #[inline(never)]
    pub fn run<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<RunStep, HaxError> {
        // Before any side effect: a VMCS still active elsewhere is reported now, so the
        // caller's VMCLEAR-and-retry repeats nothing.
        self.core.with_vmcs(root, |_, _| ())?;
        self.runs += 1;
        self.user_exits += 1;
        self.step = Step::Idle;
        let r = self.start(root, cpuid, platform);
        self.leave(root);
        self.run_step(r)
    }

    /// The step's result as the caller sees it: the request that waits is copied out once,
    /// here, not moved through every frame of the guest loop. `Done` (every exit served by
    /// user space) is written as a bare discriminant: the copy of the request lives in
    /// [`HaxVcpu::waiting_request`], out of line, or the compiler copies the whole enum's
    /// bytes on both paths.
    #[inline(always)]
    fn run_step(&self, r: Result<Flow, HaxError>) -> Result<RunStep, HaxError> {
        match r {
            Ok(Flow::Done) => Ok(RunStep::Done),
            Ok(Flow::Memory) => Ok(self.waiting_request()),
            Err(e) => Err(e),
        }
    }

    #[inline(never)]
    fn waiting_request(&self) -> RunStep {
        match &self.step {
            Step::Waiting(request) => RunStep::NeedMemory(*request),
            _ => {
                debug_assert!(false, "Flow::Memory without a waiting request");
                RunStep::Done
            }
        }
    }

    /// Continues a RUN after [`HaxVcpu::complete_memory`] answered [`AfterMemory::Resume`]
    /// (inside the non-preemptible region, on any CPU: the caller moves the VMCS as for
    /// [`HaxVcpu::run`]). [`HaxError::NothingToResume`] if no step waits.
    // Its own frame: the dispatcher's RUN loop keeps only its CPUID copy and the lease
    // (the 2 KiB budget, `cargo xtask stack`).
    #[inline(never)]
    pub fn resume<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<RunStep, HaxError> {
        if !matches!(
            self.step,
            Step::InsDone
                | Step::Violation(_)
                | Step::Fault { .. }
                | Step::Exception { .. }
                | Step::TaskSwitched(_)
                | Step::Emulated(_)
                | Step::Protected { .. }
        ) {
            return Err(HaxError::NothingToResume);
        }
        self.core.with_vmcs(root, |_, _| ())?;
        let r = self.continue_step(root, cpuid, platform);
        self.leave(root);
        self.run_step(r)
    }

    /// What [`HaxVcpu::resume`] does for the step that waits: finish it, then (unless it
    /// ended the RUN) enter the guest again.
    fn continue_step<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<Flow, HaxError> {
        match core::mem::replace(&mut self.step, Step::Idle) {
            Step::Violation(v) => {
                let next = self.finish_violation(root, &v)?;
                if let Some(step) =
                    self.after_handler(root, next, EXIT_REASON_EPT_VIOLATION, platform)?
                {
                    return Ok(step);
                }
            }
            Step::Fault { linear, code } => self.fault_string_io(root, linear, code)?,
            Step::Protected { gpa, flags, undo } => {
                if undo {
                    self.undo_string_io(root)?;
                }
                let next = self.protected_exit(gpa, flags);
                return Ok(self
                    .after_handler(root, next, EXIT_REASON_EPT_VIOLATION, platform)?
                    .unwrap_or(Flow::Done));
            }
            Step::Exception { vector, code } => self.inject_exception(root, vector, Some(code))?,
            Step::TaskSwitched(t) => self.apply_task(root, &t)?,
            Step::Emulated(o) => {
                let from_start = core::mem::replace(&mut self.emu_from_start, false);
                let next = self.emu_finish(root, o)?;
                if from_start {
                    // The instruction of the last RUN's MMIO exit, completed at the start of
                    // this RUN: the RUN goes on as a fresh one (pause handshake, budget).
                    return match next {
                        Next::Resume => self.begin_guest(root, cpuid, platform),
                        next => Ok(self
                            .after_handler(root, next, EXIT_REASON_EPT_VIOLATION, platform)?
                            .unwrap_or(Flow::Done)),
                    };
                }
                if let Some(step) =
                    self.after_handler(root, next, EXIT_REASON_EPT_VIOLATION, platform)?
                {
                    return Ok(step);
                }
            }
            _ => return self.begin_guest(root, cpuid, platform),
        }
        self.guest_loop(root, cpuid, platform)
    }

    /// The guest-memory work of the last step, at passive level (outside the non-preemptible
    /// region): the pins, the memory lock and the copies happen here.
    // Its own frame: each request's buffers and step stay off the dispatcher's RUN loop
    // (the 2 KiB budget, `cargo xtask stack`).
    #[inline(never)]
    pub fn complete_memory<M: GuestMemoryAccess + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<AfterMemory, HaxError> {
        let Step::Waiting(request) = self.step else {
            return Err(HaxError::NothingToResume);
        };
        self.step = Step::Idle;
        match request {
            MemoryRequest::CompleteIns {
                linear,
                len,
                mode,
                access,
            } => {
                self.pending = Pending::None;
                let len = len.min(64);
                let mut data = [0u8; 64];
                data[..len].copy_from_slice(&self.iobuf.bytes_mut()[..len]);
                match write_linear(mem, &mode, linear, &data[..len], access) {
                    Ok(_) => self.step = Step::InsDone,
                    // The exit was probed writable; the guest's tables changed since (another
                    // vCPU): the fault is delivered now, after the registers moved.
                    Err(WalkError::PageFault { linear, code }) => {
                        self.undo = None;
                        self.step = Step::Fault { linear, code };
                    }
                    // A page PROTECT_RAM protects: PAGEFAULT, and the data stays in the IO
                    // buffer for the completion to be retried at the next RUN.
                    Err(WalkError::Memory(MemoryError::Protected { gpa })) => {
                        self.pending = Pending::Ins {
                            linear,
                            len,
                            mode,
                            access,
                        };
                        self.step = Step::Protected {
                            gpa,
                            flags: PF_FLAG_WRITE,
                            undo: false,
                        };
                    }
                    Err(e) => {
                        self.panicked = Some(PanicReason::GuestMemory(e));
                        return Err(HaxError::EmulationFailed);
                    }
                }
                Ok(AfterMemory::Resume)
            }
            MemoryRequest::ProbeIns {
                linear,
                len,
                mode,
                access,
            } => match probe_linear(mem, &mode, linear, len.min(64), access) {
                Ok(()) => {
                    self.undo = None;
                    Ok(AfterMemory::Done)
                }
                Err(WalkError::PageFault { linear, code }) => {
                    self.pending = Pending::None;
                    self.step = Step::Fault { linear, code };
                    Ok(AfterMemory::Resume)
                }
                // PROTECT_RAM: PAGEFAULT instead of the IO exit, the INS taken back (it runs
                // again once user space unprotects).
                Err(WalkError::Memory(MemoryError::Protected { gpa })) => {
                    self.pending = Pending::None;
                    self.step = Step::Protected {
                        gpa,
                        flags: PF_FLAG_WRITE,
                        undo: true,
                    };
                    Ok(AfterMemory::Resume)
                }
                Err(e) => {
                    self.undo = None;
                    self.panicked = Some(PanicReason::GuestMemory(e));
                    self.set_status(ExitStatus::StateChange, EXIT_REASON_IO);
                    Ok(AfterMemory::Done)
                }
            },
            MemoryRequest::StringOut {
                linear,
                len,
                mode,
                access,
            } => {
                let len = len.min(64);
                let mut buf = [0u8; 64];
                match read_linear(mem, &mode, linear, &mut buf[..len], access) {
                    Ok(_) => {
                        self.undo = None;
                        self.iobuf.bytes_mut()[..len].copy_from_slice(&buf[..len]);
                        Ok(AfterMemory::Done)
                    }
                    // The guest's paging refuses the source: #PF, and the OUTS never happened.
                    Err(WalkError::PageFault { linear, code }) => {
                        self.step = Step::Fault { linear, code };
                        Ok(AfterMemory::Resume)
                    }
                    // PROTECT_RAM: PAGEFAULT instead of the IO exit, the OUTS taken back.
                    Err(WalkError::Memory(MemoryError::Protected { gpa })) => {
                        self.step = Step::Protected {
                            gpa,
                            flags: PF_FLAG_READ,
                            undo: true,
                        };
                        Ok(AfterMemory::Resume)
                    }
                    // Page tables outside RAM or a memory-layer failure: nothing the guest can
                    // be told; the vCPU stops (STATECHANGE on this and every later RUN).
                    Err(e) => {
                        self.undo = None;
                        self.panicked = Some(PanicReason::GuestMemory(e));
                        self.set_status(ExitStatus::StateChange, EXIT_REASON_IO);
                        Ok(AfterMemory::Done)
                    }
                }
            }
            MemoryRequest::Emulate => {
                let outcome = self.emulate_passive(mem);
                self.step = Step::Emulated(outcome);
                Ok(AfterMemory::Resume)
            }
            MemoryRequest::TaskSwitch(ts) => {
                match Self::task_switch_memory(mem, &ts) {
                    Ok(t) => match crate::heap::try_box(t) {
                        Ok(b) => self.step = Step::TaskSwitched(b),
                        Err(_) => return Err(HaxError::Platform(PlatformError::OutOfMemory)),
                    },
                    Err(exits::Failed::Fault((vector, code))) => {
                        self.step = Step::Exception { vector, code }
                    }
                    Err(exits::Failed::Walk(WalkError::PageFault { linear, code })) => {
                        self.undo = None;
                        self.step = Step::Fault { linear, code };
                    }
                    // PROTECT_RAM: the task switch runs again once user space unprotects.
                    Err(exits::Failed::Walk(WalkError::Memory(MemoryError::Protected { gpa }))) => {
                        self.step = Step::Protected {
                            gpa,
                            flags: PF_FLAG_READ,
                            undo: false,
                        };
                    }
                    Err(exits::Failed::Walk(e)) => {
                        self.panicked = Some(PanicReason::GuestMemory(e));
                        self.set_status(ExitStatus::StateChange, 9);
                        return Ok(AfterMemory::Done);
                    }
                }
                Ok(AfterMemory::Resume)
            }
            MemoryRequest::EptViolation {
                gpa,
                access,
                qualification,
                fetch,
            } => {
                let resolution = mem.resolve(gpa, access).map_err(HaxError::Memory)?;
                let mut fetched = [0u8; emulate::MAX_LENGTH];
                let (got, fault) = match resolution {
                    Resolution::Mmio | Resolution::WriteToRom => {
                        fetch_linear(mem, &fetch.mode, fetch.linear, &mut fetched, fetch.access)
                    }
                    Resolution::Mapped | Resolution::Protected { .. } => (0, None),
                };
                self.step = Step::Violation(Resolved {
                    gpa,
                    qualification,
                    resolution,
                    fetched,
                    got,
                    fault,
                    cpu_mode: fetch.cpu_mode,
                    mode: fetch.mode,
                    user: fetch.access.user,
                });
                Ok(AfterMemory::Resume)
            }
        }
    }

    /// A string IO access the guest's paging refused: the registers and RIP go back to what
    /// they were before the exit's first step, and the guest takes #PF.
    fn fault_string_io<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        linear: u64,
        code: u32,
    ) -> Result<(), HaxError> {
        self.undo_string_io(root)?;
        self.inject_page_fault(root, linear, code)
    }

    /// Takes back what a string IO exit's first step did to the registers and RIP.
    fn undo_string_io<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        if let Some(u) = self.undo.take() {
            self.core.regs.gpr[u.index] = u.old_index;
            self.core.regs.gpr[reg::RCX] = u.old_rcx;
            if let Some(rip) = u.old_rip {
                self.core
                    .with_vmcs(root, |vmcs, _| vmcs.set_guest_rip(rip))?;
            }
        }
        Ok(())
    }

    /// The end of every step: the guest's MSRs and FPU go back before the thread can leave
    /// the non-preemptible region the caller holds.
    pub(in crate::vcpu::haxm) fn leave<V: Vmx>(&mut self, root: &mut VmxRoot<V>) {
        self.restore_host_breakpoints(root);
        self.core.put(root);
        self.publish_apic_base();
    }

    pub(in crate::vcpu::haxm) fn start<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<Flow, HaxError> {
        if self.panicked.is_some() {
            self.set_status(ExitStatus::StateChange, 0);
            return Ok(Flow::Done);
        }
        if let Pending::Ins {
            linear,
            len,
            mode,
            access,
        } = self.pending
        {
            let request = MemoryRequest::CompleteIns {
                linear,
                len,
                mode,
                access,
            };
            self.step = Step::Waiting(request);
            return Ok(Flow::Memory);
        }
        self.complete_pending(root)?;
        // The general MMIO path's instruction in flight: its read arrived, or its next write
        // leaves. Tested inline first: most RUNs have none, and the out-of-line call to find
        // that out cost ~15 emulated instructions per RUN.
        if !self.emu.active() {
            return self.begin_guest(root, cpuid, platform);
        }
        if let Some(next) = self.emu_continue(root)? {
            return match next {
                Next::Resume => self.begin_guest(root, cpuid, platform),
                Next::Memory => {
                    self.emu_from_start = true;
                    Ok(Flow::Memory)
                }
                next => Ok(self
                    .after_handler(root, next, EXIT_REASON_EPT_VIOLATION, platform)?
                    .unwrap_or(Flow::Done)),
            };
        }
        self.begin_guest(root, cpuid, platform)
    }

    /// The pause handshake, then the guest loop.
    pub(in crate::vcpu::haxm) fn begin_guest<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<Flow, HaxError> {
        // A debugger's step that ended in user space (IO, MMIO, HLT) is over now that its
        // instruction is complete: the DEBUG exit comes before the guest runs again.
        if self.take_owed_step(root)? {
            return Ok(Flow::Done);
        }
        // Quirk 7: `_exit_reason == 8` written by user space asks for an immediate exit. It is
        // consumed (cleared) so the next RUN runs the guest.
        if self.take_pause_request() {
            self.set_status(ExitStatus::Paused, 0);
            return Ok(Flow::Done);
        }
        self.run_start = platform.tsc();
        self.run_budget = tsc_ticks(platform, RUN_BUDGET_US);
        self.guest_loop(root, cpuid, platform)
    }

    // Its own frame: the exit handlers it inlines stay off the dispatcher's RUN frame (the
    // 2 KiB budget, `cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn guest_loop<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<Flow, HaxError> {
        // The entry after an APIC fast path that found nothing for the APIC's entry work
        // to do (`apic_reenter_direct`, which also looked for the user-space kicks).
        let mut direct = false;
        loop {
            // The user-space kicks: the tunnel's `user_event_pending` and the shell's
            // (a pending signal on Linux), checked before every entry.
            if !direct && (self.take_user_event() || platform.user_return_pending()) {
                self.set_status(ExitStatus::Interrupt, 0);
                self.finish_user_exit(root)?;
                return Ok(Flow::Done);
            }
            // The in-kernel APIC (rhax's extension): its interrupts, halt polling, timer.
            // Without one (the default) there is nothing to do: tested here, inline, not in
            // the out-of-line frame (~15 emulated instructions per entry).
            if self.apic.is_some() && !direct {
                if let apic::BeforeEntry::Stay(status) = self.apic_before_entry(root, platform)? {
                    self.set_status(status, 0);
                    self.finish_user_exit(root)?;
                    return Ok(Flow::Done);
                }
            }
            direct = false;
            let injected = self.prepare_entry(root)?;
            self.arm_debugger(root)?;
            // `enter` (inlined here), not `run`: the exit reason only, decoded below as far
            // as the handler needs it (`decode_exit`).
            let reason = match self.core.enter(root) {
                Ok(r) => r,
                Err(e @ RunError::Entry(_)) => {
                    self.set_status(ExitStatus::Unknown, 0);
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            self.disarm_step(root)?;
            // A port IO exit with nothing else to do (every IN/OUT user space serves): no
            // in-kernel APIC (no fast path, nothing to kick) and no event injected at this
            // entry (nothing for `after_exit` to re-inject: an IO exit is not one of the exits
            // that report IDT-vectoring information, SDM Vol. 3C §28.2.4, and without an
            // injection it leaves NMI blocking alone). The handler gets the qualification
            // straight, without the `VmExit` built, matched by `after_exit` and `handle`.
            if reason.exit() == Some(exit_reason::IO_INSTRUCTION)
                && !injected
                && self.apic.is_none()
            {
                let q = self
                    .core
                    .with_vmcs(root, |vmcs, _| vmcs.exit_qualification())??;
                let next = self.io(root, IoAccess::from_qualification(q))?;
                // IN/OUT (not string IO): `after_handler`'s user-exit arm for IO, inline.
                if let Next::User(ExitStatus::Io) = next {
                    self.note_user_exit(ExitStatus::Io);
                    self.set_status(ExitStatus::Io, u32::from(exit_reason::IO_INSTRUCTION));
                    self.finish_user_exit(root)?;
                    return Ok(Flow::Done);
                }
                if let Some(step) =
                    self.after_handler(root, next, exit_reason::IO_INSTRUCTION, platform)?
                {
                    return Ok(step);
                }
                continue;
            }
            let decoded = self.decode_exit(root, reason)?;
            let exit = &decoded;
            if let VmExit::EntryFailure {
                reason,
                qualification,
            } = *exit
            {
                self.set_status(ExitStatus::Unknown, 0);
                return Err(HaxError::InvalidGuestState {
                    reason,
                    qualification,
                });
            }
            // Without the in-kernel APIC (the default) the fast paths have nothing to do:
            // tested here, inline, instead of in their out-of-line frame.
            if self.apic.is_some() {
                match self.apic_fast_exit(root, exit)? {
                    FastExit::No => {}
                    FastExit::Handled => {
                        self.apic_kick(platform, root.cpu());
                        continue;
                    }
                    FastExit::Unchanged { now } => {
                        self.apic_kick(platform, root.cpu());
                        direct = self.apic_reenter_direct(platform, now);
                        continue;
                    }
                }
            }
            self.after_exit(root, exit, injected)?;
            let next = self.handle(root, cpuid, exit)?;
            self.apic_kick(platform, root.cpu());
            if let Some(step) = self.after_handler(root, next, exit.basic_reason(), platform)? {
                return Ok(step);
            }
        }
    }

    /// The exit as the handlers take it, read as far as its reason needs: a port IO exit
    /// (every IN/OUT served by user space) reads its qualification alone (SDM Vol. 3C Table
    /// 28-5), the reasons without fields (CPUID, HLT, RDMSR/WRMSR, ...: `without_fields`, the
    /// list the full decode starts with) nothing; every other reason, and a failed entry, goes
    /// through the core's full decode (`Vcpu::decode`, the same VMREADs `Vcpu::run` made).
    /// The result is the `VmExit` `Vcpu::run` returns for the same exit (one list, unit test
    /// `without_fields_gives_each_reasons_own_exit`): only the call, the jump table and the
    /// copies of the full decode are saved.
    #[inline(always)]
    pub(in crate::vcpu::haxm) fn decode_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        reason: ExitReason,
    ) -> Result<VmExit, HaxError> {
        match reason.exit() {
            Some(exit_reason::IO_INSTRUCTION) => {
                let q = self
                    .core
                    .with_vmcs(root, |vmcs, _| vmcs.exit_qualification())??;
                Ok(VmExit::Io(IoAccess::from_qualification(q)))
            }
            Some(basic) => match crate::vmcs::exit::without_fields(basic) {
                Some(exit) => Ok(exit),
                None => Ok(self.core.decode(root, reason)?),
            },
            None => Ok(self.core.decode(root, reason)?),
        }
    }

    /// A handler's request for guest memory: it waits in `self.step` for the passive-level
    /// part ([`HaxVcpu::complete_memory`]), and the step ends.
    pub(in crate::vcpu::haxm) fn wait_for_memory(&mut self, request: MemoryRequest) -> Next {
        self.step = Step::Waiting(request);
        Next::Memory
    }

    /// Acts on a handler's decision: `Some` ends the step, `None` enters the guest again.
    pub(in crate::vcpu::haxm) fn after_handler<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        next: Next,
        reason: u16,
        platform: &P,
    ) -> Result<Option<Flow>, HaxError> {
        match next {
            Next::User(status) => {
                self.note_user_exit(status);
                self.set_status(status, u32::from(reason));
                if status == ExitStatus::StateChange {
                    return Ok(Some(Flow::Done));
                }
                self.finish_user_exit(root)?;
                if status == ExitStatus::Hlt {
                    self.set_ready_for_injection(true);
                }
                Ok(Some(Flow::Done))
            }
            Next::Memory => {
                // The handler left its request in `self.step` (`wait_for_memory`).
                if let Step::Waiting(
                    MemoryRequest::StringOut { .. } | MemoryRequest::ProbeIns { .. },
                ) = self.step
                {
                    self.note_user_exit(ExitStatus::Io);
                    // The exit is complete but for the data: the tunnel is filled now, while
                    // the VMCS is at hand.
                    self.set_status(ExitStatus::Io, u32::from(reason));
                    self.finish_user_exit(root)?;
                }
                Ok(Some(Flow::Memory))
            }
            Next::Resume => {
                // A debugger's step over an instruction the host completed (RIP moved).
                if self.step_completed_in_kernel(root)? {
                    self.set_status(ExitStatus::Debug, u32::from(reason));
                    self.finish_user_exit(root)?;
                    return Ok(Some(Flow::Done));
                }
                // Rule (b) of status 4: the user asked for a window and the guest can take
                // an interrupt now, with nothing of ours queued or being injected.
                let wants = self.wants_interrupt_window();
                if wants && !self.vectors_pending() && self.guest_interruptible(root)? {
                    self.set_status(ExitStatus::Interrupt, u32::from(reason));
                    self.finish_user_exit(root)?;
                    return Ok(Some(Flow::Done));
                }
                if platform.tsc().wrapping_sub(self.run_start) >= self.run_budget {
                    self.set_status(ExitStatus::Interrupt, u32::from(reason));
                    self.finish_user_exit(root)?;
                    return Ok(Some(Flow::Done));
                }
                Ok(None)
            }
        }
    }

    /// `ready_for_interrupt_injection`: 1 iff nothing is queued and the guest can take an
    /// interrupt now (§4). Computed when RUN returns (the only time user space reads it).
    pub(in crate::vcpu::haxm) fn finish_user_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        let ready = !self.vectors_pending() && self.guest_interruptible(root)?;
        self.set_ready_for_injection(ready);
        Ok(())
    }

    pub(in crate::vcpu::haxm) fn guest_interruptible<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<bool, HaxError> {
        let r = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<bool, VmFail> {
                // RFLAGS.IF first: with IF clear (a guest inside `cli`) the other two fields
                // are not read at all.
                Ok(vmcs.guest_rflags()? & RFLAGS_IF != 0
                    && interrupt_shadow(vmcs)? == 0
                    && vmcs.vm_entry_interruption_information()? & VALID == 0)
            })??;
        Ok(r)
    }
}
