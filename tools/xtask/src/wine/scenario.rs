//! The scenario of the Wine stage (see `wine.rs`): the install cycles under `rhax` and
//! `IntelHaxm`, both at once, the debug image, and the Windows unit tests under Wine.

use std::fs;
use std::time::{Duration, Instant};

use super::{tail, Run, DRIVERS, SC_TIMEOUT, WIN_TARGET};
use crate::Result;

impl Run {
    /// Installs, starts, checks, restarts and removes the driver under `service`.
    fn install_cycle(&mut self, service: &str, file: &str, restart: bool) -> Result {
        let bin = format!("{DRIVERS}\\{file}");
        self.sc(
            &format!("sc create {service} type= kernel"),
            &[
                "create", service, "type=", "kernel", "start=", "demand", "binPath=", &bin,
            ],
        )?;
        self.sc(&format!("sc start {service}"), &["start", service])?;
        // HAXM's service name is queried in lower case by Android's tools.
        self.wait_state(&service.to_lowercase(), 4)?;
        let check = self.tools.check.clone();
        let client = self.tools.client.clone();
        let installed = format!("installed: {service}");
        self.client(
            &format!("rhax-check: {service} installed, rhax answers \\\\.\\HAX"),
            &check,
            &["--expect-service", service, "--expect-driver", "rhax"],
            0,
            &[installed.as_str(), "answered by: rhax"],
        )?;
        self.client(
            "rhax-client assert-no-vtx",
            &client,
            &["assert-no-vtx"],
            0,
            &[", 0 failed"],
        )?;
        // A client that dies with handles open: the system closes them for it; the driver's
        // count must drop back (checked by the next run) and the unload below must still work.
        self.client(
            "rhax-client leak (exits with two handles open)",
            &client,
            &["leak"],
            0,
            &["exiting with 2 handles"],
        )?;
        self.client(
            "rhax-client assert-no-vtx --expect-refcount 2 (the dead client's handles are closed)",
            &client,
            &["assert-no-vtx", "--expect-refcount", "2"],
            0,
            &[
                ", 0 failed",
                "PASS CAPABILITY win_refcount counts the open handles",
            ],
        )?;
        self.client(
            "rhax-client: QEMU's sequence stops at CAPABILITY, CREATE_VM refused",
            &client,
            &[],
            1,
            &[
                "QEMU would stop at: HAX_IOCTL_CAPABILITY",
                "FAIL HAX_IOCTL_CREATE_VM: HAX_IOCTL_CREATE_VM failed: Win32 error 31",
            ],
        )?;
        self.sc(&format!("sc stop {service}"), &["stop", service])?;
        self.wait_state(service, 1)?;
        self.client(
            "after unload: \\\\.\\HAX is gone",
            &client,
            &[],
            1,
            &[
                "QEMU would stop at: open \\\\.\\HAX",
                "ERROR_FILE_NOT_FOUND",
            ],
        )?;
        if restart {
            self.sc(&format!("sc start {service} (again)"), &["start", service])?;
            self.wait_state(service, 4)?;
            self.client(
                "rhax-client assert-no-vtx (after restart)",
                &client,
                &["assert-no-vtx"],
                0,
                &[", 0 failed"],
            )?;
            self.sc(&format!("sc stop {service} (again)"), &["stop", service])?;
            self.wait_state(service, 1)?;
        }
        self.sc(&format!("sc delete {service}"), &["delete", service])?;
        Ok(())
    }

    pub(super) fn scenario(&mut self) -> Result {
        let drivers = self.prefix.join("drive_c/windows/system32/drivers");
        fs::create_dir_all(&drivers).map_err(|e| format!("{}: {e}", drivers.display()))?;
        fs::copy(&self.tools.sys, drivers.join("rhax.sys"))
            .map_err(|e| format!("cannot copy rhax.sys into the prefix: {e}"))?;
        // Services left by an interrupted earlier run.
        for s in ["rhax", "IntelHaxm"] {
            let _ = self.exec("cleanup", &["wine64", "sc", "stop", s], SC_TIMEOUT)?;
            let _ = self.exec("cleanup", &["wine64", "sc", "delete", s], SC_TIMEOUT)?;
        }
        self.install_cycle("rhax", "rhax.sys", true)?;
        // Drop-in: HAXM's service name, HAXM's file name.
        fs::copy(&self.tools.sys, drivers.join("IntelHaxm.sys"))
            .map_err(|e| format!("cannot copy IntelHaxm.sys into the prefix: {e}"))?;
        self.install_cycle("IntelHaxm", "IntelHaxm.sys", false)?;
        self.both_installed()?;
        self.debug_image()?;
        self.fake_vmx()?;
        self.windows_unit_tests()
    }

