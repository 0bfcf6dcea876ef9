//! QEMU's HAX ABI against rhax-api's: `tests/linux/qemu/hax-abi-probe.c`, compiled against the
//! unpacked source's `target/i386/hax/hax-posix.h` and `hax-interface.h` (exactly what the built
//! QEMU uses), prints every ioctl code of the POSIX backend; each is compared with the Linux
//! x86-64 code rhax-api pins in its tests (`api/src/ioctl.rs`, `PINNED`, measured from HAXM's
//! Linux header). The Linux kernel module must answer QEMU's codes.

use std::path::Path;
use std::process::Command;

use crate::Result;

/// rhax-api's pinned table (read at compile time: the one source of truth for the codes).
const API_IOCTL_RS: &str = include_str!("../../../../api/src/ioctl.rs");

/// Differences that are known and harmless, with the reason. Each is accepted only while QEMU
/// never issues the ioctl (checked in the source: no use outside its `#define`).
const KNOWN: &[(&str, &str)] = &[(
    "HAX_VM_IOCTL_VCPU_DESTROY",
    "QEMU's hax-posix.h defines it _IOW, HAXM's Linux header _IOR; HAXM never implemented it",
)];

/// One compared ioctl.
#[derive(Debug, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub qemu: u32,
    pub api: Option<u32>,
    /// Why a difference is accepted, when it is.
    pub accepted: Option<&'static str>,
}

impl Row {
    fn matches(&self) -> bool {
        self.api == Some(self.qemu)
    }
}

/// The Linux x86-64 column of `PINNED`: `("NAME", win, linux, ...)` per line.
pub fn pinned_linux_codes(src: &str) -> Vec<(String, Option<u32>)> {
    src.lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("(\"")?;
            let (name, rest) = l.split_once('"')?;
            let fields: Vec<&str> = rest.split(", ").map(str::trim).collect();
            // fields[0] is empty (the text between the name's quote and the first comma).
            let linux = fields.get(2)?;
            let code = match linux.strip_prefix("Some(0x") {
                Some(hex) => Some(u32::from_str_radix(hex.trim_end_matches(')'), 16).ok()?),
                None if *linux == "None" => None,
                None => return None,
            };
            Some((name.to_string(), code))
        })
        .collect()
}

/// The probe's `ioctl NAME 0xCODE` lines.
fn probe_codes(out: &str) -> Result<Vec<(String, u32)>> {
    out.lines()
        .filter_map(|l| l.strip_prefix("ioctl "))
        .map(|l| {
            let (name, hex) = l
                .split_once(' ')
                .ok_or_else(|| format!("bad probe line {l:?}"))?;
            let code = u32::from_str_radix(hex.trim_start_matches("0x"), 16)
                .map_err(|e| format!("bad probe code {l:?}: {e}"))?;
            Ok((name.to_string(), code))
        })
        .collect()
}

/// Compares the probe's output with `PINNED`; `issued(name)` says whether QEMU's source uses
/// the ioctl (a known difference is accepted only when it does not).
pub fn compare(
    probe_out: &str,
    pinned: &[(String, Option<u32>)],
    issued: impl Fn(&str) -> bool,
) -> Result<Vec<Row>> {
    let codes = probe_codes(probe_out)?;
    if codes.is_empty() {
        return Err("the ABI probe printed no ioctl".into());
    }
    Ok(codes
        .into_iter()
        .map(|(name, qemu)| {
            let api = pinned
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, c)| *c);
            let accepted = if api == Some(qemu) || issued(&name) {
                None
            } else {
                KNOWN.iter().find(|(n, _)| *n == name).map(|(_, why)| *why)
            };
            Row {
                name,
                qemu,
                api,
                accepted,
            }
        })
        .collect())
}

/// Whether any C file of QEMU's HAX accelerator uses `name` outside a `#define`.
fn issued_in(hax_dir: &Path, name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir(hax_dir) else {
        return true; // cannot tell: do not accept a difference
    };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "c"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .any(|text| {
            text.lines()
                .any(|l| l.contains(name) && !l.trim_start().starts_with("#define"))
        })
}

