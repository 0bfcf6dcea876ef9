//! The vCPU behind a vCPU handle, as far as the dispatcher needs it: creation, the tunnel and
//! IO-buffer pages, counters, teardown.
//!
//! Until the HAXM vCPU (`vcpu::haxm::HaxVcpu`, engineer V) lands, this wraps the core
//! [`Vcpu`] and owns the two shared pages itself; the operations that need HAXM's vCPU
//! semantics (RUN, registers, FPU, MSRs, events, debug, CPUID) are refused by the dispatcher
//! with [`super::ErrorKind::NotImplemented`] after their input was validated.

use crate::platform::{PhysPages, Platform, PlatformError};
use crate::vcpu::{CreateError, Vcpu};
use crate::vmx::negotiate::VmxControls;

/// A vCPU's state owned by the dispatcher's vCPU object.
pub(crate) struct VcpuBackend {
    pub(crate) vcpu: Vcpu,
    tunnel: PhysPages,
    io_buffer: PhysPages,
    /// RUN calls (for [`rhax_api::ext::VcpuStats::runs`]).
    pub(crate) runs: u64,
    /// Returns from RUN to user space.
    pub(crate) user_exits: u64,
}

/// The VPID of vCPU `vcpu` of VM `vm`: never 0 (the host's, SDM Vol. 3C §27.2.1.1), unique
/// over 64 VMs × 16 vCPUs.
pub(crate) fn vpid(vm: u32, vcpu: u32) -> u16 {
    ((vm << 4) | vcpu).wrapping_add(1) as u16
}

impl VcpuBackend {
    /// HAXM's VCPU_CREATE: the vCPU in power-on state, a tunnel page and an IO-buffer page.
    pub(crate) fn new<P: Platform>(
        platform: &P,
        controls: &VmxControls,
        vm: u32,
        vcpu: u32,
        eptp: u64,
    ) -> Result<VcpuBackend, PlatformError> {
        let core = Vcpu::new(platform, controls, vpid(vm, vcpu), eptp).map_err(|e| match e {
            CreateError::Platform(p) => p,
            CreateError::InvalidVpid => PlatformError::Unsupported,
        })?;
        let tunnel = match platform.alloc_pages(1) {
            Ok(p) => p,
            Err(e) => {
                let _ = core.destroy(platform);
                return Err(e);
            }
        };
        let io_buffer = match platform.alloc_pages(1) {
            Ok(p) => p,
            Err(e) => {
                platform.free_pages(tunnel);
                let _ = core.destroy(platform);
                return Err(e);
            }
        };
        Ok(VcpuBackend {
            vcpu: core,
            tunnel,
            io_buffer,
            runs: 0,
            user_exits: 0,
        })
    }

    /// The tunnel page and the IO buffer page.
    pub(crate) fn tunnel_pages(&self) -> (&PhysPages, &PhysPages) {
        (&self.tunnel, &self.io_buffer)
    }

    /// Frees everything. The VMCS must have been unloaded; if it is still active somewhere
    /// its pages are leaked rather than handed back while a CPU may use them.
    pub(crate) fn destroy<P: Platform>(self, platform: &P) {
        platform.free_pages(self.tunnel);
        platform.free_pages(self.io_buffer);
        if let Err(still_active) = self.vcpu.destroy(platform) {
            core::mem::forget(still_active);
        }
    }
}
