//! The requests of the `dispatch` harness: one [`Op`] of the input becomes one or a few
//! IOCTLs, biased to succeed (existing handles, valid sizes, addresses from small pools).

use rhax_api::ioctl::{self, IOCTLS};
use rhax_api::{
    AllocRamInfo, CpuidEntry, CpuidHeader, FxLayout, MsrData, Pod, ProtectRamInfo, QemuVersion,
    RamblockInfo, SetMemlimit, SetRamInfo, SetRamInfo2, VcpuDebug, VmxMsr, HAX_MAX_MSR_ARRAY,
};
use rhax_core::dispatch::Handle;

use super::platform::{pool, MSRS, POOL_RESET};
use super::{pick, Op, World};

impl World {
    pub(super) fn op(&mut self, op: &Op) {
        match op {
            Op::OpenSystem => {
                if self.systems.len() < 4 {
                    self.open_system()
                }
            }
            Op::Close(i) => self.close(*i),
            Op::CreateVm(s) => {
                if let Some(id) = self.create_vm(*s) {
                    // Usually opened right away, as QEMU does.
                    if s & 0x80 == 0 {
                        self.open_vm(id);
                    }
                }
            }
            Op::OpenVm(id) => self.open_vm(u32::from(id % 4)),
            Op::SetMemlimit { sys, enable, mb } => {
                let Some(&s) = pick(&self.systems, *sys) else {
                    return;
                };
                let m = SetMemlimit {
                    enable_memlimit: u8::from(*enable),
                    pad: [0; 7],
                    memory_limit: if *mb == 0xffff {
                        u64::MAX >> 4
                    } else {
                        u64::from(*mb)
                    },
                };
                let _ = self.call(s, &ioctl::HAX_IOCTL_SET_MEMLIMIT, m.as_bytes(), &mut []);
            }
            Op::Capability(s) => {
                let Some(&s) = pick(&self.systems, *s) else {
                    return;
                };
                let mut out = [0u8; 16];
                let _ = self.call(s, &ioctl::HAX_IOCTL_CAPABILITY, &[], &mut out);
            }
            Op::CreateVcpu { vm, id } => self.create_vcpu(*vm, *id),
            Op::OpenVcpu { vm, id } => self.open_vcpu(*vm, *id),
            Op::AddRamblock {
                vm,
                start,
                size,
                reserved,
            } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let b = RamblockInfo {
                    start_va: Self::pool_addr(*start),
                    size: Self::size(*size),
                    reserved: u64::from(*reserved),
                };
                let _ = self.call(
                    h,
                    &ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK,
                    &self.sized(&b),
                    &mut [],
                );
            }
            Op::AllocRam { vm, va, size } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let b = AllocRamInfo {
                    size: Self::size(*size) as u32,
                    pad: 0,
                    va: Self::pool_addr(*va),
                };
                let _ = self.call(h, &ioctl::HAX_VM_IOCTL_ALLOC_RAM, &self.sized(&b), &mut []);
            }
            Op::SetRam {
                vm,
                gpa,
                size,
                va,
                flags,
            } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let invalid = flags & 0x80 != 0;
                let b = SetRamInfo {
                    pa_start: Self::gpa(*gpa),
                    size: Self::size(*size) as u32,
                    flags: *flags,
                    pad: [0; 3],
                    va: if invalid && flags & 0x20 == 0 {
                        0
                    } else {
                        Self::pool_addr(*va)
                    },
                };
                let _ = self.call(h, &ioctl::HAX_VM_IOCTL_SET_RAM, &self.sized(&b), &mut []);
            }
            Op::SetRam2 {
                vm,
                gpa,
                size,
                va,
                flags,
                reserved,
            } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                // Flags: every combination of ROM, STANDALONE and INVALID, and sometimes an
                // unknown bit.
                let mut f = 0u32;
                if flags & 1 != 0 {
                    f |= 0x01;
                }
                if flags & 2 != 0 {
                    f |= 0x40;
                }
                if flags & 4 != 0 {
                    f |= 0x80;
                }
                if flags & 8 != 0 {
                    f |= 1 << (flags >> 4);
                }
                let b = SetRamInfo2 {
                    pa_start: Self::gpa(*gpa),
                    size: Self::size(*size),
                    va: if f & 0x80 != 0 && flags & 0x10 == 0 {
                        0
                    } else {
                        Self::pool_addr(*va)
                    },
                    flags: f,
                    reserved1: u32::from(*reserved),
                    reserved2: 0,
                };
                let _ = self.call(h, &ioctl::HAX_VM_IOCTL_SET_RAM2, &self.sized(&b), &mut []);
            }
            Op::ProtectRam {
                vm,
                gpa,
                size,
                perm,
            } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let b = ProtectRamInfo {
                    pa_start: Self::gpa(*gpa),
                    size: Self::size(*size),
                    flags: match perm % 4 {
                        0 => 0,
                        1 => 7,
                        2 => u32::from(*perm),
                        _ => 7 | 0x100,
                    },
                    reserved: 0,
                };
                let _ = self.call(
                    h,
                    &ioctl::HAX_VM_IOCTL_PROTECT_RAM,
                    &self.sized(&b),
                    &mut [],
                );
            }
            Op::NotifyQemu { vm, cur, least } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let q = QemuVersion {
                    cur_version: *cur,
                    least_version: *least,
                };
                let _ = self.call(
                    h,
                    &ioctl::HAX_VM_IOCTL_NOTIFY_QEMU_VERSION,
                    q.as_bytes(),
                    &mut [],
                );
            }
            Op::SetupTunnel(i) => self.setup_tunnel(*i),
            Op::SetCpuid {
                vcpu,
                entries,
                total,
            } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let entries: Vec<_> = entries.iter().take(70).collect();
                let n = total.map_or(entries.len() as u32, u32::from);
                let header = CpuidHeader {
                    total: n,
                    pad: 0,
                    entries: [],
                };
                let mut buf = header.as_bytes().to_vec();
                for e in &entries {
                    let c = CpuidEntry {
                        function: e.function,
                        index: e.index,
                        flags: e.flags,
                        eax: e.regs[0],
                        ebx: e.regs[1],
                        ecx: e.regs[2],
                        edx: e.regs[3],
                        ..CpuidEntry::default()
                    };
                    buf.extend_from_slice(c.as_bytes());
                }
                let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_SET_CPUID, &buf, &mut []);
            }
            Op::GetCpuid { vcpu, total } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let header = CpuidHeader {
                    total: u32::from(*total),
                    pad: 0,
                    entries: [],
                };
                let n = usize::from(*total).min(64);
                let mut out = vec![0u8; 8 + n * CpuidEntry::SIZE];
                let _ = self.call(
                    h,
                    &ioctl::HAX_VCPU_IOCTL_GET_CPUID,
                    header.as_bytes(),
                    &mut out,
                );
            }
            Op::SetRegs {
                vcpu,
                preset,
                changes,
            } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                self.set_regs(h, *preset, changes);
            }
            Op::GetRegs(i) => {
                if let Some(h) = self.vcpu(*i) {
                    let _ = self.get_regs(h);
                }
            }
            Op::SetFpu {
                vcpu,
                fill,
                changes,
            } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let mut b = vec![*fill; FxLayout::SIZE];
                for (at, v) in changes.iter().take(16) {
                    let i = usize::from(*at) % FxLayout::SIZE;
                    b[i] = *v;
                }
                let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_SET_FPU, &b, &mut []);
            }
            Op::GetFpu(i) => {
                let Some(h) = self.vcpu(*i) else { return };
                let mut out = vec![0u8; FxLayout::SIZE];
                let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_GET_FPU, &[], &mut out);
            }
            Op::Msrs {
                vcpu,
                set,
                entries,
                nr,
            } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let mut d = MsrData {
                    nr_msr: 0,
                    done: 0,
                    pad: 0,
                    entries: [VmxMsr::default(); HAX_MAX_MSR_ARRAY],
                };
                for (k, (sel, raw, value)) in entries.iter().take(HAX_MAX_MSR_ARRAY).enumerate() {
                    let msr = if sel & 0x80 != 0 {
                        *raw
                    } else {
                        MSRS[usize::from(*sel) % MSRS.len()]
                    };
                    d.entries[k] = VmxMsr {
                        entry: u64::from(msr),
                        value: *value,
                    };
                    d.nr_msr = k as u16 + 1;
                }
                if let Some(n) = nr {
                    d.nr_msr = u16::from(*n);
                }
                let def = if *set {
                    &ioctl::HAX_VCPU_IOCTL_SET_MSRS
                } else {
                    &ioctl::HAX_VCPU_IOCTL_GET_MSRS
                };
                let mut out = [0u8; MsrData::SIZE];
                if self.call(h, def, d.as_bytes(), &mut out).is_ok() {
                    let back = MsrData::from_bytes(&out).expect("size");
                    assert!(
                        back.done <= d.nr_msr,
                        "done {} > nr_msr {}",
                        back.done,
                        d.nr_msr
                    );
                }
            }
            Op::Interrupt { vcpu, vector } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let _ = self.call(
                    h,
                    &ioctl::HAX_VCPU_IOCTL_INTERRUPT,
                    &vector.to_le_bytes(),
                    &mut [],
                );
            }
            Op::Kickoff(i) => {
                let Some(h) = self.vcpu(*i) else { return };
                let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_KICKOFF, &[], &mut []);
            }
            Op::Debug { vcpu, control, dr7 } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let d = VcpuDebug {
                    control: *control,
                    reserved: 0,
                    dr: [0, 0, 0, 0, 0, 0, 0, *dr7],
                };
                let _ = self.call(h, &ioctl::HAX_IOCTL_VCPU_DEBUG, d.as_bytes(), &mut []);
            }
            Op::Stats { vcpu, reset } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let (def, n) = if *reset {
                    (&rhax_api::ext::RHAX_VCPU_IOCTL_RESET_STATS, 0)
                } else {
                    (
                        &rhax_api::ext::RHAX_VCPU_IOCTL_GET_STATS,
                        rhax_api::ext::VcpuStats::SIZE,
                    )
                };
                let mut out = vec![0u8; n];
                let _ = self.call(h, def, &[], &mut out);
            }
            Op::Tunnel {
                vcpu,
                pause,
                event,
                window,
            } => {
                let Some((t, _)) = self.tunnel(*vcpu) else {
                    return;
                };
                let p = t as *mut u32;
                // SAFETY: the tunnel page of an open vCPU handle (it lives as long as the
                // vCPU); user space owns these fields (haxm-abi.md §4).
                unsafe {
                    if *pause {
                        p.write_volatile(rhax_api::tunnel::HAX_EXIT_REASON_PAUSE_REQUEST);
                    }
                }
                // SAFETY: as above (offset 12: user_event_pending).
                unsafe { p.add(3).write_volatile(*event) };
                // SAFETY: as above (offset 20: request_interrupt_window).
                unsafe { p.add(5).write_volatile(*window as u32) };
            }
            Op::IoBuffer {
                vcpu,
                offset,
                bytes,
            } => {
                let Some((_, io)) = self.tunnel(*vcpu) else {
                    return;
                };
                let off = usize::from(*offset);
                let n = bytes.len().min(4096 - off);
                // SAFETY: the IO buffer page of an open vCPU (4 KiB), `off + n <= 4096`.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), (io as *mut u8).add(off), n)
                };
            }
            Op::GuestMem { offset, bytes } => {
                let off = usize::from(*offset) % POOL_RESET;
                let n = bytes.len().min(POOL_RESET - off);
                // SAFETY: `off + n <= POOL_RESET <= POOL_SIZE`: inside the pool (the guest's
                // RAM, touched by the core only through pins, on this thread).
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), pool().add(off), n) };
            }
            Op::Run { vcpu, script } => self.run(*vcpu, script),
            Op::Raw {
                handle,
                def,
                code,
                input,
                out_len,
            } => {
                let all: Vec<Handle> = self
                    .systems
                    .iter()
                    .copied()
                    .chain(self.vms.iter().map(|v| v.0))
                    .chain(self.vcpus.iter().map(|v| v.handle))
                    .chain(self.stale.iter().copied())
                    .collect();
                let Some(&h) = pick(&all, *handle) else {
                    return;
                };
                let code = match code {
                    Some(c) => *c,
                    None => self.code(&IOCTLS[usize::from(*def) % IOCTLS.len()]),
                };
                if Some(code) == ioctl::HAX_VCPU_IOCTL_RUN.code(self.h.codes()) {
                    // RUN goes through `Op::Run` (with a script).
                    return;
                }
                let mut out = vec![0u8; usize::from(*out_len) % 4096];
                let _ = self.call_code(h, code, input, &mut out);
            }
        }
    }
}
