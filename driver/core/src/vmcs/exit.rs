//! VM-exit decoding: the exit-reason field and, per reason, only the fields that reason needs
//! (Intel SDM Vol. 3C §28.2 "Recording VM-Exit Information", Appendix C "VMX Basic Exit
//! Reasons"; 2023+ numbering).

use crate::vmcs::Vmcs;
use crate::vmx::{VmFail, Vmx};

/// Basic exit reasons (SDM Appendix C) the decoder names.
pub mod reason {
    /// Exception or non-maskable interrupt.
    pub const EXCEPTION_OR_NMI: u16 = 0;
    /// External interrupt.
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    /// Triple fault.
    pub const TRIPLE_FAULT: u16 = 2;
    /// INIT signal.
    pub const INIT: u16 = 3;
    /// Start-up IPI.
    pub const SIPI: u16 = 4;
    /// Interrupt window.
    pub const INTERRUPT_WINDOW: u16 = 7;
    /// NMI window.
    pub const NMI_WINDOW: u16 = 8;
    /// Task switch.
    pub const TASK_SWITCH: u16 = 9;
    /// CPUID.
    pub const CPUID: u16 = 10;
    /// HLT.
    pub const HLT: u16 = 12;
    /// INVD.
    pub const INVD: u16 = 13;
    /// VMCALL.
    pub const VMCALL: u16 = 18;
    /// Control-register access.
    pub const CR_ACCESS: u16 = 28;
    /// MOV DR.
    pub const DR_ACCESS: u16 = 29;
    /// I/O instruction.
    pub const IO_INSTRUCTION: u16 = 30;
    /// RDMSR.
    pub const RDMSR: u16 = 31;
    /// WRMSR.
    pub const WRMSR: u16 = 32;
    /// VM-entry failure due to invalid guest state.
    pub const INVALID_GUEST_STATE: u16 = 33;
    /// VM-entry failure due to MSR loading.
    pub const MSR_LOADING: u16 = 34;
    /// Monitor trap flag.
    pub const MONITOR_TRAP_FLAG: u16 = 37;
    /// PAUSE.
    pub const PAUSE: u16 = 40;
    /// VM-entry failure due to machine-check event.
    pub const MACHINE_CHECK: u16 = 41;
    /// TPR below threshold.
    pub const TPR_BELOW_THRESHOLD: u16 = 43;
    /// APIC access.
    pub const APIC_ACCESS: u16 = 44;
    /// EPT violation.
    pub const EPT_VIOLATION: u16 = 48;
    /// EPT misconfiguration.
    pub const EPT_MISCONFIG: u16 = 49;
    /// VMX-preemption timer expired.
    pub const PREEMPTION_TIMER: u16 = 52;
    /// WBINVD.
    pub const WBINVD: u16 = 54;
    /// XSETBV.
    pub const XSETBV: u16 = 55;
    /// Page-modification log full.
    pub const PML_FULL: u16 = 62;
}

/// Direction of an I/O access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    /// OUT, OUTS (qualification bit 3 = 0).
    Out,
    /// IN, INS (bit 3 = 1).
    In,
}

/// An I/O-instruction exit, decoded from the exit qualification (SDM Table 28-5 "Exit
/// Qualification for I/O Instructions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccess {
    /// Bits 31:16: port number.
    pub port: u16,
    /// Bits 2:0 + 1: access size in bytes (1, 2 or 4).
    pub size: u8,
    /// Bit 3.
    pub direction: IoDirection,
    /// Bit 4: INS/OUTS.
    pub string: bool,
    /// Bit 5: REP prefix.
    pub rep: bool,
    /// Bit 6: the port came from an immediate operand (else DX).
    pub immediate: bool,
}

impl IoAccess {
    /// Decodes the exit qualification of an I/O-instruction exit.
    pub const fn from_qualification(q: u64) -> IoAccess {
        IoAccess {
            port: (q >> 16) as u16,
            size: ((q & 7) + 1) as u8,
            direction: if q & 8 != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate: q & (1 << 6) != 0,
        }
    }
}

/// The access of a control-register exit (SDM Table 28-3, bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessType {
    /// MOV to CR from this GPR (0).
    MovTo {
        /// Register number (bits 11:8).
        gpr: u8,
    },
    /// MOV from CR to this GPR (1).
    MovFrom {
        /// Register number.
        gpr: u8,
    },
    /// CLTS (2).
    Clts,
    /// LMSW (3).
    Lmsw {
        /// Bits 31:16: the LMSW source data.
        source: u16,
        /// Bit 6: memory operand.
        memory: bool,
    },
}

