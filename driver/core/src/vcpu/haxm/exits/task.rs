//! Task switches (exit reason 9, which VMX delivers unconditionally): CALL, JMP or IRET to a
//! TSS or task gate, and events delivered through a task gate in the IDT (32-bit guests put
//! #DF and NMI there). SDM Vol. 3A chapter 9 "Task Management" (2023+ numbering; §9.3 "Task
//! Switching", Figures 9-2/9-11 TSS layouts), Vol. 3C §28.2.1 (the exit qualification: bits
//! 15:0 the new TSS selector, bits 31:30 the source) and §28.2.4 (IDT-vectoring information).
//!
//! The exit captures what the switch needs from the VMCS; the guest-memory work (descriptor
//! tables, both TSSs, the error code pushed on the new stack) is done at passive level; the
//! next step loads the new task into the VMCS. A switch the architecture refuses gives the
//! guest the fault the CPU would (#TS, #NP, #GP with the selector as error code).
//!
//! Not modelled: the accessed bits of the loaded descriptors are set in the VMCS copy, not in
//! guest memory; privilege checks of CALL/JMP through a task gate (DPL/RPL) are the CPU's, done
//! before the exit; debug traps (T bit of the TSS).

use super::*;
use crate::vcpu::bits::{CR0_TS, RFLAGS_NT, RFLAGS_VM};
use crate::vcpu::guest::Backing;
use crate::vcpu::haxm::state::SEGMENTS;

/// What started the switch (exit qualification bits 31:30).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskSource {
    /// CALL (or an interrupt/exception through a task gate: [`TaskSource::Gate`]).
    Call,
    /// IRET with EFLAGS.NT = 1.
    Iret,
    /// JMP.
    Jmp,
    /// A task gate in the IDT.
    Gate,
}

/// A segment as the VMCS holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadedSegment {
    selector: u16,
    base: u64,
    limit: u32,
    ar: u32,
}

/// Everything a task switch needs from the VMCS, captured at the exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSwitch {
    selector: u16,
    source: TaskSource,
    old_tr: LoadedSegment,
    gdt_base: u64,
    gdt_limit: u32,
    /// EIP stored in the old TSS.
    eip_after: u64,
    rflags: u64,
    /// ES, CS, SS, DS, FS, GS selectors.
    selectors: [u16; 6],
    gprs: [u64; 8],
    mode: PagingMode,
    /// The error code of an event delivered through a task gate.
    error_code: Option<u32>,
}

/// The new task, read at passive level, loaded by the next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) struct NewTask {
    tr: LoadedSegment,
    ldtr: LoadedSegment,
    /// ES, CS, SS, DS, FS, GS.
    segments: [LoadedSegment; 6],
    gprs: [u64; 8],
    eip: u64,
    eflags: u64,
    cr3: Option<u64>,
    pdptes: Option<[u64; 4]>,
}

/// A fault the switch raises in the guest: vector and error code.
pub(in crate::vcpu::haxm) type TaskFault = (u8, u32);

/// Where each TSS selector (ES, CS, SS, DS, FS, GS) is in `SEGMENTS` (CS, SS, DS, ES, FS, GS).
const TSS_ORDER: [usize; 6] = [3, 0, 1, 2, 4, 5];
const TS: u8 = 10;
const NP: u8 = 11;
const GP: u8 = 13;

/// Offsets in a 32-bit and a 16-bit TSS (SDM Vol. 3A Figures 9-2, 9-11): link, CR3 (none in a
/// 16-bit TSS), EIP, EFLAGS, first GPR, GPR width, first selector (ES; CS, SS, DS, FS, GS
/// follow), LDT selector, minimum limit.
struct Layout {
    cr3: Option<u64>,
    eip: u64,
    eflags: u64,
    gprs: u64,
    width: usize,
    selectors: u64,
    ldt: u64,
    min_limit: u32,
    /// The busy TSS type.
    busy: u32,
}

const TSS32: Layout = Layout {
    cr3: Some(0x1c),
    eip: 0x20,
    eflags: 0x24,
    gprs: 0x28,
    width: 4,
    selectors: 0x48,
    ldt: 0x60,
    min_limit: 0x67,
    busy: 0xb,
};

const TSS16: Layout = Layout {
    cr3: None,
    eip: 0x0e,
    eflags: 0x10,
    gprs: 0x12,
    width: 2,
    selectors: 0x22,
    ldt: 0x2a,
    min_limit: 0x2b,
    busy: 0x3,
};

