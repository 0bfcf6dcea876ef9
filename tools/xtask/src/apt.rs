//! Debian packages the stages need: found on PATH, or installed with `apt-get` (as root, or
//! through sudo) when missing, so that `cargo xtask test` works on a fresh Debian/Ubuntu machine.

use std::path::PathBuf;
use std::process::Command;

/// `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Installs `packages` (`apt-get install -y`, after `apt-get update` when the first try
/// fails: a fresh machine's package lists may be empty or stale).
pub fn install(packages: &[&str]) -> crate::Result {
    eprintln!("xtask: installing {}", packages.join(" "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| -> bool {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    if apt(&args) || (apt(&["update", "-qq"]) && apt(&args)) {
        Ok(())
    } else {
        Err(format!(
            "`apt-get install {}` failed (run it as root)",
            packages.join(" ")
        ))
    }
}

/// Makes sure every program of `binaries` is on PATH, installing `packages` when one is not.
pub fn ensure(binaries: &[&str], packages: &[&str]) -> crate::Result {
    if binaries.iter().all(|b| which(b).is_some()) {
        return Ok(());
    }
    install(packages)?;
    match binaries.iter().find(|b| which(b).is_none()) {
        None => Ok(()),
        Some(b) => Err(format!(
            "{b} still missing after installing {}",
            packages.join(" ")
        )),
    }
}
