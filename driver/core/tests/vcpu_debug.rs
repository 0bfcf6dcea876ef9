//! VCPU_DEBUG and HAX_EXIT_DEBUG against the software VMX: the request checks, hardware
//! breakpoints (the debugger's DR0-3 in the CPU only while the guest runs, the guest's own
//! DR7 kept apart), single step on both routes (TF on skylake_x, the monitor trap flag on
//! icelake_u), software breakpoints, and the guest's own #DB/#BP delivered to it.

mod common;
use common::*;
use rhax_api::VcpuDebug;
use rhax_core::vcpu::haxm::StepRoute;

const ENABLE: u32 = 1;
const STEP: u32 = 2;
const SW_BP: u32 = 4;
const HW_BP: u32 = 8;
const TF: u64 = 1 << 8;
const RF: u64 = 1 << 16;
const BS: u64 = 1 << 14;
/// Exit interruption information: valid, hardware exception (3) / software exception (6).
const DB_EXIT: u64 = 0x8000_0301;
const BP_EXIT: u64 = 0x8000_0601;

fn request(control: u32, dr0: u64, dr7: u64) -> VcpuDebug {
    let mut d = VcpuDebug {
        control,
        reserved: 0,
        dr: [0; 8],
    };
    d.dr[0] = dr0;
    d.dr[7] = dr7;
    d
}

/// A field as the next entry will load it (through the vCPU's VMCS cache).
fn peek(t: &mut T, f: VmcsField) -> u64 {
    t.vcpu
        .core()
        .with_vmcs(&mut t.root, |vmcs, _| vmcs.read(f))
        .unwrap()
        .unwrap()
}

/// Sets guest-state fields behind the vCPU's back (as a guest instruction would have), then
/// VMCLEARs so that the vCPU's cache reads them again.
fn poke(t: &mut T, fields: &[(VmcsField, u64)]) {
    for &(f, v) in fields {
        t.root.vmx().poke(f, v);
    }
    t.vcpu.core().unload(&mut t.root).unwrap();
}

/// Runs the guest once to an external-interrupt exit, which moves nothing: the VMCS holds
/// the power-on state, and what a test pokes into it afterwards is what the next entry sees.
fn settle(t: &mut T) {
    t.hook(|c| c.exit(1, 0, 0));
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
}

/// The guest CPU raising #DB (or #BP) with this qualification: an exception VM exit.
fn exception_exit(c: &mut GuestCpu<'_>, info: u64, qualification: u64, length: u32) {
    c.write(VmcsField::VmExitInterruptionInformation, info);
    c.exit(0, qualification, length);
}

#[test]
fn bad_requests_change_nothing() {
    let mut t = setup();
    let good = request(ENABLE | HW_BP, 0x1000, 0x1);
    t.vcpu.debug(&mut t.root, &good).unwrap();
    let before = (
        peek(&mut t, VmcsField::GuestDr7),
        peek(&mut t, VmcsField::ExceptionBitmap),
    );
    for bad in [
        request(ENABLE | 0x10, 0, 0),
        request(ENABLE | HW_BP, 0x8000_0000_0000, 0x1),
        request(ENABLE | HW_BP, 0x1000, 0x1 | (1 << 13)),
        request(ENABLE | HW_BP, 0x1000, 0x1 | (1 << 32)),
        request(ENABLE | HW_BP, 0x1000, 0x1 | (2 << 16)),
    ] {
        assert!(
            matches!(
                t.vcpu.debug(&mut t.root, &bad),
                Err(HaxError::InvalidValue(_))
            ),
            "{bad:?}"
        );
        let after = (
            peek(&mut t, VmcsField::GuestDr7),
            peek(&mut t, VmcsField::ExceptionBitmap),
        );
        assert_eq!(after, before, "{bad:?}");
    }
    // The request that was accepted is still the one in force: its breakpoint fires.
    t.hook(|c| exception_exit(c, DB_EXIT, 1, 0));
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
}

