//! Is VT-x usable on this machine, and if not, what is in the way and what to do about it.
//!
//! The decision is pure ([`diagnose`] over [`CpuFacts`]) and unit-tested on the host; the
//! facts are gathered by [`probe`] on the NT side:
//! * CPUID on the current CPU first (vendor, VMX, NX/XD, the hypervisor bit and leaf
//!   0x40000000's vendor). If that already says no (no VMX: also the CI machine under Wine),
//!   or the code does not run in ring 0 (Wine runs the driver in a user-mode process, where
//!   RDMSR faults), the answer comes from CPUID alone, on this CPU only, with no IPI and no
//!   affinity change (Wine 8.0 lacks KeIpiGenericCall and KeSetSystemGroupAffinityThread).
//! * Otherwise CPUID and the VMX capability MSRs on every CPU of every processor group
//!   ([`Platform::run_on_each_cpu`]); RDMSR only on a CPU whose CPUID reports VMX (the
//!   capability MSRs do not exist elsewhere: SDM Vol. 3D Appendix A).
//!
//! HAXM's CAPABILITY answer has two fail-reason bits: VT (VT-x missing, disabled or taken)
//! and NX (execute-disable missing or off); [`Obstacle::capability_failure`] gives them.

use core::fmt;

use rhax_api::CapabilityFailure;
use rhax_core::vmx::caps::{FeatureControl, VmxCapMsrs, VmxCaps};
use rhax_core::vmx::negotiate::{negotiate, NegotiationError, VmxControls};

/// What CPUID says about one CPU (no privilege needed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidFacts {
    /// CPUID.0: EBX, EDX, ECX ("GenuineIntel").
    pub vendor: [u8; 12],
    /// CPUID.1:ECX bit 5 (VMX).
    pub vmx: bool,
    /// CPUID.1:ECX bit 31: a hypervisor runs this OS.
    pub hypervisor: bool,
    /// CPUID.0x40000000: EBX, ECX, EDX (zeros without the hypervisor bit).
    pub hypervisor_vendor: [u8; 12],
    /// CPUID.0x80000001:EDX bit 20 (NX/XD; reads 0 when the firmware's "XD disable" is set).
    pub nx: bool,
}

/// Everything gathered on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFacts {
    /// The CPU's system-wide index (all processor groups).
    pub cpu: u32,
    /// Its CPUID answers.
    pub cpuid: CpuidFacts,
    /// IA32_FEATURE_CONTROL and the VMX capability MSRs; `None` when not read (no VMX in
    /// CPUID, or not in ring 0).
    pub msrs: Option<VmxCapMsrs>,
}

/// The hypervisor named by CPUID leaf 0x40000000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypervisor {
    /// "Microsoft Hv": Hyper-V, also what VBS, Memory Integrity (HVCI), Credential Guard,
    /// WSL 2, Windows Sandbox and the Windows Hypervisor Platform run on.
    HyperV,
    /// "KVMKVMKVM".
    Kvm,
    /// "VMwareVMware".
    VMware,
    /// "VBoxVBoxVBox".
    VirtualBox,
    /// "XenVMMXenVMM".
    Xen,
    /// " lrpepyh  vr" (Parallels).
    Parallels,
    /// "TCGTCGTCGTCG" (QEMU without acceleration).
    QemuTcg,
    /// "ACRNACRNACRN".
    Acrn,
    /// Anything else (the raw vendor string).
    Other([u8; 12]),
}

impl Hypervisor {
    /// Decodes leaf 0x40000000's vendor.
    pub fn from_vendor(v: &[u8; 12]) -> Hypervisor {
        match v {
            b"Microsoft Hv" => Hypervisor::HyperV,
            b"KVMKVMKVM\0\0\0" => Hypervisor::Kvm,
            b"VMwareVMware" => Hypervisor::VMware,
            b"VBoxVBoxVBox" => Hypervisor::VirtualBox,
            b"XenVMMXenVMM" => Hypervisor::Xen,
            b" lrpepyh  vr" => Hypervisor::Parallels,
            b"TCGTCGTCGTCG" => Hypervisor::QemuTcg,
            b"ACRNACRNACRN" => Hypervisor::Acrn,
            other => Hypervisor::Other(*other),
        }
    }
}

