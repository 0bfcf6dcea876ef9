//! Results to what a Linux file operation returns: `0` (or a count) for success, a negative
//! errno for failure. The core picks the errno ([`DispatchError::errno`], HAXM's Linux
//! numbers); the shell adds the few of its own edge (bad user pointer, no memory for the
//! request's buffer, a command of another driver).

use rhax_core::dispatch::DispatchError;

/// `EFAULT`: a user pointer could not be read or written (copy_from_user/copy_to_user).
pub const EFAULT: i32 = 14;
/// `ENOMEM`.
pub const ENOMEM: i32 = 12;
/// `ENOTTY`: not one of our commands (what the VFS answers for an unknown ioctl).
pub const ENOTTY: i32 = 25;
/// `ENODEV`: no such device (the module is loading or unloading, a node of a dead object).
pub const ENODEV: i32 = 19;
/// `EBUSY`.
pub const EBUSY: i32 = 16;

/// The value an `unlocked_ioctl` returns for a dispatch result: 0 on success (HAXM's Linux
/// port returns 0, never the byte count), `-errno` on failure.
pub fn ioctl_return(r: &Result<usize, DispatchError>) -> i64 {
    match r {
        Ok(_) => 0,
        Err(e) => -i64::from(positive(e.errno())),
    }
}

/// A positive errno from the core's answer (an out-of-range value would make the VFS treat
/// the return as a success or a pointer: mapped to EINVAL).
pub fn positive(errno: i32) -> i32 {
    if (1..4096).contains(&errno) {
        errno
    } else {
        22 // EINVAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_range() {
        assert_eq!(positive(16), 16);
        assert_eq!(positive(0), 22);
        assert_eq!(positive(-5), 22);
        assert_eq!(positive(4096), 22);
    }
}
