//! IPI destinations and delivery between local APICs (SDM Vol. 3A §11.6.2, §11.12.10):
//! physical, logical flat and cluster, x2APIC cluster, broadcast, shorthands, lowest
//! priority; MSI decoding (§11.11); the ApicPort mailbox and its routing view, with two
//! threads posting while the owner drains.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rhax_core::apic::{
    decode_msi, route, ApicMode, ApicPort, ApicView, DeliveryMode, Effect, Interrupt, Ipi,
    LocalApic, Shorthand,
};

fn xapic(id: u32) -> LocalApic {
    let mut a = LocalApic::new(id, id == 0, 1);
    a.write_mmio(0xf0, 0x1ff, 0);
    a
}

fn x2apic(id: u32) -> LocalApic {
    let mut a = LocalApic::new(id, id == 0, 1);
    a.write_base_msr(0xfee0_0c00, true, 39).unwrap();
    a.write_msr(0x80f, 0x1ff, 0).unwrap();
    a
}

fn ipi(mode: DeliveryMode, dest: u32, logical: bool, shorthand: Shorthand) -> Ipi {
    Ipi {
        irq: Interrupt {
            vector: 0x40,
            mode,
            assert: true,
            level_triggered: false,
        },
        dest,
        logical,
        shorthand,
    }
}

fn fixed(dest: u32, logical: bool) -> Ipi {
    ipi(DeliveryMode::Fixed, dest, logical, Shorthand::None)
}

fn views(apics: &[LocalApic]) -> Vec<ApicView> {
    apics.iter().map(LocalApic::view).collect()
}

#[test]
fn xapic_physical_and_broadcast() {
    let apics: Vec<_> = (0..4).map(xapic).collect();
    let v = views(&apics);
    assert_eq!(route(&fixed(2, false), 0, &v), 0b0100);
    assert_eq!(
        route(&fixed(0x102, false), 0, &v),
        0b0100,
        "8-bit destination"
    );
    assert_eq!(route(&fixed(9, false), 0, &v), 0);
    assert_eq!(
        route(&fixed(0xff, false), 1, &v),
        0b1111,
        "broadcast includes the sender"
    );
    assert!(apics[3].matches(3, false));
    assert!(!apics[3].matches(2, false));
}

#[test]
fn xapic_logical_flat() {
    let mut apics: Vec<_> = (0..4).map(xapic).collect();
    for (i, a) in apics.iter_mut().enumerate() {
        a.write_mmio(0xd0, 1 << (24 + i), 0);
    }
    let v = views(&apics);
    assert_eq!(route(&fixed(0x05, true), 0, &v), 0b0101);
    assert_eq!(route(&fixed(0x0f, true), 0, &v), 0b1111);
    assert_eq!(route(&fixed(0x10, true), 0, &v), 0);
    assert_eq!(route(&fixed(0xff, true), 0, &v), 0b1111);
    assert_eq!(route(&fixed(0x05, false), 0, &v), 0, "not physical");
}

#[test]
fn xapic_logical_cluster() {
    let mut apics: Vec<_> = (0..5).map(xapic).collect();
    for (a, ldr) in apics.iter_mut().zip([0x11_u32, 0x12, 0x21, 0x22, 0xf1]) {
        a.write_mmio(0xe0, 0x0fff_ffff, 0);
        assert_eq!(a.read_mmio(0xe0, 0), 0x0fff_ffff);
        a.write_mmio(0xd0, ldr << 24, 0);
    }
    let v = views(&apics);
    assert_eq!(route(&fixed(0x13, true), 0, &v), 0b00011);
    assert_eq!(route(&fixed(0x12, true), 0, &v), 0b00010);
    assert_eq!(route(&fixed(0x21, true), 0, &v), 0b00100);
    assert_eq!(route(&fixed(0x31, true), 0, &v), 0, "no cluster 3");
    assert_eq!(
        route(&fixed(0xf1, true), 0, &v),
        0b10000,
        "cluster 15, member 1"
    );
    assert_eq!(route(&fixed(0xff, true), 0, &v), 0b11111, "broadcast");
    // A mix of models: the flat one matches by its own rule.
    let mut flat = xapic(5);
    flat.write_mmio(0xd0, 0x0300_0000, 0);
    let mut v2 = v.clone();
    v2.push(flat.view());
    assert_eq!(route(&fixed(0x13, true), 0, &v2), 0b100011);
    // An undefined model (DFR 0101b) matches nothing but broadcasts.
    let mut odd = xapic(6);
    odd.write_mmio(0xe0, 0x5fff_ffff, 0);
    odd.write_mmio(0xd0, 0x1100_0000, 0);
    assert!(!odd.matches(0x11, true));
    assert!(odd.matches(0xff, true));
}