#[test]
fn hardware_breakpoint_hit_then_continue() {
    let mut t = setup();
    // The host's own breakpoint addresses, and the guest's own DR7.
    t.root.vmx().drs = [0x11, 0x22, 0x33, 0x44];
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.dr7 = 0x404; // L1
    s.rip = 0x1000;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | HW_BP, 0x1000, 0x1))
        .unwrap();
    assert_eq!(
        peek(&mut t, VmcsField::GuestDr7),
        0x401,
        "the debugger's DR7"
    );
    assert_eq!(
        peek(&mut t, VmcsField::ExceptionBitmap) & 0xa,
        0x2,
        "#DB only"
    );
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    t.hook(script(vec![
        Box::new(move |c| {
            s2.borrow_mut().push((c.drs, c.read(VmcsField::GuestDr7)));
            exception_exit(c, DB_EXIT, 1, 0); // B0: instruction breakpoint at 0x1000
        }),
        Box::new(|c| {
            assert!(
                c.read(VmcsField::GuestRflags) & RF != 0,
                "resumes at the breakpoint with RF"
            );
            c.write(VmcsField::GuestRip, 0x1001);
            c.exit(12, 0, 1); // HLT
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
    assert_eq!(
        seen.borrow()[0],
        ([0x1000, 0, 0, 0], 0x401),
        "the debugger's breakpoints while the guest ran"
    );
    assert_eq!(
        t.root.vmx().drs,
        [0x11, 0x22, 0x33, 0x44],
        "the host's back after the RUN"
    );
    let d = *t.vcpu.tunnel().debug();
    assert_eq!((d.rip, d.dr6, d.dr7), (0x1000, 0xffff_0ff1, 0x401));
    // The guest (and GET_REGS) sees its own DR7, not the debugger's.
    assert_eq!(t.vcpu.get_regs(&mut t.root).unwrap().dr7, 0x404);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    // Debugging off: the guest's own DR7 is back in the VMCS, #DB no longer intercepted.
    t.vcpu.debug(&mut t.root, &request(0, 0, 0)).unwrap();
    assert_eq!(peek(&mut t, VmcsField::GuestDr7), 0x404);
    assert_eq!(peek(&mut t, VmcsField::ExceptionBitmap) & 0xa, 0);
}

#[test]
fn guest_mov_dr7_while_debugging_reaches_its_own_dr7_only() {
    let mut t = setup();
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | HW_BP, 0x2000, 0x3))
        .unwrap();
    t.hook(script(vec![
        Box::new(|c| {
            c.regs.gpr[reg::RAX] = 0x410; // G2... L2 (bit 4)
            c.exit(29, 7, 3); // MOV DR7, RAX (direction 0 = to DR)
        }),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::GuestDr7), 0x403, "still the debugger's");
            c.exit(29, 7 | (1 << 4) | (3 << 8), 3); // MOV RBX, DR7
        }),
        Box::new(|c| {
            assert_eq!(c.regs.gpr[reg::RBX], 0x410, "the guest reads its own");
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    t.vcpu.debug(&mut t.root, &request(0, 0, 0)).unwrap();
    assert_eq!(peek(&mut t, VmcsField::GuestDr7), 0x410);
}

#[test]
fn software_breakpoint_reports_the_int3_address() {
    let mut t = setup();
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | SW_BP, 0, 0))
        .unwrap();
    assert_eq!(peek(&mut t, VmcsField::ExceptionBitmap) & 0xa, 0x8);
    t.hook(|c| {
        c.write(VmcsField::GuestRip, 0x2345);
        exception_exit(c, BP_EXIT | 2, 0, 1); // INT3 at 0x2345 (vector 3)
    });
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
    let d = *t.vcpu.tunnel().debug();
    assert_eq!((d.rip, d.dr6, d.dr7), (0x2345, 0, 0));
    assert_eq!(peek(&mut t, VmcsField::VmEntryInterruptionInformation), 0);
}

#[test]
fn guest_int3_without_sw_bp_is_delivered_to_the_guest() {
    let mut t = setup();
    // Only stepping: #BP is not the debugger's. (The bitmap would not intercept it; a CPU
    // that exits anyway must not lose it.)
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | HW_BP, 0x1000, 0x1))
        .unwrap();
    t.hook(script(vec![
        Box::new(|c| exception_exit(c, BP_EXIT | 2, 0, 1)),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0603,
                "re-injected as a software exception"
            );
            assert_eq!(c.read(VmcsField::VmEntryInstructionLength), 1);
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn guest_own_single_step_is_delivered_with_dr6() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rflags |= TF; // the guest steps itself
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | HW_BP, 0x1000, 0x1))
        .unwrap();
    t.hook(script(vec![
        Box::new(|c| exception_exit(c, DB_EXIT, BS, 0)),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0301
            );
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(s.dr6, 0xffff_4ff0, "BS in the guest's DR6");
    assert!(s.rflags & TF != 0, "the guest's own TF untouched");
}

#[test]
fn trap_flag_step_is_hidden_from_the_guest() {
    let mut t = setup();
    assert_eq!(t.vcpu.step_route(), StepRoute::TrapFlag);
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | STEP, 0, 0))
        .unwrap();
    assert_eq!(peek(&mut t, VmcsField::ExceptionBitmap) & 0xa, 0x2);
    t.hook(|c| {
        assert!(c.read(VmcsField::GuestRflags) & TF != 0, "TF for the step");
        let rip = c.read(VmcsField::GuestRip);
        c.write(VmcsField::GuestRip, rip + 2);
        exception_exit(c, DB_EXIT, BS, 0);
    });
    let rip = t.rip();
    for n in 1..=3u64 {
        assert_eq!(t.run(), Ok(ExitStatus::Debug));
        let d = *t.vcpu.tunnel().debug();
        assert_eq!((d.rip, d.dr6 & BS), (rip + 2 * n, BS));
        let s = t.vcpu.get_regs(&mut t.root).unwrap();
        assert_eq!(s.rflags & TF, 0, "GET_REGS never shows the debugger's TF");
        assert_eq!(peek(&mut t, VmcsField::GuestRflags) & TF, 0);
    }
    // Stepping off: the same #DB is the guest's now (delivered, not reported).
    t.vcpu.debug(&mut t.root, &request(0, 0, 0)).unwrap();
    assert_eq!(peek(&mut t, VmcsField::ExceptionBitmap) & 0xa, 0);
}