/// A control-register-access exit (SDM Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// Bits 3:0: CR number.
    pub cr: u8,
    /// The access.
    pub access: CrAccessType,
}

impl CrAccess {
    /// Decodes the exit qualification of a control-register-access exit.
    pub const fn from_qualification(q: u64) -> CrAccess {
        let gpr = ((q >> 8) & 0xf) as u8;
        CrAccess {
            cr: (q & 0xf) as u8,
            access: match (q >> 4) & 3 {
                0 => CrAccessType::MovTo { gpr },
                1 => CrAccessType::MovFrom { gpr },
                2 => CrAccessType::Clts,
                _ => CrAccessType::Lmsw {
                    source: (q >> 16) as u16,
                    memory: q & (1 << 6) != 0,
                },
            },
        }
    }
}

bitflags::bitflags! {
    /// Exit qualification of an EPT violation (SDM Table 28-7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EptViolationQualification: u64 {
        /// Bit 0: data read.
        const READ = 1 << 0;
        /// Bit 1: data write.
        const WRITE = 1 << 1;
        /// Bit 2: instruction fetch.
        const FETCH = 1 << 2;
        /// Bit 3: the guest-physical address was readable.
        const READABLE = 1 << 3;
        /// Bit 4: writable.
        const WRITABLE = 1 << 4;
        /// Bit 5: executable (supervisor-mode executable with mode-based execute control).
        const EXECUTABLE = 1 << 5;
        /// Bit 6: user-mode executable (mode-based execute control).
        const USER_EXECUTABLE = 1 << 6;
        /// Bit 7: the guest linear-address field is valid.
        const LINEAR_ADDRESS_VALID = 1 << 7;
        /// Bit 8: the access was the translation of a linear address (else a paging-structure
        /// access).
        const TRANSLATED_ACCESS = 1 << 8;
        /// Bit 9: user-mode linear address (advanced VM-exit information).
        const USER_MODE = 1 << 9;
        /// Bit 10: read/write linear address.
        const LINEAR_WRITABLE = 1 << 10;
        /// Bit 11: execute-disable linear address.
        const LINEAR_EXECUTE_DISABLE = 1 << 11;
        /// Bit 12: NMI unblocking due to IRET.
        const NMI_UNBLOCKING = 1 << 12;
        /// Bit 13: shadow-stack access.
        const SHADOW_STACK = 1 << 13;
        /// Bit 14: supervisor shadow-stack page.
        const SUPERVISOR_SHADOW_STACK = 1 << 14;
        /// Bit 15: guest-paging verification.
        const GUEST_PAGING_VERIFICATION = 1 << 15;
        /// Bit 16: asynchronous to instruction execution.
        const ASYNCHRONOUS = 1 << 16;
    }
}

/// Type of an interruption (bits 10:8 of the interruption-information fields, SDM §28.2.2
/// "Format of the VM-Exit Interruption-Information Field").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptionType {
    /// 0.
    ExternalInterrupt,
    /// 2.
    Nmi,
    /// 3.
    HardwareException,
    /// 4.
    SoftwareInterrupt,
    /// 5.
    PrivilegedSoftwareException,
    /// 6.
    SoftwareException,
    /// 7.
    OtherEvent,
    /// 1 (reserved).
    Reserved,
}

/// A decoded interruption-information field (exit interruption info or IDT-vectoring info).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interruption {
    /// Bits 7:0.
    pub vector: u8,
    /// Bits 10:8.
    pub kind: InterruptionType,
    /// Bit 11 set: the error code from the matching error-code field.
    pub error_code: Option<u32>,
    /// Bit 12: NMI unblocking due to IRET.
    pub nmi_unblocking: bool,
}

impl Interruption {
    fn decode(info: u32, error_code: Option<u32>) -> Interruption {
        Interruption {
            vector: info as u8,
            kind: match (info >> 8) & 7 {
                0 => InterruptionType::ExternalInterrupt,
                2 => InterruptionType::Nmi,
                3 => InterruptionType::HardwareException,
                4 => InterruptionType::SoftwareInterrupt,
                5 => InterruptionType::PrivilegedSoftwareException,
                6 => InterruptionType::SoftwareException,
                7 => InterruptionType::OtherEvent,
                _ => InterruptionType::Reserved,
            },
            error_code,
            nmi_unblocking: info & (1 << 12) != 0,
        }
    }
}

