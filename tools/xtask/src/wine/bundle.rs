//! `cargo xtask wine bundle`: the folder a volunteer runs on a real Windows machine
//! (`scripts/windows/README.md`).

use std::fs;

use super::WIN_TARGET;
use crate::Result;

/// `target/volunteer/`: the release `rhax.sys` test-signed by `cargo xtask sign`'s code (with
/// its certificate), the release clients, and `scripts/windows/`.
pub(super) fn bundle() -> Result {
    crate::sign::ensure_tools()?;
    let sys = crate::sys::build(crate::sys::Profile::Release)?;
    let signed = crate::sign::sign_and_verify(&sys)?;
    let cer = signed
        .parent()
        .ok_or("the signed image has no directory")?
        .join(crate::sign::CER_NAME);
    crate::ensure_rust_target(WIN_TARGET)?;
    crate::cargo(&[
        "build",
        "-q",
        "--release",
        "-p",
        "rhax-check",
        "-p",
        "rhax-client",
        "--target",
        WIN_TARGET,
    ])?;
    let exe = crate::target_dir().join(WIN_TARGET).join("release");
    let out = crate::target_dir().join("volunteer");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let scripts = crate::workspace_root().join("scripts/windows");
    let files = [
        (signed, crate::sign::SIGNED_NAME),
        (cer, crate::sign::CER_NAME),
        (exe.join("rhax-check.exe"), "rhax-check.exe"),
        (exe.join("rhax-client.exe"), "rhax-client.exe"),
        (scripts.join("rhax-volunteer.ps1"), "rhax-volunteer.ps1"),
        (scripts.join("rhax-volunteer.cmd"), "rhax-volunteer.cmd"),
        (scripts.join("README.md"), "README.md"),
    ];
    for (from, name) in files {
        fs::copy(&from, out.join(name))
            .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    }
    println!(
        "volunteer bundle: {} (send the whole folder)",
        out.display()
    );
    Ok(())
}
