//! `SoftVmx`: a software model of a VMX CPU for host tests (no VT-x needed).
//!
//! It stores VMCS fields by encoding, rejects what hardware rejects (VM-instruction errors of
//! Intel SDM Vol. 3C §31.4: 4/5 for VMLAUNCH/VMRESUME on the wrong launch state, 12 for an
//! unsupported component, 13 for VMWRITE to a read-only one unless IA32_VMX_MISC bit 29),
//! runs a subset of the VM-entry checks of SDM §27.2 ("Checks on VMX Controls and Host-State
//! Area") and §27.3 ("Checking and Loading Guest State") against the capability MSRs it was
//! built from, and lets the test play the CPU through a [`CpuHook`] on every successful VM
//! entry. Section numbers follow the 2023+ SDM (VM entries are chapter 27; chapter 26 before).
//! Every operation is counted in [`SoftCounts`].
//!
//! What the model does not do: it has no memory of its own (VMCS regions are identified by
//! address only, VMPTRLD trusts the revision identifier; only the virtual-APIC page is read,
//! through [`SoftVmx::set_memory`]), no PDPTE checks, no MSR-load lists, no SMM, no posted
//! interrupts, no APIC-register or x2APIC virtualization beyond the entry checks.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};

use rhax_api::fpu::{FxLayout, XsaveArea};

use crate::vmcs::{Access, VmcsField, Width};
use crate::vmx::caps::{
    EntryControls, ExitControls, PinBasedControls, PrimaryProcControls, SecondaryProcControls,
    VmxCaps, IA32_FEATURE_CONTROL,
};
use crate::vmx::instructions::{
    DescriptorTablePointer, GuestRegisters, InveptType, InvvpidType, Selectors, Vmx,
};
use crate::vmx::{soft_apic, soft_faults, soft_xstate, VmFail, VmInstructionError};
#[path = "soft_apic_access.rs"]
mod apic_access;

/// The IA32_EFER MSR.
pub const IA32_EFER: u32 = 0xc000_0080;

/// The basic exit reason of a VM-entry failure due to invalid guest state (SDM Appendix C).
pub const EXIT_REASON_INVALID_GUEST_STATE: u32 = 33;
/// Bit 31 of the exit-reason field: VM-entry failure (SDM §28.2.1).
pub const EXIT_REASON_ENTRY_FAILURE: u32 = 1 << 31;

/// What the model counted, by operation and by field encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SoftCounts {
    /// VMXON.
    pub vmxon: u64,
    /// VMXOFF.
    pub vmxoff: u64,
    /// VMCLEAR.
    pub vmclear: u64,
    /// VMPTRLD.
    pub vmptrld: u64,
    /// VMPTRST.
    pub vmptrst: u64,
    /// VMREAD (successful or not).
    pub vmread: u64,
    /// VMWRITE (successful or not; including the stub's HOST_RSP writes).
    pub vmwrite: u64,
    /// VMLAUNCH.
    pub vmlaunch: u64,
    /// VMRESUME.
    pub vmresume: u64,
    /// INVEPT.
    pub invept: u64,
    /// INVVPID.
    pub invvpid: u64,
    /// RDMSR.
    pub rdmsr: u64,
    /// WRMSR.
    pub wrmsr: u64,
    /// FXSAVE.
    pub fxsave: u64,
    /// FXRSTOR.
    pub fxrstor: u64,
    /// XSETBV.
    pub xsetbv: u64,
    /// XSAVE.
    pub xsave: u64,
    /// XRSTOR.
    pub xrstor: u64,
    /// NMIs handed to the host's handler after an NMI exit.
    pub host_nmis: u64,
    /// Loads of DR0-DR3 (MOV to DR).
    pub dr_writes: u64,
    /// VMREADs by encoding.
    pub reads_by_field: BTreeMap<u32, u64>,
    /// VMWRITEs by encoding.
    pub writes_by_field: BTreeMap<u32, u64>,
}

/// The host CPU state the model reports to RDMSR-free reads (CRs, selectors, tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftHostCpu {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// Selectors and TR.
    pub selectors: Selectors,
    /// GDTR.
    pub gdt: DescriptorTablePointer,
    /// IDTR.
    pub idt: DescriptorTablePointer,
    /// Base of the TSS that TR selects.
    pub tss_base: u64,
}

impl Default for SoftHostCpu {
    /// A plausible 64-bit kernel: paging, PAE, long mode, CR4.VMXE clear until the core sets it.
    fn default() -> Self {
        SoftHostCpu {
            cr0: 0x8005_0033,
            cr3: 0x0010_0000,
            cr4: 0x0000_06a0,
            selectors: Selectors {
                cs: 0x08,
                ss: 0x10,
                ds: 0,
                es: 0,
                fs: 0,
                gs: 0,
                tr: 0x40,
            },
            gdt: DescriptorTablePointer {
                base: 0xffff_8000_0001_0000,
                limit: 0x7f,
            },
            idt: DescriptorTablePointer {
                base: 0xffff_8000_0002_0000,
                limit: 0xfff,
            },
            tss_base: 0xffff_8000_0003_0000,
        }
    }
}

/// The guest side of a VM entry, handed to the [`CpuHook`]: the hook is the CPU, so it may read
/// and write every field (read-only ones included) and the GPRs.
pub struct GuestCpu<'a> {
    fields: &'a mut BTreeMap<u32, u64>,
    /// The guest GPRs as loaded by the entry (the hook may change them, as the guest would).
    pub regs: &'a mut GuestRegisters,
    /// True for VMRESUME, false for VMLAUNCH.
    pub resumed: bool,
    /// The x87/SSE registers (the guest's while it runs).
    pub fpu: &'a mut FxLayout,
    /// CR2 (the guest's while it runs).
    pub cr2: &'a mut u64,
    /// DR0-DR3 while the guest runs (VMX does not switch them).
    pub drs: [u64; 4],
    /// The extended state registers beyond x87/SSE (YMM upper halves, AVX-512), in the
    /// standard-format layout of `extended` (the guest's while it runs).
    pub xstate: &'a mut XsaveArea,
    /// XCR0 as the guest runs with it.
    pub xcr0: u64,
    /// The vector this entry delivered by virtual-interrupt delivery (SDM Vol. 3C §30.2.2):
    /// the guest is in its handler.
    pub delivered: Option<u8>,
    /// The virtual-APIC page with "use TPR shadow" (and a memory map).
    vapic: Option<soft_apic::VirtualApicPage>,
    /// The MSR bitmap page (with a memory map).
    msr_bitmap: Option<core::ptr::NonNull<u8>>,
}

