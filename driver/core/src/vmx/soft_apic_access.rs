//! The software VMX's guest accesses to the APIC-access page ("virtualize APIC accesses",
//! SDM Vol. 3C §30.4; section numbers of the 2023+ SDM): which reads and writes the CPU
//! virtualizes through the virtual-APIC page, which end in an APIC-access VM exit (reason 44,
//! fault-like: nothing done) and which, after the write, in APIC-write emulation (§30.4.3.2):
//! TPR virtualization, EOI virtualization, self-IPI virtualization, or an APIC-write VM exit
//! (reason 56, trap-like). A child of `soft` (the fields of [`GuestCpu`] are private there).

use super::GuestCpu;
use crate::vmcs::VmcsField;
use crate::vmx::caps::{PrimaryProcControls, SecondaryProcControls};
use crate::vmx::soft_apic;

/// Exit reason 44: APIC access (SDM Vol. 3C Appendix C).
const EXIT_REASON_APIC_ACCESS: u32 = 44;
/// Exit reason 56: APIC write.
const EXIT_REASON_APIC_WRITE: u32 = 56;
/// Exit reason 43: TPR below threshold.
const EXIT_REASON_TPR_BELOW_THRESHOLD: u32 = 43;

/// The registers whose reads "APIC-register virtualization" virtualizes (§30.4.2: the low
/// 4 bytes of each), as page offsets: ID, version, TPR, EOI, LDR, DFR, SVR, ISR, TMR, IRR,
/// ESR, ICR low and high, the LVTs (timer to error), initial count, divide configuration.
fn read_virtualized(register: u32) -> bool {
    matches!(
        register,
        0x020 | 0x030 | 0x080 | 0x0b0 | 0x0d0 | 0x0e0 | 0x0f0 | 0x100..=0x270 | 0x280
            | 0x300 | 0x310 | 0x320..=0x370 | 0x380 | 0x3e0
    )
}

/// The registers whose writes "APIC-register virtualization" virtualizes (§30.4.3.1): ID,
/// TPR, EOI, LDR, DFR, SVR, ESR, ICR low and high, the LVTs, initial count, divide
/// configuration.
fn write_virtualized(register: u32) -> bool {
    matches!(
        register,
        0x020 | 0x080 | 0x0b0 | 0x0d0 | 0x0e0 | 0x0f0 | 0x280 | 0x300 | 0x310 | 0x320
            ..=0x370 | 0x380 | 0x3e0
    )
}

/// Whether an ICR low value written with virtual-interrupt delivery is a self-IPI the CPU
/// virtualizes (§30.4.3.2): reserved bits 31:20, 17:16 and 13 clear, shorthand "self"
/// (19:18 = 01B), edge-triggered (bit 15 clear), fixed delivery (10:8 = 000B), vector 16 or
/// above (bits 7:4 not 0000B).
fn virtualized_self_ipi(icr: u32) -> bool {
    icr & 0xfff3_2000 == 0
        && (icr >> 18) & 3 == 1
        && icr & (1 << 15) == 0
        && (icr >> 8) & 7 == 0
        && icr & 0xf0 != 0
}

