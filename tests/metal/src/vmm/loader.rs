//! The multiboot (v1) loader: the header, the image (a.out kludge or ELF32 PT_LOAD segments),
//! and the multiboot information structure with the command line, modules and memory map.
//!
//! Source: the Multiboot Specification 0.6.96, §3.1 (the OS image and its header), §3.2 (the
//! machine state) and §3.3 (the boot information format). Every value comes from a file the
//! user handed us, so everything is checked with checked arithmetic and `get`, never indexed.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The header's magic (§3.1.2).
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// What the loader puts in EAX (§3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header lies in the first 8192 bytes, 32-bit aligned (§3.1.1).
const HEADER_SEARCH: usize = 8192;

/// Header flags 0-15 are requirements: a loader that does not know one must refuse (§3.1.2).
/// Known here: bit 0 (page-align modules: we always do) and bit 1 (memory information:
/// always given).
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMINFO: u32 = 1 << 1;
const FLAG_VIDEO: u32 = 1 << 2;
/// Bit 16: the address fields of the header are valid (the "a.out kludge").
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;

/// Info flags (§3.3).
const INFO_MEM: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// One piece of the image to place in guest RAM.
pub struct Segment<'a> {
    /// Guest-physical load address.
    pub gpa: u64,
    /// Bytes from the file.
    pub data: &'a [u8],
    /// Size in memory (≥ `data.len()`): the rest is zeroed (bss).
    pub memsz: u64,
}

/// A parsed multiboot image.
pub struct Image<'a> {
    /// The header's flags.
    pub flags: u32,
    /// Where EIP starts.
    pub entry: u32,
    /// What to copy.
    pub segments: Vec<Segment<'a>>,
    /// Whether the a.out kludge fields were used (else ELF32).
    pub aout: bool,
}

impl Image<'_> {
    /// One past the highest byte any segment occupies.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.gpa.saturating_add(s.memsz))
            .max()
            .unwrap_or(0)
    }
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, String> {
    b.get(off..off.checked_add(2).ok_or("offset overflow")?)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| format!("file truncated at {off:#x}"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, String> {
    b.get(off..off.checked_add(4).ok_or("offset overflow")?)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("file truncated at {off:#x}"))
}

fn usize_of(v: u32) -> usize {
    // Lossless: the kernel is 64-bit.
    v as usize
}

/// Finds and checks the header; returns its offset in the file and its flags.
fn find_header(file: &[u8]) -> Result<(usize, u32), String> {
    let limit = file.len().min(HEADER_SEARCH);
    let mut off = 0;
    while off + 12 <= limit {
        if u32_at(file, off)? == HEADER_MAGIC {
            let flags = u32_at(file, off + 4)?;
            let checksum = u32_at(file, off + 8)?;
            // magic + flags + checksum must be 0 mod 2^32 (§3.1.2).
            if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
                return Err(format!(
                    "multiboot header at {off:#x}: checksum {checksum:#x} does not match flags {flags:#x}"
                ));
            }
            return Ok((off, flags));
        }
        off += 4;
    }
    Err(String::from(
        "no multiboot (v1) header (magic 0x1BADB002) in the first 8 KiB",
    ))
}

/// Parses the image: the header, then the a.out-kludge fields (flag 16) or the ELF32
/// program headers.
pub fn parse(file: &[u8]) -> Result<Image<'_>, String> {
    let (hdr, flags) = find_header(file)?;
    if flags & FLAG_VIDEO != 0 {
        return Err(String::from(
            "the image requires a video mode (header flag 2): this VMM has no display",
        ));
    }
    let unknown = flags & 0xFFFF & !(FLAG_PAGE_ALIGN | FLAG_MEMINFO | FLAG_VIDEO);
    if unknown != 0 {
        return Err(format!(
            "the image requires unknown features (header flags {unknown:#x}, §3.1.2)"
        ));
    }
    if flags & FLAG_AOUT_KLUDGE != 0 {
        parse_aout(file, hdr, flags)
    } else {
        parse_elf32(file, flags)
    }
}

