//! The Linux stage: Debian's kernel booted in Bochs with emulated VT-x, running checks inside.
//!
//! `cargo xtask linux [--module rhax.ko] [--qemu DIR] [--cpus N] [--megs N] [--ips N]
//! [--timeout SECS] [--build-only] [--verbose] [--append PARAM] [--bzimage] [--bench |
//! --client PATH] [--cpu-model NAME]` builds the image
//! (`linux/image.rs`: Debian's `linux-image-amd64` kernel, decompressed here and entered at its
//! PVH entry by a stub (`linux/pvh.rs`) unless `--bzimage`, an initramfs with busybox-static, `tests/linux/init` and
//! `checks.sh`, the optional rhax.ko and QEMU tree; a FAT disk with syslinux), boots it from the
//! Bochs BIOS (`tests/linux/bochsrc.txt`), follows the serial console (a file Bochs writes,
//! polled here and time-stamped with host time) and prints `linux: N passed, M failed,
//! K skipped` with each check's host wall time. Everything lands in `<target>/linux/`.
//! Issue 10 item 3; [`test_stage`] is the part of `cargo xtask test`.

mod bench;
mod cpio;
pub(crate) mod image;
mod pvh;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// rhax.ko to load inside (`--module`).
    pub module: Option<PathBuf>,
    /// QEMU install tree (`--qemu`: `bin/qemu-system-x86_64`, `share/qemu/`).
    pub qemu: Option<PathBuf>,
    /// Emulated CPUs.
    pub cpus: u32,
    /// Emulated RAM in MiB.
    pub megs: u32,
    /// Bochs `ips`: emulated instructions per emulated second.
    pub ips: u64,
    /// Wall-clock limit of the Bochs run.
    pub timeout: Duration,
    /// Build the image, do not boot it.
    pub build_only: bool,
    /// More kernel parameters (`--append`, e.g. `initcall_debug`).
    pub append: Vec<String>,
    /// Boot Debian's bzImage unchanged, through its XZ decompressor (`--bzimage`), instead of
    /// the fast image (`linux/pvh.rs`).
    pub bzimage: bool,
    /// Kernel messages from the start (`earlyprintk`, no `quiet`): slower, shows the phases.
    pub verbose: bool,
    /// A static `rhax-client` for the `exit-bench` check (`--client PATH`).
    pub client: Option<PathBuf>,
    /// Build the static `rhax-client` here and pack it (`--bench`).
    pub bench: bool,
    /// Bochs's CPU model (`--cpu-model`).
    pub cpu_model: String,
}

/// Bochs's CPU model: on `corei7_skylake_x` Debian's 6.1 kernel runs with XSAVE off
/// (tests/linux/bochsrc.txt); the anchors of performance-anchors.md §0b used that one.
const DEFAULT_CPU_MODEL: &str = "corei7_haswell_4770";

impl Default for Options {
    fn default() -> Self {
        Self {
            module: None,
            qemu: None,
            cpus: 2,
            megs: 1024,
            ips: 100_000_000,
            timeout: Duration::from_secs(600),
            build_only: false,
            verbose: false,
            bzimage: false,
            append: Vec::new(),
            client: None,
            bench: false,
            cpu_model: DEFAULT_CPU_MODEL.into(),
        }
    }
}