#[test]
fn x2apic_physical_and_cluster() {
    let apics: Vec<_> = (0..20).map(x2apic).collect();
    let v = views(&apics);
    assert_eq!(route(&fixed(17, false), 0, &v), 1 << 17);
    assert_eq!(
        route(&fixed(0xff, false), 0, &v),
        0,
        "0xFF is an ID in x2APIC mode"
    );
    assert_eq!(route(&fixed(u32::MAX, false), 0, &v), (1 << 20) - 1);
    // Cluster 0 members 0 and 2; cluster 1 members 0 and 1 (IDs 16, 17).
    assert_eq!(route(&fixed(0x0000_0005, true), 0, &v), 0b101);
    assert_eq!(route(&fixed(0x0001_0003, true), 0, &v), 0b11 << 16);
    assert_eq!(route(&fixed(0x0002_0001, true), 0, &v), 0);
    assert_eq!(route(&fixed(u32::MAX, true), 0, &v), (1 << 20) - 1);
    let big = x2apic(0x12345);
    assert!(big.matches(0x1234_0020, true));
    assert!(!big.matches(0x1235_0020, true));
    assert!(big.matches(0x12345, false));
}

#[test]
fn shorthands_and_disabled_apics() {
    let mut apics: Vec<_> = (0..4).map(xapic).collect();
    apics[3].write_base_msr(0xfee0_0000, false, 36).unwrap();
    let v = views(&apics);
    let sh = |s| ipi(DeliveryMode::Fixed, 3, false, s);
    assert_eq!(route(&sh(Shorthand::SelfOnly), 1, &v), 0b0010);
    assert_eq!(route(&sh(Shorthand::AllIncludingSelf), 1, &v), 0b0111);
    assert_eq!(route(&sh(Shorthand::AllExcludingSelf), 1, &v), 0b0101);
    assert_eq!(
        route(&fixed(3, false), 1, &v),
        0,
        "a disabled APIC is no target"
    );
    assert_eq!(route(&fixed(0xff, false), 1, &v), 0b0111);
    assert_eq!(
        route(&sh(Shorthand::SelfOnly), 9, &v),
        0,
        "source out of range"
    );
    // Only the first 64 vCPUs are addressable.
    let many: Vec<_> = (0..70).map(|i| xapic(i).view()).collect();
    assert_eq!(route(&fixed(0xff, false), 0, &many), u64::MAX);
    assert_eq!(route(&fixed(66, false), 0, &many), 0);
}

#[test]
fn lowest_priority_picks_one() {
    let mut apics: Vec<_> = (0..4).map(xapic).collect();
    for (a, tpr) in apics.iter_mut().zip([0x50_u8, 0x20, 0x30, 0x20]) {
        a.set_tpr(tpr);
        a.write_mmio(0xd0, 0x0100_0000, 0);
    }
    let lp = |dest, logical| ipi(DeliveryMode::LowestPriority, dest, logical, Shorthand::None);
    let v = views(&apics);
    assert_eq!(
        route(&lp(0x01, true), 0, &v),
        0b0010,
        "APR 0x20, lowest index of the tie"
    );
    assert_eq!(route(&lp(0xff, false), 0, &v), 0b0010);
    assert_eq!(route(&lp(2, false), 0, &v), 0b0100, "one match: that one");
    assert_eq!(route(&lp(9, false), 0, &v), 0);
    // Raising vCPU 1's arbitration priority moves it to vCPU 3.
    apics[1].accept(Interrupt::fixed(0x91));
    let v = views(&apics);
    assert_eq!(route(&lp(0x01, true), 0, &v), 0b1000);
    // Software-disabled APICs are chosen only when no target is enabled.
    apics[3].write_mmio(0xf0, 0xff, 0);
    apics[3].set_tpr(0);
    let v = views(&apics);
    assert_eq!(route(&lp(0x01, true), 0, &v), 0b0100);
    assert_eq!(route(&lp(3, false), 0, &v), 0b1000);
}

