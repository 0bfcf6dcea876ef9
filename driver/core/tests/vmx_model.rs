//! End-to-end tests of the VMX core against the software model: VMCS setup passes the model's
//! VM-entry checks on every Bochs CPU model that negotiates; broken state fails the way
//! hardware fails; CPUID and OUT exits cost at most 4 VMREADs and 1 VMWRITE in steady state;
//! VMLAUNCH once, VMRESUME after; migration rewrites the host state.

use std::cell::Cell;
use std::rc::Rc;

use rhax_core::platform::HeapPlatform;
use rhax_core::vcpu::{skip_instruction, RunError, Vcpu};
use rhax_core::vmcs::exit::{IoAccess, IoDirection, VmExit};
use rhax_core::vmcs::stats::bucket_of;
use rhax_core::vmcs::VmcsField;
use rhax_core::vmx::caps::VmxCaps;
use rhax_core::vmx::instructions::reg;
use rhax_core::vmx::negotiate::{negotiate, VmxControls};
use rhax_core::vmx::root::VmxRoot;
use rhax_core::vmx::soft::{msrs_from_tsv, GuestCpu, SoftVmx};
use rhax_core::vmx::{VmFail, VmInstructionError, Vmx};

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");

fn models() -> Vec<String> {
    let mut m: Vec<String> = TSV
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .map(String::from)
        .collect();
    m.dedup();
    m
}

fn soft(model: &str) -> SoftVmx {
    SoftVmx::new(msrs_from_tsv(TSV, model).expect("model in table"))
}

// Safe wrappers: the software model has no preconditions.
fn vmxon(v: &mut SoftVmx, a: u64) -> Result<(), VmFail> {
    // SAFETY: software model.
    unsafe { v.vmxon(a) }
}
fn vmclear(v: &mut SoftVmx, a: u64) -> Result<(), VmFail> {
    // SAFETY: software model.
    unsafe { v.vmclear(a) }
}
fn vmptrld(v: &mut SoftVmx, a: u64) -> Result<(), VmFail> {
    // SAFETY: software model.
    unsafe { v.vmptrld(a) }
}
fn vmread(v: &mut SoftVmx, e: u32) -> Result<u64, VmFail> {
    // SAFETY: software model.
    unsafe { v.vmread(e) }
}
fn vmwrite(v: &mut SoftVmx, e: u32, x: u64) -> Result<(), VmFail> {
    // SAFETY: software model.
    unsafe { v.vmwrite(e, x) }
}
fn vmenter(v: &mut SoftVmx, launched: bool) -> Result<(), VmFail> {
    let mut regs = Default::default();
    let mut rsp = 0;
    // SAFETY: software model.
    unsafe { v.vmenter(&mut regs, launched, &mut rsp) }.map(|_| ())
}

struct Setup {
    platform: HeapPlatform,
    root: VmxRoot<SoftVmx>,
    vcpu: Vcpu,
    controls: VmxControls,
}

fn setup(model: &str) -> Result<Setup, String> {
    let platform = HeapPlatform::new();
    let vmx = soft(model);
    let caps: VmxCaps = *vmx.caps();
    let controls = negotiate(&caps).map_err(|e| e.to_string())?;
    let page = rhax_core::platform::Platform::alloc_pages(&platform, 1).unwrap();
    // SAFETY: software model; the test stays on one thread.
    let root = unsafe { VmxRoot::enable(vmx, 0, page) }.map_err(|e| format!("{:?}", e.0))?;
    let eptp = controls.eptp(0x4000_0000);
    let vcpu = Vcpu::new(&platform, &controls, 1, eptp).map_err(|e| format!("{e:?}"))?;
    Ok(Setup {
        platform,
        root,
        vcpu,
        controls,
    })
}

/// The hook plays a guest that loops on one exiting instruction.
fn cpu_loop(reason: u32, qualification: u64, len: u32) -> impl FnMut(&mut GuestCpu<'_>) {
    move |cpu: &mut GuestCpu<'_>| cpu.exit(reason, qualification, len)
}