/// Parses the command line of `cargo xtask linux`.
pub fn parse_args(args: &[String]) -> crate::Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        fn num<T: std::str::FromStr>(name: &str, v: String) -> crate::Result<T>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| format!("{name} {v}: {e}"))
        }
        match a.as_str() {
            "--module" => o.module = Some(PathBuf::from(value(a)?)),
            "--qemu" => o.qemu = Some(PathBuf::from(value(a)?)),
            "--cpus" => o.cpus = num(a, value(a)?)?,
            "--megs" => o.megs = num(a, value(a)?)?,
            "--ips" => o.ips = num(a, value(a)?)?,
            "--timeout" => o.timeout = Duration::from_secs(num(a, value(a)?)?),
            "--build-only" => o.build_only = true,
            "--verbose" => o.verbose = true,
            "--bzimage" => o.bzimage = true,
            "--append" => o.append.push(value(a)?),
            "--client" => o.client = Some(PathBuf::from(value(a)?)),
            "--bench" => o.bench = true,
            "--cpu-model" => o.cpu_model = value(a)?,
            s => return Err(format!("linux: unknown argument {s}")),
        }
    }
    if !(1..=8).contains(&o.cpus) {
        return Err(format!("--cpus {}: 1 to 8", o.cpus));
    }
    // The model goes into bochsrc: Bochs's names are lower-case words with underscores.
    if o.cpu_model.is_empty()
        || !o
            .cpu_model
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!("--cpu-model {:?}: a Bochs model name", o.cpu_model));
    }
    if !(128..=3072).contains(&o.megs) {
        return Err(format!("--megs {}: 128 to 3072", o.megs));
    }
    Ok(o)
}

/// `cargo xtask linux ...`.
pub fn main(args: &[String]) -> crate::Result {
    let o = parse_args(args)?;
    let t0 = Instant::now();
    let disk = build(&o)?;
    let build_s = t0.elapsed().as_secs_f64();
    println!("linux: image built in {build_s:.1} s: {}", disk.display());
    if o.build_only {
        return Ok(());
    }
    let report = boot(&disk, &o)?;
    summary(&report, build_s)
}

/// The stage `cargo xtask test` runs (issue 10): QEMU 7.2 with `--enable-hax` (built from
/// Debian's source, or the cached build, `qemu.rs`), then the image with `rhax.ko` (built and
/// checked by `lkm::stage` just before) booted in Bochs with 2 CPUs. Every check must run and
/// pass: a skip here means a part was missing, which in CI is a failure too.
pub fn test_stage() -> crate::Result {
    let t0 = Instant::now();
    let q = crate::qemu::ensure(false, 2)?;
    let qemu_s = t0.elapsed().as_secs_f64();
    let module = crate::target_dir().join("lkm/module/rhax.ko");
    if !module.is_file() {
        return Err(format!(
            "linux stage: {} is missing (lkm stage)",
            module.display()
        ));
    }
    let o = Options {
        module: Some(module),
        qemu: Some(q.root.join("usr")),
        bench: true,
        timeout: Duration::from_secs(1500),
        ..Options::default()
    };
    let t1 = Instant::now();
    let disk = build(&o)?;
    let build_s = t1.elapsed().as_secs_f64();
    let report = boot(&disk, &o)?;
    println!(
        "linux: stage: QEMU {qemu_s:.1} s, image {build_s:.1} s, Bochs {:.1} s, whole stage \
         {:.1} s",
        report.total_s,
        t0.elapsed().as_secs_f64()
    );
    summary(&report, build_s)?;
    complete(&report)
}

/// In the test stage a run must reach the `done` line with nothing skipped.
fn complete(r: &Report) -> crate::Result {
    let skipped: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| c.result == "skip")
        .map(|c| c.name.as_str())
        .collect();
    if r.done_s.is_none() {
        Err("linux stage: the checks did not run to their end (no `done` line)".into())
    } else if !skipped.is_empty() {
        Err(format!(
            "linux stage: checks skipped: {}",
            skipped.join(", ")
        ))
    } else {
        Ok(())
    }
}

