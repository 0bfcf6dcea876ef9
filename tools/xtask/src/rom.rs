//! Bochs ROM image builder: a multiboot2 kernel ELF and a command line → a ROM that replaces the
//! BIOS (bochs-vmx.md §5b), for boots in a fraction of a second.
//!
//! Layout of a ROM of `size` bytes, mapped by Bochs so that it ends at 4 GiB:
//! * from offset 0: the kernel's PT_LOAD segments (file bytes only), then the boot modules
//!   (4 KiB aligned, read in place from the ROM: the `vmm` scenario's guest ELF and its
//!   modules), then the multiboot2 information block (command line, basic memory information
//!   and one module tag per module);
//! * the last 4 KiB page: the GDT, 16-bit code at linear 0xFFFFF000 that loads the GDT, sets
//!   CR0.PE and far-jumps to 32-bit code, which enables fast A20, copies every segment to its
//!   physical address, zeroes the rest of its memory size (`rep stosd`, bochs-vmx.md §10.3) and
//!   jumps to the ELF entry with EAX = 0x36d76289 and EBX = the information block;
//! * the reset vector (linear 0xFFFFFFF0, CS:IP = F000:FFF0 with CS base 0xFFFF0000,
//!   SDM Vol. 3A §10.1.4): a near jump to 0xF000.
//!
//! The stub is emitted as hand-encoded machine code (every byte below is named with its
//! instruction), not assembled: no dependency on `as`/`ld`, and no linker relocation can shift a
//! jump (bochs-vmx.md §10.5).

/// Magic value the kernel receives in EAX (multiboot2 specification §3.2).
pub const MB2_BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

const PT_LOAD: u32 = 1;
const STUB_PAGE: usize = 4096;
/// ROM sizes Bochs maps below 4 GiB (4 MiB is refused: bochs-vmx.md §5).
const ROM_SIZES: [usize; 5] = [128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20];

/// One loadable segment of the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Physical load address (p_paddr).
    pub paddr: u32,
    /// Bytes from the file (p_filesz).
    pub data: Vec<u8>,
    /// Size in memory (p_memsz ≥ file size; the rest is zeroed).
    pub memsz: u32,
}

/// A boot module: bytes the kernel finds through a multiboot2 module tag (specification
/// §3.6.6), with its string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module's bytes.
    pub data: Vec<u8>,
    /// The tag's string (zero-terminated in the tag; must not contain NUL).
    pub string: String,
}

/// A parsed kernel: entry point and loadable segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// ELF entry point (the 32-bit multiboot2 entry).
    pub entry: u32,
    /// PT_LOAD segments.
    pub segments: Vec<Segment>,
}

fn u16_at(b: &[u8], off: usize) -> crate::Result<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("ELF truncated at {off:#x}"))
}

fn u32_at(b: &[u8], off: usize) -> crate::Result<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("ELF truncated at {off:#x}"))
}

fn u64_at(b: &[u8], off: usize) -> crate::Result<u64> {
    Ok(u64::from(u32_at(b, off)?) | u64::from(u32_at(b, off + 4)?) << 32)
}

fn below_4g(v: u64, what: &str) -> crate::Result<u32> {
    u32::try_from(v).map_err(|_| format!("{what} {v:#x} is above 4 GiB"))
}

/// Parses the ELF64 header and program headers (System V gABI, "Program Header").
pub fn parse_elf(elf: &[u8]) -> crate::Result<Kernel> {
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let entry = below_4g(u64_at(elf, 0x18)?, "entry point")?;
    let phoff = usize::try_from(u64_at(elf, 0x20)?).map_err(|_| "bad e_phoff")?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    if phentsize < 56 {
        return Err(format!("e_phentsize {phentsize} too small"));
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph)? != PT_LOAD {
            continue;
        }
        let offset = usize::try_from(u64_at(elf, ph + 8)?).map_err(|_| "bad p_offset")?;
        let paddr = below_4g(u64_at(elf, ph + 24)?, "p_paddr")?;
        let filesz = usize::try_from(u64_at(elf, ph + 32)?).map_err(|_| "bad p_filesz")?;
        let memsz = below_4g(u64_at(elf, ph + 40)?, "p_memsz")?;
        if (memsz as usize) < filesz {
            return Err(format!("segment at {paddr:#x}: memsz < filesz"));
        }
        if u64::from(paddr) + u64::from(memsz) > 0xC000_0000 {
            return Err(format!("segment at {paddr:#x} ends in the MMIO/ROM hole"));
        }
        let data = elf
            .get(offset..offset + filesz)
            .ok_or_else(|| format!("segment at {paddr:#x} lies outside the file"))?
            .to_vec();
        segments.push(Segment { paddr, data, memsz });
    }
    if segments.is_empty() {
        return Err("ELF has no PT_LOAD segment".into());
    }
    Ok(Kernel { entry, segments })
}

