//! Save/restore of the local APIC model through `RhaxApicState` (round trips in every mode,
//! every refusal leaving the APIC unchanged), and a seeded random test: arbitrary register
//! writes, MSRs, base writes, interrupts, timer ticks and restores of random images never
//! panic and keep the model's invariants.

use rhax_api::apic::{RhaxApicState, RHAX_APIC_STATE_VERSION};
use rhax_api::Pod;
use rhax_core::apic::{ApicMode, ApicStateError, DeliveryMode, Interrupt, LocalApic};

fn busy_xapic() -> LocalApic {
    let mut a = LocalApic::new(4, false, 5);
    a.write_mmio(0xf0, 0x11ff, 0);
    a.write_mmio(0x20, 0x0900_0000, 0);
    a.write_mmio(0x80, 0x31, 0);
    a.write_mmio(0xd0, 0x2100_0000, 0);
    a.write_mmio(0xe0, 0x0fff_ffff, 0);
    a.write_mmio(0x350, 0x8700, 0);
    a.write_mmio(0x370, 0xee, 0);
    a.write_mmio(0x310, 0x0300_0000, 0);
    a.write_mmio(0x300, 0x4444, 0);
    a.write_mmio(0x3e0, 0x9, 0);
    a.write_mmio(0x320, 0x2_0061, 0);
    a.write_mmio(0x380, 12_345, 1_000);
    for v in [0x41, 0x62, 0x80] {
        a.accept(Interrupt::fixed(v));
    }
    a.ack(0x80);
    a.accept(Interrupt {
        vector: 0x52,
        mode: DeliveryMode::Fixed,
        assert: true,
        level_triggered: true,
    });
    a.accept(Interrupt::fixed(3)); // an error pending for the ESR
    a.accept(Interrupt {
        vector: 0x9a,
        mode: DeliveryMode::StartUp,
        assert: true,
        level_triggered: false,
    });
    a.accept(Interrupt {
        vector: 0,
        mode: DeliveryMode::Nmi,
        assert: true,
        level_triggered: false,
    });
    a
}

fn busy_x2apic() -> LocalApic {
    let mut a = LocalApic::new(0x2_0011, true, 1);
    a.write_base_msr(0xfee0_0d00, true, 46).unwrap();
    a.write_msr(0x80f, 0x1ff, 0).unwrap();
    a.write_msr(0x832, 0x4_00f0, 0).unwrap();
    a.write_tsc_deadline(777_777, 0);
    a.write_msr(0x830, 0x0000_0005_0000_0430, 0).unwrap();
    a.accept(Interrupt::fixed(0xf3));
    a
}

fn round_trip(a: &LocalApic, fresh: LocalApic) {
    let mut s = RhaxApicState::default();
    a.save(&mut s);
    assert_eq!(s.version, RHAX_APIC_STATE_VERSION);
    let mut b = fresh;
    b.restore(&s).unwrap();
    assert_eq!(&b, a);
    let mut s2 = RhaxApicState::default();
    b.save(&mut s2);
    assert_eq!(s.as_bytes(), s2.as_bytes());
}

#[test]
fn round_trips() {
    let a = busy_xapic();
    round_trip(&a, LocalApic::new(4, false, 5));
    let mut s = RhaxApicState::default();
    a.save(&mut s);
    assert_eq!(s.reg(0x20), Some(0x0900_0000));
    assert_eq!(s.reg(0x30), Some(0x0106_0014));
    assert_eq!(s.reg(0x220), Some(1 << 1 | 1 << 18), "IRR 0x41 and 0x52");
    assert_eq!(s.reg(0x1a0), Some(1 << 18), "TMR 0x52");
    assert_eq!(s.reg(0x270), Some(1 << 14), "IRR 0xee, the error interrupt");
    round_trip(&busy_x2apic(), LocalApic::new(0x2_0011, true, 1));
    // Power-up, disabled, and mid-count states.
    round_trip(&LocalApic::new(0, true, 1), LocalApic::new(0, false, 1));
    let mut d = LocalApic::new(1, false, 1);
    d.write_base_msr(0xfee0_0000, true, 36).unwrap();
    round_trip(&d, LocalApic::new(1, false, 1));
    // The restored timer continues: same current count and deadline at any later time.
    let mut b = LocalApic::new(4, false, 5);
    b.restore(&s).unwrap();
    let mut a = a;
    for t in [1_000, 5_000, 1_000_000, 9_000_000] {
        assert_eq!(b.read_mmio(0x390, t), a.read_mmio(0x390, t), "t = {t}");
    }
    assert_eq!(b.timer_deadline(), a.timer_deadline());
}

