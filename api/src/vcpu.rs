//! Register state: `vcpu_state_t` (`HAX_VCPU_SET_REGS` / `HAX_VCPU_GET_REGS`) with its
//! `segment_desc_t` and `interruptibility_state_t` members.
//!
//! Source: HAXM 7.8.0 `include/hax_vcpu_state.h`, as measured in `haxm-abi.md` §3. The C
//! unions (the GPR overlays `_regs[16]`/`_rax`/`_eax`/`_ax`/`_al`/`_ah`, `_eip`/`_rip`,
//! `_eflags`/`_rflags`, `raw`/`pad`) are stored as their widest member and read through
//! accessors; the bit-fields are a `u32` plus [`BitField`] descriptors. Field access never
//! needs `unsafe` or bit arithmetic.

use crate::bits::BitField;
use crate::pod::{assert_layout, impl_pod};

/// `segment_desc_t`: one segment register or descriptor-table register.
///
/// `ar` holds the access rights in the VMX guest-segment format (Intel SDM Vol. 3C, 25.4.1
/// "Guest Register State", Table 25-2 "Format of Access Rights"). For GDTR/IDTR only `base`
/// and `limit` are used. HAXM writes a segment whose `ar` is 0 to the VMCS as unusable and sets
/// bit 16 (`null`) for it in `GET_REGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentDesc {
    /// `selector`.
    pub selector: u16,
    /// `_dummy`: padding.
    pub dummy: u16,
    /// `limit`: the segment limit in bytes (already scaled by the granularity).
    pub limit: u32,
    /// `base`.
    pub base: u64,
    /// `ar`: access rights, VMX format. Prefer the typed accessors.
    pub ar: u32,
    /// `ipad`: padding.
    pub ipad: u32,
}

impl_pod!(SegmentDesc);
assert_layout!(SegmentDesc, size = 24; selector = 0, dummy = 2, limit = 4, base = 8, ar = 16, ipad = 20);

