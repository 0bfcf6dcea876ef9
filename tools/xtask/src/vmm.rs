//! `cargo xtask metal vmm`: the metal kernel's multiboot (v1) VMM (scenario `vmm`, issue 12
//! item 6) on a guest ELF of the user's, or on the test guests of `tests/vmm-guests/`.
//!
//! `cargo xtask metal vmm PATH.elf [--cpus N] [--append "CMDLINE"] [--module FILE[,STRING]]...
//! [--guest-megs N] [--expect N|triple-fault] [--x2apic] [--halt-ms N]
//! [--apic-flags BITS] [--model M] [--timeout S]`
//! puts the guest and its modules into the ROM as multiboot2 module tags (the first is the
//! guest, its string the guest's command line; `rom.rs`), and the VMM's options on the
//! kernel's command line (`vmm_*=`), then runs the scenario in Bochs.
//!
//! `cargo xtask metal vmm --selftest`: builds the test guests (GNU as + ld) into
//! `<target>/vmm-guests/` and runs each on `corei7_skylake_x` and `corei7_sandy_bridge_2600k`,
//! checking each result: `hello` (command line and module strings in its UART output, exit 0),
//! `memtest` (exit 0), `smp` (vCPU 1 started by the guest's INIT/SIPI/SIPI through the
//! in-kernel APIC, runs on CPU 1), `apic-timer` (periodic and TSC-deadline timer interrupts
//! with HLT between them; it must fail without `--x2apic`, which advertises TSC-deadline),
//! `apic-ipi` (2 vCPUs: INIT/SIPI, then fixed IPIs both ways through the xAPIC and x2APIC
//! ICRs; again with `--apic-flags 0x2`, NO_TPR_SHADOW), `fault` (a triple fault, reported and expected), and `bad`, whose misdeeds the VMM
//! must refuse with a clear error (HLT with interrupts off, HLT with no APIC timer armed, an
//! unserved port) or pass only when expected (exit status 42).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::metal::{self, RunConfig, RunReport};
use crate::rom::Module;

/// Models of the self-test.
const SELFTEST_MODELS: [&str; 2] = ["corei7_skylake_x", "corei7_sandy_bridge_2600k"];
/// The test guests (`tests/vmm-guests/NAME.s`, linked with `lib.s`).
const GUESTS: [&str; 7] = [
    "hello",
    "memtest",
    "fault",
    "bad",
    "smp",
    "apic-timer",
    "apic-ipi",
];

/// One VMM run: the guest and what the VMM is told.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The guest image.
    pub elf: PathBuf,
    /// The guest's command line.
    pub append: String,
    /// `(file, string)` of each module.
    pub modules: Vec<(PathBuf, String)>,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub megs: u32,
    /// The outcome that passes: a status or `stop` (triple fault).
    pub expect: String,
    /// Advertise x2APIC and TSC-deadline.
    pub x2apic: bool,
    /// How long a vCPU may stay halted (guest ms, 0 = forever); `None`: the VMM's default.
    pub halt_ms: Option<u32>,
    /// ENABLE_APIC flags (`NO_*` bits of `ApicFlags`); `None`: ENABLE only.
    pub apic_flags: Option<u32>,
}

impl GuestRun {
    fn new(elf: PathBuf) -> Self {
        Self {
            elf,
            append: String::new(),
            modules: Vec::new(),
            cpus: 1,
            megs: 32,
            expect: "0".into(),
            x2apic: false,
            halt_ms: None,
            apic_flags: None,
        }
    }

    /// The kernel's `vmm_*` words.
    pub fn kernel_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("vmm_cpus={}", self.cpus),
            format!("vmm_megs={}", self.megs),
            format!("vmm_expect={}", self.expect),
        ];
        if self.x2apic {
            v.push("vmm_x2apic=1".into());
        }
        if let Some(ms) = self.halt_ms {
            v.push(format!("vmm_halt_ms={ms}"));
        }
        if let Some(f) = self.apic_flags {
            v.push(format!("vmm_apic_flags={f:#x}"));
        }
        v
    }

    /// The ROM's boot modules: the guest (string: its command line), then its modules.
    pub fn rom_modules(&self) -> crate::Result<Vec<Module>> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut v = vec![Module {
            data: read(&self.elf)?,
            string: self.append.clone(),
        }];
        for (file, string) in &self.modules {
            v.push(Module {
                data: read(file)?,
                string: string.clone(),
            });
        }
        Ok(v)
    }
}

