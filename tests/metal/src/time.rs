//! Time from the TSC. Its rate comes from `tsc_hz=` on the command line (xtask passes Bochs's
//! `ips`: Bochs's TSC advances once per emulated instruction) or is measured against PIT
//! channel 2 (10 ms gate; real hardware, QEMU, GRUB).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{inb, outb, rdtsc};

static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);

/// Sets the TSC rate.
pub fn set_tsc_hz(hz: u64) {
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
}

/// The TSC rate in Hz.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Measures the TSC rate with PIT channel 2 in one-shot mode over 10 ms (1.193182 MHz clock).
pub fn calibrate_with_pit() -> u64 {
    const TICKS: u16 = 11932; // 10 ms
                              // SAFETY: port 0x61 bit 0 gates PIT channel 2, bit 1 routes it to the speaker (off);
                              // the PIT is not used by anything else in this kernel.
    let v = unsafe { inb(0x61) };
    // SAFETY: as above: gate on, speaker off.
    unsafe { outb(0x61, (v & !0x02) | 0x01) };
    // SAFETY: mode command for channel 2: lobyte/hibyte, mode 0 (interrupt on terminal count).
    unsafe { outb(0x43, 0b1011_0000) }
    // SAFETY: reload value, low then high byte, for channel 2.
    unsafe { outb(0x42, TICKS as u8) }
    // SAFETY: as above.
    unsafe { outb(0x42, (TICKS >> 8) as u8) }
    let start = rdtsc();
    // SAFETY: reading port 0x61: bit 5 is the channel-2 output, high at terminal count.
    while unsafe { inb(0x61) } & 0x20 == 0 {
        if rdtsc() - start > 50_000_000_000 {
            break;
        }
    }
    let hz = (rdtsc() - start) * 100;
    set_tsc_hz(hz);
    hz
}

/// Nanoseconds since the TSC started.
pub fn now_ns() -> u64 {
    (u128::from(rdtsc()) * 1_000_000_000 / u128::from(tsc_hz())) as u64
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let end = rdtsc() + tsc_hz() / 1_000_000 * us;
    while rdtsc() < end {
        crate::arch::pause();
    }
}