impl GuestCpu<'_> {
    /// The field's current value (0 if never written).
    pub fn read(&self, field: VmcsField) -> u64 {
        self.fields.get(&field.encoding()).copied().unwrap_or(0)
    }

    /// Sets a field as the CPU would (no access check).
    pub fn write(&mut self, field: VmcsField, value: u64) {
        self.fields
            .insert(field.encoding(), value & field.width().mask());
    }

    /// The guest writes its EOI (xAPIC offset 0xB0 or x2APIC MSR 0x80B) with
    /// "virtual-interrupt delivery" on: EOI virtualization (SDM Vol. 3C §30.1.4). `Some(v)`:
    /// an EOI-induced VM exit for vector `v` is recorded (the hook must then return);
    /// `None`: no exit, and [`GuestCpu::delivered`] holds the vector delivered after it, if
    /// any. Panics without virtual-interrupt delivery: the write would not be virtualized,
    /// and the test should have scripted an exit instead.
    pub fn virtual_eoi(&mut self) -> Option<u8> {
        let page = self
            .vapic
            .as_mut()
            .expect("EOI virtualization without virtual-interrupt delivery");
        match soft_apic::eoi(self.fields, page) {
            Ok(v) => Some(v),
            Err(delivered) => {
                self.delivered = delivered;
                None
            }
        }
    }

    /// The guest executes MOV to CR8 with "use TPR shadow" on (SDM Vol. 3C §30.3, §30.1.2):
    /// VTPR takes bits 3:0 of `value` in its bits 7:4 (bits 31:8 and 3:0 cleared), then TPR
    /// virtualization: without "virtual-interrupt delivery" a VTPR[7:4] below the TPR
    /// threshold's bits 3:0 is a trap-like TPR-below-threshold VM exit (reason 43, recorded:
    /// the hook must then return, `true`); with it, the PPR is virtualized and a pending
    /// virtual interrupt delivered ([`GuestCpu::delivered`]). Panics without the TPR shadow
    /// (the write would have exited) or with `value` above 15 (#GP, no write).
    pub fn mov_to_cr8(&mut self, value: u64) -> bool {
        assert!(value <= 0xf, "MOV to CR8 with bits 63:4 set is #GP");
        let vid = self.read(VmcsField::SecondaryProcessorBasedVmExecutionControls)
            & u64::from(SecondaryProcControls::VIRTUAL_INTERRUPT_DELIVERY.bits())
            != 0;
        let threshold = self.read(VmcsField::TprThreshold) & 0xf;
        let page = self
            .vapic
            .as_mut()
            .expect("MOV to CR8 without the TPR shadow exits");
        match soft_apic::write_vtpr(self.fields, page, (value as u32) << 4, vid, threshold) {
            soft_apic::TprVirtualized::Delivered(delivered) => {
                self.delivered = delivered;
                false
            }
            soft_apic::TprVirtualized::BelowThreshold => {
                self.exit(43, 0, 0);
                true
            }
        }
    }

    /// MOV from CR8 with "use TPR shadow" on (SDM Vol. 3C §30.3): VTPR[7:4].
    pub fn mov_from_cr8(&mut self) -> u64 {
        let page = self
            .vapic
            .as_mut()
            .expect("MOV from CR8 without the TPR shadow exits");
        u64::from(soft_apic::read_vtpr(page) >> 4)
    }

    /// Whether the guest's RDMSR/WRMSR of `msr` exits (SDM Vol. 3C §26.1.3): always without
    /// "use MSR bitmaps", otherwise as its bit in the bitmap says (MSRs outside both of the
    /// bitmap's ranges always exit). Panics with bitmaps on but no memory map to read them.
    fn msr_exits(&self, msr: u32, write: bool) -> bool {
        if self.read(VmcsField::PrimaryProcessorBasedVmExecutionControls)
            & u64::from(PrimaryProcControls::USE_MSR_BITMAPS.bits())
            == 0
        {
            return true;
        }
        let page = self
            .msr_bitmap
            .expect("MSR bitmaps on: the test needs SoftVmx::set_memory");
        // SAFETY: the test's memory map hands out live 4 KiB pages; the vCPU does not touch
        // its MSR bitmap while the guest runs.
        let bytes = unsafe { core::slice::from_raw_parts(page.as_ptr(), 4096) };
        crate::vmcs::setup::msr_exits(bytes, msr, write)
    }

    /// Whether the guest's WRMSR of `msr` exits (the MSR bitmap, SDM Vol. 3C §26.1.3): a
    /// test asks before scripting the exit (or the write the CPU would do without one).
    pub fn wrmsr_exits(&self, msr: u32) -> bool {
        self.msr_exits(msr, true)
    }

    /// The guest executes WRMSR of `msr` (`value` as EDX:EAX), an x2APIC MSR
    /// (800H-8FFH). Returns `true` when it exits (reason 32 recorded: the hook must return)
    /// and `false` when the CPU virtualized it (SDM Vol. 3C §30.5, "virtualize x2APIC mode":
    /// TPR always; EOI and SELF IPI with "virtual-interrupt delivery"; see
    /// [`GuestCpu::delivered`] for a vector delivered after it). Panics where hardware would
    /// write the host's own x2APIC (the bitmap let the write through without
    /// virtualization: the bug this model exists to catch) or raise #GP in the guest.
    pub fn x2apic_wrmsr(&mut self, msr: u32, value: u64) -> bool {
        assert!(
            (0x800..=0x8ff).contains(&msr),
            "not an x2APIC MSR: {msr:#x}"
        );
        if self.msr_exits(msr, true) {
            self.regs.gpr[crate::vmx::instructions::reg::RCX] = u64::from(msr);
            self.regs.gpr[crate::vmx::instructions::reg::RAX] = value & 0xffff_ffff;
            self.regs.gpr[crate::vmx::instructions::reg::RDX] = value >> 32;
            self.exit(32, 0, 2);
            return true;
        }
        let proc2 = self.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
        let x2virt = proc2 & u64::from(SecondaryProcControls::VIRTUALIZE_X2APIC_MODE.bits()) != 0;
        let vid = proc2 & u64::from(SecondaryProcControls::VIRTUAL_INTERRUPT_DELIVERY.bits()) != 0;
        let virtualized = x2virt && (msr == 0x808 || (vid && (msr == 0x80b || msr == 0x83f)));
        assert!(
            virtualized,
            "WRMSR {msr:#x} reached the host's x2APIC: the MSR bitmap must intercept it"
        );
        // §30.5: a TPR or SELF IPI value with bits 63:8 set, an EOI value other than 0: #GP
        // (checked before the virtualization).
        let reserved = if msr == 0x80b { value } else { value >> 8 };
        assert!(
            reserved == 0,
            "WRMSR {msr:#x}, {value:#x}: #GP in the guest"
        );
        let threshold = self.read(VmcsField::TprThreshold) & 0xf;
        let page = self
            .vapic
            .as_mut()
            .expect("x2APIC virtualization needs the TPR shadow");
        match msr {
            0x808 => match soft_apic::write_vtpr(self.fields, page, value as u32, vid, threshold) {
                soft_apic::TprVirtualized::Delivered(delivered) => {
                    self.delivered = delivered;
                    false
                }
                soft_apic::TprVirtualized::BelowThreshold => {
                    self.exit(43, 0, 0);
                    true
                }
            },
            0x80b => match soft_apic::eoi(self.fields, page) {
                Ok(_) => true,
                Err(delivered) => {
                    self.delivered = delivered;
                    false
                }
            },
            _ => {
                self.delivered = soft_apic::self_ipi(self.fields, page, value as u8);
                false
            }
        }
    }

    /// The guest executes RDMSR of the x2APIC MSR `msr`: `None` when it exits (reason 31
    /// recorded), else the value the CPU virtualized (SDM Vol. 3C §30.5: the TPR, VTPR;
    /// every register with "APIC-register virtualization", from the virtual-APIC page).
    /// Panics where hardware would read the host's own x2APIC.
    pub fn x2apic_rdmsr(&mut self, msr: u32) -> Option<u64> {
        assert!(
            (0x800..=0x8ff).contains(&msr),
            "not an x2APIC MSR: {msr:#x}"
        );
        if self.msr_exits(msr, false) {
            self.regs.gpr[crate::vmx::instructions::reg::RCX] = u64::from(msr);
            self.exit(31, 0, 2);
            return None;
        }
        let proc2 = self.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
        let x2virt = proc2 & u64::from(SecondaryProcControls::VIRTUALIZE_X2APIC_MODE.bits()) != 0;
        let arv =
            proc2 & u64::from(SecondaryProcControls::APIC_REGISTER_VIRTUALIZATION.bits()) != 0;
        assert!(
            x2virt && (arv || msr == 0x808),
            "RDMSR {msr:#x} reached the host's x2APIC: the MSR bitmap must intercept it"
        );
        let page = self
            .vapic
            .as_mut()
            .expect("x2APIC virtualization needs the TPR shadow");
        Some(soft_apic::read_register(page, msr))
    }

    /// The guest writes ICR low (xAPIC offset 0x300) a value that is not a self-IPI, with
    /// "virtual-interrupt delivery" on: the write is virtualized into the virtual-APIC page
    /// and an APIC-write VM exit (reason 56, trap-like, qualification = the offset) recorded
    /// (SDM Vol. 3C §30.4.3.3); the hook must then return. Panics without virtual-interrupt
    /// delivery, as [`GuestCpu::virtual_eoi`] does.
    pub fn virtual_icr_write(&mut self, value: u32) {
        let page = self
            .vapic
            .as_mut()
            .expect("ICR virtualization without virtual-interrupt delivery");
        soft_apic::write_icr_low(page, value);
        self.exit(56, 0x300, 0);
    }

    /// Records an instruction-caused VM exit: basic reason, qualification, instruction length
    /// (SDM §28.2.1, §28.2.5).
    pub fn exit(&mut self, reason: u32, qualification: u64, instruction_length: u32) {
        self.write(VmcsField::ExitReason, u64::from(reason));
        self.write(VmcsField::ExitQualification, qualification);
        self.write(
            VmcsField::VmExitInstructionLength,
            u64::from(instruction_length),
        );
    }
}

