//! The HAXM vCPU end to end against the software VMX: the hook plays the guest CPU, a buffer
//! plays guest RAM (everything at or above 1 MiB is MMIO). Each exit status of haxm-abi.md §4,
//! the completions at the next RUN, event injection, register/MSR/CPUID IOCTLs, bad inputs.

mod common;
use common::*;

#[test]
fn out_then_in_completed_at_the_next_run() {
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            c.regs.gpr[reg::RAX] = 0x1234_5641;
            c.exit(30, 0x03f8_0000, 1); // OUT DX, AL
        }),
        Box::new(|c| c.exit(30, 0x0060_0000 | 8 | 64, 2)), // IN AL, 0x60
        Box::new(|c| {
            assert_eq!(
                c.regs.gpr[reg::RAX],
                0x1234_565a,
                "IN completed into AL only"
            );
            c.exit(30, 0x0080_0000 | 1, 1); // OUT DX, AX (16-bit)
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let io = t.vcpu.with_tunnel(|t| *t.io());
    assert_eq!(
        (io.direction, io.size, io.port, io.count, io.flags),
        (0, 1, 0x3f8, 1, 0)
    );
    assert_eq!(t.vcpu.io_buffer_mut()[0], 0x41);
    assert_eq!(t.rip(), 0xfff1);
    assert_eq!(t.vcpu.with_tunnel(|t| t.exit_reason), 30);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let io = t.vcpu.with_tunnel(|t| *t.io());
    assert_eq!((io.direction, io.port), (1, 0x60));
    t.vcpu.io_buffer_mut()[0] = 0x5a;
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let io = t.vcpu.with_tunnel(|t| *t.io());
    assert_eq!((io.size, io.port), (2, 0x80));
    assert_eq!(&t.vcpu.io_buffer_mut()[..2], &[0x5a, 0x56]);
}

#[test]
fn rep_outsb_moves_64_bytes_per_exit_and_rip_only_at_the_end() {
    let mut t = setup();
    for i in 0..100u8 {
        t.mem.0.borrow_mut()[0x500 + usize::from(i)] = i;
    }
    let la = Rc::new(RefCell::new(0x500u64));
    let l2 = la.clone();
    t.hook(move |c| {
        // REP OUTSB to DX=0x3f8: string + rep; the linear address is DS:RSI.
        c.write(VmcsField::GuestLinearAddress, *l2.borrow());
        c.write(VmcsField::VmExitInstructionInformation, 1 << 7); // 32-bit address size
        c.exit(30, 0x03f8_0000 | 16 | 32, 2);
    });
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.regs[reg::RCX] = 100;
    s.regs[reg::RSI] = 0x500;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let io = t.vcpu.with_tunnel(|t| *t.io());
    assert_eq!((io.count, io.flags, io.df, io.vaddr), (64, 1, 0, 0x500));
    assert_eq!(t.vcpu.io_buffer_mut()[63], 63);
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(
        (s.regs[reg::RCX], s.regs[reg::RSI], s.rip),
        (36, 0x540, 0xfff0)
    );
    *la.borrow_mut() = 0x540;
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let io = t.vcpu.with_tunnel(|t| *t.io());
    assert_eq!((io.count, io.vaddr), (36, 0x540));
    assert_eq!(t.vcpu.io_buffer_mut()[35], 99);
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(
        (s.regs[reg::RCX], s.regs[reg::RSI], s.rip),
        (0, 0x564, 0xfff2)
    );
    // DF=1: 4 elements going down from 0x503: the buffer holds 0x500..0x503 ascending.
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.regs[reg::RCX] = 4;
    s.regs[reg::RSI] = 0x503;
    s.rflags = 2 | (1 << 10);
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    *la.borrow_mut() = 0x503;
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let io = t.vcpu.with_tunnel(|t| *t.io());
    assert_eq!((io.count, io.df, io.vaddr), (4, 1, 0x500));
    assert_eq!(&t.vcpu.io_buffer_mut()[..4], &[0, 1, 2, 3]);
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!((s.regs[reg::RCX], s.regs[reg::RSI]), (0, 0x4ff));
}

#[test]
fn rep_insb_writes_guest_memory_at_the_next_run() {
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            c.write(VmcsField::GuestLinearAddress, 0x700);
            c.write(VmcsField::VmExitInstructionInformation, 0);
            c.exit(30, 0x0060_0000 | 8 | 16 | 32, 2);
        }),
        Box::new(|c| c.exit(12, 0, 1)),
    ]));
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.regs[reg::RCX] = 3;
    s.regs[reg::RDI] = 0x700;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    t.vcpu.io_buffer_mut()[..3].copy_from_slice(&[7, 8, 9]);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(&t.mem.0.borrow()[0x700..0x703], &[7, 8, 9]);
}

