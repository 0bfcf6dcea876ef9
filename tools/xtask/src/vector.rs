//! `cargo xtask no-sse`: kernel code never touches x87/MMX/SSE/AVX state except at the FXSAVE/
//! FXRSTOR and XSAVE/XRSTOR sites that swap it.
//!
//! Why: rhax-core loads the guest's x87/SSE image (FXRSTOR) before VM entry and keeps it loaded
//! across VM exits until the vCPU is put (`Vcpu::load_guest_msrs`/`Vcpu::put`), so any host
//! instruction in between that writes an XMM register (a compiler-generated 16-byte copy, say)
//! corrupts the guest. The kernel crates are therefore built for soft-float targets
//! (`x86_64-unknown-none`, `x86_64-unknown-uefi`), and this check proves it on the binary: no
//! instruction names a vector or x87 register or is an x87/SSE/AVX state operation, except
//! the allowed instructions in the allowed functions below.

use crate::disasm::{Function, Insn};

/// `(function name suffix, instructions it may contain, why)`.
pub const ALLOWED: &[(&str, &[&str], &str)] = &[
    (
        "HwVmx as rhax_core::vmx::instructions::Vmx>::fxsave",
        &["fxsave64"],
        "saves the host's or the guest's x87/SSE image (never inlined: hw.rs)",
    ),
    (
        "HwVmx as rhax_core::vmx::instructions::Vmx>::fxrstor",
        &["fxrstor64"],
        "loads the guest's or the host's x87/SSE image (never inlined: hw.rs)",
    ),
    (
        "HwVmx as rhax_core::vmx::instructions::Vmx>::xsave",
        &["xsave64"],
        "saves the host's or the guest's x87/SSE/AVX/AVX-512 state (never inlined: hw.rs)",
    ),
    (
        "HwVmx as rhax_core::vmx::instructions::Vmx>::xrstor",
        &["xrstor64"],
        "loads the guest's or the host's x87/SSE/AVX/AVX-512 state (never inlined: hw.rs)",
    ),
    (
        "isr_common",
        &["fxsave", "fxrstor"],
        "metal kernel's exception/IPI entry: keeps whatever x87/SSE state was loaded (a guest's) \
         intact around the Rust handler",
    ),
];

/// Instructions that read or write x87/MMX/SSE/AVX state without naming a vector register.
const STATE_OPS: [&str; 14] = [
    "ldmxcsr",
    "stmxcsr",
    "vldmxcsr",
    "vstmxcsr",
    "emms",
    "femms",
    "vzeroupper",
    "vzeroall",
    "xsave",
    "xsave64",
    "xsaveopt",
    "xsaveopt64",
    "xrstor",
    "xrstor64",
];

/// Register names that are vector/x87 state: `xmmN`, `ymmN`, `zmmN`, `mmN`, `st`/`st(N)`,
/// AVX-512 masks `kN`.
fn names_vector_register(operands: &str) -> bool {
    // objdump's `<symbol>` note is not an operand.
    let operands = operands.split(" <").next().unwrap_or("");
    operands
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| {
            let num = |p: &str| {
                w.strip_prefix(p)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            };
            w == "st" || num("xmm") || num("ymm") || num("zmm") || num("mm") || num("k")
        })
}

/// True when `insn` touches x87/MMX/SSE/AVX state.
pub fn touches_vector_state(insn: &Insn) -> bool {
    let m = insn.mnemonic.as_str();
    // Every x87 instruction and FXSAVE/FXRSTOR start with `f` (no other x86 mnemonic does).
    m.starts_with('f')
        || STATE_OPS.contains(&m)
        || m.starts_with("xsave")
        || m.starts_with("xrstor")
        || names_vector_register(&insn.operands)
}

