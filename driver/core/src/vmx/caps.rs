//! VMX capability MSRs and the named bits of every VMX control field.
//!
//! Section numbers follow the Intel 64 and IA-32 Architectures Software Developer's Manual,
//! order number 325462-083US (March 2024). In that revision Vol. 3C Chapter 25 is "Virtual
//! Machine Control Structures" (25.6 execution controls, 25.7 exit controls, 25.8 entry
//! controls), Chapter 27 is "VM Entries" (27.2 control checks, 27.3 guest-state checks) and
//! Vol. 3D Appendix A is "VMX Capability Reporting Facility". Revisions before 2023 number the
//! same chapters one lower (24, 26).
//!
//! The flow is: [`VmxCapMsrs::read`] reads the raw MSR values through a caller-supplied reader
//! (RDMSR on hardware, a table in tests), calling it only for MSRs that exist (Appendix A);
//! [`VmxCaps::from_msrs`] decodes them. Decoding never fails and never panics: a strange value
//! becomes a strange capability, which negotiation (`super::negotiate`) then refuses with a
//! typed error.

use bitflags::bitflags;

/// `IA32_FEATURE_CONTROL` (SDM Vol. 3C 24.7 "Enabling and Entering VMX Operation").
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
/// `IA32_VMX_BASIC` (Appendix A.1).
pub const IA32_VMX_BASIC: u32 = 0x480;
/// `IA32_VMX_PINBASED_CTLS` (Appendix A.3.1).
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
/// `IA32_VMX_PROCBASED_CTLS` (Appendix A.3.2).
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
/// `IA32_VMX_EXIT_CTLS` (Appendix A.4.1).
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
/// `IA32_VMX_ENTRY_CTLS` (Appendix A.5).
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
/// `IA32_VMX_MISC` (Appendix A.6).
pub const IA32_VMX_MISC: u32 = 0x485;
/// `IA32_VMX_CR0_FIXED0` (Appendix A.7).
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
/// `IA32_VMX_CR0_FIXED1` (Appendix A.7).
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
/// `IA32_VMX_CR4_FIXED0` (Appendix A.8).
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
/// `IA32_VMX_CR4_FIXED1` (Appendix A.8).
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
/// `IA32_VMX_VMCS_ENUM` (Appendix A.9).
pub const IA32_VMX_VMCS_ENUM: u32 = 0x48A;
/// `IA32_VMX_PROCBASED_CTLS2` (Appendix A.3.3).
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
/// `IA32_VMX_EPT_VPID_CAP` (Appendix A.10).
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
/// `IA32_VMX_TRUE_PINBASED_CTLS` (Appendix A.3.1).
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
/// `IA32_VMX_TRUE_PROCBASED_CTLS` (Appendix A.3.2).
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
/// `IA32_VMX_TRUE_EXIT_CTLS` (Appendix A.4.1).
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
/// `IA32_VMX_TRUE_ENTRY_CTLS` (Appendix A.5).
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
/// `IA32_VMX_VMFUNC` (Appendix A.11).
pub const IA32_VMX_VMFUNC: u32 = 0x491;
/// `IA32_VMX_PROCBASED_CTLS3` (Appendix A.3.4).
pub const IA32_VMX_PROCBASED_CTLS3: u32 = 0x492;

bitflags! {
    /// `IA32_FEATURE_CONTROL` bits that gate VMXON (SDM Vol. 3C 24.7).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct FeatureControl: u64 {
        /// Bit 0: lock. Once set, WRMSR to the MSR faults until reset, so firmware's choice is final.
        const LOCK = 1 << 0;
        /// Bit 1: VMXON allowed inside SMX operation (after GETSEC[SENTER]).
        const VMX_INSIDE_SMX = 1 << 1;
        /// Bit 2: VMXON allowed outside SMX operation (the normal case).
        const VMX_OUTSIDE_SMX = 1 << 2;
    }
}

impl FeatureControl {
    /// True when firmware locked the MSR with VMXON outside SMX disabled: VMXON raises #GP
    /// and nothing the driver can do changes that before the next reset (SDM Vol. 3C 24.7).
    pub const fn locked_off(self) -> bool {
        self.contains(Self::LOCK) && !self.contains(Self::VMX_OUTSIDE_SMX)
    }
}

