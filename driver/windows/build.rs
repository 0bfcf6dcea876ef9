//! Build script of rhax-sys: compiles the SEH shim (`seh/seh.c`) with clang for the driver
//! image only (target x86_64-unknown-uefi, the target `cargo xtask sys` builds), and links the
//! object into `rhax.sys`. A host build (`cargo test`, host clippy) compiles nothing: the NT
//! modules that call the shim are `cfg(rhax_nt)`.
//!
//! Why C: `MmProbeAndLockPages` and a user-mode `MmMapLockedPagesSpecifyCache` report failure
//! by raising a structured exception; Rust cannot catch one, clang can (`__try`/`__except`
//! for `x86_64-pc-windows-msvc`, whose COFF object links with the uefi target's PE/COFF).
//! Flags: `-mgeneral-regs-only` (no SSE/x87 in kernel code, as the Rust side is soft-float),
//! `-ffreestanding -fno-builtin` (no C library), `-fno-stack-protector` (no /GS cookie to
//! initialise). The compiler is `$RHAX_CLANG`, else `clang` (Debian/Ubuntu package `clang`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=seh/seh.c");
    println!("cargo:rerun-if-env-changed=RHAX_CLANG");
    let target = env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-uefi" {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("rhax_seh.o");
    let clang = env::var("RHAX_CLANG").unwrap_or_else(|_| "clang".to_string());
    let status = Command::new(&clang)
        .args([
            "--target=x86_64-pc-windows-msvc",
            "-c",
            "-O2",
            "-ffreestanding",
            "-fno-builtin",
            "-fno-stack-protector",
            "-mgeneral-regs-only",
            "-fms-extensions",
            "-Wall",
            "-Werror",
            "seh/seh.c",
            "-o",
        ])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed on seh/seh.c ({s})"),
        Err(e) => panic!(
            "cannot run {clang} to compile the SEH shim seh/seh.c: {e}; install clang \
             (apt-get install clang) or set RHAX_CLANG"
        ),
    }
    // Only the driver image links; the object is an input of that link.
    println!("cargo:rustc-link-arg-bins={}", obj.display());
}