/// The test's stand-in for the CPU between VM entry and VM exit.
pub trait CpuHook {
    /// Called on every successful VM entry; must record the VM exit (at least the exit reason).
    fn run_guest(&mut self, cpu: &mut GuestCpu<'_>);
}

impl<F: FnMut(&mut GuestCpu<'_>)> CpuHook for F {
    fn run_guest(&mut self, cpu: &mut GuestCpu<'_>) {
        self(cpu)
    }
}

/// How the model CPU finds a physical page it accesses itself ([`SoftVmx::set_memory`]).
type PageLookup = dyn Fn(u64) -> Option<core::ptr::NonNull<u8>>;

#[derive(Default)]
struct SoftVmcs {
    fields: BTreeMap<u32, u64>,
    launched: bool,
}

/// The software VMX CPU.
pub struct SoftVmx {
    /// MSR values (capability MSRs included); RDMSR of a missing MSR returns 0.
    pub msrs: BTreeMap<u32, u64>,
    /// Host CPU state.
    pub host: SoftHostCpu,
    /// Encodings this model CPU does not support (VMREAD/VMWRITE fail with error 12), in
    /// addition to those outside the component table.
    pub unsupported: BTreeSet<u32>,
    /// Operation counts.
    pub counts: SoftCounts,
    /// Stack pointer the model pretends the entry stub runs at (HOST_RSP caching).
    pub stack_pointer: u64,
    /// The x87/SSE registers of the model CPU (what FXSAVE stores, FXRSTOR loads).
    pub fpu: Box<FxLayout>,
    /// CR2 of the model CPU.
    pub cr2: u64,
    /// DR0-DR3 of the model CPU (what a guest's hardware breakpoints compare against).
    pub drs: [u64; 4],
    /// XCR0 of the model CPU (x87|SSE|AVX at power-on of the model, as an AVX host OS sets it).
    pub xcr0: u64,
    /// The XCR0 bits the model CPU supports (CPUID.(EAX=0xD,ECX=0) EDX:EAX).
    pub xcr0_supported: u64,
    /// The model's extended state registers (only `extended` is used; x87/SSE are `fpu`).
    pub xstate: Box<XsaveArea>,
    /// The MSRs this model CPU was built with (besides the architectural ones of
    /// `soft_faults`): WRMSR of any other MSR is a modelled host #GP.
    known_msrs: BTreeSet<u32>,
    caps: VmxCaps,
    vmxon_region: Option<u64>,
    regions: BTreeMap<u64, SoftVmcs>,
    current: Option<u64>,
    hook: Option<Box<dyn CpuHook>>,
    tsc: u64,
    /// Physical memory the model CPU itself accesses (the virtual-APIC page).
    memory: Option<Box<PageLookup>>,
}

impl SoftVmx {
    /// A model CPU with these MSR values (e.g. one Bochs CPU model of
    /// `tests/data/bochs-vmx-msrs.tsv`). IA32_FEATURE_CONTROL defaults to locked with VMX
    /// outside SMX enabled, IA32_EFER to LME|LMA|SCE|NXE, if absent.
    pub fn new(msrs: impl IntoIterator<Item = (u32, u64)>) -> Self {
        let mut msrs: BTreeMap<u32, u64> = msrs.into_iter().collect();
        msrs.entry(IA32_FEATURE_CONTROL).or_insert(0x5);
        msrs.entry(IA32_EFER).or_insert(0xd01);
        let caps = VmxCaps::read(|m| msrs.get(&m).copied().unwrap_or(0));
        SoftVmx {
            known_msrs: msrs.keys().copied().collect(),
            msrs,
            host: SoftHostCpu::default(),
            unsupported: BTreeSet::new(),
            counts: SoftCounts::default(),
            stack_pointer: 0xffff_8000_1000_0f00,
            fpu: Box::default(),
            cr2: 0,
            drs: [0; 4],
            xcr0: 0x7,
            xcr0_supported: 0xe7,
            xstate: Box::default(),
            caps,
            vmxon_region: None,
            regions: BTreeMap::new(),
            current: None,
            hook: None,
            tsc: 0,
            memory: None,
        }
    }

    /// The capabilities decoded from the model's MSRs.
    pub fn caps(&self) -> &VmxCaps {
        &self.caps
    }

    /// Gives the model CPU the physical memory it accesses itself (the virtual-APIC page of
    /// virtual-interrupt delivery): `page(phys)` is the 4-KByte page at `phys` while it is
    /// allocated (e.g. [`crate::platform::PhysMap::page`]).
    pub fn set_memory(&mut self, page: impl Fn(u64) -> Option<core::ptr::NonNull<u8>> + 'static) {
        self.memory = Some(Box::new(page));
    }

    /// Installs the CPU hook run on every successful VM entry.
    pub fn set_hook(&mut self, hook: impl CpuHook + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// The value of a field of the current VMCS, bypassing VMREAD (and its counters).
    pub fn peek(&self, field: VmcsField) -> Option<u64> {
        let vmcs = self.regions.get(&self.current?)?;
        vmcs.fields.get(&field.encoding()).copied()
    }

    /// Sets a field of the current VMCS without VMWRITE (to break state on purpose in tests).
    pub fn poke(&mut self, field: VmcsField, value: u64) {
        if let Some(vmcs) = self.current.and_then(|c| self.regions.get_mut(&c)) {
            vmcs.fields
                .insert(field.encoding(), value & field.width().mask());
        }
    }

    /// Advances the model's time stamp counter.
    pub fn advance_tsc(&mut self, cycles: u64) {
        self.tsc = self.tsc.wrapping_add(cycles);
    }

    fn in_root(&self) -> Result<(), VmFail> {
        // Outside VMX operation these instructions raise #UD; the model answers VMfailInvalid.
        if self.vmxon_region.is_some() {
            Ok(())
        } else {
            Err(VmFail::Invalid)
        }
    }

    fn current_vmcs(&mut self) -> Result<&mut SoftVmcs, VmFail> {
        self.in_root()?;
        let current = self.current.ok_or(VmFail::Invalid)?;
        Ok(self.regions.entry(current).or_default())
    }

    /// VMfailValid: stores the number in the VM-instruction error field (SDM §31.2).
    fn fail_valid(&mut self, error: VmInstructionError) -> VmFail {
        if let Ok(vmcs) = self.current_vmcs() {
            vmcs.fields.insert(
                VmcsField::VmInstructionError.encoding(),
                u64::from(error.number()),
            );
            VmFail::Valid(error)
        } else {
            VmFail::Invalid
        }
    }

    /// The field an encoding names, if this model CPU supports it (the high half of a 64-bit
    /// field counts as supported when the field is).
    fn component(&self, encoding: u32) -> Option<(VmcsField, bool)> {
        if self.unsupported.contains(&(encoding & !1)) {
            return None;
        }
        if let Some(f) = VmcsField::from_encoding(encoding) {
            return Some((f, false));
        }
        match VmcsField::from_encoding(encoding & !1) {
            Some(f) if f.width() == Width::W64 => Some((f, true)),
            _ => None,
        }
    }

    fn field(&self, f: VmcsField) -> u64 {
        self.current
            .and_then(|c| self.regions.get(&c))
            .and_then(|v| v.fields.get(&f.encoding()).copied())
            .unwrap_or(0)
    }
}

fn valid_address(address: u64) -> bool {
    // SDM §31.3 VMCLEAR/VMPTRLD/VMXON: 4-KByte aligned, within the physical-address width
    // (the model assumes 46 bits).
    address & 0xfff == 0 && address >> 46 == 0
}

impl Vmx for SoftVmx {
    unsafe fn vmxon(&mut self, region: u64) -> Result<(), VmFail> {
        self.counts.vmxon += 1;
        if self.vmxon_region.is_some() {
            return Err(self.fail_valid(VmInstructionError::VmxonInVmxRoot));
        }
        // Hardware raises #UD without CR4.VMXE and #GP with unlocked/disabled feature control
        // or CR0/CR4 outside the fixed bits (SDM §31.3 VMXON); the model reports VMfailInvalid.
        let fc = self.msrs.get(&IA32_FEATURE_CONTROL).copied().unwrap_or(0);
        if self.host.cr4 & (1 << 13) == 0
            || fc & 0x5 != 0x5
            || !self.caps.cr0_fixed.accepts(self.host.cr0)
            || !self.caps.cr4_fixed.accepts(self.host.cr4)
            || !valid_address(region)
        {
            return Err(VmFail::Invalid);
        }
        self.vmxon_region = Some(region);
        self.current = None;
        Ok(())
    }