impl GuestCpu<'_> {
    fn proc2_has(&self, c: SecondaryProcControls) -> bool {
        self.read(VmcsField::SecondaryProcessorBasedVmExecutionControls) & u64::from(c.bits()) != 0
    }

    /// The common conditions of §30.4.2 and §30.4.3.1 under which an access to the page is
    /// not virtualized: no TPR shadow, more than 32 bits, or not within the low 4 bytes of a
    /// 16-byte aligned register. Panics when the page is not an APIC-access page (the access
    /// would be plain memory: the test scripted something the CPU would not do).
    fn apic_access_plain(&self, offset: u32, size: u32) -> bool {
        assert!(
            self.proc2_has(SecondaryProcControls::VIRTUALIZE_APIC_ACCESSES),
            "no \"virtualize APIC accesses\": the access is not an APIC access"
        );
        assert!(
            offset < 4096 && matches!(size, 1 | 2 | 4 | 8),
            "access of {size} bytes at {offset:#x}"
        );
        let shadow = self.read(VmcsField::PrimaryProcessorBasedVmExecutionControls)
            & u64::from(PrimaryProcControls::USE_TPR_SHADOW.bits())
            != 0;
        !shadow || size > 4 || (offset & 0xf) + size > 4 || self.vapic.is_none()
    }

    /// The guest reads `size` bytes (1, 2, 4 or 8) at `offset` of the APIC-access page by a
    /// linear address (SDM Vol. 3C §30.4.2). `Some(value)`: virtualized, the bytes of the
    /// virtual-APIC page at the same offset; `None`: an APIC-access VM exit was recorded
    /// (qualification: the offset, access type 0 "linear read", bits 15:12), and the hook
    /// must return. Without "APIC-register virtualization" only the TPR (80H-83H) is
    /// virtualized.
    pub fn apic_page_read(&mut self, offset: u32, size: u32) -> Option<u32> {
        let register = offset & 0xff0;
        let listed = if self.proc2_has(SecondaryProcControls::APIC_REGISTER_VIRTUALIZATION) {
            read_virtualized(register)
        } else {
            register == 0x080
        };
        if self.apic_access_plain(offset, size) || !listed {
            self.exit(EXIT_REASON_APIC_ACCESS, u64::from(offset), 0);
            return None;
        }
        let page = self.vapic.as_mut()?;
        let word = page.read(register as usize) >> ((offset & 3) * 8);
        Some(if size == 4 {
            word
        } else {
            word & ((1 << (size * 8)) - 1)
        })
    }

    /// The guest writes `value` (its low `size` bytes; 1, 2, 4 or 8) at `offset` of the
    /// APIC-access page by a linear address (SDM Vol. 3C §30.4.3). Returns `true` when a VM
    /// exit was recorded (the hook must return): an APIC-access exit (qualification offset |
    /// 1 << 12 "linear write"; fault-like, nothing written) for a write that is not
    /// virtualized; after a virtualized write (the bytes stored into the virtual-APIC page),
    /// APIC-write emulation (§30.4.3.2) may end in a TPR-below-threshold exit, an
    /// EOI-induced exit or an APIC-write exit (qualification: the offset; trap-like).
    /// `false`: completed without an exit ([`GuestCpu::delivered`] holds a vector delivered
    /// after it, if any).
    pub fn apic_page_write(&mut self, offset: u32, size: u32, value: u32) -> bool {
        let register = offset & 0xff0;
        let arv = self.proc2_has(SecondaryProcControls::APIC_REGISTER_VIRTUALIZATION);
        let vid = self.proc2_has(SecondaryProcControls::VIRTUAL_INTERRUPT_DELIVERY);
        let listed = if arv {
            write_virtualized(register)
        } else if vid {
            matches!(register, 0x080 | 0x0b0 | 0x300)
        } else {
            register == 0x080
        };
        if self.apic_access_plain(offset, size) || !listed {
            self.exit(EXIT_REASON_APIC_ACCESS, u64::from(offset) | 1 << 12, 0);
            return true;
        }
        let threshold = self.read(VmcsField::TprThreshold) & 0xf;
        let Some(page) = self.vapic.as_mut() else {
            return false;
        };
        // The bytes written land in the page (§30.4.3.1).
        let shift = (offset & 3) * 8;
        let mask = if size == 4 {
            u32::MAX
        } else {
            ((1u32 << (size * 8)) - 1) << shift
        };
        let old = page.read(register as usize);
        let word = (old & !mask) | ((value << shift) & mask);
        page.write(register as usize, word);
        match register {
            // TPR: bytes 3:1 cleared, then TPR virtualization.
            0x080 => match soft_apic::write_vtpr(self.fields, page, word & 0xff, vid, threshold) {
                soft_apic::TprVirtualized::Delivered(d) => {
                    self.delivered = d;
                    false
                }
                soft_apic::TprVirtualized::BelowThreshold => {
                    self.exit(EXIT_REASON_TPR_BELOW_THRESHOLD, 0, 0);
                    true
                }
            },
            // EOI: VEOI cleared, then EOI virtualization (with virtual-interrupt delivery).
            0x0b0 if vid => {
                page.write(0xb0, 0);
                match soft_apic::eoi(self.fields, page) {
                    Ok(_) => true,
                    Err(d) => {
                        self.delivered = d;
                        false
                    }
                }
            }
            0x300 if vid && virtualized_self_ipi(word) => {
                self.delivered = soft_apic::self_ipi(self.fields, page, word as u8);
                false
            }
            // ICR high: bytes 2:0 cleared; nothing else.
            0x310 => {
                page.write(0x310, word & 0xff00_0000);
                false
            }
            _ => {
                self.exit(EXIT_REASON_APIC_WRITE, u64::from(offset), 0);
                true
            }
        }
    }
}
