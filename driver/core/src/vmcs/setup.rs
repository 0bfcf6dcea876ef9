//! VMCS setup: controls from the negotiation, host state, HAXM's power-on guest state, and the
//! MSR and I/O bitmaps (Intel SDM Vol. 3C chapter 25 "Virtual Machine Control Structures",
//! 2023+ numbering; power-on values from `haxm-abi.md` §2 VCPU_CREATE and SDM Vol. 3A §10.1.1
//! Table 10-1 "IA-32 and Intel 64 Processor States Following Power-up, Reset, or INIT").
//!
//! Everything is written through the cache, so a value equal to the cached one costs nothing,
//! and the writes reach the CPU at the flush before the next entry.

use crate::vmcs::Vmcs;
use crate::vmx::caps::{EntryControls, ExitControls, PrimaryProcControls, SecondaryProcControls};
use crate::vmx::negotiate::VmxControls;
use crate::vmx::root::{
    HostState, IA32_CSTAR, IA32_FMASK, IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_LSTAR,
    IA32_STAR, IA32_SYSENTER_CS, IA32_SYSENTER_EIP, IA32_SYSENTER_ESP, IA32_TSC_AUX,
};
use crate::vmx::Vmx;

/// The per-vCPU addresses and numbers the VMCS points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcsConfig {
    /// EPT pointer (from [`VmxControls::eptp`]).
    pub eptp: u64,
    /// VPID (nonzero; used when the negotiation enabled VPID).
    pub vpid: u16,
    /// Physical address of the 4-KByte MSR bitmap.
    pub msr_bitmap: u64,
    /// Physical address of I/O bitmap A (ports 0x0000-0x7fff).
    pub io_bitmap_a: u64,
    /// Physical address of I/O bitmap B (ports 0x8000-0xffff).
    pub io_bitmap_b: u64,
    /// Physical address of the virtual-APIC page ("use TPR shadow"; 0 without).
    pub virtual_apic: u64,
    /// Physical address of the APIC-access page ("virtualize APIC accesses"; 0 without).
    pub apic_access: u64,
}

/// MSRs the guest reads and writes without a VM exit. FS/GS base and SYSENTER are guest-state
/// fields (switched by VM entry/exit); the others are swapped by the vCPU around runs
/// (`crate::vcpu`), so letting the guest write them is safe.
pub const PASS_THROUGH_MSRS: [u32; 10] = [
    IA32_FS_BASE,
    IA32_GS_BASE,
    IA32_KERNEL_GS_BASE,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_STAR,
    IA32_LSTAR,
    IA32_CSTAR,
    IA32_FMASK,
];

/// Also passed through: RDTSCP/RDPID read it; swapped around runs like STAR.
pub const PASS_THROUGH_TSC_AUX: u32 = IA32_TSC_AUX;

/// Of the swapped MSRs, those whose guest WRMSR exits while reads pass through: a guest
/// writes them once at boot (system-call entry points, the processor number), so the vCPU
/// always knows their guest values and does not read them back at every return to user
/// space (KVM intercepts their writes too). IA32_KERNEL_GS_BASE stays passed through both
/// ways: SWAPGS changes it without any exit.
pub const WRITE_EXITING_MSRS: [u32; 5] =
    [IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK, IA32_TSC_AUX];

/// Fills a 4-KByte MSR bitmap (SDM §25.6.9): every MSR exits except `pass_through`.
/// Layout: read-low (MSRs 0-0x1fff) at byte 0, read-high (0xc0000000-0xc0001fff) at 1024,
/// write-low at 2048, write-high at 3072. Returns false if `page` is not 4096 bytes.
pub fn fill_msr_bitmap(page: &mut [u8], pass_through: &[u32]) -> bool {
    if page.len() != 4096 {
        return false;
    }
    page.fill(0xff);
    for &msr in pass_through {
        for write in [false, true] {
            set_msr_exits(page, msr, write, false);
        }
    }
    true
}