/// A decoded VM exit. Each variant carries what its handler needs; everything else stays in the
/// VMCS (read lazily through the cache if a handler wants it, e.g. the instruction length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmExit {
    /// Exception or NMI (reason 0).
    ExceptionOrNmi {
        /// The exit interruption information.
        interruption: Interruption,
        /// Exit qualification for #DB (DR6 bits) and #PF (faulting linear address); 0 else.
        qualification: u64,
        /// The event being delivered when the exit happened, if any.
        vectoring: Option<Interruption>,
    },
    /// External interrupt (1).
    ExternalInterrupt,
    /// Triple fault (2).
    TripleFault,
    /// INIT signal (3).
    Init,
    /// Start-up IPI (4), with its vector (exit qualification bits 7:0).
    Sipi {
        /// SIPI vector.
        vector: u8,
    },
    /// Interrupt window (7).
    InterruptWindow,
    /// NMI window (8).
    NmiWindow,
    /// CPUID (10).
    Cpuid,
    /// HLT (12).
    Hlt,
    /// VMCALL (18).
    Vmcall,
    /// Control-register access (28).
    CrAccess(CrAccess),
    /// I/O instruction (30).
    Io(IoAccess),
    /// RDMSR (31): the MSR number is in the guest RCX.
    Rdmsr,
    /// WRMSR (32): MSR number in RCX, value in EDX:EAX.
    Wrmsr,
    /// Monitor trap flag (37).
    MonitorTrap,
    /// PAUSE (40).
    Pause,
    /// EPT violation (48).
    EptViolation {
        /// Guest-physical address.
        gpa: u64,
        /// Guest linear address, when bit 7 of the qualification says it is valid.
        gla: Option<u64>,
        /// The qualification bits.
        qualification: EptViolationQualification,
        /// The event being delivered when the exit happened, if any.
        vectoring: Option<Interruption>,
    },
    /// EPT misconfiguration (49).
    EptMisconfig {
        /// Guest-physical address.
        gpa: u64,
    },
    /// VMX-preemption timer expired (52).
    PreemptionTimer,
    /// XSETBV (55).
    Xsetbv,
    /// A VM entry that failed after the control and host checks (exit-reason bit 31): reasons
    /// 33 (invalid guest state), 34 (MSR loading), 41 (machine check).
    EntryFailure {
        /// Basic exit reason.
        reason: u16,
        /// Exit qualification (SDM §27.8: 0 default, 2 PDPTE, 3 NMI injection, 4 link
        /// pointer; for 34, the failing MSR-load entry).
        qualification: u64,
    },
    /// Any other reason, undecoded.
    Other {
        /// Basic exit reason.
        reason: u16,
        /// The event being delivered when the exit happened, if the reason can have one.
        vectoring: Option<Interruption>,
    },
}

impl VmExit {
    /// The basic exit reason this exit came from.
    pub fn basic_reason(&self) -> u16 {
        use self::reason as r;
        match *self {
            VmExit::ExceptionOrNmi { .. } => r::EXCEPTION_OR_NMI,
            VmExit::ExternalInterrupt => r::EXTERNAL_INTERRUPT,
            VmExit::TripleFault => r::TRIPLE_FAULT,
            VmExit::Init => r::INIT,
            VmExit::Sipi { .. } => r::SIPI,
            VmExit::InterruptWindow => r::INTERRUPT_WINDOW,
            VmExit::NmiWindow => r::NMI_WINDOW,
            VmExit::Cpuid => r::CPUID,
            VmExit::Hlt => r::HLT,
            VmExit::Vmcall => r::VMCALL,
            VmExit::CrAccess(_) => r::CR_ACCESS,
            VmExit::Io(_) => r::IO_INSTRUCTION,
            VmExit::Rdmsr => r::RDMSR,
            VmExit::Wrmsr => r::WRMSR,
            VmExit::MonitorTrap => r::MONITOR_TRAP_FLAG,
            VmExit::Pause => r::PAUSE,
            VmExit::EptViolation { .. } => r::EPT_VIOLATION,
            VmExit::EptMisconfig { .. } => r::EPT_MISCONFIG,
            VmExit::PreemptionTimer => r::PREEMPTION_TIMER,
            VmExit::Xsetbv => r::XSETBV,
            VmExit::EntryFailure { reason, .. } | VmExit::Other { reason, .. } => reason,
        }
    }
}

