//! Guest memory: RAM blocks, memslots, PROTECT_RAM and the EPT, against a fake platform whose
//! "physical memory" is heap pages, walked by a test-side EPT walker that follows the SDM
//! (325462-083US Vol. 3C §29.3.2) rather than the module's own lookup.

use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rhax_api::{AllocRamInfo, ProtectRamInfo, RamblockInfo, SetRamInfo, SetRamInfo2};
use rhax_core::memory::limits::{
    Limit, RamQuota, MAX_MEMSLOTS, MAX_PROTECTED_RANGES, MAX_RAM_BLOCKS,
};
use rhax_core::memory::{
    EptAccess, GuestMemory, InveptRequest, MemoryError, Resolution, Slot, LARGE_PAGE_SIZE,
    PAGE_SIZE,
};
use rhax_core::platform::{CpuIndex, PhysPages, PinnedMemory, Platform, PlatformError};
use rhax_core::vcpu::guest::{Backing, GuestMemoryAccess, MappedGuestMemory};

const MB2: u64 = LARGE_PAGE_SIZE;
const HPA_BASE: u64 = 0x100_0000_0000;

// ---------------------------------------------------------------- fake platform

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HpaMode {
    /// hpa = HPA_BASE + va: contiguous, 2 MiB aligned where va is.
    Contiguous,
    /// Neighbouring pages swapped: never contiguous.
    Swapped,
}

#[derive(Default)]
struct FakeState {
    next_phys: u64,
    /// phys of every live table page -> its heap address.
    pages: HashMap<u64, usize>,
    live_pages: usize,
    fail_alloc: bool,
    fail_pin: bool,
    pins: HashMap<usize, (u64, usize)>,
    next_pin: usize,
    pin_calls: usize,
    unpin_calls: usize,
    /// Unpinned memory is overwritten with [`POISON`] (as pages handed back to the OS and
    /// reused): only for pins of real test buffers.
    poison: bool,
    /// Pins whose pages the core asked for (`pinned_page`): only those can have left a
    /// translation behind, so only their unpin poisons. A pin that lost a race (the core pins
    /// outside its lock and releases the loser unused) is released while its buffer may be
    /// mapped and pinned anew by then; poisoning it would change memory no stale translation
    /// reaches, which an OS never does to user memory.
    translated: std::collections::HashSet<usize>,
}

/// What unpinned pages read as when the fake poisons them.
const POISON: u8 = 0xdb;

struct Fake {
    s: Mutex<FakeState>,
    mode: HpaMode,
}

impl Fake {
    fn new(mode: HpaMode) -> Fake {
        Fake {
            s: Mutex::new(FakeState {
                next_phys: 0x10_0000,
                next_pin: 1,
                ..Default::default()
            }),
            mode,
        }
    }

    fn hpa_of(&self, va: u64) -> u64 {
        match self.mode {
            HpaMode::Contiguous => HPA_BASE + va,
            HpaMode::Swapped => HPA_BASE + (va ^ PAGE_SIZE),
        }
    }

    /// Reads the 8 bytes at physical address `phys` of a table page.
    fn read_phys(&self, phys: u64) -> u64 {
        let s = self.s.lock().unwrap();
        let base = *s
            .pages
            .get(&(phys & !0xfff))
            .unwrap_or_else(|| panic!("walker reached non-table physical address {phys:#x}"));
        // SAFETY: `base` is a live page of the fake (4096 bytes); the offset is 8-aligned inside.
        unsafe { ((base + (phys & 0xfff) as usize) as *const u64).read_volatile() }
    }

    /// Copies a whole table page (one lock for 512 entries).
    fn read_table(&self, phys: u64) -> Vec<u64> {
        let s = self.s.lock().unwrap();
        let base = *s
            .pages
            .get(&phys)
            .unwrap_or_else(|| panic!("walker reached non-table physical address {phys:#x}"));
        // SAFETY: `base` is a live, 8-aligned page of 512 u64 owned by the fake.
        unsafe { std::slice::from_raw_parts(base as *const u64, 512) }.to_vec()
    }

    fn live_pages(&self) -> usize {
        self.s.lock().unwrap().live_pages
    }
    fn live_pins(&self) -> usize {
        self.s.lock().unwrap().pins.len()
    }
    fn pin_calls(&self) -> usize {
        self.s.lock().unwrap().pin_calls
    }
    fn unpin_calls(&self) -> usize {
        self.s.lock().unwrap().unpin_calls
    }
    fn set_fail_alloc(&self, f: bool) {
        self.s.lock().unwrap().fail_alloc = f;
    }
    fn set_fail_pin(&self, f: bool) {
        self.s.lock().unwrap().fail_pin = f;
    }
}

impl Platform for Fake {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        let mut s = self.s.lock().unwrap();
        if s.fail_alloc {
            return Err(PlatformError::OutOfMemory);
        }
        let layout = std::alloc::Layout::from_size_align(count * 4096, 4096).unwrap();
        // SAFETY: non-zero layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let virt = NonNull::new(ptr).ok_or(PlatformError::OutOfMemory)?;
        let phys = s.next_phys;
        s.next_phys += count as u64 * 4096;
        for i in 0..count {
            s.pages
                .insert(phys + i as u64 * 4096, ptr as usize + i * 4096);
        }
        s.live_pages += count;
        // SAFETY: fresh zeroed pages owned by the result.
        Ok(unsafe { PhysPages::from_raw(virt, phys, count) })
    }

    fn free_pages(&self, pages: PhysPages) {
        let mut s = self.s.lock().unwrap();
        for i in 0..pages.count() {
            assert!(
                s.pages.remove(&(pages.phys() + i as u64 * 4096)).is_some(),
                "double free"
            );
        }
        s.live_pages -= pages.count();
        let layout = std::alloc::Layout::from_size_align(pages.count() * 4096, 4096).unwrap();
        // SAFETY: allocated in alloc_pages with this layout.
        unsafe { std::alloc::dealloc(pages.virt().as_ptr(), layout) };
    }

    fn pin(&self, user_address: u64, len: usize) -> Result<PinnedMemory, PlatformError> {
        let mut s = self.s.lock().unwrap();
        if s.fail_pin {
            return Err(PlatformError::BadUserAddress);
        }
        assert_eq!(user_address % PAGE_SIZE, 0);
        assert!(
            len > 0 && len as u64 <= MB2,
            "pins are chunks of at most 2 MiB"
        );
        let h = s.next_pin;
        s.next_pin += 1;
        s.pins.insert(h, (user_address, len));
        s.pin_calls += 1;
        Ok(PinnedMemory {
            handle: h,
            user_address,
            len,
        })
    }

    fn pinned_page(&self, pinned: &PinnedMemory, page_index: usize) -> Option<u64> {
        let mut s = self.s.lock().unwrap();
        s.translated.insert(pinned.handle);
        let (va, len) = *s
            .pins
            .get(&pinned.handle)
            .expect("pinned_page on an unpinned handle");
        if page_index >= len / 4096 {
            return None;
        }
        Some(self.hpa_of(va + page_index as u64 * PAGE_SIZE))
    }

    fn unpin(&self, pinned: PinnedMemory) {
        let mut s = self.s.lock().unwrap();
        assert!(s.pins.remove(&pinned.handle).is_some(), "double unpin");
        s.unpin_calls += 1;
        let translated = s.translated.remove(&pinned.handle);
        // Pages stay locked while any pin holds them (an OS counts the locks per page); only
        // the last unpin hands them back. The core pins outside its lock, so a pin that lost a
        // race is released while another pin of the same pages lives.
        let (start, end) = (pinned.user_address, pinned.user_address + pinned.len as u64);
        let still_pinned = s
            .pins
            .values()
            .any(|&(a, l)| a < end && start < a + l as u64);
        if s.poison && translated && !still_pinned {
            // SAFETY: with `poison` set, pins are of live test buffers (the test's contract).
            unsafe {
                std::ptr::write_bytes(pinned.user_address as *mut u8, POISON, pinned.len);
            }
        }
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
        0
    }
    fn tsc_frequency(&self) -> u64 {
        1
    }
    fn kick(&self, _cpu: CpuIndex) {}
}

// ---------------------------------------------------------------- SDM walker

const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// A translation as the CPU computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Walked {
    hpa: u64,
    read: bool,
    write: bool,
    exec: bool,
    level: u32,
}

