//! The in-kernel local APIC of a HAXM vCPU (rhax's extension, RHAX_VM_IOCTL_ENABLE_APIC; a
//! VM without it behaves exactly as under HAXM). The model is `crate::apic`; this room
//! connects it to VMX:
//! - before every entry ([`HaxVcpu::apic_before_entry`]): the port drained (IPIs and MSIs
//!   posted by other vCPUs and user space), LINT changes, the timer, INIT/SIPI, then NMI or the
//!   highest deliverable vector injected (SDM Vol. 3A §11.8.4 acceptance, Vol. 3C §27.6 event
//!   injection), or an interrupt window when the guest cannot take it yet; with the TPR
//!   shadow, the virtual TPR synchronised and the TPR threshold set so the CPU exits only
//!   when a lower TPR makes a pending vector deliverable (Vol. 3C §30.1.2);
//! - the timer on the VMX-preemption timer: the next expiry bounds the entry's timer value
//!   (Vol. 3C §26.5.1), so a TSC-deadline or one-shot expiry is an exit at the right time;
//! - the exits (`apic_exits.rs`): x2APIC MSRs, IA32_APIC_BASE, IA32_TSC_DEADLINE, MOV CR8
//!   without the TPR shadow, xAPIC MMIO at the APIC base (the MOV forms decoded by
//!   `emulate::decode`), HLT (halt polling until an interrupt, the RUN budget or a kick), the
//!   fast paths right after the exit ([`HaxVcpu::apic_fast_exit`]);
//! - the CPU's APIC virtualization: virtual-interrupt delivery and APIC-register
//!   virtualization (`apic_vid.rs`), APIC-access, APIC-write and x2APIC-mode virtualization
//!   (`apic_virt.rs`);
//! - the state IOCTLs (`apic_state.rs`).

use rhax_api::ext::ApicFlags;

use super::*;
use crate::apic::{ApicBus, ApicMode, DeliveryMode, Effect, Interrupt, LocalApic};
use crate::memory::try_arc::TryArc;

/// IA32_TSC_DEADLINE (SDM Vol. 3A §11.5.4.1).
pub(in crate::vcpu::haxm) const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Offset of the TPR in the (virtual-)APIC page (SDM Vol. 3C §30.1.1: VTPR).
const VTPR: usize = 0x80;
/// APIC timer bus tick in TSC ticks when the TSC frequency is unknown (a 100 MHz bus on a
/// 1 GHz TSC).
const DEFAULT_TSC_PER_BUS_TICK: u32 = 10;
/// How long a halted vCPU polls for a wake-up in the kernel before RUN returns HLT (KVM's
/// default `halt_poll_ns` is 200 µs).
const HALT_POLL_US: u64 = 200;
/// The APIC bus clock rhax gives the guest (the 100 MHz of most recent Intel parts' crystal;
/// CPUID leaf 0x15 is not offered, so the guest calibrates it like any other timer).
const BUS_HZ: u64 = 100_000_000;

