//! `haxm-debug`: a debugger's session through the HAXM IOCTLs (issue 11 item 5), as gdb over
//! the Android emulator's gdbstub drives it: VCPU_DEBUG with a hardware breakpoint and INT3
//! interception, RUN to the breakpoint, three single steps, continue to the INT3, replace it
//! with the original byte, continue to the end.
//!
//! The guest's own DR7 (L1 set through SET_REGS) must read back unchanged while the
//! debugger's DR7 is loaded, and be the VMCS's again when debugging stops. GET_REGS must never
//! show the TF the trap-flag route uses. The step route is the CPU's: the monitor trap flag on
//! `corei7_icelake_u`, RFLAGS.TF on the other Bochs models.

use alloc::format;
use alloc::string::String;

use rhax::Exit;
use rhax_api::{DebugControl, VcpuDebug};

use crate::haxm::{e, qemu_msrs, qemu_set, real_mode_at, simple_vm, Ram, R, V};
use crate::hv::Shell;
use crate::scenarios::Ctx;

/// The guest (16-bit real mode at 0x1000).
const CODE: u64 = 0x1000;
const PROGRAM: [u8; 12] = [
    0x90, // 1000: nop
    0x90, // 1001: nop          <- hardware breakpoint (DR0, execute)
    0xB0, 0x01, // 1002: mov al, 1
    0x04, 0x02, // 1004: add al, 2
    0x40, // 1006: inc ax
    0x90, // 1007: nop
    0xCC, // 1008: int3         <- software breakpoint (the debugger's 0xCC over a nop)
    0xE6, 0x80, // 1009: out 0x80, al
    0xF4, // 100b: hlt
];
const HW_BP: u64 = 0x1001;
const SW_BP: u64 = 0x1008;
/// The guest's own DR7: L1 (its own breakpoint 1, never reached: its DR1 is 0).
const GUEST_DR7: u64 = 0x404;
const TF: u64 = 1 << 8;

/// What a RUN ended with, owned.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    Debug { rip: u64, dr6: u64 },
    Out { port: u16, al: u8 },
    Hlt,
    Other(String),
}

/// RUN until an exit other than INTERRUPT.
fn run(v: &mut V<'_>) -> R<Stop> {
    for _ in 0..1000 {
        let stop = match v.run().map_err(e("RUN"))? {
            Exit::Interrupt => continue,
            Exit::Debug { rip, dr6, .. } => Stop::Debug { rip, dr6 },
            Exit::Io { port, data, .. } => Stop::Out {
                port,
                al: data.first().copied().unwrap_or(0),
            },
            Exit::Hlt => Stop::Hlt,
            other => Stop::Other(format!("{other:?}")),
        };
        return Ok(stop);
    }
    Err(String::from("1000 INTERRUPT exits in a row"))
}

fn debug(v: &V<'_>, control: DebugControl) -> R<()> {
    let mut d = VcpuDebug {
        control: control.bits(),
        reserved: 0,
        dr: [0; 8],
    };
    d.dr[0] = HW_BP;
    d.dr[7] = 0x1; // L0, execute, length 1
    v.debug(&d).map_err(e("VCPU_DEBUG"))
}

/// Guest RIP, AL, and that neither the debugger's TF nor its DR7 shows.
fn regs(v: &V<'_>, what: &str) -> R<(u64, u8)> {
    let s = v.get_regs().map_err(e("GET_REGS"))?;
    if s.rflags & TF != 0 {
        return Err(format!(
            "{what}: GET_REGS shows TF (rflags {:#x})",
            s.rflags
        ));
    }
    if s.dr7 != GUEST_DR7 {
        return Err(format!(
            "{what}: GET_REGS DR7 {:#x}, the guest's own is {GUEST_DR7:#x}",
            s.dr7
        ));
    }
    Ok((s.rip, s.regs[0] as u8))
}

fn want(what: &str, got: Stop, expected: Stop) -> R<()> {
    if got == expected {
        Ok(())
    } else {
        Err(format!("{what}: {got:?}, expected {expected:?}"))
    }
}