/// Why VT-x cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The driver does not run in ring 0 (CPL 3: an emulation such as Wine).
    NotKernelMode,
    /// No CPU was examined (an empty or failed gathering).
    NoCpus,
    /// Memory for the per-CPU facts could not be allocated.
    OutOfMemory,
    /// The CPU is not an Intel one (HAXM's ABI is VT-x only).
    NotIntel {
        /// CPUID.0's vendor string.
        vendor: [u8; 12],
    },
    /// A hypervisor runs Windows and hides VMX from it.
    HypervisorOwnsVtx {
        /// The first CPU found.
        cpu: u32,
        /// Which hypervisor.
        hypervisor: Hypervisor,
    },
    /// The CPU has no VT-x (CPUID.1:ECX.VMX = 0, no hypervisor reported).
    NoVmx {
        /// The first CPU found.
        cpu: u32,
    },
    /// A CPU's VMX capability MSRs were not gathered.
    NotGathered {
        /// The CPU.
        cpu: u32,
    },
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX off (SDM Vol. 3C §24.7).
    DisabledByFirmware {
        /// The first CPU found.
        cpu: u32,
    },
    /// NX/XD is missing or disabled (HAXM's NX fail reason).
    NoNx {
        /// The first CPU found.
        cpu: u32,
    },
    /// VT-x is there but lacks something rhax needs (EPT, unrestricted guest...).
    Negotiation {
        /// The CPU.
        cpu: u32,
        /// What negotiation refused.
        error: NegotiationError,
    },
    /// Two CPUs report different VMX capabilities (a VMCS moves between CPUs, and one set of
    /// controls serves them all).
    CpusDisagree {
        /// The reference CPU.
        first: u32,
        /// The CPU that differs.
        cpu: u32,
    },
}

/// Why VT-x cannot be used, and whether NX/XD is missing as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Obstacle {
    /// The first thing in the way.
    pub reason: Reason,
    /// NX/XD is also missing on some CPU (reported with the VT reason, as HAXM does).
    pub no_nx: bool,
}

impl Obstacle {
    fn new(reason: Reason) -> Obstacle {
        Obstacle {
            reason,
            no_nx: false,
        }
    }

    /// HAXM's fail-reason bits for CAPABILITY (`HAX_CAP_FAILREASON_VT`, `..._NX`).
    pub fn capability_failure(self) -> CapabilityFailure {
        let mut bits = match self.reason {
            Reason::NoNx { .. } => CapabilityFailure::NX,
            _ => CapabilityFailure::VT,
        };
        if self.no_nx {
            bits |= CapabilityFailure::NX;
        }
        bits
    }
}