/// The a.out kludge (§3.1.3): header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
fn parse_aout(file: &[u8], hdr: usize, flags: u32) -> Result<Image<'_>, String> {
    let header_addr = u32_at(file, hdr + 12)?;
    let load_addr = u32_at(file, hdr + 16)?;
    let load_end = u32_at(file, hdr + 20)?;
    let bss_end = u32_at(file, hdr + 24)?;
    let entry = u32_at(file, hdr + 28)?;
    // The file offset of load_addr: the header's offset less (header_addr - load_addr).
    let back = header_addr
        .checked_sub(load_addr)
        .ok_or("a.out kludge: header_addr below load_addr")?;
    let start = hdr
        .checked_sub(usize_of(back))
        .ok_or("a.out kludge: load_addr lies before the file's start")?;
    // load_end_addr 0: the text and data run to the end of the file.
    let len = if load_end == 0 {
        file.len() - start
    } else {
        usize_of(
            load_end
                .checked_sub(load_addr)
                .ok_or("a.out kludge: load_end_addr below load_addr")?,
        )
    };
    let data = file
        .get(
            start
                ..start
                    .checked_add(len)
                    .ok_or("a.out kludge: size overflow")?,
        )
        .ok_or("a.out kludge: the load range runs past the end of the file")?;
    let loaded_end = u64::from(load_addr) + len as u64;
    // bss_end_addr 0: no bss.
    let memsz = if bss_end == 0 {
        len as u64
    } else {
        u64::from(bss_end)
            .checked_sub(u64::from(load_addr))
            .filter(|&m| m >= len as u64)
            .ok_or_else(|| {
                format!(
                    "a.out kludge: bss_end_addr {bss_end:#x} below the loaded end {loaded_end:#x}"
                )
            })?
    };
    Ok(Image {
        flags,
        entry,
        segments: alloc::vec![Segment {
            gpa: u64::from(load_addr),
            data,
            memsz,
        }],
        aout: true,
    })
}

/// ELF32 (System V gABI, "ELF Header" and "Program Header"): little-endian, EM_386, EXEC;
/// PT_LOAD segments at their physical address (p_paddr), as GRUB loads them. `e_entry` is a
/// virtual address: like GRUB, the entry is taken in the segment whose virtual range holds it
/// and moved to that segment's physical address (a kernel linked in the higher half but
/// loaded at 1 MiB), and an entry outside every segment is refused.
fn parse_elf32(file: &[u8], flags: u32) -> Result<Image<'_>, String> {
    const PT_LOAD: u32 = 1;
    const EM_386: u16 = 3;
    const ET_EXEC: u16 = 2;
    if file.get(0..4) != Some(b"\x7fELF".as_slice()) {
        return Err(String::from(
            "header flag 16 clear and the file is not ELF: nothing says where to load it",
        ));
    }
    if file.get(4) != Some(&1) || file.get(5) != Some(&1) {
        return Err(String::from(
            "not a little-endian ELF32 file (multiboot v1 loads ELF32 only)",
        ));
    }
    let (ty, machine) = (u16_at(file, 16)?, u16_at(file, 18)?);
    if ty != ET_EXEC || machine != EM_386 {
        return Err(format!(
            "ELF type {ty} machine {machine}: expected an i386 executable (2, 3)"
        ));
    }
    let entry = u32_at(file, 24)?;
    let phoff = usize_of(u32_at(file, 28)?);
    let phentsize = usize::from(u16_at(file, 42)?);
    let phnum = usize::from(u16_at(file, 44)?);
    if phentsize < 32 {
        return Err(format!("ELF e_phentsize {phentsize} is below 32"));
    }
    let mut segments = Vec::new();
    let mut physical_entry = None;
    for i in 0..phnum {
        let ph = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or("ELF program header offset overflows")?;
        if u32_at(file, ph)? != PT_LOAD {
            continue;
        }
        let offset = usize_of(u32_at(file, ph + 4)?);
        let vaddr = u32_at(file, ph + 8)?;
        let paddr = u32_at(file, ph + 12)?;
        let filesz = usize_of(u32_at(file, ph + 16)?);
        let memsz = u32_at(file, ph + 20)?;
        if usize_of(memsz) < filesz {
            return Err(format!("ELF segment at {paddr:#x}: p_memsz below p_filesz"));
        }
        let data = file
            .get(offset..offset.checked_add(filesz).ok_or("ELF size overflow")?)
            .ok_or_else(|| format!("ELF segment at {paddr:#x} lies outside the file"))?;
        if physical_entry.is_none() && entry.wrapping_sub(vaddr) < memsz {
            physical_entry = Some(u64::from(paddr) + u64::from(entry - vaddr));
        }
        segments.push(Segment {
            gpa: u64::from(paddr),
            data,
            memsz: u64::from(memsz),
        });
    }
    if segments.is_empty() {
        return Err(String::from("ELF has no PT_LOAD segment"));
    }
    let entry = physical_entry
        .and_then(|e| u32::try_from(e).ok())
        .ok_or_else(|| format!("ELF entry point {entry:#x} lies in no loadable segment"))?;
    Ok(Image {
        flags,
        entry,
        segments,
        aout: false,
    })
}

