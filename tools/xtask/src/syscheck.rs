//! The checks of a built `rhax.sys` (`cargo xtask sys`), each failing the build when violated:
//!
//! * headers: AMD64, PE32+, NATIVE subsystem, DllCharacteristics NX + DYNAMIC_BASE +
//!   FORCE_INTEGRITY + HIGH_ENTROPY_VA, relocations not stripped, page-aligned sections, a
//!   valid (non-zero) checksum; no section both writable and executable; no TLS directory (the
//!   kernel loader runs no TLS callbacks and allocates no TLS slots for drivers);
//! * imports only from ntoskrnl.exe and HAL.dll, no delay-load imports (a kernel image binds
//!   only against the kernel and the HAL; a user-mode DLL import fails the load);
//! * the entry point is `DriverEntry` (named by the linker's map file, `/MAP`), in `.text`;
//! * the kernel-code checks over the image's disassembly (objdump reads PE; functions named
//!   from the map): no x87/SSE/AVX outside the FXSAVE/FXRSTOR sites (`vector.rs`), the entry
//!   stub's register saving (`stub.rs`), frames within the budget and no recursion on the
//!   IOCTL paths, which start at the IRP handlers (`stack.rs`), the load path's whole depth
//!   (`DriverEntry`, [`LOAD_PATH_LIMIT`]), no test doubles. Reachability follows direct calls
//!   and tail jumps only: a call through a function pointer (a vtable, a table of pointers the
//!   optimizer built for a `match`) is not followed, so "on an IOCTL path" can be missed; the
//!   frame budget itself applies to every function, reachable or not;
//! * `.pdata`: sorted, non-overlapping entries inside executable sections whose unwind info
//!   decodes; an entry for every function of ours that moves RSP (only leaf functions may go
//!   without: "x64 exception handling"); and entries for the assembly VM entry/exit stub whose
//!   codes record the 8 callee-saved pushes (and, for the exit, the whole frame it is entered
//!   on): without them a Windows stack walk (bugcheck, debugger) through the stub loses its
//!   caller. Known gap, reported by name and not failed: rustup's precompiled core, alloc and
//!   compiler_builtins for x86_64-unknown-uefi carry no unwind tables (core::fmt, memcpy...),
//!   and only a -Zbuild-std build (not stable) could rebuild them with them.
//!
//! What a static check cannot say (not verified anywhere here): that the real Windows loader
//! accepts the image, that the imports exist in the ntoskrnl of a given Windows build, and
//! anything about run-time behaviour (IRQL, Driver Verifier).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::disasm::{self, Function};
use crate::pe::{self, Pe};
use crate::symbols::{demangle, parse_map, sysroot_symbols, MapFile};
use crate::{checks, stack, stub, vector};

/// DLLs a kernel driver may import from (compared case-insensitively).
pub const ALLOWED_DLLS: [&str; 2] = ["ntoskrnl.exe", "hal.dll"];

/// The IOCTL entry points of the driver (roots, `stack::is_root`): its IRP handlers (the
/// shell's `irp` module) and the dispatcher's entry points when they are not inlined.
pub const DRIVER_IOCTL_ENTRIES: [&str; 5] = [
    "rhax_sys::irp::",
    "rhax_core::dispatch::Hypervisor<P,R>::dispatch",
    "rhax_core::dispatch::Hypervisor<P,R>::open_vm",
    "rhax_core::dispatch::Hypervisor<P,R>::open_vcpu",
    "rhax_core::dispatch::Hypervisor<P,R>::close",
];

/// An import whose presence says the image is a whole shell (it creates `\Device\HAX`), not
/// the skeleton: then the VM entry stub and IRP handlers must be found, not skipped.
pub const SHELL_MARKER_IMPORT: &str = "IoCreateDevice";

