//! The fast boot image: Debian's bzImage with its XZ decompressor replaced by the already
//! decompressed kernel and a small stub (`tests/linux/pvh-stub.S`) that enters it at its PVH
//! entry point. In Bochs the decompressor alone took about 123 s of a 200 s run; syslinux
//! loads the 7x larger uncompressed image through the BIOS in a few seconds.
//!
//! The result is still a bzImage for syslinux: Debian's own real-mode setup sectors (which
//! query the BIOS E820 map and switch to protected mode), with the header fields patched that
//! describe the protected-mode part (Documentation/arch/x86/boot.rst).

use std::path::Path;
use std::process::Command;

use super::image::run_tool;

/// Where the stub runs: the boot protocol's `code32_start` for a non-relocatable kernel.
const STUB_BASE: u64 = 0x10_0000;
/// Size of the assembled stub (its `.org STUB_SIZE`).
const STUB_SIZE: usize = 0x2000;

/// Setup header offsets (boot.rst, "The real-mode kernel header").
const HDR_SETUP_SECTS: usize = 0x1f1;
const HDR_SYSSIZE: usize = 0x1f4;
const HDR_MAGIC: usize = 0x202;
const HDR_VERSION: usize = 0x206;
const HDR_CODE32_START: usize = 0x214;
const HDR_RELOCATABLE: usize = 0x234;
const HDR_PAYLOAD_OFFSET: usize = 0x248;
const HDR_PAYLOAD_LENGTH: usize = 0x24c;
const HDR_INIT_SIZE: usize = 0x260;

fn u32_at(b: &[u8], at: usize) -> crate::Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("truncated at {at:#x}"))
}

fn u64_at(b: &[u8], at: usize) -> crate::Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| format!("truncated at {at:#x}"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The bzImage's setup part (`(setup_sects + 1) * 512` bytes) and its compressed payload,
/// after checking the header.
fn split_bzimage(bz: &[u8]) -> crate::Result<(&[u8], &[u8])> {
    if bz.get(HDR_MAGIC..HDR_MAGIC + 4) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS)".into());
    }
    let version = u16::from_le_bytes([bz[HDR_VERSION], bz[HDR_VERSION + 1]]);
    if version < 0x208 {
        return Err(format!(
            "boot protocol {version:#x}: payload fields need 2.08"
        ));
    }
    let setup_len = (usize::from(bz[HDR_SETUP_SECTS]) + 1) * 512;
    let off = setup_len + u32_at(bz, HDR_PAYLOAD_OFFSET)? as usize;
    let len = u32_at(bz, HDR_PAYLOAD_LENGTH)? as usize;
    let payload = bz
        .get(off..off + len)
        .ok_or("payload outside the bzImage")?;
    Ok((&bz[..setup_len], payload))
}

/// The kernel's loadable image: bytes for `[base, base + image.len())` physical, and the
/// PVH entry (physical).
struct Loadable {
    base: u64,
    image: Vec<u8>,
    entry: u64,
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Lays out vmlinux's PT_LOAD segments by physical address and finds the PVH entry note.
fn loadable(elf: &[u8]) -> crate::Result<Loadable> {
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return Err("vmlinux: not a 64-bit ELF".into());
    }
    let phoff = u64_at(elf, 0x20)? as usize;
    let phentsize = usize::from(u16::from_le_bytes([elf[0x36], elf[0x37]]));
    let phnum = usize::from(u16::from_le_bytes([elf[0x38], elf[0x39]]));
    let mut loads = Vec::new();
    let mut entry = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32_at(elf, ph)?;
        let offset = u64_at(elf, ph + 8)? as usize;
        let paddr = u64_at(elf, ph + 0x18)?;
        let filesz = u64_at(elf, ph + 0x20)? as usize;
        let memsz = u64_at(elf, ph + 0x28)?;
        if kind == PT_LOAD {
            loads.push((paddr, offset, filesz, memsz));
        } else if kind == PT_NOTE {
            let notes = elf
                .get(offset..offset + filesz)
                .ok_or("note outside vmlinux")?;
            entry = entry.or(pvh_entry(notes)?);
        }
    }
    let base = loads
        .iter()
        .map(|l| l.0)
        .min()
        .ok_or("vmlinux: no PT_LOAD")?;
    let end = loads
        .iter()
        .map(|l| l.0 + l.3)
        .max()
        .ok_or("vmlinux: no PT_LOAD")?;
    let size = usize::try_from((end - base).next_multiple_of(4)).map_err(|e| format!("{e}"))?;
    let mut image = vec![0u8; size];
    for (paddr, offset, filesz, _) in loads {
        let at = (paddr - base) as usize;
        let data = elf
            .get(offset..offset + filesz)
            .ok_or("segment outside vmlinux")?;
        image
            .get_mut(at..at + filesz)
            .ok_or("segment file size over its memory size")?
            .copy_from_slice(data);
    }
    let entry = entry.ok_or("vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY (CONFIG_PVH=n?)")?;
    Ok(Loadable { base, image, entry })
}

