//! Which VMs and vCPUs exist, as bitmaps: what a shell needs to create and delete HAXM's
//! per-object devices (`\Device\hax_vmNN`, `\Device\hax_vmNN_vcpuMM`, `haxm-abi.md` §1) after
//! a request that may have created or destroyed objects, without allocating (the snapshot
//! in [`super::HypervisorSnapshot`] allocates, and is for tests).

use rhax_api::{HAX_MAX_VCPUS, HAX_MAX_VMS};

use super::lockorder::LockTracker;
use super::{CpuRoots, Hypervisor, UserMapping};
use crate::platform::Platform;

// One bit per VM in a u64 and one per vCPU in a u16.
const _: () = assert!(HAX_MAX_VMS <= 64 && HAX_MAX_VCPUS <= 16);

/// The objects that have a name a client can open, or an open handle (one bit per id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveObjects {
    /// Bit `n`: VM `n` exists and its handle was not closed (it can be opened, or is open).
    /// A VM whose handle was closed lives on only for its vCPUs and can never be reopened,
    /// so its device has no use.
    pub vms: u64,
    /// `vcpus[n]` bit `m`: vCPU `m` of VM `n` exists (open or not; also when VM `n`'s handle
    /// was closed, as long as the vCPU lives).
    pub vcpus: [u16; HAX_MAX_VMS as usize],
}

impl Default for LiveObjects {
    fn default() -> Self {
        LiveObjects {
            vms: 0,
            vcpus: [0; HAX_MAX_VMS as usize],
        }
    }
}

impl LiveObjects {
    /// VM `vm`'s device should exist.
    pub fn vm(&self, vm: u32) -> bool {
        vm < 64 && self.vms & (1 << vm) != 0
    }

    /// vCPU `vcpu` of VM `vm`'s device should exist.
    pub fn vcpu(&self, vm: u32, vcpu: u32) -> bool {
        vcpu < 16
            && self
                .vcpus
                .get(vm as usize)
                .is_some_and(|bits| bits & (1 << vcpu) != 0)
    }
}

impl<P: Platform + UserMapping, R: CpuRoots> Hypervisor<P, R> {
    /// The VMs and vCPUs alive now (takes the table lock and each VM's state lock in turn:
    /// levels 0 then 1 of [`super::lockorder`]; allocates nothing).
    pub fn live(&self) -> LiveObjects {
        let mut live = LiveObjects::default();
        let t = LockTracker::new();
        let table = self.table.lock(&t);
        for (id, vm) in table.vms.iter().enumerate() {
            let Some(vm) = vm else { continue };
            let st = vm.state.lock(&t);
            if !st.closed && id < 64 {
                live.vms |= 1 << id;
            }
            let mut bits = 0u16;
            for (v, entry) in st.vcpus.iter().enumerate() {
                if entry.is_some() && v < 16 {
                    bits |= 1 << v;
                }
            }
            if let Some(slot) = live.vcpus.get_mut(id) {
                *slot = bits;
            }
        }
        live
    }
}
