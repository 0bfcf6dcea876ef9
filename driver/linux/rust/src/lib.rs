//! The Linux shell over rhax-core: the Rust half of `rhax.ko`.
//!
//! Thin by design (ARCHITECTURE.md, "One core, several shells"). The C glue (`../glue.c`)
//! owns every kernel API call: HAXM's misc devices (`/dev/HAX`, `/dev/hax_vm/vmNN`,
//! `/dev/hax_vmNN/vcpuMM`), `file_operations`, user copies, pages, pinning, IPIs, the
//! non-preemptible lend and the host state a VM exit clobbers. This crate exports the
//! functions the glue's file operations call (`entry`) and implements `Platform`,
//! `UserMapping` (`platform`) and `CpuRoots` (`roots`) over the glue's C functions (`ffi`).
//!
//! Rooms: `ioc` (the Linux `_IOC` encoding: what to copy in and out; pure, host-tested),
//! `errno` (results to the negative errno the file operations return; pure), `layout`
//! (kmalloc sizes for an alignment; pure); kernel-only
//! (`cfg(rhax_linux)`, set by `.cargo/config.toml` for x86_64-unknown-none): `ffi` (the glue's
//! C functions), `kalloc` (the global allocator over kmalloc), `log` (printk), `platform`,
//! `roots`, `entry` (module init/exit, open/release/ioctl, the panic handler).

#![no_std]

#[cfg(test)]
extern crate std;

extern crate alloc;

pub mod errno;
pub mod ioc;
pub mod layout;

#[cfg(rhax_linux)]
#[macro_use]
mod log;
#[cfg(rhax_linux)]
mod entry;
#[cfg(rhax_linux)]
mod ffi;
#[cfg(rhax_linux)]
mod kalloc;
#[cfg(rhax_linux)]
mod platform;
#[cfg(rhax_linux)]
mod roots;