/// The APIC half of a vCPU (boxed in [`HaxVcpu`]).
pub(in crate::vcpu::haxm) struct ApicUnit {
    pub(in crate::vcpu::haxm) local: LocalApic,
    pub(in crate::vcpu::haxm) bus: TryArc<ApicBus>,
    pub(in crate::vcpu::haxm) index: usize,
    pub(in crate::vcpu::haxm) flags: ApicFlags,
    /// The virtual-APIC page when the TPR shadow is on.
    pub(in crate::vcpu::haxm) vapic: Option<PhysPages>,
    /// Virtual-interrupt delivery is on (`apic_vid.rs`): the page's VIRR/VISR and the guest
    /// interrupt status carry the fixed interrupts, the CPU delivers and EOIs them.
    pub(in crate::vcpu::haxm) vid: bool,
    /// The EOI-exit bitmap last written (the TMR at that entry).
    pub(in crate::vcpu::haxm) eoi_exit: [u64; 4],
    /// With virtual-interrupt delivery: the page's VIRR and VISR words as last read or
    /// written, so an exit after which neither the CPU nor the model changed them costs a
    /// compare, not 32 word copies (`apic_vid.rs`).
    pub(in crate::vcpu::haxm) vid_synced: ([u32; 8], [u32; 8]),
    /// "APIC-register virtualization" is on (with `vid`, `apic_vid.rs`): the CPU answers
    /// the guest's reads of the [`crate::apic::PAGE_MIRRORED`] registers from the page.
    pub(in crate::vcpu::haxm) arv: bool,
    /// The model may have changed since the page's register image was last written
    /// (`arv`): set by everything that changes the model, cleared by the rewrite.
    pub(in crate::vcpu::haxm) image_dirty: bool,
    /// "Virtualize APIC accesses" is used while the guest's APIC is in xAPIC mode.
    pub(in crate::vcpu::haxm) access_virt: bool,
    /// The CPU offers "virtualize x2APIC mode" and the flags allow it (`apic_virt.rs`).
    pub(in crate::vcpu::haxm) x2apic_virt: bool,
    /// The controls and the MSR bitmap are those of x2APIC mode now.
    pub(in crate::vcpu::haxm) x2apic_virt_on: bool,
    /// The APIC timer runs on the VMX-preemption timer.
    pub(in crate::vcpu::haxm) timer_on_preemption: bool,
    /// The vCPU executed HLT and waits for an interrupt (SDM Vol. 3A §11.4.7 / HLT).
    pub(in crate::vcpu::haxm) halted: bool,
    /// INIT arrived: the vCPU waits for a start-up IPI (SDM Vol. 3A §9.4.1, "wait-for-SIPI").
    wait_for_sipi: bool,
    /// An NMI accepted and not yet injected.
    pub(in crate::vcpu::haxm) nmi: bool,
    /// An ExtINT (LINT0 in ExtINT mode) waiting for injection, with the vector the
    /// interrupt controller supplied.
    pub(in crate::vcpu::haxm) extint: Option<u8>,
    /// The guest TSC at the last collection (the timer's "now").
    now: u64,
    /// The preemption-timer value of the next entry when the APIC timer needs one sooner
    /// than the time slice.
    preempt: Option<u32>,
    /// The guest cannot take the pending vector now: interrupt-window exiting.
    window: bool,
    /// vCPUs (bit per id) that got an IPI from this one and may need a kick; sent by
    /// [`HaxVcpu::apic_kick`] once the exit is handled (the handlers have no `Platform`).
    kicks: u32,
    /// Exits served by the fast path (for the benchmarks' report).
    pub(in crate::vcpu::haxm) fast_exits: u64,
}

impl ApicUnit {
    /// The virtual TPR the guest's CR8 writes changed without an exit (the CPU writes the
    /// page only while this vCPU runs the guest, never concurrently with this read).
    fn vtpr(&mut self) -> Option<u8> {
        self.vapic
            .as_mut()
            .and_then(|p| p.bytes_mut().get(VTPR).copied())
    }

    /// Takes the TPR the guest wrote without an exit (CR8 or the xAPIC TPR through the TPR
    /// shadow, SDM Vol. 3C §30.1.2) into the model. Called after every exit before any
    /// handler reads the model's TPR or writes the page back ([`HaxVcpu::apic_effect`]),
    /// which would otherwise undo the guest's write.
    pub(in crate::vcpu::haxm) fn sync_from_vtpr(&mut self) {
        if let Some(t) = self.vtpr() {
            if t != self.local.tpr() {
                self.local.set_tpr(t);
            }
        }
    }

