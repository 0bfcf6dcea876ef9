//! Register state IOCTLs: GET/SET_REGS, GET/SET_FPU, statistics, SET_CPUID (VCPU_DEBUG: see
//! `debug.rs`).

use super::exits::guest_cr;
use super::*;
use crate::counters::FieldFilter;
use crate::vcpu::checked::{xcr0, FxImage, GuestXcr0, MxcsrMask, Refused, XsaveImage};
use rhax_api::ext::{RhaxXsave, RHAX_XSAVE_VERSION};
use rhax_api::fpu::XsaveArea;

impl HaxVcpu {
    /// `HAX_VCPU_IOCTL_GET_FPU`: the guest's FXSAVE image.
    pub fn get_fpu(&self) -> FxLayout {
        *self.core_ref().fpu()
    }

    /// `HAX_VCPU_IOCTL_SET_FPU`: an MXCSR with a bit outside the host's MXCSR_MASK (which
    /// FXRSTOR would fault on in the host, SDM Vol. 1 §10.5.1.2) is refused with nothing
    /// changed. The image's own `mxcsr_mask` field is data, not a rule: FXRSTOR ignores it.
    pub fn set_fpu(&mut self, host: MxcsrMask, f: &FxLayout) -> Result<(), HaxError> {
        let image = FxImage::check(f, host).map_err(HaxError::InvalidValue)?;
        self.core.set_fpu(&image);
        Ok(())
    }

    /// `RHAX_VCPU_IOCTL_GET_XSAVE` into `out` (a [`RhaxXsave`]): the guest's XCR0, the size of
    /// its XSAVE area and the image (XSTATE_BV within XCR0, bytes past the size 0). Returns
    /// the bytes written.
    pub fn write_xsave(&self, out: &mut [u8]) -> Result<usize, HaxError> {
        let Some(out) = out.get_mut(..RhaxXsave::SIZE) else {
            return Err(HaxError::InvalidValue(Refused::ReservedBits));
        };
        let mut area = crate::heap::try_zeroed::<XsaveArea>()
            .ok_or(HaxError::Platform(PlatformError::OutOfMemory))?;
        let size = self.core_ref().xsave_for_user(&mut area);
        let (head, body) = out.split_at_mut(16);
        head[0..4].copy_from_slice(&RHAX_XSAVE_VERSION.to_le_bytes());
        head[4..8].copy_from_slice(&size.to_le_bytes());
        head[8..16].copy_from_slice(&self.core_ref().xcr0().get().to_le_bytes());
        body.copy_from_slice(area.as_bytes());
        Ok(RhaxXsave::SIZE)
    }

