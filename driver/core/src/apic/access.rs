//! The register interfaces: xAPIC MMIO (SDM Vol. 3A §11.4.1, Table 11-1) and x2APIC MSRs
//! (§11.12.1.2, Table 11-6), over one register file.
//!
//! The two differ where the SDM says so: x2APIC has no APR, RRD, DFR or ICR high (their MSRs
//! are reserved), its ID and LDR are read-only, its ICR is one 64-bit MSR, it adds SELF IPI;
//! and where xAPIC ignores a bad access, x2APIC faults: RDMSR of a write-only register,
//! WRMSR of a read-only or reserved one, nonzero reserved bits (RsvdZ, §11.12.1.3), a
//! nonzero EOI or ESR write (Table 11-6) all raise #GP(0).

use super::local::*;
use super::timer::TimerMode;
use super::{ApicFault, ApicMode, DeliveryMode, Effect, Interrupt, Ipi, Shorthand};

/// The writable bits of each LVT (§11.5.1, Figure 11-8): vector, delivery mode, polarity,
/// trigger mode, mask, timer mode; delivery status and remote IRR are read-only.
fn lvt_writable(i: usize) -> u32 {
    match i {
        LVT_TIMER => 0x700ff,
        LVT_LINT0 | LVT_LINT1 => 0x1a7ff,
        LVT_ERROR => 0x100ff,
        _ => 0x107ff, // CMCI, thermal, performance counters
    }
}

/// The bits an x2APIC WRMSR of an LVT may set without #GP: the writable ones plus the
/// read-only status bits (delivery status 12, remote IRR 14), which are ignored.
fn lvt_allowed(i: usize) -> u32 {
    match i {
        LVT_TIMER => 0x710ff,
        LVT_LINT0 | LVT_LINT1 => 0x1f7ff,
        LVT_ERROR => 0x110ff,
        _ => 0x117ff,
    }
}

/// SVR: vector, software enable, focus processor checking, EOI-broadcast suppression
/// (§11.9, Figure 11-23).
const SVR_WRITABLE: u32 = 0x13ff;
/// xAPIC ICR low: vector, delivery mode, destination mode, level, trigger mode, shorthand
/// (§11.6.1, Figure 11-12); delivery status (bit 12) is read-only and always 0 here because
/// delivery is immediate.
pub(super) const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
/// x2APIC ICR (§11.12.9, Figure 11-28): bits 12, 13, 16, 17 and 31:20 are reserved.
const X2APIC_ICR_ALLOWED: u64 = 0xffff_ffff_000c_cfff;

fn is_lvt(i: usize) -> bool {
    i == LVT_CMCI || (LVT_TIMER..=LVT_ERROR).contains(&i)
}

fn is_bitmap(i: usize) -> bool {
    (ISR..IRR + 8).contains(&i)
}

impl LocalApic {
    /// A register's value as both interfaces read it (`None`: not readable at all).
    fn read_common(&self, i: usize, now: u64) -> Option<u32> {
        match i {
            ID | LDR | SVR | ESR | ICR_LOW | TIMER_INITIAL | TIMER_DIVIDE => Some(self.reg(i)),
            VERSION => Some(APIC_VERSION),
            TPR => Some(self.tpr() as u32),
            PPR => Some(self.ppr() as u32),
            TIMER_CURRENT => Some(self.current_count(now)),
            _ if is_lvt(i) || is_bitmap(i) => Some(self.reg(i)),
            _ => None,
        }
    }

    /// An xAPIC MMIO read of the 32-bit register at `offset & 0xff0` (the caller slices out
    /// narrower or unaligned accesses). Write-only and unimplemented registers read 0; an
    /// unimplemented offset also sets ESR "illegal register address" (§11.5.3). Outside
    /// xAPIC mode the page is not the APIC's (§11.12.2) and reads 0.
    pub fn read_mmio(&mut self, offset: u32, now: u64) -> u32 {
        if self.mode() != ApicMode::XApic {
            return 0;
        }
        let i = ((offset & 0xff0) >> 4) as usize;
        if let Some(v) = self.read_common(i, now) {
            return v;
        }
        match i {
            APR => self.arbitration_priority() as u32,
            DFR | ICR_HIGH => self.reg(i),
            EOI | RRD => 0,
            _ => {
                self.raise_error(ESR_ILLEGAL_REGISTER);
                0
            }
        }
    }

