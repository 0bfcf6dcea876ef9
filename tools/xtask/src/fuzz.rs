//! `cargo xtask fuzz`: coverage-guided fuzzing of rhax-core with cargo-fuzz (libFuzzer).
//!
//! ```text
//! cargo xtask fuzz [TARGET...] [--time S] [--ci] [--asan] [--cmin]
//! ```
//!
//! * Targets (all by default): `dispatch` (IOCTL sequences through the dispatcher with a
//!   scripted guest), `decoder` (the MMIO fast path's decoder against iced-x86), `emulator`
//!   (the full MMIO emulator: decode and execute), `pagewalk` (the guest
//!   page walker against a reference walker). The harnesses are in `fuzz/src/`.
//! * `--time S`: seconds per target (default 600). The campaign starts from the checked-in
//!   seed corpus `fuzz/corpus/TARGET` and keeps what it finds in `fuzz/corpus-work/TARGET`
//!   (not committed; `--cmin` merges it back, minimized, into the seed corpus).
//! * `--ci`: every target for 30 s from the seed corpus only (a fresh work folder), for CI.
//! * `--asan`: build with AddressSanitizer (about 2.5 times slower). The default build has no
//!   sanitizer: rhax-core's unsafe code is small and the harness checks its contracts, while
//!   debug assertions and overflow checks stay on.
//!
//! For each target it prints executions, executions per second, libFuzzer's coverage figures
//! (`cov`: covered edges, `ft`: features) and the corpus size, and for a crash the artifact
//! and how to decode and reproduce it. Fails if any target crashed. Needs the nightly
//! toolchain and cargo-fuzz (installed when missing: `rustup toolchain install nightly`,
//! `cargo install --locked cargo-fuzz`). `cargo xtask test` ends with `fuzz --ci`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{workspace_root, Result};

/// The fuzz targets, in the order they run.
pub const TARGETS: [&str; 4] = ["dispatch", "decoder", "emulator", "pagewalk"];

/// Seconds per target of `--ci`.
const CI_SECONDS: u64 = 30;

struct Options {
    targets: Vec<String>,
    seconds: u64,
    ci: bool,
    asan: bool,
    cmin: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        targets: Vec::new(),
        seconds: 600,
        ci: false,
        asan: false,
        cmin: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => {
                let v = it.next().ok_or("--time needs a number of seconds")?;
                o.seconds = v.parse().map_err(|_| format!("--time {v}: not a number"))?;
            }
            "--ci" => o.ci = true,
            "--asan" => o.asan = true,
            "--cmin" => o.cmin = true,
            t if TARGETS.contains(&t) => o.targets.push(t.to_string()),
            other => {
                return Err(format!(
                    "unknown argument {other}: usage: cargo xtask fuzz [{}] [--time S] [--ci] \
                     [--asan] [--cmin]",
                    TARGETS.join("|")
                ))
            }
        }
    }
    if o.targets.is_empty() {
        o.targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    if o.ci {
        o.seconds = CI_SECONDS;
    }
    Ok(o)
}

/// What one run of a target printed, parsed.
#[derive(Default, Debug, PartialEq)]
struct Figures {
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<u64>,
}

impl Figures {
    /// Reads one libFuzzer output line: status lines (`#N ... cov: C ft: F corp: K/S ...`)
    /// and the final `stat::` lines of `-print_final_stats=1`.
    fn take(&mut self, line: &str) {
        let num = |s: &str| s.trim().parse::<u64>().ok();
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = num(v);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = num(v);
        } else if line.starts_with('#') {
            let mut words = line.split_whitespace();
            if let Some(n) = words.next().and_then(|w| w[1..].parse().ok()) {
                self.executions = Some(n);
            }
            while let Some(w) = words.next() {
                let value = words.clone().next().unwrap_or("");
                match w {
                    "cov:" => self.cov = num(value),
                    "ft:" => self.ft = num(value),
                    "corp:" => self.corpus = value.split('/').next().and_then(num),
                    "exec/s:" => self.exec_per_sec = num(value),
                    _ => {}
                }
            }
        }
    }

    fn show(v: Option<u64>) -> String {
        v.map_or_else(|| "?".into(), |v| v.to_string())
    }
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The nightly toolchain and cargo-fuzz, installed when missing (rustup and crates.io are
/// what a fresh machine reaches), as `cargo xtask metal` installs Bochs.
fn check_tools() -> Result {
    if !quiet("rustup", &["run", "nightly", "rustc", "--version"]) {
        eprintln!("xtask: installing the nightly toolchain (cargo-fuzz needs it)");
        let ok = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("`rustup toolchain install nightly` failed".into());
        }
    }
    if !quiet("cargo", &["+nightly", "fuzz", "--version"]) {
        eprintln!("xtask: installing cargo-fuzz");
        let ok = Command::new("cargo")
            .args(["install", "--locked", "cargo-fuzz"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("`cargo install --locked cargo-fuzz` failed".into());
        }
    }
    Ok(())
}

fn sanitizer(o: &Options) -> &'static str {
    if o.asan {
        "address"
    } else {
        "none"
    }
}

