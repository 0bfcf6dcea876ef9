//! Host tests of the VT-x diagnosis: every obstacle, and CPUs that disagree.

use super::*;
use std::format;
use std::string::ToString;
use std::vec::Vec;

/// Haswell values (Bochs 2.7, TRUE controls), as in rhax-core's negotiation tests.
fn haswell() -> VmxCapMsrs {
    VmxCapMsrs::bochs_haswell()
}

fn good(cpu: u32) -> CpuFacts {
    CpuFacts {
        cpu,
        cpuid: CpuidFacts {
            vendor: *INTEL,
            vmx: true,
            hypervisor: false,
            hypervisor_vendor: [0; 12],
            nx: true,
        },
        msrs: Some(haswell()),
    }
}

fn machine(n: u32) -> Vec<CpuFacts> {
    (0..n).map(good).collect()
}

fn reason(facts: &[CpuFacts]) -> Reason {
    diagnose(facts).unwrap_err().reason
}

#[test]
fn a_good_machine_negotiates() {
    let c = diagnose(&machine(4)).unwrap();
    assert_eq!(
        c,
        negotiate(&VmxCaps::from_msrs(&haswell())).unwrap(),
        "the controls are the common negotiation"
    );
}

#[test]
fn no_cpus_is_an_obstacle() {
    assert_eq!(reason(&[]), Reason::NoCpus);
}

#[test]
fn amd_is_not_intel() {
    let mut m = machine(2);
    for f in &mut m {
        f.cpuid.vendor = *b"AuthenticAMD";
        f.cpuid.vmx = false;
        f.msrs = None;
    }
    let o = diagnose(&m).unwrap_err();
    assert_eq!(
        o.reason,
        Reason::NotIntel {
            vendor: *b"AuthenticAMD"
        }
    );
    assert_eq!(o.capability_failure(), CapabilityFailure::VT);
    assert!(o.to_string().contains("AuthenticAMD"));
}

#[test]
fn hyper_v_hiding_vmx_is_named_with_the_fix() {
    let mut m = machine(2);
    for f in &mut m {
        f.cpuid.vmx = false;
        f.cpuid.hypervisor = true;
        f.cpuid.hypervisor_vendor = *b"Microsoft Hv";
        f.msrs = None;
    }
    let o = diagnose(&m).unwrap_err();
    assert_eq!(
        o.reason,
        Reason::HypervisorOwnsVtx {
            cpu: 0,
            hypervisor: Hypervisor::HyperV
        }
    );
    assert_eq!(o.capability_failure(), CapabilityFailure::VT);
    let text = o.to_string();
    assert!(text.contains("Hyper-V"), "{text}");
    assert!(text.contains("Memory Integrity"), "{text}");
    assert!(
        text.contains("bcdedit /set hypervisorlaunchtype off"),
        "{text}"
    );
}

#[test]
fn other_hypervisors_are_named_with_their_nested_setting() {
    let cases: [(&[u8; 12], Hypervisor, &str); 5] = [
        (b"KVMKVMKVM\0\0\0", Hypervisor::Kvm, "nested=1"),
        (
            b"VMwareVMware",
            Hypervisor::VMware,
            "Virtualize Intel VT-x/EPT",
        ),
        (b"VBoxVBoxVBox", Hypervisor::VirtualBox, "Nested VT-x"),
        (b"XenVMMXenVMM", Hypervisor::Xen, "nested virtualization"),
        (b"ZZZZZZZZZZZZ", Hypervisor::Other(*b"ZZZZZZZZZZZZ"), "ZZZZ"),
    ];
    for (vendor, hv, hint) in cases {
        let mut m = machine(1);
        m[0].cpuid.vmx = false;
        m[0].cpuid.hypervisor = true;
        m[0].cpuid.hypervisor_vendor = *vendor;
        let o = diagnose(&m).unwrap_err();
        assert_eq!(
            o.reason,
            Reason::HypervisorOwnsVtx {
                cpu: 0,
                hypervisor: hv
            }
        );
        assert!(o.to_string().contains(hint), "{o}");
    }
}

#[test]
fn no_vmx_without_hypervisor() {
    let mut m = machine(1);
    m[0].cpuid.vmx = false;
    m[0].msrs = None;
    assert_eq!(reason(&m), Reason::NoVmx { cpu: 0 });
}

#[test]
fn the_wine_path_decides_from_cpuid_alone() {
    // What `probe` passes on a machine without VMX: one CPU, no MSRs.
    let mut f = good(0);
    f.cpuid.vmx = false;
    f.msrs = None;
    let o = diagnose(&[f]).unwrap_err();
    assert_eq!(o.reason, Reason::NoVmx { cpu: 0 });
    assert_eq!(o.capability_failure(), CapabilityFailure::VT);
}

#[test]
fn firmware_lock_is_reported_with_the_fix() {
    let mut m = machine(2);
    for f in &mut m {
        f.msrs.as_mut().unwrap().feature_control = 0x1; // locked, VMX outside SMX off
    }
    let o = diagnose(&m).unwrap_err();
    assert_eq!(o.reason, Reason::DisabledByFirmware { cpu: 0 });
    assert_eq!(o.capability_failure(), CapabilityFailure::VT);
    assert!(o.to_string().contains("BIOS/UEFI"));
}

#[test]
fn unlocked_feature_control_is_usable() {
    // VmxRoot::enable locks it with VMX on; negotiation accepts it.
    let mut m = machine(1);
    m[0].msrs.as_mut().unwrap().feature_control = 0;
    assert!(diagnose(&m).is_ok());
}

