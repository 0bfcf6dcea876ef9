//! `haxm-apic`, fourth part: the VM's APIC-access page follows the guest's APIC base, shown
//! by exit counts. A 64-bit guest writes the xAPIC TPR 100 times at the default base, moves
//! its APIC to [`NEW_BASE`] and writes it 100 times there, moves it back and writes 100
//! times, then goes to x2APIC mode, disabled and xAPIC at the default base again (a guest
//! leaving x2APIC mode, SDM Vol. 3A §11.12.5) and writes 100 times more; an `out 0xE8` ends
//! each phase and the client takes the vCPU's exit counters there. With the APIC-access
//! page (and the TPR shadow) the writes at the default base cause no exits (the CPU
//! virtualizes them), at the moved base each is an EPT violation served in the kernel; the
//! page must be back after each return (before, it stayed dropped for the VM's lifetime).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rhax::api::ext::ApicFlags;

use crate::haxm::R;
use crate::haxm_apic_arv::{
    counted, drive, store_eax, with_apic_vm, APIC_ACCESS, EPT_VIOLATION, OUT_PHASE, PORT_END,
};
use crate::haxm_apic_guest::NEW_BASE;

/// Where the guest stores the TPR it reads back at the end.
const RESULT: u64 = 0x3000;
const WRITES: u32 = 100;

/// `mov ecx, IA32_APIC_BASE; mov eax, value; xor edx, edx; wrmsr`.
fn write_base(c: &mut Vec<u8>, value: u32) {
    c.extend([0xB9, 0x1B, 0x00, 0x00, 0x00]);
    c.push(0xB8);
    c.extend(value.to_le_bytes());
    c.extend([0x31, 0xD2, 0x0F, 0x30]);
}

/// `mov ebx, base`, then `WRITES` times `mov dword [rbx + 0x80], 0x20` (TPR), then the mark.
fn tpr_phase(c: &mut Vec<u8>, base: u32) {
    c.push(0xBB);
    c.extend(base.to_le_bytes());
    counted(c, WRITES, &[0xC7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00]);
    c.extend(OUT_PHASE);
}

fn guest() -> Vec<u8> {
    let default = 0xFEE0_0000u32;
    let mut c = Vec::new();
    c.extend([0xBB, 0x00, 0x00, 0xE0, 0xFE]); // mov ebx, 0xFEE00000
    // mov dword [rbx + 0xF0], 0x1FF: SVR, software-enabled.
    c.extend([0xC7, 0x83, 0xF0, 0x00, 0x00, 0x00, 0xFF, 0x01, 0x00, 0x00]);
    c.extend(OUT_PHASE); // 0: the baseline
    tpr_phase(&mut c, default); // 1
    write_base(&mut c, NEW_BASE as u32 | 0x900);
    tpr_phase(&mut c, NEW_BASE as u32); // 2
    write_base(&mut c, default | 0x900);
    tpr_phase(&mut c, default); // 3
    write_base(&mut c, default | 0xD00); // x2APIC
    write_base(&mut c, default | 0x100); // disabled
    write_base(&mut c, default | 0x900); // xAPIC at the default base
    c.extend([0xC7, 0x83, 0xF0, 0x00, 0x00, 0x00, 0xFF, 0x01, 0x00, 0x00]); // SVR again
    c.extend(OUT_PHASE); // 4: the round trip (its SVR write exits without APIC-register virtualization)
    tpr_phase(&mut c, default); // 5
    c.extend([0x8B, 0x83, 0x80, 0x00, 0x00, 0x00]); // mov eax, [rbx + 0x80]
    store_eax(&mut c, RESULT);
    c.extend([0xE6, PORT_END as u8]);
    c
}

/// The checks (default flags: the APIC-access page where the CPU has it, on every Bochs
/// model the scenario runs on); failures appended. Returns the number of checks.
pub(crate) fn remap_checks(fails: &mut Vec<String>) -> R<usize> {
    let (marks, tpr) = with_apic_vm(&guest(), ApicFlags::empty(), |v, ram| {
        Ok((drive(v)?, ram.u32(RESULT)))
    })?;
    let [m0, m1, m2, m3, m4, m5] = marks[..] else {
        return Err(format!("remap guest: {} phase marks, expected 6", marks.len()));
    };
    // The phase's APIC-access and EPT-violation exits (the marks' `out`s are IO exits).
    let d = |a: [u64; 4], b: [u64; 4]| {
        b[APIC_ACCESS].saturating_sub(a[APIC_ACCESS]) + b[EPT_VIOLATION].saturating_sub(a[EPT_VIOLATION])
    };
    let (at_default, moved, back, after_x2) = (d(m0, m1), d(m1, m2), d(m2, m3), d(m4, m5));
    crate::println!(
        "haxm-apic: APIC-access page: exits for {WRITES} TPR writes at the default base \
         {at_default}, at the moved base {moved}, back at the default base {back}, after \
         x2APIC mode {after_x2}"
    );
    let w = u64::from(WRITES);
    let mut check = |name: &str, ok: bool, got: String| {
        if !ok {
            fails.push(format!("APIC-access page: {name}: {got}"));
        }
    };
    check("TPR writes at the default base: no exits", at_default == 0, format!("{at_default} exits"));
    check("TPR writes at the moved base exit", moved >= w, format!("{moved} exits"));
    check("back at the default base: the page again, no exits", back == 0, format!("{back} exits"));
    check("back from x2APIC mode: the page again, no exits", after_x2 == 0, format!("{after_x2} exits"));
    check("TPR reads back 0x20", tpr == 0x20, format!("{tpr:#x}"));
    Ok(5)
}
