//! A small reader of PE32+ images (what `rhax.sys` is), for the image checks of `cargo xtask
//! sys` (`syscheck.rs`): headers, sections, data directories, imports, the exception table
//! (`.pdata`) with its unwind codes, and the PE checksum.
//!
//! Written here rather than taken from a crate to keep xtask dependency-free; everything is
//! bounds-checked (a damaged image is an error, never a panic). Layouts: Microsoft "PE Format"
//! (learn.microsoft.com/windows/win32/debug/pe-format): COFF file header, optional header
//! (PE32+), section table, ".idata" (import directory table, import lookup table, hint/name
//! table), ".pdata" (x64 RUNTIME_FUNCTION); "x64 exception handling" for UNWIND_INFO and
//! UNWIND_CODE. The checksum algorithm is the one of imagehlp's `CheckSumMappedFile`: the
//! 16-bit one's-complement-style sum of the file with the checksum field taken as zero, plus
//! the file's length.

/// `IMAGE_FILE_MACHINE_AMD64`.
pub const MACHINE_AMD64: u16 = 0x8664;
/// Optional header magic of PE32+.
pub const MAGIC_PE32_PLUS: u16 = 0x20b;
/// `IMAGE_SUBSYSTEM_NATIVE`: kernel-mode drivers.
pub const SUBSYSTEM_NATIVE: u16 = 1;
/// `IMAGE_FILE_RELOCS_STRIPPED`: the image cannot be rebased.
pub const FILE_RELOCS_STRIPPED: u16 = 0x0001;
/// `IMAGE_DLLCHARACTERISTICS_HIGH_ENTROPY_VA` (/HIGHENTROPYVA: 64-bit ASLR).
pub const DLL_HIGH_ENTROPY_VA: u16 = 0x0020;
/// `IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE` (ASLR; /DYNAMICBASE).
pub const DLL_DYNAMIC_BASE: u16 = 0x0040;
/// `IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY` (/INTEGRITYCHECK: the loader checks the
/// signature).
pub const DLL_FORCE_INTEGRITY: u16 = 0x0080;
/// `IMAGE_DLLCHARACTERISTICS_NX_COMPAT` (/NXCOMPAT).
pub const DLL_NX_COMPAT: u16 = 0x0100;
/// Section flag: can be discarded after load.
pub const SCN_MEM_DISCARDABLE: u32 = 0x0200_0000;
/// Section flag: executable.
pub const SCN_MEM_EXECUTE: u32 = 0x2000_0000;
/// Section flag: readable.
pub const SCN_MEM_READ: u32 = 0x4000_0000;
/// Section flag: writable.
pub const SCN_MEM_WRITE: u32 = 0x8000_0000;

/// Data directory indexes.
pub const DIR_IMPORT: usize = 1;
/// Exception directory (`.pdata`).
pub const DIR_EXCEPTION: usize = 3;
/// Certificate table (a file offset, not an RVA: Authenticode signatures).
pub const DIR_SECURITY: usize = 4;
/// Base relocations.
pub const DIR_BASERELOC: usize = 5;
/// Thread-local storage: not allowed in a driver (the kernel loader does not run TLS).
pub const DIR_TLS: usize = 9;
/// Delay-load imports.
pub const DIR_DELAY_IMPORT: usize = 13;

/// Offset of the CheckSum field in the optional header (PE32 and PE32+ alike).
const CHECKSUM_IN_OPTIONAL: usize = 64;

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name (up to 8 bytes, NULs dropped).
    pub name: String,
    /// RVA of its first byte.
    pub va: u32,
    /// Size in memory.
    pub vsize: u32,
    /// File offset of its raw data.
    pub raw_off: u32,
    /// Size of its raw data.
    pub raw_size: u32,
    /// `IMAGE_SCN_*` flags.
    pub flags: u32,
}

