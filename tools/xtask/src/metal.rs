//! The bare-metal stage: the `tests/metal` kernel on emulated VT-x in Bochs.
//!
//! `cargo xtask metal [--model NAME] [--cpus N] [--megs N] [--timeout SECS] [--arg KEY=VALUE]... [SCENARIO...]`
//! (or `cargo xtask metal --stage`: the metal stage of `cargo xtask test`, every test model)
//! builds the kernel (release, panic=abort, its own Cargo project), puts it and a command line
//! into a ROM that replaces the BIOS (`rom.rs`), writes `bochsrc` and `continue.rc` into
//! `<target>/metal-runs/<model>-<cpus>cpu/`, runs Bochs non-interactively (bochs-vmx.md §4) and
//! parses the kernel's console protocol (see `tests/metal/src/main.rs`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::rom;

/// CPU models of the test stage (ARCHITECTURE.md, "Conventions").
pub const TEST_MODELS: [&str; 3] = [
    "corei7_sandy_bridge_2600k",
    "corei7_skylake_x",
    "corei7_icelake_u",
];
/// Scenarios every test model runs.
pub const TEST_SCENARIOS: &[&str] = &[
    "boot",
    "smp",
    "vmx-caps",
    "negotiate",
    "real-mode",
    "protected-mode",
    "long-mode",
    "ept-violation",
    "preemption-timer",
    "two-vcpus",
    "haxm-qemu",
    "haxm-pmode",
    "haxm-long",
    "haxm-smp",
    "haxm-bad-input",
    "haxm-events",
    "haxm-kick",
    "haxm-hostile",
    "haxm-fpu",
    "haxm-mmio",
    "haxm-vga",
    "haxm-mmio-hostile",
    "haxm-avx",
    "haxm-stat",
    "haxm-quickboot",
];
/// Scenarios only some test models run: the debug session needs a model whose single step
/// works (Bochs 2.7 offers the monitor trap flag on icelake_u but never delivers its exit,
/// docs/reference/bochs-vmx.md). The 100,000-exit MMIO storm (`haxm-mmio-storm`, about 50 s)
/// is left to `cargo xtask metal --model corei7_skylake_x haxm-mmio-storm` to keep CI under
/// its 30 minutes; `haxm-mmio-hostile` runs the same phases with a 4,000-exit storm on every
/// model. `haxm-apic` (the in-kernel APIC, issue 12) runs on the model with virtual-interrupt
/// delivery (skylake_x) and the one without (sandy_bridge: rhax's injection path).
pub const MODEL_EXTRAS: &[(&str, &[&str])] = &[
    ("corei7_sandy_bridge_2600k", &["haxm-debug", "haxm-apic"]),
    ("corei7_skylake_x", &["haxm-debug", "haxm-apic"]),
];
/// Wall-clock limit of one model's run in the test stage.
const STAGE_TIMEOUT_SECS: u64 = 900;
/// A model without unrestricted guest, where rhax must refuse cleanly (scenario `refuse`).
pub const REFUSE_MODEL: &str = "corei5_lynnfield_750";
/// Bochs's instructions per emulated second (bochsrc `ips`); its TSC counts instructions.
const IPS: u64 = 100_000_000;

/// One Bochs run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Bochs CPU model (`cpu: model=`).
    pub model: String,
    /// Emulated CPUs.
    pub cpus: u32,
    /// RAM in MiB.
    pub megs: u32,
    /// Scenarios (the kernel's `scenarios=`).
    pub scenarios: Vec<String>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Boot modules in the ROM (the `vmm` scenario's guest and its modules).
    pub modules: Vec<rom::Module>,
    /// More `key=value` words for the kernel's command line.
    pub extra_args: Vec<String>,
}