/// Where `msr`'s read (`write` false) or write bit lies in a 4-KByte MSR bitmap (layout as
/// [`fill_msr_bitmap`]): byte and bit; `None` outside both ranges, whose MSRs always exit.
fn msr_bit(msr: u32, write: bool) -> Option<(usize, u8)> {
    let (base, index) = match msr {
        0..=0x1fff => (0usize, msr as usize),
        0xc000_0000..=0xc000_1fff => (1024, (msr - 0xc000_0000) as usize),
        _ => return None,
    };
    let half = if write { 2048 } else { 0 };
    Some((half + base + index / 8, 1 << (index % 8)))
}

/// Sets (`exits`) or clears `msr`'s read or write bit in an MSR bitmap; nothing for an MSR
/// outside both ranges (it exits whatever the bitmap says) or a short `page`.
pub fn set_msr_exits(page: &mut [u8], msr: u32, write: bool, exits: bool) {
    if let Some((at, bit)) = msr_bit(msr, write) {
        if let Some(b) = page.get_mut(at) {
            if exits {
                *b |= bit;
            } else {
                *b &= !bit;
            }
        }
    }
}

/// Whether an MSR access exits, per a bitmap made by [`fill_msr_bitmap`].
pub fn msr_exits(page: &[u8], msr: u32, write: bool) -> bool {
    msr_bit(msr, write).is_none_or(|(at, bit)| page.get(at).is_none_or(|b| b & bit != 0))
}

/// Fills both I/O bitmaps so that every port exits (HAXM semantics: all port I/O goes to the
/// device model; SDM §25.6.4).
pub fn fill_io_bitmaps(a: &mut [u8], b: &mut [u8]) {
    a.fill(0xff);
    b.fill(0xff);
}

