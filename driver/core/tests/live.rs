//! `Hypervisor::live`: the VMs and vCPUs a shell keeps devices for, through every way an
//! object is born and dies (CREATE_VM, VCPU_CREATE, closing each kind of handle).

use rhax_api::ioctl::{self, IoctlDef};
use rhax_api::Platform as Codes;
use rhax_core::dispatch::{Handle, Hypervisor, LiveObjects, SoftCpuRoots};
use rhax_core::platform::HeapPlatform;
use rhax_core::vmx::soft::msrs_from_tsv;

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");

type Hv = Hypervisor<HeapPlatform, SoftCpuRoots>;

fn hv() -> Hv {
    let msrs = msrs_from_tsv(TSV, "corei7_skylake_x").expect("model");
    rhax_core::dispatch::soft_hypervisor(HeapPlatform::new(), msrs, Codes::Windows)
        .expect("negotiation")
}

fn call(h: &Hv, handle: Handle, def: &IoctlDef, input: &[u8], out: &mut [u8]) -> usize {
    h.dispatch(handle, def.windows().expect("windows code"), input, out)
        .expect("request succeeds")
}

fn create_vm(h: &Hv, sys: Handle) -> u32 {
    let mut id = [0u8; 4];
    call(h, sys, &ioctl::HAX_IOCTL_CREATE_VM, &[], &mut id);
    u32::from_le_bytes(id)
}

fn create_vcpu(h: &Hv, vm: Handle, id: u32) {
    call(
        h,
        vm,
        &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
        &id.to_le_bytes(),
        &mut [],
    );
}

#[test]
fn nothing_lives_at_first() {
    let h = hv();
    let _sys = h.open_system();
    assert_eq!(h.live(), LiveObjects::default());
}

#[test]
fn vms_and_vcpus_appear_and_go_with_their_handles() {
    let h = hv();
    let sys = h.open_system();
    assert_eq!(create_vm(&h, sys), 0);
    assert_eq!(create_vm(&h, sys), 1);
    let live = h.live();
    assert_eq!(live.vms, 0b11);
    assert!(live.vm(0) && live.vm(1) && !live.vm(2) && !live.vm(64) && !live.vm(u32::MAX));

    let vm1 = h.open_vm(1).expect("open vm 1");
    create_vcpu(&h, vm1, 15);
    create_vcpu(&h, vm1, 0);
    let live = h.live();
    assert_eq!(live.vcpus[1], 0x8001);
    assert!(live.vcpu(1, 15) && live.vcpu(1, 0) && !live.vcpu(1, 1) && !live.vcpu(0, 0));
    assert!(!live.vcpu(1, 16) && !live.vcpu(64, 0));

    // vCPU 15 opened; closing the VM handle kills the never-opened vCPU 0 and the VM's
    // device (a closed VM cannot be reopened), vCPU 15 lives on.
    let vcpu15 = h.open_vcpu(1, 15).expect("open vcpu");
    h.close(vm1).expect("close vm");
    let live = h.live();
    assert_eq!(live.vms, 0b01);
    assert_eq!(live.vcpus[1], 0x8000);

    h.close(vcpu15).expect("close vcpu");
    let live = h.live();
    assert_eq!(live.vms, 0b01);
    assert_eq!(live.vcpus, [0; 64]);

    // VM 0 was never opened: it dies with the system handle that created it.
    h.close(sys).expect("close sys");
    assert_eq!(h.live(), LiveObjects::default());
}