impl RunConfig {
    /// `scenarios` on `model`: 2 CPUs, 128 MiB, 120 s.
    pub fn new(model: &str, scenarios: &[&str]) -> Self {
        Self {
            model: model.into(),
            cpus: 2,
            megs: 128,
            scenarios: scenarios.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(120),
            modules: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct RunReport {
    /// `(scenario, milliseconds from start line to result line, info)`.
    pub passed: Vec<(String, f64, String)>,
    /// `(scenario, reason)`.
    pub failed: Vec<(String, String)>,
    /// `(name, value, unit)` from `bench:` lines.
    pub bench: Vec<(String, String, String)>,
    /// Host seconds from starting Bochs to the kernel's first line.
    pub boot_s: Option<f64>,
    /// Host seconds for the whole run.
    pub total_s: f64,
    /// Why the run did not end cleanly, if it did not.
    pub died: Option<String>,
    /// Every console line, for callers that post-process (demo).
    pub lines: Vec<String>,
}

impl RunReport {
    /// True when every scenario passed and the run ended cleanly.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.died.is_none()
    }
}

/// `cargo xtask metal ...`.
pub fn main(args: &[String]) -> crate::Result {
    // `--stage`: exactly what `cargo xtask test` runs, without the host checks before it.
    if args.iter().any(|a| a == "--stage") {
        return test_stage();
    }
    if args.first().is_some_and(|a| a == "vmm") {
        return crate::vmm::main(&args[1..]);
    }
    let mut cfg = RunConfig::new("corei7_skylake_x", &[]);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--model" => cfg.model = value("--model")?,
            "--cpus" => {
                cfg.cpus = value("--cpus")?
                    .parse()
                    .map_err(|e| format!("--cpus: {e}"))?
            }
            "--megs" => {
                cfg.megs = value("--megs")?
                    .parse()
                    .map_err(|e| format!("--megs: {e}"))?
            }
            "--timeout" => {
                cfg.timeout = Duration::from_secs(
                    value("--timeout")?
                        .parse()
                        .map_err(|e| format!("--timeout: {e}"))?,
                )
            }
            // A `key=value` word for the kernel's command line (e.g. `--arg iters=100`).
            "--arg" => cfg.extra_args.push(value("--arg")?),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => cfg.scenarios.push(s.into()),
        }
    }
    if cfg.scenarios.is_empty() {
        cfg.scenarios = TEST_SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    let kernel = build_kernel()?;
    let report = run(&kernel, &cfg)?;
    summary(std::slice::from_ref(&(cfg, report)))
}

/// The metal part of `cargo xtask test`: every scenario on the three test models.
pub fn test_stage() -> crate::Result {
    let kernel = build_kernel()?;
    let mut results = Vec::new();
    for model in TEST_MODELS {
        let mut list: Vec<&str> = TEST_SCENARIOS.to_vec();
        for (m, extra) in MODEL_EXTRAS {
            if *m == model {
                list.extend_from_slice(extra);
            }
        }
        let mut cfg = RunConfig::new(model, &list);
        cfg.timeout = Duration::from_secs(STAGE_TIMEOUT_SECS);
        let report = run(&kernel, &cfg)?;
        results.push((cfg, report));
    }
    let cfg = RunConfig::new(REFUSE_MODEL, &["boot", "refuse"]);
    let report = run(&kernel, &cfg)?;
    results.push((cfg, report));
    summary(&results)
}

/// The main job: boot rhax-metal in Bochs and show what it does, then the per-exit-reason
/// statistics table when the kernel printed `exit-stats:` lines.
pub fn demo() -> crate::Result {
    let kernel = build_kernel()?;
    let cfg = RunConfig::new("corei7_skylake_x", &["boot", "smp", "demo"]);
    let report = run(&kernel, &cfg)?;
    let table = exit_stats_table(&report.lines);
    if !table.is_empty() {
        println!("{table}");
    }
    summary(std::slice::from_ref(&(cfg, report)))
}

/// Formats the kernel's `exit-stats: REASON EXITS VMREADS VMWRITES` lines (VMX instructions
/// counted by rhax-core per exit reason) as a table with per-exit ratios.
pub fn exit_stats_table(lines: &[String]) -> String {
    let rows: Vec<(&str, u64, u64, u64)> = lines
        .iter()
        .filter_map(|l| {
            let mut f = l.strip_prefix("exit-stats: ")?.split_whitespace();
            let reason = f.next()?;
            let mut n = || f.next()?.parse::<u64>().ok();
            Some((reason, n()?, n()?, n()?))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{:<24} {:>10} {:>12} {:>13}\n",
        "exit reason", "exits", "VMREAD/exit", "VMWRITE/exit"
    );
    let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let (mut te, mut tr, mut tw) = (0, 0, 0);
    for (reason, exits, reads, writes) in rows {
        if exits == 0 {
            // Work before the first exit (VMCS setup, VMLAUNCH): absolute counts, not ratios.
            out += &format!(
                "{:<24} {:>10} {:>12} {:>13}\n",
                format!("{reason} (total)"),
                "-",
                reads,
                writes
            );
            continue;
        }
        out += &format!(
            "{reason:<24} {exits:>10} {:>12.2} {:>13.2}\n",
            per(reads, exits),
            per(writes, exits)
        );
        (te, tr, tw) = (te + exits, tr + reads, tw + writes);
    }
    out += &format!(
        "{:<24} {te:>10} {:>12.2} {:>13.2}",
        "total",
        per(tr, te),
        per(tw, te)
    );
    out
}

/// Prints per-run timings and the final `metal: N passed, M failed` line; fails if anything did.
fn summary(results: &[(RunConfig, RunReport)]) -> crate::Result {
    let (mut passed, mut failed) = (0, 0);
    for (cfg, r) in results {
        let boot = r.boot_s.map_or("-".into(), |s| format!("{s:.3} s"));
        println!(
            "metal: {} x{}: boot {boot}, total {:.3} s, {} passed, {} failed",
            cfg.model,
            cfg.cpus,
            r.total_s,
            r.passed.len(),
            r.failed.len()
        );
        for (name, ms, _) in &r.passed {
            println!("metal:   PASS {name} ({ms:.1} ms)");
        }
        for (name, reason) in &r.failed {
            println!("metal:   FAIL {name}: {reason}");
        }
        for (name, value, unit) in &r.bench {
            println!("bench: {name} {value} {unit}");
        }
        if let Some(d) = &r.died {
            println!("metal:   run died: {d}");
        }
        passed += r.passed.len();
        failed += r.failed.len() + usize::from(r.died.is_some() && r.failed.is_empty());
    }
    println!("metal: {passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} metal scenario(s) failed"))
    }
}

