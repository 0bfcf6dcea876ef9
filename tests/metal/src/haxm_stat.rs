//! `haxm-stat`: rhax-stat's library against a running guest (issue 13, item 1).
//!
//! A real-mode guest loops on `out 0x80, al` through the full HAXM RUN path. The scenario
//! attaches as the tool does: a `rhax_stat::monitor::Monitor` over an `Observed` vCPU (the
//! system device's `RHAX_IOCTL_VCPU_STATS`, while the VMM holds the vCPU device), samples
//! before and after a loop, checks the interval delta against the exits the guest made, and
//! prints the `rhax-stat` table through the very rendering code the tool uses. Then it
//! switches counting off through the system device, checks that a loop adds nothing, switches
//! it on again with the owner's `RHAX_VCPU_IOCTL_SET_STATS_CONTROL`, and prints the round trip
//! with counting on and off (Bochs's TSC counts emulated instructions): the counters' own cost
//! per exit.

use alloc::format;
use alloc::string::String;

use alloc::vec;

use rhax::api::ext::StatsFlags;
use rhax_stat::monitor::Monitor;
use rhax_stat::render::{table, Scope, View};
use rhax_stat::source::{Observed, StatsSource};

use crate::haxm::{bench_loop, e, qemu_msrs, qemu_set, real_mode_at, simple_vm, step, Ev, Ram, R};
use crate::hv::Shell;
use crate::println;
use crate::scenarios::Ctx;

/// OUT iterations per loop.
const N: u32 = 2000;
/// Reason 30, I/O instruction (SDM Vol. 3D, Appendix C).
const IO_INSTRUCTION: usize = 30;

/// A `core::fmt::Write` onto the console (the table is written piece by piece).
struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        crate::print!("{s}");
        Ok(())
    }
}

