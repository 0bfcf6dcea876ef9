//! `bench-apic`: what the in-kernel local APIC (issue 12) and its fast paths save, per APIC
//! operation, against the same operation with the fast path off and against the HAXM way
//! (no in-kernel APIC: the access leaves for user space, which emulates it and injects the
//! interrupt with HAX_VCPU_IOCTL_INTERRUPT, as QEMU's user-space APIC does under HAXM).
//!
//! Method (as `bench_table.rs`): a 64-bit guest loops `N` times over a body between two
//! RDTSCs; inside Bochs the TSC advances once per emulated instruction, so the delta counts
//! guest plus hypervisor (and, for user-space rows, harness) instructions. A `nop` loop must
//! measure exactly its own 3 instructions per iteration; every row's own guest instructions
//! (body, `dec`, `jnz`, the interrupt handler) are subtracted. Exits come from the vCPU's
//! counters (RHAX_VCPU_IOCTL_GET_STATS), reset by the user side at an `out 0xF0` just before
//! the first RDTSC and read at an `out 0xF1` just after the second, so only the loop's exits
//! count (the `out 0xF1` itself is taken off).
//!
//! Line format: `bench-apic: op=O variant=V iters=N ticks=T guest=G delay=D inst/op=I
//! exits/1000=E user/1000=U wrmsr=.. apic-access=.. ept=.. cr=.. window=.. hlt=.. timer=..
//! extint=.. vmread/exit=.. vmwrite/exit=..`
//! (`inst/op` = T/N − G − D; `delay`: the TSC-deadline distance a row waits by design;
//! the per-reason figures are exits per 1,000 iterations).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rhax::api::ext::{ApicFlags, VcpuStats};
use rhax::api::{MmioDirection, SegmentDesc, VcpuState, VmxMsr};
use rhax::System;

use crate::arch::rdtsc;
use crate::haxm::{
    e, flat, qemu_init, qemu_msrs, qemu_reset_state, qemu_set, step, write_gdt, Ev, Ram, R, V,
};
use crate::hv::{KernelTransport, Shell};
use crate::scenarios::Ctx;
use crate::{bench_apic_remote, println, smp};

/// The xAPIC page (SDM Vol. 3A §11.4.1), identity-mapped by the guest's page tables.
pub(crate) const APIC: u64 = 0xFEE0_0000;
/// Guest RAM: the TSC delta the loop stores.
pub(crate) const RESULT: u64 = 0x2000;
/// Interrupts the row's handler took.
const HANDLED: u64 = 0x2200;
/// IPIs the receiving vCPU handled (remote-IPI row).
pub(crate) const REMOTE_COUNT: u64 = 0x2100;
/// Code of the measured loop, of the receiver, the handlers, the IDT.
pub(crate) const CODE: u64 = 0x1000;
pub(crate) const RECEIVER: u64 = 0x6000;
const HANDLER: u64 = 0x3000;
const IDT: u64 = 0x4000;
/// Vectors: self-IPI, remote IPI, TSC-deadline timer (all go to the row's handler).
const V_SELF: u8 = 0x40;
pub(crate) const V_REMOTE: u8 = 0x41;
const V_TIMER: u8 = 0x42;
/// Ports the loop marks its start and end with.
const PORT_START: u16 = 0xF0;
const PORT_END: u16 = 0xF1;
/// TSC ticks a "deadline ahead" row arms its timer for.
const DELAY: u32 = 4000;