fn check_eptp(eptp: u64) {
    // SDM Vol. 3C §25.6.11: bits 2:0 memory type (6 = WB), bits 5:3 walk length - 1.
    assert_eq!(eptp & 7, 6, "EPTP memory type");
    assert_eq!((eptp >> 3) & 7, 3, "EPTP page-walk length 4");
    assert_eq!(eptp & 0xf80, 0, "EPTP reserved bits 11:7");
}

fn check_leaf(e: u64, level: u32) {
    // Tables 29-4 / 29-6: bits 5:3 memory type, 6 ignore PAT.
    assert_eq!((e >> 3) & 7, 6, "leaf memory type WB: {e:#x}");
    assert_ne!(e & 0x40, 0, "ignore PAT: {e:#x}");
    // §29.3.3.1: write without read is a misconfiguration.
    assert!(!(e & 2 != 0 && e & 1 == 0), "W without R: {e:#x}");
    if level == 2 {
        assert_eq!(e & 0x1f_f000, 0, "2 MiB leaf bits 20:12 reserved: {e:#x}");
    }
}

fn walk(fake: &Fake, eptp: u64, gpa: u64) -> Option<Walked> {
    check_eptp(eptp);
    let mut table = eptp & ADDR;
    for level in (1..=4u32).rev() {
        let idx = (gpa >> (12 + 9 * (level - 1))) & 0x1ff;
        let e = fake.read_phys(table + idx * 8);
        if e & 7 == 0 {
            return None;
        }
        let leaf = level == 1 || (level == 2 && e & 0x80 != 0);
        if leaf {
            check_leaf(e, level);
            let span = 1u64 << (12 + 9 * (level - 1));
            return Some(Walked {
                hpa: (e & ADDR & !(span - 1)) | (gpa & (span - 1)),
                read: e & 1 != 0,
                write: e & 2 != 0,
                exec: e & 4 != 0,
                level,
            });
        }
        // Non-leaf: bits 7:3 reserved (PML4E bit 7, and no 1 GiB pages here).
        assert_eq!(
            e & 0xf8,
            0,
            "non-leaf reserved bits at level {level}: {e:#x}"
        );
        table = e & ADDR;
    }
    unreachable!()
}

/// Every present 4-KiB page of the EPT (2 MiB leaves expanded), found by walking all tables.
fn all_pages(fake: &Fake, eptp: u64) -> BTreeMap<u64, Walked> {
    fn rec(fake: &Fake, table: u64, level: u32, base: u64, out: &mut BTreeMap<u64, Walked>) {
        let entries = fake.read_table(table);
        for i in 0..512u64 {
            let e = entries[i as usize];
            if e & 7 == 0 {
                continue;
            }
            let span = 1u64 << (12 + 9 * (level - 1));
            let gpa = base + i * span;
            if level == 1 || (level == 2 && e & 0x80 != 0) {
                check_leaf(e, level);
                for p in 0..span / PAGE_SIZE {
                    let w = Walked {
                        hpa: (e & ADDR & !(span - 1)) + p * PAGE_SIZE,
                        read: e & 1 != 0,
                        write: e & 2 != 0,
                        exec: e & 4 != 0,
                        level,
                    };
                    out.insert((gpa + p * PAGE_SIZE) / PAGE_SIZE, w);
                }
            } else {
                assert_eq!(e & 0xf8, 0);
                rec(fake, e & ADDR, level - 1, gpa, out);
            }
        }
    }
    check_eptp(eptp);
    let mut out = BTreeMap::new();
    rec(fake, eptp & ADDR, 4, 0, &mut out);
    out
}

// ---------------------------------------------------------------- helpers

const BLOCK_A: u64 = 0x10_0000_0000; // 2 MiB aligned
const BLOCK_B: u64 = 0x20_0000_0000;

fn block(mem: &GuestMemory, va: u64, size: u64) {
    mem.add_ramblock(&RamblockInfo {
        start_va: va,
        size,
        reserved: 0,
    })
    .unwrap();
}

fn map(mem: &GuestMemory, gpa: u64, size: u64, va: u64, flags: u32) -> Option<InveptRequest> {
    mem.set_ram2(&SetRamInfo2 {
        pa_start: gpa,
        size,
        va,
        flags,
        reserved1: 0,
        reserved2: 0,
    })
    .unwrap()
}

fn unmap(mem: &GuestMemory, gpa: u64, size: u64) -> Option<InveptRequest> {
    map(mem, gpa, size, 0, 0x80)
}

fn read(mem: &GuestMemory, fake: &Fake, gpa: u64) -> Resolution {
    mem.handle_violation(fake, gpa, EptAccess::READ).unwrap()
}

fn slot(start_gfn: u64, end_gfn: u64, block: u64, hva: u64, rom: bool) -> Slot {
    Slot {
        start_gfn,
        end_gfn,
        block,
        hva,
        rom,
    }
}

fn setup(mode: HpaMode, large: bool) -> (Fake, GuestMemory) {
    let fake = Fake::new(mode);
    let mem = GuestMemory::new(&fake, large).unwrap();
    (fake, mem)
}

fn teardown(fake: &Fake, mem: GuestMemory) {
    mem.destroy(fake);
    assert_eq!(fake.live_pages(), 0, "EPT pages leaked");
    assert_eq!(fake.live_pins(), 0, "pins leaked");
    assert_eq!(fake.pin_calls(), fake.unpin_calls());
}

// ---------------------------------------------------------------- tests

#[test]
fn memslots_split_and_merge() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    block(&mem, BLOCK_A, 8 * MB2);
    block(&mem, BLOCK_B, MB2);
    map(&mem, 0, 64 * PAGE_SIZE, BLOCK_A, 0);
    assert_eq!(mem.slots(), vec![slot(0, 64, BLOCK_A, BLOCK_A, false)]);
    // A later mapping in the middle splits the earlier one in three.
    map(&mem, 16 * PAGE_SIZE, 8 * PAGE_SIZE, BLOCK_B, 0);
    assert_eq!(
        mem.slots(),
        vec![
            slot(0, 16, BLOCK_A, BLOCK_A, false),
            slot(16, 24, BLOCK_B, BLOCK_B, false),
            slot(24, 64, BLOCK_A, BLOCK_A + 24 * PAGE_SIZE, false),
        ]
    );
    // Mapping the hole back to the original host pages merges everything again.
    map(
        &mem,
        16 * PAGE_SIZE,
        8 * PAGE_SIZE,
        BLOCK_A + 16 * PAGE_SIZE,
        0,
    );
    assert_eq!(mem.slots(), vec![slot(0, 64, BLOCK_A, BLOCK_A, false)]);
    // Same host pages but ROM: no merge (flags differ).
    map(
        &mem,
        16 * PAGE_SIZE,
        8 * PAGE_SIZE,
        BLOCK_A + 16 * PAGE_SIZE,
        1,
    );
    assert_eq!(mem.slots().len(), 3);
    assert!(mem.slots()[1].rom);
    // Overlapping the boundaries of two slots trims both.
    map(&mem, 10 * PAGE_SIZE, 20 * PAGE_SIZE, BLOCK_B, 0);
    assert_eq!(
        mem.slots(),
        vec![
            slot(0, 10, BLOCK_A, BLOCK_A, false),
            slot(10, 30, BLOCK_B, BLOCK_B, false),
            slot(30, 64, BLOCK_A, BLOCK_A + 30 * PAGE_SIZE, false),
        ]
    );
    // Unmap across two slots.
    unmap(&mem, 5 * PAGE_SIZE, 10 * PAGE_SIZE);
    assert_eq!(
        mem.slots(),
        vec![
            slot(0, 5, BLOCK_A, BLOCK_A, false),
            slot(15, 30, BLOCK_B, BLOCK_B + 5 * PAGE_SIZE, false),
            slot(30, 64, BLOCK_A, BLOCK_A + 30 * PAGE_SIZE, false),
        ]
    );
    // Adjacent mappings of contiguous host pages merge (QEMU splits > 4 GiB in pieces).
    unmap(&mem, 0, 64 * PAGE_SIZE);
    map(&mem, 0, 8 * PAGE_SIZE, BLOCK_A, 0);
    map(
        &mem,
        8 * PAGE_SIZE,
        8 * PAGE_SIZE,
        BLOCK_A + 8 * PAGE_SIZE,
        0,
    );
    assert_eq!(mem.slots(), vec![slot(0, 16, BLOCK_A, BLOCK_A, false)]);
    teardown(&fake, mem);
}

