//! The in-kernel APIC with "APIC-register virtualization" (SDM Vol. 3C §30.4.2, §30.4.3,
//! §30.5) against the software VMX, which virtualizes the guest's APIC-access-page accesses
//! and x2APIC RDMSRs as the CPU does: the register reads the CPU answers from the
//! virtual-APIC page without exits, the APIC-write exits that hand writes to the model (and
//! the page following the model), the reads that still exit (current count), and the flag
//! that turns it off.

mod common;
use common::apic::*;
use common::*;
use rhax_api::ext::ApicFlags;
use rhax_core::apic::decode_msi;

/// Secondary control "APIC-register virtualization" (bit 8).
const ARV: u64 = 1 << 8;
/// The APIC-access page's host-physical address in these tests.
const ACCESS: u64 = 0x7_7000;

fn proc2(c: &GuestCpu<'_>) -> u64 {
    c.read(VmcsField::SecondaryProcessorBasedVmExecutionControls)
}

#[test]
fn arv_is_on_where_the_cpu_has_it_and_off_with_the_flag() {
    let seen = Rc::new(Cell::new(0u64));
    for (model, flags, want) in [
        ("corei7_skylake_x", ApicFlags::empty(), true),
        ("corei7_skylake_x", ApicFlags::NO_APIC_VIRTUALIZATION, false),
        ("corei7_skylake_x", ApicFlags::NO_TPR_SHADOW, false),
        ("corei7_sandy_bridge_2600k", ApicFlags::empty(), false),
    ] {
        let (mut t, _bus) = apic_setup_full(model, flags, ACCESS);
        let s2 = seen.clone();
        t.hook(script(vec![Box::new(move |c| {
            s2.set(proc2(c));
            c.exit(30, 0x0080_0000, 1);
        })]));
        assert_eq!(t.run(), Ok(ExitStatus::Io));
        assert_eq!(seen.get() & ARV != 0, want, "{model} {flags:?}");
    }
}

