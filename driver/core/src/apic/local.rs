//! [`LocalApic`]: the state of one local APIC, its modes, acceptance and priorities.
//!
//! SDM Vol. 3A: §11.4 (IA32_APIC_BASE, ID, version, power-up/INIT state), §11.8 (acceptance,
//! TPR/PPR/APR, ISR/IRR/TMR, EOI), §11.5.3 (errors), §11.12.5 (mode transitions).

use super::timer::TimerState;
use super::{ApicFault, ApicMode, DeliveryMode, Effect, Interrupt};

// Register indices: the MMIO offset divided by 16 (SDM Table 11-1; x2APIC MSR = 0x800 + index,
// Table 11-6).
pub(super) const ID: usize = 0x02;
pub(super) const VERSION: usize = 0x03;
pub(super) const TPR: usize = 0x08;
pub(super) const APR: usize = 0x09;
pub(super) const PPR: usize = 0x0a;
pub(super) const EOI: usize = 0x0b;
pub(super) const RRD: usize = 0x0c;
pub(super) const LDR: usize = 0x0d;
pub(super) const DFR: usize = 0x0e;
pub(super) const SVR: usize = 0x0f;
pub(super) const ISR: usize = 0x10;
pub(super) const TMR: usize = 0x18;
pub(super) const IRR: usize = 0x20;
pub(super) const ESR: usize = 0x28;
pub(super) const LVT_CMCI: usize = 0x2f;
pub(super) const ICR_LOW: usize = 0x30;
pub(super) const ICR_HIGH: usize = 0x31;
pub(super) const LVT_TIMER: usize = 0x32;
pub(super) const LVT_THERMAL: usize = 0x33;
pub(super) const LVT_PERF: usize = 0x34;
pub(super) const LVT_LINT0: usize = 0x35;
pub(super) const LVT_LINT1: usize = 0x36;
pub(super) const LVT_ERROR: usize = 0x37;
/// Every LVT register (§11.5.1): what reset and a software disable mask.
pub(super) const LVTS: [usize; 7] = [
    LVT_CMCI,
    LVT_TIMER,
    LVT_THERMAL,
    LVT_PERF,
    LVT_LINT0,
    LVT_LINT1,
    LVT_ERROR,
];
pub(super) const TIMER_INITIAL: usize = 0x38;
pub(super) const TIMER_CURRENT: usize = 0x39;
pub(super) const TIMER_DIVIDE: usize = 0x3e;
pub(super) const SELF_IPI: usize = 0x3f;
/// The number of 16-byte register slots in the 1 KiB register page image.
pub(super) const REG_SLOTS: usize = 64;

/// The version register (§11.4.8, Figure 11-7): version 0x14 (an integrated APIC), max LVT
/// entry 6 (seven LVTs, CMCI included), bit 24: EOI-broadcast suppression supported.
pub const APIC_VERSION: u32 = 0x0106_0014;

/// IA32_APIC_BASE bit 8: this is the bootstrap processor (§11.4.4, Figure 11-5).
pub const BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode (EXTD, §11.12.1).
pub const BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC global enable (EN, §11.4.3).
pub const BASE_EN: u64 = 1 << 11;
/// The power-up APIC base address (§11.4.4).
pub const DEFAULT_BASE: u64 = 0xfee0_0000;

/// LVT bit 16: masked (§11.5.1, Figure 11-8).
pub(super) const LVT_MASKED: u32 = 1 << 16;
/// SVR bit 8: APIC software enable (§11.9, Figure 11-23).
pub(super) const SVR_ENABLE: u32 = 1 << 8;
/// SVR bit 12: EOI-broadcast suppression (§11.8.5).
pub(super) const SVR_EOI_SUPPRESS: u32 = 1 << 12;