#[test]
fn old_set_ram_and_alloc_ram() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    mem.alloc_ram(&AllocRamInfo {
        size: 0x10_0000,
        pad: 0xdead, // not checked, as in HAXM
        va: BLOCK_A,
    })
    .unwrap();
    let r = mem.set_ram(&SetRamInfo {
        pa_start: 0xc0000,
        size: 0x10_0000,
        flags: 1,
        pad: [0xcc; 3], // QEMU leaves stack garbage here
        va: BLOCK_A,
    });
    assert_eq!(r, Ok(None), "nothing was mapped in the EPT yet");
    assert_eq!(mem.slots(), vec![slot(0xc0, 0x1c0, BLOCK_A, BLOCK_A, true)]);
    teardown(&fake, mem);
}

#[test]
fn rom_is_read_only() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    block(&mem, BLOCK_A, MB2);
    map(&mem, 0xf0000, 0x10000, BLOCK_A, 1);
    let gpa = 0xf0010;
    assert_eq!(
        mem.handle_violation(&fake, gpa, EptAccess::WRITE).unwrap(),
        Resolution::WriteToRom
    );
    assert_eq!(
        walk(&fake, mem.eptp(), gpa),
        None,
        "a ROM write maps nothing"
    );
    assert_eq!(
        mem.handle_violation(&fake, gpa, EptAccess::EXECUTE)
            .unwrap(),
        Resolution::Mapped
    );
    let w = walk(&fake, mem.eptp(), gpa).unwrap();
    assert_eq!(w.hpa, fake.hpa_of(BLOCK_A + 0x10));
    assert!(w.read && w.exec && !w.write, "{w:?}");
    // A write after the page is mapped read-only still goes to MMIO.
    assert_eq!(
        mem.handle_violation(&fake, gpa, EptAccess::WRITE | EptAccess::READ)
            .unwrap(),
        Resolution::WriteToRom
    );
    let t = mem.translate(&fake, gpa).unwrap().unwrap();
    assert!(!t.writable);
    assert_eq!(t.hpa, fake.hpa_of(BLOCK_A + 0x10));
    assert_eq!(t.hva, BLOCK_A + 0x10);
    // The kernel reaches the byte through its pinned chunk (Windows: the chunk's MDL).
    assert_eq!(
        t.pin_offset, 0x10,
        "the block's first chunk starts at BLOCK_A"
    );
    assert_ne!(t.pin_handle, 0);
    // Flipping to RAM (PAM) at the same host address zaps the read-only entries.
    let req = map(&mem, 0xf0000, 0x10000, BLOCK_A, 0);
    assert!(req.is_some());
    assert_eq!(walk(&fake, mem.eptp(), gpa), None);
    assert_eq!(
        mem.handle_violation(&fake, gpa, EptAccess::WRITE).unwrap(),
        Resolution::Mapped
    );
    assert!(walk(&fake, mem.eptp(), gpa).unwrap().write);
    teardown(&fake, mem);
}

#[test]
fn unmapped_and_invalid_are_mmio() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    block(&mem, BLOCK_A, 4 * MB2);
    assert_eq!(read(&mem, &fake, 0x1000), Resolution::Mmio);
    assert_eq!(mem.translate(&fake, 0x1000).unwrap(), None);
    map(&mem, 0, 4 * MB2, BLOCK_A, 0);
    assert_eq!(read(&mem, &fake, 0xa0000), Resolution::Mapped);
    assert!(walk(&fake, mem.eptp(), 0xa0000).is_some());
    // QEMU's VGA hole: SET_RAM {0xa0000, 0x20000, INVALID, va 0}.
    let req = mem
        .set_ram(&SetRamInfo {
            pa_start: 0xa0000,
            size: 0x20000,
            flags: 0x80,
            pad: [0; 3],
            va: 0,
        })
        .unwrap();
    assert!(req.is_some(), "present entries were zapped");
    for gpa in [0xa0000, 0xb0000, 0xbf000] {
        assert_eq!(walk(&fake, mem.eptp(), gpa), None);
        assert_eq!(read(&mem, &fake, gpa), Resolution::Mmio);
    }
    // The rest still maps, to the same host pages.
    for gpa in [0x9f000, 0xc0000, 0x3f_f000] {
        assert_eq!(read(&mem, &fake, gpa), Resolution::Mapped);
        assert_eq!(
            walk(&fake, mem.eptp(), gpa).unwrap().hpa,
            fake.hpa_of(BLOCK_A + gpa)
        );
    }
    assert_eq!(walk(&fake, mem.eptp(), 0xa0000), None);
    teardown(&fake, mem);
}

#[test]
fn standalone_blocks_come_and_go_with_their_mappings() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    block(&mem, BLOCK_A, MB2);
    let va = BLOCK_B;
    // No ADD_RAMBLOCK: the mapping brings its own block.
    map(&mem, 0x1000_0000, 0x4000, va, 0x40);
    let snap = mem.snapshot();
    assert_eq!(snap.blocks.len(), 2);
    assert!(snap.blocks[1].standalone && snap.blocks[1].start == va);
    assert_eq!(read(&mem, &fake, 0x1000_2000), Resolution::Mapped);
    assert_eq!(
        walk(&fake, mem.eptp(), 0x1000_2000).unwrap().hpa,
        fake.hpa_of(va + 0x2000)
    );
    assert_eq!(fake.live_pins(), 1);
    // Remapping the same host range read-only reuses the implicit block.
    map(&mem, 0x1000_0000, 0x4000, va, 0x41);
    assert_eq!(mem.snapshot().blocks.len(), 2);
    // A STANDALONE range inside a registered block shares it; straddling an edge is refused.
    map(&mem, 0x3000_0000, 0x2000, BLOCK_A + 0x1000, 0x40);
    assert_eq!(mem.snapshot().blocks.len(), 2);
    assert_eq!(mem.slots()[1].block, BLOCK_A);
    let _ = unmap(&mem, 0x3000_0000, 0x2000);
    assert_eq!(
        mem.snapshot().blocks.len(),
        2,
        "an explicit block is never dropped"
    );
    let before = mem.snapshot();
    let r = mem.set_ram2(&SetRamInfo2 {
        pa_start: 0x2000_0000,
        size: 0x2000,
        va: BLOCK_A + MB2 - 0x1000,
        flags: 0x40,
        reserved1: 0,
        reserved2: 0,
    });
    assert_eq!(r, Err(MemoryError::Overlap));
    assert_eq!(mem.snapshot(), before);
    // Unmapping drops the block; its pin waits for the INVEPT.
    assert_eq!(read(&mem, &fake, 0x1000_0000), Resolution::Mapped);
    let req = unmap(&mem, 0x1000_0000, 0x4000).expect("INVEPT needed");
    assert_eq!(mem.snapshot().blocks.len(), 1);
    assert_eq!(fake.live_pins(), 1, "unpinned before the INVEPT");
    mem.invept_done(&fake, req);
    assert_eq!(fake.live_pins(), 0);
    // Partly unmapping keeps the block alive.
    map(&mem, 0x1000_0000, 0x4000, va, 0x40);
    assert_eq!(read(&mem, &fake, 0x1000_0000), Resolution::Mapped);
    let _ = unmap(&mem, 0x1000_0000, 0x1000);
    assert_eq!(mem.snapshot().blocks.len(), 2);
    teardown(&fake, mem);
}

