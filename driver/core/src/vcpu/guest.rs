//! Guest memory as the vCPU sees it: guest-physical reads and writes (for string IO and the
//! MMIO instruction fetch) and the guest page walk that turns a linear address into a
//! guest-physical one (Intel SDM Vol. 3A chapter 5 "Paging", 2023+ numbering: §5.3 32-bit,
//! §5.4 PAE, §5.5 4-level paging).

use core::ptr::NonNull;

use crate::memory::{EptAccess, GuestMemory, MemoryError, Resolution, Translation, PAGE_SIZE};
use crate::platform::Platform;

/// What a guest-physical access found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// RAM: the bytes were read or written.
    Ram,
    /// No RAM (MMIO), or a write to ROM: nothing was accessed.
    NotRam,
}

/// Guest-physical memory for one VM, as the run loop needs it.
///
/// `read`/`write` never cross a 4-KiB page (the callers split). Implemented for the VM's
/// [`GuestMemory`] through [`MappedGuestMemory`]; tests implement it over a plain buffer.
pub trait GuestMemoryAccess {
    /// Resolves an EPT violation (lazy mapping of RAM, or MMIO); see
    /// [`GuestMemory::handle_violation`].
    fn resolve(&self, gpa: u64, access: EptAccess) -> Result<Resolution, MemoryError>;

    /// Reads guest RAM at `gpa` (within one page).
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<Backing, MemoryError>;

    /// Writes guest RAM at `gpa` (within one page). ROM counts as [`Backing::NotRam`].
    fn write(&self, gpa: u64, data: &[u8]) -> Result<Backing, MemoryError>;
}

/// How the kernel reaches a translated guest page: a pointer to the byte at `t` that stays
/// valid while the page is pinned (bare metal: the identity-mapped `hpa`; Windows: the system
/// address of the pinned chunk's MDL). Called with the memory's lock held (it must not block).
pub type MapPage = fn(t: &Translation) -> Option<NonNull<u8>>;

/// [`GuestMemoryAccess`] over a VM's [`GuestMemory`].
pub struct MappedGuestMemory<'a, P: Platform> {
    mem: &'a GuestMemory,
    platform: &'a P,
    map: MapPage,
}

impl<'a, P: Platform> MappedGuestMemory<'a, P> {
    /// Pairs the memory with the platform and the page mapper.
    ///
    /// # Safety
    /// For every translation the memory hands out, `map` returns either `None` or a pointer to
    /// `PAGE_SIZE - (t.hpa % PAGE_SIZE)` bytes of kernel-accessible memory backing exactly
    /// those guest bytes, valid for reads and writes while the page stays pinned (at least
    /// until the mapping changes and [`GuestMemory::invept_done`] ran).
    pub unsafe fn new(mem: &'a GuestMemory, platform: &'a P, map: MapPage) -> Self {
        MappedGuestMemory { mem, platform, map }
    }

    /// Copies between guest page `gpa` and the kernel with `copy(page, len)` inside
    /// [`GuestMemory::with_translation`]: the copy runs under the memory lock, so a concurrent
    /// unmap cannot unpin the page before the copy is over (the argument is there).
    fn copy(
        &self,
        gpa: u64,
        len: usize,
        write: bool,
        copy: impl FnOnce(NonNull<u8>),
    ) -> Result<Backing, MemoryError> {
        if (gpa % PAGE_SIZE) as usize + len > PAGE_SIZE as usize {
            return Err(MemoryError::RangeOverflow);
        }
        let map = self.map;
        self.mem.with_translation(self.platform, gpa, |t| {
            let Some(t) = t else {
                return Backing::NotRam;
            };
            if write && !t.writable {
                return Backing::NotRam;
            }
            match map(&t) {
                Some(p) => {
                    copy(p);
                    Backing::Ram
                }
                None => Backing::NotRam,
            }
        })
    }
}

impl<P: Platform> GuestMemoryAccess for MappedGuestMemory<'_, P> {
    fn resolve(&self, gpa: u64, access: EptAccess) -> Result<Resolution, MemoryError> {
        self.mem.handle_violation(self.platform, gpa, access)
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<Backing, MemoryError> {
        let len = buf.len();
        self.copy(gpa, len, false, |p| {
            // SAFETY: by the contract of `new`, `p` maps the rest of the page (checked by
            // `copy` to hold `len` bytes) while the page is pinned, which it stays for this
            // closure (it runs under the memory lock); guest memory may change under us
            // (other vCPUs), which a byte copy tolerates.
            unsafe { core::ptr::copy_nonoverlapping(p.as_ptr(), buf.as_mut_ptr(), len) };
        })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<Backing, MemoryError> {
        self.copy(gpa, data.len(), true, |p| {
            // SAFETY: as in `read`; `copy` checked that the page is writable RAM.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
        })
    }
}

/// Why a linear address could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// A paging-structure entry on the way is not present (the guest would take #PF).
    NotPresent {
        /// The linear address.
        linear: u64,
    },
    /// A paging structure lies outside RAM.
    TableNotRam {
        /// Its guest-physical address.
        gpa: u64,
    },
    /// The memory layer failed.
    Memory(MemoryError),
}