/// The deepest stack the load path (`DriverEntry` and what it calls directly) may use: half
/// of the 24 KiB an x64 kernel thread has (KERNEL_STACK_SIZE), leaving the rest to the I/O
/// manager and the loader above it and to interrupts. Its frames are allowed over the
/// IOCTL-path budget (`stack::ALLOWED`), but not without bound.
pub const LOAD_PATH_LIMIT: u64 = 12 * 1024;

/// Bytes the stub's unwind codes must describe: `rhax_vmx_enter` pushes 8 registers;
/// `rhax_vmx_exit` is entered on that frame plus 16 bytes (report, regs pointer) and pushes
/// RAX (`driver/core/src/vmx/hw.rs`).
pub const STUB_FRAMES: [(&str, u32); 2] = [("rhax_vmx_enter", 64), ("rhax_vmx_exit", 64 + 16 + 8)];

/// The outcome of the checks on one image: evidence lines and violations.
#[derive(Debug, Default)]
pub struct Report {
    /// What was measured and passed.
    pub lines: Vec<String>,
    /// What failed.
    pub errors: Vec<String>,
}

impl Report {
    fn rule(&mut self, ok: bool, pass: String, fail: String) {
        if ok {
            self.lines.push(pass);
        } else {
            self.errors.push(fail);
        }
    }
}

/// The header, section, directory and import rules; returns the imports.
pub fn check_headers(pe: &Pe, r: &mut Report) -> Vec<(String, Vec<String>)> {
    let h = &pe.header;
    r.rule(
        h.machine == pe::MACHINE_AMD64 && h.magic == pe::MAGIC_PE32_PLUS,
        format!("machine AMD64 ({:#x}), PE32+", h.machine),
        format!(
            "machine {:#x} / magic {:#x}: not an AMD64 PE32+ image",
            h.machine, h.magic
        ),
    );
    r.rule(
        h.subsystem == pe::SUBSYSTEM_NATIVE,
        "subsystem NATIVE (1)".into(),
        format!(
            "subsystem {}, not NATIVE (1): not a kernel driver",
            h.subsystem
        ),
    );
    let want = [
        (pe::DLL_NX_COMPAT, "NX_COMPAT"),
        (pe::DLL_DYNAMIC_BASE, "DYNAMIC_BASE"),
        (pe::DLL_FORCE_INTEGRITY, "FORCE_INTEGRITY"),
        (pe::DLL_HIGH_ENTROPY_VA, "HIGH_ENTROPY_VA"),
    ];
    let missing: Vec<&str> = want
        .iter()
        .filter(|(b, _)| h.dll_characteristics & b == 0)
        .map(|w| w.1)
        .collect();
    r.rule(
        missing.is_empty(),
        format!(
            "DllCharacteristics {:#06x}: NX_COMPAT, DYNAMIC_BASE, FORCE_INTEGRITY, HIGH_ENTROPY_VA",
            h.dll_characteristics
        ),
        format!(
            "DllCharacteristics {:#06x} lacks {}",
            h.dll_characteristics,
            missing.join(", ")
        ),
    );
    let relocs = pe.directory(pe::DIR_BASERELOC).1;
    r.rule(
        h.characteristics & pe::FILE_RELOCS_STRIPPED == 0,
        format!(
            "relocations not stripped (Characteristics {:#x}); base relocation directory {}",
            h.characteristics,
            if relocs == 0 {
                "empty (all code RIP-relative: nothing to fix up when the loader rebases it; \
                 windows-cross-build.md P13, not verified on Windows)"
                    .to_string()
            } else {
                format!("{relocs} B")
            }
        ),
        "RELOCS_STRIPPED set: the image cannot be rebased (DYNAMIC_BASE is void)".into(),
    );
    r.rule(
        h.section_alignment == 0x1000,
        "sections page-aligned (SectionAlignment 0x1000; HVCI needs it)".into(),
        format!(
            "SectionAlignment {:#x}, not the page size 0x1000",
            h.section_alignment
        ),
    );
    let computed = pe.computed_checksum();
    r.rule(
        h.checksum != 0 && h.checksum == computed,
        format!(
            "checksum {:#010x} (header) = {computed:#010x} (computed)",
            h.checksum
        ),
        format!(
            "checksum in the header {:#010x}, computed {computed:#010x} (the kernel loader \
             refuses a driver whose checksum is wrong)",
            h.checksum
        ),
    );
    for s in &pe.sections {
        let wx = s.flags & pe::SCN_MEM_WRITE != 0 && s.flags & pe::SCN_MEM_EXECUTE != 0;
        r.rule(
            !wx,
            format!(
                "section {:<8} {} RVA {:#07x} size {:#07x} (raw {:#07x}) flags {:#010x}",
                s.name,
                s.rwxd(),
                s.va,
                s.vsize,
                s.raw_size,
                s.flags
            ),
            format!("section {} is writable and executable", s.name),
        );
    }
    let (tls, _) = pe.directory(pe::DIR_TLS);
    let tls_section = pe.sections.iter().any(|s| s.name == ".tls");
    r.rule(
        tls == 0 && !tls_section,
        "no TLS directory or .tls section".into(),
        "the image has thread-local storage (TLS directory or .tls section)".into(),
    );
    r.rule(
        pe.directory(pe::DIR_DELAY_IMPORT).0 == 0,
        "no delay-load imports".into(),
        "the image has delay-load imports (not resolved for drivers)".into(),
    );
    let imports = match pe.imports() {
        Ok(i) => i,
        Err(e) => {
            r.errors.push(format!("imports: {e}"));
            return Vec::new();
        }
    };
    for (dll, functions) in &imports {
        let allowed = ALLOWED_DLLS.iter().any(|a| a.eq_ignore_ascii_case(dll));
        r.rule(
            allowed,
            format!(
                "imports from {dll} ({}): {}",
                functions.len(),
                functions.join(" ")
            ),
            format!(
                "imports from {dll} ({}), which is not one of {}",
                functions.join(" "),
                ALLOWED_DLLS.join(", ")
            ),
        );
    }
    imports
}

