//! Every MSR index a Linux and a Windows guest touch while booting, with the answer rhax gives
//! (a value or #GP on read; accepted or #GP on write), through GET/SET_MSRS (the guest's
//! RDMSR/WRMSR exits share `read_msr`/`write_msr` with them; one exit of each kind is checked
//! at the end). Issue 11 item 6: the MSRs HAXM 7.8 answered must not #GP.
//!
//! Where each index comes from:
//! - Linux (v6.x `arch/x86`): `kernel/cpu/intel.c` `early_init_intel` (MISC_ENABLE 0x1a0,
//!   PLATFORM_INFO 0xce through `rdmsrl_safe`), `kernel/cpu/microcode/intel.c` (PLATFORM_ID
//!   0x17, the UCODE_REV 0x8b write-0/read pair, BIOS_UPDT_TRIG 0x79 when an update is
//!   loaded), `kernel/cpu/feat_ctl.c` (FEAT_CTL 0x3a), `kernel/apic/apic.c` (APICBASE 0x1b),
//!   `kernel/cpu/mtrr/` (MTRRcap 0xfe, deftype 0x2ff, variable 0x200-0x20f, fixed 0x250,
//!   0x258, 0x259, 0x268-0x26f), `kernel/cpu/mce/core.c` (MCG_CAP 0x179, MCG_STATUS 0x17a,
//!   the bank registers from 0x400), `mm/pat/memtype.c` (PAT 0x277), `kernel/cpu/common.c`
//!   `syscall_init` (STAR/LSTAR/CSTAR/FMASK, SYSENTER_CS/ESP/EIP) and `setup_getcpu`
//!   (TSC_AUX), `kernel/process_64.c` (FS/GS/KERNEL_GS_BASE), `kernel/tsc.c` (TSC 0x10),
//!   `events/intel/core.c` (PERF_CAPABILITIES 0x345, read by older kernels without PDCM),
//!   `kernel/cpu/bus_lock.c` (TEST_CTRL 0x33 through `rdmsrl_safe`), `drivers/thermal/intel/`
//!   (TEMPERATURE_TARGET 0x1a2).
//! - Windows: the entries of HAXM 7.8's `core/vcpu.c` lists that no Linux path reads (EBL/EBC
//!   0x2a-0x2c, FSB_FREQ 0xcd, BBL_CR_CTL3 0x11e, MCG_CTL 0x17b, MC*_CTL2 0x280-0x288): HAXM
//!   added them for the Windows and Android images it ran; this table is not from a trace.

mod common;
use common::*;

/// The answer to a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// #GP (GET_MSRS stops: `done` 0).
    Gp,
    /// This value.
    Is(u64),
    /// Some value (state-dependent: TSC, EFER).
    Any,
}
use Read::*;

/// (index, read answer, value written, write accepted).
const TABLE: &[(u32, Read, u64, bool)] = &[
    // Linux and Windows, architectural.
    (0x10, Any, 0x1000, true),                  // TSC
    (0x17, Is(0), 0, true),                     // PLATFORM_ID (soft)
    (0x1b, Is(0xfee0_0900), 0xfee0_0900, true), // APIC_BASE, vCPU 0 is the BSP
    (0x3a, Is(1), 5, false),                    // FEATURE_CONTROL: locked
    (0x8b, Is(0), 0, true),                     // BIOS_SIGN_ID: write 0, CPUID, read
    (0x79, Gp, 0x1234_5000, true),              // BIOS_UPDT_TRIG: update dropped
    (0xfe, Is(0), 0, true),                     // MTRRcap (soft)
    (0x174, Is(0), 0x10, true),                 // SYSENTER_CS
    (0x175, Is(0), 0xffff_8000_0000_0000, true),
    (0x176, Is(0), 0xffff_8000_0000_1000, true),
    (0x179, Is(0), 0, true),   // MCG_CAP (soft)
    (0x17a, Is(0), 0, true),   // MCG_STATUS
    (0x1a0, Is(0), 0x1, true), // MISC_ENABLE (soft)
    (0x1d9, Is(0), 0x1, true), // DEBUGCTL LBR
    (0x200, Is(0), 0x6, true), // MTRR physbase0
    (0x201, Is(0), 0xf_0000_0800, true),
    (0x250, Is(0), 0x0606_0606_0606_0606, true),
    (0x258, Is(0), 0x0606_0606_0606_0606, true),
    (0x259, Is(0), 0, true),
    (0x26f, Is(0), 0x0505_0505_0505_0505, true),
    (
        0x277,
        Is(0x0007_0406_0007_0406),
        0x0007_0106_0007_0406,
        true,
    ), // PAT
    (0x2ff, Is(0), 0xc06, true),     // MTRR deftype
    (0x400, Is(0), u64::MAX, true),  // MC0_CTL
    (0x401, Is(0), 0, true),         // MC0_STATUS
    (0xc000_0080, Any, 0x501, true), // EFER
    (0xc000_0081, Is(0), 0x0023_0010_0000_0000, true),
    (0xc000_0082, Is(0), 0xffff_ffff_8100_0000, true),
    (0xc000_0083, Is(0), 0xffff_ffff_8100_1000, true),
    (0xc000_0084, Is(0), 0x4_7700, true),
    (0xc000_0100, Is(0), 0x7f00_0000_0000, true),
    (0xc000_0101, Is(0), 0xffff_8880_0000_0000, true),
    (0xc000_0102, Is(0), 0, true),
    (0xc000_0103, Is(0), 1, true),
    // Probed with rdmsrl_safe/wrmsrl_safe: #GP is the expected answer (the features are
    // hidden in CPUID), as HAXM gave.
    (0x33, Gp, 0, false),  // TEST_CTRL
    (0x48, Gp, 1, false),  // SPEC_CTRL
    (0xce, Gp, 0, false),  // PLATFORM_INFO
    (0x10a, Gp, 0, false), // ARCH_CAPABILITIES
    (0x6e0, Gp, 1, false), // TSC_DEADLINE (no TSC-deadline in CPUID)
    // HAXM 7.8's constants (issue 11 item 6).
    (0x0, Is(0), 0, false), // P5_MC_ADDR
    (0x1, Is(0), 0, false), // P5_MC_TYPE
    (0x2a, Is(0), 0, true), // EBL_CR_POWERON
    (0x2b, Is(0), 0, true),
    (0x2c, Is(0), 0, true),
    (0x3f, Is(0), 0, false),            // THERM_DIODE_OFFSET
    (0xcd, Is(4), 0, false),            // FSB_FREQ
    (0xee, Is(0x8679_1b00), 0, false),  // HAXM's TEMP_TARGET
    (0x11e, Is(0xbe70_2111), 0, false), // BBL_CR_CTL3
    (0x17b, Is(3), u64::MAX, false),    // MCG_CTL
    (0x1a2, Is(0x8679_1b00), 0, false), // TEMPERATURE_TARGET
    (0x280, Is(0), 0x7fff, true),       // MC0_CTL2
    (0x288, Is(0), 0x7fff, true),       // MC8_CTL2
    (0x300, Is(0), 1, true),            // BPU counter 0
    (0x309, Is(0), 1, true),            // FIXED_CTR0
    (0x345, Is(0), 0, true),            // PERF_CAPABILITIES
    (0x38d, Is(0), 0xb, true),          // FIXED_CTR_CTRL
    (0x38f, Is(0), 0xf, true),          // PERF_GLOBAL_CTRL
    (0x3ff, Is(0), 0, true),
    (0x478, Is(0), 0xffff_ffff_ffff_ffff, true), // CPUID_FEATURE_MASK (read back)
    // Neither HAXM nor rhax: #GP both ways.
    (0x289, Gp, 0, false),
    (0x400_0000, Gp, 0, false),
    (0x4000_0000, Gp, 0, false), // Hyper-V GUEST_OS_ID: no Hyper-V CPUID leaves
];

