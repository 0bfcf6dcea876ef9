//! Tests against a fake transport: a [`StatsSource`] whose answers the test scripts.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::string::String;

use rhax_api::ext::{ExitReasonStats, VcpuStats};

use crate::fixed::{PerSecond, Ratio};
use crate::monitor::Monitor;
use crate::reasons::{name, Label};
use crate::render::{csv_rows, json, table, Scope, View, CSV_HEADER};
use crate::sample::{delta, Order, Rows};
use crate::source::StatsSource;

/// A scripted vCPU: each `stats()` pops the next answer (`Err(true)`: busy, `Err(false)`: a
/// hard error); `reset()` counts.
struct Fake {
    ids: (u32, u32),
    answers: RefCell<VecDeque<Result<VcpuStats, bool>>>,
    resets: RefCell<u32>,
}

impl Fake {
    fn new(vm: u32, vcpu: u32, answers: Vec<Result<VcpuStats, bool>>) -> Self {
        Self {
            ids: (vm, vcpu),
            answers: RefCell::new(answers.into()),
            resets: RefCell::new(0),
        }
    }
}

impl StatsSource for Fake {
    type Error = &'static str;

    fn ids(&self) -> (u32, u32) {
        self.ids
    }

    fn stats(&self) -> Result<VcpuStats, &'static str> {
        match self.answers.borrow_mut().pop_front() {
            Some(Ok(s)) => Ok(s),
            Some(Err(true)) => Err("busy"),
            Some(Err(false)) | None => Err("gone"),
        }
    }

    fn reset(&self) -> Result<(), &'static str> {
        *self.resets.borrow_mut() += 1;
        Ok(())
    }

    fn is_busy(e: &&'static str) -> bool {
        *e == "busy"
    }
}

fn c(exits: u64, vmreads: u64, vmwrites: u64, vmx_other: u64, cycles: u64) -> ExitReasonStats {
    ExitReasonStats {
        exits,
        vmreads,
        vmwrites,
        vmx_other,
        cycles,
    }
}

/// A record with CPUID and IO exits, some outside work, and a consistent total.
fn record(cpuid: u64, io: u64) -> VcpuStats {
    let mut s = VcpuStats::new();
    s.runs = io + 1;
    s.user_exits = io;
    s.per_reason[10] = c(cpuid, 3 * cpuid, cpuid, cpuid, 400 * cpuid);
    s.per_reason[30] = c(io, 4 * io, io, io, 500 * io);
    s.outside_exits = c(0, 20, 30, 2, 1000);
    s.total = s.per_reason[10]
        .wrapping_add(s.per_reason[30])
        .wrapping_add(s.outside_exits);
    s
}

#[test]
fn ratios_round_half_up_in_integers() {
    assert_eq!(Ratio::new(1, 3).to_string(), "0.33");
    assert_eq!(Ratio::new(2, 3).to_string(), "0.67");
    assert_eq!(Ratio::new(7, 2).to_string(), "3.50");
    assert_eq!(Ratio::new(5, 0).to_string(), "-");
    assert_eq!(format!("{:>6}", Ratio::new(1, 1)), "  1.00");
    // No overflow at the top of the range.
    assert_eq!(
        Ratio::new(u64::MAX, 1).to_string(),
        "18446744073709551615.00"
    );
    assert_eq!(PerSecond { count: 3, ms: 1500 }.value(), Some(2));
    assert_eq!(PerSecond { count: 3, ms: 0 }.value(), None);
}

#[test]
fn reason_names_follow_the_sdm_and_unknown_numbers_are_labelled() {
    assert_eq!(name(10), Some("CPUID"));
    assert_eq!(name(30), Some("IO_INSTRUCTION"));
    assert_eq!(name(48), Some("EPT_VIOLATION"));
    assert_eq!(name(79), Some("WRMSRLIST"));
    assert_eq!(name(35), None);
    assert_eq!(name(80), None);
    assert_eq!(format!("{:<12}|", Label::Reason(35)), "REASON_35   |");
    assert_eq!(Label::Reason(1000).to_string(), "REASON_1000");
}

#[test]
fn delta_subtracts_and_a_reset_restarts_from_the_new_values() {
    let d = delta(&record(30, 20), &record(10, 5));
    assert_eq!(d.per_reason[10], c(20, 60, 20, 20, 8000));
    assert_eq!(d.per_reason[30], c(15, 60, 15, 15, 7500));
    assert_eq!(d.runs, 15);
    assert_eq!(d.outside_exits, c(0, 0, 0, 0, 0));
    // Counters went down: the driver was reset in between.
    let after_reset = record(2, 1);
    assert_eq!(delta(&after_reset, &record(30, 20)), after_reset);
    // The in-place form agrees, summing onto what is there.
    let mut sum = record(1, 1);
    crate::sample::accumulate_delta(&mut sum, &record(30, 20), Some(&record(10, 5)));
    assert_eq!(sum.per_reason[10].exits, 21);
    assert_eq!(sum.total.exits, 2 + 35);
    let mut fresh = VcpuStats::new();
    crate::sample::accumulate_delta(&mut fresh, &after_reset, Some(&record(30, 20)));
    assert_eq!(fresh.per_reason, after_reset.per_reason);
}