/// Reasons whose exit can happen during event delivery, so the IDT-vectoring information may
/// be valid (SDM §28.2.4): exceptions, triple fault, task switch, APIC access, EPT violation and
/// misconfiguration, PML full, SPP-related events; external interrupt and NMI window are
/// included conservatively. Instruction-caused exits (CPUID, I/O, ...) cannot have it, which is
/// why their decoding costs no VMREAD for it.
fn may_have_vectoring(basic: u16) -> bool {
    use self::reason as r;
    matches!(
        basic,
        r::EXCEPTION_OR_NMI
            | r::EXTERNAL_INTERRUPT
            | r::TRIPLE_FAULT
            | r::NMI_WINDOW
            | r::TASK_SWITCH
            | r::APIC_ACCESS
            | r::EPT_VIOLATION
            | r::EPT_MISCONFIG
            | r::PML_FULL
            | 66
    )
}

fn vectoring<V: Vmx>(vmcs: &mut Vmcs<'_, V>) -> Result<Option<Interruption>, VmFail> {
    let info = vmcs.idt_vectoring_information()?;
    if info & (1 << 31) == 0 {
        return Ok(None);
    }
    let code = if info & (1 << 11) != 0 {
        Some(vmcs.idt_vectoring_error_code()?)
    } else {
        None
    };
    Ok(Some(Interruption::decode(info, code)))
}

/// A VM exit as [`crate::vcpu::Vcpu::enter`] returns it: the exit-reason field and nothing
/// else (SDM §28.2.1). Whatever else an exit reports (qualification, interruption
/// information, guest-physical address, ...) costs a VMREAD each; the handler reads what it
/// uses through the VMCS cache, or decodes all of it with [`decode_reason`]. Four bytes, so
/// it travels in a register: building the full [`VmExit`] for every exit cost ~35 emulated
/// instructions of a ~420-instruction CPUID round trip (docs/bench/profile.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReason(u32);

impl ExitReason {
    /// Wraps the raw exit-reason field.
    pub const fn from_raw(raw: u32) -> ExitReason {
        ExitReason(raw)
    }

    /// The raw field (bit 31: VM-entry failure; bits 15:0 the basic reason).
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Bits 15:0: the basic exit reason ([`reason`]).
    pub const fn basic(self) -> u16 {
        self.0 as u16
    }

    /// Bit 31: the VM entry failed while loading guest state (SDM §27.8); the basic reason
    /// is then 33, 34 or 41.
    pub const fn entry_failed(self) -> bool {
        self.0 & (1 << 31) != 0
    }

    /// The basic reason of an exit that is not an entry failure, else `None`: what a
    /// handler matches on.
    pub const fn exit(self) -> Option<u16> {
        if self.entry_failed() {
            None
        } else {
            Some(self.basic())
        }
    }
}

/// Reads the exit reason (one VMREAD) and whatever that reason needs.
pub fn decode<V: Vmx>(vmcs: &mut Vmcs<'_, V>) -> Result<VmExit, VmFail> {
    let raw = vmcs.exit_reason()?;
    decode_reason(vmcs, raw)
}

/// The exits whose `VmExit` carries nothing but the reason (no VMREAD to decode them), by
/// basic reason; `None` for every other reason. One list for both decoders: the full one
/// ([`decode_reason`]) starts with it, and the HAXM vCPU's lazy decode takes these without
/// the full decode's call, jump table and `VmExit` through memory (~100 emulated
/// instructions for an x2APIC WRMSR exit).
#[inline(always)]
pub fn without_fields(basic: u16) -> Option<VmExit> {
    use self::reason as r;
    Some(match basic {
        r::EXTERNAL_INTERRUPT => VmExit::ExternalInterrupt,
        r::TRIPLE_FAULT => VmExit::TripleFault,
        r::INIT => VmExit::Init,
        r::INTERRUPT_WINDOW => VmExit::InterruptWindow,
        r::NMI_WINDOW => VmExit::NmiWindow,
        r::CPUID => VmExit::Cpuid,
        r::HLT => VmExit::Hlt,
        r::VMCALL => VmExit::Vmcall,
        r::RDMSR => VmExit::Rdmsr,
        r::WRMSR => VmExit::Wrmsr,
        r::MONITOR_TRAP_FLAG => VmExit::MonitorTrap,
        r::PAUSE => VmExit::Pause,
        r::PREEMPTION_TIMER => VmExit::PreemptionTimer,
        r::XSETBV => VmExit::Xsetbv,
        _ => return None,
    })
}

