//! Host tests over the scripted [`Fake`] transport: the exact code and bytes of every call,
//! reply decoding, and refusal of short, oversized and malformed replies.

use rhax_api::ext::{RhaxExtInfo, VcpuStats, RHAX_EXT_MAGIC};
use rhax_api::{
    CapabilityInfo, CpuidEntry, CpuidTable, FastMmio, FxLayout, IoDirection, MmioDirection,
    ModuleVersion, MsrData, PageFaultFlags, Platform, Pod, RamFlags, RamPermission, Tunnel,
    TunnelInfo, TunnelIo, VcpuDebug, VcpuState, VmxMsr,
};

use crate::fake::{Call, Fake, Reply};
use crate::{DevicePath, Error, Exit, OsError, System, Vcpu, Vm};

const RAM_VA: u64 = 0x7f12_3400_0000;

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The literal codes of the IOCTLs in the session, per platform (`haxm-abi.md` §2).
struct Codes {
    capability: u32,
    version: u32,
    create_vm: u32,
    notify: u32,
    add_ramblock: u32,
    set_ram: u32,
    vcpu_create: u32,
    setup_tunnel: u32,
    set_regs: u32,
    set_fpu: u32,
    set_msrs: u32,
    run: u32,
}

const LINUX: Codes = Codes {
    capability: 0x8010_0023,
    version: 0xc008_0020,
    create_vm: 0xc004_0021,
    notify: 0x4008_0084,
    add_ramblock: 0x4018_0085,
    set_ram: 0xc018_0082,
    vcpu_create: 0xc004_0080,
    setup_tunnel: 0xc018_00c5,
    set_regs: 0xc200_00c7,
    set_fpu: 0x4200_00c3,
    set_msrs: 0xc208_00c1,
    run: 0x0000_00c0,
};

const WINDOWS: Codes = Codes {
    capability: 0x4000_2440,
    version: 0x4000_2400,
    create_vm: 0x4000_2404,
    notify: 0x4000_2440,
    add_ramblock: 0x4000_244c,
    set_ram: 0x4000_2410,
    vcpu_create: 0x4000_2408,
    setup_tunnel: 0x4000_242c,
    set_regs: 0x4000_2434,
    set_fpu: 0x4000_2424,
    set_msrs: 0x4000_241c,
    run: 0x4000_2418,
};

const DARWIN: Codes = Codes {
    capability: 0x4010_0023,
    version: 0xc008_0020,
    create_vm: 0xc004_0021,
    notify: 0x8008_0084,
    add_ramblock: 0x8018_0085,
    set_ram: 0xc018_0082,
    vcpu_create: 0xc004_0080,
    setup_tunnel: 0xc018_00c5,
    set_regs: 0xc200_00c7,
    set_fpu: 0x8200_00c3,
    set_msrs: 0xc208_00c1,
    run: 0x2000_00c0,
};

fn haxm_capability() -> CapabilityInfo {
    CapabilityInfo {
        wstatus: 0x3,
        winfo: 0x3ff,
        win_refcount: 1,
        mem_quota: 1 << 48,
    }
}

fn io_exit(direction: u8, port: u16, size: u16, count: u16) -> Tunnel {
    let mut t = Tunnel {
        exit_reason: 30,
        exit_status: 1,
        ready_for_interrupt_injection: 1,
        ..Tunnel::default()
    };
    *t.io_mut() = TunnelIo {
        direction,
        df: 0,
        size,
        port,
        count,
        ..TunnelIo::default()
    };
    t
}

fn status_exit(status: u32) -> Tunnel {
    Tunnel {
        exit_status: status,
        ..Tunnel::default()
    }
}

/// Opens the system device, creates VM 3 and vCPU 0 with no checks, clearing the record.
fn vcpu_on(fake: &Fake) -> (Vm<Fake>, Vcpu<Fake>) {
    fake.script([Reply::out(&le32(3)), Reply::ok(), Reply::tunnel()]);
    let sys = System::open(fake.clone()).unwrap();
    let vm = sys.create_vm().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    fake.take_calls();
    (vm, vcpu)
}

fn check(call: &Call, device: DevicePath, code: u32, kind: &str, input: &[u8]) {
    assert_eq!(call.device, device, "{}", call.name);
    assert_eq!(call.code, code, "{} code", call.name);
    assert_eq!(call.kind, kind, "{} buffer kind", call.name);
    assert_eq!(call.input, input, "{} input bytes", call.name);
}