#[test]
fn rows_skip_idle_reasons_and_sort_by_exits_when_asked() {
    let s = record(5, 9);
    let by_reason: Vec<_> = Rows::of(&s, Order::Reason)
        .iter()
        .map(|(l, c)| (l, c.exits))
        .collect();
    assert_eq!(by_reason, [(Label::Reason(10), 5), (Label::Reason(30), 9)]);
    let by_exits: Vec<_> = Rows::of(&s, Order::Exits).iter().map(|(l, _)| l).collect();
    assert_eq!(by_exits, [Label::Reason(30), Label::Reason(10)]);
    assert!(Rows::of(&VcpuStats::new(), Order::Reason).is_empty());
}

#[test]
fn table_shows_per_exit_averages_and_rates() {
    let mut out = String::new();
    let view = View {
        scope: Scope::Vcpu { vm: 0, vcpu: 1 },
        interval_ms: Some(500),
        time_ms: None,
    };
    table(&mut out, &record(100, 50), &view).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("vm 0 vcpu 1, last 500 ms: 51 runs"),
        "{out}"
    );
    assert!(lines[1].starts_with("REASON"), "{out}");
    // Most exits first in the live view; 100 exits in 500 ms is 200/s.
    let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[2]),
        ["CPUID", "100", "200", "3.00", "1.00", "1.00", "400.00"]
    );
    assert_eq!(
        cols(lines[3]),
        [
            "IO_INSTRUCTION",
            "50",
            "100",
            "4.00",
            "1.00",
            "1.00",
            "500.00"
        ]
    );
    // Outside work has no exits: raw counts.
    assert_eq!(
        cols(lines[4]),
        ["(outside", "exits)", "0", "0", "20.00", "30.00", "2.00", "1000.00"]
    );
    assert_eq!(cols(lines[5])[..2], ["TOTAL", "150"]);
    assert_eq!(lines.len(), 6);

    let mut once = String::new();
    table(
        &mut once,
        &record(1, 2),
        &View {
            interval_ms: None,
            ..view
        },
    )
    .unwrap();
    assert!(once.contains("since reset"), "{once}");
    // Without an interval: no rate, reason order.
    assert_eq!(cols(once.lines().nth(2).unwrap())[..3], ["CPUID", "1", "-"]);
}

#[test]
fn csv_and_json_carry_the_raw_counters() {
    let view = View {
        scope: Scope::Vm(2),
        interval_ms: Some(1000),
        time_ms: Some(3000),
    };
    let mut out = String::new();
    csv_rows(&mut out, &record(4, 3), &view).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(CSV_HEADER.split(',').count(), 10);
    assert_eq!(
        lines,
        [
            "3000,2,,10,CPUID,4,12,4,4,1600",
            "3000,2,,30,IO_INSTRUCTION,3,12,3,3,1500",
            "3000,2,,,outside,0,20,30,2,1000",
            "3000,2,,,total,7,44,37,9,4100",
        ]
    );
    let mut j = String::new();
    json(&mut j, &record(4, 3), &view).unwrap();
    assert_eq!(
        j,
        "{\"vm\":2,\"vcpu\":null,\"time_ms\":3000,\"interval_ms\":1000,\"runs\":4,\
         \"user_exits\":3,\"reasons\":[\
         {\"reason\":10,\"name\":\"CPUID\",\"exits\":4,\"vmreads\":12,\"vmwrites\":4,\
         \"vmx_other\":4,\"cycles\":1600},\
         {\"reason\":30,\"name\":\"IO_INSTRUCTION\",\"exits\":3,\"vmreads\":12,\"vmwrites\":3,\
         \"vmx_other\":3,\"cycles\":1500}],\
         \"outside\":{\"exits\":0,\"vmreads\":20,\"vmwrites\":30,\"vmx_other\":2,\"cycles\":1000},\
         \"total\":{\"exits\":7,\"vmreads\":44,\"vmwrites\":37,\"vmx_other\":9,\"cycles\":4100}}\n"
    );
    // An undefined reason number has a null name.
    let mut s = VcpuStats::new();
    s.per_reason[35].exits = 1;
    let mut j = String::new();
    json(&mut j, &s, &view).unwrap();
    assert!(
        j.contains("{\"reason\":35,\"name\":null,\"exits\":1"),
        "{j}"
    );
}

