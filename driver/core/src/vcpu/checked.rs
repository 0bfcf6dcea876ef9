//! Values that reach privileged instructions or VM-entry checks, checked where they come in.
//!
//! A value from an IOCTL or from the guest that the host later hands to WRMSR, FXRSTOR or a
//! VMCS guest-state field is checked here, once, against the architectural rules, and past
//! that point travels as a type only this module can build. Hardware faults in the host
//! (#GP on WRMSR of a non-canonical LSTAR, on FXRSTOR of an MXCSR with bits outside
//! MXCSR_MASK) are a bugcheck for every user; a value VM entry refuses wedges the vCPU. Both
//! are refused at the edge instead: the IOCTL fails (or stops its batch), the guest gets #GP.
//!
//! Sources: SDM Vol. 4 (MSR definitions), Vol. 2B WRMSR "Protected Mode Exceptions", Vol. 1
//! §10.5.1 (FXSAVE/FXRSTOR, MXCSR_MASK), Vol. 3A §2.5 (CR0/CR4), Vol. 3C §27.3.1 (guest-state
//! checks on VM entry).

use crate::vcpu::bits::{
    CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_OSXSAVE, CR4_PAE, CR4_PCIDE, CR4_PKE, CR4_SMXE, CR4_VMXE,
    EFER_LMA, EFER_LME,
};
use alloc::boxed::Box;
use rhax_api::debug::{DebugControl, VcpuDebug};
use rhax_api::fpu::{FxLayout, XsaveArea};

/// Why a value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// An address an MSR or VMCS field must hold canonically is not canonical.
    NonCanonical,
    /// Reserved bits are set.
    ReservedBits,
    /// The write is not allowed in the current state (EFER.LME with paging on, CR0.PG without
    /// PE, CR0.NW without CD, ...).
    InvalidTransition,
}

/// True when bits 63:47 of `v` are all equal (canonical for 48-bit linear addresses). The
/// host may support 57-bit addresses, but 48 bits are canonical everywhere, and no guest of
/// rhax sees LA57 (CPUID leaf 7 ECX bit 16 is not passed through).
pub const fn is_canonical(v: u64) -> bool {
    (((v << 16) as i64) >> 16) as u64 == v
}

/// IA32_KERNEL_GS_BASE, STAR, LSTAR, CSTAR, FMASK, TSC_AUX: the guest values the host loads
/// with WRMSR around runs (VMX does not switch them).
pub const SWAPPED_MSRS: [u32; 6] = [
    0xc000_0102, // IA32_KERNEL_GS_BASE
    0xc000_0081, // IA32_STAR
    0xc000_0082, // IA32_LSTAR
    0xc000_0083, // IA32_CSTAR
    0xc000_0084, // IA32_FMASK
    0xc000_0103, // IA32_TSC_AUX
];

/// A guest value of one of [`SWAPPED_MSRS`] that WRMSR accepts on every Intel 64 CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwappedMsrValue {
    slot: usize,
    value: u64,
}

impl SwappedMsrValue {
    /// `None` when `msr` is not swapped; otherwise the checked value or why WRMSR would raise
    /// #GP: KERNEL_GS_BASE, LSTAR and CSTAR must be canonical (SDM Vol. 2B WRMSR; KVM checks
    /// CSTAR too), TSC_AUX and FMASK have bits 63:32 reserved (SDM Vol. 4 Table 2-2).
    pub fn check(msr: u32, value: u64) -> Option<Result<Self, Refused>> {
        let slot = SWAPPED_MSRS.iter().position(|&m| m == msr)?;
        let ok = match msr {
            0xc000_0102 | 0xc000_0082 | 0xc000_0083 => {
                if is_canonical(value) {
                    Ok(())
                } else {
                    Err(Refused::NonCanonical)
                }
            }
            0xc000_0084 | 0xc000_0103 if value >> 32 != 0 => Err(Refused::ReservedBits),
            _ => Ok(()),
        };
        Some(ok.map(|()| SwappedMsrValue { slot, value }))
    }

