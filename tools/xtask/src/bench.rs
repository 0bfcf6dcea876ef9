//! `cargo xtask bench [--short]`: rhax's exit costs beside the anchors' KVM and HAXM figures
//! (issue 13, item 2).
//!
//! Runs the metal kernel's `bench-table` scenario (`tests/metal/src/bench_table.rs`) and
//! `haxm-kick` on the three test models, calibrates, and prints one table: per exit kind, rhax's
//! emulated instructions per round trip on each model, VMREAD/VMWRITE per exit, and the anchors'
//! figures for the same work (`docs/bench/anchors.tsv`, copied with their source from
//! `docs/reference/performance-anchors.md` §0b). Writes the table as JSON, Markdown and an SVG
//! chart (rhax vs KVM vs HAXM) under `docs/bench/`.
//!
//! Method: Bochs's TSC advances once per emulated instruction, so a guest loop's RDTSC delta
//! over N iterations counts guest plus hypervisor instructions. The calibration loop (`nop`,
//! no exit) must measure exactly its own 3 instructions per iteration, else the run fails; a
//! kind's round trip is its per-iteration figure minus the loop's non-exiting guest
//! instructions (the exiting one is part of the round trip, as in the anchors).
//!
//! `--short` (what CI runs): few iterations, one model, output under `target/bench/`; checks
//! that every row is produced, not its numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::metal::{self, RunConfig, TEST_MODELS};

/// The model of the anchors' measurements (and of `--short`).
const ANCHOR_MODEL: &str = "corei7_skylake_x";

/// One `bench-row:` line.
#[derive(Clone, Debug, Default, PartialEq)]
struct Raw {
    iters: u64,
    tsc: u64,
    guest: u64,
    exiting: u64,
    exits: u64,
    vmreads: u64,
    vmwrites: u64,
    /// The user side's own instructions over the loop (HAXM kinds; a second, measuring pass).
    user: u64,
}

impl Raw {
    /// Emulated instructions per iteration minus the loop's non-exiting guest instructions.
    fn round_trip(&self) -> f64 {
        self.tsc as f64 / self.iters.max(1) as f64 - (self.guest - self.exiting) as f64
    }

    fn per_exit(&self, v: u64) -> Option<f64> {
        (self.exits > 0).then(|| v as f64 / self.exits as f64)
    }
}

/// Parses `bench-row: kind=K iters=N ...` lines into `kind -> Raw`.
fn parse_rows(lines: &[String]) -> crate::Result<BTreeMap<String, Raw>> {
    let mut rows = BTreeMap::new();
    for line in lines {
        let Some(rest) = line.trim().strip_prefix("bench-row: ") else {
            continue;
        };
        let mut kind = None;
        let mut r = Raw::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("bench-row: bad field {kv:?} in {line:?}"))?;
            if k == "kind" {
                kind = Some(v.to_string());
                continue;
            }
            let n: u64 = v
                .parse()
                .map_err(|_| format!("bench-row: {k}={v} is not a number"))?;
            match k {
                "iters" => r.iters = n,
                "tsc" => r.tsc = n,
                "guest" => r.guest = n,
                "exiting" => r.exiting = n,
                "exits" => r.exits = n,
                "vmreads" => r.vmreads = n,
                "vmwrites" => r.vmwrites = n,
                "user" => r.user = n,
                _ => {}
            }
        }
        let kind = kind.ok_or_else(|| format!("bench-row without kind: {line:?}"))?;
        if r.iters == 0 || r.guest < r.exiting {
            return Err(format!("bench-row {kind}: inconsistent {line:?}"));
        }
        rows.insert(kind, r);
    }
    Ok(rows)
}

/// A row of the table.
struct Kind {
    id: &'static str,
    label: &'static str,
}

