//! `bench-apic`'s rows for a fixed IPI to ANOTHER vCPU (`op=x2apic-ipi-other-vcpu`): vCPU 0
//! (long mode, CPU 0) sends `n` IPIs to vCPU 1 (real mode, CPU 1, halted with IF = 1; its
//! handler counts and EOIs). The figure is the SENDER's cost per IPI, as for the other rows
//! (see `bench_apic.rs` for the method and the line format); the receiver gets its own line.
//!
//! * `all-on`, `NO_FAST_PATHS`: the in-kernel APIC; the guest uses the x2APIC ICR (WRMSR
//!   0x830) and starts vCPU 1 itself by INIT/SIPI.
//! * `user-space`: the HAXM + QEMU way, no in-kernel APIC. HAXM does not forward x2APIC MSR
//!   accesses to user space, so a QEMU guest on HAXM uses the xAPIC: the row keeps the op name
//!   for the table but writes the xAPIC ICR by MMIO (ICR high once, destination APIC ID 1;
//!   the loop writes ICR low, fixed vector 0x41, physical). Each write is a FAST_MMIO exit to
//!   the harness (the VMM), which hands the vector to vCPU 1's thread and kicks it out of RUN
//!   when it is in one (QEMU: apic_deliver, cpu_interrupt, the vCPU kick); vCPU 1's thread
//!   injects it with HAX_VCPU_IOCTL_INTERRUPT on its own handle (HAXM serves INTERRUPT only
//!   between RUNs: the vCPU is busy during one), as QEMU's hax_vcpu_interrupt does before each
//!   RUN. vCPU 1's state is set by the harness (real mode at its halt loop): user-space SIPI
//!   emulation is not what is measured.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use rhax::api::ext::ApicFlags;
use rhax::api::{MmioDirection, SegmentDesc};
use rhax_core::platform::Platform;

use crate::bench_apic::{
    cat, drive, drive_with, guest_ram, long_mode, loop64, report, show_apic_features, vm_with,
    Handler, APIC, CODE, MOV_EBX_APIC, RECEIVER, REMOTE_COUNT, RESULT, STI, V_REMOTE, X2_ENABLE,
    X2_SVR, XAPIC_SVR,
};
use crate::haxm::{e, qemu_msrs, qemu_reset_state, qemu_set, real_mode_at, step, Ev, Ram, R, V};
use crate::hv::Shell;
use crate::platform::Metal;
use crate::{println, smp};

const OP: &str = "x2apic-ipi-other-vcpu";
/// The receiver's real-mode handler (IVT slot 0x41 → 0000:3200).
const RECV_HANDLER: u16 = 0x3200;

static REMOTE_DONE: AtomicBool = AtomicBool::new(false);

/// The receiver's real-mode IVT entry for [`V_REMOTE`] and its handler: `lock inc dword
/// [REMOTE_COUNT]`, the EOI `eoi`, `iret`.
fn write_receiver_handler(ram: &Ram, eoi: &[u8]) {
    let mut h: Vec<u8> = [0xF0, 0x66, 0xFF, 0x06].into();
    h.extend((REMOTE_COUNT as u16).to_le_bytes());
    h.extend(eoi);
    h.push(0xCF); // iret
    ram.write(u64::from(RECV_HANDLER), &h);
    let rh = RECV_HANDLER;
    ram.write(4 * u64::from(V_REMOTE), &[rh as u8, (rh >> 8) as u8, 0, 0]);
}

/// Runs `sender` on CPU 0 and `receiver` on CPU 1 (each creates its vCPU), then checks the
/// receiver's count: IPIs sent while one is pending coalesce in the IRR (SDM Vol. 3A
/// §11.8.4), so at least one must have arrived, and never more than were sent.
fn on_two_cpus(
    variant: &str,
    n: u32,
    ram: &Ram,
    sender: &(dyn Fn() -> R<String> + Sync),
    receiver: &(dyn Fn() -> R<String> + Sync),
) -> R<String> {
    REMOTE_DONE.store(false, Ordering::SeqCst);
    let results: crate::sync::SpinLock<[Option<R<String>>; 2]> =
        crate::sync::SpinLock::new([None, None]);
    smp::run_on_cpus(0b11, &|cpu| {
        let r = if cpu == 0 { sender() } else { receiver() };
        // Whichever ends first (or fails) lets the other stop waiting.
        REMOTE_DONE.store(true, Ordering::SeqCst);
        if let Some(slot) = results.lock().get_mut(cpu) {
            *slot = Some(r);
        }
    });
    let [r0, r1] = core::mem::take(&mut *results.lock());
    let sender = r0.ok_or("vCPU 0 did not report")??;
    let receiver = r1.ok_or("vCPU 1 did not report")??;
    let handled = ram.u32(REMOTE_COUNT);
    if handled == 0 || handled > n {
        return Err(format!("remote IPI {variant}: receiver handled {handled} of {n}"));
    }
    println!("bench-apic: op={OP} variant={variant} {receiver}");
    Ok(sender)
}

