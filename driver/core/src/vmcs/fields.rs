//! The VMCS component table (Intel SDM Vol. 3C Appendix B "Field Encoding in VMCS", and §25.11.2
//! "VMREAD, VMWRITE, and Encodings of VMCS Fields"; 2023+ numbering).
//!
//! ONE macro invocation lists every field: its name, encoding, width, area ("type" in the SDM),
//! access and cache policy. From it come [`VmcsField`] (with [`VmcsField::ALL`] and the metadata
//! methods), [`VmcsField::from_encoding`], and the typed accessors of [`super::Vmcs`]: a getter
//! per field and a setter only for read-write fields, so writing `exit_reason` does not compile.
//!
//! The cache policy says what a VM exit does to a field (SDM §28.3 "Saving guest state",
//! §28.2 "Recording VM-exit information"): `Volatile` fields may be changed by the CPU on a VM
//! exit (guest state, exit information, and the one control the CPU writes, the VM-entry
//! interruption-information field whose valid bit every VM exit clears, SDM §28.2.5);
//! `Stable` fields change only by VMWRITE (controls, host state, and the VMCS link pointer,
//! which is in the guest area but never saved by a VM exit).

use crate::vmcs::Vmcs;
use crate::vmx::{VmFail, Vmx};

/// The width of a field (encoding bits 14:13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 16-bit (0).
    W16,
    /// 64-bit (1); the "high" access (encoding bit 0 set) reaches bits 63:32.
    W64,
    /// 32-bit (2).
    W32,
    /// Natural width (3): 64 bits on a processor that supports Intel 64.
    Natural,
}

impl Width {
    /// The value of encoding bits 14:13 for this width.
    pub const fn code(self) -> u32 {
        match self {
            Width::W16 => 0,
            Width::W64 => 1,
            Width::W32 => 2,
            Width::Natural => 3,
        }
    }

    /// The mask of the bits a field of this width holds (natural width: 64 bits on Intel 64).
    pub const fn mask(self) -> u64 {
        match self {
            Width::W16 => 0xffff,
            Width::W32 => 0xffff_ffff,
            Width::W64 | Width::Natural => u64::MAX,
        }
    }

    /// The name the table printout uses.
    pub const fn name(self) -> &'static str {
        match self {
            Width::W16 => "16",
            Width::W32 => "32",
            Width::W64 => "64",
            Width::Natural => "natural",
        }
    }
}

/// The area of a field (encoding bits 11:10, "type" in the SDM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 0: control fields.
    Control,
    /// 1: VM-exit information (read-only data).
    ExitInfo,
    /// 2: guest-state area.
    Guest,
    /// 3: host-state area.
    Host,
}

impl Kind {
    /// The value of encoding bits 11:10 for this area.
    pub const fn code(self) -> u32 {
        match self {
            Kind::Control => 0,
            Kind::ExitInfo => 1,
            Kind::Guest => 2,
            Kind::Host => 3,
        }
    }

    /// The name the table printout uses.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Control => "control",
            Kind::ExitInfo => "exit-info",
            Kind::Guest => "guest",
            Kind::Host => "host",
        }
    }
}

/// Whether software may VMWRITE a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read-write.
    Rw,
    /// Read-only (VM-exit information): VMWRITE fails with error 13 unless
    /// IA32_VMX_MISC bit 29 is set (SDM §31.3 VMWRITE).
    Ro,
}

impl Access {
    /// The name the table printout uses.
    pub const fn name(self) -> &'static str {
        match self {
            Access::Rw => "rw",
            Access::Ro => "ro",
        }
    }
}

/// What a VM exit does to the cached copy of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Only VMWRITE changes it: the cached value stays valid across VM exits while this VMCS
    /// stays current on this CPU.
    Stable,
    /// The CPU may change it on a VM exit (or a failed VM entry): the cached copy is dropped.
    Volatile,
}

impl Policy {
    /// The name the table printout uses.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::Stable => "stable",
            Policy::Volatile => "volatile",
        }
    }
}

