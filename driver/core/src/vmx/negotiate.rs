//! VMX control negotiation: from [`VmxCaps`] to the control values rhax programs.
//!
//! Pure functions, no hardware. Section numbers follow the Intel SDM, order number
//! 325462-083US (March 2024): Vol. 3C 25.6-25.8 define the controls, 27.2.1 the VM-entry
//! checks between them, 27.3.1.1 the guest CR0/CR4 checks, Vol. 3D Appendix A the capability
//! MSRs (see [`super::caps`]).
//!
//! [`negotiate`] refuses a CPU that lacks a [`Feature`] rhax cannot run without (EPT,
//! unrestricted guest, ...), records the [`OptionalFeatures`] the CPU offers, and builds the
//! baseline control values that VMCS setup writes. Every value respects the allowed-0 and
//! allowed-1 settings (SDM Vol. 3D A.2-A.5), read from the TRUE MSRs when IA32_VMX_BASIC bit 55
//! says they exist. Optional features that need per-vCPU structures (virtual-APIC page, PML
//! buffer, preemption-timer value) are available but off in the baseline; the vCPU turns them
//! on with [`VmxControls::with`], which re-checks the SDM rules.

use core::fmt;

use bitflags::bitflags;

use super::caps::{
    AllowedBits, EntryControls, EptVpidCap, ExitControls, FixedBits, PinBasedControls,
    PrimaryProcControls, SecondaryProcControls, TertiaryProcControls, VmxCaps, MEMORY_TYPE_WB,
};

type Pin = PinBasedControls;
type Proc = PrimaryProcControls;
type Proc2 = SecondaryProcControls;
type Exit = ExitControls;
type Entry = EntryControls;

/// A VMX capability rhax cannot run without. [`Feature::REQUIRED`] lists them in the order
/// [`negotiate`] checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// VMCS and bitmap addresses are not limited to 32 bits (IA32_VMX_BASIC bit 48 = 0).
    Vmcs64BitAddresses,
    /// The CPU accesses the VMCS as write-back memory (IA32_VMX_BASIC bits 53:50 = 6).
    WriteBackVmcs,
    /// A VMCS region fits in one 4-KiB page (IA32_VMX_BASIC bits 44:32, 1..=4096).
    VmcsFitsInPage,
    /// Secondary processor-based controls (primary control bit 31).
    SecondaryControls,
    /// Extended page tables (secondary control bit 1).
    Ept,
    /// Unrestricted guest (secondary control bit 7): real mode and unpaged protected mode run
    /// natively. QEMU refuses an accelerator without it, and HAXM required it.
    UnrestrictedGuest,
    /// 4-level EPT page walk (IA32_VMX_EPT_VPID_CAP bit 6).
    EptPageWalk4,
    /// Write-back EPT paging structures (IA32_VMX_EPT_VPID_CAP bit 14).
    EptWriteBack,
    /// INVEPT with the single-context or all-context type (IA32_VMX_EPT_VPID_CAP bits 20, 25/26).
    Invept,
    /// External-interrupt exiting (pin-based control bit 0).
    ExternalInterruptExiting,
    /// NMI exiting (pin-based control bit 3).
    NmiExiting,
    /// HLT exiting (primary control bit 7).
    HltExiting,
    /// CR8-load and CR8-store exiting (primary control bits 19, 20).
    Cr8Exiting,
    /// I/O bitmaps (primary control bit 25).
    IoBitmaps,
    /// MSR bitmaps (primary control bit 28).
    MsrBitmaps,
    /// Host address-space size (VM-exit control bit 9): return to a 64-bit host.
    HostAddressSpaceSize,
    /// Save IA32_EFER on exit (VM-exit control bit 20).
    SaveGuestEfer,
    /// Load IA32_EFER on exit (VM-exit control bit 21).
    LoadHostEfer,
    /// Load IA32_EFER on entry (VM-entry control bit 15).
    LoadGuestEfer,
}

impl Feature {
    /// Every required feature, in the order [`negotiate`] checks them (so the first missing one
    /// is the most fundamental: Penryn is refused for EPT before its EFER controls).
    pub const REQUIRED: [Feature; 19] = [
        Feature::Vmcs64BitAddresses,
        Feature::WriteBackVmcs,
        Feature::VmcsFitsInPage,
        Feature::SecondaryControls,
        Feature::Ept,
        Feature::UnrestrictedGuest,
        Feature::EptPageWalk4,
        Feature::EptWriteBack,
        Feature::Invept,
        Feature::ExternalInterruptExiting,
        Feature::NmiExiting,
        Feature::HltExiting,
        Feature::Cr8Exiting,
        Feature::IoBitmaps,
        Feature::MsrBitmaps,
        Feature::HostAddressSpaceSize,
        Feature::SaveGuestEfer,
        Feature::LoadHostEfer,
        Feature::LoadGuestEfer,
    ];