/// Writes the VM-execution, VM-exit and VM-entry controls and the pointers of `config`.
pub fn write_controls<V: Vmx>(vmcs: &mut Vmcs<'_, V>, c: &VmxControls, config: &VmcsConfig) {
    vmcs.set_pin_based_vm_execution_controls(c.pin.bits());
    vmcs.set_primary_processor_based_vm_execution_controls(c.proc.bits());
    if c.proc
        .contains(PrimaryProcControls::ACTIVATE_SECONDARY_CONTROLS)
    {
        vmcs.set_secondary_processor_based_vm_execution_controls(c.proc2.bits());
    }
    if c.proc
        .contains(PrimaryProcControls::ACTIVATE_TERTIARY_CONTROLS)
    {
        vmcs.set_tertiary_processor_based_vm_execution_controls(c.proc3.bits());
    }
    vmcs.set_primary_vm_exit_controls(c.exit.bits());
    vmcs.set_vm_entry_controls(c.entry.bits());
    // No exception intercepts by default: EPT and unrestricted guest make #PF/#GP the guest's.
    vmcs.set_exception_bitmap(0);
    vmcs.set_page_fault_error_code_mask(0);
    vmcs.set_page_fault_error_code_match(0);
    vmcs.set_cr3_target_count(0);
    vmcs.set_vm_exit_msr_store_count(0);
    vmcs.set_vm_exit_msr_load_count(0);
    vmcs.set_vm_entry_msr_load_count(0);
    vmcs.set_vm_entry_interruption_information(0);
    vmcs.set_vm_entry_exception_error_code(0);
    vmcs.set_vm_entry_instruction_length(0);
    if c.proc.contains(PrimaryProcControls::USE_IO_BITMAPS) {
        vmcs.set_io_bitmap_a_address(config.io_bitmap_a);
        vmcs.set_io_bitmap_b_address(config.io_bitmap_b);
    }
    if c.proc.contains(PrimaryProcControls::USE_MSR_BITMAPS) {
        vmcs.set_msr_bitmap_address(config.msr_bitmap);
    }
    if c.proc.contains(PrimaryProcControls::USE_TPR_SHADOW) {
        // SDM Vol. 3C §25.6.8: the page's address and the TPR threshold (0: no exit until
        // the in-kernel APIC asks for one).
        vmcs.set_virtual_apic_address(config.virtual_apic);
        vmcs.set_tpr_threshold(0);
    }
    if c.proc.contains(PrimaryProcControls::USE_TSC_OFFSETTING) {
        vmcs.set_tsc_offset(0);
    }
    if c.proc2.contains(SecondaryProcControls::ENABLE_EPT) {
        vmcs.set_ept_pointer(config.eptp);
    }
    if c.proc2.contains(SecondaryProcControls::ENABLE_VPID) {
        vmcs.set_virtual_processor_id(config.vpid);
    }
    // Also while "virtualize APIC accesses" is off: the in-kernel APIC turns it on and off
    // with the guest's APIC mode (x2APIC virtualization excludes it, SDM Vol. 3C §27.2.1.1)
    // without writing the address again.
    if config.apic_access != 0 {
        vmcs.set_apic_access_address(config.apic_access);
    }
    // Virtual-interrupt delivery (SDM Vol. 3C §25.4.2, §25.6.8): no virtual interrupt
    // requested or in service, no EOI-induced exits until the in-kernel APIC asks.
    if c.proc2
        .contains(SecondaryProcControls::VIRTUAL_INTERRUPT_DELIVERY)
    {
        vmcs.set_guest_interrupt_status(0);
        vmcs.set_eoi_exit_bitmap_0(0);
        vmcs.set_eoi_exit_bitmap_1(0);
        vmcs.set_eoi_exit_bitmap_2(0);
        vmcs.set_eoi_exit_bitmap_3(0);
    }
    // XSAVES/XRSTORS run natively: no component exits. The field is undefined after VMCLEAR
    // (SDM §25.11.3), so it is written rather than assumed 0.
    if c.proc2
        .contains(SecondaryProcControls::ENABLE_XSAVES_XRSTORS)
    {
        vmcs.set_xss_exiting_bitmap(0);
    }
    // CR0/CR4 ownership (SDM §25.6.6): bits the VMX fixed-bit MSRs force (NE, VMXE, ...) are
    // host-owned; the guest reads its own view from the read shadow. With unrestricted guest,
    // PE and PG are the guest's (SDM §27.3.1.1).
    vmcs.set_cr0_guest_host_mask(forced_bits(
        c.guest_cr0_fixed.must_be_one,
        c.guest_cr0_fixed.may_be_one,
    ));
    // CR4.OSXSAVE (18) is the host's too: a guest MOV to CR4 that changes it exits, so the
    // vCPU knows without a VMREAD whether the guest's XCR0 must be loaded (`Vcpu::run`), and
    // a guest whose CPUID hides XSAVE gets the #GP hardware gives (SDM Vol. 3A §2.5).
    // CR4.PKE (22) too: the guest's CPUID hides PKU and PKRU is not switched, so a guest
    // setting it gets #GP instead of reaching WRPKRU and the host's PKRU.
    vmcs.set_cr4_guest_host_mask(
        forced_bits(c.guest_cr4_fixed.must_be_one, c.guest_cr4_fixed.may_be_one)
            | (1 << 18)
            | (1 << 22),
    );
    // The link pointer must be all ones without VMCS shadowing (SDM §27.3.1.5).
    vmcs.set_vmcs_link_pointer(u64::MAX);
}

/// The bits of a control register the fixed-bit MSRs constrain (must be 1, or must be 0) in
/// the architectural 32 bits of CR0 / the defined bits of CR4.
fn forced_bits(must_be_one: u64, may_be_one: u64) -> u64 {
    (must_be_one | !may_be_one) & 0xffff_ffff
}