/// The receiver's line: what it handled, its exits, and the RUNs its thread made.
fn receiver_line(v: &V<'_>, ram: &Ram, runs: u64) -> R<String> {
    let s = v.stats().map_err(e("GET_STATS"))?;
    Ok(format!(
        "receiver handled={} exits={} user={} runs={runs}",
        ram.u32(REMOTE_COUNT),
        s.total.exits,
        s.user_exits
    ))
}

/// x2APIC fixed IPIs from vCPU 0 to vCPU 1 with the in-kernel APIC (`flags`).
pub(crate) fn remote_ipi(flags: ApicFlags, variant: &'static str, n: u32) -> R<String> {
    // The sender starts vCPU 1 as a guest does (SDM Vol. 3A §9.4.4: INIT, then a start-up
    // IPI with vector 0x06: real mode at 0600:0000), and waits until it is ready.
    let pro = cat(&[
        MOV_EBX_APIC,
        X2_ENABLE,
        X2_SVR,
        &[0xB9, 0x30, 0x08, 0x00, 0x00], // mov ecx, 0x830 (ICR)
        &[0xBA, 0x01, 0x00, 0x00, 0x00], // mov edx, 1 (destination: APIC ID 1)
        &[0xB8, 0x00, 0x45, 0x00, 0x00], // mov eax, 0x4500 (INIT, assert)
        &[0x0F, 0x30],                   // wrmsr
        &[0xB8, 0x06, 0x46, 0x00, 0x00], // mov eax, 0x4606 (start-up, vector 6)
        &[0x0F, 0x30],                   // wrmsr
        // spin: cmp dword [0x2104], 0; je spin (the receiver is ready)
        &[0x83, 0x3C, 0x25, 0x04, 0x21, 0x00, 0x00, 0x00, 0x74, 0xF6],
    ]);
    let regs = cat(&[
        &[0xB9, 0x30, 0x08, 0x00, 0x00],     // mov ecx, 0x830
        &[0xB8, V_REMOTE, 0x00, 0x00, 0x00], // mov eax, 0x41 (fixed, physical)
        &[0xBA, 0x01, 0x00, 0x00, 0x00],     // mov edx, 1 (destination: APIC ID 1)
    ]);
    let ram = guest_ram(&loop64(n, &pro, &regs, &[0x0F, 0x30]), Handler::None)?;
    // x2APIC EOI: mov ecx, 0x80B; xor eax, eax; xor edx, edx; wrmsr.
    write_receiver_handler(
        &ram,
        &[0x66, 0xB9, 0x0B, 0x08, 0x00, 0x00, 0x66, 0x31, 0xC0, 0x66, 0x31, 0xD2, 0x0F, 0x30],
    );
    let recv = cat(&[
        &[0x31, 0xC0, 0x8E, 0xD8, 0x8E, 0xD0], // xor ax, ax; mov ds, ax; mov ss, ax
        &[0xBC, 0x00, 0x70],                   // mov sp, 0x7000
        &[0x66, 0xB9, 0x1B, 0x00, 0x00, 0x00], // mov ecx, 0x1B
        &[0x0F, 0x32],                         // rdmsr
        &[0x66, 0x0D, 0x00, 0x0C, 0x00, 0x00], // or eax, 0xC00 (x2APIC)
        &[0x0F, 0x30],                         // wrmsr
        &[0x66, 0xB9, 0x0F, 0x08, 0x00, 0x00], // mov ecx, 0x80F (SVR)
        &[0x66, 0xB8, 0xFF, 0x01, 0x00, 0x00], // mov eax, 0x1FF
        &[0x66, 0x31, 0xD2, 0x0F, 0x30],       // xor edx, edx; wrmsr
        // mov dword [0x2104], 1 (ready)
        &[0x66, 0xC7, 0x06, 0x04, 0x21, 0x01, 0x00, 0x00, 0x00],
        STI,
        &[0xF4, 0xEB, 0xFD], // hlt; jmp hlt
    ]);
    ram.write(RECEIVER, &recv);
    let shell = Shell::new()?;
    let (_sys, vm) = vm_with(&shell, &ram, Some(flags))?;
    let sender = || -> R<String> {
        let mut v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
        long_mode(&v, CODE, 0x8000)?;
        show_apic_features(&v)?;
        let s = drive(&mut v, false, "remote-ipi sender")?;
        let ticks = u64::from(ram.u32(RESULT));
        Ok(report(OP, variant, n, ticks, 3, 0, &s))
    };
    let receiver = || -> R<String> {
        let mut v = vm.create_vcpu(1).map_err(e("VCPU_CREATE"))?;
        // QEMU's reset state; the guest's INIT/SIPI starts it.
        qemu_set(&v, &qemu_reset_state(), &qemu_msrs())?;
        show_apic_features(&v)?;
        let mut runs = 0u64;
        while !REMOTE_DONE.load(Ordering::SeqCst) {
            match step(&mut v, 0)? {
                Ev::Hlt | Ev::Interrupt => runs += 1,
                other => return Err(format!("receiver: unexpected exit {other:?}")),
            }
        }
        receiver_line(&v, &ram, runs)
    };
    on_two_cpus(variant, n, &ram, &sender, &receiver)
}