impl From<MemoryError> for WalkError {
    fn from(e: MemoryError) -> Self {
        WalkError::Memory(e)
    }
}

/// The control registers that select the paging mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingMode {
    /// CR0 (the guest's value).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 (the guest's value).
    pub cr4: u64,
    /// IA32_EFER.LMA.
    pub lma: bool,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const PRESENT: u64 = 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

fn read_entry<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    gpa: u64,
    wide: bool,
) -> Result<u64, WalkError> {
    let mut b = [0u8; 8];
    let n = if wide { 8 } else { 4 };
    match mem.read(gpa, &mut b[..n])? {
        Backing::Ram => Ok(u64::from_le_bytes(b)),
        Backing::NotRam => Err(WalkError::TableNotRam { gpa }),
    }
}

/// Translates a linear address through the guest's page tables (no permission checks: the
/// instruction that exited already passed them, or the guest would have faulted first).
/// Without CR0.PG the linear address is the physical one (real mode, flat protected mode).
pub fn guest_walk<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    linear: u64,
) -> Result<u64, WalkError> {
    if mode.cr0 & CR0_PG == 0 {
        return Ok(linear & 0xffff_ffff);
    }
    let fault = WalkError::NotPresent { linear };
    if mode.lma {
        // 4-level paging (SDM §5.5): PML4 → PDPT (1 GiB pages) → PD (2 MiB) → PT.
        let mut table = mode.cr3 & ADDR;
        for level in (1..=4u32).rev() {
            let index = (linear >> (12 + 9 * (level - 1))) & 0x1ff;
            let e = read_entry(mem, table + index * 8, true)?;
            if e & PRESENT == 0 {
                return Err(fault);
            }
            if (level == 3 || level == 2) && e & PS != 0 {
                let span = 1u64 << (12 + 9 * (level - 1));
                return Ok((e & ADDR & !(span - 1)) | (linear & (span - 1)));
            }
            table = e & ADDR;
        }
        return Ok(table | (linear & 0xfff));
    }
    let linear = linear & 0xffff_ffff;
    if mode.cr4 & CR4_PAE != 0 {
        // PAE (SDM §5.4): 4 PDPTEs at CR3[31:5], then PD (2 MiB pages) and PT.
        let pdpte = read_entry(mem, (mode.cr3 & 0xffff_ffe0) + (linear >> 30) * 8, true)?;
        if pdpte & PRESENT == 0 {
            return Err(fault);
        }
        let pde = read_entry(mem, (pdpte & ADDR) + ((linear >> 21) & 0x1ff) * 8, true)?;
        if pde & PRESENT == 0 {
            return Err(fault);
        }
        if pde & PS != 0 {
            return Ok((pde & ADDR & !0x1f_ffff) | (linear & 0x1f_ffff));
        }
        let pte = read_entry(mem, (pde & ADDR) + ((linear >> 12) & 0x1ff) * 8, true)?;
        if pte & PRESENT == 0 {
            return Err(fault);
        }
        return Ok((pte & ADDR) | (linear & 0xfff));
    }
    // 32-bit paging (SDM §5.3): PD → PT, 4-MiB pages with CR4.PSE (bits 20:13 of a 4-MiB PDE
    // hold physical-address bits 39:32, PSE-36).
    let pde = read_entry(mem, (mode.cr3 & 0xffff_f000) + (linear >> 22) * 4, false)?;
    if pde & PRESENT == 0 {
        return Err(fault);
    }
    if mode.cr4 & CR4_PSE != 0 && pde & PS != 0 {
        let high = ((pde >> 13) & 0xff) << 32;
        return Ok(high | (pde & 0xffc0_0000) | (linear & 0x3f_ffff));
    }
    let pte = read_entry(
        mem,
        (pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4,
        false,
    )?;
    if pte & PRESENT == 0 {
        return Err(fault);
    }
    Ok((pte & 0xffff_f000) | (linear & 0xfff))
}

/// Copies guest memory at linear address `linear` into `buf`, page by page. Returns how many
/// bytes were RAM from the start (a page that is not RAM, or not mapped, stops the copy).
pub fn read_linear<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    linear: u64,
    buf: &mut [u8],
) -> Result<usize, WalkError> {
    let mut done = 0;
    while done < buf.len() {
        let la = linear.wrapping_add(done as u64);
        let in_page = (PAGE_SIZE - la % PAGE_SIZE) as usize;
        let n = in_page.min(buf.len() - done);
        let gpa = guest_walk(mem, mode, la)?;
        if mem.read(gpa, &mut buf[done..done + n])? == Backing::NotRam {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Copies `data` into guest memory at linear address `linear`, page by page; returns how many
/// bytes reached RAM (the rest hit MMIO or ROM and were dropped).
pub fn write_linear<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    linear: u64,
    data: &[u8],
) -> Result<usize, WalkError> {
    let mut done = 0;
    let mut ram = 0;
    while done < data.len() {
        let la = linear.wrapping_add(done as u64);
        let in_page = (PAGE_SIZE - la % PAGE_SIZE) as usize;
        let n = in_page.min(data.len() - done);
        let gpa = guest_walk(mem, mode, la)?;
        if mem.write(gpa, &data[done..done + n])? == Backing::Ram {
            ram += n;
        }
        done += n;
    }
    Ok(ram)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    struct Flat(RefCell<Vec<u8>>);

    impl GuestMemoryAccess for Flat {
        fn resolve(&self, _: u64, _: EptAccess) -> Result<Resolution, MemoryError> {
            Ok(Resolution::Mapped)
        }
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<Backing, MemoryError> {
            let m = self.0.borrow();
            let s = gpa as usize;
            match m.get(s..s + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    Ok(Backing::Ram)
                }
                None => Ok(Backing::NotRam),
            }
        }
        fn write(&self, gpa: u64, data: &[u8]) -> Result<Backing, MemoryError> {
            let mut m = self.0.borrow_mut();
            let s = gpa as usize;
            match m.get_mut(s..s + data.len()) {
                Some(dst) => {
                    dst.copy_from_slice(data);
                    Ok(Backing::Ram)
                }
                None => Ok(Backing::NotRam),
            }
        }
    }

    fn put(m: &Flat, gpa: u64, v: u64, wide: bool) {
        let b = v.to_le_bytes();
        m.write(gpa, &b[..if wide { 8 } else { 4 }]).unwrap();
    }

    #[test]
    fn walks_each_paging_mode() {
        let m = Flat(RefCell::new(vec![0u8; 0x40_0000]));
        // 4-level: PML4 at 0x1000 → PDPT 0x2000 → PD 0x3000 → PT 0x4000 → page 0x9000.
        put(&m, 0x1000, 0x2003, true);
        put(&m, 0x2000, 0x3003, true);
        put(&m, 0x3000, 0x4003, true);
        put(&m, 0x4000 + 5 * 8, 0x9003, true);
        // and a 2 MiB page at PD index 1 → 0x20_0000.
        put(&m, 0x3008, 0x20_0083, true);
        let long = PagingMode {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            lma: true,
        };
        assert_eq!(guest_walk(&m, &long, 0x5123), Ok(0x9123));
        assert_eq!(guest_walk(&m, &long, 0x20_1234), Ok(0x20_1234));
        assert_eq!(
            guest_walk(&m, &long, 0x6000),
            Err(WalkError::NotPresent { linear: 0x6000 })
        );
        // PAE: PDPT at 0x5000 (index 0 → PD 0x3000 reused).
        put(&m, 0x5000, 0x3001, true);
        let pae = PagingMode {
            cr0: CR0_PG | 1,
            cr3: 0x5000,
            cr4: CR4_PAE,
            lma: false,
        };
        assert_eq!(guest_walk(&m, &pae, 0x5abc), Ok(0x9abc));
        // 32-bit: PD at 0x6000, PDE 0 → PT 0x7000, PTE 3 → 0xa000; PDE 1 is a 4 MiB page.
        put(&m, 0x6000, 0x7003, false);
        put(&m, 0x7000 + 3 * 4, 0xa003, false);
        put(&m, 0x6004, 0x0040_0083, false);
        let p32 = PagingMode {
            cr0: CR0_PG | 1,
            cr3: 0x6000,
            cr4: CR4_PSE,
            lma: false,
        };
        assert_eq!(guest_walk(&m, &p32, 0x3456), Ok(0xa456));
        assert_eq!(guest_walk(&m, &p32, 0x0040_0010), Ok(0x0040_0010));
        // No paging: identity.
        let real = PagingMode {
            cr0: 0x10,
            cr3: 0,
            cr4: 0,
            lma: false,
        };
        assert_eq!(guest_walk(&m, &real, 0xf_fff0), Ok(0xf_fff0));
        // Copies cross pages and stop at non-RAM.
        m.write(0x3f_fffe, &[1, 2]).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(read_linear(&m, &real, 0x3f_fffe, &mut b), Ok(2));
        assert_eq!(&b[..2], &[1, 2]);
    }
}