/// `(function, instruction)` for every forbidden instruction.
pub fn violations(functions: &[Function]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in functions {
        let allowed = ALLOWED
            .iter()
            .find(|(suffix, _, _)| f.name.ends_with(suffix))
            .map_or(&[][..], |a| a.1);
        for i in &f.insns {
            if touches_vector_state(i) && !allowed.contains(&i.mnemonic.as_str()) {
                out.push((
                    f.name.clone(),
                    format!("{:#x}: {} {}", i.addr, i.mnemonic, i.operands),
                ));
            }
        }
    }
    out
}

/// The check over one binary: fails listing every forbidden instruction; on success returns
/// the evidence line (instructions scanned, state-swap sites found).
pub fn check(what: &str, functions: &[Function]) -> crate::Result<String> {
    let bad = violations(functions);
    if !bad.is_empty() {
        let mut msg = format!(
            "{what}: {} instruction(s) touch x87/SSE/AVX state outside the FXSAVE/FXRSTOR \
             sites (the guest's registers are live there):\n",
            bad.len()
        );
        for (f, i) in bad.iter().take(40) {
            msg += &format!("  {f}: {i}\n");
        }
        return Err(msg);
    }
    let insns: usize = functions.iter().map(|f| f.insns.len()).sum();
    let sites: Vec<String> = functions
        .iter()
        .flat_map(|f| {
            f.insns
                .iter()
                .filter(|i| touches_vector_state(i))
                .map(move |i| format!("{} in {}", i.mnemonic, f.name))
        })
        .collect();
    Ok(format!(
        "{what}: {insns} instructions in {} functions, none touches x87/SSE/AVX state except \
         {} allowed site(s){}{}",
        functions.len(),
        sites.len(),
        if sites.is_empty() { "" } else { ": " },
        sites.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::{touches_vector_state, violations};
    use crate::disasm::{parse, Insn};

    fn insn(m: &str, ops: &str) -> Insn {
        Insn {
            addr: 0,
            mnemonic: m.into(),
            operands: ops.into(),
        }
    }

    #[test]
    fn recognises_vector_state_instructions() {
        for (m, ops) in [
            ("movups", "XMMWORD PTR [rdi],xmm0"),
            ("movaps", "xmm15,XMMWORD PTR [rsp+0x10]"),
            ("xorps", "xmm1,xmm1"),
            ("vmovdqu", "ymm3,YMMWORD PTR [rax]"),
            ("vpxord", "zmm1,zmm2,zmm3"),
            ("movq", "mm0,rax"),
            ("fld", "st(1)"),
            ("fninit", ""),
            ("fxsave64", "[rax]"),
            ("ldmxcsr", "DWORD PTR [rsp]"),
            ("vzeroupper", ""),
            ("xsaves", "[rcx]"),
            ("kmovw", "k1,eax"),
        ] {
            assert!(touches_vector_state(&insn(m, ops)), "{m} {ops}");
        }
        for (m, ops) in [
            ("mov", "rax,QWORD PTR [rip+0x10]"),
            ("rep", ""),
            ("stos", "QWORD PTR es:[rdi],rax"),
            ("call", "1000 <core::fmt::float::fmt_xmm0_mm1>"),
            ("lea", "rsi,[rsp+0x8]"),
            ("vmread", "rax,rcx"),
            ("vmwrite", "r8,rcx"),
            ("movnti", "QWORD PTR [rdi],rax"),
            ("mfence", ""),
        ] {
            assert!(!touches_vector_state(&insn(m, ops)), "{m} {ops}");
        }
    }

    #[test]
    fn allows_only_the_listed_instruction_in_the_listed_function() {
        let listing = "\
0000000000001000 <<rhax_core::vmx::hw::HwVmx as rhax_core::vmx::instructions::Vmx>::fxsave>:
    1000:\tfxsave64 [rsi]
    1004:\tmovups xmm0,XMMWORD PTR [rsi]
0000000000002000 <rhax_core::vcpu::Vcpu::put>:
    2000:\tfxrstor64 [rax]
";
        let bad = violations(&parse(listing));
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].1.contains("movups"));
        assert_eq!(bad[1].0, "rhax_core::vcpu::Vcpu::put");
    }
}
