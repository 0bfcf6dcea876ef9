//! VMX: the instructions ([`Vmx`], real and software implementations, the counting wrapper),
//! capability MSRs, control negotiation, and VMX root operation.

pub mod caps;
mod counted;
mod error;
#[cfg(target_arch = "x86_64")]
pub mod hw;
pub mod instructions;
pub mod negotiate;
pub mod root;
// Host-test doubles (feature `soft`, see Cargo.toml): not in any shipped build.
#[cfg(any(test, feature = "soft"))]
pub mod soft;
#[cfg(any(test, feature = "soft"))]
pub mod soft_apic;
#[cfg(any(test, feature = "soft"))]
pub mod soft_faults;
#[cfg(any(test, feature = "soft"))]
mod soft_xstate;

pub use counted::Counted;
pub use error::{VmFail, VmInstructionError};
pub use instructions::{GuestRegisters, Vmx};
