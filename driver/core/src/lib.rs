//! rhax-core: the hypervisor, independent of any OS.
#![no_std]

extern crate alloc;

pub mod vmx;