/// Decodes an exit whose raw exit-reason field was already read.
// Inlined into its two callers (`Vcpu::run`, `Vcpu::decode`): out of line, the frame and
// the `VmExit` returned through memory cost ~20 emulated instructions per exit.
#[inline]
pub fn decode_reason<V: Vmx>(vmcs: &mut Vmcs<'_, V>, raw: u32) -> Result<VmExit, VmFail> {
    use self::reason as r;
    let basic = raw as u16;
    if raw & (1 << 31) != 0 {
        return Ok(VmExit::EntryFailure {
            reason: basic,
            qualification: vmcs.exit_qualification()?,
        });
    }
    if let Some(exit) = without_fields(basic) {
        return Ok(exit);
    }
    Ok(match basic {
        r::EXCEPTION_OR_NMI => {
            let info = vmcs.vm_exit_interruption_information()?;
            let code = if info & (1 << 11) != 0 {
                Some(vmcs.vm_exit_interruption_error_code()?)
            } else {
                None
            };
            let interruption = Interruption::decode(info, code);
            // The qualification is defined for #DB (1) and #PF (14) only (SDM §28.2.1).
            let qualification = if matches!(interruption.vector, 1 | 14)
                && interruption.kind == InterruptionType::HardwareException
            {
                vmcs.exit_qualification()?
            } else {
                0
            };
            VmExit::ExceptionOrNmi {
                interruption,
                qualification,
                vectoring: vectoring(vmcs)?,
            }
        }
        r::SIPI => VmExit::Sipi {
            vector: vmcs.exit_qualification()? as u8,
        },
        r::CR_ACCESS => VmExit::CrAccess(CrAccess::from_qualification(vmcs.exit_qualification()?)),
        r::IO_INSTRUCTION => VmExit::Io(IoAccess::from_qualification(vmcs.exit_qualification()?)),
        r::EPT_VIOLATION => {
            let qualification =
                EptViolationQualification::from_bits_retain(vmcs.exit_qualification()?);
            let gpa = vmcs.guest_physical_address()?;
            let gla = if qualification.contains(EptViolationQualification::LINEAR_ADDRESS_VALID) {
                Some(vmcs.guest_linear_address()?)
            } else {
                None
            };
            VmExit::EptViolation {
                gpa,
                gla,
                qualification,
                vectoring: vectoring(vmcs)?,
            }
        }
        r::EPT_MISCONFIG => VmExit::EptMisconfig {
            gpa: vmcs.guest_physical_address()?,
        },
        other => VmExit::Other {
            reason: other,
            vectoring: if may_have_vectoring(other) {
                vectoring(vmcs)?
            } else {
                None
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_fields_gives_each_reasons_own_exit() {
        // The lazy decode (HAXM vCPU) and the full one share this list: each entry must be
        // the exit of its own reason, and the reasons with fields must not be in it.
        let mut listed = 0;
        for basic in 0..=u16::from(u8::MAX) {
            if let Some(exit) = without_fields(basic) {
                assert_eq!(exit.basic_reason(), basic, "{exit:?}");
                listed += 1;
            }
        }
        assert_eq!(listed, 14);
        for with_fields in [
            reason::EXCEPTION_OR_NMI,
            reason::IO_INSTRUCTION,
            reason::CR_ACCESS,
        ] {
            assert_eq!(without_fields(with_fields), None);
        }
    }

    #[test]
    fn io_qualification_decodes_per_table_28_5() {
        // OUT DX, AL to 0x3f8: size 1, out, DX operand.
        let q = 0x03f8_0000;
        let io = IoAccess::from_qualification(q);
        assert_eq!(
            io,
            IoAccess {
                port: 0x3f8,
                size: 1,
                direction: IoDirection::Out,
                string: false,
                rep: false,
                immediate: false
            }
        );
        // REP INSD from port 0x1f0, immediate? no; 4 bytes, in, string, rep.
        let io = IoAccess::from_qualification(0x01f0_0000 | 3 | 8 | 16 | 32);
        assert_eq!(
            (io.size, io.direction, io.string, io.rep),
            (4, IoDirection::In, true, true)
        );
        let io = IoAccess::from_qualification(0x0080_0000 | 1 | 64);
        assert_eq!((io.port, io.size, io.immediate), (0x80, 2, true));
    }

    #[test]
    fn cr_qualification_decodes_per_table_28_3() {
        assert_eq!(
            CrAccess::from_qualification(0x300),
            CrAccess {
                cr: 0,
                access: CrAccessType::MovTo { gpr: 3 }
            }
        );
        assert_eq!(
            CrAccess::from_qualification(0x14 | (5 << 8)).access,
            CrAccessType::MovFrom { gpr: 5 }
        );
        assert_eq!(
            CrAccess::from_qualification(0x0001_0070).access,
            CrAccessType::Lmsw {
                source: 1,
                memory: true
            }
        );
    }
}
