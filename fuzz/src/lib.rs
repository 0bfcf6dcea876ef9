//! Fuzz harnesses for rhax-core, shared by the `cargo fuzz` targets in `fuzz_targets/`:
//! * [`dispatch`]: IOCTL sequences through `rhax_core::dispatch::Hypervisor` with a scripted
//!   guest CPU (the software VMX's `CpuHook`);
//! * [`decoder`]: the MMIO fast path's plain-MOV decoder against iced-x86;
//! * [`emulator`]: the full MMIO emulator (decode and execute) with iced-x86 and its own
//!   contracts as oracles;
//! * [`pagewalk`]: the guest page walker against a reference walker (SDM Vol. 3A ch. 4/5).
//!
//! Each harness panics on a broken oracle, which libFuzzer reports as a crash.

pub mod decoder;
pub mod dispatch;
pub mod emulator;
pub mod pagewalk;