// The guest's building blocks (64-bit mode; RBX holds the xAPIC base throughout).
/// mov ebx, 0xFEE00000
pub(crate) const MOV_EBX_APIC: &[u8] = &[0xBB, 0x00, 0x00, 0xE0, 0xFE];
/// IA32_APIC_BASE |= EN | EXTD: x2APIC mode (SDM Vol. 3A §11.12.1).
pub(crate) const X2_ENABLE: &[u8] = &[
    0xB9, 0x1B, 0x00, 0x00, 0x00, // mov ecx, 0x1B
    0x0F, 0x32, // rdmsr
    0x0D, 0x00, 0x0C, 0x00, 0x00, // or eax, 0xC00
    0x0F, 0x30, // wrmsr
];
/// x2APIC SVR = 0x1FF: software-enabled (SDM Vol. 3A §11.4.7.1), spurious vector 0xFF.
pub(crate) const X2_SVR: &[u8] = &[
    0xB9, 0x0F, 0x08, 0x00, 0x00, // mov ecx, 0x80F
    0xB8, 0xFF, 0x01, 0x00, 0x00, // mov eax, 0x1FF
    0x31, 0xD2, // xor edx, edx
    0x0F, 0x30, // wrmsr
];
/// mov dword [rbx + 0xF0], 0x1FF: the xAPIC SVR, software-enabled.
pub(crate) const XAPIC_SVR: &[u8] = &[0xC7, 0x83, 0xF0, 0x00, 0x00, 0x00, 0xFF, 0x01, 0x00, 0x00];
/// mov dword [rbx + 0x320], 0x40042: LVT timer in TSC-deadline mode (bits 18:17 = 10,
/// SDM Vol. 3A §11.5.4.1), vector 0x42.
const XAPIC_LVT_DEADLINE: &[u8] = &[0xC7, 0x83, 0x20, 0x03, 0x00, 0x00, V_TIMER, 0x00, 0x04, 0x00];
/// mov ecx, IA32_TSC_DEADLINE
const ECX_DEADLINE: &[u8] = &[0xB9, 0xE0, 0x06, 0x00, 0x00];
pub(crate) const STI: &[u8] = &[0xFB];

/// The interrupt handlers: count (`inc dword [HANDLED]`), EOI, `iretq`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handler {
    /// No interrupt expected.
    None,
    /// mov dword [rbx + 0xB0], 0; iretq (3 instructions with the count).
    XApic,
    /// mov ecx, 0x80B; xor eax, eax; xor edx, edx; wrmsr; iretq (6 with the count).
    X2Apic,
}

impl Handler {
    fn code(self) -> Vec<u8> {
        let mut c: Vec<u8> = [0xFF, 0x04, 0x25].into(); // inc dword [HANDLED]
        c.extend((HANDLED as u32).to_le_bytes());
        match self {
            Handler::None => c.extend([0xF4]), // hlt: never reached
            Handler::XApic => {
                c.extend([0xC7, 0x83, 0xB0, 0x00, 0x00, 0x00, 0, 0, 0, 0]);
            }
            Handler::X2Apic => {
                c.extend([0xB9, 0x0B, 0x08, 0x00, 0x00]); // mov ecx, 0x80B (EOI)
                c.extend([0x31, 0xC0, 0x31, 0xD2, 0x0F, 0x30]); // xor eax; xor edx; wrmsr
            }
        }
        c.extend([0x48, 0xCF]); // iretq
        c
    }
}

/// One measured loop.
struct Row {
    op: &'static str,
    variant: &'static str,
    /// `None`: the HAXM way, no in-kernel APIC; the user side emulates the APIC accesses.
    apic: Option<ApicFlags>,
    prologue: Vec<u8>,
    /// Register setup right before the loop (see [`loop64`]).
    regs: Vec<u8>,
    body: Vec<u8>,
    /// Guest instructions per iteration (body, handler, `dec`, `jnz`).
    guest: u32,
    handler: Handler,
    /// TSC ticks the row waits for its deadline by design (subtracted).
    delay: u32,
}

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn row(
    op: &'static str,
    variant: &'static str,
    apic: Option<ApicFlags>,
    prologue: Vec<u8>,
    body: Vec<u8>,
    guest: u32,
    handler: Handler,
) -> Row {
    Row {
        op,
        variant,
        apic,
        prologue,
        regs: [0x31, 0xC9, 0x31, 0xD2].into(), // xor ecx, ecx; xor edx, edx
        body,
        guest,
        handler,
        delay: 0,
    }
}

