//! The [`Transport`] trait: how an IOCTL reaches a HAXM-compatible driver.
//!
//! The library builds every request (which device, which IOCTL, which bytes) and checks
//! every reply; a transport only moves bytes. Three kinds exist:
//!
//! * [`WindowsTransport`](crate::WindowsTransport) (`cfg(windows)`): `CreateFileW` +
//!   `DeviceIoControl`;
//! * [`PosixTransport`](crate::PosixTransport) (`cfg(unix)`): `open` + `ioctl` on Linux,
//!   macOS and NetBSD;
//! * in-kernel transports, which call the driver's dispatcher directly (the bare-metal test
//!   kernel calls rhax-core's). They need neither `std` nor `alloc`.
//!
//! # Writing an in-kernel transport
//!
//! ```
//! use rhax::{DevicePath, IoctlBuf, IoctlRequest, OsError, Transport};
//! use rhax_api::Platform;
//!
//! /// The dispatcher's view of an open device (a VM or vCPU object, say).
//! #[derive(Clone, Copy)]
//! struct Kernel;
//!
//! // SAFETY: the dispatcher answers SETUP_TUNNEL with the addresses of a tunnel page and an
//! // IO buffer it allocated in this address space and keeps until the vCPU is closed.
//! unsafe impl Transport for Kernel {
//!     type Handle = DevicePath;
//!
//!     fn platform(&self) -> Platform {
//!         // Use the codes of the shell being tested; the dispatcher looks them up with
//!         // `IoctlDef::lookup(platform, scope, code)`.
//!         Platform::Windows
//!     }
//!
//!     fn open(&self, path: DevicePath) -> Result<DevicePath, OsError> {
//!         Ok(path) // a real one finds the VM/vCPU object, or fails with Errno(ENOENT)
//!     }
//!
//!     fn ioctl(&self, handle: &DevicePath, req: IoctlRequest<'_>) -> Result<usize, OsError> {
//!         // A real one: dispatcher.ioctl(handle, req.code, req.buf.input(), req.buf.output())
//!         let _ = (handle, req.code);
//!         match req.buf {
//!             IoctlBuf::None | IoctlBuf::In(_) => Ok(0),
//!             IoctlBuf::Out(_) | IoctlBuf::InOut(_) => Err(OsError::Errno(38)),
//!         }
//!     }
//!
//!     fn close(&self, _handle: DevicePath) {}
//! }
//! ```

use rhax_api::ioctl::ArgSize;
use rhax_api::{IoctlDef, Platform};

use crate::error::OsError;

/// A HAXM device: the system (control) device, a VM or a vCPU. The same type the driver's
/// dispatcher names its handles with ([`rhax_api::Device`]), under the name this library
/// has always used; `windows()` and `posix()` give the names QEMU opens.
pub use rhax_api::Device as DevicePath;

/// The data of one IOCTL, in the shape HAXM expects on Windows (`haxm-clients.md`,
/// "Windows buffer conventions"). POSIX has a single argument pointer; a POSIX transport
/// passes the one buffer there is.
#[derive(Debug)]
pub enum IoctlBuf<'a> {
    /// No data (RUN, KICKOFF, RESET_STATS).
    None,
    /// Data for the driver only (SET_REGS, SET_RAM, INTERRUPT...). Windows: input buffer only.
    In(&'a [u8]),
    /// Data from the driver only (VERSION, GET_REGS, SETUP_TUNNEL...). Windows: output buffer
    /// only. The initial contents are unspecified to the driver.
    Out(&'a mut [u8]),
    /// One buffer the driver both reads and writes (SET_MSRS, GET_MSRS, GET_CPUID). Windows:
    /// the same buffer as input and output, as QEMU passes it, because HAXM reads the
    /// request fields from the shared system buffer.
    InOut(&'a mut [u8]),
}

impl IoctlBuf<'_> {
    /// The bytes the driver may read (empty for `None` and `Out`).
    pub fn input(&self) -> &[u8] {
        match self {
            Self::In(b) => b,
            Self::InOut(b) => b,
            Self::None | Self::Out(_) => &[],
        }
    }

    /// The bytes the driver may write, if any.
    pub fn output(&mut self) -> Option<&mut [u8]> {
        match self {
            Self::Out(b) | Self::InOut(b) => Some(b),
            Self::None | Self::In(_) => None,
        }
    }

    /// The length of the output buffer (0 if none).
    pub fn output_len(&self) -> usize {
        match self {
            Self::Out(b) | Self::InOut(b) => b.len(),
            Self::None | Self::In(_) => 0,
        }
    }
}

/// One IOCTL request, resolved for the transport's platform.
#[derive(Debug)]
pub struct IoctlRequest<'a> {
    /// Which IOCTL (name, scope, POSIX argument kind).
    pub def: &'static IoctlDef,
    /// Its code on [`Transport::platform`].
    pub code: u32,
    /// Its data.
    pub buf: IoctlBuf<'a>,
}

impl IoctlRequest<'_> {
    /// Whether a POSIX host passes the *address of a pointer* to the buffer rather than the
    /// buffer's address: SET_CPUID and GET_CPUID, whose codes encode `sizeof(struct
    /// hax_cpuid *)` (`haxm-abi.md` §2, SET_CPUID).
    pub fn posix_arg_is_pointer(&self) -> bool {
        matches!(
            self.def.posix,
            Some(rhax_api::ioctl::PosixIoctl {
                size: ArgSize::Pointer,
                ..
            })
        )
    }
}