#[test]
fn hlt_interrupt_window_injection_and_external_interrupt() {
    let mut t = setup();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    t.hook(script(vec![
        // HLT with nothing queued: to user, RIP past HLT, ready forced to 1.
        Box::new(|c| c.exit(12, 0, 1)),
        // IF=0: nothing injected, interrupt-window exiting on; the guest then STIs.
        Box::new(move |c| {
            s2.borrow_mut().push((
                c.read(VmcsField::VmEntryInterruptionInformation),
                c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls) & 4,
            ));
            c.write(VmcsField::GuestRflags, 2 | (1 << 9));
            c.exit(7, 0, 0);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0030,
                "highest queued vector injected as external interrupt"
            );
            c.exit(1, 0, 0); // a host interrupt
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0020
            );
            assert_eq!(
                c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls) & 4,
                0
            );
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.rip(), 0xfff1);
    assert_eq!(t.vcpu.with_tunnel(|t| t.ready_for_interrupt_injection), 1);
    t.vcpu.interrupt(0x20);
    t.vcpu.interrupt(0x130); // & 0xff = 0x30
    t.vcpu.interrupt(0x20); // duplicate
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    assert_eq!(seen.borrow()[0], (0, 4));
    assert_eq!(
        t.vcpu.with_tunnel(|t| t.ready_for_interrupt_injection),
        0,
        "0x20 still queued"
    );
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.vcpu.with_tunnel(|t| t.ready_for_interrupt_injection), 1);
}

#[test]
fn interrupted_delivery_is_reinjected() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rflags = 2 | (1 << 9);
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.vcpu.interrupt(0x41);
    t.hook(script(vec![
        // Delivering 0x41 hit an EPT violation on the IDT page (RAM: mapped, resumed).
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0041
            );
            c.write(VmcsField::IdtVectoringInformation, 0x8000_0041);
            c.write(VmcsField::GuestPhysicalAddress, 0x1000);
            c.exit(48, 1, 0);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0041
            );
            c.write(VmcsField::IdtVectoringInformation, 0);
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

/// An OUT exit right after an injection takes the guest loop's full path (`after_exit`
/// looks at IDT-vectoring information), not the IO fast path: the delivered vector is gone,
/// the OUT reaches user space whole, and the next entry injects nothing.
#[test]
fn an_out_exit_after_an_injection_is_served_and_not_reinjected() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rflags = 2 | (1 << 9);
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.vcpu.interrupt(0x41);
    t.hook(script(vec![
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0041
            );
            c.write(VmcsField::IdtVectoringInformation, 0);
            c.regs.gpr[reg::RAX] = 0x77;
            c.exit(30, 0x0080_0000, 1); // OUT DX, AL
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation) & 0x8000_0000,
                0,
                "delivered once, not again"
            );
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let io = t.vcpu.with_tunnel(|t| *t.io());
    assert_eq!((io.direction, io.size, io.port), (0, 1, 0x80));
    assert_eq!(t.vcpu.io_buffer_mut()[0], 0x77);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn user_window_request_returns_interrupt_when_the_guest_can_take_one() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rflags = 2 | (1 << 9);
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.vcpu.with_tunnel(|t| t.request_interrupt_window = 1);
    t.hook(|c: &mut GuestCpu<'_>| {
        assert_eq!(
            c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls) & 4,
            4
        );
        c.exit(7, 0, 0);
    });
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    assert_eq!(t.vcpu.with_tunnel(|t| t.ready_for_interrupt_injection), 1);
}

#[test]
fn triple_fault_is_sticky_and_pause_request_exits_at_once() {
    let mut t = setup();
    t.vcpu
        .with_tunnel(|t| t.exit_reason = HAX_EXIT_REASON_PAUSE_REQUEST);
    t.hook(script(vec![Box::new(|c| c.exit(2, 0, 0))]));
    assert_eq!(t.run(), Ok(ExitStatus::Paused));
    assert_eq!(t.root.vmx().counts.vmlaunch, 0, "no entry for a pause");
    assert_eq!(t.run(), Ok(ExitStatus::StateChange));
    assert_eq!(t.vcpu.panic_reason(), Some(PanicReason::TripleFault));
    assert_eq!(
        t.run(),
        Ok(ExitStatus::StateChange),
        "sticky, no entry (script ended)"
    );
    assert_eq!(t.run(), Ok(ExitStatus::StateChange));
}

#[test]
fn user_event_pending_is_test_and_cleared() {
    let mut t = setup();
    t.vcpu.with_tunnel(|t| t.user_event_pending = 3);
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    assert_eq!(
        t.vcpu.with_tunnel(|t| t.user_event_pending),
        2,
        "bit 0 only"
    );
}

