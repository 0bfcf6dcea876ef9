//! The per-VM CPUID table: what CPUID exits answer (haxm-abi.md §2 SET_CPUID/GET_CPUID, §6
//! "CPUID, from the per-VM 18-leaf table"). Feature bits follow SDM Vol. 2A CPUID,
//! Tables 3-10/3-11 (leaf 1) and 3-8 (leaf 7).

use rhax_api::cpuid::{CpuidEntry, HAXM_CPUID_LEAVES, HAX_MAX_CPUID_ENTRIES};

/// A CPUID result: EAX, EBX, ECX, EDX.
pub type CpuidRegs = [u32; 4];

/// Why SET_CPUID was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidError {
    /// `total` is 0 (HAXM: -EINVAL).
    Empty,
    /// `total` exceeds [`HAX_MAX_CPUID_ENTRIES`] (HAXM: -E2BIG on POSIX).
    TooMany {
        /// The total asked for.
        total: usize,
    },
}

/// Leaf 1 ECX bits hidden from the guest: MONITOR (3, MWAIT exits), VMX (5), SMX (6),
/// EIST (7), TM2 (8), SDBG (11), PDCM (15), x2APIC (21; no in-kernel APIC), TSC-deadline (24),
/// and, unless the host's XSAVE state is switched ([`XsaveSupport`]), XSAVE (26) / OSXSAVE
/// (27) / AVX (28) / F16C (29) / FMA (12): without it state beyond SSE would leak between
/// guest and host.
const LEAF1_ECX_HIDDEN: u32 = (1 << 3)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 11)
    | (1 << 12)
    | (1 << 15)
    | (1 << 21)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 29);
/// Leaf 1 ECX bits the in-kernel APIC provides: x2APIC (21), TSC-deadline (24).
const LEAF1_ECX_APIC_EMULATED: u32 = (1 << 21) | (1 << 24);
/// Leaf 1 ECX: FMA (12), XSAVE (26), OSXSAVE (27), AVX (28), F16C (29).
const FMA: u32 = 1 << 12;
const XSAVE: u32 = 1 << 26;
const OSXSAVE: u32 = 1 << 27;
const AVX: u32 = 1 << 28;
const F16C: u32 = 1 << 29;
/// Leaf 7.0 EBX: AVX2 (5); AVX-512 F (16), DQ (17), IFMA (21), CD (28), BW (30), VL (31).
const LEAF7_EBX_AVX2: u32 = 1 << 5;
const LEAF7_EBX_AVX512: u32 = (1 << 16) | (1 << 17) | (1 << 21) | (1 << 28) | (1 << 30) | (1 << 31);
/// Leaf 7.0 ECX: GFNI (8), VAES (9), VPCLMULQDQ (10) with AVX; AVX-512 VBMI (1), VBMI2 (6),
/// VNNI (11), BITALG (12), VPOPCNTDQ (14) with AVX-512.
const LEAF7_ECX_AVX: u32 = (1 << 8) | (1 << 9) | (1 << 10);
const LEAF7_ECX_AVX512: u32 = (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14);
/// Leaf 0xD.1 EAX passed: XSAVEOPT (0), XSAVEC (1), XGETBV with ECX=1 (2). Not XSAVES (3):
/// IA32_XSS is not virtualized.
const LEAF_D1_EAX_PASSED: u32 = 0x7;

/// What of XSAVE the guest sees: the XCR0 components it may enable (`xcr0`, within
/// [`xcr0::SWITCHED`], the host's CPUID and the host's XCR0, each extended component only
/// where the host enumerates it at the standard offset rhax assumes), and the host's leaf
/// 0xD.1 EAX. `xcr0 == 0`: XSAVE hidden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsaveSupport {
    /// The XCR0 bits the guest may set (0: no XSAVE).
    pub xcr0: u64,
    /// Host CPUID.(EAX=0xD,ECX=1).EAX.
    pub leaf_d1_eax: u32,
}

