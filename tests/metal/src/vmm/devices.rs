//! The VMM's devices: a 16550 UART at 0x3F8 whose transmitter is always ready (output goes to
//! the console, one `vmm: guest: ` line per guest line) and the exit port at 0xF4.
//!
//! 16550 registers (National Semiconductor PC16550D data sheet, Table II), offset from 0x3F8:
//! 0 RBR (read) / THR (write) / DLL (DLAB = 1), 1 IER / DLM (DLAB = 1), 2 IIR (read) / FCR
//! (write), 3 LCR (bit 7 = DLAB), 4 MCR, 5 LSR, 6 MSR, 7 SCR.

use alloc::string::String;
use alloc::vec::Vec;

use crate::println;

/// The first UART register.
pub const COM1: u16 = 0x3F8;
/// The exit port: `out` of a status ends the run with it.
pub const EXIT_PORT: u16 = 0xF4;

/// LSR: THR empty (bit 5) and transmitter empty (bit 6); no data ready (bit 0).
const LSR_IDLE: u8 = 0x60;
/// MSR: CTS, DSR and DCD asserted (a modem that is always there).
const MSR_READY: u8 = 0xB0;
/// IIR: no interrupt pending (bit 0); bits 7:6 set while the FIFOs are on (FCR bit 0).
const IIR_NONE: u8 = 0x01;
const IIR_FIFO: u8 = 0xC0;
/// Longest guest line kept before it is printed anyway.
const LINE_MAX: usize = 200;

/// The UART's registers and the guest's unfinished output line.
#[derive(Default)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    dll: u8,
    dlm: u8,
    line: Vec<u8>,
    /// Every complete line so far (kept for the scenario's result).
    pub lines: Vec<String>,
    /// Bytes the guest transmitted.
    pub transmitted: u64,
}

impl Uart {
    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    /// Whether `port` is one of the UART's eight.
    pub fn claims(port: u16) -> bool {
        (COM1..COM1 + 8).contains(&port)
    }

    /// A byte read from `port` (one of the eight).
    pub fn read(&mut self, port: u16) -> u8 {
        match (port.wrapping_sub(COM1), self.dlab()) {
            (0, true) => self.dll,
            (1, true) => self.dlm,
            // No receiver: RBR reads 0 and LSR never shows data ready.
            (0, false) => 0,
            (1, false) => self.ier,
            (2, _) => IIR_NONE | if self.fcr & 1 != 0 { IIR_FIFO } else { 0 },
            (3, _) => self.lcr,
            (4, _) => self.mcr,
            (5, _) => LSR_IDLE,
            // In loopback (MCR bit 4) the modem inputs follow the outputs (data sheet §8.6):
            // CTS = RTS, DSR = DTR, RI = OUT1, DCD = OUT2.
            (6, _) if self.mcr & 0x10 != 0 => (self.mcr & 0x0F) << 4,
            (6, _) => MSR_READY,
            _ => self.scr,
        }
    }

    /// A byte written to `port` (one of the eight).
    pub fn write(&mut self, port: u16, value: u8) {
        match (port.wrapping_sub(COM1), self.dlab()) {
            (0, true) => self.dll = value,
            (1, true) => self.dlm = value,
            (0, false) => self.transmit(value),
            // Only the four defined enable bits exist.
            (1, false) => self.ier = value & 0x0F,
            (2, _) => self.fcr = value,
            (3, _) => self.lcr = value,
            (4, _) => self.mcr = value & 0x1F,
            // LSR and MSR are read-only (writes are for factory test: ignored).
            (5, _) | (6, _) => {}
            _ => self.scr = value,
        }
    }

    fn transmit(&mut self, b: u8) {
        self.transmitted += 1;
        // Loopback: the byte goes to the receiver, not the line (data sheet §8.6).
        if self.mcr & 0x10 != 0 {
            return;
        }
        match b {
            b'\n' => self.flush(),
            b'\r' => {}
            _ => {
                self.line.push(b);
                if self.line.len() >= LINE_MAX {
                    self.flush();
                }
            }
        }
    }

    /// Prints the unfinished line, if any.
    pub fn flush(&mut self) {
        let text: String = self
            .line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        self.line.clear();
        println!("vmm: guest: {text}");
        self.lines.push(text);
    }

    /// Whether a line is waiting for its newline.
    pub fn pending(&self) -> bool {
        !self.line.is_empty()
    }
}
