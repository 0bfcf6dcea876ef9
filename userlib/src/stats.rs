//! rhax's statistics extension IOCTLs: on a vCPU device (its owner's [`crate::Vcpu`]) and,
//! for observers such as `rhax-stat`, on the system device by VM and vCPU id
//! ([`crate::System::vcpu_stats`]): VM and vCPU devices are exclusive, so an observer cannot
//! open the vCPU device its VMM holds.

use rhax_api::ext::{
    StatsControl, StatsFlags, VcpuFieldStats, VcpuStats, VcpuStatsRequest, RHAX_EXIT_REASONS,
    RHAX_FIELD_STATS_MAX, RHAX_FIELD_STATS_VERSION, RHAX_IOCTL_VCPU_FIELD_STATS,
    RHAX_IOCTL_VCPU_STATS, RHAX_STATS_OP_GET, RHAX_VCPU_IOCTL_GET_STATS,
    RHAX_VCPU_IOCTL_RESET_STATS, RHAX_VCPU_IOCTL_SET_STATS_CONTROL, RHAX_VCPU_STATS_VERSION,
};

use rhax_api::Pod;

use crate::error::{Error, Result};
use crate::transport::{Device, IoctlBuf, Transport};

/// Checks the header of a `RHAX_VCPU_IOCTL_GET_STATS` reply: a record whose version, size or
/// number of reasons is not the one this library knows is refused as [`Error::Malformed`].
pub(crate) fn checked_stats(s: VcpuStats) -> Result<VcpuStats> {
    let malformed = |field, value| Error::Malformed {
        ioctl: RHAX_VCPU_IOCTL_GET_STATS.name,
        field,
        value,
    };
    if s.version != RHAX_VCPU_STATS_VERSION {
        return Err(malformed("version", s.version.into()));
    }
    if s.size as usize != VcpuStats::SIZE {
        return Err(malformed("size", s.size.into()));
    }
    if s.nr_reasons as usize != RHAX_EXIT_REASONS {
        return Err(malformed("nr_reasons", s.nr_reasons.into()));
    }
    Ok(s)
}

pub(crate) fn get_stats<T: Transport>(dev: &Device<T>) -> Result<VcpuStats> {
    checked_stats(dev.fetch(&RHAX_VCPU_IOCTL_GET_STATS, Error::GetStats)?)
}

pub(crate) fn reset_stats<T: Transport>(dev: &Device<T>) -> Result<()> {
    dev.send(&RHAX_VCPU_IOCTL_RESET_STATS, &[], Error::ResetStats)
}

pub(crate) fn set_counting<T: Transport>(dev: &Device<T>, on: bool) -> Result<()> {
    let control = StatsControl {
        flags: if on { StatsFlags::COUNTING.bits() } else { 0 },
        field_reason: 0,
    };
    dev.send(
        &RHAX_VCPU_IOCTL_SET_STATS_CONTROL,
        control.as_bytes(),
        Error::SetStatsControl,
    )
}

/// `RHAX_IOCTL_VCPU_STATS` on the system device: the request in the buffer's first 24 bytes,
/// the vCPU's statistics back in the whole buffer (header checked).
pub(crate) fn by_id<T: Transport>(
    dev: &Device<T>,
    vm: u32,
    vcpu: u32,
    op: u32,
    flags: u32,
    field_reason: u32,
) -> Result<VcpuStats> {
    let mut s = VcpuStats::new();
    let req = VcpuStatsRequest {
        vm,
        vcpu,
        op,
        flags,
        field_reason,
        reserved: 0,
    };
    if let Some(head) = s.as_bytes_mut().get_mut(..VcpuStatsRequest::SIZE) {
        head.copy_from_slice(req.as_bytes());
    }
    dev.call(
        &RHAX_IOCTL_VCPU_STATS,
        IoctlBuf::InOut(s.as_bytes_mut()),
        Error::VcpuStats,
        VcpuStats::SIZE,
    )?;
    checked_stats(s)
}

/// `RHAX_IOCTL_VCPU_FIELD_STATS` on the system device (version checked).
pub(crate) fn fields_by_id<T: Transport>(
    dev: &Device<T>,
    vm: u32,
    vcpu: u32,
) -> Result<VcpuFieldStats> {
    let mut f = VcpuFieldStats::default();
    let req = VcpuStatsRequest {
        vm,
        vcpu,
        op: RHAX_STATS_OP_GET,
        flags: 0,
        field_reason: 0,
        reserved: 0,
    };
    if let Some(head) = f.as_bytes_mut().get_mut(..VcpuStatsRequest::SIZE) {
        head.copy_from_slice(req.as_bytes());
    }
    dev.call(
        &RHAX_IOCTL_VCPU_FIELD_STATS,
        IoctlBuf::InOut(f.as_bytes_mut()),
        Error::VcpuStats,
        VcpuFieldStats::SIZE,
    )?;
    if f.version != RHAX_FIELD_STATS_VERSION {
        return Err(Error::Malformed {
            ioctl: RHAX_IOCTL_VCPU_FIELD_STATS.name,
            field: "version",
            value: f.version.into(),
        });
    }
    if f.nr as usize > RHAX_FIELD_STATS_MAX {
        return Err(Error::Malformed {
            ioctl: RHAX_IOCTL_VCPU_FIELD_STATS.name,
            field: "nr",
            value: f.nr.into(),
        });
    }
    Ok(f)
}
