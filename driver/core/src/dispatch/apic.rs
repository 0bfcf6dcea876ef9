//! rhax's in-kernel APIC IOCTLs: RHAX_VM_IOCTL_ENABLE_APIC and RHAX_VM_IOCTL_SIGNAL_MSI on
//! the VM device, RHAX_VCPU_IOCTL_APIC_LINT on the vCPU device. None of them takes a vCPU's
//! lease: an MSI or a LINT change is posted into the target's port (`crate::apic::bus`) and
//! the target, if it is in the guest, is kicked, so a device thread never waits for a RUN.

use crate::memory::try_arc::TryArc;

use rhax_api::ext::{ApicConfig, ApicFlags, RhaxLint, RhaxMsi};

use super::error::ApicRefusal;
use super::lockorder::LockTracker;
use super::objects::{VcpuObject, VmObject};
use super::table::{Call, Ctx};
use super::{CpuRoots, ErrorKind, Hypervisor, Res, UserMapping};
use crate::apic::bus::AccessWork;
use crate::apic::{decode_msi, ApicBus};
use crate::memory::GuestMemory;
use crate::platform::{Platform, PlatformError};
use crate::vcpu::cpuid::CpuidTable;
use crate::vcpu::haxm::HaxVcpu;

/// The xAPIC base after reset (SDM Vol. 3A §11.4.4).
const DEFAULT_APIC_BASE: u64 = 0xfee0_0000;

impl<P: Platform + UserMapping, R: CpuRoots> Hypervisor<P, R> {
    /// RHAX_VM_IOCTL_ENABLE_APIC: checked whole, then the bus is created and the VM's CPUID
    /// table may show x2APIC and TSC-deadline. Nothing changes when it fails.
    pub(super) fn enable_apic(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        let config: ApicConfig = c.ctx.read(c.input)?;
        let refuse = |r| c.ctx.err(ErrorKind::Apic(r));
        let flags =
            ApicFlags::from_bits(config.flags).ok_or_else(|| refuse(ApicRefusal::Config))?;
        if !flags.contains(ApicFlags::ENABLE) || config.reserved != 0 {
            return Err(refuse(ApicRefusal::Config));
        }
        let oom = || c.ctx.err(ErrorKind::Platform(PlatformError::OutOfMemory));
        let t = LockTracker::new();
        {
            let st = vm.state.lock(&t);
            if st.apic.is_some() {
                return Err(refuse(ApicRefusal::AlreadyEnabled));
            }
            if st.vcpus.iter().any(Option::is_some) {
                return Err(refuse(ApicRefusal::VcpusExist));
            }
        }
        // The APIC-access page, mapped at the default base in the VM's EPT, where the CPU
        // virtualizes APIC accesses (SDM Vol. 3C §30.4); without it (not offered, switched
        // off, or RAM already there) xAPIC accesses are EPT violations served the same way.
        // The vCPUs turn "virtualize APIC accesses" on only with the TPR shadow
        // (`HaxVcpu::attach_apic`): without it, the page mapped here would be plain memory
        // under the guest's xAPIC accesses (IPIs, EOIs and timer writes silently lost).
        use crate::vmx::negotiate::OptionalFeatures;
        let virtualize = self.host.as_ref().is_ok_and(|c| {
            c.available
                .contains(OptionalFeatures::VIRTUALIZE_APIC_ACCESSES)
                && c.available.contains(OptionalFeatures::TPR_SHADOW)
        }) && !flags
            .intersects(ApicFlags::NO_APIC_ACCESS_PAGE | ApicFlags::NO_TPR_SHADOW);
        let mut access = 0;
        if virtualize {
            let memory = self.memory_of(vm, c.ctx)?;
            match memory.map_apic_access(&self.platform, DEFAULT_APIC_BASE) {
                Ok(hpa) => access = hpa,
                Err(crate::memory::MemoryError::Overlap) => {}
                Err(e) => return Err(c.ctx.err(ErrorKind::Memory(e))),
            }
        }
        // Built in place (16 ports: too large for a kernel stack frame) before the lock.
        let bus = ApicBus::shared(flags, access).map_err(|_| oom())?;
        let mut st = vm.state.lock(&t);
        if st.apic.is_some() {
            return Err(refuse(ApicRefusal::AlreadyEnabled));
        }
        if st.vcpus.iter().any(Option::is_some) {
            return Err(refuse(ApicRefusal::VcpusExist));
        }
        {
            // Level 2 under level 1: the lock order allows it.
            let mut slot = vm.cpuid.lock(&t);
            let table = TryArc::try_new_zeroed_with(oom(), |table: &mut CpuidTable| {
                table.copy_from(&slot);
                table.allow_apic_features();
                Ok(())
            })?;
            *slot = table;
        }
        st.apic = Some(bus);
        Ok(0)
    }

    /// The VM's bus, cloned out of its state lock; `ENXIO` without ENABLE_APIC.
    pub(super) fn apic_bus(&self, vm: &VmObject, ctx: Ctx) -> Res<TryArc<ApicBus>> {
        let t = LockTracker::new();
        let st = vm.state.lock(&t);
        match st.apic.as_ref() {
            Some(b) => Ok(b.clone()),
            None => Err(ctx.err(ErrorKind::Apic(ApicRefusal::NotEnabled))),
        }
    }

    /// RHAX_VM_IOCTL_SIGNAL_MSI: routed like the guest's own IPIs; the targets in the guest
    /// are kicked, the others take it at their next entry.
    pub(super) fn signal_msi(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        let msi: RhaxMsi = c.ctx.read(c.input)?;
        let refuse = || c.ctx.err(ErrorKind::Apic(ApicRefusal::Msi));
        if msi.reserved != 0 || msi.data > 0xffff {
            return Err(refuse());
        }
        let ipi = decode_msi(msi.address, msi.data).ok_or_else(refuse)?;
        let bus = self.apic_bus(vm, c.ctx)?;
        let targets = bus.deliver(&ipi, None);
        bus.kick(&self.platform, targets, None);
        Ok(0)
    }

