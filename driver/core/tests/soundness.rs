//! The soundness defects of issue 8 that live in the vCPU, each as the input that used to harm
//! the host or wedge the vCPU: values from SET_MSRS/SET_FPU that would fault in the host's
//! WRMSR/FXRSTOR, guest writes that hardware refuses (they must fault in the guest, not fail
//! every later VM entry), and the tunnel fields user space writes while RUN is in the kernel.

mod common;
use common::*;

use rhax_core::vcpu::checked::{is_canonical, Refused};

const GP: u64 = 0x8000_0b0d; // valid, hardware exception, error code, vector 13
/// #GP in real mode: no error code (VM entry refuses one with CR0.PE = 0, SDM §27.2.1.3).
const GP_REAL: u64 = 0x8000_030d;
const LSTAR: u32 = 0xc000_0082;

fn msr(entry: u64, value: u64) -> VmxMsr {
    VmxMsr { entry, value }
}

fn set_one(t: &mut T, entry: u64, value: u64) -> u16 {
    let mut d = MsrData::from_entries(&[msr(entry, value)]).unwrap();
    t.vcpu.set_msrs(&mut t.root, &mut d).unwrap();
    d.done
}

fn get_one(t: &mut T, entry: u64) -> u64 {
    let mut d = MsrData::from_entries(&[msr(entry, 0)]).unwrap();
    t.vcpu.get_msrs(&mut t.root, &mut d).unwrap();
    assert_eq!(d.done, 1);
    d.entries[0].value
}

#[test]
fn set_msrs_refuses_values_the_host_wrmsr_or_vm_entry_would_fault_on() {
    let mut t = setup();
    let bad: [(u64, u64); 9] = [
        (0xc000_0082, 0x8000_0000_0000_0000), // LSTAR
        (0xc000_0083, 0x0000_8000_0000_0000), // CSTAR
        (0xc000_0102, 0x1234_5678_9abc_def0), // KERNEL_GS_BASE
        (0xc000_0103, 1 << 32),               // TSC_AUX reserved bits
        (0xc000_0084, 1 << 40),               // FMASK reserved bits
        (0xc000_0100, 0x0000_8000_0000_0000), // FS_BASE
        (0x175, 0x0001_0000_0000_0000),       // SYSENTER_ESP
        (0xc000_0080, 1 << 9),                // EFER reserved bit
        (0x1d9, 1 << 6),                      // DEBUGCTL bit the guest may not set
    ];
    for &(entry, value) in &bad {
        let before = get_one(&mut t, entry);
        assert_eq!(set_one(&mut t, entry, value), 0, "msr {entry:#x} refused");
        assert_eq!(get_one(&mut t, entry), before, "msr {entry:#x} unchanged");
    }
    // A good value in the same batch after a bad one is not reached (HAXM's in-order stop).
    let mut d = MsrData::from_entries(&[
        msr(0xc000_0082, 0xffff_8000_0000_1000),
        msr(0xc000_0082, 1 << 63),
    ])
    .unwrap();
    t.vcpu.set_msrs(&mut t.root, &mut d).unwrap();
    assert_eq!(d.done, 1);
    // A RUN loads the guest values with WRMSR: all of them are what WRMSR accepts.
    t.hook(|c: &mut GuestCpu<'_>| c.exit(12, 0, 1));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert!(t.root.vmx().counts.wrmsr > 0);
    for m in [0xc000_0082u32, 0xc000_0083, 0xc000_0102] {
        let v = t.root.vmx().msrs.get(&m).copied().unwrap_or(0);
        assert!(is_canonical(v), "host msr {m:#x} = {v:#x}");
    }
    assert_eq!(get_one(&mut t, u64::from(LSTAR)), 0xffff_8000_0000_1000);
}

#[test]
fn set_fpu_checks_mxcsr_against_the_host_mask_not_the_callers() {
    let mut t = setup();
    let host = t.root.host_state().mxcsr_mask;
    let before = t.vcpu.get_fpu();
    let mut f = before;
    // The caller claims every bit is supported; the host does not support bit 16.
    f.mxcsr_mask = 0xffff_ffff;
    f.mxcsr = 0x1f80 | (1 << 16);
    f.fcw = 0x27f;
    assert_eq!(
        t.vcpu.set_fpu(host, &f),
        Err(HaxError::InvalidValue(Refused::ReservedBits))
    );
    assert_eq!(t.vcpu.get_fpu(), before, "nothing changed");
    // The next RUN's FXRSTOR gets the old image (the model faults on a bad MXCSR).
    t.hook(|c: &mut GuestCpu<'_>| c.exit(12, 0, 1));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    f.mxcsr = 0x1f80 & host.bits();
    t.vcpu.set_fpu(host, &f).unwrap();
    assert_eq!(t.vcpu.get_fpu().fcw, 0x27f);
}

/// One guest WRMSR per step; the step after checks the #GP and that RIP did not move.
fn wrmsr(msr: u32, value: u64) -> Step {
    Box::new(move |c| {
        c.regs.gpr[reg::RCX] = u64::from(msr);
        c.regs.gpr[reg::RAX] = value & 0xffff_ffff;
        c.regs.gpr[reg::RDX] = value >> 32;
        c.exit(32, 0, 2);
    })
}

fn expect_gp_then(next: Step, what: &'static str) -> Step {
    let mut next = next;
    Box::new(move |c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation),
            GP_REAL,
            "{what}: #GP injected (real mode: no error code)"
        );
        assert_eq!(c.read(VmcsField::GuestRip), 0xfff0, "{what}: RIP not moved");
        next(c)
    })
}

