//! The scripted guest CPU of the `dispatch` harness: what the CPU does between a VM entry
//! and the next VM exit, as the software VMX's `CpuHook`.

use arbitrary::Arbitrary;
use rhax_core::vmcs::VmcsField;
use rhax_core::vmx::soft::GuestCpu;

use super::platform::{pool, GPAS, MSRS, POOL_RESET};

/// What the scripted guest CPU does between one entry and the next exit.
#[derive(Arbitrary, Debug, Clone)]
pub struct GuestExit {
    pub kind: ExitKind,
    /// IDT-vectoring information (an event whose delivery the exit interrupted).
    pub vectoring: Option<(u8, u8, u32)>,
    /// A GPR the guest changed.
    pub gpr: Option<(u8, u64)>,
    /// Guest state the guest changed (RFLAGS, interruptibility, CR0/CR4, CS access rights).
    pub state: Option<(u8, u64)>,
}

/// The exit kinds; each builds a plausible exit, `Raw` anything.
#[derive(Arbitrary, Debug, Clone)]
pub enum ExitKind {
    Io {
        port: u16,
        size: u8,
        inward: bool,
        imm: bool,
    },
    StringIo {
        port: u16,
        size: u8,
        inward: bool,
        rep: bool,
        linear: u16,
        info: u32,
        df: bool,
    },
    /// An EPT violation at an unmapped address with this instruction at RIP (in the pool).
    Mmio {
        gpa: u8,
        offset: u32,
        qual: u8,
        rip: u16,
        insn: Insn,
        mode: u8,
    },
    /// An EPT violation on RAM (the first touch of a chunk, a ROM write, a protected page).
    EptRam {
        gpa: u8,
        offset: u16,
        qual: u16,
    },
    Cr {
        qual: u32,
    },
    Rdmsr {
        msr: u8,
        raw: Option<u32>,
    },
    Wrmsr {
        msr: u8,
        raw: Option<u32>,
        value: u64,
    },
    Cpuid {
        leaf: u32,
        sub: u32,
    },
    Hlt,
    TripleFault,
    ExternalInterrupt,
    InterruptWindow,
    PreemptionTimer,
    Exception {
        info: u32,
    },
    EntryFailure {
        how: u8,
    },
    Dr {
        qual: u32,
    },
    Other {
        reason: u8,
        qual: u64,
        len: u8,
    },
    Raw {
        reason: u32,
        qual: u64,
        len: u32,
        fields: Vec<(u8, u64)>,
    },
}

/// Instruction bytes for an MMIO exit: a MOV form from a template, or raw bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum Insn {
    Template {
        which: u8,
        prefixes: u8,
        rex: u8,
        modrm: u8,
        tail: [u8; 8],
    },
    Raw([u8; 15]),
}

impl Insn {
    fn bytes(&self) -> [u8; 15] {
        match self {
            Insn::Raw(b) => *b,
            Insn::Template {
                which,
                prefixes,
                rex,
                modrm,
                tail,
            } => {
                const OPS: [&[u8]; 13] = [
                    &[0x88],
                    &[0x89],
                    &[0x8a],
                    &[0x8b],
                    &[0xc6],
                    &[0xc7],
                    &[0xa0],
                    &[0xa1],
                    &[0xa2],
                    &[0xa3],
                    &[0x0f, 0xb6],
                    &[0x0f, 0xb7],
                    &[0x0f, 0xbe],
                ];
                let mut out = [0x90u8; 15];
                let mut n = 0;
                for (bit, p) in [0x66u8, 0x67, 0x2e, 0xf3, 0x65].iter().enumerate() {
                    if prefixes & (1 << bit) != 0 {
                        out[n] = *p;
                        n += 1;
                    }
                }
                if prefixes & 0x80 != 0 {
                    out[n] = 0x40 | (rex & 0xf);
                    n += 1;
                }
                for b in OPS[usize::from(*which) % OPS.len()] {
                    out[n] = *b;
                    n += 1;
                }
                // C6/C7 need /0; keep the mod field away from register form mostly.
                let mut m = *modrm;
                if matches!(OPS[usize::from(*which) % OPS.len()], [0xc6] | [0xc7]) {
                    m &= !0x38;
                }
                out[n] = m;
                n += 1;
                for b in tail {
                    if n < 15 {
                        out[n] = *b;
                        n += 1;
                    }
                }
                out
            }
        }
    }
}

