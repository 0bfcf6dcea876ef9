//! The text report. Lines starting `installed:` and `answered by:` have a fixed shape: the
//! Wine stage and the volunteer script look for them.

use std::fmt::Write;

use crate::{Answerer, Diagnosis, Facts, Severity};

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn opt<T: std::fmt::Debug>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| format!("{v:?}"))
}

/// The name of a service state (`winsvc.h`).
pub fn state_name(s: Option<u32>) -> &'static str {
    match s {
        Some(1) => "STOPPED",
        Some(2) => "START_PENDING",
        Some(3) => "STOP_PENDING",
        Some(4) => "RUNNING",
        Some(5) => "CONTINUE_PENDING",
        Some(6) => "PAUSE_PENDING",
        Some(7) => "PAUSED",
        _ => "unknown",
    }
}

/// The report of `facts` and their diagnosis.
pub fn render(facts: &Facts, d: &Diagnosis) -> String {
    let mut s = String::new();
    let c = &facts.cpu;
    let _ = writeln!(
        s,
        "cpu: vendor {:?}, VMX {}, NX {}",
        c.vendor,
        yes(c.vmx),
        yes(c.nx)
    );
    let _ = writeln!(
        s,
        "cpu: hypervisor present {}{}{}",
        yes(c.hypervisor),
        c.hv_vendor
            .as_ref()
            .map_or(String::new(), |v| format!(", vendor {v:?}")),
        c.hv_root
            .map_or(String::new(), |r| format!(", root partition {}", yes(r)))
    );
    if let Some(o) = &facts.os {
        let _ = writeln!(
            s,
            "windows: VT-x enabled by firmware {}, NX enabled {}, SLAT {}, test signing {}",
            opt(o.vt_firmware_enabled),
            opt(o.nx_enabled),
            opt(o.slat),
            opt(o.test_signing)
        );
        let _ = writeln!(
            s,
            "windows: Memory Integrity (HVCI) {}, VBS {}, Credential Guard {}",
            opt(o.hvci),
            opt(o.vbs),
            opt(o.credential_guard)
        );
        for x in &o.other_vtx {
            let _ = writeln!(s, "other VT-x user: {} ({})", x.name, state_name(x.state));
        }
    }
    if facts.os.is_none() {
        let _ = writeln!(s, "installed: unknown (services are read on Windows only)");
    } else if facts.services.is_empty() {
        let _ = writeln!(s, "installed: none");
    }
    for x in &facts.services {
        let _ = writeln!(
            s,
            "installed: {} (ImagePath {}, Start {}, {})",
            x.name,
            x.image_path.as_deref().unwrap_or("?"),
            opt(x.start),
            state_name(x.state)
        );
    }
    if let Some(dev) = &facts.device {
        match dev.answerer() {
            Answerer::Nothing => {
                let e = dev.open_error.unwrap_or(0);
                let _ = writeln!(
                    s,
                    "answered by: nothing (open \\\\.\\HAX: Win32 error {e} {})",
                    rhax::win32_name(e).unwrap_or("")
                );
            }
            Answerer::Rhax => {
                let v = dev.rhax.map_or(0, |r| r.version);
                let _ = writeln!(s, "answered by: rhax (extension API {v})");
            }
            Answerer::Haxm => {
                let _ = writeln!(
                    s,
                    "answered by: Intel HAXM or a fork (no answer to rhax's extension IOCTL: {})",
                    dev.ext_error.as_deref().unwrap_or("?")
                );
            }
            Answerer::Unknown => {
                let _ = writeln!(s, "answered by: unknown (no answer to VERSION)");
            }
        }
        if let Some(v) = dev.version {
            let _ = writeln!(
                s,
                "driver: VERSION cur {} compat {}",
                v.cur_version, v.compat_version
            );
        }
        if let Some(cap) = dev.capability {
            let _ = writeln!(
                s,
                "driver: CAPABILITY wstatus {:#x} winfo {:#x} ({}) mem_quota {:#x}",
                cap.wstatus,
                cap.winfo,
                if cap.is_working() {
                    "working"
                } else {
                    "NOT working"
                },
                cap.mem_quota
            );
        }
    }
    for f in &d.findings {
        let tag = match f.severity {
            Severity::Blocker => "BLOCKER",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        let _ = writeln!(s, "{tag}: {}", f.what);
        for (i, fix) in f.fix.iter().enumerate() {
            let _ = writeln!(s, "    fix {}: {fix}", i + 1);
        }
    }
    match d.first_blocker() {
        None => {
            let _ = writeln!(
                s,
                "verdict: nothing found in the way of running VMs with rhax"
            );
        }
        Some(b) => {
            let _ = writeln!(s, "verdict: blocked: {}", b.what);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{diagnose, DeviceFacts, ServiceFacts};

    #[test]
    fn stable_lines() {
        let facts = Facts {
            os: Some(crate::OsFacts::default()),
            services: vec![ServiceFacts {
                name: "IntelHaxm".into(),
                image_path: Some("x.sys".into()),
                start: Some(3),
                state: Some(4),
            }],
            device: Some(DeviceFacts {
                open_error: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = render(&facts, &diagnose(&facts));
        assert!(
            r.contains("installed: IntelHaxm (ImagePath x.sys, Start 3, RUNNING)"),
            "{r}"
        );
        assert!(
            r.contains(
                "answered by: nothing (open \\\\.\\HAX: Win32 error 2 ERROR_FILE_NOT_FOUND)"
            ),
            "{r}"
        );
        assert!(r.contains("verdict: blocked: "), "{r}");
    }
}