#[test]
fn entry_failure_is_an_error_and_set_regs_fixes_it() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rflags = 0; // bit 1 must be 1 (SDM 27.3.1.4)
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.hook(|c: &mut GuestCpu<'_>| c.exit(12, 0, 1));
    assert_eq!(
        t.run(),
        Err(HaxError::InvalidGuestState {
            reason: 33,
            qualification: 0
        })
    );
    assert_eq!(
        t.vcpu.with_tunnel(|t| t.exit_status),
        ExitStatus::Unknown as u32
    );
    s.rflags = 2;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn mmio_store_and_load_with_completion() {
    let mut t = setup();
    // Real mode at 0:0x1000: `mov [bx], ax` (89 07) then `mov cx, [bx]` (8b 0f).
    t.mem.0.borrow_mut()[0x1000..0x1004].copy_from_slice(&[0x89, 0x07, 0x8b, 0x0f]);
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cs.selector = 0;
    s.cs.base = 0;
    s.rip = 0x1000;
    s.regs[reg::RAX] = 0xbeef;
    s.regs[reg::RCX] = 0xffff_0000;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.hook(script(vec![
        Box::new(|c| {
            c.write(VmcsField::GuestPhysicalAddress, 0xfee0_0080);
            c.exit(48, 2, 0);
        }),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::GuestRip), 0x1002);
            c.write(VmcsField::GuestPhysicalAddress, 0xfee0_0030);
            c.exit(48, 1, 0);
        }),
        Box::new(|c| {
            assert_eq!(
                c.regs.gpr[reg::RCX],
                0xffff_1450,
                "16-bit load keeps the rest"
            );
            assert_eq!(c.read(VmcsField::GuestRip), 0x1004);
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    let m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    assert_eq!(
        (m.gpa, m.size, m.direction, m.value),
        (0xfee0_0080, 2, 1, 0xbeef)
    );
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    let mut m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    assert_eq!((m.gpa, m.size, m.direction), (0xfee0_0030, 2, 0));
    assert_eq!(t.rip(), 0x1002, "RIP moves when the read completes");
    m.value = 0x1450;
    t.vcpu.io_buffer_mut()[..56].copy_from_slice(m.as_bytes());
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn cpuid_from_the_table_and_msrs_in_kernel() {
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            c.regs.gpr[reg::RAX] = 1;
            c.exit(10, 0, 2);
        }),
        Box::new(|c| {
            assert_ne!(c.regs.gpr[reg::RCX] & (1 << 31), 0, "hypervisor bit");
            assert_eq!(c.regs.gpr[reg::RCX] & (1 << 5), 0, "VMX hidden");
            c.regs.gpr[reg::RCX] = 0xc000_0081; // WRMSR STAR
            c.regs.gpr[reg::RAX] = 0x1111;
            c.regs.gpr[reg::RDX] = 0x2222;
            c.exit(32, 0, 2);
        }),
        Box::new(|c| {
            c.regs.gpr[reg::RCX] = 0xc000_0081; // RDMSR STAR
            c.exit(31, 0, 2);
        }),
        Box::new(|c| {
            assert_eq!(
                (c.regs.gpr[reg::RAX], c.regs.gpr[reg::RDX]),
                (0x1111, 0x2222)
            );
            c.regs.gpr[reg::RCX] = 0x4000_1234; // unknown MSR: #GP
            c.exit(31, 0, 2);
        }),
        Box::new(|c| {
            // #GP without an error code: the guest is in real mode (SDM §27.2.1.3).
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_030d
            );
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let stats = t.vcpu.stats();
    assert_eq!(stats.per_reason[10].exits, 1);
    assert_eq!(stats.per_reason[31].exits, 2);
    assert_eq!(stats.runs, 1);
}

#[test]
fn msr_round_trip_and_bad_counts() {
    let mut t = setup();
    let msrs = [
        (0x174, 0x10),
        (0x175, 0x8000),
        (0x176, 0x9000),
        (0xc000_0081, 1),
        (0xc000_0082, 2),
        (0xc000_0083, 3),
        (0xc000_0084, 4),
        (0xc000_0102, 5),
        (0xc000_0080, 0xd01),
        (0x277, 0x0007_0406_0007_0406),
        (0x1b, 0xfee0_0900),
        (0xc000_0103, 7),
    ];
    let entries: Vec<VmxMsr> = msrs
        .iter()
        .map(|&(e, v)| VmxMsr { entry: e, value: v })
        .collect();
    let mut d = MsrData::from_entries(&entries).unwrap();
    t.vcpu.set_msrs(&mut t.root, &mut d).unwrap();
    assert_eq!(usize::from(d.done), msrs.len());
    let mut g = MsrData::from_entries(&entries).unwrap();
    for e in g.entries.iter_mut() {
        e.value = 0;
    }
    t.vcpu.get_msrs(&mut t.root, &mut g).unwrap();
    assert_eq!(usize::from(g.done), msrs.len());
    for (i, &(_, v)) in msrs.iter().enumerate() {
        assert_eq!(g.entries[i].value, v, "msr {:#x}", msrs[i].0);
    }
    assert_eq!(t.vcpu.with_tunnel(|t| t.apic_base), 0xfee0_0900);
    // Stops at the first refused MSR.
    let mut d = MsrData::from_entries(&[
        VmxMsr {
            entry: 0xc000_0081,
            value: 9,
        },
        VmxMsr {
            entry: 0x4000_0000,
            value: 1,
        },
        VmxMsr {
            entry: 0xc000_0082,
            value: 9,
        },
    ])
    .unwrap();
    t.vcpu.set_msrs(&mut t.root, &mut d).unwrap();
    assert_eq!(d.done, 1);
    // nr_msr >= 32: refused, nothing changed.
    let mut bad = MsrData::from_entries(&[VmxMsr {
        entry: 0xc000_0082,
        value: 77,
    }])
    .unwrap();
    bad.nr_msr = 32;
    assert_eq!(
        t.vcpu.set_msrs(&mut t.root, &mut bad),
        Err(HaxError::TooManyMsrs { nr_msr: 32 })
    );
    let mut g = MsrData::from_entries(&[VmxMsr {
        entry: 0xc000_0082,
        value: 0,
    }])
    .unwrap();
    t.vcpu.get_msrs(&mut t.root, &mut g).unwrap();
    assert_eq!(g.entries[0].value, 2);
}

#[test]
fn regs_and_fpu_round_trip_and_cpuid_bad_totals() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(
        (s.rip, s.cs.selector, s.cs.base),
        (0xfff0, 0xf000, 0xffff_0000)
    );
    for (i, r) in s.regs.iter_mut().enumerate() {
        *r = 0x100 + i as u64;
    }
    s.rip = 0x7c00;
    s.cr2 = 0xdead_0000;
    s.dr0 = 0x1234;
    s.fs.ar = 0; // QEMU's "unusable"
    s.ds.ar = 0x92; // not accessed: fixed up
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    let g = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(g.regs, s.regs);
    assert_eq!((g.rip, g.cr2, g.dr0), (0x7c00, 0xdead_0000, 0x1234));
    assert_eq!(g.fs.ar, 0x1_0000, "unusable reported with the null bit");
    assert_eq!(g.ds.ar, 0x93);
    assert_eq!(g.cr0, 0x6000_0010, "CR0 as the guest sees it");
    let mut f = t.vcpu.get_fpu();
    assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    f.mmx_1[3] = [0xaa; 16];
    let host = t.root.host_state().mxcsr_mask;
    t.vcpu.set_fpu(host, &f).unwrap();
    assert_eq!(t.vcpu.get_fpu().mmx_1[3], [0xaa; 16]);
    // The guest's image is what the CPU holds while the guest runs.
    t.hook(|c: &mut GuestCpu<'_>| {
        assert_eq!(c.fpu.mmx_1[3], [0xaa; 16]);
        c.fpu.mmx_1[4] = [0x55; 16];
        c.exit(12, 0, 1);
    });
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.vcpu.get_fpu().mmx_1[4], [0x55; 16]);
    assert_ne!(t.root.vmx().fpu.mmx_1[4], [0x55; 16], "host state back");
    let before: Vec<CpuidEntry> = t.cpuid.entries().to_vec();
    assert_eq!(
        HaxVcpu::set_cpuid(&mut t.cpuid, &[]),
        Err(HaxError::Cpuid(CpuidError::Empty))
    );
    let many = vec![before[0]; 65];
    assert_eq!(
        HaxVcpu::set_cpuid(&mut t.cpuid, &many),
        Err(HaxError::Cpuid(CpuidError::TooMany { total: 65 }))
    );
    assert_eq!(t.cpuid.entries(), &before[..]);
}

