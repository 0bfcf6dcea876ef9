//! Guest XSAVE state against the software VMX (issue 11 item 3): XSETBV exits and their
//! faults (SDM Vol. 2C XSETBV, Vol. 1 §13.3), the guest XCR0 in the CPU only across entry and
//! exit, YMM state preserved bit for bit across 10,000 exits while the host keeps its own,
//! the CPUID answers that follow XCR0 and CR4.OSXSAVE, and RHAX_VCPU_IOCTL_GET/SET_XSAVE with
//! every refusal leaving the vCPU unchanged.

mod common;
use common::*;

use rhax_api::ext::RhaxXsave;
use rhax_api::fpu::{XsaveArea, XSAVE_AREA_SIZE};
use rhax_core::vcpu::checked::{xcr0, GuestXcr0, MxcsrMask, Refused};
use rhax_core::vmx::soft_faults;

/// The host XCR0: x87, SSE, AVX, AVX-512 and PKRU (not switched by rhax).
const HOST_XCR0: u64 = 0x2e7;
/// Guest real mode: #GP and #UD carry no error code (SDM Vol. 3C §27.2.1.3).
const GP: u64 = 0x8000_030d;
const UD: u64 = 0x8000_0306;

/// A host with AVX-512: CPUID leaf 0xD as a Skylake-SP enumerates it.
fn avx512_host(leaf: u32, sub: u32) -> [u32; 4] {
    match (leaf, sub) {
        (0, _) => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
        (1, _) => [0x50654, 0x0010_0800, 0x7ffa_fbff, 0xbfeb_fbff],
        (7, 0) => [0, 0xffff_ffff, 0xffff_ffff, 0],
        (0xd, 0) => [0x2ff, 2696, 2696, 0],
        (0xd, 1) => [0xf, 0, 0, 0],
        (0xd, 2) => [256, 576, 0, 0],
        (0xd, 3) => [64, 960, 0, 0],
        (0xd, 4) => [64, 1024, 0, 0],
        (0xd, 5) => [64, 1088, 0, 0],
        (0xd, 6) => [512, 1152, 0, 0],
        (0xd, 7) => [1024, 1664, 0, 0],
        (0xd, 9) => [8, 2688, 0, 0],
        _ => [0; 4],
    }
}

/// `common::setup` on a host with CR4.OSXSAVE=1, XCR0 = [`HOST_XCR0`], and a CPUID table
/// built from [`avx512_host`].
fn xsetup() -> T {
    let mut vmx = SoftVmx::new(msrs_from_tsv(TSV, "corei7_skylake_x").unwrap());
    vmx.host.cr4 |= 1 << 18;
    vmx.xcr0 = HOST_XCR0;
    vmx.xcr0_supported = HOST_XCR0;
    setup_with(vmx, CpuidTable::with_xcr0(avx512_host, HOST_XCR0))
}

/// CR4.OSXSAVE on through SET_REGS (the guest's own MOV to CR4 exits: see
/// `mov_to_cr4_osxsave_exits_and_follows_cpuid`).
fn enable_osxsave(t: &mut T) {
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cr4 |= 1 << 18;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
}

fn xsetbv(c: &mut GuestCpu<'_>, ecx: u64, value: u64) {
    c.regs.gpr[reg::RCX] = ecx;
    c.regs.gpr[reg::RAX] = value & 0xffff_ffff;
    c.regs.gpr[reg::RDX] = value >> 32;
    c.exit(55, 0, 3);
}

fn cpuid(c: &mut GuestCpu<'_>, leaf: u64, sub: u64) {
    c.regs.gpr[reg::RAX] = leaf;
    c.regs.gpr[reg::RCX] = sub;
    c.exit(10, 0, 2);
}

/// The AVX component (YMM upper halves) inside `extended`.
const AVX: std::ops::Range<usize> = 0..256;
/// ZMM_Hi256 inside `extended`.
const ZMM_HI256: std::ops::Range<usize> = (1152 - 576)..(1664 - 576);