fn expect_no_event_then(next: Step, what: &'static str) -> Step {
    let mut next = next;
    Box::new(move |c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation) & (1 << 31),
            0,
            "{what}: no event"
        );
        next(c)
    })
}

#[test]
fn guest_wrmsr_of_values_hardware_refuses_gets_gp_and_the_vcpu_keeps_running() {
    let mut t = setup();
    let cases: [(u32, u64, &str); 9] = [
        (0xc000_0100, 0x0000_8000_0000_0000, "FS_BASE non-canonical"),
        (0xc000_0101, 0xdead_beef_0000_0000, "GS_BASE non-canonical"),
        (0x176, 0x0010_0000_0000_0000, "SYSENTER_EIP non-canonical"),
        (0x175, 0x8000_0000_0000_0000, "SYSENTER_ESP non-canonical"),
        (LSTAR, 0x0000_8000_0000_0000, "LSTAR non-canonical"),
        (0xc000_0103, 1 << 33, "TSC_AUX reserved bits"),
        (0xc000_0080, 1 << 2, "EFER reserved bit"),
        (0x1d9, 1 << 20, "DEBUGCTL reserved bit"),
        (0x277, 0x02, "PAT invalid type"),
    ];
    let mut steps: Vec<Step> = vec![wrmsr(cases[0].0, cases[0].1)];
    for w in cases.windows(2) {
        steps.push(expect_gp_then(wrmsr(w[1].0, w[1].1), w[0].2));
    }
    // EFER.LMA is read-only: a write of SCE|LMA keeps LMA (0 here) and succeeds.
    steps.push(expect_gp_then(
        wrmsr(0xc000_0080, (1 << 10) | 1),
        cases[8].2,
    ));
    steps.push(expect_no_event_then(
        Box::new(|c| c.exit(12, 0, 1)),
        "EFER with LMA",
    ));
    t.hook(script(steps));
    assert_eq!(
        t.run(),
        Ok(ExitStatus::Hlt),
        "every fault stayed in the guest"
    );
    assert_eq!(get_one(&mut t, 0xc000_0080), 1, "SCE set, LMA kept at 0");
    assert_eq!(get_one(&mut t, 0xc000_0100), 0);
    assert_eq!(t.vcpu.panic_reason(), None);
    // And the next RUN enters the guest (no state VM entry refuses was stored).
    t.hook(|c: &mut GuestCpu<'_>| c.exit(12, 0, 1));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn guest_efer_lme_change_with_paging_on_gets_gp() {
    let mut t = setup();
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cr0 = 0x8000_0011;
    s.cr4 = 0x20;
    s.cs.selector = 8;
    s.cs.base = 0;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    assert_eq!(set_one(&mut t, 0xc000_0080, 0), 1);
    t.hook(script(vec![
        wrmsr(0xc000_0080, 1 << 8),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation), GP);
            c.exit(12, 0, 1)
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(get_one(&mut t, 0xc000_0080), 0);
}

/// MOV to CRn from RAX (exit qualification: bits 3:0 CR, 5:4 access type 0, 11:8 GPR 0).
fn mov_to_cr(cr: u64, value: u64) -> Step {
    Box::new(move |c| {
        c.regs.gpr[reg::RAX] = value;
        c.exit(28, cr, 3);
    })
}

#[test]
fn guest_cr_writes_hardware_refuses_get_gp() {
    let mut t = setup();
    let cases: [(u64, u64, &str); 5] = [
        (0, 1 << 32, "CR0 bit 32"),
        (0, 0x8000_0000, "CR0.PG without PE"),
        (0, 0x2000_0011, "CR0.NW without CD"),
        (4, 1 << 13, "CR4.VMXE (VMX is hidden)"),
        (3, 1 << 60, "CR3 above MAXPHYADDR"),
    ];
    let mut steps: Vec<Step> = vec![mov_to_cr(cases[0].0, cases[0].1)];
    for w in cases.windows(2) {
        steps.push(expect_gp_then(mov_to_cr(w[1].0, w[1].1), w[0].2));
    }
    // A good write after them: CR0.PE, which succeeds and moves RIP.
    steps.push(expect_gp_then(mov_to_cr(0, 0x11), cases[4].2));
    steps.push(Box::new(|c| {
        assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) >> 31, 0);
        assert_eq!(c.read(VmcsField::GuestRip), 0xfff3);
        c.exit(12, 0, 1)
    }));
    t.hook(script(steps));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(s.cr0 & 0xffff_ffff_0000_0001, 1);
    assert_eq!(s.cr4 & (1 << 13), 0);
    t.hook(|c: &mut GuestCpu<'_>| c.exit(12, 0, 1));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt), "VM entry still works");
}

/// User space writes `request_interrupt_window` from another thread while RUN is in the
/// kernel. The vCPU must never write back a stale copy of it (the tunnel used to be read and
/// written as a whole struct at every entry and step end): the writer checks after each store
/// that its value is still there, and counts the stores the kernel undid.
#[test]
fn tunnel_fields_written_during_run_are_never_lost() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let mut t = setup();
    t.hook(|c: &mut GuestCpu<'_>| c.exit(12, 0, 1));
    let base = t.vcpu.tunnel_pages().0.virt().as_ptr() as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: the tunnel page outlives the thread (joined below); offset 20 is
            // `request_interrupt_window`, 4-aligned; only atomic accesses are used.
            let field = unsafe { &*((base + 20) as *const AtomicU32) };
            let (mut k, mut lost) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                k = k.wrapping_add(1);
                field.store(k, Ordering::Release);
                for _ in 0..16 {
                    if field.load(Ordering::Acquire) != k {
                        lost += 1;
                        break;
                    }
                }
            }
            (k, lost)
        })
    };
    for _ in 0..20_000 {
        assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    }
    stop.store(true, Ordering::Relaxed);
    let (stores, lost) = writer.join().unwrap();
    assert!(
        stores > 1000,
        "the writer ran during the RUNs ({stores} stores)"
    );
    assert_eq!(
        lost, 0,
        "{lost} of {stores} user stores undone by the kernel"
    );
}