/// See the module documentation.
pub fn haxm_debug(_: &Ctx) -> R<String> {
    let ram = Ram::new(0x1_0000)?;
    ram.write(CODE, &PROGRAM);
    let shell = Shell::new()?;
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    let mut s = real_mode_at(CODE);
    s.dr7 = GUEST_DR7;
    qemu_set(&v, &s, &qemu_msrs())?;
    let bp = DebugControl::ENABLE | DebugControl::USE_HW_BP | DebugControl::USE_SW_BP;
    debug(&v, bp)?;
    let before = v.stats().map_err(e("GET_STATS"))?;

    // 1. The hardware breakpoint: a fault, reported at the instruction, B0 in DR6.
    match run(&mut v)? {
        Stop::Debug { rip: HW_BP, dr6 } if dr6 & 0xf == 1 => {}
        other => return Err(format!("to the hardware breakpoint: {other:?}")),
    }
    regs(&v, "at the hardware breakpoint")?;

    // 2. Three single steps from there (the breakpoint must not fire again at 0x1001).
    debug(&v, bp | DebugControl::STEP)?;
    for (n, (rip, al)) in [(0x1002u64, None), (0x1004, Some(1u8)), (0x1006, Some(3))]
        .into_iter()
        .enumerate()
    {
        let before = v.stats().map_err(e("GET_STATS"))?;
        match run(&mut v)? {
            Stop::Debug { rip: r, dr6 } if r == rip && dr6 & (1 << 14) != 0 => {}
            other => {
                let after = v.stats().map_err(e("GET_STATS"))?;
                let reasons: alloc::vec::Vec<(usize, u64)> = (0..after.per_reason.len())
                    .filter_map(|i| {
                        let d = after.per_reason[i].exits - before.per_reason[i].exits;
                        (d != 0).then_some((i, d))
                    })
                    .collect();
                return Err(format!(
                    "step {}: {other:?}, expected RIP {rip:#x}; exits by reason {reasons:?}",
                    n + 1
                ));
            }
        }
        let (_, got) = regs(&v, "after a step")?;
        if let Some(al) = al {
            if got != al {
                return Err(format!("step {}: AL {got}, expected {al}", n + 1));
            }
        }
    }

    // 3. Continue to the INT3: reported at its own address, DR6 0.
    debug(&v, bp)?;
    want(
        "to the software breakpoint",
        run(&mut v)?,
        Stop::Debug { rip: SW_BP, dr6: 0 },
    )?;
    let (rip, al) = regs(&v, "at the INT3")?;
    if (rip, al) != (SW_BP, 4) {
        return Err(format!("at the INT3: RIP {rip:#x} AL {al}"));
    }

    // 4. The debugger puts the original byte back and continues to the end.
    ram.write(SW_BP, &[0x90]);
    want(
        "after the INT3",
        run(&mut v)?,
        Stop::Out { port: 0x80, al: 4 },
    )?;
    want("the end", run(&mut v)?, Stop::Hlt)?;
    let after = v.stats().map_err(e("GET_STATS"))?;

    // 5. Debugging off: the guest's own DR7 is back.
    debug(&v, DebugControl::empty())?;
    regs(&v, "after debugging")?;
    let caps_debug = shell_has_debug_cap(&shell)?;
    Ok(format!(
        "breakpoint, 3 steps, INT3, end: {} RUNs, {} VM exits; CAPABILITY DEBUG {caps_debug}",
        after.runs - before.runs,
        after.total.exits - before.total.exits
    ))
}

fn shell_has_debug_cap(shell: &Shell) -> R<bool> {
    let sys = rhax::System::open(shell.transport()).map_err(e("open \\\\.\\HAX"))?;
    let caps = sys.working_capability().map_err(e("CAPABILITY"))?;
    let f = caps.features().ok_or("CAPABILITY: no feature word")?;
    if !f.contains(rhax_api::CapabilityFeatures::DEBUG) {
        return Err(format!("CAPABILITY features {f:?}: no DEBUG"));
    }
    Ok(true)
}