/// The multiboot2 information block (specification §3.6): cmdline tag (type 1), basic memory
/// information (type 4) when the RAM size is known, one module tag (type 3: `mod_start`,
/// `mod_end` one past the last byte, the string) per `(start, end, string)`, end tag.
pub fn multiboot2_info(
    cmdline: &str,
    ram_bytes: Option<u64>,
    modules: &[(u32, u32, &str)],
) -> Vec<u8> {
    fn pad8(v: &mut Vec<u8>) {
        while v.len() % 8 != 0 {
            v.push(0);
        }
    }
    let mut v = vec![0u8; 8];
    let s = cmdline.as_bytes();
    v.extend(1u32.to_le_bytes());
    v.extend((8 + s.len() as u32 + 1).to_le_bytes());
    v.extend(s);
    v.push(0);
    pad8(&mut v);
    if let Some(ram) = ram_bytes {
        v.extend(4u32.to_le_bytes());
        v.extend(16u32.to_le_bytes());
        v.extend(640u32.to_le_bytes()); // mem_lower, KiB
        v.extend((((ram.saturating_sub(1 << 20)) >> 10) as u32).to_le_bytes()); // mem_upper, KiB
    }
    for &(start, end, string) in modules {
        v.extend(3u32.to_le_bytes());
        v.extend((16 + string.len() as u32 + 1).to_le_bytes());
        v.extend(start.to_le_bytes());
        v.extend(end.to_le_bytes());
        v.extend(string.as_bytes());
        v.push(0);
        pad8(&mut v);
    }
    v.extend(0u32.to_le_bytes());
    v.extend(8u32.to_le_bytes());
    let total = v.len() as u32;
    v[0..4].copy_from_slice(&total.to_le_bytes());
    v
}

/// Little helper to emit the stub: every instruction is one call with its mnemonic.
struct Code {
    bytes: Vec<u8>,
    /// Linear address of `bytes[0]`.
    base: u32,
}

