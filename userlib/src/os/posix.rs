//! [`PosixTransport`]: `/dev/HAX`, `/dev/hax_vm/vmNN`, `/dev/hax_vmNN/vcpuMM` and `ioctl(2)`.
//!
//! Linux uses the Linux `_IOC` codes, macOS and NetBSD the BSD ones; both come from
//! [`rhax_api::Platform::HOST`]. The driver maps the tunnel and the IO buffer into the
//! process itself at VCPU_CREATE, so SETUP_TUNNEL's addresses are used as they are (QEMU
//! never calls `mmap` either, `haxm-clients.md` §1.2).

use std::ffi::c_void;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

use rhax_api::ioctl::ArgSize;
use rhax_api::Platform;

use crate::error::OsError;
use crate::transport::{DevicePath, IoctlBuf, IoctlRequest, Transport};

/// The IOCTL codes of this host.
const HOST: Platform = match Platform::HOST {
    Some(p) => p,
    // Unreachable: this module is compiled only for Linux, macOS and NetBSD.
    None => Platform::Linux,
};

/// The POSIX transport: opens HAXM's device nodes and sends `ioctl`s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PosixTransport;

fn io_error(e: &std::io::Error) -> OsError {
    e.raw_os_error()
        .map_or(OsError::Unsupported, OsError::Errno)
}

// SAFETY: HAXM and rhax map the tunnel page and the IO buffer into the calling process at
// VCPU_CREATE and keep them until the vCPU file is closed (`haxm-abi.md` §1, step 4-5); the
// addresses SETUP_TUNNEL returns are that mapping, passed on unchanged.
unsafe impl Transport for PosixTransport {
    type Handle = OwnedFd;

    fn platform(&self) -> Platform {
        HOST
    }

    fn open(&self, path: DevicePath) -> Result<OwnedFd, OsError> {
        // `O_RDWR | O_CLOEXEC`, as QEMU opens them (std sets `O_CLOEXEC` itself).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.posix().to_string())
            .map_err(|e| io_error(&e))?;
        Ok(file.into())
    }

    fn ioctl(&self, fd: &OwnedFd, req: IoctlRequest<'_>) -> Result<usize, OsError> {
        // The kernel copies as many bytes as the code encodes; never hand it less.
        let encoded = match req.def.posix.map(|p| p.size) {
            Some(ArgSize::Fixed(n)) => usize::from(n),
            Some(ArgSize::Pointer) | None => 0,
        };
        let pointer_arg = req.posix_arg_is_pointer();
        let mut scratch: Vec<u8>;
        let (ptr, out_len): (*mut u8, usize) = match req.buf {
            IoctlBuf::None => (core::ptr::null_mut(), 0),
            IoctlBuf::In(b) => {
                // A private copy: the kernel may copy back through an `_IOWR` argument even
                // where HAXM treats it as input only, and `b` is a shared borrow.
                scratch = b.to_vec();
                if scratch.len() < encoded {
                    scratch.resize(encoded, 0);
                }
                (scratch.as_mut_ptr(), 0)
            }
            IoctlBuf::Out(b) | IoctlBuf::InOut(b) => {
                if b.len() < encoded {
                    return Err(OsError::Unsupported);
                }
                (b.as_mut_ptr(), b.len())
            }
        };
        // SET_CPUID / GET_CPUID: the argument is the address of a `hax_cpuid *`.
        let mut indirect = ptr;
        let arg: *mut c_void = if pointer_arg {
            (&raw mut indirect).cast()
        } else {
            ptr.cast()
        };
        // SAFETY: `fd` is an open file; `arg` is null (for `_IO` codes, which take no data),
        // or points to a buffer of at least the size the code encodes that stays borrowed for
        // the call, or (CPUID) to a pointer to a buffer holding the whole `hax_cpuid` the
        // driver reads or writes (`8 + 40 * total` bytes, built by the library).
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req.code as _, arg) };
        match ret {
            0 => Ok(out_len),
            r if r > 0 => Err(OsError::Positive(r)),
            _ => Err(io_error(&std::io::Error::last_os_error())),
        }
    }

    fn close(&self, fd: OwnedFd) {
        drop(fd);
    }
}
