//! Disassembly of built kernel code, for the checks that look at instructions (`vector.rs`,
//! `stack.rs`, `stub.rs`): GNU objdump's Intel-syntax listing, split into functions.
//!
//! Works on an executable (the metal kernel's ELF) and on an rlib (an archive of COFF or ELF
//! objects, e.g. rhax-core built for `x86_64-unknown-uefi`), where every object's functions are
//! listed with addresses relative to their section and without call targets resolved.

use std::path::Path;
use std::process::Command;

/// One instruction: `mnemonic` is the first word after any prefixes (`rep`, `lock`...),
/// `text` the whole instruction as objdump printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insn {
    /// Address (section-relative in an object file).
    pub addr: u64,
    /// The operation, prefixes dropped (`stos`, not `rep stos`).
    pub mnemonic: String,
    /// Operands as printed (Intel syntax), possibly followed by objdump's `<symbol>` note.
    pub operands: String,
}

impl Insn {
    /// The address a direct `call`/`jmp` goes to when it is the start of a symbol:
    /// `call 1234 <f>` (not `jne 1240 <f+0x10>`).
    pub fn target_addr(&self) -> Option<u64> {
        self.target_symbol()?;
        u64::from_str_radix(self.operands.split_whitespace().next()?, 16).ok()
    }

    /// The symbol a direct `call`/`jmp` names, when objdump resolved it: `call 1234 <f>`.
    pub fn target_symbol(&self) -> Option<&str> {
        let start = self.operands.find(" <")? + 2;
        let sym = self.operands[start..].strip_suffix('>')?;
        // `<f+0x12>` is a jump inside a function, not a call of it.
        (!sym.contains("+0x")).then_some(sym)
    }
}

/// A function (a symbol objdump starts a block with) and its instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Demangled name.
    pub name: String,
    /// Start address.
    pub addr: u64,
    /// Its instructions in address order.
    pub insns: Vec<Insn>,
}

/// Prefixes objdump prints before the mnemonic.
const PREFIXES: [&str; 12] = [
    "rep", "repz", "repe", "repnz", "repne", "lock", "data16", "addr32", "notrack", "bnd", "cs",
    "ds",
];

/// Parses objdump's `-d -C --no-show-raw-insn -M intel` output.
pub fn parse(listing: &str) -> Vec<Function> {
    let mut out: Vec<Function> = Vec::new();
    for line in listing.lines() {
        // `0000000000100c90 <rhax_metal::haxm_events::haxm_events>:`
        if let Some((addr, rest)) = line.split_once(" <") {
            if let (Ok(addr), Some(name)) = (u64::from_str_radix(addr, 16), rest.strip_suffix(">:"))
            {
                out.push(Function {
                    name: name.to_string(),
                    addr,
                    insns: Vec::new(),
                });
                continue;
            }
        }
        // `  100c90:\tpush   rbp`
        let Some((addr, text)) = line.split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        let Some(f) = out.last_mut() else { continue };
        let mut words = text.split_whitespace().peekable();
        while words.peek().is_some_and(|w| PREFIXES.contains(w)) {
            words.next();
        }
        let Some(mnemonic) = words.next() else {
            continue;
        };
        let operands = words.collect::<Vec<_>>().join(" ");
        f.insns.push(Insn {
            addr,
            mnemonic: mnemonic.to_string(),
            operands,
        });
    }
    out
}

/// Parses objdump's listing of an image without a symbol table (a PE: `rhax.sys`), naming
/// its functions from `symbols` (`(address, demangled name)`, e.g. from the linker's map):
/// each instruction belongs to the last symbol at or below it, and a direct `call`/`jmp`/`jcc`
/// target (`call 0x140001234`) is rewritten to the form [`parse`] gives a linked ELF
/// (`call 140001234 <name>` or `<name+0x10>`), so the call graph of `stack.rs` resolves.
/// Instructions below the first symbol are dropped.
pub fn parse_with_symbols(listing: &str, symbols: &[(u64, String)]) -> Vec<Function> {
    let mut sorted: Vec<&(u64, String)> = symbols.iter().collect();
    sorted.sort_by_key(|s| s.0);
    sorted.dedup_by_key(|s| s.0);
    let owner = |addr: u64| {
        let i = sorted.partition_point(|s| s.0 <= addr);
        i.checked_sub(1).map(|i| sorted[i])
    };
    let mut out: Vec<Function> = Vec::new();
    for line in listing.lines() {
        let Some((addr, text)) = line.split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        let Some((start, name)) = owner(addr) else {
            continue;
        };
        if out.last().is_none_or(|f| f.addr != *start) {
            out.push(Function {
                name: name.clone(),
                addr: *start,
                insns: Vec::new(),
            });
        }
        let mut words = text.split_whitespace().peekable();
        while words.peek().is_some_and(|w| PREFIXES.contains(w)) {
            words.next();
        }
        let Some(mnemonic) = words.next() else {
            continue;
        };
        let mut operands = words.collect::<Vec<_>>().join(" ");
        let branch = mnemonic == "call" || mnemonic.starts_with('j');
        let target = operands
            .strip_prefix("0x")
            .and_then(|t| u64::from_str_radix(t, 16).ok());
        if let (true, Some(t)) = (branch, target) {
            if let Some((s, n)) = owner(t) {
                operands = if *s == t {
                    format!("{t:x} <{n}>")
                } else {
                    format!("{t:x} <{n}+{:#x}>", t - s)
                };
            }
        }
        if let Some(f) = out.last_mut() {
            f.insns.push(Insn {
                addr,
                mnemonic: mnemonic.to_string(),
                operands,
            });
        }
    }
    out
}