    unsafe fn vmxoff(&mut self) -> Result<(), VmFail> {
        self.counts.vmxoff += 1;
        self.in_root()?;
        self.vmxon_region = None;
        self.current = None;
        Ok(())
    }

    unsafe fn vmclear(&mut self, vmcs: u64) -> Result<(), VmFail> {
        self.counts.vmclear += 1;
        self.in_root()?;
        if !valid_address(vmcs) {
            return Err(self.fail_valid(VmInstructionError::VmclearInvalidAddress));
        }
        if Some(vmcs) == self.vmxon_region {
            return Err(self.fail_valid(VmInstructionError::VmclearVmxonPointer));
        }
        // SDM §31.3 VMCLEAR: launch state becomes clear; if it was current, there is no
        // current VMCS any more.
        self.regions.entry(vmcs).or_default().launched = false;
        if self.current == Some(vmcs) {
            self.current = None;
        }
        Ok(())
    }

    unsafe fn vmptrld(&mut self, vmcs: u64) -> Result<(), VmFail> {
        self.counts.vmptrld += 1;
        self.in_root()?;
        if !valid_address(vmcs) {
            return Err(self.fail_valid(VmInstructionError::VmptrldInvalidAddress));
        }
        if Some(vmcs) == self.vmxon_region {
            return Err(self.fail_valid(VmInstructionError::VmptrldVmxonPointer));
        }
        self.regions.entry(vmcs).or_default();
        self.current = Some(vmcs);
        Ok(())
    }

    unsafe fn vmptrst(&mut self) -> Result<u64, VmFail> {
        self.counts.vmptrst += 1;
        self.in_root()?;
        Ok(self.current.unwrap_or(u64::MAX))
    }

    unsafe fn vmread(&mut self, encoding: u32) -> Result<u64, VmFail> {
        self.counts.vmread += 1;
        *self.counts.reads_by_field.entry(encoding).or_default() += 1;
        self.current_vmcs()?;
        let Some((f, high)) = self.component(encoding) else {
            return Err(self.fail_valid(VmInstructionError::UnsupportedVmcsComponent));
        };
        let value = self.field(f);
        Ok(if high { value >> 32 } else { value })
    }

    unsafe fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        self.counts.vmwrite += 1;
        *self.counts.writes_by_field.entry(encoding).or_default() += 1;
        self.current_vmcs()?;
        let Some((f, high)) = self.component(encoding) else {
            return Err(self.fail_valid(VmInstructionError::UnsupportedVmcsComponent));
        };
        if f.access() == Access::Ro && !self.caps.misc.vmwrite_exit_info {
            return Err(self.fail_valid(VmInstructionError::VmwriteReadOnlyComponent));
        }
        let old = self.field(f);
        let new = if high {
            (old & 0xffff_ffff) | (value << 32)
        } else {
            value & f.width().mask()
        };
        self.current_vmcs()?.fields.insert(f.encoding(), new);
        Ok(())
    }

    unsafe fn vmenter(
        &mut self,
        regs: &mut GuestRegisters,
        launched: bool,
        host_rsp: &mut u64,
    ) -> Result<(), VmFail> {
        self.current_vmcs()?;
        // The stub's HOST_RSP write, as the real stub does it: only when the stack moved.
        if *host_rsp != self.stack_pointer {
            // SAFETY: the model has no preconditions.
            unsafe { self.vmwrite(VmcsField::HostRsp.encoding(), self.stack_pointer) }?;
            *host_rsp = self.stack_pointer;
        }
        if launched {
            self.counts.vmresume += 1;
        } else {
            self.counts.vmlaunch += 1;
        }
        let was_launched = self.current_vmcs()?.launched;
        // SDM §31.3 VMLAUNCH/VMRESUME: launch state checked before the VM-entry checks.
        if !launched && was_launched {
            return Err(self.fail_valid(VmInstructionError::VmlaunchNonClearVmcs));
        }
        if launched && !was_launched {
            return Err(self.fail_valid(VmInstructionError::VmresumeNonLaunchedVmcs));
        }
        if let Err(e) = checks::controls(self) {
            return Err(self.fail_valid(e));
        }
        if let Err(e) = checks::host(self) {
            return Err(self.fail_valid(e));
        }
        // SDM §28.2.5: every VM exit clears the valid bit of the entry interruption info.
        let clear_entry_intr = |v: &mut SoftVmcs| {
            let e = VmcsField::VmEntryInterruptionInformation.encoding();
            if let Some(x) = v.fields.get_mut(&e) {
                *x &= !(1 << 31);
            }
        };
        match checks::guest(self) {
            Err(qualification) => {
                // SDM §27.8: a failure during guest-state checks is a VM exit with bit 31 of
                // the exit reason set; the launch state is unchanged; nothing else is saved.
                let vmcs = self.current_vmcs()?;
                let reason = EXIT_REASON_ENTRY_FAILURE | EXIT_REASON_INVALID_GUEST_STATE;
                vmcs.fields
                    .insert(VmcsField::ExitReason.encoding(), u64::from(reason));
                vmcs.fields
                    .insert(VmcsField::ExitQualification.encoding(), qualification);
                clear_entry_intr(vmcs);
                Ok(())
            }
            Ok(()) => {
                // SDM Vol. 3C §27.3.2.5: with "virtual-interrupt delivery", the entry
                // virtualizes the PPR and delivers a pending virtual interrupt.
                let vid = checks::proc2(self)
                    & SecondaryProcControls::VIRTUAL_INTERRUPT_DELIVERY.bits()
                    != 0;
                let mut vmcs = core::mem::take(self.current_vmcs()?);
                vmcs.launched = true;
                vmcs.fields.remove(&VmcsField::ExitReason.encoding());
                let tpr_shadow = vmcs
                    .fields
                    .get(&VmcsField::PrimaryProcessorBasedVmExecutionControls.encoding())
                    .copied()
                    .unwrap_or(0)
                    & u64::from(PrimaryProcControls::USE_TPR_SHADOW.bits())
                    != 0;
                let mut vapic = None;
                if tpr_shadow {
                    let phys = vmcs
                        .fields
                        .get(&VmcsField::VirtualApicAddress.encoding())
                        .copied()
                        .unwrap_or(0);
                    if let Some(p) = self.memory.as_ref().and_then(|m| m(phys)) {
                        // SAFETY: the test's memory map hands out live pages; the vCPU does
                        // not touch its virtual-APIC page while the guest runs.
                        vapic = Some(unsafe { soft_apic::VirtualApicPage::new(p) });
                    }
                }
                let delivered = vapic
                    .as_mut()
                    .filter(|_| vid)
                    .and_then(|page| soft_apic::entry(&mut vmcs.fields, page));
                let msr_bitmap = self.memory.as_ref().and_then(|m| {
                    m(vmcs
                        .fields
                        .get(&VmcsField::MsrBitmapAddress.encoding())
                        .copied()
                        .unwrap_or(0))
                });
                if let Some(hook) = self.hook.as_mut() {
                    let mut cpu = GuestCpu {
                        delivered,
                        vapic,
                        msr_bitmap,
                        fields: &mut vmcs.fields,
                        regs,
                        resumed: launched,
                        fpu: &mut self.fpu,
                        cr2: &mut self.cr2,
                        drs: self.drs,
                        xstate: &mut self.xstate,
                        xcr0: self.xcr0,
                    };
                    hook.run_guest(&mut cpu);
                }
                clear_entry_intr(&mut vmcs);
                *self.current_vmcs()? = vmcs;
                self.tsc = self.tsc.wrapping_add(1000);
                Ok(())
            }
        }
    }

    fn host_rip(&self) -> u64 {
        0xffff_8000_dead_0000
    }

    unsafe fn invept(&mut self, _kind: InveptType, _eptp: u64) -> Result<(), VmFail> {
        self.counts.invept += 1;
        self.in_root()
    }

    unsafe fn invvpid(&mut self, _k: InvvpidType, vpid: u16, _a: u64) -> Result<(), VmFail> {
        self.counts.invvpid += 1;
        self.in_root()?;
        if vpid == 0 && _k != InvvpidType::AllContexts {
            return Err(self.fail_valid(VmInstructionError::InvalidInveptInvvpidOperand));
        }
        Ok(())
    }

    unsafe fn rdmsr(&mut self, msr: u32) -> u64 {
        self.counts.rdmsr += 1;
        self.msrs.get(&msr).copied().unwrap_or(0)
    }

