//! Guest memory as the vCPU sees it: guest-physical reads and writes (for string IO and the
//! MMIO instruction fetch) and the guest page walk that turns a linear address into a
//! guest-physical one (Intel SDM Vol. 3A chapter 5 "Paging", 2023+ numbering: §5.3 32-bit,
//! §5.4 PAE, §5.5 4-level paging).

use crate::vcpu::bits::{CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP};
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
    /// The guest's paging refuses the access: the guest takes #PF with this error code and
    /// CR2 = `linear` (SDM Vol. 3A §5.7, 2023+ numbering).
    PageFault {
        /// The linear address (CR2).
        linear: u64,
        /// The #PF error code: P (bit 0), W/R (1), U/S (2), RSVD (3), I/D (4).
        code: u32,
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

/// The control registers that select the paging mode and its permission rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingMode {
    /// CR0 (the guest's value: PG, WP).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 (the guest's value: PSE, PAE, SMEP, SMAP).
    pub cr4: u64,
    /// IA32_EFER.LMA.
    pub lma: bool,
    /// IA32_EFER.NXE.
    pub nxe: bool,
}

/// What an access does, for the permission checks of SDM Vol. 3A §5.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// One access by the guest: its kind and privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// A user-mode access (CPL 3).
    pub user: bool,
    /// RFLAGS.AC (SMAP lets explicit supervisor data accesses reach user pages when set).
    pub ac: bool,
}

impl Access {
    /// A supervisor read (page-table reads by the walker itself are not checked).
    pub const SUPERVISOR_READ: Access = Access {
        kind: AccessKind::Read,
        user: false,
        ac: false,
    };
}

const PRESENT: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const PF_P: u32 = 1;
const PF_W: u32 = 1 << 1;
const PF_U: u32 = 1 << 2;
const PF_RSVD: u32 = 1 << 3;
const PF_I: u32 = 1 << 4;

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

/// The rights the entries of one walk grant together (SDM Vol. 3A §5.6: R/W and U/S must be 1
/// at every level, XD at any level forbids fetches).
struct Rights {
    rw: bool,
    us: bool,
    xd: bool,
}

impl Rights {
    fn new() -> Rights {
        Rights {
            rw: true,
            us: true,
            xd: false,
        }
    }

    fn add(&mut self, e: u64, wide: bool) {
        self.rw &= e & RW != 0;
        self.us &= e & US != 0;
        self.xd |= wide && e & XD != 0;
    }
}

/// The #PF error code for `access` in `mode`, with P and RSVD as given (SDM Vol. 3A §5.7).
fn pf_code(mode: &PagingMode, access: Access, present: bool, rsvd: bool) -> u32 {
    let mut code = 0;
    if present {
        code |= PF_P;
    }
    if access.kind == AccessKind::Write {
        code |= PF_W;
    }
    if access.user {
        code |= PF_U;
    }
    if rsvd {
        code |= PF_RSVD | PF_P;
    }
    // I/D is reported for fetches when XD exists in the mode or SMEP is on.
    let xd_mode = mode.nxe && (mode.lma || mode.cr4 & CR4_PAE != 0);
    if access.kind == AccessKind::Fetch && (xd_mode || mode.cr4 & CR4_SMEP != 0) {
        code |= PF_I;
    }
    code
}