#[test]
fn msi_decoding() {
    let m = decode_msi(0xfee0_3000, 0x0000_0041).unwrap();
    assert_eq!(
        m,
        Ipi {
            irq: Interrupt::fixed(0x41),
            dest: 3,
            logical: false,
            shorthand: Shorthand::None
        }
    );
    // Logical, lowest priority, level-triggered asserted.
    let m = decode_msi(0xfee0_f004, 0x0000_c142).unwrap();
    assert_eq!(m.dest, 0x0f);
    assert!(m.logical);
    assert_eq!(m.irq.mode, DeliveryMode::LowestPriority);
    assert!(m.irq.level_triggered && m.irq.assert);
    // Level-triggered de-assert; edge ignores the level bit.
    assert!(!decode_msi(0xfee0_0000, 0x8041).unwrap().irq.assert);
    assert!(decode_msi(0xfee0_0000, 0x0041).unwrap().irq.assert);
    // The redirection hint makes a fixed message lowest-priority.
    assert_eq!(
        decode_msi(0xfee0_0008, 0x41).unwrap().irq.mode,
        DeliveryMode::LowestPriority
    );
    assert_eq!(
        decode_msi(0xfee0_0008, 0x400).unwrap().irq.mode,
        DeliveryMode::Nmi
    );
    for (mode, expect) in [
        (2, Some(DeliveryMode::Smi)),
        (3, None),
        (4, Some(DeliveryMode::Nmi)),
        (5, Some(DeliveryMode::Init)),
        (6, None),
        (7, Some(DeliveryMode::ExtInt)),
    ] {
        assert_eq!(
            decode_msi(0xfee0_0000, mode << 8).map(|m| m.irq.mode),
            expect,
            "mode {mode}"
        );
    }
    for addr in [
        0,
        0xfed0_0000,
        0xfef0_0000,
        0x1_fee0_0000,
        0xffff_ffff_fee0_0000,
    ] {
        assert_eq!(decode_msi(addr, 0x41), None, "{addr:#x}");
    }
    // Bits 31:16 of the data are ignored.
    assert_eq!(
        decode_msi(0xfee0_1000, 0xffff_0041).unwrap().irq,
        Interrupt::fixed(0x41)
    );
}

#[test]
fn port_view_round_trip() {
    let port = ApicPort::new();
    assert_eq!(
        port.view().mode,
        ApicMode::Disabled,
        "disabled until published"
    );
    let mut a = x2apic(0x1_0003);
    a.set_tpr(0x35);
    port.publish(&a);
    assert_eq!(port.view(), a.view());
    assert_eq!(port.view().ldr, 0x1000_0008);
    let mut b = xapic(9);
    b.write_mmio(0xe0, 0x0fff_ffff, 0);
    b.write_mmio(0xd0, 0x4200_0000, 0);
    b.accept(Interrupt::fixed(0xe0));
    port.publish(&b);
    let v = port.view();
    assert_eq!(v, b.view());
    assert_eq!(
        (
            v.id,
            v.ldr,
            v.dfr,
            v.mode,
            v.arbitration_priority,
            v.enabled
        ),
        (9, 0x4200_0000, 0x0fff_ffff, ApicMode::XApic, 0xe0, true)
    );
}

#[test]
fn port_post_and_drain() {
    let port = ApicPort::new();
    let mut a = xapic(0);
    assert!(!port.pending());
    assert!(!port.drain_into(&mut a));
    assert!(port.post(Interrupt::fixed(0x40)));
    assert!(!port.post(Interrupt::fixed(0x40)), "already posted");
    assert!(port.post(Interrupt {
        vector: 0x41,
        mode: DeliveryMode::Fixed,
        assert: true,
        level_triggered: true
    }));
    let latch = |mode, vector| Interrupt {
        vector,
        mode,
        assert: true,
        level_triggered: false,
    };
    assert!(port.post(latch(DeliveryMode::Nmi, 0)));
    assert!(port.post(latch(DeliveryMode::Init, 0)));
    assert!(port.post(latch(DeliveryMode::StartUp, 0x9a)));
    assert!(!port.post(latch(DeliveryMode::Smi, 0)));
    assert!(!port.post(latch(DeliveryMode::ExtInt, 0x40)));
    assert!(port.post(Interrupt::fixed(7)));
    assert!(port.pending());
    assert!(port.drain_into(&mut a));
    assert!(!port.pending());
    assert_eq!(a.read_mmio(0x220, 0), 0b11, "IRR 0x40, 0x41");
    assert_eq!(a.read_mmio(0x1a0, 0), 0b10, "TMR 0x41");
    assert!(a.take_nmi());
    assert!(a.take_init());
    assert_eq!(a.take_sipi(), Some(0x9a));
    a.write_mmio(0x280, 0, 0);
    assert_eq!(
        a.read_mmio(0x280, 0),
        0x40,
        "the illegal vector reached the ESR"
    );
    assert!(!port.drain_into(&mut a), "nothing left");
    // Nothing new for an APIC that already holds the vector.
    port.post(Interrupt::fixed(0x40));
    assert!(!port.drain_into(&mut a));
}

