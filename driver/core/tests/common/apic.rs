//! What the in-kernel APIC tests share: a vCPU with an APIC whose CPUID shows x2APIC and
//! TSC-deadline, and scripted MSR exits.

use super::*;
use rhax_api::ext::ApicFlags;
use rhax_core::apic::ApicBus;
use rhax_core::vmx::caps::PrimaryProcControls;

pub const VALID: u64 = 1 << 31;
/// The injection path (VM-entry interruption field, interrupt windows, TPR threshold): what
/// rhax does on a CPU without virtual-interrupt delivery (sandy_bridge in Bochs), forced here
/// on the skylake_x model; `apic_vid.rs` has the tests with virtual-interrupt delivery.
pub const INJECT: ApicFlags = ApicFlags::NO_APIC_VIRTUALIZATION;
pub const TPR_SHADOW: u64 = PrimaryProcControls::USE_TPR_SHADOW.bits() as u64;
pub const CR8_EXITING: u64 = (PrimaryProcControls::CR8_LOAD_EXITING.bits()
    | PrimaryProcControls::CR8_STORE_EXITING.bits()) as u64;

/// A vCPU with an APIC on a fresh bus, CPUID showing x2APIC and TSC-deadline.
pub fn apic_setup(flags: ApicFlags) -> (T, rhax_core::apic::bus::SharedBus) {
    apic_setup_with_access(flags, 0)
}

/// As [`apic_setup`], the VM's APIC-access page at host-physical `access` (0: none).
pub fn apic_setup_with_access(
    flags: ApicFlags,
    access: u64,
) -> (T, rhax_core::apic::bus::SharedBus) {
    apic_setup_full("corei7_skylake_x", flags, access)
}

/// As [`apic_setup_with_access`] on the Bochs CPU model `model`.
pub fn apic_setup_full(
    model: &str,
    flags: ApicFlags,
    access: u64,
) -> (T, rhax_core::apic::bus::SharedBus) {
    let mut t = setup_model(model);
    let bus = ApicBus::shared(ApicFlags::ENABLE | flags, access).unwrap();
    t.vcpu.attach_apic(&t.platform, bus.clone()).unwrap();
    t.cpuid.allow_apic_features();
    let leaf1 = CpuidEntry {
        function: 1,
        index: 0,
        flags: 0,
        eax: 0x906ea,
        ebx: 0x0010_0800,
        ecx: (1 << 21) | (1 << 24),
        edx: 0,
        pad: [0; 3],
    };
    let max = CpuidEntry {
        function: 0x8000_0008,
        eax: 39,
        ..leaf1
    };
    t.cpuid.set(&[leaf1, max]).unwrap();
    (t, bus)
}

pub fn wrmsr(msr: u32, value: u64) -> Step {
    Box::new(move |c| {
        c.regs.gpr[reg::RCX] = u64::from(msr);
        c.regs.gpr[reg::RAX] = value & 0xffff_ffff;
        c.regs.gpr[reg::RDX] = value >> 32;
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(32, 0, 2);
    })
}

pub fn rdmsr(msr: u32) -> Step {
    Box::new(move |c| {
        c.regs.gpr[reg::RCX] = u64::from(msr);
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(31, 0, 2);
    })
}

pub fn hlt() -> Step {
    Box::new(|c| {
        c.write(VmcsField::GuestRflags, 0x202);
        c.exit(12, 0, 1)
    })
}

/// The entry injects `vector` as an external interrupt (VM-entry interruption field, SDM
/// Vol. 3C §26.6); the guest takes it and leaves with an OUT (RUN returns IO).
pub fn injected_then_out(vector: u8, what: &'static str) -> Step {
    Box::new(move |c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation),
            VALID | u64::from(vector),
            "{what}"
        );
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        c.exit(30, 0x0080_0000, 1);
    })
}

pub fn out_port() -> Step {
    Box::new(|c| c.exit(30, 0x0080_0000, 1))
}

/// The guest switches to x2APIC mode and software-enables its APIC (SVR = 0x1ff).
pub fn x2apic_on() -> Vec<Step> {
    vec![
        wrmsr(0x1b, 0xfee0_0000 | 0x900 | 0x400),
        wrmsr(0x80f, 0x1ff),
    ]
}

/// What the dispatcher does after a RUN that ended for the APIC-access page's drop (a vCPU
/// left the default base): the bus's unmap claimed and ended (`dispatch/apic.rs`), so the
/// vCPU may enter its guest again.
pub fn page_dropped(bus: &rhax_core::apic::bus::SharedBus) {
    use rhax_core::apic::bus::AccessWork;
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Unmap));
    assert_eq!(bus.access_work_done(AccessWork::Unmap, Some(false)), None);
}

/// As [`page_dropped`], for the RUN that ended because the last vCPU came back to the
/// default base: the map claimed and ended.
pub fn page_mapped(bus: &rhax_core::apic::bus::SharedBus) {
    use rhax_core::apic::bus::AccessWork;
    assert_eq!(bus.claim_access_work(), Some(AccessWork::Map));
    assert_eq!(bus.access_work_done(AccessWork::Map, Some(true)), None);
}
