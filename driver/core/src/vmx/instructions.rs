//! The [`Vmx`] trait: every VMX instruction plus the MSR, control-register and descriptor-table
//! accesses the core needs (Intel SDM Vol. 3C chapter 31 "VMX Instruction Reference"; 2023+
//! numbering). Two implementations: [`crate::vmx::hw::HwVmx`] (inline asm, x86_64 only) and
//! [`crate::vmx::soft::SoftVmx`] (a software model for host tests). [`crate::vmx::Counted`]
//! wraps either and counts every operation.

use rhax_api::fpu::{FxLayout, XsaveArea};

use crate::vmx::VmFail;

/// The guest general-purpose registers that VMX does not keep in the VMCS (RSP, RIP and
/// RFLAGS are VMCS fields). Saved and restored by the entry stub around VMLAUNCH/VMRESUME.
///
/// The order is the x86 register number (and HAXM's `_regs[16]`): rax, rcx, rdx, rbx, rsp, rbp,
/// rsi, rdi, r8..r15. Slot 4 (rsp) is not used by the stub: the guest RSP is `guest_rsp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestRegisters {
    /// Registers by x86 number.
    pub gpr: [u64; 16],
}

/// Register numbers in [`GuestRegisters::gpr`] (x86 encoding).
pub mod reg {
    /// RAX.
    pub const RAX: usize = 0;
    /// RCX.
    pub const RCX: usize = 1;
    /// RDX.
    pub const RDX: usize = 2;
    /// RBX.
    pub const RBX: usize = 3;
    /// RSP (not used: the guest RSP is a VMCS field).
    pub const RSP: usize = 4;
    /// RBP.
    pub const RBP: usize = 5;
    /// RSI.
    pub const RSI: usize = 6;
    /// RDI.
    pub const RDI: usize = 7;
}

/// INVEPT types (SDM §31.3 INVEPT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InveptType {
    /// 1: mappings tagged with one EPTP.
    SingleContext,
    /// 2: all EPTPs.
    Global,
}

/// INVVPID types (SDM §31.3 INVVPID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvvpidType {
    /// 0: one linear address of one VPID.
    IndividualAddress,
    /// 1: every mapping of one VPID.
    SingleContext,
    /// 2: every VPID except 0.
    AllContexts,
    /// 3: one VPID, except global translations.
    SingleContextRetainingGlobals,
}

/// The value SGDT/SIDT store (SDM Vol. 2B SGDT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTablePointer {
    /// Linear base address.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// The host segment selectors (read with MOV from Sreg and STR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    /// CS.
    pub cs: u16,
    /// SS.
    pub ss: u16,
    /// DS.
    pub ds: u16,
    /// ES.
    pub es: u16,
    /// FS.
    pub fs: u16,
    /// GS.
    pub gs: u16,
    /// TR (STR).
    pub tr: u16,
}

/// Every VMX instruction and the privileged reads and writes the core needs.
///
/// All methods are `unsafe`: on real hardware each is a privileged instruction with
/// preconditions the type system cannot see. The common ones, referred to below:
/// - **CPL0**: the caller runs at privilege level 0 (else #GP or #UD).
/// - **VMX root**: VMXON succeeded on this CPU and VMXOFF has not run since.
/// - **current VMCS**: a VMCS was made current by VMPTRLD on this CPU and is still current.
/// - **pinned**: the caller cannot be migrated to another CPU between related calls.
pub trait Vmx {
    /// VMXON with the physical address of a 4-KByte aligned VMXON region holding the VMCS
    /// revision identifier (SDM §31.3 VMXON).
    ///
    /// # Safety
    /// CPL0, pinned; CR4.VMXE=1 and CR0/CR4 satisfy the IA32_VMX_CR0/CR4_FIXED MSRs;
    /// IA32_FEATURE_CONTROL locked with VMX enabled; `region` is a valid, exclusively owned
    /// region that stays allocated until VMXOFF.
    unsafe fn vmxon(&mut self, region: u64) -> Result<(), VmFail>;

    /// VMXOFF (SDM §31.3).
    ///
    /// # Safety
    /// CPL0, VMX root; nothing on this CPU uses VMX after this call.
    unsafe fn vmxoff(&mut self) -> Result<(), VmFail>;

    /// VMCLEAR: writes the VMCS data back to memory and sets its launch state to clear.
    ///
    /// # Safety
    /// CPL0, VMX root; `vmcs` is a VMCS region owned by the caller.
    unsafe fn vmclear(&mut self, vmcs: u64) -> Result<(), VmFail>;

    /// VMPTRLD: makes `vmcs` the current VMCS.
    ///
    /// # Safety
    /// CPL0, VMX root; `vmcs` is a VMCS region (revision identifier written) owned by the caller
    /// and not active on another CPU (VMCLEARed there first).
    unsafe fn vmptrld(&mut self, vmcs: u64) -> Result<(), VmFail>;