/// QEMU's order (`haxm-clients.md` §1-§3): CAPABILITY, VERSION, CREATE_VM, open the VM,
/// NOTIFY_QEMU_VERSION, ADD_RAMBLOCK, SET_RAM, VCPU_CREATE, open the vCPU, SETUP_TUNNEL,
/// SET_REGS/FPU/MSRS, then RUN: an OUT exit, an IN exit completed by the caller, HLT.
fn qemu_session(platform: Platform, codes: &Codes) {
    let fake = Fake::new(platform);
    let version = ModuleVersion {
        compat_version: 1,
        cur_version: 4,
    };
    let mut out_exit = io_exit(0, 0x3f8, 1, 1);
    out_exit.apic_base = 0xfee0_0900;
    fake.script([
        Reply::pod(&haxm_capability()),
        Reply::pod(&version),
        Reply::out(&le32(7)),
        Reply::ok(),     // NOTIFY
        Reply::ok(),     // ADD_RAMBLOCK
        Reply::ok(),     // SET_RAM
        Reply::ok(),     // VCPU_CREATE
        Reply::tunnel(), // SETUP_TUNNEL
        Reply::ok(),     // SET_REGS
        Reply::ok(),     // SET_FPU
        Reply::out(&{
            let mut d = MsrData::from_entries(&[VmxMsr::default(); 2]).unwrap();
            d.done = 2;
            d.as_bytes().to_vec()
        }), // SET_MSRS
        Reply::exit(&out_exit, b"A"),
        Reply::exit(&io_exit(1, 0x60, 1, 1), &[0; 64]),
        Reply::exit(&status_exit(6), &[]),
    ]);

    let sys = System::open(fake.clone()).unwrap();
    let caps = sys.working_capability().unwrap();
    assert_eq!(caps, haxm_capability());
    assert_eq!(sys.check_version().unwrap(), version);
    let vm = sys.create_vm().unwrap();
    assert_eq!(vm.id(), 7);
    vm.notify_qemu_version().unwrap();
    // SAFETY: the fake never touches guest memory.
    unsafe { vm.add_ramblock(RAM_VA, 0x800_0000).unwrap() };
    vm.set_ram(0, 0xa_0000, RAM_VA, RamFlags::empty()).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    assert_eq!((vcpu.vm_id(), vcpu.id()), (7, 0));
    assert_eq!(vcpu.tunnel_info().size, 4096);

    let mut regs = VcpuState {
        rip: 0xfff0,
        ..VcpuState::default()
    };
    regs.cs.selector = 0xf000;
    regs.cs.base = 0xffff_0000;
    vcpu.set_regs(&regs).unwrap();
    let fpu = FxLayout {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..FxLayout::default()
    };
    vcpu.set_fpu(&fpu).unwrap();
    let msrs = [
        VmxMsr {
            entry: 0x174,
            value: 0x10,
        },
        VmxMsr {
            entry: 0xc000_0080,
            value: 0x500,
        },
    ];
    assert_eq!(vcpu.set_msrs(&msrs).unwrap(), 2);

    // RUN 1: OUT 'A' to COM1.
    match vcpu.run().unwrap() {
        Exit::Io {
            direction: IoDirection::Out,
            size: 1,
            count: 1,
            port: 0x3f8,
            df: false,
            string: false,
            data,
        } => assert_eq!(data, b"A"),
        other => panic!("expected OUT, got {other:?}"),
    }
    assert!(vcpu.ready_for_interrupt_injection());
    assert_eq!(vcpu.apic_base(), 0xfee0_0900);
    // RUN 2: IN from the keyboard port; answer 0x42.
    match vcpu.run().unwrap() {
        Exit::Io {
            direction: IoDirection::In,
            port: 0x60,
            data,
            ..
        } => {
            assert_eq!(data.len(), 1);
            data[0] = 0x42;
        }
        other => panic!("expected IN, got {other:?}"),
    }
    // RUN 3: the driver sees the answer, the guest halts.
    assert!(matches!(vcpu.run().unwrap(), Exit::Hlt));
    assert_eq!(fake.unused_replies(), 0);

    let sysd = DevicePath::System;
    let vmd = DevicePath::Vm { vm: 7 };
    let cpud = DevicePath::Vcpu { vm: 7, vcpu: 0 };
    assert_eq!(fake.opens(), [sysd, vmd, cpud]);
    let calls = fake.calls();
    let names: Vec<_> = calls.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "HAX_IOCTL_CAPABILITY",
            "HAX_IOCTL_VERSION",
            "HAX_IOCTL_CREATE_VM",
            "HAX_VM_IOCTL_NOTIFY_QEMU_VERSION",
            "HAX_VM_IOCTL_ADD_RAMBLOCK",
            "HAX_VM_IOCTL_SET_RAM",
            "HAX_VM_IOCTL_VCPU_CREATE",
            "HAX_VCPU_IOCTL_SETUP_TUNNEL",
            "HAX_VCPU_SET_REGS",
            "HAX_VCPU_IOCTL_SET_FPU",
            "HAX_VCPU_IOCTL_SET_MSRS",
            "HAX_VCPU_IOCTL_RUN",
            "HAX_VCPU_IOCTL_RUN",
            "HAX_VCPU_IOCTL_RUN",
        ]
    );
    check(&calls[0], sysd, codes.capability, "out", &[]);
    assert_eq!(calls[0].out_len, 16);
    check(&calls[1], sysd, codes.version, "out", &[]);
    assert_eq!(calls[1].out_len, 8);
    check(&calls[2], sysd, codes.create_vm, "out", &[]);
    assert_eq!(calls[2].out_len, 4);
    check(
        &calls[3],
        vmd,
        codes.notify,
        "in",
        &[4, 0, 0, 0, 4, 0, 0, 0],
    );
    check(
        &calls[4],
        vmd,
        codes.add_ramblock,
        "in",
        &cat(&[&RAM_VA.to_le_bytes(), &0x800_0000u64.to_le_bytes(), &[0; 8]]),
    );
    check(
        &calls[5],
        vmd,
        codes.set_ram,
        "in",
        &cat(&[
            &0u64.to_le_bytes(),
            &0xa_0000u32.to_le_bytes(),
            &[0, 0, 0, 0],
            &RAM_VA.to_le_bytes(),
        ]),
    );
    check(&calls[6], vmd, codes.vcpu_create, "in", &[0, 0, 0, 0]);
    check(&calls[7], cpud, codes.setup_tunnel, "out", &[]);
    assert_eq!(calls[7].out_len, 24);
    check(&calls[8], cpud, codes.set_regs, "in", regs.as_bytes());
    assert_eq!(&calls[8].input[128..136], &0xfff0u64.to_le_bytes());
    check(&calls[9], cpud, codes.set_fpu, "in", fpu.as_bytes());
    let mut msr_in = cat(&[&[2, 0, 0, 0, 0, 0, 0, 0]]);
    for m in msrs {
        msr_in.extend(m.entry.to_le_bytes());
        msr_in.extend(m.value.to_le_bytes());
    }
    msr_in.resize(520, 0);
    check(&calls[10], cpud, codes.set_msrs, "inout", &msr_in);
    for run in &calls[11..14] {
        check(run, cpud, codes.run, "none", &[]);
        // `_exit_reason` is cleared before every RUN.
        assert_eq!(&run.tunnel.as_ref().unwrap()[0..4], &[0; 4]);
    }
    // The third RUN finds the IN data in the IO buffer.
    assert_eq!(calls[13].io.as_ref().unwrap()[0], 0x42);
    assert!(calls.iter().all(|c| !c.pointer_arg));

    // Dropping closes vCPU, VM and system devices.
    drop(vcpu);
    drop(vm);
    drop(sys);
    assert_eq!(fake.closes(), [cpud, vmd, sysd]);
}

#[test]
fn qemu_session_linux() {
    qemu_session(Platform::Linux, &LINUX);
}

#[test]
fn qemu_session_windows() {
    qemu_session(Platform::Windows, &WINDOWS);
}

#[test]
fn qemu_session_darwin() {
    qemu_session(Platform::Darwin, &DARWIN);
}

#[test]
fn device_names() {
    let vm = DevicePath::Vm { vm: 3 };
    let cpu = DevicePath::Vcpu { vm: 3, vcpu: 12 };
    assert_eq!(DevicePath::System.windows().to_string(), r"\\.\HAX");
    assert_eq!(vm.windows().to_string(), r"\\.\hax_vm03");
    assert_eq!(cpu.windows().to_string(), r"\\.\hax_vm03_vcpu12");
    assert_eq!(DevicePath::System.posix().to_string(), "/dev/HAX");
    assert_eq!(vm.posix().to_string(), "/dev/hax_vm/vm03");
    assert_eq!(cpu.posix().to_string(), "/dev/hax_vm03/vcpu12");
    assert_eq!(cpu.to_string(), "/dev/hax_vm03/vcpu12");
}

