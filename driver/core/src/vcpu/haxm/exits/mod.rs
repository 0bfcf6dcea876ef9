//! Exit handling: one function picks the handler for each basic exit reason (SDM Vol. 3C
//! Appendix C); one room per exit family below.

use super::*;
mod cr_dr;
pub(in crate::vcpu::haxm) use cr_dr::guest_cr;
pub(in crate::vcpu::haxm) use msr::{MsrWriter, SOFT_MSRS};
mod task;
pub use task::TaskSource;
pub use task::TaskSwitch;
pub(in crate::vcpu::haxm) use task::{Failed, NewTask};
mod emulation;
mod io;
mod mmio;
pub use emulation::Unemulated;
pub(in crate::vcpu::haxm) use emulation::{unemulated, Emulation, Outcome};
mod msr;
mod xsave;

impl HaxVcpu {
    pub(in crate::vcpu::haxm) fn handle<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        exit: &VmExit,
    ) -> Result<Next, HaxError> {
        Ok(match *exit {
            VmExit::ExternalInterrupt => Next::User(ExitStatus::Interrupt),
            // The in-kernel APIC's timer expired (the next entry fires it), or the slice ended.
            VmExit::PreemptionTimer => match self.apic_timer_exit(root)? {
                Some(next) => next,
                None => Next::User(ExitStatus::Interrupt),
            },
            VmExit::InterruptWindow => {
                self.core
                    .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                        let proc = vmcs.primary_processor_based_vm_execution_controls()?;
                        vmcs.set_primary_processor_based_vm_execution_controls(
                            proc & !PrimaryProcControls::INTERRUPT_WINDOW_EXITING.bits(),
                        );
                        Ok(())
                    })??;
                self.window_on = false;
                Next::Resume
            }
            VmExit::TripleFault => self.panic(PanicReason::TripleFault),
            VmExit::Hlt if self.has_apic() => self.apic_halt(root)?,
            VmExit::Hlt => {
                self.skip(root)?;
                if self.vectors_pending() {
                    Next::Resume
                } else {
                    Next::User(ExitStatus::Hlt)
                }
            }
            VmExit::Cpuid => {
                let apic_id = self.vcpu_id as u8;
                let x = self.core.xcr0().get();
                let osxsave = self.core.guest_osxsave();
                self.core
                    .with_vmcs(root, |vmcs, regs| -> Result<(), VmFail> {
                        let (leaf, subleaf) =
                            (regs.gpr[reg::RAX] as u32, regs.gpr[reg::RCX] as u32);
                        // The fix-ups follow the leaf whose data answered (a leaf above the
                        // maximum answers as the highest basic leaf, 0xD's sizes included).
                        let (mut r, leaf, subleaf) = cpuid.lookup_served(leaf, subleaf, apic_id);
                        xsave::cpuid_fixup(x, osxsave, leaf, subleaf, &mut r);
                        regs.gpr[reg::RAX] = u64::from(r[0]);
                        regs.gpr[reg::RBX] = u64::from(r[1]);
                        regs.gpr[reg::RCX] = u64::from(r[2]);
                        regs.gpr[reg::RDX] = u64::from(r[3]);
                        skip_instruction(vmcs)
                    })??;
                Next::Resume
            }
            VmExit::Rdmsr | VmExit::Wrmsr => {
                let write = matches!(exit, VmExit::Wrmsr);
                let msr = self.core.regs.gpr[reg::RCX] as u32;
                let value = (self.core.regs.gpr[reg::RDX] << 32)
                    | (self.core.regs.gpr[reg::RAX] & 0xffff_ffff);
                if let Some(next) = self.apic_msr(root, cpuid, msr, write.then_some(value))? {
                    return Ok(next);
                }
                if write {
                    let v = (self.core.regs.gpr[reg::RDX] << 32)
                        | (self.core.regs.gpr[reg::RAX] & 0xffff_ffff);
                    if self.write_msr(root, msr, v, MsrWriter::Guest)? {
                        self.skip(root)?;
                    } else {
                        self.inject_gp(root)?;
                    }
                } else {
                    match self.read_msr(root, msr)? {
                        Some(v) => {
                            self.core.regs.gpr[reg::RAX] = v & 0xffff_ffff;
                            self.core.regs.gpr[reg::RDX] = v >> 32;
                            self.skip(root)?;
                        }
                        None => self.inject_gp(root)?,
                    }
                }
                Next::Resume
            }
            VmExit::CrAccess(cr) => {
                // MAXPHYADDR as the guest sees it (CPUID 0x80000008 EAX[7:0]).
                let features = cpuid.features();
                let maxphyaddr = features.maxphyaddr;
                // CR4.OSXSAVE: #GP unless CPUID shows XSAVE (SDM Vol. 3A §2.5).
                let xsave = features.leaf1_ecx & (1 << 26) != 0;
                self.cr_access(root, cr, maxphyaddr, xsave)?;
                Next::Resume
            }
            VmExit::Io(io) => self.io(root, io)?,
            VmExit::EptViolation {
                gpa, qualification, ..
            } => {
                // Resolved outside the region (it may pin). Where the instruction is, for the
                // MMIO emulator, is read now with the exit's VMCS at hand: the fields are the
                // ones an MMIO exit reads anyway, so MMIO costs no extra VMREAD and no third
                // step; a RAM violation (first touch of a chunk, or after a zap) pays them.
                let fetch = self.fetch_site(root)?;
                self.wait_for_memory(MemoryRequest::EptViolation {
                    gpa,
                    access: EptAccess::from_exit_qualification(qualification.bits()),
                    qualification: qualification.bits(),
                    fetch,
                })
            }
            VmExit::EptMisconfig { gpa } => self.panic(PanicReason::EptMisconfig { gpa }),
            VmExit::ExceptionOrNmi {
                interruption,
                qualification,
                ..
            } => match interruption.kind {
                // An NMI for the host arrived while the guest ran ("NMI exiting"): the host's
                // own handler gets it now, before anything else runs on this CPU.
                InterruptionType::Nmi => {
                    // SAFETY: CPL0 right after the exit on the CPU that took it, inside the
                    // non-preemptible region with the host IDT loaded.
                    unsafe { root.vmx().raise_host_nmi() };
                    Next::Resume
                }
                // #DB and #BP are intercepted only for VCPU_DEBUG (`debug.rs`).
                _ if interruption.vector == 1 || interruption.vector == 3 => {
                    self.debug_exception(root, interruption, qualification)?
                }
                _ => self.panic(PanicReason::FatalException {
                    vector: interruption.vector,
                }),
            },
            VmExit::Other { reason, .. } => match reason {
                // Task switch: unconditional in VMX (SDM Vol. 3C §26.2).
                9 => self.task_switch_exit(root)?,
                // TPR below threshold (TPR shadow, SDM Vol. 3C §30.1.2): the guest lowered its
                // TPR under a pending vector's class; the next entry delivers it. Trap-like:
                // RIP is already past the instruction.
                43 => Next::Resume,
                // APIC access through the APIC-access page (`apic_virt.rs`).
                44 => self.apic_access_exit(root)?,
                // EOI-induced (virtual-interrupt delivery, `apic_vid.rs`).
                45 => self.apic_eoi_exit(root)?,
                // APIC write (virtual-interrupt delivery: an ICR write that is not a
                // self-IPI, `apic_virt.rs`).
                56 if self.has_apic() => self.apic_write_exit(root)?,
                // DR access: DR0-3/6 kept in software, DR7 in the VMCS.
                29 => {
                    self.dr_access(root)?;
                    Next::Resume
                }
                // WBINVD (SeaBIOS runs it on every boot) and INVD: without device passthrough
                // every guest access is coherent write-back memory, so flushing caches does
                // nothing the guest can observe; the host is spared a multi-millisecond stall
                // (KVM skips WBINVD the same way unless it has non-coherent DMA; INVD is
                // treated as WBINVD, which is always a correct implementation of it).
                13 | 54 => {
                    self.skip(root)?;
                    Next::Resume
                }
                // INVLPG (exits only where the CPU forces INVLPG exiting): the guest's
                // translations for this VPID are flushed (SDM Vol. 3C §29.4.3.3).
                14 => {
                    let vpid = self.core.config().vpid;
                    let q = self
                        .core
                        .with_vmcs(root, |vmcs, _| vmcs.exit_qualification())??;
                    let kind = crate::vmx::instructions::InvvpidType::IndividualAddress;
                    // SAFETY: VMX root on this CPU (the VMCS is current here); INVVPID of
                    // one address of this vCPU's own VPID only drops TLB entries.
                    let r = unsafe { root.vmx().invvpid(kind, vpid, q) };
                    if r.is_err() {
                        // A non-canonical address fails INVVPID type 0 (SDM Vol. 3C INVVPID);
                        // flushing the whole VPID is always allowed.
                        let all = crate::vmx::instructions::InvvpidType::SingleContext;
                        // SAFETY: as above.
                        unsafe { root.vmx().invvpid(all, vpid, 0) }.map_err(HaxError::from)?;
                    }
                    self.skip(root)?;
                    Next::Resume
                }
                // RDTSC / RDTSCP (exit only where the CPU forces RDTSC exiting): the guest TSC
                // is the host's plus the offset (SDM Vol. 3C §27.6.5).
                16 | 51 => {
                    let aux = self
                        .core
                        .swapped_msr(root, crate::vmx::root::IA32_TSC_AUX)
                        .unwrap_or(0);
                    self.core
                        .with_vmcs(root, |vmcs, regs| -> Result<(), VmFail> {
                            let tsc = vmcs.vmx().rdtsc().wrapping_add(vmcs.tsc_offset()?);
                            regs.gpr[reg::RAX] = tsc & 0xffff_ffff;
                            regs.gpr[reg::RDX] = tsc >> 32;
                            if reason == 51 {
                                regs.gpr[reg::RCX] = aux & 0xffff_ffff;
                            }
                            skip_instruction(vmcs)
                        })??;
                    Next::Resume
                }
                // GETSEC, VMCALL, VMX instructions, RDPMC: #UD (HAXM PR #247) / #GP. XSETBV
                // (55) decodes as `VmExit::Xsetbv`.
                11 | 18..=27 | 50 | 53 | 55 => {
                    self.inject_exception(root, 6, None)?;
                    Next::Resume
                }
                15 => {
                    self.inject_gp(root)?;
                    Next::Resume
                }
                // MWAIT, MONITOR: no-ops (MONITOR is hidden in CPUID).
                36 | 39 => {
                    self.skip(root)?;
                    Next::Resume
                }
                other => self.panic(PanicReason::UnhandledExit { reason: other }),
            },
            VmExit::Vmcall => {
                self.inject_exception(root, 6, None)?;
                Next::Resume
            }
            VmExit::Xsetbv => self.xsetbv(root, cpuid)?,
            VmExit::Init | VmExit::Sipi { .. } => Next::Resume,
            // PAUSE (exits only where the CPU forces PAUSE exiting): a hint, done.
            VmExit::Pause => {
                self.skip(root)?;
                Next::Resume
            }
            // A debugger's single step on the monitor-trap route (`debug.rs`).
            VmExit::MonitorTrap if self.monitor_trap_step(root)? => Next::User(ExitStatus::Debug),
            // NMI-window and monitor-trap exits otherwise: rhax turns neither control on;
            // where one was on anyway, it is turned off and the guest goes on.
            VmExit::NmiWindow | VmExit::MonitorTrap => {
                let bits = PrimaryProcControls::NMI_WINDOW_EXITING.bits()
                    | PrimaryProcControls::MONITOR_TRAP_FLAG.bits();
                self.core
                    .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                        let proc = vmcs.primary_processor_based_vm_execution_controls()?;
                        vmcs.set_primary_processor_based_vm_execution_controls(proc & !bits);
                        Ok(())
                    })??;
                Next::Resume
            }
            other => self.panic(PanicReason::UnhandledExit {
                reason: other.basic_reason(),
            }),
        })
    }

    pub(in crate::vcpu::haxm) fn panic(&mut self, why: PanicReason) -> Next {
        self.panicked = Some(why);
        if let PanicReason::Unemulated(u) = why {
            // The exit carries the instruction: the IO buffer holds its bytes (the record of
            // `rhax_api::ext::RhaxUnemulated`).
            let mut r = rhax_api::ext::RhaxUnemulated {
                magic: rhax_api::ext::RHAX_UNEMULATED_MAGIC,
                len: u32::from(u.len),
                gpa: u.gpa,
                bytes: [0; 16],
            };
            r.bytes[..u.bytes.len()].copy_from_slice(&u.bytes);
            let buf = self.iobuf.bytes_mut();
            let n = core::mem::size_of::<rhax_api::ext::RhaxUnemulated>();
            if let Some(dst) = buf.get_mut(..n) {
                dst.copy_from_slice(r.as_bytes());
            }
        }
        Next::User(ExitStatus::StateChange)
    }

    pub(in crate::vcpu::haxm) fn skip<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        self.core
            .with_vmcs(root, |vmcs, _| skip_instruction(vmcs))??;
        Ok(())
    }

    pub(in crate::vcpu::haxm) fn paging<V: Vmx>(
        vmcs: &mut Vmcs<'_, Counted<'_, V>>,
    ) -> Result<PagingMode, VmFail> {
        let cr0 = vmcs.guest_cr0()?;
        let cr4 = vmcs.guest_cr4()?;
        let lma = vmcs.vm_entry_controls()? & EntryControls::IA32E_MODE_GUEST.bits() != 0;
        // EFER.NXE only means something to a walk with XD bits (PAE or IA-32e paging): the
        // VMREAD is paid only then, not on every MMIO exit of a real-mode or 32-bit guest.
        let xd_paging = cr0 & CR0_PG != 0 && (lma || cr4 & crate::vcpu::bits::CR4_PAE != 0);
        let nxe = xd_paging && vmcs.guest_ia32_efer()? & crate::vcpu::bits::EFER_NXE != 0;
        Ok(PagingMode {
            cr0,
            cr3: vmcs.guest_cr3()?,
            cr4,
            lma,
            nxe,
        })
    }

    /// CPL 3: SS.DPL in protected mode (SDM Vol. 3A §6.5: CPL is CS.DPL = SS.DPL), always in
    /// virtual-8086 mode, never in real mode.
    pub(in crate::vcpu::haxm) fn user_mode<V: Vmx>(
        vmcs: &mut Vmcs<'_, Counted<'_, V>>,
        mode: &PagingMode,
        rflags: u64,
    ) -> Result<bool, VmFail> {
        if mode.cr0 & 1 == 0 {
            return Ok(false);
        }
        if rflags & RFLAGS_VM != 0 {
            return Ok(true);
        }
        Ok((vmcs.guest_ss_access_rights()? >> 5) & 3 == 3)
    }

    /// Injects #PF with `code`, CR2 = `linear` (SDM Vol. 3A §7.15 "Interrupt 14").
    pub(in crate::vcpu::haxm) fn inject_page_fault<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        linear: u64,
        code: u32,
    ) -> Result<(), HaxError> {
        self.core.set_cr2(linear);
        self.inject_exception(root, 14, Some(code))
    }

    pub(in crate::vcpu::haxm) fn gpr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        n: u8,
    ) -> Result<u64, HaxError> {
        if usize::from(n) == reg::RSP {
            Ok(self.core.with_vmcs(root, |vmcs, _| vmcs.guest_rsp())??)
        } else {
            Ok(self.core.regs.gpr[usize::from(n & 15)])
        }
    }

    pub(in crate::vcpu::haxm) fn set_gpr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        n: u8,
        v: u64,
    ) -> Result<(), HaxError> {
        if usize::from(n) == reg::RSP {
            self.core.with_vmcs(root, |vmcs, _| vmcs.set_guest_rsp(v))?;
        } else {
            self.core.regs.gpr[usize::from(n & 15)] = v;
        }
        Ok(())
    }
}