#[test]
fn large_leaf_only_where_allowed() {
    // (large_pages, mode, gpa, va offset, size, expected level)
    let cases: &[(bool, HpaMode, u64, u64, u64, u32)] = &[
        (true, HpaMode::Contiguous, 0x20_0000, 0, MB2, 2),
        (true, HpaMode::Contiguous, 0x40_0000, 2 * MB2, 2 * MB2, 2),
        // The CPU lacks 2 MiB EPT pages.
        (false, HpaMode::Contiguous, 0x20_0000, 0, MB2, 1),
        // Host pages not contiguous.
        (true, HpaMode::Swapped, 0x20_0000, 0, MB2, 1),
        // Guest range not 2 MiB aligned.
        (true, HpaMode::Contiguous, 0x20_1000, 0, MB2, 1),
        // Host range straddles two chunks (block offset not chunk aligned).
        (true, HpaMode::Contiguous, 0x20_0000, 0x1000, MB2, 1),
        // Slot smaller than 2 MiB.
        (true, HpaMode::Contiguous, 0x20_0000, 0, MB2 - PAGE_SIZE, 1),
    ];
    for &(large, mode, gpa, off, size, level) in cases {
        let (fake, mem) = setup(mode, large);
        block(&mem, BLOCK_A, 4 * MB2);
        map(&mem, gpa, size, BLOCK_A + off, 0);
        assert_eq!(read(&mem, &fake, gpa + 0x3000), Resolution::Mapped);
        let w = walk(&fake, mem.eptp(), gpa + 0x3000).unwrap();
        assert_eq!(
            w.level, level,
            "case {large} {mode:?} {gpa:#x} {off:#x} {size:#x}"
        );
        assert_eq!(w.hpa, fake.hpa_of(BLOCK_A + off + 0x3000));
        // Every page of the slot inside the chunk was mapped by that one violation, and each
        // translates right.
        let pages = all_pages(&fake, mem.eptp());
        for (gfn, w) in &pages {
            let g = gfn * PAGE_SIZE;
            assert!(
                g >= gpa && g < gpa + size,
                "mapped outside the slot: {g:#x}"
            );
            assert_eq!(w.hpa, fake.hpa_of(BLOCK_A + off + (g - gpa)));
            assert!(w.write);
        }
        assert!(!pages.is_empty());
        teardown(&fake, mem);
    }
}

#[test]
fn zap_reports_invept_and_retires_tables_until_done() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    block(&mem, BLOCK_A, 4 * MB2);
    block(&mem, BLOCK_B, MB2);
    map(&mem, 0, 4 * MB2, BLOCK_A, 0);
    let base = fake.live_pages();
    assert_eq!(base, 1, "only the PML4 before any access");
    assert_eq!(read(&mem, &fake, 0x10_0000), Resolution::Mapped);
    assert_eq!(walk(&fake, mem.eptp(), 0x10_0000).unwrap().level, 2);
    let epoch0 = mem.epoch();
    // Remapping one page inside a 2 MiB leaf zaps the leaf.
    let req = map(&mem, 0x10_0000, PAGE_SIZE, BLOCK_B, 0).expect("a present leaf was zapped");
    assert_eq!(req.eptp, mem.eptp());
    assert_eq!(mem.epoch(), epoch0 + 1);
    assert_eq!(req.epoch, mem.epoch());
    assert!(all_pages(&fake, mem.eptp()).is_empty());
    // Lazily refilled with 4 KiB leaves around the new page.
    assert_eq!(read(&mem, &fake, 0x0), Resolution::Mapped);
    assert_eq!(read(&mem, &fake, 0x10_0000), Resolution::Mapped);
    assert_eq!(
        walk(&fake, mem.eptp(), 0x10_1000),
        None,
        "another slot: its own violation"
    );
    assert_eq!(read(&mem, &fake, 0x10_1000), Resolution::Mapped);
    assert_eq!(walk(&fake, mem.eptp(), 0).unwrap().level, 1);
    assert_eq!(
        walk(&fake, mem.eptp(), 0x10_0000).unwrap().hpa,
        fake.hpa_of(BLOCK_B)
    );
    assert_eq!(
        walk(&fake, mem.eptp(), 0x10_1000).unwrap().hpa,
        fake.hpa_of(BLOCK_A + 0x10_1000)
    );
    mem.invept_done(&fake, req);
    let with_tables = fake.live_pages();
    assert_eq!(with_tables, 4, "PML4, PDPT, PD, PT");
    // A change that clears nothing present needs no INVEPT.
    assert_eq!(unmap(&mem, 3 * MB2, MB2), None);
    assert_eq!(mem.epoch(), epoch0 + 1);
    // Unmapping everything empties the tables; they are only freed after the INVEPT.
    let req = unmap(&mem, 0, 4 * MB2).expect("INVEPT");
    let snap = mem.snapshot();
    assert_eq!(snap.tables, 1);
    assert_eq!(snap.retired.0, 3);
    assert_eq!(fake.live_pages(), with_tables, "freed before the INVEPT");
    // An older request frees nothing newer.
    mem.invept_done(
        &fake,
        InveptRequest {
            eptp: req.eptp,
            epoch: req.epoch - 1,
        },
    );
    assert_eq!(fake.live_pages(), with_tables);
    mem.invept_done(&fake, req);
    assert_eq!(fake.live_pages(), 1);
    assert_eq!(mem.snapshot().retired, (0, 0));
    teardown(&fake, mem);
}

#[test]
fn protect_ram() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    block(&mem, BLOCK_A, 8 * MB2);
    map(&mem, 0, 8 * MB2, BLOCK_A, 0);
    assert_eq!(read(&mem, &fake, 0x20_5000), Resolution::Mapped);
    let prot = |pa: u64, size: u64, flags: u32| {
        mem.protect_ram(&ProtectRamInfo {
            pa_start: pa,
            size,
            flags,
            reserved: 0,
        })
    };
    // Protecting a mapped page zaps it.
    let req = prot(0x20_7000, 0x2000, 0).unwrap();
    assert!(req.is_some());
    assert_eq!(
        walk(&fake, mem.eptp(), 0x20_5000),
        None,
        "2 MiB leaf zapped"
    );
    // Any access to the 2 MiB block reports its first protected page (HAXM quirk 10).
    for gpa in [0x20_0000, 0x20_7000, 0x20_8000, 0x3f_f000] {
        assert_eq!(
            read(&mem, &fake, gpa),
            Resolution::Protected { gpa: 0x20_7000 },
            "{gpa:#x}"
        );
    }
    assert_eq!(
        mem.translate(&fake, 0x20_8000).unwrap_err(),
        MemoryError::Protected { gpa: 0x20_8000 }
    );
    // Other blocks map; pages next to the protected block are 4 KiB so the block stays out.
    assert_eq!(read(&mem, &fake, 0x40_0000), Resolution::Mapped);
    assert_eq!(walk(&fake, mem.eptp(), 0x40_0000).unwrap().level, 2);
    // Unprotecting one page leaves the other.
    assert_eq!(prot(0x20_7000, 0x1000, 7).unwrap(), None);
    assert_eq!(
        read(&mem, &fake, 0x20_0000),
        Resolution::Protected { gpa: 0x20_8000 }
    );
    // Unprotecting with a partial range rounds out to whole pages.
    assert_eq!(prot(0x20_8800, 0x10, 7).unwrap(), None);
    assert_eq!(read(&mem, &fake, 0x20_0000), Resolution::Mapped);
    assert_eq!(
        walk(&fake, mem.eptp(), 0x20_8000).unwrap().hpa,
        fake.hpa_of(BLOCK_A + 0x20_8000)
    );
    assert!(mem.snapshot().protected.is_empty());
    teardown(&fake, mem);
}

/// Runs `f` and checks that it fails with `err` and changes nothing.
fn refused(mem: &GuestMemory, err: MemoryError, f: impl FnOnce() -> Result<(), MemoryError>) {
    let before = mem.snapshot();
    assert_eq!(f(), Err(err));
    assert_eq!(
        mem.snapshot(),
        before,
        "state changed by a refused request ({err:?})"
    );
}