#[test]
fn open_and_create_failures_are_typed() {
    let fake = Fake::new(Platform::Linux);
    fake.fail_open(DevicePath::System, OsError::Errno(2));
    assert_eq!(
        System::open(fake.clone()).err(),
        Some(Error::Open {
            device: DevicePath::System,
            os: OsError::Errno(2)
        })
    );

    let fake = Fake::new(Platform::Windows);
    fake.script([Reply::err(OsError::Win32(31))]);
    let sys = System::open(fake.clone()).unwrap();
    assert_eq!(
        sys.create_vm().err(),
        Some(Error::CreateVm(OsError::Win32(31)))
    );
    // A VM id HAXM could never hand out.
    fake.script([Reply::out(&le32(64))]);
    assert!(matches!(
        sys.create_vm(),
        Err(Error::Malformed {
            field: "vm_id",
            value: 64,
            ..
        })
    ));
    // The VM device does not open.
    fake.fail_open(DevicePath::Vm { vm: 5 }, OsError::Win32(2));
    fake.script([Reply::out(&le32(5))]);
    assert!(matches!(
        sys.create_vm(),
        Err(Error::Open {
            device: DevicePath::Vm { vm: 5 },
            ..
        })
    ));

    fake.script([Reply::out(&le32(1)), Reply::err(OsError::Win32(87))]);
    let vm = sys.create_vm().unwrap();
    assert_eq!(
        vm.create_vcpu(16).err(),
        Some(Error::CreateVcpu {
            id: 16,
            os: OsError::Win32(87)
        })
    );
    assert_eq!(fake.unused_replies(), 0);
}

#[test]
fn short_and_oversized_replies() {
    let fake = Fake::new(Platform::Linux);
    let sys = System::open(fake.clone()).unwrap();
    fake.script([Reply::out(&[4, 0, 0, 0])]);
    assert_eq!(
        sys.version().err(),
        Some(Error::ShortReply {
            ioctl: "HAX_IOCTL_VERSION",
            expected: 8,
            got: 4
        })
    );
    // Claims 17 bytes into a 16-byte buffer.
    fake.script([Reply {
        returned: Some(17),
        ..Reply::pod(&haxm_capability())
    }]);
    assert!(matches!(
        sys.capability(),
        Err(Error::Malformed {
            field: "bytes returned",
            value: 17,
            ..
        })
    ));
    // Bytes claimed for an IOCTL with no output.
    fake.script([Reply {
        returned: Some(1),
        ..Reply::ok()
    }]);
    assert!(matches!(
        sys.set_memlimit(Some(1024)),
        Err(Error::Malformed { .. })
    ));
    // Oversized data is truncated to the buffer, then refused.
    fake.script([Reply::out(&[0xff; 40])]);
    assert!(matches!(sys.create_vm(), Err(Error::Malformed { .. })));
}

#[test]
fn version_and_capability_checks() {
    let fake = Fake::new(Platform::Linux);
    let sys = System::open(fake.clone()).unwrap();
    for (compat, cur, ok) in [
        (1, 4, true),
        (4, 4, true),
        (1, 5, true),
        (1, 3, false),
        (5, 6, false),
    ] {
        fake.script([Reply::pod(&ModuleVersion {
            compat_version: compat,
            cur_version: cur,
        })]);
        let r = sys.check_version();
        if ok {
            assert!(r.is_ok(), "{compat}/{cur}");
        } else {
            assert_eq!(
                r.err(),
                Some(Error::VersionUnsupported {
                    compat_version: compat,
                    cur_version: cur
                })
            );
        }
    }
    fake.script([Reply::pod(&CapabilityInfo {
        wstatus: 0,
        winfo: 2,
        ..CapabilityInfo::default()
    })]);
    assert_eq!(
        sys.working_capability().err(),
        Some(Error::NotWorking { failure: 2 })
    );
    fake.script([Reply::ok(), Reply::ok()]);
    sys.set_memlimit(Some(2048)).unwrap();
    sys.set_memlimit(None).unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 8);
    check(
        &calls[6],
        DevicePath::System,
        0xc010_0024,
        "in",
        &cat(&[&[1, 0, 0, 0, 0, 0, 0, 0], &2048u64.to_le_bytes()]),
    );
    assert_eq!(calls[7].input, [0; 16]);
}

#[test]
fn ext_info_identifies_rhax() {
    let fake = Fake::new(Platform::Windows);
    let sys = System::open(fake.clone()).unwrap();
    let good = RhaxExtInfo {
        magic: RHAX_EXT_MAGIC,
        version: 1,
        features: 1,
    };
    fake.script([
        Reply::pod(&good),
        Reply::pod(&RhaxExtInfo { magic: 0, ..good }),
        Reply::err(OsError::Win32(1)),
    ]);
    assert_eq!(sys.ext_info(), Ok(good));
    assert_eq!(sys.ext_info(), Err(Error::NotRhax { magic: 0 }));
    assert_eq!(sys.ext_info(), Err(Error::ExtInfo(OsError::Win32(1))));
    assert!(fake.calls().iter().all(|c| c.code == 0x4000_2800));
}

