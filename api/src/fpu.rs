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

/// The bytes an [`XsaveArea`] holds: the legacy region (512), the XSAVE header (64) and the
/// extended region up to 4 KiB. The standard-format offsets of the components rhax switches
/// end at 2688 (Hi16_ZMM, SDM Vol. 1 §13.4.3 and CPUID leaf 0xD); 4 KiB leaves room.
pub const XSAVE_AREA_SIZE: usize = 4096;

/// The XSAVE header (SDM Vol. 1 §13.4.2): bytes 512-575 of an XSAVE area.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsaveHeader {
    /// XSTATE_BV: which components the area holds (a clear bit: that component is in its
    /// initial configuration).
    pub xstate_bv: u64,
    /// XCOMP_BV: bit 63 set for the compacted format; rhax uses the standard format (0).
    pub xcomp_bv: u64,
    /// Bytes 16-63: reserved, 0.
    pub reserved: [u64; 6],
}

impl_pod!(XsaveHeader);
assert_layout!(XsaveHeader, size = 64; xstate_bv = 0, xcomp_bv = 8, reserved = 16);

/// A standard-format XSAVE area (SDM Vol. 1 §13.4): the FXSAVE image, the header, the
/// extended components at the offsets CPUID leaf 0xD gives. Aligned to 64 bytes (XSAVE and
/// XRSTOR raise #GP on a misaligned area, SDM Vol. 1 §13.4).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsaveArea {
    /// Bytes 0-511: the legacy region, the FXSAVE image.
    pub legacy: FxLayout,
    /// Bytes 512-575.
    pub header: XsaveHeader,
    /// Bytes 576 up: the extended region.
    pub extended: [u8; XSAVE_AREA_SIZE - 576],
}

impl_pod!(XsaveArea);
assert_layout!(XsaveArea, size = XSAVE_AREA_SIZE, align = 64;
    legacy = 0, header = 512, extended = 576);

/// XCR0 state-component bits (SDM Vol. 1 §13.1, Figure 13-1): x87 (0), SSE (1), AVX (2),
/// and the three AVX-512 components opmask (5), ZMM_Hi256 (6), Hi16_ZMM (7).
pub mod xcr0 {
    /// x87 state.
    pub const X87: u64 = 1 << 0;
    /// SSE state (XMM registers, MXCSR).
    pub const SSE: u64 = 1 << 1;
    /// AVX state (upper halves of YMM0-15).
    pub const AVX: u64 = 1 << 2;
    /// opmask, ZMM_Hi256, Hi16_ZMM.
    pub const AVX512: u64 = 0xe0;
    /// The components rhax switches between guest and host (XSAVE/XRSTOR around runs): no
    /// MPX (3, 4; deprecated), no PKRU (9; PKU is hidden in CPUID), no AMX (17, 18).
    pub const SWITCHED: u64 = X87 | SSE | AVX | AVX512;

    /// (bit, offset, size) of the extended components of [`SWITCHED`] in the standard-format
    /// XSAVE area: CPUID.(EAX=0xD,ECX=i).EBX/EAX, which every Intel CPU with these
    /// components reports with these values (SDM Vol. 1 §13.4.3; rhax hides a component
    /// whose host enumeration differs, see rhax-core's `vcpu::cpuid`).
    pub const COMPONENTS: [(u32, u32, u32); 4] = [
        (2, 576, 256),
        (5, 1088, 64),
        (6, 1152, 512),
        (7, 1664, 1024),
    ];

    /// The size of the standard-format XSAVE area for `xcr0` (what CPUID.(EAX=0xD,ECX=0).EBX
    /// reports for it): 576 (legacy region and header) or the end of the last component.
    pub const fn area_size(xcr0: u64) -> u32 {
        let mut size = 576;
        let mut i = 0;
        while i < COMPONENTS.len() {
            let (bit, offset, len) = COMPONENTS[i];
            if xcr0 & (1 << bit) != 0 && offset + len > size {
                size = offset + len;
            }
            i += 1;
        }
        size
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
