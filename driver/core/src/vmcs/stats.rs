//! The per-vCPU counters, under their historical path: they live in [`crate::counters`], below
//! both `vmx/` and `vmcs/`.

pub use crate::counters::*;