fn vendor_str(v: &[u8; 12]) -> &str {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    core::str::from_utf8(&v[..end]).unwrap_or("?")
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hypervisor::HyperV => f.write_str("Hyper-V (\"Microsoft Hv\")"),
            Hypervisor::Kvm => f.write_str("KVM"),
            Hypervisor::VMware => f.write_str("VMware"),
            Hypervisor::VirtualBox => f.write_str("VirtualBox"),
            Hypervisor::Xen => f.write_str("Xen"),
            Hypervisor::Parallels => f.write_str("Parallels"),
            Hypervisor::QemuTcg => f.write_str("QEMU (TCG)"),
            Hypervisor::Acrn => f.write_str("ACRN"),
            Hypervisor::Other(v) => write!(f, "an unknown hypervisor (\"{}\")", vendor_str(v)),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotKernelMode => f.write_str(
                "rhax.sys does not run in ring 0 here (an emulation such as Wine): VT-x cannot \
                 be used",
            ),
            Reason::NoCpus => f.write_str("no processor could be examined"),
            Reason::OutOfMemory => {
                f.write_str("out of memory while examining the processors; try again")
            }
            Reason::NotIntel { vendor } => write!(
                f,
                "this processor is \"{}\", not Intel: rhax, like HAXM, needs Intel VT-x (on AMD \
                 use WHPX, or the Android Emulator hypervisor driver)",
                vendor_str(vendor)
            ),
            Reason::HypervisorOwnsVtx {
                cpu,
                hypervisor: Hypervisor::HyperV,
            } => write!(
                f,
                "VT-x is taken by Hyper-V (\"Microsoft Hv\" hides VMX, CPU {cpu}): it runs for \
                 Memory Integrity/VBS, Credential Guard, Hyper-V, WSL 2, Sandbox or WHPX. Turn \
                 off Core isolation > Memory Integrity and those features, run `bcdedit /set \
                 hypervisorlaunchtype off` as administrator, reboot. In a Hyper-V VM: \
                 Set-VMProcessor -ExposeVirtualizationExtensions $true on the host"
            ),
            Reason::HypervisorOwnsVtx { cpu, hypervisor } => {
                let how = match hypervisor {
                    Hypervisor::VMware => {
                        "tick \"Virtualize Intel VT-x/EPT\" in the virtual machine's processor \
                         settings"
                    }
                    Hypervisor::Kvm => {
                        "load kvm_intel with nested=1 on the host and give the guest \
                         `-cpu host` (or +vmx)"
                    }
                    Hypervisor::VirtualBox => {
                        "turn on \"Enable Nested VT-x/AMD-V\" (VBoxManage modifyvm --nested-hw-virt on)"
                    }
                    _ => "enable nested virtualization (VT-x) for this virtual machine on its host",
                };
                write!(
                    f,
                    "Windows runs inside a virtual machine of {hypervisor}, which does not \
                     expose VT-x (CPU {cpu}): {how}"
                )
            }
            Reason::NoVmx { cpu } => write!(
                f,
                "CPU {cpu} has no VT-x (CPUID.1:ECX.VMX[bit 5] = 0): rhax needs an Intel \
                 processor with VT-x"
            ),
            Reason::NotGathered { cpu } => {
                write!(f, "CPU {cpu} did not report its VT-x capabilities")
            }
            Reason::DisabledByFirmware { cpu } => write!(
                f,
                "VT-x is disabled by the firmware (IA32_FEATURE_CONTROL locked with VMX \
                 outside SMX off, CPU {cpu}): enable \"Intel Virtualization Technology\" \
                 (VT-x) in the BIOS/UEFI setup, then power the machine off and on"
            ),
            Reason::NoNx { cpu } => write!(
                f,
                "NX/XD (execute disable) is off on CPU {cpu}: enable \"Execute Disable Bit\" \
                 (XD) in the BIOS/UEFI setup"
            ),
            Reason::Negotiation { cpu, error } => write!(
                f,
                "CPU {cpu}: {error} (an older processor, or a hypervisor exposing a reduced \
                 VT-x)"
            ),
            Reason::CpusDisagree { first, cpu } => write!(
                f,
                "CPU {cpu} reports VT-x capabilities different from CPU {first}: rhax needs \
                 the same VT-x features on every processor (a firmware or microcode update \
                 may fix this)"
            ),
        }
    }
}

impl fmt::Display for Obstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if self.no_nx && !matches!(self.reason, Reason::NoNx { .. }) {
            f.write_str("; NX/XD is off too: enable it in the firmware")?;
        }
        Ok(())
    }
}

const INTEL: &[u8; 12] = b"GenuineIntel";