/// QEMU's GET_REGS/SET_REGS round trip (`get_seg`/`set_seg` in target/i386/hax/hax-all.c)
/// drops the unusable bit and keeps P. A segment the guest nulled, whose access rights the
/// CPU stored as unusable with stale bits (here P=1, G=1 and limit 0), must still enter as
/// unusable: reported not present, and not present means unusable on the way back.
#[test]
fn an_unusable_segment_survives_qemus_round_trip() {
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            // The guest loads a null FS: unusable, stale type/S/P/D/G, limit 0.
            c.write(VmcsField::GuestFsSelector, 0);
            c.write(VmcsField::GuestFsLimit, 0);
            c.write(VmcsField::GuestFsAccessRights, 0x1_c093);
            c.exit(12, 0, 1); // HLT
        }),
        Box::new(|c| c.exit(12, 0, 1)),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(s.fs.ar & (1 << 16), 1 << 16, "reported unusable");
    assert_eq!(s.fs.ar & (1 << 7), 0, "and not present");
    // What QEMU sends back: no unusable bit, DPL from the selector, the rest kept.
    for d in [
        &mut s.cs, &mut s.ss, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs,
    ] {
        d.ar = (d.ar & !(1 << 16) & !(3 << 5)) | ((u32::from(d.selector) & 3) << 5);
    }
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    assert_eq!(t.run(), Ok(ExitStatus::Hlt), "VM entry accepts the state");
    assert_eq!(t.vcpu.get_regs(&mut t.root).unwrap().fs.ar, 0x1_0000);
}