#[test]
fn the_image_is_the_register_page() {
    let a = busy_xapic();
    let mut s = RhaxApicState::default();
    a.save(&mut s);
    let mut m = a.clone();
    for off in [
        0x20_u32, 0x80, 0xd0, 0xe0, 0xf0, 0x300, 0x310, 0x320, 0x350, 0x370, 0x380,
    ] {
        assert_eq!(s.reg(off as usize), Some(m.read_mmio(off, 0)), "{off:#x}");
    }
    for off in (0x100..0x280).step_by(0x10) {
        assert_eq!(s.reg(off), Some(m.read_mmio(off as u32, 0)), "{off:#x}");
    }
    assert_eq!(s.reg(0xa0), Some(0), "computed registers are not stored");
}

fn refused(a: &LocalApic, edit: impl Fn(&mut RhaxApicState), err: ApicStateError) {
    let mut s = RhaxApicState::default();
    a.save(&mut s);
    edit(&mut s);
    let mut b = a.clone();
    assert_eq!(b.restore(&s), Err(err));
    assert_eq!(&b, a, "a refused restore changes nothing");
}

#[test]
fn refusals() {
    let x = busy_xapic();
    let x2 = busy_x2apic();
    use ApicStateError::*;
    refused(&x, |s| s.version = 2, Version);
    refused(&x, |s| s.flags |= 1 << 4, Reserved);
    refused(&x, |s| s.pad[6] = 1, Reserved);
    refused(
        &x,
        |s| {
            s.flags &= !4;
        },
        Reserved,
    );
    refused(&x, |s| s.base_msr |= 1, BaseMsr);
    refused(&x, |s| s.base_msr |= 1 << 9, BaseMsr);
    refused(&x, |s| s.base_msr |= 1 << 52, BaseMsr);
    refused(&x, |s| s.base_msr = 0xfee0_0400, BaseMsr);
    refused(&x, |s| s.esr_pending = 0x100, Esr);
    for (off, v) in [
        (0x80, 0x100),
        (0xf0, 0x2000),
        (0x280, 0x100),
        (0x300, 0x1000),
        (0x320, 0x8_0000),
        (0x350, 0x4000),
        (0x370, 0x700),
        (0x3e0, 0x4),
        (0x90, 1),
        (0xa0, 1),
        (0xb0, 1),
        (0x390, 1),
        (0x3f0, 1),
        (0x40, 1),
        (0x20, 0x0900_0001),
        (0xd0, 0x0000_0100),
        (0xe0, 0xf000_0000),
        (0x310, 0x0300_0001),
        (0x100, 0x8000),
        (0x180, 0x1),
        (0x200, 0x4),
    ] {
        refused(&x, |s| assert!(s.set_reg(off, v)), Register(off as u16));
    }
    // Software-disabled with an unmasked LVT.
    refused(&x, |s| assert!(s.set_reg(0xf0, 0xff)), Register(0x320));
    // x2APIC ID and LDR must be this vCPU's.
    refused(&x2, |s| assert!(s.set_reg(0x20, 0x2_0012)), Register(0x20));
    refused(
        &x2,
        |s| assert!(s.set_reg(0xd0, 0x2001_0001)),
        Register(0xd0),
    );
    // Timer consistency.
    refused(&x, |s| s.timer_start_count = 0, Timer);
    refused(&x, |s| s.tsc_deadline = 5, Timer);
    refused(&x2, |s| s.flags |= 8, Timer);
    let idle = LocalApic::new(0, true, 1);
    refused(&idle, |s| s.timer_start_count = 5, Timer);
}

/// The registers the random walk writes most (SVR first: it enables everything else).
const HOT: [u32; 12] = [
    0xf0, 0xf0, 0x80, 0xb0, 0x280, 0x300, 0x310, 0x320, 0x370, 0x380, 0x3e0, 0x20,
];

/// A value for a register write: mostly small (enable bits, vectors, short counts), some
/// fully random.
fn small(r: u64, v: u64) -> u64 {
    match (r >> 50) % 4 {
        0 => v,
        1 => v & 0xffff_ffff,
        2 => v & 0x3_ffff,
        _ => 0x100 | (v & 0xff),
    }
}