#[test]
fn power_on_state_passes_the_entry_checks_on_every_model_that_negotiates() {
    let mut ran = 0;
    for model in models() {
        let Ok(mut s) = setup(&model) else { continue };
        s.root.vmx().set_hook(cpu_loop(10, 0, 2));
        let exit = s.vcpu.run(&mut s.root);
        assert_eq!(exit, Ok(VmExit::Cpuid), "{model}");
        assert_eq!(s.root.vmx().counts.vmlaunch, 1, "{model}");
        // The VMCS holds HAXM's reset state.
        let v = s.root.vmx();
        assert_eq!(v.peek(VmcsField::GuestRip), Some(0xfff0));
        assert_eq!(v.peek(VmcsField::GuestCsSelector), Some(0xf000));
        assert_eq!(v.peek(VmcsField::GuestCsBase), Some(0xffff_0000));
        assert_eq!(v.peek(VmcsField::GuestCsAccessRights), Some(0x9b));
        assert_eq!(v.peek(VmcsField::GuestTrAccessRights), Some(0x8b));
        assert_eq!(v.peek(VmcsField::Cr0ReadShadow), Some(0x6000_0010));
        assert_eq!(
            v.peek(VmcsField::GuestCr0).map(|c| c & 0x6000_0011),
            Some(0x6000_0010)
        );
        assert_eq!(v.peek(VmcsField::GuestRflags), Some(2));
        assert_eq!(v.peek(VmcsField::VmcsLinkPointer), Some(u64::MAX));
        assert_eq!(v.peek(VmcsField::VirtualProcessorId).unwrap_or(1), 1);
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} models negotiated");
}

/// Runs once to get the VMCS set up and launched, then breaks `field` and runs again.
fn run_with_broken(field: VmcsField, value: u64) -> Result<VmExit, RunError> {
    let mut s = setup("corei7_skylake_x").unwrap();
    s.root.vmx().set_hook(cpu_loop(10, 0, 2));
    assert_eq!(s.vcpu.run(&mut s.root), Ok(VmExit::Cpuid));
    s.root.vmx().poke(field, value);
    s.vcpu.run(&mut s.root)
}

#[test]
fn broken_guest_state_fails_entry_with_reason_33_and_the_sdm_qualification() {
    let failure = |qualification| {
        Ok(VmExit::EntryFailure {
            reason: 33,
            qualification,
        })
    };
    // RFLAGS bit 1 must be 1 (SDM 27.3.1.4).
    assert_eq!(run_with_broken(VmcsField::GuestRflags, 0), failure(0));
    // CS type 3 without... a data segment with DPL 3 while SS.DPL is 0 (27.3.1.2).
    assert_eq!(
        run_with_broken(VmcsField::GuestCsAccessRights, 0xf3),
        failure(0)
    );
    // CS not present.
    assert_eq!(
        run_with_broken(VmcsField::GuestCsAccessRights, 0x1b),
        failure(0)
    );
    // TR not busy.
    assert_eq!(
        run_with_broken(VmcsField::GuestTrAccessRights, 0x89),
        failure(0)
    );
    // CR0.PG without PE.
    assert_eq!(
        run_with_broken(VmcsField::GuestCr0, 0x8000_0030),
        failure(0)
    );
    // CR0.NE is fixed to 1 even with unrestricted guest.
    assert_eq!(
        run_with_broken(VmcsField::GuestCr0, 0x6000_0010),
        failure(0)
    );
    // VMCS link pointer must be ~0 (qualification 4, SDM 27.8).
    assert_eq!(run_with_broken(VmcsField::VmcsLinkPointer, 0), failure(4));
}

#[test]
fn broken_controls_and_host_state_fail_with_vmfail_valid_7_and_8() {
    let valid = |e| Err(RunError::Entry(VmFail::Valid(e)));
    // Unrestricted guest without EPT (SDM 27.2.1.1).
    assert_eq!(
        run_with_broken(
            VmcsField::SecondaryProcessorBasedVmExecutionControls,
            1 << 7
        ),
        valid(VmInstructionError::EntryInvalidControlFields)
    );
    // Host CR0 without PE (SDM 27.2.2, fixed bits).
    assert_eq!(
        run_with_broken(VmcsField::HostCr0, 0x8005_0032),
        valid(VmInstructionError::EntryInvalidHostStateFields)
    );
    // Host TR selector null (SDM 27.2.3).
    assert_eq!(
        run_with_broken(VmcsField::HostTrSelector, 0),
        valid(VmInstructionError::EntryInvalidHostStateFields)
    );
    // Host RIP not canonical (SDM 27.2.4).
    assert_eq!(
        run_with_broken(VmcsField::HostRip, 0x8000_0000_0000_0000),
        valid(VmInstructionError::EntryInvalidHostStateFields)
    );
}