    /// Short human name of the feature.
    pub const fn name(self) -> &'static str {
        match self {
            Feature::Vmcs64BitAddresses => "64-bit VMCS addresses",
            Feature::WriteBackVmcs => "write-back VMCS memory type",
            Feature::VmcsFitsInPage => "a VMCS region of at most 4 KiB",
            Feature::SecondaryControls => "secondary processor-based controls",
            Feature::Ept => "EPT",
            Feature::UnrestrictedGuest => "unrestricted guest",
            Feature::EptPageWalk4 => "4-level EPT page walk",
            Feature::EptWriteBack => "write-back EPT paging structures",
            Feature::Invept => "INVEPT (single- or all-context)",
            Feature::ExternalInterruptExiting => "external-interrupt exiting",
            Feature::NmiExiting => "NMI exiting",
            Feature::HltExiting => "HLT exiting",
            Feature::Cr8Exiting => "CR8-load/store exiting",
            Feature::IoBitmaps => "I/O bitmaps",
            Feature::MsrBitmaps => "MSR bitmaps",
            Feature::HostAddressSpaceSize => "64-bit host (host address-space size)",
            Feature::SaveGuestEfer => "save IA32_EFER on VM exit",
            Feature::LoadHostEfer => "load IA32_EFER on VM exit",
            Feature::LoadGuestEfer => "load IA32_EFER on VM entry",
        }
    }

    /// Where the CPU reports the feature.
    pub const fn source(self) -> &'static str {
        match self {
            Feature::Vmcs64BitAddresses => "IA32_VMX_BASIC bit 48",
            Feature::WriteBackVmcs => "IA32_VMX_BASIC bits 53:50",
            Feature::VmcsFitsInPage => "IA32_VMX_BASIC bits 44:32",
            Feature::SecondaryControls => "primary processor-based control bit 31",
            Feature::Ept => "secondary control bit 1",
            Feature::UnrestrictedGuest => "secondary control bit 7",
            Feature::EptPageWalk4 => "IA32_VMX_EPT_VPID_CAP bit 6",
            Feature::EptWriteBack => "IA32_VMX_EPT_VPID_CAP bit 14",
            Feature::Invept => "IA32_VMX_EPT_VPID_CAP bits 20, 25, 26",
            Feature::ExternalInterruptExiting => "pin-based control bit 0",
            Feature::NmiExiting => "pin-based control bit 3",
            Feature::HltExiting => "primary processor-based control bit 7",
            Feature::Cr8Exiting => "primary processor-based control bits 19 and 20",
            Feature::IoBitmaps => "primary processor-based control bit 25",
            Feature::MsrBitmaps => "primary processor-based control bit 28",
            Feature::HostAddressSpaceSize => "VM-exit control bit 9",
            Feature::SaveGuestEfer => "VM-exit control bit 20",
            Feature::LoadHostEfer => "VM-exit control bit 21",
            Feature::LoadGuestEfer => "VM-entry control bit 15",
        }
    }

    /// True when `caps` offers the feature.
    pub fn is_present(self, caps: &VmxCaps) -> bool {
        let ept = caps.ept_vpid;
        match self {
            Feature::Vmcs64BitAddresses => !caps.basic.physical_address_32bit,
            Feature::WriteBackVmcs => caps.basic.memory_type == MEMORY_TYPE_WB,
            Feature::VmcsFitsInPage => (1..=4096).contains(&caps.basic.region_size),
            Feature::SecondaryControls => {
                caps.proc.allows(Proc::ACTIVATE_SECONDARY_CONTROLS.bits())
            }
            Feature::Ept => caps.proc2.allows(Proc2::ENABLE_EPT.bits()),
            Feature::UnrestrictedGuest => caps.proc2.allows(Proc2::UNRESTRICTED_GUEST.bits()),
            Feature::EptPageWalk4 => ept.contains(EptVpidCap::PAGE_WALK_4),
            Feature::EptWriteBack => ept.contains(EptVpidCap::MEMORY_TYPE_WB),
            Feature::Invept => {
                ept.contains(EptVpidCap::INVEPT)
                    && ept.intersects(
                        EptVpidCap::INVEPT_SINGLE_CONTEXT | EptVpidCap::INVEPT_ALL_CONTEXT,
                    )
            }
            Feature::ExternalInterruptExiting => {
                caps.pin.allows(Pin::EXTERNAL_INTERRUPT_EXITING.bits())
            }
            Feature::NmiExiting => caps.pin.allows(Pin::NMI_EXITING.bits()),
            Feature::HltExiting => caps.proc.allows(Proc::HLT_EXITING.bits()),
            Feature::Cr8Exiting => caps.proc.allows(CR8_EXITING.bits()),
            Feature::IoBitmaps => caps.proc.allows(Proc::USE_IO_BITMAPS.bits()),
            Feature::MsrBitmaps => caps.proc.allows(Proc::USE_MSR_BITMAPS.bits()),
            Feature::HostAddressSpaceSize => caps.exit.allows(Exit::HOST_ADDRESS_SPACE_SIZE.bits()),
            Feature::SaveGuestEfer => caps.exit.allows(Exit::SAVE_EFER.bits()),
            Feature::LoadHostEfer => caps.exit.allows(Exit::LOAD_EFER.bits()),
            Feature::LoadGuestEfer => caps.entry.allows(Entry::LOAD_EFER.bits()),
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.source())
    }
}

/// Every required feature `caps` lacks, in [`Feature::REQUIRED`] order.
pub fn missing_features(caps: &VmxCaps) -> impl Iterator<Item = Feature> + '_ {
    Feature::REQUIRED
        .into_iter()
        .filter(move |f| !f.is_present(caps))
}

/// One VMCS control field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlField {
    /// Pin-based VM-execution controls.
    PinBased,
    /// Primary processor-based VM-execution controls.
    PrimaryProc,
    /// Secondary processor-based VM-execution controls.
    SecondaryProc,
    /// Tertiary processor-based VM-execution controls.
    TertiaryProc,
    /// Primary VM-exit controls.
    Exit,
    /// VM-entry controls.
    Entry,
}

impl fmt::Display for ControlField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlField::PinBased => "pin-based VM-execution controls",
            ControlField::PrimaryProc => "primary processor-based VM-execution controls",
            ControlField::SecondaryProc => "secondary processor-based VM-execution controls",
            ControlField::TertiaryProc => "tertiary processor-based VM-execution controls",
            ControlField::Exit => "VM-exit controls",
            ControlField::Entry => "VM-entry controls",
        })
    }
}

/// A rule between controls that VM entry checks (SDM Vol. 3C 27.2.1.1, 27.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlRule {
    /// Secondary controls set while "activate secondary controls" is 0 (they would be ignored).
    SecondaryNotActivated,
    /// Tertiary controls set while "activate tertiary controls" is 0.
    TertiaryNotActivated,
    /// x2APIC virtualization, APIC-register virtualization or virtual-interrupt delivery
    /// without "use TPR shadow" (27.2.1.1).
    ApicVirtualizationNeedsTprShadow,
    /// "Virtualize x2APIC mode" together with "virtualize APIC accesses" (27.2.1.1).
    X2apicExcludesApicAccesses,
    /// Virtual-interrupt delivery without external-interrupt exiting (27.2.1.1).
    VirtualInterruptDeliveryNeedsExternalInterruptExiting,
    /// Virtual NMIs without NMI exiting (27.2.1.1).
    VirtualNmisNeedNmiExiting,
    /// NMI-window exiting without virtual NMIs (27.2.1.1).
    NmiWindowNeedsVirtualNmis,
    /// Unrestricted guest or PML without EPT (27.2.1.1).
    NeedsEpt,
    /// "Save VMX-preemption timer value" without the timer active (27.2.1.2).
    SavePreemptionTimerNeedsTimer,
}

impl fmt::Display for ControlRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlRule::SecondaryNotActivated => {
                "secondary controls are set but primary control bit 31 (activate secondary controls) is 0"
            }
            ControlRule::TertiaryNotActivated => {
                "tertiary controls are set but primary control bit 17 (activate tertiary controls) is 0"
            }
            ControlRule::ApicVirtualizationNeedsTprShadow => {
                "x2APIC virtualization, APIC-register virtualization and virtual-interrupt delivery need \"use TPR shadow\" (SDM 27.2.1.1)"
            }
            ControlRule::X2apicExcludesApicAccesses => {
                "\"virtualize x2APIC mode\" and \"virtualize APIC accesses\" cannot both be 1 (SDM 27.2.1.1)"
            }
            ControlRule::VirtualInterruptDeliveryNeedsExternalInterruptExiting => {
                "virtual-interrupt delivery needs external-interrupt exiting (SDM 27.2.1.1)"
            }
            ControlRule::VirtualNmisNeedNmiExiting => "virtual NMIs need NMI exiting (SDM 27.2.1.1)",
            ControlRule::NmiWindowNeedsVirtualNmis => {
                "NMI-window exiting needs virtual NMIs (SDM 27.2.1.1)"
            }
            ControlRule::NeedsEpt => "unrestricted guest and PML need EPT (SDM 27.2.1.1)",
            ControlRule::SavePreemptionTimerNeedsTimer => {
                "saving the VMX-preemption timer value needs the timer active (SDM 27.2.1.2)"
            }
        })
    }
}

