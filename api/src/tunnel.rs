//! The tunnel page (`hax_tunnel`), the IO buffer's `hax_fastmmio`, `hax_tunnel_info`, and
//! the exit statuses and flags they carry.
//!
//! Source: HAXM 7.8.0 `include/hax_interface.h` and `core/include/vm.h` (`enum exit_status`),
//! measured in `haxm-abi.md` §3-§5. The protocol is described in `haxm-abi.md` §4.

use core::fmt;

use crate::pod::{assert_layout, impl_pod, Pod};
use crate::UnknownValue;

/// `IOS_MAX_BUFFER`: the bytes of the IO buffer HAXM uses (port data, or a [`FastMmio`]).
pub const IOS_MAX_BUFFER: usize = 64;

/// The size reported in [`TunnelInfo::size`]: one page each for the tunnel and the IO buffer.
pub const HAX_TUNNEL_PAGE_SIZE: u16 = 4096;

/// Written by user space into [`Tunnel::exit_reason`] before RUN: "pause and return at once"
/// with [`ExitStatus::Paused`] (used by crosvm as an immediate-exit request).
pub const HAX_EXIT_REASON_PAUSE_REQUEST: u32 = ExitStatus::Paused as u32;

/// `_exit_status`: why `HAX_VCPU_IOCTL_RUN` returned (`enum exit_status`, HAXM
/// `core/include/vm.h`; `haxm-abi.md` §4 says when each is produced).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// `HAX_EXIT_IO` (1): port IO; details in [`Tunnel::io`], data in the IO buffer.
    Io = 1,
    /// `HAX_EXIT_MMIO` (2): legacy MMIO through `mmio.gla`; never produced by HAXM 7.8.0.
    Mmio = 2,
    /// `HAX_EXIT_REALMODE` (3): the guest is in real mode and unrestricted guest is missing.
    RealMode = 3,
    /// `HAX_EXIT_INTERRUPT` (4): a host interrupt, a requested interrupt window, or a user event.
    Interrupt = 4,
    /// `HAX_EXIT_UNKNOWN` (5): VM entry failed.
    Unknown = 5,
    /// `HAX_EXIT_HLT` (6): the guest executed HLT with nothing to inject.
    Hlt = 6,
    /// `HAX_EXIT_STATECHANGE` (7): the vCPU is dead (triple fault, invalid state...); sticky.
    StateChange = 7,
    /// `HAX_EXIT_PAUSED` (8): user-requested pause, or the vCPU is being torn down.
    Paused = 8,
    /// `HAX_EXIT_FAST_MMIO` (9): an MMIO access described by the [`FastMmio`] in the IO buffer.
    FastMmio = 9,
    /// `HAX_EXIT_PAGEFAULT` (10): access to a page protected by PROTECT_RAM; see
    /// [`Tunnel::pagefault`].
    PageFault = 10,
    /// `HAX_EXIT_DEBUG` (11): #DB or #BP while debugging; see [`Tunnel::debug`].
    Debug = 11,
}

impl ExitStatus {
    /// Every status, in numeric order.
    pub const ALL: [ExitStatus; 11] = [
        Self::Io,
        Self::Mmio,
        Self::RealMode,
        Self::Interrupt,
        Self::Unknown,
        Self::Hlt,
        Self::StateChange,
        Self::Paused,
        Self::FastMmio,
        Self::PageFault,
        Self::Debug,
    ];
}

impl TryFrom<u32> for ExitStatus {
    type Error = UnknownValue;

    fn try_from(value: u32) -> Result<Self, UnknownValue> {
        match value {
            1..=11 => Ok(Self::ALL[value as usize - 1]),
            _ => Err(UnknownValue {
                kind: "exit status",
                value: value.into(),
            }),
        }
    }
}

/// `_direction` of a port-IO exit.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoDirection {
    /// `HAX_IO_OUT` (0): guest to device.
    Out = 0,
    /// `HAX_IO_IN` (1): device to guest.
    In = 1,
}

impl TryFrom<u8> for IoDirection {
    type Error = UnknownValue;

    fn try_from(value: u8) -> Result<Self, UnknownValue> {
        match value {
            0 => Ok(Self::Out),
            1 => Ok(Self::In),
            _ => Err(UnknownValue {
                kind: "IO direction",
                value: value.into(),
            }),
        }
    }
}