    /// `RHAX_VCPU_IOCTL_SET_XSAVE` from `input` (a [`RhaxXsave`]): checked whole before
    /// anything changes: the version, XCR0 (the XSETBV rules within what this host lets a
    /// guest enable), `size` equal to that XCR0's area size, the image (`XsaveImage`: header,
    /// MXCSR against the host's MXCSR_MASK). A refusal is `InvalidValue`, the vCPU unchanged.
    pub fn set_xsave<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        host: MxcsrMask,
        input: &[u8],
    ) -> Result<(), HaxError> {
        let refused = HaxError::InvalidValue;
        let field = |r: core::ops::Range<usize>| input.get(r).ok_or(refused(Refused::ReservedBits));
        let (Some(version), Some(size), Some(value)) = (
            field(0..4)?.try_into().ok().map(u32::from_le_bytes),
            field(4..8)?.try_into().ok().map(u32::from_le_bytes),
            field(8..16)?.try_into().ok().map(u64::from_le_bytes),
        ) else {
            return Err(refused(Refused::ReservedBits));
        };
        let body = field(16..RhaxXsave::SIZE)?;
        if version != RHAX_XSAVE_VERSION {
            return Err(refused(Refused::ReservedBits));
        }
        let allowed = self.core.xcr0_allowed(root);
        let x = GuestXcr0::check(value, allowed).map_err(refused)?;
        if size != xcr0::area_size(x.get()) {
            return Err(refused(Refused::ReservedBits));
        }
        let mut area = crate::heap::try_zeroed::<XsaveArea>()
            .ok_or(HaxError::Platform(PlatformError::OutOfMemory))?;
        area.as_bytes_mut().copy_from_slice(body);
        let image = XsaveImage::check(area, x, host).map_err(|(_, e)| refused(e))?;
        drop(self.core.set_xsave(image, x));
        Ok(())
    }

    /// `HAX_VCPU_GET_REGS`: the whole `vcpu_state_t`, including the fields HAXM leaves
    /// unwritten (EFER, SYSENTER, activity and interruptibility state; `pde` is 0).
    pub fn get_regs<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<VcpuState, HaxError> {
        let drs = self.drs;
        let cr2 = self.core.cr2();
        let mut s = self
            .core
            .with_vmcs(root, |vmcs, regs| -> Result<VcpuState, VmFail> {
                let mut s = VcpuState {
                    regs: regs.gpr,
                    ..VcpuState::default()
                };
                s.regs[reg::RSP] = vmcs.guest_rsp()?;
                s.rip = vmcs.guest_rip()?;
                s.rflags = vmcs.guest_rflags()?;
                for (i, seg) in SEGMENTS.iter().enumerate() {
                    let d = SegmentDesc::new(
                        vmcs.read(seg[0])? as u16,
                        vmcs.read(seg[1])?,
                        vmcs.read(seg[2])? as u32,
                        reported_ar(vmcs.read(seg[3])? as u32),
                    );
                    *segment_mut(&mut s, i) = d;
                }
                s.gdt = SegmentDesc::new(0, vmcs.guest_gdtr_base()?, vmcs.guest_gdtr_limit()?, 0);
                s.idt = SegmentDesc::new(0, vmcs.guest_idtr_base()?, vmcs.guest_idtr_limit()?, 0);
                s.cr0 = guest_cr(vmcs, 0)?;
                s.cr3 = vmcs.guest_cr3()?;
                s.cr4 = guest_cr(vmcs, 4)?;
                let lma = vmcs.vm_entry_controls()? & EntryControls::IA32E_MODE_GUEST.bits() != 0;
                s.efer =
                    ((vmcs.guest_ia32_efer()? & !EFER_LMA) | if lma { EFER_LMA } else { 0 }) as u32;
                s.sysenter_cs = vmcs.guest_ia32_sysenter_cs()?;
                s.sysenter_eip = vmcs.guest_ia32_sysenter_eip()?;
                s.sysenter_esp = vmcs.guest_ia32_sysenter_esp()?;
                s.activity_state = vmcs.guest_activity_state()?;
                s.interruptibility_state.raw = vmcs.guest_interruptibility_state()?;
                Ok(s)
            })??;
        s.cr2 = cr2;
        // The guest's own DR7, also while a debugger's is loaded.
        s.dr7 = self.guest_dr7(root)?;
        s.dr0 = drs[0];
        s.dr1 = drs[1];
        s.dr2 = drs[2];
        s.dr3 = drs[3];
        s.dr6 = drs[4];
        Ok(s)
    }

    /// `HAX_VCPU_SET_REGS`: GPRs, RIP, RFLAGS, CR0/2/3/4, DR0-3/6/7 and the segments; the
    /// fields HAXM ignores stay ignored (EFER and SYSENTER come through SET_MSRS). QEMU's zeros
    /// are accepted: DRs of 0 get their fixed bits, `ar == 0` means unusable (AR 0x10000), a
    /// non-accessed code/data type gets the accessed bit and TR a busy type (VM entry requires
    /// both, SDM §27.3.1.2). No consistency check here: CR0.PG/CR4.PAE/EFER.LME may disagree
    /// until SET_MSRS (haxm-clients.md §3.5); VM entry checks.
    pub fn set_regs<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        s: &VcpuState,
    ) -> Result<(), HaxError> {
        let s = *s;
        self.core.with_vmcs(root, |vmcs, regs| {
            regs.gpr = s.regs;
            vmcs.set_guest_rsp(s.regs[reg::RSP]);
            vmcs.set_guest_rip(s.rip);
            vmcs.set_guest_rflags(s.rflags);
            for (i, seg) in SEGMENTS.iter().enumerate() {
                let d = segment(&s, i);
                let ar = fix_ar(i, d.ar);
                vmcs.write(seg[0], u64::from(d.selector));
                vmcs.write(seg[1], d.base);
                vmcs.write(seg[2], u64::from(d.limit));
                vmcs.write(seg[3], u64::from(ar));
            }
            vmcs.set_guest_gdtr_base(s.gdt.base);
            vmcs.set_guest_gdtr_limit(s.gdt.limit & 0xffff);
            vmcs.set_guest_idtr_base(s.idt.base);
            vmcs.set_guest_idtr_limit(s.idt.limit & 0xffff);
            vmcs.set_guest_cr3(s.cr3);
        })?;
        // DR7: bit 10 is fixed to 1, bits 63:32 must be 0 (SDM §27.3.1.1). While a debugger's
        // DR7 is loaded this is the guest's own, given back when debugging stops.
        self.set_guest_dr7(root, s.dr7)?;
        let c = *self.controls();
        self.core.with_vmcs(root, |vmcs, _| {
            vmcs.set_cr0_read_shadow(s.cr0);
            vmcs.set_guest_cr0(c.guest_cr0_fixed.adjust(s.cr0));
            vmcs.set_cr4_read_shadow(s.cr4);
            vmcs.set_guest_cr4(c.guest_cr4_fixed.adjust(s.cr4));
        })?;
        self.core
            .set_guest_osxsave(s.cr4 & crate::vcpu::bits::CR4_OSXSAVE != 0);
        self.core.set_cr2(s.cr2);
        self.drs = [
            s.dr0,
            s.dr1,
            s.dr2,
            s.dr3,
            (s.dr6 & 0xffff_ffff) | 0xffff_0ff0,
        ];
        // A new register state abandons the MMIO instruction the general path had in flight
        // (its decoded bytes and cached reads belong to the old RIP and registers; executing it
        // again in the new context would be a wrong result, e.g. after QEMU's reset).
        self.emu.clear();
        Ok(())
    }

    /// The counters in the extension ABI's format (a 3312-byte copy: for host tests; the
    /// IOCTL path uses [`HaxVcpu::write_stats`]).
    #[cfg(any(test, feature = "soft"))]
    pub fn stats(&self) -> ext::VcpuStats {
        let mut out = ext::VcpuStats::new();
        self.write_stats(out.as_bytes_mut());
        out
    }

    /// Writes the counters in the extension ABI's `VcpuStats` layout into `out` (at least
    /// `size_of::<VcpuStats>()` bytes, else nothing is written and 0 returned); returns the
    /// bytes written. Record by record, so the IOCTL path never holds the 3312-byte struct
    /// on its stack (Windows kernel stacks are 24 KiB; the budget per frame is 2 KiB).
    pub fn write_stats(&self, out: &mut [u8]) -> usize {
        use core::mem::{offset_of, size_of};
        use ext::{ExitReasonStats, VcpuStats};
        let size = size_of::<VcpuStats>();
        let Some(out) = out.get_mut(..size) else {
            return 0;
        };
        out.fill(0);
        let conv = |c: &ExitCounters| ExitReasonStats {
            exits: c.exits,
            vmreads: c.vmreads,
            vmwrites: c.vmwrites,
            vmx_other: c.other_vmx,
            cycles: c.host_cycles,
        };
        let mut put = |at: usize, bytes: &[u8]| {
            if let Some(d) = out.get_mut(at..at + bytes.len()) {
                d.copy_from_slice(bytes);
            }
        };
        put(
            offset_of!(VcpuStats, version),
            &ext::RHAX_VCPU_STATS_VERSION.to_le_bytes(),
        );
        put(offset_of!(VcpuStats, size), &(size as u32).to_le_bytes());
        put(
            offset_of!(VcpuStats, nr_reasons),
            &(ext::RHAX_EXIT_REASONS as u32).to_le_bytes(),
        );
        put(offset_of!(VcpuStats, reserved), &0u32.to_le_bytes());
        put(offset_of!(VcpuStats, runs), &self.runs.to_le_bytes());
        put(
            offset_of!(VcpuStats, user_exits),
            &self.user_exits.to_le_bytes(),
        );
        let stats = self.core_ref().stats();
        let record = size_of::<ExitReasonStats>();
        let mut total = ExitReasonStats::default();
        for bucket in 0..crate::vmcs::stats::BUCKETS {
            let s = conv(&stats.exit(bucket));
            total = total.wrapping_add(s);
            if bucket == SETUP_BUCKET {
                let outside = ExitReasonStats { exits: 0, ..s };
                put(offset_of!(VcpuStats, outside_exits), outside.as_bytes());
            } else if bucket < ext::RHAX_EXIT_REASONS {
                put(
                    offset_of!(VcpuStats, per_reason) + bucket * record,
                    s.as_bytes(),
                );
            }
        }
        put(offset_of!(VcpuStats, total), total.as_bytes());
        size
    }

    /// Zeroes the counters.
    pub fn reset_stats(&mut self) {
        self.core.reset_stats();
        self.runs = 0;
        self.user_exits = 0;
    }

    /// `RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL`: with `NO_MMIO_FAST_PATH`, plain MOV MMIO
    /// accesses go through the general emulator too (to measure both paths, issue 11). A
    /// flag this driver does not know or a nonzero `reserved` is refused with nothing changed
    /// (a later flag must not pass for a no-op on an older driver). Takes effect at the next
    /// MMIO exit; a load already pending completes as it was decoded.
    pub fn set_emulation_control(
        &mut self,
        control: &ext::EmulationControl,
    ) -> Result<(), HaxError> {
        let refused = HaxError::InvalidValue(Refused::ReservedBits);
        let flags = ext::EmulationFlags::from_bits(control.flags).ok_or(refused)?;
        if control.reserved != 0 {
            return Err(refused);
        }
        self.mmio_fast_path = !flags.contains(ext::EmulationFlags::NO_MMIO_FAST_PATH);
        Ok(())
    }

    /// Whether plain MOV MMIO accesses take the fast path (`SET_EMULATION_CONTROL`).
    pub fn mmio_fast_path(&self) -> bool {
        self.mmio_fast_path
    }

    /// `RHAX_VCPU_IOCTL_SET_STATS_CONTROL`: switches counting and the host-cycle measurement on
    /// or off and chooses which
    /// exits per-field counts are kept for (none, all, or one reason). A flag this driver does not know, or a
    /// `field_reason` that is not a counted reason (or not 0 without `FIELD_REASON`), is
    /// refused with nothing changed (so a later flag cannot be mistaken for a no-op by an
    /// older driver).
    pub fn set_stats_control(&mut self, control: &ext::StatsControl) -> Result<(), HaxError> {
        let refused = HaxError::InvalidValue(Refused::ReservedBits);
        let flags = ext::StatsFlags::from_bits(control.flags).ok_or(refused)?;
        let reason = flags.contains(ext::StatsFlags::FIELD_REASON);
        let all = flags.contains(ext::StatsFlags::ALL_FIELDS);
        let filter = match (reason, all) {
            (true, false) => FieldFilter::Reason(
                u16::try_from(control.field_reason)
                    .ok()
                    .filter(|r| usize::from(*r) < ext::RHAX_EXIT_REASONS)
                    .ok_or(refused)?,
            ),
            (false, true) if control.field_reason == 0 => FieldFilter::All,
            (false, false) if control.field_reason == 0 => FieldFilter::Off,
            _ => return Err(refused),
        };
        self.core
            .set_counting(flags.contains(ext::StatsFlags::COUNTING));
        self.core
            .set_timing(flags.contains(ext::StatsFlags::CYCLES));
        self.core.set_field_filter(filter);
        Ok(())
    }

    /// Writes the per-field counts in the extension ABI's `VcpuFieldStats` layout into `out`
    /// (at least its size, else nothing is written and 0 returned), entry by entry (no
    /// 3856-byte record on the IOCTL path's stack); returns the bytes written.
    pub fn write_field_stats(&self, out: &mut [u8]) -> usize {
        use core::mem::{offset_of, size_of};
        use ext::{FieldStats, VcpuFieldStats, RHAX_FIELD_STATS_MAX};
        let size = size_of::<VcpuFieldStats>();
        let Some(out) = out.get_mut(..size) else {
            return 0;
        };
        out.fill(0);
        let mut put = |at: usize, bytes: &[u8]| {
            if let Some(d) = out.get_mut(at..at + bytes.len()) {
                d.copy_from_slice(bytes);
            }
        };
        let stats = self.core_ref().stats();
        let (mut nr, mut active) = (0usize, 0u32);
        for &field in crate::vmcs::VmcsField::ALL {
            let c = stats.field(field);
            if c.reads == 0 && c.writes == 0 {
                continue;
            }
            active += 1;
            if nr < RHAX_FIELD_STATS_MAX {
                let e = FieldStats {
                    encoding: field.encoding(),
                    reserved: 0,
                    reads: c.reads,
                    writes: c.writes,
                };
                put(
                    offset_of!(VcpuFieldStats, fields) + nr * size_of::<FieldStats>(),
                    e.as_bytes(),
                );
                nr += 1;
            }
        }
        let reason = match stats.field_filter() {
            FieldFilter::Reason(r) => u32::from(r),
            FieldFilter::All => ext::RHAX_FIELDS_ALL,
            FieldFilter::Off => ext::RHAX_FIELDS_OFF,
        };
        put(
            offset_of!(VcpuFieldStats, version),
            &ext::RHAX_FIELD_STATS_VERSION.to_le_bytes(),
        );
        put(offset_of!(VcpuFieldStats, nr), &(nr as u32).to_le_bytes());
        put(
            offset_of!(VcpuFieldStats, field_reason),
            &reason.to_le_bytes(),
        );
        put(offset_of!(VcpuFieldStats, active), &active.to_le_bytes());
        size
    }

    /// Whether counting is on.
    pub fn counting(&self) -> bool {
        self.core_ref().stats().counting()
    }

    /// SET_CPUID through the vCPU handle (the table is the VM's).
    pub fn set_cpuid(table: &mut CpuidTable, entries: &[CpuidEntry]) -> Result<(), HaxError> {
        table.set(entries).map_err(HaxError::Cpuid)
    }
}