/// Why a CPU's VMX capabilities or a set of controls are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NegotiationError {
    /// Firmware locked IA32_FEATURE_CONTROL with VMXON outside SMX disabled (SDM Vol. 3C 24.7).
    DisabledByFirmware,
    /// A feature rhax requires is missing.
    MissingFeature(Feature),
    /// A capability MSR says these bits must be 1 and may not be 1: no value is valid.
    InconsistentCapability {
        /// The field whose MSR is inconsistent.
        field: ControlField,
        /// The contradictory bits.
        bits: u64,
    },
    /// The CPU forces controls to 1 that rhax must keep 0 (or that a caller asked to clear).
    ForcedOn {
        /// The field.
        field: ControlField,
        /// The bits that cannot be 0.
        bits: u64,
    },
    /// A control value violates its allowed-0/allowed-1 settings (SDM Vol. 3D A.3-A.5).
    NotAllowed {
        /// The field.
        field: ControlField,
        /// The offending bits: must-be-one bits that are 0 and bits set that may not be 1.
        bits: u64,
    },
    /// Optional features asked for that this CPU does not offer.
    Unavailable(OptionalFeatures),
    /// A rule between controls is broken.
    Rule(ControlRule),
}

impl fmt::Display for NegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NegotiationError::DisabledByFirmware => f.write_str(
                "VT-x is disabled by firmware: IA32_FEATURE_CONTROL is locked with bit 2 \
                 (VMXON outside SMX) clear; enable virtualization in the firmware setup",
            ),
            NegotiationError::MissingFeature(feature) => write!(
                f,
                "VT-x lacks {} ({}), which rhax requires",
                feature.name(),
                feature.source()
            ),
            NegotiationError::InconsistentCapability { field, bits } => write!(
                f,
                "the capability MSR of the {field} says bits {bits:#x} must be 1 and may not be 1"
            ),
            NegotiationError::ForcedOn { field, bits } => write!(
                f,
                "the CPU forces bits {bits:#x} of the {field} to 1, which rhax must keep 0"
            ),
            NegotiationError::NotAllowed { field, bits } => write!(
                f,
                "bits {bits:#x} of the {field} violate the CPU's allowed settings"
            ),
            NegotiationError::Unavailable(features) => write!(
                f,
                "the CPU does not offer the optional VMX features {:#x} ({features:?})",
                features.bits()
            ),
            NegotiationError::Rule(rule) => write!(f, "invalid VMX controls: {rule}"),
        }
    }
}

bitflags! {
    /// Optional VMX features: used when the CPU offers them, recorded in
    /// [`VmxControls::available`] and [`VmxControls::enabled`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct OptionalFeatures: u32 {
        /// VPID (secondary bit 5) with INVVPID single- or all-context: TLB entries survive
        /// VM exits. VMCS setup must write a nonzero VPID (SDM 27.2.1.1).
        const VPID = 1 << 0;
        /// Use TPR shadow (primary bit 21); dynamic, needs a virtual-APIC page.
        const TPR_SHADOW = 1 << 1;
        /// Virtualize APIC accesses (secondary bit 0); dynamic, needs an APIC-access page.
        const VIRTUALIZE_APIC_ACCESSES = 1 << 2;
        /// APIC-register virtualization (secondary bit 8); dynamic, needs TPR shadow.
        const APIC_REGISTER_VIRTUALIZATION = 1 << 3;
        /// Virtual-interrupt delivery (secondary bit 9); dynamic, needs TPR shadow.
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 4;
        /// Virtualize x2APIC mode (secondary bit 4); dynamic, needs TPR shadow.
        const VIRTUALIZE_X2APIC = 1 << 5;
        /// VMX-preemption timer (pin bit 6); dynamic, needs a timer value.
        const PREEMPTION_TIMER = 1 << 6;
        /// Save VMX-preemption timer value on exit (exit bit 22); dynamic, with the timer.
        const SAVE_PREEMPTION_TIMER = 1 << 7;
        /// Monitor trap flag (primary bit 27); dynamic (single-stepping), off by default.
        const MONITOR_TRAP_FLAG = 1 << 8;
        /// Page-modification logging (secondary bit 17, needs EPT A/D); dynamic, needs a PML page.
        const PML = 1 << 9;
        /// Enable RDTSCP (secondary bit 3): the guest may run RDTSCP.
        const RDTSCP = 1 << 10;
        /// Enable INVPCID (secondary bit 12): the guest may run INVPCID.
        const INVPCID = 1 << 11;
        /// Enable XSAVES/XRSTORS (secondary bit 20): the guest may run them.
        const XSAVES = 1 << 12;
        /// EPT accessed and dirty flags (EPT_VPID_CAP bit 21; EPTP bit 6).
        const EPT_ACCESSED_DIRTY = 1 << 13;
        /// Single-context INVEPT (EPT_VPID_CAP bit 25): flush one EPT context, not all.
        const INVEPT_SINGLE_CONTEXT = 1 << 14;
        /// Single-context INVVPID (EPT_VPID_CAP bit 41), with VPID.
        const INVVPID_SINGLE_CONTEXT = 1 << 15;
        /// Virtual NMIs (pin bit 5): NMI blocking tracked per guest, NMI-window exits.
        const VIRTUAL_NMIS = 1 << 16;
        /// TSC offsetting (primary bit 3).
        const TSC_OFFSETTING = 1 << 17;
        /// Save/load IA32_PAT on exit and load on entry (exit bits 18, 19; entry bit 14).
        const PAT_SWITCHING = 1 << 18;
        /// Save debug controls on exit and load them on entry (exit bit 2; entry bit 2).
        const DEBUG_CONTROLS = 1 << 19;
        /// WBINVD exiting (secondary bit 6).
        const WBINVD_EXITING = 1 << 20;
        /// 2-MByte EPT pages (EPT_VPID_CAP bit 16).
        const EPT_2M_PAGES = 1 << 21;
        /// 1-GByte EPT pages (EPT_VPID_CAP bit 17).
        const EPT_1G_PAGES = 1 << 22;

        /// Features that are available but off in the baseline: they need per-vCPU
        /// structures or are turned on for a purpose ([`VmxControls::with`]).
        const DYNAMIC = Self::TPR_SHADOW.bits()
            | Self::VIRTUALIZE_APIC_ACCESSES.bits()
            | Self::APIC_REGISTER_VIRTUALIZATION.bits()
            | Self::VIRTUAL_INTERRUPT_DELIVERY.bits()
            | Self::VIRTUALIZE_X2APIC.bits()
            | Self::PREEMPTION_TIMER.bits()
            | Self::SAVE_PREEMPTION_TIMER.bits()
            | Self::MONITOR_TRAP_FLAG.bits()
            | Self::PML.bits();
    }
}