    /// Tells the bus whether this APIC answers at the default xAPIC base (not when moved, in
    /// x2APIC mode or disabled: SDM Vol. 3A §11.4.4, §11.12.1), after anything that may have
    /// changed that (an IA32_APIC_BASE write, SET_APIC_STATE). True: the VM's APIC-access
    /// mapping must change before this vCPU runs its guest again, so the RUN ends and the
    /// dispatcher changes it ([`ApicBus::note_base`]).
    pub(in crate::vcpu::haxm) fn note_base(&self) -> bool {
        let at_default = self.local.mode() == ApicMode::XApic
            && self.local.base_address() == crate::apic::local::DEFAULT_BASE;
        self.bus.note_base(self.index, at_default)
    }

    /// The preemption-timer value that ends the guest at the APIC timer's deadline (from
    /// `now`), when the timer runs on it and the deadline comes before the `slice` ends;
    /// `rate`: the preemption timer counts every 2^rate TSC ticks (SDM Vol. 3C §26.5.1).
    fn timer_preempt(&self, rate: u8, slice: Option<u32>) -> Option<u32> {
        match (self.timer_on_preemption, self.local.timer_deadline(), slice) {
            (true, Some(d), Some(s)) => {
                let ticks = d.saturating_sub(self.now) >> rate;
                Some(ticks.min(u64::from(s)) as u32)
            }
            _ => None,
        }
    }

    pub(in crate::vcpu::haxm) fn set_vtpr(&mut self, tpr: u8) {
        if let Some(b) = self
            .vapic
            .as_mut()
            .and_then(|p| p.bytes_mut().get_mut(VTPR))
        {
            *b = tpr;
        }
    }
}

/// What [`HaxVcpu::apic_before_entry`] decided.
pub(in crate::vcpu::haxm) enum BeforeEntry {
    /// Enter the guest.
    Enter,
    /// The vCPU is halted (or waits for SIPI) and nothing woke it within the RUN: return to
    /// user space with this status.
    Stay(ExitStatus),
}

impl HaxVcpu {
    /// Gives this (new, never run) vCPU an in-kernel APIC on `bus` (RHAX_VM_IOCTL_ENABLE_APIC).
    /// The TPR shadow is used when the CPU has it and the flags allow; the virtual-APIC page
    /// is allocated here.
    pub fn attach_apic<P: Platform>(
        &mut self,
        platform: &P,
        bus: TryArc<ApicBus>,
    ) -> Result<(), HaxError> {
        let flags = bus.flags();
        let index = self.vcpu_id as usize;
        let tsc_hz = platform.tsc_frequency();
        let per_tick = if tsc_hz >= BUS_HZ {
            (tsc_hz / BUS_HZ).min(u64::from(u32::MAX)) as u32
        } else {
            DEFAULT_TSC_PER_BUS_TICK
        };
        let local = LocalApic::new(self.vcpu_id, self.vcpu_id == 0, per_tick);
        let mut vapic = None;
        if !flags.contains(ApicFlags::NO_TPR_SHADOW) {
            if let Ok(c) = self.core.controls().with(OptionalFeatures::TPR_SHADOW) {
                let mut page = platform.alloc_pages(1).map_err(HaxError::Platform)?;
                page.bytes_mut().fill(0);
                if self.core.use_virtual_apic(c, page.phys()).is_err() {
                    platform.free_pages(page);
                } else {
                    vapic = Some(page);
                }
            }
        }
        // Virtualized APIC accesses need the TPR shadow here (rhax keeps the TPR in the
        // virtual-APIC page, SDM Vol. 3C §30.4) and the VM's APIC-access page.
        let mut access_virt = false;
        if let (Some(_), Some(page)) = (vapic.as_ref(), bus.apic_access()) {
            if let Ok(c) = self
                .core
                .controls()
                .with(OptionalFeatures::VIRTUALIZE_APIC_ACCESSES)
            {
                // Only before the first run: cannot fail here.
                access_virt = self.core.use_apic_access(c, page).is_ok();
            }
        }
        let (vid, arv) = if vapic.is_some() {
            self.try_virtual_interrupt_delivery(flags)
        } else {
            (false, false)
        };
        let x2apic_virt = vapic.is_some()
            && !flags.contains(ApicFlags::NO_APIC_VIRTUALIZATION)
            && self
                .core
                .controls()
                .available
                .contains(OptionalFeatures::VIRTUALIZE_X2APIC);
        let timer_on_preemption =
            !flags.contains(ApicFlags::NO_PREEMPTION_TIMER) && self.preemption_ticks.is_some();
        let unit = ApicUnit {
            local,
            bus,
            index,
            flags,
            vapic,
            vid,
            arv,
            image_dirty: true,
            eoi_exit: [0; 4],
            vid_synced: ([0; 8], [0; 8]),
            access_virt,
            x2apic_virt,
            x2apic_virt_on: false,
            timer_on_preemption,
            halted: false,
            // An AP waits for the guest's INIT/SIPI (SDM Vol. 3A §9.4: only the BSP runs
            // after reset), as with KVM's in-kernel irqchip: SET_REGS alone does not start
            // it (QEMU's reset SET_REGS of every vCPU would otherwise start all of them).
            wait_for_sipi: self.vcpu_id != 0,
            nmi: false,
            extint: None,
            now: 0,
            preempt: None,
            window: false,
            kicks: 0,
            fast_exits: 0,
        };
        let unit = match crate::heap::try_box(unit) {
            Ok(u) => u,
            Err(u) => {
                if let Some(p) = u.vapic {
                    platform.free_pages(p);
                }
                return Err(HaxError::Platform(PlatformError::OutOfMemory));
            }
        };
        if let Some(port) = unit.bus.port(index) {
            port.publish(&unit.local);
        }
        unit.bus.attach(index);
        self.apic_base = unit.local.base_msr();
        self.apic = Some(unit);
        self.publish_apic_base();
        Ok(())
    }

