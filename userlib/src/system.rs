//! [`System`]: the control device (`\\.\HAX`, `/dev/HAX`).

use rhax_api::ext::{
    RhaxExtInfo, StatsFlags, VcpuFieldStats, VcpuStats, RHAX_IOCTL_EXT_INFO, RHAX_STATS_OP_CONTROL,
    RHAX_STATS_OP_GET, RHAX_STATS_OP_RESET,
};
use rhax_api::ioctl::{
    HAX_IOCTL_CAPABILITY, HAX_IOCTL_CREATE_VM, HAX_IOCTL_SET_MEMLIMIT, HAX_IOCTL_VERSION,
};
use rhax_api::{CapabilityInfo, ModuleVersion, Pod, SetMemlimit, HAX_MAX_VMS};

use crate::error::{Error, Result};
use crate::transport::{Device, DevicePath, IoctlBuf, Transport};
use crate::vm::Vm;

/// The HAXM API version this library speaks: QEMU's `hax_cur_version` and
/// `hax_min_version` (both 4; `haxm-clients.md` §1.1), also what it sends in
/// `NOTIFY_QEMU_VERSION`.
pub const CLIENT_API_VERSION: u32 = 4;

/// The open control device.
pub struct System<T: Transport> {
    dev: Device<T>,
}

impl<T: Transport> System<T> {
    /// Opens the control device.
    pub fn open(transport: T) -> Result<Self> {
        Ok(Self {
            dev: Device::open(transport, DevicePath::System)?,
        })
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.dev.transport
    }

    /// `HAX_IOCTL_VERSION`.
    pub fn version(&self) -> Result<ModuleVersion> {
        self.dev.fetch(&HAX_IOCTL_VERSION, Error::Version)
    }

    /// `HAX_IOCTL_VERSION`, accepted by QEMU's rule: `cur_version >= 4` and
    /// `compat_version <= 4`, else [`Error::VersionUnsupported`].
    pub fn check_version(&self) -> Result<ModuleVersion> {
        let v = self.version()?;
        if v.cur_version >= CLIENT_API_VERSION && v.compat_version <= CLIENT_API_VERSION {
            Ok(v)
        } else {
            Err(Error::VersionUnsupported {
                compat_version: v.compat_version,
                cur_version: v.cur_version,
            })
        }
    }

    /// `HAX_IOCTL_CAPABILITY`. The answer is returned as is; see
    /// [`System::working_capability`] for the check QEMU makes.
    pub fn capability(&self) -> Result<CapabilityInfo> {
        self.dev.fetch(&HAX_IOCTL_CAPABILITY, Error::Capability)
    }

    /// `HAX_IOCTL_CAPABILITY`, failing with [`Error::NotWorking`] if the driver reports it
    /// cannot run VMs (`wstatus` bit 0 clear).
    pub fn working_capability(&self) -> Result<CapabilityInfo> {
        let c = self.capability()?;
        if c.is_working() {
            Ok(c)
        } else {
            Err(Error::NotWorking { failure: c.winfo })
        }
    }

    /// `HAX_IOCTL_SET_MEMLIMIT`: `Some(mb)` sets the reported quota to `mb` MiB, `None`
    /// disables the quota report. HAXM fails it once a VM exists.
    pub fn set_memlimit(&self, limit_mb: Option<u64>) -> Result<()> {
        let arg = SetMemlimit {
            enable_memlimit: u8::from(limit_mb.is_some()),
            pad: [0; 7],
            memory_limit: limit_mb.unwrap_or(0),
        };
        self.dev
            .send(&HAX_IOCTL_SET_MEMLIMIT, arg.as_bytes(), Error::SetMemlimit)
    }

    /// `HAX_IOCTL_CREATE_VM`, then opens the new VM's device.
    ///
    /// A VM id of [`HAX_MAX_VMS`] or more cannot be HAXM's and is refused as
    /// [`Error::Malformed`]. If opening fails the VM stays allocated in the driver (HAXM has
    /// no working destroy IOCTL), exactly as for QEMU.
    pub fn create_vm(&self) -> Result<Vm<T>> {
        let mut id = 0u32;
        self.dev.call(
            &HAX_IOCTL_CREATE_VM,
            IoctlBuf::Out(id.as_bytes_mut()),
            Error::CreateVm,
            4,
        )?;
        if id >= HAX_MAX_VMS {
            return Err(Error::Malformed {
                ioctl: HAX_IOCTL_CREATE_VM.name,
                field: "vm_id",
                value: id.into(),
            });
        }
        Vm::open(self.dev.transport.clone(), id)
    }

    /// `RHAX_IOCTL_EXT_INFO`: whether this is an rhax driver and which extensions it has. A
    /// HAXM driver fails the IOCTL ([`Error::ExtInfo`]); a wrong magic gives
    /// [`Error::NotRhax`].
    pub fn ext_info(&self) -> Result<RhaxExtInfo> {
        let info: RhaxExtInfo = self.dev.fetch(&RHAX_IOCTL_EXT_INFO, Error::ExtInfo)?;
        if info.is_rhax() {
            Ok(info)
        } else {
            Err(Error::NotRhax { magic: info.magic })
        }
    }

    /// `RHAX_IOCTL_VCPU_STATS` (rhax only): the statistics of vCPU `vcpu` of VM `vm`, which
    /// another process may hold (VM and vCPU devices are exclusive, the system device is
    /// not). A vCPU inside RUN answers `EBUSY` / `ERROR_BUSY`; no such VM or vCPU `ENOENT` /
    /// `ERROR_FILE_NOT_FOUND`.
    pub fn vcpu_stats(&self, vm: u32, vcpu: u32) -> Result<VcpuStats> {
        crate::stats::by_id(&self.dev, vm, vcpu, RHAX_STATS_OP_GET, 0, 0)
    }

    /// `RHAX_IOCTL_VCPU_STATS` with a reset: zeroes vCPU `vcpu` of VM `vm`'s counters and
    /// returns them.
    pub fn reset_vcpu_stats(&self, vm: u32, vcpu: u32) -> Result<VcpuStats> {
        crate::stats::by_id(&self.dev, vm, vcpu, RHAX_STATS_OP_RESET, 0, 0)
    }

    /// `RHAX_IOCTL_VCPU_STATS` with a switch: counting on or off for vCPU `vcpu` of VM `vm`
    /// (and per-field counts off).
    pub fn set_vcpu_counting(&self, vm: u32, vcpu: u32, on: bool) -> Result<VcpuStats> {
        let flags = if on {
            StatsFlags::COUNTING
        } else {
            StatsFlags::empty()
        };
        self.set_vcpu_stats_control(vm, vcpu, flags, 0)
    }

    /// `RHAX_IOCTL_VCPU_STATS` with a switch: `flags` ([`StatsFlags`]: counting, per-field
    /// counts for every reason or for basic reason `field_reason`).
    pub fn set_vcpu_stats_control(
        &self,
        vm: u32,
        vcpu: u32,
        flags: StatsFlags,
        field_reason: u32,
    ) -> Result<VcpuStats> {
        crate::stats::by_id(
            &self.dev,
            vm,
            vcpu,
            RHAX_STATS_OP_CONTROL,
            flags.bits(),
            field_reason,
        )
    }

    /// `RHAX_IOCTL_VCPU_FIELD_STATS` (rhax only): vCPU `vcpu` of VM `vm`'s per-field
    /// VMREAD/VMWRITE counts.
    pub fn vcpu_field_stats(&self, vm: u32, vcpu: u32) -> Result<VcpuFieldStats> {
        crate::stats::fields_by_id(&self.dev, vm, vcpu)
    }
}
