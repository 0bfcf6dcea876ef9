//! Console: Bochs's port 0xE9 (printed on Bochs's stdout, bochs-vmx.md §4) and, with
//! `console=serial` on the command line, COM1 too (QEMU and real hardware).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::{inb, outb};
use crate::sync::SpinLock;

static SERIAL: AtomicBool = AtomicBool::new(false);
static LOCK: SpinLock<()> = SpinLock::new(());

const COM1: u16 = 0x3F8;

/// Enables COM1 output (115200 8N1).
pub fn enable_serial() {
    // SAFETY: standard 16550 initialisation of COM1; no other code drives the UART.
    unsafe {
        outb(COM1 + 1, 0x00);
    }
    for (off, val) in [
        (3, 0x80u8),
        (0, 0x01),
        (1, 0x00),
        (3, 0x03),
        (2, 0xC7),
        (4, 0x03),
    ] {
        // SAFETY: as above, one register of the same UART per write.
        unsafe { outb(COM1 + off, val) }
    }
    SERIAL.store(true, Ordering::Relaxed);
}

fn put(b: u8) {
    // SAFETY: port 0xE9 is Bochs's debug port (ignored elsewhere).
    unsafe { outb(0xE9, b) }
    if SERIAL.load(Ordering::Relaxed) {
        for _ in 0..100_000 {
            // SAFETY: reading the line status register of COM1 has no side effect.
            if unsafe { inb(COM1 + 5) } & 0x20 != 0 {
                break;
            }
        }
        // SAFETY: writing the transmit register of COM1.
        unsafe { outb(COM1, b) }
    }
}

/// A writer without a lock: used under the lock, and by the fatal-exception path.
pub struct RawConsole;

impl Write for RawConsole {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            put(b);
        }
        Ok(())
    }
}

/// Prints under the console lock so that lines from different CPUs do not mix.
pub fn print(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    let _ = RawConsole.write_fmt(args);
}

/// Prints without the lock (an exception may have hit while the lock was held).
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let _ = RawConsole.write_fmt(args);
}

/// `print!` to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// `println!` to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