/// The static description of one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    /// Snake-case name (SDM name, lower case).
    pub name: &'static str,
    /// The VMREAD/VMWRITE encoding of the field (the "full" access for 64-bit fields).
    pub encoding: u32,
    /// Declared width.
    pub width: Width,
    /// Declared area.
    pub kind: Kind,
    /// Declared access.
    pub access: Access,
    /// Cache policy.
    pub policy: Policy,
}

macro_rules! vmcs_value_type {
    (W16) => {
        u16
    };
    (W32) => {
        u32
    };
    (W64) => {
        u64
    };
    (Natural) => {
        u64
    };
}

macro_rules! vmcs_setter {
    (Ro, $name:ident, $camel:ident, $ty:ty) => {};
    (Rw, $name:ident, $camel:ident, $ty:ty) => {
        paste::paste! {
            impl<V: Vmx> Vmcs<'_, V> {
                #[doc = concat!("Writes `", stringify!($name), "` into the cache (VMWRITE happens at the flush).")]
                #[inline]
                pub fn [<set_ $name>](&mut self, value: $ty) {
                    self.write(VmcsField::$camel, u64::from(value));
                }
            }
        }
    };
}

macro_rules! vmcs_fields {
    ($(($name:ident, $enc:literal, $width:ident, $kind:ident, $access:ident, $policy:ident),)*) => {
        paste::paste! {
            /// Every VMCS field of SDM Appendix B, in table order.
            #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
            #[repr(u16)]
            pub enum VmcsField {
                $(#[doc = concat!("`", stringify!($name), "` (", stringify!($enc), ")")] [<$name:camel>],)*
            }

            const INFO: &[FieldInfo] = &[
                $(FieldInfo {
                    name: stringify!($name),
                    encoding: $enc,
                    width: Width::$width,
                    kind: Kind::$kind,
                    access: Access::$access,
                    policy: Policy::$policy,
                },)*
            ];

            impl VmcsField {
                /// Every field, in table order (`ALL[f.index()] == f`).
                pub const ALL: &'static [VmcsField] = &[$(VmcsField::[<$name:camel>],)*];

                /// Finds the field with this encoding (the "full" encoding for 64-bit fields).
                pub const fn from_encoding(encoding: u32) -> Option<VmcsField> {
                    match encoding {
                        $($enc => Some(VmcsField::[<$name:camel>]),)*
                        _ => None,
                    }
                }
            }

            impl<V: Vmx> Vmcs<'_, V> {
                $(
                    #[doc = concat!("Reads `", stringify!($name), "` (VMREAD on the first read after it was invalidated).")]
                    #[inline]
                    pub fn $name(&mut self) -> Result<vmcs_value_type!($width), VmFail> {
                        // Truncation is exact: the cache holds values masked to the field width.
                        Ok(self.read(VmcsField::[<$name:camel>])? as vmcs_value_type!($width))
                    }
                )*
            }

            $(vmcs_setter!($access, $name, [<$name:camel>], vmcs_value_type!($width));)*
        }
    };
}

impl VmcsField {
    /// Number of fields in the table.
    pub const COUNT: usize = INFO.len();

    /// Position in [`VmcsField::ALL`]: the index of this field's cache slot and bits.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Static description.
    #[inline]
    pub const fn info(self) -> &'static FieldInfo {
        &INFO[self as usize]
    }

    /// VMREAD/VMWRITE encoding.
    #[inline]
    pub const fn encoding(self) -> u32 {
        self.info().encoding
    }

    /// Declared width.
    #[inline]
    pub const fn width(self) -> Width {
        self.info().width
    }

    /// Declared area.
    #[inline]
    pub const fn kind(self) -> Kind {
        self.info().kind
    }

    /// Declared access.
    #[inline]
    pub const fn access(self) -> Access {
        self.info().access
    }

    /// Cache policy.
    #[inline]
    pub const fn policy(self) -> Policy {
        self.info().policy
    }

    /// Snake-case name.
    #[inline]
    pub const fn name(self) -> &'static str {
        self.info().name
    }
}