    /// Index into [`SWAPPED_MSRS`].
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The MSR index.
    pub fn msr(&self) -> u32 {
        SWAPPED_MSRS[self.slot]
    }

    /// The value.
    pub fn value(&self) -> u64 {
        self.value
    }
}

/// The MXCSR bits this CPU supports (SDM Vol. 1 §10.5.1.2): the MXCSR_MASK field of an FXSAVE
/// image taken on the host, or 0xFFBF when that field is 0 (CPUs before DAZ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MxcsrMask(u32);

impl MxcsrMask {
    /// The architectural default (DAZ unsupported): a subset of every CPU's mask.
    pub const DEFAULT: MxcsrMask = MxcsrMask(0xffbf);

    /// From the MXCSR_MASK field of an FXSAVE image the host took.
    pub fn from_host_fxsave(field: u32) -> MxcsrMask {
        if field == 0 {
            MxcsrMask::DEFAULT
        } else {
            MxcsrMask(field)
        }
    }

    /// The mask.
    pub fn bits(self) -> u32 {
        self.0
    }
}

/// A guest x87/SSE image that FXRSTOR accepts on this host: MXCSR has no bit outside the
/// host's MXCSR_MASK (else FXRSTOR raises #GP, SDM Vol. 1 §10.5.1.2). The image's own
/// `mxcsr_mask` field is ignored by FXRSTOR and says nothing about the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FxImage(FxLayout);

impl FxImage {
    /// Checks `image` against the host's mask.
    pub fn check(image: &FxLayout, host: MxcsrMask) -> Result<FxImage, Refused> {
        if image.mxcsr & !host.bits() != 0 {
            return Err(Refused::ReservedBits);
        }
        Ok(FxImage(*image))
    }

    /// The image.
    pub fn get(&self) -> &FxLayout {
        &self.0
    }
}

pub use rhax_api::fpu::xcr0;

/// A value XSETBV accepts for XCR0 in the guest (SDM Vol. 2C XSETBV "#GP(0)", Vol. 1
/// §13.3): ECX = 0, CPL 0, bit 0 set, AVX only with SSE, the AVX-512 bits all set or all
/// clear and only with AVX, no bit outside the set this vCPU may enable. The host loads it
/// with XSETBV before entering the guest, so a value hardware refuses never gets there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestXcr0(u64);

impl GuestXcr0 {
    /// XCR0 after reset: x87 only (SDM Vol. 3A Table 10-1).
    pub const POWER_ON: GuestXcr0 = GuestXcr0(xcr0::X87);

    /// Checks an XSETBV: `ecx` selects the XCR (only XCR0 exists), `cpl` is the guest's
    /// privilege level, `allowed` the components the guest may enable (its CPUID leaf 0xD
    /// intersected with [`xcr0::SWITCHED`] and the host's XCR0).
    pub fn from_xsetbv(ecx: u32, value: u64, cpl: u8, allowed: u64) -> Result<GuestXcr0, Refused> {
        if ecx != 0 {
            return Err(Refused::ReservedBits);
        }
        if cpl != 0 {
            return Err(Refused::InvalidTransition);
        }
        Self::check(value, allowed)
    }

