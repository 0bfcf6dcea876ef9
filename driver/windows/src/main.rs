//! `rhax.sys`: the image's entry point. Everything is in the library (`lib.rs`); this file
//! only exists so that cargo links a PE image with `DriverEntry` as its entry.

#![cfg_attr(rhax_nt, no_std)]
#![cfg_attr(rhax_nt, no_main)]

#[cfg(rhax_nt)]
pub use rhax_sys::entry::DriverEntry;

/// A host build has nothing to run: the driver is only meaningful as `rhax.sys`.
#[cfg(not(rhax_nt))]
fn main() {
    eprintln!("rhax-sys: build the driver with `cargo xtask sys`");
}