/// A module as the guest sees it: where it was placed and its string.
pub struct PlacedModule<'a> {
    /// Guest-physical start (page-aligned).
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// The module's string.
    pub string: &'a str,
}

/// Where the low-memory structures go: the info structure at `INFO`, the memory map, the
/// module list and the strings after it, all inside the first page run below 640 KiB.
pub const INFO: u64 = 0x1000;
const MMAP: u64 = 0x1100;
const MODS: u64 = 0x1200;
const STRINGS: u64 = 0x2000;
const STRINGS_END: u64 = 0x9_F000;
/// Conventional memory reported in `mem_lower` (KiB) and the first mmap entry.
const LOW_KIB: u32 = 640;
/// The most modules the module list page holds (16 bytes each, up to `STRINGS`).
pub const MAX_MODULES: usize = ((STRINGS - MODS) / 16) as usize;

/// The multiboot information structure and what it points to, as `(gpa, bytes)` writes.
///
/// `ram` is the size of guest RAM from 0; RAM between 640 KiB and 1 MiB exists in the VM but
/// is reported as reserved (the legacy VGA/BIOS hole a PC has there).
pub fn info(
    ram: u64,
    cmdline: &str,
    modules: &[PlacedModule<'_>],
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    if modules.len() > MAX_MODULES {
        return Err(format!("{} modules: at most {MAX_MODULES}", modules.len()));
    }
    let mem_upper = u32::try_from(ram.saturating_sub(0x10_0000) >> 10)
        .map_err(|_| format!("guest RAM {ram:#x} too large for mem_upper"))?;
    let mut writes = Vec::new();
    let mut strings = Vec::new();
    // Each string zero-terminated; returns its guest address.
    let mut add_string = |s: &str| -> Result<u32, String> {
        let at = STRINGS + strings.len() as u64;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        if STRINGS + strings.len() as u64 > STRINGS_END {
            return Err(String::from(
                "command line and module strings exceed the space below 640 KiB",
            ));
        }
        // Below 640 KiB: fits in u32.
        Ok(at as u32)
    };
    let cmdline_at = add_string(cmdline)?;
    let name_at = add_string("rhax-vmm")?;
    let mut mods = Vec::new();
    for m in modules {
        let start = u32::try_from(m.gpa).map_err(|_| "module above 4 GiB")?;
        let end = m
            .gpa
            .checked_add(m.len)
            .and_then(|e| u32::try_from(e).ok())
            .ok_or("module ends above 4 GiB")?;
        mods.extend(start.to_le_bytes());
        // mod_end: one past the last byte, as GRUB sets it.
        mods.extend(end.to_le_bytes());
        mods.extend(add_string(m.string)?.to_le_bytes());
        mods.extend(0u32.to_le_bytes());
    }
    // Memory map (§3.3): `size` (20, not counting itself), base, length, type (1 = RAM).
    let mut mmap = Vec::new();
    let mut entry = |base: u64, len: u64, ty: u32| {
        mmap.extend(20u32.to_le_bytes());
        mmap.extend(base.to_le_bytes());
        mmap.extend(len.to_le_bytes());
        mmap.extend(ty.to_le_bytes());
    };
    entry(0, u64::from(LOW_KIB) << 10, 1);
    entry(
        u64::from(LOW_KIB) << 10,
        0x10_0000 - (u64::from(LOW_KIB) << 10),
        2,
    );
    entry(0x10_0000, u64::from(mem_upper) << 10, 1);
    let mut info = [0u8; 72];
    let mut put = |off: usize, v: u32| {
        if let Some(f) = info.get_mut(off..off + 4) {
            f.copy_from_slice(&v.to_le_bytes());
        }
    };
    let mut flags = INFO_MEM | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;
    put(4, LOW_KIB);
    put(8, mem_upper);
    put(16, cmdline_at);
    if !modules.is_empty() {
        flags |= INFO_MODS;
    }
    // mods_count 0 with flag 3 clear when there are none (GRUB sets it anyway).
    put(20, modules.len() as u32);
    put(24, MODS as u32);
    put(44, mmap.len() as u32);
    put(48, MMAP as u32);
    put(64, name_at);
    put(0, flags);
    writes.push((INFO, info.to_vec()));
    writes.push((MMAP, mmap));
    writes.push((MODS, mods));
    writes.push((STRINGS, strings));
    Ok(writes)
}
