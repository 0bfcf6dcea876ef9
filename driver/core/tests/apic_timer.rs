//! The APIC timer model (SDM Vol. 3A §11.5.4): one-shot, periodic and TSC-deadline modes,
//! every divide value with exact counts, mode switches, masking, and saturation.

use rhax_core::apic::timer::{divisor, TimerMode};
use rhax_core::apic::{Effect, LocalApic};

const TICK: u64 = 3; // TSC ticks per bus tick
const VECTOR: u32 = 0xd1;

fn apic() -> LocalApic {
    let mut a = LocalApic::new(0, true, TICK as u32);
    a.write_mmio(0xf0, 0x1ff, 0);
    a
}

fn irr(a: &mut LocalApic, v: u32) -> bool {
    a.read_mmio(0x200 + (v / 32) * 0x10, 0) & (1 << (v % 32)) != 0
}

#[test]
fn divide_configuration_values() {
    // Figure 11-10: bits 3,1:0.
    let table = [
        (0b0000, 2),
        (0b0001, 4),
        (0b0010, 8),
        (0b0011, 16),
        (0b1000, 32),
        (0b1001, 64),
        (0b1010, 128),
        (0b1011, 1),
    ];
    for (code, div) in table {
        assert_eq!(divisor(code), div, "{code:#b}");
        assert_eq!(divisor(code | 0xfff4), div, "reserved bits ignored");
    }
}

#[test]
fn one_shot_counts_exactly_for_every_divisor() {
    for code in [
        0b0000, 0b0001, 0b0010, 0b0011, 0b1000, 0b1001, 0b1010, 0b1011,
    ] {
        let div = divisor(code) as u64;
        let tick = TICK * div;
        let mut a = apic();
        a.write_mmio(0x3e0, code, 0);
        a.write_mmio(0x320, VECTOR, 0);
        let t0 = 1_000;
        assert_eq!(a.write_mmio(0x380, 100, t0), Effect::TimerChanged);
        assert_eq!(a.read_mmio(0x380, t0), 100);
        assert_eq!(a.timer_deadline(), Some(t0 + 100 * tick), "divisor {div}");
        assert_eq!(a.read_mmio(0x390, t0), 100);
        assert_eq!(a.read_mmio(0x390, t0 + tick - 1), 100);
        assert_eq!(a.read_mmio(0x390, t0 + tick), 99);
        assert_eq!(a.read_mmio(0x390, t0 + 37 * tick + 1), 63);
        assert_eq!(a.read_mmio(0x390, t0 + 100 * tick - 1), 1);
        assert_eq!(a.read_mmio(0x390, t0 + 100 * tick), 0);
        assert!(!a.timer_fire(t0 + 100 * tick - 1), "not yet due");
        assert!(!irr(&mut a, VECTOR));
        assert!(a.timer_fire(t0 + 100 * tick));
        assert!(irr(&mut a, VECTOR));
        assert_eq!(a.timer_deadline(), None, "one-shot stops");
        assert!(!a.timer_fire(u64::MAX));
        assert_eq!(a.read_mmio(0x390, t0 + 500 * tick), 0);
        assert_eq!(a.read_mmio(0x380, 0), 100, "the initial count stays");
    }
}