#[test]
fn bad_input_is_refused_without_state_change() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    block(&mem, BLOCK_A, 4 * MB2);
    map(&mem, 0, 2 * MB2, BLOCK_A, 0);
    map(&mem, 0xf0000, 0x10000, BLOCK_A + 0xf0000, 1);
    assert_eq!(read(&mem, &fake, 0x1000), Resolution::Mapped);
    let _ = mem.protect_ram(&ProtectRamInfo {
        pa_start: 0x30_0000,
        size: 0x1000,
        flags: 0,
        reserved: 0,
    });

    let add = |va, size, reserved| {
        mem.add_ramblock(&RamblockInfo {
            start_va: va,
            size,
            reserved,
        })
    };
    use MemoryError::*;
    refused(&mem, ZeroAddress, || add(0, MB2, 0));
    refused(&mem, ZeroSize, || add(BLOCK_B, 0, 0));
    refused(&mem, ReservedNotZero, || add(BLOCK_B, MB2, 1));
    refused(&mem, Misaligned, || add(BLOCK_B + 1, MB2, 0));
    refused(&mem, Misaligned, || add(BLOCK_B, MB2 + 8, 0));
    refused(&mem, RangeOverflow, || add(u64::MAX - 0xfff, 0x2000, 0));
    refused(&mem, ZeroAddress, || {
        mem.alloc_ram(&AllocRamInfo {
            size: 0x1000,
            pad: 0,
            va: 0,
        })
    });
    refused(&mem, ZeroSize, || {
        mem.alloc_ram(&AllocRamInfo {
            size: 0,
            pad: 0,
            va: BLOCK_B,
        })
    });

    let set2 = |pa, size, va, flags, r1, r2| {
        mem.set_ram2(&SetRamInfo2 {
            pa_start: pa,
            size,
            va,
            flags,
            reserved1: r1,
            reserved2: r2,
        })
        .map(|_| ())
    };
    refused(&mem, ReservedNotZero, || set2(0, 0x1000, BLOCK_A, 0, 1, 0));
    refused(&mem, ReservedNotZero, || set2(0, 0x1000, BLOCK_A, 0, 0, 1));
    refused(&mem, ZeroSize, || set2(0, 0, BLOCK_A, 0, 0, 0));
    refused(&mem, ZeroAddress, || set2(0, 0x1000, 0, 0, 0, 0));
    refused(&mem, BadFlags, || set2(0, 0x1000, BLOCK_A, 0x2, 0, 0));
    refused(&mem, BadFlags, || set2(0, 0x1000, BLOCK_A, 0x80, 0, 0));
    refused(&mem, BadFlags, || set2(0, 0x1000, 0, 0x81, 0, 0));
    refused(&mem, Misaligned, || set2(0x800, 0x1000, BLOCK_A, 0, 0, 0));
    refused(&mem, Misaligned, || set2(0, 0x1800, BLOCK_A, 0, 0, 0));
    refused(&mem, Misaligned, || set2(0, 0x1000, BLOCK_A + 8, 0, 0, 0));
    refused(&mem, RangeOverflow, || {
        set2(!0xfff_u64, 0x2000, BLOCK_A, 0, 0, 0)
    });
    refused(&mem, RangeOverflow, || {
        set2(0, 0x2000, !0xfff_u64, 0x40, 0, 0)
    });
    refused(&mem, GpaOutOfRange, || {
        set2(1 << 48, 0x1000, BLOCK_A, 0, 0, 0)
    });
    refused(&mem, GpaOutOfRange, || {
        set2((1 << 48) - 0x1000, 0x2000, BLOCK_A, 0, 0, 0)
    });
    refused(&mem, NoRamBlock, || set2(0, 0x1000, BLOCK_B, 0, 0, 0));
    refused(&mem, NoRamBlock, || {
        set2(0, 0x2000, BLOCK_A + 4 * MB2 - 0x1000, 0, 0, 0)
    });
    refused(&mem, NoRamBlock, || {
        set2(0, 0x1000, BLOCK_A - 0x1000, 0, 0, 0)
    });
    refused(&mem, Overlap, || {
        set2(0, 0x2000, BLOCK_A - 0x1000, 0x40, 0, 0)
    });
    refused(&mem, ZeroSize, || set2(0, 0, 0, 0x80, 0, 0));
    let set = |pa, size, va, flags| {
        mem.set_ram(&SetRamInfo {
            pa_start: pa,
            size,
            flags,
            pad: [0; 3],
            va,
        })
        .map(|_| ())
    };
    refused(&mem, ZeroSize, || set(0, 0, BLOCK_A, 0));
    refused(&mem, BadFlags, || set(0, 0x1000, BLOCK_A, 0x80));
    refused(&mem, BadFlags, || set(0, 0x1000, BLOCK_A, 0x10));
    refused(&mem, NoRamBlock, || set(0, 0x1000, 0x1000, 0));
    refused(&mem, ZeroAddress, || set(0, 0x1000, 0, 1));

    let prot = |pa, size, flags, reserved| {
        mem.protect_ram(&ProtectRamInfo {
            pa_start: pa,
            size,
            flags,
            reserved,
        })
        .map(|_| ())
    };
    for f in [1, 2, 3, 4, 5, 6] {
        refused(&mem, BadPermission, || prot(0, 0x1000, f, 0));
    }
    refused(&mem, ReservedNotZero, || prot(0, 0x1000, 0, 1));
    refused(&mem, ZeroSize, || prot(0, 0, 0, 0));
    refused(&mem, RangeOverflow, || prot(u64::MAX - 0xfff, 0x2000, 0, 0));
    refused(&mem, BeyondMappedRam, || {
        prot(2 * MB2 - 0x1000, 0x2000, 0, 0)
    });
    refused(&mem, BeyondMappedRam, || prot(1 << 40, 0x1000, 7, 0));

    assert!(MemoryError::Overlap.is_invalid_argument());
    assert!(!MemoryError::Platform(PlatformError::OutOfMemory).is_invalid_argument());
    teardown(&fake, mem);
}

#[test]
fn overlapping_ramblocks_refused() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    let base = BLOCK_A + 0x10_0000;
    block(&mem, base, 0x10_0000);
    let add = |va: u64, size: u64| {
        mem.add_ramblock(&RamblockInfo {
            start_va: va,
            size,
            reserved: 0,
        })
    };
    for (va, size) in [
        (base, 0x10_0000),          // equal
        (base + 0x1000, 0x1000),    // inside
        (base - 0x1000, 0x2000),    // straddles the start
        (base + 0xf_f000, 0x2000),  // straddles the end
        (base - 0x1000, 0x20_0000), // contains
    ] {
        refused(&mem, MemoryError::Overlap, || add(va, size));
    }
    refused(&mem, MemoryError::Overlap, || {
        mem.alloc_ram(&AllocRamInfo {
            size: 0x2000,
            pad: 0,
            va: base + 0xf_f000,
        })
    });
    // Adjacent on both sides is fine.
    add(base - 0x1000, 0x1000).unwrap();
    add(base + 0x10_0000, 0x1000).unwrap();
    assert_eq!(mem.snapshot().blocks.len(), 3);
    teardown(&fake, mem);
}

#[test]
fn teardown_unpins_everything() {
    let (fake, mem) = setup(HpaMode::Swapped, true);
    block(&mem, BLOCK_A, 8 * MB2 + 0x3000); // a short last chunk
    map(&mem, 0, 8 * MB2 + 0x3000, BLOCK_A, 0);
    map(&mem, 0x1_0000_0000, 0x2000, BLOCK_B, 0x40);
    for chunk in 0..9 {
        assert_eq!(read(&mem, &fake, chunk * MB2), Resolution::Mapped);
    }
    assert_eq!(read(&mem, &fake, 0x1_0000_1000), Resolution::Mapped);
    assert_eq!(fake.live_pins(), 10, "one pin per touched chunk");
    // The short last chunk maps only its 3 pages.
    let pages = all_pages(&fake, mem.eptp());
    assert_eq!(pages.len(), 8 * 512 + 3 + 2);
    // Retired but not yet INVEPTed items are released too.
    let _ = unmap(&mem, 0, MB2);
    let _ = unmap(&mem, 0x1_0000_0000, 0x2000);
    assert!(fake.live_pages() > 1);
    teardown(&fake, mem);
}

#[test]
fn platform_failures_are_errors_not_panics() {
    let (fake, mem) = setup(HpaMode::Contiguous, true);
    block(&mem, BLOCK_A, 2 * MB2);
    map(&mem, 0, 2 * MB2, BLOCK_A, 0);
    fake.set_fail_pin(true);
    assert_eq!(
        mem.handle_violation(&fake, 0x1000, EptAccess::READ),
        Err(MemoryError::Platform(PlatformError::BadUserAddress))
    );
    assert_eq!(
        mem.translate(&fake, 0x1000),
        Err(MemoryError::Platform(PlatformError::BadUserAddress))
    );
    fake.set_fail_pin(false);
    fake.set_fail_alloc(true);
    assert_eq!(
        mem.handle_violation(&fake, 0x1000, EptAccess::READ),
        Err(MemoryError::Platform(PlatformError::OutOfMemory))
    );
    assert_eq!(walk(&fake, mem.eptp(), 0x1000), None);
    fake.set_fail_alloc(false);
    assert_eq!(read(&mem, &fake, 0x1000), Resolution::Mapped);
    assert_eq!(
        walk(&fake, mem.eptp(), 0x1000).unwrap().hpa,
        fake.hpa_of(BLOCK_A + 0x1000)
    );
    teardown(&fake, mem);
    let fake = Fake::new(HpaMode::Contiguous);
    fake.set_fail_alloc(true);
    assert!(matches!(
        GuestMemory::new(&fake, true),
        Err(MemoryError::Platform(PlatformError::OutOfMemory))
    ));
}

