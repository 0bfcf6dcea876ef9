//! The guest's x87/SSE/AVX/AVX-512 state around runs (SDM Vol. 1 chapter 13 "Managing State
//! Using the XSAVE Feature Set"; 2023+ numbering).
//!
//! On a host with CR4.OSXSAVE=1 the state travels with XSAVE/XRSTOR of the components rhax
//! switches ([`xcr0::SWITCHED`] within the host's XCR0), once per stay in the non-preemptible
//! region, not per entry: loaded with the swapped MSRs, saved by [`Vcpu::put`]. Both run under
//! the host's XCR0 with the same requested-feature bitmap, so the guest image is restored
//! whole (a component the guest never enabled gets its initial configuration, never the
//! host's values) and the host's image is restored whole. The guest's XCR0 itself is loaded
//! only across VM entry and exit (`Vcpu::run`), as KVM does: host code, NMI handlers included,
//! always runs with the host's XCR0. On a host without OSXSAVE only the legacy region is
//! switched, with FXSAVE/FXRSTOR, and the guest sees no XSAVE.

use alloc::boxed::Box;

use rhax_api::fpu::XsaveArea;
use rhax_api::pod::Pod;

use super::checked::{xcr0, GuestXcr0, XsaveImage};
use super::Vcpu;
use crate::vcpu::bits::CR4_OSXSAVE;
use crate::vmx::root::VmxRoot;
use crate::vmx::Vmx;

impl Vcpu {
    /// Saves the host's state and loads the guest's (from `load_guest_msrs`).
    pub(super) fn load_guest_fpu<V: Vmx>(&mut self, root: &mut VmxRoot<V>) {
        // SAFETY: CPL0 on the root's CPU.
        let cr4 = unsafe { root.vmx.read_cr4() };
        if cr4 & CR4_OSXSAVE != 0 {
            // SAFETY: CR4.OSXSAVE=1 (read just above).
            let host = unsafe { root.vmx.xgetbv0() };
            let mask = host & xcr0::SWITCHED;
            // SAFETY: CPL0, pinned, OSXSAVE=1 (contract of VmxRoot::enable and the read
            // above); the components of `mask` end at 2688 bytes, inside the 4 KiB area.
            unsafe { root.vmx.xsave(&mut self.host_xsave, mask) };
            // SAFETY: as above; the guest image is valid for XRSTOR under the host's XCR0:
            // its XSTATE_BV is within `mask` (the power-on image, an `XsaveImage` checked
            // against a guest XCR0 within `mask`, or an XSAVE of `mask`), XCOMP_BV and the
            // reserved header bytes are 0 (zeroed, checked, never written by XSAVE), MXCSR was
            // checked (`FxImage`, `XsaveImage`) or stored by the CPU.
            unsafe { root.vmx.xrstor(&self.xsave, mask) };
            self.host_xcr0 = Some(host);
        } else {
            // SAFETY: CPL0, pinned; the legacy region is the power-on image, one checked
            // against this host's MXCSR_MASK (`FxImage`), or one FXSAVE stored.
            unsafe { root.vmx.fxsave(&mut self.host_xsave.legacy) };
            // SAFETY: as above.
            unsafe { root.vmx.fxrstor(&self.xsave.legacy) };
            self.host_xcr0 = None;
        }
    }

    /// Saves the guest's state and restores the host's (from `put`). The host's XCR0 is in
    /// the CPU here: `run` restores it after every exit.
    pub(super) fn put_guest_fpu<V: Vmx>(&mut self, root: &mut VmxRoot<V>) {
        match self.host_xcr0.take() {
            Some(host) => {
                let mask = host & xcr0::SWITCHED;
                // SAFETY: CPL0, pinned, OSXSAVE=1 (host_xcr0 is Some only then); the guest's
                // state is loaded (load_guest_fpu ran).
                unsafe { root.vmx.xsave(&mut self.xsave, mask) };
                // SAFETY: restores the image XSAVE stored in load_guest_fpu, same mask.
                unsafe { root.vmx.xrstor(&self.host_xsave, mask) };
            }
            None => {
                // SAFETY: CPL0, pinned; the guest's state is loaded.
                unsafe { root.vmx.fxsave(&mut self.xsave.legacy) };
                // SAFETY: restores the image saved in load_guest_fpu.
                unsafe { root.vmx.fxrstor(&self.host_xsave.legacy) };
            }
        }
    }

    /// The XCR0 components a guest of this host may enable: the host's XCR0 within what rhax
    /// switches, or x87|SSE on a host without OSXSAVE (no XSETBV can run there).
    pub fn xcr0_allowed<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> u64 {
        if let Some(host) = self.host_xcr0 {
            return host & xcr0::SWITCHED;
        }
        // SAFETY: CPL0.
        let cr4 = unsafe { root.vmx.read_cr4() };
        if cr4 & CR4_OSXSAVE == 0 {
            return xcr0::X87 | xcr0::SSE;
        }
        // SAFETY: CR4.OSXSAVE=1 (read just above).
        let host = unsafe { root.vmx.xgetbv0() };
        host & xcr0::SWITCHED
    }

    /// Records the guest's CR4.OSXSAVE after a MOV to CR4 or SET_REGS changed CR4.
    pub fn set_guest_osxsave(&mut self, on: bool) {
        self.guest_osxsave = on;
    }

    /// The guest's CR4.OSXSAVE as last seen.
    pub fn guest_osxsave(&self) -> bool {
        self.guest_osxsave
    }

    /// The guest's XCR0.
    pub fn xcr0(&self) -> GuestXcr0 {
        self.xcr0
    }

    /// Sets the guest's XCR0 (a value XSETBV accepts on this host); the CPU gets it at the next
    /// VM entry.
    pub fn set_xcr0(&mut self, value: GuestXcr0) {
        self.xcr0 = value;
    }

    /// The guest's XSAVE image. Current only while the guest's state is not loaded (after
    /// [`Vcpu::put`]). XSTATE_BV may name components outside XCR0 that the CPU reported in
    /// use; [`Vcpu::xsave_for_user`] gives the view an IOCTL returns.
    pub fn xsave_area(&self) -> &XsaveArea {
        &self.xsave
    }

    /// Copies the guest's XSAVE image as `RHAX_VCPU_IOCTL_GET_XSAVE` returns it into `out`:
    /// XSTATE_BV within XCR0, the bytes past XCR0's area size 0. Returns that size.
    pub fn xsave_for_user(&self, out: &mut XsaveArea) -> u32 {
        // Byte copies: a 4 KiB value never passes through the stack.
        out.as_bytes_mut().copy_from_slice(self.xsave.as_bytes());
        let x = self.xcr0.get();
        out.header.xstate_bv &= x;
        out.header.xcomp_bv = 0;
        out.header.reserved = [0; 6];
        let size = xcr0::area_size(x);
        if let Some(tail) = out.extended.get_mut((size as usize).saturating_sub(576)..) {
            tail.fill(0);
        }
        size
    }

    /// Replaces the guest's XSAVE image and XCR0 (after [`Vcpu::put`]) with a checked pair;
    /// returns the old image's box for the caller to drop or reuse.
    pub fn set_xsave(&mut self, image: XsaveImage, value: GuestXcr0) -> Box<XsaveArea> {
        self.xcr0 = value;
        core::mem::replace(&mut self.xsave, image.into_inner())
    }
}
