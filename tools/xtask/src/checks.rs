//! Checks over the built kernel code (run by `cargo xtask test`, each also on its own):
//!
//! * `cargo xtask no-sse`: no x87/SSE/AVX instruction outside the state-swap sites (`vector.rs`);
//! * `cargo xtask stack`: frame budget and no recursion on IOCTL paths (`stack.rs`);
//! * `cargo xtask abi`: rhax-core builds for `x86_64-unknown-uefi` (Microsoft x64 calling
//!   convention, PE/COFF, soft-float: the Windows driver's situation) and the VM entry stub
//!   preserves both conventions' callee-saved registers (`stub.rs`).
//!
//! * (with them) the test doubles of rhax-core's `soft` feature are not in either binary.
//!
//! Each runs over the metal kernel (release ELF: every generic instantiated, calls resolved)
//! and over rhax-core's release rlib for UEFI (non-generic code only, calls unresolved).

use std::path::PathBuf;

use crate::{disasm, metal, stack, stub, vector};

/// The target standing in for the Windows driver: Microsoft x64 ABI, COFF, no SSE.
pub const UEFI_TARGET: &str = "x86_64-unknown-uefi";

/// Builds rhax-core (release, default features: what a shell links) for UEFI; returns its rlib.
pub fn build_uefi_core() -> crate::Result<PathBuf> {
    crate::ensure_rust_target(UEFI_TARGET)?;
    crate::cargo(&[
        "build",
        "-q",
        "--release",
        "-p",
        "rhax-core",
        "--target",
        UEFI_TARGET,
    ])?;
    Ok(crate::target_dir()
        .join(UEFI_TARGET)
        .join("release")
        .join("librhax_core.rlib"))
}

/// The two binaries, disassembled: `(name, functions, linked)`.
fn binaries() -> crate::Result<Vec<(String, Vec<disasm::Function>, bool)>> {
    let kernel = metal::build_kernel()?;
    let core = build_uefi_core()?;
    Ok(vec![
        (
            format!("metal kernel ({})", metal::KERNEL_TARGET),
            disasm::objdump(&kernel)?,
            true,
        ),
        (
            format!("rhax-core rlib ({UEFI_TARGET})"),
            disasm::objdump(&core)?,
            false,
        ),
    ])
}

/// `cargo xtask no-sse`.
pub fn no_sse() -> crate::Result {
    for (what, functions, _) in binaries()? {
        println!("no-sse: {}", vector::check(&what, &functions)?);
    }
    Ok(())
}

/// `cargo xtask stack`.
pub fn stack() -> crate::Result {
    let mut errors = Vec::new();
    for (what, functions, linked) in binaries()? {
        if let Err(e) = stack::check(&what, &functions, linked) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// `cargo xtask abi`.
pub fn abi() -> crate::Result {
    for (what, functions, _) in binaries()? {
        println!("abi: {}", stub::check(&what, &functions)?);
    }
    Ok(())
}

/// Names of rhax-core's host-test doubles (feature `soft`, off in shipped builds).
const TEST_DOUBLES: [&str; 5] = [
    "rhax_core::vmx::soft",
    "HeapPlatform",
    "SoftCpuRoots",
    "NoCpuRoots",
    "SoftVmx",
];

/// Fails when a function of a test double is in a shipped binary.
pub fn no_test_doubles(what: &str, functions: &[disasm::Function]) -> crate::Result<String> {
    let found: Vec<&str> = functions
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| TEST_DOUBLES.iter().any(|d| n.contains(d)))
        .collect();
    if found.is_empty() {
        Ok(format!("{what}: no code of rhax-core's test doubles"))
    } else {
        Err(format!(
            "{what}: test-double code in a shipped build (is rhax-core's `soft` feature on?): {}",
            found.join(", ")
        ))
    }
}

/// All the checks, building and disassembling once.
pub fn all() -> crate::Result {
    let mut errors = Vec::new();
    for (what, functions, linked) in binaries()? {
        match no_test_doubles(&what, &functions) {
            Ok(line) => println!("doubles: {line}"),
            Err(e) => errors.push(e),
        }
        match vector::check(&what, &functions) {
            Ok(line) => println!("no-sse: {line}"),
            Err(e) => errors.push(e),
        }
        match stub::check(&what, &functions) {
            Ok(line) => println!("abi: {line}"),
            Err(e) => errors.push(e),
        }
        if let Err(e) = stack::check(&what, &functions, linked) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::no_test_doubles;
    use crate::disasm::parse;

    #[test]
    fn test_doubles_are_found_by_name() {
        let shipped = "0000000000001000 <rhax_core::vmx::hw::HwVmx::new>:\n";
        assert!(no_test_doubles("t", &parse(shipped)).is_ok());
        let leaked = "0000000000001000 <<rhax_core::vmx::soft::SoftVmx as \
                      rhax_core::vmx::instructions::Vmx>::wrmsr>:\n";
        assert!(no_test_doubles("t", &parse(leaked)).is_err());
    }
}