/// Decides from the facts of every CPU whether VT-x is usable, and negotiates the controls
/// (one set for all CPUs). Checks in this order, reporting the first CPU that fails each:
/// vendor, VMX in CPUID (hidden by which hypervisor), capability MSRs gathered, firmware lock
/// (IA32_FEATURE_CONTROL), NX/XD, negotiation, agreement between CPUs.
pub fn diagnose(facts: &[CpuFacts]) -> Result<VmxControls, Obstacle> {
    let first = facts.first().ok_or(Obstacle::new(Reason::NoCpus))?;
    let no_nx = facts.iter().find(|f| !f.cpuid.nx).map(|f| f.cpu);
    let fail = |reason| Obstacle {
        reason,
        no_nx: no_nx.is_some(),
    };
    for f in facts {
        if &f.cpuid.vendor != INTEL {
            return Err(fail(Reason::NotIntel {
                vendor: f.cpuid.vendor,
            }));
        }
    }
    for f in facts {
        if !f.cpuid.vmx {
            return Err(fail(if f.cpuid.hypervisor {
                Reason::HypervisorOwnsVtx {
                    cpu: f.cpu,
                    hypervisor: Hypervisor::from_vendor(&f.cpuid.hypervisor_vendor),
                }
            } else {
                Reason::NoVmx { cpu: f.cpu }
            }));
        }
    }
    for f in facts {
        let msrs = f
            .msrs
            .as_ref()
            .ok_or(fail(Reason::NotGathered { cpu: f.cpu }))?;
        if FeatureControl::from_bits_retain(msrs.feature_control).locked_off() {
            return Err(fail(Reason::DisabledByFirmware { cpu: f.cpu }));
        }
    }
    if let Some(cpu) = no_nx {
        return Err(Obstacle::new(Reason::NoNx { cpu }));
    }
    let mut reference: Option<(VmxControls, u32)> = None;
    for f in facts {
        let Some(msrs) = f.msrs.as_ref() else {
            return Err(fail(Reason::NotGathered { cpu: f.cpu }));
        };
        let caps = VmxCaps::from_msrs(msrs);
        let controls =
            negotiate(&caps).map_err(|error| fail(Reason::Negotiation { cpu: f.cpu, error }))?;
        match reference {
            None => reference = Some((controls, caps.basic.revision_id)),
            Some(r) if r == (controls, caps.basic.revision_id) => {}
            Some(_) => {
                return Err(fail(Reason::CpusDisagree {
                    first: first.cpu,
                    cpu: f.cpu,
                }))
            }
        }
    }
    reference
        .map(|(c, _)| c)
        .ok_or(Obstacle::new(Reason::NoCpus))
}

/// Reads CPUID on the calling CPU (unprivileged: also correct in Wine's ring 3).
pub fn cpuid_facts() -> CpuidFacts {
    use core::arch::x86_64::__cpuid;
    let words = |a: u32, b: u32, c: u32| {
        let mut v = [0u8; 12];
        v[0..4].copy_from_slice(&a.to_le_bytes());
        v[4..8].copy_from_slice(&b.to_le_bytes());
        v[8..12].copy_from_slice(&c.to_le_bytes());
        v
    };
    // CPUID exists on every x86-64 CPU and needs no privilege (unless a hypervisor faults it,
    // which none does for these leaves).
    let l0 = __cpuid(0);
    let vendor = words(l0.ebx, l0.edx, l0.ecx);
    let l1 = if l0.eax >= 1 { __cpuid(1) } else { __cpuid(0) };
    let (vmx, hypervisor) = if l0.eax >= 1 {
        (l1.ecx & (1 << 5) != 0, l1.ecx & (1 << 31) != 0)
    } else {
        (false, false)
    };
    let hypervisor_vendor = if hypervisor {
        let h = __cpuid(0x4000_0000);
        words(h.ebx, h.ecx, h.edx)
    } else {
        [0; 12]
    };
    let ext = __cpuid(0x8000_0000).eax;
    let nx = ext >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 20) != 0;
    CpuidFacts {
        vendor,
        vmx,
        hypervisor,
        hypervisor_vendor,
        nx,
    }
}

/// The current privilege level (CS.RPL): 0 in a real kernel, 3 under Wine.
pub fn current_privilege_level() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effect at any privilege level.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    cs & 3
}

#[cfg(rhax_nt)]
mod nt_probe {
    use core::cell::UnsafeCell;