/// The guest loop decodes an OUT exit lazily (`Vcpu::enter`, then the qualification alone):
/// the exit still reaches user space whole (port, size, data, RIP moved), and the steady-state
/// OUT exit reads no more VMCS fields than the full decode did (6: reason, qualification,
/// instruction length, RIP, and RFLAGS + interruptibility for ready_for_interrupt_injection).
#[test]
fn a_lazily_decoded_out_exit_is_whole_and_reads_six_fields() {
    let mut t = setup();
    t.hook(|c| {
        c.regs.gpr[reg::RAX] = 0xabcd;
        c.exit(30, 0x0080_0000 | 1, 1) // OUT DX, AX
    });
    for _ in 0..3 {
        assert_eq!(t.run(), Ok(ExitStatus::Io));
    }
    let rip = t.rip();
    let c0 = t.vcpu.stats();
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let c1 = t.vcpu.stats();
    let io = t.vcpu.with_tunnel(|t| *t.io());
    assert_eq!(
        (io.direction, io.size, io.port, io.count),
        (0, 2, 0x80, 1),
        "the qualification decoded"
    );
    assert_eq!(&t.vcpu.io_buffer_mut()[..2], &[0xcd, 0xab]);
    assert_eq!(t.rip(), rip + 1, "RIP past the OUT");
    let b = bucket_of(30);
    let d = c1.per_reason[b].wrapping_sub(c0.per_reason[b]);
    assert_eq!(d.exits, 1);
    assert!(d.vmreads <= 6, "{} VMREADs for one OUT exit", d.vmreads);
}

