//! rhax: the safe user-mode API over the HAXM IOCTL interface.
//!
//! Works against rhax and against Intel HAXM 7.x, on Windows (`\\.\HAX`), Linux, macOS and
//! NetBSD (`/dev/HAX`), and inside a kernel through an in-kernel [`Transport`] (the
//! bare-metal tests). The ABI itself (structs, IOCTL codes, constants) is the `rhax-api`
//! crate, re-exported as [`api`].
//!
//! * [`System`] is the control device: version, capability, memory limit, VM creation.
//! * [`Vm`] is a VM device: RAM blocks, guest-physical mappings, vCPU creation.
//! * [`Vcpu`] is a vCPU device with its tunnel: [`Vcpu::run`] returns an [`Exit`] that
//!   borrows the vCPU (as kvm-ioctls' `VcpuExit<'a>`), so the IO buffer can be handed out as
//!   a slice and the vCPU cannot run again until the exit has been handled.
//!
//! Every request is built here and every reply checked here; a [`Transport`] only moves
//! bytes. Errors are typed ([`Error`]) and no reply, however malformed, panics.
//!
//! The `std` feature (default) adds the OS transports. Without it the crate is `no_std`
//! and needs no allocator.
//!
//! # Example
//!
//! A QEMU-style session: check the driver, create a VM with 2 MiB of RAM at guest address
//! 0, one vCPU, and run it until it halts, answering port IO.
//!
//! ```no_run
//! # #[cfg(unix)] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use rhax::api::{CapabilityFeatures, IoDirection, RamFlags, VcpuState};
//! use rhax::{Exit, PosixTransport, System};
//!
//! let sys = System::open(PosixTransport)?;
//! let caps = sys.working_capability()?;
//! sys.check_version()?;
//! let vm = sys.create_vm()?;
//! vm.notify_qemu_version()?;
//!
//! // Guest RAM: page-aligned memory that no Rust object lives in, kept for the VM's life.
//! let layout = std::alloc::Layout::from_size_align(2 << 20, 4096)?;
//! // SAFETY: non-zero size.
//! let ram = unsafe { std::alloc::alloc_zeroed(layout) } as u64;
//! // SAFETY: `ram` is a leaked allocation used only by the guest.
//! unsafe {
//!     if caps.features().is_some_and(|f| f.contains(CapabilityFeatures::RAMBLOCK_64BIT)) {
//!         vm.add_ramblock(ram, 2 << 20)?;
//!     } else {
//!         vm.alloc_ram(ram, 2 << 20)?;
//!     }
//! }
//! vm.set_ram(0, 2 << 20, ram, RamFlags::empty())?;
//!
//! let mut vcpu = vm.create_vcpu(0)?;
//! let mut regs = vcpu.get_regs()?;
//! regs.rip = 0x1000;
//! vcpu.set_regs(&regs)?;
//! loop {
//!     match vcpu.run()? {
//!         Exit::Io { direction: IoDirection::Out, port, data, .. } => {
//!             println!("OUT {port:#x}: {data:02x?}");
//!         }
//!         Exit::Io { direction: IoDirection::In, data, .. } => data.fill(0xff),
//!         Exit::FastMmio(mut mmio) => {
//!             if mmio.direction == rhax::api::MmioDirection::Read {
//!                 mmio.complete_read(0)?;
//!             }
//!         }
//!         Exit::Interrupt | Exit::Paused => {}
//!         Exit::Hlt => break,
//!         other => return Err(format!("unexpected exit {other:?}").into()),
//!     }
//! }
//! # Ok(()) }
//! # #[cfg(not(unix))] fn main() {}
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub use rhax_api as api;

mod error;
#[cfg(feature = "std")]
mod os;
mod stats;
mod system;
mod transport;
mod tunnel;
mod vcpu;
mod vm;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use error::{win32_name, Error, OsError, Result, EAGAIN_BSD, EAGAIN_LINUX, EINTR};
#[cfg(all(feature = "std", unix))]
pub use os::posix::PosixTransport;
#[cfg(all(feature = "std", windows))]
pub use os::windows::{WinHandle, WindowsTransport};
pub use system::{System, CLIENT_API_VERSION};
pub use transport::{DevicePath, IoctlBuf, IoctlRequest, Transport};
pub use tunnel::SharedTunnel;
pub use vcpu::{Exit, MmioExit, Vcpu};
pub use vm::Vm;
