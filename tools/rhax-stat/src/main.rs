//! `rhax-stat`: per exit reason, how many VM exits and how many VMREAD, VMWRITE and other VMX
//! instructions and host cycles each cost, for the vCPUs of a running rhax VM.
//!
//! ```text
//! rhax-stat [--vm N] [--vcpu N] [--once] [--json | --csv] [--reset] [--svg FILE]
//!           [--interval MS] [--count N] [--counting on|off|cycles] [--fields REASON|all]
//! ```
//!
//! The counters come through the system device (`RHAX_IOCTL_VCPU_STATS`), since the VMM holds
//! its VM and vCPU devices exclusively. Without `--vm` every VM id (0..64) is probed, without
//! `--vcpu` every vCPU id (0..16) of the VM(s); the counters of the vCPUs found are summed. The default is a live view refreshed
//! every `--interval` (1000 ms), showing the interval's deltas and rates, until interrupted
//! or `--count` samples; `--once` prints the counters since the last reset and exits; `--json`
//! writes one JSON line, `--csv` CSV rows, per sample; `--reset` zeroes the counters first
//! (alone, it only resets); `--svg FILE` writes the chart (rewritten after every sample);
//! `--counting on|off|cycles` switches the driver's counting (`cycles`: counting and the host
//! cycles per exit, two RDTSCs per exit the driver skips otherwise; alone, it only switches);
//! `--fields R`
//! (an SDM exit-reason name such as `CPUID`, or a number; or `all`) makes the driver keep
//! per-field VMREAD/VMWRITE counts for that reason only, resets the counters, and adds the
//! per-field table (most used fields first) under the table view.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rhax::api::ext::{ExtFeatures, FieldStats, StatsFlags};
use rhax::api::{HAX_MAX_VCPUS, HAX_MAX_VMS};
use rhax::System;
use rhax_stat::monitor::Monitor;
use rhax_stat::render::{self, Scope, View, CSV_HEADER};
use rhax_stat::source::{is_absent, Observed, StatsSource};

#[cfg(unix)]
type Os = rhax::PosixTransport;
#[cfg(windows)]
type Os = rhax::WindowsTransport;

#[cfg(unix)]
fn transport() -> Os {
    rhax::PosixTransport
}
#[cfg(windows)]
fn transport() -> Os {
    rhax::WindowsTransport
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

struct Args {
    vm: Option<u32>,
    vcpu: Option<u32>,
    once: bool,
    format: Format,
    reset: bool,
    svg: Option<String>,
    interval_ms: u64,
    count: Option<u64>,
    /// `--counting on|off|cycles`: the stats flags to set.
    counting: Option<StatsFlags>,
    /// `--fields R|all`: per-field counts for reason R (`Some(None)`: every reason).
    fields: Option<Option<u16>>,
}

const USAGE: &str = "usage: rhax-stat [--vm N] [--vcpu N] [--once] [--json | --csv] [--reset] \
                     [--svg FILE] [--interval MS] [--count N] [--counting on|off|cycles] [--fields REASON|all]";

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        vm: None,
        vcpu: None,
        once: false,
        format: Format::Table,
        reset: false,
        svg: None,
        interval_ms: 1000,
        count: None,
        counting: None,
        fields: None,
    };
    let mut only_reset = true;
    while let Some(arg) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .ok_or_else(|| format!("{arg} needs {what}\n{USAGE}"))
        };
        let number = |s: String| {
            s.parse::<u64>()
                .map_err(|_| format!("{arg}: not a number: {s}"))
        };
        match arg.as_str() {
            "--vm" => {
                a.vm = Some(u32::try_from(number(value("a VM id")?)?).map_err(|e| e.to_string())?)
            }
            "--vcpu" => {
                a.vcpu =
                    Some(u32::try_from(number(value("a vCPU id")?)?).map_err(|e| e.to_string())?)
            }
            "--once" => a.once = true,
            "--json" => a.format = Format::Json,
            "--csv" => a.format = Format::Csv,
            "--reset" => a.reset = true,
            "--svg" => a.svg = Some(value("a file name")?),
            "--interval" => a.interval_ms = number(value("milliseconds")?)?.max(10),
            "--count" => a.count = Some(number(value("a count")?)?),
            "--fields" => {
                let r = value("an exit reason (name or number) or all")?;
                a.fields = Some(if r.eq_ignore_ascii_case("all") {
                    None
                } else {
                    Some(
                        rhax_stat::reasons::parse(&r)
                            .ok_or_else(|| format!("--fields: unknown exit reason {r}"))?,
                    )
                });
            }
            "--counting" => {
                a.counting = Some(match value("on, off or cycles")?.as_str() {
                    "on" => StatsFlags::COUNTING,
                    "off" => StatsFlags::empty(),
                    "cycles" => StatsFlags::COUNTING | StatsFlags::CYCLES,
                    other => return Err(format!("--counting: on, off or cycles, not {other}")),
                })
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
        if !matches!(arg.as_str(), "--reset" | "--vm" | "--vcpu" | "--counting") {
            only_reset = false;
        }
    }
    if (a.reset || a.counting.is_some()) && only_reset {
        a.count = Some(0);
    }
    Ok(a)
}

