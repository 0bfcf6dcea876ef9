//! Kernel allocations on the IOCTL paths are fallible (defect 7): a global allocator that
//! fails every allocation after the first N of this thread drives the guest-memory IOCTLs
//! through every allocation they make. Each must answer HAXM's out-of-memory status
//! (`-ENOMEM`; Windows `STATUS_UNSUCCESSFUL`) and change nothing, until N is large enough for
//! the request to succeed. An infallible allocation left on the path would abort this test
//! binary (`handle_alloc_error`), as it would bugcheck a kernel.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use rhax_api::ioctl::{self, IoctlDef};
use rhax_api::{Platform as Codes, Pod, ProtectRamInfo, RamblockInfo, SetRamInfo2};
use rhax_core::dispatch::{errno, nt, DispatchError, ErrorKind, Handle, Hypervisor, SoftCpuRoots};
use rhax_core::memory::MemoryError;
use rhax_core::platform::{HeapPlatform, PlatformError};
use rhax_core::vmx::soft::msrs_from_tsv;

thread_local! {
    /// Allocations this thread may still make; `None`: no limit.
    static BUDGET: Cell<Option<u32>> = const { Cell::new(None) };
}

fn should_fail() -> bool {
    BUDGET
        .try_with(|b| match b.get() {
            None => false,
            Some(0) => true,
            Some(n) => {
                b.set(Some(n - 1));
                false
            }
        })
        .unwrap_or(false)
}

/// The system allocator, failing once this thread's budget is spent.
struct Failing;

// SAFETY: every call is forwarded unchanged to `System`, or fails by returning null, which
// `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Failing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if should_fail() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if should_fail() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees (allocated by `System`).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if should_fail() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees (allocated by `System`).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Failing = Failing;

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");
type Hv = Hypervisor<HeapPlatform, SoftCpuRoots>;

fn hv(codes: Codes) -> Hv {
    let msrs = msrs_from_tsv(TSV, "corei7_skylake_x").expect("model");
    rhax_core::dispatch::soft_hypervisor(HeapPlatform::new(), msrs, codes).expect("negotiation")
}

fn call(h: &Hv, handle: Handle, def: &IoctlDef, input: &[u8]) -> Result<usize, DispatchError> {
    h.dispatch(
        handle,
        def.code(h.codes()).expect("defined"),
        input,
        &mut [],
    )
}

fn set_ram2(gpa: u64, size: u64, va: u64, flags: u32) -> SetRamInfo2 {
    SetRamInfo2 {
        pa_start: gpa,
        size,
        va,
        flags,
        reserved1: 0,
        reserved2: 0,
    }
}

/// Runs `request` with a budget of 0, 1, 2, ... allocations until it succeeds; every failure
/// must be out-of-memory with nothing changed. Returns how many allocations it needed.
#[track_caller]
fn through_every_allocation(
    h: &Hv,
    what: &str,
    request: impl Fn() -> Result<usize, DispatchError>,
) -> u32 {
    for n in 0..10_000 {
        let before = h.snapshot();
        BUDGET.with(|b| b.set(Some(n)));
        let r = request();
        BUDGET.with(|b| b.set(None));
        match r {
            Ok(_) => return n,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind,
                        ErrorKind::Memory(MemoryError::Platform(PlatformError::OutOfMemory))
                            | ErrorKind::Platform(PlatformError::OutOfMemory)
                    ),
                    "{what} with {n} allocations: {e}"
                );
                assert_eq!(
                    (e.errno(), e.nt_status()),
                    (errno::ENOMEM, nt::STATUS_UNSUCCESSFUL),
                    "{what}"
                );
                assert_eq!(
                    h.snapshot(),
                    before,
                    "{what} failed with {n} allocations and changed state"
                );
            }
        }
    }
    panic!("{what} never succeeded");
}

