//! `cargo xtask lkm`: builds `rhax.ko` (driver/linux) against the installed Debian kernel
//! headers and checks it.
//!
//! 1. Tools: gcc, make, and the headers of the kernel `cargo xtask linux` boots (Debian's
//!    current 6.1 kernel, `linux-headers-RELEASE` from apt when missing; without Debian's
//!    package lists the newest installed `/usr/src/linux-headers-*-amd64`). The running
//!    kernel may not be Debian's, so its `uname -r` is not asked.
//! 2. The Rust half: `cargo rustc --crate-type staticlib` for x86_64-unknown-none with the
//!    crate's own flags (kernel code model, static relocations), then one relocatable object:
//!    `ld -r` pulling only what the exported `rhax_*` functions need, debug sections dropped,
//!    sections merged (`SECTIONS` below), GOT-relative references relaxed ([`relax_got`]:
//!    the module loader applies no GOTPCREL), and every symbol but the exports made local
//!    (so glue.o's own `memcpy` calls still go to the kernel's).
//! 3. Kbuild in `target/lkm/module` with glue.c, Kbuild and the object.
//! 4. Checks: the object's relocation types are ones the x86-64 module loader applies
//!    (arch/x86/kernel/module.c, `apply_relocate_add`) and its undefined symbols are the
//!    glue's; modpost printed no warning (an unresolved kernel symbol); `modinfo`'s vermagic
//!    names the headers' release; no x87/SSE/AVX instruction in the Rust object (`vector.rs`)
//!    and no stack frame over the budget (`stack.rs`); then the module's size and imports.
//!
//! Loading it needs a Debian 6.1 kernel with VT-x: the Bochs Linux of `cargo xtask linux`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run_captured as run;
use crate::{apt, disasm, stack, vector};

/// The functions the glue calls: the roots of the Rust object's link.
const EXPORTS: &[&str] = &[
    "rhax_init",
    "rhax_exit",
    "rhax_open",
    "rhax_release",
    "rhax_ioctl",
    "rhax_percpu_call",
    "rhax_lend_call",
];

/// The entry points of IOCTL paths (the stack check's roots).
const IOCTL_ENTRIES: &[&str] = &["rhax_ioctl", "rhax_open", "rhax_release"];

/// Merges the object's per-function sections (hundreds) into one per kind.
const SECTIONS: &str = "SECTIONS {
  .text : { *(.text .text.*) }
  .rodata : { *(.rodata .rodata.*) }
  .data : { *(.data .data.* .data.rel.ro .data.rel.ro.*) }
  .bss : { *(.bss .bss.*) }
}
";

/// Relocation types of ELF x86-64 (psABI Table 4.10).
mod r {
    pub const NONE: u32 = 0;
    pub const R64: u32 = 1;
    pub const PC32: u32 = 2;
    pub const GOTPCREL: u32 = 9;
    pub const R32S: u32 = 11;
    pub const PC64: u32 = 24;
    pub const PLT32: u32 = 4;
    pub const GOTPCRELX: u32 = 41;
    pub const REX_GOTPCRELX: u32 = 42;
}

/// What the 6.1 module loader applies (`apply_relocate_add`; R_X86_64_32 too, but its
/// zero-extended 32-bit value cannot reach the module area, so it is refused here).
const LOADER_TYPES: &[u32] = &[r::NONE, r::R64, r::R32S, r::PC32, r::PLT32, r::PC64];

/// [`LOADER_TYPES`] by name, as readelf prints them.
const LOADER_TYPE_NAMES: &[&str] = &[
    "R_X86_64_NONE",
    "R_X86_64_64",
    "R_X86_64_32S",
    "R_X86_64_PC32",
    "R_X86_64_PLT32",
    "R_X86_64_PC64",
];

