//! `fx_layout`: the 512-byte FXSAVE image exchanged by `HAX_VCPU_IOCTL_SET_FPU` /
//! `HAX_VCPU_IOCTL_GET_FPU`.
//!
//! Source: HAXM 7.8.0 `include/hax_interface.h`, measured in `haxm-abi.md` §3. The format is
//! the FXSAVE area of Intel SDM Vol. 1, 10.5.1 "FXSAVE Area", Table 10-2 (32-bit form; the
//! 64-bit `fpu_ip`/`fpu_dp` views overlay `fip:fcs:res2` and `fdp:fds:res3`).

use crate::pod::{assert_layout, impl_pod};

/// `fx_layout`. Aligned to 16 bytes so that FXSAVE/FXRSTOR can use it directly (SDM Vol. 2A,
/// FXSAVE: "the destination operand must be aligned on a 16-byte boundary").
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FxLayout {
    /// `fcw`: x87 control word.
    pub fcw: u16,
    /// `fsw`: x87 status word.
    pub fsw: u16,
    /// `ftw`: abridged x87 tag word.
    pub ftw: u8,
    /// `res1`: reserved.
    pub res1: u8,
    /// `fop`: last x87 opcode.
    pub fop: u16,
    /// `fip`: x87 instruction pointer, bits 0-31 (see [`FxLayout::fpu_ip`]).
    pub fip: u32,
    /// `fcs`: x87 instruction pointer selector.
    pub fcs: u16,
    /// `res2`: reserved.
    pub res2: u16,
    /// `fdp`: x87 data pointer, bits 0-31 (see [`FxLayout::fpu_dp`]).
    pub fdp: u32,
    /// `fds`: x87 data pointer selector.
    pub fds: u16,
    /// `res3`: reserved.
    pub res3: u16,
    /// `mxcsr`.
    pub mxcsr: u32,
    /// `mxcsr_mask`.
    pub mxcsr_mask: u32,
    /// `st_mm[8][16]`: ST0-ST7 / MM0-MM7, 16 bytes each (80 bits used).
    pub st_mm: [[u8; 16]; 8],
    /// `mmx_1[8][16]`: XMM0-XMM7.
    pub mmx_1: [[u8; 16]; 8],
    /// `mmx_2[8][16]`: XMM8-XMM15.
    pub mmx_2: [[u8; 16]; 8],
    /// `pad[96]`: reserved / available bytes 416-511.
    pub pad: [u8; 96],
}

impl_pod!(FxLayout);
assert_layout!(FxLayout, size = 512, align = 16;
    fcw = 0, fsw = 2, ftw = 4, res1 = 5, fop = 6, fip = 8, fcs = 12, res2 = 14,
    fdp = 16, fds = 20, res3 = 22, mxcsr = 24, mxcsr_mask = 28,
    st_mm = 32, mmx_1 = 160, mmx_2 = 288, pad = 416,
);

impl FxLayout {
    /// `fpu_ip`: the 64-bit view of `fip`, `fcs`, `res2` (the C union member; in 64-bit
    /// FXSAVE format this is the full 64-bit FPU instruction pointer).
    pub const fn fpu_ip(&self) -> u64 {
        self.fip as u64 | (self.fcs as u64) << 32 | (self.res2 as u64) << 48
    }

    /// Sets `fpu_ip`, i.e. `fip`, `fcs` and `res2` together.
    pub fn set_fpu_ip(&mut self, value: u64) {
        self.fip = value as u32;
        self.fcs = (value >> 32) as u16;
        self.res2 = (value >> 48) as u16;
    }

    /// `fpu_dp`: the 64-bit view of `fdp`, `fds`, `res3`.
    pub const fn fpu_dp(&self) -> u64 {
        self.fdp as u64 | (self.fds as u64) << 32 | (self.res3 as u64) << 48
    }

    /// Sets `fpu_dp`, i.e. `fdp`, `fds` and `res3` together.
    pub fn set_fpu_dp(&mut self, value: u64) {
        self.fdp = value as u32;
        self.fds = (value >> 32) as u16;
        self.res3 = (value >> 48) as u16;
    }
}

#[cfg(test)]
mod tests {
    use super::FxLayout;
    use crate::pod::Pod;

    #[test]
    fn fpu_ip_dp_overlay_the_32_bit_fields() {
        let mut fx = FxLayout::default();
        fx.set_fpu_ip(0x1122_3344_5566_7788);
        fx.set_fpu_dp(0x99aa_bbcc_ddee_ff00);
        assert_eq!(fx.fip, 0x5566_7788);
        assert_eq!(fx.fcs, 0x3344);
        assert_eq!(fx.res2, 0x1122);
        // Same bytes as a u64 store at offset 8 / 16 in the C union.
        assert_eq!(
            u64::from_bytes(&fx.as_bytes()[8..16]),
            Some(0x1122_3344_5566_7788)
        );
        assert_eq!(
            u64::from_bytes(&fx.as_bytes()[16..24]),
            Some(0x99aa_bbcc_ddee_ff00)
        );
        assert_eq!(fx.fpu_ip(), 0x1122_3344_5566_7788);
        assert_eq!(fx.fpu_dp(), 0x99aa_bbcc_ddee_ff00);
    }
}