    /// The TEST BUILD `wine-fake-vmx` (never shipped): CAPABILITY reports working, so the VM
    /// and vCPU devices exist under Wine. `rhax-client assert-vtx` (exclusive opens, short
    /// buffers and foreign codes on both devices, VCPU_CREATE 16, deletion after close) and
    /// QEMU's sequence with two vCPUs up to SETUP_TUNNEL (no RUN: the model's tunnel addresses
    /// belong to the driver host process, not the client's).
    fn fake_vmx(&mut self) -> Result {
        let Some(fake) = self.tools.sys_fake.clone() else {
            println!("wine: (wine-fake-vmx image not given: skipped)");
            return Ok(());
        };
        let drivers = self.prefix.join("drive_c/windows/system32/drivers");
        fs::copy(&fake, drivers.join("rhax-fake.sys"))
            .map_err(|e| format!("cannot copy the wine-fake-vmx image into the prefix: {e}"))?;
        let bin = format!("{DRIVERS}\\rhax-fake.sys");
        self.sc(
            "fake VMX (test build): sc create rhax",
            &[
                "create", "rhax", "type=", "kernel", "start=", "demand", "binPath=", &bin,
            ],
        )?;
        self.sc("fake VMX: sc start rhax", &["start", "rhax"])?;
        self.wait_state("rhax", 4)?;
        let client = self.tools.client.clone();
        self.client(
            "fake VMX: rhax-client assert-vtx (VM and vCPU devices)",
            &client,
            &["assert-vtx"],
            0,
            &[", 0 failed"],
        )?;
        self.client(
            "fake VMX: QEMU's sequence completes (2 vCPUs, up to SETUP_TUNNEL)",
            &client,
            &["--vcpus", "2"],
            0,
            &["QEMU's sequence completes on this driver"],
        )?;
        self.sc("fake VMX: sc stop rhax", &["stop", "rhax"])?;
        self.wait_state("rhax", 1)?;
        self.sc("fake VMX: sc delete rhax", &["delete", "rhax"])?;
        Ok(())
    }

    /// The debug image: the same checks with overflow checks and debug assertions on (the
    /// dispatcher's lock-order checks panic on a violation, which is a bugcheck here).
    fn debug_image(&mut self) -> Result {
        let Some(debug) = self.tools.sys_debug.clone() else {
            println!("wine: (debug image not given: skipped)");
            return Ok(());
        };
        let drivers = self.prefix.join("drive_c/windows/system32/drivers");
        fs::copy(&debug, drivers.join("rhax-debug.sys"))
            .map_err(|e| format!("cannot copy the debug rhax.sys into the prefix: {e}"))?;
        let bin = format!("{DRIVERS}\\rhax-debug.sys");
        self.sc(
            "debug image: sc create rhax",
            &[
                "create", "rhax", "type=", "kernel", "start=", "demand", "binPath=", &bin,
            ],
        )?;
        self.sc("debug image: sc start rhax", &["start", "rhax"])?;
        self.wait_state("rhax", 4)?;
        let client = self.tools.client.clone();
        self.client(
            "debug image: rhax-client assert-no-vtx",
            &client,
            &["assert-no-vtx", "--expect-refcount", "2"],
            0,
            &[", 0 failed"],
        )?;
        self.client(
            "debug image: QEMU's sequence stops at CAPABILITY",
            &client,
            &[],
            1,
            &["QEMU would stop at: HAX_IOCTL_CAPABILITY"],
        )?;
        self.sc("debug image: sc stop rhax", &["stop", "rhax"])?;
        self.wait_state("rhax", 1)?;
        self.sc("debug image: sc delete rhax", &["delete", "rhax"])?;
        Ok(())
    }