bitflags! {
    /// Pin-based VM-execution controls (SDM Vol. 3C 25.6.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PinBasedControls: u32 {
        /// Bit 0: external interrupts cause VM exits.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// Bit 3: non-maskable interrupts cause VM exits.
        const NMI_EXITING = 1 << 3;
        /// Bit 5: virtual NMIs (NMI blocking is tracked per guest, enables NMI-window exiting).
        const VIRTUAL_NMIS = 1 << 5;
        /// Bit 6: activate the VMX-preemption timer.
        const ACTIVATE_PREEMPTION_TIMER = 1 << 6;
        /// Bit 7: process posted interrupts.
        const PROCESS_POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags! {
    /// Primary processor-based VM-execution controls (SDM Vol. 3C 25.6.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PrimaryProcControls: u32 {
        /// Bit 2: interrupt-window exiting.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// Bit 3: use TSC offsetting.
        const USE_TSC_OFFSETTING = 1 << 3;
        /// Bit 7: HLT exiting.
        const HLT_EXITING = 1 << 7;
        /// Bit 9: INVLPG exiting.
        const INVLPG_EXITING = 1 << 9;
        /// Bit 10: MWAIT exiting.
        const MWAIT_EXITING = 1 << 10;
        /// Bit 11: RDPMC exiting.
        const RDPMC_EXITING = 1 << 11;
        /// Bit 12: RDTSC exiting.
        const RDTSC_EXITING = 1 << 12;
        /// Bit 15: CR3-load exiting.
        const CR3_LOAD_EXITING = 1 << 15;
        /// Bit 16: CR3-store exiting.
        const CR3_STORE_EXITING = 1 << 16;
        /// Bit 17: activate tertiary controls.
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        /// Bit 19: CR8-load exiting.
        const CR8_LOAD_EXITING = 1 << 19;
        /// Bit 20: CR8-store exiting.
        const CR8_STORE_EXITING = 1 << 20;
        /// Bit 21: use TPR shadow.
        const USE_TPR_SHADOW = 1 << 21;
        /// Bit 22: NMI-window exiting.
        const NMI_WINDOW_EXITING = 1 << 22;
        /// Bit 23: MOV-DR exiting.
        const MOV_DR_EXITING = 1 << 23;
        /// Bit 24: unconditional I/O exiting.
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        /// Bit 25: use I/O bitmaps.
        const USE_IO_BITMAPS = 1 << 25;
        /// Bit 27: monitor trap flag.
        const MONITOR_TRAP_FLAG = 1 << 27;
        /// Bit 28: use MSR bitmaps.
        const USE_MSR_BITMAPS = 1 << 28;
        /// Bit 29: MONITOR exiting.
        const MONITOR_EXITING = 1 << 29;
        /// Bit 30: PAUSE exiting.
        const PAUSE_EXITING = 1 << 30;
        /// Bit 31: activate secondary controls.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls (SDM Vol. 3C 25.6.2).
    /// Bits 21 and 29 are not named here (newer or reserved in the revision followed).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct SecondaryProcControls: u32 {
        /// Bit 0: virtualize APIC accesses.
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        /// Bit 1: enable EPT.
        const ENABLE_EPT = 1 << 1;
        /// Bit 2: descriptor-table exiting.
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        /// Bit 3: enable RDTSCP (otherwise RDTSCP raises #UD in the guest).
        const ENABLE_RDTSCP = 1 << 3;
        /// Bit 4: virtualize x2APIC mode.
        const VIRTUALIZE_X2APIC_MODE = 1 << 4;
        /// Bit 5: enable VPID.
        const ENABLE_VPID = 1 << 5;
        /// Bit 6: WBINVD exiting.
        const WBINVD_EXITING = 1 << 6;
        /// Bit 7: unrestricted guest.
        const UNRESTRICTED_GUEST = 1 << 7;
        /// Bit 8: APIC-register virtualization.
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        /// Bit 9: virtual-interrupt delivery.
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        /// Bit 10: PAUSE-loop exiting.
        const PAUSE_LOOP_EXITING = 1 << 10;
        /// Bit 11: RDRAND exiting.
        const RDRAND_EXITING = 1 << 11;
        /// Bit 12: enable INVPCID (otherwise INVPCID raises #UD in the guest).
        const ENABLE_INVPCID = 1 << 12;
        /// Bit 13: enable VM functions.
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        /// Bit 14: VMCS shadowing.
        const VMCS_SHADOWING = 1 << 14;
        /// Bit 15: enable ENCLS exiting.
        const ENABLE_ENCLS_EXITING = 1 << 15;
        /// Bit 16: RDSEED exiting.
        const RDSEED_EXITING = 1 << 16;
        /// Bit 17: enable PML (page-modification logging).
        const ENABLE_PML = 1 << 17;
        /// Bit 18: EPT-violation #VE.
        const EPT_VIOLATION_VE = 1 << 18;
        /// Bit 19: conceal VMX from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        /// Bit 20: enable XSAVES/XRSTORS (otherwise they raise #UD in the guest).
        const ENABLE_XSAVES_XRSTORS = 1 << 20;
        /// Bit 22: mode-based execute control for EPT.
        const MODE_BASED_EPT_EXECUTE = 1 << 22;
        /// Bit 23: sub-page write permissions for EPT.
        const SUB_PAGE_WRITE_PERMISSIONS = 1 << 23;
        /// Bit 24: Intel PT uses guest-physical addresses.
        const PT_USES_GUEST_PHYSICAL = 1 << 24;
        /// Bit 25: use TSC scaling.
        const USE_TSC_SCALING = 1 << 25;
        /// Bit 26: enable user wait and pause (otherwise TPAUSE/UMONITOR/UMWAIT raise #UD).
        const ENABLE_USER_WAIT_PAUSE = 1 << 26;
        /// Bit 27: enable PCONFIG.
        const ENABLE_PCONFIG = 1 << 27;
        /// Bit 28: enable ENCLV exiting.
        const ENABLE_ENCLV_EXITING = 1 << 28;
        /// Bit 30: VMM bus-lock detection.
        const BUS_LOCK_DETECTION = 1 << 30;
        /// Bit 31: instruction timeout ("notify VM exiting").
        const INSTRUCTION_TIMEOUT = 1 << 31;
    }
}

bitflags! {
    /// Tertiary processor-based VM-execution controls (SDM Vol. 3C 25.6.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct TertiaryProcControls: u64 {
        /// Bit 0: LOADIWKEY exiting.
        const LOADIWKEY_EXITING = 1 << 0;
        /// Bit 1: enable HLAT (hypervisor-managed linear-address translation).
        const ENABLE_HLAT = 1 << 1;
        /// Bit 2: EPT paging-write control.
        const EPT_PAGING_WRITE_CONTROL = 1 << 2;
        /// Bit 3: guest-paging verification.
        const GUEST_PAGING_VERIFICATION = 1 << 3;
        /// Bit 4: IPI virtualization.
        const IPI_VIRTUALIZATION = 1 << 4;
        /// Bit 6: enable MSR-list instructions.
        const ENABLE_MSRLIST = 1 << 6;
        /// Bit 7: virtualize IA32_SPEC_CTRL.
        const VIRTUALIZE_SPEC_CTRL = 1 << 7;
    }
}