    /// RHAX_VCPU_IOCTL_APIC_LINT: the pin's new level, delivered by the vCPU through its LVT
    /// entry before its next entry (kicked if it is in the guest).
    pub(super) fn apic_lint(
        &self,
        vm: &TryArc<VmObject>,
        vcpu: &TryArc<VcpuObject>,
        c: Call<'_>,
    ) -> Res<usize> {
        let lint: RhaxLint = c.ctx.read(c.input)?;
        if lint.pin > 1 || lint.level > 1 || lint.vector > 0xff || lint.reserved != 0 {
            return Err(c.ctx.err(ErrorKind::Apic(ApicRefusal::Lint)));
        }
        let bus = self.apic_bus(vm, c.ctx)?;
        let index = vcpu.id as usize;
        if bus.set_lint(index, lint.pin as usize, lint.level == 1, lint.vector as u8) {
            bus.kick(&self.platform, 1 << index, None);
        }
        Ok(0)
    }

    /// RHAX_VCPU_IOCTL_GET_APIC_STATE (the vCPU's lease: not while it runs).
    pub(super) fn get_apic_state(
        &self,
        _vm: &TryArc<VmObject>,
        vcpu: &TryArc<VcpuObject>,
        c: Call<'_>,
    ) -> Res<usize> {
        let mut lease = self.lease(vcpu, c.ctx)?;
        let hax = lease.get();
        if !hax.has_apic() {
            return Err(c.ctx.err(ErrorKind::Apic(ApicRefusal::NotEnabled)));
        }
        hax.write_apic_state(c.output)
            .map_err(|e| c.ctx.err(ErrorKind::Vcpu(e)))
    }

    /// RHAX_VCPU_IOCTL_SET_APIC_STATE: checked whole; nothing changes on a refusal. A state
    /// whose APIC is not at the default xAPIC base drops the VM's APIC-access mapping.
    pub(super) fn set_apic_state(
        &self,
        vm: &TryArc<VmObject>,
        vcpu: &TryArc<VcpuObject>,
        c: Call<'_>,
    ) -> Res<usize> {
        // Before the lease: dropped after it (as in RUN), so a vCPU closed meanwhile is torn
        // down before the last reference to the EPT can go.
        let memory = self.memory_of(vm, c.ctx)?;
        let mut lease = self.lease(vcpu, c.ctx)?;
        let hax = lease.get();
        if !hax.has_apic() {
            return Err(c.ctx.err(ErrorKind::Apic(ApicRefusal::NotEnabled)));
        }
        hax.set_apic_state(c.input)
            .map_err(|e| c.ctx.err(ErrorKind::Vcpu(e)))?;
        self.apic_after_run(hax, &memory);
        Ok(0)
    }

    /// After a RUN or SET_APIC_STATE (at passive level, the vCPU lent, no dispatcher lock):
    /// the APIC-access mapping change the bus asks for ([`ApicBus::claim_access_work`]), made
    /// by whichever dispatcher claims it. When a vCPU's APIC left the default xAPIC base, the
    /// page's translation goes and every CPU runs the INVEPT (the IPI also makes the VM's
    /// running vCPUs leave the guest, so none goes on with the old translation): 0xFEE00000
    /// is then what the memslots make it, and xAPIC accesses at the default base take the
    /// EPT-violation (MMIO) path. That vCPU does not enter its guest before (it ended its
    /// RUN, and `ApicBus::may_enter` holds it back). When every vCPU is back at the default
    /// base, the translation comes back (a reset guest, or one that left x2APIC mode, gets
    /// the APIC-access fast paths again, as KVM lifts its APICv inhibit). Out of memory: the
    /// next RUN's end retries.
    ///
    /// The "no APIC" test is inlined into RUN (once per RUN); the rest is out of line.
    #[inline]
    pub(super) fn apic_after_run(&self, hax: &HaxVcpu, memory: &GuestMemory) {
        if let Some(bus) = hax.apic_bus() {
            self.apic_access_work(bus, memory);
        }
    }

    /// [`Hypervisor::apic_after_run`]'s work for a vCPU with an in-kernel APIC.
    #[inline(never)]
    fn apic_access_work(&self, bus: &ApicBus, memory: &GuestMemory) {
        let Some(work) = bus.claim_access_work() else {
            return;
        };
        // A map can be followed by one unmap (a vCPU left the default base meanwhile); the
        // end of an unmap never asks for more.
        if let Some(again) = bus.access_work_done(work, self.change_access(work, memory)) {
            let in_ept = self.change_access(again, memory);
            let _ = bus.access_work_done(again, in_ept);
        }
    }

    /// Carries out `work` on the APIC-access page's translation; whether the page is in the
    /// EPT afterwards (`None`: RAM took its place).
    fn change_access(&self, work: AccessWork, memory: &GuestMemory) -> Option<bool> {
        match work {
            AccessWork::Unmap => match memory.unmap_apic_access(DEFAULT_APIC_BASE) {
                Ok(Some(req)) => {
                    self.roots
                        .invept_each_cpu(req.eptp, self.single_context_invept());
                    memory.invept_done(&self.platform, req);
                    Some(false)
                }
                // Not there (RAM replaced it): out all the same.
                Ok(None) => Some(false),
                Err(_) => Some(true),
            },
            AccessWork::Map => match memory.remap_apic_access(&self.platform, DEFAULT_APIC_BASE) {
                Ok(true) => Some(true),
                Ok(false) => None,
                Err(_) => Some(false),
            },
        }
    }
}