/// `--module FILE[,STRING]`: the string defaults to the file's name.
pub fn parse_module(arg: &str) -> (PathBuf, String) {
    match arg.split_once(',') {
        Some((file, string)) => (file.into(), string.into()),
        None => {
            let name = Path::new(arg)
                .file_name()
                .map_or(arg.to_string(), |n| n.to_string_lossy().into_owned());
            (arg.into(), name)
        }
    }
}

/// `--expect N|triple-fault` as the kernel's `vmm_expect` word.
pub fn parse_expect(arg: &str) -> crate::Result<String> {
    if arg == "triple-fault" || arg == "stop" {
        return Ok("stop".into());
    }
    let ok = match arg.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).is_ok(),
        None => arg.parse::<u32>().is_ok(),
    };
    if ok {
        Ok(arg.into())
    } else {
        Err(format!("--expect {arg}: a status (u32) or `triple-fault`"))
    }
}

/// `cargo xtask metal vmm ...`.
pub fn main(args: &[String]) -> crate::Result {
    if args.iter().any(|a| a == "--selftest") {
        return selftest();
    }
    let mut model = String::from("corei7_skylake_x");
    let mut timeout = Duration::from_secs(120);
    let mut elf = None;
    let mut run = GuestRun::new(PathBuf::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--model" => model = value("--model")?,
            "--cpus" => {
                run.cpus = value("--cpus")?
                    .parse()
                    .map_err(|e| format!("--cpus: {e}"))?
            }
            "--guest-megs" => {
                run.megs = value("--guest-megs")?
                    .parse()
                    .map_err(|e| format!("--guest-megs: {e}"))?
            }
            "--append" => run.append = value("--append")?,
            "--module" => run.modules.push(parse_module(&value("--module")?)),
            "--expect" => run.expect = parse_expect(&value("--expect")?)?,
            "--x2apic" => run.x2apic = true,
            "--apic-flags" => {
                let f = value("--apic-flags")?;
                run.apic_flags = Some(
                    match f.strip_prefix("0x") {
                        Some(h) => u32::from_str_radix(h, 16),
                        None => f.parse(),
                    }
                    .map_err(|e| format!("--apic-flags: {e}"))?,
                )
            }
            "--halt-ms" => {
                run.halt_ms = Some(
                    value("--halt-ms")?
                        .parse()
                        .map_err(|e| format!("--halt-ms: {e}"))?,
                )
            }
            "--timeout" => {
                timeout = Duration::from_secs(
                    value("--timeout")?
                        .parse()
                        .map_err(|e| format!("--timeout: {e}"))?,
                )
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if elf.is_none() => elf = Some(PathBuf::from(s)),
            s => return Err(format!("one guest ELF only ({s})")),
        }
    }
    run.elf = elf.ok_or("usage: cargo xtask metal vmm PATH.elf [options] | --selftest")?;
    let kernel = metal::build_kernel()?;
    let t = Instant::now();
    let (_, report) = run_guest(&kernel, &model, &run, timeout)?;
    let secs = t.elapsed().as_secs_f64();
    match (report.passed.first(), report.failed.first(), &report.died) {
        (Some((_, _, info)), None, None) => {
            println!("vmm: PASS on {model} in {secs:.1} s: {info}");
            Ok(())
        }
        (_, Some((_, why)), _) => Err(format!("vmm: FAIL on {model}: {why}")),
        (_, _, Some(died)) => Err(format!("vmm: the run died on {model}: {died}")),
        _ => Err(format!("vmm: no result on {model}")),
    }
}

/// Boots the kernel with the guest in its ROM and runs scenario `vmm`.
fn run_guest(
    kernel: &Path,
    model: &str,
    run: &GuestRun,
    timeout: Duration,
) -> crate::Result<(RunConfig, RunReport)> {
    let mut cfg = RunConfig::new(model, &["vmm"]);
    // One CPU per vCPU: the application processors' loops will want CPUs of their own.
    cfg.cpus = run.cpus.clamp(1, 4);
    // Host RAM: the guest's, plus the kernel's own.
    cfg.megs = (run.megs + 64).max(128);
    cfg.timeout = timeout;
    cfg.modules = run.rom_modules()?;
    cfg.extra_args = run.kernel_args();
    let report = metal::run(kernel, &cfg)?;
    Ok((cfg, report))
}