impl Section {
    /// `R`, `W`, `X`, `D` (discardable) or `-` for each, as `llvm-readobj` shows them.
    pub fn rwxd(&self) -> String {
        [
            (SCN_MEM_READ, 'R'),
            (SCN_MEM_WRITE, 'W'),
            (SCN_MEM_EXECUTE, 'X'),
            (SCN_MEM_DISCARDABLE, 'D'),
        ]
        .iter()
        .map(|&(b, c)| if self.flags & b != 0 { c } else { '-' })
        .collect()
    }

    /// True when `rva` is inside the section in memory.
    pub fn contains(&self, rva: u32) -> bool {
        rva >= self.va && rva - self.va < self.vsize.max(self.raw_size)
    }
}

/// The parts of the headers the checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// COFF `Machine`.
    pub machine: u16,
    /// COFF `Characteristics`.
    pub characteristics: u16,
    /// Optional header magic.
    pub magic: u16,
    /// `AddressOfEntryPoint` (RVA).
    pub entry: u32,
    /// `ImageBase`.
    pub image_base: u64,
    /// `SectionAlignment`.
    pub section_alignment: u32,
    /// `FileAlignment`.
    pub file_alignment: u32,
    /// `SizeOfImage`.
    pub size_of_image: u32,
    /// `CheckSum` as stored.
    pub checksum: u32,
    /// `Subsystem`.
    pub subsystem: u16,
    /// `DllCharacteristics`.
    pub dll_characteristics: u16,
    /// `(RVA, size)` of each data directory.
    pub directories: Vec<(u32, u32)>,
}

/// A parsed image over its bytes.
#[derive(Debug)]
pub struct Pe<'a> {
    /// The whole file.
    pub data: &'a [u8],
    /// The headers.
    pub header: Header,
    /// The section table.
    pub sections: Vec<Section>,
    /// File offset of the CheckSum field.
    pub checksum_offset: usize,
}

/// One `.pdata` entry (x64 `RUNTIME_FUNCTION`), RVAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeFunction {
    /// First byte of the function.
    pub begin: u32,
    /// One past its last byte.
    pub end: u32,
    /// Its `UNWIND_INFO`.
    pub unwind: u32,
}

/// One unwind operation (`UNWIND_CODE`, "x64 exception handling").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwindOp {
    /// `UWOP_PUSH_NONVOL`: a register pushed.
    Push(u8),
    /// `UWOP_ALLOC_SMALL`/`UWOP_ALLOC_LARGE`: bytes reserved.
    Alloc(u32),
    /// `UWOP_SET_FPREG`.
    SetFpReg,
    /// `UWOP_SAVE_NONVOL(_FAR)`: a register stored in the frame.
    Save(u8),
    /// `UWOP_SAVE_XMM128(_FAR)`.
    SaveXmm(u8),
    /// `UWOP_PUSH_MACHFRAME`.
    MachFrame,
}

/// A decoded `UNWIND_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnwindInfo {
    /// Version (1, or 2 with epilogue codes).
    pub version: u8,
    /// `UNW_FLAG_*`.
    pub flags: u8,
    /// Size of the prologue in bytes.
    pub prolog: u8,
    /// `(prologue offset, operation)` in the table's order (last prologue operation first).
    pub codes: Vec<(u8, UnwindOp)>,
}

impl UnwindInfo {
    /// Registers pushed by the prologue, in push order.
    pub fn pushed(&self) -> Vec<&'static str> {
        self.codes
            .iter()
            .rev()
            .filter_map(|(_, op)| match op {
                UnwindOp::Push(r) => Some(reg_name(*r)),
                _ => None,
            })
            .collect()
    }

    /// Bytes the prologue puts on the stack (pushes and allocations; the return address not
    /// counted).
    pub fn frame_bytes(&self) -> u32 {
        self.codes
            .iter()
            .map(|(_, op)| match op {
                UnwindOp::Push(_) => 8,
                UnwindOp::Alloc(n) => *n,
                UnwindOp::MachFrame => 40,
                _ => 0,
            })
            .sum()
    }
}

/// x64 register number (UNWIND_CODE OpInfo) to name.
pub fn reg_name(n: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    NAMES[usize::from(n & 15)]
}

