//! The tunnel page shared with user space: every field is accessed on its own (volatile or
//! atomic), never read-modify-written as a whole struct, because user space may write
//! `user_event_pending`, `request_interrupt_window` or `_exit_reason` at any time (haxm-abi.md §4).

use super::*;

impl HaxVcpu {
    /// Reads and updates the tunnel (as user space would, for tests and in-kernel clients).
    pub fn with_tunnel<R>(&mut self, f: impl FnOnce(&mut Tunnel) -> R) -> R {
        let bytes = &mut self.tunnel.bytes_mut()[..core::mem::size_of::<Tunnel>()];
        let mut t = Tunnel::read_from_prefix(bytes).unwrap_or_default();
        let r = f(&mut t);
        bytes.copy_from_slice(t.as_bytes());
        r
    }

    /// Test-and-clear of `user_event_pending` bit 0 (quirk 8), atomically: user space may set
    /// it at any time.
    pub(in crate::vcpu::haxm) fn take_user_event(&mut self) -> bool {
        let p = self.tunnel.virt().as_ptr();
        // SAFETY: offset 12 of the page-aligned tunnel page is 4-byte aligned and inside the
        // page this vCPU owns; user space shares it, so only atomic access is used.
        let field = p.wrapping_add(12) as *const core::sync::atomic::AtomicU32;
        // SAFETY: see above; the page lives as long as `self`.
        let a = unsafe { &*field };
        a.fetch_and(!1, core::sync::atomic::Ordering::AcqRel) & 1 != 0
    }

    pub(in crate::vcpu::haxm) fn set_status(&mut self, status: ExitStatus, reason: u32) {
        self.with_tunnel(|t| {
            t.exit_status = status as u32;
            t.exit_reason = reason;
        });
    }
}