/// The PVH entry from one PT_NOTE segment: notes are `namesz, descsz, type, name, desc`, name
/// and desc padded to 4 bytes.
fn pvh_entry(notes: &[u8]) -> crate::Result<Option<u64>> {
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at)? as usize;
        let descsz = u32_at(notes, at + 4)? as usize;
        let kind = u32_at(notes, at + 8)?;
        let name = at + 12;
        let desc = name + namesz.next_multiple_of(4);
        if notes.get(name..name + namesz) == Some(b"Xen\0") && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            return match descsz {
                4 => Ok(Some(u64::from(u32_at(notes, desc)?))),
                8 => Ok(Some(u64_at(notes, desc)?)),
                n => Err(format!("PVH entry note of {n} bytes")),
            };
        }
        at = desc + descsz.next_multiple_of(4);
    }
    Ok(None)
}

/// Assembles the stub for this kernel with `as` and `ld` (binutils).
fn stub(dir: &Path, k: &Loadable) -> crate::Result<Vec<u8>> {
    crate::apt::ensure(&["as", "ld"], &["binutils"])?;
    let src = crate::workspace_root().join("tests/linux/pvh-stub.S");
    let obj = dir.join("pvh-stub.o");
    let bin = dir.join("pvh-stub.bin");
    run_tool(
        Command::new("as")
            .arg("--32")
            .args(["--defsym", &format!("IMAGE_SIZE={:#x}", k.image.len())])
            .args(["--defsym", &format!("KERNEL_PHYS={:#x}", k.base)])
            .args(["--defsym", &format!("PVH_ENTRY={:#x}", k.entry)])
            .arg(&src)
            .arg("-o")
            .arg(&obj),
    )?;
    run_tool(
        Command::new("ld")
            .args(["-m", "elf_i386", "-e", "_start", "--oformat", "binary"])
            .arg(format!("-Ttext={STUB_BASE:#x}"))
            .arg("-o")
            .arg(&bin)
            .arg(&obj),
    )?;
    let code = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    if code.len() != STUB_SIZE {
        return Err(format!(
            "pvh-stub.bin is {} bytes, not {STUB_SIZE}",
            code.len()
        ));
    }
    Ok(code)
}

