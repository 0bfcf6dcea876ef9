//! Names of the VMX basic exit reasons, as the Intel SDM lists them (Vol. 3D, Appendix C "VMX
//! Basic Exit Reasons", 2024 edition: reasons 0..=79). Numbers the SDM leaves unused (35, 38,
//! 42, 71) have no name.

/// `NAMES[reason]`, `""` for numbers the SDM does not define.
const NAMES: [&str; 80] = [
    "EXCEPTION_NMI",          // 0
    "EXTERNAL_INTERRUPT",     // 1
    "TRIPLE_FAULT",           // 2
    "INIT",                   // 3
    "SIPI",                   // 4
    "IO_SMI",                 // 5
    "OTHER_SMI",              // 6
    "INTERRUPT_WINDOW",       // 7
    "NMI_WINDOW",             // 8
    "TASK_SWITCH",            // 9
    "CPUID",                  // 10
    "GETSEC",                 // 11
    "HLT",                    // 12
    "INVD",                   // 13
    "INVLPG",                 // 14
    "RDPMC",                  // 15
    "RDTSC",                  // 16
    "RSM",                    // 17
    "VMCALL",                 // 18
    "VMCLEAR",                // 19
    "VMLAUNCH",               // 20
    "VMPTRLD",                // 21
    "VMPTRST",                // 22
    "VMREAD",                 // 23
    "VMRESUME",               // 24
    "VMWRITE",                // 25
    "VMXOFF",                 // 26
    "VMXON",                  // 27
    "CR_ACCESS",              // 28
    "DR_ACCESS",              // 29
    "IO_INSTRUCTION",         // 30
    "RDMSR",                  // 31
    "WRMSR",                  // 32
    "ENTRY_FAIL_GUEST_STATE", // 33
    "ENTRY_FAIL_MSR_LOADING", // 34
    "",                       // 35
    "MWAIT",                  // 36
    "MONITOR_TRAP_FLAG",      // 37
    "",                       // 38
    "MONITOR",                // 39
    "PAUSE",                  // 40
    "ENTRY_FAIL_MCE",         // 41
    "",                       // 42
    "TPR_BELOW_THRESHOLD",    // 43
    "APIC_ACCESS",            // 44
    "VIRTUALIZED_EOI",        // 45
    "GDTR_IDTR_ACCESS",       // 46
    "LDTR_TR_ACCESS",         // 47
    "EPT_VIOLATION",          // 48
    "EPT_MISCONFIG",          // 49
    "INVEPT",                 // 50
    "RDTSCP",                 // 51
    "PREEMPTION_TIMER",       // 52
    "INVVPID",                // 53
    "WBINVD",                 // 54
    "XSETBV",                 // 55
    "APIC_WRITE",             // 56
    "RDRAND",                 // 57
    "INVPCID",                // 58
    "VMFUNC",                 // 59
    "ENCLS",                  // 60
    "RDSEED",                 // 61
    "PML_FULL",               // 62
    "XSAVES",                 // 63
    "XRSTORS",                // 64
    "PCONFIG",                // 65
    "SPP_EVENT",              // 66
    "UMWAIT",                 // 67
    "TPAUSE",                 // 68
    "LOADIWKEY",              // 69
    "ENCLV",                  // 70
    "",                       // 71
    "ENQCMD_PASID",           // 72
    "ENQCMDS_PASID",          // 73
    "BUS_LOCK",               // 74
    "NOTIFY",                 // 75
    "SEAMCALL",               // 76
    "TDCALL",                 // 77
    "RDMSRLIST",              // 78
    "WRMSRLIST",              // 79
];

/// The SDM name of a basic exit reason, or `None` for a number it does not define.
pub fn name(reason: u16) -> Option<&'static str> {
    NAMES
        .get(usize::from(reason))
        .copied()
        .filter(|n| !n.is_empty())
}

/// A row label: the name, or `REASON_<n>` for an undefined number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// Basic exit reason `n`.
    Reason(u16),
    /// VMX work outside any VM exit (IOCTLs, setup).
    Outside,
    /// The sum of every row.
    Total,
}

impl core::fmt::Display for Label {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Label::Reason(r) => match name(r) {
                Some(n) => f.pad(n),
                None => {
                    // Composed in a stack buffer so that width and alignment still apply.
                    let mut b = crate::fixed::StrBuf::<16>::new();
                    core::fmt::Write::write_fmt(&mut b, format_args!("REASON_{r}"))?;
                    f.pad(b.as_str())
                }
            },
            Label::Outside => f.pad("(outside exits)"),
            Label::Total => f.pad("TOTAL"),
        }
    }
}

/// A reason given by SDM name (any case, `EXIT_REASON_` prefix optional) or number (below 80).
pub fn parse(s: &str) -> Option<u16> {
    if let Ok(n) = s.parse::<u16>() {
        return (usize::from(n) < NAMES.len()).then_some(n);
    }
    let bare = s
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case("EXIT_REASON_"))
        .and_then(|_| s.get(12..))
        .unwrap_or(s);
    (0u16..)
        .zip(NAMES.iter())
        .find(|(_, n)| !n.is_empty() && n.eq_ignore_ascii_case(bare))
        .map(|(r, _)| r)
}
