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
    use super::parse;

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