bitflags! {
    /// Primary VM-exit controls (SDM Vol. 3C 25.7.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ExitControls: u32 {
        /// Bit 2: save debug controls (DR7, IA32_DEBUGCTL).
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// Bit 9: host address-space size (return to a 64-bit host).
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// Bit 12: load IA32_PERF_GLOBAL_CTRL.
        const LOAD_PERF_GLOBAL_CTRL = 1 << 12;
        /// Bit 15: acknowledge interrupt on exit.
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        /// Bit 18: save IA32_PAT.
        const SAVE_PAT = 1 << 18;
        /// Bit 19: load IA32_PAT.
        const LOAD_PAT = 1 << 19;
        /// Bit 20: save IA32_EFER.
        const SAVE_EFER = 1 << 20;
        /// Bit 21: load IA32_EFER.
        const LOAD_EFER = 1 << 21;
        /// Bit 22: save VMX-preemption timer value.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
        /// Bit 23: clear IA32_BNDCFGS.
        const CLEAR_BNDCFGS = 1 << 23;
        /// Bit 24: conceal VMX from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 24;
        /// Bit 25: clear IA32_RTIT_CTL.
        const CLEAR_RTIT_CTL = 1 << 25;
        /// Bit 26: clear IA32_LBR_CTL.
        const CLEAR_LBR_CTL = 1 << 26;
        /// Bit 27: clear UINV.
        const CLEAR_UINV = 1 << 27;
        /// Bit 28: load CET state.
        const LOAD_CET_STATE = 1 << 28;
        /// Bit 29: load PKRS.
        const LOAD_PKRS = 1 << 29;
        /// Bit 30: save IA32_PERF_GLOBAL_CTL.
        const SAVE_PERF_GLOBAL_CTL = 1 << 30;
        /// Bit 31: activate secondary VM-exit controls.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// VM-entry controls (SDM Vol. 3C 25.8.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct EntryControls: u32 {
        /// Bit 2: load debug controls (DR7, IA32_DEBUGCTL).
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// Bit 9: IA-32e mode guest.
        const IA32E_MODE_GUEST = 1 << 9;
        /// Bit 10: entry to SMM.
        const ENTRY_TO_SMM = 1 << 10;
        /// Bit 11: deactivate dual-monitor treatment.
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        /// Bit 13: load IA32_PERF_GLOBAL_CTRL.
        const LOAD_PERF_GLOBAL_CTRL = 1 << 13;
        /// Bit 14: load IA32_PAT.
        const LOAD_PAT = 1 << 14;
        /// Bit 15: load IA32_EFER.
        const LOAD_EFER = 1 << 15;
        /// Bit 16: load IA32_BNDCFGS.
        const LOAD_BNDCFGS = 1 << 16;
        /// Bit 17: conceal VMX from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 17;
        /// Bit 18: load IA32_RTIT_CTL.
        const LOAD_RTIT_CTL = 1 << 18;
        /// Bit 19: load UINV.
        const LOAD_UINV = 1 << 19;
        /// Bit 20: load CET state.
        const LOAD_CET_STATE = 1 << 20;
        /// Bit 21: load guest IA32_LBR_CTL.
        const LOAD_LBR_CTL = 1 << 21;
        /// Bit 22: load PKRS.
        const LOAD_PKRS = 1 << 22;
    }
}

bitflags! {
    /// `IA32_VMX_EPT_VPID_CAP` (SDM Vol. 3D Appendix A.10).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct EptVpidCap: u64 {
        /// Bit 0: execute-only EPT translations.
        const EXECUTE_ONLY = 1 << 0;
        /// Bit 6: 4-level EPT page walk.
        const PAGE_WALK_4 = 1 << 6;
        /// Bit 7: 5-level EPT page walk.
        const PAGE_WALK_5 = 1 << 7;
        /// Bit 8: EPT paging structures may be uncacheable (EPTP memory type 0).
        const MEMORY_TYPE_UC = 1 << 8;
        /// Bit 14: EPT paging structures may be write-back (EPTP memory type 6).
        const MEMORY_TYPE_WB = 1 << 14;
        /// Bit 16: 2-MByte EPT pages (PDE bit 7).
        const PAGE_2M = 1 << 16;
        /// Bit 17: 1-GByte EPT pages (PDPTE bit 7).
        const PAGE_1G = 1 << 17;
        /// Bit 20: INVEPT supported.
        const INVEPT = 1 << 20;
        /// Bit 21: accessed and dirty flags for EPT.
        const ACCESSED_DIRTY = 1 << 21;
        /// Bit 22: advanced VM-exit information for EPT violations.
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Bit 23: supervisor shadow-stack control.
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        /// Bit 25: single-context INVEPT.
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// Bit 26: all-context INVEPT.
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// Bit 32: INVVPID supported.
        const INVVPID = 1 << 32;
        /// Bit 40: individual-address INVVPID.
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Bit 41: single-context INVVPID.
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// Bit 42: all-context INVVPID.
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Bit 43: single-context-retaining-globals INVVPID.
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

/// Allowed settings of one 32-bit control field, from its capability MSR (SDM Vol. 3D A.3-A.5):
/// bits 31:0 are the allowed 0-settings (a 1 there means the control must be 1), bits 63:32
/// the allowed 1-settings (a 0 there means the control must be 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AllowedBits {
    /// Controls that must be 1 (bits 31:0 of the MSR).
    pub must_be_one: u32,
    /// Controls that may be 1 (bits 63:32 of the MSR).
    pub may_be_one: u32,
}

