//! The APIC-access page when a guest moves its APIC away from the default xAPIC base (SDM
//! Vol. 3A §11.4.4), goes to x2APIC mode or disables it: the VM-wide mapping at 0xFEE00000
//! is dropped (an INVEPT on every CPU) before the vCPU that moved runs again, and the address
//! is then what the memslots make it. The memory module's unmap, the vCPU's request (RUN
//! ends with INTERRUPT once), and the dispatcher's drop after SET_APIC_STATE.

mod common;
use common::apic::*;
use common::*;
use rhax_api::apic::RhaxApicState;
use rhax_api::ext::{ApicConfig, ApicFlags, RHAX_VCPU_IOCTL_GET_APIC_STATE};
use rhax_api::ext::{RHAX_VCPU_IOCTL_SET_APIC_STATE, RHAX_VM_IOCTL_ENABLE_APIC};
use rhax_api::ioctl;
use rhax_api::{Platform as Codes, Pod};
use rhax_core::dispatch::{Handle, Hypervisor, SoftCpuRoots};
use rhax_core::memory::GuestMemory;
use rhax_core::platform::HeapPlatform;
use rhax_core::vmx::soft::msrs_from_tsv;

const DEFAULT_BASE: u64 = 0xfee0_0000;

#[test]
fn the_memory_unmaps_the_apic_access_page_once_with_an_invept() {
    let platform = HeapPlatform::new();
    let mem = GuestMemory::new(&platform, true).unwrap();
    let hpa = mem.map_apic_access(&platform, DEFAULT_BASE).unwrap();
    assert_eq!(
        mem.ept_leaf(DEFAULT_BASE).map(|l| l.hpa(DEFAULT_BASE)),
        Some(hpa)
    );
    let epoch = mem.epoch();
    let req = mem
        .unmap_apic_access(DEFAULT_BASE)
        .unwrap()
        .expect("a present translation cleared: INVEPT");
    assert_eq!(req.eptp, mem.eptp());
    assert!(mem.epoch() > epoch, "the epoch moved on");
    assert!(
        mem.ept_leaf(DEFAULT_BASE).is_none(),
        "0xFEE00000 is MMIO now"
    );
    mem.invept_done(&platform, req);
    assert_eq!(
        mem.unmap_apic_access(DEFAULT_BASE).unwrap(),
        None,
        "only once"
    );
    assert_eq!(
        GuestMemory::new(&platform, true)
            .unwrap()
            .unmap_apic_access(DEFAULT_BASE)
            .unwrap(),
        None,
        "a VM without the page"
    );
}

#[test]
fn a_vcpu_moving_its_base_away_ends_its_run_once_and_asks_for_the_drop() {
    for (what, base) in [
        ("moved", 0xfed0_0000u64 | 0x900),
        ("x2APIC", DEFAULT_BASE | 0xd00),
        ("disabled", DEFAULT_BASE | 0x100),
    ] {
        let (mut t, bus) = apic_setup_with_access(ApicFlags::empty(), 0x7_7000);
        t.hook(script(vec![
            wrmsr(0x1b, base),
            // The same write again: the drop is done, the RUN goes on.
            wrmsr(0x1b, base),
            Box::new(|c| c.exit(30, 0x0080_0000, 1)),
        ]));
        assert_eq!(t.run(), Ok(ExitStatus::Interrupt), "{what}: RUN ends");
        assert!(bus.take_access_drop(), "{what}: the drop requested");
        assert!(!bus.take_access_drop(), "{what}: once");
        assert_eq!(t.run(), Ok(ExitStatus::Io), "{what}");
    }
    // Base writes that keep the default xAPIC base, or a VM without the page: no drop.
    for (access, base) in [(0x7_7000, DEFAULT_BASE | 0x900), (0, 0xfed0_0900)] {
        let (mut t, bus) = apic_setup_with_access(ApicFlags::empty(), access);
        t.hook(script(vec![
            wrmsr(0x1b, base),
            Box::new(|c| c.exit(30, 0x0080_0000, 1)),
        ]));
        assert_eq!(t.run(), Ok(ExitStatus::Io), "{access:#x} {base:#x}");
        assert!(!bus.take_access_drop());
    }
}

type Hv = Hypervisor<HeapPlatform, SoftCpuRoots>;

fn call(h: &Hv, handle: Handle, def: &ioctl::IoctlDef, input: &[u8], out: &mut [u8]) -> usize {
    h.dispatch(handle, def.code(h.codes()).unwrap(), input, out)
        .unwrap()
}

#[test]
fn set_apic_state_with_a_moved_base_drops_the_mapping_through_the_dispatcher() {
    const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");
    let msrs = msrs_from_tsv(TSV, "corei7_skylake_x").unwrap();
    let h = rhax_core::dispatch::soft_hypervisor(HeapPlatform::new(), msrs, Codes::Linux).unwrap();
    let sys = h.open_system();
    let mut id = [0u8; 4];
    call(&h, sys, &ioctl::HAX_IOCTL_CREATE_VM, &[], &mut id);
    let id = u32::from_le_bytes(id);
    let vm = h.open_vm(id).unwrap();
    let c = ApicConfig {
        flags: ApicFlags::ENABLE.bits(),
        reserved: 0,
    };
    call(&h, vm, &RHAX_VM_IOCTL_ENABLE_APIC, c.as_bytes(), &mut []);
    call(
        &h,
        vm,
        &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
        &0u32.to_le_bytes(),
        &mut [],
    );
    let vc = h.open_vcpu(id, 0).unwrap();
    let mapped = |h: &Hv| {
        let s = h.snapshot();
        let m = s.vms[0].memory.clone().unwrap();
        (
            m.leaves.iter().any(|(gpa, _)| *gpa == DEFAULT_BASE),
            m.epoch,
        )
    };
    let (present, epoch) = mapped(&h);
    assert!(present, "ENABLE_APIC mapped the APIC-access page");
    let mut out = vec![0u8; RhaxApicState::SIZE];
    call(&h, vc, &RHAX_VCPU_IOCTL_GET_APIC_STATE, &[], &mut out);
    let mut s = RhaxApicState::from_bytes(&out).unwrap();
    // The same state again: nothing changes.
    call(
        &h,
        vc,
        &RHAX_VCPU_IOCTL_SET_APIC_STATE,
        s.as_bytes(),
        &mut [],
    );
    assert_eq!(mapped(&h), (true, epoch));
    let invepts = h.roots().invepts.get();
    s.base_msr = 0xfed0_0900;
    call(
        &h,
        vc,
        &RHAX_VCPU_IOCTL_SET_APIC_STATE,
        s.as_bytes(),
        &mut [],
    );
    let (present, later) = mapped(&h);
    assert!(!present, "the mapping dropped");
    assert!(later > epoch);
    assert!(h.roots().invepts.get() > invepts, "INVEPT on every CPU");
}
