//! VMX root operation on one CPU: enabling (IA32_FEATURE_CONTROL, CR4.VMXE, fixed CR0/CR4 bits,
//! VMXON; Intel SDM Vol. 3C §24.7 "Enabling and Entering VMX Operation", 2023+ numbering), the
//! host state captured once per CPU, and the current-VMCS bookkeeping. VMXON happens once per
//! CPU, not per run (HAXM did VMXON/VMXOFF around every RUN).

use crate::platform::{CpuIndex, PhysPages};
pub use crate::vmx::caps::IA32_FEATURE_CONTROL;
use crate::vmx::caps::{FeatureControl, VmxCaps};
use crate::vmx::instructions::{Selectors, Vmx};
use crate::vmx::VmFail;

/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_DEBUGCTL.
pub const IA32_DEBUGCTL: u32 = 0x1d9;
/// IA32_TIME_STAMP_COUNTER.
pub const IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_PAT.
pub const IA32_PAT: u32 = 0x277;
/// IA32_EFER.
pub const IA32_EFER: u32 = 0xc000_0080;
/// IA32_STAR.
pub const IA32_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR.
pub const IA32_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR.
pub const IA32_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK.
pub const IA32_FMASK: u32 = 0xc000_0084;
/// IA32_FS_BASE.
pub const IA32_FS_BASE: u32 = 0xc000_0100;
/// IA32_GS_BASE.
pub const IA32_GS_BASE: u32 = 0xc000_0101;
/// IA32_KERNEL_GS_BASE.
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_TSC_AUX.
pub const IA32_TSC_AUX: u32 = 0xc000_0103;

const CR4_VMXE: u64 = 1 << 13;

/// Why VMX could not be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableError {
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled (BIOS setting).
    DisabledByFirmware,
    /// CR0 does not satisfy IA32_VMX_CR0_FIXED0/1 (e.g. paging off) and cannot be fixed here.
    Cr0NotAllowed,
    /// CR4 (with VMXE) does not satisfy IA32_VMX_CR4_FIXED0/1.
    Cr4NotAllowed,
    /// The VMXON region is too small or misaligned.
    BadRegion,
    /// VMXON failed (e.g. another hypervisor owns VMX on this CPU).
    Vmxon(VmFail),
}

/// The host state of one CPU, captured once at enable time (the host-state area of every VMCS
/// run on this CPU). HOST_CR3 and HOST_FS_BASE are per thread, so they are re-read per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostState {
    /// CR0.
    pub cr0: u64,
    /// CR4 (VMXE set).
    pub cr4: u64,
    /// Selectors with RPL/TI cleared as SDM §27.2.3 requires (the exit loads these values).
    pub selectors: Selectors,
    /// GS base (per-CPU data on Windows and Linux).
    pub gs_base: u64,
    /// TSS base.
    pub tr_base: u64,
    /// GDTR base.
    pub gdtr_base: u64,
    /// IDTR base.
    pub idtr_base: u64,
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u32,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK and IA32_TSC_AUX: set once per CPU by
    /// the host OS at boot (system-call entry points, the processor number), so the vCPU
    /// restores them from here after a run instead of reading them before every run (KVM
    /// reads its user-return MSRs once per CPU too). IA32_KERNEL_GS_BASE is per thread and is
    /// read at every load.
    pub syscall_msrs: [u64; 5],
    /// The entry stub's exit label.
    pub rip: u64,
    /// The MXCSR bits this CPU supports (from an FXSAVE image), which every guest MXCSR is
    /// checked against before FXRSTOR sees it (SDM Vol. 1 §10.5.1.2).
    pub mxcsr_mask: crate::vcpu::checked::MxcsrMask,
}