/// The vCPUs to watch: every `(vm, vcpu)` of the asked ids that the driver knows. A vCPU
/// inside RUN answers "busy" and is watched anyway.
fn attach<'a>(sys: &'a System<Os>, args: &Args) -> Result<Vec<Observed<'a, Os>>, String> {
    let info = sys
        .ext_info()
        .map_err(|e| format!("not an rhax driver with statistics: {e}"))?;
    if !info.features().contains(ExtFeatures::SYSTEM_STATS) {
        return Err(String::from(
            "this rhax driver cannot report statistics through the system device",
        ));
    }
    let vms: Vec<u32> = args
        .vm
        .map_or_else(|| (0..HAX_MAX_VMS).collect(), |v| vec![v]);
    let vcpus: Vec<u32> = args
        .vcpu
        .map_or_else(|| (0..HAX_MAX_VCPUS).collect(), |v| vec![v]);
    let mut found = Vec::new();
    for &vm in &vms {
        for &vcpu in &vcpus {
            let o = Observed::new(sys, vm, vcpu);
            match o.stats() {
                Ok(_) => found.push(o),
                Err(e) if Observed::<Os>::is_busy(&e) => found.push(o),
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(format!("vm {vm} vcpu {vcpu}: {e}")),
            }
        }
    }
    if found.is_empty() {
        return Err(String::from("no such vCPU (is a VM running on rhax?)"));
    }
    Ok(found)
}

