//! [`StatsSource`]: where a vCPU's counters come from. The real ones are [`Observed`] (an
//! observer's view through the system device, `RHAX_IOCTL_VCPU_STATS`: the vCPU device
//! belongs to its VMM) and userlib's [`rhax::Vcpu`] (the owner's); the tests use a fake.

use rhax::{Error, OsError, System, Transport, Vcpu};
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

/// Whether `e` says "no such VM or vCPU" (`ENOENT`; Windows `ERROR_FILE_NOT_FOUND`).
pub fn is_absent(e: &Error) -> bool {
    matches!(
        e.os_error(),
        Some(OsError::Errno(ENOENT)) | Some(OsError::Win32(ERROR_FILE_NOT_FOUND))
    )
}

/// `ENOENT`.
const ENOENT: i32 = 2;
/// `ERROR_FILE_NOT_FOUND` (Win32; what `STATUS_OBJECT_NAME_NOT_FOUND` becomes).
const ERROR_FILE_NOT_FOUND: u32 = 2;

fn busy(e: &Error) -> bool {
    matches!(
        e.os_error(),
        Some(OsError::Errno(EBUSY)) | Some(OsError::Win32(ERROR_BUSY))
    )
}

/// vCPU `vcpu` of VM `vm`, observed through the system device.
pub struct Observed<'a, T: Transport> {
    sys: &'a System<T>,
    vm: u32,
    vcpu: u32,
}

impl<'a, T: Transport> Observed<'a, T> {
    /// Observes vCPU `vcpu` of VM `vm` through `sys` (no request is sent yet).
    pub fn new(sys: &'a System<T>, vm: u32, vcpu: u32) -> Self {
        Self { sys, vm, vcpu }
    }

    /// Sets the vCPU's counting switches ([`rhax_api::ext::StatsFlags::COUNTING`], and
    /// `CYCLES` for host cycles per exit); per-field counts off.
    pub fn set_counting(&self, flags: rhax_api::ext::StatsFlags) -> Result<(), Error> {
        self.sys
            .set_vcpu_stats_control(self.vm, self.vcpu, flags, 0)
            .map(drop)
    }

    /// Counting on, per-field counts kept only for exits with basic reason `reason` (`None`:
    /// every reason).
    pub fn set_field_reason(&self, reason: Option<u16>) -> Result<(), Error> {
        use rhax_api::ext::StatsFlags;
        let (flags, r) = match reason {
            Some(r) => (
                StatsFlags::COUNTING | StatsFlags::FIELD_REASON,
                u32::from(r),
            ),
            None => (StatsFlags::COUNTING | StatsFlags::ALL_FIELDS, 0),
        };
        self.sys
            .set_vcpu_stats_control(self.vm, self.vcpu, flags, r)
            .map(drop)
    }

    /// The per-field counts.
    pub fn field_stats(&self) -> Result<rhax_api::ext::VcpuFieldStats, Error> {
        self.sys.vcpu_field_stats(self.vm, self.vcpu)
    }
}

impl<T: Transport> StatsSource for Observed<'_, T> {
    type Error = Error;

    fn ids(&self) -> (u32, u32) {
        (self.vm, self.vcpu)
    }

    fn stats(&self) -> Result<VcpuStats, Error> {
        self.sys.vcpu_stats(self.vm, self.vcpu)
    }

    fn reset(&self) -> Result<(), Error> {
        self.sys.reset_vcpu_stats(self.vm, self.vcpu).map(drop)
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