#[test]
fn trap_flag_step_in_an_sti_shadow_records_a_pending_bs() {
    let mut t = setup();
    settle(&mut t);
    // IF, and blocking by STI.
    poke(
        &mut t,
        &[
            (VmcsField::GuestRflags, 0x202),
            (VmcsField::GuestInterruptibilityState, 1),
        ],
    );
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | STEP, 0, 0))
        .unwrap();
    t.hook(|c| {
        assert_eq!(c.read(VmcsField::GuestPendingDebugExceptions) & BS, BS);
        c.write(VmcsField::GuestInterruptibilityState, 0);
        exception_exit(c, DB_EXIT, BS, 0);
    });
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
}

#[test]
fn soft_vmx_refuses_tf_in_an_sti_shadow_without_a_pending_bs() {
    // SDM Vol. 3C §27.3.1.5, as hardware checks it: the model must fail this entry.
    let mut t = setup();
    settle(&mut t);
    poke(
        &mut t,
        &[
            (VmcsField::GuestRflags, 0x202 | TF),
            (VmcsField::GuestInterruptibilityState, 1),
        ],
    );
    t.hook(|_| panic!("the entry must fail"));
    assert!(matches!(
        t.run(),
        Err(HaxError::InvalidGuestState { reason: 33, .. })
    ));
}

#[test]
fn queued_interrupts_wait_while_tf_steps() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rflags |= 1 << 9;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | STEP, 0, 0))
        .unwrap();
    t.vcpu.interrupt(0x30);
    t.hook(script(vec![
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation), 0);
            exception_exit(c, DB_EXIT, BS, 0);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0030,
                "injected once stepping stopped"
            );
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
    t.vcpu.debug(&mut t.root, &request(0, 0, 0)).unwrap();
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn step_over_an_instruction_the_host_completes() {
    let mut t = setup();
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | STEP, 0, 0))
        .unwrap();
    t.hook(script(vec![
        Box::new(|c| c.exit(10, 0, 2)), // CPUID: emulated in the kernel
        Box::new(|c| c.exit(30, 0x03f8_0000, 1)), // OUT DX, AL: user space
        Box::new(|c| exception_exit(c, DB_EXIT, BS, 0)),
    ]));
    let rip = t.rip();
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
    assert_eq!(t.vcpu.tunnel().debug().rip, rip + 2, "after the CPUID");
    assert_eq!(t.entries(), 1);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    assert_eq!(t.entries(), 2);
    // The OUT is a whole step: its DEBUG exit comes before the guest runs again.
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
    assert_eq!(t.vcpu.tunnel().debug().rip, rip + 3);
    assert_eq!(t.entries(), 2, "no entry for the owed step");
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
    assert_eq!(t.entries(), 3);
}