#[test]
fn memory_calls_bytes_and_refusals() {
    let fake = Fake::new(Platform::Linux);
    let (vm, _vcpu) = vcpu_on(&fake);
    let vmd = DevicePath::Vm { vm: 3 };
    fake.script([
        Reply::ok(),
        Reply::ok(),
        Reply::ok(),
        Reply::ok(),
        Reply::ok(),
    ]);
    // SAFETY: the fake never touches guest memory.
    unsafe { vm.alloc_ram(RAM_VA, 0x10_0000).unwrap() };
    vm.set_ram(0xf_0000, 0x1_0000, RAM_VA, RamFlags::ROM)
        .unwrap();
    vm.unmap(0xa_0000, 0x2_0000).unwrap();
    vm.set_ram2(0x1_0000_0000, 0x2_0000_0000, RAM_VA, RamFlags::empty())
        .unwrap();
    vm.protect_ram(0x20_0000, 0x20_0000, RamPermission::None)
        .unwrap();
    let calls = fake.take_calls();
    check(
        &calls[0],
        vmd,
        0xc010_0081,
        "in",
        &cat(&[&0x10_0000u32.to_le_bytes(), &[0; 4], &RAM_VA.to_le_bytes()]),
    );
    check(
        &calls[1],
        vmd,
        0xc018_0082,
        "in",
        &cat(&[
            &0xf_0000u64.to_le_bytes(),
            &0x1_0000u32.to_le_bytes(),
            &[1, 0, 0, 0],
            &RAM_VA.to_le_bytes(),
        ]),
    );
    check(
        &calls[2],
        vmd,
        0xc018_0082,
        "in",
        &cat(&[
            &0xa_0000u64.to_le_bytes(),
            &0x2_0000u32.to_le_bytes(),
            &[0x80, 0, 0, 0],
            &[0; 8],
        ]),
    );
    check(
        &calls[3],
        vmd,
        0xc028_0086,
        "in",
        &cat(&[
            &0x1_0000_0000u64.to_le_bytes(),
            &0x2_0000_0000u64.to_le_bytes(),
            &RAM_VA.to_le_bytes(),
            &[0; 16],
        ]),
    );
    check(
        &calls[4],
        vmd,
        0xc018_0087,
        "in",
        &cat(&[
            &0x20_0000u64.to_le_bytes(),
            &0x20_0000u64.to_le_bytes(),
            &[0; 8],
        ]),
    );
    // Refused before sending: STANDALONE without the unsafe promise, unknown flags.
    assert!(matches!(
        vm.set_ram2(0, 0x1000, RAM_VA, RamFlags::STANDALONE),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        vm.set_ram(0, 0x1000, RAM_VA, RamFlags::from_bits_retain(0x100)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(fake.calls().is_empty());
    fake.script([Reply::err(OsError::Errno(22))]);
    assert_eq!(
        vm.set_ram(0, 0x1000, RAM_VA, RamFlags::empty()),
        Err(Error::SetRam(OsError::Errno(22)))
    );
}

#[test]
fn get_apic_state_checks_the_layout_version() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, vcpu) = vcpu_on(&fake);
    let mut st = rhax_api::apic::RhaxApicState {
        version: rhax_api::apic::RHAX_APIC_STATE_VERSION,
        flags: rhax_api::apic::RHAX_APIC_TIMER_ARMED,
        tsc_deadline: 0x1234,
        ..Default::default()
    };
    assert!(st.set_reg(0x320, 0x2_0040));
    fake.script([Reply::pod(&st)]);
    assert_eq!(vcpu.get_apic_state().unwrap(), st);
    st.version = 2;
    fake.script([Reply::pod(&st)]);
    assert!(matches!(
        vcpu.get_apic_state(),
        Err(Error::Malformed {
            field: "version",
            value: 2,
            ..
        })
    ));
    fake.script([Reply::err(OsError::Errno(6))]);
    assert_eq!(
        vcpu.get_apic_state().err(),
        Some(Error::GetApicState(OsError::Errno(6)))
    );
}

#[test]
fn vcpu_state_calls() {
    let fake = Fake::new(Platform::Windows);
    let (_vm, vcpu) = vcpu_on(&fake);
    let cpud = DevicePath::Vcpu { vm: 3, vcpu: 0 };
    let mut regs = VcpuState::default();
    regs.regs[0] = 0x1234;
    regs.cr0 = 0x6000_0010;
    let fpu = FxLayout {
        fsw: 0x3800,
        ..FxLayout::default()
    };
    fake.script([Reply::pod(&regs), Reply::pod(&fpu)]);
    assert_eq!(vcpu.get_regs().unwrap(), regs);
    assert_eq!(vcpu.get_fpu().unwrap(), fpu);
    // Short GET_REGS.
    fake.script([Reply::out(&[0; 100])]);
    assert_eq!(
        vcpu.get_regs().err(),
        Some(Error::ShortReply {
            ioctl: "HAX_VCPU_GET_REGS",
            expected: 512,
            got: 100
        })
    );
    fake.script([Reply::err(OsError::Win32(87))]);
    assert_eq!(
        vcpu.set_regs(&regs).err(),
        Some(Error::SetRegs(OsError::Win32(87)))
    );
    let calls = fake.take_calls();
    check(&calls[0], cpud, 0x4000_2438, "out", &[]);
    check(&calls[1], cpud, 0x4000_2428, "out", &[]);
    check(&calls[3], cpud, 0x4000_2434, "in", regs.as_bytes());

    // INTERRUPT: a u32 with the vector in the low byte.
    fake.script([Reply::ok(), Reply::ok(), Reply::ok()]);
    vcpu.interrupt(0x30).unwrap();
    vcpu.kickoff().unwrap();
    let dbg = VcpuDebug {
        control: 0x9,
        reserved: 0,
        dr: [0x1000, 0, 0, 0, 0, 0, 0, 0x401],
    };
    vcpu.debug(&dbg).unwrap();
    let calls = fake.take_calls();
    check(&calls[0], cpud, 0x4000_2430, "in", &[0x30, 0, 0, 0]);
    check(&calls[1], cpud, 0x4000_243c, "none", &[]);
    check(&calls[2], cpud, 0x4000_2458, "in", dbg.as_bytes());
}

#[test]
fn kickoff_and_get_cpuid_missing_on_some_platforms() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, vcpu) = vcpu_on(&fake);
    assert_eq!(
        vcpu.kickoff(),
        Err(Error::Unsupported {
            ioctl: "HAX_VCPU_IOCTL_KICKOFF"
        })
    );
    let fake = Fake::new(Platform::NetBsd);
    let (_vm, vcpu) = vcpu_on(&fake);
    assert!(matches!(
        vcpu.get_cpuid(),
        Err(Error::Unsupported {
            ioctl: "HAX_VCPU_IOCTL_GET_CPUID"
        })
    ));
    assert!(fake.calls().is_empty(), "nothing is sent");
}

#[test]
fn msrs_done_semantics() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, vcpu) = vcpu_on(&fake);
    let mut want = [
        VmxMsr {
            entry: 0x10,
            value: 0,
        },
        VmxMsr {
            entry: 0xc000_0080,
            value: 0,
        },
        VmxMsr {
            entry: 0xdead,
            value: 0,
        },
    ];
    // The driver processes two and refuses the third.
    let mut reply = MsrData::from_entries(&want).unwrap();
    reply.done = 2;
    reply.entries[0].value = 0x1_0000;
    reply.entries[1].value = 0xd01;
    fake.script([Reply::pod(&reply)]);
    assert_eq!(vcpu.get_msrs(&mut want).unwrap(), 2);
    assert_eq!(want[0].value, 0x1_0000);
    assert_eq!(want[1].value, 0xd01);
    assert_eq!(want[2].value, 0, "not processed, untouched");
    let calls = fake.take_calls();
    assert_eq!(calls[0].code, 0xc208_00c2);
    assert_eq!(calls[0].kind, "inout");
    assert_eq!(&calls[0].input[..4], &[3, 0, 0, 0]);
    assert_eq!(&calls[0].input[8..16], &0x10u64.to_le_bytes());
    assert_eq!(&calls[0].input[24..32], &0xc000_0080u64.to_le_bytes());

    // done > nr_msr.
    reply.done = 4;
    fake.script([Reply::pod(&reply)]);
    assert_eq!(
        vcpu.get_msrs(&mut want).err(),
        Some(Error::Malformed {
            ioctl: "HAX_VCPU_IOCTL_GET_MSRS",
            field: "done",
            value: 4
        })
    );
    fake.script([Reply::pod(&reply)]);
    assert!(matches!(
        vcpu.set_msrs(&want),
        Err(Error::Malformed { field: "done", .. })
    ));
    // Short reply.
    fake.script([Reply::out(&[3, 0, 3, 0])]);
    assert!(matches!(
        vcpu.get_msrs(&mut want),
        Err(Error::ShortReply {
            expected: 520,
            got: 4,
            ..
        })
    ));
    // 31 is the limit; 32 is refused without a call.
    fake.take_calls();
    let many = [VmxMsr::default(); 32];
    assert_eq!(vcpu.set_msrs(&many), Err(Error::TooManyMsrs { count: 32 }));
    let mut many = many;
    assert_eq!(
        vcpu.get_msrs(&mut many),
        Err(Error::TooManyMsrs { count: 32 })
    );
    assert!(fake.calls().is_empty());
    fake.script([Reply::pod(&MsrData {
        done: 31,
        ..MsrData::from_entries(&many[..31]).unwrap()
    })]);
    assert_eq!(vcpu.set_msrs(&many[..31]).unwrap(), 31);
}