impl AllowedBits {
    /// Splits a capability MSR value into its allowed-0 and allowed-1 halves.
    pub const fn from_msr(value: u64) -> Self {
        Self {
            must_be_one: value as u32,
            may_be_one: (value >> 32) as u32,
        }
    }

    /// Nothing may be set: the field is absent (e.g. secondary controls on a CPU without them).
    pub const NONE: Self = Self {
        must_be_one: 0,
        may_be_one: 0,
    };

    /// The value closest to `desired` that the CPU accepts: must-be-one bits forced on,
    /// bits that may not be one cleared (the algorithm of SDM Vol. 3D A.2). The result is
    /// accepted by [`accepts`](Self::accepts) unless the MSR is [`inconsistent`](Self::inconsistent).
    pub const fn adjust(self, desired: u32) -> u32 {
        (desired | self.must_be_one) & self.may_be_one
    }

    /// True when every bit of `bits` may be 1.
    pub const fn allows(self, bits: u32) -> bool {
        bits & !self.may_be_one == 0
    }

    /// True when every bit of `bits` may be 0.
    pub const fn can_clear(self, bits: u32) -> bool {
        bits & self.must_be_one == 0
    }

    /// True when `value` may be programmed: all must-be-one bits set, nothing else disallowed.
    pub const fn accepts(self, value: u32) -> bool {
        value & self.must_be_one == self.must_be_one && value & !self.may_be_one == 0
    }

    /// Bits that must be 1 and may not be 1 at the same time: no value satisfies the MSR.
    /// Always 0 on real hardware; checked so that a corrupt value gives an error, not a bad VMCS.
    pub const fn inconsistent(self) -> u32 {
        self.must_be_one & !self.may_be_one
    }
}

/// Fixed bits of CR0 or CR4 in VMX operation (SDM Vol. 3D A.7, A.8): a bit set in FIXED0 must
/// be 1, a bit clear in FIXED1 must be 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FixedBits {
    /// Bits that must be 1 (the FIXED0 MSR).
    pub must_be_one: u64,
    /// Bits that may be 1 (the FIXED1 MSR).
    pub may_be_one: u64,
}

impl FixedBits {
    /// True when `value` respects both masks.
    pub const fn accepts(self, value: u64) -> bool {
        value & self.must_be_one == self.must_be_one && value & !self.may_be_one == 0
    }

    /// `value` with must-be-one bits set and disallowed bits cleared.
    pub const fn adjust(self, value: u64) -> u64 {
        (value | self.must_be_one) & self.may_be_one
    }
}

/// Decoded `IA32_VMX_BASIC` (SDM Vol. 3D A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VmxBasic {
    /// Bits 30:0: VMCS revision identifier, written to the first dword of VMXON and VMCS regions.
    pub revision_id: u32,
    /// Bits 44:32: bytes to allocate for VMXON and VMCS regions (at most 4096).
    pub region_size: u16,
    /// Bit 48: VMXON/VMCS/bitmap addresses are limited to 32 bits (always 0 on 64-bit CPUs).
    pub physical_address_32bit: bool,
    /// Bit 49: dual-monitor treatment of SMIs and SMM.
    pub dual_monitor: bool,
    /// Bits 53:50: memory type the CPU uses to access the VMCS (6 = write-back).
    pub memory_type: u8,
    /// Bit 54: VM exits caused by INS/OUTS report instruction information.
    pub ins_outs_info: bool,
    /// Bit 55 (and the four TRUE MSRs were read): TRUE control MSRs are used (SDM A.2).
    pub true_controls: bool,
    /// Bit 56: VM entry skips the error-code consistency check on event injection.
    pub no_error_code_check: bool,
}

impl VmxBasic {
    /// Decodes the MSR value. `true_controls` reflects only bit 55 here.
    pub const fn from_msr(value: u64) -> Self {
        Self {
            revision_id: (value & 0x7FFF_FFFF) as u32,
            region_size: ((value >> 32) & 0x1FFF) as u16,
            physical_address_32bit: value & (1 << 48) != 0,
            dual_monitor: value & (1 << 49) != 0,
            memory_type: ((value >> 50) & 0xF) as u8,
            ins_outs_info: value & (1 << 54) != 0,
            true_controls: value & (1 << 55) != 0,
            no_error_code_check: value & (1 << 56) != 0,
        }
    }
}

/// Memory type number of write-back (SDM Vol. 3A 12.3, Table 12-2; Vol. 3D A.1).
pub const MEMORY_TYPE_WB: u8 = 6;
/// Memory type number of uncacheable.
pub const MEMORY_TYPE_UC: u8 = 0;