/// Builds and runs the probe against the source tree `src`; returns the compared rows and the
/// probe's full output (structure sizes too). Fails on any unaccepted difference.
pub fn check(src: &Path, probe_c: &Path, out_dir: &Path) -> Result<(Vec<Row>, String)> {
    let hax = src.join("target/i386/hax");
    let exe = out_dir.join("hax-abi-probe");
    let status = Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&hax)
        .arg(probe_c)
        .arg("-o")
        .arg(&exe)
        .status()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if !status.success() {
        return Err(format!("building {} failed ({status})", probe_c.display()));
    }
    let out = Command::new(&exe)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pinned = pinned_linux_codes(API_IOCTL_RS);
    let rows = compare(&text, &pinned, |n| issued_in(&hax, n))?;
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.matches() && r.accepted.is_none())
        .map(|r| match r.api {
            Some(a) => format!("{}: QEMU {:#010x}, rhax-api {a:#010x}", r.name, r.qemu),
            None => format!("{}: QEMU {:#010x}, not in rhax-api's table", r.name, r.qemu),
        })
        .collect();
    if bad.is_empty() {
        Ok((rows, text))
    } else {
        Err(format!(
            "QEMU's HAX ioctls differ from rhax-api's Linux codes: {}",
            bad.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 19 ioctls QEMU 7.2's hax-posix.h defines.
    const QEMU_NAMES: &[&str] = &[
        "HAX_IOCTL_VERSION",
        "HAX_IOCTL_CREATE_VM",
        "HAX_IOCTL_DESTROY_VM",
        "HAX_IOCTL_CAPABILITY",
        "HAX_VM_IOCTL_VCPU_CREATE",
        "HAX_VM_IOCTL_ALLOC_RAM",
        "HAX_VM_IOCTL_SET_RAM",
        "HAX_VM_IOCTL_VCPU_DESTROY",
        "HAX_VM_IOCTL_NOTIFY_QEMU_VERSION",
        "HAX_VM_IOCTL_ADD_RAMBLOCK",
        "HAX_VCPU_IOCTL_RUN",
        "HAX_VCPU_IOCTL_SET_MSRS",
        "HAX_VCPU_IOCTL_GET_MSRS",
        "HAX_VCPU_IOCTL_SET_FPU",
        "HAX_VCPU_IOCTL_GET_FPU",
        "HAX_VCPU_IOCTL_SETUP_TUNNEL",
        "HAX_VCPU_IOCTL_INTERRUPT",
        "HAX_VCPU_SET_REGS",
        "HAX_VCPU_GET_REGS",
    ];

    #[test]
    fn parses_every_code_qemu_uses_from_rhax_api() {
        let pinned = pinned_linux_codes(API_IOCTL_RS);
        for name in QEMU_NAMES {
            let code = pinned.iter().find(|(n, _)| n == name);
            assert!(
                matches!(code, Some((_, Some(_)))),
                "{name} missing in api/src/ioctl.rs PINNED: {pinned:?}"
            );
        }
        let run = pinned.iter().find(|(n, _)| n == "HAX_VCPU_IOCTL_RUN");
        assert_eq!(run.unwrap().1, Some(0xc0));
        let kickoff = pinned.iter().find(|(n, _)| n == "HAX_VCPU_IOCTL_KICKOFF");
        assert_eq!(kickoff.unwrap().1, None, "Windows only");
    }

    fn pinned() -> Vec<(String, Option<u32>)> {
        vec![
            ("HAX_VCPU_IOCTL_RUN".into(), Some(0xc0)),
            ("HAX_VM_IOCTL_VCPU_DESTROY".into(), Some(0x8004_0083)),
        ]
    }

    #[test]
    fn equal_codes_pass_and_a_different_code_is_reported() {
        let rows = compare("ioctl HAX_VCPU_IOCTL_RUN 0x000000c0\n", &pinned(), |_| true).unwrap();
        assert!(rows[0].matches());
        let rows = compare("ioctl HAX_VCPU_IOCTL_RUN 0x200000c0\n", &pinned(), |_| true).unwrap();
        assert!(!rows[0].matches());
        assert_eq!(rows[0].accepted, None);
    }

    #[test]
    fn a_known_difference_is_accepted_only_while_qemu_never_issues_it() {
        let out = "ioctl HAX_VM_IOCTL_VCPU_DESTROY 0x40040083\n";
        let rows = compare(out, &pinned(), |_| false).unwrap();
        assert!(!rows[0].matches());
        assert!(rows[0].accepted.is_some());
        let rows = compare(out, &pinned(), |_| true).unwrap();
        assert_eq!(rows[0].accepted, None);
    }

    #[test]
    fn an_unknown_ioctl_or_empty_output_fails() {
        let rows = compare("ioctl HAX_NEW 0x1\n", &pinned(), |_| false).unwrap();
        assert_eq!((rows[0].api, rows[0].accepted), (None, None));
        assert!(compare("size hax_tunnel 48\n", &pinned(), |_| false).is_err());
    }
}