    /// VMPTRST: the current-VMCS pointer (`u64::MAX` when there is none).
    ///
    /// # Safety
    /// CPL0, VMX root.
    unsafe fn vmptrst(&mut self) -> Result<u64, VmFail>;

    /// VMREAD of the field with this encoding.
    ///
    /// # Safety
    /// CPL0, VMX root, current VMCS.
    unsafe fn vmread(&mut self, encoding: u32) -> Result<u64, VmFail>;

    /// VMWRITE of the field with this encoding.
    ///
    /// # Safety
    /// CPL0, VMX root, current VMCS; the value must not break the host (e.g. host-state fields
    /// must describe this CPU's real state, bitmap addresses must point to owned pages).
    unsafe fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail>;

    /// VMWRITE of the field at `index` of the component table ([`crate::vmcs::VmcsField::index`]), whose
    /// encoding is `encoding` (the VMCS cache's flush): the same instruction as
    /// [`Vmx::vmwrite`]. It exists so that [`crate::vmx::Counted`] finds the field's counter
    /// by its index instead of decoding a run-time encoding (~12 instructions per flushed
    /// field, on every VM entry).
    ///
    /// # Safety
    /// As [`Vmx::vmwrite`].
    #[inline(always)]
    unsafe fn vmwrite_indexed(
        &mut self,
        index: usize,
        encoding: u32,
        value: u64,
    ) -> Result<(), VmFail> {
        let _ = index;
        // SAFETY: the caller's contract is vmwrite's.
        unsafe { self.vmwrite(encoding, value) }
    }

    /// VM entry: loads the guest GPRs from `regs`, runs VMLAUNCH (`launched == false`) or
    /// VMRESUME (`launched == true`), and on the next VM exit stores the guest GPRs back into
    /// `regs` and returns `Ok`. A failed VMLAUNCH/VMRESUME returns the `VmFail` (the guest did
    /// not run). `host_rsp` caches the value of the HOST_RSP field of the current VMCS; the stub
    /// VMWRITEs HOST_RSP only when the stack pointer differs from it, and then stores the new
    /// value there (so a changed `host_rsp` is how a caller knows the VMWRITE happened).
    ///
    /// # Safety
    /// CPL0, VMX root, current VMCS, pinned, interrupts disabled; the VMCS host-state area
    /// describes this CPU (HOST_RIP is this implementation's exit label) and `host_rsp` is the
    /// value that belongs to the current VMCS (initially 0).
    unsafe fn vmenter(
        &mut self,
        regs: &mut GuestRegisters,
        launched: bool,
        host_rsp: &mut u64,
    ) -> Result<(), VmFail>;

    /// The address the host-state field HOST_RIP must hold for [`Vmx::vmenter`] to work.
    fn host_rip(&self) -> u64;

    /// INVEPT.
    ///
    /// # Safety
    /// CPL0, VMX root; the CPU supports this INVEPT type.
    unsafe fn invept(&mut self, kind: InveptType, eptp: u64) -> Result<(), VmFail>;

    /// INVVPID.
    ///
    /// # Safety
    /// CPL0, VMX root; the CPU supports this INVVPID type.
    unsafe fn invvpid(&mut self, kind: InvvpidType, vpid: u16, address: u64) -> Result<(), VmFail>;

    /// RDMSR.
    ///
    /// # Safety
    /// CPL0; `msr` exists on this CPU (else #GP).
    unsafe fn rdmsr(&mut self, msr: u32) -> u64;

    /// WRMSR.
    ///
    /// # Safety
    /// CPL0; `msr` exists and accepts `value`, and the write does not break the host.
    unsafe fn wrmsr(&mut self, msr: u32, value: u64);

    /// MOV from CR0.
    ///
    /// # Safety
    /// CPL0.
    unsafe fn read_cr0(&mut self) -> u64;

    /// MOV from CR3.
    ///
    /// # Safety
    /// CPL0.
    unsafe fn read_cr3(&mut self) -> u64;

    /// MOV from CR4.
    ///
    /// # Safety
    /// CPL0.
    unsafe fn read_cr4(&mut self) -> u64;

    /// MOV to CR4.
    ///
    /// # Safety
    /// CPL0; the value keeps the host's paging and features intact (only VMXE is meant to
    /// change).
    unsafe fn write_cr4(&mut self, value: u64);

    /// The segment selectors and the task register.
    ///
    /// # Safety
    /// CPL0 (STR is allowed at any CPL unless UMIP; the core needs it at CPL0).
    unsafe fn selectors(&mut self) -> Selectors;

    /// SGDT.
    ///
    /// # Safety
    /// CPL0.
    unsafe fn sgdt(&mut self) -> DescriptorTablePointer;

    /// SIDT.
    ///
    /// # Safety
    /// CPL0.
    unsafe fn sidt(&mut self) -> DescriptorTablePointer;

    /// The base address of the TSS descriptor `tr` in the GDT at `gdt` (a 16-byte system
    /// descriptor in IA-32e mode, SDM Vol. 3A §8.2.3).
    ///
    /// # Safety
    /// CPL0; `gdt` is this CPU's GDT and `tr` selects a TSS descriptor inside its limit.
    unsafe fn tss_base(&mut self, gdt: DescriptorTablePointer, tr: u16) -> u64;