/// `cargo +nightly fuzz <args>` in `fuzz/`'s parent, as cargo-fuzz expects.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").arg("fuzz").args(args);
    c.current_dir(workspace_root());
    c
}

/// Entry point of `cargo xtask fuzz`.
pub fn main(args: &[String]) -> Result {
    let o = parse(args)?;
    check_tools()?;
    let mut failed = Vec::new();
    let mut passed = 0;
    for t in &o.targets {
        let build = cargo_fuzz(&["build", "-s", sanitizer(&o), t])
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        if !build.success() {
            return Err(format!("building fuzz target {t} failed"));
        }
        if o.cmin {
            cmin(t, &o)?;
            continue;
        }
        match run_target(t, &o)? {
            None => passed += 1,
            Some(why) => failed.push(format!("{t}: {why}")),
        }
    }
    if o.cmin {
        return Ok(());
    }
    println!("fuzz: {passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzzing found crashes: {}", failed.join("; ")))
    }
}

/// Runs one target; `Some(reason)` if it crashed.
fn run_target(t: &str, o: &Options) -> Result<Option<String>> {
    let dir = fuzz_dir();
    let seeds = dir.join("corpus").join(t);
    std::fs::create_dir_all(&seeds).map_err(|e| format!("{}: {e}", seeds.display()))?;
    // New inputs go to the first folder: a work folder, so the checked-in seeds change only
    // through `--cmin`. CI starts from the seeds alone.
    let work = if o.ci {
        dir.join("target").join("ci-corpus").join(t)
    } else {
        dir.join("corpus-work").join(t)
    };
    if o.ci {
        let _ = std::fs::remove_dir_all(&work);
    }
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let artifacts = dir.join("artifacts").join(t);
    std::fs::create_dir_all(&artifacts).map_err(|e| format!("{}: {e}", artifacts.display()))?;
    let log_path = dir.join("target").join(format!("fuzz-{t}.log"));
    let mut log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let before = crash_files(&artifacts);

    let max_time = format!("-max_total_time={}", o.seconds);
    let prefix = format!("-artifact_prefix={}/", artifacts.display());
    let (work_s, seeds_s) = (work.display().to_string(), seeds.display().to_string());
    let mut child = cargo_fuzz(&[
        "run",
        "-s",
        sanitizer(o),
        t,
        &work_s,
        &seeds_s,
        "--",
        &max_time,
        &prefix,
        // An input running 10 s is a hang (RUN must return in bounded time).
        "-timeout=10",
        "-print_final_stats=1",
        "-rss_limit_mb=4096",
    ])
    .stderr(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
    eprintln!(
        "xtask: fuzzing {t} for {} s (log: {})",
        o.seconds,
        log_path.display()
    );

    // libFuzzer prints everything on stderr; cargo-fuzz's crash summary goes to stdout.
    let stdout = child.stdout.take();
    let out_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stdout {
            for line in BufReader::new(s).lines().map_while(std::result::Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    let mut figures = Figures::default();
    let mut tail: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut last_report = Instant::now();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err)
            .lines()
            .map_while(std::result::Result::ok)
        {
            let _ = writeln!(log, "{line}");
            figures.take(&line);
            tail.push(line);
            if tail.len() > 80 {
                tail.remove(0);
            }
            if last_report.elapsed() >= Duration::from_secs(60) {
                last_report = Instant::now();
                eprintln!(
                    "xtask: {t} {:>5} s: {} execs, {} exec/s, cov {} ft {}, corpus {}",
                    start.elapsed().as_secs(),
                    Figures::show(figures.executions),
                    Figures::show(figures.exec_per_sec),
                    Figures::show(figures.cov),
                    Figures::show(figures.ft),
                    Figures::show(figures.corpus),
                );
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo fuzz: {e}"))?;
    let cargo_out = out_thread.join().unwrap_or_default();
    let _ = write!(log, "{cargo_out}");
    let new_crashes: Vec<PathBuf> = crash_files(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    println!(
        "fuzz {t}: {} executions in {} s, {} exec/s, cov {} ft {}, corpus {} inputs, {} crashes",
        Figures::show(figures.executions),
        start.elapsed().as_secs(),
        Figures::show(figures.exec_per_sec),
        Figures::show(figures.cov),
        Figures::show(figures.ft),
        Figures::show(figures.corpus),
        new_crashes.len(),
    );
    if status.success() && new_crashes.is_empty() {
        return Ok(None);
    }
    eprintln!("---- last lines of {} ----", log_path.display());
    for l in &tail {
        eprintln!("{l}");
    }
    for c in &new_crashes {
        eprintln!(
            "crash: {}\n  decode:    cargo +nightly fuzz fmt -s none {t} {}\n  reproduce: cargo \
             +nightly fuzz run -s none {t} {}",
            c.display(),
            c.display(),
            c.display()
        );
    }
    Ok(Some(match new_crashes.first() {
        Some(c) => format!("crash {}", c.display()),
        None => format!("libFuzzer failed ({status})"),
    }))
}

/// Files libFuzzer writes for a failure: `crash-`, `leak-`, `timeout-`, `oom-`.
fn crash_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                ["crash-", "leak-", "timeout-", "oom-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect()
}

/// Merges the work corpus into the seed corpus, minimized (`cargo fuzz cmin`).
fn cmin(t: &str, o: &Options) -> Result {
    let dir = fuzz_dir();
    let seeds = dir.join("corpus").join(t);
    let work = dir.join("corpus-work").join(t);
    std::fs::create_dir_all(&seeds).map_err(|e| format!("{}: {e}", seeds.display()))?;
    // Everything into the work folder, then minimize it into the seeds.
    if let Ok(rd) = std::fs::read_dir(&seeds) {
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        for e in rd.filter_map(std::result::Result::ok) {
            let _ = std::fs::copy(e.path(), work.join(e.file_name()));
        }
    }
    let (work_s, seeds_s) = (work.display().to_string(), seeds.display().to_string());
    let status = cargo_fuzz(&["cmin", "-s", sanitizer(o), t, &work_s])
        .status()
        .map_err(|e| format!("cannot run cargo fuzz cmin: {e}"))?;
    if !status.success() {
        return Err(format!("cargo fuzz cmin {t} failed"));
    }
    let _ = std::fs::remove_dir_all(&seeds);
    std::fs::create_dir_all(&seeds).map_err(|e| format!("{}: {e}", seeds.display()))?;
    let mut n = 0;
    for e in std::fs::read_dir(&work)
        .map_err(|e| format!("{}: {e}", work.display()))?
        .filter_map(std::result::Result::ok)
    {
        std::fs::copy(e.path(), seeds.join(e.file_name()))
            .map_err(|err| format!("{}: {err}", e.path().display()))?;
        n += 1;
    }
    println!("fuzz {t}: seed corpus {} now holds {n} inputs", seeds_s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_final_lines() {
        let mut f = Figures::default();
        f.take("#91830\tREDUCE cov: 3343 ft: 8031 corp: 1122/38Kb lim: 86 exec/s: 4372 rss: 36Mb");
        assert_eq!(
            f,
            Figures {
                executions: Some(91830),
                exec_per_sec: Some(4372),
                cov: Some(3343),
                ft: Some(8031),
                corpus: Some(1122),
            }
        );
        f.take("stat::number_of_executed_units: 91901");
        f.take("stat::average_exec_per_sec:     4000");
        assert_eq!((f.executions, f.exec_per_sec), (Some(91901), Some(4000)));
        f.take("INFO: Seed: 42");
        assert_eq!(f.cov, Some(3343), "other lines change nothing");
    }

    #[test]
    fn parses_arguments() {
        let o = parse(&["decoder".into(), "--time".into(), "5".into()]).unwrap();
        assert_eq!(
            (o.targets.as_slice(), o.seconds),
            (&["decoder".to_string()][..], 5)
        );
        let o = parse(&["--ci".into()]).unwrap();
        assert_eq!((o.targets.len(), o.seconds), (TARGETS.len(), CI_SECONDS));
        assert!(parse(&["bogus".into()]).is_err());
        assert!(parse(&["--time".into()]).is_err());
    }
}
