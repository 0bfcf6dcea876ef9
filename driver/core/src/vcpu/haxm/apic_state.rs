//! The in-kernel APIC's state IOCTLs (RHAX_VCPU_IOCTL_GET_APIC_STATE and
//! RHAX_VCPU_IOCTL_SET_APIC_STATE): the model's whole state, for snapshots and migration.

use super::*;

impl HaxVcpu {
    /// RHAX_VCPU_IOCTL_GET_APIC_STATE into `out` (the IOCTL's output buffer): what the port
    /// holds is taken in first, an NMI accepted but not yet injected is reported as pending.
    /// The state is built on the heap (1 KiB: not on a kernel stack frame).
    pub fn write_apic_state(&mut self, out: &mut [u8]) -> Result<usize, HaxError> {
        use rhax_api::apic::{RhaxApicState, RHAX_APIC_NMI_PENDING};
        let Some(u) = self.apic.as_deref_mut() else {
            return Err(HaxError::Unsupported("in-kernel APIC not enabled"));
        };
        let Some(out) = out.get_mut(..RhaxApicState::SIZE) else {
            return Err(HaxError::InvalidValue(
                crate::vcpu::checked::Refused::ReservedBits,
            ));
        };
        u.sync_from_vtpr();
        if let Some(port) = u.bus.port(u.index) {
            port.drain_into(&mut u.local);
        }
        let mut state = crate::heap::try_zeroed::<RhaxApicState>()
            .ok_or(HaxError::Platform(PlatformError::OutOfMemory))?;
        u.local.save(&mut state);
        if u.nmi {
            state.flags |= RHAX_APIC_NMI_PENDING;
        }
        out.copy_from_slice(state.as_bytes());
        Ok(RhaxApicState::SIZE)
    }

    /// RHAX_VCPU_IOCTL_SET_APIC_STATE from `input`: checked whole by the model (nothing
    /// changes on a refusal); the routing view, the virtual TPR and IA32_APIC_BASE follow.
    pub fn set_apic_state(&mut self, input: &[u8]) -> Result<(), HaxError> {
        use rhax_api::apic::RhaxApicState;
        let Some(u) = self.apic.as_deref_mut() else {
            return Err(HaxError::Unsupported("in-kernel APIC not enabled"));
        };
        let mut state = crate::heap::try_zeroed::<RhaxApicState>()
            .ok_or(HaxError::Platform(PlatformError::OutOfMemory))?;
        let Some(body) = input.get(..RhaxApicState::SIZE) else {
            return Err(HaxError::InvalidValue(
                crate::vcpu::checked::Refused::ReservedBits,
            ));
        };
        state.as_bytes_mut().copy_from_slice(body);
        u.local.restore(&state).map_err(HaxError::ApicState)?;
        u.image_dirty = true;
        // The dispatcher changes the APIC-access mapping after the IOCTL if the restored
        // base asks for it (`apic_after_run`).
        u.note_base();
        u.nmi = false;
        u.extint = None;
        let tpr = u.local.tpr();
        u.set_vtpr(tpr);
        if let Some(port) = u.bus.port(u.index) {
            port.publish(&u.local);
        }
        self.apic_base = u.local.base_msr();
        self.publish_apic_base();
        Ok(())
    }
}