    /// An xAPIC MMIO write of the 32-bit register at `offset & 0xff0`. Read-only registers
    /// ignore it; unimplemented offsets set ESR "illegal register address"; a write of ICR
    /// low sends the IPI. Ignored outside xAPIC mode.
    pub fn write_mmio(&mut self, offset: u32, value: u32, now: u64) -> Effect {
        if self.mode() != ApicMode::XApic {
            return Effect::None;
        }
        let i = ((offset & 0xff0) >> 4) as usize;
        match i {
            // The xAPIC ID is writable (§11.4.6): 8 bits, 31:24.
            ID | LDR => self.set(i, value & 0xff00_0000),
            // DFR bits 27:0 read as ones (§11.6.2.2, Figure 11-14).
            DFR => self.set(i, value | 0x0fff_ffff),
            ICR_HIGH => self.set(i, value & 0xff00_0000),
            ICR_LOW => {
                self.set(i, value & ICR_LOW_WRITABLE);
                return self.send_icr(value as u64 & ICR_LOW_WRITABLE as u64, false);
            }
            VERSION | APR | PPR | RRD | TIMER_CURRENT => {}
            _ if is_bitmap(i) => {}
            _ => {
                return match self.write_common(i, value, now) {
                    Some(effect) => effect,
                    None => {
                        self.raise_error(ESR_ILLEGAL_REGISTER);
                        Effect::None
                    }
                }
            }
        }
        Effect::None
    }

    /// The writes both interfaces share, the value already checked (x2APIC) or to be masked
    /// (xAPIC). `None`: not one of them.
    fn write_common(&mut self, i: usize, value: u32, now: u64) -> Option<Effect> {
        let effect = match i {
            TPR => {
                self.set(TPR, value & 0xff);
                Effect::None
            }
            EOI => self.eoi(),
            SVR => {
                self.set(SVR, value & SVR_WRITABLE);
                if value & SVR_ENABLE == 0 {
                    // Software disable masks every LVT (§11.4.7.2).
                    for lvt in [LVT_CMCI, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1] {
                        self.set(lvt, self.reg(lvt) | LVT_MASKED);
                    }
                    self.set(LVT_ERROR, self.reg(LVT_ERROR) | LVT_MASKED);
                    self.set(LVT_TIMER, self.reg(LVT_TIMER) | LVT_MASKED);
                }
                Effect::None
            }
            // ESR: a write makes the errors since the last write visible and starts over
            // (§11.5.3).
            ESR => {
                self.set(ESR, self.esr_pending);
                self.esr_pending = 0;
                Effect::None
            }
            _ if is_lvt(i) => {
                let mut v = value & lvt_writable(i);
                if !self.software_enabled() {
                    // While software-disabled the mask bits cannot be cleared (§11.4.7.2).
                    v |= LVT_MASKED;
                }
                if i == LVT_TIMER {
                    self.write_lvt_timer(v)
                } else {
                    self.set(i, v);
                    Effect::None
                }
            }
            TIMER_INITIAL => self.write_initial_count(value, now),
            TIMER_DIVIDE => self.write_divide(value, now),
            _ => return None,
        };
        Some(effect)
    }

    /// The message of an ICR write (§11.6.1; x2APIC §11.12.9: `icr` bits 63:32 are the
    /// 32-bit destination). A reserved delivery mode sends nothing, and so does INIT level
    /// de-assert (the Pentium 4 and later do not support it, §11.6.1); a fixed or
    /// lowest-priority vector below 16 is not sent and sets ESR "send illegal vector".
    fn send_icr(&mut self, icr: u64, x2apic: bool) -> Effect {
        let low = icr as u32;
        let Some(mode) = DeliveryMode::from_bits(((low >> 8) & 7) as u8) else {
            return Effect::None;
        };
        let vector = low as u8;
        let assert = low & (1 << 14) != 0;
        let level_triggered = low & (1 << 15) != 0;
        if mode == DeliveryMode::Init && !assert && level_triggered {
            return Effect::None;
        }
        if mode.uses_irr() && vector < 16 {
            self.raise_error(ESR_SEND_ILLEGAL_VECTOR);
            return Effect::None;
        }
        let dest = if x2apic {
            (icr >> 32) as u32
        } else {
            self.reg(ICR_HIGH) >> 24
        };
        Effect::Ipi(Ipi {
            irq: Interrupt {
                vector,
                mode,
                assert,
                level_triggered,
            },
            dest,
            logical: low & (1 << 11) != 0,
            shorthand: Shorthand::from_bits(low >> 18),
        })
    }