    unsafe fn wrmsr(&mut self, msr: u32, value: u64) {
        self.counts.wrmsr += 1;
        let fc = self.msrs.get(&IA32_FEATURE_CONTROL).copied().unwrap_or(0);
        if let Some(why) = soft_faults::wrmsr(msr, value, self.known_msrs.contains(&msr), fc) {
            host_gp(&why);
        }
        self.msrs.insert(msr, value);
    }

    unsafe fn read_cr0(&mut self) -> u64 {
        self.host.cr0
    }

    unsafe fn read_cr3(&mut self) -> u64 {
        self.host.cr3
    }

    unsafe fn read_cr4(&mut self) -> u64 {
        self.host.cr4
    }

    unsafe fn write_cr4(&mut self, value: u64) {
        let long_mode = self
            .msrs
            .get(&IA32_EFER)
            .is_some_and(|e| e & (1 << 10) != 0);
        let fixed = self.vmxon_region.map(|_| {
            let m = |msr| self.msrs.get(&msr).copied().unwrap_or(0);
            (m(0x488), m(0x489))
        });
        if let Some(why) = soft_faults::write_cr4(value, long_mode, fixed) {
            host_gp(&why);
        }
        self.host.cr4 = value;
    }

    unsafe fn selectors(&mut self) -> Selectors {
        self.host.selectors
    }

    unsafe fn sgdt(&mut self) -> DescriptorTablePointer {
        self.host.gdt
    }

    unsafe fn sidt(&mut self) -> DescriptorTablePointer {
        self.host.idt
    }

    unsafe fn tss_base(&mut self, _gdt: DescriptorTablePointer, _tr: u16) -> u64 {
        self.host.tss_base
    }

    fn rdtsc(&mut self) -> u64 {
        self.tsc = self.tsc.wrapping_add(1);
        self.tsc
    }

    unsafe fn read_cr2(&mut self) -> u64 {
        self.cr2
    }

    unsafe fn write_cr2(&mut self, value: u64) {
        self.cr2 = value;
    }

    unsafe fn read_breakpoint_addresses(&mut self) -> [u64; 4] {
        self.drs
    }

    unsafe fn write_breakpoint_addresses(&mut self, values: &[u64; 4]) {
        self.counts.dr_writes += 1;
        if let Some(why) = soft_faults::write_breakpoint_addresses(values) {
            host_gp(&why);
        }
        self.drs = *values;
    }

    unsafe fn fxsave(&mut self, area: &mut FxLayout) {
        self.counts.fxsave += 1;
        *area = *self.fpu;
    }

    unsafe fn fxrstor(&mut self, area: &FxLayout) {
        self.counts.fxrstor += 1;
        if let Some(why) = soft_faults::fxrstor(area) {
            host_gp(&why);
        }
        *self.fpu = *area;
    }

    unsafe fn xgetbv0(&mut self) -> u64 {
        if self.host.cr4 & (1 << 18) == 0 {
            host_gp("XGETBV with CR4.OSXSAVE=0 (#UD)");
        }
        self.xcr0
    }

    unsafe fn xsetbv0(&mut self, xcr0: u64) {
        self.counts.xsetbv += 1;
        if self.host.cr4 & (1 << 18) == 0 {
            host_gp("XSETBV with CR4.OSXSAVE=0 (#UD)");
        }
        if let Some(why) = soft_faults::xsetbv(xcr0, self.xcr0_supported) {
            host_gp(&why);
        }
        self.xcr0 = xcr0;
    }

    unsafe fn xsave(&mut self, area: &mut XsaveArea, mask: u64) {
        self.counts.xsave += 1;
        if self.host.cr4 & (1 << 18) == 0 {
            host_gp("XSAVE with CR4.OSXSAVE=0 (#UD)");
        }
        if let Some(why) = soft_faults::xsave_alignment(area) {
            host_gp(&why);
        }
        soft_xstate::xsave(&self.fpu, &self.xstate, area, mask & self.xcr0);
    }

    unsafe fn xrstor(&mut self, area: &XsaveArea, mask: u64) {
        self.counts.xrstor += 1;
        if self.host.cr4 & (1 << 18) == 0 {
            host_gp("XRSTOR with CR4.OSXSAVE=0 (#UD)");
        }
        let rfbm = mask & self.xcr0;
        if let Some(why) = soft_faults::xrstor(area, self.xcr0, rfbm) {
            host_gp(&why);
        }
        soft_xstate::xrstor(&mut self.fpu, &mut self.xstate, area, rfbm);
    }

    unsafe fn raise_host_nmi(&mut self) {
        self.counts.host_nmis += 1;
    }
}

/// A host instruction the model CPU refuses with #GP: on hardware a bugcheck (the kernel
/// executes it at CPL 0 with no handler), so in the model a panic that fails the host test
/// (see `soft_faults`).
#[track_caller]
fn host_gp(why: &str) -> ! {
    panic!("modelled host #GP: {why}")
}

/// The VM-entry checks the model implements (SDM §27.2, §27.3.1).
mod checks {
    use super::*;

    fn canonical(a: u64) -> bool {
        // 48-bit linear addresses: bits 63:47 all equal.
        let top = a >> 47;
        top == 0 || top == 0x1_ffff
    }

    /// Physical-address width the model assumes (CPUID.80000008H:EAX[7:0]).
    const PHYS_BITS: u32 = 46;

    fn phys_ok(a: u64) -> bool {
        a >> PHYS_BITS == 0
    }

    pub(super) fn proc2(s: &SoftVmx) -> u32 {
        let proc = s.field(VmcsField::PrimaryProcessorBasedVmExecutionControls) as u32;
        if proc & PrimaryProcControls::ACTIVATE_SECONDARY_CONTROLS.bits() != 0 {
            s.field(VmcsField::SecondaryProcessorBasedVmExecutionControls) as u32
        } else {
            0
        }
    }

