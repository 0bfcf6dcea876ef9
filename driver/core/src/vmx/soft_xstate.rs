//! What XSAVE and XRSTOR do to the software VMX's registers (standard format, SDM Vol. 1
//! §13.7 and §13.8.1); the faults are `soft_faults`'s, checked by the caller first.

use rhax_api::fpu::{xcr0::COMPONENTS, FxLayout, XsaveArea};

/// The byte range of a component (`offset`, `len`) inside `XsaveArea::extended`.
fn range(offset: u32, len: u32) -> core::ops::Range<usize> {
    (offset as usize - 576)..(offset as usize - 576 + len as usize)
}

/// XSAVE of the components in `rfbm` (= EDX:EAX & XCR0) from the model's registers (`fpu`:
/// x87/SSE, `regs`: the extended components) into `area`. The legacy region is stored whole
/// when x87 or SSE is requested; every requested component is reported in use (XINUSE may
/// always be 1), XSTATE_BV bits outside `rfbm` are kept.
pub fn xsave(fpu: &FxLayout, regs: &XsaveArea, area: &mut XsaveArea, rfbm: u64) {
    if rfbm & 3 != 0 {
        area.legacy = *fpu;
    }
    for (bit, offset, len) in COMPONENTS {
        if rfbm & (1 << bit) != 0 {
            let r = range(offset, len);
            area.extended[r.clone()].copy_from_slice(&regs.extended[r]);
        }
    }
    area.header.xstate_bv = (area.header.xstate_bv & !rfbm) | rfbm;
}

/// XRSTOR of the components in `rfbm` from `area` into the model's registers: a requested
/// component whose XSTATE_BV bit is clear gets its initial configuration (the model: zeros;
/// x87: FCW 0x37F, the rest 0); MXCSR is loaded whenever SSE or AVX is requested.
pub fn xrstor(fpu: &mut FxLayout, regs: &mut XsaveArea, area: &XsaveArea, rfbm: u64) {
    let bv = area.header.xstate_bv;
    if rfbm & 1 != 0 {
        let mut legacy = if bv & 1 != 0 {
            area.legacy
        } else {
            FxLayout {
                fcw: 0x37f,
                ..FxLayout::default()
            }
        };
        // Only the x87 part belongs to component 0.
        legacy.mxcsr = fpu.mxcsr;
        legacy.mxcsr_mask = fpu.mxcsr_mask;
        legacy.mmx_1 = fpu.mmx_1;
        legacy.mmx_2 = fpu.mmx_2;
        *fpu = legacy;
    }
    if rfbm & 2 != 0 {
        if bv & 2 != 0 {
            fpu.mmx_1 = area.legacy.mmx_1;
            fpu.mmx_2 = area.legacy.mmx_2;
        } else {
            fpu.mmx_1 = Default::default();
            fpu.mmx_2 = Default::default();
        }
    }
    if rfbm & 6 != 0 {
        fpu.mxcsr = area.legacy.mxcsr;
    }
    for (bit, offset, len) in COMPONENTS {
        if rfbm & (1 << bit) != 0 {
            let r = range(offset, len);
            if bv & (1 << bit) != 0 {
                regs.extended[r.clone()].copy_from_slice(&area.extended[r]);
            } else {
                regs.extended[r].fill(0);
            }
        }
    }
}
