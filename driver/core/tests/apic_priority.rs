//! Acceptance and priority of the local APIC model (SDM Vol. 3A §11.8): IRR/ISR/TMR, TPR,
//! PPR, APR, EOI order, EOI broadcast and its suppression, illegal vectors and the error
//! interrupt (§11.5.3), software disable, and the NMI/INIT/SIPI latches.

use rhax_core::apic::{DeliveryMode, Effect, Interrupt, LocalApic};

fn xapic() -> LocalApic {
    let mut a = LocalApic::new(0, true, 1);
    a.write_mmio(0xf0, 0x1ff, 0);
    a
}

fn level(vector: u8) -> Interrupt {
    Interrupt {
        vector,
        mode: DeliveryMode::Fixed,
        assert: true,
        level_triggered: true,
    }
}

fn other(mode: DeliveryMode, vector: u8) -> Interrupt {
    Interrupt {
        vector,
        mode,
        assert: true,
        level_triggered: false,
    }
}

/// Bit `v` of the 256-bit register at MMIO `base` (ISR 0x100, TMR 0x180, IRR 0x200).
fn bit(a: &mut LocalApic, base: u32, v: u8) -> bool {
    a.read_mmio(base + (v as u32 / 32) * 0x10, 0) & (1 << (v % 32)) != 0
}

fn eoi(a: &mut LocalApic) -> Effect {
    a.write_mmio(0xb0, 0, 0)
}

#[test]
fn accept_ack_moves_irr_to_isr_and_keeps_tmr() {
    let mut a = xapic();
    for v in [0x10_u8, 0x3f, 0x40, 0x9e, 0xff] {
        assert!(a.accept(Interrupt::fixed(v)), "{v:#x}");
        assert!(bit(&mut a, 0x200, v));
        assert!(!bit(&mut a, 0x180, v), "edge: TMR clear");
    }
    assert!(!a.accept(Interrupt::fixed(0x40)), "already requested");
    assert_eq!(a.pending_vector(), Some(0xff));
    a.ack(0xff);
    assert!(!bit(&mut a, 0x200, 0xff));
    assert!(bit(&mut a, 0x100, 0xff));
    assert_eq!(a.ppr(), 0xf0);
    assert_eq!(a.pending_vector(), None, "nothing above class 15");
    // Level: TMR set on acceptance and kept through ack; an edge re-acceptance clears it.
    assert!(a.accept(level(0x51)));
    assert!(bit(&mut a, 0x180, 0x51));
    a.ack(0x51);
    assert!(bit(&mut a, 0x180, 0x51));
    assert!(a.accept(Interrupt::fixed(0x51)), "one in ISR, one in IRR");
    assert!(!bit(&mut a, 0x180, 0x51));
    // Acking a vector that is not requested does nothing.
    let before = a.clone();
    a.ack(0x77);
    assert_eq!(a, before);
}

#[test]
fn ppr_follows_tpr_and_isr() {
    // (TPR, in-service vector, PPR) per §11.8.3.1.
    for (tpr, isr, ppr) in [
        (0x00, None, 0x00),
        (0x35, None, 0x35),
        (0x30, Some(0x51), 0x50),
        (0x5f, Some(0x51), 0x5f),
        (0x50, Some(0x5f), 0x50),
        (0x62, Some(0x51), 0x62),
        (0x0f, Some(0xf3), 0xf0),
    ] {
        let mut a = xapic();
        if let Some(v) = isr {
            a.accept(Interrupt::fixed(v));
            a.ack(v);
        }
        a.write_mmio(0x80, tpr, 0);
        assert_eq!(a.ppr(), ppr, "TPR {tpr:#x} ISR {isr:?}");
        assert_eq!(a.read_mmio(0xa0, 0), ppr as u32);
    }
}