#[test]
fn port_two_posters_one_drainer_lose_nothing() {
    const ROUNDS: usize = 100_000;
    let port = Arc::new(ApicPort::new());
    let done = Arc::new(AtomicBool::new(false));
    // Poster 0 posts vectors 0x20..0x8f, poster 1 0x90..0xff, over and over; each round the
    // owner drains, acks and EOIs what it got and counts it. Nothing may be lost: after
    // both posters stop, the last vector each posted is pending.
    let posters: Vec<_> = (0..2_u8)
        .map(|t| {
            let port = Arc::clone(&port);
            std::thread::spawn(move || {
                let (lo, hi) = if t == 0 { (0x20, 0x90) } else { (0x90, 0x100) };
                let mut posted = 0_u64;
                for r in 0..ROUNDS {
                    let v = (lo + r % (hi - lo)) as u8;
                    port.post(Interrupt::fixed(v));
                    if r % 97 == 0 {
                        port.post(Interrupt {
                            vector: 0,
                            mode: DeliveryMode::Nmi,
                            assert: true,
                            level_triggered: false,
                        });
                    }
                    posted |= 1 << (v as u64 % 64);
                }
                posted
            })
        })
        .collect();
    let drainer = {
        let port = Arc::clone(&port);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut a = xapic(0);
            let mut seen = [false; 256];
            let mut nmis = 0;
            loop {
                let finished = done.load(Ordering::Acquire);
                port.drain_into(&mut a);
                while let Some(v) = a.pending_vector() {
                    a.ack(v);
                    seen[v as usize] = true;
                    assert_eq!(a.write_mmio(0xb0, 0, 0), Effect::None);
                }
                nmis += a.take_nmi() as u32;
                if finished {
                    break;
                }
                std::thread::yield_now();
            }
            (seen, nmis)
        })
    };
    for p in posters {
        p.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let (seen, nmis) = drainer.join().unwrap();
    for (v, seen) in seen.iter().enumerate().skip(0x20) {
        assert!(seen, "vector {v:#x} lost");
    }
    assert!(seen[..0x20].iter().all(|s| !s));
    assert!(nmis >= 1);
    assert!(!port.pending());
}

#[test]
fn ipi_from_icr_reaches_its_target_through_route_and_port() {
    let mut apics: Vec<_> = (0..3).map(xapic).collect();
    let ports: Vec<_> = (0..3).map(|_| ApicPort::new()).collect();
    for (a, p) in apics.iter().zip(&ports) {
        p.publish(a);
    }
    apics[0].write_mmio(0x310, 2 << 24, 0);
    let Effect::Ipi(ipi) = apics[0].write_mmio(0x300, 0x4055, 0) else {
        panic!("no IPI");
    };
    let v: Vec<_> = ports.iter().map(ApicPort::view).collect();
    let targets = route(&ipi, 0, &v);
    assert_eq!(targets, 0b100);
    for (i, p) in ports.iter().enumerate() {
        if targets & (1 << i) != 0 {
            p.post(ipi.irq);
        }
    }
    assert!(ports[2].drain_into(&mut apics[2]));
    assert_eq!(apics[2].pending_vector(), Some(0x55));
    assert!(!ports[1].drain_into(&mut apics[1]));
}

/// Sends whatever `effect` carries from vCPU `source` through the ports, as the vCPU loop
/// will; returns the target bitmap.
fn deliver(effect: Effect, source: usize, ports: &[ApicPort]) -> u64 {
    let Effect::Ipi(ipi) = effect else {
        return 0;
    };
    let v: Vec<_> = ports.iter().map(ApicPort::view).collect();
    let targets = route(&ipi, source, &v);
    for (i, p) in ports.iter().enumerate() {
        if targets & (1 << i) != 0 {
            p.post(ipi.irq);
        }
    }
    targets
}

