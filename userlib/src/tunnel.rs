//! [`SharedTunnel`]: safe access to the tunnel page and the IO buffer a driver maps into the
//! process at `HAX_VM_IOCTL_VCPU_CREATE` and reports through `HAX_VCPU_IOCTL_SETUP_TUNNEL`.
//!
//! The driver writes both areas while a RUN is in progress on the vCPU and reads some fields
//! back at the next RUN (`haxm-abi.md` §4). Rust must not assume it knows their contents, so
//! every tunnel access is a volatile read or write of one field or of a snapshot. The IO
//! buffer is handed out as an ordinary `&mut [u8]` only inside an [`Exit`](crate::Exit),
//! which borrows the vCPU exclusively, so no RUN (the only time the driver touches it) can
//! happen while that slice lives.

use core::mem::{align_of, offset_of, size_of};
use core::ptr::NonNull;

use rhax_api::{FastMmio, Tunnel, TunnelInfo, TunnelPayload, IOS_MAX_BUFFER};

use crate::error::{Error, Result};

const SETUP: &str = "HAX_VCPU_IOCTL_SETUP_TUNNEL";

/// The tunnel (`struct hax_tunnel`, 56 bytes at the start of a page) and the IO buffer
/// ([`IOS_MAX_BUFFER`] bytes used) of one vCPU.
#[derive(Debug)]
pub struct SharedTunnel {
    tunnel: NonNull<Tunnel>,
    size: usize,
    io: NonNull<u8>,
}

// SAFETY: the two areas are ordinary process memory shared with the driver, not tied to a
// thread; all access goes through `&self`/`&mut self` of the owner, so moving the owner to
// another thread moves the only access path with it.
unsafe impl Send for SharedTunnel {}

fn malformed(field: &'static str, value: u64) -> Error {
    Error::Malformed {
        ioctl: SETUP,
        field,
        value,
    }
}

impl SharedTunnel {
    /// Checks a SETUP_TUNNEL reply and wraps the two areas.
    ///
    /// Refused (as [`Error::Malformed`]): a null or misaligned address (both must be 8-byte
    /// aligned: the tunnel holds `u64`s, the IO buffer a [`FastMmio`]), a tunnel `size`
    /// below the 56 bytes of `struct hax_tunnel` (QEMU checks `size >= sizeof`, 48 in its
    /// older copy of the struct; HAXM reports 4096), an address range that wraps or does not
    /// fit this address space, and overlapping areas.
    ///
    /// # Safety
    ///
    /// For as long as the returned value lives:
    /// * `info.va .. info.va + info.size` and `info.io_va .. info.io_va + IOS_MAX_BUFFER` are
    ///   mapped readable and writable in the current address space;
    /// * nothing in this process other than the returned value accesses them, and the driver
    ///   accesses them only while a RUN on the owning vCPU is in progress (which the caller
    ///   never overlaps with an access through this value).
    ///
    /// A [`Transport`](crate::Transport) promises this for the replies it passes on.
    pub unsafe fn new(info: &TunnelInfo) -> Result<Self> {
        let size = usize::from(info.size);
        if size < size_of::<Tunnel>() {
            return Err(malformed("size", info.size.into()));
        }
        let tunnel = check_area(info.va, size, align_of::<Tunnel>(), "va")?;
        let io = check_area(
            info.io_va,
            IOS_MAX_BUFFER,
            align_of::<FastMmio>().max(8),
            "io_va",
        )?;
        // The two must not overlap, or the IO-buffer slice handed to the caller would alias
        // tunnel fields.
        let (t, i) = (info.va, info.io_va);
        if t < i + IOS_MAX_BUFFER as u64 && i < t + size as u64 {
            return Err(malformed("io_va (overlaps the tunnel)", i));
        }
        Ok(Self {
            tunnel: tunnel.cast(),
            size,
            io,
        })
    }

    /// The tunnel size the driver reported.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A copy of the whole `struct hax_tunnel`.
    pub fn snapshot(&self) -> Tunnel {
        // SAFETY: `tunnel` points to at least 56 readable, 8-aligned bytes (checked in `new`,
        // mapped by the `new` contract), any bytes are a valid `Tunnel` (it is `Pod`), and
        // the driver is not writing (no RUN in progress: contract of `new`).
        unsafe { self.tunnel.as_ptr().read_volatile() }
    }

    /// Reads `_exit_status`.
    pub fn exit_status(&self) -> u32 {
        self.read(offset_of!(Tunnel, exit_status))
    }

    /// Reads `_exit_reason`.
    pub fn exit_reason(&self) -> u32 {
        self.read(offset_of!(Tunnel, exit_reason))
    }

    /// A copy of the 24-byte payload union (IO, MMIO, PAGEFAULT, DEBUG) alone: what an exit's
    /// decoding needs, without the rest of the tunnel ([`SharedTunnel::snapshot`]).
    pub fn payload(&self) -> TunnelPayload {
        self.read(offset_of!(Tunnel, payload))
    }