fn target_dir() -> PathBuf {
    crate::target_dir()
}

/// The kernel's target (set in `tests/metal/.cargo/config.toml`): soft-float, no red zone.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Builds the kernel with its own Cargo project (its `.cargo/config.toml` applies only when
/// cargo runs inside `tests/metal`) and returns the ELF path.
pub fn build_kernel() -> crate::Result<PathBuf> {
    crate::ensure_rust_target(KERNEL_TARGET)?;
    let dir = crate::workspace_root().join("tests/metal");
    let target = target_dir().join("metal");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: building the metal kernel (tests/metal)");
    let status = Command::new(cargo)
        .args(["build", "--release", "-q"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building tests/metal failed ({status})"));
    }
    Ok(target
        .join(KERNEL_TARGET)
        .join("release")
        .join("rhax-metal"))
}

/// Bochs's `term` display, its stdout not a tty, opens a pty of its own and writes the screen
/// to the master ("Bochs connected to screen "/dev/pts/N"" on stderr, given here as `text`).
/// Nothing reads the slave, so once the slave's input buffer is full Bochs blocks in
/// `n_tty_write` for good and the emulated machine stops: Linux-stage runs longer than 6-7
/// minutes froze and hit their timeout (metal runs are shorter but use the same display).
/// Once the name is in `text`, this puts the slave in raw mode without echo and a thread reads
/// and discards what Bochs writes, until Bochs closes the master. Returns whether the name was
/// found (the caller stops asking).
pub(crate) fn drain_screen(text: &str) -> bool {
    let Some(pts) = text
        .split("connected to screen \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .filter(|p| p.starts_with("/dev/pts/"))
        .map(str::to_string)
    else {
        return false;
    };
    // Raw: reads return what is there, not only whole lines; -echo: what Bochs writes is
    // not echoed back to it as keyboard input.
    let raw = Command::new("stty")
        .args(["-F", &pts, "raw", "-echo"])
        .stderr(Stdio::null())
        .status();
    if !raw.is_ok_and(|s| s.success()) {
        eprintln!("xtask: stty -F {pts} failed: Bochs may block on its screen");
    }
    std::thread::spawn(move || {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NOCTTY (0o400 on Linux): the slave must not become xtask's controlling tty.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(0o400)
            .open(&pts)
        {
            let mut buf = [0u8; 4096];
            while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    true
}

/// Makes sure `bochs-bin` exists: installs Debian's packages when root, else says what to do.
pub(crate) fn ensure_bochs() -> crate::Result {
    crate::apt::ensure(
        &["bochs-bin"],
        &["bochs", "bochs-term", "bochsbios", "vgabios"],
    )
}

/// The kernel command line for a run.
pub fn cmdline(cfg: &RunConfig) -> String {
    let mut line = format!(
        "mem={}M cpus={} tsc_hz={IPS} scenarios={}",
        cfg.megs,
        cfg.cpus,
        cfg.scenarios.join(",")
    );
    for a in &cfg.extra_args {
        line += " ";
        line += a;
    }
    line
}

/// Boots the kernel in Bochs with `cfg` and collects the results.
pub fn run(kernel: &Path, cfg: &RunConfig) -> crate::Result<RunReport> {
    ensure_bochs()?;
    let dir = target_dir()
        .join("metal-runs")
        .join(format!("{}-{}cpu", cfg.model, cfg.cpus));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let elf = std::fs::read(kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    let image = rom::build(
        &rom::parse_elf(&elf)?,
        &cmdline(cfg),
        Some(u64::from(cfg.megs) << 20),
        &cfg.modules,
    )?;
    let rom_path = dir.join("rom.bin");
    let log_path = dir.join("bochs.log");
    let _ = std::fs::remove_file(&log_path);
    std::fs::write(&rom_path, &image).map_err(|e| format!("{}: {e}", rom_path.display()))?;
    let template_path = crate::workspace_root().join("tests/metal/bochsrc-rom.txt");
    let template = std::fs::read_to_string(&template_path)
        .map_err(|e| format!("{}: {e}", template_path.display()))?;
    let bochsrc = template
        .replace("$HV_MEGS", &cfg.megs.to_string())
        .replace("$HV_ROM", &rom_path.display().to_string())
        .replace("$HV_MODEL", &cfg.model)
        .replace("$HV_CPUS", &cfg.cpus.to_string())
        .replace("$HV_LOG", &log_path.display().to_string());
    std::fs::write(dir.join("bochsrc"), bochsrc).map_err(|e| format!("bochsrc: {e}"))?;
    // `c` runs the simulation; `q` answers the debugger when the magic breakpoint (success)
    // returns control to it (bochs-vmx.md §4).
    std::fs::write(dir.join("continue.rc"), "c\nq\n").map_err(|e| format!("continue.rc: {e}"))?;

    eprintln!(
        "xtask: metal: {} x{} cpus, {} MiB, ROM {} KiB, cmdline \"{}\"",
        cfg.model,
        cfg.cpus,
        cfg.megs,
        image.len() >> 10,
        cmdline(cfg)
    );
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-s",
        "KILL",
        &cfg.timeout.as_secs().to_string(),
        "bochs-bin",
        "-q",
        "-f",
        "bochsrc",
        "-rc",
        "continue.rc",
    ])
    .current_dir(&dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if std::env::var_os("TERM").is_none_or(|t| t.is_empty()) {
        cmd.env("TERM", "dumb");
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run bochs-bin: {e}"))?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let mut buf = [0u8; 4096];
        let mut draining = false;
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.extend_from_slice(&buf[..n]);
            if !draining {
                draining = drain_screen(&String::from_utf8_lossy(&s));
            }
        }
        s
    });
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut report = RunReport::default();
    let mut started: Option<(String, Instant)> = None;
    let mut timer: Option<(String, Instant)> = None;
    let mut done = false;
    let tag = cfg
        .model
        .trim_start_matches("corei7_")
        .trim_start_matches("corei5_");
    for raw in BufReader::new(stdout).split(b'\n') {
        let Ok(raw) = raw else { break };
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        let t = start.elapsed().as_secs_f64();
        let k = kernel_part(&line);
        let Some(k) = k else {
            if !line.is_empty() {
                println!("[{tag} {t:7.3}] bochs| {line}");
            }
            continue;
        };
        println!("[{tag} {t:7.3}] {k}");
        report.lines.push(k.to_string());
        if report.boot_s.is_none() {
            report.boot_s = Some(t);
        }
        if let Some(rest) = k.strip_prefix("scenario ") {
            let Some((name, result)) = rest.split_once(": ") else {
                continue;
            };
            if result == "start" {
                started = Some((name.to_string(), Instant::now()));
            } else if let Some(info) = result.strip_prefix("PASS") {
                let ms = started
                    .take()
                    .map_or(0.0, |(_, t0)| t0.elapsed().as_secs_f64() * 1e3);
                report
                    .passed
                    .push((name.to_string(), ms, info.trim().to_string()));
            } else if let Some(reason) = result.strip_prefix("FAIL") {
                started = None;
                report
                    .failed
                    .push((name.to_string(), reason.trim().to_string()));
            }
        } else if let Some(b) = k.strip_prefix("bench: ") {
            let mut f = b.split_whitespace();
            if let (Some(n), Some(v)) = (f.next(), f.next()) {
                report
                    .bench
                    .push((n.into(), v.into(), f.collect::<Vec<_>>().join(" ")));
            }
        } else if let Some(t) = k.strip_prefix("bench-timer: ") {
            // `bench-timer: NAME start` ... `bench-timer: NAME stop N`: host wall time of N
            // round trips, measured here because the guest's TSC counts instructions.
            let f: Vec<&str> = t.split_whitespace().collect();
            match f.as_slice() {
                [name, "start"] => timer = Some((name.to_string(), Instant::now())),
                [name, "stop", n] => {
                    let n: f64 = n.parse().unwrap_or(0.0);
                    if let Some((_, t0)) = timer.take().filter(|(t, _)| t == name) {
                        let secs = t0.elapsed().as_secs_f64();
                        let lines = [
                            format!("bench: {name}-wall {secs:.3} s"),
                            format!(
                                "bench: {name}-wall-per-exit {:.2} us/exit",
                                secs * 1e6 / n.max(1.0)
                            ),
                        ];
                        for l in lines {
                            println!("[{tag} {:7.3}] {l}", start.elapsed().as_secs_f64());
                            let mut f = l["bench: ".len()..].split_whitespace();
                            if let (Some(a), Some(b), Some(c)) = (f.next(), f.next(), f.next()) {
                                report.bench.push((a.into(), b.into(), c.into()));
                            }
                            report.lines.push(l);
                        }
                    }
                }
                _ => {}
            }
        } else if k.starts_with("metal-done:") {
            done = true;
        } else if let Some(reason) = k.strip_prefix("metal-fatal: ") {
            if !done {
                report.died = Some(reason.to_string());
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for bochs: {e}"))?;
    report.total_s = start.elapsed().as_secs_f64();
    let err = err_thread.join().unwrap_or_default();
    std::fs::write(dir.join("bochs.stderr"), &err).map_err(|e| format!("bochs.stderr: {e}"))?;
    std::fs::write(dir.join("console.log"), report.lines.join("\n") + "\n")
        .map_err(|e| format!("console.log: {e}"))?;
    if let Some((name, _)) = started {
        report
            .failed
            .push((name, "run died during the scenario".into()));
    }
    if report.died.is_none() && !done {
        report.died = Some(match status.code() {
            Some(137) | None => format!("killed after the {} s timeout", cfg.timeout.as_secs()),
            Some(c) => format!("Bochs exited with status {c} before the kernel finished"),
        });
    }
    // Success is the magic breakpoint + `q` (status 0); the shutdown port means failure (1).
    if report.died.is_none() && report.failed.is_empty() && !status.success() {
        report.died = Some(format!(
            "Bochs exited with {status} although every scenario passed"
        ));
    }
    if !report.ok() {
        print_log_diagnostics(&log_path, &err);
    }
    Ok(report)
}

/// The kernel's part of a stdout line: Bochs prints its own lines there too, and kernel output
/// may follow a debugger prompt (`<bochs:1> `). Kernel lines start with `words: ` (lowercase
/// word, digits and `-`), `FATAL:` or `PANIC:`.
fn kernel_part(line: &str) -> Option<&str> {
    let mut rest = line;
    while let Some(r) = rest.strip_prefix("<bochs:") {
        rest = r.split_once("> ").map_or("", |(_, r)| r);
    }
    let word = rest.split_once(": ").map(|(w, _)| w)?;
    let kernel_word = !word.is_empty()
        && word.starts_with(|c: char| c.is_ascii_lowercase())
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == ' ');
    let kernel_word = kernel_word || word == "FATAL" || word == "PANIC";
    kernel_word.then_some(rest)
}

/// Prints what Bochs said about the failure: VM-entry check failures, VMfail reasons, panics.
fn print_log_diagnostics(log: &Path, stderr: &[u8]) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let interesting = |l: &&str| {
        l.contains("VMENTER FAIL")
            || l.contains("VMFAIL")
            || l.contains("PANIC")
            || l.contains("VMEXIT") && l.contains("ERROR")
    };
    let lines: Vec<&str> = text.lines().filter(interesting).collect();
    println!(
        "metal: Bochs log {} ({} notable lines):",
        log.display(),
        lines.len()
    );
    for l in lines.iter().take(40) {
        println!("metal: log| {l}");
    }
    for l in String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("i["))
        .take(20)
    {
        println!("metal: stderr| {l}");
    }
}

#[cfg(test)]
mod tests {
    use super::{exit_stats_table, kernel_part};

    #[test]
    fn exit_stats_table_has_ratios_and_total() {
        let lines: Vec<String> = [
            "exit-stats: CPUID 100 300 100",
            "scenario x: PASS",
            "exit-stats: IO_INSTRUCTION 50 250 0",
            "exit-stats: SETUP 0 7 200",
            "exit-stats: broken line",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = exit_stats_table(&lines);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 5, "{t}");
        assert!(rows[3].starts_with("SETUP (total)") && rows[3].contains("200"));
        assert!(
            rows[1].starts_with("CPUID") && rows[1].contains("3.00") && rows[1].contains("1.00")
        );
        assert!(rows[2].starts_with("IO_INSTRUCTION") && rows[2].contains("5.00"));
        // 550 VMREADs and 100 VMWRITEs over 150 exits (setup work excluded).
        assert!(
            rows[4].starts_with("total") && rows[4].contains("150") && rows[4].contains("3.67")
        );
        assert!(rows[4].contains("0.67"));
        assert_eq!(exit_stats_table(&["bench: a 1 us".to_string()]), "");
    }

    #[test]
    fn separates_kernel_lines_from_bochs_lines() {
        assert_eq!(
            kernel_part("scenario boot: PASS x"),
            Some("scenario boot: PASS x")
        );
        assert_eq!(
            kernel_part("<bochs:1> rhax-metal: boot"),
            Some("rhax-metal: boot")
        );
        assert_eq!(
            kernel_part("bench: cpuid-exits 12 us"),
            Some("bench: cpuid-exits 12 us")
        );
        assert_eq!(kernel_part("FATAL: exception"), Some("FATAL: exception"));
        assert_eq!(kernel_part("(0) Magic breakpoint"), None);
        assert_eq!(kernel_part("Next at t=1548634"), None);
        assert_eq!(
            kernel_part("00001224135p[UNMAP ] >>PANIC<< Shutdown: x"),
            None
        );
        assert_eq!(kernel_part("Bochs x86 Emulator 2.7"), None);
    }
}