/// The stage `cargo xtask test` runs: the module crate's own source checks (it is outside the
/// workspace: formatting, clippy `-D warnings` on the host and on the kernel target, its host
/// unit tests), then [`main`]'s build and checks of `rhax.ko`. Loading it needs a Debian kernel
/// with VT-x (the Bochs Linux stage), not this machine.
pub fn stage() -> crate::Result {
    const DIR: &str = "driver/linux/rust";
    crate::ensure_rust_target("x86_64-unknown-none")?;
    let target_dir = crate::target_dir().join("lkm").join("cargo");
    let target_dir = target_dir.display().to_string();
    crate::cargo_in(DIR, &["fmt", "--check"])?;
    crate::cargo_in(
        DIR,
        &["clippy", "-q", "--all-targets", "--", "-D", "warnings"],
    )?;
    crate::cargo_in(
        DIR,
        &[
            "clippy",
            "-q",
            "--target",
            "x86_64-unknown-none",
            "--target-dir",
            &target_dir,
            "--",
            "-D",
            "warnings",
        ],
    )?;
    crate::cargo_in(DIR, &["test", "-q"])?;
    main(&[])
}

/// `cargo xtask lkm`.
pub fn main(_args: &[String]) -> crate::Result {
    let t0 = std::time::Instant::now();
    apt::ensure(
        &["gcc", "make", "ld", "objcopy", "objdump", "readelf"],
        &["gcc", "make", "binutils"],
    )?;
    let kdir = headers()?;
    println!("lkm: headers {}", kdir.display());
    crate::ensure_rust_target("x86_64-unknown-none")?;
    let out = crate::target_dir().join("lkm");
    let staticlib = build_rust(&out)?;
    let module = out.join("module");
    std::fs::create_dir_all(&module).map_err(|e| format!("{}: {e}", module.display()))?;
    let object = module.join("rhax_rust.o");
    link_object(&staticlib, &out, &object)?;
    // modpost reads each object's `.NAME.o.cmd` (Kbuild writes one per object it compiles; the
    // prebuilt object has none): a comment says where it came from.
    let cmd = module.join(".rhax_rust.o.cmd");
    std::fs::write(
        &cmd,
        "# prebuilt by `cargo xtask lkm` from driver/linux/rust\n",
    )
    .map_err(|e| format!("{}: {e}", cmd.display()))?;
    let src = crate::workspace_root().join("driver/linux");
    for f in ["glue.c", "Kbuild"] {
        std::fs::copy(src.join(f), module.join(f)).map_err(|e| format!("copy {f}: {e}"))?;
    }
    let log = make(&kdir, &module)?;
    let ko = module.join("rhax.ko");
    check_ko(&ko, &kdir, &log)?;
    check_code(&object)?;
    let size = std::fs::metadata(&ko).map(|m| m.len()).unwrap_or(0);
    println!(
        "lkm: {} ({} bytes, {:.1}s)",
        ko.display(),
        size,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The headers of the kernel `cargo xtask linux` boots (Debian's current 6.1 kernel, the one
/// `linux-image-amd64` depends on: `linux::image::kernel_package`), installed when missing:
/// a module built against other headers is refused by that kernel ("disagrees about version
/// of symbol module_layout", as on CI once Debian moved from 6.1.0-48 to 6.1.0-57 with -48's
/// headers still installed). Without the package lists (not Debian) or that package, the
/// newest installed `/usr/src/linux-headers-*-amd64`, installing `linux-headers-amd64` when
/// there is none.
fn headers() -> crate::Result<PathBuf> {
    if let Ok(pkg) = crate::linux::image::kernel_package() {
        let release = pkg.strip_prefix("linux-image-").unwrap_or(&pkg);
        let dir = PathBuf::from(format!("/usr/src/linux-headers-{release}"));
        if dir.join("Makefile").is_file() {
            return Ok(dir);
        }
        let headers = format!("linux-headers-{release}");
        match apt::install(&[&headers]) {
            Ok(()) if dir.join("Makefile").is_file() => return Ok(dir),
            Ok(()) => println!(
                "lkm: note: {headers} installed but {} has no Makefile",
                dir.display()
            ),
            Err(e) => println!(
                "lkm: note: {headers} not installed ({e}); the newest installed headers instead"
            ),
        }
    }
    if let Some(d) = newest_headers() {
        return Ok(d);
    }
    apt::install(&["linux-headers-amd64"])?;
    newest_headers().ok_or_else(|| {
        "no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64".into()
    })
}

fn newest_headers() -> Option<PathBuf> {
    let mut dirs: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/usr/src")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let ver = name
                .strip_prefix("linux-headers-")?
                .strip_suffix("-amd64")?;
            e.path()
                .join("Makefile")
                .is_file()
                .then(|| (version_key(ver), e.path()))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|d| d.1)
}

/// "6.1.0-57" -> [6, 1, 0, 57]: numeric order of Debian's header versions.
fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// The crate as a staticlib for the kernel target.
fn build_rust(out: &Path) -> crate::Result<PathBuf> {
    let target = out.join("cargo").display().to_string();
    crate::cargo_in(
        "driver/linux/rust",
        &[
            "rustc",
            "--release",
            "--lib",
            "--crate-type",
            "staticlib",
            "--target",
            "x86_64-unknown-none",
            "--target-dir",
            &target,
        ],
    )
    .map_err(|e| format!("building driver/linux/rust failed: {e}"))?;
    Ok(Path::new(&target).join("x86_64-unknown-none/release/librhax_linux.a"))
}

/// The staticlib as one relocatable object the module loader can apply.
fn link_object(staticlib: &Path, out: &Path, object: &Path) -> crate::Result {
    let script = out.join("sections.ld");
    std::fs::write(&script, SECTIONS).map_err(|e| format!("{}: {e}", script.display()))?;
    let mut ld = Command::new("ld");
    ld.args(["-r", "-S", "-T"])
        .arg(&script)
        .arg("-o")
        .arg(object);
    for s in EXPORTS {
        ld.args(["-u", s]);
    }
    ld.arg(staticlib);
    run(&mut ld, "ld -r")?;
    let mut bytes = std::fs::read(object).map_err(|e| format!("{}: {e}", object.display()))?;
    let n = relax_got(&mut bytes)?;
    std::fs::write(object, &bytes).map_err(|e| format!("{}: {e}", object.display()))?;
    println!("lkm: rhax_rust.o: {n} GOT-relative references relaxed");
    let mut objcopy = Command::new("objcopy");
    // compiler_builtins' members carry their LLVM bitcode (.llvmbc, .llvmcmd): not code,
    // and modpost warns about non-allocatable sections it does not know.
    objcopy.args(["--remove-section=.llvmbc", "--remove-section=.llvmcmd"]);
    for s in EXPORTS {
        objcopy.arg(format!("--keep-global-symbol={s}"));
    }
    objcopy.arg(object);
    run(&mut objcopy, "objcopy")?;
    // Relocation types and undefined symbols.
    let relocs = run(
        Command::new("readelf").args(["-rW"]).arg(object),
        "readelf -r",
    )?;
    let mut bad = std::collections::BTreeSet::new();
    for line in relocs.lines() {
        if let Some(ty) = line
            .split_whitespace()
            .nth(2)
            .filter(|t| t.starts_with("R_X86_64_"))
        {
            if !matches!(
                ty,
                "R_X86_64_NONE"
                    | "R_X86_64_64"
                    | "R_X86_64_32S"
                    | "R_X86_64_PC32"
                    | "R_X86_64_PLT32"
                    | "R_X86_64_PC64"
            ) {
                bad.insert(ty.to_string());
            }
        }
    }
    if !bad.is_empty() {
        return Err(format!(
            "rhax_rust.o has relocations the module loader refuses: {bad:?}"
        ));
    }
    let syms = run(
        Command::new("readelf").args(["-sW"]).arg(object),
        "readelf -s",
    )?;
    let undefined: Vec<&str> = syms
        .lines()
        .filter(|l| l.split_whitespace().nth(6) == Some("UND"))
        .filter_map(|l| l.split_whitespace().nth(7))
        .collect();
    let foreign: Vec<&&str> = undefined
        .iter()
        .filter(|s| !s.starts_with("rhax_glue_"))
        .collect();
    if !foreign.is_empty() {
        return Err(format!(
            "rhax_rust.o needs symbols the glue does not define: {foreign:?}"
        ));
    }
    println!(
        "lkm: rhax_rust.o imports {} glue functions",
        undefined.len()
    );
    Ok(())
}

/// Kbuild.
fn make(kdir: &Path, module: &Path) -> crate::Result<String> {
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(kdir)
        .arg(format!("M={}", module.display()))
        .arg("modules");
    let log = run(&mut make, "make modules")?;
    print!("{log}");
    Ok(log)
}

/// modpost's verdict, vermagic, imports.
fn check_ko(ko: &Path, kdir: &Path, log: &str) -> crate::Result {
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARNING")).collect();
    if !warnings.is_empty() {
        return Err(format!("modpost/Kbuild warnings:\n{}", warnings.join("\n")));
    }
    // UTS_RELEASE is what vermagic and `uname -r` say (Debian's include/config/kernel.release
    // holds the upstream version, 6.1.x, instead).
    let uts = std::fs::read_to_string(kdir.join("include/generated/utsrelease.h"))
        .map_err(|e| format!("utsrelease.h: {e}"))?;
    let release = uts
        .split('"')
        .nth(1)
        .ok_or_else(|| format!("no UTS_RELEASE in {uts:?}"))?
        .to_string();
    let vermagic = run(
        Command::new("modinfo").args(["-F", "vermagic"]).arg(ko),
        "modinfo",
    )
    .or_else(|_| {
        // modinfo is in kmod, not always installed: read the .modinfo section.
        run(Command::new("strings").arg(ko), "strings").map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("vermagic="))
                .unwrap_or("")
                .to_string()
        })
    })?;
    if vermagic.split_whitespace().next() != Some(release.trim()) {
        return Err(format!(
            "vermagic {:?} does not name {}",
            vermagic.trim(),
            release.trim()
        ));
    }
    println!("lkm: vermagic {}", vermagic.trim());
    // Relocations the loader applies (those of allocated sections; debug sections' are not).
    let relocs = run(Command::new("readelf").args(["-rW"]).arg(ko), "readelf -r")?;
    let mut section = String::new();
    for line in relocs.lines() {
        if let Some(rest) = line.strip_prefix("Relocation section '") {
            section = rest.split('\'').next().unwrap_or("").to_string();
        } else if let Some(ty) = line.split_whitespace().nth(2) {
            if ty.starts_with("R_X86_64_")
                && !section.starts_with(".rela.debug")
                && !LOADER_TYPE_NAMES.contains(&ty)
            {
                return Err(format!(
                    "rhax.ko: {ty} in {section}: the module loader refuses it"
                ));
            }
        }
    }
    let size = run(Command::new("size").arg(ko), "size")?;
    print!("lkm: {size}");
    let syms = run(Command::new("readelf").args(["-sW"]).arg(ko), "readelf -s")?;
    let mut imports: Vec<&str> = syms
        .lines()
        .filter(|l| l.split_whitespace().nth(6) == Some("UND"))
        .filter_map(|l| l.split_whitespace().nth(7))
        .collect();
    imports.sort_unstable();
    imports.dedup();
    println!(
        "lkm: rhax.ko imports {} kernel symbols: {}",
        imports.len(),
        imports.join(" ")
    );
    Ok(())
}