/// `direction` of a fast-MMIO exit ([`FastMmio::direction`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmioDirection {
    /// 0: the guest reads `size` bytes at `gpa`; user space stores them in `value`.
    Read = 0,
    /// 1: the guest writes `value` (low `size` bytes) to `gpa`.
    Write = 1,
    /// 2: an MMIO-to-MMIO move from `gpa` to `gpa2`. Never produced by HAXM 7.8.0, handled by
    /// QEMU.
    Move = 2,
}

impl TryFrom<u8> for MmioDirection {
    type Error = UnknownValue;

    fn try_from(value: u8) -> Result<Self, UnknownValue> {
        match value {
            0 => Ok(Self::Read),
            1 => Ok(Self::Write),
            2 => Ok(Self::Move),
            _ => Err(UnknownValue {
                kind: "MMIO direction",
                value: value.into(),
            }),
        }
    }
}

/// `io._flags` value for a string instruction (INS/OUTS).
pub const HAX_IO_FLAG_STRING: u8 = 1;

bitflags::bitflags! {
    /// `pagefault.flags` of a [`ExitStatus::PageFault`] exit.
    ///
    /// HAXM stores bits 0-5 of the EPT-violation exit qualification (Intel SDM Vol. 3C,
    /// 28.2.1, Table 28-7): bits 0-2 are the access, bits 3-5 the EPT entry's R/W/X. The
    /// header's `HAX_PAGEFAULT_PERM_*` values (0x10/0x20/0x40) do **not** match the bits HAXM
    /// actually reports (0x08/0x10/0x20) (`haxm-abi.md` §4 and §8 item 10). The header values are
    /// given here; [`PageFaultFlags::from_bits_retain`] keeps whatever a driver reports.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PageFaultFlags: u32 {
        /// `HAX_PAGEFAULT_ACC_R`: the access was a read.
        const ACC_R = 0x1;
        /// `HAX_PAGEFAULT_ACC_W`: the access was a write.
        const ACC_W = 0x2;
        /// `HAX_PAGEFAULT_ACC_X`: the access was an instruction fetch.
        const ACC_X = 0x4;
        /// `HAX_PAGEFAULT_PERM_R` as the header defines it.
        const PERM_R = 0x10;
        /// `HAX_PAGEFAULT_PERM_W` as the header defines it.
        const PERM_W = 0x20;
        /// `HAX_PAGEFAULT_PERM_X` as the header defines it.
        const PERM_X = 0x40;
    }
}

/// `hax_tunnel.io`: a port-IO exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelIo {
    /// `_direction`: 0 = OUT, 1 = IN (see [`TunnelIo::direction`]).
    pub direction: u8,
    /// `_df`: RFLAGS.DF for string IO.
    pub df: u8,
    /// `_size`: element size, 1, 2 or 4.
    pub size: u16,
    /// `_port`.
    pub port: u16,
    /// `_count`: element count (1 unless string IO).
    pub count: u16,
    /// `_flags`: 1 = string IO ([`HAX_IO_FLAG_STRING`]).
    pub flags: u8,
    /// `_pad0`.
    pub pad0: u8,
    /// `_pad1`.
    pub pad1: u16,
    /// `_pad2`.
    pub pad2: u32,
    /// `_vaddr`: guest linear address of the first element for string IO.
    pub vaddr: u64,
}

impl_pod!(TunnelIo);
assert_layout!(TunnelIo, size = 24;
    direction = 0, df = 1, size = 2, port = 4, count = 6, flags = 8, pad0 = 9, pad1 = 10,
    pad2 = 12, vaddr = 16);

impl TunnelIo {
    /// `_direction`, typed.
    pub fn direction(&self) -> Result<IoDirection, UnknownValue> {
        IoDirection::try_from(self.direction)
    }

    /// Whether this is string IO (INS/OUTS).
    pub const fn is_string(&self) -> bool {
        self.flags & HAX_IO_FLAG_STRING != 0
    }

    /// The number of bytes of IO-buffer data, `count * size`.
    pub const fn data_len(&self) -> usize {
        self.count as usize * self.size as usize
    }
}

