//! The in-kernel APIC's IOCTLs through the dispatcher (rhax's extension): ENABLE_APIC's
//! rules (once, before any vCPU, known flags only), SIGNAL_MSI and APIC_LINT checks, the
//! state IOCTLs' round trip and refusals; every refusal has its errno and changes nothing.

use rhax_api::apic::{RhaxApicState, RHAX_APIC_STATE_VERSION};
use rhax_api::ext::{
    ApicConfig, ApicFlags, ExtFeatures, RhaxExtInfo, RhaxLint, RhaxMsi, RHAX_IOCTL_EXT_INFO,
    RHAX_VCPU_IOCTL_APIC_LINT, RHAX_VCPU_IOCTL_GET_APIC_STATE, RHAX_VCPU_IOCTL_SET_APIC_STATE,
    RHAX_VM_IOCTL_ENABLE_APIC, RHAX_VM_IOCTL_SIGNAL_MSI,
};
use rhax_api::ioctl::{self, IoctlDef};
use rhax_api::{Platform as Codes, Pod};
use rhax_core::dispatch::{
    errno, ApicRefusal, DispatchError, ErrorKind, Handle, Hypervisor, SoftCpuRoots,
};
use rhax_core::platform::HeapPlatform;
use rhax_core::vmx::soft::msrs_from_tsv;

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");

type Hv = Hypervisor<HeapPlatform, SoftCpuRoots>;

fn hv() -> Hv {
    let msrs = msrs_from_tsv(TSV, "corei7_skylake_x").expect("model");
    rhax_core::dispatch::soft_hypervisor(HeapPlatform::new(), msrs, Codes::Linux)
        .expect("negotiation")
}

