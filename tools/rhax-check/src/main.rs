//! `rhax-check`: see the crate documentation (`lib.rs`) and `--help`.

use std::process::ExitCode;

use rhax_check::{diagnose, report, Answerer, Facts};

const USAGE: &str = "\
usage: rhax-check [--expect-service NAME]... [--expect-driver rhax|haxm|none]

Reports whether VT-x is usable for rhax on this Windows machine, what is in the way and which
fix applies. Exit 0 when nothing blocks running VMs, 1 otherwise.
With --expect-* (used by the Wine stage): exit 0 exactly when the services installed among
rhax and IntelHaxm are the ones named, and \\\\.\\HAX is answered by the driver named.";

fn main() -> ExitCode {
    let mut services: Vec<String> = Vec::new();
    let mut driver: Option<String> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--expect-service", Some(v)) => services.push(v),
            ("--expect-driver", Some(v)) if ["rhax", "haxm", "none"].contains(&v.as_str()) => {
                driver = Some(v)
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let facts = os::gather();
    let d = diagnose(&facts);
    print!("{}", report::render(&facts, &d));
    if !os::IS_WINDOWS {
        println!(
            "rhax-check is a Windows tool: here it can only read CPUID; the registry, the \
             services and \\\\.\\HAX are Windows-only"
        );
    }
    if services.is_empty() && driver.is_none() {
        return if d.usable() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let mut ok = true;
    if !services.is_empty() {
        let mut want: Vec<String> = services.iter().map(|s| s.to_lowercase()).collect();
        let mut got: Vec<String> = facts
            .services
            .iter()
            .map(|s| s.name.to_lowercase())
            .collect();
        want.sort();
        got.sort();
        if want != got {
            println!("expectation FAILED: installed {got:?}, expected {want:?}");
            ok = false;
        }
    }
    if let Some(want) = driver {
        let got = facts.device.as_ref().map(|d| d.answerer());
        let hit = matches!(
            (want.as_str(), got),
            ("rhax", Some(Answerer::Rhax))
                | ("haxm", Some(Answerer::Haxm))
                | ("none", Some(Answerer::Nothing))
        );
        if !hit {
            println!("expectation FAILED: \\\\.\\HAX answered by {got:?}, expected {want}");
            ok = false;
        }
    }
    if ok {
        println!("expectations met");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(not(windows))]
mod os {
    use super::*;

    pub const IS_WINDOWS: bool = false;

    pub fn gather() -> Facts {
        Facts {
            cpu: rhax_check::cpu::read(),
            ..Default::default()
        }
    }
}

#[cfg(windows)]
mod os {
    use super::*;
    use rhax::{DevicePath, OsError, System, Transport, WindowsTransport};
    use rhax_check::{DeviceFacts, OsFacts, ServiceFacts, HAX_SERVICES, OTHER_VTX_SERVICES};
    use windows_sys::Win32::System::Registry::{
        RegGetValueW, HKEY_LOCAL_MACHINE, RRF_NOEXPAND, RRF_RT_REG_DWORD, RRF_RT_REG_EXPAND_SZ,
        RRF_RT_REG_SZ,
    };
    use windows_sys::Win32::System::Services::{
        CloseServiceHandle, OpenSCManagerW, OpenServiceW, QueryServiceStatus, SC_MANAGER_CONNECT,
        SERVICE_QUERY_STATUS, SERVICE_STATUS,
    };
    use windows_sys::Win32::System::Threading::IsProcessorFeaturePresent;

    pub const IS_WINDOWS: bool = true;

    /// `PF_NX_ENABLED`, `PF_SECOND_LEVEL_ADDRESS_TRANSLATION`, `PF_VIRT_FIRMWARE_ENABLED`
    /// (`winnt.h`).
    const PF_NX_ENABLED: u32 = 12;
    const PF_SLAT: u32 = 20;
    const PF_VIRT_FIRMWARE_ENABLED: u32 = 21;

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(Some(0)).collect()
    }

    fn reg_dword(key: &str, value: &str) -> Option<u32> {
        let (k, v) = (wide(key), wide(value));
        let mut data = 0u32;
        let mut len = 4u32;
        // SAFETY: NUL-terminated strings and a 4-byte buffer with its length, all live for
        // the call; no type output wanted (null).
        let r = unsafe {
            RegGetValueW(
                HKEY_LOCAL_MACHINE,
                k.as_ptr(),
                v.as_ptr(),
                RRF_RT_REG_DWORD,
                core::ptr::null_mut(),
                (&mut data as *mut u32).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(data)
    }

    fn reg_string(key: &str, value: &str) -> Option<String> {
        let (k, v) = (wide(key), wide(value));
        let mut buf = vec![0u16; 1024];
        let mut len = (buf.len() * 2) as u32;
        // SAFETY: as in `reg_dword`, with a buffer of `len` bytes; RRF_NOEXPAND keeps an
        // ImagePath's %SystemRoot% as written.
        let r = unsafe {
            RegGetValueW(
                HKEY_LOCAL_MACHINE,
                k.as_ptr(),
                v.as_ptr(),
                RRF_RT_REG_SZ | RRF_RT_REG_EXPAND_SZ | RRF_NOEXPAND,
                core::ptr::null_mut(),
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r != 0 {
            return None;
        }
        let n = (len as usize / 2).min(buf.len());
        Some(
            String::from_utf16_lossy(&buf[..n])
                .trim_end_matches('\0')
                .to_string(),
        )
    }

    fn service_state(name: &str) -> Option<u32> {
        // SAFETY: local machine, default database, connect right only.
        let scm =
            unsafe { OpenSCManagerW(core::ptr::null(), core::ptr::null(), SC_MANAGER_CONNECT) };
        if scm.is_null() {
            return None;
        }
        let n = wide(name);
        // SAFETY: `scm` is open; `n` is NUL-terminated.
        let svc = unsafe { OpenServiceW(scm, n.as_ptr(), SERVICE_QUERY_STATUS) };
        let mut state = None;
        if !svc.is_null() {
            // SAFETY: SERVICE_STATUS is plain data; zero is a valid value.
            let mut st: SERVICE_STATUS = unsafe { core::mem::zeroed() };
            // SAFETY: `svc` is open with SERVICE_QUERY_STATUS; `st` is writable.
            if unsafe { QueryServiceStatus(svc, &mut st) } != 0 {
                state = Some(st.dwCurrentState);
            }
            // SAFETY: closes the handle opened above, once.
            unsafe { CloseServiceHandle(svc) };
        }
        // SAFETY: closes the manager handle opened above, once.
        unsafe { CloseServiceHandle(scm) };
        state
    }

    fn service(name: &str) -> Option<ServiceFacts> {
        let key = format!("SYSTEM\\CurrentControlSet\\Services\\{name}");
        let image_path = reg_string(&key, "ImagePath");
        let start = reg_dword(&key, "Start");
        let state = service_state(name);
        if image_path.is_none() && start.is_none() && state.is_none() {
            return None;
        }
        Some(ServiceFacts {
            name: name.to_string(),
            image_path,
            start,
            state,
        })
    }

    fn feature(pf: u32) -> Option<bool> {
        // SAFETY: no pointers; any feature number is allowed.
        Some(unsafe { IsProcessorFeaturePresent(pf) } != 0)
    }

    /// Whether the running kernel was started with test signing: `SystemStartOptions` (the
    /// boot options of this boot, e.g. " TESTSIGNING NOEXECUTE=OPTIN") names it. Unlike
    /// `bcdedit`, it needs no administrator rights and is not localized.
    fn test_signing() -> Option<bool> {
        let opts = reg_string("SYSTEM\\CurrentControlSet\\Control", "SystemStartOptions")?;
        Some(
            opts.split_whitespace()
                .any(|o| o.eq_ignore_ascii_case("TESTSIGNING")),
        )
    }

    fn device() -> DeviceFacts {
        let mut d = DeviceFacts::default();
        let sys = match System::open(WindowsTransport) {
            Ok(s) => s,
            Err(e) => {
                d.open_error = match e.os_error() {
                    Some(OsError::Win32(w)) => Some(w),
                    _ => Some(u32::MAX),
                };
                return d;
            }
        };
        d.version = sys.version().ok();
        d.capability = sys.capability().ok();
        match sys.ext_info() {
            Ok(info) => d.rhax = Some(info),
            Err(e) => d.ext_error = Some(e.to_string()),
        }
        // Close before returning (the facts outlive the handle).
        drop(sys);
        let _ = WindowsTransport
            .open(DevicePath::System)
            .map(|h| WindowsTransport.close(h));
        d
    }

    pub fn gather() -> Facts {
        const DG: &str = "SYSTEM\\CurrentControlSet\\Control\\DeviceGuard";
        let os = OsFacts {
            vt_firmware_enabled: feature(PF_VIRT_FIRMWARE_ENABLED),
            nx_enabled: feature(PF_NX_ENABLED),
            slat: feature(PF_SLAT),
            hvci: reg_dword(
                &format!("{DG}\\Scenarios\\HypervisorEnforcedCodeIntegrity"),
                "Enabled",
            ),
            vbs: reg_dword(DG, "EnableVirtualizationBasedSecurity"),
            credential_guard: reg_dword("SYSTEM\\CurrentControlSet\\Control\\Lsa", "LsaCfgFlags"),
            other_vtx: OTHER_VTX_SERVICES
                .iter()
                .filter_map(|(n, _)| service(n))
                .collect(),
            test_signing: test_signing(),
        };
        Facts {
            cpu: rhax_check::cpu::read(),
            os: Some(os),
            services: HAX_SERVICES.iter().filter_map(|n| service(n)).collect(),
            device: Some(device()),
        }
    }
}
