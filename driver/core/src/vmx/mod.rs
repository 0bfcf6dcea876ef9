//! VMX: capability MSRs and control negotiation.

pub mod caps;
pub mod negotiate;