const KINDS: &[Kind] = &[
    Kind {
        id: "core-cpuid",
        label: "CPUID, raw core loop",
    },
    Kind {
        id: "core-out",
        label: "OUT, raw core loop",
    },
    Kind {
        id: "haxm-out",
        label: "OUT served by the user side (HAXM RUN)",
    },
    Kind {
        id: "haxm-in",
        label: "IN served by the user side (HAXM RUN)",
    },
    Kind {
        id: "haxm-hlt",
        label: "HLT to the user side (HAXM RUN)",
    },
    Kind {
        id: "haxm-mmio-read",
        label: "FAST_MMIO read, byte MOV (fast path)",
    },
    Kind {
        id: "haxm-mmio-write",
        label: "FAST_MMIO write, byte MOV (fast path)",
    },
    Kind {
        id: "haxm-mmio-read32",
        label: "FAST_MMIO read, dword MOV (fast path)",
    },
    Kind {
        id: "haxm-mmio-write32",
        label: "FAST_MMIO write, dword MOV (fast path)",
    },
    Kind {
        id: "haxm-mmio-read32-emul",
        label: "FAST_MMIO read, dword MOV (emulator)",
    },
    Kind {
        id: "haxm-mmio-write32-emul",
        label: "FAST_MMIO write, dword MOV (emulator)",
    },
    Kind {
        id: "haxm-mmio-rmw",
        label: "MMIO ADD, read+write (emulator, 2 exits)",
    },
    Kind {
        id: "haxm-inject",
        label: "interrupt injection (+ on a HLT round trip)",
    },
    Kind {
        id: "haxm-window",
        label: "interrupt window (+ on an OUT round trip)",
    },
    Kind {
        id: "kick",
        label: "kick latency (kick to RUN's return)",
    },
];

/// Derived kinds: their loop's round trip minus the base kind's (the injection rides on a HLT
/// exit, the window exit on an OUT exit).
const DERIVED: &[(&str, &str)] = &[("haxm-inject", "haxm-hlt"), ("haxm-window", "haxm-out")];

/// One model's figures for one kind.
#[derive(Clone, Copy, Debug, Default)]
struct Cell {
    round_trip: f64,
    vmreads: Option<f64>,
    vmwrites: Option<f64>,
    /// Of the round trip, the user side's own share (the harness's VMM code, userlib, the
    /// transport's own code), per iteration; `None` where nothing runs there.
    user: Option<f64>,
}

/// An anchor: `(system, round trip, note)`.
type Anchor = (String, f64, String);

fn anchors() -> crate::Result<BTreeMap<String, Vec<Anchor>>> {
    let path = crate::workspace_root().join("docs/bench/anchors.tsv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: BTreeMap<String, Vec<Anchor>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        let [kind, system, rt, _reads, _writes, note] = f[..] else {
            return Err(format!("{}: bad line {line:?}", path.display()));
        };
        let rt: f64 = rt
            .parse()
            .map_err(|_| format!("{}: bad round trip in {line:?}", path.display()))?;
        out.entry(kind.into())
            .or_default()
            .push((system.into(), rt, note.into()));
    }
    Ok(out)
}

/// The systems the anchors name, in column order.
const SYSTEMS: [&str; 4] = ["KVM", "KVM mitigations=off", "HAXM", "floor"];

/// Calibrated cells of one model's run.
fn cells(
    model: &str,
    lines: &[String],
    bench: &[(String, String, String)],
) -> crate::Result<BTreeMap<&'static str, Cell>> {
    let rows = parse_rows(lines)?;
    let cal = rows
        .get("calibrate")
        .ok_or_else(|| format!("{model}: no calibration row"))?;
    let per_iter = cal.tsc as f64 / cal.iters as f64;
    // The no-exit loop must count exactly its own instructions (up to the RDTSC pair's few).
    if (per_iter - cal.guest as f64).abs() * cal.iters as f64 > 8.0 {
        return Err(format!(
            "{model}: calibration failed: the no-exit loop measured {per_iter:.3} instructions \
             per iteration, expected {}",
            cal.guest
        ));
    }
    let mut out = BTreeMap::new();
    for k in KINDS {
        if k.id == "kick" {
            let avg = bench
                .iter()
                .find(|(n, _, _)| n == "haxm-kick-latency-avg")
                .and_then(|(_, v, _)| v.parse::<f64>().ok())
                .ok_or_else(|| format!("{model}: no haxm-kick-latency-avg line"))?;
            out.insert(
                k.id,
                Cell {
                    round_trip: avg,
                    vmreads: None,
                    vmwrites: None,
                    user: None,
                },
            );
            continue;
        }
        let r = rows
            .get(k.id)
            .ok_or_else(|| format!("{model}: no bench-row for {}", k.id))?;
        let mut rt = r.round_trip();
        let derived = DERIVED.iter().any(|(d, _)| *d == k.id);
        let user = (r.user > 0 && !derived).then(|| r.user as f64 / r.iters as f64);
        if let Some((_, base)) = DERIVED.iter().find(|(d, _)| *d == k.id) {
            let b = rows
                .get(*base)
                .ok_or_else(|| format!("{model}: no bench-row for {base}"))?;
            rt -= b.round_trip();
        }
        out.insert(
            k.id,
            Cell {
                round_trip: rt,
                vmreads: r.per_exit(r.vmreads),
                vmwrites: r.per_exit(r.vmwrites),
                user,
            },
        );
    }
    Ok(out)
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// The same per-exit count on every model, or the models' values joined by `/`.
fn joined(per_model: &[Option<f64>]) -> String {
    joined_with(per_model, 2)
}