/// xorshift64*: a seeded, reproducible source of arbitrary values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn arbitrary_operations_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut apics: Vec<LocalApic> = (0..4).map(|i| LocalApic::new(i, i == 0, i * 7)).collect();
    let mut now = 0_u64;
    let mut image = RhaxApicState::default();
    // Coverage: the walk must reach the interesting states, or it tests little.
    let (mut restored, mut x2apic_steps, mut injected, mut fired) = (0, 0, 0, 0);
    for step in 0..200_000 {
        let r = rng.next();
        let v = rng.next();
        let a = &mut apics[(r & 3) as usize];
        now = now.wrapping_add(r >> 56);
        if r & 0xfff_0000_0000 == 0 {
            now = rng.next();
        }
        match (r >> 4) % 16 {
            0..=3 => {
                let off = if r & (1 << 43) != 0 {
                    (v >> 32) as u32
                } else {
                    HOT[(v >> 40) as usize % HOT.len()]
                };
                let _ = a.write_mmio(off, small(r, v) as u32, now);
            }
            4 | 5 => {
                let _ = a.read_mmio((v >> 32) as u32, now);
            }
            6 => {
                let msr = 0x7f0 + (v >> 48) as u32 % 0x60;
                let _ = a.write_msr(msr, small(r, v), now);
            }
            7 => {
                let _ = a.read_msr(0x7f0 + (v >> 48) as u32 % 0x60, now);
            }
            8 => {
                let base = if r & (1 << 44) != 0 {
                    v
                } else {
                    0xfee0_0000 | [0, 0x800, 0xc00, 0x400, 0x900][(v >> 8) as usize % 5]
                };
                let _ = a.write_base_msr(base, r & (1 << 42) == 0, (v >> 56) as u8);
            }
            9 => {
                let mode = DeliveryMode::from_bits((v >> 8) as u8).unwrap_or(DeliveryMode::Fixed);
                a.accept(Interrupt {
                    vector: v as u8,
                    mode,
                    assert: v & (1 << 14) != 0,
                    level_triggered: v & (1 << 15) != 0,
                });
            }
            10 => {
                if let Some(p) = a.pending_vector() {
                    a.ack(p);
                    injected += 1;
                } else {
                    a.ack(v as u8);
                }
            }
            11 => {
                // Count the expiries that were due, delivered or masked.
                fired += a.timer_deadline().is_some_and(|d| d <= now) as u32;
                a.timer_fire(now);
            }
            12 => {
                a.write_tsc_deadline(v, now);
                let _ = a.read_tsc_deadline();
            }
            13 => {
                a.save(&mut image);
                // Flip a few bytes of a valid image: most are refused, some restored.
                for _ in 0..(v & 3) {
                    let i = (rng.next() as usize) % RhaxApicState::SIZE;
                    image.as_bytes_mut()[i] ^= rng.next() as u8;
                }
                let before = a.clone();
                if a.restore(&image).is_err() {
                    assert_eq!(*a, before, "step {step}");
                } else {
                    restored += 1;
                }
            }
            14 => {
                let _ = a.take_nmi();
                let _ = a.take_init();
                let _ = a.take_sipi();
                if v & 1 != 0 {
                    a.init_reset();
                }
            }
            _ => {
                a.set_tpr(v as u8);
                let _ = a.matches(v as u32, r & 1 != 0);
            }
        }
        // Invariants: the priorities follow their definitions; a pending vector beats PPR.
        let ppr = a.ppr();
        assert!(ppr & 0xf0 >= a.tpr() & 0xf0 || ppr == a.tpr());
        if let Some(p) = a.pending_vector() {
            assert!(p & 0xf0 > ppr & 0xf0);
            assert!(p >= 16);
            assert_ne!(a.mode(), ApicMode::Disabled);
        }
        if a.mode() == ApicMode::X2Apic {
            assert!(a.read_msr(0x802, now).is_ok());
            x2apic_steps += 1;
        }
    }
    eprintln!(
        "restored {restored}, x2APIC steps {x2apic_steps}, injected {injected}, timer {fired}"
    );
    assert!(restored > 100 && x2apic_steps > 1_000 && injected > 100 && fired > 50);
    // Random whole images too.
    let mut a = LocalApic::new(1, false, 1);
    for _ in 0..20_000 {
        for b in image.as_bytes_mut() {
            *b = rng.next() as u8;
        }
        image.version = RHAX_APIC_STATE_VERSION;
        let before = a.clone();
        if a.restore(&image).is_err() {
            assert_eq!(a, before);
        }
    }
}
