//! The software VMX model raises a modelled host #GP (a panic naming the rule) wherever a real
//! CPU would fault on a host instruction rhax-core executes, instead of quietly storing the
//! value (`rhax_core::vmx::soft_faults`). One test per rule, each through the `Vmx` trait.

use rhax_api::fpu::FxLayout;
use rhax_core::vmx::soft::{msrs_from_tsv, SoftVmx};
use rhax_core::vmx::soft_faults::*;
use rhax_core::vmx::Vmx;

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");

fn cpu() -> SoftVmx {
    SoftVmx::new(msrs_from_tsv(TSV, "corei7_skylake_x").expect("model in table"))
}

fn wrmsr(msr: u32, value: u64) {
    let mut v = cpu();
    // SAFETY: software model.
    unsafe { v.wrmsr(msr, value) };
    // SAFETY: software model.
    let stored = unsafe { v.rdmsr(msr) };
    assert_eq!(stored, value, "a write the CPU accepts is stored");
}

#[test]
fn accepted_writes_are_stored() {
    wrmsr(IA32_LSTAR, 0xffff_8000_0000_1000);
    wrmsr(IA32_KERNEL_GS_BASE, 0x7fff_ffff_f000);
    wrmsr(IA32_TSC_AUX, 0xffff_ffff);
    wrmsr(IA32_FMASK, 0x4_7700);
    wrmsr(IA32_PAT, 0x0007_0406_0007_0406);
    wrmsr(IA32_EFER, 0xd01);
    wrmsr(IA32_SYSENTER_CS, 0x10);
    let mut v = cpu();
    let fx = FxLayout {
        mxcsr: 0xffff,
        ..FxLayout::default()
    };
    // SAFETY: software model.
    unsafe { v.fxrstor(&fx) };
    // SAFETY: software model (not in VMX operation; PAE kept).
    unsafe { v.write_cr4(0x6a0) };
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0xc0000082 0x800000000000: non-canonical")]
fn wrmsr_lstar_non_canonical() {
    wrmsr(IA32_LSTAR, 0x8000_0000_0000);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0xc0000083")]
fn wrmsr_cstar_non_canonical() {
    wrmsr(IA32_CSTAR, 0x1234_5678_9abc_def0);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0xc0000100")]
fn wrmsr_fs_base_non_canonical() {
    wrmsr(IA32_FS_BASE, 1 << 63);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0xc0000101")]
fn wrmsr_gs_base_non_canonical() {
    wrmsr(IA32_GS_BASE, 1 << 62);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0xc0000102")]
fn wrmsr_kernel_gs_base_non_canonical() {
    wrmsr(IA32_KERNEL_GS_BASE, 0x0000_8000_0000_0000);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0x176")]
fn wrmsr_sysenter_eip_non_canonical() {
    wrmsr(IA32_SYSENTER_EIP, 0x00ff_0000_0000_0000);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0x175")]
fn wrmsr_sysenter_esp_non_canonical() {
    wrmsr(IA32_SYSENTER_ESP, 0x00ff_0000_0000_0000);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0xc0000080 (EFER)")]
fn wrmsr_efer_reserved() {
    wrmsr(IA32_EFER, 0xd01 | 1 << 12);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0xc0000103 (TSC_AUX)")]
fn wrmsr_tsc_aux_upper_bits() {
    wrmsr(IA32_TSC_AUX, 1 << 32);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0xc0000084 (FMASK)")]
fn wrmsr_fmask_upper_bits() {
    wrmsr(IA32_FMASK, 1 << 32);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR PAT 0x7040600070402: invalid memory type 0x2")]
fn wrmsr_pat_invalid_type() {
    wrmsr(IA32_PAT, 0x0007_0406_0007_0402);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0x1d9 (DEBUGCTL)")]
fn wrmsr_debugctl_reserved() {
    wrmsr(IA32_DEBUGCTL, 1 << 2);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0x40001234: no such MSR")]
fn wrmsr_unknown_msr() {
    wrmsr(0x4000_1234, 0);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR 0x480: VMX capability MSRs are read-only")]
fn wrmsr_vmx_capability() {
    wrmsr(0x480, 0);
}

#[test]
#[should_panic(expected = "modelled host #GP: WRMSR FEATURE_CONTROL 0x0: the MSR is locked")]
fn wrmsr_locked_feature_control() {
    wrmsr(IA32_FEATURE_CONTROL, 0);
}

#[test]
#[should_panic(expected = "modelled host #GP: FXRSTOR: MXCSR 0x11f80 sets bits 0x10000")]
fn fxrstor_mxcsr_outside_mask() {
    let fx = FxLayout {
        mxcsr: 0x1_1f80,
        ..FxLayout::default()
    };
    // SAFETY: software model.
    unsafe { cpu().fxrstor(&fx) };
}

#[test]
#[should_panic(expected = "modelled host #GP: MOV CR4 0x86a0: reserved bits 0x8000")]
fn cr4_reserved_bit() {
    // SAFETY: software model.
    unsafe { cpu().write_cr4(0x6a0 | 1 << 15) };
}

#[test]
#[should_panic(expected = "modelled host #GP: MOV CR4 0x680: clears PAE in IA-32e mode")]
fn cr4_pae_cleared_in_long_mode() {
    // SAFETY: software model (EFER.LMA is set by default).
    unsafe { cpu().write_cr4(0x680) };
}

#[test]
#[should_panic(expected = "(VMXE must stay set)")]
fn cr4_vmxe_cleared_in_vmx_operation() {
    let mut v = cpu();
    // SAFETY: software model.
    unsafe { v.write_cr4(0x26a0) };
    // SAFETY: software model.
    unsafe { v.vmxon(0x1000) }.expect("VMXON");
    // SAFETY: software model: clearing VMXE inside VMX operation.
    unsafe { v.write_cr4(0x6a0) };
}
