//! Save and restore of a [`LocalApic`] through [`RhaxApicState`] (snapshots, migration).
//!
//! Restore is all-or-nothing: the image is checked in full against what the register
//! interfaces could have produced, built into a copy, and only then stored.

use rhax_api::apic::{
    RhaxApicState, RHAX_APIC_FLAGS_ALL, RHAX_APIC_INIT_PENDING, RHAX_APIC_NMI_PENDING,
    RHAX_APIC_SIPI_PENDING, RHAX_APIC_STATE_VERSION, RHAX_APIC_TIMER_ARMED,
};
use rhax_api::Pod;

use super::local::*;
use super::timer::{TimerMode, TimerState};
use super::{ApicMode, LocalApic};

/// Why [`LocalApic::restore`] refused a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicStateError {
    /// `version` is not [`RHAX_APIC_STATE_VERSION`].
    Version,
    /// Unknown flag bits or nonzero padding.
    Reserved,
    /// IA32_APIC_BASE has reserved bits set or the invalid EXTD-without-EN combination.
    BaseMsr,
    /// The register at this MMIO offset holds a value no guest could have written (reserved
    /// bits, an x2APIC ID or LDR not derived from this vCPU's initial ID, ...).
    Register(u16),
    /// The timer state is inconsistent (armed without a count, a deadline outside
    /// TSC-deadline mode, a count armed in TSC-deadline mode).
    Timer,
    /// An error bit outside the ESR's defined ones.
    Esr,
}

/// ESR bits 0-7 (§11.5.3, Figure 11-9).
const ESR_DEFINED: u32 = 0xff;

/// The bits each stored register may hold (`None`: any value), by index.
fn stored_mask(i: usize) -> Option<u32> {
    Some(match i {
        TPR => 0xff,
        SVR => 0x13ff,
        ESR => ESR_DEFINED,
        ICR_LOW => 0x000c_cfff,
        LVT_TIMER => 0x700ff,
        LVT_LINT0 | LVT_LINT1 => 0x1a7ff,
        LVT_ERROR => 0x100ff,
        LVT_CMCI | LVT_THERMAL | LVT_PERF => 0x107ff,
        TIMER_DIVIDE => 0xb,
        // Computed on read or write-only: must be zero in the image (the save writes the
        // version and leaves the others zero).
        APR | PPR | EOI | RRD | TIMER_CURRENT | SELF_IPI => 0,
        ID | LDR | DFR | ICR_HIGH | TIMER_INITIAL | VERSION => return None,
        _ if (ISR..IRR + 8).contains(&i) => return None,
        _ => 0, // reserved slots
    })
}

impl LocalApic {
    /// Writes the whole state into `out` (the computed registers PPR, APR and current count
    /// read 0 in the image; the version register is filled in).
    pub fn save(&self, out: &mut RhaxApicState) {
        // Zeroed in place: no 1 KiB temporary on a kernel stack.
        out.as_bytes_mut().fill(0);
        out.version = RHAX_APIC_STATE_VERSION;
        out.base_msr = self.base;
        out.tsc_deadline = self.timer.tsc_deadline;
        if self.timer.armed {
            out.timer_start_tsc = self.timer.start;
            out.timer_start_count = self.timer.start_count;
        }
        out.esr_pending = self.esr_pending;
        out.flags = (self.nmi as u32 * RHAX_APIC_NMI_PENDING)
            | (self.init as u32 * RHAX_APIC_INIT_PENDING)
            | (self.sipi.is_some() as u32 * RHAX_APIC_SIPI_PENDING)
            | (self.timer.armed as u32 * RHAX_APIC_TIMER_ARMED);
        out.sipi_vector = self.sipi.unwrap_or(0);
        for (i, v) in self.regs.iter().enumerate() {
            out.set_reg(i * 16, *v);
        }
    }

