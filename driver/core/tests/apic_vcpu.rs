//! The in-kernel APIC wired into the HAXM vCPU (issue 12) against the software VMX: the VMX
//! controls it turns on, x2APIC MSRs and IA32_APIC_BASE through WRMSR/RDMSR exits, injection
//! at the next entry, IPIs between vCPUs through the bus, CR8 with and without the TPR
//! shadow, the TPR threshold, xAPIC MMIO through an EPT violation, TSC-deadline on the
//! preemption timer, HLT polling and MSIs, INIT/SIPI.

mod common;
use common::*;
use rhax_api::ext::ApicFlags;
use rhax_api::vcpu::SegmentDesc;
use rhax_core::apic::{decode_msi, ApicBus};
use rhax_core::vmx::caps::PrimaryProcControls;

const VALID: u64 = 1 << 31;
/// The injection path (VM-entry interruption field, interrupt windows, TPR threshold): what
/// rhax does on a CPU without virtual-interrupt delivery (sandy_bridge in Bochs), forced here
/// on the skylake_x model; `apic_vid.rs` has the tests with virtual-interrupt delivery.
const INJECT: ApicFlags = ApicFlags::NO_APIC_VIRTUALIZATION;
const TPR_SHADOW: u64 = PrimaryProcControls::USE_TPR_SHADOW.bits() as u64;
const CR8_EXITING: u64 = (PrimaryProcControls::CR8_LOAD_EXITING.bits()
    | PrimaryProcControls::CR8_STORE_EXITING.bits()) as u64;

/// A vCPU with an APIC on a fresh bus, CPUID showing x2APIC and TSC-deadline.
fn apic_setup(flags: ApicFlags) -> (T, rhax_core::apic::bus::SharedBus) {
    apic_setup_with_access(flags, 0)
}

/// As [`apic_setup`], the VM's APIC-access page at host-physical `access` (0: none).
fn apic_setup_with_access(flags: ApicFlags, access: u64) -> (T, rhax_core::apic::bus::SharedBus) {
    apic_setup_full("corei7_skylake_x", flags, access)
}

/// As [`apic_setup_with_access`] on the Bochs CPU model `model`.
fn apic_setup_full(
    model: &str,
    flags: ApicFlags,
    access: u64,
) -> (T, rhax_core::apic::bus::SharedBus) {
    let mut t = setup_model(model);
    let bus = ApicBus::shared(ApicFlags::ENABLE | flags, access).unwrap();
    t.vcpu.attach_apic(&t.platform, bus.clone()).unwrap();
    t.cpuid.allow_apic_features();
    let leaf1 = CpuidEntry {
        function: 1,
        index: 0,
        flags: 0,
        eax: 0x906ea,
        ebx: 0x0010_0800,
        ecx: (1 << 21) | (1 << 24),
        edx: 0,
        pad: [0; 3],
    };
    let max = CpuidEntry {
        function: 0x8000_0008,
        eax: 39,
        ..leaf1
    };
    t.cpuid.set(&[leaf1, max]).unwrap();
    (t, bus)
}

fn wrmsr(msr: u32, value: u64) -> Step {
    Box::new(move |c| {
        c.regs.gpr[reg::RCX] = u64::from(msr);
        c.regs.gpr[reg::RAX] = value & 0xffff_ffff;
        c.regs.gpr[reg::RDX] = value >> 32;
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(32, 0, 2);
    })
}

fn rdmsr(msr: u32) -> Step {
    Box::new(move |c| {
        c.regs.gpr[reg::RCX] = u64::from(msr);
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(31, 0, 2);
    })
}

fn hlt() -> Step {
    Box::new(|c| {
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(12, 0, 1)
    })
}

fn out_port() -> Step {
    Box::new(|c| c.exit(30, 0x0080_0000, 1))
}

/// The guest switches to x2APIC mode and software-enables its APIC (SVR = 0x1ff).
fn x2apic_on() -> Vec<Step> {
    vec![
        wrmsr(0x1b, 0xfee0_0000 | 0x900 | 0x400),
        wrmsr(0x80f, 0x1ff),
    ]
}

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
    steps.push(Box::new(|c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation),
            VALID | 0x60
        );
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        c.exit(30, 0x0080_0000, 1);
    }));
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
    t.hook(script(vec![Box::new(|c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation),
            VALID | 0x41
        );
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        c.exit(30, 0x0080_0000, 1);
    })]));
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

