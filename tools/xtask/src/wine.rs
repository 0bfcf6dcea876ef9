//! `cargo xtask wine`: loads `rhax.sys` under Wine as a kernel service and drives it with the
//! Windows clients (`rhax-check`, `rhax-client`), as `cargo xtask test` does on every run.
//!
//! What it does, in order (every Wine command under a timeout, so a hung wineserver cannot
//! hang CI; every output kept under `target/wine/logs/`):
//! 1. installs `wine64` and `mingw-w64` with apt-get when missing, and the rustup target
//!    `x86_64-pc-windows-gnu`; builds `rhax.sys` (release and debug, `crate::sys::build`),
//!    the `wine-fake-vmx` test image and the clients;
//! 2. a private prefix `target/wine/prefix` (created once with `wineboot -i`); `wineserver -p`
//!    for the whole stage, plus one idle `cmd.exe` as the session's first process: Wine's
//!    services and driver host (`winedevice.exe`) inherit its `WINEDEBUG=warn+debugstr`, so
//!    the driver's DbgPrint lands in `target/wine/wine.log`, and they stay up between commands
//!    (without a live process Wine ends the session and unloads the driver);
//! 3. service `rhax`: `sc create rhax type= kernel ...`, `sc start`, RUNNING; `rhax-check`
//!    (rhax installed, rhax answering); `rhax-client assert-no-vtx` (VERSION 4/1, CAPABILITY not
//!    working with the VT reason, every IOCTL code with short/long buffers, wrong devices and
//!    invalid handles get HAXM's Win32 errors, CREATE_VM refused, open semantics); the QEMU
//!    sequence stops at CAPABILITY; `sc stop` (unload): STOPPED and `\\.\HAX` gone; `sc start`
//!    again and the checks again; `sc stop`, `sc delete`;
//! 4. the same driver as service `IntelHaxm` (HAXM's name: Android Studio runs
//!    `sc query intelhaxm`): RUNNING, `rhax-check` reports IntelHaxm installed and rhax
//!    answering, the checks pass; stop, delete;
//! 5. both services at once: the second load must fail cleanly (`\Device\HAX` exists), the
//!    first driver keeps answering, `rhax-check` reports both installed;
//! 6. the debug image (overflow checks, debug assertions) under `rhax`: the checks again;
//!    then the TEST BUILD `wine-fake-vmx` (rhax-core's software VMX in place of the CPU, never
//!    shipped), with which CREATE_VM works under Wine: `rhax-client assert-vtx` on the VM and
//!    vCPU devices and QEMU's sequence up to SETUP_TUNNEL;
//! 7. the unit tests of rhax, rhax-check and rhax-client built for Windows, run under Wine;
//! 8. the logs: any "Unhandled" or "unimplemented function" line fails the stage (a fault in the
//!    driver, or an ntoskrnl import Wine lacks being called).
//!
//! Wine 8.0 gap worked around: Rust's std for `x86_64-pc-windows-gnu` imports
//! `bcryptprimitives.dll!ProcessPrng` (Windows 10+), which Wine 8.0 lacks; the stage builds a
//! one-function stand-in with mingw-w64 (over `advapi32!SystemFunction036`) into the prefix.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

mod bundle;
mod hosts;
mod scenario;

const WIN_TARGET: &str = "x86_64-pc-windows-gnu";
/// `err` on, `fixme` off (Wine's own unimplemented-feature notes), DbgPrint on.
const WINEDEBUG: &str = "fixme-all,warn+debugstr";
const SC_TIMEOUT: Duration = Duration::from_secs(60);
/// What Wine's loader prints when a new process cannot map the shared user data at its fixed
/// address (the process never ran; see `Run::exec_in`).
const WINE_STARTUP_FAILURE: &str = "failed to map the shared user data";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Where Wine puts the driver, as the service's binPath names it.
const DRIVERS: &str = "C:\\windows\\system32\\drivers";

/// The `ProcessPrng` stand-in (see the module documentation). `SystemFunction036` is
/// `RtlGenRandom`; `ProcessPrng` is documented to always return TRUE, this one reports a
/// failure of its source instead of hiding it.
const PROCESS_PRNG_C: &str = r#"#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG len);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n)) return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
"#;

/// The images the stage loads: built from source, or given (`--sys`, `--sys-debug`,
/// `--sys-fake`; with `--sys`, the ones not given are skipped).
#[derive(Default)]
struct Images {
    release: Option<PathBuf>,
    debug: Option<PathBuf>,
    fake: Option<PathBuf>,
}