    /// A pointer to the tunnel field at `offset` (an `offset_of!` of `Tunnel`).
    fn field<F>(&self, offset: usize) -> *mut F {
        // Pure address arithmetic inside the checked tunnel area; no access yet.
        self.tunnel
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(offset)
            .cast::<F>()
    }

    fn read<F: Copy>(&self, offset: usize) -> F {
        let p = self.field::<F>(offset);
        // SAFETY: `offset` is the `offset_of!` of a field of type `F` in `Tunnel`, so `p` is
        // in bounds of the >= 56-byte tunnel and aligned (the tunnel is 8-aligned, checked in
        // `new`); the memory is mapped and not written by the driver outside RUN (contract of
        // `new`), and any bits are a valid `F` (integers, or the `Pod` payload union).
        unsafe { p.read_volatile() }
    }

    fn write<F: Copy>(&mut self, offset: usize, value: F) {
        let p = self.field::<F>(offset);
        // SAFETY: as in `read`, and the area is writable; `&mut self` excludes other
        // accesses from this process.
        unsafe { p.write_volatile(value) }
    }

    /// Writes `_exit_reason` (user space writes 0, or 8 to request a pause).
    pub fn set_exit_reason(&mut self, value: u32) {
        self.write(offset_of!(Tunnel, exit_reason), value);
    }

    /// Writes `user_event_pending`.
    pub fn set_user_event_pending(&mut self, value: u32) {
        self.write(offset_of!(Tunnel, user_event_pending), value);
    }

    /// Reads `user_event_pending`.
    pub fn user_event_pending(&self) -> u32 {
        self.read(offset_of!(Tunnel, user_event_pending))
    }

    /// Reads `ready_for_interrupt_injection`.
    pub fn ready_for_interrupt_injection(&self) -> i32 {
        self.read(offset_of!(Tunnel, ready_for_interrupt_injection))
    }

    /// Writes `ready_for_interrupt_injection` (QEMU clears it at reset).
    pub fn set_ready_for_interrupt_injection(&mut self, value: i32) {
        self.write(offset_of!(Tunnel, ready_for_interrupt_injection), value);
    }

    /// Writes `request_interrupt_window`.
    pub fn set_request_interrupt_window(&mut self, value: i32) {
        self.write(offset_of!(Tunnel, request_interrupt_window), value);
    }

    /// Reads `request_interrupt_window`.
    pub fn request_interrupt_window(&self) -> i32 {
        self.read(offset_of!(Tunnel, request_interrupt_window))
    }

    /// A copy of the `struct hax_fastmmio` at the start of the IO buffer.
    pub fn fastmmio(&self) -> FastMmio {
        // SAFETY: the IO buffer has at least 64 >= 56 readable, 8-aligned bytes (checked in
        // `new`, mapped by its contract); any bytes are a valid `FastMmio`; no RUN in progress.
        unsafe { self.io.as_ptr().cast::<FastMmio>().read_volatile() }
    }

    /// Writes `hax_fastmmio.value`, completing an MMIO read at the next RUN.
    pub fn set_fastmmio_value(&mut self, value: u64) {
        let p = self
            .io
            .as_ptr()
            .wrapping_add(offset_of!(FastMmio, value))
            .cast::<u64>();
        // SAFETY: `value` lies at offset 8 of the >= 64-byte, 8-aligned IO buffer (checked in
        // `new`), which is mapped and writable and not accessed by the driver outside RUN.
        unsafe { p.write_volatile(value) }
    }

    /// The first `len` bytes of the IO buffer, or `None` if `len > IOS_MAX_BUFFER`.
    pub fn io_data(&mut self, len: usize) -> Option<&mut [u8]> {
        if len > IOS_MAX_BUFFER {
            return None;
        }
        // SAFETY: `io` points to IOS_MAX_BUFFER >= len readable and writable bytes (checked in
        // `new`, mapped by its contract) that do not overlap the tunnel; the exclusive borrow
        // of `self` is the only access path in this process, and the driver does not touch
        // the buffer outside RUN, which cannot start while the slice borrows the owner.
        Some(unsafe { core::slice::from_raw_parts_mut(self.io.as_ptr(), len) })
    }
}

/// Validates one area: non-null, aligned, inside the address space, no wrap-around.
fn check_area(va: u64, len: usize, align: usize, field: &'static str) -> Result<NonNull<u8>> {
    let addr = usize::try_from(va).map_err(|_| malformed(field, va))?;
    if addr % align != 0 {
        return Err(malformed(field, va));
    }
    if addr.checked_add(len).is_none() {
        return Err(malformed(field, va));
    }
    // Integer-to-pointer: these addresses were created by the driver, not derived from a Rust
    // allocation; `with_exposed_provenance` is the documented way to turn them into pointers.
    NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(addr)).ok_or(malformed(field, va))
}