fn get_xsave(t: &mut T) -> Vec<u8> {
    let mut out = vec![0u8; RhaxXsave::SIZE];
    assert_eq!(t.vcpu.write_xsave(&mut out), Ok(RhaxXsave::SIZE));
    out
}

#[test]
fn xsetbv_sets_the_guest_xcr0_which_the_cpu_holds_only_while_the_guest_runs() {
    let mut t = xsetup();
    t.hook(script(vec![
        Box::new(|c| {
            // XCR0 = 1 (power-on) goes in with CR4.OSXSAVE set.
            assert_eq!(c.xcr0, 1);
            xsetbv(c, 0, 7);
        }),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) >> 31, 0);
            assert_eq!(c.xcr0, 7);
            cpuid(c, 0xd, 0);
        }),
        Box::new(|c| {
            // EAX: the XCR0 bits the guest may set; EBX: the size for XCR0 = 7.
            assert_eq!(c.regs.gpr[reg::RAX], 0xe7);
            assert_eq!(c.regs.gpr[reg::RBX], 832);
            assert_eq!(c.regs.gpr[reg::RCX], 2688);
            assert_eq!(c.regs.gpr[reg::RDX], 0);
            cpuid(c, 1, 0);
        }),
        Box::new(|c| {
            let ecx = c.regs.gpr[reg::RCX];
            assert_ne!(ecx & (1 << 26), 0, "XSAVE");
            assert_ne!(ecx & (1 << 27), 0, "OSXSAVE follows CR4");
            assert_ne!(ecx & (1 << 28), 0, "AVX");
            assert_ne!(ecx & (1 << 29), 0, "F16C");
            cpuid(c, 0xd, 1);
        }),
        Box::new(|c| {
            // XSAVEOPT, XSAVEC, XGETBV1; not XSAVES. EBX: the compacted size.
            assert_eq!(c.regs.gpr[reg::RAX], 0x7);
            assert_eq!(c.regs.gpr[reg::RBX], 832);
            c.exit(12, 0, 1);
        }),
    ]));
    enable_osxsave(&mut t);
    let rip = t.rip();
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.rip(), rip + 3 + 2 + 2 + 2 + 1);
    assert_eq!(t.root.vmx().xcr0, HOST_XCR0, "the host's XCR0 is back");
    // The guest's XCR0 went in before each of the 5 entries and came out after each.
    assert_eq!(t.root.vmx().counts.xsetbv, 10);
    let x = get_xsave(&mut t);
    assert_eq!(u64::from_le_bytes(x[8..16].try_into().unwrap()), 7);
    assert_eq!(u32::from_le_bytes(x[4..8].try_into().unwrap()), 832);
}