/// [`joined`] with `decimals` decimals.
fn joined_with(per_model: &[Option<f64>], decimals: usize) -> String {
    let s: Vec<String> = per_model.iter().map(|v| fmt_opt(*v, decimals)).collect();
    if s.windows(2).all(|w| w[0] == w[1]) {
        s.first().cloned().unwrap_or_else(|| "-".into())
    } else {
        s.join("/")
    }
}

struct Table {
    models: Vec<String>,
    /// `cells[model][kind]`.
    cells: Vec<BTreeMap<&'static str, Cell>>,
    anchors: BTreeMap<String, Vec<Anchor>>,
}

impl Table {
    fn anchor(&self, kind: &str, system: &str) -> Option<f64> {
        self.anchors
            .get(kind)?
            .iter()
            .find(|a| a.0 == system)
            .map(|a| a.1)
    }

    fn text(&self) -> String {
        let mut out = format!("{:<44}", "exit kind (emulated instructions/round trip)");
        for m in &self.models {
            let short = m.trim_start_matches("corei7_");
            let _ = write!(out, " {short:>13}");
        }
        let _ = write!(
            out,
            " {:>11} {:>12} {:>9}",
            "VMREAD/exit", "VMWRITE/exit", "user side"
        );
        for s in SYSTEMS {
            let _ = write!(out, " {:>9}", s.replace("mitigations=off", "mit-off"));
        }
        out.push('\n');
        for k in KINDS {
            let _ = write!(out, "{:<44}", k.label);
            for c in &self.cells {
                let _ = write!(
                    out,
                    " {:>13}",
                    fmt_opt(c.get(k.id).map(|c| c.round_trip), 1)
                );
            }
            let (reads, writes) = self.vmx_counts(k.id);
            let _ = write!(
                out,
                " {:>11} {:>12} {:>9}",
                joined(&reads),
                joined(&writes),
                joined_with(&self.user_shares(k.id), 1)
            );
            for s in SYSTEMS {
                let _ = write!(out, " {:>9}", fmt_opt(self.anchor(k.id, s), 0));
            }
            out.push('\n');
        }
        out
    }

    /// The VMREAD and VMWRITE counts per exit of kind `id` on every model.
    fn vmx_counts(&self, id: &str) -> (Vec<Option<f64>>, Vec<Option<f64>>) {
        let per = |f: fn(&Cell) -> Option<f64>| {
            self.cells
                .iter()
                .map(|c| c.get(id).and_then(f))
                .collect::<Vec<_>>()
        };
        (per(|c| c.vmreads), per(|c| c.vmwrites))
    }

    /// The user side's share of kind `id`'s round trip on every model.
    fn user_shares(&self, id: &str) -> Vec<Option<f64>> {
        self.cells
            .iter()
            .map(|c| c.get(id).and_then(|c| c.user))
            .collect()
    }

    fn markdown(&self) -> String {
        let mut out = String::from("| exit kind |");
        for m in &self.models {
            let _ = write!(out, " rhax {} |", m.trim_start_matches("corei7_"));
        }
        out.push_str(" VMREAD/exit | VMWRITE/exit | of which the user side |");
        for s in SYSTEMS {
            let _ = write!(out, " {s} |");
        }
        out.push('\n');
        out.push_str(&"|---".repeat(self.models.len() + 4 + SYSTEMS.len()));
        out.push_str("|\n");
        for k in KINDS {
            let _ = write!(out, "| {} |", k.label);
            for c in &self.cells {
                let _ = write!(out, " {} |", fmt_opt(c.get(k.id).map(|c| c.round_trip), 1));
            }
            let (reads, writes) = self.vmx_counts(k.id);
            let _ = write!(
                out,
                " {} | {} | {} |",
                joined(&reads),
                joined(&writes),
                joined_with(&self.user_shares(k.id), 1)
            );
            for s in SYSTEMS {
                let _ = write!(out, " {} |", fmt_opt(self.anchor(k.id, s), 0));
            }
            out.push('\n');
        }
        out
    }