/// Every single-vCPU row, in table order.
fn rows() -> Vec<Row> {
    let on = ApicFlags::ENABLE;
    let xapic = cat(&[MOV_EBX_APIC, XAPIC_SVR]);
    let x2 = cat(&[MOV_EBX_APIC, X2_ENABLE, X2_SVR]);
    let mut v = Vec::new();
    // The calibration: no exit, exactly 3 instructions per iteration.
    v.push(row("calibrate", "nop", None, Vec::new(), [0x90].into(), 3, Handler::None));
    // MOV CR8, RCX (RCX = 0): with the TPR shadow no exit (SDM Vol. 3C §30.1.2); without,
    // a CR-access exit into the model; under HAXM an exit whose write is dropped.
    let cr8: Vec<u8> = [0x44, 0x0F, 0x22, 0xC1].into(); // mov cr8, rcx
    let tpr_pro = xapic.clone();
    for (variant, apic) in [
        ("tpr-shadow", Some(on)),
        ("NO_TPR_SHADOW", Some(on | ApicFlags::NO_TPR_SHADOW)),
        ("haxm-no-apic", None),
    ] {
        v.push(row("cr8-write", variant, apic, tpr_pro.clone(), cr8.clone(), 3, Handler::None));
    }
    // mov [rbx + 0x80], ecx (0): the xAPIC TPR, virtualized through the APIC-access page (SDM
    // Vol. 3C §30.4.3.1) or an EPT-violation exit into the MOV decoder; the user-space
    // APIC's MMIO exit under HAXM.
    let tpr: Vec<u8> = [0x89, 0x8B, 0x80, 0x00, 0x00, 0x00].into(); // mov [rbx + 0x80], ecx
    for (variant, apic) in [
        ("apic-access-page", Some(on)),
        ("NO_APIC_ACCESS_PAGE", Some(on | ApicFlags::NO_APIC_ACCESS_PAGE)),
        ("user-space", None),
    ] {
        v.push(row("xapic-tpr-write", variant, apic, tpr_pro.clone(), tpr.clone(), 3, Handler::None));
    }
    // xAPIC self-IPI (ICR shorthand "self", vector 0x40) and the handler's EOI: with
    // virtual-interrupt delivery the CPU virtualizes the EOI write (SDM Vol. 3C §30.1.4).
    let xself: Vec<u8> = [0xC7, 0x83, 0x00, 0x03, 0x00, 0x00, V_SELF, 0x00, 0x04, 0x00].into();
    let xself_pro = cat(&[&xapic, STI]);
    for (variant, apic) in [
        ("all-on", Some(on)),
        ("NO_APIC_VIRTUALIZATION", Some(on | ApicFlags::NO_APIC_VIRTUALIZATION)),
        ("NO_FAST_PATHS", Some(on | ApicFlags::NO_FAST_PATHS)),
        ("user-space", None),
    ] {
        v.push(row("xapic-self-ipi+eoi", variant, apic, xself_pro.clone(), xself.clone(), 6, Handler::XApic));
    }
    // x2APIC SELF IPI (MSR 0x83F) and ICR (0x830, shorthand self), EOI by MSR 0x80B.
    let x2_pro = cat(&[&x2, STI]);
    let selfipi: Vec<u8> = cat(&[
        &[0xB9, 0x3F, 0x08, 0x00, 0x00], // mov ecx, 0x83F
        &[0xB8, V_SELF, 0x00, 0x00, 0x00], // mov eax, 0x40
        &[0x0F, 0x30],                   // wrmsr (EDX = 0 from the handler)
    ]);
    let icr: Vec<u8> = cat(&[
        &[0xB9, 0x30, 0x08, 0x00, 0x00], // mov ecx, 0x830
        &[0xB8, V_SELF, 0x00, 0x04, 0x00], // mov eax, 0x40040 (fixed, shorthand self)
        &[0x0F, 0x30],                   // wrmsr
    ]);
    for (op, body) in [("x2apic-self-ipi-msr+eoi", &selfipi), ("x2apic-icr-self+eoi", &icr)] {
        for (variant, apic) in [
            ("all-on", Some(on)),
            ("NO_FAST_PATHS", Some(on | ApicFlags::NO_FAST_PATHS)),
            ("NO_APIC_VIRTUALIZATION", Some(on | ApicFlags::NO_APIC_VIRTUALIZATION)),
        ] {
            v.push(row(op, variant, apic, x2_pro.clone(), body.clone(), 11, Handler::X2Apic));
        }
    }
    // TSC deadline, already expired when written (rdtsc; wrmsr): arm and fire at once.
    let tsc_pro = cat(&[&xapic, XAPIC_LVT_DEADLINE, STI]);
    let expired: Vec<u8> = [0x0F, 0x31, 0x0F, 0x30].into();
    // TSC deadline DELAY ticks ahead, then `sti; hlt` (race-free: the STI shadow).
    let ahead = |store: &[u8], wide: bool| -> Vec<u8> {
        let mut b: Vec<u8> = [0xFA, 0x0F, 0x31].into(); // cli; rdtsc
        if wide {
            b.extend([0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0]); // shl rdx, 32; or rax, rdx
            b.extend([0x48, 0x05]); // add rax, DELAY
        } else {
            b.extend([0x05]); // add eax, DELAY
        }
        b.extend(DELAY.to_le_bytes());
        if !wide {
            b.extend([0x83, 0xD2, 0x00]); // adc edx, 0
        }
        b.extend(store);
        b.extend([0xFB, 0xF4]); // sti; hlt
        b
    };
    for (variant, apic) in [
        ("all-on", Some(on)),
        ("NO_FAST_PATHS", Some(on | ApicFlags::NO_FAST_PATHS)),
        ("NO_PREEMPTION_TIMER", Some(on | ApicFlags::NO_PREEMPTION_TIMER)),
    ] {
        let mut r = row("tsc-deadline-expired", variant, apic, tsc_pro.clone(), expired.clone(), 7, Handler::XApic);
        r.regs = ECX_DEADLINE.into();
        v.push(r);
        let mut r = row("tsc-deadline-ahead", variant, apic, tsc_pro.clone(), ahead(&[0x0F, 0x30], false), 12, Handler::XApic);
        r.regs = ECX_DEADLINE.into();
        r.delay = DELAY;
        v.push(r);
    }
    // TSC deadline DELAY ticks ahead while the guest spins (no HLT): the expiry must cut into
    // the running guest, which the VMX-preemption timer does (SDM Vol. 3C §26.5.1); without
    // it the timer is seen at the next exit for another reason. mov r8d, [HANDLED]; rdtsc;
    // add eax, DELAY; adc edx, 0; wrmsr; spin: cmp [HANDLED], r8d; je spin.
    let mut spin: Vec<u8> = [0x44, 0x8B, 0x04, 0x25].into();
    spin.extend((HANDLED as u32).to_le_bytes());
    spin.extend([0x0F, 0x31, 0x05]);
    spin.extend(DELAY.to_le_bytes());
    spin.extend([0x83, 0xD2, 0x00, 0x0F, 0x30, 0x44, 0x39, 0x04, 0x25]);
    spin.extend((HANDLED as u32).to_le_bytes());
    spin.extend([0x74, 0xF6]);
    for (variant, apic) in [
        ("all-on", Some(on)),
        ("NO_FAST_PATHS", Some(on | ApicFlags::NO_FAST_PATHS)),
        ("NO_PREEMPTION_TIMER", Some(on | ApicFlags::NO_PREEMPTION_TIMER)),
    ] {
        // Guest: the five before the spin, its last cmp/je, the handler, dec, jnz (the
        // spin's other rounds are the wait, inside DELAY).
        let mut r = row("tsc-deadline-spin", variant, apic, tsc_pro.clone(), spin.clone(), 12, Handler::XApic);
        r.regs = ECX_DEADLINE.into();
        r.delay = DELAY;
        v.push(r);
    }
    // The user-space timer: the deadline written by MMIO to offset 0x380 (the user side
    // arms its timer there), mov [rbx + 0x380], rax.
    let mmio_deadline: &[u8] = &[0x48, 0x89, 0x83, 0x80, 0x03, 0x00, 0x00];
    let user_pro = cat(&[&xapic, STI]);
    let mut b: Vec<u8> = [0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0].into();
    b.extend(mmio_deadline);
    v.push(row("tsc-deadline-expired", "user-space", None, user_pro.clone(), b, 9, Handler::XApic));
    let mut r = row("tsc-deadline-ahead", "user-space", None, user_pro, ahead(mmio_deadline, true), 13, Handler::XApic);
    r.delay = DELAY;
    v.push(r);
    v
}

