//! The in-kernel APIC with the CPU's APIC virtualization (SDM Vol. 3C chapter 30) against the
//! software VMX: virtual-interrupt delivery (VIRR/VISR in the virtual-APIC page, EOI
//! virtualization, EOI-induced exits for level-triggered vectors) and x2APIC virtualization
//! (the controls and the MSR bitmap following the guest's APIC mode).

mod common;
use common::apic::*;
use common::*;
use rhax_api::ext::ApicFlags;
use rhax_core::apic::decode_msi;

/// Secondary control "virtual-interrupt delivery".
const VID: u64 = 1 << 9;

/// The guest interrupt status (RVI in 7:0, SVI in 15:8).
fn gis(c: &GuestCpu<'_>) -> u64 {
    c.read(VmcsField::GuestInterruptStatus)
}

#[test]
fn virtual_interrupt_delivery_is_used_where_the_cpu_has_it() {
    let (mut t, _bus) = apic_setup(ApicFlags::empty());
    let seen = Rc::new(Cell::new(0u64));
    let s2 = seen.clone();
    t.hook(script(vec![Box::new(move |c| {
        s2.set(c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls));
        assert_eq!(gis(c), 0, "nothing requested or in service");
        c.exit(30, 0x0080_0000, 1);
    })]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    assert_ne!(
        seen.get() & VID,
        0,
        "skylake_x: virtual-interrupt delivery on"
    );
    for (model, flags) in [
        ("corei7_sandy_bridge_2600k", ApicFlags::empty()),
        ("corei7_skylake_x", ApicFlags::NO_APIC_VIRTUALIZATION),
        ("corei7_skylake_x", ApicFlags::NO_TPR_SHADOW),
    ] {
        let (mut t, _bus) = apic_setup_full(model, flags, 0);
        let s2 = seen.clone();
        t.hook(script(vec![Box::new(move |c| {
            s2.set(c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls));
            c.exit(30, 0x0080_0000, 1);
        })]));
        assert_eq!(t.run(), Ok(ExitStatus::Io));
        assert_eq!(seen.get() & VID, 0, "{model} {flags:?}: injection by rhax");
    }
}