/// Builds the fast bzImage from Debian's `bzimage` into `out`.
pub fn build(bzimage: &Path, out: &Path) -> crate::Result {
    let bz = std::fs::read(bzimage).map_err(|e| format!("{}: {e}", bzimage.display()))?;
    let (setup, payload) = split_bzimage(&bz)?;
    if !payload.starts_with(b"\xfd7zXZ\0") {
        return Err("the bzImage payload is not XZ (CONFIG_KERNEL_XZ)".into());
    }
    let dir = out.parent().ok_or("no folder for the fast kernel")?;
    let xz = dir.join("vmlinux.xz");
    std::fs::write(&xz, payload).map_err(|e| format!("{}: {e}", xz.display()))?;
    // The payload has trailing bytes (the decompressor's size word): --single-stream.
    let elf = run_tool(
        Command::new("xz")
            .args(["-d", "-c", "--single-stream"])
            .arg(&xz),
    )?;
    let k = loadable(&elf)?;
    // The stub moves the image upwards; it must end above where it starts.
    let src = STUB_BASE + STUB_SIZE as u64;
    if k.base <= src {
        return Err(format!("kernel base {:#x} below the load area", k.base));
    }
    let mut pm = stub(dir, &k)?;
    pm.extend_from_slice(&k.image);
    let mut setup = setup.to_vec();
    let pm_len = u32::try_from(pm.len()).map_err(|_| "kernel image over 4 GiB")?;
    put_u32(&mut setup, HDR_SYSSIZE, pm_len.div_ceil(16));
    put_u32(&mut setup, HDR_CODE32_START, STUB_BASE as u32);
    // Not relocatable: syslinux then loads the protected-mode part at 0x100000 exactly.
    setup[HDR_RELOCATABLE] = 0;
    // The memory the boot loader must leave free from the load address: the whole move.
    let reach = (k.base + k.image.len() as u64 - STUB_BASE).next_multiple_of(4096);
    put_u32(
        &mut setup,
        HDR_INIT_SIZE,
        u32::try_from(reach).map_err(|_| "init_size over 4 GiB")?,
    );
    setup.extend_from_slice(&pm);
    std::fs::write(out, &setup).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&xz);
    eprintln!(
        "xtask: linux: fast kernel: {} KiB image at {:#x}, PVH entry {:#x}",
        k.image.len() >> 10,
        k.base,
        k.entry
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_pvh_note() {
        let mut n = Vec::new();
        // An unrelated note first, then Xen type 18 with a 4-byte descriptor.
        for (name, kind, desc) in [
            (&b"GNU\0"[..], 3u32, &[1u8, 2, 3][..]),
            (&b"Xen\0"[..], 18, &0x0100_0850u32.to_le_bytes()[..]),
        ] {
            n.extend_from_slice(&(name.len() as u32).to_le_bytes());
            n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            n.extend_from_slice(&kind.to_le_bytes());
            n.extend_from_slice(name);
            n.extend_from_slice(desc);
            while n.len() % 4 != 0 {
                n.push(0);
            }
        }
        assert_eq!(pvh_entry(&n).unwrap(), Some(0x0100_0850));
        assert_eq!(pvh_entry(&n[..20]).unwrap(), None);
    }

    /// A minimal ELF64: two PT_LOAD segments (the second with bss) and the PVH note.
    fn tiny_elf() -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x0100_0010u64.to_le_bytes());
        let mut e = vec![0u8; 0x200];
        e[..5].copy_from_slice(b"\x7fELF\x02");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        // (type, offset, paddr, filesz, memsz)
        let phs = [
            (PT_LOAD, 0x100u64, 0x0100_0000u64, 4u64, 4u64),
            (PT_LOAD, 0x104, 0x0100_0008, 2, 6),
            (PT_NOTE, 0x180, 0, note.len() as u64, note.len() as u64),
        ];
        for (i, (kind, off, paddr, filesz, memsz)) in phs.into_iter().enumerate() {
            let ph = 0x40 + i * 56;
            e[ph..ph + 4].copy_from_slice(&kind.to_le_bytes());
            e[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            e[ph + 0x18..ph + 0x20].copy_from_slice(&paddr.to_le_bytes());
            e[ph + 0x20..ph + 0x28].copy_from_slice(&filesz.to_le_bytes());
            e[ph + 0x28..ph + 0x30].copy_from_slice(&memsz.to_le_bytes());
        }
        e[0x100..0x106].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        e[0x180..0x180 + note.len()].copy_from_slice(&note);
        e
    }

    #[test]
    fn lays_out_segments_by_physical_address() {
        let k = loadable(&tiny_elf()).unwrap();
        assert_eq!(k.base, 0x0100_0000);
        assert_eq!(k.entry, 0x0100_0010);
        // 0x1000000..0x100000e, rounded to 4: bytes 4..8 are the gap, 10..14 the bss.
        assert_eq!(k.image, [1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 0, 0, 0, 0, 0, 0]);
        let mut bad = tiny_elf();
        bad[0x180 + 8] = 17; // no PVH note: refused, not booted blind
        assert!(loadable(&bad).is_err());
        let mut cut = tiny_elf();
        cut.truncate(0x102); // a segment past the end of the file
        assert!(loadable(&cut).is_err());
    }

    #[test]
    fn rejects_what_is_not_a_bzimage() {
        assert!(split_bzimage(&[0u8; 1024]).is_err());
        let mut bz = vec![0u8; 4096];
        bz[HDR_MAGIC..HDR_MAGIC + 4].copy_from_slice(b"HdrS");
        bz[HDR_VERSION] = 0x0f;
        bz[HDR_VERSION + 1] = 0x02;
        bz[HDR_SETUP_SECTS] = 1;
        put_u32(&mut bz, HDR_PAYLOAD_OFFSET, 0x10);
        put_u32(&mut bz, HDR_PAYLOAD_LENGTH, 0x20);
        let (setup, payload) = split_bzimage(&bz).unwrap();
        assert_eq!(setup.len(), 1024);
        assert_eq!(payload.len(), 0x20);
        put_u32(&mut bz, HDR_PAYLOAD_LENGTH, 0x10_0000);
        assert!(split_bzimage(&bz).is_err());
    }
}