    /// RDMSR of an x2APIC register, MSR 0x800-0x8ff (§11.12.1.2, Table 11-6). #GP(0) outside
    /// x2APIC mode, for MSRs outside the range, for the reserved ones (0x809 APR, 0x80c RRD,
    /// 0x80e DFR, 0x831 ICR high, ...) and for the write-only EOI (0x80b) and SELF IPI
    /// (0x83f).
    pub fn read_msr(&mut self, msr: u32, now: u64) -> Result<u64, ApicFault> {
        let i = self.x2apic_index(msr)?;
        if i == ICR_LOW {
            return Ok((self.reg(ICR_HIGH) as u64) << 32 | self.reg(ICR_LOW) as u64);
        }
        self.read_common(i, now).map(u64::from).ok_or(ApicFault)
    }

    /// WRMSR of an x2APIC register (§11.12.1.2-3, Table 11-6). #GP(0) outside x2APIC mode,
    /// for reserved and read-only registers, for bits 63:32 set except in the ICR (0x830,
    /// 64-bit: the destination), for reserved bits set in TPR, SVR, LVTs, divide
    /// configuration, ICR and SELF IPI, and for a nonzero EOI or ESR value. SELF IPI (0x83f)
    /// sends a fixed edge-triggered IPI with [`Shorthand::SelfOnly`] (§11.12.11).
    pub fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> Result<Effect, ApicFault> {
        let i = self.x2apic_index(msr)?;
        if i == ICR_LOW {
            if value & !X2APIC_ICR_ALLOWED != 0 {
                return Err(ApicFault);
            }
            self.set(ICR_LOW, value as u32);
            self.set(ICR_HIGH, (value >> 32) as u32);
            return Ok(self.send_icr(value, true));
        }
        let v = u32::try_from(value).map_err(|_| ApicFault)?;
        let allowed = match i {
            TPR | SELF_IPI => 0xff,
            EOI | ESR => 0,
            SVR => SVR_WRITABLE,
            TIMER_INITIAL => u32::MAX,
            TIMER_DIVIDE => 0xb,
            _ if is_lvt(i) => lvt_allowed(i),
            _ => return Err(ApicFault), // read-only or reserved
        };
        if v & !allowed != 0 {
            return Err(ApicFault);
        }
        if i == SELF_IPI {
            let vector = v as u8;
            if vector < 16 {
                self.raise_error(ESR_SEND_ILLEGAL_VECTOR);
                return Ok(Effect::None);
            }
            return Ok(Effect::Ipi(Ipi {
                irq: Interrupt::fixed(vector),
                dest: 0,
                logical: false,
                shorthand: Shorthand::SelfOnly,
            }));
        }
        self.write_common(i, v, now).ok_or(ApicFault)
    }

    /// The register index of an x2APIC MSR; #GP outside x2APIC mode or the APIC's MSRs.
    fn x2apic_index(&self, msr: u32) -> Result<usize, ApicFault> {
        if self.mode() != ApicMode::X2Apic || !(0x800..0x840).contains(&msr) {
            return Err(ApicFault);
        }
        Ok((msr - 0x800) as usize)
    }

    /// True for the timer's TSC-deadline mode (the vCPU routes IA32_TSC_DEADLINE here only
    /// then; in the other modes the MSR reads 0 and ignores writes).
    pub fn tsc_deadline_mode(&self) -> bool {
        self.timer_mode() == TimerMode::TscDeadline
    }
}
