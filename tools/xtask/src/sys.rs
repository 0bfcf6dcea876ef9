//! `cargo xtask sys`: builds `rhax.sys` (release and debug) from `driver/windows` for
//! `x86_64-unknown-uefi` with the link arguments of `driver/windows/.cargo/config.toml`, and
//! checks each image (`syscheck.rs`), printing a report and failing on any violation.
//! `cargo xtask test` runs [`test_stage`]: both images built and checked, the INF linted
//! (`inf.rs`), both images test-signed and the signatures verified (`sign.rs`).

use std::path::{Path, PathBuf};

use crate::checks::UEFI_TARGET;

/// The image's file name (the INF's ServiceBinary must name it: `inf.rs`).
pub const IMAGE_NAME: &str = "rhax.sys";

/// A build profile of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Optimised, LTO: the image users install.
    Release,
    /// Unoptimised, with overflow checks: for debugging.
    Debug,
}

impl Profile {
    /// Cargo's directory name of the profile.
    pub fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// Where the driver crate's build goes (its own directory: its flags differ from the
/// workspace's uefi build of rhax-core).
pub fn driver_target_dir() -> PathBuf {
    crate::target_dir().join("windows")
}

/// Builds the driver in `profile`; returns the path of `rhax.sys` (a copy of cargo's
/// `rhax.efi`, next to it, with `rhax.map` and `rhax.pdb` when the linker wrote them).
pub fn build(profile: Profile) -> crate::Result<PathBuf> {
    build_variant(profile, &[], &driver_target_dir())
}

/// [`build`] with extra cargo arguments (`--features ...`) into `target_dir`.
pub fn build_variant(
    profile: Profile,
    extra: &[&str],
    target_dir: &Path,
) -> crate::Result<PathBuf> {
    crate::ensure_rust_target(UEFI_TARGET)?;
    // The SEH shim (driver/windows/build.rs) is C, compiled by clang for the msvc ABI.
    crate::apt::ensure(&["clang"], &["clang"])?;
    let target_dir_arg = target_dir.display().to_string();
    let mut args = vec![
        "build",
        "-q",
        "--target",
        UEFI_TARGET,
        "--target-dir",
        &target_dir_arg,
    ];
    if profile == Profile::Release {
        args.push("--release");
    }
    args.extend_from_slice(extra);
    driver_cargo(&args)
        .map_err(|e| format!("building rhax.sys ({}) failed: {e}", profile.dir()))?;
    let out = target_dir.join(UEFI_TARGET).join(profile.dir());
    let sys = out.join(IMAGE_NAME);
    std::fs::copy(out.join("rhax.efi"), &sys)
        .map_err(|e| format!("cannot copy rhax.efi to {}: {e}", sys.display()))?;
    Ok(sys)
}

/// Runs cargo in `driver/windows` ([`crate::cargo_in`]).
fn driver_cargo(args: &[&str]) -> crate::Result {
    crate::cargo_in("driver/windows", args)
}

/// The driver crate's own source checks (it is outside the workspace, so the workspace's fmt,
/// clippy and test runs do not see it): formatting, clippy `-D warnings` for the host (its
/// pure logic and tests), for the driver image, and for the Wine test image (feature
/// `wine-fake-vmx`), then its host unit tests.
pub fn source_checks() -> crate::Result {
    crate::ensure_rust_target(UEFI_TARGET)?;
    let target_dir = driver_target_dir().display().to_string();
    driver_cargo(&["fmt", "--check"])?;
    driver_cargo(&["clippy", "-q", "--all-targets", "--", "-D", "warnings"])?;
    for features in [&[][..], &["--features", "wine-fake-vmx"][..]] {
        let mut args = vec!["clippy", "-q", "--target", UEFI_TARGET, "--target-dir"];
        args.push(&target_dir);
        args.extend_from_slice(features);
        args.extend_from_slice(&["--", "-D", "warnings"]);
        driver_cargo(&args)?;
    }
    driver_cargo(&["test", "-q"])
}

/// Builds and checks one profile; prints the report; returns the image on success.
pub fn build_and_check(profile: Profile) -> crate::Result<PathBuf> {
    let sys = build(profile)?;
    let out = sys.parent().ok_or("rhax.sys has no directory")?;
    let map = crate::symbols::find_map(out)?;
    let report = crate::syscheck::check_image(&sys, &map, profile == Profile::Release)?;
    let tag = format!("sys ({})", profile.dir());
    for line in &report.lines {
        println!("{tag}: {line}");
    }
    for e in &report.errors {
        println!("{tag}: FAIL: {e}");
    }
    if report.errors.is_empty() {
        println!(
            "{tag}: {} passed, 0 failed: {}",
            report.lines.len(),
            sys.display()
        );
        Ok(sys)
    } else {
        Err(format!(
            "rhax.sys ({}): {} image check(s) failed:\n  {}",
            profile.dir(),
            report.errors.len(),
            report.errors.join("\n  ")
        ))
    }
}

/// Checks an image built elsewhere: `dir` holds `rhax.efi` as cargo left it (its map file is
/// found in `dir/deps`), e.g. another worktree's `target/.../release`; a directory named
/// `debug` is checked as a debug image.
pub fn check_dir(dir: &Path) -> crate::Result {
    let map = crate::symbols::find_map(dir)?;
    let sys = dir.join("rhax.efi");
    let optimized = dir.file_name().is_none_or(|n| n != "debug");
    let report = crate::syscheck::check_image(&sys, &map, optimized)?;
    for line in &report.lines {
        println!("sys: {line}");
    }
    for e in &report.errors {
        println!("sys: FAIL: {e}");
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{} image check(s) failed", report.errors.len()))
    }
}

/// `cargo xtask sys`: both profiles, built and checked (both are checked even when the first
/// fails). `cargo xtask sys --check DIR`: only check the image in DIR ([`check_dir`]);
/// `cargo xtask sys --stage`: what `cargo xtask test` runs ([`test_stage`]).
pub fn main(args: &[String]) -> crate::Result {
    match args {
        [] => {}
        [flag] if flag == "--stage" => return test_stage(),
        [flag, dir] if flag == "--check" => return check_dir(Path::new(dir)),
        _ => return Err("usage: cargo xtask sys [--stage | --check DIR]".into()),
    }
    let errors: Vec<String> = [Profile::Release, Profile::Debug]
        .into_iter()
        .filter_map(|p| build_and_check(p).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// The stage of `cargo xtask test`: both images built and checked, the INF linted against
/// the image name, both images test-signed and verified; prints its duration.
pub fn test_stage() -> crate::Result {
    let start = std::time::Instant::now();
    source_checks()?;
    let mut images = Vec::new();
    let mut errors = Vec::new();
    for profile in [Profile::Release, Profile::Debug] {
        match build_and_check(profile) {
            Ok(sys) => images.push(sys),
            Err(e) => errors.push(e),
        }
    }
    match crate::inf::check_repo() {
        Ok(line) => println!("inf: {line}"),
        Err(e) => errors.push(e),
    }
    for sys in &images {
        if let Err(e) = crate::sign::sign_and_verify(sys) {
            errors.push(e);
        }
    }
    println!(
        "sys: stage took {:.1} s (source checks, build, image checks, INF lint, signing)",
        start.elapsed().as_secs_f64()
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}