#[test]
fn the_model_rejects_what_hardware_rejects() {
    // Clear IA32_VMX_MISC bit 29 (VMWRITE to exit-information fields allowed).
    let mut msrs = msrs_from_tsv(TSV, "corei7_skylake_x").unwrap();
    for (m, v) in msrs.iter_mut() {
        if *m == 0x485 {
            *v &= !(1 << 29);
        }
    }
    let mut v = SoftVmx::new(msrs);
    v.host.cr4 |= 1 << 13;
    {
        assert_eq!(vmread(&mut v, 0x6800), Err(VmFail::Invalid), "no VMX root");
        vmxon(&mut v, 0x1000).unwrap();
        assert_eq!(
            vmread(&mut v, 0x6800),
            Err(VmFail::Invalid),
            "no current VMCS"
        );
        vmclear(&mut v, 0x2000).unwrap();
        vmptrld(&mut v, 0x2000).unwrap();
        assert_eq!(
            vmwrite(&mut v, VmcsField::ExitReason.encoding(), 1),
            Err(VmFail::Valid(VmInstructionError::VmwriteReadOnlyComponent))
        );
        assert_eq!(
            vmread(&mut v, 0x6ffe),
            Err(VmFail::Valid(VmInstructionError::UnsupportedVmcsComponent))
        );
        assert_eq!(
            vmread(&mut v, VmcsField::VmInstructionError.encoding()),
            Ok(12)
        );
        // High half of a 64-bit field.
        vmwrite(
            &mut v,
            VmcsField::TscOffset.encoding(),
            0x1122_3344_5566_7788,
        )
        .unwrap();
        assert_eq!(
            vmread(&mut v, VmcsField::TscOffset.encoding() | 1),
            Ok(0x1122_3344)
        );
        assert_eq!(
            vmenter(&mut v, true),
            Err(VmFail::Valid(VmInstructionError::VmresumeNonLaunchedVmcs))
        );
        assert_eq!(
            vmxon(&mut v, 0x3000),
            Err(VmFail::Valid(VmInstructionError::VmxonInVmxRoot))
        );
        assert_eq!(
            vmptrld(&mut v, 0x1000),
            Err(VmFail::Valid(VmInstructionError::VmptrldVmxonPointer))
        );
    }
}

#[test]
fn vmwrite_to_read_only_fields_is_allowed_when_misc_bit_29_says_so() {
    // Bochs's Skylake-X sets IA32_VMX_MISC bit 29; Penryn does not.
    let misc = |model| {
        msrs_from_tsv(TSV, model)
            .unwrap()
            .into_iter()
            .find(|m| m.0 == 0x485)
    };
    assert_eq!(misc("corei7_skylake_x").map(|m| m.1 >> 29 & 1), Some(1));
    assert_eq!(misc("core2_penryn_t9600").map(|m| m.1 >> 29 & 1), Some(0));
    let mut v = soft("corei7_skylake_x");
    v.host.cr4 |= 1 << 13;
    {
        vmxon(&mut v, 0x1000).unwrap();
        vmptrld(&mut v, 0x2000).unwrap();
        assert_eq!(
            vmwrite(&mut v, VmcsField::ExitQualification.encoding(), 5),
            Ok(())
        );
    }
    let mut v = soft("core2_penryn_t9600");
    v.host.cr4 |= 1 << 13;
    {
        vmxon(&mut v, 0x1000).unwrap();
        vmptrld(&mut v, 0x2000).unwrap();
        assert_eq!(
            vmwrite(&mut v, VmcsField::ExitQualification.encoding(), 5),
            Err(VmFail::Valid(VmInstructionError::VmwriteReadOnlyComponent))
        );
    }
}

#[test]
fn launch_once_then_resume_and_never_vmclear_per_run() {
    let mut s = setup("corei7_skylake_x").unwrap();
    s.root.vmx().set_hook(cpu_loop(10, 0, 2));
    for _ in 0..10 {
        assert_eq!(s.vcpu.run(&mut s.root), Ok(VmExit::Cpuid));
        s.vcpu
            .with_vmcs(&mut s.root, |vmcs, _| skip_instruction(vmcs))
            .unwrap()
            .unwrap();
    }
    let c = &s.root.vmx().counts;
    assert_eq!(
        (c.vmlaunch, c.vmresume, c.vmclear, c.vmptrld, c.vmxon),
        (1, 9, 1, 1, 1)
    );
    // The guest MSRs were swapped in once, not per exit.
    assert_eq!(c.wrmsr, 6);
    s.vcpu.put(&mut s.root);
    assert_eq!(s.root.vmx().counts.wrmsr, 12);
}