/// The entry point is `DriverEntry`, in an executable section.
pub fn check_entry(pe: &Pe, map: &MapFile, r: &mut Report) {
    let entry = pe.header.entry;
    let section = pe.section_of(entry);
    let exec = section.is_some_and(|s| s.flags & pe::SCN_MEM_EXECUTE != 0);
    let driver_entry = map.rva("DriverEntry");
    r.rule(
        driver_entry == Some(entry) && exec,
        format!(
            "entry point RVA {entry:#x} = DriverEntry, in {}",
            section.map_or("?", |s| s.name.as_str())
        ),
        format!(
            "entry point RVA {entry:#x} (section {}) is not DriverEntry (map: {})",
            section.map_or("none", |s| s.name.as_str()),
            driver_entry.map_or("no DriverEntry".into(), |d| format!("{d:#x}"))
        ),
    );
}

/// `.pdata` sanity, and the entries of the VM entry stub. `functions`: the image's
/// disassembly (to find the stub's last `ret`); `precompiled`: addresses of functions of the
/// precompiled standard library (`symbols::sysroot_symbols`); `required`: a missing stub is an error.
pub fn check_unwind(
    pe: &Pe,
    map: &MapFile,
    functions: &[Function],
    precompiled: &BTreeSet<u64>,
    required: bool,
    r: &mut Report,
) {
    let table = match pe.runtime_functions() {
        Ok(t) => t,
        Err(e) => {
            r.errors.push(format!(".pdata: {e}"));
            return;
        }
    };
    let mut bad = Vec::new();
    for (n, f) in table.iter().enumerate() {
        let exec = |rva: u32| {
            pe.section_of(rva)
                .is_some_and(|s| s.flags & pe::SCN_MEM_EXECUTE != 0)
        };
        if f.begin >= f.end || !exec(f.begin) || !exec(f.end - 1) {
            bad.push(format!(
                "entry {n} [{:#x}, {:#x}) outside code",
                f.begin, f.end
            ));
        }
        if n > 0 && table[n - 1].end > f.begin {
            bad.push(format!(
                "entry {n} at {:#x} unsorted or overlapping",
                f.begin
            ));
        }
        match pe.unwind_info(f.unwind) {
            Ok(u) if u.version == 1 || u.version == 2 => {}
            Ok(u) => bad.push(format!("entry {n}: UNWIND_INFO version {}", u.version)),
            Err(e) => bad.push(format!("entry {n}: {e}")),
        }
    }
    r.rule(
        bad.is_empty() && !table.is_empty(),
        format!(
            ".pdata: {} RUNTIME_FUNCTION entries, sorted, in code, unwind info decodes",
            table.len()
        ),
        format!(".pdata: {} entries; {}", table.len(), bad.join("; ")),
    );
    // Every function that moves RSP (pushes, allocates) is not a leaf in the x64 ABI's sense
    // and needs a .pdata entry ("x64 exception handling": only leaf functions may go without).
    let covered = |rva: u32| table.iter().any(|e| e.begin <= rva && rva < e.end);
    let (mut known, mut uncovered) = (Vec::new(), Vec::new());
    for f in functions {
        let rva = f.addr.saturating_sub(map.image_base) as u32;
        if stack::frame_bytes(f).0 == 0 || covered(rva) {
            continue;
        }
        if precompiled.contains(&f.addr) || stack::is_probe_routine(&f.name) {
            known.push(f.name.as_str());
        } else {
            uncovered.push(f.name.as_str());
        }
    }
    r.rule(
        uncovered.is_empty(),
        format!(
            ".pdata: every function of the driver's crates that moves RSP has an entry{}",
            if known.is_empty() {
                String::new()
            } else {
                format!(
                    "; KNOWN GAP: {} function(s) of rustup's precompiled core/alloc/\
                     compiler_builtins for {} have none (built without unwind tables; only \
                     -Zbuild-std would rebuild them), so a stack walk from inside them stops \
                     there: {}",
                    known.len(),
                    checks::UEFI_TARGET,
                    known.join(", ")
                )
            }
        ),
        format!(
            ".pdata: {} function(s) move RSP without unwind data (stack walks through them \
             fail): {}",
            uncovered.len(),
            uncovered.join(", ")
        ),
    );
    for (name, frame) in STUB_FRAMES {
        let Some(rva) = map.rva(name) else {
            if required {
                r.errors.push(format!(
                    "{name} is not in the image: a shell that cannot enter a guest"
                ));
            } else {
                r.lines.push(format!(
                    "NOT CHECKED: {name} is not linked into this image (no VMX code yet), so \
                     its .pdata entry cannot be checked"
                ));
            }
            continue;
        };
        let last_ret = functions
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.insns.iter().rev().find(|i| i.mnemonic == "ret"))
            .map(|i| i.addr.saturating_sub(map.image_base) as u32);
        let Some(entry) = table.iter().find(|f| f.begin == rva) else {
            r.errors.push(format!(
                "{name} (RVA {rva:#x}) has no .pdata entry: stack walks through the VM entry \
                 stub fail (.seh_proc directives in driver/core/src/vmx/hw.rs)"
            ));
            continue;
        };
        let covers = last_ret.is_some_and(|ret| ret >= entry.begin && ret < entry.end);
        let info = pe.unwind_info(entry.unwind);
        let (pushed, bytes) = info
            .as_ref()
            .map_or((Vec::new(), 0), |u| (u.pushed(), u.frame_bytes()));
        let all_saved = stub::CALLEE_SAVED.iter().all(|c| pushed.contains(c));
        r.rule(
            covers && all_saved && bytes == frame,
            format!(
                ".pdata: {name} [{:#x}, {:#x}) covers its last ret; unwind codes push {} and \
                 describe {bytes} B",
                entry.begin,
                entry.end,
                pushed.join(" ")
            ),
            format!(
                ".pdata: {name} [{:#x}, {:#x}) (last ret {}): unwind codes push [{}] and \
                 describe {bytes} B; expected all of {:?} and {frame} B",
                entry.begin,
                entry.end,
                last_ret.map_or("not found".into(), |a| format!("{a:#x}")),
                pushed.join(" "),
                stub::CALLEE_SAVED
            ),
        );
    }
}