vmcs_fields! {
    // ---- 16-bit control fields (B.1.1) ----
    (virtual_processor_id, 0x0000, W16, Control, Rw, Stable),
    (posted_interrupt_notification_vector, 0x0002, W16, Control, Rw, Stable),
    (eptp_index, 0x0004, W16, Control, Rw, Volatile), // VMFUNC 0 (EPTP switching) changes it in the guest
    (hlat_prefix_size, 0x0006, W16, Control, Rw, Stable),
    (last_pid_pointer_index, 0x0008, W16, Control, Rw, Stable),
    // ---- 16-bit guest-state fields (B.1.2) ----
    (guest_es_selector, 0x0800, W16, Guest, Rw, Volatile),
    (guest_cs_selector, 0x0802, W16, Guest, Rw, Volatile),
    (guest_ss_selector, 0x0804, W16, Guest, Rw, Volatile),
    (guest_ds_selector, 0x0806, W16, Guest, Rw, Volatile),
    (guest_fs_selector, 0x0808, W16, Guest, Rw, Volatile),
    (guest_gs_selector, 0x080a, W16, Guest, Rw, Volatile),
    (guest_ldtr_selector, 0x080c, W16, Guest, Rw, Volatile),
    (guest_tr_selector, 0x080e, W16, Guest, Rw, Volatile),
    (guest_interrupt_status, 0x0810, W16, Guest, Rw, Volatile),
    (guest_pml_index, 0x0812, W16, Guest, Rw, Volatile),
    (guest_uinv, 0x0814, W16, Guest, Rw, Volatile),
    // ---- 16-bit host-state fields (B.1.3) ----
    (host_es_selector, 0x0c00, W16, Host, Rw, Stable),
    (host_cs_selector, 0x0c02, W16, Host, Rw, Stable),
    (host_ss_selector, 0x0c04, W16, Host, Rw, Stable),
    (host_ds_selector, 0x0c06, W16, Host, Rw, Stable),
    (host_fs_selector, 0x0c08, W16, Host, Rw, Stable),
    (host_gs_selector, 0x0c0a, W16, Host, Rw, Stable),
    (host_tr_selector, 0x0c0c, W16, Host, Rw, Stable),
    // ---- 64-bit control fields (B.2.1) ----
    (io_bitmap_a_address, 0x2000, W64, Control, Rw, Stable),
    (io_bitmap_b_address, 0x2002, W64, Control, Rw, Stable),
    (msr_bitmap_address, 0x2004, W64, Control, Rw, Stable),
    (vm_exit_msr_store_address, 0x2006, W64, Control, Rw, Stable),
    (vm_exit_msr_load_address, 0x2008, W64, Control, Rw, Stable),
    (vm_entry_msr_load_address, 0x200a, W64, Control, Rw, Stable),
    (executive_vmcs_pointer, 0x200c, W64, Control, Rw, Stable),
    (pml_address, 0x200e, W64, Control, Rw, Stable),
    (tsc_offset, 0x2010, W64, Control, Rw, Stable),
    (virtual_apic_address, 0x2012, W64, Control, Rw, Stable),
    (apic_access_address, 0x2014, W64, Control, Rw, Stable),
    (posted_interrupt_descriptor_address, 0x2016, W64, Control, Rw, Stable),
    (vm_function_controls, 0x2018, W64, Control, Rw, Stable),
    (ept_pointer, 0x201a, W64, Control, Rw, Stable),
    (eoi_exit_bitmap_0, 0x201c, W64, Control, Rw, Stable),
    (eoi_exit_bitmap_1, 0x201e, W64, Control, Rw, Stable),
    (eoi_exit_bitmap_2, 0x2020, W64, Control, Rw, Stable),
    (eoi_exit_bitmap_3, 0x2022, W64, Control, Rw, Stable),
    (eptp_list_address, 0x2024, W64, Control, Rw, Stable),
    (vmread_bitmap_address, 0x2026, W64, Control, Rw, Stable),
    (vmwrite_bitmap_address, 0x2028, W64, Control, Rw, Stable),
    (virtualization_exception_information_address, 0x202a, W64, Control, Rw, Stable),
    (xss_exiting_bitmap, 0x202c, W64, Control, Rw, Stable),
    (encls_exiting_bitmap, 0x202e, W64, Control, Rw, Stable),
    (sub_page_permission_table_pointer, 0x2030, W64, Control, Rw, Stable),
    (tsc_multiplier, 0x2032, W64, Control, Rw, Stable),
    (tertiary_processor_based_vm_execution_controls, 0x2034, W64, Control, Rw, Stable),
    (enclv_exiting_bitmap, 0x2036, W64, Control, Rw, Stable),
    (low_pasid_directory_address, 0x2038, W64, Control, Rw, Stable),
    (high_pasid_directory_address, 0x203a, W64, Control, Rw, Stable),
    (shared_eptp, 0x203c, W64, Control, Rw, Stable),
    (pconfig_exiting_bitmap, 0x203e, W64, Control, Rw, Stable),
    (hlatp, 0x2040, W64, Control, Rw, Stable),
    (pid_pointer_table_address, 0x2042, W64, Control, Rw, Stable),
    (secondary_vm_exit_controls, 0x2044, W64, Control, Rw, Stable),
    (ia32_spec_ctrl_mask, 0x204a, W64, Control, Rw, Stable),
    (ia32_spec_ctrl_shadow, 0x204c, W64, Control, Rw, Stable),
    // ---- 64-bit read-only data field (B.2.2) ----
    (guest_physical_address, 0x2400, W64, ExitInfo, Ro, Volatile),
    // ---- 64-bit guest-state fields (B.2.3) ----
    (vmcs_link_pointer, 0x2800, W64, Guest, Rw, Stable), // never saved by a VM exit (SDM §28.3)
    (guest_ia32_debugctl, 0x2802, W64, Guest, Rw, Volatile),
    (guest_ia32_pat, 0x2804, W64, Guest, Rw, Volatile),
    (guest_ia32_efer, 0x2806, W64, Guest, Rw, Volatile),
    (guest_ia32_perf_global_ctrl, 0x2808, W64, Guest, Rw, Volatile),
    (guest_pdpte0, 0x280a, W64, Guest, Rw, Volatile),
    (guest_pdpte1, 0x280c, W64, Guest, Rw, Volatile),
    (guest_pdpte2, 0x280e, W64, Guest, Rw, Volatile),
    (guest_pdpte3, 0x2810, W64, Guest, Rw, Volatile),
    (guest_ia32_bndcfgs, 0x2812, W64, Guest, Rw, Volatile),
    (guest_ia32_rtit_ctl, 0x2814, W64, Guest, Rw, Volatile),
    (guest_ia32_lbr_ctl, 0x2816, W64, Guest, Rw, Volatile),
    (guest_ia32_pkrs, 0x2818, W64, Guest, Rw, Volatile),
    // ---- 64-bit host-state fields (B.2.4) ----
    (host_ia32_pat, 0x2c00, W64, Host, Rw, Stable),
    (host_ia32_efer, 0x2c02, W64, Host, Rw, Stable),
    (host_ia32_perf_global_ctrl, 0x2c04, W64, Host, Rw, Stable),
    (host_ia32_pkrs, 0x2c06, W64, Host, Rw, Stable),
    // ---- 32-bit control fields (B.3.1) ----
    (pin_based_vm_execution_controls, 0x4000, W32, Control, Rw, Stable),
    (primary_processor_based_vm_execution_controls, 0x4002, W32, Control, Rw, Stable),
    (exception_bitmap, 0x4004, W32, Control, Rw, Stable),
    (page_fault_error_code_mask, 0x4006, W32, Control, Rw, Stable),
    (page_fault_error_code_match, 0x4008, W32, Control, Rw, Stable),
    (cr3_target_count, 0x400a, W32, Control, Rw, Stable),
    (primary_vm_exit_controls, 0x400c, W32, Control, Rw, Stable),
    (vm_exit_msr_store_count, 0x400e, W32, Control, Rw, Stable),
    (vm_exit_msr_load_count, 0x4010, W32, Control, Rw, Stable),
    // Every VM exit stores EFER.LMA into its "IA-32e mode guest" bit (SDM §28.2), so it is
    // volatile although a control.
    (vm_entry_controls, 0x4012, W32, Control, Rw, Volatile),
    (vm_entry_msr_load_count, 0x4014, W32, Control, Rw, Stable),
    // Every VM exit clears its valid bit (SDM §28.2.5), so it is volatile although a control.
    (vm_entry_interruption_information, 0x4016, W32, Control, Rw, Volatile),
    (vm_entry_exception_error_code, 0x4018, W32, Control, Rw, Stable),
    (vm_entry_instruction_length, 0x401a, W32, Control, Rw, Stable),
    (tpr_threshold, 0x401c, W32, Control, Rw, Stable),
    (secondary_processor_based_vm_execution_controls, 0x401e, W32, Control, Rw, Stable),
    (ple_gap, 0x4020, W32, Control, Rw, Stable),
    (ple_window, 0x4022, W32, Control, Rw, Stable),
    (instruction_timeout_control, 0x4024, W32, Control, Rw, Stable),
    // ---- 32-bit read-only data fields (B.3.2) ----
    (vm_instruction_error, 0x4400, W32, ExitInfo, Ro, Volatile),
    (exit_reason, 0x4402, W32, ExitInfo, Ro, Volatile),
    (vm_exit_interruption_information, 0x4404, W32, ExitInfo, Ro, Volatile),
    (vm_exit_interruption_error_code, 0x4406, W32, ExitInfo, Ro, Volatile),
    (idt_vectoring_information, 0x4408, W32, ExitInfo, Ro, Volatile),
    (idt_vectoring_error_code, 0x440a, W32, ExitInfo, Ro, Volatile),
    (vm_exit_instruction_length, 0x440c, W32, ExitInfo, Ro, Volatile),
    (vm_exit_instruction_information, 0x440e, W32, ExitInfo, Ro, Volatile),
    // ---- 32-bit guest-state fields (B.3.3) ----
    (guest_es_limit, 0x4800, W32, Guest, Rw, Volatile),
    (guest_cs_limit, 0x4802, W32, Guest, Rw, Volatile),
    (guest_ss_limit, 0x4804, W32, Guest, Rw, Volatile),
    (guest_ds_limit, 0x4806, W32, Guest, Rw, Volatile),
    (guest_fs_limit, 0x4808, W32, Guest, Rw, Volatile),
    (guest_gs_limit, 0x480a, W32, Guest, Rw, Volatile),
    (guest_ldtr_limit, 0x480c, W32, Guest, Rw, Volatile),
    (guest_tr_limit, 0x480e, W32, Guest, Rw, Volatile),
    (guest_gdtr_limit, 0x4810, W32, Guest, Rw, Volatile),
    (guest_idtr_limit, 0x4812, W32, Guest, Rw, Volatile),
    (guest_es_access_rights, 0x4814, W32, Guest, Rw, Volatile),
    (guest_cs_access_rights, 0x4816, W32, Guest, Rw, Volatile),
    (guest_ss_access_rights, 0x4818, W32, Guest, Rw, Volatile),
    (guest_ds_access_rights, 0x481a, W32, Guest, Rw, Volatile),
    (guest_fs_access_rights, 0x481c, W32, Guest, Rw, Volatile),
    (guest_gs_access_rights, 0x481e, W32, Guest, Rw, Volatile),
    (guest_ldtr_access_rights, 0x4820, W32, Guest, Rw, Volatile),
    (guest_tr_access_rights, 0x4822, W32, Guest, Rw, Volatile),
    (guest_interruptibility_state, 0x4824, W32, Guest, Rw, Volatile),
    (guest_activity_state, 0x4826, W32, Guest, Rw, Volatile),
    (guest_smbase, 0x4828, W32, Guest, Rw, Volatile),
    (guest_ia32_sysenter_cs, 0x482a, W32, Guest, Rw, Volatile),
    (vmx_preemption_timer_value, 0x482e, W32, Guest, Rw, Volatile),
    // ---- 32-bit host-state field (B.3.4) ----
    (host_ia32_sysenter_cs, 0x4c00, W32, Host, Rw, Stable),
    // ---- natural-width control fields (B.4.1) ----
    (cr0_guest_host_mask, 0x6000, Natural, Control, Rw, Stable),
    (cr4_guest_host_mask, 0x6002, Natural, Control, Rw, Stable),
    (cr0_read_shadow, 0x6004, Natural, Control, Rw, Stable),
    (cr4_read_shadow, 0x6006, Natural, Control, Rw, Stable),
    (cr3_target_value0, 0x6008, Natural, Control, Rw, Stable),
    (cr3_target_value1, 0x600a, Natural, Control, Rw, Stable),
    (cr3_target_value2, 0x600c, Natural, Control, Rw, Stable),
    (cr3_target_value3, 0x600e, Natural, Control, Rw, Stable),
    // ---- natural-width read-only data fields (B.4.2) ----
    (exit_qualification, 0x6400, Natural, ExitInfo, Ro, Volatile),
    (io_rcx, 0x6402, Natural, ExitInfo, Ro, Volatile),
    (io_rsi, 0x6404, Natural, ExitInfo, Ro, Volatile),
    (io_rdi, 0x6406, Natural, ExitInfo, Ro, Volatile),
    (io_rip, 0x6408, Natural, ExitInfo, Ro, Volatile),
    (guest_linear_address, 0x640a, Natural, ExitInfo, Ro, Volatile),
    // ---- natural-width guest-state fields (B.4.3) ----
    (guest_cr0, 0x6800, Natural, Guest, Rw, Volatile),
    (guest_cr3, 0x6802, Natural, Guest, Rw, Volatile),
    (guest_cr4, 0x6804, Natural, Guest, Rw, Volatile),
    (guest_es_base, 0x6806, Natural, Guest, Rw, Volatile),
    (guest_cs_base, 0x6808, Natural, Guest, Rw, Volatile),
    (guest_ss_base, 0x680a, Natural, Guest, Rw, Volatile),
    (guest_ds_base, 0x680c, Natural, Guest, Rw, Volatile),
    (guest_fs_base, 0x680e, Natural, Guest, Rw, Volatile),
    (guest_gs_base, 0x6810, Natural, Guest, Rw, Volatile),
    (guest_ldtr_base, 0x6812, Natural, Guest, Rw, Volatile),
    (guest_tr_base, 0x6814, Natural, Guest, Rw, Volatile),
    (guest_gdtr_base, 0x6816, Natural, Guest, Rw, Volatile),
    (guest_idtr_base, 0x6818, Natural, Guest, Rw, Volatile),
    (guest_dr7, 0x681a, Natural, Guest, Rw, Volatile),
    (guest_rsp, 0x681c, Natural, Guest, Rw, Volatile),
    (guest_rip, 0x681e, Natural, Guest, Rw, Volatile),
    (guest_rflags, 0x6820, Natural, Guest, Rw, Volatile),
    (guest_pending_debug_exceptions, 0x6822, Natural, Guest, Rw, Volatile),
    (guest_ia32_sysenter_esp, 0x6824, Natural, Guest, Rw, Volatile),
    (guest_ia32_sysenter_eip, 0x6826, Natural, Guest, Rw, Volatile),
    (guest_ia32_s_cet, 0x6828, Natural, Guest, Rw, Volatile),
    (guest_ssp, 0x682a, Natural, Guest, Rw, Volatile),
    (guest_ia32_interrupt_ssp_table_addr, 0x682c, Natural, Guest, Rw, Volatile),
    // ---- natural-width host-state fields (B.4.4) ----
    (host_cr0, 0x6c00, Natural, Host, Rw, Stable),
    (host_cr3, 0x6c02, Natural, Host, Rw, Stable),
    (host_cr4, 0x6c04, Natural, Host, Rw, Stable),
    (host_fs_base, 0x6c06, Natural, Host, Rw, Stable),
    (host_gs_base, 0x6c08, Natural, Host, Rw, Stable),
    (host_tr_base, 0x6c0a, Natural, Host, Rw, Stable),
    (host_gdtr_base, 0x6c0c, Natural, Host, Rw, Stable),
    (host_idtr_base, 0x6c0e, Natural, Host, Rw, Stable),
    (host_ia32_sysenter_esp, 0x6c10, Natural, Host, Rw, Stable),
    (host_ia32_sysenter_eip, 0x6c12, Natural, Host, Rw, Stable),
    (host_rsp, 0x6c14, Natural, Host, Rw, Stable),
    (host_rip, 0x6c16, Natural, Host, Rw, Stable),
    (host_ia32_s_cet, 0x6c18, Natural, Host, Rw, Stable),
    (host_ssp, 0x6c1a, Natural, Host, Rw, Stable),
    (host_ia32_interrupt_ssp_table_addr, 0x6c1c, Natural, Host, Rw, Stable),
}