impl XsaveSupport {
    /// From the host's CPUID and XCR0.
    pub fn from_host(host: &impl Fn(u32, u32) -> CpuidRegs, host_xcr0: u64) -> XsaveSupport {
        let leaf1 = host(1, 0);
        if leaf1[2] & (XSAVE | OSXSAVE) != (XSAVE | OSXSAVE) || host(0, 0)[0] < 0xd {
            return XsaveSupport::default();
        }
        let d0 = host(0xd, 0);
        let mut x = (u64::from(d0[0]) | (u64::from(d0[3]) << 32)) & host_xcr0 & xcr0::SWITCHED;
        if x & (xcr0::X87 | xcr0::SSE) != xcr0::X87 | xcr0::SSE {
            return XsaveSupport::default();
        }
        for (bit, offset, size) in xcr0::COMPONENTS {
            let r = host(0xd, bit);
            if r[0] != size || r[1] != offset {
                x &= !(1 << bit);
            }
        }
        // AVX needs AVX in leaf 1; AVX-512 all three components and AVX (the XSETBV rules).
        if x & xcr0::AVX == 0 || leaf1[2] & AVX == 0 {
            x &= !(xcr0::AVX | xcr0::AVX512);
        }
        if x & xcr0::AVX512 != xcr0::AVX512 {
            x &= !xcr0::AVX512;
        }
        XsaveSupport {
            xcr0: x,
            leaf_d1_eax: host(0xd, 1)[0] & LEAF_D1_EAX_PASSED,
        }
    }

    fn avx(&self) -> bool {
        self.xcr0 & xcr0::AVX != 0
    }

    fn avx512(&self) -> bool {
        self.xcr0 & xcr0::AVX512 != 0
    }

    /// Leaf 1 ECX bits shown beyond the default: XSAVE, and with AVX: AVX, FMA, F16C.
    fn leaf1_ecx(&self) -> u32 {
        match (self.xcr0 != 0, self.avx()) {
            (false, _) => 0,
            (true, false) => XSAVE,
            (true, true) => XSAVE | AVX | FMA | F16C,
        }
    }

    fn leaf7_ebx(&self) -> u32 {
        (if self.avx() { LEAF7_EBX_AVX2 } else { 0 })
            | if self.avx512() { LEAF7_EBX_AVX512 } else { 0 }
    }

    fn leaf7_ecx(&self) -> u32 {
        (if self.avx() { LEAF7_ECX_AVX } else { 0 })
            | if self.avx512() { LEAF7_ECX_AVX512 } else { 0 }
    }

    /// The answer for leaf 0xD sub-leaf `index` (EBX of sub-leaves 0 and 1 follows the
    /// vCPU's XCR0 and is patched at the CPUID exit; here: the power-on XCR0's).
    fn leaf_d(&self, index: u32) -> CpuidRegs {
        if self.xcr0 == 0 {
            return [0; 4];
        }
        match index {
            0 => [
                self.xcr0 as u32,
                xcr0::area_size(xcr0::X87),
                xcr0::area_size(self.xcr0),
                (self.xcr0 >> 32) as u32,
            ],
            1 => [self.leaf_d1_eax, 0, 0, 0],
            i => xcr0::COMPONENTS
                .iter()
                .find(|c| c.0 == i && self.xcr0 & (1 << i) != 0)
                .map_or([0; 4], |c| [c.2, c.1, 0, 0]),
        }
    }
}

use rhax_api::fpu::xcr0;

/// Leaf 1 ECX bit 31: "hypervisor present" (reserved for this use by every hypervisor).
const HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bits hidden: ACPI thermal (22), TM (29), PBE (31).
const LEAF1_EDX_HIDDEN: u32 = (1 << 22) | (1 << 29) | (1 << 31);
/// Leaf 7.0 EBX bits passed: FSGSBASE (0), BMI1 (3), SMEP (7), BMI2 (8), ERMS (9), INVPCID
/// (10), RDSEED (18), ADX (19), SMAP (20), CLFLUSHOPT (23), SHA (29). No AVX2/AVX-512 (no
/// XSAVE), no TSX, no PQM/PQE, no MPX.
const LEAF7_EBX_PASSED: u32 = (1 << 0)
    | (1 << 3)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 23)
    | (1 << 29);