#[test]
fn pending_vector_needs_a_higher_class_than_ppr() {
    let mut a = xapic();
    a.accept(Interrupt::fixed(0x45));
    a.set_tpr(0x40);
    assert_eq!(a.pending_vector(), None, "same class as TPR");
    a.set_tpr(0x3f);
    assert_eq!(a.pending_vector(), Some(0x45));
    assert_eq!(a.read_mmio(0x80, 0), 0x3f, "set_tpr is the TPR register");
    a.set_tpr(0);
    a.accept(Interrupt::fixed(0x4a));
    a.ack(0x4a);
    assert_eq!(
        a.pending_vector(),
        None,
        "same class as the in-service vector"
    );
    a.accept(Interrupt::fixed(0x55));
    assert_eq!(a.pending_vector(), Some(0x55));
    // A CR8 write is TPR[7:4] (§11.8.6).
    a.set_tpr(6 << 4);
    assert_eq!(a.pending_vector(), None);
    assert_eq!(a.tpr() >> 4, 6);
}

#[test]
fn nested_isr_and_eoi_order() {
    let mut a = xapic();
    a.accept(Interrupt::fixed(0x40));
    a.ack(0x40);
    a.accept(Interrupt::fixed(0x80));
    assert_eq!(a.pending_vector(), Some(0x80), "a higher class nests");
    a.ack(0x80);
    a.accept(Interrupt::fixed(0x60));
    assert_eq!(a.pending_vector(), None, "blocked by 0x80 in service");
    assert_eq!(eoi(&mut a), Effect::None);
    assert!(!bit(&mut a, 0x100, 0x80), "EOI clears the highest ISR bit");
    assert!(bit(&mut a, 0x100, 0x40));
    assert_eq!(a.pending_vector(), Some(0x60));
    a.ack(0x60);
    eoi(&mut a);
    assert!(!bit(&mut a, 0x100, 0x60));
    assert!(bit(&mut a, 0x100, 0x40));
    eoi(&mut a);
    assert_eq!(a.read_mmio(0x100 + 0x20, 0), 0);
    let before = a.clone();
    assert_eq!(eoi(&mut a), Effect::None, "EOI with nothing in service");
    assert_eq!(a, before);
    assert_eq!(a.ppr(), 0);
}

#[test]
fn arbitration_priority() {
    // (TPR, in-service, requested, APR) per Figure 11-15.
    for (tpr, isr, irr, apr) in [
        (0x00, None, None, 0x00),
        (0x45, None, None, 0x45),
        (0x45, None, Some(0x42), 0x45),
        (0x45, None, Some(0x62), 0x60),
        (0x45, Some(0x41), None, 0x40),
        (0x45, Some(0x31), Some(0x33), 0x45),
        (0x25, Some(0x71), Some(0x53), 0x70),
        (0x25, Some(0x31), Some(0x93), 0x90),
    ] {
        let mut a = xapic();
        if let Some(v) = isr {
            a.accept(Interrupt::fixed(v));
            a.ack(v);
        }
        if let Some(v) = irr {
            a.accept(Interrupt::fixed(v));
        }
        a.set_tpr(tpr);
        assert_eq!(a.arbitration_priority(), apr, "{tpr:#x} {isr:?} {irr:?}");
        assert_eq!(a.read_mmio(0x90, 0), apr as u32);
        assert_eq!(a.view().arbitration_priority, apr);
    }
}

#[test]
fn eoi_broadcast_and_suppression() {
    let mut a = xapic();
    a.accept(level(0x70));
    a.ack(0x70);
    assert_eq!(eoi(&mut a), Effect::Eoi { vector: 0x70 });
    a.accept(Interrupt::fixed(0x71));
    a.ack(0x71);
    assert_eq!(eoi(&mut a), Effect::None, "edge: no broadcast");
    a.write_mmio(0xf0, 0x11ff, 0);
    assert_eq!(a.read_mmio(0xf0, 0), 0x11ff);
    a.accept(level(0x72));
    a.ack(0x72);
    assert_eq!(eoi(&mut a), Effect::None, "suppressed by SVR bit 12");
    assert!(
        !bit(&mut a, 0x100, 0x72),
        "the ISR bit is cleared all the same"
    );
    // x2APIC EOI MSR.
    let mut b = LocalApic::new(3, false, 1);
    b.write_base_msr(0xfee0_0c00, true, 39).unwrap();
    b.write_msr(0x80f, 0x1ff, 0).unwrap();
    b.accept(level(0x90));
    b.ack(0x90);
    assert_eq!(b.write_msr(0x80b, 0, 0), Ok(Effect::Eoi { vector: 0x90 }));
}

