//! What the vCPU's VMX side reads of a [`LocalApic`] whatever its mode (the register
//! interfaces in `access` answer only through the mode's own path: xAPIC MMIO or x2APIC
//! MSRs).

use super::local::{IRR, LVT_LINT0, LVT_LINT1};
use super::LocalApic;

impl LocalApic {
    /// The highest vector requested in the IRR, whatever the PPR (SDM Vol. 3A §11.8.4): the
    /// TPR threshold is set from it when the TPR holds it back (Vol. 3C §30.1.2).
    pub fn highest_irr(&self) -> Option<u8> {
        (0..8usize).rev().find_map(|w| {
            let word = self.reg(IRR + w);
            (word != 0).then(|| (w * 32 + 31 - word.leading_zeros() as usize) as u8)
        })
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
