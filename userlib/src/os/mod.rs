//! The OS transports: POSIX `ioctl` and Windows `DeviceIoControl`.

#[cfg(any(target_os = "linux", target_os = "macos", target_os = "netbsd"))]
pub(crate) mod posix;
#[cfg(windows)]
pub(crate) mod windows;