/// The user-space row's hand-over from the sender's harness (CPU 0) to vCPU 1's thread:
/// the vector waiting for injection (0: none), whether vCPU 1 is inside RUN, and its tunnel.
static PENDING: AtomicU32 = AtomicU32::new(0);
static RECV_IN_RUN: AtomicBool = AtomicBool::new(false);
static RECV_TUNNEL: AtomicU64 = AtomicU64::new(0);

/// The sender's harness, for an ICR-low write to APIC ID 1: the vector for vCPU 1's thread,
/// and a kick out of RUN when vCPU 1 is in one (`user_event_pending` first, as QEMU's kick,
/// so a RUN about to enter returns at once; the IPI forces a running guest out).
fn send_to_vcpu1(dest: u8, vector: u8) -> R<()> {
    if dest != 1 {
        return Err(format!("user-space IPI to APIC ID {dest}: only vCPU 1 exists"));
    }
    PENDING.store(u32::from(vector), Ordering::SeqCst);
    if RECV_IN_RUN.load(Ordering::SeqCst) {
        let tunnel = RECV_TUNNEL.load(Ordering::SeqCst);
        if tunnel != 0 {
            // SAFETY: the tunnel page is an identity-mapped kernel page of vCPU 1, which lives
            // as long as the VM (closed after both CPUs are done: `remote_ipi_user`);
            // `user_event_pending` is the 4-aligned u32 at offset 12, accessed only
            // atomically, as user space does (haxm_kick.rs does the same).
            let pending = unsafe { &*((tunnel + 12) as *const AtomicU32) };
            pending.fetch_or(1, Ordering::SeqCst);
        }
        Metal.kick(1);
    }
    Ok(())
}