/// Selectors a TSS holds: six in a 32-bit TSS, four (ES, CS, SS, DS) in a 16-bit one, whose
/// task gets null FS and GS (a 286 task has none, SDM Vol. 3A §9.6).
fn selector_count(l: &Layout) -> usize {
    if l.width == 4 {
        6
    } else {
        4
    }
}

/// Base, limit (scaled by G) and VMX access rights of a descriptor.
fn decode(d: u64) -> (u64, u32, u32) {
    let limit = ((d & 0xffff) | ((d >> 32) & 0xf_0000)) as u32;
    let base = ((d >> 16) & 0xff_ffff) | ((d >> 32) & 0xff00_0000);
    let ar = (((d >> 40) & 0xff) | (((d >> 52) & 0xf) << 12)) as u32;
    let limit = if ar & (1 << 15) != 0 {
        (limit << 12) | 0xfff
    } else {
        limit
    };
    (base, limit, ar)
}

const SUPERVISOR_WRITE: Access = Access {
    kind: AccessKind::Write,
    user: false,
    ac: false,
};

/// Guest-memory access for the switch: every failure is the guest's (#PF) or, for tables
/// outside RAM, stops nothing but is reported as #TS on the new TSS (the descriptor cannot be
/// read).
struct Mem<'a, M: GuestMemoryAccess + ?Sized> {
    mem: &'a M,
    mode: &'a PagingMode,
}

impl<M: GuestMemoryAccess + ?Sized> Mem<'_, M> {
    fn read(&self, linear: u64, n: usize) -> Result<u64, WalkError> {
        let mut b = [0u8; 8];
        let got = read_linear(
            self.mem,
            self.mode,
            linear,
            &mut b[..n],
            Access::SUPERVISOR_READ,
        )?;
        if got < n {
            return Err(WalkError::TableNotRam { gpa: linear });
        }
        Ok(u64::from_le_bytes(b))
    }

    fn write(&self, linear: u64, v: u64, n: usize) -> Result<(), WalkError> {
        write_linear(
            self.mem,
            self.mode,
            linear,
            &v.to_le_bytes()[..n],
            SUPERVISOR_WRITE,
        )?;
        Ok(())
    }
}

/// Why the memory part of a switch stopped: a fault for the guest or a walk error.
pub(in crate::vcpu::haxm) enum Failed {
    Fault(TaskFault),
    Walk(WalkError),
}

impl From<WalkError> for Failed {
    fn from(e: WalkError) -> Self {
        Failed::Walk(e)
    }
}