#[test]
fn no_xsetbv_when_the_guest_xcr0_is_the_hosts() {
    let mut t = xsetup();
    t.root.vmx().xcr0 = 0xe7;
    t.hook(script(vec![
        // CR4.OSXSAVE clear: XCR0 (1) is invisible to the guest, not loaded.
        Box::new(|c| {
            assert_eq!(c.xcr0, 0xe7);
            c.regs.gpr[reg::RAX] = c.read(VmcsField::Cr4ReadShadow) | (1 << 18);
            c.exit(28, 4, 3); // mov cr4, rax
        }),
        Box::new(|c| {
            assert_eq!(c.xcr0, 1, "OSXSAVE on: the guest's XCR0 goes in");
            xsetbv(c, 0, 0xe7);
        }),
        Box::new(|c| cpuid(c, 0, 0)),
        Box::new(|c| c.exit(12, 0, 1)),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    // Only around the one entry with XCR0 = 1 and OSXSAVE set.
    assert_eq!(t.root.vmx().counts.xsetbv, 2);
}

#[test]
fn xsetbv_faults_as_the_sdm_says_and_changes_nothing() {
    // (ECX, value, CR4.OSXSAVE, the event the guest gets).
    let cases: [(u64, u64, bool, u64); 10] = [
        (1, 7, true, GP),           // only XCR0 exists
        (0, 6, true, GP),           // x87 (bit 0) clear
        (0, 5, true, GP),           // AVX without SSE
        (0, 0x27, true, GP),        // AVX-512 bits partial
        (0, 0xe3, true, GP),        // AVX-512 without AVX
        (0, 0x1f, true, GP),        // MPX: not switched
        (0, 0x207, true, GP),       // PKRU: not switched
        (0, 1 << 32 | 7, true, GP), // a reserved high bit
        (0, 0, true, GP),
        (0, 7, false, UD), // CR4.OSXSAVE clear
    ];
    for (ecx, value, osxsave, event) in cases {
        let mut t = xsetup();
        t.hook(script(vec![
            Box::new(move |c| xsetbv(c, ecx, value)),
            Box::new(move |c| {
                assert_eq!(
                    c.read(VmcsField::VmEntryInterruptionInformation),
                    event,
                    "XSETBV ecx={ecx} {value:#x}"
                );
                let loaded = if osxsave { 1 } else { HOST_XCR0 };
                assert_eq!(c.xcr0, loaded, "XCR0 unchanged");
                c.exit(12, 0, 1);
            }),
        ]));
        if osxsave {
            enable_osxsave(&mut t);
        }
        let rip = t.rip();
        assert_eq!(t.run(), Ok(ExitStatus::Hlt));
        assert_eq!(t.rip(), rip + 1, "the faulting XSETBV is not skipped");
    }
}

#[test]
fn xsetbv_refuses_what_the_vms_cpuid_narrowed() {
    let mut t = xsetup();
    // The client hides AVX-512 in leaf 0xD: 0xe7 is refused, 7 accepted.
    HaxVcpu::set_cpuid(
        &mut t.cpuid,
        &[CpuidEntry {
            function: 0xd,
            index: 0,
            eax: 7,
            ..CpuidEntry::default()
        }],
    )
    .unwrap();
    assert_eq!(t.cpuid.lookup(0xd, 0, 0), [7, 576, 832, 0]);
    assert_eq!(
        t.cpuid.lookup(0xd, 6, 0),
        [512, 1152, 0, 0],
        "other sub-leaves kept"
    );
    enable_osxsave(&mut t);
    t.hook(script(vec![
        Box::new(|c| xsetbv(c, 0, 0xe7)),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation), GP);
            xsetbv(c, 0, 7);
        }),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) >> 31, 0);
            assert_eq!(c.xcr0, 7);
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn ymm_state_survives_10000_exits_bit_for_bit_and_the_host_keeps_its_own() {
    let mut t = xsetup();
    // The host's own vector state: what must come back after every RUN.
    t.root.vmx().xstate.extended.fill(0xaa);
    t.root.vmx().fpu.mmx_1[0] = [0x11; 16];
    let host_ext = t.root.vmx().xstate.extended;
    let host_fpu = *t.root.vmx().fpu;
    let guest_ymm: Vec<u8> = (0..256).map(|i| (i * 7 + 3) as u8).collect();
    let exits = Rc::new(Cell::new(0u32));
    let (e, g) = (exits.clone(), guest_ymm.clone());
    t.hook(move |c| {
        let n = e.get();
        e.set(n + 1);
        match n {
            0 => xsetbv(c, 0, 7),
            1 => {
                // The guest's first AVX code: vmovdqu ymm0..15 loaded, xmm0 too. Nothing of
                // the host's is visible: AVX-512 state (not enabled) is in its initial
                // configuration, not the host's 0xaa.
                assert!(c.xstate.extended[ZMM_HI256].iter().all(|&b| b == 0));
                assert!(c.xstate.extended[AVX].iter().all(|&b| b == 0));
                c.xstate.extended[AVX].copy_from_slice(&g);
                c.fpu.mmx_1[0] = [0x22; 16];
                cpuid(c, 0, 0);
            }
            _ => {
                assert_eq!(
                    &c.xstate.extended[AVX],
                    &g[..],
                    "YMM upper halves at exit {n}"
                );
                assert_eq!(c.fpu.mmx_1[0], [0x22; 16], "XMM0 at exit {n}");
                assert_eq!(c.xcr0, 7);
                // Every 1000th exit ends the RUN (HLT), so the state also crosses put/load.
                if n % 1000 == 0 {
                    c.exit(12, 0, 1);
                } else {
                    cpuid(c, 0, 0);
                }
            }
        }
    });
    enable_osxsave(&mut t);
    for _ in 0..10 {
        assert_eq!(t.run(), Ok(ExitStatus::Hlt));
        let vmx = t.root.vmx();
        assert_eq!(
            vmx.xstate.extended, host_ext,
            "host extended state restored"
        );
        assert_eq!(*vmx.fpu, host_fpu, "host x87/SSE state restored");
        assert_eq!(vmx.xcr0, HOST_XCR0);
    }
    assert!(exits.get() >= 10_000, "{} exits", exits.get());
    // GET_XSAVE sees the guest's YMM state.
    let x = get_xsave(&mut t);
    let area = &x[16..];
    assert_eq!(&area[576..832], &guest_ymm[..]);
    assert_eq!(
        u64::from_le_bytes(area[512..520].try_into().unwrap()) & 4,
        4
    );
    // GET_FPU still gives the legacy region.
    assert_eq!(t.vcpu.get_fpu().mmx_1[0], [0x22; 16]);
}

fn xsave_bytes(version: u32, size: u32, xcr0: u64, area: &XsaveArea) -> Vec<u8> {
    let mut v = Vec::with_capacity(RhaxXsave::SIZE);
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&xcr0.to_le_bytes());
    v.extend_from_slice(area.as_bytes());
    v
}

