//! The Windows (WDM) shell over rhax-core: `rhax.sys`.
//!
//! Thin by design (ARCHITECTURE.md, "One core, several shells"): device objects with HAXM's
//! names and security, IRPs into the one core dispatcher, NTSTATUS at the edge, and
//! `impl Platform`/`CpuRoots`/`UserMapping` on ntoskrnl. The NT-only modules compile only for
//! the driver image (`cfg(rhax_nt)`, set by `.cargo/config.toml` for x86_64-unknown-uefi);
//! the pure logic compiles on the host too and is unit-tested there.
//!
//! Rooms: `entry` (DriverEntry/Unload, the global shell), `devices` (device objects, links,
//! security), `irp` (IRP_MJ_* handlers), `status` (errors to NTSTATUS/Information), `names`
//! (HAXM's device names), `pool` (the global allocator), `log` (DbgPrint); `cpu` (is VT-x
//! usable), `platform` (`Platform` + `UserMapping` on ntoskrnl), `roots` (`CpuRoots`),
//! `seh` (the C shim for calls that raise); `nt` (hand-written NT declarations).

#![no_std]

#[cfg(test)]
extern crate std;

extern crate alloc;

pub mod cpu;
pub mod devices;
pub mod irp;
pub mod log;
pub mod names;
pub mod pages;
pub mod pool;
pub mod status;

#[cfg(rhax_nt)]
pub mod entry;
#[cfg(rhax_nt)]
pub mod nt;
#[cfg(rhax_nt)]
pub mod platform;
#[cfg(rhax_nt)]
pub mod roots;
#[cfg(rhax_nt)]
pub mod seh;
