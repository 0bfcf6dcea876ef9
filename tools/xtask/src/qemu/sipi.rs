//! One fix to Debian's QEMU source, for guests with more than one vCPU on HAX.
//!
//! QEMU stable 7.2.22 (in Debian 12's `7.2+dfsg-7+deb12u18`, `debian/patches/v7.2.22.diff`)
//! took upstream's fix for SIPIs during SMM: the `cpu_reset_interrupt(.., CPU_INTERRUPT_SIPI)`
//! moved out of `apic_sipi()` (hw/intc/apic.c) into TCG's `x86_cpu_exec_interrupt()`. HAX's
//! own SIPI handling in `hax_vcpu_hax_exec()` (target/i386/hax/hax-all.c) was not given the
//! reset (upstream had removed HAX in 8.2 by then). So after an AP's first SIPI the bit stays
//! set for good: every time the AP halts, `cpu_has_work()` is true, its thread re-runs the
//! SIPI block (GET_REGS/FPU/MSRS, a no-op `do_cpu_sipi`, SET_REGS/FPU/MSRS) and returns
//! EXCP_HLT, forever, holding the iothread lock most of the time. Seen here on rhax with
//! `-smp 2` (tests/linux/README.md): the AP thread made ~20,000 such rounds in 12 emulated
//! seconds while the BSP and the main loop starved, and SeaBIOS never printed its banner. The
//! same happens on HAXM: nothing in the kernel driver can clear a QEMU-internal bit. The fix
//! gives HAX the reset TCG got, at the same place relative to `do_cpu_sipi()`.

/// Where the reset goes: the first statement of HAX's SIPI block.
const ANCHOR: &str = "    if (cpu->interrupt_request & CPU_INTERRUPT_SIPI) {\n";
/// The reset, as TCG's `x86_cpu_exec_interrupt()` has it.
const RESET: &str =
    "        cpu_reset_interrupt(cpu, CPU_INTERRUPT_SIPI); /* rhax: see xtask qemu/sipi.rs */\n";
/// Part of the cache key: changes when this fix does.
pub const KEY: &str = "hax-sipi-reset 1";

/// Whether `apic_c` (hw/intc/apic.c) still resets the SIPI bit in `apic_sipi()` itself (QEMU
/// before the 7.2.22 backport): then HAX needs nothing.
fn apic_resets(apic_c: &str) -> bool {
    apic_c
        .split_once("void apic_sipi(")
        .and_then(|(_, rest)| rest.split_once("\n}\n"))
        .is_some_and(|(body, _)| body.contains("cpu_reset_interrupt"))
}

/// `hax_all_c` with the reset in place (unchanged when `apic_c` still resets, or when the
/// reset is there already); an error when the SIPI block is not where it is expected, so that
/// another QEMU version is looked at rather than silently left broken.
pub fn fix(hax_all_c: &str, apic_c: &str) -> Result<Option<String>, String> {
    if apic_resets(apic_c) || hax_all_c.contains(RESET) {
        return Ok(None);
    }
    let n = hax_all_c.matches(ANCHOR).count();
    if n != 1 {
        return Err(format!(
            "target/i386/hax/hax-all.c: {n} SIPI blocks where 1 was expected (qemu/sipi.rs)"
        ));
    }
    Ok(Some(hax_all_c.replacen(
        ANCHOR,
        &format!("{ANCHOR}{RESET}"),
        1,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAX: &str = "    if (cpu->interrupt_request & CPU_INTERRUPT_INIT) {\n        do_cpu_init(x86_cpu);\n    }\n\n    if (cpu->interrupt_request & CPU_INTERRUPT_SIPI) {\n        hax_vcpu_sync_state(env, 0);\n        do_cpu_sipi(x86_cpu);\n    }\n";
    const APIC_722: &str = "void apic_sipi(DeviceState *dev)\n{\n    APICCommonState *s = APIC(dev);\n\n    if (!s->wait_for_sipi)\n        return;\n}\n\nstatic void apic_deliver(void)\n{\n    cpu_reset_interrupt(x, y);\n}\n";
    const APIC_OLD: &str = "void apic_sipi(DeviceState *dev)\n{\n    cpu_reset_interrupt(CPU(s->cpu), CPU_INTERRUPT_SIPI);\n}\n";

    #[test]
    fn the_reset_goes_first_in_the_sipi_block_after_the_backport() {
        let fixed = fix(HAX, APIC_722).unwrap().unwrap();
        let sipi = fixed.find(ANCHOR).unwrap();
        assert_eq!(fixed.find(RESET), Some(sipi + ANCHOR.len()));
        assert!(fixed.find(RESET) < fixed.find("do_cpu_sipi"));
        // Applied once only.
        assert_eq!(fix(&fixed, APIC_722), Ok(None));
    }

    #[test]
    fn nothing_changes_where_apic_sipi_still_resets() {
        assert_eq!(fix(HAX, APIC_OLD), Ok(None));
    }

    #[test]
    fn an_unexpected_source_is_an_error() {
        assert!(fix("int main(void) {}\n", APIC_722).is_err());
        assert!(fix(&format!("{HAX}{HAX}"), APIC_722).is_err());
    }
}