#[test]
fn periodic_reloads_and_coalesces() {
    let mut a = apic();
    a.write_mmio(0x3e0, 0b1011, 0); // divide by 1
    a.write_mmio(0x320, 0x2_0000 | VECTOR, 0);
    assert_eq!(a.timer_mode(), TimerMode::Periodic);
    a.write_mmio(0x380, 10, 0); // period 30 TSC ticks
    assert_eq!(a.timer_deadline(), Some(30));
    assert_eq!(a.read_mmio(0x390, 29), 1);
    assert_eq!(a.read_mmio(0x390, 30), 10, "reloaded");
    assert_eq!(a.read_mmio(0x390, 33), 9);
    assert!(a.timer_fire(31));
    assert_eq!(a.timer_deadline(), Some(60), "the phase is kept");
    a.ack(VECTOR as u8);
    // Three periods missed: one interrupt, the next expiry after now.
    assert!(a.timer_fire(125));
    assert_eq!(a.timer_deadline(), Some(150));
    assert_eq!(a.read_mmio(0x390, 125), 9);
    assert!(!a.timer_fire(149));
    // Still requested (not acked): a fire is not new.
    assert!(!a.timer_fire(150));
    assert_eq!(a.timer_deadline(), Some(180));
    // Initial count 0 stops it.
    assert_eq!(a.write_mmio(0x380, 0, 160), Effect::TimerChanged);
    assert_eq!(a.timer_deadline(), None);
    assert_eq!(a.read_mmio(0x390, 160), 0);
}

#[test]
fn masked_timer_counts_but_does_not_request() {
    let mut a = apic();
    a.write_mmio(0x3e0, 0b1011, 0);
    a.write_mmio(0x320, 0x3_0000 | VECTOR, 0); // periodic, masked
    a.write_mmio(0x380, 5, 100);
    assert!(!a.timer_fire(115));
    assert!(!irr(&mut a, VECTOR));
    assert_eq!(a.timer_deadline(), Some(130), "re-armed while masked");
    a.write_mmio(0x320, 0x2_0000 | VECTOR, 0);
    assert_eq!(a.timer_deadline(), Some(130), "unmasking keeps the count");
    assert!(a.timer_fire(130));
    // An illegal vector sets the receive-illegal-vector error instead.
    let mut b = apic();
    b.write_mmio(0x320, 0x0e, 0);
    b.write_mmio(0x380, 1, 0);
    assert!(!b.timer_fire(1_000));
    b.write_mmio(0x280, 0, 0);
    assert_eq!(b.read_mmio(0x280, 0), 0x40);
}

#[test]
fn divide_change_while_counting() {
    let mut a = apic();
    a.write_mmio(0x3e0, 0b0000, 0); // /2: 6 TSC ticks per count
    a.write_mmio(0x320, VECTOR, 0);
    a.write_mmio(0x380, 100, 0);
    assert_eq!(a.read_mmio(0x390, 60), 90);
    assert_eq!(a.write_mmio(0x3e0, 0b1011, 60), Effect::TimerChanged); // /1: 3 per count
    assert_eq!(a.read_mmio(0x390, 60), 90);
    assert_eq!(a.read_mmio(0x390, 63), 89);
    assert_eq!(a.timer_deadline(), Some(60 + 90 * 3));
}

#[test]
fn tsc_deadline_mode() {
    let mut a = apic();
    // Not in TSC-deadline mode: the MSR reads 0 and ignores writes.
    assert_eq!(a.write_tsc_deadline(500, 0), Effect::None);
    assert_eq!(a.read_tsc_deadline(), 0);
    assert_eq!(a.timer_deadline(), None);
    assert_eq!(
        a.write_mmio(0x320, 0x4_0000 | VECTOR, 0),
        Effect::TimerChanged
    );
    assert_eq!(a.timer_mode(), TimerMode::TscDeadline);
    assert!(a.tsc_deadline_mode());
    assert_eq!(a.write_tsc_deadline(500, 10), Effect::TimerChanged);
    assert_eq!(a.read_tsc_deadline(), 500);
    assert_eq!(a.timer_deadline(), Some(500));
    // The initial count is ignored and the current count reads 0 (§11.5.4.1).
    assert_eq!(a.write_mmio(0x380, 7, 20), Effect::None);
    assert_eq!(a.read_mmio(0x380, 20), 0);
    assert_eq!(a.read_mmio(0x390, 20), 0);
    assert!(!a.timer_fire(499));
    assert!(a.timer_fire(500));
    assert_eq!(a.read_tsc_deadline(), 0, "cleared when it fires");
    assert_eq!(a.timer_deadline(), None);
    assert!(irr(&mut a, VECTOR));
    // A deadline in the past is due at once; 0 disarms.
    a.write_tsc_deadline(5, 600);
    assert_eq!(a.timer_deadline(), Some(5));
    a.write_tsc_deadline(0, 600);
    assert_eq!(a.timer_deadline(), None);
    assert!(!a.timer_fire(u64::MAX));
}