// ------------------------------------------------------------------------ the guest CPU

/// Plays one scripted exit: writes what the CPU would into the VMCS and the registers.
pub(crate) fn play(c: &mut GuestCpu<'_>, e: &GuestExit) {
    if let Some((reg, v)) = e.gpr {
        c.regs.gpr[usize::from(reg) % 16] = v;
    }
    if let Some((which, v)) = e.state {
        let field = match which % 6 {
            0 => VmcsField::GuestRflags,
            1 => VmcsField::GuestInterruptibilityState,
            2 => VmcsField::GuestCr0,
            3 => VmcsField::GuestCr4,
            4 => VmcsField::GuestCsAccessRights,
            _ => VmcsField::GuestCr3,
        };
        c.write(field, v);
    }
    match e.vectoring {
        Some((kind, vector, code)) => {
            // What a CPU reports (SDM §28.2.4): valid, a type, a vector that fits the type
            // (NMI is 2, exceptions below 32), the error-code bit only for the exceptions
            // that push one.
            let kind = [0u32, 2, 3, 4, 5, 6][usize::from(kind) % 6];
            let vector = match kind {
                2 => 2,
                3 | 5 | 6 => u32::from(vector) % 32,
                _ => u32::from(vector).max(32),
            };
            let has_code = kind == 3 && matches!(vector, 8 | 10..=14 | 17 | 21);
            let info = (1 << 31) | (u32::from(has_code) << 11) | (kind << 8) | vector;
            c.write(VmcsField::IdtVectoringInformation, u64::from(info));
            c.write(VmcsField::IdtVectoringErrorCode, u64::from(code));
        }
        None => c.write(VmcsField::IdtVectoringInformation, 0),
    }
    match &e.kind {
        ExitKind::Io {
            port,
            size,
            inward,
            imm,
        } => {
            let size = [1u64, 2, 4, 3][usize::from(*size) % 4];
            let q = (size - 1)
                | (u64::from(*inward) << 3)
                | (u64::from(*imm) << 6)
                | (u64::from(*port) << 16);
            c.exit(30, q, if *imm { 2 } else { 1 });
        }
        ExitKind::StringIo {
            port,
            size,
            inward,
            rep,
            linear,
            info,
            df,
        } => {
            let size = [1u64, 2, 4][usize::from(*size) % 3];
            let q = (size - 1)
                | (u64::from(*inward) << 3)
                | (1 << 4)
                | (u64::from(*rep) << 5)
                | (u64::from(*port) << 16);
            c.write(VmcsField::GuestLinearAddress, u64::from(*linear));
            c.write(VmcsField::VmExitInstructionInformation, u64::from(*info));
            if *df {
                let f = c.read(VmcsField::GuestRflags);
                c.write(VmcsField::GuestRflags, f | (1 << 10));
            }
            c.exit(30, q, 1 + u32::from(*rep));
        }
        ExitKind::Mmio {
            gpa,
            offset,
            qual,
            rip,
            insn,
            mode,
        } => {
            // The instruction in guest RAM at CS.base + RIP: the harness maps guest-physical
            // 0 onto the pool's start, and real/flat modes make linear = physical.
            let rip = u64::from(*rip) % (POOL_RESET as u64 - 16);
            let bytes = insn.bytes();
            // SAFETY: `rip + 15 < POOL_RESET <= POOL_SIZE`: inside the pool, which the guest
            // owns (the core reads it only through pinned translations, on this thread).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), pool().add(rip as usize), 15) };
            c.write(VmcsField::GuestRip, rip);
            match mode % 4 {
                // Real mode, flat.
                0 => {
                    c.write(VmcsField::GuestCr0, 0x10);
                    c.write(VmcsField::GuestCsBase, 0);
                    c.write(VmcsField::GuestCsAccessRights, 0x9b);
                }
                // 32-bit flat.
                1 => {
                    c.write(VmcsField::GuestCr0, 0x11);
                    c.write(VmcsField::GuestCsBase, 0);
                    c.write(VmcsField::GuestCsAccessRights, 0xc09b);
                }
                // Whatever the guest state is (paging, 64-bit...).
                _ => {}
            }
            let gpa = pool_gpa(*gpa).wrapping_add(u64::from(*offset) & 0xf_ffff);
            c.write(VmcsField::GuestPhysicalAddress, gpa);
            c.exit(48, u64::from(*qual & 0x3f) | 0x180, 0);
        }
        ExitKind::EptRam { gpa, offset, qual } => {
            c.write(
                VmcsField::GuestPhysicalAddress,
                pool_gpa(*gpa) + u64::from(*offset),
            );
            c.exit(48, u64::from(*qual), 0);
        }
        ExitKind::Cr { qual } => c.exit(28, u64::from(*qual), 3),
        ExitKind::Rdmsr { msr, raw } => {
            c.regs.gpr[1] = u64::from(raw.unwrap_or(MSRS[usize::from(*msr) % MSRS.len()]));
            c.exit(31, 0, 2);
        }
        ExitKind::Wrmsr { msr, raw, value } => {
            c.regs.gpr[1] = u64::from(raw.unwrap_or(MSRS[usize::from(*msr) % MSRS.len()]));
            c.regs.gpr[0] = value & 0xffff_ffff;
            c.regs.gpr[2] = value >> 32;
            c.exit(32, 0, 2);
        }
        ExitKind::Cpuid { leaf, sub } => {
            c.regs.gpr[0] = u64::from(*leaf);
            c.regs.gpr[1] = u64::from(*sub);
            c.exit(10, 0, 2);
        }
        ExitKind::Hlt => c.exit(12, 0, 1),
        ExitKind::TripleFault => c.exit(2, 0, 0),
        ExitKind::ExternalInterrupt => c.exit(1, 0, 0),
        ExitKind::InterruptWindow => c.exit(7, 0, 0),
        ExitKind::PreemptionTimer => c.exit(52, 0, 0),
        ExitKind::Exception { info } => {
            c.write(VmcsField::VmExitInterruptionInformation, u64::from(*info));
            c.exit(0, 0, 0);
        }
        ExitKind::EntryFailure { how } => {
            // The next VM entry fails its guest-state checks (SDM §27.3.1, §27.8): the model
            // CPU reports exit reason 33 with bit 31 and leaves the launch state as it was.
            // (A hook cannot fake that exit itself: the entry it runs in succeeded.)
            match how % 3 {
                // RFLAGS bit 1 clear (SDM §27.3.1.4).
                0 => {
                    let f = c.read(VmcsField::GuestRflags);
                    c.write(VmcsField::GuestRflags, f & !2);
                }
                // CR0.PG without CR0.PE (SDM §27.3.1.1).
                1 => c.write(VmcsField::GuestCr0, 0x8000_0010),
                // A reserved activity state.
                _ => c.write(VmcsField::GuestActivityState, 7),
            }
            // CPUID: handled in the kernel, which enters the guest again at once.
            c.exit(10, 0, 2);
        }
        ExitKind::Dr { qual } => c.exit(29, u64::from(*qual), 3),
        ExitKind::Other { reason, qual, len } => {
            c.exit(u32::from(*reason % 70), *qual, u32::from(*len % 16))
        }
        ExitKind::Raw {
            reason,
            qual,
            len,
            fields,
        } => {
            const FIELDS: [VmcsField; 8] = [
                VmcsField::GuestPhysicalAddress,
                VmcsField::GuestLinearAddress,
                VmcsField::VmExitInstructionInformation,
                VmcsField::VmExitInterruptionInformation,
                VmcsField::VmExitInterruptionErrorCode,
                VmcsField::GuestRip,
                VmcsField::GuestCsBase,
                VmcsField::GuestActivityState,
            ];
            for (f, v) in fields.iter().take(8) {
                c.write(FIELDS[usize::from(*f) % FIELDS.len()], *v);
            }
            // Bit 31 (VM-entry failure) only comes from a failed entry, never from a guest.
            c.exit(*reason & 0x7fff_ffff, *qual, *len);
        }
    }
}

fn pool_gpa(g: u8) -> u64 {
    GPAS[usize::from(g) % GPAS.len()]
}
