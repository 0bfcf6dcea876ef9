//! The multiboot2 information structure (multiboot2 specification §3.6): the command line, the
//! memory map (GRUB) or basic memory information, boot modules, and where the structure ends.

/// Magic value in EAX from a multiboot2 loader.
pub const MB2_MAGIC: u32 = 0x36d7_6289;

const MAX_REGIONS: usize = 32;
/// Boot modules kept (the `vmm` scenario's guest ELF and its modules).
pub const MAX_MODULES: usize = 16;

/// A boot module (module tag, multiboot2 specification §3.6.6): physical `[start, end)` and
/// the physical address of its zero-terminated string, all inside the identity-mapped 4 GiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModuleTag {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The string's address.
    pub string: u64,
    /// The string's length (without the terminator), bounded by the tag.
    pub string_len: u64,
}

/// What the kernel learns from its loader.
pub struct BootInfo {
    cmdline: [u8; 512],
    cmdline_len: usize,
    /// Available RAM ranges `[start, end)` from the memory map, if the loader gave one.
    pub regions: [(u64, u64); MAX_REGIONS],
    /// Number of valid entries in `regions`.
    pub region_count: usize,
    /// End of RAM from the basic memory information tag (`mem_upper`), if present.
    pub mem_upper_end: Option<u64>,
    /// Physical end of the information structure (memory to keep).
    pub info_end: u64,
    /// Whether EAX had the multiboot2 magic.
    pub multiboot2: bool,
    /// Boot modules in tag order.
    pub modules: [ModuleTag; MAX_MODULES],
    /// Number of valid entries in `modules`.
    pub module_count: usize,
}

impl BootInfo {
    /// The command line.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// The value of `key=value` on the command line.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.cmdline()
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
}

fn rd32(addr: u64) -> u32 {
    // SAFETY: callers pass addresses inside the loader's information structure, which is
    // identity-mapped and not overwritten before parsing finishes.
    unsafe { (addr as *const u32).read_unaligned() }
}

fn rd64(addr: u64) -> u64 {
    // SAFETY: as in `rd32`.
    unsafe { (addr as *const u64).read_unaligned() }
}

/// Parses the structure at `info` if `magic` says it is one.
pub fn parse(magic: u32, info: u64) -> BootInfo {
    let mut bi = BootInfo {
        cmdline: [0; 512],
        cmdline_len: 0,
        regions: [(0, 0); MAX_REGIONS],
        region_count: 0,
        mem_upper_end: None,
        info_end: 0,
        multiboot2: magic == MB2_MAGIC,
        modules: [ModuleTag::default(); MAX_MODULES],
        module_count: 0,
    };
    if !bi.multiboot2 || info == 0 {
        return bi;
    }
    let total = u64::from(rd32(info));
    bi.info_end = info + total;
    let mut tag = info + 8;
    while tag + 8 <= info + total {
        let (ty, size) = (rd32(tag), u64::from(rd32(tag + 4)));
        if ty == 0 || size < 8 {
            break;
        }
        match ty {
            1 => {
                let mut n = 0;
                while n < bi.cmdline.len() && (n as u64) < size - 8 {
                    // SAFETY: inside the tag (size checked above).
                    let b = unsafe { ((tag + 8 + n as u64) as *const u8).read() };
                    if b == 0 {
                        break;
                    }
                    bi.cmdline[n] = b;
                    n += 1;
                }
                bi.cmdline_len = n;
            }
            3 if size >= 16 && bi.module_count < MAX_MODULES => {
                let (start, end) = (u64::from(rd32(tag + 8)), u64::from(rd32(tag + 12)));
                let mut len = 0;
                while len < size - 16 {
                    // SAFETY: inside the tag (len < size - 16), which bounds the string.
                    let b = unsafe { ((tag + 16 + len) as *const u8).read() };
                    if b == 0 {
                        break;
                    }
                    len += 1;
                }
                if end >= start {
                    bi.modules[bi.module_count] = ModuleTag {
                        start,
                        end,
                        string: tag + 16,
                        string_len: len,
                    };
                    bi.module_count += 1;
                }
            }
            4 => bi.mem_upper_end = Some(0x10_0000 + u64::from(rd32(tag + 12)) * 1024),
            6 => {
                let esize = u64::from(rd32(tag + 8)).max(24);
                let mut e = tag + 16;
                while e + 24 <= tag + size && bi.region_count < MAX_REGIONS {
                    let (base, len, kind) = (rd64(e), rd64(e + 8), rd32(e + 16));
                    if kind == 1 {
                        bi.regions[bi.region_count] = (base, base + len);
                        bi.region_count += 1;
                    }
                    e += esize;
                }
            }
            _ => {}
        }
        tag += size.next_multiple_of(8);
    }
    bi
}

/// Parses a size like `128M`, `64K`, `1G` or a byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, mul) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}
