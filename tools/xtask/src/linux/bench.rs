//! Issue 10 item 4 in the Linux stage: the static `rhax-client` that the `exit-bench` check
//! runs (`--bench` builds it, `--client PATH` takes one), and the table of its figures beside
//! the anchors of `performance-anchors.md` §0b (KVM and HAXM measured the same way, same
//! Debian kernel in Bochs).

use std::path::PathBuf;
use std::process::Command;

/// The target of the image's user space (Debian's glibc; `+crt-static` links libc.a, so the
/// initramfs needs no shared library for it).
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `rhax-client` as a static executable and returns its path. Its own target folder
/// (`<target>/bench-client`): RUSTFLAGS differ from the workspace's normal build, and sharing
/// one folder would rebuild each in turn.
pub fn build_client() -> crate::Result<PathBuf> {
    crate::ensure_rust_target(TARGET)?;
    let dir = crate::target_dir().join("bench-client");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir_s = dir.display().to_string();
    let args = [
        "build",
        "-q",
        "-p",
        "rhax-client",
        "--release",
        "--target",
        TARGET,
        "--target-dir",
        &dir_s,
    ];
    eprintln!(
        "xtask: linux: RUSTFLAGS='-C target-feature=+crt-static' cargo {}",
        args.join(" ")
    );
    crate::run_captured(
        Command::new(cargo)
            .args(args)
            .current_dir(crate::workspace_root())
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
        "cargo build -p rhax-client (static)",
    )?;
    Ok(dir.join(TARGET).join("release/rhax-client"))
}

/// One `bench:` figure the check printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// `calibration`, `cpuid` or `out`.
    pub name: String,
    /// The minimum over the batches.
    pub min: f64,
    /// The median over the batches.
    pub median: f64,
    /// The batch count.
    pub batches: u32,
}

/// Reads `bench: NAME MIN per ... (min of B, median MED)...` out of a serial line (the
/// check's output comes as `rhax-linux: info exit-bench: bench: ...`).
pub fn parse(line: &str) -> Option<Figure> {
    let (_, rest) = line.split_once("exit-bench: bench: ")?;
    let mut w = rest.split_whitespace();
    let name = w.next()?.to_string();
    let min = w.next()?.parse().ok()?;
    let (_, tail) = rest.split_once("(min of ")?;
    let (batches, tail) = tail.split_once(", median ")?;
    let median = tail
        .split(|c: char| c == ')' || c == ';' || c.is_whitespace())
        .next()?
        .parse()
        .ok()?;
    Some(Figure {
        name,
        min,
        median,
        batches: batches.parse().ok()?,
    })
}

/// The anchors of `performance-anchors.md` §0b (corei7_skylake_x, 1 CPU, `nolapic_timer`,
/// `ips=3500000000`): (name, what, KVM, HAXM).
const ANCHORS: [(&str, &str, &str, &str); 2] = [
    (
        "cpuid",
        "CPUID (handled in the kernel)",
        "1054 (958 mitigations=off)",
        "4897-4899",
    ),
    (
        "out",
        "OUT served in user space",
        "7251 (2960 without its L1D flush)",
        "5778-5784",
    ),
];

/// The table lines for the figures found in `lines`; empty when the check did not run.
pub fn table(lines: &[String]) -> Vec<String> {
    let figures: Vec<Figure> = lines.iter().filter_map(|l| parse(l)).collect();
    if figures.is_empty() {
        return Vec::new();
    }
    let mut out = vec![
        "linux: exit-bench, emulated instructions per round trip (Bochs TSC; anchors: \
         performance-anchors.md §0b)"
            .to_string(),
        format!(
            "linux:   {:<30} {:>22} {:>34} {:>10}",
            "", "rhax min (median)", "KVM", "HAXM"
        ),
    ];
    for (name, what, kvm, haxm) in ANCHORS {
        let rhax = figures.iter().find(|f| f.name == name).map_or_else(
            || "-".to_string(),
            |f| format!("{:.1} ({:.1})", f.min, f.median),
        );
        out.push(format!(
            "linux:   {what:<30} {rhax:>22} {kvm:>34} {haxm:>10}"
        ));
    }
    // Where the OUT round trip goes, and the ioctl floors: printed as the client wrote them.
    for l in lines {
        for key in ["OUT split ", "ioctl floors "] {
            if let Some((_, rest)) = l.split_once(&format!("exit-bench: bench: {key}")) {
                out.push(format!("linux:   {key}{rest}"));
            }
        }
    }
    if let Some(c) = figures.iter().find(|f| f.name == "calibration") {
        out.push(format!(
            "linux:   calibration {:.3} per iteration (must be 4.000; min of {}, median {:.3})",
            c.min, c.batches, c.median
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUID: &str = "rhax-linux: info exit-bench: bench: cpuid 1234.5 per round trip (min \
                         of 100, median 1240.0): handled in the kernel; per iteration minus 3";

    #[test]
    fn parses_the_client_lines() {
        assert_eq!(
            parse(CPUID),
            Some(Figure {
                name: "cpuid".into(),
                min: 1234.5,
                median: 1240.0,
                batches: 100,
            })
        );
        let cal = "rhax-linux: info exit-bench: bench: calibration 4.000 per iteration (min of \
                   100, median 4.000): 4 guest instructions";
        assert_eq!(parse(cal).map(|f| (f.min, f.median)), Some((4.0, 4.0)));
        // Other checks' lines and the client's other bench lines are not figures.
        assert_eq!(
            parse("rhax-linux: info qemu-kernel: bench: cpuid 1 (min of 1"),
            None
        );
        assert_eq!(
            parse("rhax-linux: info exit-bench: bench: bracket 2 (RDTSC pair around no loop"),
            None
        );
    }

    #[test]
    fn the_table_sits_beside_the_anchors() {
        assert!(table(&["rhax-linux: done".into()]).is_empty());
        let t = table(&[CPUID.to_string()]);
        let row = t.iter().find(|l| l.contains("CPUID")).expect("row");
        assert!(row.contains("1234.5 (1240.0)") && row.contains("1054") && row.contains("4897"));
        let out = t.iter().find(|l| l.contains("OUT served")).expect("row");
        assert!(out.contains(" - ") || out.contains("  -"), "{out}");
        let split =
            "rhax-linux: info exit-bench: bench: OUT split (min of 200, guest and user-space \
                     TSC): to user space 1401";
        let t = table(&[CPUID.to_string(), split.to_string()]);
        assert!(
            t.contains(
                &"linux:   OUT split (min of 200, guest and user-space TSC): to user space 1401"
                    .to_string()
            ),
            "{t:?}"
        );
    }
}
