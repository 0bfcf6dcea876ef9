//! The conformance tables: this crate's layouts and IOCTL codes in the format of the
//! reference tables measured from HAXM's headers (`tests/abi/haxm-layouts.tsv`,
//! `tests/abi/haxm-ioctls.tsv`).
//!
//! Every number is computed from the Rust definitions: `offset_of!`/`size_of` for fields,
//! the accessors' own descriptors ([`BitField`], [`GprPart`]) or return
//! types for bit-fields and union members, and the [`IoctlDef`](crate::IoctlDef) encoders for
//! codes. The rows use the C names and the order of the reference. The examples
//! `abi-layout` and `abi-ioctls` print these tables; `tests/abi_conformance.rs` compares them
//! with the references byte for byte.

use core::fmt::{self, Write};
use core::mem::{offset_of, size_of, size_of_val};

use crate::bits::BitField;
use crate::cpuid::Cpuid;
use crate::ioctl::IOCTLS;
use crate::pod::Pod;
use crate::vcpu::GPR_ALIASES;
use crate::{
    AllocRamInfo, CapabilityInfo, CpuidEntry, CpuidHeader, FastMmio, FxLayout, GprPart,
    Interruptibility, ModuleVersion, MsrData, ProtectRamInfo, QemuVersion, RamblockInfo,
    SegmentDesc, SetMemlimit, SetRamInfo, SetRamInfo2, Tunnel, TunnelInfo, TunnelPayload,
    VcpuDebug, VcpuState, VmxMsr,
};

/// The header line of the layout table.
pub const LAYOUT_HEADER: &str = "struct\tfield\toffset\tsize\tbit_offset\tbit_width";

/// The header line of the IOCTL table.
pub const IOCTL_HEADER: &str = "name\twindows_code_hex\tposix_code_hex";

fn row(w: &mut impl Write, st: &str, field: &str, off: usize, size: usize) -> fmt::Result {
    writeln!(w, "{st}\t{field}\t{off}\t{size}\t-\t-")
}

fn bit_row(
    w: &mut impl Write,
    st: &str,
    field: &str,
    off: usize,
    size: usize,
    b: BitField,
) -> fmt::Result {
    writeln!(w, "{st}\t{field}\t{off}\t{size}\t{}\t{}", b.shift, b.width)
}

fn size_row<T>(w: &mut impl Write, st: &str) -> fmt::Result {
    row(w, st, "__size__", 0, size_of::<T>())
}

/// A plain field: `offset_of!` and the field's size.
macro_rules! field {
    ($w:expr, $st:expr, $name:expr, $ty:ty, $($f:ident).+) => {{
        let z = <$ty as Pod>::zeroed();
        row($w, $st, $name, offset_of!($ty, $($f).+), size_of_val(&z.$($f).+))?;
    }};
}

/// Element `idx` of an array field (the reference's `entries[1]` rows).
macro_rules! elem {
    ($w:expr, $st:expr, $name:expr, $ty:ty, $f:ident [$idx:expr]) => {{
        let z = <$ty as Pod>::zeroed();
        let stride = size_of_val(&z.$f[0]);
        row($w, $st, $name, offset_of!($ty, $f) + $idx * stride, stride)?;
    }};
}