/// CR8-load and CR8-store exiting.
const CR8_EXITING: Proc = Proc::CR8_LOAD_EXITING.union(Proc::CR8_STORE_EXITING);

/// Controls rhax must keep 0 whatever the CPU says: each needs a VMCS structure rhax does not
/// set up at negotiation time, or would make every entry exit at once. A CPU that forces one
/// of these is refused with [`NegotiationError::ForcedOn`].
const PIN_KEEP_OFF: Pin = Pin::ACTIVATE_PREEMPTION_TIMER.union(Pin::PROCESS_POSTED_INTERRUPTS);
const PROC_KEEP_OFF: Proc = Proc::INTERRUPT_WINDOW_EXITING
    .union(Proc::NMI_WINDOW_EXITING)
    .union(Proc::MONITOR_TRAP_FLAG)
    .union(Proc::USE_TPR_SHADOW);
const PROC2_KEEP_OFF: Proc2 = Proc2::VIRTUALIZE_APIC_ACCESSES
    .union(Proc2::VIRTUALIZE_X2APIC_MODE)
    .union(Proc2::APIC_REGISTER_VIRTUALIZATION)
    .union(Proc2::VIRTUAL_INTERRUPT_DELIVERY)
    .union(Proc2::VMCS_SHADOWING)
    .union(Proc2::ENABLE_PML)
    .union(Proc2::EPT_VIOLATION_VE)
    .union(Proc2::ENABLE_VM_FUNCTIONS)
    .union(Proc2::MODE_BASED_EPT_EXECUTE)
    .union(Proc2::SUB_PAGE_WRITE_PERMISSIONS)
    .union(Proc2::USE_TSC_SCALING);
const EXIT_KEEP_OFF: Exit = Exit::ACK_INTERRUPT_ON_EXIT
    .union(Exit::SAVE_PREEMPTION_TIMER)
    .union(Exit::LOAD_PERF_GLOBAL_CTRL)
    .union(Exit::LOAD_CET_STATE)
    .union(Exit::LOAD_PKRS)
    .union(Exit::ACTIVATE_SECONDARY_CONTROLS);
const ENTRY_KEEP_OFF: Entry = Entry::IA32E_MODE_GUEST
    .union(Entry::ENTRY_TO_SMM)
    .union(Entry::DEACTIVATE_DUAL_MONITOR)
    .union(Entry::LOAD_PERF_GLOBAL_CTRL)
    .union(Entry::LOAD_CET_STATE)
    .union(Entry::LOAD_PKRS);

/// The allowed settings the negotiated values were checked against, kept so that dynamic
/// changes ([`VmxControls::with`], interrupt-window exiting, IA-32e mode guest) can be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AllowedControls {
    /// Pin-based controls.
    pub pin: AllowedBits,
    /// Primary processor-based controls.
    pub proc: AllowedBits,
    /// Secondary processor-based controls.
    pub proc2: AllowedBits,
    /// Tertiary processor-based controls that may be 1 (all may be 0, SDM A.3.4).
    pub proc3_may_be_one: u64,
    /// VM-exit controls.
    pub exit: AllowedBits,
    /// VM-entry controls.
    pub entry: AllowedBits,
}

/// The negotiated VMX configuration: control values to program and the facts VMCS setup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmxControls {
    /// Pin-based VM-execution controls to program.
    pub pin: PinBasedControls,
    /// Primary processor-based VM-execution controls to program.
    pub proc: PrimaryProcControls,
    /// Secondary processor-based VM-execution controls to program.
    pub proc2: SecondaryProcControls,
    /// Tertiary processor-based VM-execution controls (64-bit field) to program.
    pub proc3: TertiaryProcControls,
    /// VM-exit controls to program.
    pub exit: ExitControls,
    /// VM-entry controls to program. VMCS setup sets the "IA-32e mode guest" control per
    /// guest (it must equal guest EFER.LMA, SDM 27.3.1.1); it is 0 here for the real-mode
    /// power-on state.
    pub entry: EntryControls,
    /// Optional features the CPU offers and rhax can use.
    pub available: OptionalFeatures,
    /// Optional features the values above have on (a subset of `available`).
    pub enabled: OptionalFeatures,
    /// Allowed settings of each field (from the TRUE MSRs when `true_controls`).
    pub allowed: AllowedControls,
    /// The TRUE capability MSRs were used (IA32_VMX_BASIC bit 55, SDM A.2).
    pub true_controls: bool,
    /// Guest CR0 fixed bits, with PE and PG free because of unrestricted guest (SDM 27.3.1.1;
    /// PG=1 still needs PE=1).
    pub guest_cr0_fixed: FixedBits,
    /// Guest CR4 fixed bits (SDM 27.3.1.1).
    pub guest_cr4_fixed: FixedBits,
    /// Host CR0 fixed bits: the raw IA32_VMX_CR0_FIXED0/1 (SDM 27.2.2).
    pub host_cr0_fixed: FixedBits,
    /// Host CR4 fixed bits: the raw IA32_VMX_CR4_FIXED0/1 (SDM 27.2.2).
    pub host_cr4_fixed: FixedBits,
    /// EPT paging-structure memory type for the EPTP (6 = write-back).
    pub ept_memory_type: u8,
    /// EPT page-walk length (4).
    pub ept_walk_length: u8,
    /// The VMX-preemption timer counts down every 2^rate TSC ticks (IA32_VMX_MISC bits 4:0).
    pub preemption_timer_rate: u8,
    /// VMCS revision identifier to write into VMXON and VMCS regions.
    pub vmcs_revision_id: u32,
    /// Bytes of a VMXON or VMCS region (at most 4096).
    pub vmcs_region_size: u16,
}

/// The control bits one optional feature owns.
#[derive(Clone, Copy, Default)]
struct FeatureBits {
    pin: u32,
    proc: u32,
    proc2: u32,
    exit: u32,
    entry: u32,
}