/// `hax_tunnel.mmio`: the legacy MMIO exit (never produced by HAXM 7.8.0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelMmio {
    /// `gla`: guest linear address.
    pub gla: u64,
}

impl_pod!(TunnelMmio);
assert_layout!(TunnelMmio, size = 8; gla = 0);

/// `hax_tunnel.pagefault`: a [`ExitStatus::PageFault`] exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelPageFault {
    /// `gpa`: the first protected page of the 2 MiB block containing the faulting address.
    pub gpa: u64,
    /// `flags`: see [`PageFaultFlags`].
    pub flags: u32,
    /// `reserved1`.
    pub reserved1: u32,
    /// `reserved2`.
    pub reserved2: u64,
}

impl_pod!(TunnelPageFault);
assert_layout!(TunnelPageFault, size = 24; gpa = 0, flags = 8, reserved1 = 12, reserved2 = 16);

impl TunnelPageFault {
    /// `flags`, typed (unknown bits kept).
    pub const fn flags(&self) -> PageFaultFlags {
        PageFaultFlags::from_bits_retain(self.flags)
    }
}

/// `hax_tunnel.state`: unused placeholder member.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelState {
    /// `dummy`.
    pub dummy: u64,
}

impl_pod!(TunnelState);
assert_layout!(TunnelState, size = 8; dummy = 0);

/// `hax_tunnel.debug`: a [`ExitStatus::Debug`] exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelDebug {
    /// `rip`: guest RIP at the #DB/#BP.
    pub rip: u64,
    /// `dr6`: for #DB the exit qualification (B0-B3, BD, BS), for #BP 0.
    pub dr6: u64,
    /// `dr7`: for #DB the guest DR7, for #BP 0.
    pub dr7: u64,
}

impl_pod!(TunnelDebug);
assert_layout!(TunnelDebug, size = 24; rip = 0, dr6 = 8, dr7 = 16);

/// The anonymous union of `hax_tunnel` at offset 24: `io`, `mmio`, `pagefault`, `state`,
/// `debug`.
///
/// Read it through [`Tunnel::io`], [`Tunnel::pagefault`]... The members are private so that
/// every value is built from all 24 bytes (a Rust union built from an 8-byte member would
/// leave the other 16 bytes uninitialised, which the byte views of [`Pod`] must never see).
#[repr(C)]
#[derive(Clone, Copy)]
pub union TunnelPayload {
    // `pub(crate)` only so that `conformance` can take `offset_of!`; crate code never builds
    // a value from one member (see the `Pod` impl).
    pub(crate) io: TunnelIo,
    pub(crate) mmio: TunnelMmio,
    pub(crate) pagefault: TunnelPageFault,
    pub(crate) state: TunnelState,
    pub(crate) debug: TunnelDebug,
    pub(crate) raw: [u64; 3],
}

assert_layout!(TunnelPayload, size = 24;
    io = 0, mmio = 0, pagefault = 0, state = 0, debug = 0, raw = 0);

// SAFETY: every member is `Pod` (all bit patterns valid); `raw` spans all 24 bytes so there is
// no byte outside a member; the members are private and every constructor (`zeroed`, the
// `from_*` functions, byte copies) initialises all 24 bytes, and stores through the accessors
// only overwrite bytes of an already fully initialised value.
unsafe impl Pod for TunnelPayload {}

impl Default for TunnelPayload {
    /// All-zero.
    fn default() -> Self {
        Self::zeroed()
    }
}

impl PartialEq for TunnelPayload {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for TunnelPayload {}

impl fmt::Debug for TunnelPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TunnelPayload").field(&self.raw()).finish()
    }
}

