//! MSR transfer: `vmx_msr` and `hax_msr_data` (`HAX_VCPU_IOCTL_SET_MSRS` / `GET_MSRS`).
//!
//! Source: HAXM 7.8.0 `include/hax_interface.h`, measured in `haxm-abi.md` §3.

use crate::pod::{assert_layout, impl_pod};

/// `HAX_MAX_MSR_ARRAY`: the number of entries in [`MsrData`].
pub const HAX_MAX_MSR_ARRAY: usize = 32;

/// The most MSRs one SET/GET_MSRS call can carry: HAXM rejects `nr_msr >= 32`
/// (`haxm-abi.md` §2, SET_MSRS / GET_MSRS), so one entry is never usable.
pub const HAX_MAX_MSRS_PER_CALL: usize = HAX_MAX_MSR_ARRAY - 1;

/// `vmx_msr`: one MSR index and value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxMsr {
    /// `entry`: the MSR index (ECX of RDMSR/WRMSR).
    pub entry: u64,
    /// `value`.
    pub value: u64,
}

impl_pod!(VmxMsr);
assert_layout!(VmxMsr, size = 16; entry = 0, value = 8);

/// `hax_msr_data`: up to [`HAX_MAX_MSRS_PER_CALL`] MSRs.
///
/// HAXM processes `entries[0..nr_msr)` in order, stops at the first MSR it refuses and reports
/// the number processed in `done`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrData {
    /// `nr_msr`: the number of valid entries (must be below 32).
    pub nr_msr: u16,
    /// `done`: set by the driver to the number of entries processed.
    pub done: u16,
    /// `pad`.
    pub pad: u32,
    /// `entries[HAX_MAX_MSR_ARRAY]`.
    pub entries: [VmxMsr; HAX_MAX_MSR_ARRAY],
}

impl_pod!(MsrData);
assert_layout!(MsrData, size = 520; nr_msr = 0, done = 2, pad = 4, entries = 8);

impl MsrData {
    /// A request carrying `msrs`, or `None` if there are more than
    /// [`HAX_MAX_MSRS_PER_CALL`] of them.
    pub fn from_entries(msrs: &[VmxMsr]) -> Option<Self> {
        if msrs.len() > HAX_MAX_MSRS_PER_CALL {
            return None;
        }
        let mut data = Self {
            nr_msr: msrs.len() as u16,
            ..Self::default()
        };
        data.entries[..msrs.len()].copy_from_slice(msrs);
        Some(data)
    }

    /// The first `nr_msr` entries (all 32 if `nr_msr` is larger, which HAXM would refuse).
    pub fn entries(&self) -> &[VmxMsr] {
        let n = usize::from(self.nr_msr).min(HAX_MAX_MSR_ARRAY);
        &self.entries[..n]
    }

    /// The entries the driver reports as processed: the first `min(done, nr_msr)`.
    pub fn done_entries(&self) -> &[VmxMsr] {
        let n = usize::from(self.done).min(self.entries().len());
        &self.entries[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_entries_limits_and_slices() {
        let e = VmxMsr {
            entry: 0xc000_0080,
            value: 0x500,
        };
        let d = MsrData::from_entries(&[e; 31]).expect("31 fit");
        assert_eq!(d.nr_msr, 31);
        assert_eq!(d.entries().len(), 31);
        assert!(MsrData::from_entries(&[e; 32]).is_none());
        let mut d = MsrData::from_entries(&[e, e]).unwrap();
        d.done = 1;
        assert_eq!(d.done_entries(), &[e]);
        d.done = 9;
        assert_eq!(d.done_entries().len(), 2);
        d.nr_msr = 0xffff;
        assert_eq!(d.entries().len(), 32);
    }
}