/// `cargo xtask wine [--sys PATH] [--sys-debug PATH] [--sys-fake PATH]`: loads given images
/// instead of building them. `cargo xtask wine bundle`: the folder a volunteer runs on a real
/// Windows machine.
pub fn main(args: &[String]) -> Result {
    let usage = "usage: cargo xtask wine [--sys PATH] [--sys-debug PATH] [--sys-fake PATH] \
                 | cargo xtask wine bundle";
    if args.len() == 1 && args[0] == "bundle" {
        return bundle::bundle();
    }
    let mut images = Images::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let path = it.next().map(PathBuf::from).ok_or(usage)?;
        match flag.as_str() {
            "--sys" => images.release = Some(path),
            "--sys-debug" => images.debug = Some(path),
            "--sys-fake" => images.fake = Some(path),
            _ => return Err(usage.into()),
        }
    }
    run_stage(images)
}

/// The stage `cargo xtask test` runs.
pub fn stage() -> Result {
    run_stage(Images::default())
}

fn run_stage(images: Images) -> Result {
    let t0 = Instant::now();
    let tools = prepare(images)?;
    let built = Instant::now();
    let mut run = Run::start(tools)?;
    let result = run.scenario();
    let shutdown = run.stop();
    let scan = run.scan_logs();
    run.summary(t0, built);
    result?;
    shutdown?;
    scan?;
    if run.failed() > 0 {
        return Err(format!(
            "wine stage: {} of {} steps failed (logs in {})",
            run.failed(),
            run.steps.len(),
            run.dir.display()
        ));
    }
    Ok(())
}

/// What the stage runs.
struct Tools {
    bin: PathBuf,
    sys: PathBuf,
    /// The debug image (overflow checks, debug assertions such as the dispatcher's lock-order
    /// checks), when built by the stage.
    sys_debug: Option<PathBuf>,
    /// The TEST BUILD `wine-fake-vmx` (rhax-core's software VMX instead of the CPU), when built
    /// by the stage: CREATE_VM and VCPU_CREATE work under Wine with it.
    sys_fake: Option<PathBuf>,
    check: PathBuf,
    client: PathBuf,
}

fn which(name: &str) -> Option<PathBuf> {
    crate::apt::which(name).or_else(|| {
        let p = Path::new("/usr/lib/wine").join(name);
        p.is_file().then_some(p)
    })
}

/// Installs what is missing, builds the driver and the clients.
fn prepare(images: Images) -> Result<Tools> {
    let Images {
        release: sys,
        debug: sys_debug,
        fake: sys_fake,
    } = images;
    let mut missing = Vec::new();
    if which("wine64").is_none() || which("wineserver").is_none() {
        missing.push("wine64");
    }
    if which("x86_64-w64-mingw32-gcc").is_none() {
        missing.push("mingw-w64");
    }
    if !missing.is_empty() {
        crate::apt::install(&missing)?;
    }
    let wine64 = which("wine64").ok_or("wine64 not found after installing it")?;
    let bin = wine64.parent().unwrap_or(Path::new("/")).to_path_buf();
    crate::ensure_rust_target(WIN_TARGET)?;
    let given = sys.is_some();
    let sys = match sys {
        Some(p) if p.is_file() => p,
        Some(p) => return Err(format!("{} does not exist", p.display())),
        None => crate::sys::build(crate::sys::Profile::Release)?,
    };
    let sys_debug = match sys_debug {
        Some(p) if p.is_file() => Some(p),
        Some(p) => return Err(format!("{} does not exist", p.display())),
        None if given => None,
        None => Some(crate::sys::build(crate::sys::Profile::Debug)?),
    };
    let sys_fake = match sys_fake {
        Some(p) if p.is_file() => Some(p),
        Some(p) => return Err(format!("{} does not exist", p.display())),
        None if given => None,
        None => Some(build_fake()?),
    };
    crate::cargo(&[
        "build",
        "-q",
        "-p",
        "rhax-check",
        "-p",
        "rhax-client",
        "--target",
        WIN_TARGET,
    ])?;
    let exe = crate::target_dir().join(WIN_TARGET).join("debug");
    Ok(Tools {
        bin,
        sys,
        sys_debug,
        sys_fake,
        check: exe.join("rhax-check.exe"),
        client: exe.join("rhax-client.exe"),
    })
}