/// Declares the typed views of [`TunnelPayload`].
macro_rules! payload_views {
    ($($member:ident: $ty:ty, $get:ident, $get_mut:ident, $from:ident;)*) => {
        impl TunnelPayload {
            $(
                #[doc = concat!("The payload holding `", stringify!($member),
                    "`, the remaining bytes zero.")]
                pub fn $from(value: $ty) -> Self {
                    let mut p = Self::zeroed();
                    *p.$get_mut() = value;
                    p
                }

                #[doc = concat!("The `", stringify!($member), "` member.")]
                pub fn $get(&self) -> &$ty {
                    // SAFETY: all 24 bytes of `self` are initialised (see the `Pod` impl) and
                    // every bit pattern is a valid `$ty`; the union and the member share
                    // offset 0 and the union's alignment is at least the member's.
                    unsafe { &self.$member }
                }

                #[doc = concat!("The `", stringify!($member), "` member, writable.")]
                pub fn $get_mut(&mut self) -> &mut $ty {
                    // SAFETY: as for the shared view; writes through the reference store a
                    // valid `$ty` into bytes that stay initialised.
                    unsafe { &mut self.$member }
                }
            )*
        }

        impl Tunnel {
            $(
                #[doc = concat!("The union member `", stringify!($member), "`.")]
                pub fn $get(&self) -> &$ty {
                    self.payload.$get()
                }

                #[doc = concat!("The union member `", stringify!($member), "`, writable.")]
                pub fn $get_mut(&mut self) -> &mut $ty {
                    self.payload.$get_mut()
                }
            )*
        }
    };
}

payload_views! {
    io: TunnelIo, io, io_mut, from_io;
    mmio: TunnelMmio, mmio, mmio_mut, from_mmio;
    pagefault: TunnelPageFault, pagefault, pagefault_mut, from_pagefault;
    state: TunnelState, state, state_mut, from_state;
    debug: TunnelDebug, debug, debug_mut, from_debug;
}

impl TunnelPayload {
    /// The 24 bytes as three little-endian `u64`s.
    pub fn raw(&self) -> [u64; 3] {
        // SAFETY: all 24 bytes are initialised (see the `Pod` impl); any bits are valid u64s.
        unsafe { self.raw }
    }
}

/// `hax_tunnel`: the shared page through which RUN reports an exit (`haxm-abi.md` §4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// `_exit_reason`: the VMX basic exit reason (kernel), or
    /// [`HAX_EXIT_REASON_PAUSE_REQUEST`] (user, before RUN).
    pub exit_reason: u32,
    /// `pad0` (QEMU: `_exit_flag`).
    pub pad0: u32,
    /// `_exit_status`: see [`Tunnel::status`].
    pub exit_status: u32,
    /// `user_event_pending`: user sets 1 to request an exit; the kernel test-and-clears bit 0.
    pub user_event_pending: u32,
    /// `ready_for_interrupt_injection`: 1 iff an interrupt can be injected now.
    pub ready_for_interrupt_injection: i32,
    /// `request_interrupt_window`: non-zero asks for an exit as soon as the guest can take an
    /// interrupt.
    pub request_interrupt_window: i32,
    /// The union at offset 24; use [`Tunnel::io`], [`Tunnel::pagefault`]...
    pub payload: TunnelPayload,
    /// `apic_base`: the guest's IA32_APIC_BASE, written at the end of every RUN.
    pub apic_base: u64,
}

impl_pod!(Tunnel);
assert_layout!(Tunnel, size = 56;
    exit_reason = 0, pad0 = 4, exit_status = 8, user_event_pending = 12,
    ready_for_interrupt_injection = 16, request_interrupt_window = 20, payload = 24,
    apic_base = 48);

impl Tunnel {
    /// `_exit_status`, typed.
    pub fn status(&self) -> Result<ExitStatus, UnknownValue> {
        ExitStatus::try_from(self.exit_status)
    }

    /// Asks the next RUN to return [`ExitStatus::Paused`] without entering the guest.
    pub fn request_pause(&mut self) {
        self.exit_reason = HAX_EXIT_REASON_PAUSE_REQUEST;
    }
}

/// `hax_fastmmio`: the IO buffer's content on a [`ExitStatus::FastMmio`] exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastMmio {
    /// `gpa`: the guest-physical address accessed.
    pub gpa: u64,
    /// `value`: the data (low `size` bytes); the C union also names it `gpa2` (see
    /// [`FastMmio::gpa2`]).
    pub value: u64,
    /// `size`: 1, 2, 4 or 8.
    pub size: u8,
    /// `direction`: see [`FastMmio::direction`].
    pub direction: u8,
    /// `reg_index`: never written by HAXM.
    pub reg_index: u16,
    /// `pad0`.
    pub pad0: u32,
    /// `_cr0`: never written by HAXM.
    pub cr0: u64,
    /// `_cr2`: never written by HAXM.
    pub cr2: u64,
    /// `_cr3`: never written by HAXM.
    pub cr3: u64,
    /// `_cr4`: never written by HAXM.
    pub cr4: u64,
}