/// The loop: `prologue`, the start mark, `n` × `body` between RDTSCs, the end mark.
/// `regs` (after the first RDTSC, which overwrites EAX and EDX: a few instructions once,
/// under 0.01 per iteration) sets the registers the body needs.
pub(crate) fn loop64(n: u32, prologue: &[u8], regs: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::from(prologue);
    v.push(0xBF); // mov edi, n
    v.extend(n.to_le_bytes());
    v.extend([0xE6, PORT_START as u8]); // out 0xF0, al
    v.extend([0x0F, 0x31, 0x89, 0xC6]); // rdtsc; mov esi, eax
    v.extend(regs);
    let top = v.len();
    v.extend(body);
    v.extend([0xFF, 0xCF]); // dec edi
    let rel = top as i32 - (v.len() as i32 + 2);
    v.extend([0x75, rel as i8 as u8]); // jnz top
    v.extend([0x0F, 0x31, 0x29, 0xF0]); // rdtsc; sub eax, esi
    v.extend([0x89, 0x04, 0x25]); // mov [RESULT], eax
    v.extend((RESULT as u32).to_le_bytes());
    v.extend([0xE6, PORT_END as u8]); // out 0xF1, al
    v.extend([0xFA, 0xF4]); // cli; hlt
    v
}

/// Guest RAM with GDT, IDT (every vector this bench uses → `handler`), page tables (the first
/// 2 MiB and the xAPIC's 2 MiB identity-mapped, the latter uncached) and the loop.
pub(crate) fn guest_ram(code: &[u8], handler: Handler) -> R<Ram> {
    let ram = Ram::zeroed(0x2_0000)?;
    ram.write(CODE, code);
    write_gdt(&ram, 0x00AF_9B00_0000_FFFF);
    ram.write(HANDLER, &handler.code());
    for vector in [V_SELF, V_REMOTE, V_TIMER] {
        // A 64-bit interrupt gate (SDM Vol. 3A §6.14.1): offset, selector 0x08, type 0x8E.
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(HANDLER as u16).to_le_bytes());
        gate[2] = 0x08;
        gate[5] = 0x8E;
        gate[6..8].copy_from_slice(&((HANDLER >> 16) as u16).to_le_bytes());
        ram.write(IDT + 16 * u64::from(vector), &gate);
    }
    ram.write(0x10000, &(0x11000u64 | 3).to_le_bytes());
    ram.write(0x11000, &(0x12000u64 | 3).to_le_bytes());
    ram.write(0x11018, &(0x13000u64 | 3).to_le_bytes());
    ram.write(0x12000, &0x83u64.to_le_bytes());
    // P | RW | PWT | PCD | PS at 0xFEE00000 (PD index 503 of the 3-4 GiB table).
    ram.write(0x13000 + 8 * 503, &(APIC | 0x9B).to_le_bytes());
    Ok(ram)
}