/// The kernel command line. `nolapic_timer`: the local APIC timer would interrupt every few
/// thousand emulated instructions (performance-anchors.md §0b); the PIT/HPET tick instead.
/// `cryptomgr.notests`: the crypto self-tests at late init (crypto_algapi_init) took 7.4 s
/// emulated, about 20 s wall, in Bochs (`--append initcall_debug --append loglevel=8`).
/// `quiet` saves the serial port's emulated transmit time; `--verbose` trades it for the
/// decompressor's and the kernel's messages (`earlyprintk=serial`: from the decompressor on,
/// arch/x86/boot/compressed/early_serial_console.c).
fn append(o: &Options) -> String {
    let verbosity = if o.verbose {
        "earlyprintk=serial,ttyS0,115200"
    } else {
        "quiet"
    };
    let mut line = format!(
        "console=ttyS0,115200 nolapic_timer cryptomgr.notests {verbosity} panic=-1 rdinit=/init \
         rhax.cpus={}",
        o.cpus
    );
    for extra in &o.append {
        line.push(' ');
        line.push_str(extra);
    }
    line
}

/// Builds the boot disk and returns its path.
pub fn build(o: &Options) -> crate::Result<PathBuf> {
    image::ensure_tools()?;
    let dir = image::linux_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let kernel = image::kernel()?;
    let client = match (&o.client, o.bench) {
        (Some(c), _) => Some(c.clone()),
        (None, true) => Some(bench::build_client()?),
        (None, false) => None,
    };
    let extras = image::Extras {
        module: o.module.as_deref(),
        qemu: o.qemu.as_deref(),
        client: client.as_deref(),
    };
    let initrd = image::initramfs(&kernel, &extras)?;
    let initrd_path = dir.join("initrd.img");
    std::fs::write(&initrd_path, &initrd).map_err(|e| format!("initrd: {e}"))?;
    let vmlinuz = if o.bzimage {
        kernel.vmlinuz.clone()
    } else {
        let fast = dir.join("vmlinuz-pvh");
        pvh::build(&kernel.vmlinuz, &fast)?;
        fast
    };
    let disk = dir.join("disk.img");
    image::disk(&disk, &vmlinuz, &initrd_path, &append(o))?;
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len()) >> 10;
    eprintln!(
        "xtask: linux: kernel {} ({} KiB), initramfs {} KiB{}{}, disk {} KiB",
        kernel.release,
        size(&vmlinuz),
        size(&initrd_path),
        o.module
            .as_ref()
            .map_or(String::new(), |m| format!(", module {}", m.display())),
        o.qemu
            .as_ref()
            .map_or(String::new(), |q| format!(", QEMU {}", q.display())),
        size(&disk)
    );
    Ok(disk)
}

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Name (checks.sh's `run_check` argument).
    pub name: String,
    /// `pass`, `fail` or `skip`.
    pub result: String,
    /// The check's text (why, guest time).
    pub text: String,
    /// Host seconds between the start and the result line.
    pub host_s: f64,
}

/// What a boot produced.
#[derive(Debug, Default)]
pub struct Report {
    /// Checks in order.
    pub checks: Vec<Check>,
    /// Host seconds from starting Bochs to the first serial byte (BIOS + syslinux).
    pub first_output_s: Option<f64>,
    /// Host seconds from starting Bochs to the init's `boot` marker.
    pub marker_s: Option<f64>,
    /// Host seconds to the `done` line.
    pub done_s: Option<f64>,
    /// Host seconds for the whole Bochs run.
    pub total_s: f64,
    /// Why the run did not end cleanly.
    pub died: Option<String>,
    /// Serial console lines.
    pub lines: Vec<String>,
}

/// Follows the protocol of `tests/linux/checks.sh` line by line.
#[derive(Default)]
pub struct Parser {
    started: Option<(String, f64)>,
    /// The parse so far.
    pub report: Report,
}

impl Parser {
    /// Takes one serial line seen at host time `t` (seconds since Bochs started).
    pub fn line(&mut self, line: &str, t: f64) {
        self.report.lines.push(line.to_string());
        let Some(rest) = line.split_once("rhax-linux: ").map(|(_, r)| r) else {
            return;
        };
        if rest.starts_with("boot ") {
            self.report.marker_s.get_or_insert(t);
        } else if rest.starts_with("done ") {
            self.report.done_s = Some(t);
        } else if let Some(c) = rest.strip_prefix("check ") {
            let mut f = c.splitn(3, ' ');
            let (Some(name), Some(result)) = (f.next(), f.next()) else {
                return;
            };
            let text = f.next().unwrap_or("").to_string();
            if result == "start" {
                self.started = Some((name.to_string(), t));
            } else if matches!(result, "pass" | "fail" | "skip") {
                let host_s = match self.started.take() {
                    Some((n, t0)) if n == name => t - t0,
                    _ => 0.0,
                };
                self.report.checks.push(Check {
                    name: name.to_string(),
                    result: result.to_string(),
                    text,
                    host_s,
                });
            }
        }
    }