    /// The XCR0 rules alone (also for a value restored by an IOCTL).
    pub fn check(value: u64, allowed: u64) -> Result<GuestXcr0, Refused> {
        if value & !(allowed & xcr0::SWITCHED) != 0 {
            return Err(Refused::ReservedBits);
        }
        if value & xcr0::X87 == 0 {
            return Err(Refused::InvalidTransition);
        }
        if value & xcr0::AVX != 0 && value & xcr0::SSE == 0 {
            return Err(Refused::InvalidTransition);
        }
        let avx512 = value & xcr0::AVX512;
        if avx512 != 0 && (avx512 != xcr0::AVX512 || value & xcr0::AVX == 0) {
            return Err(Refused::InvalidTransition);
        }
        Ok(GuestXcr0(value))
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A whole guest XSAVE image (standard format) that XRSTOR accepts on this host with the
/// guest's XCR0 (SDM Vol. 1 §13.8.1 "#GP"): XSTATE_BV only bits of XCR0, XCOMP_BV 0 (rhax
/// uses the standard format), the rest of the header 0 (hardware checks bytes 8-23; the
/// IOCTL refuses any reserved byte), MXCSR within the host's MXCSR_MASK. Bytes past the
/// XCR0's area size are cleared. Boxed: 4 KiB never travels on a kernel stack.
pub struct XsaveImage(Box<XsaveArea>);

impl XsaveImage {
    /// Checks `area` for `xcr0`; gives the box back on refusal.
    pub fn check(
        mut area: Box<XsaveArea>,
        xcr0: GuestXcr0,
        host: MxcsrMask,
    ) -> Result<XsaveImage, (Box<XsaveArea>, Refused)> {
        let h = &area.header;
        if h.xstate_bv & !xcr0.get() != 0 || h.xcomp_bv != 0 || h.reserved.iter().any(|&r| r != 0) {
            return Err((area, Refused::ReservedBits));
        }
        if area.legacy.mxcsr & !host.bits() != 0 {
            return Err((area, Refused::ReservedBits));
        }
        let size = xcr0::area_size(xcr0.get()) as usize;
        if let Some(tail) = area.extended.get_mut(size.saturating_sub(576)..) {
            tail.fill(0);
        }
        Ok(XsaveImage(area))
    }

    /// The checked area.
    pub fn into_inner(self) -> Box<XsaveArea> {
        self.0
    }
}

/// IA32_EFER bits a guest may hold: SCE (0), LME (8), LMA (10), NXE (11).
pub const EFER_VALID: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);

/// A value for the guest's IA32_EFER that VM entry accepts with the matching "IA-32e mode
/// guest" control (SDM §27.3.1.1: reserved bits 0, LMA = the control).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestEfer(u64);

impl GuestEfer {
    /// A guest WRMSR (SDM Vol. 4 IA32_EFER, Vol. 3A §11.8.5): reserved bits → #GP; LME may
    /// not change while CR0.PG = 1 → #GP; LMA is read-only (the current value stays).
    pub fn from_guest(value: u64, current: u64, cr0: u64) -> Result<GuestEfer, Refused> {
        if value & !EFER_VALID != 0 {
            return Err(Refused::ReservedBits);
        }
        if cr0 & CR0_PG != 0 && (value ^ current) & EFER_LME != 0 {
            return Err(Refused::InvalidTransition);
        }
        Ok(GuestEfer((value & !EFER_LMA) | (current & EFER_LMA)))
    }

    /// SET_MSRS from user space, which restores a whole state (QEMU writes LMA with the rest
    /// after SET_REGS): only reserved bits are refused.
    pub fn from_user(value: u64) -> Result<GuestEfer, Refused> {
        if value & !EFER_VALID != 0 {
            return Err(Refused::ReservedBits);
        }
        Ok(GuestEfer(value))
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// EFER.LMA.
    pub fn lma(self) -> bool {
        self.0 & EFER_LMA != 0
    }
}

/// A canonical address for a VMCS guest field VM entry checks (FS/GS base, SYSENTER_ESP/EIP:
/// SDM §27.3.1.1-2). WRMSR of a non-canonical value to these MSRs raises #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CanonicalAddress(u64);

impl CanonicalAddress {
    /// Checks `value`.
    pub fn check(value: u64) -> Result<CanonicalAddress, Refused> {
        if is_canonical(value) {
            Ok(CanonicalAddress(value))
        } else {
            Err(Refused::NonCanonical)
        }
    }