/// Writes the layout table: the header line and one line per row of
/// `tests/abi/haxm-layouts.tsv`, each ending in `\n`.
pub fn layout_rows(w: &mut impl Write) -> fmt::Result {
    writeln!(w, "{LAYOUT_HEADER}")?;

    let st = "vmx_msr";
    field!(w, st, "entry", VmxMsr, entry);
    field!(w, st, "value", VmxMsr, value);
    size_row::<VmxMsr>(w, st)?;

    let st = "fx_layout";
    let fx = FxLayout::zeroed();
    field!(w, st, "fcw", FxLayout, fcw);
    field!(w, st, "fsw", FxLayout, fsw);
    field!(w, st, "ftw", FxLayout, ftw);
    field!(w, st, "res1", FxLayout, res1);
    field!(w, st, "fop", FxLayout, fop);
    field!(w, st, "fip", FxLayout, fip);
    field!(w, st, "fcs", FxLayout, fcs);
    field!(w, st, "res2", FxLayout, res2);
    // The union member overlays fip:fcs:res2; its width is what the accessor returns.
    row(
        w,
        st,
        "fpu_ip",
        offset_of!(FxLayout, fip),
        size_of_val(&fx.fpu_ip()),
    )?;
    field!(w, st, "fdp", FxLayout, fdp);
    field!(w, st, "fds", FxLayout, fds);
    field!(w, st, "res3", FxLayout, res3);
    row(
        w,
        st,
        "fpu_dp",
        offset_of!(FxLayout, fdp),
        size_of_val(&fx.fpu_dp()),
    )?;
    field!(w, st, "mxcsr", FxLayout, mxcsr);
    field!(w, st, "mxcsr_mask", FxLayout, mxcsr_mask);
    field!(w, st, "st_mm", FxLayout, st_mm);
    elem!(w, st, "st_mm[1]", FxLayout, st_mm[1]);
    field!(w, st, "mmx_1", FxLayout, mmx_1);
    elem!(w, st, "mmx_1[1]", FxLayout, mmx_1[1]);
    field!(w, st, "mmx_2", FxLayout, mmx_2);
    elem!(w, st, "mmx_2[1]", FxLayout, mmx_2[1]);
    field!(w, st, "pad", FxLayout, pad);
    size_row::<FxLayout>(w, st)?;

    let st = "hax_msr_data";
    field!(w, st, "nr_msr", MsrData, nr_msr);
    field!(w, st, "done", MsrData, done);
    field!(w, st, "pad", MsrData, pad);
    field!(w, st, "entries", MsrData, entries);
    elem!(w, st, "entries[1]", MsrData, entries[1]);
    elem!(w, st, "entries[31]", MsrData, entries[31]);
    size_row::<MsrData>(w, st)?;

    tunnel_rows(w)?;

    let st = "hax_fastmmio";
    field!(w, st, "gpa", FastMmio, gpa);
    field!(w, st, "value", FastMmio, value);
    // `gpa2` is the other member of the union with `value`.
    let m = FastMmio::zeroed();
    row(
        w,
        st,
        "gpa2",
        offset_of!(FastMmio, value),
        size_of_val(&m.gpa2()),
    )?;
    field!(w, st, "size", FastMmio, size);
    field!(w, st, "direction", FastMmio, direction);
    field!(w, st, "reg_index", FastMmio, reg_index);
    field!(w, st, "pad0", FastMmio, pad0);
    field!(w, st, "_cr0", FastMmio, cr0);
    field!(w, st, "_cr2", FastMmio, cr2);
    field!(w, st, "_cr3", FastMmio, cr3);
    field!(w, st, "_cr4", FastMmio, cr4);
    size_row::<FastMmio>(w, st)?;

    let st = "hax_module_version";
    field!(w, st, "compat_version", ModuleVersion, compat_version);
    field!(w, st, "cur_version", ModuleVersion, cur_version);
    size_row::<ModuleVersion>(w, st)?;

    let st = "hax_capabilityinfo";
    field!(w, st, "wstatus", CapabilityInfo, wstatus);
    field!(w, st, "winfo", CapabilityInfo, winfo);
    field!(w, st, "win_refcount", CapabilityInfo, win_refcount);
    field!(w, st, "mem_quota", CapabilityInfo, mem_quota);
    size_row::<CapabilityInfo>(w, st)?;

    let st = "hax_tunnel_info";
    field!(w, st, "va", TunnelInfo, va);
    field!(w, st, "io_va", TunnelInfo, io_va);
    field!(w, st, "size", TunnelInfo, size);
    field!(w, st, "pad", TunnelInfo, pad);
    size_row::<TunnelInfo>(w, st)?;

    let st = "hax_set_memlimit";
    field!(w, st, "enable_memlimit", SetMemlimit, enable_memlimit);
    field!(w, st, "pad", SetMemlimit, pad);
    field!(w, st, "memory_limit", SetMemlimit, memory_limit);
    size_row::<SetMemlimit>(w, st)?;

    let st = "hax_alloc_ram_info";
    field!(w, st, "size", AllocRamInfo, size);
    field!(w, st, "pad", AllocRamInfo, pad);
    field!(w, st, "va", AllocRamInfo, va);
    size_row::<AllocRamInfo>(w, st)?;

    let st = "hax_ramblock_info";
    field!(w, st, "start_va", RamblockInfo, start_va);
    field!(w, st, "size", RamblockInfo, size);
    field!(w, st, "reserved", RamblockInfo, reserved);
    size_row::<RamblockInfo>(w, st)?;

    let st = "hax_set_ram_info";
    field!(w, st, "pa_start", SetRamInfo, pa_start);
    field!(w, st, "size", SetRamInfo, size);
    field!(w, st, "flags", SetRamInfo, flags);
    field!(w, st, "pad", SetRamInfo, pad);
    field!(w, st, "va", SetRamInfo, va);
    size_row::<SetRamInfo>(w, st)?;

    let st = "hax_set_ram_info2";
    field!(w, st, "pa_start", SetRamInfo2, pa_start);
    field!(w, st, "size", SetRamInfo2, size);
    field!(w, st, "va", SetRamInfo2, va);
    field!(w, st, "flags", SetRamInfo2, flags);
    field!(w, st, "reserved1", SetRamInfo2, reserved1);
    field!(w, st, "reserved2", SetRamInfo2, reserved2);
    size_row::<SetRamInfo2>(w, st)?;

    let st = "hax_protect_ram_info";
    field!(w, st, "pa_start", ProtectRamInfo, pa_start);
    field!(w, st, "size", ProtectRamInfo, size);
    field!(w, st, "flags", ProtectRamInfo, flags);
    field!(w, st, "reserved", ProtectRamInfo, reserved);
    size_row::<ProtectRamInfo>(w, st)?;

    let st = "hax_qemu_version";
    field!(w, st, "cur_version", QemuVersion, cur_version);
    field!(w, st, "least_version", QemuVersion, least_version);
    size_row::<QemuVersion>(w, st)?;

    let st = "hax_debug_t";
    field!(w, st, "control", VcpuDebug, control);
    field!(w, st, "reserved", VcpuDebug, reserved);
    field!(w, st, "dr", VcpuDebug, dr);
    elem!(w, st, "dr[1]", VcpuDebug, dr[1]);
    elem!(w, st, "dr[7]", VcpuDebug, dr[7]);
    size_row::<VcpuDebug>(w, st)?;

    let st = "hax_cpuid_entry";
    field!(w, st, "function", CpuidEntry, function);
    field!(w, st, "index", CpuidEntry, index);
    field!(w, st, "flags", CpuidEntry, flags);
    field!(w, st, "eax", CpuidEntry, eax);
    field!(w, st, "ebx", CpuidEntry, ebx);
    field!(w, st, "ecx", CpuidEntry, ecx);
    field!(w, st, "edx", CpuidEntry, edx);
    field!(w, st, "pad", CpuidEntry, pad);
    size_row::<CpuidEntry>(w, st)?;

    // `hax_cpuid` is the header (`Cpuid<0>`, whose `entries` is the empty flexible array);
    // its `entries[1]` is measured on a table with room for two.
    let st = "hax_cpuid";
    field!(w, st, "total", CpuidHeader, total);
    field!(w, st, "pad", CpuidHeader, pad);
    field!(w, st, "entries", CpuidHeader, entries);
    elem!(w, st, "entries[1]", Cpuid<2>, entries[1]);
    size_row::<CpuidHeader>(w, st)?;

    let st = "interruptibility_state_t";
    let i = Interruptibility::zeroed();
    field!(w, st, "raw", Interruptibility, raw);
    // The C `pad` member is a u64 over the whole union.
    row(w, st, "pad", 0, size_of::<Interruptibility>())?;
    for (name, b) in Interruptibility::FIELDS {
        bit_row(
            w,
            st,
            name,
            offset_of!(Interruptibility, raw),
            size_of_val(&i.raw),
            b,
        )?;
    }
    size_row::<Interruptibility>(w, st)?;

    let st = "segment_desc_t";
    let s = SegmentDesc::zeroed();
    field!(w, st, "selector", SegmentDesc, selector);
    field!(w, st, "_dummy", SegmentDesc, dummy);
    field!(w, st, "limit", SegmentDesc, limit);
    field!(w, st, "base", SegmentDesc, base);
    field!(w, st, "ar", SegmentDesc, ar);
    field!(w, st, "ipad", SegmentDesc, ipad);
    for (name, b) in SegmentDesc::AR_FIELDS {
        bit_row(
            w,
            st,
            name,
            offset_of!(SegmentDesc, ar),
            size_of_val(&s.ar),
            b,
        )?;
    }
    size_row::<SegmentDesc>(w, st)?;

    vcpu_state_rows(w)
}