    /// Ends the parse: a check that started and never finished is a failure.
    pub fn finish(mut self) -> Report {
        if let Some((name, _)) = self.started.take() {
            self.report.checks.push(Check {
                name,
                result: "fail".into(),
                text: "the run ended during the check".into(),
                host_s: 0.0,
            });
        }
        self.report
    }
}

/// Boots `disk` in Bochs, following the serial log until Bochs exits (the init's
/// `poweroff -f`) or the timeout kills it.
pub fn boot(disk: &Path, o: &Options) -> crate::Result<Report> {
    crate::metal::ensure_bochs()?;
    let dir = image::linux_dir();
    let serial = dir.join("serial.log");
    let log = dir.join("bochs.log");
    // Bochs locks its disk with `<image>.lock`; a Bochs killed by the timeout leaves it
    // behind, and the next run would refuse the image ("image locked").
    let lock = PathBuf::from(format!("{}.lock", disk.display()));
    for p in [&serial, &log, &lock] {
        let _ = std::fs::remove_file(p);
    }
    let template_path = crate::workspace_root().join("tests/linux/bochsrc.txt");
    let bochsrc = std::fs::read_to_string(&template_path)
        .map_err(|e| format!("{}: {e}", template_path.display()))?
        .replace("$LX_MEGS", &o.megs.to_string())
        .replace("$LX_CPUS", &o.cpus.to_string())
        .replace("$LX_MODEL", &o.cpu_model)
        .replace("$LX_IPS", &o.ips.to_string())
        .replace("$LX_DISK", &disk.display().to_string())
        .replace("$LX_SERIAL", &serial.display().to_string())
        .replace("$LX_LOG", &log.display().to_string());
    std::fs::write(dir.join("bochsrc"), bochsrc).map_err(|e| format!("bochsrc: {e}"))?;
    // `c` runs the simulation; `q` answers the debugger if control ever returns to it, and
    // stdin on /dev/null ends any further prompt (bochs-vmx.md §4).
    std::fs::write(dir.join("continue.rc"), "c\nq\n").map_err(|e| format!("continue.rc: {e}"))?;
    let out = std::fs::File::create(dir.join("bochs.stdout")).map_err(|e| format!("{e}"))?;
    let err = std::fs::File::create(dir.join("bochs.stderr")).map_err(|e| format!("{e}"))?;
    let mut cmd = Command::new("timeout");
    // SIGKILL: Bochs's debugger catches SIGTERM and SIGINT (bochs-vmx.md §4).
    cmd.args(["-s", "KILL", &o.timeout.as_secs().to_string()])
        .args(["bochs-bin", "-q", "-f", "bochsrc", "-rc", "continue.rc"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if std::env::var_os("TERM").is_none_or(|t| t.is_empty()) {
        cmd.env("TERM", "dumb");
    }
    eprintln!(
        "xtask: linux: Bochs {} x{} cpus, {} MiB, ips {}, timeout {} s, serial {}",
        o.cpu_model,
        o.cpus,
        o.megs,
        o.ips,
        o.timeout.as_secs(),
        serial.display()
    );
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run bochs-bin: {e}"))?;
    let mut parser = Parser::default();
    let mut pending = Vec::new();
    let mut offset = 0u64;
    let mut draining = false;
    let status = loop {
        let exited = child.try_wait().map_err(|e| format!("bochs: {e}"))?;
        if !draining {
            let stderr = std::fs::read_to_string(dir.join("bochs.stderr")).unwrap_or_default();
            draining = crate::metal::drain_screen(&stderr);
        }
        let t = start.elapsed().as_secs_f64();
        let new = read_from(&serial, &mut offset);
        if !new.is_empty() {
            parser.report.first_output_s.get_or_insert(t);
            pending.extend_from_slice(&new);
        }
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            println!("[linux {t:7.2}] {line}");
            parser.line(&line, t);
        }
        if let Some(s) = exited {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !pending.is_empty() {
        let line = String::from_utf8_lossy(&pending).trim_end().to_string();
        println!("[linux {:7.2}] {line}", start.elapsed().as_secs_f64());
        parser.line(&line, start.elapsed().as_secs_f64());
    }
    let mut report = parser.finish();
    report.total_s = start.elapsed().as_secs_f64();
    if report.done_s.is_none() {
        report.died = Some(match status.code() {
            Some(137) | None => format!("killed after the {} s timeout", o.timeout.as_secs()),
            Some(c) => format!("Bochs exited with status {c} before the checks finished"),
        });
    }
    // `poweroff -f` ends Bochs through ACPI, which Bochs reports as a fatal panic: status 1
    // (bochs-vmx.md §4). Success is the `done` line, not the exit status.
    if report.died.is_some() {
        let from = report.lines.len().saturating_sub(40);
        println!("linux: the last serial lines:");
        for l in &report.lines[from..] {
            println!("linux: | {l}");
        }
        // Bochs's own fatal messages ("Bochs is exiting with the following message") go to
        // stderr, config errors before the log file even exists.
        let stderr = std::fs::read_to_string(dir.join("bochs.stderr")).unwrap_or_default();
        if let Some(at) = stderr.find("Bochs is exiting") {
            for l in stderr[at..]
                .lines()
                .filter(|l| !l.starts_with("===="))
                .take(4)
            {
                println!("linux: bochs: {l}");
            }
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for l in text
            .lines()
            .filter(|l| l.contains("PANIC") || l.contains("ERROR") || l.contains("VMENTER FAIL"))
            .take(20)
        {
            println!("linux: bochs.log: {l}");
        }
    }
    Ok(report)
}

/// New bytes of the file at `path` since `offset` (the file may not exist yet).
fn read_from(path: &Path, offset: &mut u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(*offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            *offset += buf.len() as u64;
        }
    }
    buf
}

/// Prints the timings, each check and `linux: N passed, M failed, K skipped`.
fn summary(r: &Report, build_s: f64) -> crate::Result {
    let opt = |t: Option<f64>| t.map_or("-".into(), |t| format!("{t:.1} s"));
    println!(
        "linux: image build {build_s:.1} s; Bochs: first serial output {}, boot marker {}, \
         checks done {}, whole run {:.1} s",
        opt(r.first_output_s),
        opt(r.marker_s),
        opt(r.done_s),
        r.total_s
    );
    let count = |k: &str| r.checks.iter().filter(|c| c.result == k).count();
    for c in &r.checks {
        println!(
            "linux:   {} {} ({:.2} s host) {}",
            c.result.to_uppercase(),
            c.name,
            c.host_s,
            c.text
        );
    }
    for l in bench::table(&r.lines) {
        println!("{l}");
    }
    let failed = count("fail") + usize::from(r.died.is_some());
    if let Some(d) = &r.died {
        println!("linux:   run died: {d}");
    }
    println!(
        "linux: {} passed, {failed} failed, {} skipped",
        count("pass"),
        count("skip")
    );
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} linux check(s) failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_protocol() {
        let mut p = Parser::default();
        p.line("[    1.0] some kernel line", 1.0);
        p.line("rhax-linux: boot 6.1.0-57-amd64 uptime 3.10 s", 10.0);
        p.line("rhax-linux: check cpu-vmx start", 11.0);
        p.line("rhax-linux: info cpu-vmx: flags vmx", 11.5);
        p.line(
            "rhax-linux: check cpu-vmx pass 2 of 2 CPUs (guest 20 ms)",
            12.5,
        );
        p.line("rhax-linux: check rhax-insmod start", 13.0);
        p.line(
            "rhax-linux: check rhax-insmod skip skipped (no rhax.ko given) (guest 0 ms)",
            13.25,
        );
        p.line("rhax-linux: check qemu-seabios start", 14.0);
        p.line("rhax-linux: done 1 passed 0 failed 1 skipped", 20.0);
        let r = p.finish();
        assert_eq!(r.marker_s, Some(10.0));
        assert_eq!(r.done_s, Some(20.0));
        assert_eq!(r.checks.len(), 3);
        assert_eq!(r.checks[0].name, "cpu-vmx");
        assert_eq!(r.checks[0].result, "pass");
        assert_eq!(r.checks[0].host_s, 1.5);
        assert_eq!(r.checks[0].text, "2 of 2 CPUs (guest 20 ms)");
        assert_eq!(r.checks[1].result, "skip");
        assert_eq!(r.checks[1].host_s, 0.25);
        // Started, never finished: a failure, not a silent gap.
        assert_eq!(r.checks[2].name, "qemu-seabios");
        assert_eq!(r.checks[2].result, "fail");
    }

    #[test]
    fn summary_fails_on_failures_and_death() {
        let check = |result: &str| Check {
            name: "x".into(),
            result: result.into(),
            text: String::new(),
            host_s: 0.0,
        };
        let ok = Report {
            checks: vec![check("pass"), check("skip")],
            done_s: Some(1.0),
            ..Report::default()
        };
        assert!(summary(&ok, 0.0).is_ok());
        let failed = Report {
            checks: vec![check("pass"), check("fail")],
            ..Report::default()
        };
        assert!(summary(&failed, 0.0).is_err());
        let died = Report {
            checks: vec![check("pass")],
            died: Some("timeout".into()),
            ..Report::default()
        };
        assert!(summary(&died, 0.0).is_err());
    }

    #[test]
    fn the_test_stage_needs_every_check_run_to_the_end() {
        let check = |result: &str| Check {
            name: result.into(),
            result: result.into(),
            text: String::new(),
            host_s: 0.0,
        };
        let done = |checks| Report {
            checks,
            done_s: Some(1.0),
            ..Report::default()
        };
        assert!(complete(&done(vec![check("pass"), check("pass")])).is_ok());
        assert!(complete(&done(vec![check("pass"), check("skip")]))
            .unwrap_err()
            .contains("skip"));
        let unfinished = Report {
            checks: vec![check("pass")],
            ..Report::default()
        };
        assert!(complete(&unfinished).is_err());
    }

    #[test]
    fn options() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_args(&args("--module /x/rhax.ko --cpus 1 --megs 512")).unwrap();
        assert_eq!(o.module, Some(PathBuf::from("/x/rhax.ko")));
        assert_eq!((o.cpus, o.megs), (1, 512));
        assert!(parse_args(&args("--cpus 0")).is_err());
        assert!(parse_args(&args("--megs")).is_err());
        assert!(parse_args(&args("--bogus")).is_err());
        assert!(append(&o).contains("nolapic_timer"));
        assert!(append(&o).contains("rhax.cpus=1"));
        assert!(append(&o).contains(" quiet "));
        assert_eq!(o.cpu_model, "corei7_haswell_4770");
        let o = parse_args(&args("--bench --cpu-model corei7_skylake_x")).unwrap();
        assert!(o.bench && o.client.is_none());
        assert_eq!(o.cpu_model, "corei7_skylake_x");
        assert!(parse_args(&args("--cpu-model x,ips=1")).is_err());
        let o = parse_args(&args("--verbose --append initcall_debug")).unwrap();
        assert!(append(&o).ends_with(" initcall_debug"));
        assert!(!append(&o).contains("quiet"));
    }
}