/// Selector, base, limit, access-rights fields of CS, SS, DS, ES, FS, GS, LDTR, TR (the order
/// of `vcpu_state_t`).
pub(in crate::vcpu::haxm) const SEGMENTS: [[VmcsField; 4]; 8] = {
    use VmcsField as F;
    [
        [
            F::GuestCsSelector,
            F::GuestCsBase,
            F::GuestCsLimit,
            F::GuestCsAccessRights,
        ],
        [
            F::GuestSsSelector,
            F::GuestSsBase,
            F::GuestSsLimit,
            F::GuestSsAccessRights,
        ],
        [
            F::GuestDsSelector,
            F::GuestDsBase,
            F::GuestDsLimit,
            F::GuestDsAccessRights,
        ],
        [
            F::GuestEsSelector,
            F::GuestEsBase,
            F::GuestEsLimit,
            F::GuestEsAccessRights,
        ],
        [
            F::GuestFsSelector,
            F::GuestFsBase,
            F::GuestFsLimit,
            F::GuestFsAccessRights,
        ],
        [
            F::GuestGsSelector,
            F::GuestGsBase,
            F::GuestGsLimit,
            F::GuestGsAccessRights,
        ],
        [
            F::GuestLdtrSelector,
            F::GuestLdtrBase,
            F::GuestLdtrLimit,
            F::GuestLdtrAccessRights,
        ],
        [
            F::GuestTrSelector,
            F::GuestTrBase,
            F::GuestTrLimit,
            F::GuestTrAccessRights,
        ],
    ]
};