    fn json(&self) -> String {
        let num = |v: Option<f64>| v.map_or_else(|| "null".into(), |v| format!("{v:.2}"));
        let mut out = String::from(
            "{\n  \"unit\": \"emulated instructions per round trip (Bochs TSC, calibrated)\",\n",
        );
        let _ = writeln!(out, "  \"anchors_source\": \"docs/bench/anchors.tsv (docs/reference/performance-anchors.md §0b)\",");
        let models: Vec<String> = self.models.iter().map(|m| format!("\"{m}\"")).collect();
        let _ = writeln!(out, "  \"models\": [{}],", models.join(", "));
        out.push_str("  \"rows\": [\n");
        for (i, k) in KINDS.iter().enumerate() {
            let _ = write!(
                out,
                "    {{\"kind\": \"{}\", \"label\": \"{}\", \"rhax\": {{",
                k.id, k.label
            );
            let per: Vec<String> = self
                .models
                .iter()
                .zip(&self.cells)
                .map(|(m, c)| {
                    let c = c.get(k.id).copied().unwrap_or_default();
                    format!(
                        "\"{m}\": {{\"round_trip\": {}, \"vmreads_per_exit\": {}, \"vmwrites_per_exit\": {}, \"user_side\": {}}}",
                        num(Some(c.round_trip)),
                        num(c.vmreads),
                        num(c.vmwrites),
                        num(c.user)
                    )
                })
                .collect();
            out.push_str(&per.join(", "));
            out.push_str("}, \"anchors\": {");
            let a: Vec<String> = SYSTEMS
                .iter()
                .filter_map(|s| self.anchor(k.id, s).map(|v| format!("\"{s}\": {v:.0}")))
                .collect();
            out.push_str(&a.join(", "));
            out.push_str(if i + 1 < KINDS.len() { "}},\n" } else { "}}\n" });
        }
        out.push_str("  ]\n}\n");
        out
    }

    /// Grouped bars per kind that has an anchor or a figure: rhax (each model), KVM, KVM
    /// mitigations=off, HAXM, the floor. Linear scale.
    fn svg(&self) -> String {
        let kinds: Vec<&Kind> = KINDS.iter().filter(|k| k.id != "kick").collect();
        let mut series: Vec<(String, &str)> = self
            .models
            .iter()
            .zip(["#4477aa", "#66ccee", "#228833"])
            .map(|(m, c)| (format!("rhax {}", m.trim_start_matches("corei7_")), c))
            .collect();
        series.extend(
            SYSTEMS
                .iter()
                .zip(["#ee6677", "#ccbb44", "#aa3377", "#bbbbbb"])
                .map(|(s, c)| (s.to_string(), c)),
        );
        let value = |k: &str, si: usize| -> Option<f64> {
            if si < self.models.len() {
                self.cells.get(si)?.get(k).map(|c| c.round_trip)
            } else {
                self.anchor(k, SYSTEMS[si - self.models.len()])
            }
        };
        let max = kinds
            .iter()
            .flat_map(|k| (0..series.len()).filter_map(move |s| value(k.id, s)))
            .fold(1.0f64, f64::max);
        let (left, top, plot_h, group_w) = (70.0, 50.0, 320.0, 110.0);
        let bar_w = (group_w - 14.0) / series.len() as f64;
        let width = left + group_w * kinds.len() as f64 + 20.0;
        let height = top + plot_h + 170.0;
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"20\" font-size=\"14\">Emulated instructions per exit round trip (Bochs, calibrated): rhax vs KVM vs HAXM</text>\n"
        );
        let base = top + plot_h;
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>",
            width - 20.0
        );
        for t in 0..=4 {
            let v = max * f64::from(t) / 4.0;
            let y = base - plot_h * f64::from(t) / 4.0;
            let _ = writeln!(out, "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\">{v:.0}</text><line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eeeeee\"/>", left - 4.0, width - 20.0);
        }
        for (gi, k) in kinds.iter().enumerate() {
            let gx = left + group_w * gi as f64 + 7.0;
            for (si, (name, colour)) in series.iter().enumerate() {
                let Some(v) = value(k.id, si) else { continue };
                let h = plot_h * v.max(0.0) / max;
                let x = gx + bar_w * si as f64;
                let _ = writeln!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {}: {v:.0}</title></rect>",
                    base - h,
                    bar_w - 1.0,
                    colour,
                    k.label,
                    name
                );
            }
            let lx = gx + group_w / 2.0 - 7.0;
            let _ = writeln!(
                out,
                "<text x=\"{lx:.1}\" y=\"{:.1}\" transform=\"rotate(30 {lx:.1} {:.1})\">{}</text>",
                base + 14.0,
                base + 14.0,
                k.id
            );
        }
        for (i, (name, colour)) in series.iter().enumerate() {
            let x = left + 150.0 * (i % 4) as f64;
            let y = base + 110.0 + 18.0 * (i / 4) as f64;
            let _ = writeln!(out, "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"{y}\">{name}</text>", y - 9.0, x + 14.0);
        }
        out.push_str("</svg>\n");
        out
    }
}