/// Disassembles `file` (an executable, an object or an archive of objects).
pub fn objdump(file: &Path) -> crate::Result<Vec<Function>> {
    let out = Command::new("objdump")
        .args(["-d", "-C", "--no-show-raw-insn", "-M", "intel"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run objdump (install binutils): {e}"))?;
    // An rlib also holds `lib.rmeta`, which objdump reports as unknown: not an error as long
    // as something was disassembled.
    let listing = String::from_utf8_lossy(&out.stdout);
    let functions = parse(&listing);
    if functions.is_empty() {
        return Err(format!(
            "objdump -d {} produced no functions ({}): {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(functions)
}

#[cfg(test)]
mod tests {
    use super::{parse, parse_with_symbols};

    #[test]
    fn names_a_symbolless_listing_from_a_map() {
        let listing = "\
0000000140001000 <.text>:
   140001000:\tpush   rbp
   140001001:\tcall   0x140001010
   140001006:\tjne    0x140001003
   14000100b:\tcall   QWORD PTR [rip+0xf97]        # 0x1400020b8
   140001010:\tsub    rsp,0x28
   140001014:\trep stos QWORD PTR es:[rdi],rax
";
        let symbols = [
            (0x1_4000_1010, "b::callee".to_string()),
            (0x1_4000_1000, "a::caller".to_string()),
        ];
        let f = parse_with_symbols(listing, &symbols);
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].name.as_str(), f[0].addr),
            ("a::caller", 0x1_4000_1000)
        );
        assert_eq!(f[0].insns.len(), 4);
        assert_eq!(f[0].insns[1].target_symbol(), Some("b::callee"));
        assert_eq!(f[0].insns[1].target_addr(), Some(0x1_4000_1010));
        // A jump inside a function is not a call of it.
        assert_eq!(f[0].insns[2].operands, "140001003 <a::caller+0x3>");
        assert_eq!(f[0].insns[2].target_symbol(), None);
        assert_eq!(f[0].insns[3].target_symbol(), None);
        assert_eq!(f[1].insns[1].mnemonic, "stos");
        // Nothing is named without symbols.
        assert!(parse_with_symbols(listing, &[]).is_empty());
    }

    #[test]
    fn splits_functions_and_prefixes() {
        let listing = "\
Disassembly of section .text:

0000000000100c90 <a::b<c>::d>:
  100c90:\tpush   rbp
  100c91:\trep stos QWORD PTR es:[rdi],rax
  100c94:\tcall   10e6c0 <x::y>
  100c99:\tjne    100c90 <a::b<c>::d+0x0>
\t...

0000000000100ca0 <e>:
  100ca0:\tret
";
        let f = parse(listing);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "a::b<c>::d");
        assert_eq!(f[0].addr, 0x100c90);
        let m: Vec<&str> = f[0].insns.iter().map(|i| i.mnemonic.as_str()).collect();
        assert_eq!(m, ["push", "stos", "call", "jne"]);
        assert_eq!(f[0].insns[1].operands, "QWORD PTR es:[rdi],rax");
        assert_eq!(f[0].insns[2].target_symbol(), Some("x::y"));
        assert_eq!(f[0].insns[2].target_addr(), Some(0x10e6c0));
        assert_eq!(f[0].insns[3].target_addr(), None);
        assert_eq!(f[0].insns[3].target_symbol(), None);
        assert_eq!(f[1].insns.len(), 1);
    }
}
