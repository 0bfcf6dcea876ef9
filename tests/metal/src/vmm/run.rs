//! The RUN loop of vCPU 0: every exit served by the VMM's devices or turned into an outcome.

use alloc::format;
use alloc::string::String;

use rhax::api::{IoDirection, MmioDirection};
use rhax::Exit;

use super::devices::{Uart, EXIT_PORT};
use crate::haxm::{e, V};

/// RFLAGS.IF (SDM Vol. 1 §3.4.3.2).
const RFLAGS_IF: u64 = 1 << 9;

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this status to the exit port.
    Exit(u32),
    /// The vCPU stopped (HAXM's STATECHANGE): triple fault or state the CPU refused.
    Stopped,
    /// Anything else: an exit this VMM does not serve, a halt nothing can end, a RUN error.
    Failed(String),
}

/// What the loop counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// RUN calls that returned.
    pub exits: u64,
    /// Port IO exits.
    pub io: u64,
    /// MMIO exits (outside RAM).
    pub mmio: u64,
    /// INTERRUPT exits (run again).
    pub interrupts: u64,
}

/// Runs vCPU 0 until the guest exits, stops or does something this VMM does not serve, or
/// until `max_exits` exits.
pub fn run(v: &mut V<'_>, uart: &mut Uart, max_exits: u64, counts: &mut Counts) -> Outcome {
    while counts.exits < max_exits {
        counts.exits += 1;
        let step = match v.run() {
            Ok(exit) => serve(exit, uart, counts),
            Err(err) => Step::Done(Outcome::Failed(e("RUN")(err))),
        };
        match step {
            Step::Again => {}
            Step::Halted => return halted(v),
            Step::StateChange => {
                return match v.unemulated() {
                    Some(u) => Outcome::Failed(format!(
                        "the vCPU stopped on an instruction rhax does not emulate for MMIO \
                         at gpa {:#x}: bytes {:02x?}",
                        u.gpa,
                        u.bytes.get(..u.len as usize).unwrap_or(&[])
                    )),
                    None => Outcome::Stopped,
                }
            }
            Step::Done(outcome) => return with_rip(v, outcome),
        }
    }
    with_rip(
        v,
        Outcome::Failed(format!("no exit after {max_exits} VM exits")),
    )
}

/// Adds the guest's RIP to a failure.
fn with_rip(v: &V<'_>, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Failed(why) => match v.get_regs() {
            Ok(s) => Outcome::Failed(format!("{why} (guest RIP {:#x})", s.rip)),
            Err(_) => Outcome::Failed(why),
        },
        other => other,
    }
}

enum Step {
    Again,
    Halted,
    StateChange,
    Done(Outcome),
}

fn serve(exit: Exit<'_>, uart: &mut Uart, counts: &mut Counts) -> Step {
    match exit {
        Exit::Interrupt => {
            counts.interrupts += 1;
            Step::Again
        }
        Exit::Io {
            direction,
            size,
            count,
            port,
            df,
            string,
            data,
        } => {
            counts.io += 1;
            io(uart, direction, size, count, port, df, string, data)
        }
        Exit::FastMmio(mut m) => {
            counts.mmio += 1;
            // Outside RAM nothing answers: reads float high, writes (and MMIO-to-MMIO moves)
            // go nowhere, as on a PC bus with no device at the address.
            if m.direction == MmioDirection::Read {
                if let Err(err) = m.complete_read(u64::MAX) {
                    return Step::Done(Outcome::Failed(e("MMIO read")(err)));
                }
            }
            Step::Again
        }
        Exit::Hlt => Step::Halted,
        Exit::StateChange => Step::StateChange,
        other => Step::Done(Outcome::Failed(format!(
            "exit this VMM does not serve: {other:?}"
        ))),
    }
}

/// Port IO: the exit port and the UART; anything else ends the run with the exit described.
#[allow(clippy::too_many_arguments)]
fn io(
    uart: &mut Uart,
    direction: IoDirection,
    size: u8,
    count: u16,
    port: u16,
    df: bool,
    string: bool,
    data: &mut [u8],
) -> Step {
    let size = usize::from(size);
    if port == EXIT_PORT && direction == IoDirection::Out && !string {
        // The status: the written value, zero-extended (`outl` gives all 32 bits).
        let mut b = [0u8; 4];
        for (dst, src) in b.iter_mut().zip(data.iter().take(size)) {
            *dst = *src;
        }
        return Step::Done(Outcome::Exit(u32::from_le_bytes(b)));
    }
    let last = port.checked_add(u16::from(size as u8).saturating_sub(1));
    if !Uart::claims(port) || !last.is_some_and(Uart::claims) {
        return Step::Done(Outcome::Failed(format!(
            "port IO this VMM does not serve: {direction:?} port {port:#x}, size {size}, \
             count {count}{}",
            if string { ", string" } else { "" }
        )));
    }
    // Elements in the guest's order: with DF set it processes the last one first.
    let n = usize::from(count);
    for k in 0..n {
        let idx = if df { n - 1 - k } else { k };
        let Some(elem) = data.get_mut(idx * size..(idx + 1) * size) else {
            return Step::Done(Outcome::Failed(format!(
                "IO exit with {} data bytes for {count} elements of {size}",
                data.len()
            )));
        };
        // A wider access covers consecutive registers: byte i goes to port + i.
        for (i, b) in elem.iter_mut().enumerate() {
            let p = port.wrapping_add(i as u16);
            match direction {
                IoDirection::Out => uart.write(p, *b),
                IoDirection::In => *b = uart.read(p),
            }
        }
    }
    Step::Again
}

/// HLT: nothing in this VMM raises an interrupt yet (no PIT, no in-kernel APIC), so a halted
/// guest would never resume: a clear error, worded for the two cases.
fn halted(v: &V<'_>) -> Outcome {
    match v.get_regs() {
        Ok(s) if s.rflags & RFLAGS_IF == 0 => Outcome::Failed(format!(
            "the guest halted with interrupts off (HLT before RIP {:#x}): nothing can wake it",
            s.rip
        )),
        Ok(s) => Outcome::Failed(format!(
            "the guest halted waiting for an interrupt (HLT before RIP {:#x}), and no device \
             of this VMM raises one yet (in-kernel APIC: see `vmm::enable_in_kernel_apic`)",
            s.rip
        )),
        Err(err) => Outcome::Failed(e("GET_REGS after HLT")(err)),
    }
}