fn tunnel_rows(w: &mut impl Write) -> fmt::Result {
    let st = "hax_tunnel";
    let t = Tunnel::zeroed();
    field!(w, st, "_exit_reason", Tunnel, exit_reason);
    field!(w, st, "pad0", Tunnel, pad0);
    field!(w, st, "_exit_status", Tunnel, exit_status);
    field!(w, st, "user_event_pending", Tunnel, user_event_pending);
    field!(
        w,
        st,
        "ready_for_interrupt_injection",
        Tunnel,
        ready_for_interrupt_injection
    );
    field!(
        w,
        st,
        "request_interrupt_window",
        Tunnel,
        request_interrupt_window
    );

    // A union member and its fields, through the same accessor users call.
    macro_rules! member {
        ($m:ident: $($c:literal = $f:ident),*) => {{
            let v = t.$m();
            row(w, st, stringify!($m), offset_of!(Tunnel, payload.$m), size_of_val(v))?;
            $(row(w, st, $c, offset_of!(Tunnel, payload.$m.$f), size_of_val(&v.$f))?;)*
        }};
    }
    member!(io: "io._direction" = direction, "io._df" = df, "io._size" = size,
        "io._port" = port, "io._count" = count, "io._flags" = flags, "io._pad0" = pad0,
        "io._pad1" = pad1, "io._pad2" = pad2, "io._vaddr" = vaddr);
    member!(mmio: "mmio.gla" = gla);
    member!(pagefault: "pagefault.gpa" = gpa, "pagefault.flags" = flags,
        "pagefault.reserved1" = reserved1, "pagefault.reserved2" = reserved2);
    member!(state: "state.dummy" = dummy);
    member!(debug: "debug.rip" = rip, "debug.dr6" = dr6, "debug.dr7" = dr7);
    debug_assert_eq!(size_of::<TunnelPayload>(), 24);
    field!(w, st, "apic_base", Tunnel, apic_base);
    size_row::<Tunnel>(w, st)
}

