//! `mtf-probe` (see [`mtf_probe`]), with the raw-guest helpers of the parent module.

use alloc::format;
use alloc::string::String;

use rhax_core::vmcs::exit::VmExit;
use rhax_core::vmx::negotiate::OptionalFeatures;

use super::{controls, real_mode, run_loop, with_root, with_vcpu, GuestMemory, Step};
use crate::scenarios::Ctx;
/// `mtf-probe`: does this CPU honour the monitor trap flag? A real-mode `nop; nop; hlt` run
/// with the control set must exit with reason 37 right after the first NOP (SDM Vol. 3C
/// §26.5.2), before the HLT. Raw rhax-core, no HAXM layer: it tells a CPU (or emulator) that
/// accepts the control but ignores it apart from a bug in VCPU_DEBUG's monitor-trap route.
pub fn mtf_probe(_: &Ctx) -> Result<String, String> {
    let c = controls()?;
    if !c.available.contains(OptionalFeatures::MONITOR_TRAP_FLAG) {
        return Err(String::from(
            "this CPU does not offer the monitor trap flag",
        ));
    }
    let mem = GuestMemory::new(16)?;
    mem.write(0x1000, &[0x90, 0x90, 0xF4]);
    let (first, rip) = with_root(|root| {
        with_vcpu(
            root,
            &c,
            c.eptp(mem.ept[0]),
            1,
            |vmcs| {
                real_mode(0x1000)(vmcs);
                let mtf = rhax_core::vmx::caps::PrimaryProcControls::MONITOR_TRAP_FLAG.bits();
                let proc = vmcs
                    .primary_processor_based_vm_execution_controls()
                    .unwrap_or(0);
                vmcs.set_primary_processor_based_vm_execution_controls(proc | mtf);
            },
            |root, vcpu| {
                let mut first = None;
                run_loop(root, vcpu, 8, |_, exit, _| {
                    first.get_or_insert(*exit);
                    Ok(match exit {
                        VmExit::EptViolation { .. } => {
                            first = None;
                            Step::Again
                        }
                        _ => Step::Stop,
                    })
                })?;
                let rip = vcpu
                    .with_vmcs(root, |vmcs, _| vmcs.guest_rip())
                    .map_err(|e| format!("with_vmcs: {e:?}"))?
                    .map_err(|e| format!("VMREAD RIP: {e:?}"))?;
                Ok((first, rip))
            },
        )
    })?;
    match first {
        Some(VmExit::MonitorTrap) if rip == 0x1001 => {
            Ok(String::from("MTF exit after one instruction"))
        }
        other => Err(format!(
            "the CPU ignored the monitor trap flag: first exit {other:?} at RIP {rip:#x}"
        )),
    }
}