#[test]
fn a_self_ipi_is_delivered_by_the_cpu_and_its_eoi_does_not_exit() {
    let (mut t, _bus) = apic_setup(ApicFlags::empty());
    let mut steps = x2apic_on();
    steps.push(Box::new(|c| {
        // SELF IPI, vector 0x40: virtualized (x2APIC virtualization), delivered at once.
        assert!(!c.x2apic_wrmsr(0x83f, 0x40), "no exit");
        assert_eq!(c.delivered, Some(0x40), "delivered by the CPU");
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation) & VALID,
            0,
            "nothing injected by rhax"
        );
        assert_eq!(gis(c), 0x4000, "SVI 0x40, nothing else requested");
        c.regs.gpr[reg::RCX] = 0x812; // ISR bits 95:64
        c.exit(31, 0, 2);
    }));
    steps.push(Box::new(|c| {
        assert_eq!(
            c.regs.gpr[reg::RAX],
            1,
            "the model sees VISR after the exit"
        );
        assert_eq!(c.delivered, None);
        // The handler's EOI: virtualized, no exit (the vector is edge-triggered).
        assert!(!c.x2apic_wrmsr(0x80b, 0), "no exit");
        assert_eq!(gis(c), 0);
        c.regs.gpr[reg::RCX] = 0x812;
        c.exit(31, 0, 2);
    }));
    steps.push(Box::new(|c| {
        assert_eq!(
            c.regs.gpr[reg::RAX],
            0,
            "the virtualized EOI reached the model"
        );
        c.exit(30, 0x0080_0000, 1);
    }));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn a_virtual_interrupt_waits_for_rflags_if_without_a_window_and_nests_by_priority() {
    let (mut t, bus) = apic_setup(ApicFlags::empty());
    let mut steps = x2apic_on();
    steps.push(Box::new(|c| {
        // IF clear: the guest cannot take an interrupt now.
        c.write(VmcsField::GuestRflags, 0x2);
        c.exit(30, 0x0080_0000, 1);
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.delivered, None, "RFLAGS.IF clear");
        assert_eq!(gis(c) & 0xff, 0x51, "RVI holds the request");
        let proc = c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls);
        assert_eq!(
            proc & (1 << 2),
            0,
            "no interrupt window: the CPU waits itself"
        );
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(30, 0x0080_0000, 1);
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.delivered, Some(0x51));
        c.exit(30, 0x0080_0000, 1);
    }));
    steps.push(Box::new(|c| {
        // 0x61 (higher class) preempts 0x51 in service; 0x42 (lower) waits for both EOIs.
        assert_eq!(c.delivered, Some(0x61));
        assert_eq!(gis(c), 0x6142);
        assert_eq!(c.virtual_eoi(), None);
        assert_eq!(c.delivered, None, "0x42 is below 0x51 still in service");
        assert_eq!(c.virtual_eoi(), None);
        assert_eq!(c.delivered, Some(0x42), "after the second EOI");
        c.exit(30, 0x0080_0000, 1);
    }));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io)); // the x2APIC switch (no exit to user space)
    let msi = |v: u32| decode_msi(0xfee0_0000, v).unwrap();
    assert_eq!(bus.deliver(&msi(0x51), None), 1);
    assert_eq!(t.run(), Ok(ExitStatus::Io), "IF clear");
    assert_eq!(t.run(), Ok(ExitStatus::Io), "delivered");
    assert_eq!(bus.deliver(&msi(0x61), None), 1);
    assert_eq!(bus.deliver(&msi(0x42), None), 1);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn a_level_triggered_vectors_eoi_exits_to_the_model() {
    let (mut t, bus) = apic_setup(ApicFlags::empty());
    let mut steps = x2apic_on();
    steps.push(out_port());
    steps.push(Box::new(|c| {
        assert_eq!(c.delivered, Some(0x72));
        assert_eq!(
            c.read(VmcsField::EoiExitBitmap1),
            1 << (0x72 - 64),
            "the TMR bit in the EOI-exit bitmap"
        );
        // EOI-induced VM exit (reason 45), trap-like: the handler resumes the guest.
        assert_eq!(c.virtual_eoi(), Some(0x72));
    }));
    steps.push(Box::new(|c| {
        assert_eq!(gis(c), 0, "nothing in service after the EOI");
        c.regs.gpr[reg::RCX] = 0x813; // ISR bits 127:96
        c.exit(31, 0, 2);
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.regs.gpr[reg::RAX], 0);
        c.regs.gpr[reg::RCX] = 0x81b; // TMR bits 127:96
        c.exit(31, 0, 2);
    }));
    steps.push(Box::new(|c| {
        assert_eq!(
            c.regs.gpr[reg::RAX],
            1 << (0x72 - 96),
            "TMR kept: set on acceptance"
        );
        c.exit(30, 0x0080_0000, 1);
    }));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    // Level-triggered, asserted (MSI data bits 15 and 14, SDM Vol. 3A §11.11.2).
    let msi = decode_msi(0xfee0_0000, 0xc000 | 0x72).unwrap();
    assert_eq!(bus.deliver(&msi, None), 1);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

/// Secondary controls "virtualize APIC accesses" and "virtualize x2APIC mode".
const ACCESS_VIRT: u64 = 1 << 0;
const X2APIC_VIRT: u64 = 1 << 4;

