//! Names for the code of `rhax.sys`, which has no symbol table: the linker's map file (`/MAP`)
//! gives each function's address; c++filt demangles them the way objdump -C does for ELF;
//! the symbols of rustup's precompiled core/alloc/compiler_builtins say which functions were
//! not compiled by us (`syscheck.rs` uses that for the `.pdata` check).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::checks;

/// The symbols of a `/MAP` file of lld-link (or link.exe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFile {
    /// "Preferred load address".
    pub image_base: u64,
    /// `(virtual address, name as linked)`, publics and statics.
    pub symbols: Vec<(u64, String)>,
}

impl MapFile {
    /// The RVA of `name`.
    pub fn rva(&self, name: &str) -> Option<u32> {
        self.symbols
            .iter()
            .find(|s| s.1 == name)
            .and_then(|s| u32::try_from(s.0.checked_sub(self.image_base)?).ok())
    }
}

/// Parses a map file: the load address line and the `Publics by Value`/`Static symbols`
/// tables (`SSSS:OOOOOOOO  name  VA  lib:object`).
pub fn parse_map(text: &str) -> Result<MapFile, String> {
    let mut image_base = None;
    let mut symbols = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Preferred load address is ") {
            image_base = u64::from_str_radix(v.trim(), 16).ok();
            continue;
        }
        if t.contains("Publics by Value") || t == "Static symbols" {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let words: Vec<&str> = t.split_whitespace().collect();
        let [loc, name, va, ..] = words.as_slice() else {
            continue;
        };
        if !loc.contains(':') {
            continue;
        }
        if let Ok(va) = u64::from_str_radix(va, 16) {
            symbols.push((va, (*name).to_string()));
        }
    }
    let image_base = image_base.ok_or("map file without a \"Preferred load address\" line")?;
    if symbols.is_empty() {
        return Err("map file without symbols".into());
    }
    Ok(MapFile {
        image_base,
        symbols,
    })
}

/// The map file of `out_dir/rhax.efi`: lld writes `rhax-<hash>.map` next to
/// `deps/rhax-<hash>.efi`, of which `rhax.efi` is a copy; several hashes may be there (older
/// builds), so the one whose image is byte-identical is taken.
pub fn find_map(out_dir: &Path) -> crate::Result<PathBuf> {
    let efi = std::fs::read(out_dir.join("rhax.efi"))
        .map_err(|e| format!("{}: {e}", out_dir.join("rhax.efi").display()))?;
    let deps = out_dir.join("deps");
    let entries = std::fs::read_dir(&deps).map_err(|e| format!("{}: {e}", deps.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("rhax-") && name.ends_with(".efi")) {
            continue;
        }
        if std::fs::read(&path).is_ok_and(|d| d == efi) {
            let map = path.with_extension("map");
            return if map.exists() {
                Ok(map)
            } else {
                Err(format!(
                    "{} has no map file (is /MAP in driver/windows/.cargo/config.toml?)",
                    path.display()
                ))
            };
        }
    }
    Err(format!(
        "no deps/rhax-*.efi in {} matches rhax.efi",
        out_dir.display()
    ))
}

/// Drops what c++filt adds to a name that objdump -C does not: the legacy mangling's
/// `::h<16 hex>` hash and v0's `[hex]` crate disambiguators (8 hex digits or more, so a
/// slice type such as `[f32]` stays).
pub fn tidy_demangled(name: &str) -> String {
    let mut s = name.to_string();
    if let Some(at) = s.rfind("::h") {
        let hash = &s[at + 3..];
        if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            s.truncate(at);
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']').map(|c| open + c);
        match close {
            Some(c) if c > open + 8 && rest[open + 1..c].bytes().all(|b| b.is_ascii_hexdigit()) => {
                out.push_str(&rest[..open]);
                rest = &rest[c + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Demangles `names` with c++filt (binutils, like objdump), one per line.
pub fn demangle(names: &[&str]) -> crate::Result<Vec<String>> {
    let mut child = Command::new("c++filt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run c++filt (install binutils): {e}"))?;
    let input = names.join("\n") + "\n";
    let mut stdin = child.stdin.take().ok_or("c++filt: no stdin")?;
    // Written from another thread: c++filt answers line by line, so with thousands of names
    // its output pipe fills while we are still writing, and both would wait forever.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes())
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("c++filt: {e}"))?;
    writer
        .join()
        .map_err(|_| "c++filt: the writer thread panicked".to_string())?
        .map_err(|e| format!("c++filt: {e}"))?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(tidy_demangled)
        .collect();
    if lines.len() != names.len() {
        return Err(format!(
            "c++filt returned {} names for {}",
            lines.len(),
            names.len()
        ));
    }
    Ok(lines)
}

/// Symbols defined by the precompiled standard library of the driver's target (rustup's
/// `core`, `alloc`, `compiler_builtins` rlibs): their code was compiled without unwind tables
/// (the target's default), which `-C force-unwind-tables=yes` cannot change, and LTO keeps
/// their names, so this is how the `.pdata` check tells their gaps from ours.
pub fn sysroot_symbols() -> crate::Result<BTreeSet<String>> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(crate::workspace_root().join("driver/windows"))
        .output()
        .map_err(|e| format!("cannot run rustc --print sysroot: {e}"))?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(checks::UEFI_TARGET)
        .join("lib");
    let mut names = BTreeSet::new();
    let entries = std::fs::read_dir(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let wanted = ["libcore-", "liballoc-", "libcompiler_builtins-"]
            .iter()
            .any(|p| file.starts_with(p));
        if !wanted || !file.ends_with(".rlib") {
            continue;
        }
        // objdump, not nm: the members carry embedded bitcode that nm's LTO plugin trips on.
        let out = Command::new("objdump")
            .arg("-t")
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run objdump: {e}"))?;
        names.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(defined_coff_symbol)
                .map(str::to_string),
        );
    }
    if names.is_empty() {
        return Err(format!(
            "no symbols in the core/alloc rlibs of {}",
            lib.display()
        ));
    }
    Ok(names)
}