/// Declares the access-rights bit-fields: descriptor, getter, setter and builder for each.
macro_rules! ar_fields {
    ($(
        $(#[$doc:meta])*
        $konst:ident ($shift:expr, $width:expr) : $get:ident, $set:ident, $with:ident -> $t:ident;
    )*) => {
        impl SegmentDesc {
            $(
                $(#[$doc])*
                pub const $konst: BitField = BitField::new($shift, $width);
            )*
        }
        impl SegmentDesc {
            $(
                $(#[$doc])*
                pub const fn $get(&self) -> $t {
                    ar_fields!(@from $t, Self::$konst.get(self.ar))
                }

                /// Sets the field (see the getter of the same name). Bits of the value above the
                /// field's width are dropped, as in a C bit-field.
                pub fn $set(&mut self, value: $t) {
                    self.ar = Self::$konst.set(self.ar, value as u32);
                }

                /// Builder form of the setter of the same name.
                #[must_use]
                pub const fn $with(mut self, value: $t) -> Self {
                    self.ar = Self::$konst.set(self.ar, value as u32);
                    self
                }
            )*
        }
    };
    (@from bool, $e:expr) => { $e != 0 };
    (@from u8, $e:expr) => { $e as u8 };
}

ar_fields! {
    /// `type` (bits 0-3): segment type; for code/data segments bit 0 is "accessed".
    AR_TYPE(0, 4): type_, set_type, with_type -> u8;
    /// `desc` (bit 4): descriptor type S, 0 = system, 1 = code or data.
    AR_S(4, 1): s, set_s, with_s -> bool;
    /// `dpl` (bits 5-6): descriptor privilege level.
    AR_DPL(5, 2): dpl, set_dpl, with_dpl -> u8;
    /// `present` (bit 7): segment present, P.
    AR_P(7, 1): present, set_present, with_present -> bool;
    /// `available` (bit 12): available for use by system software, AVL.
    AR_AVL(12, 1): avl, set_avl, with_avl -> bool;
    /// `long_mode` (bit 13): 64-bit code segment, L (CS only).
    AR_L(13, 1): long_mode, set_long_mode, with_long_mode -> bool;
    /// `operand_size` (bit 14): default operation size D/B, 0 = 16-bit, 1 = 32-bit.
    AR_DB(14, 1): db, set_db, with_db -> bool;
    /// `granularity` (bit 15): G, limit in 4 KiB units.
    AR_G(15, 1): granularity, set_granularity, with_granularity -> bool;
    /// `null` (bit 16): segment unusable (SDM 25.4.1: "Segment unusable (0 = usable;
    /// 1 = unusable)").
    AR_UNUSABLE(16, 1): unusable, set_unusable, with_unusable -> bool;
}

impl SegmentDesc {
    /// A segment with the given fields; padding zero.
    pub const fn new(selector: u16, base: u64, limit: u32, ar: u32) -> Self {
        Self {
            selector,
            dummy: 0,
            limit,
            base,
            ar,
            ipad: 0,
        }
    }

    /// The bit-fields of `ar` with their C names, in declaration order, for conformance
    /// output and debugging.
    pub const AR_FIELDS: [(&'static str, BitField); 9] = [
        ("type", Self::AR_TYPE),
        ("desc", Self::AR_S),
        ("dpl", Self::AR_DPL),
        ("present", Self::AR_P),
        ("available", Self::AR_AVL),
        ("long_mode", Self::AR_L),
        ("operand_size", Self::AR_DB),
        ("granularity", Self::AR_G),
        ("null", Self::AR_UNUSABLE),
    ];
}

/// `interruptibility_state_t`: the guest interruptibility state (Intel SDM Vol. 3C, 25.4.2
/// "Guest Non-Register State", Table 25-3 "Format of Interruptibility State").
///
/// The C type is a union of a bit-field `u32` (`raw`) and a `u64` (`pad`) that sizes it to
/// 8 bytes; here the `u32` and the upper four padding bytes are separate fields. HAXM neither
/// writes nor reads it through the register IOCTLs (`haxm-abi.md` §2, SET_REGS/GET_REGS).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interruptibility {
    /// `raw`: the 32-bit interruptibility state. Prefer the typed accessors.
    pub raw: u32,
    /// Bytes 4-7 of the C `pad` member (the whole C `pad` is the full 8-byte value).
    pub pad: u32,
}

impl_pod!(Interruptibility);
assert_layout!(Interruptibility, size = 8; raw = 0, pad = 4);

/// Declares the interruptibility bit-fields: descriptor, getter and setter.
macro_rules! intr_fields {
    ($($(#[$doc:meta])* $konst:ident ($shift:expr) : $get:ident, $set:ident;)*) => {
        impl Interruptibility {
            $(
                $(#[$doc])*
                pub const $konst: BitField = BitField::new($shift, 1);

                $(#[$doc])*
                pub const fn $get(&self) -> bool {
                    Self::$konst.get(self.raw) != 0
                }

                /// Sets the bit (see the getter of the same name).
                pub fn $set(&mut self, value: bool) {
                    self.raw = Self::$konst.set(self.raw, value as u32);
                }
            )*
        }
    };
}

intr_fields! {
    /// `sti_blocking` (bit 0): blocking by STI.
    STI_BLOCKING(0): sti_blocking, set_sti_blocking;
    /// `movss_blocking` (bit 1): blocking by MOV SS / POP SS.
    MOVSS_BLOCKING(1): movss_blocking, set_movss_blocking;
    /// `smi_blocking` (bit 2): blocking by SMI.
    SMI_BLOCKING(2): smi_blocking, set_smi_blocking;
    /// `nmi_blocking` (bit 3): blocking by NMI.
    NMI_BLOCKING(3): nmi_blocking, set_nmi_blocking;
}

impl Interruptibility {
    /// `reserved` (bits 4-31).
    pub const RESERVED: BitField = BitField::new(4, 28);

    /// The reserved bits 4-31, shifted down (must be 0 for VM entry, SDM 27.3.1.5).
    pub const fn reserved(&self) -> u32 {
        Self::RESERVED.get(self.raw)
    }

    /// The bit-fields of `raw` with their C names, in declaration order.
    pub const FIELDS: [(&'static str, BitField); 5] = [
        ("sti_blocking", Self::STI_BLOCKING),
        ("movss_blocking", Self::MOVSS_BLOCKING),
        ("smi_blocking", Self::SMI_BLOCKING),
        ("nmi_blocking", Self::NMI_BLOCKING),
        ("reserved", Self::RESERVED),
    ];
}

/// A general-purpose register, numbered as in the instruction encoding (Intel SDM Vol. 2A,
/// 2.1.5, Table 2-2 "32-Bit Addressing Forms with the ModR/M Byte"; REX.B/R extend it to 8-15).
/// This is also the order of `vcpu_state_t._regs[16]`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // the register names are their documentation
pub enum GprIndex {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl GprIndex {
    /// All sixteen registers in `_regs` order.
    pub const ALL: [GprIndex; 16] = [
        Self::Rax,
        Self::Rcx,
        Self::Rdx,
        Self::Rbx,
        Self::Rsp,
        Self::Rbp,
        Self::Rsi,
        Self::Rdi,
        Self::R8,
        Self::R9,
        Self::R10,
        Self::R11,
        Self::R12,
        Self::R13,
        Self::R14,
        Self::R15,
    ];

    /// The register with encoding `n`, or `None` if `n > 15`.
    pub const fn from_index(n: u8) -> Option<Self> {
        if n < 16 {
            Some(Self::ALL[n as usize])
        } else {
            None
        }
    }
}

/// A part of a 64-bit register, as the C union members name it (`_al`, `_ah`, `_ax`, `_eax`,
/// `_rax`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GprPart {
    /// Byte offset of the part inside the little-endian 64-bit register.
    pub byte: u8,
    /// Size of the part in bytes: 1, 2, 4 or 8.
    pub len: u8,
}

impl GprPart {
    /// Bits 0-7 (`al`).
    pub const LOW8: Self = Self { byte: 0, len: 1 };
    /// Bits 8-15 (`ah`).
    pub const HIGH8: Self = Self { byte: 1, len: 1 };
    /// Bits 0-15 (`ax`).
    pub const LOW16: Self = Self { byte: 0, len: 2 };
    /// Bits 0-31 (`eax`).
    pub const LOW32: Self = Self { byte: 0, len: 4 };
    /// Bits 0-63 (`rax`).
    pub const FULL: Self = Self { byte: 0, len: 8 };

    const fn shift(self) -> u32 {
        self.byte as u32 * 8
    }

    const fn mask(self) -> u64 {
        (u64::MAX >> (64 - self.len as u32 * 8)) << self.shift()
    }
}

/// `vcpu_state_t`: the register state exchanged by `HAX_VCPU_SET_REGS` / `HAX_VCPU_GET_REGS`.
///
/// HAXM consumes and fills only the GPRs, RIP, RFLAGS, CR0/2/3/4, DR0-3/6/7 and the ten
/// segment fields; `pde`, `efer`, `sysenter_*`, `activity_state`, `pad` and
/// `interruptibility_state` are ignored by SET_REGS and left unwritten by GET_REGS
/// (`haxm-abi.md` §2).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// `_regs[16]`: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8-R15 (see [`GprIndex`]). The C
    /// union also names them `_rax`..`_r15` and their parts `_eax`, `_ax`, `_al`, `_ah`...;
    /// use the accessors of the same names.
    pub regs: [u64; 16],
    /// `_rip` (the C union also names its low half `_eip`).
    pub rip: u64,
    /// `_rflags` (the C union also names its low half `_eflags`).
    pub rflags: u64,
    /// `_cs`.
    pub cs: SegmentDesc,
    /// `_ss`.
    pub ss: SegmentDesc,
    /// `_ds`.
    pub ds: SegmentDesc,
    /// `_es`.
    pub es: SegmentDesc,
    /// `_fs`.
    pub fs: SegmentDesc,
    /// `_gs`.
    pub gs: SegmentDesc,
    /// `_ldt`.
    pub ldt: SegmentDesc,
    /// `_tr`.
    pub tr: SegmentDesc,
    /// `_gdt` (base and limit only).
    pub gdt: SegmentDesc,
    /// `_idt` (base and limit only).
    pub idt: SegmentDesc,
    /// `_cr0`.
    pub cr0: u64,
    /// `_cr2`.
    pub cr2: u64,
    /// `_cr3`.
    pub cr3: u64,
    /// `_cr4`.
    pub cr4: u64,
    /// `_dr0`.
    pub dr0: u64,
    /// `_dr1`.
    pub dr1: u64,
    /// `_dr2`.
    pub dr2: u64,
    /// `_dr3`.
    pub dr3: u64,
    /// `_dr6`.
    pub dr6: u64,
    /// `_dr7`.
    pub dr7: u64,
    /// `_pde` (ignored by HAXM).
    pub pde: u64,
    /// `_efer` (ignored by HAXM: set EFER through `SET_MSRS`).
    pub efer: u32,
    /// `_sysenter_cs` (ignored by HAXM).
    pub sysenter_cs: u32,
    /// `_sysenter_eip` (ignored by HAXM).
    pub sysenter_eip: u64,
    /// `_sysenter_esp` (ignored by HAXM).
    pub sysenter_esp: u64,
    /// `_activity_state` (ignored by HAXM).
    pub activity_state: u32,
    /// `pad`.
    pub pad: u32,
    /// `_interruptibility_state` (ignored by HAXM).
    pub interruptibility_state: Interruptibility,
}

impl_pod!(VcpuState);
assert_layout!(VcpuState, size = 512;
    regs = 0, rip = 128, rflags = 136,
    cs = 144, ss = 168, ds = 192, es = 216, fs = 240, gs = 264, ldt = 288, tr = 312,
    gdt = 336, idt = 360,
    cr0 = 384, cr2 = 392, cr3 = 400, cr4 = 408,
    dr0 = 416, dr1 = 424, dr2 = 432, dr3 = 440, dr6 = 448, dr7 = 456,
    pde = 464, efer = 472, sysenter_cs = 476, sysenter_eip = 480, sysenter_esp = 488,
    activity_state = 496, pad = 500, interruptibility_state = 504,
    cs.selector = 144, cs.limit = 148, cs.base = 152, cs.ar = 160,
    idt.limit = 364, idt.base = 368, interruptibility_state.raw = 504,
);

impl VcpuState {
    /// The full 64-bit value of a GPR (`_regs[i]`).
    pub const fn gpr(&self, reg: GprIndex) -> u64 {
        self.regs[reg as usize]
    }

    /// Sets the full 64-bit value of a GPR.
    pub fn set_gpr(&mut self, reg: GprIndex, value: u64) {
        self.regs[reg as usize] = value;
    }

    /// A part of a GPR, zero-extended (`_eax`, `_ax`, `_al`, `_ah`...).
    pub const fn gpr_part(&self, reg: GprIndex, part: GprPart) -> u64 {
        (self.regs[reg as usize] & part.mask()) >> part.shift()
    }

    /// Writes a part of a GPR and leaves the other bytes as they were, which is what a store
    /// to a member of the C union does. (Unlike a 32-bit register write on hardware, setting
    /// the 32-bit part does *not* clear bits 32-63.) Bits of `value` beyond the part are
    /// dropped.
    pub fn set_gpr_part(&mut self, reg: GprIndex, part: GprPart, value: u64) {
        let r = &mut self.regs[reg as usize];
        *r = (*r & !part.mask()) | ((value << part.shift()) & part.mask());
    }

    /// `_eip`: bits 0-31 of RIP.
    pub const fn eip(&self) -> u32 {
        self.rip as u32
    }

    /// Sets `_eip`, leaving bits 32-63 of RIP unchanged (C union semantics).
    pub fn set_eip(&mut self, value: u32) {
        self.rip = (self.rip & !0xffff_ffff) | u64::from(value);
    }

    /// `_eflags`: bits 0-31 of RFLAGS.
    pub const fn eflags(&self) -> u32 {
        self.rflags as u32
    }

    /// Sets `_eflags`, leaving bits 32-63 of RFLAGS unchanged (C union semantics).
    pub fn set_eflags(&mut self, value: u32) {
        self.rflags = (self.rflags & !0xffff_ffff) | u64::from(value);
    }

    /// The ten segment fields with their C names, in declaration order.
    pub fn segments(&self) -> [(&'static str, &SegmentDesc); 10] {
        [
            ("_cs", &self.cs),
            ("_ss", &self.ss),
            ("_ds", &self.ds),
            ("_es", &self.es),
            ("_fs", &self.fs),
            ("_gs", &self.gs),
            ("_ldt", &self.ldt),
            ("_tr", &self.tr),
            ("_gdt", &self.gdt),
            ("_idt", &self.idt),
        ]
    }
}

/// Declares named accessors for the GPR union members.
macro_rules! gpr_accessors {
    ($($reg:ident: $($get:ident / $set:ident = $part:ident as $t:ty),*;)*) => {
        impl VcpuState {
            $($(
                #[doc = concat!("`_", stringify!($get), "`: the [`GprPart::", stringify!($part),
                    "`] of [`GprIndex::", stringify!($reg), "`].")]
                pub const fn $get(&self) -> $t {
                    self.gpr_part(GprIndex::$reg, GprPart::$part) as $t
                }

                #[doc = concat!("Sets `_", stringify!($get),
                    "`; the other bytes of the register are unchanged.")]
                pub fn $set(&mut self, value: $t) {
                    self.set_gpr_part(GprIndex::$reg, GprPart::$part, value as u64);
                }
            )*)*
        }

        /// Every named GPR union member of `vcpu_state_t`, in the header's order:
        /// (C name, register, part).
        pub const GPR_ALIASES: &[(&str, GprIndex, GprPart)] = &[
            $($((concat!("_", stringify!($get)), GprIndex::$reg, GprPart::$part),)*)*
        ];
    };
}

gpr_accessors! {
    Rax: al / set_al = LOW8 as u8, ah / set_ah = HIGH8 as u8, ax / set_ax = LOW16 as u16,
         eax / set_eax = LOW32 as u32, rax / set_rax = FULL as u64;
    Rcx: cl / set_cl = LOW8 as u8, ch / set_ch = HIGH8 as u8, cx / set_cx = LOW16 as u16,
         ecx / set_ecx = LOW32 as u32, rcx / set_rcx = FULL as u64;
    Rdx: dl / set_dl = LOW8 as u8, dh / set_dh = HIGH8 as u8, dx / set_dx = LOW16 as u16,
         edx / set_edx = LOW32 as u32, rdx / set_rdx = FULL as u64;
    Rbx: bl / set_bl = LOW8 as u8, bh / set_bh = HIGH8 as u8, bx / set_bx = LOW16 as u16,
         ebx / set_ebx = LOW32 as u32, rbx / set_rbx = FULL as u64;
    Rsp: sp / set_sp = LOW16 as u16, esp / set_esp = LOW32 as u32, rsp / set_rsp = FULL as u64;
    Rbp: bp / set_bp = LOW16 as u16, ebp / set_ebp = LOW32 as u32, rbp / set_rbp = FULL as u64;
    Rsi: si / set_si = LOW16 as u16, esi / set_esi = LOW32 as u32, rsi / set_rsi = FULL as u64;
    Rdi: di / set_di = LOW16 as u16, edi / set_edi = LOW32 as u32, rdi / set_rdi = FULL as u64;
    R8: r8 / set_r8 = FULL as u64;
    R9: r9 / set_r9 = FULL as u64;
    R10: r10 / set_r10 = FULL as u64;
    R11: r11 / set_r11 = FULL as u64;
    R12: r12 / set_r12 = FULL as u64;
    R13: r13 / set_r13 = FULL as u64;
    R14: r14 / set_r14 = FULL as u64;
    R15: r15 / set_r15 = FULL as u64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::Pod;

    #[test]
    fn gpr_parts_overlay_like_the_c_union() {
        let mut s = VcpuState::default();
        s.set_rax(0x1122_3344_5566_7788);
        assert_eq!(s.al(), 0x88);
        assert_eq!(s.ah(), 0x77);
        assert_eq!(s.ax(), 0x7788);
        assert_eq!(s.eax(), 0x5566_7788);
        // The bytes are where the C union puts them: `_ah` is byte 1.
        assert_eq!(
            s.as_bytes()[..8],
            [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        s.set_ah(0xab);
        assert_eq!(s.rax(), 0x1122_3344_5566_ab88);
        s.set_eax(0xdead_beef);
        assert_eq!(
            s.rax(),
            0x1122_3344_dead_beef,
            "a union store keeps the upper half"
        );
        s.set_r15(7);
        assert_eq!(s.gpr(GprIndex::R15), 7);
        assert_eq!(s.as_bytes()[120], 7);
        s.set_esp(0xffff_fff0);
        assert_eq!(s.regs[4], 0xffff_fff0);
        s.set_eip(0xfff0);
        s.rip |= 1 << 40;
        assert_eq!(s.eip(), 0xfff0);
        assert_eq!(GprIndex::from_index(16), None);
        assert_eq!(GprIndex::from_index(9), Some(GprIndex::R9));
        for (i, r) in GprIndex::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn segment_access_rights() {
        // A flat 64-bit code segment: type 0xB, S, DPL 0, P, L, G: the VMX AR value 0xa09b.
        let cs = SegmentDesc::new(0x08, 0, 0xffff_ffff, 0)
            .with_type(0xb)
            .with_s(true)
            .with_present(true)
            .with_long_mode(true)
            .with_granularity(true);
        assert_eq!(cs.ar, 0xa09b);
        assert_eq!(cs.type_(), 0xb);
        assert!(cs.s() && cs.present() && cs.long_mode() && cs.granularity());
        assert!(!cs.db() && !cs.avl() && !cs.unusable());
        assert_eq!(cs.dpl(), 0);
        let mut ss = SegmentDesc {
            ar: 0x10000,
            ..Default::default()
        };
        assert!(ss.unusable());
        ss.set_dpl(7); // truncated to 2 bits
        assert_eq!(ss.dpl(), 3);
        assert_eq!(ss.ar, 0x10060);
    }

    #[test]
    fn bitfield_descriptors_match_the_setters() {
        // The descriptors drive the conformance table; check against the setters by setting
        // each field to all-ones in a zeroed value and scanning, as the C measurement did.
        for (name, f) in SegmentDesc::AR_FIELDS {
            let mut s = SegmentDesc::default();
            match name {
                "type" => s.set_type(u8::MAX),
                "desc" => s.set_s(true),
                "dpl" => s.set_dpl(u8::MAX),
                "present" => s.set_present(true),
                "available" => s.set_avl(true),
                "long_mode" => s.set_long_mode(true),
                "operand_size" => s.set_db(true),
                "granularity" => s.set_granularity(true),
                "null" => s.set_unusable(true),
                other => panic!("unknown field {other}"),
            }
            assert_eq!(s.ar.trailing_zeros(), f.shift, "{name}");
            assert_eq!(s.ar.count_ones(), f.width, "{name}");
        }
        for (name, f) in Interruptibility::FIELDS {
            let mut i = Interruptibility::default();
            match name {
                "sti_blocking" => i.set_sti_blocking(true),
                "movss_blocking" => i.set_movss_blocking(true),
                "smi_blocking" => i.set_smi_blocking(true),
                "nmi_blocking" => i.set_nmi_blocking(true),
                // No setter: everything but the four named bits.
                "reserved" => i.raw = !0xf,
                other => panic!("unknown field {other}"),
            }
            assert_eq!(i.raw.trailing_zeros(), f.shift, "{name}");
            assert_eq!(i.raw.count_ones(), f.width, "{name}");
            assert_eq!(i.pad, 0);
        }
    }
}