/// Decoded `IA32_VMX_MISC` (SDM Vol. 3D A.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VmxMisc {
    /// Bits 4:0: the VMX-preemption timer counts down once every 2^rate TSC ticks.
    pub preemption_timer_rate: u8,
    /// Bit 5: VM exits store IA32_EFER.LMA into the "IA-32e mode guest" entry control. The SDM
    /// guarantees it is 1 on every CPU that supports unrestricted guest; HAXM tests this bit.
    pub stores_lma: bool,
    /// Bit 6: activity state HLT supported.
    pub activity_hlt: bool,
    /// Bit 7: activity state shutdown supported.
    pub activity_shutdown: bool,
    /// Bit 8: activity state wait-for-SIPI supported.
    pub activity_wait_for_sipi: bool,
    /// Bit 14: Intel PT may be used in VMX operation.
    pub pt_in_vmx: bool,
    /// Bit 15: RDMSR can read IA32_SMBASE in SMM.
    pub rdmsr_smbase: bool,
    /// Bits 24:16: number of CR3-target values supported.
    pub cr3_target_count: u16,
    /// Bits 27:25: recommended maximum number of MSRs in each MSR-load/store list,
    /// computed as 512 * (N + 1).
    pub max_msr_list_entries: u32,
    /// Bit 28: IA32_SMM_MONITOR_CTL bit 2 may be set (SMIs blocked by VMXOFF).
    pub smm_monitor_block_smi: bool,
    /// Bit 29: VMWRITE may write any supported field, including VM-exit information fields.
    pub vmwrite_exit_info: bool,
    /// Bit 30: VM entry may inject software interrupts/exceptions with instruction length 0.
    pub zero_length_injection: bool,
    /// Bits 63:32: MSEG revision identifier.
    pub mseg_revision_id: u32,
}

impl VmxMisc {
    /// Decodes the MSR value.
    pub const fn from_msr(value: u64) -> Self {
        Self {
            preemption_timer_rate: (value & 0x1F) as u8,
            stores_lma: value & (1 << 5) != 0,
            activity_hlt: value & (1 << 6) != 0,
            activity_shutdown: value & (1 << 7) != 0,
            activity_wait_for_sipi: value & (1 << 8) != 0,
            pt_in_vmx: value & (1 << 14) != 0,
            rdmsr_smbase: value & (1 << 15) != 0,
            cr3_target_count: ((value >> 16) & 0x1FF) as u16,
            max_msr_list_entries: 512 * (((value >> 25) & 0x7) as u32 + 1),
            smm_monitor_block_smi: value & (1 << 28) != 0,
            vmwrite_exit_info: value & (1 << 29) != 0,
            zero_length_injection: value & (1 << 30) != 0,
            mseg_revision_id: (value >> 32) as u32,
        }
    }
}

/// Raw values of every VMX capability MSR. `None` marks an MSR that does not exist on this
/// CPU (SDM Vol. 3D Appendix A says when each exists) and was therefore not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VmxCapMsrs {
    /// `IA32_FEATURE_CONTROL`.
    pub feature_control: u64,
    /// `IA32_VMX_BASIC`.
    pub basic: u64,
    /// `IA32_VMX_PINBASED_CTLS`.
    pub pinbased: u64,
    /// `IA32_VMX_PROCBASED_CTLS`.
    pub procbased: u64,
    /// `IA32_VMX_EXIT_CTLS`.
    pub exit: u64,
    /// `IA32_VMX_ENTRY_CTLS`.
    pub entry: u64,
    /// `IA32_VMX_MISC`.
    pub misc: u64,
    /// `IA32_VMX_CR0_FIXED0`.
    pub cr0_fixed0: u64,
    /// `IA32_VMX_CR0_FIXED1`.
    pub cr0_fixed1: u64,
    /// `IA32_VMX_CR4_FIXED0`.
    pub cr4_fixed0: u64,
    /// `IA32_VMX_CR4_FIXED1`.
    pub cr4_fixed1: u64,
    /// `IA32_VMX_VMCS_ENUM`.
    pub vmcs_enum: u64,
    /// `IA32_VMX_TRUE_PINBASED_CTLS`, present when BASIC bit 55 is 1.
    pub true_pinbased: Option<u64>,
    /// `IA32_VMX_TRUE_PROCBASED_CTLS`, present when BASIC bit 55 is 1.
    pub true_procbased: Option<u64>,
    /// `IA32_VMX_TRUE_EXIT_CTLS`, present when BASIC bit 55 is 1.
    pub true_exit: Option<u64>,
    /// `IA32_VMX_TRUE_ENTRY_CTLS`, present when BASIC bit 55 is 1.
    pub true_entry: Option<u64>,
    /// `IA32_VMX_PROCBASED_CTLS2`, present when primary control bit 31 may be 1.
    pub procbased2: Option<u64>,
    /// `IA32_VMX_EPT_VPID_CAP`, present when secondary control bit 1 (EPT) or 5 (VPID) may be 1.
    pub ept_vpid_cap: Option<u64>,
    /// `IA32_VMX_VMFUNC`, present when secondary control bit 13 may be 1.
    pub vmfunc: Option<u64>,
    /// `IA32_VMX_PROCBASED_CTLS3`, present when primary control bit 17 may be 1.
    pub procbased3: Option<u64>,
}

impl VmxCapMsrs {
    /// A Haswell-like model (Bochs 2.7, TRUE controls): the values host tests of the core and of
    /// the shells negotiate against (feature `soft`).
    #[cfg(any(test, feature = "soft"))]
    pub fn bochs_haswell() -> VmxCapMsrs {
        VmxCapMsrs {
            feature_control: 0x5,
            basic: 0x00d8_1000_0000_002b,
            pinbased: 0x0000_007f_0000_0016,
            procbased: 0xf7f9_fffe_0401_e172,
            exit: 0x007f_ffff_0003_6dff,
            entry: 0x0000_ffff_0000_11ff,
            misc: 0x2004_01e0,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0017_27ff,
            vmcs_enum: 0x34,
            true_pinbased: Some(0x0000_007f_0000_0016),
            true_procbased: Some(0xf7f9_fffe_0400_6172),
            true_exit: Some(0x007f_ffff_0003_6dfb),
            true_entry: Some(0x0000_ffff_0000_11fb),
            procbased2: Some(0x0004_7fff_0000_0000),
            ept_vpid_cap: Some(0x0000_0f01_0633_4141),
            vmfunc: Some(1),
            procbased3: None,
        }
    }
}