#[test]
fn set_xsave_round_trips_and_every_refusal_changes_nothing() {
    let mut t = xsetup();
    let mask = MxcsrMask::from_host_fxsave(0xffff);
    let power_on = get_xsave(&mut t);
    assert_eq!(u32::from_le_bytes(power_on[0..4].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(power_on[4..8].try_into().unwrap()), 576);
    assert_eq!(u64::from_le_bytes(power_on[8..16].try_into().unwrap()), 1);
    assert_eq!(
        u16::from_le_bytes(power_on[16..18].try_into().unwrap()),
        0x37f
    );

    let mut good = Box::new(XsaveArea::default());
    good.legacy.fcw = 0x27f;
    good.legacy.mxcsr = 0x1fa0;
    good.legacy.mmx_1[3] = [0x33; 16];
    good.header.xstate_bv = 7;
    good.extended[AVX].fill(0x5c);
    let ok = xsave_bytes(1, 832, 7, &good);
    let bad = |f: &dyn Fn(&mut XsaveArea) -> (u32, u32, u64)| {
        let mut a = good.clone();
        let (version, size, x) = f(&mut a);
        xsave_bytes(version, size, x, &a)
    };
    let refusals: Vec<(&str, Vec<u8>)> = vec![
        ("version", bad(&|_| (2, 832, 7))),
        ("size", bad(&|_| (1, 576, 7))),
        ("XCR0 without x87", bad(&|_| (1, 832, 6))),
        ("XCR0 PKRU", bad(&|_| (1, 832, 0x207))),
        ("XCR0 AVX-512 partial", bad(&|_| (1, 1152, 0x27))),
        (
            "XSTATE_BV outside XCR0",
            bad(&|a| {
                a.header.xstate_bv = 0xf;
                (1, 832, 7)
            }),
        ),
        (
            "XCOMP_BV",
            bad(&|a| {
                a.header.xcomp_bv = 1 << 63 | 7;
                (1, 832, 7)
            }),
        ),
        (
            "reserved header",
            bad(&|a| {
                a.header.reserved[4] = 1;
                (1, 832, 7)
            }),
        ),
        (
            "MXCSR",
            bad(&|a| {
                a.legacy.mxcsr = 0x1_1f80;
                (1, 832, 7)
            }),
        ),
    ];
    for (what, bytes) in &refusals {
        let r = t.vcpu.set_xsave(&mut t.root, mask, bytes);
        assert!(matches!(r, Err(HaxError::InvalidValue(_))), "{what}: {r:?}");
        assert_eq!(get_xsave(&mut t), power_on, "{what}: nothing changed");
    }
    t.vcpu.set_xsave(&mut t.root, mask, &ok).unwrap();
    let back = get_xsave(&mut t);
    assert_eq!(back, ok, "GET gives back what SET put");
    enable_osxsave(&mut t);
    // The next run loads it: XCR0 7 and the YMM bytes are the guest's.
    t.hook(script(vec![Box::new(|c| {
        assert_eq!(c.xcr0, 7);
        assert!(c.xstate.extended[AVX].iter().all(|&b| b == 0x5c));
        assert_eq!(c.fpu.mmx_1[3], [0x33; 16]);
        assert_eq!(c.fpu.fcw, 0x27f);
        c.exit(12, 0, 1);
    })]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    // An XCR0 the host lacks: refused even though the XSETBV rules hold.
    t.root.vmx().xcr0 = 0x7;
    let zmm = xsave_bytes(
        1,
        2688,
        0xe7,
        &XsaveArea {
            header: rhax_api::fpu::XsaveHeader {
                xstate_bv: 3,
                ..Default::default()
            },
            ..XsaveArea::default()
        },
    );
    assert!(t.vcpu.set_xsave(&mut t.root, mask, &zmm).is_err());
    assert_eq!(get_xsave(&mut t), back);
}

#[test]
fn guest_xcr0_rules() {
    let all = xcr0::SWITCHED;
    assert_eq!(
        GuestXcr0::from_xsetbv(0, 7, 0, all).map(GuestXcr0::get),
        Ok(7)
    );
    assert_eq!(
        GuestXcr0::from_xsetbv(0, 0xe7, 0, all).map(GuestXcr0::get),
        Ok(0xe7)
    );
    assert_eq!(
        GuestXcr0::from_xsetbv(0, 3, 0, all).map(GuestXcr0::get),
        Ok(3)
    );
    assert_eq!(
        GuestXcr0::from_xsetbv(0, 1, 0, all).map(GuestXcr0::get),
        Ok(1)
    );
    assert_eq!(
        GuestXcr0::from_xsetbv(1, 7, 0, all),
        Err(Refused::ReservedBits)
    );
    assert_eq!(
        GuestXcr0::from_xsetbv(0, 7, 3, all),
        Err(Refused::InvalidTransition)
    );
    assert_eq!(
        GuestXcr0::from_xsetbv(0, 7, 1, all),
        Err(Refused::InvalidTransition)
    );
    assert_eq!(
        GuestXcr0::from_xsetbv(0, 0xe7, 0, 7),
        Err(Refused::ReservedBits)
    );
    assert_eq!(GuestXcr0::check(0x67, all), Err(Refused::InvalidTransition));
    assert_eq!(GuestXcr0::check(0xc7, all), Err(Refused::InvalidTransition));
    assert_eq!(
        GuestXcr0::check(0x1 | 0x4, all),
        Err(Refused::InvalidTransition)
    );
    assert_eq!(GuestXcr0::check(0x8 | 7, all), Err(Refused::ReservedBits));
    assert_eq!(xcr0::area_size(1), 576);
    assert_eq!(xcr0::area_size(7), 832);
    assert_eq!(xcr0::area_size(0xe7), 2688);
    assert!(xcr0::area_size(xcr0::SWITCHED) as usize <= XSAVE_AREA_SIZE);
}

#[test]
fn the_model_refuses_what_xsetbv_and_xrstor_refuse() {
    // XSETBV: the same rules as GuestXcr0 plus what the model CPU supports.
    assert!(soft_faults::xsetbv(7, 0xe7).is_none());
    assert!(soft_faults::xsetbv(0xe7, 0xe7).is_none());
    assert!(
        soft_faults::xsetbv(0x207, 0x2e7).is_none(),
        "PKRU where supported"
    );
    for bad in [6, 5, 0x27, 0xe3, 0x8 | 7, 0] {
        assert!(soft_faults::xsetbv(bad, 0x2e7).is_some(), "{bad:#x}");
    }
    assert!(
        soft_faults::xsetbv(0xe7, 7).is_some(),
        "unsupported on this CPU"
    );
    // XRSTOR: XSTATE_BV outside XCR0, XCOMP_BV, header bytes 16-23, MXCSR (only when SSE or
    // AVX is requested), a misaligned area.
    let mut a = XsaveArea::default();
    a.header.xstate_bv = 7;
    assert!(soft_faults::xrstor(&a, 7, 7).is_none());
    assert!(soft_faults::xrstor(&a, 3, 3).is_some());
    a.header.xstate_bv = 3;
    a.header.xcomp_bv = 1;
    assert!(soft_faults::xrstor(&a, 7, 7).is_some());
    a.header.xcomp_bv = 0;
    a.header.reserved[0] = 1;
    assert!(soft_faults::xrstor(&a, 7, 7).is_some());
    a.header.reserved[0] = 0;
    a.legacy.mxcsr = 0x1_0000;
    assert!(soft_faults::xrstor(&a, 7, 7).is_some());
    assert!(
        soft_faults::xrstor(&a, 7, 1).is_none(),
        "MXCSR not loaded for x87 only"
    );
    assert!(soft_faults::xsave_alignment(0x1040 as *const XsaveArea).is_none());
    assert!(soft_faults::xsave_alignment(0x1010 as *const XsaveArea).is_some());
}

#[test]
#[should_panic(expected = "modelled host #GP")]
fn the_model_faults_on_xsetbv_of_a_bad_value() {
    let mut t = xsetup();
    use rhax_core::vmx::Vmx;
    // SAFETY: software model.
    unsafe { t.root.vmx().xsetbv0(5) };
}

#[test]
fn without_host_osxsave_the_guest_sees_no_xsave_and_xsetbv_is_ud() {
    let mut t = setup();
    assert_eq!(t.cpuid.lookup(1, 0, 0)[2] & (1 << 26), 0);
    assert_eq!(t.cpuid.lookup(0xd, 0, 0), [0; 4]);
    enable_osxsave(&mut t);
    t.hook(script(vec![
        Box::new(|c| xsetbv(c, 0, 3)),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation), UD);
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(t.root.vmx().counts.xsave, 0, "FXSAVE path");
    assert_ne!(t.root.vmx().counts.fxsave, 0);
}

#[test]
fn cpuid_shows_what_the_host_has_enabled_and_rhax_switches() {
    // Host XCR0 without AVX-512 (an OS that left it off): no AVX-512 features, no leaf 0xD
    // sub-leaves 5-7, XCR0 bits 7 only.
    let t = CpuidTable::with_xcr0(avx512_host, 0x7);
    assert_eq!(t.lookup(0xd, 0, 0), [7, 576, 832, 0]);
    assert_eq!(t.lookup(0xd, 2, 0), [256, 576, 0, 0]);
    assert_eq!(t.lookup(0xd, 5, 0), [0; 4]);
    assert_eq!(t.lookup(7, 0, 0)[1] & (1 << 16), 0, "no AVX512F");
    assert_ne!(t.lookup(7, 0, 0)[1] & (1 << 5), 0, "AVX2");
    assert_eq!(t.lookup(0, 0, 0)[0], 0xd);
    // The full host: AVX-512 shown; MPX (3, 4) and PKRU (9) never.
    let t = CpuidTable::with_xcr0(avx512_host, HOST_XCR0 | 0x18);
    assert_eq!(t.lookup(0xd, 0, 0)[0], 0xe7);
    assert_eq!(t.lookup(0xd, 3, 0), [0; 4]);
    assert_eq!(t.lookup(0xd, 9, 0), [0; 4]);
    assert_eq!(t.lookup(0xd, 7, 0), [1024, 1664, 0, 0]);
    assert_ne!(t.lookup(7, 0, 0)[1] & (1 << 16), 0, "AVX512F");
    // OSXSAVE is never in the table: the CPUID exit sets it from the guest's CR4.
    assert_eq!(t.lookup(1, 0, 0)[2] & (1 << 27), 0);
    // A host enumerating a component at another offset: that component (and AVX-512 with it)
    // is hidden rather than switched at the wrong place.
    let odd = |l: u32, s: u32| match (l, s) {
        (0xd, 6) => [512, 1280, 0, 0],
        _ => avx512_host(l, s),
    };
    let t = CpuidTable::with_xcr0(odd, HOST_XCR0);
    assert_eq!(t.lookup(0xd, 0, 0)[0], 7);
    // SET_CPUID cannot add what is hidden: AVX on a host table without XSAVE.
    let mut t = CpuidTable::new(host_cpuid);
    HaxVcpu::set_cpuid(
        &mut t,
        &[CpuidEntry {
            function: 1,
            ecx: u32::MAX,
            ..CpuidEntry::default()
        }],
    )
    .unwrap();
    assert_eq!(
        t.lookup(1, 0, 0)[2] & (0xf << 26),
        0,
        "XSAVE/OSXSAVE/AVX/F16C"
    );
}

#[test]
fn mov_to_cr4_osxsave_exits_and_follows_cpuid() {
    // CPUID hides XSAVE (host without OSXSAVE): setting CR4.OSXSAVE is #GP, as hardware.
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            c.regs.gpr[reg::RAX] = c.read(VmcsField::Cr4ReadShadow) | (1 << 18);
            c.exit(28, 4, 3); // mov cr4, rax
        }),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation), GP);
            assert_eq!(c.read(VmcsField::Cr4ReadShadow) & (1 << 18), 0);
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    // XSAVE shown: accepted, CPUID.1:ECX.OSXSAVE follows, and clearing it again stops the
    // XCR0 switch.
    let mut t = xsetup();
    t.hook(script(vec![
        Box::new(|c| {
            c.regs.gpr[reg::RAX] = c.read(VmcsField::Cr4ReadShadow) | (1 << 18);
            c.exit(28, 4, 3);
        }),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::VmEntryInterruptionInformation) >> 31, 0);
            assert_ne!(c.read(VmcsField::Cr4ReadShadow) & (1 << 18), 0);
            assert_eq!(c.xcr0, 1);
            cpuid(c, 1, 0);
        }),
        Box::new(|c| {
            assert_ne!(c.regs.gpr[reg::RCX] & (1 << 27), 0, "OSXSAVE");
            c.regs.gpr[reg::RAX] = c.read(VmcsField::Cr4ReadShadow) & !(1 << 18);
            c.exit(28, 4, 3);
        }),
        Box::new(|c| {
            assert_eq!(c.xcr0, HOST_XCR0, "OSXSAVE off: XCR0 not switched");
            cpuid(c, 1, 0);
        }),
        Box::new(|c| {
            assert_eq!(c.regs.gpr[reg::RCX] & (1 << 27), 0, "OSXSAVE clear");
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

/// A leaf above the basic maximum (0xd here) answers exactly as the maximum leaf does, its
/// XCR0-dependent size included (the Linux stage's guest checks this: leaf 0xe must equal
/// leaf 0xd's answer).
#[test]
fn a_leaf_above_the_maximum_answers_as_leaf_0xd_with_its_current_size() {
    let mut t = xsetup();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    t.hook(script(vec![
        Box::new(|c| xsetbv(c, 0, 7)),
        Box::new(|c| cpuid(c, 0xd, 0)),
        Box::new(move |c| {
            s1.borrow_mut().push(
                [0, 1, 2, 3].map(|i| c.regs.gpr[[reg::RAX, reg::RBX, reg::RCX, reg::RDX][i]]),
            );
            cpuid(c, 0xe, 0);
        }),
        Box::new(move |c| {
            s2.borrow_mut().push(
                [0, 1, 2, 3].map(|i| c.regs.gpr[[reg::RAX, reg::RBX, reg::RCX, reg::RDX][i]]),
            );
            c.exit(12, 0, 1);
        }),
    ]));
    enable_osxsave(&mut t);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let seen = seen.borrow();
    assert_eq!(seen[0][1], 832, "leaf 0xd EBX: the size for XCR0 = 7");
    assert_eq!(seen[1], seen[0], "leaf 0xe answers as leaf 0xd");
}