    /// SDM §27.2.1: checks on VM-execution, VM-exit and VM-entry control fields.
    pub(super) fn controls(s: &SoftVmx) -> Result<(), VmInstructionError> {
        const BAD: VmInstructionError = VmInstructionError::EntryInvalidControlFields;
        let c = &s.caps;
        let pin = s.field(VmcsField::PinBasedVmExecutionControls) as u32;
        let proc = s.field(VmcsField::PrimaryProcessorBasedVmExecutionControls) as u32;
        let exit = s.field(VmcsField::PrimaryVmExitControls) as u32;
        let entry = s.field(VmcsField::VmEntryControls) as u32;
        // §27.2.1.1: reserved bits per the allowed 0/1-settings of the capability MSRs.
        if !c.pin.accepts(pin) || !c.proc.accepts(proc) {
            return Err(BAD);
        }
        let p2 = proc2(s);
        if proc & PrimaryProcControls::ACTIVATE_SECONDARY_CONTROLS.bits() != 0
            && !c.proc2.accepts(p2)
        {
            return Err(BAD);
        }
        if s.field(VmcsField::Cr3TargetCount) > u64::from(c.misc.cr3_target_count) {
            return Err(BAD);
        }
        let aligned = |f: VmcsField| {
            let a = s.field(f);
            a & 0xfff == 0 && phys_ok(a)
        };
        if proc & PrimaryProcControls::USE_IO_BITMAPS.bits() != 0
            && !(aligned(VmcsField::IoBitmapAAddress) && aligned(VmcsField::IoBitmapBAddress))
        {
            return Err(BAD);
        }
        if proc & PrimaryProcControls::USE_MSR_BITMAPS.bits() != 0
            && !aligned(VmcsField::MsrBitmapAddress)
        {
            return Err(BAD);
        }
        if proc & PrimaryProcControls::USE_TPR_SHADOW.bits() != 0
            && !aligned(VmcsField::VirtualApicAddress)
        {
            return Err(BAD);
        }
        // §27.2.1.1, the APIC-virtualization rules. Without "use TPR shadow", none of
        // "virtualize x2APIC mode", "APIC-register virtualization" and "virtual-interrupt
        // delivery"; with it and without virtual-interrupt delivery, TPR threshold bits 31:4
        // are 0 (the VTPR comparison needs the page: not modelled).
        let tpr_shadow = proc & PrimaryProcControls::USE_TPR_SHADOW.bits() != 0;
        let needs_shadow = SecondaryProcControls::VIRTUALIZE_X2APIC_MODE.bits()
            | SecondaryProcControls::APIC_REGISTER_VIRTUALIZATION.bits()
            | SecondaryProcControls::VIRTUAL_INTERRUPT_DELIVERY.bits();
        let vid = p2 & SecondaryProcControls::VIRTUAL_INTERRUPT_DELIVERY.bits() != 0;
        if !tpr_shadow && p2 & needs_shadow != 0 {
            return Err(BAD);
        }
        if tpr_shadow && !vid && s.field(VmcsField::TprThreshold) & !0xf != 0 {
            return Err(BAD);
        }
        // "virtualize x2APIC mode" excludes "virtualize APIC accesses".
        if p2 & SecondaryProcControls::VIRTUALIZE_X2APIC_MODE.bits() != 0
            && p2 & SecondaryProcControls::VIRTUALIZE_APIC_ACCESSES.bits() != 0
        {
            return Err(BAD);
        }
        if p2 & SecondaryProcControls::VIRTUALIZE_APIC_ACCESSES.bits() != 0
            && !aligned(VmcsField::ApicAccessAddress)
        {
            return Err(BAD);
        }
        // Virtual-interrupt delivery needs "external-interrupt exiting": the host's
        // interrupts must not reach the guest's virtual APIC.
        if vid && pin & PinBasedControls::EXTERNAL_INTERRUPT_EXITING.bits() == 0 {
            return Err(BAD);
        }
        // Posted interrupts: virtual-interrupt delivery, "acknowledge interrupt on exit",
        // a notification vector in 7:0 and a 64-byte aligned descriptor.
        if pin & PinBasedControls::PROCESS_POSTED_INTERRUPTS.bits() != 0 {
            let pid = s.field(VmcsField::PostedInterruptDescriptorAddress);
            if !vid
                || exit & ExitControls::ACK_INTERRUPT_ON_EXIT.bits() == 0
                || s.field(VmcsField::PostedInterruptNotificationVector) & 0xff00 != 0
                || pid & 0x3f != 0
                || !phys_ok(pid)
            {
                return Err(BAD);
            }
        }
        // "virtual NMIs" requires "NMI exiting".
        if pin & PinBasedControls::VIRTUAL_NMIS.bits() != 0
            && pin & PinBasedControls::NMI_EXITING.bits() == 0
        {
            return Err(BAD);
        }
        if p2 & SecondaryProcControls::ENABLE_VPID.bits() != 0
            && s.field(VmcsField::VirtualProcessorId) == 0
        {
            return Err(BAD);
        }
        if p2 & SecondaryProcControls::ENABLE_EPT.bits() != 0 {
            // EPTP (SDM §25.6.11): memory type UC(0)/WB(6) as supported, walk length 4 (3) or
            // 5 (4) as supported, A/D bit only if supported, bits 11:7 reserved.
            let eptp = s.field(VmcsField::EptPointer);
            let ept = c.ept_vpid;
            use crate::vmx::caps::EptVpidCap as E;
            let mt_ok = match eptp & 7 {
                0 => ept.contains(E::MEMORY_TYPE_UC),
                6 => ept.contains(E::MEMORY_TYPE_WB),
                _ => false,
            };
            let walk_ok = match (eptp >> 3) & 7 {
                3 => ept.contains(E::PAGE_WALK_4),
                4 => ept.contains(E::PAGE_WALK_5),
                _ => false,
            };
            let ad_ok = eptp & (1 << 6) == 0 || ept.contains(E::ACCESSED_DIRTY);
            if !(mt_ok && walk_ok && ad_ok && eptp & 0xf80 == 0 && phys_ok(eptp)) {
                return Err(BAD);
            }
        }
        if p2 & SecondaryProcControls::UNRESTRICTED_GUEST.bits() != 0
            && p2 & SecondaryProcControls::ENABLE_EPT.bits() == 0
        {
            return Err(BAD);
        }
        // §27.2.1.2: VM-exit controls.
        if !c.exit.accepts(exit) {
            return Err(BAD);
        }
        if pin & PinBasedControls::ACTIVATE_PREEMPTION_TIMER.bits() == 0
            && exit & ExitControls::SAVE_PREEMPTION_TIMER.bits() != 0
        {
            return Err(BAD);
        }
        for (count, addr) in [
            (
                VmcsField::VmExitMsrStoreCount,
                VmcsField::VmExitMsrStoreAddress,
            ),
            (
                VmcsField::VmExitMsrLoadCount,
                VmcsField::VmExitMsrLoadAddress,
            ),
            (
                VmcsField::VmEntryMsrLoadCount,
                VmcsField::VmEntryMsrLoadAddress,
            ),
        ] {
            if s.field(count) != 0 && (s.field(addr) & 0xf != 0 || !phys_ok(s.field(addr))) {
                return Err(BAD);
            }
        }
        // §27.2.1.3: VM-entry controls and event injection.
        if !c.entry.accepts(entry) {
            return Err(BAD);
        }
        let intr = s.field(VmcsField::VmEntryInterruptionInformation) as u32;
        if intr & (1 << 31) != 0 {
            let kind = (intr >> 8) & 7;
            let vector = intr & 0xff;
            // Type 1 is reserved; NMI must be vector 2; hardware exceptions vectors 0-31;
            // bits 30:12 reserved.
            let ok = match kind {
                1 => false,
                2 => vector == 2,
                3 => vector <= 31,
                _ => true,
            };
            if !ok || intr & 0x7fff_f000 != 0 {
                return Err(BAD);
            }
            // "Deliver error code" only for a hardware exception that has one, and never
            // with unrestricted guest in real mode (guest CR0.PE = 0).
            if intr & (1 << 11) != 0 {
                let unrestricted =
                    s.field(VmcsField::SecondaryProcessorBasedVmExecutionControls) & (1 << 7) != 0;
                let real = s.field(VmcsField::GuestCr0) & 1 == 0;
                let has_code = kind == 3 && matches!(vector, 8 | 10..=14 | 17 | 21);
                if !has_code || (unrestricted && real) {
                    return Err(BAD);
                }
            }
        }
        Ok(())
    }

    /// SDM §27.2.2-27.2.4: host control registers, MSRs, selectors, address-space size.
    pub(super) fn host(s: &SoftVmx) -> Result<(), VmInstructionError> {
        const BAD: VmInstructionError = VmInstructionError::EntryInvalidHostStateFields;
        let c = &s.caps;
        let exit = s.field(VmcsField::PrimaryVmExitControls) as u32;
        let entry = s.field(VmcsField::VmEntryControls) as u32;
        let cr0 = s.field(VmcsField::HostCr0);
        let cr4 = s.field(VmcsField::HostCr4);
        // §27.2.2: CR0/CR4 fixed bits; CR3 within the physical-address width; canonical bases.
        if !c.cr0_fixed.accepts(cr0) || !c.cr4_fixed.accepts(cr4) {
            return Err(BAD);
        }
        if !phys_ok(s.field(VmcsField::HostCr3)) {
            return Err(BAD);
        }
        for f in [
            VmcsField::HostIa32SysenterEsp,
            VmcsField::HostIa32SysenterEip,
            VmcsField::HostFsBase,
            VmcsField::HostGsBase,
            VmcsField::HostGdtrBase,
            VmcsField::HostIdtrBase,
            VmcsField::HostTrBase,
        ] {
            if !canonical(s.field(f)) {
                return Err(BAD);
            }
        }
        let host64 = exit & ExitControls::HOST_ADDRESS_SPACE_SIZE.bits() != 0;
        if exit & ExitControls::LOAD_EFER.bits() != 0 {
            let efer = s.field(VmcsField::HostIa32Efer);
            // Reserved bits: all but SCE(0), LME(8), LMA(10), NXE(11); LMA and LME equal the
            // "host address-space size" control.
            if efer & !0xd01 != 0
                || (efer >> 10) & 1 != u64::from(host64)
                || (efer >> 8) & 1 != u64::from(host64)
            {
                return Err(BAD);
            }
        }
        if exit & ExitControls::LOAD_PAT.bits() != 0 && !pat_ok(s.field(VmcsField::HostIa32Pat)) {
            return Err(BAD);
        }
        // §27.2.3: selectors: RPL and TI 0; CS and TR non-null; SS non-null if 32-bit host.
        let sel = |f: VmcsField| s.field(f) as u16;
        for f in [
            VmcsField::HostEsSelector,
            VmcsField::HostCsSelector,
            VmcsField::HostSsSelector,
            VmcsField::HostDsSelector,
            VmcsField::HostFsSelector,
            VmcsField::HostGsSelector,
            VmcsField::HostTrSelector,
        ] {
            if sel(f) & 7 != 0 {
                return Err(BAD);
            }
        }
        if sel(VmcsField::HostCsSelector) == 0 || sel(VmcsField::HostTrSelector) == 0 {
            return Err(BAD);
        }
        if !host64 && sel(VmcsField::HostSsSelector) == 0 {
            return Err(BAD);
        }
        // §27.2.4: the model CPU is in IA-32e mode (its EFER.LMA=1), so the host must be 64-bit
        // with CR4.PAE=1 and a canonical RIP.
        let host_lma = s.msrs.get(&IA32_EFER).copied().unwrap_or(0) & (1 << 10) != 0;
        if host_lma && !host64 {
            return Err(BAD);
        }
        if host64 {
            if cr4 & (1 << 5) == 0 || !canonical(s.field(VmcsField::HostRip)) {
                return Err(BAD);
            }
        } else if entry & EntryControls::IA32E_MODE_GUEST.bits() != 0
            || cr4 & (1 << 17) != 0
            || s.field(VmcsField::HostRip) >> 32 != 0
        {
            return Err(BAD);
        }
        Ok(())
    }