/// Allowed-1 half of IA32_VMX_PROCBASED_CTLS (or of PROCBASED_CTLS2) holding `bit`.
const fn may_be_one(msr: u64, bit: u32) -> bool {
    (msr >> 32) & (1 << bit) != 0
}

impl VmxCapMsrs {
    /// Reads every capability MSR that exists through `read` (RDMSR on hardware).
    ///
    /// The caller must have checked CPUID.01H:ECX.VMX[bit 5] = 1, which makes
    /// `IA32_FEATURE_CONTROL` and `IA32_VMX_BASIC` through `IA32_VMX_VMCS_ENUM` exist
    /// (SDM Vol. 3D A.1). `read` is then called only for the other MSRs whose existence the
    /// values already read establish (SDM Vol. 3D A.3.2-A.3.4, A.10, A.11), so that RDMSR
    /// never raises #GP on an absent MSR.
    pub fn read(mut read: impl FnMut(u32) -> u64) -> Self {
        let basic = read(IA32_VMX_BASIC);
        let procbased = read(IA32_VMX_PROCBASED_CTLS);
        let mut msrs = Self {
            feature_control: read(IA32_FEATURE_CONTROL),
            basic,
            pinbased: read(IA32_VMX_PINBASED_CTLS),
            procbased,
            exit: read(IA32_VMX_EXIT_CTLS),
            entry: read(IA32_VMX_ENTRY_CTLS),
            misc: read(IA32_VMX_MISC),
            cr0_fixed0: read(IA32_VMX_CR0_FIXED0),
            cr0_fixed1: read(IA32_VMX_CR0_FIXED1),
            cr4_fixed0: read(IA32_VMX_CR4_FIXED0),
            cr4_fixed1: read(IA32_VMX_CR4_FIXED1),
            vmcs_enum: read(IA32_VMX_VMCS_ENUM),
            ..Self::default()
        };
        // A.1: bit 55 of BASIC says the TRUE_* MSRs exist.
        if basic & (1 << 55) != 0 {
            msrs.true_pinbased = Some(read(IA32_VMX_TRUE_PINBASED_CTLS));
            msrs.true_procbased = Some(read(IA32_VMX_TRUE_PROCBASED_CTLS));
            msrs.true_exit = Some(read(IA32_VMX_TRUE_EXIT_CTLS));
            msrs.true_entry = Some(read(IA32_VMX_TRUE_ENTRY_CTLS));
        }
        // A.3.3: PROCBASED_CTLS2 exists only if "activate secondary controls" may be 1.
        if may_be_one(procbased, 31) {
            let procbased2 = read(IA32_VMX_PROCBASED_CTLS2);
            msrs.procbased2 = Some(procbased2);
            // A.10: EPT_VPID_CAP exists only if "enable EPT" or "enable VPID" may be 1.
            if may_be_one(procbased2, 1) || may_be_one(procbased2, 5) {
                msrs.ept_vpid_cap = Some(read(IA32_VMX_EPT_VPID_CAP));
            }
            // A.11: VMFUNC exists only if "enable VM functions" may be 1.
            if may_be_one(procbased2, 13) {
                msrs.vmfunc = Some(read(IA32_VMX_VMFUNC));
            }
        }
        // A.3.4: PROCBASED_CTLS3 exists only if "activate tertiary controls" may be 1.
        if may_be_one(procbased, 17) {
            msrs.procbased3 = Some(read(IA32_VMX_PROCBASED_CTLS3));
        }
        msrs
    }
}

/// The decoded VMX capabilities of one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VmxCaps {
    /// The raw values this was decoded from.
    pub raw: VmxCapMsrs,
    /// `IA32_FEATURE_CONTROL`.
    pub feature_control: FeatureControl,
    /// `IA32_VMX_BASIC`; `basic.true_controls` is true only if the TRUE MSRs were also read.
    pub basic: VmxBasic,
    /// Pin-based controls (from the TRUE MSR when `basic.true_controls`).
    pub pin: AllowedBits,
    /// Primary processor-based controls (from the TRUE MSR when `basic.true_controls`).
    pub proc: AllowedBits,
    /// Secondary processor-based controls; [`AllowedBits::NONE`] when they cannot be activated.
    pub proc2: AllowedBits,
    /// Tertiary processor-based controls that may be 1 (A.3.4: every bit may be 0); 0 when
    /// they cannot be activated.
    pub proc3_may_be_one: u64,
    /// VM-exit controls (from the TRUE MSR when `basic.true_controls`).
    pub exit: AllowedBits,
    /// VM-entry controls (from the TRUE MSR when `basic.true_controls`).
    pub entry: AllowedBits,
    /// `IA32_VMX_MISC`.
    pub misc: VmxMisc,
    /// CR0 fixed bits in VMX operation (before any unrestricted-guest relaxation).
    pub cr0_fixed: FixedBits,
    /// CR4 fixed bits in VMX operation.
    pub cr4_fixed: FixedBits,
    /// `IA32_VMX_VMCS_ENUM` bits 9:1: highest index value used in any VMCS field encoding.
    pub vmcs_max_index: u16,
    /// EPT and VPID capabilities; empty when neither EPT nor VPID may be enabled.
    pub ept_vpid: EptVpidCap,
    /// VM functions that may be enabled (bit 0: EPTP switching); 0 without VM functions.
    pub vmfunc: u64,
}