fn get(t: &mut T, msr: u32) -> Option<u64> {
    let mut d = MsrData::from_entries(&[VmxMsr {
        entry: u64::from(msr),
        value: 0xdead,
    }])
    .unwrap();
    t.vcpu.get_msrs(&mut t.root, &mut d).unwrap();
    (d.done == 1).then_some(d.entries[0].value)
}

fn set(t: &mut T, msr: u32, value: u64) -> bool {
    let mut d = MsrData::from_entries(&[VmxMsr {
        entry: u64::from(msr),
        value,
    }])
    .unwrap();
    t.vcpu.set_msrs(&mut t.root, &mut d).unwrap();
    d.done == 1
}

#[test]
fn every_boot_msr_answers_as_the_table_says() {
    let mut t = setup();
    // PAT's power-on value (SDM Vol. 3A §13.12.4) is what the read row expects.
    let mut failures = Vec::new();
    for &(msr, read, value, write_ok) in TABLE {
        let got = get(&mut t, msr);
        let read_ok = match read {
            Gp => got.is_none(),
            Is(v) => got == Some(v),
            Any => got.is_some(),
        };
        if !read_ok {
            failures.push(format!("RDMSR {msr:#x}: got {got:x?}, want {read:x?}"));
        }
        let wrote = set(&mut t, msr, value);
        if wrote != write_ok {
            failures.push(format!("WRMSR {msr:#x} {value:#x}: accepted {wrote}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dropped_writes_do_not_change_the_fixed_answers() {
    let mut t = setup();
    assert!(set(&mut t, 0x345, 0xffff));
    assert_eq!(get(&mut t, 0x345), Some(0));
    assert!(set(&mut t, 0x2c, 7));
    assert_eq!(get(&mut t, 0x2c), Some(0));
    assert!(set(&mut t, 0x478, 0x1234));
    assert_eq!(
        get(&mut t, 0x478),
        Some(0x1234),
        "CPUID_FEATURE_MASK reads back"
    );
}

#[test]
fn guest_wrmsr_of_bios_updt_trig_is_skipped_and_rdmsr_of_perf_capabilities_answers_0() {
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            c.regs.gpr[reg::RCX] = 0x79;
            c.regs.gpr[reg::RAX] = 0x5000;
            c.regs.gpr[reg::RDX] = 0;
            c.exit(32, 0, 2);
        }),
        Box::new(|c| {
            // No event injected: the write was accepted.
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) >> 31, 0);
            c.regs.gpr[reg::RCX] = 0x345;
            c.regs.gpr[reg::RAX] = 0x55;
            c.regs.gpr[reg::RDX] = 0x66;
            c.exit(31, 0, 2);
        }),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) >> 31, 0);
            assert_eq!((c.regs.gpr[reg::RAX], c.regs.gpr[reg::RDX]), (0, 0));
            c.regs.gpr[reg::RCX] = 0x79; // RDMSR BIOS_UPDT_TRIG: #GP
            c.exit(31, 0, 2);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_030d
            );
            c.exit(12, 0, 1);
        }),
    ]));
    let rip = t.rip();
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    // WRMSR and RDMSR skipped (2 + 2), the faulting RDMSR not, HLT skipped (1).
    assert_eq!(t.rip(), rip + 5);
}
