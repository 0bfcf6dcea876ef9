//! [`StatsSource`]: where a vCPU's counters come from. The real ones are userlib's
//! [`rhax::StatsHandle`] (an observer's open of the vCPU device) and [`rhax::Vcpu`] (the
//! owner's); the tests use a fake.

use rhax::{Error, OsError, StatsHandle, Transport, Vcpu};
use rhax_api::ext::VcpuStats;

/// `EBUSY` on Linux, macOS and NetBSD.
const EBUSY: i32 = 16;
/// `ERROR_BUSY` (Win32).
const ERROR_BUSY: u32 = 170;

/// One vCPU's statistics, by whatever transport.
pub trait StatsSource {
    /// The error of a request.
    type Error: core::fmt::Display;

    /// `(vm, vcpu)` ids.
    fn ids(&self) -> (u32, u32);

    /// The counters now.
    fn stats(&self) -> Result<VcpuStats, Self::Error>;

    /// Zeroes the counters.
    fn reset(&self) -> Result<(), Self::Error>;

    /// Whether `e` only means "the vCPU is inside RUN now, ask again later" (rhax lends a vCPU
    /// to one request at a time).
    fn is_busy(e: &Self::Error) -> bool;
}

fn busy(e: &Error) -> bool {
    matches!(
        e.os_error(),
        Some(OsError::Errno(EBUSY)) | Some(OsError::Win32(ERROR_BUSY))
    )
}

impl<T: Transport> StatsSource for StatsHandle<T> {
    type Error = Error;

    fn ids(&self) -> (u32, u32) {
        (self.vm_id(), self.id())
    }

    fn stats(&self) -> Result<VcpuStats, Error> {
        StatsHandle::stats(self)
    }

    fn reset(&self) -> Result<(), Error> {
        self.reset_stats()
    }

    fn is_busy(e: &Error) -> bool {
        busy(e)
    }
}

impl<T: Transport> StatsSource for Vcpu<T> {
    type Error = Error;

    fn ids(&self) -> (u32, u32) {
        (self.vm_id(), self.id())
    }

    fn stats(&self) -> Result<VcpuStats, Error> {
        Vcpu::stats(self)
    }

    fn reset(&self) -> Result<(), Error> {
        self.reset_stats()
    }

    fn is_busy(e: &Error) -> bool {
        busy(e)
    }
}