/// The image's code: its functions named from the map, the number of instructions in the
/// listing, and the addresses of functions from the precompiled standard library.
pub struct Code {
    /// Functions (demangled names).
    pub functions: Vec<Function>,
    /// Instructions objdump listed.
    pub total: usize,
    /// Addresses of functions whose symbol the sysroot's core/alloc/compiler_builtins define.
    pub precompiled: BTreeSet<u64>,
}

/// Disassembles `sys` and names its functions from `map`.
pub fn functions(sys: &Path, pe: &Pe, map: &MapFile) -> crate::Result<Code> {
    let code: Vec<&(u64, String)> = map
        .symbols
        .iter()
        .filter(|(va, _)| {
            va.checked_sub(map.image_base)
                .and_then(|rva| u32::try_from(rva).ok())
                .and_then(|rva| pe.section_of(rva))
                .is_some_and(|s| s.flags & pe::SCN_MEM_EXECUTE != 0)
        })
        .collect();
    let raw: Vec<&str> = code.iter().map(|s| s.1.as_str()).collect();
    let names = demangle(&raw)?;
    let symbols: Vec<(u64, String)> = code.iter().map(|s| s.0).zip(names).collect();
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-M", "intel"])
        .arg(sys)
        .output()
        .map_err(|e| format!("cannot run objdump (install binutils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "objdump -d {}: {}",
            sys.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let total = listing
        .lines()
        .filter(|l| {
            l.split_once(":\t")
                .is_some_and(|(a, _)| u64::from_str_radix(a.trim(), 16).is_ok())
        })
        .count();
    let sysroot = sysroot_symbols()?;
    let precompiled = code
        .iter()
        .filter(|s| sysroot.contains(&s.1))
        .map(|s| s.0)
        .collect();
    Ok(Code {
        functions: disasm::parse_with_symbols(&listing, &symbols),
        total,
        precompiled,
    })
}

/// Every check on one image. `optimized`: the release image (what users install), where the
/// frame budget and the no-recursion rule are enforced; on the debug image (unoptimized,
/// frames several times larger) they are measured and reported, not enforced.
pub fn check_image(sys: &Path, map_path: &Path, optimized: bool) -> crate::Result<Report> {
    let data = std::fs::read(sys).map_err(|e| format!("{}: {e}", sys.display()))?;
    let map_text =
        std::fs::read_to_string(map_path).map_err(|e| format!("{}: {e}", map_path.display()))?;
    let map = parse_map(&map_text).map_err(|e| format!("{}: {e}", map_path.display()))?;
    let pe = Pe::parse(&data).map_err(|e| format!("{}: {e}", sys.display()))?;
    let mut r = Report::default();
    r.lines.push(format!(
        "{} bytes, image base {:#x}, size of image {:#x}, map {}",
        data.len(),
        pe.header.image_base,
        pe.header.size_of_image,
        map_path.display()
    ));
    let imports = check_headers(&pe, &mut r);
    check_entry(&pe, &map, &mut r);
    let whole_shell = imports
        .iter()
        .any(|(_, f)| f.iter().any(|n| n == SHELL_MARKER_IMPORT));
    if optimized && whole_shell {
        check_readme_imports(&imports, &mut r);
    }
    let Code {
        functions,
        total,
        precompiled,
    } = functions(sys, &pe, &map)?;
    let named: usize = functions.iter().map(|f| f.insns.len()).sum();
    r.rule(
        named == total && !functions.is_empty(),
        format!(
            "code: {total} instructions in {} functions named from the map",
            functions.len()
        ),
        format!(
            "code: only {named} of {total} instructions lie in functions of the map (code \
             before the first symbol is not checked)"
        ),
    );
    check_unwind(&pe, &map, &functions, &precompiled, whole_shell, &mut r);
    let what = sys.display().to_string();
    for (name, result) in [
        ("doubles", checks::no_test_doubles(&what, &functions)),
        ("no-sse", vector::check(&what, &functions)),
    ] {
        match result {
            Ok(line) => r.lines.push(format!("{name}: {line}")),
            Err(e) => r.errors.push(e),
        }
    }
    if map.rva("rhax_vmx_enter").is_some() {
        match stub::check(&what, &functions) {
            Ok(line) => r.lines.push(format!("abi: {line}")),
            Err(e) => r.errors.push(e),
        }
    }
    let irp: Vec<&str> = functions
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| stack::is_root(n, DRIVER_IOCTL_ENTRIES[0]))
        .collect();
    if irp.is_empty() {
        let line = format!(
            "no IOCTL entry point ({}...) in the image, so the IOCTL-path stack and recursion \
             checks have no root",
            DRIVER_IOCTL_ENTRIES[0]
        );
        if whole_shell {
            r.errors.push(format!(
                "{line}: the image creates devices ({SHELL_MARKER_IMPORT}), so its IRP \
                 handlers were renamed or inlined; keep them as functions in rhax_sys::irp \
                 (see DRIVER_IOCTL_ENTRIES)"
            ));
        } else {
            r.lines
                .push(format!("NOT CHECKED: {line} (skeleton image)"));
        }
    } else {
        r.lines
            .push(format!("IOCTL entry points: {}", irp.join(", ")));
    }
    // stack.rs prints its own table (largest frames, deepest IOCTL paths).
    match stack::check_from(&what, &functions, true, &DRIVER_IOCTL_ENTRIES) {
        Ok(()) => r.lines.push(format!(
            "stack: frames within {} B, no recursion",
            stack::BUDGET
        )),
        Err(e) if optimized => r.errors.push(e),
        Err(e) => r.lines.push(format!(
            "NOT ENFORCED (unoptimized debug image; the budget applies to the release image): \
             {e}"
        )),
    }
    let frames = stack::frames(&functions, true);
    if let Some(root) = frames.iter().position(|f| f.name == "DriverEntry") {
        let (total, path) = stack::deepest(&frames, root);
        let path: Vec<String> = path
            .iter()
            .take(8)
            .map(|&i| format!("{} ({} B)", frames[i].name, frames[i].bytes))
            .collect();
        let line = format!(
            "load path: deepest direct-call stack from DriverEntry {total} B (limit \
             {LOAD_PATH_LIMIT} B): {}",
            path.join(" -> ")
        );
        if total <= LOAD_PATH_LIMIT || !optimized {
            r.lines.push(line);
        } else {
            r.errors.push(line);
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{check_entry, check_headers, check_unwind, Report};
    use crate::disasm::parse_with_symbols;
    use crate::pe::synthetic::{image, Spec};
    use crate::pe::Pe;
    use crate::symbols::parse_map;
    use crate::symbols::tests::MAP;

    fn errors(spec: &Spec) -> Vec<String> {
        let d = image(spec);
        let pe = Pe::parse(&d).unwrap();
        let mut r = Report::default();
        check_headers(&pe, &mut r);
        check_entry(&pe, &parse_map(MAP).unwrap(), &mut r);
        r.errors
    }

    #[test]
    fn a_good_image_passes_the_header_rules() {
        assert_eq!(errors(&Spec::default()), Vec::<String>::new());
    }

    #[test]
    fn each_header_rule_fails_alone() {
        let e = errors(&Spec {
            text_flags: 0xe000_0020,
            ..Spec::default()
        });
        assert!(
            e.len() == 1 && e[0].contains("writable and executable"),
            "{e:?}"
        );
        let e = errors(&Spec {
            dll_characteristics: 0x0160,
            ..Spec::default()
        });
        assert!(
            e.len() == 1 && e[0].contains("lacks FORCE_INTEGRITY"),
            "{e:?}"
        );
        let e = errors(&Spec {
            imports: vec![
                ("ntoskrnl.exe", vec!["DbgPrint"]),
                ("KERNEL32.dll", vec!["Sleep"]),
            ],
            ..Spec::default()
        });
        assert!(e.len() == 1 && e[0].contains("KERNEL32.dll"), "{e:?}");
        let e = errors(&Spec {
            tls: true,
            ..Spec::default()
        });
        assert!(e.len() == 1 && e[0].contains("thread-local"), "{e:?}");
        // A damaged byte: the checksum rule alone fails.
        let mut d = image(&Spec::default());
        d[0x230] ^= 0x10;
        let pe = Pe::parse(&d).unwrap();
        let mut r = Report::default();
        check_headers(&pe, &mut r);
        assert!(
            r.errors.len() == 1 && r.errors[0].contains("checksum"),
            "{:?}",
            r.errors
        );
    }

    #[test]
    fn the_entry_point_must_be_driver_entry() {
        let d = image(&Spec::default());
        let pe = Pe::parse(&d).unwrap();
        let mut r = Report::default();
        let moved = MAP.replace("DriverEntry   ", "NotTheEntry   ");
        check_entry(&pe, &parse_map(&moved).unwrap(), &mut r);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    }

    #[test]
    fn the_stub_needs_pdata_with_its_pushes() {
        let d = image(&Spec::default());
        let pe = Pe::parse(&d).unwrap();
        let map = parse_map(MAP).unwrap();
        let listing = "   140001020:\tpush   rbp\n   140001021:\tret\n";
        let functions = parse_with_symbols(listing, &[(0x1_4000_1020, "rhax_vmx_enter".into())]);
        let mut r = Report::default();
        check_unwind(&pe, &map, &functions, &BTreeSet::new(), true, &mut r);
        // The synthetic entry at 0x1020 allocates 0x1028 bytes and pushes nothing; the exit
        // stub is missing: two errors, and the table itself is fine.
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(r.errors[0].contains("rhax_vmx_enter") && r.errors[0].contains("4136 B"));
        assert!(r.errors[1].contains("rhax_vmx_exit is not in the image"));
        assert!(
            r.lines[0].contains("2 RUNTIME_FUNCTION entries"),
            "{:?}",
            r.lines
        );
        assert!(r
            .lines
            .iter()
            .any(|l| l.contains("every function of the driver's crates that moves RSP")));
        // A pushing function outside every entry.
        let listing = "   140001100:\tpush   rbx\n   140001101:\tret\n";
        let stray = parse_with_symbols(listing, &[(0x1_4000_1100, "stray".into())]);
        let mut r = Report::default();
        check_unwind(&pe, &map, &stray, &BTreeSet::new(), false, &mut r);
        assert!(r
            .errors
            .iter()
            .any(|e| e.contains("without unwind data") && e.ends_with("stray")));
        // The same function from the precompiled standard library is a known gap.
        let mut r = Report::default();
        let std_fn = BTreeSet::from([0x1_4000_1100]);
        check_unwind(&pe, &map, &stray, &std_fn, false, &mut r);
        assert!(!r.errors.iter().any(|e| e.contains("without unwind data")));
        assert!(r
            .lines
            .iter()
            .any(|l| l.contains("KNOWN GAP: 1 function(s)")));
        // Not required (a skeleton): the missing exit is reported, not failed.
        let mut r = Report::default();
        check_unwind(&pe, &map, &functions, &BTreeSet::new(), false, &mut r);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r
            .lines
            .iter()
            .any(|l| l.starts_with("NOT CHECKED: rhax_vmx_exit")));
    }
}

/// Markers around the import list in README.md (issue 9: "The README lists every import").
const README_IMPORTS: (&str, &str) = ("<!-- imports:begin -->", "<!-- imports:end -->");

/// The import list README.md states: `(dll, functions)` from the lines between the markers,
/// each `- \`DLL\`: \`Function\` \`Function\` ...`.
pub fn readme_imports(readme: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let (begin, end) = README_IMPORTS;
    let start = readme
        .find(begin)
        .ok_or_else(|| format!("README.md has no `{begin}` marker"))?;
    let stop = readme[start..]
        .find(end)
        .ok_or_else(|| format!("README.md has no `{end}` marker after `{begin}`"))?;
    let mut out = Vec::new();
    for line in readme[start + begin.len()..start + stop].lines() {
        let mut ticked = line.split('`').skip(1).step_by(2).map(str::to_string);
        if let Some(dll) = ticked.next() {
            let mut functions: Vec<String> = ticked.collect();
            functions.sort();
            out.push((dll, functions));
        }
    }
    Ok(out)
}

/// README.md lists exactly the release image's imports (so users and reviewers see what the
/// driver calls, and the list cannot go stale).
pub fn check_readme_imports(imports: &[(String, Vec<String>)], r: &mut Report) {
    let readme = crate::workspace_root().join("README.md");
    let stated = match std::fs::read_to_string(&readme)
        .map_err(|e| format!("{}: {e}", readme.display()))
        .and_then(|t| readme_imports(&t))
    {
        Ok(s) => s,
        Err(e) => return r.errors.push(format!("README imports: {e}")),
    };
    let mut actual: Vec<(String, Vec<String>)> = imports
        .iter()
        .map(|(dll, f)| {
            let mut f = f.clone();
            f.sort();
            (dll.to_ascii_lowercase(), f)
        })
        .collect();
    actual.sort();
    let mut stated: Vec<(String, Vec<String>)> = stated
        .into_iter()
        .map(|(dll, f)| (dll.to_ascii_lowercase(), f))
        .collect();
    stated.sort();
    let count: usize = actual.iter().map(|(_, f)| f.len()).sum();
    r.rule(
        actual == stated,
        format!("README.md lists the {count} imports exactly"),
        format!(
            "README.md's import list (between `{}` and `{}`) differs from the image's: \
             image {actual:?}, README {stated:?}",
            README_IMPORTS.0, README_IMPORTS.1
        ),
    );
}

#[cfg(test)]
mod readme_tests {
    use super::*;

    #[test]
    fn the_readme_list_is_read_between_the_markers() {
        let text = "intro `x`\n<!-- imports:begin -->\n- `ntoskrnl.exe` (2): `IoCreateDevice` \
                    `DbgPrint`\n- `HAL.dll`: `KeQueryPerformanceCounter`\n<!-- imports:end -->\n\
                    - `other.dll`: `Nope`\n";
        assert_eq!(
            readme_imports(text).unwrap(),
            vec![
                (
                    "ntoskrnl.exe".to_string(),
                    vec!["DbgPrint".to_string(), "IoCreateDevice".to_string()]
                ),
                (
                    "HAL.dll".to_string(),
                    vec!["KeQueryPerformanceCounter".to_string()]
                ),
            ]
        );
        assert!(readme_imports("no markers").is_err());
        let mut r = Report::default();
        check_readme_imports(
            &[("ntoskrnl.exe".into(), vec!["NotInReadme".into()])],
            &mut r,
        );
        assert_eq!(r.errors.len(), 1, "{:?}", r.lines);
    }
}