fn scope(args: &Args, found: &[Observed<'_, Os>]) -> Scope {
    match (args.vm, found) {
        (Some(vm), [one]) if args.vcpu.is_some() => Scope::Vcpu {
            vm,
            vcpu: one.ids().1,
        },
        (Some(vm), _) => Scope::Vm(vm),
        _ => Scope::All,
    }
}

/// The per-field counts of every vCPU that answers, summed by encoding.
fn merged_fields(sources: &[Observed<'_, Os>]) -> Vec<FieldStats> {
    let mut all: Vec<FieldStats> = Vec::new();
    for o in sources {
        let Ok(f) = o.field_stats() else {
            continue; // busy or gone: its fields show up at the next sample
        };
        for e in f.entries() {
            match all.iter_mut().find(|a| a.encoding == e.encoding) {
                Some(a) => {
                    a.reads = a.reads.wrapping_add(e.reads);
                    a.writes = a.writes.wrapping_add(e.writes);
                }
                None => all.push(*e),
            }
        }
    }
    all
}

fn run(args: &Args) -> Result<(), String> {
    let sys = System::open(transport()).map_err(|e| e.to_string())?;
    let found = attach(&sys, args)?;
    let scope = scope(args, &found);
    if let Some(flags) = args.counting {
        for o in &found {
            let (vm, vcpu) = o.ids();
            o.set_counting(flags)
                .map_err(|e| format!("vm {vm} vcpu {vcpu}: {e}"))?;
        }
    }
    if let Some(reason) = args.fields {
        for o in &found {
            let (vm, vcpu) = o.ids();
            o.set_field_reason(reason)
                .and_then(|()| o.reset())
                .map_err(|e| format!("vm {vm} vcpu {vcpu}: {e}"))?;
        }
    }
    let mut m = Monitor::new(found);
    if args.reset {
        for e in m.reset() {
            eprintln!("rhax-stat: reset: {e}");
        }
    }
    if args.count == Some(0) {
        return Ok(());
    }
    let start = Instant::now();
    let mut last = Instant::now();
    let mut first = m.tick(None);
    let mut out = String::new();
    let mut samples = 0u64;
    if args.format == Format::Csv {
        out.push_str(CSV_HEADER);
        out.push('\n');
    }
    loop {
        let live = !args.once && samples > 0;
        let view = View {
            scope,
            interval_ms: live.then_some(first.interval_ms),
            time_ms: Some(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)),
        };
        let shown = if live { &first.interval } else { &first.total };
        let r = match args.format {
            Format::Table => {
                if !args.once {
                    // Clear the screen and home the cursor, as `top` does.
                    out.push_str("\x1b[H\x1b[2J");
                }
                render::table(&mut out, shown, &view)
            }
            Format::Json => render::json(&mut out, shown, &view),
            Format::Csv => render::csv_rows(&mut out, shown, &view),
        };
        r.map_err(|_| String::from("formatting failed"))?;
        if let (Some(reason), Format::Table) = (args.fields, args.format) {
            let exits = reason.map_or(first.total.total.exits, |r| {
                first.total.reason(u32::from(r)).map_or(0, |c| c.exits)
            });
            let mut fields = merged_fields(m.sources());
            out.push('\n');
            render::fields_table(&mut out, &mut fields, reason, exits)
                .map_err(|_| String::from("formatting failed"))?;
        }
        if first.busy > 0 && args.format == Format::Table {
            out.push_str(&format!(
                "({} vCPU(s) inside RUN: last answer used)\n",
                first.busy
            ));
        }
        for e in &first.errors {
            eprintln!("rhax-stat: {e}");
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("stdout: {e}"))?;
        out.clear();
        if let Some(file) = &args.svg {
            let mut svg = String::new();
            rhax_stat::svg::chart(&mut svg, &first.total, scope, m.history())
                .map_err(|_| String::from("formatting failed"))?;
            std::fs::write(file, svg).map_err(|e| format!("{file}: {e}"))?;
        }
        samples += 1;
        if args.once || args.count.is_some_and(|c| samples >= c) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms));
        let ms = u64::try_from(last.elapsed().as_millis()).unwrap_or(u64::MAX);
        last = Instant::now();
        first = m.tick(Some(ms));
    }
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rhax-stat: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn arguments() {
        let a = p("--vm 1 --vcpu 2 --csv --interval 250 --count 3 --svg x.svg").unwrap();
        assert_eq!(
            (a.vm, a.vcpu, a.interval_ms, a.count),
            (Some(1), Some(2), 250, Some(3))
        );
        assert!(a.format == Format::Csv && a.svg.as_deref() == Some("x.svg") && !a.once);
        // `--reset` alone only resets; with a mode it resets first.
        assert_eq!(p("--vm 0 --reset").unwrap().count, Some(0));
        assert_eq!(p("--reset --once").unwrap().count, None);
        let a = p("--counting off").unwrap();
        assert_eq!((a.counting, a.count), (Some(StatsFlags::empty()), Some(0)));
        assert_eq!(
            p("--counting on --once").unwrap().counting,
            Some(StatsFlags::COUNTING)
        );
        assert_eq!(
            p("--counting cycles").unwrap().counting,
            Some(StatsFlags::COUNTING | StatsFlags::CYCLES)
        );
        assert!(p("--counting maybe").is_err());
        assert_eq!(p("--fields cpuid").unwrap().fields, Some(Some(10)));
        assert_eq!(p("--fields ALL").unwrap().fields, Some(None));
        assert!(p("--fields nothing").is_err());
        assert!(p("--vm").is_err());
        assert!(p("--vm x").is_err());
        assert!(p("--vm 99999999999").is_err());
        assert!(p("--bogus").is_err());
    }
}