/// Translates a linear address through the guest's page tables and checks `access` against
/// them as the CPU would (SDM Vol. 3A §5.6 access rights, §5.7 #PF): not-present entries,
/// reserved bits (XD without EFER.NXE, PS in a PML4E, the reserved low bits of large-page
/// frames), U/S, R/W with CR0.WP, XD, SMEP and SMAP. Accessed/dirty bits are not set (the
/// accesses this serves are the host's copies for IO string instructions and the MMIO
/// instruction fetch; the guest's own accesses set them). Without CR0.PG the linear address is
/// the physical one.
pub fn guest_walk<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    linear: u64,
    access: Access,
) -> Result<u64, WalkError> {
    if mode.cr0 & CR0_PG == 0 {
        return Ok(linear & 0xffff_ffff);
    }
    let not_present = WalkError::PageFault {
        linear,
        code: pf_code(mode, access, false, false),
    };
    let reserved = WalkError::PageFault {
        linear,
        code: pf_code(mode, access, true, true),
    };
    let mut rights = Rights::new();
    let (gpa, wide) = if mode.lma {
        // 4-level paging (SDM §5.5): PML4 → PDPT (1 GiB pages) → PD (2 MiB) → PT; with
        // CR4.LA57, 5-level paging puts a PML5 above (one more 9-bit index, bits 56:48).
        let top = if mode.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        let mut table = mode.cr3 & ADDR;
        let mut out = None;
        for level in (1..=top).rev() {
            let index = (linear >> (12 + 9 * (level - 1))) & 0x1ff;
            let e = read_entry(mem, table + index * 8, true)?;
            if e & PRESENT == 0 {
                return Err(not_present);
            }
            if (!mode.nxe && e & XD != 0) || (level >= 4 && e & PS != 0) {
                return Err(reserved);
            }
            rights.add(e, true);
            if (level == 3 || level == 2) && e & PS != 0 {
                let span = 1u64 << (12 + 9 * (level - 1));
                // Bits 12 (PAT) .. span-1 of a large-page entry: PAT, then reserved.
                if e & (span - 1) & !0x1fff != 0 {
                    return Err(reserved);
                }
                out = Some((e & ADDR & !(span - 1)) | (linear & (span - 1)));
                break;
            }
            table = e & ADDR;
        }
        (out.unwrap_or(table | (linear & 0xfff)), true)
    } else if mode.cr4 & CR4_PAE != 0 {
        // PAE (SDM §5.4): 4 PDPTEs at CR3[31:5] (no rights of their own), then PD and PT.
        let linear = linear & 0xffff_ffff;
        let pdpte = read_entry(mem, (mode.cr3 & 0xffff_ffe0) + (linear >> 30) * 8, true)?;
        if pdpte & PRESENT == 0 {
            return Err(not_present);
        }
        if pdpte & (0x1e6 | XD) != 0 {
            return Err(reserved);
        }
        let pde = read_entry(mem, (pdpte & ADDR) + ((linear >> 21) & 0x1ff) * 8, true)?;
        if pde & PRESENT == 0 {
            return Err(not_present);
        }
        if !mode.nxe && pde & XD != 0 {
            return Err(reserved);
        }
        rights.add(pde, true);
        if pde & PS != 0 {
            if pde & 0x1f_e000 != 0 {
                return Err(reserved);
            }
            ((pde & ADDR & !0x1f_ffff) | (linear & 0x1f_ffff), true)
        } else {
            let pte = read_entry(mem, (pde & ADDR) + ((linear >> 12) & 0x1ff) * 8, true)?;
            if pte & PRESENT == 0 {
                return Err(not_present);
            }
            if !mode.nxe && pte & XD != 0 {
                return Err(reserved);
            }
            rights.add(pte, true);
            ((pte & ADDR) | (linear & 0xfff), true)
        }
    } else {
        // 32-bit paging (SDM §5.3): PD → PT, 4-MiB pages with CR4.PSE (bits 20:13 of a 4-MiB
        // PDE hold physical-address bits 39:32, PSE-36; bit 21 is reserved).
        let linear = linear & 0xffff_ffff;
        let pde = read_entry(mem, (mode.cr3 & 0xffff_f000) + (linear >> 22) * 4, false)?;
        if pde & PRESENT == 0 {
            return Err(not_present);
        }
        rights.add(pde, false);
        if mode.cr4 & CR4_PSE != 0 && pde & PS != 0 {
            if pde & (1 << 21) != 0 {
                return Err(reserved);
            }
            let high = ((pde >> 13) & 0xff) << 32;
            (high | (pde & 0xffc0_0000) | (linear & 0x3f_ffff), false)
        } else {
            let pte = read_entry(
                mem,
                (pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4,
                false,
            )?;
            if pte & PRESENT == 0 {
                return Err(not_present);
            }
            rights.add(pte, false);
            ((pte & 0xffff_f000) | (linear & 0xfff), false)
        }
    };
    let denied = WalkError::PageFault {
        linear,
        code: pf_code(mode, access, true, false),
    };
    let wp = mode.cr0 & CR0_WP != 0;
    let ok = match access.kind {
        _ if access.user && !rights.us => false,
        AccessKind::Write if !rights.rw && (access.user || wp) => false,
        AccessKind::Fetch if wide && mode.nxe && rights.xd => false,
        // SMEP: no supervisor fetch from a user page.
        AccessKind::Fetch if !access.user && rights.us && mode.cr4 & CR4_SMEP != 0 => false,
        // SMAP: no supervisor data access to a user page unless RFLAGS.AC.
        AccessKind::Read | AccessKind::Write
            if !access.user && rights.us && mode.cr4 & CR4_SMAP != 0 && !access.ac =>
        {
            false
        }
        _ => true,
    };
    if ok {
        Ok(gpa)
    } else {
        Err(denied)
    }
}

/// Copies guest memory at linear address `linear` into `buf`, page by page, with `access`'s
/// rights. Returns how many bytes were RAM from the start (a page that is not RAM stops the
/// copy); a walk the guest's paging refuses is the error.
pub fn read_linear<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    linear: u64,
    buf: &mut [u8],
    access: Access,
) -> Result<usize, WalkError> {
    let (n, fault) = fetch_linear(mem, mode, linear, buf, access);
    match fault {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// As [`read_linear`], but a refused page after the first one does not lose the bytes before
/// it: returns the bytes copied and, if the copy stopped at a walk error, the error. The
/// instruction fetch needs that: an instruction that ends before an unmapped page must
/// decode, and only one that runs into it faults (on its first byte there).
pub fn fetch_linear<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    linear: u64,
    buf: &mut [u8],
    access: Access,
) -> (usize, Option<WalkError>) {
    let mut done = 0;
    while done < buf.len() {
        let la = linear.wrapping_add(done as u64);
        let in_page = (PAGE_SIZE - la % PAGE_SIZE) as usize;
        let n = in_page.min(buf.len() - done);
        let gpa = match guest_walk(mem, mode, la, access) {
            Ok(g) => g,
            Err(e) => return (done, Some(e)),
        };
        match mem.read(gpa, &mut buf[done..done + n]) {
            Ok(Backing::Ram) => done += n,
            Ok(Backing::NotRam) => break,
            Err(e) => return (done, Some(e.into())),
        }
    }
    (done, None)
}

/// Copies `data` into guest memory at linear address `linear`, page by page, with `access`'s
/// rights; returns how many bytes reached RAM (the rest hit MMIO or ROM and were dropped).
/// Every page is walked before any byte is written, so a refused walk writes nothing (the
/// instruction faults as a whole, as hardware's would).
pub fn write_linear<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    linear: u64,
    data: &[u8],
    access: Access,
) -> Result<usize, WalkError> {
    probe_linear(mem, mode, linear, data.len(), access)?;
    let mut done = 0;
    let mut ram = 0;
    while done < data.len() {
        let la = linear.wrapping_add(done as u64);
        let in_page = (PAGE_SIZE - la % PAGE_SIZE) as usize;
        let n = in_page.min(data.len() - done);
        let gpa = guest_walk(mem, mode, la, access)?;
        if mem.write(gpa, &data[done..done + n])? == Backing::Ram {
            ram += n;
        }
        done += n;
    }
    Ok(ram)
}