/// `cargo xtask bench [--short]`.
pub fn main(args: &[String]) -> crate::Result {
    let short = args.iter().any(|a| a == "--short");
    if let Some(bad) = args.iter().find(|a| *a != "--short") {
        return Err(format!(
            "bench: unknown argument {bad} (usage: cargo xtask bench [--short])"
        ));
    }
    let started = Instant::now();
    let models: Vec<&str> = if short {
        vec![ANCHOR_MODEL]
    } else {
        TEST_MODELS.to_vec()
    };
    let scenario = if short {
        "bench-table-short"
    } else {
        "bench-table"
    };
    let kernel = metal::build_kernel()?;
    let mut cells_per_model = Vec::new();
    for model in &models {
        let mut cfg = RunConfig::new(model, &[scenario, "haxm-kick"]);
        cfg.timeout = Duration::from_secs(if short { 120 } else { 600 });
        let report = metal::run(&kernel, &cfg)?;
        if !report.ok() {
            return Err(format!(
                "{model}: bench run failed: {:?} {:?}",
                report.failed, report.died
            ));
        }
        cells_per_model.push(cells(model, &report.lines, &report.bench)?);
    }
    let table = Table {
        models: models.iter().map(|m| m.to_string()).collect(),
        cells: cells_per_model,
        anchors: anchors()?,
    };
    println!("{}", table.text());
    let dir: PathBuf = if short {
        crate::target_dir().join("bench")
    } else {
        crate::workspace_root().join("docs/bench")
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text) in [
        ("bench.json", table.json()),
        ("bench.md", table.markdown()),
        ("bench.svg", table.svg()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    println!(
        "xtask: bench: {} rows on {} model(s), written to {} in {:.0} s",
        KINDS.len(),
        models.len(),
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_calibrate() {
        let lines: Vec<String> = [
            "bench-row: kind=calibrate iters=100 tsc=300 guest=3 exiting=0 reason=30 exits=0 vmreads=0 vmwrites=0 runs=1",
            "noise",
            "bench-row: kind=haxm-out iters=100 tsc=256635 guest=3 exiting=1 reason=30 exits=100 vmreads=600 vmwrites=200 runs=101",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rows = parse_rows(&lines).unwrap();
        assert_eq!(rows.len(), 2);
        let out = &rows["haxm-out"];
        assert!((out.round_trip() - (2566.35 - 2.0)).abs() < 1e-9);
        assert_eq!(out.per_exit(out.vmreads), Some(6.0));
        assert!(parse_rows(&["bench-row: kind=x iters=zero".to_string()]).is_err());
        // A calibration loop that does not count its own instructions fails the run.
        let bad = vec![
            "bench-row: kind=calibrate iters=100 tsc=400 guest=3 exiting=0 reason=30 exits=0 vmreads=0 vmwrites=0 runs=1".to_string(),
        ];
        assert!(cells("m", &bad, &[])
            .unwrap_err()
            .contains("calibration failed"));
    }

    #[test]
    fn anchors_file_has_the_headline_figures() {
        let a = anchors().unwrap();
        let get = |k: &str, s: &str| a[k].iter().find(|x| x.0 == s).map(|x| x.1);
        assert_eq!(get("core-cpuid", "KVM"), Some(1054.0));
        assert_eq!(get("haxm-out", "KVM mitigations=off"), Some(2960.0));
        assert_eq!(get("haxm-out", "HAXM"), Some(5781.0));
    }
}