/// The leaves of the default table: HAXM holds 18.
const DEFAULT_LEAVES: [(u32, u32); HAXM_CPUID_LEAVES] = [
    (0, 0),
    (1, 0),
    (2, 0),
    (4, 0),
    (4, 1),
    (4, 2),
    (4, 3),
    (7, 0),
    (0x4000_0000, 0),
    (0x8000_0000, 0),
    (0x8000_0001, 0),
    (0x8000_0002, 0),
    (0x8000_0003, 0),
    (0x8000_0004, 0),
    (0x8000_0005, 0),
    (0x8000_0006, 0),
    (0x8000_0007, 0),
    (0x8000_0008, 0),
];

/// Leaf 1 ECX bits that pass from the host (OSXSAVE never: the CPUID exit sets it).
fn leaf1_ecx_passed(x: &XsaveSupport) -> u32 {
    !(LEAF1_ECX_HIDDEN | OSXSAVE) | x.leaf1_ecx()
}

/// Leaf 7.0 EBX bits that pass from the host.
fn leaf7_ebx_passed(x: &XsaveSupport) -> u32 {
    LEAF7_EBX_PASSED | x.leaf7_ebx()
}

/// Leaves whose answer depends on ECX (the subleaf).
fn indexed(function: u32) -> bool {
    matches!(
        function,
        4 | 7 | 0xb | 0xd | 0xf | 0x10 | 0x12 | 0x14 | 0x17 | 0x18 | 0x1f
    )
}

/// The CPUID answers of one VM, shared by its vCPUs.
#[derive(Clone, Debug)]
pub struct CpuidTable {
    entries: [CpuidEntry; HAX_MAX_CPUID_ENTRIES],
    len: usize,
    /// The host's values of the feature leaves, to filter SET_CPUID against.
    host_leaf1: CpuidRegs,
    host_leaf7: CpuidRegs,
    host_ext1: CpuidRegs,
    xsave: XsaveSupport,
    /// The VM has rhax's in-kernel APIC: SET_CPUID may show x2APIC and TSC-deadline, which
    /// the APIC emulates whatever the host has.
    apic: bool,
    /// What exit handlers ask of the table, answered when it changes rather than by a scan
    /// per exit (two lookups cost ~180 emulated instructions per x2APIC MSR exit).
    features: GuestFeatures,
}

/// The guest-visible CPUID bits exit handlers test, as [`CpuidTable::lookup`] answers them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestFeatures {
    /// CPUID.1:ECX (x2APIC bit 21, TSC-deadline bit 24, XSAVE bit 26; OSXSAVE as the table
    /// holds it, not the vCPU's CR4).
    pub leaf1_ecx: u32,
    /// CPUID.80000008H:EAX[7:0], MAXPHYADDR.
    pub maxphyaddr: u8,
}

fn entry(function: u32, index: u32, r: CpuidRegs) -> CpuidEntry {
    CpuidEntry {
        function,
        index,
        flags: 0,
        eax: r[0],
        ebx: r[1],
        ecx: r[2],
        edx: r[3],
        pad: [0; 3],
    }
}

// SAFETY: plain integers and arrays of `Pod` records: all zero is an empty table.
unsafe impl crate::heap::Zeroable for CpuidTable {}