impl VmxCaps {
    /// Decodes raw MSR values. Capabilities that the values say cannot be reached (e.g.
    /// secondary controls whose activation bit may not be 1) are reported as absent, whatever
    /// the raw field holds, so a hand-built [`VmxCapMsrs`] cannot claim more than the CPU has.
    pub fn from_msrs(raw: &VmxCapMsrs) -> Self {
        let mut basic = VmxBasic::from_msr(raw.basic);
        // SDM A.2: with BASIC bit 55 set, the TRUE MSRs give the real allowed-0 settings of the
        // default-1 controls (e.g. CR3-load exiting may be 0). Their allowed-1 halves equal
        // those of the plain MSRs.
        let trues = (
            raw.true_pinbased,
            raw.true_procbased,
            raw.true_exit,
            raw.true_entry,
        );
        let (pin, proc, exit, entry) = match trues {
            (Some(pin), Some(proc), Some(exit), Some(entry)) if basic.true_controls => {
                (pin, proc, exit, entry)
            }
            _ => {
                basic.true_controls = false;
                (raw.pinbased, raw.procbased, raw.exit, raw.entry)
            }
        };
        let proc = AllowedBits::from_msr(proc);
        let secondary = PrimaryProcControls::ACTIVATE_SECONDARY_CONTROLS.bits();
        let tertiary = PrimaryProcControls::ACTIVATE_TERTIARY_CONTROLS.bits();
        let proc2 = match raw.procbased2 {
            Some(value) if proc.allows(secondary) => AllowedBits::from_msr(value),
            _ => AllowedBits::NONE,
        };
        let ept_or_vpid =
            SecondaryProcControls::ENABLE_EPT.bits() | SecondaryProcControls::ENABLE_VPID.bits();
        let ept_vpid = match raw.ept_vpid_cap {
            Some(value) if proc2.may_be_one & ept_or_vpid != 0 => {
                EptVpidCap::from_bits_retain(value)
            }
            _ => EptVpidCap::empty(),
        };
        let vmfunc = match raw.vmfunc {
            Some(value) if proc2.allows(SecondaryProcControls::ENABLE_VM_FUNCTIONS.bits()) => value,
            _ => 0,
        };
        let proc3_may_be_one = match raw.procbased3 {
            Some(value) if proc.allows(tertiary) => value,
            _ => 0,
        };
        Self {
            raw: *raw,
            feature_control: FeatureControl::from_bits_retain(raw.feature_control),
            basic,
            pin: AllowedBits::from_msr(pin),
            proc,
            proc2,
            proc3_may_be_one,
            exit: AllowedBits::from_msr(exit),
            entry: AllowedBits::from_msr(entry),
            misc: VmxMisc::from_msr(raw.misc),
            cr0_fixed: FixedBits {
                must_be_one: raw.cr0_fixed0,
                may_be_one: raw.cr0_fixed1,
            },
            cr4_fixed: FixedBits {
                must_be_one: raw.cr4_fixed0,
                may_be_one: raw.cr4_fixed1,
            },
            vmcs_max_index: ((raw.vmcs_enum >> 1) & 0x1FF) as u16,
            ept_vpid,
            vmfunc,
        }
    }

