//! The VMCS: the component table, its cache, exit decoding, statistics and setup.

mod cache;
pub mod deliverable;
pub mod exit;
mod fields;
pub mod setup;
pub mod stats;

pub use cache::{FlushError, Vmcs, VmcsCache};
pub use fields::{Access, Encoding, FieldInfo, Kind, Policy, VmcsField, Width};