fn feature_bits(features: OptionalFeatures) -> FeatureBits {
    type F = OptionalFeatures;
    let mut b = FeatureBits::default();
    for feature in features.iter() {
        let (pin, proc, proc2, exit, entry) = match feature {
            F::VPID => (0, 0, Proc2::ENABLE_VPID.bits(), 0, 0),
            F::TPR_SHADOW => (0, Proc::USE_TPR_SHADOW.bits(), 0, 0, 0),
            F::VIRTUALIZE_APIC_ACCESSES => (0, 0, Proc2::VIRTUALIZE_APIC_ACCESSES.bits(), 0, 0),
            F::APIC_REGISTER_VIRTUALIZATION => {
                (0, 0, Proc2::APIC_REGISTER_VIRTUALIZATION.bits(), 0, 0)
            }
            F::VIRTUAL_INTERRUPT_DELIVERY => (0, 0, Proc2::VIRTUAL_INTERRUPT_DELIVERY.bits(), 0, 0),
            F::VIRTUALIZE_X2APIC => (0, 0, Proc2::VIRTUALIZE_X2APIC_MODE.bits(), 0, 0),
            F::PREEMPTION_TIMER => (Pin::ACTIVATE_PREEMPTION_TIMER.bits(), 0, 0, 0, 0),
            F::SAVE_PREEMPTION_TIMER => (0, 0, 0, Exit::SAVE_PREEMPTION_TIMER.bits(), 0),
            F::MONITOR_TRAP_FLAG => (0, Proc::MONITOR_TRAP_FLAG.bits(), 0, 0, 0),
            F::PML => (0, 0, Proc2::ENABLE_PML.bits(), 0, 0),
            F::RDTSCP => (0, 0, Proc2::ENABLE_RDTSCP.bits(), 0, 0),
            F::INVPCID => (0, 0, Proc2::ENABLE_INVPCID.bits(), 0, 0),
            F::XSAVES => (0, 0, Proc2::ENABLE_XSAVES_XRSTORS.bits(), 0, 0),
            F::VIRTUAL_NMIS => (Pin::VIRTUAL_NMIS.bits(), 0, 0, 0, 0),
            F::TSC_OFFSETTING => (0, Proc::USE_TSC_OFFSETTING.bits(), 0, 0, 0),
            F::PAT_SWITCHING => (
                0,
                0,
                0,
                Exit::SAVE_PAT.union(Exit::LOAD_PAT).bits(),
                Entry::LOAD_PAT.bits(),
            ),
            F::DEBUG_CONTROLS => (
                0,
                0,
                0,
                Exit::SAVE_DEBUG_CONTROLS.bits(),
                Entry::LOAD_DEBUG_CONTROLS.bits(),
            ),
            F::WBINVD_EXITING => (0, 0, Proc2::WBINVD_EXITING.bits(), 0, 0),
            // EPT A/D lives in the EPTP, the rest are capabilities without a control bit.
            _ => (0, 0, 0, 0, 0),
        };
        b.pin |= pin;
        b.proc |= proc;
        b.proc2 |= proc2;
        b.exit |= exit;
        b.entry |= entry;
    }
    b
}

/// The optional features `caps` offers, with their dependencies (SDM 27.2.1.1 rules and the
/// INVEPT/INVVPID types rhax needs to flush what the feature caches).
pub fn available_features(caps: &VmxCaps) -> OptionalFeatures {
    type F = OptionalFeatures;
    let ept = caps.ept_vpid;
    let all = |f: FeatureBits| {
        caps.pin.allows(f.pin)
            && caps.proc.allows(f.proc)
            && caps.proc2.allows(f.proc2)
            && caps.exit.allows(f.exit)
            && caps.entry.allows(f.entry)
    };
    let mut available = F::empty();
    for feature in F::all().iter() {
        if feature.bits().count_ones() != 1 {
            continue; // a group constant such as DYNAMIC, not a feature
        }
        let offered = all(feature_bits(feature))
            && match feature {
                // KVM's rule too: VPID is useless if its TLB entries cannot be invalidated.
                F::VPID => {
                    ept.contains(EptVpidCap::INVVPID)
                        && ept.intersects(
                            EptVpidCap::INVVPID_SINGLE_CONTEXT | EptVpidCap::INVVPID_ALL_CONTEXT,
                        )
                }
                // Each needs "use TPR shadow" (27.2.1.1).
                F::APIC_REGISTER_VIRTUALIZATION
                | F::VIRTUAL_INTERRUPT_DELIVERY
                | F::VIRTUALIZE_X2APIC => caps.proc.allows(Proc::USE_TPR_SHADOW.bits()),
                // Saving the timer needs the timer (27.2.1.2).
                F::SAVE_PREEMPTION_TIMER => caps.pin.allows(Pin::ACTIVATE_PREEMPTION_TIMER.bits()),
                // PML logs dirty pages through the EPT dirty flags (SDM 29.3.6).
                F::PML => ept.contains(EptVpidCap::ACCESSED_DIRTY),
                F::EPT_ACCESSED_DIRTY => ept.contains(EptVpidCap::ACCESSED_DIRTY),
                F::INVEPT_SINGLE_CONTEXT => {
                    ept.contains(EptVpidCap::INVEPT | EptVpidCap::INVEPT_SINGLE_CONTEXT)
                }
                F::INVVPID_SINGLE_CONTEXT => {
                    caps.proc2.allows(Proc2::ENABLE_VPID.bits())
                        && ept.contains(EptVpidCap::INVVPID | EptVpidCap::INVVPID_SINGLE_CONTEXT)
                }
                F::EPT_2M_PAGES => ept.contains(EptVpidCap::PAGE_2M),
                F::EPT_1G_PAGES => ept.contains(EptVpidCap::PAGE_1G),
                _ => true,
            };
        if offered {
            available |= feature;
        }
    }
    available
}

/// Checks that `value` is accepted by `allowed`, naming the offending bits otherwise.
fn check_allowed(
    field: ControlField,
    allowed: AllowedBits,
    value: u32,
) -> Result<(), NegotiationError> {
    let bad = (allowed.must_be_one & !value) | (value & !allowed.may_be_one);
    if bad == 0 {
        Ok(())
    } else {
        Err(NegotiationError::NotAllowed {
            field,
            bits: u64::from(bad),
        })
    }
}

/// Adjusts `desired` to the allowed settings and refuses the result if it has a bit of
/// `keep_off` (a must-be-one control rhax cannot live with).
fn settle(
    field: ControlField,
    allowed: AllowedBits,
    desired: u32,
    keep_off: u32,
) -> Result<u32, NegotiationError> {
    let value = allowed.adjust(desired);
    let forced = value & keep_off;
    if forced != 0 {
        return Err(NegotiationError::ForcedOn {
            field,
            bits: u64::from(forced),
        });
    }
    Ok(value)
}