#[test]
fn memory_ioctls_fail_cleanly_at_every_allocation() {
    for codes in [Codes::Linux, Codes::Windows] {
        let h = hv(codes);
        let sys = h.open_system();
        let mut id = [0u8; 4];
        h.dispatch(
            sys,
            ioctl::HAX_IOCTL_CREATE_VM.code(codes).unwrap(),
            &[],
            &mut id,
        )
        .unwrap();
        let vm = h.open_vm(u32::from_le_bytes(id)).unwrap();
        let block = |va: u64| RamblockInfo {
            start_va: va,
            size: 0x40_0000,
            reserved: 0,
        };
        let n = through_every_allocation(&h, "ADD_RAMBLOCK", || {
            call(
                &h,
                vm,
                &ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK,
                block(0x1000_0000).as_bytes(),
            )
        });
        assert!(n >= 1, "registering a block allocates");
        let map = set_ram2(0, 0x40_0000, 0x1000_0000, 0);
        through_every_allocation(&h, "SET_RAM2 map", || {
            call(&h, vm, &ioctl::HAX_VM_IOCTL_SET_RAM2, map.as_bytes())
        });
        // A ROM window in the middle splits the slot in three.
        let rom = set_ram2(0x10_0000, 0x2000, 0x1010_0000, 1);
        let n = through_every_allocation(&h, "SET_RAM2 split", || {
            call(&h, vm, &ioctl::HAX_VM_IOCTL_SET_RAM2, rom.as_bytes())
        });
        assert!(n >= 1, "a split grows the slots");
        // A STANDALONE mapping: a new block and a new slot.
        let standalone = set_ram2(0x80_0000, 0x1000, 0x2000_0000, 0x40);
        let n = through_every_allocation(&h, "SET_RAM2 STANDALONE", || {
            call(&h, vm, &ioctl::HAX_VM_IOCTL_SET_RAM2, standalone.as_bytes())
        });
        assert!(n >= 1, "a block and a slot");
        let protect = |gpa: u64, flags: u32| ProtectRamInfo {
            pa_start: gpa,
            size: 0x1000,
            flags,
            reserved: 0,
        };
        for (what, p) in [
            ("PROTECT_RAM", protect(0x5000, 0)),
            ("PROTECT_RAM 2", protect(0x7000, 0)),
        ] {
            through_every_allocation(&h, what, || {
                call(&h, vm, &ioctl::HAX_VM_IOCTL_PROTECT_RAM, p.as_bytes())
            });
        }
        // Unmapping the STANDALONE block retires it (no growth beyond reserved room).
        let unmap = set_ram2(0x80_0000, 0x1000, 0, 0x80);
        through_every_allocation(&h, "SET_RAM2 unmap", || {
            call(&h, vm, &ioctl::HAX_VM_IOCTL_SET_RAM2, unmap.as_bytes())
        });
        assert_eq!(h.snapshot().vms[0].memory.as_ref().unwrap().slots.len(), 3);
        h.close(vm).unwrap();
        h.close(sys).unwrap();
    }
}

/// Pins that succeed ("physical" = user address).
type Pinning = rhax_core::dispatch::PinningPlatform;

