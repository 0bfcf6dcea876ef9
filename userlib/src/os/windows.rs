//! [`WindowsTransport`]: `\\.\HAX`, `\\.\hax_vmNN`, `\\.\hax_vmNN_vcpuMM` and
//! `DeviceIoControl`.
//!
//! Devices are opened as QEMU opens them (`hax-windows.c`): `GENERIC_READ | GENERIC_WRITE`,
//! no sharing (the VM and vCPU devices are exclusive anyway), `CREATE_ALWAYS`. Every IOCTL is
//! `METHOD_BUFFERED`; where HAXM reads request fields from an "output" IOCTL (GET_MSRS,
//! GET_CPUID, SET_MSRS) the same buffer is passed as input and output. The tunnel and the
//! IO buffer are mapped into the process by the driver (`MmMapLockedPagesSpecifyCache`,
//! `UserMode`), so SETUP_TUNNEL's addresses are used directly.

use core::ffi::c_void;
use core::ptr::{null, null_mut};

use rhax_api::Platform;
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{CreateFileW, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL};
use windows_sys::Win32::System::IO::DeviceIoControl;

use crate::error::OsError;
use crate::transport::{DevicePath, IoctlBuf, IoctlRequest, Transport};

/// The Windows transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowsTransport;

/// An open HAXM device handle; closed by [`Transport::close`].
#[derive(Debug)]
pub struct WinHandle(HANDLE);

impl WinHandle {
    /// The Win32 handle, for calls this library does not make (it stays owned by `self`).
    pub fn raw(&self) -> HANDLE {
        self.0
    }
}

// SAFETY: a kernel file handle is a process-wide value usable from any thread.
unsafe impl Send for WinHandle {}
// SAFETY: `DeviceIoControl` on one handle from several threads is allowed; the driver
// serialises what must be serialised.
unsafe impl Sync for WinHandle {}

fn last_error() -> OsError {
    // SAFETY: reads the calling thread's last-error value; no preconditions.
    OsError::Win32(unsafe { GetLastError() })
}

// SAFETY: the driver maps the tunnel page and the IO buffer into the calling process at
// VCPU_CREATE (`MmMapLockedPagesSpecifyCache(UserMode)`) and unmaps them only when the vCPU
// handle is closed (`haxm-abi.md` §1); SETUP_TUNNEL's addresses are passed on unchanged.
unsafe impl Transport for WindowsTransport {
    type Handle = WinHandle;

    fn platform(&self) -> Platform {
        Platform::Windows
    }

    fn open(&self, path: DevicePath) -> Result<WinHandle, OsError> {
        let name: Vec<u16> = path
            .windows()
            .to_string()
            .encode_utf16()
            .chain(core::iter::once(0))
            .collect();
        // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; no
        // security attributes and no template handle are passed (both may be null).
        let h = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                null(),
                CREATE_ALWAYS,
                FILE_ATTRIBUTE_NORMAL,
                null_mut(),
            )
        };
        if h == INVALID_HANDLE_VALUE || h.is_null() {
            return Err(last_error());
        }
        Ok(WinHandle(h))
    }

    fn ioctl(&self, handle: &WinHandle, req: IoctlRequest<'_>) -> Result<usize, OsError> {
        let (inp, in_len, out, out_len): (*const u8, usize, *mut u8, usize) = match req.buf {
            IoctlBuf::None => (null(), 0, null_mut(), 0),
            IoctlBuf::In(b) => (b.as_ptr(), b.len(), null_mut(), 0),
            IoctlBuf::Out(b) => (null(), 0, b.as_mut_ptr(), b.len()),
            IoctlBuf::InOut(b) => {
                let p = b.as_mut_ptr();
                (p.cast_const(), b.len(), p, b.len())
            }
        };
        let in_len = u32::try_from(in_len).map_err(|_| OsError::Unsupported)?;
        let out_len = u32::try_from(out_len).map_err(|_| OsError::Unsupported)?;
        let mut returned = 0u32;
        // SAFETY: `handle` is an open device; `inp`/`out` are null with a zero length or
        // point to buffers of the given lengths borrowed for the call (the same buffer for
        // in/out, as METHOD_BUFFERED allows); the call is synchronous (no OVERLAPPED).
        let ok = unsafe {
            DeviceIoControl(
                handle.0,
                req.code,
                inp.cast::<c_void>(),
                in_len,
                out.cast::<c_void>(),
                out_len,
                &mut returned,
                null_mut(),
            )
        };
        if ok == 0 {
            return Err(last_error());
        }
        Ok(returned as usize)
    }

    fn close(&self, handle: WinHandle) {
        // SAFETY: `handle` came from `CreateFileW` and is closed exactly once (moved in).
        // A failure cannot be acted upon.
        let _ = unsafe { CloseHandle(handle.0) };
    }
}
