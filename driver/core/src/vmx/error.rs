//! VMX instruction failures (Intel SDM Vol. 3C §31.2 "Conventions" and §31.4 "VM Instruction
//! Error Numbers"; section numbers follow the 2023+ SDM, chapters 25-31 for VMX).
//!
//! A VMX instruction reports failure in RFLAGS: CF=1 is `VMfailInvalid` (no current VMCS, so no
//! error number can be stored), ZF=1 is `VMfailValid` and the reason is in the read-only
//! VM-instruction error field (encoding 0x4400) of the current VMCS.

use core::fmt;

/// The failure of a VMX instruction (SDM §31.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// `VMfailInvalid`: CF=1, there is no current VMCS to hold an error number.
    Invalid,
    /// `VMfailValid`: ZF=1, with the decoded VM-instruction error field.
    Valid(VmInstructionError),
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFail::Invalid => f.write_str("VMfailInvalid"),
            VmFail::Valid(e) => write!(f, "VMfailValid({}: {})", e.number(), e.description()),
        }
    }
}

macro_rules! vm_instruction_errors {
    ($($(#[$doc:meta])* $name:ident = $num:literal, $text:literal;)*) => {
        /// The VM-instruction error numbers of SDM §31.4, Table 31-1 (1..=28).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum VmInstructionError {
            $($(#[$doc])* #[doc = $text] $name,)*
            /// A number the SDM list (as of this revision) does not define, reserved or newer.
            Unknown(u32),
        }

        impl VmInstructionError {
            /// Decodes the value of the VM-instruction error field.
            pub const fn from_number(n: u32) -> Self {
                match n {
                    $($num => Self::$name,)*
                    other => Self::Unknown(other),
                }
            }

            /// The number as stored in the VM-instruction error field.
            pub const fn number(self) -> u32 {
                match self {
                    $(Self::$name => $num,)*
                    Self::Unknown(n) => n,
                }
            }

            /// The SDM's description of the error.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Self::$name => $text,)*
                    Self::Unknown(_) => "unknown VM-instruction error number",
                }
            }
        }
    };
}

vm_instruction_errors! {
    VmcallInVmxRoot = 1, "VMCALL executed in VMX root operation";
    VmclearInvalidAddress = 2, "VMCLEAR with invalid physical address";
    VmclearVmxonPointer = 3, "VMCLEAR with VMXON pointer";
    VmlaunchNonClearVmcs = 4, "VMLAUNCH with non-clear VMCS";
    VmresumeNonLaunchedVmcs = 5, "VMRESUME with non-launched VMCS";
    VmresumeAfterVmxoff = 6, "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)";
    EntryInvalidControlFields = 7, "VM entry with invalid control field(s)";
    EntryInvalidHostStateFields = 8, "VM entry with invalid host-state field(s)";
    VmptrldInvalidAddress = 9, "VMPTRLD with invalid physical address";
    VmptrldVmxonPointer = 10, "VMPTRLD with VMXON pointer";
    VmptrldIncorrectRevision = 11, "VMPTRLD with incorrect VMCS revision identifier";
    UnsupportedVmcsComponent = 12, "VMREAD/VMWRITE from/to unsupported VMCS component";
    VmwriteReadOnlyComponent = 13, "VMWRITE to read-only VMCS component";
    VmxonInVmxRoot = 15, "VMXON executed in VMX root operation";
    EntryInvalidExecutiveVmcsPointer = 16, "VM entry with invalid executive-VMCS pointer";
    EntryNonLaunchedExecutiveVmcs = 17, "VM entry with non-launched executive VMCS";
    EntryExecutiveVmcsPointerNotVmxonPointer = 18,
        "VM entry with executive-VMCS pointer not VMXON pointer (when attempting to deactivate the dual-monitor treatment of SMIs and SMM)";
    VmcallNonClearVmcs = 19,
        "VMCALL with non-clear VMCS (when attempting to activate the dual-monitor treatment of SMIs and SMM)";
    VmcallInvalidExitControls = 20, "VMCALL with invalid VM-exit control fields";
    VmcallIncorrectMsegRevision = 22, "VMCALL with incorrect MSEG revision identifier";
    VmxoffUnderDualMonitor = 23, "VMXOFF under dual-monitor treatment of SMIs and SMM";
    VmcallInvalidSmmMonitorFeatures = 24, "VMCALL with invalid SMM-monitor features";
    EntryInvalidExecutiveControls = 25,
        "VM entry with invalid VM-execution control fields in executive VMCS (when attempting to return from SMM)";
    EntryEventsBlockedByMovSs = 26, "VM entry with events blocked by MOV SS";
    InvalidInveptInvvpidOperand = 28, "Invalid operand to INVEPT/INVVPID";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_reserved_numbers_stay_unknown() {
        for n in 0..64u32 {
            let e = VmInstructionError::from_number(n);
            assert_eq!(e.number(), n);
            // The SDM leaves 14, 21 and 27 reserved; 0 is "no error".
            let reserved = matches!(n, 0 | 14 | 21 | 27) || n > 28;
            assert_eq!(
                matches!(e, VmInstructionError::Unknown(_)),
                reserved,
                "n={n}"
            );
        }
        assert_eq!(
            VmInstructionError::from_number(12),
            VmInstructionError::UnsupportedVmcsComponent
        );
    }
}
