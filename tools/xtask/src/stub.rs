//! The VM entry/exit stub (`rhax_vmx_enter`/`rhax_vmx_exit` in `driver/core/src/vmx/hw.rs`)
//! preserves the callee-saved registers of both x86-64 calling conventions, checked on the
//! assembled code of every kernel build.
//!
//! The Rust side declares the stub `extern "sysv64"`, so rustc passes the arguments in RDI,
//! RSI, RDX on every target (on Windows x64, whose own convention passes them in RCX, RDX, R8,
//! rustc adapts the call site). The stub itself preserves the union of both conventions'
//! callee-saved general registers: System V's RBX, RBP, R12-R15 (System V ABI AMD64 §3.2.1)
//! and Microsoft x64's, which adds RDI and RSI ("x64 calling convention", callee-saved
//! registers), so it stays correct even if someone declares it `extern "C"` on Windows.
//! XMM6-15 (Microsoft's callee-saved vector registers) hold the guest's values after a VM exit
//! by design: the `sysv64` declaration tells the compiler they are clobbered, and the kernel
//! crates never use them anyway (`vector.rs`).

use crate::disasm::Function;

/// Callee-saved general registers of System V AMD64 and Microsoft x64 together (RSP aside).
pub const CALLEE_SAVED: [&str; 8] = ["rbx", "rbp", "rdi", "rsi", "r12", "r13", "r14", "r15"];

/// Checks the stub in one binary; returns the evidence line.
pub fn check(what: &str, functions: &[Function]) -> crate::Result<String> {
    let find = |name: &str| {
        functions
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| format!("{what}: no function {name} in the disassembly"))
    };
    let enter = find("rhax_vmx_enter")?;
    let exit = find("rhax_vmx_exit")?;
    // The registers the entry pushes first, in order.
    let saved: Vec<&str> = enter
        .insns
        .iter()
        .take_while(|i| i.mnemonic == "push")
        .map(|i| i.operands.as_str())
        .collect();
    let missing: Vec<&str> = CALLEE_SAVED
        .iter()
        .copied()
        .filter(|r| !saved.contains(r))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{what}: rhax_vmx_enter saves {saved:?} on entry, not {missing:?}, which are \
             callee-saved under System V or Microsoft x64"
        ));
    }
    // Every return (from the entry's failure paths and from the exit path) restores them in
    // reverse order right before `ret`.
    let mut returns = 0;
    for f in [enter, exit] {
        for (n, i) in f.insns.iter().enumerate() {
            if i.mnemonic != "ret" {
                continue;
            }
            returns += 1;
            let before = &f.insns[n.saturating_sub(saved.len())..n];
            let popped: Vec<&str> = before
                .iter()
                .filter(|i| i.mnemonic == "pop")
                .map(|i| i.operands.as_str())
                .collect();
            let want: Vec<&str> = saved.iter().rev().copied().collect();
            if popped != want || before.len() != saved.len() {
                return Err(format!(
                    "{what}: {} returns at {:#x} after popping {popped:?}, expected {want:?} \
                     right before `ret`",
                    f.name, i.addr
                ));
            }
        }
    }
    if returns < 2 {
        return Err(format!(
            "{what}: expected a `ret` in rhax_vmx_enter and in rhax_vmx_exit, found {returns}"
        ));
    }
    Ok(format!(
        "{what}: rhax_vmx_enter saves {} and all {returns} returns restore them",
        saved.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::disasm::parse;

    fn stub(pushes: &[&str], pops: &[&str]) -> String {
        let mut s = String::from("0000000000000000 <rhax_vmx_enter>:\n");
        let mut a = 0;
        let mut line = |s: &mut String, t: &str| {
            s.push_str(&format!("  {a:x}:\t{t}\n"));
            a += 1;
        };
        for p in pushes {
            line(&mut s, &format!("push   {p}"));
        }
        line(&mut s, "vmlaunch");
        for p in pops {
            line(&mut s, &format!("pop    {p}"));
        }
        line(&mut s, "ret");
        s.push_str("00000000000000b0 <rhax_vmx_exit>:\n");
        line(&mut s, "push   rax");
        line(&mut s, "pop    rax");
        for p in pops {
            line(&mut s, &format!("pop    {p}"));
        }
        line(&mut s, "ret");
        s
    }

    #[test]
    fn both_conventions_callee_saved_registers() {
        let all = ["rbp", "rbx", "r12", "r13", "r14", "r15", "rdi", "rsi"];
        let rev: Vec<&str> = all.iter().rev().copied().collect();
        assert!(check("t", &parse(&stub(&all, &rev))).is_ok());
        // The System V-only stub (no RDI/RSI) is refused.
        let sysv = ["rbp", "rbx", "r12", "r13", "r14", "r15"];
        let sysv_rev: Vec<&str> = sysv.iter().rev().copied().collect();
        let e = check("t", &parse(&stub(&sysv, &sysv_rev))).unwrap_err();
        assert!(e.contains("\"rdi\", \"rsi\""), "{e}");
        // Restored in the wrong order.
        assert!(check("t", &parse(&stub(&all, &all))).is_err());
    }
}