/// Per-exit VMREAD/VMWRITE in steady state, measured by the model (the CPU's view) and by the
/// vCPU's own counters (which must agree).
fn steady_state(reason: u32, qualification: u64, len: u32) -> (f64, f64, Setup) {
    let mut s = setup("corei7_skylake_x").unwrap();
    let rip = Rc::new(Cell::new(0u64));
    let seen = rip.clone();
    s.root.vmx().set_hook(move |cpu: &mut GuestCpu<'_>| {
        // The guest executes the instruction at RIP (which the handler must have advanced).
        seen.set(cpu.read(VmcsField::GuestRip));
        cpu.regs.gpr[reg::RAX] = 0x41;
        cpu.exit(reason, qualification, len);
    });
    const WARMUP: u64 = 10;
    const N: u64 = 100;
    let (mut r0, mut w0, mut s0) = (0, 0, Default::default());
    for i in 0..WARMUP + N {
        if i == WARMUP {
            r0 = s.root.vmx().counts.vmread;
            w0 = s.root.vmx().counts.vmwrite;
            s0 = s.vcpu.stats().exit(bucket_of(reason as u16));
        }
        let exit = s.vcpu.run(&mut s.root).unwrap();
        match exit {
            VmExit::Cpuid => {
                s.vcpu
                    .with_vmcs(&mut s.root, |vmcs, regs| {
                        regs.gpr[reg::RAX] = 0;
                        regs.gpr[reg::RBX] = 0x756e_6547;
                        skip_instruction(vmcs)
                    })
                    .unwrap()
                    .unwrap();
            }
            VmExit::Io(io) => {
                assert_eq!(io.direction, IoDirection::Out);
                let value = s.vcpu.regs.gpr[reg::RAX] & 0xff;
                assert_eq!(value, 0x41);
                s.vcpu
                    .with_vmcs(&mut s.root, |vmcs, _| skip_instruction(vmcs))
                    .unwrap()
                    .unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Sampled before run #WARMUP and after the handling of the last exit: exactly N windows of
    // "flush + VMRESUME + exit decoding + handling" (the last RIP write is flushed by a later
    // entry, the first one's by this window's first entry).
    assert_eq!(
        rip.get(),
        0xfff0 + u64::from(len) * (WARMUP + N - 1),
        "RIP advanced every exit"
    );
    let c = &s.root.vmx().counts;
    let reads = (c.vmread - r0) as f64 / N as f64;
    let writes = (c.vmwrite - w0) as f64 / N as f64;
    // The vCPU's counters saw the same operations (its windows run exit→exit).
    let s1 = s.vcpu.stats().exit(bucket_of(reason as u16));
    assert_eq!(s1.exits - s0.exits, N);
    assert_eq!(s1.vmreads - s0.vmreads, c.vmread - r0);
    assert_eq!(s1.vmwrites - s0.vmwrites, c.vmwrite - w0);
    (reads, writes, s)
}

#[test]
fn cpuid_exit_costs_at_most_4_vmreads_and_1_vmwrite() {
    let (reads, writes, s) = steady_state(10, 0, 2);
    println!("CPUID: {reads} VMREAD, {writes} VMWRITE per exit (steady state, model count)");
    let st = s.vcpu.stats().exit(10);
    println!("CPUID: vCPU counters: {st:?}");
    assert!(
        reads <= 4.0 && writes <= 1.0,
        "{reads} reads, {writes} writes"
    );
    assert!(reads >= 1.0, "the exit reason must be read");
}

#[test]
fn out_exit_costs_at_most_4_vmreads_and_1_vmwrite() {
    // OUT DX, AL to port 0x3f8 (SDM Table 28-5: size-1 = 0, direction 0, DX operand).
    let q = 0x03f8_0000;
    assert_eq!(
        IoAccess::from_qualification(q),
        IoAccess {
            port: 0x3f8,
            size: 1,
            direction: IoDirection::Out,
            string: false,
            rep: false,
            immediate: false
        }
    );
    let (reads, writes, _) = steady_state(30, q, 1);
    println!("OUT: {reads} VMREAD, {writes} VMWRITE per exit (steady state, model count)");
    assert!(
        reads <= 4.0 && writes <= 1.0,
        "{reads} reads, {writes} writes"
    );
}

#[test]
fn migration_invalidates_the_cache_and_rewrites_host_state_once() {
    let mut s = setup("corei7_skylake_x").unwrap();
    s.root.vmx().set_hook(cpu_loop(10, 0, 2));
    assert_eq!(s.vcpu.run(&mut s.root), Ok(VmExit::Cpuid));
    s.vcpu
        .with_vmcs(&mut s.root, |v, _| skip_instruction(v))
        .unwrap()
        .unwrap();
    assert_eq!(s.vcpu.run(&mut s.root), Ok(VmExit::Cpuid));
    // Move: VMCLEAR here, VMXOFF, VMXON as "CPU 1" (a new VMXON, so a new residency token).
    s.vcpu.unload(&mut s.root).unwrap();
    let (mut vmx, page) = s.root.disable().map_err(|e| e.1).unwrap();
    vmx.host.gdt.base += 0x1000; // CPU 1 has its own GDT/TSS
    vmx.host.tss_base += 0x1000;
    let writes_before = vmx.counts.writes_by_field.clone();
    // SAFETY: software model.
    let mut root = unsafe { VmxRoot::enable(vmx, 1, page) }
        .map_err(|e| e.0)
        .unwrap();
    assert_eq!(s.vcpu.run(&mut root), Ok(VmExit::Cpuid));
    let c = &root.vmx().counts;
    let written = |f: VmcsField| {
        c.writes_by_field.get(&f.encoding()).copied().unwrap_or(0)
            - writes_before.get(&f.encoding()).copied().unwrap_or(0)
    };
    assert_eq!(written(VmcsField::HostGdtrBase), 1);
    assert_eq!(written(VmcsField::HostTrBase), 1);
    assert_eq!(
        written(VmcsField::HostRsp),
        1,
        "new CPU, new stack: the stub rewrites HOST_RSP"
    );
    assert_eq!(
        written(VmcsField::GuestCsAccessRights),
        0,
        "guest setup is not redone"
    );
    assert_eq!(
        root.vmx().peek(VmcsField::HostGdtrBase),
        Some(0xffff_8000_0001_1000)
    );
    // VMCLEAR made the launch state clear: VMLAUNCH again, not VMRESUME.
    assert_eq!(root.vmx().counts.vmlaunch, 2);
    // Running after the move without unloading on the new CPU: refused cleanly.
    let page2 = rhax_core::platform::Platform::alloc_pages(&s.platform, 1).unwrap();
    // SAFETY: software model.
    let mut other = unsafe { VmxRoot::enable(soft("corei7_skylake_x"), 2, page2) }
        .map_err(|e| e.0)
        .unwrap();
    assert_eq!(
        s.vcpu.run(&mut other),
        Err(RunError::ActiveElsewhere { cpu: 1 })
    );
    assert!(s.controls.proc2.bits() != 0);
}

#[test]
fn pending_writes_survive_migration_and_reach_the_new_cpu() {
    let mut s = setup("corei7_skylake_x").unwrap();
    s.root.vmx().set_hook(cpu_loop(10, 0, 2));
    assert_eq!(s.vcpu.run(&mut s.root), Ok(VmExit::Cpuid));
    s.vcpu
        .with_vmcs(&mut s.root, |v, _| v.set_guest_rip(0x7c00))
        .unwrap();
    s.vcpu.unload(&mut s.root).unwrap();
    let (vmx, page) = s.root.disable().map_err(|e| e.1).unwrap();
    // SAFETY: software model.
    let mut root = unsafe { VmxRoot::enable(vmx, 1, page) }
        .map_err(|e| e.0)
        .unwrap();
    let seen = Rc::new(Cell::new(0));
    let seen2 = seen.clone();
    root.vmx().set_hook(move |cpu: &mut GuestCpu<'_>| {
        seen2.set(cpu.read(VmcsField::GuestRip));
        cpu.exit(12, 0, 1);
    });
    assert_eq!(s.vcpu.run(&mut root), Ok(VmExit::Hlt));
    assert_eq!(seen.get(), 0x7c00);
}

/// HOST_CR3 and HOST_FS_BASE (the calling thread's) are read and written at the first run
/// after a `put`, not per exit: between two `put`s the thread keeps its address space and FS
/// base (the caller cannot be preempted nor reach user mode), and the VMCS keeps the values.
#[test]
fn host_thread_state_is_refreshed_once_per_put_not_per_exit() {
    let mut s = setup("corei7_skylake_x").unwrap();
    s.root.vmx().set_hook(cpu_loop(10, 0, 2));
    const FS: u32 = rhax_core::vmx::root::IA32_FS_BASE;
    let step = |s: &mut Setup| {
        assert_eq!(s.vcpu.run(&mut s.root), Ok(VmExit::Cpuid));
        s.vcpu
            .with_vmcs(&mut s.root, |v, _| skip_instruction(v))
            .unwrap()
            .unwrap();
    };
    step(&mut s);
    let host = |s: &mut Setup| {
        let v = s.root.vmx();
        (v.peek(VmcsField::HostCr3), v.peek(VmcsField::HostFsBase))
    };
    let (cr3, fs) = host(&mut s);
    assert_eq!(cr3, Some(s.root.vmx().host.cr3));
    let rdmsr_before = s.root.vmx().counts.rdmsr;
    // A new thread state the vCPU must not see before the next put (it cannot happen there).
    s.root.vmx().host.cr3 += 0x1000;
    s.root.vmx().msrs.insert(FS, 0x7000);
    step(&mut s);
    step(&mut s);
    assert_eq!(host(&mut s), (cr3, fs), "no refresh between puts");
    assert_eq!(s.root.vmx().counts.rdmsr, rdmsr_before, "no RDMSR per exit");
    s.vcpu.put(&mut s.root);
    step(&mut s);
    let new_cr3 = s.root.vmx().host.cr3;
    assert_eq!(host(&mut s), (Some(new_cr3), Some(0x7000)));
}

/// As [`run_with_broken`], with several fields changed (each `(field, or, and_not)`).
fn run_with_changes(changes: &[(VmcsField, u64, u64)]) -> Result<VmExit, RunError> {
    let mut s = setup("corei7_skylake_x").unwrap();
    s.root.vmx().set_hook(cpu_loop(10, 0, 2));
    assert_eq!(s.vcpu.run(&mut s.root), Ok(VmExit::Cpuid));
    for &(field, or, and_not) in changes {
        let v = s.root.vmx().peek(field).unwrap_or(0);
        s.root.vmx().poke(field, (v | or) & !and_not);
    }
    s.vcpu.run(&mut s.root)
}

#[test]
fn apic_virtualization_controls_follow_the_sdm_entry_rules() {
    use VmcsField as F;
    let bad = Err(RunError::Entry(VmFail::Valid(
        VmInstructionError::EntryInvalidControlFields,
    )));
    const TPR_SHADOW: u64 = 1 << 21;
    const APIC_ACCESSES: u64 = 1 << 0;
    const X2APIC_MODE: u64 = 1 << 4;
    const VID: u64 = 1 << 9;
    const EXT_INT_EXITING: u64 = 1 << 0;
    let proc = |or| (F::PrimaryProcessorBasedVmExecutionControls, or, 0);
    let proc2 = |or| (F::SecondaryProcessorBasedVmExecutionControls, or, 0);
    let shadow = [proc(TPR_SHADOW), (F::VirtualApicAddress, 0x5000, 0)];
    // SDM Vol. 3C §27.2.1.1: virtual-interrupt delivery needs the TPR shadow...
    assert_eq!(run_with_changes(&[proc2(VID)]), bad);
    // ... and external-interrupt exiting.
    let no_ext = (F::PinBasedVmExecutionControls, 0, EXT_INT_EXITING);
    assert_eq!(
        run_with_changes(&[shadow[0], shadow[1], proc2(VID), no_ext]),
        bad
    );
    assert_eq!(
        run_with_changes(&[shadow[0], shadow[1], proc2(VID)]),
        Ok(VmExit::Cpuid),
        "the rules met"
    );
    // TPR threshold bits 31:4 must be 0 without virtual-interrupt delivery, not with it.
    let threshold = (F::TprThreshold, 0x10, 0);
    assert_eq!(run_with_changes(&[shadow[0], shadow[1], threshold]), bad);
    assert_eq!(
        run_with_changes(&[shadow[0], shadow[1], threshold, proc2(VID)]),
        Ok(VmExit::Cpuid)
    );
    // "virtualize x2APIC mode" excludes "virtualize APIC accesses".
    let access = (F::ApicAccessAddress, 0x6000, 0);
    assert_eq!(
        run_with_changes(&[
            shadow[0],
            shadow[1],
            access,
            proc2(X2APIC_MODE | APIC_ACCESSES)
        ]),
        bad
    );
    // The APIC-access address is page aligned.
    assert_eq!(
        run_with_changes(&[(F::ApicAccessAddress, 0x6010, 0), proc2(APIC_ACCESSES)]),
        bad
    );
    assert_eq!(
        run_with_changes(&[access, proc2(APIC_ACCESSES)]),
        Ok(VmExit::Cpuid)
    );
}