    /// RDTSC.
    fn rdtsc(&mut self) -> u64;

    /// MOV from CR2 (the guest's page-fault address lives in the real CR2 while it runs: VMX
    /// does not switch CR2, SDM Vol. 3C §28.3 lists no CR2 field).
    ///
    /// # Safety
    /// CPL0.
    unsafe fn read_cr2(&mut self) -> u64;

    /// MOV to CR2.
    ///
    /// # Safety
    /// CPL0; interrupts off (a host page fault in between would overwrite it).
    unsafe fn write_cr2(&mut self, value: u64);

    /// MOV from DR0-DR3, the four breakpoint-address registers. VMX switches only DR7 (and
    /// IA32_DEBUGCTL) at entry and exit (SDM Vol. 3C §27.3.2.1, §28.5.1), so a debugger's
    /// hardware breakpoints are loaded by software around the guest.
    ///
    /// # Safety
    /// CPL0 (MOV DR is privileged, SDM Vol. 2B MOV DR).
    unsafe fn read_breakpoint_addresses(&mut self) -> [u64; 4];

    /// MOV to DR0-DR3.
    ///
    /// # Safety
    /// CPL0; every value canonical (in 64-bit mode MOV to DR0-3 of a non-canonical address
    /// is #GP, SDM Vol. 2B MOV DR); interrupts off until the host's values are back, so no
    /// host code runs with another context's breakpoints armed by the host's DR7.
    unsafe fn write_breakpoint_addresses(&mut self, values: &[u64; 4]);

    /// FXSAVE64 of the x87/SSE state into `area` (SDM Vol. 2A FXSAVE; 512 bytes, 16-aligned:
    /// [`FxLayout`] is `align(16)`).
    ///
    /// # Safety
    /// CPL0; CR0.TS=0 (else #NM) and the state saved is the one the caller means to save
    /// (pinned, no preemption between the matching save and restore).
    unsafe fn fxsave(&mut self, area: &mut FxLayout);

    /// FXRSTOR64 of `area` into the x87/SSE registers.
    ///
    /// # Safety
    /// As [`Vmx::fxsave`]; `area` must hold a valid image (reserved MXCSR bits clear, else
    /// #GP): the caller checks `mxcsr` against the MXCSR mask.
    unsafe fn fxrstor(&mut self, area: &FxLayout);

    /// XGETBV with ECX = 0: the current XCR0 (SDM Vol. 2C XGETBV).
    ///
    /// # Safety
    /// CR4.OSXSAVE=1 (else #UD): the caller read CR4 first.
    unsafe fn xgetbv0(&mut self) -> u64;

    /// XSETBV with ECX = 0 (SDM Vol. 2C XSETBV; Vol. 1 §13.3).
    ///
    /// # Safety
    /// CPL0, CR4.OSXSAVE=1, pinned; `xcr0` is a value XSETBV accepts on this CPU (bit 0 set,
    /// AVX only with SSE, the AVX-512 bits all or none, only supported bits: else #GP), e.g.
    /// one the CPU held before or one `vcpu::checked::GuestXcr0` built; the caller restores
    /// the host's value before host code that depends on it runs.
    unsafe fn xsetbv0(&mut self, xcr0: u64);

    /// XSAVE of the components in `mask & XCR0` into `area` (standard format).
    ///
    /// # Safety
    /// CPL0, CR4.OSXSAVE=1, CR0.TS=0, pinned as [`Vmx::fxsave`]; the components `mask`
    /// names fit in [`XsaveArea`] (the area is 64-byte aligned by its type).
    unsafe fn xsave(&mut self, area: &mut XsaveArea, mask: u64);

    /// XRSTOR of the components in `mask & XCR0` from `area` (standard format): components
    /// whose XSTATE_BV bit is clear are put in their initial configuration.
    ///
    /// # Safety
    /// As [`Vmx::xsave`]; `area` must be valid for XRSTOR (SDM Vol. 1 §13.8: XSTATE_BV only
    /// bits of XCR0, XCOMP_BV 0, header bytes 16-63 0, MXCSR within MXCSR_MASK; else #GP):
    /// an image this CPU saved, or one `vcpu::checked::XsaveImage` built.
    unsafe fn xrstor(&mut self, area: &XsaveArea, mask: u64);

    /// Delivers an NMI that arrived while the guest ran (exit reason 0, NMI) to the host's
    /// own handler: INT 2 through the host IDT, as KVM does after such an exit. With "NMI
    /// exiting" the NMI caused the exit instead of reaching the host (SDM Vol. 3C §26.2); the
    /// handler's IRET ends the NMI blocking the exit left.
    ///
    /// # Safety
    /// CPL0, right after the exit, on the CPU that took it, host IDT loaded.
    unsafe fn raise_host_nmi(&mut self);
}
