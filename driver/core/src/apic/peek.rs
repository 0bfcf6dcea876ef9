//! What the vCPU's VMX side reads of a [`LocalApic`] whatever its mode (the register
//! interfaces in `access` answer only through the mode's own path: xAPIC MMIO or x2APIC
//! MSRs).

use super::local::{
    APIC_VERSION, DFR, EOI, ESR, ICR_HIGH, ICR_LOW, ID, IRR, ISR, LDR, LVT_CMCI, LVT_ERROR,
    LVT_LINT0, LVT_LINT1, LVT_PERF, LVT_THERMAL, LVT_TIMER, PPR, SVR, TIMER_DIVIDE, TIMER_INITIAL,
    TMR, TPR, VERSION,
};
use super::{ApicMode, LocalApic};

/// The registers whose virtual-APIC page word the vCPU keeps equal to the model's with
/// "APIC-register virtualization" (register indices, offset / 16): the CPU answers the guest's
/// reads of them from the page without an exit (SDM Vol. 3C §30.4.2 for the APIC-access page,
/// §30.5 for x2APIC RDMSR). ID, version, EOI (reads 0), LDR, DFR, SVR, TMR, ESR, LVT CMCI,
/// ICR, the LVTs, the timer's initial count and divide configuration. Not here: the TPR, ISR,
/// IRR and PPR, which the TPR shadow and virtual-interrupt delivery keep in the page
/// themselves (VTPR, VISR, VIRR, VPPR); and the timer's current count, which moves while the
/// guest runs and is not in §30.4.2's list (its reads always exit).
pub const PAGE_MIRRORED: [usize; 26] = [
    ID,
    VERSION,
    EOI,
    LDR,
    DFR,
    SVR,
    TMR,
    TMR + 1,
    TMR + 2,
    TMR + 3,
    TMR + 4,
    TMR + 5,
    TMR + 6,
    TMR + 7,
    ESR,
    LVT_CMCI,
    ICR_LOW,
    ICR_HIGH,
    LVT_TIMER,
    LVT_THERMAL,
    LVT_PERF,
    LVT_LINT0,
    LVT_LINT1,
    LVT_ERROR,
    TIMER_INITIAL,
    TIMER_DIVIDE,
];

/// Whether RDMSR of x2APIC MSR `msr` may be left to the CPU with "APIC-register
/// virtualization" and virtual-interrupt delivery (MSR bitmap read bit clear): the CPU then
/// reads the 8 bytes at offset (`msr` & FFH) << 4 of the virtual-APIC page into EDX:EAX
/// whatever the MSR (SDM Vol. 3C §30.5), so only the registers the page holds: the
/// [`PAGE_MIRRORED`] ones that exist in x2APIC mode (not DFR 80EH, not ICR high 831H: both
/// #GP, Table 11-6), and TPR, PPR, ISR and IRR, which the TPR shadow and virtual-interrupt
/// delivery keep there. Never the current count (839H), EOI (80BH, write-only: #GP) or SELF
/// IPI (83FH).
pub fn x2apic_read_virtualized(msr: u32) -> bool {
    let Some(i) = msr.checked_sub(0x800).map(|i| i as usize) else {
        return false;
    };
    if msr > 0x8ff || i == DFR || i == ICR_HIGH || i == EOI {
        return false;
    }
    i == TPR
        || i == PPR
        || (ISR..ISR + 8).contains(&i)
        || (IRR..IRR + 8).contains(&i)
        || PAGE_MIRRORED.contains(&i)
}

/// The highest vector set in a 256-bit register given as 8 words (bit `v % 32` of word
/// `v / 32`: IRR, ISR, TMR and the virtual-APIC page's VIRR/VISR), if any.
pub fn highest_vector(words: &[u32; 8]) -> Option<u8> {
    (0..8usize).rev().find_map(|w| {
        let word = words[w];
        (word != 0).then(|| (w * 32 + 31 - word.leading_zeros() as usize) as u8)
    })
}

impl LocalApic {
    /// The highest vector requested in the IRR, whatever the PPR (SDM Vol. 3A §11.8.4): the
    /// TPR threshold is set from it when the TPR holds it back (Vol. 3C §30.1.2).
    pub fn highest_irr(&self) -> Option<u8> {
        self.highest(IRR)
    }

    /// The highest vector in service (the ISR), if any: SVI with virtual-interrupt delivery
    /// (SDM Vol. 3C §30.1.1).
    pub fn highest_isr(&self) -> Option<u8> {
        self.highest(ISR)
    }

