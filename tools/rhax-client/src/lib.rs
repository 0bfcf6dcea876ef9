//! `rhax-client`: QEMU's HAXM opening sequence against `\\.\HAX`, step by step, and the
//! assertions of the Wine stage (`cargo xtask wine`) about a driver without VT-x.
//!
//! The logic is here and OS-independent (over [`rhax::Transport`]), so the host tests run it
//! against rhax-core's own dispatcher; `main.rs` picks the Windows transport.

pub mod bench;
pub mod checks;
pub mod expect;
pub mod qemu;
pub mod status;
pub mod vtx;