/// ESR bit 5: send illegal vector (§11.5.3, Figure 11-9).
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR bit 6: receive illegal vector.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ESR bit 7: illegal register address (an xAPIC access to a reserved offset).
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// The local APIC of one vCPU: plain data (well under 1.5 KiB), cloned for transactions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalApic {
    /// The register file in xAPIC page layout: `regs[offset / 16]`. Computed registers (PPR,
    /// APR, current count) are derived on read and not kept here.
    pub(super) regs: [u32; REG_SLOTS],
    /// IA32_APIC_BASE.
    pub(super) base: u64,
    /// The initial APIC ID (CPUID.1:EBX[31:24] / CPUID.0BH:EDX), the x2APIC ID.
    pub(super) initial_id: u32,
    /// TSC ticks per APIC bus tick (never 0).
    pub(super) tsc_per_bus_tick: u32,
    /// Errors detected since the last ESR write (visible in the ESR after the next write,
    /// §11.5.3).
    pub(super) esr_pending: u32,
    pub(super) nmi: bool,
    pub(super) init: bool,
    pub(super) sipi: Option<u8>,
    pub(super) timer: TimerState,
    /// Bit `w` set when word `w` of the IRR is not zero (kept by [`LocalApic::set`]): the
    /// highest requested vector in one step. The PPR, the arbitration priority and the
    /// pending-vector test ask for it several times per exit of the in-kernel APIC's paths,
    /// and a scan of eight words each time cost ~300 emulated instructions per x2APIC
    /// self-IPI + EOI (docs/bench/apic.md).
    pub(super) irr_words: u8,
    /// The same for the ISR.
    pub(super) isr_words: u8,
}

impl LocalApic {
    /// The power-up state (§11.4.7.1): enabled in xAPIC mode at 0xFEE00000, the BSP flag as
    /// given, the APIC ID from `apic_id` (its low 8 bits in xAPIC mode), everything else in
    /// its reset state. `tsc_per_bus_tick` of 0 counts as 1.
    pub fn new(apic_id: u32, bsp: bool, tsc_per_bus_tick: u32) -> Self {
        let mut apic = Self {
            regs: [0; REG_SLOTS],
            base: DEFAULT_BASE | BASE_EN | if bsp { BASE_BSP } else { 0 },
            initial_id: apic_id,
            tsc_per_bus_tick: tsc_per_bus_tick.max(1),
            esr_pending: 0,
            nmi: false,
            init: false,
            sipi: None,
            timer: TimerState::default(),
            irr_words: 0,
            isr_words: 0,
        };
        apic.reset_registers();
        apic.set(ID, apic_id << 24);
        apic
    }

    /// The register state of power-up and INIT (§11.4.7.1): IRR, ISR, TMR, ICR, LDR, TPR,
    /// timer counts and divide configuration zero; DFR all ones; every LVT masked; SVR 0xFF
    /// (software-disabled). The ID is left to the caller.
    fn reset_registers(&mut self) {
        let id = self.reg(ID);
        self.regs = [0; REG_SLOTS];
        self.irr_words = 0;
        self.isr_words = 0;
        self.set(ID, id);
        self.set(VERSION, APIC_VERSION);
        self.set(DFR, 0xffff_ffff);
        self.set(SVR, 0xff);
        for lvt in LVTS {
            self.set(lvt, LVT_MASKED);
        }
        self.esr_pending = 0;
        self.timer = TimerState::default();
        if self.mode() == ApicMode::X2Apic {
            self.enter_x2apic();
        }
    }

    /// INIT (§11.4.7.3): the power-up register state, except that the APIC ID and
    /// IA32_APIC_BASE are kept (in x2APIC mode the ID and the derived LDR, §11.12.5.1). A
    /// latched NMI is dropped (INIT resets the processor); a latched SIPI is kept, because
    /// the SIPI that follows an INIT may already have arrived.
    pub fn init_reset(&mut self) {
        self.reset_registers();
        self.nmi = false;
    }

    /// The current APIC ID: bits 31:24 of the ID register in xAPIC mode (writable there),
    /// the 32-bit x2APIC ID in x2APIC mode.
    pub fn id(&self) -> u32 {
        match self.mode() {
            ApicMode::X2Apic => self.reg(ID),
            _ => self.reg(ID) >> 24,
        }
    }

    /// IA32_APIC_BASE.
    pub fn base_msr(&self) -> u64 {
        self.base
    }

