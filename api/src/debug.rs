//! `hax_debug_t`: the argument of `HAX_IOCTL_VCPU_DEBUG`, and its control bits.
//!
//! Source: HAXM 7.8.0 `include/hax_interface.h`, measured in `haxm-abi.md` §3 and §5.

use crate::pod::{assert_layout, impl_pod};

bitflags::bitflags! {
    /// `hax_debug_t.control`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DebugControl: u32 {
        /// `HAX_DEBUG_ENABLE`: debugging on; without it everything is cleared.
        const ENABLE = 0x1;
        /// `HAX_DEBUG_STEP`: single-step (RFLAGS.TF on entry).
        const STEP = 0x2;
        /// `HAX_DEBUG_USE_SW_BP`: intercept #BP.
        const USE_SW_BP = 0x4;
        /// `HAX_DEBUG_USE_HW_BP`: load DR0-3 and DR7 from `dr`, intercept #DB.
        const USE_HW_BP = 0x8;
    }
}

/// `hax_debug_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuDebug {
    /// `control`: see [`VcpuDebug::control`].
    pub control: u32,
    /// `reserved`.
    pub reserved: u32,
    /// `dr[8]`: DR0-DR7; only 0-3 and 7 are used.
    pub dr: [u64; 8],
}

impl_pod!(VcpuDebug);
assert_layout!(VcpuDebug, size = 72; control = 0, reserved = 4, dr = 8);

impl VcpuDebug {
    /// `control`, typed (unknown bits kept).
    pub const fn control(&self) -> DebugControl {
        DebugControl::from_bits_retain(self.control)
    }
}