/// The exits that end the vCPU on purpose, each with why that is the right answer. Everything
/// else a CPU can deliver must be handled (the guest goes on, or user space gets a status).
const STOPS_ON_PURPOSE: [(u16, &str); 2] = [
    (
        2,
        "triple fault: the architectural shutdown; HAXM reports STATECHANGE the same way",
    ),
    (
        49,
        "EPT misconfiguration: a bug in rhax's own EPT, never caused by the guest",
    ),
];

/// Plays one exit of basic reason `reason` with the fields its decoding reads.
fn play_exit(c: &mut GuestCpu<'_>, reason: u16) {
    let r = u32::from(reason);
    match reason {
        // NMI (type 2, vector 2).
        0 => {
            c.write(VmcsField::VmExitInterruptionInformation, 0x8000_0202);
            c.exit(r, 0, 0);
        }
        4 => c.exit(r, 0x9f, 0),
        // MOV from CR3 to RAX.
        28 => c.exit(r, 3 | (1 << 4), 3),
        // MOV to DR0 from RAX.
        29 => c.exit(r, 0, 3),
        // OUT DX, AL to 0x3f8.
        30 => c.exit(r, 0x03f8_0000, 1),
        // RDMSR/WRMSR of IA32_TSC.
        31 | 32 => {
            c.regs.gpr[reg::RCX] = 0x10;
            c.exit(r, 0, 2);
        }
        // Entry failures carry bit 31.
        33 | 34 | 41 => c.exit(r | (1 << 31), 0, 0),
        // A read of RAM that is not mapped yet.
        48 => {
            c.write(VmcsField::GuestPhysicalAddress, 0x5000);
            c.exit(r, 1, 0);
        }
        49 => {
            c.write(VmcsField::GuestPhysicalAddress, 0x5000);
            c.exit(r, 0, 0);
        }
        14 => c.exit(r, 0x1000, 3),
        _ => c.exit(r, 0, 2),
    }
}

