//! `rhax-client`: see the crate documentation (`lib.rs`) and `--help`.

use std::process::ExitCode;

use rhax_client::qemu;

const USAGE: &str = "\
usage: rhax-client [qemu] [--ram-mb N] [--vcpus N] [--run]
       rhax-client assert-no-vtx [--ram-mb N] [--expect-refcount N]
       rhax-client assert-vtx
       rhax-client leak
       rhax-client exit-bench [--batches N] [--iterations N] [--any-tsc]

qemu          (default) QEMU's opening sequence against \\\\.\\HAX, printing each step and where
              QEMU would stop. --run also maps 2 MiB of RAM and runs a 5-byte real-mode guest
              to its HLT (needs working VT-x).
assert-no-vtx the Wine stage's checks of a driver that cannot run VMs: VERSION, CAPABILITY
              (not working, VT reason), every IOCTL code with short and long buffers, invalid
              handles, CREATE_VM refused, open semantics. PASS/FAIL per check; exit 1 on any
              failure. --expect-refcount N: CAPABILITY's win_refcount must be N while the
              checks hold their two handles (nothing else has \\\\.\\HAX open).
assert-vtx    with working VT-x: VM and vCPU devices are exclusive, every VM/vCPU IOCTL with
              no buffer or one byte short and every other device's code gets HAXM's error,
              VCPU_CREATE 16 refused, SETUP_TUNNEL >= 48 bytes, devices gone after close.
leak          opens \\\\.\\HAX twice, asks VERSION, and exits without closing either handle:
              the system closes them (IRP_MJ_CLEANUP, IRP_MJ_CLOSE) as it does for a QEMU
              that crashes.
exit-bench    emulated instructions per VM-exit round trip (issue 10 item 4): a real-mode
              guest in 64 KiB of this process's memory runs, --batches times (default 100),
              an RDTSC bracket and three loops of --iterations (default 20): no exit (must
              measure 4.000 per iteration: inside Bochs the TSC counts instructions), CPUID
              (handled in the kernel) and OUT to port 0x80 (each served here: RUN again).
              Prints min and median per round trip, and rhax's own counters. Linux: /dev/HAX
              (rhax.ko or HAXM); Windows: \\\\.\\HAX, where with real VT-x the TSC counts
              cycles, so pass --any-tsc there (the calibration check is skipped).";

struct Args {
    mode: String,
    opts: qemu::Options,
    expect_refcount: Option<u32>,
    bench: rhax_client::bench::Options,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        mode: "qemu".into(),
        opts: qemu::Options::default(),
        expect_refcount: None,
        bench: rhax_client::bench::Options::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{what} needs a number"))
        };
        match a.as_str() {
            "qemu" | "assert-no-vtx" | "assert-vtx" | "leak" | "exit-bench" => args.mode = a,
            "--batches" => {
                args.bench.batches = u16::try_from(num("--batches")?)
                    .ok()
                    .filter(|b| *b > 0)
                    .ok_or("--batches: 1 to 65535")?
            }
            "--iterations" => {
                args.bench.iterations = u32::try_from(num("--iterations")?)
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or("--iterations: 1 to 1000000")?
            }
            "--any-tsc" => args.bench.any_tsc = true,
            "--expect-refcount" => {
                args.expect_refcount =
                    Some(u32::try_from(num("--expect-refcount")?).map_err(|e| e.to_string())?)
            }
            "--ram-mb" => args.opts.ram_bytes = num("--ram-mb")?.saturating_mul(1 << 20),
            "--vcpus" => {
                args.opts.vcpus = u32::try_from(num("--vcpus")?).map_err(|e| e.to_string())?
            }
            "--run" => args.opts.run = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("rhax-client: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.mode.as_str() {
        "assert-no-vtx" => assert_no_vtx(args.opts.ram_bytes, args.expect_refcount),
        "leak" => os::leak(),
        "assert-vtx" => assert_vtx(),
        "exit-bench" => exit_bench(&args.bench),
        _ => qemu_sequence(args.opts),
    }
}