/// The name in a line of objdump's COFF symbol table when the symbol is defined in a section:
/// `[419](sec 131)(fl 0x00)(ty   20)(scl   2) (nx 0) 0x0000000000000000 _RNv...5write`.
fn defined_coff_symbol(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let sec = rest.split_once("(sec")?.1.split_once(')')?.0.trim();
    if sec.parse::<i32>().ok()? <= 0 {
        return None;
    }
    line.split_whitespace().last()
}

#[cfg(test)]
pub mod tests {
    use super::{defined_coff_symbol, parse_map, tidy_demangled};

    /// A map file as lld-link writes it (shortened).
    pub const MAP: &str = " rhax-1c60e87fe157cba4

 Timestamp is 00000000 (Repro mode)

 Preferred load address is 0000000140000000

 Start         Length     Name                   Class
 0001:00000000 00000128H .text                   CODE

  Address         Publics by Value              Rva+Base               Lib:Object

 0001:00000000       DriverEntry                0000000140001000     rhax.o
 0001:00000020       rhax_vmx_enter             0000000140001020     rhax.o
 0002:000000b8       __imp_DbgPrint             00000001400020b8     lib:ntoskrnl.exe

 entry point at         0001:00000000

 Static symbols

 0002:00000000       anon.e72d949a85a1f844141613daa62581b3.0 0000000140002000     rhax.o
";

    #[test]
    fn reads_the_map_file() {
        let m = parse_map(MAP).unwrap();
        assert_eq!(m.image_base, 0x1_4000_0000);
        assert_eq!(m.symbols.len(), 4);
        assert_eq!(m.rva("DriverEntry"), Some(0x1000));
        assert_eq!(m.rva("rhax_vmx_enter"), Some(0x1020));
        assert_eq!(m.rva("nothing"), None);
        assert!(parse_map("no map").is_err());
    }

    #[test]
    fn tidies_cxxfilt_names_like_objdump() {
        assert_eq!(
            tidy_demangled("core::fmt::write::h0123456789abcdef"),
            "core::fmt::write"
        );
        assert_eq!(
            tidy_demangled("__rustc[b7974e8690430dd9]::__rust_probestack"),
            "__rustc::__rust_probestack"
        );
        assert_eq!(tidy_demangled("a[i]::h12"), "a[i]::h12");
        assert_eq!(tidy_demangled("<[f32] as x::Y>::z"), "<[f32] as x::Y>::z");
    }

    #[test]
    fn reads_defined_symbols_from_objdump_t() {
        let def = "[419](sec 131)(fl 0x00)(ty   20)(scl   2) (nx 0) 0x0000000000000000 _RNv5write";
        assert_eq!(defined_coff_symbol(def), Some("_RNv5write"));
        let undef = "[  7](sec  0)(fl 0x00)(ty    0)(scl   2) (nx 0) 0x0000000000000000 memcpy";
        assert_eq!(defined_coff_symbol(undef), None);
        let abs = "[  0](sec -1)(fl 0x00)(ty    0)(scl   3) (nx 0) 0x0000000000000000 @feat.00";
        assert_eq!(defined_coff_symbol(abs), None);
        assert_eq!(defined_coff_symbol("AUX scnlen 0x10"), None);
    }
}