/// Issue 8, defect 10: every exit reason the negotiated controls let the CPU deliver has a
/// handler that does not stop the vCPU (WBINVD, exit 54, used to stop every SeaBIOS boot).
#[test]
fn every_exit_the_cpu_can_deliver_is_handled_on_every_model() {
    use rhax_core::vmcs::deliverable::deliverable_exit_reasons;
    let mut models = 0;
    for model in [
        "corei7_sandy_bridge_2600k",
        "corei7_skylake_x",
        "corei7_icelake_u",
        "corei7_haswell_4770",
        "tigerlake",
        "bx_generic",
    ] {
        let Some(msrs) = msrs_from_tsv(TSV, model) else {
            continue;
        };
        let Ok(controls) = negotiate(SoftVmx::new(msrs.clone()).caps()) else {
            continue;
        };
        models += 1;
        let reasons = deliverable_exit_reasons(&controls);
        assert!(
            reasons.contains(54),
            "{model}: WBINVD exiting is negotiated"
        );
        for reason in reasons.iter() {
            let platform = HeapPlatform::new();
            let vmx = SoftVmx::new(msrs.clone());
            let page = platform.alloc_pages(1).unwrap();
            // SAFETY: software model, one thread.
            let root = unsafe { VmxRoot::enable(vmx, 0, page) }
                .map_err(|e| e.0)
                .unwrap();
            let vcpu =
                HaxVcpu::new(&platform, &controls, 0, 0, controls.eptp(0x4000_0000)).unwrap();
            let mut t = T {
                platform,
                root,
                vcpu,
                mem: Ram::new(),
                cpuid: CpuidTable::new(host_cpuid),
            };
            t.hook(script(vec![
                Box::new(move |c| play_exit(c, reason)),
                Box::new(|c| c.exit(12, 0, 1)),
            ]));
            let r = t.run();
            let why = STOPS_ON_PURPOSE.iter().find(|s| s.0 == reason);
            match why {
                Some(_) => assert!(
                    t.vcpu.panic_reason().is_some(),
                    "{model}: exit {reason} reports STATECHANGE"
                ),
                None => {
                    assert_eq!(
                        t.vcpu.panic_reason(),
                        None,
                        "{model}: exit {reason} stopped the vCPU ({r:?})"
                    );
                    if let Ok(status) = r {
                        assert_ne!(status, ExitStatus::StateChange, "{model}: exit {reason}");
                    }
                }
            }
            if reason == 0 {
                assert_eq!(t.root.vmx().counts.host_nmis, 1, "{model}: NMI re-raised");
            }
        }
    }
    assert!(models >= 4, "models tried: {models}");
}

/// A 32-bit paged guest at CPL 3 (defect 9): PD at 0x10000, PT at 0x11000; linear pages
/// 0x20000 user RW, 0x21000 supervisor RW, 0x22000 user read-only, 0x23000 not present.
fn paged_user_guest(t: &mut T, cpl3: bool) {
    let mut ram = t.mem.0.borrow_mut();
    let put =
        |ram: &mut Vec<u8>, at: usize, v: u32| ram[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut ram, 0x10000, 0x11007);
    put(&mut ram, 0x11000 + 0x20 * 4, 0x20007);
    put(&mut ram, 0x11000 + 0x21 * 4, 0x21003);
    put(&mut ram, 0x11000 + 0x22 * 4, 0x22005);
    ram[0x21000..0x21004].copy_from_slice(&[1, 2, 3, 4]);
    drop(ram);
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cr0 = 0x8000_0011;
    s.cr3 = 0x10000;
    s.cr4 = 0;
    let dpl = if cpl3 { 3 << 5 } else { 0 };
    s.cs =
        rhax_api::vcpu::SegmentDesc::new(if cpl3 { 0x1b } else { 8 }, 0, 0xffff_ffff, 0xc09b | dpl);
    s.ss = rhax_api::vcpu::SegmentDesc::new(
        if cpl3 { 0x23 } else { 0x10 },
        0,
        0xffff_ffff,
        0xc093 | dpl,
    );
    s.ds = s.ss;
    s.es = s.ss;
    s.rip = 0x20100;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
}

