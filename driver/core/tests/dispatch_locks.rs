//! The lock hierarchy in action (defect 8): no dispatcher lock is held across RUN or across
//! the passive-level memory work between RUN steps, so while a RUN is inside its memory step
//! (here: pinning the guest RAM it faulted on) other requests on the same objects return at
//! once: a second vCPU request is refused with `VcpuInUse` instead of spinning until the RUN
//! ends, KICKOFF and snapshots proceed, and closing the vCPU and the VM is deferred to the RUN,
//! which tears both down when it returns. Before, the vCPU lock was held for the whole RUN:
//! the second request spun on it forever (this test hung).

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use rhax_api::ioctl::{self, IoctlDef};
use rhax_api::{Platform as Codes, Pod, RamblockInfo, SetRamInfo};
use rhax_core::dispatch::{
    errno, nt, DispatchError, ErrorKind, Handle, Hypervisor, PinHooks, PinningPlatform,
    SoftCpuRoots,
};
use rhax_core::platform::Platform;
use rhax_core::vmcs::VmcsField;
use rhax_core::vmx::negotiate::negotiate;
use rhax_core::vmx::root::VmxRoot;
use rhax_core::vmx::soft::{msrs_from_tsv, GuestCpu, SoftVmx};

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");

thread_local! {
    /// Runs inside the next `pin`: what the test does while RUN is in its memory step.
    static DURING_PIN: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Runs [`DURING_PIN`] inside the next pin.
struct DuringPin;

impl PinHooks for DuringPin {
    fn on_pin() {
        if let Some(f) = DURING_PIN.with(|h| h.borrow_mut().take()) {
            f();
        }
    }
}

type Pinning = PinningPlatform<DuringPin>;

type Hv = Hypervisor<Pinning, SoftCpuRoots>;

fn call(
    h: &Hv,
    handle: Handle,
    def: &IoctlDef,
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, DispatchError> {
    h.dispatch(handle, def.code(h.codes()).expect("defined"), input, out)
}

#[test]
fn requests_during_a_runs_memory_step_do_not_wait_and_close_is_deferred() {
    let platform = Pinning::default();
    let vmx = SoftVmx::new(msrs_from_tsv(TSV, "corei7_skylake_x").expect("model"));
    let controls = negotiate(vmx.caps()).expect("negotiation");
    let page = platform.alloc_pages(1).expect("page");
    // SAFETY: software model, one thread.
    let root = match unsafe { VmxRoot::enable(vmx, 0, page) } {
        Ok(r) => r,
        Err(e) => panic!("enable: {:?}", e.0),
    };
    let h: Hv = Hypervisor::new(
        platform,
        SoftCpuRoots::new(root),
        Codes::Windows,
        Ok(controls),
    );
    const RAM: usize = 0x1_0000;
    let layout = std::alloc::Layout::from_size_align(RAM, 4096).unwrap();
    // SAFETY: non-zero layout; leaked (outlives the hypervisor).
    let ram = unsafe { std::alloc::alloc_zeroed(layout) } as u64;
    let sys = h.open_system();
    let mut id = [0u8; 4];
    call(&h, sys, &ioctl::HAX_IOCTL_CREATE_VM, &[], &mut id).unwrap();
    let id = u32::from_le_bytes(id);
    let vm = h.open_vm(id).unwrap();
    let block = RamblockInfo {
        start_va: ram,
        size: RAM as u64,
        reserved: 0,
    };
    call(
        &h,
        vm,
        &ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK,
        block.as_bytes(),
        &mut [],
    )
    .unwrap();
    let set = SetRamInfo {
        pa_start: 0,
        size: RAM as u32,
        flags: 0,
        pad: [0; 3],
        va: ram,
    };
    call(
        &h,
        vm,
        &ioctl::HAX_VM_IOCTL_SET_RAM,
        set.as_bytes(),
        &mut [],
    )
    .unwrap();
    call(
        &h,
        vm,
        &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
        &0u32.to_le_bytes(),
        &mut [],
    )
    .unwrap();
    let vc = h.open_vcpu(id, 0).unwrap();
    let mut n = 0;
    h.roots().with_soft(|root| {
        root.vmx().set_hook(move |c: &mut GuestCpu<'_>| {
            n += 1;
            if n == 1 {
                // A first touch of RAM: the memory step pins it.
                c.write(VmcsField::GuestPhysicalAddress, 0x3000);
                c.exit(48, 1, 0);
            } else {
                c.exit(12, 0, 1); // HLT
            }
        })
    });
    let seen = std::rc::Rc::new(RefCell::new(Vec::new()));
    let hp: *const Hv = &h;
    let log = seen.clone();
    DURING_PIN.with(|d| {
        *d.borrow_mut() = Some(Box::new(move || {
            // SAFETY: `h` lives until the end of the test; this runs inside its RUN below.
            let h = unsafe { &*hp };
            let mut regs = [0u8; rhax_api::VcpuState::SIZE];
            let e = call(h, vc, &ioctl::HAX_VCPU_GET_REGS, &[], &mut regs).unwrap_err();
            log.borrow_mut()
                .push(format!("get_regs {:?} {}", e.kind, e.errno()));
            assert_eq!(
                (e.kind, e.errno(), e.nt_status()),
                (ErrorKind::VcpuInUse, errno::EBUSY, nt::STATUS_DEVICE_BUSY)
            );
            assert_eq!(
                call(h, vc, &ioctl::HAX_VCPU_IOCTL_KICKOFF, &[], &mut []),
                Ok(0)
            );
            assert_eq!(
                h.snapshot().vms.len(),
                1,
                "no lock held: a snapshot proceeds"
            );
            // Closing both handles now: the vCPU is lent to the RUN, which destroys it when it
            // returns; the VM's memory goes with the RUN's reference.
            h.close(vc).unwrap();
            h.close(vm).unwrap();
            assert!(h.snapshot().vms.is_empty(), "gone from the table at once");
            log.borrow_mut().push("closed".into());
        }))
    });
    assert_eq!(
        call(&h, vc, &ioctl::HAX_VCPU_IOCTL_RUN, &[], &mut []),
        Ok(0)
    );
    assert_eq!(
        *seen.borrow(),
        ["get_regs VcpuInUse 16", "closed"],
        "ran inside the RUN"
    );
    assert_eq!(
        call(
            &h,
            vc,
            &ioctl::HAX_VCPU_GET_REGS,
            &[],
            &mut [0u8; rhax_api::VcpuState::SIZE]
        )
        .unwrap_err()
        .kind,
        ErrorKind::InvalidHandle
    );
    assert!(h.snapshot().vms.is_empty());
    assert_eq!(
        h.platform().heap.live_pages.load(Ordering::Relaxed),
        1,
        "everything but the VMXON page handed back after the RUN"
    );
}