#[test]
fn cpuid_calls() {
    let entry = CpuidEntry {
        function: 1,
        eax: 0x906ea,
        edx: 0x178b_fbff,
        ..CpuidEntry::default()
    };
    for (platform, set_code, get_code) in [
        (Platform::Linux, 0x4008_00ca, 0x4008_00cb),
        (Platform::Darwin, 0x8008_00ca, 0x8008_00cb),
        (Platform::Windows, 0x4000_245c, 0x4000_2460),
    ] {
        let fake = Fake::new(platform);
        let (_vm, vcpu) = vcpu_on(&fake);
        fake.script([Reply::ok()]);
        vcpu.set_cpuid(&[entry, entry]).unwrap();
        let mut reply = CpuidTable::from_entries(&[entry; 18]).unwrap();
        reply.pad = 0;
        fake.script([Reply::out(reply.used_bytes())]);
        let got = vcpu.get_cpuid().unwrap();
        assert_eq!(got.entries(), &[entry; 18]);
        let calls = fake.take_calls();
        assert_eq!(calls[0].code, set_code);
        assert_eq!(calls[0].kind, "in");
        assert_eq!(calls[0].input.len(), 8 + 2 * 40);
        assert_eq!(&calls[0].input[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&calls[0].input[8 + 12..8 + 16], &0x906eau32.to_le_bytes());
        // The POSIX quirk (a POSIX transport passes the address of a `hax_cpuid *`) is a
        // property of these two IOCTLs; the Windows transport ignores it.
        assert!(calls[0].pointer_arg);
        assert_eq!(calls[1].code, get_code);
        assert_eq!(calls[1].kind, "inout");
        assert_eq!(calls[1].input.len(), 8 + 64 * 40);
        assert_eq!(&calls[1].input[..4], &64u32.to_le_bytes());
        assert!(calls[1].pointer_arg);
    }

    let fake = Fake::new(Platform::Windows);
    let (_vm, vcpu) = vcpu_on(&fake);
    // total > 64.
    fake.script([Reply::out(&[65, 0, 0, 0, 0, 0, 0, 0])]);
    assert_eq!(
        vcpu.get_cpuid().err(),
        Some(Error::Malformed {
            ioctl: "HAX_VCPU_IOCTL_GET_CPUID",
            field: "total",
            value: 65
        })
    );
    // HAXM's Windows "too small" answer: only the header, total = 18.
    fake.script([Reply::out(&[18, 0, 0, 0, 0, 0, 0, 0])]);
    assert_eq!(
        vcpu.get_cpuid().err(),
        Some(Error::ShortReply {
            ioctl: "HAX_VCPU_IOCTL_GET_CPUID",
            expected: 8 + 18 * 40,
            got: 8
        })
    );
    // Not even a header.
    fake.script([Reply::out(&[1, 0])]);
    assert!(matches!(
        vcpu.get_cpuid(),
        Err(Error::ShortReply { expected: 8, .. })
    ));
    fake.take_calls();
    assert_eq!(vcpu.set_cpuid(&[]), Err(Error::BadCpuidCount { count: 0 }));
    assert_eq!(
        vcpu.set_cpuid(&[entry; 65]),
        Err(Error::BadCpuidCount { count: 65 })
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn stats_calls() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, vcpu) = vcpu_on(&fake);
    let mut s = VcpuStats::new();
    s.runs = 10;
    s.per_reason[30].exits = 7;
    s.per_reason[30].vmreads = 70;
    fake.script([Reply::pod(&s), Reply::ok()]);
    let got = vcpu.stats().unwrap();
    assert_eq!(got.reason(30).map(|r| (r.exits, r.vmreads)), Some((7, 70)));
    vcpu.reset_stats().unwrap();
    let calls = fake.take_calls();
    assert_eq!(
        (calls[0].code, calls[0].kind, calls[0].out_len),
        (0x8cf0_00e1, "out", 3312)
    );
    assert_eq!((calls[1].code, calls[1].kind), (0x0000_00e2, "none"));
    for (field, bad) in [
        ("version", VcpuStats { version: 2, ..s }),
        ("size", VcpuStats { size: 8, ..s }),
        (
            "nr_reasons",
            VcpuStats {
                nr_reasons: 81,
                ..s
            },
        ),
    ] {
        fake.script([Reply::pod(&bad)]);
        assert!(
            matches!(vcpu.stats(), Err(Error::Malformed { field: f, .. }) if f == field),
            "{field}"
        );
    }
    fake.script([Reply::out(&[0; 100])]);
    assert!(matches!(
        vcpu.stats(),
        Err(Error::ShortReply { expected: 3312, .. })
    ));
}

#[test]
fn observer_stats_go_through_the_system_device() {
    let fake = Fake::new(Platform::Linux);
    let sys = System::open(fake.clone()).unwrap();
    let mut s = VcpuStats::new();
    s.per_reason[10].exits = 4;
    fake.script([Reply::pod(&s), Reply::pod(&s), Reply::pod(&s)]);
    assert_eq!(
        sys.vcpu_stats(3, 1).unwrap().reason(10).map(|r| r.exits),
        Some(4)
    );
    sys.reset_vcpu_stats(3, 1).unwrap();
    sys.set_vcpu_counting(3, 1, false).unwrap();
    // Only the system device is opened: the vCPU device belongs to its VMM.
    assert_eq!(fake.opens(), [DevicePath::System]);
    let calls = fake.take_calls();
    assert!(calls
        .iter()
        .all(|c| (c.device, c.code, c.kind) == (DevicePath::System, 0xccf0_00e4, "inout")));
    let req = |c: &crate::fake::Call| c.input[..24].to_vec();
    let le = |v: [u32; 6]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    assert_eq!(req(&calls[0]), le([3, 1, 0, 0, 0, 0]));
    assert_eq!(req(&calls[1]), le([3, 1, 1, 0, 0, 0]));
    assert_eq!(req(&calls[2]), le([3, 1, 2, 0, 0, 0]));
    // Per-field counts for one reason: the switch, then the field list.
    let mut f = rhax_api::ext::VcpuFieldStats {
        version: 1,
        nr: 1,
        field_reason: 30,
        ..Default::default()
    };
    f.fields[0].encoding = 0x681e;
    f.fields[0].reads = 7;
    fake.script([Reply::pod(&s), Reply::pod(&f)]);
    let flags = rhax_api::ext::StatsFlags::COUNTING | rhax_api::ext::StatsFlags::FIELD_REASON;
    sys.set_vcpu_stats_control(3, 1, flags, 30).unwrap();
    let got = sys.vcpu_field_stats(3, 1).unwrap();
    assert_eq!(got.entries().len(), 1);
    assert_eq!(
        (got.entries()[0].encoding, got.entries()[0].reads),
        (0x681e, 7)
    );
    let calls = fake.take_calls();
    assert_eq!(req(&calls[0]), le([3, 1, 2, 3, 30, 0]));
    assert_eq!(
        (calls[1].code, calls[1].out_len, req(&calls[1])),
        (0xcf10_00e5, 3856, le([3, 1, 0, 0, 0, 0]))
    );
    f.nr = 161;
    fake.script([Reply::pod(&f)]);
    assert!(matches!(
        sys.vcpu_field_stats(3, 1),
        Err(Error::Malformed { field: "nr", .. })
    ));
    fake.script([Reply::pod(&VcpuStats { version: 9, ..s })]);
    assert!(matches!(
        sys.vcpu_stats(0, 0),
        Err(Error::Malformed {
            field: "version",
            ..
        })
    ));
}

#[test]
fn owner_switches_counting_on_its_vcpu_device() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, vcpu) = vcpu_on(&fake);
    fake.script([Reply::ok(), Reply::ok()]);
    vcpu.set_counting(false).unwrap();
    vcpu.set_counting(true).unwrap();
    let calls = fake.take_calls();
    assert_eq!(
        calls.iter().map(|c| c.code).collect::<Vec<_>>(),
        [0x4008_00e3, 0x4008_00e3]
    );
    assert_eq!(calls[0].input, [0u8; 8]);
    assert_eq!(calls[1].input, [1u8, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn exit_decoding() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, mut vcpu) = vcpu_on(&fake);

    let mut pf = status_exit(10);
    pf.pagefault_mut().gpa = 0x20_0000;
    pf.pagefault_mut().flags = 0x2;
    let mut dbg = status_exit(11);
    dbg.debug_mut().rip = 0x7c00;
    dbg.debug_mut().dr6 = 0x1;
    dbg.debug_mut().dr7 = 0x401;
    let mut mmio = status_exit(2);
    mmio.mmio_mut().gla = 0xb8000;
    let mut unknown = status_exit(5);
    unknown.exit_reason = 33;
    // OUTSB x3 backwards, 16-bit string IN.
    let mut outs = io_exit(0, 0x3f8, 1, 3);
    outs.io_mut().df = 1;
    outs.io_mut().flags = 1;
    let ins = io_exit(1, 0x1f0, 2, 32);
    fake.script([
        Reply::exit(&pf, &[]),
        Reply::exit(&dbg, &[]),
        Reply::exit(&mmio, &[]),
        Reply::exit(&unknown, &[]),
        Reply::exit(&status_exit(3), &[]),
        Reply::exit(&status_exit(4), &[]),
        Reply::exit(&status_exit(7), &[]),
        Reply::exit(&status_exit(8), &[]),
        Reply::exit(&status_exit(12), &[]),
        Reply::exit(&status_exit(0), &[]),
        Reply::exit(&outs, b"cba"),
        Reply::exit(&ins, &[0; 64]),
    ]);
    assert!(matches!(
        vcpu.run().unwrap(),
        Exit::PageFault { gpa: 0x20_0000, flags } if flags == PageFaultFlags::ACC_W
    ));
    assert!(matches!(
        vcpu.run().unwrap(),
        Exit::Debug {
            rip: 0x7c00,
            dr6: 1,
            dr7: 0x401
        }
    ));
    assert!(matches!(vcpu.run().unwrap(), Exit::Mmio { gla: 0xb8000 }));
    assert!(matches!(
        vcpu.run().unwrap(),
        Exit::UnknownVmExit { exit_reason: 33 }
    ));
    assert!(matches!(vcpu.run().unwrap(), Exit::RealMode));
    assert!(matches!(vcpu.run().unwrap(), Exit::Interrupt));
    assert!(matches!(vcpu.run().unwrap(), Exit::StateChange));
    assert!(matches!(vcpu.run().unwrap(), Exit::Paused));
    assert!(matches!(vcpu.run().unwrap(), Exit::Unknown(12)));
    assert!(matches!(vcpu.run().unwrap(), Exit::Unknown(0)));
    match vcpu.run().unwrap() {
        Exit::Io {
            direction: IoDirection::Out,
            count: 3,
            df: true,
            string: true,
            data,
            ..
        } => assert_eq!(data, b"cba"),
        other => panic!("{other:?}"),
    }
    match vcpu.run().unwrap() {
        Exit::Io {
            direction: IoDirection::In,
            size: 2,
            count: 32,
            data,
            ..
        } => {
            assert_eq!(data.len(), 64);
            data.copy_from_slice(&[0x5a; 64]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.vcpu_memory(3, 0).1, [0x5a; 64]);
}

#[test]
fn malformed_io_and_mmio_exits() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, mut vcpu) = vcpu_on(&fake);
    let mut bad_mmio_size = status_exit(9);
    bad_mmio_size.exit_reason = 48;
    let fm = FastMmio {
        gpa: 0xfee0_0000,
        size: 3,
        ..FastMmio::default()
    };
    let fm_dir = FastMmio {
        size: 4,
        direction: 3,
        ..fm
    };
    let cases: [(Tunnel, Vec<u8>, &str); 7] = [
        (io_exit(0, 0x80, 4, 17), vec![], "io._count"),
        (io_exit(0, 0x80, 1, 65), vec![], "io._count"),
        (io_exit(0, 0x80, 1, 0), vec![], "io._count"),
        (io_exit(0, 0x80, 3, 1), vec![], "io._size"),
        (io_exit(2, 0x80, 1, 1), vec![], "io._direction"),
        (bad_mmio_size, fm.as_bytes().to_vec(), "fastmmio.size"),
        (
            status_exit(9),
            fm_dir.as_bytes().to_vec(),
            "fastmmio.direction",
        ),
    ];
    for (tunnel, io, field) in cases {
        fake.script([Reply::exit(&tunnel, &io)]);
        match vcpu.run() {
            Err(Error::Malformed {
                ioctl: "HAX_VCPU_IOCTL_RUN",
                field: f,
                ..
            }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn fast_mmio_read_completion_and_moves() {
    let fake = Fake::new(Platform::Windows);
    let (_vm, mut vcpu) = vcpu_on(&fake);
    let read = FastMmio {
        gpa: 0xfee0_0030,
        value: 0xdead_beef_dead_beef,
        size: 4,
        direction: 0,
        ..FastMmio::default()
    };
    let write = FastMmio {
        gpa: 0xfee0_00b0,
        value: 0xffff_ffff_0000_0000,
        size: 4,
        direction: 1,
        ..FastMmio::default()
    };
    let mut mv = FastMmio {
        gpa: 0xa_0000,
        size: 8,
        direction: 2,
        ..FastMmio::default()
    };
    mv.set_gpa2(0xb_8000);
    fake.script([
        Reply::exit(&status_exit(9), read.as_bytes()),
        Reply::exit(&status_exit(9), write.as_bytes()),
        Reply::exit(&status_exit(9), mv.as_bytes()),
        Reply::exit(&status_exit(6), &[]),
    ]);
    match vcpu.run().unwrap() {
        Exit::FastMmio(mut m) => {
            assert_eq!(
                (m.gpa, m.size, m.direction),
                (0xfee0_0030, 4, MmioDirection::Read)
            );
            assert_eq!(m.gpa2, None);
            // Masked to the access size.
            m.complete_read(0x1_0005_0014).unwrap();
            assert_eq!(m.value, 0x0005_0014);
        }
        other => panic!("{other:?}"),
    }
    match vcpu.run().unwrap() {
        Exit::FastMmio(mut m) => {
            assert_eq!(m.direction, MmioDirection::Write);
            assert_eq!(m.write_data(), 0);
            assert!(matches!(
                m.complete_read(1),
                Err(Error::InvalidArgument { .. })
            ));
        }
        other => panic!("{other:?}"),
    }
    match vcpu.run().unwrap() {
        Exit::FastMmio(m) => {
            assert_eq!(m.direction, MmioDirection::Move);
            assert_eq!((m.gpa, m.gpa2), (0xa_0000, Some(0xb_8000)));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(vcpu.run().unwrap(), Exit::Hlt));
    let calls = fake.take_calls();
    // The RUN after the read carries the value at offset 8 of the IO buffer.
    let io = calls[1].io.as_ref().unwrap();
    assert_eq!(&io[8..16], &0x0005_0014u64.to_le_bytes());
    assert_eq!(&io[0..8], &0xfee0_0030u64.to_le_bytes());
}

#[test]
fn tunnel_flags_and_pause() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, mut vcpu) = vcpu_on(&fake);
    fake.script([
        Reply::exit(&status_exit(4), &[]),
        Reply::exit(&status_exit(8), &[]),
        Reply::exit(&status_exit(4), &[]),
    ]);
    vcpu.request_interrupt_window(true);
    vcpu.set_user_event_pending(true);
    assert!(vcpu.user_event_pending());
    assert!(matches!(vcpu.run().unwrap(), Exit::Interrupt));
    vcpu.request_pause();
    vcpu.request_interrupt_window(false);
    assert!(matches!(vcpu.run().unwrap(), Exit::Paused));
    assert!(matches!(vcpu.run().unwrap(), Exit::Interrupt));
    let calls = fake.take_calls();
    let word = |c: &Call, off: usize| {
        u32::from_le_bytes(c.tunnel.as_ref().unwrap()[off..off + 4].try_into().unwrap())
    };
    // RUN 1: window requested, user event pending, no pause.
    assert_eq!(
        (word(&calls[0], 0), word(&calls[0], 12), word(&calls[0], 20)),
        (0, 1, 1)
    );
    // RUN 2: `_exit_reason = 8`, window off.
    assert_eq!((word(&calls[1], 0), word(&calls[1], 20)), (8, 0));
    // RUN 3: the pause request does not stick.
    assert_eq!(word(&calls[2], 0), 0);
    vcpu.reset_tunnel_flags();
    assert!(!vcpu.user_event_pending());
    assert!(!vcpu.ready_for_interrupt_injection());

    // RUN failures are typed; EINTR is retryable.
    fake.script([
        Reply::err(OsError::Errno(4)),
        Reply::err(OsError::Positive(1)),
    ]);
    let e = vcpu.run().unwrap_err();
    assert_eq!(e, Error::Run(OsError::Errno(4)));
    assert!(e.os_error().is_some_and(|os| os.is_retryable()));
    let e = vcpu.run().unwrap_err();
    assert_eq!(e, Error::Run(OsError::Positive(1)));
    assert!(!e.os_error().unwrap().is_retryable());
}

fn tunnel_reply(info: TunnelInfo) -> Reply {
    Reply::pod(&info)
}

#[test]
fn bad_tunnels_are_refused() {
    let page = 0x7000_0000_0000u64;
    let good = TunnelInfo {
        va: page,
        io_va: page + 0x1000,
        size: 4096,
        pad: [0; 6],
    };
    let cases = [
        (TunnelInfo { size: 55, ..good }, "size"),
        (TunnelInfo { size: 0, ..good }, "size"),
        (TunnelInfo { va: 0, ..good }, "va"),
        (
            TunnelInfo {
                va: page + 4,
                ..good
            },
            "va",
        ),
        (
            TunnelInfo {
                va: u64::MAX - 7,
                ..good
            },
            "va",
        ),
        (TunnelInfo { io_va: 0, ..good }, "io_va"),
        (
            TunnelInfo {
                io_va: page + 0x1001,
                ..good
            },
            "io_va",
        ),
        (
            TunnelInfo {
                io_va: page + 0x800,
                ..good
            },
            "io_va (overlaps the tunnel)",
        ),
        (
            TunnelInfo {
                io_va: page - 0x20,
                size: 64,
                ..good
            },
            "io_va (overlaps the tunnel)",
        ),
    ];
    for (info, field) in cases {
        let fake = Fake::new(Platform::Linux);
        fake.script([Reply::out(&le32(0)), Reply::ok(), tunnel_reply(info)]);
        let sys = System::open(fake.clone()).unwrap();
        let vm = sys.create_vm().unwrap();
        match vm.create_vcpu(0) {
            Err(Error::Malformed {
                ioctl: "HAX_VCPU_IOCTL_SETUP_TUNNEL",
                field: f,
                ..
            }) => assert_eq!(f, field, "{info:?}"),
            Err(e) => panic!("{info:?}: {e}"),
            Ok(_) => panic!("{info:?} accepted"),
        }
        // The vCPU device was opened and is closed again.
        assert_eq!(
            fake.closes().first(),
            Some(&DevicePath::Vcpu { vm: 0, vcpu: 0 })
        );
    }
    // Short SETUP_TUNNEL answer.
    let fake = Fake::new(Platform::Linux);
    fake.script([Reply::out(&le32(0)), Reply::ok(), Reply::out(&[0; 16])]);
    let sys = System::open(fake.clone()).unwrap();
    let vm = sys.create_vm().unwrap();
    assert!(matches!(
        vm.create_vcpu(0),
        Err(Error::ShortReply {
            expected: 24,
            got: 16,
            ..
        })
    ));
}

#[test]
fn setup_tunnel_again_must_match() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, mut vcpu) = vcpu_on(&fake);
    let info = vcpu.tunnel_info();
    fake.script([
        tunnel_reply(info),
        tunnel_reply(TunnelInfo {
            va: info.va + 0x1000,
            ..info
        }),
    ]);
    assert_eq!(vcpu.setup_tunnel().unwrap(), info);
    assert!(matches!(
        vcpu.setup_tunnel(),
        Err(Error::Malformed {
            field: "va (moved)",
            ..
        })
    ));
}

/// A small deterministic generator (xorshift64*), so the fuzz test is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Random tunnels and IO buffers never make `run` panic, and an accepted IO exit never
/// hands out more than the IO buffer.
#[test]
fn random_exits_never_panic() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, mut vcpu) = vcpu_on(&fake);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut ok, mut err) = (0, 0);
    for i in 0..3000 {
        let mut t = [0u8; 56];
        for b in t.chunks_mut(8) {
            b.copy_from_slice(&rng.next().to_le_bytes());
        }
        // Bias towards the interesting statuses and small sizes.
        t[8..12].copy_from_slice(&((rng.next() % 14) as u32).to_le_bytes());
        if i % 2 == 0 {
            t[26] = (rng.next() % 6) as u8;
            t[27] = 0;
            t[30] = (rng.next() % 70) as u8;
            t[31] = 0;
            t[24] = (rng.next() % 3) as u8;
        }
        let mut io = [0u8; 64];
        for b in io.chunks_mut(8) {
            b.copy_from_slice(&rng.next().to_le_bytes());
        }
        if i % 3 == 0 {
            io[16] = (rng.next() % 10) as u8;
            io[17] = (rng.next() % 4) as u8;
        }
        fake.script([Reply {
            tunnel: Some(t.to_vec()),
            io: Some(io.to_vec()),
            ..Reply::ok()
        }]);
        match vcpu.run() {
            Ok(Exit::Io {
                size, count, data, ..
            }) => {
                assert_eq!(data.len(), usize::from(size) * usize::from(count));
                assert!(data.len() <= 64 && !data.is_empty());
                ok += 1;
            }
            Ok(_) => ok += 1,
            Err(Error::Malformed { .. }) => err += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        ok > 100 && err > 100,
        "both outcomes exercised: {ok} ok, {err} refused"
    );
    fake.take_calls();
}

