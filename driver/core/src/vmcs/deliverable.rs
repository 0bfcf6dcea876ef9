//! Which basic exit reasons a CPU can deliver under given VM-execution controls (SDM Vol. 3C
//! §26.1 "Instructions that cause VM exits", §26.2 "Other causes of VM exits", Appendix C).
//!
//! The oracle for the test that every exit the CPU can deliver has a handler: a reason is here
//! when the CPU may deliver it unconditionally, or when a control rhax programs (or may turn
//! on at run time: interrupt-window exiting, the controls `VmxControls::with` adds) makes it
//! possible.

use crate::vmx::caps::{PinBasedControls as Pin, PrimaryProcControls as Proc};
use crate::vmx::caps::{SecondaryProcControls as Proc2, TertiaryProcControls as Proc3};
use crate::vmx::negotiate::VmxControls;

/// A set of basic exit reasons (0..=127).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitReasonSet(u128);

impl ExitReasonSet {
    /// Adds `reason`.
    pub fn insert(&mut self, reason: u16) {
        if reason < 128 {
            self.0 |= 1 << reason;
        }
    }

    /// True when `reason` is in the set.
    pub fn contains(&self, reason: u16) -> bool {
        reason < 128 && self.0 & (1 << reason) != 0
    }

    /// The reasons, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..128u16).filter(|&r| self.contains(r))
    }
}

/// Every basic exit reason the CPU can deliver to a guest run with `c` (entry failures 33, 34
/// and 41 included: they come with bit 31 set).
pub fn deliverable_exit_reasons(c: &VmxControls) -> ExitReasonSet {
    let mut s = ExitReasonSet::default();
    // Unconditional (SDM §26.1.2, §26.2): triple fault, INIT, task switch, CPUID, GETSEC,
    // INVD, the VMX instructions (VMCALL..VMXON, INVEPT, INVVPID), XSETBV, and the entry
    // failures. SIPI needs the wait-for-SIPI state, which a guest enters through INIT.
    for r in [2, 3, 4, 9, 10, 11, 13, 33, 34, 41, 50, 53, 55] {
        s.insert(r);
    }
    for r in 18..=27 {
        s.insert(r);
    }
    // MOV to CR0/CR4 with bits owned by the host (the guest/host masks are never 0: the VMX
    // fixed bits are host-owned), MOV CR8 without TPR shadow; CLTS, LMSW.
    s.insert(28);
    // Port IO through the bitmaps, MSRs through the MSR bitmap, EPT.
    for r in [30, 31, 32, 48, 49] {
        s.insert(r);
    }
    let pin = c.pin;
    if pin.contains(Pin::NMI_EXITING) {
        s.insert(0);
    }
    if pin.contains(Pin::EXTERNAL_INTERRUPT_EXITING) {
        s.insert(1);
    }
    if pin.contains(Pin::ACTIVATE_PREEMPTION_TIMER)
        || c.available
            .contains(crate::vmx::negotiate::OptionalFeatures::PREEMPTION_TIMER)
    {
        s.insert(52);
    }
    // Interrupt-window exiting is turned on at run time whenever an interrupt waits.
    s.insert(7);
    let p = c.proc;
    for (bit, reason) in [
        (Proc::NMI_WINDOW_EXITING, 8),
        (Proc::HLT_EXITING, 12),
        (Proc::INVLPG_EXITING, 14),
        (Proc::RDPMC_EXITING, 15),
        (Proc::RDTSC_EXITING, 16),
        (Proc::MOV_DR_EXITING, 29),
        (Proc::MWAIT_EXITING, 36),
        (Proc::MONITOR_TRAP_FLAG, 37),
        (Proc::MONITOR_EXITING, 39),
        (Proc::PAUSE_EXITING, 40),
        (Proc::USE_TPR_SHADOW, 43),
    ] {
        if p.contains(bit) {
            s.insert(reason);
        }
    }
    if p.contains(Proc::ACTIVATE_SECONDARY_CONTROLS) {
        let p2 = c.proc2;
        for (bit, reasons) in [
            (Proc2::VIRTUALIZE_APIC_ACCESSES, &[44u16][..]),
            (Proc2::DESCRIPTOR_TABLE_EXITING, &[46, 47]),
            (Proc2::ENABLE_RDTSCP, &[51]),
            (Proc2::WBINVD_EXITING, &[54]),
            (Proc2::APIC_REGISTER_VIRTUALIZATION, &[56]),
            (Proc2::VIRTUAL_INTERRUPT_DELIVERY, &[45]),
            (Proc2::PAUSE_LOOP_EXITING, &[40]),
            (Proc2::RDRAND_EXITING, &[57]),
            (Proc2::ENABLE_VM_FUNCTIONS, &[59]),
            (Proc2::ENABLE_ENCLS_EXITING, &[60]),
            (Proc2::RDSEED_EXITING, &[61]),
            (Proc2::ENABLE_PML, &[62]),
            (Proc2::SUB_PAGE_WRITE_PERMISSIONS, &[66]),
            (Proc2::ENABLE_USER_WAIT_PAUSE, &[67, 68]),
            (Proc2::ENABLE_ENCLV_EXITING, &[71]),
            (Proc2::BUS_LOCK_DETECTION, &[74]),
            (Proc2::INSTRUCTION_TIMEOUT, &[75]),
        ] {
            if p2.contains(bit) {
                for &r in reasons {
                    s.insert(r);
                }
            }
        }
        // XSAVES/XRSTORS exit only for components set in the XSS-exiting bitmap, which VMCS
        // setup writes as 0 (vmcs::setup::write_controls).
        // INVPCID exits with "enable INVPCID" and INVLPG exiting (SDM §26.1.3).
        if p2.contains(Proc2::ENABLE_INVPCID) && p.contains(Proc::INVLPG_EXITING) {
            s.insert(58);
        }
        // RDTSCP exits with "enable RDTSCP" and RDTSC exiting; without RDTSC exiting it
        // runs natively.
        if !(p2.contains(Proc2::ENABLE_RDTSCP) && p.contains(Proc::RDTSC_EXITING)) {
            s.0 &= !(1 << 51);
        }
    }
    if p.contains(Proc::ACTIVATE_TERTIARY_CONTROLS) && c.proc3.contains(Proc3::LOADIWKEY_EXITING) {
        s.insert(69);
    }
    s
}