/// Per-exit VMREAD/VMWRITE of the HAXM run loop, steady state (model count).
#[test]
fn per_exit_costs_of_the_haxm_loop() {
    fn measure(name: &str, reason: u32, f: impl FnMut(&mut GuestCpu<'_>) + 'static, user: bool) {
        let mut t = setup();
        t.mem.0.borrow_mut()[0x1000..0x1002].copy_from_slice(&[0x89, 0x07]);
        let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
        s.cs.base = 0;
        s.rip = 0x1000;
        t.vcpu.set_regs(&mut t.root, &s).unwrap();
        t.vcpu
            .with_tunnel(|t| t.request_interrupt_window = i32::from(!user));
        t.hook(f);
        let n = 50;
        for _ in 0..5 {
            let _ = t.run();
        }
        let c0 = t.vcpu.stats();
        for _ in 0..n {
            assert!(t.run().is_ok());
        }
        let c1 = t.vcpu.stats();
        let b = bucket_of(reason as u16);
        let d = c1.per_reason[b].wrapping_sub(c0.per_reason[b]);
        assert!(d.exits >= n);
        println!(
            "{name}: {:.2} VMREAD, {:.2} VMWRITE per exit ({} exits)",
            d.vmreads as f64 / d.exits as f64,
            d.vmwrites as f64 / d.exits as f64,
            d.exits
        );
    }
    measure("IO (OUT)", 30, |c| c.exit(30, 0x03f8_0000, 1), true);
    let mut cpuid_then_out = false;
    measure(
        "CPUID (in kernel, then an OUT)",
        10,
        move |c| {
            cpuid_then_out = !cpuid_then_out;
            if cpuid_then_out {
                c.regs.gpr[reg::RAX] = 1;
                c.exit(10, 0, 2)
            } else {
                c.exit(30, 0x03f8_0000, 1)
            }
        },
        true,
    );
    measure("HLT", 12, |c| c.exit(12, 0, 1), true);
    measure(
        "MMIO (EPT violation, store)",
        48,
        |c| {
            c.write(VmcsField::GuestPhysicalAddress, 0xfee0_0080);
            c.write(VmcsField::GuestRip, 0x1000);
            c.exit(48, 2, 0);
        },
        true,
    );
    measure(
        "interrupt window",
        7,
        |c| {
            c.write(VmcsField::GuestRflags, 2 | (1 << 9));
            c.exit(7, 0, 0)
        },
        false,
    );
}

/// Guest memory is never reached from inside a step (`run`/`resume` take none): an exit that
/// needs it ends the step with the request, the caller does the work, the next step goes on.
#[test]
fn memory_work_ends_the_step_and_the_next_step_continues() {
    let mut t = setup();
    t.mem.0.borrow_mut()[0x500..0x502].copy_from_slice(&[0x11, 0x22]);
    t.hook(script(vec![
        // RAM violation: resolved between the steps, then the guest goes on.
        Box::new(|c| {
            c.write(VmcsField::GuestPhysicalAddress, 0x2000);
            c.exit(48, 1, 0);
        }),
        // OUTSB (no REP) from 0x500.
        Box::new(|c| {
            c.write(VmcsField::GuestLinearAddress, 0x500);
            c.exit(30, 0x03f8_0000 | 16, 1);
        }),
        // INSB (no REP) to 0x600.
        Box::new(|c| {
            c.write(VmcsField::GuestLinearAddress, 0x600);
            c.exit(30, 0x0060_0000 | 8 | 16, 1);
        }),
        Box::new(|c| c.exit(12, 0, 1)),
    ]));
    let step = t.step().unwrap();
    let RunStep::NeedMemory(MemoryRequest::EptViolation { gpa, access, .. }) = step else {
        panic!("{step:?}");
    };
    assert_eq!((gpa, access), (0x2000, EptAccess::READ));
    assert_eq!(t.mem.1.get(), 0, "no memory access inside the step");
    assert_eq!(t.entries(), 1);
    assert_eq!(
        t.resume(),
        Err(HaxError::NothingToResume),
        "not resolved yet"
    );
    assert_eq!(t.vcpu.complete_memory(&t.mem), Ok(AfterMemory::Resume));
    assert_eq!(t.mem.1.get(), 1, "resolved once, no fetch for RAM");
    assert_eq!(
        t.vcpu.complete_memory(&t.mem),
        Err(HaxError::NothingToResume)
    );
    // The OUTS: the exit is complete in the tunnel but for the bytes.
    let step = t.resume().unwrap();
    assert!(matches!(
        step,
        RunStep::NeedMemory(MemoryRequest::StringOut {
            linear: 0x500,
            len: 1,
            ..
        })
    ));
    assert_eq!(t.entries(), 2, "the guest resumed once");
    assert_eq!(t.status(), ExitStatus::Io);
    t.vcpu.io_buffer_mut()[0] = 0;
    assert_eq!(t.vcpu.complete_memory(&t.mem), Ok(AfterMemory::Done));
    assert_eq!(t.vcpu.io_buffer_mut()[0], 0x11);
    assert_eq!(t.resume(), Err(HaxError::NothingToResume), "RUN over");
    // The INS exit, then its completion at the next RUN, before any entry.
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    t.vcpu.io_buffer_mut()[0] = 0x77;
    let entries = t.entries();
    let step = t.step().unwrap();
    assert!(matches!(
        step,
        RunStep::NeedMemory(MemoryRequest::CompleteIns {
            linear: 0x600,
            len: 1,
            ..
        })
    ));
    assert_eq!(t.entries(), entries);
    assert_eq!(t.mem.0.borrow()[0x600], 0);
    assert_eq!(t.vcpu.complete_memory(&t.mem), Ok(AfterMemory::Resume));
    assert_eq!(t.mem.0.borrow()[0x600], 0x77);
    assert_eq!(t.resume(), Ok(RunStep::Done));
    assert_eq!(t.status(), ExitStatus::Hlt);
    assert_eq!(t.vcpu.stats().runs, 3);
}

/// A RUN abandoned between its steps (the caller could not re-enter the region) is not
/// continued by the next RUN: the guest re-executes the faulting instruction, which faults
/// again, and the MMIO store is reported (and RIP moved) once.
#[test]
fn an_abandoned_step_is_retaken_not_replayed() {
    let mut t = setup();
    t.mem.0.borrow_mut()[0x1000..0x1002].copy_from_slice(&[0x89, 0x07]); // mov [bx], ax
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cs.base = 0;
    s.rip = 0x1000;
    s.regs[reg::RAX] = 0x4321;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    let rips = Rc::new(RefCell::new(Vec::new()));
    let r2 = rips.clone();
    t.hook(move |c: &mut GuestCpu<'_>| {
        r2.borrow_mut().push(c.read(VmcsField::GuestRip));
        c.write(VmcsField::GuestPhysicalAddress, 0xfee0_0000);
        c.exit(48, 2, 0);
    });
    assert!(matches!(t.step(), Ok(RunStep::NeedMemory(_))));
    assert_eq!(t.vcpu.complete_memory(&t.mem), Ok(AfterMemory::Resume));
    // Abandoned: a new RUN instead of `resume`.
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(*rips.borrow(), vec![0x1000, 0x1000]);
    let m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    assert_eq!((m.gpa, m.direction, m.value), (0xfee0_0000, 1, 0x4321));
    assert_eq!(t.rip(), 0x1002);
}