#[test]
fn errors_display_and_source() {
    use core::error::Error as _;
    let e = Error::Open {
        device: DevicePath::Vcpu { vm: 1, vcpu: 2 },
        os: OsError::Errno(16),
    };
    // The device's name as the running OS spells it.
    let name = if cfg!(windows) {
        "\\\\.\\hax_vm01_vcpu02"
    } else {
        "/dev/hax_vm01/vcpu02"
    };
    assert_eq!(e.to_string(), format!("cannot open {name}: errno 16"));
    assert!(e.source().is_some());
    let e = Error::ShortReply {
        ioctl: "HAX_IOCTL_VERSION",
        expected: 8,
        got: 4,
    };
    assert_eq!(
        e.to_string(),
        "HAX_IOCTL_VERSION: short reply, 4 bytes where 8 are needed"
    );
    assert!(e.source().is_none());
    assert_eq!(
        Error::CreateVm(OsError::Win32(31)).to_string(),
        "HAX_IOCTL_CREATE_VM failed: Win32 error 31 (ERROR_GEN_FAILURE)"
    );
    assert!(Error::TooManyMsrs { count: 40 }.to_string().contains("31"));
}

/// The POSIX transport's plumbing on this host: no HAXM here, so opening `/dev/HAX` fails
/// with a typed error, and IOCTLs sent to `/dev/null` come back as `ENOTTY`, including the
/// CPUID pointer-to-pointer argument; a buffer shorter than the code's size is refused
/// before the system call.
#[cfg(target_os = "linux")]
#[test]
fn posix_transport_plumbing() {
    use std::os::fd::OwnedFd;

    use rhax_api::ioctl::{HAX_IOCTL_VERSION, HAX_VCPU_IOCTL_RUN, HAX_VCPU_IOCTL_SET_CPUID};

    use crate::{IoctlBuf, IoctlRequest, PosixTransport, Transport};

    const ENOENT: i32 = 2;
    const EACCES: i32 = 13;
    const ENOTTY: i32 = 25;
    match System::open(PosixTransport) {
        Err(Error::Open {
            device: DevicePath::System,
            os: OsError::Errno(e),
        }) => assert!(e == ENOENT || e == EACCES, "errno {e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => {} // a HAX device exists on this machine
    }
    let t = PosixTransport;
    assert_eq!(t.platform(), Platform::Linux);
    let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let mut v = [0u8; 8];
    let req = IoctlRequest {
        def: &HAX_IOCTL_VERSION,
        code: 0xc008_0020,
        buf: IoctlBuf::Out(&mut v),
    };
    assert_eq!(t.ioctl(&fd, req), Err(OsError::Errno(ENOTTY)));
    let mut small = [0u8; 4];
    let req = IoctlRequest {
        def: &HAX_IOCTL_VERSION,
        code: 0xc008_0020,
        buf: IoctlBuf::Out(&mut small),
    };
    assert_eq!(t.ioctl(&fd, req), Err(OsError::Unsupported));
    let table = CpuidTable::from_entries(&[CpuidEntry::default()]).unwrap();
    let req = IoctlRequest {
        def: &HAX_VCPU_IOCTL_SET_CPUID,
        code: 0x4008_00ca,
        buf: IoctlBuf::In(table.used_bytes()),
    };
    assert_eq!(t.ioctl(&fd, req), Err(OsError::Errno(ENOTTY)));
    let req = IoctlRequest {
        def: &HAX_VCPU_IOCTL_RUN,
        code: 0xc0,
        buf: IoctlBuf::None,
    };
    assert_eq!(t.ioctl(&fd, req), Err(OsError::Errno(ENOTTY)));
    t.close(fd);
}

/// A vCPU can move to its own thread; a VM can be shared (SET_RAM from any thread).
#[cfg(target_os = "linux")]
#[test]
fn os_objects_are_send_and_sync_where_they_must_be() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Vcpu<crate::PosixTransport>>();
    send::<Vm<crate::PosixTransport>>();
    sync::<Vm<crate::PosixTransport>>();
    sync::<System<crate::PosixTransport>>();
}

