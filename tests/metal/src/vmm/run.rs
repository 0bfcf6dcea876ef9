//! The RUN loop of one vCPU: every exit served by the VMM's devices or turned into an
//! outcome. With several vCPUs each runs this loop on its own CPU; the first outcome ends
//! the run for all of them ([`Shared::stop`]).

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};

use rhax::api::{IoDirection, MmioDirection};
use rhax::Exit;

use super::devices::{Uart, EXIT_PORT};
use crate::haxm::{e, V};
use crate::sync::SpinLock;
use crate::{println, smp};

/// What the vCPU loops share: the devices and the end of the run.
pub struct Shared {
    /// The UART (one for all vCPUs, as on a PC).
    pub uart: SpinLock<Uart>,
    /// Set by the first loop that ends: the others stop at their next exit.
    pub stop: AtomicBool,
}

impl Shared {
    /// For a VM of any number of vCPUs.
    pub fn new() -> Shared {
        Shared {
            uart: SpinLock::new(Uart::default()),
            stop: AtomicBool::new(false),
        }
    }
}

/// What bounds one vCPU's loop.
pub struct Limits {
    /// Exits before the VMM gives up.
    pub max_exits: u64,
    /// TSC ticks a started vCPU of several may stay halted without a wake-up source of its
    /// own (RUN returning HLT, the guest at the same RIP) before the run fails; 0 = no
    /// limit.
    pub halt_ticks: u64,
    /// The VM has this one vCPU: only its own APIC can wake it (this VMM has no
    /// interrupting device), so a halt without an armed timer is final.
    pub lone: bool,
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
    /// HLT returns (run again: the in-kernel APIC wakes the vCPU).
    pub halts: u64,
    /// The vCPU left QEMU's reset state (for an application processor: its SIPI came).
    pub started: bool,
}

/// QEMU's reset CS:IP (F000:FFF0), where an application processor stays until its SIPI.
const RESET_CS: u16 = 0xf000;
const RESET_IP: u64 = 0xfff0;

/// A continuing halt: where and since when.
struct Halt {
    rip: u64,
    since: u64,
}

/// Runs vCPU `index` until the guest exits, stops or does something this VMM does not
/// serve, until a limit of `limits` is reached, or until another vCPU's loop ended the run.
pub fn run(
    v: &mut V<'_>,
    index: usize,
    shared: &Shared,
    limits: &Limits,
    counts: &mut Counts,
) -> Outcome {
    // vCPU 0 starts at the multiboot entry; an application processor when its SIPI comes.
    counts.started = index == 0;
    let mut halt: Option<Halt> = None;
    while counts.exits < limits.max_exits {
        if shared.stop.load(Ordering::SeqCst) {
            return Outcome::Cancelled;
        }
        counts.exits += 1;
        let served = counts.io + counts.mmio;
        let step = match v.run() {
            Ok(exit) => serve(exit, shared, counts),
            Err(err) => Step::Done(Outcome::Failed(e("RUN")(err))),
        };
        if !counts.started {
            match v.get_regs() {
                Ok(s) if s.cs.selector != RESET_CS || s.rip != RESET_IP => {
                    counts.started = true;
                    println!(
                        "vmm: vCPU {index} started (INIT/SIPI) on CPU {}, first exit at \
                         {:#x}:{:#x}",
                        smp::cpu_index(),
                        s.cs.selector,
                        s.rip
                    );
                }
                Ok(_) => {}
                Err(err) => return Outcome::Failed(e("GET_REGS")(err)),
            }
        }
        match step {
            // An IO or MMIO exit: the guest ran, a halt that follows is a new one.
            Step::Again if counts.io + counts.mmio != served => halt = None,
            Step::Again => {}
            Step::Halted => {
                counts.halts += 1;
                if counts.started {
                    if let Some(outcome) = halted(v, limits, &mut halt) {
                        return outcome;
                    }
                }
            }
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
        Outcome::Failed(format!("no exit after {} VM exits", limits.max_exits)),
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

/// Port IO: the exit port and the UART; anything else ends the run with the
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

/// HLT with the in-kernel APIC: RUN returned because the vCPU stayed halted through the
/// kernel's halt polling; running it again continues the halt until the APIC (its timer, an
/// IPI, an MSI) wakes it. `None`: run again.
///
/// This VMM has no device that interrupts, so only the vCPU's own APIC timer or another vCPU
/// can end a halt. A lone vCPU halted with interrupts off (only NMI, INIT or SMI end that
/// halt: SDM Vol. 2A, HLT) or with interrupts on and neither an unmasked armed timer nor a
/// requested vector (GET_APIC_STATE) would sleep forever: the run ends with an error. With
/// several vCPUs another may still send an IPI: a halt without a wake-up source of its own
/// ends the run only after the halt limit.
fn halted(v: &V<'_>, limits: &Limits, halt: &mut Option<Halt>) -> Option<Outcome> {
    let s = match v.get_regs() {
        Ok(s) => s,
        Err(err) => return Some(Outcome::Failed(e("GET_REGS after HLT")(err))),
    };
    let if_on = s.rflags & RFLAGS_IF != 0;
    if limits.lone && !if_on {
        return Some(Outcome::Failed(format!(
            "the guest halted with interrupts off (HLT before RIP {:#x}): nothing can wake it",
            s.rip
        )));
    }
    let apic = match v.get_apic_state() {
        Ok(a) => a,
        Err(err) => return Some(Outcome::Failed(e("GET_APIC_STATE after HLT")(err))),
    };
    if if_on && wake_source(&apic) {
        // A wake-up will come: the halt is the guest waiting, not stuck.
        *halt = None;
        return None;
    }
    if limits.lone {
        return Some(Outcome::Failed(format!(
            "the guest halted waiting for an interrupt (HLT before RIP {:#x}) that nothing \
             can raise: no APIC timer armed and unmasked, no vector requested, no other vCPU \
             or interrupting device",
            s.rip
        )));
    }
    let now = crate::arch::rdtsc();
    match halt {
        Some(h) if h.rip == s.rip => {
            if limits.halt_ticks != 0 && now.wrapping_sub(h.since) > limits.halt_ticks {
                return Some(Outcome::Failed(format!(
                    "the guest halted waiting for an interrupt (HLT before RIP {:#x}, \
                     interrupts {}) and no other vCPU woke it within the halt limit \
                     (vmm_halt_ms)",
                    s.rip,
                    if if_on { "on" } else { "off" }
                )));
            }
        }
        _ => {
            *halt = Some(Halt {
                rip: s.rip,
                since: now,
            })
        }
    }
    None
}

/// Whether the vCPU's own APIC will raise an interrupt: a vector already requested (IRR), or
/// a timer armed (one-shot/periodic counting, or a TSC deadline set) whose LVT entry is not
/// masked, in a software-enabled APIC (SVR bit 8; SDM Vol. 3A §11.4.7.2, §11.5.4).
fn wake_source(a: &rhax::api::apic::RhaxApicState) -> bool {
    use rhax::api::apic::RHAX_APIC_TIMER_ARMED;
    let reg = |o: usize| a.reg(o).unwrap_or(0);
    let requested = (0..8).any(|i| reg(0x200 + 0x10 * i) != 0);
    let enabled = reg(0xf0) & (1 << 8) != 0;
    let timer_unmasked = reg(0x320) & (1 << 16) == 0;
    let armed = a.flags & RHAX_APIC_TIMER_ARMED != 0 || a.tsc_deadline != 0;
    requested || (enabled && timer_unmasked && armed)
}