/// vCPU 1's thread for the user-space row: before each RUN, inject the waiting vector when
/// the guest can take it (else ask for an interrupt window); after a HLT exit, wait in user
/// space for the next vector (QEMU's halted vCPU thread sleeps until cpu_interrupt). At most
/// `budget` RUNs, so a vCPU that never takes its interrupts cannot hang the row.
fn user_receiver(v: &mut V<'_>, ram: &Ram, budget: u64) -> R<String> {
    let mut runs = 0u64;
    while !REMOTE_DONE.load(Ordering::SeqCst) {
        if runs >= budget {
            return Err(format!(
                "receiver: {runs} RUNs, {} IPIs handled: the budget ran out",
                ram.u32(REMOTE_COUNT)
            ));
        }
        // Inside RUN from here on for the sender; a vector it stored before it saw this is
        // caught by the check below (both SeqCst: one of the two sees the other).
        RECV_IN_RUN.store(true, Ordering::SeqCst);
        let vector = PENDING.load(Ordering::SeqCst);
        let ready = v.ready_for_interrupt_injection();
        if vector != 0 && ready {
            PENDING.store(0, Ordering::SeqCst);
            v.interrupt(vector as u8).map_err(e("INTERRUPT"))?;
        }
        v.request_interrupt_window(vector != 0 && !ready);
        let ev = step(v, 0);
        RECV_IN_RUN.store(false, Ordering::SeqCst);
        runs += 1;
        match ev? {
            Ev::Hlt => {
                while PENDING.load(Ordering::SeqCst) == 0 && !REMOTE_DONE.load(Ordering::SeqCst)
                {
                    core::hint::spin_loop();
                }
            }
            // The kick, or the interrupt window.
            Ev::Interrupt => {}
            // The handler's EOI: nothing to deliver (no level-triggered source).
            Ev::Mmio {
                gpa,
                dir: MmioDirection::Write,
                ..
            } if gpa == APIC + 0xB0 => {}
            other => return Err(format!("receiver: unexpected exit {other:?}")),
        }
    }
    receiver_line(v, ram, runs)
}

/// The `user-space` row: see the module documentation.
pub(crate) fn remote_ipi_user(n: u32) -> R<String> {
    let variant = "user-space";
    // mov dword [rbx + 0x310], 0x01000000: ICR high, destination APIC ID 1, once.
    let pro = cat(&[
        MOV_EBX_APIC,
        XAPIC_SVR,
        &[0xC7, 0x83, 0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
    ]);
    // mov dword [rbx + 0x300], 0x4041: ICR low, fixed, physical, assert, vector 0x41.
    let body = [0xC7, 0x83, 0x00, 0x03, 0x00, 0x00, V_REMOTE, 0x40, 0x00, 0x00];
    let ram = guest_ram(&loop64(n, &pro, &[], &body), Handler::None)?;
    // xAPIC EOI through FS (base 0xFEE00000, set by the harness): mov dword fs:[0xB0], 0.
    write_receiver_handler(
        &ram,
        &[0x64, 0x66, 0xC7, 0x06, 0xB0, 0x00, 0x00, 0x00, 0x00, 0x00],
    );
    ram.write(RECEIVER, &cat(&[STI, &[0xF4, 0xEB, 0xFD]])); // sti; hlt; jmp hlt
    let shell = Shell::new()?;
    let (_sys, vm) = vm_with(&shell, &ram, None)?;
    PENDING.store(0, Ordering::SeqCst);
    RECV_IN_RUN.store(false, Ordering::SeqCst);
    RECV_TUNNEL.store(0, Ordering::SeqCst);
    let sender = || -> R<String> {
        let mut v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
        long_mode(&v, CODE, 0x8000)?;
        // vCPU 1 exists before the first IPI (bounded: it fails or reports otherwise).
        while RECV_TUNNEL.load(Ordering::SeqCst) == 0 && !REMOTE_DONE.load(Ordering::SeqCst) {
            core::hint::spin_loop();
        }
        let s = drive_with(&mut v, true, "remote-ipi sender", Some(&send_to_vcpu1))?;
        let ticks = u64::from(ram.u32(RESULT));
        Ok(report(OP, variant, n, ticks, 3, 0, &s))
    };
    let receiver = || -> R<String> {
        let mut v = vm.create_vcpu(1).map_err(e("VCPU_CREATE"))?;
        let mut s = real_mode_at(RECEIVER);
        s.regs[4] = 0x7000; // SP
        s.rflags = 0x202; // IF
        // Real mode with a 4 GiB-reachable FS ("unreal"): the handler's EOI reaches the
        // xAPIC page; VM entry checks no real-mode base unless virtual-8086 (SDM Vol. 3C
        // §27.3.1.2).
        s.fs = SegmentDesc::new(0, APIC, 0xffff, 0x93);
        qemu_set(&v, &s, &qemu_msrs())?;
        RECV_TUNNEL.store(v.tunnel_info().va, Ordering::SeqCst);
        // Per IPI at most: the kicked RUN, the RUN to the EOI, the RUN to the HLT, a window.
        let r = user_receiver(&mut v, &ram, 4 * u64::from(n) + 1000);
        RECV_TUNNEL.store(0, Ordering::SeqCst);
        r
    };
    on_two_cpus(variant, n, &ram, &sender, &receiver)
}
