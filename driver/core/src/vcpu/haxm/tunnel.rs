//! The tunnel page shared with user space (haxm-abi.md §4).
//!
//! User space may write `user_event_pending`, `request_interrupt_window` or `_exit_reason`
//! from another thread at any moment, including while RUN is in the kernel. So the vCPU never
//! reads or writes the tunnel as a whole struct (a read-modify-write of the page would lose a
//! write that lands in between): every field is its own atomic (u32/u64 fields) or volatile
//! (the payload union, which only the kernel writes during RUN) access.

use core::mem::offset_of;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::*;

impl HaxVcpu {
    /// Reads and updates the whole tunnel as user space would. For tests and in-kernel clients
    /// between RUNs only: the vCPU's own code uses the per-field accessors below.
    pub fn with_tunnel<R>(&mut self, f: impl FnOnce(&mut Tunnel) -> R) -> R {
        let bytes = &mut self.tunnel.bytes_mut()[..core::mem::size_of::<Tunnel>()];
        let mut t = Tunnel::read_from_prefix(bytes).unwrap_or_default();
        let r = f(&mut t);
        bytes.copy_from_slice(t.as_bytes());
        r
    }

    /// A copy of the tunnel, read without writing anything back.
    pub fn tunnel(&self) -> Tunnel {
        let p = self.tunnel.virt().as_ptr() as *const Tunnel;
        // SAFETY: the tunnel page is page-aligned (aligned for `Tunnel`), owned by this vCPU
        // and holds at least `size_of::<Tunnel>()` bytes; every bit pattern is a valid
        // `Tunnel` (Pod). Volatile: user space may write it concurrently.
        unsafe { core::ptr::read_volatile(p) }
    }