/// Negotiates the VMX controls for a CPU with capabilities `caps`.
///
/// Refuses, in this order: firmware-disabled VMX, the first missing [`Feature`] in
/// [`Feature::REQUIRED`] order, a self-contradicting capability MSR, a must-be-one control
/// rhax must keep 0. Otherwise returns the baseline controls: required ones plus the
/// non-[`DYNAMIC`](OptionalFeatures::DYNAMIC) optional ones the CPU offers.
pub fn negotiate(caps: &VmxCaps) -> Result<VmxControls, NegotiationError> {
    if caps.feature_control.locked_off() {
        return Err(NegotiationError::DisabledByFirmware);
    }
    if let Some(feature) = missing_features(caps).next() {
        return Err(NegotiationError::MissingFeature(feature));
    }
    let fields = [
        (ControlField::PinBased, caps.pin),
        (ControlField::PrimaryProc, caps.proc),
        (ControlField::SecondaryProc, caps.proc2),
        (ControlField::Exit, caps.exit),
        (ControlField::Entry, caps.entry),
    ];
    for (field, allowed) in fields {
        if allowed.inconsistent() != 0 {
            return Err(NegotiationError::InconsistentCapability {
                field,
                bits: u64::from(allowed.inconsistent()),
            });
        }
    }

    let available = available_features(caps);
    // Baseline optional features: on whenever offered. They need no per-vCPU structure
    // beyond what VMCS setup always writes (VPID number, TSC offset, guest PAT/DR7/DEBUGCTL).
    let enabled = available & !OptionalFeatures::DYNAMIC;
    let optional = feature_bits(enabled);

    // Pin-based (SDM 25.6.1). External-interrupt exiting: host interrupts must reach the host
    // (Windows) while a guest runs; NMI exiting: NMIs belong to the host too (both as HAXM
    // and KVM do). Virtual NMIs come from `optional` when offered so that NMI-window exiting
    // can be used to inject NMIs precisely.
    let pin = Pin::EXTERNAL_INTERRUPT_EXITING
        .union(Pin::NMI_EXITING)
        .bits()
        | optional.pin;

    // Primary processor-based (SDM 25.6.2):
    // - HLT exiting: a halted vCPU must return to the host, which waits for an interrupt.
    // - I/O bitmaps, not unconditional I/O exiting: VMCS setup chooses the ports that exit.
    // - MSR bitmaps: common MSRs (FS/GS base, SYSENTER, ...) do not exit; the rest do.
    // - Activate secondary controls: EPT and unrestricted guest live there.
    // - CR8-load/store exiting: without TPR shadow, a 64-bit guest's MOV CR8 would write the
    //   physical TPR of the host; [`VmxControls::with`] drops them with TPR shadow.
    // - MOV-DR exiting: the hardware switches only DR7, so DR0-3/DR6 are virtualized in
    //   software to keep the guest out of the host's breakpoints (KVM and HAXM do the same).
    // - RDPMC exiting: host performance counters are not the guest's to read.
    // - MWAIT/MONITOR exiting: a guest MWAIT must not idle the physical CPU; emulated as NOP.
    // - TSC offsetting (when offered, baseline optional): guest TSC = host TSC + offset.
    // - Off: CR3-load/store and INVLPG exiting (EPT makes them unnecessary; they stay on only
    //   where the CPU forces them, i.e. without TRUE controls), RDTSC exiting, PAUSE exiting,
    //   interrupt-window and NMI-window exiting (set dynamically while an event waits), MTF
    //   and TPR shadow (dynamic), tertiary controls (none needed; none offered by Bochs).
    let proc = Proc::HLT_EXITING
        .union(Proc::USE_IO_BITMAPS)
        .union(Proc::USE_MSR_BITMAPS)
        .union(Proc::ACTIVATE_SECONDARY_CONTROLS)
        .union(CR8_EXITING)
        .union(Proc::MOV_DR_EXITING)
        .union(Proc::RDPMC_EXITING)
        .union(Proc::MWAIT_EXITING)
        .union(Proc::MONITOR_EXITING)
        .bits()
        | optional.proc;

    // Secondary (SDM 25.6.2): EPT and unrestricted guest (required); VPID, RDTSCP, INVPCID,
    // XSAVES (pass the instructions through instead of #UD) and WBINVD exiting (a guest
    // WBINVD would stall the host for milliseconds; without device passthrough it is a no-op)
    // when offered. APIC virtualization, PML: dynamic.
    let proc2 = Proc2::ENABLE_EPT.union(Proc2::UNRESTRICTED_GUEST).bits() | optional.proc2;

    // VM-exit (SDM 25.7.1):
    // - Host address-space size: the host is 64-bit Windows (27.2.2 requires it for a
    //   64-bit host).
    // - Save/load IA32_EFER: an unrestricted guest switches EFER.LME/LMA on its own while
    //   booting; loading EFER atomically on both sides avoids MSR-load lists on every exit,
    //   and every CPU with unrestricted guest has these controls.
    // - Save/load PAT and save debug controls when offered (baseline optional).
    // - Acknowledge interrupt on exit: OFF, as in HAXM. The external interrupt stays pending
    //   and the host takes it through its own IDT as soon as it enables interrupts after
    //   the exit; acknowledging would force rhax to dispatch vectors into the Windows IDT by
    //   hand. (Posted interrupts would need it; Bochs does not implement them.)
    let exit = Exit::HOST_ADDRESS_SPACE_SIZE
        .union(Exit::SAVE_EFER)
        .union(Exit::LOAD_EFER)
        .bits()
        | optional.exit;

    // VM-entry (SDM 25.8.1): load IA32_EFER (required, see above); load PAT and debug
    // controls when offered. IA-32e mode guest is 0: the power-on guest is in real mode.
    let entry = Entry::LOAD_EFER.bits() | optional.entry;

    let pin = settle(ControlField::PinBased, caps.pin, pin, PIN_KEEP_OFF.bits())?;
    let proc = settle(
        ControlField::PrimaryProc,
        caps.proc,
        proc,
        PROC_KEEP_OFF.bits(),
    )?;
    let proc2 = settle(
        ControlField::SecondaryProc,
        caps.proc2,
        proc2,
        PROC2_KEEP_OFF.bits(),
    )?;
    let exit = settle(ControlField::Exit, caps.exit, exit, EXIT_KEEP_OFF.bits())?;
    let entry = settle(
        ControlField::Entry,
        caps.entry,
        entry,
        ENTRY_KEEP_OFF.bits(),
    )?;

    // SDM 27.3.1.1: with unrestricted guest, CR0.PE and CR0.PG are not checked against the
    // fixed bits (real mode and unpaged protected mode run natively).
    let cr0_pe_pg: u64 = (1 << 0) | (1 << 31);
    let guest_cr0_fixed = FixedBits {
        must_be_one: caps.cr0_fixed.must_be_one & !cr0_pe_pg,
        may_be_one: caps.cr0_fixed.may_be_one,
    };

    let controls = VmxControls {
        pin: Pin::from_bits_retain(pin),
        proc: Proc::from_bits_retain(proc),
        proc2: Proc2::from_bits_retain(proc2),
        proc3: TertiaryProcControls::empty(),
        exit: Exit::from_bits_retain(exit),
        entry: Entry::from_bits_retain(entry),
        available,
        enabled,
        allowed: AllowedControls {
            pin: caps.pin,
            proc: caps.proc,
            proc2: caps.proc2,
            proc3_may_be_one: caps.proc3_may_be_one,
            exit: caps.exit,
            entry: caps.entry,
        },
        true_controls: caps.basic.true_controls,
        guest_cr0_fixed,
        guest_cr4_fixed: caps.cr4_fixed,
        host_cr0_fixed: caps.cr0_fixed,
        host_cr4_fixed: caps.cr4_fixed,
        ept_memory_type: MEMORY_TYPE_WB,
        ept_walk_length: 4,
        preemption_timer_rate: caps.misc.preemption_timer_rate,
        vmcs_revision_id: caps.basic.revision_id,
        vmcs_region_size: caps.basic.region_size,
    };
    controls.validate()?;
    Ok(controls)
}