impl Code {
    fn here(&self) -> u32 {
        self.base + self.bytes.len() as u32
    }
    fn op(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
    fn op_imm32(&mut self, opcode: &[u8], imm: u32) {
        self.op(opcode);
        self.op(&imm.to_le_bytes());
    }
}

/// Builds the ROM image with its boot modules, which stay in the ROM (the kernel identity-maps
/// the first 4 GiB and reads them in place).
pub fn build(
    kernel: &Kernel,
    cmdline: &str,
    ram_bytes: Option<u64>,
    modules: &[Module],
) -> crate::Result<Vec<u8>> {
    if let Some(m) = modules.iter().find(|m| m.string.contains('\0')) {
        return Err(format!("module string {:?} contains a NUL", m.string));
    }
    // Payload: segments (16-byte aligned), modules (page-aligned, as GRUB places them),
    // then the info block (8-byte aligned). Module addresses depend on the ROM size, which
    // depends on the payload: offsets first, addresses once the size is known.
    let mut payload = Vec::new();
    let mut placed = Vec::new();
    for seg in &kernel.segments {
        while payload.len() % 16 != 0 {
            payload.push(0);
        }
        placed.push(payload.len());
        payload.extend_from_slice(&seg.data);
    }
    let mut module_offs = Vec::new();
    for m in modules {
        while payload.len() % 4096 != 0 {
            payload.push(0);
        }
        module_offs.push(payload.len());
        payload.extend_from_slice(&m.data);
    }
    while payload.len() % 8 != 0 {
        payload.push(0);
    }
    let info_off = payload.len();
    // The block's size does not depend on the addresses in it.
    let info_len = multiboot2_info(cmdline, ram_bytes, &[]).len()
        + modules
            .iter()
            .map(|m| (16 + m.string.len() + 1).next_multiple_of(8))
            .sum::<usize>();
    let size = *ROM_SIZES
        .iter()
        .find(|&&s| info_off + info_len + STUB_PAGE <= s)
        .ok_or_else(|| {
            format!(
                "kernel + modules + info ({} bytes) do not fit in a 2 MiB ROM",
                info_off + info_len
            )
        })?;
    let rom_base = (0x1_0000_0000u64 - size as u64) as u32;
    let tags: Vec<(u32, u32, &str)> = modules
        .iter()
        .zip(&module_offs)
        .map(|(m, &off)| {
            let start = rom_base + off as u32;
            (start, start + m.data.len() as u32, m.string.as_str())
        })
        .collect();
    let info = multiboot2_info(cmdline, ram_bytes, &tags);
    debug_assert_eq!(info.len(), info_len);
    payload.extend(info);
    let mut rom = vec![0xFFu8; size];
    rom[..payload.len()].copy_from_slice(&payload);

    // The last page: GDT at 0xFFFFF000 (3 descriptors + the 6-byte pointer), code at 0xFFFFF020.
    const PAGE: u32 = 0xFFFF_F000;
    let mut gdt = Vec::new();
    gdt.extend(0u64.to_le_bytes());
    gdt.extend(0x00CF_9A00_0000_FFFFu64.to_le_bytes()); // 0x08: 32-bit code, flat
    gdt.extend(0x00CF_9200_0000_FFFFu64.to_le_bytes()); // 0x10: data, flat
    gdt.extend(23u16.to_le_bytes()); // GDTR limit
    gdt.extend(PAGE.to_le_bytes()); // GDTR base
    let gdtr = PAGE + 24;

    let mut c = Code {
        bytes: Vec::new(),
        base: PAGE + 0x20,
    };
    let entry16 = c.here();
    // 16-bit real mode, CS base 0xFFFF0000 (reset state).
    c.op(&[0xFA]); // cli
    c.op(&[0xFC]); // cld
    c.op(&[0x66, 0x2E, 0x0F, 0x01, 0x16]); // o32 lgdt cs:[disp16]: 32-bit base
    c.op(&((gdtr - 0xFFFF_0000) as u16).to_le_bytes());
    c.op(&[0x0F, 0x20, 0xC0]); // mov eax, cr0
    c.op(&[0x66, 0x83, 0xC8, 0x01]); // or eax, 1 (CR0.PE)
    c.op(&[0x0F, 0x22, 0xC0]); // mov cr0, eax
    let far_jmp_at = c.bytes.len();
    c.op(&[0x66, 0xEA, 0, 0, 0, 0, 0x08, 0x00]); // jmp dword 0x08:entry32 (patched below)
    let entry32 = c.here();
    c.bytes[far_jmp_at + 2..far_jmp_at + 6].copy_from_slice(&entry32.to_le_bytes());
    // 32-bit protected mode, flat segments.
    c.op_imm32(&[0xB8], 0x10); // mov eax, 0x10
    for sreg in [0xD8, 0xC0, 0xD0, 0xE0, 0xE8] {
        c.op(&[0x8E, sreg]); // mov ds/es/ss/fs/gs, ax
    }
    c.op_imm32(&[0xBC], 0x7000); // mov esp, 0x7000
    c.op(&[0xE4, 0x92, 0x0C, 0x02, 0x24, 0xFE, 0xE6, 0x92]); // in al,0x92; or al,2; and al,0xfe; out 0x92,al
    for (seg, &off) in kernel.segments.iter().zip(&placed) {
        let filesz = seg.data.len() as u32;
        let bss = seg.memsz - filesz;
        c.op_imm32(&[0xBE], rom_base + off as u32); // mov esi, src
        c.op_imm32(&[0xBF], seg.paddr); // mov edi, dst
        c.op_imm32(&[0xB9], filesz / 4); // mov ecx, dwords
        c.op(&[0xF3, 0xA5]); // rep movsd
        c.op_imm32(&[0xB9], filesz % 4); // mov ecx, bytes
        c.op(&[0xF3, 0xA4]); // rep movsb
        c.op(&[0x31, 0xC0]); // xor eax, eax
        c.op_imm32(&[0xB9], bss / 4); // mov ecx, dwords
        c.op(&[0xF3, 0xAB]); // rep stosd
        c.op_imm32(&[0xB9], bss % 4); // mov ecx, bytes
        c.op(&[0xF3, 0xAA]); // rep stosb
    }
    c.op_imm32(&[0xB8], MB2_BOOTLOADER_MAGIC); // mov eax, magic
    c.op_imm32(&[0xBB], rom_base + info_off as u32); // mov ebx, info
    c.op_imm32(&[0xB9], kernel.entry); // mov ecx, entry
    c.op(&[0xFF, 0xE1]); // jmp ecx

    let page_off = size - STUB_PAGE;
    if 0x20 + c.bytes.len() > STUB_PAGE - 16 {
        return Err(format!(
            "ROM stub too long ({} bytes, {} segments)",
            c.bytes.len(),
            kernel.segments.len()
        ));
    }
    rom[page_off..page_off + gdt.len()].copy_from_slice(&gdt);
    rom[page_off + 0x20..page_off + 0x20 + c.bytes.len()].copy_from_slice(&c.bytes);
    // Reset vector at IP 0xFFF0: jmp near rel16 to the 16-bit entry (IP after = 0xFFF3).
    let target_ip = (entry16 - 0xFFFF_0000) as u16;
    let rel = target_ip.wrapping_sub(0xFFF3);
    let rv = size - 16;
    rom[rv] = 0xE9;
    rom[rv + 1..rv + 3].copy_from_slice(&rel.to_le_bytes());
    Ok(rom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_with(segments: &[(u64, &[u8], u64)], entry: u64) -> Vec<u8> {
        let phoff = 64usize;
        let mut f = vec![0u8; phoff + 56 * segments.len()];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3A].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, (paddr, data, memsz)) in segments.iter().enumerate() {
            let off = f.len() as u64;
            let ph = phoff + 56 * i;
            f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            f[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            f[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            f.extend_from_slice(data);
        }
        f
    }

    #[test]
    fn parses_load_segments() {
        let elf = elf_with(
            &[(0x10_0000, b"abcdef", 6), (0x20_0000, b"xy", 0x1000)],
            0x10_0018,
        );
        let k = parse_elf(&elf).unwrap();
        assert_eq!(k.entry, 0x10_0018);
        assert_eq!(k.segments.len(), 2);
        assert_eq!(
            k.segments[1],
            Segment {
                paddr: 0x20_0000,
                data: b"xy".to_vec(),
                memsz: 0x1000
            }
        );
    }

    #[test]
    fn rejects_bad_elves() {
        assert!(parse_elf(b"MZ\0\0").is_err());
        let mut elf = elf_with(&[(0x10_0000, b"abc", 2)], 0x10_0000);
        assert!(parse_elf(&elf).is_err(), "memsz < filesz");
        elf = elf_with(&[(0xFFF0_0000, b"abc", 3)], 0x10_0000);
        assert!(parse_elf(&elf).is_err(), "segment in the ROM hole");
    }

    #[test]
    fn info_block_has_cmdline_meminfo_and_end() {
        let v = multiboot2_info("mem=128M cpus=2", Some(128 << 20), &[]);
        assert_eq!(
            u32::from_le_bytes(v[0..4].try_into().unwrap()) as usize,
            v.len()
        );
        assert_eq!(v.len() % 8, 0);
        assert_eq!(u32::from_le_bytes(v[8..12].try_into().unwrap()), 1);
        assert_eq!(&v[16..31], b"mem=128M cpus=2");
        assert_eq!(v[31], 0);
        let t4 = 32;
        assert_eq!(u32::from_le_bytes(v[t4..t4 + 4].try_into().unwrap()), 4);
        assert_eq!(
            u32::from_le_bytes(v[t4 + 12..t4 + 16].try_into().unwrap()),
            127 * 1024
        );
        assert_eq!(&v[v.len() - 8..], &[0, 0, 0, 0, 8, 0, 0, 0]);
    }

    #[test]
    fn rom_layout_reset_vector_and_stub() {
        let elf = elf_with(&[(0x10_0000, &[0x90; 100], 200)], 0x10_0000);
        let k = parse_elf(&elf).unwrap();
        let rom = build(&k, "x", None, &[]).unwrap();
        assert_eq!(rom.len(), 128 << 10);
        assert_eq!(&rom[..100], &[0x90; 100][..]);
        // Reset vector: jmp near to IP 0xF020 (linear 0xFFFFF020).
        let rv = rom.len() - 16;
        assert_eq!(rom[rv], 0xE9);
        let rel = u16::from_le_bytes([rom[rv + 1], rom[rv + 2]]);
        assert_eq!(0xFFF3u16.wrapping_add(rel), 0xF020);
        let page = rom.len() - 4096;
        // GDTR limit and base, then the 16-bit code starts with cli; cld; o32 lgdt.
        assert_eq!(&rom[page + 24..page + 30], &[23, 0, 0x00, 0xF0, 0xFF, 0xFF]);
        assert_eq!(
            &rom[page + 0x20..page + 0x27],
            &[0xFA, 0xFC, 0x66, 0x2E, 0x0F, 0x01, 0x16]
        );
        assert_eq!(
            u16::from_le_bytes([rom[page + 0x27], rom[page + 0x28]]),
            0xF018
        );
        let code = &rom[page + 0x20..rom.len() - 16];
        // The copy of the segment: mov esi, 0xFFFE0000; mov edi, 0x100000; 25 dwords; 0 bytes.
        let find = |needle: &[u8]| code.windows(needle.len()).any(|w| w == needle);
        assert!(find(&[
            0xBE, 0x00, 0x00, 0xFE, 0xFF, 0xBF, 0x00, 0x00, 0x10, 0x00, 0xB9, 25, 0, 0, 0
        ]));
        // 100 bytes of .bss: 25 dwords by rep stosd.
        assert!(find(&[0x31, 0xC0, 0xB9, 25, 0, 0, 0, 0xF3, 0xAB]));
        // Entry: EAX = magic, ECX = entry, jmp ecx.
        assert!(find(&[0xB8, 0x89, 0x62, 0xD7, 0x36]));
        assert!(find(&[0xB9, 0x00, 0x00, 0x10, 0x00, 0xFF, 0xE1]));
    }

    #[test]
    fn rom_grows_with_the_kernel() {
        let big = vec![1u8; 200 << 10];
        let k = parse_elf(&elf_with(&[(0x10_0000, &big, big.len() as u64)], 0x10_0000)).unwrap();
        assert_eq!(build(&k, "", None, &[]).unwrap().len(), 256 << 10);
        let huge = vec![1u8; 3 << 20];
        let k = parse_elf(&elf_with(
            &[(0x10_0000, &huge, huge.len() as u64)],
            0x10_0000,
        ))
        .unwrap();
        assert!(build(&k, "", None, &[]).is_err());
    }

    /// The module tags of an information block: `(mod_start, mod_end, string)`.
    fn module_tags(info: &[u8]) -> Vec<(u32, u32, String)> {
        let rd = |o: usize| u32::from_le_bytes(info[o..o + 4].try_into().unwrap());
        let mut out = Vec::new();
        let mut t = 8;
        while t + 8 <= info.len() && rd(t) != 0 {
            let size = rd(t + 4) as usize;
            if rd(t) == 3 {
                let s = &info[t + 16..t + size];
                let s = &s[..s.iter().position(|&b| b == 0).unwrap()];
                out.push((
                    rd(t + 8),
                    rd(t + 12),
                    String::from_utf8(s.to_vec()).unwrap(),
                ));
            }
            t += size.next_multiple_of(8);
        }
        out
    }

    #[test]
    fn modules_are_page_aligned_in_the_rom_with_their_tags() {
        let k = parse_elf(&elf_with(&[(0x10_0000, &[0x90; 100], 100)], 0x10_0000)).unwrap();
        let modules = [
            Module {
                data: b"\x7fELF guest".to_vec(),
                string: "console=uart quiet".into(),
            },
            Module {
                data: vec![0xA5; 5000],
                string: "env.txt".into(),
            },
        ];
        let rom = build(&k, "scenarios=vmm", Some(128 << 20), &modules).unwrap();
        let base = 0x1_0000_0000u64 - rom.len() as u64;
        // The info block's address is the operand of the stub's `mov ebx, imm32` (0xBB).
        let page = rom.len() - 4096;
        let code = &rom[page + 0x20..];
        let magic = code
            .windows(5)
            .position(|w| w == [0xB8, 0x89, 0x62, 0xD7, 0x36])
            .unwrap();
        assert_eq!(code[magic + 5], 0xBB);
        let info_addr = u32::from_le_bytes(code[magic + 6..magic + 10].try_into().unwrap());
        let info_off = (u64::from(info_addr) - base) as usize;
        let total = u32::from_le_bytes(rom[info_off..info_off + 4].try_into().unwrap()) as usize;
        let tags = module_tags(&rom[info_off..info_off + total]);
        assert_eq!(tags.len(), 2);
        for ((start, end, string), m) in tags.iter().zip(&modules) {
            assert_eq!(start % 4096, 0, "module not page-aligned");
            assert_eq!((end - start) as usize, m.data.len());
            assert_eq!(string, &m.string);
            let off = (u64::from(*start) - base) as usize;
            assert_eq!(&rom[off..off + m.data.len()], &m.data[..]);
        }
        // Modules lie after the kernel and before the info block, not in the stub page.
        assert!(tags[0].0 as u64 >= base + 100 && (tags[1].1 as u64) <= u64::from(info_addr));
    }

    #[test]
    fn modules_count_against_the_2_mib_limit_and_strings_are_checked() {
        let k = parse_elf(&elf_with(&[(0x10_0000, &[0x90; 100], 100)], 0x10_0000)).unwrap();
        let m = |n: usize, s: &str| Module {
            data: vec![1; n],
            string: s.into(),
        };
        let rom = build(&k, "", None, &[m(600 << 10, "a")]).unwrap();
        assert_eq!(rom.len(), 1 << 20);
        assert!(build(&k, "", None, &[m(1 << 20, "a"), m(1 << 20, "b")]).is_err());
        assert!(build(&k, "", None, &[m(1, "a\0b")]).is_err());
    }
}