#[test]
fn xapic_mmio_is_served_in_the_kernel() {
    let (mut t, _bus) = apic_setup(ApicFlags::empty());
    // mov eax, [0xfee00030] (version); mov [0xfee000f0], ebx (SVR); hlt
    let code = [
        0xa1, 0x30, 0x00, 0xe0, 0xfe, 0x89, 0x1d, 0xf0, 0x00, 0xe0, 0xfe, 0xf4,
    ];
    t.mem.0.borrow_mut()[0x1000..0x1000 + code.len()].copy_from_slice(&code);
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cr0 = 0x11;
    s.cs = SegmentDesc::new(8, 0, 0xffff_ffff, 0xc09b);
    s.ss = SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xc093);
    s.ds = s.ss;
    s.es = s.ss;
    s.rip = 0x1000;
    s.regs[reg::RBX] = 0x1ff;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
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
    t.mem.0.borrow_mut()[0x1000..0x1000 + code.len()].copy_from_slice(&code);
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cr0 = 0x11;
    s.cs = SegmentDesc::new(8, 0, 0xffff_ffff, 0xc09b);
    s.ss = SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xc093);
    s.ds = s.ss;
    s.es = s.ss;
    s.rip = 0x1000;
    s.regs[reg::RBX] = 0x1ff;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
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

// Virtual-interrupt delivery (`apic_vid.rs`, SDM Vol. 3C §30.2): the software VMX plays the
// CPU's part on the virtual-APIC page (`vmx::soft_apic`).

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
    steps.push(wrmsr(0x83f, 0x40)); // SELF IPI, vector 0x40
    steps.push(Box::new(|c| {
        assert_eq!(c.delivered, Some(0x40), "delivered at entry by the CPU");
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
        assert_eq!(c.virtual_eoi(), None);
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

#[test]
fn an_xapic_icr_write_virtualized_by_the_cpu_exits_and_the_model_sends_it() {
    // Virtual-interrupt delivery with the APIC-access page (skylake_x): a write of ICR low
    // is virtualized (SDM Vol. 3C §30.4.3.1); anything but a self-IPI is a trap-like
    // APIC-write exit (reason 56) that the model must act on: here INIT and SIPI to all but
    // self start vCPU 1, as an xAPIC SMP boot does.
    let (mut t, bus) = apic_setup_with_access(ApicFlags::empty(), 0x7_7000);
    let mut v1 = second_vcpu(&t, &bus);
    t.hook(|_c: &mut GuestCpu<'_>| panic!("vCPU 1 must not enter before its SIPI"));
    v1.run(&mut t.root, &t.cpuid, &t.platform).unwrap();
    assert_eq!(v1.tunnel().status().ok(), Some(ExitStatus::Hlt));
    let rips = Rc::new(Cell::new(0u64));
    let (r1, r2) = (rips.clone(), rips.clone());
    t.hook(script(vec![
        Box::new(move |c| {
            let proc2 = c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls);
            assert_ne!(proc2 & VID, 0, "virtual-interrupt delivery");
            c.write(VmcsField::GuestRflags, 0x202);
            // INIT, level assert, shorthand all excluding self (bits 19:18 = 11).
            assert!(c.virtual_icr_write(0x000c_4500), "INIT: APIC-write exit");
            assert_eq!(c.read(VmcsField::ExitReason), 56);
            assert_eq!(c.read(VmcsField::ExitQualification), 0x300);
            // Trap-like: RIP is already past the MOV.
            let rip = c.read(VmcsField::GuestRip) + 6;
            c.write(VmcsField::GuestRip, rip);
            r1.set(rip);
        }),
        Box::new(move |c| {
            assert_eq!(
                c.read(VmcsField::GuestRip),
                r2.get(),
                "resumed where it was"
            );
            assert!(c.virtual_icr_write(0x000c_469a), "SIPI: APIC-write exit");
        }),
        out_port(),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    assert!(bus.port(1).unwrap().pending(), "INIT/SIPI posted to vCPU 1");
    t.hook(script(vec![Box::new(|c| {
        assert_eq!(c.read(VmcsField::GuestCsSelector), 0x9a00);
        assert_eq!(c.read(VmcsField::GuestCsBase), 0x9a000);
        assert_eq!(c.read(VmcsField::GuestRip), 0);
        c.exit(30, 0x0080_0000, 1);
    })]));
    v1.run(&mut t.root, &t.cpuid, &t.platform).unwrap();
    assert_eq!(v1.tunnel().status().ok(), Some(ExitStatus::Io));
    v1.core().unload(&mut t.root).ok();
    let _ = v1.destroy(&t.platform);
}

#[test]
fn an_xapic_self_ipi_is_virtualized_without_an_exit() {
    let (mut t, _bus) = apic_setup_with_access(ApicFlags::empty(), 0x7_7000);
    t.hook(script(vec![Box::new(|c| {
        c.write(VmcsField::GuestRflags, 0x202);
        // Fixed, edge, shorthand self, vector 0x45 (§30.1.5 self-IPI virtualization).
        assert!(!c.virtual_icr_write(0x0004_0045), "no exit");
        assert_eq!(c.delivered, Some(0x45));
        c.exit(30, 0x0080_0000, 1);
    })]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}
