//! Entering VMX operation on each CPU (SDM Vol. 3C §24.7 "Enabling and Entering VMX Operation"):
//! CPUID.1:ECX.VMX, IA32_FEATURE_CONTROL, the CR0/CR4 fixed bits (§24.8, Appendix A.7/A.8),
//! CR4.VMXE, and VMXON with a 4-KiB region carrying the VMCS revision identifier.

use core::arch::asm;

use crate::arch::{cpuid, cr0, cr4, rdmsr, write_cr0, write_cr4, wrmsr};
use crate::boot::MAX_CPUS;
use crate::mm;
use crate::sync::SpinLock;

/// IA32_FEATURE_CONTROL (SDM Vol. 4, Table 2-2).
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
/// IA32_VMX_BASIC and the capability MSRs after it (SDM Vol. 3C Appendix A).
pub const IA32_VMX_BASIC: u32 = 0x480;
const FC_LOCK: u64 = 1 << 0;
const FC_VMX_OUTSIDE_SMX: u64 = 1 << 2;

/// How IA32_FEATURE_CONTROL was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureControl {
    /// Not locked: the kernel wrote lock + VMX-outside-SMX (the ROM path).
    SetByKernel,
    /// Locked by firmware with VMX outside SMX allowed (the BIOS/GRUB path).
    LockedByFirmware,
}

/// The result of enabling VMX on one CPU.
#[derive(Clone, Copy, Debug)]
pub enum VmxState {
    /// Not attempted yet.
    Unknown,
    /// In VMX root operation.
    On {
        revision: u32,
        vmxon_region: u64,
        feature_control: FeatureControl,
    },
    /// Left VMX operation (VMXOFF) so that another owner (rhax-core) can enter it.
    Off { revision: u32 },
    /// Could not enter VMX operation.
    Failed(&'static str),
}

static STATE: SpinLock<[VmxState; MAX_CPUS]> = SpinLock::new([VmxState::Unknown; MAX_CPUS]);

/// The VMX state of CPU `cpu`.
pub fn state(cpu: usize) -> VmxState {
    STATE.lock()[cpu]
}

fn try_enable() -> Result<(u32, u64, FeatureControl), &'static str> {
    if cpuid(1, 0).2 & (1 << 5) == 0 {
        return Err("CPUID.1:ECX.VMX[bit 5] = 0: this CPU has no VMX");
    }
    // SAFETY: IA32_FEATURE_CONTROL exists when CPUID reports VMX (SDM Vol. 4 Table 2-2).
    let fc = unsafe { rdmsr(IA32_FEATURE_CONTROL) };
    let how = if fc & FC_LOCK != 0 {
        if fc & FC_VMX_OUTSIDE_SMX == 0 {
            return Err(
                "IA32_FEATURE_CONTROL is locked by firmware with VMX outside SMX disabled \
                        (enable VT-x in the firmware setup)",
            );
        }
        FeatureControl::LockedByFirmware
    } else {
        // SAFETY: the MSR is unlocked, so it is writable; lock + VMX outside SMX is the setting
        // SDM Vol. 3C §24.7 asks for before VMXON.
        unsafe { wrmsr(IA32_FEATURE_CONTROL, fc | FC_LOCK | FC_VMX_OUTSIDE_SMX) };
        FeatureControl::SetByKernel
    };
    // SAFETY: the VMX capability MSRs exist when CPUID reports VMX.
    let basic = unsafe { rdmsr(IA32_VMX_BASIC) };
    let revision = (basic & 0x7FFF_FFFF) as u32;
    let (c0f0, c0f1) = (read_cap(0x486), read_cap(0x487));
    let (c4f0, c4f1) = (read_cap(0x488), read_cap(0x489));
    // SAFETY: the fixed bits are what VMXON requires (Appendix A.7); PE/PG/NE are already set by
    // the boot stub, so this keeps paging and protection as they are.
    unsafe { write_cr0((cr0() | c0f0) & c0f1) };
    // SAFETY: adds CR4.VMXE (bit 13) and the other fixed-1 bits (Appendix A.8); PAE and the SSE
    // bits stay set.
    unsafe { write_cr4((cr4() | c4f0 | 1 << 13) & (c4f1 | 1 << 13)) };
    let region = mm::alloc_pages(1, mm::PAGE).ok_or("no memory for the VMXON region")?;
    // SAFETY: the region is a fresh, identity-mapped page owned by this CPU; the revision
    // identifier goes in its first 31 bits (§25.11.5).
    unsafe { (region as *mut u32).write_volatile(revision) };
    let ok: u8;
    // SAFETY: CPL 0, CR4.VMXE set, feature control enabled, CR0/CR4 fixed bits respected: the
    // preconditions of VMXON. It fails (CF/ZF) rather than faults if something is off.
    unsafe {
        asm!("vmxon [{0}]", "setna {1}", in(reg) &region, out(reg_byte) ok, options(nostack));
    }
    if ok != 0 {
        mm::free_pages(region, 1);
        return Err("VMXON failed (VMfailInvalid)");
    }
    Ok((revision, region, how))
}

/// Enables VMX on the running CPU (index `cpu`) and records the result.
pub fn enable_on_this_cpu(cpu: usize) {
    let s = match try_enable() {
        Ok((revision, vmxon_region, feature_control)) => VmxState::On {
            revision,
            vmxon_region,
            feature_control,
        },
        Err(e) => VmxState::Failed(e),
    };
    STATE.lock()[cpu] = s;
}

/// Leaves VMX operation on the running CPU (index `cpu`), freeing the VMXON region.
pub fn vmxoff_on_this_cpu(cpu: usize) {
    let mut st = STATE.lock();
    if let VmxState::On {
        revision,
        vmxon_region,
        ..
    } = st[cpu]
    {
        // SAFETY: this CPU is in VMX root operation (state On) at CPL 0.
        unsafe { asm!("vmxoff", options(nostack)) };
        mm::free_pages(vmxon_region, 1);
        st[cpu] = VmxState::Off { revision };
    }
}

/// Reads a VMX capability MSR.
pub fn read_cap(msr: u32) -> u64 {
    // SAFETY: callers read only capability MSRs the CPU advertises (see `scenarios::vmx_caps`).
    unsafe { rdmsr(msr) }
}
