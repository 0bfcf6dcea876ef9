//! The platform of the `dispatch` harness: the "user's RAM" pool, a pinning heap platform
//! with failure injection, the CPU models.

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::OnceLock;

use rhax_core::dispatch::UserMapping;
use rhax_core::memory::Translation;
use rhax_core::platform::{
    CpuIndex, HeapPlatform, PhysPages, PinnedMemory, Platform, PlatformError,
};
use rhax_core::vcpu::cpuid::CpuidTable;
use rhax_core::vmx::negotiate::{negotiate, VmxControls};
use rhax_core::vmx::soft::{msrs_from_tsv, SoftVmx};

pub(crate) const TSV: &str = include_str!("../../../driver/core/tests/data/bochs-vmx-msrs.tsv");

/// CPU models of the Bochs table: three that negotiate (without and with APIC
/// virtualization, with MTF) and one that is refused (no EPT).
pub(crate) const MODELS: [&str; 4] = [
    "corei7_skylake_x",
    "corei7_sandy_bridge_2600k",
    "corei7_icelake_u",
    "corei5_lynnfield_750",
];

/// The "user's RAM": one 2-MiB-aligned buffer, so 2-MiB EPT leaves are possible.
pub(crate) const POOL_SIZE: usize = 4 << 20;
/// The part of the pool rewritten at the start of every input (instructions live there).
pub(crate) const POOL_RESET: usize = 0x1_0000;
/// RAM-block starts, sizes and guest-physical addresses the biased operations pick from.
pub(crate) const OFFSETS: [u64; 6] = [0, 0x1000, 0x1_0000, 0x10_0000, 0x20_0000, 0x3f_f000];
pub(crate) const SIZES: [u64; 7] = [
    0x1000, 0x2000, 0x1_0000, 0x10_0000, 0x20_0000, 0x40_0000, 0x3000,
];
pub(crate) const GPAS: [u64; 8] = [
    0,
    0x1000,
    0xa_0000,
    0x10_0000,
    0x20_0000,
    0xfee0_0000,
    0xffff_f000,
    0x1_0000_0000,
];
/// MSRs the guest and SET/GET_MSRS pick from (EFER, APIC base, TSC, PAT, SYSENTER, FS/GS
/// bases, STAR/LSTAR, MTRRs, MISC_ENABLE, MCG, a PMU counter, an x2APIC register).
pub(crate) const MSRS: [u32; 20] = [
    0xc000_0080,
    0x1b,
    0x10,
    0x277,
    0x174,
    0x175,
    0x176,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0081,
    0xc000_0082,
    0x2ff,
    0x200,
    0x1a0,
    0x179,
    0x17a,
    0xc1,
    0x830,
    0x3a,
];

pub(crate) type Model = (
    Vec<(u32, u64)>,
    Result<VmxControls, rhax_api::CapabilityFailure>,
);

pub(crate) struct Fixture {
    pub(crate) models: Vec<Model>,
    pub(crate) cpuid: CpuidTable,
}

pub(crate) fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        models: MODELS
            .iter()
            .map(|m| {
                let msrs = msrs_from_tsv(TSV, m).expect("model in the table");
                let vmx = SoftVmx::new(msrs.clone());
                let host = negotiate(vmx.caps())
                    .map_err(|_| rhax_api::CapabilityFailure::VT | rhax_api::CapabilityFailure::NX);
                (msrs, host)
            })
            .collect(),
        // A fixed host CPUID (no CPUID instruction per input: slow under a hypervisor, and
        // not reproducible across machines).
        cpuid: CpuidTable::new(|leaf, _| match leaf {
            0 => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            1 => [0x906ea, 0x0010_0800, 0x7ffa_fbff, 0xbfeb_fbff],
            7 => [0, 0x029c_6fbf, 0, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0001 => [0, 0, 0x121, 0x2c10_0800],
            0x8000_0008 => [0x3027, 0, 0, 0],
            _ => [0; 4],
        }),
    })
}

/// The pool, allocated once per process (page contents are the fuzz input's business).
pub(crate) fn pool() -> *mut u8 {
    static POOL: OnceLock<usize> = OnceLock::new();
    *POOL.get_or_init(|| {
        let layout = std::alloc::Layout::from_size_align(POOL_SIZE, 2 << 20).expect("layout");
        // SAFETY: non-zero size; the allocation lives for the whole process.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        p as usize
    }) as *mut u8
}