impl CpuidTable {
    /// The default table built from the host's CPUID (`host(leaf, subleaf)`): the hypervisor
    /// bit set, VMX and features rhax does not virtualize hidden, leaf 0 and 0x80000000 capped
    /// to the leaves the table holds.
    /// The host's XCR0 is taken to enable everything its CPUID leaf 0xD lists (see
    /// [`CpuidTable::with_xcr0`]).
    pub fn new(host: impl Fn(u32, u32) -> CpuidRegs) -> CpuidTable {
        let d0 = host(0xd, 0);
        let xcr0 = u64::from(d0[0]) | (u64::from(d0[3]) << 32);
        CpuidTable::with_xcr0(host, xcr0)
    }

    /// As [`CpuidTable::new`] with the host's XCR0: XSAVE, AVX, F16C, FMA, AVX2, XSAVEOPT,
    /// XSAVEC and the AVX-512 features are shown as far as the host has them, its OS enabled
    /// them in XCR0 and rhax switches their state (HAXM 7.8 showed XSAVE, AVX, F16C, XSAVEOPT
    /// and XSAVEC); leaf 0xD sub-leaves 0, 1 and one per component are added.
    // Inlined into its caller (the driver's load path builds the table once, in place in the
    // Hypervisor): a frame of its own would hold a 2.6 KiB temporary (`cargo xtask stack`).
    #[inline(always)]
    pub fn with_xcr0(host: impl Fn(u32, u32) -> CpuidRegs, host_xcr0: u64) -> CpuidTable {
        let xsave = XsaveSupport::from_host(&host, host_xcr0);
        let leaf1_ecx_passed = leaf1_ecx_passed(&xsave);
        let leaf7_ebx_passed = leaf7_ebx_passed(&xsave);
        let mut t = CpuidTable {
            entries: [entry(0, 0, [0; 4]); HAX_MAX_CPUID_ENTRIES],
            len: 0,
            host_leaf1: host(1, 0),
            host_leaf7: host(7, 0),
            host_ext1: host(0x8000_0001, 0),
            xsave,
            apic: false,
            features: GuestFeatures::default(),
        };
        for (i, &(f, idx)) in DEFAULT_LEAVES.iter().enumerate() {
            let mut r = host(f, idx);
            match f {
                0 => r[0] = r[0].min(if xsave.xcr0 != 0 { 0xd } else { 7 }),
                1 => {
                    // EBX[31:24] (initial APIC ID) is patched per vCPU at answer time, and
                    // OSXSAVE from the vCPU's CR4.
                    r[2] = (r[2] & leaf1_ecx_passed) | HYPERVISOR;
                    r[3] &= !LEAF1_EDX_HIDDEN;
                }
                7 => r = [0, r[1] & leaf7_ebx_passed, r[2] & xsave.leaf7_ecx(), 0],
                0x4000_0000 => r = [0x4000_0000, 0x7861_6872, 0x7861_6872, 0x7861_6872], // "rhaxrhaxrhax"
                0x8000_0000 => r[0] = r[0].min(0x8000_0008),
                _ => {}
            }
            t.entries[i] = entry(f, idx, r);
        }
        t.len = DEFAULT_LEAVES.len();
        t.add_leaf_d();
        t.note_features();
        t
    }

    /// Recomputes [`CpuidTable::features`] after a change of the entries.
    fn note_features(&mut self) {
        self.features = GuestFeatures {
            leaf1_ecx: self.lookup(1, 0, 0)[2],
            maxphyaddr: self.lookup(0x8000_0008, 0, 0)[0] as u8,
        };
    }

    /// The bits exit handlers test (kept current by every change of the table).
    pub fn features(&self) -> GuestFeatures {
        self.features
    }

    /// Appends leaf 0xD's sub-leaves (0, 1, and one per shown component) when XSAVE is shown.
    #[inline(never)]
    fn add_leaf_d(&mut self) {
        if self.xsave.xcr0 == 0 {
            return;
        }
        for index in [0, 1, 2, 5, 6, 7] {
            let r = self.xsave.leaf_d(index);
            if index > 1 && r == [0; 4] {
                continue;
            }
            if let Some(slot) = self.entries.get_mut(self.len) {
                *slot = entry(0xd, index, r);
                self.len += 1;
            }
        }
    }