/// A string IO exit: port 0x3f8, one byte per element, 32-bit addresses.
fn string_io(c: &mut GuestCpu<'_>, inward: bool, rep: bool, linear: u64) {
    c.write(VmcsField::GuestLinearAddress, linear);
    c.write(VmcsField::VmExitInstructionInformation, 1 << 7);
    let q = 0x03f8_0000 | (u64::from(inward) << 3) | (1 << 4) | (u64::from(rep) << 5);
    c.exit(30, q, if rep { 2 } else { 1 });
}

fn expect_pf(c: &GuestCpu<'_>, code: u64, cr2: u64, what: &str) {
    assert_eq!(
        c.read(VmcsField::VmEntryInterruptionInformation),
        0x8000_0b0e,
        "{what}: #PF injected"
    );
    assert_eq!(
        c.read(VmcsField::VmEntryExceptionErrorCode),
        code,
        "{what}: error code"
    );
    assert_eq!(*c.cr2, cr2, "{what}: CR2");
    assert_eq!(
        c.read(VmcsField::GuestRip),
        0x20100,
        "{what}: RIP not moved"
    );
}

#[test]
fn string_io_the_guests_paging_refuses_gets_page_fault_not_a_stopped_vcpu() {
    let mut t = setup();
    paged_user_guest(&mut t, true);
    t.hook(script(vec![
        // CPL 3 `rep outsb` from a supervisor page.
        Box::new(|c| {
            c.regs.gpr[reg::RSI] = 0x21000;
            c.regs.gpr[reg::RCX] = 4;
            string_io(c, false, true, 0x21000);
        }),
        Box::new(|c| {
            expect_pf(c, 5, 0x21000, "outsb from a supervisor page");
            assert_eq!(
                (c.regs.gpr[reg::RSI], c.regs.gpr[reg::RCX]),
                (0x21000, 4),
                "registers taken back"
            );
            // CPL 3 `insb` into a read-only page.
            c.regs.gpr[reg::RDI] = 0x22010;
            string_io(c, true, false, 0x22010);
        }),
        Box::new(|c| {
            expect_pf(c, 7, 0x22010, "insb into a read-only page");
            assert_eq!(c.regs.gpr[reg::RDI], 0x22010);
            // CPL 3 `insb` into a page that is not present.
            c.regs.gpr[reg::RDI] = 0x23000;
            string_io(c, true, false, 0x23000);
        }),
        Box::new(|c| {
            expect_pf(c, 6, 0x23000, "insb into a missing page");
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(
        t.run(),
        Ok(ExitStatus::Hlt),
        "no IO exit reached user space"
    );
    assert_eq!(t.vcpu.panic_reason(), None);
}

#[test]
fn supervisor_string_out_reads_a_supervisor_page() {
    let mut t = setup();
    paged_user_guest(&mut t, false);
    t.hook(script(vec![Box::new(|c| {
        c.regs.gpr[reg::RSI] = 0x21000;
        c.regs.gpr[reg::RCX] = 4;
        string_io(c, false, true, 0x21000);
    })]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    assert_eq!(&t.vcpu.io_buffer_mut()[..4], &[1, 2, 3, 4]);
}

#[test]
fn mmio_instruction_running_into_a_refused_page_faults_in_the_guest() {
    let mut t = setup();
    paged_user_guest(&mut t, true);
    // `mov eax, [0x100000]` (8B 05 imm32): 2 bytes at the end of the user page, 4 on the
    // supervisor page after it.
    t.mem.0.borrow_mut()[0x20ffe..0x21004].copy_from_slice(&[0x8b, 0x05, 0, 0, 0x10, 0]);
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rip = 0x20ffe;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.hook(script(vec![
        Box::new(|c| {
            c.write(VmcsField::GuestPhysicalAddress, 0x10_0000);
            c.exit(48, 1, 0);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0b0e
            );
            assert_eq!(c.read(VmcsField::VmEntryExceptionErrorCode), 5);
            assert_eq!(*c.cr2, 0x21000);
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.vcpu.panic_reason(), None);
}

/// A protected-mode guest with a GDT at 0x500 (code 0x08, data 0x10, busy TSS A 0x18 at
/// 0x1000, available TSS B 0x20 at 0x1100) running task A at 0x2000.
fn two_task_guest(t: &mut T) {
    let mut ram = t.mem.0.borrow_mut();
    let put = |ram: &mut Vec<u8>, at: usize, v: &[u8]| ram[at..at + v.len()].copy_from_slice(v);
    let gdt: [u64; 5] = [
        0,
        0x00cf_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x0000_8b00_1000_0067,
        0x0000_8900_1100_0067,
    ];
    for (i, d) in gdt.iter().enumerate() {
        put(&mut ram, 0x500 + 8 * i, &d.to_le_bytes());
    }
    let b = 0x1100;
    for (off, v) in [
        (0x20, 0x3000u32),
        (0x24, 0x2),
        (0x28, 0x1111),
        (0x2c, 0x2222),
        (0x38, 0x8000),
        (0x48, 0x10),
        (0x4c, 0x08),
        (0x50, 0x10),
        (0x54, 0x10),
    ] {
        put(&mut ram, b + off, &v.to_le_bytes());
    }
    drop(ram);
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cr0 = 0x11;
    s.cs = rhax_api::vcpu::SegmentDesc::new(8, 0, 0xffff_ffff, 0xc09b);
    s.ss = rhax_api::vcpu::SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xc093);
    s.ds = s.ss;
    s.es = s.ss;
    s.tr = rhax_api::vcpu::SegmentDesc::new(0x18, 0x1000, 0x67, 0x8b);
    s.gdt = rhax_api::vcpu::SegmentDesc::new(0, 0x500, 0x27, 0);
    s.rip = 0x2000;
    s.regs[0] = 0xaaaa;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
}

/// Exit reason 9 (defect 10's last unhandled exit): a JMP to a TSS switches tasks in the
/// guest; a JMP to a selector outside the GDT gets #GP(selector).
#[test]
fn task_switch_is_done_for_the_guest() {
    let mut t = setup();
    two_task_guest(&mut t);
    t.hook(script(vec![
        Box::new(|c| c.exit(9, 0x20 | (2 << 30), 7)),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::GuestRip), 0x3000);
            assert_eq!(c.read(VmcsField::GuestTrSelector), 0x20);
            assert_eq!(c.read(VmcsField::GuestTrBase), 0x1100);
            assert_eq!(
                c.read(VmcsField::GuestTrAccessRights) & 0xf,
                0xb,
                "new TSS busy"
            );
            assert_eq!(c.read(VmcsField::GuestCsSelector), 8);
            assert_eq!(c.read(VmcsField::GuestRsp), 0x8000);
            assert_eq!(c.regs.gpr[reg::RAX], 0x1111);
            assert_eq!(c.regs.gpr[reg::RCX], 0x2222);
            assert_ne!(c.read(VmcsField::GuestCr0) & 8, 0, "CR0.TS set");
            // Now a JMP to a selector past the GDT limit.
            c.exit(9, 0x48 | (2 << 30), 7);
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                0x8000_0b0d
            );
            assert_eq!(c.read(VmcsField::VmEntryExceptionErrorCode), 0x48);
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.vcpu.panic_reason(), None);
    let ram = t.mem.0.borrow();
    let u32_at = |a: usize| u32::from_le_bytes(ram[a..a + 4].try_into().unwrap());
    assert_eq!(u32_at(0x1020), 0x2007, "old task's EIP: after the JMP");
    assert_eq!(u32_at(0x1028), 0xaaaa, "old task's EAX");
    assert_eq!(
        ram[0x500 + 0x18 + 5],
        0x89,
        "JMP leaves the old task available"
    );
    assert_eq!(ram[0x500 + 0x20 + 5], 0x8b, "the new task is busy");
}