/// Long mode with the IDT, at `rip` with stack `rsp`.
pub(crate) fn long_mode(v: &V<'_>, rip: u64, rsp: u64) -> R<()> {
    let mut s: VcpuState = qemu_reset_state();
    flat(&mut s, 0xA09B);
    s.cr0 = 0x8000_0011; // PG | ET | PE
    s.cr4 = 0x20; // PAE
    s.cr3 = 0x10000;
    s.idt = SegmentDesc::new(0, IDT, 0xfff, 0);
    s.rip = rip;
    s.regs[4] = rsp;
    let mut msrs = qemu_msrs();
    for m in &mut msrs {
        if m.entry == 0xC000_0080 {
            m.value = 0x500; // LME | LMA
        }
    }
    qemu_set(v, &s, &msrs)
}

/// CPUID leaf 1 ECX shows x2APIC (bit 21) and TSC-deadline (bit 24), as QEMU sets them
/// for a guest of a VM with the in-kernel APIC.
pub(crate) fn show_apic_features(v: &V<'_>) -> R<()> {
    let table = v.get_cpuid().map_err(e("GET_CPUID"))?;
    let mut entries = Vec::from(table.entries());
    let leaf1 = entries
        .iter_mut()
        .find(|x| x.function == 1)
        .ok_or("no CPUID leaf 1")?;
    leaf1.ecx |= (1 << 21) | (1 << 24);
    v.set_cpuid(&entries).map_err(e("SET_CPUID"))
}

/// How the user side hands a fixed IPI to another vCPU's thread: `(destination APIC ID,
/// vector)` (QEMU: apic_deliver sets the target's IRR and kicks its vCPU thread).
pub(crate) type SendIpi<'a> = &'a dyn Fn(u8, u8) -> R<()>;

/// What the user-space APIC of the HAXM-way rows holds: a timer armed at a host TSC, the
/// ICR's destination (ICR high bits 31:24, SDM Vol. 3A §11.6.1), and where IPIs for other
/// vCPUs go (the remote-IPI row; `None`: a single-vCPU row).
struct UserApic<'a> {
    timer_at: Option<u64>,
    icr_dest: u8,
    remote: Option<SendIpi<'a>>,
}