#[test]
fn x2apic_virtualization_follows_the_guests_apic_mode() {
    let (mut t, bus) = apic_setup_with_access(ApicFlags::empty(), 0x7_7000);
    let mut steps: Vec<Step> = vec![Box::new(|c| {
        let proc2 = c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
        assert_ne!(proc2 & ACCESS_VIRT, 0, "xAPIC mode: the APIC-access page");
        assert_eq!(proc2 & X2APIC_VIRT, 0);
        // In xAPIC mode every x2APIC MSR exits (the model's #GP).
        assert!(c.x2apic_wrmsr(0x808, 0x20), "xAPIC mode: TPR MSR exits");
    })];
    steps.extend(x2apic_on());
    steps.push(Box::new(|c| {
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        let proc2 = c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
        assert_eq!(proc2 & ACCESS_VIRT, 0, "x2APIC mode: no APIC-access page");
        assert_ne!(proc2 & X2APIC_VIRT, 0, "x2APIC mode virtualized");
        assert!(!c.x2apic_wrmsr(0x808, 0x50), "TPR write: no exit");
        assert_eq!(c.x2apic_rdmsr(0x808), Some(0x50), "TPR read: no exit");
        assert_eq!(c.mov_from_cr8(), 5, "CR8 is the same virtual TPR");
        // With APIC-register virtualization (skylake_x) the page's registers read without
        // exits (`apic_arv.rs`); the current count always exits.
        assert_eq!(c.x2apic_rdmsr(0x80f), Some(0x1ff), "SVR read: no exit");
        assert_eq!(c.x2apic_rdmsr(0x839), None, "current-count read exits");
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.regs.gpr[reg::RAX], 0);
        assert!(
            c.x2apic_wrmsr(0x830, 0x4_0031),
            "ICR write exits (the fast path)"
        );
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.delivered, None, "0x31 is below the TPR (0x50)");
        assert_eq!(gis(c) & 0xff, 0x31, "requested");
        assert_eq!(c.x2apic_rdmsr(0x808), Some(0x50));
        // Back to xAPIC: x2APIC -> disabled -> xAPIC (SDM Vol. 3A §11.12.5).
        c.regs.gpr[reg::RCX] = 0x1b;
        c.regs.gpr[reg::RAX] = 0xfee0_0000 | 0x100;
        c.regs.gpr[reg::RDX] = 0;
        c.exit(32, 0, 2);
    }));
    steps.push(wrmsr(0x1b, 0xfee0_0000 | 0x900));
    steps.push(Box::new(|c| {
        let proc2 = c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
        assert_ne!(
            proc2 & ACCESS_VIRT,
            0,
            "xAPIC mode again: the APIC-access page"
        );
        assert_eq!(proc2 & X2APIC_VIRT, 0);
        assert!(c.x2apic_wrmsr(0x808, 0), "intercepted again");
    }));
    steps.push(Box::new(|c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation) & 0x8000_07ff,
            VALID | (3 << 8) | 13,
            "x2APIC MSR in xAPIC mode: #GP"
        );
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        c.exit(30, 0x0080_0000, 1);
    }));
    t.hook(script(steps));
    // Leaving the default xAPIC base (x2APIC mode) ends the RUN: the VM's APIC-access
    // mapping goes; coming back to it ends it again: the mapping returns (`apic_base.rs`).
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    page_dropped(&bus);
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    page_mapped(&bus);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn x2apic_virtualization_without_vid_and_when_switched_off() {
    // sandy_bridge: x2APIC virtualization without virtual-interrupt delivery: only the TPR
    // is virtualized; EOI and SELF IPI exit and are served by the model.
    let (mut t, _bus) = apic_setup_full("corei7_sandy_bridge_2600k", ApicFlags::empty(), 0);
    let mut steps = x2apic_on();
    steps.push(Box::new(|c| {
        let proc2 = c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
        assert_ne!(proc2 & X2APIC_VIRT, 0);
        assert_eq!(proc2 & VID, 0);
        assert!(!c.x2apic_wrmsr(0x808, 0x30), "TPR: no exit");
        assert!(c.x2apic_wrmsr(0x83f, 0x41), "SELF IPI exits without VID");
    }));
    steps.push(Box::new(|c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation),
            VALID | 0x41,
            "injected by rhax"
        );
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        assert!(c.x2apic_wrmsr(0x80b, 0), "EOI exits without VID");
    }));
    steps.push(Box::new(|c| {
        // TPR raised above a pending vector's class, then lowered below the threshold: the
        // TPR-below-threshold exit (reason 43) brings the vector.
        assert!(!c.x2apic_wrmsr(0x808, 0x60));
        assert!(c.x2apic_wrmsr(0x83f, 0x52));
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) & VALID, 0);
        assert_eq!(c.read(VmcsField::TprThreshold), 5);
        assert!(c.x2apic_wrmsr(0x808, 0x40), "below the threshold: exit 43");
    }));
    steps.push(injected_then_out(0x52, "the injected interrupt"));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));

    // NO_APIC_VIRTUALIZATION: x2APIC mode stays fully intercepted.
    let (mut t, _bus) = apic_setup(ApicFlags::NO_APIC_VIRTUALIZATION);
    let mut steps = x2apic_on();
    steps.push(Box::new(|c| {
        let proc2 = c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
        assert_eq!(proc2 & X2APIC_VIRT, 0);
        assert!(c.x2apic_wrmsr(0x808, 0x30), "TPR exits");
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.mov_from_cr8(), 3, "the exit's TPR write reached the page");
        c.exit(30, 0x0080_0000, 1);
    }));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn an_icr_write_virtualized_into_the_page_is_sent_at_the_apic_write_exit() {
    // xAPIC mode (the reset state), virtual-interrupt delivery on: ICR low with an NMI to
    // APIC ID 0 (ICR high 0) is not a self-IPI the CPU virtualizes, so it lands in the
    // virtual-APIC page and exits with reason 56 (SDM Vol. 3C §30.4.3.3); before, rhax
    // stopped the vCPU (STATECHANGE) there.
    let (mut t, _bus) = apic_setup(ApicFlags::empty());
    t.hook(script(vec![
        Box::new(|c| {
            assert_ne!(
                c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls) & VID,
                0
            );
            c.write(VmcsField::GuestRip, 0x1006);
            c.virtual_icr_write(0x4400); // NMI, assert, physical
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                VALID | (2 << 8) | 2,
                "the NMI the ICR write sent, injected"
            );
            assert_eq!(c.read(VmcsField::GuestRip), 0x1006, "trap-like: RIP kept");
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}