    /// Whether this vCPU has an in-kernel APIC.
    pub fn has_apic(&self) -> bool {
        self.apic.is_some()
    }

    /// The VM's APIC bus, when this vCPU has an in-kernel APIC (the dispatcher acts on its
    /// APIC-access drop requests after a RUN).
    pub fn apic_bus(&self) -> Option<&ApicBus> {
        self.apic.as_deref().map(|u| &*u.bus)
    }

    /// The bus slot this vCPU uses, for the dispatcher's running-on bookkeeping. Called
    /// twice per RUN step: the "no APIC" test is inlined into the dispatcher (a call to learn
    /// there is nothing to do cost a call, a test and a return each time), the bookkeeping
    /// stays out of line.
    #[inline]
    pub fn note_running(&self, cpu: u32) {
        if let Some(u) = self.apic.as_deref() {
            note_running_on(u, cpu);
        }
    }

    /// Frees the APIC's pages (vCPU destruction).
    pub(in crate::vcpu::haxm) fn release_apic<P: Platform>(&mut self, platform: &P) {
        if let Some(mut u) = self.apic.take() {
            u.bus.detach(u.index);
            if let Some(p) = u.vapic.take() {
                platform.free_pages(p);
            }
        }
    }

    /// The guest's TSC now (host TSC plus the VMCS offset: the APIC timer's clock).
    pub(in crate::vcpu::haxm) fn guest_tsc<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<u64, HaxError> {
        Ok(self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<u64, VmFail> {
                Ok(vmcs.vmx().rdtsc().wrapping_add(vmcs.tsc_offset()?))
            })??)
    }

    /// Takes in everything that arrived for this APIC: posted interrupts, LINT changes, the
    /// timer, the TPR the guest wrote through CR8, INIT and SIPI.
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    fn apic_collect<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        let now = self.guest_tsc(root)?;
        let Some(u) = self.apic.as_deref_mut() else {
            return Ok(());
        };
        u.now = now;
        u.sync_from_vtpr();
        // Of the page's mirrored registers, acceptance (posted interrupts, the timer) changes
        // only the TMR (errors go to the ESR at its next write): the image is rewritten only
        // if it did, not for every interrupt.
        let port = u.bus.port(u.index).filter(|p| p.pending());
        let tmr = (u.arv && (port.is_some() || u.local.timer_deadline().is_some_and(|d| now >= d)))
            .then(|| u.local.tmr_words());
        if let Some(port) = port {
            port.drain_into(&mut u.local);
        }
        if u.bus.lint_pending(u.index) {
            u.image_dirty = true;
            for change in u.bus.take_lint(u.index).into_iter().flatten() {
                // The LVT entry of the pin (SDM Vol. 3A §11.5.1, Figure 11-8): vector 7:0,
                // delivery mode 10:8, trigger 15, mask 16.
                let lvt = u.local.lvt_lint(change.pin);
                if lvt & (1 << 16) != 0 {
                    continue;
                }
                let level = lvt & (1 << 15) != 0;
                match (lvt >> 8) & 7 {
                    // Edge-triggered pins deliver on the rising edge; level-triggered ones
                    // while asserted.
                    0 if change.asserted => {
                        u.local.accept(Interrupt {
                            vector: lvt as u8,
                            mode: DeliveryMode::Fixed,
                            assert: true,
                            level_triggered: level,
                        });
                    }
                    4 if change.asserted => u.nmi = true,
                    7 if change.asserted => u.extint = Some(change.vector),
                    7 => u.extint = None,
                    _ => {}
                }
            }
        }
        u.local.timer_fire(now);
        if tmr.is_some_and(|t| t != u.local.tmr_words()) {
            u.image_dirty = true;
        }
        if u.local.take_nmi() {
            u.nmi = true;
        }
        let init = u.local.take_init();
        let sipi = u.local.take_sipi();
        if init {
            self.apic_init(root)?;
        }
        if let Some(vector) = sipi {
            self.apic_sipi(root, vector)?;
        }
        Ok(())
    }

    /// INIT (SDM Vol. 3A §9.1.1, Table 9-1; §11.4.7.3): the vCPU's state goes to its reset
    /// values except the APIC's ID and base, and it waits for a start-up IPI.
    fn apic_init<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        let controls = *self.core.controls();
        self.core
            .with_vmcs(root, |vmcs, regs| -> Result<(), VmFail> {
                crate::vmcs::setup::write_power_on_state(vmcs, &controls);
                let entry = vmcs.vm_entry_controls()?;
                vmcs.set_vm_entry_controls(entry & !EntryControls::IA32E_MODE_GUEST.bits());
                vmcs.set_vm_entry_interruption_information(0);
                regs.gpr = [0; 16];
                Ok(())
            })??;
        self.vectors = [0; 4];
        self.pending = Pending::None;
        if let Some(u) = self.apic.as_deref_mut() {
            u.local.init_reset();
            u.image_dirty = true;
            u.wait_for_sipi = true;
            u.halted = false;
            u.nmi = false;
            u.extint = None;
            u.set_vtpr(0);
            if let Some(port) = u.bus.port(u.index) {
                port.publish(&u.local);
            }
        }
        Ok(())
    }

    /// A start-up IPI to a vCPU waiting for one (SDM Vol. 3A §9.4.4.1, §11.6.1): real mode
    /// at `vector << 12` (CS selector `vector << 8`, IP 0). Ignored otherwise.
    fn apic_sipi<V: Vmx>(&mut self, root: &mut VmxRoot<V>, vector: u8) -> Result<(), HaxError> {
        let Some(u) = self.apic.as_deref_mut() else {
            return Ok(());
        };
        if !u.wait_for_sipi {
            return Ok(());
        }
        u.wait_for_sipi = false;
        self.core.with_vmcs(root, |vmcs, _| {
            vmcs.set_guest_cs_selector(u16::from(vector) << 8);
            vmcs.set_guest_cs_base(u64::from(vector) << 12);
            vmcs.set_guest_rip(0);
        })?;
        Ok(())
    }

    /// Whether the guest can take a maskable interrupt now (RFLAGS.IF, no STI/MOV-SS
    /// shadow, nothing being injected).
    fn apic_can_inject<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<bool, HaxError> {
        self.guest_interruptible(root)
    }

    /// Before every entry of a vCPU with an in-kernel APIC (see the module documentation).
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn apic_before_entry<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        platform: &P,
    ) -> Result<BeforeEntry, HaxError> {
        match self.apic.as_deref() {
            None => return Ok(BeforeEntry::Enter),
            // Off the default base while the APIC-access page may still be in the EPT (the
            // unmap on another vCPU's dispatcher is under way, or failed and waits for a
            // retry at a RUN's end): not into the guest (`ApicBus::may_enter`).
            Some(u) if !u.bus.may_enter(u.index) => {
                return Ok(BeforeEntry::Stay(ExitStatus::Interrupt))
            }
            Some(_) => {}
        }
        self.apic_collect(root)?;
        self.apic_follow_mode(root)?;
        // HLT and wait-for-SIPI: poll (the port, the timer, LINT) until something wakes the
        // vCPU, [`HALT_POLL_US`] or the RUN's budget is spent, or user space wants the thread
        // back (KVM's halt polling; the region never sleeps, so a longer halt is HLT to user
        // space, which runs the vCPU again when it likes: the halt goes on).
        let poll_start = platform.tsc();
        let poll = tsc_ticks(platform, HALT_POLL_US);
        loop {
            let (halted, waiting, nmi, extint, pending) = {
                let Some(u) = self.apic.as_deref() else {
                    return Ok(BeforeEntry::Enter);
                };
                (
                    u.halted,
                    u.wait_for_sipi,
                    u.nmi,
                    u.extint.is_some(),
                    u.local.pending_vector().is_some(),
                )
            };
            if waiting {
                // Only SIPI (or INIT again) ends the wait; collect already applied a SIPI.
            } else if !halted {
                break;
            } else {
                let if_set =
                    self.core.with_vmcs(root, |vmcs, _| vmcs.guest_rflags())?? & RFLAGS_IF != 0;
                if nmi || (if_set && (extint || pending)) {
                    if let Some(u) = self.apic.as_deref_mut() {
                        u.halted = false;
                    }
                    break;
                }
            }
            if self.user_event_pending() || platform.user_return_pending() {
                return Ok(BeforeEntry::Stay(ExitStatus::Interrupt));
            }
            let now = platform.tsc();
            if now.wrapping_sub(self.run_start) >= self.run_budget
                || now.wrapping_sub(poll_start) >= poll
            {
                return Ok(BeforeEntry::Stay(ExitStatus::Hlt));
            }
            core::hint::spin_loop();
            self.apic_collect(root)?;
        }
        self.apic_kick(platform, root.cpu());
        self.apic_inject(root)?;
        Ok(BeforeEntry::Enter)
    }

    /// After a fast path that left this vCPU's APIC as the last entry's work left it
    /// ([`FastExit::Unchanged`]): whether the next entry may skip that work
    /// ([`HaxVcpu::apic_before_entry`]), as KVM's fast paths re-enter the guest unless a
    /// request is pending (`kvm_vcpu_exit_request`). Everything that work would act on is
    /// checked here and sends the entry the long way: a user-space kick or the RUN's time
    /// budget, an interrupt posted to this vCPU's port, a LINT change, an NMI or ExtINT
    /// waiting, a halt or wait-for-SIPI, the timer due. What is left is the same model as at
    /// the last entry (the TPR the guest changed through the TPR shadow meanwhile included:
    /// raising it never unblocks a vector, lowering it below the threshold exits by itself,
    /// SDM Vol. 3C §30.1.2), so the same injection, window, TPR threshold, virtual-APIC page
    /// and EOI-exit bitmap: only the timer's preemption value, which counts from the entry,
    /// is computed again. `now`: the guest TSC the fast path read.
    #[inline(always)]
    pub(in crate::vcpu::haxm) fn apic_reenter_direct<P: Platform>(
        &mut self,
        platform: &P,
        now: u64,
    ) -> bool {
        if self.user_event_pending()
            || platform.user_return_pending()
            || platform.tsc().wrapping_sub(self.run_start) >= self.run_budget
        {
            return false;
        }
        let rate = self.core.controls().preemption_timer_rate;
        let slice = self.preemption_ticks;
        let Some(u) = self.apic.as_deref_mut() else {
            return false;
        };
        if u.nmi
            || u.extint.is_some()
            || u.halted
            || u.wait_for_sipi
            || u.bus.port(u.index).is_some_and(|p| p.pending())
            || u.bus.lint_pending(u.index)
            || u.local.timer_deadline().is_some_and(|d| now >= d)
        {
            return false;
        }
        u.now = now;
        u.preempt = u.timer_preempt(rate, slice);
        true
    }

    /// NMI, ExtINT or the highest deliverable vector into the VM-entry interruption field;
    /// the interrupt window, the TPR threshold and the timer's preemption value.
    // Its own frame: the RUN loop's stays within the 2 KiB budget (`cargo xtask stack`).
    #[inline(never)]
    fn apic_inject<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        // Whether the guest can take an interrupt now (VMREADs of RFLAGS and the
        // interruptibility state) matters only when there is one to inject by the entry
        // field: with virtual-interrupt delivery the CPU takes the fixed vectors itself.
        let wanted = self
            .apic
            .as_deref()
            .is_some_and(|u| u.extint.is_some() || (!u.vid && u.local.pending_vector().is_some()));
        let can = wanted && self.apic_can_inject(root)?;
        let rate = self.core.controls().preemption_timer_rate;
        let slice = self.preemption_ticks;
        let Some(u) = self.apic.as_deref_mut() else {
            return Ok(());
        };
        let nmi = u.nmi;
        let extint = u.extint;
        // With virtual-interrupt delivery the CPU delivers the fixed vectors (RVI).
        let vid = u.vid;
        let vector = if vid { None } else { u.local.pending_vector() };
        let tpr = u.local.tpr();
        let has_vapic = u.vapic.is_some();
        let (took_nmi, took_ext, took_vector) =
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(bool, bool, bool), VmFail> {
                    let entry = vmcs.vm_entry_interruption_information()?;
                    if entry & VALID != 0 {
                        return Ok((false, false, false));
                    }
                    if nmi {
                        // NMI blocking (bit 3) and MOV-SS blocking (bit 1) hold an NMI back
                        // (SDM Vol. 3C §27.3.1.5).
                        let s = vmcs.guest_interruptibility_state()?;
                        if s & 0b1010 == 0 {
                            vmcs.set_vm_entry_interruption_information(VALID | (2 << 8) | 2);
                            return Ok((true, false, false));
                        }
                    }
                    if !can {
                        return Ok((false, false, false));
                    }
                    if let Some(v) = extint {
                        vmcs.set_vm_entry_interruption_information(VALID | u32::from(v));
                        return Ok((false, true, false));
                    }
                    if let Some(v) = vector {
                        vmcs.set_vm_entry_interruption_information(VALID | u32::from(v));
                        return Ok((false, false, true));
                    }
                    Ok((false, false, false))
                })??;
        if took_nmi {
            u.nmi = false;
        }
        if took_ext {
            u.extint = None;
        }
        if took_vector {
            if let Some(v) = vector {
                u.local.ack(v);
            }
        }
        // A vector still pending that the guest cannot take yet: the window (if it is held
        // back by RFLAGS.IF or a shadow) or the TPR threshold (if by the TPR).
        let still = if vid { None } else { u.local.pending_vector() };
        u.window = (still.is_some() && !took_vector) || (u.extint.is_some() && !took_ext);
        let blocked_by_tpr = u
            .local
            .highest_irr()
            .filter(|&v| still.is_none() && v >> 4 <= tpr >> 4);
        let threshold = blocked_by_tpr.map_or(0, |v| u32::from(v >> 4).min(u32::from(tpr >> 4)));
        u.preempt = u.timer_preempt(rate, slice);
        let new_tpr = u.local.tpr();
        u.set_vtpr(new_tpr);
        if vid {
            // The CPU compares RVI with the virtual PPR itself: no TPR threshold.
            self.apic_vid_push(root)?;
        } else if has_vapic {
            self.core
                .with_vmcs(root, |vmcs, _| vmcs.set_tpr_threshold(threshold))?;
        }
        Ok(())
    }

    /// The preemption-timer value of the next entry: the APIC timer's, when sooner than the
    /// slice.
    pub(in crate::vcpu::haxm) fn entry_preemption_ticks(&self) -> Option<u32> {
        match self.apic.as_deref().and_then(|u| u.preempt) {
            Some(t) => Some(t),
            None => self.preemption_ticks,
        }
    }

    /// Whether the APIC needs an interrupt window.
    pub(in crate::vcpu::haxm) fn apic_wants_window(&self) -> bool {
        self.apic.as_deref().is_some_and(|u| u.window)
    }

    /// After the model took a register write (any interface) that may change the registers
    /// the virtual-APIC page mirrors: the image is rewritten before the next entry
    /// (APIC-register virtualization, `apic_vid.rs`).
    pub(in crate::vcpu::haxm) fn apic_image_dirty(&mut self) {
        if let Some(u) = self.apic.as_deref_mut() {
            u.image_dirty = true;
        }
    }

    /// Acts on what an APIC register write asks for: an IPI routed on the bus (the targets
    /// in the guest kicked), nothing else needs the vCPU (an EOI broadcast has no IOAPIC to
    /// reach; a timer change is picked up at the next entry).
    pub(in crate::vcpu::haxm) fn apic_effect(&mut self, effect: Effect) {
        let Some(u) = self.apic.as_deref_mut() else {
            return;
        };
        if let Some(port) = u.bus.port(u.index) {
            port.publish(&u.local);
        }
        // The TPR may have changed (x2APIC TPR, xAPIC TPR): the virtual TPR follows, or the
        // next entry would take the page's stale value for a guest CR8 write.
        let tpr = u.local.tpr();
        u.set_vtpr(tpr);
        if let Effect::Ipi(ipi) = effect {
            if ipi.is_fixed_self() {
                // To this vCPU alone: straight into its model, which the next entry reads
                // (the port would only hand it over there; a self-IPI is the interrupt
                // handler's hot case, SDM Vol. 3A §11.6.1).
                u.local.accept(ipi.irq);
                // A level-triggered vector sets its TMR bit, which the page mirrors with
                // APIC-register virtualization.
                u.image_dirty |= u.arv && ipi.irq.level_triggered;
                return;
            }
            let targets = u.bus.deliver(&ipi, Some(u.index));
            u.kicks |= targets & !(1 << u.index);
        }
    }

    /// Kicks the vCPUs this one sent IPIs to that are in the guest on other CPUs.
    pub(in crate::vcpu::haxm) fn apic_kick<P: Platform>(&mut self, platform: &P, cpu: u32) {
        if let Some(u) = self.apic.as_deref_mut() {
            if u.kicks != 0 {
                u.bus
                    .kick(platform, core::mem::take(&mut u.kicks), Some(cpu));
            }
        }
    }
}

/// [`HaxVcpu::note_running`]'s work, out of line: only a vCPU with an in-kernel APIC gets here.
#[inline(never)]
fn note_running_on(u: &ApicUnit, cpu: u32) {
    u.bus.set_running(u.index, cpu);
}