#[test]
fn illegal_vectors_and_the_error_interrupt() {
    let mut a = xapic();
    for v in 0..16 {
        assert!(!a.accept(Interrupt::fixed(v)), "vector {v}");
    }
    assert_eq!(a.read_mmio(0x200, 0), 0);
    a.write_mmio(0x280, 0, 0);
    assert_eq!(a.read_mmio(0x280, 0), 0x40, "receive illegal vector");
    // With the error LVT unmasked, a new error raises its vector.
    a.write_mmio(0x370, 0xe3, 0);
    assert!(a.accept(other(DeliveryMode::LowestPriority, 3)));
    assert_eq!(a.pending_vector(), Some(0xe3));
    // The same error again before the ESR is written is not new: no second interrupt.
    a.ack(0xe3);
    assert!(!a.accept(Interrupt::fixed(4)));
    assert!(!bit(&mut a, 0x200, 0xe3));
    // An illegal vector in the error LVT only adds the receive-illegal bit.
    let mut b = xapic();
    b.write_mmio(0x370, 0x05, 0);
    b.write_mmio(0x310, 0, 0);
    b.write_mmio(0x300, 0x0000_4001, 0);
    assert_eq!(b.read_mmio(0x200, 0), 0);
    b.write_mmio(0x280, 0, 0);
    assert_eq!(b.read_mmio(0x280, 0), 0x60);
}

#[test]
fn disabled_apics_drop_fixed_interrupts() {
    let mut a = LocalApic::new(0, true, 1);
    assert!(!a.software_enabled());
    assert!(
        !a.accept(Interrupt::fixed(0x40)),
        "software-disabled (§11.4.7.2)"
    );
    assert!(a.accept(other(DeliveryMode::Nmi, 0)));
    assert!(a.accept(other(DeliveryMode::Init, 0)));
    assert!(a.accept(other(DeliveryMode::StartUp, 0x10)));
    // IRR contents are held but not delivered while software-disabled.
    a.write_mmio(0xf0, 0x1ff, 0);
    a.accept(Interrupt::fixed(0x40));
    a.write_mmio(0xf0, 0x0ff, 0);
    assert_eq!(a.pending_vector(), None);
    a.write_mmio(0xf0, 0x1ff, 0);
    assert_eq!(a.pending_vector(), Some(0x40));
    // Globally disabled: nothing.
    let mut b = xapic();
    b.write_base_msr(0xfee0_0000, false, 36).unwrap();
    for mode in [
        DeliveryMode::Fixed,
        DeliveryMode::Nmi,
        DeliveryMode::Init,
        DeliveryMode::StartUp,
    ] {
        assert!(!b.accept(other(mode, 0x40)), "{mode:?}");
    }
    assert_eq!(b.pending_vector(), None);
    // SMI and ExtINT are never accepted.
    let mut c = xapic();
    assert!(!c.accept(other(DeliveryMode::Smi, 0x40)));
    assert!(!c.accept(other(DeliveryMode::ExtInt, 0x40)));
    assert_eq!(c.read_mmio(0x220, 0), 0);
}

#[test]
fn nmi_init_sipi_latches() {
    let mut a = xapic();
    assert!(!a.take_nmi());
    assert!(a.accept(other(DeliveryMode::Nmi, 0x99)));
    assert!(!a.accept(other(DeliveryMode::Nmi, 0)), "already latched");
    assert_eq!(a.read_mmio(0x240, 0), 0, "the vector of an NMI is ignored");
    assert!(a.take_nmi());
    assert!(!a.take_nmi());
    // INIT level de-assert is ignored; INIT assert latches.
    assert!(!a.accept(Interrupt {
        vector: 0,
        mode: DeliveryMode::Init,
        assert: false,
        level_triggered: true
    }));
    assert!(!a.take_init());
    assert!(a.accept(Interrupt {
        vector: 0,
        mode: DeliveryMode::Init,
        assert: true,
        level_triggered: true
    }));
    assert!(a.take_init());
    assert!(!a.take_init());
    // SIPI: the latest vector wins.
    assert!(a.accept(other(DeliveryMode::StartUp, 0x9a)));
    assert!(!a.accept(other(DeliveryMode::StartUp, 0x9b)));
    assert_eq!(a.take_sipi(), Some(0x9b));
    assert_eq!(a.take_sipi(), None);
}
