//! The bare-metal stage: rhax-core on emulated VT-x in Bochs.

/// `cargo xtask metal ...`.
pub fn main(_args: &[String]) -> crate::Result {
    Err("the bare-metal harness (tests/metal) has not landed yet".into())
}

/// The metal part of `cargo xtask test`.
pub fn test_stage() -> crate::Result {
    eprintln!("xtask: metal stage: not yet implemented (tests/metal has not landed)");
    Ok(())
}

/// The main job until the Bochs harness lands: the ABI summary.
pub fn demo() -> crate::Result {
    crate::cargo(&["run", "-q", "-p", "rhax-api", "--example", "abi-ioctls"])
}