    /// WRMSR to IA32_APIC_BASE (§11.4.4 Figure 11-5, §11.12.1, §11.12.5 Figure 11-27).
    ///
    /// #GP(0) for: bits 7:0 or 9 set, bits at or above `maxphyaddr` set (clamped to
    /// 12..=52), EXTD without x2APIC support, EXTD without EN, and the illegal transitions
    /// x2APIC -> xAPIC and disabled -> x2APIC. Entering the disabled state resets the
    /// registers (the state is lost, §11.4.3); leaving it gives the power-up state with the
    /// initial ID; entering x2APIC mode loads the x2APIC ID and derives the LDR (§11.12.5.1,
    /// §11.12.10.2). The BSP flag is the guest's to write, as on hardware.
    pub fn write_base_msr(
        &mut self,
        value: u64,
        x2apic_supported: bool,
        maxphyaddr: u8,
    ) -> Result<(), ApicFault> {
        let maxphyaddr = maxphyaddr.clamp(12, 52);
        let mut reserved = 0x2ff_u64 | !((1_u64 << maxphyaddr) - 1);
        if !x2apic_supported {
            reserved |= BASE_EXTD;
        }
        if value & reserved != 0 {
            return Err(ApicFault);
        }
        let new = mode_of(value).ok_or(ApicFault)?;
        let old = self.mode();
        match (old, new) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(ApicFault)
            }
            _ => {}
        }
        self.base = value;
        match (old, new) {
            (ApicMode::Disabled, ApicMode::Disabled) => {}
            (_, ApicMode::Disabled) | (ApicMode::Disabled, _) => {
                self.set(ID, self.initial_id << 24);
                self.reset_registers();
            }
            (ApicMode::XApic, ApicMode::X2Apic) => self.enter_x2apic(),
            _ => {}
        }
        Ok(())
    }

    /// x2APIC mode's ID and LDR: the initial APIC ID, and the logical ID derived from it
    /// (cluster `id[19:4]` in bits 31:16, bit `id[3:0]` set in bits 15:0; §11.12.10.2).
    fn enter_x2apic(&mut self) {
        let id = self.initial_id;
        self.set(ID, id);
        self.set(LDR, x2apic_ldr(id));
    }

    /// The global mode, from IA32_APIC_BASE bits 11:10.
    pub fn mode(&self) -> ApicMode {
        mode_of(self.base).unwrap_or(ApicMode::Disabled)
    }

    /// The physical address of the 4 KiB xAPIC register page (§11.4.5).
    pub fn base_address(&self) -> u64 {
        self.base & 0x000f_ffff_ffff_f000
    }

    /// SVR bit 8: software-enabled (§11.4.7.2).
    pub fn software_enabled(&self) -> bool {
        self.reg(SVR) & SVR_ENABLE != 0
    }

    /// The TPR (CR8 is `tpr >> 4`, §11.8.6).
    pub fn tpr(&self) -> u8 {
        self.reg(TPR) as u8
    }

    /// Sets the TPR (a CR8 write passes `cr8 << 4`; a TPR-shadow VTPR sync the byte).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.set(TPR, tpr as u32);
    }

    /// The processor priority (§11.8.3.1): the TPR when its class is at least the class of
    /// the highest in-service vector, else that vector's class.
    pub fn ppr(&self) -> u8 {
        let tpr = self.tpr();
        let isrv = self.highest(ISR).unwrap_or(0);
        if tpr >> 4 >= isrv >> 4 {
            tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The arbitration priority (§11.6.2.4, Figure 11-15): the TPR when its class is at
    /// least the highest requested class and above the highest in-service class, else the
    /// highest of the three classes.
    pub fn arbitration_priority(&self) -> u8 {
        let tpr = self.tpr();
        let isrv = self.highest(ISR).unwrap_or(0);
        let irrv = self.highest(IRR).unwrap_or(0);
        if tpr >> 4 >= irrv >> 4 && tpr >> 4 > isrv >> 4 {
            tpr
        } else {
            (tpr & 0xf0).max(isrv & 0xf0).max(irrv & 0xf0)
        }
    }

    /// Accepts an interrupt message (§11.6.3, §11.8.4). Fixed and lowest-priority vectors go
    /// into the IRR, with the TMR bit set for level-triggered and cleared for edge-triggered
    /// ones; vectors 0-15 are refused with ESR "receive illegal vector" (§11.5.3); a
    /// software-disabled APIC drops them (§11.4.7.2) but still latches NMI, INIT and SIPI.
    /// A globally disabled APIC accepts nothing; SMI and ExtINT are never accepted (no SMM,
    /// no 8259A here); INIT level de-assert is a no-op. True when something new is pending.
    pub fn accept(&mut self, irq: Interrupt) -> bool {
        if self.mode() == ApicMode::Disabled {
            return false;
        }
        match irq.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if !self.software_enabled() {
                    return false;
                }
                if irq.vector < 16 {
                    return self.raise_error(ESR_RECEIVE_ILLEGAL_VECTOR);
                }
                self.request(irq.vector, irq.level_triggered)
            }
            DeliveryMode::Nmi => !core::mem::replace(&mut self.nmi, true),
            DeliveryMode::Init => {
                if !irq.assert && irq.level_triggered {
                    return false;
                }
                !core::mem::replace(&mut self.init, true)
            }
            DeliveryMode::StartUp => self.sipi.replace(irq.vector).is_none(),
            DeliveryMode::Smi | DeliveryMode::ExtInt => false,
        }
    }

    /// Sets IRR bit `vector` (TMR per the trigger mode); true when it was clear.
    pub(super) fn request(&mut self, vector: u8, level: bool) -> bool {
        self.set_bit(TMR, vector, level);
        let new = !self.test_bit(IRR, vector);
        self.set_bit(IRR, vector, true);
        new
    }

    /// Records an error (§11.5.3): the bit accumulates for the next ESR write; a newly seen
    /// error raises the LVT Error interrupt unless masked (an illegal vector there only adds
    /// "receive illegal vector", without a second interrupt). True when it is newly pending.
    pub(super) fn raise_error(&mut self, bits: u32) -> bool {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        let lvt = self.reg(LVT_ERROR);
        if new == 0 || lvt & LVT_MASKED != 0 {
            return false;
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR;
            return false;
        }
        self.request(vector, false)
    }

    /// The vector to inject next: the highest IRR vector whose priority class is above the
    /// PPR's (§11.8.3.1). `None` when none is, or the APIC is disabled (globally or by
    /// software).
    pub fn pending_vector(&self) -> Option<u8> {
        if self.mode() == ApicMode::Disabled || !self.software_enabled() {
            return None;
        }
        let v = self.highest(IRR)?;
        (v & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// The processor takes `vector` (injection): IRR bit to ISR bit, the TMR bit kept, so
    /// the PPR rises to its class (§11.8.4). A vector not requested is ignored.
    pub fn ack(&mut self, vector: u8) {
        if self.test_bit(IRR, vector) {
            self.set_bit(IRR, vector, false);
            self.set_bit(ISR, vector, true);
        }
    }

    /// EOI (§11.8.5): clears the highest ISR bit; a level-triggered vector (TMR set) is
    /// broadcast to the I/O APICs unless SVR bit 12 suppresses it.
    pub(super) fn eoi(&mut self) -> Effect {
        let Some(vector) = self.highest(ISR) else {
            return Effect::None;
        };
        self.set_bit(ISR, vector, false);
        if self.test_bit(TMR, vector) && self.reg(SVR) & SVR_EOI_SUPPRESS == 0 {
            Effect::Eoi { vector }
        } else {
            Effect::None
        }
    }

    /// An edge on local interrupt pin LINT0 (`pin` 0) or LINT1 (1): delivered as its LVT
    /// entry says (§11.5.1): nothing when masked; fixed: the vector into the IRR (TMR per
    /// the entry's trigger mode); NMI, INIT: the latches; ExtINT: nothing here (the vector
    /// comes from the 8259A; see [`LocalApic::accepts_pic_interrupts`]). True when
    /// something new is pending.
    pub fn raise_lint(&mut self, pin: u8) -> bool {
        let lvt = match pin {
            0 => self.reg(LVT_LINT0),
            1 => self.reg(LVT_LINT1),
            _ => return false,
        };
        if lvt & LVT_MASKED != 0 {
            return false;
        }
        let Some(mode) = DeliveryMode::from_bits(((lvt >> 8) & 7) as u8) else {
            return false;
        };
        self.accept(Interrupt {
            vector: lvt as u8,
            mode,
            assert: true,
            level_triggered: lvt & (1 << 15) != 0,
        })
    }

    /// True when an interrupt of the 8259A reaches the processor: the APIC is globally
    /// disabled (the INTR pin goes straight to the core, §11.4.3), or LINT0 is unmasked in
    /// ExtINT mode (virtual-wire mode, §11.5.1).
    pub fn accepts_pic_interrupts(&self) -> bool {
        let lint0 = self.reg(LVT_LINT0);
        self.mode() == ApicMode::Disabled
            || (lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == DeliveryMode::ExtInt as u32)
    }

    /// Takes the NMI latch.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::replace(&mut self.nmi, false)
    }

    /// Takes the INIT latch (the vCPU then calls [`LocalApic::init_reset`] and waits for a
    /// SIPI, unless it is the BSP).
    pub fn take_init(&mut self) -> bool {
        core::mem::replace(&mut self.init, false)
    }

    /// Takes the start-up latch: the vector of the latest SIPI.
    pub fn take_sipi(&mut self) -> Option<u8> {
        self.sipi.take()
    }

    /// The register at index `i` (0 outside the page).
    pub(super) fn reg(&self, i: usize) -> u32 {
        self.regs.get(i).copied().unwrap_or(0)
    }

    /// Sets the register at index `i` (ignored outside the page).
    pub(super) fn set(&mut self, i: usize, value: u32) {
        if let Some(r) = self.regs.get_mut(i) {
            *r = value;
            let (summary, w) = if (IRR..IRR + 8).contains(&i) {
                (&mut self.irr_words, i - IRR)
            } else if (ISR..ISR + 8).contains(&i) {
                (&mut self.isr_words, i - ISR)
            } else {
                return;
            };
            if value != 0 {
                *summary |= 1 << w;
            } else {
                *summary &= !(1 << w);
            }
        }
    }

    /// The highest vector of the 256-bit register at `base` by a scan of its words.
    fn scan(&self, base: usize) -> Option<u8> {
        super::highest_vector(&core::array::from_fn(|w| self.reg(base + w)))
    }

    /// The highest vector set in the IRR, ISR or TMR at `base`.
    pub(super) fn highest(&self, base: usize) -> Option<u8> {
        let summary = match base {
            IRR => self.irr_words,
            ISR => self.isr_words,
            _ => return self.scan(base),
        };
        if summary == 0 {
            return None;
        }
        let w = 7 - summary.leading_zeros() as usize;
        match self.reg(base + w) {
            0 => self.scan(base), // never: the summary follows `set`
            word => Some((w as u32 * 32 + (31 - word.leading_zeros())) as u8),
        }
    }

    /// Bit `vector` of the bitmap at `base` (ISR, TMR or IRR).
    pub(super) fn test_bit(&self, base: usize, vector: u8) -> bool {
        self.reg(base + (vector as usize >> 5)) & (1 << (vector & 31)) != 0
    }

    pub(super) fn set_bit(&mut self, base: usize, vector: u8, on: bool) {
        let i = base + (vector as usize >> 5);
        let bit = 1 << (vector & 31);
        let w = self.reg(i);
        self.set(i, if on { w | bit } else { w & !bit });
    }
}

/// The mode of an IA32_APIC_BASE value; `None` for EXTD without EN (§11.12.5).
pub(super) fn mode_of(base: u64) -> Option<ApicMode> {
    match (base & BASE_EN != 0, base & BASE_EXTD != 0) {
        (false, false) => Some(ApicMode::Disabled),
        (true, false) => Some(ApicMode::XApic),
        (true, true) => Some(ApicMode::X2Apic),
        (false, true) => None,
    }
}

/// The logical x2APIC ID derived from the x2APIC ID (§11.12.10.2).
pub fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xf))
}

// The model is plain data cloned for transactions and kept beside each vCPU: keep it small.
const _: () = assert!(core::mem::size_of::<LocalApic>() <= 1536);