    /// The address.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A `HAX_IOCTL_VCPU_DEBUG` request the vCPU can carry out: no unknown control bit, and with
/// `USE_HW_BP` breakpoint addresses MOV to DR0-3 accepts and a DR7 VM entry accepts with
/// only the breakpoint kinds whose meaning does not depend on the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRequest {
    control: DebugControl,
    breakpoints: Option<HostBreakpoints>,
}

/// The debugger's DR0-DR3 and DR7, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBreakpoints {
    addresses: [u64; 4],
    dr7: u64,
}

/// DR7 bits a debugger may set: L0-3/G0-3 (7:0), LE/GE (9:8), R/W and LEN of each breakpoint
/// (31:16). Bit 10 reads as 1; bits 12, 14, 15 and 63:32 are reserved (SDM Vol. 3B §18.2.4,
/// and VM entry refuses bits 63:32, Vol. 3C §27.3.1.1); bit 11 (RTM) is reserved without RTM,
/// which the guest does not see; bit 13 (GD) would turn the guest's own MOV DR into #DB
/// faults, which take priority over the MOV-DR exit (SDM Vol. 3C §26.1.1), so the guest would
/// see the debugger.
const DEBUGGER_DR7: u64 = 0xffff_03ff;

impl DebugRequest {
    /// Checks `d`. With `USE_HW_BP` (and `ENABLE`): DR0-3 canonical (MOV to DR0-3 of a
    /// non-canonical address is #GP in 64-bit mode, SDM Vol. 2B MOV DR), DR7 within
    /// [`DEBUGGER_DR7`], no I/O breakpoint (R/W = 10b means an I/O breakpoint only with the
    /// guest's CR4.DE and is undefined without it) and instruction breakpoints (R/W = 00b) of
    /// length 1 (LEN = 00b; other lengths are undefined, SDM Vol. 3B §18.2.5).
    pub fn check(d: &VcpuDebug) -> Result<DebugRequest, Refused> {
        let control = DebugControl::from_bits(d.control).ok_or(Refused::ReservedBits)?;
        let hw = control.contains(DebugControl::ENABLE | DebugControl::USE_HW_BP);
        let breakpoints = if hw {
            let addresses = [d.dr[0], d.dr[1], d.dr[2], d.dr[3]];
            if !addresses.iter().all(|&a| is_canonical(a)) {
                return Err(Refused::NonCanonical);
            }
            let dr7 = d.dr[7];
            if dr7 & !(DEBUGGER_DR7 | DR7_FIXED1) != 0 {
                return Err(Refused::ReservedBits);
            }
            for n in 0..4 {
                let rw = (dr7 >> (16 + 4 * n)) & 3;
                let len = (dr7 >> (18 + 4 * n)) & 3;
                if rw == 2 || (rw == 0 && len != 0) {
                    return Err(Refused::ReservedBits);
                }
            }
            Some(HostBreakpoints {
                addresses,
                dr7: dr7 | DR7_FIXED1,
            })
        } else {
            None
        };
        Ok(DebugRequest {
            control,
            breakpoints,
        })
    }

    /// The control bits.
    pub fn control(&self) -> DebugControl {
        self.control
    }

    /// The debugger's breakpoints (`ENABLE | USE_HW_BP`).
    pub fn breakpoints(&self) -> Option<HostBreakpoints> {
        self.breakpoints
    }
}

/// DR7 bit 10, which always reads as 1 (SDM Vol. 3B §18.2.4).
pub const DR7_FIXED1: u64 = 0x400;

impl HostBreakpoints {
    /// DR0-DR3, canonical.
    pub fn addresses(&self) -> &[u64; 4] {
        &self.addresses
    }

    /// DR7 (bits 63:32 clear, bit 10 set).
    pub fn dr7(&self) -> u64 {
        self.dr7
    }

