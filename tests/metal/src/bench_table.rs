//! `bench-table` / `bench-table-short`: the raw figures of `cargo xtask bench` (issue 13,
//! item 2), one `bench-row:` line per exit kind, for xtask to calibrate and tabulate.
//!
//! Method (the anchors' own, `docs/reference/performance-anchors.md` §0b): a real-mode guest
//! loops `N` times over a body between two RDTSCs; inside Bochs the TSC advances once per
//! emulated instruction, so the delta counts guest plus hypervisor instructions. A no-exit
//! loop (`nop`) calibrates: it must measure exactly its own 3 instructions per iteration.
//! xtask subtracts each loop's non-exiting guest instructions to get the round trip.
//!
//! Line format: `bench-row: kind=K iters=N tsc=T guest=G exiting=X reason=R exits=E
//! vmreads=VR vmwrites=VW runs=U` (`guest`: guest instructions per iteration, `exiting`: of
//! which cause an exit; `reason`, `exits`, `vmreads`, `vmwrites`: rhax-core's counters for the
//! exit reason the kind is about; `runs`: RUN calls, 0 in the raw core loop).

use alloc::format;
use alloc::string::String;

use rhax::api::ext::VcpuStats;

use crate::haxm::{
    bench_loop, e, qemu_msrs, qemu_set, real_mode_at, simple_vm, BenchExit, BenchLoop, Ram, R,
};
use crate::hv::Shell;
use crate::println;
use crate::scenarios::Ctx;

/// One loop through the full HAXM RUN path.
struct Kind {
    name: &'static str,
    body: &'static [u8],
    /// Guest instructions per iteration (body + `dec edi` + `jnz`), and of those exiting.
    guest: u32,
    exiting: u32,
    /// The exit reason whose counters are reported (SDM Vol. 3D, Appendix C).
    reason: u32,
    /// What the user side does at a HLT: nothing (resume), or inject vector 0x20.
    inject: bool,
    /// Ask for the interrupt window after each OUT (as QEMU while an interrupt waits).
    window: bool,
    /// Plain MOV MMIO accesses take the fast path (the default); `false` switches it off
    /// for the loop (`RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL`).
    fast_path: bool,
}

const KINDS: &[Kind] = &[
    // nop: the calibration loop, no exit.
    Kind {
        name: "calibrate",
        body: &[0x90],
        guest: 3,
        exiting: 0,
        reason: 30,
        inject: false,
        window: false,
        fast_path: true,
    },
    // out 0x80, al
    Kind {
        name: "haxm-out",
        body: &[0xE6, 0x80],
        guest: 3,
        exiting: 1,
        reason: 30,
        inject: false,
        window: false,
        fast_path: true,
    },
    // in al, 0x80
    Kind {
        name: "haxm-in",
        body: &[0xE4, 0x80],
        guest: 3,
        exiting: 1,
        reason: 30,
        inject: false,
        window: false,
        fast_path: true,
    },
    // hlt
    Kind {
        name: "haxm-hlt",
        body: &[0xF4],
        guest: 3,
        exiting: 1,
        reason: 12,
        inject: false,
        window: false,
        fast_path: true,
    },
    // mov al, [es:0] (ES = 0xA000: unmapped, FAST_MMIO read)
    Kind {
        name: "haxm-mmio-read",
        body: &[0x26, 0x8A, 0x06, 0x00, 0x00],
        guest: 3,
        exiting: 1,
        reason: 48,
        inject: false,
        window: false,
        fast_path: true,
    },
    // mov [es:0], al (FAST_MMIO write)
    Kind {
        name: "haxm-mmio-write",
        body: &[0x26, 0x88, 0x06, 0x00, 0x00],
        guest: 3,
        exiting: 1,
        reason: 48,
        inject: false,
        window: false,
        fast_path: true,
    },
    // The same work in dwords: mov eax, [es:0] (FAST_MMIO read, fast path).
    Kind {
        name: "haxm-mmio-read32",
        body: &[0x26, 0x66, 0x8B, 0x06, 0x00, 0x00],
        guest: 3,
        exiting: 1,
        reason: 48,
        inject: false,
        window: false,
        fast_path: true,
    },
    // mov [es:0], eax (FAST_MMIO write, fast path).
    Kind {
        name: "haxm-mmio-write32",
        body: &[0x26, 0x66, 0x89, 0x06, 0x00, 0x00],
        guest: 3,
        exiting: 1,
        reason: 48,
        inject: false,
        window: false,
        fast_path: true,
    },
    // The general path (issue 11: "measure both"): the same two MOVs with the fast path
    // switched off (`RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL`), so `mmio()` hands them to the
    // general emulator (decode_full + execute) as it does every non-MOV instruction.
    Kind {
        name: "haxm-mmio-read32-emul",
        body: &[0x26, 0x66, 0x8B, 0x06, 0x00, 0x00],
        guest: 3,
        exiting: 1,
        reason: 48,
        inject: false,
        window: false,
        fast_path: false,
    },
    Kind {
        name: "haxm-mmio-write32-emul",
        body: &[0x26, 0x66, 0x89, 0x06, 0x00, 0x00],
        guest: 3,
        exiting: 1,
        reason: 48,
        inject: false,
        window: false,
        fast_path: false,
    },
    // add [es:0], eax: a read-modify-write, always the general path (not a plain MOV); two
    // FAST_MMIO exits (the read, then the write) for one EPT violation.
    Kind {
        name: "haxm-mmio-rmw",
        body: &[0x26, 0x66, 0x01, 0x06, 0x00, 0x00],
        guest: 3,
        exiting: 1,
        reason: 48,
        inject: false,
        window: false,
        fast_path: true,
    },
    // sti; hlt, and the user side injects vector 0x20 at each HLT; its handler is `iret`:
    // sti, hlt, iret, dec, jnz.
    Kind {
        name: "haxm-inject",
        body: &[0xFB, 0xF4],
        guest: 5,
        exiting: 1,
        reason: 12,
        inject: true,
        window: false,
        fast_path: true,
    },
    // cli; out 0x80, al; sti; nop with the window requested after each OUT: two exits per
    // iteration (the OUT, then the window opening after the STI shadow).
    Kind {
        name: "haxm-window",
        body: &[0xFA, 0xE6, 0x80, 0xFB, 0x90],
        guest: 6,
        exiting: 1,
        reason: 7,
        inject: false,
        window: true,
        fast_path: true,
    },
];