    /// rhax and IntelHaxm installed together: the second driver's DriverEntry finds
    /// `\Device\HAX` taken and must fail its load cleanly (STATUS_OBJECT_NAME_COLLISION, Win32
    /// 183 ERROR_ALREADY_EXISTS), leaving the first one answering; rhax-check reports both.
    fn both_installed(&mut self) -> Result {
        let rhax = format!("{DRIVERS}\\rhax.sys");
        let haxm = format!("{DRIVERS}\\IntelHaxm.sys");
        let create = |s: &str, b: &str| {
            let v: Vec<String> = [
                "create", s, "type=", "kernel", "start=", "demand", "binPath=", b,
            ]
            .iter()
            .map(|x| x.to_string())
            .collect();
            v
        };
        let c1 = create("rhax", &rhax);
        let c1: Vec<&str> = c1.iter().map(String::as_str).collect();
        self.sc("both: sc create rhax", &c1)?;
        self.sc("both: sc start rhax", &["start", "rhax"])?;
        self.wait_state("rhax", 4)?;
        let c2 = create("IntelHaxm", &haxm);
        let c2: Vec<&str> = c2.iter().map(String::as_str).collect();
        self.sc("both: sc create IntelHaxm", &c2)?;
        let t = Instant::now();
        let out = self.exec(
            "sc-start",
            &["wine64", "sc", "start", "IntelHaxm"],
            SC_TIMEOUT,
        )?;
        // Wine's sc prints the Win32 error of StartService; 183 is what
        // RtlNtStatusToDosError makes of STATUS_OBJECT_NAME_COLLISION (KB 113996).
        let refused = out.code.is_some() && out.text.contains("failed to start service 183");
        self.check(
            "both: sc start IntelHaxm is refused (\\Device\\HAX exists: Win32 183)",
            refused,
            tail(&out.text),
            t,
        );
        self.wait_state("IntelHaxm", 1)?;
        let check = self.tools.check.clone();
        let client = self.tools.client.clone();
        self.client(
            "both: rhax-check reports both installed, rhax answering",
            &check,
            &[
                "--expect-service",
                "rhax",
                "--expect-service",
                "IntelHaxm",
                "--expect-driver",
                "rhax",
            ],
            0,
            &["warning: both services rhax and IntelHaxm are installed"],
        )?;
        self.client(
            "both: rhax-client assert-no-vtx (the refused load left rhax intact)",
            &client,
            &["assert-no-vtx"],
            0,
            &[", 0 failed"],
        )?;
        self.sc("both: sc stop rhax", &["stop", "rhax"])?;
        self.wait_state("rhax", 1)?;
        self.sc("both: sc delete rhax", &["delete", "rhax"])?;
        self.sc("both: sc delete IntelHaxm", &["delete", "IntelHaxm"])?;
        Ok(())
    }

    /// The unit tests of the user-mode crates, built for Windows and run under Wine: the
    /// `cfg(windows)` code paths of the library and the tools (and the tools' expectations,
    /// cross-checked against rhax-core's dispatcher) on the target they ship for.
    fn windows_unit_tests(&mut self) -> Result {
        let t = Instant::now();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = crate::workspace_root();
        let argv = [
            cargo.as_str(),
            "test",
            "-q",
            "-p",
            "rhax",
            "-p",
            "rhax-check",
            "-p",
            "rhax-client",
            "--target",
            WIN_TARGET,
            "--config",
            "target.x86_64-pc-windows-gnu.runner = \"wine64\"",
        ];
        let out = self.exec_in("cargo-test-windows", &argv, Duration::from_secs(900), &root)?;
        let ok = out.code == Some(0);
        let passed: usize = out
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("test result: ok. "))
            .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
            .sum();
        let detail = if ok {
            format!("{passed} tests passed")
        } else {
            tail(&out.text)
        };
        self.check(
            "unit tests of rhax, rhax-check, rhax-client for Windows, under Wine",
            ok,
            detail.clone(),
            t,
        );
        if ok {
            println!("wine:      {detail}");
        }
        Ok(())
    }
}