/// Walks every page of `len` bytes at `linear` with `access`'s rights, touching no data.
pub fn probe_linear<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    linear: u64,
    len: usize,
    access: Access,
) -> Result<(), WalkError> {
    let mut done = 0;
    while done < len {
        let la = linear.wrapping_add(done as u64);
        let in_page = (PAGE_SIZE - la % PAGE_SIZE) as usize;
        guest_walk(mem, mode, la, access)?;
        done += in_page.min(len - done);
    }
    Ok(())
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

    const R0: Access = Access::SUPERVISOR_READ;

    fn mode(cr0: u64, cr3: u64, cr4: u64, lma: bool, nxe: bool) -> PagingMode {
        PagingMode {
            cr0,
            cr3,
            cr4,
            lma,
            nxe,
        }
    }

    fn acc(kind: AccessKind, user: bool) -> Access {
        Access {
            kind,
            user,
            ac: false,
        }
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
        let long = mode(CR0_PG | 1, 0x1000, CR4_PAE, true, false);
        assert_eq!(guest_walk(&m, &long, 0x5123, R0), Ok(0x9123));
        assert_eq!(guest_walk(&m, &long, 0x20_1234, R0), Ok(0x20_1234));
        assert_eq!(
            guest_walk(&m, &long, 0x6000, R0),
            Err(WalkError::PageFault {
                linear: 0x6000,
                code: 0
            })
        );
        // PAE: PDPT at 0x5000 (index 0 → PD 0x3000 reused).
        put(&m, 0x5000, 0x3001, true);
        let pae = mode(CR0_PG | 1, 0x5000, CR4_PAE, false, false);
        assert_eq!(guest_walk(&m, &pae, 0x5abc, R0), Ok(0x9abc));
        // 32-bit: PD at 0x6000, PDE 0 → PT 0x7000, PTE 3 → 0xa000; PDE 1 is a 4 MiB page.
        put(&m, 0x6000, 0x7003, false);
        put(&m, 0x7000 + 3 * 4, 0xa003, false);
        put(&m, 0x6004, 0x0040_0083, false);
        let p32 = mode(CR0_PG | 1, 0x6000, CR4_PSE, false, false);
        assert_eq!(guest_walk(&m, &p32, 0x3456, R0), Ok(0xa456));
        assert_eq!(guest_walk(&m, &p32, 0x0040_0010, R0), Ok(0x0040_0010));
        // No paging: identity.
        let real = mode(0x10, 0, 0, false, false);
        assert_eq!(guest_walk(&m, &real, 0xf_fff0, R0), Ok(0xf_fff0));
        // Copies cross pages and stop at non-RAM.
        m.write(0x3f_fffe, &[1, 2]).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(read_linear(&m, &real, 0x3f_fffe, &mut b, R0), Ok(2));
        assert_eq!(&b[..2], &[1, 2]);
    }

    /// SDM Vol. 3A §5.6-5.7: U/S, R/W with CR0.WP, XD, SMEP, SMAP, reserved bits, and the
    /// error codes of each refusal.
    #[test]
    fn permissions_and_error_codes() {
        let m = Flat(RefCell::new(vec![0u8; 0x40_0000]));
        // 4-level tables, user-accessible down to the PT; PTEs: 0 → user RW, 1 → user RO,
        // 2 → supervisor RW, 3 → user RW XD, 4 → XD set without NXE (reserved).
        put(&m, 0x1000, 0x2007, true);
        put(&m, 0x2000, 0x3007, true);
        put(&m, 0x3000, 0x4007, true);
        put(&m, 0x4000, 0x9007, true);
        put(&m, 0x4008, 0xa005, true);
        put(&m, 0x4010, 0xb003, true);
        put(&m, 0x4018, (1 << 63) | 0xc007, true);
        let nx = mode(CR0_PG | 1, 0x1000, CR4_PAE, true, true);
        let wp = mode(CR0_PG | CR0_WP | 1, 0x1000, CR4_PAE, true, true);
        let pf = |linear, code| Err(WalkError::PageFault { linear, code });
        use AccessKind::*;
        assert_eq!(guest_walk(&m, &nx, 0x0010, acc(Write, true)), Ok(0x9010));
        assert_eq!(guest_walk(&m, &nx, 0x1010, acc(Write, true)), pf(0x1010, 7));
        // A supervisor write to a read-only page: allowed without CR0.WP, refused with it.
        assert_eq!(guest_walk(&m, &nx, 0x1010, acc(Write, false)), Ok(0xa010));
        assert_eq!(
            guest_walk(&m, &wp, 0x1010, acc(Write, false)),
            pf(0x1010, 3)
        );
        assert_eq!(guest_walk(&m, &nx, 0x2000, acc(Read, true)), pf(0x2000, 5));
        assert_eq!(guest_walk(&m, &nx, 0x2000, acc(Read, false)), Ok(0xb000));
        assert_eq!(
            guest_walk(&m, &nx, 0x3000, acc(Fetch, true)),
            pf(0x3000, 0x15)
        );
        assert_eq!(guest_walk(&m, &nx, 0x3000, acc(Read, true)), Ok(0xc000));
        // Not present, user write: P=0, W, U.
        assert_eq!(guest_walk(&m, &nx, 0x5000, acc(Write, true)), pf(0x5000, 6));
        // XD without EFER.NXE is a reserved bit: P and RSVD.
        let no_nx = mode(CR0_PG | 1, 0x1000, CR4_PAE, true, false);
        assert_eq!(
            guest_walk(&m, &no_nx, 0x3000, acc(Read, false)),
            pf(0x3000, 9)
        );
        // SMEP: no supervisor fetch from a user page; SMAP: no supervisor read unless AC.
        let smep = mode(
            CR0_PG | 1,
            0x1000,
            CR4_PAE | CR4_SMEP | CR4_SMAP,
            true,
            true,
        );
        assert_eq!(
            guest_walk(&m, &smep, 0x0000, acc(Fetch, false)),
            pf(0, 0x11)
        );
        assert_eq!(guest_walk(&m, &smep, 0x0000, acc(Read, false)), pf(0, 1));
        let ac = Access {
            kind: Read,
            user: false,
            ac: true,
        };
        assert_eq!(guest_walk(&m, &smep, 0x0000, ac), Ok(0x9000));
        // A write refused on the second page writes nothing on the first.
        m.write(0x9ffe, &[0xaa, 0xbb]).unwrap();
        assert_eq!(
            write_linear(&m, &wp, 0x0ffe, &[1, 2, 3, 4], acc(Write, true)),
            Err(WalkError::PageFault {
                linear: 0x1000,
                code: 7
            })
        );
        let mut b = [0u8; 2];
        m.read(0x9ffe, &mut b).unwrap();
        assert_eq!(b, [0xaa, 0xbb]);
        // A fetch keeps the bytes before a refused page.
        let mut f = [0u8; 6];
        let (n, fault) = fetch_linear(&m, &nx, 0x2ffd, &mut f, acc(Fetch, true));
        assert_eq!(n, 0, "supervisor page refused at once");
        assert!(fault.is_some());
        let (n, fault) = fetch_linear(&m, &nx, 0x0ffd, &mut f, acc(Fetch, true));
        assert_eq!((n, fault), (6, None));
        let (n, fault) = fetch_linear(&m, &nx, 0x1ffd, &mut f, acc(Fetch, true));
        assert_eq!(n, 3);
        assert_eq!(
            fault,
            Some(WalkError::PageFault {
                linear: 0x2000,
                code: 0x15
            })
        );
    }

    /// CR4.LA57: five levels, the PML5 index from bits 56:48 (found by the `pagewalk` fuzzer:
    /// the walk used to take four).
    #[test]
    fn five_level_paging() {
        let m = Flat(RefCell::new(vec![0u8; 0x40_0000]));
        // PML5 0x1000 (entry 1: bit 48) → PML4 0x2000 → PDPT 0x3000 → PD 0x4000 → PT 0x5000.
        put(&m, 0x1008, 0x2003, true);
        put(&m, 0x2000, 0x3003, true);
        put(&m, 0x3000, 0x4003, true);
        put(&m, 0x4000, 0x5003, true);
        put(&m, 0x5000 + 7 * 8, 0x9003, true);
        let la57 = mode(CR0_PG | 1, 0x1000, CR4_PAE | CR4_LA57, true, false);
        assert_eq!(guest_walk(&m, &la57, (1 << 48) | 0x7123, R0), Ok(0x9123));
        assert!(
            guest_walk(&m, &la57, 0x7123, R0).is_err(),
            "PML5 entry 0 is empty"
        );
    }
}
