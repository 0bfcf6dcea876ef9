//! System-device IOCTLs (`\\.\HAX`, `/dev/HAX`): VERSION, CAPABILITY, SET_MEMLIMIT, CREATE_VM,
//! DESTROY_VM, and rhax's EXT_INFO (`haxm-abi.md` §2, §5).

use rhax_api::ext::{
    ExtFeatures, RhaxExtInfo, StatsControl, VcpuStatsRequest, RHAX_EXT_MAGIC, RHAX_EXT_VERSION,
    RHAX_STATS_OP_CONTROL, RHAX_STATS_OP_GET, RHAX_STATS_OP_RESET,
};
use rhax_api::{
    CapabilityFailure, CapabilityInfo, CapabilityStatus, ModuleVersion, Pod, SetMemlimit,
    HAX_COMPAT_VERSION, HAX_CUR_VERSION,
};

use super::lockorder::LockTracker;
use super::table::{Call, Ctx};
use super::{Codes, CpuRoots, ErrorKind, Hypervisor, Res, UserMapping};
use crate::platform::Platform;

impl<P: Platform + UserMapping, R: CpuRoots> Hypervisor<P, R> {
    pub(super) fn version(&self, _serial: u64, c: Call<'_>) -> Res<usize> {
        let v = ModuleVersion {
            compat_version: HAX_COMPAT_VERSION,
            cur_version: HAX_CUR_VERSION,
        };
        c.ctx.write(&v, c.output)
    }

    pub(super) fn capability(&self, _serial: u64, c: Call<'_>) -> Res<usize> {
        let t = LockTracker::new();
        let table = self.table.lock(&t);
        let (mut wstatus, winfo) = match (&self.host, self.capability_features()) {
            (Ok(_), Some(f)) => (CapabilityStatus::WORKING, f.bits()),
            (Err(fail), _) => (CapabilityStatus::empty(), fail.bits()),
            (Ok(_), None) => (CapabilityStatus::empty(), CapabilityFailure::VT.bits()),
        };
        if table.mem_limit.is_some() {
            wstatus |= CapabilityStatus::MEMQUOTA;
        }
        // win_refcount: Windows reports the control device's reference count, Linux a zeroed
        // field (`haxm-abi.md` §2).
        let refcount = if c.ctx.windows() {
            table.systems.len() as u32
        } else {
            0
        };
        // mem_quota is not written when MEMQUOTA is clear (HAXM); Linux copies a zeroed local
        // struct, so its callers see 0. It reports the limit, as HAXM 7.8.0 (which no longer
        // counts what is used); the limit is enforced (`memory::limits::RamQuota`).
        let previous = CapabilityInfo::read_from_prefix(c.output).unwrap_or_default();
        let quota = match table.mem_limit {
            Some(q) => q,
            None if matches!(self.codes, Codes::Linux | Codes::LinuxI386) => 0,
            None => previous.mem_quota,
        };
        drop(table);
        let cap = CapabilityInfo {
            wstatus: wstatus.bits(),
            winfo,
            win_refcount: refcount,
            mem_quota: quota,
        };
        c.ctx.write(&cap, c.output)
    }

    /// SET_MEMLIMIT: the input is in MB, the quota in bytes (`haxm-abi.md` §8 quirk 11);
    /// refused while a VM exists. From then on the bytes of all VMs' RAM blocks together stay
    /// within it ([`crate::memory::limits`]).
    pub(super) fn set_memlimit(&self, _serial: u64, c: Call<'_>) -> Res<usize> {
        let m: SetMemlimit = c.ctx.read(c.input)?;
        let t = LockTracker::new();
        let mut table = self.table.lock(&t);
        if table.vms.iter().any(Option::is_some) {
            return Err(c.ctx.err(ErrorKind::VmsExist));
        }
        let limit = if m.enable_memlimit == 0 {
            None
        } else {
            Some(m.memory_limit.checked_mul(1 << 20).ok_or_else(|| {
                c.ctx.err(ErrorKind::MemLimitOverflow {
                    megabytes: m.memory_limit,
                })
            })?)
        };
        table.mem_limit = limit;
        // No VM exists (checked under the same lock, which CREATE_VM takes to insert), so
        // nothing is charged to the quota now.
        self.quota.set_limit(limit);
        Ok(0)
    }

    pub(super) fn create_vm_ioctl(&self, serial: u64, c: Call<'_>) -> Res<usize> {
        let id = self.create_vm_for(Some(serial), c.ctx)?;
        c.ctx.write(&id, c.output)
    }