impl VmxControls {
    /// The EPT pointer for a PML4 table at physical address `pml4_address` (SDM 25.6.11):
    /// memory type in bits 2:0, walk length minus 1 in bits 5:3, A/D enable in bit 6 when
    /// [`OptionalFeatures::EPT_ACCESSED_DIRTY`] is enabled. Address bits outside 51:12 are dropped.
    pub const fn eptp(&self, pml4_address: u64) -> u64 {
        let ad = if self.enabled.contains(OptionalFeatures::EPT_ACCESSED_DIRTY) {
            1 << 6
        } else {
            0
        };
        (pml4_address & 0x000F_FFFF_FFFF_F000)
            | (self.ept_memory_type as u64 & 0x7)
            | (((self.ept_walk_length as u64).wrapping_sub(1) & 0x7) << 3)
            | ad
    }

    /// The controls with `features` turned on. Fails with
    /// [`NegotiationError::Unavailable`] for features the CPU does not offer and with
    /// [`NegotiationError::Rule`] when the result breaks an SDM rule (e.g. virtual-interrupt
    /// delivery without TPR shadow: turn both on in one call).
    pub fn with(&self, features: OptionalFeatures) -> Result<Self, NegotiationError> {
        let missing = features - self.available;
        if !missing.is_empty() {
            return Err(NegotiationError::Unavailable(missing));
        }
        let bits = feature_bits(features);
        let mut next = *self;
        next.pin |= Pin::from_bits_retain(bits.pin);
        next.proc |= Proc::from_bits_retain(bits.proc);
        next.proc2 |= Proc2::from_bits_retain(bits.proc2);
        next.exit |= Exit::from_bits_retain(bits.exit);
        next.entry |= Entry::from_bits_retain(bits.entry);
        if features.contains(OptionalFeatures::TPR_SHADOW) {
            // With TPR shadow, MOV CR8 reads and writes the virtual TPR (SDM 30.3), so the
            // CR8 exits are unnecessary; drop those the CPU lets us drop. (`-=`, not `&= !`:
            // bitflags' complement would also drop the unnamed must-be-one bits.)
            next.proc -= CR8_EXITING - Proc::from_bits_retain(self.allowed.proc.must_be_one);
        }
        next.enabled |= features;
        next.validate()?;
        Ok(next)
    }

    /// The controls with `features` turned off. Fails with [`NegotiationError::ForcedOn`] if
    /// the CPU forces one of their controls to 1, or [`NegotiationError::Rule`] when the result
    /// breaks an SDM rule (e.g. TPR shadow off while virtual-interrupt delivery stays on).
    pub fn without(&self, features: OptionalFeatures) -> Result<Self, NegotiationError> {
        let bits = feature_bits(features);
        let a = self.allowed;
        let fields = [
            (ControlField::PinBased, a.pin, bits.pin),
            (ControlField::PrimaryProc, a.proc, bits.proc),
            (ControlField::SecondaryProc, a.proc2, bits.proc2),
            (ControlField::Exit, a.exit, bits.exit),
            (ControlField::Entry, a.entry, bits.entry),
        ];
        for (field, allowed, bits) in fields {
            if !allowed.can_clear(bits) {
                return Err(NegotiationError::ForcedOn {
                    field,
                    bits: u64::from(bits & allowed.must_be_one),
                });
            }
        }
        let mut next = *self;
        next.pin -= Pin::from_bits_retain(bits.pin);
        next.proc -= Proc::from_bits_retain(bits.proc);
        next.proc2 -= Proc2::from_bits_retain(bits.proc2);
        next.exit -= Exit::from_bits_retain(bits.exit);
        next.entry -= Entry::from_bits_retain(bits.entry);
        if features.contains(OptionalFeatures::TPR_SHADOW) {
            // Back to exiting on MOV CR8 (see `negotiate`); Cr8Exiting is a required feature.
            next.proc |= CR8_EXITING & Proc::from_bits_retain(a.proc.may_be_one);
        }
        next.enabled -= features;
        next.validate()?;
        Ok(next)
    }