    /// Whether breakpoint `n` (0-3) is an instruction breakpoint (R/W = 00b): a fault, so the
    /// guest resumes at it with RFLAGS.RF set (SDM Vol. 3B §18.3.1.1).
    pub fn is_instruction(&self, n: usize) -> bool {
        (self.dr7 >> (16 + 4 * n)) & 3 == 0
    }
}

/// IA32_DEBUGCTL as the guest may hold it: BTF (bit 1) is kept; LBR (bit 0) is dropped (LBRs
/// are not virtualized; KVM does the same); any other bit → #GP (KVM's rule; bits 2-5 and
/// 16-63 are reserved, SDM Vol. 4, and VM entry refuses reserved bits, §27.3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestDebugCtl(u64);

impl GuestDebugCtl {
    /// Checks `value`.
    pub fn check(value: u64) -> Result<GuestDebugCtl, Refused> {
        if value & !0x3 != 0 {
            return Err(Refused::ReservedBits);
        }
        Ok(GuestDebugCtl(value & 0x2))
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A guest MOV to CR0 that hardware accepts (SDM Vol. 2B MOV CR, Vol. 3A §2.5): bits 63:32
/// set → #GP; PG without PE → #GP; NW without CD → #GP; PG set with EFER.LME and CR4.PAE
/// clear → #GP; PG cleared in 64-bit mode (CS.L) → #GP. Reserved bits of 31:0 are ignored
/// (written as 0), as hardware does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestCr0(u64);

/// CR0 bits 31:0 that exist: PE MP EM TS ET NE (5:0), WP (16), AM (18), NW CD PG (31:29).
const CR0_DEFINED: u64 = 0x3f | (1 << 16) | (1 << 18) | (7 << 29);

impl GuestCr0 {
    /// Checks a new value against the current state.
    pub fn check(value: u64, efer: u64, cr4: u64, cs_long: bool) -> Result<GuestCr0, Refused> {
        if value >> 32 != 0 {
            return Err(Refused::ReservedBits);
        }
        let v = value & CR0_DEFINED;
        if v & CR0_PG != 0 && v & CR0_PE == 0 {
            return Err(Refused::InvalidTransition);
        }
        if v & CR0_NW != 0 && v & CR0_CD == 0 {
            return Err(Refused::InvalidTransition);
        }
        if v & CR0_PG != 0 && efer & EFER_LME != 0 && cr4 & CR4_PAE == 0 {
            return Err(Refused::InvalidTransition);
        }
        if v & CR0_PG == 0 && cs_long && efer & EFER_LMA != 0 {
            return Err(Refused::InvalidTransition);
        }
        Ok(GuestCr0(v))
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A guest MOV to CR4 that hardware accepts: only bits the CPU supports (IA32_VMX_CR4_FIXED1)
/// other than VMXE and SMXE (VMX is hidden from the guest) and PKE (the guest's CPUID hides
/// PKU, and rhax does not switch PKRU: a guest WRPKRU would change the host's), OSXSAVE only
/// when `xsave` (the
/// host switches XSAVE state and the guest's CPUID shows XSAVE), PAE not cleared in IA-32e
/// mode,
/// PCIDE set only in IA-32e mode with CR3[11:0] = 0 (SDM Vol. 2B MOV CR "#GP(0)").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestCr4(u64);

impl GuestCr4 {
    /// Checks a new value; `may_be_one` is the CPU's IA32_VMX_CR4_FIXED1.
    pub fn check(
        value: u64,
        current: u64,
        may_be_one: u64,
        efer: u64,
        cr3: u64,
        xsave: bool,
    ) -> Result<GuestCr4, Refused> {
        let hidden = CR4_VMXE | CR4_SMXE | CR4_PKE | if xsave { 0 } else { CR4_OSXSAVE };
        if value & !(may_be_one & !hidden) != 0 {
            return Err(Refused::ReservedBits);
        }
        let lma = efer & EFER_LMA != 0;
        if lma && value & CR4_PAE == 0 {
            return Err(Refused::InvalidTransition);
        }
        if value & CR4_PCIDE != 0 && current & CR4_PCIDE == 0 && (!lma || cr3 & 0xfff != 0) {
            return Err(Refused::InvalidTransition);
        }
        Ok(GuestCr4(value))
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A guest MOV to CR3 that hardware accepts: no bit at or above MAXPHYADDR (bit 63 is the
/// "no flush" hint with CR4.PCIDE and is not stored; SDM Vol. 3A §4.10.4.1). VM entry checks
/// the same bits (§27.3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestCr3(u64);

impl GuestCr3 {
    /// Checks `value` for a CPU with `maxphyaddr` physical-address bits (clamped to 36..=52).
    pub fn check(value: u64, maxphyaddr: u8, pcide: bool) -> Result<GuestCr3, Refused> {
        let v = if pcide { value & !(1 << 63) } else { value };
        let width = maxphyaddr.clamp(36, 52);
        if v >> width != 0 {
            return Err(Refused::ReservedBits);
        }
        Ok(GuestCr3(v))
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_boundaries() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0x8000_0000_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0xfffe_ffff_ffff_ffff));
    }

    #[test]
    fn swapped_msrs_refuse_what_wrmsr_faults_on() {
        assert_eq!(SwappedMsrValue::check(0x10, 0), None);
        for msr in [0xc000_0102, 0xc000_0082, 0xc000_0083] {
            assert_eq!(
                SwappedMsrValue::check(msr, 0x8000_0000_0000_0000),
                Some(Err(Refused::NonCanonical))
            );
            assert!(SwappedMsrValue::check(msr, 0xffff_8000_0000_1000)
                .unwrap()
                .is_ok());
        }
        for msr in [0xc000_0084, 0xc000_0103] {
            assert_eq!(
                SwappedMsrValue::check(msr, 1 << 32),
                Some(Err(Refused::ReservedBits))
            );
        }
        let star = SwappedMsrValue::check(0xc000_0081, u64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(
            (star.msr(), star.value(), star.slot()),
            (0xc000_0081, u64::MAX, 1)
        );
    }

    #[test]
    fn fx_image_is_checked_against_the_host_mask_not_its_own() {
        let mut f = FxLayout {
            mxcsr: 0x1f80 | (1 << 6),
            mxcsr_mask: 0xffff_ffff,
            ..FxLayout::default()
        };
        assert_eq!(
            FxImage::check(&f, MxcsrMask::DEFAULT),
            Err(Refused::ReservedBits)
        );
        assert!(FxImage::check(&f, MxcsrMask::from_host_fxsave(0xffff)).is_ok());
        f.mxcsr = 0x1_0000;
        assert!(FxImage::check(&f, MxcsrMask::from_host_fxsave(0xffff)).is_err());
        assert_eq!(MxcsrMask::from_host_fxsave(0), MxcsrMask::DEFAULT);
    }

    #[test]
    fn efer_rules() {
        let pg = 1 << 31;
        assert_eq!(
            GuestEfer::from_guest(1 << 9, 0, 0),
            Err(Refused::ReservedBits)
        );
        assert_eq!(
            GuestEfer::from_guest(EFER_LME, 0, pg),
            Err(Refused::InvalidTransition)
        );
        // LMA is read-only for the guest.
        assert_eq!(GuestEfer::from_guest(EFER_LMA | 1, 0, 0).unwrap().get(), 1);
        assert_eq!(
            GuestEfer::from_guest(EFER_LME, EFER_LME | EFER_LMA, pg)
                .unwrap()
                .get(),
            EFER_LME | EFER_LMA
        );
        assert!(GuestEfer::from_user(0xd01).unwrap().lma());
        assert!(GuestEfer::from_user(1 << 12).is_err());
    }

    #[test]
    fn cr_rules() {
        let lme = EFER_LME;
        assert!(GuestCr0::check(1 << 32, 0, 0, false).is_err());
        assert!(GuestCr0::check(CR0_PG, 0, 0, false).is_err());
        assert!(GuestCr0::check(CR0_NW | 1, 0, 0, false).is_err());
        assert!(GuestCr0::check(CR0_PG | 1, lme, 0, false).is_err());
        assert!(GuestCr0::check(CR0_PG | 1, lme, CR4_PAE, false).is_ok());
        assert!(GuestCr0::check(1, lme | EFER_LMA, CR4_PAE, true).is_err());
        // Reserved bits of 31:0 are ignored, not faulted.
        assert_eq!(
            GuestCr0::check(0x11 | (1 << 6), 0, 0, false).unwrap().get(),
            0x11
        );
        let fixed1 = 0x3727ff;
        assert!(GuestCr4::check(CR4_VMXE, 0, fixed1, 0, 0, false).is_err());
        assert!(GuestCr4::check(1 << 25, 0, fixed1, 0, 0, false).is_err());
        assert!(GuestCr4::check(CR4_OSXSAVE, 0, fixed1 | CR4_OSXSAVE, 0, 0, false).is_err());
        // PKE: refused even where the CPU has it (PKRU is not switched).
        assert!(GuestCr4::check(CR4_PKE, 0, fixed1 | CR4_PKE, 0, 0, true).is_err());
        assert!(GuestCr4::check(CR4_OSXSAVE, 0, fixed1 | CR4_OSXSAVE, 0, 0, true).is_ok());
        // Not where the CPU lacks it, whatever CPUID says.
        assert!(GuestCr4::check(CR4_OSXSAVE, 0, fixed1 & !CR4_OSXSAVE, 0, 0, true).is_err());
        assert!(GuestCr4::check(0, CR4_PAE, fixed1, EFER_LMA, 0, false).is_err());
        assert!(GuestCr4::check(CR4_PAE | CR4_PCIDE, CR4_PAE, fixed1, 0, 0, false).is_err());
        assert!(GuestCr4::check(CR4_PAE | CR4_PCIDE, CR4_PAE, fixed1, EFER_LMA, 0, false).is_ok());
        assert!(GuestCr3::check(1 << 46, 46, false).is_err());
        assert_eq!(
            GuestCr3::check((1 << 63) | 0x1000, 46, true).unwrap().get(),
            0x1000
        );
        assert!(GuestCr3::check(1 << 63, 46, false).is_err());
    }

    #[test]
    fn debug_requests() {
        let req = |control: u32, dr: [u64; 8]| {
            DebugRequest::check(&VcpuDebug {
                control,
                reserved: 0,
                dr,
            })
        };
        let on = 1 | 8;
        let mut dr = [0u64; 8];
        dr[0] = 0x1000;
        dr[7] = 0x1;
        let ok = req(on, dr).unwrap();
        let b = ok.breakpoints().unwrap();
        assert_eq!((b.addresses()[0], b.dr7()), (0x1000, 0x401));
        assert!(b.is_instruction(0));
        // Unknown control bits.
        assert_eq!(req(0x10, dr), Err(Refused::ReservedBits));
        assert_eq!(req(1 << 31, [0; 8]), Err(Refused::ReservedBits));
        // Non-canonical DR0-3, with USE_HW_BP only.
        dr[2] = 1 << 47;
        assert_eq!(req(on, dr), Err(Refused::NonCanonical));
        assert!(req(1 | 2 | 4, dr).unwrap().breakpoints().is_none());
        dr[2] = 0xffff_8000_0000_0000;
        assert!(req(on, dr).is_ok());
        // DR7: bits 63:32, 11-15 (GD included), I/O breakpoints, instruction lengths.
        for bad in [1u64 << 32, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15] {
            dr[7] = 1 | bad;
            assert_eq!(req(on, dr), Err(Refused::ReservedBits), "{bad:#x}");
        }
        dr[7] = 0x2 | (2 << 20); // DR1 as an I/O breakpoint
        assert_eq!(req(on, dr), Err(Refused::ReservedBits));
        dr[7] = 0x2 | (1 << 22); // DR1 execute with LEN 2
        assert_eq!(req(on, dr), Err(Refused::ReservedBits));
        dr[7] = 0x2 | (3 << 20) | (2 << 22); // DR1: read/write, 8 bytes
        assert!(!req(on, dr)
            .unwrap()
            .breakpoints()
            .unwrap()
            .is_instruction(1));
    }

    #[test]
    fn debugctl_and_canonical_fields() {
        assert_eq!(GuestDebugCtl::check(3).unwrap().get(), 2);
        assert!(GuestDebugCtl::check(1 << 6).is_err());
        assert!(CanonicalAddress::check(1 << 47).is_err());
        assert_eq!(CanonicalAddress::check(0x1000).unwrap().get(), 0x1000);
    }
}