impl HostState {
    /// Reads this CPU's host state.
    ///
    /// # Safety
    /// CPL0, pinned to the CPU whose state is read.
    pub unsafe fn capture<V: Vmx>(vmx: &mut V) -> HostState {
        // SAFETY: CPL0 by contract (here and below; the MSRs exist on every Intel 64 CPU).
        let sel = unsafe { vmx.selectors() };
        // SAFETY: as above.
        let gdt = unsafe { vmx.sgdt() };
        // SAFETY: as above.
        let idt = unsafe { vmx.sidt() };
        // SAFETY: TR selects this CPU's TSS descriptor in its GDT.
        let tr_base = unsafe { vmx.tss_base(gdt, sel.tr) };
        let clean = |s: u16| s & !7;
        let mut fx = rhax_api::fpu::FxLayout::default();
        // SAFETY: CPL0; FXSAVE only stores into `fx` (16-byte aligned by its type).
        unsafe { vmx.fxsave(&mut fx) };
        HostState {
            // SAFETY: as above.
            cr0: unsafe { vmx.read_cr0() },
            // SAFETY: as above.
            cr4: unsafe { vmx.read_cr4() },
            selectors: Selectors {
                cs: clean(sel.cs),
                ss: clean(sel.ss),
                ds: clean(sel.ds),
                es: clean(sel.es),
                fs: clean(sel.fs),
                gs: clean(sel.gs),
                tr: clean(sel.tr),
            },
            // SAFETY: as above.
            gs_base: unsafe { vmx.rdmsr(IA32_GS_BASE) },
            tr_base,
            gdtr_base: gdt.base,
            idtr_base: idt.base,
            // SAFETY: as above.
            sysenter_cs: unsafe { vmx.rdmsr(IA32_SYSENTER_CS) } as u32,
            // SAFETY: as above.
            sysenter_esp: unsafe { vmx.rdmsr(IA32_SYSENTER_ESP) },
            // SAFETY: as above.
            sysenter_eip: unsafe { vmx.rdmsr(IA32_SYSENTER_EIP) },
            // SAFETY: as above.
            efer: unsafe { vmx.rdmsr(IA32_EFER) },
            // SAFETY: as above.
            pat: unsafe { vmx.rdmsr(IA32_PAT) },
            // SAFETY: as above; these exist on every Intel 64 CPU (TSC_AUX with RDTSCP, which
            // every VMX CPU with unrestricted guest has).
            syscall_msrs: [IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK, IA32_TSC_AUX]
                .map(|msr| unsafe { vmx.rdmsr(msr) }),
            rip: vmx.host_rip(),
            mxcsr_mask: crate::vcpu::checked::MxcsrMask::from_host_fxsave(fx.mxcsr_mask),
        }
    }
}

/// The next [`VmxRoot::token`]: 64 bits do not wrap in the life of a machine.
static NEXT_TOKEN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// VMX root operation on one CPU.
pub struct VmxRoot<V: Vmx> {
    pub(crate) vmx: V,
    pub(crate) cpu: CpuIndex,
    pub(crate) caps: VmxCaps,
    pub(crate) host: HostState,
    /// Unique to this enable among all enables on all CPUs (never 0): a vCPU whose recorded
    /// token equals it knows, with one compare, that it is resident on this CPU under this
    /// VMXON (the CPU and a per-CPU count of enables would be two, on every run and VMCS
    /// access).
    pub(crate) token: u64,
    pub(crate) current_vmcs: Option<u64>,
    region: PhysPages,
    old_cr4: u64,
}