impl_pod!(FastMmio);
assert_layout!(FastMmio, size = 56;
    gpa = 0, value = 8, size = 16, direction = 17, reg_index = 18, pad0 = 20,
    cr0 = 24, cr2 = 32, cr3 = 40, cr4 = 48);
const _: () = assert!(core::mem::size_of::<FastMmio>() <= IOS_MAX_BUFFER);

impl FastMmio {
    /// `gpa2`: the destination of an [`MmioDirection::Move`]; the same bytes as `value`.
    pub const fn gpa2(&self) -> u64 {
        self.value
    }

    /// Sets `gpa2` (that is, `value`).
    pub fn set_gpa2(&mut self, gpa2: u64) {
        self.value = gpa2;
    }

    /// `direction`, typed.
    pub fn direction(&self) -> Result<MmioDirection, UnknownValue> {
        MmioDirection::try_from(self.direction)
    }
}

/// `hax_tunnel_info`: the answer of `HAX_VCPU_IOCTL_SETUP_TUNNEL`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelInfo {
    /// `va`: user address of the tunnel page.
    pub va: u64,
    /// `io_va`: user address of the IO buffer.
    pub io_va: u64,
    /// `size`: the tunnel size, [`HAX_TUNNEL_PAGE_SIZE`].
    pub size: u16,
    /// `pad[6]`.
    pub pad: [u8; 6],
}

impl_pod!(TunnelInfo);
assert_layout!(TunnelInfo, size = 24; va = 0, io_va = 8, size = 16, pad = 18);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_round_trip() {
        for s in ExitStatus::ALL {
            assert_eq!(ExitStatus::try_from(s as u32), Ok(s));
        }
        assert_eq!(ExitStatus::Io as u32, 1);
        assert_eq!(ExitStatus::Debug as u32, 11);
        assert!(ExitStatus::try_from(0).is_err());
        assert_eq!(
            ExitStatus::try_from(12),
            Err(UnknownValue {
                kind: "exit status",
                value: 12
            })
        );
    }

    #[test]
    fn union_views_share_bytes() {
        let mut t = Tunnel::default();
        t.io_mut().port = 0x3f8;
        t.io_mut().direction = 1;
        t.io_mut().size = 1;
        t.io_mut().count = 1;
        assert_eq!(t.as_bytes()[28..30], [0xf8, 0x03]);
        assert_eq!(t.io().direction(), Ok(IoDirection::In));
        assert_eq!(t.io().data_len(), 1);
        t.pagefault_mut().gpa = 0x20_0000;
        t.pagefault_mut().flags = 0x2;
        assert_eq!(t.mmio().gla, 0x20_0000);
        assert_eq!(t.debug().rip, 0x20_0000);
        assert_eq!(t.pagefault().flags(), PageFaultFlags::ACC_W);
        // Bytes written through a byte view show up in the typed views.
        t.as_bytes_mut()[40..48].copy_from_slice(&0x1234u64.to_le_bytes());
        assert_eq!(t.io().vaddr, 0x1234);
        assert_eq!(t.debug().dr7, 0x1234);
        let p = TunnelPayload::from_state(TunnelState { dummy: 5 });
        assert_eq!(p.raw(), [5, 0, 0]);
        t.exit_status = 9;
        assert_eq!(t.status(), Ok(ExitStatus::FastMmio));
        t.request_pause();
        assert_eq!(t.exit_reason, 8);
        let copy = Tunnel::from_bytes(t.as_bytes()).unwrap();
        assert_eq!(copy, t);
    }

    #[test]
    fn fastmmio_directions() {
        let mut m = FastMmio {
            direction: 2,
            ..Default::default()
        };
        m.set_gpa2(0xfee0_0000);
        assert_eq!(m.value, 0xfee0_0000);
        assert_eq!(m.direction(), Ok(MmioDirection::Move));
        m.direction = 3;
        assert!(m.direction().is_err());
        assert!(IoDirection::try_from(2).is_err());
    }
}
