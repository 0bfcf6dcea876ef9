//! rhax-stat: the VMREAD/VMWRITE counter tool's library.
//!
//! rhax counts every VMX instruction of a vCPU at the one wrapper they all go through
//! (`rhax-core`'s `vmx::Counted`), per VMX basic exit reason, and returns the counters with
//! the `RHAX_VCPU_IOCTL_GET_STATS` extension IOCTL (`rhax_api::ext`). This crate turns those
//! records into what a person tuning a hypervisor or checking a guest's exit profile reads:
//! per exit reason, exits (and exits per second), VMREAD, VMWRITE and other VMX instructions
//! per exit and host cycles per exit, as a `top`-like table, CSV, JSON Lines or an SVG chart.
//!
//! * [`render`], [`svg`], [`sample`], [`reasons`], [`fixed`]: `no_std`, no allocation, no
//!   floating point: the bare-metal test kernel prints its table through the same code.
//! * [`source`]: the [`StatsSource`](source::StatsSource) trait a vCPU's counters come
//!   through; implemented by userlib's `StatsHandle` and `Vcpu`, and by the tests' fake.
//! * [`monitor`] (`alloc`): sampling several vCPUs, interval deltas and the timeline.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod fixed;
#[cfg(feature = "alloc")]
pub mod monitor;
pub mod reasons;
pub mod render;
pub mod sample;
pub mod source;
pub mod svg;

#[cfg(test)]
mod tests;