    /// The tunnel's `u32` field at `offset`, as an atomic.
    fn tunnel_u32(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset % 4 == 0 && offset + 4 <= core::mem::size_of::<Tunnel>());
        let p = self.tunnel.virt().as_ptr().wrapping_add(offset) as *const AtomicU32;
        // SAFETY: the tunnel page is page-aligned, owned by this vCPU for its lifetime and
        // mapped writable; `offset` is a 4-aligned field offset of `Tunnel` (inside the page).
        // User space shares the page, which is why only atomic accesses go through it.
        unsafe { &*p }
    }

    /// `user_event_pending`: test-and-clear of bit 0 (quirk 8), atomically.
    // A few instructions, called on every RUN: inline, not a call of its own.
    #[inline]
    pub(in crate::vcpu::haxm) fn take_user_event(&mut self) -> bool {
        let a = self.tunnel_u32(offset_of!(Tunnel, user_event_pending));
        a.fetch_and(!1, Ordering::AcqRel) & 1 != 0
    }

    /// `user_event_pending` bit 0, left as it is (the APIC's halt polling looks, the guest
    /// loop takes it).
    pub(in crate::vcpu::haxm) fn user_event_pending(&mut self) -> bool {
        let a = self.tunnel_u32(offset_of!(Tunnel, user_event_pending));
        a.load(Ordering::Acquire) & 1 != 0
    }

    /// Quirk 7: `_exit_reason == 8` written by user space before RUN asks for an immediate
    /// exit; consumed (set to 0) only if it is still there.
    // A few instructions, called on every RUN: inline, not a call of its own.
    #[inline]
    pub(in crate::vcpu::haxm) fn take_pause_request(&mut self) -> bool {
        let a = self.tunnel_u32(offset_of!(Tunnel, exit_reason));
        a.compare_exchange(
            HAX_EXIT_REASON_PAUSE_REQUEST,
            0,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    }

    /// `request_interrupt_window != 0`.
    // A few instructions, called on every RUN: inline, not a call of its own.
    #[inline]
    pub(in crate::vcpu::haxm) fn wants_interrupt_window(&self) -> bool {
        let a = self.tunnel_u32(offset_of!(Tunnel, request_interrupt_window));
        a.load(Ordering::Acquire) != 0
    }

    /// `ready_for_interrupt_injection`.
    // A few instructions, called on every RUN: inline, not a call of its own.
    #[inline]
    pub(in crate::vcpu::haxm) fn set_ready_for_injection(&mut self, ready: bool) {
        let a = self.tunnel_u32(offset_of!(Tunnel, ready_for_interrupt_injection));
        // The field is an i32 that is 0 or 1: the same bits as this u32.
        a.store(u32::from(ready), Ordering::Release);
    }

    /// `_exit_status` and `_exit_reason`. An INTERRUPT return also consumes a pending user
    /// event: a kick sets `user_event_pending` and sends an IPI, and when the IPI's exit ends
    /// the RUN first, the event is answered by this very return; leaving the bit set would
    /// make the next RUN come back at once for a kick already served.
    // A few instructions, called on every RUN: inline, not a call of its own.
    #[inline]
    pub(in crate::vcpu::haxm) fn set_status(&mut self, status: ExitStatus, reason: u32) {
        if status == ExitStatus::Interrupt {
            self.take_user_event();
        }
        self.tunnel_u32(offset_of!(Tunnel, exit_status))
            .store(status as u32, Ordering::Release);
        self.tunnel_u32(offset_of!(Tunnel, exit_reason))
            .store(reason, Ordering::Release);
    }

    /// `apic_base`.
    // A few instructions, called on every RUN: inline, not a call of its own.
    #[inline]
    pub(in crate::vcpu::haxm) fn publish_apic_base(&mut self) {
        let p = self
            .tunnel
            .virt()
            .as_ptr()
            .wrapping_add(offset_of!(Tunnel, apic_base)) as *const AtomicU64;
        // SAFETY: as in `tunnel_u32`; `apic_base` is at offset 48, 8-aligned in the page.
        let a = unsafe { &*p };
        a.store(self.apic_base, Ordering::Release);
    }

    /// The payload union (IO or PAGEFAULT): written only by the kernel during RUN and read by
    /// user space after it, so a volatile store of the whole union suffices.
    pub(in crate::vcpu::haxm) fn set_payload(&mut self, payload: TunnelPayload) {
        let p = self
            .tunnel
            .virt()
            .as_ptr()
            .wrapping_add(offset_of!(Tunnel, payload)) as *mut TunnelPayload;
        // SAFETY: `payload` is at offset 24 of the page-aligned tunnel page, aligned for the
        // union (checked by rhax-api's layout assertions) and inside the page this vCPU owns.
        unsafe { core::ptr::write_volatile(p, payload) };
    }

    /// The payload of a port-IO exit, as three 8-byte volatile stores of the union's words
    /// ([`io_words`]): the compiler turns a volatile store of the struct into a store per field
    /// from a copy on the stack (~25 emulated instructions on every IO exit).
    pub(in crate::vcpu::haxm) fn set_io_payload(&mut self, io: &TunnelIo) {
        let p = self
            .tunnel
            .virt()
            .as_ptr()
            .wrapping_add(offset_of!(Tunnel, payload)) as *mut u64;
        for (i, w) in io_words(io).into_iter().enumerate() {
            // SAFETY: `payload` is at offset 24 of the page-aligned tunnel page (rhax-api's
            // layout assertions): its three words are 8-byte aligned and inside the page this
            // vCPU owns; only the kernel writes them, during RUN.
            unsafe { core::ptr::write_volatile(p.wrapping_add(i), w) };
        }
    }
}

/// `hax_tunnel.io` as the payload union's three little-endian words (the layout rhax-api
/// asserts: `_direction` at 0, `_df` 1, `_size` 2, `_port` 4, `_count` 6, `_flags` 8, `_pad0`
/// 9, `_pad1` 10, `_pad2` 12, `_vaddr` 16).
#[inline(always)]
fn io_words(io: &TunnelIo) -> [u64; 3] {
    [
        u64::from(io.direction)
            | u64::from(io.df) << 8
            | u64::from(io.size) << 16
            | u64::from(io.port) << 32
            | u64::from(io.count) << 48,
        u64::from(io.flags)
            | u64::from(io.pad0) << 8
            | u64::from(io.pad1) << 16
            | u64::from(io.pad2) << 32,
        io.vaddr,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are the struct's bytes, field by field (every field a distinct value).
    #[test]
    fn io_words_are_the_structs_bytes() {
        let io = TunnelIo {
            direction: 0x01,
            df: 0x02,
            size: 0x0403,
            port: 0x0605,
            count: 0x0807,
            flags: 0x09,
            pad0: 0x0a,
            pad1: 0x0c0b,
            pad2: 0x100f_0e0d,
            vaddr: 0x1817_1615_1413_1211,
        };
        let mut bytes = [0u8; 24];
        for (i, w) in io_words(&io).iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&bytes[..], io.as_bytes());
    }
}