#[test]
fn access_from_exit_qualification() {
    // SDM Table 28-7: bits 0-2 are the access; higher bits are other information.
    assert_eq!(EptAccess::from_exit_qualification(0x181), EptAccess::READ);
    assert_eq!(
        EptAccess::from_exit_qualification(0x3e),
        EptAccess::WRITE | EptAccess::EXECUTE
    );
}

// ---------------------------------------------------------------- model-based

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// gfn -> (hva, rom)
type Model = BTreeMap<u64, (u64, bool)>;

fn check_against_model(fake: &Fake, mem: &GuestMemory, model: &Model, what: &str) {
    for (gfn, w) in all_pages(fake, mem.eptp()) {
        let Some(&(hva, rom)) = model.get(&gfn) else {
            panic!("{what}: gfn {gfn:#x} mapped in the EPT but not in the model");
        };
        assert_eq!(w.hpa, fake.hpa_of(hva), "{what}: gfn {gfn:#x}");
        assert_eq!(w.write, !rom, "{what}: gfn {gfn:#x} write");
        assert!(w.read && w.exec);
    }
    // The slots describe the model exactly.
    let mut from_slots = Model::new();
    for s in mem.slots() {
        for g in s.start_gfn..s.end_gfn {
            from_slots.insert(g, (s.hva_of(g), s.rom));
        }
    }
    assert_eq!(&from_slots, model, "{what}: slots");
    // Canonical: no two adjacent slots that continue each other.
    for w in mem.slots().windows(2) {
        let (a, b) = (w[0], w[1]);
        assert!(
            !(a.end_gfn == b.start_gfn
                && a.block == b.block
                && a.rom == b.rom
                && a.hva_of(a.end_gfn) == b.hva),
            "{what}: unmerged {a:?} {b:?}"
        );
    }
}

