//! The host faults of the software VMX model: where a real CPU raises #GP on a host
//! instruction rhax-core executes (WRMSR, FXRSTOR, MOV to CR4), the model must not quietly
//! accept the value, or host tests pass code that bugchecks the real machine.
//!
//! Each function returns `Some(reason)` for an operation hardware refuses; [`SoftVmx`]
//! (`soft.rs`) then panics with `modelled host #GP: <reason>`, which fails the host test that
//! got there: every existing test checks these rules without asking.
//!
//! Rules from the Intel SDM (325462-083US): Vol. 4 (MSR tables) and Vol. 2 WRMSR ("#GP(0) if
//! the value written has reserved bits set, or a non-canonical address for an MSR holding
//! one"); Vol. 3A §13.11.2 (PAT memory-type encodings); Vol. 3A §19.4.1 (IA32_DEBUGCTL);
//! Vol. 1 §10.5.1 and Vol. 2 FXRSTOR (MXCSR bits outside MXCSR_MASK: #GP); Vol. 3A §2.5 and
//! Vol. 2 MOV CR (reserved CR4 bits; clearing CR4.PAE in IA-32e mode) and Vol. 3C §24.8 and
//! Appendix A.8 (CR4 in VMX operation: VMXE stays set, bits fixed by IA32_VMX_CR4_FIXED0/1).
//!
//! [`SoftVmx`]: crate::vmx::soft::SoftVmx

use alloc::string::String;

use rhax_api::fpu::{FxLayout, XsaveArea};

pub use crate::vmx::root::{
    IA32_APIC_BASE, IA32_CSTAR, IA32_DEBUGCTL, IA32_EFER, IA32_FEATURE_CONTROL, IA32_FMASK,
    IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_LSTAR, IA32_PAT, IA32_STAR,
    IA32_SYSENTER_CS, IA32_SYSENTER_EIP, IA32_SYSENTER_ESP, IA32_TSC, IA32_TSC_AUX,
};

/// Writable MSRs every model CPU has (besides those it was built with, except the read-only
/// VMX capability MSRs).
pub const ARCHITECTURAL_MSRS: [u32; 17] = [
    IA32_TSC,
    IA32_APIC_BASE,
    IA32_FEATURE_CONTROL,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_DEBUGCTL,
    IA32_PAT,
    IA32_EFER,
    IA32_STAR,
    IA32_LSTAR,
    IA32_CSTAR,
    IA32_FMASK,
    IA32_FS_BASE,
    IA32_GS_BASE,
    IA32_KERNEL_GS_BASE,
    IA32_TSC_AUX,
];

/// The model's MXCSR_MASK (what FXSAVE stores at byte 28): every MXCSR bit 15:0 writable, DAZ
/// included, as on every CPU since the Pentium 4 (SDM Vol. 1 §10.5.1.1).
pub const MXCSR_MASK: u32 = 0xffff;

/// Bits defined in CR4 (SDM Vol. 3A §2.5, Figure 2-7): 14:0 and 25:16 (bit 15 and 63:26
/// reserved).
pub const CR4_DEFINED: u64 = 0x03ff_7fff;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.VMXE.
pub const CR4_VMXE: u64 = 1 << 13;

/// Canonical for 48-bit linear addresses: bits 63:47 all equal.
pub fn canonical(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == 0x1_ffff
}