fn vcpu_state_rows(w: &mut impl Write) -> fmt::Result {
    let st = "vcpu_state_t";
    let v = VcpuState::zeroed();
    field!(w, st, "_regs", VcpuState, regs);
    let stride = size_of_val(&v.regs[0]);
    for &(name, reg, part) in GPR_ALIASES {
        let GprPart { byte, len } = part;
        let off = offset_of!(VcpuState, regs) + reg as usize * stride + usize::from(byte);
        row(w, st, name, off, usize::from(len))?;
    }
    row(
        w,
        st,
        "_eip",
        offset_of!(VcpuState, rip),
        size_of_val(&v.eip()),
    )?;
    field!(w, st, "_rip", VcpuState, rip);
    row(
        w,
        st,
        "_eflags",
        offset_of!(VcpuState, rflags),
        size_of_val(&v.eflags()),
    )?;
    field!(w, st, "_rflags", VcpuState, rflags);
    field!(w, st, "_cs", VcpuState, cs);
    field!(w, st, "_ss", VcpuState, ss);
    field!(w, st, "_ds", VcpuState, ds);
    field!(w, st, "_es", VcpuState, es);
    field!(w, st, "_fs", VcpuState, fs);
    field!(w, st, "_gs", VcpuState, gs);
    field!(w, st, "_ldt", VcpuState, ldt);
    field!(w, st, "_tr", VcpuState, tr);
    field!(w, st, "_gdt", VcpuState, gdt);
    field!(w, st, "_idt", VcpuState, idt);
    field!(w, st, "_cr0", VcpuState, cr0);
    field!(w, st, "_cr2", VcpuState, cr2);
    field!(w, st, "_cr3", VcpuState, cr3);
    field!(w, st, "_cr4", VcpuState, cr4);
    field!(w, st, "_dr0", VcpuState, dr0);
    field!(w, st, "_dr1", VcpuState, dr1);
    field!(w, st, "_dr2", VcpuState, dr2);
    field!(w, st, "_dr3", VcpuState, dr3);
    field!(w, st, "_dr6", VcpuState, dr6);
    field!(w, st, "_dr7", VcpuState, dr7);
    field!(w, st, "_pde", VcpuState, pde);
    field!(w, st, "_efer", VcpuState, efer);
    field!(w, st, "_sysenter_cs", VcpuState, sysenter_cs);
    field!(w, st, "_sysenter_eip", VcpuState, sysenter_eip);
    field!(w, st, "_sysenter_esp", VcpuState, sysenter_esp);
    field!(w, st, "_activity_state", VcpuState, activity_state);
    field!(w, st, "pad", VcpuState, pad);
    field!(
        w,
        st,
        "_interruptibility_state",
        VcpuState,
        interruptibility_state
    );
    field!(
        w,
        st,
        "_interruptibility_state.raw",
        VcpuState,
        interruptibility_state.raw
    );
    field!(w, st, "_cs.selector", VcpuState, cs.selector);
    field!(w, st, "_cs.limit", VcpuState, cs.limit);
    field!(w, st, "_cs.base", VcpuState, cs.base);
    field!(w, st, "_cs.ar", VcpuState, cs.ar);
    field!(w, st, "_idt.limit", VcpuState, idt.limit);
    field!(w, st, "_idt.base", VcpuState, idt.base);
    size_row::<VcpuState>(w, st)
}

/// Writes the IOCTL table: the header line and `name<TAB>windows<TAB>posix` per IOCTL of
/// [`IOCTLS`], codes as `0x%08x` or `-`, each line ending in `\n`.
pub fn ioctl_rows(w: &mut impl Write) -> fmt::Result {
    writeln!(w, "{IOCTL_HEADER}")?;
    for def in IOCTLS {
        write!(w, "{}\t", def.name)?;
        write_code(w, def.windows())?;
        w.write_char('\t')?;
        write_code(w, def.linux())?;
        w.write_char('\n')?;
    }
    Ok(())
}

fn write_code(w: &mut impl Write, code: Option<u32>) -> fmt::Result {
    match code {
        Some(c) => write!(w, "{c:#010x}"),
        None => w.write_char('-'),
    }
}