impl<V: Vmx> VmxRoot<V> {
    /// Enters VMX root operation on the calling CPU: locks IA32_FEATURE_CONTROL if the firmware
    /// left it unlocked, sets CR4.VMXE, checks CR0/CR4 against the fixed-bit MSRs, writes the
    /// revision identifier into `region`, VMXON, and captures the host state.
    ///
    /// # Safety
    /// CPL0; the caller stays on CPU `cpu` in a non-preemptible context while the returned
    /// value is used (every method runs VMX instructions on "this CPU"), and runs
    /// [`crate::vcpu::Vcpu::run`] with interrupts disabled; nothing else on this CPU uses VMX
    /// or changes CR4 meanwhile. `region` is one page from the platform.
    pub unsafe fn enable(
        mut vmx: V,
        cpu: CpuIndex,
        mut region: PhysPages,
    ) -> Result<Self, (EnableError, V, PhysPages)> {
        // SAFETY: CPL0 by contract; the capability MSRs exist on a VMX CPU.
        let caps = VmxCaps::read(|msr| unsafe { vmx.rdmsr(msr) });
        // SDM §24.7: VMXON needs IA32_FEATURE_CONTROL bit 0 (lock) and bit 2 (VMX outside SMX).
        let fc = FeatureControl::from_bits_retain(caps.raw.feature_control);
        if fc.locked_off() {
            return Err((EnableError::DisabledByFirmware, vmx, region));
        }
        if !fc.contains(FeatureControl::LOCK) {
            let v = fc | FeatureControl::LOCK | FeatureControl::VMX_OUTSIDE_SMX;
            // SAFETY: an unlocked IA32_FEATURE_CONTROL may be written once at CPL0.
            unsafe { vmx.wrmsr(IA32_FEATURE_CONTROL, v.bits()) };
        }
        if region.count() == 0 || region.phys() & 0xfff != 0 {
            return Err((EnableError::BadRegion, vmx, region));
        }
        // SAFETY: CPL0.
        let cr0 = unsafe { vmx.read_cr0() };
        if !caps.cr0_fixed.accepts(cr0) {
            return Err((EnableError::Cr0NotAllowed, vmx, region));
        }
        // SAFETY: CPL0.
        let old_cr4 = unsafe { vmx.read_cr4() };
        if !caps.cr4_fixed.accepts(old_cr4 | CR4_VMXE) {
            return Err((EnableError::Cr4NotAllowed, vmx, region));
        }
        // SAFETY: setting CR4.VMXE changes nothing else (CPL0 by contract).
        unsafe { vmx.write_cr4(old_cr4 | CR4_VMXE) };
        // SDM §25.2: bits 30:0 of the first dword hold the revision identifier, bit 31 is 0.
        region.bytes_mut()[..4]
            .copy_from_slice(&(caps.basic.revision_id & 0x7fff_ffff).to_le_bytes());
        // SAFETY: preconditions established above; the region stays owned by the root.
        if let Err(e) = unsafe { vmx.vmxon(region.phys()) } {
            // SAFETY: restores the CR4 value found on entry.
            unsafe { vmx.write_cr4(old_cr4) };
            return Err((EnableError::Vmxon(e), vmx, region));
        }
        // SAFETY: CPL0, pinned.
        let host = unsafe { HostState::capture(&mut vmx) };
        Ok(VmxRoot {
            vmx,
            cpu,
            caps,
            host,
            token: NEXT_TOKEN.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            current_vmcs: None,
            region,
            old_cr4,
        })
    }

    /// Leaves VMX root operation (VMXOFF, CR4 restored). VMCSs still active on this CPU must
    /// have been VMCLEARed (see [`crate::vcpu::Vcpu::unload`]).
    pub fn disable(mut self) -> Result<(V, PhysPages), (alloc::boxed::Box<Self>, VmFail)> {
        // SAFETY: VMX root on this CPU is the invariant of `self`.
        if let Err(e) = unsafe { self.vmx.vmxoff() } {
            return Err((alloc::boxed::Box::new(self), e));
        }
        // SAFETY: CPL0 (contract of `enable`); restores the CR4 found at enable time.
        unsafe { self.vmx.write_cr4(self.old_cr4) };
        Ok((self.vmx, self.region))
    }

    /// The capabilities of this CPU.
    pub fn caps(&self) -> &VmxCaps {
        &self.caps
    }

    /// The CPU this root runs on.
    pub fn cpu(&self) -> CpuIndex {
        self.cpu
    }

    /// The host state captured at enable time.
    pub fn host_state(&self) -> &HostState {
        &self.host
    }

    /// The CPU implementation (for tests and diagnostics).
    pub fn vmx(&mut self) -> &mut V {
        &mut self.vmx
    }
}
