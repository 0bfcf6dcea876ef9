//! `RhaxApicState`: the in-kernel local APIC's state, for snapshots (rhax extension).
//!
//! The register image follows the idea of KVM's `kvm_lapic_state`: the 1 KiB page image of
//! the xAPIC registers, where the 32-bit value of the register at MMIO offset `o` sits at
//! bytes `o..o + 4` (little-endian), so the image can also back a virtual-APIC page (Intel SDM
//! Vol. 3C §30.1, "Virtual APIC State"). In x2APIC mode the same slots hold the x2APIC values
//! (the ID register holds the 32-bit x2APIC ID, ICR high the 32-bit destination).
//!
//! The timer is saved as the TSC value at which its counter last held a known count
//! (`timer_start_tsc`, `timer_start_count`): with the divide configuration and the bus-tick
//! length the counter's value at any later TSC follows, so a restore continues exactly where
//! the save left off when the guest TSC is carried over.

use crate::pod::{assert_layout, impl_pod};

/// [`RhaxApicState::version`] of the layout defined here.
pub const RHAX_APIC_STATE_VERSION: u32 = 1;

/// [`RhaxApicState::flags`]: an NMI is latched.
pub const RHAX_APIC_NMI_PENDING: u32 = 1 << 0;
/// [`RhaxApicState::flags`]: an INIT is latched.
pub const RHAX_APIC_INIT_PENDING: u32 = 1 << 1;
/// [`RhaxApicState::flags`]: a start-up IPI is latched (vector in `sipi_vector`).
pub const RHAX_APIC_SIPI_PENDING: u32 = 1 << 2;
/// [`RhaxApicState::flags`]: the one-shot or periodic timer is counting.
pub const RHAX_APIC_TIMER_ARMED: u32 = 1 << 3;
/// Every defined bit of [`RhaxApicState::flags`].
pub const RHAX_APIC_FLAGS_ALL: u32 = 0xf;

/// The size of the register page image: offsets 0x000..0x400 of the xAPIC page.
pub const RHAX_APIC_REGS_SIZE: usize = 1024;

/// The local APIC of one vCPU (`RHAX_VCPU_IOCTL_GET/SET_APIC_STATE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RhaxApicState {
    /// [`RHAX_APIC_STATE_VERSION`].
    pub version: u32,
    /// `RHAX_APIC_*` flags.
    pub flags: u32,
    /// IA32_APIC_BASE (MSR 0x1b).
    pub base_msr: u64,
    /// IA32_TSC_DEADLINE (MSR 0x6e0); 0 when disarmed.
    pub tsc_deadline: u64,
    /// The TSC value at which the timer's counter held `timer_start_count` (only meaningful
    /// with [`RHAX_APIC_TIMER_ARMED`]).
    pub timer_start_tsc: u64,
    /// The counter's value at `timer_start_tsc`: the timer's remaining count then.
    pub timer_start_count: u32,
    /// Error bits detected since the last write to the ESR (not yet visible in it).
    pub esr_pending: u32,
    /// The latched start-up vector (with [`RHAX_APIC_SIPI_PENDING`]).
    pub sipi_vector: u8,
    /// Reserved, zero.
    pub pad: [u8; 7],
    /// The register page image, `value(offset) = regs[offset..offset + 4]`.
    pub regs: [u8; RHAX_APIC_REGS_SIZE],
}

impl_pod!(RhaxApicState);
assert_layout!(RhaxApicState, size = 1072, align = 8;
    version = 0, flags = 4, base_msr = 8, tsc_deadline = 16, timer_start_tsc = 24,
    timer_start_count = 32, esr_pending = 36, sipi_vector = 40, pad = 41, regs = 48,
);

impl RhaxApicState {
    /// The 32-bit register at MMIO `offset` (16-byte aligned, below 0x400) in the image.
    pub fn reg(&self, offset: usize) -> Option<u32> {
        let bytes = self.regs.get(offset..offset.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    /// Sets the 32-bit register at MMIO `offset` in the image; false if out of range.
    pub fn set_reg(&mut self, offset: usize, value: u32) -> bool {
        let Some(end) = offset.checked_add(4) else {
            return false;
        };
        match self.regs.get_mut(offset..end) {
            Some(bytes) => {
                bytes.copy_from_slice(&value.to_le_bytes());
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::Pod;

    #[test]
    fn register_slots() {
        let mut s = RhaxApicState::default();
        assert!(s.set_reg(0x80, 0x1234_5678));
        assert_eq!(&s.regs[0x80..0x84], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(s.reg(0x80), Some(0x1234_5678));
        assert_eq!(s.as_bytes()[48 + 0x80], 0x78);
        assert_eq!(s.reg(0x3fc), Some(0));
        assert_eq!(s.reg(0x3fd), None);
        assert!(!s.set_reg(0x3fd, 1));
        assert!(!s.set_reg(usize::MAX, 1));
    }
}