/// [`HeapPlatform`] whose clock advances 1 ms per read.
#[derive(Default)]
struct FastClock(HeapPlatform, Cell<u64>);

impl Platform for FastClock {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        self.0.alloc_pages(count)
    }
    fn free_pages(&self, pages: PhysPages) {
        self.0.free_pages(pages)
    }
    fn pin(&self, a: u64, l: usize) -> Result<PinnedMemory, PlatformError> {
        self.0.pin(a, l)
    }
    fn pinned_page(&self, p: &PinnedMemory, i: usize) -> Option<u64> {
        self.0.pinned_page(p, i)
    }
    fn unpin(&self, p: PinnedMemory) {
        self.0.unpin(p)
    }
    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync)) {
        self.0.run_on_each_cpu(f)
    }
    fn run_on_cpu(&self, c: CpuIndex, f: &(dyn Fn() + Sync)) {
        self.0.run_on_cpu(c, f)
    }
    fn current_cpu(&self) -> CpuIndex {
        0
    }
    fn cpu_count(&self) -> u32 {
        1
    }
    fn tsc(&self) -> u64 {
        self.1.set(self.1.get() + 1_000_000);
        self.1.get()
    }
    fn tsc_frequency(&self) -> u64 {
        1_000_000_000
    }
    fn kick(&self, _: CpuIndex) {}
}

/// A guest that faults on RAM forever (every exit needs a step outside the region) still
/// comes back within the RUN budget: it counts from the start of the RUN, not of a step.
#[test]
fn run_budget_spans_the_steps() {
    let mut t = setup();
    let clock = FastClock::default();
    t.hook(|c: &mut GuestCpu<'_>| {
        c.write(VmcsField::GuestPhysicalAddress, 0x3000);
        c.exit(48, 1, 0);
    });
    let mut steps = 1;
    let mut step = t.vcpu.run(&mut t.root, &t.cpuid, &clock).unwrap();
    while let RunStep::NeedMemory(_) = step {
        assert_eq!(t.vcpu.complete_memory(&t.mem), Ok(AfterMemory::Resume));
        step = t.vcpu.resume(&mut t.root, &t.cpuid, &clock).unwrap();
        steps += 1;
        assert!(steps < 20, "RUN does not come back");
    }
    assert_eq!(t.status(), ExitStatus::Interrupt);
    // 1 ms per clock read: about 5 steps for the 5 ms budget.
    assert!(steps >= 4, "{steps} steps");
}

/// The thread moves to another CPU between the steps: the next step reports the VMCS active
/// on the first CPU before doing anything (the step stays pending), the caller VMCLEARs it
/// there, and the step then finishes on the new CPU (VMPTRLD, host state) with the right RIP.
/// The software model keeps VMCS contents per CPU, so the test copies them across, as the
/// VMCLEAR / VMPTRLD pair does through memory on hardware (SDM Vol. 3C §25.11.1).
#[test]
fn a_step_continues_on_another_cpu_after_vmclear() {
    let mut t = setup();
    t.mem.0.borrow_mut()[0x1000..0x1002].copy_from_slice(&[0x89, 0x07]); // mov [bx], ax
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cs.base = 0;
    s.rip = 0x1000;
    s.regs[reg::RAX] = 0x5678;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.hook(script(vec![Box::new(|c| {
        c.write(VmcsField::GuestPhysicalAddress, 0xfee0_0010);
        c.exit(48, 2, 0);
    })]));
    assert!(matches!(t.step(), Ok(RunStep::NeedMemory(_))));
    assert_eq!(t.vcpu.complete_memory(&t.mem), Ok(AfterMemory::Resume));
    // CPU 1.
    let vmx = SoftVmx::new(msrs_from_tsv(TSV, "corei7_skylake_x").unwrap());
    let page = t.platform.alloc_pages(1).unwrap();
    // SAFETY: software model, one thread.
    let mut other = unsafe { VmxRoot::enable(vmx, 1, page) }
        .map_err(|e| e.0)
        .unwrap();
    assert_eq!(
        t.vcpu.resume(&mut other, &t.cpuid, &t.platform),
        Err(HaxError::Vmcs(RunError::ActiveElsewhere { cpu: 0 }))
    );
    // What the dispatcher's `on_this_cpu` does: VMCLEAR where it is active.
    let contents: Vec<(VmcsField, u64)> = VmcsField::ALL
        .iter()
        .filter_map(|&f| t.root.vmx().peek(f).map(|v| (f, v)))
        .collect();
    t.vcpu.core().unload(&mut t.root).unwrap();
    t.vcpu.core().with_vmcs(&mut other, |_, _| ()).unwrap();
    for (f, v) in contents {
        other.vmx().poke(f, v);
    }
    assert_eq!(
        t.vcpu.resume(&mut other, &t.cpuid, &t.platform),
        Ok(RunStep::Done),
        "the MMIO store finishes on CPU 1"
    );
    assert_eq!(t.status(), ExitStatus::FastMmio);
    let m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    assert_eq!((m.gpa, m.direction, m.value), (0xfee0_0010, 1, 0x5678));
    other.vmx().set_hook(|c: &mut GuestCpu<'_>| {
        assert_eq!(c.read(VmcsField::GuestRip), 0x1002, "RIP past the MOV");
        c.exit(12, 0, 1);
    });
    assert_eq!(
        t.vcpu.run(&mut other, &t.cpuid, &t.platform),
        Ok(RunStep::Done)
    );
    assert_eq!(t.status(), ExitStatus::Hlt);
    assert_eq!(
        other.vmx().counts.vmlaunch,
        1,
        "launched afresh after VMCLEAR"
    );
}

