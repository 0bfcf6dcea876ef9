//! The RUN loop of one vCPU: every exit served by the VMM's devices or turned into an
//! outcome. With several vCPUs each runs this loop on its own CPU; the first outcome ends
//! the run for all of them ([`Shared::stop`]).

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rhax::api::{IoDirection, MmioDirection};
use rhax::Exit;

use super::devices::{Uart, EXIT_PORT, START_PORT};
use crate::haxm::{e, V};
use crate::sync::SpinLock;

/// What the vCPU loops share: the devices, the start requests of the application processors
/// and the end of the run.
pub struct Shared {
    /// The UART (one for all vCPUs, as on a PC).
    pub uart: SpinLock<Uart>,
    /// Set by the first loop that ends: the others stop at their next exit.
    pub stop: AtomicBool,
    /// Per vCPU: 0 = waiting for its SIPI, else the start vector + 1.
    start: [AtomicU32; super::MAX_CPUS as usize],
    /// vCPUs in the VM.
    cpus: usize,
}

impl Shared {
    /// For a VM of `cpus` vCPUs.
    pub fn new(cpus: usize) -> Shared {
        Shared {
            uart: SpinLock::new(Uart::default()),
            stop: AtomicBool::new(false),
            start: [const { AtomicU32::new(0) }; super::MAX_CPUS as usize],
            cpus,
        }
    }

    /// HOOK(issue 12 item 1): asks application processor `index` to start as a SIPI with
    /// `vector` would start it (SDM Vol. 3A §11.4.4.1: real mode at `vector << 12`). The
    /// AP's loop, waiting on its own CPU, sets the state and runs it. The in-kernel APIC
    /// calls this when the guest's INIT/SIPI reaches the vCPU; until then the `smp` test guest
    /// asks through the VMM's start port (0xF5).
    pub fn start_ap(&self, index: usize, vector: u8) -> Result<(), String> {
        let slot = self
            .start
            .get(index)
            .filter(|_| index != 0 && index < self.cpus)
            .ok_or_else(|| format!("start_ap: no application processor {index}"))?;
        slot.compare_exchange(0, u32::from(vector) + 1, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| ())
            .map_err(|_| format!("start_ap: processor {index} was already started"))
    }

    /// The start vector of AP `index`, once asked for.
    pub fn start_vector(&self, index: usize) -> Option<u8> {
        let v = self.start.get(index)?.load(Ordering::SeqCst);
        u8::try_from(v.checked_sub(1)?).ok()
    }
}

/// RFLAGS.IF (SDM Vol. 1 §3.4.3.2).
const RFLAGS_IF: u64 = 1 << 9;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this status to the exit port.
    Exit(u32),
    /// The vCPU stopped (HAXM's STATECHANGE): triple fault or state the CPU refused.
    Stopped,
    /// Anything else: an exit this VMM does not serve, a halt nothing can end, a RUN error.
    Failed(String),
    /// Another vCPU ended the run first.
    Cancelled,
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

/// Runs a vCPU until the guest exits, stops or does something this VMM does not serve, until
/// `max_exits` exits, or until another vCPU's loop ended the run.
pub fn run(v: &mut V<'_>, shared: &Shared, max_exits: u64, counts: &mut Counts) -> Outcome {
    while counts.exits < max_exits {
        if shared.stop.load(Ordering::SeqCst) {
            return Outcome::Cancelled;
        }
        counts.exits += 1;
        let step = match v.run() {
            Ok(exit) => serve(exit, shared, counts),
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

fn serve(exit: Exit<'_>, shared: &Shared, counts: &mut Counts) -> Step {
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
            io(shared, direction, size, count, port, df, string, data)
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

/// Port IO: the exit port, the start port and the UART; anything else ends the run with the
/// exit described.
#[allow(clippy::too_many_arguments)]
fn io(
    shared: &Shared,
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
    if port == START_PORT && direction == IoDirection::Out && !string && size == 4 {
        // `outl` of `index << 8 | vector` (the stand-in for INIT/SIPI until the APIC exists).
        let v = data
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        return match shared.start_ap((v >> 8) as usize, v as u8) {
            Ok(()) => Step::Again,
            Err(why) => Step::Done(Outcome::Failed(why)),
        };
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
    let mut uart = shared.uart.lock();
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
