//! `cargo xtask`: build and test orchestration for rhax.
//!
//! `cargo xtask test` is the one command CI and developers run: formatting, lints, host tests,
//! the checks over the built kernel code (no SSE, stack frames, entry-stub ABI: `checks.rs`)
//! and the bare-metal scenarios in Bochs.

use std::process::{Command, ExitCode};

mod apt;
mod bench;
mod checks;
mod disasm;
mod fuzz;
mod inf;
mod linux;
mod lkm;
mod metal;
mod pe;
mod qemu;
mod rom;
mod sign;
mod stack;
mod stub;
mod symbols;
mod sys;
mod syscheck;
mod vector;
mod vmm;
mod wine;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(),
        Some("metal") => metal::main(&args[1..]),
        Some("bench") => bench::main(&args[1..]),
        Some("no-sse") => checks::no_sse(),
        Some("stack") => checks::stack(),
        Some("abi") => checks::abi(),
        Some("checks") => checks::all(),
        Some("fuzz") => fuzz::main(&args[1..]),
        Some("sys") => sys::main(&args[1..]),
        Some("sign") => sign::main(&args[1..]),
        Some("inf") => inf::main(),
        Some("wine") => wine::main(&args[1..]),
        Some("qemu") => qemu::main(&args[1..]),
        Some("lkm") if args.get(1).is_some_and(|a| a == "--stage") => lkm::stage(),
        Some("lkm") => lkm::main(&args[1..]),
        Some("linux") if args.get(1).is_some_and(|a| a == "--stage") => linux::test_stage(),
        Some("linux") => linux::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|demo|checks|no-sse|stack|abi|metal [--model NAME] \
                 [--cpus N] [SCENARIO...]|bench [--short]|fuzz [TARGET...] [--time S] [--ci]|sys|sign|inf|wine|lkm [--stage]|qemu|linux [--stage]>"
            );
            Err("unknown or missing subcommand".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors are reported once, at the top, as text: xtask is a developer tool.
pub type Result<T = ()> = std::result::Result<T, String>;

/// Runs `cargo` with `args` in the workspace root and fails if it fails.
pub fn cargo(args: &[&str]) -> Result {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// Runs `cmd` (named `what` in messages) to completion; returns its stdout and stderr
/// together, or fails with them when it fails.
pub fn run_captured(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed ({}):\n{}", out.status, text.trim()))
    }
}

/// Runs `cargo` in `dir`, a crate outside the workspace with its own `.cargo/config.toml`
/// (the drivers: `driver/windows`, `driver/linux/rust`). Their config's rustflags apply only
/// when RUSTFLAGS is unset (an empty RUSTFLAGS would drop every link argument:
/// windows-cross-build.md P4).
pub fn cargo_in(dir: &str, args: &[&str]) -> Result {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: ({dir}) cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root().join(dir))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo {}` in {dir} failed ({status})",
            args.join(" ")
        ))
    }
}

/// Makes sure rustup has the standard library for `target` (`rustup target add` when it is
/// missing: a fresh CI machine has only the host's).
pub fn ensure_rust_target(target: &str) -> Result {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run rustup (needed for the {target} target): {e}"))?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("xtask: rustup target add {target}");
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`rustup target add {target}` failed ({status})"))
    }
}

/// Cargo's target directory for the workspace.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from)
}

/// The workspace root: two levels above this crate's manifest.
pub fn workspace_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).to_path_buf()
}

/// Every test: formatting, lints, host unit and conformance tests, then the metal stage.
fn test() -> Result {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    checks::all()?;
    sys::test_stage()?;
    wine::stage()?; // rhax.sys loaded under Wine, driven by the Windows clients (wine.rs)
    lkm::stage()?; // rhax.ko built against Debian 12's kernel headers and checked (lkm.rs)
    metal::test_stage()?;
    // The multiboot VMM on the in-kernel APIC: its guests on two models (~15 s).
    vmm::selftest()?;
    // The benchmark table (one model, few iterations): checks it is produced, not its figures.
    bench::main(&["--short".to_string()])?;
    // The real QEMU 7.2 `-accel hax` on rhax.ko in Debian's Linux in Bochs (linux.rs, qemu.rs).
    linux::test_stage()?;
    // Bounded coverage-guided fuzzing from the checked-in corpus (30 s per target).
    fuzz::main(&["--ci".to_string()])
}

/// The main job: what rhax does today, end to end.
fn demo() -> Result {
    metal::demo()
}

// The metal kernel builds without tests (its own target); its multiboot (v1) loader is pure
// code over byte slices, so xtask's host tests compile and test it (`vmm_loader_tests.rs`).
#[cfg(test)]
extern crate alloc;
#[cfg(test)]
mod vmm_loader_tests;