#[test]
fn xapic_register_reads_come_from_the_page_and_the_current_count_exits() {
    let (mut t, bus) = apic_setup_with_access(ApicFlags::empty(), ACCESS);
    // mov eax, [0xfee00390] (current count): not virtualized, an APIC-access exit.
    t.flat32(&[0xa1, 0x90, 0x03, 0xe0, 0xfe], |_| {});
    t.hook(script(vec![
        Box::new(|c| {
            assert_ne!(proc2(c) & ARV, 0);
            assert_eq!(c.apic_page_read(0x20, 4), Some(0), "ID of vCPU 0");
            assert_eq!(c.apic_page_read(0x30, 4), Some(0x0106_0014), "version");
            assert_eq!(c.apic_page_read(0x33, 1), Some(0x01), "a byte of it");
            assert_eq!(c.apic_page_read(0xb0, 4), Some(0), "EOI reads 0");
            assert_eq!(c.apic_page_read(0xd0, 4), Some(0), "LDR after reset");
            assert_eq!(c.apic_page_read(0xe0, 4), Some(u32::MAX), "DFR flat");
            assert_eq!(c.apic_page_read(0xf0, 4), Some(0xff), "SVR after reset");
            for lvt in (0x320..=0x370).step_by(16) {
                assert_eq!(c.apic_page_read(lvt, 4), Some(0x1_0000), "LVT {lvt:#x}");
            }
            assert_eq!(c.apic_page_read(0x3e0, 4), Some(0), "divide configuration");
            // The timer's current count moves while the guest runs: it exits.
            assert_eq!(c.apic_page_read(0x390, 4), None);
        }),
        Box::new(|c| {
            assert_eq!(c.regs.gpr[reg::RAX], 0, "the current count, from the model");
            assert_eq!(c.read(VmcsField::GuestRip), 0x1005, "the MOV emulated");
            // Software-enabled: the APIC accepts interrupts.
            assert!(c.apic_page_write(0xf0, 4, 0x1ff));
        }),
        Box::new(|c| c.exit(30, 0x0080_0000, 1)),
        Box::new(|c| {
            // A level-triggered MSI changed the model (TMR) between two entries: the page's
            // image follows before the entry.
            assert_eq!(c.apic_page_read(0x1b0, 4), Some(1 << (0x72 - 96)), "TMR[3]");
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    // Level-triggered, asserted (MSI data bits 15 and 14, SDM Vol. 3A §11.11.2).
    let msi = decode_msi(0xfee0_0000, 0xc000 | 0x72).unwrap();
    assert_eq!(bus.deliver(&msi, None), 1);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn xapic_register_writes_exit_to_the_model_and_the_page_follows_it() {
    let (mut t, _bus) = apic_setup_with_access(ApicFlags::empty(), ACCESS);
    t.hook(script(vec![
        Box::new(|c| {
            c.write(VmcsField::GuestRip, 0x1006);
            // SVR with the software enable: stored, then an APIC-write exit (trap-like).
            assert!(c.apic_page_write(0xf0, 4, 0x1ff));
            assert_eq!(c.read(VmcsField::ExitReason), 56);
            assert_eq!(c.read(VmcsField::ExitQualification), 0xf0);
        }),
        Box::new(|c| {
            assert_eq!(c.read(VmcsField::GuestRip), 0x1006, "trap-like: RIP kept");
            assert_eq!(c.apic_page_read(0xf0, 4), Some(0x1ff));
            // LVT timer: periodic, vector 0x40, with the read-only delivery status (bit 12).
            assert!(c.apic_page_write(0x320, 4, 0x2_1040));
        }),
        Box::new(|c| {
            assert_eq!(
                c.apic_page_read(0x320, 4),
                Some(0x2_0040),
                "the page rewritten from the model: bit 12 is read-only"
            );
            // The writable xAPIC ID (SDM Vol. 3A §11.4.6).
            assert!(c.apic_page_write(0x20, 4, 0x0500_0000));
        }),
        Box::new(|c| {
            assert_eq!(c.apic_page_read(0x20, 4), Some(0x0500_0000));
            // ICR high only stores (§30.4.3.2: no exit); ICR low, an NMI to APIC ID 5 (this
            // vCPU now), exits and is sent with the page's destination.
            assert!(!c.apic_page_write(0x310, 4, 0x05ff_ffff));
            assert_eq!(
                c.apic_page_read(0x310, 4),
                Some(0x0500_0000),
                "bytes 2:0 cleared"
            );
            assert!(c.apic_page_write(0x300, 4, 0x4400));
        }),
        Box::new(|c| {
            assert_eq!(
                c.read(VmcsField::VmEntryInterruptionInformation),
                VALID | (2 << 8) | 2,
                "the NMI sent to the page's destination"
            );
            c.write(VmcsField::VmEntryInterruptionInformation, 0);
            assert_eq!(c.apic_page_read(0x310, 4), Some(0x0500_0000));
            assert_eq!(c.apic_page_read(0x300, 4), Some(0x4400), "as written");
            // A self-IPI by ICR low is virtualized without an exit (§30.1.5).
            c.write(VmcsField::GuestRflags, 0x202);
            assert!(!c.apic_page_write(0x300, 4, 0x4_0051));
            assert_eq!(c.delivered, Some(0x51));
            // A register the CPU does not virtualize writes of: an APIC-access exit.
            assert!(c.apic_page_write(0x390, 4, 5));
            assert_eq!(c.read(VmcsField::ExitReason), 44);
            assert_eq!(c.read(VmcsField::ExitQualification), (1 << 12) | 0x390);
            c.exit(30, 0x0080_0000, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn x2apic_reads_pass_through_except_the_current_count_and_write_only_registers() {
    let (mut t, bus) = apic_setup_with_access(ApicFlags::empty(), ACCESS);
    let mut steps = x2apic_on();
    steps.push(Box::new(|c| {
        assert_eq!(c.x2apic_rdmsr(0x80f), Some(0x1ff), "SVR: no exit");
        assert_eq!(c.x2apic_rdmsr(0x802), Some(0), "x2APIC ID");
        assert_eq!(c.x2apic_rdmsr(0x803), Some(0x0106_0014), "version");
        assert_eq!(c.x2apic_rdmsr(0x80d), Some(1), "LDR derived from the ID");
        assert_eq!(c.x2apic_rdmsr(0x832), Some(0x1_0000), "LVT timer");
        assert_eq!(c.x2apic_rdmsr(0x808), Some(0), "TPR");
        assert_eq!(c.x2apic_rdmsr(0x839), None, "current count exits");
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.regs.gpr[reg::RAX], 0);
        // Write-only and reserved registers keep exiting (the model's #GP).
        assert_eq!(c.x2apic_rdmsr(0x80b), None, "EOI");
    }));
    steps.push(Box::new(|c| {
        assert_eq!(
            c.read(VmcsField::VmEntryInterruptionInformation) & 0x8000_07ff,
            VALID | (3 << 8) | 13,
            "RDMSR of EOI: #GP"
        );
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        assert_eq!(c.x2apic_rdmsr(0x80e), None, "DFR: none in x2APIC mode");
    }));
    steps.push(Box::new(|c| {
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        assert_eq!(c.x2apic_rdmsr(0x831), None, "ICR high: none in x2APIC mode");
    }));
    steps.push(Box::new(|c| {
        c.write(VmcsField::VmEntryInterruptionInformation, 0);
        // ICR to APIC 3 (no such vCPU): one 64-bit register, read back from the page.
        assert!(c.x2apic_wrmsr(0x830, 0x3_0000_0030));
    }));
    steps.push(Box::new(|c| {
        assert_eq!(c.x2apic_rdmsr(0x830), Some(0x3_0000_0030), "the 64-bit ICR");
        c.exit(30, 0x0080_0000, 1);
    }));
    t.hook(script(steps));
    // Leaving the default xAPIC base (x2APIC mode) ends the RUN once: the VM's APIC-access
    // mapping goes (`apic_base.rs`).
    assert_eq!(t.run(), Ok(ExitStatus::Interrupt));
    page_dropped(&bus);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
}

#[test]
fn without_arv_register_reads_exit_as_before() {
    for (model, flags) in [
        ("corei7_skylake_x", ApicFlags::NO_APIC_VIRTUALIZATION),
        ("corei7_sandy_bridge_2600k", ApicFlags::empty()),
    ] {
        let (mut t, _bus) = apic_setup_full(model, flags, ACCESS);
        // mov eax, [0xfee000f0] (SVR)
        t.flat32(&[0xa1, 0xf0, 0x00, 0xe0, 0xfe], |_| {});
        t.hook(script(vec![
            Box::new(|c| {
                assert_eq!(proc2(c) & ARV, 0);
                assert_eq!(c.apic_page_read(0x80, 4), Some(0), "the TPR: virtualized");
                assert_eq!(c.apic_page_read(0xf0, 4), None, "SVR: an APIC-access exit");
            }),
            Box::new(|c| {
                assert_eq!(c.regs.gpr[reg::RAX], 0xff, "SVR from the model");
                c.exit(30, 0x0080_0000, 1);
            }),
        ]));
        assert_eq!(t.run(), Ok(ExitStatus::Io), "{model}");
    }
}
