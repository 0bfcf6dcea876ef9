//! What the vCPU's VMX side reads of a [`LocalApic`] whatever its mode (the register
//! interfaces in `access` answer only through the mode's own path: xAPIC MMIO or x2APIC
//! MSRs).

use super::local::{IRR, ISR, LVT_LINT0, LVT_LINT1, TMR};
use super::LocalApic;

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
        highest_vector(&core::array::from_fn(|w| self.reg(IRR + w)))
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