    fn leaf1_ecx_passed(&self) -> u32 {
        leaf1_ecx_passed(&self.xsave)
    }

    fn leaf7_ebx_passed(&self) -> u32 {
        leaf7_ebx_passed(&self.xsave)
    }

    /// What the guest sees of XSAVE.
    pub fn xsave(&self) -> XsaveSupport {
        self.xsave
    }

    /// The default table from the CPU this runs on (its CPUID and, with CR4.OSXSAVE, XCR0).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub fn from_host() -> CpuidTable {
        let host = |leaf, sub| {
            let r = core::arch::x86_64::__cpuid_count(leaf, sub);
            [r.eax, r.ebx, r.ecx, r.edx]
        };
        let xcr0 = if host(1, 0)[2] & OSXSAVE != 0 {
            let (lo, hi): (u32, u32);
            // SAFETY: CPUID.1:ECX.OSXSAVE says CR4.OSXSAVE=1, so XGETBV with ECX=0 does not
            // fault; it only reads XCR0.
            unsafe {
                core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                    options(nostack, nomem, preserves_flags))
            };
            (u64::from(hi) << 32) | u64::from(lo)
        } else {
            0
        };
        CpuidTable::with_xcr0(host, xcr0)
    }

    /// The entries held.
    pub fn entries(&self) -> &[CpuidEntry] {
        &self.entries[..self.len]
    }

    /// `HAX_VCPU_IOCTL_SET_CPUID`: merges `entries` into the table (same function and index:
    /// replaced; new leaves added), each filtered against the host so a guest never sees a
    /// feature the host lacks or rhax hides. Refused without change if `entries` is empty or
    /// holds more than 64, or if the merge would exceed 64 leaves.
    pub fn set(&mut self, entries: &[CpuidEntry]) -> Result<(), CpuidError> {
        self.set_from(entries.iter().copied())
    }

    /// As [`CpuidTable::set`], with the entries decoded from SET_CPUID's raw body (whole
    /// `CpuidEntry` records), without copying them into an array first.
    pub fn set_from_bytes(&mut self, body: &[u8]) -> Result<(), CpuidError> {
        self.set_from(
            body.chunks_exact(<CpuidEntry as rhax_api::pod::Pod>::SIZE)
                .filter_map(<CpuidEntry as rhax_api::pod::Pod>::from_bytes),
        )
    }

    /// Copies `other` into this table in place.
    pub fn copy_from(&mut self, other: &CpuidTable) {
        self.entries.copy_from_slice(&other.entries);
        self.len = other.len;
        self.host_leaf1 = other.host_leaf1;
        self.host_leaf7 = other.host_leaf7;
        self.host_ext1 = other.host_ext1;
        self.xsave = other.xsave;
        self.apic = other.apic;
        self.features = other.features;
    }

    /// The VM got the in-kernel APIC: from now on SET_CPUID may show x2APIC (leaf 1 ECX
    /// bit 21) and TSC-deadline (bit 24).
    pub fn allow_apic_features(&mut self) {
        self.apic = true;
    }

    fn set_from<I: Iterator<Item = CpuidEntry> + Clone>(
        &mut self,
        entries: I,
    ) -> Result<(), CpuidError> {
        let count = entries.clone().count();
        if count == 0 {
            return Err(CpuidError::Empty);
        }
        if count > HAX_MAX_CPUID_ENTRIES {
            return Err(CpuidError::TooMany { total: count });
        }
        // In place, without a 2.6 KiB copy of the table on the kernel stack: first count
        // the leaves the merge adds (a leaf named twice in `entries` counts once) and refuse
        // before anything changes, then merge.
        let key = |e: &CpuidEntry| {
            let index = if indexed(e.function) { e.index } else { 0 };
            (e.function, index)
        };
        let mut added = 0;
        for (i, e) in entries.clone().enumerate() {
            let k = key(&e);
            let present = self.entries[..self.len].iter().any(|x| key(x) == k);
            let earlier = entries.clone().take(i).any(|x| key(&x) == k);
            if !present && !earlier {
                added += 1;
            }
        }
        if self.len + added > HAX_MAX_CPUID_ENTRIES {
            return Err(CpuidError::TooMany {
                total: self.len + added,
            });
        }
        for e in entries {
            let e = self.filtered(&e);
            match self.entries[..self.len]
                .iter_mut()
                .find(|x| x.function == e.function && x.index == e.index)
            {
                Some(x) => *x = e,
                None => {
                    // Room was checked above.
                    if let Some(slot) = self.entries.get_mut(self.len) {
                        *slot = e;
                        self.len += 1;
                    }
                }
            }
        }
        self.note_features();
        Ok(())
    }

    /// `e` as the guest may see it: reserved fields cleared, the index of a leaf that has
    /// none cleared, features the host lacks or rhax hides masked.
    fn filtered(&self, e: &CpuidEntry) -> CpuidEntry {
        let mut e = *e;
        e.flags = 0;
        e.pad = [0; 3];
        if !indexed(e.function) {
            e.index = 0;
        }
        match e.function {
            1 => {
                let emulated = if self.apic {
                    LEAF1_ECX_APIC_EMULATED
                } else {
                    0
                };
                e.ecx = (e.ecx & ((self.host_leaf1[2] & self.leaf1_ecx_passed()) | emulated))
                    | HYPERVISOR;
                e.edx &= self.host_leaf1[3] & !LEAF1_EDX_HIDDEN;
            }
            7 if e.index == 0 => {
                e.ebx &= self.host_leaf7[1] & self.leaf7_ebx_passed();
                e.ecx &= self.host_leaf7[2] & self.xsave.leaf7_ecx();
                e.edx = 0;
            }
            // Leaf 0xD describes the state rhax switches: a client may narrow the XCR0 bits
            // (sub-leaf 0 EAX/EDX) and XSAVEOPT/XSAVEC (sub-leaf 1 EAX); sizes and offsets are
            // the host's; a component the client or rhax drops answers zeros.
            0xd => {
                let narrowed = XsaveSupport {
                    xcr0: match e.index {
                        0 => (u64::from(e.eax) | (u64::from(e.edx) << 32)) & self.xsave.xcr0,
                        _ => self.xsave.xcr0,
                    },
                    leaf_d1_eax: e.eax & self.xsave.leaf_d1_eax,
                };
                let keep = match e.index {
                    0 | 1 => true,
                    i => e.eax != 0 && narrowed.xcr0 & (1u64 << (i & 63)) != 0,
                };
                let r = if keep && (narrowed.xcr0 & 3 == 3) {
                    narrowed.leaf_d(e.index)
                } else {
                    [0; 4]
                };
                (e.eax, e.ebx, e.ecx, e.edx) = (r[0], r[1], r[2], r[3]);
            }
            0x8000_0001 => {
                e.ecx &= self.host_ext1[2];
                e.edx &= self.host_ext1[3];
            }
            _ => {}
        }
        e
    }

    /// `HAX_VCPU_IOCTL_GET_CPUID`: the number of leaves held, and, when `out` has room for all
    /// of them, the leaves copied into it (HAXM: with `total` smaller than the table only the
    /// header comes back, `total` set to the table's size).
    pub fn get(&self, out: &mut [CpuidEntry]) -> (u32, bool) {
        let n = self.len;
        if out.len() < n {
            return (n as u32, false);
        }
        out[..n].copy_from_slice(self.entries());
        (n as u32, true)
    }

    /// The answer to CPUID with `leaf` in EAX and `subleaf` in ECX on vCPU `apic_id`. A leaf
    /// above the maximum of its range (basic: leaf 0's EAX; hypervisor 0x4000_0000 and
    /// extended 0x8000_0000: that range's first leaf's EAX) answers as the highest basic leaf
    /// does (SDM Vol. 2A CPUID: "If a value entered for CPUID.EAX is higher than the maximum
    /// input value for basic or extended function for that processor then the data for the
    /// highest basic information leaf is returned"). A leaf within its range that the table
    /// lacks (e.g. leaf 5 when leaf 0 says 0xd), and a missing subleaf of a known leaf, answer
    /// zeros, as KVM does for entries it does not list.
    pub fn lookup(&self, leaf: u32, subleaf: u32, apic_id: u8) -> CpuidRegs {
        self.lookup_served(leaf, subleaf, apic_id).0
    }

    /// [`CpuidTable::lookup`], and the leaf and subleaf whose data answered: `(leaf, subleaf)`
    /// itself, or the highest basic leaf's `(max, 0)` for a leaf above its range. What depends
    /// on the vCPU's state (leaf 0xD's sizes, OSXSAVE) is fixed up for the leaf served, not the
    /// leaf asked for, so that a leaf above the maximum answers exactly as the maximum does.
    pub fn lookup_served(&self, leaf: u32, subleaf: u32, apic_id: u8) -> (CpuidRegs, u32, u32) {
        let find = |f: u32, i: u32| {
            self.entries()
                .iter()
                .find(|e| e.function == f && (e.index == i || !indexed(f)))
        };
        let range_max = |base: u32| find(base, 0).map(|e| e.eax);
        let base = match leaf {
            0..=0x3fff_ffff => 0,
            0x4000_0000..=0x7fff_ffff => 0x4000_0000,
            _ => 0x8000_0000,
        };
        // The range's maximum is looked up only for a leaf the table lacks: a listed leaf (the
        // CPUID exit's common case) costs one scan.
        let (e, served) = match find(leaf, subleaf) {
            Some(e) => (Some(*e), (leaf, subleaf)),
            None if self.entries().iter().any(|e| e.function == leaf) => (None, (leaf, subleaf)),
            None if range_max(base).is_some_and(|max| leaf <= max) => (None, (leaf, subleaf)),
            None => {
                let max = range_max(0).unwrap_or(0);
                (find(max, 0).copied(), (max, 0))
            }
        };
        let Some(e) = e else {
            return ([0; 4], served.0, served.1);
        };
        let mut r = [e.eax, e.ebx, e.ecx, e.edx];
        if e.function == 1 {
            r[1] = (r[1] & 0x00ff_ffff) | (u32::from(apic_id) << 24);
        }
        (r, served.0, served.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached features answer what a lookup answers, after every kind of change.
    #[test]
    fn features_follow_the_table() {
        let mut t = CpuidTable::new(host);
        let check = |t: &CpuidTable| {
            let f = t.features();
            assert_eq!(f.leaf1_ecx, t.lookup(1, 0, 0)[2]);
            assert_eq!(f.maxphyaddr, t.lookup(0x8000_0008, 0, 0)[0] as u8);
        };
        check(&t);
        t.allow_apic_features();
        let mut e = *t.entries().iter().find(|e| e.function == 1).unwrap();
        e.ecx |= 1 << 21;
        t.set(&[e]).unwrap();
        assert_ne!(t.features().leaf1_ecx & (1 << 21), 0);
        check(&t);
        let mut m = *t
            .entries()
            .iter()
            .find(|e| e.function == 0x8000_0008)
            .unwrap();
        m.eax = (m.eax & !0xff) | 36;
        t.set(&[m]).unwrap();
        assert_eq!(t.features().maxphyaddr, 36);
        check(&t);
        let mut copy = CpuidTable::new(host);
        copy.copy_from(&t);
        assert_eq!(copy.features(), t.features());
    }

    fn host(leaf: u32, _sub: u32) -> CpuidRegs {
        match leaf {
            0 => [0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            1 => [0x906ea, 0x0010_0800, !HYPERVISOR, 0xbfeb_fbff],
            7 => [0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            _ => [leaf, 1, 2, 3],
        }
    }

    #[test]
    fn default_table_hides_vmx_and_sets_the_hypervisor_bit() {
        let t = CpuidTable::new(host);
        assert_eq!(t.entries().len(), 18);
        let r = t.lookup(1, 0, 3);
        assert_eq!(r[2] & (1 << 5), 0, "VMX hidden");
        assert_ne!(r[2] & HYPERVISOR, 0);
        assert_eq!(r[2] & (1 << 28), 0, "AVX hidden");
        assert_eq!(r[1] >> 24, 3, "APIC id of the vCPU");
        assert_eq!(t.lookup(0, 0, 0)[0], 7);
        assert_eq!(t.lookup(7, 0, 0)[1] & (1 << 5), 0, "no AVX2");
        // Above the highest basic leaf: the highest basic leaf's answer.
        assert_eq!(t.lookup(0x15, 0, 0), t.lookup(7, 0, 0));
    }

    #[test]
    fn a_missing_leaf_within_its_range_answers_zeros_above_it_the_highest_basic_leaf() {
        let t = CpuidTable::new(host);
        let max = t.lookup(0, 0, 0)[0];
        let listed = |leaf: u32| t.entries().iter().any(|e| e.function == leaf);
        // Basic leaves up to the maximum that the table lacks: zeros, not leaf 7's data (a
        // guest probing leaf 5 or 6 read leaf 7's feature bits before).
        assert!(
            (1..max).any(|l| !listed(l)),
            "the default table lists every basic leaf"
        );
        for leaf in (1..max).filter(|&l| !listed(l)) {
            assert_eq!(t.lookup(leaf, 0, 0), [0; 4], "leaf {leaf:#x}");
        }
        // Extended: within 0x8000_0000's maximum zeros, above it the highest basic leaf.
        let ext_max = t.lookup(0x8000_0000, 0, 0)[0];
        assert!(ext_max >= 0x8000_0000);
        if let Some(l) = (0x8000_0001..=ext_max).find(|&l| !listed(l)) {
            assert_eq!(t.lookup(l, 0, 0), [0; 4], "leaf {l:#x}");
        }
        assert_eq!(t.lookup(ext_max + 1, 0, 0), t.lookup(max, 0, 0));
        assert_eq!(t.lookup(0xffff_ffff, 0, 0), t.lookup(max, 0, 0));
    }

    #[test]
    fn set_filters_against_the_host_and_refuses_bad_totals() {
        let mut t = CpuidTable::new(host);
        let before = t.clone();
        assert_eq!(t.set(&[]), Err(CpuidError::Empty));
        let many = [entry(0x8000_0001, 0, [0; 4]); 65];
        assert_eq!(t.set(&many), Err(CpuidError::TooMany { total: 65 }));
        assert_eq!(t.entries(), before.entries(), "no change on refusal");
        // The guest asks for VMX and everything in leaf 1: VMX stays hidden, and a bit the host
        // lacks (bit 31 of EDX, PBE, hidden anyway; bit 30 of EDX is set on this host) too.
        t.set(&[entry(1, 0, [0x906ea, 0, u32::MAX, u32::MAX])])
            .unwrap();
        let r = t.lookup(1, 0, 0);
        assert_eq!(r[2] & (1 << 5), 0);
        assert_eq!(r[3], 0xbfeb_fbff & !LEAF1_EDX_HIDDEN);
        // A new leaf is added; GET with too small a buffer reports the size only.
        t.set(&[entry(0xa, 0, [1, 2, 3, 4])]).unwrap();
        let mut out = [entry(0, 0, [0; 4]); 18];
        assert_eq!(t.get(&mut out), (19, false));
        let mut out = [entry(0, 0, [0; 4]); 64];
        assert_eq!(t.get(&mut out), (19, true));
        assert_eq!(out[18].function, 0xa);
    }
}