#[test]
fn random_set_ram_sequences_match_model() {
    const SPACE: u64 = 4096; // guest frames: 16 MiB
    for seed in 1..=8u64 {
        let mode = if seed % 3 == 0 {
            HpaMode::Swapped
        } else {
            HpaMode::Contiguous
        };
        let (fake, mem) = setup(mode, seed % 4 != 1);
        let blocks = [(BLOCK_A, 8 * MB2), (BLOCK_B + 0x5000, MB2 + 0x7000)];
        for (va, size) in blocks {
            block(&mem, va, size);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let mut model = Model::new();
        let mut pending: Vec<InveptRequest> = Vec::new();
        for step in 0..150 {
            let what = format!("seed {seed} step {step}");
            let before = all_pages(&fake, mem.eptp());
            let op = rng.below(10);
            if op < 5 {
                // Map: sometimes 2 MiB aligned and sized.
                let (va0, bsize) = blocks[rng.below(2) as usize];
                let aligned = rng.below(2) == 0;
                let pages = if aligned {
                    512 * (1 + rng.below(2))
                } else {
                    1 + rng.below(700)
                };
                let pages = pages.min(bsize / PAGE_SIZE);
                let off = rng.below(bsize / PAGE_SIZE - pages + 1);
                let off = if aligned { off & !511 } else { off };
                let gfn = if aligned {
                    rng.below(SPACE / 512) * 512
                } else {
                    rng.below(SPACE)
                };
                let gfn = gfn.min(SPACE - pages);
                let rom = rng.below(4) == 0;
                let va = va0 + off * PAGE_SIZE;
                let req = map(&mem, gfn * PAGE_SIZE, pages * PAGE_SIZE, va, u32::from(rom));
                for i in 0..pages {
                    model.insert(gfn + i, (va + i * PAGE_SIZE, rom));
                }
                let had = before.range(gfn..gfn + pages).next().is_some();
                assert!(
                    !had || req.is_some(),
                    "{what}: zapped without INVEPT request"
                );
                pending.extend(req);
            } else if op < 7 {
                let gfn = rng.below(SPACE);
                let pages = (1 + rng.below(600)).min(SPACE - gfn);
                let req = unmap(&mem, gfn * PAGE_SIZE, pages * PAGE_SIZE);
                for g in gfn..gfn + pages {
                    model.remove(&g);
                }
                let had = before.range(gfn..gfn + pages).next().is_some();
                assert!(
                    !had || req.is_some(),
                    "{what}: zapped without INVEPT request"
                );
                pending.extend(req);
            } else {
                // Guest accesses.
                for _ in 0..8 {
                    let gpa = rng.below(SPACE * PAGE_SIZE);
                    let write = rng.below(2) == 0;
                    let access = if write {
                        EptAccess::WRITE
                    } else {
                        EptAccess::READ
                    };
                    let r = mem.handle_violation(&fake, gpa, access).unwrap();
                    let expect = match model.get(&(gpa / PAGE_SIZE)) {
                        None => Resolution::Mmio,
                        Some(&(_, true)) if write => Resolution::WriteToRom,
                        Some(_) => Resolution::Mapped,
                    };
                    assert_eq!(r, expect, "{what}: gpa {gpa:#x}");
                    if r == Resolution::Mapped {
                        let (hva, rom) = model[&(gpa / PAGE_SIZE)];
                        let w = walk(&fake, mem.eptp(), gpa).expect("mapped");
                        assert_eq!(w.hpa, fake.hpa_of(hva) + gpa % PAGE_SIZE, "{what}");
                        assert_eq!(w.write, !rom);
                        let t = mem.translate(&fake, gpa).unwrap().unwrap();
                        assert_eq!((t.hpa, t.writable), (w.hpa, w.write));
                        assert!(t.pin_offset < rhax_api::HAX_CHUNK_SIZE as usize);
                        assert_eq!(t.pin_offset as u64 % PAGE_SIZE, gpa % PAGE_SIZE);
                    }
                }
            }
            check_against_model(&fake, &mem, &model, &what);
            if rng.below(4) == 0 {
                for r in pending.drain(..) {
                    mem.invept_done(&fake, r);
                }
                assert_eq!(mem.snapshot().retired, (0, 0), "{what}");
                // Live pages = tables in the tree once nothing is retired.
                assert_eq!(fake.live_pages(), mem.snapshot().tables, "{what}");
            }
        }
        teardown(&fake, mem);
    }
}

#[test]
fn concurrent_map_changes_while_vcpus_fault() {
    let fake = Arc::new(Fake::new(HpaMode::Contiguous));
    let mem = Arc::new(GuestMemory::new(&*fake, true).unwrap());
    block(&mem, BLOCK_A, 4 * MB2);
    block(&mem, BLOCK_B, MB2);
    map(&mem, 0, 4 * MB2, BLOCK_A, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(AtomicU64::new(0));
    let mut vcpus = Vec::new();
    for t in 0..2u64 {
        let (fake, mem, stop, faults) = (fake.clone(), mem.clone(), stop.clone(), faults.clone());
        vcpus.push(std::thread::spawn(move || {
            let mut rng = Rng(77 + t);
            while !stop.load(Ordering::Relaxed) {
                let gpa = rng.below(4 * MB2);
                let r = mem.handle_violation(&*fake, gpa, EptAccess::WRITE).unwrap();
                // The BAR window at 2 MiB..+1 MiB flips between block B and MMIO.
                let in_window = (MB2..MB2 + 0x10_0000).contains(&gpa);
                assert!(
                    r == Resolution::Mapped || (in_window && r == Resolution::Mmio),
                    "{gpa:#x}: {r:?}"
                );
                faults.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The vCPU threads are running before the changes start (on a loaded machine they may be
    // scheduled late; no timing assumption).
    while faults.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    let mut requests = 0;
    for i in 0..300 {
        let req = if i % 2 == 0 {
            map(&mem, MB2, 0x10_0000, BLOCK_B, 0)
        } else {
            unmap(&mem, MB2, 0x10_0000)
        };
        if let Some(r) = req {
            requests += 1;
            mem.invept_done(&*fake, r);
        }
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for v in vcpus {
        v.join().unwrap();
    }
    assert!(faults.load(Ordering::Relaxed) > 0);
    assert!(
        requests > 0,
        "the vCPUs mapped pages that changes then zapped"
    );
    // Final state: the window is unmapped (last op was an unmap); every present page agrees.
    let mut model = Model::new();
    for g in 0..2048 {
        if !(512..768).contains(&g) {
            model.insert(g, (BLOCK_A + g * PAGE_SIZE, false));
        }
    }
    check_against_model(&fake, &mem, &model, "after concurrency");
    let mem = Arc::try_unwrap(mem).ok().unwrap();
    teardown(&fake, mem);
}

/// The kernel address of a translated page in these tests: the "user" buffer is this
/// process's memory, so the host-virtual address is it. Slow on purpose (it spins), to widen
/// the window between the lookup and the copy that a regression would reopen.
fn map_slowly(t: &rhax_core::memory::Translation) -> Option<NonNull<u8>> {
    for _ in 0..2000 {
        std::hint::spin_loop();
    }
    NonNull::new(t.hva as *mut u8)
}

/// Host-side copies (string IO, MMIO fetch) through `MappedGuestMemory` while another thread
/// unmaps a STANDALONE block and completes its INVEPT, which unpins it: the fake poisons
/// unpinned memory, and no copy may ever return poison (a copy after the unpin would). Two
/// buffers take turns, so an unpinned one stays poisoned for a whole round.
#[test]
fn copies_never_reach_memory_unpinned_by_a_concurrent_unmap() {
    const SIZE: usize = 4 * PAGE_SIZE as usize;
    const GPA: u64 = 0x10_0000;
    const PATTERN: u8 = 0x5a;
    let layout = std::alloc::Layout::from_size_align(SIZE, PAGE_SIZE as usize).unwrap();
    let bufs: Vec<u64> = (0..2)
        .map(|_| {
            // SAFETY: non-zero layout; freed at the end, after every thread is joined.
            let b = unsafe { std::alloc::alloc(layout) };
            assert!(!b.is_null());
            b as u64
        })
        .collect();
    let fake = Arc::new(Fake::new(HpaMode::Contiguous));
    fake.s.lock().unwrap().poison = true;
    let mem = Arc::new(GuestMemory::new(&*fake, false).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let ram_reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for t in 0..2u64 {
        let (fake, mem, stop, ram_reads) =
            (fake.clone(), mem.clone(), stop.clone(), ram_reads.clone());
        readers.push(std::thread::spawn(move || {
            // SAFETY: `map_slowly` returns the host-virtual address of the page, which is a
            // test buffer: live for the whole test and readable while pinned.
            let guest = unsafe { MappedGuestMemory::new(&mem, &*fake, map_slowly) };
            let mut rng = Rng(5 + t);
            let mut data = vec![0u8; PAGE_SIZE as usize];
            while !stop.load(Ordering::Relaxed) {
                let page = rng.below(SIZE as u64 / PAGE_SIZE);
                let off = rng.below(64);
                let len = PAGE_SIZE as usize - off as usize;
                let gpa = GPA + page * PAGE_SIZE + off;
                match guest.read(gpa, &mut data[..len]).unwrap() {
                    Backing::Ram => {
                        assert!(
                            data[..len].iter().all(|&b| b == PATTERN),
                            "a copy read unpinned (poisoned) memory at {gpa:#x}"
                        );
                        ram_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Backing::NotRam => {}
                }
            }
        }));
    }
    let mut unpins = 0;
    for round in 0..200 {
        let va = bufs[round % 2];
        // SAFETY: a live test buffer that no mapping reaches now.
        unsafe { std::ptr::write_bytes(va as *mut u8, PATTERN, SIZE) };
        assert_eq!(map(&mem, GPA, SIZE as u64, va, 0x40), None);
        for _ in 0..20 {
            std::thread::yield_now();
        }
        // The first round waits (up to 10 s) until a reader has copied from RAM, so that the
        // readers run against mapped memory at least once however loaded the machine is.
        let t0 = std::time::Instant::now();
        while round == 0
            && ram_reads.load(Ordering::Relaxed) == 0
            && t0.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::yield_now();
        }
        // A request whenever a reader pinned the block since it was mapped.
        if let Some(req) = unmap(&mem, GPA, SIZE as u64) {
            let before = fake.unpin_calls();
            mem.invept_done(&*fake, req);
            unpins += fake.unpin_calls() - before;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(ram_reads.load(Ordering::Relaxed) > 0, "the readers saw RAM");
    assert!(unpins > 0, "unmaps released pins while readers ran");
    let mem = Arc::try_unwrap(mem).ok().unwrap();
    teardown(&fake, mem);
    for b in bufs {
        // SAFETY: allocated above with this layout; every user is gone.
        unsafe { std::alloc::dealloc(b as *mut u8, layout) };
    }
}

// ---------------------------------------------------------------- per-VM bounds, quota (defect 7)

fn set2(mem: &GuestMemory, gpa: u64, size: u64, va: u64, flags: u32) -> Result<(), MemoryError> {
    mem.set_ram2(&SetRamInfo2 {
        pa_start: gpa,
        size,
        va,
        flags,
        reserved1: 0,
        reserved2: 0,
    })
    .map(|_| ())
}

fn protect(mem: &GuestMemory, gfn: u64, pages: u64, on: bool) -> Result<(), MemoryError> {
    mem.protect_ram(&ProtectRamInfo {
        pa_start: gfn * PAGE_SIZE,
        size: pages * PAGE_SIZE,
        flags: if on { 0 } else { 7 },
        reserved: 0,
    })
    .map(|_| ())
}

/// MAX_RAM_BLOCKS blocks register; one more, by ADD_RAMBLOCK, ALLOC_RAM or an implicit
/// STANDALONE block, is refused with LimitReached and changes nothing.
#[test]
fn ram_block_bound_exactly_at_the_limit_and_one_past() {
    let (fake, mem) = setup(HpaMode::Contiguous, false);
    for i in 0..MAX_RAM_BLOCKS as u64 {
        block(&mem, BLOCK_A + i * 2 * PAGE_SIZE, PAGE_SIZE);
    }
    assert_eq!(mem.snapshot().blocks.len(), MAX_RAM_BLOCKS);
    let limit = MemoryError::LimitReached(Limit::RamBlocks);
    refused(&mem, limit, || {
        mem.add_ramblock(&RamblockInfo {
            start_va: BLOCK_B,
            size: PAGE_SIZE,
            reserved: 0,
        })
    });
    refused(&mem, limit, || {
        mem.alloc_ram(&AllocRamInfo {
            size: PAGE_SIZE as u32,
            pad: 0,
            va: BLOCK_B,
        })
    });
    refused(&mem, limit, || set2(&mem, 0, PAGE_SIZE, BLOCK_B, 0x40));
    // A STANDALONE mapping inside an existing block makes no new block: allowed.
    set2(&mem, 0, PAGE_SIZE, BLOCK_A, 0x40).unwrap();
    teardown(&fake, mem);
}

/// Maps guest pages `0..n` one by one from BLOCK_A with alternating ROM flags, so no two
/// neighbours merge: `n` memslots.
fn fill_alternating(mem: &GuestMemory, n: u64) {
    for g in 0..n {
        set2(
            mem,
            g * PAGE_SIZE,
            PAGE_SIZE,
            BLOCK_A + g * PAGE_SIZE,
            (g % 2) as u32,
        )
        .unwrap();
    }
}

/// Alternating ROM flags keep neighbouring slots from merging: MAX_MEMSLOTS of them are
/// accepted, the next page is refused with nothing changed, and changes that do not grow the
/// set (re-flagging a page so that three slots merge, unmapping) still work at the limit.
#[test]
fn memslot_bound_exactly_at_the_limit_and_one_past() {
    let (fake, mem) = setup(HpaMode::Contiguous, false);
    let pages = MAX_MEMSLOTS as u64 + 8;
    block(&mem, BLOCK_A, pages * PAGE_SIZE);
    fill_alternating(&mem, MAX_MEMSLOTS as u64);
    assert_eq!(mem.slots().len(), MAX_MEMSLOTS);
    let g = MAX_MEMSLOTS as u64; // differs from its left neighbour's flag: a new slot
    refused(&mem, MemoryError::LimitReached(Limit::Memslots), || {
        set2(
            &mem,
            g * PAGE_SIZE,
            PAGE_SIZE,
            BLOCK_A + g * PAGE_SIZE,
            (g % 2) as u32,
        )
    });
    // Merging shrinks: page 1 re-flagged as RAM joins pages 0 and 2 into one slot.
    set2(&mem, PAGE_SIZE, PAGE_SIZE, BLOCK_A + PAGE_SIZE, 0).unwrap();
    assert_eq!(mem.slots().len(), MAX_MEMSLOTS - 2);
    assert_eq!(mem.slots()[0], slot(0, 3, BLOCK_A, BLOCK_A, false));
    // Now two more fit, and then the bound holds again.
    for g in [g, g + 1] {
        set2(
            &mem,
            g * PAGE_SIZE,
            PAGE_SIZE,
            BLOCK_A + g * PAGE_SIZE,
            (g % 2) as u32,
        )
        .unwrap();
    }
    refused(&mem, MemoryError::LimitReached(Limit::Memslots), || {
        set2(
            &mem,
            (g + 2) * PAGE_SIZE,
            PAGE_SIZE,
            BLOCK_A + (g + 2) * PAGE_SIZE,
            (g % 2) as u32,
        )
    });
    // Splitting a 3-page slot in its middle grows by two: refused at the limit.
    refused(&mem, MemoryError::LimitReached(Limit::Memslots), || {
        set2(&mem, PAGE_SIZE, PAGE_SIZE, BLOCK_A + PAGE_SIZE, 1)
    });
    unmap(&mem, 0, pages * PAGE_SIZE);
    assert!(mem.slots().is_empty());
    teardown(&fake, mem);
}

/// A storm of SET_RAMs with alternating ROM flags over random pages never grows the slots past
/// the bound; every refusal is LimitReached and changes nothing, the rest keep the set
/// canonical (no two neighbouring slots that could be one).
#[test]
fn alternating_rom_storm_stays_bounded() {
    let (fake, mem) = setup(HpaMode::Contiguous, false);
    let pages = 3 * MAX_MEMSLOTS as u64;
    block(&mem, BLOCK_A, pages * PAGE_SIZE);
    let mut rng = Rng(0x5eed);
    let mut refusals = 0;
    // A figure, not an assertion: the cost of one SET_RAM with thousands of slots.
    let t0 = std::time::Instant::now();
    fill_alternating(&mem, MAX_MEMSLOTS as u64);
    let per = t0.elapsed() / MAX_MEMSLOTS as u32;
    eprintln!("memslots: {MAX_MEMSLOTS} alternating SET_RAM2s from 0 to {MAX_MEMSLOTS} slots: {per:?} each (debug build)");
    unmap(&mem, 0, pages * PAGE_SIZE);
    for i in 0..4 * MAX_MEMSLOTS as u64 {
        let g = rng.below(pages);
        let before = mem.slots();
        match set2(
            &mem,
            g * PAGE_SIZE,
            PAGE_SIZE,
            BLOCK_A + g * PAGE_SIZE,
            (i % 2) as u32,
        ) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e, MemoryError::LimitReached(Limit::Memslots));
                assert_eq!(mem.slots(), before, "a refused SET_RAM changed the slots");
                refusals += 1;
            }
        }
        let slots = mem.slots();
        assert!(slots.len() <= MAX_MEMSLOTS);
        for w in slots.windows(2) {
            assert!(w[0].end_gfn <= w[1].start_gfn, "overlap {w:?}");
            let mergeable = w[0].end_gfn == w[1].start_gfn
                && w[0].rom == w[1].rom
                && w[0].hva_of(w[0].end_gfn) == w[1].hva;
            assert!(!mergeable, "not canonical: {w:?}");
        }
    }
    assert!(refusals > 0, "the storm reached the bound");
    teardown(&fake, mem);
}

/// MAX_PROTECTED_RANGES disjoint protected ranges are accepted; one more is refused, and so
/// is unprotecting the middle of a range (a split) at the limit; merging still works.
#[test]
fn protected_range_bound_exactly_at_the_limit_and_one_past() {
    let (fake, mem) = setup(HpaMode::Contiguous, false);
    let n = MAX_PROTECTED_RANGES as u64;
    let pages = 2 * n + 4;
    block(&mem, BLOCK_A, pages * PAGE_SIZE);
    map(&mem, 0, pages * PAGE_SIZE, BLOCK_A, 0);
    // Pages 0, 2, 4, ...: none adjacent, so none merge. The first is 3 pages (0..3) so that
    // its middle can be unprotected below; ranges then start at 4.
    protect(&mem, 0, 3, true).unwrap();
    for i in 1..n {
        protect(&mem, 2 * i + 2, 1, true).unwrap();
    }
    assert_eq!(mem.snapshot().protected.len(), MAX_PROTECTED_RANGES);
    let limit = MemoryError::LimitReached(Limit::ProtectedRanges);
    refused(&mem, limit, || protect(&mem, 2 * n + 3, 1, true));
    refused(&mem, limit, || protect(&mem, 1, 1, false));
    // Filling the gap between two ranges merges them (one fewer), then one more fits.
    protect(&mem, 5, 1, true).unwrap();
    protect(&mem, 2 * n + 3, 1, true).unwrap();
    assert_eq!(mem.snapshot().protected.len(), MAX_PROTECTED_RANGES);
    protect(&mem, 0, pages, false).unwrap();
    assert!(mem.snapshot().protected.is_empty());
    teardown(&fake, mem);
}

/// The quota (SET_MEMLIMIT's) counts the bytes of RAM blocks of every memory sharing it:
/// exactly at the limit is accepted, one page more refused with QuotaExceeded (HAXM's
/// -EINVAL) whether by ADD_RAMBLOCK, ALLOC_RAM or a STANDALONE mapping; unmapping a STANDALONE
/// block and destroying a memory give their bytes back.
#[test]
fn ram_quota_is_enforced_and_shared() {
    let fake = Fake::new(HpaMode::Contiguous);
    let quota = std::sync::Arc::new(RamQuota::new(4 * MB2));
    let a = GuestMemory::with_quota(&fake, false, quota.clone()).unwrap();
    let b = GuestMemory::with_quota(&fake, false, quota.clone()).unwrap();
    block(&a, BLOCK_A, 3 * MB2);
    block(&b, BLOCK_A, MB2 - PAGE_SIZE);
    set2(&b, 0, PAGE_SIZE, BLOCK_B, 0x40).unwrap(); // STANDALONE: exactly at the limit
    assert_eq!(quota.used(), 4 * MB2);
    let over = MemoryError::QuotaExceeded { bytes: PAGE_SIZE };
    assert!(
        over.is_invalid_argument(),
        "HAXM's quota refusal is -EINVAL"
    );
    refused(&a, over, || {
        a.add_ramblock(&RamblockInfo {
            start_va: BLOCK_B + MB2,
            size: PAGE_SIZE,
            reserved: 0,
        })
    });
    refused(&b, over, || {
        b.alloc_ram(&AllocRamInfo {
            size: PAGE_SIZE as u32,
            pad: 0,
            va: BLOCK_B + MB2,
        })
    });
    refused(&a, over, || set2(&a, MB2, PAGE_SIZE, BLOCK_B + MB2, 0x40));
    assert_eq!(quota.used(), 4 * MB2);
    // The STANDALONE block goes with its last mapping, and its page with it.
    assert_eq!(unmap(&b, 0, PAGE_SIZE), None);
    assert_eq!(quota.used(), 4 * MB2 - PAGE_SIZE);
    set2(&a, MB2, PAGE_SIZE, BLOCK_B + MB2, 0x40).unwrap();
    a.destroy(&fake);
    assert_eq!(quota.used(), MB2 - PAGE_SIZE);
    b.destroy(&fake);
    assert_eq!(quota.used(), 0);
    quota.set_limit(None);
    assert_eq!(quota.limit(), None);
}