#[test]
fn monitor_trap_flag_steps_on_icelake() {
    let mut t = setup_model("corei7_icelake_u");
    assert_eq!(t.vcpu.step_route(), StepRoute::MonitorTrap);
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | STEP, 0, 0))
        .unwrap();
    let mtf = 1 << 27;
    assert_eq!(
        peek(&mut t, VmcsField::PrimaryProcessorBasedVmExecutionControls) & mtf,
        mtf
    );
    assert_eq!(peek(&mut t, VmcsField::ExceptionBitmap) & 0xa, 0x2);
    t.hook(move |c| {
        assert_eq!(
            c.read(VmcsField::GuestRflags) & TF,
            0,
            "no TF on this route"
        );
        assert_eq!(
            c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls) & mtf,
            mtf,
            "the entry has the monitor trap flag"
        );
        let rip = c.read(VmcsField::GuestRip);
        c.write(VmcsField::GuestRip, rip + 1);
        c.exit(37, 0, 0); // monitor trap flag
    });
    let rip = t.rip();
    assert_eq!(t.run(), Ok(ExitStatus::Debug));
    let d = *t.vcpu.tunnel().debug();
    assert_eq!((d.rip, d.dr6 & BS), (rip + 1, BS));
    t.vcpu.debug(&mut t.root, &request(0, 0, 0)).unwrap();
    assert_eq!(
        peek(&mut t, VmcsField::PrimaryProcessorBasedVmExecutionControls) & mtf,
        0
    );
}

#[test]
fn guest_own_breakpoints_use_its_own_addresses() {
    let mut t = setup();
    t.root.vmx().drs = [0x11, 0x22, 0x33, 0x44];
    // Enables off: nothing is loaded (no MOV to DR on the way in).
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.dr0 = 0x5000;
    s.dr1 = 1 << 47; // non-canonical: never reaches MOV to DR
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.hook(|c| {
        assert_eq!(c.drs, [0x11, 0x22, 0x33, 0x44]);
        c.exit(1, 0, 0);
    });
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    assert_eq!(t.root.vmx().counts.dr_writes, 0);
    // L0 and L1 on: the guest's own addresses while it runs, the host's after.
    s.dr7 = 0x405;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.hook(|c| {
        assert_eq!(c.drs, [0x5000, 0, 0, 0]);
        c.exit(1, 0, 0);
    });
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    assert_eq!(t.root.vmx().drs, [0x11, 0x22, 0x33, 0x44]);
    assert_eq!(t.root.vmx().counts.dr_writes, 2, "load and restore");
}

#[test]
fn soft_vmx_refuses_a_pending_rtm_debug_exception_without_rtm() {
    // SDM Vol. 3C §27.3.1.5: bit 16 of the pending debug exceptions needs RTM.
    let mut t = setup();
    settle(&mut t);
    poke(&mut t, &[(VmcsField::GuestPendingDebugExceptions, 1 << 16)]);
    t.hook(|_| panic!("the entry must fail"));
    assert!(matches!(
        t.run(),
        Err(HaxError::InvalidGuestState { reason: 33, .. })
    ));
}

#[test]
fn guest_own_tf_and_debugger_step_both_get_the_trap() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rflags |= TF; // the guest single-steps itself
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.vcpu
        .debug(&mut t.root, &request(ENABLE | STEP, 0, 0))
        .unwrap();
    t.hook(script(vec![
        Box::new(|c| {
            let rip = c.read(VmcsField::GuestRip);
            c.write(VmcsField::GuestRip, rip + 1);
            exception_exit(c, DB_EXIT, BS, 0);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0301,
                "the guest's own #DB is delivered at the next RUN"
            );
            c.exit(12, 0, 1);
        }),
    ]));
    let rip = t.rip();
    assert_eq!(t.run(), Ok(ExitStatus::Debug), "the debugger's step");
    assert_eq!(t.vcpu.tunnel().debug().rip, rip + 1);
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert!(s.rflags & TF != 0, "the guest's TF stays");
    assert_eq!(s.dr6 & BS, BS, "and its DR6 says single step");
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}