fn u16_at(d: &[u8], off: usize) -> Result<u16, String> {
    d.get(off..off.wrapping_add(2))
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| format!("truncated image: no u16 at {off:#x}"))
}

fn u32_at(d: &[u8], off: usize) -> Result<u32, String> {
    d.get(off..off.wrapping_add(4))
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("truncated image: no u32 at {off:#x}"))
}

fn u64_at(d: &[u8], off: usize) -> Result<u64, String> {
    d.get(off..off.wrapping_add(8))
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| format!("truncated image: no u64 at {off:#x}"))
}

/// The PE checksum of `data` with the 4 bytes at `checksum_offset` taken as zero.
pub fn checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (n, pair) in data.chunks(2).enumerate() {
        let at = n * 2;
        if at >= checksum_offset && at < checksum_offset + 4 {
            continue;
        }
        let word = u64::from(pair[0]) | u64::from(*pair.get(1).unwrap_or(&0)) << 8;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    // The length is added modulo 2^32 (CheckSumMappedFile); a driver is far below 4 GiB.
    (sum as u32).wrapping_add(data.len() as u32)
}

impl<'a> Pe<'a> {
    /// Parses the headers and the section table.
    pub fn parse(data: &'a [u8]) -> Result<Self, String> {
        if data.get(..2) != Some(b"MZ") {
            return Err("not a PE image: no MZ header".into());
        }
        let pe = u32_at(data, 0x3c)? as usize;
        if data.get(pe..pe + 4) != Some(b"PE\0\0") {
            return Err(format!("not a PE image: no PE signature at {pe:#x}"));
        }
        let coff = pe + 4;
        let machine = u16_at(data, coff)?;
        let nsections = usize::from(u16_at(data, coff + 2)?);
        let opt_size = usize::from(u16_at(data, coff + 16)?);
        let characteristics = u16_at(data, coff + 18)?;
        let opt = coff + 20;
        let magic = u16_at(data, opt)?;
        if magic != MAGIC_PE32_PLUS {
            return Err(format!(
                "optional header magic {magic:#x}, not PE32+ ({MAGIC_PE32_PLUS:#x})"
            ));
        }
        let ndirs = (u32_at(data, opt + 108)? as usize).min(16);
        if opt_size < 112 + ndirs * 8 {
            return Err(format!(
                "optional header of {opt_size} bytes cannot hold {ndirs} directories"
            ));
        }
        let directories = (0..ndirs)
            .map(|i| {
                Ok((
                    u32_at(data, opt + 112 + i * 8)?,
                    u32_at(data, opt + 116 + i * 8)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let header = Header {
            machine,
            characteristics,
            magic,
            entry: u32_at(data, opt + 16)?,
            image_base: u64_at(data, opt + 24)?,
            section_alignment: u32_at(data, opt + 32)?,
            file_alignment: u32_at(data, opt + 36)?,
            size_of_image: u32_at(data, opt + 56)?,
            checksum: u32_at(data, opt + CHECKSUM_IN_OPTIONAL)?,
            subsystem: u16_at(data, opt + 68)?,
            dll_characteristics: u16_at(data, opt + 70)?,
            directories,
        };
        let table = opt + opt_size;
        let mut sections = Vec::with_capacity(nsections);
        for i in 0..nsections {
            let s = table + i * 40;
            let raw_name = data.get(s..s + 8).ok_or("truncated image: section table")?;
            let name = String::from_utf8_lossy(raw_name)
                .trim_end_matches('\0')
                .to_string();
            sections.push(Section {
                name,
                vsize: u32_at(data, s + 8)?,
                va: u32_at(data, s + 12)?,
                raw_size: u32_at(data, s + 16)?,
                raw_off: u32_at(data, s + 20)?,
                flags: u32_at(data, s + 36)?,
            });
        }
        Ok(Pe {
            data,
            header,
            sections,
            checksum_offset: opt + CHECKSUM_IN_OPTIONAL,
        })
    }

    /// The checksum the file should carry.
    pub fn computed_checksum(&self) -> u32 {
        checksum(self.data, self.checksum_offset)
    }

    /// `(RVA, size)` of data directory `i`; `(0, 0)` when absent.
    pub fn directory(&self, i: usize) -> (u32, u32) {
        self.header.directories.get(i).copied().unwrap_or((0, 0))
    }

    /// The section holding `rva`.
    pub fn section_of(&self, rva: u32) -> Option<&Section> {
        self.sections.iter().find(|s| s.contains(rva))
    }

    /// File offset of `rva` (which must lie in a section's raw data).
    pub fn offset(&self, rva: u32) -> Result<usize, String> {
        let s = self
            .section_of(rva)
            .ok_or_else(|| format!("RVA {rva:#x} is in no section"))?;
        let delta = rva - s.va;
        if delta >= s.raw_size {
            return Err(format!("RVA {rva:#x} is in {}'s zero-filled tail", s.name));
        }
        Ok(s.raw_off as usize + delta as usize)
    }

    fn u32_rva(&self, rva: u32) -> Result<u32, String> {
        u32_at(self.data, self.offset(rva)?)
    }

    /// The NUL-terminated ASCII string at `rva` (at most 512 bytes).
    pub fn cstr(&self, rva: u32) -> Result<String, String> {
        let off = self.offset(rva)?;
        let bytes = self
            .data
            .get(off..)
            .ok_or_else(|| format!("string at RVA {rva:#x} outside the file"))?;
        let len = bytes
            .iter()
            .take(512)
            .position(|&b| b == 0)
            .ok_or_else(|| format!("unterminated string at RVA {rva:#x}"))?;
        Ok(String::from_utf8_lossy(&bytes[..len]).into_owned())
    }

    /// Imports: `(DLL, [function name or #ordinal])` per import descriptor.
    pub fn imports(&self) -> Result<Vec<(String, Vec<String>)>, String> {
        let (rva, _) = self.directory(DIR_IMPORT);
        if rva == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        // Descriptors are 20 bytes; the table ends with an all-zero one (the directory's size
        // is not always exact, so the terminator decides; 4096 DLLs is beyond any driver).
        for n in 0..4096u32 {
            let d = rva + n * 20;
            let (lookup, name, thunks) = (
                self.u32_rva(d)?,
                self.u32_rva(d + 12)?,
                self.u32_rva(d + 16)?,
            );
            if lookup == 0 && name == 0 && thunks == 0 {
                return Ok(out);
            }
            let dll = self.cstr(name)?;
            // The lookup table (or, without one, the address table as stored in the file).
            let table = if lookup != 0 { lookup } else { thunks };
            let mut functions = Vec::new();
            for k in 0..65536u32 {
                let entry = u64_at(self.data, self.offset(table + k * 8)?)?;
                if entry == 0 {
                    break;
                }
                if entry >> 63 != 0 {
                    functions.push(format!("#{}", entry & 0xffff));
                } else {
                    functions.push(self.cstr((entry & 0x7fff_ffff) as u32 + 2)?);
                }
            }
            out.push((dll, functions));
        }
        Err("import directory without a terminating descriptor".into())
    }

    /// The `.pdata` entries.
    pub fn runtime_functions(&self) -> Result<Vec<RuntimeFunction>, String> {
        let (rva, size) = self.directory(DIR_EXCEPTION);
        if rva == 0 {
            return Ok(Vec::new());
        }
        (0..size / 12)
            .map(|n| {
                let e = rva + n * 12;
                Ok(RuntimeFunction {
                    begin: self.u32_rva(e)?,
                    end: self.u32_rva(e + 4)?,
                    unwind: self.u32_rva(e + 8)?,
                })
            })
            .collect()
    }

    /// Decodes the `UNWIND_INFO` at `rva`.
    pub fn unwind_info(&self, rva: u32) -> Result<UnwindInfo, String> {
        let off = self.offset(rva)?;
        let b = |i: usize| {
            self.data
                .get(off + i)
                .copied()
                .ok_or_else(|| format!("truncated UNWIND_INFO at RVA {rva:#x}"))
        };
        let (vf, prolog, count) = (b(0)?, b(1)?, usize::from(b(2)?));
        let slot = |i: usize| u16_at(self.data, off + 4 + i * 2);
        let mut codes = Vec::new();
        let mut i = 0;
        while i < count {
            let s = slot(i)?;
            let (at, op, info) = ((s & 0xff) as u8, (s >> 8) & 15, (s >> 12) as u8);
            let (decoded, slots) = match op {
                0 => (UnwindOp::Push(info), 1),
                1 if info == 0 => (UnwindOp::Alloc(u32::from(slot(i + 1)?) * 8), 2),
                1 => (
                    UnwindOp::Alloc(u32::from(slot(i + 1)?) | u32::from(slot(i + 2)?) << 16),
                    3,
                ),
                2 => (UnwindOp::Alloc(u32::from(info) * 8 + 8), 1),
                3 => (UnwindOp::SetFpReg, 1),
                4 => (UnwindOp::Save(info), 2),
                5 => (UnwindOp::Save(info), 3),
                8 => (UnwindOp::SaveXmm(info), 2),
                9 => (UnwindOp::SaveXmm(info), 3),
                10 => (UnwindOp::MachFrame, 1),
                _ => {
                    return Err(format!(
                        "UNWIND_INFO at RVA {rva:#x}: unknown unwind operation {op}"
                    ))
                }
            };
            codes.push((at, decoded));
            i += slots;
        }
        Ok(UnwindInfo {
            version: vf & 7,
            flags: vf >> 3,
            prolog,
            codes,
        })
    }
}

/// A synthetic PE32+ image for the checker's own tests (here and in `syscheck.rs`).
#[cfg(test)]
pub mod synthetic {
    /// What to put in the image.
    pub struct Spec {
        /// `.text` flags.
        pub text_flags: u32,
        /// DllCharacteristics.
        pub dll_characteristics: u16,
        /// `(DLL, functions)` to import.
        pub imports: Vec<(&'static str, Vec<&'static str>)>,
        /// Give the image a TLS directory.
        pub tls: bool,
    }

    impl Default for Spec {
        fn default() -> Self {
            Spec {
                text_flags: 0x6000_0020,
                dll_characteristics: 0x01e0,
                imports: vec![("ntoskrnl.exe", vec!["DbgPrint", "IoCreateDevice"])],
                tls: false,
            }
        }
    }

    fn put(d: &mut [u8], at: usize, v: &[u8]) {
        d[at..at + v.len()].copy_from_slice(v);
    }

    /// Builds the image: `.text` at RVA 0x1000 (file 0x200) holding a 0x20-byte function at
    /// 0x1000 (entry point) and one at 0x1020, `.rdata` at 0x2000 (file 0x400) with the
    /// imports and two UNWIND_INFOs, `.pdata` at 0x3000 (file 0x600) with two entries;
    /// checksum set.
    pub fn image(spec: &Spec) -> Vec<u8> {
        let mut d = vec![0u8; 0x800];
        put(&mut d, 0, b"MZ");
        put(&mut d, 0x3c, &0x40u32.to_le_bytes());
        put(&mut d, 0x40, b"PE\0\0");
        let coff = 0x44;
        put(&mut d, coff, &0x8664u16.to_le_bytes());
        put(&mut d, coff + 2, &3u16.to_le_bytes());
        put(&mut d, coff + 16, &240u16.to_le_bytes());
        put(&mut d, coff + 18, &0x22u16.to_le_bytes());
        let opt = coff + 20;
        put(&mut d, opt, &0x20bu16.to_le_bytes());
        put(&mut d, opt + 16, &0x1000u32.to_le_bytes());
        put(&mut d, opt + 24, &0x1_4000_0000u64.to_le_bytes());
        put(&mut d, opt + 32, &0x1000u32.to_le_bytes());
        put(&mut d, opt + 36, &0x200u32.to_le_bytes());
        put(&mut d, opt + 56, &0x4000u32.to_le_bytes());
        put(&mut d, opt + 60, &0x200u32.to_le_bytes());
        put(&mut d, opt + 68, &1u16.to_le_bytes());
        put(&mut d, opt + 70, &spec.dll_characteristics.to_le_bytes());
        put(&mut d, opt + 108, &16u32.to_le_bytes());
        let dir = |d: &mut Vec<u8>, i: usize, rva: u32, size: u32| {
            put(d, opt + 112 + i * 8, &rva.to_le_bytes());
            put(d, opt + 116 + i * 8, &size.to_le_bytes());
        };
        dir(&mut d, 1, 0x2000, 20 * (spec.imports.len() as u32 + 1));
        dir(&mut d, 3, 0x3000, 24);
        if spec.tls {
            dir(&mut d, 9, 0x2300, 40);
        }
        let table = opt + 240;
        for (i, (name, va, flags)) in [
            (".text", 0x1000u32, spec.text_flags),
            (".rdata", 0x2000, 0x4000_0040),
            (".pdata", 0x3000, 0x4000_0040),
        ]
        .iter()
        .enumerate()
        {
            let s = table + i * 40;
            put(&mut d, s, name.as_bytes());
            put(&mut d, s + 8, &0x200u32.to_le_bytes());
            put(&mut d, s + 12, &va.to_le_bytes());
            put(&mut d, s + 16, &0x200u32.to_le_bytes());
            put(&mut d, s + 20, &(0x200 * (i as u32 + 1)).to_le_bytes());
            put(&mut d, s + 36, &flags.to_le_bytes());
        }
        // .text: `ret` padding.
        d[0x200..0x240].fill(0xc3);
        // .rdata (file = RVA - 0x1c00): descriptors at 0x2000, then tables from 0x2100.
        let file = |rva: u32| rva as usize - 0x1c00;
        let mut next = 0x2100u32;
        for (n, (dll, functions)) in spec.imports.iter().enumerate() {
            let desc = 0x2000 + n as u32 * 20;
            let name_rva = next;
            put(&mut d, file(name_rva), dll.as_bytes());
            next += dll.len() as u32 + 2;
            next = (next + 7) & !7;
            let ilt = next;
            next += 8 * (functions.len() as u32 + 1);
            for (k, f) in functions.iter().enumerate() {
                put(&mut d, file(ilt) + k * 8, &u64::from(next).to_le_bytes());
                put(&mut d, file(next) + 2, f.as_bytes());
                next += 2 + f.len() as u32 + 1;
                next = (next + 1) & !1;
            }
            put(&mut d, file(desc), &ilt.to_le_bytes());
            put(&mut d, file(desc) + 12, &name_rva.to_le_bytes());
            put(&mut d, file(desc) + 16, &ilt.to_le_bytes());
        }
        // UNWIND_INFO at 0x21c0: `push rbp; push rbx` (prologue 2); at 0x21d0: `sub rsp, 0x28`
        // (UWOP_ALLOC_SMALL 4) then a UWOP_ALLOC_LARGE of 0x1000 (slot count 2).
        put(&mut d, file(0x21c0), &[1, 2, 2, 0, 2, 0x30, 1, 0x50]);
        put(
            &mut d,
            file(0x21d0),
            &[1, 8, 3, 0, 4, 0x42, 8, 0x01, 0x00, 0x02],
        );
        // .pdata.
        for (n, (b, e, u)) in [(0x1000u32, 0x1020u32, 0x21c0u32), (0x1020, 0x1040, 0x21d0)]
            .iter()
            .enumerate()
        {
            let at = 0x600 + n * 12;
            put(&mut d, at, &b.to_le_bytes());
            put(&mut d, at + 4, &e.to_le_bytes());
            put(&mut d, at + 8, &u.to_le_bytes());
        }
        let sum = super::checksum(&d, opt + 64);
        put(&mut d, opt + 64, &sum.to_le_bytes());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::synthetic::{image, Spec};
    use super::{checksum, Pe, UnwindOp};

    #[test]
    fn checksum_matches_the_reference_algorithm() {
        // By hand: words 0x0201 + 0x0403 + 0x0005, the checksum field (bytes 6..10) skipped, the
        // odd last byte (0) padded, plus the length 11.
        let d = [1u8, 2, 3, 4, 5, 0, 0xff, 0xff, 0xff, 0xff, 0];
        assert_eq!(checksum(&d, 6), 0x0201 + 0x0403 + 0x0005 + 11);
        // The carry folds back in: 0xffff + 0x0002 = 0x1_0001 -> 0x0002.
        assert_eq!(checksum(&[0xff, 0xff, 2, 0], 100), 2 + 4);
    }

    #[test]
    fn parses_headers_sections_and_checksum() {
        let d = image(&Spec::default());
        let pe = Pe::parse(&d).unwrap();
        assert_eq!(pe.header.machine, 0x8664);
        assert_eq!(pe.header.subsystem, 1);
        assert_eq!(pe.header.entry, 0x1000);
        assert_eq!(pe.header.dll_characteristics, 0x1e0);
        assert_eq!(pe.header.checksum, pe.computed_checksum());
        assert_ne!(pe.header.checksum, 0);
        let names: Vec<&str> = pe.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".rdata", ".pdata"]);
        assert_eq!(pe.sections[0].rwxd(), "R-X-");
        assert_eq!(pe.section_of(0x1010).unwrap().name, ".text");
        // One changed byte breaks the checksum.
        let mut bad = d.clone();
        bad[0x210] ^= 1;
        let pe = Pe::parse(&bad).unwrap();
        assert_ne!(pe.header.checksum, pe.computed_checksum());
    }

    #[test]
    fn parses_imports() {
        let d = image(&Spec {
            imports: vec![
                ("ntoskrnl.exe", vec!["DbgPrint", "IoCreateDevice"]),
                ("HAL.dll", vec!["KeStallExecutionProcessor"]),
            ],
            ..Spec::default()
        });
        let imports = Pe::parse(&d).unwrap().imports().unwrap();
        assert_eq!(
            imports,
            [
                (
                    "ntoskrnl.exe".to_string(),
                    vec!["DbgPrint".to_string(), "IoCreateDevice".to_string()]
                ),
                (
                    "HAL.dll".to_string(),
                    vec!["KeStallExecutionProcessor".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn parses_pdata_and_unwind_codes() {
        let d = image(&Spec::default());
        let pe = Pe::parse(&d).unwrap();
        let rf = pe.runtime_functions().unwrap();
        assert_eq!(rf.len(), 2);
        assert_eq!(
            (rf[0].begin, rf[0].end, rf[0].unwind),
            (0x1000, 0x1020, 0x21c0)
        );
        let u = pe.unwind_info(rf[0].unwind).unwrap();
        assert_eq!(u.version, 1);
        assert_eq!(u.prolog, 2);
        assert_eq!(u.pushed(), ["rbp", "rbx"]);
        assert_eq!(u.frame_bytes(), 16);
        let u = pe.unwind_info(rf[1].unwind).unwrap();
        assert_eq!(
            u.codes,
            [(4, UnwindOp::Alloc(0x28)), (8, UnwindOp::Alloc(0x1000))]
        );
        assert_eq!(u.frame_bytes(), 0x1028);
    }

    #[test]
    fn refuses_damaged_images_without_panicking() {
        assert!(Pe::parse(b"MZ").is_err());
        assert!(Pe::parse(b"ELF").is_err());
        let d = image(&Spec::default());
        for len in [0x40, 0x44, 0x60, 0x150] {
            assert!(Pe::parse(&d[..len]).is_err(), "{len}");
        }
        // Truncated after the headers: parsing works, the tables fail cleanly.
        let pe = Pe::parse(&d[..0x300]).unwrap();
        assert!(pe.imports().is_err());
        assert!(pe.runtime_functions().is_err());
    }
}