/// Runs the OUT loop once from its start; returns the guest's TSC delta per iteration and the
/// OUT exits seen.
fn one_loop(v: &mut crate::haxm::V<'_>, ram: &Ram) -> R<(u64, u64)> {
    qemu_set(v, &real_mode_at(0x1000), &qemu_msrs())?;
    let mut outs = 0u64;
    loop {
        match step(v, 0)? {
            Ev::Io { port: 0x80, .. } => outs += 1,
            Ev::Interrupt => {}
            Ev::Hlt => break,
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Ok((u64::from(ram.u32(0x2000)) / u64::from(N), outs))
}

/// See the module documentation.
pub fn haxm_stat(_: &Ctx) -> R<String> {
    let ram = Ram::new(0x1_0000)?;
    ram.write(0x1000, &bench_loop(N, &[0xE6, 0x80])); // out 0x80, al
    let shell = Shell::new()?;
    let (sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    let (vm, vcpu) = StatsSource::ids(&v);
    let mut monitor = Monitor::new(vec![Observed::new(&sys, vm, vcpu)]);
    // Warm-up loop (first entry, EPT faults on the code page), then the measured one.
    one_loop(&mut v, &ram)?;
    let first = monitor.tick(None);
    if !first.errors.is_empty() || first.busy != 0 {
        return Err(format!(
            "first sample: {:?}, {} busy",
            first.errors, first.busy
        ));
    }
    let (on_tsc, outs) = one_loop(&mut v, &ram)?;
    // Bochs's TSC runs at `ips` (100 M/s): the interval in emulated milliseconds.
    let t = monitor.tick(Some(on_tsc * u64::from(N) / 100_000));
    let d = &t.interval;
    let io = d.per_reason[IO_INSTRUCTION];
    if io.exits != outs || outs != u64::from(N) {
        return Err(format!(
            "rhax-stat delta: {} IO exits, the guest made {outs} OUTs (expected {N})",
            io.exits
        ));
    }
    if io.vmreads == 0 || io.vmwrites == 0 || io.vmx_other < io.exits {
        return Err(format!("IO row without VMX work: {io:?}"));
    }
    // Host cycles are measured only when asked for (`StatsFlags::CYCLES`).
    if io.cycles != 0 {
        return Err(format!("host cycles measured without CYCLES: {io:?}"));
    }
    if monitor.history().len() != 1 {
        return Err(format!("timeline: {:?}", monitor.history()));
    }
    let view = View {
        scope: Scope::Vcpu { vm, vcpu },
        interval_ms: Some(t.interval_ms),
        time_ms: None,
    };
    println!("rhax-stat (one {N}-OUT loop, observed through the system device):");
    table(&mut Console, d, &view).map_err(|_| String::from("table: formatting failed"))?;

    // Counting off through the system device: a loop adds nothing.
    Observed::new(&sys, vm, vcpu)
        .set_counting(StatsFlags::empty())
        .map_err(e("RHAX_IOCTL_VCPU_STATS counting off"))?;
    let (off_tsc, _) = one_loop(&mut v, &ram)?;
    let t = monitor.tick(Some(1));
    if t.interval.total.exits != 0
        || t.interval.total.vmreads != 0
        || t.interval
            .per_reason
            .iter()
            .any(rhax_stat::sample::is_active)
    {
        return Err(format!(
            "counting off, yet {} exits and {} VMREADs were counted",
            t.interval.total.exits, t.interval.total.vmreads
        ));
    }
    // On again through the owner's vCPU device.
    v.set_counting(true).map_err(e("SET_STATS_CONTROL on"))?;
    let (on2_tsc, _) = one_loop(&mut v, &ram)?;
    let t = monitor.tick(Some(1));
    if t.interval.per_reason[IO_INSTRUCTION].exits != u64::from(N) {
        return Err(String::from("counting on again: the loop was not counted"));
    }
    // Counting with host cycles (`rhax-stat --counting cycles`): every exit has some.
    Observed::new(&sys, vm, vcpu)
        .set_counting(StatsFlags::COUNTING | StatsFlags::CYCLES)
        .map_err(e("RHAX_IOCTL_VCPU_STATS cycles on"))?;
    let (cycles_tsc, _) = one_loop(&mut v, &ram)?;
    let t = monitor.tick(Some(1));
    let io = t.interval.per_reason[IO_INSTRUCTION];
    if io.exits != u64::from(N) || io.cycles < io.exits {
        return Err(format!("counting with cycles: {io:?}"));
    }
    println!(
        "bench: stat-haxm-out-host-cycles {:.1} emulated-instructions/exit (exit to entry)",
        io.cycles as f64 / io.exits as f64
    );
    // Per-field counts for IO exits only (`rhax-stat --fields IO_INSTRUCTION`).
    let observer = Observed::new(&sys, vm, vcpu);
    observer
        .set_field_reason(Some(IO_INSTRUCTION as u16))
        .and_then(|()| observer.reset())
        .map_err(e("RHAX_IOCTL_VCPU_STATS field reason"))?;
    one_loop(&mut v, &ram)?;
    let st = observer.stats().map_err(e("RHAX_IOCTL_VCPU_STATS"))?;
    let f = observer
        .field_stats()
        .map_err(e("RHAX_IOCTL_VCPU_FIELD_STATS"))?;
    let io = st.per_reason[IO_INSTRUCTION];
    let reads: u64 = f.entries().iter().map(|x| x.reads).sum();
    let writes: u64 = f.entries().iter().map(|x| x.writes).sum();
    // The exit-reason VMREAD counts for the window before it: one read may shift at each end.
    if f.field_reason != IO_INSTRUCTION as u32
        || reads.abs_diff(io.vmreads) > 1
        || writes > io.vmwrites
    {
        return Err(format!(
            "per-field counts for IO: {reads} reads, {writes} writes (reason {}), the IO row \
             has {} and {}",
            f.field_reason, io.vmreads, io.vmwrites
        ));
    }
    let mut entries = f.fields;
    let n = f.entries().len();
    rhax_stat::render::fields_table(
        &mut Console,
        entries.get_mut(..n).unwrap_or_default(),
        Some(IO_INSTRUCTION as u16),
        io.exits,
    )
    .map_err(|_| String::from("fields table: formatting failed"))?;
    observer
        .set_field_reason(None)
        .map_err(e("RHAX_IOCTL_VCPU_STATS field reason off"))?;

    println!("bench: stat-haxm-out-round-trip-counting-on {on_tsc} emulated-instructions/exit");
    println!(
        "bench: stat-haxm-out-round-trip-counting-on-again {on2_tsc} emulated-instructions/exit"
    );
    println!("bench: stat-haxm-out-round-trip-counting-off {off_tsc} emulated-instructions/exit");
    println!("bench: stat-haxm-out-round-trip-cycles-on {cycles_tsc} emulated-instructions/exit");
    println!(
        "bench: stat-cycles-overhead-haxm-out {} emulated-instructions/exit",
        cycles_tsc as i64 - on_tsc.min(on2_tsc) as i64
    );
    println!(
        "bench: stat-counting-overhead-haxm-out {} emulated-instructions/exit",
        on_tsc.min(on2_tsc) as i64 - off_tsc as i64
    );
    Ok(format!(
        "delta checked ({N} IO exits), counting off, on, with cycles checked"
    ))
}