fn qemu_sequence(opts: qemu::Options) -> ExitCode {
    println!(
        "rhax-client: QEMU's HAX opening sequence (guest RAM {} MiB, {} vCPU(s){})",
        opts.ram_bytes >> 20,
        opts.vcpus,
        if opts.run { ", run a guest" } else { "" }
    );
    let Some(report) = os::qemu(opts) else {
        eprintln!(
            "rhax-client: no HAXM transport on this OS (Windows: \\\\.\\HAX, POSIX: /dev/HAX)"
        );
        return ExitCode::from(2);
    };
    for (i, s) in report.steps.iter().enumerate() {
        let mark = if s.ok { "ok  " } else { "FAIL" };
        println!("[{:>2}] {mark} {}: {}", i + 1, s.what, s.detail);
    }
    match report.stop() {
        Some(s) => {
            println!("QEMU would stop at: {} ({})", s.what, s.detail);
            ExitCode::from(1)
        }
        None => {
            println!("QEMU's sequence completes on this driver");
            ExitCode::SUCCESS
        }
    }
}

fn exit_bench(opts: &rhax_client::bench::Options) -> ExitCode {
    let Some(r) = os::exit_bench(opts) else {
        eprintln!(
            "rhax-client: no HAXM transport on this OS (Windows: \\\\.\\HAX, POSIX: /dev/HAX)"
        );
        return ExitCode::from(2);
    };
    let (results, counters, split) = match r {
        Ok(r) => r,
        Err(e) => {
            println!("exit-bench: failed: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{results}");
    if let Some(c) = counters {
        print!("{c}");
    }
    println!("{split}");
    let summary = format!(
        "calibration {:.3} per iteration, CPUID {:.1} and OUT {:.1} per round trip (min of {})",
        results.calibration.min, results.cpuid.min, results.out.min, results.opts.batches
    );
    if results.calibrated() || opts.any_tsc {
        println!("exit-bench: {summary}");
        ExitCode::SUCCESS
    } else {
        println!(
            "exit-bench: the calibration loop did not measure 4.000 per iteration: the TSC \
             does not count instructions here, so the figures mean nothing ({summary})"
        );
        ExitCode::from(1)
    }
}

fn assert_no_vtx(ram_bytes: u64, expect_refcount: Option<u32>) -> ExitCode {
    let Some(mut c) = os::no_vtx(ram_bytes, expect_refcount) else {
        eprintln!(
            "rhax-client: assert-no-vtx checks Windows error codes; it runs on Windows (or Wine)"
        );
        return ExitCode::from(2);
    };
    os::raw_handle_checks(&mut c);
    print_checks(&c)
}

fn assert_vtx() -> ExitCode {
    let Some(c) = os::vtx() else {
        eprintln!("rhax-client: assert-vtx checks Windows error codes; it runs on Windows");
        return ExitCode::from(2);
    };
    print_checks(&c)
}

fn print_checks(c: &rhax_client::checks::Checks) -> ExitCode {
    for x in &c.list {
        println!(
            "{} {}: {}",
            if x.pass { "PASS" } else { "FAIL" },
            x.name,
            x.detail
        );
    }
    let failed = c.failures();
    println!("rhax-client: {} checks, {failed} failed", c.list.len());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(windows)]
mod os {
    use std::process::ExitCode;

    use rhax::WindowsTransport;
    use rhax_client::checks::{describe_win32, Checks};
    use rhax_client::status::{win32_from_nt, STATUS_INVALID_HANDLE};
    use rhax_client::{bench, qemu};
    use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, HANDLE};
    use windows_sys::Win32::System::IO::DeviceIoControl;

    pub fn qemu(opts: qemu::Options) -> Option<qemu::Report> {
        Some(qemu::run(WindowsTransport, opts))
    }

    pub fn exit_bench(opts: &bench::Options) -> Option<bench::Outcome> {
        Some(bench::run(WindowsTransport, opts))
    }

    pub fn vtx() -> Option<Checks> {
        Some(rhax_client::vtx::with_vtx(WindowsTransport, is_wine()))
    }

    /// Whether this is Wine: its ntdll exports `wine_get_version` (Wine's documented way to
    /// tell, `winehq.org` FAQ "How can I detect Wine?").
    fn is_wine() -> bool {
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
        let ntdll: Vec<u16> = "ntdll.dll".encode_utf16().chain(Some(0)).collect();
        // SAFETY: a NUL-terminated name; ntdll is loaded in every process.
        let m = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
        if m.is_null() {
            return false;
        }
        // SAFETY: `m` is a loaded module; the name is NUL-terminated.
        unsafe { GetProcAddress(m, c"wine_get_version".as_ptr().cast()) }.is_some()
    }

    pub fn no_vtx(ram_bytes: u64, expect_refcount: Option<u32>) -> Option<Checks> {
        Some(rhax_client::checks::no_vtx(
            WindowsTransport,
            ram_bytes,
            expect_refcount,
        ))
    }

    /// Two handles and a VERSION, then the process ends with both open.
    pub fn leak() -> ExitCode {
        let t = WindowsTransport;
        let mut open = 0;
        for _ in 0..2 {
            match rhax::System::open(t) {
                Ok(sys) => {
                    if let Err(e) = sys.version() {
                        println!("rhax-client: VERSION failed: {e}");
                        return ExitCode::from(1);
                    }
                    // Not closed: the process exit closes it.
                    core::mem::forget(sys);
                    open += 1;
                }
                Err(e) => {
                    println!("rhax-client: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        println!("rhax-client: exiting with {open} handles to \\\\.\\HAX open");
        std::process::exit(0)
    }

    /// VERSION on `h`: the Win32 error, or `None` on success.
    fn version_on(h: HANDLE) -> Option<u32> {
        let mut out = [0u8; 8];
        let mut got = 0u32;
        let code = rhax::api::ioctl::HAX_IOCTL_VERSION.windows().unwrap_or(0);
        // SAFETY: `out` is 8 writable bytes for the call; no input buffer; synchronous. `h` may
        // be invalid: that is what is being tested, and the system reports it as an error.
        let ok = unsafe {
            DeviceIoControl(
                h,
                code,
                core::ptr::null(),
                0,
                out.as_mut_ptr().cast(),
                8,
                &mut got,
                core::ptr::null_mut(),
            )
        };
        if ok != 0 {
            return None;
        }
        // SAFETY: reads the calling thread's last-error value.
        Some(unsafe { GetLastError() })
    }

    /// Invalid handles never reach the driver: the object manager refuses them
    /// (`STATUS_INVALID_HANDLE`).
    pub fn raw_handle_checks(c: &mut Checks) {
        let want = win32_from_nt(STATUS_INVALID_HANDLE);
        let got = version_on(core::ptr::null_mut());
        c.check(
            "VERSION on a NULL handle: ERROR_INVALID_HANDLE",
            got.is_some() && got == want,
            format!("{:?}", got.map(describe_win32)),
        );
        let t = WindowsTransport;
        match rhax::Transport::open(&t, rhax::DevicePath::System) {
            Ok(h) => {
                let raw = raw(&h);
                // SAFETY: closes the handle just opened, once: a `WinHandle` closes only through
                // `Transport::close`, which is not called for `h`.
                let closed = unsafe { CloseHandle(raw) };
                let _ = h;
                let got = version_on(raw);
                c.check(
                    "VERSION on a closed handle: ERROR_INVALID_HANDLE",
                    closed != 0 && got.is_some() && got == want,
                    format!("{:?}", got.map(describe_win32)),
                );
            }
            Err(e) => c.check("VERSION on a closed handle", false, e.to_string()),
        }
    }

    fn raw(h: &rhax::WinHandle) -> HANDLE {
        h.raw()
    }
}

#[cfg(all(unix, not(windows)))]
mod os {
    use std::process::ExitCode;

    use rhax::PosixTransport;
    use rhax_client::checks::Checks;
    use rhax_client::{bench, qemu};

    /// The sequence also runs against HAXM (or rhax) on Linux/macOS through `/dev/HAX`.
    pub fn qemu(opts: qemu::Options) -> Option<qemu::Report> {
        Some(qemu::run(PosixTransport, opts))
    }

    pub fn exit_bench(opts: &bench::Options) -> Option<bench::Outcome> {
        Some(bench::run(PosixTransport, opts))
    }

    pub fn no_vtx(_ram_bytes: u64, _expect_refcount: Option<u32>) -> Option<Checks> {
        None
    }

    pub fn vtx() -> Option<Checks> {
        None
    }

    pub fn raw_handle_checks(_c: &mut Checks) {}

    pub fn leak() -> ExitCode {
        eprintln!("rhax-client: leak is a Windows check");
        ExitCode::from(2)
    }
}

#[cfg(not(any(unix, windows)))]
mod os {
    use std::process::ExitCode;

    use rhax_client::checks::Checks;
    use rhax_client::{bench, qemu};

    pub fn qemu(_opts: qemu::Options) -> Option<qemu::Report> {
        None
    }

    pub fn exit_bench(_opts: &bench::Options) -> Option<bench::Outcome> {
        None
    }

    pub fn no_vtx(_ram_bytes: u64, _expect_refcount: Option<u32>) -> Option<Checks> {
        None
    }

    pub fn vtx() -> Option<Checks> {
        None
    }

    pub fn raw_handle_checks(_c: &mut Checks) {}

    pub fn leak() -> ExitCode {
        eprintln!("rhax-client: leak is a Windows check");
        ExitCode::from(2)
    }
}
