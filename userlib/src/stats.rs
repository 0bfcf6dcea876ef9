//! [`StatsHandle`]: a vCPU device opened only for its statistics (rhax extension), as an
//! observer such as `rhax-stat` opens it: no tunnel is set up, so the VMM that owns the vCPU
//! keeps its tunnel and IO buffer to itself.

use rhax_api::ext::{
    StatsControl, StatsFlags, VcpuStats, RHAX_EXIT_REASONS, RHAX_VCPU_IOCTL_GET_STATS,
    RHAX_VCPU_IOCTL_RESET_STATS, RHAX_VCPU_IOCTL_SET_STATS_CONTROL, RHAX_VCPU_STATS_VERSION,
};

use rhax_api::Pod;

use crate::error::{Error, Result};
use crate::transport::{Device, DevicePath, Transport};

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
        reserved: 0,
    };
    dev.send(
        &RHAX_VCPU_IOCTL_SET_STATS_CONTROL,
        control.as_bytes(),
        Error::SetStatsControl,
    )
}

/// The device of vCPU `vcpu` of VM `vm`, open for `RHAX_VCPU_IOCTL_GET_STATS` and
/// `RHAX_VCPU_IOCTL_RESET_STATS` only.
///
/// rhax lends a vCPU to one request at a time: while its owner is inside RUN, a stats request
/// fails with `EBUSY` (Windows: `ERROR_BUSY`), which an observer retries on its next sample.
pub struct StatsHandle<T: Transport> {
    dev: Device<T>,
    vm: u32,
    id: u32,
}

impl<T: Transport> StatsHandle<T> {
    /// Opens the device of an existing vCPU without setting up its tunnel.
    pub fn open(transport: T, vm: u32, id: u32) -> Result<Self> {
        let dev = Device::open(transport, DevicePath::Vcpu { vm, vcpu: id })?;
        Ok(Self { dev, vm, id })
    }

    /// The VM id.
    pub fn vm_id(&self) -> u32 {
        self.vm
    }

    /// The vCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `RHAX_VCPU_IOCTL_GET_STATS`: this vCPU's exit statistics, header checked.
    pub fn stats(&self) -> Result<VcpuStats> {
        get_stats(&self.dev)
    }

    /// `RHAX_VCPU_IOCTL_RESET_STATS`: zeroes this vCPU's counters.
    pub fn reset_stats(&self) -> Result<()> {
        reset_stats(&self.dev)
    }

    /// `RHAX_VCPU_IOCTL_SET_STATS_CONTROL`: switches counting on or off at run time.
    pub fn set_counting(&self, on: bool) -> Result<()> {
        set_counting(&self.dev, on)
    }
}