/// No vector instruction, no frame over the budget in the Rust object.
fn check_code(object: &Path) -> crate::Result {
    let functions = disasm::objdump(object)?;
    println!("{}", vector::check("rhax_rust.o", &functions)?);
    // The module's load path builds the dispatcher by value once (rhax-core's
    // `Hypervisor::new` returns it, 5 KiB with its CPUID table), in insmod's process context
    // on a 16 KiB stack; no IOCTL reaches it. It is held to its own bound here (the shared
    // allowance list is stack.rs's, where rhax.sys's load path has its entry).
    let (load, rest): (Vec<_>, Vec<_>) = functions
        .into_iter()
        .partition(|f| LOAD_PATH.iter().any(|p| f.name.starts_with(p)));
    for f in &load {
        let (bytes, _) = stack::frame_bytes(f);
        println!(
            "stack: load path {}: {bytes} B (bound {LOAD_PATH_BOUND} B)",
            f.name
        );
        if bytes > LOAD_PATH_BOUND {
            return Err(format!("{}: {bytes} B frame on the load path", f.name));
        }
    }
    stack::check("rhax_rust.o", &rest, false)?;
    // Call targets of a relocatable object are relocations: a throwaway static link (glue
    // symbols left at 0) resolves the Rust-to-Rust calls, so the deepest stack from each
    // file operation and recursion can be checked. Dynamic dispatch is not followed.
    let linked = object.with_extension("linked");
    let mut ld = Command::new("ld");
    ld.args([
        "-static",
        "--unresolved-symbols=ignore-all",
        "-e",
        "rhax_ioctl",
        "-o",
    ])
    .arg(&linked)
    .arg(object);
    run(&mut ld, "ld (stack analysis link)")?;
    let functions: Vec<_> = disasm::objdump(&linked)?
        .into_iter()
        .filter(|f| !LOAD_PATH.iter().any(|p| f.name.starts_with(p)))
        .collect();
    stack::check_from("rhax_rust.o (linked)", &functions, true, IOCTL_ENTRIES)
}

