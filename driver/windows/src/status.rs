//! How every IRP the shell handles is completed: the one mapping from a result to
//! `IoStatus.Status` and `IoStatus.Information` (`haxm-abi.md` §2 "Per-IOCTL semantics and
//! errors": HAXM's statuses come from the core's [`DispatchError::nt_status`]; the shell's
//! own failures are listed in [`ShellError`]).

use rhax_core::dispatch::{nt, DispatchError};

/// `STATUS_INSUFFICIENT_RESOURCES` (Win32 1450, `ERROR_NO_SYSTEM_RESOURCES`).
pub const STATUS_INSUFFICIENT_RESOURCES: u32 = 0xC000_009A;
/// `STATUS_DEVICE_NOT_READY` (Win32 21).
pub const STATUS_DEVICE_NOT_READY: u32 = 0xC000_00A3;

/// Failures of the shell itself (not of a request the core judged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShellError {
    /// No pool for the per-open record or a request's input copy.
    OutOfMemory,
    /// A name below a device (`\\.\HAX\x`): HAXM's devices have no namespace.
    NameBelowDevice,
    /// A file object the shell did not open, or whose handle was already closed.
    NotOurFile,
    /// METHOD_BUFFERED lengths without a system buffer (the I/O manager never does this).
    NoSystemBuffer,
    /// CREATE_VM or VCPU_CREATE succeeded in the core, but the new object's device (or its
    /// link, or its security descriptor) could not be made: the client could never open it,
    /// so the request is reported as HAXM reports a failed creation.
    DeviceNotCreated,
    /// The shell is not (or no longer) there: an IRP outside DriverEntry..DriverUnload.
    NotReady,
}

/// Why an IRP failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The core refused the request: HAXM's status.
    Core(DispatchError),
    /// The shell could not serve it.
    Shell(ShellError),
}

impl From<DispatchError> for Failure {
    fn from(e: DispatchError) -> Failure {
        Failure::Core(e)
    }
}

impl From<ShellError> for Failure {
    fn from(e: ShellError) -> Failure {
        Failure::Shell(e)
    }
}

/// `IoStatus.Status` (as the NTSTATUS bit pattern) and `IoStatus.Information` for a result.
///
/// Success: `STATUS_SUCCESS` and the bytes written (HAXM's "Info"), never more than the
/// output buffer holds (`output_len`): the I/O manager copies `Information` bytes of the
/// system buffer back to the caller. Failure: `Information` 0, as HAXM (nothing is copied
/// back for an error status; for `STATUS_DEVICE_BUSY`, a warning, the I/O manager would copy
/// `Information` bytes, so it must be 0 there too).
pub fn completion(result: Result<usize, Failure>, output_len: usize) -> (u32, usize) {
    match result {
        Ok(n) => (nt::STATUS_SUCCESS, n.min(output_len)),
        Err(Failure::Core(e)) => (e.nt_status(), 0),
        Err(Failure::Shell(e)) => (
            match e {
                ShellError::OutOfMemory => STATUS_INSUFFICIENT_RESOURCES,
                ShellError::NameBelowDevice => nt::STATUS_OBJECT_NAME_NOT_FOUND,
                ShellError::NotOurFile => nt::STATUS_INVALID_HANDLE,
                ShellError::NoSystemBuffer => nt::STATUS_INVALID_PARAMETER,
                ShellError::DeviceNotCreated => nt::STATUS_UNSUCCESSFUL,
                ShellError::NotReady => STATUS_DEVICE_NOT_READY,
            },
            0,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhax_api::ioctl;
    use rhax_api::{Platform as Codes, Scope};
    use rhax_core::dispatch::ErrorKind;

    #[test]
    fn success_reports_bytes_written_bounded_by_the_output() {
        assert_eq!(completion(Ok(8), 8), (0, 8));
        assert_eq!(completion(Ok(0), 0), (0, 0));
        assert_eq!(completion(Ok(16), 4), (0, 4));
    }

    #[test]
    fn shell_errors_have_their_statuses_and_no_information() {
        let cases = [
            (ShellError::OutOfMemory, 0xC000_009A),
            (ShellError::NameBelowDevice, 0xC000_0034),
            (ShellError::NotOurFile, 0xC000_0008),
            (ShellError::NoSystemBuffer, 0xC000_000D),
            (ShellError::DeviceNotCreated, 0xC000_0001),
            (ShellError::NotReady, 0xC000_00A3),
        ];
        for (e, status) in cases {
            assert_eq!(completion(Err(e.into()), 512), (status, 0), "{e:?}");
        }
    }

    #[test]
    fn core_errors_keep_haxms_status() {
        let err =
            |kind, def, scope| DispatchError::new(kind, Some(def), Some(scope), Codes::Windows);
        // VERSION with a short output: INVALID_PARAMETER; CREATE_VM short: BUFFER_TOO_SMALL;
        // CREATE_VM without VT-x: UNSUCCESSFUL; an unknown code on the control device:
        // INVALID_DEVICE_REQUEST, on a VM device: INVALID_PARAMETER (haxm-abi.md section 2).
        let short = ErrorKind::OutputSize {
            expected: 8,
            got: 4,
        };
        let cases = [
            (
                err(short, &ioctl::HAX_IOCTL_VERSION, Scope::System),
                0xC000_000D,
            ),
            (
                err(short, &ioctl::HAX_IOCTL_CREATE_VM, Scope::System),
                0xC000_0023,
            ),
            (
                err(
                    ErrorKind::NotWorking,
                    &ioctl::HAX_IOCTL_CREATE_VM,
                    Scope::System,
                ),
                0xC000_0001,
            ),
            (
                DispatchError::new(
                    ErrorKind::UnknownIoctl { code: 0x222000 },
                    None,
                    Some(Scope::System),
                    Codes::Windows,
                ),
                0xC000_0010,
            ),
            (
                DispatchError::new(
                    ErrorKind::UnknownIoctl { code: 0x222000 },
                    None,
                    Some(Scope::Vm),
                    Codes::Windows,
                ),
                0xC000_000D,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.nt_status(), status, "{e:?}");
            assert_eq!(completion(Err(e.into()), 16), (status, 0), "{e:?}");
        }
    }

    #[test]
    fn a_device_busy_warning_copies_nothing_back() {
        let e = DispatchError::new(
            ErrorKind::VcpuInUse,
            Some(&ioctl::HAX_VCPU_IOCTL_RUN),
            Some(Scope::Vcpu),
            Codes::Windows,
        );
        assert_eq!(completion(Err(e.into()), 512), (0x8000_0011, 0));
    }
}