/// Builds the driver's TEST BUILD `wine-fake-vmx` (driver/windows/Cargo.toml: never shipped;
/// the shell over rhax-core's software VMX and heap platform) into `target/windows-fake`.
fn build_fake() -> Result<PathBuf> {
    crate::sys::build_variant(
        crate::sys::Profile::Release,
        &["--features", "wine-fake-vmx"],
        &crate::target_dir().join("windows-fake"),
    )
    .map_err(|e| format!("the wine-fake-vmx test image: {e}"))
}

/// One step's result.
struct Step {
    name: String,
    pass: bool,
    detail: String,
    secs: f64,
}

/// A command's outcome: exit code (None: killed after its timeout) and output.
struct Output {
    code: Option<i32>,
    text: String,
}

/// The running stage: the prefix, the logs, the persistent processes, the results.
struct Run {
    tools: Tools,
    dir: PathBuf,
    prefix: PathBuf,
    logs: PathBuf,
    keeper: Option<(Child, Option<ChildStdin>)>,
    steps: Vec<Step>,
    n: usize,
    /// Per service (lower case), the `winedevice.exe` processes its `sc start`s created
    /// (`hosts.rs`).
    hosts: std::collections::BTreeMap<String, std::collections::BTreeSet<u32>>,
}

impl Run {
    fn start(tools: Tools) -> Result<Self> {
        let dir = crate::target_dir().join("wine");
        let logs = dir.join("logs");
        let _ = fs::remove_dir_all(&logs);
        fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
        let mut run = Run {
            prefix: dir.join("prefix"),
            dir,
            logs,
            tools,
            keeper: None,
            steps: Vec::new(),
            n: 0,
            hosts: Default::default(),
        };
        // A server left over from an earlier run would carry its environment (WINEDEBUG)
        // into the services: stop it first.
        let _ = run.exec("wineserver-kill", &["wineserver", "-k"], SC_TIMEOUT);
        // Complete once wineboot has put the services' programs in place (the registry files
        // are written later, when the server saves them).
        let booted = run.prefix.join("drive_c/windows/system32/services.exe");
        if !booted.is_file() {
            let t = Instant::now();
            let out = run.exec("wineboot", &["wine64", "wineboot", "-i"], BOOT_TIMEOUT)?;
            let ok = out.code == Some(0) && booted.is_file();
            run.record("create the Wine prefix (wineboot -i)", ok, &out, t);
            if !ok {
                return Err(format!("wineboot failed: {}", tail(&out.text)));
            }
            // wineboot leaves its session's server running for a few seconds; let it end (and
            // save the new registry) before the stage's own persistent server starts.
            let out = run.exec("wineserver-w", &["wineserver", "-w"], SC_TIMEOUT)?;
            if out.code.is_none() {
                return Err("the server of wineboot's session did not end".into());
            }
        }
        run.install_prng_stand_in()?;
        let out = run.exec("wineserver-p", &["wineserver", "-p"], SC_TIMEOUT)?;
        if out.code != Some(0) {
            return Err(format!("`wineserver -p` failed: {}", tail(&out.text)));
        }
        run.start_keeper()?;
        Ok(run)
    }