/// Functions only module init runs (no IOCTL path), with their own frame bound.
const LOAD_PATH: &[&str] = &["rhax_linux::entry::build"];
/// The load path's frame bound: a third of the 16 KiB kernel stack.
const LOAD_PATH_BOUND: u64 = 6 * 1024;

/// Reads a little-endian integer of `N` bytes at `off`.
fn le<const N: usize>(b: &[u8], off: usize) -> crate::Result<u64> {
    let s = b
        .get(off..off + N)
        .ok_or_else(|| format!("ELF truncated at {off:#x}"))?;
    let mut v = [0u8; 8];
    v[..N].copy_from_slice(s);
    Ok(u64::from_le_bytes(v))
}

/// Rewrites one GOT-relative reference at `off` (the 32-bit field) of `code` into a direct
/// one, as a linker's relaxation does (x86-64 psABI §B.2): `call *sym@GOTPCREL(%rip)`
/// (FF 15) becomes `addr32 call sym` (67 E8), `jmp *sym@GOTPCREL(%rip)` (FF 25) `jmp sym;
/// nop` (E9 .. 90, the field one byte earlier), `mov sym@GOTPCREL(%rip), %reg` (8B) `lea
/// sym(%rip), %reg` (8D). Returns the new relocation type and the field's new offset, or
/// `None` for an instruction it does not know.
pub fn relax_site(code: &mut [u8], off: usize) -> Option<(u32, usize)> {
    let (a, b) = (off.checked_sub(2)?, off.checked_sub(1)?);
    match (code.get(a)?, code.get(b)?) {
        (0xff, 0x15) => {
            code[a] = 0x67;
            code[b] = 0xe8;
            Some((r::PLT32, off))
        }
        (0xff, 0x25) => {
            let field: [u8; 4] = code.get(off..off + 4)?.try_into().ok()?;
            code[a] = 0xe9;
            code[b..b + 4].copy_from_slice(&field);
            code[b + 4] = 0x90;
            Some((r::PLT32, b))
        }
        // ModRM with mod 00 and r/m 101: RIP-relative.
        (0x8b, modrm) if modrm & 0xc7 == 0x05 => {
            code[a] = 0x8d;
            Some((r::PC32, off))
        }
        _ => None,
    }
}