/// A way to open HAXM devices and send them IOCTLs.
///
/// Implementations move bytes and report OS errors; they do not interpret replies (the
/// library checks lengths and values). `Clone` is required because every [`System`],
/// [`Vm`](crate::Vm) and [`Vcpu`](crate::Vcpu) keeps its own copy, so each can live on its
/// own thread; the OS transports are zero-sized, an in-kernel one can be a reference.
///
/// # Safety
///
/// An implementor guarantees that a successful `HAX_VCPU_IOCTL_SETUP_TUNNEL` reply carries,
/// in `va` and `io_va`, the addresses in the **current address space** of a tunnel of at
/// least `size` bytes and an IO buffer of at least
/// [`IOS_MAX_BUFFER`](rhax_api::IOS_MAX_BUFFER) bytes, both readable and writable, and that
/// both stay mapped until the vCPU's handle is passed to [`Transport::close`]. The driver
/// writes them only during RUN on that vCPU (HAXM does: `haxm-abi.md` §4). The library turns
/// those addresses into references on the strength of this promise.
///
/// [`System`]: crate::System
pub unsafe trait Transport: Clone {
    /// An open device.
    type Handle;

    /// The platform whose IOCTL codes this transport speaks.
    fn platform(&self) -> Platform;

    /// Opens a device.
    fn open(&self, path: DevicePath) -> Result<Self::Handle, OsError>;

    /// Sends one IOCTL. Returns the number of bytes the driver wrote into the output buffer
    /// (Windows: `lpBytesReturned`; POSIX, which cannot tell: the output length on success).
    fn ioctl(&self, handle: &Self::Handle, req: IoctlRequest<'_>) -> Result<usize, OsError>;

    /// Closes a device. Closing a vCPU destroys it, closing a VM destroys the VM once its
    /// vCPUs are gone (HAXM has no working destroy IOCTL).
    fn close(&self, handle: Self::Handle);
}

// SAFETY: forwards every call to `T`, whose guarantee therefore carries over.
unsafe impl<T: Transport> Transport for &T {
    type Handle = T::Handle;

    fn platform(&self) -> Platform {
        (**self).platform()
    }

    fn open(&self, path: DevicePath) -> Result<Self::Handle, OsError> {
        (**self).open(path)
    }

    fn ioctl(&self, handle: &Self::Handle, req: IoctlRequest<'_>) -> Result<usize, OsError> {
        (**self).ioctl(handle, req)
    }

    fn close(&self, handle: Self::Handle) {
        (**self).close(handle)
    }
}

/// An open device plus the transport that opened it; closes on drop.
pub(crate) struct Device<T: Transport> {
    pub(crate) transport: T,
    handle: Option<T::Handle>,
}

impl<T: Transport> Device<T> {
    pub(crate) fn open(transport: T, path: DevicePath) -> crate::Result<Self> {
        let handle = transport
            .open(path)
            .map_err(|os| crate::Error::Open { device: path, os })?;
        Ok(Self {
            transport,
            handle: Some(handle),
        })
    }

    /// Sends `def` with `buf`; checks that the output, if any, came back complete and not
    /// longer than the buffer. Returns the byte count.
    pub(crate) fn call(
        &self,
        def: &'static IoctlDef,
        buf: IoctlBuf<'_>,
        err: impl FnOnce(OsError) -> crate::Error,
        min_reply: usize,
    ) -> crate::Result<usize> {
        let code = def
            .code(self.transport.platform())
            .ok_or(crate::Error::Unsupported { ioctl: def.name })?;
        self.call_code(def, code, buf, err, min_reply)
    }

    /// [`Device::call`] with `def`'s code on this transport's platform already worked out
    /// (RUN's, once per vCPU: the hot path).
    pub(crate) fn call_code(
        &self,
        def: &'static IoctlDef,
        code: u32,
        buf: IoctlBuf<'_>,
        err: impl FnOnce(OsError) -> crate::Error,
        min_reply: usize,
    ) -> crate::Result<usize> {
        let Some(handle) = self.handle.as_ref() else {
            // Unreachable: the handle is only taken in `drop`.
            return Err(crate::Error::InvalidArgument {
                what: "device already closed",
            });
        };
        let out_len = buf.output_len();
        let got = self
            .transport
            .ioctl(handle, IoctlRequest { def, code, buf })
            .map_err(err)?;
        if got > out_len {
            return Err(crate::Error::Malformed {
                ioctl: def.name,
                field: "bytes returned",
                value: got as u64,
            });
        }
        if got < min_reply {
            return Err(crate::Error::ShortReply {
                ioctl: def.name,
                expected: min_reply,
                got,
            });
        }
        Ok(got)
    }

    /// An IOCTL whose only data goes to the driver.
    pub(crate) fn send(
        &self,
        def: &'static IoctlDef,
        input: &[u8],
        err: impl FnOnce(OsError) -> crate::Error,
    ) -> crate::Result<()> {
        let buf = if input.is_empty() {
            IoctlBuf::None
        } else {
            IoctlBuf::In(input)
        };
        self.call(def, buf, err, 0).map(drop)
    }

    /// An IOCTL that returns a `P` and takes nothing.
    pub(crate) fn fetch<P: rhax_api::Pod>(
        &self,
        def: &'static IoctlDef,
        err: impl FnOnce(OsError) -> crate::Error,
    ) -> crate::Result<P> {
        let mut value = P::zeroed();
        self.call(def, IoctlBuf::Out(value.as_bytes_mut()), err, P::SIZE)?;
        Ok(value)
    }
}

impl<T: Transport> Drop for Device<T> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.transport.close(h);
        }
    }
}