/// The decoded parts of a field encoding (SDM §25.11.2, "Structure of VMCS
/// Component Encoding").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// Bit 0: access type, 1 = the high 32 bits of a 64-bit field.
    pub high: bool,
    /// Bits 9:1: index.
    pub index: u32,
    /// Bits 11:10: type (area).
    pub kind: Kind,
    /// Bits 14:13: width.
    pub width: Width,
    /// Bit 12 and bits 31:15 are reserved and must be 0.
    pub reserved_clear: bool,
}

impl Encoding {
    /// Decodes an encoding into its bit fields.
    pub const fn decode(encoding: u32) -> Encoding {
        Encoding {
            high: encoding & 1 != 0,
            index: (encoding >> 1) & 0x1ff,
            kind: match (encoding >> 10) & 3 {
                0 => Kind::Control,
                1 => Kind::ExitInfo,
                2 => Kind::Guest,
                _ => Kind::Host,
            },
            width: match (encoding >> 13) & 3 {
                0 => Width::W16,
                1 => Width::W64,
                2 => Width::W32,
                _ => Width::Natural,
            },
            reserved_clear: encoding & 0xffff_9000 == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;

    #[test]
    fn every_encoding_decodes_to_its_declared_width_and_area() {
        for &f in VmcsField::ALL {
            let d = Encoding::decode(f.encoding());
            assert!(d.reserved_clear, "{}: reserved bits set", f.name());
            assert!(!d.high, "{}: the table lists full accesses only", f.name());
            assert_eq!(d.width, f.width(), "{}: width", f.name());
            assert_eq!(d.kind, f.kind(), "{}: area", f.name());
        }
    }

    #[test]
    fn encodings_and_names_are_unique_and_index_matches() {
        let mut encs = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, &f) in VmcsField::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
            assert!(
                encs.insert(f.encoding()),
                "duplicate encoding {:#x}",
                f.encoding()
            );
            assert!(names.insert(f.name()), "duplicate name {}", f.name());
            assert_eq!(VmcsField::from_encoding(f.encoding()), Some(f));
        }
        assert_eq!(VmcsField::ALL.len(), VmcsField::COUNT);
    }

    #[test]
    fn read_only_means_exit_information_and_policy_follows_area() {
        for &f in VmcsField::ALL {
            // SDM §25.11.2: type 1 ("VM-exit information") is exactly the read-only data area.
            assert_eq!(
                f.access() == Access::Ro,
                f.kind() == Kind::ExitInfo,
                "{}",
                f.name()
            );
            match f.kind() {
                Kind::ExitInfo => assert_eq!(f.policy(), Policy::Volatile, "{}", f.name()),
                Kind::Host => assert_eq!(f.policy(), Policy::Stable, "{}", f.name()),
                Kind::Guest if f != VmcsField::VmcsLinkPointer => {
                    assert_eq!(f.policy(), Policy::Volatile, "{}", f.name())
                }
                _ => {}
            }
        }
    }

    #[test]
    fn indexes_are_unique_within_each_width_and_area() {
        let mut seen = BTreeSet::new();
        for &f in VmcsField::ALL {
            let d = Encoding::decode(f.encoding());
            assert!(
                seen.insert((d.width.code(), d.kind.code(), d.index)),
                "{}",
                f.name()
            );
        }
    }
}