/// Relaxes every GOTPCREL(X) relocation of an ELF64 relocatable object in place; returns how
/// many. Fails on one it cannot rewrite (the loader would refuse the module).
pub fn relax_got(elf: &mut [u8]) -> crate::Result<usize> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 object".into());
    }
    let shoff = le::<8>(elf, 0x28)? as usize;
    let shentsize = le::<2>(elf, 0x3a)? as usize;
    let shnum = le::<2>(elf, 0x3c)? as usize;
    let section = |elf: &[u8], i: usize| -> crate::Result<(u32, usize, usize, usize)> {
        let h = shoff + i * shentsize;
        Ok((
            le::<4>(elf, h + 4)? as u32,      // sh_type
            le::<8>(elf, h + 0x18)? as usize, // sh_offset
            le::<8>(elf, h + 0x20)? as usize, // sh_size
            le::<4>(elf, h + 0x2c)? as usize, // sh_info
        ))
    };
    let mut n = 0;
    for i in 0..shnum {
        let (ty, off, size, info) = section(elf, i)?;
        if ty != 4 {
            continue; // SHT_RELA only
        }
        let (_, target_off, target_size, _) = section(elf, info)?;
        for e in (off..off + size).step_by(24) {
            let r_offset = le::<8>(elf, e)? as usize;
            let r_info = le::<8>(elf, e + 8)?;
            let rtype = (r_info & 0xffff_ffff) as u32;
            if !matches!(rtype, r::GOTPCREL | r::GOTPCRELX | r::REX_GOTPCRELX) {
                continue;
            }
            if r_offset + 4 > target_size {
                return Err(format!("GOTPCREL outside its section at {r_offset:#x}"));
            }
            let code = &mut elf[target_off..target_off + target_size];
            let (new_type, new_offset) = relax_site(code, r_offset).ok_or_else(|| {
                format!("cannot relax the GOTPCREL at {r_offset:#x} (section {info})")
            })?;
            let new_info = (r_info & !0xffff_ffff) | u64::from(new_type);
            elf[e..e + 8].copy_from_slice(&(new_offset as u64).to_le_bytes());
            elf[e + 8..e + 16].copy_from_slice(&new_info.to_le_bytes());
            n += 1;
        }
    }
    let _ = LOADER_TYPES;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_through_got_becomes_addr32_call() {
        let mut code = [0x90, 0xff, 0x15, 1, 2, 3, 4, 0xc3];
        assert_eq!(relax_site(&mut code, 3), Some((r::PLT32, 3)));
        assert_eq!(code, [0x90, 0x67, 0xe8, 1, 2, 3, 4, 0xc3]);
    }

    #[test]
    fn jmp_through_got_becomes_jmp_and_nop() {
        let mut code = [0xff, 0x25, 1, 2, 3, 4];
        assert_eq!(relax_site(&mut code, 2), Some((r::PLT32, 1)));
        assert_eq!(code, [0xe9, 1, 2, 3, 4, 0x90]);
    }

    #[test]
    fn mov_from_got_becomes_lea() {
        // mov rax, [rip+x]: 48 8B 05
        let mut code = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
        assert_eq!(relax_site(&mut code, 3), Some((r::PC32, 3)));
        assert_eq!(code[..3], [0x48, 0x8d, 0x05]);
        // mov rax, [rbx+...] is not RIP-relative: refused.
        let mut other = [0x48, 0x8b, 0x43, 0, 0, 0, 0];
        assert_eq!(relax_site(&mut other, 3), None);
    }

    #[test]
    fn unknown_instruction_is_refused() {
        let mut code = [0x00, 0x00, 0, 0, 0, 0];
        assert_eq!(relax_site(&mut code, 2), None);
        assert_eq!(relax_site(&mut code, 1), None);
    }

    #[test]
    fn header_versions_sort_numerically() {
        assert!(version_key("6.1.0-57") > version_key("6.1.0-9"));
        assert!(version_key("6.10.0-1") > version_key("6.9.0-30"));
    }

    #[test]
    fn not_elf_is_an_error() {
        assert!(relax_got(&mut [0u8; 64]).is_err());
    }
}
