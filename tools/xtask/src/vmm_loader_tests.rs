//! Host tests of the metal kernel's multiboot (v1) loader (`tests/metal/src/vmm/loader.rs`,
//! compiled here as it is: `no_std` code over `alloc`), on images built byte by byte.

#[path = "../../../tests/metal/src/vmm/loader.rs"]
#[allow(dead_code)]
mod loader;

use loader::{info, parse, PlacedModule, BOOTLOADER_MAGIC, HEADER_MAGIC, INFO, MAX_MODULES};

fn header(flags: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(HEADER_MAGIC.to_le_bytes());
    h.extend(flags.to_le_bytes());
    h.extend(
        0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags))
            .to_le_bytes(),
    );
    h
}

/// An ELF32 i386 executable: header, one program header per `(paddr, bytes, memsz)`.
fn elf32(segments: &[(u32, &[u8], u32)], entry: u32) -> Vec<u8> {
    let phoff = 52usize;
    let mut f = vec![0u8; phoff + 32 * segments.len()];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 1; // ELFCLASS32
    f[5] = 1; // little-endian
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    f[24..28].copy_from_slice(&entry.to_le_bytes());
    f[28..32].copy_from_slice(&(phoff as u32).to_le_bytes());
    f[42..44].copy_from_slice(&32u16.to_le_bytes());
    f[44..46].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    for (i, (paddr, data, memsz)) in segments.iter().enumerate() {
        let off = f.len() as u32;
        let ph = phoff + 32 * i;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[ph + 4..ph + 8].copy_from_slice(&off.to_le_bytes());
        f[ph + 8..ph + 12].copy_from_slice(&(paddr + 0x8000_0000).to_le_bytes()); // vaddr
        f[ph + 12..ph + 16].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 16..ph + 20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        f[ph + 20..ph + 24].copy_from_slice(&memsz.to_le_bytes());
        f.extend_from_slice(data);
    }
    f
}