/// An EPT violation allocates paging structures (pages from the platform, their child arrays
/// from the heap) and records the pinned chunk: with the heap failing at any of those it
/// answers out of memory, never aborts, and a later violation maps the page.
#[test]
fn an_ept_violation_fails_cleanly_at_every_allocation() {
    use rhax_core::memory::{EptAccess, GuestMemory, Resolution};
    let p = Pinning::default();
    let mem = GuestMemory::new(&p, true).unwrap();
    mem.add_ramblock(&RamblockInfo {
        start_va: 0x4000_0000,
        size: 0x40_0000,
        reserved: 0,
    })
    .unwrap();
    mem.set_ram2(&set_ram2(0x1_0000_0000, 0x40_0000, 0x4000_0000, 0))
        .unwrap();
    let gpa = 0x1_0020_3000;
    let mut failures = 0;
    for n in 0..10_000 {
        BUDGET.with(|b| b.set(Some(n)));
        let r = mem.handle_violation(&p, gpa, EptAccess::READ);
        BUDGET.with(|b| b.set(None));
        match r {
            Ok(res) => {
                assert_eq!(res, Resolution::Mapped);
                break;
            }
            Err(e) => {
                assert_eq!(e, MemoryError::Platform(PlatformError::OutOfMemory));
                failures += 1;
            }
        }
    }
    assert!(failures > 0, "the violation allocates");
    assert!(mem.ept_leaf(gpa).is_some(), "mapped in the end");
    mem.destroy(&p);
    assert_eq!(
        p.heap.live_pages.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// CREATE_VM (the VM's memory, EPT root, CPUID table and object) and SET_CPUID (a new copy of
/// the VM's table) fail cleanly at every allocation: `-ENOMEM`, nothing changed.
#[test]
fn create_vm_and_set_cpuid_fail_cleanly_at_every_allocation() {
    let h = hv(Codes::Linux);
    let sys = h.open_system();
    let mut failures = 0;
    let mut id = [0u8; 4];
    for n in 0..10_000 {
        let before = h.snapshot();
        BUDGET.with(|b| b.set(Some(n)));
        let r = h.dispatch(
            sys,
            ioctl::HAX_IOCTL_CREATE_VM.code(Codes::Linux).unwrap(),
            &[],
            &mut id,
        );
        BUDGET.with(|b| b.set(None));
        match r {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.errno(), errno::ENOMEM, "{e}");
                assert_eq!(h.snapshot(), before);
                failures += 1;
            }
        }
    }
    assert!(failures > 0);
    let vm = h.open_vm(u32::from_le_bytes(id)).unwrap();
    call(
        &h,
        vm,
        &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
        &0u32.to_le_bytes(),
    )
    .unwrap();
    let vc = h.open_vcpu(u32::from_le_bytes(id), 0).unwrap();
    // One leaf: header (total 1) + one 40-byte entry for leaf 0.
    let mut input = vec![0u8; 8 + 40];
    input[..4].copy_from_slice(&1u32.to_le_bytes());
    let n = through_every_allocation(&h, "SET_CPUID", || {
        call(&h, vc, &ioctl::HAX_VCPU_IOCTL_SET_CPUID, &input)
    });
    assert!(n >= 1, "SET_CPUID copies the table");
}

/// VCPU_CREATE (the VMCS and its pages, the tunnel, the vCPU and its object) fails cleanly at
/// every allocation: HAXM's VCPU_CREATE answers every failure with `-EINVAL`; nothing changed
/// (the vCPU's large parts are `heap::try_zeroed` boxes: an aborting `Box` would bugcheck a
/// kernel).
#[test]
fn vcpu_create_fails_cleanly_at_every_allocation() {
    let h = hv(Codes::Linux);
    let sys = h.open_system();
    let mut id = [0u8; 4];
    h.dispatch(
        sys,
        ioctl::HAX_IOCTL_CREATE_VM.code(Codes::Linux).unwrap(),
        &[],
        &mut id,
    )
    .unwrap();
    let vm = h.open_vm(u32::from_le_bytes(id)).unwrap();
    let mut failures = 0;
    for n in 0..10_000 {
        let before = h.snapshot();
        let pages = h
            .platform()
            .live_pages
            .load(std::sync::atomic::Ordering::Relaxed);
        BUDGET.with(|b| b.set(Some(n)));
        let r = call(
            &h,
            vm,
            &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
            &0u32.to_le_bytes(),
        );
        BUDGET.with(|b| b.set(None));
        match r {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.errno(), errno::EINVAL, "{e}");
                assert_eq!(h.snapshot(), before);
                let now = h
                    .platform()
                    .live_pages
                    .load(std::sync::atomic::Ordering::Relaxed);
                assert_eq!(now, pages, "pages leaked by a failed VCPU_CREATE");
                failures += 1;
            }
        }
    }
    assert!(failures > 0);
    assert_eq!(h.snapshot().vms[0].vcpus.len(), 1);
}