#[test]
fn init_sipi_sipi_brings_up_an_ap() {
    // The MP start-up sequence of SDM Vol. 3A §9.4.4.1 as a guest BSP runs it in xAPIC mode.
    let mut bsp = xapic(0);
    let mut ap = LocalApic::new(1, false, 1);
    ap.write_mmio(0xf0, 0x1ff, 0);
    ap.write_mmio(0x80, 0x20, 0);
    let ports = [ApicPort::new(), ApicPort::new()];
    ports[0].publish(&bsp);
    ports[1].publish(&ap);
    bsp.write_mmio(0x310, 1 << 24, 0);
    // INIT assert, then INIT level de-assert (not sent by modern APICs).
    assert_eq!(
        deliver(bsp.write_mmio(0x300, 0x0000_c500, 0), 0, &ports),
        0b10
    );
    assert_eq!(bsp.write_mmio(0x300, 0x0000_8500, 0), Effect::None);
    assert!(ports[1].drain_into(&mut ap));
    assert!(ap.take_init());
    ap.init_reset();
    assert_eq!(ap.tpr(), 0, "INIT reset the AP's APIC");
    assert_eq!(ap.id(), 1);
    ports[1].publish(&ap);
    // Two SIPIs with vector 0x9a (start at 0x9a000): the AP takes the first.
    assert_eq!(
        deliver(bsp.write_mmio(0x300, 0x0000_469a, 0), 0, &ports),
        0b10
    );
    assert_eq!(
        deliver(bsp.write_mmio(0x300, 0x0000_469a, 0), 0, &ports),
        0b10
    );
    assert!(ports[1].drain_into(&mut ap));
    assert_eq!(ap.take_sipi(), Some(0x9a));
    assert_eq!(ap.take_sipi(), None);
    assert!(!ports[0].pending(), "nothing reached the BSP");
    // The AP's APIC is software-disabled after INIT: fixed IPIs are dropped until it
    // enables itself.
    deliver(bsp.write_mmio(0x300, 0x0000_4070, 0), 0, &ports);
    assert!(!ports[1].drain_into(&mut ap));
    ap.write_mmio(0xf0, 0x1ff, 0);
    deliver(bsp.write_mmio(0x300, 0x0000_4070, 0), 0, &ports);
    assert!(ports[1].drain_into(&mut ap));
    assert_eq!(ap.pending_vector(), Some(0x70));
}

#[test]
fn level_triggered_message_and_eoi_broadcast_through_the_port() {
    let mut a = xapic(0);
    let port = ApicPort::new();
    port.publish(&a);
    // An MSI-like level-triggered message, as an IOCTL posts a line interrupt.
    let msi = decode_msi(0xfee0_0000, 0xc062).unwrap();
    assert!(route(&msi, 0, &[port.view()]) == 1);
    assert!(port.post(msi.irq));
    assert!(port.drain_into(&mut a));
    assert_eq!(a.read_mmio(0x180 + 0x30, 0), 1 << 2, "TMR 0x62");
    assert_eq!(a.pending_vector(), Some(0x62));
    a.ack(0x62);
    assert_eq!(a.write_mmio(0xb0, 0, 0), Effect::Eoi { vector: 0x62 });
}

#[test]
fn lint_pins_follow_their_lvt() {
    let mut a = xapic(0);
    assert!(!a.raise_lint(0), "masked at power-up");
    assert!(!a.accepts_pic_interrupts());
    // Virtual-wire mode: LINT0 ExtINT, LINT1 NMI (what BIOSes program).
    a.write_mmio(0x350, 0x700, 0);
    a.write_mmio(0x360, 0x400, 0);
    assert!(a.accepts_pic_interrupts());
    assert!(!a.raise_lint(0), "ExtINT vectors come from the PIC");
    assert!(a.raise_lint(1));
    assert!(a.take_nmi());
    // Fixed, level-triggered.
    a.write_mmio(0x350, 0x8000 | 0x33, 0);
    assert!(!a.accepts_pic_interrupts());
    assert!(a.raise_lint(0));
    assert_eq!(a.pending_vector(), Some(0x33));
    assert_eq!(a.read_mmio(0x190, 0), 1 << 19, "TMR 0x33");
    assert!(!a.raise_lint(2));
    // A globally disabled APIC passes the PIC through.
    a.write_base_msr(0xfee0_0000, false, 36).unwrap();
    assert!(a.accepts_pic_interrupts());
}