    pub(super) fn destroy_vm_ioctl(&self, _serial: u64, c: Call<'_>) -> Res<usize> {
        self.unimplemented_by_haxm(c.ctx)
    }

    pub(super) fn ext_info(&self, _serial: u64, c: Call<'_>) -> Res<usize> {
        let info = RhaxExtInfo {
            magic: RHAX_EXT_MAGIC,
            version: RHAX_EXT_VERSION,
            features: ExtFeatures::VCPU_STATS
                .union(ExtFeatures::STATS_CONTROL)
                .union(ExtFeatures::SYSTEM_STATS)
                .union(ExtFeatures::FIELD_STATS)
                .union(ExtFeatures::XSAVE)
                .union(ExtFeatures::EMULATION_CONTROL)
                .union(ExtFeatures::IN_KERNEL_APIC)
                .union(ExtFeatures::STATS_CYCLES)
                .bits(),
        };
        c.ctx.write(&info, c.output)
    }

    /// `RHAX_IOCTL_VCPU_STATS`: a vCPU's counters (after an optional reset or switch) by VM
    /// and vCPU id, for observers that cannot open the exclusive vCPU device. The vCPU is
    /// lent as for its own stats IOCTLs: one inside RUN answers `VcpuInUse` (EBUSY).
    pub(super) fn vcpu_stats(&self, _serial: u64, c: Call<'_>) -> Res<usize> {
        let req: VcpuStatsRequest = c.ctx.read(c.input)?;
        // Checked before anything is looked up or changed.
        let refused = || {
            c.ctx
                .err(ErrorKind::Vcpu(crate::vcpu::haxm::HaxError::InvalidValue(
                    crate::vcpu::checked::Refused::ReservedBits,
                )))
        };
        let control = match req.op {
            _ if req.reserved != 0 => return Err(refused()),
            RHAX_STATS_OP_GET | RHAX_STATS_OP_RESET if req.flags == 0 && req.field_reason == 0 => {
                None
            }
            RHAX_STATS_OP_CONTROL => Some(StatsControl {
                flags: req.flags,
                field_reason: req.field_reason,
            }),
            _ => return Err(refused()),
        };
        let obj = self.vcpu_by_id(req.vm, req.vcpu, c.ctx)?;
        let mut lease = self.lease(&obj, c.ctx)?;
        let hax = lease.get();
        if let Some(control) = control {
            hax.set_stats_control(&control)
                .map_err(|e| c.ctx.err(ErrorKind::Vcpu(e)))?;
        } else if req.op == RHAX_STATS_OP_RESET {
            hax.reset_stats();
        }
        // Written record by record into the output (no 3312-byte copy on the stack).
        match hax.write_stats(c.output) {
            0 => Err(c.ctx.err(ErrorKind::OutputSize {
                expected: rhax_api::ext::VcpuStats::SIZE,
                got: c.output.len(),
            })),
            n => Ok(n),
        }
    }

    /// `RHAX_IOCTL_VCPU_FIELD_STATS`: a vCPU's per-field VMREAD/VMWRITE counts by VM and
    /// vCPU id (op GET only; the reason filter is set with `RHAX_IOCTL_VCPU_STATS`).
    pub(super) fn vcpu_field_stats(&self, _serial: u64, c: Call<'_>) -> Res<usize> {
        let req: VcpuStatsRequest = c.ctx.read(c.input)?;
        if req.op != RHAX_STATS_OP_GET
            || req.flags != 0
            || req.field_reason != 0
            || req.reserved != 0
        {
            return Err(c
                .ctx
                .err(ErrorKind::Vcpu(crate::vcpu::haxm::HaxError::InvalidValue(
                    crate::vcpu::checked::Refused::ReservedBits,
                ))));
        }
        let obj = self.vcpu_by_id(req.vm, req.vcpu, c.ctx)?;
        let mut lease = self.lease(&obj, c.ctx)?;
        match lease.get().write_field_stats(c.output) {
            0 => Err(c.ctx.err(ErrorKind::OutputSize {
                expected: rhax_api::ext::VcpuFieldStats::SIZE,
                got: c.output.len(),
            })),
            n => Ok(n),
        }
    }

    /// DESTROY_VM and VCPU_DESTROY: HAXM's Linux driver returns 0 (its unknown-IOCTL default),
    /// the others their "unknown IOCTL" error.
    pub(super) fn unimplemented_by_haxm(&self, ctx: Ctx) -> Res<usize> {
        if matches!(self.codes, Codes::Linux | Codes::LinuxI386) {
            Ok(0)
        } else {
            Err(ctx.err(ErrorKind::UnimplementedByHaxm))
        }
    }
}
