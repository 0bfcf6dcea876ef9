//! The in-kernel APIC wired into the HAXM vCPU (issue 12) against the software VMX: the VMX
//! controls it turns on, x2APIC MSRs and IA32_APIC_BASE through WRMSR/RDMSR exits, injection
//! at the next entry, IPIs between vCPUs through the bus, CR8 with and without the TPR
//! shadow, the TPR threshold, xAPIC MMIO through an EPT violation, TSC-deadline on the
//! preemption timer, HLT polling and MSIs, INIT/SIPI.

mod common;
use common::*;
use rhax_api::ext::ApicFlags;
use rhax_core::apic::decode_msi;

use common::apic::*;

#[test]
fn tpr_shadow_on_where_the_cpu_has_it_with_cr8_exits_off() {
    let (mut t, _bus) = apic_setup(ApicFlags::empty());
    let seen = Rc::new(Cell::new((0u64, 0u64)));
    let s2 = seen.clone();
    t.hook(script(vec![Box::new(move |c| {
        s2.set((
            c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls),
            c.read(VmcsField::VirtualApicAddress),
        ));
        c.exit(30, 0x0080_0000, 1);
    })]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let (proc, page) = seen.get();
    assert_ne!(proc & TPR_SHADOW, 0, "TPR shadow on");
    assert_eq!(proc & CR8_EXITING, 0, "CR8 accesses do not exit");
    assert!(
        page != 0 && page & 0xfff == 0,
        "virtual-APIC page {page:#x}"
    );

    let (mut t, _bus) = apic_setup(ApicFlags::NO_TPR_SHADOW);
    t.hook(script(vec![Box::new(move |c| {
        assert_eq!(
            c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls) & TPR_SHADOW,
            0
        );
        c.exit(30, 0x0080_0000, 1);
    })]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn x2apic_self_ipi_is_injected_at_the_next_entry_and_eoi_clears_isr() {
    let (mut t, _bus) = apic_setup(INJECT);
    let mut steps = x2apic_on();
    steps.push(wrmsr(0x83f, 0x40)); // SELF IPI, vector 0x40
    steps.push(Box::new(|c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation),
            VALID | 0x40,
            "the self-IPI injected as an external interrupt"
        );
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        c.regs.gpr[reg::RCX] = 0x812; // ISR bits 95:64
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(31, 0, 2);
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.regs.gpr[reg::RAX], 1, "ISR bit 0x40 set while in service");
        c.regs.gpr[reg::RCX] = 0x80b; // EOI
        c.regs.gpr[reg::RAX] = 0;
        c.regs.gpr[reg::RDX] = 0;
        c.exit(32, 0, 2);
    }));
    steps.push(rdmsr(0x812));
    steps.push(Box::new(|c| {
        assert_eq!(c.regs.gpr[reg::RAX], 0, "EOI cleared the ISR bit");
        assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) & VALID, 0);
        c.exit(30, 0x0080_0000, 1);
    }));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn apic_base_rules_are_the_guests_gp() {
    let (mut t, _bus) = apic_setup(ApicFlags::empty());
    t.hook(script(vec![
        // x2APIC straight from disabled is illegal (SDM Vol. 3A §11.12.5): bit 10 without 11.
        wrmsr(0x1b, 0xfee0_0000 | 0x100 | 0x400),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation) & 0x8000_07ff,
                VALID | (3 << 8) | 13,
                "#GP"
            );
            c.write(VmcsField::VmEntryInterruptionInformation, 0);
            c.regs.gpr[reg::RCX] = 0x802; // x2APIC ID in xAPIC mode: #GP
            c.exit(31, 0, 2);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation) & 0x8000_07ff,
                VALID | (3 << 8) | 13
            );
            c.write(VmcsField::VmEntryInterruptionInformation, 0);
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    // Relocating the base in xAPIC mode is accepted and read back.
    t.hook(script(vec![
        wrmsr(0x1b, 0xfed0_0000 | 0x900),
        rdmsr(0x1b),
        Box::new(|c| {
            assert_eq!(c.regs.gpr[reg::RAX], 0xfed0_0900);
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn cr8_without_the_tpr_shadow_is_the_tpr_and_reserved_bits_fault() {
    let (mut t, _bus) = apic_setup(ApicFlags::NO_TPR_SHADOW);
    t.hook(script(vec![
        Box::new(|c| {
            c.regs.gpr[reg::RAX] = 5;
            c.exit(28, 8, 4); // MOV CR8, RAX
        }),
        Box::new(|c| c.exit(28, 8 | (1 << 4) | (1 << 8), 4)), // MOV RCX, CR8
        Box::new(|c| {
            assert_eq!(c.regs.gpr[reg::RCX], 5, "CR8 reads TPR[7:4]");
            c.regs.gpr[reg::RAX] = 16;
            c.exit(28, 8, 4);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation) & 0x8000_07ff,
                VALID | (3 << 8) | 13,
                "CR8 bits 63:4 set: #GP"
            );
            c.write(VmcsField::VmEntryInterruptionInformation, 0);
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    // Without the APIC the same CR8 write is dropped and reads 0, as HAXM does.
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            c.regs.gpr[reg::RAX] = 5;
            c.exit(28, 8, 4);
        }),
        Box::new(|c| c.exit(28, 8 | (1 << 4) | (1 << 8), 4)),
        Box::new(|c| {
            assert_eq!(c.regs.gpr[reg::RCX], 0);
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn a_cr8_write_through_the_tpr_shadow_survives_the_next_apic_exit() {
    // The guest's CR8 write changes only the virtual-APIC page; an x2APIC ICR write (the
    // fast path) and a TPR read that follow must see it, and the page must keep it (each
    // path writes the model's TPR back to the page).
    for flags in [INJECT, ApicFlags::empty(), ApicFlags::NO_FAST_PATHS] {
        let (mut t, _bus) = apic_setup(flags);
        let mut steps = x2apic_on();
        steps.push(Box::new(|c| {
            assert!(!c.mov_to_cr8(7), "above the threshold: no exit");
            c.regs.gpr[reg::RCX] = 0x830;
            c.regs.gpr[reg::RAX] = (1 << 18) | 0x30; // self (shorthand), fixed, vector 0x30
            c.regs.gpr[reg::RDX] = 0;
            c.write(VmcsField::GuestRflags, 0x202);
            c.exit(32, 0, 2);
        }));
        steps.push(Box::new(|c| {
            assert_eq!(c.mov_from_cr8(), 7, "the page keeps the guest's CR8 write");
            c.regs.gpr[reg::RCX] = 0x808;
            c.write(VmcsField::GuestRflags, 0x202);
            c.exit(31, 0, 2);
        }));
        steps.push(Box::new(|c| {
            assert_eq!(c.regs.gpr[reg::RAX], 0x70, "x2APIC TPR = CR8 << 4");
            assert_eq!(c.mov_from_cr8(), 7);
            c.exit(30, 0x0080_0000, 1);
        }));
        t.hook(script(steps));
        assert_eq!(t.run(), Ok(ExitStatus::Io), "{flags:?}");
    }
}

#[test]
fn a_vector_held_back_by_the_tpr_sets_the_threshold_and_arrives_when_it_drops() {
    let (mut t, _bus) = apic_setup(INJECT);
    let mut steps = x2apic_on();
    steps.push(wrmsr(0x808, 0x50)); // TPR 0x50
    steps.push(wrmsr(0x83f, 0x45)); // class 4 <= 5: held back
    steps.push(Box::new(|c| {
        assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) & VALID, 0);
        assert_eq!(
            c.read(VmcsField::TprThreshold),
            4,
            "threshold = the vector's class"
        );
        c.regs.gpr[reg::RCX] = 0x808;
        c.regs.gpr[reg::RAX] = 0x30;
        c.regs.gpr[reg::RDX] = 0;
        c.exit(32, 0, 2); // TPR 0x30
    }));
    steps.push(Box::new(|c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation),
            VALID | 0x45
        );
        assert_eq!(c.read(VmcsField::TprThreshold), 0);
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        c.exit(30, 0x0080_0000, 1);
    }));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn interrupts_wait_for_rflags_if_with_an_interrupt_window() {
    let (mut t, _bus) = apic_setup(INJECT);
    let mut steps = x2apic_on();
    steps.push(Box::new(|c| {
        // SELF IPI with IF = 0.
        c.regs.gpr[reg::RCX] = 0x83f;
        c.regs.gpr[reg::RAX] = 0x60;
        c.regs.gpr[reg::RDX] = 0;
        c.write(VmcsField::GuestRflags, 0x2);
        c.exit(32, 0, 2);
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) & VALID, 0);
        let proc = c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls);
        assert_ne!(proc & (1 << 2), 0, "interrupt-window exiting on");
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(7, 0, 0); // the window opens
    }));
    steps.push(injected_then_out(0x60, "the injected interrupt"));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

/// A second vCPU (id 1) on the same bus and root.
fn second_vcpu(t: &T, bus: &rhax_core::apic::bus::SharedBus) -> HaxVcpu {
    let controls = negotiate(t.root.caps()).unwrap();
    let mut v = HaxVcpu::new(&t.platform, &controls, 0, 1, controls.eptp(0x4000_0000)).unwrap();
    v.attach_apic(&t.platform, bus.clone()).unwrap();
    v
}

#[test]
fn x2apic_icr_reaches_another_vcpu_through_the_bus_and_init_sipi_start_it() {
    let (mut t, bus) = apic_setup(ApicFlags::empty());
    let mut v1 = second_vcpu(&t, &bus);
    // vCPU 1 waits for SIPI: a RUN returns HLT without entering the guest.
    let entries = t.entries();
    t.hook(|_c: &mut GuestCpu<'_>| panic!("vCPU 1 must not enter before its SIPI"));
    let st = v1.run(&mut t.root, &t.cpuid, &t.platform).unwrap();
    assert_eq!(st, RunStep::Done);
    assert_eq!(v1.tunnel().status().ok(), Some(ExitStatus::Hlt));
    assert_eq!(t.entries(), entries);
    // vCPU 0: x2APIC on, INIT then SIPI (vector 0x9a) to ID 1, then a fixed IPI 0x70.
    let mut steps = x2apic_on();
    steps.push(wrmsr(0x830, (1 << 32) | (5 << 8) | (1 << 14))); // INIT, assert
    steps.push(wrmsr(0x830, (1 << 32) | (6 << 8) | 0x9a)); // SIPI
    steps.push(wrmsr(0x830, (1 << 32) | 0x70)); // fixed, physical
    steps.push(out_port());
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    assert!(bus.port(1).unwrap().pending(), "posted into vCPU 1's port");
    // vCPU 1 starts in real mode at 0x9a000 and takes nothing until its APIC is enabled.
    t.hook(script(vec![Box::new(|c| {
        assert_eq!(c.read(VmcsField::GuestCsSelector), 0x9a00);
        assert_eq!(c.read(VmcsField::GuestCsBase), 0x9a000);
        assert_eq!(c.read(VmcsField::GuestRip), 0);
        assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) & VALID, 0);
        c.exit(30, 0x0080_0000, 1);
    })]));
    v1.run(&mut t.root, &t.cpuid, &t.platform).unwrap();
    assert_eq!(v1.tunnel().status().ok(), Some(ExitStatus::Io));
    v1.core().unload(&mut t.root).ok();
    let _ = v1.destroy(&t.platform);
}

#[test]
fn an_msi_wakes_a_halted_vcpu() {
    let (mut t, bus) = apic_setup(INJECT);
    let mut steps = x2apic_on();
    steps.push(hlt());
    t.hook(script(steps));
    // The halt polls, then RUN returns HLT with the guest still halted.
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let rip = t.rip();
    t.hook(|_c: &mut GuestCpu<'_>| panic!("a halted vCPU must not enter"));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt), "still halted");
    assert_eq!(t.rip(), rip);
    let ipi = decode_msi(0xfee0_0000, 0x41).unwrap();
    assert_eq!(bus.deliver(&ipi, None), 1, "vCPU 0 addressed");
    t.hook(script(vec![injected_then_out(
        0x41,
        "the injected interrupt",
    )]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn tsc_deadline_runs_on_the_preemption_timer() {
    let (mut t, _bus) = apic_setup(INJECT);
    let mut steps = x2apic_on();
    steps.push(wrmsr(0x832, 0x30 | (2 << 17))); // LVT timer: TSC-deadline, vector 0x30
    steps.push(out_port());
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let now = rhax_core::vmx::Vmx::rdtsc(t.root.vmx());
    let deadline = now + 1_000_000;
    let rate = negotiate(t.root.caps()).unwrap().preemption_timer_rate;
    t.hook(script(vec![
        wrmsr(0x6e0, deadline),
        Box::new(move |c| {
            let v = c.read(VmcsField::VmxPreemptionTimerValue);
            assert!(
                v <= 1_000_000 >> rate && v > 0,
                "timer value {v} bounded by the deadline ({})",
                1_000_000u64 >> rate
            );
            c.exit(52, 0, 0); // the preemption timer expires (early: the TSC did not move)
        }),
    ]));
    // Not due yet: the slice's INTERRUPT.
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    // Time passes; the next entry fires the deadline's interrupt.
    t.root.vmx().advance_tsc(2_000_000);
    t.hook(script(vec![Box::new(move |c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation),
            VALID | 0x30,
            "the deadline's interrupt"
        );
        assert_eq!(
            c.read(VmcsField::VmxPreemptionTimerValue),
            4_000_000 >> rate,
            "disarmed: the slice again"
        );
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        c.exit(30, 0x0080_0000, 1);
    })]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

/// vCPU 0 with x2APIC on, its timer in TSC-deadline mode (vector 0x30) armed `ahead` TSC
/// ticks from the start of the next RUN, and a vCPU 1 on the bus to send IPIs to.
fn ipi_sender_with_timer(ahead: u64) -> (T, rhax_core::apic::bus::SharedBus, HaxVcpu, u64) {
    let (mut t, bus) = apic_setup(INJECT);
    let v1 = second_vcpu(&t, &bus);
    let mut steps = x2apic_on();
    steps.push(wrmsr(0x832, 0x30 | (2 << 17))); // LVT timer: TSC-deadline, vector 0x30
    steps.push(out_port());
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let deadline = rhax_core::vmx::Vmx::rdtsc(t.root.vmx()) + ahead;
    (t, bus, v1, deadline)
}

fn drop_vcpu(t: &mut T, mut v: HaxVcpu) {
    v.core().unload(&mut t.root).ok();
    let _ = v.destroy(&t.platform);
}

#[test]
fn an_ipi_to_another_vcpu_reenters_with_the_timer_counted_from_the_fast_path() {
    // The fast path's direct re-entry skips the APIC's entry work but not the timer: the
    // preemption value of the next entry counts from the fast path, not from the entry
    // before it (the soft CPU's TSC moves 1,000 ticks per entry).
    let (mut t, bus, v1, deadline) = ipi_sender_with_timer(1_000_000);
    let values = Rc::new(RefCell::new(Vec::new()));
    let mut steps = vec![wrmsr(0x6e0, deadline)];
    for _ in 0..3 {
        let v = values.clone();
        let mut ipi = wrmsr(0x830, (1 << 32) | 0x70); // fixed, physical, to vCPU 1
        steps.push(Box::new(move |c| {
            v.borrow_mut()
                .push(c.read(VmcsField::VmxPreemptionTimerValue));
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) & VALID, 0);
            ipi(c);
        }));
    }
    steps.push(out_port());
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    assert!(bus.port(1).unwrap().pending(), "posted into vCPU 1's port");
    let v = values.borrow();
    assert_eq!(v.len(), 3);
    assert!(v[0] > 0, "armed: {v:?}");
    assert!(
        v[1] < v[0] && v[2] < v[1],
        "each entry counts down from its own now: {v:?}"
    );
    drop_vcpu(&mut t, v1);
}

#[test]
fn a_timer_due_at_an_ipi_fast_path_fires_at_the_next_entry() {
    // Due between the entry before the IPI and the fast path: the re-entry goes the long
    // way, which fires it.
    let (mut t, _bus, v1, deadline) = ipi_sender_with_timer(1_500);
    t.hook(script(vec![
        wrmsr(0x6e0, deadline),
        wrmsr(0x830, (1 << 32) | 0x70),
        injected_then_out(0x30, "the deadline's interrupt at the entry after the IPI"),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    drop_vcpu(&mut t, v1);
}

#[test]
fn an_icr_ipi_to_its_own_id_is_injected_at_the_next_entry() {
    // Fixed, physical, destination = this vCPU's own ID (not the self shorthand): routed
    // through the bus into its own port, which the direct re-entry must not pass by.
    let (mut t, _bus) = apic_setup(INJECT);
    let mut steps = x2apic_on();
    steps.push(wrmsr(0x830, 0x71));
    steps.push(injected_then_out(0x71, "the injected interrupt"));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn xapic_mmio_is_served_in_the_kernel() {
    let (mut t, _bus) = apic_setup(ApicFlags::empty());
    // mov eax, [0xfee00030] (version); mov [0xfee000f0], ebx (SVR); hlt
    let code = [
        0xa1, 0x30, 0x00, 0xe0, 0xfe, 0x89, 0x1d, 0xf0, 0x00, 0xe0, 0xfe, 0xf4,
    ];
    t.flat32(&code, |s| {
        s.regs[reg::RBX] = 0x1ff;
    });
    let violation = |gpa: u64| -> Step {
        Box::new(move |c| {
            c.write(VmcsField::GuestPhysicalAddress, gpa);
            c.exit(48, 2, 0);
        })
    };
    t.hook(script(vec![
        violation(0xfee0_0030),
        violation(0xfee0_00f0),
        Box::new(|c| {
            assert_eq!(
                c.regs.gpr[reg::RAX] & 0xff,
                0x14,
                "version read in the kernel"
            );
            assert_eq!(c.read(VmcsField::GuestRip), 0x100b);
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn apic_access_exits_are_served_like_the_mmio_path() {
    let (mut t, _bus) = apic_setup_with_access(ApicFlags::empty(), 0x7_7000);
    // mov [0xfee000f0], ebx (SVR); mov eax, [0xfee00030] (version)
    let code = [
        0x89, 0x1d, 0xf0, 0x00, 0xe0, 0xfe, 0xa1, 0x30, 0x00, 0xe0, 0xfe,
    ];
    t.flat32(&code, |s| {
        s.regs[reg::RBX] = 0x1ff;
    });
    t.hook(script(vec![
        Box::new(|c| {
            let proc2 = c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
            assert_ne!(proc2 & 1, 0, "virtualize APIC accesses");
            assert_eq!(c.read(VmcsField::ApicAccessAddress), 0x7_7000);
            c.exit(44, (1 << 12) | 0xf0, 0); // linear write, SVR
        }),
        Box::new(|c| c.exit(44, 0x30, 0)), // linear read, version
        Box::new(|c| {
            assert_eq!(
                c.regs.gpr[reg::RAX] & 0xff,
                0x14,
                "version read in the kernel"
            );
            assert_eq!(c.read(VmcsField::GuestRip), 0x100b);
            // During event delivery: the vCPU stops.
            c.exit(44, (3 << 12) | 0x30, 0);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::StateChange));
}

/// An xAPIC EOI write (APIC-access exit, linear write at offset B0H) is KVM's fast EOI: the
/// model takes the EOI and RIP moves by the VM-exit instruction length, with no fetch of the
/// instruction (the bytes at RIP are not even an instruction here). Without a plausible
/// length (an undefined field reads 0 in the model) it takes the general path, which does.
#[test]
fn xapic_eoi_takes_the_fast_path_without_a_fetch() {
    let (mut t, bus) = apic_setup_with_access(INJECT, 0x7_7000);
    // mov [0xfee000f0], ebx (SVR: software-enable), then bytes that decode to nothing useful.
    let code = [0x89, 0x1d, 0xf0, 0x00, 0xe0, 0xfe, 0x0f, 0x0b, 0x0f, 0x0b];
    t.flat32(&code, |s| {
        s.rflags = 0x202;
        s.regs[reg::RBX] = 0x1ff;
    });
    t.hook(script(vec![
        Box::new(|c| c.exit(44, (1 << 12) | 0xf0, 0)), // linear write, SVR (general path)
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::GuestRip), 0x1006);
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let ipi = decode_msi(0xfee0_0000, 0x51).unwrap();
    assert_eq!(bus.deliver(&ipi, None), 1);
    t.hook(script(vec![
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                VALID | 0x51,
                "the MSI injected"
            );
            // The handler's EOI: a 3-byte MOV the fast path skips by the exit's length.
            c.exit(44, (1 << 12) | 0xb0, 3);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::GuestRip),
                0x100a,
                "RIP past the EOI write"
            );
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let mut out = vec![0u8; rhax_api::apic::RhaxApicState::SIZE];
    t.vcpu.write_apic_state(&mut out).unwrap();
    let state = <rhax_api::apic::RhaxApicState as rhax_api::pod::Pod>::from_bytes(&out).unwrap();
    // The ISR: eight registers at offsets 100H-170H.
    let isr: Vec<u32> = (0..8)
        .map(|i| state.reg(0x100 + 0x10 * i).unwrap())
        .collect();
    assert!(
        isr.iter().all(|&w| w == 0),
        "the EOI cleared the ISR: {isr:x?}"
    );
}

/// Where the VM-exit instruction length cannot be one (the field is undefined for an
/// APIC-access exit; the model leaves 0), the EOI write takes the general path: the
/// instruction is fetched and emulated (here a MOV of EBX to the EOI register).
#[test]
fn xapic_eoi_without_a_plausible_length_takes_the_general_path() {
    let (mut t, _bus) = apic_setup_with_access(INJECT, 0x7_7000);
    // mov [0xfee000b0], ebx
    let code = [0x89, 0x1d, 0xb0, 0x00, 0xe0, 0xfe];
    t.flat32(&code, |_| {});
    t.hook(script(vec![
        Box::new(|c| c.exit(44, (1 << 12) | 0xb0, 0)),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::GuestRip), 0x1006, "decoded: 6 bytes");
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}