fn err_of(file: &[u8]) -> String {
    match parse(file) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

#[test]
fn elf32_segments_load_at_their_physical_address() {
    let mut text = header(0x3);
    text.extend([0x90; 20]);
    // Linked at 0x8000_0000 above its load address: the entry moves with its segment.
    let f = elf32(
        &[(0x10_0000, &text, 0x2000), (0x20_0000, b"data", 4)],
        0x8010_000c,
    );
    let img = parse(&f).unwrap();
    assert!(!img.aout);
    assert_eq!(
        (img.entry, img.flags, img.segments.len()),
        (0x10_000c, 3, 2)
    );
    assert_eq!(img.segments[0].gpa, 0x10_0000);
    assert_eq!(img.segments[0].data, &text[..]);
    assert_eq!(img.segments[0].memsz, 0x2000);
    assert_eq!(img.segments[1].data, b"data");
    assert_eq!(img.end(), 0x20_0004);
}

#[test]
fn elf32_entry_must_lie_in_a_segment() {
    let text = header(0x3);
    // In the second segment's virtual range (its bss part).
    let f = elf32(
        &[(0x10_0000, &text, 12), (0x30_0000, b"d", 0x100)],
        0x8030_0080,
    );
    assert_eq!(parse(&f).unwrap().entry, 0x30_0080);
    // A physical address is not a virtual one.
    assert!(err_of(&elf32(&[(0x10_0000, &text, 12)], 0x10_0000)).contains("no loadable segment"));
    // One past the end.
    assert!(err_of(&elf32(&[(0x10_0000, &text, 12)], 0x8010_000c)).contains("no loadable"));
}

#[test]
fn header_checks_refuse_what_the_spec_says_a_loader_must() {
    let mut bad = header(0x3);
    bad[8] ^= 1;
    assert!(err_of(&elf32(&[(0x10_0000, &bad, 12)], 0)).contains("checksum"));
    assert!(err_of(&elf32(&[(0x10_0000, &header(0x4), 12)], 0)).contains("video"));
    assert!(err_of(&elf32(&[(0x10_0000, &header(0x20), 12)], 0)).contains("unknown"));
    // Not within the first 8 KiB.
    let mut late = vec![0u8; 8192];
    late.extend(header(0x3));
    assert!(err_of(&elf32(&[(0x10_0000, &late, late.len() as u32)], 0)).contains("no multiboot"));
    // Misaligned: the search steps by 4 bytes.
    let mut odd = vec![0u8; 2];
    odd.extend(header(0x3));
    assert!(err_of(&odd).contains("no multiboot"));
}

#[test]
fn elf_checks() {
    let text = header(0x3);
    let mut f = elf32(&[(0x10_0000, &text, 4)], 0);
    assert!(err_of(&f).contains("p_memsz below p_filesz"));
    f = elf32(&[(0x10_0000, &text, 12)], 0);
    f[18] = 62; // EM_X86_64
    assert!(err_of(&f).contains("i386"));
    f = elf32(&[(0x10_0000, &text, 12)], 0);
    f[4] = 2; // ELFCLASS64
    assert!(err_of(&f).contains("ELF32"));
    // A segment whose bytes lie past the end of the file (the header itself still in it).
    let mut long = header(0x3);
    long.extend([0u8; 8]);
    f = elf32(&[(0x10_0000, &long, 20)], 0);
    let n = f.len();
    f.truncate(n - 4);
    assert!(err_of(&f).contains("outside the file"));
    // Flag 16 clear and no ELF: nowhere to load.
    assert!(err_of(&header(0x3)).contains("not ELF"));
}

/// A flat image: 16 bytes, then the header with the a.out-kludge fields.
fn aout(header_addr: u32, load_addr: u32, load_end: u32, bss_end: u32) -> Vec<u8> {
    let mut f = vec![0xEEu8; 16];
    f.extend(header(0x1_0003));
    for v in [header_addr, load_addr, load_end, bss_end, 0x10_0040] {
        f.extend(v.to_le_bytes());
    }
    f.extend([0x90u8; 36]);
    f
}

#[test]
fn aout_kludge_takes_the_header_fields() {
    // The whole file from load_addr (file offset 0) to its end, bss to 0x102000.
    let f = aout(0x10_0010, 0x10_0000, 0, 0x10_2000);
    let img = parse(&f).unwrap();
    assert!(img.aout);
    assert_eq!(img.entry, 0x10_0040);
    assert_eq!(img.segments.len(), 1);
    assert_eq!(img.segments[0].gpa, 0x10_0000);
    assert_eq!(img.segments[0].data, &f[..]);
    assert_eq!(img.segments[0].memsz, 0x2000);
    // load_addr = header_addr: the file from the header on, up to load_end_addr; no bss.
    let f = aout(0x10_0010, 0x10_0010, 0x10_0030, 0);
    let img = parse(&f).unwrap();
    assert_eq!(img.segments[0].data, &f[16..48]);
    assert_eq!(img.segments[0].memsz, 32);
}

#[test]
fn aout_kludge_refuses_inconsistent_fields() {
    assert!(err_of(&aout(0x10_0000, 0x10_0010, 0, 0)).contains("below load_addr"));
    assert!(err_of(&aout(0x10_1000, 0x10_0000, 0, 0)).contains("before the file"));
    assert!(err_of(&aout(0x10_0010, 0x10_0000, 0x10_0000 + 1000, 0)).contains("past the end"));
    assert!(err_of(&aout(0x10_0010, 0x10_0000, 0, 0x10_0004)).contains("bss_end_addr"));
    assert!(err_of(&aout(0x10_0010, 0x10_0000, 0x10_0008, 0x10_0000)).contains("below"));
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// The bytes at guest address `gpa` among the writes.
fn at(writes: &[(u64, Vec<u8>)], gpa: u64, len: usize) -> Vec<u8> {
    let (base, bytes) = writes
        .iter()
        .find(|(b, v)| *b <= gpa && gpa + len as u64 <= *b + v.len() as u64)
        .expect("address not written");
    let off = (gpa - base) as usize;
    bytes[off..off + len].to_vec()
}

fn cstr(writes: &[(u64, Vec<u8>)], gpa: u64) -> String {
    let (base, bytes) = writes
        .iter()
        .find(|(b, v)| *b <= gpa && gpa < *b + v.len() as u64)
        .expect("string not written");
    let s = &bytes[(gpa - base) as usize..];
    String::from_utf8(s[..s.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
}

#[test]
fn information_structure_fields_modules_and_memory_map() {
    let mods = [
        PlacedModule {
            gpa: 0x10_2000,
            len: 36,
            string: "env.txt role=environment",
        },
        PlacedModule {
            gpa: 0x10_3000,
            len: 1,
            string: "",
        },
    ];
    let w = info(32 << 20, "quiet console=uart", &mods).unwrap();
    let i = at(&w, INFO, 72);
    // mem (0), cmdline (2), mods (3), mmap (6), boot_loader_name (9).
    assert_eq!(u32_at(&i, 0), 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9);
    assert_eq!((u32_at(&i, 4), u32_at(&i, 8)), (640, 31 * 1024));
    assert_eq!(cstr(&w, u32_at(&i, 16).into()), "quiet console=uart");
    assert_eq!(cstr(&w, u32_at(&i, 64).into()), "rhax-vmm");
    assert_eq!(u32_at(&i, 20), 2);
    let list = at(&w, u32_at(&i, 24).into(), 32);
    assert_eq!((u32_at(&list, 0), u32_at(&list, 4)), (0x10_2000, 0x10_2024));
    assert_eq!(
        cstr(&w, u32_at(&list, 8).into()),
        "env.txt role=environment"
    );
    assert_eq!(
        (u32_at(&list, 16), u32_at(&list, 20)),
        (0x10_3000, 0x10_3001)
    );
    assert_eq!(cstr(&w, u32_at(&list, 24).into()), "");
    // Three entries: low RAM, the hole to 1 MiB (reserved), RAM from 1 MiB to the end.
    let len = u32_at(&i, 44) as usize;
    assert_eq!(len, 3 * 24);
    let map = at(&w, u32_at(&i, 48).into(), len);
    let entry = |k: usize| {
        let e = &map[k * 24..];
        let q = |o: usize| u64::from(u32_at(e, o)) | u64::from(u32_at(e, o + 4)) << 32;
        (u32_at(e, 0), q(4), q(12), u32_at(e, 20))
    };
    assert_eq!(entry(0), (20, 0, 0xA_0000, 1));
    assert_eq!(entry(1), (20, 0xA_0000, 0x6_0000, 2));
    assert_eq!(entry(2), (20, 0x10_0000, 31 << 20, 1));
    // Everything lies below 640 KiB and above the GDT at 0x500.
    assert!(w
        .iter()
        .all(|(g, v)| *g >= 0x1000 && g + v.len() as u64 <= 0xA_0000));
    assert_eq!(BOOTLOADER_MAGIC, 0x2BAD_B002);
}

#[test]
fn information_structure_without_modules_and_its_limits() {
    let w = info(8 << 20, "", &[]).unwrap();
    let i = at(&w, INFO, 72);
    assert_eq!(u32_at(&i, 0) & 1 << 3, 0, "no mods flag without modules");
    assert_eq!(u32_at(&i, 20), 0);
    let many: Vec<PlacedModule<'_>> = (0..=MAX_MODULES as u64)
        .map(|k| PlacedModule {
            gpa: 0x20_0000 + k * 0x1000,
            len: 1,
            string: "m",
        })
        .collect();
    assert!(info(8 << 20, "", &many).is_err());
    let long = "x".repeat(700 << 10);
    assert!(info(8 << 20, &long, &[]).unwrap_err().contains("640 KiB"));
    let high = [PlacedModule {
        gpa: 0xFFFF_F000,
        len: 0x2000,
        string: "",
    }];
    assert!(info(8 << 20, "", &high).is_err());
}