#[test]
fn svg_has_one_bar_stack_per_reason_and_the_timeline() {
    let mut out = String::new();
    crate::svg::chart(&mut out, &record(10, 10), Scope::All, &[100, 300, 200]).unwrap();
    assert!(out.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(out.ends_with("</svg>\n"));
    // Two reasons x three parts; the outside work is not a bar; plus one legend swatch each.
    assert_eq!(out.matches("<rect x=").count(), 2 * 3 + 3);
    assert!(
        out.contains("<title>CPUID: 3.00 VMREAD/exit</title>"),
        "{out}"
    );
    assert!(out.contains(">6.00</text>"), "IO total per exit: {out}");
    // Three timeline points, the highest at the top of the plot.
    let points = out
        .split("points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap();
    let ys: Vec<u64> = points
        .split_whitespace()
        .map(|p| p.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ys.len(), 3);
    assert!(ys[1] < ys[2] && ys[2] < ys[0], "{ys:?}");
    let mut empty = String::new();
    crate::svg::chart(&mut empty, &VcpuStats::new(), Scope::All, &[]).unwrap();
    assert!(empty.contains("no exits") && empty.contains("no timeline"));
}

#[test]
fn monitor_sums_deltas_keeps_busy_vcpus_and_records_rates() {
    let a = Fake::new(
        0,
        0,
        vec![
            Ok(record(10, 0)),
            Ok(record(30, 0)),
            Err(true),
            Ok(record(60, 0)),
        ],
    );
    let b = Fake::new(
        0,
        1,
        vec![
            Ok(record(0, 5)),
            Ok(record(0, 15)),
            Ok(record(0, 15)),
            Err(false),
        ],
    );
    let mut m = Monitor::new(vec![a, b]);
    // First tick: since reset, no rate.
    let t = m.tick(None);
    assert_eq!((t.interval.total.exits, t.total.total.exits), (15, 15));
    assert!(m.history().is_empty());
    // Second: +20 CPUID, +10 IO in 500 ms = 60 exits/s.
    let t = m.tick(Some(500));
    assert_eq!(t.interval.per_reason[10].exits, 20);
    assert_eq!(t.interval.per_reason[30].exits, 10);
    assert_eq!(t.total.total.exits, 45);
    assert_eq!(m.history(), [60]);
    // Third: vCPU 0 busy (its last answer still counts in the total), vCPU 1 idle.
    let t = m.tick(Some(1000));
    assert_eq!(
        (t.busy, t.interval.total.exits, t.total.total.exits),
        (1, 0, 45)
    );
    // Fourth: vCPU 0 answers again (+30 since its last answer), vCPU 1 fails.
    let t = m.tick(Some(1000));
    assert_eq!(t.interval.per_reason[10].exits, 30);
    assert_eq!(t.errors, ["vm 0 vcpu 1: gone"]);
    assert_eq!(m.history(), [60, 0, 30]);
    assert!(m.reset().is_empty());
    assert!(m.sources().iter().all(|s| *s.resets.borrow() == 1));
}

#[test]
fn reasons_parse_by_name_or_number() {
    use crate::reasons::parse;
    assert_eq!(parse("cpuid"), Some(10));
    assert_eq!(parse("EXIT_REASON_IO_INSTRUCTION"), Some(30));
    assert_eq!(parse("48"), Some(48));
    assert_eq!(parse("80"), None);
    assert_eq!(parse("35"), Some(35));
    assert_eq!(parse("bogus"), None);
    assert_eq!(parse(""), None);
}

#[test]
fn field_table_sorts_by_use_and_decodes_the_encoding() {
    use rhax_api::ext::FieldStats;
    let f = |encoding: u32, reads: u64, writes: u64| FieldStats {
        encoding,
        reserved: 0,
        reads,
        writes,
    };
    // GUEST_RIP (0x681e), VM_EXIT_INSTRUCTION_LEN (0x440c), EXIT_QUALIFICATION (0x6400).
    let mut fields = [f(0x440c, 10, 0), f(0x681e, 10, 10), f(0x6400, 10, 0)];
    let mut out = String::new();
    crate::render::fields_table(&mut out, &mut fields, Some(30), 10).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "per-field VMREAD/VMWRITE in IO_INSTRUCTION windows (10 exits):"
    );
    let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[2]),
        [
            "0x681e",
            "guest-state",
            "natural",
            "10",
            "10",
            "1.00",
            "1.00"
        ]
    );
    assert_eq!(cols(lines[3])[..3], ["0x440c", "exit-info", "32-bit"]);
    assert_eq!(cols(lines[4])[..3], ["0x6400", "exit-info", "natural"]);
}