/// Writes the host-state area for this CPU (SDM §25.5). HOST_CR3 and HOST_FS_BASE belong to
/// the running thread and are passed per run; HOST_RSP is written by the entry stub.
pub fn write_host_state<V: Vmx>(
    vmcs: &mut Vmcs<'_, V>,
    host: &HostState,
    c: &VmxControls,
    cr3: u64,
    fs_base: u64,
) {
    vmcs.set_host_cr0(host.cr0);
    vmcs.set_host_cr4(host.cr4);
    write_host_thread_state(vmcs, cr3, fs_base);
    vmcs.set_host_es_selector(host.selectors.es);
    vmcs.set_host_cs_selector(host.selectors.cs);
    vmcs.set_host_ss_selector(host.selectors.ss);
    vmcs.set_host_ds_selector(host.selectors.ds);
    vmcs.set_host_fs_selector(host.selectors.fs);
    vmcs.set_host_gs_selector(host.selectors.gs);
    vmcs.set_host_tr_selector(host.selectors.tr);
    vmcs.set_host_gs_base(host.gs_base);
    vmcs.set_host_tr_base(host.tr_base);
    vmcs.set_host_gdtr_base(host.gdtr_base);
    vmcs.set_host_idtr_base(host.idtr_base);
    vmcs.set_host_ia32_sysenter_cs(host.sysenter_cs);
    vmcs.set_host_ia32_sysenter_esp(host.sysenter_esp);
    vmcs.set_host_ia32_sysenter_eip(host.sysenter_eip);
    if c.exit.contains(ExitControls::LOAD_EFER) {
        vmcs.set_host_ia32_efer(host.efer);
    }
    if c.exit.contains(ExitControls::LOAD_PAT) {
        vmcs.set_host_ia32_pat(host.pat);
    }
    vmcs.set_host_rip(host.rip);
}

/// The per-thread host fields: CR3 (the calling process's address space) and FS base. Written
/// through the cache, so they cost a VMWRITE only when they change (KVM does the same for CR3).
#[inline]
pub fn write_host_thread_state<V: Vmx>(vmcs: &mut Vmcs<'_, V>, cr3: u64, fs_base: u64) {
    vmcs.set_host_cr3(cr3);
    vmcs.set_host_fs_base(fs_base);
}

/// HAXM's power-on guest state for a new vCPU (real mode at F000:FFF0).
pub mod power_on {
    /// CS access rights: present, S, type 11 (execute/read, accessed).
    pub const CS_AR: u32 = 0x9b;
    /// Data segment access rights: present, S, type 3 (read/write, accessed).
    pub const DATA_AR: u32 = 0x93;
    /// LDTR access rights: present, type 2 (LDT).
    pub const LDTR_AR: u32 = 0x82;
    /// TR access rights: present, type 11 (busy TSS; VM entry requires busy, SDM §27.3.1.2).
    pub const TR_AR: u32 = 0x8b;
    /// CR0 as the guest sees it: CD, NW, ET.
    pub const CR0: u64 = 0x6000_0010;
    /// RFLAGS: only the reserved bit 1.
    pub const RFLAGS: u64 = 2;
    /// DR7.
    pub const DR7: u64 = 0x400;
    /// IA32_PAT.
    pub const PAT: u64 = 0x0007_0406_0007_0406;
    /// RIP.
    pub const RIP: u64 = 0xfff0;
    /// CS selector.
    pub const CS_SELECTOR: u16 = 0xf000;
    /// CS base.
    pub const CS_BASE: u64 = 0xffff_0000;
}