#[test]
fn missing_nx_alone_is_the_nx_reason() {
    let mut m = machine(2);
    m[1].cpuid.nx = false;
    let o = diagnose(&m).unwrap_err();
    assert_eq!(o.reason, Reason::NoNx { cpu: 1 });
    assert_eq!(o.capability_failure(), CapabilityFailure::NX);
}

#[test]
fn missing_nx_and_vt_report_both_bits() {
    let mut m = machine(1);
    m[0].cpuid.vmx = false;
    m[0].cpuid.nx = false;
    m[0].msrs = None;
    let o = diagnose(&m).unwrap_err();
    assert_eq!(o.reason, Reason::NoVmx { cpu: 0 });
    assert_eq!(
        o.capability_failure(),
        CapabilityFailure::VT | CapabilityFailure::NX
    );
    assert!(o.to_string().contains("NX/XD"));
}

#[test]
fn a_missing_feature_is_named() {
    let mut m = machine(1);
    // No secondary controls at all: no EPT, no unrestricted guest.
    let msrs = m[0].msrs.as_mut().unwrap();
    msrs.procbased &= !(1 << 63);
    msrs.true_procbased = msrs.true_procbased.map(|v| v & !(1 << 63));
    msrs.procbased2 = None;
    msrs.ept_vpid_cap = None;
    let o = diagnose(&m).unwrap_err();
    let Reason::Negotiation { cpu: 0, error } = o.reason else {
        panic!("{o:?}");
    };
    assert!(
        matches!(error, NegotiationError::MissingFeature(_)),
        "{error:?}"
    );
    assert!(o.to_string().contains("secondary"), "{o}");
}

#[test]
fn cpus_that_disagree_on_vmx_are_refused() {
    let mut m = machine(3);
    // CPU 2 lacks unrestricted guest's partner VPID: a different negotiation.
    let msrs = m[2].msrs.as_mut().unwrap();
    msrs.procbased2 = msrs.procbased2.map(|v| v & !(1 << (32 + 5)));
    assert_eq!(reason(&m), Reason::CpusDisagree { first: 0, cpu: 2 });
}

#[test]
fn cpus_that_disagree_on_the_vmcs_revision_are_refused() {
    let mut m = machine(2);
    m[1].msrs.as_mut().unwrap().basic ^= 1;
    assert_eq!(reason(&m), Reason::CpusDisagree { first: 0, cpu: 1 });
}

#[test]
fn one_cpu_without_vmx_among_good_ones_is_found() {
    let mut m = machine(4);
    m[3].cpuid.vmx = false;
    m[3].msrs = None;
    assert_eq!(reason(&m), Reason::NoVmx { cpu: 3 });
}

#[test]
fn one_cpu_locked_off_among_good_ones_is_found() {
    let mut m = machine(4);
    m[2].msrs.as_mut().unwrap().feature_control = 0x1;
    assert_eq!(reason(&m), Reason::DisabledByFirmware { cpu: 2 });
}

#[test]
fn a_cpu_whose_msrs_were_not_read_is_reported() {
    let mut m = machine(2);
    m[1].msrs = None;
    assert_eq!(reason(&m), Reason::NotGathered { cpu: 1 });
}

#[test]
fn every_message_says_something() {
    let reasons = [
        Reason::NotKernelMode,
        Reason::NoCpus,
        Reason::OutOfMemory,
        Reason::NoVmx { cpu: 1 },
        Reason::NotGathered { cpu: 1 },
        Reason::DisabledByFirmware { cpu: 1 },
        Reason::NoNx { cpu: 1 },
        Reason::CpusDisagree { first: 0, cpu: 1 },
    ];
    for r in reasons {
        let s = format!("{}", Obstacle::new(r));
        assert!(s.len() > 20, "{s}");
    }
}

#[test]
fn cpuid_on_this_host_is_consistent() {
    // The host's own CPUID: the hypervisor vendor is read only with the hypervisor bit.
    let f = cpuid_facts();
    if !f.hypervisor {
        assert_eq!(f.hypervisor_vendor, [0; 12]);
    }
    assert!(f.vendor.iter().all(|b| b.is_ascii()));
}

#[test]
fn host_tests_run_in_ring_3() {
    assert_eq!(current_privilege_level(), 3);
}

#[test]
fn messages_fit_one_dbgprint() {
    // DbgPrint truncates a message at 512 bytes; "rhax: " and a newline come on top.
    let mut all = Vec::new();
    for hv in [
        Hypervisor::HyperV,
        Hypervisor::Kvm,
        Hypervisor::VMware,
        Hypervisor::VirtualBox,
        Hypervisor::Other(*b"0123456789ab"),
    ] {
        all.push(Reason::HypervisorOwnsVtx {
            cpu: 2047,
            hypervisor: hv,
        });
    }
    all.push(Reason::NotIntel {
        vendor: *b"AuthenticAMD",
    });
    all.push(Reason::Negotiation {
        cpu: 2047,
        error: NegotiationError::MissingFeature(
            rhax_core::vmx::negotiate::Feature::UnrestrictedGuest,
        ),
    });
    all.push(Reason::DisabledByFirmware { cpu: 2047 });
    all.push(Reason::CpusDisagree {
        first: 0,
        cpu: 2047,
    });
    for r in all {
        let o = Obstacle {
            reason: r,
            no_nx: true,
        };
        let s = o.to_string();
        assert!(s.len() <= 500, "{} bytes: {s}", s.len());
    }
}
