//! `impl Platform` for bare metal: identity-mapped memory (physical = virtual), the page
//! allocator of `mm`, the CPUs started by `smp`, time from the TSC.
//!
//! "User memory" in this kernel is kernel memory (there is no user mode): pinning checks that
//! the range lies in the identity-mapped first 4 GiB and hands out its own pages.

use core::ptr::NonNull;

use rhax_core::dispatch::UserMapping;
use rhax_core::memory::Translation;
use rhax_core::platform::{CpuIndex, PhysPages, PinnedMemory, Platform, PlatformError};

use crate::{mm, smp, time};

/// The bare-metal platform.
pub struct Metal;

const PAGE: u64 = mm::PAGE;
const IDENTITY_END: u64 = 1 << 32;

impl Platform for Metal {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        let addr = mm::alloc_pages(count as u64, PAGE).ok_or(PlatformError::OutOfMemory)?;
        let virt = NonNull::new(addr as *mut u8).ok_or(PlatformError::OutOfMemory)?;
        // SAFETY: `mm::alloc_pages` returned `count` zeroed, contiguous, identity-mapped pages
        // at `addr` that nothing else owns.
        Ok(unsafe { PhysPages::from_raw(virt, addr, count) })
    }

    fn free_pages(&self, pages: PhysPages) {
        mm::free_pages(pages.phys(), pages.count() as u64);
    }

    fn pin(&self, user_address: u64, len: usize) -> Result<PinnedMemory, PlatformError> {
        let end = user_address
            .checked_add(len as u64)
            .ok_or(PlatformError::BadUserAddress)?;
        if len == 0 || end > IDENTITY_END {
            return Err(PlatformError::BadUserAddress);
        }
        Ok(PinnedMemory {
            handle: 0,
            user_address,
            len,
        })
    }

    fn pinned_page(&self, pinned: &PinnedMemory, page_index: usize) -> Option<u64> {
        let first = pinned.user_address & !(PAGE - 1);
        let last = (pinned.user_address + pinned.len as u64 - 1) & !(PAGE - 1);
        let page = first + page_index as u64 * PAGE;
        (page <= last).then_some(page)
    }

    fn unpin(&self, _pinned: PinnedMemory) {}

    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync)) {
        smp::run_on_all(&|cpu| f(cpu as CpuIndex));
    }

    fn run_on_cpu(&self, cpu: CpuIndex, f: &(dyn Fn() + Sync)) {
        smp::run_on_cpus(1 << cpu, &|_| f());
    }

    fn current_cpu(&self) -> CpuIndex {
        smp::cpu_index() as CpuIndex
    }

    fn cpu_count(&self) -> u32 {
        smp::cpu_count() as u32
    }

    fn tsc(&self) -> u64 {
        crate::arch::rdtsc()
    }

    fn tsc_frequency(&self) -> u64 {
        time::tsc_hz()
    }

    fn kick(&self, cpu: CpuIndex) {
        smp::kick(cpu as usize);
    }
}

// SAFETY: `guest_page` returns the identity-mapped address of `t.hpa`, which lies in the first
// 4 GiB (pinning accepts nothing else) and stays valid while the translation does (pinned
// pages are kernel pages the client keeps for the VM's life).
unsafe impl UserMapping for Metal {
    /// No user mode: the "user" address of a kernel page is its identity-mapped address.
    fn map_user(&self, pages: &PhysPages) -> Result<u64, PlatformError> {
        Ok(pages.phys())
    }

    fn unmap_user(&self, _user_address: u64, _pages: &PhysPages) {}

    fn guest_page(t: &Translation) -> Option<NonNull<u8>> {
        if t.hpa >= IDENTITY_END {
            return None;
        }
        NonNull::new(t.hpa as *mut u8)
    }
}