    fn env(&self, c: &mut Command) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = vec![self.tools.bin.clone()];
        paths.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(paths).unwrap_or(path))
            .env("WINEPREFIX", &self.prefix)
            .env("WINEARCH", "win64")
            .env("WINEDEBUG", WINEDEBUG)
            // No Mono/Gecko installers (nothing here needs .NET or HTML), no display.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
    }

    /// Runs `argv` with a timeout; output (stdout then stderr) into its own log file.
    fn exec(&mut self, label: &str, argv: &[&str], limit: Duration) -> Result<Output> {
        let dir = self.dir.clone();
        self.exec_in(label, argv, limit, &dir)
    }

    /// [`Run::exec`] in the directory `cwd`. A Wine process that could not even start (its
    /// loader found the shared user data's fixed address taken, `virtual_alloc_first_teb`:
    /// "failed to map the shared user data", an address-space layout accident of the host,
    /// seen on CI as the `sc start` of a step failing before sc.exe ran) is started once
    /// more, said out loud: nothing of the command ran, so nothing is repeated.
    fn exec_in(
        &mut self,
        label: &str,
        argv: &[&str],
        limit: Duration,
        cwd: &Path,
    ) -> Result<Output> {
        let out = self.exec_once(label, argv, limit, cwd)?;
        if argv[0].starts_with("wine") && out.text.contains(WINE_STARTUP_FAILURE) {
            println!(
                "wine: note: {label}: Wine could not start the process (\"{WINE_STARTUP_FAILURE}\"); once more in 2 s"
            );
            std::thread::sleep(Duration::from_secs(2));
            return self.exec_once(label, argv, limit, cwd);
        }
        Ok(out)
    }

    fn exec_once(
        &mut self,
        label: &str,
        argv: &[&str],
        limit: Duration,
        cwd: &Path,
    ) -> Result<Output> {
        self.n += 1;
        let log = self.logs.join(format!("{:02}-{label}.log", self.n));
        let err_log = self.logs.join(format!("{:02}-{label}.err", self.n));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = File::create(&err_log).map_err(|e| format!("{}: {e}", err_log.display()))?;
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir(cwd);
        self.env(&mut c);
        let mut child = c
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", argv.join(" ")))?;
        let start = Instant::now();
        let code = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s.code(),
                Ok(None) if start.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for {}: {e}", argv.join(" "))),
            }
        };
        let mut text = fs::read_to_string(&log).unwrap_or_default();
        text.push_str(&fs::read_to_string(&err_log).unwrap_or_default());
        if code.is_none() {
            text.push_str(&format!("\n[xtask: killed after {} s]\n", limit.as_secs()));
        }
        Ok(Output { code, text })
    }

    fn install_prng_stand_in(&mut self) -> Result {
        let dll = self
            .prefix
            .join("drive_c/windows/system32/bcryptprimitives.dll");
        if dll.is_file() {
            return Ok(());
        }
        let src = self.dir.join("bcryptprimitives.c");
        fs::write(&src, PROCESS_PRNG_C).map_err(|e| format!("{}: {e}", src.display()))?;
        let (s, d) = (src.display().to_string(), dll.display().to_string());
        let out = self.exec(
            "mingw-bcryptprimitives",
            &[
                "x86_64-w64-mingw32-gcc",
                "-shared",
                "-O2",
                "-s",
                "-o",
                &d,
                &s,
                "-ladvapi32",
            ],
            SC_TIMEOUT,
        )?;
        if out.code != Some(0) {
            return Err(format!(
                "building the bcryptprimitives.dll stand-in failed: {}",
                tail(&out.text)
            ));
        }
        Ok(())
    }

    /// The session's first process: an idle `cmd.exe` reading a pipe the stage holds.
    fn start_keeper(&mut self) -> Result {
        let log = self.dir.join("wine.log");
        let f = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        // stdout is cmd's prompt; the debug output of the services and of the driver host
        // (which inherit this process's stderr) is what the log is for.
        let mut c = Command::new("wine64");
        c.arg("cmd")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(f)
            .current_dir(&self.dir);
        self.env(&mut c);
        let mut child = c
            .spawn()
            .map_err(|e| format!("cannot start wine64 cmd: {e}"))?;
        let stdin = child.stdin.take();
        self.keeper = Some((child, stdin));
        Ok(())
    }

    fn record(&mut self, name: &str, pass: bool, out: &Output, t: Instant) {
        let detail = match out.code {
            Some(c) if pass => format!("exit {c}"),
            Some(c) => format!("exit {c}: {}", tail(&out.text)),
            None => format!("timed out: {}", tail(&out.text)),
        };
        self.check(name, pass, detail, t);
    }

    fn check(&mut self, name: &str, pass: bool, detail: String, t: Instant) {
        let secs = t.elapsed().as_secs_f64();
        println!(
            "wine: {} {name} ({secs:.1} s){}",
            if pass { "PASS" } else { "FAIL" },
            if pass {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
        self.steps.push(Step {
            name: name.to_string(),
            pass,
            detail,
            secs,
        });
    }

    fn failed(&self) -> usize {
        self.steps.iter().filter(|s| !s.pass).count()
    }

    /// `wine64 sc ARGS`; passes when the exit code is 0.
    fn sc(&mut self, name: &str, args: &[&str]) -> Result<Output> {
        let t = Instant::now();
        let mut argv = vec!["wine64", "sc"];
        argv.extend_from_slice(args);
        let label = format!("sc-{}", args.first().copied().unwrap_or(""));
        let starting = args.first() == Some(&"start");
        let before = if starting {
            hosts::winedevices(&self.prefix)
        } else {
            Default::default()
        };
        let mut out = self.exec(&label, &argv, SC_TIMEOUT)?;
        if starting && out.code != Some(0) && out.text.contains("failed to start service 1359") {
            // services.exe's ERROR_INTERNAL_ERROR before the driver ran (hosts.rs): once more,
            // said out loud; a driver that cannot load fails the second time too.
            println!(
                "wine: note: {name}: Wine answered 1359 (ERROR_INTERNAL_ERROR); once more in 2 s"
            );
            std::thread::sleep(Duration::from_secs(2));
            out = self.exec(&label, &argv, SC_TIMEOUT)?;
        }
        if starting {
            let after = hosts::winedevices(&self.prefix);
            let service = args.get(1).copied().unwrap_or("").to_ascii_lowercase();
            self.hosts
                .entry(service)
                .or_default()
                .extend(after.difference(&before));
        }
        let ok = out.code == Some(0);
        self.record(name, ok, &out, t);
        Ok(out)
    }

    /// Polls `sc query SERVICE` until its STATE is `want` (4 RUNNING, 1 STOPPED) or 15 s pass.
    fn wait_state(&mut self, service: &str, want: u32) -> Result {
        let t = Instant::now();
        let word = if want == 4 { "RUNNING" } else { "STOPPED" };
        let mut last = String::new();
        while t.elapsed() < Duration::from_secs(15) {
            let out = self.exec("sc-query", &["wine64", "sc", "query", service], SC_TIMEOUT)?;
            if sc_state(&out.text) == Some(want) {
                // STOPPED is reported from inside the host process: wait for it to exit
                // before anything starts again (hosts.rs).
                let (alive, waited) = if want == 1 {
                    let hosts = self
                        .hosts
                        .remove(&service.to_ascii_lowercase())
                        .unwrap_or_default();
                    (hosts::wait_gone(&self.prefix, &hosts), hosts.len())
                } else {
                    Default::default()
                };
                let msg = if alive.is_empty() {
                    String::new()
                } else {
                    format!("its winedevice.exe {alive:?} still alive 10 s after STOPPED")
                };
                if !alive.is_empty() {
                    self.hosts
                        .insert(service.to_ascii_lowercase(), alive.clone());
                }
                let name = if waited > 0 {
                    format!("sc query {service}: {word}, its winedevice.exe gone")
                } else {
                    format!("sc query {service}: {word}")
                };
                self.check(&name, alive.is_empty(), msg, t);
                return Ok(());
            }
            last = out.text;
            std::thread::sleep(Duration::from_millis(250));
        }
        self.check(
            &format!("sc query {service}: {word}"),
            false,
            format!("state {:?}: {}", sc_state(&last), tail(&last)),
            t,
        );
        Ok(())
    }

    /// Runs a client (`path` plus `args`); passes when its exit code is `want` and its output
    /// contains every string of `needles`.
    fn client(
        &mut self,
        name: &str,
        exe: &Path,
        args: &[&str],
        want: i32,
        needles: &[&str],
    ) -> Result<Output> {
        let t = Instant::now();
        let exe = exe.display().to_string();
        let mut argv = vec!["wine64", exe.as_str()];
        argv.extend_from_slice(args);
        let label = Path::new(&exe)
            .file_stem()
            .map_or("client".into(), |s| s.to_string_lossy().into_owned());
        let out = self.exec(&label, &argv, CLIENT_TIMEOUT)?;
        let missing: Vec<&str> = needles
            .iter()
            .copied()
            .filter(|n| !out.text.contains(n))
            .collect();
        let ok = out.code == Some(want) && missing.is_empty();
        let t_name = name.to_string();
        if ok {
            let detail = summary_line(&out.text);
            self.check(&t_name, true, detail, t);
            if let Some(line) = out.text.lines().find(|l| l.contains(" checks, ")) {
                println!("wine:      {}", line.trim());
            }
        } else {
            let mut detail = format!("exit {:?} (expected {want})", out.code);
            if !missing.is_empty() {
                detail.push_str(&format!("; missing {missing:?}"));
            }
            let fails: Vec<&str> = out.text.lines().filter(|l| l.starts_with("FAIL")).collect();
            if !fails.is_empty() {
                detail.push_str(&format!("; {}", fails.join(" | ")));
            } else {
                detail.push_str(&format!("; {}", tail(&out.text)));
            }
            self.check(&t_name, false, detail, t);
        }
        Ok(out)
    }

    /// Ends the keeper and the server (both under timeouts).
    fn stop(&mut self) -> Result {
        if let Some((mut child, stdin)) = self.keeper.take() {
            if let Some(mut s) = stdin {
                let _ = s.write_all(b"exit\r\n");
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let out = self.exec("wineserver-k", &["wineserver", "-k"], SC_TIMEOUT)?;
        if out.code.is_none() {
            return Err("`wineserver -k` hung".into());
        }
        Ok(())
    }

    /// Fails on "Unhandled" / "unimplemented function" anywhere; collects DbgPrint.
    fn scan_logs(&mut self) -> Result {
        let t = Instant::now();
        let mut files = vec![self.dir.join("wine.log")];
        if let Ok(rd) = fs::read_dir(&self.logs) {
            let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            v.sort();
            files.extend(v);
        }
        let mut bad = Vec::new();
        let mut dbg = String::new();
        for f in &files {
            let text = fs::read_to_string(f).unwrap_or_default();
            for line in text.lines() {
                if is_failure_line(line) {
                    bad.push(format!("{}: {line}", file_name(f)));
                }
                if line.contains(":debugstr:") {
                    dbg.push_str(line);
                    dbg.push('\n');
                }
            }
        }
        let dbg_path = self.dir.join("dbgprint.log");
        let _ = fs::write(&dbg_path, &dbg);
        let n = dbg.lines().count();
        println!(
            "wine: {n} DbgPrint lines (all in {}); first ones:",
            dbg_path.display()
        );
        for l in dbg.lines().take(6) {
            println!("wine:      {}", l.trim());
        }
        let pass = bad.is_empty();
        let detail = bad
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n    ");
        self.check(
            "no \"Unhandled\" or \"unimplemented function\" line in the Wine logs",
            pass,
            detail,
            t,
        );
        Ok(())
    }

    fn summary(&self, t0: Instant, built: Instant) {
        let total = t0.elapsed().as_secs_f64();
        let wine = built.elapsed().as_secs_f64();
        println!(
            "wine: {} steps, {} failed; {total:.1} s in all ({:.1} s building, {wine:.1} s under Wine); logs: {}",
            self.steps.len(),
            self.failed(),
            total - wine,
            self.dir.display()
        );
        for s in self.steps.iter().filter(|s| !s.pass) {
            println!("wine: FAILED {} ({:.1} s): {}", s.name, s.secs, s.detail);
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// A Wine log line that fails the stage: an exception nobody handled (a fault in the driver:
/// "Unhandled page fault", "Unhandled exception", "Unhandled privileged instruction") or a call
/// to an import Wine lacks ("unimplemented function ntoskrnl.exe.X").
fn is_failure_line(line: &str) -> bool {
    line.contains("Unhandled") || line.contains("unimplemented function")
}

/// The `STATE` number of `sc query` output.
fn sc_state(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("STATE"))
        .and_then(|rest| rest.trim_start().strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The last few lines of a command's output, for messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_wine_noise(l))
        .collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// A client's last line (its summary), for the step's detail.
fn summary_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !is_wine_noise(l))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Wine's complaints about the missing display, printed by every first process of a session.
fn is_wine_noise(l: &str) -> bool {
    l.contains(":winediag:") || l.contains(":systray:") || l.contains("start_rpcss")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sc_query_state_is_parsed() {
        let q = "SERVICE_NAME: rhax\n        TYPE               : 1  \n        STATE              : 4  RUNNING\n";
        assert_eq!(sc_state(q), Some(4));
        assert_eq!(sc_state("STATE              : 1  STOPPED"), Some(1));
        assert_eq!(sc_state("[SC] OpenService FAILED 1060"), None);
    }

    #[test]
    fn failure_lines() {
        // The shapes Wine 8.0 prints (dlls/ntdll/unix/signal_x86_64.c, loader.c).
        assert!(is_failure_line(
            "wine: Unhandled page fault on read access to 0000000000000000 at address \
             00000001400012A0 (thread 0130), starting debugger..."
        ));
        assert!(is_failure_line(
            "wine: Unhandled privileged instruction at address 0000000140001000 (thread 0130)"
        ));
        assert!(is_failure_line(
            "wine: Call from 00006FFFFFC5A8D4 to unimplemented function \
             ntoskrnl.exe.KeIpiGenericCall, aborting"
        ));
        assert!(!is_failure_line(
            "0130:warn:debugstr:vDbgPrintExWithPrefix 0000004d:00000001: rhax: \\.\\HAX ready"
        ));
    }

    #[test]
    fn tail_skips_display_noise() {
        let t = "0044:err:winediag:nodrv_CreateWindow no driver\nreal line\n";
        assert_eq!(tail(t), "real line");
        assert_eq!(summary_line(t), "real line");
    }
}