/// Real-mode IVT slot of vector 0x20 and its handler (`iret`).
const VECTOR: u8 = 0x20;
const HANDLER: u16 = 0x3000;

/// One row; `user`: the user side's own instructions (between RUNs), in all.
fn row(k: &Kind, n: u32, tsc: u64, s: &VcpuStats, user: u64) {
    let (name, guest, exiting, reason) = (k.name, k.guest, k.exiting, k.reason);
    let r = s.reason(reason).copied().unwrap_or_default();
    println!(
        "bench-row: kind={name} iters={n} tsc={tsc} guest={guest} exiting={exiting} reason={reason} \
         exits={} vmreads={} vmwrites={} runs={} user={user}",
        r.exits, r.vmreads, r.vmwrites, s.runs
    );
}

/// One pass of a HAXM kind with `lp`: (the guest's TSC delta, the statistics, the loop).
fn haxm_pass(k: &Kind, n: u32, mut lp: BenchLoop) -> R<(u64, VcpuStats, BenchLoop)> {
    let ram = Ram::new(0x1_0000)?;
    ram.write(0x1000, &bench_loop(n, k.body));
    // IVT entry: offset HANDLER, segment 0.
    let ivt = usize::from(VECTOR) * 4;
    ram.write(ivt as u64, &[HANDLER as u8, (HANDLER >> 8) as u8, 0, 0]);
    ram.write(u64::from(HANDLER), &[0xCF]); // iret
    let shell = Shell::new()?;
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &real_mode_at(0x1000), &qemu_msrs())?;
    if !k.fast_path {
        v.set_mmio_fast_path(false)
            .map_err(e("SET_EMULATION_CONTROL"))?;
    }
    v.reset_stats().map_err(e("reset stats"))?;
    let mut halts = 0u64;
    let mut want_window = false;
    // Bounded: every kind makes at most 2 user exits per iteration, plus host interrupts.
    for _ in 0..(u64::from(n) * 4 + 1000) {
        v.request_interrupt_window(want_window);
        let ev = lp.run(&mut v, 0).map_err(|m| format!("{}: {m}", k.name))?;
        want_window = k.window && ev == BenchExit::Io;
        match ev {
            BenchExit::Hlt => {
                halts += 1;
                // The last HLT is the loop's `cli; hlt` after the measurement.
                let body_halts = if k.body.contains(&0xF4) {
                    u64::from(n)
                } else {
                    0
                };
                if halts > body_halts {
                    let s = v.stats().map_err(e("GET_STATS"))?;
                    return Ok((u64::from(ram.u32(0x2000)), s, lp));
                }
                if k.inject {
                    v.interrupt(VECTOR).map_err(e("INTERRUPT"))?;
                }
            }
            BenchExit::Io | BenchExit::Mmio | BenchExit::Interrupt => {}
        }
    }
    Err(format!("{}: the loop did not end", k.name))
}

/// A HAXM kind's row: the round trip from a pass that does not measure the user side, its
/// share from a second pass that does (measuring costs ~35 instructions per round trip).
fn haxm_kind(k: &Kind, n: u32) -> R<()> {
    let (tsc, s, _) = haxm_pass(k, n, BenchLoop::new())?;
    let (_, _, measured) = haxm_pass(k, n, BenchLoop::measuring())?;
    row(k, n, tsc, &s, measured.user);
    Ok(())
}

fn core_kind(name: &'static str, n: u32, cpuid: bool) -> R<()> {
    let (count, tsc, stats) =
        crate::guests::run_exit_loop(n, cpuid, 1, crate::guests::Counting::On)?;
    if count != u64::from(n) {
        return Err(format!("{name}: {count} exits, expected {n}"));
    }
    let reason: u32 = if cpuid { 10 } else { 30 };
    let mut s = VcpuStats::new();
    for (slot, c) in s.per_reason.iter_mut().zip(stats.iter()) {
        slot.exits = c.exits;
        slot.vmreads = c.vmreads;
        slot.vmwrites = c.vmwrites;
    }
    // xor eax, eax; cpuid; dec; jnz  /  out; dec; jnz
    let k = Kind {
        name,
        body: &[],
        guest: if cpuid { 4 } else { 3 },
        exiting: 1,
        reason,
        inject: false,
        window: false,
        fast_path: true,
    };
    row(&k, n, u64::from(tsc), &s, 0);
    Ok(())
}

fn run(n_core: u32, n_haxm: u32) -> R<String> {
    core_kind("core-cpuid", n_core, true)?;
    core_kind("core-out", n_core, false)?;
    for k in KINDS {
        haxm_kind(k, n_haxm)?;
    }
    Ok(format!("{} kinds (see bench-row: lines)", KINDS.len() + 2))
}

/// Full figures: 20,000 exits per core loop, 2,000 iterations per HAXM-path loop.
pub fn bench_table(_: &Ctx) -> R<String> {
    run(20_000, 2_000)
}

/// What CI runs: few iterations, to check the table is produced (not its numbers).
pub fn bench_table_short(_: &Ctx) -> R<String> {
    run(500, 100)
}