#[test]
fn win32_errors_are_named_in_messages() {
    // The statuses HAXM's Windows driver answers with, as DeviceIoControl reports them.
    assert_eq!(
        OsError::Win32(87).to_string(),
        "Win32 error 87 (ERROR_INVALID_PARAMETER)"
    );
    assert_eq!(crate::win32_name(31), Some("ERROR_GEN_FAILURE"));
    assert_eq!(crate::win32_name(122), Some("ERROR_INSUFFICIENT_BUFFER"));
    assert_eq!(OsError::Win32(4242).to_string(), "Win32 error 4242");
}

#[test]
fn owner_switches_the_mmio_fast_path_on_its_vcpu_device() {
    let fake = Fake::new(Platform::Linux);
    let (_vm, vcpu) = vcpu_on(&fake);
    fake.script([Reply::ok(), Reply::ok(), Reply::err(OsError::Errno(22))]);
    vcpu.set_mmio_fast_path(false).unwrap();
    vcpu.set_mmio_fast_path(true).unwrap();
    // _IOW(0, 0xe8, 8).
    let e = vcpu.set_mmio_fast_path(false).unwrap_err();
    assert!(
        matches!(e, Error::SetEmulationControl(OsError::Errno(22))),
        "{e:?}"
    );
    let calls = fake.take_calls();
    assert_eq!(
        calls.iter().map(|c| c.code).collect::<Vec<_>>(),
        [0x4008_00e8, 0x4008_00e8, 0x4008_00e8]
    );
    assert_eq!(calls[0].input, [1u8, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(calls[1].input, [0u8; 8]);
}