impl HaxVcpu {
    /// The exit: captures the VMCS state the switch needs and leaves the rest for passive
    /// level.
    pub(in crate::vcpu::haxm) fn task_switch_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Next, HaxError> {
        let gprs = {
            let r = &self.core.regs.gpr;
            [r[0], r[1], r[2], r[3], 0, r[5], r[6], r[7]]
        };
        let ts = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<TaskSwitch, VmFail> {
                let q = vmcs.exit_qualification()?;
                let source = match (q >> 30) & 3 {
                    0 => TaskSource::Call,
                    1 => TaskSource::Iret,
                    2 => TaskSource::Jmp,
                    _ => TaskSource::Gate,
                };
                let info = vmcs.idt_vectoring_information()?;
                let via_idt = info & VALID != 0;
                let rip = vmcs.guest_rip()?;
                // The saved EIP is the next instruction for CALL/JMP/IRET and for INT n /
                // INT3 / INTO through a task gate (types 4-6); the interrupted or faulting
                // instruction for hardware events.
                let kind = (info >> 8) & 7;
                let next = !via_idt || (4..=6).contains(&kind);
                let eip_after = if next {
                    rip.wrapping_add(u64::from(vmcs.vm_exit_instruction_length()?))
                } else {
                    rip
                };
                let error_code = if via_idt && info & (1 << 11) != 0 {
                    Some(vmcs.idt_vectoring_error_code()?)
                } else {
                    None
                };
                // The event is delivered by the switch itself: it must not be re-injected.
                if via_idt {
                    vmcs.set_vm_entry_interruption_information(0);
                }
                let mut selectors = [0u16; 6];
                // SEGMENTS is CS, SS, DS, ES, FS, GS; a TSS holds ES, CS, SS, DS, FS, GS.
                for (i, from) in TSS_ORDER.into_iter().enumerate() {
                    selectors[i] = vmcs.read(SEGMENTS[from][0])? as u16;
                }
                Ok(TaskSwitch {
                    selector: q as u16,
                    source,
                    old_tr: LoadedSegment {
                        selector: vmcs.guest_tr_selector()?,
                        base: vmcs.guest_tr_base()?,
                        limit: vmcs.guest_tr_limit()?,
                        ar: vmcs.guest_tr_access_rights()?,
                    },
                    gdt_base: vmcs.guest_gdtr_base()?,
                    gdt_limit: vmcs.guest_gdtr_limit()?,
                    eip_after,
                    rflags: vmcs.guest_rflags()?,
                    selectors,
                    gprs: {
                        let mut g = gprs;
                        g[reg::RSP] = vmcs.guest_rsp()?;
                        g
                    },
                    mode: Self::paging(vmcs)?,
                    error_code,
                })
            })??;
        Ok(self.wait_for_memory(MemoryRequest::TaskSwitch(ts)))
    }

    /// The memory part, at passive level: the new task, or why the switch does not happen
    /// (a fault for the guest, or a guest page walk that failed).
    pub(in crate::vcpu::haxm) fn task_switch_memory<M: GuestMemoryAccess + ?Sized>(
        mem: &M,
        ts: &TaskSwitch,
    ) -> Result<NewTask, Failed> {
        Self::switch(mem, ts)
    }

    fn switch<M: GuestMemoryAccess + ?Sized>(mem: &M, ts: &TaskSwitch) -> Result<NewTask, Failed> {
        let m = Mem {
            mem,
            mode: &ts.mode,
        };
        let sel = ts.selector;
        let err = u32::from(sel & 0xfffc);
        // The new TSS descriptor: in the GDT, present, a TSS of the right busy state.
        if sel & 4 != 0 || u32::from(sel | 7) > ts.gdt_limit {
            return Err(Failed::Fault((GP, err)));
        }
        let desc_at = ts.gdt_base.wrapping_add(u64::from(sel & !7));
        let desc = m.read(desc_at, 8)?;
        let (base, limit, ar) = decode(desc);
        let ty = ar & 0xf;
        let want_busy = ts.source == TaskSource::Iret;
        let layout = match ty {
            0x9 | 0xb => &TSS32,
            0x1 | 0x3 => &TSS16,
            _ => return Err(Failed::Fault((GP, err))),
        };
        if ar & (1 << 4) != 0 || (ty & 2 != 0) != want_busy {
            return Err(Failed::Fault((GP, err)));
        }
        if ar & (1 << 7) == 0 {
            return Err(Failed::Fault((NP, err)));
        }
        if limit < layout.min_limit {
            return Err(Failed::Fault((TS, err)));
        }
        // Read the new task before anything is written (a fault leaves the old task intact).
        let w = layout.width;
        let mut gprs = [0u64; 8];
        for (i, g) in gprs.iter_mut().enumerate() {
            *g = m.read(base + layout.gprs + (i * w) as u64, w)?;
        }
        let eip = m.read(base + layout.eip, w)?;
        let mut eflags = m.read(base + layout.eflags, w)? | 2;
        let mut selectors = [0u16; 6];
        for (i, s) in selectors
            .iter_mut()
            .enumerate()
            .take(selector_count(layout))
        {
            *s = m.read(base + layout.selectors + (i * w) as u64, 2)? as u16;
        }
        let ldt_sel = m.read(base + layout.ldt, 2)? as u16;
        let cr3 = match layout.cr3 {
            Some(off) if ts.mode.cr0 & (1 << 31) != 0 => Some(m.read(base + off, 4)?),
            _ => None,
        };
        // Save the old task (SDM §9.3 step 8): EIP, EFLAGS, GPRs, selectors.
        let old = ts.old_tr;
        let old_layout = if old.ar & 0x8 != 0 { &TSS32 } else { &TSS16 };
        let ow = old_layout.width;
        let mut saved_flags = ts.rflags;
        if ts.source == TaskSource::Iret {
            saved_flags &= !RFLAGS_NT;
        }
        m.write(old.base + old_layout.eip, ts.eip_after, ow)?;
        m.write(old.base + old_layout.eflags, saved_flags, ow)?;
        for (i, g) in ts.gprs.iter().enumerate() {
            m.write(old.base + old_layout.gprs + (i * ow) as u64, *g, ow)?;
        }
        for (i, s) in ts
            .selectors
            .iter()
            .enumerate()
            .take(selector_count(old_layout))
        {
            m.write(
                old.base + old_layout.selectors + (i * ow) as u64,
                u64::from(*s),
                2,
            )?;
        }
        // Busy bits (type bit 1 of the access byte, byte 5): the old task stays busy for a
        // CALL or a gate (it is nested), becomes available for JMP and IRET; the new task
        // becomes busy (it already is for IRET).
        let busy_byte = |d: u64| (d >> 40) as u8;
        if matches!(ts.source, TaskSource::Jmp | TaskSource::Iret) {
            let old_at = ts.gdt_base.wrapping_add(u64::from(old.selector & !7));
            let od = m.read(old_at, 8)?;
            m.write(old_at + 5, u64::from(busy_byte(od) & !2), 1)?;
        }
        if ts.source != TaskSource::Iret {
            m.write(desc_at + 5, u64::from(busy_byte(desc) | 2), 1)?;
        }
        // Nesting: CALL and gates link back and set NT.
        if matches!(ts.source, TaskSource::Call | TaskSource::Gate) {
            m.write(base, u64::from(old.selector), 2)?;
            eflags |= RFLAGS_NT;
        }
        // The LDT, then the segments (from the GDT or the new LDT).
        let ldtr = if ldt_sel & 0xfffc == 0 {
            LoadedSegment {
                selector: ldt_sel,
                ar: 1 << 16,
                ..LoadedSegment::default()
            }
        } else {
            let e = u32::from(ldt_sel & 0xfffc);
            if ldt_sel & 4 != 0 || u32::from(ldt_sel | 7) > ts.gdt_limit {
                return Err(Failed::Fault((TS, e)));
            }
            let d = m.read(ts.gdt_base.wrapping_add(u64::from(ldt_sel & !7)), 8)?;
            let (b, l, a) = decode(d);
            if a & 0x1f != 0x2 {
                return Err(Failed::Fault((TS, e)));
            }
            if a & 0x80 == 0 {
                return Err(Failed::Fault((NP, e)));
            }
            LoadedSegment {
                selector: ldt_sel,
                base: b,
                limit: l,
                ar: a,
            }
        };
        let mut segments = [LoadedSegment::default(); 6];
        let vm86 = eflags & RFLAGS_VM != 0;
        for (i, &s) in selectors.iter().enumerate() {
            segments[i] = if vm86 {
                LoadedSegment {
                    selector: s,
                    base: u64::from(s) << 4,
                    limit: 0xffff,
                    ar: 0xf3,
                }
            } else {
                Self::load_segment(&m, ts, &ldtr, i, s)?
            };
        }
        let pae = ts.mode.cr4 & (1 << 5) != 0 && !ts.mode.lma;
        let pdptes = match cr3 {
            Some(c) if pae => {
                let mut p = [0u64; 4];
                for (i, e) in p.iter_mut().enumerate() {
                    let mut b = [0u8; 8];
                    let at = (c & 0xffff_ffe0) + 8 * i as u64;
                    if mem.read(at, &mut b).map_err(WalkError::from)? != Backing::Ram {
                        return Err(Failed::Fault((GP, 0)));
                    }
                    *e = u64::from_le_bytes(b);
                }
                Some(p)
            }
            _ => None,
        };
        // An error code of the event that came through the gate goes on the new stack.
        if let Some(code) = ts.error_code {
            let ss = segments[2];
            let sp = gprs[reg::RSP].wrapping_sub(w as u64) & 0xffff_ffff;
            let new_mode = PagingMode {
                cr3: cr3.unwrap_or(ts.mode.cr3),
                ..ts.mode
            };
            let nm = Mem {
                mem,
                mode: &new_mode,
            };
            nm.write(ss.base.wrapping_add(sp), u64::from(code), w)?;
            gprs[reg::RSP] = sp;
        }
        Ok(NewTask {
            tr: LoadedSegment {
                selector: sel,
                base,
                limit,
                ar: (ar & !0xf) | layout.busy,
            },
            ldtr,
            segments,
            gprs,
            eip: eip & if w == 2 { 0xffff } else { 0xffff_ffff },
            eflags,
            cr3,
            pdptes,
        })
    }

    /// Loads segment register `i` (ES, CS, SS, DS, FS, GS) from selector `s` (SDM §9.3 step
    /// 11: faults here are #TS with the selector, #NP for a segment not present).
    fn load_segment<M: GuestMemoryAccess + ?Sized>(
        m: &Mem<'_, M>,
        ts: &TaskSwitch,
        ldtr: &LoadedSegment,
        i: usize,
        s: u16,
    ) -> Result<LoadedSegment, Failed> {
        let e = u32::from(s & 0xfffc);
        let (cs, ss) = (i == 1, i == 2);
        if s & 0xfffc == 0 {
            if cs || ss {
                return Err(Failed::Fault((TS, e)));
            }
            return Ok(LoadedSegment {
                selector: s,
                ar: 1 << 16,
                ..LoadedSegment::default()
            });
        }
        let (table, limit) = if s & 4 != 0 {
            if ldtr.ar & (1 << 16) != 0 {
                return Err(Failed::Fault((TS, e)));
            }
            (ldtr.base, ldtr.limit)
        } else {
            (ts.gdt_base, ts.gdt_limit)
        };
        if u32::from(s | 7) > limit {
            return Err(Failed::Fault((TS, e)));
        }
        let d = m.read(table.wrapping_add(u64::from(s & !7)), 8)?;
        let (base, lim, ar) = decode(d);
        let code = ar & 0x8 != 0;
        let writable = ar & 0x2 != 0;
        // Code/data only; CS a code segment; SS a writable data segment.
        if ar & 0x10 == 0 || (cs && !code) || (ss && (code || !writable)) {
            return Err(Failed::Fault((TS, e)));
        }
        if ar & 0x80 == 0 {
            return Err(Failed::Fault((if ss { 12 } else { NP }, e)));
        }
        Ok(LoadedSegment {
            selector: s,
            base,
            limit: lim,
            // VM entry requires the accessed bit of a usable code/data segment.
            ar: ar | 1,
        })
    }

    /// The next step: the new task goes into the VMCS and the registers.
    pub(in crate::vcpu::haxm) fn apply_task<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        t: &NewTask,
    ) -> Result<(), HaxError> {
        let t = *t;
        for (i, g) in t.gprs.iter().enumerate() {
            if i != reg::RSP {
                self.core.regs.gpr[i] = *g;
            }
        }
        self.core
            .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                let put =
                    |vmcs: &mut Vmcs<'_, Counted<'_, V>>, f: &[VmcsField; 4], s: &LoadedSegment| {
                        vmcs.write(f[0], u64::from(s.selector));
                        vmcs.write(f[1], s.base);
                        vmcs.write(f[2], u64::from(s.limit));
                        vmcs.write(f[3], u64::from(s.ar));
                    };
                // A TSS's order ES, CS, SS, DS, FS, GS into SEGMENTS' CS, SS, DS, ES, FS, GS.
                for (s, from) in t.segments.iter().zip(TSS_ORDER) {
                    put(vmcs, &SEGMENTS[from], s);
                }
                put(vmcs, &SEGMENTS[6], &t.ldtr);
                put(vmcs, &SEGMENTS[7], &t.tr);
                vmcs.set_guest_rsp(t.gprs[reg::RSP]);
                vmcs.set_guest_rip(t.eip);
                vmcs.set_guest_rflags(t.eflags);
                if let Some(c) = t.cr3 {
                    vmcs.set_guest_cr3(c);
                }
                if let Some(p) = t.pdptes {
                    vmcs.set_guest_pdpte0(p[0]);
                    vmcs.set_guest_pdpte1(p[1]);
                    vmcs.set_guest_pdpte2(p[2]);
                    vmcs.set_guest_pdpte3(p[3]);
                }
                // CR0.TS is set by every task switch (SDM §9.3 step 12).
                let shadow = vmcs.cr0_read_shadow()?;
                vmcs.set_cr0_read_shadow(shadow | CR0_TS);
                let cr0 = vmcs.guest_cr0()?;
                vmcs.set_guest_cr0(cr0 | CR0_TS);
                // The old task's interrupt shadow does not survive the switch.
                let s = vmcs.guest_interruptibility_state()?;
                vmcs.set_guest_interruptibility_state(s & !3);
                Ok(())
            })??;
        // The local breakpoint enables L0-L3 of the guest's DR7 are cleared (SDM §18.2.4);
        // a debugger's DR7 is not the guest's and stays.
        let dr7 = self.guest_dr7(root)?;
        self.set_guest_dr7(root, dr7 & !0x55)?;
        Ok(())
    }
}