#[test]
fn sti_hlt_then_interrupt_injects_at_the_next_run() {
    // `sti; hlt`: the HLT exit saves blocking by STI (interruptibility bit 0) for the
    // instruction after STI, the HLT itself. The core moves RIP past the HLT, so the shadow is
    // over (SDM Vol. 3C §27.3.1.5): the vector queued with INTERRUPT must be injected at the
    // next entry, not wait for an interrupt window that a later `cli` would close.
    let mut t = setup();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    t.hook(script(vec![
        Box::new(|c| {
            c.write(VmcsField::GuestRflags, 2 | (1 << 9));
            c.write(VmcsField::GuestInterruptibilityState, 1);
            c.exit(12, 0, 1);
        }),
        Box::new(move |c| {
            s2.borrow_mut().push((
                c.read(VmcsField::VmEntryInterruptionInformation),
                c.read(VmcsField::PrimaryProcessorBasedVmExecutionControls) & 4,
                c.read(VmcsField::GuestInterruptibilityState) & 3,
            ));
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.rip(), 0xfff1, "RIP past the HLT");
    t.vcpu.interrupt(0x20);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(
        seen.borrow()[0],
        (0x8000_0020, 0, 0),
        "injected at once, no window, no stale STI blocking at entry"
    );
}

/// A shell's "go back to user space" (Linux: a pending signal, QEMU's kick) ends RUN with
/// INTERRUPT before the guest is entered, and the next RUN enters it again.
#[test]
fn a_pending_user_return_ends_run_before_entry() {
    use std::sync::atomic::Ordering;
    let mut t = setup();
    t.hook(script(vec![Box::new(|c| c.exit(12, 0, 1))]));
    t.platform.user_return.store(true, Ordering::Relaxed);
    let before = t.entries();
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    assert_eq!(t.entries(), before, "the guest was not entered");
    t.platform.user_return.store(false, Ordering::Relaxed);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.entries(), before + 1);
}

/// The system-call MSRs a guest writes once at boot exit on WRMSR (their guest values known
/// without reading them back at every return to user space); KERNEL_GS_BASE, which SWAPGS
/// changes without an exit, passes through. A guest's WRMSR of LSTAR lands in the state.
#[test]
fn syscall_msr_writes_exit_and_kernel_gs_base_passes_through() {
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            for msr in [
                0xc000_0081,
                0xc000_0082,
                0xc000_0083,
                0xc000_0084,
                0xc000_0103,
            ] {
                assert!(c.wrmsr_exits(msr), "WRMSR {msr:#x} exits");
            }
            assert!(!c.wrmsr_exits(0xc000_0102), "KERNEL_GS_BASE passes through");
            c.regs.gpr[reg::RCX] = 0xc000_0082;
            c.regs.gpr[reg::RAX] = 0x1000;
            c.regs.gpr[reg::RDX] = 0xffff_8000;
            c.exit(32, 0, 2);
        }),
        Box::new(|c| c.exit(30, 0x0080_0000, 1)),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    let mut g = MsrData::from_entries(&[VmxMsr {
        entry: 0xc000_0082,
        value: 0,
    }])
    .unwrap();
    t.vcpu.get_msrs(&mut t.root, &mut g).unwrap();
    assert_eq!(g.entries[0].value, 0xffff_8000_0000_1000);
}