    fn pat_ok(pat: u64) -> bool {
        // Each of the 8 bytes must be a valid memory type: 0, 1, 4, 5, 6 or 7.
        (0..8).all(|i| matches!((pat >> (i * 8)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7))
    }

    struct Seg {
        sel: u16,
        base: u64,
        limit: u32,
        ar: u32,
    }

    impl Seg {
        fn unusable(&self) -> bool {
            self.ar & (1 << 16) != 0
        }
        fn kind(&self) -> u32 {
            self.ar & 0xf
        }
        fn s(&self) -> bool {
            self.ar & (1 << 4) != 0
        }
        fn dpl(&self) -> u32 {
            (self.ar >> 5) & 3
        }
        fn present(&self) -> bool {
            self.ar & (1 << 7) != 0
        }
        fn reserved_clear(&self) -> bool {
            self.ar & 0xf00 == 0 && self.ar & 0xfffe_0000 == 0
        }
        /// Limit/granularity consistency: limit bits 11:0 not all 1 → G=0; bits 31:20 not all
        /// 0 → G=1.
        fn granularity_ok(&self) -> bool {
            let g = self.ar & (1 << 15) != 0;
            (self.limit & 0xfff == 0xfff || !g) && (self.limit >> 20 == 0 || g)
        }
    }

    fn seg(s: &SoftVmx, sel: VmcsField, base: VmcsField, limit: VmcsField, ar: VmcsField) -> Seg {
        Seg {
            sel: s.field(sel) as u16,
            base: s.field(base),
            limit: s.field(limit) as u32,
            ar: s.field(ar) as u32,
        }
    }

    /// SDM §27.3.1: checks on the guest-state area. Err carries the exit qualification of the
    /// VM-entry failure (§27.8: 0 = default, 4 = invalid VMCS link pointer).
    pub(super) fn guest(s: &SoftVmx) -> Result<(), u64> {
        use VmcsField as F;
        let c = &s.caps;
        let entry = s.field(F::VmEntryControls) as u32;
        let p2 = proc2(s);
        let ug = p2 & SecondaryProcControls::UNRESTRICTED_GUEST.bits() != 0;
        let ia32e = entry & EntryControls::IA32E_MODE_GUEST.bits() != 0;
        let cr0 = s.field(F::GuestCr0);
        let cr4 = s.field(F::GuestCr4);
        // §27.3.1.1: CR0/CR4 fixed bits; with unrestricted guest, PE and PG may be 0.
        let mut cr0_fixed = c.cr0_fixed;
        if ug {
            cr0_fixed.must_be_one &= !((1 << 31) | 1);
        }
        if !cr0_fixed.accepts(cr0) || !c.cr4_fixed.accepts(cr4) {
            return Err(0);
        }
        if cr0 & (1 << 31) != 0 && cr0 & 1 == 0 {
            return Err(0);
        }
        if entry & EntryControls::LOAD_DEBUG_CONTROLS.bits() != 0 && s.field(F::GuestDr7) >> 32 != 0
        {
            return Err(0);
        }
        if !phys_ok(s.field(F::GuestCr3)) {
            return Err(0);
        }
        if ia32e && (cr0 & (1 << 31) == 0 || cr4 & (1 << 5) == 0) {
            return Err(0);
        }
        if !ia32e && cr4 & (1 << 17) != 0 {
            return Err(0);
        }
        if entry & EntryControls::LOAD_EFER.bits() != 0 {
            let efer = s.field(F::GuestIa32Efer);
            let lma = efer & (1 << 10) != 0;
            let lme = efer & (1 << 8) != 0;
            if efer & !0xd01 != 0 || lma != ia32e || (cr0 & (1 << 31) != 0 && lma != lme) {
                return Err(0);
            }
        }
        if entry & EntryControls::LOAD_PAT.bits() != 0 && !pat_ok(s.field(F::GuestIa32Pat)) {
            return Err(0);
        }
        // §27.3.1.2: segment registers.
        let rflags = s.field(F::GuestRflags);
        let v86 = rflags & (1 << 17) != 0;
        let cs = seg(
            s,
            F::GuestCsSelector,
            F::GuestCsBase,
            F::GuestCsLimit,
            F::GuestCsAccessRights,
        );
        let ss = seg(
            s,
            F::GuestSsSelector,
            F::GuestSsBase,
            F::GuestSsLimit,
            F::GuestSsAccessRights,
        );
        let ds = seg(
            s,
            F::GuestDsSelector,
            F::GuestDsBase,
            F::GuestDsLimit,
            F::GuestDsAccessRights,
        );
        let es = seg(
            s,
            F::GuestEsSelector,
            F::GuestEsBase,
            F::GuestEsLimit,
            F::GuestEsAccessRights,
        );
        let fs = seg(
            s,
            F::GuestFsSelector,
            F::GuestFsBase,
            F::GuestFsLimit,
            F::GuestFsAccessRights,
        );
        let gs = seg(
            s,
            F::GuestGsSelector,
            F::GuestGsBase,
            F::GuestGsLimit,
            F::GuestGsAccessRights,
        );
        let tr = seg(
            s,
            F::GuestTrSelector,
            F::GuestTrBase,
            F::GuestTrLimit,
            F::GuestTrAccessRights,
        );
        let ldtr = seg(
            s,
            F::GuestLdtrSelector,
            F::GuestLdtrBase,
            F::GuestLdtrLimit,
            F::GuestLdtrAccessRights,
        );
        if tr.sel & 4 != 0 || (!ldtr.unusable() && ldtr.sel & 4 != 0) {
            return Err(0);
        }
        if v86 {
            // Virtual-8086 guest: base = selector << 4, limit 0xffff, AR 0xf3.
            for sg in [&cs, &ss, &ds, &es, &fs, &gs] {
                if sg.base != u64::from(sg.sel) << 4 || sg.limit != 0xffff || sg.ar != 0xf3 {
                    return Err(0);
                }
            }
        } else {
            if !ug && ss.sel & 3 != cs.sel & 3 {
                return Err(0);
            }
            // Bases.
            if !canonical(tr.base) || !canonical(fs.base) || !canonical(gs.base) {
                return Err(0);
            }
            if !ldtr.unusable() && !canonical(ldtr.base) {
                return Err(0);
            }
            if cs.base >> 32 != 0 {
                return Err(0);
            }
            for sg in [&ss, &ds, &es] {
                if !sg.unusable() && sg.base >> 32 != 0 {
                    return Err(0);
                }
            }
            // CS: accessed code (9, 11, 13, 15) or, with unrestricted guest, read/write
            // accessed data (3); S=1; DPL rules; P=1; reserved bits 0; granularity.
            let cs_type_ok = matches!(cs.kind(), 9 | 11 | 13 | 15) || (ug && cs.kind() == 3);
            if cs.unusable() || !cs_type_ok || !cs.s() || !cs.present() {
                return Err(0);
            }
            let dpl_ok = match cs.kind() {
                3 => cs.dpl() == 0,
                9 | 11 => cs.dpl() == ss.dpl(),
                _ => cs.dpl() <= ss.dpl(),
            };
            if !dpl_ok || !cs.reserved_clear() || !cs.granularity_ok() {
                return Err(0);
            }
            if ia32e && cs.ar & (1 << 13) != 0 && cs.ar & (1 << 14) != 0 {
                return Err(0);
            }
            // SS: if usable, type 3 or 7, S=1, P=1; DPL rules hold even when unusable.
            if !ug && ss.dpl() != u32::from(ss.sel & 3) {
                return Err(0);
            }
            if (cs.kind() == 3 || cr0 & 1 == 0) && ss.dpl() != 0 {
                return Err(0);
            }
            if !ss.unusable()
                && (!matches!(ss.kind(), 3 | 7)
                    || !ss.s()
                    || !ss.present()
                    || !ss.reserved_clear()
                    || !ss.granularity_ok())
            {
                return Err(0);
            }
            // DS, ES, FS, GS: if usable, accessed; code must be readable; S=1; P=1; DPL >= RPL
            // for data and non-conforming code unless unrestricted guest.
            for sg in [&ds, &es, &fs, &gs] {
                if sg.unusable() {
                    continue;
                }
                let t = sg.kind();
                if t & 1 == 0 || (t & 8 != 0 && t & 2 == 0) || !sg.s() || !sg.present() {
                    return Err(0);
                }
                if !ug && t <= 11 && sg.dpl() < u32::from(sg.sel & 3) {
                    return Err(0);
                }
                if !sg.reserved_clear() || !sg.granularity_ok() {
                    return Err(0);
                }
            }
        }
        // TR: busy TSS (11, or 3 outside IA-32e mode), S=0, P=1, usable.
        let tr_type_ok = tr.kind() == 11 || (!ia32e && tr.kind() == 3);
        if !tr_type_ok
            || tr.s()
            || !tr.present()
            || tr.unusable()
            || !tr.reserved_clear()
            || !tr.granularity_ok()
        {
            return Err(0);
        }
        // LDTR: if usable, type 2, S=0, P=1.
        if !ldtr.unusable()
            && (ldtr.kind() != 2
                || ldtr.s()
                || !ldtr.present()
                || !ldtr.reserved_clear()
                || !ldtr.granularity_ok())
        {
            return Err(0);
        }
        // §27.3.1.3: GDTR/IDTR: canonical base, limit bits 31:16 zero.
        for (b, l) in [
            (F::GuestGdtrBase, F::GuestGdtrLimit),
            (F::GuestIdtrBase, F::GuestIdtrLimit),
        ] {
            if !canonical(s.field(b)) || s.field(l) >> 16 != 0 {
                return Err(0);
            }
        }
        // §27.3.1.4: RIP and RFLAGS.
        let rip = s.field(F::GuestRip);
        if (!ia32e || cs.ar & (1 << 13) == 0) && rip >> 32 != 0 {
            return Err(0);
        }
        if ia32e && cs.ar & (1 << 13) != 0 && !canonical(rip) {
            return Err(0);
        }
        // Reserved bits 63:22, 15, 5, 3 must be 0 and bit 1 must be 1.
        if rflags & 0xffff_ffff_ffc0_8028 != 0 || rflags & 2 == 0 {
            return Err(0);
        }
        if (ia32e || cr0 & 1 == 0) && v86 {
            return Err(0);
        }
        let intr = s.field(F::VmEntryInterruptionInformation) as u32;
        if intr & (1 << 31) != 0 && (intr >> 8) & 7 == 0 && rflags & (1 << 9) == 0 {
            return Err(0);
        }
        // §27.3.1.5: non-register state.
        let activity = s.field(F::GuestActivityState);
        let activity_ok = match activity {
            0 => true,
            1 => c.misc.activity_hlt && ss.dpl() == 0,
            2 => c.misc.activity_shutdown,
            3 => c.misc.activity_wait_for_sipi,
            _ => false,
        };
        if !activity_ok {
            return Err(0);
        }
        let intr_state = s.field(F::GuestInterruptibilityState);
        if intr_state & !0x1f != 0 || intr_state & 3 == 3 {
            return Err(0);
        }
        if intr_state & 1 != 0 && rflags & (1 << 9) == 0 {
            return Err(0);
        }
        // Pending debug exceptions: only bits 3:0, 12, 14, 16 defined; bit 16 (RTM) must be 0
        // on a processor without RTM, which no model CPU here has (§27.3.1.5).
        let pending_db = s.field(F::GuestPendingDebugExceptions);
        if pending_db & !0x500f != 0 {
            return Err(0);
        }
        // With blocking by STI or MOV SS, or in the HLT state, BS (bit 14) must be 1 when
        // RFLAGS.TF = 1 and IA32_DEBUGCTL.BTF = 0, and 0 when TF = 0 or BTF = 1: a single-step
        // trap the blocking held back has to be recorded as pending (§27.3.1.5).
        if intr_state & 3 != 0 || activity == 1 {
            let tf = rflags & (1 << 8) != 0;
            let btf = s.field(F::GuestIa32Debugctl) & (1 << 1) != 0;
            if (pending_db & (1 << 14) != 0) != (tf && !btf) {
                return Err(0);
            }
        }
        // VMCS link pointer: the model has no memory, so anything but ~0 (the value software
        // uses without VMCS shadowing) fails as an invalid pointer would (§27.3.1.5).
        if s.field(F::VmcsLinkPointer) != u64::MAX {
            return Err(4);
        }
        Ok(())
    }
}

/// Parses the MSR values of one CPU model from a table in the format of
/// `tests/data/bochs-vmx-msrs.tsv` (columns: model, MSR name, value, TRUE_* value or `-`;
/// the fixed-bit MSRs as one row `IA32_VMX_CRn_FIXED0/1` with `a / b`). Returns `None` if the
/// model is absent or a value does not parse.
pub fn msrs_from_tsv(tsv: &str, model: &str) -> Option<alloc::vec::Vec<(u32, u64)>> {
    use crate::vmx::caps::*;
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
    let mut out = alloc::vec::Vec::new();
    for line in tsv.lines().skip(1) {
        let cols: alloc::vec::Vec<&str> = line.split('\t').collect();
        if cols.len() < 4 || cols[0] != model {
            continue;
        }
        let (name, value, truev) = (cols[1], cols[2], cols[3]);
        if let Some(pair) = name.strip_suffix("_FIXED0/1") {
            let (a, b) = value.split_once('/')?;
            let base = match pair {
                "IA32_VMX_CR0" => IA32_VMX_CR0_FIXED0,
                "IA32_VMX_CR4" => IA32_VMX_CR4_FIXED0,
                _ => return None,
            };
            out.push((base, hex(a)?));
            out.push((base + 1, hex(b)?));
            continue;
        }
        let (msr, true_msr) = match name {
            "IA32_VMX_BASIC" => (IA32_VMX_BASIC, None),
            "IA32_VMX_PINBASED_CTLS" => (IA32_VMX_PINBASED_CTLS, Some(IA32_VMX_TRUE_PINBASED_CTLS)),
            "IA32_VMX_PROCBASED_CTLS" => {
                (IA32_VMX_PROCBASED_CTLS, Some(IA32_VMX_TRUE_PROCBASED_CTLS))
            }
            "IA32_VMX_EXIT_CTLS" => (IA32_VMX_EXIT_CTLS, Some(IA32_VMX_TRUE_EXIT_CTLS)),
            "IA32_VMX_ENTRY_CTLS" => (IA32_VMX_ENTRY_CTLS, Some(IA32_VMX_TRUE_ENTRY_CTLS)),
            "IA32_VMX_MISC" => (IA32_VMX_MISC, None),
            "IA32_VMX_VMCS_ENUM" => (IA32_VMX_VMCS_ENUM, None),
            "IA32_VMX_PROCBASED_CTLS2" => (IA32_VMX_PROCBASED_CTLS2, None),
            "IA32_VMX_EPT_VPID_CAP" => (IA32_VMX_EPT_VPID_CAP, None),
            "IA32_VMX_VMFUNC" => (IA32_VMX_VMFUNC, None),
            "IA32_VMX_PROCBASED_CTLS3" => (IA32_VMX_PROCBASED_CTLS3, None),
            _ => continue,
        };
        out.push((msr, hex(value)?));
        if let (Some(t), false) = (true_msr, truev.trim() == "-") {
            out.push((t, hex(truev)?));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Test data shared by the unit tests of the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    /// The Bochs CPU-model table (copied from the shared reference into the repository).
    pub const TSV: &str = include_str!("../../tests/data/bochs-vmx-msrs.tsv");

    /// The MSRs of Bochs's `corei7_skylake_x`.
    pub fn skylake_msrs() -> alloc::vec::Vec<(u32, u64)> {
        super::msrs_from_tsv(TSV, "corei7_skylake_x").expect("skylake in the table")
    }
}