    /// Replaces the whole state by `s` after checking all of it; on error nothing changes.
    /// The initial APIC ID and the bus-tick length are this vCPU's and are kept.
    pub fn restore(&mut self, s: &RhaxApicState) -> Result<(), ApicStateError> {
        if s.version != RHAX_APIC_STATE_VERSION {
            return Err(ApicStateError::Version);
        }
        if s.flags & !RHAX_APIC_FLAGS_ALL != 0 || s.pad != [0; 7] {
            return Err(ApicStateError::Reserved);
        }
        if s.flags & RHAX_APIC_SIPI_PENDING == 0 && s.sipi_vector != 0 {
            return Err(ApicStateError::Reserved);
        }
        // 52 bits: the architectural maximum MAXPHYADDR; EXTD without EN is invalid.
        if s.base_msr & (0x2ff | !((1_u64 << 52) - 1)) != 0 {
            return Err(ApicStateError::BaseMsr);
        }
        let mode = mode_of(s.base_msr).ok_or(ApicStateError::BaseMsr)?;
        if s.esr_pending & !ESR_DEFINED != 0 {
            return Err(ApicStateError::Esr);
        }
        let mut next = self.clone();
        next.base = s.base_msr;
        for i in 0..REG_SLOTS {
            let offset = i * 16;
            let v = s
                .reg(offset)
                .ok_or(ApicStateError::Register(offset as u16))?;
            if stored_mask(i).is_some_and(|m| v & !m != 0) {
                return Err(ApicStateError::Register(offset as u16));
            }
            next.set(i, v);
        }
        next.set(VERSION, APIC_VERSION);
        // Vectors 0-15 are never accepted (§11.5.3): no ISR, TMR or IRR bit for them.
        for i in [ISR, TMR, IRR] {
            if next.reg(i) & 0xffff != 0 {
                return Err(ApicStateError::Register((i * 16) as u16));
            }
        }
        let bad = |i: usize| Err(ApicStateError::Register((i * 16) as u16));
        match mode {
            ApicMode::X2Apic => {
                // x2APIC ID and LDR are read-only, derived from the initial ID (§11.12.5.1).
                if next.reg(ID) != self.initial_id {
                    return bad(ID);
                }
                if next.reg(LDR) != x2apic_ldr(self.initial_id) {
                    return bad(LDR);
                }
            }
            _ => {
                for (i, low) in [(ID, 0), (LDR, 0), (DFR, 0x0fff_ffff)] {
                    if next.reg(i) & 0x00ff_ffff != low & 0x00ff_ffff
                        || (i == DFR && next.reg(i) & 0x0f00_0000 != 0x0f00_0000)
                    {
                        return bad(i);
                    }
                }
                if next.reg(ICR_HIGH) & 0x00ff_ffff != 0 {
                    return bad(ICR_HIGH);
                }
            }
        }
        if !next.software_enabled() {
            for lvt in LVTS {
                if next.reg(lvt) & LVT_MASKED == 0 {
                    return bad(lvt);
                }
            }
        }
        let armed = s.flags & RHAX_APIC_TIMER_ARMED != 0;
        let deadline_mode = TimerMode::of_lvt(next.reg(LVT_TIMER)) == TimerMode::TscDeadline;
        if (armed && (deadline_mode || s.timer_start_count == 0))
            || (!deadline_mode && s.tsc_deadline != 0)
            || (!armed && (s.timer_start_count != 0 || s.timer_start_tsc != 0))
        {
            return Err(ApicStateError::Timer);
        }
        next.timer = TimerState {
            armed,
            start: s.timer_start_tsc,
            start_count: s.timer_start_count,
            tsc_deadline: s.tsc_deadline,
        };
        next.esr_pending = s.esr_pending;
        next.nmi = s.flags & RHAX_APIC_NMI_PENDING != 0;
        next.init = s.flags & RHAX_APIC_INIT_PENDING != 0;
        next.sipi = (s.flags & RHAX_APIC_SIPI_PENDING != 0).then_some(s.sipi_vector);
        *self = next;
        Ok(())
    }
}
