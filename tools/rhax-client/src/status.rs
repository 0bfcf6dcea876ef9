//! NTSTATUS and Win32 error codes: what a driver completes an IRP with, and what
//! `DeviceIoControl`/`CreateFileW` report through `GetLastError` after the system converts it
//! with `RtlNtStatusToDosError`.
//!
//! The mapping is the documented one (Microsoft KB 113996, "Mapping NT Status Error Codes to
//! Win32 Error Codes"; Wine implements the same table in `dlls/ntdll/error.c`). Only the
//! statuses a HAXM-compatible driver or the object manager returns on the paths the clients
//! exercise are listed; an unlisted status has no expectation ([`win32_from_nt`] is `None`)
//! and a check that needs one fails rather than guesses.

/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: u32 = 0x0000_0000;
/// `STATUS_DEVICE_BUSY` (a warning: `NT_SUCCESS` is false).
pub const STATUS_DEVICE_BUSY: u32 = 0x8000_0011;
/// `STATUS_UNSUCCESSFUL`.
pub const STATUS_UNSUCCESSFUL: u32 = 0xC000_0001;
/// `STATUS_NOT_IMPLEMENTED`.
pub const STATUS_NOT_IMPLEMENTED: u32 = 0xC000_0002;
/// `STATUS_INVALID_HANDLE`.
pub const STATUS_INVALID_HANDLE: u32 = 0xC000_0008;
/// `STATUS_INVALID_PARAMETER`.
pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;
/// `STATUS_INVALID_DEVICE_REQUEST`.
pub const STATUS_INVALID_DEVICE_REQUEST: u32 = 0xC000_0010;
/// `STATUS_ACCESS_DENIED`.
pub const STATUS_ACCESS_DENIED: u32 = 0xC000_0022;
/// `STATUS_BUFFER_TOO_SMALL`.
pub const STATUS_BUFFER_TOO_SMALL: u32 = 0xC000_0023;
/// `STATUS_OBJECT_TYPE_MISMATCH`.
pub const STATUS_OBJECT_TYPE_MISMATCH: u32 = 0xC000_0024;
/// `STATUS_OBJECT_NAME_NOT_FOUND`: no device (symbolic link) with that name.
pub const STATUS_OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
/// `STATUS_SHARING_VIOLATION`.
pub const STATUS_SHARING_VIOLATION: u32 = 0xC000_0043;

/// `ERROR_INVALID_FUNCTION`.
pub const ERROR_INVALID_FUNCTION: u32 = 1;
/// `ERROR_FILE_NOT_FOUND`.
pub const ERROR_FILE_NOT_FOUND: u32 = 2;
/// `ERROR_ACCESS_DENIED`.
pub const ERROR_ACCESS_DENIED: u32 = 5;
/// `ERROR_INVALID_HANDLE`.
pub const ERROR_INVALID_HANDLE: u32 = 6;
/// `ERROR_GEN_FAILURE`.
pub const ERROR_GEN_FAILURE: u32 = 31;
/// `ERROR_SHARING_VIOLATION`.
pub const ERROR_SHARING_VIOLATION: u32 = 32;
/// `ERROR_INVALID_PARAMETER`.
pub const ERROR_INVALID_PARAMETER: u32 = 87;
/// `ERROR_INSUFFICIENT_BUFFER`.
pub const ERROR_INSUFFICIENT_BUFFER: u32 = 122;
/// `ERROR_BUSY`.
pub const ERROR_BUSY: u32 = 170;

/// `(NTSTATUS, Win32 error, NTSTATUS name)`, KB 113996's rows for the statuses above.
const TABLE: &[(u32, u32, &str)] = &[
    (STATUS_SUCCESS, 0, "STATUS_SUCCESS"),
    (STATUS_DEVICE_BUSY, ERROR_BUSY, "STATUS_DEVICE_BUSY"),
    (
        STATUS_UNSUCCESSFUL,
        ERROR_GEN_FAILURE,
        "STATUS_UNSUCCESSFUL",
    ),
    (
        STATUS_NOT_IMPLEMENTED,
        ERROR_INVALID_FUNCTION,
        "STATUS_NOT_IMPLEMENTED",
    ),
    (
        STATUS_INVALID_HANDLE,
        ERROR_INVALID_HANDLE,
        "STATUS_INVALID_HANDLE",
    ),
    (
        STATUS_INVALID_PARAMETER,
        ERROR_INVALID_PARAMETER,
        "STATUS_INVALID_PARAMETER",
    ),
    (
        STATUS_INVALID_DEVICE_REQUEST,
        ERROR_INVALID_FUNCTION,
        "STATUS_INVALID_DEVICE_REQUEST",
    ),
    (
        STATUS_ACCESS_DENIED,
        ERROR_ACCESS_DENIED,
        "STATUS_ACCESS_DENIED",
    ),
    (
        STATUS_BUFFER_TOO_SMALL,
        ERROR_INSUFFICIENT_BUFFER,
        "STATUS_BUFFER_TOO_SMALL",
    ),
    (
        STATUS_OBJECT_TYPE_MISMATCH,
        ERROR_INVALID_HANDLE,
        "STATUS_OBJECT_TYPE_MISMATCH",
    ),
    (
        STATUS_OBJECT_NAME_NOT_FOUND,
        ERROR_FILE_NOT_FOUND,
        "STATUS_OBJECT_NAME_NOT_FOUND",
    ),
    (
        STATUS_SHARING_VIOLATION,
        ERROR_SHARING_VIOLATION,
        "STATUS_SHARING_VIOLATION",
    ),
];

/// The Win32 error `RtlNtStatusToDosError` gives for `status`, if this table knows it.
pub fn win32_from_nt(status: u32) -> Option<u32> {
    TABLE.iter().find(|r| r.0 == status).map(|r| r.1)
}

/// The `STATUS_*` name of `status`, or `"NTSTATUS"` when unknown here.
pub fn nt_name(status: u32) -> &'static str {
    TABLE
        .iter()
        .find(|r| r.0 == status)
        .map_or("NTSTATUS", |r| r.2)
}

/// The `ERROR_*` name of a Win32 error code, or `"?"` when unknown here.
pub fn win32_name(error: u32) -> &'static str {
    if error == 0 {
        return "ERROR_SUCCESS";
    }
    rhax::win32_name(error).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_the_core_returns_has_a_win32_error() {
        use rhax_core::dispatch::nt;
        // The Win32 numbers rhax-core's comments give next to each status (`dispatch/error.rs`),
        // checked against this table: two independent writings of the same documented rows.
        let core = [
            (nt::STATUS_SUCCESS, 0),
            (nt::STATUS_UNSUCCESSFUL, 31),
            (nt::STATUS_NOT_IMPLEMENTED, 1),
            (nt::STATUS_INVALID_HANDLE, 6),
            (nt::STATUS_INVALID_PARAMETER, 87),
            (nt::STATUS_INVALID_DEVICE_REQUEST, 1),
            (nt::STATUS_ACCESS_DENIED, 5),
            (nt::STATUS_BUFFER_TOO_SMALL, 122),
            (nt::STATUS_DEVICE_BUSY, 170),
            (nt::STATUS_OBJECT_NAME_NOT_FOUND, 2),
        ];
        for (status, win32) in core {
            assert_eq!(win32_from_nt(status), Some(win32), "{status:#x}");
            assert_ne!(nt_name(status), "NTSTATUS");
            assert_ne!(win32_name(win32), "?");
        }
        assert_eq!(win32_from_nt(0xC000_9999), None);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.0, b.0);
                assert_ne!(a.2, b.2);
            }
        }
    }
}