    /// Reads and decodes in one step: `VmxCaps::from_msrs(&VmxCapMsrs::read(read))`.
    pub fn read(read: impl FnMut(u32) -> u64) -> Self {
        Self::from_msrs(&VmxCapMsrs::read(read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skylake-X values from Bochs 2.7 (tests/data/bochs-vmx-msrs.tsv).
    fn skylake(msr: u32) -> u64 {
        match msr {
            IA32_FEATURE_CONTROL => 0x5,
            IA32_VMX_BASIC => 0x00d8_1000_0000_002b,
            IA32_VMX_PINBASED_CTLS | IA32_VMX_TRUE_PINBASED_CTLS => 0x0000_007f_0000_0016,
            IA32_VMX_PROCBASED_CTLS => 0xf7f9_fffe_0401_e172,
            IA32_VMX_TRUE_PROCBASED_CTLS => 0xf7f9_fffe_0400_6172,
            IA32_VMX_EXIT_CTLS => 0x007f_ffff_0003_6dff,
            IA32_VMX_TRUE_EXIT_CTLS => 0x007f_ffff_0003_6dfb,
            IA32_VMX_ENTRY_CTLS => 0x0000_ffff_0000_11ff,
            IA32_VMX_TRUE_ENTRY_CTLS => 0x0000_ffff_0000_11fb,
            IA32_VMX_MISC => 0x6004_01e0,
            IA32_VMX_CR0_FIXED0 => 0x8000_0021,
            IA32_VMX_CR0_FIXED1 => 0xffff_ffff,
            IA32_VMX_CR4_FIXED0 => 0x2000,
            IA32_VMX_CR4_FIXED1 => 0x0037_27ff,
            IA32_VMX_VMCS_ENUM => 0x34,
            IA32_VMX_PROCBASED_CTLS2 => 0x0217_7fff_0000_0000,
            IA32_VMX_EPT_VPID_CAP => 0x0000_0f01_0633_4141,
            IA32_VMX_VMFUNC => 1,
            _ => 0xdead_beef_dead_beef,
        }
    }

    #[test]
    fn decodes_skylake_x() {
        let mut reads = [0u32; 32];
        let mut n = 0;
        let caps = VmxCaps::read(|msr| {
            if let Some(slot) = reads.get_mut(n) {
                *slot = msr;
            }
            n += 1;
            skylake(msr)
        });
        // Tertiary controls may not be 1 on this model, so CTLS3 is never read.
        assert!(!reads[..n].contains(&IA32_VMX_PROCBASED_CTLS3));
        assert!(reads[..n].contains(&IA32_VMX_VMFUNC));
        assert_eq!(caps.basic.revision_id, 0x2b);
        assert_eq!(caps.basic.region_size, 4096);
        assert_eq!(caps.basic.memory_type, MEMORY_TYPE_WB);
        assert!(caps.basic.ins_outs_info && caps.basic.true_controls);
        assert!(!caps.basic.physical_address_32bit && !caps.basic.no_error_code_check);
        // TRUE values: CR3 load/store exiting (bits 15, 16) may be 0.
        assert_eq!(caps.proc.must_be_one, 0x0400_6172);
        assert_eq!(caps.exit.must_be_one, 0x0003_6dfb);
        assert_eq!(caps.misc.preemption_timer_rate, 0);
        assert_eq!(caps.misc.cr3_target_count, 4);
        assert_eq!(caps.misc.max_msr_list_entries, 512);
        assert!(caps.misc.stores_lma && caps.misc.activity_hlt && caps.misc.activity_wait_for_sipi);
        assert!(caps.misc.vmwrite_exit_info && caps.misc.zero_length_injection);
        assert_eq!(caps.vmcs_max_index, 0x1a);
        assert!(caps.ept_vpid.contains(
            EptVpidCap::PAGE_WALK_4
                | EptVpidCap::MEMORY_TYPE_WB
                | EptVpidCap::PAGE_2M
                | EptVpidCap::PAGE_1G
                | EptVpidCap::ACCESSED_DIRTY
                | EptVpidCap::INVEPT_SINGLE_CONTEXT
                | EptVpidCap::INVVPID_SINGLE_CONTEXT
        ));
        assert!(!caps.ept_vpid.contains(EptVpidCap::PAGE_WALK_5));
        assert_eq!(caps.vmfunc, 1);
        assert_eq!(caps.proc3_may_be_one, 0);
        assert!(!caps.feature_control.locked_off());
    }

    #[test]
    fn absent_msrs_are_not_read() {
        // No TRUE controls, no secondary controls: only the 12 architectural MSRs are read.
        let mut count = 0;
        let caps = VmxCaps::read(|msr| {
            count += 1;
            assert!(
                msr == IA32_FEATURE_CONTROL || (IA32_VMX_BASIC..=IA32_VMX_VMCS_ENUM).contains(&msr)
            );
            match msr {
                IA32_VMX_BASIC => 0x0000_1000_0000_0001,
                IA32_VMX_PROCBASED_CTLS => 0x7ffd_ffff_0000_0000, // bits 31 and 17 may not be 1
                _ => 0,
            }
        });
        assert_eq!(count, 12);
        assert!(!caps.basic.true_controls);
        assert_eq!(caps.proc2, AllowedBits::NONE);
    }

    #[test]
    fn tertiary_read_only_when_activatable() {
        let mut saw = false;
        let caps = VmxCaps::read(|msr| match msr {
            IA32_VMX_PROCBASED_CTLS => 1 << (32 + 17),
            IA32_VMX_PROCBASED_CTLS3 => {
                saw = true;
                0x90
            }
            _ => 0,
        });
        assert!(saw);
        assert_eq!(caps.proc3_may_be_one, 0x90);
    }

    #[test]
    fn hand_built_msrs_cannot_claim_unreachable_features() {
        let raw = VmxCapMsrs {
            basic: 1 << 55, // claims TRUE controls but carries no TRUE values
            procbased: 0,   // secondary controls cannot be activated...
            procbased2: Some(u64::MAX),
            ept_vpid_cap: Some(u64::MAX),
            vmfunc: Some(u64::MAX),
            procbased3: Some(u64::MAX),
            ..VmxCapMsrs::default()
        };
        let caps = VmxCaps::from_msrs(&raw);
        assert!(!caps.basic.true_controls);
        assert_eq!(caps.proc2, AllowedBits::NONE);
        assert!(caps.ept_vpid.is_empty());
        assert_eq!(caps.vmfunc, 0);
        assert_eq!(caps.proc3_may_be_one, 0);
    }

    #[test]
    fn allowed_bits_adjust() {
        let a = AllowedBits {
            must_be_one: 0b0011,
            may_be_one: 0b1111,
        };
        assert_eq!(a.adjust(0b1000), 0b1011);
        assert_eq!(a.adjust(0xFFFF_0000), 0b0011);
        assert!(a.accepts(0b0111) && !a.accepts(0b0101) && !a.accepts(0b1_0011));
        assert!(a.allows(0b1100) && !a.allows(0b1_0000));
        assert!(a.can_clear(0b1100) && !a.can_clear(0b0001));
        assert_eq!(a.inconsistent(), 0);
        assert_eq!(
            AllowedBits {
                must_be_one: 0b101,
                may_be_one: 0b001
            }
            .inconsistent(),
            0b100
        );
    }

    #[test]
    fn feature_control_locked_off() {
        assert!(FeatureControl::from_bits_retain(0x1).locked_off());
        assert!(!FeatureControl::from_bits_retain(0x5).locked_off());
        assert!(!FeatureControl::from_bits_retain(0x0).locked_off());
    }
}