    use alloc::vec::Vec;
    use rhax_core::platform::Platform;
    use rhax_core::vmx::caps::VmxCapMsrs;
    use rhax_core::vmx::hw::HwVmx;
    use rhax_core::vmx::negotiate::VmxControls;
    use rhax_core::vmx::Vmx;

    use super::{cpuid_facts, current_privilege_level, diagnose, CpuFacts, Obstacle, Reason};
    use crate::platform::NtPlatform;

    /// Windows supports at most 2048 logical processors; anything above is a bad count.
    const MAX_CPUS: u32 = 2048;

    /// One CPU's facts, written only by the invocation of `run_on_each_cpu` for that CPU.
    struct Cell(UnsafeCell<Option<CpuFacts>>);
    // SAFETY: each cell is written by exactly one invocation (the one for its CPU index), and
    // read only after run_on_each_cpu returned (it waits for all): no concurrent access.
    unsafe impl Sync for Cell {}

    /// Checks VT-x on every CPU (all processor groups) and negotiates the VMX controls rhax
    /// needs; `Err` says what is in the way. Called once by DriverEntry at PASSIVE_LEVEL.
    ///
    /// On a machine without VMX, and in Wine, this runs CPUID on the current CPU only: no
    /// RDMSR, no IPI, no affinity change. UNVERIFIED on real Windows beyond that path: the
    /// all-CPU gathering (affinity to each CPU, RDMSR) has only been compiled.
    pub fn probe(platform: &NtPlatform) -> Result<VmxControls, Obstacle> {
        let here = CpuFacts {
            cpu: platform.current_cpu(),
            cpuid: cpuid_facts(),
            msrs: None,
        };
        if !here.cpuid.vmx || &here.cpuid.vendor != super::INTEL {
            // CPUID alone decides (the MSRs do not exist): no other CPU needs asking.
            return diagnose(core::slice::from_ref(&here));
        }
        if current_privilege_level() != 0 {
            return Err(Obstacle {
                reason: Reason::NotKernelMode,
                no_nx: !here.cpuid.nx,
            });
        }
        let count = platform.cpu_count().min(MAX_CPUS);
        let mut cells: Vec<Cell> = Vec::new();
        if cells.try_reserve_exact(count as usize).is_err() {
            return Err(Obstacle::new(Reason::OutOfMemory));
        }
        cells.extend((0..count).map(|_| Cell(UnsafeCell::new(None))));
        platform.run_on_each_cpu(&|cpu| {
            let Some(cell) = cells.get(cpu as usize) else {
                return;
            };
            let cpuid = cpuid_facts();
            let msrs = cpuid.vmx.then(|| {
                // SAFETY: CPL 0 (checked above, same driver) on a CPU whose CPUID reports
                // VMX; the value is used only here, on this CPU (run_on_each_cpu runs this at
                // DISPATCH_LEVEL, bound to the CPU).
                let mut hw = unsafe { HwVmx::new() };
                // SAFETY: VmxCapMsrs::read reads IA32_FEATURE_CONTROL and only the VMX
                // capability MSRs that SDM Vol. 3D Appendix A says exist on a VMX CPU.
                VmxCapMsrs::read(|msr| unsafe { hw.rdmsr(msr) })
            });
            // SAFETY: this invocation is the only writer of this cell (see `Cell`).
            unsafe { *cell.0.get() = Some(CpuFacts { cpu, cpuid, msrs }) };
        });
        let mut facts: Vec<CpuFacts> = Vec::new();
        if facts.try_reserve_exact(cells.len()).is_err() {
            return Err(Obstacle::new(Reason::OutOfMemory));
        }
        for (i, cell) in cells.into_iter().enumerate() {
            match cell.0.into_inner() {
                Some(f) => facts.push(f),
                None => return Err(Obstacle::new(Reason::NotGathered { cpu: i as u32 })),
            }
        }
        diagnose(&facts)
    }
}

#[cfg(rhax_nt)]
pub use nt_probe::probe;

#[cfg(test)]
mod tests;