/// Assembles and links the test guests into `<target>/vmm-guests/`; returns their paths in
/// [`GUESTS`] order.
pub fn build_guests() -> crate::Result<Vec<PathBuf>> {
    let src = crate::workspace_root().join("tests/vmm-guests");
    let out = crate::target_dir().join("vmm-guests");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    crate::apt::ensure(&["as", "ld"], &["binutils"])?;
    let assemble = |name: &str| -> crate::Result<PathBuf> {
        let obj = out.join(format!("{name}.o"));
        let mut cmd = Command::new("as");
        cmd.arg("--32")
            .arg("-o")
            .arg(&obj)
            .arg(src.join(format!("{name}.s")));
        crate::run_captured(&mut cmd, &format!("as {name}.s"))?;
        Ok(obj)
    };
    let lib = assemble("lib")?;
    let mut elves = Vec::new();
    for g in GUESTS {
        let obj = assemble(g)?;
        let elf = out.join(format!("{g}.elf"));
        let mut cmd = Command::new("ld");
        cmd.args(["-m", "elf_i386", "-z", "max-page-size=0x1000"])
            .arg("--no-warn-rwx-segments")
            .arg("-T")
            .arg(src.join("link.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj)
            .arg(&lib);
        crate::run_captured(&mut cmd, &format!("ld {g}.elf"))?;
        elves.push(elf);
    }
    Ok(elves)
}

/// One self-test run: the guest, the console lines it must show, and the reason the
/// scenario must fail with (`None`: it must pass).
struct Check {
    label: String,
    run: GuestRun,
    lines: Vec<String>,
    fails_with: Option<&'static str>,
}

/// What the self-test runs.
fn selftest_runs(elves: &[PathBuf], env: &Path) -> Vec<Check> {
    let elf = |name: &str| {
        GUESTS
            .iter()
            .position(|g| *g == name)
            .and_then(|i| elves.get(i))
            .cloned()
            .unwrap_or_default()
    };
    // Small guests get 8 MiB: the VMM fills guest RAM before loading (about 0.15 s of Bochs
    // per 8 MiB), and they need 1 MiB + a few pages.
    let small = |name: &str| {
        let mut r = GuestRun::new(elf(name));
        r.megs = 8;
        r
    };
    let mut hello = small("hello");
    hello.append = "hello.elf greeting=hi console=uart".into();
    hello.modules = vec![
        (env.to_path_buf(), "env.txt role=environment".into()),
        (env.to_path_buf(), "second copy".into()),
    ];
    let hello_lines = vec![
        "vmm: guest: hello: this line came by rep outsb, 64 bytes per exit at most".to_string(),
        "vmm: guest: hello: cmdline: hello.elf greeting=hi console=uart".to_string(),
        "vmm: guest: hello: modules: 00000002".to_string(),
        "vmm: guest: hello: module 00000000: string \"env.txt role=environment\", size 00000024, \
         first line: RHAX_ENV=selftest"
            .to_string(),
        "vmm: guest: hello: module 00000001: string \"second copy\"".to_string(),
        "vmm: guest: hello: done".to_string(),
        "vmm: result: exit status 0".to_string(),
    ];
    let mut hello2 = hello.clone();
    hello2.cpus = 2;
    hello2.x2apic = true;
    let mut memtest = GuestRun::new(elf("memtest"));
    memtest.megs = 24;
    let memtest_lines = vec![
        "vmm: guest: memtest: RAM top 01800000".to_string(),
        "vmm: guest: memtest: pattern, last dword, open bus, .data and .bss: ok".to_string(),
    ];
    let mut smp = small("smp");
    smp.cpus = 2;
    let mut fault = small("fault");
    fault.expect = "stop".into();
    let fault_lines = vec![
        "vmm: guest: fault: an empty IDT, then UD2".to_string(),
        "vmm: result: vCPU 0 stopped (triple fault)".to_string(),
    ];
    let mut apic_timer = small("apic-timer");
    apic_timer.x2apic = true;
    let mut apic_timer_no_x2apic = small("apic-timer");
    apic_timer_no_x2apic.x2apic = false;
    let mut apic_ipi = small("apic-ipi");
    apic_ipi.cpus = 2;
    apic_ipi.x2apic = true;
    // ApicFlags::NO_TPR_SHADOW: no APIC-access page, no virtual-interrupt delivery; xAPIC
    // accesses are EPT violations served by the kernel's MMIO path.
    let mut apic_ipi_no_tpr = apic_ipi.clone();
    apic_ipi_no_tpr.apic_flags = Some(1 << 1);
    let bad = |word: &str, expect: &str| {
        let mut r = small("bad");
        r.append = word.into();
        r.expect = expect.into();
        r
    };
    let pass = |label: &str, run: GuestRun, lines: Vec<String>| Check {
        label: label.into(),
        run,
        lines,
        fails_with: None,
    };
    let fail = |word: &str, expect: &str, reason: &'static str| Check {
        label: format!("bad {word} (must fail)"),
        run: bad(word, expect),
        lines: vec![format!("vmm: guest: bad: {word}")],
        fails_with: Some(reason),
    };
    vec![
        pass("hello", hello, hello_lines.clone()),
        pass(
            "hello --cpus 2 --x2apic",
            hello2,
            vec![
                hello_lines[0].clone(),
                "vmm: cpuid: x2APIC and TSC-deadline asked for; the driver kept x2APIC true, \
                 TSC-deadline true"
                    .to_string(),
                "vCPU 1: never started".to_string(),
            ],
        ),
        pass("memtest", memtest, memtest_lines),
        pass(
            "smp --cpus 2",
            smp,
            vec![
                "vmm: vCPU 1 started (INIT/SIPI) on CPU 1".to_string(),
                "vmm: guest: smp: AP up, APIC ID 00000001".to_string(),
                "vmm: guest: smp: the AP reported, done".to_string(),
                "vmm: result: exit status 0".to_string(),
            ],
        ),
        pass(
            "apic-timer --x2apic",
            apic_timer,
            vec![
                "vmm: guest: apic-timer: periodic: 0000000A interrupts".to_string(),
                "vmm: guest: apic-timer: tsc-deadline: 0000000A interrupts, none before its \
                 deadline"
                    .to_string(),
                "vmm: guest: apic-timer: done".to_string(),
                "vmm: result: exit status 0".to_string(),
            ],
        ),
        Check {
            label: "apic-timer without --x2apic (must fail)".into(),
            run: apic_timer_no_x2apic,
            lines: vec!["vmm: guest: apic-timer: periodic: 0000000A interrupts".to_string()],
            // Status 2: CPUID shows no TSC-deadline.
            fails_with: Some("exit status 2, expected exit status 0"),
        },
        pass(
            "apic-ipi --cpus 2 --x2apic",
            apic_ipi,
            vec![
                "vmm: vCPU 1 started (INIT/SIPI) on CPU 1".to_string(),
                "vmm: guest: apic-ipi: AP up in x2APIC mode, x2APIC ID 00000001".to_string(),
                "vmm: guest: apic-ipi: BSP got 00000008 IPIs (x2APIC ICR), AP got 00000008"
                    .to_string(),
                "vmm: guest: apic-ipi: done".to_string(),
                "vmm: result: exit status 0".to_string(),
            ],
        ),
        pass(
            "apic-ipi --cpus 2 --x2apic --apic-flags 0x2 (NO_TPR_SHADOW)",
            apic_ipi_no_tpr,
            vec![
                "vmm: guest: apic-ipi: BSP got 00000008 IPIs (x2APIC ICR), AP got 00000008"
                    .to_string(),
                "vmm: result: exit status 0".to_string(),
            ],
        ),
        pass("fault", fault, fault_lines),
        pass(
            "bad exit42 --expect 42",
            bad("exit42", "42"),
            vec!["vmm: result: exit status 42".to_string()],
        ),
        fail("exit42", "0", "exit status 42, expected exit status 0"),
        fail("cli-hlt", "0", "the guest halted with interrupts off"),
        fail("sti-hlt", "0", "the guest halted waiting for an interrupt"),
        fail(
            "port",
            "0",
            "port IO this VMM does not serve: Out port 0x80, size 1",
        ),
    ]
}

/// The environment module of `hello` (36 bytes: its size is checked in the output).
const ENV_TXT: &str = "RHAX_ENV=selftest\nRHAX_MODULE=env\n.\n";

/// Every test guest on both self-test models; each result and the expected console lines
/// checked.
pub fn selftest() -> crate::Result {
    let t0 = Instant::now();
    let elves = build_guests()?;
    let env = crate::target_dir().join("vmm-guests").join("env.txt");
    std::fs::write(&env, ENV_TXT).map_err(|e| format!("{}: {e}", env.display()))?;
    let kernel = metal::build_kernel()?;
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for model in SELFTEST_MODELS {
        for check in selftest_runs(&elves, &env) {
            let t = Instant::now();
            let (_, report) = run_guest(&kernel, model, &check.run, Duration::from_secs(120))?;
            let missing: Vec<&String> = check
                .lines
                .iter()
                .filter(|want| !report.lines.iter().any(|l| l.contains(want.as_str())))
                .collect();
            let failure = report
                .failed
                .first()
                .map(|(_, r)| r.clone())
                .or(report.died.clone());
            let why = match (check.fails_with, &failure) {
                (None, Some(f)) => f.clone(),
                (None, None) if report.passed.len() != 1 => "no scenario result".into(),
                (Some(want), Some(f)) if !f.contains(want) => {
                    format!("failed with {f:?}, expected a failure with {want:?}")
                }
                (Some(want), None) => format!("passed, expected a failure with {want:?}"),
                _ if !missing.is_empty() => format!("console lacks {missing:?}"),
                _ => String::new(),
            };
            let ok = why.is_empty();
            let label = &check.label;
            rows.push(format!(
                "vmm selftest: {} {model} {label} ({:.1} s){}",
                if ok { "PASS" } else { "FAIL" },
                t.elapsed().as_secs_f64(),
                if ok {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ));
            if !ok {
                failures.push(format!("{model} {label}"));
            }
        }
    }
    for r in &rows {
        println!("{r}");
    }
    println!(
        "vmm selftest: {} runs, {} failed, {:.1} s",
        rows.len(),
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("vmm selftest failed: {}", failures.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_argument_with_and_without_string() {
        assert_eq!(
            parse_module("/tmp/env.txt,env role=x"),
            (PathBuf::from("/tmp/env.txt"), "env role=x".to_string())
        );
        assert_eq!(
            parse_module("/tmp/env.txt"),
            (PathBuf::from("/tmp/env.txt"), "env.txt".to_string())
        );
    }

    #[test]
    fn expect_is_a_status_or_a_triple_fault() {
        assert_eq!(parse_expect("0").unwrap(), "0");
        assert_eq!(parse_expect("0x2a").unwrap(), "0x2a");
        assert_eq!(parse_expect("triple-fault").unwrap(), "stop");
        assert!(parse_expect("-1").is_err());
        assert!(parse_expect("boom").is_err());
    }

    #[test]
    fn kernel_args_and_rom_modules_in_order() {
        let dir = std::env::temp_dir().join(format!("rhax-vmm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (elf, m1) = (dir.join("g.elf"), dir.join("m1"));
        std::fs::write(&elf, b"ELF!").unwrap();
        std::fs::write(&m1, b"module one").unwrap();
        let mut run = GuestRun::new(elf);
        run.append = "a b=c".into();
        run.modules.push((m1, "one".into()));
        run.cpus = 2;
        run.x2apic = true;
        run.expect = "stop".into();
        run.halt_ms = Some(100);
        assert_eq!(
            run.kernel_args(),
            [
                "vmm_cpus=2",
                "vmm_megs=32",
                "vmm_expect=stop",
                "vmm_x2apic=1",
                "vmm_halt_ms=100"
            ]
        );
        let m = run.rom_modules().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].data.as_slice(), m[0].string.as_str()),
            (&b"ELF!"[..], "a b=c")
        );
        assert_eq!(
            (m[1].data.as_slice(), m[1].string.as_str()),
            (&b"module one"[..], "one")
        );
        run.modules.push((dir.join("missing"), "x".into()));
        assert!(run.rom_modules().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_module_size_matches_the_expected_line() {
        // The self-test expects `size 00000024` for the environment module.
        assert_eq!(ENV_TXT.len(), 0x24);
    }
}