pub(in crate::vcpu::haxm) fn segment(s: &VcpuState, i: usize) -> SegmentDesc {
    [s.cs, s.ss, s.ds, s.es, s.fs, s.gs, s.ldt, s.tr][i]
}

pub(in crate::vcpu::haxm) fn segment_mut(s: &mut VcpuState, i: usize) -> &mut SegmentDesc {
    match i {
        0 => &mut s.cs,
        1 => &mut s.ss,
        2 => &mut s.ds,
        3 => &mut s.es,
        4 => &mut s.fs,
        5 => &mut s.gs,
        6 => &mut s.ldt,
        _ => &mut s.tr,
    }
}

/// Access rights as GET_REGS reports them: an unusable segment (bit 16) also reads as not
/// present (bit 7 clear). The CPU may leave stale type/S/P/G bits in an unusable segment's
/// access rights (SDM Vol. 3C §28.3.2: only the unusable bit is defined then), and QEMU's
/// `get_seg`/`set_seg` keep P but drop the unusable bit: without this a segment the guest
/// nulled came back from QEMU's GET/SET round trip as a usable one with garbage limit and
/// granularity, and VM entry failed. Seen with `-smp 2`, where QEMU syncs an AP's state on the
/// second SIPI while it runs 64-bit kernel code. KVM does the same (`vmx_get_segment`: "Some
/// userspaces do not preserve unusable property"); [`fix_ar`] completes it.
pub(in crate::vcpu::haxm) fn reported_ar(ar: u32) -> u32 {
    if ar & (1 << 16) != 0 {
        ar & !(1 << 7)
    } else {
        ar
    }
}

/// The access rights VM entry accepts for what QEMU sends (HAXM `core/cpu.c` fix-ups). A
/// segment that is not present is unusable (a usable one must be present, SDM Vol. 3C
/// §27.3.1.2; QEMU does not carry the unusable bit, see [`reported_ar`]).
pub(in crate::vcpu::haxm) fn fix_ar(index: usize, ar: u32) -> u32 {
    if ar == 0 || ar & (1 << 7) == 0 {
        return 1 << 16;
    }
    if ar & (1 << 16) != 0 {
        return ar;
    }
    match index {
        // TR: a TSS must be busy (11, or 3 for a 16-bit TSS).
        7 => {
            (ar & !0xf)
                | if ar & 0xf == 1 || ar & 0xf == 3 {
                    3
                } else {
                    11
                }
        }
        6 => ar,
        // Code/data (S=1): the accessed bit must be set.
        _ if ar & (1 << 4) != 0 => ar | 1,
        _ => ar,
    }
}