/// Writes the power-on guest state. CR0/CR4 bits the VMX fixed-bit MSRs force (CR0.NE,
/// CR4.VMXE) are set in the real registers and hidden from the guest by the read shadows.
pub fn write_power_on_state<V: Vmx>(vmcs: &mut Vmcs<'_, V>, c: &VmxControls) {
    use power_on as p;
    vmcs.set_cr0_read_shadow(p::CR0);
    vmcs.set_guest_cr0(c.guest_cr0_fixed.adjust(p::CR0));
    vmcs.set_cr4_read_shadow(0);
    vmcs.set_guest_cr4(c.guest_cr4_fixed.adjust(0));
    vmcs.set_guest_cr3(0);
    vmcs.set_guest_dr7(p::DR7);
    vmcs.set_guest_rsp(0);
    vmcs.set_guest_rip(p::RIP);
    vmcs.set_guest_rflags(p::RFLAGS);

    vmcs.set_guest_cs_selector(p::CS_SELECTOR);
    vmcs.set_guest_cs_base(p::CS_BASE);
    vmcs.set_guest_cs_limit(0xffff);
    vmcs.set_guest_cs_access_rights(p::CS_AR);
    vmcs.set_guest_ss_selector(0);
    vmcs.set_guest_ss_base(0);
    vmcs.set_guest_ss_limit(0xffff);
    vmcs.set_guest_ss_access_rights(p::DATA_AR);
    vmcs.set_guest_ds_selector(0);
    vmcs.set_guest_ds_base(0);
    vmcs.set_guest_ds_limit(0xffff);
    vmcs.set_guest_ds_access_rights(p::DATA_AR);
    vmcs.set_guest_es_selector(0);
    vmcs.set_guest_es_base(0);
    vmcs.set_guest_es_limit(0xffff);
    vmcs.set_guest_es_access_rights(p::DATA_AR);
    vmcs.set_guest_fs_selector(0);
    vmcs.set_guest_fs_base(0);
    vmcs.set_guest_fs_limit(0xffff);
    vmcs.set_guest_fs_access_rights(p::DATA_AR);
    vmcs.set_guest_gs_selector(0);
    vmcs.set_guest_gs_base(0);
    vmcs.set_guest_gs_limit(0xffff);
    vmcs.set_guest_gs_access_rights(p::DATA_AR);
    vmcs.set_guest_ldtr_selector(0);
    vmcs.set_guest_ldtr_base(0);
    vmcs.set_guest_ldtr_limit(0xffff);
    vmcs.set_guest_ldtr_access_rights(p::LDTR_AR);
    vmcs.set_guest_tr_selector(0);
    vmcs.set_guest_tr_base(0);
    vmcs.set_guest_tr_limit(0xffff);
    vmcs.set_guest_tr_access_rights(p::TR_AR);
    vmcs.set_guest_gdtr_base(0);
    vmcs.set_guest_gdtr_limit(0xffff);
    vmcs.set_guest_idtr_base(0);
    vmcs.set_guest_idtr_limit(0xffff);

    vmcs.set_guest_ia32_sysenter_cs(0);
    vmcs.set_guest_ia32_sysenter_esp(0);
    vmcs.set_guest_ia32_sysenter_eip(0);
    vmcs.set_guest_ia32_debugctl(0);
    if c.entry.contains(EntryControls::LOAD_EFER) {
        vmcs.set_guest_ia32_efer(0);
    }
    if c.entry.contains(EntryControls::LOAD_PAT) {
        vmcs.set_guest_ia32_pat(p::PAT);
    }
    vmcs.set_guest_activity_state(0);
    vmcs.set_guest_interruptibility_state(0);
    vmcs.set_guest_pending_debug_exceptions(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_bitmap_passes_the_common_msrs_and_traps_the_rest() {
        let mut page = [0u8; 4096];
        let mut all = PASS_THROUGH_MSRS.to_vec();
        all.push(PASS_THROUGH_TSC_AUX);
        assert!(fill_msr_bitmap(&mut page, &all));
        for msr in all {
            assert!(!msr_exits(&page, msr, false), "{msr:#x} read");
            assert!(!msr_exits(&page, msr, true), "{msr:#x} write");
        }
        for msr in [0x10, 0x1b, 0x277, 0xc000_0080, 0x4000_0000] {
            assert!(
                msr_exits(&page, msr, false) && msr_exits(&page, msr, true),
                "{msr:#x}"
            );
        }
        assert!(!fill_msr_bitmap(&mut page[..100], &[]));
    }
}