    /// Checks every value against its allowed settings (SDM Vol. 3D A.3-A.5) and the rules
    /// between controls that VM entry checks (SDM 27.2.1.1, 27.2.1.2).
    pub fn validate(&self) -> Result<(), NegotiationError> {
        let a = self.allowed;
        check_allowed(ControlField::PinBased, a.pin, self.pin.bits())?;
        check_allowed(ControlField::PrimaryProc, a.proc, self.proc.bits())?;
        check_allowed(ControlField::SecondaryProc, a.proc2, self.proc2.bits())?;
        check_allowed(ControlField::Exit, a.exit, self.exit.bits())?;
        check_allowed(ControlField::Entry, a.entry, self.entry.bits())?;
        let proc3_bad = self.proc3.bits() & !a.proc3_may_be_one;
        if proc3_bad != 0 {
            return Err(NegotiationError::NotAllowed {
                field: ControlField::TertiaryProc,
                bits: proc3_bad,
            });
        }

        let rule = |broken: bool, rule: ControlRule| {
            if broken {
                Err(NegotiationError::Rule(rule))
            } else {
                Ok(())
            }
        };
        let (pin, proc, proc2, exit) = (self.pin, self.proc, self.proc2, self.exit);
        rule(
            !proc2.is_empty() && !proc.contains(Proc::ACTIVATE_SECONDARY_CONTROLS),
            ControlRule::SecondaryNotActivated,
        )?;
        rule(
            !self.proc3.is_empty() && !proc.contains(Proc::ACTIVATE_TERTIARY_CONTROLS),
            ControlRule::TertiaryNotActivated,
        )?;
        rule(
            !proc.contains(Proc::USE_TPR_SHADOW)
                && proc2.intersects(
                    Proc2::VIRTUALIZE_X2APIC_MODE
                        | Proc2::APIC_REGISTER_VIRTUALIZATION
                        | Proc2::VIRTUAL_INTERRUPT_DELIVERY,
                ),
            ControlRule::ApicVirtualizationNeedsTprShadow,
        )?;
        rule(
            proc2.contains(Proc2::VIRTUALIZE_X2APIC_MODE | Proc2::VIRTUALIZE_APIC_ACCESSES),
            ControlRule::X2apicExcludesApicAccesses,
        )?;
        rule(
            proc2.contains(Proc2::VIRTUAL_INTERRUPT_DELIVERY)
                && !pin.contains(Pin::EXTERNAL_INTERRUPT_EXITING),
            ControlRule::VirtualInterruptDeliveryNeedsExternalInterruptExiting,
        )?;
        rule(
            pin.contains(Pin::VIRTUAL_NMIS) && !pin.contains(Pin::NMI_EXITING),
            ControlRule::VirtualNmisNeedNmiExiting,
        )?;
        rule(
            proc.contains(Proc::NMI_WINDOW_EXITING) && !pin.contains(Pin::VIRTUAL_NMIS),
            ControlRule::NmiWindowNeedsVirtualNmis,
        )?;
        rule(
            proc2.intersects(Proc2::UNRESTRICTED_GUEST | Proc2::ENABLE_PML)
                && !proc2.contains(Proc2::ENABLE_EPT),
            ControlRule::NeedsEpt,
        )?;
        rule(
            exit.contains(Exit::SAVE_PREEMPTION_TIMER)
                && !pin.contains(Pin::ACTIVATE_PREEMPTION_TIMER),
            ControlRule::SavePreemptionTimerNeedsTimer,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::caps::VmxCapMsrs;

    fn haswell() -> VmxCapMsrs {
        VmxCapMsrs::bochs_haswell()
    }

    #[test]
    fn haswell_baseline() {
        let c = negotiate(&VmxCaps::from_msrs(&haswell())).unwrap();
        assert!(c.true_controls);
        // TRUE controls let CR3 exiting be 0 under EPT.
        assert!(!c
            .proc
            .intersects(Proc::CR3_LOAD_EXITING | Proc::CR3_STORE_EXITING));
        assert!(c
            .proc2
            .contains(Proc2::ENABLE_EPT | Proc2::UNRESTRICTED_GUEST | Proc2::ENABLE_VPID));
        assert!(c
            .exit
            .contains(Exit::HOST_ADDRESS_SPACE_SIZE | Exit::LOAD_EFER | Exit::SAVE_EFER));
        assert!(!c.exit.contains(Exit::ACK_INTERRUPT_ON_EXIT));
        assert!(!c.entry.contains(Entry::IA32E_MODE_GUEST));
        assert!(c
            .enabled
            .contains(OptionalFeatures::VPID | OptionalFeatures::EPT_ACCESSED_DIRTY));
        assert!(c
            .available
            .contains(OptionalFeatures::VIRTUAL_INTERRUPT_DELIVERY));
        assert!(!c.enabled.intersects(OptionalFeatures::DYNAMIC));
        assert_eq!(c.guest_cr0_fixed.must_be_one, 0x20); // only NE; PE and PG freed by UG
        assert_eq!(c.host_cr0_fixed.must_be_one, 0x8000_0021);
        assert_eq!(c.eptp(0x1234_5000), 0x1234_5000 | 6 | (3 << 3) | (1 << 6));
    }

    #[test]
    fn without_true_controls_cr3_exiting_is_forced_in() {
        let mut raw = haswell();
        raw.basic &= !(1 << 55);
        let c = negotiate(&VmxCaps::from_msrs(&raw)).unwrap();
        assert!(!c.true_controls);
        assert!(c
            .proc
            .contains(Proc::CR3_LOAD_EXITING | Proc::CR3_STORE_EXITING));
        assert!(c.exit.contains(Exit::SAVE_DEBUG_CONTROLS));
    }

    #[test]
    fn apicv_needs_tpr_shadow_and_excludes_x2apic_with_apic_accesses() {
        let c = negotiate(&VmxCaps::from_msrs(&haswell())).unwrap();
        assert_eq!(
            c.with(OptionalFeatures::VIRTUAL_INTERRUPT_DELIVERY),
            Err(NegotiationError::Rule(
                ControlRule::ApicVirtualizationNeedsTprShadow
            ))
        );
        let apicv = c
            .with(
                OptionalFeatures::TPR_SHADOW
                    | OptionalFeatures::APIC_REGISTER_VIRTUALIZATION
                    | OptionalFeatures::VIRTUAL_INTERRUPT_DELIVERY
                    | OptionalFeatures::VIRTUALIZE_APIC_ACCESSES,
            )
            .unwrap();
        assert!(apicv.proc.contains(Proc::USE_TPR_SHADOW));
        assert!(!apicv.proc.intersects(CR8_EXITING));
        assert_eq!(
            apicv.with(OptionalFeatures::VIRTUALIZE_X2APIC),
            Err(NegotiationError::Rule(
                ControlRule::X2apicExcludesApicAccesses
            ))
        );
        assert_eq!(
            apicv.without(OptionalFeatures::TPR_SHADOW),
            Err(NegotiationError::Rule(
                ControlRule::ApicVirtualizationNeedsTprShadow
            ))
        );
        let back = apicv
            .without(
                OptionalFeatures::TPR_SHADOW
                    | OptionalFeatures::APIC_REGISTER_VIRTUALIZATION
                    | OptionalFeatures::VIRTUAL_INTERRUPT_DELIVERY
                    | OptionalFeatures::VIRTUALIZE_APIC_ACCESSES,
            )
            .unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn mtf_unavailable_on_haswell() {
        let c = negotiate(&VmxCaps::from_msrs(&haswell())).unwrap();
        assert_eq!(
            c.with(OptionalFeatures::MONITOR_TRAP_FLAG),
            Err(NegotiationError::Unavailable(
                OptionalFeatures::MONITOR_TRAP_FLAG
            ))
        );
        let timer = c
            .with(OptionalFeatures::PREEMPTION_TIMER | OptionalFeatures::SAVE_PREEMPTION_TIMER)
            .unwrap();
        assert!(timer.pin.contains(Pin::ACTIVATE_PREEMPTION_TIMER));
        assert!(timer.exit.contains(Exit::SAVE_PREEMPTION_TIMER));
        assert_eq!(
            c.with(OptionalFeatures::SAVE_PREEMPTION_TIMER),
            Err(NegotiationError::Rule(
                ControlRule::SavePreemptionTimerNeedsTimer
            ))
        );
    }

    #[test]
    fn firmware_lock_is_reported() {
        let mut raw = haswell();
        raw.feature_control = 0x1;
        let err = negotiate(&VmxCaps::from_msrs(&raw)).unwrap_err();
        assert_eq!(err, NegotiationError::DisabledByFirmware);
    }
}