impl UserApic<'_> {
    /// An MMIO write to the APIC page (the HAXM way: no in-kernel APIC).
    fn write(&mut self, v: &V<'_>, offset: u64, value: u64) -> R<()> {
        match offset {
            // ICR high: only the destination field (bits 31:24) is defined.
            0x310 => self.icr_dest = (value >> 24) as u8,
            // ICR low (SDM Vol. 3A §11.6.1): shorthand "self" (bits 19:18 = 01), or no
            // shorthand to APIC ID 0 (this vCPU): injected at once (QEMU: apic_deliver +
            // hax_vcpu_interrupt). Fixed (bits 10:8 = 0) to another ID: that vCPU's thread.
            0x300 => match ((value >> 18) & 3, self.icr_dest, self.remote) {
                (1, _, _) | (0, 0, _) => v.interrupt(value as u8).map_err(e("INTERRUPT"))?,
                (0, dest, Some(send)) if value & 0x700 == 0 => send(dest, value as u8)?,
                _ => {}
            },
            // The deadline: armed against the guest's TSC now.
            0x380 => {
                let mut m = [VmxMsr {
                    entry: 0x10,
                    value: 0,
                }];
                v.get_msrs(&mut m).map_err(e("GET_MSRS TSC"))?;
                let left = value.saturating_sub(m[0].value);
                if left == 0 {
                    v.interrupt(V_TIMER).map_err(e("INTERRUPT"))?;
                } else {
                    self.timer_at = Some(rdtsc() + left);
                }
            }
            // TPR, EOI, SVR, LVT: register writes with nothing to deliver.
            _ => {}
        }
        Ok(())
    }

    /// The vCPU halted: a host timer would wake the vCPU thread at the deadline.
    fn halted(&mut self, v: &V<'_>) -> R<()> {
        if let Some(at) = self.timer_at.take() {
            while rdtsc() < at {
                core::hint::spin_loop();
            }
            v.interrupt(V_TIMER).map_err(e("INTERRUPT"))?;
        }
        Ok(())
    }
}

/// Runs vCPU `v` until the loop's end mark; the stats of the loop alone.
pub(crate) fn drive(v: &mut V<'_>, user: bool, what: &str) -> R<VcpuStats> {
    drive_with(v, user, what, None)
}

/// [`drive`], with the user-space APIC sending IPIs for other vCPUs through `remote`.
pub(crate) fn drive_with(
    v: &mut V<'_>,
    user: bool,
    what: &str,
    remote: Option<SendIpi<'_>>,
) -> R<VcpuStats> {
    let mut apic = UserApic {
        timer_at: None,
        icr_dest: 0,
        remote,
    };
    for _ in 0..1_000_000u32 {
        match step(v, 0)? {
            Ev::Io { port, .. } if port == PORT_START => v.reset_stats().map_err(e("reset"))?,
            Ev::Io { port, .. } if port == PORT_END => {
                return v.stats().map_err(e("GET_STATS"));
            }
            Ev::Mmio {
                gpa,
                dir: MmioDirection::Write,
                value,
                ..
            } if user && gpa & !0xfff == APIC => apic.write(v, gpa & 0xfff, value)?,
            // In-kernel rows: a halt the kernel stopped polling, or a host interrupt.
            Ev::Hlt if user => apic.halted(v)?,
            Ev::Hlt | Ev::Interrupt => {}
            other => return Err(format!("{what}: unexpected exit {other:?}")),
        }
    }
    Err(format!("{what}: the loop did not end"))
}

/// The counters of `s` minus the end mark's OUT, per 1,000 iterations.
pub(crate) fn report(op: &str, variant: &str, n: u32, ticks: u64, guest: u32, delay: u32, s: &VcpuStats) -> String {
    let per = |x: u64| x as f64 * 1000.0 / f64::from(n);
    let r = |reason: u32| per(s.reason(reason).map_or(0, |c| c.exits));
    let exits = s.total.exits.saturating_sub(1);
    let user = s.user_exits.saturating_sub(1);
    // The exits' own VMX accesses (not the IOCTLs' around the loop; the end mark's OUT is in,
    // a few per 1,000 exits), 0 for a loop without exits.
    let vmx = |all: u64, outside: u64| {
        if exits == 0 {
            0.0
        } else {
            all.saturating_sub(outside) as f64 / exits as f64
        }
    };
    let inst = ticks as f64 / f64::from(n) - f64::from(guest) - f64::from(delay);
    let line = format!(
        "op={op} variant={variant} iters={n} ticks={ticks} guest={guest} delay={delay} \
         inst/op={inst:.1} exits/1000={:.1} user/1000={:.1} wrmsr={:.1} apic-access={:.1} \
         ept={:.1} cr={:.1} window={:.1} hlt={:.1} timer={:.1} extint={:.1} \
         vmread/exit={:.1} vmwrite/exit={:.1}",
        per(exits),
        per(user),
        r(32),
        r(44),
        r(48),
        r(28),
        r(7),
        r(12),
        r(52),
        r(1),
        vmx(s.total.vmreads, s.outside_exits.vmreads),
        vmx(s.total.vmwrites, s.outside_exits.vmwrites),
    );
    println!("bench-apic: {line}");
    line
}

