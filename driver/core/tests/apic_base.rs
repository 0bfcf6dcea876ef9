//! The APIC-access page when a guest moves its APIC away from the default xAPIC base (SDM
//! Vol. 3A §11.4.4), goes to x2APIC mode or disables it: the VM-wide mapping at 0xFEE00000
//! is dropped (an INVEPT on every CPU) before the vCPU that moved runs again, and the address
//! is then what the memslots make it; when every vCPU is back at the default base the
//! mapping returns. The memory module's unmap and remap, the bus's bookkeeping (one atomic
//! word: who is off the default base, the mapping's state), the vCPU's requests (RUN ends
//! with INTERRUPT; no entry while the page may still be mapped), and the dispatcher's changes
//! after SET_APIC_STATE.

mod common;
use common::apic::*;
use common::*;
use rhax_api::apic::RhaxApicState;
use rhax_api::ext::{ApicConfig, ApicFlags, RHAX_VCPU_IOCTL_GET_APIC_STATE};
use rhax_api::ext::{RHAX_VCPU_IOCTL_SET_APIC_STATE, RHAX_VM_IOCTL_ENABLE_APIC};
use rhax_api::ioctl;
use rhax_api::{Platform as Codes, Pod};
use rhax_core::apic::bus::AccessWork;
use rhax_core::apic::ApicBus;
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
        // Until the unmap is done the vCPU does not enter its guest.
        let entries = t.entries();
        assert_eq!(t.run(), Ok(ExitStatus::Interrupt), "{what}: held back");
        assert_eq!(
            t.entries(),
            entries,
            "{what}: no entry while the page is mapped"
        );
        let work = bus.claim_access_work();
        assert_eq!(work, Some(AccessWork::Unmap), "{what}: the drop requested");
        assert_eq!(bus.claim_access_work(), None, "{what}: claimed once");
        assert_eq!(bus.access_work_done(AccessWork::Unmap, Some(false)), None);
        assert_eq!(bus.claim_access_work(), None, "{what}: nothing more");
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
        assert_eq!(bus.claim_access_work(), None);
    }
}

