//! CPUID as user mode sees it (Intel SDM Vol. 2A, CPUID; Microsoft's Hypervisor Top-Level
//! Functional Specification for leaves 0x40000000-0x40000003).
//!
//! Under Hyper-V the root partition (the Windows the user sees) is itself a guest: the
//! hypervisor-present bit (CPUID.1:ECX[31]) is set, leaf 0x40000000 names "Microsoft Hv", and
//! VMX (CPUID.1:ECX[5]) is hidden because the hypervisor owns VT-x. The root partition is told
//! apart from an ordinary Hyper-V guest by the CreatePartitions privilege (leaf 0x40000003 EBX
//! bit 0), which only the root has.

/// The CPUID leaves the check reads, as raw registers `[eax, ebx, ecx, edx]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leaves {
    /// Leaf 0: max leaf, vendor.
    pub l0: [u32; 4],
    /// Leaf 1: feature bits.
    pub l1: [u32; 4],
    /// Leaf 0x80000000 (max extended leaf).
    pub e0: [u32; 4],
    /// Leaf 0x80000001 (NX is EDX bit 20).
    pub e1: [u32; 4],
    /// Leaf 0x40000000 (hypervisor vendor), read only when the hypervisor bit is set.
    pub h0: Option<[u32; 4]>,
    /// Leaf 0x40000003 (Hyper-V features and privileges), read only under "Microsoft Hv".
    pub h3: Option<[u32; 4]>,
}

/// The facts drawn from CPUID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuFacts {
    /// "GenuineIntel", "AuthenticAMD", ...
    pub vendor: String,
    /// CPUID.1:ECX[5] VMX.
    pub vmx: bool,
    /// CPUID.80000001h:EDX[20] NX/XD.
    pub nx: bool,
    /// CPUID.1:ECX[31]: running under a hypervisor.
    pub hypervisor: bool,
    /// The hypervisor's vendor signature (leaf 0x40000000 EBX, ECX, EDX).
    pub hv_vendor: Option<String>,
    /// Under "Microsoft Hv": whether this partition may create partitions (the root).
    pub hv_root: Option<bool>,
}

fn text(regs: [u32; 3]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string()
}

/// The Hyper-V vendor signature.
pub const MICROSOFT_HV: &str = "Microsoft Hv";

impl CpuFacts {
    /// Decodes the leaves.
    pub fn from_leaves(l: &Leaves) -> Self {
        let hypervisor = l.l1[2] & (1 << 31) != 0;
        let hv_vendor =
            l.h0.filter(|_| hypervisor)
                .map(|h| text([h[1], h[2], h[3]]));
        let hv_root = if hv_vendor.as_deref() == Some(MICROSOFT_HV) {
            l.h3.map(|h| h[1] & 1 != 0)
        } else {
            None
        };
        CpuFacts {
            vendor: text([l.l0[1], l.l0[3], l.l0[2]]),
            vmx: l.l1[2] & (1 << 5) != 0,
            nx: l.e0[0] >= 0x8000_0001 && l.e1[3] & (1 << 20) != 0,
            hypervisor,
            hv_vendor,
            hv_root,
        }
    }

    /// Whether the CPU is an Intel one (VT-x; HAXM and rhax need it).
    pub fn intel(&self) -> bool {
        self.vendor == "GenuineIntel"
    }

    /// Whether Hyper-V runs underneath this OS.
    pub fn hyper_v(&self) -> bool {
        self.hv_vendor.as_deref() == Some(MICROSOFT_HV)
    }
}

/// Reads the leaves on this CPU.
#[cfg(target_arch = "x86_64")]
pub fn read() -> CpuFacts {
    use core::arch::x86_64::__cpuid;
    let q = |leaf: u32| {
        // SAFETY: CPUID exists on every x86-64 CPU and only reads; `__cpuid` is a safe
        // function on newer toolchains, hence `unused_unsafe` allowed for the older ones.
        #[allow(unused_unsafe)]
        let r = unsafe { __cpuid(leaf) };
        [r.eax, r.ebx, r.ecx, r.edx]
    };
    let l1 = q(1);
    let hypervisor = l1[2] & (1 << 31) != 0;
    let h0 = hypervisor.then(|| q(0x4000_0000));
    let is_hv = h0.is_some_and(|h| text([h[1], h[2], h[3]]) == MICROSOFT_HV);
    let leaves = Leaves {
        l0: q(0),
        l1,
        e0: q(0x8000_0000),
        e1: q(0x8000_0001),
        h0,
        h3: (is_hv && h0.is_some_and(|h| h[0] >= 0x4000_0003)).then(|| q(0x4000_0003)),
    };
    CpuFacts::from_leaves(&leaves)
}

/// Off x86-64 there is no VT-x to look for.
#[cfg(not(target_arch = "x86_64"))]
pub fn read() -> CpuFacts {
    CpuFacts::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(s: &str) -> [u32; 3] {
        let b = s.as_bytes();
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        [w(0), w(4), w(8)]
    }

    /// Leaves of an Intel CPU; `ecx1` is CPUID.1:ECX.
    pub(crate) fn intel(ecx1: u32, hv: Option<(&str, u32)>) -> Leaves {
        let v = sig("GenuineIntel"); // EBX, EDX, ECX order in leaf 0
        Leaves {
            l0: [0x16, v[0], v[2], v[1]],
            l1: [0x906ea, 0, ecx1, 0],
            e0: [0x8000_0008, 0, 0, 0],
            e1: [0, 0, 0, 1 << 20],
            h0: hv.map(|(s, _)| {
                let h = sig(s);
                [0x4000_000b, h[0], h[1], h[2]]
            }),
            h3: hv.map(|(_, ebx)| [0, ebx, 0, 0]),
        }
    }

    #[test]
    fn bare_intel_with_vmx() {
        let f = CpuFacts::from_leaves(&intel(1 << 5, None));
        assert_eq!(f.vendor, "GenuineIntel");
        assert!(f.intel() && f.vmx && f.nx && !f.hypervisor && !f.hyper_v());
        assert_eq!(f.hv_vendor, None);
    }

    #[test]
    fn hyper_v_root_hides_vmx() {
        let f = CpuFacts::from_leaves(&intel(1 << 31, Some((MICROSOFT_HV, 1))));
        assert!(f.hypervisor && f.hyper_v() && !f.vmx);
        assert_eq!(f.hv_root, Some(true));
        let guest = CpuFacts::from_leaves(&intel(1 << 31, Some((MICROSOFT_HV, 0))));
        assert_eq!(guest.hv_root, Some(false));
        let kvm = CpuFacts::from_leaves(&intel(1 << 31 | 1 << 5, Some(("KVMKVMKVM\0\0\0", 1))));
        assert_eq!(kvm.hv_vendor.as_deref(), Some("KVMKVMKVM"));
        assert_eq!(kvm.hv_root, None);
        assert!(kvm.vmx && !kvm.hyper_v());
    }

    #[test]
    fn amd_and_no_nx() {
        let mut l = intel(0, None);
        let a = sig("AuthenticAMD");
        l.l0 = [0x10, a[0], a[2], a[1]];
        l.e1 = [0; 4];
        let f = CpuFacts::from_leaves(&l);
        assert_eq!(f.vendor, "AuthenticAMD");
        assert!(!f.intel() && !f.nx);
    }

    #[test]
    fn reading_this_cpu_does_not_fail() {
        let f = read();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(f.vendor.len(), 12, "{f:?}");
        }
    }
}