fn call(
    h: &Hv,
    handle: Handle,
    def: &IoctlDef,
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, DispatchError> {
    h.dispatch(handle, def.code(h.codes()).unwrap(), input, out)
}

fn vm(h: &Hv) -> (Handle, u32) {
    let sys = h.open_system();
    let mut id = [0u8; 4];
    call(h, sys, &ioctl::HAX_IOCTL_CREATE_VM, &[], &mut id).unwrap();
    let id = u32::from_le_bytes(id);
    (h.open_vm(id).unwrap(), id)
}

fn enable(h: &Hv, vm: Handle, flags: u32, reserved: u32) -> Result<usize, DispatchError> {
    let c = ApicConfig { flags, reserved };
    call(h, vm, &RHAX_VM_IOCTL_ENABLE_APIC, c.as_bytes(), &mut [])
}

fn create_vcpu(h: &Hv, vm: Handle, id: u32) -> Result<usize, DispatchError> {
    call(
        h,
        vm,
        &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
        &id.to_le_bytes(),
        &mut [],
    )
}

#[track_caller]
fn refused(h: &Hv, r: Result<usize, DispatchError>, why: ApicRefusal, err: i32) {
    let before = h.snapshot();
    let e = r.expect_err("must be refused");
    assert_eq!(e.kind, ErrorKind::Apic(why), "{e}");
    assert_eq!(e.errno(), err, "{e}");
    assert_eq!(h.snapshot(), before);
}

#[test]
fn ext_info_advertises_the_apic() {
    let h = hv();
    let sys = h.open_system();
    let mut out = [0u8; RhaxExtInfo::SIZE];
    call(&h, sys, &RHAX_IOCTL_EXT_INFO, &[], &mut out).unwrap();
    let info = RhaxExtInfo::from_bytes(&out).unwrap();
    assert!(ExtFeatures::from_bits_retain(info.features).contains(ExtFeatures::IN_KERNEL_APIC));
}

#[test]
fn enable_apic_once_before_any_vcpu_with_known_flags() {
    let h = hv();
    let (vmh, _) = vm(&h);
    refused(
        &h,
        enable(&h, vmh, 0, 0),
        ApicRefusal::Config,
        errno::EINVAL,
    );
    refused(
        &h,
        enable(&h, vmh, 1 << 31 | 1, 0),
        ApicRefusal::Config,
        errno::EINVAL,
    );
    refused(
        &h,
        enable(&h, vmh, 1, 7),
        ApicRefusal::Config,
        errno::EINVAL,
    );
    enable(&h, vmh, ApicFlags::ENABLE.bits(), 0).unwrap();
    refused(
        &h,
        enable(&h, vmh, 1, 0),
        ApicRefusal::AlreadyEnabled,
        errno::EEXIST,
    );
    // Another VM with a vCPU already: too late.
    let (vm2, _) = vm(&h);
    create_vcpu(&h, vm2, 0).unwrap();
    refused(
        &h,
        enable(&h, vm2, 1, 0),
        ApicRefusal::VcpusExist,
        errno::EBUSY,
    );
}

#[test]
fn the_apic_access_page_is_mapped_only_where_the_vcpus_virtualize_accesses() {
    // A vCPU turns "virtualize APIC accesses" on only with the TPR shadow; the page mapped
    // at 0xFEE00000 without it would be plain memory under the guest's xAPIC accesses.
    for (flags, mapped) in [
        (ApicFlags::ENABLE, true),
        (ApicFlags::ENABLE | ApicFlags::NO_APIC_ACCESS_PAGE, false),
        (ApicFlags::ENABLE | ApicFlags::NO_TPR_SHADOW, false),
    ] {
        let h = hv();
        let (vmh, id) = vm(&h);
        enable(&h, vmh, flags.bits(), 0).unwrap();
        let snap = h.snapshot();
        let memory = snap
            .vms
            .iter()
            .find(|v| v.id == id)
            .and_then(|v| v.memory.as_ref())
            .expect("the VM's memory");
        let at_apic = memory.leaves.iter().any(|(gpa, _)| *gpa == 0xfee0_0000);
        assert_eq!(at_apic, mapped, "{flags:?}");
    }
}

#[test]
fn msi_and_lint_are_checked_and_need_the_apic() {
    let h = hv();
    let (vmh, id) = vm(&h);
    let msi = |address: u64, data: u32, reserved: u32| {
        let m = RhaxMsi {
            address,
            data,
            reserved,
        };
        call(&h, vmh, &RHAX_VM_IOCTL_SIGNAL_MSI, m.as_bytes(), &mut [])
    };
    refused(
        &h,
        msi(0xfee0_0000, 0x30, 0),
        ApicRefusal::NotEnabled,
        errno::ENXIO,
    );
    enable(&h, vmh, 1, 0).unwrap();
    create_vcpu(&h, vmh, 0).unwrap();
    refused(
        &h,
        msi(0xfec0_0000, 0x30, 0),
        ApicRefusal::Msi,
        errno::EINVAL,
    );
    refused(
        &h,
        msi(0xfee0_0000, 0x1_0030, 0),
        ApicRefusal::Msi,
        errno::EINVAL,
    );
    refused(
        &h,
        msi(0xfee0_0000, 0x30, 1),
        ApicRefusal::Msi,
        errno::EINVAL,
    );
    // Delivery mode 3 is reserved (SDM Vol. 3A §11.11.2).
    refused(
        &h,
        msi(0xfee0_0000, 0x330, 0),
        ApicRefusal::Msi,
        errno::EINVAL,
    );
    assert_eq!(msi(0xfee0_0000, 0x30, 0), Ok(0));
    let vc = h.open_vcpu(id, 0).unwrap();
    let lint = |pin: u32, level: u32, vector: u32| {
        let l = RhaxLint {
            pin,
            level,
            vector,
            reserved: 0,
        };
        call(&h, vc, &RHAX_VCPU_IOCTL_APIC_LINT, l.as_bytes(), &mut [])
    };
    refused(&h, lint(2, 1, 0), ApicRefusal::Lint, errno::EINVAL);
    refused(&h, lint(0, 2, 0), ApicRefusal::Lint, errno::EINVAL);
    refused(&h, lint(0, 1, 256), ApicRefusal::Lint, errno::EINVAL);
    assert_eq!(lint(1, 1, 0), Ok(0));
}

#[test]
fn apic_state_round_trips_and_a_refused_set_changes_nothing() {
    let h = hv();
    let (vmh, id) = vm(&h);
    // Without the APIC: ENXIO.
    create_vcpu(&h, vmh, 0).unwrap();
    let vc = h.open_vcpu(id, 0).unwrap();
    let mut out = vec![0u8; RhaxApicState::SIZE];
    let e = call(&h, vc, &RHAX_VCPU_IOCTL_GET_APIC_STATE, &[], &mut out).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Apic(ApicRefusal::NotEnabled));

    let (vmh, id) = vm(&h);
    enable(&h, vmh, 1, 0).unwrap();
    create_vcpu(&h, vmh, 0).unwrap();
    let vc = h.open_vcpu(id, 0).unwrap();
    assert_eq!(
        call(&h, vc, &RHAX_VCPU_IOCTL_GET_APIC_STATE, &[], &mut out),
        Ok(RhaxApicState::SIZE)
    );
    let mut s = RhaxApicState::from_bytes(&out).unwrap();
    assert_eq!(s.version, RHAX_APIC_STATE_VERSION);
    assert_eq!(
        s.base_msr, 0xfee0_0900,
        "vCPU 0: BSP, enabled, default base"
    );
    assert_eq!(
        s.reg(0xf0),
        Some(0xff),
        "SVR after reset: software-disabled"
    );
    // Software-enabled through SET (SVR bit 8), then an MSI waiting in the port shows in the
    // state (IRR bit 0x31); a software-disabled APIC drops fixed interrupts, as KVM's does.
    s.set_reg(0xf0, 0x1ff);
    assert_eq!(
        call(
            &h,
            vc,
            &RHAX_VCPU_IOCTL_SET_APIC_STATE,
            s.as_bytes(),
            &mut []
        ),
        Ok(0)
    );
    let m = RhaxMsi {
        address: 0xfee0_0000,
        data: 0x31,
        reserved: 0,
    };
    call(&h, vmh, &RHAX_VM_IOCTL_SIGNAL_MSI, m.as_bytes(), &mut []).unwrap();
    call(&h, vc, &RHAX_VCPU_IOCTL_GET_APIC_STATE, &[], &mut out).unwrap();
    let s = RhaxApicState::from_bytes(&out).unwrap();
    assert_eq!(
        s.reg(0x210).unwrap() & (1 << 17),
        1 << 17,
        "IRR holds vector 0x31"
    );
    // A state with a bad version is refused and the APIC is unchanged.
    let mut bad = s;
    bad.version = 2;
    let before = h.snapshot();
    let e = call(
        &h,
        vc,
        &RHAX_VCPU_IOCTL_SET_APIC_STATE,
        bad.as_bytes(),
        &mut [],
    )
    .unwrap_err();
    assert_eq!(e.errno(), errno::EINVAL);
    assert_eq!(h.snapshot(), before);
    let mut again = vec![0u8; RhaxApicState::SIZE];
    call(&h, vc, &RHAX_VCPU_IOCTL_GET_APIC_STATE, &[], &mut again).unwrap();
    assert_eq!(again, out);
    // The saved state goes back in.
    assert_eq!(
        call(
            &h,
            vc,
            &RHAX_VCPU_IOCTL_SET_APIC_STATE,
            s.as_bytes(),
            &mut []
        ),
        Ok(0)
    );
    call(&h, vc, &RHAX_VCPU_IOCTL_GET_APIC_STATE, &[], &mut again).unwrap();
    assert_eq!(again, out);
}