#[test]
fn the_last_vcpu_back_at_the_default_base_ends_its_run_and_asks_for_the_map() {
    let (mut t, bus) = apic_setup_with_access(ApicFlags::empty(), 0x7_7000);
    t.hook(script(vec![wrmsr(0x1b, 0xfed0_0900), out_port()]));
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Unmap));
    assert_eq!(bus.access_work_done(AccessWork::Unmap, Some(false)), None);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    // Back at the default base (a reset guest's BIOS, or one that left x2APIC mode).
    t.hook(script(vec![
        wrmsr(0x1b, DEFAULT_BASE | 0x900),
        // Again: the map is asked for once.
        wrmsr(0x1b, DEFAULT_BASE | 0x900),
        out_port(),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt), "RUN ends for the map");
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Map));
    assert_eq!(bus.access_work_done(AccessWork::Map, Some(true)), None);
    assert_eq!(bus.claim_access_work(), None);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn the_bus_keeps_the_page_out_while_any_vcpu_is_off_the_default_base() {
    let bus = ApicBus::shared(ApicFlags::ENABLE, 0x7_7000).unwrap();
    // vCPU 0 leaves: unmap; vCPU 1 leaves too: it must not enter before the unmap ends.
    assert!(bus.note_base(0, false), "0 leaves a mapped page: RUN ends");
    assert!(!bus.may_enter(0));
    assert!(bus.may_enter(1), "1 is still at the default base");
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Unmap));
    assert!(
        bus.note_base(1, false),
        "1 leaves while the unmap is under way"
    );
    assert!(!bus.may_enter(1));
    assert_eq!(bus.access_work_done(AccessWork::Unmap, Some(false)), None);
    assert!(bus.may_enter(0) && bus.may_enter(1));
    // 0 comes back: 1 is still away, the page stays out.
    assert!(!bus.note_base(0, true));
    assert_eq!(bus.claim_access_work(), None);
    // 1 comes back: the last one asks for the map.
    assert!(bus.note_base(1, true));
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Map));
    // 0 leaves while the map is under way: the map's end turns into an unmap at once.
    assert!(bus.note_base(0, false));
    assert_eq!(
        bus.access_work_done(AccessWork::Map, Some(true)),
        Some(AccessWork::Unmap)
    );
    assert!(!bus.may_enter(0), "the page went in: 0 waits");
    assert_eq!(bus.access_work_done(AccessWork::Unmap, Some(false)), None);
    assert!(bus.may_enter(0));
    // A failed unmap leaves the page in and the work due again.
    assert!(bus.note_base(0, true), "the last one back");
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Map));
    assert_eq!(bus.access_work_done(AccessWork::Map, Some(true)), None);
    assert!(bus.note_base(0, false));
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Unmap));
    assert_eq!(bus.access_work_done(AccessWork::Unmap, Some(true)), None);
    assert!(!bus.may_enter(0));
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Unmap), "retried");
    assert_eq!(bus.access_work_done(AccessWork::Unmap, Some(false)), None);
    // A vCPU that goes away no longer keeps the page out; RAM where the page was keeps it
    // out for good.
    bus.detach(0);
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Map));
    assert_eq!(bus.access_work_done(AccessWork::Map, None), None);
    assert!(
        !bus.note_base(1, false),
        "gone for good: nothing to wait for"
    );
    assert!(!bus.note_base(1, true));
    assert_eq!(bus.claim_access_work(), None);
    // A VM without the page: never anything to do.
    let none = ApicBus::shared(ApicFlags::ENABLE, 0).unwrap();
    assert!(!none.note_base(0, false));
    assert!(none.may_enter(0), "nothing recorded");
    assert_eq!(none.claim_access_work(), None);
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
    let set_state = |h: &Hv, s: &RhaxApicState| {
        call(
            h,
            vc,
            &RHAX_VCPU_IOCTL_SET_APIC_STATE,
            s.as_bytes(),
            &mut [],
        );
    };
    // The same state again: nothing changes.
    set_state(&h, &s);
    assert_eq!(mapped(&h), (true, epoch));
    let invepts = h.roots().invepts.get();
    s.base_msr = 0xfed0_0900;
    set_state(&h, &s);
    let (present, later) = mapped(&h);
    assert!(!present, "the mapping dropped");
    assert!(later > epoch);
    assert!(h.roots().invepts.get() > invepts, "INVEPT on every CPU");
    // Back at the default base: the mapping returns (a not-present entry filled: no INVEPT).
    let invepts = h.roots().invepts.get();
    s.base_msr = DEFAULT_BASE | 0x900;
    set_state(&h, &s);
    assert_eq!(mapped(&h), (true, later), "the mapping back");
    assert_eq!(h.roots().invepts.get(), invepts);
}

#[test]
fn the_memory_remaps_the_apic_access_page_unless_ram_took_its_place() {
    let platform = HeapPlatform::new();
    let mem = GuestMemory::new(&platform, true).unwrap();
    assert!(
        !mem.remap_apic_access(&platform, DEFAULT_BASE).unwrap(),
        "no page"
    );
    let hpa = mem.map_apic_access(&platform, DEFAULT_BASE).unwrap();
    assert!(
        mem.remap_apic_access(&platform, DEFAULT_BASE).unwrap(),
        "already there"
    );
    let req = mem.unmap_apic_access(DEFAULT_BASE).unwrap().unwrap();
    mem.invept_done(&platform, req);
    let epoch = mem.epoch();
    assert!(mem.remap_apic_access(&platform, DEFAULT_BASE).unwrap());
    assert_eq!(
        mem.ept_leaf(DEFAULT_BASE).map(|l| l.hpa(DEFAULT_BASE)),
        Some(hpa),
        "the same page back"
    );
    assert_eq!(mem.epoch(), epoch, "no flush for a filled entry");
}