    /// IRR, ISR and TMR as 8 words each, bit `v % 32` of word `v / 32` (the layout of the
    /// virtual-APIC page's VIRR/VISR, one word per 16 bytes: SDM Vol. 3C §30.1.1).
    pub fn vector_words(&self) -> ([u32; 8], [u32; 8], [u32; 8]) {
        let words = |base: usize| core::array::from_fn(|i| self.reg(base + i));
        (words(IRR), words(ISR), words(TMR))
    }

    /// Replaces the IRR and ISR with what virtual-interrupt delivery made of them in the
    /// virtual-APIC page (the CPU moved vectors from VIRR to VISR and cleared VISR bits on
    /// EOIs; SDM Vol. 3C §30.2.2, §30.1.4). Vectors 0-15 are never requested (§11.5.3) and
    /// stay clear whatever the page holds.
    pub fn set_requests(&mut self, irr: &[u32; 8], isr: &[u32; 8]) {
        for i in 0..8 {
            let keep = if i == 0 { 0xffff_0000 } else { u32::MAX };
            self.set(IRR + i, irr[i] & keep);
            self.set(ISR + i, isr[i] & keep);
        }
    }

    /// The virtual-APIC page's words for the [`PAGE_MIRRORED`] registers in the current mode,
    /// as (page offset, value): what the guest's virtualized reads must return (SDM Vol. 3C
    /// §30.4.2, §30.5). In xAPIC mode each register's word at its offset (EOI reads 0, DFR and
    /// ICR high as the model holds them). In x2APIC mode the CPU reads 8 bytes at the
    /// register's offset, so the 64-bit ICR is its low half at 300H and the destination at
    /// 304H (Table 11-6: the ICR is one MSR, 830H), and DFR and ICR high (no x2APIC
    /// registers) are 0; elsewhere the word at offset + 4 stays 0. Outside both modes nothing
    /// reads the page: zeros.
    pub fn page_image(&self, mut word: impl FnMut(usize, u32)) {
        let mode = self.mode();
        for i in PAGE_MIRRORED {
            let v = match (i, mode) {
                (_, ApicMode::Disabled) => 0,
                (VERSION, _) => APIC_VERSION,
                (EOI, _) => 0,
                (DFR | ICR_HIGH, ApicMode::X2Apic) => 0,
                _ => self.reg(i),
            };
            word(i * 16, v);
        }
        let icr_dest = if mode == ApicMode::X2Apic {
            self.reg(ICR_HIGH)
        } else {
            0
        };
        word(ICR_LOW * 16 + 4, icr_dest);
    }

    /// The TMR as 8 words (what acceptance changes among the [`PAGE_MIRRORED`] registers:
    /// the vCPU compares it around the interrupts it takes in).
    pub fn tmr_words(&self) -> [u32; 8] {
        core::array::from_fn(|i| self.reg(TMR + i))
    }

    /// The ICR's words of [`LocalApic::page_image`] alone, (offset, value): after an ICR
    /// write, which changes nothing else the page mirrors.
    pub fn icr_image(&self) -> [(usize, u32); 3] {
        let (low, high) = (self.reg(ICR_LOW), self.reg(ICR_HIGH));
        match self.mode() {
            ApicMode::X2Apic => [(0x300, low), (0x304, high), (0x310, 0)],
            ApicMode::XApic => [(0x300, low), (0x304, 0), (0x310, high)],
            ApicMode::Disabled => [(0x300, 0), (0x304, 0), (0x310, 0)],
        }
    }

    /// The ICR the guest wrote into the virtual-APIC page without an exit (xAPIC mode with
    /// "APIC-register virtualization": a write of ICR high only stores, SDM Vol. 3C
    /// §30.4.3.2; a self-IPI written to ICR low is virtualized without an exit, §30.1.5),
    /// taken into the model as the xAPIC register file holds it (writable bits only). Nothing
    /// is sent: the APIC-write exit of ICR low does that.
    pub fn take_page_icr(&mut self, low: u32, high: u32) {
        if self.mode() == ApicMode::XApic {
            self.set(ICR_LOW, low & super::access::ICR_LOW_WRITABLE);
            self.set(ICR_HIGH, high & 0xff00_0000);
        }
    }

    /// The LVT entry of LINT`pin` (0 or 1; SDM Vol. 3A §11.5.1); 0x10000 (masked) for any
    /// other pin.
    pub fn lvt_lint(&self, pin: usize) -> u32 {
        match pin {
            0 => self.reg(LVT_LINT0),
            1 => self.reg(LVT_LINT1),
            _ => 1 << 16,
        }
    }
}