/// Why WRMSR(`msr`, `value`) raises #GP on the model, if it does. `exists`: the model CPU
/// implements `msr`; `feature_control`: the current IA32_FEATURE_CONTROL value.
pub fn wrmsr(msr: u32, value: u64, exists: bool, feature_control: u64) -> Option<String> {
    use alloc::format;
    if (0x480..=0x492).contains(&msr) {
        return Some(format!("WRMSR {msr:#x}: VMX capability MSRs are read-only"));
    }
    if !exists && !ARCHITECTURAL_MSRS.contains(&msr) {
        return Some(format!("WRMSR {msr:#x}: no such MSR on this CPU"));
    }
    let reserved = |mask: u64, what: &str| {
        (value & mask != 0).then(|| {
            format!(
                "WRMSR {msr:#x} ({what}) {value:#x}: reserved bits {:#x}",
                value & mask
            )
        })
    };
    match msr {
        IA32_FS_BASE | IA32_GS_BASE | IA32_KERNEL_GS_BASE | IA32_LSTAR | IA32_CSTAR
        | IA32_SYSENTER_ESP | IA32_SYSENTER_EIP
            if !canonical(value) =>
        {
            Some(format!("WRMSR {msr:#x} {value:#x}: non-canonical address"))
        }
        // Intel defines SCE (0), LME (8), LMA (10, ignored on write) and NXE (11).
        IA32_EFER => reserved(!(1 | 1 << 8 | 1 << 10 | 1 << 11), "EFER"),
        IA32_TSC_AUX => reserved(0xffff_ffff_0000_0000, "TSC_AUX"),
        IA32_FMASK => reserved(0xffff_ffff_0000_0000, "FMASK"),
        // Bits 1:0, 15:6 defined; 5:2 and 63:16 reserved.
        IA32_DEBUGCTL => reserved(!0xffc3, "DEBUGCTL"),
        IA32_PAT => (0..8)
            .map(|i| (value >> (8 * i)) as u8)
            .find(|&t| !matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
            .map(|t| format!("WRMSR PAT {value:#x}: invalid memory type {t:#x}")),
        IA32_FEATURE_CONTROL if feature_control & 1 != 0 => Some(format!(
            "WRMSR FEATURE_CONTROL {value:#x}: the MSR is locked"
        )),
        _ => None,
    }
}

/// Why MOV to DR0-DR3 of `values` raises #GP on the model, if it does: in 64-bit mode a
/// non-canonical breakpoint address is #GP(0) (SDM Vol. 2B MOV DR, "64-Bit Mode Exceptions").
pub fn write_breakpoint_addresses(values: &[u64; 4]) -> Option<String> {
    let (i, v) = values.iter().enumerate().find(|(_, v)| !canonical(**v))?;
    Some(alloc::format!("MOV DR{i}, {v:#x}: non-canonical address"))
}

/// Why FXRSTOR of `area` raises #GP on the model, if it does: MXCSR bits outside
/// [`MXCSR_MASK`] (the 16-byte alignment is the type's).
pub fn fxrstor(area: &FxLayout) -> Option<String> {
    let bad = area.mxcsr & !MXCSR_MASK;
    (bad != 0).then(|| {
        alloc::format!(
            "FXRSTOR: MXCSR {:#x} sets bits {bad:#x} outside MXCSR_MASK {MXCSR_MASK:#x}",
            area.mxcsr
        )
    })
}

/// Why MOV to CR4 of `value` raises #GP on the model, if it does. `long_mode`: EFER.LMA;
/// `vmx_fixed`: IA32_VMX_CR4_FIXED0/1 while in VMX operation.
pub fn write_cr4(value: u64, long_mode: bool, vmx_fixed: Option<(u64, u64)>) -> Option<String> {
    use alloc::format;
    if value & !CR4_DEFINED != 0 {
        return Some(format!(
            "MOV CR4 {value:#x}: reserved bits {:#x}",
            value & !CR4_DEFINED
        ));
    }
    if long_mode && value & CR4_PAE == 0 {
        return Some(format!("MOV CR4 {value:#x}: clears PAE in IA-32e mode"));
    }
    if let Some((fixed0, fixed1)) = vmx_fixed {
        if value & fixed0 != fixed0 || value & !fixed1 != 0 {
            return Some(format!(
                "MOV CR4 {value:#x} in VMX operation: outside IA32_VMX_CR4_FIXED0 {fixed0:#x} \
                 / FIXED1 {fixed1:#x} (VMXE must stay set)"
            ));
        }
    }
    None
}

/// Why XSETBV(ECX=0, `value`) raises #GP on the model, if it does (SDM Vol. 2C XSETBV;
/// Vol. 1 §13.3): a bit the CPU does not support (`supported`: CPUID.(EAX=0xD,ECX=0)
/// EDX:EAX), bit 0 clear, AVX (2) without SSE (1), the AVX-512 bits 7:5 not all equal or set
/// without AVX.
pub fn xsetbv(value: u64, supported: u64) -> Option<String> {
    use alloc::format;
    if value & !supported != 0 {
        return Some(format!(
            "XSETBV {value:#x}: bits {:#x} unsupported",
            value & !supported
        ));
    }
    if value & 1 == 0 {
        return Some(format!("XSETBV {value:#x}: x87 (bit 0) clear"));
    }
    if value & 4 != 0 && value & 2 == 0 {
        return Some(format!("XSETBV {value:#x}: AVX without SSE"));
    }
    let avx512 = value & 0xe0;
    if avx512 != 0 && (avx512 != 0xe0 || value & 4 == 0) {
        return Some(format!(
            "XSETBV {value:#x}: AVX-512 bits 7:5 partial or without AVX"
        ));
    }
    None
}

/// Why XSAVE/XRSTOR of `area` raises #GP on the model, if it does: an area not aligned to 64
/// bytes (SDM Vol. 1 §13.4: "#GP if the memory operand is not aligned on a 64-byte
/// boundary"). The type is aligned; the model checks the address anyway, as hardware does.
pub fn xsave_alignment(area: *const XsaveArea) -> Option<String> {
    let a = area as usize;
    (a % 64 != 0).then(|| alloc::format!("XSAVE/XRSTOR: area {a:#x} not 64-byte aligned"))
}

/// Why a standard-form XRSTOR of `area` with `rfbm` (= EDX:EAX & XCR0) under `xcr0` raises
/// #GP on the model, if it does (SDM Vol. 1 §13.8.1): XSTATE_BV has a bit outside XCR0,
/// XCOMP_BV is not 0 (the compacted form needs bit 63 and XSAVEC, which rhax never uses),
/// header bytes 16-23 not 0, or MXCSR has bits outside [`MXCSR_MASK`] when RFBM[1] or RFBM[2]
/// is set (XRSTOR loads MXCSR then).
pub fn xrstor(area: &XsaveArea, xcr0: u64, rfbm: u64) -> Option<String> {
    use alloc::format;
    if let Some(why) = xsave_alignment(area) {
        return Some(why);
    }
    let h = &area.header;
    if h.xstate_bv & !xcr0 != 0 {
        return Some(format!(
            "XRSTOR: XSTATE_BV {:#x} sets bits outside XCR0 {xcr0:#x}",
            h.xstate_bv
        ));
    }
    if h.xcomp_bv != 0 || h.reserved[0] != 0 {
        return Some(format!(
            "XRSTOR: header bytes 8-23 not 0 (XCOMP_BV {:#x})",
            h.xcomp_bv
        ));
    }
    if rfbm & 6 != 0 && area.legacy.mxcsr & !MXCSR_MASK != 0 {
        return Some(format!(
            "XRSTOR: MXCSR {:#x} outside MXCSR_MASK",
            area.legacy.mxcsr
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrmsr_rules() {
        let ok = |m, v| wrmsr(m, v, false, 0).is_none();
        assert!(ok(IA32_LSTAR, 0xffff_8000_0000_1000));
        assert!(!ok(IA32_LSTAR, 0x0000_8000_0000_0000));
        for m in [
            IA32_FS_BASE,
            IA32_GS_BASE,
            IA32_KERNEL_GS_BASE,
            IA32_CSTAR,
            IA32_SYSENTER_ESP,
            IA32_SYSENTER_EIP,
        ] {
            assert!(!ok(m, 0x1234_5678_9abc_def0), "{m:#x}");
            assert!(ok(m, 0x7fff_ffff_f000), "{m:#x}");
        }
        assert!(ok(IA32_EFER, 0xd01));
        assert!(!ok(IA32_EFER, 0x1d01), "SVME is AMD's");
        assert!(ok(IA32_TSC_AUX, 0xffff_ffff));
        assert!(!ok(IA32_TSC_AUX, 1 << 32));
        assert!(!ok(IA32_FMASK, 1 << 40));
        assert!(ok(IA32_PAT, 0x0007_0406_0007_0406));
        assert!(!ok(IA32_PAT, 0x0007_0406_0007_0402), "type 2 is reserved");
        assert!(!ok(IA32_PAT, 0x0007_0406_0007_0416), "bits 7:3 of an entry");
        assert!(ok(IA32_DEBUGCTL, 0x1));
        assert!(!ok(IA32_DEBUGCTL, 0x4));
        assert!(!ok(0x4000_1234, 0));
        assert!(wrmsr(0x4000_1234, 0, true, 0).is_none(), "a model MSR");
        assert!(wrmsr(0x480, 0, true, 0).is_some(), "VMX_BASIC is read-only");
        assert!(wrmsr(IA32_FEATURE_CONTROL, 5, true, 5).is_some(), "locked");
        assert!(wrmsr(IA32_FEATURE_CONTROL, 5, true, 0).is_none());
    }

    #[test]
    fn fxrstor_and_cr4_rules() {
        let mut fx = FxLayout {
            mxcsr: 0x1f80,
            ..FxLayout::default()
        };
        assert!(fxrstor(&fx).is_none());
        fx.mxcsr = 0x1_1f80;
        assert!(fxrstor(&fx).unwrap().contains("MXCSR"));
        assert!(write_cr4(0x6a0, true, None).is_none());
        assert!(write_cr4(0x6a0 | 1 << 15, true, None).is_some());
        assert!(write_cr4(0x6a0 | 1 << 40, true, None).is_some());
        assert!(
            write_cr4(0x680, true, None).is_some(),
            "PAE cleared in long mode"
        );
        let fixed = Some((0x2000, 0x3ff_7fff));
        assert!(write_cr4(0x26a0, true, fixed).is_none());
        assert!(
            write_cr4(0x6a0, true, fixed).is_some(),
            "VMXE cleared in VMX operation"
        );
    }
}