/// The VMXON region: one page for the whole process, handed to every input's `VmxRoot`.
/// `SoftCpuRoots` cannot give its root back (no `into_inner`), so a page allocated per input
/// could never be freed; a process-wide one is simply reused (one thread, and the software
/// model only writes the revision identifier into it).
pub(crate) fn vmxon_page() -> PhysPages {
    static PAGE: OnceLock<usize> = OnceLock::new();
    let p = *PAGE.get_or_init(|| {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
        // SAFETY: non-zero size; the allocation lives for the whole process.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        p as usize
    });
    let virt = NonNull::new(p as *mut u8).expect("allocated");
    // SAFETY: a zeroed, 4-KiB aligned page that lives forever; its previous owner (the
    // previous input's root) is gone, and "physical" addresses are made up on the host.
    unsafe { PhysPages::from_raw(virt, 0x1000, 1) }
}

/// [`HeapPlatform`] that pins for real (the "user address" is an address of this process,
/// "physical" = virtual: the software VMX never dereferences guest-physical addresses),
/// counts pins, and fails the n-th allocation or pin when asked.
pub struct FuzzPlatform {
    pub(crate) heap: HeapPlatform,
    pub(crate) pins: Cell<i64>,
    pub(crate) allocs: Cell<u32>,
    pub(crate) fail_alloc_at: Cell<Option<u32>>,
    pub(crate) pin_calls: Cell<u32>,
    pub(crate) fail_pin_at: Cell<Option<u32>>,
    pub(crate) tsc_frequency: Cell<u64>,
}

impl Platform for FuzzPlatform {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        let n = self.allocs.get();
        self.allocs.set(n + 1);
        if self.fail_alloc_at.get() == Some(n) {
            return Err(PlatformError::OutOfMemory);
        }
        // Keep the fuzzer from asking the allocator for absurd sizes.
        if count > 1024 {
            return Err(PlatformError::OutOfMemory);
        }
        self.heap.alloc_pages(count)
    }
    fn free_pages(&self, pages: PhysPages) {
        self.heap.free_pages(pages)
    }
    fn pin(&self, user_address: u64, len: usize) -> Result<PinnedMemory, PlatformError> {
        let n = self.pin_calls.get();
        self.pin_calls.set(n + 1);
        if self.fail_pin_at.get() == Some(n) {
            return Err(PlatformError::BadUserAddress);
        }
        // Probe-and-lock: only the pool is "user memory" of this process.
        let start = pool() as u64;
        let end = start + POOL_SIZE as u64;
        let last = user_address
            .checked_add(len as u64)
            .ok_or(PlatformError::BadUserAddress)?;
        if user_address < start || last > end || len == 0 {
            return Err(PlatformError::BadUserAddress);
        }
        self.pins.set(self.pins.get() + 1);
        Ok(PinnedMemory {
            handle: self.pins.get() as usize,
            user_address,
            len,
        })
    }
    fn pinned_page(&self, pinned: &PinnedMemory, page_index: usize) -> Option<u64> {
        (page_index < pinned.len.div_ceil(4096))
            .then(|| (pinned.user_address & !0xfff) + page_index as u64 * 4096)
    }
    fn unpin(&self, _pinned: PinnedMemory) {
        self.pins.set(self.pins.get() - 1);
    }
    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync)) {
        f(0)
    }
    fn run_on_cpu(&self, _cpu: CpuIndex, f: &(dyn Fn() + Sync)) {
        f()
    }
    fn current_cpu(&self) -> CpuIndex {
        0
    }
    fn cpu_count(&self) -> u32 {
        1
    }
    fn tsc(&self) -> u64 {
        self.heap.tsc()
    }
    fn tsc_frequency(&self) -> u64 {
        self.tsc_frequency.get()
    }
    fn kick(&self, _cpu: CpuIndex) {}
}

// SAFETY: the "user" is this process: a user address is a kernel address, and every pinned
// page lies in the pool, which lives for the whole process (the contract of
// `MappedGuestMemory::new`: the rest of the page behind `t.hva` is valid for reads and writes).
unsafe impl UserMapping for FuzzPlatform {
    fn map_user(&self, pages: &PhysPages) -> Result<u64, PlatformError> {
        Ok(pages.virt().as_ptr() as u64)
    }
    fn unmap_user(&self, _user_address: u64, _pages: &PhysPages) {}
    fn guest_page(t: &Translation) -> Option<NonNull<u8>> {
        let start = pool() as u64;
        // Only bytes inside the pool can be reached: a translation outside it is a bug in
        // the memory module (it handed out an address no pin covers).
        assert!(
            t.hva >= start && t.hva < start + POOL_SIZE as u64,
            "translation outside pinned memory: {t:?}"
        );
        NonNull::new(t.hva as *mut u8)
    }
}