/// A VM over `ram` (at GPA 0), with the in-kernel APIC when `apic` says so.
pub(crate) fn vm_with<'a>(
    shell: &'a Shell,
    ram: &Ram,
    apic: Option<ApicFlags>,
) -> R<(System<KernelTransport<'a>>, rhax::Vm<KernelTransport<'a>>)> {
    let sys = System::open(shell.transport()).map_err(e("open"))?;
    let vm = qemu_init(&sys)?;
    // SAFETY: `ram` is kernel pages that outlive the VM (the callers declare it first).
    unsafe { vm.add_ramblock(ram.addr, ram.len()) }.map_err(e("ADD_RAMBLOCK"))?;
    vm.set_ram(0, ram.len() as u32, ram.addr, rhax::api::RamFlags::empty())
        .map_err(e("SET_RAM"))?;
    if let Some(flags) = apic {
        vm.enable_apic(flags).map_err(e("ENABLE_APIC"))?;
    }
    Ok((sys, vm))
}

fn run_row(r: &Row, n: u32) -> R<String> {
    let ram = guest_ram(&loop64(n, &r.prologue, &r.regs, &r.body), r.handler)?;
    let shell = Shell::new()?;
    let (_sys, vm) = vm_with(&shell, &ram, r.apic)?;
    let mut v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
    long_mode(&v, CODE, 0x8000)?;
    if r.apic.is_some() {
        show_apic_features(&v)?;
    }
    let what = format!("{} {}", r.op, r.variant);
    let s = drive(&mut v, r.apic.is_none(), &what)?;
    let ticks = u64::from(ram.u32(RESULT));
    // Every iteration's interrupt was taken (one each: the loop waits for it, or it is
    // delivered at the next instruction boundary with IF = 1).
    let handled = ram.u32(HANDLED);
    let want = if r.handler == Handler::None { 0 } else { n };
    if handled != want {
        return Err(format!("{what}: {handled} interrupts handled, expected {want}"));
    }
    Ok(report(r.op, r.variant, n, ticks, r.guest, r.delay, &s))
}

/// `bench-apic` (`iters=N` on the command line, default 1000; `only=OP` runs the rows of
/// one operation, e.g. for a trace); the IPI between vCPUs (in-kernel rows and the
/// `user-space` baseline, `bench_apic_remote.rs`) needs a second CPU (`--cpus 2`) and is
/// skipped without one.
pub fn bench_apic(ctx: &Ctx) -> R<String> {
    let n = ctx
        .arg("iters")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000u32);
    let only = ctx.arg("only");
    let mut count = 0;
    for r in rows().into_iter().filter(|r| only.is_none_or(|o| o == r.op)) {
        let line = run_row(&r, n)?;
        count += 1;
        if r.op == "calibrate" && !line.contains("inst/op=0.0 ") {
            return Err(format!("calibration: {line}"));
        }
    }
    if only.is_some_and(|o| o != "x2apic-ipi-other-vcpu") {
        // One operation asked for, and not this one.
    } else if smp::cpu_count() >= 2 {
        for (flags, variant) in [
            (ApicFlags::ENABLE, "all-on"),
            (ApicFlags::ENABLE | ApicFlags::NO_FAST_PATHS, "NO_FAST_PATHS"),
        ] {
            bench_apic_remote::remote_ipi(flags, variant, n)?;
            count += 1;
        }
        bench_apic_remote::remote_ipi_user(n)?;
        count += 1;
    } else {
        println!("bench-apic: one CPU: the IPI to another vCPU needs --cpus 2");
    }
    Ok(format!("{count} rows (see bench-apic: lines)"))
}