#[test]
fn mode_switches_disarm() {
    let mut a = apic();
    a.write_mmio(0x320, VECTOR, 0);
    a.write_mmio(0x380, 50, 0);
    assert!(a.timer_deadline().is_some());
    // Same mode, mask toggled: still counting.
    assert_eq!(a.write_mmio(0x320, 0x1_0000 | VECTOR, 0), Effect::None);
    assert!(a.timer_deadline().is_some());
    // One-shot -> periodic disarms, the initial count register stays.
    assert_eq!(
        a.write_mmio(0x320, 0x2_0000 | VECTOR, 0),
        Effect::TimerChanged
    );
    assert_eq!(a.timer_deadline(), None);
    assert_eq!(a.read_mmio(0x380, 0), 50);
    assert_eq!(a.read_mmio(0x390, 0), 0);
    // Periodic -> TSC deadline clears the initial count; back again clears the deadline.
    a.write_mmio(0x380, 50, 0);
    a.write_mmio(0x320, 0x4_0000 | VECTOR, 0);
    assert_eq!(a.timer_deadline(), None);
    assert_eq!(a.read_mmio(0x380, 0), 0);
    a.write_tsc_deadline(1_000, 0);
    a.write_mmio(0x320, VECTOR, 0);
    assert_eq!(a.timer_deadline(), None);
    assert_eq!(a.read_tsc_deadline(), 0);
    a.write_mmio(0x320, 0x4_0000 | VECTOR, 0);
    assert_eq!(a.read_tsc_deadline(), 0, "no deadline carries over");
    // The reserved mode 11b counts like one-shot.
    a.write_mmio(0x320, 0x6_0000 | VECTOR, 0);
    assert_eq!(a.timer_mode(), TimerMode::OneShot);
}

#[test]
fn x2apic_timer_registers() {
    let mut a = LocalApic::new(2, false, 4);
    a.write_base_msr(0xfee0_0c00, true, 36).unwrap();
    a.write_msr(0x80f, 0x1ff, 0).unwrap();
    a.write_msr(0x83e, 0b0001, 0).unwrap(); // /4: 16 TSC ticks per count
    a.write_msr(0x832, VECTOR as u64, 0).unwrap();
    assert_eq!(a.write_msr(0x838, 1_000, 100), Ok(Effect::TimerChanged));
    assert_eq!(a.read_msr(0x839, 100 + 16 * 10), Ok(990));
    assert_eq!(a.timer_deadline(), Some(100 + 16_000));
}

#[test]
fn huge_values_saturate() {
    let mut a = LocalApic::new(0, true, u32::MAX);
    a.write_mmio(0xf0, 0x1ff, 0);
    a.write_mmio(0x3e0, 0b1010, 0); // /128
    a.write_mmio(0x320, 0x2_0000 | VECTOR, 0);
    a.write_mmio(0x380, u32::MAX, u64::MAX - 5);
    assert_eq!(a.timer_deadline(), Some(u64::MAX));
    assert_eq!(a.read_mmio(0x390, u64::MAX), u32::MAX);
    assert!(a.timer_fire(u64::MAX));
    assert_eq!(a.timer_deadline(), Some(u64::MAX));
    // A bus tick of 0 counts as 1.
    let mut b = LocalApic::new(0, true, 0);
    b.write_mmio(0x3e0, 0b1011, 0);
    b.write_mmio(0x380, 4, 10);
    assert_eq!(b.timer_deadline(), Some(14));
}
