//! VM-device IOCTLs (`hax_vmNN`): VCPU_CREATE, the guest-memory IOCTLs, NOTIFY_QEMU_VERSION,
//! VCPU_DESTROY (`haxm-abi.md` §2).

use crate::memory::try_arc::TryArc;
use core::sync::atomic::AtomicU32;

use rhax_api::{AllocRamInfo, ProtectRamInfo, QemuVersion, RamblockInfo, SetRamInfo, SetRamInfo2};

use rhax_api::HAX_MAX_VCPUS;

use super::lockorder::{Level, LockTracker, Ordered};
use super::objects::{VcpuEntry, VcpuObject, VcpuSlot, VmObject, VmState, NOT_RUNNING};
use super::table::{Call, Ctx};
use super::{CpuRoots, ErrorKind, Hypervisor, Res, UserMapping};
use crate::memory::limits::try_box;
use crate::memory::{GuestMemory, InveptRequest, MemoryError};
use crate::platform::{Platform, PlatformError};
use crate::vcpu::haxm::HaxVcpu;

impl<P: Platform + UserMapping, R: CpuRoots> Hypervisor<P, R> {
    pub(super) fn vcpu_create(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        let id: u32 = c.ctx.read(c.input)?;
        self.create_vcpu(vm, id, c.ctx)?;
        Ok(0)
    }

    pub(super) fn alloc_ram(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        let info: AllocRamInfo = c.ctx.read(c.input)?;
        self.memory_change(vm, c.ctx, |m| m.alloc_ram(&info).map(|()| None))
    }

    pub(super) fn add_ramblock(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        let info: RamblockInfo = c.ctx.read(c.input)?;
        self.memory_change(vm, c.ctx, |m| m.add_ramblock(&info).map(|()| None))
    }

    pub(super) fn set_ram(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        let info: SetRamInfo = c.ctx.read(c.input)?;
        self.memory_change(vm, c.ctx, |m| m.set_ram(&info))
    }

    pub(super) fn set_ram2(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        let info: SetRamInfo2 = c.ctx.read(c.input)?;
        self.memory_change(vm, c.ctx, |m| m.set_ram2(&info))
    }

    pub(super) fn protect_ram(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        let info: ProtectRamInfo = c.ctx.read(c.input)?;
        self.memory_change(vm, c.ctx, |m| m.protect_ram(&info))
    }

    pub(super) fn notify_qemu_version(&self, vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        // HAXM records "fast MMIO basic/extra" from it and never reads them again
        // (`haxm-abi.md` §2); kept for diagnostics. Never fails.
        let v: QemuVersion = c.ctx.read(c.input)?;
        let t = LockTracker::new();
        vm.state.lock(&t).qemu_version = Some(v);
        Ok(0)
    }

    pub(super) fn vcpu_destroy_ioctl(&self, _vm: &TryArc<VmObject>, c: Call<'_>) -> Res<usize> {
        self.unimplemented_by_haxm(c.ctx)
    }

    /// Runs a memory-map change and, if it removed translations, the INVEPT everywhere that
    /// lets the memory module free what it unlinked. Holds a reference to the memory, no
    /// dispatcher lock (the change takes the memory module's own lock, briefly).
    fn memory_change(
        &self,
        vm: &VmObject,
        ctx: Ctx,
        f: impl FnOnce(&GuestMemory) -> Result<Option<InveptRequest>, MemoryError>,
    ) -> Res<usize> {
        let memory = self.memory_of(vm, ctx)?;
        if let Some(req) = f(&memory).map_err(|e| ctx.err(ErrorKind::Memory(e)))? {
            self.roots
                .invept_each_cpu(req.eptp, self.single_context_invept());
            memory.invept_done(&self.platform, req);
        }
        Ok(0)
    }

    /// Creates vCPU `id` of `vm` (VCPU_CREATE).
    pub(super) fn create_vcpu(&self, vm: &TryArc<VmObject>, id: u32, ctx: Ctx) -> Res<()> {
        if id >= HAX_MAX_VCPUS {
            return Err(ctx.err(ErrorKind::VcpuIdOutOfRange { vcpu: id }));
        }
        let t = LockTracker::new();
        let in_use = |st: &VmState| st.vcpus[id as usize].is_some();
        let apic = {
            let st = vm.state.lock(&t);
            if in_use(&st) {
                return Err(ctx.err(ErrorKind::VcpuIdInUse { vcpu: id }));
            }
            st.apic.clone()
        };
        let had_apic = apic.is_some();
        let controls = self
            .host
            .as_ref()
            .map_err(|_| ctx.err(ErrorKind::NotWorking))?;
        // Build outside the locks (allocation), then insert if the id is still free.
        let backend = HaxVcpu::new(&self.platform, controls, vm.id, id, vm.eptp)
            .map_err(|e| ctx.err(ErrorKind::Vcpu(e)))?;
        let mut backend = try_box(backend).map_err(|b| {
            let _ = b.destroy(&self.platform);
            ctx.err(ErrorKind::Platform(PlatformError::OutOfMemory))
        })?;
        if let Some(bus) = apic {
            if let Err(e) = backend.attach_apic(&self.platform, bus) {
                let _ = (*backend).destroy(&self.platform);
                return Err(ctx.err(ErrorKind::Vcpu(e)));
            }
        }
        let (tunnel, io) = backend.tunnel_pages();
        let user_tunnel = match self.platform.map_user(tunnel) {
            Ok(va) => va,
            Err(e) => {
                let _ = (*backend).destroy(&self.platform);
                return Err(ctx.err(ErrorKind::Platform(e)));
            }
        };
        let user_io_buffer = match self.platform.map_user(io) {
            Ok(va) => va,
            Err(e) => {
                self.platform.unmap_user(user_tunnel, tunnel);
                let _ = (*backend).destroy(&self.platform);
                return Err(ctx.err(ErrorKind::Platform(e)));
            }
        };
        let obj = TryArc::try_new(VcpuObject {
            id,
            running_on: AtomicU32::new(NOT_RUNNING),
            user_tunnel,
            user_io_buffer,
            slot: Ordered::new(Level::VcpuSlot, VcpuSlot::Idle(backend)),
        });
        let obj = match obj {
            Ok(o) => o,
            Err((e, o)) => {
                self.destroy_vcpu(&o);
                return Err(ctx.err(ErrorKind::Platform(e)));
            }
        };
        let mut st = vm.state.lock(&t);
        // ENABLE_APIC cannot have come in between (it refuses once a vCPU exists, and this
        // one did not yet): checked anyway, so a vCPU never lacks the APIC its VM has.
        if in_use(&st) || st.closed || st.apic.is_some() != had_apic {
            drop(st);
            let kind = ErrorKind::VcpuIdInUse { vcpu: id };
            self.destroy_vcpu(&obj);
            return Err(ctx.err(kind));
        }
        st.vcpus[id as usize] = Some(VcpuEntry { obj, handle: None });
        Ok(())
    }
}
