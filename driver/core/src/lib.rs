//! rhax-core: the hypervisor, independent of any OS.
//!
//! Bring-up on one CPU and a run, as a kernel shell does it:
//! 1. `negotiate(&VmxCaps::read(..))` once (`vmx::negotiate`), pages from a [`platform::Platform`];
//! 2. per CPU: `VmxRoot::enable(HwVmx::new(), cpu, vmxon_page)` (`vmx::root`);
//! 3. per vCPU: `Vcpu::new(&platform, &controls, vpid, eptp)` (`vcpu`);
//! 4. loop: `vcpu.run(&mut root)` → [`vmcs::exit::VmExit`], handle it with
//!    `vcpu.with_vmcs(&mut root, |vmcs, regs| ..)` (e.g. `vcpu::skip_instruction`);
//! 5. `vcpu.put(&mut root)` before leaving the non-preemptible region; `vcpu.unload` on the CPU
//!    where it is active before it moves or is destroyed; `root.disable()`.
#![no_std]

extern crate alloc;

pub mod apic;
pub mod counters;
pub mod dispatch;
pub mod emulate;
pub mod heap;
pub mod memory;
pub mod platform;
pub mod vcpu;
pub mod vmcs;
pub mod vmx;
